// The fused order of the chunkwise mLSTM (reference/mlstm/fused.hpp) against the float64 recurrent
// oracle, and the identities its backward rests on, checked through its trace.
#include "core/random.hpp"
#include "reference/mlstm/check.hpp"
#include "reference/mlstm/fused.hpp"
#include "tests/check_catch.hpp"

#include <limits>
#include <map>

using namespace flashlstm;
using namespace flashlstm::mlstm;
using check::passes;

TEST_CASE("the fused order agrees with the recurrent oracle to 1e-10 in double", "[mlstm][fused]") {
  const index_t S = GENERATE(1, 63, 64, 65, 1000);
  const auto dims = GENERATE(std::pair<index_t, index_t>{16, 24}, std::pair<index_t, index_t>{48, 96});
  const bool with_state = GENERATE(false, true);
  const ProblemShape shape{1, 2, S, dims.first, dims.second, with_state};
  const auto p = random_problem<double>(shape, 300 + S + dims.first);
  for (const auto& o : variants) {
    const auto oracle = forward_recurrent(p.inputs(), p.initial_view(), o);
    const auto oracle_grad = backward_recurrent(p.inputs(), p.initial_view(), p.output_grad(), o);
    for (const index_t L : {index_t{64}, index_t{16}}) {
      INFO(shape.name() << " " << variant_name(o) << " L=" << L);
      CHECK_THAT(check::compare(forward_fused(p.inputs(), p.initial_view(), L, o), oracle, check::float64_tolerance,
                                p.scale()),
                 passes());
      CHECK_THAT(check::compare(backward_fused(p.inputs(), p.initial_view(), p.output_grad(), L, o), oracle_grad,
                                check::float64_tolerance, p.scale()),
                 passes());
    }
  }
}

TEST_CASE("the fused order agrees with the oracle at saturated gates", "[mlstm][fused]") {
  const ProblemShape shape{1, 2, 130, 16, 24, true};
  auto p = random_problem<double>(shape, 7);
  Rng rng(8);
  p.igate = rng.uniform<double>(Shape<3>{1, 2, 130}, -30, 30);
  p.fgate = rng.uniform<double>(Shape<3>{1, 2, 130}, -30, 30);
  for (index_t t = 0; t < 130; t += 5) p.igate(0, 0, t) = 30, p.fgate(0, 1, t) = -30;
  for (const auto& o : variants) {
    INFO(variant_name(o));
    const auto oracle_grad = backward_recurrent(p.inputs(), p.initial_view(), p.output_grad(), o);
    CHECK_THAT(check::compare(forward_fused(p.inputs(), p.initial_view(), 64, o),
                              forward_recurrent(p.inputs(), p.initial_view(), o), check::float64_tolerance, p.scale()),
               passes());
    FusedTrace<double> trace;
    auto grad = backward_fused(p.inputs(), p.initial_view(), p.output_grad(), 64, o, &trace);
    // dm0 comes out of the ψ scan, differences of sums as large as the ψ_k: its absolute error is a
    // few ulps of the largest ψ_k (or 1), however small dm0 itself is — here up to 2e-9 of the floor
    // the other tensors are held to.
    for (index_t h = 0; h < 2; ++h) {
      double psi_max = 1;
      for (index_t k = 0; k < 3; ++k) psi_max = std::max(psi_max, std::abs(trace.psi(0, h, k)));
      const double err = std::abs(grad.dinitial->m(0, h) - oracle_grad.dinitial->m(0, h));
      INFO("dm0 error " << err << ", largest psi " << psi_max);
      CHECK(err <= 64 * std::numeric_limits<double>::epsilon() * psi_max);
    }
    grad.dinitial->m = oracle_grad.dinitial->m;
    CHECK_THAT(check::compare(grad, oracle_grad, check::float64_tolerance, p.scale()), passes());
  }
}

