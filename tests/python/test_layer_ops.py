"""The fused layer ops (torch.ops.imagetotext.rms_norm, rotary, silu_mul, decode_attention,
append_decode_attention, reorder_cache_rows) against the modules they replace: transformers' LlamaRMSNorm and
apply_rotary_pos_emb (before the cache's index_copy_), F.silu, F.scaled_dot_product_attention over the
filled part of the cache with the key/value heads repeated (transformers' repeat_kv), and the beam search's
index_select of the cache rows. On the CPU the ops are the ATen compositions the layers used (bit-identical); on
CUDA one kernel each (two for the attention), within float32 summation-order rounding (fp32) or one bf16 step of
the largest value (bf16)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import imagetotext  # noqa: F401  (registers torch.ops.imagetotext)

transformers = pytest.importorskip("transformers")
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb  # noqa: E402

ops = torch.ops.imagetotext
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def needs(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")


def close(ours, expected, dtype, device):
    if device == "cpu":
        torch.testing.assert_close(ours, expected, rtol=0, atol=0)
        return
    scale = expected.abs().max().item() or 1.0
    bound = 1e-5 if dtype == torch.float32 else 2 ** -7
    assert (ours.float() - expected.float()).abs().max().item() <= bound * scale


def llama_norm(size, eps, device, dtype):
    """transformers' LlamaRMSNorm with a random weight (seeded by the caller)."""
    module = LlamaRMSNorm(size, eps=eps)
    with torch.no_grad():
        module.weight.normal_()
    return module.to(device, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 576), (2, 7, 960), (3, 64), (1, 5, 33), (2, 2560), (1, 3000)])
