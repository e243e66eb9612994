// Random pLSTM problems on DAGs, chains and grids, their DAG equivalents, named gradient tensors
// and the finite-difference checks (see check.hpp).
#include "reference/plstm/check.hpp"

#include "core/random.hpp"

namespace flashlstm::plstm {

namespace {

template <class To, class From, std::size_t N>
xt::xtensor<To, N> cast_tensor(const xt::xtensor<From, N>& x) {
  return xt::cast<To>(x);
}

}  // namespace

std::string to_string(GateMode mode) {
  switch (mode) {
    case GateMode::raw: return "raw";
    case GateMode::p_mode: return "P-mode";
    case GateMode::d_mode: return "D-mode";
  }
  return "?";
}

// ---- DAG ----

std::string DagShape::name(const graph::Dag& dag) const {
  return fmt::format("B{} NH{} N{} E{} DQK{} DV{}", B, NH, dag.num_nodes(), dag.num_edges(), DQK, DV);
}

template <class F>
double DagProblem<F>::scale() const {
  return check::rms(q, k, v, dh, S, T, M, D);
}

template <class F>
template <class To>
DagProblem<To> DagProblem<F>::cast() const {
  auto c = [](const auto& x) { return cast_tensor<To>(x); };
  return {c(q), c(k), c(v), c(dh), c(S), c(T), c(M), c(D)};
}

DagProblem<double> random_problem(const graph::Dag& dag, const DagShape& s, GateMode mode, std::uint64_t seed) {
  Rng rng(seed);
  const index_t N = dag.num_nodes(), E = dag.num_edges(), A = static_cast<index_t>(graph::line_graph(dag).arcs.size());
  DagProblem<double> p{rng.normal<double>(Shape<4>{s.B, s.NH, N, s.DQK}), rng.normal<double>(Shape<4>{s.B, s.NH, N, s.DQK}),
                       rng.normal<double>(Shape<4>{s.B, s.NH, N, s.DV}),  rng.normal<double>(Shape<4>{s.B, s.NH, N, s.DV}),
                       {}, {}, {}, {}};
  if (mode == GateMode::raw) {
    p.S = rng.uniform<double>(Shape<3>{s.B, s.NH, E}, -1, 1);
    p.T = rng.uniform<double>(Shape<3>{s.B, s.NH, A}, -0.7, 0.7);
    p.M = rng.uniform<double>(Shape<3>{s.B, s.NH, E}, -1, 1);
    p.D = rng.uniform<double>(Shape<3>{s.B, s.NH, N}, -1, 1);
    return p;
  }
  const auto S = rng.normal<double>(Shape<3>{s.B, s.NH, E}), T = rng.normal<double>(Shape<3>{s.B, s.NH, A}),
             M = rng.normal<double>(Shape<3>{s.B, s.NH, E}), D = rng.normal<double>(Shape<3>{s.B, s.NH, N});
  auto gates = mode == GateMode::p_mode
                   ? dag_gates_p_mode<double>(dag, S, T, rng.normal<double>(Shape<3>{s.B, s.NH, E}), M, D)
                   : dag_gates_d_mode<double>(dag, S, T, M, D);
  p.S = std::move(gates.S), p.T = std::move(gates.T), p.M = std::move(gates.M), p.D = std::move(gates.D);
  return p;
}

check::Report gradcheck(const graph::Dag& dag, DagProblem<double> p, std::uint64_t seed) {
  const auto g = dag_backward(dag, p.inputs(), ConstView<double, 4>(p.dh), {});
  using check::argument;
  return check::gradcheck(
      {argument("q", p.q, g.dq), argument("k", p.k, g.dk), argument("v", p.v, g.dv), argument("S", p.S, g.dS),
       argument("T", p.T, g.dT), argument("M", p.M, g.dM), argument("D", p.D, g.dD)},
      [&] { return check::dot(p.dh, dag_forward(dag, p.inputs(), DagForm::recurrent, {})); }, seed);
}

template <class F>
std::vector<check::Named<F>> tensors(const DagGrad<F>& g) {
  return {check::named("dq", g.dq), check::named("dk", g.dk), check::named("dv", g.dv), check::named("dS", g.dS),
          check::named("dT", g.dT), check::named("dM", g.dM), check::named("dD", g.dD)};
}

// ---- 1-D sequences ----

std::string SequenceShape::name() const { return fmt::format("B{} NH{} S{} DQK{} DV{}", B, NH, S, DQK, DV); }

template <class F>
double SequenceProblem<F>::scale() const {
  return check::rms(q, k, v, dh, S, T, M, D);
}

template <class F>
template <class To>
SequenceProblem<To> SequenceProblem<F>::cast() const {
  auto c = [](const auto& x) { return cast_tensor<To>(x); };
  return {c(q), c(k), c(v), c(dh), c(S), c(T), c(M), c(D)};
}

template <class F>
DagProblem<F> SequenceProblem<F>::on_chain() const {
  auto g = chain_gates(inputs());
  return {q, k, v, dh, std::move(g.S), std::move(g.T), std::move(g.M), D};
}

SequenceProblem<double> random_problem(const SequenceShape& s, std::uint64_t seed) {
  Rng rng(seed);
  auto gate = [&] { return rng.uniform<double>(Shape<3>{s.B, s.NH, s.S}, -1, 1); };
  SequenceProblem<double> p{rng.normal<double>(Shape<4>{s.B, s.NH, s.S, s.DQK}),
                            rng.normal<double>(Shape<4>{s.B, s.NH, s.S, s.DQK}),
                            rng.normal<double>(Shape<4>{s.B, s.NH, s.S, s.DV}),
                            rng.normal<double>(Shape<4>{s.B, s.NH, s.S, s.DV}),
                            {}, {}, {}, {}};
  p.S = gate(), p.T = gate(), p.M = gate(), p.D = gate();
  return p;
}

check::Report gradcheck(SequenceProblem<double> p, index_t chunk_size, std::uint64_t seed) {
  const auto g = sequence_backward(p.inputs(), ConstView<double, 4>(p.dh), chunk_size, {});
  using check::argument;
  return check::gradcheck(
      {argument("q", p.q, g.dq), argument("k", p.k, g.dk), argument("v", p.v, g.dv), argument("S", p.S, g.dS),
       argument("T", p.T, g.dT), argument("M", p.M, g.dM), argument("D", p.D, g.dD)},
      [&] { return check::dot(p.dh, sequence_forward(p.inputs(), {SequenceForm::recurrent}, {})); }, seed);
}

template <class F>
std::vector<check::Named<F>> tensors(const SequenceGrad<F>& g) {
  return {check::named("dq", g.dq), check::named("dk", g.dk), check::named("dv", g.dv), check::named("dS", g.dS),
          check::named("dT", g.dT), check::named("dM", g.dM), check::named("dD", g.dD)};
}

template <class F>
DagGrad<F> on_chain(const SequenceGrad<F>& g) {
  auto gates = chain_gates(SequenceInputs<F>{g.dq, g.dk, g.dv, g.dS, g.dT, g.dM, g.dD});
  return {g.dq, g.dk, g.dv, std::move(gates.S), std::move(gates.T), std::move(gates.M), g.dD};
}

// ---- 2-D grids ----

std::string GridShape::name() const { return fmt::format("B{} NH{} {}x{} DQK{} DV{}", B, NH, X, Y, DQK, DV); }

template <class F>
GridInputs<F> GridProblem<F>::inputs() const {
  const auto& g = gates;
  return {q, k, v, {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]}};
}

