// The pLSTM rows of `flashlstm validate`. The oracle is the DAG recurrent form in float64; every
// other form is held to it on the graph it computes on:
//   - a random DAG (40 nodes, ids scrambled so that id order is not a topological order) with P-mode
//     and with D-mode gates: the levels and parallel forms against the oracle, the DAG backward
//     against finite differences (the worst of q, k, v, S, T, M, D), float32 against float64;
//   - a chain: each 1-D form (recurrent, parallel, chunkwise L = 4 and 16) against the DAG form on the
//     chain, its backward against the DAG backward on the chain (gate gradients mapped to DAG layout
//     by chain_gates) and against finite differences;
//   - 5 x 7 and 8 x 8 grids: each 2-D form (recurrent, chunkwise L = 2 and 4, parallel) against the
//     DAG form on grid_dag, the chunkwise backward against finite differences; and the four
//     orientations against four DAG runs on flipped inputs.
// Chains and grids take raw random gates (negative ones too, so every sign path runs); the
// modes' bounds are for graphs with many paths. Inputs are float-representable, so that the float32
// rows measure the float32 arithmetic alone.
#include "apps/validate.hpp"
#include "core/finite_differences.hpp"
#include "core/metrics.hpp"
#include "reference/plstm/modes.hpp"
#include "reference/plstm/sequence.hpp"

#include <algorithm>
#include <array>
#include <numeric>
#include <random>
#include <set>

