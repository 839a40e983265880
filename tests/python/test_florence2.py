"""Florence-2 in C++ against transformers' Florence2ForConditionalGeneration (the oracle) on tiny random
checkpoints the tests write themselves, in both layouts:

* native: written by transformers' save_pretrained;
* original (microsoft/Florence-2-* remote code): the same tensors under the original names, made with the
  inverse of the renaming in transformers' convert_florence2_original_pytorch_to_hf.py (spelled out here,
  independently of the C++ table), image_projection transposed, final_logits_bias of zeros, and an
  original-style config.json.

Sizes are tiny (DaViT and BART 64 wide, 2+2 layers, vocab 128, 96x96 images: stage maps
24/12/6/3 with window 5, so every stage pads its windows) so CI stays fast; the structure is the real one.
"""

from __future__ import annotations

import contextlib
import copy
import json
import types

import pytest
import torch

import imagetotext
from imagetotext import _C

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

# Widths are multiples of 64: bitsandbytes' CPU 4-bit kernels need in/out sizes divisible by the blocksize.
VISION = dict(depths=[1, 1, 1, 1], embed_dim=[64, 64, 64, 64], num_heads=[2, 2, 4, 4], num_groups=[2, 2, 4, 4],
              window_size=5, projection_dim=64, drop_path_rate=0.0)
TEXT = dict(vocab_size=128, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=64)
IMAGE_SIZE = 96
IMAGE_TOKEN = 127
IMAGE_TOKENS = 1 + 3 * 3
PROMPT = [0, 47, 21, 11, 46, 99, 16, 23, 11, 5, 27, 4, 2]  # "<s> ... </s>", as the processor makes it
RELATIVE_BOUND = 1e-4  # max |ours - transformers| / max |transformers|, fp32 on the CPU


def random_model(seed: int = 0, text=TEXT):
    config = transformers.Florence2Config(vision_config=VISION, text_config=text, image_token_id=IMAGE_TOKEN)
    torch.manual_seed(seed)
    model = transformers.Florence2ForConditionalGeneration(config).eval()
    with torch.no_grad():
        # Perturb every parameter (LayerNorms away from 1/0, positions away from their init) and make the
        # tied embedding wide enough that the next-token distribution is peaked, as a trained model's is.
        for name, parameter in model.named_parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
        model.model.language_model.shared.weight.normal_(0.0, 1.0)
    return model


# Native name -> original name: the inverse of transformers' convert_florence2_original_pytorch_to_hf.py.
VISION_NATIVE_TO_ORIGINAL = [
    (".spatial_block.conv1.", ".spatial_block.conv1.fn.dw."), (".spatial_block.conv2.", ".spatial_block.conv2.fn.dw."),
    (".channel_block.conv1.", ".channel_block.conv1.fn.dw."), (".channel_block.conv2.", ".channel_block.conv2.fn.dw."),
    (".spatial_block.norm1.", ".spatial_block.window_attn.norm."),
    (".channel_block.norm1.", ".channel_block.channel_attn.norm."),
    (".spatial_block.window_attn.qkv.", ".spatial_block.window_attn.fn.qkv."),
    (".spatial_block.window_attn.proj.", ".spatial_block.window_attn.fn.proj."),
    (".channel_block.channel_attn.qkv.", ".channel_block.channel_attn.fn.qkv."),
    (".channel_block.channel_attn.proj.", ".channel_block.channel_attn.fn.proj."),
    (".spatial_block.norm2.", ".spatial_block.ffn.norm."), (".channel_block.norm2.", ".channel_block.ffn.norm."),
    (".spatial_block.ffn.fc", ".spatial_block.ffn.fn.net.fc"), (".channel_block.ffn.fc", ".channel_block.ffn.fn.net.fc"),
]


def original_name(native: str) -> str:
    if native.startswith("model.language_model."):
        return "language_model.model." + native[len("model.language_model."):]
    if native == "lm_head.weight":
        return "language_model.lm_head.weight"
    if native == "model.multi_modal_projector.image_projection.weight":
        return "image_projection"
    for new, old in [("model.multi_modal_projector.image_proj_norm.", "image_proj_norm."),
                     ("model.multi_modal_projector.image_position_embed.", "image_pos_embed."),
                     ("model.multi_modal_projector.visual_temporal_embed.", "visual_temporal_embed.")]:
        if native.startswith(new):
            return old + native[len(new):]
    assert native.startswith("model.vision_tower."), native
    name = "vision_tower." + native[len("model.vision_tower."):]
    if name.startswith("vision_tower.convs."):
        return name.replace(".conv.", ".proj.")
    for new, old in VISION_NATIVE_TO_ORIGINAL:
        name = name.replace(new, old)
    return name


def original_config(native_config) -> dict:
    """config.json as microsoft/Florence-2-* writes it (remote-code Florence2Config)."""
    v, t = native_config.vision_config, native_config.text_config
    return {
        "model_type": "florence2", "architectures": ["Florence2ForConditionalGeneration"],
        "auto_map": {"AutoConfig": "configuration_florence2.Florence2Config"},
        "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "projection_dim": v.projection_dim,
        "vocab_size": t.vocab_size, "is_encoder_decoder": True,
        "text_config": {
            "vocab_size": t.vocab_size, "d_model": t.d_model, "encoder_layers": t.encoder_layers,
            "decoder_layers": t.decoder_layers, "encoder_attention_heads": t.encoder_attention_heads,
            "decoder_attention_heads": t.decoder_attention_heads, "encoder_ffn_dim": t.encoder_ffn_dim,
            "decoder_ffn_dim": t.decoder_ffn_dim, "max_position_embeddings": t.max_position_embeddings,
            "activation_function": "gelu", "scale_embedding": False, "bos_token_id": 0, "eos_token_id": 2,
            "pad_token_id": 1, "decoder_start_token_id": 2, "forced_bos_token_id": 0, "forced_eos_token_id": 2,
            "no_repeat_ngram_size": 3, "num_beams": 3, "early_stopping": True,
        },
        "vision_config": {
            "model_type": "davit", "drop_path_rate": 0.1, "patch_size": list(v.patch_size),
            "patch_stride": list(v.patch_stride), "patch_padding": list(v.patch_padding),
            "patch_prenorm": list(v.patch_prenorm), "dim_embed": list(v.embed_dim), "num_heads": list(v.num_heads),
            "num_groups": list(v.num_groups), "depths": list(v.depths), "window_size": v.window_size,
            "projection_dim": v.projection_dim,
            "visual_temporal_embedding": {"type": "COSINE", "max_temporal_embeddings": v.max_temporal_embeddings},
            "image_pos_embed": {"type": "learned_abs_2d", "max_pos_embeddings": v.max_position_embeddings},
            "image_feature_source": ["spatial_avg_pool", "temporal_avg_pool"],
        },
    }


