"""flashlstm.mlstm against an independent numpy transcription of the recurrence of docs/mlstm.md, across
forms, variants, dtypes and state passing, with gradients checked by finite differences through the
Python API."""

import numpy as np
import pytest

fl = pytest.importorskip("flashlstm")
from flashlstm import mlstm  # noqa: E402

from helpers import check_gradients, rel, rng  # noqa: E402

VARIANTS = [dict(input_gate="exp"), dict(input_gate="sig"), dict(input_gate="sig", normalize=False)]


def logsigmoid(x):
    return np.minimum(x, 0) - np.log1p(np.exp(-np.abs(x)))


def oracle(q, k, v, igate, fgate, initial=None, input_gate="exp", normalize=True, eps=1e-6):
    """The recurrence of docs/mlstm.md, token by token, in float64."""
    B, NH, S, DQK = q.shape
    DV = v.shape[-1]
    C = np.zeros((B, NH, DQK, DV)) if initial is None else initial[0].astype(np.float64).copy()
    n = np.zeros((B, NH, DQK)) if initial is None else initial[1].astype(np.float64).copy()
    m = np.zeros((B, NH)) if initial is None else initial[2].astype(np.float64).copy()
    h = np.zeros((B, NH, S, DV))
    for t in range(S):
        logf = logsigmoid(fgate[:, :, t])
        if input_gate == "exp":
            m_new = np.maximum(logf + m, igate[:, :, t])
            fp, ip = np.exp(logf + m - m_new), np.exp(igate[:, :, t] - m_new)
            m = m_new
        else:  # m_t = 0: an initial state's m0 enters through the first forget gate
            fp, ip = np.exp(logf + m), np.exp(logsigmoid(igate[:, :, t]))
            m = np.zeros_like(m)
        C = fp[..., None, None] * C + ip[..., None, None] * k[:, :, t, :, None] * v[:, :, t, None, :]
        n = fp[..., None] * n + ip[..., None] * k[:, :, t]
        qh = q[:, :, t] / np.sqrt(DQK)
        num = np.einsum("bhd,bhde->bhe", qh, C)
        if input_gate == "sig" and not normalize:
            h[:, :, t] = num
            continue
        floor = np.exp(-m) if input_gate == "exp" else 1.0
        den = np.maximum(np.abs(np.einsum("bhd,bhd->bh", qh, n)), floor) + eps
        h[:, :, t] = num / den[..., None]
    return h, (C, n, m)


def problem(B=2, NH=2, S=23, DQK=8, DV=12, seed=0, state=False, dtype=np.float64):
    r = rng(seed)
    x = dict(q=r.standard_normal((B, NH, S, DQK)), k=r.standard_normal((B, NH, S, DQK)),
             v=r.standard_normal((B, NH, S, DV)), igate=r.standard_normal((B, NH, S)),
             fgate=r.standard_normal((B, NH, S)) + 2.0)
    x = {key: val.astype(dtype) for key, val in x.items()}
    initial = None
    if state:
        initial = mlstm.State(r.standard_normal((B, NH, DQK, DV)).astype(dtype),
                              r.standard_normal((B, NH, DQK)).astype(dtype),
                              r.standard_normal((B, NH)).astype(dtype))
    return x, initial


@pytest.mark.parametrize("variant", VARIANTS, ids=["exp", "sig", "sig-nonorm"])
@pytest.mark.parametrize("state", [False, True], ids=["zero", "state"])
def test_recurrent_equals_numpy_oracle(variant, state):
    x, initial = problem(state=state)
    out = mlstm.forward_recurrent(**x, initial=initial, **variant)
    h, (C, n, m) = oracle(**x, initial=initial, **variant)
    assert rel(out.h, h) < 1e-12
    assert rel(out.last.C, C) < 1e-12 and rel(out.last.n, n) < 1e-12
    assert np.allclose(out.last.m, m, atol=1e-12)
    assert out.h.dtype == np.float64 and out.h.shape == x["v"].shape


@pytest.mark.parametrize("variant", VARIANTS, ids=["exp", "sig", "sig-nonorm"])
@pytest.mark.parametrize("form", ["parallel", "chunkwise-1", "chunkwise-5", "chunkwise-64"])
def test_forms_agree_with_the_oracle(variant, form):
    x, initial = problem(S=37, state=True, seed=3)
    ref = mlstm.forward_recurrent(**x, initial=initial, **variant)
    if form == "parallel":
        out = mlstm.forward_parallel(**x, initial=initial, **variant)
    else:
        out = mlstm.forward_chunkwise(**x, initial=initial, chunk_size=int(form.split("-")[1]), **variant)
    assert rel(out.h, ref.h) < 1e-10
    for a, b in zip(out.last, ref.last):
        assert rel(a, b) < 1e-10 or np.allclose(a, b, atol=1e-12)


