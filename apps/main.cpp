// The `flashlstm` command-line tool. Subcommands: validate, data, plstm.
#include "apps/data.hpp"
#include "apps/plstm.hpp"
#include "apps/validate.hpp"
#include "core/error.hpp"

#include <iostream>

int main(int argc, char** argv) {
  CLI::App app("flashlstm: the xLSTM family of recurrences, reference and kernels");
  app.require_subcommand(1);
  flashlstm::apps::add_validate_command(app);
  flashlstm::apps::add_plstm_command(app);
  flashlstm::apps::add_data_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const flashlstm::Error& e) {
    std::cerr << "error: " << e.what() << '\n';
    return 2;
  }
  return 0;
}
