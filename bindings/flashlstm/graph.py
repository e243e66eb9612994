"""DAGs for pLSTM (graph/graph.hpp, Boost.Graph underneath).

Numbering is the contract between a graph and the pLSTM gate arrays: nodes are 0..N-1, edges
0..E-1 in the order given, line-graph arcs by node, then incoming edge, then outgoing edge (the
order of T). Gate arrays S, M are per edge, T per arc, D per node.

- ``Dag(num_nodes, edges)``: edges an integer array (E, 2) of (src, dst); a cycle raises ValueError
  naming an edge on it. Properties: ``num_nodes``, ``num_edges``, ``edges``, ``in_edges`` /
  ``out_edges`` (offsets, items) and ``topological_order``.
- ``dagify(num_nodes, edges, order="given"|"bfs"|"random", root=, seed=, permutation=)`` orients an
  undirected graph along a node order; ``reverse``; ``line_graph`` (a LineGraph: ``arcs`` (A, 3) of
  (from edge, to edge, node)); ``node_levels`` / ``vertex_levels`` / ``level_schedule``;
  ``level_major`` (renumbering by level: (dag, node_id, edge_id)); ``multitree_arcs`` /
  ``is_multitree`` (D-mode pruning); ``flatten`` (int32 CSR arrays for kernels); ``random_dag``;
  ``read_graph_file(path, "dot"|"graphml"|"edges")`` and ``write_dot``.
- Bad input raises ValueError naming the argument or the problem: an index out of range, a size that
  does not fit (in int32 ids or in memory), a malformed or too deeply nested file.
- The functions release the GIL while they work, so threads can prepare graphs in parallel.
- ``from_networkx`` / ``to_networkx`` convert to and from networkx (imported only there).
"""

from __future__ import annotations

import os
from typing import Any, Hashable, List, Optional, Tuple

import numpy as np

from ._core.graph import (Dag, LineGraph, dagify, flatten, is_multitree, level_major, level_schedule, line_graph,
                          multitree_arcs, node_levels, random_dag, reverse, vertex_levels)
from ._core import graph as _graph

__all__ = ["Dag", "LineGraph", "dagify", "reverse", "line_graph", "node_levels", "vertex_levels", "level_schedule",
           "level_major", "multitree_arcs", "is_multitree", "flatten", "random_dag", "read_graph_file", "write_dot",
           "from_networkx", "to_networkx", "num_arcs"]


def read_graph_file(path: "str | bytes | os.PathLike", format: Optional[str] = None) -> Tuple[int, np.ndarray, List[str]]:
    """(num_nodes, edges (E, 2), node_names) from a DOT, GraphML or edge-list file; the format
    defaults to the extension (.dot/.gv, .graphml/.xml, else an edge list).

    Node names are the file's bytes decoded as UTF-8 with errors="surrogateescape" (as Python decodes
    file names): a latin-1 name never raises, and ``name.encode("utf-8", "surrogateescape")`` gives
    its bytes back. A malformed file raises ValueError naming the problem (the line, for edge lists).
    """
    if format is None:
        lower = os.fsdecode(path).lower()
        format = ("dot" if lower.endswith((".dot", ".gv"))
                  else "graphml" if lower.endswith((".graphml", ".xml")) else "edges")
    return _graph.read_graph_file(os.fsencode(path), format)


def write_dot(dag: Dag) -> str:
    """The DAG in DOT, edges with their ids."""
    return _graph.write_dot(dag)


def num_arcs(dag: Dag) -> int:
    """The number of line-graph arcs (the length of T's last axis)."""
    offsets_in = np.diff(dag.in_edges[0])
    offsets_out = np.diff(dag.out_edges[0])
    return int(np.dot(offsets_in, offsets_out))


def from_networkx(graph: Any, *, order: str = "bfs", root: Optional[Hashable] = None,
                  seed: int = 0) -> Tuple[Dag, List[Hashable]]:
    """A Dag from a networkx graph, and the networkx node of each Dag node.

    Nodes are numbered in ``graph.nodes`` order and edges in ``graph.edges`` order. A directed graph
    is taken as it is (a cycle raises ValueError); an undirected one is oriented by ``dagify`` along
    ``order`` ("given": the node order, "bfs" from ``root`` (default: the first node), "random"
    with ``seed``).
    """
    nodes = list(graph.nodes)
    index = {node: i for i, node in enumerate(nodes)}
    edges = np.array([(index[u], index[v]) for u, v in graph.edges()], dtype=np.int64).reshape(-1, 2)
    if graph.is_directed():
        return Dag(len(nodes), edges), nodes
    if order == "bfs":
        return dagify(len(nodes), edges, order=order, root=index[root] if root is not None else 0), nodes
    if root is not None:
        raise ValueError(f"root: is used by the order 'bfs' only, got order '{order}'")
    return dagify(len(nodes), edges, order=order, seed=seed), nodes


def to_networkx(dag: Dag) -> Any:
    """The Dag as a networkx.DiGraph (a MultiDiGraph when it has parallel edges); each edge carries its
    id as the attribute "id"."""
    import networkx as nx

    pairs = [tuple(e) for e in dag.edges.tolist()]
    g = nx.MultiDiGraph() if len(set(pairs)) < len(pairs) else nx.DiGraph()
    g.add_nodes_from(range(dag.num_nodes))
    for i, (u, v) in enumerate(pairs):
        g.add_edge(u, v, id=i)
    return g
