// The host API of the CUDA mLSTM (cuda/mlstm/mlstm.hpp): argument checks with errors that name the
// argument, the packed tables, and the choice of kernels (params.hpp).
#include "core/error.hpp"
#include "cuda/arguments.hpp"
#include "cuda/mlstm/params.hpp"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <type_traits>
#include <vector>

namespace flashlstm::cuda::mlstm {
namespace {

using flashlstm::cuda::check_device_pointer;
using flashlstm::cuda::usable;

constexpr std::int64_t kMaxInt = 2147483647;

void check_dims(const Dims& d, bool sequence) {
  require(d.B >= 1, "B", "must be >= 1, got {}", d.B);
  require(d.NH >= 1, "NH", "must be >= 1, got {}", d.NH);
  require(d.DQK >= 1 && d.DQK <= 4096, "DQK", "must be in [1, 4096], got {}", d.DQK);
  require(d.DV >= 1 && d.DV <= 4096, "DV", "must be in [1, 4096], got {}", d.DV);
  require(d.B * d.NH <= 65535, "B * NH", "must be <= 65535, got {}", d.B * d.NH);
  if (sequence) {
    require(d.S >= 1, "S", "must be >= 1, got {}", d.S);
    require(d.B * d.NH * d.S * std::max(d.DQK, d.DV) <= (std::int64_t{1} << 40), "S", "problem too large");
  }
}

void check_options(const Options& o) {
  require(std::isfinite(o.eps) && o.eps >= 0, "eps", "must be finite and >= 0, got {}", o.eps);
}

// The element size of the gates and their gradients.
std::size_t gate_size(const Inputs& x) { return x.float32_gates ? 4 : element_size(x.dtype); }

void check_inputs(const Inputs& x, bool sequence) {
  check_dims(x.dims, sequence);
  const std::size_t a = element_size(x.dtype);
  check_device_pointer(x.q, "q", a);
  check_device_pointer(x.k, "k", a);
  check_device_pointer(x.v, "v", a);
  check_device_pointer(x.igate, "igate", gate_size(x));
  check_device_pointer(x.fgate, "fgate", gate_size(x));
}

// All three pointers of a state, or (where optional) none.
template <class S>
bool check_state(const S& s, std::string_view name, bool optional) {
  const int given = (s.C != nullptr) + (s.n != nullptr) + (s.m != nullptr);
  if (optional && given == 0) return false;
  require(given == 3, name, "needs all of C, n and m (got {} of 3)", given);
  check_device_pointer(s.C, fmt::format("{}.C", name), 4);
  check_device_pointer(s.n, fmt::format("{}.n", name), 4);
  check_device_pointer(s.m, fmt::format("{}.m", name), 4);
  return true;
}

void check_chunk_size(int chunk_size) {
  require(chunk_size >= 64 && chunk_size % 64 == 0 && chunk_size <= 1024, "chunk_size",
          "must be a multiple of 64 in [64, 1024], got {}", chunk_size);
}

detail::Packing check_packing(const Inputs& x, const std::vector<std::int64_t>& cu) {
  require(x.dims.B == 1, "B", "packed sequences take B = 1 (the sequences lie along S), got {}", x.dims.B);
  require(cu.size() >= 2, "cu_seqlens", "expected N + 1 >= 2 offsets, got {}", cu.size());
  require(cu.front() == 0, "cu_seqlens", "must start at 0, got {}", cu.front());
  for (std::size_t i = 1; i < cu.size(); ++i)
    require(cu[i] >= cu[i - 1], "cu_seqlens", "must not decrease, got {} after {} at position {}", cu[i], cu[i - 1], i);
  require(cu.back() == x.dims.S, "cu_seqlens", "must end at the number of tokens {}, got {}", x.dims.S, cu.back());
  const auto N = static_cast<std::int64_t>(cu.size()) - 1;
  require(N * x.dims.NH <= 65535, "cu_seqlens", "N * NH must be <= 65535, got {} sequences of {} heads", N, x.dims.NH);
  return {cu};
}

// Entry i of an (N, NH, ...) float32 state part of `count` floats an entry: `from`'s entry i, or
// zeros where `from` is null.
void copy_entry(float* to, const float* from, std::int64_t i, std::int64_t count, cudaStream_t stream) {
  const std::size_t bytes = static_cast<std::size_t>(count) * sizeof(float);
  if (from) check_cuda(cudaMemcpyAsync(to + i * count, from + i * count, bytes, cudaMemcpyDeviceToDevice, stream), "copy");
  else check_cuda(cudaMemsetAsync(to + i * count, 0, bytes, stream), "memset");
}

// A sequence without tokens hands its initial state on as its final state (and the final state's
// gradient back as the initial state's): the kernels skip its rows, this copies the entries.
void hand_on_empty(const State& to, const ConstState& from, const detail::Packing& packing, const Dims& d,
                   cudaStream_t stream) {
  for (std::int64_t i = 0; i < packing.N(); ++i) {
    if (packing.length(i) > 0) continue;
    copy_entry(to.C, from.C, i, d.NH * d.DQK * d.DV, stream);
    copy_entry(to.n, from.n, i, d.NH * d.DQK, stream);
    copy_entry(to.m, from.m, i, d.NH, stream);
  }
}

}  // namespace

namespace detail {

Params make_params(const Inputs& x, const ConstState* initial, int chunk_size, const Options& options) {
  const Dims& d = x.dims;
  Params p;
  p.BH = static_cast<int>(d.B * d.NH);
  p.NH = static_cast<int>(d.NH);
  p.S = static_cast<int>(d.S);
  p.DQK = static_cast<int>(d.DQK);
  p.DV = static_cast<int>(d.DV);
  p.L = chunk_size;
  p.nc = static_cast<int>((d.S + chunk_size - 1) / chunk_size);
  p.seq_stride = d.S;
  p.scale = 1.f / std::sqrt(static_cast<float>(d.DQK));
  p.eps = static_cast<float>(options.eps);
  p.stabilised = flashlstm::mlstm::stabilised(options);
  p.normalizes = flashlstm::mlstm::normalizes(options);
  p.gates_f32 = x.float32_gates;
  p.q = x.q, p.k = x.k, p.v = x.v, p.igate = x.igate, p.fgate = x.fgate;
  if (initial) p.C0 = initial->C, p.n0 = initial->n, p.m0 = initial->m;
  return p;
}

namespace {

// The chunk-parallel grids' planes: as wide as a grid's y dimension allows with up to 16 row tiles
// a chunk (L = 1024).
void set_chunk_planes(Params& p) {
  p.chunk_stride = static_cast<int>(std::clamp<std::int64_t>(p.chunks, 1, 65535 / 16));
  p.chunk_planes = static_cast<int>((p.chunks + p.chunk_stride - 1) / p.chunk_stride);
}

}  // namespace

std::vector<std::int64_t> set_chunk_size(Params& p, int L, const Packing* packing) {
  p.L = L;
  if (!packing) {
    p.nc = static_cast<int>((p.S + L - 1) / L);
    p.tokens = static_cast<std::int64_t>(p.BH) * p.S;
    p.chunks = static_cast<std::int64_t>(p.BH) * p.nc;
    p.states = static_cast<std::int64_t>(p.BH) * (p.nc + 1);
    set_chunk_planes(p);
    return {};
  }
  const std::int64_t N = packing->N();
  std::vector<std::int64_t> tables = packing->cu_seqlens;  // cu_seqlens, then chunk_offsets, then row_order
  std::int64_t most = 0;
  tables.push_back(0);
  for (std::int64_t i = 0; i < N; ++i) {
    const std::int64_t chunks = (packing->length(i) + L - 1) / L;
    tables.push_back(tables.back() + chunks);
    most = std::max(most, chunks);
  }
  std::vector<std::int64_t> by_length(N);
  std::iota(by_length.begin(), by_length.end(), std::int64_t{0});
  std::stable_sort(by_length.begin(), by_length.end(),
                   [&](std::int64_t a, std::int64_t b) { return packing->length(a) > packing->length(b); });
  for (std::int64_t i : by_length)
    for (int h = 0; h < p.NH; ++h) tables.push_back(i * p.NH + h);
  p.N = static_cast<int>(N);
  p.BH = static_cast<int>(N * p.NH);
  p.nc = static_cast<int>(most);
  p.total_chunks = tables[2 * N + 1];
  p.tokens = static_cast<std::int64_t>(p.NH) * p.S;
  p.chunks = p.NH * p.total_chunks;
  p.states = p.NH * (p.total_chunks + N);
  set_chunk_planes(p);
  return tables;
}

void place_tables(Params& p, const std::int64_t* device) {
  p.cu_seqlens = device;
  p.chunk_offsets = device + (p.N + 1);
  p.row_order = device + 2 * (p.N + 1);
}

void add_forward_scratch(Scratch& s, Params& p) {
  s.add(p.b, p.tokens);
  s.add(p.u, p.tokens);
  s.add(p.U, p.tokens);
  s.add(p.argmax, p.tokens);
  s.add(p.Cs, p.states * p.DQK * p.DV);
  s.add(p.ns, p.states * p.DQK);
  s.add(p.ms, p.states);
}

void add_backward_scratch(Scratch& s, Params& p) {
  add_forward_scratch(s, p);
  for (float** a : {&p.den, &p.den0, &p.mrow, &p.s, &p.s0, &p.dhat, &p.delta, &p.dmr, &p.D0, &p.lastrow})
    s.add(*a, p.tokens);
  s.add(p.dCs, p.chunks * p.DQK * p.DV);
  s.add(p.dns, p.chunks * p.DQK);
  for (double** a : {&p.dot0, &p.last_rowsum, &p.last_adj, &p.dm_chunk}) s.add(*a, p.chunks);
  for (float** a : {&p.dA, &p.P, &p.D}) s.add(*a, p.chunks * p.L * p.L);
}

namespace {

// p's rows r0.. as a problem of their own: every per-row pointer moved to row r0 (the inputs and
// their gradients only where `inputs` is set: packed sequences keep them, their offsets say where).
Params rows_from(Params p, std::int64_t r0, bool inputs, std::size_t input_size) {
  const auto move = [](auto* base, std::int64_t elements, std::size_t size) {
    using Byte = std::conditional_t<std::is_const_v<std::remove_pointer_t<decltype(base)>>, const char, char>;
    return base ? reinterpret_cast<decltype(base)>(reinterpret_cast<Byte*>(base) + elements * size) : base;
  };
  const std::size_t gate_size = p.gates_f32 ? 4 : input_size;
  if (inputs) {
    const std::int64_t t = r0 * p.seq_stride;
    p.q = move(p.q, t * p.DQK, input_size), p.k = move(p.k, t * p.DQK, input_size);
    p.v = move(p.v, t * p.DV, input_size), p.dh = move(p.dh, t * p.DV, input_size);
    p.igate = move(p.igate, t, gate_size), p.fgate = move(p.fgate, t, gate_size);
    p.dq = move(p.dq, t * p.DQK, input_size), p.dk = move(p.dk, t * p.DQK, input_size);
    p.dv = move(p.dv, t * p.DV, input_size);
    p.digate = move(p.digate, t, gate_size), p.dfgate = move(p.dfgate, t, gate_size);
  }
  const std::int64_t CS = static_cast<std::int64_t>(p.DQK) * p.DV;
  p.C0 = move(p.C0, r0 * CS, 4), p.n0 = move(p.n0, r0 * p.DQK, 4), p.m0 = move(p.m0, r0, 4);
  p.dC_last = move(p.dC_last, r0 * CS, 4), p.dn_last = move(p.dn_last, r0 * p.DQK, 4);
  p.dm_last = move(p.dm_last, r0, 4);
  p.dC0 = move(p.dC0, r0 * CS, 4), p.dn0 = move(p.dn0, r0 * p.DQK, 4), p.dm0 = move(p.dm0, r0, 4);
  return p;
}

// The scratch bytes of the backward of p (L and the packing as given).
std::int64_t backward_scratch_bytes(Params p, const Packing* packing) {
  Scratch s(nullptr);  // sizes only: never allocated
  PackedTables tables(p, p.L, packing);
  tables.add_to(s);
  add_backward_scratch(s, p);
  return s.bytes();
}

}  // namespace

std::int64_t backward_scratch_budget() {
  const char* mib = std::getenv("FLASHLSTM_BACKWARD_SCRATCH_MIB");
  if (!mib || !*mib) return kBackwardScratch;
  char* end = nullptr;
  const long long value = std::strtoll(mib, &end, 10);
  require(*end == '\0' && value >= 1, "FLASHLSTM_BACKWARD_SCRATCH_MIB", "must be a whole number of MiB >= 1, got '{}'",
          mib);
  return static_cast<std::int64_t>(value) << 20;
}

std::vector<BackwardPass> plan_backward(const Params& p, const Packing* packing, std::size_t input_size,
                                        std::int64_t budget, int wave_rows) {
  std::vector<BackwardPass> passes;
  if (!packing) {
    // Every row needs the same scratch: as many rows a pass as the budget holds.
    Params one = p;
    one.BH = 1;
    const std::int64_t per_row = backward_scratch_bytes(one, nullptr);
    int rows = static_cast<int>(std::clamp<std::int64_t>(budget / std::max<std::int64_t>(per_row, 1), 1, p.BH));
    if (rows < p.BH && wave_rows > 1) rows = rows >= wave_rows ? rows - rows % wave_rows : std::min(wave_rows, p.BH);
    for (int r0 = 0; r0 < p.BH; r0 += rows) {
      BackwardPass pass{rows_from(p, r0, true, input_size), std::nullopt};
      pass.params.BH = std::min(rows, p.BH - r0);
      passes.push_back(pass);
    }
    return passes;
  }
  // Packed: whole sequences (all their heads) a pass, in order, as many as the budget holds.
  const std::vector<std::int64_t>& cu = packing->cu_seqlens;
  const auto pass_of = [&](std::int64_t i0, std::int64_t i1) {
    BackwardPass pass{rows_from(p, i0 * p.NH, false, input_size),
                      Packing{std::vector<std::int64_t>(cu.begin() + i0, cu.begin() + i1 + 1)}};
    pass.params.S = static_cast<int>(cu[i1] - cu[i0]);
    return pass;
  };
  // A group's scratch is at most the sum of its sequences' own (each rounds its arrays up).
  const auto own_bytes = [&](std::int64_t i) {
    const BackwardPass alone = pass_of(i, i + 1);
    return backward_scratch_bytes(alone.params, &*alone.packing);
  };
  for (std::int64_t i0 = 0, N = packing->N(); i0 < N;) {
    std::int64_t i1 = i0 + 1, bytes = own_bytes(i0);
    for (std::int64_t next; i1 < N && bytes + (next = own_bytes(i1)) <= budget; ++i1) bytes += next;
    if (cu[i1] > cu[i0]) passes.push_back(pass_of(i0, i1));  // empty sequences alone: nothing to run
    i0 = i1;
  }
  return passes;
}

void run_forward(Params p, const Packing* packing, DType dtype, cudaStream_t stream) {
  if (fused_forward_applies(dtype, p.DQK, p.DV)) return run_fused_forward(p, packing, stream);
  if (dtype == DType::float32) forward_float32(p, packing, stream);
  else forward_bf16(p, packing, stream);
}

void run_backward(Params p, const Packing* packing, DType dtype, cudaStream_t stream) {
  if (dtype == DType::float32) backward_float32(p, packing, stream);
  else backward_bf16(p, packing, stream);
}

}  // namespace detail

int forward_chunk_size(const Inputs& x, int chunk_size) {
  return detail::fused_forward_applies(x.dtype, x.dims.DQK, x.dims.DV) ? detail::kFusedChunk : chunk_size;
}

namespace {

void forward(const Inputs& x, const detail::Packing* packing, const ConstState* initial, void* h, const State& last,
             int chunk_size, const Options& options, cudaStream_t stream) {
  check_inputs(x, true);
  require(x.dims.S <= kMaxInt, "S", "must be < 2^31, got {}", x.dims.S);
  check_chunk_size(chunk_size);
  check_options(options);
  if (initial) check_state(*initial, "initial", false);
  check_device_pointer(h, "h", element_size(x.dtype));
  const bool with_last = check_state(last, "last", true);
  detail::Params p = detail::make_params(x, initial, chunk_size, options);
  p.h = h;
  if (with_last) p.C_last = last.C, p.n_last = last.n, p.m_last = last.m;
  stream = usable(stream);
  detail::run_forward(p, packing, x.dtype, stream);
  if (packing && with_last) hand_on_empty(last, initial ? *initial : ConstState{}, *packing, x.dims, stream);
}

void backward(const Inputs& x, const detail::Packing* packing, const ConstState* initial, const OutputGrad& grad,
              const InputGrad& out, int chunk_size, const Options& options, cudaStream_t stream) {
  check_inputs(x, true);
  require(x.dims.S <= kMaxInt, "S", "must be < 2^31, got {}", x.dims.S);
  check_chunk_size(chunk_size);
  check_options(options);
  if (initial) check_state(*initial, "initial", false);
  const std::size_t a = element_size(x.dtype);
  check_device_pointer(grad.dh, "dh", a);
  if (grad.dC_last) check_device_pointer(grad.dC_last, "dC_last", 4);
  if (grad.dn_last) check_device_pointer(grad.dn_last, "dn_last", 4);
  if (grad.dm_last) check_device_pointer(grad.dm_last, "dm_last", 4);
  check_device_pointer(out.dq, "dq", a);
  check_device_pointer(out.dk, "dk", a);
  check_device_pointer(out.dv, "dv", a);
  check_device_pointer(out.digate, "digate", gate_size(x));
  check_device_pointer(out.dfgate, "dfgate", gate_size(x));
  const bool with_dinitial = check_state(out.dinitial, "dinitial", true);
  detail::Params p = detail::make_params(x, initial, chunk_size, options);
  p.dh = grad.dh, p.dC_last = grad.dC_last, p.dn_last = grad.dn_last, p.dm_last = grad.dm_last;
  p.dq = out.dq, p.dk = out.dk, p.dv = out.dv, p.digate = out.digate, p.dfgate = out.dfgate;
  if (with_dinitial) p.dC0 = out.dinitial.C, p.dn0 = out.dinitial.n, p.dm0 = out.dinitial.m;
  stream = usable(stream);
  detail::run_backward(p, packing, x.dtype, stream);
  if (packing && with_dinitial)
    hand_on_empty(out.dinitial, ConstState{grad.dC_last, grad.dn_last, grad.dm_last}, *packing, x.dims, stream);
}

}  // namespace

void forward_chunkwise(const Inputs& x, const ConstState* initial, void* h, const State& last, int chunk_size,
                       const Options& options, cudaStream_t stream) {
  forward(x, nullptr, initial, h, last, chunk_size, options, stream);
}

void backward_chunkwise(const Inputs& x, const ConstState* initial, const OutputGrad& grad, const InputGrad& out,
                        int chunk_size, const Options& options, cudaStream_t stream) {
  backward(x, nullptr, initial, grad, out, chunk_size, options, stream);
}

void forward_varlen(const Inputs& x, const std::vector<std::int64_t>& cu_seqlens, const ConstState* initial, void* h,
                    const State& last, int chunk_size, const Options& options, cudaStream_t stream) {
  check_dims(x.dims, true);
  const detail::Packing packing = check_packing(x, cu_seqlens);
  forward(x, &packing, initial, h, last, chunk_size, options, stream);
}

void backward_varlen(const Inputs& x, const std::vector<std::int64_t>& cu_seqlens, const ConstState* initial,
                     const OutputGrad& grad, const InputGrad& out, int chunk_size, const Options& options,
                     cudaStream_t stream) {
  check_dims(x.dims, true);
  const detail::Packing packing = check_packing(x, cu_seqlens);
  backward(x, &packing, initial, grad, out, chunk_size, options, stream);
}

void step(const Inputs& x, const State& state, void* h, const Options& options, cudaStream_t stream) {
  check_inputs(x, false);
  check_options(options);
  check_state(state, "state", false);
  check_device_pointer(h, "h", element_size(x.dtype));
  detail::run_step(x, state, h, 1, 0, options, usable(stream));
}

void forward_sequence(const Inputs& x, const State& state, void* h, int chunk_size, const Options& options,
                      cudaStream_t stream) {
  check_inputs(x, true);
  require(x.dims.S <= kMaxInt, "S", "must be < 2^31, got {}", x.dims.S);
  check_chunk_size(chunk_size);
  check_options(options);
  check_state(state, "state", false);
  check_device_pointer(h, "h", element_size(x.dtype));
  stream = usable(stream);
  const Dims& d = x.dims;
  const std::int64_t bulk = d.S - d.S % chunk_size;
  if (bulk > 0) {
    // The chunkwise pass reads its initial state while other blocks write the final one: start
    // from a copy.
    const std::int64_t BH = d.B * d.NH;
    float* copy = nullptr;
    Scratch scratch(stream);
    scratch.add(copy, BH * d.DQK * d.DV + BH * d.DQK + BH);
    scratch.allocate();
    const ConstState initial{copy, copy + BH * d.DQK * d.DV, copy + BH * d.DQK * d.DV + BH * d.DQK};
    cudaMemcpyAsync(copy, state.C, BH * d.DQK * d.DV * sizeof(float), cudaMemcpyDeviceToDevice, stream);
    cudaMemcpyAsync(const_cast<float*>(initial.n), state.n, BH * d.DQK * sizeof(float), cudaMemcpyDeviceToDevice,
                    stream);
    cudaMemcpyAsync(const_cast<float*>(initial.m), state.m, BH * sizeof(float), cudaMemcpyDeviceToDevice, stream);
    Inputs prefix = x;
    prefix.dims.S = bulk;
    detail::Params p = detail::make_params(prefix, &initial, chunk_size, options);
    p.seq_stride = d.S;
    p.h = h;
    p.C_last = state.C, p.n_last = state.n, p.m_last = state.m;
    detail::run_forward(p, nullptr, x.dtype, stream);
  }
  for (std::int64_t t = bulk; t < d.S; ++t) detail::run_step(x, state, h, d.S, t, options, stream);
}

}  // namespace flashlstm::cuda::mlstm
