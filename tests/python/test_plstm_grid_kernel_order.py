"""The CUDA pLSTM grid forward's algorithm (cuda/plstm/grid.cu), transcribed in numpy in the kernel's
order — tiles of 64 target nodes, each orientation's sources in its reverse topological order in
blocks of 64, the reverse dynamic programme in its push form with each node's own gates, a tile of
the gating G at a time — equals the reference on odd grids, one and four orientations. The kernel's
own tests compare the GPU with the reference; this one pins the algorithm on every machine. The
backward's algebra and its query-major schedule (what a backward kernel computes, in its order) are
checked against the reference's exact backward the same way."""

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


def query_major_backward(q, k, v, dh, g, o, K):
    """The query-major pass of a grid backward for orientation o, target tiles of 64: pass A runs the
    reverse programme with one channel per mark (dq, dM, dD from the dG tiles) and keeps the combined
    push state entering every K-th column; pass B runs the forward programme of Z_t = Σ_n dG(t, n) A_n
    column by column and, per segment of K columns, recomputes the reverse weights from the checkpoint
    to pair them with Z at each node (dT, summed over the tiles). g: the nine (X, Y) gates."""
    X, Y, DQK = q.shape
    N, s = X * Y, DQK ** -0.5
    fx, fy = o & 1, o & 2
    node = lambda xf, yf: (X - 1 - xf if fx else xf) * Y + (Y - 1 - yf if fy else yf)
    Sr, Sd, Trl, Tru, Tdu, Tdl, Ml, Mu, D = (a.reshape(N) for a in g)
    Q, Kk, V, dH = q.reshape(N, -1), k.reshape(N, -1), v.reshape(N, -1), dh.reshape(N, -1)
    dq = np.zeros_like(Q); dMl = np.zeros(N); dMu = np.zeros(N); dD = np.zeros(N)
    dT = {name: np.zeros(N) for name in ("Trl", "Tru", "Tdu", "Tdl")}
    for n0 in range(0, N, TILE):
        tg = np.arange(n0, min(n0 + TILE, N)); T = len(tg)
        xt = np.where(fx, X - 1 - tg // Y, tg // Y); yt = np.where(fy, Y - 1 - tg % Y, tg % Y)
        xf_max = int(xt.max())
        # ---- pass A: reverse programme, two channels (l, u), checkpoints of the combined push state
        col = np.zeros((2, Y, T)); carry = np.zeros((2, T))
        checkpoints = {}
        dGs = {}
        for pos in range((X - 1 - xf_max) * Y, N):
            xf, yf = X - 1 - pos // Y, Y - 1 - pos % Y
            n = node(xf, yf)
            if yf == Y - 1:
                carry[:] = 0
                if xf % K == K - 1 or xf == xf_max:   # the push state entering column xf
                    checkpoints[xf] = Ml[tg] * col[0] + Mu[tg] * col[1]
            inj_l = ((xf + 1 == xt) & (yf == yt)).astype(float); inj_u = ((xf == xt) & (yf + 1 == yt)).astype(float)
            wr = col[:, yf] + np.stack([inj_l, 0 * inj_l]); wd = carry + np.stack([0 * inj_u, inj_u])
            col[:, yf] = Trl[n] * wr + Tdl[n] * wd
            carry = Tdu[n] * wd + Tru[n] * wr
            Gc = Sr[n] * wr + Sd[n] * wd                  # (2, T): G^(l), G^(u) at source n
            diag = (xf == xt) & (yf == yt)
            G = Ml[tg] * Gc[0] + Mu[tg] * Gc[1] + np.where(diag, D[tg], 0)
            dPv = dH[tg] @ V[n]; Sc = Q[tg] @ Kk[n]       # the MMA tiles' column for source n
            dG = s * Sc * dPv
            dq[tg] += (s * G * dPv)[:, None] * Kk[n][None, :]
            dMl[tg] += dG * Gc[0]; dMu[tg] += dG * Gc[1]; dD[tg] += np.where(diag, dG, 0)
            dGs[n] = dG  # kept here; a kernel computes the dG tiles again in pass B
        # ---- pass B: forward programme Z over the columns 0..xf_max, W recomputed per segment
        zcol = np.zeros((Y, T)); zcarry = np.zeros(T)
        for c0 in range(0, xf_max + 1, K):
            c1 = min(c0 + K, xf_max + 1)
            # recompute W (combined channel) for columns c1-1 .. c0 from the checkpoint entering column c1-1
            wcol = checkpoints[c1 - 1].copy(); Wr = {}; Wd = {}
            for xf in range(c1 - 1, c0 - 1, -1):
                wcarry = np.zeros(T)
                for yf in range(Y - 1, -1, -1):
                    n = node(xf, yf)
                    wr = wcol[yf] + np.where((xf + 1 == xt) & (yf == yt), Ml[tg], 0)
                    wd = wcarry + np.where((xf == xt) & (yf + 1 == yt), Mu[tg], 0)
                    Wr[n], Wd[n] = wr, wd
                    wcol[yf] = Trl[n] * wr + Tdl[n] * wd
                    wcarry = Tdu[n] * wd + Tru[n] * wr
            # forward Z over the segment, pairing with W at each node
            for xf in range(c0, c1):
                zcarry = np.zeros(T)
                for yf in range(Y):
                    n = node(xf, yf)
                    zl, zt = zcol[yf].copy(), zcarry          # Z on the left-in and top-in edges
                    dG = dGs.get(n, np.zeros(T))              # zero outside every target's cone
                    dT["Trl"][n] += (zl * Wr[n]).sum(); dT["Tru"][n] += (zt * Wr[n]).sum()
                    dT["Tdu"][n] += (zt * Wd[n]).sum(); dT["Tdl"][n] += (zl * Wd[n]).sum()
                    zcol[yf] = Trl[n] * zl + Tru[n] * zt + Sr[n] * dG
                    zcarry = Tdu[n] * zt + Tdl[n] * zl + Sd[n] * dG
    return dq, dMl, dMu, dD, dT



@pytest.mark.parametrize("o", range(4))
@pytest.mark.parametrize("grid", [(1, 1, 2), (4, 5, 2), (7, 3, 3), (9, 9, 4), (2, 70, 1)],
                         ids=lambda g: f"{g[0]}x{g[1]} K{g[2]}")
def test_backward_query_major_schedule_equals_the_reference(grid, o):
    """dq, dM, dD and dT from the query-major schedule (checkpoints every K columns, the reverse weights
    recomputed per segment) equal the reference's exact backward of orientation o (its flipped inputs)."""
    X, Y, K = grid
    r = rng(X * 7 + Y + o)
    q, k = r.standard_normal((2, X, Y, 3))
    v, dh = r.standard_normal((2, X, Y, 2))
    g = [r.uniform(-0.7, 0.7, (X, Y)) for _ in range(9)]
    dq, dMl, dMu, dD, dT = query_major_backward(q, k, v, dh, g, o, K)
    flip = lambda a: np.flip(np.flip(a, 0) if o & 1 else a, 1) if o & 2 else (np.flip(a, 0) if o & 1 else a)  # noqa: E731
    batch = lambda a: np.ascontiguousarray(flip(a))[None, None]  # noqa: E731
    ref = plstm.grid_backward(batch(q), batch(k), batch(v), plstm.GridGates(*map(batch, g)), batch(dh), chunk_size=1)
    back = lambda a: flip(a[0, 0]).reshape(X * Y, -1)  # noqa: E731
    assert rel(dq, back(ref.dq)) < 1e-13
    for name, value in dict(dMl=dMl, dMu=dMu, dD=dD, **{"d" + n: t for n, t in dT.items()}).items():
        assert rel(value, back(getattr(ref, name))[:, 0]) < 1e-13, name


def key_major_backward(q, k, v, dh, g, o):
    """The key-major pass of a grid backward for orientation o, source tiles of 64: the forward
    programme with one channel per source gate (thread n carries its k v's weights into the current
    node's in-edges, as pushes into the node to its right and the node below), the gating column
    G(·, n) = S^r G^(r) + S^d G^(d) (+ D) at every target, and dk, dv, dS^r, dS^d (one writer each)."""
    X, Y, DQK = q.shape
    N, s = X * Y, DQK ** -0.5
    fx, fy = o & 1, o & 2
    node = lambda xf, yf: (X - 1 - xf if fx else xf) * Y + (Y - 1 - yf if fy else yf)
    Sr, Sd, Trl, Tru, Tdu, Tdl, Ml, Mu, D = (a.reshape(N) for a in g)
    Q, K, V, dH = q.reshape(N, -1), k.reshape(N, -1), v.reshape(N, -1), dh.reshape(N, -1)
    dk, dv = np.zeros_like(K), np.zeros_like(V)
    dSr, dSd = np.zeros(N), np.zeros(N)
    for n0 in range(0, N, TILE):
        src = np.arange(n0, min(n0 + TILE, N))
        T = len(src)
        xs = np.where(fx, X - 1 - src // Y, src // Y); ys = np.where(fy, Y - 1 - src % Y, src % Y)
        xf_min = int(xs.min())
        col = np.zeros((2, Y, T)); carry = np.zeros((2, T))
        for pos in range(xf_min * Y, N):
            xf, yf = pos // Y, pos % Y
            m = node(xf, yf)
            if yf == 0:
                carry[:] = 0
            L, U = col[:, yf].copy(), carry.copy()       # channels r, d: source n's weights on m's in-edges
            Gc = Ml[m] * L + Mu[m] * U                   # (2, T)
            here = (xf == xs) & (yf == ys)
            G = Sr[src] * Gc[0] + Sd[src] * Gc[1] + np.where(here, D[src], 0)
            col[:, yf] = Trl[m] * L + Tru[m] * U + np.stack([here, 0 * here]).astype(float)
            carry = Tdu[m] * U + Tdl[m] * L + np.stack([0 * here, here]).astype(float)
            Sc = K[src] @ Q[m]; dPv = V[src] @ dH[m]
            dG = s * Sc * dPv
            dk[src] += (s * G * dPv)[:, None] * Q[m][None, :]
            dv[src] += (s * G * Sc)[:, None] * dH[m][None, :]
            dSr[src] += dG * Gc[0]; dSd[src] += dG * Gc[1]
    return dk, dv, dSr, dSd



@pytest.mark.parametrize("o", range(4))
@pytest.mark.parametrize("grid", [(1, 1), (4, 5), (7, 3), (9, 9), (2, 70)], ids=lambda g: f"{g[0]}x{g[1]}")
def test_backward_key_major_schedule_equals_the_reference(grid, o):
    """dk, dv, dS^r and dS^d from the key-major schedule equal the reference's exact backward of
    orientation o; with the query-major pass it covers every gradient."""
    X, Y = grid
    r = rng(X * 11 + Y + o)
    q, k = r.standard_normal((2, X, Y, 3))
    v, dh = r.standard_normal((2, X, Y, 2))
    g = [r.uniform(-0.7, 0.7, (X, Y)) for _ in range(9)]
    dk, dv, dSr, dSd = key_major_backward(q, k, v, dh, g, o)
    flip = lambda a: np.flip(np.flip(a, 0) if o & 1 else a, 1) if o & 2 else (np.flip(a, 0) if o & 1 else a)  # noqa: E731
    batch = lambda a: np.ascontiguousarray(flip(a))[None, None]  # noqa: E731
    ref = plstm.grid_backward(batch(q), batch(k), batch(v), plstm.GridGates(*map(batch, g)), batch(dh), chunk_size=1)
    back = lambda a: flip(a[0, 0]).reshape(X * Y, -1)  # noqa: E731
    assert rel(dk, back(ref.dk)) < 1e-13 and rel(dv, back(ref.dv)) < 1e-13
    assert rel(dSr, back(ref.dSr)[:, 0]) < 1e-13 and rel(dSd, back(ref.dSd)[:, 0]) < 1e-13
