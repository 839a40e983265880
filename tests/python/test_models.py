"""model_selector, available_models and the test model, as the service uses them."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import imagetotext
from conftest import needs_codecs

# The service's app/constants.py list plus the quantized variants its plans (shared/seeds/) add.
SERVICE_MODELS = ["test", "Florence-2-base", "Florence-2-large", "SmolVLM-256M-Instruct", "SmolVLM-500M-Instruct",
                  "moondream2", "moondream2-int8"]
SEED_MODELS = ["Florence-2-base-int4", "Florence-2-large-int4", "SmolVLM-256M-Instruct-int8",
               "SmolVLM-500M-Instruct-int8"]


def test_available_models_cover_the_service_and_the_seeds():
    assert sorted(imagetotext.available_models) == sorted(SERVICE_MODELS + SEED_MODELS)
    assert imagetotext.available_models[0] == "test"
    assert imagetotext.default_model == "Florence-2-base"


def test_registry_rows_name_hub_ids():
    rows = {row["name"]: row for row in imagetotext.model_registry()}
    assert rows["SmolVLM-256M-Instruct-int8"]["repo_id"] == "HuggingFaceTB/SmolVLM-256M-Instruct"
    assert rows["SmolVLM-256M-Instruct-int8"]["quantization"] == "int8"
    assert rows["Florence-2-base-int4"]["quantization"] == "nf4"
    assert rows["moondream2"]["revision"] == "2025-01-09"


@needs_codecs
def test_test_model_extract_matches_the_service(tmp_path):
    path = tmp_path / "funny_cat.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    model = imagetotext.model_selector("test", test_delay=0)
    assert model.model_id == "test-dummy-model"
    assert model.downloaded is False
    model.download()
    model.download()  # idempotent
    assert model.downloaded is True
    # TestImageToText.extract: f"Test description for {Path(image_path).stem}"
    assert model.extract(path) == f"Test description for {Path(path).stem}"
    assert model.extract(str(path)) == "Test description for funny_cat"
    assert model.extract_batch([path, path]) == ["Test description for funny_cat"] * 2


def test_test_model_from_pixels():
    model = imagetotext.model_selector("test", test_delay=0)
    assert model.extract_pixels(torch.zeros(4, 5, 3, dtype=torch.uint8), "pixels") == "Test description for pixels"
    with pytest.raises(ValueError, match="uint8"):
        model.extract_pixels(torch.zeros(4, 5, 3), "floats")


def test_test_model_delay_defaults_to_the_services_second_and_is_configurable():
    pixels = torch.zeros(2, 2, 3, dtype=torch.uint8)
    start = time.monotonic()
    imagetotext.model_selector("test").extract_pixels(pixels)
    assert time.monotonic() - start >= 1.0
    start = time.monotonic()
    imagetotext.model_selector("test", test_delay=0.05).extract_pixels(pixels)
    assert 0.05 <= time.monotonic() - start < 1.0


def test_unknown_model_raises_value_error_listing_the_names():
    with pytest.raises(ValueError) as caught:
        imagetotext.model_selector("Florence-3")
    message = str(caught.value)
    assert "Florence-3" in message
    assert all(name in message for name in imagetotext.available_models)


@pytest.mark.parametrize("name", [n for n in SERVICE_MODELS + SEED_MODELS
                                  if n != "test" and "SmolVLM" not in n and "Florence" not in n])
def test_models_not_built_yet_raise_not_implemented_error_naming_them(name):
    with pytest.raises(NotImplementedError, match=name):
        imagetotext.model_selector(name)


@needs_codecs
def test_bad_images_through_extract(tmp_path):
    model = imagetotext.model_selector("test", test_delay=0)
    with pytest.raises(FileNotFoundError):
        model.extract(tmp_path / "missing.jpg")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match="corrupt.jpg"):
        model.extract(corrupt)


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "mps:0"])
def test_unknown_devices_are_refused(device):
    with pytest.raises(ValueError, match=f"unknown device '{device}'"):
        imagetotext.model_selector("test", device=device)


def test_eight_threads_share_one_model_without_mixing_results():
    model = imagetotext.model_selector("test", test_delay=0.001)
    failures = []

    def worker(t):
        for i in range(25):
            name = f"img-{t}-{i}"
            caption = model.extract_pixels(torch.zeros(2, 2, 3, dtype=torch.uint8), name)
            if caption != f"Test description for {name}":
                failures.append(caption)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_extract_releases_the_gil():
    # While one thread sleeps inside a native extract, Python code in another thread keeps running.
    model = imagetotext.model_selector("test", test_delay=0.5)
    ticks = []
    worker = threading.Thread(target=model.extract_pixels, args=(torch.zeros(2, 2, 3, dtype=torch.uint8),))
    worker.start()
    while worker.is_alive():
        ticks.append(time.monotonic())
        time.sleep(0.01)
    assert len(ticks) > 10
