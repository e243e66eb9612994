// The chunkwise forward's kernels (chunkwise_common.cuh describes the passes): gate_prep,
// state_pass and chunk_output, whose statistics mode the backward uses too.
#pragma once

#include "cuda/mlstm/chunkwise_common.cuh"

namespace flashlstm::cuda::mlstm::detail {
namespace {

// Preconditions: one thread per chunk slot (p.chunks of them, any block size). Per chunk, in double:
// b = Σ log f from the chunk start, u = log i − b, the running max U of u and where it is attained.
template <class T>
__global__ void gate_prep(Params p) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  Row row;
  int k;
  if (!chunk_slot(p, 0, idx, row, k)) return;
  const Chunk c = chunk_of(p, row, k);
  double b = 0.0, U = -INFINITY;
  int am = -1;
  for (int t = 0; t < c.Lc; ++t) {
    const float it = load_gate<T>(p.igate, row.in0 + c.t0 + t, p.gates_f32);
    const double log_i = p.stabilised ? it : logsigmoid(it);
    b += logsigmoid(load_gate<T>(p.fgate, row.in0 + c.t0 + t, p.gates_f32));
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

// Preconditions: grid (ceil(DV/64), ceil(DQK/64), BH), StatePassSmem<T>::bytes of dynamic shared
// memory; each block owns one 64 x 64 tile of C (the blockIdx.x == 0 blocks also n, block (0, 0)
// also m) and walks the chunks in order, 64 tokens a step, one pipeline over all the steps.
template <class T>
__global__ void __launch_bounds__(kThreads, 3) state_pass(Params p) {
  using Smem = StatePassSmem<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // (w ∘ K) (64 keys, 64 DQK):(72,1) ×2: float32 products; per stage V (64 keys, 64 DV):(72,1) and the
  // raw K tile (64,64):(64,1); the weights (L):(1).
  const Split<T> K_w = split_at(reinterpret_cast<T*>(smem_raw), kTile * kPad);
  auto sV = [&](int stage) { return reinterpret_cast<T*>(smem_raw + Smem::kKw + stage * Smem::kStage); };
  auto raw_K = [&](int stage) { return smem_raw + Smem::kKw + stage * Smem::kStage + Smem::kV; };
  float* sW = reinterpret_cast<float*>(smem_raw + Smem::kKw + 2 * Smem::kStage);
  const int v0 = blockIdx.x * kTile, d0 = blockIdx.y * kTile, bh = ordered_row(p, blockIdx.z), tid = threadIdx.x;
  const Row row = row_of(p, bh);
  if (row.nc == 0) return;  // an empty sequence: the host hands its state on
  const bool owns_n = blockIdx.x == 0 && tid < kTile && d0 + tid < p.DQK;
  const bool owns_m = blockIdx.x == 0 && blockIdx.y == 0 && tid == 0;
  const std::int64_t CS = static_cast<std::int64_t>(p.DQK) * p.DV;

  Acc acc;  // C tile (64 DQK d0.., 64 DV v0..), for the whole row
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

// Preconditions: grid (ceil(DV/128), chunk_stride · L/64, chunk_planes), OutputSmem<T>::bytes of
// dynamic shared memory; block (x, y, z) computes rows 64·(y mod L/64).. of chunk slot
// z · chunk_stride + y / (L/64) and DV columns 128·x.. .
// kStats: instead of h, accumulate dh·num and dh·(state part of num) per token and store den, den0,
// m_r (the backward's readout statistics).
template <class T, bool kStats>
__global__ void __launch_bounds__(kThreads, 2) chunk_output(Params p) {
  using Smem = OutputSmem<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* const smem = reinterpret_cast<T*>(smem_raw);
  auto sQ = [&](int stage) { return smem + stage * Smem::kStage; };                // Q̂ (64 rows, 32):(40,1)
  auto sX = [&](int stage) { return smem + stage * Smem::kStage + Smem::kQ; };  // sC (32 DQK, 128 DV):(136,1) ×2 or K (64 keys, 32):(40,1)
  auto sV = [&](int stage) { return smem + stage * Smem::kStage; };                // V (64 keys, 128 DV):(136,1)
  const Split<T> sP = split_at(smem + 2 * Smem::kStage, kTile * kPad);            // P (64 rows, 64 keys):(72,1) ×2
  __shared__ float sN[kStep], sDen[kTile];
  __shared__ double sU[kTile];
  __shared__ RowTile rows;
  const int tiles = p.L / kTile, v0 = blockIdx.x * kOutCols, tid = threadIdx.x;
  Row row;
  int k;
  if (!chunk_slot(p, blockIdx.z, blockIdx.y / tiles, row, k)) return;
  const Chunk c = chunk_of(p, row, k);
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
  Acc acc[kOutSub];  // num, two (64 rows r0.., 64 DV) tiles: DV v0.. and v0 + 64..
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
    Acc a;  // A = Q̂ Kᵀ (64 rows r0.., 64 keys s0..)
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

}  // namespace
}  // namespace flashlstm::cuda::mlstm::detail
