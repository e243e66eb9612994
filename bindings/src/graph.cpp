// flashlstm._core.graph: DAGs for pLSTM (graph/graph.hpp). Edge lists come in as integer arrays of
// shape (E, 2); index lists go out as int64 numpy arrays, compressed rows as (offsets, items) pairs.
// The numbering (nodes, edges in the given order, line-graph arcs by node, incoming edge, outgoing
// edge) is the library's, so gate arrays built in Python line up with it. Every function converts
// its arguments with the GIL held, then releases it for the graph work (up to seconds on large
// graphs) and takes it back to build the results.
#include "bindings/src/arrays.hpp"
#include "graph/graph.hpp"

#include <sstream>

namespace flashlstm::bindings {
namespace {

using Int64Array = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;

// Integer index arrays may come as any array-like (lists included) of `ndim` dimensions (the second
// of extent 2 for edges); they are copied. An empty list is an empty array of any dtype.
Int64Array integer_array(std::string_view name, const py::handle& object, std::size_t ndim, std::string_view shape) {
  auto a = py::array::ensure(object);
  if (!a) throw Error(fmt::format("{}: expected an integer array, got {}", name, py::str(py::type::handle_of(object).attr("__name__")).cast<std::string>()));
  if (a.ndim() == 1 && a.size() == 0) return Int64Array(std::vector<py::ssize_t>(ndim, 0));
  require(static_cast<std::size_t>(a.ndim()) == ndim && (ndim == 1 || a.shape(1) == 2), name,
          "expected shape {}, got {}", shape, py::str(a.attr("shape")).cast<std::string>());
  require(a.size() == 0 || a.dtype().kind() == 'i' || a.dtype().kind() == 'u', name,
          "expected an integer array, got dtype {}", dtype_of(a));
  return Int64Array::ensure(a);
}

std::vector<graph::Edge> edges_from(std::string_view name, const py::handle& object) {
  const Int64Array pairs = integer_array(name, object, 2, "(E, 2)");
  std::vector<graph::Edge> edges(pairs.shape(0));
  for (std::size_t e = 0; e < edges.size(); ++e) edges[e] = {pairs.at(e, 0), pairs.at(e, 1)};
  return edges;
}

std::vector<index_t> indices_from(std::string_view name, const py::handle& object) {
  const Int64Array items = integer_array(name, object, 1, "(n,)");
  return {items.data(), items.data() + items.size()};
}

py::array_t<std::int64_t> edge_array(const std::vector<graph::Edge>& edges) {
  py::array_t<std::int64_t> out({static_cast<py::ssize_t>(edges.size()), py::ssize_t{2}});
  auto w = out.mutable_unchecked<2>();
  for (std::size_t e = 0; e < edges.size(); ++e) w(e, 0) = edges[e].src, w(e, 1) = edges[e].dst;
  return out;
}

py::tuple csr(const graph::Csr& c) { return py::make_tuple(to_numpy(c.offsets), to_numpy(c.items)); }

// Node names are the file's bytes, which need not be UTF-8 (a latin-1 DOT file): they are decoded
// with errors="surrogateescape", as Python decodes file names, so that reading never fails and
// name.encode("utf-8", "surrogateescape") gives the bytes back.
py::list name_list(const std::vector<std::string>& names) {
  py::list out;
  for (const std::string& name : names) {
    PyObject* decoded = PyUnicode_DecodeUTF8(name.data(), static_cast<py::ssize_t>(name.size()), "surrogateescape");
    if (decoded == nullptr) throw py::error_already_set();
    out.append(py::reinterpret_steal<py::str>(decoded));
  }
  return out;
}

graph::NodeOrder node_order(const std::string& order, const std::optional<py::object>& permutation,
                            std::optional<index_t> root, std::uint64_t seed) {
  graph::NodeOrder o = graph::NodeOrder::parse(order);
  if (permutation) o.permutation = indices_from("permutation", *permutation);
  require(!root || o.kind == graph::NodeOrder::bfs, "root", "is used by the order 'bfs' only, got order '{}'", order);
  o.root = root.value_or(0);
  o.seed = seed;
  return o;
}

}  // namespace

void register_graph(py::module_& parent) {
  auto m = parent.def_submodule("graph", "DAGs for pLSTM on Boost.Graph (graph/graph.hpp).");
  const auto release_gil = py::call_guard<py::gil_scoped_release>();  // for functions of C++ values only

  py::class_<graph::Dag>(m, "Dag", "A DAG with nodes 0..N-1 and edges numbered in the order given.")
      .def(py::init([](index_t num_nodes, const py::object& edges) {
             auto list = edges_from("edges", edges);
             return nogil([&] { return graph::Dag(num_nodes, std::move(list)); });
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
        py::arg("window") = 0, release_gil);
  m.def(
      "dagify",
      [](index_t num_nodes, const py::object& edges, const std::string& order,
         const std::optional<py::object>& permutation, std::optional<index_t> root, std::uint64_t seed) {
        auto list = edges_from("edges", edges);
        const auto o = node_order(order, permutation, root, seed);
        return nogil([&] { return graph::dagify(num_nodes, list, o); });
      },
      py::arg("num_nodes"), py::arg("edges"), py::kw_only(), py::arg("order") = "given",
      py::arg("permutation") = py::none(), py::arg("root") = py::none(), py::arg("seed") = 0);
  m.def("reverse", &graph::reverse, py::arg("dag"), release_gil);
  m.def("line_graph", &graph::line_graph, py::arg("dag"), release_gil);
  m.def("node_levels", [](const graph::Dag& d) { return to_numpy(nogil([&] { return graph::node_levels(d); })); },
        py::arg("dag"));
  m.def("vertex_levels",
        [](const graph::LineGraph& lg) { return to_numpy(nogil([&] { return graph::vertex_levels(lg); })); },
        py::arg("line_graph"));
  m.def(
      "level_schedule",
      [](const py::object& levels) {
        const auto list = indices_from("levels", levels);
        return csr(nogil([&] { return graph::level_schedule(list); }));
      },
      py::arg("levels"));
  m.def(
      "level_major",
      [](const graph::Dag& d) {
        auto r = nogil([&] { return graph::level_major(d); });
        return py::make_tuple(std::move(r.dag), to_numpy(r.node_id), to_numpy(r.edge_id));
      },
      py::arg("dag"));
  m.def("multitree_arcs",
        [](const graph::LineGraph& lg) { return to_numpy(nogil([&] { return graph::multitree_arcs(lg); })); },
        py::arg("line_graph"));
  m.def(
      "is_multitree",
      [](const graph::LineGraph& lg, const py::object& arcs) {
        const auto list = indices_from("arcs", arcs);
        return nogil([&] { return graph::is_multitree(lg, list); });
      },
      py::arg("line_graph"), py::arg("arcs"));
  m.def(
      "flatten",
      [](const graph::Dag& d) {
        const graph::Flat f = nogil([&] { return graph::flatten(d); });
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
        const graph::Format f = graph::parse_format(format);
        const graph::EdgeList list = nogil([&] { return graph::read_graph_file(path, f); });
        return py::make_tuple(list.num_nodes, edge_array(list.edges), name_list(list.node_names));
      },
      py::arg("path"), py::arg("format"), "path: str or bytes (os.fsencode)");
  m.def(
      "write_dot",
      [](const graph::Dag& d) {
        std::ostringstream out;
        graph::write_dot(out, d);
        return out.str();
      },
      py::arg("dag"), release_gil);
}

}  // namespace flashlstm::bindings
