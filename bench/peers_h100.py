"""The peers' kernels at issue 7's benchmark shape, timed on the GPU machine in the same session as
bench_mlstm_cuda (DESIGN.md's protocol: bf16, 65,536 tokens, NH = 8, DQK = 256, DV = 512; the
median of triton.testing.do_bench, which flushes the L2 before each run).

Peers: mlstm_kernels (TFLA mLSTMsig, TFLA mLSTMexp, limit-chunk mLSTMexp), flash-linear-attention
(chunk_simple_gla) and torch SDPA (FlashAttention-2, 32 heads x 128). Their wheels travel with the
run (tools/gpu_peers.sh); each peer runs in a process of its own (a compiler crash aborts the
process), and one that does not import, compile or run is reported with its error.

    python3 bench/peers_h100.py --json out/peers.json
"""

import argparse
import json
import subprocess
import sys

import torch
import torch.nn.functional as F
import triton

TOKENS, NH, DQK, DV = 65536, 8, 256, 512


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def mlstm_inputs(S, requires_grad):
    B = TOKENS // S
    g = torch.Generator(device="cuda").manual_seed(0)

    def normal(*shape, mean=0.0):
        x = torch.randn(*shape, device="cuda", generator=g, dtype=torch.float32) + mean
        return x.to(torch.bfloat16).requires_grad_(requires_grad)

    return (normal(B, NH, S, DQK), normal(B, NH, S, DQK), normal(B, NH, S, DV), normal(B, NH, S),
            normal(B, NH, S, mean=3.0))


def fw_and_fwbw(run, make_inputs):
    """Times run(*inputs) forward only, then forward + backward of <h, dh>."""
    x = make_inputs(False)
    with torch.no_grad():
        fw = bench(lambda: run(*x))
    x = make_inputs(True)
    h = run(*x)
    dh = torch.randn_like(h)

    def fwbw():
        for t in x:
            t.grad = None
        run(*x).backward(dh)

    return fw, bench(fwbw)


def peers(S, only):
    rows = []

    def add(name, thunk):
        if name != only:
            return
        try:
            fw, fwbw = thunk()
            rows.append({"peer": name, "S": S, "fw_ms": fw, "fwbw_ms": fwbw})
        except Exception as e:  # a peer that fails is reported, not fatal
            rows.append({"peer": name, "S": S, "error": f"{type(e).__name__}: {str(e)[:200]}"})
        torch.cuda.empty_cache()

    def tfla_sig():
        from mlstm_kernels.torch.chunkwise.triton_xl_chunk_siging import mlstm_siging_chunkwise__xl_chunk
        return fw_and_fwbw(lambda q, k, v, i, f: mlstm_siging_chunkwise__xl_chunk(
            q, k, v, i, f, normalize=False, chunk_size=128), lambda rg: mlstm_inputs(S, rg))

    def tfla_exp():
        from mlstm_kernels.torch.chunkwise.triton_xl_chunk import mlstm_chunkwise__xl_chunk
        return fw_and_fwbw(lambda q, k, v, i, f: mlstm_chunkwise__xl_chunk(q, k, v, i, f, chunk_size=128),
                           lambda rg: mlstm_inputs(S, rg))

    def limit_chunk_exp():
        from mlstm_kernels.torch.chunkwise.triton_limit_chunk import mlstm_chunkwise__limit_chunk
        return fw_and_fwbw(lambda q, k, v, i, f: mlstm_chunkwise__limit_chunk(
            q, k, v, i, f, chunk_size=64, autocast_kernel_dtype=torch.bfloat16), lambda rg: mlstm_inputs(S, rg))

    def fla_simple_gla():
        from fla.ops.simple_gla import chunk_simple_gla

        def run(q, k, v, i, f):  # FLA's layout is (B, T, H, D); the forget gate in log space
            t = lambda x: x.transpose(1, 2)
            return chunk_simple_gla(t(q), t(k), t(v), g=F.logsigmoid(f.float()).transpose(1, 2),
                                    scale=DQK ** -0.5)[0]
        return fw_and_fwbw(run, lambda rg: mlstm_inputs(S, rg))

    def sdpa_flash():
        B = TOKENS // S

        def make(rg):
            return tuple(torch.randn(B, 32, S, 128, device="cuda", dtype=torch.bfloat16).requires_grad_(rg)
                         for _ in range(3))

        def run(q, k, v):
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return fw_and_fwbw(run, make)

    for name, thunk in zip(PEERS, [tfla_sig, tfla_exp, limit_chunk_exp, fla_simple_gla, sdpa_flash]):
        add(name, thunk)
    return rows


PEERS = ["mlstm_kernels TFLA mLSTMsig (normalize off, L=128)", "mlstm_kernels TFLA mLSTMexp (L=128)",
         "mlstm_kernels limit-chunk mLSTMexp (L=64)", "flash-linear-attention chunk_simple_gla",
         "torch SDPA flash, 32 x 128 heads, causal"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="")
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--only", default="", help="run this peer in this process and print its rows as JSON")
    args = parser.parse_args()
    if args.only:
        print(json.dumps([r for S in args.lengths for r in peers(S, args.only)]))
        return
    rows = []
    for name in PEERS:
        run = subprocess.run([sys.executable, __file__, "--only", name, "--lengths", *map(str, args.lengths)],
                             capture_output=True, text=True)
        try:
            rows += json.loads(run.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            tail = (run.stderr.strip().splitlines() or ["no output"])[-1]
            rows += [{"peer": name, "S": S, "error": f"exit {run.returncode}: {tail[:200]}"} for S in args.lengths]
    info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "results": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)
    print(f"{'peer (bf16, 65,536 tokens)':<52} {'S':>6} {'fw ms':>8} {'fwbw ms':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['peer']:<52} {r['S']:>6}   {r['error'][:90]}")
        else:
            print(f"{r['peer']:<52} {r['S']:>6} {r['fw_ms']:>8.2f} {r['fwbw_ms']:>8.2f}")


if __name__ == "__main__":
    main()
