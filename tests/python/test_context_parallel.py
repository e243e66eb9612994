"""flashlstm.context_parallel: 2 and 3 CPU processes (gloo) holding uneven slices of one sequence give
the single-process mLSTM's outputs, final state and every gradient (q, k, v, both gates, the initial
state) to 1e-10 in float64, for the exponential and the sigmoid input gate."""

import os

import pytest

torch = pytest.importorskip("torch")
fl = pytest.importorskip("flashlstm")
import flashlstm.torch as ft  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

B, NH, DQK, DV = 2, 2, 5, 4


def problem(S, seed):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape, shift=0.0: torch.randn(*shape, generator=g, dtype=torch.float64) + shift  # noqa: E731
    return dict(q=rnd(B, NH, S, DQK), k=rnd(B, NH, S, DQK), v=rnd(B, NH, S, DV), igate=rnd(B, NH, S),
                fgate=rnd(B, NH, S, shift=3.0), C0=rnd(B, NH, DQK, DV), n0=rnd(B, NH, DQK).abs(), m0=rnd(B, NH),
                w_h=rnd(B, NH, S, DV), w_C=rnd(B, NH, DQK, DV), w_n=rnd(B, NH, DQK), w_m=rnd(B, NH))


def worker(rank, world, splits, input_gate, seed, folder):
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    from flashlstm import context_parallel as cp

    x = problem(sum(splits), seed)
    t0 = sum(splits[:rank])
    part = slice(t0, t0 + splits[rank])
    mine = {name: x[name][:, :, part].clone().requires_grad_() for name in ("q", "k", "v", "igate", "fgate")}
    initial = tuple(x[name].clone().requires_grad_() for name in ("C0", "n0", "m0")) if rank == 0 else None
    out = cp.mlstm(mine["q"], mine["k"], mine["v"], mine["igate"], mine["fgate"], initial, input_gate=input_gate,
                   chunk_size=4)
    last_rank = rank == world - 1
    loss = (out.h * x["w_h"][:, :, part]).sum()
    if last_rank:
        loss = loss + (out.last.C * x["w_C"]).sum() + (out.last.n * x["w_n"]).sum() + (out.last.m * x["w_m"]).sum()
    loss.backward()
    result = {"h": out.h.detach(), **{"d" + name: t.grad for name, t in mine.items()}}
    if last_rank:
        result.update(C=out.last.C.detach(), n=out.last.n.detach(), m=out.last.m.detach())
    if initial is not None:
        result.update(dC0=initial[0].grad, dn0=initial[1].grad, dm0=initial[2].grad)
    torch.save(result, os.path.join(folder, f"rank{rank}.pt"))
    dist.destroy_process_group()


def single_process(splits, input_gate, seed):
    x = problem(sum(splits), seed)
    leaves = {name: x[name].clone().requires_grad_() for name in ("q", "k", "v", "igate", "fgate", "C0", "n0", "m0")}
    out = ft.mlstm(leaves["q"], leaves["k"], leaves["v"], leaves["igate"], leaves["fgate"],
                   (leaves["C0"], leaves["n0"], leaves["m0"]), form="recurrent", input_gate=input_gate)
    loss = ((out.h * x["w_h"]).sum() + (out.last.C * x["w_C"]).sum() + (out.last.n * x["w_n"]).sum()
            + (out.last.m * x["w_m"]).sum())
    loss.backward()
    return out, {name: t.grad for name, t in leaves.items()}


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("splits", [[9, 20], [13, 1, 23]], ids=["2 ranks", "3 ranks"])
@pytest.mark.parametrize("input_gate", ["exp", "sig"])
def test_context_parallel_equals_one_process(splits, input_gate, tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    seed = 11
    mp.spawn(worker, args=(len(splits), splits, input_gate, seed, str(tmp_path)), nprocs=len(splits), join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(len(splits))]
    out, grads = single_process(splits, input_gate, seed)
    cat = lambda key: torch.cat([r[key] for r in ranks], dim=2)  # noqa: E731
    assert rel(cat("h"), out.h.detach()) < 1e-10
    for name in ("q", "k", "v", "igate", "fgate"):
        assert rel(cat("d" + name), grads[name]) < 1e-10, name
    for name, ref in (("C", out.last.C), ("n", out.last.n), ("m", out.last.m)):
        assert rel(ranks[-1][name], ref.detach()) < 1e-10, name
    for name in ("C0", "n0", "m0"):
        assert rel(ranks[0]["d" + name], grads[name]) < 1e-10, name
