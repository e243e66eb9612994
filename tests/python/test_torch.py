"""flashlstm.torch: the custom ops against the numpy API, torch.library.opcheck (schema, fake
implementations, autograd registration), torch.autograd.gradcheck in float64 on the CPU,
torch.compile, and — where a GPU is visible — the CUDA kernels through DLPack against the CPU
reference, on the caller's stream. Skipped where torch is not installed (tools/setup.sh installs it)."""

import numpy as np
import pytest

fl = pytest.importorskip("flashlstm")
torch = pytest.importorskip("torch")
from flashlstm import mlstm as np_mlstm  # noqa: E402
from flashlstm import graph, plstm  # noqa: E402
import flashlstm.torch as ft  # noqa: E402

from helpers import rel  # noqa: E402

GPU = fl.built_with_cuda and torch.cuda.is_available() and fl.cuda_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA build and a GPU")


def mlstm_inputs(B=1, NH=2, S=7, DQK=3, DV=2, dtype=torch.float64, device="cpu", state=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape, shift=0.0: (torch.randn(*shape, generator=g, dtype=torch.float64) + shift).to(  # noqa: E731
        device=device, dtype=dtype).requires_grad_()
    x = [make(B, NH, S, DQK), make(B, NH, S, DQK), make(B, NH, S, DV), make(B, NH, S), make(B, NH, S, shift=2.0)]
    sdt = torch.float32 if device != "cpu" else dtype
    initial = None
    if state:
        initial = tuple(t.to(sdt).detach().requires_grad_() for t in
                        (make(B, NH, DQK, DV), make(B, NH, DQK), make(B, NH)))
    return x, initial


VARIANTS = [dict(input_gate="exp"), dict(input_gate="sig"), dict(input_gate="sig", normalize=False)]
VIDS = ["exp", "sig", "sig-nonorm"]


def test_mlstm_equals_the_numpy_api():
    x, initial = mlstm_inputs()
    out = ft.mlstm(*x, initial, form="chunkwise", chunk_size=3)
    ref = np_mlstm.forward(*(t.detach().numpy() for t in x), tuple(t.detach().numpy() for t in initial),
                           form="chunkwise", chunk_size=3)
    assert rel(out.h.detach().numpy(), ref.h) < 1e-14
    assert rel(out.last.C.detach().numpy(), ref.last.C) < 1e-14


@pytest.mark.parametrize("variant", VARIANTS, ids=VIDS)
@pytest.mark.parametrize("form", ["recurrent", "parallel", "chunkwise"])
def test_mlstm_gradcheck(variant, form):
    x, initial = mlstm_inputs(S=5)

    def f(q, k, v, i, fg, C0, n0, m0):
        out = ft.mlstm(q, k, v, i, fg, (C0, n0, m0), form=form, chunk_size=2, **variant)
        return out.h, out.last.C, out.last.n, out.last.m

    assert torch.autograd.gradcheck(f, (*x, *initial), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_mlstm_without_state_and_opcheck():
    x, _ = mlstm_inputs(state=False)
    assert torch.autograd.gradcheck(lambda *a: ft.mlstm(*a, form="parallel").h, tuple(x), eps=1e-6, atol=1e-7)
    args = (*x, None, None, None, "chunkwise", 4, "exp", True, 1e-6, None)
    torch.library.opcheck(torch.ops.flashlstm.mlstm_forward.default, args)
    y, initial = mlstm_inputs()
    torch.library.opcheck(torch.ops.flashlstm.mlstm_forward.default,
                          (*y, *initial, "parallel", 0, "sig", True, 1e-6, None))


# Packed sequences: lengths 3, 0 (an empty one) and 4 in one (1, NH, 7, D) batch.
PACKED = [0, 3, 3, 7]


def packed_inputs(device="cpu", dtype=torch.float64, S=7, cu=PACKED, DQK=3, DV=2, seed=4):
    x, _ = mlstm_inputs(S=S, DQK=DQK, DV=DV, dtype=dtype, device=device, state=False, seed=seed)
    N = len(cu) - 1
    _, initial = mlstm_inputs(B=N, S=1, DQK=DQK, DV=DV, dtype=dtype, device=device, state=True, seed=seed + 1)
    return x, initial


def each_alone(x, initial, cu, **options):
    """h and the final states of running each packed sequence on its own (the empty one hands its
    initial state on)."""
    hs, last = [], []
    for i in range(len(cu) - 1):
        own = tuple(t[i:i + 1] for t in initial)
        if cu[i] == cu[i + 1]:
            last.append(own)
            continue
        out = ft.mlstm(*(t[:, :, cu[i]:cu[i + 1]] for t in x), own, **options)
        hs.append(out.h)
        last.append(tuple(out.last))
    return torch.cat(hs, dim=2), tuple(torch.cat([s[j] for s in last]) for j in range(3))


@pytest.mark.parametrize("variant", VARIANTS, ids=VIDS)
def test_mlstm_packed_sequences_equal_each_alone_with_gradients(variant):
    x, initial = packed_inputs()
    packed = ft.mlstm(*x, initial, form="chunkwise", chunk_size=2, cu_seqlens=torch.tensor(PACKED), **variant)
    h, last = each_alone(x, initial, PACKED, form="chunkwise", chunk_size=2, **variant)
    assert packed.last.C.shape == (3, 2, 3, 2)
    torch.testing.assert_close(packed.h, h, rtol=1e-13, atol=1e-13)
    for a, b in zip(packed.last, last):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)

    def f(*a):
        out = ft.mlstm(*a[:5], a[5:], form="parallel", cu_seqlens=PACKED, **variant)
        return out.h, *out.last

    assert torch.autograd.gradcheck(f, (*x, *initial), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_mlstm_packed_sequences_opcheck_compile_and_bad_offsets():
    x, initial = packed_inputs()
    torch.library.opcheck(torch.ops.flashlstm.mlstm_forward.default,
                          (*x, *initial, "chunkwise", 2, "exp", True, 1e-6, PACKED))

    def loss(*a):
        out = ft.mlstm(*a[:5], a[5:], form="chunkwise", chunk_size=2, cu_seqlens=PACKED)
        return out.h.square().sum() + out.last.C.sum()

    args = (*x, *initial)
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    for a, b in zip(torch.autograd.grad(loss(*args), args), torch.autograd.grad(compiled(*args), args)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="cu_seqlens: expected a 1-D integer tensor"):
        ft.mlstm(*x, initial, cu_seqlens=torch.tensor([0.0, 7.0]))
    with pytest.raises(ValueError, match="cu_seqlens: must end at the number of tokens 7"):
        ft.mlstm(*x, initial, cu_seqlens=[0, 3, 6])


def test_mlstm_under_torch_compile():
    x, initial = mlstm_inputs(S=9)

    def loss(*a):
        out = ft.mlstm(*a[:5], a[5:], form="chunkwise", chunk_size=4)
        return (out.h.square().sum() + out.last.C.sum()).sin()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    args = (*x, *initial)
    eager_grads = torch.autograd.grad(loss(*args), args)
    compiled_grads = torch.autograd.grad(compiled(*args), args)
    for a, b in zip(eager_grads, compiled_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["slstm", "lstm"])
def test_slstm_gradcheck_and_opcheck(cell):
    g = torch.Generator().manual_seed(1)
    B, T, NH, DH = 1, 4, 2, 2
    Wx = torch.randn(B, T, 4, NH, DH, generator=g, dtype=torch.float64, requires_grad=True)
    R = (0.3 * torch.randn(4, NH, DH, DH, generator=g, dtype=torch.float64)).requires_grad_()
    b = torch.randn(4, NH, DH, generator=g, dtype=torch.float64, requires_grad=True)
    NS = 4 if cell == "slstm" else 2
    initial = torch.randn(NS, B, NH, DH, generator=g, dtype=torch.float64)
    if cell == "slstm":
        initial[2] = initial[2].abs() + 0.5
    initial.requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: tuple(ft.slstm(*a, cell=cell)), (Wx, R, b, initial), eps=1e-6,
                                    atol=1e-7)
    torch.library.opcheck(torch.ops.flashlstm.slstm_forward.default, (Wx, R, b, initial, cell, "sigmoid", False))
    torch.library.opcheck(torch.ops.flashlstm.slstm_forward.default, (Wx, R, b, None, cell, "sigmoid", False))


def test_plstm_dag_gradcheck_and_opcheck():
    dag = graph.Dag(5, [(0, 1), (1, 2), (1, 3), (2, 4), (3, 4)])
    g = torch.Generator().manual_seed(2)
    B, NH, N, DQK, E, A = 1, 1, 5, 2, 5, graph.num_arcs(dag)
    t = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    args = (t(B, NH, N, DQK), t(B, NH, N, DQK), t(B, NH, N, DQK), t(B, NH, E), t(B, NH, A), t(B, NH, E), t(B, NH, N))
    assert torch.autograd.gradcheck(lambda *a: ft.plstm_dag(dag, *a), args, eps=1e-6, atol=1e-7)
    h = ft.plstm_dag(dag, *args, form="parallel")
    assert rel(h.detach().numpy(), plstm.dag_forward(dag, *(a.detach().numpy() for a in args))) < 1e-12
    edges = torch.from_numpy(dag.edges)
    torch.library.opcheck(torch.ops.flashlstm.plstm_dag_forward.default, (edges, 5, *args, "levels", 0.0))


def test_plstm_sequence_gradcheck_compile_and_opcheck():
    g = torch.Generator().manual_seed(4)
    B, NH, S, DQK, DV = 1, 2, 7, 3, 2
    t = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    args = (t(B, NH, S, DQK), t(B, NH, S, DQK), t(B, NH, S, DV), t(B, NH, S), t(B, NH, S), t(B, NH, S), t(B, NH, S))
    assert torch.autograd.gradcheck(ft.plstm_sequence, args, eps=1e-6, atol=1e-7)
    chunked = lambda *a: ft.plstm_sequence(*a, form="chunkwise", chunk_size=3)  # noqa: E731
    assert torch.autograd.gradcheck(chunked, args, eps=1e-6, atol=1e-7)
    h = plstm.sequence_forward(*(a.detach().numpy() for a in args))
    assert rel(ft.plstm_sequence(*args, form="parallel").detach().numpy(), h) < 1e-12
    compiled = torch.compile(lambda *a: chunked(*a).sum(), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args), chunked(*args).sum())
    torch.library.opcheck(torch.ops.flashlstm.plstm_sequence_forward.default, (*args, "chunkwise", 3, 0.0))


