// flashlstm._core.graph: DAGs for pLSTM (graph/graph.hpp). Edge lists come in as integer arrays of
// shape (E, 2); index lists go out as int64 numpy arrays, compressed rows as (offsets, items) pairs.
// The numbering (nodes, edges in the given order, line-graph arcs by node, incoming edge, outgoing
// edge) is the library's, so gate arrays built in Python line up with it.
#include "bindings/src/arrays.hpp"
#include "graph/graph.hpp"

#include <sstream>

namespace flashlstm::bindings {
namespace {

// Integer index arrays may come as any array-like (lists included); they are copied.
py::array as_array(std::string_view name, const py::handle& object) {
  auto a = py::array::ensure(object);
  if (!a) throw Error(fmt::format("{}: expected an integer array, got {}", name, py::str(py::type::handle_of(object).attr("__name__")).cast<std::string>()));
  return a;
}

std::vector<graph::Edge> edges_from(std::string_view name, const py::handle& object) {
  const py::array a = as_array(name, object);
  if (a.size() == 0) return {};
  require(a.dtype().kind() == 'i' || a.dtype().kind() == 'u', name, "expected an integer array, got dtype {}",
          dtype_of(a));
  require(a.ndim() == 2 && a.shape(1) == 2, name, "expected shape (E, 2), got {}",
          py::str(a.attr("shape")).cast<std::string>());
  const auto pairs = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
  std::vector<graph::Edge> edges(pairs.shape(0));
  for (std::size_t e = 0; e < edges.size(); ++e) edges[e] = {pairs.at(e, 0), pairs.at(e, 1)};
  return edges;
}

py::array_t<std::int64_t> edge_array(const std::vector<graph::Edge>& edges) {
  py::array_t<std::int64_t> out({static_cast<py::ssize_t>(edges.size()), py::ssize_t{2}});
  auto w = out.mutable_unchecked<2>();
  for (std::size_t e = 0; e < edges.size(); ++e) w(e, 0) = edges[e].src, w(e, 1) = edges[e].dst;
  return out;
}

py::tuple csr(const graph::Csr& c) { return py::make_tuple(to_numpy(c.offsets), to_numpy(c.items)); }

std::vector<index_t> indices_from(std::string_view name, const py::handle& object) {
  const py::array a = as_array(name, object);
  if (a.size() == 0) return {};
  require(a.dtype().kind() == 'i' || a.dtype().kind() == 'u', name, "expected an integer array, got dtype {}",
          dtype_of(a));
  require(a.ndim() == 1, name, "expected 1 dimension, got {}", a.ndim());
  const auto items = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
  return {items.data(), items.data() + items.size()};
}

graph::NodeOrder node_order(const std::string& order, const std::optional<py::object>& permutation, index_t root,
                            std::uint64_t seed) {
  graph::NodeOrder o = graph::NodeOrder::parse(order);
  if (permutation) o.permutation = indices_from("permutation", *permutation);
  o.root = root;
  o.seed = seed;
  return o;
}

}  // namespace

void register_graph(py::module_& parent) {
  auto m = parent.def_submodule("graph", "DAGs for pLSTM on Boost.Graph (graph/graph.hpp).");

  py::class_<graph::Dag>(m, "Dag", "A DAG with nodes 0..N-1 and edges numbered in the order given.")
      .def(py::init([](index_t num_nodes, const py::object& edges) {
             return graph::Dag(num_nodes, edges_from("edges", edges));
           }),
           py::arg("num_nodes"), py::arg("edges"),
           "Dag(num_nodes, edges): edges an integer array (E, 2) of (src, dst); a cycle raises ValueError naming "
           "an edge on it.")
      .def_property_readonly("num_nodes", &graph::Dag::num_nodes)
      .def_property_readonly("num_edges", &graph::Dag::num_edges)
      .def_property_readonly("edges", [](const graph::Dag& d) { return edge_array(d.edges()); }, "(E, 2) int64")
      .def_property_readonly("in_edges", [](const graph::Dag& d) { return csr(d.in_edges()); },
                             "(offsets, items): the incoming edge ids of node n are items[offsets[n]:offsets[n+1]]")
      .def_property_readonly("out_edges", [](const graph::Dag& d) { return csr(d.out_edges()); },
                             "(offsets, items): the outgoing edge ids of node n")
      .def_property_readonly("topological_order", [](const graph::Dag& d) { return to_numpy(d.topological_order()); },
                             "nodes, sources first")
      .def("__repr__", [](const graph::Dag& d) {
        return fmt::format("flashlstm.graph.Dag(num_nodes={}, num_edges={})", d.num_nodes(), d.num_edges());
      });

  py::class_<graph::LineGraph>(m, "LineGraph",
                               "One vertex per DAG edge, an arc e' -> e through every node that e' enters and e "
                               "leaves; arcs ordered by node, incoming edge, outgoing edge (the order of T).")
      .def_readonly("num_vertices", &graph::LineGraph::num_vertices)
      .def_property_readonly("num_arcs", [](const graph::LineGraph& lg) { return lg.arcs.size(); })
      .def_property_readonly(
          "arcs",
          [](const graph::LineGraph& lg) {
            py::array_t<std::int64_t> out({static_cast<py::ssize_t>(lg.arcs.size()), py::ssize_t{3}});
            auto w = out.mutable_unchecked<2>();
            for (std::size_t a = 0; a < lg.arcs.size(); ++a)
              w(a, 0) = lg.arcs[a].from, w(a, 1) = lg.arcs[a].to, w(a, 2) = lg.arcs[a].node;
            return out;
          },
          "(A, 3) int64: (from edge, to edge, node)")
      .def_property_readonly("in_arcs", [](const graph::LineGraph& lg) { return csr(lg.in_arcs); })
      .def_property_readonly("out_arcs", [](const graph::LineGraph& lg) { return csr(lg.out_arcs); })
      .def("__repr__", [](const graph::LineGraph& lg) {
        return fmt::format("flashlstm.graph.LineGraph(num_vertices={}, num_arcs={})", lg.num_vertices, lg.arcs.size());
      });

  m.def("random_dag", &graph::random_dag, py::arg("num_nodes"), py::arg("mean_in_degree"), py::arg("seed"),
        py::arg("window") = 0);
  m.def(
      "dagify",
      [](index_t num_nodes, const py::object& edges, const std::string& order, const std::optional<py::object>& permutation,
         index_t root, std::uint64_t seed) {
        return graph::dagify(num_nodes, edges_from("edges", edges), node_order(order, permutation, root, seed));
      },
      py::arg("num_nodes"), py::arg("edges"), py::kw_only(), py::arg("order") = "given",
      py::arg("permutation") = py::none(), py::arg("root") = 0, py::arg("seed") = 0);
  m.def("reverse", &graph::reverse, py::arg("dag"));
  m.def("line_graph", &graph::line_graph, py::arg("dag"));
  m.def("node_levels", [](const graph::Dag& d) { return to_numpy(graph::node_levels(d)); }, py::arg("dag"));
  m.def("vertex_levels", [](const graph::LineGraph& lg) { return to_numpy(graph::vertex_levels(lg)); },
        py::arg("line_graph"));
  m.def("level_schedule", [](const py::object& levels) { return csr(graph::level_schedule(indices_from("levels", levels))); },
        py::arg("levels"));
  m.def(
      "level_major",
      [](const graph::Dag& d) {
        auto r = graph::level_major(d);
        return py::make_tuple(std::move(r.dag), to_numpy(r.node_id), to_numpy(r.edge_id));
      },
      py::arg("dag"));
  m.def("multitree_arcs", [](const graph::LineGraph& lg) { return to_numpy(graph::multitree_arcs(lg)); },
        py::arg("line_graph"));
  m.def("is_multitree",
        [](const graph::LineGraph& lg, const py::object& arcs) { return graph::is_multitree(lg, indices_from("arcs", arcs)); },
        py::arg("line_graph"), py::arg("arcs"));
  m.def(
      "flatten",
      [](const graph::Dag& d) {
        const graph::Flat f = graph::flatten(d);
        py::dict out;
        out["in_offsets"] = to_numpy(f.in_offsets), out["in_edges"] = to_numpy(f.in_edges);
        out["out_offsets"] = to_numpy(f.out_offsets), out["out_edges"] = to_numpy(f.out_edges);
        out["edge_src"] = to_numpy(f.edge_src), out["edge_dst"] = to_numpy(f.edge_dst);
        out["arc_from"] = to_numpy(f.arc_from), out["arc_to"] = to_numpy(f.arc_to), out["arc_node"] = to_numpy(f.arc_node);
        out["level_offsets"] = to_numpy(f.level_offsets), out["level_nodes"] = to_numpy(f.level_nodes);
        return out;
      },
      py::arg("dag"));
  m.def(
      "read_graph_file",
      [](const std::string& path, const std::string& format) {
        const graph::EdgeList list = graph::read_graph_file(path, graph::parse_format(format));
        return py::make_tuple(list.num_nodes, edge_array(list.edges), list.node_names);
      },
      py::arg("path"), py::arg("format"));
  m.def(
      "write_dot",
      [](const graph::Dag& d) {
        std::ostringstream out;
        graph::write_dot(out, d);
        return out.str();
      },
      py::arg("dag"));
}

}  // namespace flashlstm::bindings
