// Gate math that stays finite for any finite pre-activation: logsigmoid(x) = min(x, 0) -
// log1p(exp(-|x|)) never exponentiates a positive number; sigmoid is written per sign for the same
// reason. Used by the CPU reference; the CUDA kernels have their own device copies of the formulas.
#pragma once

#include <cmath>

namespace flashlstm {

template <class T>
T logsigmoid(T x) {
  return std::min(x, T(0)) - std::log1p(std::exp(-std::abs(x)));
}

template <class T>
T sigmoid(T x) {
  if (x >= T(0)) return T(1) / (T(1) + std::exp(-x));
  T e = std::exp(x);
  return e / (T(1) + e);
}

// softplus(x) = log(1 + exp(x)) = -logsigmoid(-x)
template <class T>
T softplus(T x) {
  return -logsigmoid(-x);
}

}  // namespace flashlstm
