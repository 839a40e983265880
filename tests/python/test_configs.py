"""config.json and generation_config.json read by C++ against transformers reading the same files."""

from __future__ import annotations

import json

import pytest

import imagetotext
from imagetotext import _C

transformers = pytest.importorskip("transformers")

# SmolVLM-256M-Instruct's published values (shared/reference/vlm_models.md, A.1).
SMOLVLM_256M = {
    "scale_factor": 4,
    "image_token_id": 49190,
    "tie_word_embeddings": False,
    "vision_config": {"hidden_size": 768, "num_attention_heads": 12, "patch_size": 16, "image_size": 512},
    "text_config": {
        "model_type": "llama", "vocab_size": 49280, "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "pad_token_id": 2,
    },
}


def transformers_view(config_dir):
    """What transformers makes of the file: the oracle."""
    config = transformers.AutoConfig.from_pretrained(config_dir)
    text, vision = config.text_config, config.vision_config
    return {
        "model_type": config.model_type,
        "scale_factor": config.scale_factor,
        "image_token_id": config.image_token_id,
        "tie_word_embeddings": config.tie_word_embeddings,
        "vision_config": {k: getattr(vision, k) for k in (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
            "image_size", "patch_size", "hidden_act", "layer_norm_eps")},
        "text_config": {
            **{k: getattr(text, k) for k in (
                "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "hidden_act",
                "attention_bias", "mlp_bias", "pad_token_id")},
            "rope_theta": text.rope_parameters["rope_theta"],
        },
    }


def ours(config_dir):
    config = _C.load_smolvlm_config(config_dir / "config.json")
    config.pop("image_seq_len")
    return config


def write_config(tmp_path, values):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "idefics3", **values}))
    return tmp_path


def test_the_256m_config_saved_by_transformers(tmp_path):
    transformers.Idefics3Config(**SMOLVLM_256M).save_pretrained(tmp_path)
    assert ours(tmp_path) == transformers_view(tmp_path)
    # 64 image tokens per 512-pixel tile, as transformers' Idefics3Model computes image_seq_len.
    assert _C.load_smolvlm_config(tmp_path / "config.json")["image_seq_len"] == 64


@pytest.mark.parametrize("drop", [
    [],
    ["scale_factor", "image_token_id"],
    ["vision_config"],
    ["text_config"],
    ["text_config.num_key_value_heads", "text_config.head_dim", "text_config.rope_theta"],
    ["text_config.rms_norm_eps", "text_config.pad_token_id", "vision_config.patch_size"],
])
def test_absent_fields_take_transformers_defaults(tmp_path, drop):
    values = json.loads(json.dumps(SMOLVLM_256M))
    for field in drop:
        parent, _, key = field.rpartition(".")
        (values[parent] if parent else values).pop(key)
    write_config(tmp_path, values)
    assert ours(tmp_path) == transformers_view(tmp_path)


def test_rope_parameters_form_of_transformers_5(tmp_path):
    values = json.loads(json.dumps(SMOLVLM_256M))
    values["text_config"].pop("rope_theta")
    values["text_config"]["rope_parameters"] = {"rope_type": "default", "rope_theta": 100000.0}
    write_config(tmp_path, values)
    assert ours(tmp_path)["text_config"]["rope_theta"] == transformers_view(tmp_path)["text_config"]["rope_theta"]


