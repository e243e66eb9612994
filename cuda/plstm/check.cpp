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

// The reference's gradients in `form` (chunkwise or maps) of one orientation (orientation 0's gates) or
// of the sum over four, with
// the gate gradients as (orientations, B, NH, X, Y): dq, dk, dv, dSr, ..., dD.
template <class F>
std::vector<xt::xtensor<F, 5>> reference_grads(const xt::xtensor<F, 5>& q, const xt::xtensor<F, 5>& k,
                                               const xt::xtensor<F, 5>& v, const std::array<xt::xtensor<F, 5>, 9>& gates,
                                               const xt::xtensor<F, 5>& dh, int orientations, const ref::GridForm& form) {
  if (orientations == 4) {
    auto g = ref::grid_backward_oriented<F>(q, k, v, gate_views(gates), dh, form, {});
    return {g.dq, g.dk, g.dv, g.dSr, g.dSd, g.dTrl, g.dTru, g.dTdu, g.dTdl, g.dMl, g.dMu, g.dD};
  }
  std::array<xt::xtensor<F, 4>, 9> g0;
  for (std::size_t i = 0; i < g0.size(); ++i) g0[i] = xt::view(gates[i], 0);
  const ref::GridInputs<F> x{q, k, v, {g0[0], g0[1], g0[2], g0[3], g0[4], g0[5], g0[6], g0[7], g0[8]}};
  const auto g = ref::grid_backward<F>(x, dh, form, {});
  std::vector<xt::xtensor<F, 5>> out{g.dq, g.dk, g.dv};
  for (const auto* d : {&g.dSr, &g.dSd, &g.dTrl, &g.dTru, &g.dTdu, &g.dTdl, &g.dMl, &g.dMu, &g.dD})
    out.push_back(xt::expand_dims(*d, 0));
  return out;
}

const std::array<const char*, 12> kGradNames{"dq", "dk", "dv", "dSr", "dSd", "dTrl", "dTru", "dTdu", "dTdl", "dMl", "dMu", "dD"};

template <class F>
std::vector<check::Named<F>> named_grads(const std::vector<xt::xtensor<F, 5>>& g) {
  std::vector<check::Named<F>> out;
  for (std::size_t i = 0; i < g.size(); ++i) out.push_back(check::named(kGradNames[i], g[i]));
  return out;
}

// The kernel's inputs on the device.
struct DeviceProblem {
  std::unique_ptr<DeviceBuffer> q, k, v;
  std::array<std::unique_ptr<DeviceBuffer>, 9> gates;
  GridInputs inputs;
  DeviceProblem(const ref::OrientedGridProblem& p, const ref::GridShape& shape, int orientations, DType dtype)
      : q(upload(p.q, dtype)), k(upload(p.k, dtype)), v(upload(p.v, dtype)) {
    for (std::size_t i = 0; i < gates.size(); ++i) gates[i] = upload(p.gates[i], DType::float32);
    const auto at = [&](int i) { return gates[i]->get<float>(); };
    inputs = GridInputs{q->get(), k->get(), v->get(),
                        GridGates{at(0), at(1), at(2), at(3), at(4), at(5), at(6), at(7), at(8)},
                        GridDims{shape.B, shape.NH, shape.X, shape.Y, shape.DQK, shape.DV}, orientations, dtype};
  }
};

// The problem exactly as the kernel sees it: q, k, v rounded to dtype, gates to float32.
ref::OrientedGridProblem kernel_problem(const ref::GridShape& shape, ref::GateMode mode, DType dtype, std::uint64_t seed) {
  ref::OrientedGridProblem p = ref::random_oriented_problem(shape, mode, seed);
  p.q = check::round_to(p.q, dtype), p.k = check::round_to(p.k, dtype), p.v = check::round_to(p.v, dtype);
  for (auto& g : p.gates) g = check::round_to_float(g);
  return p;
}

// Runs f(stream) on a stream of its own and waits for it.
template <class F>
void on_stream(const char* what, F f) {
  cudaStream_t stream = nullptr;
  check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  f(stream);
  check_cuda(cudaStreamSynchronize(stream), what);
  check_cuda(cudaStreamDestroy(stream), "stream");
}

