#include "imagetotext/models/smolvlm.hpp"

#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <ATen/record_function.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/StringUtil.h>
#include <fmt/format.h>

#include <map>
#include <mutex>

#include "imagetotext/core/device.hpp"
#include "imagetotext/core/error.hpp"
#include "imagetotext/io/hub.hpp"
#include "imagetotext/io/safetensors.hpp"
#include "imagetotext/nn/cuda_graph.hpp"
#include "imagetotext/text/generation_config.hpp"
#include "../ops/search_ops.hpp"

namespace imagetotext {

template class ImageToText<SmolVLMFamily>;
static_assert(FamilyWithBatch<SmolVLMFamily>, "extract_batch runs SmolVLM batches through caption_batch");

namespace smolvlm {

nn::LinearPolicy linear_policy(Quantization format, const std::optional<std::vector<std::string>>& keep_dense) {
  nn::LinearPolicy policy;
  policy.format = format;
  policy.keep_dense = keep_dense.value_or(std::vector<std::string>{"lm_head"});  // bitsandbytes' default
  return policy;
}

SmolVLM SmolVLM::load(const nn::Weights& weights, const SmolVLMConfig& config, const nn::LinearPolicy& policy) {
  const SmolVLMVisionConfig& v = config.vision;
  if (v.patch_size <= 0 || v.image_size % v.patch_size != 0) {
    throw CheckpointError(fmt::format("checkpoint {}: vision image_size {} is not a multiple of patch_size {}",
                                      weights.source().string(), v.image_size, v.patch_size));
  }
  const nn::Weights model = weights["model"];
  SmolVLM network(config, weights.placement(), VisionTransformer::load(model["vision_model"], v, policy),
                  Connector::load(model["connector"], config, policy),
                  TextModel::load(model["text_model"], weights, config, policy));
  network.decode_graph_ = std::make_shared<DecodeGraph>();
  network.batch_decode_graph_ = std::make_shared<DecodeGraph>();
  network.vision_graph_ = std::make_shared<VisionGraph>();
  return network;
}

// Tiles the vision tower takes in one pass (see image_features).
constexpr std::int64_t kTilesPerPass = 4;

// The vision tower and connector over kTilesPerPass full tiles (no patch mask), recorded once per tile size and
// dtype; its input and output live in fixed tensors.
struct SmolVLM::VisionGraph {
  std::mutex mutex;     // one caller at a time writes the input and reads the output
  at::Tensor pixels;    // [kTilesPerPass, channels, H, W]
  at::Tensor features;  // [kTilesPerPass, image_seq_len, text width]
  nn::CudaGraph graph;
};

at::Tensor SmolVLM::image_features(const at::Tensor& pixel_values,
                                   const std::optional<at::Tensor>& pixel_attention_mask) const {
  RECORD_USER_SCOPE("smolvlm.image_features");  // a stage in profiles
  const std::int64_t dims = pixel_values.dim();
  if ((dims != 4 && dims != 5) || pixel_values.size(dims - 3) != config_.vision.num_channels) {
    throw InvalidArgumentError(fmt::format("pixel_values must be [tiles, {0}, H, W] or [batch, images, {0}, H, W], got {1}",
                                           config_.vision.num_channels, c10::str(pixel_values.sizes())));
  }
  at::Tensor pixels = (dims == 5 ? pixel_values.flatten(0, 1) : pixel_values).to(placement_.device, placement_.dtype);
  std::optional<at::Tensor> mask;
  if (pixel_attention_mask) {
    mask = (pixel_attention_mask->dim() == dims - 1 && dims == 5 ? pixel_attention_mask->flatten(0, 1)
                                                                 : *pixel_attention_mask).to(placement_.device);
    if (mask->dim() != 3 || mask->size(0) != pixels.size(0) || mask->size(1) != pixels.size(2) ||
        mask->size(2) != pixels.size(3)) {
      throw InvalidArgumentError(fmt::format("pixel_attention_mask {} does not match pixel_values {}",
                                             c10::str(pixel_attention_mask->sizes()), c10::str(pixel_values.sizes())));
    }
  }
  // transformers drops padding images: those whose every value is exactly zero.
  const at::Tensor real = pixels.ne(0).flatten(1).any(1);
  if (!real.all().item<bool>()) {
    const at::Tensor keep = real.nonzero().squeeze(1);
    pixels = pixels.index_select(0, keep);
    if (mask) mask = mask->index_select(0, keep);
  }
  std::optional<at::Tensor> patch_mask;
  if (mask) {
    // A patch is real when any of its pixels is (transformers' unfold and sum).
    const std::int64_t p = config_.vision.patch_size;
    const at::Tensor patches = mask->unfold(1, p, p).unfold(2, p, p).sum({-1, -2}).gt(0);
    if (!patches.all().item<bool>()) patch_mask = patches;
  }
  // Tiles are independent, so a few at a time give the same features while bounding the activations' memory
  // (all 17 tiles of a square image at once need ~310 MiB beyond the 256M model's weights, 4 at a time ~75).
  const std::int64_t tiles = pixels.size(0);
  std::vector<at::Tensor> features;
  std::int64_t start = 0;
  // On CUDA the passes of kTilesPerPass full tiles replay one recording: launched one by one, a pass's ~130
  // kernels took the host longer than the GPU took to run them (H100: 17 tiles, 9-10 ms of GPU time, 11-14 ms
  // from the first launch to the last), and the prefill's launches queued only behind them.
  if (!patch_mask && tiles >= kTilesPerPass && nn::CudaGraph::supported(placement_.device) && vision_.capturable() &&
      connector_.capturable()) {
    VisionGraph& g = *vision_graph_;
    const std::lock_guard lock(g.mutex);
    const std::vector<std::int64_t> pass_sizes{kTilesPerPass, pixels.size(1), pixels.size(2), pixels.size(3)};
    if (!g.graph.captured() || g.pixels.sizes() != pass_sizes || g.pixels.scalar_type() != pixels.scalar_type()) {
      g.graph = nn::CudaGraph{};  // the old recording's memory back before the new one takes its own
      g.features = at::Tensor();
      g.pixels = at::empty(pass_sizes, pixels.options());
      g.pixels.copy_(pixels.narrow(0, 0, kTilesPerPass));
      g.graph.capture(placement_.device, [&] { g.features = connector_(vision_(g.pixels, std::nullopt)); });
    }
    g.graph.acquire();
    for (; start + kTilesPerPass <= tiles; start += kTilesPerPass) {
      g.pixels.copy_(pixels.narrow(0, start, kTilesPerPass));
      g.graph.replay();
      features.push_back(g.features.clone());
    }
    g.graph.release();
  }
  for (; start < tiles; start += kTilesPerPass) {
    const std::int64_t count = std::min(kTilesPerPass, tiles - start);
    const std::optional<at::Tensor> mask_part =
        patch_mask ? std::optional<at::Tensor>(patch_mask->narrow(0, start, count)) : std::nullopt;
    features.push_back(connector_(vision_(pixels.narrow(0, start, count), mask_part)));
  }
  return features.size() == 1 ? features.front() : at::cat(features);
}

at::Tensor SmolVLM::embed(const at::Tensor& input_ids, const at::Tensor& image_features) const {
  const at::Tensor ids = input_ids.to(placement_.device);
  const at::Tensor embeddings = text_.embed(ids);
  const at::Tensor is_image = ids.eq(config_.image_token_id).unsqueeze(-1);
  // Counted on the host's ids (the processor's are there): a count on the device would make the host wait for the
  // whole vision tower queued before it, and only then launch the prefill (on the H100, ~7 ms of a 256M first
  // token with the GPU idle behind ~500 launches).
  const std::int64_t positions = input_ids.to(at::kCPU).eq(config_.image_token_id).sum().item<std::int64_t>();
  const std::int64_t features = image_features.numel() / std::max<std::int64_t>(image_features.size(-1), 1);
  if (positions != features) {
    throw InvalidArgumentError(fmt::format("the prompt has {} <image> tokens (id {}) but the images give {} features",
                                           positions, config_.image_token_id, features));
  }
  if (positions == 0) return embeddings;
  return embeddings.masked_scatter(is_image, image_features.to(embeddings.scalar_type()));
}

at::Tensor SmolVLM::prompt_logits(const at::Tensor& input_ids, const at::Tensor& image_features) const {
  const at::Tensor embeddings = embed(input_ids, image_features);
  TextCache cache = text_.new_cache(embeddings.size(0), embeddings.size(1));
  return text_.logits(text_.forward(embeddings, cache));
}

// One prompt's prefill (one row, no padding) over its length rounded up to a multiple of kPrefillBucket: the
// prompt's embeddings, then whatever the rows past them hold. Causal attention keeps those rows from the prompt's
// positions, and each decode step writes its position's keys and values before it reads them, so what the extra
// rows leave in the caches is never read. Recorded once per rounded length: launched one by one, a 256M prefill's
// ~480 kernels took the H100 machine's host ~10 ms, the GPU ~2.5.
constexpr std::int64_t kPrefillBucket = 64;

struct PrefillRecording {
  at::Tensor embeddings;  // [1, rounded length, hidden]
  at::Tensor last;        // int64 [1]: the prompt's last position
  at::Tensor logits;      // [1, vocab]: the logits there
  nn::CudaGraph graph;
};

// Decode steps between the host's reads of the picked tokens (greedy_search_rows' lookahead). A round of them is
// recorded as one graph too: a graph launch a round instead of one a step, whose boundaries left the GPU idle
// for a few microseconds each (SmolVLM-256M's step is ~560 us of kernels).
constexpr std::int64_t kStepsPerRound = 4;

// The decode step recorded over caches of `capacity` positions for `batch` rows; its inputs and outputs live in
// fixed tensors.
struct SmolVLM::DecodeGraph {
  std::mutex mutex;  // one request at a time uses the caches
  std::int64_t capacity = 0;
  std::int64_t batch = 0;
  TextCache cache;
  at::Tensor token;      // [batch, 1]: the tokens the next step reads, overwritten by the tokens it picks
  at::Tensor position;   // [1]: where the next step writes its keys and values
  at::Tensor index;      // [1]: where the next step writes its tokens in `generated`
  at::Tensor generated;  // [capacity, batch]: the tokens the steps picked
  at::Tensor logits;     // [batch, vocab]: the last step's logits
  std::optional<at::Tensor> padding;  // [batch]: each row's left padding (batches of prompts of different lengths)
  nn::CudaGraph graph;   // step() recorded (CUDA devices)
  nn::CudaGraph round;   // kStepsPerRound steps recorded, in graph's memory pool (rounds that keep no logits)
  // Prefills into `cache` by rounded length (single rows on CUDA), all in the first one's memory pool: one runs
  // at a time, under `mutex`.
  std::map<std::int64_t, PrefillRecording> prefills;

