// The pointwise part of each recurrent cell, forward and its exact derivative, on the (B, DH) rows
// of one head at one step. A cell is a struct with num_states, a Scratch (its preallocated
// intermediates), forward and backward; the recurrence skeleton (recurrent.cpp) is written once for
// every cell, so a GRU or another cell is one more struct here.
//
// Speed: the cells run T·NH times per call on a few thousand numbers each, so they allocate
// nothing: each statement evaluates one Eigen array expression (vectorised exp/tanh/log1p, fused
// into one loop) into a block that the skeleton or the Scratch owns, and what is used more than
// once is evaluated once into the Scratch. The arithmetic with a case distinction (the stabiliser,
// scale_nonzero) goes through `elementwise`, a plain loop, because Eigen 3.4 does not vectorise
// select(). The blocks a cell writes never overlap the blocks it reads.
#pragma once

#include "reference/slstm/slstm.hpp"

#include <Eigen/Dense>

#include <cmath>
#include <type_traits>

namespace flashlstm::slstm::detail {

template <class T>
using Block = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;  // (B, DH)

// Row blocks at a fixed distance from each other inside a larger array: block k has `rows` rows
// of `cols` numbers, starting at data + k·block_stride, rows row_stride apart. The states
// (h, c, n, m) of one head (in a tensor or a workspace) and the four gates (i, f, z, o) of one head
// are such blocks, so the cells read and write them where they lie. T is a scalar or a const one.
template <class T>
struct Slices {
  using Array = Block<std::remove_const_t<T>>;
  using Map = Eigen::Map<std::conditional_t<std::is_const_v<T>, const Array, Array>, Eigen::Unaligned,
                         Eigen::OuterStride<>>;

  T* data;
  index_t block_stride, row_stride, rows, cols;

  Map operator[](index_t k) const { return Map(data + k * block_stride, rows, cols, Eigen::OuterStride<>(row_stride)); }
  operator Slices<const T>() const { return {data, block_stride, row_stride, rows, cols}; }  // NOLINT
};

// Read-only blocks, as the cells take them (the scalar is deduced from their other arguments).
template <class T>
using ConstSlices = std::type_identity_t<Slices<const T>>;

// Contiguous (rows, cols) blocks one after another, e.g. the states of one head in a workspace.
template <class T>
Slices<T> contiguous(T* data, index_t rows, index_t cols) {
  return {data, rows * cols, cols, rows, cols};
}

enum StateIndex { H = 0, C = 1, N = 2, M = 3 };
enum GateIndex { I = 0, F = 1, Z = 2, O = 3 };

// sigmoid returns an Eigen expression, evaluated where it is assigned; its operand is a map or a
// Scratch array, which outlives the statement.
template <class E>
auto sigmoid(const Eigen::ArrayBase<E>& x) {
  using T = typename E::Scalar;
  return T(1) / (T(1) + (-x.derived()).exp());  // exp(-x) = inf gives 0, never NaN
}

// dst = f(src...) element by element, for the arithmetic with a case distinction. Eigen 3.4
// evaluates select() one coefficient at a time with a branch that the data make unpredictable; this
// plain loop the compiler vectorises with blends. dst and src are (rows, cols) row-major arrays or
// maps.
template <class Dst, class F, class... Src>
void elementwise(Dst&& dst, F f, const Src&... src) {
  const auto row = [&](auto* out, const auto*... in) {
#pragma omp simd
    for (index_t j = 0; j < dst.cols(); ++j) out[j] = f(in[j]...);
  };
  for (index_t r = 0; r < dst.rows(); ++r) row(dst.data() + r * dst.outerStride(), (src.data() + r * src.outerStride())...);
}

// a * x, but 0 wherever x is 0 even when a is infinite (the first step from a zero state may have
// f' = exp(a - ĩ) overflow; it multiplies nothing).
template <class T>
T scale_nonzero(T a, T x) {
  return x == T(0) ? T(0) : a * x;
}

// The sLSTM of docs/slstm.md:
//   m' = max(log f + m, ĩ) (m' = ĩ where n == 0), i' = exp(ĩ - m'), f' = exp(log f + m - m')
//   c' = f' c + i' tanh(z̃),  n' = f' n + i',  h' = σ(õ) c' / n'
// The backward follows m through the max as well, so it is exact for any loss, including one on
// the stabilised final state; for a loss on h alone that path sums to zero (h does not depend on m).
struct SlstmCell {
  static constexpr int num_states = 4;

