// pLSTM: on DAGs the recurrent, level-parallel and parallel forms agree, the parallel form's G equals
// brute-force path enumeration and the backward matches finite differences; on sequences every form
// (chunk sizes 1 .. S) agrees with the DAG form on the chain; bad input is an error.
#include "core/finite_differences.hpp"
#include "core/metrics.hpp"
#include "reference/plstm/modes.hpp"
#include "reference/plstm/sequence.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <functional>
#include <map>

using namespace flashlstm;
using namespace flashlstm::plstm;
using graph::Dag;
using graph::random_dag;
using graph::Edge;
using Catch::Contains;

namespace {


struct Problem {
  xt::xtensor<double, 4> q, k, v, dh;
  xt::xtensor<double, 3> S, T, M, D;
  DagInputs<double> inputs() const { return {q, k, v, S, T, M, D}; }
};

Problem random_problem(const Dag& dag, index_t B, index_t NH, index_t DK, index_t DV, std::uint64_t seed) {
  Rng rng(seed);
  const index_t N = dag.num_nodes(), E = dag.num_edges(), A = static_cast<index_t>(graph::line_graph(dag).arcs.size());
  return {rng.normal<double>(Shape<4>{B, NH, N, DK}),     rng.normal<double>(Shape<4>{B, NH, N, DK}),
          rng.normal<double>(Shape<4>{B, NH, N, DV}),     rng.normal<double>(Shape<4>{B, NH, N, DV}),
          rng.uniform<double>(Shape<3>{B, NH, E}, -1, 1), rng.uniform<double>(Shape<3>{B, NH, A}, -0.7, 0.7),
          rng.uniform<double>(Shape<3>{B, NH, E}, -1, 1), rng.uniform<double>(Shape<3>{B, NH, N}, -1, 1)};
}

}  // namespace

TEST_CASE("the DAG forms agree with the recurrent oracle to 1e-10", "[plstm]") {
  for (std::uint64_t seed : {1, 2, 3}) {
    const Dag dag = random_dag(40 + 10 * seed, 2.5, seed);
    const auto p = random_problem(dag, 2, 2, 8, 12, seed);
    const auto oracle = dag_forward(dag, p.inputs(), DagForm::recurrent, {});
    CHECK(rel_l2(dag_forward(dag, p.inputs(), DagForm::levels, {}), oracle) <= 1e-10);
    CHECK(rel_l2(dag_forward(dag, p.inputs(), DagForm::parallel, {}), oracle) <= 1e-10);
  }
}

