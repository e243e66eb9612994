// The pLSTM on a DAG on the GPU (cuda/plstm/plstm.hpp): the recurrent form, level by level.
//
//   C^e = Σ_{e' in E_in(n)} T^n_{e'e} C^{e'} + S_e k^n (v^n)^T        for e in E_out(n)
//   h^n = s Σ_{e in E_in(n)} M_e (C^e)^T q^n + s D^n (q^n·k^n) v^n
//
// One warp per (batch·head, node) of a level; one launch per level of the level schedule (every
// predecessor of a node is on an earlier level, so its in-edge states are complete). The state of
// every edge, DQK x DV float32, is kept in a buffer for the backward. Lanes own state elements
// (i, j) = divmod(lane + 32 r, DV), and columns j = lane + 32 r of h.
//
// The backward runs the levels in reverse. Node n is the only writer of the adjoint states dC on its
// in-edges, of dT on its arcs, dS on its out-edges, dM on its in-edges and of its own dq, dk, dv, dD:
//
//   dC^e   = Σ_{e' out} T^n_{ee'} dC^{e'} + s M_e q^n (dh^n)^T                 (e in E_in(n))
//   dq^n   = s Σ_{e in} M_e C^e dh^n + s D^n (dh^n·v^n) k^n
//   dk^n   = Σ_{e' out} S_e' dC^{e'} v^n + s D^n (dh^n·v^n) q^n
//   dv^n   = Σ_{e' out} S_e' (dC^{e'})^T k^n + s D^n (q^n·k^n) dh^n
//   dS_e'  = (k^n)^T dC^{e'} v^n,   dM_e = s (q^n)^T C^e dh^n,   dT^n_{ee'} = <dC^{e'}, C^e>,
//   dD^n   = s (q^n·k^n)(dh^n·v^n)
//
// Arcs of node n are numbered in-edge-major (graph::line_graph): arc_offsets[n] + a·d_out + o for
// its a-th in-edge and o-th out-edge in the CSR order.
#include "cuda/device.cuh"
#include "cuda/plstm/params.hpp"

#include <cuda_bf16.h>

#include <cstdint>

