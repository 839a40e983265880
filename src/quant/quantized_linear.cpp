// QuantizedLinear: quantization from dense weights, the forward paths, and the bitsandbytes state-dict
// layout (reference section 3; docs/quantization.md, "Checkpoint layout").
#include "imagetotext/quant/quantized_linear.hpp"

#include <ATen/ops/cat.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/scalar_tensor.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "../ops/quantize.hpp"
#include "imagetotext/core/error.hpp"

namespace imagetotext::quant {
namespace {

bool is_4bit(Quantization format) { return format == Quantization::nf4 || format == Quantization::fp4; }
bool is_int8(Quantization format) { return format == Quantization::int8 || format == Quantization::llm_int8; }

QuantType quant_type_of(Quantization format) {
  return format == Quantization::nf4 ? QuantType::nf4 : QuantType::fp4;
}

// torch's dtype names as bitsandbytes writes them: str(torch.float32).strip("torch.").
const char* dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "float32";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    default: break;
  }
  TORCH_CHECK_VALUE(false, "QuantizedLinear: a 4-bit weight must be float32, float16 or bfloat16, got ", dtype);
}

std::optional<at::ScalarType> parse_dtype_name(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "float16") return at::kHalf;
  if (name == "bfloat16") return at::kBFloat16;
  return std::nullopt;
}

// A double as Python's repr writes it (json.dumps): shortest round trip, and "1.0" rather than "1".
std::string python_float(double value) {
  std::string text = fmt::format("{}", value);
  if (text.find_first_of(".eEn") == std::string::npos) text += ".0";
  return text;
}

// The JSON of QuantState.as_dict(packed=True), byte for byte as bitsandbytes' json.dumps writes it.
std::string quant_state_json(const QuantState& state) {
  std::string shape;
  for (size_t i = 0; i < state.shape.size(); ++i) shape += (i ? ", " : "") + std::to_string(state.shape[i]);
  std::string json = fmt::format(R"({{"quant_type": "{}", "blocksize": {}, "dtype": "{}", "shape": [{}])",
                                 quant_type_name(state.quant_type), state.blocksize, dtype_name(state.dtype), shape);
  if (state.nested) {
    json += fmt::format(R"(, "nested_blocksize": {}, "nested_dtype": "float32", "nested_offset": {})",
                        state.nested->blocksize, python_float(state.nested->offset.item<float>()));
  }
  return json + "}";
}

at::Tensor bytes_tensor(const std::string& text) {
  return at::from_blob(const_cast<char*>(text.data()), {static_cast<int64_t>(text.size())}, at::kByte).clone();
}

std::string quant_state_key_suffix(QuantType type) {
  return std::string("weight.quant_state.bitsandbytes__") + quant_type_name(type);
}

// ---- reading a state dict -------------------------------------------------------------------------

class StateDictReader {
 public:
  StateDictReader(const StateDict& state, const std::string& prefix) : state_(state), prefix_(prefix) {}

  bool contains(const std::string& name) const { return state_.contains(prefix_ + name); }

  const at::Tensor& get(const std::string& name) const {
    const auto it = state_.find(prefix_ + name);
    if (it == state_.end()) fail(name, "is missing");
    return it->second;
  }

  std::optional<at::Tensor> find(const std::string& name) const {
    const auto it = state_.find(prefix_ + name);
    if (it == state_.end()) return std::nullopt;
    return it->second;
  }

  const at::Tensor& get(const std::string& name, at::ScalarType dtype) const {
    const at::Tensor& t = get(name);
    if (t.scalar_type() != dtype) fail(name, fmt::format("must be {}, got {}", c10::toString(dtype),
                                                          c10::toString(t.scalar_type())));
    return t;
  }

  [[noreturn]] void fail(const std::string& name, const std::string& why) const {
    throw CheckpointError(fmt::format("QuantizedLinear state dict: '{}{}' {}", prefix_, name, why));
  }

 private:
  const StateDict& state_;
  const std::string& prefix_;
};

}  // namespace

