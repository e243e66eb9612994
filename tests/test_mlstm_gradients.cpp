// mLSTM backward of every form against central finite differences in double (directional
// derivatives along random directions, one per argument, initial state included), in both regimes
// of the normaliser: |n^T q̂| above its floor and below it.
#include "reference/mlstm/check.hpp"
#include "tests/check_catch.hpp"

using namespace flashlstm;
using namespace flashlstm::mlstm;

TEST_CASE("gradients of every form and variant match finite differences to 1e-6", "[mlstm][gradients]") {
  const auto shape = GENERATE(ProblemShape{1, 2, 1, 8, 6, true}, ProblemShape{2, 1, 13, 12, 10, true},
                              ProblemShape{1, 2, 29, 16, 24, false});
  // q scaled down puts |n^T q̂| below the floor exp(-m) (or 1) at most steps; scaled up, above it.
  const double q_scale = GENERATE(1e-3, 1.0, 30.0);
  auto p = random_problem<double>(shape, 21 + shape.S);
  p.q *= q_scale;
  for (const Options& o : {Options{InputGate::exp, true}, Options{InputGate::sig, true},
                           Options{InputGate::sig, false}, Options{InputGate::exp, true, 0.5}}) {
    for (const Form& form : {Form{Form::recurrent}, Form{Form::parallel}, Form{Form::chunkwise, 4},
                             Form{Form::chunkwise, 64}}) {
      INFO(shape.name() << " q*" << q_scale << " " << variant_name(o) << " eps=" << o.eps << " " << form.name());
      CHECK_THAT(gradcheck(form, p, o, 99), check::passes());
    }
  }
}