TEST_CASE("level-major renumbering moves the outputs with the nodes", "[plstm][graph]") {
  const Dag dag = random_dag(120, 2.5, 7);
  const graph::Renumbered r = graph::level_major(dag);
  const auto p = random_problem(dag, 2, 2, 8, 12, 7);
  // The arcs of the renumbered line graph, by their (from, to) edges.
  std::map<std::pair<index_t, index_t>, index_t> arc_id;
  const auto new_arcs = graph::line_graph(r.dag).arcs;
  for (index_t a = 0; a < static_cast<index_t>(new_arcs.size()); ++a) arc_id[{new_arcs[a].from, new_arcs[a].to}] = a;
  const auto old_arcs = graph::line_graph(dag).arcs;
  REQUIRE(new_arcs.size() == old_arcs.size());

  // Per-node, per-edge and per-arc data moved along with their owners (the last axis of 3-D, the
  // third of 4-D tensors).
  auto move4 = [&](const xt::xtensor<double, 4>& x) {
    xt::xtensor<double, 4> y = x;
    for (index_t n = 0; n < dag.num_nodes(); ++n)
      xt::view(y, xt::all(), xt::all(), r.node_id[n], xt::all()) = xt::view(x, xt::all(), xt::all(), n, xt::all());
    return y;
  };
  auto move3 = [](const xt::xtensor<double, 3>& x, auto new_index) {
    xt::xtensor<double, 3> y = x;
    for (index_t i = 0; i < static_cast<index_t>(x.shape(2)); ++i)
      xt::view(y, xt::all(), xt::all(), new_index(i)) = xt::view(x, xt::all(), xt::all(), i);
    return y;
  };
  auto by_node = [&](index_t n) { return r.node_id[n]; };
  auto by_edge = [&](index_t e) { return r.edge_id[e]; };
  auto by_arc = [&](index_t a) { return arc_id.at({r.edge_id[old_arcs[a].from], r.edge_id[old_arcs[a].to]}); };
  const Problem moved{move4(p.q), move4(p.k), move4(p.v), move4(p.dh), move3(p.S, by_edge), move3(p.T, by_arc),
                      move3(p.M, by_edge), move3(p.D, by_node)};

  // A permutation; levels are non-decreasing in the new ids; every edge kept, with its ends renamed.
  std::vector<index_t> sorted = r.node_id;
  std::sort(sorted.begin(), sorted.end());
  for (index_t i = 0; i < dag.num_nodes(); ++i) CHECK(sorted[i] == i);
  const auto old_levels = graph::node_levels(dag), new_levels = graph::node_levels(r.dag);
  for (index_t n = 0; n < dag.num_nodes(); ++n) CHECK(new_levels[r.node_id[n]] == old_levels[n]);
  CHECK(std::is_sorted(new_levels.begin(), new_levels.end()));
  for (index_t e = 0; e < dag.num_edges(); ++e)
    CHECK(r.dag.edges()[r.edge_id[e]] == Edge{r.node_id[dag.edges()[e].src], r.node_id[dag.edges()[e].dst]});

  const auto h = dag_forward(dag, p.inputs(), DagForm::recurrent, {});
  for (DagForm form : {DagForm::recurrent, DagForm::levels, DagForm::parallel})
    CHECK(rel_l2(dag_forward(r.dag, moved.inputs(), form, {}), move4(h)) <= 1e-12);
}

TEST_CASE("the parallel form's G equals the sum over enumerated paths", "[plstm]") {
  for (std::uint64_t seed : {4, 5, 6}) {
    const Dag dag = random_dag(12, 2.5, seed);
    const auto lg = graph::line_graph(dag);
    const auto p = random_problem(dag, 1, 2, 4, 4, seed);
    const auto G = dag_gating(dag, p.inputs());
    for (index_t h = 0; h < 2; ++h) {
      // Depth-first enumeration of every path, as edge sequences.
      std::vector<std::vector<double>> brute(12, std::vector<double>(12, 0.0));
      std::function<void(index_t, index_t, double)> walk = [&](index_t source, index_t edge, double weight) {
        brute[source][dag.edges()[edge].dst] += weight * p.M(0, h, edge);
        for (index_t a = 0; a < static_cast<index_t>(lg.arcs.size()); ++a)
          if (lg.arcs[a].from == edge) walk(source, lg.arcs[a].to, weight * p.T(0, h, a));
      };
      for (index_t e = 0; e < dag.num_edges(); ++e) walk(dag.edges()[e].src, e, p.S(0, h, e));
      for (index_t a = 0; a < 12; ++a)
        for (index_t b = 0; b < 12; ++b) CHECK(G(0, h, a, b) == Approx(brute[a][b]).margin(1e-12));
    }
  }
}

