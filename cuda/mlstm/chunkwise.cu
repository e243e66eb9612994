// The chunkwise mLSTM on the GPU (docs/mlstm.md, TFLA's two-level tiling): chunks of L tokens
// (L a multiple of 64) carry the state (C, n, m) from one to the next; inside a chunk every
// kernel works on 64 x 64 tiles, so L is independent of the tile size.
//
// Forward:   gate_prep       per chunk: b = Σ log f, u = log i - b, running max U (double)
//            state_pass      per (DV tile, DQK tile, head), chunks in order: the state entering
//                            each chunk, kept in registers, stored for the output pass
//            chunk_output    per (DV tile, row tile, head), all chunks at once: h = readout of the
//                            state part plus the causal intra-chunk part
//
// Backward (the exact derivative, normaliser and stabiliser included; the same algebra as
// reference/mlstm/parallel.cpp's segment_backward, regrouped so that each piece is a tile product):
//            state_pass, then chunk_output in statistics mode (per token: den, m_r, dh·num)
//            readout_grad    per token: dhat, the gradients reaching den and m_r, the row sums of
//                            dlogD and their state-column entries
//            state_pass_reverse  chunks in reverse: the adjoint state at each chunk's exit
//            intra_grad      per (key tile, row tile): dA = W ∘ (dnum Vᵀ + delta), P = A ∘ W
//            grad_q, grad_k, grad_v   tile products of dA and P with K, Q̂, dnum, plus state terms
//
// Non-finite inputs propagate as in the recurrent form: the causal products of the diagonal tiles
// (P V, dA K, dAᵀ Q̂, Pᵀ dnum) skip the masked entries when a tile holds a NaN or an infinity
// (masked_gemm), so a non-finite token never reaches the earlier ones.
//            gate_grad_*     per chunk / head: the stabiliser's routing (each row's dlogD sums to
//                            its dm_r) and the forget gates' reverse cumulative sums
//
// Indices: a row (rows.cuh) is one head of one sequence, bh its index; `k` is a chunk of the row,
// t0 its first token, Lc its length; r, s are chunk-local token indices (rows = queries, columns =
// keys); tb = row.tb0 + t0 indexes the per-token workspace. Grids have p.nc chunk slots per row; a
// block whose chunk lies beyond its row's (packed sequences of different lengths) returns at once.
#include "cuda/mlstm/params.hpp"
#include "cuda/mlstm/rows.cuh"
#include "cuda/mlstm/tiles.cuh"

#include <cuda_runtime.h>

#include <cmath>
#include <utility>
#include <vector>

namespace flashlstm::cuda::mlstm::detail {
namespace {

constexpr int kMaxChunk = 1024;           // the largest chunk size L
constexpr int kPad = stride(kTile);   // row stride of a 64-column operand tile
constexpr int kPadS = stride(kStep);  // row stride of a 32-column operand tile

struct Chunk {
  int k, t0, Lc;
  std::int64_t tb;
};
__device__ __forceinline__ Chunk chunk_of(const Params& p, const Row& row, int k) {
  const int t0 = k * p.L;
  return {k, t0, min(p.L, row.S - t0), row.tb0 + t0};
}
template <class T>
__device__ __forceinline__ const T* token_ptr(const void* base, const Row& row, int t0, int D) {
  return static_cast<const T*>(base) + (row.in0 + t0) * D;
}
template <class T>
__device__ __forceinline__ T* token_ptr(void* base, const Row& row, int t0, int D) {
  return static_cast<T*>(base) + (row.in0 + t0) * D;
}
// Entry of the state entering chunk k (k = nc: the final state) in the per-state workspace, and of
// chunk k in the per-chunk workspace.
__device__ __forceinline__ std::int64_t state_index(const Row& row, int k) { return row.state0 + k; }
__device__ __forceinline__ std::int64_t chunk_index(const Row& row, int k) { return row.chunk0 + k; }
// m_r: the row's stabiliser, the max over the entering state (b_r + m_k) and the tokens (b_r + U_r).
__device__ __forceinline__ double row_m(const Params& p, double b, double U, double mk) {
  return p.stabilised ? b + fmax(mk, U) : 0.0;
}
__device__ __forceinline__ float weight(double log_w) { return expf(static_cast<float>(log_w)); }
// A chunk length rounded up to whole 64-token steps (per-token arrays are zero beyond Lc).
__device__ __forceinline__ int padded(int Lc) { return (Lc + kTile - 1) / kTile * kTile; }

// Block-wide sum (kThreads threads); the result is valid in thread 0.
__device__ double block_sum(double x, double* scratch) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = x;
  __syncthreads();
  double total = 0.0;
  if (threadIdx.x == 0)
    for (int w = 0; w < kThreads / 32; ++w) total += scratch[w];
  __syncthreads();
  return total;
}

// ---------------------------------------------------------------------------------------------
// Forward.

template <class T>
__global__ void gate_prep(Params p) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= p.BH * p.nc) return;
  const Row row = row_of(p, idx / p.nc);
  if (idx % p.nc >= row.nc) return;
  const Chunk c = chunk_of(p, row, idx % p.nc);
  const T* ig = token_ptr<T>(p.igate, row, c.t0, 1);
  const T* fg = token_ptr<T>(p.fgate, row, c.t0, 1);
  double b = 0.0, U = -INFINITY;
  int am = -1;
  for (int t = 0; t < c.Lc; ++t) {
    const float it = to_float(ig[t]);
    const double log_i = p.stabilised ? it : logsigmoid(it);
    b += logsigmoid(to_float(fg[t]));
    const double u = log_i - b;
    if (u > U) U = u, am = t;  // the earliest token wins ties, as in the reference
    p.b[c.tb + t] = b;
    p.u[c.tb + t] = u;
    p.U[c.tb + t] = U;
    p.argmax[c.tb + t] = am;
  }
}

// Shared memory of state_pass: the operand tile w ∘ K (split); per pipeline stage the V tile and
// the staging area of K; the weights.
template <class T>
struct StatePassSmem {
  static constexpr int kKw = kSplit<T> * kTile * kPad * sizeof(T), kV = kTile * kPad * sizeof(T),
                       kKRaw = kTile * kTile * sizeof(T), kStage = kV + kKRaw;
  static constexpr std::size_t bytes = kKw + 2 * kStage + kMaxChunk * sizeof(float);
};

// The state entering chunk k, C (DQK, DV), as state_pass stores it: float32 for float32 kernels;
// for bf16 kernels already split into hi and lo bf16 planes (the same bytes), so that the output
// pass copies it into its operand tiles as it is.
template <class T>
__device__ __forceinline__ Split<T> stored_state(const Params& p, const Row& row, int k) {
  const std::int64_t CS = static_cast<std::int64_t>(p.DQK) * p.DV;
  T* base = reinterpret_cast<T*>(p.Cs + state_index(row, k) * CS);
  return {base, kSplit<T> == 2 ? base + CS : nullptr};
}

