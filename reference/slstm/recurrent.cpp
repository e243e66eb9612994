// The recurrence skeleton shared by every cell: per head, for t = 1..T,
//   g̃_t = Wx_t + b + h_{t-1} R_head^T   (one (B × DH)(DH × 4DH) GEMM per step and head)
//   state_t = Cell::forward(g̃_t, state_{t-1})
// and its reverse (backpropagation through time). Heads are independent (R is block-diagonal), so
// OpenMP runs over heads, each thread keeping its heads from the first step to the last.
//
// Forward: time outside, heads inside. The running state of each head lives in a small workspace
// (contiguous, aligned); each new state (and with keep_gates, each g̃_t) is copied into the output.
//
// Backward: heads outside, one head at a time per thread (its history is large), in a workspace of
// T · (4 + NS) · B · DH numbers per thread (or kDRSteps steps of it, see BackwardWorkspace). First
// the forward's pre-activations and states: the forward run again, keeping them in the workspace,
// unless the caller hands over what the forward kept (`Saved`), which is then copied into the
// workspace step by step. Then back in time, doing per step only what is sequential: the cell's
// backward and dh_{t-1} = dg̃_t R (dg̃_t replaces g̃_t in the workspace). The parameter gradients
// are sums over time: every kDRSteps steps one GEMM of depth kDRSteps · B adds Σ dg̃_tᵀ h_{t-1} to
// dR, on rows still in the cache; db = Σ_t dg̃_t.
//
// Nothing is allocated inside the time loops. What remains besides the GEMMs is the cells'
// exponentials and memory traffic; see "Memory" below.
#include "reference/slstm/cells.hpp"

#include "core/error.hpp"
#include "core/parallel.hpp"

#if defined(__SSE2__)
#include <immintrin.h>
#endif
#if __has_include(<sys/mman.h>)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

