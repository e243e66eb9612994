// libFuzzer target for the edge-list reader (graph::read_graph with Format::edges), then the DAG
// built from what it read (read_graph.hpp). Seeds: fuzz/corpus/edges/.
//
// An input naming a node id in (10^4, kMaxCount) is skipped: such a graph is a legitimate request
// for up to gigabytes (the reader refuses only ids >= kMaxCount and sizes beyond this machine's
// memory), which -rss_limit_mb would report, and even a million nodes would slow the fuzzer down a
// hundredfold. Larger ids, which must be refused, run.
#include "fuzz/read_graph.hpp"

#include <algorithm>
#include <charconv>
#include <string_view>

namespace {

bool names_a_large_node(std::string_view text) {
  for (std::size_t i = text.find_first_of("0123456789"); i != std::string_view::npos;) {
    const std::size_t end = std::min(text.find_first_not_of("0123456789", i), text.size());
    std::int64_t id = 0;
    const auto [ptr, error] = std::from_chars(text.data() + i, text.data() + end, id);
    if (error == std::errc() && id > 10'000 && id < flashlstm::graph::kMaxCount) return true;
    i = text.find_first_of("0123456789", end);
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (names_a_large_node({reinterpret_cast<const char*>(data), size})) return -1;  // not kept in the corpus
  return flashlstm::fuzz::read_and_build(data, size, flashlstm::graph::Format::edges);
}
