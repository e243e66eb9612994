"""flashlstm.plstm: the DAG recurrence against a numpy transcription of docs/plstm.md, every DAG,
1-D and 2-D form against it, the exact backward and the P-mode / D-mode backward against finite
differences, and the errors."""

import numpy as np
import pytest

fl = pytest.importorskip("flashlstm")
from flashlstm import graph, plstm  # noqa: E402

from helpers import check_gradients, rel, rng  # noqa: E402


def oracle(dag, q, k, v, S, T, M, D, qk_scale=0.0):
    """States on edges, nodes in topological order (docs/plstm.md)."""
    B, NH, N, DQK = q.shape
    s = qk_scale or DQK ** -0.5
    arcs = {(a, b): i for i, (a, b, _) in enumerate(graph.line_graph(dag).arcs.tolist())}
    in_off, in_items = dag.in_edges
    out_off, out_items = dag.out_edges
    C = {}
    h = np.zeros(v.shape)
    for n in dag.topological_order.tolist():
        incoming = in_items[in_off[n]:in_off[n + 1]].tolist()
        kv = np.einsum("bhk,bhv->bhkv", k[:, :, n], v[:, :, n])
        for e in out_items[out_off[n]:out_off[n + 1]].tolist():
            C[e] = S[:, :, e, None, None] * kv
            for ep in incoming:
                C[e] = C[e] + T[:, :, arcs[(ep, e)], None, None] * C[ep]
        readout = sum((M[:, :, e, None] * np.einsum("bhkv,bhk->bhv", C[e], q[:, :, n]) for e in incoming), 0.0)
        direct = D[:, :, n, None] * np.sum(q[:, :, n] * k[:, :, n], -1)[..., None] * v[:, :, n]
        h[:, :, n] = s * (readout + direct)
    return h


def dag_problem(dag, B=2, NH=2, DQK=4, DV=3, seed=0, mode="P"):
    r = rng(seed)
    N, E, A = dag.num_nodes, dag.num_edges, graph.num_arcs(dag)
    q, k = r.standard_normal((B, NH, N, DQK)), r.standard_normal((B, NH, N, DQK))
    v = r.standard_normal((B, NH, N, DV))
    raw = dict(S=r.standard_normal((B, NH, E)), T=r.standard_normal((B, NH, A)), M=r.standard_normal((B, NH, E)),
               D=r.standard_normal((B, NH, N)))
    if mode == "P":
        raw["gamma"] = r.standard_normal((B, NH, E))
        gates = plstm.dag_gates_p_mode(dag, raw["S"], raw["T"], raw["gamma"], raw["M"], raw["D"])
    else:
        gates = plstm.dag_gates_d_mode(dag, raw["S"], raw["T"], raw["M"], raw["D"])
    return q, k, v, gates, raw


@pytest.fixture(scope="module")
def dag():
    return graph.random_dag(14, 1.6, seed=3)


def test_dag_recurrent_equals_numpy_oracle(dag):
    q, k, v, gates, _ = dag_problem(dag)
    assert rel(plstm.dag_forward(dag, q, k, v, *gates), oracle(dag, q, k, v, *gates)) < 1e-12
    assert rel(plstm.dag_forward(dag, q, k, v, *gates, qk_scale=0.3), oracle(dag, q, k, v, *gates, 0.3)) < 1e-12


@pytest.mark.parametrize("form", ["levels", "parallel"])
def test_dag_forms_agree(dag, form):
    q, k, v, gates, _ = dag_problem(dag, mode="D")
    ref = plstm.dag_forward(dag, q, k, v, *gates)
    assert rel(plstm.dag_forward(dag, q, k, v, *gates, form=form), ref) < 1e-10
    f32 = [x.astype(np.float32) for x in (q, k, v, *gates)]
    assert rel(plstm.dag_forward(dag, *f32, form=form), ref) < 1e-5


