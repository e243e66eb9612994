// P-mode and D-mode gate parameterisations (modes.hpp).
#include "reference/plstm/modes.hpp"

#include "core/error.hpp"
#include "core/gates.hpp"

#include <cmath>
#include <set>

namespace flashlstm::plstm {
namespace {

template <class F, std::size_t N>
xt::xtensor<F, N> map_sigmoid(ConstView<F, N> x) {
  auto out = copy(x);
  for (auto& e : out) e = sigmoid(e);
  return out;
}

struct DagShape {
  index_t B, NH, E, A, N;
};

template <class F>
DagShape check_dag_raw(const graph::Dag& dag, ConstView<F, 3> S, ConstView<F, 3> T, ConstView<F, 3> M,
                       ConstView<F, 3> D) {
  require(!S.empty(), "S", "is null");
  index_t A = 0;
  for (index_t n = 0; n < dag.num_nodes(); ++n) A += dag.in_edges().size(n) * dag.out_edges().size(n);
  const DagShape s{S.shape(0), S.shape(1), dag.num_edges(), A, dag.num_nodes()};
  check_shape("S", S, {s.B, s.NH, s.E});
  check_shape("T", T, {s.B, s.NH, s.A});
  check_shape("M", M, {s.B, s.NH, s.E});
  check_shape("D", D, {s.B, s.NH, s.N});
  return s;
}

}  // namespace

template <class F>
DagGateTensors<F> dag_gates_p_mode(const graph::Dag& dag, ConstView<F, 3> S, ConstView<F, 3> T, ConstView<F, 3> gamma,
                                   ConstView<F, 3> M, ConstView<F, 3> D) {
  const DagShape s = check_dag_raw(dag, S, T, M, D);
  check_shape("gamma", gamma, {s.B, s.NH, s.E});
  DagGateTensors<F> g{map_sigmoid(S), zeros<F>(Shape<3>{s.B, s.NH, s.A}), map_sigmoid(M), map_sigmoid(D)};
  for (index_t bh = 0; bh < s.B * s.NH; ++bh) {
    const F* raw = T.data() + bh * s.A;
    F* out = g.T.data() + bh * s.A;
    index_t arc = 0;  // arcs of node n: incoming edge i, outgoing edge o at arc + i·out + o
    for (index_t n = 0; n < dag.num_nodes(); ++n) {
      const index_t n_in = dag.in_edges().size(n), n_out = dag.out_edges().size(n);
      for (index_t i = 0; i < n_in; ++i) {
        const index_t first = arc + i * n_out;
        F top = -std::numeric_limits<F>::infinity(), sum = 0;
        for (index_t o = 0; o < n_out; ++o) top = std::max(top, raw[first + o]);
        for (index_t o = 0; o < n_out; ++o) sum += std::exp(raw[first + o] - top);
        const F decay = sigmoid(gamma.data()[bh * s.E + dag.in_edges().begin(n)[i]]);
        for (index_t o = 0; o < n_out; ++o) out[first + o] = decay * std::exp(raw[first + o] - top) / sum;
      }
      arc += n_in * n_out;
    }
  }
  return g;
}

template <class F>
DagGateTensors<F> dag_gates_d_mode(const graph::Dag& dag, ConstView<F, 3> S, ConstView<F, 3> T, ConstView<F, 3> M,
                                   ConstView<F, 3> D) {
  const DagShape s = check_dag_raw(dag, S, T, M, D);
  const auto kept_list = graph::multitree_arcs(graph::line_graph(dag));
  std::vector<bool> kept(s.A, false);
  for (index_t a : kept_list) kept[a] = true;
  DagGateTensors<F> g{map_sigmoid(S), zeros<F>(Shape<3>{s.B, s.NH, s.A}), map_sigmoid(M), map_sigmoid(D)};
  for (index_t bh = 0; bh < s.B * s.NH; ++bh)
    for (index_t a = 0; a < s.A; ++a) g.T.data()[bh * s.A + a] = kept[a] ? std::tanh(T.data()[bh * s.A + a]) : F(0);
  return g;
}

template <class F>
GridGateTensors<F> grid_gates_p_mode(ConstView<F, 4> Sr, ConstView<F, 4> Sd, ConstView<F, 4> alpha,
                                     ConstView<F, 4> gamma, ConstView<F, 4> Ml, ConstView<F, 4> Mu, ConstView<F, 4> D) {
  require(!Sr.empty(), "Sr", "is null");
  for (const auto& [name, t] : {std::pair{"Sd", Sd}, {"alpha", alpha}, {"gamma", gamma}, {"Ml", Ml}, {"Mu", Mu},
                                {"D", D}})
    check_shape(name, t, Sr.shape());
  GridGateTensors<F> g{map_sigmoid(Sr), map_sigmoid(Sd), zeros<F>(Sr.shape()), zeros<F>(Sr.shape()),
                       zeros<F>(Sr.shape()), zeros<F>(Sr.shape()), map_sigmoid(Ml), map_sigmoid(Mu), map_sigmoid(D)};
  for (index_t i = 0; i < Sr.size(); ++i) {
    const F a = sigmoid(alpha.data()[i]), c = sigmoid(gamma.data()[i]);
    g.Trl.data()[i] = g.Tru.data()[i] = c * a;               // into the right edge
    g.Tdu.data()[i] = g.Tdl.data()[i] = c * sigmoid(-alpha.data()[i]);  // into the down edge: γ (1 - α)
  }
  return g;
}

template <class F>
GridGateTensors<F> grid_gates_d_mode(ConstView<F, 4> Sr, ConstView<F, 4> Sd, ConstView<F, 4> Trl, ConstView<F, 4> Tru,
                                     ConstView<F, 4> Tdu, ConstView<F, 4> Ml, ConstView<F, 4> Mu, ConstView<F, 4> D) {
  require(!Sr.empty(), "Sr", "is null");
  for (const auto& [name, t] : {std::pair{"Sd", Sd}, {"Trl", Trl}, {"Tru", Tru}, {"Tdu", Tdu}, {"Ml", Ml},
                                {"Mu", Mu}, {"D", D}})
    check_shape(name, t, Sr.shape());
  auto map_tanh = [](ConstView<F, 4> x) {
    auto out = copy(x);
    for (auto& e : out) e = std::tanh(e);
    return out;
  };
  return {map_sigmoid(Sr), map_sigmoid(Sd), map_tanh(Trl), map_tanh(Tru), map_tanh(Tdu),
          zeros<F>(Sr.shape()), map_sigmoid(Ml), map_sigmoid(Mu), map_sigmoid(D)};
}

template <class F>
double max_transition_column_norm(const graph::Dag& dag, ConstView<F, 3> T) {
  double worst = 0;
  const index_t A = T.shape(2);
  for (index_t bh = 0; bh < T.shape(0) * T.shape(1); ++bh) {
    index_t arc = 0;
    for (index_t n = 0; n < dag.num_nodes(); ++n) {
      const index_t n_in = dag.in_edges().size(n), n_out = dag.out_edges().size(n);
      for (index_t i = 0; i < n_in; ++i) {
        double norm = 0;
        for (index_t o = 0; o < n_out; ++o) norm += std::abs(double(T.data()[bh * A + arc + i * n_out + o]));
        worst = std::max(worst, norm);
      }
      arc += n_in * n_out;
    }
  }
  return worst;
}

#define FLASHLSTM_INSTANTIATE(F)                                                                                   \
  template DagGateTensors<F> dag_gates_p_mode(const graph::Dag&, ConstView<F, 3>, ConstView<F, 3>, ConstView<F, 3>, \
                                              ConstView<F, 3>, ConstView<F, 3>);                                   \
  template DagGateTensors<F> dag_gates_d_mode(const graph::Dag&, ConstView<F, 3>, ConstView<F, 3>, ConstView<F, 3>, \
                                              ConstView<F, 3>);                                                    \
  template GridGateTensors<F> grid_gates_p_mode(ConstView<F, 4>, ConstView<F, 4>, ConstView<F, 4>, ConstView<F, 4>, \
                                                ConstView<F, 4>, ConstView<F, 4>, ConstView<F, 4>);                \
  template GridGateTensors<F> grid_gates_d_mode(ConstView<F, 4>, ConstView<F, 4>, ConstView<F, 4>, ConstView<F, 4>, \
                                                ConstView<F, 4>, ConstView<F, 4>, ConstView<F, 4>, ConstView<F, 4>); \
  template double max_transition_column_norm(const graph::Dag&, ConstView<F, 3>);
FLASHLSTM_INSTANTIATE(float)
FLASHLSTM_INSTANTIATE(double)
#undef FLASHLSTM_INSTANTIATE

}  // namespace flashlstm::plstm
