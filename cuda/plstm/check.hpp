// The CUDA pLSTM kernels against the CPU reference (docs/validation.md): on the same random inputs
// (q, k, v rounded to the kernel's dtype; gates float32), every output is compared with the float64
// reference and held to
//
//   2 × (the baseline's error) + (the error of rounding the float64 result to the output type)
//   + 4 float32 ulps.
//
// The baseline is the float32 CPU reference on the kernel's inputs (its recurrent and parallel forms;
// the larger error counts). Outputs are poisoned with NaN before each launch, so an element the kernel
// does not write fails.
#pragma once

#include "cuda/plstm/plstm.hpp"
#include "reference/plstm/check.hpp"

#include <string>

namespace flashlstm::cuda::plstm {

struct KernelCheck {
  std::string name;      // "grid bfloat16 x4 P-mode B1 NH2 5x7 DQK8 DV6"
  std::string baseline;  // what the bounds are computed from
  check::Report report;  // every output with its error and bound
};

// grid_forward on a random problem with gates drawn by `mode`, for one orientation (orientation 0's
// gates) or the sum over four.
KernelCheck check_grid(const flashlstm::plstm::GridShape& shape, int orientations, flashlstm::plstm::GateMode mode,
                       DType dtype, std::uint64_t seed);

// grid_backward on the same kind of problem with dh ~ N(0, 1): dq, dk, dv and the nine gate gradients
// (per orientation) against the reference's exact backward (float64 oracle; float32 baseline with
// chunk sizes 1 and 2).
KernelCheck check_grid_backward(const flashlstm::plstm::GridShape& shape, int orientations,
                                flashlstm::plstm::GateMode mode, DType dtype, std::uint64_t seed);

// sequence_forward and sequence_backward (with dh) on a random 1-D problem (raw gates ~ U(-1, 1):
// transitions of either sign), against the reference's recurrent form and exact backward (float32
// baselines: the recurrent and parallel forms; the backward with chunk sizes 1 and 4).
KernelCheck check_sequence(const flashlstm::plstm::SequenceShape& shape, DType dtype, std::uint64_t seed);
KernelCheck check_sequence_backward(const flashlstm::plstm::SequenceShape& shape, DType dtype, std::uint64_t seed);

// dag_forward and dag_backward on a random problem on `dag` (gates by `mode`), against the reference's
// recurrent form and exact backward (float32 baselines: the recurrent and levels forms; the backward).
KernelCheck check_dag(const graph::Dag& dag, const flashlstm::plstm::DagShape& shape, flashlstm::plstm::GateMode mode,
                      DType dtype, std::uint64_t seed);
KernelCheck check_dag_backward(const graph::Dag& dag, const flashlstm::plstm::DagShape& shape,
                               flashlstm::plstm::GateMode mode, DType dtype, std::uint64_t seed);

}  // namespace flashlstm::cuda::plstm
