"""gemm_4bit, gemm_int8_weight_only and gemm_dense (the dense layers' matmul) against the float formula, and the
CUDA quantization kernels against the CPU ones (which tests/python/test_quant.py holds bit-exact with
bitsandbytes).

Error bound of a gemm output (reference: the weight dequantized to float32 by the existing ops, then a
float64 matmul, so the reference itself adds no error). With u the unit roundoff of A's dtype (2^-8 bf16,
2^-11 fp16, 2^-24 fp32) and S = sum_k |a_k * w_k|, every path computes
  - the K products and their sum in float32, in any order: at most K * 2^-24 * S (the worst-case bound
    of recursive summation; the fused GEMV's per-chunk scaling is one more float32 rounding per term;
    tensor cores may truncate instead of round their float32 additions, so K * 2^-23 * S for them);
  - on the dequantize + matmul path, each weight rounded to A's dtype first: at most u * S;
  - on the tensor-core GEMV (float16/bfloat16 A, up to 64 rows), a 4-bit weight is the code value and the
    absmax each rounded to A's dtype, then their product rounded: at most 3u * S (no cuBLAS split-K term
    on that path; an INT8 weight is exact there);
  - the output (and the bias addition) rounded to A's dtype: at most u * (S + |bias|) each;
  - cuBLAS may reduce split-K partial sums in half precision (torch's default allows it): one more u * S.
So |out - ref| <= (4u + K * 2^-23) * S + 2u * |bias|, checked elementwise. It is a worst case, not a
statistical estimate, and still tight enough to catch a wrong nibble, block or row (those move an output
by about |a_k w_k| for a single k, far more than u * S when the error is systematic).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from imagetotext import quant

ops = torch.ops.imagetotext
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 2.0**-24}


def random_tensor(shape, dtype, seed, scale=1.0, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * scale).to(dtype).to(device)


def assert_within_bound(out, A, weight_f32, bias):
    """out vs A @ weight.T + bias in float64, within the bound of the module docstring."""
    assert out.dtype == A.dtype and out.shape == (*A.shape[:-1], weight_f32.shape[0])
    a = A.double().reshape(-1, A.shape[-1])
    w = weight_f32.double().to(a.device)
    ref = a @ w.T
    magnitude = a.abs() @ w.abs().T
    u = UNIT_ROUNDOFF[A.dtype]
    bound = (4 * u + A.shape[-1] * 2.0**-23) * magnitude
    if bias is not None:
        ref = ref + bias.double()
        bound = bound + 2 * u * bias.double().abs()
    error = (out.double().reshape(ref.shape) - ref).abs()
    assert torch.isfinite(out).all()
    excess = (error - bound).max().item() if error.numel() else 0.0
    assert excess <= 0.0, f"max error over the bound by {excess:.3g} (max error {error.max().item():.3g})"


def quantized_4bit(N, K, quant_type="nf4", blocksize=64, compress_statistics=True, seed=1, device="cpu"):
    weight = random_tensor((N, K), torch.float32, seed, 0.05)
    packed, state = quant.quantize_4bit(weight.to(device), blocksize, quant_type, compress_statistics)
    dequantized = quant.dequantize_4bit(packed, state)  # float32: the state's dtype
    return packed, state, dequantized


def quantized_int8(N, K, seed=1, device="cpu"):
    weight = random_tensor((N, K), torch.float16, seed, 0.05)  # bitsandbytes quantizes fp16 weights
    CB, SCB, _ = quant.int8_vectorwise_quant(weight.to(device))
    return CB, SCB, quant.int8_vectorwise_dequant(CB, SCB)


# ---- CPU: the reference kernels against the formula ----------------------------------------------

CPU_CASES = [(1, 96, 128), (3, 64, 576), (17, 40, 1040), (2, 33, 1000), (5, 8, 7)]  # (M, N, K); K odd too


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,N,K", CPU_CASES)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_gemm_4bit_cpu_within_bound(M, N, K, dtype, quant_type):
    packed, state, weight = quantized_4bit(N, K, quant_type)
    A = random_tensor((M, K), dtype, seed=M + K)
    bias = random_tensor((N,), dtype, seed=7)
    assert_within_bound(quant.gemm_4bit(A, packed, state), A, weight, None)
    assert_within_bound(quant.gemm_4bit(A, packed, state, bias), A, weight, bias)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,N,K", CPU_CASES)
def test_gemm_int8_cpu_within_bound(M, N, K, dtype):
    CB, SCB, weight = quantized_int8(N, K)
    A = random_tensor((M, K), dtype, seed=M + K)
    bias = random_tensor((N,), dtype, seed=7)
    assert_within_bound(quant.gemm_int8_weight_only(A, CB, SCB), A, weight, None)
    assert_within_bound(quant.gemm_int8_weight_only(A, CB, SCB, bias), A, weight, bias)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,N,K", CPU_CASES)
def test_gemm_dense_cpu_is_matmul_then_bias(M, N, K, dtype):
    """On the CPU the dense layers keep the composition the models' oracle tests hold to transformers."""
    weight = random_tensor((N, K), dtype, seed=N + K, scale=0.05)
    A = random_tensor((2, M, K), dtype, seed=M + K)
    bias = random_tensor((N,), dtype, seed=7)
    assert torch.equal(ops.gemm_dense(A, weight, None), torch.matmul(A, weight.t()))
    assert torch.equal(ops.gemm_dense(A, weight, bias), torch.matmul(A, weight.t()) + bias)
    assert_within_bound(ops.gemm_dense(A, weight, bias), A, weight.float(), bias)


