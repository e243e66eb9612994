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

// The same aggregates in the order a GPU kernel computes them: from per-token prefix quantities of
// the chunk (one pass over its tokens, in double whatever F is), every product of transitions is
//   Π_{a < r <= b} T_r = (-1)^{n_b - n_a} exp(ℓ_b - ℓ_a)   if no T_r with a < r <= b is zero, else 0,
// ℓ the prefix sums of log|T_r| over the nonzero T_r, n the prefix counts of negative T_r (z, of zero
// ones, decides the "else"). So transitions may be 0, negative or 1, which a logit (log-sigmoid)
// gate model cannot represent. Indices are relative to the chunk's first token; a = -1 is "before
// the chunk". Assumes finite gates.
struct GatePrefix {
  std::vector<double> log_abs;           // [i + 1] = ℓ_i, [0] = 0
  std::vector<index_t> negatives, zeros;  // the same for the counts

  template <class F>
  GatePrefix(const F* T, index_t len) : log_abs(len + 1, 0.0), negatives(len + 1, 0), zeros(len + 1, 0) {
    for (index_t i = 0; i < len; ++i) {
      const double t = static_cast<double>(T[i]);
      log_abs[i + 1] = log_abs[i] + (t == 0 ? 0.0 : std::log(std::abs(t)));
      negatives[i + 1] = negatives[i] + (t < 0);
      zeros[i + 1] = zeros[i] + (t == 0);
    }
  }
  // Π_{a < r <= b} T_r for -1 <= a <= b < len (1 when a = b).
  double product(index_t a, index_t b) const {
    if (zeros[b + 1] != zeros[a + 1]) return 0.0;
    const double p = std::exp(log_abs[b + 1] - log_abs[a + 1]);
    return (negatives[b + 1] - negatives[a + 1]) % 2 != 0 ? -p : p;
  }
  // The same product without the factor T_r (a < r <= b).
  double product_without(index_t a, index_t b, index_t r) const { return product(a, r - 1) * product(r, b); }
};

// A chunk's aggregates from its prefix quantities:
//   transition = Π T,  source_σ = S_σ Π_{r > σ} T_r,  mark_τ = M_τ Π_{r < τ} T_r,
//   G(τ, σ) = M_τ S_σ Π_{σ < r < τ} T_r  (σ < τ).
template <class F>
Block<F> chunk_block_prefix(const F* S, const F* T, const F* M, index_t lo, index_t hi) {
  const index_t len = hi - lo;
  const GatePrefix P(T + lo, len);
  Block<F> b{static_cast<F>(P.product(-1, len - 1)), Vec<F>(len), Vec<F>(len), Mat<F>::Zero(len, len)};
  for (index_t i = 0; i < len; ++i) {
    b.source(i) = static_cast<F>(static_cast<double>(S[lo + i]) * P.product(i, len - 1));
    b.mark(i) = static_cast<F>(static_cast<double>(M[lo + i]) * P.product(-1, i - 1));
    for (index_t j = 0; j < i; ++j)
      b.G(i, j) = static_cast<F>(static_cast<double>(M[lo + i]) * static_cast<double>(S[lo + j]) * P.product(j, i - 1));
  }
  return b;
}

