// Catch2 support for the check library: CHECK_THAT(report, passes()) prints every tensor's error,
// bound and ratio when a report fails.
#pragma once

#include "reference/check/report.hpp"

#include <catch2/catch.hpp>

namespace Catch {
template <>
struct StringMaker<flashlstm::check::Report> {
  static std::string convert(const flashlstm::check::Report& r) { return "\n" + r.table(); }
};
}  // namespace Catch

namespace flashlstm::check {

class PassesMatcher : public Catch::MatcherBase<Report> {
 public:
  bool match(const Report& r) const override { return r.passed(); }
  std::string describe() const override { return "has every tensor within its bound"; }
};
inline PassesMatcher passes() { return {}; }

}  // namespace flashlstm::check
