// The sLSTM / LSTM kernels for bf16 inputs with head dims up to 64: the recurrent products on the
// tensor cores (mma.sync m16n8k16, bf16 operands, float32 accumulation), the cells in float32
// (cells.cuh). One CTA per (head, tile of 8 batch rows) runs the whole sequence with DH / 8 warps;
// the 8 rows are the N of the product, so a CTA costs the same for 1 row as for 8.
//
// Who holds what. Warp w owns the units d ∈ [8w, 8w + 8) of all four gates: a thread (g = lane / 4,
// q = lane % 4) owns units (d = 8w + g, batch rows 2q and 2q + 1), and for them
//   forward: the rows (i, f, z, o) × d of R as mma A fragments in registers for all T. Its two
//     16-row tiles are [i; f] and [z; o] over d ∈ [8w, 8w + 8), so the accumulators of one thread
//     hold exactly the four pre-activations of its two units: the cell needs no exchange.
//   backward: the same 32 gate rows as the K of Rᵀ dg̃_t (A = Rᵀ restricted to them), so the dg̃ a
//     thread computes is already in the warp that multiplies it; the warps' partial sums over their
//     K slices are added through shared memory.
//
// Forward, per step t: the B fragments of h_{t-1} (bf16, shared memory), g̃_t = (Wx_t + b) + R h_{t-1}
// in two accumulator chains, the cells, h_t in bf16 into the other half of a double buffer, one
// barrier. Wx arrives kRing steps ahead through cp.async. States and g̃ (for the backward) go to
// global memory as they are computed; nothing waits for those stores.
// Backward, per step t (down from T - 1): δh_t = dh_t + the warps' partial sums of Rᵀ dg̃_{t+1}; the
// cell's backward from the activations computed one step earlier (off the chain); dg̃_t to dWx and
// (bf16) to the warp's operand buffer; the warp's product into its partial sums; the activations of
// step t - 1; one barrier. g̃, the states before t and dh_t arrive kRingBack steps ahead.
//
// Arithmetic: every operand of the recurrent products is bf16 (R as given, h_{t-1} and dg̃_t rounded),
// accumulation and everything else float32 — a plain bf16 computation (Operands::bf16 in the CPU
// reference is the same arithmetic and the baseline these kernels are checked against); the cells'
// exponentials, logarithms and divisions are the SFU's (cells.cuh's Fast: ~2^-21, far below bf16's
// 2^-9), which cuts the cells' instructions, the step's largest part, by about half.
#include "cuda/device.cuh"
#include "cuda/mlstm/tiles.cuh"
#include "cuda/slstm/cells.cuh"
#include "cuda/slstm/params.hpp"

#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>

