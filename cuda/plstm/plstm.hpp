// The CUDA pLSTM kernels' host API. Same definition, argument names and layouts as the CPU reference
// (reference/plstm/grid.hpp), with device pointers instead of views.
//
// 2-D grids (X x Y patches, node (x, y) at index x·Y + y):
//
//   q, k (B, NH, X, Y, DQK), v and h (B, NH, X, Y, DV)            of `dtype` (float32 or bfloat16)
//   each of the nine gates Sr, Sd, Trl, Tru, Tdu, Tdl, Ml, Mu, D      float32,
//     (B, NH, X, Y) for one orientation, (4, B, NH, X, Y) for the sum over the four orientations
//     (orientation o flips x when o & 1 and y when o & 2; its gates are given unflipped).
//
// Row-major and contiguous. Any X, Y >= 1, DQK and DV from 1 to 256. The gating between two nodes
// (the sum over the grid paths of S · Π T · M) is built on chip, a 64 x 64 tile at a time, and never
// stored: memory is linear in the number of nodes.
//
// Every function checks its arguments and throws flashlstm::Error naming the one at fault. Work is
// queued on `stream` (0 means cudaStreamPerThread); scratch memory comes from the stream-ordered
// allocator (cudaMallocAsync) and is released on the same stream.
#pragma once

#include "core/dtype.hpp"
#include "core/plstm_options.hpp"
#include "cuda/common.hpp"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

namespace flashlstm::cuda::plstm {

using flashlstm::DType;
using flashlstm::cuda::device_available;
using flashlstm::plstm::Options;

struct GridDims {
  std::int64_t B = 0, NH = 0, X = 0, Y = 0, DQK = 0, DV = 0;
};

struct GridGates {
  const float *Sr = nullptr, *Sd = nullptr;                              // sources into the right / down edge
  const float *Trl = nullptr, *Tru = nullptr, *Tdu = nullptr, *Tdl = nullptr;  // transitions
  const float *Ml = nullptr, *Mu = nullptr;                              // marks of the left-in / top-in edge
  const float* D = nullptr;                                              // direct
};

struct GridInputs {
  const void *q = nullptr, *k = nullptr, *v = nullptr;
  GridGates gates;
  GridDims dims;
  int orientations = 1;  // 1: one orientation's gates (B, NH, X, Y); 4: the sum over (4, B, NH, X, Y)
  DType dtype = DType::bfloat16;
};

// h (B, NH, X, Y, DV) of `dtype`: the pLSTM on each (batch, head) grid — with 4 orientations, the sum
// of the four. Accumulates in float32; for bfloat16 inputs the gated scores are multiplied with v as
// two bf16 terms (hi + lo), so only the inputs' and the output's rounding is bf16's.
void grid_forward(const GridInputs& x, void* h, const Options& options, cudaStream_t stream);

// The gradients of grid_forward: dq, dk, dv like q, k, v (with 4 orientations summed over them), and
// each gate's gradient like the gate (per orientation).
struct GridGradients {
  void *dq = nullptr, *dk = nullptr, *dv = nullptr;
  float *dSr = nullptr, *dSd = nullptr;
  float *dTrl = nullptr, *dTru = nullptr, *dTdu = nullptr, *dTdl = nullptr;
  float *dMl = nullptr, *dMu = nullptr;
  float* dD = nullptr;
};

// The exact backward of grid_forward from dh (B, NH, X, Y, DV) of `dtype`: every output is written
// (no accumulation into it). Deterministic: each value has one writer. Memory beyond the arguments:
// the transition kernel keeps the reverse programme's state every few columns,
// B·NH·orientations·ceil(X / segment)·Y·64 floats (segment: the columns of weights that fit on chip).
void grid_backward(const GridInputs& x, const void* dh, const GridGradients& grad, const Options& options,
                   cudaStream_t stream);
// 1-D sequences (the chain t -> t+1; reference/plstm/sequence.hpp):
//
//   q, k (B, NH, S, DQK), v and h (B, NH, S, DV) of `dtype`; the gates S, T, M, D (B, NH, S) float32.
//
// The chunkwise form with chunks of 64 tokens (sequence.cu): work and memory linear in S. Any S >= 1,
// DQK and DV from 1 to 4096, B·NH <= 65535. Scratch: the state entering each chunk,
// B·NH·ceil(S/64)·DQK·DV floats (the backward twice that).
struct SequenceDims {
  std::int64_t B = 0, NH = 0, S = 0, DQK = 0, DV = 0;
};
struct SequenceInputs {
  const void *q = nullptr, *k = nullptr, *v = nullptr;
  const float *S = nullptr, *T = nullptr, *M = nullptr, *D = nullptr;
  SequenceDims dims;
  DType dtype = DType::bfloat16;
};
struct SequenceGradients {
  void *dq = nullptr, *dk = nullptr, *dv = nullptr;
  float *dS = nullptr, *dT = nullptr, *dM = nullptr, *dD = nullptr;
};
void sequence_forward(const SequenceInputs& x, void* h, const Options& options, cudaStream_t stream);
void sequence_backward(const SequenceInputs& x, const void* dh, const SequenceGradients& grad, const Options& options,
                       cudaStream_t stream);

// DAGs (reference/plstm/plstm.hpp's layouts, B x NH problems on one graph):
//
//   q, k (B, NH, N, DQK), v and h (B, NH, N, DV) of `dtype`; S, M (B, NH, E) per edge, T (B, NH, A)
//   per line-graph arc (graph::line_graph's numbering: by node, then in-edge, then out-edge),
//   D (B, NH, N): float32.
//
// The graph travels as graph::flatten()'s index arrays, checked and uploaded once into a DagPlan.
// The kernels run the recurrent form as a dataflow: one launch per direction, in which warps claim
// (batch·head, node) tasks in the level schedule's order and wait on per-edge ready flags; the
// backward runs the forward again to get every edge's state, then the nodes in reverse, each value
// written by one warp (deterministic). Memory: the forward keeps B·NH·E·DQK·DV floats of edge states
// and B·NH·E flags (scratch, released before returning); the backward twice the states.
struct DagGraph {  // host arrays, as graph::Flat holds them
  const std::int32_t *in_offsets = nullptr, *in_edges = nullptr;    // node -> in-edge CSR (N + 1, E)
  const std::int32_t *out_offsets = nullptr, *out_edges = nullptr;  // node -> out-edge CSR (N + 1, E)
  const std::int32_t *level_offsets = nullptr, *level_nodes = nullptr;  // level schedule (levels + 1, N)
  std::int64_t N = 0, E = 0, levels = 0;
};

class DagPlan {
 public:
  explicit DagPlan(const DagGraph& graph);  // checks the arrays (naming the one at fault) and uploads them
  ~DagPlan();
  DagPlan(const DagPlan&) = delete;
  DagPlan& operator=(const DagPlan&) = delete;
  std::int64_t N() const { return N_; }
  std::int64_t E() const { return E_; }
  std::int64_t A() const { return A_; }  // line-graph arcs: Σ_n in-degree · out-degree
  std::int64_t levels() const { return static_cast<std::int64_t>(level_offsets_.size()) - 1; }

