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
// keys); tb = row.tb0 + t0 indexes the per-token workspace. The chunk-parallel kernels' grids
// enumerate chunk slots, the per-chunk workspace's entries (rows in order, each row's chunks in
// order): slot z · chunk_stride + y / (L/64) for grid coordinates (y, z), so packed sequences of
// different lengths launch no block for chunks they do not have (chunk_slot).
//
// Layout: chunkwise_common.cuh (this file: indexing, the per-row and tile helpers both directions
// share), chunkwise_forward.cuh and chunkwise_backward.cuh (the kernels), chunkwise_launch.cuh (the
// scratch and the launch order), and one translation unit per input type (chunkwise_float32.cu,
// chunkwise_bf16.cu) that instantiates them. What these headers define is internal to the
// translation unit that includes them; params.hpp declares the per-type entry points.
#pragma once

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
// The row and chunk of a chunk-parallel block: chunk slot `plane` · chunk_stride + `position`
// (Params); false past the last slot (the last plane's tail), where the block returns.
__device__ __forceinline__ bool chunk_slot(const Params& p, int plane, int position, Row& row, int& k) {
  const std::int64_t s = static_cast<std::int64_t>(plane) * p.chunk_stride + position;
  if (s >= p.chunks) return false;
  int bh;
  chunk_at(p, s, bh, k);
  row = row_of(p, bh);
  return true;
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


// The state entering chunk k, C (DQK, DV), as state_pass stores it: float32 for float32 kernels;
// for bf16 kernels already split into hi and lo bf16 planes (the same bytes), so that the output
// pass copies it into its operand tiles as it is.
template <class T>
__device__ __forceinline__ Split<T> stored_state(const Params& p, const Row& row, int k) {
  const std::int64_t CS = static_cast<std::int64_t>(p.DQK) * p.DV;
  T* base = reinterpret_cast<T*>(p.Cs + state_index(row, k) * CS);
  return {base, kSplit<T> == 2 ? base + CS : nullptr};
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

}  // namespace
}  // namespace flashlstm::cuda::mlstm::detail
