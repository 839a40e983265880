// Overlapped launches of the decode step's kernels (programmatic dependent launch, sm_90+).
//
// Why: a decode step is a chain of small kernels (SmolVLM-256M: 10 a layer, 2-3 us each on the H100) bound
// by launch and memory latency, not by bytes. Launched with programmatic stream serialization, kernel i+1
// starts while kernel i still runs: it sets up (shared tables) and issues its weight loads, which depend on
// no earlier kernel, then waits in `wait_for_previous_kernels()` until kernel i has finished and its writes
// are visible; kernel i lets it start early with `let_next_kernel_start()`.
//
// The rules every kernel launched with `launch_overlapped` keeps:
// - before `wait_for_previous_kernels()` it reads only what no kernel of the step writes (weights, norm
//   weights, tables) and writes nothing: an earlier kernel may still read or write any other buffer;
// - every CTA that reads or writes activations calls it. Kernel i+1's completion then implies kernel i's,
//   so a kernel further down the stream may rely on all earlier ones, as in plain stream order.
// Kernels launched the ordinary way (ATen's, cuBLAS') wait for the whole previous kernel as always. On
// devices before sm_90, or with IMAGETOTEXT_OVERLAP_LAUNCHES=0 (to measure the gain), launches are plain.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <utility>

namespace imagetotext::ops::cuda {

__device__ __forceinline__ void wait_for_previous_kernels() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void let_next_kernel_start() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
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
