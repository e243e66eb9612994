"""The GPU entry points' argument handling, without a GPU: FakeCudaArray (helpers.py) hands out
DLPack capsules that claim a CUDA device, so the consumer (device, dtype, shape, strides,
read-only outputs, the stream passed to __dlpack__, releasing every capsule) is checked in every
build; the launch itself then fails cleanly (no CUDA in the build, or no device)."""

import numpy as np
import pytest

fl = pytest.importorskip("flashlstm")
from flashlstm import _core, mlstm  # noqa: E402

from helpers import CPU, CUDA, FakeCudaArray  # noqa: E402

cuda = _core.cuda.mlstm
B, NH, S, DQK, DV = 1, 2, 8, 4, 6


def arrays(dtype="float32", **override):
    shapes = dict(q=(B, NH, S, DQK), k=(B, NH, S, DQK), v=(B, NH, S, DV), igate=(B, NH, S), fgate=(B, NH, S),
                  h=(B, NH, S, DV))
    out = {name: FakeCudaArray(shape, dtype) for name, shape in shapes.items()}
    out.update(override)
    return out


def forward(a, **kwargs):
    cuda.forward_chunkwise(a["q"], a["k"], a["v"], a["igate"], a["fgate"], a.get("initial"), a["h"], a.get("last"),
                           **kwargs)


LAUNCH_FAILS = (RuntimeError, ValueError)  # no CUDA in the build / no device, or host memory refused


def released(a):
    """Every capsule handed out was consumed and released exactly once."""
    for x in a.values():
        for y in (x if isinstance(x, tuple) else (x,)):
            assert y.deleted == len(y.streams), f"{y.shape}: {len(y.streams)} capsules, {y.deleted} released"


def test_a_valid_call_gets_through_the_checks_and_passes_the_stream():
    a = arrays("bfloat16")
    with pytest.raises(LAUNCH_FAILS) as failure:
        forward(a, stream=7)
    message = str(failure.value)
    assert ("built without CUDA" in message or "CUDA" in message or "device" in message), message
    assert all(x.streams == [7] for x in a.values())
    released(a)


@pytest.mark.parametrize("stream,expected", [(None, 1), (0, 1), (2, 2)])
def test_default_streams_follow_the_protocol(stream, expected):
    a = arrays()
    with pytest.raises(LAUNCH_FAILS):
        forward(a, stream=stream)
    assert a["q"].streams == [expected]


@pytest.mark.parametrize("override,message", [
    (dict(q=np.zeros((B, NH, S, DQK), np.float32)), "q: is on the CPU; the CUDA kernels need an array on a CUDA device"),
    (dict(k=object()), "k: expected an array with __dlpack__ and __dlpack_device__"),
    (dict(q=FakeCudaArray((B, NH, S, DQK), "float16")), "q: expected dtype float32 or bfloat16, got float16"),
    (dict(k=FakeCudaArray((B, NH, S, DQK), "bfloat16")), "k: expected dtype float32, got bfloat16"),
    (dict(v=FakeCudaArray((B, NH, S))), r"v: expected shape \(B, NH, S, DV\), got 3 dimensions"),
    (dict(k=FakeCudaArray((B, NH, S, DQK + 1))), r"k: expected shape \(B, NH, S, DQK\) = \(1, 2, 8, 4\), got \(1, 2, 8, 5\)"),
    (dict(igate=FakeCudaArray((B, NH, S + 1))), r"igate: expected shape \(B, NH, S\) = \(1, 2, 8\)"),
    (dict(h=FakeCudaArray((B, NH, S, DV), strides=(NH * S * DV, S * DV, 1, S))), "h: expected a C-contiguous array"),
    (dict(fgate=FakeCudaArray((B, NH, S), device=(CUDA, 1))), "fgate: is on cuda:1, expected cuda:0"),
    (dict(k=FakeCudaArray((B, NH, S, DQK), device=(CUDA, 0), capsule_device=(CPU, 0))), "k: is on the CPU"),
    (dict(h=FakeCudaArray((B, NH, S, DV), read_only=True)), "h: is read-only, but is an output"),
])
def test_bad_arguments_are_named(override, message):
    a = arrays(**override)
    with pytest.raises(ValueError, match=message):
        forward(a)
    released({k: v for k, v in a.items() if isinstance(v, FakeCudaArray)})