// Reverse of chunk_block_prefix in the kernel's order. dS and dM: each aggregate with its S or M left
// out (no division). dT_r: the aggregates containing T_r, each times its gradient, summed and divided
// by T_r — a prefix sum (sources before r), a suffix sum (marks after r), and for G the entries with
// σ < r < τ (each row's running sum added into every column it passes); where |T_r| < 1e-60 (or 0)
// the products without T_r instead, summed directly (O(len²) for such a token).
template <class F>
void chunk_block_prefix_backward(const F* S, const F* T, const F* M, index_t lo, index_t hi, const Block<F>& d,
                                 F* dS, F* dT, F* dM) {
  const index_t len = hi - lo;
  const GatePrefix P(T + lo, len);
  const auto s = [&](index_t i) { return static_cast<double>(S[lo + i]); };
  const auto m = [&](index_t i) { return static_cast<double>(M[lo + i]); };
  const auto dG = [&](index_t i, index_t j) { return static_cast<double>(d.G(i, j)); };
  for (index_t i = 0; i < len; ++i) {
    double ds = static_cast<double>(d.source(i)) * P.product(i, len - 1);
    double dm = static_cast<double>(d.mark(i)) * P.product(-1, i - 1);
    for (index_t j = i + 1; j < len; ++j) ds += dG(j, i) * m(j) * P.product(i, j - 1);
    for (index_t j = 0; j < i; ++j) dm += dG(i, j) * s(j) * P.product(j, i - 1);
    dS[lo + i] += static_cast<F>(ds);
    dM[lo + i] += static_cast<F>(dm);
  }
  // w = gradient × value of every aggregate.
  const double w_transition = static_cast<double>(d.transition) * P.product(-1, len - 1);
  std::vector<double> w_source(len), w_mark(len);
  Eigen::MatrixXd w_G = Eigen::MatrixXd::Zero(len, len);
  for (index_t i = 0; i < len; ++i) {
    w_source[i] = static_cast<double>(d.source(i)) * s(i) * P.product(i, len - 1);
    w_mark[i] = static_cast<double>(d.mark(i)) * m(i) * P.product(-1, i - 1);
    for (index_t j = 0; j < i; ++j) w_G(i, j) = dG(i, j) * m(i) * s(j) * P.product(j, i - 1);
  }
  // Per r, by additions only (a NaN reaches only the sums that contain it, as in the recurrent form):
  // the sources before r, the marks after r, and G over σ < r < τ as each row's running sum.
  std::vector<double> sources_before(len, 0.0), marks_after(len, 0.0), G_across(len, 0.0);
  for (index_t r = 1; r < len; ++r) sources_before[r] = sources_before[r - 1] + w_source[r - 1];
  for (index_t r = len - 2; r >= 0; --r) marks_after[r] = marks_after[r + 1] + w_mark[r + 1];
  for (index_t i = 2; i < len; ++i) {
    double row = w_G(i, 0);  // Σ_{j < r} w_G(i, j)
    for (index_t r = 1; r < i; ++r) {
      G_across[r] += row;
      row += w_G(i, r);
    }
  }
  for (index_t r = 0; r < len; ++r) {
    const double t = static_cast<double>(T[lo + r]);
    if (std::abs(t) >= 1e-60) {
      dT[lo + r] += static_cast<F>((w_transition + sources_before[r] + marks_after[r] + G_across[r]) / t);
    } else {
      double sum = static_cast<double>(d.transition) * P.product_without(-1, len - 1, r);
      for (index_t j = 0; j < r; ++j) sum += static_cast<double>(d.source(j)) * s(j) * P.product_without(j, len - 1, r);
      for (index_t i = r + 1; i < len; ++i) {
        sum += static_cast<double>(d.mark(i)) * m(i) * P.product_without(-1, i - 1, r);
        for (index_t j = 0; j < r; ++j) sum += dG(i, j) * m(i) * s(j) * P.product_without(j, i - 1, r);
      }
      dT[lo + r] += static_cast<F>(sum);
    }
  }
}

