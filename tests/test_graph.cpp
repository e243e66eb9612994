// graph/: construction and cycle errors, dagify, reverse, line graph, levels, multitree pruning,
// flattening and the readers/writers; bad input of every kind (sizes, indices, malformed and deeply
// nested files, inputs the fuzz targets in fuzz/ found) gives an Error naming the problem.
#include "core/random.hpp"
#include "graph/graph.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <limits>
#include <numeric>
#include <set>
#include <utility>
#include <sstream>

using namespace flashlstm;
using namespace flashlstm::graph;
using Catch::Contains;

namespace {

bool respects_order(const Dag& dag, const std::vector<index_t>& order) {
  std::vector<index_t> position(dag.num_nodes());
  for (index_t i = 0; i < dag.num_nodes(); ++i) position[order[i]] = i;
  for (const auto& e : dag.edges())
    if (position[e.src] >= position[e.dst]) return false;
  return true;
}

}  // namespace

TEST_CASE("a DAG is built from an edge list; a cycle or a bad node is an error", "[graph]") {
  const Dag dag(4, {{0, 1}, {0, 2}, {1, 3}, {2, 3}});
  CHECK(dag.num_nodes() == 4);
  CHECK(dag.num_edges() == 4);
  CHECK(dag.in_edges().size(3) == 2);
  CHECK(dag.out_edges().size(0) == 2);
  CHECK(respects_order(dag, dag.topological_order()));
  CHECK_THROWS_WITH(Dag(3, {{0, 1}, {1, 2}, {2, 0}}), Contains("edges: the graph has a cycle: edge"));
  CHECK_THROWS_WITH(Dag(3, {{0, 1}, {1, 1}}), Contains("cycle: edge 1 (1 -> 1)"));
  CHECK_THROWS_WITH(Dag(3, {{0, 1}, {1, 5}}), "edges[1]: edge 1 -> 5 names a node outside [0, 3)");
  CHECK_THROWS_WITH(Dag(3, {{-1, 1}}), Contains("edges[0]"));
}

TEST_CASE("dagify orients every edge along the node order", "[graph]") {
  Rng rng(3);
  std::vector<Edge> undirected;
  for (index_t i = 0; i < 300; ++i) {
    const index_t u = rng.integer(0, 99), v = rng.integer(0, 99);
    if (u != v) undirected.push_back({u, v});
  }
  for (const auto& order : {NodeOrder{NodeOrder::given}, NodeOrder{NodeOrder::bfs, {}, 7},
                            NodeOrder{NodeOrder::random, {}, 0, 42}}) {
    const Dag dag = dagify(100, undirected, order);
    REQUIRE(dag.num_edges() == static_cast<index_t>(undirected.size()));
    for (std::size_t i = 0; i < undirected.size(); ++i) {
      const auto e = dag.edges()[i], u = undirected[i];
      CHECK(((e.src == u.src && e.dst == u.dst) || (e.src == u.dst && e.dst == u.src)));
    }
    if (order.kind == NodeOrder::bfs) CHECK(dag.in_edges().size(7) == 0);  // the root is a source
  }
  const Dag a = dagify(100, undirected, {NodeOrder::random, {}, 0, 1}), b = dagify(100, undirected, {NodeOrder::random, {}, 0, 1});
  CHECK(a.edges() == b.edges());
  CHECK_THROWS_WITH(dagify(3, {{0, 0}}, {}), Contains("self-loop"));
  CHECK_THROWS_WITH(dagify(3, {{0, 1}}, {NodeOrder::given, {0, 0, 1}}), Contains("order.permutation"));
  CHECK_THROWS_WITH(dagify(3, {{0, 1}}, {NodeOrder::bfs, {}, 3}), Contains("order.root"));
  CHECK_THROWS_WITH(NodeOrder::parse("dfs"), Contains("order: expected given, bfs or random"));
}

