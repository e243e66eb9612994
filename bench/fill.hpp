// Random device data for the GPU benchmarks: normal(mean, std) values written in place, generated
// on the device from a counter-based hash (no host copy of the large inputs).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace flashlstm::bench {

void fill_normal(void* data, std::int64_t count, bool bf16, float mean, float std, std::uint64_t seed,
                 cudaStream_t stream);

}  // namespace flashlstm::bench