namespace flashlstm::cuda::slstm::detail {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kCols = 8;       // batch rows per CTA: the N of m16n8k16
constexpr int kRing = 8;       // forward: steps of Wx in flight
constexpr int kRingBack = 8;   // backward: steps of inputs in flight (the activations need two ready)

template <int DH>
constexpr int kWarps = DH / 8;
template <int DH>
constexpr int kThreads = 32 * kWarps<DH>;  // = 4·DH
template <int DH>
constexpr int kKTiles = DH / 16;  // 16-wide slices of the forward's K (= DH)

// A thread's place in the tile (see above).
struct Place {
  int w, g, q, d;
};
__device__ __forceinline__ Place place() {
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
  return {w, lane / 4, lane % 4, 8 * w + lane / 4};
}

__device__ __forceinline__ std::uint32_t load_pair(const bf16* at) { return *reinterpret_cast<const std::uint32_t*>(at); }

// 16 bytes global → shared, asynchronously: one copy where both are 16-byte aligned, else four of 4
// bytes; zeros where `valid` is false.
__device__ __forceinline__ void copy16(void* smem, const void* g, bool valid, bool aligned16) {
  if (aligned16) {
    cp_async16(smem, g, valid);
  } else if (valid) {
    for (int i = 0; i < 4; ++i) cp_async4(static_cast<char*>(smem) + 4 * i, static_cast<const char*>(g) + 4 * i);
  } else {
    *static_cast<uint4*>(smem) = make_uint4(0, 0, 0, 0);
  }
}

// ---------------------------------------------------------------------------------------------
// Forward.

template <int DH>
struct ForwardSmem {
  bf16 h[2][kCols][DH + 8];           // h_{t-1}, the product's operand; row stride DH + 8: no bank conflicts
  bf16 wx[kRing][kCols][4 * DH + 8];  // Wx_t of the next steps: [n][gate·DH + d]
};

// Each thread copies one 16-byte piece (8 elements) of every step's Wx into the ring: row n, gate,
// units 8c .. 8c + 7. Where it comes from at step 0 and goes in a slot is fixed: step t adds t·4·HD.
template <int DH>
struct WxPiece {
  const bf16* src;  // step 0's piece (row 0's where the row is past B)
  int dst;          // offset in a slot
  bool valid;       // the row exists
  __device__ WxPiece(const Params& p, int head, int b0) {
    const int e = threadIdx.x, n = e / (DH / 2), gate = e % (DH / 2) / (DH / 8), c = e % (DH / 8);
    valid = b0 + n < p.B;
    src = static_cast<const bf16*>(p.Wx) + (static_cast<std::int64_t>(valid ? b0 + n : 0) * p.T * 4 + gate) * p.NH * DH +
          head * DH + 8 * c;
    dst = n * (4 * DH + 8) + gate * DH + 8 * c;
  }
  __device__ void fetch(const Params& p, bf16 (*slot)[4 * DH + 8], int t) const {
    if (t < p.T) copy16(&slot[0][0] + dst, src + static_cast<std::int64_t>(t) * 4 * p.NH * DH, valid, p.aligned16);
  }
};

template <int DH, CellKind kCell>
__global__ void __launch_bounds__(kThreads<DH>, 1) forward_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto& s = *reinterpret_cast<ForwardSmem<DH>*>(smem_raw);
  const Place at = place();
  const int head = blockIdx.x, b0 = blockIdx.y * kCols;
  const std::int64_t HD = static_cast<std::int64_t>(p.NH) * DH;
  constexpr int NS = kCell == CellKind::lstm ? 2 : 4;

  // R's rows (gate, d) for gate tiles [i; f] (mt = 0) and [z; o] (mt = 1), as A fragments; the bias.
  const bf16* R = static_cast<const bf16*>(p.R);
  std::uint32_t Ra[2][kKTiles<DH>][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int kt = 0; kt < kKTiles<DH>; ++kt)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int gate = 2 * mt + (r & 1), col = 16 * kt + 2 * at.q + 8 * (r >> 1);
        const bf16* row = R + ((static_cast<std::int64_t>(gate) * p.NH + head) * DH + at.d) * DH;
        Ra[mt][kt][r] = pack_bf16(row[col], row[col + 1]);
      }
  float bias[4];
#pragma unroll
  for (int gate = 0; gate < 4; ++gate)
    bias[gate] = to_float(static_cast<const bf16*>(p.b)[(static_cast<std::int64_t>(gate) * p.NH + head) * DH + at.d]);

  // The units' states in registers, h_{-1} into the operand buffer.
  CellState cs[2];
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int n = 2 * at.q + u;
    float h0 = 0.f;
    if (p.initial && b0 + n < p.B) {
      const std::int64_t i = static_cast<std::int64_t>(b0 + n) * HD + head * DH + at.d, S = p.B * HD;
      h0 = p.initial[i];
      cs[u].c = p.initial[S + i];
      if (NS == 4) cs[u].n = p.initial[2 * S + i], cs[u].m = p.initial[3 * S + i];
    }
    s.h[0][n][at.d] = __float2bfloat16_rn(h0);
  }
  const WxPiece<DH> piece(p, head, b0);
  for (int t = 0; t < kRing; ++t) {
    piece.fetch(p, s.wx[t], t);
    cp_async_commit();
  }
  // Where the units' results go at step 0 (row 0's where the row is past B: never written).
  std::int64_t out[2];