TEST_CASE("reverse flips every edge and keeps the ids", "[graph]") {
  const Dag dag = random_dag(60, 3, 5), rev = reverse(dag);
  for (index_t i = 0; i < dag.num_edges(); ++i) CHECK(rev.edges()[i] == Edge{dag.edges()[i].dst, dag.edges()[i].src});
  CHECK(respects_order(rev, rev.topological_order()));
}

TEST_CASE("line graph arcs and level schedules", "[graph]") {
  const Dag dag = random_dag(200, 4, 9);
  const LineGraph lg = line_graph(dag);
  index_t expected_arcs = 0;
  for (index_t n = 0; n < dag.num_nodes(); ++n) expected_arcs += dag.in_edges().size(n) * dag.out_edges().size(n);
  CHECK(static_cast<index_t>(lg.arcs.size()) == expected_arcs);
  for (const auto& a : lg.arcs) {
    CHECK(dag.edges()[a.from].dst == a.node);
    CHECK(dag.edges()[a.to].src == a.node);
  }
  const auto node_level = node_levels(dag);
  for (const auto& e : dag.edges()) CHECK(node_level[e.dst] > node_level[e.src]);
  const auto vertex_level = vertex_levels(lg);
  for (const auto& a : lg.arcs) CHECK(vertex_level[a.to] > vertex_level[a.from]);
  const Csr schedule = level_schedule(node_level);
  index_t total = 0;
  for (index_t l = 0; l < schedule.rows(); ++l) {
    total += schedule.size(l);
    for (const index_t* n = schedule.begin(l); n != schedule.end(l); ++n) CHECK(node_level[*n] == l);
  }
  CHECK(total == dag.num_nodes());
  CHECK(dag.levels().offsets == schedule.offsets);  // the schedule the Dag keeps for the levels form
  CHECK(dag.levels().items == schedule.items);
}

TEST_CASE("multitree pruning leaves at most one path and every vertex with an input keeps one", "[graph]") {
  // A diamond through node 1: edges 0 (0->1), then 1->2, 1->3, 2->4, 3->4, 4->5.
  const Dag diamond(6, {{0, 1}, {1, 2}, {1, 3}, {2, 4}, {3, 4}, {4, 5}});
  const LineGraph lg = line_graph(diamond);
  std::vector<index_t> all(lg.arcs.size());
  std::iota(all.begin(), all.end(), 0);
  CHECK_FALSE(is_multitree(lg, all));
  for (std::uint64_t seed : {1, 2, 3}) {
    const Dag dag = random_dag(80, 3, seed);
    const LineGraph g = line_graph(dag);
    const auto kept = multitree_arcs(g);
    CHECK(is_multitree(g, kept));
    std::set<index_t> has_input;
    for (index_t a : kept) has_input.insert(g.arcs[a].to);
    for (index_t v = 0; v < g.num_vertices; ++v)
      if (g.in_arcs.size(v) > 0) CHECK(has_input.count(v) == 1);
  }
}