TEST_CASE("the DAG backward matches finite differences to 1e-6", "[plstm][gradients]") {
  const Dag dag = random_dag(15, 2.5, 8);
  auto p = random_problem(dag, 2, 2, 5, 3, 8);
  const auto g = dag_backward(dag, p.inputs(), ConstView<double, 4>(p.dh), {});
  Rng rng(9);
  auto loss = [&] { return xt::sum(dag_forward(dag, p.inputs(), DagForm::recurrent, {}) * p.dh)(); };
  CHECK(directional_derivative_error(p.q, g.dq, loss, rng) <= 1e-6);
  CHECK(directional_derivative_error(p.k, g.dk, loss, rng) <= 1e-6);
  CHECK(directional_derivative_error(p.v, g.dv, loss, rng) <= 1e-6);
  CHECK(directional_derivative_error(p.S, g.dS, loss, rng) <= 1e-6);
  CHECK(directional_derivative_error(p.T, g.dT, loss, rng) <= 1e-6);
  CHECK(directional_derivative_error(p.M, g.dM, loss, rng) <= 1e-6);
  CHECK(directional_derivative_error(p.D, g.dD, loss, rng) <= 1e-6);
}

TEST_CASE("bad pLSTM DAG input gives a clear error", "[plstm][errors]") {
  const Dag dag = random_dag(10, 2, 1);
  const auto p = random_problem(dag, 1, 2, 4, 4, 1);
  auto x = p.inputs();
  const auto short_gate = zeros<double>(Shape<3>{1, 2, 3});
  auto bad = x;
  bad.S = short_gate;
  CHECK_THROWS_WITH(dag_forward(dag, bad, DagForm::recurrent, {}), Contains("S: expected shape (1, 2, "));
  bad = x;
  bad.T = short_gate;
  CHECK_THROWS_WITH(dag_forward(dag, bad, DagForm::parallel, {}), Contains("T: expected shape"));
  bad = x;
  bad.D = short_gate;
  CHECK_THROWS_WITH(dag_backward(dag, bad, ConstView<double, 4>(p.dh), {}), Contains("D: expected shape (1, 2, 10)"));
  const Dag other = random_dag(11, 2, 1);
  CHECK_THROWS_WITH(dag_forward(other, x, DagForm::levels, {}), Contains("q: expected N = 11 nodes"));
}

TEST_CASE("every 1-D form equals the DAG form on the chain", "[plstm]") {
  for (index_t S : {1, 2, 7, 64, 65}) {
    Rng rng(S);
    const index_t B = 2, NH = 2, DK = 6, DV = 5;
    const xt::xtensor<double, 4> q = rng.normal<double>(Shape<4>{B, NH, S, DK}), k = rng.normal<double>(Shape<4>{B, NH, S, DK}),
                                 v = rng.normal<double>(Shape<4>{B, NH, S, DV});
    const xt::xtensor<double, 3> Sg = rng.uniform<double>(Shape<3>{B, NH, S}, -1, 1),
                                 Tg = rng.uniform<double>(Shape<3>{B, NH, S}, -1, 1),
                                 Mg = rng.uniform<double>(Shape<3>{B, NH, S}, -1, 1),
                                 Dg = rng.uniform<double>(Shape<3>{B, NH, S}, -1, 1);
    const SequenceInputs<double> x{q, k, v, Sg, Tg, Mg, Dg};
    const auto gates = chain_gates(x);
    const auto on_chain = dag_forward(chain(S), DagInputs<double>{q, k, v, gates.S, gates.T, gates.M, Dg},
                                      DagForm::recurrent, {});
    std::vector<SequenceForm> forms{{SequenceForm::recurrent}, {SequenceForm::parallel}};
    for (index_t L : {1, 3, 8, 16}) forms.push_back({SequenceForm::chunkwise, L});
    for (const auto& form : forms) {
      INFO("S " << S << " " << form.name());
      CHECK(rel_l2(sequence_forward(x, form, {}), on_chain) <= 1e-12);
    }
  }
  const auto zero = zeros<double>(Shape<4>{1, 1, 4, 2});
  const auto gate = zeros<double>(Shape<3>{1, 1, 4}), bad = zeros<double>(Shape<3>{1, 1, 3});
  CHECK_THROWS_WITH(sequence_forward(SequenceInputs<double>{zero, zero, zero, gate, bad, gate, gate},
                                     {SequenceForm::parallel}, {}),
                    Contains("T: expected shape (1, 1, 4), got (1, 1, 3)"));
  CHECK_THROWS_WITH(sequence_forward(SequenceInputs<double>{zero, zero, zero, gate, gate, gate, gate},
                                     {SequenceForm::chunkwise, 0}, {}),
                    Contains("chunk_size: expected >= 1"));
}

