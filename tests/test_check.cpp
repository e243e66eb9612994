// The check library itself: the error measure (relative L2, NaN and infinities fail, near-zero
// references measured against the inputs' scale), reports, the comparison by name, the
// finite-difference check, the kernel bound, and the bf16-operand arithmetic of the mLSTM chunkwise
// form that bf16 kernels are measured against.
#include "core/random.hpp"
#include "reference/mlstm/check.hpp"
#include "tests/check_catch.hpp"

#include <cmath>
#include <limits>

using namespace flashlstm;
using check::passes;

TEST_CASE("the error is the relative L2 error, and a NaN or an infinity fails every bound", "[check]") {
  const xt::xtensor<double, 1> ref{3.0, 4.0}, a{3.0, 4.0 + 5e-3};
  CHECK(check::error(a.data(), ref.data(), 2, 1.0) == Approx(1e-3).epsilon(1e-12));
  CHECK(check::error(ref.data(), ref.data(), 2, 1.0) == 0.0);
  for (double bad : {std::nan(""), std::numeric_limits<double>::infinity()}) {
    xt::xtensor<double, 1> b = a;
    b(1) = bad;
    const auto e = check::compare("x", b, ref, 1e300, 1.0);
    CHECK(std::isnan(e.error));
    CHECK_FALSE(e.passed());
    CHECK_FALSE(check::compare("x", ref, b, 1e300, 1.0).passed());  // in the reference too
  }
}

TEST_CASE("a reference near zero against the inputs' scale is measured against that scale", "[check]") {
  // A gradient that decayed to 1e-30: relative to itself the float32 result is 100 % off, against a
  // scale of 1 it is 1e-24 off.
  const xt::xtensor<double, 1> ref{1e-30, -2e-30}, a{0.0, 0.0};
  bool against_scale = false;
  const double e = check::error(a.data(), ref.data(), 2, 1.0, &against_scale);
  CHECK(against_scale);
  CHECK(e == Approx(std::sqrt(5.0) * 1e-30 / (check::near_zero * std::sqrt(2.0))));
  CHECK(check::error(a.data(), ref.data(), 2, 0.0) == 1.0);  // scale 0: relative as usual
  const xt::xtensor<double, 1> big{1.0, 2.0}, big_a{1.0, 2.0 + 1e-3};
  check::error(big_a.data(), big.data(), 2, 1.0, &against_scale);
  CHECK_FALSE(against_scale);
}

TEST_CASE("reports: every tensor must pass, the worst is the largest ratio, NaN is worst", "[check]") {
  check::Report r;
  CHECK_FALSE(r.passed());  // an empty report proves nothing
  r.add({"a", 1e-12, 1e-10});
  r.add({"b", 5e-7, 1e-6});
  CHECK(r.passed());
  CHECK(r.worst().name == "b");
  r.add({"c", std::nan(""), 1.0});
  CHECK_FALSE(r.passed());
  CHECK(r.worst().name == "c");
  CHECK_THAT(r.table(), Catch::Contains("FAIL"));
}

TEST_CASE("comparing by name fails on a tensor present on one side only", "[check]") {
  const xt::xtensor<double, 1> x{1.0, 2.0};
  const std::vector<check::Named<double>> two{check::named("p", x), check::named("q", x)},
      one{check::named("p", x)};
  CHECK(check::compare(two, two, 1e-10, 1.0).passed());
  const auto missing = check::compare(one, two, 1e-10, 1.0);
  CHECK_FALSE(missing.passed());
  CHECK(missing.worst().name == "q (missing)");
  const auto unexpected = check::compare(two, one, 1e-10, 1.0);
  CHECK_FALSE(unexpected.passed());
  CHECK(unexpected.worst().name == "q (unexpected)");
}

TEST_CASE("gradcheck passes the true gradient and catches a wrong one", "[check]") {
  Rng rng(1);
  auto x = rng.normal<double>(Shape<2>{3, 4});
  const auto x0 = x;
  auto loss = [&] { return xt::sum(xt::sin(x) * x)(); };  // d/dx = sin x + x cos x
  const xt::xtensor<double, 2> grad = xt::sin(x) + x * xt::cos(x);
  CHECK_THAT(check::gradcheck({check::argument("x", x, grad)}, loss, 7), passes());
  xt::xtensor<double, 2> wrong = grad;
  wrong(1, 2) += 0.1;
  const auto r = check::gradcheck({check::argument("x", x, wrong)}, loss, 7);
  CHECK_FALSE(r.passed());
  CHECK(r.worst().name == "fd x");
  const bool restored = x == x0;
  CHECK(restored);
}

