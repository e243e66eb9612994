// Where a row of the chunkwise mLSTM (one head of one sequence: Params) lies in the inputs and in
// the workspace, for one batch and for packed sequences alike, so that every kernel indexes through
// the same four offsets and never asks which layout it runs on. Plain C++ as well as device code:
// the tests check the layout on the host (tests/test_cuda_mlstm.cpp).
#pragma once

#include "cuda/mlstm/params.hpp"

#include <cstdint>

#ifdef __CUDACC__
#define FLASHLSTM_ROWS_FN __host__ __device__ __forceinline__
#else
#define FLASHLSTM_ROWS_FN inline
#endif

namespace flashlstm::cuda::mlstm::detail {

struct Row {
  std::int64_t in0;     // its token 0 in q, k, v, h, the gates and their gradients (in tokens)
  std::int64_t tb0;     // its token 0 in the per-token workspace
  std::int64_t chunk0;  // its chunk 0 in the per-chunk workspace
  std::int64_t state0;  // the state entering its chunk 0 in the per-state workspace (nc + 1 entries)
  int S, nc;            // its tokens and its chunks of L tokens
};

FLASHLSTM_ROWS_FN Row row_of(const Params& p, int bh) {
  if (!p.cu_seqlens) {
    const std::int64_t r = bh;
    return {r * p.seq_stride, r * p.S, r * p.nc, r * (p.nc + 1), p.S, p.nc};
  }
  const int i = bh / p.NH, h = bh % p.NH;
  const std::int64_t t0 = p.cu_seqlens[i], c0 = p.chunk_offsets[i];
  return {h * p.seq_stride + t0,
          h * static_cast<std::int64_t>(p.S) + t0 - p.cu_seqlens[0],
          h * p.total_chunks + c0,
          h * (p.total_chunks + p.N) + c0 + i,
          static_cast<int>(p.cu_seqlens[i + 1] - t0),
          static_cast<int>(p.chunk_offsets[i + 1] - c0)};
}

// The row a block that walks a whole row takes: the longest rows first where Params orders them.
FLASHLSTM_ROWS_FN int ordered_row(const Params& p, int block) {
  return p.row_order ? static_cast<int>(p.row_order[block]) : block;
}

// The sequence holding position x of `offsets` (cu_seqlens or chunk_offsets, N + 1 entries, x below
// the last): the last i < N with offsets[i] <= x (an empty sequence shares its offset with the
// next one, which then wins).
FLASHLSTM_ROWS_FN int sequence_at(const std::int64_t* offsets, int N, std::int64_t x) {
  int lo = 0, hi = N - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= x) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// The row of entry f of the per-token workspace and the token's index in it.
FLASHLSTM_ROWS_FN void token_at(const Params& p, std::int64_t f, int& bh, int& t) {
  if (!p.cu_seqlens) {
    bh = static_cast<int>(f / p.S), t = static_cast<int>(f % p.S);
    return;
  }
  const int h = static_cast<int>(f / p.S);
  const std::int64_t g = f % p.S + p.cu_seqlens[0];
  const int i = sequence_at(p.cu_seqlens, p.N, g);
  bh = i * p.NH + h, t = static_cast<int>(g - p.cu_seqlens[i]);
}

// The row of entry s of the per-chunk workspace and the chunk's index in it.
FLASHLSTM_ROWS_FN void chunk_at(const Params& p, std::int64_t s, int& bh, int& k) {
  if (!p.cu_seqlens) {
    bh = static_cast<int>(s / p.nc), k = static_cast<int>(s % p.nc);
    return;
  }
  const int h = static_cast<int>(s / p.total_chunks);
  const std::int64_t c = s % p.total_chunks;
  const int i = sequence_at(p.chunk_offsets, p.N, c);
  bh = i * p.NH + h, k = static_cast<int>(c - p.chunk_offsets[i]);
}

}  // namespace flashlstm::cuda::mlstm::detail

#undef FLASHLSTM_ROWS_FN
