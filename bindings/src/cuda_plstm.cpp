// flashlstm._core.cuda.plstm: the CUDA pLSTM kernels (cuda/plstm/plstm.hpp) on DLPack arrays, without
// copies, on the caller's stream. The output is passed in (the Python package allocates it in the
// caller's framework). Arguments are taken and checked (device, dtype, shape, layout) in every build,
// so the errors are the same and testable without CUDA; only the launch needs it.
#include "bindings/src/arrays.hpp"
#include "bindings/src/cuda_launch.hpp"
#include "bindings/src/dlpack.hpp"
#include "graph/graph.hpp"

#ifdef FLASHLSTM_HAVE_CUDA
#include "cuda/plstm/plstm.hpp"
#endif

#include <array>
#include <memory>
#include <string>
#include <utility>

namespace flashlstm::bindings {
namespace {

using dlpack::DType;
using dlpack::to_dl;

constexpr std::array<const char*, 9> kGateNames{"Sr", "Sd", "Trl", "Tru", "Tdu", "Tdl", "Ml", "Mu", "D"};

// The inputs of a grid kernel, taken and checked: q, k, v (B, NH, X, Y, D) of one dtype on one device,
// the nine gates float32, (B, NH, X, Y) each for one orientation or (4, B, NH, X, Y) for four.
struct GridArrays {
  std::int64_t B = 0, NH = 0, X = 0, Y = 0, DQK = 0, DV = 0;
  DType dtype = DType::float32;
  int device = 0, orientations = 1;
  const void *q = nullptr, *k = nullptr, *v = nullptr;
  std::array<const float*, 9> gates{};

