// The shared layers' loading: Weights' prefixes, dtype placement and shape checks, and Linear's choice
// between dense, quantized-on-load and pre-quantized layers (the formats themselves: test_quant.cpp).
#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "catch.hpp"
#include "imagetotext/core/error.hpp"
#include "imagetotext/nn/attention.hpp"
#include "imagetotext/nn/layers.hpp"
#include "imagetotext/nn/linear.hpp"

namespace nn = imagetotext::nn;
using imagetotext::CheckpointError;
using imagetotext::Quantization;

namespace {
nn::Weights make_weights(imagetotext::io::TensorMap tensors, at::ScalarType dtype = at::kFloat) {
  return nn::Weights(std::move(tensors), "memory.safetensors", nn::Placement{c10::kCPU, dtype});
}
}  // namespace

TEST_CASE("Weights: prefixes, dtype placement, shape checks", "[nn]") {
  const nn::Weights weights = make_weights(
      {{"model.layers.0.fc.weight", at::ones({4, 3}, at::kFloat)}, {"model.ids", at::arange(5, at::kLong)}},
      at::kBFloat16);
  const nn::Weights layer = weights["model"]["layers"][0];
  CHECK(layer.prefix() == "model.layers.0.");
  CHECK(layer.get("fc.weight").scalar_type() == at::kBFloat16);   // floats take the model's dtype
  CHECK(weights["model"].get("ids").scalar_type() == at::kLong);  // integers keep theirs
  CHECK(layer.raw_tensors().size() == 1);
  CHECK_THROWS_AS(layer.get("fc.bias"), CheckpointError);
  CHECK_THROWS_WITH(layer.get("fc.weight", {3, 4}),
                    ContainsSubstring("model.layers.0.fc.weight") && ContainsSubstring("[3, 4]"));
  CHECK_FALSE(layer.get_if("fc.bias").has_value());
}

TEST_CASE("Linear: keep_dense matching, quantize on load, pre-quantized layers", "[nn]") {
  nn::LinearPolicy policy{Quantization::nf4, {}, {"lm_head", "model.vision"}};
  CHECK(policy.format_for("lm_head") == Quantization::none);
  CHECK(policy.format_for("model.text.lm_head") == Quantization::none);
  CHECK(policy.format_for("model.vision.layers.0.fc1") == Quantization::none);
  CHECK(policy.format_for("model.visionary.fc1") == Quantization::nf4);
  CHECK(policy.format_for("model.text.fc1") == Quantization::nf4);

  const at::Tensor weight = at::randn({8, 64});
  const at::Tensor bias = at::randn({8});
  const nn::Weights weights = make_weights({{"fc.weight", weight}, {"fc.bias", bias}});
  const at::Tensor x = at::randn({2, 64});

  const nn::Linear dense = nn::Linear::load(weights, "fc", nn::LinearPolicy{}, 64, 8);
  CHECK(at::allclose(dense(x), at::linear(x, weight, bias)));
  CHECK_THROWS_WITH(nn::Linear::load(weights, "fc", nn::LinearPolicy{}, 32, 8), ContainsSubstring("'fc'"));

  const nn::Linear quantized = nn::Linear::load(weights, "fc", policy);
  REQUIRE(quantized.layer().format() == Quantization::nf4);
  // Saved in bitsandbytes' layout and read back, the layer is detected as NF4 whatever the policy says.
  const nn::Weights saved = make_weights(quantized.layer().state_dict("fc."));
  const nn::Linear reloaded = nn::Linear::load(saved, "fc", nn::LinearPolicy{});
  CHECK(reloaded.layer().format() == Quantization::nf4);
  CHECK(at::equal(reloaded(x), quantized(x)));

  const nn::Linear int8 = nn::Linear::load(weights, "fc", nn::LinearPolicy{Quantization::int8});
  const nn::Weights saved8 = make_weights(int8.layer().state_dict("fc."));
  CHECK(nn::Linear::load(saved8, "fc", nn::LinearPolicy{}).layer().format() == Quantization::int8);
  CHECK(nn::Linear::load(saved8, "fc", nn::LinearPolicy{Quantization::llm_int8}).layer().format() ==
        Quantization::llm_int8);
}