#pragma unroll
  for (int u = 0; u < 2; ++u) out[u] = static_cast<std::int64_t>(min(b0 + 2 * at.q + u, p.B - 1)) * p.T * HD + head * DH + at.d;
  const std::int64_t S = static_cast<std::int64_t>(p.B) * p.T * HD;
  cp_async_wait<kRing - 1>();
  __syncthreads();

  for (int t = 0; t < p.T; ++t) {
    if (t > 0) {  // the slot step t - 1 used is free (every thread passed the barrier after it)
      piece.fetch(p, s.wx[(t - 1) % kRing], t - 1 + kRing);
      cp_async_commit();
    }
    const bf16(*h)[DH + 8] = s.h[t & 1];
    const bf16(*x)[4 * DH + 8] = s.wx[t % kRing];
    // g̃_t = (Wx_t + b) + R h_{t-1}: even and odd K tiles in two chains (latency), added at the end.
    float acc[2][2][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int gate = 2 * mt + r / 2, n = 2 * at.q + r % 2;
        acc[0][mt][r] = to_float(x[n][gate * DH + at.d]) + bias[gate];
        acc[1][mt][r] = 0.f;
      }
#pragma unroll
    for (int kt = 0; kt < kKTiles<DH>; ++kt) {
      const std::uint32_t b0f = load_pair(&h[at.g][16 * kt + 2 * at.q]), b1f = load_pair(&h[at.g][16 * kt + 8 + 2 * at.q]);
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) mma_bf16(acc[kt % 2][mt], Ra[mt][kt], b0f, b1f);
    }
    // The cells: unit u is batch row 2q + u; its gates are acc[mt = gate / 2][2·(gate % 2) + u].
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int n = 2 * at.q + u;
      float gt[4];
#pragma unroll
      for (int gate = 0; gate < 4; ++gate) {
        const int mt = gate / 2, r = 2 * (gate % 2) + u;
        gt[gate] = acc[0][mt][r] + acc[1][mt][r];
      }
      const float hv = cell_forward<Fast>(kCell, gt[0], gt[1], gt[2], gt[3], cs[u]);
      const bool valid = b0 + n < p.B;
      s.h[(t + 1) & 1][n][at.d] = __float2bfloat16_rn(valid ? hv : 0.f);
      if (!valid) continue;
      const std::int64_t i = out[u] + static_cast<std::int64_t>(t) * HD;  // (b, t, head, d) in (B, T, NH, DH)
      if (p.gates) {
#pragma unroll
        for (int gate = 0; gate < 4; ++gate) p.gates[4 * i - 3 * (head * DH + at.d) + gate * HD] = gt[gate];
      }
      if (p.states) {
        p.states[i] = hv;
        p.states[S + i] = cs[u].c;
        if (NS == 4) p.states[2 * S + i] = cs[u].n, p.states[3 * S + i] = cs[u].m;
      }
      if (p.last && t == p.T - 1) {
        const std::int64_t S1 = static_cast<std::int64_t>(p.B) * HD, i1 = static_cast<std::int64_t>(b0 + n) * HD + head * DH + at.d;
        p.last[i1] = hv;
        p.last[S1 + i1] = cs[u].c;
        if (NS == 4) p.last[2 * S1 + i1] = cs[u].n, p.last[3 * S1 + i1] = cs[u].m;
      }
    }
    cp_async_wait<kRing - 2>();  // step t + 1 has arrived
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------------------
// Backward.

// One step's inputs: g̃_t [n][gate·DH + d], the state before t [s][n][d] (the LSTM uses 2 of the
// 4), dh_t [n][d]; rows padded by 4 floats (no bank conflicts, 16-byte pieces).
template <int DH>
struct BackwardSlot {
  float g[kCols][4 * DH + 4];
  float prev[4][kCols][DH + 4];
  float dh[kCols][DH + 4];
};

