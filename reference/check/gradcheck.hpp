// The finite-difference check every backward in the project is held to. For each argument x of a
// scalar loss, along a random direction u: the backward's directional derivative <grad_x, u> against
// central differences of the loss with one Richardson step,
//
//   D(h) = (L(x + h u) - L(x - h u)) / 2h,   fd = (4 D(h/2) - D(h)) / 3,
//
// whose truncation error is O(h^4): h = 1e-4 keeps it and the rounding far below 1e-6 in double.
// The error of each argument is |fd - <grad_x, u>| / max(|fd|, |<grad_x, u>|).
#pragma once

#include "reference/check/report.hpp"

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace flashlstm::check {

// One argument of the loss: its values, which gradcheck perturbs in place (and restores) while the
// loss reads them, and the gradient the backward computed for it.
struct Argument {
  std::string name;
  std::span<double> value;
  std::span<const double> grad;
};

template <std::size_t N>
Argument argument(std::string name, xt::xtensor<double, N>& value, const xt::xtensor<double, N>& grad) {
  require(value.shape() == grad.shape(), name, "the gradient's shape {} differs from the argument's {}",
          shape_string(shape_of(grad)), shape_string(shape_of(value)));
  return {std::move(name), {value.data(), value.size()}, {grad.data(), grad.size()}};
}

// One entry "fd <name>" per argument, held to finite_difference_tolerance.
Report gradcheck(const std::vector<Argument>& arguments, const std::function<double()>& loss, std::uint64_t seed);

// <a, b> accumulated in long double: the losses the gradient checks differentiate.
template <class T, std::size_t N>
double dot(const xt::xtensor<T, N>& a, const xt::xtensor<T, N>& b) {
  long double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += static_cast<long double>(a.data()[i]) * b.data()[i];
  return static_cast<double>(s);
}

}  // namespace flashlstm::check
