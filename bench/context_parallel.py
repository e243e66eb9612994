"""Times flashlstm.context_parallel.mlstm per rank: forward and forward + backward of one sequence of
--tokens tokens split evenly over the ranks, and the communication share (a standalone all-gather of
the same size as the one a call makes, against the call). Launch with torchrun, one process per GPU:

    torchrun --nproc-per-node 8 bench/context_parallel.py --json out/cp8.json      # NCCL on GPUs
    torchrun --nproc-per-node 2 bench/context_parallel.py --device cpu --tokens 512 --dqk 16 --dv 16

Run it for 1, 2, 4 and 8 GPUs; the scaling efficiency at P GPUs is t(1 GPU, S) / (P · t(P GPUs, S))
on the largest S that fits one GPU. Multi-GPU machines keep NVLink multicast off (NCCL_NVLS_ENABLE=0).
Rank 0 prints a line and writes the JSON."""

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist

from flashlstm import context_parallel


def timed(fn, device, reps):
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        dist.barrier()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tokens", type=int, default=1 << 20, help="the whole sequence, split over the ranks")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dqk", type=int, default=256)
    parser.add_argument("--dv", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--input-gate", choices=["exp", "sig"], default="exp")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    S = args.tokens // world
    g = torch.Generator(device=args.device).manual_seed(rank)
    make = lambda *shape: torch.randn(*shape, device=args.device, dtype=dtype, generator=g)  # noqa: E731
    q, k, v = make(1, args.heads, S, args.dqk), make(1, args.heads, S, args.dqk), make(1, args.heads, S, args.dv)
    igate, fgate = make(1, args.heads, S), make(1, args.heads, S) + 3
    leaves = [t.requires_grad_() for t in (q, k, v, igate, fgate)]
    options = dict(chunk_size=args.chunk_size, input_gate=args.input_gate)

    def forward():
        with torch.no_grad():
            context_parallel.mlstm(*leaves, **options)

    def forward_backward():
        out = context_parallel.mlstm(*leaves, **options)
        out.h.float().sum().backward()

    state = torch.float32 if args.device == "cuda" else dtype
    numel = (args.heads * (args.dqk * args.dv + args.dqk + 2)) * 2  # (C, n, m, F) and the initial state's room
    payload = torch.zeros(numel, device=args.device, dtype=state)
    gathered = [torch.empty_like(payload) for _ in range(world)]
    fw_ms = timed(forward, args.device, args.reps)
    fwbw_ms = timed(forward_backward, args.device, args.reps)
    comm_ms = timed(lambda: dist.all_gather(gathered, payload), args.device, args.reps)
    row = {"ranks": world, "tokens": args.tokens, "tokens_per_rank": S, "heads": args.heads, "dqk": args.dqk,
           "dv": args.dv, "dtype": str(dtype).replace("torch.", ""), "input_gate": args.input_gate,
           "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
           "fw_ms": fw_ms, "fwbw_ms": fwbw_ms, "allgather_ms": comm_ms,
           # the forward gathers once, the backward once more (the all-gather's gradient)
           "comm_share_fwbw": 2 * comm_ms / fwbw_ms}
    if rank == 0:
        print(f"{world} ranks, {S} tokens each: fw {fw_ms:.2f} ms, fw+bw {fwbw_ms:.2f} ms, "
              f"all-gather {comm_ms:.3f} ms ({100 * row['comm_share_fwbw']:.1f} % of fw+bw)")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(row, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
