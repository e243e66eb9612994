// The recurrence skeleton shared by every cell: per (head), for t = 1..T,
//   g̃_t = Wx_t + h_{t-1} R_head^T + b   (one (B × DH)(DH × 4DH) GEMM per step and head)
//   state_t = Cell::forward(g̃_t, state_{t-1})
// and its reverse (backpropagation through time), which stores every state and pre-activation of
// the head (T · (NS + 4) · B · DH numbers) and accumulates dR and db over time. Heads are
// independent (R is block-diagonal), so OpenMP runs over heads.
#include "reference/slstm/cells.hpp"

#include "core/error.hpp"

#include <vector>

namespace flashlstm::slstm {
namespace {

using namespace detail;
template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct Dims {
  index_t B, T, NH, DH, NS;
};

template <class T>
Dims check_inputs(const Inputs<T>& x, const OptionalState<T>& initial, const Options& o) {
  require(!x.Wx.empty(), "Wx", "is null");
  const Dims d{x.Wx.shape(0), x.Wx.shape(1), x.Wx.shape(3), x.Wx.shape(4), num_states(o.cell)};
  require(d.B >= 1 && d.T >= 1 && x.Wx.shape(2) == 4 && d.NH >= 1 && d.DH >= 1, "Wx",
          "expected shape (B, T, 4, NH, DH) with every extent >= 1, got {}", shape_string(x.Wx.shape()));
  check_shape("R", x.R, {4, d.NH, d.DH, d.DH});
  check_shape("b", x.b, {4, d.NH, d.DH});
  if (initial) check_shape("initial", *initial, {d.NS, d.B, d.NH, d.DH});
  return d;
}

// Element offsets of one head's rows in each layout.
struct Layout {
  Dims d;
  index_t wx(index_t b, index_t t, index_t g, index_t h) const { return (((b * d.T + t) * 4 + g) * d.NH + h) * d.DH; }
  index_t seq(index_t s, index_t b, index_t t, index_t h) const { return (((s * d.B + b) * d.T + t) * d.NH + h) * d.DH; }
  index_t state(index_t s, index_t b, index_t h) const { return ((s * d.B + b) * d.NH + h) * d.DH; }
  index_t dh(index_t b, index_t t, index_t h) const { return ((b * d.T + t) * d.NH + h) * d.DH; }
};

template <class T>
States<T> load_state(const OptionalState<T>& state, const Layout& l, index_t h) {
  States<T> s;
  for (index_t k = 0; k < 4; ++k) s[k] = Block<T>::Zero(k < l.d.NS ? l.d.B : 0, l.d.DH);
  if (state) {
    for (index_t k = 0; k < l.d.NS; ++k)
      for (index_t b = 0; b < l.d.B; ++b)
        s[k].row(b) = Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>>(state->data() + l.state(k, b, h), l.d.DH);
  }
  return s;
}

template <class T>
void store_state(const States<T>& s, T* out, const Layout& l, index_t h) {
  for (index_t k = 0; k < l.d.NS; ++k)
    for (index_t b = 0; b < l.d.B; ++b)
      Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>>(out + l.state(k, b, h), l.d.DH) = s[k].row(b);
}

// One head's recurrent matrix stacked over gates, (4·DH, DH), and its bias, (4, DH).
template <class T>
struct HeadWeights {
  Mat<T> R;
  Block<T> bias;
  HeadWeights(const Inputs<T>& x, const Dims& d, index_t h) : R(4 * d.DH, d.DH), bias(4, d.DH) {
    for (index_t g = 0; g < 4; ++g) {
      R.middleRows(g * d.DH, d.DH) =
          Eigen::Map<const Mat<T>>(x.R.data() + (g * d.NH + h) * d.DH * d.DH, d.DH, d.DH);
      bias.row(g) = Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>>(x.b.data() + (g * d.NH + h) * d.DH, d.DH);
    }
  }
};

// g̃_t = Wx_t + b + h_{t-1} R^T for one head, written into g (the GEMM accumulates onto Wx_t + b).
template <class T>
void preactivations(const Inputs<T>& x, const Layout& l, const HeadWeights<T>& w, const Block<T>& h_prev,
                    index_t t, index_t head, Gates<T>& g) {
  for (index_t b = 0; b < l.d.B; ++b) {
    for (index_t k = 0; k < 4; ++k) {
      g[k].row(b) =
          Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>>(x.Wx.data() + l.wx(b, t, k, head), l.d.DH) + w.bias.row(k);
    }
  }
  g.all.matrix().noalias() += h_prev.matrix() * w.R.transpose();
}

template <class Cell, class T>
Output<T> run_forward(const Inputs<T>& x, const OptionalState<T>& initial, const Options& o, const Dims& d) {
  const Layout l{d};
  Output<T> out{uninitialized<T>(Shape<5>{d.NS, d.B, d.T, d.NH, d.DH}),
                uninitialized<T>(Shape<4>{d.NS, d.B, d.NH, d.DH})};
  // Time outside, heads inside: at each step the threads read Wx_t and write state_t for all heads
  // together (contiguous in memory); each thread keeps the same heads, so their R and state stay in
  // its cache.
  std::vector<HeadWeights<T>> w;
  std::vector<States<T>> prev, next;
  for (index_t head = 0; head < d.NH; ++head) {
    w.emplace_back(x, d, head);
    prev.push_back(load_state<T>(initial, l, head));
  }
  next = prev;
  std::vector<Gates<T>> g(d.NH, Gates<T>(d.B, d.DH));
#pragma omp parallel
  for (index_t t = 0; t < d.T; ++t) {
#pragma omp for schedule(static)
    for (index_t head = 0; head < d.NH; ++head) {
      preactivations(x, l, w[head], prev[head][H], t, head, g[head]);
      Cell::forward(g[head], prev[head], next[head], o);
      for (index_t k = 0; k < d.NS; ++k)
        for (index_t b = 0; b < d.B; ++b)
          Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>>(out.states.data() + l.seq(k, b, t, head), d.DH) =
              next[head][k].row(b);
      std::swap(prev[head], next[head]);
    }
  }
  for (index_t head = 0; head < d.NH; ++head) store_state(prev[head], out.last.data(), l, head);
  return out;
}

template <class Cell, class T>
InputGrad<T> run_backward(const Inputs<T>& x, const OptionalState<T>& initial, const OutputGrad<T>& grad,
                          const Options& o, const Dims& d) {
  const Layout l{d};
  InputGrad<T> out{uninitialized<T>(Shape<5>{d.B, d.T, 4, d.NH, d.DH}), uninitialized<T>(Shape<4>{4, d.NH, d.DH, d.DH}),
                   zeros<T>(Shape<3>{4, d.NH, d.DH}), std::nullopt};
  if (initial) out.dinitial = uninitialized<T>(Shape<4>{d.NS, d.B, d.NH, d.DH});
#pragma omp parallel for schedule(dynamic)
  for (index_t head = 0; head < d.NH; ++head) {
    const HeadWeights<T> w(x, d, head);
    std::vector<States<T>> states{load_state<T>(initial, l, head)};  // states[t] = state before step t
    std::vector<Gates<T>> gates(d.T, Gates<T>(d.B, d.DH));
    for (index_t t = 0; t < d.T; ++t) {
      preactivations(x, l, w, states.back()[H], t, head, gates[t]);
      states.push_back(states.back());
      Cell::forward(gates[t], states[t], states.back(), o);
    }

    States<T> adj = load_state<T>(grad.dlast, l, head), dprev = adj;
    Gates<T> dg(d.B, d.DH);
    Mat<T> dR = Mat<T>::Zero(4 * d.DH, d.DH);
    for (index_t t = d.T - 1; t >= 0; --t) {
      for (index_t b = 0; b < d.B; ++b)
        adj[H].row(b) += Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>>(grad.dh.data() + l.dh(b, t, head), d.DH);
      Cell::backward(gates[t], states[t], states[t + 1], adj, dprev, dg, o);
      for (index_t k = 0; k < 4; ++k) {
        for (index_t b = 0; b < d.B; ++b)
          Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>>(out.dWx.data() + l.wx(b, t, k, head), d.DH) = dg[k].row(b);
        Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>>(out.db.data() + (k * d.NH + head) * d.DH, d.DH) +=
            dg[k].colwise().sum();
      }
      dR.noalias() += dg.all.matrix().transpose() * states[t][H].matrix();  // g̃ = h R^T: dR = dg^T h
      dprev[H].matrix().noalias() = dg.all.matrix() * w.R;                   // dh_{t-1} = dg R
      std::swap(adj, dprev);
    }
    for (index_t g = 0; g < 4; ++g)
      Eigen::Map<Mat<T>>(out.dR.data() + (g * d.NH + head) * d.DH * d.DH, d.DH, d.DH) = dR.middleRows(g * d.DH, d.DH);
    if (out.dinitial) store_state(adj, out.dinitial->data(), l, head);
  }
  return out;
}

}  // namespace

index_t num_states(Cell cell) { return cell == Cell::slstm ? detail::SlstmCell::num_states : detail::LstmCell::num_states; }

std::string variant_name(const Options& o) {
  if (o.cell == Cell::lstm) return "lstm";
  return o.forget_gate == ForgetGate::sigmoid ? "slstm" : "slstm-expf";
}

template <class T>
Output<T> forward(const Inputs<T>& x, const OptionalState<T>& initial, const Options& o) {
  const Dims d = check_inputs(x, initial, o);
  return o.cell == Cell::slstm ? run_forward<SlstmCell>(x, initial, o, d) : run_forward<LstmCell>(x, initial, o, d);
}

template <class T>
InputGrad<T> backward(const Inputs<T>& x, const OptionalState<T>& initial, const OutputGrad<T>& grad, const Options& o) {
  const Dims d = check_inputs(x, initial, o);
  check_shape("dh", grad.dh, {d.B, d.T, d.NH, d.DH});
  if (grad.dlast) check_shape("dlast", *grad.dlast, {d.NS, d.B, d.NH, d.DH});
  return o.cell == Cell::slstm ? run_backward<SlstmCell>(x, initial, grad, o, d)
                               : run_backward<LstmCell>(x, initial, grad, o, d);
}

template <class T>
void step(ConstView<T, 4> Wx_t, ConstView<T, 4> R, ConstView<T, 3> b, xt::xtensor<T, 4>& state, const Options& o) {
  require(!Wx_t.empty(), "Wx_t", "is null");
  require(Wx_t.shape(1) == 4, "Wx_t", "expected shape (B, 4, NH, DH), got {}", shape_string(Wx_t.shape()));
  // A step is a sequence of length 1: Wx_t (B, 4, NH, DH) is Wx (B, 1, 4, NH, DH) in memory.
  const Inputs<T> x{ConstView<T, 5>(Wx_t.data(), {Wx_t.shape(0), 1, 4, Wx_t.shape(2), Wx_t.shape(3)}), R, b};
  const Dims d = check_inputs(x, std::nullopt, o);
  check_shape("state", ConstView<T, 4>(state), {d.NS, d.B, d.NH, d.DH});
  state = forward(x, ConstView<T, 4>(state), o).last;
}

#define FLASHLSTM_INSTANTIATE(T)                                                                          \
  template Output<T> forward(const Inputs<T>&, const OptionalState<T>&, const Options&);                  \
  template InputGrad<T> backward(const Inputs<T>&, const OptionalState<T>&, const OutputGrad<T>&,        \
                                 const Options&);                                                         \
  template void step(ConstView<T, 4>, ConstView<T, 4>, ConstView<T, 3>, xt::xtensor<T, 4>&, const Options&);
FLASHLSTM_INSTANTIATE(float)
FLASHLSTM_INSTANTIATE(double)
#undef FLASHLSTM_INSTANTIATE

}  // namespace flashlstm::slstm
