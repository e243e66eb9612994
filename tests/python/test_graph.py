"""flashlstm.graph: DAGs from edge arrays and networkx, dagify, reverse, line graph numbering,
levels, multitree pruning, flattening, file I/O, and the errors: malformed, deeply nested and
oversized input, indices out of range, non-UTF-8 names; graphs without edges in the pLSTM; the GIL
released while the graph work runs."""

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

fl = pytest.importorskip("flashlstm")
from flashlstm import graph, plstm  # noqa: E402

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


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_malformed_files_raise_value_error_naming_the_problem(tmp_path):
    # Undirected graphs are read on a second attempt, whose errors once escaped as RuntimeError.
    with pytest.raises(ValueError, match="graph: cannot parse the DOT input: Using -> in undirected graph"):
        graph.read_graph_file(write(tmp_path, "u.dot", "graph { a -> b }\n"))
    with pytest.raises(ValueError, match=r'edge "a" -> "b" has id "x": expected an integer >= 0'):
        graph.read_graph_file(write(tmp_path, "id.dot", "graph { a -- b [id=x] }\n"))
    with pytest.raises(ValueError, match='edges: line 2: expected two node ids "u v", got "1 2 3"'):
        graph.read_graph_file(write(tmp_path, "extra.edges", "0 1\n1 2 3\n"))
    with pytest.raises(ValueError, match='edges: line 1: expected two node ids "u v", got "0 x"'):
        graph.read_graph_file(write(tmp_path, "x.edges", "0 x\n"))
    graphml = ('<graphml><graph edgedefault="directed"><node id="a"/>{}</graph></graphml>')
    with pytest.raises(ValueError, match='GraphML edge 0 has target "x", which no <node> declares'):
        graph.read_graph_file(write(tmp_path, "undeclared.graphml", graphml.format('<edge source="a" target="x"/>')))
    with pytest.raises(ValueError, match='the GraphML node id "a" is declared twice'):
        graph.read_graph_file(write(tmp_path, "twice.graphml", graphml.format('<node id="a"/>')))
    with pytest.raises(ValueError, match="is a directory"):
        graph.read_graph_file(tmp_path, "edges")


def test_deep_nesting_and_huge_ids_are_refused(tmp_path):
    deep_dot = "digraph {" + "subgraph {" * 8600 + "}" * 8601
    with pytest.raises(ValueError, match="the DOT input nests braces 8601 deep, more than the 200 levels"):
        graph.read_graph_file(write(tmp_path, "deep.dot", deep_dot))
    deep_graphml = "<graphml>" + "<a>" * 21000 + "</a>" * 21000 + "</graphml>"
    with pytest.raises(ValueError, match="the GraphML input nests elements 21001 deep"):
        graph.read_graph_file(write(tmp_path, "deep.graphml", deep_graphml))
    with pytest.raises(ValueError, match=r"edges: line 1: node id 4294967296 is outside \[0, 2147483647\)"):
        graph.read_graph_file(write(tmp_path, "big.edges", "0 4294967296"))
    with pytest.raises(ValueError, match="num_nodes: expected a number of nodes in"):
        graph.Dag(2**40, [])
    for bad in [float("inf"), float("nan"), -1.0]:
        with pytest.raises(ValueError, match="mean_in_degree: expected a finite number"):
            graph.random_dag(10, bad, 0)
    # A hub with 50,000 edges in and 50,000 out: 2.5e9 line-graph arcs, refused before allocating.
    hub = [(i, 50000) for i in range(50000)] + [(50000, 50001 + i) for i in range(50000)]
    with pytest.raises(ValueError, match="dag: its line graph would have 2500000000 arcs"):
        graph.line_graph(graph.Dag(100001, hub))


def test_index_arguments_are_checked():
    lg = graph.line_graph(graph.Dag(6, DIAMOND))
    with pytest.raises(ValueError, match=r"levels\[1\]: expected a level in \[0, 3\), got -3"):
        graph.level_schedule([0, -3, 1])
    with pytest.raises(ValueError, match=r"arcs\[0\]: expected an arc id in \[0, 6\) not given before, got 7"):
        graph.is_multitree(lg, [7])
    with pytest.raises(ValueError, match=r"arcs\[1\]"):
        graph.is_multitree(lg, [1, 1])
    with pytest.raises(ValueError, match=r"permutation\[1\]: expected a rank in \[0, 3\)"):
        graph.dagify(3, [(0, 1)], permutation=[0, 7, 1])
    with pytest.raises(ValueError, match="order.permutation: is used by the order 'given' only"):
        graph.dagify(3, [(0, 1)], order="bfs", permutation=[2, 1, 0])
    with pytest.raises(ValueError, match="root: is used by the order 'bfs' only"):
        graph.dagify(3, [(0, 1)], order="random", root=1)
    with pytest.raises(ValueError, match=r"order.root: expected a node in \[0, 3\), got 5"):
        graph.dagify(3, [(0, 1)], order="bfs", root=5)
    with pytest.raises(ValueError, match=r"edges: expected shape \(E, 2\), got \(2, 0\)"):
        graph.Dag(3, np.zeros((2, 0), np.int64))
    with pytest.raises(ValueError, match=r"levels: expected shape \(n,\), got \(2, 2\)"):
        graph.level_schedule(np.zeros((2, 2), np.int64))
    assert graph.Dag(3, []).num_edges == 0
    assert graph.level_schedule([])[0].tolist() == [0]