def test_dag_gating_is_the_parallel_readout(dag):
    q, k, v, gates, _ = dag_problem(dag)
    G = plstm.dag_gating(dag, q, k, v, *gates)
    s = q.shape[-1] ** -0.5
    qk = np.einsum("bhnk,bhmk->bhmn", q, k)  # [m, n] = q_n · k_m
    h = s * np.einsum("bhmn,bhmv->bhnv", G * qk, v)
    h += s * (gates.D * np.einsum("bhnk,bhnk->bhn", q, k))[..., None] * v
    assert rel(h, plstm.dag_forward(dag, q, k, v, *gates)) < 1e-12


def test_dag_backward_matches_finite_differences(dag):
    q, k, v, gates, _ = dag_problem(dag, B=1, seed=5)
    w = rng(6).standard_normal(v.shape)
    names = ["q", "k", "v", "S", "T", "M", "D"]
    values = dict(zip(names, (q, k, v, *gates)))

    def loss(x):
        return np.sum(w * plstm.dag_forward(dag, *(x[n] for n in names)))

    g = plstm.dag_backward(dag, q, k, v, *gates, w)
    check_gradients(loss, values, dict(zip(names, g)))


@pytest.mark.parametrize("mode", ["P", "D"])
def test_dag_mode_backward_matches_finite_differences(dag, mode):
    q, k, v, _, raw = dag_problem(dag, B=1, seed=7, mode=mode)
    w = rng(8).standard_normal(v.shape)
    make = plstm.dag_gates_p_mode if mode == "P" else plstm.dag_gates_d_mode
    names = ["S", "T", "gamma", "M", "D"] if mode == "P" else ["S", "T", "M", "D"]

    def loss(x):
        return np.sum(w * plstm.dag_forward(dag, q, k, v, *make(dag, *(x[n] for n in names))))

    gates = make(dag, *(raw[n] for n in names))
    g = plstm.dag_backward(dag, q, k, v, *gates, w)
    back = plstm.dag_gates_p_mode_backward if mode == "P" else plstm.dag_gates_d_mode_backward
    check_gradients(loss, {n: raw[n] for n in names}, dict(zip(names, back(dag, *(raw[n] for n in names), g))))


def test_modes_bound_the_transitions(dag):
    _, _, _, gates, _ = dag_problem(dag, mode="P")
    assert plstm.max_transition_column_norm(dag, gates.T) <= 1 + 1e-12
    _, _, _, gates, _ = dag_problem(dag, mode="D")
    kept = graph.multitree_arcs(graph.line_graph(dag))
    dropped = np.setdiff1d(np.arange(gates.T.shape[-1]), kept)
    assert np.all(gates.T[..., dropped] == 0) and np.all(np.abs(gates.T) <= 1)


# 1-D ---------------------------------------------------------------------------------------------


def sequence_problem(S=13, B=2, NH=2, DQK=4, DV=3, seed=0):
    r = rng(seed)
    x = [r.standard_normal((B, NH, S, DQK)), r.standard_normal((B, NH, S, DQK)), r.standard_normal((B, NH, S, DV))]
    return x + [1 / (1 + np.exp(-r.standard_normal((B, NH, S)))) for _ in range(4)]


def test_a_sequence_is_the_grid_of_one_column():
    """The chain is the S x 1 grid with S^r = S, T^rl = T, M^l = M and zero vertical gates (how the GPU
    runs sequences): h and the gates' gradients agree with the sequence reference."""
    x = sequence_problem(seed=3)
    q, k, v, S, T, M, D = x
    grid = lambda a: a[:, :, :, None]  # noqa: E731
    zero = np.zeros_like(grid(S))
    gates = plstm.GridGates(grid(S), zero, grid(T), zero, zero, zero, grid(M), zero, grid(D))
    h = plstm.grid_forward(grid(q), grid(k), grid(v), gates)
    assert rel(h[:, :, :, 0], plstm.sequence_forward(*x)) < 1e-13
    dh = rng(4).standard_normal(v.shape)
    g = plstm.grid_backward(grid(q), grid(k), grid(v), gates, grid(dh))
    ref = plstm.sequence_backward(*x, dh)
    for ours, theirs in [(g.dq, ref.dq), (g.dk, ref.dk), (g.dv, ref.dv), (g.dSr, ref.dS), (g.dTrl, ref.dT),
                         (g.dMl, ref.dM), (g.dD, ref.dD)]:
        assert rel(ours[:, :, :, 0], theirs) < 1e-12


