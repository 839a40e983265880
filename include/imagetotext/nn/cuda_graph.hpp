// A CUDA graph over one fixed-shape step (a decode step): the kernels `body` launches are recorded once and
// replayed with one launch, which removes the per-kernel launch cost that bounds decoding small models.
// `body` must read its inputs from, and leave its outputs in, tensors whose storage outlives the graph (the
// caller copies new inputs into them between replays) and must not synchronize with the host.
#pragma once

#include <c10/core/Device.h>

#include <functional>
#include <memory>
#include <string_view>

namespace imagetotext::nn {

// How a model runs its decode steps. eager: each step launched from the host, caches sized per request.
// graph: fixed-shape steps over caches of a fixed capacity (kept for later requests that fit), recorded once in
// a CUDA graph and replayed; on a CPU the same steps run without a graph. automatic: graph on CUDA when every
// layer allows it, else eager.
enum class Decoding { automatic, eager, graph };

// "auto", "eager" or "graph"; InvalidArgumentError naming anything else.
Decoding parse_decoding(std::string_view name);

class CudaGraph {
 public:
  // Whether graphs can be captured on `device` (a CUDA device in a build with CUDA).
  static bool supported(c10::Device device);

  // Runs `body` once eagerly on the device's recording stream (so lazy initialisation, e.g. cuBLAS workspaces,
  // happens outside the capture), then records it there. One recording at a time, each device's on one side stream
  // (cuBLAS keeps a workspace per stream it ran on). Allocations made while recording stay reserved for the
  // graph's lifetime, in a memory pool of its own or, with `share_memory_with` (a recorded graph), in that graph's
  // pool: graphs that never run at the same time (their callers serialize them) then reuse one another's
  // intermediates; each graph's outputs stay its own as long as the caller holds them.
  // Throws DeviceError when recording fails.
  void capture(c10::Device device, const std::function<void()>& body, const CudaGraph* share_memory_with = nullptr);

  // Launches the recorded kernels on the current stream.
  void replay();

  // For a recording whose input and output tensors successive callers share (under their own lock): acquire()
  // makes the device's current stream wait for the work queued before the last release(), whichever stream
  // queued it, so a caller does not overwrite inputs that an earlier replay has yet to read, nor outputs that an
  // earlier copy has yet to read. Call acquire() before writing the inputs, release() after queuing the reads of
  // the outputs. Neither waits on the host.
  void acquire();
  void release();

  bool captured() const noexcept { return static_cast<bool>(graph_); }

 private:
  std::shared_ptr<void> graph_;     // at::cuda::CUDAGraph, kept opaque so this header needs no CUDA headers
  std::shared_ptr<void> released_;  // at::cuda::CUDAEvent recorded by release()
  c10::Device device_{c10::kCPU};   // the recording's
};

}  // namespace imagetotext::nn
