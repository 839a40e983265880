#include "quantize.hpp"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <c10/util/Exception.h>

#include "imagetotext/quant/quantize.hpp"
#include "layer_ops.hpp"

namespace imagetotext::ops::detail {
namespace {

bool is_weight_dtype(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16;
}

void check_weight_dtype(std::string_view op, std::string_view name, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(is_weight_dtype(dtype), op, ": ", name, " must be float32, float16 or bfloat16, got ", dtype);
}

void check_dtype(std::string_view op, std::string_view name, const at::Tensor& t, at::ScalarType expected) {
  TORCH_CHECK_VALUE(t.scalar_type() == expected, op, ": ", name, " must be ", expected, ", got ", t.scalar_type());
}

void check_same_device(std::string_view op, std::string_view name, const at::Tensor& t, std::string_view ref_name,
                       const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " must be on the device of ", ref_name, " (",
                    ref.device(), "), got ", t.device());
}

void check_numel(std::string_view op, std::string_view name, const at::Tensor& t, int64_t expected,
                 std::string_view why) {
  TORCH_CHECK_VALUE(t.numel() == expected, op, ": ", name, " must hold ", expected, " values (", why, "), got ",
                    t.numel(), " (shape ", t.sizes(), ")");
}

quant::QuantType parse_quant_type(std::string_view op, std::string_view quant_type) {
  if (quant_type == "nf4") return quant::QuantType::nf4;
  TORCH_CHECK_VALUE(quant_type == "fp4", op, ": quant_type must be 'nf4' or 'fp4', got '", quant_type, "'");
  return quant::QuantType::fp4;
}

void check_blocksize_4bit(std::string_view op, int64_t blocksize) {
  TORCH_CHECK_VALUE(quant::is_valid_blocksize_4bit(blocksize), op, ": blocksize must be a power of two from ",
                    quant::kMinBlocksize4bit, " to ", quant::kMaxBlocksize4bit, ", got ", blocksize);
}

void check_code_8bit(std::string_view op, const at::Tensor& code, const at::Tensor& ref, std::string_view ref_name) {
  check_dtype(op, "code", code, at::kFloat);
  TORCH_CHECK_VALUE(code.dim() == 1 && code.numel() == quant::kDynamicMapSize, op, ": code must be 1-D with ",
                    quant::kDynamicMapSize, " sorted values, got shape ", code.sizes());
  check_same_device(op, "code", code, ref_name, ref);
}

// packed uint8 with (n+1)/2 bytes and absmax float32 with ceil(n/blocksize) values on packed's device,
// n = the element count of `what`.
quant::QuantType check_packed_4bit(std::string_view op, const at::Tensor& packed, const at::Tensor& absmax,
                                   int64_t blocksize, std::string_view quant_type, int64_t n, std::string_view what) {
  check_dtype(op, "packed", packed, at::kByte);
  check_dtype(op, "absmax", absmax, at::kFloat);
  check_same_device(op, "absmax", absmax, "packed", packed);
  check_blocksize_4bit(op, blocksize);
  const quant::QuantType type = parse_quant_type(op, quant_type);
  const std::string two_per_byte = "two codes per byte for the elements of " + std::string(what);
  const std::string one_per_block = "one per block of the elements of " + std::string(what);
  check_numel(op, "packed", packed, quant::packed_4bit_bytes(n), two_per_byte);
  check_numel(op, "absmax", absmax, quant::block_count(n, blocksize), one_per_block);
  return type;
}

// The activation and bias of a gemm: A [..., K] of a float dtype; bias none or [N] of A's dtype and device.
void check_gemm_activation(std::string_view op, const at::Tensor& A, int64_t out_features, int64_t in_features,
                           const std::optional<at::Tensor>& bias) {
  check_weight_dtype(op, "A", A.scalar_type());
  TORCH_CHECK_VALUE(A.dim() >= 1 && A.size(-1) == in_features, op, ": A must be [..., K] with K = ", in_features,
                    " (the weight's in_features), got shape ", A.sizes());
  if (!bias) return;
  check_dtype(op, "bias", *bias, A.scalar_type());
  check_same_device(op, "bias", *bias, "A", A);
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == out_features, op, ": bias must be 1-D [", out_features,
                    "] (the weight's out_features), got shape ", bias->sizes());
}

}  // namespace