def test_rms_norm_matches_llama(device, dtype, shape):
    needs(device)
    torch.manual_seed(0)
    module = llama_norm(shape[-1], 1e-5, device, dtype)
    x = (torch.randn(shape) * 3).to(device, dtype)
    with torch.no_grad():
        expected = module(x)
    close(ops.rms_norm(x, module.weight.detach(), 1e-5), expected, dtype, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch, heads, length, dim", [(1, 9, 1, 64), (2, 3, 17, 64), (1, 5, 4, 128), (1, 2, 3, 6)])
def test_rotary_matches_transformers(device, dtype, batch, heads, length, dim):
    needs(device)
    torch.manual_seed(1)
    # As the model makes it: [batch, length, heads, dim] viewed as [batch, heads, length, dim] (not contiguous).
    x = torch.randn(batch, length, heads, dim).to(device, dtype).transpose(1, 2)
    angles = torch.rand(length, dim // 2) * 50
    angles = torch.cat([angles, angles], -1)
    cos, sin = angles.cos().to(device, dtype), angles.sin().to(device, dtype)
    expected, _ = apply_rotary_pos_emb(x, x, cos[None], sin[None])
    close(ops.rotary(x, cos, sin), expected, dtype, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul_matches_torch(device, dtype):
    needs(device)
    torch.manual_seed(2)
    gate, up = (torch.randn(3, 1, 1536) * 4).to(device, dtype), torch.randn(3, 1, 1536).to(device, dtype)
    close(ops.silu_mul(gate, up), F.silu(gate) * up, dtype, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul_reads_the_halves_of_a_stacked_projection(device, dtype):
    """gate and up as views into one [..., 2 * width] output (the stacked gate/up projection): no copy needed,
    same result as on contiguous tensors."""
    needs(device)
    torch.manual_seed(5)
    stacked = torch.randn(2, 3, 2 * 40).to(device, dtype)
    gate, up = stacked.split([40, 40], dim=-1)
    assert not gate.is_contiguous()
    # Same formula, rounded alike; ATen's CPU silu takes a different (vectorized or not) path for a strided
    # input, so the bound is the dtype's own tolerance, not bit equality.
    torch.testing.assert_close(ops.silu_mul(gate, up), F.silu(gate.contiguous()) * up.contiguous())
    # A view whose leading dims do not collapse still works (copied first).
    strided = torch.randn(4, 6, 40).to(device, dtype)[:, ::2]
    torch.testing.assert_close(ops.silu_mul(strided, strided), F.silu(strided.contiguous()) * strided.contiguous())


def reference_attention(query, keys, values, position):
    group = query.shape[1] // keys.shape[1]
    k = keys[:, :, :position + 1].repeat_interleave(group, dim=1).float()
    v = values[:, :, :position + 1].repeat_interleave(group, dim=1).float()
    return F.scaled_dot_product_attention(query.float(), k, v)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch, heads, kv_heads, dim",
                         [(1, 9, 3, 64), (1, 15, 5, 64), (3, 4, 4, 32), (1, 8, 2, 128), (2, 4, 2, 16), (1, 2, 1, 80)])
@pytest.mark.parametrize("position, capacity", [(0, 320), (63, 320), (64, 320), (200, 320), (319, 320),
                                                (1237, 1280), (8999, 9000)])
def test_decode_attention_matches_sdpa(device, dtype, batch, heads, kv_heads, dim, position, capacity):
    """Capacities of one to 128 CUDA CTAs a head (a CTA takes 64 positions a round at head_dim 64 or less, a head
    at most 128 CTAs: 9000 positions take two rounds a CTA)."""
    needs(device)
    torch.manual_seed(3)
    query = torch.randn(batch, heads, 1, dim).to(device, dtype)
    keys = (torch.randn(batch, kv_heads, capacity, dim) * 2).to(device, dtype)
    values = torch.randn(batch, kv_heads, capacity, dim).to(device, dtype)
    # Whatever lies past the position must not matter, even NaN written by an earlier, longer request.
    keys[:, :, position + 1:] = float("nan")
    values[:, :, position + 1:] = float("nan")
    expected = reference_attention(query, keys, values, position)
    where = torch.tensor([position], device=device)
    ours = ops.decode_attention(query, keys, values, where, dim ** -0.5)
    assert ours.shape == query.shape and ours.dtype == dtype
    scale = expected.abs().max().item()
    bound = 1e-5 if dtype == torch.float32 else 2 ** -7
    assert (ours.float() - expected).abs().max().item() <= bound * scale


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, shared, heads, kv_heads, dim", [(1, 3, 16, 16, 64), (2, 3, 12, 12, 64),
                                                                 (2, 2, 9, 3, 64), (3, 4, 4, 2, 16)])
@pytest.mark.parametrize("position, capacity", [(576, 640), (5, 64), (1000, 1024)])
def test_decode_attention_over_rows_shared_by_sequences(device, dtype, rows, shared, heads, kv_heads, dim, position,
                                                        capacity):
    """Keys and values held once for `shared` consecutive sequences (an image's beams over its encoder output): the
    same as SDPA over the rows repeated per sequence (transformers' expanded encoder output), with and without
    left padding."""
    needs(device)
    torch.manual_seed(6)
    batch = rows * shared
    query = torch.randn(batch, heads, 1, dim).to(device, dtype)
    keys = (torch.randn(rows, kv_heads, capacity, dim) * 2).to(device, dtype)
    values = torch.randn(rows, kv_heads, capacity, dim).to(device, dtype)
    keys[:, :, position + 1:] = float("nan")
    values[:, :, position + 1:] = float("nan")
    per_sequence_keys, per_sequence_values = (t.repeat_interleave(shared, dim=0) for t in (keys, values))
    expected = reference_attention(query, per_sequence_keys, per_sequence_values, position)
    where = torch.tensor([position], device=device)
    ours = ops.decode_attention(query, keys, values, where, dim ** -0.5)
    assert ours.shape == query.shape and ours.dtype == dtype
    bound = 1e-5 if dtype == torch.float32 else 2 ** -7
    assert (ours.float() - expected).abs().max().item() <= bound * expected.abs().max().item()
    # Per sequence, the kernels sum in the same order whether a row is shared or repeated.
    repeated = ops.decode_attention(query, per_sequence_keys.contiguous(), per_sequence_values.contiguous(), where,
                                    dim ** -0.5)
    if device == "cuda":
        assert torch.equal(ours, repeated)
    else:
        torch.testing.assert_close(ours, repeated)
    first = (torch.arange(batch) * 7 % (position + 1)).to(device)
    padded = ops.decode_attention(query, keys, values, where, dim ** -0.5, first)
    torch.testing.assert_close(padded, ops.decode_attention(query, per_sequence_keys.contiguous(),
                                                            per_sequence_values.contiguous(), where, dim ** -0.5, first))


def decoder_step(device, dtype, batch, heads, kv_heads, dim, capacity, per_sequence, seed):
    """q, k, v as the decoder has them (views of one stacked projection [batch, 1, (heads + 2 kv_heads) dim]),
    cos and sin for the step's position (one row) or for each row of a left-padded batch (a row each), and
    random caches."""
    torch.manual_seed(seed)
    stacked = torch.randn(batch, 1, (heads + 2 * kv_heads) * dim).to(device, dtype)
    q, k, v = (t.view(batch, 1, -1, dim).transpose(1, 2) for t in stacked.split([heads * dim, kv_heads * dim,
                                                                                kv_heads * dim], -1))
    angles = torch.rand(batch if per_sequence else 1, dim // 2) * 50
    angles = torch.cat([angles, angles], -1)
    cos, sin = angles.cos().to(device, dtype), angles.sin().to(device, dtype)
    keys, values = (torch.randn(batch, kv_heads, capacity, dim).to(device, dtype) for _ in range(2))
    return q, k, v, cos, sin, keys, values


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch, heads, kv_heads, dim, per_sequence", [(1, 9, 3, 64, False), (3, 4, 2, 16, True),
                                                                       (2, 2, 2, 6, False), (1, 15, 5, 64, False),
                                                                       (2, 4, 2, 80, True)])