@pytest.mark.parametrize("form,chunk_size", [("recurrent", 0), ("parallel", 0), ("chunkwise", 1),
                                             ("chunkwise", 3), ("chunkwise", 8)])
def test_sequence_forms_equal_the_dag_on_the_chain(form, chunk_size):
    x = sequence_problem()
    S_, T_, M_ = plstm.chain_gates(*x)
    ref = plstm.dag_forward(plstm.chain(13), *x[:3], S_, T_, M_, x[6])
    assert rel(plstm.sequence_forward(*x, form=form, chunk_size=chunk_size), ref) < 1e-10


@pytest.mark.parametrize("chunk_size", [1, 4, 16])
def test_sequence_backward_matches_finite_differences(chunk_size):
    x = sequence_problem(S=9, B=1, seed=2)
    names = ["q", "k", "v", "S", "T", "M", "D"]
    w = rng(3).standard_normal(x[2].shape)

    def loss(inp):
        return np.sum(w * plstm.sequence_forward(*(inp[n] for n in names)))

    g = plstm.sequence_backward(*x, w, chunk_size=chunk_size)
    check_gradients(loss, dict(zip(names, x)), dict(zip(names, g)))


# 2-D ---------------------------------------------------------------------------------------------


def grid_problem(X=5, Y=3, B=1, NH=2, DQK=4, DV=3, seed=0, mode="P", orientations=False):
    r = rng(seed)
    lead = (4,) if orientations else ()
    q, k = r.standard_normal((B, NH, X, Y, DQK)), r.standard_normal((B, NH, X, Y, DQK))
    v = r.standard_normal((B, NH, X, Y, DV))
    n_raw = 7 if mode == "P" else 8
    raw = [r.standard_normal(lead + (B, NH, X, Y)) for _ in range(n_raw)]
    if orientations:
        parts = [plstm.grid_gates_p_mode(*(x[o] for x in raw)) for o in range(4)]
        gates = plstm.GridGates(*(np.stack([p[i] for p in parts]) for i in range(9)))
    else:
        gates = (plstm.grid_gates_p_mode if mode == "P" else plstm.grid_gates_d_mode)(*raw)
    return q, k, v, gates, raw


@pytest.mark.parametrize("form,chunk_size", [("recurrent", 0), ("parallel", 0), ("chunkwise", 1),
                                             ("chunkwise", 2), ("chunkwise", 4)])
def test_grid_forms_equal_the_dag_on_the_grid(form, chunk_size):
    q, k, v, gates, _ = grid_problem()
    B, NH, X, Y, DQK = q.shape
    flat = lambda a: a.reshape(B, NH, X * Y, -1)  # noqa: E731
    ref = plstm.dag_forward(plstm.grid_dag(X, Y), flat(q), flat(k), flat(v), *plstm.grid_dag_gates(q, k, v, gates))
    h = plstm.grid_forward(q, k, v, gates, form=form, chunk_size=chunk_size)
    assert h.shape == v.shape and rel(flat(h), ref) < 1e-10


def test_oriented_sums_the_four_flips():
    q, k, v, gates, _ = grid_problem(orientations=True, seed=4)
    total = 0
    for o in range(4):
        axes = tuple(a for a, bit in ((2, 1), (3, 2)) if o & bit)
        flip = lambda a, shift=0: np.flip(a, tuple(x + shift for x in axes)) if axes else a  # noqa: E731
        g = plstm.GridGates(*(flip(x[o]) for x in gates))
        h = plstm.grid_forward(*(flip(x) for x in (q, k, v)), g)
        total = total + flip(h)
    assert rel(plstm.grid_forward_oriented(q, k, v, gates), total) < 1e-12


