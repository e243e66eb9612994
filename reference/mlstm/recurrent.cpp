// The recurrent form: the mLSTM one token at a time, exactly as docs/mlstm.md defines it. This is
// the oracle every other form and every kernel is checked against, so it stays literal: one step
// function, and its reverse-mode derivative written out line by line.
//
// The backward needs the state before each step. Storing all S states would take S·DQK·DV numbers
// per head, so it keeps a checkpoint every K = ceil(sqrt(S)) steps and recomputes the states of one
// segment at a time: memory O(sqrt(S)·DQK·DV), one extra forward pass.
#include "reference/mlstm/common.hpp"

#include <vector>

namespace flashlstm::mlstm {
namespace {

using namespace detail;

// The gates of one step, given the previous stabiliser m_{t-1}.
template <class T>
struct StepGates {
  T a;   // log f_t + m_{t-1}
  T li;  // log i_t
  T m;   // m_t
  T fp;  // f'_t = exp(a - m_t)
  T ip;  // i'_t = exp(li - m_t)
};

template <class T>
StepGates<T> step_gates(T igate, T fgate, T m_prev, const Options& o) {
  T a = log_forget(fgate) + m_prev;
  T li = log_input(igate, o);
  T m = stabilised(o) ? std::max(a, li) : T(0);
  return {a, li, m, std::exp(a - m), std::exp(li - m)};
}

// Advances `s` by one token (q, k: DQK; v, h: DV) and writes h_t.
template <class T>
void step_head(HeadState<T>& s, const T* q, const T* k, const T* v, T igate, T fgate, T scale, T* h,
               const Options& o) {
  const index_t DQK = s.C.rows(), DV = s.C.cols();
  const auto g = step_gates(igate, fgate, s.m, o);
  ConstVecMap<T> k_t(k, DQK), v_t(v, DV);
  s.C *= g.fp;
  s.C.noalias() += (g.ip * k_t) * v_t.transpose();  // C_t = f' C_{t-1} + i' k v^T
  s.n = g.fp * s.n + g.ip * k_t;                    // n_t = f' n_{t-1} + i' k
  s.m = g.m;
  const Vec<T> q_hat = scale * ConstVecMap<T>(q, DQK);
  const T dhat = readout_denominator(s.n.dot(q_hat), s.m, o);
  VecMap<T>(h, DV).noalias() = s.C.transpose() * q_hat / dhat;
}

// Reverse of step_head. `prev` and `cur` are the states before and after the step; `adj` holds the
// gradient of the loss with respect to `cur` on entry and with respect to `prev` on exit.
template <class T>
void step_head_backward(const HeadState<T>& prev, const HeadState<T>& cur, const T* q, const T* k, const T* v,
                        T igate, T fgate, T scale, const T* dh, HeadState<T>& adj, T* dq, T* dk, T* dv, T& digate,
                        T& dfgate, const Options& o) {
  const index_t DQK = cur.C.rows(), DV = cur.C.cols();
  const auto g = step_gates(igate, fgate, prev.m, o);
  ConstVecMap<T> k_t(k, DQK), v_t(v, DV), dh_t(dh, DV);
  const Vec<T> q_hat = scale * ConstVecMap<T>(q, DQK);

  // h = C^T q̂ / dhat
  const T den = cur.n.dot(q_hat);
  const T dhat = readout_denominator(den, cur.m, o);
  const Vec<T> num = cur.C.transpose() * q_hat;
  const Vec<T> dnum = dh_t / dhat;
  const auto r = readout_backward(dh_t.dot(num) / dhat, den, cur.m, dhat, o);
  adj.C.noalias() += q_hat * dnum.transpose();
  adj.n += r.dden * q_hat;
  T dm = adj.m + r.dm;
  VecMap<T>(dq, DQK) = scale * (cur.C * dnum + r.dden * cur.n);

  // C_t = f' C_{t-1} + i' k v^T,  n_t = f' n_{t-1} + i' k
  const T dfp = (adj.C.array() * prev.C.array()).sum() + adj.n.dot(prev.n);
  const Vec<T> dC_v = adj.C * v_t;
  const T dip = k_t.dot(dC_v) + adj.n.dot(k_t);
  VecMap<T>(dk, DQK) = g.ip * (dC_v + adj.n);
  VecMap<T>(dv, DV).noalias() = g.ip * (adj.C.transpose() * k_t);

  // f' = exp(a - m_t), i' = exp(li - m_t), m_t = max(a, li) (exp) or 0 (sig)
  T da = g.fp * dfp;
  T dli = g.ip * dip;
  dm -= g.fp * dfp + g.ip * dip;
  if (stabilised(o)) (g.a >= g.li ? da : dli) += dm;

  // a = log f + m_{t-1}
  adj.C *= g.fp;
  adj.n *= g.fp;
  adj.m = da;
  dfgate = da * dlog_forget(fgate);
  digate = dli * dlog_input(igate, o);
}

}  // namespace

template <class T>
Output<T> forward_recurrent(const Inputs<T>& x, const OptionalState<T>& initial, const Options& o) {
  const Dims d = check_inputs(x, initial, o);
  Output<T> out = allocate_output<T>(d);
  parallel_for(d.heads(), [&](index_t bh) {
    const HeadInputs<T> hx(x, d, bh);
    HeadState<T> s = load_state<T>(initial, d, bh);
    T* h = out.h.data() + bh * d.S * d.DV;
    for (index_t t = 0; t < d.S; ++t) {
      step_head(s, hx.q + t * d.DQK, hx.k + t * d.DQK, hx.v + t * d.DV, hx.igate[t], hx.fgate[t], hx.scale,
                h + t * d.DV, o);
    }
    store_state(s, out.last, bh);
  });
  return out;
}

template <class T>
InputGrad<T> backward_recurrent(const Inputs<T>& x, const OptionalState<T>& initial, const OutputGrad<T>& grad,
                                const Options& o) {
  const Dims d = check_inputs(x, initial, o);
  check_output_grad(d, grad);
  InputGrad<T> out = allocate_input_grad<T>(d, initial.has_value());
  const index_t K = std::max<index_t>(1, static_cast<index_t>(std::ceil(std::sqrt(static_cast<double>(d.S)))));
  parallel_for(d.heads(), [&](index_t bh) {
    const HeadInputs<T> hx(x, d, bh);
    std::vector<T> h_scratch(d.DV);
    auto advance = [&](HeadState<T>& s, index_t t) {
      step_head(s, hx.q + t * d.DQK, hx.k + t * d.DQK, hx.v + t * d.DV, hx.igate[t], hx.fgate[t], hx.scale,
                h_scratch.data(), o);
    };

    std::vector<HeadState<T>> checkpoints;  // state before steps 0, K, 2K, ...
    HeadState<T> s = load_state<T>(initial, d, bh);
    for (index_t t = 0; t < d.S; ++t) {
      if (t % K == 0) checkpoints.push_back(s);
      advance(s, t);
    }

    HeadState<T> adj = load_last_state_grad(grad, d, bh);

    const T* dh = grad.dh.data() + bh * d.S * d.DV;
    T* dq = out.dq.data() + bh * d.S * d.DQK;
    T* dk = out.dk.data() + bh * d.S * d.DQK;
    T* dv = out.dv.data() + bh * d.S * d.DV;
    T* digate = out.digate.data() + bh * d.S;
    T* dfgate = out.dfgate.data() + bh * d.S;
    std::vector<HeadState<T>> states(K + 1, checkpoints[0]);  // states[j] = state before step t0 + j
    for (index_t seg = static_cast<index_t>(checkpoints.size()) - 1; seg >= 0; --seg) {
      const index_t t0 = seg * K, t1 = std::min(d.S, t0 + K);
      states[0] = checkpoints[seg];
      for (index_t t = t0; t < t1; ++t) {
        states[t - t0 + 1] = states[t - t0];  // same sizes: copies without allocating
        advance(states[t - t0 + 1], t);
      }
      for (index_t t = t1 - 1; t >= t0; --t) {
        step_head_backward(states[t - t0], states[t - t0 + 1], hx.q + t * d.DQK, hx.k + t * d.DQK, hx.v + t * d.DV,
                           hx.igate[t], hx.fgate[t], hx.scale, dh + t * d.DV, adj, dq + t * d.DQK, dk + t * d.DQK,
                           dv + t * d.DV, digate[t], dfgate[t], o);
      }
    }
    if (out.dinitial) store_state(adj, *out.dinitial, bh);
  });
  return out;
}

template <class T>
xt::xtensor<T, 3> step(ConstView<T, 3> q, ConstView<T, 3> k, ConstView<T, 3> v, ConstView<T, 2> igate,
                       ConstView<T, 2> fgate, State<T>& state, const Options& o) {
  require(!q.empty(), "q", "is null");
  const index_t B = q.shape(0), NH = q.shape(1), DQK = q.shape(2), DV = v.shape(2);
  require(B >= 1 && NH >= 1 && DQK >= 1, "q", "expected shape (B, NH, DQK) with every extent >= 1, got {}",
          shape_string(q.shape()));
  require(DV >= 1, "v", "expected DV >= 1, got shape {}", shape_string(v.shape()));
  check_shape("k", k, {B, NH, DQK});
  check_shape("v", v, {B, NH, DV});
  check_shape("igate", igate, {B, NH});
  check_shape("fgate", fgate, {B, NH});
  // A step is a sequence of length 1: the sequence checks cover the state.
  const Inputs<T> x{ConstView<T, 4>(q.data(), {B, NH, 1, DQK}), ConstView<T, 4>(k.data(), {B, NH, 1, DQK}),
                    ConstView<T, 4>(v.data(), {B, NH, 1, DV}), ConstView<T, 3>(igate.data(), {B, NH, 1}),
                    ConstView<T, 3>(fgate.data(), {B, NH, 1})};
  const Dims d = check_inputs(x, OptionalState<T>(state), o, "state");
  auto h = zeros<T>(Shape<3>{B, NH, DV});
  parallel_for(d.heads(), [&](index_t bh) {
    const HeadInputs<T> hx(x, d, bh);
    HeadState<T> s = head_state(state, bh);
    step_head(s, hx.q, hx.k, hx.v, hx.igate[0], hx.fgate[0], hx.scale, h.data() + bh * DV, o);
    store_state(s, state, bh);
  });
  return h;
}

#define FLASHLSTM_INSTANTIATE(T)                                                                                  \
  template Output<T> forward_recurrent(const Inputs<T>&, const OptionalState<T>&, const Options&);               \
  template InputGrad<T> backward_recurrent(const Inputs<T>&, const OptionalState<T>&, const OutputGrad<T>&,       \
                                           const Options&);                                                       \
  template xt::xtensor<T, 3> step(ConstView<T, 3>, ConstView<T, 3>, ConstView<T, 3>, ConstView<T, 2>,             \
                                  ConstView<T, 2>, State<T>&, const Options&);
FLASHLSTM_INSTANTIATE(float)
FLASHLSTM_INSTANTIATE(double)
#undef FLASHLSTM_INSTANTIATE

}  // namespace flashlstm::mlstm
