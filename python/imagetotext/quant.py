"""INT8 and 4-bit (NF4/FP4) weight quantization, bit-exact with bitsandbytes.

Mirrors ``bitsandbytes.functional``: :func:`quantize_4bit` / :func:`dequantize_4bit` with a
:class:`QuantState`, and LLM.int8's :func:`int8_vectorwise_quant` / :func:`int8_vectorwise_dequant`.
The work happens in the native ops ``torch.ops.imagetotext.*``; docs/quantization.md has the formats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _C

QuantizedLinear = _C.QuantizedLinear

__all__ = [
    "QuantState",
    "QuantizedLinear",
    "create_dynamic_map",
    "dequantize_4bit",
    "dequantize_blockwise",
    "gemm_4bit",
    "gemm_int8_weight_only",
    "get_4bit_type",
    "int8_vectorwise_dequant",
    "int8_vectorwise_quant",
    "llm_int8_matmul",
    "quantize_4bit",
    "quantize_blockwise",
]


@dataclass
class QuantState:
    """What :func:`dequantize_4bit` needs besides the packed bytes (bitsandbytes' ``QuantState``).

    ``absmax`` is float32 per block, or uint8 when the statistics are double-quantized; then ``offset``
    (float32 0-dim, the mean of the float absmax) and ``state2`` (the 8-bit state of the absmax) are set.
    """

    absmax: torch.Tensor
    shape: torch.Size
    code: torch.Tensor
    dtype: torch.dtype
    blocksize: int
    quant_type: str
    offset: torch.Tensor | None = None
    state2: QuantState | None = None

    @property
    def nested(self) -> bool:
        """Whether the absmax is itself quantized (double quantization)."""
        return self.state2 is not None


def create_dynamic_map() -> torch.Tensor:
    """bitsandbytes' ``create_dynamic_map(signed=True)`` as x86 torch computes it: float32 [256]."""
    return _C.dynamic_map()


def get_4bit_type(quant_type: str) -> torch.Tensor:
    """The NF4 or FP4 code table, float32 [16] (bitsandbytes' ``get_4bit_type``)."""
    return _C.code_4bit(quant_type)


def quantize_4bit(
    A: torch.Tensor, blocksize: int = 64, quant_type: str = "nf4", compress_statistics: bool = True
) -> tuple[torch.Tensor, QuantState]:
    """Blockwise 4-bit quantization: (packed uint8 [(n+1)//2, 1], QuantState).

    With ``compress_statistics`` the per-block absmax is itself quantized (offset = its mean, 8-bit
    dynamic map, blocks of 256) as bitsandbytes does. Raises ValueError for a bad dtype, blocksize or
    quant_type.
    """
    packed, fields = _C.quantize_4bit(A, blocksize, quant_type, compress_statistics)
    state2 = None
    if "nested_absmax" in fields:
        state2 = QuantState(
            absmax=fields["nested_absmax"],
            shape=torch.Size(fields["absmax"].shape),
            code=fields["nested_code"],
            dtype=torch.float32,
            blocksize=fields["nested_blocksize"],
            quant_type="dynamic",
        )
    state = QuantState(
        absmax=fields["absmax"],
        shape=torch.Size(fields["shape"]),
        code=fields["code"],
        dtype=fields["dtype"],
        blocksize=fields["blocksize"],
        quant_type=fields["quant_type"],
        offset=fields.get("offset"),
        state2=state2,
    )
    return packed, state


def _state_arguments(s: QuantState) -> tuple[list, dict]:
    """The QuantState as the native functions take it: positional fields and the nested ones by keyword."""
    nested = s.state2
    positional = [s.absmax, s.code, s.blocksize, s.quant_type, s.dtype, list(s.shape)]
    keywords = dict(
        nested_absmax=None if nested is None else nested.absmax,
        nested_code=None if nested is None else nested.code,
        nested_blocksize=256 if nested is None else nested.blocksize,
        offset=s.offset,
    )
    return positional, keywords


def dequantize_4bit(A: torch.Tensor, quant_state: QuantState) -> torch.Tensor:
    """Inverse of :func:`quantize_4bit`: a tensor of ``quant_state.shape`` and ``quant_state.dtype``."""
    positional, keywords = _state_arguments(quant_state)
    return _C.dequantize_4bit(A, *positional, **keywords)


def gemm_4bit(
    A: torch.Tensor, packed: torch.Tensor, quant_state: QuantState, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``A @ W.T + bias`` for the 4-bit weight ``W`` [N, K] of (packed, quant_state): [..., N] in A's dtype.

    A is [..., K] float32/float16/bfloat16 on the weight's device; a nested absmax is dequantized first.
    Few rows of A never write W out dense: on CPU (up to 16 rows) the weight is decoded block by block in
    registers (AVX-512 / AVX2 / scalar, chosen at run time); on CUDA a tensor-core GEMV takes up to 64 rows
    of float16/bfloat16 A (a SIMT GEMV up to 8 rows of float32). More rows dequantize + BLAS (cuBLAS).
    Raises ValueError for mismatched shapes, dtypes or devices.
    """
    positional, keywords = _state_arguments(quant_state)
    return _C.gemm_4bit(A, packed, *positional, **keywords, bias=bias)


def gemm_int8_weight_only(
    A: torch.Tensor, CB: torch.Tensor, SCB: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``A @ W.T + bias`` for the INT8 weight ``W = CB * SCB[:, None] / 127`` [N, K]: [..., N] in A's dtype.

    The weight-only INT8 path (activations stay in A's dtype); fused kernels for few rows as in
    :func:`gemm_4bit`.
    """
    return torch.ops.imagetotext.gemm_int8_weight_only(A, CB, SCB, bias)


def quantize_blockwise(A: torch.Tensor, code: torch.Tensor | None = None, blocksize: int = 4096):
    """8-bit blockwise quantization with a sorted 256-entry code: (q uint8, absmax float32)."""
    code = create_dynamic_map().to(A.device) if code is None else code
    return torch.ops.imagetotext.quantize_blockwise(A, code, blocksize)


def dequantize_blockwise(
    q: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Inverse of :func:`quantize_blockwise`: dtype(code[q] * absmax[i // blocksize])."""
    return torch.ops.imagetotext.dequantize_blockwise(q, absmax, code, blocksize, dtype)


def int8_vectorwise_quant(A: torch.Tensor, threshold: float = 0.0):
    """LLM.int8 row-wise quantization of a 2-D tensor: (CB int8, SCB float32, outlier_cols int64 or None).

    ``SCB`` is each row's absmax over the values with ``|x| < threshold``; ``outlier_cols`` lists the
    columns holding a value with ``|x| >= threshold`` (None when threshold is 0).
    """
    return torch.ops.imagetotext.int8_vectorwise_quant(A, threshold)


def int8_vectorwise_dequant(CB: torch.Tensor, SCB: torch.Tensor) -> torch.Tensor:
    """float32 ``CB * SCB[:, None] / 127`` (bitsandbytes' constant for 1/127)."""
    return torch.ops.imagetotext.int8_vectorwise_dequant(CB, SCB)


def llm_int8_matmul(
    A: torch.Tensor, CB: torch.Tensor, SCB: torch.Tensor, bias: torch.Tensor | None = None, threshold: float = 6.0
) -> torch.Tensor:
    """bitsandbytes' LLM.int8 forward (``bnb.matmul`` with an int8 weight): A [..., K] -> A's dtype [..., N].

    A is cast to float16 and quantized per row; columns with ``|a| >= threshold`` are computed in A's dtype
    against the int8-dequantized weight; the rest is an exact int32 product scaled by SCA * SCB / 127**2.
    """
    return _C.llm_int8_matmul(A, CB, SCB, bias, threshold)
