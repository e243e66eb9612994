// Error measures and reports (see report.hpp).
#include "reference/check/report.hpp"

#include <limits>

namespace flashlstm::check {

namespace {

// A tensor's elements rounded to `dtype`, as doubles.
template <class T>
std::vector<double> rounded(const Named<T>& t, DType dtype) {
  std::vector<double> out(t.data, t.data + t.size);
  for (auto& e : out) e = round_to(e, dtype);
  return out;
}

}  // namespace

template <class A, class R>
double error(const A* a, const R* ref, index_t n, double scale, bool* against_scale) {
  const L2Distance d = l2_distance(a, ref, n);
  if (!d.finite) return std::numeric_limits<double>::quiet_NaN();
  const double floor = near_zero * scale * std::sqrt(static_cast<double>(n));
  const bool small = d.norm < floor;
  if (against_scale) *against_scale = small;
  const double denominator = small ? floor : d.norm;
  if (denominator == 0) return d.diff == 0 ? 0.0 : std::numeric_limits<double>::infinity();
  return d.diff / denominator;
}

bool Report::passed() const {
  return !tensors_.empty() && std::all_of(tensors_.begin(), tensors_.end(), [](const auto& t) { return t.passed(); });
}

const TensorError& Report::worst() const {
  require(!tensors_.empty(), "report", "has no tensors");
  auto key = [](const TensorError& t) {
    return std::isnan(t.ratio()) ? std::numeric_limits<double>::infinity() : t.ratio();
  };
  return *std::max_element(tensors_.begin(), tensors_.end(),
                           [&](const auto& a, const auto& b) { return key(a) < key(b); });
}

std::string Report::table() const {
  std::string out;
  for (const auto& t : tensors_)
    out += fmt::format("  {:<12} error {:9.3e}{}  bound {:9.3e}  ratio {:7.3f}  {}\n", t.name, t.error,
                       t.against_scale ? " (vs scale)" : "", t.bound, t.ratio(), t.passed() ? "pass" : "FAIL");
  return out;
}

template <class T>
double rms(const std::vector<Named<T>>& tensors) {
  long double sum = 0;
  index_t count = 0;
  for (const auto& t : tensors) {
    for (index_t i = 0; i < t.size; ++i) sum += static_cast<long double>(t.data[i]) * t.data[i];
    count += t.size;
  }
  return count > 0 ? static_cast<double>(std::sqrt(sum / count)) : 0.0;
}

template <std::size_t N>
xt::xtensor<double, N> round_to(const xt::xtensor<double, N>& x, DType dtype) {
  xt::xtensor<double, N> out = x;
  for (auto& e : out) e = round_to(e, dtype);
  return out;
}

Report kernel_compare(const std::vector<Named<double>>& kernel, const std::vector<Named<double>>& oracle,
                      const std::map<std::string, double>& baseline_error,
                      const std::map<std::string, DType>& output_dtype, double scale) {
  std::map<std::string, double> bounds;
  for (const auto& t : oracle) {
    const double rounding = error(rounded(t, output_dtype.at(t.name)).data(), t.data, t.size, scale);
    bounds[t.name] = kernel_factor * baseline_error.at(t.name) + rounding + kernel_slack;
  }
  return compare(kernel, oracle, std::function<double(const std::string&)>([&](const std::string& name) {
                   return bounds.at(name);
                 }),
                 scale);
}

template <class R>
std::map<std::string, double> baseline_errors(const std::vector<std::vector<Named<R>>>& runs,
                                              const std::vector<Named<double>>& oracle,
                                              const std::map<std::string, DType>& output_dtype, double scale) {
  std::map<std::string, double> worst;
  for (const auto& t : oracle) {
    double& w = worst[t.name];
    for (const auto& run : runs) {
      const auto it = std::find_if(run.begin(), run.end(), [&](const auto& x) { return x.name == t.name; });
      require(it != run.end() && it->size == t.size, t.name, "is missing from a baseline run or has another size");
      const double e = error(rounded(*it, output_dtype.at(t.name)).data(), t.data, t.size, scale);
      w = std::isnan(e) || std::isnan(w) ? std::numeric_limits<double>::quiet_NaN() : std::max(w, e);
    }
  }
  return worst;
}

template double error(const float*, const double*, index_t, double, bool*);
template double error(const double*, const double*, index_t, double, bool*);
template double error(const float*, const float*, index_t, double, bool*);
template double rms(const std::vector<Named<float>>&);
template double rms(const std::vector<Named<double>>&);
template xt::xtensor<double, 1> round_to(const xt::xtensor<double, 1>&, DType);
template xt::xtensor<double, 2> round_to(const xt::xtensor<double, 2>&, DType);
template xt::xtensor<double, 3> round_to(const xt::xtensor<double, 3>&, DType);
template xt::xtensor<double, 4> round_to(const xt::xtensor<double, 4>&, DType);
template xt::xtensor<double, 5> round_to(const xt::xtensor<double, 5>&, DType);
template std::map<std::string, double> baseline_errors(const std::vector<std::vector<Named<float>>>&,
                                                       const std::vector<Named<double>>&,
                                                       const std::map<std::string, DType>&, double);
template std::map<std::string, double> baseline_errors(const std::vector<std::vector<Named<double>>>&,
                                                       const std::vector<Named<double>>&,
                                                       const std::map<std::string, DType>&, double);

}  // namespace flashlstm::check
