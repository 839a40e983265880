// The parts of the imagetotext._C module defined outside module.cpp, each added by one call from
// PYBIND11_MODULE.
#pragma once

#include <pybind11/pybind11.h>

namespace imagetotext::python {

// _C.quantize_4bit / _C.dequantize_4bit (double quantization included), _C.dynamic_map, _C.code_4bit:
// the native side of imagetotext.quant.
void bind_quant(pybind11::module_& m);

}  // namespace imagetotext::python
