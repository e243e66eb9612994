// The pLSTM on 2-D grids from chunk maps (cuda/plstm/plstm.hpp), forward and backward: the gating
// G(t, n) between two chunks of 8 x 8 nodes as small matrix products instead of a dynamic programme
// per pair of nodes.
//
// The grid is cut into chunks of kL x kL nodes (the last ones padded with zero gates, which no path
// between real nodes crosses). Per orientation, a chunk's own dynamic programme over its 64 nodes, in
// the orientation's frame, gives its maps between its 16 in-border edges (8 from the left neighbour,
// by row; 8 from the top one, by column), its 64 nodes and its 16 out-border edges (right, by row;
// bottom, by column):
//
//   Tb (16 out x 16 in)   border to border      Sb (16 out x 64 nodes)   node to border (S included)
//   Mb (64 nodes x 16 in) border to node (M)    Gb (64 x 64)             node to node (D on the diagonal)
//
// Nodes are numbered in the chunk's own order (i·8 + j for the node (8·cx + i, 8·cy + j)), borders
// in the frame's. chunk_maps_kernel (a block per (batch·head, chunk), a thread per coefficient of the
// programme: 16 in-borders + 64 nodes) writes Tb, Sb, Mb per orientation into the scratch, and Gb
// summed over the orientations (the diagonal block of the gating, whichever the orientation).
//
// walk_kernel<Role> takes a block per (batch·head, fixed chunk C, 64 output columns): the diagonal
// block first, then per orientation the chunks A in C's cone, walked from C back to the frame's
// corner (frame columns from C's down, within one from C's row up). With R the weights from A's
// out-borders to C's in-borders,
//     R = [E(right neighbour of A)[:, left in-borders] | E(neighbour below A)[:, top in-borders]],
//     E(A) = R Tb_A (kept for two columns of chunks; E(C) = I),   W = R Sb_A,   G = Mb_C W
// (for bf16 every product that makes or takes a 64 x 64 block runs on the tensor cores with bf16
// operands: G = Mb W with Mb and W rounded, the products that make h, dq, dk and dv with P = s S ∘ G
// or s dP ∘ G rounded, as flash-attention rounds P, and the gate-gradient products with dG and the
// maps rounded — the plain bf16 computation of this form that the reference's GridForm::maps with
// bf16 operands carries out; the maps and the values between borders stay float32, some border-sized
// products taking them as tf32 operands: E and W in kForward and kKeys, U Rᵀ and Mb_Cᵀ U). The roles:
//   kForward  C a target:  S = s Q_C K_Aᵀ, h_C += (S ∘ G) V_A (bf16: S ∘ G goes from the accumulators
//             into the product's A operand in registers; warps w and w + 4 take the two halves of
//             A's nodes and add their parts of h at the end);
//   kQueries  C a target:  dP = dH_C V_Aᵀ, dq_C += s (dP ∘ G) K_A; with dG = S ∘ dP: dMb_C += dG Wᵀ,
//             D[C, A] = Mb_Cᵀ dG Sb_Aᵀ (for the chunk-level programme) and dGb_C = dG of the diagonal;
//   kKeys     C a source, the walk mirrored: in orientation o ^ 3's frame with Tbᵀ and Mbᵀ in place
//             of Tb and Sb, so that R = X_C[A]ᵀ (C's out-borders to A's in-borders, transposed),
//             W = R Mb_Aᵀ and G = Sb_Cᵀ W is the gating from C to A transposed:
//             dk_C += s (dPᵀ ∘ Gᵀ) Q_A, dv_C += (Sᵀ ∘ Gᵀ) dH_A, dSb_Cᵀ += dGᵀ Wᵀ.
// The next block's rows and maps are copied in (cp.async) while the current one is computed.
//
// The backward then runs chunk_transitions_kernel (a block per (orientation, batch·head, target B):
// R_B over B's cone as above, then the cone in raster order Z[P] = [Y(left)[:, left] |
// Y(above)[:, top]], Y[P] = Z[P] Tb_Pᵀ + D[B, P], and B's part of dTb_P, R_B[P]ᵀ Z[P]) and
// chunk_backward_kernel (each chunk's dTb summed over the targets, then its programme backwards,
// from [dTb | dSb] and [dMb | dGb], to the nine gates).
//
// The scratch (MapsScratch) is taken per wave of (batch·head) items, as many as keep it within
// kScratchBudget. tests/python/test_plstm_grid_chunk_maps.py (target_major_h,
// kernel_order_backward) transcribes these orders in numpy.
#include "cuda/plstm/grid.cuh"

#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