@pytest.mark.parametrize("position", [0, 5, 70, 199])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("rotated", [True, False])
def test_append_decode_attention_is_rotary_then_index_copy_then_attention(device, dtype, batch, heads, kv_heads,
                                                                          dim, per_sequence, position, padded,
                                                                          rotated):
    """The cache holds the key (transformers' rotated key, for a rotary model) and the value at the position and
    nothing else changed; the output is decode_attention of the query (transformers' rotated query) over that
    cache, bit for bit where the rotation rounds alike: everywhere but rotated float32 on CUDA, whose products
    fuse into FMAs."""
    needs(device)
    capacity = 200
    q, k, v, cos, sin, keys, values = decoder_step(device, dtype, batch, heads, kv_heads, dim, capacity, per_sequence,
                                                   seed=7 + position)
    before_keys, before_values = keys.clone(), values.clone()
    # Padding that moves a chunk's rounds past its end (row 1 from 10: the first chunk's rounds reach position 73,
    # the second chunk's new position 70 among them, dead there).
    first = torch.tensor([min(s, position) for s in (0, 10, 37)[:batch]], device=device) if padded else None
    where = torch.tensor([position], device=device)
    if rotated:
        ours = ops.append_decode_attention(q, k, v, keys, values, where, dim ** -0.5, cos, sin, first)
        # transformers: cos, sin [batch or 1, length 1, dim], unsqueezed to broadcast over the heads.
        expected_q, expected_k = apply_rotary_pos_emb(q, k, cos[:, None], sin[:, None], unsqueeze_dim=1)
        close(keys[:, :, position:position + 1], expected_k, dtype, device)
    else:
        ours = ops.append_decode_attention(q, k, v, keys, values, where, dim ** -0.5, first=first)
        expected_q = q
        assert torch.equal(keys[:, :, position:position + 1], k)
    assert torch.equal(values[:, :, position:position + 1], v)
    others = [p for p in range(capacity) if p != position]
    assert torch.equal(keys[:, :, others], before_keys[:, :, others])
    assert torch.equal(values[:, :, others], before_values[:, :, others])
    expected = ops.decode_attention(expected_q.contiguous(), keys, values, where, dim ** -0.5, first)
    assert ours.shape == expected.shape and ours.dtype == dtype
    if rotated and device == "cuda" and dtype == torch.float32:
        close(ours, expected, dtype, device)
    else:
        assert torch.equal(ours, expected)
    if not padded:  # and the attention itself against SDPA
        reference = reference_attention(expected_q, keys, values, position)
        assert (ours.float() - reference).abs().max().item() <= (1e-5 if dtype == torch.float32 else 2 ** -7) * \
            reference.abs().max().item()


@pytest.mark.parametrize("device", DEVICES)
def test_append_decode_attention_past_the_capacity(device):
    """The host keeps a step inside the cache: on the CPU a position past it throws, on CUDA (where the position
    lives on the device) nothing is written, nothing outside the buffers is touched, and the step attends to the
    whole cache as decode_attention does."""
    needs(device)
    torch.manual_seed(9)
    q, k = torch.randn(1, 2, 1, 8, device=device), torch.randn(1, 1, 1, 8, device=device)
    cos, sin = torch.ones(1, 8, device=device), torch.zeros(1, 8, device=device)
    keys, values = torch.randn(1, 1, 4, 8, device=device), torch.randn(1, 1, 4, 8, device=device)
    before_keys, before_values = keys.clone(), values.clone()
    position = torch.tensor([4], device=device)
    if device == "cpu":
        with pytest.raises(IndexError):
            ops.append_decode_attention(q, k, k, keys, values, position, 1.0, cos, sin)
        return
    ours = ops.append_decode_attention(q, k, k, keys, values, position, 1.0, cos, sin)  # cos 1, sin 0: no rotation
    assert torch.equal(keys, before_keys) and torch.equal(values, before_values)
    torch.testing.assert_close(ours, ops.decode_attention(q.contiguous(), keys, values, position, 1.0))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, dim", [(torch.bfloat16, 64), (torch.bfloat16, 7), (torch.float32, 6),
                                        (torch.float16, 512)])
