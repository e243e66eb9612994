// The host API of the CUDA pLSTM (cuda/plstm/plstm.hpp): argument checks with errors that name the
// argument, then the launchers in grid.cu.
#include "core/error.hpp"
#include "cuda/arguments.hpp"
#include "cuda/plstm/params.hpp"

#include <cmath>
#include <cstdint>
#include <utility>

namespace flashlstm::cuda::plstm {

using flashlstm::cuda::check_device_pointer;
using flashlstm::cuda::usable;

namespace {

// The sizes, checked, and the parameter block without pointers (forward and backward).
detail::GridParams checked_params(const GridInputs& x, const Options& options) {
  const GridDims& d = x.dims;
  require(d.B >= 1 && d.NH >= 1, "q", "needs B >= 1 and NH >= 1, got B = {}, NH = {}", d.B, d.NH);
  require(d.X >= 1 && d.Y >= 1, "q", "needs a grid of X >= 1 by Y >= 1 nodes, got {} x {}", d.X, d.Y);
  require(d.DQK >= 1 && d.DQK <= 256, "DQK", "must be in [1, 256], got {}", d.DQK);
  require(d.DV >= 1 && d.DV <= 65535 * 64, "DV", "must be in [1, 4194240], got {}", d.DV);
  require(x.orientations == 1 || x.orientations == 4, "orientations", "must be 1 or 4, got {}", x.orientations);
  require(x.dtype == DType::float32 || x.dtype == DType::bfloat16, "dtype", "must be float32 or bfloat16");
  const std::int64_t N = d.X * d.Y, heads = d.B * d.NH;
  require(N <= (std::int64_t{1} << 30), "q", "the grid has {} nodes; at most 2^30 are supported", N);
  require((N + 63) / 64 * heads <= 2147483647, "q", "too many (batch, head) grids: {} x {} nodes", heads, N);
  require(heads * N * std::max(d.DQK, d.DV) <= (std::int64_t{1} << 40), "q", "problem too large");
  detail::GridParams p;
  p.B = static_cast<int>(d.B), p.NH = static_cast<int>(d.NH), p.X = static_cast<int>(d.X), p.Y = static_cast<int>(d.Y);
  p.DQK = static_cast<int>(d.DQK), p.DV = static_cast<int>(d.DV), p.orientations = x.orientations;
  p.scale = static_cast<float>(options.qk_scale > 0 ? options.qk_scale : 1.0 / std::sqrt(double(d.DQK)));
  return p;
}

// The input pointers, checked, into p.
void take_inputs(const GridInputs& x, detail::GridParams& p) {
  const std::size_t es = element_size(x.dtype);
  check_device_pointer(x.q, "q", es);
  check_device_pointer(x.k, "k", es);
  check_device_pointer(x.v, "v", es);
  const GridGates& g = x.gates;
  const std::pair<const char*, const float*> gates[9] = {{"Sr", g.Sr},   {"Sd", g.Sd},   {"Trl", g.Trl},
                                                         {"Tru", g.Tru}, {"Tdu", g.Tdu}, {"Tdl", g.Tdl},
                                                         {"Ml", g.Ml},   {"Mu", g.Mu},   {"D", g.D}};
  for (int i = 0; i < 9; ++i) {
    check_device_pointer(gates[i].second, gates[i].first, 4);
    p.gates[i] = gates[i].second;
  }
  p.q = x.q, p.k = x.k, p.v = x.v;
}

}  // namespace

void grid_forward(const GridInputs& x, void* h, const Options& options, cudaStream_t stream) {
  detail::GridParams p = checked_params(x, options);
  const int max_Y = detail::grid_max_Y(p.DQK, x.dtype);
  require(p.Y <= max_Y, "Y", "must be at most {} for DQK = {} (the kernel keeps a column of path weights on chip), got {}",
          max_Y, p.DQK, p.Y);
  take_inputs(x, p);
  check_device_pointer(h, "h", element_size(x.dtype));
  p.h = h;
  detail::run_grid_forward(p, x.dtype, usable(stream));
}

void grid_backward(const GridInputs& x, const void* dh, const GridGradients& grad, const Options& options,
                   cudaStream_t stream) {
  detail::GridBackwardParams p;
  static_cast<detail::GridParams&>(p) = checked_params(x, options);
  const detail::GridBackwardPlan plan = detail::plan_grid_backward(p.DQK, p.DV, p.X, p.Y, x.dtype);
  require(plan.fits, "Y",
          "is too large for the backward's on-chip path weights with DQK = {}, DV = {} in {} (got Y = {}); "
          "transpose the grid or use bfloat16",
          p.DQK, p.DV, to_string(x.dtype), p.Y);
  take_inputs(x, p);
  const std::size_t es = element_size(x.dtype);
  check_device_pointer(dh, "dh", es);
  check_device_pointer(grad.dq, "dq", es);
  check_device_pointer(grad.dk, "dk", es);
  check_device_pointer(grad.dv, "dv", es);
  const std::pair<const char*, float*> dgates[9] = {{"dSr", grad.dSr},   {"dSd", grad.dSd}, {"dTrl", grad.dTrl},
                                                    {"dTru", grad.dTru}, {"dTdu", grad.dTdu}, {"dTdl", grad.dTdl},
                                                    {"dMl", grad.dMl},   {"dMu", grad.dMu}, {"dD", grad.dD}};
  for (int i = 0; i < 9; ++i) {
    check_device_pointer(dgates[i].second, dgates[i].first, 4);
    p.dgates[i] = dgates[i].second;
  }
  p.dh = dh, p.dq = grad.dq, p.dk = grad.dk, p.dv = grad.dv;
  p.segment = plan.segment;
  p.gates_on_chip = plan.gates_on_chip;
  p.scratch_per_block = plan.scratch_per_block;
  const cudaStream_t s = usable(stream);
  Scratch scratch(s);
  scratch.add(p.scratch, std::int64_t{p.B} * p.NH * p.orientations * plan.scratch_per_block);
  scratch.allocate();
  detail::run_grid_backward(p, x.dtype, s);
}

namespace {

// A sequence problem as the S x 1 grid of its chain, with zero vertical gates (and, for the backward,
// somewhere to write their gradients) in one stream-ordered allocation of `count` gate arrays.
class ChainAsGrid {
 public:
  ChainAsGrid(const SequenceInputs& x, int count, cudaStream_t stream) : scratch_(stream) {
    const SequenceDims& d = x.dims;
    require(d.B >= 1 && d.NH >= 1 && d.S >= 1, "q", "needs B, NH, S >= 1, got B = {}, NH = {}, S = {}", d.B, d.NH, d.S);
    const std::size_t es = element_size(x.dtype);
    check_device_pointer(x.q, "q", es);
    check_device_pointer(x.k, "k", es);
    check_device_pointer(x.v, "v", es);
    check_device_pointer(x.S, "S", 4);
    check_device_pointer(x.T, "T", 4);
    check_device_pointer(x.M, "M", 4);
    check_device_pointer(x.D, "D", 4);
    size_ = d.B * d.NH * d.S;
    scratch_.add(buffer_, size_ * count);
    scratch_.allocate();
    check_cuda(cudaMemsetAsync(buffer_, 0, static_cast<std::size_t>(scratch_.bytes()), stream), "pLSTM sequence: zero gates");
    const float* z = buffer_;
    inputs = GridInputs{x.q, x.k, x.v, GridGates{x.S, z, x.T, z, z, z, x.M, z, x.D},
                        GridDims{d.B, d.NH, d.S, 1, d.DQK, d.DV}, 1, x.dtype};
  }
  float* gate(int i) const { return buffer_ + i * size_; }  // i = 0: the zero gates

