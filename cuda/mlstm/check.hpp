// Checking the CUDA mLSTM kernels against the CPU reference (DESIGN.md's criterion): on the same
// random inputs, each output and gradient of a kernel is compared with the float64 reference, and
// its relative L2 error must be at most twice that of the reference run in the kernel's own
// precision (float32 arithmetic on the very inputs the kernel sees: bf16-rounded for bf16; the
// chunkwise checks take the largest error of the float32 reference at two chunk sizes and in
// recurrent form), plus the error of rounding the float64 result to the kernel's output type, plus
// four float32 ulps (4·2^-23). NaN never passes. Outputs are poisoned with NaN before each launch,
// so an element the kernel does not write fails. Used by tests/test_cuda_mlstm.cpp and
// `flashlstm validate`.
//
// This layer links both the reference and the kernels; neither of those depends on it.
#pragma once

#include "cuda/mlstm/mlstm.hpp"
#include "reference/mlstm/check.hpp"

#include <map>
#include <string>

namespace flashlstm::cuda::mlstm {

struct KernelCheck {
  std::string name;                         // "chunkwise bf16 exp L=128 B1 NH2 S1000 DQK48 DV96 +state"
  std::map<std::string, double> kernel;     // per tensor: the kernel's relative L2 error
  std::map<std::string, double> reference;  // the reference in the kernel's precision
  std::map<std::string, double> slack;      // rounding of the output type + 4·2^-23

  double limit(const std::string& tensor) const;  // 2·reference + slack
  bool passed() const;
  std::string worst() const;         // the tensor closest to (or furthest over) its limit
  double max_kernel_error() const;   // NaN if any is NaN
  std::string report() const;        // one line per tensor: kernel, reference, limit
};

std::string to_string(DType dtype);

// forward_chunkwise (h and the final state) and, with `backward`, backward_chunkwise (every gradient,
// the initial state's too when the shape has one).
KernelCheck check_chunkwise(const flashlstm::mlstm::ProblemShape& shape, int chunk_size, const Options& options,
                            DType dtype, std::uint64_t seed, bool backward = true);
// One step of B x NH heads from a random state (shape.S is ignored).
KernelCheck check_step(const flashlstm::mlstm::ProblemShape& shape, const Options& options, DType dtype,
                       std::uint64_t seed);
// forward_sequence over shape.S tokens from a random state: chunkwise bulk, then steps.
KernelCheck check_sequence(const flashlstm::mlstm::ProblemShape& shape, int chunk_size, const Options& options,
                           DType dtype, std::uint64_t seed);

}  // namespace flashlstm::cuda::mlstm
