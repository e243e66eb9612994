// The sLSTM and LSTM rows of `flashlstm validate`. The recurrence has a single (recurrent) form,
// so a row checks state passing (the sequence in two pieces, state handed on forward and its
// gradient handed back, against the whole run), finite differences, and float32 against float64
// (its backward from the forward's saved gates).
#include "apps/validate.hpp"
#include "reference/slstm/check.hpp"

#include <algorithm>

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
  const std::vector<Options> variants = {{Cell::slstm, ForgetGate::sigmoid}, {Cell::slstm, ForgetGate::exp},
                                         {Cell::lstm}};
  std::vector<ValidationRow> rows;
  std::uint64_t seed = 1000;
  for (const auto& c : cases) {
    for (const auto& o : variants) {
      const std::string recurrence = o.cell == Cell::lstm ? "LSTM" : "sLSTM";
      const auto p = cast_problem<double>(cast_problem<float>(random_problem<double>(c.shape, o, seed++)));
      ValidationRow row{recurrence, "recurrent", variant_name(o), "float64", c.shape.name()};
      row.tolerance = 1e-10;
      row.fd_tolerance = 1e-6;
      const auto pieces = state_passing_error(p, c.shape.T / 3 + 1, o);
      row.out_error = pieces.forward;
      row.grad_error = pieces.backward;
      if (c.finite_differences) {
        double worst = 0;
        for (const auto& [arg, e] : gradcheck(p, o, seed)) worst = std::isnan(e) ? e : std::max(worst, e);
        row.fd_error = worst;
      }
      rows.push_back(row);

      const auto p32 = cast_problem<float>(p);
      ValidationRow row32{recurrence, "recurrent", variant_name(o), "float32", c.shape.name()};
      row32.tolerance = 1e-4;
      // float32 the way training runs it, the backward from the forward's kept gates, against float64
      // rerunning the forward
      const auto out32 = forward(p32.inputs(), p32.initial_view(), o, /*keep_gates=*/true);
      row32.out_error = max_rel_error(out32, forward(p.inputs(), p.initial_view(), o));
      row32.grad_error =
          max_rel_error(backward(p32.inputs(), p32.initial_view(), p32.output_grad(), o, Saved<float>::from(out32)),
                        backward(p.inputs(), p.initial_view(), p.output_grad(), o));
      rows.push_back(row32);
    }
  }
  return rows;
}

}  // namespace flashlstm::apps
