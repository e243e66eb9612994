// flashlstm._core.cuda.slstm: the fused CUDA sLSTM/LSTM kernels (cuda/slstm/slstm.hpp) on DLPack
// arrays, without copies, on the caller's stream. Outputs are passed in (the Python package allocates
// them in the caller's framework). Arguments are taken and checked (device, dtype, shape, layout) in
// every build, so the errors are the same and testable without CUDA; only the launch needs it.
#include "bindings/src/cuda_launch.hpp"
#include "bindings/src/dlpack.hpp"
#include "bindings/src/slstm_options.hpp"

#ifdef FLASHLSTM_HAVE_CUDA
#include "cuda/slstm/slstm.hpp"
#endif

namespace flashlstm::bindings {
namespace {

using dlpack::Array;
using dlpack::DType;
using dlpack::to_dl;

// The arrays of one call, checked against the sizes Wx gives; they stay consumed (alive) until the
// call returns.
class Call {
 public:
  Call(py::handle Wx, const std::string& cell, std::optional<std::int64_t> stream, bool sequence)
      : arrays_(stream) {
    const Array& w = take(Wx, sequence ? "Wx" : "Wx_t");
    const int rank = sequence ? 5 : 4;
    const char* names = sequence ? "(B, T, 4, NH, DH)" : "(B, 4, NH, DH)";
    require(w.tensor().ndim == rank, w.name(), "expected shape {}, got {} dimensions", names, w.tensor().ndim);
    const std::int64_t* s = w.tensor().shape;
    B = s[0], T = sequence ? s[1] : 1, NH = s[rank - 2], DH = s[rank - 1];
    NS = slstm::num_states(slstm_options(cell, "sigmoid").cell);
    device = w.device();
    if (w.dtype() == to_dl(DType::float32)) dtype = DType::float32;
    else if (w.dtype() == to_dl(DType::bfloat16)) dtype = DType::bfloat16;
    else throw Error(fmt::format("{}: expected dtype float32 or bfloat16, got {}", w.name(), dlpack::dtype_name(w.dtype())));
    w.require(sequence ? std::vector<std::int64_t>{B, T, 4, NH, DH} : std::vector<std::int64_t>{B, 4, NH, DH}, names,
              to_dl(dtype), device, false);
    Wx_ = w.data();
  }

  // An array of `shape` (named `names`), of the inputs' dtype or float32.
  void* array(py::handle object, std::string_view name, const std::vector<std::int64_t>& shape, std::string_view names,
              bool same_dtype, bool writable) {
    const Array& a = take(object, name);
    a.require(shape, names, to_dl(same_dtype ? dtype : DType::float32), device, writable);
    return a.data();
  }
  void* optional_array(const py::object& object, std::string_view name, const std::vector<std::int64_t>& shape,
                       std::string_view names, bool same_dtype, bool writable) {
    return object.is_none() ? nullptr : array(object, name, shape, names, same_dtype, writable);
  }
  std::vector<std::int64_t> state() const { return {NS, B, NH, DH}; }
  std::vector<std::int64_t> states() const { return {NS, B, T, NH, DH}; }

  std::int64_t stream() const { return arrays_.stream(); }
  const void* Wx() const { return Wx_; }

  std::int64_t B = 0, T = 0, NH = 0, DH = 0, NS = 0;
  int device = 0;
  DType dtype = DType::float32;

 private:
  const Array& take(py::handle object, std::string_view name) { return arrays_.take(object, name); }