namespace flashlstm::cuda::plstm::detail {
namespace {

constexpr int kL = 8;                                   // chunk side
constexpr int kNodes = kL * kL;                         // nodes of a chunk
constexpr int kBorders = 2 * kL;                        // in- or out-borders of a chunk
constexpr int kWidth = kBorders + kNodes;               // coefficients of the chunk programme
constexpr int kTbSb = kBorders * kWidth;                // floats of [Tb | Sb]: 16 x 16, then 16 x 64
constexpr int kMapFloats = kTbSb + kNodes * kBorders;   // + Mb (64 x 16)
constexpr int kBlock = kBorders * kBorders;             // floats of a border-to-border block
// The keys' walk reads its map tiles (Tb, then Mb) by columns, 16 bytes at a time: rows of kKeyLd
// floats keep those reads free of bank conflicts (the 16 rows a quarter-warp reads start 80 bytes
// apart).
constexpr int kKeyLd = 20;

__host__ __device__ inline int round64(int d) { return (d + 63) / 64 * 64; }
__host__ __device__ inline std::int64_t triangle(std::int64_t n) { return n * (n + 1) / 2; }

struct Chunks {
  int CX, CY;
  __host__ __device__ explicit Chunks(const GridParams& p) : CX((p.X + kL - 1) / kL), CY((p.Y + kL - 1) / kL) {}
  __host__ __device__ std::int64_t count() const { return std::int64_t(CX) * CY; }
  // Pairs (target B, source A in B's cone) of one orientation, numbered by B's frame position in raster
  // order, then A's.
  __host__ __device__ std::int64_t pairs() const { return triangle(CX) * triangle(CY); }
  __device__ std::int64_t pair(int fbx, int fby, int fax, int fay) const {
    return triangle(fbx) * triangle(CY) + std::int64_t(fbx + 1) * triangle(fby) + fax * (fby + 1) + fay;
  }
};

// The scratch of the chunk-map kernels for a wave of `bhs` (batch·head) items from bh0 on (floats;
// BHC = bhs x chunks). Kernels index it by the item's place in the wave, lbh.
struct MapsScratch {
  int bh0 = 0, bhs = 0;
  float* maps = nullptr;  // (orientations, BHC, kMapFloats): [Tb | Sb | Mb]
  float* gsum = nullptr;  // (BHC, 64 x 64): Σ Gb, rows targets
  float* dMb = nullptr;   // (orientations, BHC, 64 x 16)      backward
  float* dSb = nullptr;   // (orientations, BHC, 16 x 64)
  float* dGb = nullptr;   // (BHC, 64 x 64)
  float* D = nullptr;     // (orientations, bhs, pairs, 16 x 16); then the targets' parts of dTb
  float* E = nullptr;     // (orientations, bhs, pairs, 16 x 16): E of the chunk level, by pair, where
                          // a cone's E does not fit in shared memory
};

__device__ std::int64_t item(const MapsScratch& m, std::int64_t chunks, int o, int lbh, std::int64_t c) {
  return (std::int64_t(o) * m.bhs + lbh) * chunks + c;
}

// The place of coefficient `lane` of out-border `row` in [Tb | Sb].
__device__ int out_index(int row, int lane) {
  return lane < kBorders ? row * kBorders + lane : kBorders * kBorders + row * kNodes + lane - kBorders;
}

// The orientation's gates of chunk (cx, cy) at frame-local (x, y) (x·8 + y), by all threads; the
// frame-local node's own index.
__device__ int own_index(int o, int x, int y) {
  return ((o & 1) ? kL - 1 - x : x) * kL + ((o & 2) ? kL - 1 - y : y);
}
// The chunk programmes' blocks: a thread per coefficient (kWidth of them), in three warps.
constexpr int kProgrammeThreads = 96;
static_assert(9 * kNodes % kProgrammeThreads == 0, "stage_gates: whole rounds of loads");
__device__ void stage_gates(const GridParams& p, int o, int bh, int cx, int cy, float (&g)[9][kNodes]) {
  const std::int64_t base = (std::int64_t(o) * p.B * p.NH + bh) * p.X * p.Y;
  constexpr int kRounds = 9 * kNodes / kProgrammeThreads;
  float value[kRounds];  // every load issued before the first store waits for one
#pragma unroll
  for (int k = 0; k < kRounds; ++k) {
    const int e = threadIdx.x + k * kProgrammeThreads, gate = e / kNodes, own = own_index(o, e / kL % kL, e % kL);
    const int i = cx * kL + own / kL, j = cy * kL + own % kL;
    value[k] = i < p.X && j < p.Y ? __ldg(p.gates[gate] + base + std::int64_t(i) * p.Y + j) : 0.f;
  }
#pragma unroll
  for (int k = 0; k < kRounds; ++k) {
    const int e = threadIdx.x + k * kProgrammeThreads;
    g[e / kNodes][e % kNodes] = value[k];
  }
}

// The chunk programme for coefficient `lane` in frame order, calling visit(x, y, own, left_in,
// top_in, right, down, mark) at each node, where left_in and top_in are the coefficients of its
// in-edges and right, down, mark those of its out-edges and of its output.
template <class Visit>
__device__ void chunk_programme(const float (&g)[9][kNodes], int o, int lane, Visit visit) {
  float right[kL];   // the right out-edge coefficients of the previous frame column, by row
  float down = 0.f;  // the down out-edge coefficient of the node above
#pragma unroll
  for (int x = 0; x < kL; ++x) {
#pragma unroll
    for (int y = 0; y < kL; ++y) {
      const int n = x * kL + y, own = own_index(o, x, y);
      const float left_in = x > 0 ? right[y] : (lane == y ? 1.f : 0.f);
      const float top_in = y > 0 ? down : (lane == kL + x ? 1.f : 0.f);
      const float unit = lane == kBorders + own ? 1.f : 0.f;
      const float r = g[kTrl][n] * left_in + g[kTru][n] * top_in + g[kSr][n] * unit;
      const float d = g[kTdu][n] * top_in + g[kTdl][n] * left_in + g[kSd][n] * unit;
      const float mark = g[kMl][n] * left_in + g[kMu][n] * top_in + g[kD][n] * unit;
      visit(x, y, own, left_in, top_in, r, d, mark);
      right[y] = r, down = d;
    }
  }
}

// A thread per coefficient (lane < kWidth): lanes [0, 8) the left in-borders, [8, 16) the top ones,
// 16 + i·8 + j the node (i, j) of the chunk in its own order.
__global__ void __launch_bounds__(kProgrammeThreads) chunk_maps_kernel(GridParams p, MapsScratch m) {
  __shared__ float g[9][kNodes];     // the orientation's gates, frame-local
  __shared__ float gb[kNodes][kNodes];  // Σ over the orientations of Gb, rows: targets, cols: sources
  const Chunks chunks(p);
  const std::int64_t chunk = blockIdx.x % chunks.count();
  const int lbh = static_cast<int>(blockIdx.x / chunks.count()), bh = m.bh0 + lbh;
  const int cx = static_cast<int>(chunk / chunks.CY), cy = static_cast<int>(chunk % chunks.CY);
  const int lane = threadIdx.x;
  for (int e = lane; e < kNodes * kNodes; e += blockDim.x) (&gb[0][0])[e] = 0.f;
  for (int o = 0; o < p.orientations; ++o) {
    __syncthreads();  // the previous orientation's programme has read g
    stage_gates(p, o, bh, cx, cy, g);
    __syncthreads();
    if (lane >= kWidth) continue;
    float* maps = m.maps + item(m, chunks.count(), o, lbh, chunk) * kMapFloats;
    chunk_programme(g, o, lane, [&](int x, int y, int own, float, float, float r, float d, float mark) {
      if (lane < kBorders) maps[kTbSb + own * kBorders + lane] = mark;  // Mb
      else gb[own][lane - kBorders] += mark;                            // Gb
      if (x == kL - 1) maps[out_index(y, lane)] = r;                   // right out-border y
      if (y == kL - 1) maps[out_index(kL + x, lane)] = d;              // bottom out-border x
    });
  }
  __syncthreads();
  float* out = m.gsum + (std::int64_t(lbh) * chunks.count() + chunk) * kNodes * kNodes;
  for (int e = lane; e < kNodes * kNodes; e += blockDim.x) out[e] = (&gb[0][0])[e];
}

// ------------------------------------------------------------------------------------------------
// The walk.

enum Role { kForward, kQueries, kKeys };

// The gate gradients' products: acc (a 64 x 16 tile) += A Bᵀ over K = 64, A(r, k) = A[r·lda + k],
// B(c, k) = B[c·ldb + k]. Warp w computes the m16n8 tile at rows 16·(w mod 4), columns 8·(w / 4), over
// the whole depth; a thread holds acc[e] at row 16·(w mod 4) + lane / 4 + 8·(e / 2), column
// 8·(w / 4) + 2·(lane mod 4) + e mod 2.
using Acc8 = float[4];
__device__ __forceinline__ int acc8_row(int e) { return 16 * (tiles::warp_id() % 4) + tiles::lane_id() / 4 + 8 * (e / 2); }
__device__ __forceinline__ int acc8_col(int e) { return 8 * (tiles::warp_id() / 4) + 2 * (tiles::lane_id() % 4) + e % 2; }

__device__ void gemm_abt(Acc8& acc, const float* A, int lda, const float* B, int ldb) {
  for (int k = 0; k < kNodes; ++k)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[e] = fmaf(A[acc8_row(e) * lda + k], B[acc8_col(e) * ldb + k], acc[e]);
}
__device__ void gemm_abt(Acc8& acc, const __nv_bfloat16* A, int lda, const __nv_bfloat16* B, int ldb) {
  const int lane = tiles::lane_id(), r0 = 16 * (tiles::warp_id() % 4), c0 = 8 * (tiles::warp_id() / 4);
#pragma unroll
  for (int k0 = 0; k0 < kNodes; k0 += 32) {
    std::uint32_t a0[4], a1[4], b[4];  // A: k0.. and k0 + 16..; B: 8 columns x k0..k0 + 32
    tiles::ldmatrix_x4<false>(a0, A + (r0 + lane % 16) * lda + k0 + (lane / 16) * 8);
    tiles::ldmatrix_x4<false>(a1, A + (r0 + lane % 16) * lda + k0 + 16 + (lane / 16) * 8);
    tiles::ldmatrix_x4<false>(b, B + (c0 + lane % 8) * ldb + k0 + (lane / 8) * 8);
    mma_bf16(acc, a0, b[0], b[1]);
    mma_bf16(acc, a1, b[2], b[3]);
  }
}
// The bf16 forward's h_part += (s S ∘ G) V for the warp's 16 rows and its 32 source columns, over
// all 64 columns of V: the accumulators of S and G (tile layout) are the A operand of the product as
// they are (rounded to bf16), with no trip through shared memory. hpart[nt] is the m16n8 accumulator
// of columns 8·nt.. of V; the warps w and w + 4 hold the two halves of the sum over the sources.
__device__ void accumulate_pv(float (&hpart)[8][4], const Acc& S, const Acc& G, float scale, const __nv_bfloat16* V,
                              int ldv) {
  const int lane = tiles::lane_id(), m = lane / 8, j = lane % 8;
#pragma unroll
  for (int kb = 0; kb < 2; ++kb) {  // the warp's 32 source columns, 16 at a time
    std::uint32_t a[4];             // A fragment x: rows lane/4 (+8 for odd x), columns 2·(lane%4) (+8 for x >= 2)
#pragma unroll
    for (int x = 0; x < 4; ++x) {
      const int i = x % 2, c = 4 * kb + 2 * (x / 2);
      const __nv_bfloat162 pair =
          __floats2bfloat162_rn(scale * S[i][c] * G[i][c], scale * S[i][c + 1] * G[i][c + 1]);
      a[x] = reinterpret_cast<const std::uint32_t&>(pair);
    }
    const int k0 = 32 * (tiles::warp_id() / 4) + 16 * kb;
#pragma unroll
    for (int n0 = 0; n0 < kTile; n0 += 16) {
      std::uint32_t b[4];
      tiles::ldmatrix_x4<true>(b, V + (k0 + (m % 2) * 8 + j) * ldv + n0 + (m / 2) * 8);
#pragma unroll
      for (int h = 0; h < 2; ++h) mma_bf16(hpart[n0 / 8 + h], a, b[2 * h], b[2 * h + 1]);
    }
  }
}

// The warps w and w + 4 hold the same 16 rows of every 64 x 64 tile (tile_row), so a product whose
// A operand is a tile they wrote (P, dG) and U, whose rows they write and read, need only the two of
// them in step: a named barrier per row band (ids 1..4; 0 is __syncthreads).
__device__ __forceinline__ void band_sync() {
  asm volatile("bar.sync %0, 64;" ::"r"(1 + tiles::warp_id() % 4) : "memory");
}

// Two adjacent elements of a shared-memory tile, rounded to T, in one store (`at` 4-byte aligned:
// an even column of a tile with an even row stride).
template <class T>
__device__ __forceinline__ void put_pair(T* at, float x0, float x1) {
  if constexpr (std::is_same_v<T, float>) *reinterpret_cast<float2*>(at) = make_float2(x0, x1);
  else *reinterpret_cast<__nv_bfloat162*>(at) = __floats2bfloat162_rn(x0, x1);
}

// Operand widths: the fixed chunk's rows F1 (q or k) and F2 (dh or v), the walked chunk's W1, W2.
struct Widths {
  int w1, w2;  // forward: padded DQK and one 64-column tile of v; backward: DQK and DV rounded to 64
  __host__ __device__ Widths(Role role, int DQK, int DV)
      : w1(role == kForward ? padded_dqk(DQK) : round64(DQK)), w2(role == kForward ? kTile : round64(DV)) {}
};

// The floats of one buffer of walked maps: [Tb | Sb], or for keys Tb and Mb in rows of kKeyLd.
__host__ __device__ constexpr int map_tile(Role role) { return role == kKeys ? (kBorders + kNodes) * kKeyLd : kTbSb; }

// The shared memory of a walk block, in bytes from its start.
struct Layout {
  std::size_t F1, F2, W1, W2, P, maps, M, W, E, X, U, Mf, Rs, bytes;
  __host__ __device__ Layout(Role role, int DQK, int DV, int CY, std::size_t element) {
    const Widths w(role, DQK, DV);
    const std::size_t ld1 = stride(w.w1), ld2 = stride(w.w2);
    F1 = 0;
    F2 = F1 + align16(kTile * ld1 * element);
    W1 = F2 + (role == kForward ? 0 : align16(kTile * ld2 * element));  // [2][64][ld1]
    W2 = W1 + align16(2 * kTile * ld1 * element);                        // [2][64][ld2]
    P = W2 + align16(2 * kTile * ld2 * element);                         // [64][72]: P or dG
    maps = P + align16(std::max<std::size_t>(kTile * stride(kTile) * element,  // the forward's h halves
                                             role == kForward && element == 2 ? kTile * kTile * sizeof(float) : 0));
    M = maps + align16(2 * map_tile(role) * sizeof(float));               // [64][24]: Mb_C or Sb_Cᵀ
    W = M + align16(kNodes * stride(kBorders) * element);                // [16][72]
    E = W + align16(kBorders * stride(kNodes) * element);                // [2][CY + 1][16][16] float
    // The backward's gate-gradient products: X = Sb_A (keys: Mb_Aᵀ) [16][72], U [64][17] float,
    // Mb_C [64][17] float (queries), R [16][17] float.
    const bool backward = role != kForward;
    X = E + align16(2 * std::size_t(CY + 1) * kBlock * sizeof(float));
    U = X + (backward ? align16(kBorders * stride(kNodes) * element) : 0);
    Mf = U + (backward ? align16(kNodes * (kBorders + 1) * sizeof(float)) : 0);
    Rs = Mf + (role == kQueries ? align16(kNodes * (kBorders + 1) * sizeof(float)) : 0);
    bytes = Rs + (backward ? align16(kBorders * (kBorders + 1) * sizeof(float)) : 0);
  }
};

// One block of the walk: the diagonal (o < 0) or chunk A at frame (fax, fay) in orientation o.
struct Step {
  int o = -1, fax = 0, fay = 0;
};

// Two blocks per SM, except the float32 backward walks (254 registers, one block). The bf16 backward
// walks would take 232 registers for one block; squeezed into 128 (a few hundred bytes of spills per
// thread) they run 12–14 % faster, a second block hiding the latencies of the first.
template <Role R, class T>
__global__ void __launch_bounds__(kThreads, R == kForward || std::is_same_v<T, __nv_bfloat16> ? 2 : 1) walk_kernel(GridBackwardParams p, MapsScratch m) {
  extern __shared__ __align__(16) unsigned char smem[];
  const Chunks chunks(p);
  const int N = p.X * p.Y, CX = chunks.CX, CY = chunks.CY;
  const int lbh = static_cast<int>(blockIdx.x / chunks.count()), bh = m.bh0 + lbh;
  const std::int64_t chunk = blockIdx.x % chunks.count();
  const int cx = static_cast<int>(chunk / CY), cy = static_cast<int>(chunk % CY);
  const int c0 = blockIdx.y * kTile;  // the block's 64 output columns
  const Widths w(R, p.DQK, p.DV);
  const int ld1 = stride(w.w1), ld2 = stride(w.w2), ldp = stride(kTile);
  const int depth1 = padded_dqk(p.DQK), depth2 = padded_dqk(p.DV);
  const Layout layout(R, p.DQK, p.DV, CY, sizeof(T));
  T* F1 = reinterpret_cast<T*>(smem + layout.F1);
  T* F2 = reinterpret_cast<T*>(smem + layout.F2);
  T* W1 = reinterpret_cast<T*>(smem + layout.W1);
  T* W2 = reinterpret_cast<T*>(smem + layout.W2);
  // The operand tiles, rounded to T as a plain bf16 computation rounds them: P = s S ∘ G (or s dP ∘ G)
  // and, over it, dG; Mb_C (keys: Sb_Cᵀ) and W, the operands of G = M W; X = Sb_A (keys: Mb_Aᵀ).
  T* P = reinterpret_cast<T*>(smem + layout.P);  // P, then dG
  float* map_tiles = reinterpret_cast<float*>(smem + layout.maps);
  T* M = reinterpret_cast<T*>(smem + layout.M);
  T* W = reinterpret_cast<T*>(smem + layout.W);
  float* E = reinterpret_cast<float*>(smem + layout.E);
  T* X = reinterpret_cast<T*>(smem + layout.X);
  float* U = reinterpret_cast<float*>(smem + layout.U);
  float* Mf = reinterpret_cast<float*>(smem + layout.Mf);
  float* Rs = reinterpret_cast<float*>(smem + layout.Rs);
  constexpr int ldu = kBorders + 1;  // U, Mf and Rs
  const std::int64_t off1 = std::int64_t(bh) * N * p.DQK, off2 = std::int64_t(bh) * N * p.DV;
  const T* f1 = static_cast<const T*>(R == kKeys ? p.k : p.q) + off1;
  const T* f2 = static_cast<const T*>(R == kKeys ? p.v : p.dh) + off2;
  const T* w1 = static_cast<const T*>(R == kKeys ? p.q : p.k) + off1;
  const T* w2 = static_cast<const T*>(R == kKeys ? p.dh : p.v) + off2;
  const int tid = threadIdx.x;

  // The walk's frame in orientation o (keys: mirrored); C's frame position; a chunk's own position.
  const auto flip = [&](int o) { return R == kKeys ? o ^ 3 : o; };
  const auto fcx = [&](int o) { return flip(o) & 1 ? CX - 1 - cx : cx; };
  const auto fcy = [&](int o) { return flip(o) & 2 ? CY - 1 - cy : cy; };
  const auto own_chunk = [&](const Step& s) {
    if (s.o < 0) return chunk;
    const int ax = flip(s.o) & 1 ? CX - 1 - s.fax : s.fax, ay = flip(s.o) & 2 ? CY - 1 - s.fay : s.fay;
    return std::int64_t(ax) * CY + ay;
  };
  // A chunk's nodes in its own order (-1: padding).
  const auto nodes_of = [&](std::int64_t c) {
    const int ax = static_cast<int>(c / CY), ay = static_cast<int>(c % CY);
    return [=](int r) {
      const int i = ax * kL + r / kL, j = ay * kL + r % kL;
      return i < p.X && j < p.Y ? i * p.Y + j : -1;
    };
  };
  // The next block of the walk; false after the last.
  const auto advance = [&](Step& s) {
    for (;;) {
      if (s.o < 0) {
        s.o = 0, s.fax = fcx(0), s.fay = fcy(0);
      } else if (--s.fay < 0) {
        if (--s.fax < 0) {
          if (++s.o == p.orientations) return false;
          s.fax = fcx(s.o);
        }
        s.fay = fcy(s.o);
      }
      if (s.fax != fcx(s.o) || s.fay != fcy(s.o)) return true;
    }
  };
  // Copies block s's rows and maps into buffer `buffer` (cp.async; committed): [Tb | Sb], or for keys
  // Tb and Mb.
  const auto load = [&](const Step& s, int buffer) {
    const std::int64_t a = own_chunk(s);
    const auto nodes = nodes_of(a);
    copy_rows(W1 + buffer * kTile * ld1, ld1, w1, p.DQK, 0, w.w1, nodes, 0);
    copy_rows(W2 + buffer * kTile * ld2, ld2, w2, p.DV, R == kForward ? c0 : 0, w.w2, nodes, 0);
    if (s.o >= 0) {
      const float* from = m.maps + item(m, chunks.count(), s.o, lbh, a) * kMapFloats;
      float* to = map_tiles + buffer * map_tile(R);
      if constexpr (R == kKeys) {  // 16-byte piece `part` of row `row` of Tb (16 rows), then of Mb (64)
        for (int e = tid; e < (kBorders + kNodes) * kBorders / 4; e += kThreads) {
          const int row = e / 4, part = e % 4;
          cp_async16(to + row * kKeyLd + 4 * part, from + (row < kBorders ? 0 : kTbSb - kBlock) + 4 * e, true);
        }
      } else {
        for (int e = tid; e < kTbSb / 4; e += kThreads) cp_async16(to + 4 * e, from + 4 * e, true);
      }
    }
    cp_async_commit();
  };

  // The fixed chunk's rows; walked rows are copied over the zeroed tiles (zero beyond DQK and DV).
  zero_tile(F1, kTile * ld1);
  if constexpr (R != kForward) zero_tile(F2, kTile * ld2);
  zero_tile(W1, 2 * kTile * ld1);
  zero_tile(W2, 2 * kTile * ld2);
  __syncthreads();
  copy_rows(F1, ld1, f1, p.DQK, 0, w.w1, nodes_of(chunk), 0);
  if constexpr (R != kForward) copy_rows(F2, ld2, f2, p.DV, 0, w.w2, nodes_of(chunk), 0);
  Step step;
  load(step, 0);
  Acc acc1, acc2;  // h, dq or dk; dv
  tiles::zero(acc1);
  tiles::zero(acc2);
  // The bf16 forward keeps P in registers (accumulate_pv): a partial h per warp instead of acc1.
  constexpr bool kPInRegisters = R == kForward && std::is_same_v<T, __nv_bfloat16>;
  float hpart[kPInRegisters ? 8 : 1][4] = {};
  // dMb_C (queries) or dSb_Cᵀ (keys) of this orientation: the thread's (node, in-border) entries
  // (acc8_row(e), acc8_col(e)), in its warp's row band (the rows of U its band wrote).
  Acc8 dM;
  constexpr bool kTF32 = std::is_same_v<T, __nv_bfloat16>;
  // The border products E = R Tb and W = R Sb in tf32 (bf16 inputs): measured 7 % faster in the forward
  // walk and 5 % in the walk over sources, 6 % slower in the walk over targets, which keeps FMA.
  constexpr bool kTF32Borders = kTF32 && R != kQueries;
  const bool writes_maps = R != kForward && blockIdx.y == 0;
  if (writes_maps)  // zero for the orientations whose walk from C is empty (C in the frame's corner)
    for (int o = 0; o < p.orientations; ++o)
      for (int e = tid; e < kNodes * kBorders; e += kThreads)
        (R == kQueries ? m.dMb : m.dSb)[item(m, chunks.count(), o, lbh, chunk) * kNodes * kBorders + e] = 0.f;
  // Writes dM of orientation o.
  const auto flush = [&](int o) {
    const std::int64_t at = item(m, chunks.count(), o, lbh, chunk) * kNodes * kBorders;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (R == kQueries) m.dMb[at + acc8_row(e) * kBorders + acc8_col(e)] = dM[e];
      else m.dSb[at + acc8_col(e) * kNodes + acc8_row(e)] = dM[e];
    }
  };
  int buffer = 0, orientation = -1;
  for (bool more = true; more; buffer ^= 1) {
    Step next = step;
    more = advance(next);
    cp_async_wait<0>();
    __syncthreads();  // this block's copies are in; the previous block is done with the other buffer
    if (more) load(next, buffer ^ 1);
    const float* walked_maps = map_tiles + buffer * map_tile(R);

    Acc G;
    if (step.o < 0) {
      const float* gb = m.gsum + (std::int64_t(lbh) * chunks.count() + chunk) * kNodes * kNodes;
#pragma unroll
      for (int i = 0; i < kTR; ++i)
#pragma unroll
        for (int j = 0; j < kTC; ++j) {
          const int r = tile_row(i), c = tile_col(j);
          G[i][j] = __ldg(gb + (R == kKeys ? c * kNodes + r : r * kNodes + c));
        }
    } else {
      const int o = step.o, fax = step.fax, fay = step.fay;
      float* Ecur = E + (fax & 1) * (CY + 1) * kBlock;
      const float* Eprev = E + ((fax + 1) & 1) * (CY + 1) * kBlock;
      if (o != orientation) {  // a new orientation: C's fixed map, and E(C) = I
        if (writes_maps && orientation >= 0) flush(orientation);
        orientation = o;
        const float* from = m.maps + item(m, chunks.count(), o, lbh, chunk) * kMapFloats;
        for (int e = tid; e < kNodes * kBorders; e += kThreads) {
          const int r = e / kBorders, i = e % kBorders;  // M(r, i): Mb_C, or Sb_Cᵀ for keys
          const float x = __ldg(from + (R == kKeys ? kBlock + i * kNodes + r : kTbSb + e));
          M[r * stride(kBorders) + i] = from_float<T>(x);
          if (R == kQueries) Mf[r * ldu + i] = x;
        }
        E[(fcx(o) & 1) * (CY + 1) * kBlock + fcy(o) * kBlock + tid] = tid / kBorders == tid % kBorders ? 1.f : 0.f;
#pragma unroll
        for (int e = 0; e < 4; ++e) dM[e] = 0.f;
        __syncthreads();
      }
      // R (a row per C in-border r) from the neighbours' E, then E(A) = R Tb_A and W = R Sb_A (keys: Tbᵀ
      // and Mbᵀ). float32 inputs, and the walk over targets: a thread per (r, c), E(r, c) and
      // W(r, 4c..4c+3) with 16-byte loads (keys: W(r, c + 16j) for j < 4).
      const int r = tid / kBorders, c = tid % kBorders;
      const float* Tb = walked_maps;
      const float* Sb = walked_maps + (R == kKeys ? kBorders * kKeyLd : kBlock);
      const auto load4 = [](const float* at) { return *reinterpret_cast<const float4*>(at); };
      if constexpr (kTF32Borders) {
        // bf16 inputs: [E(A) | W] = R [Tb' | S'] on the tensor cores in tf32, warp w computing W's
        // columns 8w.. and warps 0 and 1 also E's; R's columns 0..7 (from E of the right neighbour) are
        // one k-step, 8..15 (from E of the one below) the other, skipped where the neighbour is absent.
        const int lane = tiles::lane_id(), warp = tiles::warp_id(), g = lane / 4, q = lane % 4, n0 = 8 * warp;
        const float* from[2] = {fax < fcx(o) ? Eprev + fay * kBlock : nullptr,
                                fay < fcy(o) ? Ecur + (fay + 1) * kBlock : nullptr};
        const auto tb_at = [&](int i, int col) { return R == kKeys ? Tb[col * kKeyLd + i] : Tb[i * kBorders + col]; };
        const auto sb_at = [&](int i, int n) { return R == kKeys ? Sb[n * kKeyLd + i] : Sb[i * kNodes + n]; };
        float w[4] = {}, ev[4] = {};
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float* Rk = from[h];
          if (!Rk) continue;
          const int k = kL * h + q;
          const std::uint32_t a[4] = {to_tf32(Rk[g * kBorders + k]), to_tf32(Rk[(g + 8) * kBorders + k]),
                                      to_tf32(Rk[g * kBorders + k + 4]), to_tf32(Rk[(g + 8) * kBorders + k + 4])};
          mma_tf32(w, a, to_tf32(sb_at(k, n0 + g)), to_tf32(sb_at(k + 4, n0 + g)));
          if (warp < 2) mma_tf32(ev, a, to_tf32(tb_at(k, n0 + g)), to_tf32(tb_at(k + 4, n0 + g)));
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {  // rows g and g + 8, columns n0 + 2q, n0 + 2q + 1
          const int row = g + 8 * h, col = n0 + 2 * q;
          put_pair(W + row * stride(kNodes) + col, w[2 * h], w[2 * h + 1]);
          if (warp < 2) put_pair(Ecur + fay * kBlock + row * kBorders + col, ev[2 * h], ev[2 * h + 1]);
        }
      } else {
        float Rr[kBorders];
        const float4 zero4 = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
        for (int i = 0; i < kL; i += 4) {
          const float4 left = fax < fcx(o) ? load4(Eprev + fay * kBlock + r * kBorders + i) : zero4;
          const float4 top = fay < fcy(o) ? load4(Ecur + (fay + 1) * kBlock + r * kBorders + kL + i) : zero4;
          Rr[i] = left.x, Rr[i + 1] = left.y, Rr[i + 2] = left.z, Rr[i + 3] = left.w;
          Rr[kL + i] = top.x, Rr[kL + i + 1] = top.y, Rr[kL + i + 2] = top.z, Rr[kL + i + 3] = top.w;
        }
        float e = 0.f, wr[4] = {};
#pragma unroll
        for (int i0 = 0; i0 < kBorders; i0 += 4) {
          float tb[4], sb[4][4];  // Tb'(i0 + k, c); S'(i0 + k, column j of the thread's W) as sb[k][j]
          if constexpr (R == kKeys) {
            const float4 t = load4(Tb + c * kKeyLd + i0);
            tb[0] = t.x, tb[1] = t.y, tb[2] = t.z, tb[3] = t.w;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              const float4 x = load4(Sb + (c + kBorders * j) * kKeyLd + i0);
              sb[0][j] = x.x, sb[1][j] = x.y, sb[2][j] = x.z, sb[3][j] = x.w;
            }
          } else {
#pragma unroll
            for (int k = 0; k < 4; ++k) {
              tb[k] = Tb[(i0 + k) * kBorders + c];
              const float4 x = load4(Sb + (i0 + k) * kNodes + 4 * c);
              sb[k][0] = x.x, sb[k][1] = x.y, sb[k][2] = x.z, sb[k][3] = x.w;
            }
          }
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            e = fmaf(Rr[i0 + k], tb[k], e);
#pragma unroll
            for (int j = 0; j < 4; ++j) wr[j] = fmaf(Rr[i0 + k], sb[k][j], wr[j]);
          }
        }
        Ecur[fay * kBlock + r * kBorders + c] = e;
        if constexpr (R == kKeys) {
#pragma unroll
          for (int j = 0; j < 4; ++j) W[r * stride(kNodes) + c + kBorders * j] = from_float<T>(wr[j]);
        } else {
          put_pair(W + r * stride(kNodes) + 4 * c, wr[0], wr[1]);
          put_pair(W + r * stride(kNodes) + 4 * c + 2, wr[2], wr[3]);
        }
      }
      if (writes_maps) {
        // R, and X = Sb_A (keys: Mb_Aᵀ), for the gate-gradient products.
        Rs[r * ldu + c] = c < kL ? (fax < fcx(o) ? Eprev[fay * kBlock + r * kBorders + c] : 0.f)
                                 : (fay < fcy(o) ? Ecur[(fay + 1) * kBlock + r * kBorders + c] : 0.f);
        for (int x = tid; x < kBorders * kNodes; x += kThreads) {
          if constexpr (R == kKeys) {  // X(i, n) = Mb_A(n, i), read along the rows of Mb
            const int n = x / kBorders, i = x % kBorders;
            X[i * stride(kNodes) + n] = from_float<T>(Sb[n * kKeyLd + i]);
          } else {
            X[x / kNodes * stride(kNodes) + x % kNodes] = from_float<T>(Sb[x]);
          }
        }
      }
      __syncthreads();
      tiles::zero(G);
      tiles::gemm<true, true, kBorders>(G, M, stride(kBorders), W, stride(kNodes));
    }

