// What every part of the CUDA code shares on the host: the error check of a CUDA runtime call, a
// scoped switch of the current device, an owning device buffer, stream-ordered scratch memory, and
// whether a device is visible.
// Plain C++ over the CUDA runtime API (no fmt, no xtensor, no Boost), so that the .cu files, the host
// API, the kernel checks, the benchmarks and the Python bindings all include this one header.
#pragma once

#include "core/dtype.hpp"

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace flashlstm::cuda {

// Throws std::runtime_error("flashlstm CUDA: <what>: <the runtime's message>") unless e is cudaSuccess.
inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("flashlstm CUDA: ") + what + ": " + cudaGetErrorString(e));
}

inline int current_device() {
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  return device;
}

// Makes `device` current for the guard's lifetime.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : previous_(current_device()) {
    if (previous_ == device) previous_ = -1;
    else check_cuda(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_;
};

// `bytes` of device memory (cudaMalloc) on `device`, freed there when the buffer goes.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(std::size_t bytes, int device = current_device()) : bytes_(bytes), device_(device) {
    DeviceGuard guard(device_);
    check_cuda(cudaMalloc(&ptr_, bytes == 0 ? 1 : bytes), "cudaMalloc");
  }
  ~DeviceBuffer() {  // as DeviceGuard does, without throwing
    int previous = device_;
    cudaGetDevice(&previous);
    if (previous != device_) cudaSetDevice(device_);
    cudaFree(ptr_);
    if (previous != device_) cudaSetDevice(previous);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  template <class T = void>
  T* get() const {
    return static_cast<T*>(ptr_);
  }
  std::size_t bytes() const { return bytes_; }
  int device() const { return device_; }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_;
  int device_;
};

// Makes the current device's default memory pool (the stream-ordered allocator's) keep freed memory
// for the next allocation instead of returning it to the driver at every synchronisation, its default:
// kernels that take scratch on every call then pay for mapping it once, not per call. The memory stays
// reserved to the pool; cudaMemPoolTrimTo releases it.
inline void keep_pool_memory() {
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  static std::mutex mutex;
  static std::vector<int> done;
  const std::lock_guard<std::mutex> lock(mutex);
  for (const int d : done)
    if (d == device) return;
  cudaMemPool_t pool = nullptr;
  check_cuda(cudaDeviceGetDefaultMemPool(&pool, device), "cudaDeviceGetDefaultMemPool");
  std::uint64_t threshold = UINT64_MAX;
  check_cuda(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold), "cudaMemPoolSetAttribute");
  done.push_back(device);
}

// Scratch memory from the stream-ordered allocator (cudaMallocAsync, the device's default pool set to
// keep freed memory: keep_pool_memory), carved into typed arrays: add() each array's pointer and
// count, then allocate() once; freed on the same stream when the Scratch goes (also when an exception
// leaves the scope).
class Scratch {
 public:
  explicit Scratch(cudaStream_t stream) : stream_(stream) {}
  ~Scratch() {
    if (base_) cudaFreeAsync(base_, stream_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <class U>
  void add(U*& ptr, std::int64_t count) {
    slots_.push_back({reinterpret_cast<void**>(&ptr), bytes_});
    bytes_ += (count * static_cast<std::int64_t>(sizeof(U)) + 255) / 256 * 256;
  }
  void allocate() {  // nothing to allocate: every pointer stays null
    if (bytes_ == 0) return;
    keep_pool_memory();
    check_cuda(cudaMallocAsync(&base_, static_cast<std::size_t>(bytes_), stream_), "scratch allocation");
    for (auto& [ptr, offset] : slots_) *ptr = static_cast<char*>(base_) + offset;
  }
  std::int64_t bytes() const { return bytes_; }

 private:
  struct Slot {
    void** ptr;
    std::int64_t offset;
  };
  cudaStream_t stream_;
  std::vector<Slot> slots_;
  std::int64_t bytes_ = 0;
  void* base_ = nullptr;
};

// Whether a CUDA device is visible to this process (for skipping GPU tests and validate rows).
inline bool device_available() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

}  // namespace flashlstm::cuda