QuantizedLinear QuantizedLinear::from_dense(const at::Tensor& weight, std::optional<at::Tensor> bias,
                                            Quantization format, QuantizeOptions options) {
  TORCH_CHECK_VALUE(weight.dim() == 2, "QuantizedLinear.from_dense: weight must be 2-D [out_features, in_features], "
                    "got shape ", weight.sizes());
  TORCH_CHECK_VALUE(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kHalf ||
                        weight.scalar_type() == at::kBFloat16,
                    "QuantizedLinear.from_dense: weight must be float32, float16 or bfloat16, got ",
                    weight.scalar_type());
  TORCH_CHECK_VALUE(options.threshold >= 0.0, "QuantizedLinear.from_dense: threshold must be >= 0, got ",
                    options.threshold);
  QuantizedLinear layer;
  layer.format_ = format;
  layer.out_features = weight.size(0);
  layer.in_features = weight.size(1);
  layer.threshold_ = options.threshold;
  if (bias) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == layer.out_features,
                      "QuantizedLinear.from_dense: bias must be [", layer.out_features, "], got shape ", bias->sizes());
    layer.bias_ = bias->contiguous();
  }
  if (format == Quantization::none) {
    layer.weight_ = weight.contiguous();
  } else if (is_int8(format)) {
    // Int8Params quantizes the float16 weight (reference section 4.1).
    auto [cb, scb, outliers] = ops::int8_vectorwise_quant(weight.to(at::kHalf), 0.0);
    layer.weight_ = cb;
    layer.scb_ = scb;
  } else {
    auto [packed, state] = quantize_4bit(weight, options.blocksize, quant_type_of(format), options.compress_statistics);
    layer.weight_ = packed;
    layer.state_ = std::move(state);
  }
  layer.prepare_forward();
  return layer;
}

QuantizedLinear QuantizedLinear::from_state_dict(const StateDict& state, const std::string& prefix,
                                                 Quantization format, double threshold) {
  const StateDictReader reader(state, prefix);
  QuantizedLinear layer;
  layer.format_ = format;
  layer.threshold_ = threshold;
  if (reader.contains("bias")) layer.bias_ = reader.get("bias").contiguous();

  if (format == Quantization::none) {
    layer.weight_ = reader.get("weight").contiguous();
    if (layer.weight_.dim() != 2) reader.fail("weight", "must be 2-D [out_features, in_features]");
  } else if (is_int8(format)) {
    layer.weight_ = reader.get("weight", at::kChar).contiguous();
    layer.scb_ = reader.get("SCB", at::kFloat).contiguous();
    if (layer.weight_.dim() != 2) reader.fail("weight", "must be 2-D int8 [out_features, in_features]");
    if (layer.scb_.numel() != layer.weight_.size(0)) reader.fail("SCB", "must hold one value per weight row");
    // Only the row-major layout exists since bitsandbytes 0.45 (reference section 4.4); 0.44's tiled
    // col_turing / col_ampere weights are refused, as bitsandbytes refuses them.
    if (const auto weight_format = reader.find("weight_format");
        weight_format && weight_format->numel() == 1 && weight_format->item<int64_t>() != 0) {
      reader.fail("weight_format", fmt::format("is {}; only 0 (row-major) is supported",
                                               weight_format->item<int64_t>()));
    }
  } else {
    const QuantType type = quant_type_of(format);
    const std::string json_key = quant_state_key_suffix(type);
    const at::Tensor& json_bytes = reader.get(json_key, at::kByte);
    // The JSON blob is read on the host, wherever the state dict's tensors were placed.
    const at::Tensor contiguous_bytes = json_bytes.cpu().contiguous();
    const std::string text(reinterpret_cast<const char*>(contiguous_bytes.data_ptr<uint8_t>()),
                           static_cast<size_t>(contiguous_bytes.numel()));
    nlohmann::json fields;
    try {
      fields = nlohmann::json::parse(text);
      QuantState& s = layer.state_;
      s.quant_type = type;
      if (fields.at("quant_type").get<std::string>() != quant_type_name(type)) {
        reader.fail(json_key, "names quant_type '" + fields.at("quant_type").get<std::string>() + "'");
      }
      s.blocksize = fields.at("blocksize").get<int64_t>();
      const auto dtype = parse_dtype_name(fields.at("dtype").get<std::string>());
      if (!dtype) reader.fail(json_key, "has an unsupported dtype '" + fields.at("dtype").get<std::string>() + "'");
      s.dtype = *dtype;
      s.shape = fields.at("shape").get<std::vector<int64_t>>();
      if (fields.contains("nested_offset")) {
        NestedQuantState nested;
        nested.blocksize = fields.at("nested_blocksize").get<int64_t>();
        nested.offset = at::scalar_tensor(fields.at("nested_offset").get<double>(), at::kFloat);
        nested.absmax = reader.get("weight.nested_absmax", at::kFloat).contiguous();
        nested.code = reader.get("weight.nested_quant_map", at::kFloat).contiguous();
        s.nested = std::move(nested);
      }
    } catch (const nlohmann::json::exception& e) {
      reader.fail(json_key, std::string("is not bitsandbytes' quant-state JSON: ") + e.what());
    }
    QuantState& s = layer.state_;
    if (s.shape.size() != 2) reader.fail(json_key, "must give a 2-D shape [out_features, in_features]");
    if (!is_valid_blocksize_4bit(s.blocksize)) reader.fail(json_key, fmt::format("has blocksize {}", s.blocksize));
    s.absmax = reader.get("weight.absmax", s.nested ? at::kByte : at::kFloat).contiguous();
    s.code = reader.get("weight.quant_map", at::kFloat).contiguous();
    // quant_storage other than uint8 (FSDP) only re-types the packed bytes.
    at::Tensor packed = reader.get("weight").contiguous();
    if (packed.scalar_type() != at::kByte) packed = packed.view(at::kByte);
    const int64_t n = s.shape[0] * s.shape[1];
    if (packed.numel() != packed_4bit_bytes(n)) {
      reader.fail("weight", fmt::format("holds {} bytes; shape [{}, {}] packs into {}", packed.numel(), s.shape[0],
                                        s.shape[1], packed_4bit_bytes(n)));
    }
    if (s.absmax.numel() != block_count(n, s.blocksize)) {
      reader.fail("weight.absmax", fmt::format("holds {} values, expected {}", s.absmax.numel(),
                                               block_count(n, s.blocksize)));
    }
    if (s.code.numel() != 16) reader.fail("weight.quant_map", "must hold 16 values");
    layer.weight_ = packed.reshape({packed_4bit_bytes(n), 1});
  }

  if (is_4bit(format)) {
    layer.out_features = layer.state_.shape[0];
    layer.in_features = layer.state_.shape[1];
  } else {
    layer.out_features = layer.weight_.size(0);
    layer.in_features = layer.weight_.size(1);
  }
  if (layer.bias_ && layer.bias_->numel() != layer.out_features) {
    reader.fail("bias", fmt::format("must hold {} values (out_features)", layer.out_features));
  }
  layer.prepare_forward();
  return layer;
}

