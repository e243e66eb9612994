// The element types of the arrays the CUDA kernels read and write, named as numpy and torch name
// them. Plain C++ (no fmt, no xtensor), so that host code, kernels and checks share it.
#pragma once

#include <cstddef>

namespace flashlstm {

enum class DType { float32, bfloat16 };

constexpr const char* to_string(DType dtype) { return dtype == DType::float32 ? "float32" : "bfloat16"; }
constexpr std::size_t element_size(DType dtype) { return dtype == DType::float32 ? 4 : 2; }

}  // namespace flashlstm