def write_original(model, directory):
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied: stored once, as shared
        tensor = tensor.detach().clone()
        if name == "model.multi_modal_projector.image_projection.weight":
            tensor = tensor.t().contiguous()  # the remote code's Parameter [C, P]
        tensors[original_name(name)] = tensor
    tensors["language_model.final_logits_bias"] = torch.zeros(1, model.config.text_config.vocab_size)
    safetensors_torch.save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(original_config(model.config)))
    return directory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    model = random_model()
    root = tmp_path_factory.mktemp("florence2")
    model.save_pretrained(root / "native")
    write_original(model, root / "original")
    model.config._attn_implementation = "eager"
    return model, {"native": root / "native", "original": root / "original"}


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(7)
    pixel_values = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    input_ids = torch.tensor([[IMAGE_TOKEN] * IMAGE_TOKENS + PROMPT])
    return pixel_values, input_ids


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours.double() - reference.double()).abs().max() / reference.double().abs().max()).item()


# --------------------------------------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------------------------------------

def test_native_config_reads_as_transformers_reads_it(checkpoints):
    model, dirs = checkpoints
    ours = _C.load_florence2_config(dirs["native"] / "config.json")
    reference = transformers.AutoConfig.from_pretrained(dirs["native"])
    assert ours["layout"] == "native"
    assert ours["image_token_id"] == reference.image_token_id
    for key, value in ours["vision_config"].items():
        expected = getattr(reference.vision_config, key)
        assert value == (list(expected) if isinstance(expected, (list, tuple)) else expected), key
    for key, value in ours["text_config"].items():
        assert value == getattr(reference.text_config, key), key
    assert ours["image_tokens_768"] == 1 + 24 * 24


def test_original_config_reads_as_the_converter_maps_it(checkpoints):
    """The original config gives the values transformers' converter would put in a native config."""
    _, dirs = checkpoints
    ours = _C.load_florence2_config(dirs["original"] / "config.json")
    native = _C.load_florence2_config(dirs["native"] / "config.json")
    assert ours["layout"] == "original"
    assert ours["vision_config"] == native["vision_config"]
    assert ours["text_config"] == native["text_config"]
    # The generation fields of the original text_config (the service's beam search).
    assert ours["generation"] == {"num_beams": 3, "no_repeat_ngram_size": 3, "forced_bos_token_id": 0,
                                  "forced_eos_token_id": 2, "early_stopping": True}


def test_bare_configs_take_the_defaults_of_their_classes(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "florence2", "vision_config": {"projection_dim": 1024}}))
    ours = _C.load_florence2_config(tmp_path / "config.json")
    reference = transformers.Florence2Config(vision_config={"projection_dim": 1024})
    assert ours["vision_config"]["embed_dim"] == list(reference.vision_config.embed_dim)
    assert ours["text_config"]["vocab_size"] == reference.text_config.vocab_size
    assert ours["text_config"]["max_position_embeddings"] == reference.text_config.max_position_embeddings
    # The remote code's defaults are Florence-2-large's, its vocabulary 51289.
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "florence2", "vision_config": {"model_type": "davit"}}))
    original = _C.load_florence2_config(tmp_path / "config.json")
    assert original["vision_config"]["embed_dim"] == [256, 512, 1024, 2048]
    assert original["text_config"]["vocab_size"] == 51289


@pytest.mark.parametrize("mutate,field,why", [
    (lambda c: c.update(model_type="bart"), "model_type", "not a Florence-2 model"),
    (lambda c: c["vision_config"].update(depths=[1, 1]), "vision_config.depths", "entries"),
    (lambda c: c["vision_config"].update(num_heads=[3, 4, 4, 8]), "vision_config.num_heads", "must divide"),
    (lambda c: c["vision_config"].update(patch_prenorm=[0, 1, 1, 1]), "vision_config.patch_prenorm", "true/false"),
    (lambda c: c["vision_config"].update(projection_dim=48), "vision_config.projection_dim", "d_model"),
    (lambda c: c["text_config"].update(d_model="32"), "text_config.d_model", "must be an integer"),
    (lambda c: c["text_config"].update(model_type="t5"), "text_config.model_type", "'bart'"),
])
def test_bad_config_fields_name_the_file_and_the_field(checkpoints, tmp_path, mutate, field, why):
    _, dirs = checkpoints
    config = json.loads((dirs["native"] / "config.json").read_text())
    mutate(config)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(imagetotext.CheckpointError) as caught:
        _C.load_florence2_config(path)
    assert str(path) in str(caught.value) and f"'{field}'" in str(caught.value) and why in str(caught.value)


# --------------------------------------------------------------------------------------------------------
# The network, stage by stage
# --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_outputs(checkpoints, inputs):
    model, _ = checkpoints
    pixel_values, input_ids = inputs
    decoder_ids = torch.tensor([[2, 0, 17, 42, 9, 88, 3]])
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values).pooler_output
        out = model(input_ids=input_ids, pixel_values=pixel_values, decoder_input_ids=decoder_ids)
    return features, out.encoder_last_hidden_state, out.logits, decoder_ids


@pytest.fixture(scope="module", params=["native", "original"])
def ours(request, checkpoints):
    _, dirs = checkpoints
    return _C.Florence2Model.load(dirs[request.param])


