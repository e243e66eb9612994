// The fused order of the chunkwise mLSTM (reference/mlstm/fused.hpp) against the float64 recurrent
// oracle, and the identities its backward rests on, checked through its trace.
#include "core/random.hpp"
#include "reference/mlstm/check.hpp"
#include "reference/mlstm/fused.hpp"
#include "tests/check_catch.hpp"

#include <limits>

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