namespace {

struct GridProblem {
  xt::xtensor<double, 5> q, k, v;
  std::array<xt::xtensor<double, 4>, 9> gates;  // Sr, Sd, Trl, Tru, Tdu, Tdl, Ml, Mu, D
  GridInputs<double> inputs() const {
    const auto& g = gates;
    return {q, k, v, {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]}};
  }
};

GridProblem random_grid(index_t B, index_t NH, index_t X, index_t Y, index_t DK, index_t DV, std::uint64_t seed) {
  Rng rng(seed);
  GridProblem p{rng.normal<double>(Shape<5>{B, NH, X, Y, DK}), rng.normal<double>(Shape<5>{B, NH, X, Y, DK}),
                rng.normal<double>(Shape<5>{B, NH, X, Y, DV}), {}};
  for (auto& g : p.gates) g = rng.uniform<double>(Shape<4>{B, NH, X, Y}, -0.7, 0.7);
  return p;
}

}  // namespace

TEST_CASE("2-D forms equal the DAG form on the grid graph", "[plstm][grid]") {
  for (const auto [X, Y] : {std::pair<index_t, index_t>{1, 1}, {1, 6}, {5, 7}, {8, 8}, {9, 4}}) {
    const auto p = random_grid(2, 2, X, Y, 5, 4, X * 10 + Y);
    const auto x = p.inputs();
    const auto gates = grid_dag_gates(x);
    const auto on_dag = dag_forward(grid_dag(X, Y),
                                    DagInputs<double>{ConstView<double, 4>(p.q.data(), {2, 2, X * Y, 5}),
                                                      ConstView<double, 4>(p.k.data(), {2, 2, X * Y, 5}),
                                                      ConstView<double, 4>(p.v.data(), {2, 2, X * Y, 4}), gates.S,
                                                      gates.T, gates.M, gates.D},
                                    DagForm::recurrent, {});
    std::vector<GridForm> forms{{GridForm::recurrent}, {GridForm::parallel}};
    for (index_t L : {1, 2, 4, 8}) forms.push_back({GridForm::chunkwise, L});
    for (const auto& form : forms) {
      INFO(X << "x" << Y << " " << form.name());
      const auto h = grid_forward(x, form, {});
      CHECK(rel_l2(h.data(), on_dag.data(), static_cast<index_t>(h.size())) <= 1e-12);
    }
  }
  const auto p = random_grid(1, 1, 4, 4, 2, 2, 1);
  CHECK_THROWS_WITH(grid_forward(p.inputs(), {GridForm::chunkwise, 3}, {}), Contains("chunk_size: expected a power of two"));
  auto bad = p.inputs();
  const auto small = zeros<double>(Shape<4>{1, 1, 4, 3});
  bad.gates.Tdl = small;
  CHECK_THROWS_WITH(grid_forward(bad, {GridForm::recurrent}, {}), Contains("Tdl: expected shape (1, 1, 4, 4)"));
}

