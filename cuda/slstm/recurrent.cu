// The fused sLSTM / LSTM kernels: one CTA per (head, tile of BT batch rows) runs the whole
// sequence, forward or backward through time, with the head's recurrent matrix R on chip for all T
// (docs/cuda.md has the design and the measured times).
//
// Forward, per step t, with 4·DH threads (thread r owns gate row r = g·DH + d of R):
//   1. g̃_t[j, r] = Wx_t[j, r] + b[r] + Σ_k R[r, k] h_{t-1}[j, k]   for the BT rows j of the tile:
//      R's row in registers (its columns beyond 64 in shared memory for DH = 128), h_{t-1} read from
//      shared memory as broadcasts; Wx_t arrives ahead of time through a ring of kRing steps of
//      asynchronous copies. g̃_t goes to shared memory (and to `gates` for the backward).
//   2. barrier; the cells: each thread owns BT/4 (b, d) units, keeps their c, n, m in registers,
//      writes h_t into shared memory and every state to `states`.
//   3. barrier.
// Backward, per step t from T - 1 down to 0 (thread r = g·DH + k owns column k of gate g's block):
//   1. the cells' backward: δh_t = dh_t + (Rᵀ dg̃_{t+1})[j, d] (or dlast at t = T - 1) and the carried
//      δc, δn, δm give dg̃_t (written to dWx and shared memory) and the state gradients before t;
//      g̃_t, the states before and after t and dh_t arrive through the ring;
//   2. barrier; each thread forms Σ_d R[g, d, k] dg̃_t[j, g·DH + d] for its gate g; 3. barrier, and
//      the next step's cells sum the four gates' parts.
// dR = Σ_{b,t} dg̃_tᵀ h_{t-1} and db = Σ_{b,t} dg̃_t are then a split-K product over the B·T rows
// (sum_rows) and a reduction of its partial sums in a fixed order (reduce_parts): deterministic.
//
// All arithmetic is float32 and follows the reference's cells (reference/slstm/cells.hpp) operation
// for operation: the stabiliser rule with n = 0, exp shared between i' and f', σ(-x) as exp(-x) σ(x).
#include "cuda/device.cuh"
#include "cuda/slstm/params.hpp"

#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

