// The host API of the CUDA pLSTM (cuda/plstm/plstm.hpp): argument checks with errors that name the
// argument, then the launchers in grid.cu.
#include "core/error.hpp"
#include "cuda/arguments.hpp"
#include "cuda/plstm/params.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

namespace flashlstm::cuda::plstm {

using flashlstm::cuda::check_device_pointer;
using flashlstm::cuda::usable;

namespace {

// The dtype and the input pointers of a sequence or DAG call: q, k, v of `dtype`, the gates S, T, M, D
// float32.
template <class Inputs>
void check_input_pointers(const Inputs& x) {
  require(x.dtype == DType::float32 || x.dtype == DType::bfloat16, "dtype", "must be float32 or bfloat16");
  const std::size_t es = element_size(x.dtype);
  check_device_pointer(x.q, "q", es);
  check_device_pointer(x.k, "k", es);
  check_device_pointer(x.v, "v", es);
  check_device_pointer(x.S, "S", 4);
  check_device_pointer(x.T, "T", 4);
  check_device_pointer(x.M, "M", 4);
  check_device_pointer(x.D, "D", 4);
}

// dh and the gradients of a sequence or DAG backward: dh, dq, dk, dv of `dtype`, dS, dT, dM, dD float32.
template <class Gradients>
void check_gradient_pointers(const void* dh, const Gradients& grad, DType dtype) {
  const std::size_t es = element_size(dtype);
  check_device_pointer(dh, "dh", es);
  check_device_pointer(grad.dq, "dq", es);
  check_device_pointer(grad.dk, "dk", es);
  check_device_pointer(grad.dv, "dv", es);
  check_device_pointer(grad.dS, "dS", 4);
  check_device_pointer(grad.dT, "dT", 4);
  check_device_pointer(grad.dM, "dM", 4);
  check_device_pointer(grad.dD, "dD", 4);
}

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
  const bool maps = detail::grid_maps_fits(p, x.dtype, false);
  const int max_Y = detail::grid_max_Y(p.DQK, x.dtype);
  require(maps || p.Y <= max_Y, "Y",
          "must be at most {} for DQK = {} (the kernel keeps a column of path weights on chip), got {}", max_Y, p.DQK,
          p.Y);
  take_inputs(x, p);
  check_device_pointer(h, "h", element_size(x.dtype));
  p.h = h;
  const cudaStream_t s = usable(stream);
  if (!maps) return detail::run_grid_forward(p, x.dtype, s);
  Scratch scratch(s);
  float* chunk_maps = nullptr;
  scratch.add(chunk_maps, detail::grid_maps_scratch_floats(p, false));
  scratch.allocate();
  detail::run_grid_forward_maps(p, x.dtype, chunk_maps, s);
}

void grid_backward(const GridInputs& x, const void* dh, const GridGradients& grad, const Options& options,
                   cudaStream_t stream) {
  detail::GridBackwardParams p;
  static_cast<detail::GridParams&>(p) = checked_params(x, options);
  const bool maps = detail::grid_maps_fits(p, x.dtype, true);
  const detail::GridBackwardPlan plan = detail::plan_grid_backward(p.DQK, p.DV, p.X, p.Y, x.dtype);
  require(maps || plan.fits, "Y",
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
  const cudaStream_t s = usable(stream);
  if (maps) {
    Scratch scratch(s);
    float* chunk_maps = nullptr;
    scratch.add(chunk_maps, detail::grid_maps_scratch_floats(p, true));
    scratch.allocate();
    return detail::run_grid_backward_maps(p, x.dtype, chunk_maps, s);
  }
  p.segment = plan.segment;
  p.gates_on_chip = plan.gates_on_chip;
  p.scratch_per_block = plan.scratch_per_block;
  Scratch scratch(s);
  scratch.add(p.scratch, std::int64_t{p.B} * p.NH * p.orientations * plan.scratch_per_block);
  scratch.allocate();
  detail::run_grid_backward(p, x.dtype, s);
}

namespace {

// The sizes and input pointers of a sequence problem, checked, and its parameter block.
detail::SequenceParams checked_params(const SequenceInputs& x, const Options& options) {
  const SequenceDims& d = x.dims;
  require(d.B >= 1 && d.NH >= 1 && d.S >= 1, "q", "needs B, NH, S >= 1, got B = {}, NH = {}, S = {}", d.B, d.NH, d.S);
  require(d.DQK >= 1 && d.DQK <= 4096, "DQK", "must be in [1, 4096], got {}", d.DQK);
  require(d.DV >= 1 && d.DV <= 4096, "DV", "must be in [1, 4096], got {}", d.DV);
  require(d.S <= 2147483647 - 63, "S", "must be below 2^31 - 63, got {}", d.S);
  require(d.B * d.NH <= 65535, "q", "at most 65535 (batch, head) sequences per call, got B·NH = {}", d.B * d.NH);
  check_input_pointers(x);
  detail::SequenceParams p;
  p.dims = d;
  p.scale = static_cast<float>(options.qk_scale > 0 ? options.qk_scale : 1.0 / std::sqrt(double(d.DQK)));
  p.q = x.q, p.k = x.k, p.v = x.v, p.S = x.S, p.T = x.T, p.M = x.M, p.D = x.D;
  return p;
}

}  // namespace

void sequence_forward(const SequenceInputs& x, void* h, const Options& options, cudaStream_t stream) {
  detail::SequenceParams p = checked_params(x, options);
  check_device_pointer(h, "h", element_size(x.dtype));
  p.h = h;
  const cudaStream_t s = usable(stream);
  Scratch scratch(s);
  scratch.add(p.states, detail::sequence_state_floats(x.dims));
  scratch.allocate();
  detail::run_sequence_forward(p, x.dtype, s);
}

void sequence_backward(const SequenceInputs& x, const void* dh, const SequenceGradients& grad, const Options& options,
                       cudaStream_t stream) {
  detail::SequenceParams p = checked_params(x, options);
  check_gradient_pointers(dh, grad, x.dtype);
  p.dh = dh, p.dq = grad.dq, p.dk = grad.dk, p.dv = grad.dv;
  p.dS = grad.dS, p.dT = grad.dT, p.dM = grad.dM, p.dD = grad.dD;
  const cudaStream_t s = usable(stream);
  Scratch scratch(s);
  scratch.add(p.states, detail::sequence_state_floats(x.dims));
  scratch.add(p.dstates, detail::sequence_state_floats(x.dims));
  scratch.allocate();
  detail::run_sequence_backward(p, x.dtype, s);
}

namespace {

// Checks a CSR (offsets of length rows + 1 over `items` entries, each item in [0, bound)) and names it.
void check_csr(const char* offsets_name, const std::int32_t* offsets, const char* items_name, const std::int32_t* items,
               std::int64_t rows, std::int64_t count, std::int64_t bound) {
  require(offsets != nullptr, offsets_name, "is null");
  require(count == 0 || items != nullptr, items_name, "is null");
  require(offsets[0] == 0 && offsets[rows] == count, offsets_name, "must run from 0 to {}, got {} .. {}", count, offsets[0],
          offsets[rows]);
  for (std::int64_t r = 0; r < rows; ++r)
    require(offsets[r] <= offsets[r + 1], offsets_name, "must not decrease (entry {})", r);
  for (std::int64_t i = 0; i < count; ++i)
    require(items[i] >= 0 && items[i] < bound, items_name, "entry {} is {}, outside [0, {})", i, items[i], bound);
}

std::int32_t* upload_int32(const std::vector<std::int32_t>& host) {
  std::int32_t* device = nullptr;
  check_cuda(cudaMalloc(reinterpret_cast<void**>(&device), std::max<std::size_t>(host.size(), 1) * sizeof(std::int32_t)),
             "DagPlan: allocation");
  if (!host.empty())
    check_cuda(cudaMemcpy(device, host.data(), host.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice),
               "DagPlan: upload");
  return device;
}

}  // namespace

DagPlan::DagPlan(const DagGraph& g) : N_(g.N), E_(g.E) {
  require(g.N >= 1 && g.N <= 2147483647, "N", "must be in [1, 2^31), got {}", g.N);
  require(g.E >= 0 && g.E <= 2147483647, "E", "must be in [0, 2^31), got {}", g.E);
  require(g.levels >= 1 && g.levels <= g.N, "levels", "must be in [1, N], got {}", g.levels);
  check_csr("in_offsets", g.in_offsets, "in_edges", g.in_edges, g.N, g.E, g.E);
  check_csr("out_offsets", g.out_offsets, "out_edges", g.out_edges, g.N, g.E, g.E);
  check_csr("level_offsets", g.level_offsets, "level_nodes", g.level_nodes, g.levels, g.N, g.N);
  std::vector<std::int32_t> arc_offsets(static_cast<std::size_t>(g.N));
  for (std::int64_t n = 0; n < g.N; ++n) {
    require(A_ + std::int64_t(g.in_offsets[n + 1] - g.in_offsets[n]) * (g.out_offsets[n + 1] - g.out_offsets[n]) <
                2147483647,
            "in_offsets", "the line graph has more than 2^31 arcs");
    arc_offsets[static_cast<std::size_t>(n)] = static_cast<std::int32_t>(A_);
    A_ += std::int64_t(g.in_offsets[n + 1] - g.in_offsets[n]) * (g.out_offsets[n + 1] - g.out_offsets[n]);
  }
  level_offsets_.assign(g.level_offsets, g.level_offsets + g.levels + 1);
  const auto vec = [](const std::int32_t* a, std::int64_t size) { return std::vector<std::int32_t>(a, a + size); };
  try {
    device_[0] = upload_int32(vec(g.in_offsets, g.N + 1));
    device_[1] = upload_int32(vec(g.in_edges, g.E));
    device_[2] = upload_int32(vec(g.out_offsets, g.N + 1));
    device_[3] = upload_int32(vec(g.out_edges, g.E));
    device_[4] = upload_int32(vec(g.level_nodes, g.N));
    device_[5] = upload_int32(arc_offsets);
  } catch (...) {
    for (auto* d : device_) cudaFree(d);
    throw;
  }
}

DagPlan::~DagPlan() {
  for (auto* d : device_) cudaFree(d);
}

namespace {

// The checks and the parameter block of the DAG kernels, with `state_buffers` arrays of edge states
// (B·NH·E·DQK·DV floats each), the edges' ready flags and the task counter from the stream-ordered
// allocator.
class DagCall {
 public:
  DagCall(const DagPlan& g, const DagInputs& x, const Options& options, int state_buffers, cudaStream_t stream)
      : scratch_(stream) {
    require(x.B >= 1 && x.NH >= 1, "q", "needs B >= 1 and NH >= 1, got B = {}, NH = {}", x.B, x.NH);
    require(x.DQK >= 1 && x.DQK <= 1024, "DQK", "must be in [1, 1024], got {}", x.DQK);
    require(x.DV >= 1 && x.DV <= 1024, "DV", "must be in [1, 1024], got {}", x.DV);
    check_input_pointers(x);
    p.B = static_cast<int>(x.B), p.NH = static_cast<int>(x.NH), p.N = static_cast<int>(g.N()), p.E = static_cast<int>(g.E());
    p.A = g.A(), p.DQK = static_cast<int>(x.DQK), p.DV = static_cast<int>(x.DV);
    p.scale = static_cast<float>(options.qk_scale > 0 ? options.qk_scale : 1.0 / std::sqrt(double(x.DQK)));
    p.in_offsets = g.device(0), p.in_edges = g.device(1), p.out_offsets = g.device(2), p.out_edges = g.device(3);
    p.level_nodes = g.device(4), p.arc_offsets = g.device(5);
    p.q = x.q, p.k = x.k, p.v = x.v, p.S = x.S, p.T = x.T, p.M = x.M, p.D = x.D;
    const double bytes = double(x.B) * x.NH * g.E() * x.DQK * x.DV * sizeof(float) * state_buffers;
    std::size_t free = 0, total = 0;
    check_cuda(cudaMemGetInfo(&free, &total), "pLSTM DAG: memory");
    require(bytes <= double(free), "q", "the edge states need {:.2f} GiB, more than the {:.2f} GiB free on the device",
            bytes / (1 << 30), double(free) / (1 << 30));
    const std::int64_t states = std::int64_t(x.B) * x.NH * g.E() * x.DQK * x.DV;
    scratch_.add(p.states, states);
    if (state_buffers == 2) scratch_.add(p.dstates, states);
    scratch_.add(p.ready, std::int64_t(x.B) * x.NH * g.E());
    scratch_.add(p.next_task, 1);
    scratch_.allocate();
  }

  detail::DagParams p;

 private:
  Scratch scratch_;
};

}  // namespace

void dag_forward(const DagPlan& graph, const DagInputs& x, void* h, const Options& options, cudaStream_t stream) {
  const cudaStream_t s = usable(stream);
  check_device_pointer(h, "h", element_size(x.dtype));
  DagCall call(graph, x, options, 1, s);
  call.p.h = h;
  detail::run_dag_forward(call.p, x.dtype, s);
}

void dag_backward(const DagPlan& graph, const DagInputs& x, const void* dh, const DagGradients& grad,
                  const Options& options, cudaStream_t stream) {
  const cudaStream_t s = usable(stream);
  check_gradient_pointers(dh, grad, x.dtype);
  DagCall call(graph, x, options, 2, s);
  // The forward again, for every edge's state (without h).
  call.p.h = nullptr;
  call.p.dh = dh, call.p.dq = grad.dq, call.p.dk = grad.dk, call.p.dv = grad.dv;
  call.p.dS = grad.dS, call.p.dT = grad.dT, call.p.dM = grad.dM, call.p.dD = grad.dD;
  detail::run_dag_forward(call.p, x.dtype, s);
  detail::run_dag_backward(call.p, x.dtype, s);
}

std::int64_t grid_backward_scratch_bytes(const GridDims& d, int orientations, DType dtype) {
  detail::GridParams p;
  p.B = static_cast<int>(d.B), p.NH = static_cast<int>(d.NH), p.X = static_cast<int>(d.X), p.Y = static_cast<int>(d.Y);
  p.DQK = static_cast<int>(d.DQK), p.DV = static_cast<int>(d.DV), p.orientations = orientations;
  if (detail::grid_maps_fits(p, dtype, true)) return (detail::grid_maps_scratch_floats(p, true) * 4 + 255) / 256 * 256;
  const detail::GridBackwardPlan plan = detail::plan_grid_backward(static_cast<int>(d.DQK), static_cast<int>(d.DV),
                                                                   static_cast<int>(d.X), static_cast<int>(d.Y), dtype);
  return d.B * d.NH * orientations * plan.scratch_per_block * static_cast<std::int64_t>(sizeof(float));
}

}  // namespace flashlstm::cuda::plstm