  // One decode step: the logits of `token` at `position`, the next tokens picked from them. Takes the text
  // model rather than keeping a pointer: copies of a SmolVLM share this recording.
  void step(const TextModel& text) {
    logits = text.decode_step(token, position, cache, padding);
    ops::greedy_advance(logits, token, generated, index, position);
  }
};

text::GreedySearchResult SmolVLM::generate(const at::Tensor& input_ids, const at::Tensor& image_features,
                                           const text::GreedySearchOptions& options, Decoding decoding) const {
  if (input_ids.dim() != 2 || input_ids.size(0) != 1 || input_ids.size(1) == 0) {
    throw InvalidArgumentError(fmt::format("generate takes one prompt, input_ids [1, length]; got {}", c10::str(input_ids.sizes())));
  }
  const at::Tensor embeddings = embed(input_ids, image_features);
  if (decoding == Decoding::automatic) {
    decoding = nn::CudaGraph::supported(placement_.device) && text_.capturable() ? Decoding::graph : Decoding::eager;
  }
  if (decoding == Decoding::graph) {
    return std::move(generate_graphed(embeddings, std::nullopt, options, *decode_graph_).front());
  }
  const std::int64_t length = embeddings.size(1);
  TextCache cache = text_.new_cache(1, length + std::max<std::int64_t>(options.max_new_tokens, 0));
  at::Tensor first;
  {
    RECORD_USER_SCOPE("smolvlm.prefill");
    first = text_.logits(text_.forward(embeddings, cache).select(1, length - 1));
  }
  RECORD_USER_SCOPE("smolvlm.decode");
  at::Tensor token = at::empty({1, 1}, at::TensorOptions().device(placement_.device).dtype(at::kLong));
  auto advance = [&](std::int64_t previous, std::int64_t n, std::vector<at::Tensor>* logits) {
    std::vector<std::int64_t> picked;
    for (std::int64_t i = 0; i < n; ++i) {
      token.fill_(i == 0 ? previous : picked.back());
      const at::Tensor step_logits = text_.logits(text_.forward(text_.embed(token), cache).select(1, 0)).reshape({-1});
      if (logits) logits->push_back(step_logits);
      picked.push_back(step_logits.argmax().item<std::int64_t>());
    }
    return picked;
  };
  return text::greedy_search(first, advance, options);
}

std::vector<text::GreedySearchResult> SmolVLM::generate_batch(const at::Tensor& input_ids,
                                                              const at::Tensor& attention_mask,
                                                              const at::Tensor& image_features,
                                                              const text::GreedySearchOptions& options,
                                                              Decoding decoding) const {
  if (input_ids.dim() != 2 || input_ids.size(0) == 0 || input_ids.size(1) == 0 ||
      attention_mask.sizes() != input_ids.sizes()) {
    throw InvalidArgumentError(fmt::format("generate_batch takes input_ids [batch, length] and an attention_mask of "
                                           "the same shape; got {} and {}",
                                           c10::str(input_ids.sizes()), c10::str(attention_mask.sizes())));
  }
  const std::int64_t batch = input_ids.size(0), length = input_ids.size(1);
  const at::Tensor real = attention_mask.to(at::kCPU).ne(0);
  const at::Tensor padding = real.logical_not().sum(1);  // int64 [batch]
  const at::Tensor left_padded = at::arange(length).view({1, length}).ge(padding.view({batch, 1}));
  if (!real.equal(left_padded) || padding.max().item<std::int64_t>() >= length) {
    throw InvalidArgumentError("generate_batch: every attention_mask row must be 0 on the left padding and 1 from the "
                               "row's first token on, with at least one token (padding_side=\"left\")");
  }
  if (batch == 1 && padding.item<std::int64_t>() == 0) return {generate(input_ids, image_features, options, decoding)};

  // A finished row is fed pad_token_id; it never reaches another row, but it must embed (Idefics3's default
  // pad, 128002, lies outside SmolVLM's vocabulary): outside it, the first end token is fed instead.
  text::GreedySearchOptions run = options;
  if (run.pad_token_id < 0 || run.pad_token_id >= config_.text.vocab_size) {
    run.pad_token_id = run.eos_token_ids.empty() ? 0 : run.eos_token_ids.front();
  }
  const at::Tensor embeddings = embed(input_ids, image_features);
  const at::Tensor first = padding.to(placement_.device);
  if (decoding == Decoding::automatic) {
    decoding = nn::CudaGraph::supported(placement_.device) && text_.capturable() ? Decoding::graph : Decoding::eager;
  }
  if (decoding == Decoding::graph) return generate_graphed(embeddings, first, run, *batch_decode_graph_);
  TextCache cache = text_.new_cache(batch, length + std::max<std::int64_t>(run.max_new_tokens, 0));
  at::Tensor first_logits;
  {
    RECORD_USER_SCOPE("smolvlm.prefill");
    // Left padding: every row's last prompt token is at the last position.
    first_logits = text_.logits(text_.forward(embeddings, cache, first).select(1, length - 1));
  }
  RECORD_USER_SCOPE("smolvlm.decode");
  at::Tensor token = at::empty({batch, 1}, at::TensorOptions().device(placement_.device).dtype(at::kLong));
  auto advance = [&](const std::vector<std::int64_t>& previous, std::int64_t n, std::vector<at::Tensor>* logits) {
    std::vector<std::int64_t> picked;
    picked.reserve(static_cast<std::size_t>(n * batch));
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t* read = i == 0 ? previous.data() : picked.data() + (i - 1) * batch;
      token.copy_(at::from_blob(const_cast<std::int64_t*>(read), {batch, 1}, at::kLong));
      const at::Tensor step_logits = text_.logits(text_.forward(text_.embed(token), cache, first).select(1, 0));
      if (logits) logits->push_back(step_logits);
      const at::Tensor next = step_logits.argmax(-1).cpu();
      picked.insert(picked.end(), next.data_ptr<std::int64_t>(), next.data_ptr<std::int64_t>() + batch);
    }
    return picked;
  };
  return text::greedy_search_rows(first_logits, advance, run);
}

std::vector<text::GreedySearchResult> SmolVLM::generate_graphed(const at::Tensor& embeddings,
                                                                const std::optional<at::Tensor>& padding,
                                                                const text::GreedySearchOptions& options,
                                                                DecodeGraph& g) const {
  const std::int64_t batch = embeddings.size(0), length = embeddings.size(1),
                     max_new = std::max<std::int64_t>(options.max_new_tokens, 0);
  const std::lock_guard lock(g.mutex);
  if (g.capacity < length + max_new || g.batch != batch || g.padding.has_value() != padding.has_value()) {
    // Capacities in steps of 256 positions, so requests of similar prompts reuse one recording.
    const std::int64_t capacity = std::min((length + max_new + 255) / 256 * 256, config_.text.max_position_embeddings);
    if (capacity < length + max_new) {
      throw InvalidArgumentError(fmt::format("a prompt of {} tokens plus {} new ones is past the model's {} positions",
                                             length, max_new, config_.text.max_position_embeddings));
    }
    g.round = nn::CudaGraph{};  // free the old recordings and caches before the new ones are allocated
    g.graph = nn::CudaGraph{};
    g.prefills.clear();
    g.cache.clear();
    const auto ids = at::TensorOptions().device(placement_.device).dtype(at::kLong);
    g.cache = text_.new_cache(batch, capacity);
    g.token = at::zeros({batch, 1}, ids);
    g.position = at::zeros({1}, ids);
    g.index = at::zeros({1}, ids);
    g.generated = at::zeros({capacity, batch}, ids);
    g.padding = padding ? std::optional<at::Tensor>(at::zeros({batch}, ids)) : std::nullopt;
    g.batch = batch;
    if (nn::CudaGraph::supported(placement_.device)) {
      g.graph.capture(placement_.device, [&] { g.step(text_); });
      const at::Tensor step_logits = g.logits;  // the single step's output, which callers keeping logits read
      g.round.capture(
          placement_.device,
          [&] {
            for (std::int64_t i = 0; i < kStepsPerRound; ++i) g.step(text_);
          },
          &g.graph);
      g.logits = step_logits;
    }
    g.capacity = capacity;
  }
  at::Tensor first_logits;
  if (batch == 1 && !padding && g.graph.captured()) {
    RECORD_USER_SCOPE("smolvlm.prefill");
    const std::int64_t rounded = std::min((length + kPrefillBucket - 1) / kPrefillBucket * kPrefillBucket, g.capacity);
    const nn::CudaGraph* pool = g.prefills.empty() ? nullptr : &g.prefills.begin()->second.graph;
    PrefillRecording& p = g.prefills[rounded];
    if (!p.graph.captured()) {
      p.embeddings = at::zeros({1, rounded, embeddings.size(2)}, embeddings.options());
      p.last = at::zeros({1}, embeddings.options().dtype(at::kLong));
      p.graph.capture(
          placement_.device,
          [&] {
            for (nn::KVCache& layer : g.cache) layer.clear();
            p.logits = text_.logits(text_.forward(p.embeddings, g.cache).index_select(1, p.last).select(1, 0));
          },
          pool);
    }
    p.embeddings.narrow(1, 0, length).copy_(embeddings);
    p.last.fill_(length - 1);
    p.graph.replay();
    first_logits = p.logits.clone();  // the next prefill of this length writes over p.logits
  } else {
    RECORD_USER_SCOPE("smolvlm.prefill");
    for (nn::KVCache& layer : g.cache) layer.clear();
    first_logits = text_.logits(text_.forward(embeddings, g.cache, padding).select(1, length - 1));
  }
  RECORD_USER_SCOPE("smolvlm.decode");
  if (padding) g.padding->copy_(*padding);
  g.position.fill_(length);
  g.index.fill_(0);
  std::int64_t steps = 0;
  auto advance = [&](const std::vector<std::int64_t>& previous, std::int64_t n, std::vector<at::Tensor>* logits) {
    if (steps == 0) {  // later steps read the tokens the step before picked
      if (batch == 1) {
        g.token.fill_(previous.front());
      } else {
        g.token.copy_(at::from_blob(const_cast<std::int64_t*>(previous.data()), {batch, 1}, at::kLong));
      }
    }
    if (!logits && n == kStepsPerRound && g.round.captured()) {
      g.round.replay();
    } else {
      for (std::int64_t i = 0; i < n; ++i) {
        if (g.graph.captured()) {
          g.graph.replay();
        } else {
          g.step(text_);
        }
        if (logits) logits->push_back(g.logits.clone());
      }
    }
    const at::Tensor picked = g.generated.narrow(0, steps, n).cpu();
    steps += n;
    const std::int64_t* data = picked.data_ptr<std::int64_t>();
    return std::vector<std::int64_t>(data, data + n * batch);
  };
  return text::greedy_search_rows(first_logits, advance, options, kStepsPerRound);
}

}  // namespace smolvlm

