"""The sLSTM and LSTM peers at the benchmark shape, timed on the GPU machine in the same session as
bench_slstm_cuda (bench/README.md's protocol: B = 16 and 64, T = 1,024, NH = 12, DH = 64, bf16, no
initial state; the median of triton.testing.do_bench, which flushes the L2 before each run, over at
least 30 runs).

Peers, each row naming the cell it competes with ("slstm" or "lstm"), which bench_slstm_cuda --peers
reads to put the fastest peer of the same cell and B beside each of our rows:
- flashrnn (PyPI `flashrnn`, NX-AI), `flashrnn.flashrnn(Wx, R, b, function=..., backend=...,
  dtype="bfloat16")` on our layouts (Wx (B, T, 4, NH, DH), R (4, NH, DH, DH), b (4, NH, DH)), both
  cells, backends triton_fused, cuda (alternating: a cuBLAS product and a pointwise kernel per step)
  and cuda_fused (given the device's properties from torch: its own probe does not compile against
  CUDA 13). The CUDA backends compile with torch's cpp_extension at their first call (20 to 50 s
  per cell and B on the H100; TORCH_EXTENSIONS_DIR keeps the builds); one that does not build or run
  is reported with its error.
- torch.nn.LSTM (cuDNN): the classic LSTM with hidden 768 as one head, input 768, the input
  projection included, batch_first, in fp16, bf16 and fp32.
- a plain loop of torch operations over the T steps: the sLSTM of docs/slstm.md in bf16, forward
  only (its autograd backward through 1,024 steps is not a kernel anyone would time), and over at
  least 10 runs instead of 30 (one forward takes about 0.25 s).
The inputs follow the reference's random problem (standard deviations): Wx ~ N(0, 1) with + 2 on the
forget gate, R ~ N(0, DH^-1/2), b ~ N(0, 0.5). fw+bw is the forward and backward(dh) of <h, dh>,
dh ~ N(0, 1), the inputs' gradients reset before each call. Each peer runs in a process of its own
(bench/peers_common.py), for at most --timeout seconds.

    python3 bench/peers_slstm_h100.py --json out/peers_slstm.json
"""

import argparse
import importlib
import json

import torch
import torch.nn.functional as F

from peers_common import each_in_own_process, error_text, fw_and_fwbw, measure, report, versions

T, NH, DH = 1024, 12, 64


def recurrent_inputs(B, requires_grad):
    """Wx (B, T, 4, NH, DH), R (4, NH, DH, DH), b (4, NH, DH) in bf16, distributed as the
    reference's random problem (reference/slstm/check.cpp)."""
    g = torch.Generator(device="cuda").manual_seed(0)

    def normal(*shape, std=1.0):
        return torch.randn(*shape, device="cuda", generator=g, dtype=torch.float32) * std

    Wx = normal(B, T, 4, NH, DH)
    Wx[:, :, 1] += 2.0  # forget gates mostly open
    tensors = (Wx, normal(4, NH, DH, DH, std=DH ** -0.5), normal(4, NH, DH, std=0.5))
    return tuple(x.to(torch.bfloat16).requires_grad_(requires_grad) for x in tensors)


def slstm_torch_loop(Wx, R, b):
    """h (B, T, NH, DH) of the sLSTM (docs/slstm.md, sigmoid forget gate) from the zero state, one
    step at a time in torch operations, in the inputs' dtype."""
    B, steps, _, heads, dh = Wx.shape
    h = c = n = m = Wx.new_zeros(B, heads, dh)
    hs = []
    for t in range(steps):
        i, f, z, o = (Wx[:, t] + torch.einsum("bhi,ghoi->bgho", h, R) + b).unbind(1)  # (B, NH, DH) each
        a = F.logsigmoid(f) + m
        m_next = torch.where(n == 0, i, torch.maximum(a, i))
        # f' multiplies c = n = 0 where n == 0 (the first step): 0 there, as in the reference, where
        # exp(a - m') could overflow
        f_prime = torch.where(n == 0, 0.0, torch.exp(a - m_next))
        i_prime = torch.exp(i - m_next)
        c = f_prime * c + i_prime * torch.tanh(z)
        n = f_prime * n + i_prime
        m = m_next
        h = torch.sigmoid(o) * c / n
        hs.append(h)
    return torch.stack(hs, dim=1)


def error_and_cause(e):
    """The error's type and, for one raised from another (Triton's CompilationError, whose own text
    is the kernel's source), the innermost cause's text."""
    root = e
    while root.__cause__ is not None:
        root = root.__cause__
    return error_text(e) if root is e else f"{type(e).__name__} from {error_text(root)}"