def test_gemm_takes_leading_dimensions_and_non_contiguous_activations():
    packed, state, weight = quantized_4bit(24, 64)
    A = random_tensor((64, 2, 3), torch.bfloat16, seed=3).permute(1, 2, 0)  # [2, 3, 64], non-contiguous
    out = quant.gemm_4bit(A, packed, state)
    assert out.shape == (2, 3, 24)
    assert_within_bound(out, A, weight, None)
    CB, SCB, weight8 = quantized_int8(24, 64)
    assert_within_bound(quant.gemm_int8_weight_only(A, CB, SCB), A, weight8, None)


def test_gemm_4bit_plain_and_nested_absmax_agree():
    A = random_tensor((3, 128), torch.float32, seed=5)
    packed, nested_state, _ = quantized_4bit(16, 128, compress_statistics=True)
    plain_absmax = nested_state.absmax if not nested_state.nested else None
    assert plain_absmax is None  # the nested state goes through its de-nesting
    direct = ops.gemm_4bit(A, packed, torch.ops.imagetotext.dequantize_blockwise(
        nested_state.absmax, nested_state.state2.absmax, nested_state.state2.code, 256, torch.float32
    ) + nested_state.offset, 64, "nf4", [16, 128], None)
    assert torch.equal(quant.gemm_4bit(A, packed, nested_state), direct)


# ---- errors -------------------------------------------------------------------------------------

PACKED, STATE, _ = quantized_4bit(8, 64, compress_statistics=False)
CB8, SCB8, _ = quantized_int8(8, 64)
A64 = torch.randn(2, 64)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: ops.gemm_4bit(A64, PACKED, STATE.absmax, 64, "nf4", [8, 64, 1], None),
         "weight_shape must be \\[out_features, in_features\\]"),
        (lambda: ops.gemm_4bit(torch.randn(2, 32), PACKED, STATE.absmax, 64, "nf4", [8, 64], None),
         "A must be \\[..., K\\] with K = 64"),
        (lambda: ops.gemm_4bit(A64, PACKED, STATE.absmax, 64, "nf4", [8, 32], None), "packed must hold 128"),
        (lambda: ops.gemm_4bit(A64, PACKED, STATE.absmax, 32, "nf4", [8, 64], None), "absmax must hold 16"),
        (lambda: ops.gemm_4bit(A64.double(), PACKED, STATE.absmax, 64, "nf4", [8, 64], None),
         "A must be float32, float16 or bfloat16"),
        (lambda: ops.gemm_4bit(A64, PACKED, STATE.absmax, 64, "nf5", [8, 64], None), "quant_type must be"),
        (lambda: quant.gemm_4bit(A64, PACKED, STATE, torch.randn(7)), "bias must be 1-D \\[8\\]"),
        (lambda: quant.gemm_4bit(A64, PACKED, STATE, torch.randn(8).half()), "bias must be Float"),
        (lambda: quant.gemm_int8_weight_only(A64, CB8.float(), SCB8), "CB must be Char"),
        (lambda: quant.gemm_int8_weight_only(A64, CB8, SCB8[:4]), "SCB must hold 8"),
        (lambda: quant.gemm_int8_weight_only(A64[:, :32], CB8, SCB8), "A must be \\[..., K\\] with K = 64"),
        (lambda: quant.gemm_int8_weight_only(A64, CB8.reshape(-1), SCB8), "CB must be 2-D"),
        (lambda: quant.gemm_int8_weight_only(A64, CB8, SCB8, torch.randn(8, 1)), "bias must be 1-D"),
        (lambda: ops.gemm_dense(A64, torch.randn(8, 64).half(), None), "weight must be Float"),
        (lambda: ops.gemm_dense(A64, torch.randn(8, 32), None), "A must be \\[..., K\\] with K = 32"),
        (lambda: ops.gemm_dense(A64, torch.randn(512), None), "weight must be 2-D"),
        (lambda: ops.gemm_dense(A64, torch.randn(8, 64), torch.randn(9)), "bias must be 1-D \\[8\\]"),
        (lambda: ops.gemm_dense(A64.long(), torch.randn(8, 64).long(), None), "A must be float32, float16 or bfloat16"),
    ],
)
def test_gemm_bad_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


