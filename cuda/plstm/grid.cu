// The pLSTM forward on 2-D grids on the GPU (cuda/plstm/plstm.hpp) where the chunk-map kernels
// (grid_maps.cu) do not fit: per orientation the parallel form
//
//   h_t = s · Σ_n G(t, n) (q_t · k_n) v_n,   G(t, n) = Σ over the grid paths n → t of S · Π T · M
//                                                     (+ D_t where n = t),
//
// with G built on chip a 64 x 64 tile at a time and never stored.
//
// One block (256 threads) per (batch·head, tile of 64 target nodes t, 64 columns of v). For each
// orientation it walks the source nodes n in reverse topological order of that orientation (its x
// descending, then its y descending), 64 at a time, and for each such source block:
//
//   1. two warps run the reverse dynamic programme: thread t carries, for its target t, the path
//      weights from the right edge and from the down edge of the current source (x, y) to t,
//          W^r(x, y) = [(x+1, y) = t] M^l_t + T^rl(x+1, y) W^r(x+1, y) + T^dl(x+1, y) W^d(x+1, y)
//          W^d(x, y) = [(x, y+1) = t] M^u_t + T^du(x, y+1) W^d(x, y+1) + T^ru(x, y+1) W^r(x, y+1)
//      (the edge to the right of (x, y) enters (x+1, y) from the left, the edge below enters (x, y+1)
//      from the top). A node pushes its terms to the two nodes that read them, with its own gates:
//      T^rl W^r + T^dl W^d into a column array for (x-1, y), T^du W^d + T^ru W^r into a register for
//      (x, y-1), so a block needs only the gates of its own 64 sources. The thread writes
//          G(t, n) = S^r(n) W^r(n) + S^d(n) W^d(n)  (+ D_t where n = t);
//      meanwhile the other six warps copy the block's k and v rows (cp.async) and stage the next
//      block's gates;
//   2. all eight warps: S = Q_tile K_block^T, P = s · S ∘ G, h_tile += P V_block (tiles.cuh: the
//      tensor cores for bf16 with P as hi + lo bf16 terms, FMA for float32).
//
// Coordinates in the programme are the orientation's ("frame"): frame (xf, yf) is the node
// (X-1-xf if o & 1 else xf, Y-1-yf if o & 2 else yf), where the orientation's gates are read.
// A target's weights are zero outside its cone (sources up and left of it in the frame), so every
// target of the tile runs the same loop; the loop starts at the frame column of the tile's last target.
#include "cuda/plstm/grid.cuh"

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

