"""The CUDA pLSTM grid kernels from Python: argument handling through DLPack without a GPU
(FakeCudaArray), and — where a GPU is visible — torch CUDA tensors against the CPU reference, forward
and backward, one and four orientations, sequences (chunkwise), DAGs, float32 and bfloat16."""

import numpy as np
import pytest

fl = pytest.importorskip("flashlstm")
from flashlstm import _core, plstm  # noqa: E402

from helpers import FakeCudaArray, rel, rng  # noqa: E402

cuda = _core.cuda.plstm
B, NH, X, Y, DQK, DV = 1, 2, 5, 3, 4, 6
LAUNCH_FAILS = (RuntimeError, ValueError)  # no CUDA in the build / no device, or host memory refused


def fake(orientations=1, dtype="float32", **override):
    lead = (4,) if orientations == 4 else ()
    a = dict(q=FakeCudaArray((B, NH, X, Y, DQK), dtype), k=FakeCudaArray((B, NH, X, Y, DQK), dtype),
             v=FakeCudaArray((B, NH, X, Y, DV), dtype), h=FakeCudaArray((B, NH, X, Y, DV), dtype),
             gates=[FakeCudaArray(lead + (B, NH, X, Y)) for _ in range(9)])
    a.update(override)
    return a


def call(a, **kwargs):
    cuda.grid_forward(a["q"], a["k"], a["v"], a["gates"], a["h"], **kwargs)


def test_a_valid_call_gets_through_the_checks():
    for orientations in (1, 4):
        a = fake(orientations, "bfloat16")
        with pytest.raises(LAUNCH_FAILS) as failure:
            call(a, orientations=orientations, stream=5)
        assert "CUDA" in str(failure.value) or "device" in str(failure.value), str(failure.value)
        assert a["q"].streams == [5] and all(g.streams == [5] for g in a["gates"])


def gate_list(**replace):
    gates = [FakeCudaArray((B, NH, X, Y)) for _ in range(9)]
    for i, x in replace.items():
        gates[int(i[1:])] = x
    return gates


@pytest.mark.parametrize("override,kwargs,message", [
    (dict(q=FakeCudaArray((B, NH, X * Y, DQK))), {}, r"q: expected shape \(B, NH, X, Y, DQK\), got 4 dimensions"),
    (dict(k=FakeCudaArray((B, NH, X, Y, DQK), "bfloat16")), {}, "k: expected dtype float32, got bfloat16"),
    (dict(v=FakeCudaArray((B, NH, X, Y + 1, DV))), {}, r"v: expected shape \(B, NH, X, Y, DV\)"),
    (dict(h=FakeCudaArray((B, NH, X, Y, DV), read_only=True)), {}, "h: is read-only, but is an output"),
    (dict(gates=gate_list(g5=FakeCudaArray((B, NH, X, Y), "bfloat16"))), {}, "Tdl: expected dtype float32"),
    (dict(gates=gate_list()[:8]), {}, "gates: expected the nine gates"),
    ({}, dict(orientations=4), r"Sr: expected shape \(4, B, NH, X, Y\)"),
    ({}, dict(orientations=2), "orientations: must be 1 or 4, got 2"),
])
def test_bad_arguments_are_named(override, kwargs, message):
    a = fake(**override)
    with pytest.raises(ValueError, match=message):
        call(a, **kwargs)


def test_backward_arguments_are_named():
    a = fake(4)
    grads = dict(dh=FakeCudaArray((B, NH, X, Y, DV)), dq=FakeCudaArray((B, NH, X, Y, DQK)),
                 dk=FakeCudaArray((B, NH, X, Y, DQK)), dv=FakeCudaArray((B, NH, X, Y, DV)),
                 dgates=[FakeCudaArray((4, B, NH, X, Y)) for _ in range(9)])

    def backward(**override):
        g = {**grads, **override}
        cuda.grid_backward(a["q"], a["k"], a["v"], a["gates"], g["dh"], g["dq"], g["dk"], g["dv"], g["dgates"],
                           orientations=4)

    with pytest.raises(ValueError, match=r"dk: expected shape \(B, NH, X, Y, DQK\)"):
        backward(dk=FakeCudaArray((B, NH, X, Y, DV)))
    with pytest.raises(ValueError, match="dh: expected dtype float32, got bfloat16"):
        backward(dh=FakeCudaArray((B, NH, X, Y, DV), "bfloat16"))
    with pytest.raises(ValueError, match="dTdu: is read-only, but is an output"):
        backward(dgates=[FakeCudaArray((4, B, NH, X, Y), read_only=(i == 4)) for i in range(9)])
    with pytest.raises(ValueError, match="dgates: expected the nine"):
        backward(dgates=grads["dgates"][:3])
    with pytest.raises(LAUNCH_FAILS) as failure:
        backward()
    assert "CUDA" in str(failure.value) or "device" in str(failure.value), str(failure.value)