template <class F>
double GridProblem<F>::scale() const {
  const auto& g = gates;
  return check::rms(q, k, v, dh, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]);
}

template <class F>
template <class To>
GridProblem<To> GridProblem<F>::cast() const {
  GridProblem<To> out{cast_tensor<To>(q), cast_tensor<To>(k), cast_tensor<To>(v), cast_tensor<To>(dh), {}};
  for (std::size_t i = 0; i < gates.size(); ++i) out.gates[i] = cast_tensor<To>(gates[i]);
  return out;
}

template <class F>
DagProblem<F> GridProblem<F>::on_dag() const {
  const index_t B = q.shape(0), NH = q.shape(1), N = q.shape(2) * q.shape(3), DQK = q.shape(4), DV = v.shape(4);
  auto nodes = [&](const xt::xtensor<F, 5>& x, index_t D) { return copy(ConstView<F, 4>(x.data(), {B, NH, N, D})); };
  auto g = grid_dag_gates(inputs());
  return {nodes(q, DQK), nodes(k, DQK), nodes(v, DV), nodes(dh, DV), std::move(g.S), std::move(g.T), std::move(g.M),
          std::move(g.D)};
}

GridProblem<double> random_problem(const GridShape& s, double gate_bound, std::uint64_t seed) {
  Rng rng(seed);
  GridProblem<double> p{rng.normal<double>(Shape<5>{s.B, s.NH, s.X, s.Y, s.DQK}),
                        rng.normal<double>(Shape<5>{s.B, s.NH, s.X, s.Y, s.DQK}),
                        rng.normal<double>(Shape<5>{s.B, s.NH, s.X, s.Y, s.DV}),
                        rng.normal<double>(Shape<5>{s.B, s.NH, s.X, s.Y, s.DV}),
                        {}};
  for (auto& g : p.gates) g = rng.uniform<double>(Shape<4>{s.B, s.NH, s.X, s.Y}, -gate_bound, gate_bound);
  return p;
}

