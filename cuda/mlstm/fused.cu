// The fused chunkwise mLSTM forward for bf16 inputs: one block per (row, 64 DV columns) walks the
// row (one head of one sequence, rows.cuh) in chunks of 64 tokens with its slice of the state on
// chip, and writes only h and the final state. With packed sequences the blocks take the longest
// rows first, so that the short ones fill in behind them. It computes what forward_chunkwise's state and output passes compute at L = 64
// (docs/mlstm.md's chunkwise form), without storing the chunk states.
//
// Per block: the state slice Cᵀ (64 DV rows x DQK) lives in the registers of its 8 warps for the
// whole sequence, as mma accumulators: warp w holds DV rows 16·(w mod 4).. and DQK columns
// (kDK/2)·(w / 4).., a thread (g = lane / 4, q = lane % 4) the entries c[t][e] at DV row
// 16·(w mod 4) + g + 8·(e / 2), DQK column (kDK/2)·(w / 4) + 8t + 2q + e mod 2. Per chunk k (tokens
// t0.., Lc of them):
//   gates      (warp 0) b_r = Σ_{p ≤ r} log f_p, u_s = log i_s − b_s, U_r = max_{s ≤ r} u_s (double
//              scans), m_r = b_r + max(m_k, U_r) (exp gate; 0 for sig), the weights
//              W(r, s) = exp(b_r + u_s − m_r), w0_r = exp(b_r + m_k − m_r), the exit weights
//              a_s = exp(b_last + u_s − m_last) and ḡ = exp(b_last + m_k − m_last);
//   products   S = Q Kᵀ (64 x 64), P = s S ∘ W (causal; rounded to bf16 for P V, its row sums from the
//              float32 values), the readout Hᵀ = Cᵀ Qᵀ (Cᵀ rounded to bf16 from the accumulators: they
//              are the A operand as they are), a∘V (bf16), q·n (n rounded to bf16);
//   output     h = (P V + s w0 ∘ Hᵀᵀ) / max(|den|, e^{−m}) + eps, den = Σ_s P + s w0 (q·n);
//   update     Cᵀ ← ḡ Cᵀ + (a∘V)ᵀ K on the tensor cores, n ← ḡ n + Σ_s bf16(a_s) k_s, m_k ← m_last.
// The next chunk's q, k and v arrive by cp.async (two buffers) and its gates by plain loads while
// this one is computed. These are the operands the reference's bf16-operand chunkwise form rounds.
#include "cuda/mlstm/params.hpp"
#include "cuda/mlstm/rows.cuh"
#include "cuda/mlstm/tiles.cuh"

#include <cuda_runtime.h>

#include <cmath>

