// The CUDA mLSTM kernels against the CPU reference, as docs/validation.md defines it: on the same
// random inputs (rounded to the kernel's dtype), every output and gradient of a kernel is compared
// with the float64 reference and held to
//
//   2 × (its baseline's error) + (the error of rounding the float64 result to the output type) + 4 float32 ulps,
//
// where the baseline is the CPU reference computing in the kernel's arithmetic on the kernel's
// inputs: for float32 kernels the float32 reference (the worst of the chunkwise form at the kernel's
// chunk size, at another one, and the recurrent form); for bf16 kernels a plain bf16 computation of
// the same form — the chunkwise form with every matrix-product operand rounded to bf16, float32
// accumulation, outputs rounded to bf16 (mlstm::Operands::bf16). The step has no matrix products: its
// baseline is float32 arithmetic with h rounded to the output type. NaN never passes, and outputs are
// poisoned with NaN before each launch, so an element the kernel does not write fails.
//
// Used by tests/test_cuda_mlstm.cpp and `flashlstm validate`. This library links both the reference
// (through flashlstm::check) and the kernels; neither of those depends on it.
#pragma once

#include "cuda/mlstm/mlstm.hpp"
#include "reference/mlstm/check.hpp"

#include <string>
#include <vector>

namespace flashlstm::cuda::mlstm {

// The kernel's types: q, k, v, h and their gradients of `inputs`; the gates and their gradients
// float32 where float32_gates (with bf16 inputs), else of `inputs`.
struct KernelTypes {
  DType inputs = DType::float32;
  bool float32_gates = false;
  KernelTypes(DType inputs_, bool float32_gates_ = false) : inputs(inputs_), float32_gates(float32_gates_) {}
  DType gates() const { return float32_gates ? DType::float32 : inputs; }
  std::string name() const;  // "bfloat16", "bfloat16, float32 gates"
};

struct KernelCheck {
  std::string name;      // "chunkwise bfloat16 exp L=128 B1 NH2 S1000 DQK48 DV96 +state"
  std::string baseline;  // what the bounds are computed from
  check::Report report;  // every output and gradient with its error and bound
};

// forward_chunkwise (h and the final state) and, with `backward`, backward_chunkwise (every gradient,
// the initial state's too when the shape has one).
KernelCheck check_chunkwise(const flashlstm::mlstm::ProblemShape& shape, int chunk_size, const Options& options,
                            const KernelTypes& types, std::uint64_t seed, bool backward = true);
// forward_varlen and backward_varlen on N = lengths.size() packed sequences of the given lengths
// (any may be 0) with shape's NH, DQK, DV (shape.B and shape.S are not used), each sequence with its
// own initial state (with shape.initial_state) and final-state gradients, against the float64
// reference run on each sequence alone; the baselines likewise.
KernelCheck check_varlen(const flashlstm::mlstm::ProblemShape& shape, const std::vector<flashlstm::index_t>& lengths,
                         int chunk_size, const Options& options, const KernelTypes& types, std::uint64_t seed);
// One step of B x NH heads from a random state (shape.S is ignored).
KernelCheck check_step(const flashlstm::mlstm::ProblemShape& shape, const Options& options, const KernelTypes& types,
                       std::uint64_t seed);
// A NaN in q, k or v (`which`) at token `token` of head 0: the kernels' h and gradients are NaN
// exactly where the float64 reference's are (it propagates NaN as the recurrent form does), and h
// is finite before the token. The report's entries are counts that must be 0: "<name> NaN mismatches"
// and "h non-finite before the token".
check::Report check_nonfinite(const flashlstm::mlstm::ProblemShape& shape, int chunk_size, const Options& options,
                              const KernelTypes& types, std::uint64_t seed, char which, flashlstm::index_t token);

// forward_sequence over shape.S tokens from a random state: chunkwise bulk, then steps.
KernelCheck check_sequence(const flashlstm::mlstm::ProblemShape& shape, int chunk_size, const Options& options,
                           const KernelTypes& types, std::uint64_t seed);

}  // namespace flashlstm::cuda::mlstm
