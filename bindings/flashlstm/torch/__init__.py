"""flashlstm's ops as torch custom ops (``torch.library.custom_op``, namespace "flashlstm"), with
fake (meta) implementations and autograd, so they trace in ``torch.compile`` and pass
``torch.autograd.gradcheck`` / ``torch.library.opcheck``. Import this module explicitly; it needs
torch (>= 2.4), which flashlstm does not depend on.

CPU tensors (float32 or float64) go through the CPU reference without copies (via numpy); CUDA
tensors through the CUDA kernels (mLSTM: float32 or bfloat16, float32 states, the chunkwise form) on
the current stream. Gradients are the library's exact backward, registered as ops too
("flashlstm::mlstm_backward", ...), so a compiled graph contains both directions.

    from flashlstm.torch import mlstm, plstm_dag, plstm_grid, plstm_sequence, slstm
    h, (C, n, m) = mlstm(q, k, v, igate, fgate, chunk_size=64)
"""

# No `from __future__ import annotations` here: torch.library infers each op's schema from its
# annotations, which must be real types.
import numbers
from typing import Any, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .. import graph as _graph
from .. import mlstm as _mlstm
from .. import plstm as _plstm
from .. import slstm as _slstm

__all__ = ["mlstm", "slstm", "plstm_dag", "plstm_grid", "plstm_sequence", "MlstmOutput", "SlstmOutput", "grid_gates_p_mode",
           "grid_gates_d_mode", "dag_gates_p_mode", "dag_gates_d_mode"]


def _absent(like: Tensor) -> Tensor:
    """Stands for an absent optional gradient among an op's outputs (ops cannot return None)."""
    return like.new_empty(0)


def _np(name: str, t: Optional[Tensor]) -> Optional[np.ndarray]:
    """A CPU tensor as a numpy array sharing its memory (made contiguous first)."""
    if t is None:
        return None
    if t.device.type != "cpu":
        raise ValueError(f"{name}: is on {t.device}; this op runs on the CPU reference only")
    if t.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name}: the CPU reference takes float32 or float64, got {t.dtype}")
    return t.detach().contiguous().numpy()


def _dev(t: Optional[Tensor]) -> Optional[Tensor]:
    """A CUDA tensor as the kernels take it through DLPack: contiguous, and detached (torch refuses to
    export a tensor that requires grad; autograd is handled by the op's registered backward)."""
    return None if t is None else t.detach().contiguous()