TEST_CASE("level_major renumbers an isomorphic DAG with each level's nodes and out-edges contiguous", "[graph]") {
  const std::vector<Dag> dags{random_dag(300, 2.5, 21), random_dag(200, 1, 22, 20), reverse(random_dag(150, 3, 23)),
                              Dag(5, {{4, 3}, {3, 2}, {2, 1}, {1, 0}}), Dag(3, {})};
  for (const Dag& dag : dags) {
    const Renumbered r = level_major(dag);
    const index_t N = dag.num_nodes(), E = dag.num_edges();
    REQUIRE(r.dag.num_nodes() == N);
    REQUIRE(r.dag.num_edges() == E);
    // Both maps are permutations.
    for (const auto* map : {&r.node_id, &r.edge_id}) {
      std::vector<index_t> sorted = *map;
      std::sort(sorted.begin(), sorted.end());
      std::vector<index_t> identity(sorted.size());
      std::iota(identity.begin(), identity.end(), 0);
      CHECK(sorted == identity);
    }
    // Isomorphic: edge e becomes edge edge_id[e] with both ends renamed.
    for (index_t e = 0; e < E; ++e)
      CHECK(r.dag.edges()[r.edge_id[e]] == Edge{r.node_id[dag.edges()[e].src], r.node_id[dag.edges()[e].dst]});
    // Every node keeps its level, and levels never decrease along the new ids: level l holds the
    // consecutive ids offsets[l] .. offsets[l + 1] - 1, in the old order within the level.
    const auto old_level = node_levels(dag), new_level = node_levels(r.dag);
    for (index_t n = 0; n < N; ++n) CHECK(new_level[r.node_id[n]] == old_level[n]);
    CHECK(std::is_sorted(new_level.begin(), new_level.end()));
    std::vector<index_t> identity(N);
    std::iota(identity.begin(), identity.end(), 0);
    CHECK(r.dag.levels().items == identity);
    CHECK(r.dag.levels().offsets == dag.levels().offsets);
    // Edges ordered by (new source, new destination): a level's out-edges are one contiguous run.
    for (index_t e = 1; e < E; ++e) {
      const Edge a = r.dag.edges()[e - 1], b = r.dag.edges()[e];
      CHECK((a.src < b.src || (a.src == b.src && a.dst <= b.dst)));
    }
    // Already level-major: renumbering again changes nothing.
    const Renumbered again = level_major(r.dag);
    CHECK(again.node_id == identity);
    CHECK(again.dag.edges() == r.dag.edges());
  }
}

TEST_CASE("flatten gives consistent index arrays", "[graph]") {
  const Dag dag = random_dag(50, 3, 11);
  const Flat f = flatten(dag);
  CHECK(f.in_offsets.size() == 51);
  CHECK(f.in_offsets.back() == dag.num_edges());
  for (index_t n = 0; n < 50; ++n)
    for (auto i = f.in_offsets[n]; i < f.in_offsets[n + 1]; ++i) CHECK(f.edge_dst[f.in_edges[i]] == n);
  CHECK(f.arc_from.size() == line_graph(dag).arcs.size());
  CHECK(f.level_offsets.back() == 50);
}