quant::QuantType check_quantize_4bit(const at::Tensor& A, int64_t blocksize, std::string_view quant_type) {
  constexpr std::string_view op = "quantize_4bit";
  check_weight_dtype(op, "A", A.scalar_type());
  check_blocksize_4bit(op, blocksize);
  return parse_quant_type(op, quant_type);
}

quant::QuantType check_dequantize_4bit(const at::Tensor& packed, const at::Tensor& absmax, int64_t blocksize,
                                       std::string_view quant_type, c10::ArrayRef<int64_t> shape,
                                       at::ScalarType dtype) {
  constexpr std::string_view op = "dequantize_4bit";
  check_weight_dtype(op, "dtype", dtype);
  int64_t n = 1;
  for (int64_t size : shape) {
    TORCH_CHECK_VALUE(size >= 0, op, ": shape must not have negative sizes, got ", shape);
    n *= size;
  }
  return check_packed_4bit(op, packed, absmax, blocksize, quant_type, n, "shape");
}

void check_quantize_blockwise(const at::Tensor& A, const at::Tensor& code, int64_t blocksize) {
  constexpr std::string_view op = "quantize_blockwise";
  check_weight_dtype(op, "A", A.scalar_type());
  check_code_8bit(op, code, A, "A");
  TORCH_CHECK_VALUE(blocksize > 0, op, ": blocksize must be positive, got ", blocksize);
}

void check_dequantize_blockwise(const at::Tensor& q, const at::Tensor& absmax, const at::Tensor& code,
                                int64_t blocksize, at::ScalarType dtype) {
  constexpr std::string_view op = "dequantize_blockwise";
  check_dtype(op, "q", q, at::kByte);
  check_dtype(op, "absmax", absmax, at::kFloat);
  check_same_device(op, "absmax", absmax, "q", q);
  check_code_8bit(op, code, q, "q");
  TORCH_CHECK_VALUE(blocksize > 0, op, ": blocksize must be positive, got ", blocksize);
  check_weight_dtype(op, "dtype", dtype);
  check_numel(op, "absmax", absmax, quant::block_count(q.numel(), blocksize), "one per block of q");
}

void check_int8_vectorwise_quant(const at::Tensor& A, double threshold) {
  constexpr std::string_view op = "int8_vectorwise_quant";
  check_weight_dtype(op, "A", A.scalar_type());
  TORCH_CHECK_VALUE(A.dim() == 2, op, ": A must be 2-D [rows, columns], got shape ", A.sizes());
  TORCH_CHECK_VALUE(threshold >= 0.0, op, ": threshold must be >= 0 (0 disables outliers), got ", threshold);
}

void check_int8_vectorwise_dequant(const at::Tensor& CB, const at::Tensor& SCB, std::optional<at::ScalarType> dtype) {
  constexpr std::string_view op = "int8_vectorwise_dequant";
  if (dtype) check_weight_dtype(op, "dtype", *dtype);
  check_dtype(op, "CB", CB, at::kChar);
  check_dtype(op, "SCB", SCB, at::kFloat);
  check_same_device(op, "SCB", SCB, "CB", CB);
  TORCH_CHECK_VALUE(CB.dim() == 2, op, ": CB must be 2-D [rows, columns], got shape ", CB.sizes());
  check_numel(op, "SCB", SCB, CB.size(0), "one per row of CB");
}

WeightShape check_gemm_4bit(const at::Tensor& A, const at::Tensor& packed, const at::Tensor& absmax, int64_t blocksize,
                            std::string_view quant_type, c10::ArrayRef<int64_t> weight_shape,
                            const std::optional<at::Tensor>& bias) {
  constexpr std::string_view op = "gemm_4bit";
  TORCH_CHECK_VALUE(weight_shape.size() == 2 && weight_shape[0] >= 0 && weight_shape[1] >= 0, op,
                    ": weight_shape must be [out_features, in_features], got ", weight_shape);
  const WeightShape shape{weight_shape[0], weight_shape[1]};
  check_packed_4bit(op, packed, absmax, blocksize, quant_type, shape.out_features * shape.in_features,
                    "weight_shape");
  check_same_device(op, "packed", packed, "A", A);
  check_gemm_activation(op, A, shape.out_features, shape.in_features, bias);
  return shape;
}