def test_image_features_match_transformers(ours, inputs, reference_outputs):
    features = ours.image_features(inputs[0])
    assert features.shape == reference_outputs[0].shape == (1, IMAGE_TOKENS, TEXT["d_model"])
    assert relative_error(features, reference_outputs[0]) < RELATIVE_BOUND


def test_image_features_of_a_full_size_image_match_transformers(checkpoints):
    """At the service's 768 x 768 the first stage holds 36864 tokens: there the blocks run in pieces (the MLP in
    token chunks, the window attention in bands of window rows, the last band padded: 192 rows are not whole
    windows of 5), which must give what the whole stage gives."""
    model, dirs = checkpoints
    pixel_values = torch.randn(1, 3, 768, 768, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected = model.model.get_image_features(pixel_values).pooler_output
    features = _C.Florence2Model.load(dirs["native"]).image_features(pixel_values)
    assert features.shape == expected.shape == (1, 1 + 24 * 24, TEXT["d_model"])
    assert relative_error(features, expected) < RELATIVE_BOUND


def test_encoder_output_and_logits_match_transformers(ours, inputs, reference_outputs):
    _, encoder_output, logits, decoder_ids = reference_outputs
    prompt = inputs[1][:, IMAGE_TOKENS:]  # the original layout's ids: no image placeholders
    encoded = ours.encode(inputs[0], prompt)
    assert relative_error(encoded, encoder_output) < RELATIVE_BOUND
    assert relative_error(ours.decoder_logits(encoded, decoder_ids), logits) < RELATIVE_BOUND


def test_both_layouts_load_the_same_model(checkpoints, inputs):
    _, dirs = checkpoints
    native, original = (_C.Florence2Model.load(dirs[k]) for k in ("native", "original"))
    prompt = inputs[1][:, IMAGE_TOKENS:]
    encoded = native.encode(inputs[0], prompt)
    torch.testing.assert_close(original.encode(inputs[0], prompt), encoded, rtol=0, atol=0)
    ids = torch.tensor([[2, 0, 5, 6]])
    torch.testing.assert_close(original.decoder_logits(encoded, ids), native.decoder_logits(encoded, ids), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------------

_generated = {}


def transformers_generate(model, inputs, **settings):
    """generate() with exactly `settings`: the model's own generation_config (forced EOS 2 from BartConfig)
    would otherwise fill in whatever is left unset. Remembered per model, inputs and settings (the tests ask for
    the same generation under both layouts and both decoding modes)."""
    key = (id(model), id(inputs[0]), tuple(inputs[1][0].tolist()), repr(sorted(settings.items())))
    if key not in _generated:
        _generated[key] = _transformers_generate(model, inputs, **settings)
    return _generated[key]


def _generate_with(model, pixel_values, input_ids, settings):
    """transformers' generate() with exactly `settings` (end token 2 unless they name one), the model's own
    generation config put back after."""
    config = transformers.GenerationConfig(decoder_start_token_id=2, bos_token_id=0, pad_token_id=1,
                                           do_sample=False, return_dict_in_generate=True, output_scores=True,
                                           **{"eos_token_id": 2, **settings})
    saved = model.generation_config
    model.generation_config = config
    try:
        with torch.no_grad():
            return model.generate(input_ids=input_ids, pixel_values=pixel_values)
    finally:
        model.generation_config = saved


def _transformers_generate(model, inputs, **settings):
    pixel_values, input_ids = inputs
    out = _generate_with(model, pixel_values, input_ids, settings)
    score = out.sequences_scores[0].item() if getattr(out, "sequences_scores", None) is not None else 0.0
    return out.sequences[0].tolist(), score


GREEDY = dict(num_beams=1, max_new_tokens=32, no_repeat_ngram_size=0, forced_bos_token_id=None, forced_eos_token_id=None)
SERVICE = dict(num_beams=3, max_new_tokens=20, no_repeat_ngram_size=3, forced_bos_token_id=0, forced_eos_token_id=2,
               early_stopping=True, length_penalty=1.0)


@pytest.mark.parametrize("settings", [
    GREEDY,
    dict(GREEDY, no_repeat_ngram_size=3, forced_bos_token_id=0, forced_eos_token_id=2),
    SERVICE,
    dict(SERVICE, early_stopping=False),
    dict(SERVICE, num_beams=4, early_stopping="never", length_penalty=0.8, max_new_tokens=12),
    dict(SERVICE, num_beams=2, no_repeat_ngram_size=2, length_penalty=2.0, max_new_tokens=16),
    # This model's favourite token as EOS: hypotheses finish early and the stopping rules decide.
    dict(SERVICE, eos_token_id=16),
    dict(SERVICE, eos_token_id=16, early_stopping=False),
    dict(SERVICE, eos_token_id=16, early_stopping="never", length_penalty=0.5),
    dict(GREEDY, eos_token_id=16, forced_bos_token_id=0, no_repeat_ngram_size=3),
    # max_length decides: no EOS at all, or one or two new tokens (forced BOS and forced EOS at once).
    dict(SERVICE, eos_token_id=None, forced_eos_token_id=None, max_new_tokens=9),
    dict(GREEDY, eos_token_id=None, max_new_tokens=7),
    dict(SERVICE, max_new_tokens=1),
    dict(SERVICE, max_new_tokens=2),
    dict(GREEDY, no_repeat_ngram_size=3, forced_bos_token_id=0, forced_eos_token_id=2, max_new_tokens=2),
    # EOS at the first step (the forced BOS is an end token), and two end tokens (more beams kept per step).
    dict(SERVICE, eos_token_id=0),
    dict(SERVICE, eos_token_id=[16, 2], no_repeat_ngram_size=1),
], ids=["greedy", "greedy-processors", "service", "heuristic-stop", "never-stop", "two-beams", "eos-enough",
        "eos-heuristic", "eos-never", "greedy-eos", "no-eos", "greedy-no-eos", "one-token", "two-tokens",
        "greedy-two-tokens", "eos-first", "two-eos-unigrams"])
@pytest.mark.parametrize("decoding", ["eager", "graph"])
def test_generation_matches_transformers(checkpoints, ours, inputs, settings, decoding):
    """Both ways of running the device-resident search: eager (caches sized per request, the done flag read every
    step) and graph (the fixed-shape steps a CUDA graph records, run without one on the CPU, the done flag read
    every 4 steps, so up to 3 steps run past the end and must not change the result)."""
    model, _ = checkpoints
    expected, expected_score = transformers_generate(model, inputs, **settings)
    encoded = ours.encode(inputs[0], inputs[1][:, IMAGE_TOKENS:])
    tokens, score = ours.generate(encoded, **our_settings(settings), decoding=decoding)
    assert tokens == expected
    if settings["num_beams"] > 1:
        assert score == pytest.approx(expected_score, abs=1e-4)
    if settings is GREEDY:
        assert len(tokens) == 1 + 32  # 32 greedy steps compared (no EOS before the limit on this model)


def our_settings(settings):
    """transformers' generate() settings as Florence2Model.generate takes them."""
    kwargs = dict(settings)
    kwargs.setdefault("early_stopping", False)
    eos = kwargs.pop("eos_token_id", 2)
    kwargs["eos_token_ids"] = [] if eos is None else eos if isinstance(eos, list) else [eos]
    return kwargs


@pytest.mark.parametrize("settings", [dict(SERVICE, max_new_tokens=24),
                                      dict(GREEDY, no_repeat_ngram_size=1, max_new_tokens=24)], ids=["service", "greedy"])
@pytest.mark.parametrize("decoding", ["eager", "graph"])
def test_late_eos_matches_transformers(checkpoints, ours, inputs, settings, decoding):
    """An end token first reached late: the one the free-running search (no EOS) writes at step 12, unseen before."""
    model, _ = checkpoints
    free, _ = transformers_generate(model, inputs, **dict(settings, eos_token_id=None, forced_eos_token_id=None))
    late = next(t for i, t in enumerate(free) if i >= 12 and t not in free[:i])
    expected, expected_score = transformers_generate(model, inputs, **dict(settings, eos_token_id=late))
    if settings["num_beams"] == 1:
        assert len(expected) > 12  # (beams may meet the token earlier on another path)
    encoded = ours.encode(inputs[0], inputs[1][:, IMAGE_TOKENS:])
    tokens, score = ours.generate(encoded, **our_settings(dict(settings, eos_token_id=late)), decoding=decoding)
    assert tokens == expected
    assert score == pytest.approx(expected_score, abs=1e-4)


def test_fixed_shape_state_serves_requests_of_other_lengths(checkpoints, inputs):
    """One model, alternating requests: prompts shorter and longer than the one the fixed-shape state was set up
    for (the encoder side refilled and masked in place), then other settings (a new state), each as transformers."""
    model, dirs = checkpoints
    ours = _C.Florence2Model.load(dirs["native"])
    prompts = [PROMPT, PROMPT[:4] + [2], PROMPT + PROMPT[1:-1] * 2 + [2], PROMPT]
    for prompt, settings in zip(prompts + prompts[:2], [SERVICE] * 4 + [dict(SERVICE, num_beams=2), GREEDY]):
        pixel_values = inputs[0]
        input_ids = torch.tensor([[IMAGE_TOKEN] * IMAGE_TOKENS + prompt])
        expected, expected_score = transformers_generate(model, (pixel_values, input_ids), **settings)
        tokens, score = ours.generate(ours.encode(pixel_values, torch.tensor([prompt])), **our_settings(settings),
                                      decoding="graph")
        assert tokens == expected, (len(prompt), settings)
        assert score == pytest.approx(expected_score, abs=1e-4)


def test_service_settings_are_the_original_configs(checkpoints, ours, inputs):
    """generate_as_service = the remote code's text_config generation fields + the service's num_beams=3."""
    model, _ = checkpoints
    expected, expected_score = transformers_generate(model, inputs, **dict(SERVICE, max_new_tokens=30))
    encoded = ours.encode(inputs[0], inputs[1][:, IMAGE_TOKENS:])
    for decoding in ["eager", "graph"]:
        tokens, score = ours.generate_as_service(encoded, max_new_tokens=30, decoding=decoding)
        assert tokens == expected and score == pytest.approx(expected_score, abs=1e-4), decoding


# --------------------------------------------------------------------------------------------------------
# Batched generation: several images per search
# --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def batch_inputs():
    """Three different images (other noise, one of them shifted and damped: different content) with one prompt."""
    generator = torch.Generator().manual_seed(11)
    pixel_values = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    pixel_values[1] = pixel_values[1] * 0.3 + 1.0
    input_ids = torch.tensor([[IMAGE_TOKEN] * IMAGE_TOKENS + PROMPT] * 3)
    # Each image alone, as inputs transformers_generate takes (kept here: it remembers results by the tensors' ids).
    alone = [(pixel_values[i:i + 1], input_ids[:1]) for i in range(3)]
    return pixel_values, input_ids, alone


_generated_batches = {}


def transformers_generate_batch(model, pixel_values, input_ids, **settings):
    """Batched generate() with exactly `settings` (as transformers_generate): a (row, score) per image, each row
    padded (pad_token_id 1) to the batch's longest."""
    key = (id(model), hash(pixel_values.numpy().tobytes()), input_ids.shape[0], repr(sorted(settings.items())))
    if key not in _generated_batches:
        out = _generate_with(model, pixel_values, input_ids, settings)
        scores = out.sequences_scores.tolist() if getattr(out, "sequences_scores", None) is not None else None
        _generated_batches[key] = [(row, scores[i] if scores else 0.0) for i, row in enumerate(out.sequences.tolist())]
    return _generated_batches[key]


def assert_rows_match(ours, expected, beams):
    """Each of our rows is transformers' batched row without the padding after it, with its score."""
    assert len(ours) == len(expected)
    for i, ((tokens, score), (row, expected_score)) in enumerate(zip(ours, expected)):
        assert tokens == row[:len(tokens)], i
        assert all(token == 1 for token in row[len(tokens):]), (i, row[len(tokens):])  # padding only
        if beams > 1:
            assert score == pytest.approx(expected_score, abs=1e-4), i


def end_token_at_different_steps(model, pixel_values, input_ids, settings):
    """A token the free-running search (no EOS) of the three images first writes at the most different steps:
    as the end token, the rows finish at different steps."""
    free = transformers_generate_batch(model, pixel_values, input_ids,
                                       **dict(settings, eos_token_id=None, forced_eos_token_id=None))

    def first_steps(token):
        return {row.index(token, 2) if token in row[2:] else None for row, _ in free}

    return max(range(3, TEXT["vocab_size"]), key=lambda token: (len(first_steps(token)), -token))


@pytest.mark.parametrize("settings", [
    GREEDY,
    dict(GREEDY, no_repeat_ngram_size=3, forced_bos_token_id=0, forced_eos_token_id=2),
    SERVICE,
    dict(SERVICE, early_stopping=False),
    dict(SERVICE, num_beams=4, early_stopping="never", length_penalty=0.8, max_new_tokens=12),
    dict(SERVICE, max_new_tokens=2),
], ids=["greedy", "greedy-processors", "service", "heuristic-stop", "never-stop", "two-tokens"])
@pytest.mark.parametrize("decoding", ["eager", "graph"])
def test_batched_generation_matches_transformers_batched(checkpoints, ours, batch_inputs, settings, decoding):
    """Three images in one search (3 x num_beams sequences): each row is transformers' batched generate()'s row,
    tokens and sequence score."""
    model, _ = checkpoints
    pixel_values, input_ids, _ = batch_inputs
    expected = transformers_generate_batch(model, pixel_values, input_ids, **settings)
    encoded = ours.encode(pixel_values, input_ids[:, IMAGE_TOKENS:])
    assert encoded.shape[0] == 3
    assert_rows_match(ours.generate_batch(encoded, **our_settings(settings), decoding=decoding), expected,
                      settings["num_beams"])
    if settings["max_new_tokens"] > 2:  # (two tokens: the forced BOS and EOS)
        assert len({tuple(row) for row, _ in expected}) > 1  # not one caption thrice


@pytest.mark.parametrize("base", [GREEDY, SERVICE, dict(SERVICE, early_stopping=False),
                                  dict(SERVICE, early_stopping="never", length_penalty=0.5)],
                         ids=["greedy", "service", "heuristic-stop", "never-stop"])
@pytest.mark.parametrize("decoding", ["eager", "graph"])
def test_rows_finishing_early_leave_the_others_alone(checkpoints, ours, batch_inputs, base, decoding):
    """An end token the rows reach at different steps: a row that is done stops changing while the others go on.
    Each row equals transformers' batched row and also transformers' generate() of its image alone."""
    model, _ = checkpoints
    pixel_values, input_ids, images = batch_inputs
    settings = dict(base, eos_token_id=end_token_at_different_steps(model, pixel_values, input_ids, base))
    expected = transformers_generate_batch(model, pixel_values, input_ids, **settings)
    alone = [transformers_generate(model, image, **settings) for image in images]
    assert len({len(tokens) for tokens, _ in alone}) > 1, alone  # the rows do finish at different steps
    encoded = ours.encode(pixel_values, input_ids[:, IMAGE_TOKENS:])
    rows = ours.generate_batch(encoded, **our_settings(settings), decoding=decoding)
    assert_rows_match(rows, expected, settings["num_beams"])
    for (tokens, score), (single, single_score) in zip(rows, alone):
        assert tokens == single
        if settings["num_beams"] > 1:
            assert score == pytest.approx(single_score, abs=1e-4)


@pytest.mark.parametrize("settings", [GREEDY, SERVICE], ids=["greedy", "service"])
@pytest.mark.parametrize("decoding", ["eager", "graph"])
def test_batch_of_one_is_the_single_image_path(ours, batch_inputs, settings, decoding):
    pixel_values, input_ids, _ = batch_inputs
    encoded = ours.encode(pixel_values[1:2], input_ids[:1, IMAGE_TOKENS:])
    (tokens, score), = ours.generate_batch(encoded, **our_settings(settings), decoding=decoding)
    assert (tokens, score) == ours.generate(encoded, **our_settings(settings), decoding=decoding)


def test_graph_decoding_is_recorded_per_batch_size(checkpoints, batch_inputs):
    """One model, batches of 3, 1, 2, 3 and 1 in turn through the fixed-shape steps: a recording per batch size
    (the batch of one keeps its own), each batch as transformers' batched generate()."""
    model, dirs = checkpoints
    ours = _C.Florence2Model.load(dirs["native"])
    pixel_values, input_ids, _ = batch_inputs
    for rows in [[0, 1, 2], [2], [2, 0], [0, 1, 2], [1]]:
        pixels = pixel_values[rows]
        expected = transformers_generate_batch(model, pixels, input_ids[:len(rows)], **SERVICE)
        encoded = ours.encode(pixels, input_ids[:len(rows), IMAGE_TOKENS:])
        assert_rows_match(ours.generate_batch(encoded, **our_settings(SERVICE), decoding="graph"), expected, 3)


def test_bad_batch_inputs_are_value_errors(ours, batch_inputs):
    pixel_values, input_ids, _ = batch_inputs
    with pytest.raises(imagetotext.InvalidArgumentError, match="encoder outputs"):
        ours.generate_batch(torch.zeros(3, TEXT["d_model"]), max_new_tokens=4)
    with pytest.raises(imagetotext.InvalidArgumentError, match="encoder outputs"):
        ours.generate_batch(torch.zeros(0, 5, TEXT["d_model"]), max_new_tokens=4)
    with pytest.raises(imagetotext.InvalidArgumentError, match="prompt ids"):
        ours.encode(pixel_values, input_ids[:2, IMAGE_TOKENS:])
    with pytest.raises(imagetotext.InvalidArgumentError, match="one image at a time"):
        ours.generate(ours.encode(pixel_values, input_ids[:, IMAGE_TOKENS:]), max_new_tokens=4)


@pytest.fixture(scope="module")
def long_positions_checkpoint(tmp_path_factory):
    """The tiny model with a position table of 320: room for encoder outputs and captions past the first
    recording's capacities (64 encoder positions, 256 decoder positions)."""
    model = random_model(seed=1, text=dict(TEXT, max_position_embeddings=320))
    directory = tmp_path_factory.mktemp("florence2-long")
    model.save_pretrained(directory)
    return directory


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_graph_decoding_matches_eager(long_positions_checkpoint, inputs, dtype):
    """On CUDA, decoding="auto" replays the decoder step and the search step as one CUDA graph: the eager steps'
    sequence and score. Requests in turn reuse the recording (a shorter prompt, a shorter caption) or record
    again (an encoder output past its capacity, a caption past its capacity, other settings)."""
    ours = _C.Florence2Model.load(long_positions_checkpoint, device="cuda", dtype=dtype)
    pixel_values = inputs[0].cuda()
    long_prompt = PROMPT[:-1] + PROMPT[1:-1] * 6 + [2]  # 10 image + 79 prompt tokens: past 64 encoder positions
    requests = [
        (PROMPT, SERVICE),                                  # records
        (PROMPT[:4] + [2], SERVICE),                        # reuses: a shorter encoder output, masked
        (long_prompt, SERVICE),                             # records: 89 encoder positions
        (PROMPT, dict(SERVICE, max_new_tokens=300, eos_token_id=None, forced_eos_token_id=None)),  # records: 301
        (PROMPT, dict(SERVICE, max_new_tokens=5)),          # reuses
        (PROMPT, GREEDY),                                   # records: other settings
        (PROMPT, dict(SERVICE, eos_token_id=16, early_stopping="never", length_penalty=0.5)),
    ]
    for prompt, settings in requests:
        encoded = ours.encode(pixel_values, torch.tensor([prompt]))
        eager, eager_score = ours.generate(encoded, **our_settings(settings), decoding="eager")
        graph, graph_score = ours.generate(encoded, **our_settings(settings))
        if dtype == "float32" and settings["max_new_tokens"] <= 32:
            assert graph == eager, (len(prompt), settings)
            assert graph_score == pytest.approx(eager_score, rel=1e-5, abs=1e-5)
        else:
            # The recorded step's cross-attention is the split decode-attention kernel, the eager step's SDPA: they
            # round differently, and with random tiny weights many logits are near-tied, so the two searches may
            # take different paths (H100 runs: bf16, one ended at its 6th token, the other went on; float32, the
            # 300-token captions parted at token 275). Each must be what its scores say: a beam caption's reported
            # score is its teacher-forced rescoring within the rounding of bf16 logits (loose for float32), a greedy
            # caption picks the best token or a near tie of it at every step.
            assert graph[:1] == eager[:1], (len(prompt), settings)
            for tokens, score in [(graph, graph_score), (eager, eager_score)]:
                if settings["num_beams"] > 1:
                    own, rounding = rescored(ours, encoded, tokens, settings)
                    assert abs(score - own) <= rounding, (len(prompt), settings, score, own, rounding)
                else:
                    assert_greedy_up_to_near_ties(ours, encoded, tokens, (len(prompt), settings))


def teacher_forced_log_probs(model, encoded, tokens):
    """log p(tokens[t] | tokens[:t]) for t >= 1, from one teacher-forced pass (float32 logits)."""
    logits = model.decoder_logits(encoded, torch.tensor([tokens[:-1]], device=encoded.device))[0].float().cpu()
    return logits, logits.log_softmax(-1)[torch.arange(len(tokens) - 1), torch.tensor(tokens[1:])]


def rescored(model, encoded, tokens, settings):
    """A finished beam's score recomputed from a teacher-forced pass: the sum of its tokens' log-probabilities over
    (len(tokens) - 1) ** length_penalty, where a step forced by forced_bos (the first) or forced_eos (the last at
    max_new_tokens) counts 0, as its processor leaves the forced token (transformers' beam scoring). Also returns
    the rounding of bf16 logits in those terms: a log-probability moves by up to twice its logits' error, and a
    bf16 logit carries up to 2^-8 of the largest logit's magnitude per rounding; two roundings a step apart."""
    length = (len(tokens) - 1) ** settings.get("length_penalty", 1.0)
    logits, log_probs = teacher_forced_log_probs(model, encoded, tokens)
    forced = torch.zeros(len(tokens) - 1, dtype=torch.bool)
    forced[0] = settings.get("forced_bos_token_id") is not None
    forced[-1] |= settings.get("forced_eos_token_id") is not None and len(tokens) - 1 == settings["max_new_tokens"]
    counted = ~forced
    rounding = 2 * 2 * 2.0 ** -8 * logits.abs().amax(-1)
    return float(log_probs[counted].sum()) / length, float(rounding[counted].sum()) / length


def assert_greedy_up_to_near_ties(model, encoded, tokens, label):
    """Each greedy token is the best of the teacher-forced logits or within 5e-2 of their magnitude of it (bf16:
    2^-8 per rounding, a few dozen roundings a step, as agree_up_to_a_near_tie in test_smolvlm)."""
    logits, _ = teacher_forced_log_probs(model, encoded, tokens)
    for step, token in enumerate(tokens[1:]):
        row = logits[step]
        assert float(row.max() - row[token]) <= 5e-2 * float(row.abs().max()), (label, step)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("decoding", ["eager", "auto"])
def test_cuda_batch_matches_its_images_alone(long_positions_checkpoint, batch_inputs, dtype, decoding, monkeypatch):
    """On CUDA (auto: the CUDA graph recorded for the batch), a batch of three images against each image alone,
    with the service's settings and an end token the rows reach at different steps. float32: the same tokens,
    scores within 1e-3 of their size, with TF32 off (torch's default runs convolutions in TF32, and cuDNN picks
    another algorithm for 3 images than for 1: their scores 1.2e-4 apart on the H100 with the tower's maps NCHW,
    1.06e-3 with them channels-last; the rows' independence is the subject here, not TF32). bf16: the
    batch's GEMMs have M = 9 rows instead of 3 and round differently, and with random tiny weights many logits
    are near-tied, so the two searches may take different beams (H100 runs: final scores 2.7 %, 6 % and 11 %
    apart), and their scores are not comparable. What must hold is that rows do not interact: each caption the
    batch returns, scored by one teacher-forced pass over its image alone, gets the score the batch reports
    within the rounding of bf16 logits, and nearer than over another image of the batch; a greedy row picks at
    each step the best token of its image's logits or a near tie of it; and the batch gives the same result every
    time it runs."""
    if dtype == "float32":
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    ours = _C.Florence2Model.load(long_positions_checkpoint, device="cuda", dtype=dtype)
    pixel_values, input_ids, _ = batch_inputs
    prompt = input_ids[:, IMAGE_TOKENS:].cuda()
    for settings in [SERVICE, dict(SERVICE, eos_token_id=16, max_new_tokens=40), dict(GREEDY, eos_token_id=16)]:
        rows = ours.generate_batch(ours.encode(pixel_values.cuda(), prompt), **our_settings(settings),
                                   decoding=decoding)
        for i, (tokens, score) in enumerate(rows):
            single, single_score = ours.generate(ours.encode(pixel_values[i:i + 1].cuda(), prompt[:1]),
                                                 **our_settings(settings), decoding=decoding)
            if dtype == "float32":
                assert tokens == single, (i, settings)
                assert score == pytest.approx(single_score, rel=1e-3, abs=1e-4)
            else:
                alone = ours.encode(pixel_values[i:i + 1].cuda(), prompt[:1])
                assert tokens[:1] == single[:1], (i, settings)
                if settings["num_beams"] > 1:
                    own, rounding = rescored(ours, alone, tokens, settings)
                    assert abs(score - own) <= rounding, (i, settings, score, own, rounding)
                    for other in {0, 1, 2} - {i}:  # and the caption scores like its own image, not another
                        elsewhere, _ = rescored(ours, ours.encode(pixel_values[other:other + 1].cuda(), prompt[:1]),
                                                tokens, settings)
                        assert abs(score - own) < abs(score - elsewhere), (i, other, settings)
                else:
                    assert_greedy_up_to_near_ties(ours, alone, tokens, (i, settings))
        if dtype == "bfloat16":
            again = ours.generate_batch(ours.encode(pixel_values.cuda(), prompt), **our_settings(settings),
                                        decoding=decoding)
            assert again == rows, settings


@pytest.mark.gpu
def test_cuda_recordings_share_one_stream(long_positions_checkpoint, batch_inputs):
    """Every recording of a decode step runs on one side stream per device. cuBLAS keeps a workspace for each
    stream it ran on (32 MiB on Hopper) for the process's life, and a batch of three images with three beams runs
    its lm_head (9 rows, more than the GEMVs take) on cuBLAS: recordings on fresh streams pinned one more workspace
    each. Six more recordings (the settings alternate, so each records again) leave the memory allocated where
    the first two left it."""
    ours = _C.Florence2Model.load(long_positions_checkpoint, device="cuda", dtype="bfloat16")
    pixel_values, input_ids, _ = batch_inputs
    encoded = ours.encode(pixel_values.cuda(), input_ids[:, IMAGE_TOKENS:].cuda())
    settings = [our_settings(dict(SERVICE, max_new_tokens=5, length_penalty=penalty)) for penalty in (1.0, 2.0)]

    def record(kwargs):
        ours.generate_batch(encoded, **kwargs, decoding="auto")
        torch.cuda.synchronize()

    record(settings[0])
    record(settings[1])
    after_two = torch.cuda.memory_allocated()
    for i in range(6):
        record(settings[i % 2])
    assert torch.cuda.memory_allocated() - after_two < 8 * 2**20


# --------------------------------------------------------------------------------------------------------
# Names, prompts, bad inputs
# --------------------------------------------------------------------------------------------------------

def test_every_original_name_maps_back_to_its_native_name(checkpoints):
    model, _ = checkpoints
    for name in model.state_dict():
        assert _C.florence2_native_name(original_name(name)) == name
    assert _C.florence2_native_name("vision_tower.head.weight") is None
    assert _C.florence2_native_name("vision_tower.norms.bias") is None


@pytest.mark.parametrize("task,prompt", [
    ("<CAPTION>", "What does the image describe?"),
    ("<DETAILED_CAPTION>", "Describe in detail what is shown in the image."),
    ("<MORE_DETAILED_CAPTION>", "Describe with a paragraph what is shown in the image."),
    ("<OPEN_VOCABULARY_DETECTION>wheels", "Locate wheels in the image."),
    ("a free text prompt", "a free text prompt"),
])
def test_task_prompts_are_the_processors(task, prompt):
    # Florence2Processor's own tables (set first thing in its __init__; the rest of __init__ needs real
    # components and is cut short).
    tables = types.SimpleNamespace()
    with contextlib.suppress(Exception):
        transformers.Florence2Processor.__init__(tables, image_processor=None, tokenizer=None)
    assert transformers.Florence2Processor._construct_prompts(tables, task) == [prompt]
    assert _C.florence2_task_prompt(task) == prompt


def test_task_with_unexpected_input_is_refused():
    with pytest.raises(imagetotext.InvalidArgumentError, match="takes no input"):
        _C.florence2_task_prompt("<CAPTION> of a dog")


def test_missing_tensor_names_the_checkpoint_and_the_tensor(checkpoints, tmp_path):
    _, dirs = checkpoints
    tensors = safetensors_torch.load_file(str(dirs["native"] / "model.safetensors"))
    del tensors["model.language_model.decoder.layers.1.fc2.weight"]
    safetensors_torch.save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((dirs["native"] / "config.json").read_text())
    with pytest.raises(imagetotext.CheckpointError, match="model.language_model.decoder.layers.1.fc2.weight"):
        _C.Florence2Model.load(tmp_path)


def test_wrong_shape_names_the_tensor(checkpoints, tmp_path):
    _, dirs = checkpoints
    config = json.loads((dirs["native"] / "config.json").read_text())
    config["vision_config"]["window_size"] = 7  # harmless
    config["text_config"]["encoder_ffn_dim"] = 96
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(dirs["native"] / "model.safetensors")
    with pytest.raises(imagetotext.CheckpointError, match="encoder.layers.0.fc1"):
        _C.Florence2Model.load(tmp_path)


def test_layout_mismatch_is_named(checkpoints, tmp_path):
    _, dirs = checkpoints
    (tmp_path / "config.json").write_text((dirs["original"] / "config.json").read_text())
    (tmp_path / "model.safetensors").symlink_to(dirs["native"] / "model.safetensors")
    with pytest.raises(imagetotext.CheckpointError, match="original .* layout but the tensors are native"):
        _C.Florence2Model.load(tmp_path)


def test_bad_model_inputs_are_value_errors(checkpoints):
    _, dirs = checkpoints
    model = _C.Florence2Model.load(dirs["native"])
    with pytest.raises(imagetotext.InvalidArgumentError, match="pixel_values"):
        model.image_features(torch.zeros(3, IMAGE_SIZE, IMAGE_SIZE))
    with pytest.raises(imagetotext.InvalidArgumentError, match="prompt ids"):
        model.encode(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE), torch.tensor([[0, 500, 2]]))
    with pytest.raises(imagetotext.InvalidArgumentError, match="encoder input"):
        model.encode(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE), torch.zeros(1, 60, dtype=torch.long))
    encoded = model.encode(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE), torch.tensor([PROMPT]))
    with pytest.raises(imagetotext.InvalidArgumentError, match="num_beams"):
        model.generate(encoded, max_new_tokens=4, num_beams=0)


