// Graph preparation for pLSTM on Boost.Graph (see graph.hpp): construction with cycle detection by
// depth-first search (its back edge names an edge on a cycle), topological sort, dagify by a node
// order, the line graph, levels, multitree pruning and the readers/writers. Sizes are checked
// before they are allocated (counts against kMaxCount, bytes against the machine's memory), and the
// readers check what Boost's parsers do not: the nesting depth they recurse through, GraphML node
// ids, edge ids; every exception of Boost's becomes an Error.
#include "graph/graph.hpp"

#include "core/error.hpp"
#include "core/memory.hpp"

#include <boost/graph/adjacency_list.hpp>
#include <boost/graph/breadth_first_search.hpp>
#include <boost/graph/depth_first_search.hpp>
#include <boost/graph/graphml.hpp>
#include <boost/graph/graphviz.hpp>
#include <boost/graph/topological_sort.hpp>
#include <boost/property_tree/ptree.hpp>
#include <boost/property_tree/xml_parser.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string_view>

namespace flashlstm::graph {
namespace {

using BoostDag = boost::adjacency_list<boost::vecS, boost::vecS, boost::bidirectionalS, boost::no_property,
                                       boost::property<boost::edge_index_t, index_t>>;

// Bytes per node, edge and line-graph arc of what is built here, rounded up. Per node: Boost's
// adjacency list while the Dag is checked for cycles (two edge vectors), the Dag's two CSR offsets,
// topological position and level, the search's colour maps, a reader's node name. Per edge: Boost's
// list node and two adjacency entries (vectors grow to twice their size), the edge, its two CSR
// entries and their (row, item) pairs. Per arc: the arc, its two CSR entries and their pairs.
constexpr double kNodeBytes = 160, kEdgeBytes = 192, kArcBytes = 80;

// Refuses a graph whose node or edge count exceeds kMaxCount, or whose structures exceed memory (an
// error naming the nodes' argument and both counts).
void require_graph_size(std::string_view nodes_argument, double num_nodes, std::string_view edges_argument,
                        double num_edges) {
  require(num_nodes >= 0 && num_nodes <= kMaxCount, nodes_argument, "expected a number of nodes in [0, {}], got {}",
          kMaxCount, num_nodes);
  require(num_edges <= kMaxCount, edges_argument, "expected at most {} edges, got {}", kMaxCount, num_edges);
  require_memory(nodes_argument, num_nodes * kNodeBytes + num_edges * kEdgeBytes,
                 fmt::format("a graph of {} nodes and {} edges", num_nodes, num_edges));
}

// Rows of a CSR from (row, item) pairs, items of a row in the order given.
Csr make_csr(index_t rows, const std::vector<std::pair<index_t, index_t>>& pairs) {
  Csr c;
  c.offsets.assign(rows + 1, 0);
  for (const auto& [r, item] : pairs) ++c.offsets[r + 1];
  std::partial_sum(c.offsets.begin(), c.offsets.end(), c.offsets.begin());
  c.items.resize(pairs.size());
  std::vector<index_t> next(c.offsets.begin(), c.offsets.end() - 1);
  for (const auto& [r, item] : pairs) c.items[next[r]++] = item;
  return c;
}

struct BackEdgeFinder : boost::default_dfs_visitor {
  std::optional<index_t>* found;
  void back_edge(BoostDag::edge_descriptor e, const BoostDag& g) const {
    if (!*found) *found = boost::get(boost::edge_index, g, e);
  }
};

}  // namespace

Dag::Dag(index_t num_nodes, std::vector<Edge> edges) : num_nodes_(num_nodes), edges_(std::move(edges)) {
  require_graph_size("num_nodes", static_cast<double>(num_nodes), "edges", static_cast<double>(num_edges()));
  BoostDag g(num_nodes);
  std::vector<std::pair<index_t, index_t>> in_pairs, out_pairs;
  for (index_t i = 0; i < num_edges(); ++i) {
    const auto [u, v] = edges_[i];
    require(u >= 0 && u < num_nodes && v >= 0 && v < num_nodes, fmt::format("edges[{}]", i),
            "edge {} -> {} names a node outside [0, {})", u, v, num_nodes);
    boost::add_edge(u, v, i, g);
    out_pairs.emplace_back(u, i);
    in_pairs.emplace_back(v, i);
  }
  std::optional<index_t> back;
  boost::depth_first_search(g, boost::visitor(BackEdgeFinder{{}, &back}));
  require(!back, "edges", "the graph has a cycle: edge {} ({} -> {}) lies on it", back.value_or(0),
          back ? edges_[*back].src : 0, back ? edges_[*back].dst : 0);
  in_ = make_csr(num_nodes, in_pairs);
  out_ = make_csr(num_nodes, out_pairs);
  boost::topological_sort(g, std::back_inserter(order_));  // sinks first
  std::reverse(order_.begin(), order_.end());
  levels_ = level_schedule(node_levels(*this));
}

Dag random_dag(index_t num_nodes, double mean_in_degree, std::uint64_t seed, index_t window) {
  require(std::isfinite(mean_in_degree) && mean_in_degree >= 0 && mean_in_degree <= kMaxCount, "mean_in_degree",
          "expected a finite number in [0, {}], got {}", kMaxCount, mean_in_degree);
  require(window >= 0, "window", "expected >= 0, got {}", window);
  // Node v draws about min(mean_in_degree, window or v) predecessors.
  const double nodes = static_cast<double>(num_nodes);
  const double expected_edges = nodes * std::min(mean_in_degree, window > 0 ? static_cast<double>(window) : nodes);
  require_graph_size("num_nodes", nodes, "mean_in_degree", expected_edges);
  std::mt19937_64 rng(seed);
  std::vector<index_t> id(num_nodes);
  std::iota(id.begin(), id.end(), 0);
  std::shuffle(id.begin(), id.end(), rng);
  std::poisson_distribution<index_t> degree(mean_in_degree > 0 ? mean_in_degree : 1);  // its mean must be > 0
  std::vector<Edge> edges;
  std::vector<index_t> picked;
  for (index_t v = 1; v < num_nodes; ++v) {
    const index_t lo = window > 0 ? std::max<index_t>(0, v - window) : 0;
    const index_t k = mean_in_degree > 0 ? std::min(degree(rng), v - lo) : 0;
    picked.clear();
    while (static_cast<index_t>(picked.size()) < k) {
      const index_t u = std::uniform_int_distribution<index_t>(lo, v - 1)(rng);
      if (std::find(picked.begin(), picked.end(), u) == picked.end()) picked.push_back(u);
    }
    std::sort(picked.begin(), picked.end());
    for (index_t u : picked) edges.push_back({id[u], id[v]});
  }
  return Dag(num_nodes, std::move(edges));
}

NodeOrder NodeOrder::parse(const std::string& name) {
  if (name == "given") return {given};
  if (name == "bfs") return {bfs};
  if (name == "random") return {random};
  throw Error(fmt::format("order: expected given, bfs or random, got {:?}", name));
}

Dag dagify(index_t num_nodes, const std::vector<Edge>& undirected, const NodeOrder& order) {
  require_graph_size("num_nodes", static_cast<double>(num_nodes), "edges", static_cast<double>(undirected.size()));
  for (std::size_t i = 0; i < undirected.size(); ++i) {
    const auto [u, v] = undirected[i];
    require(u >= 0 && u < num_nodes && v >= 0 && v < num_nodes, fmt::format("edges[{}]", i),
            "edge {} -- {} names a node outside [0, {})", u, v, num_nodes);
    require(u != v, fmt::format("edges[{}]", i), "a self-loop at node {} cannot be oriented", u);
  }
  require(order.permutation.empty() || order.kind == NodeOrder::given, "order.permutation",
          "is used by the order 'given' only, got {} ranks with another order", order.permutation.size());
  std::vector<index_t> rank(num_nodes);
  std::iota(rank.begin(), rank.end(), 0);
  switch (order.kind) {
    case NodeOrder::given:
      if (!order.permutation.empty()) {
        require(static_cast<index_t>(order.permutation.size()) == num_nodes, "order.permutation",
                "expected {} ranks, got {}", num_nodes, order.permutation.size());
        std::vector<bool> taken(num_nodes, false);
        for (index_t n = 0; n < num_nodes; ++n) {
          const index_t r = order.permutation[n];
          require(r >= 0 && r < num_nodes && !taken[r], fmt::format("order.permutation[{}]", n),
                  "expected a rank in [0, {}) that no other node has, got {}", num_nodes, r);
          taken[r] = true;
        }
        rank = order.permutation;
      }
      break;
    case NodeOrder::bfs: {
      require(num_nodes == 0 || (order.root >= 0 && order.root < num_nodes), "order.root",
              "expected a node in [0, {}), got {}", num_nodes, order.root);
      boost::adjacency_list<boost::vecS, boost::vecS, boost::undirectedS> g(num_nodes);
      for (const auto& e : undirected) boost::add_edge(e.src, e.dst, g);
      std::vector<boost::default_color_type> color(num_nodes, boost::white_color);
      index_t next_rank = 0;
      auto visit_from = [&](index_t start) {
        std::vector<index_t> discovered;
        boost::breadth_first_visit(
            g, start,
            boost::visitor(boost::make_bfs_visitor(boost::write_property(
                               boost::typed_identity_property_map<index_t>(), std::back_inserter(discovered),
                               boost::on_discover_vertex())))
                .color_map(boost::make_iterator_property_map(color.begin(), boost::get(boost::vertex_index, g))));
        for (index_t v : discovered) rank[v] = next_rank++;
      };
      if (num_nodes > 0) visit_from(order.root);
      for (index_t v = 0; v < num_nodes; ++v)
        if (color[v] == boost::white_color) visit_from(v);
      break;
    }
    case NodeOrder::random: {
      std::mt19937_64 rng(order.seed);
      std::shuffle(rank.begin(), rank.end(), rng);
      break;
    }
  }
  std::vector<Edge> directed;
  directed.reserve(undirected.size());
  for (const auto& [u, v] : undirected) directed.push_back(rank[u] < rank[v] ? Edge{u, v} : Edge{v, u});
  return Dag(num_nodes, std::move(directed));
}

Dag reverse(const Dag& dag) {
  std::vector<Edge> flipped;
  for (const auto& e : dag.edges()) flipped.push_back({e.dst, e.src});
  return Dag(dag.num_nodes(), std::move(flipped));
}

LineGraph line_graph(const Dag& dag) {
  double num_arcs = 0;
  for (index_t n = 0; n < dag.num_nodes(); ++n)
    num_arcs += static_cast<double>(dag.in_edges().size(n)) * static_cast<double>(dag.out_edges().size(n));
  require(num_arcs <= kMaxCount, "dag",
          "its line graph would have {} arcs (the sum over nodes of in-degree x out-degree), more than {}", num_arcs,
          kMaxCount);
  require_memory("dag", num_arcs * kArcBytes, fmt::format("its line graph of {} arcs", num_arcs));
  LineGraph lg;
  lg.num_vertices = dag.num_edges();
  lg.arcs.reserve(static_cast<std::size_t>(num_arcs));
  for (index_t n = 0; n < dag.num_nodes(); ++n)
    for (const index_t* in = dag.in_edges().begin(n); in != dag.in_edges().end(n); ++in)
      for (const index_t* out = dag.out_edges().begin(n); out != dag.out_edges().end(n); ++out)
        lg.arcs.push_back({*in, *out, n});
  std::vector<std::pair<index_t, index_t>> in_pairs, out_pairs;
  for (index_t a = 0; a < static_cast<index_t>(lg.arcs.size()); ++a) {
    in_pairs.emplace_back(lg.arcs[a].to, a);
    out_pairs.emplace_back(lg.arcs[a].from, a);
  }
  lg.in_arcs = make_csr(lg.num_vertices, in_pairs);
  lg.out_arcs = make_csr(lg.num_vertices, out_pairs);
  return lg;
}

namespace {

// Checks that `rows` lists, for each of the line graph's vertices v, arcs whose end (`to` for
// in_arcs, `from` for out_arcs) is v, every arc exactly once.
void check_arc_rows(std::string_view name, const Csr& rows, const LineGraph& lg, index_t Arc::*end) {
  const index_t V = lg.num_vertices, A = static_cast<index_t>(lg.arcs.size());
  require(static_cast<index_t>(rows.offsets.size()) == V + 1 && rows.offsets.front() == 0 &&
              rows.offsets.back() == A && static_cast<index_t>(rows.items.size()) == A &&
              std::is_sorted(rows.offsets.begin(), rows.offsets.end()),
          name, "expected {} rows of nondecreasing offsets holding the {} arcs", V, A);
  std::vector<bool> listed(A, false);
  for (index_t v = 0; v < V; ++v)
    for (const index_t* a = rows.begin(v); a != rows.end(v); ++a) {
      require(*a >= 0 && *a < A && !listed[*a] && lg.arcs[*a].*end == v, name,
              "row {} lists arc {}, expected arcs in [0, {}) that end there, each once", v, *a, A);
      listed[*a] = true;
    }
}

// A LineGraph is a plain struct: the functions that take one check that its parts agree, so that a
// hand-built one cannot make them index out of bounds.
void check_line_graph(const LineGraph& lg) {
  const index_t V = lg.num_vertices;
  require(V >= 0 && V <= kMaxCount && static_cast<index_t>(lg.arcs.size()) <= kMaxCount, "line_graph",
          "expected at most {} vertices and arcs, got {} and {}", kMaxCount, V, lg.arcs.size());
  for (std::size_t a = 0; a < lg.arcs.size(); ++a)
    require(lg.arcs[a].from >= 0 && lg.arcs[a].from < V && lg.arcs[a].to >= 0 && lg.arcs[a].to < V,
            fmt::format("line_graph.arcs[{}]", a), "arc {} -> {} names a vertex outside [0, {})", lg.arcs[a].from,
            lg.arcs[a].to, V);
  check_arc_rows("line_graph.in_arcs", lg.in_arcs, lg, &Arc::to);
  check_arc_rows("line_graph.out_arcs", lg.out_arcs, lg, &Arc::from);
}

}  // namespace

std::vector<index_t> node_levels(const Dag& dag) {
  std::vector<index_t> level(dag.num_nodes(), 0);
  for (index_t n : dag.topological_order())
    for (const index_t* e = dag.out_edges().begin(n); e != dag.out_edges().end(n); ++e)
      level[dag.edges()[*e].dst] = std::max(level[dag.edges()[*e].dst], level[n] + 1);
  return level;
}

std::vector<index_t> vertex_levels(const LineGraph& lg) {
  check_line_graph(lg);
  // The line graph of a DAG is a DAG; a vertex's level is one more than its deepest predecessor.
  // Kahn's algorithm visits vertices after all their predecessors; a vertex it never visits lies on
  // a cycle (only in a hand-built line graph).
  std::vector<index_t> level(lg.num_vertices, 0), pending(lg.num_vertices), ready;
  for (index_t v = 0; v < lg.num_vertices; ++v) {
    pending[v] = lg.in_arcs.size(v);
    if (pending[v] == 0) ready.push_back(v);
  }
  index_t visited = 0;
  while (!ready.empty()) {
    const index_t v = ready.back();
    ready.pop_back();
    ++visited;
    for (const index_t* a = lg.out_arcs.begin(v); a != lg.out_arcs.end(v); ++a) {
      const index_t w = lg.arcs[*a].to;
      level[w] = std::max(level[w], level[v] + 1);
      if (--pending[w] == 0) ready.push_back(w);
    }
  }
  require(visited == lg.num_vertices, "line_graph", "has a cycle through {} of its {} vertices",
          lg.num_vertices - visited, lg.num_vertices);
  return level;
}

Csr level_schedule(const std::vector<index_t>& levels) {
  const index_t n = static_cast<index_t>(levels.size());
  for (index_t v = 0; v < n; ++v)
    require(levels[v] >= 0 && levels[v] < n, fmt::format("levels[{}]", v), "expected a level in [0, {}), got {}", n,
            levels[v]);
  const index_t count = levels.empty() ? 0 : *std::max_element(levels.begin(), levels.end()) + 1;
  std::vector<std::pair<index_t, index_t>> pairs;
  for (index_t v = 0; v < n; ++v) pairs.emplace_back(levels[v], v);
  return make_csr(count, pairs);
}

Renumbered level_major(const Dag& dag) {
  const Csr& schedule = dag.levels();
  std::vector<index_t> node_id(dag.num_nodes());
  for (index_t i = 0; i < static_cast<index_t>(schedule.items.size()); ++i) node_id[schedule.items[i]] = i;
  std::vector<index_t> order(dag.num_edges());  // new edge -> old edge
  std::iota(order.begin(), order.end(), index_t{0});
  auto key = [&](index_t e) { return std::pair(node_id[dag.edges()[e].src], node_id[dag.edges()[e].dst]); };
  std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) { return key(a) < key(b); });
  std::vector<Edge> edges(dag.num_edges());
  std::vector<index_t> edge_id(dag.num_edges());
  for (index_t e = 0; e < dag.num_edges(); ++e) {
    const auto [src, dst] = key(order[e]);
    edges[e] = {src, dst};
    edge_id[order[e]] = e;
  }
  return {Dag(dag.num_nodes(), std::move(edges)), std::move(node_id), std::move(edge_id)};
}

