// A host bfloat16: 1 sign, 8 exponent, 7 mantissa bits — the top half of an IEEE float. Conversion
// from float rounds to nearest, ties to even (as the hardware's cvt.rn.bf16.f32 does); NaN stays
// NaN. The reference uses it to run on exactly the inputs a bf16 kernel sees.
#pragma once

#include "core/view.hpp"

#include <bit>
#include <cstdint>

namespace flashlstm {

struct bf16 {
  std::uint16_t bits = 0;

  bf16() = default;
  explicit bf16(float x) : bits(round(x)) {}
  explicit operator float() const { return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16); }

  static std::uint16_t round(float x) {
    auto u = std::bit_cast<std::uint32_t>(x);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0) {
      return static_cast<std::uint16_t>((u >> 16) | 0x0040u);  // quiet NaN, sign kept
    }
    std::uint32_t lsb = (u >> 16) & 1u;
    return static_cast<std::uint16_t>((u + 0x7fffu + lsb) >> 16);
  }
};

// x rounded to the nearest bf16 and back, in the caller's precision.
template <class T>
T round_to_bf16(T x) {
  return static_cast<T>(static_cast<float>(bf16(static_cast<float>(x))));
}

template <class T, std::size_t N>
xt::xtensor<T, N> round_to_bf16(const xt::xtensor<T, N>& x) {
  xt::xtensor<T, N> out = x;
  for (auto& e : out) e = round_to_bf16(e);
  return out;
}

// The arithmetic of a reference's matrix products: `exact` multiplies in the reference's type;
// `bf16` rounds every operand of a matrix product to bfloat16 and still accumulates in that type.
// With float, bf16 is the arithmetic of a plain bf16 kernel: the baseline the bf16 CUDA kernels are
// checked against (docs/validation.md).
enum class Operands { exact, bf16 };

// An operand of a matrix product in the arithmetic `operands` asks for: M itself (exact), or M
// rounded to bfloat16 (bf16). M is an Eigen matrix or array expression; a form that writes
// operand(M, operands) for every operand serves both arithmetics with one implementation.
template <class M>
typename M::PlainObject operand(const M& m, Operands operands) {
  typename M::PlainObject out = m;
  if (operands == Operands::bf16) out = out.unaryExpr([](auto x) { return round_to_bf16(x); });
  return out;
}

}  // namespace flashlstm
