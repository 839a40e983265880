// _C.SmolVLM: one loaded SmolVLM checkpoint with its parts reachable (processor, vision tower, connector,
// prompt logits, greedy decoding), so tests can hold each against transformers; caption() is the service path.
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>
#include <fmt/format.h>
#include <torch/extension.h>

#include "bindings.hpp"
#include "imagetotext/core/error.hpp"
#include "imagetotext/models/smolvlm.hpp"
#include "imagetotext/nn/cuda_graph.hpp"

namespace py = pybind11;

namespace imagetotext::python {

namespace {
Quantization quantization_from_name(const std::string& name) {
  for (Quantization format : {Quantization::none, Quantization::int8, Quantization::llm_int8, Quantization::nf4,
                              Quantization::fp4}) {
    if (name == quantization_name(format)) return format;
  }
  throw InvalidArgumentError("unknown quantization '" + name + "' (use none, int8, llm_int8, nf4 or fp4)");
}

std::optional<at::Tensor> optional_tensor(const std::optional<at::Tensor>& t) { return t; }
}  // namespace

void bind_smolvlm(py::module_& m) {
  using Model = SmolVLMFamily::Model;
  py::class_<Model>(m, "SmolVLM", "A loaded SmolVLM checkpoint (imagetotext's native port of Idefics3).")
      .def(py::init([](const std::string& repo, const std::string& quantization, const std::string& device,
                       const std::string& dtype, const std::string& revision, std::int64_t max_new_tokens) {
             ModelOptions options;
             options.device = device;
             options.dtype = dtype;
             options.max_new_tokens = max_new_tokens;
             const Quantization format = quantization_from_name(quantization);
             py::gil_scoped_release release;
             return load_smolvlm(repo, revision, format, options);
           }),
           py::arg("repo"), py::arg("quantization") = "none", py::arg("device") = "auto", py::arg("dtype") = "auto",
           py::arg("revision") = "main", py::arg("max_new_tokens") = 0,
           "Load a checkpoint from a directory or hub id; quantization: none, int8, llm_int8, nf4 or fp4.")
      .def_property_readonly("device", [](const Model& model) { return model.placement.device.str(); })
      .def_property_readonly("dtype", [](const Model& model) { return std::string(c10::toString(model.placement.dtype)); })
      .def_readonly("eos_token_ids", &Model::eos_token_ids)
      .def_readonly("max_new_tokens", &Model::max_new_tokens)
      .def(
          "process",
          [](const Model& model, const at::Tensor& pixels, const std::string& question) {
            const io::RgbImage image = io::rgb_image_from_pixels(pixels, "image");
            py::gil_scoped_release release;
            smolvlm::ProcessorOutput out =
                model.processor(image, question, model.placement.device, model.placement.dtype);
            py::gil_scoped_acquire acquire;
            py::dict result;
            result["input_ids"] = out.input_ids;
            result["pixel_values"] = out.pixel_values;
            result["prompt"] = out.prompt;
            result["rows"] = out.rows;
            result["cols"] = out.cols;
            return result;
          },
          py::arg("pixels"), py::arg("question") = std::string(smolvlm::kServiceQuestion),
          "The processor: uint8 RGB pixels [H, W, 3] -> input_ids, pixel_values [tiles, 3, H, W], prompt, rows, cols.")
      .def(
          "vision_embeddings",
          [](const Model& model, const at::Tensor& pixel_values, const std::optional<at::Tensor>& patch_mask) {
            c10::InferenceMode inference;
            return model.network.vision().embed(pixel_values, patch_mask);
          },
          py::arg("pixel_values"), py::arg("patch_mask") = py::none(), py::call_guard<py::gil_scoped_release>())
      .def(
          "vision",
          [](const Model& model, const at::Tensor& pixel_values, const std::optional<at::Tensor>& patch_mask) {
            c10::InferenceMode inference;
            return model.network.vision()(pixel_values, patch_mask);
          },
          py::arg("pixel_values"), py::arg("patch_mask") = py::none(), py::call_guard<py::gil_scoped_release>(),
          "The vision tower's last hidden state (after post_layernorm) of tiles [n, 3, H, W].")
      .def(
          "connector",
          [](const Model& model, const at::Tensor& vision_hidden) {
            c10::InferenceMode inference;
            return model.network.connector()(vision_hidden);
          },
          py::arg("vision_hidden"), py::call_guard<py::gil_scoped_release>())
      .def(
          "image_features",
          [](const Model& model, const at::Tensor& pixel_values, const std::optional<at::Tensor>& mask) {
            c10::InferenceMode inference;
            return model.network.image_features(pixel_values, optional_tensor(mask));
          },
          py::arg("pixel_values"), py::arg("pixel_attention_mask") = py::none(),
          py::call_guard<py::gil_scoped_release>())
      .def(
          "prompt_logits",
          [](const Model& model, const at::Tensor& input_ids, const at::Tensor& pixel_values,
             const std::optional<at::Tensor>& mask) {
            c10::InferenceMode inference;
            return model.network.prompt_logits(input_ids, model.network.image_features(pixel_values, mask));
          },
          py::arg("input_ids"), py::arg("pixel_values"), py::arg("pixel_attention_mask") = py::none(),
          py::call_guard<py::gil_scoped_release>(), "Logits [batch, length, vocab] of every prompt position.")
      .def(
          "generate",
          [](const Model& model, const at::Tensor& input_ids, const at::Tensor& pixel_values,
             const std::optional<at::Tensor>& mask, std::int64_t max_new_tokens, bool keep_logits,
             const std::optional<std::vector<std::int64_t>>& eos_token_ids, const std::string& decoding) {
            const nn::Decoding mode = nn::parse_decoding(decoding);
            c10::InferenceMode inference;
            text::GreedySearchOptions options = model.greedy_options(max_new_tokens);
            if (eos_token_ids) options.eos_token_ids = *eos_token_ids;
            options.keep_logits = keep_logits;
            text::GreedySearchResult result =
                model.network.generate(input_ids, model.network.image_features(pixel_values, mask), options, mode);
            at::Tensor logits = keep_logits && !result.logits.empty() ? at::stack(result.logits) : at::Tensor();
            return std::make_pair(result.tokens, logits);
          },
          py::arg("input_ids"), py::arg("pixel_values"), py::arg("pixel_attention_mask") = py::none(),
          py::arg("max_new_tokens") = 0, py::arg("keep_logits") = false, py::arg("eos_token_ids") = py::none(),
          py::arg("decoding") = "auto", py::call_guard<py::gil_scoped_release>(),
          "Greedy decoding: (generated tokens, [steps, vocab] logits or None). eos_token_ids defaults to the model's; "
          "decoding is 'auto' (a replayed CUDA graph on CUDA), 'eager' or 'graph' (fixed-shape steps; recorded "
          "on CUDA, run as they are on a CPU).")
      .def(
          "generate_batch",
          [](const Model& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
             const at::Tensor& pixel_values, const std::optional<at::Tensor>& mask, std::int64_t max_new_tokens,
             bool keep_logits, const std::optional<std::vector<std::int64_t>>& eos_token_ids,
             const std::string& decoding) {
            const nn::Decoding mode = nn::parse_decoding(decoding);
            c10::InferenceMode inference;
            text::GreedySearchOptions options = model.greedy_options(max_new_tokens);
            if (eos_token_ids) options.eos_token_ids = *eos_token_ids;
            options.keep_logits = keep_logits;
            const std::vector<text::GreedySearchResult> results = model.network.generate_batch(
                input_ids, attention_mask, model.network.image_features(pixel_values, mask), options, mode);
            // The rows padded to the longest with pad_token_id, as transformers' generate returns them.
            std::size_t steps = 0;
            for (const auto& row : results) steps = std::max(steps, row.tokens.size());
            std::vector<std::vector<std::int64_t>> tokens;
            std::vector<at::Tensor> logits;
            for (const auto& row : results) {
              tokens.push_back(row.tokens);
              tokens.back().resize(steps, model.pad_token_id);
              if (keep_logits) logits.push_back(row.logits.empty() ? at::Tensor() : at::stack(row.logits));
            }
            return std::make_pair(tokens, logits);
          },
          py::arg("input_ids"), py::arg("attention_mask"), py::arg("pixel_values"),
          py::arg("pixel_attention_mask") = py::none(), py::arg("max_new_tokens") = 0, py::arg("keep_logits") = false,
          py::arg("eos_token_ids") = py::none(), py::arg("decoding") = "auto", py::call_guard<py::gil_scoped_release>(),
          "Greedy decoding of a left-padded batch (transformers' processor with padding=True, padding_side='left'): "
          "(tokens [batch][steps], each row padded with pad_token_id after its end token; per row [own steps, "
          "vocab] logits with keep_logits).")
      .def_readonly("pad_token_id", &Model::pad_token_id,
                    "generation_config's pad_token_id, else the first end token: what a finished row of a batch emits.")
      .def(
          "caption_batch",
          [](Model& model, const std::vector<at::Tensor>& pixels, std::int64_t max_new_tokens,
             const std::string& decoding) {
            const nn::Decoding mode = nn::parse_decoding(decoding);
            std::vector<io::RgbImage> images;
            for (std::size_t i = 0; i < pixels.size(); ++i) {
              images.push_back(io::rgb_image_from_pixels(pixels[i], fmt::format("image {}", i)));
            }
            py::gil_scoped_release release;
            std::vector<std::pair<std::string, std::vector<std::int64_t>>> out;
            for (SmolVLMCaption& caption : smolvlm_caption_batch(model, images, max_new_tokens, mode)) {
              out.emplace_back(std::move(caption.text), std::move(caption.tokens));
            }
            return out;
          },
          py::arg("pixels"), py::arg("max_new_tokens") = 0, py::arg("decoding") = "auto",
          "The service's captions of several uint8 RGB images [H, W, 3] from one batched generate: a list of "
          "(cleaned text, generated tokens).")
      .def(
          "caption",
          [](Model& model, const at::Tensor& pixels, std::int64_t max_new_tokens) {
            const io::RgbImage image = io::rgb_image_from_pixels(pixels, "image");
            py::gil_scoped_release release;
            const SmolVLMCaption caption = smolvlm_caption(model, image, max_new_tokens);
            return std::make_pair(caption.text, caption.tokens);
          },
          py::arg("pixels"), py::arg("max_new_tokens") = 0,
          "The service's caption of uint8 RGB pixels [H, W, 3]: (cleaned text, generated tokens).");

  m.def("smolvlm_clean_caption", &smolvlm::clean_caption, py::arg("decoded"),
        py::arg("question") = std::string(smolvlm::kServiceQuestion),
        "The service's clean-up of SmolVLM's decoded output.");
}

}  // namespace imagetotext::python