WeightShape check_gemm_int8_weight_only(const at::Tensor& A, const at::Tensor& CB, const at::Tensor& SCB,
                                        const std::optional<at::Tensor>& bias) {
  constexpr std::string_view op = "gemm_int8_weight_only";
  check_dtype(op, "CB", CB, at::kChar);
  check_dtype(op, "SCB", SCB, at::kFloat);
  TORCH_CHECK_VALUE(CB.dim() == 2, op, ": CB must be 2-D [out_features, in_features], got shape ", CB.sizes());
  check_numel(op, "SCB", SCB, CB.size(0), "one per row of CB");
  check_same_device(op, "CB", CB, "A", A);
  check_same_device(op, "SCB", SCB, "A", A);
  check_gemm_activation(op, A, CB.size(0), CB.size(1), bias);
  return {CB.size(0), CB.size(1)};
}

WeightShape check_gemm_dense(const at::Tensor& A, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  constexpr std::string_view op = "gemm_dense";
  check_dtype(op, "weight", weight, A.scalar_type());
  TORCH_CHECK_VALUE(weight.dim() == 2, op, ": weight must be 2-D [out_features, in_features], got shape ",
                    weight.sizes());
  check_same_device(op, "weight", weight, "A", A);
  check_gemm_activation(op, A, weight.size(0), weight.size(1), bias);
  return {weight.size(0), weight.size(1)};
}

at::Tensor matmul_then_bias(const at::Tensor& A, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  at::Tensor out = at::matmul(A, weight.t());
  if (bias) out.add_(*bias);
  return out;
}

at::Tensor dequantize_4bit_then_linear(const at::Tensor& A, const at::Tensor& packed, const at::Tensor& absmax,
                                       int64_t blocksize, std::string_view quant_type, WeightShape shape,
                                       const std::optional<at::Tensor>& bias) {
  const at::Tensor weight = ops::dequantize_4bit(packed, absmax, blocksize, std::string(quant_type),
                                                 {shape.out_features, shape.in_features}, A.scalar_type());
  return at::linear(A, weight, bias);
}

GemmFusion check_gemm_fusion(std::string_view op, const at::Tensor& A, const std::optional<at::Tensor>& norm_weight,
                             double norm_eps, bool gated, const std::optional<at::Tensor>& residual,
                             const std::optional<at::Tensor>& norm_bias, bool gelu,
                             const std::optional<at::Tensor>& normed_out) {
  TORCH_CHECK_VALUE(!(norm_weight && gated), op, ": norm_weight and gated cannot both be given");
  TORCH_CHECK_VALUE(norm_weight || (!norm_bias && !normed_out), op, ": norm_bias and normed_out need norm_weight");
  const auto check_norm_vector = [&](std::string_view name, const at::Tensor& t) {
    check_dtype(op, name, t, A.scalar_type());
    check_same_device(op, name, t, "A", A);
    TORCH_CHECK_VALUE(A.dim() >= 1 && t.dim() == 1 && t.size(0) == A.size(-1), op, ": ", name,
                      " must be [K] for A [..., K], got shape ", t.sizes(), " for A ", A.sizes());
  };
  if (norm_weight) {
    check_norm_vector("norm_weight", *norm_weight);
    TORCH_CHECK_VALUE(norm_eps >= 0.0, op, ": norm_eps must be >= 0, got ", norm_eps);
  }
  if (norm_bias) check_norm_vector("norm_bias", *norm_bias);
  if (normed_out) {
    check_dtype(op, "normed_out", *normed_out, A.scalar_type());
    check_same_device(op, "normed_out", *normed_out, "A", A);
    TORCH_CHECK_VALUE(normed_out->sizes() == A.sizes(), op, ": normed_out must have A's shape ", A.sizes(), ", got ",
                      normed_out->sizes());
  }
  if (gated) {
    TORCH_CHECK_VALUE(A.dim() >= 1 && A.size(-1) % 2 == 0, op,
                      ": gated needs A [..., 2K] (gate, then up), got shape ", A.sizes());
  }
  if (residual) {
    check_dtype(op, "residual", *residual, A.scalar_type());
    check_same_device(op, "residual", *residual, "A", A);
  }
  return {norm_weight, norm_eps, gated, residual, norm_bias, gelu, normed_out};
}

at::Tensor gemm_input_like(const at::Tensor& A, const GemmFusion& fusion) {
  return fusion.gated ? A.narrow(-1, 0, A.size(-1) / 2) : A;
}