TEST_CASE("each orientation equals the DAG form on the grid with edges along it", "[plstm][grid]") {
  const index_t B = 1, NH = 2, X = 5, Y = 4, DK = 3, DV = 2, N = X * Y;
  Rng rng(77);
  const auto q = rng.normal<double>(Shape<5>{B, NH, X, Y, DK}), k = rng.normal<double>(Shape<5>{B, NH, X, Y, DK}),
             v = rng.normal<double>(Shape<5>{B, NH, X, Y, DV});
  std::array<xt::xtensor<double, 5>, 9> og;  // Sr, Sd, Trl, Tru, Tdu, Tdl, Ml, Mu, D with orientation axis
  for (auto& g : og) g = rng.uniform<double>(Shape<5>{4, B, NH, X, Y}, -0.7, 0.7);
  const OrientedGates<double> gates{og[0], og[1], og[2], og[3], og[4], og[5], og[6], og[7], og[8]};
  const auto summed = grid_forward_oriented<double>(q, k, v, gates, {GridForm::chunkwise, 2}, {});

  xt::xtensor<double, 4> expected = zeros<double>(Shape<4>{B, NH, N, DV});
  for (int o = 0; o < 4; ++o) {
    // In original coordinates the "right" edge of orientation o goes to x + sx, the "down" edge to y + sy.
    const index_t sx = (o & 1) ? -1 : 1, sy = (o & 2) ? -1 : 1;
    std::vector<Edge> edges;
    std::vector<bool> horizontal;
    for (index_t x = 0; x < X; ++x)
      for (index_t y = 0; y < Y; ++y) {
        if (x + sx >= 0 && x + sx < X) edges.push_back({x * Y + y, (x + sx) * Y + y}), horizontal.push_back(true);
        if (y + sy >= 0 && y + sy < Y) edges.push_back({x * Y + y, x * Y + y + sy}), horizontal.push_back(false);
      }
    const Dag dag(N, edges);
    const auto lg = graph::line_graph(dag);
    const index_t E = dag.num_edges(), A = static_cast<index_t>(lg.arcs.size());
    xt::xtensor<double, 3> S = zeros<double>(Shape<3>{B, NH, E}), M = S, T = zeros<double>(Shape<3>{B, NH, A}),
                           D = zeros<double>(Shape<3>{B, NH, N});
    auto gate = [&](int which, index_t h, index_t node) { return og[which](o, 0, h, node / Y, node % Y); };
    for (index_t h = 0; h < NH; ++h) {
      for (index_t e = 0; e < E; ++e) {
        S(0, h, e) = gate(horizontal[e] ? 0 : 1, h, edges[e].src);
        M(0, h, e) = gate(horizontal[e] ? 6 : 7, h, edges[e].dst);
      }
      for (index_t a = 0; a < A; ++a) {
        const bool from_h = horizontal[lg.arcs[a].from], to_h = horizontal[lg.arcs[a].to];
        T(0, h, a) = gate(from_h ? (to_h ? 2 : 5) : (to_h ? 3 : 4), h, lg.arcs[a].node);
      }
      for (index_t n = 0; n < N; ++n) D(0, h, n) = gate(8, h, n);
    }
    expected += dag_forward(dag,
                            DagInputs<double>{ConstView<double, 4>(q.data(), {B, NH, N, DK}),
                                              ConstView<double, 4>(k.data(), {B, NH, N, DK}),
                                              ConstView<double, 4>(v.data(), {B, NH, N, DV}), S, T, M, D},
                            DagForm::recurrent, {});
  }
  CHECK(rel_l2(summed.data(), expected.data(), static_cast<index_t>(expected.size())) <= 1e-12);
}

TEST_CASE("P-mode and D-mode gates hold their bounds on DAGs", "[plstm][modes]") {
  for (std::uint64_t seed : {1, 2}) {
    const Dag dag = random_dag(60, 3, seed);
    const auto p = random_problem(dag, 1, 2, 2, 2, seed);
    Rng rng(seed);
    const auto gamma = rng.normal<double>(Shape<3>{1, 2, dag.num_edges()}, 0, 3);
    const auto T_raw = rng.normal<double>(shape_of(p.T), 0, 3);
    const auto pm = dag_gates_p_mode<double>(dag, p.S, T_raw, gamma, p.M, p.D);
    CHECK(max_transition_column_norm<double>(dag, pm.T) <= 1.0 + 1e-12);
    CHECK(xt::amin(pm.S)() > 0.0);
    CHECK(xt::amax(pm.M)() < 1.0);
    const auto dm = dag_gates_d_mode<double>(dag, p.S, T_raw, p.M, p.D);
    const auto lg = graph::line_graph(dag);
    std::vector<index_t> nonzero;
    for (index_t a = 0; a < static_cast<index_t>(lg.arcs.size()); ++a)
      if (dm.T(0, 0, a) != 0.0) nonzero.push_back(a);
    CHECK(graph::is_multitree(lg, nonzero));
    CHECK(xt::amax(xt::abs(dm.T))() <= 1.0);
  }
  const Dag dag = random_dag(10, 2, 3);
  const auto p = random_problem(dag, 1, 1, 2, 2, 3);
  CHECK_THROWS_WITH(dag_gates_p_mode<double>(dag, p.S, p.T, p.D, p.M, p.D), Contains("gamma: expected shape"));
}

