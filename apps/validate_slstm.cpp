// The sLSTM and LSTM rows of `flashlstm validate`. The recurrence has a single (recurrent) form, so
// a row checks state passing (the sequence in two pieces, state handed on forward and its gradient
// handed back, against the whole run), finite differences, and float32 against float64 (the
// float32 backward from the forward's saved gates, as training runs it).
#include "apps/validate.hpp"
#include "reference/slstm/check.hpp"

namespace flashlstm::apps {

std::vector<ValidationRow> validate_slstm() {
  using namespace flashlstm::slstm;
  struct Case {
    ProblemShape shape;
    bool finite_differences;
  };
  const std::vector<Case> cases = {
      {{2, 7, 2, 8, true}, true},
      {{4, 65, 3, 16, false}, true},
      {{16, 256, 2, 64, true}, false},
  };
  std::vector<ValidationRow> rows;
  std::uint64_t seed = 1000;
  for (const auto& c : cases) {
    for (const auto& o : variants) {
      const std::string recurrence = o.cell == Cell::lstm ? "LSTM" : "sLSTM";
      const auto p = cast_problem<double>(cast_problem<float>(random_problem<double>(c.shape, o, seed++)));
      ValidationRow row{recurrence, "recurrent", variant_name(o), "float64", c.shape.name(), "whole run"};
      row.report = state_passing(p, c.shape.T / 3 + 1, o, check::float64_tolerance);
      if (c.finite_differences) row.report.add(gradcheck(p, o, seed));
      rows.push_back(std::move(row));

      const auto p32 = cast_problem<float>(p);
      ValidationRow row32{recurrence, "recurrent", variant_name(o), "float32", c.shape.name(), "float64"};
      const auto out32 = forward(p32.inputs(), p32.initial_view(), o, /*keep_gates=*/true);
      row32.report.add(check::compare(out32, forward(p.inputs(), p.initial_view(), o), check::float32_tolerance,
                                      p.scale()));
      row32.report.add(check::compare(
          backward(p32.inputs(), p32.initial_view(), p32.output_grad(), o, Saved<float>::from(out32)),
          backward(p.inputs(), p.initial_view(), p.output_grad(), o), check::float32_tolerance, p.scale()));
      rows.push_back(std::move(row32));
    }
  }
  return rows;
}

}  // namespace flashlstm::apps
