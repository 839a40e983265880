// SmolVLM (HuggingFaceTB/SmolVLM-256M-Instruct, -500M-Instruct; transformers' Idefics3ForConditionalGeneration):
//
//   image --Processor--> tiles --VisionTransformer--> --Connector--> image features [tiles, S, hidden]
//   prompt ids --embed_tokens, features written at the <image> positions--> TextModel --lm_head--> logits
//   --greedy search (KV cache allocated once per request), stop on <end_of_utterance>--> caption
//
// Every linear layer is an nn::Linear, so the dense, INT8, LLM.int8 and NF4 variants are this same code
// with another LinearPolicy (all linear layers but lm_head quantized, as transformers + bitsandbytes do).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "imagetotext/image_to_text.hpp"
#include "imagetotext/models/smolvlm_config.hpp"
#include "imagetotext/models/smolvlm_processor.hpp"
#include "imagetotext/models/smolvlm_text.hpp"
#include "imagetotext/models/smolvlm_vision.hpp"
#include "imagetotext/nn/cuda_graph.hpp"
#include "imagetotext/nn/linear.hpp"
#include "imagetotext/nn/weights.hpp"
#include "imagetotext/text/greedy_search.hpp"

namespace imagetotext::smolvlm {

// The linear-layer policy of a variant: `format` for every linear layer but those of `keep_dense` (unset:
// lm_head, as bitsandbytes keeps the output head dense).
nn::LinearPolicy linear_policy(Quantization format,
                               const std::optional<std::vector<std::string>>& keep_dense = std::nullopt);

class SmolVLM {
 public:
  // Reads model.vision_model.*, model.connector.*, model.text_model.* and lm_head.* from `weights` (the
  // checkpoint's root). Throws CheckpointError naming a missing or misshapen tensor.
  static SmolVLM load(const nn::Weights& weights, const SmolVLMConfig& config, const nn::LinearPolicy& policy);

  // Image features [tiles, image_seq_len, text hidden] of pixel_values [tiles, 3, H, W] or
  // [batch, images, 3, H, W]. As transformers does, images that are all zeros are padding and dropped, and
  // pixel_attention_mask ([.., H, W], nonzero on real pixels; none: all real) becomes the patch mask.
  at::Tensor image_features(const at::Tensor& pixel_values,
                            const std::optional<at::Tensor>& pixel_attention_mask = std::nullopt) const;

  // Token embeddings of input_ids [batch, length] with the rows of `image_features` written, in order, at
  // the <image> positions. Throws InvalidArgumentError when the counts differ.
  at::Tensor embed(const at::Tensor& input_ids, const at::Tensor& image_features) const;

  // Logits [batch, length, vocab] of every prompt position (tests; decoding only needs the last).
  at::Tensor prompt_logits(const at::Tensor& input_ids, const at::Tensor& image_features) const;

  // How decode steps run. eager: a cache allocated per request at the prompt's length plus max_new_tokens,
  // each step launched from the host. graph: fixed-shape steps over caches of a fixed capacity (kept for
  // later requests that fit), recorded once in a CUDA graph and replayed, the tokens picked on the device; on
  // a CPU the same steps run without a graph. automatic: graph on CUDA when every layer allows it, else eager.
  using Decoding = nn::Decoding;

  // Greedy decoding after the prompt input_ids [1, length].
  text::GreedySearchResult generate(const at::Tensor& input_ids, const at::Tensor& image_features,
                                    const text::GreedySearchOptions& options,
                                    Decoding decoding = Decoding::automatic) const;

  // Greedy decoding of a batch of prompts at once, as transformers' generate runs the processor's output with
  // padding=True and padding_side="left": input_ids [batch, length] padded on the left, attention_mask
  // [batch, length] 0 on each row's leading padding and 1 from its first real token on; image_features of
  // every row's <image> tokens in order. Each step runs all rows (padding masked out, positions counted per
  // row); row b's result ends at its end token (transformers pads it with pad_token_id to the longest row).
  // One row without padding takes generate() above. Throws InvalidArgumentError for a mask that is not a
  // left padding or a row without tokens.
  std::vector<text::GreedySearchResult> generate_batch(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                                       const at::Tensor& image_features,
                                                       const text::GreedySearchOptions& options,
                                                       Decoding decoding = Decoding::automatic) const;

  const SmolVLMConfig& config() const noexcept { return config_; }
  const VisionTransformer& vision() const noexcept { return vision_; }
  const Connector& connector() const noexcept { return connector_; }
  const TextModel& text() const noexcept { return text_; }
  const nn::Placement& placement() const noexcept { return placement_; }

