// What every graph fuzz target does with its input: read it with graph::read_graph, then build what
// the pLSTM builds from a graph file: the Dag as given (a cycle is an Error) and the one dagify
// orients along a breadth-first order (as `flashlstm plstm --undirected`), and from each the flat
// index arrays (with the line graph), the level-major renumbering and the D-mode multitree. An Error
// is the normal outcome for bad input; only crashes, sanitizer reports, timeouts and leaks are
// findings.
#pragma once

#include "graph/graph.hpp"

#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>

namespace flashlstm::fuzz {

template <class MakeDag>
void build(MakeDag&& make_dag) {
  try {
    const graph::Dag dag = make_dag();
    graph::flatten(dag);
    graph::multitree_arcs(graph::line_graph(graph::level_major(dag).dag));
  } catch (const Error&) {
  }
}

inline int read_and_build(const std::uint8_t* data, std::size_t size, graph::Format format) {
  std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
  graph::EdgeList list;
  try {
    list = graph::read_graph(in, format);
  } catch (const Error&) {
    return 0;
  }
  build([&] { return graph::Dag(list.num_nodes, list.edges); });
  build([&] { return graph::dagify(list.num_nodes, list.edges, {graph::NodeOrder::bfs}); });
  return 0;
}

}  // namespace flashlstm::fuzz