namespace {

// Vertices of the line graph in an order where every arc goes forward.
std::vector<index_t> vertex_order(const LineGraph& lg) {
  const auto level = vertex_levels(lg);
  std::vector<index_t> order(lg.num_vertices);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) { return level[a] < level[b]; });
  return order;
}

// Bit sets of ancestors (a vertex counts as its own ancestor).
class Ancestors {
 public:
  explicit Ancestors(index_t n) : words_((n + 63) / 64), bits_(static_cast<std::size_t>(n) * words_, 0) {
    for (index_t v = 0; v < n; ++v) row(v)[v / 64] |= std::uint64_t(1) << (v % 64);
  }
  static double bytes(index_t n) { return static_cast<double>(n) * static_cast<double>((n + 63) / 64) * 8; }
  std::uint64_t* row(index_t v) { return bits_.data() + static_cast<std::size_t>(v) * words_; }
  bool intersect(index_t a, index_t b) {
    for (index_t w = 0; w < words_; ++w)
      if (row(a)[w] & row(b)[w]) return true;
    return false;
  }
  void merge_into(index_t dst, index_t src) {
    for (index_t w = 0; w < words_; ++w) row(dst)[w] |= row(src)[w];
  }

 private:
  index_t words_;
  std::vector<std::uint64_t> bits_;
};

}  // namespace

