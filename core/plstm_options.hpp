// The pLSTM options, shared by the CPU reference, the CUDA kernels and the bindings (docs/plstm.md).
#pragma once

namespace flashlstm::plstm {

struct Options {
  double qk_scale = 0;  // s; 0 means DQK^-1/2
};

}  // namespace flashlstm::plstm
