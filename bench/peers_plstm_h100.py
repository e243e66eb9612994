"""The pLSTM authors' PyTorch code (github.com/ml-jku/plstm, package `plstm`) timed on its 2-D vision
form, for comparison with our grid kernel (bench/plstm_grid_cuda.py) in the same GPU session.

What is called: `plstm.torch.plstm_2d_fused.pLSTM2D_parallel_fused_torch`, the function their fused
2-D layer (`pLSTM2DLayerFused`, the one their vision blocks use, once in P-mode and once in D-mode)
calls after its projections. It takes the gates of all four orientations at once, flips them into
the orientation's frame, builds the gating matrix of each orientation over the whole grid (node to
node, N x N for N = X * Y nodes, per batch-head), sums the four, adds the direct term on its diagonal,
and contracts it with q, k and v in one einsum. Only this function is timed: no projections, no
norm, no output projection.

Shapes (their layer folds heads into the batch, so BH = batch * heads; every state-tracking
dimension JQ = JK = JV = JT = JO = 1, as their vision model uses):
    q, k   (BH, X, Y, DK, 1)           v  (BH, X, Y, DV, 1)
    S_r, S_d (source)      (BH, 4, X, Y, 1, 1, 1)    orientation axis second: o = 0 as is,
    T_rl, T_du, T_dl, T_ru (transition) (BH, 4, X, Y, 1, 1)   1 flips x, 2 flips y, 3 both; the
    M_l, M_u (mark)        (BH, 4, X, Y, 1, 1, 1)    gates are given unflipped (the function flips)
    D (direct, shared by the orientations)  (BH, X, Y, 1, 1, 1, 1)
    output (BH, X, Y, DV, 1): the sum over the four orientations plus the direct term
    levels = log2(X): the function needs one block covering the whole grid, so X = Y = 2**levels;
    a square grid of another size is zero-padded up to the next power of two, as their layer does
    (their layer caps levels at 6, i.e. grids up to 64 x 64). q is scaled by DK**-0.5 inside.

Choices:
- --mode P (default): all four transition gates are passed, as their P-mode layer does (it ties
  T_ru = T_rl and T_dl = T_du = 1 - T_rl; here all are independent random tensors, which costs the
  same), i.e. the full nine-gate form our kernel computes. --mode D drops T_ru (their D-mode with its
  default chirality "L"), which skips part of the transition products.
- dtype: their code has no mixed precision of its own (one einsum over all operands), so a bf16 row
  has q, k, v and all gates in bf16, as their layer with dtype="bfloat16" gives it; float32 rows are
  float32 throughout. TF32 stays off unless --tf32.
- Random inputs: q, k, v ~ N(0, 1); every gate uniform in [0, 0.5) (bounded path sums; the values do
  not change the work).
- Forward: under torch.no_grad(). Forward + backward: out.sum().backward() with every input
  requiring grad (their code is plain autograd), the gradients reset before each call.
- Time: the median of --reps CUDA-event timings after --warmup calls (wall clock on --device cpu).
  Peak: torch.cuda.max_memory_allocated over the warm-up and timed calls, inputs included (reset
  after the inputs are made; fw_inputs_mib, fwbw_inputs_mib say what they held).
A configuration that fails (e.g. out of memory) is recorded with its error; the rest go on.

Correspondence with ours (--check verifies it in float64 on the CPU against
flashlstm.plstm.grid_forward_oriented, which must then be importable): their S_r, S_d, T_rl, T_du,
T_dl, T_ru, M_l, M_u are our Sr, Sd, Trl, Tdu, Tdl, Tru, Ml, Mu with the orientation axis moved from
first to second and heads folded into the batch, the same flips, the same DK**-0.5 scale. One
difference: their direct term is added once, ours once per orientation, so their D equals ours with
D nonzero in orientation 0 only (or D / 4 in each).

On the GPU machine, with their wheel and compoconf's in .whl/ (einops, networkx, typing-extensions
are already there):
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \\
      PYTHONPATH=/tmp/site python3 bench/peers_plstm_h100.py --json out/peers_plstm.json
CPU smoke test: --device cpu --batch 2 --heads 1 --grids 4x4 --dims 8 --reps 2.
"""

import argparse
import gc
import importlib.metadata
import json
import logging
import statistics
import time