def _t(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


# mLSTM -------------------------------------------------------------------------------------------


class MlstmOutput(NamedTuple):
    h: Tensor
    last: _mlstm.State


@torch.library.custom_op("flashlstm::mlstm_forward", mutates_args=())
def _mlstm_forward(q: Tensor, k: Tensor, v: Tensor, igate: Tensor, fgate: Tensor, C0: Optional[Tensor],
                   n0: Optional[Tensor], m0: Optional[Tensor], form: str, chunk_size: int, input_gate: str,
                   normalize: bool, eps: float, cu_seqlens: Optional[List[int]]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    options = dict(form=form, chunk_size=chunk_size, input_gate=input_gate, normalize=normalize, eps=eps,
                   cu_seqlens=cu_seqlens)
    if q.is_cuda:
        initial = None if C0 is None else _mlstm.State(_dev(C0), _dev(n0), _dev(m0))
        out = _mlstm.forward(*(_dev(x) for x in (q, k, v, igate, fgate)), initial, **options)
        return out.h, *out.last
    initial = None if C0 is None else _mlstm.State(_np("initial.C", C0), _np("initial.n", n0), _np("initial.m", m0))
    out = _mlstm.forward(_np("q", q), _np("k", k), _np("v", v), _np("igate", igate), _np("fgate", fgate), initial,
                         **options)
    return _t(out.h), *(_t(x) for x in out.last)


@_mlstm_forward.register_fake
def _(q, k, v, igate, fgate, C0, n0, m0, form, chunk_size, input_gate, normalize, eps, cu_seqlens):
    B, NH, S, DQK = q.shape
    DV = v.shape[-1]
    N = B if cu_seqlens is None else len(cu_seqlens) - 1  # the final states' batch
    state = torch.float32 if q.is_cuda else q.dtype
    return (v.new_empty((B, NH, S, DV)), q.new_empty((N, NH, DQK, DV), dtype=state),
            q.new_empty((N, NH, DQK), dtype=state), q.new_empty((N, NH), dtype=state))


@torch.library.custom_op("flashlstm::mlstm_backward", mutates_args=())
def _mlstm_backward(q: Tensor, k: Tensor, v: Tensor, igate: Tensor, fgate: Tensor, C0: Optional[Tensor],
                    n0: Optional[Tensor], m0: Optional[Tensor], dh: Tensor, dC_last: Tensor, dn_last: Tensor,
                    dm_last: Tensor, form: str, chunk_size: int, input_gate: str, normalize: bool, eps: float,
                    cu_seqlens: Optional[List[int]]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    options = dict(form=form, chunk_size=chunk_size, input_gate=input_gate, normalize=normalize, eps=eps,
                   cu_seqlens=cu_seqlens)
    if q.is_cuda:
        initial = None if C0 is None else _mlstm.State(_dev(C0), _dev(n0), _dev(m0))
        g = _mlstm.backward(*(_dev(x) for x in (q, k, v, igate, fgate, dh)), initial, dC_last=_dev(dC_last),
                            dn_last=_dev(dn_last), dm_last=_dev(dm_last), **options)
        dinitial = tuple(g.dinitial) if g.dinitial is not None else tuple(_absent(q) for _ in range(3))
        return g.dq, g.dk, g.dv, g.digate, g.dfgate, *dinitial
    initial = None if C0 is None else _mlstm.State(_np("initial.C", C0), _np("initial.n", n0), _np("initial.m", m0))
    g = _mlstm.backward(_np("q", q), _np("k", k), _np("v", v), _np("igate", igate), _np("fgate", fgate), _np("dh", dh),
                        initial, dC_last=_np("dC_last", dC_last), dn_last=_np("dn_last", dn_last),
                        dm_last=_np("dm_last", dm_last), **options)
    dinitial = tuple(_t(x) for x in g.dinitial) if g.dinitial is not None else tuple(_absent(q) for _ in range(3))
    return _t(g.dq), _t(g.dk), _t(g.dv), _t(g.digate), _t(g.dfgate), *dinitial


@_mlstm_backward.register_fake
def _(q, k, v, igate, fgate, C0, n0, m0, dh, dC_last, dn_last, dm_last, form, chunk_size, input_gate, normalize, eps,
      cu_seqlens):
    dinitial = ((torch.empty_like(C0), torch.empty_like(n0), torch.empty_like(m0)) if C0 is not None
                else tuple(_absent(q) for _ in range(3)))
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(igate),
            torch.empty_like(fgate), *dinitial)


def _mlstm_setup(ctx, inputs, output):
    q, k, v, igate, fgate, C0, n0, m0, *options = inputs
    ctx.save_for_backward(q, k, v, igate, fgate, C0, n0, m0)
    ctx.options = options


def _mlstm_grad(ctx, dh, dC, dn, dm):
    q, k, v, igate, fgate, C0, n0, m0 = ctx.saved_tensors
    dq, dk, dv, di, df, dC0, dn0, dm0 = _mlstm_backward(q, k, v, igate, fgate, C0, n0, m0, dh, dC, dn, dm,
                                                        *ctx.options)
    dinitial = (dC0, dn0, dm0) if C0 is not None else (None, None, None)
    return dq, dk, dv, di, df, *dinitial, None, None, None, None, None, None


_mlstm_forward.register_autograd(_mlstm_grad, setup_context=_mlstm_setup)


def mlstm(q: Tensor, k: Tensor, v: Tensor, igate: Tensor, fgate: Tensor, initial: Optional[Any] = None, *,
          form: str = "chunkwise", chunk_size: int = 64, input_gate: str = "exp", normalize: bool = True,
          eps: float = 1e-6, cu_seqlens: Optional[Any] = None) -> MlstmOutput:
    """The mLSTM as a differentiable torch op: h (B, NH, S, DV) and the final state (C, n, m);
    gradients reach q, k, v, igate, fgate and the initial state (C, n, m) when given. Arguments as in
    flashlstm.mlstm.forward; ``cu_seqlens`` (a list or an integer tensor of N + 1 offsets, on any
    device) packs N sequences into one (1, NH, total, D) batch, the states then being (N, NH, ...)."""
    C0, n0, m0 = initial if initial is not None else (None, None, None)
    h, C, n, m = _mlstm_forward(q, k, v, igate, fgate, C0, n0, m0, form, chunk_size, input_gate, normalize, eps,
                                _offset_list(cu_seqlens))
    return MlstmOutput(h, _mlstm.State(C, n, m))


def _offset_list(cu_seqlens: Optional[Any]) -> Optional[List[int]]:
    """Packed-sequence offsets as Python integers (the ops take them on the host); None stays None."""
    if cu_seqlens is None:
        return None
    if isinstance(cu_seqlens, Tensor):
        if cu_seqlens.dim() != 1 or cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype == torch.bool:
            raise ValueError(f"cu_seqlens: expected a 1-D integer tensor, got {cu_seqlens.dtype} with shape "
                             f"{tuple(cu_seqlens.shape)}")
        return [int(c) for c in cu_seqlens.tolist()]
    if isinstance(cu_seqlens, (list, tuple)):  # plain Python, which torch.compile traces
        if not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in cu_seqlens):
            raise ValueError(f"cu_seqlens: expected integer offsets, got {list(cu_seqlens)}")
        return [int(c) for c in cu_seqlens]
    return _mlstm._offsets(cu_seqlens)


# sLSTM / LSTM ------------------------------------------------------------------------------------


class SlstmOutput(NamedTuple):
    h: Tensor  # (B, T, NH, DH): h after every step
    last: Tensor  # (NS, B, NH, DH): the final state


@torch.library.custom_op("flashlstm::slstm_forward", mutates_args=())
def _slstm_forward(Wx: Tensor, R: Tensor, b: Tensor, initial: Optional[Tensor], cell: str, forget_gate: str,
                   keep: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """h, the final state and — on the GPU with ``keep`` — every state and pre-activation, which the
    CUDA backward reads (empty otherwise)."""
    if Wx.is_cuda:
        out = _slstm.forward(_dev(Wx), _dev(R), _dev(b), _dev(initial), cell=cell, forget_gate=forget_gate,
                             keep_gates=keep)
        h = out.states[0].to(Wx.dtype, copy=True)
        return h, out.last, out.states if keep else _absent(Wx), out.gates if keep else _absent(Wx)
    out = _slstm.forward(_np("Wx", Wx), _np("R", R), _np("b", b), _np("initial", initial), cell=cell,
                         forget_gate=forget_gate)
    return _t(out.states[0]), _t(out.last), _absent(Wx), _absent(Wx)


@_slstm_forward.register_fake
def _(Wx, R, b, initial, cell, forget_gate, keep):
    B, T, _, NH, DH = Wx.shape
    NS = _slstm.num_states(cell)
    state = torch.float32 if Wx.is_cuda else Wx.dtype
    kept = Wx.is_cuda and keep
    return (Wx.new_empty((B, T, NH, DH)), Wx.new_empty((NS, B, NH, DH), dtype=state),
            Wx.new_empty((NS, B, T, NH, DH), dtype=state) if kept else _absent(Wx),
            Wx.new_empty((B, T, 4, NH, DH), dtype=state) if kept else _absent(Wx))


@torch.library.custom_op("flashlstm::slstm_backward", mutates_args=())
def _slstm_backward(Wx: Tensor, R: Tensor, b: Tensor, initial: Optional[Tensor], states: Tensor, gates: Tensor,
                    dh: Tensor, dlast: Tensor, cell: str, forget_gate: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    if Wx.is_cuda:
        saved = _slstm.Output(_dev(states), None, _dev(gates))
        g = _slstm.backward(_dev(Wx), _dev(R), _dev(b), _dev(dh.float()), _dev(initial), dlast=_dev(dlast.float()),
                            saved=saved, cell=cell, forget_gate=forget_gate)
        return g.dWx, g.dR, g.db, g.dinitial if g.dinitial is not None else _absent(Wx)
    g = _slstm.backward(_np("Wx", Wx), _np("R", R), _np("b", b), _np("dh", dh), _np("initial", initial),
                        dlast=_np("dlast", dlast), cell=cell, forget_gate=forget_gate)
    return _t(g.dWx), _t(g.dR), _t(g.db), _t(g.dinitial) if g.dinitial is not None else _absent(Wx)


@_slstm_backward.register_fake
def _(Wx, R, b, initial, states, gates, dh, dlast, cell, forget_gate):
    return (torch.empty_like(Wx), torch.empty_like(R), torch.empty_like(b),
            torch.empty_like(initial) if initial is not None else _absent(Wx))


def _slstm_setup(ctx, inputs, output):
    Wx, R, b, initial, cell, forget_gate, keep = inputs
    _, _, states, gates = output
    ctx.save_for_backward(Wx, R, b, initial, states, gates)
    ctx.options = (cell, forget_gate)


def _slstm_grad(ctx, dh, dlast, _dstates, _dgates):
    Wx, R, b, initial, states, gates = ctx.saved_tensors
    if Wx.is_cuda and states.numel() == 0:
        raise RuntimeError("slstm: the forward ran without keeping its states (grad mode was off)")
    dWx, dR, db, dinitial = _slstm_backward(Wx, R, b, initial, states, gates, dh, dlast, *ctx.options)
    return dWx, dR, db, dinitial if initial is not None else None, None, None, None


_slstm_forward.register_autograd(_slstm_grad, setup_context=_slstm_setup)


def slstm(Wx: Tensor, R: Tensor, b: Tensor, initial: Optional[Tensor] = None, *, cell: str = "slstm",
          forget_gate: str = "sigmoid") -> SlstmOutput:
    """The sLSTM (or LSTM, cell="lstm"): h after every step (B, T, NH, DH) and the final state
    (NS, B, NH, DH), both differentiable (in Wx, R, b and the initial state when given). CPU tensors run
    on the reference (float32 or float64); CUDA tensors (float32 or bfloat16 Wx, R, b; head dims 16,
    32, 64, 128) on the fused kernels, with h in Wx's dtype and float32 states (``initial`` float32).
    When autograd needs them, the CUDA forward keeps every state and pre-activation for the backward."""
    keep = Wx.is_cuda and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (Wx, R, b, initial))
    h, last, _, _ = _slstm_forward(Wx, R, b, initial, cell, forget_gate, keep)
    return SlstmOutput(h, last)


# pLSTM -------------------------------------------------------------------------------------------

_dags: dict = {}


def _dag(num_nodes: int, edges: Tensor) -> _graph.Dag:
    """The Dag of an edge tensor, built once per distinct graph."""
    key = (num_nodes, edges.detach().cpu().numpy().tobytes())
    if key not in _dags:
        _dags[key] = _graph.Dag(num_nodes, edges.detach().cpu().numpy())
    return _dags[key]


@torch.library.custom_op("flashlstm::plstm_dag_forward", mutates_args=())
def _plstm_dag_forward(edges: Tensor, num_nodes: int, q: Tensor, k: Tensor, v: Tensor, S: Tensor, T: Tensor,
                       M: Tensor, D: Tensor, form: str, qk_scale: float) -> Tensor:
    if q.is_cuda:  # the recurrent form level by level
        if form not in ("recurrent", "levels"):
            raise ValueError(f"form: CUDA tensors run the recurrent form level by level; got {form!r}")
        return _plstm.dag_forward(_dag(num_nodes, edges), *(_dev(t) for t in (q, k, v, S, T, M, D)), qk_scale=qk_scale)
    x = [_np(name, t) for name, t in zip("qkvSTMD", (q, k, v, S, T, M, D))]
    return _t(_plstm.dag_forward(_dag(num_nodes, edges), *x, form=form, qk_scale=qk_scale))


@_plstm_dag_forward.register_fake
def _(edges, num_nodes, q, k, v, S, T, M, D, form, qk_scale):
    return v.new_empty(v.shape)


@torch.library.custom_op("flashlstm::plstm_dag_backward", mutates_args=())
def _plstm_dag_backward(edges: Tensor, num_nodes: int, q: Tensor, k: Tensor, v: Tensor, S: Tensor, T: Tensor,
                        M: Tensor, D: Tensor, dh: Tensor, qk_scale: float) -> Tuple[Tensor, Tensor, Tensor, Tensor,
                                                                                     Tensor, Tensor, Tensor]:
    if q.is_cuda:
        return tuple(_plstm.dag_backward(_dag(num_nodes, edges), *(_dev(t) for t in (q, k, v, S, T, M, D, dh)),
                                         qk_scale=qk_scale))
    x = [_np(name, t) for name, t in zip(("q", "k", "v", "S", "T", "M", "D", "dh"), (q, k, v, S, T, M, D, dh))]
    return tuple(_t(g) for g in _plstm.dag_backward(_dag(num_nodes, edges), *x, qk_scale=qk_scale))


@_plstm_dag_backward.register_fake
def _(edges, num_nodes, q, k, v, S, T, M, D, dh, qk_scale):
    return tuple(torch.empty_like(x) for x in (q, k, v, S, T, M, D))


def _plstm_dag_setup(ctx, inputs, output):
    edges, num_nodes, *tensors, form, qk_scale = inputs
    ctx.save_for_backward(edges, *tensors)
    ctx.num_nodes, ctx.qk_scale = num_nodes, qk_scale


def _plstm_dag_grad(ctx, dh):
    edges, *tensors = ctx.saved_tensors
    grads = _plstm_dag_backward(edges, ctx.num_nodes, *tensors, dh, ctx.qk_scale)
    return None, None, *grads, None, None


_plstm_dag_forward.register_autograd(_plstm_dag_grad, setup_context=_plstm_dag_setup)


def plstm_dag(dag: _graph.Dag, q: Tensor, k: Tensor, v: Tensor, S: Tensor, T: Tensor, M: Tensor, D: Tensor, *,
              form: str = "recurrent", qk_scale: float = 0.0) -> Tensor:
    """pLSTM on a DAG: h (B, NH, N, DV), differentiable in q, k, v and the gates
    (flashlstm.plstm.dag_forward's layouts). CPU tensors (float32 or float64) run the reference in
    `form`; CUDA tensors (q, k, v float32 or bfloat16, gates float32) the CUDA kernels, forward and
    backward (the recurrent form level by level)."""
    edges = torch.from_numpy(dag.edges)
    return _plstm_dag_forward(edges, dag.num_nodes, q, k, v, S, T, M, D, form, qk_scale)


@torch.library.custom_op("flashlstm::plstm_sequence_forward", mutates_args=())
def _plstm_sequence_forward(q: Tensor, k: Tensor, v: Tensor, S: Tensor, T: Tensor, M: Tensor, D: Tensor, form: str,
                            chunk_size: int, qk_scale: float) -> Tensor:
    if q.is_cuda:
        return _plstm.sequence_forward(*(_dev(t) for t in (q, k, v, S, T, M, D)), form=form or None,
                                       chunk_size=chunk_size, qk_scale=qk_scale)
    x = [_np(name, t) for name, t in zip("qkvSTMD", (q, k, v, S, T, M, D))]
    return _t(_plstm.sequence_forward(*x, form=form or None, chunk_size=chunk_size, qk_scale=qk_scale))


@_plstm_sequence_forward.register_fake
def _(q, k, v, S, T, M, D, form, chunk_size, qk_scale):
    return v.new_empty(v.shape)


@torch.library.custom_op("flashlstm::plstm_sequence_backward", mutates_args=())
def _plstm_sequence_backward(q: Tensor, k: Tensor, v: Tensor, S: Tensor, T: Tensor, M: Tensor, D: Tensor, dh: Tensor,
                             chunk_size: int, qk_scale: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                                                        Tensor]:
    if q.is_cuda:
        return tuple(_plstm.sequence_backward(*(_dev(t) for t in (q, k, v, S, T, M, D, dh)), qk_scale=qk_scale))
    x = [_np(name, t) for name, t in zip(("q", "k", "v", "S", "T", "M", "D", "dh"), (q, k, v, S, T, M, D, dh))]
    return tuple(_t(g) for g in _plstm.sequence_backward(*x, chunk_size=chunk_size, qk_scale=qk_scale))


@_plstm_sequence_backward.register_fake
def _(q, k, v, S, T, M, D, dh, chunk_size, qk_scale):
    return tuple(torch.empty_like(x) for x in (q, k, v, S, T, M, D))


def _plstm_sequence_setup(ctx, inputs, output):
    *tensors, form, chunk_size, qk_scale = inputs
    ctx.save_for_backward(*tensors)
    # The CPU backward runs chunkwise: the forward's chunk size where it has one, else 1 (exact for any).
    ctx.options = (chunk_size if form == "chunkwise" and chunk_size > 0 else 1, qk_scale)


def _plstm_sequence_grad(ctx, dh):
    grads = _plstm_sequence_backward(*ctx.saved_tensors, dh.contiguous(), *ctx.options)
    return *grads, None, None, None


_plstm_sequence_forward.register_autograd(_plstm_sequence_grad, setup_context=_plstm_sequence_setup)


def plstm_sequence(q: Tensor, k: Tensor, v: Tensor, S: Tensor, T: Tensor, M: Tensor, D: Tensor, *,
                   form: Optional[str] = None, chunk_size: int = 0, qk_scale: float = 0.0) -> Tensor:
    """1-D pLSTM: h (B, NH, S, DV), differentiable in q, k, v and the gates S, T, M, D (B, NH, S)
    (flashlstm.plstm.sequence_forward's layouts). CPU tensors (float32 or float64) run the reference
    (form "recurrent" by default, "parallel", "chunkwise" with chunk_size); CUDA tensors (q, k, v
    float32 or bfloat16, gates float32) the CUDA chunkwise kernels (chunks of 64), forward and backward."""
    return _plstm_sequence_forward(q, k, v, S, T, M, D, form or "", chunk_size, qk_scale)


_GRID = ("Sr", "Sd", "Trl", "Tru", "Tdu", "Tdl", "Ml", "Mu", "D")


@torch.library.custom_op("flashlstm::plstm_grid_forward", mutates_args=())
def _plstm_grid_forward(q: Tensor, k: Tensor, v: Tensor, gates: list[Tensor], form: str, chunk_size: int,
                        qk_scale: float, orientations: int) -> Tensor:
    if q.is_cuda:
        run = _plstm.grid_forward_oriented if orientations == 4 else _plstm.grid_forward
        return run(_dev(q), _dev(k), _dev(v), _plstm.GridGates(*(_dev(t) for t in gates)), form=form or None,
                   qk_scale=qk_scale)
    run = _plstm.grid_forward_oriented if orientations == 4 else _plstm.grid_forward
    g = [_np(name, t) for name, t in zip(_GRID, gates)]
    return _t(run(_np("q", q), _np("k", k), _np("v", v), g, form=form or "recurrent", chunk_size=chunk_size,
                  qk_scale=qk_scale))


@_plstm_grid_forward.register_fake
def _(q, k, v, gates, form, chunk_size, qk_scale, orientations):
    return v.new_empty(v.shape)


@torch.library.custom_op("flashlstm::plstm_grid_backward", mutates_args=())
def _plstm_grid_backward(q: Tensor, k: Tensor, v: Tensor, gates: list[Tensor], dh: Tensor, chunk_size: int,
                         qk_scale: float, orientations: int) -> list[Tensor]:
    run = _plstm.grid_backward_oriented if orientations == 4 else _plstm.grid_backward
    if q.is_cuda:
        return list(run(_dev(q), _dev(k), _dev(v), _plstm.GridGates(*(_dev(t) for t in gates)), _dev(dh),
                        qk_scale=qk_scale))
    g = [_np(name, t) for name, t in zip(_GRID, gates)]
    grad = run(_np("q", q), _np("k", k), _np("v", v), g, _np("dh", dh), chunk_size=chunk_size, qk_scale=qk_scale)
    return [_t(x) for x in grad]


@_plstm_grid_backward.register_fake
def _(q, k, v, gates, dh, chunk_size, qk_scale, orientations):
    return [torch.empty_like(x) for x in (q, k, v, *gates)]


def _plstm_grid_setup(ctx, inputs, output):
    q, k, v, gates, form, chunk_size, qk_scale, orientations = inputs
    ctx.save_for_backward(q, k, v, *gates)
    # The CPU backward runs chunkwise: the forward's chunk size where it has one, else 1 (exact for any).
    ctx.options = (chunk_size if form == "chunkwise" else 1, qk_scale, orientations)


def _plstm_grid_grad(ctx, dh):
    q, k, v, *gates = ctx.saved_tensors
    dq, dk, dv, *dgates = _plstm_grid_backward(q, k, v, gates, dh.contiguous(), *ctx.options)
    return dq, dk, dv, dgates, None, None, None, None


_plstm_grid_forward.register_autograd(_plstm_grid_grad, setup_context=_plstm_grid_setup)


def plstm_grid(q: Tensor, k: Tensor, v: Tensor, gates: Any, *, form: Optional[str] = None, chunk_size: int = 0,
               qk_scale: float = 0.0, orientations: int = 1) -> Tensor:
    """2-D pLSTM: h (B, NH, X, Y, DV), differentiable in q, k, v and the nine gates (a
    flashlstm.plstm.GridGates of tensors; layouts of flashlstm.plstm.grid_forward). orientations=4:
    the sum over the four orientations, gates (4, B, NH, X, Y) each (grid_forward_oriented).

    CPU tensors (float32 or float64) run the reference (form: "recurrent" by default, "chunkwise",
    "parallel"); CUDA tensors (q, k, v float32 or bfloat16, gates float32) the CUDA kernels, forward
    and backward (form None or "parallel")."""
    if len(gates) != 9:
        raise ValueError(f"gates: expected the nine grid gates {_GRID}, got {len(gates)}")
    if orientations not in (1, 4):
        raise ValueError(f"orientations: must be 1 or 4, got {orientations}")
    return _plstm_grid_forward(q, k, v, list(gates), form or "", chunk_size, qk_scale, orientations)


# P-mode and D-mode gates ---------------------------------------------------------------------------
# The parameterisations of flashlstm.plstm (raw pre-activations -> S, T, M, D) in torch operations:
# differentiable by autograd and on any device, so a model trains its raw gates end to end (on GPU
# tensors too). Same definitions and argument order as the numpy functions, which they equal.


def grid_gates_p_mode(Sr: Tensor, Sd: Tensor, alpha: Tensor, gamma: Tensor, Ml: Tensor, Mu: Tensor,
                      D: Tensor) -> "_plstm.GridGates":
    """P-mode grid gates: into the right edge T^rl = T^ru = γα, into the down edge T^du = T^dl = γ(1-α)
    with α = σ(alpha), γ = σ(gamma); S, M, D = σ(raw). Any shape (one orientation or four), all alike."""
    right = torch.sigmoid(gamma) * torch.sigmoid(alpha)
    down = torch.sigmoid(gamma) * torch.sigmoid(-alpha)
    s = torch.sigmoid
    return _plstm.GridGates(s(Sr), s(Sd), right, right, down, down, s(Ml), s(Mu), s(D))


def grid_gates_d_mode(Sr: Tensor, Sd: Tensor, Trl: Tensor, Tru: Tensor, Tdu: Tensor, Ml: Tensor, Mu: Tensor,
                      D: Tensor) -> "_plstm.GridGates":
    """D-mode grid gates: T^rl, T^ru, T^du = tanh(raw), T^dl = 0 (a state turns from vertical to
    horizontal at most once); S, M, D = σ(raw)."""
    s = torch.sigmoid
    return _plstm.GridGates(s(Sr), s(Sd), torch.tanh(Trl), torch.tanh(Tru), torch.tanh(Tdu), torch.zeros_like(Tdu),
                            s(Ml), s(Mu), s(D))


def dag_gates_p_mode(dag: _graph.Dag, S: Tensor, T: Tensor, gamma: Tensor, M: Tensor, D: Tensor) -> "_plstm.DagGates":
    """P-mode DAG gates: T_{e'e} = σ(γ_{e'}) softmax over the arcs leaving the incoming edge e' of
    T̃_{e'e}; S, M, D = σ(raw). S, M, gamma (B, NH, E), T (B, NH, A), D (B, NH, N); arcs in the order
    of flashlstm.graph.line_graph(dag)."""
    incoming = torch.as_tensor(_graph.line_graph(dag).arcs[:, 0], dtype=torch.long, device=T.device)
    E = dag.num_edges
    if T.shape[-1] != len(incoming):
        raise ValueError(f"T: expected {len(incoming)} arcs in the last dimension, got {T.shape[-1]}")
    index = incoming.expand(*T.shape[:-1], -1)
    # Every arc leaves exactly one incoming edge, so the edge's id names its softmax group; the group
    # maximum only keeps exp finite and carries no gradient.
    top = torch.full((*T.shape[:-1], E), -torch.inf, dtype=T.dtype, device=T.device)
    top = top.scatter_reduce(-1, index, T.detach(), "amax")
    e = torch.exp(T - top.gather(-1, index))
    total = torch.zeros_like(top).scatter_add(-1, index, e)
    decay = torch.sigmoid(gamma).gather(-1, index)
    s = torch.sigmoid
    return _plstm.DagGates(s(S), decay * e / total.gather(-1, index), s(M), s(D))


def dag_gates_d_mode(dag: _graph.Dag, S: Tensor, T: Tensor, M: Tensor, D: Tensor) -> "_plstm.DagGates":
    """D-mode DAG gates: T = tanh(T̃) on the arcs flashlstm.graph.multitree_arcs keeps (the line graph
    pruned to a multitree), 0 on the others; S, M, D = σ(raw)."""
    line = _graph.line_graph(dag)
    if T.shape[-1] != len(line.arcs):
        raise ValueError(f"T: expected {len(line.arcs)} arcs in the last dimension, got {T.shape[-1]}")
    kept = torch.zeros(T.shape[-1], dtype=torch.bool, device=T.device)
    kept[torch.as_tensor(_graph.multitree_arcs(line), dtype=torch.long, device=T.device)] = True
    s = torch.sigmoid
    return _plstm.DagGates(s(S), torch.where(kept, torch.tanh(T), torch.zeros_like(T)), s(M), s(D))
