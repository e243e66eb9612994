// The exact backward of the pLSTM on 2-D grids on the GPU (cuda/plstm/plstm.hpp) where the chunk-map
// kernels (grid_maps.cu) do not fit. With
// G(t, n) the gating of the forward (grid.cu), S(t, n) = q_t · k_n, E(t, n) = dh_t · v_n and
// dG(t, n) = s S E:
//
//   dq_t = s Σ_n G E k_n        dk_n = s Σ_t G E q_t        dv_n = s Σ_t G S dh_t
//   dS^r_n, dS^d_n = Σ_t dG(t, n) G^(r), G^(d)   (the gating through n's right / down edge, S_n left out)
//   dM^l_t, dM^u_t = Σ_n dG(t, n) G^(l), G^(u)   (the gating into t's left / top edge, M_t left out)
//   dD_t = dG(t, t)
//   dT at node m: Σ_t Z_t(m's in-edge) W_t(m's out-edge), Z_t = Σ_n dG(t, n) A_n the dG-weighted
//   forward weights of the sources, W_t the reverse weights to t (marks included)
//
// Three kernels, each one writer per value (no atomics: the gradients are deterministic):
//
//   grid_nodes_kernel<kQueries>  a block per (batch·head, 64 targets t, 64 columns of dq): the
//     forward's reverse dynamic programme with a channel per mark (G^(l), G^(u)), then the products
//     -> dq, dM^l, dM^u, dD;
//   grid_nodes_kernel<kKeys>     a block per (batch·head, 64 sources n, 64 columns of dk and dv): the
//     mirror image, a forward programme with a channel per source gate (G^(r), G^(d)) over the
//     targets in raster order -> dk, dv, dS^r, dS^d;
//   grid_transitions_kernel      a block per (batch·head, orientation), over its tiles of 64
//     targets, with the orientation's gates in shared memory where they fit: the reverse programme
//     once to keep its state every K columns (global scratch), then
//     per segment of K columns the reverse weights W again (shared memory) and the forward programme
//     of Z over the segment, with dG tiles from the tensor cores -> dT^rl, dT^ru, dT^du, dT^dl.
//
// tests/python/test_plstm_grid_kernel_order.py transcribes these schedules in numpy.
#include "cuda/plstm/grid.cuh"

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

