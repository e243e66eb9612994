// The pLSTM CPU reference on a DAG (docs/plstm.md), scalar gates. States live on edges:
//
//   C^e = Σ_{e' in E_in(n)} T^n_{e'e} C^{e'} + S^n_e k^n (v^n)^T        for e in E_out(n)
//   h^n = s Σ_{e in E_in(n)} M^n_e (C^e)^T q^n + s D^n (q^n·k^n) v^n
//
// Forms: recurrent (nodes in topological order: the oracle), levels (the same, OpenMP over the nodes
// of each level of the level schedule) and parallel (the node-to-node gating G by dynamic
// programming, then an attention-like readout). Exact backward of the recurrent form.
//
// Layout (row-major; B items sharing one graph): q, k (B, NH, N, DQK); v, h (B, NH, N, DV); S, M
// (B, NH, E) per edge; T (B, NH, A) per line-graph arc (graph::line_graph numbering); D (B, NH, N).
#pragma once

#include "core/bf16.hpp"
#include "core/plstm_options.hpp"
#include "core/view.hpp"
#include "graph/graph.hpp"

#include <string>

namespace flashlstm::plstm {

template <class F>
struct DagInputs {
  ConstView<F, 4> q, k;  // (B, NH, N, DQK)
  ConstView<F, 4> v;     // (B, NH, N, DV)
  ConstView<F, 3> S;     // (B, NH, E)  source, per edge
  ConstView<F, 3> T;     // (B, NH, A)  transition, per line-graph arc
  ConstView<F, 3> M;     // (B, NH, E)  mark, per edge
  ConstView<F, 3> D;     // (B, NH, N)  direct, per node
};

enum class DagForm { recurrent, levels, parallel };
std::string to_string(DagForm form);

// `operands` (parallel form): the arithmetic of its products, s Q Kᵀ and P V (core/bf16.hpp).
template <class F>
xt::xtensor<F, 4> dag_forward(const graph::Dag& dag, const DagInputs<F>& x, DagForm form, const Options& options,
                              Operands operands = Operands::exact);

template <class F>
struct DagGrad {
  xt::xtensor<F, 4> dq, dk, dv;
  xt::xtensor<F, 3> dS, dT, dM, dD;
};

// Exact gradients of every input from dh (B, NH, N, DV), through the recurrent form.
template <class F>
DagGrad<F> dag_backward(const graph::Dag& dag, const DagInputs<F>& x, ConstView<F, 4> dh, const Options& options);

// The node-to-node gating of the parallel form: G[b, head, n', n] = Σ over paths n' -> n of
// S · Π T · M (zero without a path; the diagonal is not D). (B, NH, N, N).
template <class F>
xt::xtensor<F, 4> dag_gating(const graph::Dag& dag, const DagInputs<F>& x);

}  // namespace flashlstm::plstm
