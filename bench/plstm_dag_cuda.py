"""Times the CUDA pLSTM DAG forward and forward + backward (flashlstm.plstm.dag_forward / dag_backward on
torch CUDA tensors) against the CPU reference's recurrent form (float32, one thread) on the same problem:
a 100,000-node random DAG at DK = DV = 16 and 64, and a batch of 1,000 generated molecules (bonds
oriented breadth-first from atom 0, the molecules joined into one DAG of disjoint parts). P-mode gates,
q, k, v float32. Median of --reps CUDA-event timings after warm-up (the CPU forward: median of
--cpu-reps runs; its backward: one run), the edge-state memory the kernels hold, the largest
difference from the reference, and a JSON record:

    PYTHONPATH=<build>/python python3 bench/plstm_dag_cuda.py --json out/plstm_dag.json
"""

import argparse
import time

import numpy as np
import torch

from flashlstm import graph, plstm
from flashlstm.datasets import molecules
from plstm_grid_cuda import record, timed


def molecule_batch(count):
    """The first `count` generated molecules as one DAG (node ids offset molecule by molecule)."""
    edges, offset = [], 0
    for m in molecules.generate(molecules.make_params(), 0, count):
        edges.append(molecules.to_dag(m).edges + offset)
        offset += m.num_atoms
    return graph.Dag(offset, np.concatenate(edges))


def problem(dag, batch, heads, dims, seed):
    rng = np.random.default_rng(seed)
    E, A, N = dag.num_edges, graph.num_arcs(dag), dag.num_nodes
    raw = lambda *shape: rng.standard_normal((batch, heads) + shape).astype(np.float32)
    gates = plstm.dag_gates_p_mode(dag, raw(E), raw(A), raw(E), raw(E), raw(N))
    q, k, v, dh = (raw(N, dims) for _ in range(4))
    return (q, k, v), tuple(np.ascontiguousarray(g, dtype=np.float32) for g in gates), dh


def seconds(fn, reps=1):
    """The median time of `reps` runs of fn, and its last result."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100000, help="the random DAG's nodes")
    parser.add_argument("--molecules", type=int, default=1000)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--cpu-reps", type=int, default=3, help="runs of the reference's forward (median)")
    parser.add_argument("--cpu-backward", action="store_true", help="time the reference's backward too (slow)")
    parser.add_argument("--json", default="")
    parser.add_argument("--revision", default="", help="the revision to record (default: git's HEAD here)")
    args = parser.parse_args()
    workloads = [("random DAG", graph.random_dag(args.nodes, 2.0, 12, 1000), 1, 1, 16),
                 ("random DAG", graph.random_dag(args.nodes, 2.0, 12, 1000), 1, 1, 64),
                 (f"{args.molecules} molecules", molecule_batch(args.molecules), 1, args.heads, 64)]
    rows = []
    for name, dag, batch, heads, dims in workloads:
        (q, k, v), gates, dh = problem(dag, batch, heads, dims, seed=len(rows))
        cpu_fw_s, h_ref = seconds(lambda: plstm.dag_forward(dag, q, k, v, *gates, form="recurrent"), args.cpu_reps)
        cpu_bw_s = seconds(lambda: plstm.dag_backward(dag, q, k, v, *gates, dh))[0] if args.cpu_backward else None
        on_gpu = lambda x: torch.from_numpy(x).cuda()
        qg, kg, vg, dhg = map(on_gpu, (q, k, v, dh))
        gg = [on_gpu(g) for g in gates]
        h = plstm.dag_forward(dag, qg, kg, vg, *gg)
        err = float((h.cpu() - torch.from_numpy(h_ref)).abs().max() / max(np.abs(h_ref).max(), 1e-30))

        def fw_bw():
            plstm.dag_forward(dag, qg, kg, vg, *gg)
            plstm.dag_backward(dag, qg, kg, vg, *gg, dhg)

        fw = timed(lambda: plstm.dag_forward(dag, qg, kg, vg, *gg), args.reps)
        fw_bw_ms = timed(fw_bw, args.reps)
        row = dict(workload=name, nodes=dag.num_nodes, edges=dag.num_edges, arcs=graph.num_arcs(dag),
                   levels=int(graph.node_levels(dag).max()) + 1, batch=batch, heads=heads, dqk=dims, dv=dims, fw_ms=fw, fw_bw_ms=fw_bw_ms,
                   cpu_fw_ms=cpu_fw_s * 1e3, cpu_bw_ms=None if cpu_bw_s is None else cpu_bw_s * 1e3,
                   edge_state_mib=batch * heads * dag.num_edges * dims * dims * 4 / 2**20, h_rel_err=err)
        rows.append(row)
        cpu_bw = "" if cpu_bw_s is None else f", CPU bw {cpu_bw_s * 1e3:.1f} ms"
        print(f"{name:>15} N {dag.num_nodes} E {dag.num_edges} B·NH {batch * heads} D {dims}: fw {fw:8.3f} ms, "
              f"fw+bw {fw_bw_ms:8.3f} ms; CPU reference fw {cpu_fw_s * 1e3:.1f} ms ({cpu_fw_s * 1e3 / fw:.0f}x){cpu_bw}; "
              f"edge states {row['edge_state_mib']:.0f} MiB; max |h - ref| / max |ref| {err:.1e}", flush=True)
    if args.json:
        record(args.json, args.revision, rows)


if __name__ == "__main__":
    main()