META = torch.device("meta")


def test_gemm_meta_shapes_and_device_mix():
    out = ops.gemm_4bit(torch.empty(2, 5, 64, device=META, dtype=torch.float16), PACKED.to(META),
                        STATE.absmax.to(META), 64, "nf4", [8, 64], None)
    assert out.shape == (2, 5, 8) and out.dtype == torch.float16 and out.device == META
    out = ops.gemm_int8_weight_only(torch.empty(3, 64, device=META), CB8.to(META), SCB8.to(META), None)
    assert out.shape == (3, 8) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="packed must be on the device of A"):
        ops.gemm_4bit(A64.to(META), PACKED, STATE.absmax, 64, "nf4", [8, 64], None)
    with pytest.raises(ValueError, match="CB must be on the device of A"):
        ops.gemm_int8_weight_only(A64.to(META), CB8, SCB8.to(META), None)
    out = ops.gemm_dense(torch.empty(3, 64, device=META), torch.empty(8, 64, device=META), None)
    assert out.shape == (3, 8) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="weight must be on the device of A"):
        ops.gemm_dense(A64.to(META), torch.empty(8, 64), None)


# ---- fusions: the input normed or gated, gelu and a residual after (ops::GemmFusion) ------------------
# The composition is the definition: rms_norm and silu_mul are held to transformers' LlamaRMSNorm and
# act_fn(gate) * up in test_layer_ops.py, layer_norm and gelu are torch's own, and the sum rounds as ATen's add.
# CPU kernels compose it; the CUDA GEMVs fuse it (the SIMT GEMV for one row, the tensor-core GEMV a LayerNorm
# input and several rows).

FUSIONS = {
    "norm": dict(norm=True),
    "gated": dict(gated=True),
    "residual": dict(residual=True),
    "norm+residual": dict(norm=True, residual=True),
    "gated+residual": dict(gated=True, residual=True),
    "layer_norm": dict(norm=True, layer=True),
    "layer_norm+normed_out": dict(norm=True, layer=True, normed_out=True),
    "norm+normed_out": dict(norm=True, normed_out=True),
    "gelu": dict(gelu=True),
    "layer_norm+normed_out+gelu": dict(norm=True, layer=True, normed_out=True, gelu=True),
    "gelu+residual": dict(gelu=True, residual=True),
}


def fusion_arguments(fusion, M, N, K, dtype, device, seed=0):
    """(A, keyword arguments of the gemm ops) for a FUSIONS entry: A [M, 2K] when gated."""
    A = random_tensor((M, 2 * K if fusion.get("gated") else K), dtype, seed=seed + M, device=device)
    kwargs = {}
    if fusion.get("norm"):
        kwargs["norm_weight"] = (1 + random_tensor((K,), dtype, seed=seed + 1, scale=0.2)).to(device)
        kwargs["norm_eps"] = 1e-5
    if fusion.get("layer"):
        kwargs["norm_bias"] = random_tensor((K,), dtype, seed=seed + 3, scale=0.2, device=device)
    if fusion.get("normed_out"):
        kwargs["normed_out"] = torch.full_like(A, float("nan"))
    if fusion.get("gated"):
        kwargs["gated"] = True
    if fusion.get("gelu"):
        kwargs["gelu"] = True
    if fusion.get("residual"):
        kwargs["residual"] = random_tensor((M, N), dtype, seed=seed + 2, device=device)
    return A, kwargs


