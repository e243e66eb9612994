// The pointwise part of each recurrent cell, forward and its exact derivative, on (B, DH) blocks of
// one head (Eigen arrays, so exp/tanh vectorise). A cell is a struct with num_states, forward and
// backward; the recurrence skeleton (recurrent.cpp) is written once for every cell, so a GRU or
// another cell is one more struct here.
#pragma once

#include "reference/slstm/slstm.hpp"

#include <Eigen/Dense>

#include <array>

namespace flashlstm::slstm::detail {

template <class T>
using Block = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;  // (B, DH)

// Gate pre-activations (or their gradients) of one head: the four gates side by side, (B, 4·DH),
// gate order (i, f, z, o), so that one GEMM writes them all.
template <class T>
struct Gates {
  Block<T> all;  // (B, 4·DH)
  index_t DH;

  Gates(index_t B, index_t DH_) : all(B, 4 * DH_), DH(DH_) {}
  auto operator[](int k) { return all.middleCols(k * DH, DH); }
  auto operator[](int k) const { return all.middleCols(k * DH, DH); }
};

// State (or its gradient): (h, c, n, m); a cell with fewer states leaves the rest empty.
template <class T>
using States = std::array<Block<T>, 4>;
enum StateIndex { H = 0, C = 1, N = 2, M = 3 };
enum GateIndex { I = 0, F = 1, Z = 2, O = 3 };

template <class E, class T = typename E::Scalar>
Block<T> sigmoid(const Eigen::ArrayBase<E>& x) {
  return T(1) / (T(1) + (-x).exp());  // exp(-x) = inf gives 0, never NaN
}
template <class E, class T = typename E::Scalar>
Block<T> logsigmoid(const Eigen::ArrayBase<E>& x) {
  return x.min(T(0)) - (-x.abs()).exp().log1p();
}

// a * x, but 0 wherever x is 0 even when a is infinite (the first step from a zero state may have
// f' = exp(a - ĩ) overflow; it multiplies nothing).
template <class T>
Block<T> scale_nonzero(const Block<T>& a, const Block<T>& x) {
  return (x == T(0)).select(Block<T>::Zero(x.rows(), x.cols()), a * x);
}

// The sLSTM of spec/slstm.md:
//   m' = max(log f + m, ĩ) (m' = ĩ where n == 0), i' = exp(ĩ - m'), f' = exp(log f + m - m')
//   c' = f' c + i' tanh(z̃),  n' = f' n + i',  h' = σ(õ) c' / n'
// The backward follows m through the max as well, so it is exact for any loss, including one on
// the stabilised final state; for a loss on h alone that path sums to zero (h does not depend on m).
struct SlstmCell {
  static constexpr int num_states = 4;

  template <class T>
  struct Internals {  // what backward needs from forward
    Block<T> a, i_prime, f_prime, z, o;
    Eigen::Array<bool, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> takes_input;  // m' = ĩ
  };

  template <class T>
  static Internals<T> internals(const Gates<T>& g, const States<T>& prev, const Options& o) {
    Internals<T> in;
    const Block<T> log_f = o.forget_gate == ForgetGate::sigmoid ? logsigmoid(g[F]) : Block<T>(g[F]);
    in.a = log_f + prev[M];
    in.takes_input = (prev[N] == T(0)) || (g[I] > in.a);
    const Block<T> m = in.takes_input.select(g[I], in.a);
    in.i_prime = (g[I] - m).exp();
    in.f_prime = (in.a - m).exp();
    in.z = g[Z].tanh();
    in.o = sigmoid(g[O]);
    return in;
  }

  template <class T>
  static void forward(const Gates<T>& g, const States<T>& prev, States<T>& next, const Options& o) {
    const auto in = internals(g, prev, o);
    next[M] = in.takes_input.select(g[I], in.a);
    next[C] = scale_nonzero<T>(in.f_prime, prev[C]) + in.i_prime * in.z;
    next[N] = scale_nonzero<T>(in.f_prime, prev[N]) + in.i_prime;
    next[H] = in.o * next[C] / next[N];
  }

  // `dnext` holds the gradient of the loss with respect to `next`; writes the gradient with respect
  // to `prev` (without the h part, which reaches h only through R) and to the pre-activations.
  template <class T>
  static void backward(const Gates<T>& g, const States<T>& prev, const States<T>& next, const States<T>& dnext,
                       States<T>& dprev, Gates<T>& dg, const Options& o) {
    const auto in = internals(g, prev, o);
    // h' = o c' / n'
    const Block<T> dc = dnext[C] + dnext[H] * in.o / next[N];
    const Block<T> dn = dnext[N] - dnext[H] * next[H] / next[N];
    dg[O] = dnext[H] * next[C] / next[N] * in.o * sigmoid(-g[O]);
    // c' = f' c + i' z, n' = f' n + i'
    const Block<T> dfp_fp = dc * scale_nonzero<T>(in.f_prime, prev[C]) + dn * scale_nonzero<T>(in.f_prime, prev[N]);
    const Block<T> dip_ip = (dc * in.z + dn) * in.i_prime;  // d i' times i'
    dg[Z] = dc * in.i_prime * (T(1) - in.z * in.z);
    dprev[C] = dc * in.f_prime;
    dprev[N] = dn * in.f_prime;
    // f' = exp(a - m'), i' = exp(ĩ - m'), m' = ĩ or a
    const Block<T> dm = dnext[M] - dfp_fp - dip_ip;
    const Block<T> da = dfp_fp + in.takes_input.select(Block<T>::Zero(dm.rows(), dm.cols()), dm);
    dg[I] = dip_ip + in.takes_input.select(dm, Block<T>::Zero(dm.rows(), dm.cols()));
    // a = log f + m
    dprev[M] = da;
    dg[F] = o.forget_gate == ForgetGate::sigmoid ? Block<T>(da * sigmoid(-g[F])) : da;
    dprev[H].setZero(dm.rows(), dm.cols());
  }
};

// PyTorch's LSTM cell: i = σ(ĩ), f = σ(f̃), z = tanh(z̃), o = σ(õ); c' = f c + i z; h' = o tanh(c').
struct LstmCell {
  static constexpr int num_states = 2;

  template <class T>
  static void forward(const Gates<T>& g, const States<T>& prev, States<T>& next, const Options&) {
    next[C] = sigmoid(g[F]) * prev[C] + sigmoid(g[I]) * g[Z].tanh();
    next[H] = sigmoid(g[O]) * next[C].tanh();
  }

  template <class T>
  static void backward(const Gates<T>& g, const States<T>& prev, const States<T>& next, const States<T>& dnext,
                       States<T>& dprev, Gates<T>& dg, const Options&) {
    const Block<T> i = sigmoid(g[I]), f = sigmoid(g[F]), z = g[Z].tanh(), o = sigmoid(g[O]);
    const Block<T> tanh_c = next[C].tanh();
    const Block<T> dc = dnext[C] + dnext[H] * o * (T(1) - tanh_c * tanh_c);
    dg[O] = dnext[H] * tanh_c * o * sigmoid(-g[O]);
    dg[I] = dc * z * i * sigmoid(-g[I]);
    dg[F] = dc * prev[C] * f * sigmoid(-g[F]);
    dg[Z] = dc * i * (T(1) - z * z);
    dprev[C] = dc * f;
    dprev[H].setZero(dc.rows(), dc.cols());
  }
};

}  // namespace flashlstm::slstm::detail
