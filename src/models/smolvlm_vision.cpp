#include "imagetotext/models/smolvlm_vision.hpp"

#include <ATen/ops/_addmm_activation.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/bucketize.h>
#include <ATen/ops/clamp_max.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <fmt/format.h>

#include <cmath>

#include "imagetotext/core/error.hpp"

namespace imagetotext::smolvlm {

VisionTransformer VisionTransformer::load(const nn::Weights& weights, const SmolVLMVisionConfig& config,
                                          const nn::LinearPolicy& policy) {
  const std::int64_t width = config.hidden_size;
  if (config.num_attention_heads <= 0 || width % config.num_attention_heads != 0) {
    throw CheckpointError(fmt::format("checkpoint {}: vision hidden_size {} is not a multiple of its {} heads",
                                      weights.source().string(), width, config.num_attention_heads));
  }
  if (config.hidden_act != "gelu_pytorch_tanh") {
    throw CheckpointError(fmt::format("checkpoint {}: vision hidden_act '{}' is not implemented (gelu_pytorch_tanh is)",
                                      weights.source().string(), config.hidden_act));
  }
  VisionTransformer vision;
  vision.config_ = config;
  const nn::Weights embeddings = weights["embeddings"];
  vision.patch_weight_ = embeddings["patch_embedding"].get(
      "weight", {width, config.num_channels, config.patch_size, config.patch_size});
  vision.patch_bias_ = embeddings["patch_embedding"].get("bias", {width});
  const std::int64_t side = config.image_size / config.patch_size;
  vision.position_embedding_ = nn::Embedding::load(embeddings, "position_embedding", side * side, width);

  const nn::Weights layers = weights["encoder"]["layers"];
  vision.layers_.reserve(static_cast<std::size_t>(config.num_hidden_layers));
  for (std::int64_t i = 0; i < config.num_hidden_layers; ++i) {
    const nn::Weights layer = layers[i];
    const nn::Weights attn = layer["self_attn"];
    vision.layers_.push_back(VisionEncoderLayer{
        nn::LayerNorm::load(layer, "layer_norm1", width, config.layer_norm_eps),
        nn::FusedLinear::load(attn, {"q_proj", "k_proj", "v_proj"}, policy, width, {width, width, width}),
        nn::Linear::load(attn, "out_proj", policy, width, width),
        nn::LayerNorm::load(layer, "layer_norm2", width, config.layer_norm_eps),
        nn::Linear::load(layer["mlp"], "fc1", policy, width, config.intermediate_size),
        nn::Linear::load(layer["mlp"], "fc2", policy, config.intermediate_size, width),
    });
  }
  vision.post_layernorm_ = nn::LayerNorm::load(weights, "post_layernorm", width, config.layer_norm_eps);
  return vision;
}

at::Tensor VisionTransformer::position_ids(const at::Tensor& patch_mask, at::ScalarType dtype) const {
  // Idefics3VisionEmbeddings: each tile's real patches (nb_h x nb_w) are spread over the side x side table by
  // bucketing i / nb into 1/side steps; padded patches take position 0. The same float32 operations, in order.
  const std::int64_t side = config_.image_size / config_.patch_size;
  const auto f32 = patch_mask.options().dtype(at::kFloat);
  const at::Tensor boundaries = at::arange(1.0 / static_cast<double>(side), 1.0, 1.0 / static_cast<double>(side), f32);
  const std::int64_t tiles = patch_mask.size(0);
  const at::Tensor step_h = patch_mask.select(2, 0).sum(1).to(at::kFloat).reciprocal();
  const at::Tensor step_w = patch_mask.select(1, 0).sum(1).to(at::kFloat).reciprocal();
  const at::Tensor h = at::arange(patch_mask.size(1), f32).unsqueeze(0) * step_h.unsqueeze(1);
  const at::Tensor w = at::arange(patch_mask.size(2), f32).unsqueeze(0) * step_w.unsqueeze(1);
  const at::Tensor bucket_h = at::bucketize(at::clamp_max(h, 1.0 - 1e-6).to(dtype), boundaries, false, true);
  const at::Tensor bucket_w = at::bucketize(at::clamp_max(w, 1.0 - 1e-6).to(dtype), boundaries, false, true);
  const at::Tensor ids = (bucket_h.unsqueeze(2) * side + bucket_w.unsqueeze(1)).reshape({tiles, -1});
  return at::where(patch_mask.reshape({tiles, -1}), ids, at::zeros_like(ids));
}

at::Tensor VisionTransformer::embed(const at::Tensor& pixel_values, const std::optional<at::Tensor>& patch_mask) const {
  // The patch convolution (stride = kernel) as one matmul over each patch's pixels, which gives the embeddings as
  // contiguous rows [tiles, patches, width]. On the H100 cuDNN's implicit-GEMM convolution took 1.2 ms for 17
  // tiles, and its output viewed as tokens was transposed: every residual add after it kept that layout, and every
  // LayerNorm copied its input contiguous first (5.4 of the image side's 18.2 ms of kernels).
  const std::int64_t patch = config_.patch_size, tiles = pixel_values.size(0), channels = pixel_values.size(1);
  const std::int64_t rows = pixel_values.size(2) / patch, columns = pixel_values.size(3) / patch;
  const at::Tensor pixels_by_patch = pixel_values.narrow(2, 0, rows * patch)
                                         .narrow(3, 0, columns * patch)
                                         .reshape({tiles, channels, rows, patch, columns, patch})
                                         .permute({0, 2, 4, 1, 3, 5})
                                         .reshape({tiles, rows * columns, channels * patch * patch});
  const at::Tensor embeddings =
      at::linear(pixels_by_patch, patch_weight_.reshape({patch_weight_.size(0), -1}), patch_bias_);
  const std::int64_t side = config_.image_size / config_.patch_size;
  at::Tensor ids;
  if (!patch_mask && rows == side && columns == side) {
    // Full-size tiles, every patch real: the bucketing is the identity.
    ids = at::arange(side * side, pixel_values.options().dtype(at::kLong)).unsqueeze(0);
  } else {
    const at::Tensor mask =
        patch_mask ? *patch_mask : at::ones({tiles, rows, columns}, pixel_values.options().dtype(at::kBool));
    ids = position_ids(mask, pixel_values.scalar_type());
  }
  return embeddings + position_embedding_(ids);
}

at::Tensor VisionTransformer::attention(const VisionEncoderLayer& layer, const at::Tensor& x,
                                        const std::optional<at::Tensor>& key_mask) const {
  const std::int64_t tiles = x.size(0), length = x.size(1);
  const std::int64_t heads = config_.num_attention_heads, head_dim = config_.hidden_size / heads;
  auto split_heads = [&](const at::Tensor& t) { return t.view({tiles, length, heads, head_dim}).transpose(1, 2); };
  const std::vector<at::Tensor> qkv = layer.qkv_proj(x);
  const at::Tensor q = split_heads(qkv[0]), k = split_heads(qkv[1]), v = split_heads(qkv[2]);
  const at::Tensor out = at::scaled_dot_product_attention(q, k, v, key_mask);
  return layer.out_proj(out.transpose(1, 2).reshape({tiles, length, config_.hidden_size}));
}

namespace {
// Rows above which the quantized gemms dequantize the weight and run cuBLAS (cuda::kMaxMmaRows; below it their
// fused GEMVs run).
constexpr std::int64_t kDequantizingRows = 64;

// GELU-tanh(fc1(x)). On CUDA a dense fc1 is one cuBLASLt GEMM whose epilogue adds the bias and applies the GELU
// (tanh form, SigLIP's) before the output is rounded; the activation's own kernel read and wrote the
// [tokens, intermediate] hidden state once more (0.8 of the 256M image side's 12.4 ms of GPU time on the H100).
// The rounding differs from the composition's only in that the GELU sees the unrounded sum. A weight-only
// quantized fc1 over a tower's rows would dequantize and run cuBLAS anyway: it takes the same GEMM.
at::Tensor mlp_hidden(const nn::Linear& fc1, const at::Tensor& x) {
  const quant::QuantizedLinear& layer = fc1.layer();
  const std::int64_t rows = x.numel() / x.size(-1);
  const bool dequantizes = layer.format() != Quantization::llm_int8 && rows > kDequantizingRows;
  if (x.is_cuda() && layer.bias() && (layer.format() == Quantization::none || dequantizes)) {
    std::vector<std::int64_t> sizes = x.sizes().vec();
    sizes.back() = layer.out_features;
    const at::Tensor weight = layer.dequantized_weight(x.scalar_type());
    return at::_addmm_activation(*layer.bias(), x.reshape({-1, x.size(-1)}), weight.t(), 1, 1, /*use_gelu=*/true)
        .view(sizes);
  }
  return at::gelu(fc1(x), "tanh");
}
}  // namespace

bool VisionTransformer::capturable() const {
  for (const VisionEncoderLayer& l : layers_) {
    std::vector<const quant::QuantizedLinear*> layers = l.qkv_proj.layers();
    for (const nn::Linear* linear : {&l.out_proj, &l.fc1, &l.fc2}) layers.push_back(&linear->layer());
    for (const quant::QuantizedLinear* layer : layers) {
      if (layer->synchronizes()) return false;
    }
  }
  return true;
}

at::Tensor VisionTransformer::operator()(const at::Tensor& pixel_values, const std::optional<at::Tensor>& patch_mask) const {
  at::Tensor h = embed(pixel_values, patch_mask);
  std::optional<at::Tensor> key_mask;
  if (patch_mask) key_mask = patch_mask->reshape({h.size(0), 1, 1, -1});  // padded patches are never attended to
  for (const VisionEncoderLayer& layer : layers_) {
    h = h + attention(layer, layer.layer_norm1(h), key_mask);
    h = h + layer.fc2(mlp_hidden(layer.fc1, layer.layer_norm2(h)));
  }
  return post_layernorm_(h);
}

Connector Connector::load(const nn::Weights& weights, const SmolVLMConfig& config, const nn::LinearPolicy& policy) {
  const std::int64_t s = config.scale_factor;
  const std::int64_t side = config.vision.image_size / config.vision.patch_size;
  if (s <= 0 || side % s != 0) {
    throw CheckpointError(fmt::format("checkpoint {}: scale_factor {} does not divide the {}x{} patch grid",
                                      weights.source().string(), s, side, side));
  }
  Connector connector;
  connector.scale_factor_ = s;
  connector.proj_.emplace(nn::Linear::load(weights["modality_projection"], "proj", policy,
                                           config.vision.hidden_size * s * s, config.text.hidden_size));
  return connector;
}

at::Tensor pixel_shuffle(const at::Tensor& x, std::int64_t s) {
  const std::int64_t tiles = x.size(0), seq = x.size(1), width = x.size(2);
  const auto side = static_cast<std::int64_t>(std::lround(std::sqrt(static_cast<double>(seq))));
  if (side * side != seq || side % s != 0) {
    throw InvalidArgumentError(fmt::format("pixel shuffle by {} needs a square grid divisible by it; got {} patches", s, seq));
  }
  at::Tensor y = x.view({tiles, side, side, width});
  y = y.view({tiles, side, side / s, width * s}).permute({0, 2, 1, 3});
  y = y.reshape({tiles, side / s, side / s, width * s * s}).permute({0, 2, 1, 3});
  return y.reshape({tiles, seq / (s * s), width * s * s});
}

at::Tensor Connector::operator()(const at::Tensor& vision_hidden) const {
  return (*proj_)(smolvlm::pixel_shuffle(vision_hidden, scale_factor_));  // not ATen's pixel_shuffle (ADL)
}

}  // namespace imagetotext::smolvlm