    const T* B1 = W1 + buffer * kTile * ld1;
    const T* B2 = W2 + buffer * kTile * ld2;
    // P = x ∘ y (times the scale) into the P tile, then acc += P B(columns c0..); every thread calls it.
    const auto product = [&](Acc& out, const Acc& x, const Acc& y, float scale, const T* B, int ldb) {
#pragma unroll
      for (int i = 0; i < kTR; ++i)
#pragma unroll
        for (int j = 0; j < kTC; j += 2) {
          const int r = tile_row(i), c = tile_col(j);
          put_pair(P + r * ldp + c, scale * x[i][j] * y[i][j], scale * x[i][j + 1] * y[i][j + 1]);
        }
      band_sync();
      tiles::gemm<true, true, kTile>(out, P, ldp, B, ldb);
      if (R != kForward) band_sync();  // the forward's next P comes after the next block's first barrier
    };
    Acc S;  // Q_C K_Aᵀ (forward, queries) or K_C Q_Aᵀ (keys)
    tiles::zero(S);
    for (int k0 = 0; k0 < depth1; k0 += 16) tiles::gemm<true, false, 16>(S, F1 + k0, ld1, B1 + k0, ld1);
    if constexpr (kPInRegisters) {
      accumulate_pv(hpart, S, G, p.scale, B2, ld2);
    } else if constexpr (R == kForward) {
      product(acc1, S, G, p.scale, B2, ld2);
    } else {
      Acc dP;  // dH_C V_Aᵀ (queries) or V_C dH_Aᵀ (keys)
      tiles::zero(dP);
      for (int k0 = 0; k0 < depth2; k0 += 16) tiles::gemm<true, false, 16>(dP, F2 + k0, ld2, B2 + k0, ld2);
      if (c0 < p.DQK) product(acc1, dP, G, p.scale, B1 + c0, ld1);
      if (R == kKeys && c0 < p.DV) product(acc2, S, G, p.scale, B2 + c0, ld2);
      if (writes_maps) {
        // dG = s S ∘ dP (keys: transposed) into the P tile.
#pragma unroll
        for (int i = 0; i < kTR; ++i)
#pragma unroll
          for (int j = 0; j < kTC; j += 2) {
            const int r = tile_row(i), c = tile_col(j);
            const float d0 = p.scale * S[i][j] * dP[i][j], d1 = p.scale * S[i][j + 1] * dP[i][j + 1];
            if (step.o < 0 && R == kQueries) {
              const std::int64_t at = (std::int64_t(lbh) * chunks.count() + chunk) * kNodes * kNodes;
              tiles::store_pair(m.dGb, at + r * kNodes + c, true, d0, d1);
            } else {
              put_pair(P + r * ldp + c, d0, d1);
            }
          }
        if (step.o >= 0) {
          band_sync();
          // With U = dG Xᵀ (dG Sb_Aᵀ; keys: dG Mb_A): dMb_C += dG Wᵀ = U Rᵀ (keys: dSb_Cᵀ), and
          // D[C, A] = Mb_Cᵀ dG Sb_Aᵀ = Mb_Cᵀ U. U on the tensor cores, the rest in float32 from shared
          // memory.
          Acc8 u = {};
          gemm_abt(u, P, ldp, X, stride(kNodes));
#pragma unroll
          for (int e = 0; e < 4; ++e) U[acc8_row(e) * ldu + acc8_col(e)] = u[e];
          if (R == kQueries) __syncthreads();  // D sums over all of U's rows
          else band_sync();
          // The block's term U Rᵀ (the warp's m16n8 tile) is summed before it joins dM (shorter float32
          // sums: dG has both signs and the sum over the walk cancels). bf16 inputs: on the tensor cores
          // with U and R rounded to tf32, as D below (tf32 keeps 13 more bits than the bf16 dG in U).
          const int lane = tiles::lane_id(), g = lane / 4, q = lane % 4;
          Acc8 term = {};
          if constexpr (kTF32) {
            const int r0 = 16 * (tiles::warp_id() % 4), n0 = 8 * (tiles::warp_id() / 4);
#pragma unroll
            for (int k0 = 0; k0 < kBorders; k0 += 8) {
              const std::uint32_t a[4] = {to_tf32(U[(r0 + g) * ldu + k0 + q]), to_tf32(U[(r0 + g + 8) * ldu + k0 + q]),
                                          to_tf32(U[(r0 + g) * ldu + k0 + q + 4]),
                                          to_tf32(U[(r0 + g + 8) * ldu + k0 + q + 4])};
              mma_tf32(term, a, to_tf32(Rs[(n0 + g) * ldu + k0 + q]), to_tf32(Rs[(n0 + g) * ldu + k0 + q + 4]));
            }
          } else {
#pragma unroll
            for (int e = 0; e < 4; ++e)
#pragma unroll
              for (int c = 0; c < kBorders; ++c)
                term[e] = fmaf(U[acc8_row(e) * ldu + c], Rs[acc8_col(e) * ldu + c], term[e]);
          }
#pragma unroll
          for (int e = 0; e < 4; ++e) dM[e] += term[e];
          if constexpr (R == kQueries) {
            // D(r, c) (C's in-border r, A's out-border c) = Σ_t Mb_C(t, r) U(t, c). bf16 inputs: warps 0
            // and 1, a column half each, on the tensor cores (two chains over the 64 nodes).
            const std::int64_t pair = chunks.pair(fcx(step.o), fcy(step.o), step.fax, step.fay);
            float* to = m.D + ((std::int64_t(step.o) * m.bhs + lbh) * chunks.pairs() + pair) * kBlock;
            if constexpr (kTF32) {
              if (tiles::warp_id() < 2) {
                const int n0 = 8 * tiles::warp_id();
                float d[2][4] = {};
#pragma unroll
                for (int k = 0; k < kNodes; k += 8) {
                  const std::uint32_t a[4] = {to_tf32(Mf[(k + q) * ldu + g]), to_tf32(Mf[(k + q) * ldu + g + 8]),
                                              to_tf32(Mf[(k + q + 4) * ldu + g]), to_tf32(Mf[(k + q + 4) * ldu + g + 8])};
                  mma_tf32(d[k / 8 % 2], a, to_tf32(U[(k + q) * ldu + n0 + g]), to_tf32(U[(k + q + 4) * ldu + n0 + g]));
                }
#pragma unroll
                for (int h = 0; h < 2; ++h)
                  tiles::store_pair(to, (g + 8 * h) * kBorders + n0 + 2 * q, true, d[0][2 * h] + d[1][2 * h],
                                    d[0][2 * h + 1] + d[1][2 * h + 1]);
              }
            } else {
              const int r = tid / kBorders, c = tid % kBorders;
              float d = 0.f;
              for (int t = 0; t < kNodes; ++t) d = fmaf(Mf[t * ldu + r], U[t * ldu + c], d);
              to[tid] = d;
            }
          }
        }
      }
    }
    step = next;
  }
  if (writes_maps && orientation >= 0) flush(orientation);

  // The outputs: rows of the fixed chunk, columns c0..
  const auto nodes = nodes_of(chunk);
  const auto store = [&](void* out, int D, const Acc& a) {
    T* to = static_cast<T*>(out) + std::int64_t(bh) * N * D;
#pragma unroll
    for (int i = 0; i < kTR; ++i)
#pragma unroll
      for (int j = 0; j < kTC; j += 2) {
        const int n = nodes(tile_row(i)), c = c0 + tile_col(j);
        if (n >= 0 && c < D) tiles::store_pair(to, std::int64_t(n) * D + c, c + 1 < D, a[i][j], a[i][j + 1]);
      }
  };
  if constexpr (kPInRegisters) {
    // The two halves of each row band's sum over the sources: warps 4..7 hand theirs over through
    // shared memory (the P area, 64 x 64 floats), warps 0..3 add and store.
    float* half = reinterpret_cast<float*>(smem + layout.P);
    const int lane = tiles::lane_id(), warp = tiles::warp_id(), r0 = 16 * (warp % 4) + lane / 4;
    const auto at = [&](int nt, int e) { return (r0 + 8 * (e / 2)) * kTile + 8 * nt + 2 * (lane % 4) + e % 2; };
    __syncthreads();
    if (warp >= 4)
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) half[at(nt, e)] = hpart[nt][e];
    __syncthreads();
    if (warp < 4) {
      T* to = static_cast<T*>(p.h) + std::int64_t(bh) * N * p.DV;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
          const int n = nodes(r0 + 8 * (e / 2)), c = c0 + 8 * nt + 2 * (lane % 4);
          if (n >= 0 && c < p.DV)
            tiles::store_pair(to, std::int64_t(n) * p.DV + c, c + 1 < p.DV, hpart[nt][e] + half[at(nt, e)],
                              hpart[nt][e + 1] + half[at(nt, e + 1)]);
        }
    }
  } else if constexpr (R == kForward) {
    store(p.h, p.DV, acc1);
  }
  if constexpr (R == kQueries) store(p.dq, p.DQK, acc1);
  if constexpr (R == kKeys) store(p.dk, p.DQK, acc1), store(p.dv, p.DV, acc2);
}