def test_plstm_grid_gradcheck_and_compile():
    g = torch.Generator().manual_seed(3)
    B, NH, X, Y, DQK = 1, 1, 3, 2, 2
    t = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    q, k, v = t(B, NH, X, Y, DQK), t(B, NH, X, Y, DQK), t(B, NH, X, Y, DQK)
    gates = [t(B, NH, X, Y) for _ in range(9)]

    def f(q, k, v, *gates):
        return ft.plstm_grid(q, k, v, gates, form="chunkwise", chunk_size=2)

    assert torch.autograd.gradcheck(f, (q, k, v, *gates), eps=1e-6, atol=1e-7)
    compiled = torch.compile(lambda *a: f(*a).sum(), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v, *gates), f(q, k, v, *gates).sum())
    torch.library.opcheck(torch.ops.flashlstm.plstm_grid_forward.default, (q, k, v, gates, "recurrent", 0, 0.0, 1))


def test_plstm_grid_four_orientations_gradcheck():
    g = torch.Generator().manual_seed(4)
    B, NH, X, Y, DQK = 1, 1, 3, 2, 2
    t = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    q, k, v = t(B, NH, X, Y, DQK), t(B, NH, X, Y, DQK), t(B, NH, X, Y, DQK)
    gates = [t(4, B, NH, X, Y) for _ in range(9)]

    def f(q, k, v, *gates):
        return ft.plstm_grid(q, k, v, gates, orientations=4)

    assert torch.autograd.gradcheck(f, (q, k, v, *gates), eps=1e-6, atol=1e-7)
    expected = plstm.grid_forward_oriented(*(x.detach().numpy() for x in (q, k, v)),
                                           plstm.GridGates(*(x.detach().numpy() for x in gates)))
    assert rel(f(q, k, v, *gates).detach().numpy(), expected) < 1e-12
    with pytest.raises(ValueError, match="orientations: must be 1 or 4, got 2"):
        ft.plstm_grid(q, k, v, gates, orientations=2)
    torch.library.opcheck(torch.ops.flashlstm.plstm_grid_forward.default, (q, k, v, gates, "", 0, 0.0, 4))