namespace {
void check_gemm_residual(std::string_view op, const GemmFusion& fusion, c10::IntArrayRef out_shape) {
  if (!fusion.residual) return;
  TORCH_CHECK_VALUE(fusion.residual->sizes() == out_shape, op, ": residual must have the output's shape ", out_shape,
                    ", got ", fusion.residual->sizes());
}
}  // namespace

at::Tensor gemm_output(std::string_view op, const at::Tensor& A, int64_t out_features, const GemmFusion& fusion) {
  at::Tensor out = at::empty(gemm_output_shape(A, out_features), A.options());
  check_gemm_residual(op, fusion, out.sizes());
  return out;
}

at::Tensor finish_gemm(std::string_view op, const at::Tensor& out, const GemmFusion& fusion) {
  // In place on the gemm's own output (the same roundings as at::gelu and `residual + out`): a vision tower's
  // MLP at 36864 tokens would otherwise hold its hidden activations twice.
  at::Tensor result = out;
  if (fusion.gelu) at::gelu_(result);
  if (!fusion.residual) return result;
  check_gemm_residual(op, fusion, out.sizes());
  if (fusion.residual->scalar_type() != result.scalar_type()) return *fusion.residual + result;  // (promotes)
  return result.add_(*fusion.residual);
}

GemmFusion epilogue_of(const GemmFusion& fusion) {
  GemmFusion epilogue;
  epilogue.gelu = fusion.gelu;
  epilogue.residual = fusion.residual;
  return epilogue;
}

std::vector<int64_t> gemm_output_shape(const at::Tensor& A, int64_t out_features) {
  std::vector<int64_t> shape(A.sizes().begin(), A.sizes().end());
  shape.back() = out_features;
  return shape;
}

namespace {

void check_matrix(std::string_view op, std::string_view name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() == 2, op, ": ", name, " must be 2-D, got shape ", t.sizes());
}

}  // namespace

void check_int8_scaled_mm(const at::Tensor& CA, const at::Tensor& CB, const at::Tensor& SCA, const at::Tensor& SCB,
                          const std::optional<at::Tensor>& bias) {
  constexpr std::string_view op = "int8_scaled_mm";
  check_dtype(op, "CA", CA, at::kChar);
  check_dtype(op, "CB", CB, at::kChar);
  check_dtype(op, "SCA", SCA, at::kFloat);
  check_dtype(op, "SCB", SCB, at::kFloat);
  check_matrix(op, "CA", CA);
  check_matrix(op, "CB", CB);
  TORCH_CHECK_VALUE(CA.size(1) == CB.size(1), op, ": CA has ", CA.size(1), " columns but CB has ", CB.size(1));
  check_same_device(op, "CB", CB, "CA", CA);
  check_same_device(op, "SCA", SCA, "CA", CA);
  check_same_device(op, "SCB", SCB, "CA", CA);
  check_numel(op, "SCA", SCA, CA.size(0), "one per row of CA");
  check_numel(op, "SCB", SCB, CB.size(0), "one per row of CB");
  if (bias) {
    check_weight_dtype(op, "bias", bias->scalar_type());
    check_same_device(op, "bias", *bias, "CA", CA);
    check_numel(op, "bias", *bias, CB.size(0), "one per row of CB");
  }
}

}  // namespace imagetotext::ops::detail

namespace imagetotext::ops {
namespace {

c10::OperatorHandle find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> quantize_4bit(const at::Tensor& A, int64_t blocksize, const std::string& quant_type) {
  static const auto op = find_op("imagetotext::quantize_4bit")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t, c10::string_view)>();
  return op.call(A, blocksize, quant_type);
}

at::Tensor dequantize_4bit(const at::Tensor& packed, const at::Tensor& absmax, int64_t blocksize,
                           const std::string& quant_type, const std::vector<int64_t>& shape, at::ScalarType dtype) {
  static const auto op = find_op("imagetotext::dequantize_4bit")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, c10::string_view,
                                               c10::ArrayRef<int64_t>, at::ScalarType)>();
  return op.call(packed, absmax, blocksize, quant_type, shape, dtype);
}

std::tuple<at::Tensor, at::Tensor> quantize_blockwise(const at::Tensor& A, const at::Tensor& code, int64_t blocksize) {
  static const auto op =
      find_op("imagetotext::quantize_blockwise")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(A, code, blocksize);
}

