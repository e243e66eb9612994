// The mLSTM rows of `flashlstm validate`: on a built-in problem set (odd shapes, with and without an
// initial state) every form and variant against the float64 recurrent oracle, forward and
// backward; the backward against finite differences where the shape is small enough; float32
// against float64; the fused order (a state-resident kernel's order of the chunkwise form).
#include "apps/validate.hpp"
#include "reference/mlstm/check.hpp"
#include "reference/mlstm/fused.hpp"

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
        const bool is_oracle = form.kind == Form::recurrent;
        if (is_oracle && !c.finite_differences) continue;  // nothing to compare it with
        ValidationRow row{"mLSTM", form.name(), variant_name(options), "float64", c.shape.name(),
                          is_oracle ? "-" : "oracle"};
        if (!is_oracle) {
          row.report.add(check::compare(forward(p.inputs(), p.initial_view(), form, options), oracle,
                                        check::float64_tolerance, p.scale()));
          row.report.add(check::compare(backward(p.inputs(), p.initial_view(), p.output_grad(), form, options),
                                        oracle_grad, check::float64_tolerance, p.scale()));
        }
        if (c.finite_differences) row.report.add(gradcheck(form, p, options, seed));
        rows.push_back(std::move(row));
      }
      ValidationRow fused{"mLSTM", "fused(L=64)", variant_name(options), "float64", c.shape.name(), "oracle"};
      fused.report.add(check::compare(forward_fused(p.inputs(), p.initial_view(), 64, options), oracle,
                                      check::float64_tolerance, p.scale()));
      fused.report.add(check::compare(backward_fused(p.inputs(), p.initial_view(), p.output_grad(), 64, options),
                                      oracle_grad, check::float64_tolerance, p.scale()));
      rows.push_back(std::move(fused));
      const auto p32 = cast_problem<float>(p);
      ValidationRow row{"mLSTM", fp32_form.name(), variant_name(options), "float32", c.shape.name(), "oracle"};
      row.report.add(check::compare(forward(p32.inputs(), p32.initial_view(), fp32_form, options), oracle,
                                    check::float32_tolerance, p.scale()));
      row.report.add(check::compare(backward(p32.inputs(), p32.initial_view(), p32.output_grad(), fp32_form, options),
                                    oracle_grad, check::float32_tolerance, p.scale()));
      rows.push_back(std::move(row));
    }
  }
  return rows;
}

}  // namespace flashlstm::apps
