// Kernel-against-reference checks (see check.hpp).
#include "cuda/mlstm/check.hpp"

#include "cuda/check_arrays.hpp"
#include "reference/mlstm/varlen.hpp"

#include <fmt/ranges.h>

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <vector>

namespace flashlstm::cuda::mlstm {

namespace ref = flashlstm::mlstm;
using ref::Problem;
using ref::ProblemShape;

namespace {

using flashlstm::cuda::download;
using flashlstm::cuda::poisoned;
using flashlstm::cuda::upload;

// The inputs exactly as the kernel sees them: q, k, v and dh in the input type, the gates in theirs,
// the states float32.
Problem<double> kernel_inputs(const Problem<double>& p, const KernelTypes& types) {
  Problem<double> k = p;
  for (auto* x : {&k.q, &k.k, &k.v, &k.dh}) *x = check::round_to(*x, types.inputs);
  k.igate = check::round_to(p.igate, types.gates());
  k.fgate = check::round_to(p.fgate, types.gates());
  k.dC_last = check::round_to_float(p.dC_last);
  k.dn_last = check::round_to_float(p.dn_last);
  k.dm_last = check::round_to_float(p.dm_last);
  if (k.initial) {
    k.initial->C = check::round_to_float(p.initial->C);
    k.initial->n = check::round_to_float(p.initial->n);
    k.initial->m = check::round_to_float(p.initial->m);
  }
  return k;
}

// The type each tensor is written in: h and the input gradients in the kernel's types, states float32.
std::map<std::string, DType> output_dtypes(const KernelTypes& types) {
  std::map<std::string, DType> t;
  for (const char* name : {"h", "dq", "dk", "dv"}) t[name] = types.inputs;
  for (const char* name : {"digate", "dfgate"}) t[name] = types.gates();
  for (const char* name : {"C", "n", "m", "dC0", "dn0", "dm0"}) t[name] = DType::float32;
  return t;
}

// A problem's tensors on the device.
struct DeviceProblem {
  std::unique_ptr<DeviceBuffer> q, k, v, igate, fgate, dh, C0, n0, m0, dC_last, dn_last, dm_last;
  Inputs inputs;

