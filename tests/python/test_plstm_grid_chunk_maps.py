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
frame: the grid flipped). A kernel works a target chunk B at a time (target_major_h): per
orientation it walks the source chunks from B back to the corner keeping E[A] = R_B[A] Tb_A for one
column of chunks, so no X is stored. The backward takes dG = s (q_t·k_n)(dh_t·v_n) back through the block
products (to dMb, dSb and dX), the chunk-level programme (dX to dTb and to the neighbours' borders)
and each chunk's programme (to the nine gates). Checked against the reference, forward and gate
gradients, on odd grids, chunk sides 2, 4 and 8, one and four orientations, with transitions of
exactly 0, 1 and -1 among random ones."""

import numpy as np
import pytest

fl = pytest.importorskip("flashlstm")
from flashlstm import plstm  # noqa: E402

from helpers import rel, rng  # noqa: E402

Sr, Sd, Trl, Tru, Tdu, Tdl, Ml, Mu, D = range(9)


def chunk_programme(g, L):
    """The dynamic programme over one chunk's nodes (gates g (9, L, L)): per node the coefficient
    vectors of its right and down out-edge states and of its output's marks, over [left in-borders
    (L, by row y), top in-borders (L, by column x), nodes (L², x-major)]."""
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
    return right, down, mark


def chunk_maps(g, L):
    """Tb, Sb, Mb, Gb of one chunk; out-borders are [right (by y), bottom (by x)]."""
    right, down, mark = chunk_programme(g, L)
    out = np.concatenate([right[L - 1, :], down[:, L - 1]])  # (2L, width)
    return out[:, :2 * L], out[:, 2 * L:], mark[:, :2 * L], mark[:, 2 * L:]


def chunk_maps_backward(g, L, d_out, d_mark):
    """The gates' gradients (9, L, L) from the gradients of [Tb | Sb] (2L x width) and [Mb | Gb]
    (L² x width): the programme run backwards, node by node in reverse order."""
    right, down, _ = chunk_programme(g, L)
    width = 2 * L + L * L
    unit = np.eye(width)
    d_right, d_down = np.zeros((L, L, width)), np.zeros((L, L, width))
    d_right[L - 1, :] += d_out[:L]
    d_down[:, L - 1] += d_out[L:]
    dg = np.zeros_like(g)
    for x in reversed(range(L)):
        for y in reversed(range(L)):
            n = 2 * L + x * L + y
            left_in = right[x - 1, y] if x > 0 else unit[y]
            top_in = down[x, y - 1] if y > 0 else unit[L + x]
            dr, dd, dm = d_right[x, y], d_down[x, y], d_mark[x * L + y]
            dg[Trl, x, y], dg[Tru, x, y], dg[Sr, x, y] = dr @ left_in, dr @ top_in, dr[n]
            dg[Tdu, x, y], dg[Tdl, x, y], dg[Sd, x, y] = dd @ top_in, dd @ left_in, dd[n]
            dg[Ml, x, y], dg[Mu, x, y], dg[D, x, y] = dm @ left_in, dm @ top_in, dm[n]
            if x > 0:
                d_right[x - 1, y] += g[Trl, x, y] * dr + g[Tdl, x, y] * dd + g[Ml, x, y] * dm
            if y > 0:
                d_down[x, y - 1] += g[Tru, x, y] * dr + g[Tdu, x, y] * dd + g[Mu, x, y] * dm
    return dg


def chunks(gates, L):
    """The chunk maps of one orientation's gates (9, X, Y), X and Y multiples of L, by chunk (cx, cy),
    and the node ids of a chunk."""
    _, X, Y = gates.shape
    maps = {(cx, cy): chunk_maps(gates[:, cx * L:(cx + 1) * L, cy * L:(cy + 1) * L], L)
            for cx in range(X // L) for cy in range(Y // L)}
    nodes = lambda cx, cy: ((cx * L + np.arange(L))[:, None] * Y + cy * L + np.arange(L)).reshape(-1)  # noqa: E731
    return maps, nodes


def reach(maps, a, L):
    """The chunk-level programme from source chunk a, in raster order: X_a[b] for every other chunk b
    right of and below a. Each b's in-borders are its left neighbour's right out-borders and its top
    neighbour's bottom out-borders; a neighbour's out-borders in a's are I (the neighbour is a) or
    Tb X_a[neighbour]."""
    CX, CY = max(c[0] for c in maps) + 1, max(c[1] for c in maps) + 1
    X_a, out = {}, {a: np.eye(2 * L)}
    for bx in range(a[0], CX):
        for by in range(a[1], CY):
            b = (bx, by)
            if b == a:
                continue
            Xb = np.zeros((2 * L, 2 * L))
            if (bx - 1, by) in out:
                Xb[:L] = out[(bx - 1, by)][:L]
            if (bx, by - 1) in out:
                Xb[L:] = out[(bx, by - 1)][L:]
            X_a[b] = Xb
            out[b] = maps[b][0] @ Xb
    return X_a


def chunked_gating(gates, L):
    """The N x N gating G[target, source] of one orientation assembled from chunk maps, a (target
    chunk, source chunk) block at a time."""
    _, X, Y = gates.shape
    maps, nodes = chunks(gates, L)
    G = np.zeros((X * Y, X * Y))
    for a in maps:
        G[np.ix_(nodes(*a), nodes(*a))] = maps[a][3]
        for b, Xb in reach(maps, a, L).items():
            G[np.ix_(nodes(*b), nodes(*a))] = maps[b][2] @ Xb @ maps[a][1]
    return G


def chunked_gating_backward(gates, L, dG):
    """The gates' gradients (9, X, Y) from dG = dloss/dG (N x N) through the chunk maps: per block,
    dMb_b += dG (X Sb_a)ᵀ, dSb_a += (Mb_b X)ᵀ dG, dX = Mb_bᵀ dG Sb_aᵀ; the chunk-level programme
    backwards (dTb_b += dout_b Xᵀ, and X's rows send dX to the neighbours' out-borders); then each
    chunk's programme backwards."""
    _, X, Y = gates.shape
    maps, nodes = chunks(gates, L)
    width = 2 * L + L * L
    d_out = {c: np.zeros((2 * L, width)) for c in maps}   # [dTb | dSb]
    d_mark = {c: np.zeros((L * L, width)) for c in maps}  # [dMb | dGb]
    for a in maps:
        Tb_, Sb_a, _, _ = maps[a]
        d_mark[a][:, 2 * L:] += dG[np.ix_(nodes(*a), nodes(*a))]
        X_a = reach(maps, a, L)
        d_outs = {}  # gradient of each chunk's out-border coefficients in a's out-borders
        for b in reversed(list(X_a)):
            Xb, (Tb_b, _, Mb_b, _) = X_a[b], maps[b]
            block = dG[np.ix_(nodes(*b), nodes(*a))]
            d_mark[b][:, :2 * L] += block @ (Xb @ Sb_a).T
            d_out[a][:, 2 * L:] += (Mb_b @ Xb).T @ block
            dXb = Mb_b.T @ block @ Sb_a.T
            if b in d_outs:  # out_b = Tb_b X_b feeds later chunks
                d_out[b][:, :2 * L] += d_outs[b] @ Xb.T
                dXb += Tb_b.T @ d_outs[b]
            for neighbour, rows in (((b[0] - 1, b[1]), slice(0, L)), ((b[0], b[1] - 1), slice(L, 2 * L))):
                if neighbour != a and neighbour in X_a:
                    d_outs.setdefault(neighbour, np.zeros((2 * L, 2 * L)))[rows] += dXb[rows]
    dg = np.zeros_like(gates)
    for (cx, cy) in maps:
        sl = (slice(None), slice(cx * L, (cx + 1) * L), slice(cy * L, (cy + 1) * L))
        dg[sl] = chunk_maps_backward(gates[sl], L, d_out[(cx, cy)], d_mark[(cx, cy)])
    return dg


