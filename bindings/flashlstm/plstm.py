"""pLSTM (docs/plstm.md): the CPU reference on DAGs, 1-D sequences and 2-D grids, forward and exact
backward, and the P-mode / D-mode gate parameterisations, on numpy arrays (float32 or float64, all
of one dtype, never cast; C-contiguous inputs are read in place, other layouts copied to
C-contiguous ones for the call; results are not copied).

States live on edges; Source, Transition, Mark and Direct gates (scalars) decide what enters,
passes and is read::

    C^e = Σ_{e' in E_in(n)} T^n_{e'e} C^{e'} + S^n_e k^n (v^n)^T        for e in E_out(n)
    h^n = s Σ_{e in E_in(n)} M^n_e (C^e)^T q^n + s D^n (q^n·k^n) v^n      (s = qk_scale, 0: DQK^-1/2)

Layouts: DAG q, k (B, NH, N, DQK), v, h (B, NH, N, DV), S, M (B, NH, E) per edge, T (B, NH, A) per
line-graph arc (flashlstm.graph numbering), D (B, NH, N). 1-D: gates (B, NH, S). 2-D: q, k
(B, NH, X, Y, DQK), nine gates (GridGates: Sr, Sd, Trl, Tru, Tdu, Tdl, Ml, Mu, D) each (B, NH, X, Y),
with a leading axis of 4 for the four orientations.

P-mode (directed propagation: the transitions leaving an incoming edge have L1 norm <= 1) and
D-mode (the line graph pruned to a multitree, |T| <= 1) turn raw pre-activations into gates that keep
states bounded. Their backward (``*_gates_*_mode_backward``) is here too, in numpy, so that a model
can be trained on raw pre-activations.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple, Optional, Sequence

import numpy as np

from . import _core, _device
from .graph import Dag, line_graph, multitree_arcs

_p = _core.plstm


class DagGates(NamedTuple):
    S: np.ndarray  # (B, NH, E)
    T: np.ndarray  # (B, NH, A)
    M: np.ndarray  # (B, NH, E)
    D: np.ndarray  # (B, NH, N)


class DagGrad(NamedTuple):
    dq: np.ndarray
    dk: np.ndarray
    dv: np.ndarray
    dS: np.ndarray
    dT: np.ndarray
    dM: np.ndarray
    dD: np.ndarray


class GridGates(NamedTuple):
    """The nine gates of a grid node, each (B, NH, X, Y) (or (4, B, NH, X, Y) with orientations)."""

    Sr: np.ndarray  # source into the right edge
    Sd: np.ndarray  # source into the down edge
    Trl: np.ndarray  # left-in -> right
    Tru: np.ndarray  # top-in -> right
    Tdu: np.ndarray  # top-in -> down
    Tdl: np.ndarray  # left-in -> down
    Ml: np.ndarray  # mark of the left-in edge
    Mu: np.ndarray  # mark of the top-in edge
    D: np.ndarray  # direct


class GridGrad(NamedTuple):
    dq: np.ndarray
    dk: np.ndarray
    dv: np.ndarray
    dSr: np.ndarray
    dSd: np.ndarray
    dTrl: np.ndarray
    dTru: np.ndarray
    dTdu: np.ndarray
    dTdl: np.ndarray
    dMl: np.ndarray
    dMu: np.ndarray
    dD: np.ndarray


def _grid_gates(gates: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
    if len(gates) != 9:
        raise ValueError(f"gates: expected the nine grid gates (Sr, Sd, Trl, Tru, Tdu, Tdl, Ml, Mu, D), got {len(gates)}")
    return list(gates)


# DAG ---------------------------------------------------------------------------------------------

_dag_plans: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _dag_plan(dag: Dag, like):
    """The CUDA kernels' form of `dag` (flattened, uploaded by the first launch) on like's device, made
    once per (Dag object, device) and kept while the Dag lives."""
    device = int(like.__dlpack_device__()[1])
    plans = _dag_plans.setdefault(dag, {})
    if device not in plans:
        plans[device] = _core.cuda.plstm.DagPlan(dag, device)
    return plans[device]



def dag_forward(dag: Dag, q, k, v, S, T, M, D, *, form: Optional[str] = None, qk_scale: float = 0.0,
                stream: Optional[int] = None) -> np.ndarray:
    """h (B, NH, N, DV). form: "recurrent" (topological order, the oracle; the CPU default), "levels"
    (OpenMP over each level of the level schedule) or "parallel" (node-to-node gating G, then an
    attention-like readout).

    GPU arrays (q, k, v float32 or bfloat16, gates float32) run the CUDA kernel: the recurrent form
    level by level, a warp per (batch·head, node) (form None or "levels"). The graph is flattened and
    uploaded once per Dag object and device, and reused while the Dag lives."""
    if _device.is_device_array(q):
        _device.require_cuda("plstm.dag_forward")
        if form not in (None, "levels"):
            raise ValueError(f"form: the CUDA kernel runs the levels form; got {form!r}")
        s = _device.stream_of(q, stream)
        h = _device.empty(q, tuple(q.shape[:3]) + (v.shape[-1],), "same", s)
        _core.cuda.plstm.dag_forward(_dag_plan(dag, q), q, k, v, S, T, M, D, h, qk_scale=qk_scale, stream=s)
        return _device.adopt(q, h)
    return _p.dag_forward(dag, q, k, v, S, T, M, D, form=form or "recurrent", qk_scale=qk_scale)


def dag_backward(dag: Dag, q, k, v, S, T, M, D, dh, *, qk_scale: float = 0.0, stream: Optional[int] = None) -> DagGrad:
    """Exact gradients of every input from dh (B, NH, N, DV). GPU arrays run the CUDA backward (the
    forward again for the edge states, then the levels in reverse; deterministic)."""
    if _device.is_device_array(q):
        _device.require_cuda("plstm.dag_backward")
        s = _device.stream_of(q, stream)
        dq, dk, dv = (_device.empty(q, x.shape, "same", s) for x in (q, k, v))
        dgates = [_device.empty(q, g.shape, "float32", s) for g in (S, T, M, D)]
        _core.cuda.plstm.dag_backward(_dag_plan(dag, q), q, k, v, S, T, M, D, dh, dq, dk, dv, *dgates, qk_scale=qk_scale,
                                      stream=s)
        return DagGrad(*(_device.adopt(q, x) for x in (dq, dk, dv, *dgates)))
    return DagGrad(*_p.dag_backward(dag, q, k, v, S, T, M, D, dh, qk_scale=qk_scale))


def dag_gating(dag: Dag, q, k, v, S, T, M, D) -> np.ndarray:
    """G (B, NH, N, N): G[b, h, n', n] = Σ over paths n' -> n of S · Π T · M (0 without a path; the
    diagonal is not D)."""
    return _p.dag_gating(dag, q, k, v, S, T, M, D)


def dag_gates_p_mode(dag: Dag, S, T, gamma, M, D) -> DagGates:
    """P-mode gates from raw pre-activations: T_{e'e} = σ(γ_{e'}) softmax over e in E_out(n) of T̃_{e'e};
    S, M, D = σ(raw). S, M, gamma (B, NH, E), T (B, NH, A), D (B, NH, N)."""
    return DagGates(*_p.dag_gates_p_mode(dag, S, T, gamma, M, D))


def dag_gates_d_mode(dag: Dag, S, T, M, D) -> DagGates:
    """D-mode gates: T = tanh(T̃) on the arcs multitree_arcs keeps, 0 elsewhere; S, M, D = σ(raw)."""
    return DagGates(*_p.dag_gates_d_mode(dag, S, T, M, D))


def max_transition_column_norm(dag: Dag, T) -> float:
    """max over nodes and incoming edges of Σ_{outgoing e} |T_{e'e}| (<= 1 is the P-mode bound)."""
    return _p.max_transition_column_norm(dag, T)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _sigmoid_backward(raw: np.ndarray, grad: np.ndarray) -> np.ndarray:
    s = _sigmoid(raw)
    return grad * s * (1 - s)


def _dag_gate_grads(grad) -> DagGates:
    return DagGates(*grad[3:]) if isinstance(grad, DagGrad) else DagGates(*grad)


def _grid_gate_grads(grad) -> GridGates:
    return GridGates(*grad[3:]) if isinstance(grad, GridGrad) else GridGates(*grad)


def dag_gates_p_mode_backward(dag: Dag, S, T, gamma, M, D, grad):
    """The gradients of the raw pre-activations (dS, dT, dgamma, dM, dD) of dag_gates_p_mode, from the
    gradients of its gates: a DagGates (dS, dT, dM, dD) or the DagGrad of dag_backward."""
    grad = _dag_gate_grads(grad)
    arcs = line_graph(dag).arcs
    dT = np.zeros_like(T)
    dgamma = np.zeros_like(gamma)
    if len(arcs):
        incoming = arcs[:, 0]
        # Arcs are ordered by node, then incoming edge: each incoming edge's arcs (its softmax) are a run.
        starts = np.flatnonzero(np.r_[True, incoming[1:] != incoming[:-1]])
        run = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(arcs)]))
        top = np.maximum.reduceat(T, starts, axis=-1)[..., run]
        e = np.exp(T - top)
        soft = e / np.add.reduceat(e, starts, axis=-1)[..., run]
        decay = _sigmoid(gamma[..., incoming])
        dsoft = decay * grad.T
        dT = soft * (dsoft - np.add.reduceat(soft * dsoft, starts, axis=-1)[..., run])
        dgamma[..., incoming[starts]] = _sigmoid_backward(gamma[..., incoming[starts]],
                                                          np.add.reduceat(soft * grad.T, starts, axis=-1))
    return (_sigmoid_backward(S, grad.S), dT, dgamma, _sigmoid_backward(M, grad.M), _sigmoid_backward(D, grad.D))


