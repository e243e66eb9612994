// mLSTM forms against the float64 recurrent oracle: agreement on odd shapes and chunk sizes,
// extreme gates, float32 accuracy at long sequences, state passing, the generation step, and the
// sig/no-normaliser variant against a plain gated-linear-attention formula.
#include "core/metrics.hpp"
#include "core/random.hpp"
#include "reference/mlstm/check.hpp"
#include "tests/check_catch.hpp"

using namespace flashlstm;
using namespace flashlstm::mlstm;
using check::passes;

namespace {

// A chunk size that divides S and one that doesn't (larger than S when S = 1).
std::vector<index_t> chunk_sizes(index_t S) {
  index_t divides = S;
  for (index_t L : {100, 16, 13, 7}) {
    if (S % L == 0 && L < S) divides = L;
  }
  index_t does_not = S == 1 ? 4 : (S % 24 != 0 ? 24 : 5);
  if (S > 1 && S % does_not == 0) does_not = 3;
  return {divides, does_not};
}

}  // namespace

TEST_CASE("every form agrees with the recurrent oracle to 1e-10 in double", "[mlstm]") {
  const index_t S = GENERATE(1, 7, 64, 65, 500);
  const auto dims = GENERATE(std::pair<index_t, index_t>{16, 24}, std::pair<index_t, index_t>{48, 96},
                             std::pair<index_t, index_t>{256, 512});
  const bool with_state = GENERATE(false, true);
  const ProblemShape shape{1, 2, S, dims.first, dims.second, with_state};
  const auto p = random_problem<double>(shape, 100 + S + dims.first);
  for (const auto& o : variants) {
    const auto oracle = forward_recurrent(p.inputs(), p.initial_view(), o);
    const auto oracle_grad = backward_recurrent(p.inputs(), p.initial_view(), p.output_grad(), o);
    std::vector<Form> forms{{Form::parallel}};
    for (index_t L : chunk_sizes(S)) forms.push_back({Form::chunkwise, L});
    for (const auto& form : forms) {
      INFO(shape.name() << " " << variant_name(o) << " " << form.name());
      CHECK_THAT(check::compare(forward(p.inputs(), p.initial_view(), form, o), oracle, check::float64_tolerance,
                                p.scale()),
                 passes());
      CHECK_THAT(check::compare(backward(p.inputs(), p.initial_view(), p.output_grad(), form, o), oracle_grad,
                                check::float64_tolerance, p.scale()),
                 passes());
    }
  }
}

TEST_CASE("gate pre-activations up to +-1e3 stay finite and the forms still agree", "[mlstm]") {
  const ProblemShape shape{1, 2, 40, 16, 24, true};
  auto p = random_problem<double>(shape, 5);
  Rng rng(6);
  p.igate = rng.uniform<double>(Shape<3>{1, 2, 40}, -1e3, 1e3);
  p.fgate = rng.uniform<double>(Shape<3>{1, 2, 40}, -1e3, 1e3);
  for (index_t t = 0; t < 40; t += 4) {  // runs of saturated gates, both signs
    p.igate(0, 0, t) = 1e3, p.fgate(0, 0, t) = 1e3;
    p.igate(0, 1, t) = -1e3, p.fgate(0, 1, t) = -1e3;
  }
  // exp: the stabiliser of the initial state may be anywhere too. sig has no stabiliser: m_0 there
  // scales the initial state by exp(m_0), so a huge m_0 is a huge state, not an extreme gate.
  const auto m0_moderate = p.initial->m, m0_extreme = rng.uniform<double>(Shape<2>{1, 2}, -1e3, 1e3);
  for (const auto& o : variants) {
    p.initial->m = o.input_gate == InputGate::exp ? m0_extreme : m0_moderate;
    const auto p32 = cast_problem<float>(p);
    const auto oracle = forward_recurrent(p.inputs(), p.initial_view(), o);
    const auto oracle_grad = backward_recurrent(p.inputs(), p.initial_view(), p.output_grad(), o);
    for (const Form& form : {Form{Form::recurrent}, Form{Form::parallel}, Form{Form::chunkwise, 6}}) {
      INFO(variant_name(o) << " " << form.name());
      const auto out = forward(p.inputs(), p.initial_view(), form, o);
      const auto grad = backward(p.inputs(), p.initial_view(), p.output_grad(), form, o);
      CHECK(all_finite(out.h));
      CHECK(all_finite(out.last.C));
      CHECK(all_finite(grad.dq));
      CHECK(all_finite(grad.dk));
      CHECK(all_finite(grad.dv));
      CHECK(all_finite(grad.digate));
      CHECK(all_finite(grad.dfgate));
      CHECK(all_finite(grad.dinitial->C));
      CHECK(all_finite(grad.dinitial->m));
      CHECK_THAT(check::compare(out, oracle, check::float64_tolerance, p.scale()), passes());
      CHECK_THAT(check::compare(grad, oracle_grad, check::float64_tolerance, p.scale()), passes());
      const auto out32 = forward(p32.inputs(), p32.initial_view(), form, o);
      const auto grad32 = backward(p32.inputs(), p32.initial_view(), p32.output_grad(), form, o);
      CHECK(all_finite(out32.h));
      CHECK(all_finite(grad32.dq));
      CHECK(all_finite(grad32.dfgate));
      CHECK(all_finite(grad32.dinitial->m));
    }
  }
}

