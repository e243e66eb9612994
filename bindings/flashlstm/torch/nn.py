"""Layers around flashlstm's ops (``flashlstm.torch.nn``): the projections, gates, heads and norms of the
xLSTM and pLSTM blocks, running the CUDA kernels for CUDA tensors and the CPU reference for CPU tensors
(float32 or float64), differentiable end to end and traceable by ``torch.compile``.

- ``mLSTMLayer(dim, heads)``: x (B, S, dim) -> (B, S, dim), the xLSTM mLSTM layer.
- ``sLSTMLayer(dim, heads)``: x (B, S, dim) -> (B, S, dim), the xLSTM sLSTM layer.
- ``pLSTM2D(dim, heads, mode)``: x (B, X, Y, dim) -> (B, X, Y, dim), a vision mixing layer over a patch
  grid (four orientations summed; P-mode or D-mode gates; optional positional embedding).
- ``pLSTMGraph(dim, heads, mode)``: node features (N, dim) of a batch of graphs given as one edge
  array -> (N, dim); the graph's DAG and line graph are built once per edge array and cached.

Gate weights start at zero, so at initialisation every gate is its bias: sources, marks and the
direct gate small, transitions close to 1 (states carry far), as the pLSTM and xLSTM papers start them.
"""

import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .. import graph as _graph
from . import dag_gates_d_mode, dag_gates_p_mode, grid_gates_d_mode, grid_gates_p_mode, mlstm, plstm_dag, plstm_grid, slstm

__all__ = ["mLSTMLayer", "sLSTMLayer", "pLSTM2D", "pLSTMGraph", "HeadNorm"]


def _small_init(linear: nn.Linear, fan_in: int) -> nn.Linear:
    nn.init.normal_(linear.weight, std=math.sqrt(2.0 / (5.0 * fan_in)))
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
    return linear


def _gate(fan_in: int, units: int, bias) -> nn.Linear:
    """A gate projection: zero weights, the given bias (a number or a tensor of `units`)."""
    linear = nn.Linear(fan_in, units)
    nn.init.zeros_(linear.weight)
    with torch.no_grad():
        linear.bias.copy_(torch.as_tensor(bias, dtype=linear.bias.dtype).expand(units))
    return linear


def _kernel_dtype(x: Tensor) -> torch.dtype:
    """The gates' dtype for the ops: float32 on CUDA (the kernels' gates), x's own on the CPU."""
    return torch.float32 if x.is_cuda else x.dtype


