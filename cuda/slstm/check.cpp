// Kernel-against-reference checks of the sLSTM/LSTM (see check.hpp).
#include "cuda/slstm/check.hpp"

#include "cuda/check_arrays.hpp"

#include <cuda_runtime_api.h>

#include <map>

namespace flashlstm::cuda::slstm {

namespace ref = flashlstm::slstm;
using ref::Problem;

namespace {

// The inputs exactly as the kernel sees them: Wx, R, b in `dtype`, states and gradients float32.
Problem<double> kernel_inputs(const Problem<double>& p, DType dtype) {
  Problem<double> k = p;
  k.Wx = check::round_to(p.Wx, dtype);
  k.R = check::round_to(p.R, dtype);
  k.b = check::round_to(p.b, dtype);
  k.dh = check::round_to_float(p.dh);
  k.dlast = check::round_to_float(p.dlast);
  if (k.initial) k.initial = check::round_to_float(*p.initial);
  return k;
}

std::map<std::string, DType> output_dtypes(DType dtype) {
  return {{"states", DType::float32}, {"last", DType::float32}, {"dinitial", DType::float32},
          {"dWx", dtype},             {"dR", dtype},            {"db", dtype}};
}

template <class Kernel, class Oracle, class Run>
check::Report judge(const Kernel& kernel, const Oracle& oracle, const Run& run, DType dtype, double scale) {
  const auto dtypes = output_dtypes(dtype);
  const auto baseline = check::baseline_errors(std::vector<std::vector<check::Named<float>>>{ref::tensors(run)}, ref::tensors(oracle), dtypes, scale);
  return check::kernel_compare(ref::tensors(kernel), ref::tensors(oracle), baseline, dtypes, scale);
}

}  // namespace

KernelCheck check_sequence(const ref::ProblemShape& shape, const Options& options, DType dtype, std::uint64_t seed,
                           bool with_backward, bool with_dlast) {
  KernelCheck c;
  c.name = fmt::format("{} {} {}{}", to_string(dtype), ref::variant_name(options), shape.name(),
                       with_backward && !with_dlast ? " no dlast" : "");
  // The kernel's arithmetic on the CPU: float32, and for bf16 inputs every operand of the recurrent
  // products rounded to bf16 (a plain bf16 computation), as the bf16 kernels multiply.
  const auto operands = dtype == DType::bfloat16 ? Operands::bf16 : Operands::exact;
  c.baseline = dtype == DType::bfloat16 ? "float32 reference, bf16 operands" : "float32 reference";
  Problem<double> p = kernel_inputs(ref::random_problem<double>(shape, options, seed), dtype);
  if (!with_dlast) p.dlast.fill(0.0);
  const Problem<float> pf = ref::cast_problem<float>(p);
  const double scale = p.scale();
  const ref::Output<double> oracle = ref::forward(p.inputs(), p.initial_view(), options, true);

  const auto Wx = upload(p.Wx, dtype), R = upload(p.R, dtype), b = upload(p.b, dtype);
  const auto initial = shape.initial_state ? upload(*p.initial, DType::float32) : nullptr;
  const Inputs x{Wx->get(), R->get(), b->get(), Dims{shape.B, shape.T, shape.NH, shape.DH}, dtype};
  const auto states = poisoned(oracle.states.size() * 4), last = poisoned(oracle.last.size() * 4),
             gates = poisoned(p.Wx.size() * 4);
  cudaStream_t stream = nullptr;
  check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  const float* init = initial ? initial->get<float>() : nullptr;
  forward(x, init, {states->get<float>(), last->get<float>(), gates->get<float>()}, options, stream);
  check_cuda(cudaStreamSynchronize(stream), "slstm forward");
  const ref::Output<double> kernel{download(*states, shape_of(oracle.states), DType::float32),
                                   download(*last, shape_of(oracle.last), DType::float32), std::nullopt};
  c.report = judge(kernel, oracle, ref::forward(pf.inputs(), pf.initial_view(), options, false, operands), dtype,
                   scale);

  if (with_backward) {
    const ref::InputGrad<double> oracle_grad = ref::backward(p.inputs(), p.initial_view(), p.output_grad(), options);
    const auto dh = upload(p.dh, DType::float32), dlast = upload(p.dlast, DType::float32);
    const auto es = element_size(dtype);
    const auto dWx = poisoned(p.Wx.size() * es), dR = poisoned(p.R.size() * es), db = poisoned(p.b.size() * es);
    const auto dinitial = initial ? poisoned(p.initial->size() * 4) : nullptr;
    backward(x, init, {states->get<float>(), gates->get<float>()}, {dh->get<float>(), with_dlast ? dlast->get<float>() : nullptr},
             {dWx->get(), dR->get(), db->get(), dinitial ? dinitial->get<float>() : nullptr}, options, stream);
    check_cuda(cudaStreamSynchronize(stream), "slstm backward");
    ref::InputGrad<double> kernel_grad{download(*dWx, shape_of(p.Wx), dtype), download(*dR, shape_of(p.R), dtype),
                                       download(*db, shape_of(p.b), dtype), std::nullopt};
    if (dinitial) kernel_grad.dinitial = download(*dinitial, shape_of(*p.initial), DType::float32);
    const auto run = ref::backward(pf.inputs(), pf.initial_view(), pf.output_grad(), options, std::nullopt, operands);
    c.report.add(judge(kernel_grad, oracle_grad, run, dtype, scale));
  }
  check_cuda(cudaStreamDestroy(stream), "stream");
  return c;
}

}  // namespace flashlstm::cuda::slstm
