// Random problems, named tensors, losses and the gradient and state-passing checks of the mLSTM
// (see check.hpp).
#include "reference/mlstm/check.hpp"

#include "core/random.hpp"

namespace flashlstm::mlstm {

std::string ProblemShape::name() const {
  return fmt::format("B{} NH{} S{} DQK{} DV{}{}", B, NH, S, DQK, DV, initial_state ? " +state" : "");
}

template <class T>
double Problem<T>::scale() const {
  return initial ? check::rms(q, k, v, igate, fgate, dh, initial->C) : check::rms(q, k, v, igate, fgate, dh);
}

template <class T>
Problem<T> Problem<T>::piece(index_t t0, index_t t1) const {
  using xt::all;
  using xt::range;
  return {xt::view(q, all(), all(), range(t0, t1), all()),
          xt::view(k, all(), all(), range(t0, t1), all()),
          xt::view(v, all(), all(), range(t0, t1), all()),
          xt::view(igate, all(), all(), range(t0, t1)),
          xt::view(fgate, all(), all(), range(t0, t1)),
          initial,
          xt::view(dh, all(), all(), range(t0, t1), all()),
          dC_last,
          dn_last,
          dm_last};
}

template <class T>
Problem<T> random_problem(const ProblemShape& s, std::uint64_t seed) {
  Rng rng(seed);
  Problem<T> p;
  p.q = rng.normal<T>(Shape<4>{s.B, s.NH, s.S, s.DQK});
  p.k = rng.normal<T>(Shape<4>{s.B, s.NH, s.S, s.DQK});
  p.v = rng.normal<T>(Shape<4>{s.B, s.NH, s.S, s.DV});
  p.igate = rng.normal<T>(Shape<3>{s.B, s.NH, s.S}, 0.0, 2.0);
  p.fgate = rng.normal<T>(Shape<3>{s.B, s.NH, s.S}, 3.0, 1.5);
  if (s.initial_state) {
    p.initial = State<T>{rng.normal<T>(Shape<4>{s.B, s.NH, s.DQK, s.DV}), rng.normal<T>(Shape<3>{s.B, s.NH, s.DQK}),
                         rng.normal<T>(Shape<2>{s.B, s.NH})};
  }
  p.dh = rng.normal<T>(Shape<4>{s.B, s.NH, s.S, s.DV});
  p.dC_last = rng.normal<T>(Shape<4>{s.B, s.NH, s.DQK, s.DV});
  p.dn_last = rng.normal<T>(Shape<3>{s.B, s.NH, s.DQK});
  p.dm_last = rng.normal<T>(Shape<2>{s.B, s.NH});
  return p;
}

template <class To, class From>
Problem<To> cast_problem(const Problem<From>& p) {
  auto c = [](const auto& x) { return xt::eval(xt::cast<To>(x)); };
  Problem<To> out{c(p.q), c(p.k), c(p.v), c(p.igate), c(p.fgate), std::nullopt, c(p.dh), c(p.dC_last), c(p.dn_last),
                  c(p.dm_last)};
  if (p.initial) out.initial = State<To>{c(p.initial->C), c(p.initial->n), c(p.initial->m)};
  return out;
}

template <class T>
std::vector<check::Named<T>> tensors(const Output<T>& out) {
  return {check::named("h", out.h), check::named("C", out.last.C), check::named("n", out.last.n),
          check::named("m", out.last.m)};
}

template <class T>
std::vector<check::Named<T>> tensors(const InputGrad<T>& grad) {
  std::vector<check::Named<T>> t = {check::named("dq", grad.dq), check::named("dk", grad.dk),
                                    check::named("dv", grad.dv), check::named("digate", grad.digate),
                                    check::named("dfgate", grad.dfgate)};
  if (grad.dinitial) {
    t.push_back(check::named("dC0", grad.dinitial->C));
    t.push_back(check::named("dn0", grad.dinitial->n));
    t.push_back(check::named("dm0", grad.dinitial->m));
  }
  return t;
}

template <class T>
double loss(const Problem<T>& p, const Output<T>& out) {
  using check::dot;
  return dot(p.dh, out.h) + dot(p.dC_last, out.last.C) + dot(p.dn_last, out.last.n) + dot(p.dm_last, out.last.m);
}

check::Report gradcheck(const Form& form, Problem<double> p, const Options& options, std::uint64_t seed) {
  const InputGrad<double> grad = backward(p.inputs(), p.initial_view(), p.output_grad(), form, options);
  std::vector<check::Argument> arguments = {
      check::argument("q", p.q, grad.dq), check::argument("k", p.k, grad.dk), check::argument("v", p.v, grad.dv),
      check::argument("igate", p.igate, grad.digate), check::argument("fgate", p.fgate, grad.dfgate)};
  if (p.initial) {
    arguments.push_back(check::argument("C0", p.initial->C, grad.dinitial->C));
    arguments.push_back(check::argument("n0", p.initial->n, grad.dinitial->n));
    arguments.push_back(check::argument("m0", p.initial->m, grad.dinitial->m));
  }
  return check::gradcheck(
      arguments, [&] { return loss(p, forward(p.inputs(), p.initial_view(), form, options)); }, seed);
}

check::Report state_passing(const Form& form, const Problem<double>& p, index_t split, const Options& o,
                            double bound) {
  const index_t S = p.q.shape(2);
  require(split > 0 && split < S, "split", "expected 0 < split < S = {}, got {}", S, split);
  const auto whole = forward(p.inputs(), p.initial_view(), form, o);
  const auto whole_grad = backward(p.inputs(), p.initial_view(), p.output_grad(), form, o);

  auto first = p.piece(0, split), second = p.piece(split, S);
  const auto out1 = forward(first.inputs(), first.initial_view(), form, o);
  second.initial = out1.last;
  const auto out2 = forward(second.inputs(), second.initial_view(), form, o);
  const Output<double> joined{xt::concatenate(xt::xtuple(out1.h, out2.h), 2), out2.last};

  // The second piece's gradient of its initial state is the first piece's upstream gradient.
  const auto grad2 = backward(second.inputs(), second.initial_view(), second.output_grad(), form, o);
  first.dC_last = grad2.dinitial->C;
  first.dn_last = grad2.dinitial->n;
  first.dm_last = grad2.dinitial->m;
  const auto grad1 = backward(first.inputs(), first.initial_view(), first.output_grad(), form, o);
  auto cat = [](const auto& a, const auto& b) { return xt::eval(xt::concatenate(xt::xtuple(a, b), 2)); };
  const InputGrad<double> joined_grad{cat(grad1.dq, grad2.dq),         cat(grad1.dk, grad2.dk),
                                      cat(grad1.dv, grad2.dv),         cat(grad1.digate, grad2.digate),
                                      cat(grad1.dfgate, grad2.dfgate), grad1.dinitial};
  check::Report report = check::compare(joined, whole, bound, p.scale());
  report.add(check::compare(joined_grad, whole_grad, bound, p.scale()));
  return report;
}

#define FLASHLSTM_INSTANTIATE(T)                                                                \
  template struct Problem<T>;                                                                   \
  template Problem<T> random_problem<T>(const ProblemShape&, std::uint64_t);                    \
  template std::vector<check::Named<T>> tensors(const Output<T>&);                              \
  template std::vector<check::Named<T>> tensors(const InputGrad<T>&);                           \
  template double loss(const Problem<T>&, const Output<T>&);
FLASHLSTM_INSTANTIATE(float)
FLASHLSTM_INSTANTIATE(double)
#undef FLASHLSTM_INSTANTIATE
template Problem<float> cast_problem<float, double>(const Problem<double>&);
template Problem<double> cast_problem<double, float>(const Problem<float>&);

}  // namespace flashlstm::mlstm
