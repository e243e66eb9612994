"""pLSTM on molecular graphs against a GIN baseline, on the molecule generator's tasks that need
long-range structure ("distance": are the nitro and amino groups at least `distance` bonds apart;
"substitution"; "ring_parity"). One command trains both models per task and seed on the same
molecules and split, and writes the learning curves (JSON, and a plot where matplotlib is
installed) and an accuracy table, printed last:

    PYTHONPATH=build/python python3 experiments/molecules/run.py --out experiments/results/molecules

Models, of about the same size: an atom encoder (one-hot element, aromatic flag, hydrogens) into
`dim` channels, then `layers` blocks, mean pooling per graph and a two-layer classifier.
- pLSTM: blocks x + pLSTMGraph(norm(x)) then x + MLP(norm(x)), alternating P-mode and D-mode layers,
  every other one on the reversed DAG (bonds point from the lower atom id to the higher one).
- GIN: blocks x + MLP((1 + eps) x + sum of the neighbours' x) (plain torch, no torch_geometric).
The molecules of a mini-batch are joined into one graph (atom ids offset molecule by molecule);
mini-batches keep their molecules across epochs (their order is shuffled), so each pLSTM layer
prepares a batch's graph once. With --tu-dataset the molecules are written as TU dataset files and
read back through torch_geometric's TUDataset (as a user with TU data would load it); the atom
features are then the TU node labels only.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn

from flashlstm.datasets import molecules
from flashlstm.torch import nn as fnn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import save, warmup_cosine  # noqa: E402

TASKS = ("distance", "substitution", "ring_parity")


def featurize(m):
    """Per atom: one-hot element (8), aromatic, hydrogens / 4."""
    x = np.zeros((m.num_atoms, len(molecules.ELEMENTS) + 2), dtype=np.float32)
    x[np.arange(m.num_atoms), m.node_labels] = 1.0
    x[:, -2] = m.aromatic
    x[:, -1] = np.asarray(m.hydrogens, dtype=np.float32) / 4.0
    return x


def graphs(mols):
    """Per molecule: (atom features, bonds (E, 2), label)."""
    return [(featurize(m), m.edges, m.label) for m in mols]


def graphs_from_tu(mols, root, name):
    """The same molecules written in the TU dataset format and read back through torch_geometric's
    TUDataset: atom features are its one-hot node labels (the element only: the TU files carry no
    aromatic flag or hydrogens), bonds its edge_index (each bond once)."""
    from torch_geometric.datasets import TUDataset
    molecules.write_tu(root, name, mols)
    out = []
    for d in TUDataset(root=root, name=name):
        e = d.edge_index.t().numpy()
        out.append((d.x.numpy().astype(np.float32), e[e[:, 0] < e[:, 1]], int(d.y)))
    return out


def batches(items, size, device):
    """Fixed mini-batches of (features, bonds, label) items: (atom features, bonds with offset ids,
    graph id per atom, labels)."""
    out = []
    for i in range(0, len(items), size):
        part = items[i:i + size]
        atoms = [len(x) for x, _, _ in part]
        offsets = np.cumsum([0] + atoms)
        x = torch.from_numpy(np.concatenate([x for x, _, _ in part]))
        edges = torch.from_numpy(np.concatenate([e + o for (_, e, _), o in zip(part, offsets)]).astype(np.int64))
        graph = torch.repeat_interleave(torch.arange(len(part)), torch.tensor(atoms))
        y = torch.tensor([label for _, _, label in part])
        out.append(tuple(t.to(device) for t in (x, edges, graph, y)))
    return out


def mlp(dim, hidden):
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class PlstmModel(nn.Module):
    def __init__(self, features, dim, layers, heads):
        super().__init__()
        self.encode = nn.Linear(features, dim)
        self.mix = nn.ModuleList(fnn.pLSTMGraph(dim, heads, mode="PD"[i % 2], reverse=(i // 2) % 2 == 1)
                                 for i in range(layers))
        self.ffn = nn.ModuleList(mlp(dim, 2 * dim) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2 * layers))
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 2))

    def forward(self, x, edges, graph, count):
        x = self.encode(x)
        for i, (mix, ffn) in enumerate(zip(self.mix, self.ffn)):
            x = x + mix(self.norms[2 * i](x), edges)
            x = x + ffn(self.norms[2 * i + 1](x))
        return self.head(pool(x, graph, count))


class GinModel(nn.Module):
    def __init__(self, features, dim, layers):
        super().__init__()
        self.encode = nn.Linear(features, dim)
        self.eps = nn.Parameter(torch.zeros(layers))
        self.mlps = nn.ModuleList(mlp(dim, 4 * dim) for _ in range(layers))  # as many weights as a pLSTM block
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 2))

    def forward(self, x, edges, graph, count):
        x = self.encode(x)
        src, dst = torch.cat([edges[:, 0], edges[:, 1]]), torch.cat([edges[:, 1], edges[:, 0]])
        for i, (f, norm) in enumerate(zip(self.mlps, self.norms)):
            h = norm(x)
            neighbours = torch.zeros_like(h).index_add_(0, dst, h[src])
            x = x + f((1 + self.eps[i]) * h + neighbours)
        return self.head(pool(x, graph, count))


def pool(x, graph, count):
    """The mean over each graph's atoms."""
    total = torch.zeros(count, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, graph, x)
    atoms = torch.zeros(count, dtype=x.dtype, device=x.device).index_add_(0, graph, torch.ones_like(graph, dtype=x.dtype))
    return total / atoms[:, None]


