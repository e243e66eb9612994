// Internal to the pLSTM reference: the Eigen types every form uses and the q·k scale s.
#pragma once

#include "core/memory.hpp"
#include "core/parallel.hpp"
#include "reference/plstm/plstm.hpp"

#include <Eigen/Dense>

#include <cmath>

namespace flashlstm::plstm::detail {

template <class F>
using Mat = Eigen::Matrix<F, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class F>
using Vec = Eigen::Matrix<F, Eigen::Dynamic, 1>;

// s = options.qk_scale, or DQK^-1/2 when it is 0.
template <class F>
F qk_scale(const Options& o, index_t DQK) {
  return o.qk_scale > 0 ? F(o.qk_scale) : F(1) / std::sqrt(F(DQK));
}

// Refuses a form whose per-thread intermediates — `matrices` n x n matrices of F on each of the
// threads working on `heads` heads — do not fit in memory (the parallel forms are quadratic in n).
template <class F>
void check_quadratic_memory(std::string_view argument, index_t n, double matrices, index_t heads,
                            std::string_view form) {
  const double threads = std::min<double>(max_threads(), static_cast<double>(heads));
  const double side = static_cast<double>(n);
  require_memory(argument, threads * matrices * side * side * sizeof(F),
                 fmt::format("the {} form at {} = {} ({} {} x {} matrices on {} threads)", form, argument, n, matrices,
                             n, n, threads));
}

}  // namespace flashlstm::plstm::detail