def in_frame(arrays, gates, L, o):
    """Orientation o's frame (the grid flipped so that its sources sit top-left), padded to multiples
    of L with zeros: the node arrays (X, Y, D) as (N', D), the gates as (9, X', Y'); and the map
    from a padded (X', Y', ...) result back to the grid."""
    flip = [axis for axis, bit in ((0, 1), (1, 2)) if o & bit]
    X, Y = gates.shape[1:]
    PX, PY = -(-X // L) * L, -(-Y // L) * L
    frame = lambda a, lead=0: np.flip(a, [i + lead for i in flip]) if flip else a  # noqa: E731
    g = np.zeros((9, PX, PY))
    g[:, :X, :Y] = frame(gates, 1)
    padded = []
    for a in arrays:
        p = np.zeros((PX, PY, a.shape[-1]))
        p[:X, :Y] = frame(a)
        padded.append(p.reshape(PX * PY, -1))
    return padded, g, lambda r: frame(r[:X, :Y])


def grid_h(q, k, v, gates, L, orientations):
    """h (B, NH, X, Y, DV) through the chunk-map gating; gates (9, orientations, B, NH, X, Y)."""
    B, NH, X, Y, DQK = q.shape
    h = np.zeros(q.shape[:4] + (v.shape[-1],))
    for o in range(orientations):
        for b in range(B):
            for head in range(NH):
                (Q, K, V), g, back = in_frame((q[b, head], k[b, head], v[b, head]), gates[:, o, b, head], L, o)
                out = (DQK ** -0.5 * (Q @ K.T) * chunked_gating(g, L)) @ V
                h[b, head] += back(out.reshape(g.shape[1], g.shape[2], -1))
    return h


def grid_gate_grads(q, k, v, gates, dh, L, orientations):
    """The gates' gradients (9, orientations, B, NH, X, Y) from dh through the chunk maps, with
    dG = s (q_t·k_n)(dh_t·v_n) in each orientation's frame."""
    DQK = q.shape[-1]
    dgates = np.zeros_like(gates)
    for o in range(orientations):
        for b in range(gates.shape[2]):
            for head in range(gates.shape[3]):
                (Q, K, V, dH), g, back = in_frame((q[b, head], k[b, head], v[b, head], dh[b, head]),
                                                  gates[:, o, b, head], L, o)
                dG = DQK ** -0.5 * (Q @ K.T) * (dH @ V.T)
                dgates[:, o, b, head] = np.moveaxis(back(np.moveaxis(chunked_gating_backward(g, L, dG), 0, -1)), -1, 0)
    return dgates


def random_problem(X, Y, orientations, seed):
    r = rng(seed)
    q, k = r.standard_normal((2, 2, 1, X, Y, 5))
    v, dh = r.standard_normal((2, 2, 1, X, Y, 3))
    gates = r.uniform(-0.9, 0.9, (9, orientations, 2, 1, X, Y))
    special = r.random(gates.shape) < 0.15
    gates[special] = r.choice([0.0, 1.0, -1.0], special.sum())
    return q, k, v, dh, gates


def own_order_maps(gates, L, orientations):
    """The chunk maps of one (batch·head) item (gates (9, orientations, X, Y)) by (o, cx, cy), as the
    kernels keep them: Tb, Sb, Mb, Gb with borders in orientation o's frame and nodes in the chunk's
    own order (i·L + j for the node (cx·L + i, cy·L + j)); and `own`, which lists the own index of
    each frame-local node x·L + y, per orientation."""
    _, _, X, Y = gates.shape
    CX, CY = -(-X // L), -(-Y // L)
    maps, own = {}, {}
    for o in range(orientations):
        fx, fy = o & 1, o & 2
        own[o] = np.array([(L - 1 - x if fx else x) * L + (L - 1 - y if fy else y) for x in range(L) for y in range(L)])
        for cx in range(CX):
            for cy in range(CY):
                g = np.zeros((9, L, L))  # frame-local (x, y)
                for x in range(L):
                    for y in range(L):
                        i, j = (L - 1 - x if fx else x), (L - 1 - y if fy else y)
                        if cx * L + i < X and cy * L + j < Y:
                            g[:, x, y] = gates[:, o, cx * L + i, cy * L + j]
                Tb, Sb, Mb, Gb = chunk_maps(g, L)
                Sb_own, Mb_own, Gb_own = np.zeros_like(Sb), np.zeros_like(Mb), np.zeros_like(Gb)
                Sb_own[:, own[o]], Mb_own[own[o]], Gb_own[np.ix_(own[o], own[o])] = Sb, Mb, Gb
                maps[o, cx, cy] = Tb, Sb_own, Mb_own, Gb_own
    return maps, own


def walk(fixed, flip, CX, CY, Tb_of, L):
    """The kernels' walk from chunk `fixed` back to the corner of the frame flipped by `flip` (bit 0:
    x, bit 1: y), frame column by frame column: yields (chunk, R) for every other chunk in the cone,
    R the weights from the chunk's out-borders to `fixed`'s in-borders, with E = R Tb_of(chunk) kept
    for one column: R's right-border columns from E of the chunk's right neighbour, its bottom-border
    columns from E of the one below, E = I for `fixed` itself."""
    fx, fy = flip & 1, flip & 2
    fbx, fby = (CX - 1 - fixed[0] if fx else fixed[0]), (CY - 1 - fixed[1] if fy else fixed[1])
    E = np.zeros((CY + 1, 2 * L, 2 * L))
    for fax in range(fbx, -1, -1):
        for fay in range(fby, -1, -1):
            if (fax, fay) == (fbx, fby):
                E[fay] = np.eye(2 * L)
                continue
            chunk = (CX - 1 - fax if fx else fax), (CY - 1 - fay if fy else fay)
            R = np.zeros((2 * L, 2 * L))
            if fax < fbx:
                R[:, :L] = E[fay][:, :L]
            if fay < fby:
                R[:, L:] = E[fay + 1][:, L:]
            E[fay] = R @ Tb_of(chunk)
            yield chunk, R


def chunk_rows(a, chunk, L, X, Y):
    """The rows of a (X·Y, D) array for a chunk's nodes in its own order (zero rows for padding)."""
    cx, cy = chunk
    out = np.zeros((L * L, a.shape[1]))
    for i in range(L):
        for j in range(L):
            if cx * L + i < X and cy * L + j < Y:
                out[i * L + j] = a[(cx * L + i) * Y + cy * L + j]
    return out


def target_major_h(q, k, v, gates, L, orientations):
    """h in the forward kernel's order, a target chunk B at a time (one (batch·head) item, gates
    (9, orientations, X, Y)): the diagonal block from Gb summed over the orientations, then per
    orientation the source chunks A of walk(B, o), G = Mb_B (R Sb_A)."""
    X, Y, DQK = q.shape
    CX, CY = -(-X // L), -(-Y // L)
    maps, _ = own_order_maps(gates, L, orientations)
    Q, K, V = (a.reshape(X * Y, -1) for a in (q, k, v))
    h = np.zeros((X * Y, V.shape[1]))
    for b in np.ndindex(CX, CY):
        QB = chunk_rows(Q, b, L, X, Y)
        product = lambda G, a: (DQK ** -0.5 * (QB @ chunk_rows(K, a, L, X, Y).T) * G) @ chunk_rows(V, a, L, X, Y)  # noqa: E731
        acc = product(sum(maps[o, b[0], b[1]][3] for o in range(orientations)), b)
        for o in range(orientations):
            for a, R in walk(b, o, CX, CY, lambda c: maps[(o, *c)][0], L):
                acc += product(maps[(o, *b)][2] @ (R @ maps[(o, *a)][1]), a)
        hB = acc
        for i in range(L):
            for j in range(L):
                if b[0] * L + i < X and b[1] * L + j < Y:
                    h[(b[0] * L + i) * Y + b[1] * L + j] = hB[i * L + j]
    return h.reshape(X, Y, -1)


def kernel_order_backward(q, k, v, gates, dh, L, orientations):
    """dq, dk, dv and the gate gradients (9, orientations, X, Y) of one (batch·head) item in the
    backward kernels' order. With S = s Q_B K_Aᵀ, dP = dH_B V_Aᵀ and dG = S ∘ dP for target chunk B
    and source chunk A:

    target-major (walk(B, o)):  dq_B += s (dP ∘ G) K_A;  U = dG Sb_Aᵀ;  dMb_B += U Rᵀ;  D[B, A] = Mb_Bᵀ U;
                                dGb_B = dG of the diagonal block (the same for every orientation);
    source-major (walk(A, o ^ 3) with the maps transposed: Tbᵀ, Mbᵀ in place of Tb, Sb, so R = X_A[B]ᵀ
                                and W = R Mb_Bᵀ):  Gᵀ = Sb_Aᵀ W;  dk_A += s (dPᵀ ∘ Gᵀ) Q_B;
                                dv_A += (Sᵀ ∘ Gᵀ) dH_B;  U = dGᵀ Mb_B;  dSb_Aᵀ += U Rᵀ (= dGᵀ Wᵀ);
    chunk level (per orientation, per target B, its cone in raster order): Z[P] (B's in-borders x P's
                                in-borders) from Y of P's left and upper neighbours, Y[P] = Z[P] Tb_Pᵀ + D[B, P],
                                B's part of dTb_P: R_B[P]ᵀ Z[P];
    then per chunk dTb_P, the sum of the targets' parts in B's frame raster order, and its programme
    backwards (chunk_maps_backward) from [dTb | dSb] and [dMb | dGb]."""
    X, Y, DQK = q.shape
    s = DQK ** -0.5
    CX, CY = -(-X // L), -(-Y // L)
    chunks_ = list(np.ndindex(CX, CY))
    maps, own = own_order_maps(gates, L, orientations)
    Q, K, V, dH = (a.reshape(X * Y, -1) for a in (q, k, v, dh))
    rows = {name: {c: chunk_rows(a, c, L, X, Y) for c in chunks_} for name, a in (("q", Q), ("k", K), ("v", V), ("dh", dH))}
    gsum = {c: sum(maps[(o, *c)][3] for o in range(orientations)) for c in chunks_}
    dq = {c: np.zeros_like(rows["q"][c]) for c in chunks_}
    dk = {c: np.zeros_like(rows["k"][c]) for c in chunks_}
    dv = {c: np.zeros_like(rows["v"][c]) for c in chunks_}
    dTb = {(o, c): np.zeros((2 * L, 2 * L)) for o in range(orientations) for c in chunks_}
    dSb = {(o, c): np.zeros((2 * L, L * L)) for o in range(orientations) for c in chunks_}
    dMb = {(o, c): np.zeros((L * L, 2 * L)) for o in range(orientations) for c in chunks_}
    dGb, D, parts = {}, {}, {}
    tiles = lambda t, n: (s * rows["q"][t] @ rows["k"][n].T, rows["dh"][t] @ rows["v"][n].T)  # noqa: E731

    for b in chunks_:  # target-major
        S, dP = tiles(b, b)
        dq[b] += s * (dP * gsum[b]) @ rows["k"][b]
        dGb[b] = S * dP
        for o in range(orientations):
            Mb_B = maps[(o, *b)][2]
            for a, R in walk(b, o, CX, CY, lambda c: maps[(o, *c)][0], L):
                Sb_A = maps[(o, *a)][1]
                S, dP = tiles(b, a)
                dq[b] += s * (dP * (Mb_B @ (R @ Sb_A))) @ rows["k"][a]
                U = (S * dP) @ Sb_A.T
                dMb[o, b] += U @ R.T
                D[o, b, a] = Mb_B.T @ U

    for a in chunks_:  # source-major
        S, dP = tiles(a, a)
        dk[a] += s * (dP * gsum[a]).T @ rows["q"][a]
        dv[a] += (S * gsum[a]).T @ rows["dh"][a]
        for o in range(orientations):
            Sb_A = maps[(o, *a)][1]
            for b, R in walk(a, o ^ 3, CX, CY, lambda c: maps[(o, *c)][0].T, L):
                W = R @ maps[(o, *b)][2].T
                GT = Sb_A.T @ W
                S, dP = tiles(b, a)
                dk[a] += s * (dP.T * GT) @ rows["q"][b]
                dv[a] += (S.T * GT) @ rows["dh"][b]
                U = (S * dP).T @ maps[(o, *b)][2]
                dSb[o, a] += (U @ R.T).T

    for o in range(orientations):  # chunk level
        fx, fy = o & 1, o & 2
        frame = lambda c: ((CX - 1 - c[0] if fx else c[0]), (CY - 1 - c[1] if fy else c[1]))  # noqa: E731 (an involution)
        for b in chunks_:
            R_B = dict(walk(b, o, CX, CY, lambda c: maps[(o, *c)][0], L))
            fbx, fby = frame(b)
            Yp = {}
            for fpx in range(fbx + 1):
                for fpy in range(fby + 1):
                    if (fpx, fpy) == (fbx, fby):
                        continue
                    p = frame((fpx, fpy))
                    Z = np.zeros((2 * L, 2 * L))
                    if fpx > 0:
                        Z[:, :L] = Yp[fpx - 1, fpy][:, :L]
                    if fpy > 0:
                        Z[:, L:] = Yp[fpx, fpy - 1][:, L:]
                    Yp[fpx, fpy] = Z @ maps[(o, *p)][0].T + D[o, b, p]
                    parts[o, b, p] = R_B[p].T @ Z
        for p in chunks_:  # the chunk programmes' sum over the targets
            fpx, fpy = frame(p)
            for fbx in range(fpx, CX):
                for fby in range(fpy, CY):
                    if (fbx, fby) != (fpx, fpy):
                        dTb[o, p] += parts[o, frame((fbx, fby)), p]

    dgates = np.zeros_like(gates)
    for o in range(orientations):
        fx, fy = o & 1, o & 2
        for c in chunks_:
            g = np.zeros((9, L, L))
            for x in range(L):
                for y in range(L):
                    i, j = c[0] * L + (L - 1 - x if fx else x), c[1] * L + (L - 1 - y if fy else y)
                    if i < X and j < Y:
                        g[:, x, y] = gates[:, o, i, j]
            f = own[o]
            d_out = np.concatenate([dTb[o, c], dSb[o, c][:, f]], axis=1)
            d_mark = np.concatenate([dMb[o, c][f], dGb[c][np.ix_(f, f)]], axis=1)
            dg = chunk_maps_backward(g, L, d_out, d_mark)
            for x in range(L):
                for y in range(L):
                    i, j = c[0] * L + (L - 1 - x if fx else x), c[1] * L + (L - 1 - y if fy else y)
                    if i < X and j < Y:
                        dgates[:, o, i, j] = dg[:, x, y]

    def grid(parts):
        out = np.zeros((X * Y, next(iter(parts.values())).shape[1]))
        for c, part in parts.items():
            for i in range(L):
                for j in range(L):
                    if c[0] * L + i < X and c[1] * L + j < Y:
                        out[(c[0] * L + i) * Y + c[1] * L + j] = part[i * L + j]
        return out.reshape(X, Y, -1)
    return grid(dq), grid(dk), grid(dv), dgates


@pytest.mark.parametrize("orientations", [1, 4])
@pytest.mark.parametrize("grid", [(1, 1), (5, 7), (9, 4), (17, 12)], ids=lambda g: f"{g[0]}x{g[1]}")
def test_target_major_order_equals_the_reference(grid, orientations):
    q, k, v, _, gates = random_problem(*grid, orientations, grid[0] * 10 + grid[1] + orientations)
    if orientations == 4:
        expected = plstm.grid_forward_oriented(q, k, v, plstm.GridGates(*gates))
    else:
        expected = plstm.grid_forward(q, k, v, plstm.GridGates(*(g[0] for g in gates)))
    for b in range(q.shape[0]):
        ours = target_major_h(q[b, 0], k[b, 0], v[b, 0], gates[:, :, b, 0], 8, orientations)
        assert rel(ours, expected[b, 0]) < 1e-12


@pytest.mark.parametrize("orientations", [1, 4])
@pytest.mark.parametrize("grid", [(1, 1), (5, 7), (9, 4), (17, 12)], ids=lambda g: f"{g[0]}x{g[1]}")
def test_kernel_order_backward_equals_the_reference(grid, orientations):
    """The backward kernels' order (target-major for dq and dMb, source-major for dk, dv and dSb, the
    chunk-level programme for dTb, each chunk's programme for the gates) gives the reference's exact
    gradients."""
    q, k, v, dh, gates = random_problem(*grid, orientations, grid[0] * 10 + grid[1] + orientations + 5)
    if orientations == 4:
        reference = plstm.grid_backward_oriented(q, k, v, plstm.GridGates(*gates), dh)
    else:
        reference = plstm.grid_backward(q, k, v, plstm.GridGates(*(g[0] for g in gates)), dh, chunk_size=1)
    names = ("dSr", "dSd", "dTrl", "dTru", "dTdu", "dTdl", "dMl", "dMu", "dD")
    for b in range(q.shape[0]):
        dq, dk, dv, dgates = kernel_order_backward(q[b, 0], k[b, 0], v[b, 0], gates[:, :, b, 0], dh[b, 0], 8, orientations)
        for name, ours in (("dq", dq), ("dk", dk), ("dv", dv)):
            assert rel(ours, getattr(reference, name)[b, 0]) < 1e-12, name
        for i, name in enumerate(names):
            expected = getattr(reference, name).reshape((orientations,) + q.shape[:4])[:, b, 0]
            assert rel(dgates[i], expected) < 1e-11, name


GRIDS = [(1, 1), (5, 7), (9, 4), (8, 8), (13, 6)]


@pytest.mark.parametrize("orientations", [1, 4])
@pytest.mark.parametrize("L", [2, 4, 8])
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_chunk_map_gating_equals_the_reference(grid, L, orientations):
    q, k, v, _, gates = random_problem(*grid, orientations, grid[0] * 100 + grid[1] + 10 * L + orientations)
    if orientations == 4:
        expected = plstm.grid_forward_oriented(q, k, v, plstm.GridGates(*gates))
    else:
        expected = plstm.grid_forward(q, k, v, plstm.GridGates(*(g[0] for g in gates)))
    assert rel(grid_h(q, k, v, gates, L, orientations), expected) < 1e-12


@pytest.mark.parametrize("orientations", [1, 4])
@pytest.mark.parametrize("L", [2, 4])
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_chunk_map_gate_gradients_equal_the_reference(grid, L, orientations):
    """The backward of the chunk-map form (block products, the chunk-level programme and each chunk's
    programme run backwards) gives the reference's exact gate gradients."""
    q, k, v, dh, gates = random_problem(*grid, orientations, grid[0] * 100 + grid[1] + 10 * L + orientations)
    ours = grid_gate_grads(q, k, v, gates, dh, L, orientations)
    if orientations == 4:
        reference = plstm.grid_backward_oriented(q, k, v, plstm.GridGates(*gates), dh)
    else:
        reference = plstm.grid_backward(q, k, v, plstm.GridGates(*(g[0] for g in gates)), dh, chunk_size=1)
    for i, name in enumerate(("dSr", "dSd", "dTrl", "dTru", "dTdu", "dTdl", "dMl", "dMu", "dD")):
        expected = getattr(reference, name).reshape(ours[i].shape)
        assert rel(ours[i], expected) < 1e-11, name


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
