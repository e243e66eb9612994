// The yardstick of the CPU benchmarks: the rate Eigen's sgemm reaches on a given shape, with the
// work spread over heads on the OpenMP threads the way the reference spreads it. A benchmark
// reports its own GFLOP/s as a ratio to this, measured in the same run.
#pragma once

#include "core/view.hpp"

#include <Eigen/Dense>

#include <algorithm>
#include <chrono>
#include <vector>

namespace flashlstm::bench {

// The best rate over `seconds` of repeated timings of: for each of `heads` heads (in parallel),
// `products` GEMMs (M x K)(K x N). Returns GFLOP/s. Taking the best over a few seconds keeps a
// passing slowdown of a shared machine out of the yardstick.
inline double sgemm_gflops(index_t M, index_t K, index_t N, index_t heads, index_t products, double seconds = 3.0) {
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  std::vector<Mat> a(heads, Mat::Random(M, K)), b(heads, Mat::Random(K, N)), c(heads, Mat::Zero(M, N));
  auto once = [&] {
#pragma omp parallel for schedule(dynamic)
    for (index_t h = 0; h < heads; ++h) {
      for (index_t p = 0; p < products; ++p) c[h].noalias() += a[h] * b[h];
    }
  };
  once();
  double best = 0;
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < seconds) {
    const auto t0 = std::chrono::steady_clock::now();
    once();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * M * K * N * heads * products / s * 1e-9);
  }
  return best;
}

}  // namespace flashlstm::bench