@pytest.mark.parametrize("mutate,field,why", [
    (lambda v: v["text_config"].update(hidden_size="576"), "text_config.hidden_size", "must be an integer"),
    (lambda v: v.update(scale_factor=4.5), "scale_factor", "must be an integer"),
    (lambda v: v["vision_config"].update(hidden_act=1), "vision_config.hidden_act", "must be a string"),
    (lambda v: v.update(model_type="bart"), "model_type", "not a SmolVLM model"),
    (lambda v: v.pop("model_type"), "model_type", "is missing"),
    (lambda v: v["text_config"].update(num_attention_heads=7), "text_config.hidden_size", "multiple of num_attention_heads"),
])
def test_bad_fields_name_the_file_and_the_field(tmp_path, mutate, field, why):
    values = {"model_type": "idefics3", **json.loads(json.dumps(SMOLVLM_256M))}
    mutate(values)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    with pytest.raises(imagetotext.CheckpointError) as caught:
        _C.load_smolvlm_config(path)
    message = str(caught.value)
    assert str(path) in message and f"'{field}'" in message and why in message


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(imagetotext.CheckpointError, match="cannot open model config"):
        _C.load_smolvlm_config(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(imagetotext.CheckpointError, match="is not valid JSON"):
        _C.load_smolvlm_config(tmp_path / "config.json")


GENERATION_FIELDS = ["bos_token_id", "pad_token_id", "decoder_start_token_id", "forced_bos_token_id",
                     "forced_eos_token_id", "max_length", "max_new_tokens", "num_beams", "no_repeat_ngram_size",
                     "early_stopping", "length_penalty", "do_sample"]


def generation_view(config):
    # Fields a file leaves unset are None in transformers 5; generate() then fills them from these defaults.
    defaults = config._get_default_generation_params()
    view = {k: getattr(config, k) if getattr(config, k) is not None else defaults.get(k) for k in GENERATION_FIELDS}
    eos = config.eos_token_id
    view["eos_token_id"] = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return view


@pytest.mark.parametrize("values", [
    {},
    # Florence-2's: 3 beams, no repeated 3-grams, forced BOS/EOS, early stopping.
    {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "decoder_start_token_id": 2, "forced_bos_token_id": 0,
     "forced_eos_token_id": 2, "num_beams": 3, "no_repeat_ngram_size": 3, "early_stopping": True, "max_length": 1025},
    # SmolVLM's: several end tokens.
    {"bos_token_id": 1, "eos_token_id": [2, 49279], "pad_token_id": 2, "max_new_tokens": 250},
    {"num_beams": 4, "early_stopping": "never", "length_penalty": 0.8},
])
def test_generation_config_matches_transformers(tmp_path, values):
    transformers.GenerationConfig(**values).save_pretrained(tmp_path)
    expected = generation_view(transformers.GenerationConfig.from_pretrained(tmp_path))
    assert _C.load_generation_config(tmp_path / "generation_config.json") == expected


def test_absent_generation_config_is_transformers_defaults(tmp_path):
    assert _C.load_generation_config(tmp_path / "generation_config.json") == generation_view(
        transformers.GenerationConfig())


# moondream2 revision 2025-01-09: vikhyat/moondream moondream/torch/config.py @8ac77eb (the dataclass
# defaults, which the hub's config.json leaves in force) and moondream/config/config_md2.json, as listed
# in shared/reference/moondream2.md section 1.3.
MOONDREAM2 = {
    "text": {"dim": 2048, "n_layers": 24, "vocab_size": 51200, "max_context": 2048, "n_heads": 32, "prefix_attn": 730},
    "vision": {"enc_dim": 1152, "enc_patch_size": 14, "enc_n_layers": 27, "enc_ff_dim": 4304, "enc_n_heads": 16,
               "proj_out_dim": 2048, "crop_size": 378, "in_channels": 3, "max_crops": 12, "overlap_margin": 4,
               "proj_inner_dim": 8192},
    "region": {"dim": 2048, "coord_feat_dim": 256, "coord_out_dim": 1024, "size_feat_dim": 512, "size_out_dim": 2048,
               "inner_dim": 8192},
    "tokenizer": {"bos_id": 50256, "eos_id": 50256, "templates": {
        "caption": {"short": [198, 198, 16438, 8305, 25], "normal": [198, 198, 24334, 1159, 25]},
        "query": {"prefix": [198, 198, 24361, 25], "suffix": [198, 198, 33706, 25]},
        "detect": {"prefix": [198, 198, 47504, 25], "suffix": [628]},
        "point": {"prefix": [198, 198, 12727, 25], "suffix": [628]},
    }},
}


def test_moondream_hub_config_is_the_dataclass_defaults(tmp_path):
    # HfConfig replaces the file's "config" with {}: even a non-empty one leaves the defaults in force.
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "moondream1", "architectures": ["HfMoondream"], "config": {"text": {"n_layers": 2}},
         "torch_dtype": "float16"}))
    assert _C.load_moondream_config(tmp_path / "config.json") == MOONDREAM2


def test_moondream_config_md2_form_overrides_field_by_field(tmp_path):
    (tmp_path / "config_md2.json").write_text(json.dumps(MOONDREAM2))
    assert _C.load_moondream_config(tmp_path / "config_md2.json") == MOONDREAM2
    small = {"text": {"n_layers": 2, "dim": 64, "n_heads": 4}, "vision": {"enc_n_layers": 1},
             "tokenizer": {"templates": {"caption": {"normal": [1, 2]}, "detect": None}}}
    (tmp_path / "small.json").write_text(json.dumps(small))
    got = _C.load_moondream_config(tmp_path / "small.json")
    assert got["text"] == {**MOONDREAM2["text"], "n_layers": 2, "dim": 64, "n_heads": 4}
    assert got["vision"] == {**MOONDREAM2["vision"], "enc_n_layers": 1}
    assert got["region"] == MOONDREAM2["region"]
    assert got["tokenizer"] == {"bos_id": 50256, "eos_id": 50256, "templates": {"caption": {"normal": [1, 2]}}}


@pytest.mark.parametrize(
    "content,field,why",
    [
        ({"model_type": "llama"}, "model_type", "moondream1"),
        ({"text": {"layers": 2}}, "text.layers", "not a field"),
        ({"txt": {}}, "txt", "not a field"),
        ({"text": {"dim": "2048"}}, "text.dim", "must be an integer"),
        ({"text": {"dim": 2048, "n_heads": 30}}, "text.dim", "multiple of n_heads"),
        ({"vision": {"crop_size": 380}}, "vision.crop_size", "multiple of enc_patch_size"),
        ({"vision": []}, "vision", "JSON object"),
        ({"tokenizer": {"templates": {"caption": {"short": "Caption:"}}}}, "tokenizer.templates.caption.short",
         "list of integers"),
    ],
)
def test_moondream_bad_configs_name_the_file_and_the_field(tmp_path, content, field, why):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(content))
    with pytest.raises(imagetotext.CheckpointError, match=f"{path}.*'{field}'.*{why}"):
        _C.load_moondream_config(path)
    with pytest.raises(imagetotext.CheckpointError, match="config.json"):
        _C.load_moondream_config(tmp_path / "absent" / "config.json")