TEST_CASE("graphs read from DOT, GraphML and edge lists; DOT written back reads the same", "[graph]") {
  std::istringstream dot("digraph { a -> b; b -> c; a -> c; }");
  const EdgeList d = read_graph(dot, Format::dot);
  CHECK(d.num_nodes == 3);
  CHECK(d.edges.size() == 3);
  CHECK(d.node_names[0] == "a");
  std::istringstream undirected_dot("graph { x -- y; y -- z; }");
  CHECK(read_graph(undirected_dot, Format::dot).edges.size() == 2);
  std::istringstream graphml(R"(<?xml version="1.0" encoding="UTF-8"?>
<graphml xmlns="http://graphml.graphdrawing.org/xmlns">
  <graph id="G" edgedefault="directed">
    <node id="n0"/><node id="n1"/><node id="n2"/>
    <edge source="n0" target="n1"/><edge source="n1" target="n2"/>
  </graph>
</graphml>)");
  const EdgeList g = read_graph(graphml, Format::graphml);
  CHECK(g.num_nodes == 3);
  CHECK(g.edges == std::vector<Edge>{{0, 1}, {1, 2}});
  std::istringstream edges("# a chain\n0 1\n1 2\n\n2 3  # last\n");
  const EdgeList e = read_graph(edges, Format::edges);
  CHECK(e.num_nodes == 4);
  CHECK(e.edges.size() == 3);
  std::istringstream bad("0 x\n");
  CHECK_THROWS_WITH(read_graph(bad, Format::edges), "edges: line 1: expected two node ids \"u v\", got \"0 x\"");
  std::istringstream broken("digraph { a -> ; }");
  CHECK_THROWS_WITH(read_graph(broken, Format::dot), Contains("graph: cannot parse the DOT input"));
  CHECK_THROWS_WITH(parse_format("gml"), Contains("format: expected dot, graphml or edges"));

  // Numbering as documented in graph.hpp: DOT nodes sorted by name as strings (not in order of
  // appearance), edges by source node; GraphML nodes in order of appearance.
  std::istringstream named("digraph { n2 -> n10; zeta -> n2; n1; b -> a; }");
  const EdgeList nd = read_graph(named, Format::dot);
  CHECK(nd.node_names == std::vector<std::string>{"a", "b", "n1", "n10", "n2", "zeta"});
  CHECK(nd.edges == std::vector<Edge>{{1, 0}, {4, 3}, {5, 4}});
  std::istringstream unsorted_graphml(R"(<?xml version="1.0" encoding="UTF-8"?>
<graphml xmlns="http://graphml.graphdrawing.org/xmlns">
  <graph id="G" edgedefault="directed">
    <node id="z"/><node id="a"/><node id="m"/>
    <edge source="m" target="a"/><edge source="z" target="m"/>
  </graph>
</graphml>)");
  const EdgeList ug = read_graph(unsorted_graphml, Format::graphml);
  CHECK(ug.edges == std::vector<Edge>{{0, 2}, {2, 1}});
  CHECK(ug.node_names == std::vector<std::string>{"n0", "n1", "n2"});  // Boost does not return GraphML ids

  const Dag dag = random_dag(30, 2, 13);
  std::stringstream written;
  write_dot(written, dag);
  const EdgeList back = read_graph(written, Format::dot);
  REQUIRE(back.num_nodes == dag.num_nodes());
  for (index_t i = 0; i < dag.num_edges(); ++i) {
    CHECK(back.node_names[back.edges[i].src] == std::to_string(dag.edges()[i].src));
    CHECK(back.node_names[back.edges[i].dst] == std::to_string(dag.edges()[i].dst));
  }
}

namespace {

EdgeList read(const std::string& text, Format format) {
  std::istringstream in(text);
  return read_graph(in, format);
}

std::string repeat(const std::string& piece, index_t times) {
  std::string out;
  for (index_t i = 0; i < times; ++i) out += piece;
  return out;
}

std::string graphml(const std::string& body, const std::string& edgedefault = "directed") {
  return R"(<?xml version="1.0" encoding="UTF-8"?><graphml xmlns="http://graphml.graphdrawing.org/xmlns">)"
         R"(<graph id="G" edgedefault=")" + edgedefault + "\">" + body + "</graph></graphml>";
}

}  // namespace

TEST_CASE("a malformed undirected DOT or GraphML file is an Error like a directed one", "[graph][errors]") {
  // Boost reads undirected graphs on a second attempt; its errors there were not turned into Error.
  CHECK_THROWS_WITH(read("graph { a -> b }\n", Format::dot),
                    Contains("graph: cannot parse the DOT input: Using -> in undirected graph"));
  CHECK_THROWS_AS(read("graph { a -- }\n", Format::dot), Error);
  CHECK_THROWS_AS(read("graph { a -- b; } }\n", Format::dot), Error);
  CHECK_THROWS_AS(read(graphml(R"(<node id="a"/><edge source="a"/>)", "undirected"), Format::graphml), Error);
  CHECK_THROWS_WITH(read(graphml(R"(<node id="a"/><node id="b"/><edge source="a" target="b"/>)"
                                 R"(<edge source="b" target="a" directed="true"/>)",
                                 "undirected"),
                         Format::graphml),
                    Contains("graph: cannot parse the GraphML input"));
  CHECK(read(graphml(R"(<node id="a"/><node id="b"/><edge source="a" target="b"/>)", "undirected"), Format::graphml)
            .edges == std::vector<Edge>{{0, 1}});
  // Edge ids: integers >= 0 on every edge or on none.
  CHECK_THROWS_WITH(read("graph { a -- b [id=x] }\n", Format::dot),
                    R"(graph: edge "a" -> "b" has id "x": expected an integer >= 0 on every edge or on none (the edge numbering))");
  CHECK_THROWS_WITH(read("digraph { a -> b [id=1]; b -> c; }", Format::dot), Contains(R"(edge "b" -> "c" has id "")"));
  CHECK_THROWS_WITH(read("digraph { a -> b [id=99999999999999999999]; }", Format::dot), Contains("has id"));
  CHECK_THROWS_WITH(read("digraph { a -> b [id=-1]; }", Format::dot), Contains("has id \"-1\""));
  CHECK(read("digraph { b -> c [id=0]; a -> b [id=1]; }", Format::dot).edges == std::vector<Edge>{{1, 2}, {0, 1}});
  CHECK_THROWS_WITH(read("", Format::graphml), Contains("graph: cannot parse the GraphML input"));
  CHECK_THROWS_WITH(read("<graphml><graph><node/></graph></graphml>", Format::graphml),
                    "graph: a GraphML <node> has no id");
}