// The kernel's h (written by launch(h, stream) into a poisoned buffer shaped like the oracle's)
// against the oracle, bounded by the float32 baseline runs.
template <std::size_t N, class Launch>
check::Report compare_h(const xt::xtensor<double, N>& oracle, const std::vector<std::vector<check::Named<float>>>& runs,
                        DType dtype, double scale, const char* what, Launch launch) {
  const auto h = poisoned(oracle.size() * element_size(dtype));
  on_stream(what, [&](cudaStream_t stream) { launch(h->get(), stream); });
  const auto kernel = download(*h, shape_of(oracle), dtype);
  const std::map<std::string, DType> dtypes{{"h", dtype}};
  const std::vector<check::Named<double>> oracle_tensors{check::named("h", oracle)};
  const auto baseline = check::baseline_errors(runs, oracle_tensors, dtypes, scale);
  return check::kernel_compare({check::named("h", kernel)}, oracle_tensors, baseline, dtypes, scale);
}

// The kernel's gradients of a sequence or a DAG (dq, dk, dv of dtype; dS, dT, dM, dD float32; written
// by launch(outputs, stream) into poisoned buffers shaped like the oracle's) against the oracle,
// bounded by the float32 baseline runs.
template <class Grad, class Launch>
check::Report compare_grads(const Grad& oracle, const std::vector<std::vector<check::Named<float>>>& runs, DType dtype,
                            double scale, const char* what, Launch launch) {
  const auto oracle_tensors = ref::tensors(oracle);
  std::vector<std::unique_ptr<DeviceBuffer>> out;
  std::map<std::string, DType> dtypes;
  for (std::size_t i = 0; i < oracle_tensors.size(); ++i) {
    const DType t = i < 3 ? dtype : DType::float32;
    out.push_back(poisoned(static_cast<std::size_t>(oracle_tensors[i].size) * element_size(t)));
    dtypes[oracle_tensors[i].name] = t;
  }
  on_stream(what, [&](cudaStream_t stream) { launch(out, stream); });
  Grad kernel;
  kernel.dq = download(*out[0], shape_of(oracle.dq), dtype);
  kernel.dk = download(*out[1], shape_of(oracle.dk), dtype);
  kernel.dv = download(*out[2], shape_of(oracle.dv), dtype);
  kernel.dS = download(*out[3], shape_of(oracle.dS), DType::float32);
  kernel.dT = download(*out[4], shape_of(oracle.dT), DType::float32);
  kernel.dM = download(*out[5], shape_of(oracle.dM), DType::float32);
  kernel.dD = download(*out[6], shape_of(oracle.dD), DType::float32);
  const auto baseline = check::baseline_errors(runs, oracle_tensors, dtypes, scale);
  return check::kernel_compare(ref::tensors(kernel), oracle_tensors, baseline, dtypes, scale);
}

// A 1-D problem exactly as the kernels see it, and on the device.
struct SequenceCase {
  ref::SequenceProblem<double> p;
  std::unique_ptr<DeviceBuffer> q, k, v, dh, S, T, M, D;
  SequenceInputs inputs;
  SequenceCase(const ref::SequenceShape& shape, DType dtype, std::uint64_t seed) : p(ref::random_problem(shape, seed)) {
    // Transitions the chunk products must get exactly: 0, 1, -1, and one too small to divide by.
    for (std::size_t t = 0; t < p.T.size(); ++t) {
      if (t % 7 == 3) p.T.flat(t) = 0.0;
      if (t % 11 == 5) p.T.flat(t) = 1.0;
      if (t % 13 == 6) p.T.flat(t) = -1.0;
      if (t % 17 == 8) p.T.flat(t) = 1e-35;
    }
    p.q = check::round_to(p.q, dtype), p.k = check::round_to(p.k, dtype), p.v = check::round_to(p.v, dtype);
    p.dh = check::round_to(p.dh, dtype);
    p.S = check::round_to_float(p.S), p.T = check::round_to_float(p.T), p.M = check::round_to_float(p.M);
    p.D = check::round_to_float(p.D);
    q = upload(p.q, dtype), k = upload(p.k, dtype), v = upload(p.v, dtype), dh = upload(p.dh, dtype);
    S = upload(p.S, DType::float32), T = upload(p.T, DType::float32), M = upload(p.M, DType::float32);
    D = upload(p.D, DType::float32);
    inputs = SequenceInputs{q->get(), k->get(), v->get(), S->get<float>(), T->get<float>(), M->get<float>(),
                            D->get<float>(), SequenceDims{shape.B, shape.NH, shape.S, shape.DQK, shape.DV}, dtype};
  }
};

}  // namespace