TEST_CASE("float32 forms stay within 1e-5 of the float64 oracle at S = 4096", "[mlstm]") {
  // Both run on the same (float-representable) inputs, so the error is the arithmetic's alone. Gates
  // as the peers' tests draw them (ĩ ~ N(0, 1), f̃ ~ N(3, 1)): the wider default distribution puts a
  // few tokens at |n^T q̂| just above its floor, where h itself is ill-conditioned.
  const ProblemShape shape{1, 2, 4096, 64, 64, true};
  auto p64 = random_problem<double>(shape, 9);
  Rng rng(10);
  p64.igate = rng.normal<double>(Shape<3>{1, 2, 4096}, 0.0, 1.0);
  p64.fgate = rng.normal<double>(Shape<3>{1, 2, 4096}, 3.0, 1.0);
  const auto p32 = cast_problem<float>(p64);
  const auto p = cast_problem<double>(p32);
  for (const auto& o : variants) {
    const auto oracle = forward_recurrent(p.inputs(), p.initial_view(), o);
    for (const Form& form : {Form{Form::recurrent}, Form{Form::parallel}, Form{Form::chunkwise, 64},
                             Form{Form::chunkwise, 100}}) {
      INFO(variant_name(o) << " " << form.name());
      const auto out = forward(p32.inputs(), p32.initial_view(), form, o);
      CHECK_THAT(check::compare(out, oracle, 1e-5, p.scale()), passes());
    }
  }
}

TEST_CASE("a sequence run in pieces with the state handed on equals the whole run", "[mlstm]") {
  const auto p = random_problem<double>({2, 2, 50, 16, 24, true}, 11);
  for (const auto& o : variants) {
    for (const Form& form : {Form{Form::recurrent}, Form{Form::parallel}, Form{Form::chunkwise, 8}}) {
      INFO(variant_name(o) << " " << form.name());
      CHECK_THAT(state_passing(form, p, 19, o, 1e-12), passes());
    }
  }
}

TEST_CASE("the generation step reproduces the sequence forms token by token", "[mlstm]") {
  const ProblemShape shape{2, 3, 12, 16, 24, true};
  const auto p = random_problem<double>(shape, 13);
  for (const auto& o : variants) {
    const auto whole = forward_chunkwise(p.inputs(), p.initial_view(), 5, o);
    State<double> state = *p.initial;
    for (index_t t = 0; t < shape.S; ++t) {
      using xt::all;
      const xt::xtensor<double, 3> q = xt::view(p.q, all(), all(), t, all()), k = xt::view(p.k, all(), all(), t, all()),
                                   v = xt::view(p.v, all(), all(), t, all());
      const xt::xtensor<double, 2> ig = xt::view(p.igate, all(), all(), t), fg = xt::view(p.fgate, all(), all(), t);
      const auto h = step<double>(q, k, v, ig, fg, state, o);
      const xt::xtensor<double, 3> expected = xt::view(whole.h, all(), all(), t, all());
      CHECK(rel_l2(h, expected) <= 1e-12);
    }
    CHECK_THAT(check::compare(Output<double>{whole.h, state}, whole, 1e-12, p.scale()), passes());
  }
}

TEST_CASE("sig without normaliser is plain gated linear attention", "[mlstm]") {
  // h_t = Σ_{s<=t} (Π_{j=s+1..t} σ(f̃_j)) σ(ĩ_s) (q̂_t·k_s) v_s + (Π_{j=1..t} σ(f̃_j)) e^{m_0} C_0^T q̂_t,
  // evaluated literally with products of sigmoids.
  const ProblemShape shape{1, 2, 30, 8, 5, true};
  const auto p = random_problem<double>(shape, 17);
  const Options o{InputGate::sig, false};
  auto expected = zeros<double>(Shape<4>{1, 2, 30, 5});
  const double scale = 1 / std::sqrt(8.0);
  auto sig = [](double x) { return 1 / (1 + std::exp(-x)); };
  for (index_t h = 0; h < 2; ++h) {
    for (index_t t = 0; t < 30; ++t) {
      for (index_t s = 0; s <= t; ++s) {
        double w = sig(p.igate(0, h, s)), qk = 0;
        for (index_t j = s + 1; j <= t; ++j) w *= sig(p.fgate(0, h, j));
        for (index_t d = 0; d < 8; ++d) qk += scale * p.q(0, h, t, d) * p.k(0, h, s, d);
        for (index_t e = 0; e < 5; ++e) expected(0, h, t, e) += w * qk * p.v(0, h, s, e);
      }
      double w0 = std::exp(p.initial->m(0, h));
      for (index_t j = 0; j <= t; ++j) w0 *= sig(p.fgate(0, h, j));
      for (index_t e = 0; e < 5; ++e) {
        for (index_t d = 0; d < 8; ++d) expected(0, h, t, e) += w0 * scale * p.q(0, h, t, d) * p.initial->C(0, h, d, e);
      }
    }
  }
  for (const Form& form : {Form{Form::recurrent}, Form{Form::parallel}, Form{Form::chunkwise, 7}}) {
    INFO(form.name());
    CHECK(rel_l2(forward(p.inputs(), p.initial_view(), form, o).h, expected) <= 1e-13);
  }
}
