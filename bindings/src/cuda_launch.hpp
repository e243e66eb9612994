// What the CUDA bindings (cuda_mlstm.cpp, cuda_slstm.cpp) share once their arguments are checked:
// the stream as a cudaStream_t, and running a launch on the arrays' device without the GIL.
#pragma once

#ifdef FLASHLSTM_HAVE_CUDA

#include "cuda/common.hpp"

#include <pybind11/pybind11.h>

#include <cuda_runtime_api.h>

#include <cstdint>

namespace flashlstm::bindings {

// A stream as dlpack::protocol_stream spells it (1 the legacy default stream, 2 the per-thread one,
// else a cudaStream_t).
inline cudaStream_t kernel_stream(std::int64_t stream) {
  return reinterpret_cast<cudaStream_t>(static_cast<std::intptr_t>(stream));
}

// Runs `launch` on `device` without the GIL.
template <class Launch>
void run_on(int device, Launch&& launch) {
  flashlstm::cuda::DeviceGuard guard(device);
  pybind11::gil_scoped_release release;
  launch();
}

}  // namespace flashlstm::bindings

#endif