# --------------------------------------------------------------------------------------------------------
# NF4 (bitsandbytes' format, double quantization)
# --------------------------------------------------------------------------------------------------------

def bitsandbytes_nf4(model):
    """transformers' load_in_4bit (nf4, double quantization): every nn.Linear but the tied lm_head quantized by
    bitsandbytes' Params4bit. Returns the checkpoint bitsandbytes' Linear4bit layers save (pre-quantized layout)
    and the model with those weights dequantized exactly (bitsandbytes' dequantize_4bit), in float32. (Built by
    hand: transformers' bitsandbytes loader needs `accelerate`; and bitsandbytes' own CPU forward is not exact
    float32, ~3e-3 relative per layer, so the exact dequantized weights are the oracle.)"""
    bnb = pytest.importorskip("bitsandbytes")
    functional = pytest.importorskip("bitsandbytes.functional")
    dequantized = copy.deepcopy(model)
    tied = ("lm_head.weight", "model.language_model.encoder.embed_tokens.weight",
            "model.language_model.decoder.embed_tokens.weight")  # stored once, as shared
    checkpoint = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k not in tied}
    for name, module in dequantized.named_modules():
        if not isinstance(module, torch.nn.Linear) or name == "lm_head":
            continue
        layer = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=False, compute_dtype=torch.float32,
                                  compress_statistics=True, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(module.weight.detach().clone(), requires_grad=False, quant_type="nf4",
                                         compress_statistics=True, blocksize=64)
        state = layer.to("cpu").state_dict()
        del checkpoint[f"{name}.weight"]
        checkpoint.update({f"{name}.{k}": v.contiguous() for k, v in state.items()})
        quant_state = functional.QuantState.from_dict(
            {k[len("weight."):]: v for k, v in state.items() if k.startswith("weight.")}, device="cpu")
        with torch.no_grad():
            module.weight.copy_(functional.dequantize_4bit(state["weight"], quant_state))
    return checkpoint, dequantized.eval()


