// The numbers every check in the project is held to, defined once. docs/validation.md explains
// where each comes from; the tests, `flashlstm validate` and the CUDA kernel checks read them here.
#pragma once

namespace flashlstm::check {

// A float64 form against the float64 recurrent oracle (or a run in pieces against the whole run):
// relative L2 error per tensor.
inline constexpr double float64_tolerance = 1e-10;

// A float32 form of the reference against the float64 oracle, on the same float-representable inputs.
inline constexpr double float32_tolerance = 1e-4;

// A backward against central finite differences of its own forward, per directional derivative.
inline constexpr double finite_difference_tolerance = 1e-6;

// A reference tensor whose norm is below near_zero · scale · √n (n elements, scale the typical size
// of an element of the problem's inputs) is measured against that floor instead of its own norm:
// a gradient that decayed to 1e-30 is not "relative error 1".
inline constexpr double near_zero = 1e-6;

// A kernel's error is at most kernel_factor times the error of its baseline (the CPU reference in
// the kernel's arithmetic on the kernel's inputs), plus the error of rounding the exact result to
// the kernel's output type, plus kernel_slack (four float32 ulps).
inline constexpr double kernel_factor = 2.0;
inline constexpr double kernel_slack = 4.0 / (1 << 23);

}  // namespace flashlstm::check