namespace flashlstm::cuda::plstm::detail {
namespace {

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// The warp's (batch·head, node) on a level of `count` nodes starting at level_begin, or false.
struct Work {
  int bh, n, lane;
};
__device__ __forceinline__ bool claim(const DagParams& p, int level_begin, int count, Work& w) {
  const std::int64_t warp = (std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (warp >= std::int64_t(count) * p.B * p.NH) return false;
  w.bh = static_cast<int>(warp / count);
  w.n = p.level_nodes[level_begin + warp % count];
  w.lane = threadIdx.x % 32;
  return true;
}

// q·k (or any two rows of length D) summed over the warp.
template <class T>
__device__ float dot(const T* a, const T* b, int D, int lane) {
  float s = 0.f;
  for (int i = lane; i < D; i += 32) s += to_float(a[i]) * to_float(b[i]);
  return warp_sum(s);
}

template <class T>
__global__ void dag_forward_level(DagParams p, int level_begin, int count) {
  Work w;
  if (!claim(p, level_begin, count, w)) return;
  const int n = w.n, lane = w.lane, DQK = p.DQK, DV = p.DV;
  const std::int64_t state = std::int64_t(DQK) * DV;
  const T* q = static_cast<const T*>(p.q) + (std::int64_t(w.bh) * p.N + n) * DQK;
  const T* k = static_cast<const T*>(p.k) + (std::int64_t(w.bh) * p.N + n) * DQK;
  const T* v = static_cast<const T*>(p.v) + (std::int64_t(w.bh) * p.N + n) * DV;
  const float* S = p.S + std::int64_t(w.bh) * p.E;
  const float* M = p.M + std::int64_t(w.bh) * p.E;
  const float* Tg = p.T + std::int64_t(w.bh) * p.A + p.arc_offsets[n];
  float* C = p.states + std::int64_t(w.bh) * p.E * state;
  const int in0 = p.in_offsets[n], in1 = p.in_offsets[n + 1], out0 = p.out_offsets[n], out1 = p.out_offsets[n + 1];
  const int d_out = out1 - out0;

  // h = s (Σ_e M_e (C^e)^T q + D (q·k) v); not when the forward runs for the backward's states.
  const float qk = dot(q, k, DQK, lane), Dn = p.D[std::int64_t(w.bh) * p.N + n];
  T* h = p.h ? static_cast<T*>(p.h) + (std::int64_t(w.bh) * p.N + n) * DV : nullptr;
  for (int j = lane; h && j < DV; j += 32) {
    float acc = 0.f;
    for (int a = in0; a < in1; ++a) {
      const int e = p.in_edges[a];
      const float* Ce = C + e * state;
      float s = 0.f;
      for (int i = 0; i < DQK; ++i) s += to_float(q[i]) * Ce[i * DV + j];
      acc += M[e] * s;
    }
    h[j] = from_float<T>(p.scale * (acc + Dn * qk * to_float(v[j])));
  }
  // The out-edge states.
  for (int o = 0; o < d_out; ++o) {
    const int e_out = p.out_edges[out0 + o];
    const float Se = S[e_out];
    float* Co = C + e_out * state;
    for (std::int64_t x = lane; x < state; x += 32) {
      const int i = static_cast<int>(x / DV), j = static_cast<int>(x % DV);
      float acc = Se * to_float(k[i]) * to_float(v[j]);
      for (int a = in0; a < in1; ++a) acc += Tg[(a - in0) * d_out + o] * C[p.in_edges[a] * state + x];
      Co[x] = acc;
    }
  }
}

template <class T>
__global__ void dag_backward_level(DagParams p, int level_begin, int count) {
  Work w;
  if (!claim(p, level_begin, count, w)) return;
  const int n = w.n, lane = w.lane, DQK = p.DQK, DV = p.DV;
  const std::int64_t state = std::int64_t(DQK) * DV, row = std::int64_t(w.bh) * p.N + n;
  const T* q = static_cast<const T*>(p.q) + row * DQK;
  const T* k = static_cast<const T*>(p.k) + row * DQK;
  const T* v = static_cast<const T*>(p.v) + row * DV;
  const T* dh = static_cast<const T*>(p.dh) + row * DV;
  const float* S = p.S + std::int64_t(w.bh) * p.E;
  const float* M = p.M + std::int64_t(w.bh) * p.E;
  const float* Tg = p.T + std::int64_t(w.bh) * p.A + p.arc_offsets[n];
  const float* C = p.states + std::int64_t(w.bh) * p.E * state;
  float* dC = p.dstates + std::int64_t(w.bh) * p.E * state;
  const int in0 = p.in_offsets[n], in1 = p.in_offsets[n + 1], out0 = p.out_offsets[n], out1 = p.out_offsets[n + 1];
  const int d_out = out1 - out0;
  const float s = p.scale, Dn = p.D[row];
  const float qk = dot(q, k, DQK, lane), dhv = dot(dh, v, DV, lane);
  auto in_state = [&](int a) { return C + std::int64_t(p.in_edges[in0 + a]) * state; };
  auto out_adjoint = [&](int o) { return dC + std::int64_t(p.out_edges[out0 + o]) * state; };

  // dq_i = s Σ_e M_e Σ_j C^e_ij dh_j + s D (dh·v) k_i;  dk_i = Σ_e' S_e' Σ_j dC^e'_ij v_j + s D (dh·v) q_i
  T* dq = static_cast<T*>(p.dq) + row * DQK;
  T* dk = static_cast<T*>(p.dk) + row * DQK;
  for (int i = 0; i < DQK; ++i) {
    float gq = 0.f, gk = 0.f;
    for (int j = lane; j < DV; j += 32) {
      float cq = 0.f, ck = 0.f;
      for (int a = 0; a < in1 - in0; ++a) cq += M[p.in_edges[in0 + a]] * in_state(a)[i * DV + j];
      for (int o = 0; o < d_out; ++o) ck += S[p.out_edges[out0 + o]] * out_adjoint(o)[i * DV + j];
      gq += cq * to_float(dh[j]);
      gk += ck * to_float(v[j]);
    }
    gq = warp_sum(gq), gk = warp_sum(gk);
    if (lane == 0) {
      dq[i] = from_float<T>(s * gq + s * Dn * dhv * to_float(k[i]));
      dk[i] = from_float<T>(gk + s * Dn * dhv * to_float(q[i]));
    }
  }
  // dv_j = Σ_e' S_e' Σ_i dC^e'_ij k_i + s D (q·k) dh_j
  T* dv = static_cast<T*>(p.dv) + row * DV;
  for (int j = lane; j < DV; j += 32) {
    float g = 0.f;
    for (int o = 0; o < d_out; ++o) {
      const float* dCo = out_adjoint(o);
      float c = 0.f;
      for (int i = 0; i < DQK; ++i) c += dCo[i * DV + j] * to_float(k[i]);
      g += S[p.out_edges[out0 + o]] * c;
    }
    dv[j] = from_float<T>(g + s * Dn * qk * to_float(dh[j]));
  }
  if (lane == 0) p.dD[row] = s * qk * dhv;
  // dS_e' = k^T dC^e' v
  for (int o = 0; o < d_out; ++o) {
    const float* dCo = out_adjoint(o);
    float g = 0.f;
    for (std::int64_t x = lane; x < state; x += 32)
      g += to_float(k[x / DV]) * dCo[x] * to_float(v[x % DV]);
    g = warp_sum(g);
    if (lane == 0) p.dS[std::int64_t(w.bh) * p.E + p.out_edges[out0 + o]] = g;
  }
  // Per in-edge: dM_e = s q^T C^e dh, dT_{ee'} = <dC^e', C^e>, and dC^e.
  for (int a = 0; a < in1 - in0; ++a) {
    const int e = p.in_edges[in0 + a];
    const float* Ce = in_state(a);
    float gM = 0.f;
    for (std::int64_t x = lane; x < state; x += 32) gM += to_float(q[x / DV]) * Ce[x] * to_float(dh[x % DV]);
    gM = warp_sum(gM);
    if (lane == 0) p.dM[std::int64_t(w.bh) * p.E + e] = s * gM;
    for (int o = 0; o < d_out; ++o) {
      const float* dCo = out_adjoint(o);
      float g = 0.f;
      for (std::int64_t x = lane; x < state; x += 32) g += dCo[x] * Ce[x];
      g = warp_sum(g);
      if (lane == 0) p.dT[std::int64_t(w.bh) * p.A + p.arc_offsets[n] + a * d_out + o] = g;
    }
    float* dCe = dC + std::int64_t(e) * state;
    const float Me = M[e];
    for (std::int64_t x = lane; x < state; x += 32) {
      float acc = s * Me * to_float(q[x / DV]) * to_float(dh[x % DV]);
      for (int o = 0; o < d_out; ++o) acc += Tg[a * d_out + o] * out_adjoint(o)[x];
      dCe[x] = acc;
    }
  }
}

template <class T, class Kernel>
void run_levels(const DagParams& p, Kernel kernel, bool reverse, cudaStream_t stream, const char* what) {
  const std::int64_t heads = std::int64_t(p.B) * p.NH;
  constexpr int kWarps = 4;
  for (int step = 0; step < p.levels; ++step) {
    const int l = reverse ? p.levels - 1 - step : step;
    const int begin = p.host_level_offsets[l], count = p.host_level_offsets[l + 1] - begin;
    if (count == 0) continue;
    const std::int64_t warps = heads * count;
    const unsigned blocks = static_cast<unsigned>((warps + kWarps - 1) / kWarps);
    kernel<<<blocks, 32 * kWarps, 0, stream>>>(p, begin, count);
    check_cuda(cudaGetLastError(), what);
  }
}

}  // namespace

void run_dag_forward(const DagParams& p, DType dtype, cudaStream_t stream) {
  if (dtype == DType::float32) run_levels<float>(p, dag_forward_level<float>, false, stream, "pLSTM DAG forward");
  else run_levels<__nv_bfloat16>(p, dag_forward_level<__nv_bfloat16>, false, stream, "pLSTM DAG forward");
}

void run_dag_backward(const DagParams& p, DType dtype, cudaStream_t stream) {
  if (dtype == DType::float32) run_levels<float>(p, dag_backward_level<float>, true, stream, "pLSTM DAG backward");
  else run_levels<__nv_bfloat16>(p, dag_backward_level<__nv_bfloat16>, true, stream, "pLSTM DAG backward");
}

}  // namespace flashlstm::cuda::plstm::detail