  template <class T>
  struct Scratch {
    Block<T> a, m, e, i_prime, f_prime, z, o;  // a = log f + m; e the exponential i' and f' share
    Block<T> exp_f, exp_o;                     // exp(-|f̃|) (sigmoid forget gate) and exp(-õ)
    Block<T> dc, dn, dfp_fp, dip_ip, dm;       // backward only
    Scratch(index_t B, index_t DH)
        : a(B, DH), m(B, DH), e(B, DH), i_prime(B, DH), f_prime(B, DH), z(B, DH), o(B, DH), exp_f(B, DH),
          exp_o(B, DH), dc(B, DH), dn(B, DH), dfp_fp(B, DH), dip_ip(B, DH), dm(B, DH) {}
  };

  // m' = ĩ rather than a: where ĩ is the larger, and where n == 0 (nothing to forget).
  template <class T>
  static bool takes_input(T n, T i, T a) {
    return n == T(0) || i > a;
  }

  // The gate activations forward and backward share. The exponentials are most of the cell's
  // time, so each is taken once: exp(-|f̃|) serves log f = logsigmoid(f̃) here and σ(-f̃) in the
  // backward, exp(-õ) serves o = σ(õ) and σ(-õ), and as m' is ĩ or a, one of i' = exp(ĩ - m') and
  // f' = exp(a - m') is exp(0) = 1 and one exponential gives the other.
  template <class T>
  static void activations(ConstSlices<T> g, ConstSlices<T> prev, Scratch<T>& s, const Options& o) {
    if (o.forget_gate == ForgetGate::sigmoid) {
      s.exp_f = (-g[F].abs()).exp();
      s.a = g[F].min(T(0)) - s.exp_f.log1p() + prev[M];  // logsigmoid(f̃) + m
    } else {
      s.a = g[F] + prev[M];
    }
    elementwise(s.m, [](T n, T i, T a) { return takes_input(n, i, a) ? i : a; }, prev[N], g[I], s.a);
    elementwise(s.e, [](T n, T i, T a) { return takes_input(n, i, a) ? a - i : i - a; }, prev[N], g[I], s.a);
    s.e = s.e.exp();
    elementwise(s.i_prime, [](T n, T i, T a, T e) { return takes_input(n, i, a) ? T(1) : e; }, prev[N], g[I], s.a, s.e);
    elementwise(s.f_prime, [](T n, T i, T a, T e) { return takes_input(n, i, a) ? e : T(1); }, prev[N], g[I], s.a, s.e);
    s.z = g[Z].tanh();
    s.exp_o = (-g[O]).exp();
    s.o = T(1) / (T(1) + s.exp_o);  // σ(õ)
  }

  template <class T>
  static void forward(ConstSlices<T> g, ConstSlices<T> prev, Slices<T> next, Scratch<T>& s, const Options& o) {
    activations(g, prev, s, o);
    next[M] = s.m;
    elementwise(next[C], [](T f, T c, T i, T z) { return scale_nonzero(f, c) + i * z; }, s.f_prime, prev[C],
                s.i_prime, s.z);
    elementwise(next[N], [](T f, T n, T i) { return scale_nonzero(f, n) + i; }, s.f_prime, prev[N], s.i_prime);
    next[H] = s.o * next[C] / next[N];
  }