  GridArrays(dlpack::CallArrays& arrays, const py::object& q_, const py::object& k_, const py::object& v_,
             const py::sequence& gates_, int orientations_)
      : orientations(orientations_) {
    require(orientations == 1 || orientations == 4, "orientations", "must be 1 or 4, got {}", orientations);
    const auto& qa = arrays.take(q_, "q");
    require(qa.tensor().ndim == 5, "q", "expected shape (B, NH, X, Y, DQK), got {} dimensions", qa.tensor().ndim);
    const std::int64_t* s = qa.tensor().shape;
    B = s[0], NH = s[1], X = s[2], Y = s[3], DQK = s[4];
    if (qa.dtype() == to_dl(DType::bfloat16)) dtype = DType::bfloat16;
    else require(qa.dtype() == to_dl(DType::float32), "q", "expected dtype float32 or bfloat16, got {}",
                 dlpack::dtype_name(qa.dtype()));
    device = qa.device();
    qa.require({B, NH, X, Y, DQK}, "(B, NH, X, Y, DQK)", to_dl(dtype), device, false);
    const auto& ka = arrays.take(k_, "k");
    ka.require({B, NH, X, Y, DQK}, "(B, NH, X, Y, DQK)", to_dl(dtype), device, false);
    const auto& va = arrays.take(v_, "v");
    require(va.tensor().ndim == 5, "v", "expected shape (B, NH, X, Y, DV), got {} dimensions", va.tensor().ndim);
    DV = va.tensor().shape[4];
    va.require({B, NH, X, Y, DV}, "(B, NH, X, Y, DV)", to_dl(dtype), device, false);
    q = qa.data(), k = ka.data(), v = va.data();
    require(py::len(gates_) == kGateNames.size(), "gates",
            "expected the nine gates (Sr, Sd, Trl, Tru, Tdu, Tdl, Ml, Mu, D), got {}", py::len(gates_));
    for (std::size_t i = 0; i < gates.size(); ++i) gates[i] = static_cast<const float*>(gate(arrays, gates_[i], kGateNames[i], false));
  }
  // A gate-shaped float32 array (a gate, or a gate's gradient when `writable`).
  void* gate(dlpack::CallArrays& arrays, const py::handle& a, const char* name, bool writable) const {
    const auto& g = arrays.take(a, name);
    if (orientations == 4) g.require({4, B, NH, X, Y}, "(4, B, NH, X, Y)", to_dl(DType::float32), device, writable);
    else g.require({B, NH, X, Y}, "(B, NH, X, Y)", to_dl(DType::float32), device, writable);
    return g.data();
  }
  // A node array (B, NH, X, Y, D) of the inputs' dtype.
  void* nodes(dlpack::CallArrays& arrays, const py::object& a, const char* name, std::int64_t D, const char* shape,
              bool writable) const {
    const auto& x = arrays.take(a, name);
    x.require({B, NH, X, Y, D}, shape, to_dl(dtype), device, writable);
    return x.data();
  }
#ifdef FLASHLSTM_HAVE_CUDA
  flashlstm::cuda::plstm::GridInputs inputs() const {
    const auto& g = gates;
    return {q, k, v, {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]}, {B, NH, X, Y, DQK, DV}, orientations, dtype};
  }
#endif
};

// h (B, NH, X, Y, DV) of q's dtype: one orientation's gates (B, NH, X, Y) each, or the sum over four
// orientations with gates (4, B, NH, X, Y).
void grid_forward(const py::object& q, const py::object& k, const py::object& v, const py::sequence& gates,
                  const py::object& h, int orientations, double qk_scale, std::optional<std::int64_t> stream) {
  dlpack::CallArrays arrays(stream);
  const GridArrays x(arrays, q, k, v, gates, orientations);
  void* hp = x.nodes(arrays, h, "h", x.DV, "(B, NH, X, Y, DV)", true);
#ifdef FLASHLSTM_HAVE_CUDA
  namespace kernels = flashlstm::cuda::plstm;
  run_on(x.device, [&] { kernels::grid_forward(x.inputs(), hp, {.qk_scale = qk_scale}, kernel_stream(arrays.stream())); });
#else
  (void)hp, (void)qk_scale;
  dlpack::no_cuda();
#endif
}

// Its gradients from dh: dq, dk, dv like q, k, v; dgates, the nine gates' gradients, like the gates.
void grid_backward(const py::object& q, const py::object& k, const py::object& v, const py::sequence& gates,
                   const py::object& dh, const py::object& dq, const py::object& dk, const py::object& dv,
                   const py::sequence& dgates, int orientations, double qk_scale, std::optional<std::int64_t> stream) {
  dlpack::CallArrays arrays(stream);
  const GridArrays x(arrays, q, k, v, gates, orientations);
  const void* dhp = x.nodes(arrays, dh, "dh", x.DV, "(B, NH, X, Y, DV)", false);
  void* dqp = x.nodes(arrays, dq, "dq", x.DQK, "(B, NH, X, Y, DQK)", true);
  void* dkp = x.nodes(arrays, dk, "dk", x.DQK, "(B, NH, X, Y, DQK)", true);
  void* dvp = x.nodes(arrays, dv, "dv", x.DV, "(B, NH, X, Y, DV)", true);
  require(py::len(dgates) == kGateNames.size(), "dgates", "expected the nine gates' gradients, got {}", py::len(dgates));
  std::array<float*, 9> d{};
  for (std::size_t i = 0; i < d.size(); ++i) {
    const std::string name = std::string("d") + kGateNames[i];
    d[i] = static_cast<float*>(x.gate(arrays, dgates[i], name.c_str(), true));
  }
#ifdef FLASHLSTM_HAVE_CUDA
  namespace kernels = flashlstm::cuda::plstm;
  const kernels::GridGradients grad{dqp, dkp, dvp, d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8]};
  run_on(x.device, [&] {
    kernels::grid_backward(x.inputs(), dhp, grad, {.qk_scale = qk_scale}, kernel_stream(arrays.stream()));
  });
#else
  (void)dhp, (void)dqp, (void)dkp, (void)dvp, (void)qk_scale;
  dlpack::no_cuda();
#endif
}

// A 1-D problem's inputs, taken and checked: q, k (B, NH, S, DQK), v (B, NH, S, DV) of one dtype, the
// gates S, T, M, D (B, NH, S) float32.
struct SequenceArrays {
  std::int64_t B = 0, NH = 0, S = 0, DQK = 0, DV = 0;
  DType dtype = DType::float32;
  int device = 0;
  const void *q = nullptr, *k = nullptr, *v = nullptr;
  std::array<const float*, 4> gates{};

