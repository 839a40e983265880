// Florence-2 (base / large): image -> caption. The pieces, top to bottom as the data flows:
//
//   processor    RGB uint8 -> 768x768 Pillow BICUBIC -> x/255 -> (x - ImageNet mean) / std   [1, 3, 768, 768]
//                task token (<DETAILED_CAPTION>) -> its prompt -> "<s>" prompt "</s>" ids
//   vision       DaViT: 4 stages of patch embedding + (window attention, channel attention) blocks
//   projector    2-D positions + temporal row 0, [mean token ; 576 tokens], Linear, LayerNorm -> 577 tokens
//   encoder      BART encoder over [577 image tokens ; prompt embeddings]
//   decoder      BART decoder (self- and cross-attention caches allocated once per request), tied lm_head
//   generation   beam search as transformers runs it, on the device, the decoder step and the search step
//                replayed as one CUDA graph (text/beam_search.hpp); "<s>"/"</s>" stripped
//
// Checkpoints in both layouts load (models/florence2_config.hpp): the original remote-code names are mapped
// onto the native ones by florence2_native_name, the one table of that mapping (docs/florence2.md).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "imagetotext/image_to_text.hpp"
#include "imagetotext/io/safetensors.hpp"
#include "imagetotext/models/florence2_config.hpp"
#include "imagetotext/nn/cuda_graph.hpp"
#include "imagetotext/nn/linear.hpp"
#include "imagetotext/nn/weights.hpp"
#include "imagetotext/text/beam_search.hpp"
#include "imagetotext/text/tokenizer.hpp"

namespace imagetotext {

namespace florence2 {
class VisionTower;
class Projector;
class LanguageModel;
}  // namespace florence2

// The native name of an original-layout tensor ("vision_tower.convs.0.proj.weight" ->
// "model.vision_tower.convs.0.conv.weight"); nullopt for tensors the native model has no use for
// (the remote DaViT's unused classifier head and final norm). Native names map to themselves.
std::optional<std::string> florence2_native_name(std::string_view original);

// A checkpoint's tensors under native names: original-layout tensors renamed (and image_projection
// transposed from the remote code's [C, P] to a Linear's [P, C]). Throws CheckpointError naming `source` when
// the tensor names do not match `layout`.
io::TensorMap florence2_native_tensors(io::TensorMap tensors, Florence2Layout layout,
                                       const std::filesystem::path& source);

// The Linear layers an NF4/INT8 Florence-2 keeps dense. Default: the vision tower and the projector (the
// embeddings and the tied lm_head are never Linear layers here); quantize_vision: none, as bitsandbytes
// quantizes every nn.Linear transformers does not skip.
std::vector<std::string> florence2_keep_dense(bool quantize_vision);

// The task prompts of Florence2Processor (<CAPTION> -> "What does the image describe?", ...); other text
// is returned unchanged. Throws InvalidArgumentError for a task that needs no input but has some.
std::string florence2_task_prompt(std::string_view text);

// The prompt's token ids as both processors make them: "<s>" + florence2_task_prompt(task) + "</s>" (the
// native processor's 577 <image> placeholders left out: the model puts the image tokens first itself).
std::vector<std::int64_t> florence2_prompt_ids(const text::Tokenizer& tokenizer, std::string_view task);

// The caption post-processing for pure-text tasks: "<s>" and "</s>" removed; native strips whitespace,
// the original processor (the service's) does not.
std::string florence2_clean_caption(std::string text, Florence2Layout layout);

// Florence-2's image preprocessing: uint8 RGB [H, W, 3] -> [1, 3, 768, 768] of `dtype` on `device`.
at::Tensor florence2_pixel_values(const at::Tensor& rgb_pixels, c10::Device device, at::ScalarType dtype,
                                  std::int64_t size = 768);

class Florence2Model {
 public:
  struct Options {
    nn::Placement placement;
    nn::LinearPolicy policy;  // format none = dense
  };

  // Loads config.json and the safetensors checkpoint (a file, an index or a directory holding one) from a
  // directory. Throws CheckpointError naming the file and tensor for anything that does not match.
  static Florence2Model load(const std::filesystem::path& directory, const Options& options);
  static Florence2Model load(const Florence2Config& config, io::TensorMap tensors, const std::filesystem::path& source,
                             const Options& options);

  Florence2Model(Florence2Model&&) noexcept;
  Florence2Model& operator=(Florence2Model&&) noexcept;
  ~Florence2Model();