TEST_CASE("Linear: on_load reports each layer as loaded; weight_bytes without a layer matches a built one", "[nn]") {
  const nn::Weights weights = make_weights({{"model.fc1.weight", at::randn({96, 80})},
                                            {"model.head.weight", at::randn({7, 80})}});
  nn::LinearPolicy policy;
  policy.format = Quantization::nf4;
  policy.keep_dense = {"head"};
  std::vector<std::string> seen;
  policy.on_load = [&](const std::string& module, const imagetotext::quant::QuantizedLinear& layer) {
    seen.push_back(module + ":" + std::string(imagetotext::quantization_name(layer.format())));
  };
  const nn::Linear fc1 = nn::Linear::load(weights["model"], "fc1", policy);
  const nn::Linear head = nn::Linear::load(weights["model"], "head", policy);
  REQUIRE(seen.size() == 2);
  CHECK(seen[0] == "model.fc1:nf4");
  CHECK(seen[1] == "model.head:none");

  using imagetotext::quant::QuantizedLinear;
  for (Quantization format : {Quantization::none, Quantization::int8, Quantization::nf4, Quantization::fp4}) {
    for (bool nested : {true, false}) {
      imagetotext::quant::QuantizeOptions options;
      options.compress_statistics = nested;
      for (auto [out, in] : {std::pair<int64_t, int64_t>{96, 80}, {7, 33}, {300, 256}}) {
        const QuantizedLinear built = QuantizedLinear::from_dense(at::randn({out, in}), std::nullopt, format, options);
        CHECK(QuantizedLinear::weight_bytes_for(format, out, in, at::kFloat, options) == built.weight_bytes());
      }
    }
  }
}

TEST_CASE("FusedLinear: stacked rows give what the parts give; LLM.int8 and mixed formats stay apart", "[nn]") {
  // q/k/v-like parts: 96 + 32 + 32 rows of 64 inputs (4-bit: whole blocks of 64 per part), with biases.
  const std::vector<std::int64_t> widths{96, 32, 32};
  imagetotext::io::TensorMap tensors;
  const std::vector<std::string> names{"q", "k", "v"};
  for (std::size_t i = 0; i < names.size(); ++i) {
    tensors[names[i] + ".weight"] = at::randn({widths[i], 64});
    tensors[names[i] + ".bias"] = at::randn({widths[i]});
  }
  const nn::Weights weights = make_weights(tensors);
  const at::Tensor x = at::randn({3, 5, 64});
  for (Quantization format : {Quantization::none, Quantization::int8, Quantization::nf4, Quantization::fp4}) {
    const nn::LinearPolicy policy{format};
    const nn::FusedLinear fused = nn::FusedLinear::load(weights, {"q", "k", "v"}, policy, 64, widths);
    REQUIRE(fused.layers().size() == 1);  // stacked
    const std::vector<at::Tensor> outputs = fused(x);
    REQUIRE(outputs.size() == 3);
    for (std::size_t i = 0; i < names.size(); ++i) {
      const at::Tensor alone = nn::Linear::load(weights, names[i], policy)(x);
      REQUIRE(outputs[i].sizes() == alone.sizes());
      if (format == Quantization::none) {
        CHECK(at::allclose(outputs[i], alone, 1e-5, 1e-5));  // BLAS may block a taller matrix differently
      } else {
        CHECK(at::equal(outputs[i], alone));  // each output row is computed alone: bit for bit
      }
    }
  }
  // LLM.int8 decides outliers per call: its parts run one by one; so do parts in different formats.
  CHECK(nn::FusedLinear::load(weights, {"q", "k"}, nn::LinearPolicy{Quantization::llm_int8}, 64, {96, 32})
            .layers()
            .size() == 2);
  nn::LinearPolicy mixed{Quantization::nf4, {}, {"k"}};
  CHECK(nn::FusedLinear::load(weights, {"q", "k"}, mixed, 64, {96, 32}).layers().size() == 2);
  // A 4-bit part whose weights end inside a block would shift the next part's blocks: kept apart.
  const nn::Weights odd = make_weights({{"a.weight", at::randn({3, 32})}, {"b.weight", at::randn({4, 32})}});
  CHECK(nn::FusedLinear::load(odd, {"a", "b"}, nn::LinearPolicy{Quantization::nf4}, 32, {3, 4}).layers().size() == 2);
  CHECK(nn::FusedLinear::load(odd, {"a", "b"}, nn::LinearPolicy{Quantization::int8}, 32, {3, 4}).layers().size() == 1);
}

