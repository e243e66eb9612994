"""flashlstm.graph: DAGs from edge arrays and networkx, dagify, reverse, line graph numbering,
levels, multitree pruning, flattening, file I/O, and the errors."""

from pathlib import Path

import numpy as np
import pytest

fl = pytest.importorskip("flashlstm")
from flashlstm import graph  # noqa: E402

GRAPHS = Path(__file__).resolve().parents[2] / "examples" / "graphs"
DIAMOND = [(0, 1), (1, 2), (1, 3), (2, 4), (3, 4), (4, 5)]


def test_dag_from_an_edge_array():
    dag = graph.Dag(6, np.array(DIAMOND))
    assert (dag.num_nodes, dag.num_edges) == (6, 6)
    assert dag.edges.tolist() == [list(e) for e in DIAMOND]
    offsets, items = dag.in_edges
    assert items[offsets[4]:offsets[5]].tolist() == [3, 4]
    order = dag.topological_order.tolist()
    assert all(order.index(u) < order.index(v) for u, v in DIAMOND)
    assert graph.Dag(6, DIAMOND).edges.tolist() == dag.edges.tolist()  # lists work too
    assert graph.Dag(3, np.zeros((0, 2), np.int64)).num_edges == 0


def test_line_graph_numbering_and_levels():
    dag = graph.Dag(6, DIAMOND)
    lg = graph.line_graph(dag)
    assert lg.num_vertices == 6 and lg.num_arcs == graph.num_arcs(dag) == 6
    # By node, then incoming edge, then outgoing edge: node 1 joins edge 0 to edges 1 and 2 first.
    assert lg.arcs.tolist() == [[0, 1, 1], [0, 2, 1], [1, 3, 2], [2, 4, 3], [3, 5, 4], [4, 5, 4]]
    levels = graph.node_levels(dag)
    assert levels.tolist() == [0, 1, 2, 2, 3, 4]
    offsets, nodes = graph.level_schedule(levels)
    assert nodes[offsets[2]:offsets[3]].tolist() == [2, 3]
    assert graph.vertex_levels(lg).tolist() == [0, 1, 1, 2, 2, 3]


def test_multitree_pruning_drops_one_diamond_arc():
    lg = graph.line_graph(graph.Dag(6, DIAMOND))
    kept = graph.multitree_arcs(lg)
    assert len(kept) == 5 and graph.is_multitree(lg, kept)
    assert not graph.is_multitree(lg, np.arange(lg.num_arcs))


def test_dagify_reverse_and_level_major():
    undirected = [(0, 1), (1, 2), (2, 0), (2, 3)]
    given = graph.dagify(4, undirected)
    assert given.edges.tolist() == [[0, 1], [1, 2], [0, 2], [2, 3]]
    bfs = graph.dagify(4, undirected, order="bfs", root=3)
    assert bfs.edges.tolist()[3] == [3, 2]
    assert graph.dagify(4, undirected, order="random", seed=5).num_edges == 4
    perm = graph.dagify(4, undirected, permutation=[3, 2, 1, 0])
    assert perm.edges.tolist() == [[1, 0], [2, 1], [2, 0], [3, 2]]
    rev = graph.reverse(given)
    assert rev.edges.tolist() == [[v, u] for u, v in given.edges.tolist()]
    renumbered, node_id, edge_id = graph.level_major(graph.random_dag(30, 1.5, seed=1))
    assert sorted(node_id.tolist()) == list(range(30)) and renumbered.num_edges == len(edge_id)
    levels = graph.node_levels(renumbered)
    assert np.all(np.diff(levels) >= 0)


def test_flatten_gives_int32_csr():
    flat = graph.flatten(graph.Dag(6, DIAMOND))
    assert flat["edge_src"].dtype == np.int32
    assert flat["edge_src"].tolist() == [u for u, _ in DIAMOND]
    assert flat["level_offsets"].tolist() == [0, 1, 2, 4, 5, 6]


def test_networkx_round_trip():
    nx = pytest.importorskip("networkx")
    g = nx.DiGraph()
    g.add_edges_from([("a", "b"), ("b", "c"), ("a", "c")])
    dag, nodes = graph.from_networkx(g)
    assert nodes == ["a", "b", "c"] and dag.edges.tolist() == [[0, 1], [0, 2], [1, 2]]
    back = graph.to_networkx(dag)
    assert sorted(back.edges) == [(0, 1), (0, 2), (1, 2)] and back.edges[0, 2]["id"] == 1
    ring = nx.cycle_graph(5)
    dag, _ = graph.from_networkx(ring, order="bfs", root=2)
    assert dag.num_edges == 5 and graph.node_levels(dag)[2] == 0
    cyclic = nx.DiGraph([(0, 1), (1, 0)])
    with pytest.raises(ValueError, match="cycle"):
        graph.from_networkx(cyclic)


def test_files_and_dot():
    n, edges, names = graph.read_graph_file(GRAPHS / "diamond.edges")
    assert n == 6 and edges.tolist() == [list(e) for e in DIAMOND] and len(names) == 6
    n, edges, names = graph.read_graph_file(GRAPHS / "molecule_like.dot")
    assert n == 14 and len(edges) == 15 and "N1" in names
    dot = graph.write_dot(graph.Dag(6, DIAMOND))
    assert "0 -> 1 [id=0];" in dot


def test_errors():
    with pytest.raises(ValueError, match=r"edges: the graph has a cycle: edge 2 \(2 -> 0\)"):
        graph.Dag(3, [(0, 1), (1, 2), (2, 0)])
    with pytest.raises(ValueError, match=r"edges: expected shape \(E, 2\)"):
        graph.Dag(3, np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match="edges: expected an integer array, got dtype float64"):
        graph.Dag(3, np.zeros((2, 2)))
    with pytest.raises(ValueError):
        graph.Dag(2, [(0, 5)])
    with pytest.raises(ValueError, match="order: expected given, bfs or random"):
        graph.dagify(3, [(0, 1)], order="dfs")
    with pytest.raises(ValueError, match="format"):
        graph.read_graph_file(GRAPHS / "diamond.edges", "csv")
    with pytest.raises(ValueError, match="graph: cannot open"):
        graph.read_graph_file("/nonexistent/file.edges")
