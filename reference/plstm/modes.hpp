// Gate parameterisations that keep pLSTM states bounded however many paths a graph has
// (docs/plstm.md, "Stability: P-mode and D-mode"): functions from raw pre-activations to the gates S, T, M, D.
//
// P-mode (directed propagation): at every node, the transitions leaving one incoming edge have an
// L1 norm of at most 1, so the L1 norm of a propagated state cannot grow. On a DAG,
//   T_{e'e} = σ(γ̃_{e'}) softmax_{e in E_out(n)}(T̃_{e'e});
// on a grid, the paper's T = γ [[α, α], [1-α, 1-α]] with α = σ(α̃), γ = σ(γ̃) (rows: out right,
// down; columns: in left, top).
// D-mode (diffusive distribution): the line graph is pruned to a multitree (at most one path between
// two edges) and |T| <= 1 on the kept arcs: T = tanh(T̃) there, 0 on pruned arcs. On a grid the
// pruning is closed-form: left-in -> down (T^dl) is zero, so a state turns from vertical to
// horizontal at most once.
// In both modes S, M and D are σ of their pre-activations.
#pragma once

#include "reference/plstm/grid.hpp"

namespace flashlstm::plstm {

template <class F>
struct DagGateTensors {
  xt::xtensor<F, 3> S, T, M, D;  // (B, NH, E), (B, NH, A), (B, NH, E), (B, NH, N)
};

// Raw pre-activations on a DAG: S̃, M̃ (B, NH, E); T̃ (B, NH, A); D̃ (B, NH, N); γ̃ (B, NH, E), P-mode only.
template <class F>
DagGateTensors<F> dag_gates_p_mode(const graph::Dag& dag, ConstView<F, 3> S, ConstView<F, 3> T, ConstView<F, 3> gamma,
                                   ConstView<F, 3> M, ConstView<F, 3> D);
template <class F>
DagGateTensors<F> dag_gates_d_mode(const graph::Dag& dag, ConstView<F, 3> S, ConstView<F, 3> T, ConstView<F, 3> M,
                                   ConstView<F, 3> D);

template <class F>
struct GridGateTensors {
  xt::xtensor<F, 4> Sr, Sd, Trl, Tru, Tdu, Tdl, Ml, Mu, D;  // (B, NH, X, Y)
  GridGates<F> view() const { return {Sr, Sd, Trl, Tru, Tdu, Tdl, Ml, Mu, D}; }
};

// Raw pre-activations on a grid, each (B, NH, X, Y).
template <class F>
GridGateTensors<F> grid_gates_p_mode(ConstView<F, 4> Sr, ConstView<F, 4> Sd, ConstView<F, 4> alpha,
                                     ConstView<F, 4> gamma, ConstView<F, 4> Ml, ConstView<F, 4> Mu, ConstView<F, 4> D);
template <class F>
GridGateTensors<F> grid_gates_d_mode(ConstView<F, 4> Sr, ConstView<F, 4> Sd, ConstView<F, 4> Trl, ConstView<F, 4> Tru,
                                     ConstView<F, 4> Tdu, ConstView<F, 4> Ml, ConstView<F, 4> Mu, ConstView<F, 4> D);

// max over nodes and incoming edges of Σ_{outgoing e} |T_{e'e}| (≤ 1 is the P-mode bound).
template <class F>
double max_transition_column_norm(const graph::Dag& dag, ConstView<F, 3> T);

}  // namespace flashlstm::plstm