namespace flashlstm::cuda::mlstm::detail {
namespace {

using bf16 = __nv_bfloat16;
constexpr int kChunk = kFusedChunk;  // tokens per step of the recurrence
constexpr int kSlice = 64;  // DV columns per block

// Shared memory, in bytes from the start: two buffers of Q and K, each (64 tokens, kDK):(kDK + 8,1),
// and the V slice (64 tokens, 64 DV):(72,1); then P and a∘V (64,64):(72,1) bf16, and the two warp
// halves of Hᵀ, each (64 DV, 64 tokens):(68,1) float32.
template <int kDK>
struct FusedLayout {
  // Hᵀ rows of 68 floats: the readout's stores (a thread's rows g, columns 2q) meet at most two to a
  // bank, the output's reads (rows 2q, columns g) none.
  static constexpr int kLdK = stride(kDK), kLdV = stride(kSlice), kLdH = kChunk + 4;
  static constexpr std::size_t kQ = std::size_t(kChunk) * kLdK * sizeof(bf16), kV = std::size_t(kChunk) * kLdV * sizeof(bf16);
  static constexpr std::size_t kBuffer = 2 * kQ + kV;
  static constexpr std::size_t P = 2 * kBuffer, aV = P + kV, H = aV + kV;
  static constexpr std::size_t bytes = H + 2 * std::size_t(kSlice) * kLdH * sizeof(float);
};

// Per-chunk scalars, written by warp 0.
struct ChunkScalars {
  // b_r − m_r and u_s (−∞ beyond the chunk), rounded to float32 from the double scans: the weights'
  // exponents lose about 2⁻²⁴ of |b| (at most a few hundred within a chunk), far below bf16's 2⁻⁹.
  float bm[kChunk], u[kChunk];
  float w0[kChunk], floor[kChunk], a[kChunk], a_bf16[kChunk];  // a_bf16: a rounded, n's operand
  float g;  // ḡ
};

// x + Σ_{i<8} q[i] n[i]: eight bf16 values of q (16 bytes) against eight floats of n.
__device__ __forceinline__ float dot8(const bf16* q, const float* n, float x) {
  const uint4 raw = *reinterpret_cast<const uint4*>(q);
  const __nv_bfloat162* pair = reinterpret_cast<const __nv_bfloat162*>(&raw);
  const float4 n0 = *reinterpret_cast<const float4*>(n), n1 = *reinterpret_cast<const float4*>(n + 4);
  const float nn[8] = {n0.x, n0.y, n0.z, n0.w, n1.x, n1.y, n1.z, n1.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 q2 = __bfloat1622float2(pair[i]);
    x = fmaf(q2.x, nn[2 * i], x);
    x = fmaf(q2.y, nn[2 * i + 1], x);
  }
  return x;
}

// Preconditions: bf16 inputs, DQK ≤ kDK and DQK, DV multiples of 8 (16-byte rows); grid
// BH · ceil(DV / 64) blocks of 256 threads (block x: head x / slices, slice x mod slices),
// FusedLayout<kDK>::bytes of dynamic shared memory.
template <int kDK>
__global__ void __launch_bounds__(kThreads, 1) fused_forward(Params p) {
  using Layout = FusedLayout<kDK>;
  constexpr int kLdK = Layout::kLdK, kLdV = Layout::kLdV, kLdH = Layout::kLdH;
  constexpr int kHalf = kDK / 2, kTiles = kHalf / 8;  // a warp's DQK columns, in n8 tiles
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ ChunkScalars sc;
  __shared__ float row_part[2][kChunk], qn[kChunk];  // the two column halves' row sums of P; q·n
  __shared__ __align__(16) float n[kDK], n_bf16[kDK];  // n, and n rounded to bf16 (q·n's operand)

  const int slices = (p.DV + kSlice - 1) / kSlice;
  const int bh = ordered_row(p, blockIdx.x / slices), c0 = (blockIdx.x % slices) * kSlice;
  const Row row = row_of(p, bh);  // the row's tokens: row.S from row.in0
  if (row.S == 0) return;         // an empty sequence: the host hands its state on
  const int tid = threadIdx.x, lane = lane_id(), warp = warp_id(), g = lane / 4, q = lane % 4;
  const int r0 = 16 * (warp % 4), d0 = kHalf * (warp / 4);  // the warp's DV rows and DQK columns of Cᵀ
  const int S = row.S, nc = (S + kChunk - 1) / kChunk;
  const bf16* Qg = static_cast<const bf16*>(p.q) + row.in0 * p.DQK;
  const bf16* Kg = static_cast<const bf16*>(p.k) + row.in0 * p.DQK;
  const bf16* Vg = static_cast<const bf16*>(p.v) + row.in0 * p.DV;
  bf16* Hg = static_cast<bf16*>(p.h) + row.in0 * p.DV;
  const auto Q = [&](int buffer) { return reinterpret_cast<bf16*>(smem + buffer * Layout::kBuffer); };
  const auto K = [&](int buffer) { return reinterpret_cast<bf16*>(smem + buffer * Layout::kBuffer + Layout::kQ); };
  const auto V = [&](int buffer) { return reinterpret_cast<bf16*>(smem + buffer * Layout::kBuffer + 2 * Layout::kQ); };
  bf16* P = reinterpret_cast<bf16*>(smem + Layout::P);
  bf16* aV = reinterpret_cast<bf16*>(smem + Layout::aV);
  float* H = reinterpret_cast<float*>(smem + Layout::H);  // [2][64 DV][kLdH tokens]

  // Chunk k's q, k (zero beyond DQK) and v slice (zero beyond DV) into buffer k mod 2, rows beyond
  // the sequence zero; one commit group, empty past the last chunk.
  const auto load = [&](int k) {
    if (k < nc) {
      const int t0 = k * kChunk, Lc = min(kChunk, S - t0), buffer = k % 2;
      constexpr int kPieces = kDK / 8;  // 16-byte pieces of a Q or K row
      for (int e = tid; e < kChunk * kPieces; e += kThreads) {
        const int r = e / kPieces, d = 8 * (e % kPieces);
        const bool valid = r < Lc && d < p.DQK;
        const std::int64_t at = valid ? std::int64_t(t0 + r) * p.DQK + d : 0;
        cp_async16(Q(buffer) + r * kLdK + d, Qg + at, valid);
        cp_async16(K(buffer) + r * kLdK + d, Kg + at, valid);
      }
      for (int e = tid; e < kChunk * kSlice / 8; e += kThreads) {
        const int r = e / (kSlice / 8), c = 8 * (e % (kSlice / 8));
        const bool valid = r < Lc && c0 + c < p.DV;
        cp_async16(V(buffer) + r * kLdV + c, Vg + (valid ? std::int64_t(t0 + r) * p.DV + c0 + c : 0), valid);
      }
    }
    cp_async_commit();
  };

  // The state: Cᵀ from the initial C (DQK, DV), n, m. c: the warp's (16 DV, kDK/2 DQK) piece of the
  // block's Cᵀ (64 DV, kDK), as kTiles m16n8 accumulators (the header gives a thread's entries).
  float c[kTiles][4];
  const std::int64_t CS = std::int64_t(p.DQK) * p.DV;
  const auto c_at = [&](int t, int e) {  // (DQK column, DV column) of c[t][e], or -1 outside
    const int d = d0 + 8 * t + 2 * q + e % 2, v = c0 + r0 + g + 8 * (e / 2);
    return d < p.DQK && v < p.DV ? std::int64_t(d) * p.DV + v : std::int64_t(-1);
  };
#pragma unroll
  for (int t = 0; t < kTiles; ++t)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const std::int64_t at = c_at(t, e);
      c[t][e] = p.C0 && at >= 0 ? p.C0[bh * CS + at] : 0.f;
    }
  if (tid < kDK) {
    n[tid] = p.n0 && tid < p.DQK ? p.n0[std::int64_t(bh) * p.DQK + tid] : 0.f;
    n_bf16[tid] = __bfloat162float(__float2bfloat16_rn(n[tid]));
  }
  double mk = p.m0 ? p.m0[bh] : 0.0;  // warp 0's copy of the stabiliser entering the chunk

