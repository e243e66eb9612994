// Packed variable-length batches (varlen.hpp): each sequence's tokens are copied out of the packed
// tensors, run through the chosen form with the sequence's own states, and copied back.
#include "reference/mlstm/varlen.hpp"

#include "core/error.hpp"

#include <algorithm>

namespace flashlstm::mlstm {
namespace {

// Checks the offsets against the packed inputs; returns N.
template <class T>
index_t check_packed(const Inputs<T>& x, const std::vector<index_t>& cu) {
  require(!x.q.empty(), "q", "is null");
  require(x.q.shape(0) == 1, "q", "packed sequences take B = 1 (the sequences lie along S), got shape {}",
          shape_string(x.q.shape()));
  require(cu.size() >= 2, "cu_seqlens", "expected N + 1 >= 2 offsets, got {}", cu.size());
  require(cu.front() == 0, "cu_seqlens", "must start at 0, got {}", cu.front());
  for (std::size_t i = 1; i < cu.size(); ++i)
    require(cu[i] >= cu[i - 1], "cu_seqlens", "must not decrease, got {} after {} at position {}", cu[i], cu[i - 1], i);
  require(cu.back() == x.q.shape(2), "cu_seqlens", "must end at the number of tokens {}, got {}", x.q.shape(2),
          cu.back());
  return static_cast<index_t>(cu.size()) - 1;
}

// Tokens [t0, t1) of a (1, NH, S[, D]) array, as a (1, NH, t1 - t0[, D]) array.
template <class T, std::size_t N>
xt::xtensor<T, N> tokens(const ConstView<T, N>& a, index_t t0, index_t t1) {
  Shape<N> shape = a.shape();
  shape[2] = t1 - t0;
  const index_t D = N == 4 ? a.shape(3) : 1, S = a.shape(2);
  auto out = uninitialized<T>(shape);
  for (index_t h = 0; h < a.shape(1); ++h)
    std::copy_n(a.data() + (h * S + t0) * D, (t1 - t0) * D, out.data() + h * (t1 - t0) * D);
  return out;
}

// The reverse: `part` (1, NH, t1 - t0[, D]) into tokens [t0, t1) of `whole`.
template <class T, std::size_t N>
void put_tokens(const xt::xtensor<T, N>& part, xt::xtensor<T, N>& whole, index_t t0) {
  const index_t D = N == 4 ? whole.shape()[3] : 1, S = whole.shape()[2], L = part.shape()[2];
  for (std::size_t h = 0; h < whole.shape()[1]; ++h)
    std::copy_n(part.data() + h * L * D, L * D, whole.data() + (h * S + t0) * D);
}

// Batch entry i of a (N, ...) view, as a (1, ...) view of the same memory.
template <class T, std::size_t N>
ConstView<T, N> entry(const ConstView<T, N>& a, index_t i) {
  Shape<N> shape = a.shape();
  shape[0] = 1;
  return ConstView<T, N>(a.data() + i * (a.size() / a.shape(0)), shape);
}
template <class T, std::size_t N>
void put_entry(const xt::xtensor<T, N>& part, xt::xtensor<T, N>& whole, index_t i) {
  std::copy_n(part.data(), part.size(), whole.data() + i * part.size());
}

template <class T>
OptionalState<T> state_entry(const OptionalState<T>& s, index_t i) {
  if (!s) return std::nullopt;
  return StateView<T>(entry(s->C, i), entry(s->n, i), entry(s->m, i));
}
template <class T>
void put_state(const State<T>& part, State<T>& whole, index_t i) {
  put_entry(part.C, whole.C, i);
  put_entry(part.n, whole.n, i);
  put_entry(part.m, whole.m, i);
}

// Sequence i of the packed inputs, as an owning batch of one.
template <class T>
struct Sequence {
  xt::xtensor<T, 4> q, k, v;
  xt::xtensor<T, 3> igate, fgate;
  Sequence(const Inputs<T>& x, index_t t0, index_t t1)
      : q(tokens(x.q, t0, t1)),
        k(tokens(x.k, t0, t1)),
        v(tokens(x.v, t0, t1)),
        igate(tokens(x.igate, t0, t1)),
        fgate(tokens(x.fgate, t0, t1)) {}
  Inputs<T> inputs() const { return {q, k, v, igate, fgate}; }
};

// The state a sequence without tokens hands on: its initial state, or zeros.
template <class T>
State<T> copy_state(const OptionalState<T>& s, index_t NH, index_t DQK, index_t DV) {
  State<T> out = zero_state<T>(1, NH, DQK, DV);
  if (s) {
    std::copy_n(s->C.data(), out.C.size(), out.C.data());
    std::copy_n(s->n.data(), out.n.size(), out.n.data());
    std::copy_n(s->m.data(), out.m.size(), out.m.data());
  }
  return out;
}

template <class T>
void check_states(const Inputs<T>& x, index_t N, const OptionalState<T>& initial, const OutputGrad<T>* grad) {
  const index_t NH = x.q.shape(1), DQK = x.q.shape(3), DV = x.v.shape(3);
  if (initial) {
    check_shape("initial.C", initial->C, {N, NH, DQK, DV});
    check_shape("initial.n", initial->n, {N, NH, DQK});
    check_shape("initial.m", initial->m, {N, NH});
  }
  if (grad) {
    check_shape("dh", grad->dh, x.v.shape());
    if (grad->dC_last) check_shape("dC_last", *grad->dC_last, {N, NH, DQK, DV});
    if (grad->dn_last) check_shape("dn_last", *grad->dn_last, {N, NH, DQK});
    if (grad->dm_last) check_shape("dm_last", *grad->dm_last, {N, NH});
  }
}

}  // namespace

template <class T>
Output<T> forward_varlen(const Inputs<T>& x, const std::vector<index_t>& cu, const OptionalState<T>& initial,
                         const Form& form, const Options& o) {
  const index_t N = check_packed(x, cu);
  check_states(x, N, initial, static_cast<const OutputGrad<T>*>(nullptr));
  const index_t NH = x.q.shape(1), DQK = x.q.shape(3), DV = x.v.shape(3);
  Output<T> out{zeros<T>(Shape<4>{1, NH, x.q.shape(2), DV}), zero_state<T>(N, NH, DQK, DV)};
  for (index_t i = 0; i < N; ++i) {
    const OptionalState<T> init = state_entry<T>(initial, i);
    if (cu[i] == cu[i + 1]) {
      put_state(copy_state<T>(init, NH, DQK, DV), out.last, i);
      continue;
    }
    const Sequence<T> s(x, cu[i], cu[i + 1]);
    const Output<T> part = forward(s.inputs(), init, form, o);
    put_tokens(part.h, out.h, cu[i]);
    put_state(part.last, out.last, i);
  }
  return out;
}

template <class T>
InputGrad<T> backward_varlen(const Inputs<T>& x, const std::vector<index_t>& cu, const OptionalState<T>& initial,
                             const OutputGrad<T>& grad, const Form& form, const Options& o) {
  const index_t N = check_packed(x, cu);
  check_states(x, N, initial, &grad);
  const index_t NH = x.q.shape(1), S = x.q.shape(2), DQK = x.q.shape(3), DV = x.v.shape(3);
  InputGrad<T> out{zeros<T>(x.q.shape()), zeros<T>(x.k.shape()), zeros<T>(x.v.shape()), zeros<T>(Shape<3>{1, NH, S}),
                   zeros<T>(Shape<3>{1, NH, S}), std::nullopt};
  if (initial) out.dinitial = zero_state<T>(N, NH, DQK, DV);
  const auto last_grad = [&](index_t i) {
    OutputGrad<T> g;
    if (grad.dC_last) g.dC_last = entry(*grad.dC_last, i);
    if (grad.dn_last) g.dn_last = entry(*grad.dn_last, i);
    if (grad.dm_last) g.dm_last = entry(*grad.dm_last, i);
    return g;
  };
  for (index_t i = 0; i < N; ++i) {
    const OptionalState<T> init = state_entry<T>(initial, i);
    OutputGrad<T> g = last_grad(i);
    if (cu[i] == cu[i + 1]) {  // the initial state is the final state
      if (out.dinitial) {
        State<T> d0 = zero_state<T>(1, NH, DQK, DV);
        if (g.dC_last) std::copy_n(g.dC_last->data(), d0.C.size(), d0.C.data());
        if (g.dn_last) std::copy_n(g.dn_last->data(), d0.n.size(), d0.n.data());
        if (g.dm_last) std::copy_n(g.dm_last->data(), d0.m.size(), d0.m.data());
        put_state(d0, *out.dinitial, i);
      }
      continue;
    }
    const Sequence<T> s(x, cu[i], cu[i + 1]);
    const xt::xtensor<T, 4> dh = tokens(grad.dh, cu[i], cu[i + 1]);
    g.dh = dh;
    const InputGrad<T> part = backward(s.inputs(), init, g, form, o);
    put_tokens(part.dq, out.dq, cu[i]);
    put_tokens(part.dk, out.dk, cu[i]);
    put_tokens(part.dv, out.dv, cu[i]);
    put_tokens(part.digate, out.digate, cu[i]);
    put_tokens(part.dfgate, out.dfgate, cu[i]);
    if (out.dinitial) put_state(*part.dinitial, *out.dinitial, i);
  }
  return out;
}

#define FLASHLSTM_INSTANTIATE(T)                                                                                \
  template Output<T> forward_varlen(const Inputs<T>&, const std::vector<index_t>&, const OptionalState<T>&,     \
                                    const Form&, const Options&);                                               \
  template InputGrad<T> backward_varlen(const Inputs<T>&, const std::vector<index_t>&, const OptionalState<T>&, \
                                        const OutputGrad<T>&, const Form&, const Options&);
FLASHLSTM_INSTANTIATE(float)
FLASHLSTM_INSTANTIATE(double)
#undef FLASHLSTM_INSTANTIATE

}  // namespace flashlstm::mlstm
