"""The search ops against what they replace in transformers: ban_repeated_ngrams against NoRepeatNGramLogitsProcessor
(the same -inf entries, every other score untouched), beam_search_update against the helpers of _beam_search run
for one step (the running beams, the finished hypotheses, the stop flags), bit for bit on the CPU and on CUDA."""

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


# --- beam_search_update: transformers' beam step (its _beam_search helpers) after the topk -----------------------

from transformers.generation.utils import GenerationMixin  # noqa: E402

EARLY_STOPPING = {False: 0, True: 1, "never": 2}


def random_search_state(batch, beams, vocab, capacity, prompt, cur, eos, seed):
    """A mid-search state in transformers' layout ([batch, beams, ...]): running beams sorted by score, results
    with `finished` entries first (real scores, descending) then -1e9 placeholders, beam indices -1 past each
    sequence's generated part, and accumulated log-probs for the step with the EOS tokens among the likely ones."""
    g = torch.Generator().manual_seed(seed)
    fill = eos[0] if eos else -1
    running = torch.full((batch, beams, capacity), fill, dtype=torch.long)
    running[:, :, :cur] = torch.randint(0, vocab, (batch, beams, cur), generator=g)
    running_scores = -torch.rand(batch, beams, generator=g).sort(dim=1, descending=True)[0] * 8
    running_indices = torch.full((batch, beams, capacity - prompt), -1, dtype=torch.int32)
    running_indices[:, :, : cur - prompt] = torch.randint(0, batch * beams, (batch, beams, cur - prompt), generator=g,
                                                          dtype=torch.int32)
    sequences = torch.full((batch, beams, capacity), fill, dtype=torch.long)
    scores = torch.full((batch, beams), -1.0e9)
    finished = torch.zeros(batch, beams, dtype=torch.bool)
    indices = torch.full((batch, beams, capacity - prompt), -1, dtype=torch.int32)
    for row in range(batch):
        done_count = int(torch.randint(0, beams + 1, (1,), generator=g)) if cur > prompt else 0
        real = -torch.rand(done_count, generator=g).sort(descending=True)[0] * 4
        for i in range(done_count):
            length = int(torch.randint(prompt + 1, cur + 1, (1,), generator=g))
            sequences[row, i, :length] = torch.randint(0, vocab, (length,), generator=g)
            indices[row, i, : length - prompt] = 0
            scores[row, i], finished[row, i] = real[i], True
        for i in range(done_count, beams):
            sequences[row, i, :prompt] = running[row, 0, :prompt]
    logits = torch.randn(batch * beams, vocab, generator=g) * 3
    if eos:
        logits[:, eos] += 4.0  # EOS among the top continuations in most rows
    log_probs = torch.log_softmax(logits, -1) + running_scores.reshape(-1, 1)
    return dict(running=running, running_scores=running_scores, running_indices=running_indices,
                sequences=sequences, scores=scores, finished=finished, indices=indices,
                accumulated=log_probs.reshape(batch, beams * vocab))


def transformers_step(st, batch, beams, keep, vocab, cur, prompt, max_length, eos, early_stopping, length_penalty,
                      heuristic):
    """transformers 5.17's _beam_search loop body after the log-probs, for a batch of rows (on the CPU)."""
    G = GenerationMixin
    topk_log_probs, topk_sequences, topk_indices = G._get_top_k_continuations(
        G, st["accumulated"], st["running"].clone(), st["running_indices"].clone(), cur, prompt, False, keep, beams,
        vocab, batch)
    last = topk_sequences[:, :, cur]
    hits = torch.full_like(last, cur + 1 >= max_length, dtype=torch.bool)
    if eos:
        hits |= torch.isin(last, torch.tensor(eos))
    running, running_scores, running_indices = G._get_running_beams_for_next_iteration(
        G, topk_log_probs, topk_sequences, topk_indices, hits, beams)
    mask = torch.cat((torch.ones(beams, dtype=torch.bool), torch.zeros(keep - beams, dtype=torch.bool)))
    sequences, scores, indices, finished = G._update_finished_beams(
        G, st["sequences"].clone(), topk_sequences, st["scores"].clone(), topk_log_probs, st["indices"].clone(),
        topk_indices, heuristic.clone(), st["finished"].clone(), hits, mask, beams, cur, prompt, length_penalty,
        early_stopping)
    heuristic = G._check_early_stop_heuristic(heuristic.clone(), running_scores, scores, finished, cur + 1,
                                              max_length, prompt, early_stopping, length_penalty)
    unfinished = torch.stack([
        G._beam_search_has_unfinished_sequences(heuristic[r], finished[r], hits[r], early_stopping)
        for r in range(batch)])
    lengths = prompt + (indices != -1).sum(-1)
    parents = running_indices[:, :, cur - prompt].long()
    return dict(running=running, running_scores=running_scores, parents=parents, sequences=sequences, scores=scores,
                lengths=lengths, finished=finished, heuristic=heuristic.reshape(-1), unfinished=unfinished)


