"""The 2-D grid pLSTM's gating built from chunk maps, in numpy: the algorithm a tensor-core grid kernel
can follow instead of a dynamic programme per node pair.

The grid is cut into chunks of L x L nodes (odd grids padded with zero gates and zero q, k, v, which
no path between real nodes crosses). Per chunk, one dynamic programme over its L² nodes gives four
maps between its 2L in-border edges (its left and top neighbours' states), its L² nodes and its 2L
out-border edges (its right and bottom states):

    Tb (2L out x 2L in)    border to border         Sb (2L out x L² nodes)   node to border (S included)
    Mb (L² nodes x 2L in)  border to node (M incl.) Gb (L² x L²)             node to node (D on the diagonal)

Per source chunk A, a programme over the chunks in raster order gives X_A[B] (2L in-borders of B x
2L out-borders of A), the weight with which A's out-border states reach B's in-borders:
X_A[B] = the rows of (I if P is A else Tb_P X_A[P]) for B's left neighbour's right border and its
top neighbour's bottom border. The gating between chunks is then three small matrix products,

    G[B, A] = Mb_B X_A[B] Sb_A      (B ≠ A, B right of and below A),      G[A, A] = Gb_A,

and h_B = s Σ_A ((Q_B K_Aᵀ) ∘ G[B, A]) V_A, summed over the four orientations (each in its own
frame: the grid flipped). This test checks that this equals the reference on odd grids, chunk sides
2, 4 and 8, one and four orientations, with transitions of exactly 0, 1 and -1 among random ones."""

import numpy as np
import pytest

fl = pytest.importorskip("flashlstm")
from flashlstm import plstm  # noqa: E402

from helpers import rel, rng  # noqa: E402

Sr, Sd, Trl, Tru, Tdu, Tdl, Ml, Mu, D = range(9)


def chunk_maps(g, L):
    """Tb, Sb, Mb, Gb of one chunk from its gates g (9, L, L). Coefficient vectors run over
    [left in-borders (L, by row y), top in-borders (L, by column x), nodes (L², x-major)]; out-borders
    are [right (by y), bottom (by x)]."""
    width = 2 * L + L * L
    unit = np.eye(width)
    right, down = np.zeros((L, L, width)), np.zeros((L, L, width))
    mark = np.zeros((L * L, width))
    for x in range(L):
        for y in range(L):
            n = 2 * L + x * L + y
            left_in = right[x - 1, y] if x > 0 else unit[y]
            top_in = down[x, y - 1] if y > 0 else unit[L + x]
            right[x, y] = g[Trl, x, y] * left_in + g[Tru, x, y] * top_in + g[Sr, x, y] * unit[n]
            down[x, y] = g[Tdu, x, y] * top_in + g[Tdl, x, y] * left_in + g[Sd, x, y] * unit[n]
            mark[x * L + y] = g[Ml, x, y] * left_in + g[Mu, x, y] * top_in + g[D, x, y] * unit[n]
    out = np.concatenate([right[L - 1, :], down[:, L - 1]])  # (2L, width)
    return out[:, :2 * L], out[:, 2 * L:], mark[:, :2 * L], mark[:, 2 * L:]


def chunked_gating(gates, L):
    """The N x N gating G[target, source] of one orientation (gates (9, X, Y), X and Y multiples of L)
    assembled from chunk maps, a (target chunk, source chunk) block at a time."""
    _, X, Y = gates.shape
    CX, CY = X // L, Y // L
    maps = {(cx, cy): chunk_maps(gates[:, cx * L:(cx + 1) * L, cy * L:(cy + 1) * L], L)
            for cx in range(CX) for cy in range(CY)}
    nodes = lambda cx, cy: ((cx * L + np.arange(L))[:, None] * Y + cy * L + np.arange(L)).reshape(-1)  # noqa: E731
    G = np.zeros((X * Y, X * Y))
    for a in maps:
        Sb_a = maps[a][1]
        G[np.ix_(nodes(*a), nodes(*a))] = maps[a][3]
        X_a, out = {}, {a: np.eye(2 * L)}  # out[P]: P's out-border states in A's out-border states
        for bx in range(a[0], CX):
            for by in range(a[1], CY):
                b = (bx, by)
                if b == a:
                    continue
                Xb = np.zeros((2 * L, 2 * L))
                if (bx - 1, by) in out:
                    Xb[:L] = out[(bx - 1, by)][:L]   # the left neighbour's right border
                if (bx, by - 1) in out:
                    Xb[L:] = out[(bx, by - 1)][L:]   # the top neighbour's bottom border
                X_a[b] = Xb
                out[b] = maps[b][0] @ Xb
                G[np.ix_(nodes(*b), nodes(*a))] = maps[b][2] @ Xb @ Sb_a
    return G


