// The parallel (quadratic) form of the mLSTM (docs/mlstm.md) for one segment entered with a state,
// forward and backward. Written as matrix products so that Eigen's GEMMs do the heavy work:
//
//   Q̂ = s·Q, A = Q̂ K^T (L×L), W = the masked, stabilised decay matrix (L × (L+1))
//   num = (A∘W) V + w_0 ∘ Q̂ C_0,  den = (A∘W) 1 + w_0 ∘ Q̂ n_0,  h = readout(num, den, m)
//   final state: C = K^T diag(w_L) V + w_L0 C_0 (the last row of W weights the state update)
//
// Column 0 of W is the entering state, treated like a token at position 0 whose log input gate is
// m_0: logD(r, c) = Σ_{p=c..r} log f_p + log i_c. Each row is summed from the diagonal outwards (a
// masked cumulative sum), never as a difference of two long cumulative sums, so nothing cancels.
//
// Every operand of a matrix product is written op(M): M itself, or M rounded to bf16 when the caller
// asks for the arithmetic of a plain bf16 kernel (Operands::bf16; common.hpp). The token-to-token
// products are causal (reference/masked.hpp): a NaN in a later token never reaches an earlier one.
#include "reference/masked.hpp"
#include "reference/mlstm/segment.hpp"

#include <limits>
#include <vector>

