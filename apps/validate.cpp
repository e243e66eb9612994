// The `validate` subcommand: collects the rows of every recurrence, prints the table, writes JSON,
// and exits non-zero when any row fails.
#include "apps/validate.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>

namespace flashlstm::apps {

bool ValidationRow::passed() const {
  auto ok = [](const std::optional<double>& e, double tol) { return !e || *e <= tol; };  // NaN <= tol is false
  return ok(out_error, tolerance) && ok(grad_error, tolerance) && ok(fd_error, fd_tolerance) &&
         kernel_criterion.value_or(true);
}

namespace {

std::string cell(const std::optional<double>& e) { return e ? fmt::format("{:.2e}", *e) : "-"; }

nlohmann::json to_json(const ValidationRow& r) {
  auto value = [](const std::optional<double>& e) {
    return e ? (std::isfinite(*e) ? nlohmann::json(*e) : nlohmann::json("nan")) : nlohmann::json(nullptr);
  };
  return {{"recurrence", r.recurrence}, {"form", r.form},
          {"variant", r.variant},       {"dtype", r.dtype},
          {"shape", r.shape},           {"out_error", value(r.out_error)},
          {"grad_error", value(r.grad_error)}, {"fd_error", value(r.fd_error)},
          {"tolerance", std::isfinite(r.tolerance) ? nlohmann::json(r.tolerance) : nlohmann::json("per tensor")},
          {"fd_tolerance", r.fd_tolerance},
          {"passed", r.passed()}};
}

int run_validate(const std::string& json_path) {
  std::vector<ValidationRow> rows = validate_mlstm();
  for (auto& r : validate_slstm()) rows.push_back(std::move(r));
  for (auto& r : validate_plstm()) rows.push_back(std::move(r));
#ifdef FLASHLSTM_HAVE_CUDA
  for (auto& r : validate_mlstm_cuda()) rows.push_back(std::move(r));
#endif

  fmt::print("{:<6} {:<16} {:<11} {:<8} {:<32} {:>9} {:>9} {:>9}  {}\n", "rec", "form", "variant", "dtype", "shape",
             "out err", "grad err", "fd err", "result");
  int failures = 0;
  for (const auto& r : rows) {
    failures += r.passed() ? 0 : 1;
    fmt::print("{:<6} {:<16} {:<11} {:<8} {:<32} {:>9} {:>9} {:>9}  {}\n", r.recurrence, r.form, r.variant, r.dtype,
               r.shape, cell(r.out_error), cell(r.grad_error), cell(r.fd_error), r.passed() ? "pass" : "FAIL");
  }
  fmt::print("{} rows, {} passed, {} failed (tolerances: float64 1e-10 against the oracle or, for the "
             "single-form recurrences, the run in two pieces against the whole; finite differences 1e-6; "
             "float32 1e-4 against float64; [cuda] rows: every tensor within 2x the reference's error in the "
             "kernel's precision plus rounding slack)\n",
             rows.size(), rows.size() - failures, failures);

  if (!json_path.empty()) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& r : rows) j.push_back(to_json(r));
    std::ofstream(json_path) << j.dump(2) << '\n';
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace

void add_validate_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("validate", "Check every form against the float64 oracle and finite differences");
  auto json_path = std::make_shared<std::string>();
  cmd->add_option("--json", *json_path, "Also write the results as JSON to this file");
  cmd->callback([json_path] { throw CLI::RuntimeError(run_validate(*json_path)); });
}

}  // namespace flashlstm::apps