TEST_CASE("deeply nested DOT or GraphML is refused before Boost's recursive parsers see it", "[graph][errors]") {
  CHECK_THROWS_WITH(read("digraph {" + repeat("subgraph {", 8600) + repeat("}", 8601), Format::dot),
                    "graph: the DOT input nests braces 8601 deep, more than the 200 levels its parser may recurse through");
  CHECK_THROWS_WITH(read("digraph { a -> " + repeat("{", 300) + " b " + repeat("}", 300) + " }", Format::dot),
                    Contains("nests braces 301 deep"));
  CHECK_THROWS_WITH(read(graphml(repeat("<node id=\"a\">", 21000) + repeat("</node>", 21000)), Format::graphml),
                    "graph: the GraphML input nests elements 21002 deep, more than the 200 levels its parser may recurse "
                    "through");
  // At the limit it reads; braces and tags in strings and comments do not count.
  const std::string at_limit = "digraph {" + repeat("subgraph {", kMaxNesting - 1) + "a" + repeat("}", kMaxNesting);
  CHECK(read(at_limit, Format::dot).num_nodes == 1);
  const std::string quoted = "digraph { \"" + repeat("{", 300) + "\" -> b [label=<b>" + repeat("{", 300) +
                             "</b>]; /* " + repeat("{", 300) + " */ // " + repeat("{", 300) + "\n# " +
                             repeat("{", 300) + "\n}";
  CHECK(read(quoted, Format::dot).num_nodes == 2);
  const std::string xml_quoted = graphml("<!-- " + repeat("<a>", 300) + " --><![CDATA[" + repeat("<a>", 300) + "]]>" +
                                         R"(<node id="a"><desc>)" + repeat("&lt;a&gt;", 300) + "</desc></node>");
  CHECK(read(xml_quoted, Format::graphml).num_nodes == 1);
  // A closing tag hidden in a DOCTYPE or a quote does not lower the count.
  CHECK_THROWS_WITH(read("<graphml>" + repeat("<a>", 150) + "<!DOCTYPE x [" + repeat("</a>", 150) + "]>" +
                             repeat("<a title=\"</a>\">", 150),
                         Format::graphml),
                    Contains("nests elements 301 deep"));
  CHECK_THROWS_WITH(read("digraph {" + repeat("{", 150) + "\"" + repeat("}", 150) + "\"" + repeat("{", 150),
                         Format::dot),
                    Contains("nests braces 301 deep"));
}