template <int DH>
struct BackwardSmem {
  float part[2][kWarps<DH>][DH][kCols];  // each warp's partial Rᵀ dg̃ over its 32 gate rows, [k][n]; double-buffered
  bf16 dg[kWarps<DH>][kCols][32 + 8];    // each warp's dg̃_t as the product's B operand, [n][gate·8 + d % 8]
  BackwardSlot<DH> ring[kRingBack];
};

// The 16-byte pieces a thread copies into every step's slot: two of g̃, NS / 2 of the state before
// the step, and (the first 2·DH threads) one of dh. Where each comes from at step 0 and goes in a
// slot is fixed; a step t adds t rows.
template <int DH, int NS>
struct StepPieces {
  static constexpr int kPieces = DH / 4;  // per row of DH floats
  const float *g_src[2], *prev_src[NS / 2], *init_src[NS / 2], *dh_src;
  int g_dst[2], prev_dst[NS / 2], dh_dst;
  bool g_valid[2], prev_valid[NS / 2], prev_is_n[NS / 2], dh_valid, has_dh;

  __device__ StepPieces(const Params& p, int head, int b0) {
    const std::int64_t HD = static_cast<std::int64_t>(p.NH) * DH, S = static_cast<std::int64_t>(p.B) * p.T * HD;
    const auto row = [&](int n) { return static_cast<std::int64_t>(b0 + n < p.B ? b0 + n : 0); };
    using Slot = BackwardSlot<DH>;
    for (int i = 0; i < 2; ++i) {
      const int e = threadIdx.x + i * kThreads<DH>, n = e / (4 * kPieces), gate = e / kPieces % 4, c = e % kPieces;
      g_valid[i] = b0 + n < p.B;
      g_src[i] = p.saved_gates + (row(n) * p.T * 4 + gate) * HD + head * DH + 4 * c;
      g_dst[i] = offsetof(Slot, g) / 4 + n * (4 * DH + 4) + gate * DH + 4 * c;
    }
    for (int i = 0; i < NS / 2; ++i) {
      const int e = threadIdx.x + i * kThreads<DH>, st = e / (kCols * kPieces), n = e / kPieces % kCols, c = e % kPieces;
      prev_valid[i] = b0 + n < p.B;
      prev_is_n[i] = st == 2;
      prev_src[i] = p.saved_states + st * S + row(n) * p.T * HD + head * DH + 4 * c;
      init_src[i] = p.initial ? p.initial + st * p.B * HD + row(n) * HD + head * DH + 4 * c : nullptr;
      prev_dst[i] = offsetof(Slot, prev) / 4 + (st * kCols + n) * (DH + 4) + 4 * c;
    }
    const int n = threadIdx.x / kPieces, c = threadIdx.x % kPieces;
    has_dh = threadIdx.x < kCols * kPieces;
    dh_valid = has_dh && b0 + n < p.B;
    dh_src = p.dh + row(has_dh ? n : 0) * p.T * HD + head * DH + 4 * c;
    dh_dst = offsetof(Slot, dh) / 4 + n * (DH + 4) + 4 * c;
  }

  __device__ void fetch(const Params& p, BackwardSlot<DH>& slot, int t) const {
    if (t < 0) return;
    const std::int64_t HD = static_cast<std::int64_t>(p.NH) * DH;
    float* base = reinterpret_cast<float*>(&slot);
#pragma unroll
    for (int i = 0; i < 2; ++i) copy16(base + g_dst[i], g_src[i] + t * 4 * HD, g_valid[i], p.aligned16);
#pragma unroll
    for (int i = 0; i < NS / 2; ++i) {
      float* dst = base + prev_dst[i];
      if (!prev_valid[i]) {
        const float v = prev_is_n[i] ? 1.f : 0.f;  // n = 1 keeps the padded rows finite
        *reinterpret_cast<float4*>(dst) = make_float4(v, v, v, v);
      } else if (t > 0) {
        copy16(dst, prev_src[i] + (t - 1) * HD, true, p.aligned16);
      } else if (init_src[i]) {
        copy16(dst, init_src[i], true, p.aligned16);
      } else {
        *reinterpret_cast<float4*>(dst) = make_float4(0.f, 0.f, 0.f, 0.f);
      }
    }
    if (has_dh) copy16(base + dh_dst, dh_src + t * HD, dh_valid, p.aligned16);
  }
};

