# Finds the OpenCV modules imagetotext decodes images with (core, imgproc, imgcodecs) where no
# OpenCVConfig.cmake is installed, as with Debian's per-module -dev packages. Defines the imported
# targets OpenCVModules::core, OpenCVModules::imgproc and OpenCVModules::imgcodecs.
find_path(OpenCVModules_INCLUDE_DIR opencv2/core.hpp PATH_SUFFIXES opencv4)
set(_opencv_libraries)
foreach(_module core imgproc imgcodecs)
  find_library(OpenCVModules_${_module}_LIBRARY opencv_${_module})
  list(APPEND _opencv_libraries OpenCVModules_${_module}_LIBRARY)
endforeach()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(OpenCVModules REQUIRED_VARS OpenCVModules_INCLUDE_DIR ${_opencv_libraries})

if(OpenCVModules_FOUND)
  foreach(_module core imgproc imgcodecs)
    if(NOT TARGET OpenCVModules::${_module})
      add_library(OpenCVModules::${_module} UNKNOWN IMPORTED)
      set_target_properties(OpenCVModules::${_module} PROPERTIES
        IMPORTED_LOCATION "${OpenCVModules_${_module}_LIBRARY}"
        INTERFACE_INCLUDE_DIRECTORIES "${OpenCVModules_INCLUDE_DIR}")
    endif()
  endforeach()
endif()
