"""The CUDA pLSTM grid forward's algorithm (cuda/plstm/grid.cu), transcribed in numpy in the kernel's
order — tiles of 64 target nodes, each orientation's sources in its reverse topological order in
blocks of 64, the reverse dynamic programme in its push form with each node's own gates, a tile of
the gating G at a time — equals the reference on odd grids, one and four orientations. The kernel's
own tests compare the GPU with the reference; this one pins the algorithm on every machine."""

import numpy as np
import pytest

fl = pytest.importorskip("flashlstm")
from flashlstm import plstm  # noqa: E402

from helpers import rel, rng  # noqa: E402

TILE = 64
Sr, Sd, Trl, Tru, Tdu, Tdl, Ml, Mu, D = range(9)


def kernel_order(q, k, v, gates, orientations):
    """h as grid.cu computes it, for gates (orientations, B, NH, X, Y) each."""
    B, NH, X, Y, DQK = q.shape
    N, scale = X * Y, DQK ** -0.5
    h = np.zeros(q.shape[:4] + (v.shape[-1],))
    for b in range(B):
        for head in range(NH):
            Q, K, V = (a[b, head].reshape(N, -1) for a in (q, k, v))
            out = h[b, head].reshape(N, -1)
            for n0 in range(0, N, TILE):
                targets = np.arange(n0, min(n0 + TILE, N))
                acc = np.zeros((len(targets), V.shape[1]))
                for o in range(orientations):
                    flip_x, flip_y = o & 1, o & 2
                    g = [gate[o, b, head].reshape(N) for gate in gates]

                    def node(xf, yf):
                        return (X - 1 - xf if flip_x else xf) * Y + (Y - 1 - yf if flip_y else yf)

                    # The targets in the frame; the loop starts at the column of the last one.
                    xt = np.where(flip_x, X - 1 - targets // Y, targets // Y)
                    yt = np.where(flip_y, Y - 1 - targets % Y, targets % Y)
                    xf_max = X - 1 - n0 // Y if flip_x else (targets[-1]) // Y
                    col = np.zeros((Y, len(targets)))  # pushes into the node to the left, per row
                    carry = np.zeros(len(targets))     # the push into the node above
                    for pb in range((X - 1 - xf_max) * Y, N, TILE):
                        positions = np.arange(pb, min(pb + TILE, N))
                        G = np.zeros((len(targets), len(positions)))
                        for j, pos in enumerate(positions):
                            xf, yf = X - 1 - pos // Y, Y - 1 - pos % Y
                            n = node(xf, yf)
                            if yf == Y - 1:
                                carry[:] = 0
                            wr = col[yf] + np.where((xf + 1 == xt) & (yf == yt), g[Ml][targets], 0)
                            wd = carry + np.where((xf == xt) & (yf + 1 == yt), g[Mu][targets], 0)
                            col[yf] = g[Trl][n] * wr + g[Tdl][n] * wd
                            carry = g[Tdu][n] * wd + g[Tru][n] * wr
                            G[:, j] = g[Sr][n] * wr + g[Sd][n] * wd + np.where((xf == xt) & (yf == yt), g[D][targets], 0)
                        sources = [node(X - 1 - p // Y, Y - 1 - p % Y) for p in positions]
                        acc += (scale * (Q[targets] @ K[sources].T) * G) @ V[sources]
                out[targets] = acc
    return h


@pytest.mark.parametrize("orientations", [1, 4])
@pytest.mark.parametrize("grid", [(1, 1), (3, 2), (5, 7), (9, 10), (2, 70)], ids=lambda g: f"{g[0]}x{g[1]}")
def test_kernel_order_equals_the_reference(grid, orientations):
    X, Y = grid
    r = rng(X * 100 + Y + orientations)
    q, k = r.standard_normal((2, 2, 1, X, Y, 5))
    v = r.standard_normal((2, 1, X, Y, 3))
    gates = [r.uniform(-0.7, 0.7, (orientations, 2, 1, X, Y)) for _ in range(9)]
    if orientations == 4:
        expected = plstm.grid_forward_oriented(q, k, v, plstm.GridGates(*gates))
    else:
        expected = plstm.grid_forward(q, k, v, plstm.GridGates(*(g[0] for g in gates)))
    assert rel(kernel_order(q, k, v, gates, orientations), expected) < 1e-13


def path_weights(gates, X, Y):
    """For one orientation's gates (X, Y) each: A[n, kind, x, y], the weight with which source n's
    k v^T reaches the out-edge `kind` (0 right, 1 down) of node (x, y), S_n included (the forward
    programme); W[t, c, kind, x, y], the weight from that out-edge to target t's in-edge c (0 left,
    1 top), M_t not included (the reverse programme, one channel per mark)."""
    Sr, Sd, Trl, Tru, Tdu, Tdl = gates[:6]
    N = X * Y
    A = np.zeros((N, 2, X, Y))
    for x in range(X):
        for y in range(Y):
            left = A[:, 0, x - 1, y] if x > 0 else 0.0
            top = A[:, 1, x, y - 1] if y > 0 else 0.0
            here = np.arange(N) == x * Y + y
            A[:, 0, x, y] = Trl[x, y] * left + Tru[x, y] * top + Sr[x, y] * here
            A[:, 1, x, y] = Tdu[x, y] * top + Tdl[x, y] * left + Sd[x, y] * here
    W = np.zeros((N, 2, 2, X, Y))
    targets = np.arange(N)
    for x in reversed(range(X)):
        for y in reversed(range(Y)):
            for c in range(2):
                wr = ((targets == (x + 1) * Y + y) & (x + 1 < X) & (c == 0)).astype(float)
                if x + 1 < X:
                    wr += Trl[x + 1, y] * W[:, c, 0, x + 1, y] + Tdl[x + 1, y] * W[:, c, 1, x + 1, y]
                wd = ((targets == x * Y + y + 1) & (y + 1 < Y) & (c == 1)).astype(float)
                if y + 1 < Y:
                    wd += Tdu[x, y + 1] * W[:, c, 1, x, y + 1] + Tru[x, y + 1] * W[:, c, 0, x, y + 1]
                W[:, c, 0, x, y], W[:, c, 1, x, y] = wr, wd
    return A, W


def test_backward_decomposition_equals_the_reference():
    """The algebra a grid backward kernel computes, from the two programmes above and
    dG(t, n) = s (q_t·k_n)(dh_t·v_n): dq, dk, dv from G; dD from dG's diagonal; dM^l_t, dM^u_t from
    the reverse programme's two channels (G = M^l G^(l) + M^u G^(u) + D); dS^r, dS^d from the
    M-weighted reverse weights at each source; dT at node m from the pairing of the dG-weighted forward
    weights into m (Z_t = Σ_n dG(t, n) A_n) with the reverse weights out of m. Against the reference's
    exact backward."""
    X, Y, DQK, DV = 4, 5, 3, 2
    N, s = X * Y, DQK ** -0.5
    r = rng(5)
    q, k = r.standard_normal((2, 1, 1, X, Y, DQK))
    v, dh = r.standard_normal((2, 1, 1, X, Y, DV))
    gates = [r.uniform(-0.7, 0.7, (1, 1, X, Y)) for _ in range(9)]
    g = [x.reshape(X, Y) for x in gates]
    A, W = path_weights(g, X, Y)
    Ml, Mu, D = (x.reshape(N) for x in g[6:])
    Wt = Ml[:, None, None, None] * W[:, 0] + Mu[:, None, None, None] * W[:, 1]  # (t, kind, x, y), marks in
    S_src = [x.reshape(N) for x in g[:2]]
    gating = lambda w: S_src[0][None, :] * w[:, 0].reshape(N, N) + S_src[1][None, :] * w[:, 1].reshape(N, N)  # noqa: E731
    G = gating(Wt) + np.diag(D)
    Q, K, V, dH = q.reshape(N, DQK), k.reshape(N, DQK), v.reshape(N, DV), dh.reshape(N, DV)
    scores, dvalues = Q @ K.T, dH @ V.T
    dG = s * scores * dvalues
    Z = np.einsum("tn,nkxy->tkxy", dG, A)
    left_in = np.zeros((N, X, Y))
    left_in[:, 1:] = Z[:, 0, :-1]
    top_in = np.zeros((N, X, Y))
    top_in[:, :, 1:] = Z[:, 1, :, :-1]
    ours = dict(dq=s * (G * dvalues) @ K, dk=s * (G * dvalues).T @ Q, dv=s * (G * scores).T @ dH,
                dSr=(dG * Wt[:, 0].reshape(N, N)).sum(0), dSd=(dG * Wt[:, 1].reshape(N, N)).sum(0),
                dTrl=(left_in * Wt[:, 0]).sum(0), dTru=(top_in * Wt[:, 0]).sum(0),
                dTdu=(top_in * Wt[:, 1]).sum(0), dTdl=(left_in * Wt[:, 1]).sum(0),
                dMl=(dG * gating(W[:, 0])).sum(1), dMu=(dG * gating(W[:, 1])).sum(1), dD=np.diag(dG))
    assert rel(s * (G * scores) @ V, plstm.grid_forward(q, k, v, plstm.GridGates(*gates)).reshape(N, DV)) < 1e-14
    reference = plstm.grid_backward(q, k, v, plstm.GridGates(*gates), dh, chunk_size=1)
    for name, value in ours.items():
        assert rel(value.reshape(-1), getattr(reference, name).reshape(-1)) < 1e-13, name
