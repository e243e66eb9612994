// Device building blocks shared by the mLSTM kernels: element conversion, the gate formulas, and
// the 64 x 64 output tile every kernel computes with 256 threads (8 warps).
//
// The tile's layout is that of the tensor cores' m16n8k16 accumulators: warp w owns rows
// 16·(w mod 4).. and columns 32·(w / 4).. as four 16 x 8 pieces; a thread holds 2 x 8 elements,
// acc[i][j] at row tile_row(i), column tile_col(j). gemm() multiplies shared-memory operand tiles of
// the input type O: bf16 operands go through mma.sync (bf16 in, float32 accumulate), float32
// operands through FMA in the same layout, so every kernel has one code path for both dtypes.
//
// Operands live in shared memory with row stride = columns + 8 (16-byte rows for ldmatrix, and no
// bank conflicts), 16-byte aligned. gemm() reads A as (row, k) and B as
// (k, col) either directly ("row-major") or transposed, so a product with a transposed factor
// needs no separate transpose. Operands computed in float32 (states, weights, P, dA) are split for
// bf16 into hi + lo = bf16(x) + bf16(x - hi) and multiplied twice, which keeps float32-like
// accuracy (~2^-17) where plain bf16 rounding (2^-9) would dominate the error.
//
// Shape comments on tiles and accumulators are CuTe layouts in elements: `(64,32):(40,1)` is 64
// rows of 32 columns with a row stride of 40; `×2` marks a hi/lo pair of planes (one plane for
// float32). An `Acc` is always a (64,64) tile in the accumulator layout above.
#pragma once

#include "cuda/device.cuh"

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

