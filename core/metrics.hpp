// Error measures. Relative L2 over the whole tensor, ||a - b|| / ||b|| with b the reference, is the
// measure every comparison in the project uses (docs/validation.md); the check library adds the
// bounds and the treatment of near-zero references on top of l2_distance.
#pragma once

#include "core/view.hpp"

#include <cmath>
#include <limits>

namespace flashlstm {

// ||a - b||₂ and ||b||₂ over n elements, accumulated in long double, and whether every element of
// both was finite.
struct L2Distance {
  double diff = 0, norm = 0;
  bool finite = true;
};

template <class A, class B>
L2Distance l2_distance(const A* a, const B* b, index_t n) {
  long double diff = 0, norm = 0;
  bool finite = true;
  for (index_t i = 0; i < n; ++i) {
    const auto x = static_cast<long double>(a[i]), y = static_cast<long double>(b[i]);
    finite = finite && std::isfinite(static_cast<double>(x)) && std::isfinite(static_cast<double>(y));
    diff += (x - y) * (x - y);
    norm += y * y;
  }
  return {static_cast<double>(std::sqrt(diff)), static_cast<double>(std::sqrt(norm)), finite};
}

// ||a - b||₂ / ||b||₂; NaN when an element of either is not finite; ||a - b||₂ when b is all zeros,
// so "both zero" is 0.
template <class A, class B>
double rel_l2(const A* a, const B* b, index_t n) {
  const L2Distance d = l2_distance(a, b, n);
  if (!d.finite) return std::numeric_limits<double>::quiet_NaN();
  return d.norm > 0 ? d.diff / d.norm : d.diff;
}

template <class TA, class TB, std::size_t N>
double rel_l2(const xt::xtensor<TA, N>& a, const xt::xtensor<TB, N>& b) {
  require(a.shape() == b.shape(), "rel_l2", "shapes differ: {} against {}", shape_string(shape_of(a)),
          shape_string(shape_of(b)));
  return rel_l2(a.data(), b.data(), static_cast<index_t>(a.size()));
}

template <class T, std::size_t N>
bool all_finite(const xt::xtensor<T, N>& a) {
  for (const auto& e : a)
    if (!std::isfinite(static_cast<double>(e))) return false;
  return true;
}

}  // namespace flashlstm