def test_sequence_arguments_are_named():
    S = 7
    x = dict(q=FakeCudaArray((B, NH, S, DQK)), k=FakeCudaArray((B, NH, S, DQK)), v=FakeCudaArray((B, NH, S, DV)),
             S=FakeCudaArray((B, NH, S)), T=FakeCudaArray((B, NH, S)), M=FakeCudaArray((B, NH, S)),
             D=FakeCudaArray((B, NH, S)), h=FakeCudaArray((B, NH, S, DV)))

    def forward(**override):
        a = {**x, **override}
        cuda.sequence_forward(a["q"], a["k"], a["v"], a["S"], a["T"], a["M"], a["D"], a["h"])

    with pytest.raises(ValueError, match=r"T: expected shape \(B, NH, S\)"):
        forward(T=FakeCudaArray((B, NH, S + 1)))
    with pytest.raises(ValueError, match="M: expected dtype float32, got bfloat16"):
        forward(M=FakeCudaArray((B, NH, S), "bfloat16"))
    with pytest.raises(ValueError, match="h: is read-only, but is an output"):
        forward(h=FakeCudaArray((B, NH, S, DV), read_only=True))
    with pytest.raises(LAUNCH_FAILS):
        forward()
    with pytest.raises(ValueError, match="dD: is read-only, but is an output"):
        g = [FakeCudaArray((B, NH, S, d)) for d in (DV, DQK, DQK, DV)]
        cuda.sequence_backward(x["q"], x["k"], x["v"], x["S"], x["T"], x["M"], x["D"], *g,
                               *[FakeCudaArray((B, NH, S), read_only=(i == 3)) for i in range(4)])


def test_dag_arguments_are_named():
    from flashlstm import graph
    dag = graph.Dag(4, [(0, 1), (0, 1), (1, 2), (1, 3)])
    N, E, A = 4, 4, graph.num_arcs(dag)
    x = dict(q=FakeCudaArray((B, NH, N, DQK)), k=FakeCudaArray((B, NH, N, DQK)), v=FakeCudaArray((B, NH, N, DV)),
             S=FakeCudaArray((B, NH, E)), T=FakeCudaArray((B, NH, A)), M=FakeCudaArray((B, NH, E)),
             D=FakeCudaArray((B, NH, N)), h=FakeCudaArray((B, NH, N, DV)))

    def forward(**override):
        a = {**x, **override}
        cuda.dag_forward(cuda.DagPlan(dag, a.pop("device", 0)), a["q"], a["k"], a["v"], a["S"], a["T"], a["M"], a["D"],
                         a["h"])

    with pytest.raises(ValueError, match=r"q: expected shape \(B, NH, N, DQK\)"):
        forward(q=FakeCudaArray((B, NH, N + 1, DQK)))
    with pytest.raises(ValueError, match=r"T: expected shape \(B, NH, A\)"):
        forward(T=FakeCudaArray((B, NH, A + 1)))
    with pytest.raises(ValueError, match="D: expected dtype float32, got bfloat16"):
        forward(D=FakeCudaArray((B, NH, N), "bfloat16"))
    with pytest.raises(ValueError, match="q: is on device 0, the DagPlan's graph on device 1"):
        forward(device=1)
    with pytest.raises(LAUNCH_FAILS):
        forward()


