"""The sLSTM (docs/slstm.md) and the classic LSTM cell: CPU reference, forward and exact backward
through time, on numpy arrays (float32 or float64, all of one dtype, never cast; C-contiguous inputs
are read in place, other layouts copied to C-contiguous ones for the call; results are not copied).

Layouts are FlashRNN's: ``Wx`` (B, T, 4, NH, DH) the input projection W x_t, gates in the order
(i, f, z, o); ``R`` (4, NH, DH, DH) with R[g, head, out, in]; ``b`` (4, NH, DH); states
(NS, B, NH, DH) in the order (h, c, n, m) for the sLSTM (NS = 4) and (h, c) for the LSTM (NS = 2);
all states over time (NS, B, T, NH, DH).

Options: ``cell`` "slstm" or "lstm" (PyTorch's cell: i, f, o sigmoid, z tanh, h = o tanh(c)) and,
for the sLSTM, ``forget_gate`` "sigmoid" (log f = logsigmoid(f̃)) or "exp" (log f = f̃).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from . import _core


class Output(NamedTuple):
    states: np.ndarray  # (NS, B, T, NH, DH): the state after each step; states[0] is h
    last: np.ndarray  # (NS, B, NH, DH)
    gates: Optional[np.ndarray] = None  # (B, T, 4, NH, DH): the pre-activations, with keep_gates=True


class Grad(NamedTuple):
    dWx: np.ndarray  # (B, T, 4, NH, DH)
    dR: np.ndarray  # (4, NH, DH, DH)
    db: np.ndarray  # (4, NH, DH)
    dinitial: Optional[np.ndarray]  # (NS, B, NH, DH), when an initial state was given


def num_states(cell: str = "slstm") -> int:
    """4 (h, c, n, m) for the sLSTM, 2 (h, c) for the LSTM."""
    return _core.slstm.num_states(cell)


def forward(Wx: np.ndarray, R: np.ndarray, b: np.ndarray, initial: Optional[np.ndarray] = None, *,
            cell: str = "slstm", forget_gate: str = "sigmoid", keep_gates: bool = False) -> Output:
    """Every state after every step and the final state; ``initial`` None is the zero state.
    ``keep_gates`` also returns the pre-activations, so that ``backward(..., saved=output)`` need not
    run the forward again."""
    return Output(*_core.slstm.forward(Wx, R, b, initial, cell=cell, forget_gate=forget_gate, keep_gates=keep_gates))


def backward(Wx: np.ndarray, R: np.ndarray, b: np.ndarray, dh: np.ndarray, initial: Optional[np.ndarray] = None, *,
             dlast: Optional[np.ndarray] = None, saved: Optional[Output] = None, cell: str = "slstm",
             forget_gate: str = "sigmoid") -> Grad:
    """dWx, dR, db (and the initial state's gradient) from dh (B, T, NH, DH), the gradient of every
    h_t, and optionally dlast (NS, B, NH, DH), the final state's. Exact, the stabiliser included, so a
    backward run in pieces can hand dinitial on as dlast. ``saved``: the Output of
    ``forward(..., keep_gates=True)`` on the same inputs, whose states and gates replace running the
    forward again."""
    if saved is not None and saved.gates is None:
        raise ValueError("saved: the forward output has no gates: call forward with keep_gates=True")
    saved_states, saved_gates = (None, None) if saved is None else (saved.states, saved.gates)
    dWx, dR, db, dinitial = _core.slstm.backward(Wx, R, b, dh, initial, dlast, saved_states=saved_states,
                                                 saved_gates=saved_gates, cell=cell, forget_gate=forget_gate)
    return Grad(dWx, dR, db, dinitial)


def step(Wx_t: np.ndarray, R: np.ndarray, b: np.ndarray, state: np.ndarray, *, cell: str = "slstm",
         forget_gate: str = "sigmoid") -> np.ndarray:
    """One step: Wx_t (B, 4, NH, DH); returns the new state (NS, B, NH, DH), ``state`` is unchanged."""
    return _core.slstm.step(Wx_t, R, b, state, cell=cell, forget_gate=forget_gate)