TEST_CASE("sizes that cannot fit are refused before anything is allocated", "[graph][errors]") {
  // An edge list's node count is its largest id + 1: a 13-byte file asked for 2^32 nodes.
  CHECK_THROWS_WITH(read("0 4294967296", Format::edges), "edges: line 1: node id 4294967296 is outside [0, 2147483647)");
  CHECK_THROWS_WITH(read("0 2147483647\n", Format::edges), Contains("node id 2147483647 is outside"));
  CHECK_THROWS_WITH(Dag(kMaxCount + 1, {}), "num_nodes: expected a number of nodes in [0, 2147483647], got 2147483648");
  CHECK_THROWS_WITH(Dag(-1, {}), Contains("num_nodes: expected a number of nodes in [0, 2147483647], got -1"));
  CHECK_THROWS_WITH(dagify(-2, {}, {}), Contains("num_nodes: expected a number of nodes"));
  // A hub with 50,000 edges in and 50,000 out has 2.5e9 line-graph arcs.
  std::vector<Edge> hub;
  for (index_t i = 0; i < 50000; ++i) hub.push_back({i, 50000});
  for (index_t i = 0; i < 50000; ++i) hub.push_back({50000, 50001 + i});
  const Dag star(100001, hub);
  CHECK_THROWS_WITH(line_graph(star), "dag: its line graph would have 2500000000 arcs (the sum over nodes of in-degree x "
                                      "out-degree), more than 2147483647");
  CHECK_THROWS_WITH(flatten(star), Contains("2500000000 arcs"));
  // random_dag: a finite mean in-degree >= 0, and an expected edge count that fits.
  for (const double bad : {std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN(), -1.0, 1e300})
    CHECK_THROWS_WITH(random_dag(10, bad, 0), Contains("mean_in_degree: expected a finite number in [0, 2147483647]"));
  CHECK_THROWS_WITH(random_dag(100000, 100000, 0), "mean_in_degree: expected at most 2147483647 edges, got 10000000000");
  CHECK_THROWS_WITH(random_dag(-1, 1, 0), Contains("num_nodes"));
  CHECK_THROWS_WITH(random_dag(10, 1, 0, -1), "window: expected >= 0, got -1");
  CHECK(random_dag(10, 0, 0).num_edges() == 0);
  CHECK(random_dag(0, 3, 0).num_nodes() == 0);
}

TEST_CASE("every index argument is checked and named", "[graph][errors]") {
  CHECK_THROWS_WITH(level_schedule({0, -3, 1}), "levels[1]: expected a level in [0, 3), got -3");
  CHECK_THROWS_WITH(level_schedule({0, 1 << 30}), "levels[1]: expected a level in [0, 2), got 1073741824");
  CHECK(level_schedule({}).rows() == 0);
  const Dag diamond(6, {{0, 1}, {1, 2}, {1, 3}, {2, 4}, {3, 4}, {4, 5}});
  const LineGraph lg = line_graph(diamond);
  CHECK_THROWS_WITH(is_multitree(lg, {7}), "arcs[0]: expected an arc id in [0, 6) not given before, got 7");
  CHECK_THROWS_WITH(is_multitree(lg, {0, -1}), Contains("arcs[1]"));
  CHECK_THROWS_WITH(is_multitree(lg, {2, 2}), "arcs[1]: expected an arc id in [0, 6) not given before, got 2");
  // A LineGraph is a plain struct: a hand-built one must agree with itself.
  LineGraph bad_arc = lg;
  bad_arc.arcs[3].to = 6;
  CHECK_THROWS_WITH(vertex_levels(bad_arc), "line_graph.arcs[3]: arc 2 -> 6 names a vertex outside [0, 6)");
  LineGraph bad_rows = lg;
  bad_rows.in_arcs.offsets = {0, 100, 6, 6, 6, 6, 6};
  CHECK_THROWS_WITH(multitree_arcs(bad_rows), Contains("line_graph.in_arcs: expected 6 rows of nondecreasing offsets"));
  LineGraph bad_item = lg;
  std::swap(bad_item.out_arcs.items[0], bad_item.out_arcs.items[5]);
  CHECK_THROWS_WITH(is_multitree(bad_item, {}), Contains("line_graph.out_arcs: row 0 lists arc 5"));
  LineGraph missing = lg;
  missing.in_arcs.items.pop_back();
  CHECK_THROWS_WITH(vertex_levels(missing), Contains("line_graph.in_arcs"));
  LineGraph cyclic;  // two vertices joined both ways
  cyclic.num_vertices = 2;
  cyclic.arcs = {{0, 1, 0}, {1, 0, 0}};
  cyclic.in_arcs = {{0, 1, 2}, {1, 0}};
  cyclic.out_arcs = {{0, 1, 2}, {0, 1}};
  CHECK_THROWS_WITH(vertex_levels(cyclic), "line_graph: has a cycle through 2 of its 2 vertices");
  // dagify: ranks, roots and options that do not apply.
  CHECK_THROWS_WITH(dagify(3, {{0, 1}}, {NodeOrder::given, {0, 5, 1}}),
                    "order.permutation[1]: expected a rank in [0, 3) that no other node has, got 5");
  CHECK_THROWS_WITH(dagify(3, {{0, 1}}, {NodeOrder::given, {-1, 0, 1}}), Contains("order.permutation[0]"));
  CHECK_THROWS_WITH(dagify(3, {{0, 1}}, {NodeOrder::bfs, {2, 1, 0}}),
                    "order.permutation: is used by the order 'given' only, got 3 ranks with another order");
  CHECK_THROWS_WITH(dagify(3, {{0, 1}}, {NodeOrder::bfs, {}, -1}), "order.root: expected a node in [0, 3), got -1");
  CHECK_THROWS_WITH(dagify(3, {{0, 3}}, {NodeOrder::bfs}), "edges[0]: edge 0 -- 3 names a node outside [0, 3)");
  CHECK_THROWS_WITH(dagify(3, {{0, 1}, {-1, 1}}, {NodeOrder::random}), Contains("edges[1]"));
}

