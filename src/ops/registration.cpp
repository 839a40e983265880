// The schema of every op in the imagetotext namespace (torch.ops.imagetotext.*). Kernels register their
// implementations per device in src/ops/cpu/ and src/ops/cuda/.
#include <torch/library.h>

// ops::GemmFusion as the gemm schemas take it, after their own arguments.
#define IMAGETOTEXT_GEMM_FUSION_ARGS                                                                 \
  "Tensor? norm_weight=None, float norm_eps=1e-06, bool gated=False, Tensor? residual=None, "       \
  "Tensor? norm_bias=None, bool gelu=False, Tensor(a!)? normed_out=None"

TORCH_LIBRARY(imagetotext, m) {
  // uint8 [..., H, W, C] -> dtype [..., C, H, W]: (pixel * scale - mean[c]) / std[c], in float32.
  m.def("normalize_pixels(Tensor pixels, float[] mean, float[] std, float scale, ScalarType dtype) -> Tensor");
  // uint8 [..., H, W, C] -> uint8 [..., out_height, out_width, C], bit for bit Pillow's Image.resize with
  // filter (Pillow's numbers: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming).
  m.def("resize_pillow(Tensor pixels, int out_height, int out_width, int filter) -> Tensor");
  // float A (any shape, flattened) -> uint8 [(n+1)//2, 1] NF4/FP4 codes (high nibble first) + float32 absmax/block.
  m.def("quantize_4bit(Tensor A, int blocksize, str quant_type) -> (Tensor packed, Tensor absmax)");
  // packed 4-bit codes + absmax -> dtype tensor of `shape`: dtype(code[q] * absmax[i // blocksize]).
  m.def("dequantize_4bit(Tensor packed, Tensor absmax, int blocksize, str quant_type, int[] shape, "
        "ScalarType dtype) -> Tensor");
  // float A -> uint8 indices into a sorted 256-entry code (bitsandbytes' binary search) + float32 absmax/block.
  m.def("quantize_blockwise(Tensor A, Tensor code, int blocksize) -> (Tensor q, Tensor absmax)");
  // uint8 indices + absmax -> dtype(code[q] * absmax[i // blocksize]), q's shape.
  m.def("dequantize_blockwise(Tensor q, Tensor absmax, Tensor code, int blocksize, ScalarType dtype) -> Tensor");
  // float A [rows, cols] -> int8 CB = round(x * 127 / rowmax), float32 SCB = rowmax, int64 outlier columns.
  m.def("int8_vectorwise_quant(Tensor A, float threshold) -> (Tensor CB, Tensor SCB, Tensor? outlier_cols)");
  // int8 CB [rows, cols] + float32 SCB [rows] -> CB * SCB * (1/127) in float32, rounded once to dtype if given.
  m.def("int8_vectorwise_dequant(Tensor CB, Tensor SCB, ScalarType? dtype=None) -> Tensor");
  // The gemms' trailing arguments (norm_weight .. normed_out) are ops::GemmFusion
  // (include/imagetotext/quant/quantize.hpp): the input normed (RMS or LayerNorm, the normed input written to
  // normed_out if given) or gated first, gelu and a residual after.
  // A [..., K] @ dequantize_4bit(packed, absmax, weight_shape [N, K]).T + bias -> [..., N] in A's dtype.
  m.def("gemm_4bit(Tensor A, Tensor packed, Tensor absmax, int blocksize, str quant_type, int[] weight_shape, "
        "Tensor? bias, " IMAGETOTEXT_GEMM_FUSION_ARGS ") -> Tensor");
  // A [..., K] @ (int8 CB [N, K] * float32 SCB[N] / 127).T + bias -> [..., N] in A's dtype.
  m.def("gemm_int8_weight_only(Tensor A, Tensor CB, Tensor SCB, Tensor? bias, " IMAGETOTEXT_GEMM_FUSION_ARGS ") -> Tensor");
  // A [..., K] @ weight [N, K] (A's dtype).T + bias -> [..., N]: the dense layers' matmul (GEMV on CUDA for few rows).
  m.def("gemm_dense(Tensor A, Tensor weight, Tensor? bias, " IMAGETOTEXT_GEMM_FUSION_ARGS ") -> Tensor");
  // LLM.int8 core: float16 half(fmaf(float(CA @ CB^T) * SCA[m] * SCB[n], 1/127^2, bias[n])), int32 accumulation.
  m.def("int8_scaled_mm(Tensor CA, Tensor CB, Tensor SCA, Tensor SCB, Tensor? bias) -> Tensor");
  // Fused layer ops (src/ops/layer_ops.hpp): one CUDA kernel each; on the CPU the ATen composition.
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("rotary(Tensor x, Tensor cos, Tensor sin) -> Tensor");
  m.def("silu_mul(Tensor gate, Tensor up) -> Tensor");
  // first: per-row first attended position (left-padded batches), int64 [batch]; none: 0.
  m.def("decode_attention(Tensor query, Tensor keys, Tensor values, Tensor position, float scale, "
        "Tensor? first=None) -> Tensor");
  // Writes key and value into keys, values at position (the key rotated by cos, sin when given); returns
  // decode_attention of the query (rotated alike).
  m.def("append_decode_attention(Tensor query, Tensor key, Tensor value, Tensor(a!) keys, Tensor(b!) values, "
        "Tensor position, float scale, Tensor? cos=None, Tensor? sin=None, Tensor? first=None) -> Tensor");
  // Beam search over fixed-shape caches: row b of every cache becomes old row order[b] at positions 0 .. position.
  m.def("reorder_cache_rows(Tensor(a!)[] caches, Tensor order, Tensor position) -> ()");
  // Search ops (src/ops/search_ops.hpp): scores with -inf where a token would repeat an n-gram of its row.
  m.def("ban_repeated_ngrams(Tensor scores, Tensor sequences, Tensor length, int n) -> Tensor");
  // One greedy-decoding step after the logits: tokens, generated[step], step and position, in place.
  m.def("greedy_advance(Tensor logits, Tensor(a!) tokens, Tensor(b!) generated, Tensor(c!) step, "
        "Tensor(d!) position) -> ()");
  // One beam-search step after its topk, the state (ops::BeamSearchState's 13 tensors, in its order) in place.
  m.def("beam_search_update(Tensor topk_log_probs, Tensor topk_indices, Tensor(a!)[] state, Tensor eos, "
        "Tensor length_penalties, Tensor max_length, int vocab, int prompt_length, int early_stopping, "
        "float length_penalty) -> ()");
}

#undef IMAGETOTEXT_GEMM_FUSION_ARGS