def composed_input(A, norm_weight=None, norm_eps=1e-6, gated=False, norm_bias=None, **_):
    if norm_bias is not None:
        return torch.nn.functional.layer_norm(A, (A.shape[-1],), norm_weight, norm_bias, norm_eps)
    if norm_weight is not None:
        return ops.rms_norm(A, norm_weight, norm_eps)
    if gated:
        K = A.shape[-1] // 2
        return ops.silu_mul(A[..., :K], A[..., K:])
    return A


def gemm_of_kind(kind, weights, A, bias=None, **kwargs):
    """The gemm op of a weight kind ('dense' weights are float32, used in A's dtype)."""
    if kind == "dense":
        return ops.gemm_dense(A, weights.to(A.dtype), bias, **kwargs)
    if kind == "int8":
        CB, SCB, _ = weights
        return ops.gemm_int8_weight_only(A, CB, SCB, bias, **kwargs)
    packed, state, _ = weights
    positional = [state.blocksize, kind, list(state.shape)]
    return ops.gemm_4bit(A, packed, plain_absmax(state), *positional, bias, **kwargs)


def plain_absmax(state):
    if not state.nested:
        return state.absmax
    nested = state.state2
    return ops.dequantize_blockwise(state.absmax, nested.absmax, nested.code, 256, torch.float32) + state.offset


def composed_gemm(kind, weights, A, bias=None, residual=None, gelu=False, **input_kwargs):
    out = gemm_of_kind(kind, weights, composed_input(A, **input_kwargs), bias)
    if gelu:
        out = torch.nn.functional.gelu(out)
    return out if residual is None else residual + out


def weights_of_kind(kind, N, K, device):
    if kind == "int8":
        return quantized_int8(N, K, device=device)
    if kind == "dense":
        return random_tensor((N, K), torch.float32, seed=N + K, scale=0.05, device=device)
    return quantized_4bit(N, K, kind, device=device)


@pytest.mark.parametrize("fusion", list(FUSIONS))
@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("kind", ["nf4", "int8", "dense"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gemm_fusion_cpu_is_the_composition(dtype, kind, M, fusion):
    N, K = 40, 128
    weights = weights_of_kind(kind, N, K, "cpu")
    A, kwargs = fusion_arguments(FUSIONS[fusion], M, N, K, dtype, "cpu")
    bias = random_tensor((N,), dtype, seed=5)
    assert torch.equal(gemm_of_kind(kind, weights, A, bias, **kwargs), composed_gemm(kind, weights, A, bias, **kwargs))
    if "normed_out" in kwargs:
        assert torch.equal(kwargs["normed_out"], composed_input(A, **kwargs))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(norm_weight=torch.ones(32)), "norm_weight must be \\[K\\] for A \\[..., K\\]"),
        (dict(norm_weight=torch.ones(64).half()), "norm_weight must be Float"),
        (dict(norm_weight=torch.ones(64), gated=True), "norm_weight and gated cannot both be given"),
        (dict(norm_weight=torch.ones(64), norm_eps=-1.0), "norm_eps must be >= 0"),
        (dict(residual=torch.zeros(2, 9)), "residual must have the output's shape \\[2, 8\\]"),
        (dict(residual=torch.zeros(2, 8).half()), "residual must be Float"),
        (dict(norm_bias=torch.zeros(64)), "norm_bias and normed_out need norm_weight"),
        (dict(norm_weight=torch.ones(64), norm_bias=torch.zeros(63)), "norm_bias must be \\[K\\] for A"),
        (dict(norm_weight=torch.ones(64), normed_out=torch.zeros(2, 63)), "normed_out must have A's shape \\[2, 64\\]"),
        (dict(norm_weight=torch.ones(64), normed_out=torch.zeros(2, 64).half()), "normed_out must be Float"),
    ],
)
@pytest.mark.parametrize("kind", ["nf4", "int8", "dense"])
def test_gemm_fusion_bad_arguments_raise_value_error(kind, kwargs, message):
    weights = {"nf4": (PACKED, STATE, None), "int8": (CB8, SCB8, None), "dense": torch.randn(8, 64)}[kind]
    with pytest.raises(ValueError, match=message):
        gemm_of_kind(kind, weights, A64, **kwargs)
    with pytest.raises(ValueError, match=message):  # the meta kernels check alike
        meta_state = SimpleNamespace(absmax=STATE.absmax.to(META), blocksize=64, shape=STATE.shape, nested=False)
        meta_weights = {"nf4": (PACKED.to(META), meta_state, None), "int8": (CB8.to(META), SCB8.to(META), None),
                        "dense": torch.empty(8, 64, device=META)}[kind]
        meta_kwargs = {key: value.to(META) if torch.is_tensor(value) else value for key, value in kwargs.items()}
        gemm_of_kind(kind, meta_weights, A64.to(META), **meta_kwargs)


