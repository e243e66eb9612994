// flashlstm._core.plstm: the pLSTM CPU reference on numpy arrays (float32 or float64) — the DAG
// forms, the 1-D and 2-D forms, their exact backward, and the P-mode / D-mode gate
// parameterisations (reference/plstm/*.hpp). DAG gates are passed flat (S, T, M, D, as in
// DagInputs); grid gates as one sequence of nine arrays in GridGates order (Sr, Sd, Trl, Tru, Tdu,
// Tdl, Ml, Mu, D), with a leading axis of 4 for the oriented form.
#include "bindings/src/arrays.hpp"
#include "reference/plstm/modes.hpp"
#include "reference/plstm/sequence.hpp"

#include <array>

namespace flashlstm::bindings {
namespace {

using GateArrays = std::array<InputArray, 9>;
constexpr std::array<std::string_view, 9> kGridGateNames = {"Sr", "Sd", "Trl", "Tru", "Tdu", "Tdl", "Ml", "Mu", "D"};

plstm::Options options(double qk_scale) { return {.qk_scale = qk_scale}; }

plstm::DagForm dag_form(const std::string& name) {
  return parse_choice<plstm::DagForm>(
      "form", name,
      {{"recurrent", plstm::DagForm::recurrent}, {"levels", plstm::DagForm::levels}, {"parallel", plstm::DagForm::parallel}});
}

template <class Form>
Form sequence_form(const std::string& name, index_t chunk_size) {
  return {parse_choice<typename Form::Kind>(
              "form", name, {{"recurrent", Form::recurrent}, {"parallel", Form::parallel}, {"chunkwise", Form::chunkwise}}),
          chunk_size};
}

template <class F, class Inputs>
Inputs flat_inputs(const InputArray& q, const InputArray& k, const InputArray& v, const InputArray& S,
                   const InputArray& T, const InputArray& M, const InputArray& D) {
  return {view<F, 4>("q", q), view<F, 4>("k", k), view<F, 4>("v", v), view<F, 3>("S", S),
          view<F, 3>("T", T), view<F, 3>("M", M), view<F, 3>("D", D)};
}

template <class F, std::size_t N>
std::array<ConstView<F, N>, 9> gate_views(const GateArrays& g) {
  std::array<ConstView<F, N>, 9> out;
  for (std::size_t i = 0; i < 9; ++i) out[i] = view<F, N>(kGridGateNames[i], g[i]);
  return out;
}

template <class F>
plstm::GridInputs<F> grid_inputs(const InputArray& q, const InputArray& k, const InputArray& v,
                                 const GateArrays& gates) {
  const auto g = gate_views<F, 4>(gates);
  return {view<F, 5>("q", q), view<F, 5>("k", k), view<F, 5>("v", v),
          {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]}};
}

template <class F>
py::tuple grid_gate_tuple(plstm::GridGateTensors<F>&& g) {
  return py::make_tuple(to_numpy(std::move(g.Sr)), to_numpy(std::move(g.Sd)), to_numpy(std::move(g.Trl)),
                        to_numpy(std::move(g.Tru)), to_numpy(std::move(g.Tdu)), to_numpy(std::move(g.Tdl)),
                        to_numpy(std::move(g.Ml)), to_numpy(std::move(g.Mu)), to_numpy(std::move(g.D)));
}

// (dq, dk, dv, (dSr, ..., dD)) of a GridGrad or an OrientedGridGrad.
template <class Grad>
py::tuple grid_grad_tuple(Grad&& g) {
  return py::make_tuple(to_numpy(std::move(g.dq)), to_numpy(std::move(g.dk)), to_numpy(std::move(g.dv)),
                        py::make_tuple(to_numpy(std::move(g.dSr)), to_numpy(std::move(g.dSd)), to_numpy(std::move(g.dTrl)),
                                       to_numpy(std::move(g.dTru)), to_numpy(std::move(g.dTdu)),
                                       to_numpy(std::move(g.dTdl)), to_numpy(std::move(g.dMl)),
                                       to_numpy(std::move(g.dMu)), to_numpy(std::move(g.dD))));
}

template <class F, class Grad>
py::tuple flat_grad(Grad&& g) {
  return py::make_tuple(to_numpy(std::move(g.dq)), to_numpy(std::move(g.dk)), to_numpy(std::move(g.dv)),
                        to_numpy(std::move(g.dS)), to_numpy(std::move(g.dT)), to_numpy(std::move(g.dM)),
                        to_numpy(std::move(g.dD)));
}

void register_dag(py::module_& m) {
  m.def(
      "dag_forward",
      [](const graph::Dag& dag, const InputArray& q, const InputArray& k, const InputArray& v, const InputArray& S,
         const InputArray& T, const InputArray& M, const InputArray& D, const std::string& form, double qk_scale) {
        return dispatch_float("q", q, [&]<class F>() -> py::object {
          const auto x = flat_inputs<F, plstm::DagInputs<F>>(q, k, v, S, T, M, D);
          const auto f = dag_form(form);
          return to_numpy(nogil([&] { return plstm::dag_forward(dag, x, f, options(qk_scale)); }));
        });
      },
      py::arg("dag"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("S"), py::arg("T"), py::arg("M"), py::arg("D"),
      py::kw_only(), py::arg("form") = "recurrent", py::arg("qk_scale") = 0.0);
  m.def(
      "dag_backward",
      [](const graph::Dag& dag, const InputArray& q, const InputArray& k, const InputArray& v, const InputArray& S,
         const InputArray& T, const InputArray& M, const InputArray& D, const InputArray& dh, double qk_scale) {
        return dispatch_float("q", q, [&]<class F>() {
          const auto x = flat_inputs<F, plstm::DagInputs<F>>(q, k, v, S, T, M, D);
          const auto dhv = view<F, 4>("dh", dh);
          return flat_grad<F>(nogil([&] { return plstm::dag_backward(dag, x, dhv, options(qk_scale)); }));
        });
      },
      py::arg("dag"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("S"), py::arg("T"), py::arg("M"), py::arg("D"),
      py::arg("dh"), py::kw_only(), py::arg("qk_scale") = 0.0);
  m.def(
      "dag_gating",
      [](const graph::Dag& dag, const InputArray& q, const InputArray& k, const InputArray& v, const InputArray& S,
         const InputArray& T, const InputArray& M, const InputArray& D) {
        return dispatch_float("q", q, [&]<class F>() -> py::object {
          const auto x = flat_inputs<F, plstm::DagInputs<F>>(q, k, v, S, T, M, D);
          return to_numpy(nogil([&] { return plstm::dag_gating(dag, x); }));
        });
      },
      py::arg("dag"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("S"), py::arg("T"), py::arg("M"), py::arg("D"));
  m.def(
      "dag_gates_p_mode",
      [](const graph::Dag& dag, const InputArray& S, const InputArray& T, const InputArray& gamma, const InputArray& M,
         const InputArray& D) {
        return dispatch_float("S", S, [&]<class F>() {
          const auto Sv = view<F, 3>("S", S), Tv = view<F, 3>("T", T), gv = view<F, 3>("gamma", gamma),
                     Mv = view<F, 3>("M", M), Dv = view<F, 3>("D", D);
          auto g = nogil([&] { return plstm::dag_gates_p_mode<F>(dag, Sv, Tv, gv, Mv, Dv); });
          return py::make_tuple(to_numpy(std::move(g.S)), to_numpy(std::move(g.T)), to_numpy(std::move(g.M)),
                                to_numpy(std::move(g.D)));
        });
      },
      py::arg("dag"), py::arg("S"), py::arg("T"), py::arg("gamma"), py::arg("M"), py::arg("D"));
  m.def(
      "dag_gates_d_mode",
      [](const graph::Dag& dag, const InputArray& S, const InputArray& T, const InputArray& M, const InputArray& D) {
        return dispatch_float("S", S, [&]<class F>() {
          const auto Sv = view<F, 3>("S", S), Tv = view<F, 3>("T", T), Mv = view<F, 3>("M", M), Dv = view<F, 3>("D", D);
          auto g = nogil([&] { return plstm::dag_gates_d_mode<F>(dag, Sv, Tv, Mv, Dv); });
          return py::make_tuple(to_numpy(std::move(g.S)), to_numpy(std::move(g.T)), to_numpy(std::move(g.M)),
                                to_numpy(std::move(g.D)));
        });
      },
      py::arg("dag"), py::arg("S"), py::arg("T"), py::arg("M"), py::arg("D"));
  m.def(
      "max_transition_column_norm",
      [](const graph::Dag& dag, const InputArray& T) {
        return dispatch_float("T", T, [&]<class F>() { return plstm::max_transition_column_norm<F>(dag, view<F, 3>("T", T)); });
      },
      py::arg("dag"), py::arg("T"));
}

void register_sequence(py::module_& m) {
  m.def(
      "sequence_forward",
      [](const InputArray& q, const InputArray& k, const InputArray& v, const InputArray& S, const InputArray& T,
         const InputArray& M, const InputArray& D, const std::string& form, index_t chunk_size, double qk_scale) {
        return dispatch_float("q", q, [&]<class F>() -> py::object {
          const auto x = flat_inputs<F, plstm::SequenceInputs<F>>(q, k, v, S, T, M, D);
          const auto f = sequence_form<plstm::SequenceForm>(form, chunk_size);
          return to_numpy(nogil([&] { return plstm::sequence_forward(x, f, options(qk_scale)); }));
        });
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("S"), py::arg("T"), py::arg("M"), py::arg("D"), py::kw_only(),
      py::arg("form") = "recurrent", py::arg("chunk_size") = 0, py::arg("qk_scale") = 0.0);
  m.def(
      "sequence_backward",
      [](const InputArray& q, const InputArray& k, const InputArray& v, const InputArray& S, const InputArray& T,
         const InputArray& M, const InputArray& D, const InputArray& dh, index_t chunk_size, double qk_scale) {
        return dispatch_float("q", q, [&]<class F>() {
          const auto x = flat_inputs<F, plstm::SequenceInputs<F>>(q, k, v, S, T, M, D);
          const auto dhv = view<F, 4>("dh", dh);
          return flat_grad<F>(nogil([&] { return plstm::sequence_backward(x, dhv, chunk_size, options(qk_scale)); }));
        });
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("S"), py::arg("T"), py::arg("M"), py::arg("D"), py::arg("dh"),
      py::kw_only(), py::arg("chunk_size") = 1, py::arg("qk_scale") = 0.0);
  m.def("chain", &plstm::chain, py::arg("S"), "The chain 0 -> 1 -> ... -> S-1 as a Dag (edge t: t -> t+1).");
  m.def(
      "chain_gates",
      [](const InputArray& q, const InputArray& k, const InputArray& v, const InputArray& S, const InputArray& T,
         const InputArray& M, const InputArray& D) {
        return dispatch_float("q", q, [&]<class F>() {
          auto g = plstm::chain_gates(flat_inputs<F, plstm::SequenceInputs<F>>(q, k, v, S, T, M, D));
          return py::make_tuple(to_numpy(std::move(g.S)), to_numpy(std::move(g.T)), to_numpy(std::move(g.M)));
        });
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("S"), py::arg("T"), py::arg("M"), py::arg("D"));
}

void register_grid(py::module_& m) {
  m.def(
      "grid_forward",
      [](const InputArray& q, const InputArray& k, const InputArray& v, const GateArrays& gates,
         const std::string& form, index_t chunk_size, double qk_scale) {
        return dispatch_float("q", q, [&]<class F>() -> py::object {
          const auto x = grid_inputs<F>(q, k, v, gates);
          const auto f = sequence_form<plstm::GridForm>(form, chunk_size);
          return to_numpy(nogil([&] { return plstm::grid_forward(x, f, options(qk_scale)); }));
        });
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("gates"), py::kw_only(), py::arg("form") = "recurrent",
      py::arg("chunk_size") = 0, py::arg("qk_scale") = 0.0);
  m.def(
      "grid_backward",
      [](const InputArray& q, const InputArray& k, const InputArray& v, const GateArrays& gates, const InputArray& dh,
         index_t chunk_size, double qk_scale) {
        return dispatch_float("q", q, [&]<class F>() {
          const auto x = grid_inputs<F>(q, k, v, gates);
          const auto dhv = view<F, 5>("dh", dh);
          return grid_grad_tuple(nogil([&] { return plstm::grid_backward(x, dhv, chunk_size, options(qk_scale)); }));
        });
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("gates"), py::arg("dh"), py::kw_only(), py::arg("chunk_size") = 1,
      py::arg("qk_scale") = 0.0);
  m.def(
      "grid_forward_oriented",
      [](const InputArray& q, const InputArray& k, const InputArray& v, const GateArrays& gates,
         const std::string& form, index_t chunk_size, double qk_scale) {
        return dispatch_float("q", q, [&]<class F>() -> py::object {
          const auto g = gate_views<F, 5>(gates);
          const plstm::OrientedGates<F> og{g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]};
          const auto qv = view<F, 5>("q", q), kv = view<F, 5>("k", k), vv = view<F, 5>("v", v);
          const auto f = sequence_form<plstm::GridForm>(form, chunk_size);
          return to_numpy(nogil([&] { return plstm::grid_forward_oriented(qv, kv, vv, og, f, options(qk_scale)); }));
        });
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("gates"), py::kw_only(), py::arg("form") = "recurrent",
      py::arg("chunk_size") = 0, py::arg("qk_scale") = 0.0);
  m.def(
      "grid_backward_oriented",
      [](const InputArray& q, const InputArray& k, const InputArray& v, const GateArrays& gates, const InputArray& dh,
         index_t chunk_size, double qk_scale) {
        return dispatch_float("q", q, [&]<class F>() {
          const auto g = gate_views<F, 5>(gates);
          const plstm::OrientedGates<F> og{g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]};
          const auto qv = view<F, 5>("q", q), kv = view<F, 5>("k", k), vv = view<F, 5>("v", v);
          const auto dhv = view<F, 5>("dh", dh);
          return grid_grad_tuple(
              nogil([&] { return plstm::grid_backward_oriented(qv, kv, vv, og, dhv, chunk_size, options(qk_scale)); }));
        });
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("gates"), py::arg("dh"), py::kw_only(), py::arg("chunk_size") = 1,
      py::arg("qk_scale") = 0.0);
  m.def(
      "grid_gates_p_mode",
      [](const InputArray& Sr, const InputArray& Sd, const InputArray& alpha, const InputArray& gamma,
         const InputArray& Ml, const InputArray& Mu, const InputArray& D) {
        return dispatch_float("Sr", Sr, [&]<class F>() {
          return grid_gate_tuple(plstm::grid_gates_p_mode<F>(view<F, 4>("Sr", Sr), view<F, 4>("Sd", Sd),
                                                             view<F, 4>("alpha", alpha), view<F, 4>("gamma", gamma),
                                                             view<F, 4>("Ml", Ml), view<F, 4>("Mu", Mu), view<F, 4>("D", D)));
        });
      },
      py::arg("Sr"), py::arg("Sd"), py::arg("alpha"), py::arg("gamma"), py::arg("Ml"), py::arg("Mu"), py::arg("D"));
  m.def(
      "grid_gates_d_mode",
      [](const InputArray& Sr, const InputArray& Sd, const InputArray& Trl, const InputArray& Tru,
         const InputArray& Tdu, const InputArray& Ml, const InputArray& Mu, const InputArray& D) {
        return dispatch_float("Sr", Sr, [&]<class F>() {
          return grid_gate_tuple(plstm::grid_gates_d_mode<F>(
              view<F, 4>("Sr", Sr), view<F, 4>("Sd", Sd), view<F, 4>("Trl", Trl), view<F, 4>("Tru", Tru),
              view<F, 4>("Tdu", Tdu), view<F, 4>("Ml", Ml), view<F, 4>("Mu", Mu), view<F, 4>("D", D)));
        });
      },
      py::arg("Sr"), py::arg("Sd"), py::arg("Trl"), py::arg("Tru"), py::arg("Tdu"), py::arg("Ml"), py::arg("Mu"),
      py::arg("D"));
  m.def("grid_dag", &plstm::grid_dag, py::arg("X"), py::arg("Y"),
        "The X x Y grid as a Dag: node x*Y + y; each node's right edge, then its down edge, in node order.");
  m.def(
      "grid_dag_gates",
      [](const InputArray& q, const InputArray& k, const InputArray& v, const GateArrays& gates) {
        return dispatch_float("q", q, [&]<class F>() {
          auto g = plstm::grid_dag_gates(grid_inputs<F>(q, k, v, gates));
          return py::make_tuple(to_numpy(std::move(g.S)), to_numpy(std::move(g.T)), to_numpy(std::move(g.M)),
                                to_numpy(std::move(g.D)));
        });
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("gates"));
}

}  // namespace

void register_plstm(py::module_& parent) {
  auto m = parent.def_submodule("plstm", "The pLSTM CPU reference (numpy, float32/float64).");
  register_dag(m);
  register_sequence(m);
  register_grid(m);
}

}  // namespace flashlstm::bindings
