// pLSTM: on DAGs the recurrent, level-parallel and parallel forms agree, the parallel form's G equals
// brute-force path enumeration and the backward matches finite differences; on sequences every form
// (chunk sizes 1 .. S) agrees with the DAG form on the chain; bad input is an error.
#include "core/metrics.hpp"
#include "core/random.hpp"
#include "reference/plstm/check.hpp"
#include "tests/check_catch.hpp"

#include <algorithm>
#include <functional>
#include <map>

using namespace flashlstm;
using namespace flashlstm::plstm;
using graph::Dag;
using graph::random_dag;
using graph::Edge;
using Catch::Contains;
using check::passes;

namespace {

DagProblem<double> raw_problem(const Dag& dag, index_t B, index_t NH, index_t DQK, index_t DV, std::uint64_t seed) {
  return random_problem(dag, DagShape{B, NH, DQK, DV}, GateMode::raw, seed);
}

}  // namespace

TEST_CASE("the DAG forms agree with the recurrent oracle to 1e-10", "[plstm]") {
  for (std::uint64_t seed : {1, 2, 3}) {
    const Dag dag = random_dag(40 + 10 * seed, 2.5, seed);
    for (const GateMode mode : {GateMode::raw, GateMode::p_mode, GateMode::d_mode}) {
      const auto p = random_problem(dag, DagShape{2, 2, 8, 12}, mode, seed);
      const auto oracle = dag_forward(dag, p.inputs(), DagForm::recurrent, {});
      for (const DagForm form : {DagForm::levels, DagForm::parallel}) {
        INFO(to_string(mode) << " " << to_string(form));
        CHECK(check::compare("h", dag_forward(dag, p.inputs(), form, {}), oracle, check::float64_tolerance, p.scale())
                  .passed());
      }
    }
  }
}

TEST_CASE("level-major renumbering moves the outputs with the nodes", "[plstm][graph]") {
  const Dag dag = random_dag(120, 2.5, 7);
  const graph::Renumbered r = graph::level_major(dag);
  const auto p = raw_problem(dag, 2, 2, 8, 12, 7);
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
  const DagProblem<double> moved{move4(p.q), move4(p.k), move4(p.v), move4(p.dh), move3(p.S, by_edge),
                                 move3(p.T, by_arc), move3(p.M, by_edge), move3(p.D, by_node)};

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
    const auto p = raw_problem(dag, 1, 2, 4, 4, seed);
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
  for (const GateMode mode : {GateMode::raw, GateMode::p_mode, GateMode::d_mode}) {
    INFO(to_string(mode));
    CHECK_THAT(gradcheck(dag, random_problem(dag, DagShape{2, 2, 5, 3}, mode, 8), 9), passes());
  }
}

TEST_CASE("bad pLSTM DAG input gives a clear error", "[plstm][errors]") {
  const Dag dag = random_dag(10, 2, 1);
  const auto p = raw_problem(dag, 1, 2, 4, 4, 1);
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

TEST_CASE("a DAG without edges runs every form: h is the direct term alone", "[plstm][graph]") {
  // S, M (B, NH, 0) and T (B, NH, 0) are zero-size arrays, valid inputs (an empty xtensor has no buffer).
  const Dag dag(5, {});
  const index_t B = 2, NH = 2, N = 5, DQK = 4, DV = 3;
  for (const GateMode mode : {GateMode::raw, GateMode::p_mode, GateMode::d_mode}) {
    INFO(to_string(mode));
    const auto p = random_problem(dag, DagShape{B, NH, DQK, DV}, mode, 4);
    auto direct = zeros<double>(Shape<4>{B, NH, N, DV});  // s D (q . k) v, s = DQK^-1/2
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < NH; ++h)
        for (index_t n = 0; n < N; ++n) {
          double qk = 0;
          for (index_t i = 0; i < DQK; ++i) qk += p.q(b, h, n, i) * p.k(b, h, n, i);
          for (index_t j = 0; j < DV; ++j) direct(b, h, n, j) = p.D(b, h, n) * qk * p.v(b, h, n, j) / std::sqrt(double(DQK));
        }
    for (const DagForm form : {DagForm::recurrent, DagForm::levels, DagForm::parallel}) {
      INFO(to_string(form));
      CHECK(check::compare("h", dag_forward(dag, p.inputs(), form, {}), direct, check::float64_tolerance, p.scale())
                .passed());
    }
    CHECK(xt::amax(xt::abs(dag_gating(dag, p.inputs())))() == 0.0);
    CHECK_THAT(gradcheck(dag, p, 5), passes());
  }
}

