"""The sLSTM (docs/slstm.md) and the classic LSTM cell: CPU reference, forward and exact backward
through time, on numpy arrays (float32 or float64, all of one dtype, never cast; C-contiguous inputs
are read in place, other layouts copied to C-contiguous ones for the call; results are not copied).

Layouts are FlashRNN's: ``Wx`` (B, T, 4, NH, DH) the input projection W x_t, gates in the order
(i, f, z, o); ``R`` (4, NH, DH, DH) with R[g, head, out, in]; ``b`` (4, NH, DH); states
(NS, B, NH, DH) in the order (h, c, n, m) for the sLSTM (NS = 4) and (h, c) for the LSTM (NS = 2);
all states over time (NS, B, T, NH, DH).

Options: ``cell`` "slstm" or "lstm" (PyTorch's cell: i, f, o sigmoid, z tanh, h = o tanh(c)) and,
for the sLSTM, ``forget_gate`` "sigmoid" (log f = logsigmoid(f̃)) or "exp" (log f = f̃).

GPU arrays (torch, CuPy, JAX, ... through DLPack; Wx, R, b float32 or bfloat16, head dims 16, 32,
64, 128) run on the fused CUDA kernels on the caller's stream (``stream=`` or the framework's
current one); states, gates and dh are float32 there, dWx, dR, db of the inputs' dtype.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from . import _core, _device


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
            cell: str = "slstm", forget_gate: str = "sigmoid", keep_gates: bool = False,
            stream: Optional[int] = None) -> Output:
    """Every state after every step and the final state; ``initial`` None is the zero state.
    ``keep_gates`` also returns the pre-activations, so that ``backward(..., saved=output)`` need not
    run the forward again."""
    if _device.is_device_array(Wx):
        _device.require_cuda("slstm.forward")
        return _cuda_forward(Wx, R, b, initial, cell, forget_gate, keep_gates, stream)
    return Output(*_core.slstm.forward(Wx, R, b, initial, cell=cell, forget_gate=forget_gate, keep_gates=keep_gates))


def backward(Wx: np.ndarray, R: np.ndarray, b: np.ndarray, dh: np.ndarray, initial: Optional[np.ndarray] = None, *,
             dlast: Optional[np.ndarray] = None, saved: Optional[Output] = None, cell: str = "slstm",
             forget_gate: str = "sigmoid", stream: Optional[int] = None) -> Grad:
    """dWx, dR, db (and the initial state's gradient) from dh (B, T, NH, DH), the gradient of every
    h_t, and optionally dlast (NS, B, NH, DH), the final state's. Exact, the stabiliser included, so a
    backward run in pieces can hand dinitial on as dlast. ``saved``: the Output of
    ``forward(..., keep_gates=True)`` on the same inputs, whose states and gates replace running the
    forward again."""
    if saved is not None and saved.gates is None:
        raise ValueError("saved: the forward output has no gates: call forward with keep_gates=True")
    if _device.is_device_array(Wx):
        _device.require_cuda("slstm.backward")
        if saved is None:  # the kernel reads the forward's states and gates
            saved = _cuda_forward(Wx, R, b, initial, cell, forget_gate, True, stream)
        return _cuda_backward(Wx, R, b, dh, initial, dlast, saved, cell, forget_gate, stream)
    saved_states, saved_gates = (None, None) if saved is None else (saved.states, saved.gates)
    dWx, dR, db, dinitial = _core.slstm.backward(Wx, R, b, dh, initial, dlast, saved_states=saved_states,
                                                 saved_gates=saved_gates, cell=cell, forget_gate=forget_gate)
    return Grad(dWx, dR, db, dinitial)


def step(Wx_t: np.ndarray, R: np.ndarray, b: np.ndarray, state: np.ndarray, *, cell: str = "slstm",
         forget_gate: str = "sigmoid", stream: Optional[int] = None) -> np.ndarray:
    """One step: Wx_t (B, 4, NH, DH); returns the new state (NS, B, NH, DH), ``state`` is unchanged
    (on the GPU a copy is advanced; ``flashlstm._core.cuda.slstm.step`` updates a state in place)."""
    if _device.is_device_array(Wx_t):
        _device.require_cuda("slstm.step")
        s = _device.stream_of(Wx_t, stream)
        new = _device.clone(state, s)
        _core.cuda.slstm.step(Wx_t, R, b, new, cell=cell, forget_gate=forget_gate, stream=s)
        return _device.adopt(Wx_t, new)
    return _core.slstm.step(Wx_t, R, b, state, cell=cell, forget_gate=forget_gate)


def _cuda_forward(Wx, R, b, initial, cell, forget_gate, keep_gates, stream) -> Output:
    s = _device.stream_of(Wx, stream)
    B, T, _, NH, DH = Wx.shape
    NS = num_states(cell)
    states = _device.empty(Wx, (NS, B, T, NH, DH), "float32", s)
    last = _device.empty(Wx, (NS, B, NH, DH), "float32", s)
    gates = _device.empty(Wx, tuple(Wx.shape), "float32", s) if keep_gates else None
    _core.cuda.slstm.forward(Wx, R, b, initial, states, last, gates, cell=cell, forget_gate=forget_gate, stream=s)
    return Output(_device.adopt(Wx, states), _device.adopt(Wx, last),
                  _device.adopt(Wx, gates) if gates is not None else None)


def _cuda_backward(Wx, R, b, dh, initial, dlast, saved, cell, forget_gate, stream) -> Grad:
    s = _device.stream_of(Wx, stream)
    dWx, dR, db = (_device.empty(Wx, tuple(x.shape), "same", s) for x in (Wx, R, b))
    dinitial = _device.empty(Wx, tuple(initial.shape), "float32", s) if initial is not None else None
    _core.cuda.slstm.backward(Wx, R, b, initial, saved.states, saved.gates, dh, dlast, dWx, dR, db, dinitial,
                              cell=cell, forget_gate=forget_gate, stream=s)
    adopted = [_device.adopt(Wx, x) for x in (dWx, dR, db)]
    return Grad(*adopted, _device.adopt(Wx, dinitial) if dinitial is not None else None)
