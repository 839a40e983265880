// QuantState and double quantization, as bitsandbytes.functional.quantize_4bit / dequantize_4bit do them
// (reference section 2.1); the per-element work is in the registered ops.
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include "imagetotext/quant/quantize.hpp"

namespace imagetotext::quant {

at::Tensor code_4bit(QuantType type) {
  at::Tensor code = at::empty({16}, at::TensorOptions().dtype(at::kFloat));
  float* values = code.data_ptr<float>();
  for (uint8_t i = 0; i < 16; ++i) values[i] = code_value_4bit(type, i);
  return code;
}

QuantType parse_quant_type(const std::string& name) {
  if (name == "nf4") return QuantType::nf4;
  TORCH_CHECK_VALUE(name == "fp4", "quant_type must be 'nf4' or 'fp4', got '", name, "'");
  return QuantType::fp4;
}

const char* quant_type_name(QuantType type) { return type == QuantType::nf4 ? "nf4" : "fp4"; }

at::Tensor QuantState::float_absmax() const {
  if (!nested) return absmax;
  // Two separately rounded float32 steps, code[q] * absmax2 then + offset, as bitsandbytes' unfused path.
  at::Tensor restored =
      ops::dequantize_blockwise(absmax, nested->absmax, nested->code, nested->blocksize, at::kFloat);
  return restored.add_(nested->offset);
}

std::pair<at::Tensor, QuantState> quantize_4bit(const at::Tensor& weight, int64_t blocksize, QuantType quant_type,
                                                bool compress_statistics) {
  auto [packed, absmax] = ops::quantize_4bit(weight, blocksize, quant_type_name(quant_type));
  QuantState state;
  state.code = code_4bit(quant_type).to(weight.device());
  state.blocksize = blocksize;
  state.quant_type = quant_type;
  state.dtype = weight.scalar_type();
  state.shape.assign(weight.sizes().begin(), weight.sizes().end());
  if (!compress_statistics) {
    state.absmax = absmax;
    return {packed, state};
  }
  NestedQuantState nested;
  nested.offset = absmax.mean();  // the same torch reduction as bitsandbytes, so the same float32 bits
  nested.code = dynamic_map().to(weight.device());
  std::tie(state.absmax, nested.absmax) = ops::quantize_blockwise(absmax - nested.offset, nested.code, kNestedBlocksize);
  state.nested = std::move(nested);
  return {packed, state};
}

at::Tensor dequantize_4bit(const at::Tensor& packed, const QuantState& state) {
  return ops::dequantize_4bit(packed, state.float_absmax(), state.blocksize, quant_type_name(state.quant_type),
                              state.shape, state.dtype);
}

at::Tensor gemm_4bit(const at::Tensor& A, const at::Tensor& packed, const QuantState& state,
                     const std::optional<at::Tensor>& bias) {
  return ops::gemm_4bit(A, packed, state.float_absmax(), state.blocksize, quant_type_name(state.quant_type),
                        state.shape, bias);
}

}  // namespace imagetotext::quant