def test_python_layer_routes_gpu_arrays_and_says_why_it_cannot_run():
    if fl.built_with_cuda and fl.cuda_available():
        pytest.skip("a GPU is visible: the kernel runs below")
    a = fake()
    message = "built without CUDA" if not fl.built_with_cuda else "no CUDA device"
    with pytest.raises(RuntimeError, match=message):
        plstm.grid_forward(a["q"], a["k"], a["v"], plstm.GridGates(*a["gates"]))


# GPU ---------------------------------------------------------------------------------------------

torch = pytest.importorskip("torch")
GPU = fl.built_with_cuda and torch.cuda.is_available() and fl.cuda_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA build and a GPU")


def problem(orientations, X, Y, seed):
    r = rng(seed)
    lead = (4,) if orientations == 4 else ()
    q, k = r.standard_normal((2, 2, 3, X, Y, 48))
    v = r.standard_normal((2, 3, X, Y, 40))
    gates = plstm.GridGates(*(r.uniform(-0.7, 0.7, lead + (2, 3, X, Y)) for _ in range(9)))
    return q, k, v, gates


@needs_gpu
@pytest.mark.parametrize("orientations", [1, 4])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_grid_forward_matches_the_reference(orientations, dtype):
    q, k, v, gates = problem(orientations, 11, 9, seed=orientations)
    tdtype = getattr(torch, dtype)
    dev = [torch.tensor(x, device="cuda").to(tdtype) for x in (q, k, v)]
    # The reference on exactly the kernel's inputs (bf16-rounded q, k, v; float32 gates).
    q, k, v = (x.double().cpu().numpy() for x in dev)
    gates = plstm.GridGates(*(g.astype(np.float32).astype(np.float64) for g in gates))
    dgates = plstm.GridGates(*(torch.tensor(g, device="cuda", dtype=torch.float32) for g in gates))
    run = plstm.grid_forward_oriented if orientations == 4 else plstm.grid_forward
    h = run(*dev, dgates)
    assert isinstance(h, torch.Tensor) and h.is_cuda and h.dtype == tdtype
    expected = run(q, k, v, gates)
    # float32: float32-grade; bf16: the output's rounding (2^-9 relative) dominates.
    assert rel(h.double().cpu().numpy(), expected) < (1e-5 if dtype == "float32" else 4e-3)
    with pytest.raises(ValueError, match="form: the CUDA kernel implements 'parallel'"):
        run(*dev, dgates, form="chunkwise")


@needs_gpu
@pytest.mark.parametrize("orientations", [1, 4])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_grid_backward_matches_the_reference(orientations, dtype):
    q, k, v, gates = problem(orientations, 9, 10, seed=10 + orientations)
    dh = rng(20).standard_normal(v.shape)
    tdtype = getattr(torch, dtype)
    dev = [torch.tensor(x, device="cuda").to(tdtype) for x in (q, k, v, dh)]
    q, k, v, dh = (x.double().cpu().numpy() for x in dev)
    gates = plstm.GridGates(*(g.astype(np.float32).astype(np.float64) for g in gates))
    dgates = plstm.GridGates(*(torch.tensor(g, device="cuda", dtype=torch.float32) for g in gates))
    run = plstm.grid_backward_oriented if orientations == 4 else plstm.grid_backward
    got = run(*dev[:3], dgates, dev[3])
    expected = run(q, k, v, gates, dh)
    for name, a, b in zip(plstm.GridGrad._fields, got, expected):
        assert a.is_cuda and a.shape == b.shape, name
        # float32: float32-grade; bf16 inputs: dq, dk, dv rounded to bf16 (2^-9), the gate gradients
        # accumulated in float32 from bf16-exact inputs.
        assert rel(a.double().cpu().numpy(), b) < (1e-4 if dtype == "float32" else 5e-3), name


