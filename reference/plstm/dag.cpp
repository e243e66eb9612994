// pLSTM on a DAG: recurrent, level-parallel and parallel forms and the exact backward (plstm.hpp).
// Each edge state is created when its source node is visited and released when its target node
// has read it, so the recurrent forms hold only the states crossing the current frontier.
#include "reference/plstm/plstm.hpp"

#include "core/error.hpp"
#include "reference/masked.hpp"
#include "reference/plstm/detail.hpp"

#include <algorithm>
#include <cmath>
#include <memory>
#include <new>
#include <vector>

#ifdef FLASHLSTM_OPENMP
#include <omp.h>
#endif

namespace flashlstm::plstm {
namespace {

using detail::Mat;
using detail::Vec;
template <class F>
using ConstVecMap = Eigen::Map<const Vec<F>>;
template <class F>
using VecMap = Eigen::Map<Vec<F>>;

struct Dims {
  index_t B, NH, N, DQK, DV, E, A;
};

// Arc ids as graph::line_graph numbers them: by node, then incoming edge, then outgoing edge.
struct ArcIndex {
  std::vector<index_t> offset;  // per node: id of its first arc
  explicit ArcIndex(const graph::Dag& dag) : offset(dag.num_nodes() + 1, 0) {
    for (index_t n = 0; n < dag.num_nodes(); ++n)
      offset[n + 1] = offset[n] + dag.in_edges().size(n) * dag.out_edges().size(n);
  }
  index_t arcs() const { return offset.back(); }
  // The arc from the i-th incoming to the o-th outgoing edge of node n.
  index_t operator()(const graph::Dag& dag, index_t n, index_t i, index_t o) const {
    return offset[n] + i * dag.out_edges().size(n) + o;
  }
};

template <class F>
Dims check_inputs(const graph::Dag& dag, const DagInputs<F>& x, const ArcIndex& arcs) {
  require(!x.q.empty(), "q", "is null");
  const Dims d{x.q.shape(0), x.q.shape(1), x.q.shape(2), x.q.shape(3), x.v.shape(3), dag.num_edges(), arcs.arcs()};
  require(d.B >= 1 && d.NH >= 1 && d.DQK >= 1, "q", "expected shape (B, NH, N, DQK) with B, NH, DQK >= 1, got {}",
          shape_string(x.q.shape()));
  require(d.N == dag.num_nodes(), "q", "expected N = {} nodes (the graph's), got shape {}", dag.num_nodes(),
          shape_string(x.q.shape()));
  require(d.DV >= 1, "v", "expected DV >= 1, got shape {}", shape_string(x.v.shape()));
  check_shape("k", x.k, {d.B, d.NH, d.N, d.DQK});
  check_shape("v", x.v, {d.B, d.NH, d.N, d.DV});
  check_shape("S", x.S, {d.B, d.NH, d.E});
  check_shape("T", x.T, {d.B, d.NH, d.A});
  check_shape("M", x.M, {d.B, d.NH, d.E});
  check_shape("D", x.D, {d.B, d.NH, d.N});
  return d;
}

// Pointers to one (batch, head).
template <class F>
struct Head {
  const F *q, *k, *v, *S, *T, *M, *D;
  F scale;
  Head(const DagInputs<F>& x, const Dims& d, index_t bh, const Options& o)
      : q(x.q.data() + bh * d.N * d.DQK),
        k(x.k.data() + bh * d.N * d.DQK),
        v(x.v.data() + bh * d.N * d.DV),
        S(x.S.data() + bh * d.E),
        T(x.T.data() + bh * d.A),
        M(x.M.data() + bh * d.E),
        D(x.D.data() + bh * d.N),
        scale(detail::qk_scale<F>(o, d.DQK)) {}
};

// Storage for the edge states of the recurrent forms: DQK x DV buffers taken and given back per
// thread, so that a state's memory is reused once its target node has read it, without a heap
// allocation per edge (and without freeing on one thread what another allocated). The buffers are
// cut from 64-byte-aligned blocks at a stride of whole cache lines and each thread's lists sit on
// cache lines of their own, so two threads never write to one line (false sharing in the levels form).
template <class F>
class StatePool {
 public:
  explicit StatePool(index_t elements)
      : stride_((elements * index_t(sizeof(F)) + line - 1) / line * line / index_t(sizeof(F))),
        per_block_(std::max<index_t>(1, block_bytes / (stride_ * index_t(sizeof(F))))),
        threads_(max_threads()) {}
  F* take() {
    Lists& own = threads_[thread()];
    if (own.free.empty()) {
      F* block = own.blocks.emplace_back(new (std::align_val_t(line)) F[per_block_ * stride_]).get();
      for (index_t i = per_block_ - 1; i >= 0; --i) own.free.push_back(block + i * stride_);
    }
    F* p = own.free.back();
    own.free.pop_back();
    return p;
  }
  void give(F* p) { threads_[thread()].free.push_back(p); }