KernelCheck check_sequence(const ref::SequenceShape& shape, DType dtype, std::uint64_t seed) {
  KernelCheck c;
  c.name = fmt::format("sequence {} {}", to_string(dtype), shape.name());
  // The kernel's form in float32 (in plain bf16 arithmetic for bf16: the flash-attention criterion).
  const Operands operands = dtype == DType::bfloat16 ? Operands::bf16 : Operands::exact;
  const ref::SequenceForm kernel_form{ref::SequenceForm::chunkwise, 64, ref::Aggregates::prefix, operands};
  c.baseline = fmt::format("float32 reference (recurrent; {})", kernel_form.name());
  const SequenceCase x(shape, dtype, seed);
  const double scale = x.p.scale();
  const auto oracle = ref::sequence_forward<double>(x.p.inputs(), {ref::SequenceForm::recurrent}, {});
  const auto p32 = x.p.cast<float>();
  std::vector<xt::xtensor<float, 4>> kept;
  std::vector<std::vector<check::Named<float>>> runs;
  for (const ref::SequenceForm& form : {ref::SequenceForm{ref::SequenceForm::recurrent}, kernel_form}) {
    kept.push_back(ref::sequence_forward<float>(p32.inputs(), form, {}));
    runs.push_back({check::named("h", kept.back())});
  }
  c.report = compare_h(oracle, runs, dtype, scale, "pLSTM sequence forward",
                       [&](void* h, cudaStream_t stream) { sequence_forward(x.inputs, h, {}, stream); });
  return c;
}

KernelCheck check_sequence_backward(const ref::SequenceShape& shape, DType dtype, std::uint64_t seed) {
  KernelCheck c;
  c.name = fmt::format("sequence backward {} {}", to_string(dtype), shape.name());
  const Operands operands = dtype == DType::bfloat16 ? Operands::bf16 : Operands::exact;
  c.baseline = fmt::format("float32 reference (chunk size 1; 64 in the kernel's prefix order{})",
                           operands == Operands::bf16 ? " with bf16 operands" : "");
  const SequenceCase x(shape, dtype, seed);
  const double scale = x.p.scale();
  const auto oracle = ref::sequence_backward<double>(x.p.inputs(), x.p.dh, 1, {});
  const auto p32 = x.p.cast<float>();
  std::vector<ref::SequenceGrad<float>> kept;
  std::vector<std::vector<check::Named<float>>> runs;
  for (const index_t chunk : {1, 64}) {
    kept.push_back(ref::sequence_backward<float>(p32.inputs(), p32.dh, chunk, {}, ref::Aggregates::prefix,
                                                 chunk == 1 ? Operands::exact : operands));
    runs.push_back(ref::tensors(kept.back()));
  }
  c.report = compare_grads(oracle, runs, dtype, scale, "pLSTM sequence backward", [&](const auto& out, cudaStream_t stream) {
    const auto f = [&](int i) { return out[i]->template get<float>(); };
    const SequenceGradients grad{out[0]->get(), out[1]->get(), out[2]->get(), f(3), f(4), f(5), f(6)};
    sequence_backward(x.inputs, x.dh->get(), grad, {}, stream);
  });
  return c;
}

namespace {

// A DAG problem exactly as the kernels see it, its graph uploaded, and its inputs on the device.
struct DagCase {
  ref::DagProblem<double> p;
  graph::Flat flat;
  std::unique_ptr<DagPlan> plan;
  std::unique_ptr<DeviceBuffer> q, k, v, dh, S, T, M, D;
  DagInputs inputs;
  DagCase(const graph::Dag& dag, const ref::DagShape& shape, ref::GateMode mode, DType dtype, std::uint64_t seed)
      : p(ref::random_problem(dag, shape, mode, seed)), flat(graph::flatten(dag)) {
    p.q = check::round_to(p.q, dtype), p.k = check::round_to(p.k, dtype), p.v = check::round_to(p.v, dtype);
    p.dh = check::round_to(p.dh, dtype);
    p.S = check::round_to_float(p.S), p.T = check::round_to_float(p.T), p.M = check::round_to_float(p.M);
    p.D = check::round_to_float(p.D);
    plan = std::make_unique<DagPlan>(DagGraph{flat.in_offsets.data(), flat.in_edges.data(), flat.out_offsets.data(),
                                              flat.out_edges.data(), flat.level_offsets.data(), flat.level_nodes.data(),
                                              dag.num_nodes(), dag.num_edges(),
                                              static_cast<std::int64_t>(flat.level_offsets.size()) - 1});
    q = upload(p.q, dtype), k = upload(p.k, dtype), v = upload(p.v, dtype), dh = upload(p.dh, dtype);
    S = upload(p.S, DType::float32), T = upload(p.T, DType::float32), M = upload(p.M, DType::float32);
    D = upload(p.D, DType::float32);
    inputs = DagInputs{q->get(), k->get(), v->get(), S->get<float>(), T->get<float>(), M->get<float>(),
                       D->get<float>(), shape.B, shape.NH, shape.DQK, shape.DV, dtype};
  }
};

}  // namespace