  // Device arrays: in/out CSR, level nodes, per-node arc offsets; host level offsets.
  const std::int32_t* device(int which) const { return device_[which]; }
  const std::vector<std::int32_t>& level_offsets() const { return level_offsets_; }

 private:
  std::int64_t N_ = 0, E_ = 0, A_ = 0;
  std::int32_t* device_[6] = {};  // in_offsets, in_edges, out_offsets, out_edges, level_nodes, arc_offsets
  std::vector<std::int32_t> level_offsets_;
};

struct DagInputs {
  const void *q = nullptr, *k = nullptr, *v = nullptr;
  const float *S = nullptr, *T = nullptr, *M = nullptr, *D = nullptr;
  std::int64_t B = 0, NH = 0, DQK = 0, DV = 0;
  DType dtype = DType::bfloat16;
};
struct DagGradients {
  void *dq = nullptr, *dk = nullptr, *dv = nullptr;
  float *dS = nullptr, *dT = nullptr, *dM = nullptr, *dD = nullptr;
};
void dag_forward(const DagPlan& graph, const DagInputs& x, void* h, const Options& options, cudaStream_t stream);
void dag_backward(const DagPlan& graph, const DagInputs& x, const void* dh, const DagGradients& grad,
                  const Options& options, cudaStream_t stream);

// The scratch memory grid_backward takes for these sizes, in bytes.
std::int64_t grid_backward_scratch_bytes(const GridDims& dims, int orientations, DType dtype);

}  // namespace flashlstm::cuda::plstm
