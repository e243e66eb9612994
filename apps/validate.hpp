// `flashlstm validate`: every form of every recurrence against its float64 oracle and against
// finite differences, and the CUDA kernels against the CPU reference, as one table
// (docs/validation.md). Each recurrence contributes rows through a function of its own
// (validate_mlstm.cpp, ...); this file holds the row type.
#pragma once

#include "reference/check/report.hpp"

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

namespace flashlstm::apps {

struct ValidationRow {
  std::string recurrence;  // "mLSTM"
  std::string form;        // "chunkwise(L=64)"
  std::string variant;     // "exp"
  std::string dtype;       // "float64"
  std::string shape;       // "B1 NH2 S65 DQK16 DV24 +state"
  std::string against;     // what the row's tensors are compared with: "oracle", "whole run", "CPU float64"
  // Every tensor of the row with its error and bound: outputs ("h"), gradients ("dq") and
  // directional derivatives against finite differences ("fd q").
  check::Report report;
};

std::vector<ValidationRow> validate_mlstm();
std::vector<ValidationRow> validate_slstm();
std::vector<ValidationRow> validate_plstm();
#ifdef FLASHLSTM_HAVE_CUDA
std::vector<ValidationRow> validate_mlstm_cuda();  // empty without a visible GPU
std::vector<ValidationRow> validate_slstm_cuda();  // empty without a visible GPU
std::vector<ValidationRow> validate_plstm_cuda();  // empty without a visible GPU
#endif

void add_validate_command(CLI::App& app);

}  // namespace flashlstm::apps