namespace flashlstm::cuda::slstm::detail {
namespace {

constexpr int kRing = 4;     // steps of inputs in flight
constexpr int kRegCols = 64;  // columns of R (forward) or of Rᵀ (backward) a thread keeps in registers

template <int DH>
constexpr int kThreads = 4 * DH;
template <int DH>
constexpr int kRegK = DH < kRegCols ? DH : kRegCols;
template <int DH>
constexpr int kSmemK = DH - kRegK<DH>;  // the rest, in shared memory: [k - kRegK][row]
template <int BT>
constexpr int kUnits = (BT + 3) / 4;  // (b, d) units per thread: BT·DH units over 4·DH threads

// The cell functions, shared by forward and backward. The sLSTM's state is (h, c, n, m).
struct SlstmGates {
  float a, ip, fp, z, o, exp_f, exp_o;
  bool takes_input;
};

__device__ __forceinline__ float scale_nonzero(float a, float x) { return x == 0.f ? 0.f : a * x; }

__device__ __forceinline__ SlstmGates slstm_gates(float gi, float gf, float gz, float go, float n_prev, float m_prev,
                                                  bool exp_forget) {
  SlstmGates s;
  if (exp_forget) {
    s.exp_f = 0.f;
    s.a = gf + m_prev;
  } else {
    s.exp_f = expf(-fabsf(gf));
    s.a = fminf(gf, 0.f) - log1pf(s.exp_f) + m_prev;
  }
  s.takes_input = n_prev == 0.f || gi > s.a;
  const float e = expf(s.takes_input ? s.a - gi : gi - s.a);  // the one of i', f' that is not exp(0)
  s.ip = s.takes_input ? 1.f : e;
  s.fp = s.takes_input ? e : 1.f;
  s.z = tanhf(gz);
  s.exp_o = expf(-go);
  s.o = 1.f / (1.f + s.exp_o);
  return s;
}

__device__ __forceinline__ float sigmoid_ref(float x) { return 1.f / (1.f + expf(-x)); }  // as the reference's


// out[j] = Σ_k w[k] x[j·ld + k] over k < DH for the tile's BT rows: w's first kRegK entries in
// registers (wr), the rest in shared memory (ws[(k - kRegK)·4·DH + r], column r), x in shared memory
// read as broadcasts. With fewer than four rows the sum runs in 4 / BT independent chains (FMA
// latency, not throughput, is the limit there), added at the end.
template <int DH, int BT>
__device__ __forceinline__ void matvec(const float (&wr)[kRegK<DH>], const float* ws, int r, const float* x, int ld,
                                       float (&out)[BT]) {
  constexpr int kChains = BT >= 4 ? 1 : 4 / BT;
  float acc[BT][kChains] = {};
#pragma unroll
  for (int k = 0; k < DH; k += 4) {
    float w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = k + i < kRegK<DH> ? wr[(k + i) % kRegK<DH>] : ws[(k + i - kRegK<DH>) * 4 * DH + r];
#pragma unroll
    for (int j = 0; j < BT; ++j) {
      const float4 v = *reinterpret_cast<const float4*>(&x[j * ld + k]);
      float& a = acc[j][(k / 4) % kChains];
      a = fmaf(w[0], v.x, a);
      a = fmaf(w[1], v.y, a);
      a = fmaf(w[2], v.z, a);
      a = fmaf(w[3], v.w, a);
    }
  }
#pragma unroll
  for (int j = 0; j < BT; ++j) {
    float sum = acc[j][0];
#pragma unroll
    for (int c = 1; c < kChains; ++c) sum += acc[j][c];
    out[j] = sum;
  }
}

// ---------------------------------------------------------------------------------------------
// Forward.

template <int DH, int BT, class In>
struct ForwardSmem {
  float h[BT * DH];                 // h_{t-1} of the tile's rows
  float g[BT * 4 * DH];             // g̃_t
  In ring[kRing][BT * 4 * DH];      // Wx of the next kRing steps
  float R[kSmemK<DH> * 4 * DH + 1];  // R's columns beyond kRegK, [k][row]
};

// Wx[b, t, g, head, d] for the tile's rows, into a ring slot laid out [j][g·DH + d] (4-byte copies;
// rows past B are zero).
template <int DH, int BT, class In>
__device__ __forceinline__ void fetch_wx(const Params& p, In* slot, int t, int head, int b0) {
  constexpr int kPer = 4 / sizeof(In);  // elements per copy
  constexpr int kCount = BT * 4 * DH / kPer;
  const In* Wx = static_cast<const In*>(p.Wx);
  for (int e = threadIdx.x; e < kCount; e += kThreads<DH>) {
    const int i = e * kPer, j = i / (4 * DH), r = i % (4 * DH), g = r / DH, d = r % DH;
    if (b0 + j < p.B && t < p.T) {
      const std::int64_t src = ((static_cast<std::int64_t>(b0 + j) * p.T + t) * 4 + g) * p.NH * DH + head * DH + d;
      cp_async4(slot + i, Wx + src);
    } else {
      for (int q = 0; q < kPer; ++q) slot[i + q] = from_float<In>(0.f);
    }
  }
}

template <int DH, int BT, class In>
__global__ void __launch_bounds__(4 * DH, DH <= 64 ? 2 : 1) forward_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto& s = *reinterpret_cast<ForwardSmem<DH, BT, In>*>(smem_raw);
  const int head = blockIdx.x, b0 = blockIdx.y * BT, r = threadIdx.x, g = r / DH, d = r % DH;
  const std::int64_t HD = static_cast<std::int64_t>(p.NH) * DH;
  const In* R = static_cast<const In*>(p.R);
  const std::int64_t Rrow = (static_cast<std::int64_t>(g) * p.NH + head) * DH * DH + static_cast<std::int64_t>(d) * DH;

  // R's row r: the first kRegK columns in registers, the rest in shared memory.
  float Rr[kRegK<DH>];
#pragma unroll
  for (int k = 0; k < kRegK<DH>; ++k) Rr[k] = to_float(R[Rrow + k]);
  for (int k = kRegK<DH>; k < DH; ++k) s.R[(k - kRegK<DH>) * 4 * DH + r] = to_float(R[Rrow + k]);
  const float bias = to_float(static_cast<const In*>(p.b)[(static_cast<std::int64_t>(g) * p.NH + head) * DH + d]);

  // The units' states (c, n, m) in registers and h in shared memory, from `initial` or zero.
  const int NS = p.cell == CellKind::lstm ? 2 : 4;
  float c[kUnits<BT>], n[kUnits<BT>], m[kUnits<BT>];
#pragma unroll
  for (int q = 0; q < kUnits<BT>; ++q) {
    const int u = threadIdx.x + q * kThreads<DH>, j = u / DH, du = u % DH;
    c[q] = n[q] = m[q] = 0.f;
    if (u < BT * DH) {
      float h0 = 0.f;
      if (p.initial && b0 + j < p.B) {
        const std::int64_t at = static_cast<std::int64_t>(b0 + j) * HD + head * DH + du, S = p.B * HD;
        h0 = p.initial[at];
        c[q] = p.initial[S + at];
        if (NS == 4) n[q] = p.initial[2 * S + at], m[q] = p.initial[3 * S + at];
      }
      s.h[j * DH + du] = h0;
    }
  }
  for (int t = 0; t < kRing; ++t) {
    fetch_wx<DH, BT, In>(p, s.ring[t], t, head, b0);
    cp_async_commit();
  }
  cp_async_wait<kRing - 1>();
  __syncthreads();