def test_states_are_float32_of_the_right_shape():
    bf16_C = FakeCudaArray((B, NH, DQK, DV), "bfloat16")
    initial = (bf16_C, FakeCudaArray((B, NH, DQK)), FakeCudaArray((B, NH)))
    with pytest.raises(ValueError, match="initial.C: expected dtype float32, got bfloat16"):
        forward(arrays("bfloat16", initial=initial))
    last = (FakeCudaArray((B, NH, DQK, DV)), FakeCudaArray((B, NH, DV)), FakeCudaArray((B, NH)))
    with pytest.raises(ValueError, match=r"last.n: expected shape \(B, NH, DQK\) = \(1, 2, 4\)"):
        forward(arrays(last=last))
    state = (FakeCudaArray((B, NH, DQK, DV)), FakeCudaArray((B, NH, DQK)), FakeCudaArray((B, NH, 1)))
    token = dict(q=(B, NH, DQK), k=(B, NH, DQK), v=(B, NH, DV), igate=(B, NH), fgate=(B, NH))
    t = {name: FakeCudaArray(shape) for name, shape in token.items()}
    with pytest.raises(ValueError, match=r"state.m: expected shape \(B, NH\) = \(1, 2\)"):
        cuda.step(t["q"], t["k"], t["v"], t["igate"], t["fgate"], state, FakeCudaArray((B, NH, DV)))


def test_backward_arguments_are_checked():
    a = arrays()
    grads = {name: FakeCudaArray(a[name].shape) for name in ("q", "k", "v", "igate", "fgate")}
    with pytest.raises(ValueError, match=r"dm_last: expected shape \(B, NH\)"):
        cuda.backward_chunkwise(a["q"], a["k"], a["v"], a["igate"], a["fgate"], None, FakeCudaArray((B, NH, S, DV)),
                                None, None, FakeCudaArray((B, NH, 3)), *grads.values(), None)
    with pytest.raises(ValueError, match=r"dk: expected shape \(B, NH, S, DQK\)"):
        cuda.backward_chunkwise(a["q"], a["k"], a["v"], a["igate"], a["fgate"], None, FakeCudaArray((B, NH, S, DV)),
                                None, None, None, grads["q"], FakeCudaArray((B, NH, S, DV)), grads["v"], grads["igate"],
                                grads["fgate"], None)


def test_python_layer_routes_gpu_arrays_and_says_why_it_cannot_run():
    a = arrays()
    if not fl.built_with_cuda:
        message = "built without CUDA"
    elif not fl.cuda_available():
        message = "no CUDA device"
    else:
        pytest.skip("a GPU is visible: test_torch.py runs the kernels")
    with pytest.raises(RuntimeError, match=message):
        mlstm.forward(a["q"], a["k"], a["v"], a["igate"], a["fgate"])
    with pytest.raises(RuntimeError, match=message):
        mlstm.step(a["q"], a["k"], a["v"], a["igate"], a["fgate"], mlstm.State(None, None, None))


def test_gpu_arrays_take_only_the_chunkwise_form():
    if not (fl.built_with_cuda and fl.cuda_available()):
        pytest.skip("needs a GPU")
    a = arrays()
    with pytest.raises(ValueError, match="form: the CUDA kernels implement 'chunkwise'"):
        mlstm.forward(a["q"], a["k"], a["v"], a["igate"], a["fgate"], form="parallel")


def gapped_strides(shape):
    """Element strides of a[..., ::2] for an array `a` of `shape` with a last axis twice as long."""
    strides, acc = [], 2
    for extent in reversed(shape):
        strides.insert(0, acc)
        acc *= extent
    return tuple(strides)


@pytest.mark.parametrize("part,shape", [("C", (B, NH, DQK, DV)), ("n", (B, NH, DQK)), ("m", (B, NH))])
def test_states_written_in_place_are_never_copied(part, shape):
    """Unlike numpy inputs (copied when not C-contiguous), arrays the kernels write into — the state of
    step and forward_sequence, the outputs — must be C-contiguous: a copy would lose the writes."""
    def state(**override):
        parts = dict(C=FakeCudaArray((B, NH, DQK, DV)), n=FakeCudaArray((B, NH, DQK)), m=FakeCudaArray((B, NH)))
        parts.update(override)
        return parts["C"], parts["n"], parts["m"]

    bad = {part: FakeCudaArray(shape, strides=gapped_strides(shape))}
    message = f"state.{part}: expected a C-contiguous array"
    t = {name: FakeCudaArray(s) for name, s in dict(q=(B, NH, DQK), k=(B, NH, DQK), v=(B, NH, DV), igate=(B, NH),
                                                        fgate=(B, NH)).items()}
    with pytest.raises(ValueError, match=message):
        cuda.step(t["q"], t["k"], t["v"], t["igate"], t["fgate"], state(**bad), FakeCudaArray((B, NH, DV)))
    a = arrays()
    with pytest.raises(ValueError, match=message):
        cuda.forward_sequence(a["q"], a["k"], a["v"], a["igate"], a["fgate"], state(**bad), a["h"])
    with pytest.raises(ValueError, match=f"last.{part}: expected a C-contiguous array"):
        forward(arrays(last=state(**bad)))
