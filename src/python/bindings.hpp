// One function per area of the Python module, each in its own file of src/python/, called from
// PYBIND11_MODULE in module.cpp.
#pragma once

#include <pybind11/pybind11.h>

namespace imagetotext::python {

void bind_checkpoint_tools(pybind11::module_& m);  // checkpoint_tools.cpp: quantize_checkpoint, weight_memory
void bind_configs(pybind11::module_& m);      // configs.cpp
void bind_florence2(pybind11::module_& m);    // florence2.cpp: the Florence-2 model's pieces, for tests
void bind_hub(pybind11::module_& m);          // hub.cpp
void bind_models(pybind11::module_& m);       // models.cpp: Captioner, model_selector, load_model, the cache
void bind_quant(pybind11::module_& m);        // quant.cpp: the native side of imagetotext.quant
void bind_quantized_linear(pybind11::module_& m);  // quantized_linear.cpp: imagetotext.quant.QuantizedLinear
void bind_safetensors(pybind11::module_& m);  // safetensors.cpp
void bind_tokenizer(pybind11::module_& m);    // tokenizer.cpp: imagetotext.Tokenizer
void bind_smolvlm(pybind11::module_& m);      // smolvlm.cpp: _C.SmolVLM (the family's parts, for tests and load_model)

}  // namespace imagetotext::python
