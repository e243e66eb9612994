"""The peers' kernels at the benchmark shape, timed on the GPU machine in the same session as
bench_mlstm_cuda (bench/README.md's protocol: bf16, 65,536 tokens, NH = 8, DQK = 256, DV = 512; the
median of triton.testing.do_bench, which flushes the L2 before each run, over at least 30 runs).

Peers: mlstm_kernels (TFLA mLSTMsig, TFLA mLSTMexp, limit-chunk mLSTMexp), flash-linear-attention
(chunk_simple_gla) and torch SDPA (FlashAttention-2, 32 heads x 128). Their wheels travel with the
run (tools/gpu_peers.sh); each peer runs in a process of its own (a compiler crash aborts the
process), and one that does not import, compile or run is reported with its error. Each row names
the mLSTM variant it competes with ("sig-nonorm", "exp"; "attention" for SDPA), which
bench_mlstm_cuda --peers reads to put the fastest peer beside each of our rows. The timing and the
process per peer are bench/peers_common.py's, shared with peers_slstm_h100.py.

    python3 bench/peers_h100.py --json out/peers.json
"""

import argparse
import json

import torch
import torch.nn.functional as F

from peers_common import each_in_own_process, fw_and_fwbw, measure, report, versions

TOKENS, NH, DQK, DV = 65536, 8, 256, 512


def mlstm_inputs(S, requires_grad):
    B = TOKENS // S
    g = torch.Generator(device="cuda").manual_seed(0)

    def normal(*shape, mean=0.0):
        x = torch.randn(*shape, device="cuda", generator=g, dtype=torch.float32) + mean
        return x.to(torch.bfloat16).requires_grad_(requires_grad)

    return (normal(B, NH, S, DQK), normal(B, NH, S, DQK), normal(B, NH, S, DV), normal(B, NH, S),
            normal(B, NH, S, mean=3.0))


def peers(S, only):
    rows = []

    def add(name, variant, thunk):
        if name != only:
            return
        rows.append(measure({"peer": name, "variant": variant, "S": S}, thunk))

    def tfla_sig(row):
        from mlstm_kernels.torch.chunkwise.triton_xl_chunk_siging import mlstm_siging_chunkwise__xl_chunk
        fw_and_fwbw(lambda q, k, v, i, f: mlstm_siging_chunkwise__xl_chunk(
            q, k, v, i, f, normalize=False, chunk_size=128), lambda rg: mlstm_inputs(S, rg), row)

    def tfla_exp(row):
        from mlstm_kernels.torch.chunkwise.triton_xl_chunk import mlstm_chunkwise__xl_chunk
        fw_and_fwbw(lambda q, k, v, i, f: mlstm_chunkwise__xl_chunk(q, k, v, i, f, chunk_size=128),
                    lambda rg: mlstm_inputs(S, rg), row)

    def limit_chunk_exp(row):
        from mlstm_kernels.torch.chunkwise.triton_limit_chunk import mlstm_chunkwise__limit_chunk
        fw_and_fwbw(lambda q, k, v, i, f: mlstm_chunkwise__limit_chunk(
            q, k, v, i, f, chunk_size=64, autocast_kernel_dtype=torch.bfloat16), lambda rg: mlstm_inputs(S, rg), row)

    def fla_simple_gla(row):
        from fla.ops.simple_gla import chunk_simple_gla

        def run(q, k, v, i, f):  # FLA's layout is (B, T, H, D); the forget gate in log space
            t = lambda x: x.transpose(1, 2)
            return chunk_simple_gla(t(q), t(k), t(v), g=F.logsigmoid(f.float()).transpose(1, 2),
                                    scale=DQK ** -0.5)[0]
        fw_and_fwbw(run, lambda rg: mlstm_inputs(S, rg), row)

    def sdpa_flash(row):
        B = TOKENS // S

        def make(rg):
            return tuple(torch.randn(B, 32, S, 128, device="cuda", dtype=torch.bfloat16).requires_grad_(rg)
                         for _ in range(3))

        def run(q, k, v):
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        fw_and_fwbw(run, make, row)

    for (name, variant), thunk in zip(PEERS, [tfla_sig, tfla_exp, limit_chunk_exp, fla_simple_gla, sdpa_flash]):
        add(name, variant, thunk)
    return rows


# (name, the mLSTM variant it competes with)
PEERS = [("mlstm_kernels TFLA mLSTMsig (normalize off, L=128)", "sig-nonorm"),
         ("mlstm_kernels TFLA mLSTMexp (L=128)", "exp"),
         ("mlstm_kernels limit-chunk mLSTMexp (L=64)", "exp"),
         ("flash-linear-attention chunk_simple_gla", "sig-nonorm"),
         ("torch SDPA flash, 32 x 128 heads, causal", "attention")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="")
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--only", default="", help="run this peer in this process and print its rows as JSON")
    args = parser.parse_args()
    if args.only:
        print(json.dumps([r for S in args.lengths for r in peers(S, args.only)]))
        return
    rows = each_in_own_process(__file__, PEERS, ["--lengths", *map(str, args.lengths)],
                               [{"S": S} for S in args.lengths])
    info = {"device": torch.cuda.get_device_name(),
            "versions": versions(["torch", "triton", "mlstm_kernels", "flash-linear-attention"]), "results": rows}
    report(info, args.json, "peer (bf16, 65,536 tokens)", "S", 52)

if __name__ == "__main__":
    main()
