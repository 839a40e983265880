// bitsandbytes' LLM.int8 forward (reference section 4.3) from the registered ops.
#include <ATen/ops/addmm.h>
#include <ATen/ops/index_select.h>
#include <c10/util/Exception.h>

#include "imagetotext/quant/quantize.hpp"

namespace imagetotext::quant {

at::Tensor llm_int8_matmul(const at::Tensor& A, const at::Tensor& CB, const at::Tensor& SCB,
                           const std::optional<at::Tensor>& bias, double threshold) {
  TORCH_CHECK_VALUE(A.dim() >= 1, "llm_int8_matmul: A must have at least one dimension, got a scalar");
  TORCH_CHECK_VALUE(CB.dim() == 2 && A.size(-1) == CB.size(1), "llm_int8_matmul: A has ", A.size(-1),
                    " columns but CB has shape ", CB.sizes(), " (expected [out_features, ", A.size(-1), "])");
  const at::Tensor rows = A.reshape({-1, A.size(-1)});
  // Activations are quantized from float16, whatever A's dtype (MatMul8bitLt casts them).
  auto [CA, SCA, outlier_cols] = ops::int8_vectorwise_quant(rows.to(at::kHalf), threshold);
  at::Tensor out = ops::int8_scaled_mm(CA, CB, SCA, SCB, bias).to(A.scalar_type());
  if (outlier_cols && outlier_cols->numel() > 0) {
    // The outlier columns in A's own precision against the int8-dequantized weight columns (bitsandbytes
    // has no fp16 weight to use once the layer is quantized).
    const at::Tensor sub_a = rows.index_select(1, *outlier_cols);
    const at::Tensor sub_b =
        ops::int8_vectorwise_dequant(CB.index_select(1, *outlier_cols), SCB, A.scalar_type()).t();
    out = at::addmm(out, sub_a, sub_b);
  }
  std::vector<int64_t> shape(A.sizes().begin(), A.sizes().end() - 1);
  shape.push_back(CB.size(0));
  return out.view(shape);
}

}  // namespace imagetotext::quant
