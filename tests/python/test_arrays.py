"""The one array helper every binding uses (bindings/src/arrays.hpp): for entry points of each module,
numpy inputs follow numpy's semantics — a strided, transposed, Fortran-ordered, sliced, reversed,
broadcast or unaligned array is copied to a C-contiguous one of the same dtype for the call and
gives exactly the result of its contiguous copy, the caller's array untouched — while a wrong dtype
(never cast), rank or shape raises ValueError naming the argument; float32 and float64 both run,
and results are numpy arrays that own the C++ result without a copy."""

import numpy as np
import pytest

fl = pytest.importorskip("flashlstm")
from flashlstm import graph, mlstm, plstm, slstm  # noqa: E402

DAG = graph.Dag(4, [(0, 1), (1, 2), (1, 3)])
GRID = plstm.GridGates._fields


def mlstm_inputs(r, S=5, DQK=4, DV=3):
    return dict(q=r.standard_normal((1, 2, S, DQK)), k=r.standard_normal((1, 2, S, DQK)),
                v=r.standard_normal((1, 2, S, DV)), igate=r.standard_normal((1, 2, S)),
                fgate=r.standard_normal((1, 2, S)) + 2)


def mlstm_state(r, DQK=4, DV=3):
    return {"initial.C": r.standard_normal((1, 2, DQK, DV)), "initial.n": r.random((1, 2, DQK)),
            "initial.m": r.standard_normal((1, 2))}


def state_of(a, prefix="initial"):
    return mlstm.State(a[f"{prefix}.C"], a[f"{prefix}.n"], a[f"{prefix}.m"])


def token(a):
    return {name: a[name] for name in ("q", "k", "v", "igate", "fgate")}


def grid_inputs(r, X=3, Y=2):
    x = dict(q=r.standard_normal((1, 1, X, Y, 2)), k=r.standard_normal((1, 1, X, Y, 2)),
             v=r.standard_normal((1, 1, X, Y, 3)))
    x.update(zip(GRID, plstm.grid_gates_p_mode(*(r.standard_normal((1, 1, X, Y)) for _ in range(7)))))
    return x


def grid_gates(a):
    return plstm.GridGates(*(a[name] for name in GRID))


def flat(out):
    """The arrays of a result (nested tuples flattened, None left out)."""
    if out is None:
        return []
    if isinstance(out, tuple):
        return [a for part in out for a in flat(part)]
    return [out]


def cases():
    """(name, function, {argument: array}) for entry points of each module; a function takes the
    arguments by name (a state or the grid gates as their parts, e.g. "initial.C") and returns its
    results as a list of arrays (``flat``)."""
    r = np.random.default_rng(0)
    slstm_x = dict(Wx=r.standard_normal((1, 3, 4, 1, 2)), R=r.standard_normal((4, 1, 2, 2)),
                   b=r.standard_normal((4, 1, 2)))
    qkv = lambda: {name: r.standard_normal((1, 1, 4, 2)) for name in "qkv"}  # noqa: E731
    dag_x = dict(qkv(), S=r.random((1, 1, 3)), T=r.random((1, 1, 2)), M=r.random((1, 1, 3)), D=r.random((1, 1, 4)))
    seq_x = dict(qkv(), S=r.random((1, 1, 4)), T=r.random((1, 1, 4)), M=r.random((1, 1, 4)), D=r.random((1, 1, 4)))
    grid_x = grid_inputs(r)
    m = mlstm_inputs(r)
    step = {name: m[name][:, :, 0].copy() for name in m}
    return [
        ("mlstm.forward_chunkwise", lambda a: flat(mlstm.forward_chunkwise(**a, chunk_size=2)), m),
        ("mlstm.forward_recurrent+initial", lambda a: flat(mlstm.forward_recurrent(**token(a), initial=state_of(a))),
         dict(m, **mlstm_state(r))),
        ("mlstm.backward_parallel",
         lambda a: flat(mlstm.backward_parallel(**token(a), dh=a["dh"], initial=state_of(a), dC_last=a["dC_last"],
                                                dm_last=a["dm_last"])),
         dict(m, **mlstm_state(r), dh=r.standard_normal((1, 2, 5, 3)), dC_last=r.standard_normal((1, 2, 4, 3)),
              dm_last=r.standard_normal((1, 2)))),
        ("mlstm.step", lambda a: flat(mlstm.step(**token(a), state=state_of(a, "state"))),
         dict(step, **{f"state.{p}": v for p, v in zip("Cnm", mlstm_state(r).values())})),
        ("slstm.forward", lambda a: flat(slstm.forward(**a)), slstm_x),
        ("slstm.backward", lambda a: flat(slstm.backward(**a)),
         dict(slstm_x, dh=r.standard_normal((1, 3, 1, 2)), initial=r.standard_normal((4, 1, 1, 2)))),
        ("slstm.step", lambda a: flat(slstm.step(**a)),
         dict(Wx_t=slstm_x["Wx"][:, 0].copy(), R=slstm_x["R"], b=slstm_x["b"], state=r.standard_normal((4, 1, 1, 2)))),
        ("plstm.dag_forward", lambda a: flat(plstm.dag_forward(DAG, **a)), dag_x),
        ("plstm.dag_backward", lambda a: flat(plstm.dag_backward(DAG, **a)),
         dict(dag_x, dh=r.standard_normal((1, 1, 4, 2)))),
        ("plstm.sequence_forward", lambda a: flat(plstm.sequence_forward(**a, form="chunkwise", chunk_size=2)), seq_x),
        ("plstm.grid_forward",
         lambda a: flat(plstm.grid_forward(a["q"], a["k"], a["v"], grid_gates(a), form="chunkwise", chunk_size=2)),
         grid_x),
        ("plstm.grid_backward",
         lambda a: flat(plstm.grid_backward(a["q"], a["k"], a["v"], grid_gates(a), a["dh"], chunk_size=2)),
         dict(grid_x, dh=r.standard_normal((1, 1, 3, 2, 3)))),
    ]