def mode_raw(shape_of, names, seed):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(*shape_of(name), generator=g, dtype=torch.float64, requires_grad=True) for name in names}


@pytest.mark.parametrize("mode", ["P", "D"])
def test_grid_gate_modes_equal_the_numpy_ones_with_their_gradients(mode):
    """flashlstm.torch's P-mode and D-mode grid gates equal flashlstm.plstm's (values to 1e-15, the
    raw gradients to its *_backward functions to 1e-13), on four orientations' gates."""
    names = ["Sr", "Sd", "alpha", "gamma", "Ml", "Mu", "D"] if mode == "P" else ["Sr", "Sd", "Trl", "Tru", "Tdu", "Ml", "Mu", "D"]
    raw = mode_raw(lambda _: (4, 2, 3, 5, 4), names, seed=7)
    make, make_np, back = ((ft.grid_gates_p_mode, plstm.grid_gates_p_mode, plstm.grid_gates_p_mode_backward) if mode == "P"
                           else (ft.grid_gates_d_mode, plstm.grid_gates_d_mode, plstm.grid_gates_d_mode_backward))
    gates = make(*raw.values())
    numpy_raw = [x.detach().numpy() for x in raw.values()]
    expected = [make_np(*(x[o] for x in numpy_raw)) for o in range(4)]  # the numpy functions take one orientation
    upstream = [torch.randn(g.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(i)) for i, g in enumerate(gates)]
    sum(((g * u).sum() for g, u in zip(gates, upstream)), torch.zeros((), dtype=torch.float64)).backward()
    for o in range(4):
        for name, got, want in zip(plstm.GridGates._fields, gates, expected[o]):
            assert rel(got[o].detach().numpy(), want) < 1e-15 or np.abs(want).max() == 0, name
        want_grads = back(*(x[o] for x in numpy_raw), plstm.GridGates(*(u[o].numpy() for u in upstream)))
        for name, x, want in zip(names, raw.values(), want_grads):
            assert rel(x.grad[o].numpy(), want) < 1e-13, name


