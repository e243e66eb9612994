// Kernel-against-reference checks (see check.hpp).
#include "cuda/mlstm/check.hpp"

#include "core/bf16.hpp"
#include "core/metrics.hpp"

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <vector>

namespace flashlstm::cuda::mlstm {

namespace ref = flashlstm::mlstm;
using ref::Problem;
using ref::ProblemShape;

namespace {

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
}

constexpr double kSlack = 4.0 / (1 << 23);  // four float32 ulps

// Device memory, poisoned with NaN (all bits set, NaN in float32 and bf16) when allocated.
class DeviceArray {
 public:
  explicit DeviceArray(std::size_t bytes) : bytes_(bytes) {
    check_cuda(cudaMalloc(&ptr_, std::max<std::size_t>(bytes, 1)), "cudaMalloc");
    check_cuda(cudaMemset(ptr_, 0xff, bytes), "cudaMemset");
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { cudaFree(ptr_); }
  template <class T = void>
  T* get() const {
    return static_cast<T*>(ptr_);
  }
  std::size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

std::size_t element_size(DType dtype) { return dtype == DType::float32 ? 4 : 2; }

// x rounded to `dtype` and back to double.
template <std::size_t N>
xt::xtensor<double, N> rounded(const xt::xtensor<double, N>& x, DType dtype) {
  xt::xtensor<double, N> out = x;
  for (auto& e : out) e = dtype == DType::float32 ? static_cast<double>(static_cast<float>(e)) : round_to_bf16(e);
  return out;
}

template <std::size_t N>
std::unique_ptr<DeviceArray> upload(const xt::xtensor<double, N>& x, DType dtype) {
  auto a = std::make_unique<DeviceArray>(x.size() * element_size(dtype));
  if (dtype == DType::float32) {
    std::vector<float> host(x.begin(), x.end());
    check_cuda(cudaMemcpy(a->get(), host.data(), a->bytes(), cudaMemcpyHostToDevice), "upload");
  } else {
    std::vector<std::uint16_t> host(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) host[i] = bf16(static_cast<float>(x.data()[i])).bits;
    check_cuda(cudaMemcpy(a->get(), host.data(), a->bytes(), cudaMemcpyHostToDevice), "upload");
  }
  return a;
}

template <std::size_t N>
xt::xtensor<double, N> download(const DeviceArray& a, const std::array<std::size_t, N>& shape, DType dtype) {
  xt::xtensor<double, N> x(shape);
  if (dtype == DType::float32) {
    std::vector<float> host(x.size());
    check_cuda(cudaMemcpy(host.data(), a.get(), host.size() * 4, cudaMemcpyDeviceToHost), "download");
    std::copy(host.begin(), host.end(), x.begin());
  } else {
    std::vector<std::uint16_t> host(x.size());
    check_cuda(cudaMemcpy(host.data(), a.get(), host.size() * 2, cudaMemcpyDeviceToHost), "download");
    for (std::size_t i = 0; i < x.size(); ++i) {
      bf16 b;
      b.bits = host[i];
      x.data()[i] = static_cast<float>(b);
    }
  }
  return x;
}

template <std::size_t N>
std::array<std::size_t, N> shape_of_tensor(const xt::xtensor<double, N>& x) {
  std::array<std::size_t, N> s{};
  std::copy(x.shape().begin(), x.shape().end(), s.begin());
  return s;
}

// The inputs exactly as the kernel sees them: q, k, v, gates and dh in `dtype`, the states float32.
Problem<double> kernel_inputs(const Problem<double>& p, DType dtype) {
  Problem<double> k = p;
  for (auto* x : {&k.q, &k.k, &k.v, &k.dh}) *x = rounded(*x, dtype);
  k.igate = rounded(p.igate, dtype);
  k.fgate = rounded(p.fgate, dtype);
  k.dC_last = rounded(p.dC_last, DType::float32);
  k.dn_last = rounded(p.dn_last, DType::float32);
  k.dm_last = rounded(p.dm_last, DType::float32);
  if (k.initial) {
    k.initial->C = rounded(p.initial->C, DType::float32);
    k.initial->n = rounded(p.initial->n, DType::float32);
    k.initial->m = rounded(p.initial->m, DType::float32);
  }
  return k;
}

// A problem's tensors on the device.
struct DeviceProblem {
  std::unique_ptr<DeviceArray> q, k, v, igate, fgate, dh, C0, n0, m0, dC_last, dn_last, dm_last;
  Inputs inputs;

  DeviceProblem(const Problem<double>& p, const ProblemShape& s, DType dtype)
      : q(upload(p.q, dtype)),
        k(upload(p.k, dtype)),
        v(upload(p.v, dtype)),
        igate(upload(p.igate, dtype)),
        fgate(upload(p.fgate, dtype)),
        dh(upload(p.dh, dtype)),
        dC_last(upload(p.dC_last, DType::float32)),
        dn_last(upload(p.dn_last, DType::float32)),
        dm_last(upload(p.dm_last, DType::float32)) {
    if (p.initial) {
      C0 = upload(p.initial->C, DType::float32);
      n0 = upload(p.initial->n, DType::float32);
      m0 = upload(p.initial->m, DType::float32);
    }
    inputs = {q->get(), k->get(), v->get(), igate->get(), fgate->get(), Dims{s.B, s.NH, s.S, s.DQK, s.DV}, dtype};
  }
  ConstState initial() const { return {C0->get<float>(), n0->get<float>(), m0->get<float>()}; }
};

// Device arrays for a state of the problem's sizes (float32).
struct DeviceState {
  DeviceArray C, n, m;
  explicit DeviceState(const ProblemShape& s)
      : C(s.B * s.NH * s.DQK * s.DV * 4), n(s.B * s.NH * s.DQK * 4), m(s.B * s.NH * 4) {}
  State view() const { return {C.get<float>(), n.get<float>(), m.get<float>()}; }
  void assign(const DeviceProblem& p) {
    check_cuda(cudaMemcpy(C.get(), p.C0->get(), C.bytes(), cudaMemcpyDeviceToDevice), "copy");
    check_cuda(cudaMemcpy(n.get(), p.n0->get(), n.bytes(), cudaMemcpyDeviceToDevice), "copy");
    check_cuda(cudaMemcpy(m.get(), p.m0->get(), m.bytes(), cudaMemcpyDeviceToDevice), "copy");
  }
  ref::State<double> download(const ProblemShape& s) const {
    const auto B = static_cast<std::size_t>(s.B), NH = static_cast<std::size_t>(s.NH);
    return {mlstm::download<4>(C, {B, NH, static_cast<std::size_t>(s.DQK), static_cast<std::size_t>(s.DV)},
                               DType::float32),
            mlstm::download<3>(n, {B, NH, static_cast<std::size_t>(s.DQK)}, DType::float32),
            mlstm::download<2>(m, {B, NH}, DType::float32)};
  }
};

void set_slack(KernelCheck& c, const std::string& name, double rounding) { c.slack[name] = rounding + kSlack; }

template <std::size_t N>
double rounding_error(const xt::xtensor<double, N>& x, DType dtype) {
  return rel_l2(rounded(x, dtype), x);
}

void add_output_slack(KernelCheck& c, const ref::Output<double>& oracle, DType dtype) {
  set_slack(c, "h", rounding_error(oracle.h, dtype));
  set_slack(c, "C", rounding_error(oracle.last.C, DType::float32));
  set_slack(c, "n", rounding_error(oracle.last.n, DType::float32));
  set_slack(c, "m", rounding_error(oracle.last.m, DType::float32));
}

// Per tensor, the larger of two errors.
std::map<std::string, double> max_of(std::map<std::string, double> a, const std::map<std::string, double>& b) {
  for (auto& [t, e] : a) e = std::max(e, b.at(t));
  return a;
}

void merge(std::map<std::string, double>& into, const std::map<std::string, double>& from) {
  into.insert(from.begin(), from.end());
}

}  // namespace

std::string to_string(DType dtype) { return dtype == DType::float32 ? "float32" : "bf16"; }

double KernelCheck::limit(const std::string& tensor) const {
  return 2 * reference.at(tensor) + slack.at(tensor);
}

bool KernelCheck::passed() const {
  for (const auto& [t, e] : kernel)
    if (!(std::isfinite(e) && e <= limit(t))) return false;
  return !kernel.empty();
}

std::string KernelCheck::worst() const {
  std::string worst;
  double ratio = -1;
  for (const auto& [t, e] : kernel) {
    const double r = std::isfinite(e) ? e / limit(t) : std::numeric_limits<double>::infinity();
    if (r > ratio) ratio = r, worst = t;
  }
  return worst;
}

double KernelCheck::max_kernel_error() const {
  double m = 0;
  for (const auto& [t, e] : kernel) {
    if (std::isnan(e)) return e;
    m = std::max(m, e);
  }
  return m;
}

std::string KernelCheck::report() const {
  std::string out = name + "\n";
  for (const auto& [t, e] : kernel)
    out += fmt::format("  {:7} kernel {:9.3e}  reference {:9.3e}  limit {:9.3e}{}\n", t, e, reference.at(t), limit(t),
                       e <= limit(t) ? "" : "  FAIL");
  return out;
}

KernelCheck check_chunkwise(const ProblemShape& shape, int chunk_size, const Options& options, DType dtype,
                            std::uint64_t seed, bool backward) {
  KernelCheck c;
  c.name = fmt::format("chunkwise {} {} L={} {}", to_string(dtype), ref::variant_name(options), chunk_size,
                       shape.name());
  const Problem<double> p = ref::random_problem<double>(shape, seed);
  const Problem<double> pk = kernel_inputs(p, dtype);
  const Problem<float> pf = ref::cast_problem<float>(pk);
  constexpr flashlstm::index_t kOracleChunk = 64;

  // The yardstick: the float32 reference at the kernel's chunk size, at another one and in recurrent
  // form, the largest error of the three per tensor (one run's rounding error is a noisy estimate,
  // most of all for the per-head scalars m and dm0, sums with much cancellation).
  const flashlstm::index_t other_chunk = chunk_size == 64 ? 128 : 64;
  const ref::Output<double> oracle = ref::forward_chunkwise(p.inputs(), p.initial_view(), kOracleChunk, options);
  const ref::Output<float> low = ref::forward_chunkwise(pf.inputs(), pf.initial_view(), chunk_size, options);
  const ref::Output<float> low2 = ref::forward_chunkwise(pf.inputs(), pf.initial_view(), other_chunk, options);
  const ref::Output<float> low3 = ref::forward_recurrent(pf.inputs(), pf.initial_view(), options);

  DeviceProblem d(pk, shape, dtype);
  const ConstState initial = shape.initial_state ? d.initial() : ConstState{};
  DeviceArray h(p.dh.size() * element_size(dtype));
  DeviceState last(shape);
  cudaStream_t stream = nullptr;
  check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  forward_chunkwise(d.inputs, shape.initial_state ? &initial : nullptr, h.get(), last.view(), chunk_size, options,
                    stream);
  check_cuda(cudaStreamSynchronize(stream), "forward_chunkwise");
  const ref::Output<double> kern{download(h, shape_of_tensor(p.dh), dtype), last.download(shape)};
  c.kernel = ref::rel_errors(kern, oracle);
  c.reference = max_of(max_of(ref::rel_errors(low, oracle), ref::rel_errors(low2, oracle)),
                       ref::rel_errors(low3, oracle));
  add_output_slack(c, oracle, dtype);

  if (backward) {
    const ref::InputGrad<double> oracle_grad =
        ref::backward_chunkwise(p.inputs(), p.initial_view(), p.output_grad(), kOracleChunk, options);
    const ref::InputGrad<float> low_grad =
        ref::backward_chunkwise(pf.inputs(), pf.initial_view(), pf.output_grad(), chunk_size, options);
    const ref::InputGrad<float> low_grad2 =
        ref::backward_chunkwise(pf.inputs(), pf.initial_view(), pf.output_grad(), other_chunk, options);
    const ref::InputGrad<float> low_grad3 =
        ref::backward_recurrent(pf.inputs(), pf.initial_view(), pf.output_grad(), options);
    DeviceArray dq(p.q.size() * element_size(dtype)), dk(p.k.size() * element_size(dtype)),
        dv(p.v.size() * element_size(dtype)), dig(p.igate.size() * element_size(dtype)),
        dfg(p.fgate.size() * element_size(dtype));
    DeviceState dinitial(shape);
    InputGrad out{dq.get(), dk.get(), dv.get(), dig.get(), dfg.get(), shape.initial_state ? dinitial.view() : State{}};
    const OutputGrad grad{d.dh->get(), d.dC_last->get<float>(), d.dn_last->get<float>(), d.dm_last->get<float>()};
    backward_chunkwise(d.inputs, shape.initial_state ? &initial : nullptr, grad, out, chunk_size, options, stream);
    check_cuda(cudaStreamSynchronize(stream), "backward_chunkwise");
    ref::InputGrad<double> kern_grad{download(dq, shape_of_tensor(p.q), dtype),
                                     download(dk, shape_of_tensor(p.k), dtype),
                                     download(dv, shape_of_tensor(p.v), dtype),
                                     download(dig, shape_of_tensor(p.igate), dtype),
                                     download(dfg, shape_of_tensor(p.fgate), dtype),
                                     std::nullopt};
    if (shape.initial_state) kern_grad.dinitial = dinitial.download(shape);
    merge(c.kernel, ref::rel_errors(kern_grad, oracle_grad));
    merge(c.reference, max_of(max_of(ref::rel_errors(low_grad, oracle_grad), ref::rel_errors(low_grad2, oracle_grad)),
                              ref::rel_errors(low_grad3, oracle_grad)));
    set_slack(c, "dq", rounding_error(oracle_grad.dq, dtype));
    set_slack(c, "dk", rounding_error(oracle_grad.dk, dtype));
    set_slack(c, "dv", rounding_error(oracle_grad.dv, dtype));
    set_slack(c, "digate", rounding_error(oracle_grad.digate, dtype));
    set_slack(c, "dfgate", rounding_error(oracle_grad.dfgate, dtype));
    if (oracle_grad.dinitial) {
      set_slack(c, "dC0", rounding_error(oracle_grad.dinitial->C, DType::float32));
      set_slack(c, "dn0", rounding_error(oracle_grad.dinitial->n, DType::float32));
      set_slack(c, "dm0", rounding_error(oracle_grad.dinitial->m, DType::float32));
    }
  }
  cudaStreamDestroy(stream);
  return c;
}

KernelCheck check_step(const ProblemShape& shape_in, const Options& options, DType dtype, std::uint64_t seed) {
  ProblemShape shape = shape_in;
  shape.S = 1;
  shape.initial_state = true;
  KernelCheck c;
  c.name = fmt::format("step {} {} {}", to_string(dtype), ref::variant_name(options), shape.name());
  const Problem<double> p = ref::random_problem<double>(shape, seed);
  const Problem<double> pk = kernel_inputs(p, dtype);
  const Problem<float> pf = ref::cast_problem<float>(pk);
  auto token = [](const auto& x) { return xt::eval(xt::view(x, xt::all(), xt::all(), 0, xt::all())); };
  auto gate = [](const auto& x) { return xt::eval(xt::view(x, xt::all(), xt::all(), 0)); };

  ref::State<double> oracle_state = *p.initial;
  const auto oracle_h = ref::step<double>(token(p.q), token(p.k), token(p.v), gate(p.igate), gate(p.fgate),
                                          oracle_state, options);
  ref::State<float> low_state = *pf.initial;
  const auto low_h =
      ref::step<float>(token(pf.q), token(pf.k), token(pf.v), gate(pf.igate), gate(pf.fgate), low_state, options);

  DeviceProblem d(pk, shape, dtype);
  DeviceState state(shape);
  state.assign(d);
  DeviceArray h(p.dh.size() * element_size(dtype));
  step(d.inputs, state.view(), h.get(), options, cudaStreamPerThread);
  check_cuda(cudaStreamSynchronize(cudaStreamPerThread), "step");
  const auto h_shape = shape_of_tensor(xt::xtensor<double, 3>(token(p.dh)));
  const ref::Output<double> kern{xt::eval(xt::expand_dims(download(h, h_shape, dtype), 2)), state.download(shape)};
  const ref::Output<double> oracle{xt::eval(xt::expand_dims(oracle_h, 2)), oracle_state};
  const ref::Output<float> low{xt::eval(xt::expand_dims(low_h, 2)), low_state};
  c.kernel = ref::rel_errors(kern, oracle);
  c.reference = ref::rel_errors(low, oracle);
  add_output_slack(c, oracle, dtype);
  return c;
}

KernelCheck check_sequence(const ProblemShape& shape_in, int chunk_size, const Options& options, DType dtype,
                           std::uint64_t seed) {
  ProblemShape shape = shape_in;
  shape.initial_state = true;
  KernelCheck c;
  c.name = fmt::format("sequence {} {} L={} {}", to_string(dtype), ref::variant_name(options), chunk_size,
                       shape.name());
  const Problem<double> p = ref::random_problem<double>(shape, seed);
  const Problem<double> pk = kernel_inputs(p, dtype);
  const Problem<float> pf = ref::cast_problem<float>(pk);
  const ref::Output<double> oracle = ref::forward_recurrent(p.inputs(), p.initial_view(), options);
  const ref::Output<float> low = ref::forward_recurrent(pf.inputs(), pf.initial_view(), options);

  DeviceProblem d(pk, shape, dtype);
  DeviceState state(shape);
  state.assign(d);
  DeviceArray h(p.dh.size() * element_size(dtype));
  forward_sequence(d.inputs, state.view(), h.get(), chunk_size, options, cudaStreamPerThread);
  check_cuda(cudaStreamSynchronize(cudaStreamPerThread), "forward_sequence");
  const ref::Output<double> kern{download(h, shape_of_tensor(p.dh), dtype), state.download(shape)};
  c.kernel = ref::rel_errors(kern, oracle);
  c.reference = ref::rel_errors(low, oracle);
  add_output_slack(c, oracle, dtype);
  return c;
}

}  // namespace flashlstm::cuda::mlstm