TEST_CASE("LayerNorm and RMSNorm against their formulas", "[nn]") {
  const at::Tensor x = at::randn({3, 16});
  const at::Tensor w = at::rand({16}) + 0.5;
  const at::Tensor b = at::randn({16});
  const nn::Weights weights = make_weights({{"ln.weight", w}, {"ln.bias", b}});
  const auto ln = nn::LayerNorm::load(weights, "ln", 16, 1e-5);
  const at::Tensor mean = x.mean(-1, true);
  const at::Tensor var = (x - mean).pow(2).mean(-1, true);
  CHECK(at::allclose(ln(x), (x - mean) / at::sqrt(var + 1e-5) * w + b, 1e-5, 1e-5));
  const auto rms = nn::RMSNorm::load(weights, "ln", 16, 1e-6);
  CHECK(at::allclose(rms(x), x / at::sqrt(x.pow(2).mean(-1, true) + 1e-6) * w, 1e-5, 1e-5));
  CHECK_THROWS_AS(nn::LayerNorm::load(weights, "ln", 8, 1e-5), CheckpointError);
}

namespace {
// The attention formula written out: softmax(q k^T / sqrt(d) + mask) v, key/value heads repeated for GQA.
at::Tensor attention_formula(const at::Tensor& q, at::Tensor k, at::Tensor v, const at::Tensor& allowed) {
  const int64_t groups = q.size(1) / k.size(1);
  k = k.repeat_interleave(groups, 1);
  v = v.repeat_interleave(groups, 1);
  at::Tensor scores = at::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(q.size(-1)));
  scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());
  return at::matmul(scores.softmax(-1), v);
}
}  // namespace

TEST_CASE("KVCache: append in place, views of the filled part, beam reorder, capacity", "[nn]") {
  nn::KVCache cache(3, 2, 5, 4, at::TensorOptions().dtype(at::kFloat));
  const at::Tensor k1 = at::randn({3, 2, 2, 4}), v1 = at::randn({3, 2, 2, 4});
  const at::Tensor k2 = at::randn({3, 2, 1, 4}), v2 = at::randn({3, 2, 1, 4});
  cache.append(k1, v1);
  auto [keys, values] = cache.append(k2, v2);
  CHECK(cache.length() == 3);
  CHECK(at::equal(keys, at::cat({k1, k2}, 2)));
  CHECK(at::equal(values, at::cat({v1, v2}, 2)));
  CHECK(keys.data_ptr() == cache.keys().data_ptr());  // a view, not a copy
  const at::Tensor order = at::tensor(std::vector<int64_t>{2, 2, 0});
  cache.reorder(order);
  CHECK(at::equal(cache.keys().narrow(2, 0, 3), at::cat({k1, k2}, 2).index_select(0, order)));
  CHECK_THROWS_AS(cache.append(at::randn({3, 2, 3, 4}), at::randn({3, 2, 3, 4})), imagetotext::InvalidArgumentError);
}

TEST_CASE("KVCache: starts as zeros; attend_at writes the step at a device position and attends up to it", "[nn]") {
  nn::KVCache cache(3, 2, 5, 4, at::TensorOptions().dtype(at::kFloat));
  CHECK(at::equal(cache.keys(), at::zeros({3, 2, 5, 4})));  // masked positions are read: no garbage there
  const at::Tensor earlier = at::randn({3, 2, 3, 4});
  cache.keys().narrow(2, 0, 3).copy_(earlier);
  cache.values().narrow(2, 0, 3).copy_(earlier * 2);
  const at::Tensor q = at::randn({3, 4, 1, 4}), k = at::randn({3, 2, 1, 4}), v = at::randn({3, 2, 1, 4});
  const void* storage = cache.keys().data_ptr();
  const at::Tensor out = cache.attend_at(q, k, v, at::tensor(std::vector<int64_t>{3}), 0.5);
  CHECK(at::equal(cache.keys().narrow(2, 3, 1), k));
  CHECK(at::equal(cache.values().narrow(2, 3, 1), v));
  CHECK(at::equal(cache.keys().narrow(2, 4, 1), at::zeros({3, 2, 1, 4})));  // past the position: untouched
  CHECK(cache.keys().data_ptr() == storage);  // written in place: a recorded graph keeps reading it
  CHECK(cache.length() == 0);  // the host does not know the position
  const at::Tensor all = at::ones({1, 4}, at::kBool);
  CHECK(at::allclose(out, attention_formula(q, cache.keys().narrow(2, 0, 4), cache.values().narrow(2, 0, 4), all),
                     1e-5, 1e-5));
}

