"""What the peers' timing scripts (peers_h100.py, peers_slstm_h100.py) share: the timing of one call
(bench/README.md's protocol), forward and forward + backward of one peer, the error text of a peer
that fails, the loop that runs each peer in a process of its own, and the packages' versions."""

import importlib.metadata
import json
import subprocess
import sys
import time

import torch
import triton


def bench(fn, min_reps=30):
    """The median time of fn() in ms: triton.testing.do_bench (CUDA events, the L2 cleared before
    each call), over at least about min_reps repetitions. do_bench runs as many repetitions as fit in
    `rep` ms: a first estimate of the call's time gives it room for min_reps + 5."""
    estimate = triton.testing.do_bench(fn, warmup=5, rep=20, return_mode="median")
    return triton.testing.do_bench(fn, warmup=25, rep=max(200.0, (min_reps + 5) * estimate), return_mode="median")


def fw_and_fwbw(run, make_inputs, row, backward=True, min_reps=30):
    """Times run(*inputs) forward only into row["fw_ms"], then (unless backward is False) forward +
    backward of <h, dh> into row["fwbw_ms"], h = run(*inputs). make_inputs(requires_grad) returns the
    inputs; the gradients of all of them are reset before each call. A failure raises; measure()
    records it in row["error"] (the forward's time is kept when only the backward fails)."""
    x = make_inputs(False)
    with torch.no_grad():
        row["fw_ms"] = bench(lambda: run(*x), min_reps)
    if not backward:
        return
    x = make_inputs(True)
    h = run(*x)
    dh = torch.randn_like(h)

    def fwbw():
        for t in x:
            t.grad = None
        run(*x).backward(dh)

    row["fwbw_ms"] = bench(fwbw, min_reps)


def error_text(e):
    return f"{type(e).__name__}: {str(e)[:200]}"


def measure(row, thunk, describe=error_text):
    """Runs thunk(row), which writes the peer's times into row; a peer that fails is reported in
    row["error"] (describe(exception)), not fatal. Returns row."""
    try:
        thunk(row)
    except Exception as e:
        row["error"] = describe(e)
    torch.cuda.empty_cache()
    return row


def each_in_own_process(script, peers, child_args, shapes, timeout=None):
    """Runs `python3 script --only NAME *child_args` for each (NAME, variant) in peers, one process
    per peer (a compiler crash aborts only that process), and collects the rows each prints as JSON
    on its last line of output. A process that prints none (it crashed, or ran past `timeout`
    seconds) gives one error row per shape, a shape being the dict of the row's size keys. Each peer's
    rows are also printed to stderr as it finishes (with its wall time), so that a run cut short
    still shows the peers it measured."""
    rows = []
    for name, variant in peers:
        start = time.perf_counter()
        try:
            run = subprocess.run([sys.executable, script, "--only", name, *child_args],
                                 capture_output=True, text=True, timeout=timeout)
            tail = (run.stderr.strip().splitlines() or ["no output"])[-1]
            out, error = run.stdout, f"exit {run.returncode}: {tail[:200]}"
        except subprocess.TimeoutExpired:
            out, error = "", f"timed out after {timeout} s"
        try:
            new = json.loads(out.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            new = [{"peer": name, "variant": variant, **shape, "error": error} for shape in shapes]
        print(f"[{time.perf_counter() - start:.0f} s] {json.dumps(new)}", file=sys.stderr, flush=True)
        rows += new
    return rows


def versions(packages):
    """{package: installed version, or None}."""
    found = {}
    for package in packages:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def report(info, json_path, title, key, width):
    """Writes ``info`` (its "results" the rows) as JSON to ``json_path`` (if given) and prints one line
    per row: the peer, the shape column ``key``, fw and fw+bw ms, and the error of a failed peer."""
    if json_path:
        with open(json_path, "w") as f:
            json.dump(info, f, indent=1)
    print(f"{title:<{width}} {key:>6} {'fw ms':>8} {'fwbw ms':>8}")
    for r in info["results"]:
        times = "".join(f" {r[k]:>8.2f}" if k in r else f" {'-':>8}" for k in ("fw_ms", "fwbw_ms"))
        print(f"{r['peer']:<{width}} {r[key]:>6}{times}   {' '.join(r.get('error', '').split())[:90]}")