@pytest.mark.parametrize("mode", ["P", "D"])
def test_dag_gate_modes_equal_the_numpy_ones_with_their_gradients(mode):
    """The same for the DAG gates on a random DAG with parallel edges, and a gradcheck; P-mode keeps
    every incoming edge's transitions at L1 norm <= 1."""
    dag = graph.random_dag(12, 1.8, seed=5)
    E, A, N = dag.num_edges, graph.num_arcs(dag), dag.num_nodes
    sizes = dict(S=E, T=A, gamma=E, M=E, D=N)
    names = ["S", "T", "gamma", "M", "D"] if mode == "P" else ["S", "T", "M", "D"]
    raw = mode_raw(lambda name: (2, 3, sizes[name]), names, seed=8)
    make, make_np, back = ((ft.dag_gates_p_mode, plstm.dag_gates_p_mode, plstm.dag_gates_p_mode_backward) if mode == "P"
                           else (ft.dag_gates_d_mode, plstm.dag_gates_d_mode, plstm.dag_gates_d_mode_backward))
    gates = make(dag, *raw.values())
    numpy_raw = [x.detach().numpy() for x in raw.values()]
    for name, got, want in zip(plstm.DagGates._fields, gates, make_np(dag, *numpy_raw)):
        assert rel(got.detach().numpy(), want) < 1e-15, name
    upstream = [torch.randn(g.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(i)) for i, g in enumerate(gates)]
    sum((g * u).sum() for g, u in zip(gates, upstream)).backward()
    for name, x, want in zip(names, raw.values(), back(dag, *numpy_raw, plstm.DagGates(*(u.numpy() for u in upstream)))):
        assert rel(x.grad.numpy(), want) < 1e-13, name
    if mode == "P":
        assert plstm.max_transition_column_norm(dag, gates.T.detach().numpy()) <= 1 + 1e-15
    small = {name: x.detach()[:1, :1].clone().requires_grad_() for name, x in raw.items()}
    assert torch.autograd.gradcheck(lambda *a: tuple(make(dag, *a)), tuple(small.values()), eps=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match=f"T: expected {A} arcs"):
        make(dag, *(x[..., :-1] if name == "T" else x for name, x in small.items()))