TEST_CASE("an edge list line must be exactly two node ids", "[graph][errors]") {
  CHECK_THROWS_WITH(read("0 1\n1 2 3\n", Format::edges), R"(edges: line 2: expected two node ids "u v", got "1 2 3")");
  CHECK_THROWS_WITH(read("0 1\n\nfoo\n", Format::edges), R"(edges: line 3: expected two node ids "u v", got "foo")");
  CHECK_THROWS_WITH(read("7\n", Format::edges), Contains("line 1: expected two node ids"));
  for (const char* field : {"1.5", "+1", "0x10", "1e3", "2a"})
    CHECK_THROWS_WITH(read(std::string("0 ") + field, Format::edges), Contains("line 1: expected two node ids"));
  CHECK_THROWS_WITH(read("0 -1\n", Format::edges), "edges: line 1: node id -1 is outside [0, 2147483647)");
  // Was a signed overflow in the stream parser (UBSan).
  CHECK_THROWS_WITH(read("0 99999999999999999999\n", Format::edges), Contains("node id 99999999999999999999 is outside"));
  // Bytes that are not UTF-8 are escaped in the message, so that it prints and reaches Python.
  CHECK_THROWS_WITH(read("caf\xe9 1\n", Format::edges), R"(edges: line 1: expected two node ids "u v", got "caf\xe9 1")");
  // Blanks of any kind, Windows line ends and comments are fine.
  const EdgeList e = read("# header\r\n0\t1\r\n 1  2 # last\r\n\r\n", Format::edges);
  CHECK(e.edges == std::vector<Edge>{{0, 1}, {1, 2}});
  CHECK(e.num_nodes == 3);
  CHECK(read("", Format::edges).num_nodes == 0);
}