TEST_CASE("every 1-D form equals the DAG form on the chain", "[plstm]") {
  for (index_t S : {1, 2, 7, 64, 65}) {
    const auto p = random_problem(SequenceShape{2, 2, S, 6, 5}, static_cast<std::uint64_t>(S));
    const auto on_chain = dag_forward(chain(S), p.on_chain().inputs(), DagForm::recurrent, {});
    std::vector<SequenceForm> forms{{SequenceForm::recurrent}, {SequenceForm::parallel}};
    for (index_t L : {1, 3, 8, 16}) forms.push_back({SequenceForm::chunkwise, L});
    for (const auto& form : forms) {
      INFO("S " << S << " " << form.name());
      CHECK(check::compare("h", sequence_forward(p.inputs(), form, {}), on_chain, 1e-12, p.scale()).passed());
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

TEST_CASE("2-D forms equal the DAG form on the grid graph", "[plstm][grid]") {
  for (const auto [X, Y] : {std::pair<index_t, index_t>{1, 1}, {1, 6}, {5, 7}, {8, 8}, {9, 4}}) {
    const auto p = random_problem(GridShape{2, 2, X, Y, 5, 4}, 0.7, static_cast<std::uint64_t>(X * 10 + Y));
    const auto on_dag = dag_oracle(p);
    std::vector<GridForm> forms{{GridForm::recurrent}, {GridForm::parallel}};
    for (index_t L : {1, 2, 4, 8}) forms.push_back({GridForm::chunkwise, L}), forms.push_back({GridForm::maps, L});
    for (const auto& form : forms) {
      INFO(X << "x" << Y << " " << form.name());
      CHECK(check::compare("h", grid_forward(p.inputs(), form, {}), on_dag, 1e-12, p.scale()).passed());
    }
  }
  const auto p = random_problem(GridShape{1, 1, 4, 4, 2, 2}, 0.7, 1);
  CHECK_THROWS_WITH(grid_forward(p.inputs(), {GridForm::chunkwise, 3}, {}), Contains("chunk_size: expected a power of two"));
  auto bad = p.inputs();
  const auto small = zeros<double>(Shape<4>{1, 1, 4, 3});
  bad.gates.Tdl = small;
  CHECK_THROWS_WITH(grid_forward(bad, {GridForm::recurrent}, {}), Contains("Tdl: expected shape (1, 1, 4, 4)"));
}

TEST_CASE("each orientation equals the DAG form on the grid with edges along it", "[plstm][grid]") {
  const auto p = random_oriented_problem(GridShape{1, 2, 5, 4, 3, 2}, 0.7, 77);
  const auto summed = grid_forward_oriented<double>(p.q, p.k, p.v, p.oriented_gates(), {GridForm::chunkwise, 2}, {});
  CHECK(check::compare("h", summed, oriented_dag_oracle(p), 1e-12, check::rms(p.q, p.k, p.v)).passed());
}

TEST_CASE("P-mode and D-mode gates hold their bounds on DAGs", "[plstm][modes]") {
  for (std::uint64_t seed : {1, 2}) {
    const Dag dag = random_dag(60, 3, seed);
    const auto p = raw_problem(dag, 1, 2, 2, 2, seed);
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
  const auto p = raw_problem(dag, 1, 1, 2, 2, 3);
  CHECK_THROWS_WITH(dag_gates_p_mode<double>(dag, p.S, p.T, p.D, p.M, p.D), Contains("gamma: expected shape"));
}

TEST_CASE("at criticality on a 256 x 256 grid P-mode and D-mode stay bounded, unit transitions blow up",
          "[plstm][modes]") {
  const index_t X = 256, Y = 256;
  const auto one5 = xt::xtensor<double, 5>(xt::ones<double>(std::array<std::size_t, 5>{1, 1, X, Y, 1}));
  auto raw = [&](double value) { return xt::xtensor<double, 4>(value * xt::ones<double>(std::array<std::size_t, 4>{1, 1, X, Y})); };
  // Raw values that saturate: σ(50) = 1, σ(-50) ≈ 2e-22. h(x, y) then reads the right state of
  // (x-1, y): S = 1 at every node, M^l = 1, M^u ≈ 0, D ≈ 0, q = k = v = 1, DQK = 1.
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

TEST_CASE("the 1-D chunkwise form in the kernel's order (prefix aggregates) equals the pairwise one, "
          "with transitions that are 0, negative, 1, tiny or above 1", "[plstm]") {
  for (index_t S : {1, 7, 40, 65}) {
    auto p = random_problem(SequenceShape{2, 2, S, 6, 5}, 300 + static_cast<std::uint64_t>(S));
    // Every kind of transition, at fixed places: exact zeros (the products across them vanish and
    // dT needs the products without T), negative ones (signs), ones, 1e-70 (below the division
    // threshold, not zero), and |T| > 1.
    const double special[] = {0.0, -0.9, 1.0, 1e-70, -1.6, 0.0, -1e-70, 2.0};
    for (index_t i = 0; i < static_cast<index_t>(p.T.size()); i += 3) p.T.data()[i] = special[(i / 3) % 8];
    const auto oracle = sequence_forward(p.inputs(), {SequenceForm::recurrent}, {});
    for (index_t L : {1, 3, 8, 16, 64}) {
      INFO("S " << S << " L " << L);
      const SequenceForm prefix{SequenceForm::chunkwise, L, Aggregates::prefix};
      CHECK(check::compare("h", sequence_forward(p.inputs(), prefix, {}), oracle, 1e-12, p.scale()).passed());
      const auto pairwise = sequence_backward<double>(p.inputs(), p.dh, L, {});
      const auto in_order = sequence_backward<double>(p.inputs(), p.dh, L, {}, Aggregates::prefix);
      CHECK_THAT(check::compare(in_order, pairwise, 1e-10, p.scale()), passes());
    }
  }
}

TEST_CASE("in float32 the kernel-order aggregates err no more than the pairwise ones", "[plstm]") {
  // The order a float32 kernel would run: gate scalars in double, everything else float32. Against the
  // float64 oracle, every tensor within 2 x the pairwise float32 form's error + 4 float32 ulps.
  auto p = random_problem(SequenceShape{2, 2, 130, 16, 12}, 77);
  for (index_t i = 0; i < static_cast<index_t>(p.T.size()); i += 5) p.T.data()[i] = i % 2 ? -0.95 : 0.0;
  const auto pf = p.cast<float>();
  const auto oracle = sequence_forward(p.inputs(), {SequenceForm::recurrent}, {});
  const auto oracle_grad = sequence_backward<double>(p.inputs(), p.dh, 1, {});
  for (index_t L : {16, 64}) {
    INFO("L " << L);
    const auto err = [&](const auto& a, const auto& b) { return check::error(a.data(), b.data(), b.size(), p.scale()); };
    const auto h_prefix = sequence_forward(pf.inputs(), {SequenceForm::chunkwise, L, Aggregates::prefix}, {});
    const auto h_pairwise = sequence_forward(pf.inputs(), {SequenceForm::chunkwise, L}, {});
    CHECK(err(h_prefix, oracle) <= 2 * err(h_pairwise, oracle) + 4 * 6e-8);
    const auto g_prefix = sequence_backward<float>(pf.inputs(), pf.dh, L, {}, Aggregates::prefix);
    const auto g_pairwise = sequence_backward<float>(pf.inputs(), pf.dh, L, {});
    const auto t_prefix = tensors(g_prefix), t_pairwise = tensors(g_pairwise);
    const auto t_oracle = tensors(oracle_grad);
    for (std::size_t i = 0; i < t_oracle.size(); ++i) {
      INFO(t_oracle[i].name);
      const auto e = [&](const check::Named<float>& a) {
        return check::error(a.data, t_oracle[i].data, t_oracle[i].size, p.scale());
      };
      CHECK(e(t_prefix[i]) <= 2 * e(t_pairwise[i]) + 4 * 6e-8);
    }
  }
}

TEST_CASE("the 1-D chunkwise form with bf16 operands is a plain bf16 computation", "[plstm]") {
  // Inputs already bf16, so exact operands reproduce the oracle to float32 accuracy; bf16 operands
  // round the computed ones (P, states, dH, dA, ...) and err at bf16's 2^-9 scale, never beyond it.
  auto p = random_problem(SequenceShape{1, 2, 100, 16, 12}, 91);
  for (auto* x : {&p.q, &p.k, &p.v, &p.dh}) *x = round_to_bf16(*x);
  const auto pf = p.cast<float>();
  const auto oracle = sequence_forward(p.inputs(), {SequenceForm::recurrent}, {});
  const auto oracle_backward = sequence_backward<double>(p.inputs(), p.dh, 1, {});
  const auto oracle_grad = tensors(oracle_backward);
  const auto err = [&](const float* a, const double* b, index_t n) { return check::error(a, b, n, p.scale()); };
  for (const Operands operands : {Operands::exact, Operands::bf16}) {
    INFO((operands == Operands::bf16 ? "bf16 operands" : "exact operands"));
    const SequenceForm form{SequenceForm::chunkwise, 32, Aggregates::prefix, operands};
    const auto h = sequence_forward(pf.inputs(), form, {});
    const double e = err(h.data(), oracle.data(), oracle.size());
    const auto backward = sequence_backward<float>(pf.inputs(), pf.dh, 32, {}, Aggregates::prefix, operands);
    const auto grad = tensors(backward);
    if (operands == Operands::exact) {
      CHECK(e < 1e-6);
      for (std::size_t i = 0; i < grad.size(); ++i) CHECK(err(grad[i].data, oracle_grad[i].data, grad[i].size) < 1e-6);
    } else {
      CHECK(e > 1e-4);
      CHECK(e < 1e-2);
      for (std::size_t i = 0; i < grad.size(); ++i) {
        INFO(grad[i].name);
        CHECK(err(grad[i].data, oracle_grad[i].data, grad[i].size) < 1e-2);
      }
    }
  }
}

TEST_CASE("the 2-D parallel form with bf16 operands is a plain bf16 computation", "[plstm][grid]") {
  // Inputs already bf16: exact operands reproduce the oracle; bf16 operands round P = s (q·k) G before
  // P V and err at bf16's 2^-9 scale, never beyond it.
  auto p = random_problem(GridShape{2, 2, 9, 7, 16, 12}, 0.7, 92);
  for (auto* x : {&p.q, &p.k, &p.v}) *x = round_to_bf16(*x);
  const auto oracle = dag_oracle(p);
  const auto error = [&](Operands operands) {
    const auto h = grid_forward(p.inputs(), {GridForm::parallel, 0, operands}, {});
    return check::error(h.data(), oracle.data(), static_cast<index_t>(oracle.size()), p.scale());
  };
  CHECK(error(Operands::exact) < 1e-12);
  const double e = error(Operands::bf16);
  CHECK(e > 1e-4);
  CHECK(e < 1e-2);
}

TEST_CASE("the 2-D maps form with bf16 operands is a plain bf16 computation", "[plstm][grid]") {
  // Inputs already bf16: exact operands reproduce the oracle and the chunkwise gradients; bf16
  // operands (every product that makes or takes a node-by-node block, G = Mb W and dG Sbᵀ included)
  // err at bf16's 2^-9 scale, never beyond it, on h and on every gradient.
  auto p = random_problem(GridShape{2, 2, 19, 11, 16, 12}, 0.7, 93);
  for (auto* x : {&p.q, &p.k, &p.v, &p.dh}) *x = round_to_bf16(*x);
  const auto oracle = dag_oracle(p);
  const auto chunkwise_grad = grid_backward(p.inputs(), ConstView<double, 5>(p.dh), 1, {});
  const auto oracle_grad = tensors(chunkwise_grad);
  for (const Operands operands : {Operands::exact, Operands::bf16}) {
    const GridForm form{GridForm::maps, 8, operands};
    INFO(form.name());
    const double e = check::error(grid_forward(p.inputs(), form, {}).data(), oracle.data(),
                                  static_cast<index_t>(oracle.size()), p.scale());
    const auto maps_grad = grid_backward(p.inputs(), ConstView<double, 5>(p.dh), form, {});
    const auto grad = tensors(maps_grad);
    for (std::size_t i = 0; i < grad.size(); ++i) {
      INFO(grad[i].name);
      const double eg = check::error(grad[i].data, oracle_grad[i].data, grad[i].size, p.scale());
      if (operands == Operands::exact || grad[i].name == "dD") {  // dD: s dP ∘ S, no rounded operand
        CHECK(eg < 1e-12);
      } else {
        CHECK(eg > 1e-5);
        CHECK(eg < 1e-2);
      }
    }
    if (operands == Operands::exact) {
      CHECK(e < 1e-12);
    } else {
      CHECK(e > 1e-4);
      CHECK(e < 1e-2);
    }
  }
}

TEST_CASE("the oriented maps form, its chunks cut from the top-left corner in every orientation, is exact",
          "[plstm][grid]") {
  // 5 x 13 is no whole number of chunks: flipped orientations run on the grid padded at its far ends.
  const auto p = random_oriented_problem(GridShape{1, 2, 5, 13, 3, 2}, 0.7, 78);
  const double scale = check::rms(p.q, p.k, p.v);
  const auto dh = random_oriented_problem(GridShape{1, 2, 5, 13, 3, 2}, 0.7, 79).v;
  const auto chunkwise = grid_backward_oriented<double>(p.q, p.k, p.v, p.oriented_gates(), dh, 1, {});
  for (const index_t L : {4, 8}) {
    INFO("L " << L);
    const GridForm maps{GridForm::maps, L};
    CHECK(check::compare("h", grid_forward_oriented<double>(p.q, p.k, p.v, p.oriented_gates(), maps, {}),
                         oriented_dag_oracle(p), 1e-12, scale).passed());
    const auto g = grid_backward_oriented<double>(p.q, p.k, p.v, p.oriented_gates(), dh, maps, {});
    const std::array<std::pair<const xt::xtensor<double, 5>*, const xt::xtensor<double, 5>*>, 12> pairs{
        {{&g.dq, &chunkwise.dq}, {&g.dk, &chunkwise.dk}, {&g.dv, &chunkwise.dv}, {&g.dSr, &chunkwise.dSr},
         {&g.dSd, &chunkwise.dSd}, {&g.dTrl, &chunkwise.dTrl}, {&g.dTru, &chunkwise.dTru}, {&g.dTdu, &chunkwise.dTdu},
         {&g.dTdl, &chunkwise.dTdl}, {&g.dMl, &chunkwise.dMl}, {&g.dMu, &chunkwise.dMu}, {&g.dD, &chunkwise.dD}}};
    for (const auto& [ours, expected] : pairs)
      CHECK(check::error(ours->data(), expected->data(), static_cast<index_t>(expected->size()), scale) < 1e-12);
  }
}

TEST_CASE("the 2-D maps backward matches finite differences at every chunk size", "[plstm][gradients][grid]") {
  const auto p = random_problem(GridShape{1, 2, 5, 7, 3, 2}, 0.7, 32);
  for (index_t L : {1, 2, 4, 8}) {
    INFO("L " << L);
    CHECK_THAT(gradcheck(p, GridForm{GridForm::maps, L}, static_cast<std::uint64_t>(L)), passes());
  }
  CHECK_THROWS_WITH(grid_backward(p.inputs(), ConstView<double, 5>(p.dh), GridForm{GridForm::parallel}, {}),
                    Contains("form: the backward has the chunkwise and maps forms"));
}

TEST_CASE("the 1-D chunkwise backward matches finite differences at every chunk size", "[plstm][gradients]") {
  const auto p = random_problem(SequenceShape{1, 2, 13, 4, 3}, 21);
  for (index_t L : {1, 3, 4, 8, 13}) {
    INFO("L " << L);
    CHECK_THAT(gradcheck(p, L, static_cast<std::uint64_t>(L)), passes());
  }
}

TEST_CASE("the 2-D chunkwise backward matches finite differences at every chunk size", "[plstm][gradients][grid]") {
  const auto p = random_problem(GridShape{1, 2, 5, 7, 3, 2}, 0.7, 31);
  for (index_t L : {1, 2, 4, 8}) {
    INFO("L " << L);
    CHECK_THAT(gradcheck(p, L, static_cast<std::uint64_t>(L)), passes());
  }
}