// A chunk's aggregates and their reverse, in the order `aggregates` names.
template <class F>
Block<F> chunk_block(const F* S, const F* T, const F* M, index_t lo, index_t hi, Aggregates aggregates) {
  return aggregates == Aggregates::prefix ? chunk_block_prefix(S, T, M, lo, hi) : chunk_block(S, T, M, lo, hi);
}
template <class F>
void chunk_block_backward(const F* S, const F* T, const F* M, index_t lo, index_t hi, const Block<F>& d, F* dS, F* dT,
                          F* dM, Aggregates aggregates) {
  if (aggregates == Aggregates::prefix) return chunk_block_prefix_backward(S, T, M, lo, hi, d, dS, dT, dM);
  chunk_block_backward(S, T, M, lo, hi, d, dS, dT, dM);
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
// token t0's output. Every operand of a matrix product goes through op() (Operands).
template <class F>
void chunk(const Head<F>& x, const Dims& d, index_t t0, index_t len, Mat<F>& C, F* h, Aggregates aggregates,
           Operands operands) {
  const auto op = [&](const auto& m) { return operand(m, operands); };
  const Block<F> blk = chunk_block(x.S, x.T, x.M, t0, t0 + len, aggregates);
  const ConstMatMap<F> Q(x.q + t0 * d.DQK, len, d.DQK), K(x.k + t0 * d.DQK, len, d.DQK), V(x.v + t0 * d.DV, len, d.DV);
  const Mat<F> A = op(Q) * op(K).transpose();
  const Mat<F> P = masked(with_direct<F>(blk.G.cwiseProduct(A), x.D + t0, A), causal);
  Eigen::Map<Mat<F>>(h, len, d.DV) =
      x.scale * (masked_product(op(P), op(V), causal) + blk.mark.asDiagonal() * (op(Q) * op(C)));
  C *= blk.transition;
  C.noalias() += op(blk.source.asDiagonal() * K).transpose() * op(V);
}

// Reverse of chunk(): `dC` holds the gradient of the state after the chunk on entry and of the state
// before it on exit; C is the state before the chunk.
template <class F>
void chunk_backward(const Head<F>& x, const Dims& d, index_t t0, index_t len, const Mat<F>& C, const F* dh, Mat<F>& dC,
                    SequenceGrad<F>& g, index_t bh, Aggregates aggregates, Operands operands) {
  const auto op = [&](const auto& m) { return operand(m, operands); };
  const Block<F> blk = chunk_block(x.S, x.T, x.M, t0, t0 + len, aggregates);
  const ConstMatMap<F> Q(x.q + t0 * d.DQK, len, d.DQK), K(x.k + t0 * d.DQK, len, d.DQK), V(x.v + t0 * d.DV, len, d.DV);
  const Mat<F> dH = x.scale * ConstMatMap<F>(dh + t0 * d.DV, len, d.DV);
  const Mat<F> A = op(Q) * op(K).transpose();
  const Mat<F> P = masked(with_direct<F>(blk.G.cwiseProduct(A), x.D + t0, A), causal);
  const Mat<F> QC = op(Q) * op(C);
  // h = s (P V + diag(mark) Q C),  C_after = transition C + K^T diag(source) V
  const Mat<F> dP = masked(op(dH) * op(V).transpose(), causal);
  Mat<F> dA = dP.cwiseProduct(blk.G);
  dA.diagonal() += dP.diagonal().cwiseProduct(Eigen::Map<const Vec<F>>(x.D + t0, len));
  const Mat<F> K_dC = op(K) * op(dC);  // (len, DV)
  Block<F> dblk{(dC.array() * C.array()).sum(), K_dC.cwiseProduct(V).rowwise().sum(),
                dH.cwiseProduct(QC).rowwise().sum(), masked(dP.cwiseProduct(A), causal)};
  const index_t off = bh * d.S + t0;
  Eigen::Map<Mat<F>>(g.dq.data() + off * d.DQK, len, d.DQK) =
      masked_product(op(dA), op(K), causal) + blk.mark.asDiagonal() * (op(dH) * op(C).transpose());
  Eigen::Map<Mat<F>>(g.dk.data() + off * d.DQK, len, d.DQK) =
      masked_product(op(dA).transpose(), op(Q), anticausal) + blk.source.asDiagonal() * (op(V) * op(dC).transpose());
  Eigen::Map<Mat<F>>(g.dv.data() + off * d.DV, len, d.DV) =
      masked_product(op(P).transpose(), op(dH), anticausal) + blk.source.asDiagonal() * K_dC;
  Eigen::Map<Vec<F>>(g.dD.data() + off, len) = dP.diagonal().cwiseProduct(A.diagonal());
  dC = blk.transition * dC + op(blk.mark.asDiagonal() * Q).transpose() * op(dH);
  chunk_block_backward(x.S, x.T, x.M, t0, t0 + len, dblk, g.dS.data() + bh * d.S, g.dT.data() + bh * d.S,
                       g.dM.data() + bh * d.S, aggregates);
}

}  // namespace

template <class F>
SequenceGrad<F> sequence_backward(const SequenceInputs<F>& x, ConstView<F, 4> dh, index_t chunk_size, const Options& o,
                                  Aggregates aggregates, Operands operands) {
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
      chunk(head, d, t0, L, entering.back(), scratch.data(), aggregates, operands);
    }
    Mat<F> dC = Mat<F>::Zero(d.DQK, d.DV);
    for (index_t c = static_cast<index_t>(entering.size()) - 1; c >= 0; --c) {
      const index_t t0 = c * L;
      chunk_backward(head, d, t0, std::min(L, d.S - t0), entering[c], dh.data() + bh * d.S * d.DV, dC, g, bh, aggregates,
                     operands);
    }
  });
  return g;
}

std::string SequenceForm::name() const {
  switch (kind) {
    case recurrent: return "recurrent";
    case parallel: return "parallel";
    case chunkwise:
      return fmt::format("chunkwise(L={}{}{})", chunk_size, aggregates == Aggregates::prefix ? ", prefix" : "",
                         operands == Operands::bf16 ? ", bf16 operands" : "");
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
      for (index_t t0 = 0; t0 < d.S; t0 += L)
        chunk(head, d, t0, std::min(L, d.S - t0), C, out + t0 * d.DV, form.aggregates, form.operands);
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
  template SequenceGrad<F> sequence_backward(const SequenceInputs<F>&, ConstView<F, 4>, index_t, const Options&, \
                                             Aggregates, Operands);
FLASHLSTM_INSTANTIATE(float)
FLASHLSTM_INSTANTIATE(double)
#undef FLASHLSTM_INSTANTIATE

}  // namespace flashlstm::plstm