  SequenceArrays(dlpack::CallArrays& arrays, const py::object& q_, const py::object& k_, const py::object& v_,
                 const py::object& S_, const py::object& T_, const py::object& M_, const py::object& D_) {
    const auto& qa = arrays.take(q_, "q");
    require(qa.tensor().ndim == 4, "q", "expected shape (B, NH, S, DQK), got {} dimensions", qa.tensor().ndim);
    const std::int64_t* s = qa.tensor().shape;
    B = s[0], NH = s[1], S = s[2], DQK = s[3];
    if (qa.dtype() == to_dl(DType::bfloat16)) dtype = DType::bfloat16;
    else require(qa.dtype() == to_dl(DType::float32), "q", "expected dtype float32 or bfloat16, got {}",
                 dlpack::dtype_name(qa.dtype()));
    device = qa.device();
    qa.require({B, NH, S, DQK}, "(B, NH, S, DQK)", to_dl(dtype), device, false);
    const auto& ka = arrays.take(k_, "k");
    ka.require({B, NH, S, DQK}, "(B, NH, S, DQK)", to_dl(dtype), device, false);
    const auto& va = arrays.take(v_, "v");
    require(va.tensor().ndim == 4, "v", "expected shape (B, NH, S, DV), got {} dimensions", va.tensor().ndim);
    DV = va.tensor().shape[3];
    va.require({B, NH, S, DV}, "(B, NH, S, DV)", to_dl(dtype), device, false);
    q = qa.data(), k = ka.data(), v = va.data();
    const std::array<std::pair<const py::object*, const char*>, 4> named{{{&S_, "S"}, {&T_, "T"}, {&M_, "M"}, {&D_, "D"}}};
    for (std::size_t i = 0; i < 4; ++i) gates[i] = static_cast<const float*>(gate(arrays, *named[i].first, named[i].second, false));
  }
  void* gate(dlpack::CallArrays& arrays, const py::object& a, const char* name, bool writable) const {
    const auto& g = arrays.take(a, name);
    g.require({B, NH, S}, "(B, NH, S)", to_dl(DType::float32), device, writable);
    return g.data();
  }
  void* nodes(dlpack::CallArrays& arrays, const py::object& a, const char* name, std::int64_t D, const char* shape,
              bool writable) const {
    const auto& x = arrays.take(a, name);
    x.require({B, NH, S, D}, shape, to_dl(dtype), device, writable);
    return x.data();
  }
#ifdef FLASHLSTM_HAVE_CUDA
  flashlstm::cuda::plstm::SequenceInputs inputs() const {
    return {q, k, v, gates[0], gates[1], gates[2], gates[3], {B, NH, S, DQK, DV}, dtype};
  }
#endif
};

void sequence_forward(const py::object& q, const py::object& k, const py::object& v, const py::object& S,
                      const py::object& T, const py::object& M, const py::object& D, const py::object& h,
                      double qk_scale, std::optional<std::int64_t> stream) {
  dlpack::CallArrays arrays(stream);
  const SequenceArrays x(arrays, q, k, v, S, T, M, D);
  void* hp = x.nodes(arrays, h, "h", x.DV, "(B, NH, S, DV)", true);
#ifdef FLASHLSTM_HAVE_CUDA
  namespace kernels = flashlstm::cuda::plstm;
  run_on(x.device, [&] { kernels::sequence_forward(x.inputs(), hp, {.qk_scale = qk_scale}, kernel_stream(arrays.stream())); });
#else
  (void)hp, (void)qk_scale;
  dlpack::no_cuda();
#endif
}

void sequence_backward(const py::object& q, const py::object& k, const py::object& v, const py::object& S,
                       const py::object& T, const py::object& M, const py::object& D, const py::object& dh,
                       const py::object& dq, const py::object& dk, const py::object& dv, const py::object& dS,
                       const py::object& dT, const py::object& dM, const py::object& dD, double qk_scale,
                       std::optional<std::int64_t> stream) {
  dlpack::CallArrays arrays(stream);
  const SequenceArrays x(arrays, q, k, v, S, T, M, D);
  const void* dhp = x.nodes(arrays, dh, "dh", x.DV, "(B, NH, S, DV)", false);
  void* dqp = x.nodes(arrays, dq, "dq", x.DQK, "(B, NH, S, DQK)", true);
  void* dkp = x.nodes(arrays, dk, "dk", x.DQK, "(B, NH, S, DQK)", true);
  void* dvp = x.nodes(arrays, dv, "dv", x.DV, "(B, NH, S, DV)", true);
  auto* dSp = static_cast<float*>(x.gate(arrays, dS, "dS", true));
  auto* dTp = static_cast<float*>(x.gate(arrays, dT, "dT", true));
  auto* dMp = static_cast<float*>(x.gate(arrays, dM, "dM", true));
  auto* dDp = static_cast<float*>(x.gate(arrays, dD, "dD", true));
#ifdef FLASHLSTM_HAVE_CUDA
  namespace kernels = flashlstm::cuda::plstm;
  const kernels::SequenceGradients grad{dqp, dkp, dvp, dSp, dTp, dMp, dDp};
  run_on(x.device, [&] {
    kernels::sequence_backward(x.inputs(), dhp, grad, {.qk_scale = qk_scale}, kernel_stream(arrays.stream()));
  });
#else
  (void)dhp, (void)dqp, (void)dkp, (void)dvp, (void)dSp, (void)dTp, (void)dMp, (void)dDp, (void)qk_scale;
  dlpack::no_cuda();
#endif
}