def dag_gates_d_mode_backward(dag: Dag, S, T, M, D, grad):
    """The gradients of the raw pre-activations (dS, dT, dM, dD) of dag_gates_d_mode (grad: a DagGates
    or a DagGrad)."""
    grad = _dag_gate_grads(grad)
    kept = np.zeros(T.shape[-1], dtype=bool)
    kept[multitree_arcs(line_graph(dag))] = True
    dT = np.where(kept, grad.T * (1 - np.tanh(T) ** 2), 0)
    return (_sigmoid_backward(S, grad.S), dT, _sigmoid_backward(M, grad.M), _sigmoid_backward(D, grad.D))


# 1-D ---------------------------------------------------------------------------------------------


def sequence_forward(q, k, v, S, T, M, D, *, form: Optional[str] = None, chunk_size: int = 0,
                     qk_scale: float = 0.0, stream: Optional[int] = None) -> np.ndarray:
    """h (B, NH, S, DV) on the chain t -> t+1. form: "recurrent" (the CPU default), "parallel" or
    "chunkwise" (any chunk_size >= 1; each chunk's aggregates by pairwise-doubling merges).

    GPU arrays (q, k, v float32 or bfloat16, gates float32) run the CUDA kernels: the chunkwise form
    with chunks of 64 tokens (form None or "chunkwise"; chunk_size 0 or 64), work and memory linear in
    S."""
    if _device.is_device_array(q):
        _device.require_cuda("plstm.sequence_forward")
        if form not in (None, "chunkwise") or chunk_size not in (0, 64):
            raise ValueError(f"form: on the GPU the sequence runs the chunkwise form with chunks of 64; got form={form!r}, "
                             f"chunk_size={chunk_size}")
        s = _device.stream_of(q, stream)
        h = _device.empty(q, tuple(q.shape[:3]) + (v.shape[-1],), "same", s)
        _core.cuda.plstm.sequence_forward(q, k, v, S, T, M, D, h, qk_scale=qk_scale, stream=s)
        return _device.adopt(q, h)
    return _p.sequence_forward(q, k, v, S, T, M, D, form=form or "recurrent", chunk_size=chunk_size, qk_scale=qk_scale)


