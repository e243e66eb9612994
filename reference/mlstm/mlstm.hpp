// The mLSTM CPU reference: every form of the mLSTM (docs/mlstm.md), forward and exact backward.
//
//   forward_recurrent / backward_recurrent   step by step: the oracle
//   forward_parallel  / backward_parallel    quadratic, attention-like, one segment of length S
//   forward_chunkwise / backward_chunkwise   the parallel form per chunk of length L, states carried
//   step                                     one token for generation, state updated in place
//
// Layout (row-major): q, k (B, NH, S, DQK); v, h (B, NH, S, DV); igate, fgate (B, NH, S) are the
// gate pre-activations ĩ, f̃; states C (B, NH, DQK, DV), n (B, NH, DQK), m (B, NH). All forms
// compute the same function (same stabiliser m), so they agree to rounding in double.
#pragma once

#include "core/bf16.hpp"
#include "core/mlstm_options.hpp"
#include "core/view.hpp"

#include <optional>
#include <type_traits>
#include <string>

namespace flashlstm::mlstm {

// An owning state; `m` is the log-scale stabiliser (the true state is exp(m) * (C, n)).
template <class T>
struct State {
  xt::xtensor<T, 4> C;  // (B, NH, DQK, DV)
  xt::xtensor<T, 3> n;  // (B, NH, DQK)
  xt::xtensor<T, 2> m;  // (B, NH)
};

// A non-owning state, for inputs.
template <class T>
struct StateView {
  ConstView<T, 4> C;  // (B, NH, DQK, DV)
  ConstView<T, 3> n;  // (B, NH, DQK)
  ConstView<T, 2> m;  // (B, NH)

  StateView(ConstView<T, 4> C_, ConstView<T, 3> n_, ConstView<T, 2> m_) : C(C_), n(n_), m(m_) {}
  StateView(const State<T>& s) : C(s.C), n(s.n), m(s.m) {}  // NOLINT(google-explicit-constructor)
};

template <class T>
struct Inputs {
  ConstView<T, 4> q;      // (B, NH, S, DQK)
  ConstView<T, 4> k;      // (B, NH, S, DQK)
  ConstView<T, 4> v;      // (B, NH, S, DV)
  ConstView<T, 3> igate;  // (B, NH, S)  ĩ
  ConstView<T, 3> fgate;  // (B, NH, S)  f̃
};

template <class T>
struct Output {
  xt::xtensor<T, 4> h;  // (B, NH, S, DV)
  State<T> last;        // (C_S, n_S, m_S)
};

// Upstream gradients: of h, and optionally of the final state. dm_last matters only for exp (for
// sig m_S is the constant 0); it lets a backward run in pieces hand the state gradient on exactly.
template <class T>
struct OutputGrad {
  ConstView<T, 4> dh;                     // (B, NH, S, DV)
  std::optional<ConstView<T, 4>> dC_last;  // (B, NH, DQK, DV)
  std::optional<ConstView<T, 3>> dn_last;  // (B, NH, DQK)
  std::optional<ConstView<T, 2>> dm_last;  // (B, NH)
};

template <class T>
struct InputGrad {
  xt::xtensor<T, 4> dq, dk, dv;       // as q, k, v
  xt::xtensor<T, 3> digate, dfgate;   // (B, NH, S)
  std::optional<State<T>> dinitial;   // gradient of (C_0, n_0, m_0), present when an initial state was given
};

// Not deduced (std::type_identity_t), so a State, a StateView or std::nullopt can be passed where an
// OptionalState is expected: T comes from the Inputs.
template <class T>
using OptionalState = std::type_identity_t<std::optional<StateView<T>>>;

template <class T>
Output<T> forward_recurrent(const Inputs<T>& x, const OptionalState<T>& initial, const Options& options);
template <class T>
InputGrad<T> backward_recurrent(const Inputs<T>& x, const OptionalState<T>& initial, const OutputGrad<T>& grad,
                                const Options& options);

template <class T>
Output<T> forward_parallel(const Inputs<T>& x, const OptionalState<T>& initial, const Options& options);
template <class T>
InputGrad<T> backward_parallel(const Inputs<T>& x, const OptionalState<T>& initial, const OutputGrad<T>& grad,
                               const Options& options);

// The arithmetic of the chunkwise form's matrix products (core/bf16.hpp): `exact` or every operand
// rounded to bfloat16, the baseline of the bf16 CUDA kernels.
using flashlstm::Operands;

template <class T>
Output<T> forward_chunkwise(const Inputs<T>& x, const OptionalState<T>& initial, index_t chunk_size,
                            const Options& options, Operands operands = Operands::exact);
template <class T>
InputGrad<T> backward_chunkwise(const Inputs<T>& x, const OptionalState<T>& initial, const OutputGrad<T>& grad,
                                index_t chunk_size, const Options& options, Operands operands = Operands::exact);

// One token: q, k (B, NH, DQK), v (B, NH, DV), igate, fgate (B, NH). Updates `state` in place and
// returns h (B, NH, DV).
template <class T>
xt::xtensor<T, 3> step(ConstView<T, 3> q, ConstView<T, 3> k, ConstView<T, 3> v, ConstView<T, 2> igate,
                       ConstView<T, 2> fgate, State<T>& state, const Options& options);

// A sequence form chosen at run time: what tests and `flashlstm validate` loop over.
struct Form {
  enum Kind { recurrent, parallel, chunkwise } kind = recurrent;
  index_t chunk_size = 0;                // chunkwise only
  Operands operands = Operands::exact;  // chunkwise only

  std::string name() const;  // "recurrent", "parallel", "chunkwise(L=64)", "chunkwise(L=64, bf16 operands)"
};

template <class T>
Output<T> forward(const Inputs<T>& x, const OptionalState<T>& initial, const Form& form, const Options& options);
template <class T>
InputGrad<T> backward(const Inputs<T>& x, const OptionalState<T>& initial, const OutputGrad<T>& grad,
                      const Form& form, const Options& options);

// A zero state of the given sizes.
template <class T>
State<T> zero_state(index_t B, index_t NH, index_t DQK, index_t DV);

}  // namespace flashlstm::mlstm
