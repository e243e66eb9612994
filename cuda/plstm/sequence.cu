// The pLSTM on 1-D sequences on the GPU (cuda/plstm/plstm.hpp): the chunkwise form of
// reference/plstm/sequence.hpp with its aggregates in the prefix order (Aggregates::prefix),
// chunks of L = 64 tokens, per (batch, head):
//
//   C_t = T_t C_{t-1} + S_t k_t v_tᵀ,   h_t = s (M_t q_tᵀ C_{t-1} + D_t (q_t·k_t) v_t)
//
// A chunk c (tokens t0 .. t0 + len) is a linear map of the state entering it, C_c, built from the
// prefix sums of log|T| with counts of negative and zero transitions (ChunkPrefix), so transitions
// may be 0, negative or 1:
//
//   transition = Π T,  source_σ = S_σ Π_{r>σ} T_r,  mark_τ = M_τ Π_{r<τ} T_r,
//   G(τ, σ) = M_τ S_σ Π_{σ<r<τ} T_r  (σ < τ),
//   C_{c+1} = transition C_c + Kᵀ diag(source) V,
//   h = s (P V + diag(mark) Q C_c),  P = G ∘ (Q Kᵀ) + diag(D ∘ (q·k)).
//
// Forward:   chunk_scan<kStates>   per (DV tile, DQK tile, batch·head), chunks in order: the state
//                                  entering each chunk, kept in registers, stored (float32)
//            chunk_output          per (chunk, DV tile, batch·head): h
// Backward:  chunk_scan<kStates>, then
//            chunk_scan<kAdjoints> chunks in reverse: the gradient of the state leaving chunk c,
//                                  dC_c = transition_{c+1} dC_{c+1} + Qᵀ diag(s · mark) dh (chunk c+1)
//            chunk_grad            per (chunk, batch·head): dq, dk, dv, dD of its tokens and the
//                                  gradients of its aggregates, taken back to dS, dT, dM in the
//                                  reference's prefix order (sums of additions only, no atomics)
//
// Every product is a 64 x 64 tile of tiles.cuh (tensor cores for bf16 with float32-sourced operands
// as hi + lo bf16 terms, FMA for float32); head dimensions are walked 64 at a time. Indices: r, σ, τ
// are chunk-local tokens; the DQK dimension is walked in pieces of 64 (`piece`).
#include "cuda/plstm/grid.cuh"

#include <cuda_bf16.h>

#include <cstdint>

namespace flashlstm::cuda::plstm::detail {
namespace {

constexpr int kLd = stride(kTile);       // row stride of a 64 x 64 operand tile
constexpr int kOperand = kTile * kLd;    // elements of one
constexpr int kLdF = kTile + 1;          // row stride of a float 64 x 64 matrix in shared memory

__host__ __device__ inline int chunks(int S) { return (S + kTile - 1) / kTile; }

// A chunk's prefix quantities (index a + 1 for a = -1 .. len - 1): ℓ_a = Σ_{r <= a} log|T_r| over
// the nonzero T_r (double), and the counts of negative and of zero T_r, so that
//   Π_{a < r <= b} T_r = (-1)^{n_b - n_a} exp(ℓ_b - ℓ_a)  if z_b = z_a, else 0.
struct ChunkPrefix {
  double log_abs[kTile + 1];
  int negatives[kTile + 1], zeros[kTile + 1];

