// Random problems, comparison and the finite-difference check for the sLSTM/LSTM (see check.hpp).
#include "reference/slstm/check.hpp"

#include "core/finite_differences.hpp"
#include "core/error.hpp"
#include "core/metrics.hpp"

#include <limits>

namespace flashlstm::slstm {

std::string ProblemShape::name() const {
  return fmt::format("B{} T{} NH{} DH{}{}", B, T, NH, DH, initial_state ? " +state" : "");
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

template <class TA, class TB>
double max_rel_error(const Output<TA>& a, const Output<TB>& ref) {
  return std::max(rel_l2(a.states, ref.states), rel_l2(a.last, ref.last));
}

template <class TA, class TB>
double max_rel_error(const InputGrad<TA>& a, const InputGrad<TB>& ref) {
  double e = std::max({rel_l2(a.dWx, ref.dWx), rel_l2(a.dR, ref.dR), rel_l2(a.db, ref.db)});
  if (a.dinitial.has_value() != ref.dinitial.has_value()) return std::numeric_limits<double>::infinity();
  if (a.dinitial) e = std::max(e, rel_l2(*a.dinitial, *ref.dinitial));
  return e;
}

template <class T>
double loss(const Problem<T>& p, const Output<T>& out) {
  const auto h = xt::view(out.states, 0);  // (B, T, NH, DH)
  return xt::sum(xt::cast<double>(p.dh) * xt::cast<double>(h))() +
         xt::sum(xt::cast<double>(p.dlast) * xt::cast<double>(out.last))();
}

PieceErrors state_passing_error(const Problem<double>& p, index_t split, const Options& o) {
  using xt::all;
  using xt::range;
  const index_t T = static_cast<index_t>(p.Wx.shape()[1]);
  require(split > 0 && split < T, "split", "expected 0 < split < T = {}, got {}", T, split);
  auto piece = [&](index_t t0, index_t t1) {
    return Problem<double>{xt::view(p.Wx, all(), range(t0, t1)), p.R, p.b, p.initial,
                           xt::view(p.dh, all(), range(t0, t1)), p.dlast};
  };
  const auto whole = forward(p.inputs(), p.initial_view(), o);
  const auto whole_grad = backward(p.inputs(), p.initial_view(), p.output_grad(), o);

  auto first = piece(0, split), second = piece(split, T);
  const auto out1 = forward(first.inputs(), first.initial_view(), o);
  second.initial = out1.last;
  const auto out2 = forward(second.inputs(), second.initial_view(), o);
  const Output<double> joined{xt::concatenate(xt::xtuple(out1.states, out2.states), 2), out2.last};

  const auto grad2 = backward(second.inputs(), second.initial_view(), second.output_grad(), o);
  first.dlast = *grad2.dinitial;
  const auto grad1 = backward(first.inputs(), first.initial_view(), first.output_grad(), o);
  const InputGrad<double> joined_grad{xt::concatenate(xt::xtuple(grad1.dWx, grad2.dWx), 1), grad1.dR + grad2.dR,
                                      grad1.db + grad2.db, grad1.dinitial};
  return {max_rel_error(joined, whole), max_rel_error(joined_grad, whole_grad)};
}

std::map<std::string, double> gradcheck(const Problem<double>& p, const Options& o, std::uint64_t seed) {
  const InputGrad<double> grad = backward(p.inputs(), p.initial_view(), p.output_grad(), o);
  Rng rng(seed);
  std::map<std::string, double> errors;
  auto check = [&](const std::string& name, auto member, const auto& g) {
    Problem<double> probe = p;
    errors[name] = directional_derivative_error(
        member(probe), g, [&] { return loss(probe, forward(probe.inputs(), probe.initial_view(), o)); }, rng);
  };
  check("Wx", [](Problem<double>& r) -> auto& { return r.Wx; }, grad.dWx);
  check("R", [](Problem<double>& r) -> auto& { return r.R; }, grad.dR);
  check("b", [](Problem<double>& r) -> auto& { return r.b; }, grad.db);
  if (p.initial) check("initial", [](Problem<double>& r) -> auto& { return *r.initial; }, *grad.dinitial);
  return errors;
}

template Problem<float> random_problem<float>(const ProblemShape&, const Options&, std::uint64_t);
template Problem<double> random_problem<double>(const ProblemShape&, const Options&, std::uint64_t);
template Problem<float> cast_problem<float, double>(const Problem<double>&);
template Problem<double> cast_problem<double, float>(const Problem<float>&);
template double max_rel_error(const Output<float>&, const Output<double>&);
template double max_rel_error(const Output<double>&, const Output<double>&);
template double max_rel_error(const InputGrad<float>&, const InputGrad<double>&);
template double max_rel_error(const InputGrad<double>&, const InputGrad<double>&);
template double loss(const Problem<double>&, const Output<double>&);
template double loss(const Problem<float>&, const Output<float>&);

}  // namespace flashlstm::slstm
