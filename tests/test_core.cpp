// core/: bf16 rounding, stable gate math, views and their checks.
#include "core/bf16.hpp"
#include "core/gates.hpp"
#include "core/metrics.hpp"
#include "core/random.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

using namespace flashlstm;

TEST_CASE("bf16 rounds to the nearest representable value, ties to even", "[core]") {
  Rng rng(7);
  auto xs = rng.normal<float>(Shape<1>{20000}, 0.0, 100.0);
  for (float x : xs) {
    // The two bf16 values around x: truncated towards zero, and one bf16 ulp further out.
    const auto xb = std::bit_cast<std::uint32_t>(x);
    const auto lo = std::bit_cast<float>(xb & 0xffff0000u);
    const auto hi = std::bit_cast<float>((xb & 0xffff0000u) + 0x10000u);
    const double d_lo = std::abs(double(lo) - x), d_hi = std::abs(double(hi) - x);
    const bool lo_even = ((std::bit_cast<std::uint32_t>(lo) >> 16) & 1u) == 0;
    const float expected = d_lo < d_hi ? lo : d_hi < d_lo ? hi : (lo_even ? lo : hi);
    REQUIRE(round_to_bf16(x) == expected);
  }
  // Exact ties go to the even mantissa.
  const float one = 1.0f, ulp = std::ldexp(1.0f, -7);
  CHECK(round_to_bf16(one + ulp / 2) == one);                     // tie, 1.0 is even
  CHECK(round_to_bf16(one + 3 * ulp / 2) == one + 2 * ulp);       // tie, 1 + 2 ulp is even
  CHECK(std::isnan(round_to_bf16(std::numeric_limits<float>::quiet_NaN())));
  CHECK(std::isinf(round_to_bf16(std::numeric_limits<float>::infinity())));
}

TEST_CASE("gate math is finite and accurate for any finite pre-activation", "[core]") {
  for (double x : {-1e3, -50.0, -1.0, -1e-8, 0.0, 1e-8, 1.0, 50.0, 1e3}) {
    const long double exact = -std::log1p(std::exp(-static_cast<long double>(x)));
    CHECK(std::isfinite(logsigmoid(x)));
    CHECK(std::abs(logsigmoid(x) - static_cast<double>(exact)) <= 1e-15 * std::max(1.0, std::abs(x)));
    CHECK(std::abs(sigmoid(x) - static_cast<double>(1 / (1 + std::exp(-static_cast<long double>(x))))) <= 1e-16);
    CHECK(std::abs(softplus(x) + logsigmoid(-x)) == 0.0);
  }
  CHECK(logsigmoid(1e3f) == 0.0f);
  CHECK(logsigmoid(-1e3f) == -1e3f);
  CHECK(sigmoid(-1e3) == 0.0);
}

TEST_CASE("views check shape and contiguity and name the argument", "[core]") {
  auto t = zeros<double>(Shape<3>{2, 3, 4});
  ConstView<double, 3> v(t);
  CHECK(v.shape() == Shape<3>{2, 3, 4});
  CHECK(v.size() == 24);
  CHECK_NOTHROW(check_shape("x", v, {2, 3, 4}));
  CHECK_THROWS_WITH(check_shape("x", v, {2, 3, 5}), "x: expected shape (2, 3, 5), got (2, 3, 4)");
  CHECK_NOTHROW((ConstView<double, 3>::strided("y", t.data(), {2, 3, 4}, {12, 4, 1})));
  CHECK_NOTHROW((ConstView<double, 3>::strided("y", t.data(), {2, 1, 4}, {4, 99, 1})));  // extent-1 strides don't matter
  CHECK_THROWS_AS((ConstView<double, 3>::strided("y", t.data(), {2, 3, 4}, {1, 2, 6})), Error);
  CHECK_THROWS_WITH((ConstView<double, 3>::strided("y", t.data(), {2, 3, 2}, {12, 4, 2})),
                    Catch::Contains("y: expected a C-contiguous array"));
}

TEST_CASE("relative L2 error", "[core]") {
  xt::xtensor<double, 1> a{1.0, 2.0, 2.0}, b{1.0, 2.0, 2.0 + 3e-3};
  CHECK(rel_l2(a, a) == 0.0);
  CHECK(rel_l2(a, b) == Approx(3e-3 / std::sqrt(1 + 4 + (2 + 3e-3) * (2 + 3e-3))).epsilon(1e-9));
  xt::xtensor<double, 1> n{1.0, std::nan(""), 0.0};
  CHECK(std::isnan(rel_l2(n, a)));
}