 private:
  static constexpr index_t line = 64, block_bytes = index_t(1) << 16;
  struct AlignedDelete {
    void operator()(F* p) const { ::operator delete[](p, std::align_val_t(line)); }
  };
  struct alignas(line) Lists {
    std::vector<std::unique_ptr<F[], AlignedDelete>> blocks;
    std::vector<F*> free;
  };
  static int max_threads() {
#ifdef FLASHLSTM_OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  }
  static int thread() {
#ifdef FLASHLSTM_OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
  }
  index_t stride_, per_block_;
  std::vector<Lists> threads_;
};

// Visits node n: writes h^n and the states of its outgoing edges, releases its incoming states.
// C[e] points at edge e's state from the visit of its source to the visit of its target, its only
// reader; it is not reset afterwards (a write the levels form's threads would contend for).
template <class F>
void visit(const graph::Dag& dag, const ArcIndex& arcs, const Dims& d, const Head<F>& x, index_t n,
           std::vector<F*>& C, StatePool<F>& pool, F* h) {
  using ConstState = Eigen::Map<const Mat<F>>;
  const ConstVecMap<F> q(x.q + n * d.DQK, d.DQK), k(x.k + n * d.DQK, d.DQK), v(x.v + n * d.DV, d.DV);
  VecMap<F> out(h + n * d.DV, d.DV);
  out = (x.scale * x.D[n] * q.dot(k)) * v;
  const index_t* in = dag.in_edges().begin(n);
  const index_t n_in = dag.in_edges().size(n);
  for (index_t i = 0; i < n_in; ++i)
    out.noalias() += (x.scale * x.M[in[i]]) * (ConstState(C[in[i]], d.DQK, d.DV).transpose() * q);
  const index_t* outs = dag.out_edges().begin(n);
  for (index_t o = 0; o < dag.out_edges().size(n); ++o) {
    Eigen::Map<Mat<F>> state(C[outs[o]] = pool.take(), d.DQK, d.DV);
    state.noalias() = (x.S[outs[o]] * k) * v.transpose();
    for (index_t i = 0; i < n_in; ++i) state += x.T[arcs(dag, n, i, o)] * ConstState(C[in[i]], d.DQK, d.DV);
  }
  for (index_t i = 0; i < n_in; ++i) pool.give(C[in[i]]);
}

template <class F>
void forward_recurrent(const graph::Dag& dag, const ArcIndex& arcs, const Dims& d, const Head<F>& x, F* h) {
  std::vector<F*> C(d.E, nullptr);
  StatePool<F> pool(d.DQK * d.DV);
  for (index_t n : dag.topological_order()) visit(dag, arcs, d, x, n, C, pool, h);
}

// Levels one after another, the nodes of a level over the threads of one parallel region (a
// barrier between levels, not a fork and join per level); a narrow level runs on one thread, where
// splitting would cost more than its work.
template <class F>
void forward_levels(const graph::Dag& dag, const ArcIndex& arcs, const graph::Csr& schedule, const Dims& d,
                    const Head<F>& x, F* h) {
  std::vector<F*> C(d.E, nullptr);
  StatePool<F> pool(d.DQK * d.DV);
  ParallelErrors errors;
#pragma omp parallel
  for (index_t l = 0; l < schedule.rows(); ++l) {
    const index_t* nodes = schedule.begin(l);
    if (schedule.size(l) >= 32) {
#pragma omp for schedule(static)
      for (index_t i = 0; i < schedule.size(l); ++i) errors.run([&] { visit(dag, arcs, d, x, nodes[i], C, pool, h); });
    } else {
#pragma omp single
      for (index_t i = 0; i < schedule.size(l); ++i) errors.run([&] { visit(dag, arcs, d, x, nodes[i], C, pool, h); });
    }
  }
  errors.rethrow();
}

// G (N x N) of one head: column n' of `carried` is what node n' put on each edge, propagated.
template <class F>
Mat<F> gating(const graph::Dag& dag, const ArcIndex& arcs, const Dims& d, const Head<F>& x) {
  Mat<F> carried = Mat<F>::Zero(d.E, d.N);  // carried(e, n'): weight of n''s k v on edge e
  Mat<F> G = Mat<F>::Zero(d.N, d.N);
  for (index_t n : dag.topological_order()) {
    const index_t* in = dag.in_edges().begin(n);
    const index_t* out = dag.out_edges().begin(n);
    for (index_t i = 0; i < dag.in_edges().size(n); ++i) G.col(n) += x.M[in[i]] * carried.row(in[i]).transpose();
    for (index_t o = 0; o < dag.out_edges().size(n); ++o) {
      carried(out[o], n) += x.S[out[o]];
      for (index_t i = 0; i < dag.in_edges().size(n); ++i)
        carried.row(out[o]) += x.T[arcs(dag, n, i, o)] * carried.row(in[i]);
    }
  }
  return G;
}

// reach(a, b): node a has a path to node b (or a == b).
Eigen::Array<bool, Eigen::Dynamic, Eigen::Dynamic> reachability(const graph::Dag& dag) {
  const index_t N = dag.num_nodes();
  Eigen::Array<bool, Eigen::Dynamic, Eigen::Dynamic> reach = Eigen::Array<bool, Eigen::Dynamic, Eigen::Dynamic>::Zero(N, N);
  for (index_t n : dag.topological_order()) {
    reach(n, n) = true;
    for (const index_t* e = dag.in_edges().begin(n); e != dag.in_edges().end(n); ++e)
      reach.col(n) = reach.col(n) || reach.col(dag.edges()[*e].src);
  }
  return reach;
}

template <class F>
void forward_parallel(const graph::Dag& dag, const ArcIndex& arcs, const Dims& d, const Head<F>& x, F* h,
                      Operands operands) {
  using ConstMat = Eigen::Map<const Mat<F>>;
  const ConstMat Q(x.q, d.N, d.DQK), K(x.k, d.N, d.DQK), V(x.v, d.N, d.DV);
  const Mat<F> A = x.scale * operand(Q, operands) * operand(K, operands).transpose();  // A(n, n') = s q^n·k^n'
  Mat<F> P = gating(dag, arcs, d, x).transpose().cwiseProduct(A);
  P.diagonal() += Eigen::Map<const Vec<F>>(x.D, d.N).cwiseProduct(A.diagonal());
  auto out = Eigen::Map<Mat<F>>(h, d.N, d.DV);
  if (A.allFinite() && V.allFinite()) {
    out.noalias() = operand(P, operands) * operand(V, operands);
    return;
  }
  // Non-finite inputs: only along paths (reference/masked.hpp), as the recurrent form propagates them.
  const auto reach = reachability(dag);
  const auto along_paths = [&](index_t n, index_t n_from) { return reach(n_from, n); };
  out = masked_product(masked(P, along_paths), V, along_paths);
}

}  // namespace

std::string to_string(DagForm form) {
  switch (form) {
    case DagForm::recurrent: return "recurrent";
    case DagForm::levels: return "levels";
    case DagForm::parallel: return "parallel";
  }
  return "?";
}

template <class F>
xt::xtensor<F, 4> dag_forward(const graph::Dag& dag, const DagInputs<F>& x, DagForm form, const Options& o,
                              Operands operands) {
  const ArcIndex arcs(dag);
  const Dims d = check_inputs(dag, x, arcs);
  auto h = uninitialized<F>(Shape<4>{d.B, d.NH, d.N, d.DV});
  if (form == DagForm::levels) {  // parallel inside each level, so heads one after another
    for (index_t bh = 0; bh < d.B * d.NH; ++bh)
      forward_levels(dag, arcs, dag.levels(), d, Head<F>(x, d, bh, o), h.data() + bh * d.N * d.DV);
    return h;
  }
  // the parallel form: the edge-to-node carried weights (E x N) and about four N x N matrices per head
  if (form == DagForm::parallel)
    detail::check_quadratic_memory<F>("N", d.N, 4.0 + static_cast<double>(d.E) / std::max<index_t>(d.N, 1),
                                      d.B * d.NH, "parallel");
  parallel_for(d.B * d.NH, [&](index_t bh) {
    const Head<F> head(x, d, bh, o);
    F* out = h.data() + bh * d.N * d.DV;
    form == DagForm::recurrent ? forward_recurrent(dag, arcs, d, head, out)
                               : forward_parallel(dag, arcs, d, head, out, operands);
  });
  return h;
}

template <class F>
xt::xtensor<F, 4> dag_gating(const graph::Dag& dag, const DagInputs<F>& x) {
  const ArcIndex arcs(dag);
  const Dims d = check_inputs(dag, x, arcs);
  require_memory("N", static_cast<double>(d.B * d.NH) * static_cast<double>(d.N) * static_cast<double>(d.N) * sizeof(F),
                 fmt::format("the gating output of {} heads x {} x {} nodes", d.B * d.NH, d.N, d.N));
  detail::check_quadratic_memory<F>("N", d.N, 1.0 + static_cast<double>(d.E) / std::max<index_t>(d.N, 1), d.B * d.NH,
                                    "gating");
  auto G = uninitialized<F>(Shape<4>{d.B, d.NH, d.N, d.N});
  parallel_for(d.B * d.NH, [&](index_t bh) {
    Eigen::Map<Mat<F>>(G.data() + bh * d.N * d.N, d.N, d.N) = gating(dag, arcs, d, Head<F>(x, d, bh, Options{}));
  });
  return G;
}

template <class F>
DagGrad<F> dag_backward(const graph::Dag& dag, const DagInputs<F>& x, ConstView<F, 4> dh, const Options& o) {
  const ArcIndex arcs(dag);
  const Dims d = check_inputs(dag, x, arcs);
  check_shape("dh", dh, {d.B, d.NH, d.N, d.DV});
  DagGrad<F> g{zeros<F>(Shape<4>{d.B, d.NH, d.N, d.DQK}), zeros<F>(Shape<4>{d.B, d.NH, d.N, d.DQK}),
               zeros<F>(Shape<4>{d.B, d.NH, d.N, d.DV}), zeros<F>(Shape<3>{d.B, d.NH, d.E}),
               zeros<F>(Shape<3>{d.B, d.NH, d.A}),       zeros<F>(Shape<3>{d.B, d.NH, d.E}),
               zeros<F>(Shape<3>{d.B, d.NH, d.N})};
  parallel_for(d.B * d.NH, [&](index_t bh) {
    const Head<F> x_h(x, d, bh, o);
    // Forward, keeping every edge state.
    std::vector<Mat<F>> C(d.E), dC(d.E);
    for (index_t n : dag.topological_order()) {
      const ConstVecMap<F> k(x_h.k + n * d.DQK, d.DQK), v(x_h.v + n * d.DV, d.DV);
      const index_t* in = dag.in_edges().begin(n);
      const index_t* out = dag.out_edges().begin(n);
      for (index_t o_ = 0; o_ < dag.out_edges().size(n); ++o_) {
        C[out[o_]].noalias() = (x_h.S[out[o_]] * k) * v.transpose();
        for (index_t i = 0; i < dag.in_edges().size(n); ++i) C[out[o_]] += x_h.T[arcs(dag, n, i, o_)] * C[in[i]];
        dC[out[o_]] = Mat<F>::Zero(d.DQK, d.DV);
      }
    }
    const F s = x_h.scale;
    F* dq = g.dq.data() + bh * d.N * d.DQK;
    F* dk = g.dk.data() + bh * d.N * d.DQK;
    F* dv = g.dv.data() + bh * d.N * d.DV;
    F* dS = g.dS.data() + bh * d.E;
    F* dT = g.dT.data() + bh * d.A;
    F* dM = g.dM.data() + bh * d.E;
    F* dD = g.dD.data() + bh * d.N;
    // Reverse topological order: when node n is visited, the gradients of its outgoing states are
    // complete (their only reader, the target node, came earlier).
    const auto& order = dag.topological_order();
    for (auto it = order.rbegin(); it != order.rend(); ++it) {
      const index_t n = *it;
      const ConstVecMap<F> q(x_h.q + n * d.DQK, d.DQK), k(x_h.k + n * d.DQK, d.DQK), v(x_h.v + n * d.DV, d.DV);
      const ConstVecMap<F> dh_n(dh.data() + (bh * d.N + n) * d.DV, d.DV);
      VecMap<F> dq_n(dq + n * d.DQK, d.DQK), dk_n(dk + n * d.DQK, d.DQK), dv_n(dv + n * d.DV, d.DV);
      const index_t* in = dag.in_edges().begin(n);
      const index_t* out = dag.out_edges().begin(n);
      const index_t n_in = dag.in_edges().size(n);
      // C^e = Σ T C^e' + S k v^T for the outgoing edges
      for (index_t o_ = 0; o_ < dag.out_edges().size(n); ++o_) {
        const Mat<F>& dCe = dC[out[o_]];
        const Vec<F> dC_v = dCe * v;
        dS[out[o_]] = k.dot(dC_v);
        dk_n += x_h.S[out[o_]] * dC_v;
        dv_n += x_h.S[out[o_]] * (dCe.transpose() * k);
        for (index_t i = 0; i < n_in; ++i) {
          dT[arcs(dag, n, i, o_)] = (dCe.array() * C[in[i]].array()).sum();
          dC[in[i]] += x_h.T[arcs(dag, n, i, o_)] * dCe;
        }
      }
      // h^n = s Σ M C^T q + s D (q·k) v
      const F qk = q.dot(k), v_dh = v.dot(dh_n);
      dD[n] = s * qk * v_dh;
      dq_n += (s * x_h.D[n] * v_dh) * k;
      dk_n += (s * x_h.D[n] * v_dh) * q;
      dv_n += (s * x_h.D[n] * qk) * dh_n;
      for (index_t i = 0; i < n_in; ++i) {
        const Vec<F> C_dh = C[in[i]] * dh_n;
        dM[in[i]] = s * q.dot(C_dh);
        dq_n += (s * x_h.M[in[i]]) * C_dh;
        dC[in[i]].noalias() += (s * x_h.M[in[i]] * q) * dh_n.transpose();
      }
    }
  });
  return g;
}

#define FLASHLSTM_INSTANTIATE(F)                                                                                \
  template xt::xtensor<F, 4> dag_forward(const graph::Dag&, const DagInputs<F>&, DagForm, const Options&, Operands);      \
  template DagGrad<F> dag_backward(const graph::Dag&, const DagInputs<F>&, ConstView<F, 4>, const Options&);    \
  template xt::xtensor<F, 4> dag_gating(const graph::Dag&, const DagInputs<F>&);
FLASHLSTM_INSTANTIATE(float)
FLASHLSTM_INSTANTIATE(double)
#undef FLASHLSTM_INSTANTIATE

}  // namespace flashlstm::plstm
