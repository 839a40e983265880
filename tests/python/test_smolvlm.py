"""SmolVLM (imagetotext._C.SmolVLM) against transformers' Idefics3ForConditionalGeneration and Idefics3Processor
(Pillow backend), and its quantized variants against transformers + bitsandbytes, on a tiny random checkpoint the
tests write with save_pretrained (fp32, CPU).

Tolerances. fp32 parity: our ops are the same ATen ops in the same order except attention (SDPA against
transformers' eager matmul/softmax), so differences are float32 rounding: we bound them at 1e-4 of the largest
magnitude of each compared tensor (the issue's bound); they measure ~1e-6. Quantized parity: both sides hold
bit-identical quantized weights, and differ only in how the matmul is evaluated (fused kernels against
bitsandbytes' dequantize + F.linear, LLM.int8's CPU constant 6.200124e-05 against 1/127^2), so the bound is
the same relative 1e-4 for NF4/weight-only INT8 and 1e-3 for LLM.int8 (its int8 activation rounding can flip
one step of a value near a .5 boundary).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from imagetotext import _C

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
from tokenizers import AddedToken, Tokenizer as OracleTokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil  # noqa: E402
from transformers.models.idefics3.processing_idefics3 import Idefics3Processor  # noqa: E402

QUESTION = "Can you describe this image?"
CHAT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] "
    "== 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == "
    "'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
SPECIALS = (["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<global-img>"]
            + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
            + ["<fake_token_around_image>", "<image>", "<end_of_utterance>"])
TILE = 32        # vision image_size: the tile side
PATCH = 8        # 4x4 patches per tile
SCALE = 2        # pixel shuffle: 4 tokens per tile
STEPS = 32       # greedy steps compared


def rel_err(ours: torch.Tensor, expected: torch.Tensor) -> float:
    return float((ours.double() - expected.double()).abs().max() / expected.double().abs().max())


def build_tokenizer() -> OracleTokenizer:
    tokenizer = OracleTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    corpus = [f"User: {QUESTION} Assistant: a cat sat on the mat with {n} dogs, in a photo." for n in range(50)]
    trainer = trainers.BpeTrainer(vocab_size=400, show_progress=False, special_tokens=SPECIALS[:3],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIALS[3:]])
    return tokenizer


def tiny_config(tokenizer: OracleTokenizer, **top):
    vocab = tokenizer.get_vocab_size()
    return transformers.Idefics3Config(
        scale_factor=SCALE, image_token_id=tokenizer.token_to_id("<image>"), tie_word_embeddings=False,
        # Every in_features a multiple of 64, as in SmolVLM (the 4-bit blocksize; see the report on smaller ones).
        vision_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": TILE, "patch_size": PATCH},
        text_config={"model_type": "llama", "vocab_size": vocab, "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                     "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
                     "pad_token_id": 2, "initializer_range": 0.2},
        **top)


def write_checkpoint(path: Path, seed: int = 0):
    """A tiny random SmolVLM in `path`, as transformers writes one; returns (model, processor)."""
    tokenizer = build_tokenizer()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<end_of_utterance>",
                                                pad_token="<|im_end|>")
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 4 * TILE}, max_image_size={"longest_edge": TILE},
                                                image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=fast, image_seq_len=(TILE // PATCH) ** 2
                                  // SCALE ** 2, chat_template=CHAT_TEMPLATE)
    torch.manual_seed(seed)
    config = tiny_config(tokenizer)
    config._attn_implementation = "eager"  # as the service loads SmolVLM
    model = transformers.Idefics3ForConditionalGeneration(config).eval()
    # End of utterance never wins a step, so every greedy comparison runs its full length.
    eos = tokenizer.token_to_id("<end_of_utterance>")
    with torch.no_grad():
        model.lm_head.weight[eos] = 0.0
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.token_to_id("<|im_end|>")  # as SmolVLM's generation_config
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return model, processor


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("smolvlm")
    model, processor = write_checkpoint(path)
    return path, model, processor


def sample_inputs(processor, height=40, width=70, seed=1):
    """input_ids and pixel_values as transformers' processor makes them (6 tiles: 2x3 grid plus the global)."""
    generator = torch.Generator().manual_seed(seed)
    from PIL import Image
    pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
    prompt = processor.apply_chat_template(CHAT, add_generation_prompt=True)
    out = processor(text=prompt, images=[Image.fromarray(pixels.numpy())], return_tensors="pt")
    return out


# ---- the model, dense fp32 ------------------------------------------------------------------------------------

