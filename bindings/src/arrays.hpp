// The numpy side of the bindings: the one place that turns Python arrays into the library's
// ConstViews (checking dtype, rank and alignment, and naming the argument when one is wrong) and
// xtensor results into numpy arrays. Inputs follow numpy's semantics: every numpy argument the C++
// only reads is declared as InputArray, whose argument loader passes a C-contiguous, aligned array on
// as it is and copies any other (a strided view, a transposed or Fortran-ordered array, a broadcast)
// into a C-contiguous array of the same dtype, kept alive for the duration of the call. dtypes are
// never converted. Results are zero-copy: a result array owns the moved xtensor through a capsule.
// Option strings ("exp", "recurrent", ...) are parsed here too, with the same kind of error.
#pragma once

#include "core/error.hpp"
#include "core/view.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace flashlstm::bindings {

namespace py = pybind11;

template <class T>
constexpr std::string_view dtype_name() {
  if constexpr (std::is_same_v<T, float>) return "float32";
  else if constexpr (std::is_same_v<T, double>) return "float64";
  else {
    static_assert(std::is_same_v<T, std::uint8_t>);
    return "uint8";
  }
}

inline std::string dtype_of(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// A numpy array argument that the C++ reads only: any numpy.ndarray, C-contiguous and aligned for
// the call (the type_caster below copies it when it is not). An argument that the C++ writes into
// must not be declared InputArray (the writes would go to the copy): it stays a py::array, and
// `view` refuses it unless it is C-contiguous. Objects that are not numpy arrays (lists, tensors)
// are refused as by py::array.
class InputArray : public py::array {
 public:
  using py::array::array;
  InputArray() : py::array(py::handle(), stolen_t{}) {}  // null until loaded: no placeholder array
};

// A read-only view of `a` as T with N dimensions, or an Error naming `name`. No copy: the view
// points into the array's buffer (the caller keeps the array alive while the view is used). An
// InputArray is C-contiguous and aligned by then; a py::array that is not is refused here.
template <class T, std::size_t N>
ConstView<T, N> view(std::string_view name, const py::array& a) {
  require(a.dtype().is(py::dtype::of<T>()), name, "expected dtype {}, got {}", dtype_name<T>(), dtype_of(a));
  require(a.ndim() == static_cast<py::ssize_t>(N), name, "expected {} dimensions, got {} (shape {})", N, a.ndim(),
          py::str(a.attr("shape")).cast<std::string>());
  require((a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_) != 0, name, "is not aligned to its dtype");
  Shape<N> shape{}, strides{};
  for (std::size_t d = 0; d < N; ++d) {
    shape[d] = a.shape(d);
    // A zero-size array reads no memory, whatever its strides (View::strided ignores them too).
    require(a.size() == 0 || a.strides(d) % static_cast<py::ssize_t>(sizeof(T)) == 0, name,
            "has a stride of {} bytes in dimension {}", a.strides(d), d);
    strides[d] = a.strides(d) / static_cast<py::ssize_t>(sizeof(T));
  }
  return View<const T, N>::strided(name, static_cast<const T*>(a.data()), shape, strides);
}

template <class T, std::size_t N>
std::optional<ConstView<T, N>> optional_view(std::string_view name, const std::optional<InputArray>& a) {
  if (!a) return std::nullopt;
  return view<T, N>(name, *a);
}

// The result array owns the xtensor (moved into a capsule): no copy of the data.
template <class T, std::size_t N>
py::array_t<T> to_numpy(xt::xtensor<T, N>&& tensor) {
  auto* owner = new xt::xtensor<T, N>(std::move(tensor));
  py::capsule capsule(owner, [](void* p) { delete static_cast<xt::xtensor<T, N>*>(p); });
  // C strides computed here: xtensor stores 0 for extents of 1.
  std::vector<py::ssize_t> shape(N), strides(N);
  py::ssize_t stride = sizeof(T);
  for (std::size_t d = N; d-- > 0;) {
    shape[d] = static_cast<py::ssize_t>(owner->shape()[d]);
    strides[d] = stride;
    stride *= shape[d];
  }
  return py::array_t<T>(shape, strides, owner->data(), capsule);
}

template <class T, std::size_t N>
py::object to_numpy(std::optional<xt::xtensor<T, N>>&& tensor) {
  if (!tensor) return py::none();
  return to_numpy(std::move(*tensor));
}

// A 1-D numpy array copied from a std::vector (graph index arrays and the like).
template <class T>
py::array_t<T> to_numpy(const std::vector<T>& items) {
  py::array_t<T> out(static_cast<py::ssize_t>(items.size()));
  std::copy(items.begin(), items.end(), out.mutable_data());
  return out;
}

// Runs `compute` without the GIL and returns its result: call it once the arguments are C++ values
// (views point into arrays the caller holds), and build Python objects from the result after.
template <class Compute>
auto nogil(Compute&& compute) {
  py::gil_scoped_release release;
  return compute();
}

// Calls body.template operator()<T>() with T = float or double, the dtype of `first`; every other
// array of the call is then viewed as T, so a mix of dtypes is an error naming the odd one out.
template <class R>
py::object as_object(R&& result) {
  if constexpr (std::is_base_of_v<py::handle, std::decay_t<R>>) return py::reinterpret_borrow<py::object>(result);
  else return py::cast(std::forward<R>(result));
}

template <class Body>
py::object dispatch_float(std::string_view name, const py::array& first, Body&& body) {
  if (first.dtype().is(py::dtype::of<float>())) return as_object(body.template operator()<float>());
  if (first.dtype().is(py::dtype::of<double>())) return as_object(body.template operator()<double>());
  throw Error(fmt::format("{}: expected dtype float32 or float64, got {}", name, dtype_of(first)));
}

// One of a fixed set of option names, or an Error listing them.
template <class E>
E parse_choice(std::string_view name, std::string_view value, std::initializer_list<std::pair<std::string_view, E>> choices) {
  std::string listed;
  for (const auto& [key, item] : choices) {
    if (key == value) return item;
    listed += fmt::format("{}'{}'", listed.empty() ? "" : ", ", key);
  }
  throw Error(fmt::format("{}: expected one of {}, got '{}'", name, listed, value));
}

}  // namespace flashlstm::bindings

