// Random problems, result comparison and the finite-difference gradient check (see check.hpp).
#include "reference/mlstm/check.hpp"

#include "core/finite_differences.hpp"
#include "core/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace flashlstm::mlstm {

std::string ProblemShape::name() const {
  return fmt::format("B{} NH{} S{} DQK{} DV{}{}", B, NH, S, DQK, DV, initial_state ? " +state" : "");
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

template <class TA, class TB>
std::map<std::string, double> rel_errors(const Output<TA>& a, const Output<TB>& ref) {
  return {{"h", rel_l2(a.h, ref.h)},
          {"C", rel_l2(a.last.C, ref.last.C)},
          {"n", rel_l2(a.last.n, ref.last.n)},
          {"m", rel_l2(a.last.m, ref.last.m)}};
}

template <class TA, class TB>
std::map<std::string, double> rel_errors(const InputGrad<TA>& a, const InputGrad<TB>& ref) {
  std::map<std::string, double> e{{"dq", rel_l2(a.dq, ref.dq)},
                                  {"dk", rel_l2(a.dk, ref.dk)},
                                  {"dv", rel_l2(a.dv, ref.dv)},
                                  {"digate", rel_l2(a.digate, ref.digate)},
                                  {"dfgate", rel_l2(a.dfgate, ref.dfgate)}};
  if (a.dinitial.has_value() != ref.dinitial.has_value()) {
    e["dinitial"] = std::numeric_limits<double>::infinity();
  } else if (a.dinitial) {
    e["dC0"] = rel_l2(a.dinitial->C, ref.dinitial->C);
    e["dn0"] = rel_l2(a.dinitial->n, ref.dinitial->n);
    e["dm0"] = rel_l2(a.dinitial->m, ref.dinitial->m);
  }
  return e;
}

namespace {
// The largest value; NaN if any is NaN.
double max_of(const std::map<std::string, double>& errors) {
  double worst = 0;
  for (const auto& [name, e] : errors) {
    if (std::isnan(e)) return e;
    worst = std::max(worst, e);
  }
  return worst;
}
}  // namespace

template <class TA, class TB>
double max_rel_error(const Output<TA>& a, const Output<TB>& ref) {
  return max_of(rel_errors(a, ref));
}

template <class TA, class TB>
double max_rel_error(const InputGrad<TA>& a, const InputGrad<TB>& ref) {
  return max_of(rel_errors(a, ref));
}

template <class T>
double loss(const Problem<T>& p, const Output<T>& out) {
  auto dot = [](const auto& a, const auto& b) {
    long double s = 0;
    for (std::size_t i = 0; i < a.size(); ++i) s += static_cast<long double>(a.data()[i]) * b.data()[i];
    return static_cast<double>(s);
  };
  return dot(p.dh, out.h) + dot(p.dC_last, out.last.C) + dot(p.dn_last, out.last.n) + dot(p.dm_last, out.last.m);
}

std::map<std::string, double> gradcheck(const Form& form, const Problem<double>& p, const Options& options,
                                         std::uint64_t seed) {
  const InputGrad<double> grad = backward(form, p.inputs(), p.initial_view(), p.output_grad(), options);
  Rng rng(seed);
  std::map<std::string, double> errors;

  // The directional derivative along a random direction of the tensor `member` selects, in a copy of p.
  auto check = [&](const std::string& name, auto member, const auto& g) {
    Problem<double> probe = p;
    errors[name] = directional_derivative_error(
        member(probe), g, [&] { return loss(probe, forward(form, probe.inputs(), probe.initial_view(), options)); },
        rng);
  };
  check("q", [](Problem<double>& r) -> auto& { return r.q; }, grad.dq);
  check("k", [](Problem<double>& r) -> auto& { return r.k; }, grad.dk);
  check("v", [](Problem<double>& r) -> auto& { return r.v; }, grad.dv);
  check("igate", [](Problem<double>& r) -> auto& { return r.igate; }, grad.digate);
  check("fgate", [](Problem<double>& r) -> auto& { return r.fgate; }, grad.dfgate);
  if (p.initial) {
    check("C0", [](Problem<double>& r) -> auto& { return r.initial->C; }, grad.dinitial->C);
    check("n0", [](Problem<double>& r) -> auto& { return r.initial->n; }, grad.dinitial->n);
    check("m0", [](Problem<double>& r) -> auto& { return r.initial->m; }, grad.dinitial->m);
  }
  return errors;
}

template Problem<float> random_problem<float>(const ProblemShape&, std::uint64_t);
template Problem<double> random_problem<double>(const ProblemShape&, std::uint64_t);
template Problem<float> cast_problem<float, double>(const Problem<double>&);
template Problem<double> cast_problem<double, float>(const Problem<float>&);
template std::map<std::string, double> rel_errors(const Output<float>&, const Output<double>&);
template std::map<std::string, double> rel_errors(const Output<double>&, const Output<double>&);
template std::map<std::string, double> rel_errors(const InputGrad<float>&, const InputGrad<double>&);
template std::map<std::string, double> rel_errors(const InputGrad<double>&, const InputGrad<double>&);
template double max_rel_error(const Output<float>&, const Output<double>&);
template double max_rel_error(const Output<double>&, const Output<double>&);
template double max_rel_error(const InputGrad<float>&, const InputGrad<double>&);
template double max_rel_error(const InputGrad<double>&, const InputGrad<double>&);
template double loss(const Problem<double>&, const Output<double>&);
template double loss(const Problem<float>&, const Output<float>&);

}  // namespace flashlstm::mlstm
