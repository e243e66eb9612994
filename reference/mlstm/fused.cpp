// The fused order of the chunkwise mLSTM (see fused.hpp): the gate scalars of a chunk first, then its
// products; a backward in three passes joined by per-token and per-chunk scalars.
#include "reference/mlstm/fused.hpp"

#include "reference/masked.hpp"
#include "reference/mlstm/common.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace flashlstm::mlstm {
namespace {

using namespace detail;

// The gate scalars of one chunk of L tokens entered with stabiliser m_k — everything the chunk's
// weights need, known before any product. Token weights W(r, s) = exp(b_r + u_s − m_r) for s <= r;
// the entering state's weight w0_r = exp(b_r + m_k − m_r). The exiting state weights token s by
// a_s = W(L − 1, s) and the entering state by ḡ = w0_{L−1}. The scans run in double whatever T is:
// b_r + u_s is a difference of prefix sums, which in float32 loses digits as the chunk's gates add up
// (a kernel keeps these per-token scalars in fp64 too); the weights are then rounded to T.
template <class T>
struct ChunkGates {
  Vec<T> m, w0, a;              // (L): the row stabiliser; the weights of the states
  std::vector<index_t> argmax;  // where m_r is attained: −1 the entering state, else the token (the first on ties)
  Mat<T> W;                     // (L, L)
  T gbar = 0, m_next = 0;

  ChunkGates(const HeadInputs<T>& x, index_t t0, index_t L, T m_k, const Options& o)
      : m(L), w0(L), a(L), argmax(L, -1), W(Mat<T>::Zero(L, L)) {
    Vec<double> b(L), u(L);  // Σ_{p<=r} log f_p; log i_s − b_s
    double prefix = 0, U = -std::numeric_limits<double>::infinity();
    index_t U_at = -1;
    for (index_t r = 0; r < L; ++r) {
      prefix += log_forget(double(x.fgate[t0 + r]));
      b(r) = prefix;
      u(r) = log_input(double(x.igate[t0 + r]), o) - b(r);
      if (u(r) > U) U = u(r), U_at = r;
      double m_r = 0;
      if (stabilised(o)) {
        const bool state = m_k >= U;  // ties go to the entering state, as in every other form
        m_r = b(r) + (state ? double(m_k) : U);
        argmax[r] = state ? -1 : U_at;
      }
      m(r) = T(m_r);
      w0(r) = T(std::exp(b(r) + m_k - m_r));
      for (index_t s = 0; s <= r; ++s) W(r, s) = T(std::exp(b(r) + u(s) - m_r));
    }
    a = W.row(L - 1).transpose();
    gbar = w0(L - 1);
    m_next = m(L - 1);
  }
};

// One chunk's token operands: Q̂ = DQK^-1/2 Q, K, V.
template <class T>
struct ChunkTokens {
  Mat<T> Q_hat, K, V;
  ChunkTokens(const HeadInputs<T>& x, index_t t0, index_t L)
      : Q_hat(x.scale * ConstMatMap<T>(x.q + t0 * x.DQK, L, x.DQK)),
        K(ConstMatMap<T>(x.k + t0 * x.DQK, L, x.DQK)),
        V(ConstMatMap<T>(x.v + t0 * x.DV, L, x.DV)) {}
  // P = (Q̂ Kᵀ) ∘ W, causal.
  Mat<T> P(const ChunkGates<T>& g) const { return masked((Q_hat * K.transpose()).cwiseProduct(g.W), causal); }
};

// The forward of one chunk: writes h (at the chunk's first token) and advances the state.
template <class T>
void chunk_forward(const ChunkTokens<T>& c, const ChunkGates<T>& g, HeadState<T>& state, T* h, const Options& o) {
  const index_t L = c.K.rows();
  const Mat<T> P = c.P(g);
  const Mat<T> num = masked_product(P, c.V, causal) + g.w0.asDiagonal() * (c.Q_hat * state.C);
  const Vec<T> den = P.rowwise().sum() + g.w0.cwiseProduct(c.Q_hat * state.n);
  MatMap<T> H(h, L, c.V.cols());
  for (index_t r = 0; r < L; ++r) H.row(r) = num.row(r) / readout_denominator(den(r), g.m(r), o);
  state.C = g.gbar * state.C + c.K.transpose() * g.a.asDiagonal() * c.V;
  state.n = g.gbar * state.n + c.K.transpose() * g.a;
  state.m = g.m_next;
}

// What the backward's first pass leaves for the others, per token of one chunk. The entries of the
// log weights' gradient that the scalar pass combines are summed and kept in double whatever T is:
// pass 3 subtracts sums far larger than its results (the ψ scan, row minus column sums); a kernel
// runs that pass in fp64 (tests/test_mlstm_fused.cpp holds the float32 result to the kernel bound).
template <class T>
struct ChunkRows {
  Vec<T> s, dhat, dden, dm;                 // dh·num, the readout's denominator and its gradients
  Vec<double> D0;                           // the entering state's column of the log weights' gradient
  Vec<double> row_sum, col_sum;             // the row and column sums of its token columns, P ∘ G
  double sigma = 0;                         // Σ_r D0_r
};

// G = dH Vᵀ / dhat + δ (row-wise), causal: the gradient of P's entries before the weights.
template <class T>
Mat<T> weight_grad(const ChunkTokens<T>& c, const ConstMatMap<T>& dH, const ChunkRows<T>& rows) {
  Mat<T> G = dH * c.V.transpose();
  for (index_t r = 0; r < G.rows(); ++r) G.row(r) = G.row(r) / rows.dhat(r) + Mat<T>::Constant(1, G.cols(), rows.dden(r));
  return masked(G, causal);
}

}  // namespace

