// The `validate` subcommand: collects the rows of every recurrence, prints one line per row (its
// worst tensor's error, bound and ratio), writes every tensor to JSON, and exits non-zero when any
// row fails. The JSON file is opened before the checks run, so that a path that cannot be written
// fails at once, and written through an OutputFile (a temporary name, renamed once complete).
#include "apps/validate.hpp"

#include "core/output_file.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <optional>

namespace flashlstm::apps {

namespace {

// NaN and infinities as strings: JSON has no number for them.
nlohmann::json number(double x) {
  if (std::isfinite(x)) return x;
  return std::isnan(x) ? "nan" : (x > 0 ? "inf" : "-inf");
}

nlohmann::json to_json(const ValidationRow& r) {
  nlohmann::json tensors = nlohmann::json::array();
  for (const auto& t : r.report.tensors())
    tensors.push_back({{"name", t.name},
                       {"error", number(t.error)},
                       {"bound", number(t.bound)},
                       {"ratio", number(t.ratio())},
                       {"against_scale", t.against_scale},
                       {"passed", t.passed()}});
  return {{"recurrence", r.recurrence}, {"form", r.form},   {"variant", r.variant},
          {"dtype", r.dtype},           {"shape", r.shape}, {"against", r.against},
          {"worst", r.report.worst().name}, {"passed", r.report.passed()}, {"tensors", tensors}};
}

constexpr auto kRow = "{:<6} {:<23} {:<11} {:<16} {:<33} {:<14} {:<10} {:>9} {:>9} {:>8}  {}\n";

int run_validate(const std::string& json_path, bool every_tensor) {
  std::optional<OutputFile> json;
  if (!json_path.empty()) json.emplace(json_path, "json");
  std::vector<ValidationRow> rows = validate_mlstm();
  for (auto& r : validate_slstm()) rows.push_back(std::move(r));
  for (auto& r : validate_plstm()) rows.push_back(std::move(r));
#ifdef FLASHLSTM_HAVE_CUDA
  for (auto& r : validate_mlstm_cuda()) rows.push_back(std::move(r));
  for (auto& r : validate_slstm_cuda()) rows.push_back(std::move(r));
  for (auto& r : validate_plstm_cuda()) rows.push_back(std::move(r));
#endif

  fmt::print(kRow, "rec", "form", "variant", "dtype", "shape", "against", "worst", "error", "bound", "ratio",
             "result");
  int failures = 0;
  for (const auto& r : rows) {
    const bool passed = r.report.passed();
    failures += passed ? 0 : 1;
    const auto& w = r.report.worst();
    fmt::print(kRow, r.recurrence, r.form, r.variant, r.dtype, r.shape, r.against, w.name, fmt::format("{:.2e}", w.error),
               fmt::format("{:.2e}", w.bound), fmt::format("{:.3g}", w.ratio()), passed ? "pass" : "FAIL");
    if (every_tensor || !passed) fmt::print("{}", r.report.table());
  }
  fmt::print("{} rows, {} passed, {} failed. worst: the tensor with the largest error / bound of the row "
             "(h, C, n, m, states, ...: outputs; d*: gradients; fd x: the directional derivative along x "
             "against finite differences); docs/validation.md gives every bound.\n",
             rows.size(), rows.size() - failures, failures);

  if (json) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& r : rows) j.push_back(to_json(r));
    json->write(j.dump(2) + "\n");
    json->commit();
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace

void add_validate_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("validate", "Check every form against the float64 oracle and finite differences");
  auto json_path = std::make_shared<std::string>();
  auto every_tensor = std::make_shared<bool>(false);
  cmd->add_option("--json", *json_path, "Also write every row and every tensor's error and bound as JSON to this file");
  cmd->add_flag("--tensors", *every_tensor, "Print every tensor of every row, not only the worst");
  cmd->callback([json_path, every_tensor] { throw CLI::RuntimeError(run_validate(*json_path, *every_tensor)); });
}

}  // namespace flashlstm::apps