TEST_CASE("at criticality on a 256 x 256 grid P-mode and D-mode stay bounded, unit transitions blow up",
          "[plstm][modes]") {
  const index_t X = 256, Y = 256;
  const auto one5 = xt::xtensor<double, 5>(xt::ones<double>(std::array<std::size_t, 5>{1, 1, X, Y, 1}));
  auto raw = [&](double value) { return xt::xtensor<double, 4>(value * xt::ones<double>(std::array<std::size_t, 4>{1, 1, X, Y})); };
  // Raw values that saturate: σ(50) = 1, σ(-50) ≈ 2e-22. h(x, y) then reads the right state of
  // (x-1, y): S = 1 at every node, M^l = 1, M^u ≈ 0, D ≈ 0, q = k = v = 1, DK = 1.
  const auto on = raw(50), off = raw(-50), half = raw(0);
  auto max_abs_h = [&](const GridGates<double>& g) {
    return xt::amax(xt::abs(grid_forward(GridInputs<double>{one5, one5, one5, g}, {GridForm::recurrent}, {})))();
  };
  const auto p_mode = grid_gates_p_mode<double>(on, on, half, on, on, off, off);  // γ = 1, α = 1/2
  const double p_max = max_abs_h(p_mode.view());
  const auto d_mode = grid_gates_d_mode<double>(on, on, on, on, on, on, off, off);  // |T| = 1 on kept arcs
  const double d_max = max_abs_h(d_mode.view());
  const auto unit = xt::xtensor<double, 4>(xt::ones<double>(std::array<std::size_t, 4>{1, 1, X, Y}));
  const auto zero = xt::xtensor<double, 4>(xt::zeros<double>(std::array<std::size_t, 4>{1, 1, X, Y}));
  const double unconstrained_max = max_abs_h({unit, unit, unit, unit, unit, unit, unit, zero, zero});
  INFO("P-mode max |h| " << p_max << ", D-mode " << d_max << ", unit transitions " << unconstrained_max);
  CHECK(p_max <= double(X + Y));           // each anti-diagonal of sources adds at most 1
  CHECK(d_max <= double(X * Y));           // at most one path from each upstream node
  CHECK(unconstrained_max > 1e100);        // binomially many paths
  CHECK(std::isfinite(p_max));
  // On a small grid, the D-mode transitions that are not zero form a multitree of the line graph.
  const index_t n = 6;
  const auto small = xt::xtensor<double, 4>(xt::ones<double>(std::array<std::size_t, 4>{1, 1, n, n}));
  const auto g = grid_gates_d_mode<double>(small, small, small, small, small, small, small, small);
  const auto one_small = xt::xtensor<double, 5>(xt::ones<double>(std::array<std::size_t, 5>{1, 1, n, n, 1}));
  const auto dag_gates = grid_dag_gates(GridInputs<double>{one_small, one_small, one_small, g.view()});
  const auto lg = graph::line_graph(grid_dag(n, n));
  std::vector<index_t> nonzero;
  for (index_t a = 0; a < static_cast<index_t>(lg.arcs.size()); ++a)
    if (dag_gates.T(0, 0, a) != 0.0) nonzero.push_back(a);
  CHECK(graph::is_multitree(lg, nonzero));
  std::vector<index_t> all(lg.arcs.size());
  std::iota(all.begin(), all.end(), 0);
  CHECK_FALSE(graph::is_multitree(lg, all));
}

