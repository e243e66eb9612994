// `flashlstm data`: the dataset generators on the command line (arrows, molecules).
#include "apps/data.hpp"

namespace flashlstm::apps {

void add_data_command(CLI::App& app) {
  auto* data = app.add_subcommand("data", "Generate datasets: arrow-pointing images, molecular graphs");
  data->require_subcommand(1);
  add_data_arrows_command(*data);
  add_data_molecules_command(*data);
}

}  // namespace flashlstm::apps
