// Config files read by the C++ side, exposed as dicts (for tests and for users inspecting a checkpoint).
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include "bindings.hpp"
#include "imagetotext/models/moondream_config.hpp"
#include "imagetotext/models/smolvlm_config.hpp"
#include "imagetotext/text/generation_config.hpp"

namespace py = pybind11;

namespace imagetotext::python {

void bind_configs(py::module_& m) {
  m.def(
      "load_moondream_config",
      [](const std::filesystem::path& path) {
        const MoondreamConfig c = load_moondream_config(path);
        py::dict text, vision, region, tokenizer, top;
        text["dim"] = c.text.dim;
        text["n_layers"] = c.text.n_layers;
        text["vocab_size"] = c.text.vocab_size;
        text["max_context"] = c.text.max_context;
        text["n_heads"] = c.text.n_heads;
        text["prefix_attn"] = c.text.prefix_attn;
        vision["enc_dim"] = c.vision.enc_dim;
        vision["enc_patch_size"] = c.vision.enc_patch_size;
        vision["enc_n_layers"] = c.vision.enc_n_layers;
        vision["enc_ff_dim"] = c.vision.enc_ff_dim;
        vision["enc_n_heads"] = c.vision.enc_n_heads;
        vision["proj_out_dim"] = c.vision.proj_out_dim;
        vision["crop_size"] = c.vision.crop_size;
        vision["in_channels"] = c.vision.in_channels;
        vision["max_crops"] = c.vision.max_crops;
        vision["overlap_margin"] = c.vision.overlap_margin;
        vision["proj_inner_dim"] = c.vision.proj_inner_dim;
        region["dim"] = c.region.dim;
        region["coord_feat_dim"] = c.region.coord_feat_dim;
        region["coord_out_dim"] = c.region.coord_out_dim;
        region["size_feat_dim"] = c.region.size_feat_dim;
        region["size_out_dim"] = c.region.size_out_dim;
        region["inner_dim"] = c.region.inner_dim;
        tokenizer["bos_id"] = c.tokenizer.bos_id;
        tokenizer["eos_id"] = c.tokenizer.eos_id;
        tokenizer["templates"] = c.tokenizer.templates;
        top["text"] = text;
        top["vision"] = vision;
        top["region"] = region;
        top["tokenizer"] = tokenizer;
        return top;
      },
      py::arg("path"), "moondream2's configuration (config.json or config_md2.json form) as a dict.");
  m.def(
      "load_smolvlm_config",
      [](const std::filesystem::path& path) {
        const SmolVLMConfig c = load_smolvlm_config(path);
        py::dict vision, text, top;
        vision["hidden_size"] = c.vision.hidden_size;
        vision["intermediate_size"] = c.vision.intermediate_size;
        vision["num_hidden_layers"] = c.vision.num_hidden_layers;
        vision["num_attention_heads"] = c.vision.num_attention_heads;
        vision["num_channels"] = c.vision.num_channels;
        vision["image_size"] = c.vision.image_size;
        vision["patch_size"] = c.vision.patch_size;
        vision["hidden_act"] = c.vision.hidden_act;
        vision["layer_norm_eps"] = c.vision.layer_norm_eps;
        text["vocab_size"] = c.text.vocab_size;
        text["hidden_size"] = c.text.hidden_size;
        text["intermediate_size"] = c.text.intermediate_size;
        text["num_hidden_layers"] = c.text.num_hidden_layers;
        text["num_attention_heads"] = c.text.num_attention_heads;
        text["num_key_value_heads"] = c.text.num_key_value_heads;
        text["head_dim"] = c.text.head_dim;
        text["max_position_embeddings"] = c.text.max_position_embeddings;
        text["rms_norm_eps"] = c.text.rms_norm_eps;
        text["rope_theta"] = c.text.rope_theta;
        text["hidden_act"] = c.text.hidden_act;
        text["attention_bias"] = c.text.attention_bias;
        text["mlp_bias"] = c.text.mlp_bias;
        text["pad_token_id"] = c.text.pad_token_id;
        top["model_type"] = c.model_type;
        top["scale_factor"] = c.scale_factor;
        top["image_token_id"] = c.image_token_id;
        top["tie_word_embeddings"] = c.tie_word_embeddings;
        top["image_seq_len"] = c.image_seq_len();
        top["vision_config"] = vision;
        top["text_config"] = text;
        return top;
      },
      py::arg("path"), "Read a SmolVLM config.json as the C++ model sees it.");

  m.def(
      "load_generation_config",
      [](const std::filesystem::path& path) {
        const GenerationConfig c = load_generation_config(path);
        py::dict out;
        out["bos_token_id"] = c.bos_token_id;
        out["eos_token_id"] = c.eos_token_ids;
        out["pad_token_id"] = c.pad_token_id;
        out["decoder_start_token_id"] = c.decoder_start_token_id;
        out["forced_bos_token_id"] = c.forced_bos_token_id;
        out["forced_eos_token_id"] = c.forced_eos_token_id;
        out["max_length"] = c.max_length;
        out["max_new_tokens"] = c.max_new_tokens;
        out["num_beams"] = c.num_beams;
        out["no_repeat_ngram_size"] = c.no_repeat_ngram_size;
        out["early_stopping"] = c.early_stopping == EarlyStopping::never ? py::object(py::str("never"))
                                                                          : py::object(py::bool_(c.early_stopping ==
                                                                                                 EarlyStopping::when_enough_finished));
        out["length_penalty"] = c.length_penalty;
        out["do_sample"] = c.do_sample;
        return out;
      },
      py::arg("path"), "Read generation_config.json (defaults when the file is absent).");
}

}  // namespace imagetotext::python
