// libFuzzer target for the DOT reader (graph::read_graph with Format::dot, Boost's read_graphviz
// behind it), then the DAG built from what it read (read_graph.hpp). Seeds: fuzz/corpus/dot/.
#include "fuzz/read_graph.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return flashlstm::fuzz::read_and_build(data, size, flashlstm::graph::Format::dot);
}