namespace flashlstm::slstm {
namespace {

using namespace detail;
template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using MatMap = Eigen::Map<Mat<T>>;

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

// Where the rows of one head lie in each tensor of the API.
struct Layout {
  Dims d;
  // (NS, B, NH, DH): the states of one head.
  template <class T>
  Slices<T> state(T* data, index_t head) const {
    return {data + head * d.DH, d.B * d.NH * d.DH, d.NH * d.DH, d.B, d.DH};
  }
  // (NS, B, T, NH, DH): the states of one head after step t.
  template <class T>
  Slices<T> states(T* data, index_t t, index_t head) const {
    return {data + (t * d.NH + head) * d.DH, d.B * d.T * d.NH * d.DH, d.T * d.NH * d.DH, d.B, d.DH};
  }
  // (B, T, 4, NH, DH): the gates of one head at step t.
  template <class T>
  Slices<T> gates(T* data, index_t t, index_t head) const {
    return {data + (t * 4 * d.NH + head) * d.DH, d.NH * d.DH, 4 * d.T * d.NH * d.DH, d.B, d.DH};
  }
  // (B, T, NH, DH): h_t of one head, block 0.
  template <class T>
  Slices<T> sequence(T* data, index_t t, index_t head) const {
    return {data + (t * d.NH + head) * d.DH, 0, d.T * d.NH * d.DH, d.B, d.DH};
  }
  // (4, NH, DH, DH) and (4, NH, DH): R and b of one head per gate.
  template <class T>
  Slices<T> R(T* data, index_t head) const {
    return {data + head * d.DH * d.DH, d.NH * d.DH * d.DH, d.DH, d.DH, d.DH};
  }
  template <class T>
  Slices<T> b(T* data, index_t head) const {
    return {data + head * d.DH, d.NH * d.DH, d.DH, 1, d.DH};
  }
};

// Memory. The tensors here are far larger than the cache (Wx and the states over time are
// 200 MB each at the benchmark's shape), and the rows of one head at one step are scattered over
// them, 256 bytes here and there, and a multiple of 4 kB apart, so that in the caches they compete
// for the same few sets. What keeps that from dominating: huge pages for the large buffers this
// file allocates (one TLB entry per 2 MB instead of per 4 kB, and far fewer page faults when they
// are first written: on a VM, 4 kB faults on a fresh 200 MB output cost more than all the GEMMs;
// a caller that reuses its arrays avoids the faults altogether), prefetching the rows of Wx the
// thread works on next while it computes, non-temporal stores for the outputs, reading the
// forward's saved rows once into the contiguous workspace, and copies that do not care about
// alignment.

// Asks the kernel for huge pages (transparent huge pages in "madvise" mode, Linux) over the whole
// 2 MB pages inside [data, data + n); a hint, without effect elsewhere. Call before first use.
template <class T>
void huge_pages(T* data, std::size_t n) {
#ifdef MADV_HUGEPAGE
  constexpr std::uintptr_t page = std::uintptr_t(1) << 21;
  const auto begin = (reinterpret_cast<std::uintptr_t>(data) + page - 1) & ~(page - 1);
  const auto end = reinterpret_cast<std::uintptr_t>(data + n) & ~(page - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

// Asks the cache for the rows of blocks 0 .. count-1 of `s` (for writing if T is not const), into
// L2 rather than L1 (locality 2): fetched a whole head's step ahead, in L1 they would be evicted by
// the GEMM's operands before use (measured: the input part of the forward took 50 % longer).
template <class T>
void prefetch(Slices<T> s, index_t count) {
  constexpr index_t line = 64 / sizeof(T);
  constexpr int for_writing = std::is_const_v<T> ? 0 : 1, into_l2 = 2;
  for (index_t k = 0; k < count; ++k)
    for (index_t r = 0; r < s.rows; ++r)
      for (index_t j = 0; j < s.cols; j += line)
        __builtin_prefetch(s[k].data() + r * s.row_stride + j, for_writing, into_l2);
}

// Row by row with memcpy: the tensors' rows need not be aligned, where Eigen would peel off
// scalars until they are.
template <class T>
void copy(Slices<const T> from, Slices<T> to, index_t count) {
  for (index_t k = 0; k < count; ++k)
    for (index_t r = 0; r < from.rows; ++r) std::copy_n(from[k].row(r).data(), from.cols, to[k].row(r).data());
}

// The same, for rows of the large outputs (the states over time, the kept gates, dWx), which are
// not read again in this call: non-temporal stores where the platform has them (x86), which do not
// read the lines into the cache first and do not evict the working set (the GEMM's operands). The
// rows of one head lie megabytes apart at a multiple of 4 kB, so as ordinary stores they would also
// evict one another. Ends with a store fence, so the rows are visible once the call returns.
template <class T>
void stream(Slices<const T> from, Slices<T> to, index_t count) {
#if defined(__SSE2__)
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    constexpr index_t lanes = 16 / sizeof(T);
    for (index_t k = 0; k < count; ++k) {
      for (index_t r = 0; r < from.rows; ++r) {
        const T* src = from[k].row(r).data();
        T* dst = to[k].row(r).data();
        index_t j = 0;
        for (; j < from.cols && reinterpret_cast<std::uintptr_t>(dst + j) % 16 != 0; ++j) dst[j] = src[j];
        for (; j + lanes <= from.cols; j += lanes) {
          if constexpr (std::is_same_v<T, float>) {
            _mm_stream_ps(dst + j, _mm_loadu_ps(src + j));
          } else {
            _mm_stream_pd(dst + j, _mm_loadu_pd(src + j));
          }
        }
        for (; j < from.cols; ++j) dst[j] = src[j];
      }
    }
    _mm_sfence();
    return;
  }
#endif
  copy(from, to, count);
}

// `state` (the initial state or an upstream gradient) if given, else zeros.
template <class T>
void load(const OptionalState<T>& state, const Layout& l, index_t head, Slices<T> to) {
  for (index_t k = 0; k < l.d.NS; ++k) {
    if (state) {
      to[k] = l.state(state->data(), head)[k];
    } else {
      to[k].setZero();
    }
  }
}

// One head's recurrent matrix stacked over gates, (4·DH, DH), its transpose for the forward GEMM,
// and its bias, (4, DH).
// With Operands::bf16 every operand of the recurrent products (R, h_{t-1}, dg̃_t) is rounded to
// bf16 first: the arithmetic of a plain bf16 kernel (core/bf16.hpp).
template <class T>
struct HeadWeights {
  Mat<T> R, Rt;
  Block<T> bias;
  Operands operands;
  HeadWeights(const Inputs<T>& x, const Layout& l, index_t head, Operands operands_)
      : R(4 * l.d.DH, l.d.DH), bias(4, l.d.DH), operands(operands_) {
    for (index_t g = 0; g < 4; ++g) {
      R.middleRows(g * l.d.DH, l.d.DH) = l.R(x.R.data(), head)[g].matrix();
      bias.row(g) = l.b(x.b.data(), head)[g];
    }
    R = operand(R, operands);
    Rt = R.transpose();
  }
};

// The pre-activations (or their gradients) of one head at one step: (B, 4·DH) with the four gates
// side by side, so that one GEMM writes (or reads) them all.
template <class T>
struct GateRows {
  T* data;
  index_t B, DH;
  Slices<T> gates() const { return {data, DH, 4 * DH, B, DH}; }
  MatMap<T> matrix() const { return {data, B, 4 * DH}; }
};

// g̃_t = Wx_t + b + h_{t-1} Rᵀ for one head, in two parts: the input part Wx_t + b, then the GEMM,
// which accumulates onto it.
template <class T>
void add_input(const Inputs<T>& x, const Layout& l, const HeadWeights<T>& w, index_t t, index_t head, GateRows<T> g) {
  const Slices<const T> wx = l.gates(x.Wx.data(), t, head);
  for (index_t k = 0; k < 4; ++k) g.gates()[k] = wx[k].rowwise() + w.bias.row(k);
}
template <class T>
void add_recurrent(const HeadWeights<T>& w, Slices<const T> prev, GateRows<T> g) {
  if (w.operands == Operands::bf16) {
    g.matrix().noalias() += operand(prev[H].matrix(), w.operands) * w.Rt;
  } else {
    g.matrix().noalias() += prev[H].matrix() * w.Rt;
  }
}

template <class Cell, class T>
void run_forward(const Inputs<T>& x, const OptionalState<T>& initial, const Options& o, const OutputView<T>& out,
                 const Dims& d, Operands operands) {
  const Layout l{d};
  const bool keep_gates = !out.gates.empty();
  std::vector<HeadWeights<T>> w;
  for (index_t head = 0; head < d.NH; ++head) w.emplace_back(x, l, head, operands);
  // Per head, the state before and after the current step: (2, NS, B, DH), slot t % 2 before step t.
  std::vector<Block<T>> states(d.NH, Block<T>(2 * d.NS * d.B, d.DH));
  const auto state = [&](index_t head, index_t slot) {
    return contiguous(states[head].data() + slot * d.NS * d.B * d.DH, d.B, d.DH);
  };
  // Time outside, heads inside: at step t a thread reads Wx_t and writes state_t of its heads, which
  // lie side by side in memory (one head alone touches a new page with every row). The static
  // schedule gives each thread the same heads at every step, so no thread waits for another.
  ParallelErrors errors;  // every thread meets every loop below; after a failure the bodies are skipped
#pragma omp parallel
  {
    std::optional<Block<T>> gates;
    std::optional<typename Cell::template Scratch<T>> scratch;
    errors.run([&] { gates.emplace(d.B, 4 * d.DH), scratch.emplace(d.B, d.DH); });
#pragma omp for schedule(static) nowait
    for (index_t head = 0; head < d.NH; ++head) load(initial, l, head, state(head, 0));
    for (index_t t = 0; t < d.T; ++t) {
#pragma omp for schedule(static) nowait
      for (index_t head = 0; head < d.NH; ++head) errors.run([&] {
        if (head + 1 < d.NH) prefetch(l.gates(x.Wx.data(), t, head + 1), 4);  // the thread's next head
        const GateRows<T> g{gates->data(), d.B, d.DH};
        const Slices<T> prev = state(head, t % 2), next = state(head, (t + 1) % 2);
        add_input<T>(x, l, w[head], t, head, g);
        add_recurrent<T>(w[head], prev, g);
        if (keep_gates) stream<T>(g.gates(), l.gates(out.gates.data(), t, head), 4);
        Cell::forward(g.gates(), prev, next, *scratch, o);
        stream<T>(next, l.states(out.states.data(), t, head), d.NS);
      });
    }
#pragma omp for schedule(static) nowait
    for (index_t head = 0; head < d.NH; ++head) copy<T>(state(head, d.T % 2), l.state(out.last.data(), head), d.NS);
  }
  errors.rethrow();
}

constexpr index_t kDRSteps = 16;  // the backward's steps per GEMM of dR

// Step t lives in slot t % slots: all T + 1 steps when the backward reruns the forward, a ring of
// kDRSteps when the forward's results are saved (steps t0 .. t0 + kDRSteps - 1 of one dR GEMM,
// t0 a multiple of kDRSteps, fill the slots in order; the slot of the step after them, which the
// first of their cell backwards reads, is overwritten only by the last).
template <class Cell, class T>
struct BackwardWorkspace {
  Dims d;
  index_t slots;
  Block<T> gates;    // (slots, B, 4·DH): g̃_t, replaced by dg̃_t when the backward has passed t
  Block<T> history;  // (NS, slots, B, DH): the state before step t (so h_{t-1} of consecutive t is contiguous)
  Block<T> g_step;   // (B, 4·DH): g̃_t of the step the backward is at (moved out of the way of dg̃_t, or saved)
  Block<T> dstates;  // (2, NS, B, DH): the state gradient after and before the current step
  typename Cell::template Scratch<T> scratch;

  BackwardWorkspace(const Dims& d_, bool saved)
      : d(d_), slots(saved ? kDRSteps : d.T + 1), gates(slots * d.B, 4 * d.DH), history(d.NS * slots * d.B, d.DH),
        g_step(d.B, 4 * d.DH), dstates(2 * d.NS * d.B, d.DH), scratch(d.B, d.DH) {
    for (Block<T>* a : {&gates, &history}) huge_pages(a->data(), a->size());
  }
  GateRows<T> g(index_t t) { return {gates.data() + t % slots * d.B * 4 * d.DH, d.B, d.DH}; }
  Slices<T> state(index_t t) { return {history.data() + t % slots * d.B * d.DH, slots * d.B * d.DH, d.DH, d.B, d.DH}; }
  Slices<T> dstate(index_t slot) { return contiguous(dstates.data() + slot * d.NS * d.B * d.DH, d.B, d.DH); }
};

template <class Cell, class T>
void run_backward(const Inputs<T>& x, const OptionalState<T>& initial, const OutputGrad<T>& grad,
                  const OptionalSaved<T>& saved, const Options& o, const InputGradView<T>& out, const Dims& d,
                  Operands operands) {
  const Layout l{d};
  ParallelErrors errors;
#pragma omp parallel
  {
    std::optional<BackwardWorkspace<Cell, T>> ws;  // made by the threads that get a head
#pragma omp for schedule(dynamic)
    for (index_t head = 0; head < d.NH; ++head) errors.run([&] {
      if (!ws) ws.emplace(d, saved.has_value());
      const HeadWeights<T> w(x, l, head, operands);
      if (!saved) {  // forward again, keeping g̃_t and state_t of every step
        load(initial, l, head, ws->state(0));
        for (index_t t = 0; t < d.T; ++t) {
          if (t + 1 < d.T) prefetch(l.gates(x.Wx.data(), t + 1, head), 4);
          add_input<T>(x, l, w, t, head, ws->g(t));
          add_recurrent<T>(w, ws->state(t), ws->g(t));
          Cell::forward(ws->g(t).gates(), ws->state(t), ws->state(t + 1), ws->scratch, o);
        }
      }
      // Backward in time: the cell, then the h part of the previous state's gradient through R. The
      // cell reads g̃_t and the states before and after step t in the workspace; with `saved` they
      // are copied there from the forward's arrays first. Read where they are, the rows of one head
      // (megabytes apart, at a multiple of 4 kB) evict one another from the caches: the cell took
      // 2.5 times as long.
      const auto saved_gates = [&](index_t t) { return l.gates(saved->gates.data(), t, head); };
      const auto saved_state = [&](index_t t) { return l.states(saved->states.data(), t, head); };  // after step t
      if (saved) copy<T>(saved_state(d.T - 1), ws->state(d.T), d.NS);
      Slices<T> dnext = ws->dstate(0), dprev = ws->dstate(1);
      load(grad.dlast, l, head, dnext);
      Mat<T> dR = Mat<T>::Zero(4 * d.DH, d.DH);
      Eigen::Matrix<T, 1, Eigen::Dynamic> db = Eigen::Matrix<T, 1, Eigen::Dynamic>::Zero(4 * d.DH);
      for (index_t t = d.T - 1; t >= 0; --t) {
        if (t > 0) {
          prefetch(l.sequence(grad.dh.data(), t - 1, head), 1);
          if (saved) prefetch(saved_gates(t - 1), 4);
          if (saved && t > 1) prefetch(saved_state(t - 2), d.NS);
        }
        const GateRows<T> g{ws->g_step.data(), d.B, d.DH}, dg = ws->g(t);  // dg̃_t replaces g̃_t in the workspace
        if (saved) {
          copy<T>(saved_gates(t), g.gates(), 4);
          if (t > 0) {
            copy<T>(saved_state(t - 1), ws->state(t), d.NS);
          } else {
            load(initial, l, head, ws->state(0));
          }
        } else {
          ws->g_step = ws->g(t).matrix();
        }
        dnext[H] += l.sequence(grad.dh.data(), t, head)[0];
        Cell::backward(g.gates(), ws->state(t), ws->state(t + 1), dnext, dprev, dg.gates(), ws->scratch, o);
        if (operands == Operands::bf16) {
          dprev[H].matrix().noalias() = operand(dg.matrix(), operands) * w.R;  // g̃ = h Rᵀ: dh = dg̃ R
        } else {
          dprev[H].matrix().noalias() = dg.matrix() * w.R;
        }
        stream<T>(dg.gates(), l.gates(out.dWx.data(), t, head), 4);
        std::swap(dnext, dprev);
        // dR = Σ_t dg̃_tᵀ h_{t-1} and db = Σ_t dg̃_t, kDRSteps steps at a time (one GEMM of depth
        // kDRSteps · B, on rows still in the cache).
        if (t % kDRSteps == 0) {
          const index_t rows = std::min(kDRSteps, d.T - t) * d.B;
          const MatMap<T> dG(ws->g(t).data, rows, 4 * d.DH), H_prev(ws->state(t)[H].data(), rows, d.DH);
          if (operands == Operands::bf16) {
            dR.noalias() += operand(dG, operands).transpose() * operand(H_prev, operands);
          } else {
            dR.noalias() += dG.transpose() * H_prev;
          }
          db += dG.colwise().sum();
        }
      }
      if (initial) copy<T>(dnext, l.state(out.dinitial.data(), head), d.NS);
      for (index_t g = 0; g < 4; ++g) {
        l.R(out.dR.data(), head)[g] = dR.middleRows(g * d.DH, d.DH).array();
        l.b(out.db.data(), head)[g] = db.segment(g * d.DH, d.DH).array();
      }
    });
  }
  errors.rethrow();
}

// Fresh outputs: uninitialised (every element is written), and huge pages for the large ones.
template <class T, std::size_t N>
xt::xtensor<T, N> output(const Shape<N>& shape) {
  auto a = uninitialized<T>(shape);
  huge_pages(a.data(), a.size());
  return a;
}

}  // namespace

template <class T>
void forward(const Inputs<T>& x, const OptionalState<T>& initial, const Options& o,
             const std::type_identity_t<OutputView<T>>& out, Operands operands) {
  const Dims d = check_inputs(x, initial, o);
  check_shape("out.states", out.states, {d.NS, d.B, d.T, d.NH, d.DH});
  check_shape("out.last", out.last, {d.NS, d.B, d.NH, d.DH});
  if (!out.gates.empty()) check_shape("out.gates", out.gates, x.Wx.shape());
  if (o.cell == Cell::slstm) {
    run_forward<SlstmCell>(x, initial, o, out, d, operands);
  } else {
    run_forward<LstmCell>(x, initial, o, out, d, operands);
  }
}

template <class T>
Output<T> forward(const Inputs<T>& x, const OptionalState<T>& initial, const Options& o, bool keep_gates,
                  Operands operands) {
  const Dims d = check_inputs(x, initial, o);
  Output<T> out{output<T>(Shape<5>{d.NS, d.B, d.T, d.NH, d.DH}), output<T>(Shape<4>{d.NS, d.B, d.NH, d.DH}),
                std::nullopt};
  if (keep_gates) out.gates = output<T>(x.Wx.shape());
  forward(x, initial, o, {out.states, out.last, keep_gates ? View<T, 5>(*out.gates) : View<T, 5>()}, operands);
  return out;
}

template <class T>
void backward(const Inputs<T>& x, const OptionalState<T>& initial, const OutputGrad<T>& grad, const Options& o,
              const OptionalSaved<T>& saved, const std::type_identity_t<InputGradView<T>>& out, Operands operands) {
  const Dims d = check_inputs(x, initial, o);
  check_shape("dh", grad.dh, {d.B, d.T, d.NH, d.DH});
  if (grad.dlast) check_shape("dlast", *grad.dlast, {d.NS, d.B, d.NH, d.DH});
  if (saved) {
    check_shape("saved.states", saved->states, {d.NS, d.B, d.T, d.NH, d.DH});
    check_shape("saved.gates", saved->gates, {d.B, d.T, 4, d.NH, d.DH});
  }
  check_shape("out.dWx", out.dWx, x.Wx.shape());
  check_shape("out.dR", out.dR, x.R.shape());
  check_shape("out.db", out.db, x.b.shape());
  if (initial) {
    check_shape("out.dinitial", out.dinitial, {d.NS, d.B, d.NH, d.DH});
  } else {
    require(out.dinitial.empty(), "out.dinitial", "given without an initial state");
  }
  if (o.cell == Cell::slstm) {
    run_backward<SlstmCell>(x, initial, grad, saved, o, out, d, operands);
  } else {
    run_backward<LstmCell>(x, initial, grad, saved, o, out, d, operands);
  }
}

template <class T>
InputGrad<T> backward(const Inputs<T>& x, const OptionalState<T>& initial, const OutputGrad<T>& grad, const Options& o,
                      const OptionalSaved<T>& saved, Operands operands) {
  const Dims d = check_inputs(x, initial, o);
  InputGrad<T> out{output<T>(x.Wx.shape()), output<T>(x.R.shape()), output<T>(x.b.shape()), std::nullopt};
  if (initial) out.dinitial = output<T>(Shape<4>{d.NS, d.B, d.NH, d.DH});
  backward(x, initial, grad, o, saved,
           {out.dWx, out.dR, out.db, out.dinitial ? View<T, 4>(*out.dinitial) : View<T, 4>()}, operands);
  return out;
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
  template Output<T> forward(const Inputs<T>&, const OptionalState<T>&, const Options&, bool, Operands);  \
  template InputGrad<T> backward(const Inputs<T>&, const OptionalState<T>&, const OutputGrad<T>&,        \
                                 const Options&, const OptionalSaved<T>&, Operands);                      \
  template void forward(const Inputs<T>&, const OptionalState<T>&, const Options&,                        \
                        const std::type_identity_t<OutputView<T>>&, Operands);                           \
  template void backward(const Inputs<T>&, const OptionalState<T>&, const OutputGrad<T>&, const Options&, \
                         const OptionalSaved<T>&, const std::type_identity_t<InputGradView<T>>&, Operands); \
  template void step(ConstView<T, 4>, ConstView<T, 4>, ConstView<T, 3>, xt::xtensor<T, 4>&, const Options&);
FLASHLSTM_INSTANTIATE(float)
FLASHLSTM_INSTANTIATE(double)
#undef FLASHLSTM_INSTANTIATE

}  // namespace flashlstm::slstm