std::vector<index_t> multitree_arcs(const LineGraph& lg) {
  const auto order = vertex_order(lg);  // checks lg
  require_memory("line_graph", Ancestors::bytes(lg.num_vertices),
                 fmt::format("multitree pruning (one bit per pair of its {} vertices)", lg.num_vertices));
  Ancestors anc(lg.num_vertices);
  std::vector<index_t> kept;
  for (index_t v : order) {
    for (const index_t* a = lg.in_arcs.begin(v); a != lg.in_arcs.end(v); ++a) {
      const index_t u = lg.arcs[*a].from;
      if (anc.intersect(u, v)) continue;  // some vertex already reaches v another way
      anc.merge_into(v, u);
      kept.push_back(*a);
    }
  }
  std::sort(kept.begin(), kept.end());
  return kept;
}

bool is_multitree(const LineGraph& lg, const std::vector<index_t>& arcs) {
  const auto order = vertex_order(lg);  // checks lg
  const index_t A = static_cast<index_t>(lg.arcs.size());
  std::vector<bool> given(A, false);
  for (std::size_t i = 0; i < arcs.size(); ++i) {
    require(arcs[i] >= 0 && arcs[i] < A && !given[arcs[i]], fmt::format("arcs[{}]", i),
            "expected an arc id in [0, {}) not given before, got {}", A, arcs[i]);
    given[arcs[i]] = true;
  }
  // Count paths from each source vertex s with a DP in topological order; more than one path to any
  // vertex means two paths join s to it.
  std::vector<std::vector<index_t>> out(lg.num_vertices);
  for (index_t a : arcs) out[lg.arcs[a].from].push_back(lg.arcs[a].to);
  std::vector<std::uint8_t> paths(lg.num_vertices);  // 0, 1 or 2 (= two or more)
  for (index_t s = 0; s < lg.num_vertices; ++s) {
    std::fill(paths.begin(), paths.end(), 0);
    paths[s] = 1;
    for (index_t v : order) {
      if (paths[v] == 0) continue;
      for (index_t w : out[v]) {
        paths[w] = static_cast<std::uint8_t>(std::min(2, paths[w] + paths[v]));
        if (paths[w] > 1) return false;
      }
    }
  }
  return true;
}