@pytest.mark.parametrize("caches", [1, 12, 70])
@pytest.mark.parametrize("position", [0, 37, 255])
def test_reorder_cache_rows_is_index_select_up_to_the_position(device, dtype, dim, caches, position):
    """Every cache's rows become index_select(0, order) at positions 0 .. position, with rows swapped and repeated,
    through 16-, 4- and 2-byte copies, more caches than one launch takes, and rows too wide to stage on CUDA
    (dim 512: moved whole). Past the position nothing moves, except in that whole-row case."""
    needs(device)
    torch.manual_seed(11)
    batch, kv_heads, capacity = (3, 2, 256) if dim != 512 else (40, 1, 256)
    buffers = [torch.randn(batch, kv_heads, capacity, dim).to(device, dtype) for _ in range(caches)]
    before = [b.clone() for b in buffers]
    order = torch.tensor([2, 0, 0] if batch == 3 else list(range(batch - 1, -1, -1)), device=device)
    ops.reorder_cache_rows(buffers, order, torch.tensor([position], device=device))
    moved = position + 1
    for ours, old in zip(buffers, before):
        assert torch.equal(ours[:, :, :moved], old[:, :, :moved].index_select(0, order))
        if dim != 512:
            assert torch.equal(ours[:, :, moved:], old[:, :, moved:])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads, kv_heads, dim", [(9, 3, 64), (4, 2, 16)])
@pytest.mark.parametrize("position", [40, 200])
def test_decode_attention_skips_each_rows_left_padding(device, dtype, heads, kv_heads, dim, position):
    """A left-padded batch: row b attends to first[b] .. position, as SDPA with transformers' padding mask."""
    needs(device)
    torch.manual_seed(4)
    batch, capacity = 4, 256
    first = torch.tensor([0, 1, 17, position])  # no padding, one position, many, all but the newest
    query = torch.randn(batch, heads, 1, dim).to(device, dtype)
    keys = (torch.randn(batch, kv_heads, capacity, dim) * 2).to(device, dtype)
    values = torch.randn(batch, kv_heads, capacity, dim).to(device, dtype)
    for row, start in enumerate(first.tolist()):  # padding keys that would dominate any softmax they entered
        keys[row, :, :start] = 50.0
        values[row, :, :start] = 1000.0
    keys[:, :, position + 1:] = float("nan")
    values[:, :, position + 1:] = float("nan")
    group = heads // kv_heads
    k = keys[:, :, :position + 1].repeat_interleave(group, dim=1).float()
    v = values[:, :, :position + 1].repeat_interleave(group, dim=1).float()
    mask = (torch.arange(position + 1)[None, :] >= first[:, None]).view(batch, 1, 1, position + 1).to(device)
    expected = F.scaled_dot_product_attention(query.float(), k, v, attn_mask=mask)
    where = torch.tensor([position], device=device)
    ours = ops.decode_attention(query, keys, values, where, dim ** -0.5, first.to(device))
    assert ours.shape == query.shape and ours.dtype == dtype
    scale = expected.abs().max().item()
    assert scale < 100  # the padding stayed out
    bound = 1e-5 if dtype == torch.float32 else 2 ** -7
    assert (ours.float() - expected).abs().max().item() <= bound * scale
    # A row with first 0 is the unpadded op's row: on CUDA the same kernel sums in the same order.
    unpadded = ops.decode_attention(query[:1], keys[:1], values[:1], where, dim ** -0.5)
    if device == "cuda":
        assert torch.equal(ours[:1], unpadded)
    else:
        torch.testing.assert_close(ours[:1], unpadded)