def test_vision_tower_and_connector_match_transformers(tiny):
    path, model, processor = tiny
    ours = _C.SmolVLM(str(path), device="cpu")
    pixel_values = sample_inputs(processor)["pixel_values"][0]
    with torch.no_grad():
        expected_embed = model.model.vision_model.embeddings(
            pixel_values, torch.ones(pixel_values.shape[0], TILE // PATCH, TILE // PATCH, dtype=torch.bool))
        expected_vision = model.model.vision_model(pixel_values=pixel_values).last_hidden_state
        expected_features = model.model.connector(expected_vision)
    assert rel_err(ours.vision_embeddings(pixel_values), expected_embed) < 1e-6
    vision = ours.vision(pixel_values)
    assert vision.shape == expected_vision.shape
    assert rel_err(vision, expected_vision) < 1e-4
    assert rel_err(ours.connector(expected_vision), expected_features) < 1e-6
    assert rel_err(ours.image_features(pixel_values), expected_features) < 1e-4


def test_padded_tiles_and_padding_images_match_transformers(tiny):
    """NaViT positions and the key mask for a tile with padding; an all-zero image is dropped."""
    path, model, _ = tiny
    ours = _C.SmolVLM(str(path), device="cpu")
    generator = torch.Generator().manual_seed(3)
    pixel_values = torch.rand(1, 3, 3, TILE, TILE, generator=generator) * 2 - 1
    mask = torch.ones(1, 3, TILE, TILE, dtype=torch.int64)
    pixel_values[0, 1, :, 20:, :] = 0.0   # a 20x12 image padded to the tile size
    pixel_values[0, 1, :, :, 12:] = 0.0
    mask[0, 1, 20:, :] = 0
    mask[0, 1, :, 12:] = 0
    pixel_values[0, 2] = 0.0              # a padding image
    mask[0, 2] = 0
    with torch.no_grad():
        expected = model.model.get_image_features(pixel_values, mask).pooler_output
        patch_mask = torch.zeros(1, TILE // PATCH, TILE // PATCH, dtype=torch.bool)
        patch_mask[0, :3, :2] = True      # patches with any real pixel: rows 0..2 (20 px), columns 0..1 (12 px)
        expected_embed = model.model.vision_model.embeddings(pixel_values[0, 1:2], patch_mask)
    features = ours.image_features(pixel_values, mask)
    assert features.shape == expected.shape == (2, 4, 64)
    assert rel_err(features, expected) < 1e-4
    assert rel_err(ours.vision_embeddings(pixel_values[0, 1:2], patch_mask), expected_embed) < 1e-6


def test_prompt_logits_match_transformers(tiny):
    path, model, processor = tiny
    ours = _C.SmolVLM(str(path), device="cpu")
    inputs = sample_inputs(processor)
    with torch.no_grad():
        expected = model(**inputs).logits
    logits = ours.prompt_logits(inputs["input_ids"], inputs["pixel_values"], inputs["pixel_attention_mask"])
    assert logits.shape == expected.shape
    assert rel_err(logits, expected) < 1e-4


def test_greedy_decoding_matches_transformers(tiny):
    path, model, processor = tiny
    ours = _C.SmolVLM(str(path), device="cpu")
    inputs = sample_inputs(processor)
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=STEPS, do_sample=False, output_logits=True,
                                  return_dict_in_generate=True)
    expected_tokens = expected.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    tokens, logits = ours.generate(inputs["input_ids"], inputs["pixel_values"], inputs["pixel_attention_mask"],
                                   max_new_tokens=STEPS, keep_logits=True)
    assert len(expected_tokens) == STEPS
    assert len(set(expected_tokens)) > 3, "a degenerate test model: the comparison would prove little"
    assert tokens == expected_tokens
    for step, expected_logits in enumerate(expected.logits):
        assert rel_err(logits[step], expected_logits[0]) < 1e-4, f"step {step}"


def test_fixed_shape_decoding_matches_transformers(tiny):
    """The decode steps a CUDA graph records (a cache of fixed capacity written at a position held on the device,
    attention masked past it, the token picked by argmax on the device), run without a graph on the CPU."""
    path, model, processor = tiny
    ours = _C.SmolVLM(str(path), device="cpu")
    inputs = sample_inputs(processor)
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=STEPS, do_sample=False, output_logits=True,
                                  return_dict_in_generate=True)
    expected_tokens = expected.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    tokens, logits = ours.generate(inputs["input_ids"], inputs["pixel_values"], inputs["pixel_attention_mask"],
                                   max_new_tokens=STEPS, keep_logits=True, decoding="graph")
    assert tokens == expected_tokens
    assert logits.shape[0] == STEPS
    for step, expected_logits in enumerate(expected.logits):
        assert rel_err(logits[step], expected_logits[0]) < 1e-4, f"step {step}"


@pytest.mark.parametrize("keep_logits", [True, False])
@pytest.mark.parametrize("decoding", ["eager", "graph"])
@pytest.mark.parametrize("stop_at", [0, 1, 3, 4, 5, 9])
def test_decoding_stops_at_the_first_end_token(tiny, decoding, stop_at, keep_logits):
    """Any token can end decoding; the fixed-shape path runs steps ahead of the host and must drop them."""
    path, model, processor = tiny
    ours = _C.SmolVLM(str(path), device="cpu")
    inputs = sample_inputs(processor)
    with torch.no_grad():
        free = model.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
    end = free[stop_at]
    expected = free[:free.index(end) + 1]
    tokens, logits = ours.generate(inputs["input_ids"], inputs["pixel_values"], inputs["pixel_attention_mask"],
                                   max_new_tokens=12, keep_logits=keep_logits, eos_token_ids=[end], decoding=decoding)
    assert tokens == expected
    assert (logits.shape[0] == len(expected)) if keep_logits else (logits is None)


def test_unknown_decoding_mode_is_an_error(tiny):
    path, model, processor = tiny
    ours = _C.SmolVLM(str(path), device="cpu")
    inputs = sample_inputs(processor)
    with pytest.raises(ValueError, match="decoding 'fast'"):
        ours.generate(inputs["input_ids"], inputs["pixel_values"], decoding="fast")


# ---- quantized variants ---------------------------------------------------------------------------------------

def quantized_reference(model, replace):
    """A copy of the transformers model with every nn.Linear but lm_head replaced, as bitsandbytes' loader does."""
    import copy
    reference = copy.deepcopy(model)
    for name, module in list(reference.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, torch.nn.Linear) and full != "lm_head":
                setattr(module, child_name, replace(child))
    return reference.eval()


def bnb_nf4(linear):
    """bitsandbytes' Linear4bit holding the NF4 weight our loader makes (QuantizedLinear.from_dense, whose packing
    is bit-exact with bitsandbytes' CUDA quantizer: test_quantized_linear.py). bitsandbytes' own CPU quantizer is
    not a usable oracle here: its nested absmax uses a lookup-table approximation that moves some codes by one
    (shared/reference/bitsandbytes.md section 6)."""
    bnb = pytest.importorskip("bitsandbytes")
    from imagetotext.quant import QuantizedLinear
    state = QuantizedLinear.from_dense(linear.weight.data, None, "nf4").state_dict()
    data = state.pop("weight")
    layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              compute_dtype=torch.float32, quant_type="nf4", compress_statistics=True)
    layer.weight = bnb.nn.Params4bit.from_prequantized(data, {k[len("weight."):]: v for k, v in state.items()},
                                                       device="cpu", module=layer)
    if linear.bias is not None:
        layer.bias = torch.nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    # bitsandbytes' AVX512-BF16 CPU kernel (where the CPU has it) computes in bf16; the portable path is
    # dequantize + F.linear in float32.
    layer.support_avx512bf16_for_cpu = False
    return layer.eval()


