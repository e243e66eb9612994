"""Context-parallel mLSTM over a torch.distributed process group: each rank holds a contiguous slice
of every sequence's tokens (rank 0 the first), and together they compute exactly what one process
computes on the whole sequence — outputs and, through autograd, every gradient.

A rank needs only the state (C, n, m) the slices before it leave: O(DQK x DV) per head, not their
keys and values. Per call:

1. each rank computes the state its slice leaves when entered with an empty state (its
   contribution) and the sum F of its log forget gates. That state is one weighted product over the
   slice, no pass of the recurrence: with a_t = log i_t + sum_{r>t} log f_r,
       m_slice = max_t a_t,   C_slice = sum_t e^(a_t - m_slice) k_t v_t^T,   n_slice = sum_t e^(a_t - m_slice) k_t
   (m_slice = 0 and e^(a_t) for the sigmoid input gate, whose log i_t = logsigmoid);
2. one all-gather of those (small) contributions and F;
3. each rank folds the contributions of the ranks before it onto the initial state (a scan over the
   ranks) — the mLSTM's state after a slice is affine in the state before it:
       m' = max(F + m, m_slice),  C' = e^(F + m - m') C + e^(m_slice - m') C_slice  (n alike)
   for the exponential input gate (m = 0 throughout and C' = e^(F + m) C + C_slice for sigmoid);
4. each rank runs its slice from that state (the kernels' initial-state path): its outputs.

The all-gather is torch.distributed.nn's differentiable one, so the backward is autograd's: every
rank must call backward (as with any collective). Works on the CPU (gloo, the reference) and on
GPUs (NCCL, the CUDA kernels) alike; no communication code of its own.
"""

import warnings
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import Tensor

from . import mlstm as _mlstm
from . import torch as _ft

# Tokens per piece of the contribution's product (bounds its float32 temporaries).
_PIECE = 8192


def _contribution(k: Tensor, v: Tensor, igate: Tensor, fgate: Tensor, stabilised: bool, state: torch.dtype):
    """The state (C, n, m) a slice leaves when entered with an empty state, and its log-forget sum F,
    in the state dtype (see the module comment, step 1)."""
    log_f = F.logsigmoid(fgate.to(state))
    log_i = igate.to(state) if stabilised else F.logsigmoid(igate.to(state))
    # sum_{r>t} log f_r, accumulated from the end so that the recent tokens' sums are the accurate ones
    after = log_f.flip(-1).cumsum(-1).flip(-1) - log_f
    a = log_i + after
    m = a.amax(-1) if stabilised else torch.zeros_like(a[..., 0])
    w = torch.exp(a - m[..., None])
    C, n = 0, 0
    for t0 in range(0, k.shape[-2], _PIECE):
        kw = k[..., t0:t0 + _PIECE, :].to(state) * w[..., t0:t0 + _PIECE, None]
        C = C + kw.transpose(-1, -2) @ v[..., t0:t0 + _PIECE, :].to(state)
        n = n + kw.sum(-2)
    return C, n, m, log_f.sum(-1)


def _fold(C: Tensor, n: Tensor, m: Tensor, F_sum: Tensor, C_s: Tensor, n_s: Tensor, m_s: Tensor,
          stabilised: bool):
    """The state after a slice with contribution (C_s, n_s, m_s) and log-forget sum F_sum, entered
    with (C, n, m)."""
    if stabilised:
        m_new = torch.maximum(F_sum + m, m_s)
        a, b = torch.exp(F_sum + m - m_new), torch.exp(m_s - m_new)
    else:
        m_new = torch.zeros_like(m)
        a, b = torch.exp(F_sum + m), torch.ones_like(m)
    return a[..., None, None] * C + b[..., None, None] * C_s, a[..., None] * n + b[..., None] * n_s, m_new


def mlstm(q: Tensor, k: Tensor, v: Tensor, igate: Tensor, fgate: Tensor, initial: Optional[Any] = None, *,
          group: Optional[dist.ProcessGroup] = None, form: str = "chunkwise", chunk_size: int = 64,
          input_gate: str = "exp", normalize: bool = True, eps: float = 1e-6) -> _ft.MlstmOutput:
    """The mLSTM on this rank's slice of the sequence: q, k (B, NH, S_r, DQK), v (B, NH, S_r, DV),
    igate, fgate (B, NH, S_r), rank r of `group` holding the r-th slice (slices may differ in length).
    `initial` (C, n, m), the state before the whole sequence, is given on rank 0 (on the others it is
    ignored); its gradient arrives on rank 0. Returns h of the slice and the state after it (on the last rank, the final state).
    Arguments otherwise as in flashlstm.torch.mlstm."""
    options = dict(form=form, chunk_size=chunk_size, input_gate=input_gate, normalize=normalize, eps=eps)
    B, NH, S, DQK = q.shape
    if S == 0:
        raise ValueError("q: this rank's slice is empty; every rank needs at least one token")
    DV = v.shape[-1]
    rank = dist.get_rank(group)
    state = q.dtype if not q.is_cuda else torch.float32
    stabilised = input_gate == "exp"

    def zero_state():  # the API's zero state
        like = dict(dtype=state, device=q.device)
        return [torch.zeros(B, NH, DQK, DV, **like), torch.zeros(B, NH, DQK, **like), torch.zeros(B, NH, **like)]

    # 1. This slice's contribution (the state it leaves from an empty state) and its log-forget sum.
    own_C, own_n, own_m, F_sum = _contribution(k, v, igate, fgate, stabilised, state)
    # 2. Everyone's, in one differentiable all-gather (its backward sends each rank the gradient of its
    # contribution; a single collective, so every rank's backward meets it in the same order), with
    # rank 0's initial state riding along (zeros from the others).
    if initial is not None and rank == 0:
        start = [x.to(state) for x in initial]
    else:
        start = zero_state()
    pieces = [own_C, own_n, own_m, F_sum, *start]
    sizes = [x.numel() for x in pieces]
    with warnings.catch_warnings():  # torch >= 2.10 marks torch.distributed.nn's collectives deprecated
        warnings.simplefilter("ignore", FutureWarning)
        gathered = dist_nn.all_gather(torch.cat([x.reshape(-1) for x in pieces]), group=group)
    unpacked = [[y.view(x.shape) for y, x in zip(g.split(sizes), pieces)] for g in gathered]
    # 3. The state entering this slice: the initial state folded through the slices before this one.
    C, n, m = unpacked[0][4:]
    for j in range(rank):
        C_j, n_j, m_j, F_j = unpacked[j][:4]
        C, n, m = _fold(C, n, m, F_j, C_j, n_j, m_j, stabilised)
    # Every rank must take part in the all-gather's backward, so the result depends on every
    # gathered value (the ones this rank does not use through an exact zero).
    m = m + sum((g * 0).sum() for g in gathered)
    # 4. This slice from that state.
    return _ft.mlstm(q, k, v, igate, fgate, _mlstm.State(C, n, m), **options)