KernelCheck check_dag(const graph::Dag& dag, const ref::DagShape& shape, ref::GateMode mode, DType dtype,
                      std::uint64_t seed) {
  KernelCheck c;
  c.name = fmt::format("dag {} {} {}", to_string(dtype), to_string(mode), shape.name(dag));
  c.baseline = "float32 reference (recurrent, levels)";
  const DagCase x(dag, shape, mode, dtype, seed);
  const double scale = x.p.scale();
  const auto oracle = ref::dag_forward<double>(dag, x.p.inputs(), ref::DagForm::recurrent, {});
  const auto p32 = x.p.cast<float>();
  std::vector<xt::xtensor<float, 4>> kept;
  std::vector<std::vector<check::Named<float>>> runs;
  for (const auto form : {ref::DagForm::recurrent, ref::DagForm::levels}) {
    kept.push_back(ref::dag_forward<float>(dag, p32.inputs(), form, {}));
    runs.push_back({check::named("h", kept.back())});
  }
  c.report = compare_h(oracle, runs, dtype, scale, "pLSTM DAG forward",
                       [&](void* h, cudaStream_t stream) { dag_forward(*x.plan, x.inputs, h, {}, stream); });
  return c;
}

KernelCheck check_dag_backward(const graph::Dag& dag, const ref::DagShape& shape, ref::GateMode mode, DType dtype,
                               std::uint64_t seed) {
  KernelCheck c;
  c.name = fmt::format("dag backward {} {} {}", to_string(dtype), to_string(mode), shape.name(dag));
  c.baseline = "float32 reference (recurrent backward)";
  const DagCase x(dag, shape, mode, dtype, seed);
  const double scale = x.p.scale();
  const auto oracle = ref::dag_backward<double>(dag, x.p.inputs(), x.p.dh, {});
  const auto p32 = x.p.cast<float>();
  const auto g32 = ref::dag_backward<float>(dag, p32.inputs(), p32.dh, {});
  const std::vector<std::vector<check::Named<float>>> runs{ref::tensors(g32)};
  c.report = compare_grads(oracle, runs, dtype, scale, "pLSTM DAG backward", [&](const auto& out, cudaStream_t stream) {
    const auto f = [&](int i) { return out[i]->template get<float>(); };
    const DagGradients grad{out[0]->get(), out[1]->get(), out[2]->get(), f(3), f(4), f(5), f(6)};
    dag_backward(*x.plan, x.inputs, x.dh->get(), grad, {}, stream);
  });
  return c;
}

KernelCheck check_grid(const ref::GridShape& shape, int orientations, ref::GateMode mode, DType dtype,
                       std::uint64_t seed) {
  KernelCheck c;
  c.name = fmt::format("grid {} x{} {} {}", to_string(dtype), orientations, to_string(mode), shape.name());
  // bf16: also the plain bf16 computations of the parallel form (P rounded to bf16 before P V) and of
  // the chunk-map kernels' form (every product that makes or takes a node-by-node block, G = Mb W
  // included, with bf16 operands): the flash-attention criterion.
  std::vector<ref::GridForm> forms = {{ref::GridForm::recurrent}, {ref::GridForm::parallel}};
  if (dtype == DType::bfloat16)
    forms.insert(forms.end(), {{ref::GridForm::parallel, 0, Operands::bf16}, {ref::GridForm::maps, 8, Operands::bf16}});
  c.baseline = "float32 reference (";
  for (const ref::GridForm& form : forms) c.baseline += (&form == &forms[0] ? "" : "; ") + form.name();
  c.baseline += ")";
  const ref::OrientedGridProblem p = kernel_problem(shape, mode, dtype, seed);
  const double scale = check::rms(p.q, p.k, p.v);

  const auto oracle = reference_h(p.q, p.k, p.v, p.gates, orientations, {ref::GridForm::recurrent});
  const auto q32 = cast_tensor<float>(p.q), k32 = cast_tensor<float>(p.k), v32 = cast_tensor<float>(p.v);
  const auto gates32 = cast_gates<float>(p.gates);
  std::vector<std::vector<check::Named<float>>> runs;
  std::vector<xt::xtensor<float, 5>> kept;
  for (const ref::GridForm& form : forms) {
    kept.push_back(reference_h(q32, k32, v32, gates32, orientations, form));
    runs.push_back({check::named("h", kept.back())});
  }

  const DeviceProblem device(p, shape, orientations, dtype);
  c.report = compare_h(oracle, runs, dtype, scale, "pLSTM grid forward",
                       [&](void* h, cudaStream_t stream) { grid_forward(device.inputs, h, {}, stream); });
  return c;
}

