// flashlstm._core.cuda.mlstm: the CUDA mLSTM kernels (cuda/mlstm/mlstm.hpp) on DLPack arrays —
// torch, CuPy, JAX or DeviceArray — without copies, on the caller's stream. Outputs are passed in, as
// in the host API (the Python package allocates them in the caller's framework). Arguments are taken
// and checked (device, dtype, shape, layout) in every build, so the errors are the same and testable
// without CUDA; only the launch needs it.
#include "bindings/src/cuda_launch.hpp"
#include "bindings/src/dlpack.hpp"
#include "bindings/src/mlstm_options.hpp"

#ifdef FLASHLSTM_HAVE_CUDA
#include "cuda/mlstm/mlstm.hpp"
#endif

namespace flashlstm::bindings {
namespace {

using dlpack::Array;
using dlpack::DType;
using dlpack::to_dl;
using StateObjects = std::tuple<py::object, py::object, py::object>;  // (C, n, m)

struct Pointers {
  void *C = nullptr, *n = nullptr, *m = nullptr;
};

// The arrays of one call, checked against the sizes q and v give; they stay consumed (alive) until the
// call returns.
class Call {
 public:
  Call(py::handle q, py::handle v, std::optional<std::int64_t> stream, bool sequence)
      : arrays_(stream), sequence_(sequence) {
    const Array& qa = take(q, "q");
    const Array& va = take(v, "v");
    const int rank = sequence ? 4 : 3;
    const std::string qk_names = sequence ? "(B, NH, S, DQK)" : "(B, NH, DQK)";
    require(qa.tensor().ndim == rank, "q", "expected shape {}, got {} dimensions", qk_names, qa.tensor().ndim);
    require(va.tensor().ndim == rank, "v", "expected shape {}, got {} dimensions", sequence ? "(B, NH, S, DV)" : "(B, NH, DV)",
            va.tensor().ndim);
    const std::int64_t* s = qa.tensor().shape;
    B = s[0], NH = s[1], S = sequence ? s[2] : 1, DQK = s[rank - 1], DV = va.tensor().shape[rank - 1];
    device = qa.device();
    if (qa.dtype() == to_dl(DType::float32)) dtype = DType::float32;
    else if (qa.dtype() == to_dl(DType::bfloat16)) dtype = DType::bfloat16;
    else throw Error(fmt::format("q: expected dtype float32 or bfloat16, got {}", dlpack::dtype_name(qa.dtype())));
    qa.require(tokens(DQK), qk_names, to_dl(dtype), device, false);
    va.require(tokens(DV), sequence ? "(B, NH, S, DV)" : "(B, NH, DV)", to_dl(dtype), device, false);
    q_ = qa.data(), v_ = va.data();
  }

  // A (B, NH[, S], D) array of the inputs' dtype; D_name is "DQK" or "DV".
  void* token_array(py::handle object, std::string_view name, std::int64_t D, std::string_view D_name, bool writable) {
    const Array& a = take(object, name);
    a.require(tokens(D), fmt::format("{}, {})", sequence_ ? "(B, NH, S" : "(B, NH", D_name), to_dl(dtype), device,
              writable);
    return a.data();
  }

  // A (B, NH[, S]) gate array (or gate gradient) of the gates' type: the inputs' dtype, or float32
  // with bfloat16 inputs. The first gate array taken (igate) decides which.
  void* gate_array(py::handle object, std::string_view name, bool writable) {
    const Array& a = take(object, name);
    if (!gate_type_known_) {
      float32_gates = dtype == DType::bfloat16 && a.dtype() == to_dl(DType::float32);
      gate_type_known_ = true;
    }
    a.require(gates(), sequence_ ? "(B, NH, S)" : "(B, NH)", to_dl(float32_gates ? DType::float32 : dtype), device,
              writable);
    return a.data();
  }

  // Packed sequences: the offsets (checked by the kernels' API), after which states have batch N.
  void pack(const std::optional<std::vector<std::int64_t>>& cu_seqlens) {
    if (!cu_seqlens) return;
    require(B == 1, "q", "packed sequences take B = 1 (the sequences lie along S), got shape ({}, {}, {}, {})", B, NH,
            S, DQK);
    require(!cu_seqlens->empty(), "cu_seqlens", "expected N + 1 >= 2 offsets, got 0");
    cu_seqlens_ = *cu_seqlens;
    states_ = static_cast<std::int64_t>(cu_seqlens->size()) - 1;
  }
  const std::vector<std::int64_t>& cu_seqlens() const { return cu_seqlens_; }
  bool packed() const { return states_ >= 0; }