// A graph flattened (graph::flatten) for one device, uploaded there by the first launch: made once
// per (graph, device) and reused by every call (flashlstm.plstm caches it), so that a call on a large
// graph pays neither the flattening nor the upload again.
struct DagPlan {
  graph::Flat flat;
  std::int64_t N = 0, E = 0, A = 0;
  int device = 0;
  DagPlan(const graph::Dag& dag, int device_)
      : flat(graph::flatten(dag)), N(dag.num_nodes()), E(dag.num_edges()),
        A(static_cast<std::int64_t>(flat.arc_from.size())), device(device_) {}
#ifdef FLASHLSTM_HAVE_CUDA
  // The graph's arrays on the device (call on it).
  const flashlstm::cuda::plstm::DagPlan& uploaded() const {
    if (!on_device)
      on_device = std::make_unique<flashlstm::cuda::plstm::DagPlan>(flashlstm::cuda::plstm::DagGraph{
          flat.in_offsets.data(), flat.in_edges.data(), flat.out_offsets.data(), flat.out_edges.data(),
          flat.level_offsets.data(), flat.level_nodes.data(), N, E,
          static_cast<std::int64_t>(flat.level_offsets.size()) - 1});
    return *on_device;
  }
  mutable std::unique_ptr<flashlstm::cuda::plstm::DagPlan> on_device;
#endif
};

// A DAG problem's inputs, taken and checked against the plan's graph: q, k (B, NH, N, DQK), v (B, NH,
// N, DV) of one dtype on the plan's device; S, M (B, NH, E), T (B, NH, A), D (B, NH, N) float32.
struct DagArrays {
  std::int64_t B = 0, NH = 0, N = 0, E = 0, A = 0, DQK = 0, DV = 0;
  DType dtype = DType::float32;
  int device = 0;
  const void *q = nullptr, *k = nullptr, *v = nullptr;
  std::array<const float*, 4> gates{};

  DagArrays(dlpack::CallArrays& arrays, const DagPlan& plan, const py::object& q_, const py::object& k_,
            const py::object& v_, const py::object& S_, const py::object& T_, const py::object& M_, const py::object& D_)
      : N(plan.N), E(plan.E), A(plan.A) {
    const auto& qa = arrays.take(q_, "q");
    require(qa.tensor().ndim == 4, "q", "expected shape (B, NH, N, DQK), got {} dimensions", qa.tensor().ndim);
    const std::int64_t* s = qa.tensor().shape;
    B = s[0], NH = s[1], DQK = s[3];
    if (qa.dtype() == to_dl(DType::bfloat16)) dtype = DType::bfloat16;
    else require(qa.dtype() == to_dl(DType::float32), "q", "expected dtype float32 or bfloat16, got {}",
                 dlpack::dtype_name(qa.dtype()));
    device = qa.device();
    require(device == plan.device, "q", "is on device {}, the DagPlan's graph on device {}", device, plan.device);
    qa.require({B, NH, N, DQK}, "(B, NH, N, DQK)", to_dl(dtype), device, false);
    const auto& ka = arrays.take(k_, "k");
    ka.require({B, NH, N, DQK}, "(B, NH, N, DQK)", to_dl(dtype), device, false);
    const auto& va = arrays.take(v_, "v");
    require(va.tensor().ndim == 4, "v", "expected shape (B, NH, N, DV), got {} dimensions", va.tensor().ndim);
    DV = va.tensor().shape[3];
    va.require({B, NH, N, DV}, "(B, NH, N, DV)", to_dl(dtype), device, false);
    q = qa.data(), k = ka.data(), v = va.data();
    gates[0] = static_cast<const float*>(gate(arrays, S_, "S", E, "(B, NH, E)", false));
    gates[1] = static_cast<const float*>(gate(arrays, T_, "T", A, "(B, NH, A)", false));
    gates[2] = static_cast<const float*>(gate(arrays, M_, "M", E, "(B, NH, E)", false));
    gates[3] = static_cast<const float*>(gate(arrays, D_, "D", N, "(B, NH, N)", false));
  }
  void* gate(dlpack::CallArrays& arrays, const py::object& a, const char* name, std::int64_t count, const char* shape,
             bool writable) const {
    const auto& g = arrays.take(a, name);
    g.require({B, NH, count}, shape, to_dl(DType::float32), device, writable);
    return g.data();
  }
  void* nodes(dlpack::CallArrays& arrays, const py::object& a, const char* name, std::int64_t D, const char* shape,
              bool writable) const {
    const auto& x = arrays.take(a, name);
    x.require({B, NH, N, D}, shape, to_dl(dtype), device, writable);
    return x.data();
  }
#ifdef FLASHLSTM_HAVE_CUDA
  flashlstm::cuda::plstm::DagInputs inputs() const {
    return {q, k, v, gates[0], gates[1], gates[2], gates[3], B, NH, DQK, DV, dtype};
  }
#endif
};