template <int DH, CellKind kCell>
__device__ __forceinline__ StepActivations activations(const BackwardSlot<DH>& slot, int n, int d, float c_next) {
  const float* gn = slot.g[n];
  constexpr bool lstm = kCell == CellKind::lstm;
  return detail::activations<Fast>(kCell, gn[d], gn[DH + d], gn[2 * DH + d], gn[3 * DH + d], slot.prev[0][n][d],
                             slot.prev[1][n][d], lstm ? 1.f : slot.prev[2][n][d], lstm ? 0.f : slot.prev[3][n][d],
                             c_next);
}

// Σ over the warps' partial sums of (Rᵀ dg̃)[d][2q], [d][2q + 1] in buffer `buf`.
template <int DH>
__device__ __forceinline__ float2 recurrent_dh(const BackwardSmem<DH>& s, int buf, const Place& at) {
  float2 sum = make_float2(0.f, 0.f);
#pragma unroll
  for (int w = 0; w < kWarps<DH>; ++w) {
    const float2 v = *reinterpret_cast<const float2*>(&s.part[buf][w][at.d][2 * at.q]);
    sum.x += v.x, sum.y += v.y;
  }
  return sum;
}

template <int DH, CellKind kCell>
__global__ void __launch_bounds__(kThreads<DH>, 1) backward_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto& s = *reinterpret_cast<BackwardSmem<DH>*>(smem_raw);
  const Place at = place();
  const int head = blockIdx.x, b0 = blockIdx.y * kCols;
  const std::int64_t HD = static_cast<std::int64_t>(p.NH) * DH;
  constexpr int NS = kCell == CellKind::lstm ? 2 : 4;

  // Rᵀ restricted to the warp's gate rows as A fragments: tile (mu, kappa) has rows k ∈ 16·mu + [0, 16)
  // and columns j ∈ 16·kappa + [0, 16) of the warp's rows, row j being gate j / 8, unit 8w + j % 8.
  const bf16* R = static_cast<const bf16*>(p.R);
  std::uint32_t Ra[kKTiles<DH>][2][4];
#pragma unroll
  for (int mu = 0; mu < kKTiles<DH>; ++mu)
#pragma unroll
    for (int kappa = 0; kappa < 2; ++kappa)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int k = 16 * mu + at.g + 8 * (r & 1), j = 16 * kappa + 2 * at.q + 8 * (r >> 1);
        const bf16* col = R + ((static_cast<std::int64_t>(j / 8) * p.NH + head) * DH + 8 * at.w + j % 8) * DH + k;
        Ra[mu][kappa][r] = pack_bf16(col[0], col[DH]);  // units d and d + 1 of the same gate
      }

  // Per unit: the carried gradient and the state after the current step, from dlast and the last state.
  CellGrad cg[2];
  float dh_next[2] = {0.f, 0.f};  // the recurrent part of δh at step T - 1: dlast's h
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int n = 2 * at.q + u;
    if (b0 + n >= p.B) continue;
    const std::int64_t S = static_cast<std::int64_t>(p.B) * p.T * HD;
    const std::int64_t i = (static_cast<std::int64_t>(b0 + n) * p.T + p.T - 1) * HD + head * DH + at.d;
    cg[u].h = p.saved_states[i];
    cg[u].c = p.saved_states[S + i];
    if (NS == 4) cg[u].n = p.saved_states[2 * S + i];
    if (p.dlast) {
      const std::int64_t S1 = static_cast<std::int64_t>(p.B) * HD, i1 = static_cast<std::int64_t>(b0 + n) * HD + head * DH + at.d;
      dh_next[u] = p.dlast[i1];
      cg[u].dc = p.dlast[S1 + i1];
      if (NS == 4) cg[u].dn = p.dlast[2 * S1 + i1], cg[u].dm = p.dlast[3 * S1 + i1];
    }
  }
  float db[4] = {0.f, 0.f, 0.f, 0.f};  // Σ dg̃ over the thread's units and steps
  const StepPieces<DH, NS> pieces(p, head, b0);
  for (int i = 0; i < kRingBack; ++i) {
    pieces.fetch(p, s.ring[i], p.T - 1 - i);
    cp_async_commit();
  }
  // Where the units' dg̃ go at step 0 (row 0's where the row is past B: never written).
  std::int64_t out[2];
