// Experiment (standalone, not part of the build): the SIMT GEMV's geometry for short weight rows (bf16, M = 1),
// where one warp per row (src/ops/cuda/gemv.cuh) leaves each lane two or three 16-byte loads: SmolVLM's lm_head
// (49280 x 576) took 44 us in a decode step on the H100 against ~19 us to stream its 57 MB. Each variant gives a
// warp R rows (all their loads issued first) and a CTA W warps; outputs are checked against a float64 reference.
// Build and run on the GPU machine:
//   nvcc -O3 -std=c++17 -arch=sm_90a -o dense_gemv_probe dense_gemv_probe.cu && ./dense_gemv_probe 49280 576
// Rows of up to 768 values only (3 chunks a lane); wider ones print the read floor alone. Results:
// benchmarks/results/dense-gemv-probe-h100-2026-11-24.txt (the library's one-row-a-warp shape is the first line).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#define CK(x)                                                                               \
  do {                                                                                      \
    cudaError_t err_ = (x);                                                                    \
    if (err_ != cudaSuccess) {                                                                 \
      printf("CUDA %s at %d: %s\n", #x, __LINE__, cudaGetErrorString(err_));                  \
      exit(1);                                                                              \
    }                                                                                       \
  } while (0)

constexpr int kWarp = 32;

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float dot8(uint4 w, uint4 a) {
  const __nv_bfloat162* wp = reinterpret_cast<const __nv_bfloat162*>(&w);
  const __nv_bfloat162* ap = reinterpret_cast<const __nv_bfloat162*>(&a);
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 wf = __bfloat1622float2(wp[i]), af = __bfloat1622float2(ap[i]);
    s = fmaf(wf.x, af.x, s);
    s = fmaf(wf.y, af.y, s);
  }
  return s;
}

// R rows per warp, W warps per CTA, at most kMaxPerLane chunks of a row per lane (K <= kMaxPerLane * 256).
template <int R, int W, int kMaxPerLane>
__global__ void __launch_bounds__(W * kWarp) gemv_rows(const uint4* __restrict__ weight, const uint4* __restrict__ a,
                                                       int N, int chunks, __nv_bfloat16* __restrict__ out) {
  const int lane = threadIdx.x % kWarp;
  const int first_row = (blockIdx.x * W + threadIdx.x / kWarp) * R;
  if (first_row >= N) return;
  uint4 raw[R][kMaxPerLane];
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int c = lane + i * kWarp;
      raw[r][i] = (first_row + r < N && c < chunks) ? __ldcs(weight + static_cast<int64_t>(first_row + r) * chunks + c)
                                                    : make_uint4(0, 0, 0, 0);
    }
  }
  uint4 act[kMaxPerLane];
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int c = lane + i * kWarp;
    act[i] = c < chunks ? a[c] : make_uint4(0, 0, 0, 0);
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) s += dot8(raw[r][i], act[i]);
    s = warp_sum(s);
    if (lane == 0 && first_row + r < N) out[first_row + r] = __float2bfloat16_rn(s);
  }
}

__global__ void read_floor(const uint4* __restrict__ p, int64_t n, uint32_t* out) {
  uint32_t acc = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint4 v = __ldcs(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) out[0] = acc;
}

int main(int argc, char** argv) {
  const int N = argc > 1 ? atoi(argv[1]) : 49280, K = argc > 2 ? atoi(argv[2]) : 576;
  const int chunks = K / 8;
  const int64_t bytes = static_cast<int64_t>(N) * K * 2;
  const int copies = static_cast<int>((200LL << 20) / bytes) + 2;  // rotated past the 50 MiB L2
  std::vector<__nv_bfloat16> w_host(static_cast<size_t>(N) * K), a_host(K);
  srand(1);
  for (auto& v : w_host) v = __float2bfloat16((rand() / (float)RAND_MAX - 0.5f));
  for (auto& v : a_host) v = __float2bfloat16((rand() / (float)RAND_MAX - 0.5f));
  std::vector<double> ref(N);
  for (int n = 0; n < N; ++n) {
    double s = 0;
    for (int k = 0; k < K; ++k) s += (double)__bfloat162float(w_host[(size_t)n * K + k]) * __bfloat162float(a_host[k]);
    ref[n] = s;
  }
  std::vector<uint4*> w(copies);
  for (auto& p : w) {
    CK(cudaMalloc(&p, bytes));
    CK(cudaMemcpy(p, w_host.data(), bytes, cudaMemcpyHostToDevice));
  }
  uint4* a;
  __nv_bfloat16* out;
  uint32_t* sink;
  CK(cudaMalloc(&a, K * 2));
  CK(cudaMemcpy(a, a_host.data(), K * 2, cudaMemcpyHostToDevice));
  CK(cudaMalloc(&out, N * 2));
  CK(cudaMalloc(&sink, 4));
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  auto time_us = [&](const std::function<void(int)>& launch) {
    const int per_graph = 60;
    cudaGraph_t g;
    cudaGraphExec_t e;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    for (int i = 0; i < per_graph; ++i) launch(i % copies);
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&e, g, 0));
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    std::vector<float> t;
    for (int rep = 0; rep < 7; ++rep) {
      CK(cudaEventRecord(e0, s));
      CK(cudaGraphLaunch(e, s));
      CK(cudaEventRecord(e1, s));
      CK(cudaEventSynchronize(e1));
      float ms;
      cudaEventElapsedTime(&ms, e0, e1);
      t.push_back(ms * 1e3f / per_graph);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  };
  auto check = [&]() {
    std::vector<__nv_bfloat16> o(N);
    CK(cudaMemcpy(o.data(), out, N * 2, cudaMemcpyDeviceToHost));
    double err = 0, mx = 0;
    for (int n = 0; n < N; ++n) {
      err = std::max(err, std::fabs((double)__bfloat162float(o[n]) - ref[n]));
      mx = std::max(mx, std::fabs(ref[n]));
    }
    return err / mx;
  };
  const double floor_us = time_us([&](int c) {
    read_floor<<<132 * 8, 512, 0, s>>>(w[c], bytes / 16, sink);
  });
  printf("%d x %d bf16, M = 1: %.1f MB, floor (stream read) %.1f us = %.2f TB/s\n", N, K, bytes / 1e6, floor_us,
         bytes / floor_us / 1e6);
#define VARIANT(R, W)                                                                                         \
  {                                                                                                           \
    constexpr int kPer = 3;                                                                                   \
    if (chunks <= kPer * kWarp) {                                                                             \
      const int ctas = (N + (R) * (W)-1) / ((R) * (W));                                                       \
      const double us = time_us([&](int c) {                                                                  \
        gemv_rows<R, W, kPer><<<ctas, (W) * kWarp, 0, s>>>(w[c], a, N, chunks, out);                          \
      });                                                                                                     \
      CK(cudaGetLastError());                                                                                 \
      printf("rows/warp %d, warps/CTA %2d, %6d CTAs: %6.1f us  %.2f TB/s  err %.1e\n", R, W, ctas, us,        \
             bytes / us / 1e6, check());                                                                      \
    }                                                                                                         \
  }
  VARIANT(1, 4)
  VARIANT(1, 8)
  VARIANT(2, 4)
  VARIANT(2, 8)
  VARIANT(4, 4)
  VARIANT(4, 8)
  VARIANT(8, 4)
  return 0;
}