SmolVLMFamily::Model load_smolvlm(std::string_view repo, std::string_view revision, Quantization quantization,
                                  const ModelOptions& options) {
  const c10::Device device = resolve_device(options.device);
  const nn::Placement placement{device, resolve_dtype(options.dtype, device)};
  const io::HubOptions& hub = options.hub;

  const SmolVLMConfig config = load_smolvlm_config(io::hub_file(repo, "config.json", revision, hub));
  const std::filesystem::path checkpoint_path = io::hub_checkpoint(repo, revision, hub);
  io::Checkpoint checkpoint = io::load_safetensors(checkpoint_path);
  const nn::Weights weights(std::move(checkpoint.tensors), checkpoint_path, placement);
  smolvlm::SmolVLM network = smolvlm::SmolVLM::load(weights, config, smolvlm::linear_policy(quantization, options.keep_dense));

  const std::filesystem::path tokenizer_path = io::hub_file(repo, "tokenizer.json", revision, hub);
  text::Tokenizer tokenizer = text::Tokenizer::from_file(tokenizer_path);
  const SmolVLMProcessorConfig processor_config =
      load_smolvlm_processor_config(io::optional_hub_file(repo, "processor_config.json", revision, hub),
                                    io::optional_hub_file(repo, "preprocessor_config.json", revision, hub));
  if (processor_config.image_seq_len != config.image_seq_len()) {
    throw CheckpointError(fmt::format("{}: the processor puts {} <image> tokens per tile, the model makes {} features "
                                      "per tile ((image_size / patch_size)^2 / scale_factor^2)",
                                      std::string(repo), processor_config.image_seq_len, config.image_seq_len()));
  }
  const std::optional<std::int64_t> image_id = tokenizer.token_to_id("<image>");
  if (image_id != config.image_token_id) {
    throw CheckpointError(fmt::format("{}: config.json's image_token_id is {} but the tokenizer's <image> is {}",
                                      std::string(repo), config.image_token_id,
                                      image_id ? std::to_string(*image_id) : std::string("absent")));
  }

  std::vector<std::int64_t> eos;
  std::optional<std::int64_t> pad;
  if (const auto generation = io::optional_hub_file(repo, "generation_config.json", revision, hub)) {
    const GenerationConfig generation_config = load_generation_config(*generation);
    eos = generation_config.eos_token_ids;
    pad = generation_config.pad_token_id;
  }
  if (eos.empty()) {
    const auto end = tokenizer.token_to_id("<end_of_utterance>");
    if (!end) throw CheckpointError(fmt::format("{}: the tokenizer has no <end_of_utterance> token", tokenizer_path.string()));
    eos.push_back(*end);
  }
  const std::int64_t max_new_tokens =
      options.max_new_tokens > 0 ? options.max_new_tokens : SmolVLMFamily::kDefaultMaxNewTokens;
  const std::int64_t pad_token_id = pad.value_or(eos.front());
  return SmolVLMFamily::Model{std::move(network), smolvlm::Processor(processor_config, std::move(tokenizer)),
                              std::move(eos), max_new_tokens, placement, pad_token_id};
}