def bnb_llm_int8(linear):
    bnb = pytest.importorskip("bitsandbytes")
    layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                has_fp16_weights=False, threshold=6.0)
    layer.weight = bnb.nn.Int8Params(linear.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
    layer.weight = layer.weight._quantize("cpu") if hasattr(layer.weight, "_quantize") else layer.weight
    if linear.bias is not None:
        layer.bias = torch.nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    return layer.eval()


def int8_dequantized(linear):
    """Weight-only INT8 has no transformers counterpart: the dense layer with bitsandbytes' int8 round trip."""
    import bitsandbytes.functional as F
    cb, scb, _ = F.int8_vectorwise_quant(linear.weight.data.to(torch.float16))
    dense = torch.nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    dense.weight.data = F.int8_vectorwise_dequant(cb, scb).to(torch.float32)
    if linear.bias is not None:
        dense.bias.data = linear.bias.data.float().clone()
    return dense


@pytest.mark.parametrize("quantization, replace, bound", [("nf4", bnb_nf4, 1e-4), ("int8", int8_dequantized, 1e-4)])
def test_quantized_variants_match_bitsandbytes(tiny, quantization, replace, bound):
    pytest.importorskip("bitsandbytes")
    path, model, processor = tiny
    reference = quantized_reference(model, replace)
    ours = _C.SmolVLM(str(path), quantization=quantization, device="cpu")
    inputs = sample_inputs(processor)
    with torch.no_grad():
        expected = reference.generate(**inputs, max_new_tokens=8, do_sample=False, output_logits=True,
                                      return_dict_in_generate=True)
    expected_tokens = expected.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    tokens, logits = ours.generate(inputs["input_ids"], inputs["pixel_values"], inputs["pixel_attention_mask"],
                                   max_new_tokens=8, keep_logits=True)
    # Per-step logits compared while both sides followed the same tokens.
    for step, expected_logits in enumerate(expected.logits):
        assert rel_err(logits[step], expected_logits[0]) < bound, f"{quantization} step {step}"
        if tokens[step] != expected_tokens[step]:
            break
    assert tokens == expected_tokens


def test_llm_int8_is_as_close_to_the_dense_model_as_bitsandbytes(tiny):
    """LLM.int8 rounds activations to int8 per row, so a value within float rounding of a .5 boundary takes
    either code; bitsandbytes' CPU op also keeps the int8 part in float32 where ours rounds it to float16 as the
    CUDA kernel does (per layer they agree within that rounding: test_quantized_linear.py). Through this random
    network such flips grow to several percent of the logits on both sides, so the two are held to the same
    standard instead: ours may be at most twice as far from the exact (dense fp32) logits as bitsandbytes is."""
    pytest.importorskip("bitsandbytes")
    path, model, processor = tiny
    inputs = sample_inputs(processor)
    with torch.no_grad():
        exact = model(**inputs).logits[0].double()
        expected = quantized_reference(model, bnb_llm_int8)(**inputs).logits[0]
    ours = _C.SmolVLM(str(path), quantization="llm_int8", device="cpu")
    logits = ours.prompt_logits(inputs["input_ids"], inputs["pixel_values"], inputs["pixel_attention_mask"])[0]
    ours_err, bnb_err = within_twice_reference_error(logits, expected, exact)
    print(f"LLM.int8 prompt logits: ours {ours_err:.3e}, bitsandbytes {bnb_err:.3e} from dense fp32")


# ---- the processor and the whole caption path, at SmolVLM's real geometry ----------------------------------------
# A checkpoint whose tiles are SmolVLM's 512 pixels with 64 <image> tokens each (patch 64, no pixel shuffle,
# so the network stays tiny) and the published processor settings (longest edge 2048, tiles of 512).

def write_real_geometry_checkpoint(path: Path):
    tokenizer = build_tokenizer()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<end_of_utterance>",
                                                pad_token="<|im_end|>")
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 2048}, max_image_size={"longest_edge": 512},
                                                image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=fast, image_seq_len=64,
                                  chat_template=CHAT_TEMPLATE)
    torch.manual_seed(5)
    config = tiny_config(tokenizer)
    config.scale_factor = 1
    config.vision_config.image_size = 512
    config.vision_config.patch_size = 64
    config.vision_config.hidden_size = 16
    config.vision_config.intermediate_size = 32
    config.vision_config.num_hidden_layers = 1
    config.vision_config.num_attention_heads = 2
    config.text_config.max_position_embeddings = 2048
    config._attn_implementation = "eager"
    model = transformers.Idefics3ForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tokenizer.token_to_id("<end_of_utterance>")
    model.generation_config.pad_token_id = tokenizer.token_to_id("<|im_end|>")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return model, processor


@pytest.fixture(scope="module")
def real_geometry(tmp_path_factory):
    path = tmp_path_factory.mktemp("smolvlm-512")
    model, processor = write_real_geometry_checkpoint(path)
    return path, model, processor, _C.SmolVLM(str(path), device="cpu")


