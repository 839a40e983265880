// Overlapped launches of the decode step's kernels (programmatic dependent launch, sm_90+).
//
// Why: a decode step is a chain of small kernels (SmolVLM-256M: 10 a layer, 2-3 us each on the H100) bound
// by launch and memory latency, not by bytes. Launched with programmatic stream serialization, kernel i+1
// starts while kernel i still runs: it sets up (shared tables) and issues its weight loads, which depend on
// no earlier kernel, then waits in `wait_for_previous_kernels()` until kernel i has finished and its writes
// are visible; kernel i lets it start early with `let_next_kernel_start()`.
//
// The rules every kernel launched with `launch_overlapped` keeps:
// - before `wait_for_previous_kernels(...)` it reads only what no kernel of the step writes (weights, norm
//   weights, tables) and writes nothing: an earlier kernel may still read or write any other buffer (an L2
//   prefetch hint may use a stale activation for its address: it reads nothing the kernel uses);
// - it reads activations only through the pointers it passed to `wait_for_previous_kernels(...)`, never with
//   __ldg, and its activation arguments are not __restrict__ (see there);
// - every CTA that reads or writes activations calls it. Kernel i+1's completion then implies kernel i's,
//   so a kernel further down the stream may rely on all earlier ones, as in plain stream order.
// Kernels launched the ordinary way (ATen's, cuBLAS') wait for the whole previous kernel as always. On
// devices before sm_90, or with IMAGETOTEXT_OVERLAP_LAUNCHES=0 (to measure the gain), launches are plain.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <utility>

namespace imagetotext::ops::cuda {

// Waits, then hands back each activation pointer as a value the compiler cannot trace to the kernel argument.
// Why the pointers: a load the compiler takes for read-only during the kernel (__ldg, or any load through a
// const __restrict__ argument) may be hoisted above the wait, which is an asm statement, and may go through the
// non-coherent read-only cache (ld.global.nc), which is only valid for data no grid writes while the kernel
// lives; the previous kernel's outputs are such data. A load through a laundered pointer is a plain load
// issued after the wait (asm volatile statements keep their order). Seen on the H100: a GEMV whose activation
// loads were hoisted read stale rows, and a float32 decode diverged from its eager run at the second token.
template <typename T>
__device__ __forceinline__ void launder(T*& pointer) {
  asm volatile("" : "+l"(pointer));
}

template <typename... T>
__device__ __forceinline__ void wait_for_previous_kernels(T*&... activations) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
  (launder(activations), ...);
}

__device__ __forceinline__ void let_next_kernel_start() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

constexpr int kMaxDevices = 64;

// How many CTAs of kKernel (`threads` each, with `shared_bytes` of dynamic shared memory, to which its limit is
// raised) one SM of the current device holds at once: for persistent grids of one wave. Asked once per kernel
// and device; two threads racing here do the same idempotent work.
template <auto kKernel>
int resident_ctas_per_sm(int threads, int shared_bytes) {
  static std::atomic<int> ctas_per_sm_of[kMaxDevices] = {};
  const int device = c10::cuda::current_device();
  TORCH_CHECK(device < kMaxDevices, "device index ", device, " above ", kMaxDevices);
  int ctas_per_sm = ctas_per_sm_of[device].load(std::memory_order_relaxed);
  if (ctas_per_sm == 0) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, shared_bytes));
    int blocks = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kKernel, threads, shared_bytes));
    ctas_per_sm = std::max(blocks, 1);
    ctas_per_sm_of[device].store(ctas_per_sm, std::memory_order_relaxed);
  }
  return ctas_per_sm;
}

// Whether launches on the current device overlap: sm_90+ and not switched off by the environment.
bool overlapped_launches_enabled();

// kernel<<<grid, block, shared_bytes, current stream>>>(args...), overlapped where enabled.
template <typename... KernelArgs, typename... Args>
void launch_overlapped(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t shared_bytes, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = at::cuda::getCurrentCUDAStream();
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = overlapped_launches_enabled() ? 1 : 0;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

}  // namespace imagetotext::ops::cuda