namespace flashlstm::mlstm {
namespace detail {
namespace {

template <class T>
struct Decay {
  Mat<T> W;                   // (L, L+1): exp(logD(r, c) - m_r) for c <= r + 1, else 0
  Vec<T> m;                   // (L): m_r = max_c logD(r, c) (exp) or 0 (sig)
  std::vector<index_t> argmax;  // (L): the column where m_r is attained
};

template <class T>
Decay<T> decay(const T* igate, const T* fgate, index_t L, T m0, const Options& o) {
  Decay<T> d{Mat<T>::Zero(L, L + 1), Vec<T>::Zero(L), std::vector<index_t>(L, 0)};
  std::vector<T> log_f(L), log_i(L + 1);  // log_i[0] = m0: the entering state
  log_i[0] = m0;
  for (index_t p = 0; p < L; ++p) {
    log_f[p] = log_forget(fgate[p]);
    log_i[p + 1] = log_input(igate[p], o);
  }
  for (index_t r = 0; r < L; ++r) {
    T acc = 0, best = -std::numeric_limits<T>::infinity();
    for (index_t c = r + 1; c >= 0; --c) {  // logD(r, c) = Σ_{p=c..r} log f_p + log_i[c]
      const T logD = acc + log_i[c];
      d.W(r, c) = logD;
      if (logD >= best) best = logD, d.argmax[r] = c;
      if (c > 0) acc += log_f[c - 1];
    }
    d.m(r) = stabilised(o) ? best : T(0);
    for (index_t c = 0; c <= r + 1; ++c) d.W(r, c) = std::exp(d.W(r, c) - d.m(r));
  }
  return d;
}

}  // namespace

template <class T>
HeadState<T> segment_forward(const HeadInputs<T>& x, index_t t0, index_t L, const HeadState<T>& in, T* h,
                             const Options& o, Operands operands) {
  auto op = [operands](const auto& M) { return operand(M, operands); };
  const Mat<T> Q_hat = op(x.scale * ConstMatMap<T>(x.q + t0 * x.DQK, L, x.DQK));
  const Mat<T> K = op(ConstMatMap<T>(x.k + t0 * x.DQK, L, x.DQK)), V = op(ConstMatMap<T>(x.v + t0 * x.DV, L, x.DV));
  const Decay<T> D = decay(x.igate + t0, x.fgate + t0, L, in.m, o);
  const Vec<T> w0 = D.W.col(0);
  const Mat<T> P = masked((Q_hat * K.transpose()).cwiseProduct(D.W.rightCols(L)), causal);  // (L, L)
  const Mat<T> num = masked_product(op(P), V, causal) + w0.asDiagonal() * (Q_hat * op(in.C));  // (L, DV)
  const Vec<T> den = P.rowwise().sum() + w0.cwiseProduct(Q_hat * op(in.n));  // (L)
  MatMap<T> H(h, L, x.DV);
  for (index_t r = 0; r < L; ++r) H.row(r) = num.row(r) / readout_denominator(den(r), D.m(r), o);

  const Vec<T> w_last = D.W.row(L - 1).tail(L).transpose();  // weights of the tokens in the final state
  const T w_last0 = D.W(L - 1, 0);
  HeadState<T> out;
  out.C.noalias() = K.transpose() * op(w_last.asDiagonal() * V);
  out.C += w_last0 * in.C;
  out.n.noalias() = K.transpose() * op(w_last);
  out.n += w_last0 * in.n;
  out.m = D.m(L - 1);
  return out;
}

template <class T>
void segment_backward(const HeadInputs<T>& x, index_t t0, index_t L, const HeadState<T>& in, const T* dh,
                      HeadState<T>& adj, const HeadGrad<T>& grad, const Options& o, Operands operands) {
  auto op = [operands](const auto& M) { return operand(M, operands); };
  const Mat<T> Q_hat = op(x.scale * ConstMatMap<T>(x.q + t0 * x.DQK, L, x.DQK));
  const Mat<T> K = op(ConstMatMap<T>(x.k + t0 * x.DQK, L, x.DQK)), V = op(ConstMatMap<T>(x.v + t0 * x.DV, L, x.DV));
  const ConstMatMap<T> dH(dh, L, x.DV);
  const Decay<T> D = decay(x.igate + t0, x.fgate + t0, L, in.m, o);
  const Mat<T> C0 = op(in.C), dC = op(adj.C);  // the entering state and the final state's adjoint as operands
  const Vec<T> n0 = op(in.n), dn = op(adj.n);

  // Forward quantities.
  const Vec<T> w0 = D.W.col(0);
  const Mat<T> A = Q_hat * K.transpose();
  const Mat<T> P = masked(A.cwiseProduct(D.W.rightCols(L)), causal), P_op = op(P);
  const Mat<T> QC = Q_hat * C0;  // (L, DV)
  const Vec<T> Qn = Q_hat * n0;  // (L)
  const Mat<T> num = masked_product(P_op, V, causal) + w0.asDiagonal() * QC;
  const Vec<T> den = P.rowwise().sum() + w0.cwiseProduct(Qn);

  // Readout: dnum = dh / dhat, plus the gradients reaching den (delta) and m (dm).
  Mat<T> dnum(L, x.DV);
  Vec<T> delta(L), dm(L);
  for (index_t r = 0; r < L; ++r) {
    const T dhat = readout_denominator(den(r), D.m(r), o);
    dnum.row(r) = dH.row(r) / dhat;
    const auto g = readout_backward(dH.row(r).dot(num.row(r)) / dhat, den(r), D.m(r), dhat, o);
    delta(r) = g.dden;
    dm(r) = g.dm;
  }

  // num_r = Σ_c W(r,c) A(r,c) v_c and den_r = Σ_c W(r,c) A(r,c): G(r,c) = dnum_r·v_c + delta_r.
  const Mat<T> dnum_op = op(dnum);
  const Mat<T> G = masked((dnum_op * V.transpose()).colwise() + delta, causal);  // (L, L)
  const Mat<T> dA = D.W.rightCols(L).cwiseProduct(G);
  Mat<T> dlogD(L, L + 1);  // W ∘ dW: the gradient of each log weight
  dlogD.rightCols(L) = P.cwiseProduct(G);
  dlogD.col(0) = w0.cwiseProduct(QC.cwiseProduct(dnum).rowwise().sum() + delta.cwiseProduct(Qn));

  // The final state is weighted by the last row of W.
  const Vec<T> w_last = D.W.row(L - 1).tail(L).transpose();
  const T w_last0 = D.W(L - 1, 0);
  const Mat<T> K_dC = K * dC;  // (L, DV)
  Vec<T> dw_last(L + 1);
  dw_last(0) = (adj.C.array() * in.C.array()).sum() + adj.n.dot(in.n);
  dw_last.tail(L) = K_dC.cwiseProduct(V).rowwise().sum() + K * dn;
  dlogD.row(L - 1) += D.W.row(L - 1).cwiseProduct(dw_last.transpose());

  // W(r, c) = exp(logD(r, c) - m_r) and m_r = max_c logD(r, c): route dm_r to the maximising column.
  if (stabilised(o)) {
    dm(L - 1) += adj.m;
    for (index_t r = 0; r < L; ++r) dlogD(r, D.argmax[r]) += dm(r) - dlogD.row(r).sum();
  }

  MatMap<T> dQ(grad.dq, L, x.DQK), dK(grad.dk, L, x.DQK), dV(grad.dv, L, x.DV);
  const Mat<T> dA_op = op(dA);
  dQ.noalias() = x.scale * (masked_product(dA_op, K, causal) +
                            w0.asDiagonal() * (dnum_op * C0.transpose() + op(delta) * n0.transpose()));
  dK.noalias() = masked_product(dA_op.transpose(), Q_hat, anticausal) +
                 w_last.asDiagonal() * ((V * dC.transpose()).rowwise() + adj.n.transpose());
  dV.noalias() = masked_product(P_op.transpose(), dnum_op, anticausal) + w_last.asDiagonal() * K_dC;

  HeadState<T> din;
  din.C.noalias() = Q_hat.transpose() * op(w0.asDiagonal() * dnum);
  din.C += w_last0 * adj.C;
  din.n.noalias() = Q_hat.transpose() * op(w0.cwiseProduct(delta));
  din.n += w_last0 * adj.n;
  din.m = dlogD.col(0).sum();

  // logD(r, c) = Σ_{p=c..r} log f_p + log i_c: log f_p collects every (r, c) with c <= p <= r.
  std::vector<T> dlog_f(L, T(0));
  for (index_t r = 0; r < L; ++r) {
    T prefix = 0;
    for (index_t p = 0; p <= r; ++p) {
      prefix += dlogD(r, p);
      dlog_f[p] += prefix;
    }
  }
  for (index_t p = 0; p < L; ++p) {
    grad.digate[p] = dlogD.col(p + 1).sum() * dlog_input(x.igate[t0 + p], o);
    grad.dfgate[p] = dlog_f[p] * dlog_forget(x.fgate[t0 + p]);
  }
  adj = std::move(din);
}

#define FLASHLSTM_INSTANTIATE(T)                                                                         \
  template HeadState<T> segment_forward(const HeadInputs<T>&, index_t, index_t, const HeadState<T>&, T*,     \
                                        const Options&, Operands);                                       \
  template void segment_backward(const HeadInputs<T>&, index_t, index_t, const HeadState<T>&, const T*,      \
                                 HeadState<T>&, const HeadGrad<T>&, const Options&, Operands);
FLASHLSTM_INSTANTIATE(float)
FLASHLSTM_INSTANTIATE(double)
#undef FLASHLSTM_INSTANTIATE

}  // namespace detail

template <class T>
Output<T> forward_parallel(const Inputs<T>& x, const OptionalState<T>& initial, const Options& options) {
  return forward_chunkwise(x, initial, x.q.shape(2), options);
}

template <class T>
InputGrad<T> backward_parallel(const Inputs<T>& x, const OptionalState<T>& initial, const OutputGrad<T>& grad,
                               const Options& options) {
  return backward_chunkwise(x, initial, grad, x.q.shape(2), options);
}

template Output<float> forward_parallel(const Inputs<float>&, const OptionalState<float>&, const Options&);
template Output<double> forward_parallel(const Inputs<double>&, const OptionalState<double>&, const Options&);
template InputGrad<float> backward_parallel(const Inputs<float>&, const OptionalState<float>&,
                                            const OutputGrad<float>&, const Options&);
template InputGrad<double> backward_parallel(const Inputs<double>&, const OptionalState<double>&,
                                             const OutputGrad<double>&, const Options&);

}  // namespace flashlstm::mlstm