class HeadNorm(nn.Module):
    """RMSNorm over the last dimension of each head: x (..., heads, D), a learnable scale per channel."""

    def __init__(self, heads: int, head_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(heads, head_dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class _CausalConv(nn.Module):
    """Depthwise causal convolution over time, then SiLU: x (B, S, C) -> (B, S, C)."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(channels, channels, kernel, groups=channels) if kernel > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is None:
            return x
        y = self.conv(nn.functional.pad(x.transpose(1, 2), (self.kernel - 1, 0)))
        return nn.functional.silu(y.transpose(1, 2))


class _Headwise(nn.Module):
    """A block-diagonal linear map: `blocks` independent (size x size) blocks over the channels."""

    def __init__(self, channels: int, size: int, fan_in: int):
        super().__init__()
        if channels % size:
            raise ValueError(f"channels: {channels} is not a multiple of the block size {size}")
        self.size = size
        self.weight = nn.Parameter(torch.randn(channels // size, size, size) * math.sqrt(2.0 / (5.0 * fan_in)))

    def forward(self, x: Tensor) -> Tensor:
        blocks = x.unflatten(-1, (-1, self.size))
        return torch.einsum("...bi,boi->...bo", blocks, self.weight).flatten(-2)


class mLSTMLayer(nn.Module):
    """The xLSTM mLSTM layer: up-projection to 2 x inner (inner = proj_factor x dim, rounded up to 64),
    a causal depthwise convolution (kernel 4) and SiLU on one half, q and k from it and v from the
    half before it (block-diagonal maps of block 4), input and forget gates from (q, k, v) per head
    (forget biases 3 … 6 across heads), the mLSTM (``flashlstm.torch.mlstm``), a per-head norm, a
    learnable skip from the convolution, the SiLU gate of the other half, the down-projection.

    x (B, S, dim) -> (B, S, dim); `chunk_size` is the chunkwise form's (CPU and CUDA)."""

    def __init__(self, dim: int, heads: int = 4, proj_factor: float = 2.0, conv_kernel: int = 4, chunk_size: int = 64):
        super().__init__()
        inner = math.ceil(proj_factor * dim / 64) * 64
        if inner % heads:
            raise ValueError(f"heads: {heads} does not divide the inner width {inner}")
        self.heads, self.inner, self.chunk_size = heads, inner, chunk_size
        self.up = _small_init(nn.Linear(dim, 2 * inner, bias=False), dim)
        self.conv = _CausalConv(inner, conv_kernel)
        self.q, self.k, self.v = (_Headwise(inner, 4, dim) for _ in range(3))
        self.igate = _gate(3 * inner, heads, torch.randn(heads) * 0.1)
        self.fgate = _gate(3 * inner, heads, torch.linspace(3.0, 6.0, heads))
        self.norm = HeadNorm(heads, inner // heads)
        self.skip = nn.Parameter(torch.ones(inner))
        self.down = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, S, _ = x.shape
        x_m, z = self.up(x).chunk(2, dim=-1)
        x_c = self.conv(x_m)
        q, k, v = self.q(x_c), self.k(x_c), self.v(x_m)
        qkv = torch.cat([q, k, v], dim=-1)
        heads = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731  (B, NH, S, DH)
        gate = lambda g: g(qkv).transpose(1, 2)  # noqa: E731  (B, NH, S), q's dtype
        h = mlstm(heads(q), heads(k), heads(v), gate(self.igate), gate(self.fgate), chunk_size=self.chunk_size).h
        h = self.norm(h.transpose(1, 2).to(x.dtype)).flatten(-2)  # (B, S, inner)
        return self.down((h + self.skip * x_c) * nn.functional.silu(z))


class sLSTMLayer(nn.Module):
    """The xLSTM sLSTM layer: a causal depthwise convolution (kernel 4) and SiLU feeding the input and
    forget gates, the raw input feeding the cell input and output gates (head-wise maps), the sLSTM
    with head-wise recurrent matrices (``flashlstm.torch.slstm``, exp input gate, sigmoid forget gate;
    forget biases from +5 down to -7 across each head's units, as xLSTM's power-law rule for the
    first block), a per-head norm.

    x (B, S, dim) -> (B, S, dim); dim / heads is a head dim the CUDA kernels take (16, 32, 64, 128)."""

    def __init__(self, dim: int, heads: int = 4, conv_kernel: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads: {heads} does not divide dim {dim}")
        self.heads, self.head_dim = heads, dim // heads
        self.conv = _CausalConv(dim, conv_kernel)
        self.W = nn.ModuleList(_Headwise(dim, self.head_dim, dim) for _ in range(4))  # i, f, z, o
        self.R = nn.Parameter(torch.zeros(4, heads, self.head_dim, self.head_dim))
        j = torch.arange(self.head_dim, dtype=torch.float32) / max(self.head_dim - 1, 1)
        b = torch.zeros(4, heads, self.head_dim)
        b[1] = 5.0 - 12.0 * j.pow(0.3)
        self.b = nn.Parameter(b)
        self.norm = HeadNorm(heads, self.head_dim)

    def forward(self, x: Tensor) -> Tensor:
        x_c = self.conv(x)
        pre = [self.W[0](x_c), self.W[1](x_c), self.W[2](x), self.W[3](x)]
        Wx = torch.stack(pre, dim=2).unflatten(-1, (self.heads, self.head_dim))  # (B, S, 4, NH, DH)
        h = slstm(Wx, self.R.to(Wx.dtype), self.b.to(Wx.dtype)).h  # (B, S, NH, DH)
        return self.norm(h.to(x.dtype)).flatten(-2)


class pLSTM2D(nn.Module):
    """A pLSTM mixing layer over a patch grid: q, k, v by linear maps (head dim dim / heads), gates per
    orientation and head from the patch (zero weights at first), the sum over the four orientations
    (``flashlstm.torch.plstm_grid``), a per-head RMSNorm and an output projection.

    mode "P" (directed propagation, ``grid_gates_p_mode``: a learned direction α, per orientation and
    head biases from -2 to 2, and decay γ) or "D" (``grid_gates_d_mode``: transitions tanh, one turn
    direction pruned). The pLSTM vision model alternates a P layer and a D layer. Biases at first:
    sources and marks σ(-4), direct σ(-6), decay and transitions close to 1.

    pos_embed=(X, Y) adds a learnable positional embedding (std 1 / sqrt(2.5 dim)) before the mixing,
    resized bicubically to other grid sizes (the extrapolation to larger images).

    x (B, X, Y, dim) -> (B, X, Y, dim)."""

    _P = ("Sr", "Sd", "alpha", "gamma", "Ml", "Mu", "D")
    _D = ("Sr", "Sd", "Trl", "Tru", "Tdu", "Ml", "Mu", "D")
    _BIAS = {"Sr": -4.0, "Sd": -4.0, "Ml": -4.0, "Mu": -4.0, "D": -6.0, "gamma": 6.0, "Trl": 3.0, "Tru": 3.0,
             "Tdu": 3.0}

    def __init__(self, dim: int, heads: int, mode: str = "P", pos_embed: Optional[Tuple[int, int]] = None):
        super().__init__()
        if mode not in ("P", "D"):
            raise ValueError(f"mode: 'P' or 'D', got {mode!r}")
        if dim % heads:
            raise ValueError(f"heads: {heads} does not divide dim {dim}")
        self.heads, self.mode = heads, mode
        self.names = self._P if mode == "P" else self._D
        self.q, self.k, self.v = (_small_init(nn.Linear(dim, dim), dim) for _ in range(3))
        units = 4 * heads  # orientation-major, then head
        bias = [torch.full((units,), self._BIAS[n]) if n != "alpha" else torch.linspace(-2.0, 2.0, heads).repeat(4)
                for n in self.names]
        self.gates = _gate(dim, len(self.names) * units, torch.cat(bias))
        self.norm = HeadNorm(heads, dim // heads)
        self.out = nn.Linear(dim, dim, bias=False)
        self.pos = None
        if pos_embed is not None:
            self.pos = nn.Parameter(torch.randn(1, *pos_embed, dim) / math.sqrt(2.5 * dim))

    def forward(self, x: Tensor) -> Tensor:
        B, X, Y, dim = x.shape
        if self.pos is not None:
            pos = self.pos
            if pos.shape[1:3] != (X, Y):
                pos = nn.functional.interpolate(pos.permute(0, 3, 1, 2), size=(X, Y), mode="bicubic",
                                                align_corners=False).permute(0, 2, 3, 1)
            x = x + pos
        heads = lambda t: t.unflatten(-1, (self.heads, -1)).permute(0, 3, 1, 2, 4)  # noqa: E731  (B, NH, X, Y, DH)
        # Raw gates (B, X, Y, gate, orientation, head) -> one (4, B, NH, X, Y) tensor per gate.
        raw = self.gates(x).to(_kernel_dtype(x)).unflatten(-1, (len(self.names), 4, self.heads))
        raw = raw.permute(3, 4, 0, 5, 1, 2).unbind(0)
        gates = (grid_gates_p_mode if self.mode == "P" else grid_gates_d_mode)(*raw)
        h = plstm_grid(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), gates, orientations=4)
        h = self.norm(h.permute(0, 2, 3, 1, 4).to(x.dtype)).flatten(-2)  # (B, X, Y, dim)
        return self.out(h)


class pLSTMGraph(nn.Module):
    """A pLSTM layer on graphs: node features x (N, dim) of a batch of graphs joined into one (node ids
    offset graph by graph) with undirected edges (E, 2). Each edge points from its lower node id to its
    higher one (reverse=True: the other way), which makes the graph a DAG; that DAG, its line graph and
    its kernel arrays are built once per distinct edge array and cached (up to `max_cached_graphs`, the
    oldest dropped first; keep a batch's molecules together across epochs to reuse them).

    Gates (zero weights at first): the source of an edge from its two end nodes, its mark likewise,
    the transition of a line-graph arc (in-edge -> node -> out-edge) from the in-edge's source, the node
    and the out-edge's target, the direct gate from the node; mode "P" (``dag_gates_p_mode``: each
    in-edge's transitions a softmax over its out-edges times a decay) or "D" (``dag_gates_d_mode``: the
    line graph pruned to a multitree, transitions tanh). Then a per-head RMSNorm and an output
    projection. x (N, dim) -> (N, dim)."""

    def __init__(self, dim: int, heads: int, mode: str = "P", reverse: bool = False):
        super().__init__()
        if mode not in ("P", "D"):
            raise ValueError(f"mode: 'P' or 'D', got {mode!r}")
        if dim % heads:
            raise ValueError(f"heads: {heads} does not divide dim {dim}")
        self.heads, self.mode, self.reverse = heads, mode, reverse
        self.q, self.k, self.v = (_small_init(nn.Linear(dim, dim), dim) for _ in range(3))
        self.source = _gate(2 * dim, heads, -4.0)
        self.mark = _gate(2 * dim, heads, -4.0)
        self.transition = _gate(3 * dim, heads, 0.0 if mode == "P" else 3.0)
        self.decay = _gate(2 * dim, heads, 6.0) if mode == "P" else None
        self.direct = _gate(dim, heads, -6.0)
        self.norm = HeadNorm(heads, dim // heads)
        self.out = nn.Linear(dim, dim, bias=False)
        self._graphs: dict = {}
        self.max_cached_graphs = 4096  # distinct edge arrays kept prepared (oldest dropped first)

    def __getstate__(self):
        return {**self.__dict__, "_graphs": {}}  # copies and pickles rebuild the cache (DAGs do not pickle)

    def _graph(self, num_nodes: int, edges: Tensor):
        """The DAG of an edge array and the index tensors the gates need, built once per edge array."""
        key = (num_nodes, edges.device, edges.detach().cpu().numpy().tobytes())
        if key not in self._graphs:
            while self._graphs and len(self._graphs) >= self.max_cached_graphs:
                del self._graphs[next(iter(self._graphs))]  # the oldest
            e = edges.detach().cpu().numpy()
            directed = e.copy()
            directed[:, 0], directed[:, 1] = e.min(axis=1), e.max(axis=1)
            if self.reverse:
                directed = directed[:, ::-1].copy()
            dag = _graph.Dag(num_nodes, directed)
            arcs = _graph.line_graph(dag).arcs  # (A, 3): from edge, to edge, node
            long = lambda a: torch.as_tensor(a, dtype=torch.long, device=edges.device)  # noqa: E731
            self._graphs[key] = (dag, long(dag.edges[:, 0]), long(dag.edges[:, 1]),
                                 long(dag.edges[arcs[:, 0], 0]), long(arcs[:, 2]), long(dag.edges[arcs[:, 1], 1]))
        return self._graphs[key]

    def forward(self, x: Tensor, edges: Tensor) -> Tensor:
        N, dim = x.shape
        dag, src, dst, arc_src, arc_node, arc_dst = self._graph(N, edges)
        per_head = lambda t: t.to(_kernel_dtype(x)).transpose(0, 1).unsqueeze(0)  # noqa: E731  (1, NH, items)
        ends = torch.cat([x[src], x[dst]], dim=-1)
        S, M = per_head(self.source(ends)), per_head(self.mark(ends))
        T = per_head(self.transition(torch.cat([x[arc_src], x[arc_node], x[arc_dst]], dim=-1)))
        D = per_head(self.direct(x))
        if self.mode == "P":
            gates = dag_gates_p_mode(dag, S, T, per_head(self.decay(ends)), M, D)
        else:
            gates = dag_gates_d_mode(dag, S, T, M, D)
        heads = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(0, 1).unsqueeze(0)  # noqa: E731  (1, NH, N, DH)
        h = plstm_dag(dag, heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), *gates)
        return self.out(self.norm(h[0].transpose(0, 1).to(x.dtype)).flatten(-2))