  // A float32 state (C, n, m), or nothing: batch B, or N with packed sequences.
  std::optional<Pointers> state(const std::optional<StateObjects>& objects, std::string_view name, bool writable) {
    if (!objects) return std::nullopt;
    const auto f32 = to_dl(DType::float32);
    const std::int64_t N = batch();
    const char* b = packed() ? "N" : "B";
    Pointers p;
    p.C = take_state(std::get<0>(*objects), fmt::format("{}.C", name), {N, NH, DQK, DV},
                     fmt::format("({}, NH, DQK, DV)", b), f32, writable);
    p.n = take_state(std::get<1>(*objects), fmt::format("{}.n", name), {N, NH, DQK}, fmt::format("({}, NH, DQK)", b), f32,
                     writable);
    p.m = take_state(std::get<2>(*objects), fmt::format("{}.m", name), {N, NH}, fmt::format("({}, NH)", b), f32, writable);
    return p;
  }

  // One float32 state gradient: part 0, 1, 2 = dC_last (.., NH, DQK, DV), dn_last (.., NH, DQK),
  // dm_last (.., NH); or nullptr.
  void* optional_state_part(const std::optional<py::object>& object, std::string_view name, int part) {
    if (!object || object->is_none()) return nullptr;
    const std::int64_t N = batch();
    const std::string b = packed() ? "N" : "B";
    std::vector<std::int64_t> shape{N, NH, DQK, DV};
    std::string names = "(" + b + ", NH, DQK, DV)";
    if (part == 1) shape = {N, NH, DQK}, names = "(" + b + ", NH, DQK)";
    if (part == 2) shape = {N, NH}, names = "(" + b + ", NH)";
    return take_state(*object, name, std::move(shape), names, to_dl(DType::float32), false);
  }

  std::int64_t stream() const { return arrays_.stream(); }
  const void* q() const { return q_; }
  const void* v() const { return v_; }

  std::int64_t B = 0, NH = 0, S = 0, DQK = 0, DV = 0;
  int device = 0;
  DType dtype = DType::float32;
  bool float32_gates = false;  // float32 gates with bfloat16 q, k, v

 private:
  const Array& take(py::handle object, std::string_view name) { return arrays_.take(object, name); }
  void* take_state(py::handle object, std::string_view name, std::vector<std::int64_t> shape, std::string_view names,
                   dlpack::DataType dtype_, bool writable) {
    const Array& a = take(object, name);
    a.require(shape, names, dtype_, device, writable);
    return a.data();
  }
  std::vector<std::int64_t> tokens(std::int64_t D) const {
    return sequence_ ? std::vector<std::int64_t>{B, NH, S, D} : std::vector<std::int64_t>{B, NH, D};
  }
  std::vector<std::int64_t> gates() const {
    return sequence_ ? std::vector<std::int64_t>{B, NH, S} : std::vector<std::int64_t>{B, NH};
  }

  std::int64_t batch() const { return packed() ? states_ : B; }