#pragma unroll
  for (int u = 0; u < 2; ++u)
    out[u] = static_cast<std::int64_t>(min(b0 + 2 * at.q + u, p.B - 1)) * p.T * 4 * HD + head * DH + at.d;
  cp_async_wait<kRingBack - 2>();  // steps T - 1 and T - 2 have arrived
  __syncthreads();
  const auto slot_of = [&](int t) -> BackwardSlot<DH>& { return s.ring[(p.T - 1 - t) % kRingBack]; };
  StepActivations act[2];
#pragma unroll
  for (int u = 0; u < 2; ++u) act[u] = activations<DH, kCell>(slot_of(p.T - 1), 2 * at.q + u, at.d, cg[u].c);

  for (int t = p.T - 1; t >= 0; --t) {
    if (t < p.T - 1) {  // the slot of step t + 1 is free
      pieces.fetch(p, slot_of(t + 1), t + 1 - kRingBack);
      cp_async_commit();
    }
    const BackwardSlot<DH>& slot = slot_of(t);
    const float2 rec = t < p.T - 1 ? recurrent_dh<DH>(s, (t + 1) & 1, at) : make_float2(dh_next[0], dh_next[1]);
    // The cells' backward.
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int n = 2 * at.q + u;
      float dg[4];
      cell_backward<Fast>(kCell, act[u], slot.dh[n][at.d] + (u == 0 ? rec.x : rec.y), cg[u], dg);
#pragma unroll
      for (int gate = 0; gate < 4; ++gate) s.dg[at.w][n][8 * gate + at.g] = __float2bfloat16_rn(dg[gate]);
      if (b0 + n < p.B) {
        const std::int64_t i = out[u] + static_cast<std::int64_t>(t) * 4 * HD;
#pragma unroll
        for (int gate = 0; gate < 4; ++gate) {
          static_cast<bf16*>(p.dWx)[i + gate * HD] = __float2bfloat16_rn(dg[gate]);
          db[gate] += dg[gate];
        }
      }
    }
    __syncwarp();
    // The warp's share of Rᵀ dg̃_t: K = its 32 gate rows in two tiles.
    std::uint32_t bfrag[2][2];
#pragma unroll
    for (int kappa = 0; kappa < 2; ++kappa) {
      bfrag[kappa][0] = load_pair(&s.dg[at.w][at.g][16 * kappa + 2 * at.q]);
      bfrag[kappa][1] = load_pair(&s.dg[at.w][at.g][16 * kappa + 8 + 2 * at.q]);
    }
    float acc[kKTiles<DH>][4];
#pragma unroll
    for (int mu = 0; mu < kKTiles<DH>; ++mu) {
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mu][r] = 0.f;
#pragma unroll
      for (int kappa = 0; kappa < 2; ++kappa) mma_bf16(acc[mu], Ra[mu][kappa], bfrag[kappa][0], bfrag[kappa][1]);
    }
    // The next step's activations, while the products run.
    if (t > 0) {
#pragma unroll
      for (int u = 0; u < 2; ++u) act[u] = activations<DH, kCell>(slot_of(t - 1), 2 * at.q + u, at.d, cg[u].c);
    }
#pragma unroll
    for (int mu = 0; mu < kKTiles<DH>; ++mu) {
      *reinterpret_cast<float2*>(&s.part[t & 1][at.w][16 * mu + at.g][2 * at.q]) = make_float2(acc[mu][0], acc[mu][1]);
      *reinterpret_cast<float2*>(&s.part[t & 1][at.w][16 * mu + 8 + at.g][2 * at.q]) = make_float2(acc[mu][2], acc[mu][3]);
    }
    cp_async_wait<kRingBack - 3>();  // step t - 2 has arrived
    __syncthreads();
  }

  // db's partial sum over the tile's rows: the four lanes of a unit d, in a fixed order.