namespace flashlstm::cuda::plstm::detail {
namespace {

__host__ __device__ inline int round64(int d) { return (d + 63) / 64 * 64; }

// Operand tiles of 64 rows and `width` columns (zero-padded to a multiple of 64), for the products.
struct Operands {
  int w1, w2;  // widths: round64(DQK), round64(DV)
  __host__ __device__ Operands(int DQK, int DV) : w1(round64(DQK)), w2(round64(DV)) {}
};

// ------------------------------------------------------------------------------------------------
// dq, dM, dD (kQueries) and dk, dv, dS (kKeys).

enum Role { kQueries, kKeys };

// The shared memory of a node-gradient block.
struct NodesLayout {
  std::size_t A1, A2, B1, B2, P, Gc, gates, rows, diag, col, bytes;
  __host__ __device__ NodesLayout(int DQK, int DV, int Y, std::size_t element) {
    const Operands w(DQK, DV);
    A1 = 0;                                                       // the tile's rows: q (queries) or k (keys)
    A2 = A1 + align16(kTile * stride(w.w1) * element);            // dh or v
    B1 = A2 + align16(kTile * stride(w.w2) * element);            // the walked block's rows: k or q
    B2 = B1 + align16(kTile * stride(w.w1) * element);            // v or dh
    P = B2 + align16(kTile * stride(w.w2) * element);             // [kSplit][64][72]
    Gc = P + align16((element == 4 ? 1 : 2) * kTile * stride(kTile) * element);  // [2][64][65] float
    gates = Gc + align16(2 * kPaths * kLdG * sizeof(float));      // [2][6][64] float
    rows = gates + align16(2 * 6 * kTile * sizeof(float));        // [3][64] float: the rows' own gates
    diag = rows + align16(3 * kTile * sizeof(float));             // [64] int
    col = diag + align16(kTile * sizeof(int));                    // [2][Y][64] float
    bytes = col + align16(2 * std::size_t(Y) * kPaths * sizeof(float));
  }
};

// Per role: the gates the programme reads at each walked node (staged), and the rows' own gates (the
// two that weight the channels, then D).
//   queries: walked sources S^r, S^d, T^rl, T^dl, T^du, T^ru; own (targets) M^l, M^u, D
//   keys:    walked targets M^l, M^u, T^rl, T^ru, T^du, T^dl; own (sources) S^r, S^d, D
template <Role R>
__device__ Gate staged_gate(int i) {
  constexpr Gate queries[6] = {kSr, kSd, kTrl, kTdl, kTdu, kTru}, keys[6] = {kMl, kMu, kTrl, kTru, kTdu, kTdl};
  return R == kQueries ? queries[i] : keys[i];
}
template <Role R>
__device__ Gate own_gate(int i) {
  constexpr Gate queries[3] = {kMl, kMu, kD}, keys[3] = {kSr, kSd, kD};
  return R == kQueries ? queries[i] : keys[i];
}

template <class T, Role R>
__global__ void __launch_bounds__(kThreads) grid_nodes_kernel(GridBackwardParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int N = p.X * p.Y, tiles_per_head = (N + kTile - 1) / kTile;
  const int bh = blockIdx.x / tiles_per_head, n0 = (blockIdx.x % tiles_per_head) * kTile, n1 = min(n0 + kTile, N);
  const int c0 = blockIdx.y * kTile;  // the block's 64 output columns
  const Operands w(p.DQK, p.DV);
  const int ld1 = stride(w.w1), ld2 = stride(w.w2), ldp = stride(kTile);
  const NodesLayout layout(p.DQK, p.DV, p.Y, sizeof(T));
  T* A1 = reinterpret_cast<T*>(smem + layout.A1);
  T* A2 = reinterpret_cast<T*>(smem + layout.A2);
  T* B1 = reinterpret_cast<T*>(smem + layout.B1);
  T* B2 = reinterpret_cast<T*>(smem + layout.B2);
  const tiles::Split<T> P = tiles::split_at(reinterpret_cast<T*>(smem + layout.P), kTile * ldp);
  float* Gc = reinterpret_cast<float*>(smem + layout.Gc);        // [2][64][kLdG]: the two channels
  float* staged = reinterpret_cast<float*>(smem + layout.gates);  // [2][6][64]
  float* own = reinterpret_cast<float*>(smem + layout.rows);      // [3][64]
  int* diag = reinterpret_cast<int*>(smem + layout.diag);         // [64]: the walked column of the row's own node
  float* col = reinterpret_cast<float*>(smem + layout.col);       // [2][Y][64]

  const std::int64_t off1 = std::int64_t(bh) * N * p.DQK, off2 = std::int64_t(bh) * N * p.DV;
  // Row operands (q, dh) or (k, v); walked operands (k, v) or (q, dh).
  const T* a1 = static_cast<const T*>(R == kQueries ? p.q : p.k) + off1;
  const T* a2 = static_cast<const T*>(R == kQueries ? p.dh : p.v) + off2;
  const T* b1 = static_cast<const T*>(R == kQueries ? p.k : p.q) + off1;
  const T* b2 = static_cast<const T*>(R == kQueries ? p.v : p.dh) + off2;
  const int tid = threadIdx.x;
  auto tile_node = [&](int r) { return n0 + r < N ? n0 + r : -1; };
  // Operand tiles zeroed once: the copies below leave the columns beyond DQK and DV alone.
  zero_tile(A1, kTile * ld1);
  zero_tile(A2, kTile * ld2);
  zero_tile(B1, kTile * ld1);
  zero_tile(B2, kTile * ld2);
  __syncthreads();
  copy_rows(A1, ld1, a1, p.DQK, 0, w.w1, tile_node, 0);
  copy_rows(A2, ld2, a2, p.DV, 0, w.w2, tile_node, 0);
  cp_async_commit();
  cp_async_wait<0>();

  Acc out1, out2;  // dq or dk; dv (keys)
  tiles::zero(out1);
  tiles::zero(out2);
  const bool writes_gates = blockIdx.y == 0;
  const int r = tid;  // the programme's thread r (r < kPaths): row node n0 + r

  for (int o = 0; o < p.orientations; ++o) {
    const Frame f(p, o);
    const std::int64_t base = (std::int64_t(o) * p.B * p.NH + bh) * N;
    // The walk: queries visit the sources in reverse raster order from the column of the tile's
    // rightmost target, keys visit the targets in raster order from the column of the leftmost source.
    const int p_first = R == kQueries ? (p.X - 1 - f.xf_max(n0, n1)) * p.Y : f.xf_min(n0, n1) * p.Y;
    auto walked = [&](int pos) {
      if (pos >= N) return -1;
      return R == kQueries ? f.node(p.X - 1 - pos / p.Y, p.Y - 1 - pos % p.Y) : f.node(pos / p.Y, pos % p.Y);
    };
    auto stage = [&](float* to, int pb, int first) {
      for (int e = tid - first; e < 6 * kTile; e += kThreads - first) {
        const int n = walked(pb + e % kTile);
        to[e] = n >= 0 ? __ldg(p.gates[staged_gate<R>(e / kTile)] + base + n) : 0.f;
      }
    };
    int xr = -2, yr = -2, xf = 0, yf = 0;  // the row's node and the walk's position, in the frame
    float carry0 = 0.f, carry1 = 0.f;      // the two channels' push into (queries) / weight on (keys) the node's vertical edge
    if (r < kPaths) {
      const int n = tile_node(r);
      if (n >= 0) xr = f.xf_of_node(n), yr = f.yf_of_node(n);
      for (int i = 0; i < 3; ++i) own[i * kTile + r] = n >= 0 ? __ldg(p.gates[own_gate<R>(i)] + base + n) : 0.f;
      for (int y = 0; y < p.Y; ++y) col[y * kPaths + r] = col[(p.Y + y) * kPaths + r] = 0.f;
      xf = R == kQueries ? p.X - 1 - p_first / p.Y : p_first / p.Y;
      yf = R == kQueries ? p.Y - 1 : 0;
    }
    stage(staged, p_first, 0);
    float g0[kTR] = {}, g1[kTR] = {}, gD[kTR] = {};  // the rows' gate gradients, this thread's columns
    __syncthreads();
    int buffer = 0;
    for (int pb = p_first; pb < N; pb += kTile, buffer ^= 1) {
      if (r < kPaths) {
        // 1. The dynamic programme over the block's walked nodes: the two channels at each, four
        //    nodes at a time, their gates (and column entries, for columns of at least four nodes)
        //    read before any of the four writes (as in the forward). Positions beyond N have zero
        //    gates and write zero into Gc.
        const float* g = staged + buffer * 6 * kTile;
        float* col0 = col;
        float* col1 = col + p.Y * kPaths;
        int d = -1;
        for (int j0 = 0; j0 < kTile; j0 += 4) {
          int xs[4], ys[4];
          float gs[4][6], c0s[4], c1s[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            xs[i] = xf, ys[i] = yf;
            if constexpr (R == kQueries) {
              if (--yf < 0) yf = p.Y - 1, --xf;
            } else {
              if (++yf == p.Y) yf = 0, ++xf;
            }
#pragma unroll
            for (int k = 0; k < 6; ++k) gs[i][k] = g[k * kTile + j0 + i];
          }
          if (p.Y >= 4) {
#pragma unroll
            for (int i = 0; i < 4; ++i) c0s[i] = col0[ys[i] * kPaths + r], c1s[i] = col1[ys[i] * kPaths + r];
          }
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int x = xs[i], y = ys[i], j = j0 + i;
            const float c0 = p.Y >= 4 ? c0s[i] : col0[y * kPaths + r];
            const float c1 = p.Y >= 4 ? c1s[i] : col1[y * kPaths + r];
            float G0, G1;
            if constexpr (R == kQueries) {
              // Walked source n: the weights from its right / down edge to the row's target, per mark.
              // gs: S^r, S^d, T^rl, T^dl, T^du, T^ru of n
              if (y == p.Y - 1) carry0 = carry1 = 0.f;
              const bool left = x + 1 == xr && y == yr, top = x == xr && y + 1 == yr;
              const float wr0 = c0 + (left ? 1.f : 0.f), wr1 = c1;
              const float wd0 = carry0, wd1 = carry1 + (top ? 1.f : 0.f);
              col0[y * kPaths + r] = gs[i][2] * wr0 + gs[i][3] * wd0;
              col1[y * kPaths + r] = gs[i][2] * wr1 + gs[i][3] * wd1;
              carry0 = gs[i][4] * wd0 + gs[i][5] * wr0;
              carry1 = gs[i][4] * wd1 + gs[i][5] * wr1;
              G0 = gs[i][0] * wr0 + gs[i][1] * wd0;
              G1 = gs[i][0] * wr1 + gs[i][1] * wd1;
            } else {
              // Walked target m: the weights of the row's source on m's left / top in-edge, per source
              // gate. gs: M^l, M^u, T^rl, T^ru, T^du, T^dl of m
              if (y == 0) carry0 = carry1 = 0.f;
              const float L0 = c0, L1 = c1, U0 = carry0, U1 = carry1;
              const bool here = x == xr && y == yr;
              G0 = gs[i][0] * L0 + gs[i][1] * U0;
              G1 = gs[i][0] * L1 + gs[i][1] * U1;
              col0[y * kPaths + r] = gs[i][2] * L0 + gs[i][3] * U0 + (here ? 1.f : 0.f);
              col1[y * kPaths + r] = gs[i][2] * L1 + gs[i][3] * U1;
              carry0 = gs[i][4] * U0 + gs[i][5] * L0;
              carry1 = gs[i][4] * U1 + gs[i][5] * L1 + (here ? 1.f : 0.f);
            }
            const bool live = pb + j < N;
            if (live && x == xr && y == yr) d = j;
            Gc[r * kLdG + j] = live ? G0 : 0.f;
            Gc[(kPaths + r) * kLdG + j] = live ? G1 : 0.f;
          }
        }
        diag[r] = d;
      } else {
        // Meanwhile: the walked block's operand rows and the next block's gates.
        const auto block_node = [&](int j) { return walked(pb + j); };
        copy_rows(B1, ld1, b1, p.DQK, 0, w.w1, block_node, kPaths);
        copy_rows(B2, ld2, b2, p.DV, 0, w.w2, block_node, kPaths);
        cp_async_commit();
        if (pb + kTile < N) stage(staged + (buffer ^ 1) * 6 * kTile, pb + kTile, kPaths);
        cp_async_wait<0>();
      }
      __syncthreads();
      // 2. S = A1 B1^T and E = A2 B2^T (rows x walked), dG = s S E and the gradients.
      Acc S, E;
      tiles::zero(S);
      tiles::zero(E);
      for (int k0 = 0; k0 < padded_dqk(p.DQK); k0 += 16) tiles::gemm<true, false, 16>(S, A1 + k0, ld1, B1 + k0, ld1);
      for (int k0 = 0; k0 < padded_dqk(p.DV); k0 += 16) tiles::gemm<true, false, 16>(E, A2 + k0, ld2, B2 + k0, ld2);
      float G[kTR][kTC];
#pragma unroll
      for (int i = 0; i < kTR; ++i) {
        const int row = tile_row(i);
        const float w0 = own[row], w1 = own[kTile + row], Dr = own[2 * kTile + row];
        const int d = diag[row];
#pragma unroll
        for (int j = 0; j < kTC; ++j) {
          const int c = tile_col(j);
          const float G0 = Gc[row * kLdG + c], G1 = Gc[(kPaths + row) * kLdG + c];
          G[i][j] = w0 * G0 + w1 * G1 + (c == d ? Dr : 0.f);
          const float dG = p.scale * S[i][j] * E[i][j];
          g0[i] += dG * G0;
          g1[i] += dG * G1;
          if (c == d) gD[i] += dG;
        }
      }
#pragma unroll
      for (int i = 0; i < kTR; ++i)
#pragma unroll
        for (int j = 0; j < kTC; j += 2) {
          const int c = tile_row(i) * ldp + tile_col(j);
          P.set_pair(c, true, p.scale * G[i][j] * E[i][j], p.scale * G[i][j + 1] * E[i][j + 1]);
        }
      __syncthreads();
      if (c0 < w.w1) tiles::gemm<true, true, kTile>(out1, P, ldp, B1 + c0, ld1);
      if constexpr (R == kKeys) {
        __syncthreads();
#pragma unroll
        for (int i = 0; i < kTR; ++i)
#pragma unroll
          for (int j = 0; j < kTC; j += 2) {
            const int c = tile_row(i) * ldp + tile_col(j);
            P.set_pair(c, true, p.scale * G[i][j] * S[i][j], p.scale * G[i][j + 1] * S[i][j + 1]);
          }
        __syncthreads();
        if (c0 < w.w2) tiles::gemm<true, true, kTile>(out2, P, ldp, B2 + c0, ld2);
      }
      __syncthreads();
    }
    // The rows' gate gradients of this orientation: the 4 threads of a row, then the two warps that
    // share it (w and w + 4), through the Gc area (free now).
    if (writes_gates) {
      float* sum = Gc;  // [2 halves][3][64]
#pragma unroll
      for (int i = 0; i < kTR; ++i) {
        const float s0 = tiles::row_sum(g0[i]), s1 = tiles::row_sum(g1[i]), sD = tiles::row_sum(gD[i]);
        if (tiles::row_leader()) {
          const int half = tiles::warp_id() / 4, row = tile_row(i);
          sum[(half * 3 + 0) * kTile + row] = s0;
          sum[(half * 3 + 1) * kTile + row] = s1;
          sum[(half * 3 + 2) * kTile + row] = sD;
        }
      }
      __syncthreads();
      if (tid < kTile && n0 + tid < N) {
        const int n = n0 + tid;
        for (int i = 0; i < (R == kQueries ? 3 : 2); ++i)  // dM^l, dM^u, dD or dS^r, dS^d
          p.dgates[own_gate<R>(i)][base + n] = sum[i * kTile + tid] + sum[(3 + i) * kTile + tid];
      }
      __syncthreads();
    }
  }
  // The node gradients, summed over the orientations.
  T* d1 = static_cast<T*>(R == kQueries ? p.dq : p.dk) + off1;
  T* d2 = static_cast<T*>(p.dv) + off2;
#pragma unroll
  for (int i = 0; i < kTR; ++i)
#pragma unroll
    for (int j = 0; j < kTC; j += 2) {
      const int row = n0 + tile_row(i), c = c0 + tile_col(j);
      if (row >= N) continue;
      if (c < p.DQK) tiles::store_pair(d1, std::int64_t(row) * p.DQK + c, c + 1 < p.DQK, out1[i][j], out1[i][j + 1]);
      if (R == kKeys && c < p.DV) tiles::store_pair(d2, std::int64_t(row) * p.DV + c, c + 1 < p.DV, out2[i][j], out2[i][j + 1]);
    }
}

// ------------------------------------------------------------------------------------------------
// dT.

// The shared memory of a transitions block; `segment` columns of reverse weights are kept at a time,
// and the orientation's six gates the programmes read at every node when `gates_on_chip`.
struct TransitionsLayout {
  std::size_t Q, dH, K, V, dG, Z, W, col, zcol, gates, bytes;
  __host__ __device__ TransitionsLayout(int DQK, int DV, int X, int Y, int segment, bool gates_on_chip,
                                        std::size_t element) {
    const int d1 = padded_dqk(DQK), d2 = padded_dqk(DV);
    Q = 0;
    dH = Q + align16(kTile * stride(d1) * element);
    K = dH + align16(kTile * stride(d2) * element);
    V = K + align16(kTile * stride(d1) * element);
    dG = V + align16(kTile * stride(d2) * element);               // [64 targets][kLdG] float
    Z = dG + align16(kPaths * kLdG * sizeof(float));              // [2][64 nodes][kLdG]: Z on the left / top in-edge
    W = Z + align16(2 * kTile * kLdG * sizeof(float));            // [2][segment·Y][kLdG]: W on the right / down out-edge
    col = W + align16(2 * std::size_t(segment) * Y * kLdG * sizeof(float));  // [Y][64]
    zcol = col + align16(std::size_t(Y) * kPaths * sizeof(float));          // [Y][64]
    gates = zcol + align16(std::size_t(Y) * kPaths * sizeof(float));        // [6][N]
    bytes = gates + (gates_on_chip ? align16(6 * std::size_t(X) * Y * sizeof(float)) : 0);
  }
};

// The six gates the transition kernel's programmes read, in shared memory or global.
enum TransitionGate { kTgTrl, kTgTru, kTgTdu, kTgTdl, kTgSr, kTgSd, kTransitionGates };

template <class T>
__global__ void __launch_bounds__(kThreads) grid_transitions_kernel(GridBackwardParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int N = p.X * p.Y, K = p.segment;
  const int bh = blockIdx.x / p.orientations, o = blockIdx.x % p.orientations;
  const int d1 = padded_dqk(p.DQK), d2 = padded_dqk(p.DV);
  const int ld1 = stride(d1), ld2 = stride(d2);
  const TransitionsLayout layout(p.DQK, p.DV, p.X, p.Y, K, p.gates_on_chip, sizeof(T));
  T* Qs = reinterpret_cast<T*>(smem + layout.Q);
  T* dHs = reinterpret_cast<T*>(smem + layout.dH);
  T* Ks = reinterpret_cast<T*>(smem + layout.K);
  T* Vs = reinterpret_cast<T*>(smem + layout.V);
  float* dGs = reinterpret_cast<float*>(smem + layout.dG);  // [t][j]
  float* Z = reinterpret_cast<float*>(smem + layout.Z);     // [2][j][t]
  float* W = reinterpret_cast<float*>(smem + layout.W);     // [2][segment position][t]
  float* col = reinterpret_cast<float*>(smem + layout.col);
  float* zcol = reinterpret_cast<float*>(smem + layout.zcol);
  const int segment_nodes = K * p.Y;

  const std::int64_t off1 = std::int64_t(bh) * N * p.DQK, off2 = std::int64_t(bh) * N * p.DV;
  const T* q = static_cast<const T*>(p.q) + off1;
  const T* k = static_cast<const T*>(p.k) + off1;
  const T* v = static_cast<const T*>(p.v) + off2;
  const T* dh = static_cast<const T*>(p.dh) + off2;
  const Frame f(p, o);
  const std::int64_t base = (std::int64_t(o) * p.B * p.NH + bh) * N;
  // The gates of this (batch·head, orientation) the programmes read, copied on chip when they fit.
  const float* gate_at[kTransitionGates];
  {
    constexpr Gate order[kTransitionGates] = {kTrl, kTru, kTdu, kTdl, kSr, kSd};
    float* on_chip = reinterpret_cast<float*>(smem + layout.gates);
    for (int i = 0; i < kTransitionGates; ++i) {
      const float* g = p.gates[order[i]] + base;
      if (p.gates_on_chip) {
        for (int e = threadIdx.x; e < N; e += kThreads) on_chip[i * N + e] = __ldg(g + e);
        gate_at[i] = on_chip + i * N;
      } else {
        gate_at[i] = g;
      }
    }
  }
  auto gate = [&](TransitionGate g, int n) { return gate_at[g][n]; };
  float* dT[4] = {p.dgates[kTrl] + base, p.dgates[kTru] + base, p.dgates[kTdu] + base, p.dgates[kTdl] + base};
  float* checkpoints = p.scratch + std::int64_t(blockIdx.x) * p.scratch_per_block;  // [X / K + 1][Y][64]
  const int tid = threadIdx.x, t = tid;

  for (int e = tid; e < N; e += kThreads) dT[0][e] = dT[1][e] = dT[2][e] = dT[3][e] = 0.f;
  zero_tile(Qs, kTile * ld1);  // the copies leave the columns beyond DQK and DV alone
  zero_tile(dHs, kTile * ld2);
  zero_tile(Ks, kTile * ld1);
  zero_tile(Vs, kTile * ld2);
  for (int n0 = 0; n0 < N; n0 += kTile) {
    const int n1 = min(n0 + kTile, N), xf_max = f.xf_max(n0, n1);
    auto tile_node = [&](int r) { return n0 + r < N ? n0 + r : -1; };
    __syncthreads();  // the previous tile's operands and sums are done (the first time: the gates)
    copy_rows(Qs, ld1, q, p.DQK, 0, d1, tile_node, 0);
    copy_rows(dHs, ld2, dh, p.DV, 0, d2, tile_node, 0);
    cp_async_commit();
    int xt = -2, yt = -2;
    float Ml = 0.f, Mu = 0.f;
    if (t < kPaths && n0 + t < N) {
      xt = f.xf_of_node(n0 + t), yt = f.yf_of_node(n0 + t);
      Ml = __ldg(p.gates[kMl] + base + n0 + t), Mu = __ldg(p.gates[kMu] + base + n0 + t);
    }
    // The reverse programme over columns x_hi down to x_lo (y descending in each), from the state in
    // col: at each node (x, y) the weights (wr, wd) from its right / down out-edge to the thread's
    // target, marks included; pushes into col and a carry. Four nodes at a time, their gates (and
    // column entries, for columns of at least four nodes) read before any of the four writes.
    // column(x) runs before column x's first node, step(x, y, wr, wd) after each node.
    auto reverse_walk = [&](int x_hi, int x_lo, auto column, auto step) {
      const int count = (x_hi - x_lo + 1) * p.Y;
      int x = x_hi, y = p.Y - 1;
      float carry = 0.f;
      for (int j0 = 0; j0 < count; j0 += 4) {
        int xs[4], ys[4];
        float gs[4][4], cl[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          xs[i] = x, ys[i] = y;
          if (--y < 0) y = p.Y - 1, --x;
          const int n = j0 + i < count ? f.node(xs[i], ys[i]) : 0;
          gs[i][0] = gate(kTgTrl, n), gs[i][1] = gate(kTgTdl, n), gs[i][2] = gate(kTgTdu, n), gs[i][3] = gate(kTgTru, n);
        }
        if (p.Y >= 4) {
#pragma unroll
          for (int i = 0; i < 4; ++i) cl[i] = col[ys[i] * kPaths + t];
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          if (j0 + i >= count) break;
          const int xi = xs[i], yi = ys[i];
          if (yi == p.Y - 1) {
            carry = 0.f;
            column(xi);
          }
          const float wr = (p.Y >= 4 ? cl[i] : col[yi * kPaths + t]) + (xi + 1 == xt && yi == yt ? Ml : 0.f);
          const float wd = carry + (xi == xt && yi + 1 == yt ? Mu : 0.f);
          col[yi * kPaths + t] = gs[i][0] * wr + gs[i][1] * wd;
          carry = gs[i][2] * wd + gs[i][3] * wr;
          step(xi, yi, wr, wd);
        }
      }
    };
    // 1. The reverse programme from the tile's last column down to column 0, keeping the state that
    //    enters column x wherever a segment [x - K + 1, x] begins its recomputation.
    if (t < kPaths) {
      for (int y = 0; y < p.Y; ++y) col[y * kPaths + t] = 0.f;
      reverse_walk(
          xf_max, 0,
          [&](int x) {
            if (x % K == K - 1 || x == xf_max)
              for (int y = 0; y < p.Y; ++y) checkpoints[(std::int64_t(x / K) * p.Y + y) * kPaths + t] = col[y * kPaths + t];
          },
          [](int, int, float, float) {});
      for (int y = 0; y < p.Y; ++y) zcol[y * kPaths + t] = 0.f;
    }
    // 2. Per segment of K columns, left to right: W again from the checkpoint, then Z forward over it.
    float zcarry = 0.f;
    for (int s0 = 0; s0 <= xf_max; s0 += K) {
      const int s1 = min(s0 + K, xf_max + 1);
      __syncthreads();  // the previous segment's W is consumed
      if (t < kPaths) {
        for (int y = 0; y < p.Y; ++y) col[y * kPaths + t] = checkpoints[(std::int64_t((s1 - 1) / K) * p.Y + y) * kPaths + t];
        reverse_walk(s1 - 1, s0, [](int) {}, [&](int x, int y, float wr, float wd) {
          const int i = (x - s0) * p.Y + y;
          W[i * kLdG + t] = wr;
          W[(segment_nodes + i) * kLdG + t] = wd;
        });
      }
      for (int pb = s0 * p.Y; pb < s1 * p.Y; pb += kTile) {
        const int count = min(kTile, s1 * p.Y - pb);
        auto walked = [&](int j) { return j < count ? f.node((pb + j) / p.Y, (pb + j) % p.Y) : -1; };
        __syncthreads();  // W is complete; the previous block's Z and dG are consumed
        copy_rows(Ks, ld1, k, p.DQK, 0, d1, walked, 0);
        copy_rows(Vs, ld2, v, p.DV, 0, d2, walked, 0);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
        // dG(t, n) = s (q_t · k_n)(dh_t · v_n) for the block's 64 sources.
        Acc S, E;
        tiles::zero(S);
        tiles::zero(E);
        for (int k0 = 0; k0 < padded_dqk(p.DQK); k0 += 16) tiles::gemm<true, false, 16>(S, Qs + k0, ld1, Ks + k0, ld1);
        for (int k0 = 0; k0 < padded_dqk(p.DV); k0 += 16) tiles::gemm<true, false, 16>(E, dHs + k0, ld2, Vs + k0, ld2);
#pragma unroll
        for (int i = 0; i < kTR; ++i)
#pragma unroll
          for (int j = 0; j < kTC; ++j) dGs[tile_row(i) * kLdG + tile_col(j)] = p.scale * S[i][j] * E[i][j];
        __syncthreads();
        // Z forward over the block: its values on each node's in-edges, then the pushes; four nodes
        // at a time, reads first (as in the reverse walk).
        if (t < kPaths) {
          int x = pb / p.Y, y = pb % p.Y;
          for (int j0 = 0; j0 < count; j0 += 4) {
            int xs[4], ys[4];
            float gs[4][6], zc[4], dg[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              xs[i] = x, ys[i] = y;
              if (++y == p.Y) y = 0, ++x;
              const int n = j0 + i < count ? f.node(xs[i], ys[i]) : 0;
              gs[i][0] = gate(kTgTrl, n), gs[i][1] = gate(kTgTru, n), gs[i][2] = gate(kTgSr, n);
              gs[i][3] = gate(kTgTdu, n), gs[i][4] = gate(kTgTdl, n), gs[i][5] = gate(kTgSd, n);
              dg[i] = dGs[t * kLdG + min(j0 + i, kTile - 1)];
            }
            if (p.Y >= 4) {
#pragma unroll
              for (int i = 0; i < 4; ++i) zc[i] = zcol[ys[i] * kPaths + t];
            }
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const int j = j0 + i;
              if (j >= count) break;
              if (ys[i] == 0) zcarry = 0.f;
              const float zl = p.Y >= 4 ? zc[i] : zcol[ys[i] * kPaths + t], zt = zcarry;
              Z[j * kLdG + t] = zl;
              Z[(kTile + j) * kLdG + t] = zt;
              zcol[ys[i] * kPaths + t] = gs[i][0] * zl + gs[i][1] * zt + gs[i][2] * dg[i];
              zcarry = gs[i][3] * zt + gs[i][4] * zl + gs[i][5] * dg[i];
            }
          }
        }
        __syncthreads();
        // dT at the block's nodes, summed over the tile's targets: thread (kind, j).
        {
          const int kind = tid / kTile, j = tid % kTile;  // kinds: T^rl (Z left, W right), T^ru (top, right),
          if (j < count) {                                // T^du (top, down), T^dl (left, down)
            const float* z = Z + ((kind == 0 || kind == 3) ? j : kTile + j) * kLdG;
            const int i = pb - s0 * p.Y + j;
            const float* wt = W + ((kind < 2) ? i : segment_nodes + i) * kLdG;
            float sum = 0.f;
            for (int u = 0; u < kPaths; ++u) sum += z[u] * wt[u];
            dT[kind][f.node((pb + j) / p.Y, (pb + j) % p.Y)] += sum;
          }
        }
      }
    }
  }
}