def test_gemm_fusion_gated_needs_an_even_width_and_twice_k():
    with pytest.raises(ValueError, match="gated needs A \\[..., 2K\\]"):
        ops.gemm_dense(torch.randn(2, 63), torch.randn(8, 64), None, gated=True)
    with pytest.raises(ValueError, match="A must be \\[..., K\\] with K = 64"):
        ops.gemm_dense(A64, torch.randn(8, 64), None, gated=True)  # the halves are 32 wide
    out = ops.gemm_dense(torch.empty(2, 128, device=META), torch.empty(8, 64, device=META), None, gated=True)
    assert out.shape == (2, 8)


# ---- GPU: the CUDA kernels ----------------------------------------------------------------------

QUANT_SHAPES = [(576, 576), (1536, 576), (17, 1025), (3, 5137), (1, 17), (5, 1), (1, 0)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", QUANT_SHAPES)
@pytest.mark.parametrize("blocksize", [64, 32, 128, 4096])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_cuda_4bit_ops_equal_cpu(quant_type, blocksize, shape, dtype):
    A = random_tensor(shape, dtype, seed=sum(shape))
    packed, absmax = ops.quantize_4bit(A, blocksize, quant_type)
    packed_gpu, absmax_gpu = ops.quantize_4bit(A.cuda(), blocksize, quant_type)
    assert torch.equal(packed_gpu.cpu(), packed) and torch.equal(absmax_gpu.cpu(), absmax)
    for out_dtype in DTYPES:
        expected = ops.dequantize_4bit(packed, absmax, blocksize, quant_type, list(shape), out_dtype)
        got = ops.dequantize_4bit(packed.cuda(), absmax.cuda(), blocksize, quant_type, list(shape), out_dtype)
        assert torch.equal(got.cpu(), expected)


@pytest.mark.gpu
def test_cuda_4bit_ops_edge_values_and_unaligned_packed():
    A = torch.tensor([[1.0, -1.0, 0.5, 0.0, -0.001, 0.001] + [0.0] * 58 + [0.0] * 64 + [3.0]])  # zero block, odd n
    for quant_type in ("nf4", "fp4"):
        packed, absmax = ops.quantize_4bit(A, 64, quant_type)
        packed_gpu, absmax_gpu = ops.quantize_4bit(A.cuda(), 64, quant_type)
        assert torch.equal(packed_gpu.cpu(), packed) and torch.equal(absmax_gpu.cpu(), absmax)
    # A packed view that starts one byte in: the dequantize kernel's byte-by-byte path.
    B = random_tensor((3, 130), torch.float32, seed=2)
    packed, absmax = ops.quantize_4bit(B, 64, "nf4")
    storage = torch.cat([torch.zeros(1, 1, dtype=torch.uint8), packed]).cuda()
    got = ops.dequantize_4bit(storage[1:], absmax.cuda(), 64, "nf4", [3, 130], torch.bfloat16)
    assert torch.equal(got.cpu(), ops.dequantize_4bit(packed, absmax, 64, "nf4", [3, 130], torch.bfloat16))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", QUANT_SHAPES)
@pytest.mark.parametrize("blocksize", [256, 4096, 100])
def test_cuda_blockwise_ops_equal_cpu(blocksize, shape, dtype):
    A = random_tensor(shape, dtype, seed=sum(shape))
    code = quant.create_dynamic_map()
    q, absmax = ops.quantize_blockwise(A, code, blocksize)
    q_gpu, absmax_gpu = ops.quantize_blockwise(A.cuda(), code.cuda(), blocksize)
    assert torch.equal(q_gpu.cpu(), q) and torch.equal(absmax_gpu.cpu(), absmax)
    for out_dtype in DTYPES:
        expected = ops.dequantize_blockwise(q, absmax, code, blocksize, out_dtype)
        got = ops.dequantize_blockwise(q.cuda(), absmax.cuda(), code.cuda(), blocksize, out_dtype)
        assert torch.equal(got.cpu(), expected)


@pytest.mark.gpu
@pytest.mark.parametrize("compress_statistics", [True, False])
def test_cuda_quant_state_round_trip_equals_cpu(compress_statistics):
    A = random_tensor((1536, 576), torch.bfloat16, seed=4)
    packed, state = quant.quantize_4bit(A, 64, "nf4", compress_statistics)
    packed_gpu, state_gpu = quant.quantize_4bit(A.cuda(), 64, "nf4", compress_statistics)
    assert torch.equal(packed_gpu.cpu(), packed) and torch.equal(state_gpu.absmax.cpu(), state.absmax)
    assert torch.equal(quant.dequantize_4bit(packed_gpu, state_gpu).cpu(), quant.dequantize_4bit(packed, state))


def weight_with_outliers(shape, dtype, seed=0):
    A = random_tensor(shape, torch.float32, seed)
    A[:, 3] *= 20.0  # a column of outliers
    if shape[0] > 2:
        A[2, :] = 0.0  # an all-zero row
    return A.to(dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(576, 576), (1536, 576), (17, 1025), (1, 17), (5, 5137)])