std::optional<QuantizedLinear> QuantizedLinear::stack_rows(const std::vector<const QuantizedLinear*>& parts) {
  if (parts.empty()) return std::nullopt;
  const QuantizedLinear& first = *parts.front();
  std::vector<at::Tensor> weights, biases, scbs, absmaxes;
  int64_t out_features = 0;
  for (const QuantizedLinear* part : parts) {
    if (part->format_ != first.format_ || part->in_features != first.in_features ||
        part->bias_.has_value() != first.bias_.has_value() || part->format_ == Quantization::llm_int8) {
      return std::nullopt;
    }
    if (is_4bit(part->format_)) {
      const QuantState& s = part->state_;
      if (s.blocksize != first.state_.blocksize || s.quant_type != first.state_.quant_type ||
          s.dtype != first.state_.dtype || (part->out_features * part->in_features) % s.blocksize != 0) {
        return std::nullopt;
      }
      absmaxes.push_back(part->float_absmax_);
    }
    weights.push_back(part->weight_);
    if (part->bias_) biases.push_back(*part->bias_);
    if (is_int8(part->format_)) scbs.push_back(part->scb_);
    out_features += part->out_features;
  }
  QuantizedLinear stacked;
  stacked.format_ = first.format_;
  stacked.in_features = first.in_features;
  stacked.out_features = out_features;
  stacked.threshold_ = first.threshold_;
  stacked.weight_ = at::cat(weights, 0);  // dense and int8: rows; 4-bit: packed bytes, whole blocks per part
  if (!biases.empty()) stacked.bias_ = at::cat(biases, 0);
  if (!scbs.empty()) stacked.scb_ = at::cat(scbs, 0);
  if (is_4bit(first.format_)) {
    stacked.state_ = first.state_;
    stacked.state_.absmax = at::cat(absmaxes, 0);
    stacked.state_.nested.reset();
    stacked.state_.shape = {out_features, first.in_features};
  }
  stacked.prepare_forward();
  return stacked;
}

void QuantizedLinear::prepare_forward() {
  if (is_4bit(format_)) float_absmax_ = state_.float_absmax().contiguous();
}