def test_non_utf8_names_are_decoded_with_surrogateescape(tmp_path):
    n, edges, names = graph.read_graph_file(write(tmp_path, "latin1.dot", b'digraph { "caf\xe9" -> b; }'))
    assert n == 2 and names == ["b", "caf\udce9"]
    assert names[1].encode("utf-8", "surrogateescape") == b"caf\xe9"
    with pytest.raises(ValueError, match=r'got "caf\\xe9 1"'):  # the message escapes the byte
        graph.read_graph_file(write(tmp_path, "latin1.edges", b"caf\xe9 1\n"))
    weird = tmp_path / os.fsdecode(b"d\xe9.edges")
    weird.write_bytes(b"0 1\n")
    assert graph.read_graph_file(weird)[0] == 2


def direct_term(q, k, v, D):
    """h when the graph has no edges: s D (q . k) v, s = DQK^-1/2."""
    return (D * np.einsum("bhnd,bhnd->bhn", q, k))[..., None] * v / np.sqrt(q.shape[-1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_dag_without_edges_runs_every_plstm_form(tmp_path, dtype):
    n, edges, _ = graph.read_graph_file(write(tmp_path, "nodes.dot", "digraph { a; b; c; d; }"))
    dag = graph.Dag(n, edges)
    assert (dag.num_edges, graph.num_arcs(dag)) == (0, 0)
    rng = np.random.default_rng(0)
    B, NH, DQK, DV = 2, 3, 4, 5
    q, k = rng.standard_normal((2, B, NH, n, DQK)).astype(dtype)
    v = rng.standard_normal((B, NH, n, DV)).astype(dtype)
    D = rng.standard_normal((B, NH, n)).astype(dtype)
    sliced = rng.standard_normal((B, NH, 7)).astype(dtype)[:, :, :0]  # zero-size, strides of a (B, NH, 7) array
    empty = np.zeros((B, NH, 0), dtype)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    for S in [empty, sliced]:
        for form in ["recurrent", "levels", "parallel"]:
            h = plstm.dag_forward(dag, q, k, v, S, S, S, D, form=form)
            np.testing.assert_allclose(h, direct_term(q, k, v, D), rtol=tolerance, atol=tolerance)
    grads = plstm.dag_backward(dag, q, k, v, empty, empty, empty, D, np.ones_like(v))
    assert [g.shape for g in grads[3:6]] == [(B, NH, 0)] * 3
    for gates in [plstm.dag_gates_p_mode(dag, empty, empty, empty, empty, D), plstm.dag_gates_d_mode(dag, empty, empty, empty, D)]:
        assert [g.shape for g in gates] == [(B, NH, 0), (B, NH, 0), (B, NH, 0), (B, NH, n)]
        h = plstm.dag_forward(dag, q, k, v, *gates)
        np.testing.assert_allclose(h, direct_term(q, k, v, gates[3]), rtol=tolerance, atol=tolerance)


def progress_while(work):
    """How many times the main thread ran (in 1 ms sleeps) while `work` ran in another thread: about
    its duration in ms when it releases the GIL, close to none when it holds it."""
    done = threading.Event()
    thread = threading.Thread(target=lambda: (work(), done.set()))
    ticks = 0
    thread.start()
    while not done.is_set():
        time.sleep(0.001)
        ticks += 1
    thread.join()
    return ticks


def test_graph_work_releases_the_gil(tmp_path):
    big = graph.random_dag(200_000, 3, seed=1)
    edges = big.edges
    path = write(tmp_path, "big.edges", "\n".join(f"{u} {v}" for u, v in edges.tolist()))
    rng = np.random.default_rng(0)
    A = graph.num_arcs(big)
    S, M, gamma = rng.standard_normal((3, 1, 1, big.num_edges))
    T, D = rng.standard_normal((1, 1, A)), rng.standard_normal((1, 1, big.num_nodes))
    works = {
        "random_dag": lambda: graph.random_dag(200_000, 3, seed=2),
        "Dag": lambda: graph.Dag(big.num_nodes, edges),
        "dagify": lambda: graph.dagify(big.num_nodes, edges, order="bfs"),
        "line_graph": lambda: graph.line_graph(big),
        "level_major": lambda: graph.level_major(big),
        "flatten": lambda: graph.flatten(big),
        "read_graph_file": lambda: graph.read_graph_file(path),
        "dag_gates_p_mode": lambda: plstm.dag_gates_p_mode(big, S, T, gamma, M, D),
    }
    for name, work in works.items():
        start = time.perf_counter()
        ticks = progress_while(work)
        elapsed_ms = (time.perf_counter() - start) * 1000
        # Holding the GIL for the whole call would leave the main thread a tick or two.
        assert ticks >= min(10, elapsed_ms / 20), f"{name}: {ticks} ticks in {elapsed_ms:.0f} ms"