  // By warp 0 (two tokens a lane, an inclusive warp scan); the caller synchronises.
  __device__ void build(const float* T, int len) {
    if (threadIdx.x >= 32) return;
    const int lane = threadIdx.x;
    double l[2];
    int n[2], z[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = 2 * lane + i;
      const float t = r < len ? T[r] : 1.f;
      l[i] = t == 0.f ? 0.0 : log(fabs(static_cast<double>(t)));
      n[i] = t < 0.f, z[i] = t == 0.f;
    }
    double ls = l[0] + l[1];
    int ns = n[0] + n[1], zs = z[0] + z[1];
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const double lo = __shfl_up_sync(0xffffffffu, ls, offset);
      const int no = __shfl_up_sync(0xffffffffu, ns, offset), zo = __shfl_up_sync(0xffffffffu, zs, offset);
      if (lane >= offset) ls += lo, ns += no, zs += zo;
    }
    // ls is the inclusive sum through token 2·lane + 1.
    log_abs[2 * lane + 2] = ls, negatives[2 * lane + 2] = ns, zeros[2 * lane + 2] = zs;
    log_abs[2 * lane + 1] = ls - l[1], negatives[2 * lane + 1] = ns - n[1], zeros[2 * lane + 1] = zs - z[1];
    if (lane == 0) log_abs[0] = 0.0, negatives[0] = 0, zeros[0] = 0;
  }
  // Π_{a < r <= b} T_r for -1 <= a <= b < len (1 when a = b).
  __device__ float product(int a, int b) const {
    if (zeros[b + 1] != zeros[a + 1]) return 0.f;
    const float p = expf(static_cast<float>(log_abs[b + 1] - log_abs[a + 1]));
    return (negatives[b + 1] - negatives[a + 1]) % 2 != 0 ? -p : p;
  }
};

// One chunk's place and gates, in shared memory: its tokens, the prefix, and per token the raw gates
// and the aggregates source and mark.
struct ChunkGates {
  ChunkPrefix prefix;
  float S[kTile], M[kTile], D[kTile], T[kTile], source[kTile], mark[kTile];
  float transition;
  int t0, len;

