// Graphs for pLSTM: a DAG with numbered nodes and edges, built and checked with Boost.Graph;
// orienting an undirected graph (dagify), reversal, the line graph, topological orders, level
// schedules, multitree pruning (D-mode) and the flattening to index arrays the kernels read.
//
// Numbering is the contract between the graph and the gate tensors: nodes are 0..N-1, edges are
// 0..E-1 in the order they were given, line-graph arcs are numbered by node, then incoming edge,
// then outgoing edge (see LineGraph). Gate arrays S, M (per edge), T (per arc), D (per node) are
// indexed that way.
//
// Sizes: node, edge and arc counts are at most kMaxCount (their ids fit the int32 arrays of
// flatten()), and a graph whose structures would not fit in this machine's memory is refused with
// an Error naming what it would need, before anything that size is allocated. Every index argument
// (node ids, edge ids, arc ids, levels, ranks, roots) is checked and named in the Error.
#pragma once

#include "core/view.hpp"

#include <cstdint>
#include <iosfwd>
#include <limits>
#include <string>
#include <vector>

namespace flashlstm::graph {

// The most nodes, edges or line-graph arcs a graph may have: their ids fit int32.
inline constexpr index_t kMaxCount = std::numeric_limits<std::int32_t>::max();

struct Edge {
  index_t src = 0, dst = 0;
  bool operator==(const Edge&) const = default;
};

// Compressed rows: the items of row r are items[offsets[r] .. offsets[r + 1]).
struct Csr {
  std::vector<index_t> offsets, items;
  index_t rows() const { return static_cast<index_t>(offsets.size()) - 1; }
  index_t size(index_t r) const { return offsets[r + 1] - offsets[r]; }
  const index_t* begin(index_t r) const { return items.data() + offsets[r]; }
  const index_t* end(index_t r) const { return items.data() + offsets[r + 1]; }
};

class Dag {
 public:
  // Throws Error for a vertex outside [0, num_nodes), a cycle (naming an edge on it), or more nodes
  // or edges than kMaxCount or memory allow.
  Dag(index_t num_nodes, std::vector<Edge> edges);

  index_t num_nodes() const { return num_nodes_; }
  index_t num_edges() const { return static_cast<index_t>(edges_.size()); }
  const std::vector<Edge>& edges() const { return edges_; }
  const Csr& in_edges() const { return in_; }    // per node: ids of its incoming edges, in id order
  const Csr& out_edges() const { return out_; }  // per node: ids of its outgoing edges, in id order
  const std::vector<index_t>& topological_order() const { return order_; }  // nodes, sources first
  // The nodes by level (longest-path depth), as level_schedule(node_levels(dag)); built once here
  // for the levels form.
  const Csr& levels() const { return levels_; }

 private:
  index_t num_nodes_;
  std::vector<Edge> edges_;
  Csr in_, out_;
  std::vector<index_t> order_;
  Csr levels_;
};

// A seeded random DAG for tests and benchmarks: node i (in a hidden random order) takes
// Poisson(mean_in_degree) distinct predecessors among the `window` nodes before it (all earlier
// nodes when window = 0); node ids are then shuffled so that id order is not a topological order.
// mean_in_degree must be finite, in [0, kMaxCount]; window >= 0.
Dag random_dag(index_t num_nodes, double mean_in_degree, std::uint64_t seed, index_t window = 0);

// How dagify orders the nodes of an undirected graph; every edge then points from the earlier node
// to the later one, which makes the result acyclic.
struct NodeOrder {
  enum Kind { given, bfs, random } kind = given;
  std::vector<index_t> permutation;  // given: node -> rank (empty means the identity); only for `given`
  index_t root = 0;                  // bfs: start node (unreached components continue from the lowest node)
  std::uint64_t seed = 0;            // random: seeded permutation