def sequence_backward(q, k, v, S, T, M, D, dh, *, chunk_size: int = 1, qk_scale: float = 0.0,
                      stream: Optional[int] = None) -> DagGrad:
    """Exact gradients from dh (B, NH, S, DV) through the chunkwise form with chunk_size (1: token by
    token, >= S: the parallel form). GPU arrays run the CUDA chunkwise backward (chunks of 64; chunk_size
    does not apply): dq, dk, dv in q's dtype, dS, dT, dM, dD float32."""
    if _device.is_device_array(q):
        _device.require_cuda("plstm.sequence_backward")
        s = _device.stream_of(q, stream)
        dq, dk, dv = (_device.empty(q, x.shape, "same", s) for x in (q, k, v))
        dgates = [_device.empty(q, g.shape, "float32", s) for g in (S, T, M, D)]
        _core.cuda.plstm.sequence_backward(q, k, v, S, T, M, D, dh, dq, dk, dv, *dgates, qk_scale=qk_scale, stream=s)
        return DagGrad(*(_device.adopt(q, x) for x in (dq, dk, dv, *dgates)))
    return DagGrad(*_p.sequence_backward(q, k, v, S, T, M, D, dh, chunk_size=chunk_size, qk_scale=qk_scale))


def chain(S: int) -> Dag:
    """The chain 0 -> 1 -> ... -> S-1 (edge t: t -> t+1)."""
    return _p.chain(S)