  for (int t = 0; t < p.T; ++t) {
    In* slot = s.ring[t % kRing];
    // 1. g̃_t = Wx_t + b + R h_{t-1}
    float acc[BT];
    matvec<DH, BT>(Rr, s.R, r, s.h, DH, acc);
#pragma unroll
    for (int j = 0; j < BT; ++j) acc[j] += to_float(slot[j * 4 * DH + r]) + bias;
#pragma unroll
    for (int j = 0; j < BT; ++j) {
      s.g[j * 4 * DH + r] = acc[j];
      if (p.gates && b0 + j < p.B)
        p.gates[((static_cast<std::int64_t>(b0 + j) * p.T + t) * 4 + g) * HD + head * DH + d] = acc[j];
    }
    __syncthreads();
    fetch_wx<DH, BT, In>(p, slot, t + kRing, head, b0);
    cp_async_commit();

    // 2. the cells
#pragma unroll
    for (int q = 0; q < kUnits<BT>; ++q) {
      const int u = threadIdx.x + q * kThreads<DH>, j = u / DH, du = u % DH;
      if (u >= BT * DH) continue;
      const float* gj = s.g + j * 4 * DH;
      const float gi = gj[du], gf = gj[DH + du], gz = gj[2 * DH + du], go = gj[3 * DH + du];
      float h;
      if (p.cell == CellKind::lstm) {
        c[q] = sigmoid_ref(gf) * c[q] + sigmoid_ref(gi) * tanhf(gz);
        h = sigmoid_ref(go) * tanhf(c[q]);
      } else {
        const SlstmGates a = slstm_gates(gi, gf, gz, go, n[q], m[q], p.cell == CellKind::slstm_exp);
        m[q] = a.takes_input ? gi : a.a;
        c[q] = scale_nonzero(a.fp, c[q]) + a.ip * a.z;
        n[q] = scale_nonzero(a.fp, n[q]) + a.ip;
        h = a.o * c[q] / n[q];
      }
      s.h[j * DH + du] = h;
      if (b0 + j < p.B) {
        const std::int64_t S = static_cast<std::int64_t>(p.B) * p.T * HD;
        const std::int64_t at = (static_cast<std::int64_t>(b0 + j) * p.T + t) * HD + head * DH + du;
        if (p.states) {
          p.states[at] = h;
          p.states[S + at] = c[q];
          if (NS == 4) p.states[2 * S + at] = n[q], p.states[3 * S + at] = m[q];
        }
        if (p.last && t == p.T - 1) {
          const std::int64_t S1 = static_cast<std::int64_t>(p.B) * HD;
          const std::int64_t at1 = static_cast<std::int64_t>(b0 + j) * HD + head * DH + du;
          p.last[at1] = h;
          p.last[S1 + at1] = c[q];
          if (NS == 4) p.last[2 * S1 + at1] = n[q], p.last[3 * S1 + at1] = m[q];
        }
      }
    }
    cp_async_wait<kRing - 1>();
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------------------
// Backward.

// One step's inputs in a ring slot: g̃_t [j][g·DH + d], the state before t [s][j][d] (NS = 4
// slots, the LSTM uses 2) and dh_t [j][d].
template <int DH, int BT>
struct BackwardSlot {
  float g[BT * 4 * DH];
  float prev[4 * BT * DH];
  float dh[BT * DH];
};

template <int DH, int BT>
struct BackwardSmem {
  float dg[BT * 4 * DH];    // dg̃_t
  float part[BT * 4 * DH];  // [j][g·DH + k]: Σ_d R[g, d, k] dg̃_t[j, g·DH + d]
  BackwardSlot<DH, BT> ring[kRing];
  float R[kSmemK<DH> * 4 * DH + 1];  // Rᵀ's columns beyond kRegK: [d - kRegK][g·DH + k]
};

template <int DH, int BT>
__device__ __forceinline__ void fetch_step(const Params& p, BackwardSlot<DH, BT>& slot, int t, int head, int b0) {
  const std::int64_t HD = static_cast<std::int64_t>(p.NH) * DH;
  const int NS = p.cell == CellKind::lstm ? 2 : 4;
  if (t < 0) return;
  for (int i = threadIdx.x; i < BT * 4 * DH; i += kThreads<DH>) {
    const int j = i / (4 * DH), r = i % (4 * DH), g = r / DH, d = r % DH;
    if (b0 + j < p.B) {
      cp_async4(slot.g + i, p.saved_gates + ((static_cast<std::int64_t>(b0 + j) * p.T + t) * 4 + g) * HD + head * DH + d);
    } else {
      slot.g[i] = 0.f;
    }
  }
  for (int i = threadIdx.x; i < NS * BT * DH; i += kThreads<DH>) {
    const int st = i / (BT * DH), j = (i / DH) % BT, d = i % DH;
    if (b0 + j >= p.B) {
      slot.prev[i] = st == 2 ? 1.f : 0.f;  // n = 1 keeps the padded rows finite
    } else if (t > 0) {
      const std::int64_t S = static_cast<std::int64_t>(p.B) * p.T * HD;
      cp_async4(slot.prev + i, p.saved_states + st * S + (static_cast<std::int64_t>(b0 + j) * p.T + t - 1) * HD + head * DH + d);
    } else if (p.initial) {
      const std::int64_t S = static_cast<std::int64_t>(p.B) * HD;
      cp_async4(slot.prev + i, p.initial + st * S + static_cast<std::int64_t>(b0 + j) * HD + head * DH + d);
    } else {
      slot.prev[i] = 0.f;
    }
  }
  for (int i = threadIdx.x; i < BT * DH; i += kThreads<DH>) {
    const int j = i / DH, d = i % DH;
    if (b0 + j < p.B) {
      cp_async4(slot.dh + i, p.dh + (static_cast<std::int64_t>(b0 + j) * p.T + t) * HD + head * DH + d);
    } else {
      slot.dh[i] = 0.f;
    }
  }
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

template <int DH, int BT>
__device__ __forceinline__ StepActivations activations(CellKind cell, const BackwardSlot<DH, BT>& slot, int j, int du,
                                                       float c_next) {
  StepActivations a;
  const float* gj = slot.g + j * 4 * DH;
  const float gi = gj[du], gf = gj[DH + du], gz = gj[2 * DH + du], go = gj[3 * DH + du];
  a.h_prev = slot.prev[j * DH + du];
  a.c_prev = slot.prev[BT * DH + j * DH + du];
  if (cell == CellKind::lstm) {
    a.n_prev = 1.f;
    a.i = sigmoid_ref(gi), a.f = sigmoid_ref(gf), a.z = tanhf(gz), a.o = sigmoid_ref(go);
    a.i_grad = sigmoid_ref(-gi), a.f_grad = sigmoid_ref(-gf), a.o_grad = sigmoid_ref(-go);
    a.tanh_c = tanhf(c_next);
    a.takes_input = false;
  } else {
    a.n_prev = slot.prev[2 * BT * DH + j * DH + du];
    const float m_prev = slot.prev[3 * BT * DH + j * DH + du];
    const SlstmGates g = slstm_gates(gi, gf, gz, go, a.n_prev, m_prev, cell == CellKind::slstm_exp);
    a.i = g.ip, a.f = g.fp, a.z = g.z, a.o = g.o;
    a.o_grad = isinf(g.exp_o) ? 1.f : g.exp_o * g.o;
    a.f_grad = cell == CellKind::slstm_exp ? 1.f : (gf >= 0.f ? g.exp_f : 1.f) / (1.f + g.exp_f);
    a.i_grad = a.tanh_c = 0.f;
    a.takes_input = g.takes_input;
  }
  return a;
}

template <int DH, int BT, class In>
__global__ void __launch_bounds__(4 * DH, DH <= 64 ? 2 : 1) backward_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto& s = *reinterpret_cast<BackwardSmem<DH, BT>*>(smem_raw);
  const int head = blockIdx.x, b0 = blockIdx.y * BT, r = threadIdx.x, g = r / DH, k = r % DH;
  const std::int64_t HD = static_cast<std::int64_t>(p.NH) * DH;
  const int NS = p.cell == CellKind::lstm ? 2 : 4;
  const In* R = static_cast<const In*>(p.R);
  const std::int64_t Rblock = (static_cast<std::int64_t>(g) * p.NH + head) * DH * DH;

  // Column k of gate g's block of R: R[g, head, d, k] for every d.
  float Rc[kRegK<DH>];
#pragma unroll
  for (int d = 0; d < kRegK<DH>; ++d) Rc[d] = to_float(R[Rblock + static_cast<std::int64_t>(d) * DH + k]);
  for (int d = kRegK<DH>; d < DH; ++d) s.R[(d - kRegK<DH>) * 4 * DH + r] = to_float(R[Rblock + static_cast<std::int64_t>(d) * DH + k]);

  // Per unit: the gradient reaching the state after the current step (δc, δn, δm; δh is assembled
  // per step from dh_t and `part`, which starts as dlast's h) and the state after the step (h, c, n).
  float dc[kUnits<BT>], dn[kUnits<BT>], dm[kUnits<BT>], hn[kUnits<BT>], cn[kUnits<BT>], nn[kUnits<BT>];
#pragma unroll
  for (int q = 0; q < kUnits<BT>; ++q) {
    const int u = threadIdx.x + q * kThreads<DH>, j = u / DH, du = u % DH;
    dc[q] = dn[q] = dm[q] = 0.f;
    hn[q] = cn[q] = 0.f;
    nn[q] = 1.f;
    if (u >= BT * DH) continue;
    float dh_last = 0.f;
    if (b0 + j < p.B) {
      const std::int64_t S = static_cast<std::int64_t>(p.B) * p.T * HD;
      const std::int64_t at = (static_cast<std::int64_t>(b0 + j) * p.T + p.T - 1) * HD + head * DH + du;
      hn[q] = p.saved_states[at];
      cn[q] = p.saved_states[S + at];
      if (NS == 4) nn[q] = p.saved_states[2 * S + at];
      if (p.dlast) {
        const std::int64_t S1 = static_cast<std::int64_t>(p.B) * HD;
        const std::int64_t at1 = static_cast<std::int64_t>(b0 + j) * HD + head * DH + du;
        dh_last = p.dlast[at1];
        dc[q] = p.dlast[S1 + at1];
        if (NS == 4) dn[q] = p.dlast[2 * S1 + at1], dm[q] = p.dlast[3 * S1 + at1];
      }
    }
    for (int gg = 0; gg < 4; ++gg) s.part[j * 4 * DH + gg * DH + du] = gg == 0 ? dh_last : 0.f;
  }
  for (int i = 0; i < kRing; ++i) {
    fetch_step<DH, BT>(p, s.ring[i], p.T - 1 - i, head, b0);
    cp_async_commit();
  }
  cp_async_wait<kRing - 2>();  // steps T - 1 and T - 2 have arrived
  __syncthreads();
  const auto slot_of = [&](int t) -> BackwardSlot<DH, BT>& { return s.ring[(p.T - 1 - t) % kRing]; };
  StepActivations act[kUnits<BT>];
#pragma unroll
  for (int q = 0; q < kUnits<BT>; ++q) {
    const int u = threadIdx.x + q * kThreads<DH>;
    if (u < BT * DH) act[q] = activations<DH, BT>(p.cell, slot_of(p.T - 1), u / DH, u % DH, cn[q]);
  }

  for (int t = p.T - 1; t >= 0; --t) {
    BackwardSlot<DH, BT>& slot = slot_of(t);
    // 1. the cells' backward, then the next step's activations (slot t - 1 has arrived)
#pragma unroll
    for (int q = 0; q < kUnits<BT>; ++q) {
      const int u = threadIdx.x + q * kThreads<DH>, j = u / DH, du = u % DH;
      if (u >= BT * DH) continue;
      const float* pj = s.part + j * 4 * DH;
      const float dH = slot.dh[j * DH + du] + (pj[du] + pj[DH + du] + pj[2 * DH + du] + pj[3 * DH + du]);
      const StepActivations& a = act[q];
      float dgi, dgf, dgz, dgo;
      if (p.cell == CellKind::lstm) {
        const float dC = dc[q] + dH * a.o * (1.f - a.tanh_c * a.tanh_c);
        dgo = dH * a.tanh_c * a.o * a.o_grad;
        dgi = dC * a.z * a.i * a.i_grad;
        dgf = dC * a.c_prev * a.f * a.f_grad;
        dgz = dC * a.i * (1.f - a.z * a.z);
        dc[q] = dC * a.f;
      } else {
        const float dC = dc[q] + dH * a.o / nn[q];
        const float dN = dn[q] - dH * hn[q] / nn[q];
        dgo = dH * cn[q] / nn[q] * a.o * a.o_grad;
        const float dfp_fp = dC * scale_nonzero(a.f, a.c_prev) + dN * scale_nonzero(a.f, a.n_prev);
        const float dip_ip = (dC * a.z + dN) * a.i;
        dgz = dC * a.i * (1.f - a.z * a.z);
        dc[q] = dC * a.f;
        dn[q] = dN * a.f;
        const float dM = dm[q] - dfp_fp - dip_ip;
        const float da = dfp_fp + (a.takes_input ? 0.f : dM);
        dgi = dip_ip + (a.takes_input ? dM : 0.f);
        dgf = da * a.f_grad;
        dm[q] = da;
      }
      hn[q] = a.h_prev, cn[q] = a.c_prev, nn[q] = a.n_prev;
      float* dgj = s.dg + j * 4 * DH;
      dgj[du] = dgi, dgj[DH + du] = dgf, dgj[2 * DH + du] = dgz, dgj[3 * DH + du] = dgo;
      if (b0 + j < p.B) {
        const std::int64_t at = (static_cast<std::int64_t>(b0 + j) * p.T + t) * 4 * HD + head * DH + du;
        const float dgs[4] = {dgi, dgf, dgz, dgo};
        for (int gg = 0; gg < 4; ++gg) {
          static_cast<In*>(p.dWx)[at + gg * HD] = from_float<In>(dgs[gg]);
          if (p.dg32 != p.dWx) p.dg32[at + gg * HD] = dgs[gg];
        }
      }
      if (t > 0) act[q] = activations<DH, BT>(p.cell, slot_of(t - 1), j, du, cn[q]);
    }
    __syncthreads();
    fetch_step<DH, BT>(p, slot, t - kRing, head, b0);
    cp_async_commit();

    // 2. Σ_d R[g, d, k] dg̃_t[j, g·DH + d]
    float acc[BT];
    matvec<DH, BT>(Rc, s.R, r, s.dg + g * DH, 4 * DH, acc);
#pragma unroll
    for (int j = 0; j < BT; ++j) s.part[j * 4 * DH + r] = acc[j];
    cp_async_wait<kRing - 2>();  // step t - 2 has arrived
    __syncthreads();
  }

  // The initial state's gradient: δh through R from step 0, δc, δn, δm.
#pragma unroll
  for (int q = 0; q < kUnits<BT>; ++q) {
    const int u = threadIdx.x + q * kThreads<DH>, j = u / DH, du = u % DH;
    if (u >= BT * DH || b0 + j >= p.B) continue;
    const std::int64_t S1 = static_cast<std::int64_t>(p.B) * HD;
    const std::int64_t at1 = static_cast<std::int64_t>(b0 + j) * HD + head * DH + du;
    if (p.dinitial) {
      const float* pj = s.part + j * 4 * DH;
      p.dinitial[at1] = pj[du] + pj[DH + du] + pj[2 * DH + du] + pj[3 * DH + du];
      p.dinitial[S1 + at1] = dc[q];
      if (NS == 4) p.dinitial[2 * S1 + at1] = dn[q], p.dinitial[3 * S1 + at1] = dm[q];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// dR and db: for each head, dR[r, k] = Σ_{b,t} dg̃[b, t, r] h[b, t - 1, k] (h[b, -1] the initial h)
// and db[r] = Σ_{b,t} dg̃[b, t, r], r = g·DH + d. Split over the B·T rows: block (head, row tile,
// split) sums rows [split·rows_per_split, ...) for kRowsPerCta gate rows × DH columns and writes
// its partial sums; reduce_parts adds the splits in order.
constexpr int kRowsPerCta = 128, kStage = 32;

template <int DH>
constexpr int kSumRows = 4 * DH < kRowsPerCta ? 4 * DH : kRowsPerCta;  // gate rows per block
constexpr int kColGroups = 8;
template <int DH>
constexpr int kSumThreads = kSumRows<DH> / 4 * kColGroups;  // 4 rows x DH / 8 columns each

template <int DH>
__global__ void __launch_bounds__(kSumThreads<DH>) sum_rows(Params p, int rows_per_split) {
  constexpr int kRows = kSumRows<DH>, kThreadsHere = kSumThreads<DH>, kCols = DH / kColGroups;
  __shared__ __align__(16) float A[kStage][kRows];
  __shared__ __align__(16) float H[kStage][DH];
  const int head = blockIdx.x, row0 = blockIdx.y * kRows, split = blockIdx.z;
  const int ri = threadIdx.x / kColGroups, cg = threadIdx.x % kColGroups;
  const std::int64_t HD = static_cast<std::int64_t>(p.NH) * DH, K = static_cast<std::int64_t>(p.B) * p.T;
  const std::int64_t k0 = static_cast<std::int64_t>(split) * rows_per_split, k1 = std::min<std::int64_t>(K, k0 + rows_per_split);
  float acc[4][kCols] = {}, dbacc[4] = {}, dbstage[4] = {};
  for (std::int64_t kk = k0; kk < k1; kk += kStage) {
    for (int i = threadIdx.x; i < kStage * kRows; i += kThreadsHere) {
      const int st = i / kRows, rr = row0 + i % kRows, gg = rr / DH, d = rr % DH;
      const std::int64_t row = kk + st;  // = b·T + t
      A[st][i % kRows] = row < k1 ? p.dg32[(row * 4 + gg) * HD + head * DH + d] : 0.f;
    }
    for (int i = threadIdx.x; i < kStage * DH; i += kThreadsHere) {
      const int st = i / DH, col = i % DH;
      const std::int64_t row = kk + st, b = row / p.T, t = row % p.T;
      float h = 0.f;
      if (row < k1) {
        if (t > 0) h = p.saved_states[(b * p.T + t - 1) * HD + head * DH + col];
        else if (p.initial) h = p.initial[b * HD + head * DH + col];
      }
      H[st][col] = h;
    }
    __syncthreads();
#pragma unroll 4
    for (int st = 0; st < kStage; ++st) {
      const float4 a = *reinterpret_cast<const float4*>(&A[st][4 * ri]);
      const float av[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        const float h = H[st][cg + kColGroups * c];
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[i][c] = fmaf(av[i], h, acc[i][c]);
      }
      if (cg == 0) {
#pragma unroll
        for (int i = 0; i < 4; ++i) dbstage[i] += av[i];
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) dbacc[i] += dbstage[i], dbstage[i] = 0.f;  // two-level: error ~ (stage + stages) ulps
    __syncthreads();
  }
  // Partial sums: dR_part (splits, NH, 4·DH, DH), db_part (splits, NH, 4·DH).
  float* dR_part = p.dR_part + (static_cast<std::int64_t>(split) * p.NH + head) * 4 * DH * DH;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int rr = row0 + 4 * ri + i;
#pragma unroll
    for (int c = 0; c < kCols; ++c) dR_part[static_cast<std::int64_t>(rr) * DH + cg + kColGroups * c] = acc[i][c];
    if (cg == 0) p.db_part[(static_cast<std::int64_t>(split) * p.NH + head) * 4 * DH + rr] = dbacc[i];
  }
}

// dR (4, NH, DH, DH) and db (4, NH, DH) in the input type: the splits' partial sums added in order.
template <class In>
__global__ void reduce_parts(Params p, int splits) {
  const std::int64_t HD = static_cast<std::int64_t>(p.NH) * p.DH, nR = 4 * HD * p.DH;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < nR + 4 * HD;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    if (e < nR) {  // e = ((g·NH + head)·DH + d)·DH + k
      const std::int64_t kcol = e % p.DH, d = e / p.DH % p.DH, head = e / (p.DH * p.DH) % p.NH, g = e / (HD * p.DH);
      const std::int64_t at = (head * 4 * p.DH + g * p.DH + d) * p.DH + kcol;
      float sum = 0.f;
      for (int sp = 0; sp < splits; ++sp) sum += p.dR_part[sp * nR + at];
      static_cast<In*>(p.dR)[e] = from_float<In>(sum);
    } else {  // e - nR = (g·NH + head)·DH + d
      const std::int64_t f = e - nR, d = f % p.DH, head = f / p.DH % p.NH, g = f / HD;
      const std::int64_t at = head * 4 * p.DH + g * p.DH + d;
      float sum = 0.f;
      for (int sp = 0; sp < splits; ++sp) sum += p.db_part[sp * 4 * HD + at];
      static_cast<In*>(p.db)[f] = from_float<In>(sum);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Launch: the batch tile BT is the smallest that keeps every CTA resident at once (the steps of all
// CTAs then run side by side); larger batches take larger tiles.

template <int DH, int BT, class In>
void launch_one(const Params& p, bool backward, cudaStream_t stream) {
  const dim3 grid(p.NH, (p.B + BT - 1) / BT);
  if (backward) {
    const std::size_t bytes = sizeof(BackwardSmem<DH, BT>);
    auto kernel = backward_kernel<DH, BT, In>;
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
               "slstm backward: shared memory");
    kernel<<<grid, 4 * DH, bytes, stream>>>(p);
  } else {
    const std::size_t bytes = sizeof(ForwardSmem<DH, BT, In>);
    auto kernel = forward_kernel<DH, BT, In>;
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
               "slstm forward: shared memory");
    kernel<<<grid, 4 * DH, bytes, stream>>>(p);
  }
  check_cuda(cudaGetLastError(), backward ? "slstm backward kernel" : "slstm forward kernel");
}

template <int DH>
constexpr int kMaxTile = DH <= 64 ? 8 : 4;  // DH = 128 keeps half of R in shared memory: room for 4 rows

template <int DH, class In>
void launch_tiled(const Params& p, bool backward, cudaStream_t stream) {
  int bt = p.batch_tile;
  if (bt == 0) {
    int device = 0, sms = 0;
    check_cuda(cudaGetDevice(&device), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "SM count");
    const int per_sm = DH <= 64 ? 2 : 1;
    bt = kMaxTile<DH>;
    for (const int c : {1, 2, 4, 8}) {
      if (static_cast<std::int64_t>(p.NH) * ((p.B + c - 1) / c) <= static_cast<std::int64_t>(per_sm) * sms) {
        bt = c;
        break;
      }
    }
  }
  switch (std::min(bt, kMaxTile<DH>)) {
    case 1: return launch_one<DH, 1, In>(p, backward, stream);
    case 2: return launch_one<DH, 2, In>(p, backward, stream);
    case 4: return launch_one<DH, 4, In>(p, backward, stream);
    default:
      if constexpr (kMaxTile<DH> >= 8) return launch_one<DH, 8, In>(p, backward, stream);
  }
}

template <class In>
void launch(const Params& p, bool backward, cudaStream_t stream) {
  switch (p.DH) {
    case 16: return launch_tiled<16, In>(p, backward, stream);
    case 32: return launch_tiled<32, In>(p, backward, stream);
    case 64: return launch_tiled<64, In>(p, backward, stream);
    default: return launch_tiled<128, In>(p, backward, stream);
  }
}

template <int DH>
void launch_sum_rows(const Params& p, int rows_per_split, int splits, cudaStream_t stream) {
  const dim3 grid(p.NH, 4 * DH / kSumRows<DH>, splits);
  sum_rows<DH><<<grid, kSumThreads<DH>, 0, stream>>>(p, rows_per_split);
  check_cuda(cudaGetLastError(), "slstm dR kernel");
}

}  // namespace

void run_forward(const Params& p, DType dtype, cudaStream_t stream) {
  if (dtype == DType::float32) {
    launch<float>(p, false, stream);
  } else {
    launch<__nv_bfloat16>(p, false, stream);
  }
}

void run_backward(Params p, DType dtype, cudaStream_t stream) {
  const std::int64_t n_wx = static_cast<std::int64_t>(p.B) * p.T * 4 * p.NH * p.DH;
  // dg̃ in float32 for the dR product: dWx itself for float32 inputs.
  float* scratch = nullptr;
  const std::int64_t K = static_cast<std::int64_t>(p.B) * p.T;
  const int row_tiles = std::max(1, 4 * p.DH / kRowsPerCta);
  // Enough splits for about four blocks per SM, each split at least one stage of rows.
  const std::int64_t want = std::max<std::int64_t>(1, 4 * 132 / (static_cast<std::int64_t>(p.NH) * row_tiles));
  const int rows_per_split = static_cast<int>(std::max<std::int64_t>(kStage, ((K + want - 1) / want + kStage - 1) / kStage * kStage));
  const int splits = static_cast<int>((K + rows_per_split - 1) / rows_per_split);
  const std::int64_t n_part = static_cast<std::int64_t>(splits) * p.NH * 4 * p.DH * (p.DH + 1);
  const std::int64_t n_scratch = (dtype == DType::float32 ? 0 : n_wx) + n_part;
  check_cuda(cudaMallocAsync(reinterpret_cast<void**>(&scratch), n_scratch * sizeof(float), stream),
             "slstm backward: scratch allocation");
  p.dg32 = dtype == DType::float32 ? static_cast<float*>(p.dWx) : scratch;
  p.dR_part = scratch + (dtype == DType::float32 ? 0 : n_wx);
  p.db_part = p.dR_part + static_cast<std::int64_t>(splits) * p.NH * 4 * p.DH * p.DH;
  if (dtype == DType::float32) {
    launch<float>(p, true, stream);
  } else {
    launch<__nv_bfloat16>(p, true, stream);
  }
  switch (p.DH) {
    case 16: launch_sum_rows<16>(p, rows_per_split, splits, stream); break;
    case 32: launch_sum_rows<32>(p, rows_per_split, splits, stream); break;
    case 64: launch_sum_rows<64>(p, rows_per_split, splits, stream); break;
    default: launch_sum_rows<128>(p, rows_per_split, splits, stream); break;
  }
  const std::int64_t n_out = 4LL * p.NH * p.DH * (p.DH + 1);
  const int blocks = static_cast<int>(std::min<std::int64_t>(1024, (n_out + 255) / 256));
  if (dtype == DType::float32) {
    reduce_parts<float><<<blocks, 256, 0, stream>>>(p, splits);
  } else {
    reduce_parts<__nv_bfloat16><<<blocks, 256, 0, stream>>>(p, splits);
  }
  check_cuda(cudaGetLastError(), "slstm dR reduction");
  check_cuda(cudaFreeAsync(scratch, stream), "slstm backward: scratch release");
}

}  // namespace flashlstm::cuda::slstm::detail
