#include "imagetotext/models/florence2.hpp"

#include <ATen/ops/cat.h>
#include <ATen/ops/tensor.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <mutex>
#include <utility>

#include "florence2_language.hpp"
#include "florence2_vision.hpp"
#include "imagetotext/core/device.hpp"
#include "imagetotext/core/error.hpp"
#include "imagetotext/core/pixel_ops.hpp"
#include "imagetotext/io/hub.hpp"
#include "imagetotext/nn/cuda_graph.hpp"

namespace imagetotext {

template class ImageToText<Florence2Family>;
static_assert(FamilyWithBatch<Florence2Family>, "extract_batch must run Florence2Family::caption_batch");

namespace {

// ---------------------------------------------------------------------------------------------------------
// The original (remote-code) layout -> the native one: the one table of this mapping (docs/florence2.md).
// It is the renaming transformers' convert_florence2_original_pytorch_to_hf.py performs.
// ---------------------------------------------------------------------------------------------------------
struct Rename {
  std::string_view original;
  std::string_view native;
};

// Whole-name prefixes.
constexpr std::array kPrefixes{
    Rename{"language_model.model.", "model.language_model."},
    Rename{"language_model.lm_head.", "lm_head."},
    Rename{"language_model.final_logits_bias", "final_logits_bias"},  // zeros; the native model dropped it
    Rename{"vision_tower.", "model.vision_tower."},
    Rename{"image_proj_norm.", "model.multi_modal_projector.image_proj_norm."},
    Rename{"image_pos_embed.", "model.multi_modal_projector.image_position_embed."},
    Rename{"visual_temporal_embed.", "model.multi_modal_projector.visual_temporal_embed."},
};
// image_projection is a bare Parameter [C, P] in the original, a Linear weight [P, C] natively.
constexpr Rename kImageProjection{"image_projection", "model.multi_modal_projector.image_projection.weight"};
// Inside the vision tower: the remote DaViT wraps layers in PreNorm(norm, fn), Residual and Mlp(net) modules
// and calls a depthwise conv "dw"; the native one names the layers directly.
constexpr std::array kVisionParts{
    Rename{".conv1.fn.dw.", ".conv1."},         Rename{".conv2.fn.dw.", ".conv2."},
    Rename{".window_attn.norm.", ".norm1."},    Rename{".channel_attn.norm.", ".norm1."},
    Rename{".window_attn.fn.", ".window_attn."}, Rename{".channel_attn.fn.", ".channel_attn."},
    Rename{".ffn.norm.", ".norm2."},            Rename{".ffn.fn.net.", ".ffn."},
};
constexpr Rename kPatchConv{".proj.", ".conv."};  // under vision_tower.convs.N: the patch embedding's conv
// Remote DaViT parts Florence-2 never runs (its classifier head and final norm).
constexpr std::array<std::string_view, 3> kUnused{"vision_tower.head.", "vision_tower.norms.", "vision_tower.avgpool"};

void replace_once(std::string& name, const Rename& rule) {
  if (const auto at = name.find(rule.original); at != std::string::npos) name.replace(at, rule.original.size(), rule.native);
}

// The embedding matrix: stored once under one of its tied names.
constexpr std::array<std::string_view, 4> kTiedEmbeddingNames{
    "model.language_model.shared.weight", "model.language_model.encoder.embed_tokens.weight",
    "model.language_model.decoder.embed_tokens.weight", "lm_head.weight"};

bool has_prefix(const io::TensorMap& tensors, std::string_view prefix) {
  const auto it = tensors.lower_bound(std::string(prefix));
  return it != tensors.end() && it->first.starts_with(prefix);
}

std::string_view layout_name(Florence2Layout layout) {
  return layout == Florence2Layout::original ? "original (microsoft/Florence-2-*)" : "native (florence-community)";
}

struct TaskPrompt {
  std::string_view task;
  std::string_view prompt;
};
// Florence2Processor's task_prompts_without_inputs / task_prompts_with_input.
constexpr std::array kTasksWithoutInput{
    TaskPrompt{"<OCR>", "What is the text in the image?"},
    TaskPrompt{"<OCR_WITH_REGION>", "What is the text in the image, with regions?"},
    TaskPrompt{"<CAPTION>", "What does the image describe?"},
    TaskPrompt{"<DETAILED_CAPTION>", "Describe in detail what is shown in the image."},
    TaskPrompt{"<MORE_DETAILED_CAPTION>", "Describe with a paragraph what is shown in the image."},
    TaskPrompt{"<OD>", "Locate the objects with category name in the image."},
    TaskPrompt{"<DENSE_REGION_CAPTION>", "Locate the objects in the image, with their descriptions."},
    TaskPrompt{"<REGION_PROPOSAL>", "Locate the region proposals in the image."},
};
constexpr std::array kTasksWithInput{
    TaskPrompt{"<CAPTION_TO_PHRASE_GROUNDING>", "Locate the phrases in the caption: {input}"},
    TaskPrompt{"<REFERRING_EXPRESSION_SEGMENTATION>", "Locate {input} in the image with mask"},
    TaskPrompt{"<REGION_TO_SEGMENTATION>", "What is the polygon mask of region {input}"},
    TaskPrompt{"<OPEN_VOCABULARY_DETECTION>", "Locate {input} in the image."},
    TaskPrompt{"<REGION_TO_CATEGORY>", "What is the region {input}?"},
    TaskPrompt{"<REGION_TO_DESCRIPTION>", "What does the region {input} describe?"},
    TaskPrompt{"<REGION_TO_OCR>", "What text is in the region {input}?"},
};

std::string strip(std::string_view text) {
  const auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
  while (!text.empty() && space(text.front())) text.remove_prefix(1);
  while (!text.empty() && space(text.back())) text.remove_suffix(1);
  return std::string(text);
}

constexpr std::int64_t kServiceMaxNewTokens = 4096;  // the service's generate(max_new_tokens=4096)

}  // namespace

std::optional<std::string> florence2_native_name(std::string_view original) {
  if (original.starts_with("model.") || original.starts_with("lm_head.")) return std::string(original);
  for (std::string_view unused : kUnused) {
    if (original.starts_with(unused)) return std::nullopt;
  }
  if (original == kImageProjection.original) return std::string(kImageProjection.native);
  std::string name(original);
  for (const Rename& rule : kPrefixes) {
    if (original.starts_with(rule.original)) {
      name = std::string(rule.native) + std::string(original.substr(rule.original.size()));
      break;
    }
  }
  if (original.starts_with("vision_tower.convs.")) replace_once(name, kPatchConv);
  if (original.starts_with("vision_tower.blocks.")) {
    for (const Rename& rule : kVisionParts) replace_once(name, rule);
  }
  return name;
}

io::TensorMap florence2_native_tensors(io::TensorMap tensors, Florence2Layout layout,
                                       const std::filesystem::path& source) {
  const bool native_names = has_prefix(tensors, "model.language_model.");
  const bool original_names = has_prefix(tensors, "language_model.model.");
  if ((layout == Florence2Layout::native && !native_names) || (layout == Florence2Layout::original && !original_names)) {
    throw CheckpointError(fmt::format(
        "checkpoint {}: config.json describes the {} layout but the tensors are {}", source.string(),
        layout_name(layout),
        native_names ? "native ('model.language_model.*')"
                     : original_names ? "original ('language_model.model.*')" : "neither layout's (no language model)"));
  }
  if (layout == Florence2Layout::native) return tensors;
  io::TensorMap renamed;
  for (auto& [name, tensor] : tensors) {
    std::optional<std::string> native = florence2_native_name(name);
    if (!native) continue;
    if (name == kImageProjection.original) {
      if (tensor.dim() != 2) {
        throw CheckpointError(fmt::format("checkpoint {}: tensor 'image_projection' must be 2-D, has {} dimensions",
                                          source.string(), tensor.dim()));
      }
      tensor = tensor.t().contiguous();
    }
    renamed.emplace(std::move(*native), std::move(tensor));
  }
  return renamed;
}

std::vector<std::string> florence2_keep_dense(bool quantize_vision) {
  if (quantize_vision) return {};
  return {"model.vision_tower", "model.multi_modal_projector"};
}

std::string florence2_task_prompt(std::string_view text) {
  for (const TaskPrompt& task : kTasksWithoutInput) {
    if (text.find(task.task) != std::string_view::npos) {
      if (text != task.task) {
        throw InvalidArgumentError(fmt::format("Florence-2 task {} takes no input; got '{}'", task.task, text));
      }
      return std::string(task.prompt);
    }
  }
  for (const TaskPrompt& task : kTasksWithInput) {
    if (const auto at = text.find(task.task); at != std::string_view::npos) {
      std::string input = strip(std::string(text.substr(0, at)) + std::string(text.substr(at + task.task.size())));
      std::string prompt(task.prompt);
      prompt.replace(prompt.find("{input}"), 7, input);
      return prompt;
    }
  }
  return std::string(text);
}

std::vector<std::int64_t> florence2_prompt_ids(const text::Tokenizer& tokenizer, std::string_view task) {
  return tokenizer.encode("<s>" + florence2_task_prompt(task) + "</s>");
}

std::string florence2_clean_caption(std::string text, Florence2Layout layout) {
  for (std::string_view marker : {std::string_view("</s>"), std::string_view("<s>")}) {
    for (auto at = text.find(marker); at != std::string::npos; at = text.find(marker, at)) text.erase(at, marker.size());
  }
  return layout == Florence2Layout::native ? strip(text) : text;
}

at::Tensor florence2_pixel_values(const at::Tensor& rgb_pixels, c10::Device device, at::ScalarType dtype,
                                  std::int64_t size) {
  if (rgb_pixels.dim() != 3 || rgb_pixels.size(2) != 3 || rgb_pixels.scalar_type() != at::kByte) {
    throw InvalidArgumentError("Florence-2 takes uint8 RGB pixels [height, width, 3]");
  }
  // CLIPImageProcessor as Florence-2's preprocessor_config.json sets it: BICUBIC to size x size (aspect ratio
  // not kept), then (x / 255 - mean) / std with ImageNet's statistics.
  // uint8 goes to the device (a quarter of float32's bytes); resize and normalize run there.
  const at::Tensor resized = ops::resize_pillow(rgb_pixels.to(device), size, size, ops::Resample::bicubic);
  return ops::normalize_pixels(resized.unsqueeze(0), {0.485, 0.456, 0.406}, {0.229, 0.224, 0.225}, 1.0 / 255.0,
                               dtype);
}

// ---------------------------------------------------------------------------------------------------------
// Florence2Model
// ---------------------------------------------------------------------------------------------------------

Florence2Model::Florence2Model(Florence2Model&&) noexcept = default;
Florence2Model& Florence2Model::operator=(Florence2Model&&) noexcept = default;
Florence2Model::~Florence2Model() = default;

Florence2Model Florence2Model::load(const std::filesystem::path& directory, const Options& options) {
  const Florence2Config config = load_florence2_config(directory / "config.json");
  return load(config, io::load_safetensors(directory).tensors, directory, options);
}

Florence2Model Florence2Model::load(const Florence2Config& config, io::TensorMap tensors,
                                    const std::filesystem::path& source, const Options& options) {
  const nn::Weights weights(florence2_native_tensors(std::move(tensors), config.layout, source), source,
                            options.placement);
  Florence2Model model;
  model.config_ = config;
  model.placement_ = options.placement;
  model.vision_ = std::make_unique<florence2::VisionTower>(weights["model"]["vision_tower"], config.vision, options.policy);
  model.projector_ =
      std::make_unique<florence2::Projector>(weights["model"]["multi_modal_projector"], config.vision, options.policy);
  const auto shared_name = std::find_if(kTiedEmbeddingNames.begin(), kTiedEmbeddingNames.end(),
                                        [&](std::string_view name) { return weights.contains(name); });
  if (shared_name == kTiedEmbeddingNames.end()) {
    throw CheckpointError(fmt::format("checkpoint {} has no token embedding ('{}' or a tied copy)", source.string(),
                                      kTiedEmbeddingNames.front()));
  }
  const at::Tensor shared = weights.get(*shared_name, {config.text.vocab_size, config.text.d_model});
  std::optional<at::Tensor> bias;
  if (weights.contains("final_logits_bias")) bias = weights.get("final_logits_bias", {1, config.text.vocab_size})[0];
  model.language_ = std::make_unique<florence2::LanguageModel>(weights["model"]["language_model"], shared, bias,
                                                               config.text, options.policy);
  model.decode_graph_ = std::make_shared<DecodeGraph>();
  model.batch_decode_graph_ = std::make_shared<DecodeGraph>();
  return model;
}

at::Tensor Florence2Model::image_features(const at::Tensor& pixel_values) const {
  if (pixel_values.dim() != 4 || pixel_values.size(1) != config_.vision.in_channels) {
    throw InvalidArgumentError(fmt::format("Florence-2 pixel_values must be [batch, {}, height, width], got [{}]",
                                           config_.vision.in_channels, fmt::join(pixel_values.sizes(), ", ")));
  }
  return (*projector_)((*vision_)(pixel_values.to(placement_.device, placement_.dtype)));
}

at::Tensor Florence2Model::encode(const at::Tensor& pixel_values, const at::Tensor& prompt_ids) const {
  if (prompt_ids.dim() != 2 || prompt_ids.size(0) != pixel_values.size(0)) {
    throw InvalidArgumentError(fmt::format("Florence-2 prompt ids must be [batch, length] for {} images, got [{}]",
                                           pixel_values.size(0), fmt::join(prompt_ids.sizes(), ", ")));
  }
  const at::Tensor ids = prompt_ids.to(placement_.device, at::kLong);
  if (ids.numel() > 0 && (ids.min().item<std::int64_t>() < 0 || ids.max().item<std::int64_t>() >= config_.text.vocab_size)) {
    throw InvalidArgumentError(fmt::format("Florence-2 prompt ids must lie in [0, {})", config_.text.vocab_size));
  }
  const at::Tensor text = language_->embed(ids);
  return language_->encode(at::cat({image_features(pixel_values).to(text.scalar_type()), text}, 1));
}

at::Tensor Florence2Model::decoder_logits(const at::Tensor& encoder_output, const at::Tensor& decoder_ids) const {
  florence2::DecoderState state = language_->start_decoding(encoder_output, decoder_ids.size(0), decoder_ids.size(1));
  return language_->decode(decoder_ids.to(placement_.device, at::kLong), state);
}

text::SearchResult Florence2Model::generate(const at::Tensor& encoder_output, const text::SearchSettings& settings,
                                            Decoding decoding) const {
  if (encoder_output.dim() != 3 || encoder_output.size(0) != 1) {
    throw InvalidArgumentError("Florence-2 generates for one image at a time (encoder output [1, length, d_model])");
  }
  return generate_batch(encoder_output, settings, decoding).front();
}

std::vector<text::SearchResult> Florence2Model::generate_batch(const at::Tensor& encoder_output,
                                                               const text::SearchSettings& settings,
                                                               Decoding decoding) const {
  if (encoder_output.dim() != 3 || encoder_output.size(0) < 1 || encoder_output.size(2) != config_.text.d_model) {
    throw InvalidArgumentError(fmt::format("Florence-2 generates from encoder outputs [batch, length, {}], got [{}]",
                                           config_.text.d_model, fmt::join(encoder_output.sizes(), ", ")));
  }
  if (decoding == Decoding::automatic) {
    decoding = nn::CudaGraph::supported(placement_.device) && language_->capturable() ? Decoding::graph : Decoding::eager;
  }
  return decoding == Decoding::graph ? generate_graphed(encoder_output, settings)
                                     : generate_eager(encoder_output, settings);
}

std::vector<text::SearchResult> Florence2Model::generate_eager(const at::Tensor& encoder_output,
                                                               const text::SearchSettings& settings) const {
  const std::vector<std::int64_t> prompt{config_.text.decoder_start_token_id};
  const std::int64_t batch = encoder_output.size(0);
  text::DeviceSearch::validate(prompt, settings, config_.text.vocab_size, language_->max_decoder_positions());
  text::DeviceSearch search(settings, 1, config_.text.vocab_size, settings.max_length, placement_.device, batch);
  search.start(prompt, settings.max_length);
  florence2::DecoderState state =
      language_->start_decoding(encoder_output, batch * settings.num_beams, settings.max_length);
  text::run_steps(search, [&] {
    search.step(language_->decode(search.tokens(), state).select(1, -1));
    if (search.num_beams() > 1) language_->reorder(state, search.parents());
  });
  return search.results();
}

// The decoder step and the search step over fixed-shape state; their inputs and outputs live in fixed tensors.
struct Florence2Model::DecodeGraph {
  std::mutex mutex;  // one request at a time uses the state
  std::int64_t capacity = 0;
  std::int64_t encoder_capacity = 0;
  florence2::DecoderState state;
  std::optional<text::DeviceSearch> search;
  nn::CudaGraph graph;  // step() recorded (CUDA devices)

