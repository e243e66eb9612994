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
// All arithmetic is float32; the cells are cells.cuh's. These kernels serve float32 inputs (and bf16
// ones where the tensor-core kernels of tensor_core.cu do not apply).
#include "cuda/device.cuh"
#include "cuda/slstm/cells.cuh"
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
  CellState cs[kUnits<BT>];
#pragma unroll
  for (int q = 0; q < kUnits<BT>; ++q) {
    const int u = threadIdx.x + q * kThreads<DH>, j = u / DH, du = u % DH;
    if (u < BT * DH) {
      float h0 = 0.f;
      if (p.initial && b0 + j < p.B) {
        const std::int64_t at = static_cast<std::int64_t>(b0 + j) * HD + head * DH + du, S = p.B * HD;
        h0 = p.initial[at];
        cs[q].c = p.initial[S + at];
        if (NS == 4) cs[q].n = p.initial[2 * S + at], cs[q].m = p.initial[3 * S + at];
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
      const float h = cell_forward(p.cell, gj[du], gj[DH + du], gj[2 * DH + du], gj[3 * DH + du], cs[q]);
      s.h[j * DH + du] = h;
      if (b0 + j < p.B) {
        const std::int64_t S = static_cast<std::int64_t>(p.B) * p.T * HD;
        const std::int64_t at = (static_cast<std::int64_t>(b0 + j) * p.T + t) * HD + head * DH + du;
        if (p.states) {
          p.states[at] = h;
          p.states[S + at] = cs[q].c;
          if (NS == 4) p.states[2 * S + at] = cs[q].n, p.states[3 * S + at] = cs[q].m;
        }
        if (p.last && t == p.T - 1) {
          const std::int64_t S1 = static_cast<std::int64_t>(p.B) * HD;
          const std::int64_t at1 = static_cast<std::int64_t>(b0 + j) * HD + head * DH + du;
          p.last[at1] = h;
          p.last[S1 + at1] = cs[q].c;
          if (NS == 4) p.last[2 * S1 + at1] = cs[q].n, p.last[3 * S1 + at1] = cs[q].m;
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

// The activations of step t for unit (j, du) from its ring slot (cells.cuh).
template <int DH, int BT>
__device__ __forceinline__ StepActivations activations(CellKind cell, const BackwardSlot<DH, BT>& slot, int j, int du,
                                                       float c_next) {
  const float* gj = slot.g + j * 4 * DH;
  const float* prev = slot.prev + j * DH + du;
  const bool lstm = cell == CellKind::lstm;
  return detail::activations(cell, gj[du], gj[DH + du], gj[2 * DH + du], gj[3 * DH + du], prev[0], prev[BT * DH],
                             lstm ? 1.f : prev[2 * BT * DH], lstm ? 0.f : prev[3 * BT * DH], c_next);
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
  CellGrad cg[kUnits<BT>];
#pragma unroll
  for (int q = 0; q < kUnits<BT>; ++q) {
    const int u = threadIdx.x + q * kThreads<DH>, j = u / DH, du = u % DH;
    if (u >= BT * DH) continue;
    float dh_last = 0.f;
    if (b0 + j < p.B) {
      const std::int64_t S = static_cast<std::int64_t>(p.B) * p.T * HD;
      const std::int64_t at = (static_cast<std::int64_t>(b0 + j) * p.T + p.T - 1) * HD + head * DH + du;
      cg[q].h = p.saved_states[at];
      cg[q].c = p.saved_states[S + at];
      if (NS == 4) cg[q].n = p.saved_states[2 * S + at];
      if (p.dlast) {
        const std::int64_t S1 = static_cast<std::int64_t>(p.B) * HD;
        const std::int64_t at1 = static_cast<std::int64_t>(b0 + j) * HD + head * DH + du;
        dh_last = p.dlast[at1];
        cg[q].dc = p.dlast[S1 + at1];
        if (NS == 4) cg[q].dn = p.dlast[2 * S1 + at1], cg[q].dm = p.dlast[3 * S1 + at1];
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
    if (u < BT * DH) act[q] = activations<DH, BT>(p.cell, slot_of(p.T - 1), u / DH, u % DH, cg[q].c);
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
      float dgs[4];
      cell_backward(p.cell, act[q], dH, cg[q], dgs);
      float* dgj = s.dg + j * 4 * DH;
#pragma unroll
      for (int gg = 0; gg < 4; ++gg) dgj[gg * DH + du] = dgs[gg];
      if (b0 + j < p.B) {
        const std::int64_t at = (static_cast<std::int64_t>(b0 + j) * p.T + t) * 4 * HD + head * DH + du;
        for (int gg = 0; gg < 4; ++gg) {
          static_cast<In*>(p.dWx)[at + gg * HD] = from_float<In>(dgs[gg]);
          if (p.dg32 != p.dWx) p.dg32[at + gg * HD] = dgs[gg];
        }
      }
      if (t > 0) act[q] = activations<DH, BT>(p.cell, slot_of(t - 1), j, du, cg[q].c);
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
      p.dinitial[S1 + at1] = cg[q].dc;
      if (NS == 4) p.dinitial[2 * S1 + at1] = cg[q].dn, p.dinitial[3 * S1 + at1] = cg[q].dm;
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

// dR (4, NH, DH, DH) and db (4, NH, DH) in the input type: the partial sums (dR's `splits`, db's
// `db_splits`) added in order.
template <class In>
__global__ void reduce_parts(Params p, int splits, int db_splits) {
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
      for (int sp = 0; sp < db_splits; ++sp) sum += p.db_part[sp * 4 * HD + at];
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

bool aligned16(const Params& p) {
  for (const void* a : {p.Wx, static_cast<const void*>(p.initial), static_cast<const void*>(p.saved_states),
                        static_cast<const void*>(p.saved_gates), static_cast<const void*>(p.dh)})
    if (reinterpret_cast<std::uintptr_t>(a) % 16 != 0) return false;
  return true;
}

}  // namespace

void run_forward(Params p, DType dtype, cudaStream_t stream) {
  p.aligned16 = aligned16(p);
  if (tensor_core_applies(p, dtype)) {
    run_tensor_core(p, false, stream);
  } else if (dtype == DType::float32) {
    launch<float>(p, false, stream);
  } else {
    launch<__nv_bfloat16>(p, false, stream);
  }
}

void run_backward(Params p, DType dtype, cudaStream_t stream) {
  p.aligned16 = aligned16(p);
  const bool tensor_cores = tensor_core_applies(p, dtype);
  // dR = Σ dg̃ᵀ h over the B·T rows, split so that there are about four blocks per SM, each split
  // at least one stage of rows; db the same (float32 kernels) or per batch tile of the recurrent
  // kernel (tensor cores).
  const std::int64_t K = static_cast<std::int64_t>(p.B) * p.T;
  const DRSplit split = tensor_cores ? tensor_core_dR_split(p) : DRSplit{std::max(1, 4 * p.DH / kRowsPerCta), kStage};
  const std::int64_t want = std::max<std::int64_t>(1, 4 * 132 / (static_cast<std::int64_t>(p.NH) * split.blocks));
  const int rows_per_split = static_cast<int>(
      std::max<std::int64_t>(split.stage, ((K + want - 1) / want + split.stage - 1) / split.stage * split.stage));
  const int splits = static_cast<int>((K + rows_per_split - 1) / rows_per_split);
  const int db_splits = tensor_cores ? (p.B + 7) / 8 : splits;
  // Scratch: dg̃ in float32 for the float32 kernels' dR product with bf16 inputs (dWx itself for
  // float32 inputs; the tensor cores read the bf16 dWx), then the partial sums.
  const bool dg_scratch = !tensor_cores && dtype != DType::float32;
  const std::int64_t n_wx = K * 4 * p.NH * p.DH, n_dR = static_cast<std::int64_t>(splits) * p.NH * 4 * p.DH * p.DH;
  const std::int64_t n_scratch = (dg_scratch ? n_wx : 0) + n_dR + static_cast<std::int64_t>(db_splits) * p.NH * 4 * p.DH;
  float* scratch = nullptr;
  Scratch memory(stream);
  memory.add(scratch, n_scratch);
  memory.allocate();
  p.dg32 = dg_scratch ? scratch : dtype == DType::float32 ? static_cast<float*>(p.dWx) : nullptr;
  p.dR_part = scratch + (dg_scratch ? n_wx : 0);
  p.db_part = p.dR_part + n_dR;
  if (tensor_cores) {
    run_tensor_core(p, true, stream);
    run_tensor_core_dR(p, rows_per_split, splits, stream);
  } else {
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
  }
  const std::int64_t n_out = 4LL * p.NH * p.DH * (p.DH + 1);
  const int blocks = static_cast<int>(std::min<std::int64_t>(1024, (n_out + 255) / 256));
  if (dtype == DType::float32) {
    reduce_parts<float><<<blocks, 256, 0, stream>>>(p, splits, db_splits);
  } else {
    reduce_parts<__nv_bfloat16><<<blocks, 256, 0, stream>>>(p, splits, db_splits);
  }
  check_cuda(cudaGetLastError(), "slstm dR reduction");
}

}  // namespace flashlstm::cuda::slstm::detail