def test_nf4_everywhere_matches_bitsandbytes(checkpoints, inputs, reference_outputs, tmp_path):
    """bitsandbytes' NF4 weights of every Linear but lm_head (what transformers' load_in_4bit makes), saved in
    bitsandbytes' pre-quantized layout and loaded by us: the logits of the same network in exact float32."""
    model, dirs = checkpoints
    checkpoint, reference = bitsandbytes_nf4(model)
    assert "model.language_model.encoder.layers.0.fc1.weight.quant_state.bitsandbytes__nf4" in checkpoint
    assert "model.vision_tower.blocks.0.0.spatial_block.window_attn.qkv.weight.absmax" in checkpoint
    decoder_ids = reference_outputs[3]
    with torch.no_grad():
        expected = reference(input_ids=inputs[1], pixel_values=inputs[0], decoder_input_ids=decoder_ids).logits
    safetensors_torch.save_file(checkpoint, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((dirs["native"] / "config.json").read_text())
    ours = _C.Florence2Model.load(tmp_path, quantization="nf4")  # pre-quantized layers load as stored
    logits = ours.decoder_logits(ours.encode(inputs[0], inputs[1][:, IMAGE_TOKENS:]), decoder_ids)
    assert relative_error(logits, expected) < RELATIVE_BOUND
    # Quantized by us from the dense checkpoint: NF4 codes equal bitsandbytes', a few nested absmax codes
    # differ (its CPU 8-bit rule is a lookup-table approximation; ours follows its CUDA rule).
    ours = _C.Florence2Model.load(dirs["native"], quantization="nf4", quantize_vision=True)
    logits = ours.decoder_logits(ours.encode(inputs[0], inputs[1][:, IMAGE_TOKENS:]), decoder_ids)
    assert relative_error(logits, expected) < 0.02


@pytest.mark.parametrize("layout", ["native", "original"])
def test_nf4_policies_add_a_bounded_error(checkpoints, inputs, reference_outputs, layout, record_property):
    """The default -int4 policy (vision tower and projector dense) and the everything policy, against dense.
    The error each adds is recorded (pytest -rA shows it; docs/florence2.md has the full-size figures)."""
    _, dirs = checkpoints
    decoder_ids = reference_outputs[3]
    dense_logits = reference_outputs[2]
    prompt = inputs[1][:, IMAGE_TOKENS:]
    errors = {}
    for name, kwargs in {"default": {}, "quantize_vision": {"quantize_vision": True}}.items():
        model = _C.Florence2Model.load(dirs[layout], quantization="nf4", **kwargs)
        errors[name] = relative_error(model.decoder_logits(model.encode(inputs[0], prompt), decoder_ids), dense_logits)
        record_property(f"nf4_{name}_logit_error", errors[name])
    # NF4 has 16 levels; on this random model (no outlier structure) logits move by tens of percent.
    assert all(0 < e < 1 for e in errors.values()), errors
