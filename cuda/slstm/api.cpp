// The host API of the CUDA sLSTM (cuda/slstm/slstm.hpp): argument checks with errors that name the
// argument, then the launchers in recurrent.cu.
#include "core/error.hpp"
#include "cuda/arguments.hpp"
#include "cuda/slstm/params.hpp"

#include <cstdint>

namespace flashlstm::cuda::slstm {
namespace {

using flashlstm::cuda::check_device_pointer;
using flashlstm::cuda::usable;

void check_dims(const Dims& d, bool sequence) {
  require(d.B >= 1 && d.B <= 65535 * 8, "B", "must be in [1, 524280], got {}", d.B);
  require(d.NH >= 1 && d.NH <= 65535, "NH", "must be in [1, 65535], got {}", d.NH);
  require(supported_head_dim(d.DH), "DH", "must be 16, 32, 64 or 128, got {}", d.DH);
  if (sequence) {
    require(d.T >= 1 && d.T <= 2147483647, "T", "must be in [1, 2^31), got {}", d.T);
    require(d.B * d.T * 4 * d.NH * d.DH <= (std::int64_t{1} << 40), "T", "problem too large");
  }
}

void check_inputs(const Inputs& x, bool sequence) {
  check_dims(x.dims, sequence);
  // Wx is copied in 4-byte pieces.
  check_device_pointer(x.Wx, sequence ? "Wx" : "Wx_t", 4);
  check_device_pointer(x.R, "R", element_size(x.dtype));
  check_device_pointer(x.b, "b", element_size(x.dtype));
}

detail::Params make_params(const Inputs& x, const float* initial, const Options& o) {
  detail::Params p;
  p.B = static_cast<int>(x.dims.B);
  p.T = static_cast<int>(x.dims.T);
  p.NH = static_cast<int>(x.dims.NH);
  p.DH = static_cast<int>(x.dims.DH);
  p.cell = o.cell == Cell::lstm                   ? detail::CellKind::lstm
           : o.forget_gate == ForgetGate::sigmoid ? detail::CellKind::slstm_sigmoid
                                                  : detail::CellKind::slstm_exp;
  p.Wx = x.Wx, p.R = x.R, p.b = x.b;
  p.initial = initial;
  return p;
}

}  // namespace

bool supported_head_dim(std::int64_t DH) { return DH == 16 || DH == 32 || DH == 64 || DH == 128; }

void forward(const Inputs& x, const float* initial, const Output& out, const Options& options, cudaStream_t stream) {
  check_inputs(x, true);
  if (initial) check_device_pointer(initial, "initial", 4);
  require(out.states || out.last, "out", "needs states or last (both are nullptr)");
  if (out.states) check_device_pointer(out.states, "out.states", 4);
  if (out.last) check_device_pointer(out.last, "out.last", 4);
  if (out.gates) check_device_pointer(out.gates, "out.gates", 4);
  detail::Params p = make_params(x, initial, options);
  p.states = out.states, p.last = out.last, p.gates = out.gates;
  detail::run_forward(p, x.dtype, usable(stream));
}

void backward(const Inputs& x, const float* initial, const Saved& saved, const OutputGrad& grad, const InputGrad& out,
              const Options& options, cudaStream_t stream) {
  check_inputs(x, true);
  if (initial) check_device_pointer(initial, "initial", 4);
  check_device_pointer(saved.states, "saved.states", 4);
  check_device_pointer(saved.gates, "saved.gates", 4);
  check_device_pointer(grad.dh, "dh", 4);
  if (grad.dlast) check_device_pointer(grad.dlast, "dlast", 4);
  const std::size_t a = element_size(x.dtype);
  check_device_pointer(out.dWx, "dWx", a);
  check_device_pointer(out.dR, "dR", a);
  check_device_pointer(out.db, "db", a);
  if (initial) {
    check_device_pointer(out.dinitial, "dinitial", 4);
  } else {
    require(out.dinitial == nullptr, "dinitial", "given without an initial state");
  }
  detail::Params p = make_params(x, initial, options);
  p.saved_states = saved.states, p.saved_gates = saved.gates, p.dh = grad.dh, p.dlast = grad.dlast;
  p.dWx = out.dWx, p.dR = out.dR, p.db = out.db, p.dinitial = out.dinitial;
  detail::run_backward(p, x.dtype, usable(stream));
}

void step(const Inputs& x, float* state, const Options& options, cudaStream_t stream) {
  check_inputs(x, false);
  check_device_pointer(state, "state", 4);
  Inputs one = x;
  one.dims.T = 1;
  // Each thread reads its units' state before the step and writes them after it: in place is safe.
  detail::Params p = make_params(one, state, options);
  p.last = state;
  detail::run_forward(p, x.dtype, usable(stream));
}

}  // namespace flashlstm::cuda::slstm