@pytest.mark.parametrize("chunk_size", [1, 2, 4])
def test_grid_backward_matches_finite_differences(chunk_size):
    q, k, v, gates, _ = grid_problem(X=4, Y=3, seed=5)
    names = ["q", "k", "v", *plstm.GridGates._fields]
    w = rng(6).standard_normal(v.shape)

    def loss(x):
        return np.sum(w * plstm.grid_forward(x["q"], x["k"], x["v"], [x[n] for n in plstm.GridGates._fields]))

    g = plstm.grid_backward(q, k, v, gates, w, chunk_size=chunk_size)
    check_gradients(loss, dict(zip(names, (q, k, v, *gates))), dict(zip(names, g)))


def test_grid_backward_oriented_matches_finite_differences():
    q, k, v, gates, _ = grid_problem(X=3, Y=4, seed=9, orientations=True)
    names = ["q", "k", "v", *plstm.GridGates._fields]
    w = rng(10).standard_normal(v.shape)

    def loss(x):
        return np.sum(w * plstm.grid_forward_oriented(x["q"], x["k"], x["v"], [x[n] for n in plstm.GridGates._fields]))

    g = plstm.grid_backward_oriented(q, k, v, gates, w, chunk_size=2)
    assert g.dSr.shape == gates.Sr.shape
    check_gradients(loss, dict(zip(names, (q, k, v, *gates))), dict(zip(names, g)))


@pytest.mark.parametrize("mode", ["P", "D"])
def test_grid_mode_backward_matches_finite_differences(mode):
    q, k, v, _, raw = grid_problem(X=3, Y=3, seed=7, mode=mode)
    make = plstm.grid_gates_p_mode if mode == "P" else plstm.grid_gates_d_mode
    back = plstm.grid_gates_p_mode_backward if mode == "P" else plstm.grid_gates_d_mode_backward
    names = [f"r{i}" for i in range(len(raw))]
    w = rng(8).standard_normal(v.shape)

    def loss(x):
        return np.sum(w * plstm.grid_forward(q, k, v, make(*(x[n] for n in names))))

    g = plstm.grid_backward(q, k, v, make(*raw), w)
    check_gradients(loss, dict(zip(names, raw)), dict(zip(names, back(*raw, g))))


def test_errors():
    q, k, v, gates, _ = grid_problem()
    with pytest.raises(ValueError, match="gates: expected the nine grid gates"):
        plstm.grid_forward(q, k, v, gates[:8])
    with pytest.raises(ValueError, match="chunk_size: expected a power of two"):
        plstm.grid_forward(q, k, v, gates, form="chunkwise", chunk_size=3)
    with pytest.raises(ValueError, match="Tdu: expected shape"):
        plstm.grid_forward(q, k, v, gates._replace(Tdu=np.zeros((1, 2, 5, 2))))
    with pytest.raises(ValueError, match="Ml: expected dtype float64, got float32"):
        plstm.grid_forward(q, k, v, gates._replace(Ml=gates.Ml.astype(np.float32)))
    dag = graph.Dag(3, [(0, 1), (1, 2)])
    x = sequence_problem(S=3)
    with pytest.raises(ValueError, match="T: expected shape"):
        plstm.dag_forward(dag, *x[:3], x[3][..., :2].copy(), x[4], x[5][..., :2].copy(), x[6])
    with pytest.raises(ValueError, match="form: expected one of 'recurrent', 'levels', 'parallel', got 'chunkwise'"):
        plstm.dag_forward(dag, *x[:3], *(np.ones((2, 2, 2)),) * 2, np.ones((2, 2, 1)), x[6], form="chunkwise")
    with pytest.raises(ValueError, match="gamma: expected shape"):
        plstm.dag_gates_p_mode(dag, np.zeros((1, 1, 2)), np.zeros((1, 1, 1)), np.zeros((1, 1, 3)),
                               np.zeros((1, 1, 2)), np.zeros((1, 1, 3)))
