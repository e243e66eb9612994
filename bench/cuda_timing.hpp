// The GPU benchmarks' timing protocol (bench/README.md): CUDA events around each call, the median of
// the timed repetitions after warm-up, the L2 cache flushed (256 MB written) before each.
#pragma once

#include "cuda/common.hpp"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <functional>
#include <vector>

namespace flashlstm::bench {

inline bool g_once = false;  // --once: one untimed run of each case

// Median time of `fn` over `reps` runs after `warmup` runs, each preceded by an L2 flush.
inline double median_ms(const std::function<void()>& fn, cudaStream_t stream, int warmup, int reps) {
  if (g_once) {
    fn();
    cuda::check_cuda(cudaStreamSynchronize(stream), "run");
    return 0;
  }
  static cuda::DeviceBuffer flush(256u << 20);
  cudaEvent_t start, stop;
  cuda::check_cuda(cudaEventCreate(&start), "event");
  cuda::check_cuda(cudaEventCreate(&stop), "event");
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    cuda::check_cuda(cudaMemsetAsync(flush.get(), i & 0xff, 256u << 20, stream), "flush");
    cuda::check_cuda(cudaEventRecord(start, stream), "record");
    fn();
    cuda::check_cuda(cudaEventRecord(stop, stream), "record");
    cuda::check_cuda(cudaEventSynchronize(stop), "sync");
    float ms = 0;
    cuda::check_cuda(cudaEventElapsedTime(&ms, start, stop), "elapsed");
    times.push_back(ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2];
}

}  // namespace flashlstm::bench