namespace flashlstm::cuda::plstm::detail {
namespace {

// The gates the programme reads at each source, staged per block of 64 sources (two buffers).
enum Staged { kStSr, kStSd, kStTrl, kStTdl, kStTdu, kStTru, kStaged };

// The shared memory of one block, in bytes from its start.
struct Layout {
  std::size_t Q, K, V, P, G, gates, col, bytes;
  __host__ __device__ Layout(int DQK, int Y, std::size_t element) {
    const std::size_t ldk = stride(padded_dqk(DQK)), ldv = stride(kTile);
    Q = 0;
    K = Q + align16(kTile * ldk * element);
    V = K + align16(kTile * ldk * element);
    P = V + align16(kTile * ldv * element);
    G = P + align16((element == 4 ? 1 : 2) * kTile * ldv * element);
    gates = G + align16(kPaths * kLdG * sizeof(float));
    col = gates + align16(2 * kStaged * kTile * sizeof(float));
    bytes = col + align16(std::size_t(Y) * kPaths * sizeof(float));
  }
};

template <class T>
__global__ void __launch_bounds__(kThreads, 3) grid_forward_kernel(GridParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int N = p.X * p.Y, tiles_per_head = (N + kTile - 1) / kTile;
  const int bh = blockIdx.x / tiles_per_head, n0 = (blockIdx.x % tiles_per_head) * kTile;
  const int dv0 = blockIdx.y * kTile;
  const int DQKp = padded_dqk(p.DQK), ldk = stride(DQKp), ldv = stride(kTile);
  const Layout layout(p.DQK, p.Y, sizeof(T));
  T* Q = reinterpret_cast<T*>(smem + layout.Q);
  T* K = reinterpret_cast<T*>(smem + layout.K);
  T* V = reinterpret_cast<T*>(smem + layout.V);
  const tiles::Split<T> P = tiles::split_at(reinterpret_cast<T*>(smem + layout.P), kTile * ldv);
  float* G = reinterpret_cast<float*>(smem + layout.G);
  float* staged = reinterpret_cast<float*>(smem + layout.gates);  // [2][kStaged][kTile]
  float* col = reinterpret_cast<float*>(smem + layout.col);       // [Y][kPaths]

  const T* q = static_cast<const T*>(p.q) + std::int64_t(bh) * N * p.DQK;
  const T* k = static_cast<const T*>(p.k) + std::int64_t(bh) * N * p.DQK;
  const T* v = static_cast<const T*>(p.v) + std::int64_t(bh) * N * p.DV;
  const int tid = threadIdx.x;

  // The tile's queries; k and v blocks are copied over the zeroed tiles (zero beyond N, DQK and DV).
  zero_tile(Q, kTile * ldk);
  zero_tile(K, kTile * ldk);
  zero_tile(V, kTile * ldv);
  __syncthreads();
  copy_rows(Q, ldk, q, p.DQK, 0, DQKp, [&](int r) { return n0 + r < N ? n0 + r : -1; }, 0);
  cp_async_commit();
  cp_async_wait<0>();
  Acc acc;
  tiles::zero(acc);

  const int t = tid, target = n0 + t;  // the dynamic programme's thread t (t < kPaths)
  for (int o = 0; o < p.orientations; ++o) {
    const Frame f(p, o);
    const std::int64_t base = (std::int64_t(o) * p.B * p.NH + bh) * N;
    // The source at frame position pos (none beyond N).
    auto source = [&](int pos) { return pos < N ? f.node(p.X - 1 - pos / p.Y, p.Y - 1 - pos % p.Y) : -1; };
    // Stages the programme's gates of the 64 sources from position pb on, by threads [first, kThreads).
    auto stage = [&](float* to, int pb, int first) {
      constexpr Gate kOrder[kStaged] = {kSr, kSd, kTrl, kTdl, kTdu, kTru};
      for (int e = tid - first; e < kStaged * kTile; e += kThreads - first) {
        const int n = source(pb + e % kTile);
        to[e] = n >= 0 ? __ldg(p.gates[kOrder[e / kTile]] + base + n) : 0.f;
      }
    };
    // The frame position of the tile's targets: the loop starts at the column of the last one.
    const int xf_max = f.xf_max(n0, min(n0 + kTile, N));
    const int p_first = (p.X - 1 - xf_max) * p.Y;
    // Thread t's target in the frame (none beyond N), its marks and direct gate, and the running
    // frame position of the programme.
    int xt = -2, yt = -2, xf = xf_max, yf = p.Y - 1;
    float Ml = 0.f, Mu = 0.f, Dt = 0.f;
    float carry = 0.f;  // T^du W^d + T^ru W^r of the node below the current one in the frame
    if (t < kPaths) {
      if (target < N) {
        xt = f.xf_of_node(target), yt = f.yf_of_node(target);
        Ml = __ldg(p.gates[kMl] + base + target), Mu = __ldg(p.gates[kMu] + base + target);
        Dt = __ldg(p.gates[kD] + base + target);
      }
      for (int y = 0; y < p.Y; ++y) col[y * kPaths + t] = 0.f;  // nothing right of the first column
    }
    stage(staged, p_first, 0);
    __syncthreads();
    int buffer = 0;
    for (int pb = p_first; pb < N; pb += kTile, buffer ^= 1) {
      if (t < kPaths) {
        // 1. The reverse dynamic programme over the block's sources, four at a time: their gates
        //    (and, where a column has at least four nodes, their column entries) are read before
        //    any of the four writes, so that the shared-memory loads overlap instead of waiting
        //    for each other. Positions beyond N have zero gates and write zero into G.
        const float* g = staged + buffer * kStaged * kTile;
        for (int j0 = 0; j0 < kTile; j0 += 4) {
          int xs[4], ys[4];
          float gs[4][kStaged], cl[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            xs[i] = xf, ys[i] = yf;
            if (--yf < 0) yf = p.Y - 1, --xf;
#pragma unroll
            for (int k = 0; k < kStaged; ++k) gs[i][k] = g[k * kTile + j0 + i];
          }
          if (p.Y >= 4) {
#pragma unroll
            for (int i = 0; i < 4; ++i) cl[i] = col[ys[i] * kPaths + t];
          }
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int x = xs[i], y = ys[i];
            if (y == p.Y - 1) carry = 0.f;  // a new column: nothing below its last node
            const float c = p.Y >= 4 ? cl[i] : col[y * kPaths + t];
            const float wr = c + (x + 1 == xt && y == yt ? Ml : 0.f);
            const float wd = carry + (x == xt && y + 1 == yt ? Mu : 0.f);
            col[y * kPaths + t] = gs[i][kStTrl] * wr + gs[i][kStTdl] * wd;
            carry = gs[i][kStTdu] * wd + gs[i][kStTru] * wr;
            const float Gtn = gs[i][kStSr] * wr + gs[i][kStSd] * wd + (x == xt && y == yt ? Dt : 0.f);
            G[t * kLdG + j0 + i] = pb + j0 + i < N ? Gtn : 0.f;
          }
        }
      } else {
        // Meanwhile: the block's keys and values (rows in source order), and the next block's gates.
        const auto block_source = [&](int r) { return source(pb + r); };
        copy_rows(K, ldk, k, p.DQK, 0, DQKp, block_source, kPaths);
        copy_rows(V, ldv, v, p.DV, dv0, kTile, block_source, kPaths);
        cp_async_commit();
        if (pb + kTile < N) stage(staged + (buffer ^ 1) * kStaged * kTile, pb + kTile, kPaths);
        cp_async_wait<0>();
      }
      __syncthreads();
      // 2. P = s · (Q K^T) ∘ G, then h += P V.
      Acc s;
      tiles::zero(s);
      for (int k0 = 0; k0 < DQKp; k0 += 16) tiles::gemm<true, false, 16>(s, Q + k0, ldk, K + k0, ldk);
#pragma unroll
      for (int i = 0; i < kTR; ++i)
#pragma unroll
        for (int j = 0; j < kTC; j += 2) {
          const int r = tile_row(i), c = tile_col(j);
          P.set_pair(r * ldv + c, true, p.scale * s[i][j] * G[r * kLdG + c], p.scale * s[i][j + 1] * G[r * kLdG + c + 1]);
        }
      __syncthreads();
      tiles::gemm<true, true, kTile>(acc, P, ldv, V, ldv);
      __syncthreads();
    }
  }
  T* h = static_cast<T*>(p.h) + std::int64_t(bh) * N * p.DV;
#pragma unroll
  for (int i = 0; i < kTR; ++i)
#pragma unroll
    for (int j = 0; j < kTC; j += 2) {
      const int r = tile_row(i), c = dv0 + tile_col(j);
      if (n0 + r < N && c < p.DV) tiles::store_pair(h, std::int64_t(n0 + r) * p.DV + c, c + 1 < p.DV, acc[i][j], acc[i][j + 1]);
    }
}

template <class T>
void launch(const GridParams& p, cudaStream_t stream) {
  const Layout layout(p.DQK, p.Y, sizeof(T));
  check_cuda(cudaFuncSetAttribute(grid_forward_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(layout.bytes)),
             "pLSTM grid forward: shared memory");
  const std::int64_t tiles_per_head = (std::int64_t(p.X) * p.Y + kTile - 1) / kTile;
  const dim3 grid(static_cast<unsigned>(tiles_per_head * p.B * p.NH), static_cast<unsigned>((p.DV + kTile - 1) / kTile));
  grid_forward_kernel<T><<<grid, kThreads, layout.bytes, stream>>>(p);
  check_cuda(cudaGetLastError(), "pLSTM grid forward");
}

}  // namespace

int grid_max_Y(int DQK, DType dtype) {
  const std::size_t element = element_size(dtype);
  const std::size_t fixed = Layout(DQK, 0, element).bytes;
  return fixed >= kMaxShared ? 0 : static_cast<int>((kMaxShared - fixed) / (kPaths * sizeof(float)));
}

void run_grid_forward(const GridParams& p, DType dtype, cudaStream_t stream) {
  if (dtype == DType::float32) launch<float>(p, stream);
  else launch<__nv_bfloat16>(p, stream);
}

}  // namespace flashlstm::cuda::plstm::detail
