"""imagetotext.safetensors against the safetensors package (PyPI): files of every dtype read both ways,
metadata, sharded checkpoints, and corrupted files that both libraries refuse."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

import imagetotext
import imagetotext.safetensors as ours

DTYPES = [
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16,
    torch.float32, torch.float64, torch.uint16, torch.uint32, torch.uint64, torch.float8_e4m3fn, torch.float8_e5m2,
    torch.complex64,
]


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Random bytes seen as ``dtype``, so every bit of each element is compared (NaN payloads included)."""
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    element = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (*shape[:-1], shape[-1] * element), dtype=torch.uint8, generator=generator)
    return raw.view(dtype)


def every_dtype() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    tensors = {f"layer.{str(dtype).removeprefix('torch.')}": random_tensor(dtype, (3, 5), generator) for dtype in DTYPES}
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.empty(0, 4, dtype=torch.bfloat16)
    return tensors


def assert_identical(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert actual[name].shape == tensor.shape, name
        # Compared as bytes: torch.equal has no float8 kernels and NaN != NaN.
        assert torch.equal(as_bytes(actual[name]), as_bytes(tensor)), name


def as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def test_files_written_by_safetensors_load_identically(tmp_path: Path):
    tensors = every_dtype()
    path = tmp_path / "theirs.safetensors"
    safetensors.torch.save_file(tensors, path, metadata={"format": "pt", "source": "safetensors"})
    assert_identical(ours.load_file(path), safetensors.torch.load_file(path))
    assert_identical(ours.load_file(path), tensors)
    assert ours.load_metadata(path) == {"format": "pt", "source": "safetensors"}


def test_files_written_by_us_load_identically_with_safetensors(tmp_path: Path):
    tensors = every_dtype()
    tensors["transposed"] = torch.arange(12, dtype=torch.int32).reshape(3, 4).t()  # not contiguous: we copy
    path = tmp_path / "ours.safetensors"
    ours.save_file(tensors, path, metadata={"format": "pt", "note": "ünïcode ✓"})
    assert not (tmp_path / "ours.safetensors.incomplete").exists()
    assert_identical(safetensors.torch.load_file(path), tensors)
    with safetensors.safe_open(path, framework="pt") as opened:
        assert opened.metadata() == {"format": "pt", "note": "ünïcode ✓"}


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}])
def test_bytes_match_safetensors_output(tmp_path: Path, metadata):
    # With at most one metadata key the reference's output is deterministic, so the files must be equal.
    tensors = every_dtype()
    safetensors.torch.save_file(tensors, tmp_path / "theirs.safetensors", metadata=metadata)
    ours.save_file(tensors, tmp_path / "ours.safetensors", metadata=metadata)
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "theirs.safetensors").read_bytes()


def test_loaded_tensors_alias_the_file_and_survive_in_place_writes(tmp_path: Path):
    path = tmp_path / "weights.safetensors"
    weight = torch.randn(32, 8)
    safetensors.torch.save_file({"weight": weight}, path)
    loaded = ours.load_file(path)["weight"]
    loaded.add_(1)  # copy-on-write mapping: the file keeps its bytes
    assert torch.equal(loaded, weight + 1)
    assert torch.equal(safetensors.torch.load_file(path)["weight"], weight)


def test_sharded_checkpoint_loads_through_its_index(tmp_path: Path):
    tensors = every_dtype()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, shard_names in shards.items():
        safetensors.torch.save_file({name: tensors[name] for name in shard_names}, tmp_path / shard)
        weight_map.update({name: shard for name in shard_names})
    total_size = sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": total_size}, "weight_map": weight_map}))

    assert_identical(ours.load_file(index), tensors)
    assert ours.load_metadata(index) == {"total_size": str(total_size)}
    assert_identical(imagetotext._C.load_safetensors(tmp_path)[0], tensors)  # the directory finds its index

    weight_map["missing.tensor"] = "model-00002-of-00002.safetensors"
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(imagetotext.CheckpointError, match="missing.tensor") as raised:
        ours.load_file(index)
    assert str(index) in str(raised.value) and "model-00002-of-00002.safetensors" in str(raised.value)


# ---- Corrupted files -----------------------------------------------------------------------------------------


def file_bytes(header: str | bytes, data: bytes, length: int | None = None) -> bytes:
    header = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(header) if length is None else length) + header + data


def u8(begin: int, end: int, shape: list[int] | None = None) -> dict:
    return {"dtype": "U8", "shape": [end - begin] if shape is None else shape, "data_offsets": [begin, end]}


def valid_file() -> bytes:
    return safetensors.torch.save(
        {"embed": torch.randn(4, 4), "ids": torch.arange(6), "mask": torch.ones(3, dtype=torch.bool)}
    )


def rewritten_header(edit) -> bytes:
    """A valid file whose parsed header ``edit`` changes, re-serialized with the same data section."""
    original = valid_file()
    (length,) = struct.unpack("<Q", original[:8])
    header = json.loads(original[8 : 8 + length])
    edit(header)
    return file_bytes(json.dumps(header, separators=(",", ":")), original[8 + length :])