def test_bad_arguments_name_the_problem():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="rms_norm: weight must be"):
        ops.rms_norm(x, torch.ones(7), 1e-5)
    with pytest.raises(ValueError, match="share one floating dtype"):
        ops.rms_norm(x, torch.ones(8, dtype=torch.float64), 1e-5)
    with pytest.raises(ValueError, match="rotary: x must be"):
        ops.rotary(x, x, x)
    with pytest.raises(ValueError, match="rotary: cos and sin must be"):
        ops.rotary(torch.randn(1, 2, 3, 4), torch.randn(3, 2), torch.randn(3, 2))
    with pytest.raises(ValueError, match="silu_mul"):
        ops.silu_mul(x, torch.randn(2, 9))
    q, kv = torch.randn(1, 6, 1, 8), torch.randn(1, 4, 10, 8)
    with pytest.raises(ValueError, match="kv_heads dividing"):
        ops.decode_attention(q, kv, kv, torch.tensor([3]), 1.0)
    with pytest.raises(ValueError, match="rows dividing 3"):  # 2 rows of keys for 3 sequences
        ops.decode_attention(torch.randn(3, 4, 1, 8), kv.expand(2, -1, -1, -1), kv.expand(2, -1, -1, -1),
                             torch.tensor([3]), 1.0)
    with pytest.raises(ValueError, match="position must be one int64"):
        ops.decode_attention(q, kv[:, :3], kv[:, :3], torch.tensor([3.0]), 1.0)
    with pytest.raises(ValueError, match="query must be"):
        ops.decode_attention(torch.randn(1, 6, 2, 8), kv[:, :3], kv[:, :3], torch.tensor([3]), 1.0)
    with pytest.raises(ValueError, match="first must be int64"):
        ops.decode_attention(q, kv[:, :3], kv[:, :3], torch.tensor([3]), 1.0, torch.tensor([0, 0]))
    k1, cache, cs, at = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 10, 8), torch.randn(1, 8), torch.tensor([3])

    def ada(query, key, value, cos, sin, keys, values, position, scale, first=None):
        return ops.append_decode_attention(query, key, value, keys, values, position, scale, cos, sin, first)

    with pytest.raises(ValueError, match="append_decode_attention: query must be"):
        ada(torch.randn(1, 6, 2, 8), k1, k1, cs, cs, cache, cache.clone(), at, 1.0)
    with pytest.raises(ValueError, match="key and value must be"):
        ada(q, kv[:, :1, :1], k1, cs, cs, cache, cache.clone(), at, 1.0)
    with pytest.raises(ValueError, match="cos and sin must be"):
        ada(q, k1, k1, torch.randn(2, 8), cs, cache, cache.clone(), at, 1.0)
    with pytest.raises(ValueError, match="cos and sin come together"):
        ada(q, k1, k1, cs, None, cache, cache.clone(), at, 1.0)
    with pytest.raises(ValueError, match="a rotated head_dim must be even"):
        ada(q[..., :7], k1[..., :7], k1[..., :7], cs[:, :7], cs[:, :7], cache[..., :7].contiguous(),
            cache[..., :7].contiguous(), at, 1.0)
    with pytest.raises(ValueError, match="must be contiguous"):
        ada(q, k1, k1, cs, cs, cache.transpose(1, 2).contiguous().transpose(1, 2), cache, at, 1.0)
    with pytest.raises(ValueError, match="match the query's dtype"):
        ada(q, k1, k1, cs.double(), cs, cache, cache.clone(), at, 1.0)
    with pytest.raises(ValueError, match="append_decode_attention: position must be one int64"):
        ada(q, k1, k1, cs, cs, cache, cache.clone(), torch.tensor([3, 4]), 1.0)
    with pytest.raises(ValueError, match="append_decode_attention: keys and values must be .rows dividing 1, kv_heads dividing 5"):
        ada(torch.randn(1, 5, 1, 8), k1, k1, cs, cs, cache, cache.clone(), at, 1.0)
    with pytest.raises(ValueError, match="append_decode_attention: first must be int64"):
        ada(q, k1, k1, cs, cs, cache, cache.clone(), at, 1.0, torch.tensor([0.0]))
    with pytest.raises(ValueError, match="reorder_cache_rows: no caches"):
        ops.reorder_cache_rows([], torch.tensor([0]), at)
    with pytest.raises(ValueError, match="reorder_cache_rows: every cache must match the first"):
        ops.reorder_cache_rows([cache, cache[:, :1].contiguous()], torch.tensor([0]), at)
    with pytest.raises(ValueError, match="reorder_cache_rows: caches must be contiguous"):
        ops.reorder_cache_rows([cache.transpose(2, 3)], torch.tensor([0]), at)
    with pytest.raises(ValueError, match="reorder_cache_rows: order must be int64 .1."):
        ops.reorder_cache_rows([cache], torch.tensor([0, 0]), at)
    with pytest.raises(ValueError, match="reorder_cache_rows: position must be one int64"):
        ops.reorder_cache_rows([cache], torch.tensor([0]), torch.tensor([1.0]))
    with pytest.raises(IndexError):  # the CPU's index_select checks the order's values
        ops.reorder_cache_rows([cache], torch.tensor([1]), at)
