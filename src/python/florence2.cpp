// imagetotext._C.Florence2Model and helpers: Florence-2's stages one by one, so tests can hold each against
// transformers, and generation with every setting explicit.
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>
#include <torch/extension.h>

#include "bindings.hpp"
#include "imagetotext/core/device.hpp"
#include "imagetotext/core/error.hpp"
#include "imagetotext/models/florence2.hpp"

namespace py = pybind11;

namespace imagetotext::python {
namespace {

Quantization parse_quantization(const std::string& name) {
  for (Quantization format : {Quantization::none, Quantization::int8, Quantization::llm_int8, Quantization::nf4,
                              Quantization::fp4}) {
    if (name == quantization_name(format)) return format;
  }
  throw InvalidArgumentError("quantization must be 'none', 'int8', 'llm_int8', 'nf4' or 'fp4', got '" + name + "'");
}

EarlyStopping parse_early_stopping(const py::object& value) {
  if (py::isinstance<py::str>(value)) {
    if (value.cast<std::string>() != "never") throw InvalidArgumentError("early_stopping must be True, False or 'never'");
    return EarlyStopping::never;
  }
  return value.cast<bool>() ? EarlyStopping::when_enough_finished : EarlyStopping::heuristic;
}

py::dict config_dict(const Florence2Config& c) {
  py::dict vision, text, top;
  vision["in_channels"] = c.vision.in_channels;
  vision["depths"] = c.vision.depths;
  vision["patch_size"] = c.vision.patch_size;
  vision["patch_stride"] = c.vision.patch_stride;
  vision["patch_padding"] = c.vision.patch_padding;
  vision["patch_prenorm"] = c.vision.patch_prenorm;
  vision["embed_dim"] = c.vision.embed_dim;
  vision["num_heads"] = c.vision.num_heads;
  vision["num_groups"] = c.vision.num_groups;
  vision["window_size"] = c.vision.window_size;
  vision["mlp_ratio"] = c.vision.mlp_ratio;
  vision["qkv_bias"] = c.vision.qkv_bias;
  vision["activation_function"] = c.vision.activation_function;
  vision["projection_dim"] = c.vision.projection_dim;
  vision["max_temporal_embeddings"] = c.vision.max_temporal_embeddings;
  vision["max_position_embeddings"] = c.vision.max_position_embeddings;
  text["vocab_size"] = c.text.vocab_size;
  text["d_model"] = c.text.d_model;
  text["encoder_layers"] = c.text.encoder_layers;
  text["decoder_layers"] = c.text.decoder_layers;
  text["encoder_attention_heads"] = c.text.encoder_attention_heads;
  text["decoder_attention_heads"] = c.text.decoder_attention_heads;
  text["encoder_ffn_dim"] = c.text.encoder_ffn_dim;
  text["decoder_ffn_dim"] = c.text.decoder_ffn_dim;
  text["max_position_embeddings"] = c.text.max_position_embeddings;
  text["activation_function"] = c.text.activation_function;
  text["scale_embedding"] = c.text.scale_embedding;
  text["pad_token_id"] = c.text.pad_token_id;
  text["bos_token_id"] = c.text.bos_token_id;
  text["eos_token_id"] = c.text.eos_token_id;
  text["decoder_start_token_id"] = c.text.decoder_start_token_id;
  py::dict generation;
  generation["num_beams"] = c.generation.num_beams;
  generation["no_repeat_ngram_size"] = c.generation.no_repeat_ngram_size;
  generation["forced_bos_token_id"] = c.generation.forced_bos_token_id;
  generation["forced_eos_token_id"] = c.generation.forced_eos_token_id;
  generation["early_stopping"] = c.generation.early_stopping == EarlyStopping::when_enough_finished;
  top["layout"] = c.layout == Florence2Layout::original ? "original" : "native";
  top["image_token_id"] = c.image_token_id;
  top["vision_config"] = vision;
  top["text_config"] = text;
  top["generation"] = generation;
  top["image_tokens_768"] = c.image_tokens(768);
  return top;
}

// generate()'s keyword arguments as search settings (max_length counts the decoder start token).
text::SearchSettings search_settings(const Florence2Model& model, int64_t max_new_tokens, int64_t num_beams,
                                     int64_t no_repeat_ngram_size, std::optional<int64_t> forced_bos_token_id,
                                     std::optional<int64_t> forced_eos_token_id, const py::object& early_stopping,
                                     double length_penalty, std::optional<std::vector<int64_t>> eos_token_ids) {
  text::SearchSettings s;
  s.num_beams = num_beams;
  s.max_length = 1 + max_new_tokens;
  s.no_repeat_ngram_size = no_repeat_ngram_size;
  s.forced_bos_token_id = forced_bos_token_id;
  s.forced_eos_token_id = forced_eos_token_id;
  s.eos_token_ids = eos_token_ids.value_or(std::vector<int64_t>{model.config().text.eos_token_id});
  s.pad_token_id = model.config().text.pad_token_id;
  s.early_stopping = parse_early_stopping(early_stopping);
  s.length_penalty = length_penalty;
  return s;
}

}  // namespace

void bind_florence2(py::module_& m) {
  m.def("load_florence2_config", [](const std::filesystem::path& path) { return config_dict(load_florence2_config(path)); },
        py::arg("path"), "Read a Florence-2 config.json (native or original layout) as the C++ model sees it.");
  m.def("florence2_native_name", &florence2_native_name, py::arg("name"),
        "The native name of an original-layout Florence-2 tensor (None for tensors the model does not use).");
  m.def("florence2_task_prompt", &florence2_task_prompt, py::arg("text"),
        "The prompt Florence2Processor builds for a task token such as '<DETAILED_CAPTION>'.");
  m.def("florence2_prompt_ids", &florence2_prompt_ids, py::arg("tokenizer"), py::arg("task"),
        "The prompt ids Florence-2's processors make for a task (without the native <image> placeholders).");
  m.def(
      "florence2_pixel_values",
      [](const at::Tensor& pixels, int64_t size) {
        py::gil_scoped_release release;
        return florence2_pixel_values(pixels, pixels.device(), at::kFloat, size);
      },
      py::arg("pixels"), py::arg("size") = 768,
      "Florence-2's image preprocessing: uint8 RGB [height, width, 3] -> float32 [1, 3, size, size].");
  m.def(
      "florence2_clean_caption",
      [](std::string text, const std::string& layout) {
        return florence2_clean_caption(std::move(text), layout == "original" ? Florence2Layout::original
                                                                              : Florence2Layout::native);
      },
      py::arg("text"), py::arg("layout") = "native", "The pure-text post-processing of a decoded caption.");
  m.def("florence2_keep_dense", &florence2_keep_dense, py::arg("quantize_vision") = false,
        "The modules a quantized Florence-2 keeps dense by default (or with quantize_vision).");

  py::class_<Florence2Model>(m, "Florence2Model", "Florence-2 as the C++ library runs it, stage by stage.")
      .def_static(
          "load",
          [](const std::filesystem::path& directory, const std::string& device, const std::string& dtype,
             const std::string& quantization, std::optional<std::vector<std::string>> keep_dense,
             bool quantize_vision) {
            Florence2Model::Options options;
            options.placement.device = resolve_device(device);
            options.placement.dtype = resolve_dtype(dtype, options.placement.device);
            options.policy.format = parse_quantization(quantization);
            options.policy.keep_dense = keep_dense.value_or(florence2_keep_dense(quantize_vision));
            py::gil_scoped_release release;
            return Florence2Model::load(directory, options);
          },
          py::arg("directory"), py::arg("device") = "cpu", py::arg("dtype") = "float32", py::arg("quantization") = "none",
          py::arg("keep_dense") = py::none(), py::arg("quantize_vision") = false,
          "Load config.json and the safetensors checkpoint of a directory, in either layout.")
      .def_property_readonly(
          "config", [](const Florence2Model& model) { return config_dict(model.config()); },
          "The config as the C++ model read it (layout, vision_config, text_config, generation).")
      .def("image_features", &Florence2Model::image_features, py::arg("pixel_values"),
           py::call_guard<py::gil_scoped_release>(),
           "The projector's image tokens [batch, 1 + h*w, d_model] for pixel_values [batch, 3, H, W].")
      .def("encode", &Florence2Model::encode, py::arg("pixel_values"), py::arg("prompt_ids"),
           py::call_guard<py::gil_scoped_release>(),
           "The BART encoder output over [image tokens ; prompt_ids] (prompt ids without <image> placeholders).")
      .def("decoder_logits", &Florence2Model::decoder_logits, py::arg("encoder_output"), py::arg("decoder_ids"),
           py::call_guard<py::gil_scoped_release>(),
           "Float32 logits [batch, length, vocab] of decoder_ids over an encoder output (one teacher-forced pass).")
      .def(
          "generate",
          [](const Florence2Model& model, const at::Tensor& encoder_output, int64_t max_new_tokens, int64_t num_beams,
             int64_t no_repeat_ngram_size, std::optional<int64_t> forced_bos_token_id,
             std::optional<int64_t> forced_eos_token_id, const py::object& early_stopping, double length_penalty,
             std::optional<std::vector<int64_t>> eos_token_ids, const std::string& decoding) {
            const nn::Decoding mode = nn::parse_decoding(decoding);
            const text::SearchSettings s =
                search_settings(model, max_new_tokens, num_beams, no_repeat_ngram_size, forced_bos_token_id,
                                forced_eos_token_id, early_stopping, length_penalty, std::move(eos_token_ids));
            py::gil_scoped_release release;
            const text::SearchResult result = model.generate(encoder_output, s, mode);
            return std::make_pair(result.sequence, result.score);
          },
          py::arg("encoder_output"), py::arg("max_new_tokens"), py::arg("num_beams") = 1,
          py::arg("no_repeat_ngram_size") = 0, py::arg("forced_bos_token_id") = py::none(),
          py::arg("forced_eos_token_id") = py::none(), py::arg("early_stopping") = false, py::arg("length_penalty") = 1.0,
          py::arg("eos_token_ids") = py::none(), py::arg("decoding") = "auto",
          "Generate from an encoder output; returns (token ids with the decoder start token, beam score). "
          "eos_token_ids=[] generates exactly max_new_tokens (benchmarks). decoding: 'auto' (a replayed CUDA graph "
          "on CUDA), 'eager' or 'graph' (fixed-shape steps; recorded on CUDA, run as they are on a CPU).")
      .def(
          "generate_batch",
          [](const Florence2Model& model, const at::Tensor& encoder_output, int64_t max_new_tokens, int64_t num_beams,
             int64_t no_repeat_ngram_size, std::optional<int64_t> forced_bos_token_id,
             std::optional<int64_t> forced_eos_token_id, const py::object& early_stopping, double length_penalty,
             std::optional<std::vector<int64_t>> eos_token_ids, const std::string& decoding) {
            const nn::Decoding mode = nn::parse_decoding(decoding);
            const text::SearchSettings s =
                search_settings(model, max_new_tokens, num_beams, no_repeat_ngram_size, forced_bos_token_id,
                                forced_eos_token_id, early_stopping, length_penalty, std::move(eos_token_ids));
            py::gil_scoped_release release;
            std::vector<std::pair<std::vector<int64_t>, double>> rows;
            for (const text::SearchResult& result : model.generate_batch(encoder_output, s, mode)) {
              rows.emplace_back(result.sequence, result.score);
            }
            return rows;
          },
          py::arg("encoder_output"), py::arg("max_new_tokens"), py::arg("num_beams") = 1,
          py::arg("no_repeat_ngram_size") = 0, py::arg("forced_bos_token_id") = py::none(),
          py::arg("forced_eos_token_id") = py::none(), py::arg("early_stopping") = false, py::arg("length_penalty") = 1.0,
          py::arg("eos_token_ids") = py::none(), py::arg("decoding") = "auto",
          "generate() for encoder outputs [batch, length, d_model] in one batched search: a (token ids, beam score) "
          "per row, as transformers' batched generate() gives them.")
      .def(
          "generate_as_service",
          [](const Florence2Model& model, const at::Tensor& encoder_output, int64_t max_new_tokens,
             const std::string& decoding) {
            const nn::Decoding mode = nn::parse_decoding(decoding);
            const text::SearchSettings s = model.service_settings(max_new_tokens);
            py::gil_scoped_release release;
            const text::SearchResult result = model.generate(encoder_output, s, mode);
            return std::make_pair(result.sequence, result.score);
          },
          py::arg("encoder_output"), py::arg("max_new_tokens") = 0, py::arg("decoding") = "auto",
          "Generate with the service's settings (3 beams, no repeated 3-grams, forced BOS/EOS, early stopping).");
}

}  // namespace imagetotext::python