  // The 577 image tokens of pixel_values [1, 3, H, W] (projector output).
  at::Tensor image_features(const at::Tensor& pixel_values) const;
  // The encoder output over [image tokens ; embeddings of prompt_ids [1, L]] (prompt ids without image
  // placeholders, as the original processor makes them).
  at::Tensor encode(const at::Tensor& pixel_values, const at::Tensor& prompt_ids) const;
  // Logits [1, l, vocab] (float32) of decoder_ids [1, l] over an encoder output: one full teacher-forced pass.
  at::Tensor decoder_logits(const at::Tensor& encoder_output, const at::Tensor& decoder_ids) const;
  // Generation from an encoder output with `settings` (beams and greedy); the decoder prompt is
  // [decoder_start_token_id]. The search runs on the model's device (text/beam_search.hpp). eager: caches sized
  // per request, each step launched from the host and the done flag read after each. graph: the decoder step and
  // the search step over caches of a fixed capacity (positions rounded up to 256, encoder positions to 64),
  // recorded once in a CUDA graph per (beams, capacities, settings up to max_length) and replayed, the done
  // flag read every 4 steps; on a CPU the same steps run without a graph. automatic: graph on CUDA unless a
  // decoder layer is LLM.int8 (it reads back to the host), else eager.
  using Decoding = nn::Decoding;
  text::SearchResult generate(const at::Tensor& encoder_output, const text::SearchSettings& settings,
                              Decoding decoding = Decoding::automatic) const;
  // generate() for a batch: encoder outputs [batch, length, d_model] of one prompt (images resized alike, so no
  // padding and no mask), one search over batch x num_beams sequences (each image's encoder output expanded
  // per beam, rows laid out image after image as transformers' _expand_inputs_for_generation does). Each
  // row's result is transformers' batched generate()'s for that row. graph: recorded per batch size (the
  // batch of one and the latest larger batch keep their recordings).
  std::vector<text::SearchResult> generate_batch(const at::Tensor& encoder_output, const text::SearchSettings& settings,
                                                 Decoding decoding = Decoding::automatic) const;

  // The service's generation: 3 beams, no repeated 3-grams, forced BOS/EOS, early stopping, up to
  // `max_new_tokens` (0: 4096, as the service) within the decoder's position table.
  text::SearchSettings service_settings(std::int64_t max_new_tokens = 0) const;

  const Florence2Config& config() const noexcept { return config_; }
  const nn::Placement& placement() const noexcept { return placement_; }

 private:
  Florence2Model() = default;
  Florence2Config config_;
  nn::Placement placement_;
  std::unique_ptr<florence2::VisionTower> vision_;
  std::unique_ptr<florence2::Projector> projector_;
  std::unique_ptr<florence2::LanguageModel> language_;
  struct DecodeGraph;
  std::vector<text::SearchResult> generate_eager(const at::Tensor& encoder_output,
                                                 const text::SearchSettings& settings) const;
  std::vector<text::SearchResult> generate_graphed(const at::Tensor& encoder_output,
                                                   const text::SearchSettings& settings) const;
  // The recorded decode steps (fixed-shape decoding); shared by every user of this model: one for a batch of
  // one, one for the latest larger batch.
  std::shared_ptr<DecodeGraph> decode_graph_;
  std::shared_ptr<DecodeGraph> batch_decode_graph_;
};

// The model family model_selector builds: load() finds the checkpoint (registry hub id, a directory, or
// ModelOptions.checkpoint), caption() runs the service's <DETAILED_CAPTION>.
struct Florence2Family {
  struct Model {
    Florence2Model network;
    text::Tokenizer tokenizer;
    std::int64_t max_new_tokens;
  };
  static Model load(const ModelSpec& spec, const ModelOptions& options);
  static std::string caption(Model& model, const io::RgbImage& image);
  // Several images per forward (ImageToText::extract_batch): chunks of up to kImagesPerForward images, each
  // resized to 768x768 and captioned in one batched generate; a chunk of one is caption().
  static constexpr std::size_t kImagesPerForward = 8;
  static std::vector<std::string> caption_batch(Model& model, const std::vector<io::RgbImage>& images);
  // One task on pixels: the caption for `task` (e.g. "<CAPTION>") with `settings`.
  static std::string run_task(Model& model, const io::RgbImage& image, std::string_view task,
                              const text::SearchSettings& settings);
  // run_task for several images in one batched generate.
  static std::vector<std::string> run_task_batch(Model& model, const std::vector<io::RgbImage>& images,
                                                 std::string_view task, const text::SearchSettings& settings);
};

extern template class ImageToText<Florence2Family>;

}  // namespace imagetotext
