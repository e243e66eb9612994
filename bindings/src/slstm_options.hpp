// The sLSTM options as the Python functions spell them (cell="slstm" | "lstm",
// forget_gate="sigmoid" | "exp"), shared by the CPU and the CUDA bindings.
#pragma once

#include "bindings/src/arrays.hpp"
#include "core/slstm_options.hpp"

namespace flashlstm::bindings {

inline slstm::Options slstm_options(const std::string& cell, const std::string& forget_gate) {
  return {.cell = parse_choice<slstm::Cell>("cell", cell, {{"slstm", slstm::Cell::slstm}, {"lstm", slstm::Cell::lstm}}),
          .forget_gate = parse_choice<slstm::ForgetGate>(
              "forget_gate", forget_gate, {{"sigmoid", slstm::ForgetGate::sigmoid}, {"exp", slstm::ForgetGate::exp}})};
}

}  // namespace flashlstm::bindings