// ------------------------------------------------------------------------------------------------
// The backward's chunk level and each chunk's programme.

// The chunk level: 64 threads per block, a thread per (row r, columns c4..c4 + 3) of a 16 x 16 block.
// Its blocks in shared memory have rows of kLevelLd floats, so that a warp's eight rows start in
// different banks and a thread's four columns are one 16-byte access. It keeps E of a whole cone in
// shared memory where that and two columns of Y take at most kTransitionsShared bytes (grids up to
// 64 x 64 nodes), else in the scratch (m.E, rows of 16).
constexpr int kLevelThreads = 64;
constexpr int kLevelLd = 20;
constexpr int kLevelBlock = kBorders * kLevelLd;
constexpr std::size_t kTransitionsShared = 112 * 1024;
__host__ __device__ inline bool transitions_in_shared(const Chunks& chunks) {
  return (chunks.count() + 2 * chunks.CY) * kLevelBlock * sizeof(float) <= kTransitionsShared;
}

// A block per (orientation, batch·head, target B at frame (fbx, fby)): E over B's cone (from B back to
// the frame's corner), then Y over the cone from the corner (two frame columns in shared memory) and
// the target's part of dTb_P, R_B[P]ᵀ Z[P], written over D[B, P] once Y[P] has read it.
// chunk_backward_kernel sums the parts over the targets.
__global__ void __launch_bounds__(kLevelThreads) chunk_transitions_kernel(GridParams p, MapsScratch m) {
  extern __shared__ __align__(16) float Ys[];  // [2][CY] blocks: Y of the current and the previous frame column; E
  // Tb_P of the step, read from here: by rows for the E steps, transposed for the Y steps. Each step's
  // is copied in, with D[B, P] for the Y steps, while the step before it computes.
  __shared__ __align__(16) float tb_s[2][kLevelBlock];
  const Chunks chunks(p);
  const int CX = chunks.CX, CY = chunks.CY, tid = threadIdx.x, r = tid / 4, c4 = 4 * (tid % 4);
  const std::int64_t per_orientation = std::int64_t(m.bhs) * chunks.count();
  const int o = static_cast<int>(blockIdx.x / per_orientation);
  const int lbh = static_cast<int>(blockIdx.x % per_orientation / chunks.count());
  const int fb = static_cast<int>(blockIdx.x % chunks.count()), fbx = fb / CY, fby = fb % CY;
  const std::int64_t block = (std::int64_t(o) * m.bhs + lbh) * chunks.pairs() * kBlock;
  float* D = m.D + block;  // D[B, P] in, the part of dTb_P out
  const auto slot = [&](int fx, int fy) { return chunks.pair(fbx, fby, fx, fy) * kBlock; };
  // E(P): in shared memory by P's place in the cone, or in the scratch at P's pair slot (B, P).
  const bool shared = transitions_in_shared(chunks);
  const int eld = shared ? kLevelLd : kBorders;
  float* E = shared ? Ys + 2 * CY * kLevelBlock : m.E + block;
  const auto at = [&](int fx, int fy) {
    return shared ? std::int64_t(fx * (fby + 1) + fy) * kLevelBlock : slot(fx, fy);
  };
  // R_B[P](i, j), P at frame (fx, fy): from E of P's right neighbour (j < 8) and of the one below.
  const auto Rb = [&](int fx, int fy, int i, int j) {
    if (j < kL) return fx < fbx ? E[at(fx + 1, fy) + i * eld + j] : 0.f;
    return fy < fby ? E[at(fx, fy + 1) + i * eld + j] : 0.f;
  };
  const auto load4 = [](const float* a) { return *reinterpret_cast<const float4*>(a); };
  const auto store4 = [](float* a, float4 x) { *reinterpret_cast<float4*>(a) = x; };
  const auto fma4 = [](float a, float4 b, float4& acc) {
    acc.x = fmaf(a, b.x, acc.x), acc.y = fmaf(a, b.y, acc.y), acc.z = fmaf(a, b.z, acc.z), acc.w = fmaf(a, b.w, acc.w);
  };
  // The thread's four elements of Tb_P (row r, columns c4..), and where they go in tb_s.
  const auto fetch = [&](int fx, int fy) {
    const int x = o & 1 ? CX - 1 - fx : fx, y = o & 2 ? CY - 1 - fy : fy;
    const float* tb = m.maps + item(m, chunks.count(), o, lbh, std::int64_t(x) * CY + y) * kMapFloats;
    return __ldg(reinterpret_cast<const float4*>(tb + r * kBorders + c4));
  };
  const auto put = [&](float* to, float4 x, bool transposed) {
    if (!transposed) return store4(to + r * kLevelLd + c4, x);
    to[c4 * kLevelLd + r] = x.x, to[(c4 + 1) * kLevelLd + r] = x.y;
    to[(c4 + 2) * kLevelLd + r] = x.z, to[(c4 + 3) * kLevelLd + r] = x.w;
  };
  // The E steps: B's cone from B back to the corner, frame columns from B's down; then the Y steps:
  // the cone from the corner, B excluded. next() moves (fx, fy) on; false after the last step.
  const auto next_e = [&](int& fx, int& fy) {
    if (--fy < 0) fy = fby, --fx;
    return fx >= 0;
  };
  const auto next_y = [&](int& fx, int& fy) {
    if (++fy > fby) fy = 0, ++fx;
    return fx != fbx || fy != fby;
  };
  store4(E + at(fbx, fby) + r * eld + c4, make_float4(r == c4, r == c4 + 1, r == c4 + 2, r == c4 + 3));  // E(B) = I
  int fx = fbx, fy = fby, buffer = 0;
  bool more = next_e(fx, fy);
  if (more) put(tb_s[0], fetch(fx, fy), false);
  __syncthreads();
  while (more) {
    int nx = fx, ny = fy;
    const bool next = next_e(nx, ny);
    const float4 tb_next = next ? fetch(nx, ny) : float4{};
    float4 e{};  // E(P)(r, c4..) = Σ_i R(r, i) Tb_P(i, c4..)
#pragma unroll
    for (int i = 0; i < kBorders; ++i) fma4(Rb(fx, fy, r, i), load4(tb_s[buffer] + i * kLevelLd + c4), e);
    store4(E + at(fx, fy) + r * eld + c4, e);
    if (next) put(tb_s[buffer ^ 1], tb_next, false);
    __syncthreads();
    buffer ^= 1, fx = nx, fy = ny, more = next;
  }
  const auto Ycol = [&](int x) { return Ys + (x & 1) * CY * kLevelBlock; };  // Y of frame column x
  fx = 0, fy = 0, more = fbx != 0 || fby != 0;
  float4 d{};  // D[B, P](r, c4..) of the step
  if (more) put(tb_s[buffer], fetch(0, 0), true), d = load4(D + slot(0, 0) + r * kBorders + c4);
  __syncthreads();
  while (more) {
    int nx = fx, ny = fy;
    const bool next = next_y(nx, ny);
    const float4 tb_next = next ? fetch(nx, ny) : float4{};
    const float4 d_next = next ? load4(D + slot(nx, ny) + r * kBorders + c4) : float4{};
    // Z[P](i, j): Y of P's left neighbour for j < 8, of the one above for the rest (absent: 0).
    const float* left = fx > 0 ? Ycol(fx - 1) + fy * kLevelBlock : nullptr;
    const float* above = fy > 0 ? Ycol(fx) + (fy - 1) * kLevelBlock : nullptr;
    const float* mine = c4 < kL ? left : above;  // the columns c4.. of Z
    float4 y = d, dt{};  // Y(P)(r, c) = D(r, c) + Σ_i Z(r, i) Tb_P(c, i);  dTb part (r, c) = Σ_i R(i, r) Z(i, c)
#pragma unroll
    for (int i = 0; i < kBorders; ++i) {
      const float* z = i < kL ? left : above;
      fma4(z ? z[r * kLevelLd + i] : 0.f, load4(tb_s[buffer] + i * kLevelLd + c4), y);
      fma4(Rb(fx, fy, i, r), mine ? load4(mine + i * kLevelLd + c4) : float4{}, dt);
    }
    store4(Ycol(fx) + fy * kLevelBlock + r * kLevelLd + c4, y);
    store4(D + slot(fx, fy) + r * kBorders + c4, dt);
    if (next) put(tb_s[buffer ^ 1], tb_next, true);
    __syncthreads();
    buffer ^= 1, fx = nx, fy = ny, d = d_next, more = next;
  }
}