// s_r = dh_r·num_r is formed from X1 = dH C_kᵀ and G0 = dH Vᵀ without num; ψ_0, reached by the scalar
// scan from the final state, is <dC_0, C_0> + <dn_0, n_0> of the initial state and its gradient.
TEST_CASE("the fused backward's scalars are what they stand for", "[mlstm][fused]") {
  const ProblemShape shape{2, 2, 200, 16, 24, true};
  const auto p = random_problem<double>(shape, 11);
  for (const auto& o : variants) {
    INFO(variant_name(o));
    const auto out = forward_fused(p.inputs(), p.initial_view(), 64, o);
    FusedTrace<double> trace;
    const auto g = backward_fused(p.inputs(), p.initial_view(), p.output_grad(), 64, o, &trace);
    double worst = 0;
    for (index_t b = 0; b < 2; ++b)
      for (index_t h = 0; h < 2; ++h)
        for (index_t t = 0; t < 200; ++t) {
          double dh_dot_h = 0;
          for (index_t j = 0; j < 24; ++j) dh_dot_h += p.dh(b, h, t, j) * out.h(b, h, t, j);
          const double num_dot = dh_dot_h * trace.dhat(b, h, t);
          worst = std::max(worst, std::abs(trace.dh_dot_num(b, h, t) - num_dot) / (1 + std::abs(num_dot)));
        }
    CHECK(worst < 1e-12);
    for (index_t b = 0; b < 2; ++b)
      for (index_t h = 0; h < 2; ++h) {
        double psi0 = 0;
        for (index_t i = 0; i < 16; ++i) {
          psi0 += g.dinitial->n(b, h, i) * p.initial->n(b, h, i);
          for (index_t j = 0; j < 24; ++j) psi0 += g.dinitial->C(b, h, i, j) * p.initial->C(b, h, i, j);
        }
        CHECK(std::abs(trace.psi(b, h, 0) - psi0) <= 1e-10 * (1 + std::abs(psi0)));
      }
  }
}

// The fused order's algebra in float32 — products in float32, the per-token gate scalars and the
// scalar pass in double, as a kernel would run them — is as accurate as the float32 reference: every
// tensor within the kernel bound, 2 × the float32 chunkwise and recurrent forms' error + 4 ulps
// (docs/validation.md), against the float64 oracle on the same inputs. (With one ψ scan from the
// final state, dm0 was 80 × that bound for mLSTMexp; with float32 gate scalars, dfgate up to 1.3 ×.)
TEST_CASE("the fused order in float32 is as accurate as the float32 reference", "[mlstm][fused]") {
  const ProblemShape shape{1, 2, 1000, 48, 96, true};
  const auto p = cast_problem<double>(cast_problem<float>(random_problem<double>(shape, 13)));  // float inputs
  const auto pf = cast_problem<float>(p);
  const auto as_double = [](const auto& t) { return xt::eval(xt::cast<double>(t)); };
  std::map<std::string, DType> dtypes;
  for (const char* name : {"h", "C", "n", "m", "dq", "dk", "dv", "digate", "dfgate", "dC0", "dn0", "dm0"})
    dtypes[name] = DType::float32;
  for (const auto& o : variants) {
    INFO(variant_name(o));
    const auto oracle = forward_recurrent(p.inputs(), p.initial_view(), o);
    const auto oracle_grad = backward_recurrent(p.inputs(), p.initial_view(), p.output_grad(), o);
    const auto out = forward_fused(pf.inputs(), pf.initial_view(), 64, o);
    const auto grad = backward_fused(pf.inputs(), pf.initial_view(), pf.output_grad(), 64, o);
    const Output<double> fused{as_double(out.h), {as_double(out.last.C), as_double(out.last.n), as_double(out.last.m)}};
    const InputGrad<double> fused_grad{as_double(grad.dq), as_double(grad.dk), as_double(grad.dv),
                                       as_double(grad.digate), as_double(grad.dfgate),
                                       State<double>{as_double(grad.dinitial->C), as_double(grad.dinitial->n),
                                                     as_double(grad.dinitial->m)}};
    // The baseline runs (kept alive: tensors() points into them).
    const auto chunkwise = forward_chunkwise(pf.inputs(), pf.initial_view(), 64, o);
    const auto recurrent = forward_recurrent(pf.inputs(), pf.initial_view(), o);
    const auto chunkwise_grad = backward_chunkwise(pf.inputs(), pf.initial_view(), pf.output_grad(), 64, o);
    const auto recurrent_grad = backward_recurrent(pf.inputs(), pf.initial_view(), pf.output_grad(), o);
    const auto runs = std::vector{tensors(chunkwise), tensors(recurrent)};
    const auto grad_runs = std::vector{tensors(chunkwise_grad), tensors(recurrent_grad)};
    CHECK_THAT(check::kernel_compare(tensors(fused), tensors(oracle),
                                     check::baseline_errors(runs, tensors(oracle), dtypes, p.scale()), dtypes,
                                     p.scale()),
               passes());
    CHECK_THAT(check::kernel_compare(tensors(fused_grad), tensors(oracle_grad),
                                     check::baseline_errors(grad_runs, tensors(oracle_grad), dtypes, p.scale()),
                                     dtypes, p.scale()),
               passes());
  }
}