// Node, edge and arc ids are below kMaxCount (the Dag and line_graph check it), so they fit int32.
Flat flatten(const Dag& dag) {
  auto to32 = [](const std::vector<index_t>& v) { return std::vector<std::int32_t>(v.begin(), v.end()); };
  Flat f{to32(dag.in_edges().offsets), to32(dag.in_edges().items), to32(dag.out_edges().offsets),
         to32(dag.out_edges().items)};
  for (const auto& e : dag.edges()) {
    f.edge_src.push_back(static_cast<std::int32_t>(e.src));
    f.edge_dst.push_back(static_cast<std::int32_t>(e.dst));
  }
  for (const auto& a : line_graph(dag).arcs) {
    f.arc_from.push_back(static_cast<std::int32_t>(a.from));
    f.arc_to.push_back(static_cast<std::int32_t>(a.to));
    f.arc_node.push_back(static_cast<std::int32_t>(a.node));
  }
  const Csr& levels = dag.levels();
  f.level_offsets = to32(levels.offsets);
  f.level_nodes = to32(levels.items);
  return f;
}

Format parse_format(const std::string& name) {
  if (name == "dot") return Format::dot;
  if (name == "graphml") return Format::graphml;
  if (name == "edges") return Format::edges;
  throw Error(fmt::format("format: expected dot, graphml or edges, got {:?}", name));
}