at::Tensor dequantize_blockwise(const at::Tensor& q, const at::Tensor& absmax, const at::Tensor& code,
                                int64_t blocksize, at::ScalarType dtype) {
  static const auto op =
      find_op("imagetotext::dequantize_blockwise")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, at::ScalarType)>();
  return op.call(q, absmax, code, blocksize, dtype);
}

std::tuple<at::Tensor, at::Tensor, std::optional<at::Tensor>> int8_vectorwise_quant(const at::Tensor& A,
                                                                                   double threshold) {
  static const auto op =
      find_op("imagetotext::int8_vectorwise_quant")
          .typed<std::tuple<at::Tensor, at::Tensor, std::optional<at::Tensor>>(const at::Tensor&, double)>();
  return op.call(A, threshold);
}

at::Tensor int8_vectorwise_dequant(const at::Tensor& CB, const at::Tensor& SCB, std::optional<at::ScalarType> dtype) {
  static const auto op = find_op("imagetotext::int8_vectorwise_dequant")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, std::optional<at::ScalarType>)>();
  return op.call(CB, SCB, dtype);
}

at::Tensor gemm_input(const at::Tensor& A, const GemmFusion& fusion) {
  if (fusion.norm_weight) {
    const at::Tensor normed =
        fusion.norm_bias ? at::layer_norm(A, {A.size(-1)}, *fusion.norm_weight, *fusion.norm_bias, fusion.norm_eps)
                         : rms_norm(A, *fusion.norm_weight, fusion.norm_eps);
    if (fusion.normed_out) fusion.normed_out->copy_(normed);
    return normed;
  }
  if (!fusion.gated) return A;
  const int64_t K = A.size(-1) / 2;
  return silu_mul(A.narrow(-1, 0, K), A.narrow(-1, K, K));
}

// The fusion's arguments as the gemm schemas take them (registration.cpp).
#define IMAGETOTEXT_FUSION_TYPES                                                                          \
  const std::optional<at::Tensor>&, double, bool, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, \
      bool, const std::optional<at::Tensor>&
#define IMAGETOTEXT_FUSION_VALUES(f) \
  f.norm_weight, f.norm_eps, f.gated, f.residual, f.norm_bias, f.gelu, f.normed_out

at::Tensor gemm_4bit(const at::Tensor& A, const at::Tensor& packed, const at::Tensor& absmax, int64_t blocksize,
                     const std::string& quant_type, const std::vector<int64_t>& weight_shape,
                     const std::optional<at::Tensor>& bias, const GemmFusion& fusion) {
  static const auto op = find_op("imagetotext::gemm_4bit")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                               c10::string_view, c10::ArrayRef<int64_t>,
                                               const std::optional<at::Tensor>&, IMAGETOTEXT_FUSION_TYPES)>();
  return op.call(A, packed, absmax, blocksize, quant_type, weight_shape, bias, IMAGETOTEXT_FUSION_VALUES(fusion));
}

at::Tensor gemm_int8_weight_only(const at::Tensor& A, const at::Tensor& CB, const at::Tensor& SCB,
                                 const std::optional<at::Tensor>& bias, const GemmFusion& fusion) {
  static const auto op = find_op("imagetotext::gemm_int8_weight_only")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const std::optional<at::Tensor>&, IMAGETOTEXT_FUSION_TYPES)>();
  return op.call(A, CB, SCB, bias, IMAGETOTEXT_FUSION_VALUES(fusion));
}

at::Tensor gemm_dense(const at::Tensor& A, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      const GemmFusion& fusion) {
  static const auto op = find_op("imagetotext::gemm_dense")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                               IMAGETOTEXT_FUSION_TYPES)>();
  return op.call(A, weight, bias, IMAGETOTEXT_FUSION_VALUES(fusion));
}

#undef IMAGETOTEXT_FUSION_TYPES
#undef IMAGETOTEXT_FUSION_VALUES

at::Tensor int8_scaled_mm(const at::Tensor& CA, const at::Tensor& CB, const at::Tensor& SCA, const at::Tensor& SCB,
                          const std::optional<at::Tensor>& bias) {
  static const auto op = find_op("imagetotext::int8_scaled_mm")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, const std::optional<at::Tensor>&)>();
  return op.call(CA, CB, SCA, SCB, bias);
}

}  // namespace imagetotext::ops
