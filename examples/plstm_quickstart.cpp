// The pLSTM quick start of the README: a DAG from an edge list, P-mode gates from raw
// pre-activations, the recurrent form against the parallel one, and the exact gradients. Built and
// run by ctest so that the README stays true.
#include "core/metrics.hpp"
#include "core/random.hpp"
#include "reference/plstm/modes.hpp"

#include <fmt/format.h>

int main() {
  using namespace flashlstm;
  // 0 -> 1 -> {2, 3} -> 4 -> 5. Edge i is the i-th pair; a cycle would throw flashlstm::Error.
  const graph::Dag dag(6, {{0, 1}, {1, 2}, {1, 3}, {2, 4}, {3, 4}, {4, 5}});
  const index_t B = 1, NH = 2, DQK = 8, DV = 8, N = dag.num_nodes(), E = dag.num_edges();
  const auto A = static_cast<index_t>(graph::line_graph(dag).arcs.size());  // one transition per line-graph arc

  Rng rng(0);
  const auto q = rng.normal<double>(Shape<4>{B, NH, N, DQK});
  const auto k = rng.normal<double>(Shape<4>{B, NH, N, DQK});
  const auto v = rng.normal<double>(Shape<4>{B, NH, N, DV});
  // Raw pre-activations; P-mode turns them into gates with sum |T| <= 1 over each node's outgoing
  // edges, so states stay bounded however many paths the graph has.
  const auto S_raw = rng.normal<double>(Shape<3>{B, NH, E}), M_raw = rng.normal<double>(Shape<3>{B, NH, E});
  const auto T_raw = rng.normal<double>(Shape<3>{B, NH, A}), gamma_raw = rng.normal<double>(Shape<3>{B, NH, E});
  const auto D_raw = rng.normal<double>(Shape<3>{B, NH, N});
  const auto gates = plstm::dag_gates_p_mode<double>(dag, S_raw, T_raw, gamma_raw, M_raw, D_raw);

  const plstm::DagInputs<double> x{q, k, v, gates.S, gates.T, gates.M, gates.D};
  const auto h = plstm::dag_forward(dag, x, plstm::DagForm::recurrent, {});  // (B, NH, N, DV)
  const auto h_parallel = plstm::dag_forward(dag, x, plstm::DagForm::parallel, {});
  const auto dh = rng.normal<double>(Shape<4>{B, NH, N, DV});
  const auto grad = plstm::dag_backward(dag, x, ConstView<double, 4>(dh), {});  // dq, dk, dv, dS, dT, dM, dD

  fmt::print("{} nodes, {} edges, {} arcs; parallel vs recurrent: relative L2 {:.2e}; dT has {} values\n", N, E, A,
             rel_l2(h_parallel, h), grad.dT.size());
  return rel_l2(h_parallel, h) < 1e-12 ? 0 : 1;
}
