// Random problems, named tensors, the loss and the state-passing and gradient checks of the
// sLSTM/LSTM (see check.hpp).
#include "reference/slstm/check.hpp"

#include "core/random.hpp"

namespace flashlstm::slstm {

std::string ProblemShape::name() const {
  return fmt::format("B{} T{} NH{} DH{}{}", B, T, NH, DH, initial_state ? " +state" : "");
}

template <class T>
double Problem<T>::scale() const {
  return initial ? check::rms(Wx, R, b, dh, *initial) : check::rms(Wx, R, b, dh);
}

template <class T>
Problem<T> Problem<T>::piece(index_t t0, index_t t1) const {
  using xt::all;
  using xt::range;
  return {xt::view(Wx, all(), range(t0, t1)), R, b, initial, xt::view(dh, all(), range(t0, t1)), dlast};
}

template <class T>
Problem<T> random_problem(const ProblemShape& s, const Options& o, std::uint64_t seed) {
  Rng rng(seed);
  const index_t NS = num_states(o.cell);
  Problem<T> p;
  p.Wx = rng.normal<T>(Shape<5>{s.B, s.T, 4, s.NH, s.DH});
  xt::view(p.Wx, xt::all(), xt::all(), 1) += T(2);  // forget gates mostly open
  p.R = rng.normal<T>(Shape<4>{4, s.NH, s.DH, s.DH}, 0.0, 1.0 / std::sqrt(double(s.DH)));
  p.b = rng.normal<T>(Shape<3>{4, s.NH, s.DH}, 0.0, 0.5);
  if (s.initial_state) {
    p.initial = rng.normal<T>(Shape<4>{NS, s.B, s.NH, s.DH});
    if (o.cell == Cell::slstm) {  // n > 0 and |c| <= n, as states the recurrence produces
      auto n = xt::view(*p.initial, 2);
      n = xt::abs(n) + T(0.5);
      auto c = xt::view(*p.initial, 1);
      c = xt::tanh(c) * n;
    }
  }
  p.dh = rng.normal<T>(Shape<4>{s.B, s.T, s.NH, s.DH});
  p.dlast = rng.normal<T>(Shape<4>{NS, s.B, s.NH, s.DH});
  return p;
}

template <class To, class From>
Problem<To> cast_problem(const Problem<From>& p) {
  auto c = [](const auto& x) { return xt::eval(xt::cast<To>(x)); };
  Problem<To> out{c(p.Wx), c(p.R), c(p.b), std::nullopt, c(p.dh), c(p.dlast)};
  if (p.initial) out.initial = c(*p.initial);
  return out;
}

template <class T>
std::vector<check::Named<T>> tensors(const Output<T>& out) {
  return {check::named("states", out.states), check::named("last", out.last)};
}

template <class T>
std::vector<check::Named<T>> tensors(const InputGrad<T>& grad) {
  std::vector<check::Named<T>> t = {check::named("dWx", grad.dWx), check::named("dR", grad.dR),
                                    check::named("db", grad.db)};
  if (grad.dinitial) t.push_back(check::named("dinitial", *grad.dinitial));
  return t;
}

template <class T>
double loss(const Problem<T>& p, const Output<T>& out) {
  return check::dot(p.dh, xt::xtensor<T, 4>(xt::view(out.states, 0))) + check::dot(p.dlast, out.last);
}

check::Report state_passing(const Problem<double>& p, index_t split, const Options& o, double bound) {
  const index_t T = p.Wx.shape(1);
  require(split > 0 && split < T, "split", "expected 0 < split < T = {}, got {}", T, split);
  const auto whole = forward(p.inputs(), p.initial_view(), o);
  const auto whole_grad = backward(p.inputs(), p.initial_view(), p.output_grad(), o);

  auto first = p.piece(0, split), second = p.piece(split, T);
  const auto out1 = forward(first.inputs(), first.initial_view(), o);
  second.initial = out1.last;
  const auto out2 = forward(second.inputs(), second.initial_view(), o);
  const Output<double> joined{xt::concatenate(xt::xtuple(out1.states, out2.states), 2), out2.last};

  // The second piece's gradient of its initial state is the first piece's upstream gradient.
  const auto grad2 = backward(second.inputs(), second.initial_view(), second.output_grad(), o);
  first.dlast = *grad2.dinitial;
  const auto grad1 = backward(first.inputs(), first.initial_view(), first.output_grad(), o);
  const InputGrad<double> joined_grad{xt::concatenate(xt::xtuple(grad1.dWx, grad2.dWx), 1), grad1.dR + grad2.dR,
                                      grad1.db + grad2.db, grad1.dinitial};
  check::Report report = check::compare(joined, whole, bound, p.scale());
  report.add(check::compare(joined_grad, whole_grad, bound, p.scale()));
  return report;
}

check::Report gradcheck(Problem<double> p, const Options& o, std::uint64_t seed) {
  const InputGrad<double> grad = backward(p.inputs(), p.initial_view(), p.output_grad(), o);
  std::vector<check::Argument> arguments = {check::argument("Wx", p.Wx, grad.dWx), check::argument("R", p.R, grad.dR),
                                            check::argument("b", p.b, grad.db)};
  if (p.initial) arguments.push_back(check::argument("initial", *p.initial, *grad.dinitial));
  return check::gradcheck(arguments, [&] { return loss(p, forward(p.inputs(), p.initial_view(), o)); }, seed);
}

#define FLASHLSTM_INSTANTIATE(T)                                                         \
  template struct Problem<T>;                                                            \
  template Problem<T> random_problem<T>(const ProblemShape&, const Options&, std::uint64_t); \
  template std::vector<check::Named<T>> tensors(const Output<T>&);                       \
  template std::vector<check::Named<T>> tensors(const InputGrad<T>&);                    \
  template double loss(const Problem<T>&, const Output<T>&);
FLASHLSTM_INSTANTIATE(float)
FLASHLSTM_INSTANTIATE(double)
#undef FLASHLSTM_INSTANTIATE
template Problem<float> cast_problem<float, double>(const Problem<double>&);
template Problem<double> cast_problem<double, float>(const Problem<float>&);

}  // namespace flashlstm::slstm
