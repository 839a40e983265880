"""The service swap: the meme-search job flow over imagetotext.model_init, the weight cache, threads, the GIL,
load_model and errors.

The flow test runs the service's own sequence (peers.md section 1.4: validate the image, model_selector(name),
download(), extract(path) for every job, jobs taken from a queue by one worker thread) and counts weight loads
with imagetotext.cache_info()["loads"]. It runs for the `test` model here and, unchanged, for the SmolVLM and
Florence-2 families when their tiny-checkpoint fixtures (tiny_smolvlm_checkpoint, tiny_florence2_checkpoint)
exist in conftest.py.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import imagetotext
from imagetotext import model_init
from conftest import needs_codecs

pytestmark = needs_codecs


@pytest.fixture(autouse=True)
def fast_test_model(monkeypatch):
    # The service's TestImageToText sleeps 1 s per image; the flow is the same with 10 ms.
    monkeypatch.setattr(model_init.TestImageToText, "delay", 0.01)
    imagetotext.clear_cache()
    yield
    imagetotext.clear_cache()


def write_images(folder: Path, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        path = folder / f"meme_{i:02d}.png"
        Image.new("RGB", (32 + i, 24), (10 * i % 256, 80, 160)).save(path)
        paths.append(path)
    return paths


# --- the service's code, as in meme-search's app/image_to_text_generator.py and app/jobs.py -----------------


class PermanentError(Exception):
    pass


class TransientError(Exception):
    pass


def validate_image(image_path: Path) -> None:
    if not image_path.exists():
        raise PermanentError(f"Image not found: {image_path}")
    with Image.open(image_path) as image:
        image.verify()


def download_model(model_name: str):
    try:
        current_model = model_init.model_selector(model_name)
        current_model.download()
        return current_model
    except Exception as error:
        raise TransientError(f"Model download failed: {error}") from error


def image_to_text(image_path: Path, model_name: str) -> str:
    validate_image(image_path)
    current_model = download_model(model_name)
    try:
        return current_model.extract(image_path)
    except MemoryError as error:
        raise TransientError(f"Out of memory: {error}") from error
    except Exception as error:
        raise TransientError(f"Image processing failed: {error}") from error


def process_jobs(jobs: queue.Queue, results: list, loads_after_each_job: list) -> None:
    while True:
        job = jobs.get()
        if job is None:
            return
        try:
            results.append((job["image_path"].stem, image_to_text(job["image_path"], job["model"])))
        except (PermanentError, TransientError) as error:
            results.append((job["image_path"].stem, f"Error: {error}"))
        loads_after_each_job.append(imagetotext.cache_info()["loads"])


def run_service_flow(tmp_path: Path, model_name: str, jobs_count: int = 4) -> tuple[list, list]:
    paths = write_images(tmp_path, jobs_count)
    jobs: queue.Queue = queue.Queue()
    results: list = []
    loads: list = []
    worker = threading.Thread(target=process_jobs, args=(jobs, results, loads), daemon=True)
    worker.start()
    for path in paths:
        jobs.put({"image_path": path, "model": model_name})
    jobs.put(None)
    worker.join(timeout=600)
    assert not worker.is_alive()
    return results, loads


# --- the flow, for every family that has a model here ---------------------------------------------------------


def test_service_flow_loads_the_test_model_once(tmp_path):
    loads_before = imagetotext.cache_info()["loads"]
    results, loads = run_service_flow(tmp_path, "test", jobs_count=5)
    assert results == [(f"meme_{i:02d}", f"Test description for meme_{i:02d}") for i in range(5)]
    # Job 1 loads; jobs 2..5 build a new object and call download() as the service does, and load nothing.
    assert loads == [loads_before + 1] * 5


@pytest.mark.parametrize("family, fixture, class_name", [
    ("SmolVLM", "tiny_smolvlm_checkpoint", "SmolVLM256ImageToText"),
    ("Florence-2", "tiny_florence2_checkpoint", "Florence2BaseImageToText"),
])
def test_service_flow_with_tiny_real_checkpoints(tmp_path, request, monkeypatch, family, fixture, class_name):
    # The model issues' tests build tiny random checkpoints; when that fixture exists, the same flow runs on
    # one: model_init's class for the family loads it through its model_id (the service passes a hub id).
    try:
        checkpoint = request.getfixturevalue(fixture)
    except pytest.FixtureLookupError:
        pytest.skip(f"no {fixture} fixture yet (the {family} family's tests provide it)")
    cls = getattr(model_init, class_name)
    original_init = cls.__init__
    monkeypatch.setattr(cls, "__init__", lambda self, model_id, revision: original_init(self, str(checkpoint), revision))
    name = cls.registry_name
    loads_before = imagetotext.cache_info()["loads"]
    results, loads = run_service_flow(tmp_path, name, jobs_count=3)
    assert all(not caption.startswith("Error:") for _, caption in results), results
    assert loads == [loads_before + 1] * 3


# --- model_init: the service's module ---------------------------------------------------------------------------

# The service's model_selector arguments, and the seeds' quantized classes.
SELECTOR = {
    "test": ("TestImageToText", "test-dummy-model"),
    "Florence-2-base": ("Florence2BaseImageToText", "microsoft/Florence-2-base"),
    "Florence-2-large": ("Florence2LargeImageToText", "microsoft/Florence-2-large"),
    "Florence-2-base-int4": ("Florence2BaseQuantizedImageToText", "microsoft/Florence-2-base"),
    "Florence-2-large-int4": ("Florence2LargeQuantizedImageToText", "microsoft/Florence-2-large"),
    "SmolVLM-256M-Instruct": ("SmolVLM256ImageToText", "HuggingFaceTB/SmolVLM-256M-Instruct"),
    "SmolVLM-500M-Instruct": ("SmolVLM500ImageToText", "HuggingFaceTB/SmolVLM-500M-Instruct"),
    "SmolVLM-256M-Instruct-int8": ("SmolVLM256QuantizedImageToText", "HuggingFaceTB/SmolVLM-256M-Instruct"),
    "SmolVLM-500M-Instruct-int8": ("SmolVLM500QuantizedImageToText", "HuggingFaceTB/SmolVLM-500M-Instruct"),
    "moondream2": ("MoondreamImageToText", "vikhyatk/moondream2"),
    "moondream2-int8": ("MoondreamQuantizedImageToText", "vikhyatk/moondream2"),
}


@pytest.mark.parametrize("name", sorted(SELECTOR))
def test_model_init_selector_classes_and_attributes(name):
    class_name, model_id = SELECTOR[name]
    model = model_init.model_selector(name)
    assert type(model) is getattr(model_init, class_name)
    assert model.model_id == model_id
    assert model.downloaded is False
    if name != "test":
        assert model.model is None
        assert model.revision == ("2025-01-09" if name == "moondream2-int8" else "2024-08-26")
    if name.startswith(("Florence", "SmolVLM")):
        assert model.processor is None
    if name == "moondream2":
        assert model.tokenizer is None
    if name == "moondream2-int8":
        assert not hasattr(model, "tokenizer")


def test_model_init_offers_the_service_module_names():
    assert sorted(model_init.available_models) == sorted(SELECTOR)
    assert model_init.default_model == "Florence-2-base"
    assert model_init.device in ("cuda", "cpu")
    assert model_init.torch_dtype == (torch.float16 if torch.cuda.is_available() else torch.float32)
    with pytest.raises(ValueError, match="Florence-3"):
        model_init.model_selector("Florence-3")


def test_model_init_download_is_idempotent_and_extract_downloads(tmp_path):
    [path] = write_images(tmp_path, 1)
    model = model_init.model_selector("test")
    assert model.extract(path) == "Test description for meme_00"  # downloads on first use
    assert model.downloaded is True and model.model is not None
    model.download()
    assert model.extract_batch([path, str(path)]) == ["Test description for meme_00"] * 2


def test_model_init_load_rgb_image_returns_the_services_pil_image(tmp_path):
    # The service's rule: RGBA composited on white; an RGBA(255, 0, 0, 128) pixel becomes (255, 127, 127).
    path = tmp_path / "half_red.png"
    Image.new("RGBA", (3, 2), (255, 0, 0, 128)).save(path)
    image = model_init.load_rgb_image(path)
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (3, 2)
    assert image.getpixel((0, 0)) == (255, 127, 127)


# --- the cache, threads and the GIL --------------------------------------------------------------------------


def test_unload_and_clear_cache_free_weights_and_the_next_call_reloads(tmp_path):
    [path] = write_images(tmp_path, 1)
    model = imagetotext.model_selector("test", test_delay=0)
    model.download()
    info = imagetotext.cache_info()
    assert [m["name"] for m in info["models"] if m["loaded"]] == ["test"]
    assert imagetotext.unload("test") == 1
    assert model.downloaded is False
    assert imagetotext.cache_info()["models"] == []
    assert model.extract(path) == "Test description for meme_00"
    assert imagetotext.cache_info()["loads"] == info["loads"] + 1
    assert imagetotext.clear_cache() == 1
    assert imagetotext.unload("test") == 0


def test_eight_threads_extract_concurrently_and_get_their_own_captions(tmp_path):
    paths = write_images(tmp_path, 8)
    loads_before = imagetotext.cache_info()["loads"]
    captions: dict[int, list[str]] = {}

    def worker(t):
        # Each thread builds its own object, as the service's per-job model_selector does.
        model = model_init.model_selector("test")
        captions[t] = [model.extract(paths[t]) for _ in range(5)]

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert captions == {t: [f"Test description for meme_{t:02d}"] * 5 for t in range(8)}
    assert imagetotext.cache_info()["loads"] == loads_before + 1


def test_a_slow_extract_releases_the_gil(tmp_path):
    [path] = write_images(tmp_path, 1)
    model = imagetotext.model_selector("test", test_delay=0.5)
    model.download()
    counter = 0
    done = threading.Event()

    def count():
        nonlocal counter
        while not done.is_set():
            counter += 1

    counting = threading.Thread(target=count)
    counting.start()
    start = time.monotonic()
    model.extract(path)
    done.set()
    counting.join()
    assert time.monotonic() - start >= 0.5
    assert counter > 1000  # the other thread ran Python code throughout the native sleep


def test_batches_decode_every_file_first_and_name_the_bad_one(tmp_path):
    paths = write_images(tmp_path, 3)
    model = imagetotext.model_selector("test", test_delay=0)
    assert model.extract_batch(paths) == [f"Test description for meme_{i:02d}" for i in range(3)]
    with pytest.raises(FileNotFoundError, match="missing.png"):
        model.extract_batch([paths[0], tmp_path / "missing.png"])
    pixels = [torch.zeros(4, 4, 3, dtype=torch.uint8)] * 2
    assert model.extract_pixels_batch(pixels, ["a", "b"]) == ["Test description for a", "Test description for b"]
    with pytest.raises(ValueError, match="names"):
        model.extract_pixels_batch(pixels, ["a"])


def test_caption_takes_paths_tensors_and_pil_images(tmp_path):
    [path] = write_images(tmp_path, 1)
    model = imagetotext.model_selector("test", test_delay=0)
    assert model.caption(path) == "Test description for meme_00"
    assert model.caption(str(path)) == "Test description for meme_00"
    assert model.caption(torch.zeros(3, 3, 3, dtype=torch.uint8)) == "Test description for image"
    with Image.open(path) as image:
        assert model.caption(image) == "Test description for meme_00"
    with pytest.raises(ValueError, match="int"):
        model.caption(42)
    # The test family fixes its settings at load; asking another max_new_tokens per call is refused clearly.
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.caption(path, max_new_tokens=5)


def test_model_selector_options_are_checked():
    with pytest.raises(ValueError, match="quantization 'int3'"):
        imagetotext.model_selector("test", quantization="int3")
    with pytest.raises(ValueError, match="dtype 'float8'"):
        imagetotext.model_selector("test", dtype="float8").download()
    model = imagetotext.model_selector("test", quantization="nf4")
    assert model.quantization == "nf4" and model.family == "test"


# --- load_model ------------------------------------------------------------------------------------------------


def test_load_model_reads_the_family_from_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(imagetotext.CheckpointError, match="bert") as caught:
        imagetotext.load_model(tmp_path)
    assert isinstance(caught.value, RuntimeError) and str(tmp_path) in str(caught.value)
    for model_type, family in [("florence2", "Florence-2"), ("idefics3", "SmolVLM"), ("smolvlm", "SmolVLM"),
                               ("moondream1", "moondream2")]:
        (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
        try:
            model = imagetotext.load_model(tmp_path, quantization="nf4")
        except NotImplementedError as error:  # the family is not in this build yet
            assert family in str(error)
        else:
            assert model.family == family and model.model_id == str(tmp_path) and model.quantization == "nf4"


def test_load_model_without_a_config_names_the_checkpoint(tmp_path):
    with pytest.raises(imagetotext.CheckpointError, match="config.json"):
        imagetotext.load_model(tmp_path)
