// Internal to the CUDA sLSTM: the parameter block the kernels read and the entry points api.cpp
// calls after checking the arguments. Plain C++ so that the checking code needs no CUDA compiler.
#pragma once

#include "cuda/slstm/slstm.hpp"

namespace flashlstm::cuda::slstm::detail {

enum class CellKind { slstm_sigmoid, slstm_exp, lstm };

struct Params {
  int B = 0, T = 0, NH = 0, DH = 0;
  CellKind cell = CellKind::slstm_sigmoid;
  int batch_tile = 0;  // rows of the batch per block: 1, 2, 4 or 8; 0 chooses by the problem's size
  const void *Wx = nullptr, *R = nullptr, *b = nullptr;
  const float* initial = nullptr;
  // Forward.
  float *states = nullptr, *last = nullptr, *gates = nullptr;
  // Backward.
  const float *saved_states = nullptr, *saved_gates = nullptr, *dh = nullptr, *dlast = nullptr;
  void *dWx = nullptr, *dR = nullptr, *db = nullptr;
  float* dinitial = nullptr;
  float* dg32 = nullptr;                         // dg̃ in float32 (dWx itself for float32 inputs)
  float *dR_part = nullptr, *db_part = nullptr;  // the split sums of dR and db
};

void run_forward(const Params& p, DType dtype, cudaStream_t stream);
void run_backward(Params p, DType dtype, cudaStream_t stream);

}  // namespace flashlstm::cuda::slstm::detail