template <class T>
Output<T> forward_fused(const Inputs<T>& x, const OptionalState<T>& initial, index_t chunk_size, const Options& o) {
  const Dims d = check_inputs(x, initial, o);
  check_chunk_size(chunk_size, d, sizeof(T), false);
  Output<T> out = allocate_output<T>(d);
  parallel_for(d.heads(), [&](index_t bh) {
    const HeadInputs<T> hx(x, d, bh);
    HeadState<T> state = load_state<T>(initial, d, bh);
    for (index_t t0 = 0; t0 < d.S; t0 += chunk_size) {
      const index_t L = std::min(chunk_size, d.S - t0);
      chunk_forward(ChunkTokens<T>(hx, t0, L), ChunkGates<T>(hx, t0, L, state.m, o), state,
                    out.h.data() + (bh * d.S + t0) * d.DV, o);
    }
    store_state(state, out.last, bh);
  });
  return out;
}

template <class T>
InputGrad<T> backward_fused(const Inputs<T>& x, const OptionalState<T>& initial, const OutputGrad<T>& grad,
                            index_t chunk_size, const Options& o, FusedTrace<T>* trace) {
  const Dims d = check_inputs(x, initial, o);
  check_output_grad(d, grad);
  check_chunk_size(chunk_size, d, sizeof(T), true);
  InputGrad<T> out = allocate_input_grad<T>(d, initial.has_value());
  const index_t nc = (d.S + chunk_size - 1) / chunk_size;
  if (trace) {
    for (auto* t : {&trace->dh_dot_num, &trace->dhat, &trace->dden, &trace->D0}) *t = zeros<T>(Shape<3>{d.B, d.NH, d.S});
    for (auto* t : {&trace->psi, &trace->sigma, &trace->tau}) *t = zeros<T>(Shape<3>{d.B, d.NH, nc});
  }
  parallel_for(d.heads(), [&](index_t bh) {
    const HeadInputs<T> hx(x, d, bh);
    const auto t0_of = [&](index_t k) { return k * chunk_size; };
    const auto L_of = [&](index_t k) { return std::min(chunk_size, d.S - k * chunk_size); };
    const auto dH_of = [&](index_t k) {
      return ConstMatMap<T>(grad.dh.data() + (bh * d.S + t0_of(k)) * d.DV, L_of(k), d.DV);
    };

    // The state entering every chunk and the gate scalars (the kernels recompute them in each pass).
    std::vector<HeadState<T>> entering{load_state<T>(initial, d, bh)};
    std::vector<ChunkGates<T>> gates;
    std::vector<T> h_scratch(std::min(chunk_size, d.S) * d.DV);
    for (index_t k = 0; k < nc; ++k) {
      gates.emplace_back(hx, t0_of(k), L_of(k), entering.back().m, o);
      HeadState<T> next = entering.back();
      chunk_forward(ChunkTokens<T>(hx, t0_of(k), L_of(k)), gates.back(), next, h_scratch.data(), o);
      entering.push_back(std::move(next));
    }

    // Pass 1, forward in time, with C_k: dq and the per-token scalars.
    std::vector<ChunkRows<T>> rows(nc);
    for (index_t k = 0; k < nc; ++k) {
      const index_t L = L_of(k);
      const ChunkTokens<T> c(hx, t0_of(k), L);
      const ChunkGates<T>& g = gates[k];
      const HeadState<T>& in = entering[k];
      const ConstMatMap<T> dH = dH_of(k);
      ChunkRows<T>& q = rows[k];
      const Mat<T> P = c.P(g);
      const Mat<T> X1 = dH * in.C.transpose();                   // (L, DQK)
      const Mat<T> G0 = masked(dH * c.V.transpose(), causal);    // (L, L)
      const Vec<T> qX1 = c.Q_hat.cwiseProduct(X1).rowwise().sum(), qn = c.Q_hat * in.n;
      q.s = g.w0.cwiseProduct(qX1) + P.cwiseProduct(G0).rowwise().sum();  // dh·num without num
      const Vec<T> den = P.rowwise().sum() + g.w0.cwiseProduct(qn);
      q.dhat.resize(L), q.dden.resize(L), q.dm.resize(L);
      for (index_t r = 0; r < L; ++r) {
        q.dhat(r) = readout_denominator(den(r), g.m(r), o);
        const auto rg = readout_backward(q.s(r) / q.dhat(r), den(r), g.m(r), q.dhat(r), o);
        q.dden(r) = rg.dden, q.dm(r) = rg.dm;
      }
      const Mat<T> G = weight_grad(c, dH, q);
      const Mat<T> dA = g.W.cwiseProduct(G), PG = P.cwiseProduct(G);
      const Vec<T> w0_dhat = g.w0.cwiseQuotient(q.dhat), w0_dden = g.w0.cwiseProduct(q.dden);
      MatMap<T>(out.dq.data() + (bh * d.S + t0_of(k)) * d.DQK, L, d.DQK) =
          hx.scale * (masked_product(dA, c.K, causal) + w0_dhat.asDiagonal() * X1 + w0_dden * in.n.transpose());
      q.D0 = (w0_dhat.cwiseProduct(qX1) + w0_dden.cwiseProduct(qn)).template cast<double>();
      q.row_sum = PG.template cast<double>().rowwise().sum();
      q.col_sum = PG.template cast<double>().colwise().sum().transpose();
      q.sigma = q.D0.sum();
    }

    // Pass 2, backward in time, with dC_{k+1}: dk, dv, the exiting state's weight gradients e_s.
    HeadState<T> adj = load_last_state_grad(grad, d, bh);
    const double psi_last = (adj.C.template cast<double>().array() * entering[nc].C.template cast<double>().array()).sum() +
                            adj.n.template cast<double>().dot(entering[nc].n.template cast<double>());
    const double dm_last = adj.m;
    std::vector<Vec<double>> e(nc);
    for (index_t k = nc - 1; k >= 0; --k) {
      const index_t L = L_of(k), t0 = t0_of(k);
      const ChunkTokens<T> c(hx, t0, L);
      const ChunkGates<T>& g = gates[k];
      const ChunkRows<T>& q = rows[k];
      const ConstMatMap<T> dH = dH_of(k);
      const Mat<T> P = c.P(g), dA = g.W.cwiseProduct(weight_grad(c, dH, q));
      const Mat<T> dnum = q.dhat.cwiseInverse().asDiagonal() * dH;
      const Mat<T> K_dC = c.K * adj.C;  // (L, DV)
      const Vec<T> K_dn = c.K * adj.n;
      e[k] = g.a.cwiseProduct(K_dC.cwiseProduct(c.V).rowwise().sum() + K_dn).template cast<double>();
      MatMap<T>(out.dv.data() + (bh * d.S + t0) * d.DV, L, d.DV) =
          masked_product(Mat<T>(P.transpose()), dnum, anticausal) + g.a.asDiagonal() * K_dC;
      MatMap<T>(out.dk.data() + (bh * d.S + t0) * d.DQK, L, d.DQK) =
          masked_product(Mat<T>(dA.transpose()), c.Q_hat, anticausal) +
          g.a.asDiagonal() * ((c.V * adj.C.transpose()).rowwise() + adj.n.transpose());
      adj.C = g.gbar * adj.C + c.Q_hat.transpose() * (g.w0.cwiseQuotient(q.dhat).asDiagonal() * dH);
      adj.n = g.gbar * adj.n + c.Q_hat.transpose() * g.w0.cwiseProduct(q.dden);
    }

    // Pass 3, scalars: the ψ scans, the stabiliser's routing and the gate gradients, chunk by chunk
    // backwards (the entering stabiliser's gradient of chunk k is the exiting one of chunk k − 1).
    //
    // ψ_k = <dC_k, C_k> + <dn_k, n_k> is known at both ends — ψ_nc from the final state and its
    // gradient, ψ_0 from the initial state and the gradient pass 2 ends with (0 without an initial
    // state) — and each scan step adds or removes τ_k − σ_k. A scan's value carries the rounding of the
    // largest magnitudes it has passed through, so each chunk takes its ψ from the scan whose largest
    // magnitude so far is smaller: with growing states the upward scan for early chunks, the downward
    // one for late chunks.
    std::vector<double> tau(nc), psi_down(nc + 1), psi_up(nc + 1), size_down(nc + 1), size_up(nc + 1);
    for (index_t k = 0; k < nc; ++k) tau[k] = e[k].sum();
    psi_down[nc] = psi_last, size_down[nc] = std::abs(psi_last);
    for (index_t k = nc - 1; k >= 0; --k) {
      psi_down[k] = psi_down[k + 1] - tau[k] + rows[k].sigma;
      size_down[k] = std::max({size_down[k + 1], std::abs(tau[k]), std::abs(rows[k].sigma), std::abs(psi_down[k])});
    }
    psi_up[0] = initial ? (adj.C.template cast<double>().array() * entering[0].C.template cast<double>().array()).sum() +
                              adj.n.template cast<double>().dot(entering[0].n.template cast<double>())
                        : 0.0;
    size_up[0] = std::abs(psi_up[0]);
    for (index_t k = 0; k < nc; ++k) {
      psi_up[k + 1] = psi_up[k] - rows[k].sigma + tau[k];
      size_up[k + 1] = std::max({size_up[k], std::abs(tau[k]), std::abs(rows[k].sigma), std::abs(psi_up[k + 1])});
    }
    double dm_exit = dm_last;
    for (index_t k = nc - 1; k >= 0; --k) {
      const index_t L = L_of(k), t0 = t0_of(k);
      const ChunkGates<T>& g = gates[k];
      const ChunkRows<T>& q = rows[k];
      // ḡ <dC_{k+1}, C_k> + ḡ <dn_{k+1}, n_k>, the last row's state entry: ψ_{k+1} − τ_k = ψ_k − σ_k.
      // Where it is exactly 0 — a zero initial state, or a decay that underflowed — it is set so.
      const bool vanishes = g.gbar == T(0) || (k == 0 && !initial);
      const double gdot = vanishes                           ? 0.0
                          : size_up[k] <= size_down[k + 1] ? psi_up[k] - q.sigma
                                                           : psi_down[k + 1] - tau[k];
      const double psi = gdot + q.sigma;  // ψ_k, also the state column's sum before the routing
      // The log weights' gradient by rows (the state column included) and by token columns — no
      // (L, L + 1) matrix; the last row also weights the exiting state.
      Vec<double> row_sum = q.D0 + q.row_sum, col_sum = q.col_sum + e[k];
      row_sum(L - 1) += gdot + tau[k];
      double state_col = gdot + q.sigma;
      if (stabilised(o)) {  // m_r = max over the row: its gradient goes to the maximising entry
        for (index_t r = 0; r < L; ++r) {
          const double dm_r = q.dm(r) + (r == L - 1 ? dm_exit : 0.0);
          const double moved = dm_r - row_sum(r);
          row_sum(r) = dm_r;
          if (g.argmax[r] < 0) state_col += moved;
          else col_sum(g.argmax[r]) += moved;
        }
      }
      dm_exit = state_col;
      // log f_p enters every weight (r, c) with c <= p <= r: all rows from p, less the token columns
      // after p (every entry of those lies in a row >= p).
      double rows_after = 0, cols_after = 0;
      for (index_t p = L - 1; p >= 0; --p) {
        rows_after += row_sum(p);
        cols_after += col_sum(p);
        out.digate.data()[bh * d.S + t0 + p] = T(col_sum(p) * dlog_input(hx.igate[t0 + p], o));
        out.dfgate.data()[bh * d.S + t0 + p] = T((rows_after - cols_after) * dlog_forget(hx.fgate[t0 + p]));
      }
      if (trace) {
        const index_t b = bh / d.NH, h = bh % d.NH;
        for (index_t r = 0; r < L; ++r) {
          trace->dh_dot_num(b, h, t0 + r) = q.s(r);
          trace->dhat(b, h, t0 + r) = q.dhat(r);
          trace->dden(b, h, t0 + r) = q.dden(r);
          trace->D0(b, h, t0 + r) = T(q.D0(r));
        }
        trace->psi(b, h, k) = T(psi);
        trace->sigma(b, h, k) = T(q.sigma);
        trace->tau(b, h, k) = T(tau[k]);
      }
    }
    if (out.dinitial) {
      adj.m = T(dm_exit);
      store_state(adj, *out.dinitial, bh);
    }
  });
  return out;
}

#define FLASHLSTM_INSTANTIATE(T)                                                                           \
  template Output<T> forward_fused(const Inputs<T>&, const OptionalState<T>&, index_t, const Options&);     \
  template InputGrad<T> backward_fused(const Inputs<T>&, const OptionalState<T>&, const OutputGrad<T>&,     \
                                       index_t, const Options&, FusedTrace<T>*);
FLASHLSTM_INSTANTIATE(float)
FLASHLSTM_INSTANTIATE(double)
#undef FLASHLSTM_INSTANTIATE

}  // namespace flashlstm::mlstm
