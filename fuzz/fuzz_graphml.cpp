// libFuzzer target for the GraphML reader (graph::read_graph with Format::graphml: the nesting and
// node-id checks on property_tree's XML parser, then Boost's read_graphml), then the DAG built from
// what it read (read_graph.hpp). Seeds: fuzz/corpus/graphml/.
#include "fuzz/read_graph.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return flashlstm::fuzz::read_and_build(data, size, flashlstm::graph::Format::graphml);
}
