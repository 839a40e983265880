"""Florence-2's processor in C++ against transformers' Florence2Processor (PIL backend, the oracle):
input_ids for the task prompts, pixel_values within one 8-bit step."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import imagetotext
from imagetotext import _C

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
PIL = pytest.importorskip("PIL.Image")

sys.path.insert(0, str(Path(__file__).parent))

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
FLORENCE_TOKENS = (["<od>", "</od>", "<ocr>", "</ocr>"] + [f"<loc_{i}>" for i in range(1000)]
                   + ["<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>", "<grounding>", "</grounding>",
                      "<seg>", "</seg>", "<sep>", "<region_cap>", "</region_cap>", "<region_to_desciption>",
                      "</region_to_desciption>", "<proposal>", "</proposal>", "<poly>", "</poly>", "<and>", "<image>"])
TASKS = ["<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>", "<OPEN_VOCABULARY_DETECTION>green car"]


def write_tokenizer(path):
    """A BART-style tokenizer.json (ByteLevel BPE, RobertaProcessing, Florence's added tokens) trained on the task
    prompts."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers
    backend = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = ["What does the image describe?", "Describe in detail what is shown in the image.",
              "Describe with a paragraph what is shown in the image.", "Locate the objects in the image.",
              "A green car parked in front of a yellow building."] * 20
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                                            special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    backend.add_special_tokens([AddedToken("<mask>", lstrip=True, normalized=False, special=True)])
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in FLORENCE_TOKENS])
    backend.save(str(path))
    return path


def florence2_processor(tokenizer_path):
    """Florence2Processor over the tokenizer, with Florence-2's preprocessor_config.json values."""
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_path), bos_token="<s>", eos_token="</s>",
                                                pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                                                extra_special_tokens={"image_token": "<image>"})
    images = transformers.CLIPImageProcessorPil(size={"height": 768, "width": 768}, resample=3, do_center_crop=False,
                                                crop_size=768, image_mean=MEAN, image_std=STD, do_convert_rgb=True)
    images.image_seq_length = 577
    return transformers.Florence2Processor(image_processor=images, tokenizer=fast,
                                           post_processor_config={"pure_text": {}})