  // Warp 0's gates of the next chunk (tokens 2·lane, 2·lane + 1), loaded a chunk ahead.
  float gi[2], gf[2];
  const auto load_gates = [&](int k) {
#pragma unroll
    for (int x = 0; x < 2; ++x) {
      const int t = k * kChunk + 2 * lane + x;
      const bool valid = k < nc && t < S;
      gi[x] = valid ? load_gate<bf16>(p.igate, row.in0 + t, p.gates_f32) : 0.f;
      gf[x] = valid ? load_gate<bf16>(p.fgate, row.in0 + t, p.gates_f32) : 0.f;
    }
  };
  if (warp == 0) load_gates(0);
  load(0);
  load(1);

  for (int k = 0; k < nc; ++k) {
    const int t0 = k * kChunk, Lc = min(kChunk, S - t0), buffer = k % 2;
    if (warp == 0) {
      // Inclusive scans over the chunk's 64 tokens, two per lane, in double.
      double lf[2], li[2];
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        const bool in = 2 * lane + x < Lc;
        lf[x] = in ? double(logsigmoid(gf[x])) : 0.0;
        li[x] = !in ? -INFINITY : p.stabilised ? double(gi[x]) : double(logsigmoid(gi[x]));
      }
      double sum = lf[0] + lf[1];
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const double y = __shfl_up_sync(0xffffffffu, sum, o);
        if (lane >= o) sum += y;
      }
      double before = __shfl_up_sync(0xffffffffu, sum, 1);
      if (lane == 0) before = 0.0;
      const double b[2] = {before + lf[0], before + lf[0] + lf[1]};
      const double u[2] = {li[0] - b[0], li[1] - b[1]};
      double best = fmax(u[0], u[1]);
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const double y = __shfl_up_sync(0xffffffffu, best, o);
        if (lane >= o) best = fmax(best, y);
      }
      double prior = __shfl_up_sync(0xffffffffu, best, 1);
      if (lane == 0) prior = -INFINITY;
      const double U[2] = {fmax(prior, u[0]), fmax(fmax(prior, u[0]), u[1])};
      double m[2];
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        const int r = 2 * lane + x;
        m[x] = p.stabilised ? b[x] + fmax(mk, U[x]) : 0.0;
        sc.bm[r] = static_cast<float>(b[x] - m[x]);
        sc.u[r] = static_cast<float>(u[x]);
        sc.w0[r] = expf(static_cast<float>(b[x] + mk - m[x]));
        sc.floor[r] = p.stabilised ? expf(-static_cast<float>(m[x])) : 1.f;
      }
      const int last = Lc - 1;
      const double b_last = __shfl_sync(0xffffffffu, last % 2 ? b[1] : b[0], last / 2);
      const double m_last = __shfl_sync(0xffffffffu, last % 2 ? m[1] : m[0], last / 2);
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        const float a = expf(static_cast<float>(b_last + u[x] - m_last));
        sc.a[2 * lane + x] = a;
        sc.a_bf16[2 * lane + x] = __bfloat162float(__float2bfloat16_rn(a));
      }
      if (lane == 0) sc.g = expf(static_cast<float>(b_last + mk - m_last));
      mk = m_last;
      load_gates(k + 1);
    }
    cp_async_wait<1>();
    __syncthreads();  // chunk k's tiles and scalars are in

    const bf16 *Qs = Q(buffer), *Ks = K(buffer), *Vs = V(buffer);
    {
      // S = Q Kᵀ, P = s S ∘ W (causal) into the P tile, its row sums from the float32 values.
      Acc S;
      zero(S);
      gemm<true, false, kDK>(S, Qs, kLdK, Ks, kLdK);
#pragma unroll
      for (int i = 0; i < kTR; ++i) {
        const int r = tile_row(i);
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < kTC; j += 2) {
          float x[2];
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int s = tile_col(j + h);
            x[h] = s <= r && r < Lc ? p.scale * S[i][j + h] * expf(sc.bm[r] + sc.u[s]) : 0.f;
            sum += x[h];
          }
          *reinterpret_cast<__nv_bfloat162*>(P + r * kLdV + tile_col(j)) = __floats2bfloat162_rn(x[0], x[1]);
        }
        sum = row_sum(sum);
        if (row_leader()) row_part[warp / 4][r] = sum;
      }
    }
    {
      // The readout Hᵀ = Cᵀ Qᵀ over the warp's DQK half: the accumulators of Cᵀ are the A fragments.
      const int m8 = lane / 8, j8 = lane % 8;
      float hT[kChunk / 8][4] = {};
#pragma unroll
      for (int kk = 0; kk < kHalf / 16; ++kk) {
        const std::uint32_t a[4] = {pack_bf16(c[2 * kk][0], c[2 * kk][1]), pack_bf16(c[2 * kk][2], c[2 * kk][3]),
                                    pack_bf16(c[2 * kk + 1][0], c[2 * kk + 1][1]),
                                    pack_bf16(c[2 * kk + 1][2], c[2 * kk + 1][3])};
        const int k0 = d0 + 16 * kk;
#pragma unroll
        for (int np = 0; np < kChunk / 16; ++np) {
          std::uint32_t b[4];
          ldmatrix_x4<false>(b, Qs + (16 * np + (m8 / 2) * 8 + j8) * kLdK + k0 + (m8 % 2) * 8);
          mma_bf16(hT[2 * np], a, b[0], b[1]);
          mma_bf16(hT[2 * np + 1], a, b[2], b[3]);
        }
      }
      float* to = H + (warp / 4) * kSlice * kLdH;
#pragma unroll
      for (int nt = 0; nt < kChunk / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) to[(r0 + g + 8 * (e / 2)) * kLdH + 8 * nt + 2 * q + e % 2] = hT[nt][e];
    }
    // a∘V, rounded; q·n with n rounded (a row per 4 threads).
    for (int e = tid; e < kChunk * kSlice / 2; e += kThreads) {
      const int s = e / (kSlice / 2), col = 2 * (e % (kSlice / 2));
      const __nv_bfloat162 x = *reinterpret_cast<const __nv_bfloat162*>(Vs + s * kLdV + col);
      *reinterpret_cast<__nv_bfloat162*>(aV + s * kLdV + col) =
          __floats2bfloat162_rn(sc.a[s] * __low2float(x), sc.a[s] * __high2float(x));
    }
    {
      const int r = tid / 4, part = tid % 4;
      float x = 0.f;
#pragma unroll
      for (int d = 8 * part; d < kDK; d += 32) x = dot8(Qs + r * kLdK + d, n_bf16 + d, x);  // parts interleaved
      x += __shfl_xor_sync(0xffffffffu, x, 1);
      x += __shfl_xor_sync(0xffffffffu, x, 2);
      if (part == 0) qn[r] = x;
    }
    __syncthreads();  // P, a∘V, Hᵀ, the row sums and q·n are complete

    {
      // h = (P V + s w0 ∘ H) / dhat. The diagonal tile is causal: a non-finite v of a later token must
      // not reach earlier rows (masked_gemm).
      Acc num;
      zero(num);
      masked_gemm<true, true, kChunk, false>(num, P, kLdV, Vs, kLdV, CausalTile{});
#pragma unroll
      for (int i = 0; i < kTR; ++i) {
        const int r = tile_row(i);
        const float w = p.scale * sc.w0[r];
        const float den = row_part[0][r] + row_part[1][r] + w * qn[r];
        const float dhat = p.normalizes ? readout_dhat(den, sc.floor[r], p.eps) : 1.f;
#pragma unroll
        for (int j = 0; j < kTC; j += 2) {
          const int col = tile_col(j), v = c0 + col;
          const float x0 = num[i][j] + w * (H[col * kLdH + r] + H[kSlice * kLdH + col * kLdH + r]);
          const float x1 = num[i][j + 1] + w * (H[(col + 1) * kLdH + r] + H[kSlice * kLdH + (col + 1) * kLdH + r]);
          if (r < Lc && v < p.DV) store_pair(Hg, std::int64_t(t0 + r) * p.DV + v, v + 1 < p.DV, x0 / dhat, x1 / dhat);
        }
      }
    }
    {
      // n ← ḡ n + Σ_s bf16(a_s) k_s: a thread per 8 columns and every kTokenGroups-th token (adjacent
      // lanes read adjacent rows, in different banks), the token groups of a column group in adjacent
      // lanes, summed by shuffles.
      constexpr int kGroups = kDK / 8, kTokenGroups = kThreads / kGroups;
      const int tg = tid % kTokenGroups, d = 8 * (tid / kTokenGroups);
      float x[8] = {};
#pragma unroll
      for (int s = tg; s < kChunk; s += kTokenGroups) {
        const float a = sc.a_bf16[s];
        const uint4 raw = *reinterpret_cast<const uint4*>(Ks + s * kLdK + d);
        const __nv_bfloat162* pair = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float2 k2 = __bfloat1622float2(pair[i]);
          x[2 * i] = fmaf(a, k2.x, x[2 * i]);
          x[2 * i + 1] = fmaf(a, k2.y, x[2 * i + 1]);
        }
      }
