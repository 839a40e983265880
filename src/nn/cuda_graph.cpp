#include "imagetotext/nn/cuda_graph.hpp"

#include <fmt/format.h>

#include "imagetotext/core/error.hpp"

#if IMAGETOTEXT_WITH_CUDA
#include <map>
#include <mutex>

#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace imagetotext::nn {

Decoding parse_decoding(std::string_view name) {
  if (name == "auto") return Decoding::automatic;
  if (name == "eager") return Decoding::eager;
  if (name == "graph") return Decoding::graph;
  throw InvalidArgumentError(fmt::format("decoding '{}' is not one of 'auto', 'eager', 'graph'", name));
}

#if IMAGETOTEXT_WITH_CUDA

namespace {

// Recordings run one at a time, each device's on one side stream of its own. cuBLAS keeps a workspace for every
// stream it ran on (32 MiB on Hopper) for the process's life: with a fresh pool stream per recording, each new
// recording of a step that calls cuBLAS (a batch whose lm_head has more rows than the GEMVs take) pinned one more.
std::mutex capture_mutex;

c10::cuda::CUDAStream capture_stream(c10::DeviceIndex device) {  // under capture_mutex
  static std::map<c10::DeviceIndex, c10::cuda::CUDAStream> streams;
  auto it = streams.find(device);
  if (it == streams.end()) {
    it = streams.emplace(device, c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device)).first;
  }
  return it->second;
}

}  // namespace

bool CudaGraph::supported(c10::Device device) { return device.is_cuda(); }

void CudaGraph::capture(c10::Device device, const std::function<void()>& body, const CudaGraph* share_memory_with) {
  if (!supported(device)) throw DeviceError(fmt::format("CUDA graphs need a CUDA device, not {}", device.str()));
  const c10::MempoolId_t pool = share_memory_with && share_memory_with->graph_
                                         ? static_cast<at::cuda::CUDAGraph*>(share_memory_with->graph_.get())->pool()
                                         : c10::MempoolId_t{0, 0};
  const c10::cuda::CUDAGuard device_guard(device);
  const c10::cuda::CUDAStream caller = c10::cuda::getCurrentCUDAStream(device.index());
  const std::lock_guard lock(capture_mutex);
  // Capture must not run on the legacy default stream; the side stream first waits for the caller's work.
  const c10::cuda::CUDAStream side = capture_stream(device.index());
  at::cuda::CUDAEvent ready;
  ready.record(caller);
  ready.block(side);
  auto graph = std::make_shared<at::cuda::CUDAGraph>();
  try {
    const c10::cuda::CUDAStreamGuard stream_guard(side);
    body();
    // Thread-local mode: another thread's work on the device (another model) does not break this recording.
    graph->capture_begin(pool, cudaStreamCaptureModeThreadLocal);
    try {
      body();
    } catch (...) {
      try {
        graph->capture_end();
      } catch (...) {  // the recording is already invalid; the body's error is the one to report
      }
      throw;
    }
    graph->capture_end();
  } catch (const std::exception& error) {
    throw DeviceError(fmt::format("recording a CUDA graph on {} failed: {}", device.str(), error.what()));
  }
  at::cuda::CUDAEvent done;
  done.record(side);
  done.block(caller);
  graph_ = std::move(graph);
  device_ = device;
}

void CudaGraph::replay() {
  if (!graph_) throw InvalidArgumentError("replay of a CUDA graph that was never recorded");
  static_cast<at::cuda::CUDAGraph*>(graph_.get())->replay();
}

void CudaGraph::acquire() {
  if (released_) {
    static_cast<at::cuda::CUDAEvent*>(released_.get())->block(c10::cuda::getCurrentCUDAStream(device_.index()));
  }
}

void CudaGraph::release() {
  if (!graph_) return;
  if (!released_) released_ = std::make_shared<at::cuda::CUDAEvent>();
  static_cast<at::cuda::CUDAEvent*>(released_.get())->record(c10::cuda::getCurrentCUDAStream(device_.index()));
}

#else

bool CudaGraph::supported(c10::Device) { return false; }

void CudaGraph::capture(c10::Device device, const std::function<void()>&, const CudaGraph*) {
  throw DeviceError(fmt::format("CUDA graphs need a CUDA build of imagetotext; this one has none ({})", device.str()));
}

void CudaGraph::replay() { throw InvalidArgumentError("replay of a CUDA graph that was never recorded"); }

void CudaGraph::acquire() {}

void CudaGraph::release() {}

#endif

}  // namespace imagetotext::nn
