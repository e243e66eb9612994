// The CUDA sLSTM/LSTM kernels against the CPU reference (docs/validation.md): on the same random
// inputs (Wx, R, b rounded to the kernel's dtype; states and upstream gradients float32), every
// output and gradient is compared with the float64 reference and held to
//
//   2 × (the baseline's error) + (the error of rounding the float64 result to the output type)
//   + 4 float32 ulps.
//
// The baseline is the float32 CPU reference on the kernel's inputs; for bf16 inputs with every
// operand of the recurrent products rounded to bf16 (Operands::bf16: a plain bf16 computation, the
// arithmetic of the tensor-core kernels). Outputs are poisoned with NaN before each launch, so an
// element the kernel does not write fails.
#pragma once

#include "cuda/slstm/slstm.hpp"
#include "reference/slstm/check.hpp"

#include <string>

namespace flashlstm::cuda::slstm {

struct KernelCheck {
  std::string name;      // "bfloat16 slstm B3 T64 NH2 DH32 +state"
  std::string baseline;  // what the bounds are computed from
  check::Report report;  // every output and gradient with its error and bound
};

// forward (states, last) and, with `backward`, backward (dWx, dR, db and, with an initial state,
// dinitial), from dh and — with `dlast` — the final state's gradient (else none: nullptr).
KernelCheck check_sequence(const flashlstm::slstm::ProblemShape& shape, const Options& options, DType dtype,
                           std::uint64_t seed, bool backward = true, bool dlast = true);

}  // namespace flashlstm::cuda::slstm