namespace {

constexpr auto npos = std::string_view::npos;

// The position just past the first `end` at or after `from`, or npos.
std::size_t past(std::string_view text, std::string_view end, std::size_t from) {
  const std::size_t at = text.find(end, from);
  return at == npos ? npos : at + end.size();
}

// Bytes outside ASCII written as \xNN: Boost's messages quote the file, which need not be UTF-8, and
// a message must print and reach Python as text.
std::string ascii(std::string_view text) {
  std::string out;
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    out += byte < 0x80 ? std::string(1, c) : fmt::format("\\x{:02x}", byte);
  }
  return out;
}

// ---- edge lists ----

// A node id of an edge-list line: decimal digits, in [0, kMaxCount) so that the node count fits.
index_t node_id(std::string_view field, index_t number, std::string_view line) {
  index_t id = 0;
  const auto [end, error] = std::from_chars(field.data(), field.data() + field.size(), id);
  require(end == field.data() + field.size(), "edges", "line {}: expected two node ids \"u v\", got {:?}", number,
          line);
  require(error == std::errc() && id >= 0 && id < kMaxCount, "edges", "line {}: node id {} is outside [0, {})", number,
          field, kMaxCount);
  return id;
}

EdgeList read_edge_list(std::istream& in) {
  constexpr std::string_view blanks = " \t\r\v\f";
  EdgeList out;
  std::string line;
  for (index_t number = 1; std::getline(in, line); ++number) {
    const std::string_view content = std::string_view(line).substr(0, line.find('#'));
    std::vector<std::string_view> fields;
    for (std::size_t i = content.find_first_not_of(blanks); i != npos; i = content.find_first_not_of(blanks, i)) {
      const std::size_t end = std::min(content.find_first_of(blanks, i), content.size());
      fields.push_back(content.substr(i, end - i));
      i = end;
    }
    if (fields.empty()) continue;  // blank or comment
    require(fields.size() == 2, "edges", "line {}: expected two node ids \"u v\", got {:?}", number, line);
    const index_t u = node_id(fields[0], number, line), v = node_id(fields[1], number, line);
    out.edges.push_back({u, v});
    out.num_nodes = std::max({out.num_nodes, u + 1, v + 1});
  }
  require_graph_size("edges", static_cast<double>(out.num_nodes), "edges", static_cast<double>(out.edges.size()));
  for (index_t v = 0; v < out.num_nodes; ++v) out.node_names.push_back(std::to_string(v));
  return out;
}

