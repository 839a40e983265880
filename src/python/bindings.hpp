// The pieces of imagetotext._C that live in their own files; PYBIND11_MODULE (module.cpp) calls each.
#pragma once

#include <pybind11/pybind11.h>

namespace imagetotext::python {

// load_safetensors / save_safetensors (src/python/safetensors.cpp).
void bind_safetensors(pybind11::module_& m);

}  // namespace imagetotext::python