  // Takes the language model rather than keeping a pointer: moves of a Florence2Model keep this recording.
  void step(const florence2::LanguageModel& language) {
    search->step(language.decode_step(search->tokens(), search->position(), state));
    // The search has moved its position to the next token's: the caches move up to it (that last one unfilled).
    if (search->num_beams() > 1) language.reorder(state, search->parents(), search->position());
  }
};

std::vector<text::SearchResult> Florence2Model::generate_graphed(const at::Tensor& encoder_output,
                                                                 const text::SearchSettings& settings) const {
  const std::vector<std::int64_t> prompt{config_.text.decoder_start_token_id};
  const std::int64_t batch = encoder_output.size(0);
  const std::int64_t max_positions = language_->max_decoder_positions(), vocab = config_.text.vocab_size;
  text::DeviceSearch::validate(prompt, settings, vocab, max_positions);
  // Capacities in steps, so later requests of similar lengths (and prompts) reuse one recording.
  const std::int64_t capacity = std::min((settings.max_length + 255) / 256 * 256, max_positions);
  const std::int64_t encoder_capacity = (encoder_output.size(1) + 63) / 64 * 64;
  DecodeGraph& g = batch == 1 ? *decode_graph_ : *batch_decode_graph_;
  const std::lock_guard lock(g.mutex);
  const bool reuse =
      g.search && g.search->serves(settings, 1, batch) && encoder_output.size(1) <= g.encoder_capacity;
  if (reuse) {
    language_->restart_decoding(g.state, encoder_output);
  } else {
    // Free the old recording and state before the new ones are allocated.
    g.graph = nn::CudaGraph{};
    g.search.reset();
    g.state = {};
    g.capacity = capacity;
    g.encoder_capacity = encoder_capacity;
    g.state =
        language_->start_decoding(encoder_output, batch * settings.num_beams, g.capacity, g.encoder_capacity);
    g.search.emplace(settings, 1, vocab, g.capacity, placement_.device, batch);
    g.search->start(prompt, settings.max_length);
    if (nn::CudaGraph::supported(placement_.device)) {
      try {
        g.graph.capture(placement_.device, [&] { g.step(*language_); });
      } catch (...) {
        g.search.reset();  // no half-made recording for the next request to reuse
        throw;
      }
    }
  }
  g.search->start(prompt, settings.max_length);
  text::run_steps(
      *g.search,
      [&] {
        if (g.graph.captured()) {
          g.graph.replay();
        } else {
          g.step(*language_);
        }
      },
      /*lookahead=*/4);
  return g.search->results();
}

text::SearchSettings Florence2Model::service_settings(std::int64_t max_new_tokens) const {
  // The service loads microsoft/Florence-2-* whose text_config carries these generation fields, and passes
  // num_beams=3, max_new_tokens=4096, do_sample=False to generate().
  text::SearchSettings s;
  s.num_beams = 3;
  s.no_repeat_ngram_size = 3;
  s.forced_bos_token_id = config_.text.bos_token_id;
  s.forced_eos_token_id = config_.text.eos_token_id;
  s.eos_token_ids = {config_.text.eos_token_id};
  s.pad_token_id = config_.text.pad_token_id;
  s.early_stopping = EarlyStopping::when_enough_finished;
  s.length_penalty = 1.0;
  // transformers would index past the decoder's position table; stop at its end instead.
  const std::int64_t wanted = max_new_tokens > 0 ? max_new_tokens : kServiceMaxNewTokens;
  s.max_length = std::min<std::int64_t>(1 + wanted, config_.text.max_position_embeddings);
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// The family
// ---------------------------------------------------------------------------------------------------------

Florence2Family::Model Florence2Family::load(const ModelSpec& spec, const ModelOptions& options) {
  const std::string repo = options.checkpoint.empty() ? std::string(spec.repo_id) : options.checkpoint;
  const std::string revision(spec.revision);
  const std::filesystem::path checkpoint = io::hub_checkpoint(repo, revision, options.hub);
  const Florence2Config config = load_florence2_config(io::hub_file(repo, "config.json", revision, options.hub));
  text::Tokenizer tokenizer = text::Tokenizer::from_file(io::hub_file(repo, "tokenizer.json", revision, options.hub));

  Florence2Model::Options model_options;
  model_options.placement.device = resolve_device(options.device);
  model_options.placement.dtype = resolve_dtype(options.dtype, model_options.placement.device);
  model_options.policy.format = options.quantization.value_or(spec.quantization);
  model_options.policy.keep_dense = options.keep_dense.value_or(florence2_keep_dense(false));
  Florence2Model network =
      Florence2Model::load(config, io::load_safetensors(checkpoint).tensors, checkpoint, model_options);
  return Model{std::move(network), std::move(tokenizer), options.max_new_tokens};
}

std::string Florence2Family::run_task(Model& model, const io::RgbImage& image, std::string_view task,
                                      const text::SearchSettings& settings) {
  const Florence2Model& network = model.network;
  const at::Tensor pixels =
      florence2_pixel_values(image.pixels, network.placement().device, network.placement().dtype);
  const std::vector<std::int64_t> prompt = florence2_prompt_ids(model.tokenizer, task);
  const at::Tensor ids = at::tensor(prompt, at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
  const text::SearchResult result = network.generate(network.encode(pixels, ids), settings);
  return florence2_clean_caption(model.tokenizer.decode(result.sequence), network.config().layout);
}

std::vector<std::string> Florence2Family::run_task_batch(Model& model, const std::vector<io::RgbImage>& images,
                                                         std::string_view task, const text::SearchSettings& settings) {
  if (images.size() == 1) return {run_task(model, images.front(), task, settings)};
  if (images.empty()) return {};
  const Florence2Model& network = model.network;
  // Every image becomes 768x768 and every row has the same prompt: the batch needs no padding and no mask
  // (transformers' processor gives an all-ones attention mask here).
  std::vector<at::Tensor> pixels;
  pixels.reserve(images.size());
  for (const io::RgbImage& image : images) {
    pixels.push_back(florence2_pixel_values(image.pixels, network.placement().device, network.placement().dtype));
  }
  const std::vector<std::int64_t> prompt = florence2_prompt_ids(model.tokenizer, task);
  const auto batch = static_cast<std::int64_t>(images.size());
  const at::Tensor ids = at::tensor(prompt, at::TensorOptions().dtype(at::kLong)).unsqueeze(0).expand({batch, -1});
  const std::vector<text::SearchResult> results = network.generate_batch(network.encode(at::cat(pixels), ids), settings);
  std::vector<std::string> captions;
  captions.reserve(results.size());
  for (const text::SearchResult& result : results) {
    captions.push_back(florence2_clean_caption(model.tokenizer.decode(result.sequence), network.config().layout));
  }
  return captions;
}

std::string Florence2Family::caption(Model& model, const io::RgbImage& image) {
  return run_task(model, image, "<DETAILED_CAPTION>", model.network.service_settings(model.max_new_tokens));
}

std::vector<std::string> Florence2Family::caption_batch(Model& model, const std::vector<io::RgbImage>& images) {
  const text::SearchSettings settings = model.network.service_settings(model.max_new_tokens);
  std::vector<std::string> captions;
  captions.reserve(images.size());
  for (std::size_t first = 0; first < images.size(); first += kImagesPerForward) {
    const std::size_t last = std::min(images.size(), first + kImagesPerForward);
    const std::vector<io::RgbImage> chunk(images.begin() + static_cast<std::ptrdiff_t>(first),
                                          images.begin() + static_cast<std::ptrdiff_t>(last));
    for (std::string& caption : run_task_batch(model, chunk, "<DETAILED_CAPTION>", settings)) {
      captions.push_back(std::move(caption));
    }
  }
  return captions;
}

}  // namespace imagetotext
