// `flashlstm validate`: every form of every recurrence against its float64 recurrent oracle and
// against finite differences, as one table. Each recurrence contributes rows through a function
// of its own (validate_mlstm.cpp, ...); this file holds the row type.
#pragma once

#include <CLI/CLI.hpp>

#include <optional>
#include <string>
#include <vector>

namespace flashlstm::apps {

struct ValidationRow {
  std::string recurrence;  // "mLSTM"
  std::string form;        // "chunkwise(L=64)"
  std::string variant;     // "exp"
  std::string dtype;       // "float64"
  std::string shape;       // "B1 NH2 S65 DQK16 DV24 +state"
  // Each error is absent when that check does not apply (the oracle against itself, finite
  // differences on shapes too large for them). A NaN error fails.
  std::optional<double> out_error;   // max relative L2 error of h and the final state against the oracle
  std::optional<double> grad_error;  // same for every gradient
  std::optional<double> fd_error;    // max relative error of directional derivatives against finite differences
  double tolerance = 0;              // for out_error and grad_error
  // Kernel rows: whether every tensor met DESIGN.md's criterion (cuda/mlstm/check.hpp).
  std::optional<bool> kernel_criterion;
  double fd_tolerance = 0;           // for fd_error

  bool passed() const;
};

std::vector<ValidationRow> validate_mlstm();
std::vector<ValidationRow> validate_slstm();
std::vector<ValidationRow> validate_plstm();
#ifdef FLASHLSTM_HAVE_CUDA
std::vector<ValidationRow> validate_mlstm_cuda();  // empty without a visible GPU
#endif

void add_validate_command(CLI::App& app);

}  // namespace flashlstm::apps