def test_float32_follows_float64():
    x64, _ = problem(S=64, seed=5)
    x32 = {k: v.astype(np.float32) for k, v in x64.items()}
    out32 = mlstm.forward_chunkwise(**x32, chunk_size=16)
    out64 = mlstm.forward_recurrent(**x64)
    assert out32.h.dtype == np.float32 and out32.last.C.dtype == np.float32
    assert rel(out32.h, out64.h) < 1e-5


def test_state_passing_equals_the_whole_run():
    x, initial = problem(S=40, state=True, seed=7)
    whole = mlstm.forward_chunkwise(**x, initial=initial, chunk_size=8)
    first = {k: v[:, :, :15] for k, v in x.items()}
    second = {k: v[:, :, 15:] for k, v in x.items()}
    a = mlstm.forward_parallel(**first, initial=initial)
    b = mlstm.forward_chunkwise(**second, initial=a.last, chunk_size=4)
    assert rel(np.concatenate([a.h, b.h], axis=2), whole.h) < 1e-12
    for u, w in zip(b.last, whole.last):
        assert np.allclose(u, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS, ids=["exp", "sig", "sig-nonorm"])
def test_step_reproduces_the_sequence(variant):
    x, initial = problem(S=6, state=True, seed=9)
    ref = mlstm.forward_recurrent(**x, initial=initial, **variant)
    state = initial
    before = [s.copy() for s in initial]
    for t in range(6):
        token = {k: v[:, :, t] for k, v in x.items()}
        h, state = mlstm.step(**token, state=state, **variant)
        assert rel(h, ref.h[:, :, t]) < 1e-12
    for s, b in zip(initial, before):
        assert np.array_equal(s, b), "step must leave the caller's state as it was"
    for a, b in zip(state, ref.last):
        assert np.allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS, ids=["exp", "sig", "sig-nonorm"])
@pytest.mark.parametrize("form,chunk_size", [("recurrent", 0), ("parallel", 0), ("chunkwise", 4)])
def test_gradients_match_finite_differences(variant, form, chunk_size):
    x, initial = problem(B=1, NH=2, S=11, DQK=4, DV=5, state=True, seed=11)
    r = rng(12)
    w_h = r.standard_normal(x["v"].shape)
    w_C, w_n, w_m = (r.standard_normal(s.shape) for s in initial)
    names = list(x) + ["C0", "n0", "m0"]
    values = dict(x, C0=initial.C, n0=initial.n, m0=initial.m)

    def loss(inp):
        out = mlstm.forward(*(inp[k] for k in x), mlstm.State(inp["C0"], inp["n0"], inp["m0"]), form=form,
                            chunk_size=chunk_size, **variant)
        total = np.sum(w_h * out.h) + np.sum(w_C * out.last.C) + np.sum(w_n * out.last.n)
        return total + (np.sum(w_m * out.last.m) if variant["input_gate"] == "exp" else 0.0)

    g = mlstm.backward(**x, dh=w_h, initial=initial, dC_last=w_C, dn_last=w_n,
                       dm_last=w_m if variant["input_gate"] == "exp" else None, form=form, chunk_size=chunk_size,
                       **variant)
    grads = dict(q=g.dq, k=g.dk, v=g.dv, igate=g.digate, fgate=g.dfgate, C0=g.dinitial.C, n0=g.dinitial.n,
                 m0=g.dinitial.m)
    check_gradients(loss, values, {k: grads[k] for k in names})


def test_backward_forms_agree_and_dinitial_is_absent_without_a_state():
    x, _ = problem(S=20, seed=13)
    dh = rng(14).standard_normal(x["v"].shape)
    ref = mlstm.backward_recurrent(**x, dh=dh)
    assert ref.dinitial is None
    for g in (mlstm.backward_parallel(**x, dh=dh), mlstm.backward_chunkwise(**x, dh=dh, chunk_size=6)):
        for a, b in zip(g[:5], ref[:5]):
            assert rel(a, b) < 1e-10


def test_outputs_own_their_memory_without_a_copy():
    x, _ = problem()
    out = mlstm.forward_recurrent(**x)
    # The result array wraps the C++ tensor (a capsule owns it): writable, C-contiguous, not a numpy copy.
    assert out.h.flags.c_contiguous and out.h.flags.writeable and not out.h.flags.owndata
    assert type(out.h.base).__name__ == "PyCapsule"
    out.h[...] = 0


# Errors -------------------------------------------------------------------------------------------


def call(**changes):
    x, _ = problem(S=5)
    x.update(changes)
    return mlstm.forward_recurrent(**x)