def gpu_op_matches_cpu(op, cpu, shape_of_h):
    """Runs op on float64 CPU tensors and on the same values as float32 CUDA tensors: h and every
    gradient agree to float32 accuracy; torch.compile traces the CUDA op."""
    g = torch.Generator().manual_seed(7)
    cpu = [x.float().double().requires_grad_() for x in cpu]
    gpu = [x.detach().float().cuda().requires_grad_() for x in cpu]
    w = torch.randn(*shape_of_h, generator=g, dtype=torch.float64)
    h_cpu, h_gpu = op(*cpu), op(*gpu)
    assert h_gpu.is_cuda and rel(h_gpu.detach().double().cpu().numpy(), h_cpu.detach().numpy()) < 1e-5
    (h_cpu * w).sum().backward()
    (h_gpu * w.float().cuda()).sum().backward()
    for a, b in zip(gpu, cpu):
        assert rel(a.grad.double().cpu().numpy(), b.grad.numpy()) < 1e-4
    compiled = torch.compile(op, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*gpu), h_gpu)


@needs_gpu
@pytest.mark.parametrize("orientations", [1, 4])
def test_plstm_grid_on_gpu_tensors_runs_the_kernels(orientations):
    g = torch.Generator().manual_seed(5)
    B, NH, X, Y, D = 2, 2, 5, 6, 16
    lead = (4,) if orientations == 4 else ()
    cpu = [torch.randn(B, NH, X, Y, D, generator=g, dtype=torch.float64) for _ in range(3)]
    cpu += [torch.rand(*lead, B, NH, X, Y, generator=g, dtype=torch.float64) * 0.6 for _ in range(9)]
    gpu_op_matches_cpu(lambda *a: ft.plstm_grid(*a[:3], a[3:], orientations=orientations), cpu, (B, NH, X, Y, D))


@needs_gpu
def test_plstm_sequence_and_dag_on_gpu_tensors_run_the_kernels():
    g = torch.Generator().manual_seed(6)
    B, NH, S, D = 2, 2, 150, 16
    seq = [torch.randn(B, NH, S, D, generator=g, dtype=torch.float64) for _ in range(3)]
    seq += [torch.rand(B, NH, S, generator=g, dtype=torch.float64) * 2 - 1 for _ in range(4)]
    gpu_op_matches_cpu(ft.plstm_sequence, seq, (B, NH, S, D))
    dag = graph.random_dag(40, 1.8, seed=4)
    N, E, A = dag.num_nodes, dag.num_edges, graph.num_arcs(dag)
    x = [torch.randn(B, NH, N, D, generator=g, dtype=torch.float64) for _ in range(3)]
    x += [torch.rand(B, NH, n, generator=g, dtype=torch.float64) * 1.2 - 0.6 for n in (E, A, E, N)]
    gpu_op_matches_cpu(lambda *a: ft.plstm_dag(dag, *a), x, (B, NH, N, D))


@needs_gpu
def test_gate_modes_on_gpu_tensors():
    """The parameterisations are plain torch operations: on CUDA tensors they equal the CPU result."""
    dag = graph.random_dag(9, 1.5, seed=2)
    raw = mode_raw(lambda name: (1, 2, graph.num_arcs(dag) if name == "T" else dag.num_edges), ["S", "T", "gamma", "M"], 9)
    raw["D"] = torch.randn(1, 2, dag.num_nodes, dtype=torch.float64)
    for cpu, gpu in zip(ft.dag_gates_p_mode(dag, *raw.values()), ft.dag_gates_p_mode(dag, *(x.cuda() for x in raw.values()))):
        assert gpu.is_cuda and rel(gpu.detach().cpu().numpy(), cpu.detach().numpy()) < 1e-12
    grid = [torch.randn(4, 1, 2, 3, 3, dtype=torch.float64) for _ in range(8)]
    for cpu, gpu in zip(ft.grid_gates_d_mode(*grid), ft.grid_gates_d_mode(*(x.cuda() for x in grid))):
        assert gpu.is_cuda and rel(gpu.cpu().numpy(), cpu.numpy()) < 1e-12 or cpu.abs().max() == 0


