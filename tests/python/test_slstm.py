"""flashlstm.slstm against a numpy transcription of docs/slstm.md (sLSTM, both forget gates) and of
the classic LSTM cell, gradients by finite differences, the step, and argument errors."""

import numpy as np
import pytest

fl = pytest.importorskip("flashlstm")
from flashlstm import slstm  # noqa: E402

from helpers import check_gradients, rel, rng  # noqa: E402

OPTIONS = [dict(cell="slstm", forget_gate="sigmoid"), dict(cell="slstm", forget_gate="exp"), dict(cell="lstm")]
IDS = ["slstm", "slstm-expf", "lstm"]


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def oracle(Wx, R, b, initial=None, cell="slstm", forget_gate="sigmoid"):
    B, T, _, NH, DH = Wx.shape
    NS = 4 if cell == "slstm" else 2
    state = np.zeros((NS, B, NH, DH)) if initial is None else initial.astype(np.float64).copy()
    states = np.zeros((NS, B, T, NH, DH))
    for t in range(T):
        h = state[0]
        pre = Wx[:, t] + np.einsum("ghoi,bhi->bgho", R, h) + b[None]  # (B, 4, NH, DH)
        i, f, z, o = (pre[:, g] for g in range(4))
        if cell == "lstm":
            c = sigmoid(f) * state[1] + sigmoid(i) * np.tanh(z)
            state = np.stack([sigmoid(o) * np.tanh(c), c])
        else:
            c, n, m = state[1], state[2], state[3]
            logf = f if forget_gate == "exp" else np.minimum(f, 0) - np.log1p(np.exp(-np.abs(f)))
            m_new = np.where(n == 0, i, np.maximum(logf + m, i))
            fp, ip = np.exp(logf + m - m_new), np.exp(i - m_new)
            c, n = fp * c + ip * np.tanh(z), fp * n + ip
            state = np.stack([sigmoid(o) * c / n, c, n, m_new])
        states[:, :, t] = state
    return states, state


def problem(cell="slstm", B=2, T=9, NH=2, DH=5, seed=0, with_state=False):
    r = rng(seed)
    Wx = r.standard_normal((B, T, 4, NH, DH))
    R = 0.3 * r.standard_normal((4, NH, DH, DH))
    b = r.standard_normal((4, NH, DH))
    initial = None
    if with_state:
        initial = r.standard_normal((slstm.num_states(cell), B, NH, DH))
        if cell == "slstm":
            initial[2] = np.abs(initial[2]) + 0.5  # n > 0
    return Wx, R, b, initial


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
@pytest.mark.parametrize("with_state", [False, True], ids=["zero", "state"])
def test_forward_equals_numpy_oracle(options, with_state):
    Wx, R, b, initial = problem(options["cell"], with_state=with_state)
    out = slstm.forward(Wx, R, b, initial, **options)
    states, last = oracle(Wx, R, b, initial, **options)
    assert rel(out.states, states) < 1e-12 and rel(out.last, last) < 1e-12


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_gradients_match_finite_differences(options):
    Wx, R, b, initial = problem(options["cell"], B=1, T=6, DH=3, with_state=True, seed=3)
    r = rng(4)
    w_h = r.standard_normal((Wx.shape[0], Wx.shape[1], Wx.shape[3], Wx.shape[4]))
    w_last = r.standard_normal(initial.shape)

    def loss(x):
        out = slstm.forward(x["Wx"], x["R"], x["b"], x["initial"], **options)
        return np.sum(w_h * out.states[0]) + np.sum(w_last * out.last)

    g = slstm.backward(Wx, R, b, w_h, initial, dlast=w_last, **options)
    check_gradients(loss, dict(Wx=Wx, R=R, b=b, initial=initial),
                    dict(Wx=g.dWx, R=g.dR, b=g.db, initial=g.dinitial))


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_step_reproduces_the_sequence(options):
    Wx, R, b, _ = problem(options["cell"], T=5, seed=5)
    out = slstm.forward(Wx, R, b, **options)
    state = np.zeros_like(out.last)
    for t in range(Wx.shape[1]):
        previous = state.copy()
        new = slstm.step(Wx[:, t], R, b, state, **options)
        assert np.array_equal(state, previous)
        state = new
        assert rel(state, out.states[:, :, t]) < 1e-12


def test_float32_runs_and_dinitial_absent_without_state():
    Wx, R, b, _ = problem()
    out = slstm.forward(Wx.astype(np.float32), R.astype(np.float32), b.astype(np.float32))
    assert out.states.dtype == np.float32
    ref = slstm.forward(Wx, R, b)
    assert rel(out.states, ref.states) < 1e-5
    g = slstm.backward(Wx, R, b, np.ones((2, 9, 2, 5)))
    assert g.dinitial is None and g.dR.shape == R.shape


def test_errors_name_the_argument():
    Wx, R, b, _ = problem()
    with pytest.raises(ValueError, match=r"R: expected shape \(4, 2, 5, 5\)"):
        slstm.forward(Wx, R[:, :, :4].copy(), b)
    with pytest.raises(ValueError, match="b: expected dtype float64, got float32"):
        slstm.forward(Wx, R, b.astype(np.float32))
    with pytest.raises(ValueError, match="Wx: expected 5 dimensions"):
        slstm.forward(Wx[0], R, b)
    with pytest.raises(ValueError, match="cell: expected one of 'slstm', 'lstm', got 'gru'"):
        slstm.forward(Wx, R, b, cell="gru")
    with pytest.raises(ValueError, match="forget_gate"):
        slstm.forward(Wx, R, b, forget_gate="tanh")
    with pytest.raises(ValueError, match=r"initial: expected shape \(2, 2, 2, 5\)"):
        slstm.forward(Wx, R, b, np.zeros((4, 2, 2, 5)), cell="lstm")
    with pytest.raises(ValueError, match="dh: expected shape"):
        slstm.backward(Wx, R, b, np.zeros((2, 9, 2, 4)))
    with pytest.raises(ValueError, match="b: expected dtype float64, got float32"):
        slstm.forward(Wx, R, np.zeros((4, 2, 10), np.float32)[..., ::2])  # strided: copied, never cast


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_backward_from_the_saved_forward_equals_the_rerun(options):
    Wx, R, b, initial = problem(options["cell"], seed=5, with_state=True)
    dh = rng(6).standard_normal((2, 9, 2, 5))
    out = slstm.forward(Wx, R, b, initial, keep_gates=True, **options)
    assert out.gates.shape == Wx.shape
    assert slstm.forward(Wx, R, b, initial, **options).gates is None
    rerun = slstm.backward(Wx, R, b, dh, initial, **options)
    saved = slstm.backward(Wx, R, b, dh, initial, saved=out, **options)
    for name in ("dWx", "dR", "db", "dinitial"):
        assert rel(getattr(saved, name), getattr(rerun, name)) < 1e-13, name
    with pytest.raises(ValueError, match="saved: the forward output has no gates"):
        slstm.backward(Wx, R, b, dh, initial, saved=slstm.forward(Wx, R, b, initial, **options), **options)
    with pytest.raises(ValueError, match=r"saved.gates: expected shape \(2, 9, 4, 2, 5\)"):
        slstm.backward(Wx, R, b, dh, initial, saved=out._replace(gates=out.gates[:, :8].copy()), **options)