at::Tensor QuantizedLinear::forward(const at::Tensor& x, const ops::GemmFusion& fusion) const {
  const int64_t width = fusion.gated ? 2 * in_features : in_features;
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == width, "QuantizedLinear.forward: x must be [..., ", width,
                    "], got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf ||
                        x.scalar_type() == at::kBFloat16,
                    "QuantizedLinear.forward: x must be float32, float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.device() == weight_.device(), "QuantizedLinear.forward: x is on ", x.device(),
                    " but the weight is on ", weight_.device());
  if (format_ == Quantization::llm_int8) {  // no gemm op: the fusion composed as the ops compose it
    constexpr std::string_view op = "QuantizedLinear.forward";
    ops::detail::check_gemm_fusion(op, x, fusion.norm_weight, fusion.norm_eps, fusion.gated, fusion.residual,
                                   fusion.norm_bias, fusion.gelu, fusion.normed_out);
    const at::Tensor out = llm_int8_matmul(ops::gemm_input(x, fusion), weight_, scb_, bias_, threshold_);
    return ops::detail::finish_gemm(op, out, fusion);
  }

  // The gemm ops pick their path per device and row count (fused kernels for few rows, dequantize + BLAS
  // for many): src/ops/cpu/quant_gemm.cpp, src/ops/cuda/gemm_*.cu.
  const std::optional<at::Tensor> bias = bias_ ? std::optional<at::Tensor>(bias_->to(x.scalar_type())) : std::nullopt;
  if (format_ == Quantization::none) return ops::gemm_dense(x, weight_.to(x.scalar_type()), bias, fusion);
  if (format_ == Quantization::int8) return ops::gemm_int8_weight_only(x, weight_, scb_, bias, fusion);
  return ops::gemm_4bit(x, weight_, float_absmax_, state_.blocksize, quant_type_name(state_.quant_type), state_.shape,
                        bias, fusion);
}

at::Tensor QuantizedLinear::dequantized_weight(std::optional<at::ScalarType> dtype) const {
  if (format_ == Quantization::none) return dtype ? weight_.to(*dtype) : weight_;
  if (is_int8(format_)) return ops::int8_vectorwise_dequant(weight_, scb_, dtype);
  return ops::dequantize_4bit(weight_, float_absmax_, state_.blocksize, quant_type_name(state_.quant_type),
                              state_.shape, dtype.value_or(state_.dtype));
}

StateDict QuantizedLinear::state_dict(const std::string& prefix) const {
  StateDict out;
  out[prefix + "weight"] = weight_;
  if (bias_) out[prefix + "bias"] = *bias_;
  if (is_int8(format_)) {
    out[prefix + "SCB"] = scb_;
    out[prefix + "weight_format"] = at::scalar_tensor(0, at::kByte);  // 0 = "row"
  } else if (is_4bit(format_)) {
    out[prefix + "weight.absmax"] = state_.absmax;
    out[prefix + "weight.quant_map"] = state_.code;
    if (state_.nested) {
      out[prefix + "weight.nested_absmax"] = state_.nested->absmax;
      out[prefix + "weight.nested_quant_map"] = state_.nested->code.clone();  // bitsandbytes saves a copy
    }
    out[prefix + quant_state_key_suffix(state_.quant_type)] = bytes_tensor(quant_state_json(state_));
  }
  return out;
}

size_t QuantizedLinear::weight_bytes() const {
  size_t bytes = weight_.nbytes();
  if (is_int8(format_)) bytes += scb_.nbytes();
  if (is_4bit(format_)) {
    bytes += state_.absmax.nbytes() + state_.code.nbytes();
    if (state_.nested) bytes += state_.nested->absmax.nbytes() + state_.nested->code.nbytes() + sizeof(float);
  }
  return bytes;
}

size_t QuantizedLinear::weight_bytes_for(Quantization format, int64_t out_features, int64_t in_features,
                                     at::ScalarType dense_dtype, const QuantizeOptions& options) {
  const auto n = static_cast<size_t>(out_features * in_features);
  if (format == Quantization::none) return n * c10::elementSize(dense_dtype);
  if (is_int8(format)) return n + sizeof(float) * static_cast<size_t>(out_features);  // CB + SCB
  const auto blocks = static_cast<size_t>(block_count(static_cast<int64_t>(n), options.blocksize));
  size_t bytes = static_cast<size_t>(packed_4bit_bytes(static_cast<int64_t>(n))) + 16 * sizeof(float);  // + code
  if (!options.compress_statistics) return bytes + blocks * sizeof(float);
  // uint8 absmax codes, float32 absmax per nested block, the 256-entry dynamic map and the offset.
  const auto nested_blocks = static_cast<size_t>(block_count(static_cast<int64_t>(blocks), kNestedBlocksize));
  return bytes + blocks + nested_blocks * sizeof(float) + kDynamicMapSize * sizeof(float) + sizeof(float);
}

}  // namespace imagetotext::quant
