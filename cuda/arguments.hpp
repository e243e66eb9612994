// Argument checks every CUDA host API shares (host code, not compiled by nvcc): device pointers and
// the stream rule.
#pragma once

#include "core/error.hpp"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string_view>

namespace flashlstm::cuda {

// A pointer to device memory (or managed memory) of the current device, aligned for `align` bytes.
inline void check_device_pointer(const void* ptr, std::string_view name, std::size_t align) {
  require(ptr != nullptr, name, "is a null pointer");
  require(reinterpret_cast<std::uintptr_t>(ptr) % align == 0, name, "must be aligned to {} bytes", align);
  cudaPointerAttributes attr{};
  const cudaError_t e = cudaPointerGetAttributes(&attr, ptr);
  require(e == cudaSuccess, name, "is not a CUDA pointer ({})", cudaGetErrorString(e));
  require(attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged, name,
          "must point to device memory, got {}", attr.type == cudaMemoryTypeHost ? "pinned host memory" : "host memory");
  int device = 0;
  cudaGetDevice(&device);
  require(attr.device == device, name, "is on device {}, but the current device is {}", attr.device, device);
}

// The legacy default stream is never used: 0 becomes the per-thread default stream, which is
// ordered with it.
inline cudaStream_t usable(cudaStream_t stream) { return stream == nullptr ? cudaStreamPerThread : stream; }

}  // namespace flashlstm::cuda