#pragma unroll
      for (int o = 1; o < kTokenGroups; o <<= 1)
#pragma unroll
        for (int i = 0; i < 8; ++i) x[i] += __shfl_xor_sync(0xffffffffu, x[i], o);
      if (tg == 0)
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          n[d + i] = sc.g * n[d + i] + x[i];
          n_bf16[d + i] = __bfloat162float(__float2bfloat16_rn(n[d + i]));
        }
    }
    {
      // Cᵀ ← ḡ Cᵀ + (a∘V)ᵀ K: A (DV x tokens) read transposed from a∘V, B = K (tokens x DQK).
      const int m8 = lane / 8, j8 = lane % 8;
#pragma unroll
      for (int t = 0; t < kTiles; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) c[t][e] *= sc.g;
#pragma unroll
      for (int k0 = 0; k0 < kChunk; k0 += 16) {
        std::uint32_t a[4];
        ldmatrix_x4<true>(a, aV + (k0 + (m8 / 2) * 8 + j8) * kLdV + r0 + (m8 % 2) * 8);
#pragma unroll
        for (int np = 0; np < kTiles / 2; ++np) {
          std::uint32_t b[4];
          ldmatrix_x4<true>(b, Ks + (k0 + (m8 % 2) * 8 + j8) * kLdK + d0 + 16 * np + (m8 / 2) * 8);
          mma_bf16(c[2 * np], a, b[0], b[1]);
          mma_bf16(c[2 * np + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // buffer k mod 2, P, a∘V and Hᵀ are free
    load(k + 2);
  }

  if (p.C_last) {
#pragma unroll
    for (int t = 0; t < kTiles; ++t)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const std::int64_t at = c_at(t, e);
        if (at >= 0) p.C_last[bh * CS + at] = c[t][e];
      }
  }
  if (c0 == 0) {
    if (p.n_last && tid < p.DQK) p.n_last[std::int64_t(bh) * p.DQK + tid] = n[tid];
    if (p.m_last && tid == 0) p.m_last[bh] = static_cast<float>(mk);
  }
}

template <int kDK>
void launch(const Params& p, cudaStream_t stream) {
  const auto bytes = static_cast<int>(FusedLayout<kDK>::bytes);
  check_cuda(cudaFuncSetAttribute(fused_forward<kDK>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
             "fused mLSTM forward: shared memory");
  const unsigned blocks = static_cast<unsigned>(p.BH) * static_cast<unsigned>((p.DV + kSlice - 1) / kSlice);
  fused_forward<kDK><<<blocks, kThreads, bytes, stream>>>(p);
  check_cuda(cudaGetLastError(), "fused mLSTM forward");
}

}  // namespace

void run_fused_forward(Params p, const Packing* packing, cudaStream_t stream) {
  Scratch scratch(stream);
  PackedTables tables(p, kFusedChunk, packing);
  tables.add_to(scratch);
  scratch.allocate();
  tables.upload(p, stream);
  if (p.DQK <= 64) launch<64>(p, stream);
  else if (p.DQK <= 128) launch<128>(p, stream);
  else launch<256>(p, stream);
}

}  // namespace flashlstm::cuda::mlstm::detail