  // `dnext` holds the gradient of the loss with respect to `next`; writes the gradient with respect
  // to `prev` except its h part (which reaches h only through R: the skeleton adds it) and to the
  // pre-activations.
  template <class T>
  static void backward(ConstSlices<T> g, ConstSlices<T> prev, ConstSlices<T> next, ConstSlices<T> dnext,
                       Slices<T> dprev, Slices<T> dg, Scratch<T>& s, const Options& o) {
    activations(g, prev, s, o);
    // h' = o c' / n'
    s.dc = dnext[C] + dnext[H] * s.o / next[N];
    s.dn = dnext[N] - dnext[H] * next[H] / next[N];
    // σ(-õ) = exp(-õ) σ(õ), and 1 where exp(-õ) overflows (σ(õ) = 0 there)
    elementwise(dg[O], [](T dh, T c, T n, T o, T eo) { return dh * c / n * o * (std::isinf(eo) ? T(1) : eo * o); },
                dnext[H], next[C], next[N], s.o, s.exp_o);
    // c' = f' c + i' z, n' = f' n + i'
    elementwise(  // d f' times f'
        s.dfp_fp, [](T dc, T dn, T f, T c, T n) { return dc * scale_nonzero(f, c) + dn * scale_nonzero(f, n); },
        s.dc, s.dn, s.f_prime, prev[C], prev[N]);
    s.dip_ip = (s.dc * s.z + s.dn) * s.i_prime;  // d i' times i'
    dg[Z] = s.dc * s.i_prime * (T(1) - s.z * s.z);
    dprev[C] = s.dc * s.f_prime;
    dprev[N] = s.dn * s.f_prime;
    // f' = exp(a - m'), i' = exp(ĩ - m'), m' = ĩ or a; then a = log f + m
    s.dm = dnext[M] - s.dfp_fp - s.dip_ip;
    elementwise(  // d a
        dprev[M], [](T n, T i, T a, T dfp, T dm) { return dfp + (takes_input(n, i, a) ? T(0) : dm); }, prev[N], g[I],
        s.a, s.dfp_fp, s.dm);
    elementwise(
        dg[I], [](T n, T i, T a, T dip, T dm) { return dip + (takes_input(n, i, a) ? dm : T(0)); }, prev[N], g[I],
        s.a, s.dip_ip, s.dm);
    if (o.forget_gate == ForgetGate::sigmoid) {  // σ(-f̃) from exp(-|f̃|)
      elementwise(dg[F], [](T da, T f, T ef) { return da * (f >= T(0) ? ef : T(1)) / (T(1) + ef); }, dprev[M], g[F],
                  s.exp_f);
    } else {
      dg[F] = dprev[M];
    }
  }
};

// PyTorch's LSTM cell: i = σ(ĩ), f = σ(f̃), z = tanh(z̃), o = σ(õ); c' = f c + i z; h' = o tanh(c').
struct LstmCell {
  static constexpr int num_states = 2;

  template <class T>
  struct Scratch {  // backward only
    Block<T> i, f, z, o, tanh_c, dc;
    Scratch(index_t B, index_t DH)
        : i(B, DH), f(B, DH), z(B, DH), o(B, DH), tanh_c(B, DH), dc(B, DH) {}
  };

  template <class T>
  static void forward(ConstSlices<T> g, ConstSlices<T> prev, Slices<T> next, Scratch<T>&, const Options&) {
    next[C] = sigmoid(g[F]) * prev[C] + sigmoid(g[I]) * g[Z].tanh();
    next[H] = sigmoid(g[O]) * next[C].tanh();
  }

  template <class T>
  static void backward(ConstSlices<T> g, ConstSlices<T> prev, ConstSlices<T> next, ConstSlices<T> dnext,
                       Slices<T> dprev, Slices<T> dg, Scratch<T>& s, const Options&) {
    s.i = sigmoid(g[I]);
    s.f = sigmoid(g[F]);
    s.z = g[Z].tanh();
    s.o = sigmoid(g[O]);
    s.tanh_c = next[C].tanh();
    s.dc = dnext[C] + dnext[H] * s.o * (T(1) - s.tanh_c * s.tanh_c);
    dg[O] = dnext[H] * s.tanh_c * s.o * sigmoid(-g[O]);
    dg[I] = s.dc * s.z * s.i * sigmoid(-g[I]);
    dg[F] = s.dc * prev[C] * s.f * sigmoid(-g[F]);
    dg[Z] = s.dc * s.i * (T(1) - s.z * s.z);
    dprev[C] = s.dc * s.f;
  }
};

}  // namespace flashlstm::slstm::detail
