// The pLSTM on a DAG on the GPU (cuda/plstm/plstm.hpp): the recurrent form as a dataflow over the nodes.
//
//   C^e = Σ_{e' in E_in(n)} T^n_{e'e} C^{e'} + S_e k^n (v^n)^T        for e in E_out(n)
//   h^n = s Σ_{e in E_in(n)} M_e (C^e)^T q^n + s D^n (q^n·k^n) v^n
//
// The backward runs the nodes in reverse. Node n is the only writer of the adjoint states dC on its
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
//
// Schedule: one persistent launch per direction. A task is one (batch·head, node); warps claim tasks
// from a counter in the level schedule's order (the backward in reverse), so every task a task waits
// on was claimed before it by a warp that is running: the wait always ends, whatever the number of
// resident blocks. A task waits on one ready flag per input edge (forward: the in-edges' states;
// backward: the out-edges' adjoints), computes the edge states it hands on first and releases their
// flags (stores, warp barrier, then lane 0's fence and flag stores; the waiting warp's lane 0 polls
// with relaxed loads, then a fence and a warp barrier), and only then the values nothing waits on
// (h, or the node's gradients). The critical path is one state update per level of the schedule, not
// one launch.
//
// Every edge's state, DQK x DV float32, is kept for the backward. In the state updates a lane owns the
// elements x = 256 c + lane + 32 r (r < 8) of chunk c, (i, j) = divmod(x, DV): loads of 32 lanes are
// contiguous.
#include "cuda/device.cuh"
#include "cuda/plstm/params.hpp"

#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