TEST_CASE("a kernel is held to twice its baseline's error plus output rounding and slack", "[check]") {
  Rng rng(3);
  const auto oracle = rng.normal<double>(Shape<1>{1000});
  const double scale = 1.0;
  auto off_by = [&](double relative) {  // oracle plus noise of the given relative L2 size
    auto noise = rng.normal<double>(Shape<1>{1000});
    noise *= relative * std::sqrt(xt::sum(oracle * oracle)() / xt::sum(noise * noise)());
    return xt::xtensor<double, 1>(oracle + noise);
  };
  const auto baseline = off_by(1e-3);
  const std::vector<check::Named<double>> o{check::named("h", oracle)};
  const std::vector<std::vector<check::Named<double>>> runs{{check::named("h", baseline)}};
  const std::map<std::string, DType> float32{{"h", DType::float32}}, bfloat16{{"h", DType::bfloat16}};
  const auto base = check::baseline_errors(runs, o, float32, scale);
  CHECK(base.at("h") == Approx(1e-3).epsilon(1e-3));
  const double rounding32 = check::error(check::round_to_float(oracle).data(), oracle.data(), 1000, scale);
  const auto within = off_by(1.9e-3), beyond = off_by(2.1e-3 + rounding32 + check::kernel_slack);
  CHECK(check::kernel_compare({check::named("h", within)}, o, base, float32, scale).passed());
  CHECK_FALSE(check::kernel_compare({check::named("h", beyond)}, o, base, float32, scale).passed());
  // A bf16 output: the baseline's outputs are rounded to bf16 first, and the bound adds bf16's rounding.
  const auto base16 = check::baseline_errors(runs, o, bfloat16, scale);
  CHECK(base16.at("h") > 1.5e-3);
  const auto bound16 = check::kernel_compare({check::named("h", oracle)}, o, base16, bfloat16, scale).worst().bound;
  CHECK(bound16 > 2 * base16.at("h") + 1e-3);
}

TEST_CASE("the mLSTM chunkwise form in bf16-operand arithmetic rounds exactly the matrix-product operands",
          "[check][mlstm]") {
  // sig without normaliser, one chunk, zero state: h = (bf16(Q̂) bf16(K)ᵀ ∘ W, rounded to bf16) bf16(V),
  // written out here with W_ts = Π_{j=s+1..t} σ(f̃_j) σ(ĩ_s), in double.
  const mlstm::ProblemShape shape{1, 1, 24, 16, 8, false};
  const auto p = mlstm::random_problem<double>(shape, 5);
  const mlstm::Options o{mlstm::InputGate::sig, false};
  const auto h = mlstm::forward_chunkwise(p.inputs(), std::nullopt, 64, o, mlstm::Operands::bf16).h;
  auto bf = [](double x) { return round_to_bf16(x); };
  auto sig = [](double x) { return 1 / (1 + std::exp(-x)); };
  const double scale = 1 / std::sqrt(16.0);
  auto expected = zeros<double>(Shape<4>{1, 1, 24, 8});
  for (index_t t = 0; t < 24; ++t)
    for (index_t s = 0; s <= t; ++s) {
      double w = sig(p.igate(0, 0, s)), qk = 0;
      for (index_t j = s + 1; j <= t; ++j) w *= sig(p.fgate(0, 0, j));
      for (index_t d = 0; d < 16; ++d) qk += bf(scale * p.q(0, 0, t, d)) * bf(p.k(0, 0, s, d));
      for (index_t e = 0; e < 8; ++e) expected(0, 0, t, e) += bf(qk * w) * bf(p.v(0, 0, s, e));
    }
  CHECK(rel_l2(h, expected) <= 1e-12);
  CHECK(rel_l2(h, mlstm::forward_chunkwise(p.inputs(), std::nullopt, 64, o).h) > 1e-4);  // the rounding shows
}

TEST_CASE("bf16-operand arithmetic errs at bf16's level, far above float32's", "[check][mlstm]") {
  const mlstm::ProblemShape shape{1, 2, 300, 64, 64, true};
  const auto p64 = mlstm::cast_problem<double>(mlstm::cast_problem<float>(mlstm::random_problem<double>(shape, 9)));
  const auto p = mlstm::cast_problem<float>(p64);
  for (const auto& o : mlstm::variants) {
    INFO(mlstm::variant_name(o));
    const auto oracle = mlstm::forward_chunkwise(p64.inputs(), p64.initial_view(), 64, o);
    const auto oracle_grad = mlstm::backward_chunkwise(p64.inputs(), p64.initial_view(), p64.output_grad(), 64, o);
    const auto exact = mlstm::forward_chunkwise(p.inputs(), p.initial_view(), 64, o);
    const auto out = mlstm::forward_chunkwise(p.inputs(), p.initial_view(), 64, o, mlstm::Operands::bf16);
    const auto grad =
        mlstm::backward_chunkwise(p.inputs(), p.initial_view(), p.output_grad(), 64, o, mlstm::Operands::bf16);
    const double e32 = rel_l2(exact.h, oracle.h), e16 = rel_l2(out.h, oracle.h);
    CHECK(e16 > 100 * e32);
    CHECK_THAT(check::compare(grad, oracle_grad, 0.5, p64.scale()), passes());
    // bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 2e-3). With the sigmoid input gate the
    // readout's floor of 1 keeps h well conditioned, so the error stays at that level; the exp
    // gate's floor exp(-m) lets |nᵀq̂| come close to zero, which amplifies it (the float32 error
    // grows by the same factor).
    if (o.input_gate == mlstm::InputGate::sig) {
      CHECK(e16 > 1e-3);
      CHECK(e16 < 1e-2);
    }
  }
}
