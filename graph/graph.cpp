// Graph preparation for pLSTM on Boost.Graph (see graph.hpp): construction with cycle detection by
// depth-first search (its back edge names an edge on a cycle), topological sort, dagify by a node
// order, the line graph, levels, multitree pruning and the readers/writers.
#include "graph/graph.hpp"

#include "core/error.hpp"

#include <boost/graph/adjacency_list.hpp>
#include <boost/graph/breadth_first_search.hpp>
#include <boost/graph/depth_first_search.hpp>
#include <boost/graph/graphml.hpp>
#include <boost/graph/graphviz.hpp>
#include <boost/graph/topological_sort.hpp>

#include <algorithm>
#include <fstream>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>

namespace flashlstm::graph {
namespace {

using BoostDag = boost::adjacency_list<boost::vecS, boost::vecS, boost::bidirectionalS, boost::no_property,
                                       boost::property<boost::edge_index_t, index_t>>;

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
  require(num_nodes >= 0, "num_nodes", "expected >= 0, got {}", num_nodes);
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
  require(num_nodes >= 0, "num_nodes", "expected >= 0, got {}", num_nodes);
  require(mean_in_degree >= 0, "mean_in_degree", "expected >= 0, got {}", mean_in_degree);
  require(window >= 0, "window", "expected >= 0, got {}", window);
  std::mt19937_64 rng(seed);
  std::vector<index_t> id(num_nodes);
  std::iota(id.begin(), id.end(), 0);
  std::shuffle(id.begin(), id.end(), rng);
  std::poisson_distribution<index_t> degree(mean_in_degree);
  std::vector<Edge> edges;
  std::vector<index_t> picked;
  for (index_t v = 1; v < num_nodes; ++v) {
    const index_t lo = window > 0 ? std::max<index_t>(0, v - window) : 0;
    const index_t k = std::min(degree(rng), v - lo);
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
  throw Error(fmt::format("order: expected given, bfs or random, got '{}'", name));
}

Dag dagify(index_t num_nodes, const std::vector<Edge>& undirected, const NodeOrder& order) {
  require(num_nodes >= 0, "num_nodes", "expected >= 0, got {}", num_nodes);
  std::vector<index_t> rank(num_nodes);
  std::iota(rank.begin(), rank.end(), 0);
  switch (order.kind) {
    case NodeOrder::given:
      if (!order.permutation.empty()) {
        require(static_cast<index_t>(order.permutation.size()) == num_nodes, "order.permutation",
                "expected {} ranks, got {}", num_nodes, order.permutation.size());
        auto sorted = order.permutation;
        std::sort(sorted.begin(), sorted.end());
        require(std::equal(sorted.begin(), sorted.end(), rank.begin()), "order.permutation",
                "expected a permutation of 0..{}", num_nodes - 1);
        rank = order.permutation;
      }
      break;
    case NodeOrder::bfs: {
      require(num_nodes == 0 || (order.root >= 0 && order.root < num_nodes), "order.root",
              "expected a node in [0, {}), got {}", num_nodes, order.root);
      boost::adjacency_list<boost::vecS, boost::vecS, boost::undirectedS> g(num_nodes);
      for (const auto& e : undirected) {
        require(e.src >= 0 && e.src < num_nodes && e.dst >= 0 && e.dst < num_nodes, "edges",
                "edge {} -- {} names a node outside [0, {})", e.src, e.dst, num_nodes);
        boost::add_edge(e.src, e.dst, g);
      }
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
  for (std::size_t i = 0; i < undirected.size(); ++i) {
    const auto [u, v] = undirected[i];
    require(u >= 0 && u < num_nodes && v >= 0 && v < num_nodes, fmt::format("edges[{}]", i),
            "edge {} -- {} names a node outside [0, {})", u, v, num_nodes);
    require(u != v, fmt::format("edges[{}]", i), "a self-loop at node {} cannot be oriented", u);
    directed.push_back(rank[u] < rank[v] ? Edge{u, v} : Edge{v, u});
  }
  return Dag(num_nodes, std::move(directed));
}

Dag reverse(const Dag& dag) {
  std::vector<Edge> flipped;
  for (const auto& e : dag.edges()) flipped.push_back({e.dst, e.src});
  return Dag(dag.num_nodes(), std::move(flipped));
}

LineGraph line_graph(const Dag& dag) {
  LineGraph lg;
  lg.num_vertices = dag.num_edges();
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

std::vector<index_t> node_levels(const Dag& dag) {
  std::vector<index_t> level(dag.num_nodes(), 0);
  for (index_t n : dag.topological_order())
    for (const index_t* e = dag.out_edges().begin(n); e != dag.out_edges().end(n); ++e)
      level[dag.edges()[*e].dst] = std::max(level[dag.edges()[*e].dst], level[n] + 1);
  return level;
}

std::vector<index_t> vertex_levels(const LineGraph& lg) {
  // The line graph of a DAG is a DAG; a vertex's level is one more than its deepest predecessor.
  // Kahn's algorithm visits vertices after all their predecessors.
  std::vector<index_t> level(lg.num_vertices, 0), pending(lg.num_vertices), ready;
  for (index_t v = 0; v < lg.num_vertices; ++v) {
    pending[v] = lg.in_arcs.size(v);
    if (pending[v] == 0) ready.push_back(v);
  }
  while (!ready.empty()) {
    const index_t v = ready.back();
    ready.pop_back();
    for (const index_t* a = lg.out_arcs.begin(v); a != lg.out_arcs.end(v); ++a) {
      const index_t w = lg.arcs[*a].to;
      level[w] = std::max(level[w], level[v] + 1);
      if (--pending[w] == 0) ready.push_back(w);
    }
  }
  return level;
}

Csr level_schedule(const std::vector<index_t>& levels) {
  const index_t count = levels.empty() ? 0 : *std::max_element(levels.begin(), levels.end()) + 1;
  std::vector<std::pair<index_t, index_t>> pairs;
  for (index_t v = 0; v < static_cast<index_t>(levels.size()); ++v) pairs.emplace_back(levels[v], v);
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
  Ancestors anc(lg.num_vertices);
  std::vector<index_t> kept;
  for (index_t v : vertex_order(lg)) {
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
  // Count paths from each source vertex s with a DP in topological order; more than one path to any
  // vertex means two paths join s to it.
  std::vector<std::vector<index_t>> out(lg.num_vertices);
  for (index_t a : arcs) out[lg.arcs[a].from].push_back(lg.arcs[a].to);
  const auto order = vertex_order(lg);
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

Flat flatten(const Dag& dag) {
  auto to32 = [](const std::vector<index_t>& v) { return std::vector<std::int32_t>(v.begin(), v.end()); };
  require(dag.num_edges() < (index_t(1) << 31) && dag.num_nodes() < (index_t(1) << 31), "dag",
          "too large for 32-bit indices");
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
  throw Error(fmt::format("format: expected dot, graphml or edges, got '{}'", name));
}

namespace {

template <class Directedness>
EdgeList read_with_boost(std::istream& in, Format format) {
  using G = boost::adjacency_list<boost::vecS, boost::vecS, Directedness,
                                  boost::property<boost::vertex_name_t, std::string>,
                                  boost::property<boost::edge_name_t, std::string>>;
  G g;
  boost::dynamic_properties dp(boost::ignore_other_properties);
  dp.property("node_id", boost::get(boost::vertex_name, g));
  dp.property("id", boost::get(boost::edge_name, g));
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
  // Boost lists edges by source node; an integer edge attribute "id" (as write_dot writes) restores
  // the numbering.
  std::vector<std::pair<index_t, Edge>> numbered;
  for (auto [it, end] = boost::edges(g); it != end; ++it) {
    const std::string& id = boost::get(boost::edge_name, g, *it);
    const Edge e{static_cast<index_t>(boost::source(*it, g)), static_cast<index_t>(boost::target(*it, g))};
    numbered.emplace_back(id.empty() ? static_cast<index_t>(numbered.size()) : std::stoll(id), e);
  }
  std::stable_sort(numbered.begin(), numbered.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& [id, e] : numbered) out.edges.push_back(e);
  return out;
}

}  // namespace

EdgeList read_graph(std::istream& in, Format format) {
  if (format == Format::edges) {
    EdgeList out;
    std::string line;
    for (index_t number = 1; std::getline(in, line); ++number) {
      line = line.substr(0, line.find('#'));
      std::istringstream fields(line);
      index_t u, v;
      if (!(fields >> u)) continue;
      require(static_cast<bool>(fields >> v) && u >= 0 && v >= 0, fmt::format("line {}", number),
              "expected two node numbers >= 0, got '{}'", line);
      out.edges.push_back({u, v});
      out.num_nodes = std::max({out.num_nodes, u + 1, v + 1});
    }
    for (index_t v = 0; v < out.num_nodes; ++v) out.node_names.push_back(std::to_string(v));
    return out;
  }
  const std::string text(std::istreambuf_iterator<char>(in), {});
  try {
    std::istringstream directed(text);
    return read_with_boost<boost::directedS>(directed, format);
  } catch (const boost::undirected_graph_error&) {
    std::istringstream undirected(text);
    return read_with_boost<boost::undirectedS>(undirected, format);
  } catch (const std::exception& e) {
    throw Error(fmt::format("graph: cannot parse the {} input: {}", format == Format::dot ? "DOT" : "GraphML",
                            e.what()));
  }
}

EdgeList read_graph_file(const std::string& path, Format format) {
  std::ifstream in(path);
  require(in.good(), "graph", "cannot open '{}'", path);
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