 private:
  SmolVLM(SmolVLMConfig config, nn::Placement placement, VisionTransformer vision, Connector connector, TextModel text)
      : config_(std::move(config)), placement_(placement), vision_(std::move(vision)), connector_(std::move(connector)),
        text_(std::move(text)) {}

  struct DecodeGraph;
  struct VisionGraph;
  // Decoding through `graph` (recorded again when the batch size changes or the capacity is short); `padding`
  // (int64 [batch] on the device) for a left-padded batch.
  std::vector<text::GreedySearchResult> generate_graphed(const at::Tensor& embeddings,
                                                         const std::optional<at::Tensor>& padding,
                                                         const text::GreedySearchOptions& options,
                                                         DecodeGraph& graph) const;

  SmolVLMConfig config_;
  nn::Placement placement_;
  VisionTransformer vision_;
  Connector connector_;
  TextModel text_;
  // The recorded decode steps (CUDA only); shared by copies of this model, which share its weights too. One
  // for single captions and one for batches (of the last batch size seen), so neither evicts the other.
  std::shared_ptr<DecodeGraph> decode_graph_;
  std::shared_ptr<DecodeGraph> batch_decode_graph_;
  // The vision tower and connector over one pass of full tiles, recorded on CUDA and replayed per pass.
  std::shared_ptr<VisionGraph> vision_graph_;
};

}  // namespace imagetotext::smolvlm

namespace imagetotext {

// The family ImageToText<SmolVLMFamily> runs: model_selector's SmolVLM names.
struct SmolVLMFamily {
  // The service's max_new_tokens.
  static constexpr std::int64_t kDefaultMaxNewTokens = 250;

  struct Model {
    smolvlm::SmolVLM network;
    smolvlm::Processor processor;
    std::vector<std::int64_t> eos_token_ids;  // generation_config.json's, else <end_of_utterance>
    std::int64_t max_new_tokens = kDefaultMaxNewTokens;
    nn::Placement placement;
    // generation_config.json's pad_token_id, else the first end token (transformers' generate does the same):
    // the padding of batched prompts and what a row that has finished emits.
    std::int64_t pad_token_id = 0;

    // A request's greedy options: max_new_tokens (0: the model's), the model's end and pad tokens.
    text::GreedySearchOptions greedy_options(std::int64_t request_max_new_tokens) const {
      text::GreedySearchOptions options;
      options.max_new_tokens = request_max_new_tokens > 0 ? request_max_new_tokens : max_new_tokens;
      options.eos_token_ids = eos_token_ids;
      options.pad_token_id = pad_token_id;
      return options;
    }
  };

  // Images per batched generate in caption_batch: bounds the caches' memory (they grow with rows times the
  // longest prompt) and the padding a short prompt carries next to a long one.
  static constexpr std::size_t kMaxBatch = 8;

  static Model load(const ModelSpec& spec, const ModelOptions& options);
  static std::string caption(Model& model, const io::RgbImage& image);
  // Captions of several images, up to kMaxBatch per batched generate; each equal to caption() of its image
  // up to the rounding of batched kernels.
  static std::vector<std::string> caption_batch(Model& model, const std::vector<io::RgbImage>& images);
};

// Loads a SmolVLM checkpoint from `repo` (a hub id, fetched or found in the cache, or a local directory) at
// `revision` with `quantization` applied to its linear layers; device, dtype, hub and max_new_tokens from
// `options`. Throws CheckpointError naming the file, tensor or field that is missing or wrong.
SmolVLMFamily::Model load_smolvlm(std::string_view repo, std::string_view revision, Quantization quantization,
                                  const ModelOptions& options);

// The caption of `image` and the tokens behind it (prompt excluded).
struct SmolVLMCaption {
  std::string text;                  // cleaned as the service cleans it
  std::vector<std::int64_t> tokens;  // generated, the end token included
  std::int64_t prompt_tokens = 0;
};
SmolVLMCaption smolvlm_caption(SmolVLMFamily::Model& model, const io::RgbImage& image,
                               std::int64_t max_new_tokens = 0);
// The captions of `images` from one batched generate (prompts padded on the left); decoding as
// SmolVLM::generate_batch takes it.
std::vector<SmolVLMCaption> smolvlm_caption_batch(SmolVLMFamily::Model& model, const std::vector<io::RgbImage>& images,
                                                  std::int64_t max_new_tokens = 0,
                                                  nn::Decoding decoding = nn::Decoding::automatic);

extern template class ImageToText<SmolVLMFamily>;

}  // namespace imagetotext