BEAM_CASES = [  # batch, beams, eos, early_stopping, length_penalty, cur (prompt 2), max_length
    (1, 3, [2], False, 1.0, 6, 20),
    (1, 3, [2], True, 1.0, 9, 20),
    (2, 3, [2], "never", 0.8, 7, 20),
    (3, 2, [2, 5], False, 2.0, 5, 20),
    (2, 4, [], False, 1.0, 4, 20),
    (2, 3, [2], False, 1.0, 19, 20),  # every continuation at max_length
    (1, 3, [2], True, -0.5, 2, 20),   # the first step
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", BEAM_CASES, ids=lambda c: f"b{c[0]}-n{c[1]}-eos{len(c[2])}-{c[3]}-lp{c[4]}-cur{c[5]}")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_search_update_equals_transformers_step(device, case, seed):
    batch, beams, eos, early_stopping, length_penalty, cur, max_length = case
    vocab, capacity, prompt = 11, 24, 2
    keep = max(2, 1 + len(eos)) * beams
    st = random_search_state(batch, beams, vocab, capacity, prompt, cur, eos, seed)
    g = torch.Generator().manual_seed(seed + 100)
    heuristic = torch.rand(batch, 1, generator=g) < 0.8
    row_done = torch.zeros(batch, dtype=torch.bool)
    if batch > 1:
        row_done[-1] = True  # a row done before the step keeps its results
    expected = transformers_step(st, batch, beams, keep, vocab, cur, prompt, max_length, eos, early_stopping,
                                 length_penalty, heuristic)

    flat = lambda t: t.reshape(batch * beams, *t.shape[2:]).contiguous().to(device)  # noqa: E731
    state = [flat(st["running"]), flat(st["running_scores"]),
             torch.zeros(batch * beams, dtype=torch.long, device=device),
             flat(st["sequences"]), flat(st["scores"]),
             (prompt + (st["indices"] != -1).sum(-1)).reshape(-1).to(device), flat(st["finished"]),
             heuristic.reshape(-1).to(device), row_done.clone().to(device),
             (row_done.all().reshape(1) if batch > 1 else row_done).to(device),
             torch.tensor([cur], device=device), torch.tensor([cur - 1], device=device),
             torch.zeros(batch * beams, 1, dtype=torch.long, device=device)]
    if batch == 1:
        state[9] = state[8]  # a batch of one: done is row_done (as DeviceSearch lays it out)
    before = [t.clone() for t in state]
    penalties = torch.tensor([float(k ** length_penalty) if k else 0.0 for k in range(capacity + 1)],
                             dtype=torch.float32)
    topk_log_probs, topk_indices = torch.topk(st["accumulated"], keep)
    ops.beam_search_update(topk_log_probs.to(device), topk_indices.to(device), state,
                           torch.tensor(eos, dtype=torch.long, device=device), penalties.to(device),
                           torch.tensor([max_length], device=device), vocab, prompt, EARLY_STOPPING[early_stopping],
                           length_penalty)
    ours = [t.cpu() for t in state]
    running, running_scores, parents, sequences, scores, lengths, finished, heur, done_rows, done, cur_len, position, \
        tokens = ours
    n = batch * beams
    assert torch.equal(running_scores, expected["running_scores"].reshape(n))
    # The beams that run on with real scores; the rest are -1e9 placeholders (a continuation that hit EOS or
    # max_length), among which the topk's choice between equal scores is free.
    live = expected["running_scores"].reshape(n) > -1.0e8
    assert live.any() or cur + 1 == max_length
    assert torch.equal(running[live, : cur + 1], expected["running"].reshape(n, capacity)[live, : cur + 1])
    assert torch.equal(parents[live], expected["parents"].reshape(n)[live])
    assert cur_len.item() == cur + 1 and position.item() == cur
    assert torch.equal(tokens.reshape(n), running[:, cur])
    for row in range(batch):
        rows = slice(row * beams, (row + 1) * beams)
        if row_done[row]:
            for got, old in zip(ours[3:7], before[3:7]):
                assert torch.equal(got[rows], old.cpu()[rows]), row
            assert done_rows[row]
            continue
        assert torch.equal(scores[rows], expected["scores"][row]), row
        assert torch.equal(finished[rows], expected["finished"][row]), row
        # Hypotheses, not -1e9 placeholders: which placeholder a topk keeps among equal scores is its own
        # business (the CPU's topk and the CUDA one differ there), and no placeholder is ever a result.
        real = expected["finished"][row]
        assert torch.equal(lengths[rows][real], expected["lengths"][row][real]), row
        for i in real.nonzero().flatten().tolist():
            length = lengths[row * beams + i]
            assert torch.equal(sequences[row * beams + i, :length], expected["sequences"][row, i, :length]), (row, i)
        assert heur[row] == expected["heuristic"][row]
        assert done_rows[row] == (not expected["unfinished"][row])
    assert done.item() == bool(done_rows.all())


@pytest.mark.parametrize("device", DEVICES)
def test_beam_search_update_leaves_a_done_search_where_it_is(device):
    """Steps after the search is done (a host checking done() every few steps) change no result and no length."""
    batch, beams, keep, vocab, capacity, prompt, cur = 2, 3, 6, 11, 24, 2, 8
    st = random_search_state(batch, beams, vocab, capacity, prompt, cur, [2], seed=5)
    flat = lambda t: t.reshape(batch * beams, *t.shape[2:]).contiguous().to(device)  # noqa: E731
    state = [flat(st["running"]), flat(st["running_scores"]), torch.zeros(6, dtype=torch.long, device=device),
             flat(st["sequences"]), flat(st["scores"]), torch.full((6,), cur, device=device), flat(st["finished"]),
             torch.ones(2, dtype=torch.bool, device=device), torch.ones(2, dtype=torch.bool, device=device),
             torch.ones(1, dtype=torch.bool, device=device), torch.tensor([cur], device=device),
             torch.tensor([cur - 1], device=device), torch.zeros(6, 1, dtype=torch.long, device=device)]
    before = [t.clone() for t in state]
    topk_log_probs, topk_indices = torch.topk(st["accumulated"], keep)
    ops.beam_search_update(topk_log_probs.to(device), topk_indices.to(device), state,
                           torch.tensor([2], device=device),
                           torch.arange(capacity + 1, dtype=torch.float32, device=device),
                           torch.tensor([20], device=device), vocab, prompt, 0, 1.0)
    for i in (3, 4, 5, 6, 8, 9, 10, 11):  # the results, the flags, cur_len, position
        assert torch.equal(state[i], before[i]), i


def test_beam_search_update_bad_arguments_raise_value_error():
    def state(n=6, batch=2, capacity=8):
        return [torch.zeros(n, capacity, dtype=torch.long), torch.zeros(n), torch.zeros(n, dtype=torch.long),
                torch.zeros(n, capacity, dtype=torch.long), torch.zeros(n), torch.zeros(n, dtype=torch.long),
                torch.zeros(n, dtype=torch.bool), torch.zeros(batch, dtype=torch.bool),
                torch.zeros(batch, dtype=torch.bool), torch.zeros(1, dtype=torch.bool), torch.tensor([3]),
                torch.tensor([2]), torch.zeros(n, 1, dtype=torch.long)]

    def call(log_probs=None, indices=None, st=None, eos=None, penalties=None, early_stopping=0, prompt=2):
        ops.beam_search_update(torch.zeros(2, 6) if log_probs is None else log_probs,
                               torch.zeros(2, 6, dtype=torch.long) if indices is None else indices,
                               state() if st is None else st, torch.tensor([2]) if eos is None else eos,
                               torch.ones(9) if penalties is None else penalties, torch.tensor([8]), 11, prompt,
                               early_stopping, 1.0)

    call()  # the defaults are valid
    with pytest.raises(ValueError, match="topk_log_probs must be float32"):
        call(log_probs=torch.zeros(2, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="topk_indices must be a contiguous Long"):
        call(indices=torch.zeros(2, 6, dtype=torch.int32))
    with pytest.raises(ValueError, match="state must hold the 13 tensors"):
        call(st=state()[:12])
    with pytest.raises(ValueError, match="running_sequences must be \\[batch \\* beams, capacity\\]"):
        call(st=state(n=5))
    bad = state()
    bad[6] = torch.zeros(6, dtype=torch.long)
    with pytest.raises(ValueError, match="finished must be a contiguous Bool"):
        call(st=bad)
    bad = state()
    bad[0] = torch.zeros(8, 6, dtype=torch.long).t()
    with pytest.raises(ValueError, match="running_sequences must be a contiguous .*strided"):
        call(st=bad)
    with pytest.raises(ValueError, match="length_penalties must be a contiguous Float \\[9\\]"):
        call(penalties=torch.ones(8))
    with pytest.raises(ValueError, match="early_stopping must be 0 \\(False\\), 1 \\(True\\) or 2"):
        call(early_stopping=3)
    with pytest.raises(ValueError, match="prompt_length 9 outside 1 .. 8"):
        call(prompt=9)
    with pytest.raises(ValueError, match="2 continuations a row cannot keep 3 beams"):
        call(log_probs=torch.zeros(2, 2), indices=torch.zeros(2, 2, dtype=torch.long))


# --- greedy_advance: what SmolVLM's decode step ran as ATen ops after its logits ---------------------------------


def greedy_composition(logits, tokens, generated, step, position):
    """The ATen ops greedy_advance replaces (argmax, the token copy, index_copy_ into generated, two add_)."""
    picked = logits.argmax(-1, keepdim=True)
    tokens.copy_(picked)
    if step.item() < generated.shape[0]:
        generated.index_copy_(0, step, picked.view(1, -1))
    step.add_(1)
    position.add_(1)


def logits_with_ties(batch, vocab, dtype, seed):
    """Random logits, a few rows with repeated maxima (the first must win), some with NaN (the first NaN wins)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=generator).to(dtype)
    for row in range(0, batch, 3):
        top = logits[row].float().max()
        spots = torch.randint(0, vocab, (3,), generator=generator)
        logits[row, spots] = top.to(dtype)
    for row in range(1, batch, 4):
        logits[row, torch.randint(0, vocab, (2,), generator=generator)] = float("nan")
    for row in range(2, batch, 5):
        logits[row] = float("-inf")  # every entry equal: index 0
    return logits


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch,vocab", [(1, 49280), (1, 7), (3, 51289), (8, 2000), (40, 1500)])
@pytest.mark.parametrize("step", [0, 5, 9])
def test_greedy_advance_equals_the_aten_ops(device, dtype, batch, vocab, step):
    logits = logits_with_ties(batch, vocab, dtype, seed=batch * 7 + vocab + step)
    capacity = 9  # step 9 is past the end: nothing is written to generated
    generator = torch.Generator().manual_seed(step)
    state = [torch.randint(0, 50, (batch, 1), generator=generator),
             torch.randint(0, 50, (capacity, batch), generator=generator), torch.tensor([step]), torch.tensor([40])]
    expected = [t.clone() for t in state]
    greedy_composition(logits, *expected)
    ours = [t.to(device) for t in state]
    ops.greedy_advance(logits.to(device), *ours)
    for name, got, want in zip(["tokens", "generated", "step", "position"], ours, expected):
        assert torch.equal(got.cpu(), want), name


@pytest.mark.gpu
def test_greedy_advance_in_a_cuda_graph_reads_its_state_on_the_device():
    """Recorded once, replayed: each replay writes the next row of generated and moves step and position on."""
    batch, vocab, capacity = 2, 3000, 6
    logits = torch.randn(batch, vocab, device="cuda")
    tokens = torch.zeros(batch, 1, dtype=torch.long, device="cuda")
    generated = torch.full((capacity, batch), -1, dtype=torch.long, device="cuda")
    step, position = torch.tensor([0], device="cuda"), torch.tensor([17], device="cuda")
    ops.greedy_advance(logits, tokens, generated, step, position)  # warm-up outside the capture
    step.fill_(0), position.fill_(17), generated.fill_(-1)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.greedy_advance(logits, tokens, generated, step, position)
    expected = []
    for i in range(4):
        logits.copy_(torch.randn(batch, vocab, device="cuda"))
        graph.replay()
        expected.append(logits.argmax(-1))
    torch.cuda.synchronize()
    assert torch.equal(generated[:4], torch.stack(expected))
    assert (generated[4:] == -1).all()
    assert step.item() == 4 and position.item() == 21
    assert torch.equal(tokens.view(-1), expected[-1])


def test_greedy_advance_bad_arguments_raise_value_error():
    def call(logits=None, tokens=None, generated=None, step=None, position=None):
        ops.greedy_advance(torch.zeros(2, 8) if logits is None else logits,
                           torch.zeros(2, 1, dtype=torch.long) if tokens is None else tokens,
                           torch.zeros(5, 2, dtype=torch.long) if generated is None else generated,
                           torch.tensor([0]) if step is None else step, torch.tensor([3]) if position is None else position)

    call()  # the defaults are valid
    with pytest.raises(ValueError, match="logits must be float32, float16 or bfloat16 \\[batch, vocab\\]"):
        call(logits=torch.zeros(2, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="logits must be float32, float16 or bfloat16 \\[batch, vocab\\]"):
        call(logits=torch.zeros(8))
    with pytest.raises(ValueError, match="logits' rows must be contiguous"):
        call(logits=torch.zeros(8, 2).t())
    with pytest.raises(ValueError, match="tokens must be a contiguous int64 \\[2, 1\\]"):
        call(tokens=torch.zeros(2, 1, dtype=torch.int32))
    with pytest.raises(ValueError, match="generated must be a contiguous int64 \\[5, 2\\]"):
        call(generated=torch.zeros(2, 5, dtype=torch.long).t())
    with pytest.raises(ValueError, match="generated must be int64 \\[capacity, 2\\]"):
        call(generated=torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="step must be a contiguous int64 \\[1\\]"):
        call(step=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="position must be a contiguous int64 \\[1\\]"):
        call(position=torch.tensor([3.0]))
