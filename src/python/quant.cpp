// Native side of imagetotext.quant: the C++ QuantState crosses to Python as a dict of its fields, which
// python/imagetotext/quant.py wraps in a dataclass shaped like bitsandbytes.functional.QuantState.
#include <pybind11/stl.h>
#include <torch/extension.h>

#include "bindings.hpp"
#include "imagetotext/quant/quantize.hpp"

namespace py = pybind11;

namespace imagetotext::python {
namespace {

py::dict state_fields(const quant::QuantState& state) {
  py::dict fields;
  fields["absmax"] = state.absmax;
  fields["code"] = state.code;
  fields["blocksize"] = state.blocksize;
  fields["quant_type"] = std::string(quant::quant_type_name(state.quant_type));
  fields["dtype"] = state.dtype;
  fields["shape"] = state.shape;
  if (state.nested) {
    fields["nested_absmax"] = state.nested->absmax;
    fields["nested_code"] = state.nested->code;
    fields["nested_blocksize"] = state.nested->blocksize;
    fields["offset"] = state.nested->offset;
  }
  return fields;
}

quant::QuantState state_from_fields(const at::Tensor& absmax, const at::Tensor& code, int64_t blocksize,
                                    const std::string& quant_type, at::ScalarType dtype,
                                    const std::vector<int64_t>& shape, const std::optional<at::Tensor>& nested_absmax,
                                    const std::optional<at::Tensor>& nested_code, int64_t nested_blocksize,
                                    const std::optional<at::Tensor>& offset) {
  quant::QuantState state;
  state.absmax = absmax;
  state.code = code;
  state.blocksize = blocksize;
  state.quant_type = quant::parse_quant_type(quant_type);
  state.dtype = dtype;
  state.shape = shape;
  const bool nested = nested_absmax.has_value();
  TORCH_CHECK_VALUE(nested == nested_code.has_value() && nested == offset.has_value(),
                    "dequantize_4bit: a nested state needs nested_absmax, nested_code and offset together");
  if (nested) state.nested = quant::NestedQuantState{*nested_absmax, *nested_code, nested_blocksize, *offset};
  return state;
}

}  // namespace

void bind_quant(py::module_& m) {
  m.def("dynamic_map", &quant::dynamic_map,
        "bitsandbytes' create_dynamic_map(signed=True) as x86 torch computes it: float32 [256].");
  m.def(
      "code_4bit", [](const std::string& quant_type) { return quant::code_4bit(quant::parse_quant_type(quant_type)); },
      py::arg("quant_type"), "The NF4 or FP4 table, float32 [16].");
  m.def(
      "quantize_4bit",
      [](const at::Tensor& A, int64_t blocksize, const std::string& quant_type, bool compress_statistics) {
        const quant::QuantType type = quant::parse_quant_type(quant_type);
        std::pair<at::Tensor, quant::QuantState> result;
        {
          py::gil_scoped_release release;
          result = quant::quantize_4bit(A, blocksize, type, compress_statistics);
        }
        return py::make_tuple(result.first, state_fields(result.second));
      },
      py::arg("A"), py::arg("blocksize"), py::arg("quant_type"), py::arg("compress_statistics"),
      "Blockwise 4-bit quantization with optional double quantization: (packed, dict of QuantState fields).");
  m.def(
      "dequantize_4bit",
      [](const at::Tensor& packed, const at::Tensor& absmax, const at::Tensor& code, int64_t blocksize,
         const std::string& quant_type, at::ScalarType dtype, const std::vector<int64_t>& shape,
         const std::optional<at::Tensor>& nested_absmax, const std::optional<at::Tensor>& nested_code,
         int64_t nested_blocksize, const std::optional<at::Tensor>& offset) {
        const quant::QuantState state = state_from_fields(absmax, code, blocksize, quant_type, dtype, shape,
                                                          nested_absmax, nested_code, nested_blocksize, offset);
        py::gil_scoped_release release;
        return quant::dequantize_4bit(packed, state);
      },
      py::arg("packed"), py::arg("absmax"), py::arg("code"), py::arg("blocksize"), py::arg("quant_type"),
      py::arg("dtype"), py::arg("shape"), py::arg("nested_absmax") = py::none(), py::arg("nested_code") = py::none(),
      py::arg("nested_blocksize") = quant::kNestedBlocksize, py::arg("offset") = py::none(),
      "Inverse of quantize_4bit from the QuantState fields.");
  m.def(
      "gemm_4bit",
      [](const at::Tensor& A, const at::Tensor& packed, const at::Tensor& absmax, const at::Tensor& code,
         int64_t blocksize, const std::string& quant_type, at::ScalarType dtype, const std::vector<int64_t>& shape,
         const std::optional<at::Tensor>& nested_absmax, const std::optional<at::Tensor>& nested_code,
         int64_t nested_blocksize, const std::optional<at::Tensor>& offset, const std::optional<at::Tensor>& bias) {
        const quant::QuantState state = state_from_fields(absmax, code, blocksize, quant_type, dtype, shape,
                                                          nested_absmax, nested_code, nested_blocksize, offset);
        py::gil_scoped_release release;
        return quant::gemm_4bit(A, packed, state, bias);
      },
      py::arg("A"), py::arg("packed"), py::arg("absmax"), py::arg("code"), py::arg("blocksize"), py::arg("quant_type"),
      py::arg("dtype"), py::arg("shape"), py::arg("nested_absmax") = py::none(), py::arg("nested_code") = py::none(),
      py::arg("nested_blocksize") = quant::kNestedBlocksize, py::arg("offset") = py::none(),
      py::arg("bias") = py::none(), "A @ dequantize_4bit(packed, state).T + bias, the absmax de-nested first.");
  m.def("llm_int8_matmul", &quant::llm_int8_matmul, py::arg("A"), py::arg("CB"), py::arg("SCB"),
        py::arg("bias") = py::none(), py::arg("threshold") = quant::kDefaultOutlierThreshold,
        py::call_guard<py::gil_scoped_release>(),
        "bitsandbytes' LLM.int8 forward: A [..., K] with the int8 weight CB [N, K], SCB [N] -> A's dtype [..., N].");
}

}  // namespace imagetotext::python
