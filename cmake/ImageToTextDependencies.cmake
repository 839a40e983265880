# Finds every dependency and sets:
#   IMAGETOTEXT_CUDA                 ON when the CUDA kernels are built
#   IMAGETOTEXT_FMT_DEFINITIONS      how fmt is used (header-only, from torch's bundled copy)
#   IMAGETOTEXT_OPENCV_TARGETS       the OpenCV modules used to decode images
#   IMAGETOTEXT_TORCH_PYTHON_LIBRARY libtorch_python (for the Python extension)
#   IMAGETOTEXT_SHARED_LINK_OPTIONS  link options for our shared libraries
# and the imported targets nlohmann_json::nlohmann_json (checkpoint headers and indexes) and PkgConfig::PCRE2
# (the tokenizers' split patterns).

# --- Python and Torch -------------------------------------------------------------------------------
# Torch comes from the torch wheel of the Python that runs the build, so the library, the extension and
# the user's torch are the same build (same C++ ABI, same CUDA).
set(_python_components Interpreter)
if(IMAGETOTEXT_BUILD_PYTHON)
  list(APPEND _python_components Development.Module)
endif()
find_package(Python 3.9 REQUIRED COMPONENTS ${_python_components})

if(NOT Torch_DIR)
  execute_process(COMMAND "${Python_EXECUTABLE}" -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
                  OUTPUT_VARIABLE _torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _torch_found)
  if(NOT _torch_found EQUAL 0)
    message(FATAL_ERROR "imagetotext needs torch in ${Python_EXECUTABLE}: pip install torch==2.11.0 "
                        "(or pass -DTorch_DIR=<libtorch>/share/cmake/Torch)")
  endif()
  list(APPEND CMAKE_PREFIX_PATH "${_torch_prefix}")
endif()

# Torch's CMake adds -gencode flags for TORCH_CUDA_ARCH_LIST, or for the GPUs it detects (none on a build
# machine). Give it our list, then strip its flags and set architectures per target instead.
set(_arch_list "")
foreach(_arch IN LISTS IMAGETOTEXT_CUDA_ARCHITECTURES)
  string(REGEX REPLACE "^([0-9]+)([0-9])(-real|-virtual)?$" "\\1.\\2" _dotted "${_arch}")
  list(APPEND _arch_list "${_dotted}")
endforeach()
string(REPLACE ";" " " _arch_list "${_arch_list}")
set(ENV{TORCH_CUDA_ARCH_LIST} "${_arch_list}")

include(CheckLanguage)
set(IMAGETOTEXT_CUDA OFF)
if(IMAGETOTEXT_WITH_CUDA)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(CMAKE_CUDA_ARCHITECTURES ${IMAGETOTEXT_CUDA_ARCHITECTURES})
    enable_language(CUDA)
    # Architectures are set per target; torch's CMake warns if the global variable is set.
    unset(CMAKE_CUDA_ARCHITECTURES)
    # CMake 3.25 does not know nvcc 13's C++20 flag; the kernels need only C++17.
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  endif()
endif()

find_package(Torch REQUIRED CONFIG)
string(REGEX REPLACE "-gencode[= ]?arch=compute_[0-9a-z]+,code=[a-z_0-9]+" "" CMAKE_CUDA_FLAGS "${CMAKE_CUDA_FLAGS}")
# torch's flags keep half/bfloat16 operators away from CUDA >= 12 code for old reasons; kernels here use them.
string(REGEX REPLACE "-D__CUDA_NO_[A-Z0-9_]+__" "" CMAKE_CUDA_FLAGS "${CMAKE_CUDA_FLAGS}")

execute_process(COMMAND "${Python_EXECUTABLE}" -c "import torch; print(torch.__version__); print(torch.version.cuda or '')"
                OUTPUT_VARIABLE _torch_versions OUTPUT_STRIP_TRAILING_WHITESPACE)
string(REPLACE "\n" ";" _torch_versions "${_torch_versions}")
list(GET _torch_versions 0 IMAGETOTEXT_TORCH_VERSION)
list(LENGTH _torch_versions _n)
set(_torch_cuda "")
if(_n GREATER 1)
  list(GET _torch_versions 1 _torch_cuda)
endif()

if(IMAGETOTEXT_WITH_CUDA AND CMAKE_CUDA_COMPILER AND _torch_cuda)
  set(IMAGETOTEXT_CUDA ON)
  message(STATUS "imagetotext: CUDA kernels ON (torch ${IMAGETOTEXT_TORCH_VERSION}, CUDA ${_torch_cuda}, "
                 "nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${IMAGETOTEXT_CUDA_ARCHITECTURES})")
else()
  message(STATUS "imagetotext: CUDA kernels OFF (torch ${IMAGETOTEXT_TORCH_VERSION} CUDA='${_torch_cuda}', "
                 "nvcc='${CMAKE_CUDA_COMPILER}', IMAGETOTEXT_WITH_CUDA=${IMAGETOTEXT_WITH_CUDA})")
endif()

