// flashlstm::Error: the one exception every public entry point throws on bad input. It derives
// from std::invalid_argument so callers that only know the standard library can still catch it,
// and the Python bindings turn it into ValueError.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace flashlstm {

class Error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Throws Error("<argument>: <message>") when `ok` is false.
template <class... Args>
void require(bool ok, std::string_view argument, fmt::format_string<Args...> message, Args&&... args) {
  if (!ok) {
    throw Error(fmt::format("{}: {}", argument, fmt::format(message, std::forward<Args>(args)...)));
  }
}

}  // namespace flashlstm
