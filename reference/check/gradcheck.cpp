// Directional finite differences (see gradcheck.hpp).
#include "reference/check/gradcheck.hpp"

#include "core/random.hpp"

#include <algorithm>
#include <cmath>

namespace flashlstm::check {

Report gradcheck(const std::vector<Argument>& arguments, const std::function<double()>& loss, std::uint64_t seed) {
  constexpr double step = 1e-4;
  Rng rng(seed);
  Report report;
  for (const Argument& a : arguments) {
    const auto n = static_cast<index_t>(a.value.size());
    const std::vector<double> x0(a.value.begin(), a.value.end());
    const auto u = rng.normal<double>(Shape<1>{n});
    auto central = [&](double h) {
      for (index_t i = 0; i < n; ++i) a.value[i] = x0[i] + h * u(i);
      const double plus = loss();
      for (index_t i = 0; i < n; ++i) a.value[i] = x0[i] - h * u(i);
      const double minus = loss();
      return (plus - minus) / (2 * h);
    };
    const double fd = (4 * central(step / 2) - central(step)) / 3;
    std::copy(x0.begin(), x0.end(), a.value.begin());
    long double analytic = 0;
    for (index_t i = 0; i < n; ++i) analytic += static_cast<long double>(a.grad[i]) * u(i);
    const double an = static_cast<double>(analytic);
    const double e = std::abs(fd - an) / std::max({std::abs(fd), std::abs(an), 1e-300});
    report.add({"fd " + a.name, std::isfinite(fd) && std::isfinite(an) ? e : std::nan(""),
                finite_difference_tolerance});
  }
  return report;
}

}  // namespace flashlstm::check
