// The sLSTM/LSTM cell options, shared by the CPU reference, the CUDA kernels and the bindings so
// that every layer spells them the same way (docs/slstm.md).
#pragma once

#include <string>

namespace flashlstm::slstm {

enum class Cell { slstm, lstm };
enum class ForgetGate { sigmoid, exp };  // sLSTM only: log f = logsigmoid(f̃) or f̃

struct Options {
  Cell cell = Cell::slstm;
  ForgetGate forget_gate = ForgetGate::sigmoid;
};

// 4 (h, c, n, m) for the sLSTM, 2 (h, c) for the LSTM.
constexpr int num_states(Cell cell) { return cell == Cell::slstm ? 4 : 2; }

// "slstm", "slstm-expf", "lstm"
inline std::string variant_name(const Options& o) {
  if (o.cell == Cell::lstm) return "lstm";
  return o.forget_gate == ForgetGate::sigmoid ? "slstm" : "slstm-expf";
}

}  // namespace flashlstm::slstm
