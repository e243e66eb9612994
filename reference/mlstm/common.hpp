// Internal to the mLSTM reference: argument checks, per-(batch, head) slicing, the gate and
// stabiliser rules, and the normalised readout with its derivative. Every form uses these, so the
// forms differ only in how they order the same arithmetic.
#pragma once

#include "core/bf16.hpp"
#include "core/gates.hpp"
#include "core/parallel.hpp"
#include "reference/mlstm/mlstm.hpp"

#include <Eigen/Dense>

#include <cmath>

namespace flashlstm::mlstm::detail {

template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
template <class T>
using MatMap = Eigen::Map<Mat<T>>;
template <class T>
using ConstMatMap = Eigen::Map<const Mat<T>>;
template <class T>
using VecMap = Eigen::Map<Vec<T>>;
template <class T>
using ConstVecMap = Eigen::Map<const Vec<T>>;

struct Dims {
  index_t B = 0, NH = 0, S = 0, DQK = 0, DV = 0;
  index_t heads() const { return B * NH; }
};

// Checks every input (shapes, options) and returns the problem sizes; throws Error naming the
// offending argument.
template <class T>
Dims check_inputs(const Inputs<T>& x, const OptionalState<T>& initial, const Options& options,
                  std::string_view state_name = "initial");
template <class T>
void check_output_grad(const Dims& d, const OutputGrad<T>& grad);
// chunk_size >= 1, and the chunk's L x L intermediates (L = min(chunk_size, S)) on every thread fit in
// memory: the parallel form is one chunk of S tokens, quadratic in S.
void check_chunk_size(index_t chunk_size, const Dims& d, std::size_t element_bytes, bool backward);

// The state of one (batch, head).
template <class T>
struct HeadState {
  Mat<T> C;  // (DQK, DV)
  Vec<T> n;  // (DQK)
  T m = 0;
};

// Pointers to one (batch, head) of every input.
template <class T>
struct HeadInputs {
  const T *q, *k, *v, *igate, *fgate;  // (S, DQK), (S, DQK), (S, DV), (S), (S)
  index_t S, DQK, DV;
  T scale;  // DQK^-1/2

  HeadInputs(const Inputs<T>& x, const Dims& d, index_t bh)
      : q(x.q.data() + bh * d.S * d.DQK),
        k(x.k.data() + bh * d.S * d.DQK),
        v(x.v.data() + bh * d.S * d.DV),
        igate(x.igate.data() + bh * d.S),
        fgate(x.fgate.data() + bh * d.S),
        S(d.S),
        DQK(d.DQK),
        DV(d.DV),
        scale(T(1) / std::sqrt(T(d.DQK))) {}
};

template <class T>
HeadState<T> load_state(const OptionalState<T>& state, const Dims& d, index_t bh);
// The upstream gradient of one head's final state (zeros where none was given).
template <class T>
HeadState<T> load_last_state_grad(const OutputGrad<T>& grad, const Dims& d, index_t bh);
template <class T>
void store_state(const HeadState<T>& s, State<T>& out, index_t bh);
template <class T>
HeadState<T> head_state(const State<T>& s, index_t bh);

// Gate rules. log f = logsigmoid(f̃) always; log i = ĩ (exp) or logsigmoid(ĩ) (sig). The
// derivative factors turn d(log gate) into d(pre-activation).
template <class T>
T log_forget(T fgate) {
  return logsigmoid(fgate);
}
template <class T>
T dlog_forget(T fgate) {
  return sigmoid(-fgate);
}
template <class T>
T log_input(T igate, const Options& o) {
  return o.input_gate == InputGate::exp ? igate : logsigmoid(igate);
}
template <class T>
T dlog_input(T igate, const Options& o) {
  return o.input_gate == InputGate::exp ? T(1) : sigmoid(-igate);
}

// The readout h = num / dhat with dhat = max(|den|, exp(-m)) + eps (exp), max(|den|, 1) + eps
// (sig) or 1 (sig without normaliser).
template <class T>
T readout_denominator(T den, T m, const Options& o) {
  if (!normalizes(o)) return T(1);
  T floor = stabilised(o) ? std::exp(-m) : T(1);
  return std::max(std::abs(den), floor) + T(o.eps);
}

// Derivative of the readout's denominator: given dh·h, returns the gradient reaching den and the
// one reaching m through exp(-m). (The gradient reaching num is dh / dhat.)
template <class T>
struct ReadoutGrad {
  T dden = 0;
  T dm = 0;
};
template <class T>
ReadoutGrad<T> readout_backward(T dh_dot_h, T den, T m, T dhat, const Options& o) {
  if (!normalizes(o)) return {};
  T ddhat = -dh_dot_h / dhat;
  T floor = stabilised(o) ? std::exp(-m) : T(1);
  if (std::abs(den) > floor) return {den > 0 ? ddhat : -ddhat, T(0)};
  if (!stabilised(o)) return {};
  // dhat = exp(-m) + eps, so dm = -ddhat exp(-m) = dh·h / (1 + eps exp(m)): finite when exp(-m) = inf.
  return {T(0), dh_dot_h / (T(1) + T(o.eps) * std::exp(m))};
}

template <class T>
Output<T> allocate_output(const Dims& d);
template <class T>
InputGrad<T> allocate_input_grad(const Dims& d, bool with_initial_state);

}  // namespace flashlstm::mlstm::detail
