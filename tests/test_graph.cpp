// graph/: construction and cycle errors, dagify, reverse, line graph, levels, multitree pruning,
// flattening and the readers/writers.
#include "core/random.hpp"
#include "graph/graph.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <numeric>
#include <set>
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
  CHECK_THROWS_WITH(read_graph(bad, Format::edges), Contains("line 1: expected two node numbers"));
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