import torch

# compoconf warns at import about a config class of their graph layer that two layers register.
logging.getLogger("compoconf").setLevel(logging.ERROR)
from plstm.torch.plstm_2d_fused import pLSTM2D_parallel_fused_torch  # noqa: E402

MIB = 2**20


def make_inputs(BH, X, Y, dk, dv, mode, dtype, device, requires_grad, gen):
    def normal(*shape):
        return torch.randn(*shape, generator=gen, device=device).to(dtype).requires_grad_(requires_grad)

    def gate(*shape):
        return (0.5 * torch.rand(*shape, generator=gen, device=device)).to(dtype).requires_grad_(requires_grad)

    q, k, v = normal(BH, X, Y, dk, 1), normal(BH, X, Y, dk, 1), normal(BH, X, Y, dv, 1)
    s_r, s_d = gate(BH, 4, X, Y, 1, 1, 1), gate(BH, 4, X, Y, 1, 1, 1)
    t_rl, t_du, t_dl = (gate(BH, 4, X, Y, 1, 1) for _ in range(3))
    t_ru = gate(BH, 4, X, Y, 1, 1) if mode == "P" else None
    m_l, m_u = gate(BH, 4, X, Y, 1, 1, 1), gate(BH, 4, X, Y, 1, 1, 1)
    d = gate(BH, X, Y, 1, 1, 1, 1)
    return [q, k, v, s_r, s_d, t_rl, t_du, t_dl, t_ru, m_l, m_u, d]


def pad_xy(x, X, P):
    """Zero-pads the grid axes of the inputs from X to P (their layer does the same for a grid side
    that is not a power of 2): axes 1, 2 of q, k, v and D, axes 2, 3 of the oriented gates."""
    if P == X:
        return x
    padded = []
    for i, t in enumerate(x):
        if t is not None:
            xy = 2 if 3 <= i <= 10 else 1
            t = torch.nn.functional.pad(t, [0, 0] * (t.ndim - xy - 2) + [0, P - X, 0, P - X])
        padded.append(t)
    return padded


def timed(fn, reps, warmup, device, before=lambda: None):
    for _ in range(warmup):
        before()
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(reps):
            before()
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(reps):
            before()
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def error_text(e):
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(row, X, args, dtype, device):
    BH = args.batch * args.heads
    P = 1 << max(1, (X - 1).bit_length())
    row["padded_grid"] = f"{P}x{P}"
    row["levels"] = P.bit_length() - 1
    gen = torch.Generator(device=device).manual_seed(0)
    levels = row["levels"]

    def run(*x):
        out = pLSTM2D_parallel_fused_torch(*pad_xy(x, X, P), levels=levels)
        return out[:, :X, :X] if P != X else out

    cuda = device.type == "cuda"
    errors = []
    for part in ("fw", "fwbw"):
        error = None
        x = leaves = None
        try:
            x = make_inputs(BH, X, X, args.dims, args.dims, args.mode, dtype, device, part == "fwbw", gen)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                row[f"{part}_inputs_mib"] = torch.cuda.memory_allocated() / MIB
            if part == "fw":
                with torch.no_grad():
                    out = run(*x)
                    assert out.shape == (BH, X, X, args.dims, 1), tuple(out.shape)
                    del out
                    ms = timed(lambda: run(*x), args.reps, args.warmup, device)
            else:
                leaves = [t for t in x if t is not None]

                def reset():
                    for t in leaves:
                        t.grad = None

                ms = timed(lambda: run(*x).sum().backward(), args.reps, args.warmup, device, reset)
            row[f"{part}_ms"] = ms
            row[f"{part}_peak_mib"] = torch.cuda.max_memory_allocated() / MIB if cuda else None
        except Exception as e:  # noqa: BLE001 - a failing configuration is recorded, not fatal
            error = f"{part}: {error_text(e)}"
        x = leaves = None  # drop the inputs and their gradients before the next part
        free(device)
        if error:
            errors.append(error)
    row["error"] = "; ".join(errors) or None
    return row