def accuracy(model, data):
    model.eval()
    right = total = 0
    with torch.no_grad():
        for x, edges, graph, y in data:
            right += (model(x, edges, graph, len(y)).argmax(-1) == y).sum().item()
            total += len(y)
    return right / total


def train(model, train_data, test_data, epochs, lr, seed):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = warmup_cosine(opt, epochs * len(train_data))
    curve = []
    for epoch in range(epochs):
        model.train()
        start, losses = time.perf_counter(), []
        for i in torch.randperm(len(train_data), generator=g).tolist():
            x, edges, graph, y = train_data[i]
            loss = nn.functional.cross_entropy(model(x, edges, graph, len(y)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        seconds = time.perf_counter() - start
        curve.append(dict(epoch=epoch + 1, loss=statistics.fmean(losses), seconds=seconds,
                          test_accuracy=accuracy(model, test_data)))
    return curve


def run(args, progress=None):
    """Every (task, seed, model) run; progress(results) after each one."""
    device = torch.device(args.device)
    results = []
    for task in args.tasks:
        params = molecules.make_params(task=task, seed=args.data_seed)
        mols = molecules.generate(params, 0, args.molecules)
        if args.tu_dataset:
            with tempfile.TemporaryDirectory() as root:
                data = graphs_from_tu(mols, root, f"FLASHLSTM_{task.upper()}")
        else:
            data = graphs(mols)
        split = int(0.8 * len(data))
        train_data = batches(data[:split], args.batch, device)
        test_data = batches(data[split:], args.batch, device)
        features = data[0][0].shape[1]
        for seed in range(args.seeds):
            for name in ("pLSTM", "GIN"):
                torch.manual_seed(seed)
                model = (PlstmModel(features, args.dim, args.layers, args.heads) if name == "pLSTM" else
                         GinModel(features, args.dim, args.layers)).to(device)
                curve = train(model, train_data, test_data, args.epochs, args.lr, seed)
                results.append(dict(task=task, model=name, seed=seed, parameters=sum(p.numel() for p in model.parameters()),
                                    curve=curve, test_accuracy=curve[-1]["test_accuracy"]))
                if progress:
                    progress(results)
                print(f"{task:>13} {name:>5} seed {seed}: test accuracy {curve[-1]['test_accuracy']:.3f}, "
                      f"loss {curve[0]['loss']:.3f} -> {curve[-1]['loss']:.3f}, "
                      f"{statistics.fmean(c['seconds'] for c in curve):.1f} s/epoch", flush=True)
    return results


def table(results):
    lines = ["| task | model | parameters | test accuracy (mean ± std over seeds) | s / epoch |", "|---|---|---|---|---|"]
    for task in dict.fromkeys(r["task"] for r in results):
        for name in ("pLSTM", "GIN"):
            rows = [r for r in results if r["task"] == task and r["model"] == name]
            if not rows:
                continue
            acc = [r["test_accuracy"] for r in rows]
            spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
            sec = statistics.fmean(c["seconds"] for r in rows for c in r["curve"])
            lines.append(f"| {task} | {name} | {rows[0]['parameters']} | {statistics.fmean(acc):.3f} ± {spread:.3f} | {sec:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--molecules", type=int, default=2000, help="per task; 80 %% train, 20 %% test")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--data-seed", type=int, default=42)
    parser.add_argument("--tu-dataset", action="store_true",
                        help="read the molecules back through torch_geometric's TUDataset from TU files (needs torch_geometric)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="", help="a folder for results.json, curves.png and table.md")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    write = lambda results: save(args.out, args, results, table(results), ["test_accuracy", "loss"], start)  # noqa: E731
    results = run(args, write if args.out else None)  # the results folder grows run by run
    print(table(results))
    return results


if __name__ == "__main__":
    main()
