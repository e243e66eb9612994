// Seeded random tensors for tests, benchmarks and `flashlstm validate`: the same seed gives the same
// numbers on every run of the same build.
#pragma once

#include "core/view.hpp"

#include <random>

namespace flashlstm {

class Rng {
 public:
  explicit Rng(std::uint64_t seed) : engine_(seed) {}

  template <class T, std::size_t N>
  xt::xtensor<T, N> normal(const Shape<N>& shape, double mean = 0.0, double stddev = 1.0) {
    auto out = zeros<T>(shape);
    std::normal_distribution<double> dist(mean, stddev);
    for (auto& e : out) e = static_cast<T>(dist(engine_));
    return out;
  }

  template <class T, std::size_t N>
  xt::xtensor<T, N> uniform(const Shape<N>& shape, double lo, double hi) {
    auto out = zeros<T>(shape);
    std::uniform_real_distribution<double> dist(lo, hi);
    for (auto& e : out) e = static_cast<T>(dist(engine_));
    return out;
  }

  index_t integer(index_t lo, index_t hi) { return std::uniform_int_distribution<index_t>(lo, hi)(engine_); }

 private:
  std::mt19937_64 engine_;
};

}  // namespace flashlstm