#pragma unroll
  for (int gate = 0; gate < 4; ++gate) {
    db[gate] += __shfl_xor_sync(0xffffffffu, db[gate], 1);
    db[gate] += __shfl_xor_sync(0xffffffffu, db[gate], 2);
    if (at.q == 0) p.db_part[(static_cast<std::int64_t>(blockIdx.y) * p.NH + head) * 4 * DH + gate * DH + at.d] = db[gate];
  }

  // The initial state's gradient: δh through R from step 0, δc, δn, δm.
  if (p.dinitial) {
    const float2 rec = recurrent_dh<DH>(s, 0, at);
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int n = 2 * at.q + u;
      if (b0 + n >= p.B) continue;
      const std::int64_t S1 = static_cast<std::int64_t>(p.B) * HD, i1 = static_cast<std::int64_t>(b0 + n) * HD + head * DH + at.d;
      p.dinitial[i1] = u == 0 ? rec.x : rec.y;
      p.dinitial[S1 + i1] = cg[u].dc;
      if (NS == 4) p.dinitial[2 * S1 + i1] = cg[u].dn, p.dinitial[3 * S1 + i1] = cg[u].dm;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// dR[gate, head, d, k] = Σ_{b,t} dg̃[b, t, gate, head, d] h[b, t - 1, head, k] (h[b, -1] the initial h)
// with bf16 operands (dg̃ as dWx holds it, h rounded) on the tensor cores: block (head, 64 gate rows,
// range of rows) multiplies stages of kStage rows of (b, t) with the mLSTM's 64 x 64 output tile
// (cuda/mlstm/tiles.cuh) and writes its partial sums (splits, NH, 4·DH, DH); reduce_parts adds the
// ranges in order.
namespace tiles = flashlstm::cuda::mlstm::detail;
constexpr int kDRStage = 32;

template <int DH>
__global__ void __launch_bounds__(tiles::kThreads) dR_kernel(Params p, int rows_per_split) {
  __shared__ __align__(16) bf16 A[kDRStage][tiles::stride(tiles::kTile)];  // dg̃ [row][gate row]
  __shared__ __align__(16) bf16 H[kDRStage][tiles::stride(tiles::kTile)];  // h   [row][k]
  const int head = blockIdx.x, r0 = blockIdx.y * tiles::kTile, split = blockIdx.z;
  const std::int64_t HD = static_cast<std::int64_t>(p.NH) * DH, K = static_cast<std::int64_t>(p.B) * p.T;
  const std::int64_t k0 = static_cast<std::int64_t>(split) * rows_per_split, k1 = min(K, k0 + rows_per_split);
  const bf16* dWx = static_cast<const bf16*>(p.dWx);
  tiles::Acc acc;
  tiles::zero(acc);
  for (std::int64_t kk = k0; kk < k1; kk += kDRStage) {
    // 8 elements per piece: gate rows r0 + 8j .. (one gate: DH >= 16), columns 8j .. of h.
    for (int e = threadIdx.x; e < kDRStage * tiles::kTile / 8; e += tiles::kThreads) {
      const int st = e / (tiles::kTile / 8), j = 8 * (e % (tiles::kTile / 8));
      const std::int64_t row = kk + st, b = row / p.T, t = row % p.T;  // row = b·T + t
      const int r = r0 + j, gate = r / DH, d = r % DH;
      uint4 a = make_uint4(0, 0, 0, 0);
      if (row < k1) {
        const bf16* src = dWx + (row * 4 + gate) * HD + head * DH + d;
        if (reinterpret_cast<std::uintptr_t>(src) % 16 == 0) {
          a = *reinterpret_cast<const uint4*>(src);
        } else {
          a = make_uint4(pack_bf16(src[0], src[1]), pack_bf16(src[2], src[3]), pack_bf16(src[4], src[5]),
                         pack_bf16(src[6], src[7]));
        }
      }
      *reinterpret_cast<uint4*>(&A[st][j]) = a;
      float h[8] = {};
      if (row < k1 && j < DH) {
        const float* src = t > 0 ? p.saved_states + (row - 1) * HD + head * DH + j
                           : p.initial ? p.initial + b * HD + head * DH + j
                                       : nullptr;
        if (src)
          for (int v = 0; v < 8; ++v) h[v] = src[v];
      }
      *reinterpret_cast<uint4*>(&H[st][j]) =
          make_uint4(pack_bf16(h[0], h[1]), pack_bf16(h[2], h[3]), pack_bf16(h[4], h[5]), pack_bf16(h[6], h[7]));
    }
    __syncthreads();
    tiles::gemm<false, true, kDRStage>(acc, &A[0][0], tiles::stride(tiles::kTile), &H[0][0], tiles::stride(tiles::kTile));
    __syncthreads();
  }
  float* part = p.dR_part + (static_cast<std::int64_t>(split) * p.NH + head) * 4 * DH * DH;
#pragma unroll
  for (int i = 0; i < tiles::kTR; ++i)
#pragma unroll
    for (int j = 0; j < tiles::kTC; ++j) {
      const int r = r0 + tiles::tile_row(i), c = tiles::tile_col(j);
      if (c < DH) part[static_cast<std::int64_t>(r) * DH + c] = acc[i][j];
    }
}

template <class Kernel>
void launch(Kernel kernel, std::size_t bytes, const Params& p, int threads, cudaStream_t stream, const char* what) {
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)), what);
  kernel<<<dim3(p.NH, (p.B + kCols - 1) / kCols), threads, bytes, stream>>>(p);
  check_cuda(cudaGetLastError(), what);
}

