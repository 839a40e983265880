// imagetotext._C.QuantizedLinear: the C++ layer as is; python/imagetotext/quant.py re-exports it.
#include <pybind11/stl.h>
#include <torch/extension.h>

#include "bindings.hpp"
#include "imagetotext/quant/quantized_linear.hpp"

namespace py = pybind11;

namespace imagetotext::python {
namespace {

Quantization parse_format(const std::string& name) {
  for (Quantization format : {Quantization::none, Quantization::int8, Quantization::llm_int8, Quantization::nf4,
                              Quantization::fp4}) {
    if (name == quantization_name(format)) return format;
  }
  TORCH_CHECK_VALUE(false, "QuantizedLinear: format must be 'none', 'int8', 'llm_int8', 'nf4' or 'fp4', got '",
                    name, "'");
}

// forward without a fusion: the fused forms are for the models' decode steps (torch.ops.imagetotext.gemm_* take
// them for tests).
at::Tensor forward(const quant::QuantizedLinear& layer, const at::Tensor& x) { return layer.forward(x); }

}  // namespace

void bind_quantized_linear(py::module_& m) {
  using quant::QuantizedLinear;
  py::class_<QuantizedLinear>(m, "QuantizedLinear",
                              "y = x @ W^T + bias with W dense, INT8, LLM.int8, NF4 or FP4 (bitsandbytes formats).")
      .def_static(
          "from_dense",
          [](const at::Tensor& weight, std::optional<at::Tensor> bias, const std::string& format, int64_t blocksize,
             bool compress_statistics, double threshold) {
            const Quantization parsed = parse_format(format);
            py::gil_scoped_release release;
            return QuantizedLinear::from_dense(weight, std::move(bias), parsed,
                                               {blocksize, compress_statistics, threshold});
          },
          py::arg("weight"), py::arg("bias") = py::none(), py::arg("format") = "nf4",
          py::arg("blocksize") = quant::kDefaultBlocksize4bit, py::arg("compress_statistics") = true,
          py::arg("threshold") = quant::kDefaultOutlierThreshold,
          "Quantize a dense weight [out_features, in_features] (and keep the bias).")
      .def_static(
          "from_state_dict",
          [](const quant::StateDict& state, const std::string& prefix, const std::string& format, double threshold) {
            const Quantization parsed = parse_format(format);
            py::gil_scoped_release release;
            return QuantizedLinear::from_state_dict(state, prefix, parsed, threshold);
          },
          py::arg("state_dict"), py::arg("prefix") = "", py::arg("format") = "nf4",
          py::arg("threshold") = quant::kDefaultOutlierThreshold,
          "Load the layout bitsandbytes' Linear4bit / Linear8bitLt (or nn.Linear) save, keys '<prefix>weight', ...")
      .def("forward", &forward, py::arg("x"), py::call_guard<py::gil_scoped_release>())
      .def("__call__", &forward, py::arg("x"), py::call_guard<py::gil_scoped_release>())
      .def("state_dict", &QuantizedLinear::state_dict, py::arg("prefix") = "",
           "The tensors bitsandbytes would save for this layer, keyed '<prefix><name>'.")
      .def(
          "dequantized_weight", [](const QuantizedLinear& l) { return l.dequantized_weight(); },
          py::call_guard<py::gil_scoped_release>())
      .def_readonly("in_features", &QuantizedLinear::in_features)
      .def_readonly("out_features", &QuantizedLinear::out_features)
      .def_property_readonly("format", [](const QuantizedLinear& l) { return std::string(quantization_name(l.format())); })
      .def_property_readonly("bias", [](const QuantizedLinear& l) { return l.bias(); })
      .def_property_readonly("weight_bytes", &QuantizedLinear::weight_bytes,
                             "Bytes of the stored weight (codes and statistics).")
      .def("__repr__", [](const QuantizedLinear& l) {
        return "<QuantizedLinear " + std::string(quantization_name(l.format())) + " " + std::to_string(l.in_features) +
               " -> " + std::to_string(l.out_features) + ">";
      });
}

}  // namespace imagetotext::python