namespace flashlstm::apps {

namespace {

using namespace flashlstm::plstm;

constexpr double tolerance64 = 1e-10, tolerance32 = 1e-4, fd_tolerance = 1e-6;

// Keeps the worst of a series of errors; a NaN stays.
void keep_worst(double& worst, double e) {
  if (std::isnan(e) || e > worst) worst = e;
}

template <std::size_t N>
xt::xtensor<double, N> float_representable(xt::xtensor<double, N> t) {
  for (auto& e : t) e = static_cast<double>(static_cast<float>(e));
  return t;
}

template <std::size_t N>
xt::xtensor<float, N> to_float(const xt::xtensor<double, N>& t) {
  return xt::cast<float>(t);
}

template <std::size_t N>
xt::xtensor<double, N> normal(Rng& rng, const Shape<N>& shape) {
  return float_representable(rng.normal<double>(shape));
}

template <std::size_t N>
xt::xtensor<double, N> uniform(Rng& rng, const Shape<N>& shape, double bound) {
  return float_representable(rng.uniform<double>(shape, -bound, bound));
}

// Node v takes 1 to 3 distinct earlier nodes as sources; the ids are then scrambled.
graph::Dag random_dag(index_t n, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<index_t> id(n);
  std::iota(id.begin(), id.end(), 0);
  std::shuffle(id.begin(), id.end(), std::mt19937_64(seed));
  std::vector<graph::Edge> edges;
  for (index_t v = 1; v < n; ++v) {
    std::set<index_t> sources;
    const index_t count = std::min(v, rng.integer(1, 3));
    while (static_cast<index_t>(sources.size()) < count) sources.insert(rng.integer(0, v - 1));
    for (index_t u : sources) edges.push_back({id[u], id[v]});
  }
  return graph::Dag(n, edges);
}

// ---- DAG ----

struct DagProblem {
  xt::xtensor<double, 4> q, k, v, dh;
  DagGateTensors<double> gates;
  DagInputs<double> inputs() const { return {q, k, v, gates.S, gates.T, gates.M, gates.D}; }
};

DagProblem dag_problem(const graph::Dag& dag, index_t B, index_t NH, index_t DK, index_t DV, bool p_mode,
                       std::uint64_t seed) {
  Rng rng(seed);
  const index_t N = dag.num_nodes(), E = dag.num_edges(), A = static_cast<index_t>(graph::line_graph(dag).arcs.size());
  DagProblem p{normal(rng, Shape<4>{B, NH, N, DK}),
               normal(rng, Shape<4>{B, NH, N, DK}),
               normal(rng, Shape<4>{B, NH, N, DV}),
               normal(rng, Shape<4>{B, NH, N, DV}),
               {}};
  const auto S = normal(rng, Shape<3>{B, NH, E}), T = normal(rng, Shape<3>{B, NH, A}),
             M = normal(rng, Shape<3>{B, NH, E}), D = normal(rng, Shape<3>{B, NH, N});
  p.gates = p_mode ? dag_gates_p_mode<double>(dag, S, T, normal(rng, Shape<3>{B, NH, E}), M, D)
                   : dag_gates_d_mode<double>(dag, S, T, M, D);
  for (auto* g : {&p.gates.S, &p.gates.T, &p.gates.M, &p.gates.D}) *g = float_representable(*g);
  return p;
}

void dag_rows(std::vector<ValidationRow>& rows) {
  const index_t B = 2, NH = 2, DK = 8, DV = 12;
  const graph::Dag dag = random_dag(40, 3);
  const std::string shape = fmt::format("B{} NH{} N{} E{} DK{} DV{}", B, NH, dag.num_nodes(), dag.num_edges(), DK, DV);
  std::uint64_t seed = 300;
  for (const bool p_mode : {true, false}) {
    const std::string variant = p_mode ? "P-mode" : "D-mode";
    auto p = dag_problem(dag, B, NH, DK, DV, p_mode, seed++);
    const auto oracle = dag_forward(dag, p.inputs(), DagForm::recurrent, {});

    ValidationRow recurrent{"pLSTM", "recurrent", variant, "float64", shape};
    recurrent.tolerance = tolerance64;
    recurrent.fd_tolerance = fd_tolerance;
    const auto g = dag_backward(dag, p.inputs(), ConstView<double, 4>(p.dh), {});
    auto loss = [&] { return xt::sum(dag_forward(dag, p.inputs(), DagForm::recurrent, {}) * p.dh)(); };
    Rng dir(seed++);
    double worst = 0;
    keep_worst(worst, directional_derivative_error(p.q, g.dq, loss, dir));
    keep_worst(worst, directional_derivative_error(p.k, g.dk, loss, dir));
    keep_worst(worst, directional_derivative_error(p.v, g.dv, loss, dir));
    keep_worst(worst, directional_derivative_error(p.gates.S, g.dS, loss, dir));
    keep_worst(worst, directional_derivative_error(p.gates.T, g.dT, loss, dir));
    keep_worst(worst, directional_derivative_error(p.gates.M, g.dM, loss, dir));
    keep_worst(worst, directional_derivative_error(p.gates.D, g.dD, loss, dir));
    recurrent.fd_error = worst;
    rows.push_back(recurrent);

    for (const DagForm form : {DagForm::levels, DagForm::parallel}) {
      ValidationRow row{"pLSTM", to_string(form), variant, "float64", shape};
      row.tolerance = tolerance64;
      row.out_error = rel_l2(dag_forward(dag, p.inputs(), form, {}), oracle);
      rows.push_back(row);
    }

    const auto q = to_float(p.q), k = to_float(p.k), v = to_float(p.v);
    const auto S = to_float(p.gates.S), T = to_float(p.gates.T), M = to_float(p.gates.M), D = to_float(p.gates.D);
    ValidationRow row32{"pLSTM", "recurrent", variant, "float32", shape};
    row32.tolerance = tolerance32;
    row32.out_error = rel_l2(dag_forward(dag, DagInputs<float>{q, k, v, S, T, M, D}, DagForm::recurrent, {}), oracle);
    rows.push_back(row32);
  }
}

// ---- chain ----

void chain_rows(std::vector<ValidationRow>& rows) {
  const index_t B = 2, NH = 2, S = 65, DK = 8, DV = 12;
  Rng rng(400);
  auto q = normal(rng, Shape<4>{B, NH, S, DK}), k = normal(rng, Shape<4>{B, NH, S, DK}),
       v = normal(rng, Shape<4>{B, NH, S, DV});
  auto Sg = uniform(rng, Shape<3>{B, NH, S}, 1), Tg = uniform(rng, Shape<3>{B, NH, S}, 1),
       Mg = uniform(rng, Shape<3>{B, NH, S}, 1), Dg = uniform(rng, Shape<3>{B, NH, S}, 1);
  const auto dh = normal(rng, Shape<4>{B, NH, S, DV});
  // Made afresh where the inputs may have been perturbed: the finite differences reassign them.
  auto x = [&] { return SequenceInputs<double>{q, k, v, Sg, Tg, Mg, Dg}; };
  const graph::Dag dag = chain(S);
  const auto on_dag = chain_gates(x());
  const DagInputs<double> dag_x{q, k, v, on_dag.S, on_dag.T, on_dag.M, Dg};
  const auto oracle = dag_forward(dag, dag_x, DagForm::recurrent, {});
  const auto oracle_grad = dag_backward(dag, dag_x, ConstView<double, 4>(dh), {});
  const std::string shape = fmt::format("B{} NH{} S{} DK{} DV{}", B, NH, S, DK, DV);
  auto loss = [&] { return xt::sum(sequence_forward(x(), {SequenceForm::recurrent}, {}) * dh)(); };

  const std::vector<SequenceForm> forms = {
      {SequenceForm::recurrent}, {SequenceForm::parallel}, {SequenceForm::chunkwise, 4}, {SequenceForm::chunkwise, 16}};
  for (const auto& form : forms) {
    ValidationRow row{"pLSTM", form.name(), "raw", "float64", shape};
    row.tolerance = tolerance64;
    row.fd_tolerance = fd_tolerance;
    row.out_error = rel_l2(sequence_forward(x(), form, {}), oracle);
    // The backward's chunk size: 1 steps token by token, S is the parallel form.
    const index_t L = form.kind == SequenceForm::recurrent  ? 1
                      : form.kind == SequenceForm::parallel ? S
                                                            : form.chunk_size;
    const auto g = sequence_backward(x(), ConstView<double, 4>(dh), L, {});
    const auto g_on_dag = chain_gates(SequenceInputs<double>{q, k, v, g.dS, g.dT, g.dM, g.dD});
    double grad = 0;
    keep_worst(grad, rel_l2(g.dq, oracle_grad.dq));
    keep_worst(grad, rel_l2(g.dk, oracle_grad.dk));
    keep_worst(grad, rel_l2(g.dv, oracle_grad.dv));
    keep_worst(grad, rel_l2(g_on_dag.S, oracle_grad.dS));
    keep_worst(grad, rel_l2(g_on_dag.T, oracle_grad.dT));
    keep_worst(grad, rel_l2(g_on_dag.M, oracle_grad.dM));
    keep_worst(grad, rel_l2(g.dD, oracle_grad.dD));
    row.grad_error = grad;
    Rng dir(L);
    double fd = 0;
    keep_worst(fd, directional_derivative_error(q, g.dq, loss, dir));
    keep_worst(fd, directional_derivative_error(k, g.dk, loss, dir));
    keep_worst(fd, directional_derivative_error(v, g.dv, loss, dir));
    keep_worst(fd, directional_derivative_error(Sg, g.dS, loss, dir));
    keep_worst(fd, directional_derivative_error(Tg, g.dT, loss, dir));
    keep_worst(fd, directional_derivative_error(Mg, g.dM, loss, dir));
    keep_worst(fd, directional_derivative_error(Dg, g.dD, loss, dir));
    row.fd_error = fd;
    rows.push_back(row);
  }

  const SequenceForm form32{SequenceForm::chunkwise, 16};
  const auto q32 = to_float(q), k32 = to_float(k), v32 = to_float(v);
  const auto S32 = to_float(Sg), T32 = to_float(Tg), M32 = to_float(Mg), D32 = to_float(Dg);
  ValidationRow row32{"pLSTM", form32.name(), "raw", "float32", shape};
  row32.tolerance = tolerance32;
  row32.out_error =
      rel_l2(sequence_forward(SequenceInputs<float>{q32, k32, v32, S32, T32, M32, D32}, form32, {}), oracle);
  rows.push_back(row32);
}

// ---- grids ----

struct GridProblem {
  xt::xtensor<double, 5> q, k, v, dh;
  std::array<xt::xtensor<double, 4>, 9> gates;  // Sr, Sd, Trl, Tru, Tdu, Tdl, Ml, Mu, D
  GridInputs<double> inputs() const {
    const auto& g = gates;
    return {q, k, v, {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]}};
  }
};

// The oracle on a grid: the DAG recurrent form on grid_dag, as (B, NH, X, Y, DV).
xt::xtensor<double, 5> dag_on_grid(const GridInputs<double>& x) {
  const index_t B = x.q.shape(0), NH = x.q.shape(1), X = x.q.shape(2), Y = x.q.shape(3), DK = x.q.shape(4),
                DV = x.v.shape(4);
  const auto gates = grid_dag_gates(x);
  const auto h = dag_forward(
      grid_dag(X, Y),
      DagInputs<double>{ConstView<double, 4>(x.q.data(), {B, NH, X * Y, DK}),
                        ConstView<double, 4>(x.k.data(), {B, NH, X * Y, DK}),
                        ConstView<double, 4>(x.v.data(), {B, NH, X * Y, DV}), gates.S, gates.T, gates.M, gates.D},
      DagForm::recurrent, {});
  auto out = uninitialized<double>(Shape<5>{B, NH, X, Y, DV});
  std::copy(h.begin(), h.end(), out.begin());
  return out;
}

void grid_rows(std::vector<ValidationRow>& rows) {
  const index_t B = 1, NH = 2, DK = 8, DV = 6;
  std::uint64_t seed = 500;
  for (const auto [X, Y] : {std::pair<index_t, index_t>{5, 7}, {8, 8}}) {
    Rng rng(seed++);
    GridProblem p{normal(rng, Shape<5>{B, NH, X, Y, DK}),
                  normal(rng, Shape<5>{B, NH, X, Y, DK}),
                  normal(rng, Shape<5>{B, NH, X, Y, DV}),
                  normal(rng, Shape<5>{B, NH, X, Y, DV}),
                  {}};
    for (auto& g : p.gates) g = uniform(rng, Shape<4>{B, NH, X, Y}, 0.7);
    const auto oracle = dag_on_grid(p.inputs());
    const std::string shape = fmt::format("B{} NH{} {}x{} DK{} DV{}", B, NH, X, Y, DK, DV);
    auto loss = [&] { return xt::sum(grid_forward(p.inputs(), {GridForm::recurrent}, {}) * p.dh)(); };

    const std::vector<GridForm> forms = {
        {GridForm::recurrent}, {GridForm::chunkwise, 2}, {GridForm::chunkwise, 4}, {GridForm::parallel}};
    for (const auto& form : forms) {
      ValidationRow row{"pLSTM", form.name(), "raw", "float64", shape};
      row.tolerance = tolerance64;
      row.fd_tolerance = fd_tolerance;
      row.out_error = rel_l2(grid_forward(p.inputs(), form, {}), oracle);
      if (form.kind == GridForm::chunkwise) {
        const auto g = grid_backward(p.inputs(), ConstView<double, 5>(p.dh), form.chunk_size, {});
        const std::array<const xt::xtensor<double, 4>*, 9> dgates{&g.dSr,  &g.dSd, &g.dTrl, &g.dTru, &g.dTdu,
                                                                  &g.dTdl, &g.dMl, &g.dMu,  &g.dD};
        Rng dir(seed++);
        double fd = 0;
        keep_worst(fd, directional_derivative_error(p.q, g.dq, loss, dir));
        keep_worst(fd, directional_derivative_error(p.k, g.dk, loss, dir));
        keep_worst(fd, directional_derivative_error(p.v, g.dv, loss, dir));
        for (std::size_t i = 0; i < p.gates.size(); ++i)
          keep_worst(fd, directional_derivative_error(p.gates[i], *dgates[i], loss, dir));
        row.fd_error = fd;
      }
      rows.push_back(row);
    }

    const GridForm form32{GridForm::chunkwise, 4};
    const auto q = to_float(p.q), k = to_float(p.k), v = to_float(p.v);
    std::array<xt::xtensor<float, 4>, 9> g;
    std::transform(p.gates.begin(), p.gates.end(), g.begin(), [](const auto& t) { return to_float(t); });
    ValidationRow row32{"pLSTM", form32.name(), "raw", "float32", shape};
    row32.tolerance = tolerance32;
    row32.out_error = rel_l2(
        grid_forward(GridInputs<float>{q, k, v, {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]}}, form32, {}),
        oracle);
    rows.push_back(row32);
  }
}

