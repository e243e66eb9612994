// The sLSTM CPU reference (docs/slstm.md) and the classic LSTM cell, forward and exact backward
// through time. Both are the same recurrence skeleton — pre-activations g̃_t = Wx_t + R h_{t-1} + b
// per head, then a pointwise cell — with a different cell (reference/slstm/cells.hpp).
//
// Layouts follow FlashRNN's public API, so numbers compare without permuting:
//   Wx (B, T, 4, NH, DH)   gate order (i, f, z, o)
//   R  (4, NH, DH, DH)     R[g, head, out, in]: g̃_out = Σ_in R[g, head, out, in] h_in
//   b  (4, NH, DH)
//   states (NS, B, NH, DH) in the order (h, c, n, m) for the sLSTM (NS = 4), (h, c) for the LSTM (NS = 2)
//   all states over time (NS, B, T, NH, DH), FlashRNN's "SBTHD" output
#pragma once

#include "core/bf16.hpp"
#include "core/slstm_options.hpp"
#include "core/view.hpp"

#include <optional>
#include <string>
#include <type_traits>

namespace flashlstm::slstm {

template <class T>
struct Inputs {
  ConstView<T, 5> Wx;  // (B, T, 4, NH, DH)
  ConstView<T, 4> R;   // (4, NH, DH, DH)
  ConstView<T, 3> b;   // (4, NH, DH)
};

// T comes from the Inputs: an xtensor, a view or std::nullopt can be passed.
template <class T>
using OptionalState = std::type_identity_t<std::optional<ConstView<T, 4>>>;  // (NS, B, NH, DH)

template <class T>
struct Output {
  xt::xtensor<T, 5> states;                // (NS, B, T, NH, DH): the state after each step; states[0] is h
  xt::xtensor<T, 4> last;                  // (NS, B, NH, DH)
  std::optional<xt::xtensor<T, 5>> gates;  // (B, T, 4, NH, DH): the pre-activations g̃_t, if keep_gates
};

// What a backward can take from its forward instead of running the forward again (as FlashRNN's
// backward takes the states and gates its forward kept): every state and every pre-activation.
template <class T>
struct Saved {
  ConstView<T, 5> states;  // (NS, B, T, NH, DH)
  ConstView<T, 5> gates;   // (B, T, 4, NH, DH)

  // From a forward called with keep_gates = true (throws Error otherwise).
  static Saved from(const Output<T>& out) {
    require(out.gates.has_value(), "saved", "the forward output has no gates: call forward with keep_gates = true");
    return {out.states, *out.gates};
  }
};

template <class T>
struct OutputGrad {
  ConstView<T, 4> dh;                   // (B, T, NH, DH): gradient of every h_t
  std::optional<ConstView<T, 4>> dlast;  // (NS, B, NH, DH): gradient of the final state
};

template <class T>
struct InputGrad {
  xt::xtensor<T, 5> dWx;                   // (B, T, 4, NH, DH)
  xt::xtensor<T, 4> dR;                    // (4, NH, DH, DH)
  xt::xtensor<T, 3> db;                    // (4, NH, DH)
  std::optional<xt::xtensor<T, 4>> dinitial;  // (NS, B, NH, DH), present when an initial state was given
};

template <class T>
using OptionalSaved = std::type_identity_t<std::optional<Saved<T>>>;

// The caller's arrays for the results, in the shapes of Output and InputGrad: for a caller that
// reuses them from one call to the next (a training loop), which spares the page faults of fresh
// allocations (200 MB per tensor at FlashRNN's benchmark shape; on a VM they cost as much as the
// recurrent GEMMs). An empty `gates` means not kept; `dinitial` is given exactly when an initial
// state is.
template <class T>
struct OutputView {
  View<T, 5> states;
  View<T, 4> last;
  View<T, 5> gates;
};
template <class T>
struct InputGradView {
  View<T, 5> dWx;
  View<T, 4> dR;
  View<T, 3> db;
  View<T, 4> dinitial;
};

// keep_gates: also return the pre-activations, for a backward without recomputation (they are as
// large as Wx). `operands` (core/bf16.hpp): Operands::bf16 rounds every operand of the recurrent
// products (R, h_{t-1}; in the backward dg̃_t and, for dR, dg̃_t and h_{t-1}) to bf16 — the
// arithmetic of a plain bf16 kernel, the baseline the bf16 CUDA kernels are checked against.
template <class T>
Output<T> forward(const Inputs<T>& x, const OptionalState<T>& initial, const Options& options,
                  bool keep_gates = false, Operands operands = Operands::exact);

// Without `saved`, the backward runs the forward again (one more recurrent GEMM per step); with it,
// it reads the forward's states and gates, which must come from the same inputs.
template <class T>
InputGrad<T> backward(const Inputs<T>& x, const OptionalState<T>& initial, const OutputGrad<T>& grad,
                      const Options& options, const OptionalSaved<T>& saved = std::nullopt,
                      Operands operands = Operands::exact);

// The same two, writing into the caller's arrays.
template <class T>
void forward(const Inputs<T>& x, const OptionalState<T>& initial, const Options& options,
             const std::type_identity_t<OutputView<T>>& out, Operands operands = Operands::exact);
template <class T>
void backward(const Inputs<T>& x, const OptionalState<T>& initial, const OutputGrad<T>& grad, const Options& options,
              const OptionalSaved<T>& saved, const std::type_identity_t<InputGradView<T>>& out,
              Operands operands = Operands::exact);

// One step: Wx_t (B, 4, NH, DH); `state` (NS, B, NH, DH) is advanced in place.
template <class T>
void step(ConstView<T, 4> Wx_t, ConstView<T, 4> R, ConstView<T, 3> b, xt::xtensor<T, 4>& state,
          const Options& options);

}  // namespace flashlstm::slstm