@pytest.mark.parametrize("changes,message", [
    (dict(q=np.zeros((2, 2, 5, 8), np.int64)), "q: expected dtype float32 or float64, got int64"),
    (dict(q=np.zeros((2, 2, 5, 8), np.float16)), "q: expected dtype float32 or float64, got float16"),
    (dict(k=np.zeros((2, 2, 5, 8), np.float32)), "k: expected dtype float64, got float32"),
    (dict(v=np.zeros((2, 2, 5, 12, 1))), "v: expected 4 dimensions, got 5"),
    (dict(igate=np.zeros((2, 2)),), "igate: expected 3 dimensions, got 2"),
    (dict(k=np.zeros((2, 2, 5, 7))), r"k: expected shape \(2, 2, 5, 8\), got \(2, 2, 5, 7\)"),
    (dict(fgate=np.zeros((2, 2, 10), np.float32)[:, :, ::2]), "fgate: expected dtype float64, got float32"),
    (dict(k=np.asfortranarray(np.zeros((2, 2, 5, 7)))), r"k: expected shape \(2, 2, 5, 8\), got \(2, 2, 5, 7\)"),
])
def test_bad_arrays_raise_value_error_naming_the_argument(changes, message):
    with pytest.raises(ValueError, match=message):
        call(**changes)


def test_bad_options_and_states():
    x, initial = problem(S=5, state=True)
    with pytest.raises(ValueError, match="input_gate: expected one of 'exp', 'sig', got 'tanh'"):
        mlstm.forward_recurrent(**x, input_gate="tanh")
    with pytest.raises(ValueError, match="form: expected one of"):
        mlstm.forward(**x, form="quadratic")
    with pytest.raises(ValueError, match="chunk_size"):
        mlstm.forward_chunkwise(**x, chunk_size=0)
    with pytest.raises(ValueError, match="eps"):
        mlstm.forward_recurrent(**x, eps=-1.0)
    with pytest.raises(ValueError, match="normalize"):
        mlstm.forward_recurrent(**x, input_gate="exp", normalize=False)
    with pytest.raises(ValueError, match=r"initial.n: expected shape"):
        mlstm.forward_recurrent(**x, initial=mlstm.State(initial.C, initial.n[:, :, :3].copy(), initial.m))
    with pytest.raises(ValueError, match="initial.m: expected dtype float64, got float32"):
        mlstm.forward_recurrent(**x, initial=mlstm.State(initial.C, initial.n, initial.m.astype(np.float32)))
    with pytest.raises(ValueError, match=r"dh: expected shape"):
        mlstm.backward_recurrent(**x, dh=np.zeros((1, 1, 1, 1)))
    with pytest.raises(TypeError):
        mlstm.forward_recurrent(**dict(x, q=[[1.0]]))  # numpy arrays only


@pytest.mark.parametrize("variant", VARIANTS, ids=["exp", "sig", "sig-nonorm"])
def test_packed_sequences_equal_each_sequence_alone(variant):
    cu = np.array([0, 5, 5, 17, 40], dtype=np.int32)  # lengths 5, 0, 12, 23
    x, _ = problem(B=1, S=40, seed=7)
    _, states = problem(B=4, S=1, seed=8, state=True)
    out = mlstm.forward(**x, initial=states, form="chunkwise", chunk_size=8, cu_seqlens=cu, **variant)
    dh = rng(9).standard_normal(out.h.shape)
    g = mlstm.backward(**x, dh=dh, initial=states, form="chunkwise", chunk_size=8, cu_seqlens=cu, **variant)
    for i in range(4):
        t0, t1 = cu[i], cu[i + 1]
        init_i = tuple(s[i:i + 1] for s in states)
        if t0 == t1:  # no tokens: the initial state is the final state
            assert np.array_equal(out.last.C[i:i + 1], init_i[0])
            continue
        xi = {key: val[:, :, t0:t1] for key, val in x.items()}
        h, (C, n, m) = oracle(**xi, initial=init_i, **variant)
        assert rel(out.h[:, :, t0:t1], h) < 1e-12
        assert rel(out.last.C[i:i + 1], C) < 1e-12
        alone = mlstm.backward(**{k: np.ascontiguousarray(v) for k, v in xi.items()},
                               dh=np.ascontiguousarray(dh[:, :, t0:t1]), initial=mlstm.State(*init_i),
                               form="recurrent", **variant)
        assert rel(g.dq[:, :, t0:t1], alone.dq) < 1e-10 and rel(g.dfgate[:, :, t0:t1], alone.dfgate) < 1e-10
        assert rel(g.dinitial.C[i:i + 1], alone.dinitial.C) < 1e-10


def test_packed_sequences_bad_offsets():
    x, _ = problem(B=1, S=10)
    with pytest.raises(ValueError, match="cu_seqlens: must end at the number of tokens 10"):
        mlstm.forward(**x, cu_seqlens=[0, 4, 9])
    with pytest.raises(ValueError, match="cu_seqlens: expected a 1-D array of integer offsets"):
        mlstm.forward(**x, cu_seqlens=[0.0, 10.0])
    x2, _ = problem(B=2, S=10)
    with pytest.raises(ValueError, match="q: packed sequences take B = 1"):
        mlstm.forward(**x2, cu_seqlens=[0, 10])
