// The chunkwise backward's kernels (chunkwise_common.cuh describes the passes): readout_grad,
// state_pass_reverse, intra_grad, grad_q, grad_k, grad_v and the gate gradients.
#pragma once

#include "cuda/mlstm/chunkwise_common.cuh"

namespace flashlstm::cuda::mlstm::detail {
namespace {

// Preconditions: one thread per entry of the per-token workspace (p.tokens of them, any block
// size), after chunk_output's statistics. Per token: the readout h = num / dhat and its derivative
// (reference readout_backward).
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
  __shared__ __align__(16) T sQ[kTile * kPad], sD_[kSplit<T> * kTile * kPad];  // Q̂ tile (64,64):(72,1)
  __shared__ float sW[kMaxChunk], sDelta[kMaxChunk];  // per token of the chunk: (L):(1)
  __shared__ double scratch[kThreads / 32];
  const Split<T> sD = split_at(sD_, kTile * kPad);  // w0 ∘ dnum (64 tokens, 64 DV):(72,1) ×2: float32 products
  const int v0 = blockIdx.x * kTile, d0 = blockIdx.y * kTile, bh = ordered_row(p, blockIdx.z), tid = threadIdx.x;
  const Row row = row_of(p, bh);
  if (row.nc == 0) return;  // an empty sequence: the host hands its state gradient on
  const bool owns_n = blockIdx.x == 0 && tid < kTile && d0 + tid < p.DQK;
  const std::int64_t CS = static_cast<std::int64_t>(p.DQK) * p.DV;

