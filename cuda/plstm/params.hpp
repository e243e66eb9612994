// Internal to the CUDA pLSTM: the parameter block the kernels read and the entry points api.cpp
// calls after checking the arguments. Plain C++ so that the checking code needs no CUDA compiler.
#pragma once

#include "cuda/plstm/plstm.hpp"

namespace flashlstm::cuda::plstm::detail {

struct GridParams {
  int B = 0, NH = 0, X = 0, Y = 0, DQK = 0, DV = 0, orientations = 1;
  float scale = 0.f;
  const void *q = nullptr, *k = nullptr, *v = nullptr;
  const float* gates[9] = {};  // Sr, Sd, Trl, Tru, Tdu, Tdl, Ml, Mu, D
  void* h = nullptr;
};

// The largest Y the forward kernel's shared memory holds for this DQK and dtype.
int grid_max_Y(int DQK, DType dtype);
void run_grid_forward(const GridParams& p, DType dtype, cudaStream_t stream);

}  // namespace flashlstm::cuda::plstm::detail