  DeviceProblem(const Problem<double>& p, const ProblemShape& s, const KernelTypes& types)
      : q(upload(p.q, types.inputs)),
        k(upload(p.k, types.inputs)),
        v(upload(p.v, types.inputs)),
        igate(upload(p.igate, types.gates())),
        fgate(upload(p.fgate, types.gates())),
        dh(upload(p.dh, types.inputs)),
        dC_last(upload(p.dC_last, DType::float32)),
        dn_last(upload(p.dn_last, DType::float32)),
        dm_last(upload(p.dm_last, DType::float32)) {
    if (p.initial) {
      C0 = upload(p.initial->C, DType::float32);
      n0 = upload(p.initial->n, DType::float32);
      m0 = upload(p.initial->m, DType::float32);
    }
    inputs = {q->get(), k->get(), v->get(), igate->get(), fgate->get(), Dims{s.B, s.NH, s.S, s.DQK, s.DV},
              types.inputs, types.float32_gates};
  }
  ConstState initial() const { return {C0->get<float>(), n0->get<float>(), m0->get<float>()}; }
};

// A float32 state of the problem's sizes on the device, poisoned.
struct DeviceState {
  std::unique_ptr<DeviceBuffer> C, n, m;
  explicit DeviceState(const ProblemShape& s)
      : C(poisoned(s.B * s.NH * s.DQK * s.DV * 4)), n(poisoned(s.B * s.NH * s.DQK * 4)), m(poisoned(s.B * s.NH * 4)) {}
  State view() const { return {C->get<float>(), n->get<float>(), m->get<float>()}; }
  void assign(const DeviceProblem& p) {
    check_cuda(cudaMemcpy(C->get(), p.C0->get(), C->bytes(), cudaMemcpyDeviceToDevice), "copy");
    check_cuda(cudaMemcpy(n->get(), p.n0->get(), n->bytes(), cudaMemcpyDeviceToDevice), "copy");
    check_cuda(cudaMemcpy(m->get(), p.m0->get(), m->bytes(), cudaMemcpyDeviceToDevice), "copy");
  }
  ref::State<double> download(const ProblemShape& s) const {
    return {flashlstm::cuda::download(*C, Shape<4>{s.B, s.NH, s.DQK, s.DV}, DType::float32),
            flashlstm::cuda::download(*n, Shape<3>{s.B, s.NH, s.DQK}, DType::float32),
            flashlstm::cuda::download(*m, Shape<2>{s.B, s.NH}, DType::float32)};
  }
};

// The kernel's results against the oracle, with bounds from the baseline runs (check.hpp).
template <class Kernel, class Oracle, class Run>
check::Report judge(const Kernel& kernel, const Oracle& oracle, const std::vector<Run>& runs, const KernelTypes& types,
                    double scale) {
  std::vector<std::vector<check::Named<float>>> run_tensors;
  for (const auto& r : runs) run_tensors.push_back(ref::tensors(r));
  const auto dtypes = output_dtypes(types);
  const auto baseline = check::baseline_errors(run_tensors, ref::tensors(oracle), dtypes, scale);
  return check::kernel_compare(ref::tensors(kernel), ref::tensors(oracle), baseline, dtypes, scale);
}

}  // namespace

namespace {

// The reference on one batch (`cu` null) or on packed sequences.
template <class T>
ref::Output<T> reference_forward(const Problem<T>& p, const std::vector<flashlstm::index_t>* cu, const ref::Form& form,
                                 const Options& o) {
  return cu ? ref::forward_varlen(p.inputs(), *cu, p.initial_view(), form, o)
            : ref::forward(p.inputs(), p.initial_view(), form, o);
}
template <class T>
ref::InputGrad<T> reference_backward(const Problem<T>& p, const std::vector<flashlstm::index_t>* cu,
                                     const ref::Form& form, const Options& o) {
  return cu ? ref::backward_varlen(p.inputs(), *cu, p.initial_view(), p.output_grad(), form, o)
            : ref::backward(p.inputs(), p.initial_view(), p.output_grad(), form, o);
}

// The chunkwise kernels (forward_chunkwise and backward_chunkwise, or their packed versions where
// `cu` is set) on problem p: its inputs of `tokens`' sizes, its states of `states`' sizes.
KernelCheck check_kernels(KernelCheck c, const Problem<double>& p, const ProblemShape& tokens,
                          const ProblemShape& states, const std::vector<flashlstm::index_t>* cu, int chunk_size,
                          const Options& options, const KernelTypes& types, bool backward) {
  const DType dtype = types.inputs;
  using ref::Form;
  const Problem<float> pf = ref::cast_problem<float>(p);
  const double scale = p.scale();
  const Form oracle_form{Form::chunkwise, 64};
  const flashlstm::index_t L = chunk_size, other_chunk = chunk_size == 64 ? 128 : 64;
  const std::vector<std::int64_t> offsets = cu ? std::vector<std::int64_t>(cu->begin(), cu->end()) : std::vector<std::int64_t>{};

  // The baseline runs: float32 at the kernel's chunk size, at another one and in recurrent form; or
  // bf16 operands at the kernel's chunk size (the forward's own: the fused bf16 forward computes with
  // 64-token chunks).
  const bool bf16 = dtype == DType::bfloat16;
  DeviceProblem d(p, tokens, types);
  const flashlstm::index_t L_forward = forward_chunk_size(d.inputs, chunk_size);
  c.baseline = bf16 ? fmt::format("bf16-operand chunkwise(L={}), float32 accumulation", L_forward)
                    : fmt::format("float32 reference: chunkwise(L={}), chunkwise(L={}), recurrent", L, other_chunk);
  if (bf16 && backward) c.baseline += fmt::format("; backward at L={}", L);
  const auto baseline_forms = [&](flashlstm::index_t bf16_chunk) {
    if (bf16) return std::vector{Form{Form::chunkwise, bf16_chunk, ref::Operands::bf16}};
    return std::vector{Form{Form::chunkwise, L}, Form{Form::chunkwise, other_chunk}, Form{Form::recurrent}};
  };
  std::vector<ref::Output<float>> forward_runs;
  for (const Form& f : baseline_forms(L_forward)) forward_runs.push_back(reference_forward(pf, cu, f, options));
  const ref::Output<double> oracle = reference_forward(p, cu, oracle_form, options);

  const ConstState initial = tokens.initial_state ? d.initial() : ConstState{};
  const ConstState* init = tokens.initial_state ? &initial : nullptr;
  const auto h = poisoned(p.dh.size() * element_size(dtype));
  DeviceState last(states);
  cudaStream_t stream = nullptr;
  check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  if (cu) forward_varlen(d.inputs, offsets, init, h->get(), last.view(), chunk_size, options, stream);
  else forward_chunkwise(d.inputs, init, h->get(), last.view(), chunk_size, options, stream);
  check_cuda(cudaStreamSynchronize(stream), "forward");
  const ref::Output<double> kernel{download(*h, shape_of(p.dh), dtype), last.download(states)};
  c.report = judge(kernel, oracle, forward_runs, types, scale);

  if (backward) {
    std::vector<ref::InputGrad<float>> grad_runs;
    for (const Form& f : baseline_forms(L)) grad_runs.push_back(reference_backward(pf, cu, f, options));
    const ref::InputGrad<double> oracle_grad = reference_backward(p, cu, oracle_form, options);
    const auto dq = poisoned(p.q.size() * element_size(dtype)), dk = poisoned(p.k.size() * element_size(dtype)),
               dv = poisoned(p.v.size() * element_size(dtype)), dig = poisoned(p.igate.size() * element_size(types.gates())),
               dfg = poisoned(p.fgate.size() * element_size(types.gates()));
    DeviceState dinitial(states);
    const InputGrad out{dq->get(), dk->get(), dv->get(), dig->get(), dfg->get(),
                        tokens.initial_state ? dinitial.view() : State{}};
    const OutputGrad grad{d.dh->get(), d.dC_last->get<float>(), d.dn_last->get<float>(), d.dm_last->get<float>()};
    if (cu) backward_varlen(d.inputs, offsets, init, grad, out, chunk_size, options, stream);
    else backward_chunkwise(d.inputs, init, grad, out, chunk_size, options, stream);
    check_cuda(cudaStreamSynchronize(stream), "backward");
    ref::InputGrad<double> kernel_grad{download(*dq, shape_of(p.q), dtype),    download(*dk, shape_of(p.k), dtype),
                                       download(*dv, shape_of(p.v), dtype),    download(*dig, shape_of(p.igate), types.gates()),
                                       download(*dfg, shape_of(p.fgate), types.gates()), std::nullopt};
    if (tokens.initial_state) kernel_grad.dinitial = dinitial.download(states);
    c.report.add(judge(kernel_grad, oracle_grad, grad_runs, types, scale));
  }
  cudaStreamDestroy(stream);
  return c;
}

}  // namespace

std::string KernelTypes::name() const {
  return float32_gates ? fmt::format("{}, float32 gates", to_string(inputs)) : std::string(to_string(inputs));
}

KernelCheck check_chunkwise(const ProblemShape& shape, int chunk_size, const Options& options,
                            const KernelTypes& types, std::uint64_t seed, bool backward) {
  KernelCheck c;
  c.name = fmt::format("chunkwise {} {} L={} {}", types.name(), ref::variant_name(options), chunk_size,
                       shape.name());
  const Problem<double> p = kernel_inputs(ref::random_problem<double>(shape, seed), types);
  return check_kernels(std::move(c), p, shape, shape, nullptr, chunk_size, options, types, backward);
}

KernelCheck check_varlen(const ProblemShape& shape, const std::vector<flashlstm::index_t>& lengths, int chunk_size,
                         const Options& options, const KernelTypes& types, std::uint64_t seed) {
  std::vector<flashlstm::index_t> cu{0};
  for (flashlstm::index_t n : lengths) cu.push_back(cu.back() + n);
  const auto N = static_cast<flashlstm::index_t>(lengths.size());
  const ProblemShape tokens{1, shape.NH, cu.back(), shape.DQK, shape.DV, shape.initial_state};
  const ProblemShape states{N, shape.NH, 1, shape.DQK, shape.DV, shape.initial_state};
  KernelCheck c;
  c.name = fmt::format("varlen {} {} L={} lengths [{}] NH{} DQK{} DV{}{}", types.name(), ref::variant_name(options),
                       chunk_size, fmt::join(lengths, ", "), shape.NH, shape.DQK, shape.DV,
                       shape.initial_state ? " +state" : "");
  // The tokens and dh of one packed batch; each sequence's initial state and final-state gradients
  // from a batch of N.
  Problem<double> p = kernel_inputs(ref::random_problem<double>(tokens, seed), types);
  const Problem<double> per_sequence = kernel_inputs(ref::random_problem<double>({N, shape.NH, 1, shape.DQK, shape.DV, true}, seed + 1), types);
  p.initial = shape.initial_state ? per_sequence.initial : std::nullopt;
  p.dC_last = per_sequence.dC_last;
  p.dn_last = per_sequence.dn_last;
  p.dm_last = per_sequence.dm_last;
  return check_kernels(std::move(c), p, tokens, states, &cu, chunk_size, options, types, true);
}

check::Report check_nonfinite(const ProblemShape& shape, int chunk_size, const Options& options, const KernelTypes& types,
                              std::uint64_t seed, char which, flashlstm::index_t token) {
  const DType dtype = types.inputs;
  Problem<double> p = kernel_inputs(ref::random_problem<double>(shape, seed), types);
  auto& x = which == 'q' ? p.q : which == 'k' ? p.k : p.v;
  x(0, 0, token, 0) = std::numeric_limits<double>::quiet_NaN();
  const ref::Output<double> oracle = ref::forward_chunkwise(p.inputs(), p.initial_view(), 64, options);
  const ref::InputGrad<double> oracle_grad =
      ref::backward_chunkwise(p.inputs(), p.initial_view(), p.output_grad(), 64, options);

  DeviceProblem d(p, shape, types);
  const ConstState initial = shape.initial_state ? d.initial() : ConstState{};
  const ConstState* init = shape.initial_state ? &initial : nullptr;
  const auto h = poisoned(p.dh.size() * element_size(dtype));
  const auto dq = poisoned(p.q.size() * element_size(dtype)), dk = poisoned(p.k.size() * element_size(dtype)),
             dv = poisoned(p.v.size() * element_size(dtype)), dig = poisoned(p.igate.size() * element_size(types.gates())),
             dfg = poisoned(p.fgate.size() * element_size(types.gates()));
  DeviceState last(shape), dinitial(shape);
  forward_chunkwise(d.inputs, init, h->get(), last.view(), chunk_size, options, cudaStreamPerThread);
  const OutputGrad grad{d.dh->get(), d.dC_last->get<float>(), d.dn_last->get<float>(), d.dm_last->get<float>()};
  backward_chunkwise(d.inputs, init, grad, {dq->get(), dk->get(), dv->get(), dig->get(), dfg->get(),
                                           shape.initial_state ? dinitial.view() : State{}},
                     chunk_size, options, cudaStreamPerThread);
  check_cuda(cudaStreamSynchronize(cudaStreamPerThread), "nonfinite");

  check::Report report;
  auto nan_mismatches = [&](const std::string& name, const auto& kernel, const auto& reference) {
    double count = 0;
    std::size_t first = kernel.size();
    for (std::size_t i = 0; i < kernel.size(); ++i)
      if (std::isnan(kernel.data()[i]) != std::isnan(reference.data()[i])) count += 1, first = std::min(first, i);
    report.add({fmt::format("{} NaN mismatches{}", name, count > 0 ? fmt::format(" (first at element {})", first) : ""),
                count, 0.5});  // a count: none allowed
  };
  const auto kernel_h = download(*h, shape_of(p.dh), dtype);
  nan_mismatches("h", kernel_h, oracle.h);
  nan_mismatches("dq", download(*dq, shape_of(p.q), dtype), oracle_grad.dq);
  nan_mismatches("dk", download(*dk, shape_of(p.k), dtype), oracle_grad.dk);
  nan_mismatches("dv", download(*dv, shape_of(p.v), dtype), oracle_grad.dv);
  nan_mismatches("digate", download(*dig, shape_of(p.igate), types.gates()), oracle_grad.digate);
  nan_mismatches("dfgate", download(*dfg, shape_of(p.fgate), types.gates()), oracle_grad.dfgate);
  double early = 0;
  for (flashlstm::index_t t = 0; t < token; ++t)
    for (flashlstm::index_t e = 0; e < shape.DV; ++e) early += std::isfinite(kernel_h(0, 0, t, e)) ? 0 : 1;
  report.add({"h non-finite before the token", early, 0.5});
  return report;
}

KernelCheck check_step(const ProblemShape& shape_in, const Options& options, const KernelTypes& types,
                       std::uint64_t seed) {
  const DType dtype = types.inputs;
  ProblemShape shape = shape_in;
  shape.S = 1;
  shape.initial_state = true;
  KernelCheck c;
  c.name = fmt::format("step {} {} {}", types.name(), ref::variant_name(options), shape.name());
  c.baseline = "float32 step";
  const Problem<double> p = kernel_inputs(ref::random_problem<double>(shape, seed), types);
  const Problem<float> pf = ref::cast_problem<float>(p);
  auto token = [](const auto& x) { return xt::eval(xt::view(x, xt::all(), xt::all(), 0, xt::all())); };
  auto gate = [](const auto& x) { return xt::eval(xt::view(x, xt::all(), xt::all(), 0)); };
  auto as_output = [](const auto& h, const auto& state) {
    using T = typename std::decay_t<decltype(h)>::value_type;
    return ref::Output<T>{xt::eval(xt::expand_dims(h, 2)), state};
  };

  ref::State<double> oracle_state = *p.initial;
  const auto oracle_h = ref::step<double>(token(p.q), token(p.k), token(p.v), gate(p.igate), gate(p.fgate),
                                          oracle_state, options);
  ref::State<float> low_state = *pf.initial;
  const auto low_h =
      ref::step<float>(token(pf.q), token(pf.k), token(pf.v), gate(pf.igate), gate(pf.fgate), low_state, options);

  DeviceProblem d(p, shape, types);
  DeviceState state(shape);
  state.assign(d);
  const auto h = poisoned(p.dh.size() * element_size(dtype));
  step(d.inputs, state.view(), h->get(), options, cudaStreamPerThread);
  check_cuda(cudaStreamSynchronize(cudaStreamPerThread), "step");
  const auto kernel = as_output(download(*h, Shape<3>{shape.B, shape.NH, shape.DV}, dtype), state.download(shape));
  c.report = judge(kernel, as_output(oracle_h, oracle_state), std::vector{as_output(low_h, low_state)}, types,
                   p.scale());
  return c;
}

KernelCheck check_sequence(const ProblemShape& shape_in, int chunk_size, const Options& options, const KernelTypes& types,
                           std::uint64_t seed) {
  const DType dtype = types.inputs;
  ProblemShape shape = shape_in;
  shape.initial_state = true;
  KernelCheck c;
  c.name = fmt::format("sequence {} {} L={} {}", types.name(), ref::variant_name(options), chunk_size,
                       shape.name());
  const Problem<double> p = kernel_inputs(ref::random_problem<double>(shape, seed), types);
  const Problem<float> pf = ref::cast_problem<float>(p);
  const ref::Output<double> oracle = ref::forward_recurrent(p.inputs(), p.initial_view(), options);
  // The wrapper runs the chunkwise kernels on the bulk and steps on the rest: its baseline is the
  // chunkwise form at its chunk size in the kernel's arithmetic, and the float32 recurrent form.
  const auto operands = dtype == DType::bfloat16 ? ref::Operands::bf16 : ref::Operands::exact;
  c.baseline = fmt::format("chunkwise(L={}){}, float32 recurrent", chunk_size,
                           dtype == DType::bfloat16 ? " with bf16 operands" : "");
  const std::vector runs{ref::forward_chunkwise(pf.inputs(), pf.initial_view(), chunk_size, options, operands),
                         ref::forward_recurrent(pf.inputs(), pf.initial_view(), options)};

  DeviceProblem d(p, shape, types);
  DeviceState state(shape);
  state.assign(d);
  const auto h = poisoned(p.dh.size() * element_size(dtype));
  forward_sequence(d.inputs, state.view(), h->get(), chunk_size, options, cudaStreamPerThread);
  check_cuda(cudaStreamSynchronize(cudaStreamPerThread), "forward_sequence");
  const ref::Output<double> kernel{download(*h, shape_of(p.dh), dtype), state.download(shape)};
  c.report = judge(kernel, oracle, runs, types, p.scale());
  return c;
}

}  // namespace flashlstm::cuda::mlstm
