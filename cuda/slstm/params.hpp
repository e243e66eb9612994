// Internal to the CUDA sLSTM: the parameter block the kernels read and the entry points api.cpp
// calls after checking the arguments. Plain C++ so that the checking code needs no CUDA compiler.
#pragma once

#include "cuda/slstm/slstm.hpp"

namespace flashlstm::cuda::slstm::detail {

enum class CellKind { slstm_sigmoid, slstm_exp, lstm };

struct Params {
  int B = 0, T = 0, NH = 0, DH = 0;
  CellKind cell = CellKind::slstm_sigmoid;
  int batch_tile = 0;  // float32 kernels: rows of the batch per block, 1, 2, 4 or 8; 0 chooses by size
  bool aligned16 = false;  // every array the kernels copy in 16-byte pieces is 16-byte aligned
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

void run_forward(Params p, DType dtype, cudaStream_t stream);
void run_backward(Params p, DType dtype, cudaStream_t stream);

// The tensor-core kernels (tensor_core.cu): bf16 inputs with DH <= 64. The backward writes dWx and
// db's partial sums per batch tile of 8 rows; run_tensor_core_dR then writes dR's partial sums over
// `splits` ranges of rows_per_split of the B·T rows (a multiple of the split's stage).
bool tensor_core_applies(const Params& p, DType dtype);
void run_tensor_core(const Params& p, bool backward, cudaStream_t stream);
struct DRSplit {
  int blocks;  // blocks per range of rows
  int stage;   // rows per stage
};
DRSplit tensor_core_dR_split(const Params& p);
void run_tensor_core_dR(const Params& p, int rows_per_split, int splits, cudaStream_t stream);

}  // namespace flashlstm::cuda::slstm::detail