namespace pybind11::detail {

// Loads an InputArray: a numpy array that is C-contiguous and aligned is taken as it is (no copy);
// any other numpy array is copied into one (PyArray_FromAny with C_CONTIGUOUS | ALIGNED and no
// dtype: the dtype, byte order included, and the shape are kept; unlike numpy.ascontiguousarray,
// a 0-d array stays 0-d and an unaligned one is copied too). The copy is owned by the argument
// loader, so it lives until the bound function returns. Anything but a numpy array is not loaded
// (pybind11's TypeError). dtype and rank are checked afterwards by `view`, shapes by the library,
// each error naming the argument.
template <>
struct type_caster<flashlstm::bindings::InputArray> {
  PYBIND11_TYPE_CASTER(flashlstm::bindings::InputArray, const_name("numpy.ndarray"));

  bool load(handle src, bool convert) {
    if (!isinstance<array>(src)) return false;
    constexpr int wanted = npy_api::NPY_ARRAY_C_CONTIGUOUS_ | npy_api::NPY_ARRAY_ALIGNED_;
    if (check_flags(src.ptr(), wanted)) {
      value = reinterpret_borrow<flashlstm::bindings::InputArray>(src);
      return true;
    }
    if (!convert) return false;  // a copy is a conversion (py::arg(...).noconvert() refuses it)
    PyObject* copy =
        npy_api::get().PyArray_FromAny_(src.ptr(), nullptr, 0, 0, npy_api::NPY_ARRAY_ENSUREARRAY_ | wanted, nullptr);
    if (copy == nullptr) throw error_already_set();
    value = reinterpret_steal<flashlstm::bindings::InputArray>(copy);
    return true;
  }

  static handle cast(const handle& src, return_value_policy, handle) { return src.inc_ref(); }
};

}  // namespace pybind11::detail