TEST_CASE("scaled_dot_product_attention: causal with a cache offset, GQA, boolean masks", "[nn]") {
  const at::Tensor q = at::randn({2, 4, 3, 8});
  const at::Tensor k = at::randn({2, 2, 5, 8}), v = at::randn({2, 2, 5, 8});
  const at::Tensor causal = at::ones({3, 5}, at::kBool).tril(2);  // query i is position i + 2
  CHECK(at::allclose(nn::scaled_dot_product_attention(q, k, v, std::nullopt, true),
                     attention_formula(q, k, v, causal), 1e-5, 1e-5));
  const at::Tensor padding = at::tensor(std::vector<uint8_t>{1, 1, 1, 0, 1}).to(at::kBool).view({1, 1, 1, 5});
  CHECK(at::allclose(nn::scaled_dot_product_attention(q, k, v, padding, true),
                     attention_formula(q, k, v, causal.logical_and(padding)), 1e-5, 1e-5));
  const at::Tensor square = at::randn({2, 4, 5, 8});
  CHECK(at::allclose(nn::scaled_dot_product_attention(square, k, v, std::nullopt, true),
                     attention_formula(square, k, v, at::ones({5, 5}, at::kBool).tril()), 1e-5, 1e-5));
}

TEST_CASE("scaled_dot_product_attention: one query row (the CPU decode path), GQA, causal, scale", "[nn]") {
  const at::Tensor q = at::randn({3, 6, 1, 8});
  const at::Tensor k = at::randn({3, 2, 7, 8}), v = at::randn({3, 2, 7, 8});
  const at::Tensor all = at::ones({1, 7}, at::kBool);
  for (const bool causal : {false, true}) {
    CHECK(at::allclose(nn::scaled_dot_product_attention(q, k, v, std::nullopt, causal),
                       attention_formula(q, k, v, all), 1e-5, 1e-5));
  }
  const at::Tensor k6 = at::randn({3, 6, 7, 8}), v6 = at::randn({3, 6, 7, 8});
  CHECK(at::allclose(nn::scaled_dot_product_attention(q, k6, v6, std::nullopt, false, 0.3),
                     at::scaled_dot_product_attention(q, k6, v6, std::nullopt, 0.0, false, 0.3), 1e-5, 1e-5));
  // A strided query (heads split from [batch, 1, heads * head_dim] by a transpose), as the models make it.
  const at::Tensor strided = at::randn({3, 1, 6 * 8}).view({3, 1, 6, 8}).transpose(1, 2);
  CHECK(at::allclose(nn::scaled_dot_product_attention(strided, k, v), attention_formula(strided, k, v, all), 1e-5, 1e-5));
  // Keys and values shared by the sequences (an image's beams: expanded, stride 0), GQA and not: the rows of one
  // matmul, the same as on copies.
  for (const std::int64_t kv_heads : {2, 6}) {
    const at::Tensor k1 = at::randn({1, kv_heads, 7, 8}), v1 = at::randn({1, kv_heads, 7, 8});
    const at::Tensor k_shared = k1.expand({3, kv_heads, 7, 8}), v_shared = v1.expand({3, kv_heads, 7, 8});
    REQUIRE(k_shared.stride(0) == 0);
    const at::Tensor k_copies = k_shared.contiguous(), v_copies = v_shared.contiguous();
    CHECK(at::allclose(nn::scaled_dot_product_attention(strided, k_shared, v_shared),
                       attention_formula(strided, k_copies, v_copies, all), 1e-5, 1e-5));
    CHECK(at::allclose(nn::scaled_dot_product_attention(q, k_shared, v_shared, std::nullopt, false, 0.3),
                       nn::scaled_dot_product_attention(q, k_copies, v_copies, std::nullopt, false, 0.3), 1e-6, 1e-6));
  }
  // bfloat16: within bfloat16 rounding of the float32 result.
  const at::Tensor bf = nn::scaled_dot_product_attention(q.to(at::kBFloat16), k.to(at::kBFloat16), v.to(at::kBFloat16));
  CHECK(bf.scalar_type() == at::kBFloat16);
  CHECK(at::allclose(bf.to(at::kFloat), attention_formula(q, k, v, all), 3e-2, 3e-2));
}
