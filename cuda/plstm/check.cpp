// Kernel-against-reference checks of the pLSTM (see check.hpp).
#include "cuda/plstm/check.hpp"

#include "cuda/check_arrays.hpp"

#include <cuda_runtime_api.h>

#include <array>
#include <map>
#include <memory>

namespace flashlstm::cuda::plstm {

namespace ref = flashlstm::plstm;

namespace {

// The first `orientations` of each gate (4, B, NH, X, Y), as the reference takes them.
template <class F>
ref::OrientedGates<F> gate_views(const std::array<xt::xtensor<F, 5>, 9>& g) {
  return {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]};
}

template <class F>
xt::xtensor<F, 5> reference_h(const xt::xtensor<F, 5>& q, const xt::xtensor<F, 5>& k, const xt::xtensor<F, 5>& v,
                              const std::array<xt::xtensor<F, 5>, 9>& gates, int orientations, ref::GridForm form) {
  if (orientations == 4) return ref::grid_forward_oriented<F>(q, k, v, gate_views(gates), form, {});
  std::array<xt::xtensor<F, 4>, 9> g;
  for (std::size_t i = 0; i < g.size(); ++i) g[i] = xt::view(gates[i], 0);
  const ref::GridInputs<F> x{q, k, v, {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]}};
  return ref::grid_forward(x, form, {});
}

template <class F, std::size_t N>
xt::xtensor<F, N> cast_tensor(const xt::xtensor<double, N>& x) {
  return xt::cast<F>(x);
}

template <class F>
std::array<xt::xtensor<F, 5>, 9> cast_gates(const std::array<xt::xtensor<double, 5>, 9>& g) {
  std::array<xt::xtensor<F, 5>, 9> c;
  for (std::size_t i = 0; i < g.size(); ++i) c[i] = cast_tensor<F>(g[i]);
  return c;
}

}  // namespace

KernelCheck check_grid(const ref::GridShape& shape, int orientations, ref::GateMode mode, DType dtype,
                       std::uint64_t seed) {
  KernelCheck c;
  c.name = fmt::format("grid {} x{} {} {}", to_string(dtype), orientations, to_string(mode), shape.name());
  c.baseline = "float32 reference (recurrent, parallel)";
  // The inputs exactly as the kernel sees them.
  ref::OrientedGridProblem p = ref::random_oriented_problem(shape, mode, seed);
  p.q = check::round_to(p.q, dtype), p.k = check::round_to(p.k, dtype), p.v = check::round_to(p.v, dtype);
  for (auto& g : p.gates) g = check::round_to_float(g);
  const double scale = check::rms(p.q, p.k, p.v);

  const auto oracle = reference_h(p.q, p.k, p.v, p.gates, orientations, {ref::GridForm::recurrent});
  const auto q32 = cast_tensor<float>(p.q), k32 = cast_tensor<float>(p.k), v32 = cast_tensor<float>(p.v);
  const auto gates32 = cast_gates<float>(p.gates);
  std::vector<std::vector<check::Named<float>>> runs;
  std::vector<xt::xtensor<float, 5>> kept;
  for (const auto kind : {ref::GridForm::recurrent, ref::GridForm::parallel}) {
    kept.push_back(reference_h(q32, k32, v32, gates32, orientations, {kind}));
    runs.push_back({check::named("h", kept.back())});
  }

  const auto q = upload(p.q, dtype), k = upload(p.k, dtype), v = upload(p.v, dtype);
  std::array<std::unique_ptr<DeviceBuffer>, 9> gates;
  for (std::size_t i = 0; i < gates.size(); ++i) gates[i] = upload(p.gates[i], DType::float32);
  const auto at = [&](int i) { return gates[i]->get<float>(); };
  const GridInputs x{q->get(), k->get(), v->get(),
                     GridGates{at(0), at(1), at(2), at(3), at(4), at(5), at(6), at(7), at(8)},
                     GridDims{shape.B, shape.NH, shape.X, shape.Y, shape.DQK, shape.DV}, orientations, dtype};
  const auto h = poisoned(oracle.size() * element_size(dtype));
  cudaStream_t stream = nullptr;
  check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  grid_forward(x, h->get(), {}, stream);
  check_cuda(cudaStreamSynchronize(stream), "pLSTM grid forward");
  check_cuda(cudaStreamDestroy(stream), "stream");
  const auto kernel = download(*h, shape_of(oracle), dtype);

  const std::map<std::string, DType> dtypes{{"h", dtype}};
  const std::vector<check::Named<double>> oracle_tensors{check::named("h", oracle)};
  const auto baseline = check::baseline_errors(runs, oracle_tensors, dtypes, scale);
  c.report = check::kernel_compare({check::named("h", kernel)}, oracle_tensors, baseline, dtypes, scale);
  return c;
}

}  // namespace flashlstm::cuda::plstm