namespace flashlstm::cuda::plstm::detail {
namespace {

constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kMaxBlocksPerSM = 8;  // a cap; the 128 registers of __launch_bounds__ allow 4 blocks (16 warps)
constexpr int kSteps = 8;           // state elements a lane owns per chunk
constexpr int kChunk = 32 * kSteps;
constexpr int kGroup = 4;           // output edges per pass, input edges whose loads are in flight together

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// q·k (or any two rows of length D) summed over the warp.
template <class T>
__device__ float dot(const T* a, const T* b, int D, int lane) {
  float s = 0.f;
  for (int i = lane; i < D; i += 32) s += to_float(a[i]) * to_float(b[i]);
  return warp_sum(s);
}

__device__ __forceinline__ int load_relaxed(const int* flag) {
  int value;
  asm volatile("ld.relaxed.gpu.global.b32 %0, [%1];" : "=r"(value) : "l"(flag) : "memory");
  return value;
}
__device__ __forceinline__ void store_relaxed(int* flag, int value) {
  asm volatile("st.relaxed.gpu.global.b32 [%0], %1;" ::"l"(flag), "r"(value) : "memory");
}

// Waits until the flags of edges[0 .. count) are set: lane 0 polls with relaxed loads (an acquire
// load would drop the SM's L1 lines at every poll), backing off up to 128 ns; a fence after the
// last one makes it an acquire.
__device__ void wait_ready(const int* ready, const std::int32_t* edges, int count, int lane) {
  if (lane == 0) {
    for (int a = 0; a < count; ++a)
      for (unsigned ns = 0; load_relaxed(ready + edges[a]) == 0; ns = ns ? min(2 * ns, 128u) : 32u)
        if (ns) __nanosleep(ns);
    asm volatile("fence.acq_rel.gpu;" ::: "memory");
  }
  __syncwarp();
}

// Sets the flags of edges[0 .. count) once every lane's stores before it are done: a warp barrier,
// then lane 0's fence and relaxed stores (together a release).
__device__ void release_ready(int* ready, const std::int32_t* edges, int count, int lane) {
  __syncwarp();
  if (lane == 0 && count > 0) {
    asm volatile("fence.acq_rel.gpu;" ::: "memory");
    for (int a = 0; a < count; ++a) store_relaxed(ready + edges[a], 1);
  }
}

// The elements of chunk c a lane owns: x = 256 c + lane + 32 r, row i and column j of the state.
struct Elements {
  int i[kSteps], j[kSteps];
  bool valid[kSteps];
};
__device__ Elements elements(std::int64_t chunk, int lane, int DQK, int DV) {
  Elements e;
  const std::int64_t x = chunk * kChunk + lane;
  int i = static_cast<int>(x / DV), j = static_cast<int>(x % DV);
  const int di = 32 / DV, dj = 32 % DV;
#pragma unroll
  for (int r = 0; r < kSteps; ++r) {
    e.i[r] = i, e.j[r] = j, e.valid[r] = i < DQK;
    i += di, j += dj;
    if (j >= DV) j -= DV, ++i;
  }
  return e;
}

// One chunk of a node's state update: for each output edge o (out_edges[o], o < n_out),
//   out_o = coef(o) · (x_i y_j) + Σ_b w[b·w_in + o·w_out] in_b      (in_b: in_edges[b], b < n_in)
// on the elements el of the chunk at `offset`. Outputs go in groups of kGroup, inputs in batches of
// kGroup whose loads are in flight together: a node with both degrees at most kGroup reads each input
// once. Both directions run it: the forward's out-edge states from its in-edges, the backward's
// in-edge adjoints from its out-edges.
template <class Coef>
__device__ void update_chunk(const float* in_base, const std::int32_t* in_edges, int n_in, float* out_base,
                             const std::int32_t* out_edges, int n_out, Coef coef, const float* w, int w_in, int w_out,
                             const float (&xy)[kSteps], std::int64_t state, std::int64_t offset, const Elements& el) {
  for (int o0 = 0; o0 < n_out; o0 += kGroup) {
    float acc[kGroup][kSteps];
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      const float a = o0 + u < n_out ? coef(o0 + u) : 0.f;
#pragma unroll
      for (int r = 0; r < kSteps; ++r) acc[u][r] = a * xy[r];
    }
    for (int b0 = 0; b0 < n_in; b0 += kGroup) {
      float x[kGroup][kSteps];
#pragma unroll
      for (int v = 0; v < kGroup; ++v) {
        const bool on = b0 + v < n_in;
        const float* in = in_base + (on ? std::int64_t(in_edges[b0 + v]) * state : 0) + offset;
#pragma unroll
        for (int r = 0; r < kSteps; ++r) x[v][r] = on && el.valid[r] ? in[32 * r] : 0.f;
      }
#pragma unroll
      for (int v = 0; v < kGroup; ++v)
#pragma unroll
        for (int u = 0; u < kGroup; ++u) {
          const float wvu = b0 + v < n_in && o0 + u < n_out ? w[(b0 + v) * w_in + (o0 + u) * w_out] : 0.f;
#pragma unroll
          for (int r = 0; r < kSteps; ++r) acc[u][r] += wvu * x[v][r];
        }
    }
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      if (o0 + u >= n_out) break;
      float* out = out_base + std::int64_t(out_edges[o0 + u]) * state + offset;
#pragma unroll
      for (int r = 0; r < kSteps; ++r)
        if (el.valid[r]) out[32 * r] = acc[u][r];
    }
  }
}

// One node's graph arrays, offsets applied; a[x] the coefficient of its x-th output edge (S_e of its
// out-edges forward, s M_e of its in-edges backward) where they are staged, else null.
struct Node {
  const std::int32_t *in, *out;  // in-edge and out-edge ids
  int d_in, d_out;
  const float* T;  // the node's arcs: T[a·d_out + o]
  const float* a;
};
__device__ Node node_arrays(const DagParams& p, int bh, int n) {
  Node nd;
  const int in0 = p.in_offsets[n], out0 = p.out_offsets[n];
  nd.in = p.in_edges + in0, nd.out = p.out_edges + out0;
  nd.d_in = p.in_offsets[n + 1] - in0, nd.d_out = p.out_offsets[n + 1] - out0;
  nd.T = p.T + std::int64_t(bh) * p.A + p.arc_offsets[n];
  nd.a = nullptr;
  return nd;
}