CASES = cases()
IDS = [c[0] for c in CASES]


# Layouts: the same values, never C-contiguous (or not aligned) --------------------------------------


def longest_axis(a):
    return max(range(a.ndim), key=lambda d: a.shape[d])


def strided(a):
    """A gap between elements along the longest axis (a[..., ::2] of a larger array)."""
    axis = longest_axis(a)
    index = [slice(None)] * a.ndim
    index[axis] = slice(None, None, 2)
    return np.repeat(a, 2, axis=axis)[tuple(index)]


def transposed(a):
    """Axes permuted in memory: the transpose of a contiguous array with the axes reversed."""
    return np.ascontiguousarray(a.transpose()).transpose()


def fortran(a):
    return np.asfortranarray(a)


def sliced(a):
    """One index of a trailing axis, as x[:, :, 0] takes a token out of a sequence."""
    return np.stack([a, np.full_like(a, np.nan)], axis=-1)[..., 0]


def reversed_(a):
    """Negative strides along the longest axis (np.flip of a contiguous array)."""
    axis = longest_axis(a)
    return np.flip(np.ascontiguousarray(np.flip(a, axis)), axis)


def unaligned(a):
    buffer = np.zeros(a.nbytes + 1, np.uint8)
    out = np.frombuffer(buffer.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    out[...] = a
    return out


LAYOUTS = [strided, transposed, fortran, sliced, reversed_, unaligned]


def test_the_layouts_are_not_c_contiguous_and_keep_the_values():
    a = np.arange(24.0).reshape(2, 3, 4)
    for layout in LAYOUTS:
        b = layout(a)
        assert not (b.flags.c_contiguous and b.flags.aligned), layout.__name__
        assert b.dtype == a.dtype and np.array_equal(b, a), layout.__name__


@pytest.mark.parametrize("layout", LAYOUTS, ids=[f.__name__.rstrip("_") for f in LAYOUTS])
@pytest.mark.parametrize("name,function,args", CASES, ids=IDS)
def test_non_contiguous_inputs_are_copied_and_give_the_same_results(name, function, args, layout):
    expected = function(args)
    for dtype in (np.float64, np.float32):
        contiguous = {k: v.astype(dtype) for k, v in args.items()}
        ref = function(contiguous) if dtype != np.float64 else expected
        # Every argument at once, then each alone.
        for changed in [list(args)] + [[arg] for arg in args]:
            x = dict(contiguous, **{k: layout(contiguous[k]) for k in changed})
            before = {k: x[k].copy() for k in changed}
            out = function(x)
            assert len(out) == len(ref)
            for got, want in zip(out, ref):
                assert got.dtype == dtype and got.flags.c_contiguous
                assert np.array_equal(got, want), f"{changed}: differs from the contiguous inputs' result"
            for k in changed:
                assert np.array_equal(x[k], before[k]), f"{k}: the caller's array was modified"


def test_broadcast_inputs_are_copied():
    """np.broadcast_to gives read-only views with stride 0: copied like any other layout."""
    r = np.random.default_rng(1)
    x = mlstm_inputs(r)
    x["fgate"] = np.broadcast_to(x["fgate"][:, :1], x["fgate"].shape)  # one forget gate for both heads
    assert x["fgate"].strides[1] == 0 and not x["fgate"].flags.writeable
    out = mlstm.forward_chunkwise(**x, chunk_size=2)
    ref = mlstm.forward_chunkwise(**dict(x, fgate=x["fgate"].copy()), chunk_size=2)
    assert np.array_equal(out.h, ref.h)
    Wx, R, b = (r.standard_normal(s) for s in ((1, 3, 4, 1, 2), (4, 1, 2, 2), (4, 1, 2)))
    b0 = np.broadcast_to(np.float64(0.5), b.shape)
    assert np.array_equal(slstm.forward(Wx, R, b0).last, slstm.forward(Wx, R, np.full_like(b, 0.5)).last)


def test_the_step_state_is_read_not_written():
    """The numpy steps return the new state and leave ``state`` as it was; a non-contiguous state is
    therefore copied like any input. (The in-place step of the GPU entry points refuses one:
    test_dlpack.py.)"""
    r = np.random.default_rng(2)
    x = {k: v[:, :, 0] for k, v in mlstm_inputs(r).items()}  # token 0: strided views
    state = mlstm.State(*(fortran(s) for s in state_of(mlstm_state(r))))
    before = [s.copy() for s in state]
    out = mlstm.step(**x, state=state)
    ref = mlstm.step(**{k: v.copy() for k, v in x.items()}, state=mlstm.State(*before))
    assert all(np.array_equal(a, b) for a, b in zip((out.h, *out.last), (ref.h, *ref.last)))
    assert all(np.array_equal(s, b) for s, b in zip(state, before))
    s = transposed(r.standard_normal((4, 1, 1, 2)))
    s_before = s.copy()
    Wx, R, b = (r.standard_normal(shape) for shape in ((1, 3, 4, 1, 2), (4, 1, 2, 2), (4, 1, 2)))
    assert np.array_equal(slstm.step(Wx[:, 0], R, b, s), slstm.step(Wx[:, 0].copy(), R, b, s_before))
    assert np.array_equal(s, s_before)


# Errors ------------------------------------------------------------------------------------------


def first_of(function_args):
    """The argument whose dtype decides float32 or float64 (the others must match it)."""
    return next(iter(function_args))


@pytest.mark.parametrize("name,function,args", CASES, ids=IDS)
def test_float32_and_float64_run_and_results_are_not_copies(name, function, args):
    out64 = function(args)
    out32 = function({k: v.astype(np.float32) for k, v in args.items()})
    assert out64[0].dtype == np.float64 and out32[0].dtype == np.float32
    assert np.allclose(out32[0], out64[0], rtol=1e-4, atol=1e-4)
    assert type(out64[0].base).__name__ == "PyCapsule" and out64[0].flags.c_contiguous


@pytest.mark.parametrize("name,function,args", CASES, ids=IDS)
def test_each_argument_is_checked_by_name(name, function, args):
    first = first_of(args)
    float_names = "float(32 or float)?64"
    for arg, value in args.items():
        expected = float_names if arg == first else "float64"
        for bad, message in [
            (value.astype(np.int32), f"{arg}: expected dtype {expected}, got int32"),
            (strided(value.astype(np.int32)), f"{arg}: expected dtype {expected}, got int32"),
            (value.astype(">f8"), f"{arg}: expected dtype {expected}, got >f8"),  # byte order: not cast either
            (value[None], f"{arg}: expected {value.ndim} dimensions, got {value.ndim + 1}"),
            (fortran(value[None]), f"{arg}: expected {value.ndim} dimensions, got {value.ndim + 1}"),
            (np.array(1.0), rf"{arg}: expected {value.ndim} dimensions, got 0 \(shape \(\)\)"),
        ]:
            with pytest.raises(ValueError, match=message):
                function(dict(args, **{arg: bad}))
        if arg != first:
            for bad in (value.astype(np.float32), strided(value.astype(np.float32))):
                with pytest.raises(ValueError, match=f"{arg}: expected dtype float64, got float32"):
                    function(dict(args, **{arg: bad}))


@pytest.mark.parametrize("name,function,args", CASES, ids=IDS)
def test_a_wrong_shape_is_named_in_any_layout(name, function, args):
    first = first_of(args)
    for arg, value in args.items():
        if arg in (first, "v"):  # q and v set the sizes the others are checked against
            continue
        bigger = np.concatenate([value, value[..., :1]], axis=-1)  # one more along the last axis
        for layout in (np.ascontiguousarray, strided, fortran):
            with pytest.raises(ValueError, match=f"{arg}: expected shape"):
                function(dict(args, **{arg: layout(bigger)}))


def test_only_numpy_arrays_are_taken():
    x = mlstm_inputs(np.random.default_rng(3))
    with pytest.raises(TypeError):
        mlstm.forward_recurrent(**dict(x, q=x["q"].tolist()))  # a list is not converted (nor cast)