template <class T>
void launch(const GridBackwardParams& p, cudaStream_t stream) {
  const NodesLayout nodes(p.DQK, p.DV, p.Y, sizeof(T));
  const std::int64_t tiles_per_head = (std::int64_t(p.X) * p.Y + kTile - 1) / kTile;
  const unsigned blocks = static_cast<unsigned>(tiles_per_head * p.B * p.NH);
  auto run_nodes = [&](auto kernel, int columns, const char* what) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(nodes.bytes)),
               what);
    kernel<<<dim3(blocks, static_cast<unsigned>((columns + kTile - 1) / kTile)), kThreads, nodes.bytes, stream>>>(p);
    check_cuda(cudaGetLastError(), what);
  };
  run_nodes(grid_nodes_kernel<T, kQueries>, p.DQK, "pLSTM grid backward (dq, dM, dD)");
  run_nodes(grid_nodes_kernel<T, kKeys>, std::max(p.DQK, p.DV), "pLSTM grid backward (dk, dv, dS)");
  const TransitionsLayout transitions(p.DQK, p.DV, p.X, p.Y, p.segment, p.gates_on_chip, sizeof(T));
  check_cuda(cudaFuncSetAttribute(grid_transitions_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(transitions.bytes)),
             "pLSTM grid backward (dT)");
  grid_transitions_kernel<T><<<static_cast<unsigned>(p.B * p.NH * p.orientations), kThreads, transitions.bytes, stream>>>(p);
  check_cuda(cudaGetLastError(), "pLSTM grid backward (dT)");
}