if(IMAGETOTEXT_BUILD_PYTHON)
  find_library(IMAGETOTEXT_TORCH_PYTHON_LIBRARY torch_python PATHS "${TORCH_INSTALL_PREFIX}/lib" REQUIRED NO_DEFAULT_PATH)
  # Tensors cross into Python through torch's own pybind11 casters, so our pybind11 must be the one torch
  # bundles: another version gives "type already registered" or undefined casters at import time.
  execute_process(COMMAND "${Python_EXECUTABLE}" -c "import pybind11; print(pybind11.get_cmake_dir())"
                  OUTPUT_VARIABLE _pybind11_dir OUTPUT_STRIP_TRAILING_WHITESPACE)
  # The pybind11 importable by this Python (not whichever a package index registered for CMake).
  find_package(pybind11 CONFIG REQUIRED PATHS "${_pybind11_dir}" NO_DEFAULT_PATH)
  file(READ "${TORCH_INSTALL_PREFIX}/include/pybind11/detail/common.h" _pybind11_header)
  set(_torch_pybind11 "")
  foreach(_part MAJOR MINOR PATCH)
    string(REGEX MATCH "define PYBIND11_VERSION_${_part} ([0-9]+)" _ "${_pybind11_header}")
    list(APPEND _torch_pybind11 "${CMAKE_MATCH_1}")
  endforeach()
  string(REPLACE ";" "." _torch_pybind11 "${_torch_pybind11}")
  if(NOT pybind11_VERSION VERSION_EQUAL _torch_pybind11)
    message(FATAL_ERROR "pybind11 ${pybind11_VERSION} does not match the pybind11 ${_torch_pybind11} that torch "
                        "${IMAGETOTEXT_TORCH_VERSION} bundles: pip install pybind11==${_torch_pybind11}")
  endif()
endif()

# --- fmt --------------------------------------------------------------------------------------------
# torch ships fmt's headers (12.x) in its include directory, which every target here has ahead of the
# system's, so a system libfmt (Debian's 9.1) would be compiled against the wrong headers. fmt is used
# from torch's copy, header-only: same version for us, for torch and for consumers.
set(IMAGETOTEXT_FMT_DEFINITIONS FMT_HEADER_ONLY=1)
if(NOT EXISTS "${TORCH_INSTALL_PREFIX}/include/fmt/format-inl.h")
  message(FATAL_ERROR "torch at ${TORCH_INSTALL_PREFIX} ships no fmt headers; imagetotext uses them")
endif()

# --- JSON -------------------------------------------------------------------------------------------
# Header-only; parses safetensors headers and checkpoint indexes inside the library (never in a public
# header), so consumers of the installed package do not need it.
find_package(nlohmann_json 3 QUIET CONFIG)
if(NOT nlohmann_json_FOUND)
  message(FATAL_ERROR "imagetotext needs nlohmann-json 3 (header-only): apt-get install nlohmann-json3-dev, "
                      "or pass -Dnlohmann_json_DIR=<prefix>/share/cmake/nlohmann_json")
endif()

# --- Regular expressions ------------------------------------------------------------------------------
# PCRE2 runs the tokenizers' split patterns (Unicode properties, lookahead, JIT); linked privately, so
# consumers of the installed package do not need its headers.
find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)

# --- Image codecs -----------------------------------------------------------------------------------
if(IMAGETOTEXT_WITH_IMAGE_CODECS)
  find_package(OpenCV 4 QUIET COMPONENTS core imgproc imgcodecs)
  if(OpenCV_FOUND)
    set(IMAGETOTEXT_OPENCV_TARGETS opencv_core opencv_imgproc opencv_imgcodecs)
  else()
    # Debian ships OpenCVConfig.cmake only with the full libopencv-dev; the three module packages
    # (libopencv-{core,imgproc,imgcodecs}-dev) are enough and are found here.
    find_package(OpenCVModules REQUIRED)
    set(IMAGETOTEXT_OPENCV_TARGETS OpenCVModules::core OpenCVModules::imgproc OpenCVModules::imgcodecs)
  endif()
  find_package(GIF 5 REQUIRED)
endif()

# --- Downloads --------------------------------------------------------------------------------------
if(IMAGETOTEXT_WITH_DOWNLOADS)
  find_package(CURL 7.68 REQUIRED)      # Debian: libcurl4-openssl-dev
  find_package(OpenSSL 1.1 REQUIRED)    # SHA-256 of downloaded files; Debian: libssl-dev
endif()

# --- Linking ----------------------------------------------------------------------------------------
# Some toolchains (the GPU machine's g++) link every shared library with -Bsymbolic. That binds inline
# functions and their statics (iostream facets, c10's registries) inside each library, so a library gets
# copies that disagree with libtorch's and crashes on the first ostream use. Undo it where ld can.
include(CheckLinkerFlag)
check_linker_flag(CXX "-Wl,-Bno-symbolic" IMAGETOTEXT_HAVE_NO_SYMBOLIC)
set(IMAGETOTEXT_SHARED_LINK_OPTIONS "")
if(IMAGETOTEXT_HAVE_NO_SYMBOLIC)
  set(IMAGETOTEXT_SHARED_LINK_OPTIONS "-Wl,-Bno-symbolic")
endif()