  static NodeOrder parse(const std::string& name);  // "given", "bfs", "random"
};

Dag dagify(index_t num_nodes, const std::vector<Edge>& undirected, const NodeOrder& order);
Dag reverse(const Dag& dag);  // every edge flipped, ids kept

// The line graph: one vertex per edge of the DAG, an arc e' -> e for every node n with e' entering
// and e leaving n. Itself a DAG. It has Σ_n in(n)·out(n) arcs, quadratic in a hub's degree: that
// count is checked against kMaxCount and memory first. The functions below that take a LineGraph
// check that its arcs and rows agree (a hand-built one must be consistent and acyclic).
struct Arc {
  index_t from = 0, to = 0;  // edge ids
  index_t node = 0;          // the node the arc passes through
};
struct LineGraph {
  index_t num_vertices = 0;  // = edges of the DAG
  std::vector<Arc> arcs;     // ordered by node, then incoming edge, then outgoing edge
  Csr in_arcs, out_arcs;     // per vertex: ids of incoming / outgoing arcs
};
LineGraph line_graph(const Dag& dag);

// Longest-path depth from the sources: per node of a DAG, per vertex of a line graph. Nodes (or
// vertices) of one level depend only on earlier levels.
std::vector<index_t> node_levels(const Dag& dag);
std::vector<index_t> vertex_levels(const LineGraph& lg);
// The same as lists: level l holds the nodes with depth l, in increasing id. Each level must be in
// [0, levels.size()) (a depth is shorter than the number of nodes).
Csr level_schedule(const std::vector<index_t>& levels);

// Level-major renumbering: nodes ordered by level (ties by id), edges by (new source, new
// destination). Each level's nodes, and their outgoing edges, are then contiguous, which is what the
// levels form streams through (on a 100,000-node random DAG it turns 1.57x over the recurrent form
// into 1.86x on 2 cores: bench/plstm_cpu.cpp). Per-node and per-edge data move with the maps:
// renumbered node node_id[n] is old node n, renumbered edge edge_id[e] is old edge e. The DAG is the
// same graph (isomorphic), so every form computes the same outputs, permuted.
struct Renumbered {
  Dag dag;
  std::vector<index_t> node_id;  // old node -> new node
  std::vector<index_t> edge_id;  // old edge -> new edge
};
Renumbered level_major(const Dag& dag);

// D-mode: keep, in topological order, an arc only if no vertex already reaches its target along
// another path; the result has at most one path between any two vertices, and every vertex that
// had an incoming arc keeps one. Returns the ids of the kept arcs. Memory: one bit per pair of
// line-graph vertices (meant for graphs up to some 10^4 edges; grids have a closed form).
std::vector<index_t> multitree_arcs(const LineGraph& lg);
// True when at most one path joins any two vertices of the line graph restricted to `arcs` (distinct
// arc ids of lg).
bool is_multitree(const LineGraph& lg, const std::vector<index_t>& arcs);

// Index arrays for kernels (int32 for the GPU).
struct Flat {
  std::vector<std::int32_t> in_offsets, in_edges, out_offsets, out_edges;  // node -> edge CSR
  std::vector<std::int32_t> edge_src, edge_dst;
  std::vector<std::int32_t> arc_from, arc_to, arc_node;
  std::vector<std::int32_t> level_offsets, level_nodes;  // node level schedule
};
Flat flatten(const Dag& dag);

// Readers: DOT (Boost read_graphviz), GraphML, or a plain edge list ("u v" per line, '#' comments;
// node count = largest id + 1). Nodes are numbered as Boost's readers number them: for DOT sorted by
// name as strings, not in order of appearance (read_graphviz collects them in a std::map, so "n10"
// comes before "n2" and "10" before "9"; node_names says which is which); for GraphML in order of
// appearance; for edge lists by their numbers. Edges keep the file's order for edge lists; for DOT
// and GraphML they are ordered by an integer edge attribute "id" when every edge has one (write_dot
// writes it), else by source node. Undirected DOT and GraphML graphs are read too (their edges then
// go to dagify).
//
// Every malformed input throws Error naming the problem: an edge-list line that is not two ids in
// [0, kMaxCount) (naming the line), a DOT or GraphML syntax error (Boost's message), subgraphs or
// XML elements nested deeper than kMaxNesting (Boost's parsers recurse once per level), a GraphML
// edge naming an undeclared node or a node id declared twice, an edge "id" that is not an integer
// >= 0 or given on some edges only. A message escapes the file's bytes that may not be UTF-8 (\xNN),
// so that it prints and reaches Python as text; node names keep the file's bytes.
struct EdgeList {
  index_t num_nodes = 0;
  std::vector<Edge> edges;
  // DOT node ids; "n0", "n1", ... for GraphML (Boost's reader does not return the file's ids);
  // the numbers for edge lists.
  std::vector<std::string> node_names;
};
enum class Format { dot, graphml, edges };
// The deepest nesting of DOT braces or GraphML elements read (200 levels take under 512 KiB of stack
// in Boost's parsers, even under AddressSanitizer).
inline constexpr index_t kMaxNesting = 200;
Format parse_format(const std::string& name);
EdgeList read_graph(std::istream& in, Format format);
EdgeList read_graph_file(const std::string& path, Format format);
void write_dot(std::ostream& out, const Dag& dag);

}  // namespace flashlstm::graph