// t with x (axis 2) flipped when orientation & 1 and y (axis 3) when orientation & 2.
template <class T>
T flip(T t, int orientation) {
  if (orientation & 1) t = xt::flip(t, 2);
  if (orientation & 2) t = xt::flip(t, 3);
  return t;
}

void orientation_row(std::vector<ValidationRow>& rows) {
  const index_t B = 1, NH = 2, X = 5, Y = 7, DK = 8, DV = 6;
  Rng rng(600);
  const auto q = normal(rng, Shape<5>{B, NH, X, Y, DK}), k = normal(rng, Shape<5>{B, NH, X, Y, DK}),
             v = normal(rng, Shape<5>{B, NH, X, Y, DV});
  std::array<xt::xtensor<double, 5>, 9> og;  // (4, B, NH, X, Y) each: Sr, Sd, Trl, Tru, Tdu, Tdl, Ml, Mu, D
  for (auto& g : og) g = uniform(rng, Shape<5>{4, B, NH, X, Y}, 0.7);
  const GridForm form{GridForm::chunkwise, 2};
  const auto summed = grid_forward_oriented<double>(
      q, k, v, OrientedGates<double>{og[0], og[1], og[2], og[3], og[4], og[5], og[6], og[7], og[8]}, form, {});

  xt::xtensor<double, 5> expected = zeros<double>(Shape<5>{B, NH, X, Y, DV});
  for (int o = 0; o < 4; ++o) {
    std::array<xt::xtensor<double, 4>, 9> g;
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = flip(xt::xtensor<double, 4>(xt::view(og[i], o)), o);
    const auto qo = flip(q, o), ko = flip(k, o), vo = flip(v, o);
    expected +=
        flip(dag_on_grid(GridInputs<double>{qo, ko, vo, {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]}}), o);
  }
  ValidationRow row{"pLSTM", fmt::format("oriented(L={})", form.chunk_size), "raw", "float64",
                    fmt::format("B{} NH{} {}x{} DK{} DV{} 4 orient.", B, NH, X, Y, DK, DV)};
  row.tolerance = tolerance64;
  row.out_error = rel_l2(summed, expected);
  rows.push_back(row);
}

}  // namespace

std::vector<ValidationRow> validate_plstm() {
  std::vector<ValidationRow> rows;
  dag_rows(rows);
  chain_rows(rows);
  grid_rows(rows);
  orientation_row(rows);
  return rows;
}

}  // namespace flashlstm::apps