def flashrnn_device_info_from_torch():
    """flashrnn's cuda_fused backend reads four device properties through an extension of its own
    (gpu_info2), which does not compile against CUDA 13 (cudaDeviceProp lost clockRate and other
    fields it copies): the same four come from torch instead."""
    p = torch.cuda.get_device_properties(torch.cuda.current_device())
    info = {"maxThreadsPerBlock": p.max_threads_per_block, "multiProcessorCount": p.multi_processor_count,
            "regsPerMultiprocessor": p.regs_per_multiprocessor,
            "sharedMemPerBlockOptin": p.shared_memory_per_block_optin}
    importlib.import_module("flashrnn.flashrnn.flashrnn").get_gpu_info = lambda device_id: info


def flashrnn_peer(function, backend):
    def thunk(row):
        from flashrnn import flashrnn
        if backend == "cuda_fused":
            flashrnn_device_info_from_torch()

        def run(Wx, R, b):  # states (NS, B, T, NH, DH), h first
            return flashrnn(Wx, R, b, function=function, backend=backend, dtype="bfloat16")[0][0]
        fw_and_fwbw(run, lambda rg: recurrent_inputs(row["B"], rg), row)
    return thunk


def cudnn_lstm(dtype):
    def thunk(row):
        hidden = NH * DH
        lstm = torch.nn.LSTM(hidden, hidden, batch_first=True).to("cuda", dtype)
        x = torch.randn(row["B"], T, hidden, device="cuda", dtype=dtype)

        def make_inputs(rg):  # the weights are inputs too: their gradients are reset before each call
            return (x.requires_grad_(rg), *(w.requires_grad_(rg) for w in lstm.parameters()))
        fw_and_fwbw(lambda inputs, *weights: lstm(inputs)[0], make_inputs, row)
    return thunk


def torch_loop(row):
    fw_and_fwbw(slstm_torch_loop, lambda rg: recurrent_inputs(row["B"], rg), row, backward=False, min_reps=10)


# (name, the cell it competes with, dtype, thunk), cheapest first
PEERS = [("flashrnn triton_fused sLSTM", "slstm", "bf16", flashrnn_peer("slstm", "triton_fused")),
         ("flashrnn triton_fused LSTM", "lstm", "bf16", flashrnn_peer("lstm", "triton_fused")),
         ("torch.nn.LSTM cuDNN fp16, hidden 768", "lstm", "fp16", cudnn_lstm(torch.float16)),
         ("torch.nn.LSTM cuDNN bf16, hidden 768", "lstm", "bf16", cudnn_lstm(torch.bfloat16)),
         ("torch.nn.LSTM cuDNN fp32, hidden 768", "lstm", "fp32", cudnn_lstm(torch.float32)),
         ("torch loop sLSTM (fw only, >= 10 runs)", "slstm", "bf16", torch_loop),
         ("flashrnn cuda (alternating) sLSTM", "slstm", "bf16", flashrnn_peer("slstm", "cuda")),
         ("flashrnn cuda (alternating) LSTM", "lstm", "bf16", flashrnn_peer("lstm", "cuda")),
         ("flashrnn cuda_fused sLSTM", "slstm", "bf16", flashrnn_peer("slstm", "cuda_fused")),
         ("flashrnn cuda_fused LSTM", "lstm", "bf16", flashrnn_peer("lstm", "cuda_fused"))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--timeout", type=float, default=420.0,
                        help="seconds a peer's process may run, its JIT builds included, before it is an error")
    parser.add_argument("--only", default="", help="run this peer in this process and print its rows as JSON")
    parser.add_argument("--select", nargs="+", default=[],
                        help="only the peers whose name contains one of these words (e.g. triton_fused cuDNN)")
    args = parser.parse_args()
    peers = [p for p in PEERS if not args.select or any(word in p[0] for word in args.select)]
    if args.only:
        rows = [measure({"peer": name, "variant": variant, "dtype": dtype, "B": B, "T": T}, thunk, error_and_cause)
                for name, variant, dtype, thunk in PEERS if name == args.only for B in args.batches]
        print(json.dumps(rows))
        return
    rows = each_in_own_process(__file__, [(name, variant) for name, variant, _, _ in peers],
                               ["--batches", *map(str, args.batches)], [{"B": B, "T": T} for B in args.batches],
                               timeout=args.timeout)
    info = {"device": torch.cuda.get_device_name(),
            "versions": {**versions(["torch", "triton", "flashrnn"]), "cudnn": torch.backends.cudnn.version()},
            "shape": {"T": T, "NH": NH, "DH": DH}, "results": rows}
    report(info, args.json, f"peer (T = {T:,}, NH = {NH}, DH = {DH})", "B", 40)

if __name__ == "__main__":
    main()
