// Internal to the CUDA pLSTM: the parameter block the kernels read and the entry points api.cpp
// calls after checking the arguments. Plain C++ so that the checking code needs no CUDA compiler.
#pragma once

#include "cuda/plstm/plstm.hpp"

#include <cstdint>

namespace flashlstm::cuda::plstm::detail {

struct GridParams {
  int B = 0, NH = 0, X = 0, Y = 0, DQK = 0, DV = 0, orientations = 1;
  float scale = 0.f;
  const void *q = nullptr, *k = nullptr, *v = nullptr;
  const float* gates[9] = {};  // Sr, Sd, Trl, Tru, Tdu, Tdl, Ml, Mu, D
  void* h = nullptr;
};

struct GridBackwardParams : GridParams {
  const void* dh = nullptr;
  void *dq = nullptr, *dk = nullptr, *dv = nullptr;
  float* dgates[9] = {};  // dSr, ..., dD, laid out as the gates
  int segment = 1;        // columns of reverse weights the dT kernel keeps on chip
  bool gates_on_chip = false;  // the dT kernel copies the gates it reads into shared memory
  float* scratch = nullptr;  // the dT kernel's checkpoints: scratch_per_block floats per (batch·head, orientation)
  std::int64_t scratch_per_block = 0;
};

// What the backward needs for these sizes: whether its blocks fit in shared memory, the dT kernel's
// segment and scratch.
struct GridBackwardPlan {
  bool fits = false;
  int segment = 0;
  bool gates_on_chip = false;
  std::int64_t scratch_per_block = 0;
};
GridBackwardPlan plan_grid_backward(int DQK, int DV, int X, int Y, DType dtype);
void run_grid_backward(const GridBackwardParams& p, DType dtype, cudaStream_t stream);

struct DagParams {
  int B = 0, NH = 0, N = 0, E = 0, DQK = 0, DV = 0;
  std::int64_t A = 0;
  float scale = 0.f;
  const std::int32_t *in_offsets = nullptr, *in_edges = nullptr, *out_offsets = nullptr, *out_edges = nullptr;
  const std::int32_t *level_nodes = nullptr, *arc_offsets = nullptr;
  const void *q = nullptr, *k = nullptr, *v = nullptr, *dh = nullptr;
  const float *S = nullptr, *T = nullptr, *M = nullptr, *D = nullptr;
  void* h = nullptr;
  float* states = nullptr;   // (B·NH, E, DQK, DV): every edge's state
  float* dstates = nullptr;  // the same for the adjoints
  int* ready = nullptr;                      // (B·NH, E): an edge's state (or adjoint) is complete
  unsigned long long* next_task = nullptr;   // the next task to claim
  void *dq = nullptr, *dk = nullptr, *dv = nullptr;
  float *dS = nullptr, *dT = nullptr, *dM = nullptr, *dD = nullptr;
};
void run_dag_forward(const DagParams& p, DType dtype, cudaStream_t stream);
void run_dag_backward(const DagParams& p, DType dtype, cudaStream_t stream);

// 1-D sequences, chunkwise (sequence.cu).
struct SequenceParams {
  SequenceDims dims;
  float scale = 0.f;
  const void *q = nullptr, *k = nullptr, *v = nullptr, *dh = nullptr;
  const float *S = nullptr, *T = nullptr, *M = nullptr, *D = nullptr;
  void* h = nullptr;
  float* states = nullptr;   // (B·NH, chunks, DQK, DV): the state entering each chunk of 64 tokens
  float* dstates = nullptr;  // the same shape: the gradient of the state leaving each chunk
  void *dq = nullptr, *dk = nullptr, *dv = nullptr;
  float *dS = nullptr, *dT = nullptr, *dM = nullptr, *dD = nullptr;
};
std::int64_t sequence_state_floats(const SequenceDims& dims);  // the floats of `states` (and of `dstates`)
void run_sequence_forward(const SequenceParams& p, DType dtype, cudaStream_t stream);
void run_sequence_backward(const SequenceParams& p, DType dtype, cudaStream_t stream);

// The forward and backward from chunk maps (grid_maps.cu), where their blocks fit: they need
// grid_maps_scratch_floats(p, backward) floats of scratch.
bool grid_maps_fits(const GridParams& p, DType dtype, bool backward);
std::int64_t grid_maps_scratch_floats(const GridParams& p, bool backward);
void run_grid_forward_maps(const GridParams& p, DType dtype, float* scratch, cudaStream_t stream);
void run_grid_backward_maps(const GridBackwardParams& p, DType dtype, float* scratch, cudaStream_t stream);

// The forward with a dynamic programme per tile of targets (grid.cu), for the rest: the largest Y its
// shared memory holds for this DQK and dtype.
int grid_max_Y(int DQK, DType dtype);
void run_grid_forward(const GridParams& p, DType dtype, cudaStream_t stream);

}  // namespace flashlstm::cuda::plstm::detail
