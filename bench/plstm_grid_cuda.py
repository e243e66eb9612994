"""Times the CUDA pLSTM grid forward and forward + backward (flashlstm.plstm.grid_forward /
grid_forward_oriented, grid_backward / grid_backward_oriented on torch CUDA tensors) at the vision
shape: B images x NH heads, DQK = DV = 64, gates float32, one orientation and the sum over four,
float32 and bf16 inputs. Median of --reps CUDA-event timings after warm-up, the memory beyond inputs
and outputs (the backward's scratch, and what torch saw), and a JSON record:

    PYTHONPATH=<build>/python python3 bench/plstm_grid_cuda.py --json out/plstm_grid.json
"""

import argparse
import json
import statistics
import subprocess

import torch

from flashlstm import _core, plstm


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


def record(path, revision, rows):
    """The JSON record of a run: device, torch, revision (default: git's HEAD here) and the rows."""
    revision = revision or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                          text=True).stdout.strip()
    with open(path, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "revision": revision,
                   "rows": rows}, f, indent=1)


def kernel_times(fn):
    """Prints the GPU time of each kernel in one call of fn (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:6]:
        print(f"        {e.device_time_total / 1000:9.3f} ms  {e.key[:90]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--dims", type=int, default=64, help="DQK = DV")
    parser.add_argument("--grids", default="16x16,32x32,64x64")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="print the kernels' times of one fw + bw per row")
    parser.add_argument("--json", default="")
    parser.add_argument("--revision", default="", help="the revision to record (default: git's HEAD here)")
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
            back = plstm.grid_backward_oriented if orientations == 4 else plstm.grid_backward
            for dtype in (torch.float32, torch.bfloat16):
                q, k, v, dh = (torch.randn(args.batch, args.heads, X, Y, args.dims, device="cuda", generator=g).to(dtype)
                               for _ in range(4))
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()

                def fw_bw():
                    run(q, k, v, gates)
                    back(q, k, v, gates, dh)

                fw = timed(lambda: run(q, k, v, gates), args.reps)
                fw_bw_ms = timed(fw_bw, args.reps)
                # Memory beyond the inputs and the outputs: what torch saw beyond the largest output set
                # alive at once (h in the forward; dq, dk, dv and the gates' gradients in the backward),
                # and the backward's scratch, which comes from the CUDA allocator that torch does not see.
                h_bytes = v.numel() * v.element_size()
                grad_bytes = sum(x.numel() * x.element_size() for x in (q, k, v)) + sum(x.numel() * 4 for x in gates)
                torch_extra = max(torch.cuda.max_memory_allocated() - base - max(h_bytes, grad_bytes), 0)
                scratch = _core.cuda.plstm.grid_backward_scratch_bytes(args.batch, args.heads, X, Y, args.dims, args.dims,
                                                                       orientations, str(dtype).split(".")[-1])
                if args.profile:
                    kernel_times(fw_bw)
                row = dict(grid=f"{X}x{Y}", orientations=orientations, dtype=str(dtype).split(".")[-1],
                           batch=args.batch, heads=args.heads, dqk=args.dims, dv=args.dims, fw_ms=fw,
                           fw_bw_ms=fw_bw_ms, scratch_mib=scratch / 2**20, torch_extra_mib=torch_extra / 2**20)
                rows.append(row)
                print(f"{row['grid']:>6} x{orientations} {row['dtype']:>9}: fw {fw:8.3f} ms, fw+bw {fw_bw_ms:8.3f} ms, "
                      f"beyond inputs and outputs: scratch {row['scratch_mib']:.1f} MiB, other {row['torch_extra_mib']:.1f} MiB",
                      flush=True)
    if args.json:
        record(args.json, args.revision, rows)


if __name__ == "__main__":
    main()