def test_cpu_only_ops_refuse_other_devices_and_dtypes():
    x, _ = mlstm_inputs(dtype=torch.bfloat16, state=False)
    with pytest.raises(ValueError, match="q: the CPU reference takes float32 or float64, got torch.bfloat16"):
        ft.mlstm(*x)
    with pytest.raises(ValueError, match="gates: expected the nine grid gates"):
        ft.plstm_grid(x[0], x[0], x[0], [x[0]] * 8)


# GPU ---------------------------------------------------------------------------------------------


def cpu_reference(x, initial, **options):
    xd = [t.detach().double().cpu().numpy() for t in x]
    init = tuple(t.detach().double().cpu().numpy() for t in initial) if initial is not None else None
    return np_mlstm, xd, init


@needs_gpu
@pytest.mark.parametrize("variant", VARIANTS, ids=VIDS)
@pytest.mark.parametrize("state", [False, True], ids=["zero", "state"])
def test_cuda_forward_backward_match_the_reference(variant, state):
    x, initial = mlstm_inputs(B=2, NH=2, S=200, DQK=48, DV=96, dtype=torch.float32, device="cuda", state=state)
    out = ft.mlstm(*x, initial, chunk_size=64, **variant)
    assert out.h.device.type == "cuda" and out.h.dtype == torch.float32 and out.last.C.dtype == torch.float32
    _, xd, init = cpu_reference(x, initial)
    ref = np_mlstm.forward(*xd, init, form="recurrent", **variant)
    assert rel(out.h.detach().cpu().numpy(), ref.h) < 1e-5
    assert rel(out.last.C.detach().cpu().numpy(), ref.last.C) < 1e-5
    dh = torch.randn_like(out.h)
    leaves = [*x, *(initial or ())]
    grads = torch.autograd.grad(out.h, leaves, dh)
    ref_g = np_mlstm.backward(*xd, dh.double().cpu().numpy(), init, form="recurrent", **variant)
    expected = [ref_g.dq, ref_g.dk, ref_g.dv, ref_g.digate, ref_g.dfgate, *(ref_g.dinitial or ())]
    # Relative to each gradient, with an absolute floor at the scale of dq for the state gradients
    # that decay to almost nothing over the sequence (dn0 of sig).
    floor = 1e-7 * np.linalg.norm(ref_g.dq)
    for name, a, b in zip(["dq", "dk", "dv", "digate", "dfgate", "dC0", "dn0", "dm0"], grads, expected):
        error = np.linalg.norm(a.double().cpu().numpy() - b)
        assert error <= 1e-4 * np.linalg.norm(b) + floor, f"{name}: {error:.3e} vs norm {np.linalg.norm(b):.3e}"


