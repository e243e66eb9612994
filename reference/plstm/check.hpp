// Checking tools for the pLSTM, part of the check library (flashlstm::check; the reference itself
// does not link it): seeded random problems on a DAG (built on graph::random_dag or any graph), a
// chain and a grid; the same problem on the DAG a chain or a grid is, for cross-checks against the
// DAG oracle; the tensors of a gradient by name; and the finite-difference check of each backward
// (docs/validation.md).
#pragma once

#include "reference/check/gradcheck.hpp"
#include "reference/check/report.hpp"
#include "reference/plstm/modes.hpp"
#include "reference/plstm/sequence.hpp"

#include <array>
#include <cstdint>
#include <vector>

namespace flashlstm::plstm {

// How a problem's gates are drawn: `raw` takes them directly (S, M, D ~ U(-1, 1), T ~ U(-0.7, 0.7),
// negative values too, so every sign path runs); `p_mode` and `d_mode` pass N(0, 1) pre-activations
// through the mode's parameterisation (modes.hpp), which bounds the states on graphs with many paths.
enum class GateMode { raw, p_mode, d_mode };
std::string to_string(GateMode mode);  // "raw", "P-mode", "D-mode"

// ---- DAG ----

struct DagShape {
  index_t B = 1, NH = 1, DQK = 8, DV = 8;
  std::string name(const graph::Dag& dag) const;  // "B2 NH2 N40 E77 DQK8 DV12"
};

template <class F>
struct DagProblem {
  xt::xtensor<F, 4> q, k;   // (B, NH, N, DQK)
  xt::xtensor<F, 4> v, dh;  // (B, NH, N, DV)
  xt::xtensor<F, 3> S, T, M, D;  // (B, NH, E), (B, NH, A), (B, NH, E), (B, NH, N)

  DagInputs<F> inputs() const { return {q, k, v, S, T, M, D}; }
  double scale() const;  // the root mean square of q, k, v, dh and the gates
  template <class To>
  DagProblem<To> cast() const;
};

// q, k, v, dh ~ N(0, 1); gates by `mode`.
DagProblem<double> random_problem(const graph::Dag& dag, const DagShape& shape, GateMode mode, std::uint64_t seed);

// dag_backward against finite differences of the recurrent form, one direction per argument (q, k,
// v, S, T, M, D), for the loss <dh, h>.
check::Report gradcheck(const graph::Dag& dag, DagProblem<double> p, std::uint64_t seed);

template <class F>
std::vector<check::Named<F>> tensors(const DagGrad<F>& grad);  // dq, dk, dv, dS, dT, dM, dD

// ---- 1-D sequences ----

struct SequenceShape {
  index_t B = 1, NH = 1, S = 1, DQK = 8, DV = 8;
  std::string name() const;  // "B2 NH2 S65 DQK8 DV12"
};

template <class F>
struct SequenceProblem {
  xt::xtensor<F, 4> q, k;        // (B, NH, S, DQK)
  xt::xtensor<F, 4> v, dh;       // (B, NH, S, DV)
  xt::xtensor<F, 3> S, T, M, D;  // (B, NH, S)

  SequenceInputs<F> inputs() const { return {q, k, v, S, T, M, D}; }
  double scale() const;
  template <class To>
  SequenceProblem<To> cast() const;
  // The same problem on the DAG `chain(S)`, with the gates in DAG layout (chain_gates).
  DagProblem<F> on_chain() const;
};

// q, k, v, dh ~ N(0, 1); raw gates ~ U(-1, 1).
SequenceProblem<double> random_problem(const SequenceShape& shape, std::uint64_t seed);

// sequence_backward with chunk size L against finite differences of the recurrent form.
check::Report gradcheck(SequenceProblem<double> p, index_t chunk_size, std::uint64_t seed);

template <class F>
std::vector<check::Named<F>> tensors(const SequenceGrad<F>& grad);  // dq, dk, dv, dS, dT, dM, dD
// A sequence gradient in the DAG layout of the chain (the gates' gradients through chain_gates), to
// compare with dag_backward on the chain.
template <class F>
DagGrad<F> on_chain(const SequenceGrad<F>& grad);

// ---- 2-D grids ----

struct GridShape {
  index_t B = 1, NH = 1, X = 1, Y = 1, DQK = 8, DV = 8;
  std::string name() const;  // "B1 NH2 5x7 DQK8 DV6"
};

template <class F>
struct GridProblem {
  xt::xtensor<F, 5> q, k;                  // (B, NH, X, Y, DQK)
  xt::xtensor<F, 5> v, dh;                 // (B, NH, X, Y, DV)
  std::array<xt::xtensor<F, 4>, 9> gates;  // Sr, Sd, Trl, Tru, Tdu, Tdl, Ml, Mu, D, each (B, NH, X, Y)

  GridInputs<F> inputs() const;
  double scale() const;
  template <class To>
  GridProblem<To> cast() const;
  // The same problem on the DAG `grid_dag(X, Y)` (node x·Y + y), with the gates in DAG layout.
  DagProblem<F> on_dag() const;
};

// q, k, v, dh ~ N(0, 1); raw gates ~ U(-bound, bound).
GridProblem<double> random_problem(const GridShape& shape, double gate_bound, std::uint64_t seed);

// The oracle on a grid: the DAG recurrent form on grid_dag, as (B, NH, X, Y, DV).
xt::xtensor<double, 5> dag_oracle(const GridProblem<double>& p);

// grid_backward in `form` (chunkwise or maps) against finite differences of the recurrent form; an
// index is the chunkwise form's chunk size.
check::Report gradcheck(GridProblem<double> p, const GridForm& form, std::uint64_t seed);
check::Report gradcheck(GridProblem<double> p, index_t chunk_size, std::uint64_t seed);

template <class F>
std::vector<check::Named<F>> tensors(const GridGrad<F>& grad);  // dq, dk, dv, dSr, ..., dD

// Four orientations: q, k, v as a grid problem's, gates (4, B, NH, X, Y) each.
struct OrientedGridProblem {
  xt::xtensor<double, 5> q, k, v;
  std::array<xt::xtensor<double, 5>, 9> gates;  // Sr, Sd, Trl, Tru, Tdu, Tdl, Ml, Mu, D

  OrientedGates<double> oriented_gates() const;
};
OrientedGridProblem random_oriented_problem(const GridShape& shape, double gate_bound, std::uint64_t seed);
// Gates by `mode` for each orientation: raw ~ U(-0.7, 0.7); P-mode and D-mode from N(0, 1)
// pre-activations through the mode's parameterisation (modes.hpp).
OrientedGridProblem random_oriented_problem(const GridShape& shape, GateMode mode, std::uint64_t seed);

// The sum over the four orientations computed independently of the grid code: for each orientation,
// the DAG recurrent form on the grid graph whose edges point along that orientation (right and down
// in the orientation's flipped coordinates), with the gates placed on its edges and arcs.
xt::xtensor<double, 5> oriented_dag_oracle(const OrientedGridProblem& p);

}  // namespace flashlstm::plstm
