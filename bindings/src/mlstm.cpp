// flashlstm._core.mlstm: the mLSTM CPU reference on numpy arrays (float32 or float64). Every
// sequence form goes through the reference's run-time dispatch (mlstm::forward / backward with a
// Form), so one binding serves recurrent, parallel and chunkwise; the Python package names them.
#include "bindings/src/mlstm_options.hpp"
#include "reference/mlstm/mlstm.hpp"
#include "reference/mlstm/varlen.hpp"

namespace flashlstm::bindings {
namespace {

using StateArrays = std::tuple<InputArray, InputArray, InputArray>;  // (C, n, m)

mlstm::Form form(const std::string& name, index_t chunk_size) {
  return {parse_choice<mlstm::Form::Kind>("form", name,
                                          {{"recurrent", mlstm::Form::recurrent},
                                           {"parallel", mlstm::Form::parallel},
                                           {"chunkwise", mlstm::Form::chunkwise}}),
          chunk_size};
}

template <class T>
mlstm::Inputs<T> inputs(const InputArray& q, const InputArray& k, const InputArray& v, const InputArray& igate,
                        const InputArray& fgate) {
  return {view<T, 4>("q", q), view<T, 4>("k", k), view<T, 4>("v", v), view<T, 3>("igate", igate),
          view<T, 3>("fgate", fgate)};
}

template <class T>
std::optional<mlstm::StateView<T>> state_view(std::string_view name, const std::optional<StateArrays>& s) {
  if (!s) return std::nullopt;
  return mlstm::StateView<T>(view<T, 4>(fmt::format("{}.C", name), std::get<0>(*s)),
                             view<T, 3>(fmt::format("{}.n", name), std::get<1>(*s)),
                             view<T, 2>(fmt::format("{}.m", name), std::get<2>(*s)));
}

template <class T>
py::tuple state_arrays(mlstm::State<T>&& s) {
  return py::make_tuple(to_numpy(std::move(s.C)), to_numpy(std::move(s.n)), to_numpy(std::move(s.m)));
}

py::object forward(const InputArray& q, const InputArray& k, const InputArray& v, const InputArray& igate,
                  const InputArray& fgate, const std::optional<StateArrays>& initial, const std::string& form_name,
                  index_t chunk_size, const std::string& input_gate, bool normalize, double eps,
                  const std::optional<std::vector<index_t>>& cu_seqlens) {
  return dispatch_float("q", q, [&]<class T>() {
    const auto x = inputs<T>(q, k, v, igate, fgate);
    const auto init = state_view<T>("initial", initial);
    const auto f = form(form_name, chunk_size);
    const auto o = mlstm_options(input_gate, normalize, eps);
    mlstm::Output<T> out;
    {
      py::gil_scoped_release release;
      out = cu_seqlens ? mlstm::forward_varlen(x, *cu_seqlens, init, f, o) : mlstm::forward(x, init, f, o);
    }
    return py::make_tuple(to_numpy(std::move(out.h)), state_arrays(std::move(out.last)));
  });
}

py::object backward(const InputArray& q, const InputArray& k, const InputArray& v, const InputArray& igate,
                   const InputArray& fgate, const InputArray& dh, const std::optional<StateArrays>& initial,
                   const std::optional<InputArray>& dC_last, const std::optional<InputArray>& dn_last,
                   const std::optional<InputArray>& dm_last, const std::string& form_name, index_t chunk_size,
                   const std::string& input_gate, bool normalize, double eps,
                   const std::optional<std::vector<index_t>>& cu_seqlens) {
  return dispatch_float("q", q, [&]<class T>() {
    const auto x = inputs<T>(q, k, v, igate, fgate);
    const auto init = state_view<T>("initial", initial);
    const mlstm::OutputGrad<T> grad{view<T, 4>("dh", dh), optional_view<T, 4>("dC_last", dC_last),
                                    optional_view<T, 3>("dn_last", dn_last), optional_view<T, 2>("dm_last", dm_last)};
    const auto f = form(form_name, chunk_size);
    const auto o = mlstm_options(input_gate, normalize, eps);
    mlstm::InputGrad<T> g;
    {
      py::gil_scoped_release release;
      g = cu_seqlens ? mlstm::backward_varlen(x, *cu_seqlens, init, grad, f, o) : mlstm::backward(x, init, grad, f, o);
    }
    py::object dinitial = py::none();
    if (g.dinitial) dinitial = state_arrays(std::move(*g.dinitial));
    return py::make_tuple(to_numpy(std::move(g.dq)), to_numpy(std::move(g.dk)), to_numpy(std::move(g.dv)),
                          to_numpy(std::move(g.digate)), to_numpy(std::move(g.dfgate)), dinitial);
  });
}

// The reference's step updates an owning state in place; here the state arrays are copied into one
// and the new state is returned, so the caller's arrays are left as they were.
py::object step(const InputArray& q, const InputArray& k, const InputArray& v, const InputArray& igate,
               const InputArray& fgate, const StateArrays& state, const std::string& input_gate, bool normalize,
               double eps) {
  return dispatch_float("q", q, [&]<class T>() {
    const auto s = *state_view<T>("state", state);
    mlstm::State<T> next{copy(s.C), copy(s.n), copy(s.m)};
    const auto qv = view<T, 3>("q", q), kv = view<T, 3>("k", k), vv = view<T, 3>("v", v);
    const auto iv = view<T, 2>("igate", igate), fv = view<T, 2>("fgate", fgate);
    const auto o = mlstm_options(input_gate, normalize, eps);
    xt::xtensor<T, 3> h;
    {
      py::gil_scoped_release release;
      h = mlstm::step(qv, kv, vv, iv, fv, next, o);
    }
    return py::make_tuple(to_numpy(std::move(h)), state_arrays(std::move(next)));
  });
}

}  // namespace

void register_mlstm(py::module_& parent) {
  auto m = parent.def_submodule("mlstm", "The mLSTM CPU reference (numpy, float32/float64).");
  m.def("forward", &forward, "h, (C, n, m) of one sequence form; see flashlstm.mlstm.", py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("igate"), py::arg("fgate"), py::arg("initial") = py::none(), py::kw_only(),
        py::arg("form") = "recurrent", py::arg("chunk_size") = 0, py::arg("input_gate") = "exp",
        py::arg("normalize") = true, py::arg("eps") = 1e-6, py::arg("cu_seqlens") = py::none());
  m.def("backward", &backward, "dq, dk, dv, digate, dfgate, (dC0, dn0, dm0) or None; see flashlstm.mlstm.",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("igate"), py::arg("fgate"), py::arg("dh"),
        py::arg("initial") = py::none(), py::arg("dC_last") = py::none(), py::arg("dn_last") = py::none(),
        py::arg("dm_last") = py::none(), py::kw_only(), py::arg("form") = "recurrent", py::arg("chunk_size") = 0,
        py::arg("input_gate") = "exp", py::arg("normalize") = true, py::arg("eps") = 1e-6,
        py::arg("cu_seqlens") = py::none());
  m.def("step", &step, "h, (C, n, m) after one token; see flashlstm.mlstm.", py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("igate"), py::arg("fgate"), py::arg("state"), py::kw_only(),
        py::arg("input_gate") = "exp", py::arg("normalize") = true, py::arg("eps") = 1e-6);
}

}  // namespace flashlstm::bindings