// A warp's copy of a node's arrays in shared memory, for nodes whose degrees are at most kStage.
constexpr int kStage = 8;
struct Stage {
  std::int32_t in[kStage], out[kStage];
  float a[kStage], T[kStage * kStage];
};
// Copies the node's edge ids, arcs and output coefficients (scale · gate[e] for its output edges e:
// the in-edges when outputs_in) into the warp's Stage and points nd at them. Called before the wait,
// so that after it the state update's only global loads are the states; larger nodes read in place.
__device__ void stage_node(Node& nd, const float* gate, float scale, bool outputs_in, Stage& st, int lane) {
  __syncwarp();  // the previous task's reads of the Stage are done
  if (nd.d_in > kStage || nd.d_out > kStage) return;
  const std::int32_t* outputs = outputs_in ? nd.in : nd.out;
  for (int x = lane; x < nd.d_in; x += 32) st.in[x] = nd.in[x];
  for (int x = lane; x < nd.d_out; x += 32) st.out[x] = nd.out[x];
  for (int x = lane; x < (outputs_in ? nd.d_in : nd.d_out); x += 32) st.a[x] = scale * gate[outputs[x]];
  for (int x = lane; x < nd.d_in * nd.d_out; x += 32) st.T[x] = nd.T[x];
  __syncwarp();
  nd.in = st.in, nd.out = st.out, nd.T = st.T, nd.a = st.a;
}

// h = s (Σ_e M_e (C^e)^T q + D (q·k) v), from the in-edges' states.
template <class T>
__device__ void node_output(const DagParams& p, int bh, int n, const Node& nd, int lane) {
  const int DQK = p.DQK, DV = p.DV;
  const std::int64_t row = std::int64_t(bh) * p.N + n;
  const T* __restrict__ q = static_cast<const T*>(p.q) + row * DQK;
  const T* __restrict__ k = static_cast<const T*>(p.k) + row * DQK;
  const T* __restrict__ v = static_cast<const T*>(p.v) + row * DV;
  const float* __restrict__ C = p.states + std::int64_t(bh) * p.E * DQK * DV;
  const float* __restrict__ M = p.M + std::int64_t(bh) * p.E;
  T* __restrict__ h = static_cast<T*>(p.h) + row * DV;
  const float qk = dot(q, k, DQK, lane), Dn = p.D[row];
  for (int j = lane; j < DV; j += 32) {
    float acc = 0.f;
    for (int a = 0; a < nd.d_in; ++a) {
      const float* Ce = C + std::int64_t(nd.in[a]) * DQK * DV;
      float s = 0.f;
      for (int i = 0; i < DQK; ++i) s += to_float(q[i]) * Ce[i * DV + j];
      acc += M[nd.in[a]] * s;
    }
    h[j] = from_float<T>(p.scale * (acc + Dn * qk * to_float(v[j])));
  }
}

// One task's state update, either direction: forward, the out-edge states
//   C^e = S_e k v^T + Σ_a T_ae C^a   from the in-edges' states;
// backward, the in-edge adjoints
//   dC^e = s M_e q dh^T + Σ_o T_eo dC^o   from the out-edges' adjoints,
// chunk by chunk (the first chunk's outer product read before the wait), then the flags of the edges
// it wrote. Returns the node's arrays for what the task computes after the release.
template <class T, bool kBackward>
__device__ Node propagate(const DagParams& p, int bh, int n, int lane, Stage& st) {
  const int DQK = p.DQK, DV = p.DV;
  const std::int64_t state = std::int64_t(DQK) * DV, row = std::int64_t(bh) * p.N + n;
  const T* x = static_cast<const T*>(kBackward ? p.q : p.k) + row * DQK;  // the outer product x y^T
  const T* y = static_cast<const T*>(kBackward ? p.dh : p.v) + row * DV;
  const float* gate = (kBackward ? p.M : p.S) + std::int64_t(bh) * p.E;  // the coefficient's gate
  const float scale = kBackward ? p.scale : 1.f;
  float* C = (kBackward ? p.dstates : p.states) + std::int64_t(bh) * p.E * state;
  int* ready = p.ready + std::int64_t(bh) * p.E;
  Node nd = node_arrays(p, bh, n);
  stage_node(nd, gate, scale, kBackward, st, lane);
  const std::int32_t* inputs = kBackward ? nd.out : nd.in;
  const std::int32_t* outputs = kBackward ? nd.in : nd.out;
  const int n_in = kBackward ? nd.d_out : nd.d_in, n_out = kBackward ? nd.d_in : nd.d_out;
  // T[a·d_out + o]: the forward reads it by (input a, output o), the backward by (input o, output a).
  const int w_in = kBackward ? 1 : nd.d_out, w_out = kBackward ? nd.d_out : 1;
  for (std::int64_t c = 0; c * kChunk < state; ++c) {
    const Elements el = elements(c, lane, DQK, DV);
    float xy[kSteps];
#pragma unroll
    for (int r = 0; r < kSteps; ++r) xy[r] = el.valid[r] ? to_float(x[el.i[r]]) * to_float(y[el.j[r]]) : 0.f;
    if (c == 0) wait_ready(ready, inputs, n_in, lane);
    update_chunk(C, inputs, n_in, C, outputs, n_out, [&](int o) { return nd.a ? nd.a[o] : scale * gate[outputs[o]]; },
                 nd.T, w_in, w_out, xy, state, c * kChunk + lane, el);
  }
  release_ready(ready, outputs, n_out, lane);
  return nd;
}

