// fill_normal (fill.hpp): Box–Muller on two uniforms from a splitmix64 hash of (seed, index).
#include "bench/fill.hpp"

#include <cuda_bf16.h>

namespace flashlstm::bench {
namespace {

__device__ std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

__global__ void fill_kernel(void* data, std::int64_t count, bool bf16, float mean, float std, std::uint64_t seed) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::uint64_t r = splitmix64(seed * 0x100000001b3ull + static_cast<std::uint64_t>(i));
    const float u1 = (static_cast<float>(r >> 40) + 0.5f) / 16777216.f;
    const float u2 = static_cast<float>((r >> 16) & 0xffffff) / 16777216.f;
    const float x = mean + std * sqrtf(-2.f * logf(u1)) * cospif(2.f * u2);
    if (bf16) static_cast<__nv_bfloat16*>(data)[i] = __float2bfloat16_rn(x);
    else static_cast<float*>(data)[i] = x;
  }
}

}  // namespace

void fill_normal(void* data, std::int64_t count, bool bf16, float mean, float std, std::uint64_t seed,
                 cudaStream_t stream) {
  fill_kernel<<<1024, 256, 0, stream>>>(data, count, bf16, mean, std, seed);
}

}  // namespace flashlstm::bench
