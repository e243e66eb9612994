// The CUDA mLSTM kernels' host API: the chunkwise forward and backward (exp and sig input gates,
// normalised or not), the generation step, and a sequence wrapper. Same argument names and
// layouts as the CPU reference (reference/mlstm/mlstm.hpp), with device pointers instead of views:
//
//   q, k (B, NH, S, DQK); v, h (B, NH, S, DV); igate, fgate (B, NH, S): row-major, contiguous, of
//   `dtype` (float32 or bfloat16); states C (B, NH, DQK, DV), n (B, NH, DQK), m (B, NH): float32.
//
// Every function checks its arguments and throws flashlstm::Error naming the one at fault. Work is
// queued on `stream`; the legacy default stream (0) is replaced by cudaStreamPerThread, which is
// ordered with it. Scratch memory is taken from the stream-ordered allocator (cudaMallocAsync) and
// released on the same stream.
#pragma once

#include "core/dtype.hpp"
#include "core/mlstm_options.hpp"
#include "cuda/common.hpp"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

namespace flashlstm::cuda::mlstm {

using flashlstm::DType;
using flashlstm::cuda::device_available;
using flashlstm::mlstm::InputGate;
using flashlstm::mlstm::Options;

struct Dims {
  std::int64_t B = 0, NH = 0, S = 0, DQK = 0, DV = 0;
};

struct Inputs {
  const void* q = nullptr;      // (B, NH, S, DQK)
  const void* k = nullptr;      // (B, NH, S, DQK)
  const void* v = nullptr;      // (B, NH, S, DV)
  const void* igate = nullptr;  // (B, NH, S)  ĩ
  const void* fgate = nullptr;  // (B, NH, S)  f̃
  Dims dims;
  DType dtype = DType::bfloat16;
  // With bfloat16 q, k, v: the gates (and digate, dfgate) are float32 instead (as users keep them).
  bool float32_gates = false;
};

// A float32 state on the device; `m` is the log-scale stabiliser.
struct State {
  float* C = nullptr;  // (B, NH, DQK, DV)
  float* n = nullptr;  // (B, NH, DQK)
  float* m = nullptr;  // (B, NH)
};
struct ConstState {
  const float* C = nullptr;
  const float* n = nullptr;
  const float* m = nullptr;
};

// Upstream gradients: dh of `dtype`; the final-state gradients are optional (nullptr: zero).
struct OutputGrad {
  const void* dh = nullptr;        // (B, NH, S, DV)
  const float* dC_last = nullptr;  // (B, NH, DQK, DV)
  const float* dn_last = nullptr;  // (B, NH, DQK)
  const float* dm_last = nullptr;  // (B, NH)
};

// Gradients, written in full: dq, dk, dv, digate, dfgate of `dtype`; dinitial (float32) only where
// its pointers are set.
struct InputGrad {
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  void* digate = nullptr;
  void* dfgate = nullptr;
  State dinitial;
};

// The chunkwise (TFLA) forward: h for every token and, where `last` has pointers, the final state.
// `initial` may be nullptr (a zero state). chunk_size: a multiple of 64 in [64, 1024].
void forward_chunkwise(const Inputs& x, const ConstState* initial, void* h, const State& last, int chunk_size,
                       const Options& options, cudaStream_t stream);

// The chunk size forward_chunkwise computes with: 64 where its fused kernel runs (bf16 inputs, DQK <=
// 256, DQK and DV multiples of 8: the state stays on chip and the form is that of L = 64, which gives
// the same results up to rounding), else chunk_size.
int forward_chunk_size(const Inputs& x, int chunk_size);

// The exact backward of forward_chunkwise (normaliser and stabiliser paths included). Recomputes the
// chunk states; correct at every chunk size.
void backward_chunkwise(const Inputs& x, const ConstState* initial, const OutputGrad& grad, const InputGrad& out,
                        int chunk_size, const Options& options, cudaStream_t stream);

// Packed sequences of different lengths (the layout FlashAttention's and flash-linear-attention's
// varlen kernels take): N sequences in one batch, x.dims.B = 1 and x.dims.S the total number of
// tokens, sequence i being tokens [cu_seqlens[i], cu_seqlens[i + 1]) (N + 1 offsets on the host: 0
// first, S last, non-decreasing; a sequence may be empty). Each sequence runs from its own initial
// state to its own final state: `initial`, `last`, the final-state gradients and `dinitial` are
// (N, NH, ...). No token sees another sequence, and no work is spent on padding. Results equal those
// of running each sequence alone. The call copies the offsets to the device (it waits for the work
// queued on `stream` before it).
void forward_varlen(const Inputs& x, const std::vector<std::int64_t>& cu_seqlens, const ConstState* initial, void* h,
                    const State& last, int chunk_size, const Options& options, cudaStream_t stream);
void backward_varlen(const Inputs& x, const std::vector<std::int64_t>& cu_seqlens, const ConstState* initial,
                     const OutputGrad& grad, const InputGrad& out, int chunk_size, const Options& options,
                     cudaStream_t stream);

// One token for B x NH heads: q, k (B, NH, DQK), v (B, NH, DV), igate, fgate (B, NH) of `dtype`;
// `state` is read and updated in place; h (B, NH, DV) of `dtype`. x.dims.S is ignored.
void step(const Inputs& x, const State& state, void* h, const Options& options, cudaStream_t stream);

// A sequence of any length continuing `state` (updated in place): chunkwise for the first
// S - S mod chunk_size tokens, then one step per remaining token — what generation after a prompt
// needs.
void forward_sequence(const Inputs& x, const State& state, void* h, int chunk_size, const Options& options,
                      cudaStream_t stream);

}  // namespace flashlstm::cuda::mlstm
