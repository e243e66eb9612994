// Error measures used by the tests, `flashlstm validate` and the kernel checks. Relative L2 is the
// protocol's measure (DESIGN.md): ||a - b|| / ||b|| over the whole tensor, b the reference.
#pragma once

#include "core/view.hpp"

#include <cmath>
#include <limits>

namespace flashlstm {

// ||a - b||_2 / ||b||_2, accumulated in long double; NaN anywhere in a gives NaN. When b is all
// zeros the absolute norm ||a|| is returned, so "both zero" is 0.
template <class A, class B>
double rel_l2(const A* a, const B* b, index_t size) {
  long double diff = 0, ref = 0;
  for (index_t i = 0; i < size; ++i) {
    long double d = static_cast<long double>(a[i]) - static_cast<long double>(b[i]);
    diff += d * d;
    ref += static_cast<long double>(b[i]) * static_cast<long double>(b[i]);
  }
  if (std::isnan(static_cast<double>(diff))) return std::numeric_limits<double>::quiet_NaN();
  return ref > 0 ? static_cast<double>(std::sqrt(diff / ref)) : static_cast<double>(std::sqrt(diff));
}

template <class TA, class TB, std::size_t N>
double rel_l2(const xt::xtensor<TA, N>& a, const xt::xtensor<TB, N>& b) {
  require(a.shape() == b.shape(), "rel_l2", "shapes differ");
  return rel_l2(a.data(), b.data(), static_cast<index_t>(a.size()));
}

template <class T, std::size_t N>
bool all_finite(const xt::xtensor<T, N>& a) {
  for (const auto& e : a)
    if (!std::isfinite(static_cast<double>(e))) return false;
  return true;
}

}  // namespace flashlstm
