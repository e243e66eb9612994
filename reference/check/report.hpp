// How every check in the project compares a computed tensor with its reference and decides pass or
// fail: the Catch2 tests, `flashlstm validate` and the CUDA kernel checks all build a Report.
//
//   error(a, ref) = ||a - ref||₂ / max(||ref||₂, near_zero · scale · √n)
//
// the relative L2 error over the whole tensor (n elements), except that a reference that is near
// zero against the problem's inputs is measured against the inputs' scale (criteria.hpp). A NaN or
// an infinity in either tensor makes the error NaN, and a NaN fails every bound.
#pragma once

#include "core/bf16.hpp"
#include "core/dtype.hpp"
#include "core/metrics.hpp"
#include "core/view.hpp"
#include "reference/check/criteria.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace flashlstm::check {

// One tensor's result: its error and the bound it is held to.
struct TensorError {
  std::string name;           // "h", "dq", "fd q" (a directional derivative), ...
  double error = 0;           // NaN when a value was not finite
  double bound = 0;
  bool against_scale = false;  // the reference was near zero: measured against the inputs' scale

  double ratio() const { return error / bound; }  // NaN stays NaN
  bool passed() const { return error <= bound; }   // false for NaN
};

// The results of one check: every tensor with its error and bound.
class Report {
 public:
  void add(TensorError e) { tensors_.push_back(std::move(e)); }
  void add(const Report& other) { tensors_.insert(tensors_.end(), other.tensors_.begin(), other.tensors_.end()); }

  const std::vector<TensorError>& tensors() const { return tensors_; }
  // At least one tensor, and every tensor within its bound.
  bool passed() const;
  // The tensor with the largest error / bound (a NaN counts as the worst). The report must not be empty.
  const TensorError& worst() const;
  // One line per tensor: name, error, bound, ratio, pass/FAIL.
  std::string table() const;

 private:
  std::vector<TensorError> tensors_;
};

// A tensor as the checks see it: a name and its elements in row-major order.
template <class T>
struct Named {
  std::string name;
  const T* data = nullptr;
  index_t size = 0;
};

template <class T, std::size_t N>
Named<T> named(std::string name, const xt::xtensor<T, N>& t) {
  return {std::move(name), t.data(), static_cast<index_t>(t.size())};
}

// error(a, ref) as above (core/metrics.hpp's l2_distance, in long double).
template <class A, class R>
double error(const A* a, const R* ref, index_t n, double scale, bool* against_scale = nullptr);

template <class A, class R>
TensorError compare(std::string name, const A* a, const R* ref, index_t n, double bound, double scale) {
  TensorError e{std::move(name), 0, bound, false};
  e.error = error(a, ref, n, scale, &e.against_scale);
  return e;
}

template <class A, class R, std::size_t N>
TensorError compare(std::string name, const xt::xtensor<A, N>& a, const xt::xtensor<R, N>& ref, double bound,
                    double scale) {
  require(a.shape() == ref.shape(), name, "shapes differ: {} against the reference's {}", shape_string(shape_of(a)),
          shape_string(shape_of(ref)));
  return compare(std::move(name), a.data(), ref.data(), static_cast<index_t>(a.size()), bound, scale);
}

// Tensor by tensor, by name: every tensor of `ref` against the one of `a` with the same name, held to
// bound(name). A tensor present on one side only is a failure (error NaN) named "<name> (missing)"
// or "<name> (unexpected)".
template <class A, class R>
Report compare(const std::vector<Named<A>>& a, const std::vector<Named<R>>& ref,
               const std::function<double(const std::string&)>& bound, double scale) {
  Report report;
  for (const auto& r : ref) {
    const auto it = std::find_if(a.begin(), a.end(), [&](const auto& x) { return x.name == r.name; });
    if (it == a.end() || it->size != r.size) {
      report.add({r.name + (it == a.end() ? " (missing)" : " (size differs)"), std::nan(""), bound(r.name)});
    } else {
      report.add(compare(r.name, it->data, r.data, r.size, bound(r.name), scale));
    }
  }
  for (const auto& x : a)
    if (std::none_of(ref.begin(), ref.end(), [&](const auto& r) { return r.name == x.name; }))
      report.add({x.name + " (unexpected)", std::nan(""), 0});
  return report;
}

template <class A, class R>
Report compare(const std::vector<Named<A>>& a, const std::vector<Named<R>>& ref, double bound, double scale) {
  return compare(a, ref, std::function<double(const std::string&)>([bound](const std::string&) { return bound; }),
                 scale);
}

// Two results of one recurrence, tensor by tensor: `tensors(result)` (found by argument-dependent
// lookup, e.g. mlstm::tensors(const mlstm::Output<T>&)) lists a result's tensors by name.
template <class A, class R>
  requires requires(const A& a, const R& r) {
    tensors(a);
    tensors(r);
  }
Report compare(const A& a, const R& ref, double bound, double scale) {
  return compare(tensors(a), tensors(ref), bound, scale);
}

// The root mean square of every element of the given tensors: the `scale` of a problem's inputs.
template <class T>
double rms(const std::vector<Named<T>>& tensors);
template <class T, std::size_t... N>
double rms(const xt::xtensor<T, N>&... tensors) {
  return rms(std::vector<Named<T>>{named("", tensors)...});
}

// x rounded to `dtype` and back.
inline double round_to(double x, DType dtype) {
  return dtype == DType::float32 ? static_cast<double>(static_cast<float>(x)) : round_to_bf16(x);
}
template <std::size_t N>
xt::xtensor<double, N> round_to(const xt::xtensor<double, N>& x, DType dtype);
template <std::size_t N>
xt::xtensor<double, N> round_to_float(const xt::xtensor<double, N>& x) {
  return round_to(x, DType::float32);
}

// Kernel checks (docs/validation.md): each tensor of `kernel` is held to
//   kernel_factor · baseline_error[name] + error(round_to(oracle, dtype[name]), oracle) + kernel_slack
// where baseline_error is the error of the kernel's baseline (the CPU reference in the kernel's
// arithmetic on the kernel's inputs) against the same oracle.
Report kernel_compare(const std::vector<Named<double>>& kernel, const std::vector<Named<double>>& oracle,
                      const std::map<std::string, double>& baseline_error,
                      const std::map<std::string, DType>& output_dtype, double scale);

// The baseline's error per tensor: the largest error against the oracle among several equivalent
// runs (one run's rounding error is a noisy estimate), each run's tensor first rounded to its output
// type, as a plain computation in that type writes it.
template <class R>
std::map<std::string, double> baseline_errors(const std::vector<std::vector<Named<R>>>& runs,
                                              const std::vector<Named<double>>& oracle,
                                              const std::map<std::string, DType>& output_dtype, double scale);

}  // namespace flashlstm::check