template <class T>
GridBackwardPlan plan_for(int DQK, int DV, int X, int Y) {
  GridBackwardPlan plan;
  if (NodesLayout(DQK, DV, Y, sizeof(T)).bytes > kMaxShared) return plan;
  // The longest segment (columns of reverse weights kept on chip) that fits, at most the grid's width,
  // with the gates on chip where they fit too.
  for (const bool gates_on_chip : {true, false})
    for (int K = std::max(1, X); K >= 1; --K)
      if (TransitionsLayout(DQK, DV, X, Y, K, gates_on_chip, sizeof(T)).bytes <= kMaxShared) {
        plan.fits = true;
        plan.segment = K;
        plan.gates_on_chip = gates_on_chip;
        plan.scratch_per_block = std::int64_t((X + K - 1) / K) * Y * kPaths;
        return plan;
      }
  return plan;
}

}  // namespace

GridBackwardPlan plan_grid_backward(int DQK, int DV, int X, int Y, DType dtype) {
  return dtype == DType::float32 ? plan_for<float>(DQK, DV, X, Y) : plan_for<__nv_bfloat16>(DQK, DV, X, Y);
}

void run_grid_backward(const GridBackwardParams& p, DType dtype, cudaStream_t stream) {
  if (dtype == DType::float32) launch<float>(p, stream);
  else launch<__nv_bfloat16>(p, stream);
}

}  // namespace flashlstm::cuda::plstm::detail
