// pLSTM on 2-D grids (docs/plstm.md), scalar gates. Node (x, y) has incoming edges from the left
// (x-1, y) and from the top (x, y-1), outgoing edges to the right and down, so two states:
//
//   C^r_{x,y} = T^rl C^r_{x-1,y} + T^ru C^d_{x,y-1} + S^r k v^T      (edge to the right)
//   C^d_{x,y} = T^du C^d_{x,y-1} + T^dl C^r_{x-1,y} + S^d k v^T      (edge downwards)
//   h_{x,y}   = s q^T (M^l C^r_{x-1,y} + M^u C^d_{x,y-1}) + s D (q·k) v
//
// Forms: recurrent (anti-diagonal wavefront: the nodes of one anti-diagonal are independent),
// chunkwise (square chunks, see grid.cpp), parallel (one N x N gating matrix over all nodes,
// N = X·Y; quadratic memory) and maps (the CUDA kernels' form: the gating a block of two chunks at a
// time, as products of the chunks' border maps; see grid.cpp). Four orientations put the sources in each corner: the
// same computation on flipped inputs; `grid_forward_oriented` sums them.
//
// Layout: q, k (B, NH, X, Y, DQK); v, h (B, NH, X, Y, DV); each gate (B, NH, X, Y). With
// orientations, each gate has a leading axis of 4: (4, B, NH, X, Y); orientation o flips x when
// o & 1 and y when o & 2.
#pragma once

#include "reference/plstm/plstm.hpp"

namespace flashlstm::plstm {

template <class F>
struct GridGates {
  ConstView<F, 4> Sr, Sd;            // sources into the right / down edge
  ConstView<F, 4> Trl, Tru, Tdu, Tdl;  // left-in -> right, top-in -> right, top-in -> down, left-in -> down
  ConstView<F, 4> Ml, Mu;            // marks of the left-in / top-in edge
  ConstView<F, 4> D;                 // direct
};

template <class F>
struct GridInputs {
  ConstView<F, 5> q, k;  // (B, NH, X, Y, DQK)
  ConstView<F, 5> v;     // (B, NH, X, Y, DV)
  GridGates<F> gates;    // each (B, NH, X, Y)
};

struct GridForm {
  enum Kind { recurrent, chunkwise, parallel, maps } kind = recurrent;
  index_t chunk_size = 0;  // chunkwise, maps: the side of a square chunk, a power of two
  // parallel, maps: the arithmetic of their products (core/bf16.hpp); Operands::bf16 rounds the
  // operands of every product that makes or takes a node-by-node block to bfloat16 (parallel: s Q Kᵀ
  // and P V), a plain bf16 computation of the form (the baseline of the bf16 kernels)
  Operands operands = Operands::exact;
  std::string name() const;
};

template <class F>
xt::xtensor<F, 5> grid_forward(const GridInputs<F>& x, const GridForm& form, const Options& options);

template <class F>
struct GridGrad {
  xt::xtensor<F, 5> dq, dk, dv;
  xt::xtensor<F, 4> dSr, dSd, dTrl, dTru, dTdu, dTdl, dMl, dMu, dD;  // (B, NH, X, Y)
};

// Exact gradients of every input from dh (B, NH, X, Y, DV) through the chunkwise form with square
// chunks of side L (a power of two): the chunks are reversed with the border states the forward
// pass kept, each chunk's map is differentiated, and the gradient of the map is taken back through
// the 2 x 2 merges to every node's gates.
template <class F>
GridGrad<F> grid_backward(const GridInputs<F>& x, ConstView<F, 5> dh, index_t chunk_size, const Options& options);
// The same through `form`: chunkwise as above, or maps (the chunk-map form's own backward, in its
// arithmetic: form.operands).
template <class F>
GridGrad<F> grid_backward(const GridInputs<F>& x, ConstView<F, 5> dh, const GridForm& form, const Options& options);

// The grid as a DAG (node x·Y + y; each node's right edge, then its down edge, in node order) and the
// gates in DAG layout, for cross-checks against the DAG forms.
graph::Dag grid_dag(index_t X, index_t Y);
template <class F>
struct DagGates {
  xt::xtensor<F, 3> S, T, M, D;  // (B, NH, E), (B, NH, A), (B, NH, E), (B, NH, N)
};
template <class F>
DagGates<F> grid_dag_gates(const GridInputs<F>& x);

// Four orientations: gates (4, B, NH, X, Y) each; returns Σ_o flip_o(grid_forward(flip_o(inputs))).
template <class F>
struct OrientedGates {
  ConstView<F, 5> Sr, Sd, Trl, Tru, Tdu, Tdl, Ml, Mu, D;  // (4, B, NH, X, Y)
};
template <class F>
xt::xtensor<F, 5> grid_forward_oriented(ConstView<F, 5> q, ConstView<F, 5> k, ConstView<F, 5> v,
                                        const OrientedGates<F>& gates, const GridForm& form, const Options& options);

// Its exact gradients (each orientation through grid_backward with chunk size L on the flipped
// inputs): dq, dk, dv summed over the orientations, each gate's gradient per orientation.
template <class F>
struct OrientedGridGrad {
  xt::xtensor<F, 5> dq, dk, dv;
  xt::xtensor<F, 5> dSr, dSd, dTrl, dTru, dTdu, dTdl, dMl, dMu, dD;  // (4, B, NH, X, Y)
};
template <class F>
OrientedGridGrad<F> grid_backward_oriented(ConstView<F, 5> q, ConstView<F, 5> k, ConstView<F, 5> v,
                                           const OrientedGates<F>& gates, ConstView<F, 5> dh, index_t chunk_size,
                                           const Options& options);
template <class F>
OrientedGridGrad<F> grid_backward_oriented(ConstView<F, 5> q, ConstView<F, 5> k, ConstView<F, 5> v,
                                           const OrientedGates<F>& gates, ConstView<F, 5> dh, const GridForm& form,
                                           const Options& options);

}  // namespace flashlstm::plstm