@pytest.mark.parametrize("threshold", [0.0, 6.0, 5.3])
def test_cuda_int8_ops_equal_cpu(threshold, shape, dtype):
    A = weight_with_outliers(shape, dtype, seed=sum(shape))
    CB, SCB, cols = quant.int8_vectorwise_quant(A, threshold)
    CB_gpu, SCB_gpu, cols_gpu = quant.int8_vectorwise_quant(A.cuda(), threshold)
    assert torch.equal(CB_gpu.cpu(), CB) and torch.equal(SCB_gpu.cpu(), SCB)
    assert (cols is None and cols_gpu is None) or torch.equal(cols_gpu.cpu(), cols)
    assert torch.equal(quant.int8_vectorwise_dequant(CB.cuda(), SCB.cuda()).cpu(), quant.int8_vectorwise_dequant(CB, SCB))
    dequantize = torch.ops.imagetotext.int8_vectorwise_dequant
    assert torch.equal(dequantize(CB.cuda(), SCB.cuda(), dtype).cpu(), dequantize(CB, SCB, dtype))


GPU_MS = [1, 2, 3, 4, 8, 9, 16, 24, 33, 64, 65, 512]  # the tensor-core GEMV's 1, 2, 4, 8 m-tiles, full and partial
# (N, K): 72 ends in half a 16-row tile; K = 1040 takes the fallback for 4-bit (not a multiple of 32) but the
# GEMV for INT8 (a multiple of 16, with a partial last step), 1000 the fallback for both.
GPU_SHAPES = [(576, 576), (1536, 576), (4096, 4096), (72, 320), (576, 1040), (320, 1000)]


@pytest.fixture(scope="module")
def cuda_weights():
    cache = {}

    def get(kind, N, K):
        if (kind, N, K) not in cache:
            if kind == "int8":
                cache[kind, N, K] = quantized_int8(N, K, device="cuda")
            elif kind == "dense":
                cache[kind, N, K] = random_tensor((N, K), torch.float32, seed=N + K, scale=0.05, device="cuda")
            else:
                cache[kind, N, K] = quantized_4bit(N, K, kind, device="cuda")
        return cache[kind, N, K]

    return get


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,K", GPU_SHAPES)
@pytest.mark.parametrize("M", GPU_MS)
@pytest.mark.parametrize("kind", ["nf4", "fp4", "int8", "dense"])
def test_cuda_gemm_within_bound(kind, M, N, K, dtype, cuda_weights):
    A = random_tensor((M, K), dtype, seed=M * 7 + K, device="cuda")
    bias = random_tensor((N,), dtype, seed=N, device="cuda") if M % 2 == 0 else None
    if kind == "dense":  # the dense weight in A's dtype: the GEMV for one row, cuBLAS above
        weight = cuda_weights(kind, N, K).to(dtype)
        out = ops.gemm_dense(A, weight, bias)
        weight = weight.float()
    elif kind == "int8":
        CB, SCB, weight = cuda_weights(kind, N, K)
        out = quant.gemm_int8_weight_only(A, CB, SCB, bias)
    else:
        packed, state, weight = cuda_weights(kind, N, K)
        out = quant.gemm_4bit(A, packed, state, bias)
    assert out.is_cuda
    assert_within_bound(out, A, weight, bias)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [1, 5, 16, 40])
