"""Times the CUDA pLSTM grid forward (flashlstm.plstm.grid_forward / grid_forward_oriented on torch
CUDA tensors) at the vision shape: B images x NH heads, DQK = DV = 64, gates float32, one orientation
and the sum over four, float32 and bf16 inputs. Median of --reps CUDA-event timings after warm-up,
the peak memory torch saw, and a JSON record:

    PYTHONPATH=<build>/python python3 bench/plstm_grid_cuda.py --json out/plstm_grid.json
"""

import argparse
import json
import statistics
import subprocess

import torch

from flashlstm import plstm


def timed(fn, reps):
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--dims", type=int, default=64, help="DQK = DV")
    parser.add_argument("--grids", default="16x16,32x32")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for grid in args.grids.split(","):
        X, Y = map(int, grid.split("x"))
        for orientations in (4, 1):
            lead = (4,) if orientations == 4 else ()
            gates = plstm.GridGates(*(torch.rand(lead + (args.batch, args.heads, X, Y), device="cuda", generator=g)
                                      * 0.5 for _ in range(9)))
            run = plstm.grid_forward_oriented if orientations == 4 else plstm.grid_forward
            for dtype in (torch.float32, torch.bfloat16):
                q, k, v = (torch.randn(args.batch, args.heads, X, Y, args.dims, device="cuda", generator=g).to(dtype)
                           for _ in range(3))
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                ms = timed(lambda: run(q, k, v, gates), args.reps)
                peak = torch.cuda.max_memory_allocated() - base
                row = dict(grid=f"{X}x{Y}", orientations=orientations, dtype=str(dtype).split(".")[-1],
                           batch=args.batch, heads=args.heads, dqk=args.dims, dv=args.dims, fw_ms=ms,
                           extra_memory_mib=peak / 2**20)
                rows.append(row)
                print(f"{row['grid']:>6} x{orientations} {row['dtype']:>9}: fw {ms:8.3f} ms, "
                      f"{row['extra_memory_mib']:.1f} MiB beyond the inputs", flush=True)
    if args.json:
        revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "revision": revision,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