def smooth_image(height, width, seed=0):
    """Gradients plus noise: a resize of it exercises every filter tap, unlike flat colour."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, height)[:, None, None]
    x = torch.linspace(0, 1, width)[None, :, None]
    base = torch.cat([y.expand(height, width, 1), x.expand(height, width, 1), (x * y).expand(height, width, 1)], 2)
    noise = torch.rand(height, width, 3, generator=generator) * 0.3
    return ((base * 0.7 + noise) * 255).clamp(0, 255).to(torch.uint8)


def image_file(tmp_path, kind):
    """An image file of one of the kinds the service meets, and its pixels as the service's load_rgb_image gives."""
    from PIL import Image
    pixels = smooth_image(90, 120, seed=7).numpy()
    path = tmp_path / f"{kind}.png"
    if kind == "grayscale":
        Image.fromarray(pixels[:, :, 0], mode="L").save(path)
    elif kind == "rgba":
        alpha = (pixels[:, :, 1:2] // 2 + 64)
        Image.fromarray(__import__("numpy").concatenate([pixels, alpha], 2), mode="RGBA").save(path)
    elif kind == "gif":
        path = tmp_path / "frames.gif"
        frames = [Image.fromarray(pixels).convert("P"), Image.fromarray(255 - pixels).convert("P")]
        frames[0].save(path, save_all=True, append_images=frames[1:])
    return _C.load_rgb_image(path)


PIXEL_CASES = {"square": (64, 64), "wide 17x300": (17, 300), "tall 300x17": (300, 17), "1x1": (1, 1),
               "4000x3000": (3000, 4000), "640x480": (480, 640)}


@pytest.mark.parametrize("case", list(PIXEL_CASES) + ["grayscale", "rgba", "gif"])
def test_processor_matches_transformers(real_geometry, tmp_path, case):
    from PIL import Image
    _, _, processor, ours = real_geometry
    pixels = image_file(tmp_path, case) if case in ("grayscale", "rgba", "gif") else smooth_image(*PIXEL_CASES[case])
    prompt = processor.apply_chat_template(CHAT, add_generation_prompt=True)
    expected = processor(text=prompt, images=[Image.fromarray(pixels.numpy())], return_tensors="pt")
    out = ours.process(pixels)
    assert out["input_ids"].tolist() == expected["input_ids"].tolist()
    assert out["pixel_values"].shape == expected["pixel_values"][0].shape
    # One 8-bit step before normalization is 2/255 after it (std 0.5).
    assert float((out["pixel_values"] - expected["pixel_values"][0]).abs().max()) <= 2 / 255 + 1e-6
    assert bool(expected["pixel_attention_mask"].all())  # every tile is full: nothing for a mask to say


def test_caption_matches_the_service_path(real_geometry):
    """processor -> generate -> batch_decode(skip_special_tokens=True) -> the service's clean-up."""
    from PIL import Image
    _, model, processor, ours = real_geometry
    pixels = smooth_image(480, 640, seed=2)
    prompt = processor.apply_chat_template(CHAT, add_generation_prompt=True)
    inputs = processor(text=prompt, images=[Image.fromarray(pixels.numpy())], return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    expected_text = service_clean(processor.batch_decode(generated, skip_special_tokens=True)[0])
    text, tokens = ours.caption(pixels, max_new_tokens=16)
    assert tokens == generated[0, inputs["input_ids"].shape[1]:].tolist()
    assert text == expected_text


# ---- batched captioning: several prompts per forward, padded on the left -------------------------------------

# Resized to a longest edge of 4 tiles, then cut into tiles: 2x3, 4x2, 1x4 and 4x4 grids plus the global tile.
# (This processor upscales every image to 4 tiles on its longest edge, so no image stays a single tile.)
BATCH_SIZES = [(40, 70), (100, 30), (12, 120), (128, 128)]


def random_image(height, width, seed):
    from PIL import Image
    generator = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator).numpy())


def batch_inputs(processor, images):
    """transformers' processor over one image per prompt, the prompts padded on the left (padding=True), as
    transformers' docs ask for batched generation with a decoder-only model."""
    prompt = processor.apply_chat_template(CHAT, add_generation_prompt=True)
    processor.tokenizer.padding_side = "left"
    return processor(text=[prompt] * len(images), images=[[image] for image in images], padding=True,
                     return_tensors="pt")


def tiny_batch(processor):
    inputs = batch_inputs(processor, [random_image(h, w, seed=i + 1) for i, (h, w) in enumerate(BATCH_SIZES)])
    lengths = inputs["attention_mask"].sum(1).tolist()
    assert len(set(lengths)) == len(lengths), "every row its own prompt length (tile count)"
    assert lengths[2] == min(lengths) and inputs["attention_mask"][:, -1].all()
    return inputs


def batch_args(inputs):
    return (inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], inputs["pixel_attention_mask"])


@pytest.mark.parametrize("decoding", ["eager", "graph"])
def test_batched_decoding_matches_transformers(tiny, decoding):
    """Four prompts of different lengths in one batch: per row the tokens and logits of transformers' batched
    generate (left padding masked out, positions from the attention mask)."""
    path, model, processor = tiny
    ours = _C.SmolVLM(str(path), device="cpu")
    inputs = tiny_batch(processor)
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=STEPS, do_sample=False, output_logits=True,
                                  return_dict_in_generate=True)
    expected_tokens = expected.sequences[:, inputs["input_ids"].shape[1]:].tolist()
    tokens, logits = ours.generate_batch(*batch_args(inputs), max_new_tokens=STEPS, keep_logits=True,
                                         decoding=decoding)
    assert all(len(set(row)) > 3 for row in expected_tokens), "a degenerate test model"
    assert tokens == expected_tokens
    for row in range(len(BATCH_SIZES)):
        assert logits[row].shape[0] == STEPS
        for step, expected_logits in enumerate(expected.logits):
            assert rel_err(logits[row][step], expected_logits[row]) < 1e-4, f"row {row} step {step}"


@pytest.mark.parametrize("decoding", ["eager", "graph"])
def test_a_batch_of_one_is_the_single_image_path(tiny, decoding):
    path, _, processor = tiny
    ours = _C.SmolVLM(str(path), device="cpu")
    inputs = sample_inputs(processor)
    args = (inputs["input_ids"], inputs["pixel_values"], inputs["pixel_attention_mask"])
    tokens, logits = ours.generate(*args, max_new_tokens=STEPS, keep_logits=True, decoding=decoding)
    batch_tokens, batch_logits = ours.generate_batch(
        inputs["input_ids"], torch.ones_like(inputs["input_ids"]), inputs["pixel_values"],
        inputs["pixel_attention_mask"], max_new_tokens=STEPS, keep_logits=True, decoding=decoding)
    assert batch_tokens == [tokens]
    assert torch.equal(batch_logits[0], logits)


@pytest.mark.parametrize("decoding", ["eager", "graph"])
@pytest.mark.parametrize("stop_at", [0, 3, 5])
def test_rows_that_end_early_pad_as_transformers(tiny, decoding, stop_at):
    """Row 1 ends at step stop_at (its token there is made the end token): it emits pad_token_id from then on
    while the other rows go on, and decoding ends when every row has ended or at max_new_tokens."""
    path, model, processor = tiny
    ours = _C.SmolVLM(str(path), device="cpu")
    inputs = tiny_batch(processor)
    length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        free = model.generate(**inputs, max_new_tokens=12, do_sample=False)[:, length:]
        end = int(free[1, stop_at])
        expected = model.generate(**inputs, max_new_tokens=12, do_sample=False, eos_token_id=end)[:, length:].tolist()
    pad = model.generation_config.pad_token_id
    ended = [row for row in expected if end in row[:-1]]
    assert ended and all(t == pad for row in ended for t in row[row.index(end) + 1:]), "a row padded after its end"
    tokens, logits = ours.generate_batch(*batch_args(inputs), max_new_tokens=12, keep_logits=True,
                                         eos_token_ids=[end], decoding=decoding)
    assert ours.pad_token_id == pad
    assert tokens == expected
    for row, row_logits in zip(expected, logits):
        assert row_logits.shape[0] == (row.index(end) + 1 if end in row else len(row))


