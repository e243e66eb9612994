// `flashlstm plstm`: pLSTM on a graph from a file, with seeded random inputs and P-mode or D-mode
// gates; prints the graph's summary, the time of each DAG form and how far the forms disagree.
#pragma once

#include <CLI/CLI.hpp>

namespace flashlstm::apps {

void add_plstm_command(CLI::App& app);

}  // namespace flashlstm::apps