template <int DH, CellKind kCell>
void launch_cell(const Params& p, bool backward, cudaStream_t stream) {
  if (backward) {
    launch(backward_kernel<DH, kCell>, sizeof(BackwardSmem<DH>), p, kThreads<DH>, stream, "slstm backward (tensor cores)");
  } else {
    launch(forward_kernel<DH, kCell>, sizeof(ForwardSmem<DH>), p, kThreads<DH>, stream, "slstm forward (tensor cores)");
  }
}

template <int DH>
void launch_dh(const Params& p, bool backward, cudaStream_t stream) {
  switch (p.cell) {
    case CellKind::slstm_sigmoid: return launch_cell<DH, CellKind::slstm_sigmoid>(p, backward, stream);
    case CellKind::slstm_exp: return launch_cell<DH, CellKind::slstm_exp>(p, backward, stream);
    default: return launch_cell<DH, CellKind::lstm>(p, backward, stream);
  }
}

}  // namespace

bool tensor_core_applies(const Params& p, DType dtype) { return dtype == DType::bfloat16 && p.DH <= 64; }

DRSplit tensor_core_dR_split(const Params& p) { return {4 * p.DH / tiles::kTile, kDRStage}; }

void run_tensor_core_dR(const Params& p, int rows_per_split, int splits, cudaStream_t stream) {
  const dim3 grid(p.NH, 4 * p.DH / tiles::kTile, splits);
  switch (p.DH) {
    case 16: dR_kernel<16><<<grid, tiles::kThreads, 0, stream>>>(p, rows_per_split); break;
    case 32: dR_kernel<32><<<grid, tiles::kThreads, 0, stream>>>(p, rows_per_split); break;
    default: dR_kernel<64><<<grid, tiles::kThreads, 0, stream>>>(p, rows_per_split); break;
  }
  check_cuda(cudaGetLastError(), "slstm dR (tensor cores)");
}

void run_tensor_core(const Params& p, bool backward, cudaStream_t stream) {
  switch (p.DH) {
    case 16: return launch_dh<16>(p, backward, stream);
    case 32: return launch_dh<32>(p, backward, stream);
    default: return launch_dh<64>(p, backward, stream);
  }
}

}  // namespace flashlstm::cuda::slstm::detail
