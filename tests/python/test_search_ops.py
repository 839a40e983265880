"""The search ops (torch.ops.imagetotext.ban_repeated_ngrams) against transformers' NoRepeatNGramLogitsProcessor,
the logits processor the beam search replaces with them: the same -inf entries, every other score untouched, bit
for bit on the CPU and on CUDA."""

from __future__ import annotations

import pytest
import torch

import imagetotext  # noqa: F401  (registers torch.ops.imagetotext)

transformers = pytest.importorskip("transformers")
from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor  # noqa: E402

ops = torch.ops.imagetotext
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def rows_with_repeats(rows, capacity, alphabet, seed):
    """Token rows from a few distinct ids (so n-grams repeat), spread over a large vocabulary, -1 past the end."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 12001, (alphabet,), generator=generator)
    return ids[torch.randint(0, alphabet, (rows, capacity), generator=generator)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("length", [0, 1, 2, 3, 9, 40])
def test_ban_repeated_ngrams_equals_transformers(device, n, length):
    rows, capacity, vocab = 5, 40, 12001  # a vocabulary over several of the CUDA kernel's chunks
    sequences = rows_with_repeats(rows, capacity, alphabet=3, seed=n * 100 + length)
    sequences[:, length:] = -1  # past the filled part: what the search holds there, never read
    scores = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(length))
    expected = NoRepeatNGramLogitsProcessor(n)(sequences[:, :length], scores.clone())
    ours = ops.ban_repeated_ngrams(scores.to(device), sequences.to(device), torch.tensor([length], device=device), n)
    assert torch.equal(ours.cpu(), expected)
    if length == capacity:
        assert torch.isinf(expected).any()  # (the seeds' long rows do ban something)
    assert not torch.isinf(scores).any()  # a new tensor: scores is not written


@pytest.mark.parametrize("device", DEVICES)
def test_ban_repeated_ngrams_reads_the_length_on_the_device_in_a_cuda_graph(device):
    """The search records its step once: the length is read where it lies, not baked in."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    sequences = rows_with_repeats(3, 30, alphabet=2, seed=7).to(device)
    scores = torch.randn(3, 12001, device=device)
    length = torch.tensor([5], device=device)
    if device == "cuda":
        ops.ban_repeated_ngrams(scores, sequences, length, 3)  # warm-up outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            recorded = ops.ban_repeated_ngrams(scores, sequences, length, 3)
        length.fill_(20)
        graph.replay()
        ours = recorded
    else:
        length.fill_(20)
        ours = ops.ban_repeated_ngrams(scores, sequences, length, 3)
    expected = NoRepeatNGramLogitsProcessor(3)(sequences[:, :20].cpu(), scores.cpu().clone())
    assert torch.equal(ours.cpu(), expected)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(scores=torch.zeros(2, 8, dtype=torch.float64)), "scores must be float32 \\[rows, vocab\\]"),
        (dict(scores=torch.zeros(8)), "scores must be float32 \\[rows, vocab\\]"),
        (dict(sequences=torch.zeros(3, 5, dtype=torch.long)), "sequences must be int64 \\[2, capacity\\]"),
        (dict(sequences=torch.zeros(2, 5, dtype=torch.int32)), "sequences must be int64"),
        (dict(length=torch.tensor([1, 2])), "length must be one int64"),
        (dict(length=torch.tensor([1.0])), "length must be one int64"),
        (dict(n=0), "n must be at least 1"),
    ],
)
def test_ban_repeated_ngrams_bad_arguments_raise_value_error(change, message):
    args = dict(scores=torch.zeros(2, 8), sequences=torch.zeros(2, 5, dtype=torch.long), length=torch.tensor([3]), n=2)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        ops.ban_repeated_ngrams(args["scores"], args["sequences"], args["length"], args["n"])
