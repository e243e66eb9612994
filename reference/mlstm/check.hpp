// Checking tools for the mLSTM: seeded random problems, the comparison of two results, and the
// finite-difference check of a backward. Shared by the tests, `flashlstm validate` and the kernel
// checks, so that "agrees with the oracle" means the same thing everywhere.
#pragma once

#include "core/random.hpp"
#include "reference/mlstm/mlstm.hpp"

#include <map>

namespace flashlstm::mlstm {

struct ProblemShape {
  index_t B = 1, NH = 1, S = 1, DQK = 16, DV = 16;
  bool initial_state = false;

  std::string name() const;  // "B1 NH2 S65 DQK16 DV24 +state"
};

// A random problem: inputs, an optional initial state and the upstream gradients of a loss.
// Gates are drawn so that both regimes of the readout occur: ĩ ~ N(0, 2), f̃ ~ N(3, 1.5).
template <class T>
struct Problem {
  xt::xtensor<T, 4> q, k, v;          // (B, NH, S, DQK), (B, NH, S, DQK), (B, NH, S, DV)
  xt::xtensor<T, 3> igate, fgate;     // (B, NH, S)
  std::optional<State<T>> initial;
  xt::xtensor<T, 4> dh;               // (B, NH, S, DV)
  xt::xtensor<T, 4> dC_last;          // (B, NH, DQK, DV)
  xt::xtensor<T, 3> dn_last;          // (B, NH, DQK)
  xt::xtensor<T, 2> dm_last;          // (B, NH)

  Inputs<T> inputs() const { return {q, k, v, igate, fgate}; }
  OptionalState<T> initial_view() const { return initial ? OptionalState<T>(*initial) : std::nullopt; }
  OutputGrad<T> output_grad() const {
    return {dh, ConstView<T, 4>(dC_last), ConstView<T, 3>(dn_last), ConstView<T, 2>(dm_last)};
  }
};

template <class T>
Problem<T> random_problem(const ProblemShape& shape, std::uint64_t seed);

// The same problem in another precision (for instance bf16-rounded float inputs against a double oracle).
template <class To, class From>
Problem<To> cast_problem(const Problem<From>& p);

// The relative L2 error of `a` against `ref` for each output (h, C, n, m) or gradient (dq, dk, dv,
// digate, dfgate, dC0, dn0, dm0), and the largest of them. A gradient of the initial state present
// in only one of the two is an infinite error.
template <class TA, class TB>
std::map<std::string, double> rel_errors(const Output<TA>& a, const Output<TB>& ref);
template <class TA, class TB>
std::map<std::string, double> rel_errors(const InputGrad<TA>& a, const InputGrad<TB>& ref);
template <class TA, class TB>
double max_rel_error(const Output<TA>& a, const Output<TB>& ref);
template <class TA, class TB>
double max_rel_error(const InputGrad<TA>& a, const InputGrad<TB>& ref);

// The scalar loss the upstream gradients define: <dh, h> + <dC_last, C_S> + <dn_last, n_S> + <dm_last, m_S>.
template <class T>
double loss(const Problem<T>& p, const Output<T>& out);

// Finite-difference check of `form`'s backward (core/finite_differences.hpp), one random direction
// per argument (q, k, v, igate, fgate and, with an initial state, C0, n0, m0): the relative error
// of each directional derivative.
std::map<std::string, double> gradcheck(const Form& form, const Problem<double>& p, const Options& options,
                                        std::uint64_t seed);

}  // namespace flashlstm::mlstm