  dlpack::CallArrays arrays_;
  bool sequence_;
  std::vector<std::int64_t> cu_seqlens_;
  std::int64_t states_ = -1;  // N with packed sequences
  bool gate_type_known_ = false;
  const void* q_ = nullptr;
  const void* v_ = nullptr;
};

struct TokenInputs {
  const void *q, *k, *v, *igate, *fgate;
};

TokenInputs token_inputs(Call& c, const py::object& k, const py::object& igate, const py::object& fgate) {
  return {c.q(), c.token_array(k, "k", c.DQK, "DQK", false), c.v(), c.gate_array(igate, "igate", false),
          c.gate_array(fgate, "fgate", false)};
}

#ifdef FLASHLSTM_HAVE_CUDA

namespace kernels = flashlstm::cuda::mlstm;

kernels::Inputs kernel_inputs(const Call& c, const TokenInputs& x) {
  return {x.q, x.k, x.v, x.igate, x.fgate, {c.B, c.NH, c.S, c.DQK, c.DV}, c.dtype, c.float32_gates};
}
kernels::State kernel_state(const std::optional<Pointers>& p) {
  if (!p) return {};
  return {static_cast<float*>(p->C), static_cast<float*>(p->n), static_cast<float*>(p->m)};
}
#endif

void forward_chunkwise(const py::object& q, const py::object& k, const py::object& v, const py::object& igate,
                       const py::object& fgate, const std::optional<StateObjects>& initial, const py::object& h,
                       const std::optional<StateObjects>& last, int chunk_size, const std::string& input_gate,
                       bool normalize, double eps, std::optional<std::int64_t> stream,
                       const std::optional<std::vector<std::int64_t>>& cu_seqlens) {
  Call c(q, v, stream, true);
  c.pack(cu_seqlens);
  [[maybe_unused]] const TokenInputs x = token_inputs(c, k, igate, fgate);
  [[maybe_unused]] const auto init = c.state(initial, "initial", false);
  [[maybe_unused]] void* hp = c.token_array(h, "h", c.DV, "DV", true);
  [[maybe_unused]] const auto out = c.state(last, "last", true);
  [[maybe_unused]] const auto o = mlstm_options(input_gate, normalize, eps);
#ifdef FLASHLSTM_HAVE_CUDA
  const kernels::State init_state = kernel_state(init);
  const kernels::ConstState init_const{init_state.C, init_state.n, init_state.m};
  run_on(c.device, [&] {
    if (c.packed())
      kernels::forward_varlen(kernel_inputs(c, x), c.cu_seqlens(), init ? &init_const : nullptr, hp, kernel_state(out),
                              chunk_size, o, kernel_stream(c.stream()));
    else
      kernels::forward_chunkwise(kernel_inputs(c, x), init ? &init_const : nullptr, hp, kernel_state(out), chunk_size, o,
                                 kernel_stream(c.stream()));
  });
#else
  dlpack::no_cuda();
#endif
}

void backward_chunkwise(const py::object& q, const py::object& k, const py::object& v, const py::object& igate,
                        const py::object& fgate, const std::optional<StateObjects>& initial, const py::object& dh,
                        const std::optional<py::object>& dC_last, const std::optional<py::object>& dn_last,
                        const std::optional<py::object>& dm_last, const py::object& dq, const py::object& dk,
                        const py::object& dv, const py::object& digate, const py::object& dfgate,
                        const std::optional<StateObjects>& dinitial, int chunk_size, const std::string& input_gate,
                        bool normalize, double eps, std::optional<std::int64_t> stream,
                        const std::optional<std::vector<std::int64_t>>& cu_seqlens) {
  Call c(q, v, stream, true);
  c.pack(cu_seqlens);
  [[maybe_unused]] const TokenInputs x = token_inputs(c, k, igate, fgate);
  [[maybe_unused]] const auto init = c.state(initial, "initial", false);
  [[maybe_unused]] const void* dhp = c.token_array(dh, "dh", c.DV, "DV", false);
  [[maybe_unused]] const void* dC = c.optional_state_part(dC_last, "dC_last", 0);
  [[maybe_unused]] const void* dn = c.optional_state_part(dn_last, "dn_last", 1);
  [[maybe_unused]] const void* dm = c.optional_state_part(dm_last, "dm_last", 2);
  [[maybe_unused]] void* dqp = c.token_array(dq, "dq", c.DQK, "DQK", true);
  [[maybe_unused]] void* dkp = c.token_array(dk, "dk", c.DQK, "DQK", true);
  [[maybe_unused]] void* dvp = c.token_array(dv, "dv", c.DV, "DV", true);
  [[maybe_unused]] void* dip = c.gate_array(digate, "digate", true);
  [[maybe_unused]] void* dfp = c.gate_array(dfgate, "dfgate", true);
  [[maybe_unused]] const auto d0 = c.state(dinitial, "dinitial", true);
  [[maybe_unused]] const auto o = mlstm_options(input_gate, normalize, eps);
#ifdef FLASHLSTM_HAVE_CUDA
  const kernels::State init_state = kernel_state(init);
  const kernels::ConstState init_const{init_state.C, init_state.n, init_state.m};
  const kernels::OutputGrad grad{dhp, static_cast<const float*>(dC), static_cast<const float*>(dn),
                                 static_cast<const float*>(dm)};
  const kernels::InputGrad out{dqp, dkp, dvp, dip, dfp, kernel_state(d0)};
  run_on(c.device, [&] {
    if (c.packed())
      kernels::backward_varlen(kernel_inputs(c, x), c.cu_seqlens(), init ? &init_const : nullptr, grad, out, chunk_size,
                               o, kernel_stream(c.stream()));
    else
      kernels::backward_chunkwise(kernel_inputs(c, x), init ? &init_const : nullptr, grad, out, chunk_size, o,
                                  kernel_stream(c.stream()));
  });
#else
  dlpack::no_cuda();
#endif
}

// `state` is read and updated in place (as in the host API).
void step(const py::object& q, const py::object& k, const py::object& v, const py::object& igate,
          const py::object& fgate, const StateObjects& state, const py::object& h, const std::string& input_gate,
          bool normalize, double eps, std::optional<std::int64_t> stream) {
  Call c(q, v, stream, false);
  [[maybe_unused]] const TokenInputs x = token_inputs(c, k, igate, fgate);
  [[maybe_unused]] const auto s = c.state(state, "state", true);
  [[maybe_unused]] void* hp = c.token_array(h, "h", c.DV, "DV", true);
  [[maybe_unused]] const auto o = mlstm_options(input_gate, normalize, eps);
#ifdef FLASHLSTM_HAVE_CUDA
  run_on(c.device, [&] { kernels::step(kernel_inputs(c, x), kernel_state(s), hp, o, kernel_stream(c.stream())); });
#else
  dlpack::no_cuda();
#endif
}

void forward_sequence(const py::object& q, const py::object& k, const py::object& v, const py::object& igate,
                      const py::object& fgate, const StateObjects& state, const py::object& h, int chunk_size,
                      const std::string& input_gate, bool normalize, double eps, std::optional<std::int64_t> stream) {
  Call c(q, v, stream, true);
  [[maybe_unused]] const TokenInputs x = token_inputs(c, k, igate, fgate);
  [[maybe_unused]] const auto s = c.state(state, "state", true);
  [[maybe_unused]] void* hp = c.token_array(h, "h", c.DV, "DV", true);
  [[maybe_unused]] const auto o = mlstm_options(input_gate, normalize, eps);
#ifdef FLASHLSTM_HAVE_CUDA
  run_on(c.device, [&] { kernels::forward_sequence(kernel_inputs(c, x), kernel_state(s), hp, chunk_size, o, kernel_stream(c.stream())); });
#else
  dlpack::no_cuda();
#endif
}

}  // namespace

void register_cuda_slstm(py::module_& cuda);  // cuda_slstm.cpp
void register_cuda_plstm(py::module_& cuda);  // cuda_plstm.cpp

void register_cuda(py::module_& parent) {
  auto m = parent.def_submodule("cuda", "CUDA entry points on DLPack arrays (torch, CuPy, JAX, DeviceArray).");
#ifdef FLASHLSTM_HAVE_CUDA
  m.attr("built") = true;
  m.def("device_available", &flashlstm::cuda::mlstm::device_available);
#else
  m.attr("built") = false;
  m.def("device_available", [] { return false; });
#endif
  dlpack::register_device_array(m);

  auto k = m.def_submodule("mlstm", "The CUDA mLSTM kernels; outputs are passed in, states are float32.");
  const auto options = [] {
    return std::make_tuple(py::arg("input_gate") = "exp", py::arg("normalize") = true, py::arg("eps") = 1e-6,
                           py::arg("stream") = py::none());
  };
  const auto [ig, nz, ep, st] = options();
  k.def("forward_chunkwise", &forward_chunkwise, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("igate"),
        py::arg("fgate"), py::arg("initial"), py::arg("h"), py::arg("last"), py::kw_only(), py::arg("chunk_size") = 64,
        ig, nz, ep, st, py::arg("cu_seqlens") = py::none(),
        "Writes h (and the final state into `last`, if given). With cu_seqlens (N + 1 offsets): packed "
        "sequences in one (1, NH, S, D) batch, states (N, NH, ...).");
  k.def("backward_chunkwise", &backward_chunkwise, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("igate"),
        py::arg("fgate"), py::arg("initial"), py::arg("dh"), py::arg("dC_last"), py::arg("dn_last"), py::arg("dm_last"),
        py::arg("dq"), py::arg("dk"), py::arg("dv"), py::arg("digate"), py::arg("dfgate"), py::arg("dinitial"),
        py::kw_only(), py::arg("chunk_size") = 64, ig, nz, ep, st, py::arg("cu_seqlens") = py::none(),
        "Writes dq, dk, dv, digate, dfgate (and the initial state's gradient into `dinitial`, if given). "
        "cu_seqlens as in forward_chunkwise.");
  k.def("step", &step, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("igate"), py::arg("fgate"), py::arg("state"),
        py::arg("h"), py::kw_only(), ig, nz, ep, st, "One token; `state` (C, n, m) is updated in place.");
  k.def("forward_sequence", &forward_sequence, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("igate"),
        py::arg("fgate"), py::arg("state"), py::arg("h"), py::kw_only(), py::arg("chunk_size") = 64, ig, nz, ep, st,
        "Any length continuing `state` (updated in place).");
  register_cuda_slstm(m);
  register_cuda_plstm(m);
}

}  // namespace flashlstm::bindings