namespace flashlstm::cuda::mlstm::detail {

constexpr int kThreads = 256;
constexpr int kTile = 64;  // rows and columns of every output tile
constexpr int kStep = 32;  // depth of one shared-memory operand stage
constexpr int kTR = 2;     // rows of the tile one thread holds
constexpr int stride(int columns) { return columns + 8; }  // row stride of an operand tile
constexpr int kTC = 8;     // columns of the tile one thread holds

// float32-sourced operands need a second (lo) tile for bf16 inputs, none for float32 inputs.
template <class O>
constexpr int kSplit = std::is_same_v<O, float> ? 1 : 2;

using flashlstm::cuda::from_float;
using flashlstm::cuda::logsigmoid;
using flashlstm::cuda::sigmoid;
using flashlstm::cuda::to_float;

// Gate pre-activations and their gradients are of the input type T, or float32 (`f32`) where bf16
// inputs come with float32 gates.
template <class T>
__device__ __forceinline__ float load_gate(const void* base, std::int64_t i, bool f32) {
  return f32 ? static_cast<const float*>(base)[i] : to_float(static_cast<const T*>(base)[i]);
}
template <class T>
__device__ __forceinline__ void store_gate(void* base, std::int64_t i, bool f32, float x) {
  if (f32) static_cast<float*>(base)[i] = x;
  else static_cast<T*>(base)[i] = from_float<T>(x);
}

// The readout's denominator max(|den|, floor) + eps, NaN when den is NaN as in the reference
// (fmaxf would return the floor and hide it).
__device__ __forceinline__ float readout_dhat(float den, float floor, float eps) {
  return isnan(den) ? den : fmaxf(fabsf(den), floor) + eps;
}

// The thread's place in the tile.
__device__ __forceinline__ int lane_id() { return threadIdx.x % 32; }
__device__ __forceinline__ int warp_id() { return threadIdx.x / 32; }
__device__ __forceinline__ int tile_row(int i) { return 16 * (warp_id() % 4) + lane_id() / 4 + 8 * i; }
__device__ __forceinline__ int tile_col(int j) { return 32 * (warp_id() / 4) + 8 * (j / 2) + 2 * (lane_id() % 4) + j % 2; }

using Acc = float[kTR][kTC];

__device__ __forceinline__ void zero(Acc& acc) {
#pragma unroll
  for (int i = 0; i < kTR; ++i)
#pragma unroll
    for (int j = 0; j < kTC; ++j) acc[i][j] = 0.f;
}


// acc += A B over K (a multiple of 16): A(r, k) = A[r * lda + k] (kARowMajor) or A[k * lda + r];
// B(k, c) = B[k * ldb + c] (kBRowMajor) or B[c * ldb + k].
template <bool kARowMajor, bool kBRowMajor, int K>
__device__ __forceinline__ void gemm(Acc& acc, const float* A, int lda, const float* B, int ldb) {
#pragma unroll 4
  for (int k = 0; k < K; ++k) {
    float a[kTR], b[kTC];
#pragma unroll
    for (int i = 0; i < kTR; ++i) a[i] = kARowMajor ? A[tile_row(i) * lda + k] : A[k * lda + tile_row(i)];
#pragma unroll
    for (int j = 0; j < kTC; ++j) b[j] = kBRowMajor ? B[k * ldb + tile_col(j)] : B[tile_col(j) * ldb + k];
#pragma unroll
    for (int i = 0; i < kTR; ++i)
#pragma unroll
      for (int j = 0; j < kTC; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
  }
}

// 8 x 8 bf16 matrices from shared memory into mma fragments (four at once); `trans` transposes
// each. Every lane passes the address of one 16-byte row.
template <bool kTrans>
__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], const __nv_bfloat16* row) {
  const auto addr = static_cast<std::uint32_t>(__cvta_generic_to_shared(row));
  if constexpr (kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

template <bool kARowMajor, bool kBRowMajor, int K>
__device__ __forceinline__ void gemm(Acc& acc, const __nv_bfloat16* A, int lda, const __nv_bfloat16* B, int ldb) {
  const int lane = lane_id(), m = lane / 8, j = lane % 8;
  const int r0 = 16 * (warp_id() % 4), c0 = 32 * (warp_id() / 4);
#pragma unroll
  for (int k0 = 0; k0 < K; k0 += 16) {
    // A fragment: matrices (rows 0-7 | 8-15) x (k 0-7 | 8-15), ordered rows-lo k-lo, rows-hi k-lo, ...
    std::uint32_t a[4];
    if constexpr (kARowMajor) ldmatrix_x4<false>(a, A + (r0 + lane % 16) * lda + k0 + (lane / 16) * 8);
    else ldmatrix_x4<true>(a, A + (k0 + (m / 2) * 8 + j) * lda + r0 + (m % 2) * 8);
#pragma unroll
    for (int np = 0; np < 2; ++np) {  // two 8-column pieces per load: (n-lo k-lo, n-lo k-hi, n-hi k-lo, n-hi k-hi)
      const int n0 = c0 + 16 * np;
      std::uint32_t b[4];
      if constexpr (kBRowMajor) ldmatrix_x4<true>(b, B + (k0 + (m % 2) * 8 + j) * ldb + n0 + (m / 2) * 8);
      else ldmatrix_x4<false>(b, B + (n0 + (m / 2) * 8 + j) * ldb + k0 + (m % 2) * 8);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int nt = 2 * np + h;
        float d[4] = {acc[0][2 * nt], acc[0][2 * nt + 1], acc[1][2 * nt], acc[1][2 * nt + 1]};
        mma_bf16(d, a, b[2 * h], b[2 * h + 1]);
        acc[0][2 * nt] = d[0], acc[0][2 * nt + 1] = d[1], acc[1][2 * nt] = d[2], acc[1][2 * nt + 1] = d[3];
      }
    }
  }
}

// Stores x0, x1 to g[e], g[e + 1] (the second only if `both`): one paired store where aligned, so
// that a warp writing accumulator pairs fills whole sectors twice as densely as element stores.
template <class U>
__device__ __forceinline__ void store_pair(U* g, std::int64_t e, bool both, float x0, float x1) {
  using Pair = std::conditional_t<std::is_same_v<U, float>, float2, __nv_bfloat162>;
  if (both && reinterpret_cast<std::uintptr_t>(g + e) % sizeof(Pair) == 0) {
    Pair pair;
    pair.x = from_float<U>(x0);
    pair.y = from_float<U>(x1);
    *reinterpret_cast<Pair*>(g + e) = pair;
  } else {
    g[e] = from_float<U>(x0);
    if (both) g[e + 1] = from_float<U>(x1);
  }
}

// A split operand: the hi tile, and the lo tile where the operand type needs one (else nullptr).
template <class O>
struct Split {
  O* hi;
  O* lo;
  __device__ float at(std::int64_t e) const { return lo ? to_float(hi[e]) + to_float(lo[e]) : to_float(hi[e]); }
  __device__ void set(std::int64_t e, float x) const {
    hi[e] = from_float<O>(x);
    if (lo) lo[e] = from_float<O>(x - to_float(hi[e]));
  }
  __device__ void set_pair(std::int64_t e, bool both, float x0, float x1) const {
    const float h0 = to_float(from_float<O>(x0)), h1 = to_float(from_float<O>(x1));
    store_pair(hi, e, both, h0, h1);
    if (lo) store_pair(lo, e, both, x0 - h0, x1 - h1);
  }
};
// A split operand over `base` (kSplit<O> tiles of `size` elements each).
template <class O>
__device__ __forceinline__ Split<O> split_at(O* base, int size) {
  return {base, kSplit<O> == 2 ? base + size : nullptr};
}

// acc += A B with A or B split.
template <bool kARowMajor, bool kBRowMajor, int K, class O>
__device__ __forceinline__ void gemm(Acc& acc, const Split<O>& A, int lda, const O* B, int ldb) {
  gemm<kARowMajor, kBRowMajor, K>(acc, A.hi, lda, B, ldb);
  if (A.lo) gemm<kARowMajor, kBRowMajor, K>(acc, A.lo, lda, B, ldb);
}
template <bool kARowMajor, bool kBRowMajor, int K, class O>
__device__ __forceinline__ void gemm(Acc& acc, const O* A, int lda, const Split<O>& B, int ldb) {
  gemm<kARowMajor, kBRowMajor, K>(acc, A, lda, B.hi, ldb);
  if (B.lo) gemm<kARowMajor, kBRowMajor, K>(acc, A, lda, B.lo, ldb);
}

// An operand's element e as float (a split operand: hi + lo).
template <class O>
__device__ __forceinline__ float value_at(const O* s, std::int64_t e) {
  return to_float(s[e]);
}
template <class O>
__device__ __forceinline__ float value_at(const Split<O>& s, std::int64_t e) {
  return s.at(e);
}

// The masks of a diagonal 64 x 64 tile (row, key within the tile): a row reads the keys up to it, and
// a key's gradient the rows from it on (masked_gemm).
struct CausalTile {
  __device__ bool operator()(int r, int s) const { return s <= r; }
};
struct AnticausalTile {
  __device__ bool operator()(int s, int r) const { return r >= s; }
};

// acc += A B over a K-deep tile of which only the entries mask(row, k) of A count — a causal tile of
// P or dA — so that a NaN or an infinity reaches only the rows the mask allows, as the recurrent form
// propagates it (0 × NaN would be NaN in the plain product, through a zero or through a masked entry
// scaled by a NaN). The plain product runs when both tiles are finite (one barrier to find out);
// otherwise an FMA loop over the mask. Every thread of the block must call it.
// kCheckA: A's masked entries may be non-finite too (a masked zero scaled by a NaN); otherwise they are
// zero by construction and only B is checked.
template <bool kARowMajor, bool kBRowMajor, int K, bool kCheckA, class AOp, class O, class Mask>
__device__ __forceinline__ void masked_gemm(Acc& acc, const AOp& A, int lda, const O* B, int ldb, Mask mask) {
  bool finite = true;
  for (int e = threadIdx.x; e < K * kTile; e += kThreads) {
    const int k = e / kTile, c = e % kTile;
    finite = finite && isfinite(to_float(kBRowMajor ? B[k * ldb + c] : B[c * ldb + k]));
    if constexpr (kCheckA) finite = finite && isfinite(value_at(A, kARowMajor ? c * lda + k : k * lda + c));
  }
  if (__syncthreads_and(finite)) return gemm<kARowMajor, kBRowMajor, K>(acc, A, lda, B, ldb);
#pragma unroll
  for (int i = 0; i < kTR; ++i)
    for (int k = 0; k < K; ++k) {
      const int r = tile_row(i);
      if (!mask(r, k)) continue;
      const float a = value_at(A, kARowMajor ? r * lda + k : k * lda + r);
#pragma unroll
      for (int j = 0; j < kTC; ++j) {
        const int c = tile_col(j);
        acc[i][j] = fmaf(a, to_float(kBRowMajor ? B[k * ldb + c] : B[c * ldb + k]), acc[i][j]);
      }
    }
}

// The element (r, c) of a global row-major matrix, 0 outside r < r_end, c < c_end.
template <class U>
__device__ __forceinline__ float element(const U* g, std::int64_t ld, int r, int c, int r_end, int c_end) {
  return (r < r_end && c < c_end) ? to_float(g[static_cast<std::int64_t>(r) * ld + c]) : 0.f;
}

// Calls put(i, j, x) for each element of the R x C tile at (r0, c0) of a global matrix (zero outside
// r_end, c_end), 16 bytes per load where the tile is whole and aligned.
template <int R, int C, class U, class Put>
__device__ __forceinline__ void for_tile(const U* g, std::int64_t ld, int r0, int c0, int r_end, int c_end, Put put) {
  constexpr int V = 16 / sizeof(U);
  const bool vector = c0 + C <= c_end && ld % V == 0 && c0 % V == 0 && reinterpret_cast<std::uintptr_t>(g) % 16 == 0;
  if (vector) {
    for (int e = threadIdx.x; e < R * C / V; e += kThreads) {
      const int i = e / (C / V), j = (e % (C / V)) * V, r = r0 + i;
      union {
        uint4 raw;
        U x[V];
      } u;
      u.raw = r < r_end ? *reinterpret_cast<const uint4*>(g + static_cast<std::int64_t>(r) * ld + c0 + j) : uint4{0, 0, 0, 0};
#pragma unroll
      for (int v = 0; v < V; ++v) put(i, j + v, r < r_end ? to_float(u.x[v]) : 0.f);
    }
  } else {
    for (int e = threadIdx.x; e < R * C; e += kThreads) {
      const int i = e / C, j = e % C;
      put(i, j, element(g, ld, r0 + i, c0 + j, r_end, c_end));
    }
  }
}

// put(i, j, x) for an operand tile in shared memory (row stride C + 8): s[i][j] = x, times
// row_scale[i] where given; for a split tile both halves.
template <int C, class O>
__device__ __forceinline__ auto tile_put(O* s, const float* row_scale = nullptr) {
  return [=](int i, int j, float x) { s[i * stride(C) + j] = from_float<O>(row_scale ? x * row_scale[i] : x); };
}
template <int C, class O>
__device__ __forceinline__ auto tile_put(const Split<O>& s, const float* row_scale = nullptr) {
  return [=](int i, int j, float x) { s.set(i * stride(C) + j, row_scale ? x * row_scale[i] : x); };
}

// s (an operand tile or a Split) = the tile of g at (r0, c0), times row_scale[i] where given,
// read synchronously.
template <int R, int C, class S, class U>
__device__ __forceinline__ void load_tile(S s, const U* g, std::int64_t ld, int r0, int c0, int r_end, int c_end,
                                          const float* row_scale = nullptr) {
  for_tile<R, C>(g, ld, r0, c0, r_end, c_end, tile_put<C>(s, row_scale));
}

using flashlstm::cuda::cp_async16;
using flashlstm::cuda::cp_async_commit;
using flashlstm::cuda::cp_async_wait;

// The R x C tile of a global matrix at (r0, c0) (zero outside r_end, c_end), loaded asynchronously
// in 16-byte pieces: issue() starts the copies, finish() — once they have arrived — completes the
// tile. Either straight into an operand tile of the same type (row stride C + 8), or through a
// staging area (kRawBytes) for tiles transformed on the way (finish calls put(i, j, x)); each
// thread finishes exactly the pieces it issued. A tile that is not whole and 16-byte aligned
// (masked columns, odd strides) is read synchronously by finish() instead.
template <int R, int C, class U>
struct AsyncTile {
  static constexpr int kV = 16 / sizeof(U), kRawBytes = R * C * sizeof(U);
  const U* g;
  std::int64_t ld;
  int r0, c0, r_end, c_end;

  __device__ bool vector() const {
    return c0 + C <= c_end && ld % kV == 0 && c0 % kV == 0 && reinterpret_cast<std::uintptr_t>(g) % 16 == 0;
  }
  // Calls f(e, i, j, source, valid) for each 16-byte piece e (row i, columns j..) of this thread.
  template <class F>
  __device__ void pieces(F f) const {
    for (int e = threadIdx.x; e < R * C / kV; e += kThreads) {
      const int i = e / (C / kV), j = (e % (C / kV)) * kV, r = r0 + i;
      f(e, i, j, r < r_end ? g + static_cast<std::int64_t>(r) * ld + c0 + j : g, r < r_end);
    }
  }
  __device__ void issue(U* s) const {
    if (vector()) pieces([&](int, int i, int j, const U* src, bool valid) { cp_async16(s + i * stride(C) + j, src, valid); });
  }
  __device__ void finish(U* s) const {
    if (!vector()) for_tile<R, C>(g, ld, r0, c0, r_end, c_end, tile_put<C>(s));
  }
  __device__ void issue_raw(unsigned char* raw) const {
    if (vector()) pieces([&](int e, int, int, const U* src, bool valid) { cp_async16(raw + 16 * e, src, valid); });
  }
  template <class Put>
  __device__ void finish_raw(const unsigned char* raw, Put put) const {
    if (!vector()) return for_tile<R, C>(g, ld, r0, c0, r_end, c_end, put);
    pieces([&](int e, int i, int j, const U*, bool) {
      union {
        uint4 raw;
        U x[kV];
      } u;
      u.raw = reinterpret_cast<const uint4*>(raw)[e];
#pragma unroll
      for (int v = 0; v < kV; ++v) put(i, j + v, to_float(u.x[v]));
    });
  }
};

// A double-buffered software pipeline of `steps` steps: issue(i, stage) starts the asynchronous
// copies of step i into the operand tiles of `stage` (0 or 1) while step i - 1 computes;
// finish(i, stage) completes what is not copied asynchronously (masked tiles, transformed tiles);
// compute(i, stage) multiplies. Two barriers a step (the tiles are complete; the stage is free
// again); ends with a barrier, so every stage is free afterwards.
template <class Issue, class Finish, class Compute>
__device__ __forceinline__ void pipeline(int steps, Issue issue, Finish finish, Compute compute) {
  issue(0, 0);
  cp_async_commit();
  for (int i = 0; i < steps; ++i) {
    if (i + 1 < steps) issue(i + 1, (i + 1) % 2);
    cp_async_commit();  // an empty group after the last step
    cp_async_wait<1>();
    finish(i, i % 2);
    __syncthreads();
    compute(i, i % 2);
    __syncthreads();
  }
}

// Sum over the 4 threads of a warp that hold the same rows (the other half of a row lives in warp
// w ± 4: callers add both halves atomically). row_leader() is the one thread of the 4 that adds.
template <class F>
__device__ __forceinline__ F row_sum(F x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x;
}
__device__ __forceinline__ bool row_leader() { return lane_id() % 4 == 0; }

}  // namespace flashlstm::cuda::mlstm::detail
