// The `flashlstm data` subcommands; each generator registers its own (data_arrows.cpp,
// data_molecules.cpp).
#pragma once

#include <CLI/CLI.hpp>

namespace flashlstm::apps {

void add_data_command(CLI::App& app);
void add_data_arrows_command(CLI::App& data);
void add_data_molecules_command(CLI::App& data);

}  // namespace flashlstm::apps