  dlpack::CallArrays arrays_;
  const void* Wx_ = nullptr;
};

struct Weights {
  const void *R, *b;
};
Weights weights(Call& c, const py::object& R, const py::object& b) {
  return {c.array(R, "R", {4, c.NH, c.DH, c.DH}, "(4, NH, DH, DH)", true, false),
          c.array(b, "b", {4, c.NH, c.DH}, "(4, NH, DH)", true, false)};
}

#ifdef FLASHLSTM_HAVE_CUDA

namespace kernels = flashlstm::cuda::slstm;

kernels::Inputs kernel_inputs(const Call& c, const Weights& w) {
  return {c.Wx(), w.R, w.b, {c.B, c.T, c.NH, c.DH}, c.dtype};
}
#endif

void forward(const py::object& Wx, const py::object& R, const py::object& b, const py::object& initial,
             const py::object& states, const py::object& last, const py::object& gates, const std::string& cell,
             const std::string& forget_gate, std::optional<std::int64_t> stream) {
  Call c(Wx, cell, stream, true);
  [[maybe_unused]] const Weights w = weights(c, R, b);
  [[maybe_unused]] const auto o = slstm_options(cell, forget_gate);
  [[maybe_unused]] auto* init = static_cast<const float*>(c.optional_array(initial, "initial", c.state(), "(NS, B, NH, DH)", false, false));
  [[maybe_unused]] auto* st = static_cast<float*>(c.array(states, "states", c.states(), "(NS, B, T, NH, DH)", false, true));
  [[maybe_unused]] auto* la = static_cast<float*>(c.optional_array(last, "last", c.state(), "(NS, B, NH, DH)", false, true));
  [[maybe_unused]] auto* ga = static_cast<float*>(c.optional_array(gates, "gates", {c.B, c.T, 4, c.NH, c.DH}, "(B, T, 4, NH, DH)", false, true));
#ifdef FLASHLSTM_HAVE_CUDA
  run_on(c.device, [&] { kernels::forward(kernel_inputs(c, w), init, {st, la, ga}, o, kernel_stream(c.stream())); });
#else
  dlpack::no_cuda();
#endif
}

void backward(const py::object& Wx, const py::object& R, const py::object& b, const py::object& initial,
              const py::object& saved_states, const py::object& saved_gates, const py::object& dh,
              const py::object& dlast, const py::object& dWx, const py::object& dR, const py::object& db,
              const py::object& dinitial, const std::string& cell, const std::string& forget_gate,
              std::optional<std::int64_t> stream) {
  Call c(Wx, cell, stream, true);
  [[maybe_unused]] const Weights w = weights(c, R, b);
  [[maybe_unused]] const auto o = slstm_options(cell, forget_gate);
  [[maybe_unused]] auto* init = static_cast<const float*>(c.optional_array(initial, "initial", c.state(), "(NS, B, NH, DH)", false, false));
  [[maybe_unused]] auto* ss = static_cast<const float*>(c.array(saved_states, "saved_states", c.states(), "(NS, B, T, NH, DH)", false, false));
  [[maybe_unused]] auto* sg = static_cast<const float*>(c.array(saved_gates, "saved_gates", {c.B, c.T, 4, c.NH, c.DH}, "(B, T, 4, NH, DH)", false, false));
  [[maybe_unused]] auto* dhp = static_cast<const float*>(c.array(dh, "dh", {c.B, c.T, c.NH, c.DH}, "(B, T, NH, DH)", false, false));
  [[maybe_unused]] auto* dl = static_cast<const float*>(c.optional_array(dlast, "dlast", c.state(), "(NS, B, NH, DH)", false, false));
  [[maybe_unused]] void* dw = c.array(dWx, "dWx", {c.B, c.T, 4, c.NH, c.DH}, "(B, T, 4, NH, DH)", true, true);
  [[maybe_unused]] void* dr = c.array(dR, "dR", {4, c.NH, c.DH, c.DH}, "(4, NH, DH, DH)", true, true);
  [[maybe_unused]] void* dbp = c.array(db, "db", {4, c.NH, c.DH}, "(4, NH, DH)", true, true);
  [[maybe_unused]] auto* di = static_cast<float*>(c.optional_array(dinitial, "dinitial", c.state(), "(NS, B, NH, DH)", false, true));
#ifdef FLASHLSTM_HAVE_CUDA
  run_on(c.device, [&] { kernels::backward(kernel_inputs(c, w), init, {ss, sg}, {dhp, dl}, {dw, dr, dbp, di}, o, kernel_stream(c.stream())); });
#else
  dlpack::no_cuda();
#endif
}

// `state` is read and updated in place (as in the host API).
void step(const py::object& Wx_t, const py::object& R, const py::object& b, const py::object& state,
          const std::string& cell, const std::string& forget_gate, std::optional<std::int64_t> stream) {
  Call c(Wx_t, cell, stream, false);
  [[maybe_unused]] const Weights w = weights(c, R, b);
  [[maybe_unused]] const auto o = slstm_options(cell, forget_gate);
  [[maybe_unused]] auto* st = static_cast<float*>(c.array(state, "state", c.state(), "(NS, B, NH, DH)", false, true));
#ifdef FLASHLSTM_HAVE_CUDA
  run_on(c.device, [&] { kernels::step(kernel_inputs(c, w), st, o, kernel_stream(c.stream())); });
#else
  dlpack::no_cuda();
#endif
}

}  // namespace

void register_cuda_slstm(py::module_& cuda) {
  auto k = cuda.def_submodule("slstm", "The fused CUDA sLSTM/LSTM kernels; outputs are passed in, states are float32.");
  k.def("forward", &forward, py::arg("Wx"), py::arg("R"), py::arg("b"), py::arg("initial"), py::arg("states"),
        py::arg("last"), py::arg("gates"), py::kw_only(), py::arg("cell") = "slstm", py::arg("forget_gate") = "sigmoid",
        py::arg("stream") = py::none(), "Writes every state (and the final state and the pre-activations, if given).");
  k.def("backward", &backward, py::arg("Wx"), py::arg("R"), py::arg("b"), py::arg("initial"), py::arg("saved_states"),
        py::arg("saved_gates"), py::arg("dh"), py::arg("dlast"), py::arg("dWx"), py::arg("dR"), py::arg("db"),
        py::arg("dinitial"), py::kw_only(), py::arg("cell") = "slstm", py::arg("forget_gate") = "sigmoid",
        py::arg("stream") = py::none(), "Writes dWx, dR, db (and dinitial, given exactly with an initial state).");
  k.def("step", &step, py::arg("Wx_t"), py::arg("R"), py::arg("b"), py::arg("state"), py::kw_only(),
        py::arg("cell") = "slstm", py::arg("forget_gate") = "sigmoid", py::arg("stream") = py::none(),
        "One step; `state` (NS, B, NH, DH) float32 is updated in place.");
}

}  // namespace flashlstm::bindings