// ---- nesting: Boost's parsers recurse once per level, so deep input would overflow the stack ----

// Past the DOT quoted string that starts at text[i] ("..." with backslash escaping any character).
std::size_t quoted_end(std::string_view text, std::size_t i) {
  for (++i; i < text.size(); ++i) {
    if (text[i] == '\\') ++i;
    else if (text[i] == '"') return i + 1;
  }
  return npos;
}

// Past the DOT HTML string <...> that starts at text[i], as Boost reads one: tags nest until the
// first one is closed, quotes in a tag and CDATA sections are taken whole, '!' or '?' in a tag is an
// error (npos, as for an unclosed string).
std::size_t html_end(std::string_view text, std::size_t i) {
  index_t open = 0;
  do {
    i = text.find('<', i);
    if (i == npos) return npos;
    if (text.substr(i).starts_with("<![CDATA[")) {
      i = past(text, "]]>", i + 9);
      if (i == npos) return npos;
      continue;
    }
    const bool closing = text.substr(i).starts_with("</");
    std::size_t j = i + 1;
    for (; j < text.size() && text[j] != '>'; ++j) {
      if (text[j] == '!' || text[j] == '?') return npos;
      if (text[j] == '\'' || text[j] == '"') j = text.find(text[j], j + 1);
      if (j == npos) return npos;
    }
    if (j >= text.size()) return npos;
    open += closing ? -1 : text[j - 1] == '/' ? 0 : 1;  // close, empty or open tag
    i = j + 1;
  } while (open > 0);
  return i;
}