// The node's gradients, from the states of its in-edges and the adjoints of its out-edges (all complete).
template <class T>
__device__ void node_gradients(const DagParams& p, int bh, int n, const Node& nd, int lane) {
  const int DQK = p.DQK, DV = p.DV;
  const std::int64_t state = std::int64_t(DQK) * DV, row = std::int64_t(bh) * p.N + n;
  const float* __restrict__ C = p.states + std::int64_t(bh) * p.E * state;
  const float* __restrict__ dC = p.dstates + std::int64_t(bh) * p.E * state;
  const T* __restrict__ q = static_cast<const T*>(p.q) + row * DQK;
  const T* __restrict__ k = static_cast<const T*>(p.k) + row * DQK;
  const T* __restrict__ v = static_cast<const T*>(p.v) + row * DV;
  const T* __restrict__ dh = static_cast<const T*>(p.dh) + row * DV;
  const float* __restrict__ S = p.S + std::int64_t(bh) * p.E;
  const float* __restrict__ M = p.M + std::int64_t(bh) * p.E;
  const float s = p.scale, Dn = p.D[row];
  const float qk = dot(q, k, DQK, lane), dhv = dot(dh, v, DV, lane);
  auto in_state = [&](int a) { return C + std::int64_t(nd.in[a]) * state; };
  auto out_adjoint = [&](int o) { return dC + std::int64_t(nd.out[o]) * state; };

  // dq_i = s Σ_e M_e Σ_j C^e_ij dh_j + s D (dh·v) k_i;  dk_i = Σ_e' S_e' Σ_j dC^e'_ij v_j + s D (dh·v) q_i
  T* __restrict__ dq = static_cast<T*>(p.dq) + row * DQK;
  T* __restrict__ dk = static_cast<T*>(p.dk) + row * DQK;
  for (int i = 0; i < DQK; ++i) {
    float gq = 0.f, gk = 0.f;
    for (int j = lane; j < DV; j += 32) {
      float cq = 0.f, ck = 0.f;
      for (int a = 0; a < nd.d_in; ++a) cq += M[nd.in[a]] * in_state(a)[i * DV + j];
      for (int o = 0; o < nd.d_out; ++o) ck += S[nd.out[o]] * out_adjoint(o)[i * DV + j];
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
  T* __restrict__ dv = static_cast<T*>(p.dv) + row * DV;
  for (int j = lane; j < DV; j += 32) {
    float g = 0.f;
    for (int o = 0; o < nd.d_out; ++o) {
      const float* dCo = out_adjoint(o);
      float c = 0.f;
      for (int i = 0; i < DQK; ++i) c += dCo[i * DV + j] * to_float(k[i]);
      g += S[nd.out[o]] * c;
    }
    dv[j] = from_float<T>(g + s * Dn * qk * to_float(dh[j]));
  }
  if (lane == 0) p.dD[row] = s * qk * dhv;
  // dS_e' = k^T dC^e' v
  for (int o = 0; o < nd.d_out; ++o) {
    const float* dCo = out_adjoint(o);
    float g = 0.f;
    for (std::int64_t x = lane; x < state; x += 32) g += to_float(k[x / DV]) * dCo[x] * to_float(v[x % DV]);
    g = warp_sum(g);
    if (lane == 0) p.dS[std::int64_t(bh) * p.E + nd.out[o]] = g;
  }
  // Per in-edge: dM_e = s q^T C^e dh and dT_{ee'} = <dC^e', C^e>.
  for (int a = 0; a < nd.d_in; ++a) {
    const float* Ce = in_state(a);
    float gM = 0.f;
    for (std::int64_t x = lane; x < state; x += 32) gM += to_float(q[x / DV]) * Ce[x] * to_float(dh[x % DV]);
    gM = warp_sum(gM);
    if (lane == 0) p.dM[std::int64_t(bh) * p.E + nd.in[a]] = s * gM;
    for (int o = 0; o < nd.d_out; ++o) {
      const float* dCo = out_adjoint(o);
      float g = 0.f;
      for (std::int64_t x = lane; x < state; x += 32) g += dCo[x] * Ce[x];
      g = warp_sum(g);
      if (lane == 0) p.dT[std::int64_t(bh) * p.A + p.arc_offsets[n] + a * nd.d_out + o] = g;
    }
  }
}

// Claims tasks (batch·head, node) in the schedule's order until none is left.
template <class T, bool kBackward>
__global__ void __launch_bounds__(kThreads, 4) dag_kernel(DagParams p) {
  __shared__ Stage stages[kWarps];
  const int lane = threadIdx.x % 32;
  Stage& st = stages[threadIdx.x / 32];
  const unsigned long long heads = static_cast<unsigned long long>(p.B) * p.NH, tasks = heads * p.N;
  for (;;) {
    unsigned long long t = 0;
    if (lane == 0) t = atomicAdd(p.next_task, 1ull);
    t = __shfl_sync(0xffffffffu, t, 0);
    if (t >= tasks) return;
    const std::int64_t position = static_cast<std::int64_t>(t / heads);
    const int bh = static_cast<int>(t % heads);
    const int n = p.level_nodes[kBackward ? p.N - 1 - position : position];
    const Node nd = propagate<T, kBackward>(p, bh, n, lane, st);
    if constexpr (kBackward) node_gradients<T>(p, bh, n, nd, lane);
    else if (p.h) node_output<T>(p, bh, n, nd, lane);
  }
}

template <class T, bool kBackward>
void launch(const DagParams& p, cudaStream_t stream, const char* what) {
  const std::int64_t heads = std::int64_t(p.B) * p.NH, tasks = heads * p.N;
  if (heads * p.E > 0) check_cuda(cudaMemsetAsync(p.ready, 0, heads * p.E * sizeof(int), stream), what);
  check_cuda(cudaMemsetAsync(p.next_task, 0, sizeof(unsigned long long), stream), what);
  int device = 0, sms = 0, per_sm = 0;
  check_cuda(cudaGetDevice(&device), what);
  check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), what);
  check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, dag_kernel<T, kBackward>, kThreads, 0), what);
  const std::int64_t blocks =
      std::min<std::int64_t>(std::int64_t(sms) * std::clamp(per_sm, 1, kMaxBlocksPerSM), (tasks + kWarps - 1) / kWarps);
  dag_kernel<T, kBackward><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), what);
}

}  // namespace

void run_dag_forward(const DagParams& p, DType dtype, cudaStream_t stream) {
  if (dtype == DType::float32) launch<float, false>(p, stream, "pLSTM DAG forward");
  else launch<__nv_bfloat16, false>(p, stream, "pLSTM DAG forward");
}

void run_dag_backward(const DagParams& p, DType dtype, cudaStream_t stream) {
  if (dtype == DType::float32) launch<float, true>(p, stream, "pLSTM DAG backward");
  else launch<__nv_bfloat16, true>(p, stream, "pLSTM DAG backward");
}

}  // namespace flashlstm::cuda::plstm::detail