@pytest.mark.parametrize("blocksize", [32, 128, 4096])
@pytest.mark.parametrize("compress_statistics", [False, True])
def test_cuda_gemm_4bit_blocksizes(compress_statistics, blocksize, M, dtype):
    # Blocks of 32 change scale from one 16-byte chunk to the next; 4096 spans a whole row of K = 4096.
    N, K = 40, 4096
    weight = random_tensor((N, K), torch.float32, seed=blocksize, scale=0.05)
    packed, state = quant.quantize_4bit(weight.cuda(), blocksize, "nf4", compress_statistics)
    A = random_tensor((M, K), dtype, seed=M, device="cuda")
    bias = random_tensor((N,), dtype, seed=3, device="cuda")
    assert_within_bound(quant.gemm_4bit(A, packed, state, bias), A, quant.dequantize_4bit(packed, state), bias)


@pytest.mark.gpu
def test_cuda_gemm_is_deterministic_and_writes_every_output():
    packed, state, _ = quantized_4bit(4096, 4096, device="cuda")
    A = random_tensor((3, 4096), torch.bfloat16, seed=11, device="cuda")
    first = quant.gemm_4bit(A, packed, state)
    for _ in range(3):
        torch.empty_like(first).fill_(float("nan"))  # poison the allocator's next block
        assert torch.equal(quant.gemm_4bit(A, packed, state), first)
    assert torch.isfinite(first).all()


@pytest.mark.gpu
def test_cuda_gemm_unaligned_activation_takes_the_fallback():
    packed, state, weight = quantized_4bit(64, 128, device="cuda")
    storage = random_tensor((2 * 128 + 1,), torch.bfloat16, seed=9, device="cuda")
    A = storage[1:].view(2, 128)  # 2-byte offset: not 16-byte aligned
    assert_within_bound(quant.gemm_4bit(A, packed, state), A, weight, None)
    dense = weight.to(torch.bfloat16)
    assert_within_bound(ops.gemm_dense(A, dense, None), A, dense.float(), None)
    odd = random_tensor((40, 129), torch.bfloat16, seed=4, device="cuda")  # K not whole 16-byte chunks
    A_odd = random_tensor((1, 129), torch.bfloat16, seed=5, device="cuda")
    assert_within_bound(ops.gemm_dense(A_odd, odd, None), A_odd, odd.float(), None)


@pytest.mark.gpu
def test_cuda_gemm_device_mix_raises_value_error():
    packed, state, _ = quantized_4bit(8, 64, compress_statistics=False)
    CB, SCB, _ = quantized_int8(8, 64)
    A = torch.randn(2, 64, device="cuda")
    with pytest.raises(ValueError, match="packed must be on the device of A"):
        ops.gemm_4bit(A, packed, state.absmax, 64, "nf4", [8, 64], None)
    with pytest.raises(ValueError, match="packed must be on the device of A"):
        ops.gemm_4bit(A.cpu(), packed.cuda(), state.absmax.cuda(), 64, "nf4", [8, 64], None)
    with pytest.raises(ValueError, match="CB must be on the device of A"):
        quant.gemm_int8_weight_only(A, CB, SCB)
    with pytest.raises(ValueError, match="weight must be on the device of A"):
        ops.gemm_dense(A, torch.randn(8, 64), None)
    with pytest.raises(ValueError, match="bias must be on the device of A"):
        quant.gemm_int8_weight_only(A, CB.cuda(), SCB.cuda(), torch.randn(8))


@pytest.mark.gpu
@pytest.mark.parametrize("fusion", list(FUSIONS))
@pytest.mark.parametrize("M", [1, 3, 16])
# 49280 x 576 (SmolVLM's lm_head): more rows than one wave of the SIMT GEMV's CTAs hold, so its warps loop over rows;
# 960 x 2560 (SmolVLM-500M's down_proj; gated, its input 2 x 2560 wide): in float32 more chunks a lane than the first
# batch loads, and a row too wide to stage (gemm_dense composes it and runs the same GEMV); 3072 x 576, 5120 x 960
# (the gate/up projections) and 9000 x 576: a few rows a warp, the later ones prefetched into L2 before the wait.
@pytest.mark.parametrize("N,K", [(960, 576), (576, 1536), (960, 2560), (72, 320), (49280, 576), (3072, 576),
                                 (5120, 960), (9000, 576)])
