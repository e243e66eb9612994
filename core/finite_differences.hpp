// The finite-difference check every backward is held to: the directional derivative of a scalar
// loss along a random direction u, <grad, u>, against central differences of the loss with one
// Richardson step, D = (4 D(h/2) - D(h)) / 3 with D(h) = (L(x + h u) - L(x - h u)) / 2h. The
// truncation error is O(h^4), so h = 1e-4 keeps both it and rounding far below 1e-6 in double.
#pragma once

#include "core/random.hpp"

#include <algorithm>
#include <cmath>

namespace flashlstm {

// `x` is an input the callable `loss()` reads; it is perturbed in place and restored. Returns
// |fd - <grad, u>| / max(|fd|, |<grad, u>|).
template <std::size_t N, class Loss>
double directional_derivative_error(xt::xtensor<double, N>& x, const xt::xtensor<double, N>& grad, Loss&& loss,
                                    Rng& rng, double step = 1e-4) {
  const xt::xtensor<double, N> x0 = x;
  const auto u = rng.normal<double>(shape_of(x));
  auto central = [&](double h) {
    x = x0 + h * u;
    const double plus = loss();
    x = x0 - h * u;
    const double minus = loss();
    return (plus - minus) / (2 * h);
  };
  const double fd = (4 * central(step / 2) - central(step)) / 3;
  x = x0;
  const double analytic = xt::sum(grad * u)();
  return std::abs(fd - analytic) / std::max({std::abs(fd), std::abs(analytic), 1e-300});
}

}  // namespace flashlstm