  GridInputs inputs;

 private:
  Scratch scratch_;
  float* buffer_ = nullptr;
  std::int64_t size_ = 0;
};

}  // namespace

void sequence_forward(const SequenceInputs& x, void* h, const Options& options, cudaStream_t stream) {
  const cudaStream_t s = usable(stream);
  const ChainAsGrid chain(x, 1, s);
  grid_forward(chain.inputs, h, options, s);
}

void sequence_backward(const SequenceInputs& x, const void* dh, const SequenceGradients& grad, const Options& options,
                       cudaStream_t stream) {
  const cudaStream_t s = usable(stream);
  const ChainAsGrid chain(x, 6, s);  // the zero gates, then the five vertical gates' gradients (discarded)
  check_device_pointer(grad.dS, "dS", 4);
  check_device_pointer(grad.dT, "dT", 4);
  check_device_pointer(grad.dM, "dM", 4);
  check_device_pointer(grad.dD, "dD", 4);
  const GridGradients g{grad.dq, grad.dk, grad.dv, grad.dS, chain.gate(1), grad.dT, chain.gate(2),
                        chain.gate(3), chain.gate(4), grad.dM, chain.gate(5), grad.dD};
  grid_backward(chain.inputs, dh, g, options, s);
}

std::int64_t grid_backward_scratch_bytes(const GridDims& d, int orientations, DType dtype) {
  const detail::GridBackwardPlan plan = detail::plan_grid_backward(static_cast<int>(d.DQK), static_cast<int>(d.DV),
                                                                   static_cast<int>(d.X), static_cast<int>(d.Y), dtype);
  return d.B * d.NH * orientations * plan.scratch_per_block * static_cast<std::int64_t>(sizeof(float));
}

}  // namespace flashlstm::cuda::plstm