KernelCheck check_grid_backward(const ref::GridShape& shape, int orientations, ref::GateMode mode, DType dtype,
                                std::uint64_t seed) {
  KernelCheck c;
  c.name = fmt::format("grid backward {} x{} {} {}", to_string(dtype), orientations, to_string(mode), shape.name());
  // bf16: also the plain bf16 computation of the chunk-map kernels' form (every product that makes or
  // takes a node-by-node block with bf16 operands, the gate gradients' included): the flash-attention
  // criterion.
  std::vector<ref::GridForm> forms = {{ref::GridForm::chunkwise, 1}, {ref::GridForm::chunkwise, 2}};
  if (dtype == DType::bfloat16) forms.push_back({ref::GridForm::maps, 8, Operands::bf16});
  c.baseline = "float32 reference (";
  for (const ref::GridForm& form : forms) c.baseline += (&form == &forms[0] ? "" : "; ") + form.name();
  c.baseline += ")";
  const ref::OrientedGridProblem p = kernel_problem(shape, mode, dtype, seed);
  const xt::xtensor<double, 5> dh = kernel_problem(shape, mode, dtype, seed + 1).v;  // N(0, 1), v's shape
  const double scale = check::rms(p.q, p.k, p.v, dh);

  const auto oracle = reference_grads(p.q, p.k, p.v, p.gates, dh, orientations, {ref::GridForm::chunkwise, 1});
  const auto q32 = cast_tensor<float>(p.q), k32 = cast_tensor<float>(p.k), v32 = cast_tensor<float>(p.v);
  const auto dh32 = cast_tensor<float>(dh);
  const auto gates32 = cast_gates<float>(p.gates);
  std::vector<std::vector<xt::xtensor<float, 5>>> kept;
  std::vector<std::vector<check::Named<float>>> runs;
  for (const ref::GridForm& form : forms) {
    kept.push_back(reference_grads(q32, k32, v32, gates32, dh32, orientations, form));
    runs.push_back(named_grads(kept.back()));
  }

  const DeviceProblem device(p, shape, orientations, dtype);
  const auto dh_device = upload(dh, dtype);
  std::vector<std::unique_ptr<DeviceBuffer>> out;
  for (std::size_t i = 0; i < oracle.size(); ++i)
    out.push_back(poisoned(oracle[i].size() * (i < 3 ? element_size(dtype) : sizeof(float))));
  const auto f = [&](int i) { return out[i]->get<float>(); };
  const GridGradients grad{out[0]->get(), out[1]->get(), out[2]->get(), f(3), f(4), f(5), f(6), f(7), f(8), f(9), f(10), f(11)};
  on_stream("pLSTM grid backward",
            [&](cudaStream_t stream) { grid_backward(device.inputs, dh_device->get(), grad, {}, stream); });

  std::vector<xt::xtensor<double, 5>> kernel;
  std::map<std::string, DType> dtypes;
  for (std::size_t i = 0; i < oracle.size(); ++i) {
    const DType t = i < 3 ? dtype : DType::float32;
    kernel.push_back(download(*out[i], shape_of(oracle[i]), t));
    dtypes[kGradNames[i]] = t;
  }
  const auto oracle_tensors = named_grads(oracle);
  const auto baseline = check::baseline_errors(runs, oracle_tensors, dtypes, scale);
  c.report = check::kernel_compare(named_grads(kernel), oracle_tensors, baseline, dtypes, scale);
  return c;
}

}  // namespace flashlstm::cuda::plstm