def set_field(tensor: str, field: str, value):
    return lambda header: header[tensor].__setitem__(field, value)


CORRUPTIONS = {
    "truncated": (lambda: valid_file()[:-7], "embed"),
    "cut-in-length-field": (lambda: valid_file()[:5], "too short"),
    "header-length-beyond-file": (lambda: file_bytes("{}", b"", length=4096), "runs past the end"),
    "huge-header-length": (lambda: file_bytes("{}", b"", length=2**63), "over the 100000000-byte limit"),
    "invalid-json": (lambda: file_bytes('{"a": {"dtype": ', b""), "not valid JSON"),
    "not-utf8": (lambda: file_bytes(b'{"\xff\xfe": 1}', b""), "not valid JSON"),
    "unknown-dtype": (lambda: rewritten_header(set_field("embed", "dtype", "F31")), "unknown dtype 'F31'"),
    "wrong-size": (lambda: rewritten_header(set_field("embed", "shape", [4, 5])), "'embed' has shape [4, 5]"),
    "negative-shape": (lambda: rewritten_header(set_field("mask", "shape", [-3])), "'mask' has a shape entry"),
    "end-before-begin": (lambda: file_bytes(json.dumps({"a": u8(4, 0, [0])}), bytes(4)), "'a'"),
    "overlapping-ranges": (
        lambda: file_bytes(json.dumps({"a": u8(0, 3), "b": u8(2, 5)}), bytes(5)),
        "overlapping tensor 'a'",
    ),
    "hole-between-ranges": (lambda: file_bytes(json.dumps({"a": u8(0, 1), "b": u8(2, 4)}), bytes(4)), "'b'"),
    "out-of-range-offsets": (lambda: file_bytes(json.dumps({"a": u8(0, 64)}), bytes(8)), "'a' has data_offsets [0, 64] beyond"),
    "trailing-bytes": (lambda: file_bytes(json.dumps({"a": u8(0, 2)}), bytes(4)), "cover 2 bytes"),
    "overflowing-shape": (
        lambda: file_bytes(json.dumps({"a": {"dtype": "F64", "shape": [2**32, 2**32], "data_offsets": [0, 8]}}), bytes(8)),
        "overflows",
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupted_files_raise_checkpoint_error_naming_the_file(tmp_path: Path, case: str):
    make, fragment = CORRUPTIONS[case]
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(make())
    with pytest.raises(Exception):  # the oracle refuses the file too
        safetensors.torch.load_file(path)
    with pytest.raises(imagetotext.CheckpointError) as raised:
        ours.load_file(path)
    assert str(path) in str(raised.value)
    assert fragment in str(raised.value)


@pytest.mark.parametrize(
    "header",
    [
        '{"__metadata__":null,"a":%s}' % json.dumps(u8(0, 4)),
        '  {"a":%s}  ' % json.dumps(u8(0, 4)),
        '{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4],"unused":[1]}}',
        '{"b":%s,"a":%s}' % (json.dumps(u8(2, 4)), json.dumps(u8(0, 2))),
    ],
    ids=["null-metadata", "whitespace", "extra-field", "names-out-of-offset-order"],
)
def test_headers_the_reference_accepts_load_the_same(tmp_path: Path, header: str):
    path = tmp_path / "accepted.safetensors"
    path.write_bytes(file_bytes(header, bytes([1, 2, 3, 4])))
    assert_identical(ours.load_file(path), safetensors.torch.load_file(path))


def test_duplicate_names_are_refused(tmp_path: Path):
    # JSON can repeat a key; the reference silently keeps the last entry, which hides a broken writer.
    header = '{"a":%s,"a":%s}' % (json.dumps(u8(0, 2)), json.dumps(u8(2, 4)))
    path = tmp_path / "duplicate.safetensors"
    path.write_bytes(file_bytes(header, bytes(4)))
    with pytest.raises(imagetotext.CheckpointError, match="'a' appears more than once") as raised:
        ours.load_file(path)
    assert str(path) in str(raised.value)


def test_missing_file_and_bad_arguments(tmp_path: Path):
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(imagetotext.CheckpointError, match="not found"):
        ours.load_file(missing)
    with pytest.raises(TypeError):
        ours.save_file({"a": torch.ones(2)}, tmp_path / "bad-metadata.safetensors", metadata={"k": 1})
    with pytest.raises(imagetotext.InvalidArgumentError, match="ComplexDouble"):
        ours.save_file({"a": torch.ones(2, dtype=torch.complex128)}, tmp_path / "complex.safetensors")
    with pytest.raises(imagetotext.CheckpointError, match="no-such-dir"):
        ours.save_file({"a": torch.ones(2)}, tmp_path / "no-such-dir" / "model.safetensors")
    assert sorted(path.name for path in tmp_path.iterdir()) == []