  Acc acc;  // dC tile (64 DQK d0.., 64 DV v0..)
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

// Preconditions: grid (L/64, chunk_stride · L/64, chunk_planes); block (x, y) handles key tile x of
// the row tile y mod L/64 (skipped above the diagonal). Writes dA = W ∘ G with G = dnum Vᵀ + delta, P = A ∘ W and
// D = P ∘ G, zero where masked.
template <class T>
__global__ void __launch_bounds__(kThreads, 3) intra_grad(Params p) {
  __shared__ __align__(16) T sAB[2 * kTile * kPadS];  // two (64,32):(40,1) operand slices
  __shared__ float sInv[kTile];                        // 1 / dhat of the 64 rows
  __shared__ double sU[kTile];                         // u of the 64 keys
  __shared__ RowTile rows;
  const int tiles = p.L / kTile, tid = threadIdx.x;
  Row row;
  int k;
  if (!chunk_slot(p, blockIdx.z, blockIdx.y / tiles, row, k)) return;
  const Chunk c = chunk_of(p, row, k);
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
  T* sX = sAB;                  // Q̂, then dh slices: (64 rows, 32):(40,1)
  T* sY = sAB + kTile * kPadS;  // K, then V slices: (64 keys, 32):(40,1)

  Acc a, gr;  // A = Q̂ Kᵀ and dh Vᵀ (64 rows r0.., 64 keys s0..)
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

// Preconditions: grid (ceil(DQK/64), chunk_stride · L/64, chunk_planes).
// dq = scale·(dA K + w0 ∘ (dnum Cᵀ + delta nᵀ)).
template <class T>
__global__ void __launch_bounds__(kThreads, 3) grad_q(Params p) {
  // sA: dh slices (64 rows, 32):(40,1), then dA tiles (64 rows, 64 keys):(72,1) ×2;
  // sB: Cᵀ slices (64 DQK, 32 DV):(40,1) ×2, then K tiles (64 keys, 64 DQK):(72,1).
  __shared__ __align__(16) T sA[kSplit<T> * kTile * kPad], sB[kSplit<T> * kTile * kPad];
  __shared__ float sInv[kTile];
  __shared__ RowTile rows;
  const int tiles = p.L / kTile, d0 = blockIdx.x * kTile, tid = threadIdx.x;
  Row row;
  int k;
  if (!chunk_slot(p, blockIdx.z, blockIdx.y / tiles, row, k)) return;
  const Chunk c = chunk_of(p, row, k);
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

  Acc acc;  // dq tile (64 rows r0.., 64 DQK d0..)
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

// Preconditions: grid (ceil(DQK/64), chunk_stride · L/64, chunk_planes); block y is a key tile.
// dk = scale·dAᵀ Q + w_last ∘ (V dCᵀ + dnᵀ); also the last row's entries of dlogD.
template <class T>
__global__ void __launch_bounds__(kThreads, 3) grad_k(Params p) {
  // sA: V slices (64 keys, 32 DV):(40,1), then dA tiles (64 rows, 64 keys):(72,1) ×2;
  // sB: dC slices (64 DQK, 32 DV):(40,1) ×2, then Q̂ tiles (64 rows, 64 DQK):(72,1).
  __shared__ __align__(16) T sA[kSplit<T> * kTile * kPad], sB[kSplit<T> * kTile * kPad];
  __shared__ float w_last[kTile];
  const int tiles = p.L / kTile, d0 = blockIdx.x * kTile;
  Row row;
  int k;
  if (!chunk_slot(p, blockIdx.z, blockIdx.y / tiles, row, k)) return;
  const Chunk c = chunk_of(p, row, k);
  const int s0 = (blockIdx.y % tiles) * kTile;
  if (s0 >= c.Lc) return;
  load_exit_weights(w_last, p, row, c, s0);
  const std::int64_t CS = static_cast<std::int64_t>(p.DQK) * p.DV;
  const float* dC = p.dCs + chunk_index(row, c.k) * CS;
  const float* dn = p.dns + chunk_index(row, c.k) * p.DQK;
  const T* Q = token_ptr<T>(p.q, row, c.t0, p.DQK);
  const T* K = token_ptr<T>(p.k, row, c.t0, p.DQK);
  const T* V = token_ptr<T>(p.v, row, c.t0, p.DV);

  Acc acc, st;  // dAᵀ Q̂ and V dCᵀ (64 keys s0.., 64 DQK d0..)
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

// Preconditions: grid (ceil(DV/64), chunk_stride · L/64, chunk_planes); block y is a key tile.
// dv = Pᵀ dnum + w_last ∘ (K dC).
template <class T>
__global__ void __launch_bounds__(kThreads, 3) grad_v(Params p) {
  // sA: K slices (64 keys, 32 DQK):(40,1), then P / dhat tiles (64 rows, 64 keys):(72,1) ×2;
  // sB: dC slices (32 DQK, 64 DV):(72,1) ×2, then dh tiles (64 rows, 64 DV):(72,1).
  __shared__ __align__(16) T sA[kSplit<T> * kTile * kPad], sB[kSplit<T> * kTile * kPad];
  __shared__ float w_last[kTile], sInv[kTile];
  const int tiles = p.L / kTile, v0 = blockIdx.x * kTile, tid = threadIdx.x;
  Row row;
  int k;
  if (!chunk_slot(p, blockIdx.z, blockIdx.y / tiles, row, k)) return;
  const Chunk c = chunk_of(p, row, k);
  const int s0 = (blockIdx.y % tiles) * kTile;
  if (s0 >= c.Lc) return;
  load_exit_weights(w_last, p, row, c, s0);
  const std::int64_t CS = static_cast<std::int64_t>(p.DQK) * p.DV;
  const float* dC = p.dCs + chunk_index(row, c.k) * CS;
  const T* K = token_ptr<T>(p.k, row, c.t0, p.DQK);
  const T* dH = token_ptr<T>(p.dh, row, c.t0, p.DV);

  Acc acc, st;  // Pᵀ dnum and K dC (64 keys s0.., 64 DV v0..)
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

// Preconditions: one thread per row (BH of them, any block size), after gate_rows. Chunks in
// reverse: dm_k, the state column's sum, gets the last row's routing when the state maximises that
// row, and hands it on as the next (earlier) chunk's exit stabiliser gradient. For sig every m is
// the constant 0: no routing, no chain.
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

// Preconditions: grid (chunk_stride, chunk_planes), 1024 threads (thread s owns column s). Column sums give digate;
// the rows, turned into exclusive prefix sums, give dfgate.
template <class T>
__global__ void __launch_bounds__(kMaxChunk) gate_cols(Params p) {
  __shared__ double d0[kMaxChunk];  // the state column of dlogD, per row: (L):(1)
  const int tid = threadIdx.x;
  Row row;
  int k;
  if (!chunk_slot(p, blockIdx.y, blockIdx.x, row, k)) return;
  const Chunk c = chunk_of(p, row, k);
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
    const std::int64_t at = row.in0 + c.t0 + tid;
    const float f = load_gate<T>(p.fgate, at, p.gates_f32), i = load_gate<T>(p.igate, at, p.gates_f32);
    store_gate<T>(p.dfgate, at, p.gates_f32, static_cast<float>(crossing) * sigmoid(-f));
    store_gate<T>(p.digate, at, p.gates_f32, static_cast<float>(col) * (p.stabilised ? 1.f : sigmoid(-i)));
  }
}

}  // namespace
}  // namespace flashlstm::cuda::mlstm::detail
