// The sLSTM and LSTM cells on one (batch row, unit) of one step, forward and backward, shared by
// the float32 kernels (recurrent.cu) and the tensor-core kernels (tensor_core.cu). All arithmetic
// is float32 and follows the reference's cells (reference/slstm/cells.hpp) operation for
// operation: the stabiliser rule with n = 0, exp shared between i' and f', σ(-x) as exp(-x) σ(x).
//
// The elementary functions come from a policy: Accurate (expf, log1pf, tanhf, division: within an
// ulp or two, for the float32 kernels' float32-grade results) or Fast (the SFU's ex2/lg2/rcp, about
// 2^-21 relative error; tanh as 1 - 2 / (1 + e^{2x}), 1e-7 absolute), for the bf16 kernels, whose
// operands carry bf16's 2^-9 and whose cells would otherwise cost three times the instructions.
#pragma once

#include "cuda/slstm/params.hpp"

namespace flashlstm::cuda::slstm::detail {

struct Accurate {
  static __device__ __forceinline__ float exp(float x) { return expf(x); }
  static __device__ __forceinline__ float log1p(float x) { return log1pf(x); }
  static __device__ __forceinline__ float tanh(float x) { return tanhf(x); }
  static __device__ __forceinline__ float div(float a, float b) { return a / b; }
};
struct Fast {
  static __device__ __forceinline__ float exp(float x) { return __expf(x); }
  static __device__ __forceinline__ float log1p(float x) { return __logf(1.f + x); }  // x in [0, 1] here
  static __device__ __forceinline__ float tanh(float x) { return 1.f - __fdividef(2.f, 1.f + __expf(2.f * x)); }
  static __device__ __forceinline__ float div(float a, float b) { return __fdividef(a, b); }
};

__device__ __forceinline__ float scale_nonzero(float a, float x) { return x == 0.f ? 0.f : a * x; }
template <class M = Accurate>
__device__ __forceinline__ float sigmoid_ref(float x) {  // as the reference's
  return M::div(1.f, 1.f + M::exp(-x));
}

// The sLSTM's gate values at one unit: the stabilised i', f', the log of the forget gate plus the
// old stabiliser (a), z = tanh z̃, o = σ(õ) and the exponentials the backward reuses.
struct SlstmGates {
  float a, ip, fp, z, o, exp_f, exp_o;
  bool takes_input;  // the stabiliser took ĩ
};

template <class M = Accurate>
__device__ __forceinline__ SlstmGates slstm_gates(float gi, float gf, float gz, float go, float n_prev, float m_prev,
                                                  bool exp_forget) {
  SlstmGates s;
  if (exp_forget) {
    s.exp_f = 0.f;
    s.a = gf + m_prev;
  } else {
    s.exp_f = M::exp(-fabsf(gf));
    s.a = fminf(gf, 0.f) - M::log1p(s.exp_f) + m_prev;
  }
  s.takes_input = n_prev == 0.f || gi > s.a;
  const float e = M::exp(s.takes_input ? s.a - gi : gi - s.a);  // the one of i', f' that is not exp(0)
  s.ip = s.takes_input ? 1.f : e;
  s.fp = s.takes_input ? e : 1.f;
  s.z = M::tanh(gz);
  s.exp_o = M::exp(-go);
  s.o = M::div(1.f, 1.f + s.exp_o);
  return s;
}

// The state of one unit a thread carries through the forward (h lives where the product reads it).
struct CellState {
  float c = 0.f, n = 0.f, m = 0.f;
};

// One forward step of a unit from its pre-activations: updates the state, returns h_t.
template <class M = Accurate>
__device__ __forceinline__ float cell_forward(CellKind cell, float gi, float gf, float gz, float go, CellState& s) {
  if (cell == CellKind::lstm) {
    s.c = sigmoid_ref<M>(gf) * s.c + sigmoid_ref<M>(gi) * M::tanh(gz);
    return sigmoid_ref<M>(go) * M::tanh(s.c);
  }
  const SlstmGates a = slstm_gates<M>(gi, gf, gz, go, s.n, s.m, cell == CellKind::slstm_exp);
  s.m = a.takes_input ? gi : a.a;
  s.c = scale_nonzero(a.fp, s.c) + a.ip * a.z;
  s.n = scale_nonzero(a.fp, s.n) + a.ip;
  return M::div(a.o * s.c, s.n);
}

// What the backward of a cell needs from the forward at one step of one unit: everything but the
// incoming gradient, so it is computed a step ahead, off the chain of dependent gradient steps.
// sLSTM: i = i', f = f', z = tanh z̃, o = σ(õ), o_grad = σ(-õ) (as exp(-õ) σ(õ)), f_grad = d log f / d f̃.
// LSTM: i, f, o the sigmoids, z = tanh z̃, *_grad = σ(-·), tanh_c = tanh(c_t).
struct StepActivations {
  float h_prev, c_prev, n_prev;  // the state before the step (n = 1 for the LSTM)
  float i, f, z, o, i_grad, f_grad, o_grad, tanh_c;
  bool takes_input;  // sLSTM: the stabiliser took ĩ
};

// From the step's pre-activations g̃ = (gi, gf, gz, go), the state before it (h, c, n, m; n and m
// unused by the LSTM) and c after it.
template <class M = Accurate>
__device__ __forceinline__ StepActivations activations(CellKind cell, float gi, float gf, float gz, float go,
                                                       float h_prev, float c_prev, float n_prev, float m_prev,
                                                       float c_next) {
  StepActivations a;
  a.h_prev = h_prev;
  a.c_prev = c_prev;
  if (cell == CellKind::lstm) {
    a.n_prev = 1.f;
    a.i = sigmoid_ref<M>(gi), a.f = sigmoid_ref<M>(gf), a.z = M::tanh(gz), a.o = sigmoid_ref<M>(go);
    a.i_grad = sigmoid_ref<M>(-gi), a.f_grad = sigmoid_ref<M>(-gf), a.o_grad = sigmoid_ref<M>(-go);
    a.tanh_c = M::tanh(c_next);
    a.takes_input = false;
  } else {
    a.n_prev = n_prev;
    const SlstmGates g = slstm_gates<M>(gi, gf, gz, go, n_prev, m_prev, cell == CellKind::slstm_exp);
    a.i = g.ip, a.f = g.fp, a.z = g.z, a.o = g.o;
    a.o_grad = isinf(g.exp_o) ? 1.f : g.exp_o * g.o;
    a.f_grad = cell == CellKind::slstm_exp ? 1.f : M::div(gf >= 0.f ? g.exp_f : 1.f, 1.f + g.exp_f);
    a.i_grad = a.tanh_c = 0.f;
    a.takes_input = g.takes_input;
  }
  return a;
}

// The backward's carried state of one unit: the gradient reaching the state after the current step
// (δc, δn, δm; δh is assembled per step) and that state itself (h, c, n).
struct CellGrad {
  float dc = 0.f, dn = 0.f, dm = 0.f;
  float h = 0.f, c = 0.f, n = 1.f;
};

// One backward step of a unit: from δh (dh_t plus the recurrent part) and the step's activations,
// the pre-activations' gradients dg[4] (i, f, z, o); moves `u` to the state before the step.
template <class M = Accurate>
__device__ __forceinline__ void cell_backward(CellKind cell, const StepActivations& a, float dH, CellGrad& u,
                                              float (&dg)[4]) {
  if (cell == CellKind::lstm) {
    const float dC = u.dc + dH * a.o * (1.f - a.tanh_c * a.tanh_c);
    dg[3] = dH * a.tanh_c * a.o * a.o_grad;
    dg[0] = dC * a.z * a.i * a.i_grad;
    dg[1] = dC * a.c_prev * a.f * a.f_grad;
    dg[2] = dC * a.i * (1.f - a.z * a.z);
    u.dc = dC * a.f;
  } else {
    const float dC = u.dc + M::div(dH * a.o, u.n);
    const float dN = u.dn - M::div(dH * u.h, u.n);
    dg[3] = M::div(dH * u.c, u.n) * a.o * a.o_grad;
    const float dfp_fp = dC * scale_nonzero(a.f, a.c_prev) + dN * scale_nonzero(a.f, a.n_prev);
    const float dip_ip = (dC * a.z + dN) * a.i;
    dg[2] = dC * a.i * (1.f - a.z * a.z);
    u.dc = dC * a.f;
    u.dn = dN * a.f;
    const float dM = u.dm - dfp_fp - dip_ip;
    const float da = dfp_fp + (a.takes_input ? 0.f : dM);
    dg[0] = dip_ip + (a.takes_input ? dM : 0.f);
    dg[1] = da * a.f_grad;
    u.dm = da;
  }
  u.h = a.h_prev, u.c = a.c_prev, u.n = a.n_prev;
}

}  // namespace flashlstm::cuda::slstm::detail