// The deepest nesting of braces in DOT text as Boost's tokenizer (read_graphviz_new.cpp) sees them:
// not in quoted strings, HTML strings or comments (//, /* */, #: a '#' not starting a line is an
// error there). Where the tokenizer stops with an error the scan stops too, or counts on: Boost never
// reads further.
index_t dot_nesting(std::string_view text) {
  index_t depth = 0, deepest = 0;
  for (std::size_t i = 0; i < text.size();) {
    const std::string_view rest = text.substr(i);
    if (rest[0] == '{' || rest[0] == '}') {
      depth = rest[0] == '{' ? depth + 1 : std::max<index_t>(depth - 1, 0);
      deepest = std::max(deepest, depth);
      ++i;
    } else if (rest[0] == '"') i = quoted_end(text, i);
    else if (rest[0] == '<') i = html_end(text, i);
    else if (rest.starts_with("//") || rest[0] == '#') i = text.find_first_of("\n\r\f", i);
    else if (rest.starts_with("/*")) i = past(text, "*/", i + 2);
    else ++i;
  }
  return deepest;
}

// The deepest nesting of elements in XML text as rapidxml (Boost's GraphML reader parses with
// property_tree's copy) sees them: not in comments, CDATA, processing instructions or a DOCTYPE (whose
// [...] may hold '<' and '>'), and with quoted attribute values (which may hold '>') skipped.
index_t xml_nesting(std::string_view text) {
  index_t depth = 0, deepest = 0;
  for (std::size_t i = text.find('<'); i < text.size(); i = text.find('<', i)) {
    const std::string_view tag = text.substr(i);
    if (tag.starts_with("<!--")) {
      i = past(text, "-->", i + 4);
    } else if (tag.starts_with("<![CDATA[")) {
      i = past(text, "]]>", i + 9);
    } else if (tag.starts_with("<?")) {
      i = past(text, "?>", i + 2);
    } else if (tag.starts_with("<!DOCTYPE") && tag.size() > 9 && std::string_view(" \t\r\n").find(tag[9]) != npos) {
      index_t brackets = 0;
      for (i += 10; i < text.size() && (text[i] != '>' || brackets > 0); ++i)
        brackets += text[i] == '[' ? 1 : text[i] == ']' && brackets > 0 ? -1 : 0;
    } else if (tag.starts_with("<!")) {
      i = past(text, ">", i + 2);
    } else if (tag.starts_with("</")) {
      depth = std::max<index_t>(depth - 1, 0);
      i += 2;
    } else {
      std::size_t j = i + 1;
      while (j < text.size() && text[j] != '>')
        j = text[j] == '"' || text[j] == '\'' ? past(text, text.substr(j, 1), j + 1) : j + 1;
      deepest = std::max(deepest, depth + 1);
      if (j < text.size() && text[j - 1] != '/') ++depth;  // not an empty element <.../>
      i = j;
    }
  }
  return deepest;
}

// ---- DOT and GraphML through Boost ----

// Boost's GraphML reader adds a node for an id that only an edge names and merges nodes that share
// an id; both would hide a broken file, so the ids are checked first, in the graphs it reads: the
// first <graph> in <graphml> and, recursively, the <graph> elements directly inside it.
void check_graphml_ids(const std::string& text) {
  namespace pt = boost::property_tree;
  pt::ptree tree;
  std::istringstream in(text);
  pt::read_xml(in, tree, pt::xml_parser::no_comments | pt::xml_parser::trim_whitespace);
  std::vector<const pt::ptree*> graphs;
  for (const auto& [name, child] : tree.get_child("graphml")) {
    if (name == "graph") {
      graphs.push_back(&child);
      break;
    }
  }
  for (std::size_t g = 0; g < graphs.size(); ++g)
    for (const auto& [name, child] : *graphs[g])
      if (name == "graph") graphs.push_back(&child);
  std::set<std::string> declared;
  for (const pt::ptree* g : graphs)
    for (const auto& [name, node] : *g)
      if (name == "node") {
        const auto id = node.get_optional<std::string>("<xmlattr>.id");
        require(id.has_value(), "graph", "a GraphML <node> has no id");
        require(declared.insert(*id).second, "graph", "the GraphML node id {:?} is declared twice", *id);
      }
  index_t number = 0;
  for (const pt::ptree* g : graphs)
    for (const auto& [name, edge] : *g)
      if (name == "edge") {
        for (const char* end : {"source", "target"}) {
          const auto id = edge.get_optional<std::string>(fmt::format("<xmlattr>.{}", end));
          require(id.has_value(), "graph", "GraphML edge {} has no {}", number, end);
          require(declared.count(*id) == 1, "graph", "GraphML edge {} has {} {:?}, which no <node> declares", number,
                  end, *id);
        }
        ++number;
      }
}