SmolVLMFamily::Model SmolVLMFamily::load(const ModelSpec& spec, const ModelOptions& options) {
  const bool own_checkpoint = !options.checkpoint.empty();
  return load_smolvlm(own_checkpoint ? std::string_view(options.checkpoint) : spec.repo_id,
                      own_checkpoint ? std::string_view("main") : spec.revision,
                      options.quantization.value_or(spec.quantization), options);
}

SmolVLMCaption smolvlm_caption(SmolVLMFamily::Model& model, const io::RgbImage& image, std::int64_t max_new_tokens) {
  c10::InferenceMode inference;
  const smolvlm::ProcessorOutput inputs =
      model.processor(image, smolvlm::kServiceQuestion, model.placement.device, model.placement.dtype);
  const at::Tensor features = model.network.image_features(inputs.pixel_values);
  const text::GreedySearchResult result =
      model.network.generate(inputs.input_ids, features, model.greedy_options(max_new_tokens));

  // The service decodes prompt and answer together, then cuts the answer out.
  const std::int64_t prompt_length = inputs.input_ids.size(1);
  const std::int64_t* prompt = inputs.input_ids.data_ptr<std::int64_t>();
  std::vector<std::int64_t> ids(prompt, prompt + prompt_length);
  ids.insert(ids.end(), result.tokens.begin(), result.tokens.end());
  const std::string decoded = model.processor.tokenizer().decode(ids, /*skip_special_tokens=*/true);
  return SmolVLMCaption{smolvlm::clean_caption(decoded), result.tokens, prompt_length};
}