def test_a_batch_that_is_not_left_padded_is_an_error(tiny):
    path, _, processor = tiny
    ours = _C.SmolVLM(str(path), device="cpu")
    inputs = tiny_batch(processor)
    right = inputs["attention_mask"].flip(1)
    with pytest.raises(ValueError, match="padding_side"):
        ours.generate_batch(inputs["input_ids"], right, inputs["pixel_values"], inputs["pixel_attention_mask"])
    with pytest.raises(ValueError, match="attention_mask of the same shape"):
        ours.generate_batch(inputs["input_ids"], right[:, 1:], inputs["pixel_values"])


CAPTION_BATCH = [(480, 640), (64, 64), (17, 300)]  # 13, 17 and 2 tiles of 512


def expected_batch_captions(model, processor, pixels, max_new_tokens):
    """transformers' batched generate and the service's decoding and clean-up, per row."""
    from PIL import Image
    inputs = batch_inputs(processor, [Image.fromarray(p.numpy()) for p in pixels])
    assert len(set(inputs["attention_mask"].sum(1).tolist())) == len(pixels)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    texts = [service_clean(t) for t in processor.batch_decode(generated, skip_special_tokens=True)]
    return texts, generated[:, inputs["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("decoding", ["eager", "graph"])
def test_caption_batch_matches_transformers(real_geometry, decoding):
    """The service path for several images at once: our processor per image, one batched generate."""
    _, model, processor, ours = real_geometry
    pixels = [smooth_image(h, w, seed=i) for i, (h, w) in enumerate(CAPTION_BATCH)]
    texts, rows = expected_batch_captions(model, processor, pixels, 16)
    results = ours.caption_batch(pixels, max_new_tokens=16, decoding=decoding)
    assert [text for text, _ in results] == texts
    for (_, tokens), row in zip(results, rows):
        assert tokens == row[:len(tokens)] and all(t == ours.pad_token_id for t in row[len(tokens):])


def test_extract_batch_captions_several_images_in_one_generate(real_geometry, tmp_path):
    """ImageToText::extract_batch (SmolVLMFamily::caption_batch) through the Python API, against transformers."""
    import imagetotext
    from PIL import Image
    path, model, processor, _ = real_geometry
    pixels = [smooth_image(h, w, seed=i + 3) for i, (h, w) in enumerate(CAPTION_BATCH)]
    files = []
    for i, p in enumerate(pixels):
        files.append(tmp_path / f"meme_{i}.png")
        Image.fromarray(p.numpy()).save(files[-1])
    texts, _ = expected_batch_captions(model, processor, pixels, 16)
    captioner = imagetotext.load_model(path, device="cpu", max_new_tokens=16)
    assert captioner.extract_batch(files) == texts


# ---- the service's caption clean-up ---------------------------------------------------------------------------

def service_clean(raw_output: str) -> str:
    """The service's SmolVLM clean-up (meme-search model_init.py), the oracle."""
    substring = "Can you describe this image?"
    if substring in raw_output:
        raw_output = raw_output.split(substring, 1)[-1].strip()
    substring = "### Analysis and Description:"
    if substring in raw_output:
        raw_output = raw_output.split(substring, 1)[0].strip()
    substring = "Assistant: "
    if substring in raw_output:
        raw_output = raw_output.split(substring, 1)[-1].strip()
    return raw_output


@pytest.mark.parametrize("decoded", [
    "User:\n\nCan you describe this image?\nAssistant: A cat on a mat.",
    "User: Can you describe this image?\nAssistant:  A dog.\n\n### Analysis and Description:\n1. **Dog**",
    "User: Can you describe this image?\nAssistant:\u00a0\u3000Spaced out\u2028 ",
    "no markers at all  ", "Assistant: Assistant: twice", "", "Can you describe this image?",
    "Can you describe this image?Can you describe this image? Assistant:  x", " \t\n\x1c\x85caf\u00e9 \u00e9\x0b",
])
def test_clean_caption_matches_the_service(decoded):
    assert _C.smolvlm_clean_caption(decoded) == service_clean(decoded)


# ---- bad checkpoints ------------------------------------------------------------------------------------------

def copy_checkpoint(src: Path, dst: Path, edit_tensors=None, edit_config=None):
    import shutil
    from safetensors.torch import load_file, save_file
    shutil.copytree(src, dst)
    if edit_tensors:
        tensors = load_file(dst / "model.safetensors")
        edit_tensors(tensors)
        save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    if edit_config:
        config = json.loads((dst / "config.json").read_text())
        edit_config(config)
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_missing_tensor_is_named(tiny, tmp_path):
    key = "model.text_model.layers.1.mlp.up_proj.weight"
    bad = copy_checkpoint(tiny[0], tmp_path / "bad", edit_tensors=lambda t: t.pop(key))
    with pytest.raises(RuntimeError, match=key.replace(".", r"\.")):
        _C.SmolVLM(str(bad), device="cpu")


def test_wrong_shape_is_named(tiny, tmp_path):
    key = "model.vision_model.encoder.layers.0.self_attn.k_proj.weight"
    def shrink(tensors):
        tensors[key] = tensors[key][:-1].clone()
    bad = copy_checkpoint(tiny[0], tmp_path / "bad", edit_tensors=shrink)
    with pytest.raises(RuntimeError, match="k_proj"):
        _C.SmolVLM(str(bad), device="cpu")


def test_config_that_does_not_match_the_checkpoint(tiny, tmp_path):
    def wider(config):
        config["text_config"]["intermediate_size"] = 192
    bad = copy_checkpoint(tiny[0], tmp_path / "wide", edit_config=wider)
    with pytest.raises(RuntimeError, match="gate_proj"):
        _C.SmolVLM(str(bad), device="cpu")

    def scale(config):
        config["scale_factor"] = 4  # 1 feature per tile where the processor puts 4 <image> tokens
    bad = copy_checkpoint(tiny[0], tmp_path / "scale", edit_config=scale)
    with pytest.raises(RuntimeError, match="image_seq_len|<image> tokens per tile|modality_projection"):
        _C.SmolVLM(str(bad), device="cpu")

    def image_token(config):
        config["image_token_id"] = 5
    bad = copy_checkpoint(tiny[0], tmp_path / "token", edit_config=image_token)
    with pytest.raises(RuntimeError, match="image_token_id"):
        _C.SmolVLM(str(bad), device="cpu")


def test_missing_checkpoint_and_bad_inputs(tiny, tmp_path):
    with pytest.raises(RuntimeError, match="config.json"):
        _C.SmolVLM(str(tmp_path), device="cpu")
    ours = _C.SmolVLM(str(tiny[0]), device="cpu")
    with pytest.raises(ValueError, match="pixel_values"):
        ours.image_features(torch.ones(3, TILE, TILE))
    with pytest.raises(ValueError, match="<image> tokens"):
        ours.prompt_logits(torch.tensor([[1, 2, 3]]), torch.ones(1, 3, TILE, TILE))
    with pytest.raises(ValueError):
        ours.process(torch.zeros(4, 4, 4, dtype=torch.uint8))


# ---- CUDA (the GPU machine) -----------------------------------------------------------------------------------
# bf16 and the quantized CUDA kernels round differently from transformers' and bitsandbytes' own kernels, so
# there is no tight bound between the two; instead both are held against the fp32 CPU result of the same
# weights, and ours may be at most twice as far from it as transformers' (or bitsandbytes') is, plus 1e-3 of
# the logits' scale.

def fp32_logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits[0].double()


def within_twice_reference_error(ours, reference, exact):
    scale = exact.abs().max()
    ours_err = (ours.double().cpu() - exact).abs().max() / scale
    reference_err = (reference.double().cpu() - exact).abs().max() / scale
    assert ours_err <= 2 * reference_err + 1e-3, f"ours {float(ours_err):.2e}, reference {float(reference_err):.2e}"
    return float(ours_err), float(reference_err)


@pytest.mark.gpu
def test_cuda_vision_tower_matches_transformers(tiny):
    """On CUDA, float32, where the MLP's GELU runs in fc1's cuBLASLt epilogue: the vision tower and the image
    features against transformers' (on the CPU), as test_vision_tower_and_connector_match_transformers holds ours
    on the CPU."""
    path, model, processor = tiny
    ours = _C.SmolVLM(str(path), device="cuda", dtype="float32")
    pixel_values = sample_inputs(processor)["pixel_values"][0]
    with torch.no_grad():
        expected_vision = model.model.vision_model(pixel_values=pixel_values).last_hidden_state
        expected_features = model.model.connector(expected_vision)
    assert rel_err(ours.vision(pixel_values.cuda()).cpu(), expected_vision) < 1e-4
    assert rel_err(ours.image_features(pixel_values.cuda()).cpu(), expected_features) < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("quantization", ["int8", "nf4"])
def test_cuda_quantized_vision_tower_matches_the_cpu(tiny, quantization):
    """float32: over more rows than the quantized GEMVs take, a weight-only quantized fc1 runs as a dense one does
    (its dequantized weight in cuBLASLt's GELU epilogue); the tower against the same quantized tower on the CPU,
    which composes dequantize, matmul and GELU (held to bitsandbytes by test_quantized_variants_match_bitsandbytes)."""
    path, model, processor = tiny
    pixel_values = sample_inputs(processor)["pixel_values"][0]
    assert pixel_values.shape[0] * (TILE // PATCH) ** 2 > 64  # the rows of the dequantizing path
    cpu = _C.SmolVLM(str(path), quantization=quantization, device="cpu")
    cuda = _C.SmolVLM(str(path), quantization=quantization, device="cuda", dtype="float32")
    assert rel_err(cuda.vision(pixel_values.cuda()).cpu(), cpu.vision(pixel_values)) < 1e-4


@pytest.mark.gpu
def test_cuda_bf16_matches_transformers(tiny):
    path, model, processor = tiny
    inputs = sample_inputs(processor)
    exact = fp32_logits(model, inputs)
    reference = transformers.Idefics3ForConditionalGeneration.from_pretrained(
        path, dtype=torch.bfloat16, attn_implementation="eager").to("cuda").eval()
    cuda_inputs = {k: v.to("cuda") for k, v in inputs.items()}
    cuda_inputs["pixel_values"] = cuda_inputs["pixel_values"].to(torch.bfloat16)
    with torch.no_grad():
        expected = reference(**cuda_inputs).logits[0]
        generated = reference.generate(**cuda_inputs, max_new_tokens=STEPS, do_sample=False)
    ours = _C.SmolVLM(str(path), device="cuda")
    assert ours.dtype == "BFloat16"
    logits = ours.prompt_logits(inputs["input_ids"], inputs["pixel_values"], inputs["pixel_attention_mask"])[0]
    within_twice_reference_error(logits, expected, exact)
    tokens, _ = ours.generate(inputs["input_ids"], inputs["pixel_values"], inputs["pixel_attention_mask"],
                              max_new_tokens=STEPS)
    expected_tokens = generated[0, inputs["input_ids"].shape[1]:].tolist()
    same = next((i for i, (a, b) in enumerate(zip(tokens, expected_tokens)) if a != b), len(tokens))
    print(f"bf16 CUDA: {same} of {STEPS} greedy tokens identical to transformers bf16")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_graph_decoding_matches_eager(tiny, dtype):
    """The replayed CUDA graph gives the eager steps' tokens; a longer prompt than the recording's capacity
    records again, and a shorter one reuses the recording. Without logits the steps replay four at a time (one
    recording of a round): the same kernels, so the same tokens bit for bit, also where a round runs past the
    last step (max_new_tokens - 1 not a multiple of 4)."""
    path, model, processor = tiny
    ours = _C.SmolVLM(str(path), device="cuda", dtype=dtype)
    for height, width, new in [(40, 70, STEPS), (90, 40, STEPS), (40, 70, 300), (40, 70, STEPS), (40, 70, 11)]:
        inputs = sample_inputs(processor, height=height, width=width)
        args = (inputs["input_ids"], inputs["pixel_values"], inputs["pixel_attention_mask"])
        eager, eager_logits = ours.generate(*args, max_new_tokens=new, keep_logits=True, decoding="eager")
        graph, graph_logits = ours.generate(*args, max_new_tokens=new, keep_logits=True)
        rounds, _ = ours.generate(*args, max_new_tokens=new)
        assert rounds == graph, (height, width, new)
        if len(graph) > 5:  # an end token inside the second round: the steps after it are dropped
            end = graph[5]
            ended, _ = ours.generate(*args, max_new_tokens=new, eos_token_ids=[end])
            assert ended == graph[:graph.index(end) + 1], (height, width, new)
        if dtype == "float32":
            assert graph == eager, (height, width, new)
            assert rel_err(graph_logits.cpu(), eager_logits.cpu()) < 1e-5
            continue
        # bf16: the recorded step's attention kernel rounds differently from the eager one, and the difference
        # travels through the bf16 cache (2^-8 per rounding, a few dozen roundings a step).
        agree_up_to_a_near_tie(graph, graph_logits, eager, eager_logits, (height, width, new))


# One process's decodings of the tiny checkpoint: IMAGETOTEXT_OVERLAP_LAUNCHES is read once per process.
DECODE_IN_A_PROCESS = """
import sys, torch
from imagetotext import _C
path, inputs_file, out_file, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
args = torch.load(inputs_file)
results = {}
for quantization in ["none", "nf4", "int8"]:
    model = _C.SmolVLM(path, quantization=quantization, device="cuda", dtype="bfloat16")
    for decoding in ["eager", "graph"]:
        tokens, logits = model.generate(*args, max_new_tokens=steps, keep_logits=True, decoding=decoding)
        results[quantization + " " + decoding] = (tokens, logits.cpu())
torch.save(results, out_file)
"""


@pytest.mark.gpu
def test_cuda_overlapped_launches_change_no_bit(tiny, tmp_path):
    """Overlapped kernel launches (src/ops/cuda/launch.cuh: each kernel starts before the previous one ends and
    waits for it before it reads an activation) give bit for bit the plain launches' tokens and logits, eager
    and replayed from a CUDA graph, dense and quantized: a kernel that read an activation before its wait would
    read a stale one."""
    import os
    import subprocess
    import sys
    path, model, processor = tiny
    inputs = sample_inputs(processor)
    torch.save((inputs["input_ids"], inputs["pixel_values"], inputs["pixel_attention_mask"]), tmp_path / "inputs.pt")
    results = {}
    for overlap in ["1", "0"]:
        out = tmp_path / f"overlap{overlap}.pt"
        env = dict(os.environ, IMAGETOTEXT_OVERLAP_LAUNCHES=overlap)
        subprocess.run([sys.executable, "-c", DECODE_IN_A_PROCESS, str(path), str(tmp_path / "inputs.pt"), str(out),
                        str(STEPS)], env=env, check=True, timeout=600)
        results[overlap] = torch.load(out)
    assert results["1"].keys() == results["0"].keys()
    for key, (tokens, logits) in results["1"].items():
        plain_tokens, plain_logits = results["0"][key]
        assert tokens == plain_tokens, key
        assert torch.equal(logits, plain_logits), key


def agree_up_to_a_near_tie(tokens, logits, reference_tokens, reference_logits, label):
    """Two bf16 decodings that round differently: up to the first token they disagree on, the logits agree within
    5e-2 of their magnitude (bf16's 2^-8 per rounding, a few dozen roundings a step), and that token is a near
    tie there (its logit within the same bound of the best)."""
    same = next((i for i, (a, b) in enumerate(zip(tokens, reference_tokens)) if a != b),
                min(len(tokens), len(reference_tokens)))
    # No minimum length: random tiny weights give near ties from the first steps on (the H100 run saw a row
    # of a bf16 batch part at step 1); what must hold is the logits' agreement and the tie below.
    for step in range(min(same + 1, len(tokens), len(reference_tokens))):
        assert rel_err(logits[step].cpu(), reference_logits[step].cpu()) < 5e-2, (label, step)
    if same < min(len(tokens), len(reference_tokens)):
        row = reference_logits[same].float().cpu()
        gap = float(row.max() - row[tokens[same]])
        assert gap <= 5e-2 * float(row.abs().max()), (label, same, gap)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_batched_graph_decoding_matches_eager(tiny, dtype):
    """The batched step recorded in a CUDA graph (per-row padding in the decode_attention kernel) against the
    eager batched steps (SDPA with the padding mask); a second batch size records again."""
    path, _, processor = tiny
    ours = _C.SmolVLM(str(path), device="cuda", dtype=dtype)
    for sizes in [BATCH_SIZES, BATCH_SIZES[:2], BATCH_SIZES]:
        inputs = batch_inputs(processor, [random_image(h, w, seed=i + 1) for i, (h, w) in enumerate(sizes)])
        eager, eager_logits = ours.generate_batch(*batch_args(inputs), max_new_tokens=STEPS, keep_logits=True,
                                                  decoding="eager")
        graph, graph_logits = ours.generate_batch(*batch_args(inputs), max_new_tokens=STEPS, keep_logits=True)
        assert ours.generate_batch(*batch_args(inputs), max_new_tokens=STEPS)[0] == graph  # rounds of four steps
        for row in range(len(sizes)):
            if dtype == "float32":
                assert graph[row] == eager[row], (len(sizes), row)
                assert rel_err(graph_logits[row].cpu(), eager_logits[row].cpu()) < 1e-5
            else:
                agree_up_to_a_near_tie(graph[row], graph_logits[row], eager[row], eager_logits[row], (len(sizes), row))


@pytest.mark.gpu
@pytest.mark.parametrize("decoding", ["eager", "graph"])
def test_cuda_bf16_batch_matches_single_images(tiny, decoding):
    """A batch against each of its images alone, bf16 on CUDA: a row's matmuls run inside a larger GEMM (another
    tiling, another bf16 rounding of the same sums) and its attention skips padding, so rows agree with the
    single captions as two bf16 roundings do: up to a near tie."""
    path, _, processor = tiny
    ours = _C.SmolVLM(str(path), device="cuda", dtype="bfloat16")
    images = [random_image(h, w, seed=i + 1) for i, (h, w) in enumerate(BATCH_SIZES)]
    batch, batch_logits = ours.generate_batch(*batch_args(batch_inputs(processor, images)), max_new_tokens=STEPS,
                                              keep_logits=True, decoding=decoding)
    for row, image in enumerate(images):
        single = batch_inputs(processor, [image])
        tokens, logits = ours.generate(single["input_ids"], single["pixel_values"], single["pixel_attention_mask"],
                                       max_new_tokens=STEPS, keep_logits=True, decoding=decoding)
        agree_up_to_a_near_tie(batch[row], batch_logits[row], tokens, logits, row)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_image_features_replay_the_eager_passes(tiny, dtype):
    """On CUDA, image_features runs each pass of 4 full tiles as one recorded vision tower + connector (a CUDA
    graph) and the tiles left over eagerly: bit for bit the eager vision tower and connector over the same passes,
    for one image and then another (each replay reads its new input)."""
    path, _, processor = tiny
    ours = _C.SmolVLM(str(path), device="cuda", dtype=dtype)
    for seed in (1, 2):
        pixel_values = sample_inputs(processor, seed=seed)["pixel_values"][0].to("cuda", getattr(torch, dtype))
        assert pixel_values.shape[0] == 13  # 3 passes of 4 and 1 tile left
        features = ours.image_features(pixel_values)
        for start in range(0, 13, 4):
            expected = ours.connector(ours.vision(pixel_values[start:start + 4]))
            assert torch.equal(features[start:start + 4], expected), (seed, start)


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["640x480", "wide 17x300", "4000x3000"])
def test_cuda_processor_is_the_cpu_processor(real_geometry, case):
    """On CUDA the processor resizes and tiles on the device (Pillow's integer arithmetic, resize_pillow's CUDA
    kernel): the same input_ids and the CPU processor's pixel values (which test_processor_matches_transformers
    holds to transformers') up to the float32 rounding of the normalization, where one level of a resized pixel
    would be 2/255."""
    path, _, _, on_cpu = real_geometry
    pixels = smooth_image(*PIXEL_CASES[case])
    expected = on_cpu.process(pixels)
    out = _C.SmolVLM(str(path), device="cuda", dtype="float32").process(pixels)
    assert out["pixel_values"].device.type == "cuda"
    assert out["input_ids"].tolist() == expected["input_ids"].tolist()
    assert (out["rows"], out["cols"]) == (expected["rows"], expected["cols"])
    assert float((out["pixel_values"].cpu() - expected["pixel_values"]).abs().max()) <= 1e-6


@pytest.mark.gpu
def test_cuda_caption_batch_is_deterministic_and_close_to_single_captions(real_geometry):
    """caption_batch on CUDA (bf16, the graph): captions of several meme-sized images, each equal to the single
    caption of its image up to a near tie (see test_cuda_bf16_batch_matches_single_images)."""
    path = real_geometry[0]
    ours = _C.SmolVLM(str(path), device="cuda", dtype="bfloat16")
    pixels = [smooth_image(h, w, seed=i) for i, (h, w) in enumerate(CAPTION_BATCH)]
    first = ours.caption_batch(pixels, max_new_tokens=16)
    again = ours.caption_batch(pixels, max_new_tokens=16)
    assert first == again  # the replayed recording is deterministic
    for (text, tokens), p in zip(first, pixels):
        single_text, single_tokens = ours.caption(p, max_new_tokens=16)
        same = next((i for i, (a, b) in enumerate(zip(tokens, single_tokens)) if a != b), None)
        assert same is None or same >= 4, (tokens, single_tokens)


def cuda_bnb(linear, kind):
    bnb = pytest.importorskip("bitsandbytes")
    if kind == "nf4":
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                  compute_dtype=torch.bfloat16, quant_type="nf4", compress_statistics=True)
        layer.weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False, quant_type="nf4",
                                         compress_statistics=True, blocksize=64)
    else:
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                    has_fp16_weights=False, threshold=6.0)
        layer.weight = bnb.nn.Int8Params(linear.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
    if linear.bias is not None:
        layer.bias = torch.nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    return layer.to("cuda").eval()


@pytest.mark.gpu
@pytest.mark.parametrize("quantization", ["nf4", "llm_int8", "int8"])
def test_cuda_quantized_match_bitsandbytes(tiny, quantization):
    """bf16 activations, as the service runs: weights cast to bf16, then quantized (what transformers +
    bitsandbytes do when loading with dtype=bfloat16, and what we do)."""
    pytest.importorskip("bitsandbytes")
    import copy
    path, model, processor = tiny
    inputs = sample_inputs(processor)
    base = copy.deepcopy(model).to(torch.bfloat16)
    kind = "int8" if quantization == "llm_int8" else "nf4"
    # The exact result of the quantized weights: fp32 on the CPU with the dequantized weights.
    dequantize = (lambda l: dense_from(cuda_bnb(l, "nf4"))) if quantization == "nf4" else int8_dequantized
    exact = fp32_logits(quantized_reference(base, dequantize).float(), inputs)
    if quantization == "int8":  # weight-only INT8 has no bitsandbytes module: bf16 dense dequantized weights
        reference = quantized_reference(base, int8_dequantized).to(torch.bfloat16).to("cuda")
    else:
        reference = quantized_reference(base, lambda l: cuda_bnb(l, kind)).to("cuda")
    cuda_inputs = {k: v.to("cuda") for k, v in inputs.items()}
    cuda_inputs["pixel_values"] = cuda_inputs["pixel_values"].to(torch.bfloat16)
    with torch.no_grad():
        expected = reference(**cuda_inputs).logits[0]
    ours = _C.SmolVLM(str(path), quantization=quantization, device="cuda")
    logits = ours.prompt_logits(inputs["input_ids"], inputs["pixel_values"], inputs["pixel_attention_mask"])[0]
    print(quantization, within_twice_reference_error(logits, expected, exact))


def dense_from(layer):
    """An fp32 CPU nn.Linear holding a bitsandbytes 4-bit layer's dequantized weight."""
    import bitsandbytes.functional as F
    weight = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float().cpu()
    dense = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None)
    dense.weight.data = weight
    if layer.bias is not None:
        dense.bias.data = layer.bias.data.float().cpu()
    return dense