TEST_CASE("the 1-D chunkwise backward matches finite differences at every chunk size", "[plstm][gradients]") {
  const index_t B = 1, NH = 2, S = 13, DK = 4, DV = 3;
  Rng rng(21);
  xt::xtensor<double, 4> q = rng.normal<double>(Shape<4>{B, NH, S, DK}), k = rng.normal<double>(Shape<4>{B, NH, S, DK}),
                         v = rng.normal<double>(Shape<4>{B, NH, S, DV});
  xt::xtensor<double, 3> Sg = rng.uniform<double>(Shape<3>{B, NH, S}, -1, 1), Tg = rng.uniform<double>(Shape<3>{B, NH, S}, -1, 1),
                         Mg = rng.uniform<double>(Shape<3>{B, NH, S}, -1, 1), Dg = rng.uniform<double>(Shape<3>{B, NH, S}, -1, 1);
  const auto dh = rng.normal<double>(Shape<4>{B, NH, S, DV});
  auto loss = [&] {
    return xt::sum(sequence_forward(SequenceInputs<double>{q, k, v, Sg, Tg, Mg, Dg}, {SequenceForm::recurrent}, {}) * dh)();
  };
  for (index_t L : {1, 3, 4, 8, 13}) {
    INFO("L " << L);
    const auto g = sequence_backward(SequenceInputs<double>{q, k, v, Sg, Tg, Mg, Dg}, ConstView<double, 4>(dh), L, {});
    Rng dir(L);
    CHECK(directional_derivative_error(q, g.dq, loss, dir) <= 1e-6);
    CHECK(directional_derivative_error(k, g.dk, loss, dir) <= 1e-6);
    CHECK(directional_derivative_error(v, g.dv, loss, dir) <= 1e-6);
    CHECK(directional_derivative_error(Sg, g.dS, loss, dir) <= 1e-6);
    CHECK(directional_derivative_error(Tg, g.dT, loss, dir) <= 1e-6);
    CHECK(directional_derivative_error(Mg, g.dM, loss, dir) <= 1e-6);
    CHECK(directional_derivative_error(Dg, g.dD, loss, dir) <= 1e-6);
  }
}

TEST_CASE("the 2-D chunkwise backward matches finite differences at every chunk size", "[plstm][gradients][grid]") {
  auto p = random_grid(1, 2, 5, 7, 3, 2, 31);
  Rng rng(32);
  const auto dh = rng.normal<double>(Shape<5>{1, 2, 5, 7, 2});
  auto loss = [&] { return xt::sum(grid_forward(p.inputs(), {GridForm::recurrent}, {}) * dh)(); };
  for (index_t L : {1, 2, 4, 8}) {
    const auto g = grid_backward(p.inputs(), ConstView<double, 5>(dh), L, {});
    Rng dir(L);
    const std::array<const xt::xtensor<double, 4>*, 9> dgates{&g.dSr, &g.dSd, &g.dTrl, &g.dTru, &g.dTdu,
                                                              &g.dTdl, &g.dMl, &g.dMu, &g.dD};
    INFO("L " << L);
    CHECK(directional_derivative_error(p.q, g.dq, loss, dir) <= 1e-6);
    CHECK(directional_derivative_error(p.k, g.dk, loss, dir) <= 1e-6);
    CHECK(directional_derivative_error(p.v, g.dv, loss, dir) <= 1e-6);
    for (std::size_t i = 0; i < 9; ++i) {
      INFO("gate " << i);
      CHECK(directional_derivative_error(p.gates[i], *dgates[i], loss, dir) <= 1e-6);
    }
  }
}