TEST_CASE("GraphML node ids: an undeclared or twice-declared id is an error", "[graph][errors]") {
  CHECK_THROWS_WITH(read(graphml(R"(<node id="a"/><node id="b"/><edge source="a" target="x"/>)"), Format::graphml),
                    R"(graph: GraphML edge 0 has target "x", which no <node> declares)");
  CHECK_THROWS_WITH(read(graphml(R"(<node id="a"/><node id="a"/>)"), Format::graphml),
                    R"(graph: the GraphML node id "a" is declared twice)");
  CHECK_THROWS_WITH(read(graphml(R"(<node id="a"/><edge target="a"/>)"), Format::graphml),
                    "graph: GraphML edge 0 has no source");
  // Nodes of nested graphs count, as Boost reads them; graphs after the first are not read.
  const EdgeList nested = read(
      graphml(R"(<node id="a"/><graph id="inner" edgedefault="directed"><node id="b"/></graph><edge source="a" target="b"/>)"),
      Format::graphml);
  CHECK(nested.num_nodes == 2);
  CHECK(nested.edges == std::vector<Edge>{{0, 1}});
  CHECK_THROWS_WITH(read(R"(<graphml><graph edgedefault="directed"><edge source="a" target="b"/></graph>)"
                         R"(<graph edgedefault="directed"><node id="a"/><node id="b"/></graph></graphml>)",
                         Format::graphml),
                    Contains("which no <node> declares"));
}

TEST_CASE("node names keep the file's bytes; a graph without edges is a graph", "[graph]") {
  const EdgeList latin1 = read("digraph { \"caf\xe9\" -> b; }", Format::dot);
  CHECK(latin1.node_names == std::vector<std::string>{"b", "caf\xe9"});
  CHECK_THROWS_WITH(read("digraph { \xe9 -> b; }", Format::dot), Contains("(char is '\\xe9')"));
  const EdgeList nodes_only = read("digraph { a; b; c; }", Format::dot);
  const Dag dag(nodes_only.num_nodes, nodes_only.edges);
  CHECK(dag.num_edges() == 0);
  CHECK(line_graph(dag).arcs.empty());
  CHECK(multitree_arcs(line_graph(dag)).empty());
  CHECK(dag.levels().rows() == 1);
  const Flat f = flatten(dag);
  CHECK(f.in_offsets == std::vector<std::int32_t>{0, 0, 0, 0});
  CHECK(f.level_nodes == std::vector<std::int32_t>{0, 1, 2});
}

TEST_CASE("inputs the fuzz targets found are errors, not crashes", "[graph][errors]") {
  // Found by fuzz/ on the readers as they were before these checks (minimized by libFuzzer): Boost's
  // and the standard library's exceptions escaped from the undirected second reading and terminated
  // the program, and edge lists whose partly parsed numbers asked for billions of nodes ran out of
  // memory.
  const std::vector<std::pair<Format, std::string>> found = {
      {Format::dot, "graph"},
      {Format::graphml, R"(<graphml><graph edgedefault=""><edge source=""target=""><data/></></></>)"},
      {Format::graphml, R"(<graphml><graph edgedefault=""><edge source=""target=""/><edge/></></>)"},
      {Format::graphml, R"(<graphml><key for="edge"><default/></><graph edgedefault=""><edge source=""target=""/></></>)"},
      // The same with their nodes declared, so that they get past the id check to Boost's reader.
      {Format::graphml, R"(<graphml><graph edgedefault=""><node id=""/><edge source="" target=""><data/></edge></graph></graphml>)"},
      {Format::graphml, R"(<graphml><key for="edge"><default/></key><graph edgedefault=""><node id=""/>)"
                        R"(<edge source="" target=""/></graph></graphml>)"},
      {Format::graphml, R"(<graphml><graph edgedefault=""><node id=""/><edge source="" target=""/>)"
                        R"(<edge source="" target="" directed="true"/></graph></graphml>)"},
      {Format::edges, "0 41549999999\xc6\xc6:\n"},
      {Format::edges, "1 10000000000000000\x18"},
  };
  for (const auto& [format, text] : found) {
    INFO(text);
    CHECK_THROWS_AS(read(text, format), Error);
  }
}