def check_against_ours():
    """Their function against our CPU reference in float64 on small grids; returns the worst relative
    error (about 1e-16 when the correspondence in the module's docstring holds)."""
    import numpy as np
    from flashlstm import plstm

    rng = np.random.default_rng(0)
    names = ["Sr", "Sd", "Trl", "Tru", "Tdu", "Tdl", "Ml", "Mu", "D"]
    worst = 0.0
    for B, NH, X, DK, DV in ((2, 2, 4, 3, 2), (1, 2, 8, 5, 4)):
        q, k = rng.standard_normal((2, B, NH, X, X, DK))
        v = rng.standard_normal((B, NH, X, X, DV))
        g = {n: 0.5 * rng.random((4, B, NH, X, X)) for n in names}
        g["D"][1:] = 0  # their direct term is not per orientation
        ours = plstm.grid_forward_oriented(q, k, v, plstm.GridGates(*(g[n] for n in names)))

        def oriented(a, trailing):
            t = torch.from_numpy(a).permute(1, 2, 0, 3, 4).reshape(B * NH, 4, X, X)
            return t.reshape(*t.shape, *([1] * trailing))

        theirs = pLSTM2D_parallel_fused_torch(
            torch.from_numpy(q).reshape(B * NH, X, X, DK, 1), torch.from_numpy(k).reshape(B * NH, X, X, DK, 1),
            torch.from_numpy(v).reshape(B * NH, X, X, DV, 1),
            oriented(g["Sr"], 3), oriented(g["Sd"], 3), oriented(g["Trl"], 2), oriented(g["Tdu"], 2),
            oriented(g["Tdl"], 2), oriented(g["Tru"], 2), oriented(g["Ml"], 3), oriented(g["Mu"], 3),
            torch.from_numpy(g["D"][0]).reshape(B * NH, X, X, 1, 1, 1, 1), levels=X.bit_length() - 1,
        ).reshape(B, NH, X, X, DV).numpy()
        worst = max(worst, float(np.abs(ours - theirs).max() / np.abs(ours).max()))
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", default="16x16,32x32", help="square grids XxX, comma-separated")
    parser.add_argument("--batch", type=int, default=128, help="images")
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--dims", type=int, default=64, help="DK = DV")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--mode", choices=("P", "D"), default="P",
                        help="P: all four transition gates; D: T_ru left out (their D-mode, chirality L)")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tf32", action="store_true", help="allow TF32 in float32 products")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--check", action="store_true",
                        help="first compare their function with flashlstm.plstm.grid_forward_oriented (CPU, float64)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    check = None
    if args.check:
        check = check_against_ours()
        print(f"check: their output against flashlstm.plstm.grid_forward_oriented, relative error {check:.1e}")
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32

    version = importlib.metadata.version("plstm")
    rows = []
    for grid in args.grids.split(","):
        X, Y = map(int, grid.lower().split("x"))
        for dtype_name in args.dtypes.split(","):
            row = dict(grid=f"{X}x{Y}", batch=args.batch, heads=args.heads, dk=args.dims, dv=args.dims,
                       dtype=dtype_name, mode=args.mode, orientations=4, fw_ms=None, fwbw_ms=None,
                       fw_peak_mib=None, fwbw_peak_mib=None, error=None)
            if X != Y:
                row["error"] = "their fused 2-D form takes square grids only"
            else:
                measure(row, X, args, getattr(torch, dtype_name), device)
            rows.append(row)
            fmt = lambda ms, mib: (f"{ms:9.2f} ms" if ms is not None else f"{'-':>9}   ") + (
                f" ({mib / 1024:5.2f} GiB)" if mib is not None else "")
            print(f"{row['grid']:>6} {dtype_name:>9} {args.mode}-mode x4: fw {fmt(row['fw_ms'], row['fw_peak_mib'])}"
                  f"  fw+bw {fmt(row['fwbw_ms'], row['fwbw_peak_mib'])}"
                  + (f"  {row['error']}" if row["error"] else ""), flush=True)
    if args.json:
        info = {"peer": "ml-jku/plstm: plstm.torch.plstm_2d_fused.pLSTM2D_parallel_fused_torch",
                "version": version, "commit": version.partition("+g")[2] or None,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "torch": torch.__version__, "opt_einsum": torch.backends.opt_einsum.is_available(),
                "tf32": args.tf32, "check_rel_err": check, "reps": args.reps, "warmup": args.warmup, "rows": rows}
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
