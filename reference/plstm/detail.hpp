// Internal to the pLSTM reference: the Eigen types every form uses and the q·k scale s.
#pragma once

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

}  // namespace flashlstm::plstm::detail
