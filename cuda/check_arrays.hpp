// Host helpers of the kernel checks (cuda/*/check.cpp): device buffers poisoned with NaN, and
// float64 host tensors uploaded to / downloaded from the device in a kernel's element type.
#pragma once

#include "core/bf16.hpp"
#include "core/view.hpp"
#include "cuda/common.hpp"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace flashlstm::cuda {

// Device memory poisoned with NaN (all bits set: NaN in float32 and in bf16), so that an element a
// kernel does not write fails its check.
inline std::unique_ptr<DeviceBuffer> poisoned(std::size_t bytes) {
  auto b = std::make_unique<DeviceBuffer>(bytes);
  check_cuda(cudaMemset(b->get(), 0xff, bytes), "cudaMemset");
  return b;
}

template <std::size_t N>
std::unique_ptr<DeviceBuffer> upload(const xt::xtensor<double, N>& x, DType dtype) {
  auto b = poisoned(x.size() * element_size(dtype));
  if (dtype == DType::float32) {
    std::vector<float> host(x.begin(), x.end());
    check_cuda(cudaMemcpy(b->get(), host.data(), b->bytes(), cudaMemcpyHostToDevice), "upload");
  } else {
    std::vector<std::uint16_t> host(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) host[i] = bf16(static_cast<float>(x.data()[i])).bits;
    check_cuda(cudaMemcpy(b->get(), host.data(), b->bytes(), cudaMemcpyHostToDevice), "upload");
  }
  return b;
}

template <std::size_t N>
xt::xtensor<double, N> download(const DeviceBuffer& b, const Shape<N>& shape, DType dtype) {
  auto x = zeros<double>(shape);
  if (dtype == DType::float32) {
    std::vector<float> host(x.size());
    check_cuda(cudaMemcpy(host.data(), b.get(), host.size() * 4, cudaMemcpyDeviceToHost), "download");
    std::copy(host.begin(), host.end(), x.begin());
  } else {
    std::vector<std::uint16_t> host(x.size());
    check_cuda(cudaMemcpy(host.data(), b.get(), host.size() * 2, cudaMemcpyDeviceToHost), "download");
    for (std::size_t i = 0; i < x.size(); ++i) {
      bf16 e;
      e.bits = host[i];
      x.data()[i] = static_cast<float>(e);
    }
  }
  return x;
}

}  // namespace flashlstm::cuda
