// The `flashlstm` command-line tool. Subcommands: validate, data, plstm.
//
// Exit codes (docs/cli.md): 0 success; 1 when `validate` or `plstm` finds a disagreement (their
// callbacks throw CLI::RuntimeError with that status); 2 on any error, with one line
// `error: <message>` on stderr: a malformed command line, bad input the library rejects, memory that
// cannot be had, a file that cannot be read or written, standard output that cannot be written.
#include "apps/data.hpp"
#include "apps/plstm.hpp"
#include "apps/validate.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <exception>
#include <new>
#include <string_view>

namespace {

int fail(std::string_view message) {
  std::fflush(stdout);
  fmt::print(stderr, "error: {}\n", message);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("flashlstm: the xLSTM family of recurrences, reference and kernels");
  app.require_subcommand(1);
  flashlstm::apps::add_validate_command(app);
  flashlstm::apps::add_plstm_command(app);
  flashlstm::apps::add_data_command(app);
  int status = 0;
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help
    return app.exit(e);
  } catch (const CLI::RuntimeError& e) {  // validate's and plstm's own status
    status = e.get_exit_code();
  } catch (const CLI::ParseError& e) {
    return fail(fmt::format("{} (run with --help for the options)", e.what()));
  } catch (const std::bad_alloc&) {
    return fail("out of memory");
  } catch (const std::exception& e) {
    return fail(e.what());
  } catch (...) {
    return fail("unknown exception");
  }
  if (std::fflush(stdout) != 0 || std::ferror(stdout)) return fail("cannot write to standard output");
  return status;
}