@needs_gpu
def test_cuda_bfloat16_on_a_side_stream():
    x, initial = mlstm_inputs(B=1, NH=4, S=300, DQK=64, DV=128, dtype=torch.bfloat16, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fl.mlstm.forward_chunkwise(*(t.detach() for t in x), fl.mlstm.State(*(t.detach() for t in initial)),
                                         chunk_size=128)
    torch.cuda.current_stream().wait_stream(side)
    assert out.h.dtype == torch.bfloat16 and torch.isfinite(out.h.float()).all()
    _, xd, init = cpu_reference(x, initial)
    ref = np_mlstm.forward(*xd, init, form="recurrent")
    assert rel(out.h.float().cpu().numpy(), ref.h) < 3e-2


@needs_gpu
def test_cuda_bfloat16_inputs_with_float32_gates():
    """bf16 q, k, v with float32 gate pre-activations: the gates' gradients come back float32, and the
    results follow the float64 reference on the same (float32) gates."""
    x, initial = mlstm_inputs(B=1, NH=2, S=200, DQK=48, DV=96, dtype=torch.bfloat16, device="cuda")
    x = [*x[:3], *(g.detach().float().requires_grad_() for g in x[3:])]
    out = ft.mlstm(*x, initial, chunk_size=64, input_gate="sig")
    dh = torch.randn_like(out.h)
    grads = torch.autograd.grad(out.h, x, dh)
    assert [g.dtype for g in grads] == [torch.bfloat16] * 3 + [torch.float32] * 2
    _, xd, init = cpu_reference(x, initial)
    ref = np_mlstm.forward(*xd, init, form="recurrent", input_gate="sig")
    assert rel(out.h.detach().float().cpu().numpy(), ref.h) < 3e-2
    ref_g = np_mlstm.backward(*xd, dh.double().cpu().numpy(), init, form="recurrent", input_gate="sig")
    for name, a, b in zip(["dq", "dk", "dv", "digate", "dfgate"], grads, ref_g):
        assert rel(a.double().cpu().numpy(), b) < 5e-2, name


@needs_gpu
def test_cuda_step_and_device_array():
    x, initial = mlstm_inputs(B=2, NH=2, S=1, DQK=16, DV=24, dtype=torch.float32, device="cuda")
    token = [t.detach()[:, :, 0].contiguous() for t in x]
    state = fl.mlstm.State(*(t.detach() for t in initial))
    h, new = fl.mlstm.step(*token, state)
    _, xd, init = cpu_reference(x, initial)
    ref = np_mlstm.step(*(a[:, :, 0].copy() for a in xd), init)
    assert rel(h.cpu().numpy(), ref.h) < 1e-5 and rel(new.C.cpu().numpy(), ref.last.C) < 1e-5
    assert torch.equal(state.C, initial[0].detach()), "step leaves the caller's state as it was"
    # DeviceArray: memory allocated by flashlstm, taken by torch without a copy.
    buf = fl._core.cuda.empty([2, 2, 24], "float32", 0)
    assert buf.shape == (2, 2, 24) and buf.dtype == "float32"
    state2 = [t.clone() for t in state]
    fl._core.cuda.mlstm.step(*token, state2, buf, stream=torch.cuda.current_stream().cuda_stream)
    as_torch = torch.from_dlpack(buf)
    torch.testing.assert_close(as_torch, h)
    assert as_torch.data_ptr() == torch.from_dlpack(buf).data_ptr()


@needs_gpu
def test_cuda_errors():
    x, _ = mlstm_inputs(dtype=torch.float32, device="cuda", state=False)
    with pytest.raises(ValueError, match="k: is on the CPU"):
        fl.mlstm.forward_chunkwise(x[0].detach(), x[1].detach().cpu(), *(t.detach() for t in x[2:]))
    with pytest.raises(ValueError, match="chunk_size: must be a multiple of 64"):
        fl.mlstm.forward_chunkwise(*(t.detach() for t in x), chunk_size=100)
    with pytest.raises(ValueError, match="k: expected dtype float32, got bfloat16"):
        fl.mlstm.forward_chunkwise(x[0].detach(), x[1].detach().bfloat16(), *(t.detach() for t in x[2:]))


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_cuda_packed_sequences_equal_each_alone(dtype):
    """The kernels on packed sequences (offsets as a CUDA tensor; lengths across the chunk size, one
    empty) against the same kernels on each sequence alone, outputs and every gradient."""
    cu = [0, 130, 131, 131, 195, 395]
    x, initial = packed_inputs(device="cuda", dtype=dtype, S=cu[-1], cu=cu, DQK=48, DV=96)
    packed = ft.mlstm(*x, initial, chunk_size=64, cu_seqlens=torch.tensor(cu, device="cuda", dtype=torch.int32))
    h, last = each_alone(x, initial, cu, chunk_size=64)
    leaves = [*x, *initial]
    weights = [torch.randn_like(t) for t in (h, *last)]
    loss = lambda out: sum((a.float() * w.float()).sum() for a, w in zip(out, weights))  # noqa: E731
    g_packed = torch.autograd.grad(loss((packed.h, *packed.last)), leaves)
    g_alone = torch.autograd.grad(loss((h, *last)), leaves)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    names = ["h", "C", "n", "m", "dq", "dk", "dv", "digate", "dfgate", "dC0", "dn0", "dm0"]
    for name, a, b in zip(names, (packed.h, *packed.last, *g_packed), (h, *last, *g_alone)):
        assert rel(a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy()) < tol, name


@needs_gpu
def test_cuda_under_torch_compile():
    x, initial = mlstm_inputs(B=1, NH=2, S=130, DQK=32, DV=64, dtype=torch.float32, device="cuda")

    def loss(*a):
        return ft.mlstm(*a[:5], a[5:], chunk_size=64).h.square().mean()

    args = (*x, *initial)
    compiled = torch.compile(loss, fullgraph=True)
    for a, b in zip(torch.autograd.grad(loss(*args), args), torch.autograd.grad(compiled(*args), args)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def slstm_inputs(cell, B=3, T=50, NH=2, DH=32, seed=3):
    g = torch.Generator().manual_seed(seed)
    Wx = torch.randn(B, T, 4, NH, DH, generator=g, dtype=torch.float64)
    Wx[:, :, 1] += 2.0
    R = torch.randn(4, NH, DH, DH, generator=g, dtype=torch.float64) / DH ** 0.5
    b = 0.5 * torch.randn(4, NH, DH, generator=g, dtype=torch.float64)
    NS = 4 if cell == "slstm" else 2
    initial = torch.randn(NS, B, NH, DH, generator=g, dtype=torch.float64)
    if cell == "slstm":
        initial[2] = initial[2].abs() + 0.5
        initial[1] = torch.tanh(initial[1]) * initial[2]
    return Wx, R, b, initial


def slstm_loss_and_grads(inputs, cell, dh, dlast):
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = ft.slstm(*inputs, cell=cell)
    ((out.h.double() * dh).sum() + (out.last.double() * dlast).sum()).backward()
    return out, [t.grad for t in inputs]


@needs_gpu
@pytest.mark.parametrize("cell", ["slstm", "lstm"])
def test_cuda_slstm_matches_the_reference(cell):
    inputs = slstm_inputs(cell)
    g = torch.Generator().manual_seed(4)
    dh = torch.randn(3, 50, 2, 32, generator=g, dtype=torch.float64)
    dlast = torch.randn(*inputs[3].shape, generator=g, dtype=torch.float64)
    ref, ref_grads = slstm_loss_and_grads(inputs, cell, dh, dlast)
    out, grads = slstm_loss_and_grads([t.float().cuda() for t in inputs], cell, dh.cuda(), dlast.cuda())
    assert out.h.dtype == torch.float32 and out.last.dtype == torch.float32 and out.h.is_cuda
    assert rel(out.h.detach().cpu().double(), ref.h.detach()) < 1e-5
    assert rel(out.last.detach().cpu().double(), ref.last.detach()) < 1e-5
    for name, a, r in zip(("Wx", "R", "b", "initial"), grads, ref_grads):
        assert rel(a.cpu().double(), r.detach()) < 1e-4, name


@needs_gpu
def test_cuda_slstm_bfloat16_step_and_compile():
    Wx, R, b, initial = slstm_inputs("slstm", B=2, T=20, NH=3, DH=16)
    Wx, R, b = (t.to(device="cuda", dtype=torch.bfloat16) for t in (Wx, R, b))
    initial = initial.float().cuda()
    out = ft.slstm(Wx, R, b, initial)
    assert out.h.dtype == torch.bfloat16 and out.last.dtype == torch.float32
    # the numpy API on the same (bf16-representable) inputs: the bf16 kernels multiply bf16 operands
    # (h rounded to bf16 at every step), so they agree to bf16's rounding, not float32's
    ref = fl.slstm.forward(*(t.float().cpu().numpy() for t in (Wx, R, b, initial)))
    assert rel(out.last.cpu().double(), ref.last) < 1e-2
    # the step: from the state before the last step, one step gives the final state; `state` unchanged
    before = fl.slstm.forward(Wx[:, :19].contiguous(), R, b, initial).last
    kept = before.clone()
    after = fl.slstm.step(Wx[:, 19].contiguous(), R, b, before)
    assert torch.equal(before, kept) and rel(after.double().cpu(), out.last.double().cpu()) < 1e-6
    compiled = torch.compile(lambda *a: ft.slstm(*a).h, fullgraph=True)
    assert torch.equal(compiled(Wx, R, b, initial), out.h)
    torch.library.opcheck(torch.ops.flashlstm.slstm_forward.default, (Wx, R, b, initial, "slstm", "sigmoid", True))