@pytest.mark.parametrize("kind", ["nf4", "fp4", "int8", "dense"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_gemm_fusion_matches_the_composition(dtype, kind, N, K, M, fusion):
    """The GEMVs fuse what they can (see FUSIONS), the rest is composed.

    Gated and residual fusions round each value as the composition does and leave the GEMV's sums as they are:
    bit for bit the composition. A fused norm sums in another order, so its 1 / rms (or mean and 1 / std) may
    differ in the last float32 bits, and a normed value by one rounding (2u relative to what it is made of: the
    value, weight * x_hat, whose x_hat is rounded first in an RMS norm, and for a LayerNorm the bias) on either
    side, which normed_out shows as it is:
    |fused - composed| <= 4.5u * sum_k reach_k |w_k| + 2u * |composed| (both outputs rounded once more; 4.5, not
    4: gelu's slope is at most 1.13). gelu's erf may differ from ATen's by a last float32 bit: one rounding.
    """
    weights = weights_of_kind(kind, N, K, "cuda")
    A, kwargs = fusion_arguments(FUSIONS[fusion], M, N, K, dtype, "cuda", seed=K)
    bias = random_tensor((N,), dtype, seed=N, device="cuda") if M != 3 else None
    fused = gemm_of_kind(kind, weights, A, bias, **kwargs)
    composed = composed_gemm(kind, weights, A, bias, **kwargs)
    assert fused.shape == composed.shape and fused.dtype == dtype
    if "norm" not in fusion and "gelu" not in fusion:
        assert torch.equal(fused, composed)
        return
    u = UNIT_ROUNDOFF[dtype]
    x = composed_input(A, **kwargs).double()
    reach = x.abs()
    if "norm_bias" in kwargs:
        x_hat = torch.nn.functional.layer_norm(A.double(), (K,), eps=kwargs["norm_eps"])
        reach = reach + (kwargs["norm_weight"].double() * x_hat).abs() + kwargs["norm_bias"].double().abs()
    elif "norm_weight" in kwargs:  # found by a 5120 x 960 case: x_hat's own rounding flipped, then weight * x_hat's
        x_hat = A.double() * torch.rsqrt(A.double().pow(2).mean(-1, keepdim=True) + kwargs["norm_eps"])
        reach = reach + (kwargs["norm_weight"].double() * x_hat).abs()
    if "normed_out" in kwargs:
        normed_error = (kwargs["normed_out"].double() - x).abs()
        assert (normed_error <= 2 * u * reach).all(), f"normed_out: max error {normed_error.max().item():.3g}"
    weight = weights.float() if kind == "dense" else weights[2].float()
    bound = 4.5 * u * (reach @ weight.double().abs().T) + 2 * u * composed.double().abs()
    if "residual" in kwargs:
        bound = bound + 2 * u * kwargs["residual"].double().abs()
    error = (fused.double() - composed.double()).abs()
    assert (error <= bound).all(), f"max error {error.max().item():.3g} over the bound"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("kind", ["nf4", "int8", "dense"])
def test_gemm_fusion_normed_out_may_be_a_itself(kind, device):
    """normed_out = A (a norm in place) is composed (on CUDA the GEMV's CTAs would write A while others still read
    it): A becomes the normed rows and the output is the composition's, bit for bit."""
    weights = weights_of_kind(kind, 64, 576, device)
    A, kwargs = fusion_arguments(FUSIONS["layer_norm+normed_out"], 3, 64, 576, torch.bfloat16, device)
    del kwargs["normed_out"]
    in_place = A.clone()
    out = gemm_of_kind(kind, weights, in_place, normed_out=in_place, **kwargs)
    assert torch.equal(in_place, composed_input(A, **kwargs))
    assert torch.equal(out, composed_gemm(kind, weights, A, **kwargs))


@pytest.mark.gpu
def test_cuda_gemm_fusion_in_a_cuda_graph_replays_the_eager_result():
    """The decode step records fused GEMVs in a CUDA graph: a replay on new inputs gives what eager gives."""
    weights = weights_of_kind("int8", 576, 576, "cuda")
    A, kwargs = fusion_arguments(FUSIONS["norm+residual"], 1, 576, 576, torch.bfloat16, "cuda")
    static_A, static_residual = A.clone(), kwargs["residual"].clone()
    graph_kwargs = dict(kwargs, residual=static_residual)
    gemm_of_kind("int8", weights, static_A, **graph_kwargs)  # warm-up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        recorded = gemm_of_kind("int8", weights, static_A, **graph_kwargs)
    A2, kwargs2 = fusion_arguments(FUSIONS["norm+residual"], 1, 576, 576, torch.bfloat16, "cuda", seed=9)
    static_A.copy_(A2)
    static_residual.copy_(kwargs2["residual"])
    graph.replay()
    assert torch.equal(recorded, gemm_of_kind("int8", weights, A2, **dict(kwargs, residual=kwargs2["residual"])))
