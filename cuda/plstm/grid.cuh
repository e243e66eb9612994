// Device pieces shared by the pLSTM grid kernels (grid.cu, grid_backward.cu): the gate order, the
// orientation's frame, the tile sizes.
#pragma once

#include "cuda/device.cuh"
#include "cuda/mlstm/tiles.cuh"
#include "cuda/plstm/params.hpp"

#include <cstddef>
#include <cstdint>

namespace flashlstm::cuda::plstm::detail {

namespace tiles = flashlstm::cuda::mlstm::detail;
using flashlstm::cuda::cp_async_commit;
using flashlstm::cuda::cp_async_wait;
using tiles::Acc;
using tiles::kSplit;
using tiles::kTC;
using tiles::kThreads;
using tiles::kTile;
using tiles::kTR;
using tiles::stride;
using tiles::tile_col;
using tiles::tile_row;

enum Gate { kSr, kSd, kTrl, kTru, kTdu, kTdl, kMl, kMu, kD };

constexpr int kPaths = 64;  // threads of a dynamic programme: one per node of the block's tile
constexpr int kLdG = tiles::kTile + 1;
constexpr std::size_t kMaxShared = 227 * 1024;

__host__ __device__ inline int padded_dqk(int DQK) { return (DQK + 15) / 16 * 16; }
__host__ __device__ inline std::size_t align16(std::size_t bytes) { return (bytes + 15) / 16 * 16; }

// An orientation's frame: frame (xf, yf) is the node (X-1-xf if flip_x else xf, Y-1-yf if flip_y
// else yf), where the orientation's gates are read. Positions run over the frame in raster order
// (forward: x ascending, then y ascending) or in reverse raster order (x descending, then y descending).
struct Frame {
  int X, Y;
  bool flip_x, flip_y;
  __device__ Frame(const GridParams& p, int o) : X(p.X), Y(p.Y), flip_x((o & 1) != 0), flip_y((o & 2) != 0) {}
  __device__ int node(int xf, int yf) const { return (flip_x ? X - 1 - xf : xf) * Y + (flip_y ? Y - 1 - yf : yf); }
  __device__ int xf_of_node(int n) const { return flip_x ? X - 1 - n / Y : n / Y; }
  __device__ int yf_of_node(int n) const { return flip_y ? Y - 1 - n % Y : n % Y; }
  // The frame column range of the node tile [n0, n1): its smallest and largest xf.
  __device__ int xf_min(int n0, int n1) const { return flip_x ? X - 1 - (n1 - 1) / Y : n0 / Y; }
  __device__ int xf_max(int n0, int n1) const { return flip_x ? X - 1 - n0 / Y : (n1 - 1) / Y; }
};

// Zeroes `count` elements of a shared-memory tile, by all threads (the caller synchronises).
template <class T>
__device__ void zero_tile(T* to, int count) {
  for (int e = threadIdx.x; e < count; e += tiles::kThreads) to[e] = from_float<T>(0.f);
}

// Copies the rows nodes(r) (r < 64; -1: a zero row) of the row-major (N, D) matrix `from`, columns
// [c0, c0 + cols), into the operand tile `to` (row stride ld), by threads [first, kThreads):
// asynchronous 16-byte copies (cp.async; the caller commits and waits) where the rows are 16-byte
// aligned, element by element otherwise. Columns at or beyond D are left alone (zeroed once by the
// caller). cols is a multiple of 16 bytes' worth of elements.
template <class T, class Node>
__device__ void copy_rows(T* to, int ld, const T* from, int D, int c0, int cols, Node nodes, int first) {
  constexpr int V = 16 / sizeof(T);
  const int end = min(cols, D - c0);
  if (end <= 0) return;
  if (D % V == 0 && c0 % V == 0 && reinterpret_cast<std::uintptr_t>(from) % 16 == 0) {
    const int pieces = end / V, threads = tiles::kThreads - first, t = threadIdx.x - first;
    if (first == 0 && pieces <= threads && (pieces & (pieces - 1)) == 0) {
      // A power of two of pieces per row (every DQK, DV of 8·2^k elements): the thread's piece is the
      // same in every row it copies, and rows are a shift apart, so no division per piece.
      const int shift = __ffs(pieces) - 1, c = (t & (pieces - 1)) * V;
      for (int r = t >> shift; r < tiles::kTile; r += threads >> shift) {
        const int n = nodes(r);
        cp_async16(to + r * ld + c, from + (n >= 0 ? std::int64_t(n) * D + c0 + c : 0), n >= 0);
      }
      return;
    }
    for (int e = t; e < tiles::kTile * pieces; e += threads) {
      const int r = e / pieces, c = (e % pieces) * V, n = nodes(r);
      cp_async16(to + r * ld + c, from + (n >= 0 ? std::int64_t(n) * D + c0 + c : 0), n >= 0);
    }
  } else {
    for (int e = threadIdx.x - first; e < tiles::kTile * end; e += tiles::kThreads - first) {
      const int r = e / end, c = e % end, n = nodes(r);
      to[r * ld + c] = n >= 0 ? from[std::int64_t(n) * D + c0 + c] : from_float<T>(0.f);
    }
  }
}

}  // namespace flashlstm::cuda::plstm::detail
