// Non-owning views of row-major (C-contiguous) N-d arrays: the type every public entry point takes
// its inputs as. A view is made from an xt::xtensor (always contiguous) or from a raw pointer with
// shape and strides (numpy, DLPack); the latter checks contiguity and names the argument in the
// error. Kernels and the reference index raw memory, so contiguity is a precondition, not a hint.
#pragma once

#include "core/error.hpp"
#include "core/xtensor.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

namespace flashlstm {

using index_t = std::ptrdiff_t;

template <std::size_t N>
using Shape = std::array<index_t, N>;

template <std::size_t N>
std::string shape_string(const Shape<N>& shape) {
  return fmt::format("({})", fmt::join(shape, ", "));
}

template <class T, std::size_t N>
Shape<N> shape_of(const xt::xtensor<T, N>& tensor) {
  Shape<N> s{};
  for (std::size_t d = 0; d < N; ++d) s[d] = static_cast<index_t>(tensor.shape()[d]);
  return s;
}

template <class T, std::size_t N>
class View {
 public:
  using value_type = std::remove_const_t<T>;

  View() = default;  // the null view: no array at all (empty())
  // A zero-size array may have no buffer (an empty xtensor's data() is null): its view points at a
  // placeholder instead, so that it is a valid array with no elements, not a null view.
  View(T* data, const Shape<N>& shape)
      : data_(data == nullptr && count(shape) == 0 ? &placeholder : data), shape_(shape) {}
  // From an owning xtensor (const or not, as T allows).
  template <class C>
    requires std::is_same_v<std::remove_cvref_t<C>, xt::xtensor<value_type, N>>
  View(C&& tensor) : View(tensor.data(), shape_of(tensor)) {}  // NOLINT(google-explicit-constructor)
  // A mutable view converts to a const one.
  template <class U>
    requires(std::is_const_v<T> && std::is_same_v<U, value_type>)
  View(const View<U, N>& other) : data_(other.data()), shape_(other.shape()) {}  // NOLINT

  // From memory with arbitrary strides (in elements): throws unless it is C-contiguous. A zero-size
  // array reads no memory, so any strides will do (numpy keeps those of the array it was sliced from).
  static View strided(std::string_view argument, T* data, const Shape<N>& shape, const Shape<N>& strides) {
    for (const index_t extent : shape)
      require(extent >= 0, argument, "negative extent in shape {}", shape_string(shape));
    const bool has_elements = count(shape) > 0;
    index_t expected = 1;
    for (std::size_t d = N; d-- > 0;) {
      require(!has_elements || shape[d] <= 1 || strides[d] == expected, argument,
              "expected a C-contiguous array (strides {} in elements), got strides {}",
              shape_string(contiguous_strides(shape)), shape_string(strides));
      expected *= shape[d];
    }
    return View(data, shape);
  }

  T* data() const { return data_; }
  const Shape<N>& shape() const { return shape_; }
  index_t shape(std::size_t d) const { return shape_[d]; }
  index_t size() const { return count(shape_); }
  bool empty() const { return data_ == nullptr; }  // the null view (a zero-size array is not empty())

 private:
  static index_t count(const Shape<N>& shape) {
    index_t s = 1;
    for (index_t e : shape) s *= e;
    return s;
  }

  static Shape<N> contiguous_strides(const Shape<N>& shape) {
    Shape<N> s{};
    index_t acc = 1;
    for (std::size_t d = N; d-- > 0;) {
      s[d] = acc;
      acc *= shape[d];
    }
    return s;
  }

  static inline value_type placeholder{};
  T* data_ = nullptr;
  Shape<N> shape_{};
};

template <class T, std::size_t N>
using ConstView = View<const T, N>;

// Throws Error naming `argument` unless the view has exactly `expected` shape.
template <class T, std::size_t N>
void check_shape(std::string_view argument, const View<T, N>& view, const Shape<N>& expected) {
  require(!view.empty() || view.size() == 0, argument, "is null");
  require(view.shape() == expected, argument, "expected shape {}, got {}", shape_string(expected),
          shape_string(view.shape()));
}

template <class T, std::size_t N>
xt::xtensor<T, N> zeros(const Shape<N>& shape) {
  std::array<std::size_t, N> s{};
  for (std::size_t d = 0; d < N; ++d) s[d] = static_cast<std::size_t>(shape[d]);
  return xt::xtensor<T, N>(s, T(0));
}

// A tensor whose elements the caller will all overwrite: no zero fill (for large outputs).
template <class T, std::size_t N>
xt::xtensor<T, N> uninitialized(const Shape<N>& shape) {
  std::array<std::size_t, N> s{};
  for (std::size_t d = 0; d < N; ++d) s[d] = static_cast<std::size_t>(shape[d]);
  return xt::xtensor<T, N>::from_shape(s);
}

// An owning copy of a view.
template <class T, std::size_t N>
xt::xtensor<std::remove_const_t<T>, N> copy(const View<T, N>& view) {
  auto out = zeros<std::remove_const_t<T>>(view.shape());
  std::copy(view.data(), view.data() + view.size(), out.data());
  return out;
}

}  // namespace flashlstm