def write_captioning_checkpoints(root, tokenizer_path):
    """A tiny Florence-2 that takes 768x768 images (577 image tokens: positions for 1024), with the tokenizer,
    saved in both layouts under root/native and root/original. Returns the transformers model."""
    import test_florence2 as tiny
    florence = florence2_processor(tokenizer_path)
    config = transformers.Florence2Config(
        vision_config=tiny.VISION,
        text_config=dict(tiny.TEXT, vocab_size=len(florence.tokenizer), max_position_embeddings=1024),
        image_token_id=florence.tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(3)
    model = transformers.Florence2ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
        model.model.language_model.shared.weight.normal_(0.0, 1.0)
    model.save_pretrained(root / "native")
    tiny.write_original(model, root / "original")
    for layout in ("native", "original"):
        (root / layout / "tokenizer.json").write_bytes(Path(tokenizer_path).read_bytes())
    model.config._attn_implementation = "eager"
    return model


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    path = write_tokenizer(tmp_path_factory.mktemp("florence2-tokenizer") / "tokenizer.json")
    return florence2_processor(path), path


def image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    # Smooth gradients plus noise: resampling errors show on both.
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1)
    return np.clip(base + rng.integers(-40, 41, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("task", TASKS)
def test_input_ids_are_the_processors(processor, task):
    florence, path = processor
    expected = florence(text=task, images=PIL.fromarray(image(32, 32)), return_tensors="pt")["input_ids"][0].tolist()
    image_token = florence.tokenizer.convert_tokens_to_ids("<image>")
    assert expected[:577] == [image_token] * 577
    assert _C.florence2_prompt_ids(imagetotext.Tokenizer.from_file(path), task) == expected[577:]


@pytest.mark.parametrize("height,width", [(300, 500), (768, 768), (1000, 200), (17, 9)])
def test_pixel_values_within_one_8_bit_step(processor, height, width):
    florence, _ = processor
    pixels = image(height, width, seed=height)
    try:
        ours = _C.florence2_pixel_values(torch.from_numpy(pixels))
    except imagetotext.ModelNotImplementedError:
        if (height, width) != (768, 768):
            pytest.skip("Pillow BICUBIC resize not merged yet")
        raise
    expected = florence(text="<CAPTION>", images=PIL.fromarray(pixels), return_tensors="pt")["pixel_values"]
    assert ours.shape == expected.shape == (1, 3, 768, 768)
    one_step = torch.tensor([1 / 255 / s for s in STD]).view(1, 3, 1, 1)
    assert ((ours - expected).abs() <= one_step + 1e-6).all()


def test_bad_pixels_are_refused():
    with pytest.raises(imagetotext.InvalidArgumentError, match="uint8 RGB"):
        _C.florence2_pixel_values(torch.zeros(8, 8, 4, dtype=torch.uint8))
    with pytest.raises(imagetotext.InvalidArgumentError, match="uint8 RGB"):
        _C.florence2_pixel_values(torch.zeros(8, 8, 3))


@pytest.mark.parametrize("text,layout,caption", [
    ("</s><s>A green car.</s>", "native", "A green car."),
    ("</s><s> A green car. </s>", "native", "A green car."),
    ("</s><s> A green car. </s>", "original", " A green car. "),
])
def test_caption_post_processing(processor, text, layout, caption):
    florence, _ = processor
    assert _C.florence2_clean_caption(text, layout) == caption
    if layout == "native":
        assert florence.post_process_generation(text, task="<DETAILED_CAPTION>", image_size=(1, 1)) == \
            {"<DETAILED_CAPTION>": caption}


# --------------------------------------------------------------------------------------------------------
# End to end: model_selector / load_model on a checkpoint directory (tokenizer, config, weights), both layouts
# --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def captioning_checkpoints(processor, tmp_path_factory):
    root = tmp_path_factory.mktemp("florence2-e2e")
    return write_captioning_checkpoints(root, processor[1]), root


def test_model_selector_captions_like_transformers(processor, captioning_checkpoints):
    florence, _ = processor
    model, root = captioning_checkpoints
    pixels = image(300, 500, seed=5)
    inputs = florence(text="<DETAILED_CAPTION>", images=PIL.fromarray(pixels), return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=20, num_beams=3, no_repeat_ngram_size=3,
                                   forced_bos_token_id=0, forced_eos_token_id=2, early_stopping=True, do_sample=False)
    text = florence.batch_decode(generated, skip_special_tokens=False)[0]
    expected = florence.post_process_generation(text, task="<DETAILED_CAPTION>", image_size=(500, 300))
    captions = {}
    for layout in ("native", "original"):
        for name in ("Florence-2-base", "Florence-2-large"):
            captioner = imagetotext._C.model_selector(name, device="cpu", checkpoint=str(root / layout),
                                                      max_new_tokens=20)
            captions[layout, name] = captioner.extract_pixels(torch.from_numpy(pixels))
    assert captions["native", "Florence-2-base"] == expected["<DETAILED_CAPTION>"]
    assert captions["native", "Florence-2-large"] == expected["<DETAILED_CAPTION>"]
    # The original processor (the service's) does not strip; the words are the same.
    assert captions["original", "Florence-2-base"].strip() == expected["<DETAILED_CAPTION>"]
    assert imagetotext._C.load_model(str(root / "original"), device="cpu", max_new_tokens=20).extract_pixels(
        torch.from_numpy(pixels)) == captions["original", "Florence-2-base"]


@pytest.mark.parametrize("name", ["Florence-2-base-int4", "Florence-2-large-int4"])
def test_int4_names_load_nf4_and_caption(captioning_checkpoints, name):
    _, root = captioning_checkpoints
    captioner = imagetotext._C.model_selector(name, device="cpu", checkpoint=str(root / "original"), max_new_tokens=8)
    assert captioner.quantization == "nf4"
    assert isinstance(captioner.extract_pixels(torch.from_numpy(image(64, 48))), str)


def test_extract_batch_captions_like_transformers_batched(processor, captioning_checkpoints, tmp_path):
    """model.extract_batch(paths) through the Python API: images of different sizes and content captioned in one
    batched generate, each caption as transformers' batched generate() on processor(text=[task] * 3, images)."""
    florence, _ = processor
    model, root = captioning_checkpoints
    arrays = [image(300, 500, seed=5), image(64, 48, seed=8), 255 - image(200, 120, seed=9)]
    paths = []
    for i, pixels in enumerate(arrays):
        paths.append(tmp_path / f"meme_{i}.png")
        PIL.fromarray(pixels).save(paths[-1])
    inputs = florence(text=["<DETAILED_CAPTION>"] * 3, images=[PIL.fromarray(a) for a in arrays], return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=20, num_beams=3, no_repeat_ngram_size=3,
                                   forced_bos_token_id=0, forced_eos_token_id=2, early_stopping=True, do_sample=False)
    expected = [florence.post_process_generation(text, task="<DETAILED_CAPTION>", image_size=(a.shape[1], a.shape[0]))
                ["<DETAILED_CAPTION>"] for text, a in zip(florence.batch_decode(generated, skip_special_tokens=False),
                                                          arrays)]
    assert len(set(expected)) > 1
    captioner = imagetotext.model_selector("Florence-2-base", device="cpu", checkpoint=root / "native",
                                           max_new_tokens=20)
    assert captioner.extract_batch(paths) == expected
    # One at a time gives the same captions.
    assert [captioner.extract(path) for path in paths] == expected