std::string SmolVLMFamily::caption(Model& model, const io::RgbImage& image) {
  return smolvlm_caption(model, image).text;
}

std::vector<SmolVLMCaption> smolvlm_caption_batch(SmolVLMFamily::Model& model, const std::vector<io::RgbImage>& images,
                                                  std::int64_t max_new_tokens, nn::Decoding decoding) {
  c10::InferenceMode inference;
  if (images.empty()) return {};
  std::vector<smolvlm::ProcessorOutput> inputs;
  inputs.reserve(images.size());
  std::vector<at::Tensor> tiles;
  std::int64_t length = 0;
  for (const io::RgbImage& image : images) {
    inputs.push_back(model.processor(image, smolvlm::kServiceQuestion, model.placement.device, model.placement.dtype));
    tiles.push_back(inputs.back().pixel_values);
    length = std::max(length, inputs.back().input_ids.size(1));
  }
  // Every tile of every image through the vision tower (a few per pass), in the order of the prompts' <image>s.
  const at::Tensor features = model.network.image_features(tiles.size() == 1 ? tiles.front() : at::cat(tiles));
  // The prompts padded on the left to the longest, as transformers' processor pads them for generation.
  const auto batch = static_cast<std::int64_t>(images.size());
  // The padding's embedding never reaches a real token; a pad id outside the vocabulary would not embed at all.
  const std::int64_t vocab = model.network.config().text.vocab_size;
  const std::int64_t pad = model.pad_token_id >= 0 && model.pad_token_id < vocab ? model.pad_token_id
                                                                                  : model.eos_token_ids.front();
  at::Tensor input_ids = at::full({batch, length}, pad, at::kLong);
  at::Tensor attention_mask = at::zeros({batch, length}, at::kLong);
  for (std::int64_t b = 0; b < batch; ++b) {
    const std::int64_t own = inputs[b].input_ids.size(1);
    input_ids[b].narrow(0, length - own, own).copy_(inputs[b].input_ids[0]);
    attention_mask[b].narrow(0, length - own, own).fill_(1);
  }
  const std::vector<text::GreedySearchResult> results = model.network.generate_batch(
      input_ids, attention_mask, features, model.greedy_options(max_new_tokens), decoding);

  std::vector<SmolVLMCaption> captions;
  captions.reserve(images.size());
  for (std::int64_t b = 0; b < batch; ++b) {
    // As the service: prompt and answer decoded together, the answer cut out.
    const at::Tensor& prompt = inputs[b].input_ids;
    const std::int64_t* prompt_ids = prompt.data_ptr<std::int64_t>();
    std::vector<std::int64_t> ids(prompt_ids, prompt_ids + prompt.size(1));
    ids.insert(ids.end(), results[b].tokens.begin(), results[b].tokens.end());
    const std::string decoded = model.processor.tokenizer().decode(ids, /*skip_special_tokens=*/true);
    captions.push_back(SmolVLMCaption{smolvlm::clean_caption(decoded), results[b].tokens, prompt.size(1)});
  }
  return captions;
}

std::vector<std::string> SmolVLMFamily::caption_batch(Model& model, const std::vector<io::RgbImage>& images) {
  std::vector<std::string> captions;
  captions.reserve(images.size());
  for (std::size_t start = 0; start < images.size(); start += kMaxBatch) {
    const auto end = std::min(start + kMaxBatch, images.size());
    const std::vector<io::RgbImage> part(images.begin() + static_cast<std::ptrdiff_t>(start),
                                         images.begin() + static_cast<std::ptrdiff_t>(end));
    for (SmolVLMCaption& caption : smolvlm_caption_batch(model, part)) captions.push_back(std::move(caption.text));
  }
  return captions;
}

}  // namespace imagetotext