// A block per (batch·head, chunk), a thread per coefficient as in chunk_maps_kernel: per orientation
// the programme forwards (its edge coefficients kept in shared memory), then backwards from the
// gradients of its outputs, d_out = [dTb | dSb] (by out-border) and d_mark = [dMb | dGb] (by node):
//   dT, dM of a node: Σ over the coefficients of (its out-edges' and output's gradient) x (its
//   in-edges' coefficient); dS, dD: the gradient at the node's own coefficient; the in-edges'
//   gradients: the node's gates times its out-edges' and output's gradients.
struct BackwardShared {
  float g[9][kNodes];
  float right[kNodes][kWidth];  // the right out-edge coefficients, by frame-local node
  float sums[3][kNodes][6];     // per warp: the sums over coefficients for Trl, Tru, Tdu, Tdl, Ml, Mu
  float own_terms[kNodes][3];   // Sr, Sd, D
  float d_out[kBorders][kWidth];   // [dTb | dSb], by out-border
  float d_mark[kNodes][kWidth];    // [dMb | dGb], by node (own order)
};

__global__ void __launch_bounds__(kProgrammeThreads) chunk_backward_kernel(GridBackwardParams p, MapsScratch m) {
  extern __shared__ __align__(16) unsigned char smem[];
  BackwardShared& sh = *reinterpret_cast<BackwardShared*>(smem);
  auto& sums = sh.sums;
  auto& own_terms = sh.own_terms;
  const Chunks chunks(p);
  const std::int64_t chunk = blockIdx.x % chunks.count();
  const int lbh = static_cast<int>(blockIdx.x / chunks.count()), bh = m.bh0 + lbh;
  const int cx = static_cast<int>(chunk / chunks.CY), cy = static_cast<int>(chunk % chunks.CY);
  const int lane = threadIdx.x, warp = lane / 32;
  const float* dGb = m.dGb + (std::int64_t(lbh) * chunks.count() + chunk) * kNodes * kNodes;
  for (int e = lane; e < kNodes * kNodes / 4; e += blockDim.x)
    cp_async16(&sh.d_mark[e / (kNodes / 4)][kBorders + 4 * (e % (kNodes / 4))], dGb + 4 * e, true);
  for (int o = 0; o < p.orientations; ++o) {
    const std::int64_t at = item(m, chunks.count(), o, lbh, chunk);
    const float* dSb = m.dSb + at * kBorders * kNodes;
    const float* dMb = m.dMb + at * kNodes * kBorders;
    __syncthreads();
    for (int e = lane; e < kBorders * kNodes / 4; e += blockDim.x) {
      cp_async16(&sh.d_out[e / (kNodes / 4)][kBorders + 4 * (e % (kNodes / 4))], dSb + 4 * e, true);
      cp_async16(&sh.d_mark[e / (kBorders / 4)][4 * (e % (kBorders / 4))], dMb + 4 * e, true);
    }
    cp_async_commit();
    stage_gates(p, o, bh, cx, cy, sh.g);
    // dTb: the sum of the targets' parts (chunk_transitions_kernel), targets in frame raster order
    // from this chunk's frame place (fx, fy) on, itself excluded; eight parts' loads in flight at once.
    const int fx = o & 1 ? chunks.CX - 1 - cx : cx, fy = o & 2 ? chunks.CY - 1 - cy : cy;
    const float* parts = m.D + (std::int64_t(o) * m.bhs + lbh) * chunks.pairs() * kBlock;
    if (lane < kBlock / 4) {
      const int w = chunks.CY - fy, targets = (chunks.CX - fx) * w;
      float4 dtb = make_float4(0.f, 0.f, 0.f, 0.f);
      for (int t0 = 1; t0 < targets; t0 += 8) {
        float4 part[8];
#pragma unroll
        for (int u = 0; u < 8; ++u) {
          const int t = t0 + u;
          part[u] = t < targets ? __ldg(reinterpret_cast<const float4*>(
                                      parts + chunks.pair(fx + t / w, fy + t % w, fx, fy) * kBlock) + lane)
                                : make_float4(0.f, 0.f, 0.f, 0.f);
        }
#pragma unroll
        for (int u = 0; u < 8; ++u) dtb.x += part[u].x, dtb.y += part[u].y, dtb.z += part[u].z, dtb.w += part[u].w;
      }
      *reinterpret_cast<float4*>(&sh.d_out[lane / (kBorders / 4)][4 * (lane % (kBorders / 4))]) = dtb;
    }
    cp_async_wait<0>();
    __syncthreads();
    const auto& g = sh.g;
    const bool active = lane < kWidth;
    if (active)
      chunk_programme(g, o, lane, [&](int x, int y, int, float, float, float r, float, float) {
        sh.right[x * kL + y][lane] = r;
      });
    // d_out and d_mark of this coefficient.
    const auto d_out = [&](int row) { return active ? sh.d_out[row][lane] : 0.f; };
    const auto d_mark = [&](int own) { return active ? sh.d_mark[own][lane] : 0.f; };
    float d_right[kL];  // the gradients of the current frame column's right out-edges
#pragma unroll
    for (int y = 0; y < kL; ++y) d_right[y] = d_out(y);
#pragma unroll
    for (int x = kL - 1; x >= 0; --x) {
      // The column's in-edge coefficients: the left ones stored by the programme, the top ones from
      // the column's down chain run again (d as chunk_programme computes it).
      float left_in[kL], top_in[kL];
      float down = active && lane == kL + x ? 1.f : 0.f;
#pragma unroll
      for (int y = 0; y < kL; ++y) {
        const int n = x * kL + y;
        left_in[y] = !active ? 0.f : x > 0 ? sh.right[n - kL][lane] : (lane == y ? 1.f : 0.f);
        top_in[y] = down;
        const float unit = lane == kBorders + own_index(o, x, y) ? 1.f : 0.f;
        down = g[kTdu][n] * top_in[y] + g[kTdl][n] * left_in[y] + g[kSd][n] * unit;
      }
      float d_down = d_out(kL + x);
#pragma unroll
      for (int y = kL - 1; y >= 0; --y) {
        const int n = x * kL + y, own = own_index(o, x, y);
        const float dr = d_right[y], dd = d_down, dm = d_mark(own);
        const float terms[6] = {dr * left_in[y], dr * top_in[y], dd * top_in[y], dd * left_in[y], dm * left_in[y],
                                dm * top_in[y]};
        // The warp's sums of the six terms, halving the values a lane carries at each of the first
        // three steps: lane l ends with the sum of term 4·l[4] + 2·l[3] + l[2] (l[b]: bit b of l).
        const bool b4 = lane & 16, b3 = lane & 8, b2 = lane & 4;
        float u[4], v[2];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float lo = terms[i], hi = i + 4 < 6 ? terms[i + 4] : 0.f;
          u[i] = (b4 ? hi : lo) + __shfl_xor_sync(0xffffffffu, b4 ? lo : hi, 16);
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) v[i] = (b3 ? u[i + 2] : u[i]) + __shfl_xor_sync(0xffffffffu, b3 ? u[i] : u[i + 2], 8);
        float sum = (b2 ? v[1] : v[0]) + __shfl_xor_sync(0xffffffffu, b2 ? v[0] : v[1], 4);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        const int k = 4 * b4 + 2 * b3 + b2;
        if (lane % 4 == 0 && k < 6) sums[warp][n][k] = sum;
        if (lane == kBorders + own) own_terms[n][0] = dr, own_terms[n][1] = dd, own_terms[n][2] = dm;
        d_right[y] = g[kTrl][n] * dr + g[kTdl][n] * dd + g[kMl][n] * dm;  // the left in-edge's, for column x - 1
        d_down = g[kTru][n] * dr + g[kTdu][n] * dd + g[kMu][n] * dm;     // the top in-edge's, for row y - 1
      }
    }
    __syncthreads();
    if (lane < kNodes) {
      const int n = lane, own = own_index(o, n / kL, n % kL);
      const int i = cx * kL + own / kL, j = cy * kL + own % kL;
      if (i < p.X && j < p.Y) {
        const std::int64_t node = (std::int64_t(o) * p.B * p.NH + bh) * p.X * p.Y + std::int64_t(i) * p.Y + j;
        constexpr Gate kSummed[6] = {kTrl, kTru, kTdu, kTdl, kMl, kMu};
#pragma unroll
        for (int k = 0; k < 6; ++k) p.dgates[kSummed[k]][node] = sums[0][n][k] + sums[1][n][k] + sums[2][n][k];
        p.dgates[kSr][node] = own_terms[n][0];
        p.dgates[kSd][node] = own_terms[n][1];
        p.dgates[kD][node] = own_terms[n][2];
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Launchers.

// The scratch floats per (batch·head) item.
std::int64_t floats_per_item(const GridParams& p, bool backward) {
  const Chunks chunks(p);
  const std::int64_t c = chunks.count(), o = p.orientations;
  std::int64_t floats = o * c * kMapFloats + c * kNodes * kNodes;
  if (backward)
    floats += 2 * o * c * kNodes * kBorders + c * kNodes * kNodes +
              (transitions_in_shared(chunks) ? 1 : 2) * o * chunks.pairs() * kBlock;
  return floats;
}

// The items of a wave: all of them, or as many as keep the scratch within kScratchBudget bytes.
constexpr std::int64_t kScratchBudget = std::int64_t{1} << 30;
int wave_items(const GridParams& p, bool backward) {
  const std::int64_t items = std::int64_t(p.B) * p.NH;
  const std::int64_t fit = kScratchBudget / (4 * floats_per_item(p, backward));
  return static_cast<int>(std::max<std::int64_t>(1, std::min(items, fit)));
}

MapsScratch carve(const GridParams& p, float* scratch, bool backward, int bh0, int bhs) {
  const Chunks chunks(p);
  const std::int64_t bhc = chunks.count() * bhs, o = p.orientations;
  MapsScratch m;
  m.bh0 = bh0, m.bhs = bhs;
  float* at = scratch;
  const auto take = [&](float*& to, std::int64_t floats) { to = at, at += floats; };
  take(m.maps, o * bhc * kMapFloats);
  take(m.gsum, bhc * kNodes * kNodes);
  if (backward) {
    take(m.dMb, o * bhc * kNodes * kBorders);
    take(m.dSb, o * bhc * kNodes * kBorders);
    take(m.dGb, bhc * kNodes * kNodes);
    take(m.D, o * bhs * chunks.pairs() * kBlock);
    if (!transitions_in_shared(chunks)) take(m.E, o * bhs * chunks.pairs() * kBlock);
  }
  return m;
}

template <Role R, class T>
void launch_walk(const GridBackwardParams& p, const MapsScratch& m, cudaStream_t stream) {
  const Chunks chunks(p);
  const Layout layout(R, p.DQK, p.DV, chunks.CY, sizeof(T));
  check_cuda(cudaFuncSetAttribute(walk_kernel<R, T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(layout.bytes)),
             "pLSTM grid chunk-map walk: shared memory");
  const int columns = R == kForward ? p.DV : R == kQueries ? p.DQK : std::max(p.DQK, p.DV);
  const dim3 grid(static_cast<unsigned>(chunks.count() * m.bhs), static_cast<unsigned>((columns + kTile - 1) / kTile));
  walk_kernel<R, T><<<grid, kThreads, layout.bytes, stream>>>(p, m);
  check_cuda(cudaGetLastError(), "pLSTM grid chunk-map walk");
}

// Per wave of items: the chunk maps, then the forward's walk, or the backward's walks, chunk level and
// chunk programmes.
template <class T>
void run(const GridBackwardParams& p, float* scratch, bool backward, cudaStream_t stream) {
  const Chunks chunks(p);
  const int items = p.B * p.NH, bhs = wave_items(p, backward);
  for (int bh0 = 0; bh0 < items; bh0 += bhs) {
    const MapsScratch m = carve(p, scratch, backward, bh0, std::min(bhs, items - bh0));
    const auto blocks = [&](std::int64_t per_item) { return static_cast<unsigned>(per_item * m.bhs); };
    chunk_maps_kernel<<<blocks(chunks.count()), kProgrammeThreads, 0, stream>>>(p, m);
    check_cuda(cudaGetLastError(), "pLSTM grid chunk maps");
    if (!backward) {
      launch_walk<kForward, T>(p, m, stream);
      continue;
    }
    launch_walk<kQueries, T>(p, m, stream);
    launch_walk<kKeys, T>(p, m, stream);
    const int transitions_smem = static_cast<int>(
        (2 * chunks.CY + (transitions_in_shared(chunks) ? chunks.count() : 0)) * kLevelBlock * sizeof(float));
    check_cuda(cudaFuncSetAttribute(chunk_transitions_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, transitions_smem),
               "pLSTM grid chunk transitions: shared memory");
    chunk_transitions_kernel<<<blocks(p.orientations * chunks.count()), kLevelThreads, transitions_smem, stream>>>(p, m);
    check_cuda(cudaGetLastError(), "pLSTM grid chunk transitions");
    check_cuda(cudaFuncSetAttribute(chunk_backward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(sizeof(BackwardShared))),
               "pLSTM grid chunk backward: shared memory");
    chunk_backward_kernel<<<blocks(chunks.count()), kProgrammeThreads, sizeof(BackwardShared), stream>>>(p, m);
    check_cuda(cudaGetLastError(), "pLSTM grid chunk backward");
  }
}

}  // namespace

std::int64_t grid_maps_scratch_floats(const GridParams& p, bool backward) {
  return wave_items(p, backward) * floats_per_item(p, backward);
}

bool grid_maps_fits(const GridParams& p, DType dtype, bool backward) {
  const Chunks chunks(p);
  const std::size_t es = element_size(dtype);
  const auto fits = [&](Role role) { return Layout(role, p.DQK, p.DV, chunks.CY, es).bytes <= kMaxShared; };
  return chunks.count() * p.B * p.NH <= INT_MAX && 4 * floats_per_item(p, backward) <= kScratchBudget &&
         (backward ? fits(kQueries) && fits(kKeys) : fits(kForward));
}

void run_grid_forward_maps(const GridParams& p, DType dtype, float* scratch, cudaStream_t stream) {
  GridBackwardParams b;
  static_cast<GridParams&>(b) = p;
  if (dtype == DType::float32) run<float>(b, scratch, false, stream);
  else run<__nv_bfloat16>(b, scratch, false, stream);
}

void run_grid_backward_maps(const GridBackwardParams& p, DType dtype, float* scratch, cudaStream_t stream) {
  if (dtype == DType::float32) run<float>(p, scratch, true, stream);
  else run<__nv_bfloat16>(p, scratch, true, stream);
}

}  // namespace flashlstm::cuda::plstm::detail