xt::xtensor<double, 5> dag_oracle(const GridProblem<double>& p) {
  const auto on_dag = p.on_dag();
  const auto h = dag_forward(grid_dag(p.q.shape(2), p.q.shape(3)), on_dag.inputs(), DagForm::recurrent, {});
  auto out = uninitialized<double>(shape_of(p.v));
  std::copy(h.begin(), h.end(), out.begin());
  return out;
}

check::Report gradcheck(GridProblem<double> p, index_t chunk_size, std::uint64_t seed) {
  return gradcheck(std::move(p), GridForm{GridForm::chunkwise, chunk_size}, seed);
}

check::Report gradcheck(GridProblem<double> p, const GridForm& form, std::uint64_t seed) {
  const auto g = grid_backward(p.inputs(), ConstView<double, 5>(p.dh), form, {});
  using check::argument;
  std::vector<check::Argument> arguments = {argument("q", p.q, g.dq), argument("k", p.k, g.dk),
                                            argument("v", p.v, g.dv)};
  const std::array<std::pair<const char*, const xt::xtensor<double, 4>*>, 9> dgates{
      {{"Sr", &g.dSr}, {"Sd", &g.dSd}, {"Trl", &g.dTrl}, {"Tru", &g.dTru}, {"Tdu", &g.dTdu}, {"Tdl", &g.dTdl},
       {"Ml", &g.dMl}, {"Mu", &g.dMu}, {"D", &g.dD}}};
  for (std::size_t i = 0; i < dgates.size(); ++i) arguments.push_back(argument(dgates[i].first, p.gates[i], *dgates[i].second));
  return check::gradcheck(
      arguments, [&] { return check::dot(p.dh, grid_forward(p.inputs(), {GridForm::recurrent}, {})); }, seed);
}

template <class F>
std::vector<check::Named<F>> tensors(const GridGrad<F>& g) {
  return {check::named("dq", g.dq),   check::named("dk", g.dk),   check::named("dv", g.dv),
          check::named("dSr", g.dSr), check::named("dSd", g.dSd), check::named("dTrl", g.dTrl),
          check::named("dTru", g.dTru), check::named("dTdu", g.dTdu), check::named("dTdl", g.dTdl),
          check::named("dMl", g.dMl), check::named("dMu", g.dMu), check::named("dD", g.dD)};
}

OrientedGates<double> OrientedGridProblem::oriented_gates() const {
  const auto& g = gates;
  return {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]};
}

OrientedGridProblem random_oriented_problem(const GridShape& s, double gate_bound, std::uint64_t seed) {
  Rng rng(seed);
  OrientedGridProblem p{rng.normal<double>(Shape<5>{s.B, s.NH, s.X, s.Y, s.DQK}),
                        rng.normal<double>(Shape<5>{s.B, s.NH, s.X, s.Y, s.DQK}),
                        rng.normal<double>(Shape<5>{s.B, s.NH, s.X, s.Y, s.DV}),
                        {}};
  for (auto& g : p.gates) g = rng.uniform<double>(Shape<5>{4, s.B, s.NH, s.X, s.Y}, -gate_bound, gate_bound);
  return p;
}

OrientedGridProblem random_oriented_problem(const GridShape& s, GateMode mode, std::uint64_t seed) {
  if (mode == GateMode::raw) return random_oriented_problem(s, 0.7, seed);
  OrientedGridProblem p = random_oriented_problem(s, 1.0, seed);  // q, k, v; the gates are replaced
  Rng rng(seed + 1);
  const Shape<4> shape{s.B, s.NH, s.X, s.Y};
  for (index_t o = 0; o < 4; ++o) {
    std::array<xt::xtensor<double, 4>, 8> raw;
    for (auto& x : raw) x = rng.normal<double>(shape);
    const auto g = mode == GateMode::p_mode
                       ? grid_gates_p_mode<double>(raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6])
                       : grid_gates_d_mode<double>(raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7]);
    const std::array<const xt::xtensor<double, 4>*, 9> gates{&g.Sr, &g.Sd, &g.Trl, &g.Tru, &g.Tdu,
                                                             &g.Tdl, &g.Ml, &g.Mu, &g.D};
    for (std::size_t i = 0; i < gates.size(); ++i) xt::view(p.gates[i], o) = *gates[i];
  }
  return p;
}

