// flashlstm._core.slstm: the sLSTM and classic LSTM CPU reference on numpy arrays (float32 or
// float64), FlashRNN's layouts: Wx (B, T, 4, NH, DH), R (4, NH, DH, DH), b (4, NH, DH), states
// (NS, B, NH, DH).
#include "bindings/src/arrays.hpp"
#include "bindings/src/slstm_options.hpp"
#include "reference/slstm/slstm.hpp"

namespace flashlstm::bindings {
namespace {

py::object forward(const InputArray& Wx, const InputArray& R, const InputArray& b,
                  const std::optional<InputArray>& initial, const std::string& cell, const std::string& forget_gate,
                  bool keep_gates) {
  return dispatch_float("Wx", Wx, [&]<class T>() {
    const slstm::Inputs<T> x{view<T, 5>("Wx", Wx), view<T, 4>("R", R), view<T, 3>("b", b)};
    const auto init = optional_view<T, 4>("initial", initial);
    const auto o = slstm_options(cell, forget_gate);
    slstm::Output<T> out;
    {
      py::gil_scoped_release release;
      out = slstm::forward(x, init, o, keep_gates);
    }
    return py::make_tuple(to_numpy(std::move(out.states)), to_numpy(std::move(out.last)),
                          to_numpy(std::move(out.gates)));
  });
}

py::object backward(const InputArray& Wx, const InputArray& R, const InputArray& b, const InputArray& dh,
                   const std::optional<InputArray>& initial, const std::optional<InputArray>& dlast,
                   const std::optional<InputArray>& saved_states, const std::optional<InputArray>& saved_gates,
                   const std::string& cell, const std::string& forget_gate) {
  return dispatch_float("Wx", Wx, [&]<class T>() {
    const slstm::Inputs<T> x{view<T, 5>("Wx", Wx), view<T, 4>("R", R), view<T, 3>("b", b)};
    const auto init = optional_view<T, 4>("initial", initial);
    const slstm::OutputGrad<T> grad{view<T, 4>("dh", dh), optional_view<T, 4>("dlast", dlast)};
    const auto o = slstm_options(cell, forget_gate);
    require(saved_states.has_value() == saved_gates.has_value(), saved_states ? "saved_gates" : "saved_states",
            "is missing: the forward's states and gates go together (pass both or neither)");
    std::optional<slstm::Saved<T>> saved;
    if (saved_states)
      saved = slstm::Saved<T>{view<T, 5>("saved_states", *saved_states), view<T, 5>("saved_gates", *saved_gates)};
    slstm::InputGrad<T> g;
    {
      py::gil_scoped_release release;
      g = slstm::backward(x, init, grad, o, saved);
    }
    return py::make_tuple(to_numpy(std::move(g.dWx)), to_numpy(std::move(g.dR)), to_numpy(std::move(g.db)),
                          to_numpy(std::move(g.dinitial)));
  });
}

// The reference advances an owning state in place; here the new state is returned and the caller's
// array is left as it was.
py::object step(const InputArray& Wx_t, const InputArray& R, const InputArray& b, const InputArray& state,
               const std::string& cell, const std::string& forget_gate) {
  return dispatch_float("Wx_t", Wx_t, [&]<class T>() -> py::array {
    const auto w = view<T, 4>("Wx_t", Wx_t);
    const auto r = view<T, 4>("R", R);
    const auto bias = view<T, 3>("b", b);
    auto next = copy(view<T, 4>("state", state));
    const auto o = slstm_options(cell, forget_gate);
    {
      py::gil_scoped_release release;
      slstm::step(w, r, bias, next, o);
    }
    return to_numpy(std::move(next));
  });
}

}  // namespace

void register_slstm(py::module_& parent) {
  auto m = parent.def_submodule("slstm", "The sLSTM and LSTM CPU reference (numpy, float32/float64).");
  m.def("forward", &forward, "(states, last, gates or None); see flashlstm.slstm.", py::arg("Wx"), py::arg("R"),
        py::arg("b"), py::arg("initial") = py::none(), py::kw_only(), py::arg("cell") = "slstm",
        py::arg("forget_gate") = "sigmoid", py::arg("keep_gates") = false);
  m.def("backward", &backward, "(dWx, dR, db, dinitial or None); see flashlstm.slstm.", py::arg("Wx"), py::arg("R"),
        py::arg("b"), py::arg("dh"), py::arg("initial") = py::none(), py::arg("dlast") = py::none(), py::kw_only(),
        py::arg("saved_states") = py::none(), py::arg("saved_gates") = py::none(), py::arg("cell") = "slstm",
        py::arg("forget_gate") = "sigmoid");
  m.def("step", &step, "the state after one step; see flashlstm.slstm.", py::arg("Wx_t"), py::arg("R"), py::arg("b"),
        py::arg("state"), py::kw_only(), py::arg("cell") = "slstm", py::arg("forget_gate") = "sigmoid");
  m.def("num_states", [](const std::string& cell) { return slstm::num_states(slstm_options(cell, "sigmoid").cell); },
        py::arg("cell"));
}

}  // namespace flashlstm::bindings