@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_sequence_matches_the_reference(dtype):
    r = rng(30)
    q, k = r.standard_normal((2, 2, 3, 150, 24))
    v, dh = r.standard_normal((2, 2, 3, 150, 40))
    gates = [r.uniform(-1, 1, (2, 3, 150)) for _ in range(4)]
    tdtype = getattr(torch, dtype)
    dev = [torch.tensor(x, device="cuda").to(tdtype) for x in (q, k, v, dh)]
    q, k, v, dh = (x.double().cpu().numpy() for x in dev)
    gates = [g.astype(np.float32).astype(np.float64) for g in gates]
    dgates = [torch.tensor(g, device="cuda", dtype=torch.float32) for g in gates]
    # As for the grid: float32-grade; bf16 inputs: dq, dk, dv (and h) rounded to bf16.
    h = plstm.sequence_forward(*dev[:3], *dgates)
    expected = plstm.sequence_forward(q, k, v, *gates)
    assert h.is_cuda and rel(h.double().cpu().numpy(), expected) < (1e-5 if dtype == "float32" else 4e-3)
    got = plstm.sequence_backward(*dev[:3], *dgates, dev[3])
    for name, a, b in zip(plstm.DagGrad._fields, got, plstm.sequence_backward(q, k, v, *gates, dh)):
        assert rel(a.double().cpu().numpy(), b) < (1e-4 if dtype == "float32" else 5e-3), name


@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_dag_matches_the_reference(dtype):
    from flashlstm import graph
    dag = graph.random_dag(60, 1.7, seed=3)
    N, E, A = dag.num_nodes, dag.num_edges, graph.num_arcs(dag)
    r = rng(40)
    q, k = r.standard_normal((2, 2, 3, N, 24))
    v, dh = r.standard_normal((2, 2, 3, N, 20))
    gates = [r.uniform(-0.8, 0.8, (2, 3, n)) for n in (E, A, E, N)]
    tdtype = getattr(torch, dtype)
    dev = [torch.tensor(x, device="cuda").to(tdtype) for x in (q, k, v, dh)]
    q, k, v, dh = (x.double().cpu().numpy() for x in dev)
    gates = [g.astype(np.float32).astype(np.float64) for g in gates]
    dgates = [torch.tensor(g, device="cuda", dtype=torch.float32) for g in gates]
    h = plstm.dag_forward(dag, *dev[:3], *dgates)
    expected = plstm.dag_forward(dag, q, k, v, *gates)
    assert h.is_cuda and rel(h.double().cpu().numpy(), expected) < (1e-5 if dtype == "float32" else 4e-3)
    got = plstm.dag_backward(dag, *dev[:3], *dgates, dev[3])
    for name, a, b in zip(plstm.DagGrad._fields, got, plstm.dag_backward(dag, q, k, v, *gates, dh)):
        assert rel(a.double().cpu().numpy(), b) < (1e-4 if dtype == "float32" else 5e-3), name


@needs_gpu
def test_cuda_gradients_are_the_same_bits_every_run():
    """Each backward twice on the same inputs: every value has one writer and its sums run in a fixed
    order, whichever warp claims which DAG node and however the grid's blocks are scheduled."""
    from flashlstm import graph
    dag = graph.random_dag(3000, 2.0, seed=5)
    N, E, A = dag.num_nodes, dag.num_edges, graph.num_arcs(dag)
    r = rng(50)
    q, k, v, dh = (torch.tensor(r.standard_normal((2, 3, N, 16)), device="cuda", dtype=torch.float32)
                   for _ in range(4))
    gates = [torch.tensor(r.uniform(-0.8, 0.8, (2, 3, n)), device="cuda", dtype=torch.float32) for n in (E, A, E, N)]
    first, second = (plstm.dag_backward(dag, q, k, v, *gates, dh) for _ in range(2))
    for name, a, b in zip(plstm.DagGrad._fields, first, second):
        assert torch.equal(a, b), name

    q, k, v, gates = problem(4, 17, 12, seed=51)
    dh = rng(52).standard_normal(v.shape)
    dev = [torch.tensor(x, device="cuda").to(torch.bfloat16) for x in (q, k, v, dh)]
    dgates = plstm.GridGates(*(torch.tensor(g, device="cuda", dtype=torch.float32) for g in gates))
    first, second = (plstm.grid_backward_oriented(*dev[:3], dgates, dev[3]) for _ in range(2))
    for name, a, b in zip(plstm.GridGrad._fields, first, second):
        assert torch.equal(a, b), name