// Preconditions: grid (ceil(DV/64), ceil(DQK/64), BH), StatePassSmem<T>::bytes of dynamic shared
// memory; each block owns one 64 x 64 tile of C (the blockIdx.x == 0 blocks also n, block (0, 0)
// also m) and walks the chunks in order, 64 tokens a step, one pipeline over all the steps.
template <class T>
__global__ void __launch_bounds__(kThreads, 3) state_pass(Params p) {
  using Smem = StatePassSmem<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const Split<T> K_w = split_at(reinterpret_cast<T*>(smem_raw), kTile * kPad);  // (w ∘ K) rows: float32 products
  auto sV = [&](int stage) { return reinterpret_cast<T*>(smem_raw + Smem::kKw + stage * Smem::kStage); };
  auto raw_K = [&](int stage) { return smem_raw + Smem::kKw + stage * Smem::kStage + Smem::kV; };
  float* sW = reinterpret_cast<float*>(smem_raw + Smem::kKw + 2 * Smem::kStage);
  const int v0 = blockIdx.x * kTile, d0 = blockIdx.y * kTile, bh = ordered_row(p, blockIdx.z), tid = threadIdx.x;
  const Row row = row_of(p, bh);
  if (row.nc == 0) return;  // an empty sequence: the host hands its state on
  const bool owns_n = blockIdx.x == 0 && tid < kTile && d0 + tid < p.DQK;
  const bool owns_m = blockIdx.x == 0 && blockIdx.y == 0 && tid == 0;
  const std::int64_t CS = static_cast<std::int64_t>(p.DQK) * p.DV;

  Acc acc;
#pragma unroll
  for (int i = 0; i < kTR; ++i)
#pragma unroll
    for (int j = 0; j < kTC; ++j) {
      const int d = d0 + tile_row(i), v = v0 + tile_col(j);
      acc[i][j] = (p.C0 && d < p.DQK && v < p.DV) ? p.C0[bh * CS + d * p.DV + v] : 0.f;
    }
  float n = (owns_n && p.n0) ? p.n0[static_cast<std::int64_t>(bh) * p.DQK + d0 + tid] : 0.f;
  double mk = p.m0 ? p.m0[bh] : 0.0, m_next = 0.0;

  // The state entering chunk k is complete: store it; then (k < nc) decay it to chunk k's exit
  // stabiliser and set the weights sW with which chunk k's tokens enter.
  auto enter = [&](int k) {
    const Split<T> C = stored_state<T>(p, row, k);
#pragma unroll
    for (int i = 0; i < kTR; ++i)
#pragma unroll
      for (int j = 0; j < kTC; j += 2) {  // columns v, v + 1
        const int d = d0 + tile_row(i), v = v0 + tile_col(j);
        if (d < p.DQK && v < p.DV) C.set_pair(static_cast<std::int64_t>(d) * p.DV + v, v + 1 < p.DV, acc[i][j], acc[i][j + 1]);
      }
    if (owns_n) p.ns[state_index(row, k) * p.DQK + d0 + tid] = n;
    if (owns_m) p.ms[state_index(row, k)] = mk;
    if (k == row.nc) return;
    const Chunk c = chunk_of(p, row, k);
    const double g = p.b[c.tb + c.Lc - 1];
    m_next = row_m(p, g, p.U[c.tb + c.Lc - 1], mk);
    const float w_state = weight(g + mk - m_next);
#pragma unroll
    for (int i = 0; i < kTR; ++i)
#pragma unroll
      for (int j = 0; j < kTC; ++j) acc[i][j] *= w_state;
    n *= w_state;
    // token s enters the exit state with weight exp(g + u_s - m_next); it scales the rows of K
    for (int s = tid; s < padded(c.Lc); s += kThreads) sW[s] = s < c.Lc ? weight(g + p.u[c.tb + s] - m_next) : 0.f;
  };

  // Step i: tokens s0 = 64·(i mod L/64).. of chunk i / (L/64).
  const int per_chunk = p.L / kTile;
  const int steps = (row.nc - 1) * per_chunk + padded(chunk_of(p, row, row.nc - 1).Lc) / kTile;
  auto tiles = [&](int i) {
    const Chunk c = chunk_of(p, row, i / per_chunk);
    const int s0 = (i % per_chunk) * kTile;
    return std::pair{AsyncTile<kTile, kTile, T>{token_ptr<T>(p.k, row, c.t0, p.DQK), p.DQK, s0, d0, c.Lc, p.DQK},
                     AsyncTile<kTile, kTile, T>{token_ptr<T>(p.v, row, c.t0, p.DV), p.DV, s0, v0, c.Lc, p.DV}};
  };
  enter(0);
  __syncthreads();
  pipeline(
      steps,
      [&](int i, int stage) {
        const auto [K, V] = tiles(i);
        K.issue_raw(raw_K(stage));
        V.issue(sV(stage));
      },
      [&](int i, int stage) {
        const auto [K, V] = tiles(i);
        K.finish_raw(raw_K(stage), tile_put<kTile>(K_w, sW + K.r0));
        V.finish(sV(stage));
      },
      [&](int i, int stage) {
        gemm<false, true, kTile>(acc, K_w, kPad, sV(stage), kPad);  // C += (w∘K)ᵀ V
        if (owns_n)
          for (int s = 0; s < kTile; ++s) n += K_w.at(s * kPad + tid);
        if (i + 1 == steps || (i + 1) % per_chunk == 0) {  // the chunk's last step
          mk = m_next;
          enter(i / per_chunk + 1);
        }
      });
  if (p.C_last) {
#pragma unroll
    for (int i = 0; i < kTR; ++i)
#pragma unroll
      for (int j = 0; j < kTC; ++j) {
        const int d = d0 + tile_row(i), v = v0 + tile_col(j);
        if (d < p.DQK && v < p.DV) p.C_last[bh * CS + d * p.DV + v] = acc[i][j];
      }
  }
  if (p.n_last && owns_n) p.n_last[static_cast<std::int64_t>(bh) * p.DQK + d0 + tid] = n;
  if (p.m_last && owns_m) p.m_last[bh] = static_cast<float>(mk);
}

// Per-row quantities of a 64-row tile of a chunk, in shared memory.
struct RowTile {
  double b[kTile], m[kTile];  // b_r and the stabiliser m_r
  float w0[kTile];            // the entering state's weight exp(b_r + m_k - m_r)
};
__device__ __forceinline__ void load_rows(RowTile& rt, const Params& p, const Chunk& c, int r0, double mk) {
  const int t = threadIdx.x;
  if (t < kTile) {
    const int r = r0 + t;
    if (r < c.Lc) {
      const double b = p.b[c.tb + r], m = row_m(p, b, p.U[c.tb + r], mk);
      rt.b[t] = b, rt.m[t] = m, rt.w0[t] = weight(b + mk - m);
    } else {
      rt.b[t] = 0.0, rt.m[t] = 0.0, rt.w0[t] = 0.f;
    }
  }
}

// The 64 x 64 tile of A = Q̂ Kᵀ for rows r0.. and keys s0.. of a chunk (over the whole DQK).
template <class T>
__device__ void qk_tile(Acc& acc, T* sQ, T* sK, const T* Q, const T* K, const Params& p, const Chunk& c, int r0,
                        int s0) {
  zero(acc);
  for (int d = 0; d < p.DQK; d += kStep) {
    load_tile<kTile, kStep>(sQ, Q, p.DQK, r0, d, c.Lc, p.DQK);
    load_tile<kTile, kStep>(sK, K, p.DQK, s0, d, c.Lc, p.DQK);
    __syncthreads();
    gemm<true, false, kStep>(acc, sQ, kPadS, sK, kPadS);
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < kTR; ++i)
#pragma unroll
    for (int j = 0; j < kTC; ++j) acc[i][j] *= p.scale;
}

