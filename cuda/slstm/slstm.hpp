// The CUDA sLSTM / LSTM kernels' host API: the whole sequence in one fused kernel, forward and
// backward through time. Same definition, argument names and layouts as the CPU reference
// (reference/slstm/slstm.hpp), with device pointers instead of views:
//
//   Wx (B, T, 4, NH, DH), R (4, NH, DH, DH), b (4, NH, DH)   of `dtype` (float32 or bfloat16)
//   states over time (NS, B, T, NH, DH), initial / last / dlast / dinitial (NS, B, NH, DH),
//   gates (B, T, 4, NH, DH), dh (B, T, NH, DH)                 float32
//   dWx, dR, db                                               of `dtype`
//
// NS = 4 (h, c, n, m) for the sLSTM, 2 (h, c) for the LSTM. Row-major and contiguous. Head dims
// 16, 32, 64 and 128; any B >= 1 and T >= 1. The arithmetic is float32 throughout (R is read as
// float32 and kept on chip for all T; c, n, m are float32 registers).
//
// Every function checks its arguments and throws flashlstm::Error naming the one at fault. Work is
// queued on `stream` (0 means cudaStreamPerThread); scratch memory comes from the stream-ordered
// allocator and is released on the same stream.
#pragma once

#include "core/dtype.hpp"
#include "core/slstm_options.hpp"
#include "cuda/common.hpp"

#include <cuda_runtime_api.h>

#include <cstdint>

namespace flashlstm::cuda::slstm {

using flashlstm::DType;
using flashlstm::cuda::device_available;
using flashlstm::slstm::Cell;
using flashlstm::slstm::ForgetGate;
using flashlstm::slstm::Options;

struct Dims {
  std::int64_t B = 0, T = 0, NH = 0, DH = 0;
};

struct Inputs {
  const void* Wx = nullptr;  // (B, T, 4, NH, DH)
  const void* R = nullptr;   // (4, NH, DH, DH)
  const void* b = nullptr;   // (4, NH, DH)
  Dims dims;
  DType dtype = DType::bfloat16;
};

// The forward's results. `states` and `gates` are what the backward reads; `gates` may be nullptr
// (inference), `last` too.
struct Output {
  float* states = nullptr;  // (NS, B, T, NH, DH): the state after each step; states[0] is h
  float* last = nullptr;    // (NS, B, NH, DH)
  float* gates = nullptr;   // (B, T, 4, NH, DH): the pre-activations g̃_t
};

// What the backward takes from the forward on the same inputs (its `states` and `gates`).
struct Saved {
  const float* states = nullptr;
  const float* gates = nullptr;
};

struct OutputGrad {
  const float* dh = nullptr;     // (B, T, NH, DH): gradient of every h_t
  const float* dlast = nullptr;  // (NS, B, NH, DH): gradient of the final state (nullptr: zero)
};

struct InputGrad {
  void* dWx = nullptr;         // (B, T, 4, NH, DH)
  void* dR = nullptr;          // (4, NH, DH, DH)
  void* db = nullptr;          // (4, NH, DH)
  float* dinitial = nullptr;   // (NS, B, NH, DH): required exactly when an initial state is given
};

// Whether the kernels support head dimension DH (16, 32, 64, 128).
bool supported_head_dim(std::int64_t DH);

// `initial` (NS, B, NH, DH) may be nullptr (the zero state).
void forward(const Inputs& x, const float* initial, const Output& out, const Options& options, cudaStream_t stream);

// The exact backward through time (the stabiliser's path included), from the forward's saved states
// and gates. dR and db are sums over time and batch computed in a fixed order: the same inputs give
// the same bits.
void backward(const Inputs& x, const float* initial, const Saved& saved, const OutputGrad& grad, const InputGrad& out,
              const Options& options, cudaStream_t stream);

// One step for B x NH heads: Wx_t (B, 4, NH, DH) of `dtype` (x.dims.T is ignored); `state`
// (NS, B, NH, DH) float32 is advanced in place.
void step(const Inputs& x, float* state, const Options& options, cudaStream_t stream);

}  // namespace flashlstm::cuda::slstm