// Boost lists edges by source node; an integer "id" on every edge (as write_dot writes them)
// restores the file's numbering.
std::vector<Edge> order_by_id(const std::vector<Edge>& edges, const std::vector<std::string>& ids,
                              const std::vector<std::string>& names) {
  if (std::all_of(ids.begin(), ids.end(), [](const std::string& id) { return id.empty(); })) return edges;
  std::vector<std::pair<index_t, Edge>> numbered;
  for (std::size_t i = 0; i < edges.size(); ++i) {
    const std::string& id = ids[i];
    index_t number = -1;
    const auto [end, error] = std::from_chars(id.data(), id.data() + id.size(), number);
    require(!id.empty() && error == std::errc() && end == id.data() + id.size() && number >= 0, "graph",
            "edge {:?} -> {:?} has id {:?}: expected an integer >= 0 on every edge or on none (the edge numbering)",
            names[edges[i].src], names[edges[i].dst], id);
    numbered.emplace_back(number, edges[i]);
  }
  std::stable_sort(numbered.begin(), numbered.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<Edge> out;
  for (const auto& [number, e] : numbered) out.push_back(e);
  return out;
}

template <class Directedness>
EdgeList read_with_boost(const std::string& text, Format format) {
  using G = boost::adjacency_list<boost::vecS, boost::vecS, Directedness,
                                  boost::property<boost::vertex_name_t, std::string>,
                                  boost::property<boost::edge_name_t, std::string>>;
  G g;
  boost::dynamic_properties dp(boost::ignore_other_properties);
  dp.property("node_id", boost::get(boost::vertex_name, g));
  dp.property("id", boost::get(boost::edge_name, g));
  std::istringstream in(text);
  if (format == Format::dot) {
    boost::read_graphviz(in, g, dp, "node_id");
  } else {
    boost::read_graphml(in, g, dp);
  }
  EdgeList out;
  out.num_nodes = static_cast<index_t>(boost::num_vertices(g));
  for (index_t v = 0; v < out.num_nodes; ++v) {
    const std::string& name = boost::get(boost::vertex_name, g, v);
    out.node_names.push_back(name.empty() ? fmt::format("n{}", v) : name);
  }
  std::vector<Edge> edges;
  std::vector<std::string> ids;
  for (auto [it, end] = boost::edges(g); it != end; ++it) {
    edges.push_back({static_cast<index_t>(boost::source(*it, g)), static_cast<index_t>(boost::target(*it, g))});
    ids.push_back(boost::get(boost::edge_name, g, *it));
  }
  out.edges = order_by_id(edges, ids, out.node_names);
  return out;
}

// Boost's readers must be told whether the graph is directed and throw undirected_graph_error for an
// undirected one, which is then read again as such (outside the handler, so that errors of the
// second reading are handled like any other).
EdgeList read_dot_or_graphml(const std::string& text, Format format) {
  try {
    return read_with_boost<boost::directedS>(text, format);
  } catch (const boost::undirected_graph_error&) {
  }
  return read_with_boost<boost::undirectedS>(text, format);
}

}  // namespace

EdgeList read_graph(std::istream& in, Format format) {
  if (format == Format::edges) return read_edge_list(in);
  const std::string text(std::istreambuf_iterator<char>(in), {});
  const bool dot = format == Format::dot;
  const index_t depth = dot ? dot_nesting(text) : xml_nesting(text);
  require(depth <= kMaxNesting, "graph",
          "the {} input nests {} {} deep, more than the {} levels its parser may recurse through", dot ? "DOT" : "GraphML",
          dot ? "braces" : "elements", depth, kMaxNesting);
  try {
    if (format == Format::graphml) check_graphml_ids(text);
    return read_dot_or_graphml(text, format);
  } catch (const Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(fmt::format("graph: cannot parse the {} input: {}", dot ? "DOT" : "GraphML", ascii(e.what())));
  }
}

EdgeList read_graph_file(const std::string& path, Format format) {
  std::error_code error;
  require(!std::filesystem::is_directory(path, error), "graph", "{:?} is a directory, expected a file", path);
  std::ifstream in(path);
  require(in.good(), "graph", "cannot open {:?}", path);
  return read_graph(in, format);
}

void write_dot(std::ostream& out, const Dag& dag) {
  out << "digraph {\n";
  for (index_t n = 0; n < dag.num_nodes(); ++n) out << "  " << n << ";\n";
  for (index_t i = 0; i < dag.num_edges(); ++i)
    out << "  " << dag.edges()[i].src << " -> " << dag.edges()[i].dst << " [id=" << i << "];\n";
  out << "}\n";
}

}  // namespace flashlstm::graph