def chain_gates(q, k, v, S, T, M, D):
    """The 1-D gates in DAG layout on chain(S): (S (B, NH, S-1), T (B, NH, S-2), M (B, NH, S-1))."""
    return _p.chain_gates(q, k, v, S, T, M, D)


# 2-D ---------------------------------------------------------------------------------------------


def _cuda_grid_forward(q, k, v, gates, orientations: int, form: Optional[str], qk_scale: float,
                       stream: Optional[int]):
    """The CUDA kernel on GPU arrays: h allocated in q's framework, on its stream."""
    _device.require_cuda("plstm.grid_forward")
    if form not in (None, "parallel"):
        raise ValueError(f"form: the CUDA kernel implements 'parallel' (the gating built on chip a tile at a time); "
                         f"got {form!r}")
    s = _device.stream_of(q, stream)
    h = _device.empty(q, tuple(q.shape[:4]) + (v.shape[-1],), "same", s)
    _core.cuda.plstm.grid_forward(q, k, v, list(_grid_gates(gates)), h, orientations=orientations, qk_scale=qk_scale,
                                  stream=s)
    return _device.adopt(q, h)


def grid_forward(q, k, v, gates: GridGates, *, form: Optional[str] = None, chunk_size: int = 0,
                 qk_scale: float = 0.0, stream: Optional[int] = None) -> np.ndarray:
    """h (B, NH, X, Y, DV); sources in the top-left corner. form: "recurrent" (anti-diagonal
    wavefront; the default on the CPU), "chunkwise" (square chunks of side chunk_size, a power of two;
    memory linear in the grid) or "parallel" (one N x N gating).

    GPU arrays (q, k, v float32 or bfloat16, gates float32; DLPack: torch, CuPy, JAX) run the CUDA
    kernel: the parallel form with the gating built on chip a 64 x 64 tile at a time, so memory stays
    linear in the grid (form None or "parallel"). ``stream``: the CUDA stream (default: the
    framework's current one)."""
    if _device.is_device_array(q):
        return _cuda_grid_forward(q, k, v, gates, 1, form, qk_scale, stream)
    return _p.grid_forward(q, k, v, _grid_gates(gates), form=form or "recurrent", chunk_size=chunk_size, qk_scale=qk_scale)


def _cuda_grid_backward(q, k, v, gates, dh, orientations: int, qk_scale: float, stream: Optional[int]) -> GridGrad:
    """The CUDA backward on GPU arrays: the gradients allocated in q's framework, on its stream."""
    _device.require_cuda("plstm.grid_backward")
    gates = _grid_gates(gates)
    s = _device.stream_of(q, stream)
    dq, dk, dv = (_device.empty(q, x.shape, "same", s) for x in (q, k, v))
    dgates = [_device.empty(q, g.shape, "float32", s) for g in gates]
    _core.cuda.plstm.grid_backward(q, k, v, list(gates), dh, dq, dk, dv, dgates, orientations=orientations,
                                   qk_scale=qk_scale, stream=s)
    return GridGrad(*(_device.adopt(q, x) for x in (dq, dk, dv, *dgates)))


def grid_backward(q, k, v, gates: GridGates, dh, *, chunk_size: int = 1, qk_scale: float = 0.0,
                  stream: Optional[int] = None) -> GridGrad:
    """Exact gradients from dh (B, NH, X, Y, DV) through the chunkwise form (chunk_size a power of two).

    GPU arrays run the CUDA backward (chunk_size does not apply): dq, dk, dv in q's dtype, the gates'
    gradients float32, each value written once (deterministic)."""
    if _device.is_device_array(q):
        return _cuda_grid_backward(q, k, v, gates, dh, 1, qk_scale, stream)
    dq, dk, dv, dgates = _p.grid_backward(q, k, v, _grid_gates(gates), dh, chunk_size=chunk_size, qk_scale=qk_scale)
    return GridGrad(dq, dk, dv, *dgates)