xt::xtensor<double, 5> oriented_dag_oracle(const OrientedGridProblem& p) {
  const index_t B = p.q.shape(0), NH = p.q.shape(1), X = p.q.shape(2), Y = p.q.shape(3), DQK = p.q.shape(4),
                DV = p.v.shape(4), N = X * Y;
  const ConstView<double, 4> q(p.q.data(), {B, NH, N, DQK}), k(p.k.data(), {B, NH, N, DQK}), v(p.v.data(), {B, NH, N, DV});
  auto expected = zeros<double>(Shape<5>{B, NH, X, Y, DV});
  for (int o = 0; o < 4; ++o) {
    // In the original coordinates the "right" edge of orientation o goes to x + sx, the "down" edge to y + sy.
    const index_t sx = (o & 1) ? -1 : 1, sy = (o & 2) ? -1 : 1;
    std::vector<graph::Edge> edges;
    std::vector<bool> horizontal;
    for (index_t x = 0; x < X; ++x)
      for (index_t y = 0; y < Y; ++y) {
        if (x + sx >= 0 && x + sx < X) edges.push_back({x * Y + y, (x + sx) * Y + y}), horizontal.push_back(true);
        if (y + sy >= 0 && y + sy < Y) edges.push_back({x * Y + y, x * Y + y + sy}), horizontal.push_back(false);
      }
    const graph::Dag dag(N, edges);
    const auto lg = graph::line_graph(dag);
    const index_t E = dag.num_edges(), A = static_cast<index_t>(lg.arcs.size());
    auto S = zeros<double>(Shape<3>{B, NH, E}), M = S, T = zeros<double>(Shape<3>{B, NH, A}),
         D = zeros<double>(Shape<3>{B, NH, N});
    // Gate `which` (Sr, Sd, Trl, Tru, Tdu, Tdl, Ml, Mu, D) of orientation o at a node.
    auto gate = [&](int which, index_t b, index_t h, index_t node) { return p.gates[which](o, b, h, node / Y, node % Y); };
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < NH; ++h) {
        for (index_t e = 0; e < E; ++e) {
          S(b, h, e) = gate(horizontal[e] ? 0 : 1, b, h, edges[e].src);
          M(b, h, e) = gate(horizontal[e] ? 6 : 7, b, h, edges[e].dst);
        }
        for (index_t a = 0; a < A; ++a) {
          const bool from_h = horizontal[lg.arcs[a].from], to_h = horizontal[lg.arcs[a].to];
          T(b, h, a) = gate(from_h ? (to_h ? 2 : 5) : (to_h ? 3 : 4), b, h, lg.arcs[a].node);
        }
        for (index_t n = 0; n < N; ++n) D(b, h, n) = gate(8, b, h, n);
      }
    const auto h = dag_forward(dag, DagInputs<double>{q, k, v, S, T, M, D}, DagForm::recurrent, {});
    std::transform(h.begin(), h.end(), expected.begin(), expected.begin(), std::plus<>());
  }
  return expected;
}

#define FLASHLSTM_INSTANTIATE(F)                                                          \
  template struct DagProblem<F>;                                                          \
  template struct SequenceProblem<F>;                                                     \
  template struct GridProblem<F>;                                                         \
  template std::vector<check::Named<F>> tensors(const DagGrad<F>&);                       \
  template std::vector<check::Named<F>> tensors(const SequenceGrad<F>&);                  \
  template std::vector<check::Named<F>> tensors(const GridGrad<F>&);                      \
  template DagGrad<F> on_chain(const SequenceGrad<F>&);
FLASHLSTM_INSTANTIATE(float)
FLASHLSTM_INSTANTIATE(double)
#undef FLASHLSTM_INSTANTIATE
template DagProblem<float> DagProblem<double>::cast<float>() const;
template DagProblem<double> DagProblem<float>::cast<double>() const;
template SequenceProblem<float> SequenceProblem<double>::cast<float>() const;
template SequenceProblem<double> SequenceProblem<float>::cast<double>() const;
template GridProblem<float> GridProblem<double>::cast<float>() const;
template GridProblem<double> GridProblem<float>::cast<double>() const;

}  // namespace flashlstm::plstm