void dag_forward(const DagPlan& plan, const py::object& q, const py::object& k, const py::object& v,
                 const py::object& S, const py::object& T, const py::object& M, const py::object& D, const py::object& h,
                 double qk_scale, std::optional<std::int64_t> stream) {
  dlpack::CallArrays arrays(stream);
  const DagArrays x(arrays, plan, q, k, v, S, T, M, D);
  void* hp = x.nodes(arrays, h, "h", x.DV, "(B, NH, N, DV)", true);
#ifdef FLASHLSTM_HAVE_CUDA
  namespace kernels = flashlstm::cuda::plstm;
  run_on(x.device, [&] {
    kernels::dag_forward(plan.uploaded(), x.inputs(), hp, {.qk_scale = qk_scale}, kernel_stream(arrays.stream()));
  });
#else
  (void)hp, (void)qk_scale;
  dlpack::no_cuda();
#endif
}

void dag_backward(const DagPlan& plan, const py::object& q, const py::object& k, const py::object& v,
                  const py::object& S, const py::object& T, const py::object& M, const py::object& D,
                  const py::object& dh, const py::object& dq, const py::object& dk, const py::object& dv,
                  const py::object& dS, const py::object& dT, const py::object& dM, const py::object& dD,
                  double qk_scale, std::optional<std::int64_t> stream) {
  dlpack::CallArrays arrays(stream);
  const DagArrays x(arrays, plan, q, k, v, S, T, M, D);
  const void* dhp = x.nodes(arrays, dh, "dh", x.DV, "(B, NH, N, DV)", false);
  void* dqp = x.nodes(arrays, dq, "dq", x.DQK, "(B, NH, N, DQK)", true);
  void* dkp = x.nodes(arrays, dk, "dk", x.DQK, "(B, NH, N, DQK)", true);
  void* dvp = x.nodes(arrays, dv, "dv", x.DV, "(B, NH, N, DV)", true);
  auto* dSp = static_cast<float*>(x.gate(arrays, dS, "dS", x.E, "(B, NH, E)", true));
  auto* dTp = static_cast<float*>(x.gate(arrays, dT, "dT", x.A, "(B, NH, A)", true));
  auto* dMp = static_cast<float*>(x.gate(arrays, dM, "dM", x.E, "(B, NH, E)", true));
  auto* dDp = static_cast<float*>(x.gate(arrays, dD, "dD", x.N, "(B, NH, N)", true));
#ifdef FLASHLSTM_HAVE_CUDA
  namespace kernels = flashlstm::cuda::plstm;
  run_on(x.device, [&] {
    kernels::dag_backward(plan.uploaded(), x.inputs(), dhp, {dqp, dkp, dvp, dSp, dTp, dMp, dDp}, {.qk_scale = qk_scale},
                          kernel_stream(arrays.stream()));
  });
#else
  (void)dhp, (void)dqp, (void)dkp, (void)dvp, (void)dSp, (void)dTp, (void)dMp, (void)dDp, (void)qk_scale;
  dlpack::no_cuda();
#endif
}