  // All threads; ends with a barrier.
  __device__ void load(const SequenceParams& p, int bh, int c) {
    const int first = c * kTile, count = static_cast<int>(min(std::int64_t{kTile}, p.dims.S - first));
    const std::int64_t base = std::int64_t(bh) * p.dims.S + first;
    if (threadIdx.x == 0) t0 = first, len = count;
    if (threadIdx.x < kTile) {
      const int r = threadIdx.x;
      const bool in = r < count;
      S[r] = in ? p.S[base + r] : 0.f, M[r] = in ? p.M[base + r] : 0.f;
      D[r] = in ? p.D[base + r] : 0.f, T[r] = in ? p.T[base + r] : 1.f;
    }
    __syncthreads();
    prefix.build(T, count);
    __syncthreads();
    if (threadIdx.x < kTile) {
      const int r = threadIdx.x;
      source[r] = r < count ? S[r] * prefix.product(r, count - 1) : 0.f;
      mark[r] = r < count ? M[r] * prefix.product(-1, r - 1) : 0.f;
    }
    if (threadIdx.x == 0) transition = prefix.product(-1, count - 1);
    __syncthreads();
  }
  // G(τ, σ) for σ < τ < len.
  __device__ float G(int tau, int sigma) const { return M[tau] * S[sigma] * prefix.product(sigma, tau - 1); }
};

// The 64 x 64 tile at (r0, c0) of row-major (rows, cols) matrices, as an operand.
template <class S, class U>
__device__ void load(S tile, const U* g, std::int64_t cols, int r0, int c0, int rows, const float* row_scale = nullptr) {
  tiles::load_tile<kTile, kTile>(tile, g, cols, r0, c0, rows, static_cast<int>(cols), row_scale);
}

// A float (DQK, DV) state of chunk c of head bh in `states` ((B·NH, chunks, DQK, DV)).
__device__ inline float* state_of(float* states, const SequenceParams& p, int bh, int c) {
  return states + (std::int64_t(bh) * chunks(p.dims.S) + c) * p.dims.DQK * p.dims.DV;
}

// Stores a 64 x 64 accumulator at (r0, c0) of a row-major (rows, cols) matrix, rows and columns
// beyond the matrix left out.
template <class U>
__device__ void store(U* g, std::int64_t cols, int r0, int c0, int rows, const Acc& acc) {
#pragma unroll
  for (int i = 0; i < kTR; ++i)
#pragma unroll
    for (int j = 0; j < kTC; j += 2) {
      const int r = tile_row(i), c = c0 + tile_col(j);
      if (r0 + r < rows && c < cols)
        tiles::store_pair(g, (r0 + r) * cols + c, c + 1 < cols, acc[i][j], acc[i][j + 1]);
    }
}

// ---------------------------------------------------------------------------------------------
// The scan over chunks, in one of two directions.
//
// kStates: chunks in order; stores the state entering chunk c, then
//          C ← transition_c C + K_cᵀ diag(source_c) V_c.
// kAdjoints: chunks in reverse; stores the gradient of the state leaving chunk c, then
//          dC ← transition_c dC + Q_cᵀ diag(s · mark_c) dh_c  (the gradient leaving chunk c - 1).
//
// Preconditions: grid (ceil(DV/64), ceil(DQK/64), B·NH); block (x, y) owns rows 64·y.. (DQK) and
// columns 64·x.. (DV) of the state; 2 operand tiles of shared memory (the first split).
enum Scan { kStates, kAdjoints };

template <class T, Scan kScan>
__global__ void __launch_bounds__(kThreads) chunk_scan(SequenceParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ ChunkGates chunk;
  __shared__ float weight[kTile];
  const tiles::Split<T> left = tiles::split_at(reinterpret_cast<T*>(smem), kOperand);
  T* right = reinterpret_cast<T*>(smem) + kSplit<T> * kOperand;
  const int i0 = blockIdx.y * kTile, j0 = blockIdx.x * kTile, bh = blockIdx.z;
  const int S = p.dims.S, DQK = p.dims.DQK, DV = p.dims.DV, nc = chunks(S);
  // kStates: K scaled by the sources, and V; kAdjoints: Q scaled by s · marks, and dh.
  const T* a = static_cast<const T*>(kScan == kStates ? p.k : p.q) + std::int64_t(bh) * S * DQK;
  const T* b = static_cast<const T*>(kScan == kStates ? p.v : p.dh) + std::int64_t(bh) * S * DV;
  float* out = kScan == kStates ? p.states : p.dstates;
  Acc acc;
  tiles::zero(acc);
  for (int step = 0; step < nc; ++step) {
    const int c = kScan == kStates ? step : nc - 1 - step;
    store(state_of(out, p, bh, c), DV, i0, j0, DQK, acc);
    if (step == nc - 1) break;
    // Chunk c's map takes the state on (forward: entering c -> entering c + 1) or back (leaving c ->
    // leaving c - 1).
    chunk.load(p, bh, c);
    if (threadIdx.x < kTile)
      weight[threadIdx.x] = kScan == kStates ? chunk.source[threadIdx.x] : p.scale * chunk.mark[threadIdx.x];
    __syncthreads();
    load(left, a, DQK, chunk.t0, i0, S, weight);
    load(right, b, DV, chunk.t0, j0, S);
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kTR; ++i)
#pragma unroll
      for (int j = 0; j < kTC; ++j) acc[i][j] *= chunk.transition;
    tiles::gemm<false, true, kTile>(acc, left, kLd, right, kLd);
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------------------
// Forward output. Preconditions: grid (chunks, ceil(DV/64), B·NH); block (x, y) computes h for the
// tokens of chunk x and DV columns 64·y..; OutputSmem bytes of shared memory.
template <class T>
struct OutputSmem {  // in operand tiles: Q piece, K piece, V, then P (split) and the state piece (split)
  static constexpr int kQ = 0, kK = 1, kV = 2, kP = 3, kC = 3 + kSplit<T>, kTiles = 3 + 2 * kSplit<T>;
  static constexpr std::size_t bytes = std::size_t(kTiles) * kOperand * sizeof(T);
};

template <class T>
__global__ void __launch_bounds__(kThreads) chunk_output(SequenceParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ ChunkGates chunk;
  using L = OutputSmem<T>;
  T* base = reinterpret_cast<T*>(smem);
  T *Qp = base + L::kQ * kOperand, *Kp = base + L::kK * kOperand, *V = base + L::kV * kOperand;
  const tiles::Split<T> P = tiles::split_at(base + L::kP * kOperand, kOperand);
  const tiles::Split<T> Cp = tiles::split_at(base + L::kC * kOperand, kOperand);
  const int c = blockIdx.x, j0 = blockIdx.y * kTile, bh = blockIdx.z;
  const int S = p.dims.S, DQK = p.dims.DQK, DV = p.dims.DV;
  const T* q = static_cast<const T*>(p.q) + std::int64_t(bh) * S * DQK;
  const T* k = static_cast<const T*>(p.k) + std::int64_t(bh) * S * DQK;
  const T* v = static_cast<const T*>(p.v) + std::int64_t(bh) * S * DV;
  const float* C = state_of(p.states, p, bh, c);
  chunk.load(p, bh, c);
  const int t0 = chunk.t0, len = chunk.len;

  // A = Q Kᵀ (queries x keys of the chunk) and Q C_c, over DQK a piece at a time.
  Acc A, QC;
  tiles::zero(A);
  tiles::zero(QC);
  for (int piece = 0; piece < DQK; piece += kTile) {
    load(Qp, q, DQK, t0, piece, S);
    load(Kp, k, DQK, t0, piece, S);
    load(Cp, C, DV, piece, j0, DQK);
    __syncthreads();
    tiles::gemm<true, false, kTile>(A, Qp, kLd, Kp, kLd);
    tiles::gemm<true, true, kTile>(QC, Qp, kLd, Cp, kLd);
    __syncthreads();
  }
  load(V, v, DV, t0, j0, S);
  // P = G ∘ A + diag(D ∘ A), causal; zero beyond the chunk.
#pragma unroll
  for (int i = 0; i < kTR; ++i)
#pragma unroll
    for (int j = 0; j < kTC; ++j) {
      const int r = tile_row(i), s = tile_col(j);
      const float g = r >= len ? 0.f : s < r ? chunk.G(r, s) : s == r ? chunk.D[r] : 0.f;
      P.set(r * kLd + s, g * A[i][j]);
    }
  __syncthreads();
  Acc h;
  tiles::zero(h);
  tiles::gemm<true, true, kTile>(h, P, kLd, V, kLd);
#pragma unroll
  for (int i = 0; i < kTR; ++i)
#pragma unroll
    for (int j = 0; j < kTC; ++j) h[i][j] = p.scale * (h[i][j] + chunk.mark[tile_row(i)] * QC[i][j]);
  store(static_cast<T*>(p.h) + std::int64_t(bh) * S * DV, DV, t0, j0, S, h);
}

// ---------------------------------------------------------------------------------------------
// Backward of one chunk. Preconditions: grid (chunks, B·NH); GradSmem bytes of shared memory.
//
// With dH = s dh, C the state entering the chunk and dC the gradient of the state leaving it
// (reference chunk_backward):
//   dP = dH Vᵀ (causal), dA = dP ∘ G + diag(dP ∘ D), dD = diag(dP) ∘ diag(A)
//   dq = dA K + diag(mark) dH Cᵀ,  dk = dAᵀ Q + diag(source) V dCᵀ,  dv = Pᵀ dH + diag(source) K dC
//   and the aggregates' gradients: transition Σ dC ∘ C, source_σ (K dC)_σ · v_σ,
//   mark_τ dH_τ · (Q C)_τ, G  dP ∘ A.
// Pass 1 walks DV 64 columns at a time (dP, dv, the source and mark gradients); pass 2 walks DQK
// (dq, dk), each with an inner walk over the other dimension.
template <class T>
struct GradSmem {  // in operand tiles: Q piece, K piece, V, dh, then P or dA (split), C and dC pieces (split)
  static constexpr int kQ = 0, kK = 1, kV = 2, kdH = 3, kP = 4, kC = 4 + kSplit<T>, kdC = 4 + 2 * kSplit<T>,
                       kTiles = 4 + 3 * kSplit<T>;
  static constexpr std::size_t operands = std::size_t(kTiles) * kOperand * sizeof(T);
  // then three float 64 x 65 matrices: A (later E), dP (later dG), and the row prefixes of dT's sums
  static constexpr std::size_t bytes = operands + 3 * std::size_t(kTile) * kLdF * sizeof(float);
};

// Deterministic block sum (all threads call; the result is valid in every thread).
__device__ float block_sum(float x, float* scratch) {
  x += __shfl_xor_sync(0xffffffffu, x, 16);
  x += __shfl_xor_sync(0xffffffffu, x, 8);
  x = tiles::row_sum(x + __shfl_xor_sync(0xffffffffu, x, 4));
  __syncthreads();
  if (tiles::lane_id() == 0) scratch[tiles::warp_id()] = x;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < kThreads / 32; ++w) total += scratch[w];
  return total;
}

// Per row of a tile: Σ_col a(r, col) b(r, col) over this block's 64 columns, both halves of the row
// (warps w and w + 4) added in a fixed order into sum[r].
__device__ void add_row_products(const Acc& a, const Acc& b, float* half, float* sum, int len) {
#pragma unroll
  for (int i = 0; i < kTR; ++i) {
    float x = 0.f;
#pragma unroll
    for (int j = 0; j < kTC; ++j) x += a[i][j] * b[i][j];
    x = tiles::row_sum(x);
    if (tiles::row_leader()) half[(tiles::warp_id() / 4) * kTile + tile_row(i)] = x;
  }
  __syncthreads();
  if (threadIdx.x < kTile) sum[threadIdx.x] += half[threadIdx.x] + half[kTile + threadIdx.x];
  __syncthreads();
}

template <class T>
__global__ void __launch_bounds__(kThreads) chunk_grad(SequenceParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ ChunkGates chunk;
  __shared__ float d_source[kTile], d_mark[kTile], half[2 * kTile], reduce[kThreads / 32];
  using L = GradSmem<T>;
  T* base = reinterpret_cast<T*>(smem);
  T *Qp = base + L::kQ * kOperand, *Kp = base + L::kK * kOperand;
  T *V = base + L::kV * kOperand, *dH = base + L::kdH * kOperand;
  const tiles::Split<T> P = tiles::split_at(base + L::kP * kOperand, kOperand);  // P, then dA
  const tiles::Split<T> Cp = tiles::split_at(base + L::kC * kOperand, kOperand);
  const tiles::Split<T> dCp = tiles::split_at(base + L::kdC * kOperand, kOperand);
  float* sA = reinterpret_cast<float*>(smem + L::operands);  // A, later E(τ, σ) = dG(τ, σ) Π_{σ<r<τ} T_r
  float* sdP = sA + kTile * kLdF;                             // dP, later dG = dP ∘ A
  float* rows = sdP + kTile * kLdF;                           // row prefixes of dT's G sums
  const int c = blockIdx.x, bh = blockIdx.y;
  const int S = p.dims.S, DQK = p.dims.DQK, DV = p.dims.DV;
  const std::int64_t qk = std::int64_t(bh) * S * DQK, vh = std::int64_t(bh) * S * DV;
  const T *q = static_cast<const T*>(p.q) + qk, *k = static_cast<const T*>(p.k) + qk;
  const T *v = static_cast<const T*>(p.v) + vh, *dh = static_cast<const T*>(p.dh) + vh;
  const float *C = state_of(p.states, p, bh, c), *dC = state_of(p.dstates, p, bh, c);
  chunk.load(p, bh, c);
  const int t0 = chunk.t0, len = chunk.len;
  if (threadIdx.x < kTile) d_source[threadIdx.x] = 0.f, d_mark[threadIdx.x] = 0.f;

  // The transition's gradient Σ dC ∘ C.
  float part = 0.f;
  for (std::int64_t e = threadIdx.x; e < std::int64_t(DQK) * DV; e += kThreads) part += dC[e] * C[e];
  const float d_transition = block_sum(part, reduce);

  // A = Q Kᵀ; P = G ∘ A + diag(D ∘ A) as an operand.
  {
    Acc A;
    tiles::zero(A);
    for (int piece = 0; piece < DQK; piece += kTile) {
      load(Qp, q, DQK, t0, piece, S);
      load(Kp, k, DQK, t0, piece, S);
      __syncthreads();
      tiles::gemm<true, false, kTile>(A, Qp, kLd, Kp, kLd);
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < kTR; ++i)
#pragma unroll
      for (int j = 0; j < kTC; ++j) {
        const int r = tile_row(i), s = tile_col(j);
        sA[r * kLdF + s] = A[i][j];
        const float g = r >= len ? 0.f : s < r ? chunk.G(r, s) : s == r ? chunk.D[r] : 0.f;
        P.set(r * kLd + s, g * A[i][j]);
      }
  }

  // Pass 1, over DV: dP, dv, and the source and mark gradients.
  Acc dP;
  tiles::zero(dP);
  for (int j0 = 0; j0 < DV; j0 += kTile) {
    Acc KdC, QC;
    tiles::zero(KdC);
    tiles::zero(QC);
    for (int piece = 0; piece < DQK; piece += kTile) {
      load(Qp, q, DQK, t0, piece, S);
      load(Kp, k, DQK, t0, piece, S);
      load(Cp, C, DV, piece, j0, DQK);
      load(dCp, dC, DV, piece, j0, DQK);
      __syncthreads();
      tiles::gemm<true, true, kTile>(QC, Qp, kLd, Cp, kLd);
      tiles::gemm<true, true, kTile>(KdC, Kp, kLd, dCp, kLd);
      __syncthreads();
    }
    load(V, v, DV, t0, j0, S);
    load(dH, dh, DV, t0, j0, S);
    __syncthreads();
    tiles::gemm<true, false, kTile>(dP, dH, kLd, V, kLd);
    Acc PdH;
    tiles::zero(PdH);
    tiles::gemm<false, true, kTile>(PdH, P, kLd, dH, kLd);
    // dv = s Pᵀ dh + diag(source) K dC
#pragma unroll
    for (int i = 0; i < kTR; ++i)
#pragma unroll
      for (int j = 0; j < kTC; ++j) PdH[i][j] = p.scale * PdH[i][j] + chunk.source[tile_row(i)] * KdC[i][j];
    store(static_cast<T*>(p.dv) + vh, DV, t0, j0, S, PdH);
    // source_σ gets (K dC)_σ · v_σ, mark_τ gets s dh_τ · (Q C)_τ.
    Acc Vt, dHt;
#pragma unroll
    for (int i = 0; i < kTR; ++i)
#pragma unroll
      for (int j = 0; j < kTC; ++j) {
        const int e = tile_row(i) * kLd + tile_col(j);
        Vt[i][j] = to_float(V[e]), dHt[i][j] = p.scale * to_float(dH[e]);
      }
    add_row_products(KdC, Vt, half, d_source, len);
    add_row_products(QC, dHt, half, d_mark, len);
  }

  // dP (with s), dD; dA as an operand (in P's place); dG = dP ∘ A and E = dG Π T for the gates.
#pragma unroll
  for (int i = 0; i < kTR; ++i)
#pragma unroll
    for (int j = 0; j < kTC; ++j) {
      const int r = tile_row(i), s = tile_col(j);
      const float dp = r < len && s <= r ? p.scale * dP[i][j] : 0.f;
      const float a = sA[r * kLdF + s];
      if (s == r && r < len) p.dD[std::int64_t(bh) * S + t0 + r] = dp * a;
      P.set(r * kLd + s, s < r ? dp * chunk.G(r, s) : s == r ? dp * chunk.D[r] : 0.f);
      const float dg = s < r ? dp * a : 0.f;
      sdP[r * kLdF + s] = dg;
      sA[r * kLdF + s] = s < r ? dg * chunk.prefix.product(s, r - 1) : 0.f;
    }
  __syncthreads();

  // Pass 2, over DQK: dq = dA K + diag(s mark) dh Cᵀ, dk = dAᵀ Q + diag(source) V dCᵀ.
  for (int piece = 0; piece < DQK; piece += kTile) {
    load(Qp, q, DQK, t0, piece, S);
    load(Kp, k, DQK, t0, piece, S);
    __syncthreads();
    Acc dq, dk, dhC, VdC;
    tiles::zero(dq);
    tiles::zero(dk);
    tiles::zero(dhC);
    tiles::zero(VdC);
    tiles::gemm<true, true, kTile>(dq, P, kLd, Kp, kLd);
    tiles::gemm<false, true, kTile>(dk, P, kLd, Qp, kLd);
    for (int j0 = 0; j0 < DV; j0 += kTile) {
      __syncthreads();
      load(V, v, DV, t0, j0, S);
      load(dH, dh, DV, t0, j0, S);
      load(Cp, C, DV, piece, j0, DQK);
      load(dCp, dC, DV, piece, j0, DQK);
      __syncthreads();
      tiles::gemm<true, false, kTile>(dhC, dH, kLd, Cp, kLd);
      tiles::gemm<true, false, kTile>(VdC, V, kLd, dCp, kLd);
    }
#pragma unroll
    for (int i = 0; i < kTR; ++i)
#pragma unroll
      for (int j = 0; j < kTC; ++j) {
        const int r = tile_row(i);
        dq[i][j] += p.scale * chunk.mark[r] * dhC[i][j];
        dk[i][j] += chunk.source[r] * VdC[i][j];
      }
    store(static_cast<T*>(p.dq) + qk, DQK, t0, piece, S, dq);
    store(static_cast<T*>(p.dk) + qk, DQK, t0, piece, S, dk);
    __syncthreads();
  }

  // The gates (reference chunk_block_prefix_backward), thread r for token r:
  //   dS_r = d_source_r Π_{r'>r} T + Σ_{τ>r} M_τ E(τ, r),  dM_r = d_mark_r Π_{r'<r} T + Σ_{σ<r} S_σ E(r, σ)
  //   dT_r = (w_transition + Σ_{σ<r} w_source_σ + Σ_{τ>r} w_mark_τ + Σ_{τ>r} Σ_{σ<r} w_G(τ, σ)) / T_r
  // with w = gradient × value of each aggregate (w_G(τ, σ) = M_τ S_σ E(τ, σ)); where |T_r| is tiny the
  // products without T_r, summed directly.
  const ChunkPrefix& pre = chunk.prefix;
  const int r = threadIdx.x;
  if (r < len) {  // each row's running sums over σ < r' of w_G, for every r' (rows[τ][r'])
    float run = 0.f;
    for (int s = 0; s < len; ++s) {
      rows[r * kLdF + s] = run;
      run += chunk.M[r] * chunk.S[s] * sA[r * kLdF + s];
    }
  }
  __syncthreads();
  if (r < len) {
    float dS = d_source[r] * pre.product(r, len - 1), dM = d_mark[r] * pre.product(-1, r - 1);
    for (int tau = r + 1; tau < len; ++tau) dS += chunk.M[tau] * sA[tau * kLdF + r];
    for (int s = 0; s < r; ++s) dM += chunk.S[s] * sA[r * kLdF + s];
    const float t = chunk.T[r];
    float dT;
    if (fabsf(t) >= 1e-30f) {
      float sum = d_transition * chunk.transition;
      for (int s = 0; s < r; ++s) sum += d_source[s] * chunk.source[s];
      for (int tau = r + 1; tau < len; ++tau) sum += d_mark[tau] * chunk.mark[tau] + rows[tau * kLdF + r];
      dT = sum / t;
    } else {
      const auto without = [&](int a, int b) { return pre.product(a, r - 1) * pre.product(r, b); };
      dT = d_transition * without(-1, len - 1);
      for (int s = 0; s < r; ++s) dT += d_source[s] * chunk.S[s] * without(s, len - 1);
      for (int tau = r + 1; tau < len; ++tau) {
        dT += d_mark[tau] * chunk.M[tau] * without(-1, tau - 1);
        for (int s = 0; s < r; ++s) dT += sdP[tau * kLdF + s] * chunk.M[tau] * chunk.S[s] * without(s, tau - 1);
      }
    }
    const std::int64_t e = std::int64_t(bh) * S + t0 + r;
    p.dS[e] = dS, p.dM[e] = dM, p.dT[e] = dT;
  }
}

template <class T>
void launch_forward(const SequenceParams& p, cudaStream_t stream, bool output) {
  const int nc = chunks(p.dims.S), BH = p.dims.B * p.dims.NH;
  const unsigned dv_tiles = (p.dims.DV + kTile - 1) / kTile, dqk_tiles = (p.dims.DQK + kTile - 1) / kTile;
  const std::size_t scan_bytes = std::size_t(kSplit<T> + 1) * kOperand * sizeof(T);
  chunk_scan<T, kStates><<<dim3(dv_tiles, dqk_tiles, BH), kThreads, scan_bytes, stream>>>(p);
  check_cuda(cudaGetLastError(), "pLSTM sequence: state scan");
  if (!output) return;
  check_cuda(cudaFuncSetAttribute(chunk_output<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(OutputSmem<T>::bytes)),
             "pLSTM sequence forward: shared memory");
  chunk_output<T><<<dim3(nc, dv_tiles, BH), kThreads, OutputSmem<T>::bytes, stream>>>(p);
  check_cuda(cudaGetLastError(), "pLSTM sequence forward");
}

template <class T>
void launch_backward(const SequenceParams& p, cudaStream_t stream) {
  launch_forward<T>(p, stream, false);
  const int nc = chunks(p.dims.S), BH = p.dims.B * p.dims.NH;
  const unsigned dv_tiles = (p.dims.DV + kTile - 1) / kTile, dqk_tiles = (p.dims.DQK + kTile - 1) / kTile;
  const std::size_t scan_bytes = std::size_t(kSplit<T> + 1) * kOperand * sizeof(T);
  chunk_scan<T, kAdjoints><<<dim3(dv_tiles, dqk_tiles, BH), kThreads, scan_bytes, stream>>>(p);
  check_cuda(cudaGetLastError(), "pLSTM sequence: adjoint scan");
  check_cuda(cudaFuncSetAttribute(chunk_grad<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(GradSmem<T>::bytes)),
             "pLSTM sequence backward: shared memory");
  chunk_grad<T><<<dim3(nc, BH), kThreads, GradSmem<T>::bytes, stream>>>(p);
  check_cuda(cudaGetLastError(), "pLSTM sequence backward");
}

}  // namespace

std::int64_t sequence_state_floats(const SequenceDims& d) {
  return d.B * d.NH * chunks(static_cast<int>(d.S)) * d.DQK * d.DV;
}

void run_sequence_forward(const SequenceParams& p, DType dtype, cudaStream_t stream) {
  if (dtype == DType::float32) launch_forward<float>(p, stream, true);
  else launch_forward<__nv_bfloat16>(p, stream, true);
}

void run_sequence_backward(const SequenceParams& p, DType dtype, cudaStream_t stream) {
  if (dtype == DType::float32) launch_backward<float>(p, stream);
  else launch_backward<__nv_bfloat16>(p, stream);
}

}  // namespace flashlstm::cuda::plstm::detail