// The output pass covers kOutCols = 128 DV columns per block (two 64-wide tiles sharing one Q̂Kᵀ
// tile, which is recomputed once per 128 columns rather than per 64).
constexpr int kOutSub = 2, kOutCols = kOutSub * kTile, kPadO = stride(kOutCols);

// Shared memory of chunk_output, in elements of T: two pipeline stages, each holding sQ and either
// the state slice sC (split) or sK, or the V tile; then sP (split).
template <class T>
struct OutputSmem {
  static constexpr int kQ = kTile * kPadS, kC = kSplit<T> * kStep * kPadO, kV = kTile * kPadO;
  static constexpr int kStage = kQ + (kC > kQ ? kC : kQ) > kV ? kQ + (kC > kQ ? kC : kQ) : kV;
  static constexpr int kP = kSplit<T> * kTile * kPad;
  static constexpr std::size_t bytes = (2 * kStage + kP) * sizeof(T);
};

// Preconditions: grid (ceil(DV/128), nc * L/64, BH), OutputSmem<T>::bytes of dynamic shared memory;
// block (x, y, z) computes rows 64·(y mod L/64).. of chunk y / (L/64) and DV columns 128·x.. .
// kStats: instead of h, accumulate dh·num and dh·(state part of num) per token and store den, den0,
// m_r (the backward's readout statistics).
template <class T, bool kStats>
__global__ void __launch_bounds__(kThreads, 2) chunk_output(Params p) {
  using Smem = OutputSmem<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* const smem = reinterpret_cast<T*>(smem_raw);
  auto sQ = [&](int stage) { return smem + stage * Smem::kStage; };
  auto sX = [&](int stage) { return smem + stage * Smem::kStage + Smem::kQ; };  // sC or sK
  auto sV = [&](int stage) { return smem + stage * Smem::kStage; };
  const Split<T> sP = split_at(smem + 2 * Smem::kStage, kTile * kPad);
  __shared__ float sN[kStep], sDen[kTile];
  __shared__ double sU[kTile];
  __shared__ RowTile rows;
  const int tiles = p.L / kTile, v0 = blockIdx.x * kOutCols, tid = threadIdx.x;
  const Row row = row_of(p, blockIdx.z);
  if (static_cast<int>(blockIdx.y) / tiles >= row.nc) return;
  const Chunk c = chunk_of(p, row, blockIdx.y / tiles);
  const int r0 = (blockIdx.y % tiles) * kTile;
  if (r0 >= c.Lc) return;
  const double mk = p.ms[state_index(row, c.k)];
  const Split<T> C = stored_state<T>(p, row, c.k);  // (DQK, DV)
  const float* n = p.ns + state_index(row, c.k) * p.DQK;
  const T* Q = token_ptr<T>(p.q, row, c.t0, p.DQK);
  const T* K = token_ptr<T>(p.k, row, c.t0, p.DQK);
  const T* V = token_ptr<T>(p.v, row, c.t0, p.DV);
  load_rows(rows, p, c, r0, mk);
  auto sub = [](const Split<T>& x, int offset) { return Split<T>{x.hi + offset, x.lo ? x.lo + offset : nullptr}; };

  // State part: num = w0 ∘ (Q̂ C), den0 = w0 ∘ (Q̂ n), in kStep-deep slices of DQK.
  Acc acc[kOutSub];
  for (auto& a : acc) zero(a);
  // den0 and den (row sums) are added by threads t < 64, one row each, in column order, as the
  // reference adds them. (Spreading them over all threads was ~10% faster, but den decides the
  // normaliser's branch, |den| against exp(-m), and the new rounding moved a test token across it.)
  float den0 = 0.f;
  const int qk_steps = (p.DQK + kStep - 1) / kStep;
  auto q_slice = [&](int i) { return AsyncTile<kTile, kStep, T>{Q, p.DQK, r0, i * kStep, c.Lc, p.DQK}; };
  auto c_slice = [&](const T* plane, int i) {
    return AsyncTile<kStep, kOutCols, T>{plane, p.DV, i * kStep, v0, p.DQK, p.DV};
  };
  auto sC = [&](int stage) { return split_at(sX(stage), kStep * kPadO); };
  pipeline(
      qk_steps,
      [&](int i, int stage) {
        q_slice(i).issue(sQ(stage));
        c_slice(C.hi, i).issue(sC(stage).hi);
        if (C.lo) c_slice(C.lo, i).issue(sC(stage).lo);
      },
      [&](int i, int stage) {
        q_slice(i).finish(sQ(stage));
        c_slice(C.hi, i).finish(sC(stage).hi);
        if (C.lo) c_slice(C.lo, i).finish(sC(stage).lo);
        const int d = i * kStep;
        if (tid < kStep) sN[tid] = d + tid < p.DQK ? n[d + tid] : 0.f;
      },
      [&](int, int stage) {
#pragma unroll
        for (int u = 0; u < kOutSub; ++u)
          gemm<true, true, kStep>(acc[u], sQ(stage), kPadS, sub(sC(stage), u * kTile), kPadO);
        if (tid < kTile)
          for (int e = 0; e < kStep; ++e) den0 += to_float(sQ(stage)[tid * kPadS + e]) * sN[e];
      });
#pragma unroll
  for (int u = 0; u < kOutSub; ++u)
#pragma unroll
    for (int i = 0; i < kTR; ++i)
#pragma unroll
      for (int j = 0; j < kTC; ++j) acc[u][i][j] *= p.scale * rows.w0[tile_row(i)];
  if (tid < kTile) den0 *= p.scale * rows.w0[tid];

  const T* dH = kStats ? token_ptr<T>(p.dh, row, c.t0, p.DV) : nullptr;
  // Σ_v dh(r, v) num(r, v) over this block's columns, added into out[token].
  auto add_dh_dot = [&](float* out) {
#pragma unroll
    for (int i = 0; i < kTR; ++i) {
      const int r = r0 + tile_row(i);
      float x = 0.f;
#pragma unroll
      for (int u = 0; u < kOutSub; ++u)
#pragma unroll
        for (int j = 0; j < kTC; ++j) {
          const int v = v0 + u * kTile + tile_col(j);
          if (r < c.Lc && v < p.DV) x += to_float(dH[static_cast<std::int64_t>(r) * p.DV + v]) * acc[u][i][j];
        }
      x = row_sum(x);
      if (row_leader() && r < c.Lc) atomicAdd(out + c.tb + r, x);
    }
  };
  if constexpr (kStats) add_dh_dot(p.s0);

  // Intra-chunk part: key tiles s0 <= r0 (the causal mask inside the diagonal tile).
  // Per key tile, one pipeline: qk_steps steps of A = Q̂ Kᵀ over DQK, then a step that forms
  // P = A ∘ W (causal) while the V tile arrives and adds P V.
  float den = 0.f;
  for (int s0 = 0; s0 <= r0; s0 += kTile) {
    Acc a;
    zero(a);
    auto k_slice = [&](int i) { return AsyncTile<kTile, kStep, T>{K, p.DQK, s0, i * kStep, c.Lc, p.DQK}; };
    const AsyncTile<kTile, kOutCols, T> v_tile{V, p.DV, s0, v0, c.Lc, p.DV};
    pipeline(
        qk_steps + 1,
        [&](int i, int stage) {
          if (i < qk_steps) {
            q_slice(i).issue(sQ(stage));
            k_slice(i).issue(sX(stage));
          } else {
            v_tile.issue(sV(stage));
          }
        },
        [&](int step, int stage) {
          if (step < qk_steps) {
            q_slice(step).finish(sQ(stage));
            k_slice(step).finish(sX(stage));
            if (step == 0 && tid < kTile) sU[tid] = s0 + tid < c.Lc ? p.u[c.tb + s0 + tid] : 0.0;
            return;
          }
#pragma unroll
          for (int i = 0; i < kTR; ++i)
#pragma unroll
            for (int j = 0; j < kTC; ++j) {
              const int ri = tile_row(i), sj = tile_col(j), r = r0 + ri, s = s0 + sj;
              const float w = weight(rows.b[ri] + sU[sj] - rows.m[ri]);
              sP.set(ri * kPad + sj, (s <= r && r < c.Lc) ? a[i][j] * p.scale * w : 0.f);
            }
          v_tile.finish(sV(stage));
        },
        [&](int i, int stage) {
          if (i < qk_steps) return gemm<true, false, kStep>(a, sQ(stage), kPadS, sX(stage), kPadS);
          if (tid < kTile)
            for (int e = 0; e < kTile; ++e) den += sP.at(tid * kPad + e);
          // The diagonal tile is causal: a non-finite v of a later token must not reach earlier rows.
#pragma unroll
          for (int u = 0; u < kOutSub; ++u) {
            if (s0 == r0) masked_gemm<true, true, kTile, false>(acc[u], sP, kPad, sV(stage) + u * kTile, kPadO, CausalTile{});
            else gemm<true, true, kTile>(acc[u], sP, kPad, sV(stage) + u * kTile, kPadO);
          }
        });
  }

  if constexpr (kStats) {
    add_dh_dot(p.s);
    if (blockIdx.x == 0 && tid < kTile && r0 + tid < c.Lc) {
      p.den[c.tb + r0 + tid] = den0 + den;
      p.den0[c.tb + r0 + tid] = den0;
      p.mrow[c.tb + r0 + tid] = static_cast<float>(rows.m[tid]);
    }
  } else {
    if (tid < kTile) sDen[tid] = den0 + den;
    __syncthreads();
    T* H = token_ptr<T>(p.h, row, c.t0, p.DV);
#pragma unroll
    for (int i = 0; i < kTR; ++i) {
      const int ri = tile_row(i), r = r0 + ri;
      const float floor = p.stabilised ? expf(-static_cast<float>(rows.m[ri])) : 1.f;
      const float dhat = p.normalizes ? readout_dhat(sDen[ri], floor, p.eps) : 1.f;
#pragma unroll
      for (int u = 0; u < kOutSub; ++u)
#pragma unroll
        for (int j = 0; j < kTC; j += 2) {  // columns v, v + 1
          const int v = v0 + u * kTile + tile_col(j);
          if (r < c.Lc && v < p.DV)
            store_pair(H, static_cast<std::int64_t>(r) * p.DV + v, v + 1 < p.DV, acc[u][i][j] / dhat, acc[u][i][j + 1] / dhat);
        }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward.

// Per token: the readout h = num / dhat and its derivative (reference readout_backward).
__global__ void readout_grad(Params p) {
  const std::int64_t t = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= p.tokens) return;
  const float den = p.den[t], m = p.mrow[t];
  const float floor = p.stabilised ? expf(-m) : 1.f;
  const float dhat = p.normalizes ? readout_dhat(den, floor, p.eps) : 1.f;
  const float dh_dot_h = p.s[t] / dhat;
  float dden = 0.f, dm = 0.f;
  if (p.normalizes) {
    if (fabsf(den) > floor) {
      dden = den > 0.f ? -dh_dot_h / dhat : dh_dot_h / dhat;
    } else if (p.stabilised) {
      dm = dh_dot_h / (1.f + p.eps * expf(m));
    }
  }
  p.dhat[t] = dhat;
  p.delta[t] = dden;
  p.dmr[t] = dm;
  p.D0[t] = p.s0[t] / dhat + dden * p.den0[t];
}

// Preconditions: grid (ceil(DV/64), ceil(DQK/64), BH); chunks in reverse. The adjoint of C entering
// chunk k is w_state·dC_{k+1} + Q̂ᵀ (w0 ∘ dnum); each exit adjoint is stored, with its inner
// products with the states on both sides of the chunk.
template <class T>
__global__ void __launch_bounds__(kThreads, 3) state_pass_reverse(Params p) {
  __shared__ __align__(16) T sQ[kTile * kPad], sD_[kSplit<T> * kTile * kPad];
  __shared__ float sW[kMaxChunk], sDelta[kMaxChunk];
  __shared__ double scratch[kThreads / 32];
  const Split<T> sD = split_at(sD_, kTile * kPad);  // w0 ∘ dnum: float32 products
  const int v0 = blockIdx.x * kTile, d0 = blockIdx.y * kTile, bh = ordered_row(p, blockIdx.z), tid = threadIdx.x;
  const Row row = row_of(p, bh);
  if (row.nc == 0) return;  // an empty sequence: the host hands its state gradient on
  const bool owns_n = blockIdx.x == 0 && tid < kTile && d0 + tid < p.DQK;
  const std::int64_t CS = static_cast<std::int64_t>(p.DQK) * p.DV;

  Acc acc;
#pragma unroll
  for (int i = 0; i < kTR; ++i)
#pragma unroll
    for (int j = 0; j < kTC; ++j) {
      const int d = d0 + tile_row(i), v = v0 + tile_col(j);
      acc[i][j] = (p.dC_last && d < p.DQK && v < p.DV) ? p.dC_last[bh * CS + d * p.DV + v] : 0.f;
    }
  float dn = (owns_n && p.dn_last) ? p.dn_last[static_cast<std::int64_t>(bh) * p.DQK + d0 + tid] : 0.f;

  for (int k = row.nc - 1; k >= 0; --k) {
    const Chunk c = chunk_of(p, row, k);
    float* dC = p.dCs + chunk_index(row, k) * CS;
    const Split<T> C_in = stored_state<T>(p, row, k);
    double dot0 = 0.0;
#pragma unroll
    for (int i = 0; i < kTR; ++i)
#pragma unroll
      for (int j = 0; j < kTC; ++j) {
        const int d = d0 + tile_row(i), v = v0 + tile_col(j);
        if (d < p.DQK && v < p.DV) {
          const std::int64_t e = d * p.DV + v;
          dC[e] = acc[i][j];
          dot0 += static_cast<double>(acc[i][j]) * C_in.at(e);
        }
      }
    if (owns_n) {
      const int d = d0 + tid;
      p.dns[chunk_index(row, k) * p.DQK + d] = dn;
      dot0 += static_cast<double>(dn) * p.ns[state_index(row, k) * p.DQK + d];
    }
    dot0 = block_sum(dot0, scratch);
    if (tid == 0) atomicAdd(p.dot0 + chunk_index(row, k), dot0);

    const double mk = p.ms[state_index(row, k)], m_next = p.ms[state_index(row, k + 1)];
    const double g = p.b[c.tb + c.Lc - 1];
    const float w_state = weight(g + mk - m_next);
#pragma unroll
    for (int i = 0; i < kTR; ++i)
#pragma unroll
      for (int j = 0; j < kTC; ++j) acc[i][j] *= w_state;
    dn *= w_state;
    const T* Q = token_ptr<T>(p.q, row, c.t0, p.DQK);
    const T* dH = token_ptr<T>(p.dh, row, c.t0, p.DV);
    for (int r = tid; r < padded(c.Lc); r += kThreads) {
      float w = 0.f, wd = 0.f;
      if (r < c.Lc) {
        const double b = p.b[c.tb + r];
        const float w0 = weight(b + mk - row_m(p, b, p.U[c.tb + r], mk)) * p.scale;
        w = w0 / p.dhat[c.tb + r];
        wd = w0 * p.delta[c.tb + r];
      }
      sW[r] = w, sDelta[r] = wd;
    }
    __syncthreads();
    for (int s0 = 0; s0 < c.Lc; s0 += kTile) {
      load_tile<kTile, kTile>(sQ, Q, p.DQK, s0, d0, c.Lc, p.DQK);
      load_tile<kTile, kTile>(sD, dH, p.DV, s0, v0, c.Lc, p.DV, sW + s0);
      __syncthreads();
      gemm<false, true, kTile>(acc, sQ, kPad, sD, kPad);  // dC += Q̂ᵀ (w0 ∘ dnum)
      if (owns_n)
        for (int s = 0; s < kTile; ++s) dn += sDelta[s0 + s] * to_float(sQ[s * kPad + tid]);
      __syncthreads();
    }
  }
  if (p.dC0) {
#pragma unroll
    for (int i = 0; i < kTR; ++i)
#pragma unroll
      for (int j = 0; j < kTC; ++j) {
        const int d = d0 + tile_row(i), v = v0 + tile_col(j);
        if (d < p.DQK && v < p.DV) p.dC0[bh * CS + d * p.DV + v] = acc[i][j];
      }
  }
  if (p.dn0 && owns_n) p.dn0[static_cast<std::int64_t>(bh) * p.DQK + d0 + tid] = dn;
}

__device__ __forceinline__ std::int64_t lxl_index(const Params& p, const Row& row, int k) {
  return chunk_index(row, k) * p.L * p.L;
}

// Preconditions: grid (L/64, nc * L/64, BH); block (x, y) handles key tile x of the row tile y
// (skipped above the diagonal). Writes dA = W ∘ G with G = dnum Vᵀ + delta, P = A ∘ W and
// D = P ∘ G, zero where masked.
template <class T>
__global__ void __launch_bounds__(kThreads, 3) intra_grad(Params p) {
  __shared__ __align__(16) T sAB[2 * kTile * kPadS];
  __shared__ float sInv[kTile];
  __shared__ double sU[kTile];
  __shared__ RowTile rows;
  const int tiles = p.L / kTile, tid = threadIdx.x;
  const Row row = row_of(p, blockIdx.z);
  if (static_cast<int>(blockIdx.y) / tiles >= row.nc) return;
  const Chunk c = chunk_of(p, row, blockIdx.y / tiles);
  const int r0 = (blockIdx.y % tiles) * kTile, s0 = blockIdx.x * kTile;
  if (r0 >= c.Lc || s0 > r0) return;
  const double mk = p.ms[state_index(row, c.k)];
  load_rows(rows, p, c, r0, mk);
  if (tid < kTile) {
    sInv[tid] = r0 + tid < c.Lc ? 1.f / p.dhat[c.tb + r0 + tid] : 0.f;
    sU[tid] = s0 + tid < c.Lc ? p.u[c.tb + s0 + tid] : 0.0;
  }
  __syncthreads();
  const T* Q = token_ptr<T>(p.q, row, c.t0, p.DQK);
  const T* K = token_ptr<T>(p.k, row, c.t0, p.DQK);
  const T* V = token_ptr<T>(p.v, row, c.t0, p.DV);
  const T* dH = token_ptr<T>(p.dh, row, c.t0, p.DV);
  T* sX = sAB;
  T* sY = sAB + kTile * kPadS;

  Acc a, gr;
  qk_tile(a, sX, sY, Q, K, p, c, r0, s0);
  zero(gr);
  for (int e = 0; e < p.DV; e += kStep) {  // dh Vᵀ (then rows / dhat: dnum Vᵀ)
    load_tile<kTile, kStep>(sX, dH, p.DV, r0, e, c.Lc, p.DV);
    load_tile<kTile, kStep>(sY, V, p.DV, s0, e, c.Lc, p.DV);
    __syncthreads();
    gemm<true, false, kStep>(gr, sX, kPadS, sY, kPadS);
    __syncthreads();
  }
  float* dA = p.dA + lxl_index(p, row, c.k);
  float* P = p.P + lxl_index(p, row, c.k);
  float* D = p.D + lxl_index(p, row, c.k);
#pragma unroll
  for (int i = 0; i < kTR; ++i)
#pragma unroll
    for (int j = 0; j < kTC; ++j) {
      const int ri = tile_row(i), sj = tile_col(j), r = r0 + ri, s = s0 + sj;
      float da = 0.f, pp = 0.f, dd = 0.f;
      if (s <= r && r < c.Lc) {
        const float w = weight(rows.b[ri] + sU[sj] - rows.m[ri]), g = gr[i][j] * sInv[ri] + p.delta[c.tb + r];
        da = w * g;
        pp = w * a[i][j];
        dd = pp * g;
      }
      const std::int64_t e = static_cast<std::int64_t>(r) * p.L + s;
      dA[e] = da;
      P[e] = pp;
      D[e] = dd;
    }
}

// Preconditions: grid (ceil(DQK/64), nc * L/64, BH).
// dq = scale·(dA K + w0 ∘ (dnum Cᵀ + delta nᵀ)).
template <class T>
__global__ void __launch_bounds__(kThreads, 3) grad_q(Params p) {
  __shared__ __align__(16) T sA[kSplit<T> * kTile * kPad], sB[kSplit<T> * kTile * kPad];
  __shared__ float sInv[kTile];
  __shared__ RowTile rows;
  const int tiles = p.L / kTile, d0 = blockIdx.x * kTile, tid = threadIdx.x;
  const Row row = row_of(p, blockIdx.z);
  if (static_cast<int>(blockIdx.y) / tiles >= row.nc) return;
  const Chunk c = chunk_of(p, row, blockIdx.y / tiles);
  const int r0 = (blockIdx.y % tiles) * kTile;
  if (r0 >= c.Lc) return;
  const double mk = p.ms[state_index(row, c.k)];
  load_rows(rows, p, c, r0, mk);
  if (tid < kTile) sInv[tid] = r0 + tid < c.Lc ? 1.f / p.dhat[c.tb + r0 + tid] : 0.f;
  __syncthreads();
  const Split<T> C = stored_state<T>(p, row, c.k);
  const float* n = p.ns + state_index(row, c.k) * p.DQK;
  const T* K = token_ptr<T>(p.k, row, c.t0, p.DQK);
  const T* dH = token_ptr<T>(p.dh, row, c.t0, p.DV);

  Acc acc;
  zero(acc);
  const Split<T> C_T = split_at(sB, kTile * kPadS);  // Cᵀ tiles
  for (int e = 0; e < p.DV; e += kStep) {  // dh Cᵀ (then rows / dhat: dnum Cᵀ)
    load_tile<kTile, kStep>(sA, dH, p.DV, r0, e, c.Lc, p.DV);
    load_tile<kTile, kStep>(C_T.hi, C.hi, p.DV, d0, e, p.DQK, p.DV);
    if (C.lo) load_tile<kTile, kStep>(C_T.lo, C.lo, p.DV, d0, e, p.DQK, p.DV);
    __syncthreads();
    gemm<true, false, kStep>(acc, sA, kPadS, C_T, kPadS);
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < kTR; ++i) {
    const int r = r0 + tile_row(i);
    const float delta = r < c.Lc ? p.delta[c.tb + r] : 0.f;
#pragma unroll
    for (int j = 0; j < kTC; ++j) {
      const int d = d0 + tile_col(j);
      acc[i][j] = rows.w0[tile_row(i)] * (acc[i][j] * sInv[tile_row(i)] + (d < p.DQK ? delta * n[d] : 0.f));
    }
  }
  const float* dA = p.dA + lxl_index(p, row, c.k);
  const Split<T> dA_T = split_at(sA, kTile * kPad);
  for (int s0 = 0; s0 <= r0; s0 += kTile) {  // dA K
    load_tile<kTile, kTile>(dA_T, dA, p.L, r0, s0, p.L, p.L);
    load_tile<kTile, kTile>(sB, K, p.DQK, s0, d0, c.Lc, p.DQK);
    __syncthreads();
    if (s0 == r0) masked_gemm<true, true, kTile, false>(acc, dA_T, kPad, sB, kPad, CausalTile{});
    else gemm<true, true, kTile>(acc, dA_T, kPad, sB, kPad);
    __syncthreads();
  }
  T* dQ = token_ptr<T>(p.dq, row, c.t0, p.DQK);
#pragma unroll
  for (int i = 0; i < kTR; ++i)
#pragma unroll
    for (int j = 0; j < kTC; ++j) {
      const int r = r0 + tile_row(i), d = d0 + tile_col(j);
      if (r < c.Lc && d < p.DQK) dQ[static_cast<std::int64_t>(r) * p.DQK + d] = from_float<T>(p.scale * acc[i][j]);
    }
}

// The weight of each key of a 64-key tile in the chunk's exit state, exp(g + u_s - m_next).
__device__ __forceinline__ void load_exit_weights(float* w_last, const Params& p, const Row& row, const Chunk& c, int s0) {
  if (threadIdx.x < kTile) {
    const int s = s0 + threadIdx.x;
    const double g = p.b[c.tb + c.Lc - 1], m_next = p.ms[state_index(row, c.k + 1)];
    w_last[threadIdx.x] = s < c.Lc ? weight(g + p.u[c.tb + s] - m_next) : 0.f;
  }
}

// Preconditions: grid (ceil(DQK/64), nc * L/64, BH); block y is a key tile.
// dk = scale·dAᵀ Q + w_last ∘ (V dCᵀ + dnᵀ); also the last row's entries of dlogD.
template <class T>
__global__ void __launch_bounds__(kThreads, 3) grad_k(Params p) {
  __shared__ __align__(16) T sA[kSplit<T> * kTile * kPad], sB[kSplit<T> * kTile * kPad];
  __shared__ float w_last[kTile];
  const int tiles = p.L / kTile, d0 = blockIdx.x * kTile;
  const Row row = row_of(p, blockIdx.z);
  if (static_cast<int>(blockIdx.y) / tiles >= row.nc) return;
  const Chunk c = chunk_of(p, row, blockIdx.y / tiles);
  const int s0 = (blockIdx.y % tiles) * kTile;
  if (s0 >= c.Lc) return;
  load_exit_weights(w_last, p, row, c, s0);
  const std::int64_t CS = static_cast<std::int64_t>(p.DQK) * p.DV;
  const float* dC = p.dCs + chunk_index(row, c.k) * CS;
  const float* dn = p.dns + chunk_index(row, c.k) * p.DQK;
  const T* Q = token_ptr<T>(p.q, row, c.t0, p.DQK);
  const T* K = token_ptr<T>(p.k, row, c.t0, p.DQK);
  const T* V = token_ptr<T>(p.v, row, c.t0, p.DV);

  Acc acc, st;
  zero(st);
  const Split<T> dC_T = split_at(sB, kTile * kPadS);
  for (int e = 0; e < p.DV; e += kStep) {  // V dCᵀ
    load_tile<kTile, kStep>(sA, V, p.DV, s0, e, c.Lc, p.DV);
    load_tile<kTile, kStep>(dC_T, dC, p.DV, d0, e, p.DQK, p.DV);
    __syncthreads();
    gemm<true, false, kStep>(st, sA, kPadS, dC_T, kPadS);
    __syncthreads();
  }
  zero(acc);
  const float* dA = p.dA + lxl_index(p, row, c.k);
  const Split<T> dA_T = split_at(sA, kTile * kPad);
  for (int r0 = s0; r0 < c.Lc; r0 += kTile) {  // dAᵀ Q
    load_tile<kTile, kTile>(dA_T, dA, p.L, r0, s0, p.L, p.L);
    load_tile<kTile, kTile>(sB, Q, p.DQK, r0, d0, c.Lc, p.DQK);
    __syncthreads();
    // dk_s sums the rows r >= s: the diagonal tile is anti-causal.
    if (r0 == s0) masked_gemm<false, true, kTile, false>(acc, dA_T, kPad, sB, kPad, AnticausalTile{});
    else gemm<false, true, kTile>(acc, dA_T, kPad, sB, kPad);
    __syncthreads();
  }
  T* dK = token_ptr<T>(p.dk, row, c.t0, p.DQK);
#pragma unroll
  for (int i = 0; i < kTR; ++i) {
    const int si = tile_row(i), s = s0 + si;
    float x = 0.f;  // k_s · (the exit state's part of dk_s): token s's entry in the last row of dlogD
#pragma unroll
    for (int j = 0; j < kTC; ++j) {
      const int d = d0 + tile_col(j);
      if (s < c.Lc && d < p.DQK) {
        const float from_state = w_last[si] * (st[i][j] + dn[d]);
        dK[static_cast<std::int64_t>(s) * p.DQK + d] = from_float<T>(p.scale * acc[i][j] + from_state);
        x += from_state * to_float(K[static_cast<std::int64_t>(s) * p.DQK + d]);
      }
    }
    x = row_sum(x);
    if (row_leader() && s < c.Lc) atomicAdd(p.lastrow + c.tb + s, x);
  }
}

// Preconditions: grid (ceil(DV/64), nc * L/64, BH); block y is a key tile.
// dv = Pᵀ dnum + w_last ∘ (K dC).
template <class T>
__global__ void __launch_bounds__(kThreads, 3) grad_v(Params p) {
  __shared__ __align__(16) T sA[kSplit<T> * kTile * kPad], sB[kSplit<T> * kTile * kPad];
  __shared__ float w_last[kTile], sInv[kTile];
  const int tiles = p.L / kTile, v0 = blockIdx.x * kTile, tid = threadIdx.x;
  const Row row = row_of(p, blockIdx.z);
  if (static_cast<int>(blockIdx.y) / tiles >= row.nc) return;
  const Chunk c = chunk_of(p, row, blockIdx.y / tiles);
  const int s0 = (blockIdx.y % tiles) * kTile;
  if (s0 >= c.Lc) return;
  load_exit_weights(w_last, p, row, c, s0);
  const std::int64_t CS = static_cast<std::int64_t>(p.DQK) * p.DV;
  const float* dC = p.dCs + chunk_index(row, c.k) * CS;
  const T* K = token_ptr<T>(p.k, row, c.t0, p.DQK);
  const T* dH = token_ptr<T>(p.dh, row, c.t0, p.DV);

  Acc acc, st;
  zero(st);
  const Split<T> dC_s = split_at(sB, kStep * kPad);
  for (int d = 0; d < p.DQK; d += kStep) {  // K dC
    load_tile<kTile, kStep>(sA, K, p.DQK, s0, d, c.Lc, p.DQK);
    load_tile<kStep, kTile>(dC_s, dC, p.DV, d, v0, p.DQK, p.DV);
    __syncthreads();
    gemm<true, true, kStep>(st, sA, kPadS, dC_s, kPad);
    __syncthreads();
  }
  zero(acc);
  const float* P = p.P + lxl_index(p, row, c.k);
  const Split<T> P_s = split_at(sA, kTile * kPad);  // rows of P / dhat_r
  for (int r0 = s0; r0 < c.Lc; r0 += kTile) {  // Pᵀ dnum
    if (tid < kTile) sInv[tid] = r0 + tid < c.Lc ? 1.f / p.dhat[c.tb + r0 + tid] : 0.f;
    __syncthreads();
    load_tile<kTile, kTile>(P_s, P, p.L, r0, s0, p.L, p.L, sInv);
    load_tile<kTile, kTile>(sB, dH, p.DV, r0, v0, c.Lc, p.DV);
    __syncthreads();
    // dv_s sums the rows r >= s: the diagonal tile is anti-causal (a NaN 1/dhat must not reach masked entries).
    if (r0 == s0) masked_gemm<false, true, kTile, true>(acc, P_s, kPad, sB, kPad, AnticausalTile{});
    else gemm<false, true, kTile>(acc, P_s, kPad, sB, kPad);
    __syncthreads();
  }
  T* dV = token_ptr<T>(p.dv, row, c.t0, p.DV);
#pragma unroll
  for (int i = 0; i < kTR; ++i)
#pragma unroll
    for (int j = 0; j < kTC; ++j) {
      const int s = s0 + tile_row(i), v = v0 + tile_col(j);
      if (s < c.Lc && v < p.DV) dV[static_cast<std::int64_t>(s) * p.DV + v] = from_float<T>(acc[i][j] + w_last[tile_row(i)] * st[i][j]);
    }
}

// The gate gradients from dlogD, the gradient of every log weight logD(r, c) of a chunk: the state
// column D0 and the token entries D. Steps, as in reference/mlstm/parallel.cpp:
//  1. the exit state's weights are the last row: add their gradients to it (gate_rows);
//  2. the stabiliser: m_r = max_c logD(r, c), so each row's entries lose their sum and its maximiser
//     gains dm_r (dlogD(r, argmax) += dm_r - Σ_c dlogD(r, c)). Row r's maximiser is the entering state
//     when m_k >= U_r (ties go to the state), else token argmax_r (gate_rows; the last row's dm_r
//     includes the exit stabiliser's gradient, which comes from the next chunk: gate_chain);
//  3. digate_s = (column sum)·d log i, and dfgate_p = σ(-f̃_p)·Σ_{r >= p} Σ_{c <= p} dlogD(r, c) from
//     row prefix sums (gate_cols).
__device__ __forceinline__ bool state_is_argmax(const Params& p, const Chunk& c, double mk, int r) {
  return mk >= p.U[c.tb + r];
}

// Preconditions: one warp per row of dlogD (token t of row bh: the workspace's token entry f);
// 256-thread blocks.
__global__ void gate_rows(Params p) {
  const std::int64_t f = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (f >= p.tokens) return;
  int bh, t;
  token_at(p, f, bh, t);
  const Row row = row_of(p, bh);
  const Chunk c = chunk_of(p, row, t / p.L);
  const int r = t % p.L, last = c.Lc - 1;
  const std::int64_t idx = chunk_index(row, c.k);
  float* D = p.D + lxl_index(p, row, c.k) + static_cast<std::int64_t>(r) * p.L;  // row r
  double d0 = p.D0[c.tb + r];
  if (r == last) {
    const double mk = p.ms[state_index(row, c.k)], m_next = p.ms[state_index(row, c.k + 1)];
    d0 += static_cast<double>(weight(p.b[c.tb + last] + mk - m_next)) * p.dot0[idx];
    for (int s = lane; s <= r; s += 32) D[s] += p.lastrow[c.tb + s];
    __syncwarp();
  }
  double sum = 0.0;
  for (int s = lane; s <= r; s += 32) sum += D[s];
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  sum += d0;
  if (lane == 0) {
    if (r == last) {
      p.last_rowsum[idx] = sum;
    } else if (p.stabilised) {
      const double adj = p.dmr[c.tb + r] - sum;
      if (state_is_argmax(p, c, p.ms[state_index(row, c.k)], r)) d0 += adj;
      else D[p.argmax[c.tb + r]] += static_cast<float>(adj);
    }
    p.D0[c.tb + r] = static_cast<float>(d0);
  }
}

// Per head (one thread each), chunks in reverse: dm_k, the state column's sum, gets the last row's
// routing when the state maximises that row, and hands it on as the next (earlier) chunk's exit
// stabiliser gradient. For sig every m is the constant 0: no routing, no chain.
__global__ void gate_chain(Params p) {
  const int bh = blockIdx.x * blockDim.x + threadIdx.x;
  if (bh >= p.BH) return;
  const Row row = row_of(p, bh);
  if (row.nc == 0) return;  // an empty sequence: the host hands dm on
  double dm_next = p.stabilised && p.dm_last ? p.dm_last[bh] : 0.0;
  for (int k = row.nc - 1; k >= 0; --k) {
    const Chunk c = chunk_of(p, row, k);
    const std::int64_t idx = chunk_index(row, k);
    const int last = c.Lc - 1;
    double dm_k = 0.0;
    for (int r = 0; r < c.Lc; ++r) dm_k += p.D0[c.tb + r];
    double adj = 0.0;
    if (p.stabilised) {
      adj = p.dmr[c.tb + last] + dm_next - p.last_rowsum[idx];
      if (state_is_argmax(p, c, p.ms[state_index(row, k)], last)) dm_k += adj;
    }
    p.last_adj[idx] = adj;
    p.dm_chunk[idx] = dm_k;
    dm_next = p.stabilised ? dm_k : 0.0;
  }
  if (p.dm0) p.dm0[bh] = static_cast<float>(p.dm_chunk[chunk_index(row, 0)]);
}

// Preconditions: grid (nc, BH), 1024 threads (thread s owns column s). Column sums give digate;
// the rows, turned into exclusive prefix sums, give dfgate.
template <class T>
__global__ void __launch_bounds__(kMaxChunk) gate_cols(Params p) {
  __shared__ double d0[kMaxChunk];
  const int tid = threadIdx.x;
  const Row row = row_of(p, blockIdx.y);
  if (static_cast<int>(blockIdx.x) >= row.nc) return;
  const Chunk c = chunk_of(p, row, blockIdx.x);
  const std::int64_t idx = chunk_index(row, c.k);
  const int last = c.Lc - 1;
  float* D = p.D + lxl_index(p, row, c.k);
  const bool to_state = state_is_argmax(p, c, p.ms[state_index(row, c.k)], last);
  if (tid < c.Lc) d0[tid] = p.D0[c.tb + tid] + (tid == last && to_state ? p.last_adj[idx] : 0.0);
  if (tid == 0 && p.stabilised && !to_state)
    D[static_cast<std::int64_t>(last) * p.L + p.argmax[c.tb + last]] += static_cast<float>(p.last_adj[idx]);
  __syncthreads();

  double col = 0.0;
  if (tid < c.Lc)
    for (int r = tid; r < c.Lc; ++r) col += D[static_cast<std::int64_t>(r) * p.L + tid];
  __syncthreads();
  // Each row r becomes its exclusive prefix sums: D(r, q) = Σ_{s<q} D(r, s), q <= r (one warp a row).
  const int lane = tid % 32;
  for (int r = tid / 32; r < c.Lc; r += kMaxChunk / 32) {
    float* row = D + static_cast<std::int64_t>(r) * p.L;
    double carry = 0.0;
    for (int q0 = 0; q0 <= r; q0 += 32) {
      const int q = q0 + lane;
      const double x = q <= r ? row[q] : 0.0;
      double incl = x;
      for (int o = 1; o < 32; o <<= 1) {
        const double y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
      }
      // the previous lane's inclusive sum (not incl - x, which a non-finite x would turn into NaN)
      const double excl = __shfl_up_sync(0xffffffffu, incl, 1);
      if (q <= r) row[q] = static_cast<float>(carry + (lane > 0 ? excl : 0.0));
      carry += __shfl_sync(0xffffffffu, incl, 31);
    }
  }
  __syncthreads();
  if (tid < c.Lc) {
    double crossing = 0.0;  // Σ_{r >= p} Σ_{c <= p} dlogD(r, c), p = tid
    for (int r = tid; r < c.Lc; ++r) crossing += d0[r] + D[static_cast<std::int64_t>(r) * p.L + tid];
    const float f = to_float(token_ptr<T>(p.fgate, row, c.t0, 1)[tid]);
    const float i = to_float(token_ptr<T>(p.igate, row, c.t0, 1)[tid]);
    token_ptr<T>(p.dfgate, row, c.t0, 1)[tid] = from_float<T>(static_cast<float>(crossing) * sigmoid(-f));
    token_ptr<T>(p.digate, row, c.t0, 1)[tid] =
        from_float<T>(static_cast<float>(col) * (p.stabilised ? 1.f : sigmoid(-i)));
  }
}

// ---------------------------------------------------------------------------------------------
// Launchers.

void add_forward_scratch(Scratch& s, Params& p) {
  s.add(p.b, p.tokens);
  s.add(p.u, p.tokens);
  s.add(p.U, p.tokens);
  s.add(p.argmax, p.tokens);
  s.add(p.Cs, p.states * p.DQK * p.DV);
  s.add(p.ns, p.states * p.DQK);
  s.add(p.ms, p.states);
}

int cdiv(int a, int b) { return (a + b - 1) / b; }

template <class T>
void forward_passes(const Params& p, cudaStream_t stream) {
  gate_prep<T><<<cdiv(p.BH * p.nc, 128), 128, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "gate_prep");
  const auto bytes = static_cast<int>(StatePassSmem<T>::bytes);
  check_cuda(cudaFuncSetAttribute(state_pass<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
             "state_pass shared memory");
  state_pass<T><<<dim3(cdiv(p.DV, kTile), cdiv(p.DQK, kTile), p.BH), kThreads, bytes, stream>>>(p);
  check_cuda(cudaGetLastError(), "state_pass");
}

template <class T, bool kStats>
void launch_chunk_output(const Params& p, cudaStream_t stream) {
  const auto bytes = static_cast<int>(OutputSmem<T>::bytes);
  check_cuda(cudaFuncSetAttribute(chunk_output<T, kStats>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
             "chunk_output shared memory");
  chunk_output<T, kStats><<<dim3(cdiv(p.DV, kOutCols), p.nc * (p.L / kTile), p.BH), kThreads, bytes, stream>>>(p);
  check_cuda(cudaGetLastError(), kStats ? "chunk_output (statistics)" : "chunk_output");
}

template <class T>
void forward(Params p, const Packing* packing, cudaStream_t stream) {
  Scratch scratch(stream);
  PackedTables tables(p, p.L, packing);
  tables.add_to(scratch);
  add_forward_scratch(scratch, p);
  scratch.allocate();
  tables.upload(p, stream);
  forward_passes<T>(p, stream);
  launch_chunk_output<T, false>(p, stream);
}

template <class T>
void backward(Params p, const Packing* packing, cudaStream_t stream) {
  Scratch scratch(stream);
  PackedTables tables(p, p.L, packing);
  const std::int64_t tokens = p.tokens, chunks = p.chunks;
  tables.add_to(scratch);
  add_forward_scratch(scratch, p);
  for (float** a : {&p.den, &p.den0, &p.mrow, &p.s, &p.s0, &p.dhat, &p.delta, &p.dmr, &p.D0, &p.lastrow})
    scratch.add(*a, tokens);
  scratch.add(p.dCs, chunks * p.DQK * p.DV);
  scratch.add(p.dns, chunks * p.DQK);
  for (double** a : {&p.dot0, &p.last_rowsum, &p.last_adj, &p.dm_chunk}) scratch.add(*a, chunks);
  for (float** a : {&p.dA, &p.P, &p.D}) scratch.add(*a, chunks * p.L * p.L);
  scratch.allocate();
  tables.upload(p, stream);
  for (float* a : {p.s, p.s0, p.lastrow}) check_cuda(cudaMemsetAsync(a, 0, tokens * sizeof(float), stream), "memset");
  check_cuda(cudaMemsetAsync(p.dot0, 0, chunks * sizeof(double), stream), "memset");

  p.C_last = p.n_last = p.m_last = nullptr;
  forward_passes<T>(p, stream);
  const dim3 dv_rows(cdiv(p.DV, kTile), p.nc * (p.L / kTile), p.BH), dqk_rows(cdiv(p.DQK, kTile), p.nc * (p.L / kTile), p.BH);
  launch_chunk_output<T, true>(p, stream);
  readout_grad<<<static_cast<unsigned>((tokens + 255) / 256), 256, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "readout_grad");
  state_pass_reverse<T><<<dim3(cdiv(p.DV, kTile), cdiv(p.DQK, kTile), p.BH), kThreads, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "state_pass_reverse");
  intra_grad<T><<<dim3(p.L / kTile, p.nc * (p.L / kTile), p.BH), kThreads, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "intra_grad");
  grad_q<T><<<dqk_rows, kThreads, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "grad_q");
  grad_k<T><<<dqk_rows, kThreads, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "grad_k");
  grad_v<T><<<dv_rows, kThreads, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "grad_v");
  gate_rows<<<static_cast<unsigned>((tokens * 32 + 255) / 256), 256, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "gate_rows");
  gate_chain<<<cdiv(p.BH, 128), 128, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "gate_chain");
  gate_cols<T><<<dim3(p.nc, p.BH), kMaxChunk, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "gate_cols");
}

}  // namespace

void run_forward(Params p, const Packing* packing, DType dtype, cudaStream_t stream) {
  if (fused_forward_applies(dtype, p.DQK, p.DV)) return run_fused_forward(p, packing, stream);
  if (dtype == DType::float32) forward<float>(p, packing, stream);
  else forward<__nv_bfloat16>(p, packing, stream);
}

void run_backward(Params p, const Packing* packing, DType dtype, cudaStream_t stream) {
  if (dtype == DType::float32) backward<float>(p, packing, stream);
  else backward<__nv_bfloat16>(p, packing, stream);
}

}  // namespace flashlstm::cuda::mlstm::detail
