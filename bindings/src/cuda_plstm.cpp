// flashlstm._core.cuda.plstm: the CUDA pLSTM kernels (cuda/plstm/plstm.hpp) on DLPack arrays, without
// copies, on the caller's stream. The output is passed in (the Python package allocates it in the
// caller's framework). Arguments are taken and checked (device, dtype, shape, layout) in every build,
// so the errors are the same and testable without CUDA; only the launch needs it.
#include "bindings/src/arrays.hpp"
#include "bindings/src/cuda_launch.hpp"
#include "bindings/src/dlpack.hpp"

#ifdef FLASHLSTM_HAVE_CUDA
#include "cuda/plstm/plstm.hpp"
#endif

#include <array>

namespace flashlstm::bindings {
namespace {

using dlpack::DType;
using dlpack::to_dl;

constexpr std::array<const char*, 9> kGateNames{"Sr", "Sd", "Trl", "Tru", "Tdu", "Tdl", "Ml", "Mu", "D"};

// h (B, NH, X, Y, DV) of q's dtype: one orientation's gates (B, NH, X, Y) each, or the sum over four
// orientations with gates (4, B, NH, X, Y).
void grid_forward(const py::object& q, const py::object& k, const py::object& v, const py::sequence& gates,
                  const py::object& h, int orientations, double qk_scale, std::optional<std::int64_t> stream) {
  require(orientations == 1 || orientations == 4, "orientations", "must be 1 or 4, got {}", orientations);
  dlpack::CallArrays arrays(stream);
  const auto& qa = arrays.take(q, "q");
  require(qa.tensor().ndim == 5, "q", "expected shape (B, NH, X, Y, DQK), got {} dimensions", qa.tensor().ndim);
  const std::int64_t* s = qa.tensor().shape;
  const std::int64_t B = s[0], NH = s[1], X = s[2], Y = s[3], DQK = s[4];
  DType dtype = DType::float32;
  if (qa.dtype() == to_dl(DType::bfloat16)) dtype = DType::bfloat16;
  else require(qa.dtype() == to_dl(DType::float32), "q", "expected dtype float32 or bfloat16, got {}",
               dlpack::dtype_name(qa.dtype()));
  const int device = qa.device();
  qa.require({B, NH, X, Y, DQK}, "(B, NH, X, Y, DQK)", to_dl(dtype), device, false);
  const auto& ka = arrays.take(k, "k");
  ka.require({B, NH, X, Y, DQK}, "(B, NH, X, Y, DQK)", to_dl(dtype), device, false);
  const auto& va = arrays.take(v, "v");
  require(va.tensor().ndim == 5, "v", "expected shape (B, NH, X, Y, DV), got {} dimensions", va.tensor().ndim);
  const std::int64_t DV = va.tensor().shape[4];
  va.require({B, NH, X, Y, DV}, "(B, NH, X, Y, DV)", to_dl(dtype), device, false);
  const auto& ha = arrays.take(h, "h");
  ha.require({B, NH, X, Y, DV}, "(B, NH, X, Y, DV)", to_dl(dtype), device, true);
  require(py::len(gates) == kGateNames.size(), "gates", "expected the nine gates (Sr, Sd, Trl, Tru, Tdu, Tdl, Ml, Mu, D), got {}",
          py::len(gates));
  std::array<const float*, 9> g{};
  for (std::size_t i = 0; i < g.size(); ++i) {
    const auto& a = arrays.take(gates[i], kGateNames[i]);
    if (orientations == 4) a.require({4, B, NH, X, Y}, "(4, B, NH, X, Y)", to_dl(DType::float32), device, false);
    else a.require({B, NH, X, Y}, "(B, NH, X, Y)", to_dl(DType::float32), device, false);
    g[i] = static_cast<const float*>(a.data());
  }
#ifdef FLASHLSTM_HAVE_CUDA
  namespace kernels = flashlstm::cuda::plstm;
  const kernels::GridInputs x{qa.data(), ka.data(), va.data(), {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]},
                              {B, NH, X, Y, DQK, DV}, orientations, dtype};
  run_on(device, [&] { kernels::grid_forward(x, ha.data(), {.qk_scale = qk_scale}, kernel_stream(arrays.stream())); });
#else
  (void)qk_scale;
  dlpack::no_cuda();
#endif
}

}  // namespace

void register_cuda_plstm(py::module_& cuda) {
  auto k = cuda.def_submodule("plstm", "The CUDA pLSTM kernels; the output is passed in.");
  k.def("grid_forward", &grid_forward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("gates"), py::arg("h"),
        py::kw_only(), py::arg("orientations") = 1, py::arg("qk_scale") = 0.0, py::arg("stream") = py::none(),
        "Writes h; gates (B, NH, X, Y) each for one orientation, (4, B, NH, X, Y) for the sum over four.");
}

}  // namespace flashlstm::bindings
