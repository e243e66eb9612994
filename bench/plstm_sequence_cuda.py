"""Times the CUDA pLSTM sequence kernels (flashlstm.plstm.sequence_forward / sequence_backward on torch
CUDA tensors: the chunkwise form, chunks of 64): forward and forward + backward at a language-model
shape, gates float32 with transitions in (-1, 1), float32 and bf16 inputs. Median of --reps CUDA-event
timings after warm-up, the scratch memory (the chunk states), and a JSON record:

    PYTHONPATH=<build>/python python3 bench/plstm_sequence_cuda.py --json out/plstm_sequence.json
"""

import argparse

import torch

from flashlstm import plstm
from plstm_grid_cuda import record, timed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--lengths", default="1024,8192")
    parser.add_argument("--dims", default="64,128",
                        help="head dims, one row each: D (DQK = DV = D) or DQKxDV (256x512 is the mLSTM benchmark's)")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--json", default="")
    parser.add_argument("--revision", default="", help="the revision to record (default: git's HEAD here)")
    args = parser.parse_args()
    g = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for S in map(int, args.lengths.split(",")):
        for dims in args.dims.split(","):
            DQK, DV = (int(d) for d in dims.split("x")) if "x" in dims else (int(dims), int(dims))
            shape = (args.batch, args.heads, S)
            gates = [torch.rand(shape, device="cuda", generator=g) * 2 - 1 for _ in range(4)]
            for dtype in (torch.float32, torch.bfloat16):
                q, k = (torch.randn(shape + (DQK,), device="cuda", generator=g).to(dtype) for _ in range(2))
                v, dh = (torch.randn(shape + (DV,), device="cuda", generator=g).to(dtype) for _ in range(2))

                def fw_bw():
                    plstm.sequence_forward(q, k, v, *gates)
                    plstm.sequence_backward(q, k, v, *gates, dh)

                fw = timed(lambda: plstm.sequence_forward(q, k, v, *gates), args.reps)
                fw_bw_ms = timed(fw_bw, args.reps)
                states = args.batch * args.heads * ((S + 63) // 64) * DQK * DV * 4
                row = dict(batch=args.batch, heads=args.heads, S=S, dqk=DQK, dv=DV, dtype=str(dtype).split(".")[-1],
                           fw_ms=fw, fw_bw_ms=fw_bw_ms, scratch_fw_mib=states / 2**20, scratch_bw_mib=2 * states / 2**20)
                rows.append(row)
                print(f"B{args.batch} NH{args.heads} S{S:>6} D{DQK:>4}x{DV:<4} {row['dtype']:>9}: fw {fw:8.3f} ms, "
                      f"fw+bw {fw_bw_ms:8.3f} ms, scratch {row['scratch_bw_mib']:.0f} MiB", flush=True)
    if args.json:
        record(args.json, args.revision, rows)


if __name__ == "__main__":
    main()
