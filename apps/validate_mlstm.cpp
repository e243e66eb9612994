// The mLSTM rows of `flashlstm validate`: on a built-in problem set (odd shapes, with and without an
// initial state) every form and variant against the float64 recurrent oracle, forward and
// backward, finite differences where the shape is small enough, and float32 against float64.
#include "apps/validate.hpp"
#include "reference/mlstm/check.hpp"

#include <algorithm>

namespace flashlstm::apps {

std::vector<ValidationRow> validate_mlstm() {
  using namespace flashlstm::mlstm;
  struct Case {
    ProblemShape shape;
    bool finite_differences;
  };
  const std::vector<Case> cases = {
      {{1, 2, 1, 16, 24, false}, true},
      {{2, 1, 7, 48, 96, true}, true},
      {{1, 2, 65, 16, 24, true}, true},
      {{1, 1, 500, 256, 512, true}, false},
  };
  const std::vector<Options> variants = {{InputGate::exp, true}, {InputGate::sig, true}, {InputGate::sig, false}};
  const std::vector<Form> forms = {{Form::recurrent}, {Form::parallel}, {Form::chunkwise, 5}, {Form::chunkwise, 64}};
  const Form fp32_form{Form::chunkwise, 64};

  std::vector<ValidationRow> rows;
  std::uint64_t seed = 1;
  for (const auto& c : cases) {
    for (const auto& options : variants) {
      // float-representable inputs, so that the float32 rows measure the arithmetic's error alone
      const auto p = cast_problem<double>(cast_problem<float>(random_problem<double>(c.shape, seed++)));
      const auto oracle = forward_recurrent(p.inputs(), p.initial_view(), options);
      const auto oracle_grad = backward_recurrent(p.inputs(), p.initial_view(), p.output_grad(), options);
      for (const auto& form : forms) {
        ValidationRow row{"mLSTM", form.name(), variant_name(options), "float64", c.shape.name()};
        row.tolerance = 1e-10;
        row.fd_tolerance = 1e-6;
        if (form.kind != Form::recurrent) {
          row.out_error = max_rel_error(forward(form, p.inputs(), p.initial_view(), options), oracle);
          row.grad_error = max_rel_error(backward(form, p.inputs(), p.initial_view(), p.output_grad(), options),
                                         oracle_grad);
        }
        if (c.finite_differences) {
          double worst = 0;
          for (const auto& [arg, e] : gradcheck(form, p, options, seed)) worst = std::isnan(e) ? e : std::max(worst, e);
          row.fd_error = worst;
        }
        rows.push_back(row);
      }
      const auto p32 = cast_problem<float>(p);
      ValidationRow row{"mLSTM", fp32_form.name(), variant_name(options), "float32", c.shape.name()};
      row.tolerance = 1e-4;
      row.out_error = max_rel_error(forward(fp32_form, p32.inputs(), p32.initial_view(), options), oracle);
      row.grad_error = max_rel_error(
          backward(fp32_form, p32.inputs(), p32.initial_view(), p32.output_grad(), options), oracle_grad);
      rows.push_back(row);
    }
  }
  return rows;
}

}  // namespace flashlstm::apps