std::int64_t grid_backward_scratch_bytes(std::int64_t B, std::int64_t NH, std::int64_t X, std::int64_t Y,
                                         std::int64_t DQK, std::int64_t DV, int orientations, const std::string& dtype) {
  require(dtype == "float32" || dtype == "bfloat16", "dtype", "must be 'float32' or 'bfloat16', got '{}'", dtype);
#ifdef FLASHLSTM_HAVE_CUDA
  return flashlstm::cuda::plstm::grid_backward_scratch_bytes(
      {B, NH, X, Y, DQK, DV}, orientations, dtype == "float32" ? DType::float32 : DType::bfloat16);
#else
  (void)B, (void)NH, (void)X, (void)Y, (void)DQK, (void)DV, (void)orientations;
  dlpack::no_cuda();
#endif
}

}  // namespace

void register_cuda_plstm(py::module_& cuda) {
  auto k = cuda.def_submodule("plstm", "The CUDA pLSTM kernels; the output is passed in.");
  k.def("grid_forward", &grid_forward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("gates"), py::arg("h"),
        py::kw_only(), py::arg("orientations") = 1, py::arg("qk_scale") = 0.0, py::arg("stream") = py::none(),
        "Writes h; gates (B, NH, X, Y) each for one orientation, (4, B, NH, X, Y) for the sum over four.");
  k.def("grid_backward", &grid_backward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("gates"), py::arg("dh"),
        py::arg("dq"), py::arg("dk"), py::arg("dv"), py::arg("dgates"), py::kw_only(), py::arg("orientations") = 1,
        py::arg("qk_scale") = 0.0, py::arg("stream") = py::none(),
        "Writes dq, dk, dv and the nine gates' gradients dgates (shaped as the gates).");
  k.def("sequence_forward", &sequence_forward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("S"), py::arg("T"),
        py::arg("M"), py::arg("D"), py::arg("h"), py::kw_only(), py::arg("qk_scale") = 0.0,
        py::arg("stream") = py::none(), "Writes h (B, NH, S, DV): the chunkwise form, chunks of 64.");
  k.def("sequence_backward", &sequence_backward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("S"), py::arg("T"),
        py::arg("M"), py::arg("D"), py::arg("dh"), py::arg("dq"), py::arg("dk"), py::arg("dv"), py::arg("dS"),
        py::arg("dT"), py::arg("dM"), py::arg("dD"), py::kw_only(), py::arg("qk_scale") = 0.0,
        py::arg("stream") = py::none(), "Writes dq, dk, dv, dS, dT, dM, dD.");
  py::class_<DagPlan>(k, "DagPlan", "A graph flattened for dag_forward/dag_backward on one CUDA device (uploaded once).")
      .def(py::init<const graph::Dag&, int>(), py::arg("dag"), py::arg("device"), py::call_guard<py::gil_scoped_release>())
      .def_readonly("device", &DagPlan::device);
  k.def("dag_forward", &dag_forward, py::arg("plan"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("S"),
        py::arg("T"), py::arg("M"), py::arg("D"), py::arg("h"), py::kw_only(), py::arg("qk_scale") = 0.0,
        py::arg("stream") = py::none(), "Writes h (B, NH, N, DV): the recurrent form, level by level.");
  k.def("dag_backward", &dag_backward, py::arg("plan"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("S"),
        py::arg("T"), py::arg("M"), py::arg("D"), py::arg("dh"), py::arg("dq"), py::arg("dk"), py::arg("dv"),
        py::arg("dS"), py::arg("dT"), py::arg("dM"), py::arg("dD"), py::kw_only(), py::arg("qk_scale") = 0.0,
        py::arg("stream") = py::none(), "Writes dq, dk, dv, dS, dT, dM, dD.");
  k.def("grid_backward_scratch_bytes", &grid_backward_scratch_bytes, py::arg("B"), py::arg("NH"), py::arg("X"),
        py::arg("Y"), py::arg("DQK"), py::arg("DV"), py::arg("orientations"), py::arg("dtype"),
        "The scratch memory grid_backward takes (from the CUDA stream-ordered allocator) for these sizes, in bytes.");
}

}  // namespace flashlstm::bindings