def grid_forward_oriented(q, k, v, gates: GridGates, *, form: Optional[str] = None, chunk_size: int = 0,
                          qk_scale: float = 0.0, stream: Optional[int] = None) -> np.ndarray:
    """Σ over the four orientations (sources in each corner) of the flipped grid_forward; each gate
    (4, B, NH, X, Y), orientation o flipping x when o & 1 and y when o & 2. GPU arrays run the CUDA
    kernel, as in grid_forward."""
    if _device.is_device_array(q):
        return _cuda_grid_forward(q, k, v, gates, 4, form, qk_scale, stream)
    return _p.grid_forward_oriented(q, k, v, _grid_gates(gates), form=form or "recurrent", chunk_size=chunk_size,
                                    qk_scale=qk_scale)


def grid_backward_oriented(q, k, v, gates: GridGates, dh, *, chunk_size: int = 1, qk_scale: float = 0.0,
                           stream: Optional[int] = None) -> GridGrad:
    """Exact gradients of grid_forward_oriented from dh (B, NH, X, Y, DV): dq, dk, dv summed over the
    orientations, each gate's gradient (4, B, NH, X, Y), one slice per orientation. GPU arrays run
    the CUDA backward, as in grid_backward."""
    if _device.is_device_array(q):
        return _cuda_grid_backward(q, k, v, gates, dh, 4, qk_scale, stream)
    dq, dk, dv, dgates = _p.grid_backward_oriented(q, k, v, _grid_gates(gates), dh, chunk_size=chunk_size,
                                                   qk_scale=qk_scale)
    return GridGrad(dq, dk, dv, *dgates)


def grid_dag(X: int, Y: int) -> Dag:
    """The X x Y grid as a Dag: node x·Y + y; each node's right edge, then its down edge."""
    return _p.grid_dag(X, Y)


def grid_dag_gates(q, k, v, gates: GridGates) -> DagGates:
    """The grid's gates in DAG layout on grid_dag(X, Y)."""
    return DagGates(*_p.grid_dag_gates(q, k, v, _grid_gates(gates)))


def grid_gates_p_mode(Sr, Sd, alpha, gamma, Ml, Mu, D) -> GridGates:
    """P-mode grid gates (the paper's T = γ [[α, α], [1-α, 1-α]], α = σ(α̃), γ = σ(γ̃)); the rest σ(raw)."""
    return GridGates(*_p.grid_gates_p_mode(Sr, Sd, alpha, gamma, Ml, Mu, D))


def grid_gates_d_mode(Sr, Sd, Trl, Tru, Tdu, Ml, Mu, D) -> GridGates:
    """D-mode grid gates: Trl, Tru, Tdu = tanh(raw), Tdl = 0 (a state turns from vertical to horizontal
    at most once); the rest σ(raw)."""
    return GridGates(*_p.grid_gates_d_mode(Sr, Sd, Trl, Tru, Tdu, Ml, Mu, D))


def grid_gates_p_mode_backward(Sr, Sd, alpha, gamma, Ml, Mu, D, grad):
    """The gradients of the raw pre-activations (dSr, dSd, dalpha, dgamma, dMl, dMu, dD) of
    grid_gates_p_mode, from the gradients of its nine gates (a GridGates, or the GridGrad of
    grid_backward)."""
    grad = _grid_gate_grads(grad)
    a, c = _sigmoid(alpha), _sigmoid(gamma)
    into_right, into_down = grad.Trl + grad.Tru, grad.Tdu + grad.Tdl
    dalpha = c * a * (1 - a) * (into_right - into_down)
    dgamma = c * (1 - c) * (a * into_right + (1 - a) * into_down)
    return (_sigmoid_backward(Sr, grad.Sr), _sigmoid_backward(Sd, grad.Sd), dalpha, dgamma,
            _sigmoid_backward(Ml, grad.Ml), _sigmoid_backward(Mu, grad.Mu), _sigmoid_backward(D, grad.D))


def grid_gates_d_mode_backward(Sr, Sd, Trl, Tru, Tdu, Ml, Mu, D, grad):
    """The gradients of the raw pre-activations (dSr, dSd, dTrl, dTru, dTdu, dMl, dMu, dD) of
    grid_gates_d_mode (grad: a GridGates or a GridGrad)."""
    grad = _grid_gate_grads(grad)
    return (_sigmoid_backward(Sr, grad.Sr), _sigmoid_backward(Sd, grad.Sd), grad.Trl * (1 - np.tanh(Trl) ** 2),
            grad.Tru * (1 - np.tanh(Tru) ** 2), grad.Tdu * (1 - np.tanh(Tdu) ** 2), _sigmoid_backward(Ml, grad.Ml),
            _sigmoid_backward(Mu, grad.Mu), _sigmoid_backward(D, grad.D))
