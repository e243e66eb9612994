// Checking tools for the mLSTM, part of the check library (flashlstm::check; the reference itself
// does not link it): the variants every check covers, seeded random problems, the tensors of a result
// by name, the loss a problem's upstream gradients define, the finite-difference check of a backward
// and the state-passing check. The tests, `flashlstm validate` and the CUDA kernel checks all use
// these, so "agrees with the oracle" means the same everywhere (docs/validation.md).
#pragma once

#include "reference/check/gradcheck.hpp"
#include "reference/check/report.hpp"
#include "reference/mlstm/mlstm.hpp"

#include <cstdint>
#include <vector>

namespace flashlstm::mlstm {

// exp, sig, sig without normaliser (eps = 1e-6).
inline const std::vector<Options> variants = {
    {InputGate::exp, true}, {InputGate::sig, true}, {InputGate::sig, false}};

struct ProblemShape {
  index_t B = 1, NH = 1, S = 1, DQK = 16, DV = 16;
  bool initial_state = false;

  std::string name() const;  // "B1 NH2 S65 DQK16 DV24 +state"
};

// A random problem: inputs, an optional initial state and the upstream gradients of a loss.
// q, k, v ~ N(0, 1); gates drawn so that both regimes of the readout occur: ĩ ~ N(0, 2), f̃ ~ N(3, 1.5).
template <class T>
struct Problem {
  xt::xtensor<T, 4> q, k, v;       // (B, NH, S, DQK), (B, NH, S, DQK), (B, NH, S, DV)
  xt::xtensor<T, 3> igate, fgate;  // (B, NH, S)
  std::optional<State<T>> initial;
  xt::xtensor<T, 4> dh;            // (B, NH, S, DV)
  xt::xtensor<T, 4> dC_last;       // (B, NH, DQK, DV)
  xt::xtensor<T, 3> dn_last;       // (B, NH, DQK)
  xt::xtensor<T, 2> dm_last;       // (B, NH)

  Inputs<T> inputs() const { return {q, k, v, igate, fgate}; }
  OptionalState<T> initial_view() const { return initial ? OptionalState<T>(*initial) : std::nullopt; }
  OutputGrad<T> output_grad() const {
    return {dh, ConstView<T, 4>(dC_last), ConstView<T, 3>(dn_last), ConstView<T, 2>(dm_last)};
  }
  // The root mean square of the inputs' elements: the scale near-zero results are measured against.
  double scale() const;
  // Tokens [t0, t1) of the problem (same initial state and final-state gradients).
  Problem piece(index_t t0, index_t t1) const;
};

template <class T>
Problem<T> random_problem(const ProblemShape& shape, std::uint64_t seed);

// The same problem in another precision (for instance float inputs for a double oracle).
template <class To, class From>
Problem<To> cast_problem(const Problem<From>& p);

// A result's tensors by name: h, C, n, m; dq, dk, dv, digate, dfgate and, with an initial state,
// dC0, dn0, dm0.
template <class T>
std::vector<check::Named<T>> tensors(const Output<T>& out);
template <class T>
std::vector<check::Named<T>> tensors(const InputGrad<T>& grad);

// The scalar loss the upstream gradients define: <dh, h> + <dC_last, C_S> + <dn_last, n_S> + <dm_last, m_S>.
template <class T>
double loss(const Problem<T>& p, const Output<T>& out);

// `form`'s backward against finite differences of its forward, one random direction per argument:
// q, k, v, igate, fgate and, with an initial state, C0, n0, m0.
check::Report gradcheck(const Form& form, Problem<double> p, const Options& options, std::uint64_t seed);

// The sequence run as tokens [0, split) and [split, S) with the final state handed on, and backward
// with the initial state's gradient handed back, against the whole run in `form`: every output and
// gradient tensor, held to `bound`.
check::Report state_passing(const Form& form, const Problem<double>& p, index_t split, const Options& options,
                            double bound);

}  // namespace flashlstm::mlstm
