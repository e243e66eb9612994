// The chunkwise forward and backward on the host: scratch memory, the packed tables, and the order
// of the launches. Included by one translation unit per input type.
#pragma once

#include "cuda/mlstm/chunkwise_backward.cuh"
#include "cuda/mlstm/chunkwise_forward.cuh"

namespace flashlstm::cuda::mlstm::detail {
namespace {

inline int cdiv(int a, int b) { return (a + b - 1) / b; }

template <class T>
void forward_passes(const Params& p, cudaStream_t stream) {
  gate_prep<T><<<static_cast<unsigned>((p.chunks + 127) / 128), 128, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "gate_prep");
  const auto bytes = static_cast<int>(StatePassSmem<T>::bytes);
  check_cuda(cudaFuncSetAttribute(state_pass<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
             "state_pass shared memory");
  state_pass<T><<<dim3(cdiv(p.DV, kTile), cdiv(p.DQK, kTile), p.BH), kThreads, bytes, stream>>>(p);
  check_cuda(cudaGetLastError(), "state_pass");
}

template <class T, bool kStats>
void launch_chunk_output(const Params& p, cudaStream_t stream) {
  const auto bytes = static_cast<int>(OutputSmem<T>::bytes);
  check_cuda(cudaFuncSetAttribute(chunk_output<T, kStats>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
             "chunk_output shared memory");
  chunk_output<T, kStats>
      <<<dim3(cdiv(p.DV, kOutCols), p.chunk_stride * (p.L / kTile), p.chunk_planes), kThreads, bytes, stream>>>(p);
  check_cuda(cudaGetLastError(), kStats ? "chunk_output (statistics)" : "chunk_output");
}

template <class T>
void forward(Params p, const Packing* packing, cudaStream_t stream) {
  Scratch scratch(stream);
  PackedTables tables(p, p.L, packing);
  tables.add_to(scratch);
  add_forward_scratch(scratch, p);
  scratch.allocate();
  tables.upload(p, stream);
  forward_passes<T>(p, stream);
  launch_chunk_output<T, false>(p, stream);
}

// The backward of one pass's rows (plan_backward).
template <class T>
void backward_pass(Params p, const Packing* packing, cudaStream_t stream) {
  Scratch scratch(stream);
  PackedTables tables(p, p.L, packing);
  const std::int64_t tokens = p.tokens, chunks = p.chunks;
  tables.add_to(scratch);
  add_backward_scratch(scratch, p);
  scratch.allocate();
  tables.upload(p, stream);
  for (float* a : {p.s, p.s0, p.lastrow}) check_cuda(cudaMemsetAsync(a, 0, tokens * sizeof(float), stream), "memset");
  check_cuda(cudaMemsetAsync(p.dot0, 0, chunks * sizeof(double), stream), "memset");

  p.C_last = p.n_last = p.m_last = nullptr;
  forward_passes<T>(p, stream);
  const int row_tiles = p.chunk_stride * (p.L / kTile);  // a plane's chunk slots, L/64 row tiles each
  const dim3 dv_rows(cdiv(p.DV, kTile), row_tiles, p.chunk_planes), dqk_rows(cdiv(p.DQK, kTile), row_tiles, p.chunk_planes);
  launch_chunk_output<T, true>(p, stream);
  readout_grad<<<static_cast<unsigned>((tokens + 255) / 256), 256, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "readout_grad");
  state_pass_reverse<T><<<dim3(cdiv(p.DV, kTile), cdiv(p.DQK, kTile), p.BH), kThreads, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "state_pass_reverse");
  intra_grad<T><<<dim3(p.L / kTile, row_tiles, p.chunk_planes), kThreads, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "intra_grad");
  grad_q<T><<<dqk_rows, kThreads, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "grad_q");
  grad_k<T><<<dqk_rows, kThreads, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "grad_k");
  grad_v<T><<<dv_rows, kThreads, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "grad_v");
  gate_rows<<<static_cast<unsigned>((tokens * 32 + 255) / 256), 256, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "gate_rows");
  gate_chain<<<cdiv(p.BH, 128), 128, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "gate_chain");
  gate_cols<T><<<dim3(p.chunk_stride, p.chunk_planes), kMaxChunk, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "gate_cols");
}

// The backward in passes over the rows whose scratch stays within the budget (one pass where the
// whole fits); each pass frees its scratch on the stream before the next allocates.
template <class T>
void backward(const Params& p, const Packing* packing, cudaStream_t stream) {
  // The rows whose state-pass blocks fill the GPU once (the state passes walk their rows' chunks one
  // after another, so passes of whole waves cost them nothing).
  int device = 0, sms = 0, per_sm = 0;
  check_cuda(cudaGetDevice(&device), "device");
  check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "SM count");
  const auto bytes = static_cast<int>(StatePassSmem<T>::bytes);
  check_cuda(cudaFuncSetAttribute(state_pass<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
             "state_pass shared memory");
  check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, state_pass<T>, kThreads, bytes), "occupancy");
  const int wave_rows = std::max(1, sms * per_sm / (cdiv(p.DV, kTile) * cdiv(p.DQK, kTile)));
  for (const BackwardPass& pass : plan_backward(p, packing, sizeof(T), backward_scratch_budget(), wave_rows))
    backward_pass<T>(pass.params, pass.packing ? &*pass.packing : nullptr, stream);
}

}  // namespace
}  // namespace flashlstm::cuda::mlstm::detail
