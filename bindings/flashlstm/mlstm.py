"""The mLSTM (docs/mlstm.md): the CPU reference on numpy arrays, the CUDA kernels on GPU arrays.

Layout (row-major): ``q, k`` (B, NH, S, DQK); ``v, h`` (B, NH, S, DV); gate pre-activations
``igate`` (ĩ), ``fgate`` (f̃) (B, NH, S); state ``C`` (B, NH, DQK, DV), ``n`` (B, NH, DQK), ``m``
(B, NH). The scale DQK^-1/2 is applied to q.

Options: ``input_gate`` "exp" (log i = ĩ, stabilised by the running maximum m) or "sig"
(log i = logsigmoid(ĩ), m stays 0); ``normalize`` (sig only: False gives h = Cᵀq̂); ``eps`` (added
to the denominator).

numpy arrays (float32 or float64, all of one dtype, never cast) run on the CPU reference: a
C-contiguous input is read in place, any other layout (``q[..., ::2]``, ``x[:, :, t]``, a transpose)
is copied to a C-contiguous array for the call; outputs are not copied. Any form: "recurrent" (the
oracle), "parallel", "chunkwise" (any chunk_size >= 1). GPU arrays (torch, CuPy, JAX: anything with
``__dlpack__`` on a CUDA device; float32 or bfloat16, gates float32 too with bfloat16 q, k, v; states
float32) run on the CUDA kernels on the
caller's stream (``stream=``, else torch's/CuPy's current stream): the chunkwise form (chunk_size a
multiple of 64 in [64, 1024]), its backward and the step; GPU arrays must be C-contiguous (they are
not copied). Outputs are arrays of the caller's framework. Bad input raises ValueError naming the
argument.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np

from . import _core, _device

Array = Any  # numpy.ndarray on the CPU; a torch/CuPy/JAX array on the GPU


class State(NamedTuple):
    """An mLSTM state; ``m`` is the log-scale stabiliser (the true state is exp(m) (C, n))."""

    C: Array  # (B, NH, DQK, DV)
    n: Array  # (B, NH, DQK)
    m: Array  # (B, NH)


class Output(NamedTuple):
    h: Array  # (B, NH, S, DV)
    last: State  # the final state (C_S, n_S, m_S)


class Grad(NamedTuple):
    dq: Array
    dk: Array
    dv: Array
    digate: Array
    dfgate: Array
    dinitial: Optional[State]  # gradient of the initial state, when one was given


def forward(q: Array, k: Array, v: Array, igate: Array, fgate: Array, initial: Optional[State] = None, *,
            form: str = "chunkwise", chunk_size: int = 64, input_gate: str = "exp", normalize: bool = True,
            eps: float = 1e-6, stream: Optional[int] = None, cu_seqlens: Optional[Array] = None) -> Output:
    """h and the final state of one sequence form ("recurrent", "parallel" or "chunkwise").

    ``initial`` is a State (or a (C, n, m) tuple); None is the zero state. ``chunk_size`` is used by
    the chunkwise form only. GPU arrays take the chunkwise kernels.

    ``cu_seqlens`` (N + 1 integer offsets, 0 first, the number of tokens last; a list or an array on
    any device): packed sequences of different lengths in one (1, NH, total, D) batch, sequence i
    being tokens [cu_seqlens[i], cu_seqlens[i + 1]), each from its own initial state (batch entry i
    of ``initial``, (N, NH, ...)) to its own final state, in every form and on the GPU.
    """
    if _device.is_device_array(q):
        _device.require_cuda("mlstm.forward")
        if form != "chunkwise":
            raise ValueError(f"form: the CUDA kernels implement 'chunkwise' (and step), got '{form}'")
        return _cuda_forward(q, k, v, igate, fgate, initial, chunk_size, input_gate, normalize, eps, stream,
                             _offsets(cu_seqlens))
    h, last = _core.mlstm.forward(q, k, v, igate, fgate, initial, form=form, chunk_size=chunk_size,
                                  input_gate=input_gate, normalize=normalize, eps=eps,
                                  cu_seqlens=_offsets(cu_seqlens))
    return Output(h, State(*last))


def backward(q: Array, k: Array, v: Array, igate: Array, fgate: Array, dh: Array, initial: Optional[State] = None, *,
             dC_last: Optional[Array] = None, dn_last: Optional[Array] = None, dm_last: Optional[Array] = None,
             form: str = "chunkwise", chunk_size: int = 64, input_gate: str = "exp", normalize: bool = True,
             eps: float = 1e-6, stream: Optional[int] = None, cu_seqlens: Optional[Array] = None) -> Grad:
    """The exact gradients of every input from dh (B, NH, S, DV) and, optionally, the final state's.

    ``dm_last`` matters only for "exp" (for "sig" m is the constant 0); with it a backward run in
    pieces hands the state gradient on exactly. Every form computes the same gradients. With
    ``cu_seqlens`` (as in ``forward``) the final-state gradients have batch N, one per sequence.
    """
    if _device.is_device_array(q):
        _device.require_cuda("mlstm.backward")
        if form != "chunkwise":
            raise ValueError(f"form: the CUDA kernels implement 'chunkwise' (and step), got '{form}'")
        return _cuda_backward(q, k, v, igate, fgate, dh, initial, dC_last, dn_last, dm_last, chunk_size, input_gate,
                              normalize, eps, stream, _offsets(cu_seqlens))
    dq, dk, dv, digate, dfgate, dinitial = _core.mlstm.backward(
        q, k, v, igate, fgate, dh, initial, dC_last, dn_last, dm_last, form=form, chunk_size=chunk_size,
        input_gate=input_gate, normalize=normalize, eps=eps, cu_seqlens=_offsets(cu_seqlens))
    return Grad(dq, dk, dv, digate, dfgate, State(*dinitial) if dinitial is not None else None)


def _offsets(cu_seqlens):
    """cu_seqlens as a list of Python integers (None stays None); anything but integers is refused.
    A GPU array is read back to the host (the offsets decide the launches' sizes)."""
    if cu_seqlens is None:
        return None
    if _device.is_device_array(cu_seqlens) and hasattr(cu_seqlens, "tolist"):
        cu_seqlens = np.asarray(cu_seqlens.tolist(), dtype=str(cu_seqlens.dtype).replace("torch.", ""))
    offsets = np.asarray(cu_seqlens)
    if offsets.ndim != 1 or not np.issubdtype(offsets.dtype, np.integer):
        raise ValueError(f"cu_seqlens: expected a 1-D array of integer offsets, got {offsets.dtype} with shape "
                         f"{offsets.shape}")
    return [int(c) for c in offsets]


def forward_recurrent(q: Array, k: Array, v: Array, igate: Array, fgate: Array, initial: Optional[State] = None, *,
                      input_gate: str = "exp", normalize: bool = True, eps: float = 1e-6) -> Output:
    """Token by token, exactly the recurrence of docs/mlstm.md: the oracle (CPU)."""
    return forward(q, k, v, igate, fgate, initial, form="recurrent", input_gate=input_gate, normalize=normalize,
                   eps=eps)


def forward_parallel(q: Array, k: Array, v: Array, igate: Array, fgate: Array, initial: Optional[State] = None, *,
                     input_gate: str = "exp", normalize: bool = True, eps: float = 1e-6) -> Output:
    """Quadratic, attention-like: one segment of length S (CPU)."""
    return forward(q, k, v, igate, fgate, initial, form="parallel", input_gate=input_gate, normalize=normalize,
                   eps=eps)


def forward_chunkwise(q: Array, k: Array, v: Array, igate: Array, fgate: Array, initial: Optional[State] = None,
                      chunk_size: int = 64, *, input_gate: str = "exp", normalize: bool = True, eps: float = 1e-6,
                      stream: Optional[int] = None) -> Output:
    """Chunks of length chunk_size, each in parallel form from the state the previous one left
    (CPU: any chunk_size >= 1; GPU: a multiple of 64 in [64, 1024])."""
    return forward(q, k, v, igate, fgate, initial, form="chunkwise", chunk_size=chunk_size, input_gate=input_gate,
                   normalize=normalize, eps=eps, stream=stream)


def backward_recurrent(q: Array, k: Array, v: Array, igate: Array, fgate: Array, dh: Array,
                       initial: Optional[State] = None, *, dC_last: Optional[Array] = None,
                       dn_last: Optional[Array] = None, dm_last: Optional[Array] = None, input_gate: str = "exp",
                       normalize: bool = True, eps: float = 1e-6) -> Grad:
    """The backward of forward_recurrent (states recomputed from checkpoints every ⌈√S⌉ steps)."""
    return backward(q, k, v, igate, fgate, dh, initial, dC_last=dC_last, dn_last=dn_last, dm_last=dm_last,
                    form="recurrent", input_gate=input_gate, normalize=normalize, eps=eps)


def backward_parallel(q: Array, k: Array, v: Array, igate: Array, fgate: Array, dh: Array,
                      initial: Optional[State] = None, *, dC_last: Optional[Array] = None,
                      dn_last: Optional[Array] = None, dm_last: Optional[Array] = None, input_gate: str = "exp",
                      normalize: bool = True, eps: float = 1e-6) -> Grad:
    """The backward of forward_parallel."""
    return backward(q, k, v, igate, fgate, dh, initial, dC_last=dC_last, dn_last=dn_last, dm_last=dm_last,
                    form="parallel", input_gate=input_gate, normalize=normalize, eps=eps)


def backward_chunkwise(q: Array, k: Array, v: Array, igate: Array, fgate: Array, dh: Array,
                       initial: Optional[State] = None, chunk_size: int = 64, *, dC_last: Optional[Array] = None,
                       dn_last: Optional[Array] = None, dm_last: Optional[Array] = None, input_gate: str = "exp",
                       normalize: bool = True, eps: float = 1e-6, stream: Optional[int] = None) -> Grad:
    """The backward of forward_chunkwise (CPU or GPU)."""
    return backward(q, k, v, igate, fgate, dh, initial, dC_last=dC_last, dn_last=dn_last, dm_last=dm_last,
                    form="chunkwise", chunk_size=chunk_size, input_gate=input_gate, normalize=normalize, eps=eps,
                    stream=stream)


def step(q: Array, k: Array, v: Array, igate: Array, fgate: Array, state: State, *, input_gate: str = "exp",
         normalize: bool = True, eps: float = 1e-6, stream: Optional[int] = None) -> Output:
    """One token for generation: q, k (B, NH, DQK), v (B, NH, DV), igate, fgate (B, NH).

    Returns h (B, NH, DV) and the new state; ``state`` itself is left as it was (on the GPU it is
    copied first; ``flashlstm._core.cuda.mlstm.step`` updates a state in place).
    """
    if _device.is_device_array(q):
        _device.require_cuda("mlstm.step")
        s = _device.stream_of(q, stream)
        new = State(*(_device.clone(x, s) for x in state))
        h = _device.empty(q, tuple(v.shape), "same", s)
        _core.cuda.mlstm.step(q, k, v, igate, fgate, new, h, input_gate=input_gate, normalize=normalize, eps=eps,
                              stream=s)
        return Output(_device.adopt(q, h), State(*(_device.adopt(q, x) for x in new)))
    h, new = _core.mlstm.step(q, k, v, igate, fgate, state, input_gate=input_gate, normalize=normalize, eps=eps)
    return Output(h, State(*new))


def zero_state(B: int, NH: int, DQK: int, DV: int, dtype: Any = "float64") -> State:
    """A zero state of the given sizes (numpy)."""
    import numpy as np

    return State(np.zeros((B, NH, DQK, DV), dtype), np.zeros((B, NH, DQK), dtype), np.zeros((B, NH), dtype))


def _state_buffers(q: Array, v: Array, stream: Optional[int], cu_seqlens: Optional[list] = None) -> State:
    """Float32 state buffers of batch B, or N with packed sequences."""
    B = q.shape[0] if cu_seqlens is None else len(cu_seqlens) - 1
    NH, DQK, DV = q.shape[1], q.shape[-1], v.shape[-1]
    return State(_device.empty(q, (B, NH, DQK, DV), "float32", stream), _device.empty(q, (B, NH, DQK), "float32", stream),
                 _device.empty(q, (B, NH), "float32", stream))


def _cuda_forward(q, k, v, igate, fgate, initial, chunk_size, input_gate, normalize, eps, stream,
                  cu_seqlens=None) -> Output:
    s = _device.stream_of(q, stream)
    h = _device.empty(q, tuple(v.shape), "same", s)
    last = _state_buffers(q, v, s, cu_seqlens)
    _core.cuda.mlstm.forward_chunkwise(q, k, v, igate, fgate, initial, h, last, chunk_size=chunk_size,
                                       input_gate=input_gate, normalize=normalize, eps=eps, stream=s,
                                       cu_seqlens=cu_seqlens)
    return Output(_device.adopt(q, h), State(*(_device.adopt(q, x) for x in last)))


def _cuda_backward(q, k, v, igate, fgate, dh, initial, dC_last, dn_last, dm_last, chunk_size, input_gate, normalize,
                   eps, stream, cu_seqlens=None) -> Grad:
    s = _device.stream_of(q, stream)
    grads = [_device.empty(x, tuple(x.shape), "same", s) for x in (q, k, v, igate, fgate)]  # the gates' own type
    dinitial = _state_buffers(q, v, s, cu_seqlens) if initial is not None else None
    _core.cuda.mlstm.backward_chunkwise(q, k, v, igate, fgate, initial, dh, dC_last, dn_last, dm_last, *grads, dinitial,
                                        chunk_size=chunk_size, input_gate=input_gate, normalize=normalize, eps=eps,
                                        stream=s, cu_seqlens=cu_seqlens)
    adopted = [_device.adopt(q, x) for x in grads]
    return Grad(*adopted, State(*(_device.adopt(q, x) for x in dinitial)) if dinitial is not None else None)
