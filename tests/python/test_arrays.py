"""The one array helper every binding uses: for a function of each module, a wrong dtype, rank,
layout or alignment raises ValueError naming the argument, float32 and float64 both run, and
results are numpy arrays that own the C++ result without a copy."""

import numpy as np
import pytest

fl = pytest.importorskip("flashlstm")
from flashlstm import graph, mlstm, plstm, slstm  # noqa: E402

DAG = graph.Dag(4, [(0, 1), (1, 2), (1, 3)])


def cases():
    """(name, function, {argument: array}) for one entry point of each module."""
    r = np.random.default_rng(0)
    return [
        ("mlstm", lambda a: mlstm.forward_chunkwise(**a, chunk_size=2),
         dict(q=r.standard_normal((1, 2, 5, 4)), k=r.standard_normal((1, 2, 5, 4)), v=r.standard_normal((1, 2, 5, 3)),
              igate=r.standard_normal((1, 2, 5)), fgate=r.standard_normal((1, 2, 5)))),
        ("slstm", lambda a: slstm.forward(**a),
         dict(Wx=r.standard_normal((1, 3, 4, 1, 2)), R=r.standard_normal((4, 1, 2, 2)), b=r.standard_normal((4, 1, 2)))),
        ("plstm.dag", lambda a: plstm.dag_forward(DAG, **a),
         dict(q=r.standard_normal((1, 1, 4, 2)), k=r.standard_normal((1, 1, 4, 2)), v=r.standard_normal((1, 1, 4, 2)),
              S=r.random((1, 1, 3)), T=r.random((1, 1, 2)), M=r.random((1, 1, 3)), D=r.random((1, 1, 4)))),
        ("plstm.sequence", lambda a: plstm.sequence_forward(**a, form="chunkwise", chunk_size=2),
         dict(q=r.standard_normal((1, 1, 4, 2)), k=r.standard_normal((1, 1, 4, 2)), v=r.standard_normal((1, 1, 4, 2)),
              S=r.random((1, 1, 4)), T=r.random((1, 1, 4)), M=r.random((1, 1, 4)), D=r.random((1, 1, 4)))),
    ]


CASES = cases()
IDS = [c[0] for c in CASES]


def strided(a):
    """The same values with a gap between elements along an axis longer than 1."""
    axis = max(range(a.ndim), key=lambda d: a.shape[d])
    index = [slice(None)] * a.ndim
    index[axis] = slice(None, None, 2)
    return np.repeat(a, 2, axis=axis)[tuple(index)]


def unaligned(a):
    buffer = np.zeros(a.nbytes + 1, np.uint8)
    out = np.frombuffer(buffer.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    out[...] = a
    return out


@pytest.mark.parametrize("name,function,args", CASES, ids=IDS)
def test_float32_and_float64_run_and_results_are_not_copies(name, function, args):
    out64 = function(args)
    out32 = function({k: v.astype(np.float32) for k, v in args.items()})
    first64 = out64[0] if isinstance(out64, tuple) else out64
    first32 = out32[0] if isinstance(out32, tuple) else out32
    assert first64.dtype == np.float64 and first32.dtype == np.float32
    assert np.allclose(first32, first64, rtol=1e-4, atol=1e-4)
    assert type(first64.base).__name__ == "PyCapsule" and first64.flags.c_contiguous


@pytest.mark.parametrize("name,function,args", CASES, ids=IDS)
def test_each_argument_is_checked_by_name(name, function, args):
    first = next(iter(args))
    for arg, value in args.items():
        for bad, message in [
            (value.astype(np.int32), f"{arg}: expected dtype float(32 or float)?64, got int32"),
            (value[None], f"{arg}: expected {value.ndim} dimensions, got {value.ndim + 1}"),
            (strided(value), f"{arg}: expected a C-contiguous array"),
            (unaligned(value), f"{arg}: is not aligned"),
        ]:
            with pytest.raises(ValueError, match=message):
                function(dict(args, **{arg: bad}))
        if arg != first:
            with pytest.raises(ValueError, match=f"{arg}: expected dtype float64, got float32"):
                function(dict(args, **{arg: value.astype(np.float32)}))
