// The mLSTM options as the Python functions spell them (input_gate="exp" | "sig", normalize, eps),
// shared by the CPU and the CUDA bindings.
#pragma once

#include "bindings/src/arrays.hpp"
#include "core/mlstm_options.hpp"

namespace flashlstm::bindings {

inline mlstm::Options mlstm_options(const std::string& input_gate, bool normalize, double eps) {
  return {.input_gate = parse_choice<mlstm::InputGate>("input_gate", input_gate,
                                                       {{"exp", mlstm::InputGate::exp}, {"sig", mlstm::InputGate::sig}}),
          .normalize = normalize,
          .eps = eps};
}

}  // namespace flashlstm::bindings
