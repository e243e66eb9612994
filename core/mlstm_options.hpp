// The mLSTM variant and readout options, shared by the CPU reference, the CUDA kernels and the
// bindings so that every layer spells them the same way (docs/mlstm.md).
#pragma once

#include <string>

namespace flashlstm::mlstm {

enum class InputGate { exp, sig };

struct Options {
  InputGate input_gate = InputGate::exp;
  bool normalize = true;  // sig only: false drops the normaliser (h = C^T q̂); exp always normalises
  double eps = 1e-6;      // added to the denominator
};

inline std::string to_string(InputGate gate) { return gate == InputGate::exp ? "exp" : "sig"; }

// "exp", "sig", "sig-nonorm"
inline std::string variant_name(const Options& o) {
  if (o.input_gate == InputGate::exp) return "exp";
  return o.normalize ? "sig" : "sig-nonorm";
}

// exp stabilises with the running maximum m_t; sig has every log gate <= 0 and keeps m_t = 0.
inline bool stabilised(const Options& o) { return o.input_gate == InputGate::exp; }
inline bool normalizes(const Options& o) { return o.input_gate == InputGate::exp || o.normalize; }

}  // namespace flashlstm::mlstm
