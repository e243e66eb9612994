// Checking tools for the sLSTM/LSTM, part of the check library (flashlstm::check; the reference
// itself does not link it): the variants every check covers, seeded random problems, the tensors of
// a result by name, the loss, the state-passing check and the finite-difference check of the
// backward (docs/validation.md).
#pragma once

#include "reference/check/gradcheck.hpp"
#include "reference/check/report.hpp"
#include "reference/slstm/slstm.hpp"

#include <cstdint>
#include <vector>

namespace flashlstm::slstm {

// sLSTM with sigmoid and with exp forget gate, classic LSTM.
inline const std::vector<Options> variants = {
    {Cell::slstm, ForgetGate::sigmoid}, {Cell::slstm, ForgetGate::exp}, {Cell::lstm}};

struct ProblemShape {
  index_t B = 1, T = 1, NH = 1, DH = 8;
  bool initial_state = false;

  std::string name() const;  // "B2 T7 NH2 DH8 +state"
};

// Wx ~ N(0, 1) (f̃ shifted by +2), R ~ N(0, 1/DH), b ~ N(0, 0.5); the initial state has n > 0 and
// |c| <= n, as states the recurrence produces; upstream gradients ~ N(0, 1).
template <class T>
struct Problem {
  xt::xtensor<T, 5> Wx;                      // (B, T, 4, NH, DH)
  xt::xtensor<T, 4> R;                       // (4, NH, DH, DH)
  xt::xtensor<T, 3> b;                       // (4, NH, DH)
  std::optional<xt::xtensor<T, 4>> initial;  // (NS, B, NH, DH)
  xt::xtensor<T, 4> dh;                      // (B, T, NH, DH)
  xt::xtensor<T, 4> dlast;                   // (NS, B, NH, DH)

  Inputs<T> inputs() const { return {Wx, R, b}; }
  OptionalState<T> initial_view() const { return initial ? OptionalState<T>(*initial) : std::nullopt; }
  OutputGrad<T> output_grad() const { return {dh, ConstView<T, 4>(dlast)}; }
  // The root mean square of the inputs' elements: the scale near-zero results are measured against.
  double scale() const;
  // Steps [t0, t1) of the problem (same initial state and final-state gradient).
  Problem piece(index_t t0, index_t t1) const;
};

template <class T>
Problem<T> random_problem(const ProblemShape& shape, const Options& options, std::uint64_t seed);

template <class To, class From>
Problem<To> cast_problem(const Problem<From>& p);

// A result's tensors by name: states, last; dWx, dR, db and, with an initial state, dinitial.
template <class T>
std::vector<check::Named<T>> tensors(const Output<T>& out);
template <class T>
std::vector<check::Named<T>> tensors(const InputGrad<T>& grad);

// <dh, h> + <dlast, last>
template <class T>
double loss(const Problem<T>& p, const Output<T>& out);

// The sequence run as steps [0, split) and [split, T) with the final state handed on (forward) and
// the initial state's gradient handed back (backward), against the whole run: every tensor, held to
// `bound`.
check::Report state_passing(const Problem<double>& p, index_t split, const Options& options, double bound);

// The backward against finite differences of the forward, one random direction per argument (Wx,
// R, b and, with an initial state, initial).
check::Report gradcheck(Problem<double> p, const Options& options, std::uint64_t seed);

}  // namespace flashlstm::slstm