def grid_h(q, k, v, gates, L, orientations):
    """h (B, NH, X, Y, DV) through the chunk-map gating; gates (9, orientations, B, NH, X, Y)."""
    B, NH, X, Y, DQK = q.shape
    PX, PY = -(-X // L) * L, -(-Y // L) * L
    h = np.zeros(q.shape[:4] + (v.shape[-1],))
    for o in range(orientations):
        flip = [a for a, bit in ((0, 1), (1, 2)) if o & bit]
        for b in range(B):
            for head in range(NH):
                frame = lambda a, lead=0: np.flip(a, [i + lead for i in flip]) if flip else a  # noqa: E731
                g = np.zeros((9, PX, PY))
                g[:, :X, :Y] = frame(gates[:, o, b, head], 1)  # the orientation's frame
                Qf, Kf, Vf = (np.zeros((PX, PY, a.shape[-1])) for a in (q, k, v))
                for dst, src in ((Qf, q), (Kf, k), (Vf, v)):
                    dst[:X, :Y] = frame(src[b, head])
                G = chunked_gating(g, L)
                Q, K, V = (a.reshape(PX * PY, -1) for a in (Qf, Kf, Vf))
                out = ((DQK ** -0.5 * (Q @ K.T) * G) @ V).reshape(PX, PY, -1)[:X, :Y]
                h[b, head] += frame(out)
    return h


@pytest.mark.parametrize("orientations", [1, 4])
@pytest.mark.parametrize("L", [2, 4, 8])
@pytest.mark.parametrize("grid", [(1, 1), (5, 7), (9, 4), (8, 8), (13, 6)], ids=lambda g: f"{g[0]}x{g[1]}")
def test_chunk_map_gating_equals_the_reference(grid, L, orientations):
    X, Y = grid
    r = rng(X * 100 + Y + 10 * L + orientations)
    q, k = r.standard_normal((2, 2, 1, X, Y, 5))
    v = r.standard_normal((2, 1, X, Y, 3))
    gates = r.uniform(-0.9, 0.9, (9, orientations, 2, 1, X, Y))
    special = r.random(gates.shape) < 0.15
    gates[special] = r.choice([0.0, 1.0, -1.0], special.sum())
    if orientations == 4:
        expected = plstm.grid_forward_oriented(q, k, v, plstm.GridGates(*gates))
    else:
        expected = plstm.grid_forward(q, k, v, plstm.GridGates(*(g[0] for g in gates)))
    assert rel(grid_h(q, k, v, gates, L, orientations), expected) < 1e-12


def test_chunk_maps_of_one_chunk_are_the_whole_grid_gating():
    """A grid of one chunk: Gb is the reference's parallel gating (marks and D included), and the
    border maps agree with a grid one node larger on each side, whose outer nodes carry the borders."""
    L = 4
    r = rng(7)
    g = r.uniform(-0.9, 0.9, (9, L, L))
    Tb, Sb, Mb, Gb = chunk_maps(g, L)
    # Gb against the reference: h for unit keys and values picks out G's columns.
    q = np.ones((1, 1, L, L, 1))
    eye = np.eye(L * L).reshape(L, L, L * L)[None, None]
    h = plstm.grid_forward(q, q, eye, plstm.GridGates(*(gi[None, None] for gi in g)), qk_scale=1.0)
    assert rel(Gb, h.reshape(L * L, L * L)) < 1e-14
    # Paths run right and down only: the left in-border of row y reaches the right out-borders of rows
    # y and below, none above; every bottom out-border; and without transitions, nothing.
    below = np.tril(np.ones((L, L), dtype=bool))  # right out-border row >= left in-border row
    assert not Tb[:L, :L][~below].any() and np.all(Tb[:L, :L][below] != 0)
    assert np.all(Tb[L:, :L] != 0)
    zero = g.copy()
    zero[[Trl, Tru, Tdu, Tdl]] = 0
    assert not chunk_maps(zero, L)[0].any()
    assert Sb.shape == (2 * L, L * L) and Mb.shape == (L * L, 2 * L)
