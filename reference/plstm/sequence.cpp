// pLSTM on sequences: recurrent, parallel and chunkwise forms (sequence.hpp).
#include "reference/plstm/sequence.hpp"

#include "core/error.hpp"
#include "reference/masked.hpp"
#include "reference/plstm/detail.hpp"


#include <cmath>
#include <vector>

namespace flashlstm::plstm {
namespace {

using detail::Mat;
using detail::Vec;
template <class F>
using ConstMatMap = Eigen::Map<const Mat<F>>;

struct Dims {
  index_t B, NH, S, DQK, DV;
};

template <class F>
Dims check_inputs(const SequenceInputs<F>& x) {
  require(!x.q.empty(), "q", "is null");
  const Dims d{x.q.shape(0), x.q.shape(1), x.q.shape(2), x.q.shape(3), x.v.shape(3)};
  require(d.B >= 1 && d.NH >= 1 && d.S >= 1 && d.DQK >= 1, "q",
          "expected shape (B, NH, S, DQK) with every extent >= 1, got {}", shape_string(x.q.shape()));
  require(d.DV >= 1, "v", "expected DV >= 1, got shape {}", shape_string(x.v.shape()));
  check_shape("k", x.k, {d.B, d.NH, d.S, d.DQK});
  check_shape("v", x.v, {d.B, d.NH, d.S, d.DV});
  for (const auto& [name, gate] : {std::pair{"S", x.S}, {"T", x.T}, {"M", x.M}, {"D", x.D}})
    check_shape(name, gate, {d.B, d.NH, d.S});
  return d;
}

// What a block of consecutive tokens does, as a linear map (scalar gates):
//   state after  = transition · state before + Σ_τ source_τ k_τ v_τ^T
//   token τ reads  mark_τ · state before  +  Σ_σ G(τ, σ) k_σ v_σ^T   (σ earlier in the block)
template <class F>
struct Block {
  F transition;
  Vec<F> source, mark;  // (len)
  Mat<F> G;             // (len, len), strictly lower triangular
};

// The block of a followed by b: b sees a's final state.
template <class F>
Block<F> merge(const Block<F>& a, const Block<F>& b) {
  const index_t la = a.source.size(), lb = b.source.size();
  Block<F> m{b.transition * a.transition, Vec<F>(la + lb), Vec<F>(la + lb), Mat<F>::Zero(la + lb, la + lb)};
  m.source << b.transition * a.source, b.source;
  m.mark << a.mark, a.transition * b.mark;
  m.G.topLeftCorner(la, la) = a.G;
  m.G.bottomRightCorner(lb, lb) = b.G;
  m.G.bottomLeftCorner(lb, la) = b.mark * a.source.transpose();
  return m;
}

// The largest power of two below len (len >= 2): where pairwise doubling splits a block of len
// tokens — merging neighbours level by level, an odd block carried up, builds exactly this tree.
inline index_t split_point(index_t len) {
  index_t p = 1;
  while (2 * p < len) p *= 2;
  return p;
}

// Tokens [lo, hi) of a chunk as one block, by pairwise-doubling merges.
template <class F>
Block<F> chunk_block(const F* S, const F* T, const F* M, index_t lo, index_t hi) {
  if (hi - lo == 1) return {T[lo], Vec<F>::Constant(1, S[lo]), Vec<F>::Constant(1, M[lo]), Mat<F>::Zero(1, 1)};
  const index_t mid = lo + split_point(hi - lo);
  return merge(chunk_block(S, T, M, lo, mid), chunk_block(S, T, M, mid, hi));
}

// Reverse of chunk_block: given the gradient of the block's aggregates, accumulates the gradients
// of the gates S, T, M of tokens [lo, hi) (recomputing the two halves).
template <class F>
void chunk_block_backward(const F* S, const F* T, const F* M, index_t lo, index_t hi, const Block<F>& d, F* dS, F* dT,
                          F* dM) {
  if (hi - lo == 1) {
    dT[lo] += d.transition;
    dS[lo] += d.source(0);
    dM[lo] += d.mark(0);
    return;
  }
  const index_t mid = lo + split_point(hi - lo), la = mid - lo, lb = hi - mid;
  const Block<F> a = chunk_block(S, T, M, lo, mid), b = chunk_block(S, T, M, mid, hi);
  // m.transition = b.t a.t, m.source = [b.t a.source; b.source], m.mark = [a.mark; a.t b.mark],
  // m.G = [[a.G, 0], [b.mark a.source^T, b.G]]
  const auto d_source_a = d.source.head(la), d_mark_b = d.mark.tail(lb);
  const auto dG_cross = d.G.bottomLeftCorner(lb, la);
  Block<F> da{d.transition * b.transition + d_mark_b.dot(b.mark), b.transition * d_source_a + dG_cross.transpose() * b.mark,
              d.mark.head(la), d.G.topLeftCorner(la, la)};
  Block<F> db{d.transition * a.transition + d_source_a.dot(a.source), d.source.tail(lb),
              a.transition * d_mark_b + dG_cross * a.source, d.G.bottomRightCorner(lb, lb)};
  chunk_block_backward(S, T, M, lo, mid, da, dS, dT, dM);
  chunk_block_backward(S, T, M, mid, hi, db, dS, dT, dM);
}

// Pointers to one (batch, head).
template <class F>
struct Head {
  const F *q, *k, *v, *S, *T, *M, *D;
  F scale;
  Head(const SequenceInputs<F>& x, const Dims& d, index_t bh, const Options& o)
      : q(x.q.data() + bh * d.S * d.DQK),
        k(x.k.data() + bh * d.S * d.DQK),
        v(x.v.data() + bh * d.S * d.DV),
        S(x.S.data() + bh * d.S),
        T(x.T.data() + bh * d.S),
        M(x.M.data() + bh * d.S),
        D(x.D.data() + bh * d.S),
        scale(detail::qk_scale<F>(o, d.DQK)) {}
};

template <class F>
void recurrent(const Head<F>& x, const Dims& d, F* h) {
  Mat<F> C = Mat<F>::Zero(d.DQK, d.DV);
  for (index_t t = 0; t < d.S; ++t) {
    const Eigen::Map<const Vec<F>> q(x.q + t * d.DQK, d.DQK), k(x.k + t * d.DQK, d.DQK), v(x.v + t * d.DV, d.DV);
    Eigen::Map<Vec<F>>(h + t * d.DV, d.DV) = x.scale * (x.M[t] * (C.transpose() * q) + (x.D[t] * q.dot(k)) * v);
    C *= x.T[t];
    C.noalias() += (x.S[t] * k) * v.transpose();
  }
}

// P = G ∘ A plus the direct term D on the diagonal.
template <class F>
Mat<F> with_direct(Mat<F> P, const F* D, const Mat<F>& A) {
  P.diagonal() += Eigen::Map<const Vec<F>>(D, A.rows()).cwiseProduct(A.diagonal());
  return P;
}

// One chunk [t0, t0 + len) entered with state C (updated to the state after the chunk); h points at
// token t0's output.
template <class F>
void chunk(const Head<F>& x, const Dims& d, index_t t0, index_t len, Mat<F>& C, F* h) {
  const Block<F> blk = chunk_block(x.S, x.T, x.M, t0, t0 + len);
  const ConstMatMap<F> Q(x.q + t0 * d.DQK, len, d.DQK), K(x.k + t0 * d.DQK, len, d.DQK), V(x.v + t0 * d.DV, len, d.DV);
  const Mat<F> A = Q * K.transpose();
  const Mat<F> P = masked(with_direct<F>(blk.G.cwiseProduct(A), x.D + t0, A), causal);
  Eigen::Map<Mat<F>>(h, len, d.DV) = x.scale * (masked_product(P, V, causal) + blk.mark.asDiagonal() * (Q * C));
  C *= blk.transition;
  C.noalias() += K.transpose() * (blk.source.asDiagonal() * V);
}

// Reverse of chunk(): `dC` holds the gradient of the state after the chunk on entry and of the state
// before it on exit; C is the state before the chunk.
template <class F>
void chunk_backward(const Head<F>& x, const Dims& d, index_t t0, index_t len, const Mat<F>& C, const F* dh, Mat<F>& dC,
                    SequenceGrad<F>& g, index_t bh) {
  const Block<F> blk = chunk_block(x.S, x.T, x.M, t0, t0 + len);
  const ConstMatMap<F> Q(x.q + t0 * d.DQK, len, d.DQK), K(x.k + t0 * d.DQK, len, d.DQK), V(x.v + t0 * d.DV, len, d.DV);
  const Mat<F> dH = x.scale * ConstMatMap<F>(dh + t0 * d.DV, len, d.DV);
  const Mat<F> A = Q * K.transpose();
  const Mat<F> P = masked(with_direct<F>(blk.G.cwiseProduct(A), x.D + t0, A), causal);
  const Mat<F> QC = Q * C;
  // h = s (P V + diag(mark) Q C),  C_after = transition C + K^T diag(source) V
  const Mat<F> dP = masked(dH * V.transpose(), causal);
  Mat<F> dA = dP.cwiseProduct(blk.G);
  dA.diagonal() += dP.diagonal().cwiseProduct(Eigen::Map<const Vec<F>>(x.D + t0, len));
  const Mat<F> K_dC = K * dC;  // (len, DV)
  Block<F> dblk{(dC.array() * C.array()).sum(), K_dC.cwiseProduct(V).rowwise().sum(),
                dH.cwiseProduct(QC).rowwise().sum(), masked(dP.cwiseProduct(A), causal)};
  const index_t off = bh * d.S + t0;
  Eigen::Map<Mat<F>>(g.dq.data() + off * d.DQK, len, d.DQK) =
      masked_product(dA, K, causal) + blk.mark.asDiagonal() * (dH * C.transpose());
  Eigen::Map<Mat<F>>(g.dk.data() + off * d.DQK, len, d.DQK) =
      masked_product(dA.transpose(), Q, anticausal) + blk.source.asDiagonal() * (V * dC.transpose());
  Eigen::Map<Mat<F>>(g.dv.data() + off * d.DV, len, d.DV) =
      masked_product(P.transpose(), dH, anticausal) + blk.source.asDiagonal() * K_dC;
  Eigen::Map<Vec<F>>(g.dD.data() + off, len) = dP.diagonal().cwiseProduct(A.diagonal());
  dC = blk.transition * dC + Q.transpose() * (blk.mark.asDiagonal() * dH);
  chunk_block_backward(x.S, x.T, x.M, t0, t0 + len, dblk, g.dS.data() + bh * d.S, g.dT.data() + bh * d.S,
                       g.dM.data() + bh * d.S);
}

}  // namespace

template <class F>
SequenceGrad<F> sequence_backward(const SequenceInputs<F>& x, ConstView<F, 4> dh, index_t chunk_size, const Options& o) {
  const Dims d = check_inputs(x);
  check_shape("dh", dh, {d.B, d.NH, d.S, d.DV});
  require(chunk_size >= 1, "chunk_size", "expected >= 1, got {}", chunk_size);
  const index_t L = std::min(chunk_size, d.S);
  detail::check_quadratic_memory<F>(chunk_size >= d.S ? "S" : "chunk_size", L, 10, d.B * d.NH, "chunkwise");
  SequenceGrad<F> g{uninitialized<F>(Shape<4>{d.B, d.NH, d.S, d.DQK}), uninitialized<F>(Shape<4>{d.B, d.NH, d.S, d.DQK}),
                    uninitialized<F>(Shape<4>{d.B, d.NH, d.S, d.DV}), zeros<F>(Shape<3>{d.B, d.NH, d.S}),
                    zeros<F>(Shape<3>{d.B, d.NH, d.S}),               zeros<F>(Shape<3>{d.B, d.NH, d.S}),
                    uninitialized<F>(Shape<3>{d.B, d.NH, d.S})};
  parallel_for(d.B * d.NH, [&](index_t bh) {
    const Head<F> head(x, d, bh, o);
    std::vector<Mat<F>> entering{Mat<F>::Zero(d.DQK, d.DV)};
    std::vector<F> scratch(L * d.DV);
    for (index_t t0 = 0; t0 + L < d.S; t0 += L) {
      entering.push_back(entering.back());
      chunk(head, d, t0, L, entering.back(), scratch.data());
    }
    Mat<F> dC = Mat<F>::Zero(d.DQK, d.DV);
    for (index_t c = static_cast<index_t>(entering.size()) - 1; c >= 0; --c) {
      const index_t t0 = c * L;
      chunk_backward(head, d, t0, std::min(L, d.S - t0), entering[c], dh.data() + bh * d.S * d.DV, dC, g, bh);
    }
  });
  return g;
}

std::string SequenceForm::name() const {
  switch (kind) {
    case recurrent: return "recurrent";
    case parallel: return "parallel";
    case chunkwise: return fmt::format("chunkwise(L={})", chunk_size);
  }
  return "?";
}

template <class F>
xt::xtensor<F, 4> sequence_forward(const SequenceInputs<F>& x, const SequenceForm& form, const Options& o) {
  const Dims d = check_inputs(x);
  require(form.kind != SequenceForm::chunkwise || form.chunk_size >= 1, "chunk_size", "expected >= 1, got {}",
          form.chunk_size);
  if (form.kind != SequenceForm::recurrent) {
    const index_t L = form.kind == SequenceForm::parallel ? d.S : std::min(form.chunk_size, d.S);
    detail::check_quadratic_memory<F>(L == d.S ? "S" : "chunk_size", L, 4, d.B * d.NH, form.name());
  }
  auto h = uninitialized<F>(Shape<4>{d.B, d.NH, d.S, d.DV});
  parallel_for(d.B * d.NH, [&](index_t bh) {
    const Head<F> head(x, d, bh, o);
    F* out = h.data() + bh * d.S * d.DV;
    if (form.kind == SequenceForm::recurrent) {
      recurrent(head, d, out);
    } else {
      const index_t L = form.kind == SequenceForm::parallel ? d.S : form.chunk_size;
      Mat<F> C = Mat<F>::Zero(d.DQK, d.DV);
      for (index_t t0 = 0; t0 < d.S; t0 += L) chunk(head, d, t0, std::min(L, d.S - t0), C, out + t0 * d.DV);
    }
  });
  return h;
}

graph::Dag chain(index_t S) {
  std::vector<graph::Edge> edges;
  for (index_t t = 0; t + 1 < S; ++t) edges.push_back({t, t + 1});
  return graph::Dag(S, edges);
}

template <class F>
ChainGates<F> chain_gates(const SequenceInputs<F>& x) {
  const Dims d = check_inputs(x);
  const index_t E = std::max<index_t>(d.S - 1, 0), A = std::max<index_t>(d.S - 2, 0);
  ChainGates<F> g{zeros<F>(Shape<3>{d.B, d.NH, E}), zeros<F>(Shape<3>{d.B, d.NH, A}), zeros<F>(Shape<3>{d.B, d.NH, E})};
  for (index_t bh = 0; bh < d.B * d.NH; ++bh) {
    for (index_t t = 0; t + 1 < d.S; ++t) {
      g.S.data()[bh * E + t] = x.S.data()[bh * d.S + t];          // node t puts its k v on edge t
      g.M.data()[bh * E + t] = x.M.data()[bh * d.S + t + 1];      // node t+1 reads edge t
    }
    for (index_t t = 1; t + 1 < d.S; ++t) g.T.data()[bh * A + t - 1] = x.T.data()[bh * d.S + t];  // edge t-1 -> t at node t
  }
  return g;
}

#define FLASHLSTM_INSTANTIATE(F)                                                                               \
  template xt::xtensor<F, 4> sequence_forward(const SequenceInputs<F>&, const SequenceForm&, const Options&); \
  template ChainGates<F> chain_gates(const SequenceInputs<F>&);                                              \
  template SequenceGrad<F> sequence_backward(const SequenceInputs<F>&, ConstView<F, 4>, index_t, const Options&);
FLASHLSTM_INSTANTIATE(float)
FLASHLSTM_INSTANTIATE(double)
#undef FLASHLSTM_INSTANTIATE

}  // namespace flashlstm::plstm
