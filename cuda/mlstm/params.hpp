// Internal to the CUDA mLSTM: the one parameter block every kernel of the chunkwise forward and
// backward reads, and the entry points api.cpp calls after checking the arguments. Plain C++ so
// that the checking code needs no CUDA compiler.
#pragma once

#include "cuda/common.hpp"
#include "cuda/mlstm/mlstm.hpp"

#include <cstdint>

namespace flashlstm::cuda::mlstm::detail {

struct Params {
  // Problem. Token t of head bh is at (bh * seq_stride + t) in q, k, v, h, the gates and their
  // gradients (seq_stride >= S lets a wrapper run on a prefix of a longer sequence).
  int BH = 0, S = 0, DQK = 0, DV = 0, L = 0, nc = 0;  // nc = number of chunks
  std::int64_t seq_stride = 0;
  float scale = 1.f, eps = 0.f;
  bool stabilised = true, normalizes = true;

  const void *q = nullptr, *k = nullptr, *v = nullptr, *igate = nullptr, *fgate = nullptr;
  const float *C0 = nullptr, *n0 = nullptr, *m0 = nullptr;  // initial state (nullable)
  void* h = nullptr;
  float *C_last = nullptr, *n_last = nullptr, *m_last = nullptr;

  // Per token (BH, S), in double so that differences of log gates inside a chunk do not cancel:
  // b = Σ log f from the chunk start (inclusive), u = log i - b, U = running max of u in the chunk,
  // argmax = the chunk-local token where U is attained.
  double *b = nullptr, *u = nullptr, *U = nullptr;
  int* argmax = nullptr;
  // States entering each chunk, the last entry the final state: (BH, nc + 1, DQK, DV), (BH, nc + 1,
  // DQK), (BH, nc + 1).
  float *Cs = nullptr, *ns = nullptr;
  double* ms = nullptr;

  // Backward.
  const void* dh = nullptr;
  const float *dC_last = nullptr, *dn_last = nullptr, *dm_last = nullptr;
  // Per token (BH, S): the readout's den, its state part den0, the row stabiliser m_r, dh·num and
  // dh·(state part of num); then dhat, the gradients reaching den (delta) and m_r (dmr), the
  // state-column entry of each row of dlogD (D0), the last row's token entries (lastrow).
  float *den = nullptr, *den0 = nullptr, *mrow = nullptr, *s = nullptr, *s0 = nullptr;
  float *dhat = nullptr, *delta = nullptr, *dmr = nullptr, *D0 = nullptr, *lastrow = nullptr;
  // Adjoint states at each chunk's exit: (BH, nc, DQK, DV), (BH, nc, DQK).
  float *dCs = nullptr, *dns = nullptr;
  // Per chunk (BH, nc): <dC, C_k> + <dn, n_k>; the last row's sum of dlogD before the stabiliser's
  // routing; what the routing adds to the last row; dm_k (the state column's sum).
  double *dot0 = nullptr, *last_rowsum = nullptr, *last_adj = nullptr, *dm_chunk = nullptr;
  // Intra-chunk matrices (BH, nc, L, L), lower triangle used: dA = W ∘ G, P = A ∘ W and the token
  // entries of dlogD, D = P ∘ G (the gradient of each log weight).
  float *dA = nullptr, *P = nullptr, *D = nullptr;
  void *dq = nullptr, *dk = nullptr, *dv = nullptr, *digate = nullptr, *dfgate = nullptr;
  float *dC0 = nullptr, *dn0 = nullptr, *dm0 = nullptr;
};

// Fill in the problem part of Params from checked arguments.
Params make_params(const Inputs& x, const ConstState* initial, int chunk_size, const Options& options);

// Where the fused forward (fused.cu, 64-token chunks) runs instead of the state and output passes:
// bf16 inputs, DQK <= 256, DQK and DV multiples of 8 (16-byte rows).
constexpr int kFusedChunk = 64;
inline bool fused_forward_applies(DType dtype, std::int64_t DQK, std::int64_t DV) {
  return dtype == DType::bfloat16 && DQK <= 256 && DQK % 8 == 0 && DV % 8 == 0;
}

// Implemented in chunkwise.cu / step.cu / fused.cu; arguments already checked.
void run_forward(Params p, DType dtype, cudaStream_t stream);
void run_fused_forward(const Params& p, cudaStream_t stream);
void run_backward(Params p, DType dtype, cudaStream_t stream);
void run_step(const Inputs& x, const State& state, void* h, std::int64_t seq_stride, std::int64_t token,
              const Options& options, cudaStream_t stream);

}  // namespace flashlstm::cuda::mlstm::detail
