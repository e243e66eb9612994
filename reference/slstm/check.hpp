// Checking tools for the sLSTM/LSTM: seeded random problems, result comparison and the
// finite-difference check of the backward (shared by the tests and `flashlstm validate`).
#pragma once

#include "core/random.hpp"
#include "reference/slstm/slstm.hpp"

#include <map>

namespace flashlstm::slstm {

struct ProblemShape {
  index_t B = 1, T = 1, NH = 1, DH = 8;
  bool initial_state = false;

  std::string name() const;  // "B2 T7 NH2 DH8 +state"
};

// Wx ~ N(0, 1) (f̃ shifted by +2), R ~ N(0, 1/DH), b ~ N(0, 0.5); the initial state has n > 0 and
// random m; upstream gradients ~ N(0, 1).
template <class T>
struct Problem {
  xt::xtensor<T, 5> Wx;                    // (B, T, 4, NH, DH)
  xt::xtensor<T, 4> R;                     // (4, NH, DH, DH)
  xt::xtensor<T, 3> b;                     // (4, NH, DH)
  std::optional<xt::xtensor<T, 4>> initial;  // (NS, B, NH, DH)
  xt::xtensor<T, 4> dh;                    // (B, T, NH, DH)
  xt::xtensor<T, 4> dlast;                 // (NS, B, NH, DH)

  Inputs<T> inputs() const { return {Wx, R, b}; }
  OptionalState<T> initial_view() const { return initial ? OptionalState<T>(*initial) : std::nullopt; }
  OutputGrad<T> output_grad() const { return {dh, ConstView<T, 4>(dlast)}; }
};

template <class T>
Problem<T> random_problem(const ProblemShape& shape, const Options& options, std::uint64_t seed);

template <class To, class From>
Problem<To> cast_problem(const Problem<From>& p);

template <class TA, class TB>
double max_rel_error(const Output<TA>& a, const Output<TB>& ref);
template <class TA, class TB>
double max_rel_error(const InputGrad<TA>& a, const InputGrad<TB>& ref);

// <dh, h> + <dlast, last>
template <class T>
double loss(const Problem<T>& p, const Output<T>& out);

// State passing: the sequence run as [0, split) and [split, T) with the final state handed on
// (forward) and the initial-state gradient handed back (backward), against the whole run. Returns
// the relative errors of all states and of all gradients (dWx, dR, db, dinitial).
struct PieceErrors {
  double forward = 0, backward = 0;
};
PieceErrors state_passing_error(const Problem<double>& p, index_t split, const Options& options);

// Finite-difference check of the backward, one random direction per argument (Wx, R, b, initial).
std::map<std::string, double> gradcheck(const Problem<double>& p, const Options& options, std::uint64_t seed);

}  // namespace flashlstm::slstm
