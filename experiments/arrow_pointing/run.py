"""Arrow-pointing extrapolation: a small pLSTM vision model and a ViT of the same size, trained on
generated 192 x 192 images (the generator's train split) and tested on the test split at 192 x 192
and on the extrapolation split at 384 x 384 (same object sizes, objects farther apart). One command
trains both models per seed under the same budget and writes the learning curves (JSON, and a plot
where matplotlib is installed) and an accuracy table, printed last:

    PYTHONPATH=build/python python3 experiments/arrow_pointing/run.py --out experiments/results/arrow_pointing

Both models cut the image into 16 x 16 patches (a linear patch embedding), add a learnable positional
embedding (resized bicubically to the 24 x 24 patches of a 384 image), run `depth` pre-norm blocks of
a mixing layer and an MLP (4 x dim, GELU), and classify from the final norm's patches:
- pLSTM: the mixing layers are flashlstm.torch.nn.pLSTM2D, alternating P-mode and D-mode; the
  classifier reads the four corner patches (where the four orientations' states end), as the pLSTM
  authors' vision model does.
- ViT: the mixing layers are multi-head self-attention (torch's scaled_dot_product_attention); the
  classifier reads the mean over the patches.
The images are generated once (uint8) and standardised per batch with the train split's pixel mean
and standard deviation (they are white with small black objects: scaled to [0, 1] nearly every pixel
is 1, and the objects would be a small change on top of the background).
"""

import argparse
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

from flashlstm.datasets import arrows
from flashlstm.torch import nn as fnn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import save, warmup_cosine  # noqa: E402


class PatchEmbed(nn.Module):
    """Images (B, C, H, W) -> patches (B, H/p, W/p, dim), plus a learnable positional embedding for a
    `grid` of patches, resized bicubically to other grids."""

    def __init__(self, channels, dim, patch, grid):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.randn(1, dim, grid, grid) / (2.5 * dim) ** 0.5)

    def forward(self, images):
        x = self.proj(images)
        pos = self.pos
        if pos.shape[-2:] != x.shape[-2:]:
            pos = nn.functional.interpolate(pos, size=x.shape[-2:], mode="bicubic", align_corners=False)
        return (x + pos).permute(0, 2, 3, 1)


class Attention(nn.Module):
    """Multi-head self-attention over all patches: x (B, X, Y, dim) -> (B, X, Y, dim)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        B, X, Y, dim = x.shape
        q, k, v = self.qkv(x.reshape(B, X * Y, dim)).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        h = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(h.transpose(1, 2).reshape(B, X, Y, dim))


class Model(nn.Module):
    def __init__(self, kind, channels, dim, heads, depth, patch=16, image=192):
        super().__init__()
        self.kind = kind
        self.embed = PatchEmbed(channels, dim, patch, image // patch)
        if kind == "pLSTM":
            mixers = [fnn.pLSTM2D(dim, heads, mode="PD"[i % 2]) for i in range(depth)]
        else:
            mixers = [Attention(dim, heads) for _ in range(depth)]
        self.mix = nn.ModuleList(mixers)
        self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
                                 for _ in range(depth))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2 * depth + 1))
        self.head = nn.Linear(4 * dim if kind == "pLSTM" else dim, 2)

    def forward(self, images):
        x = self.embed(images)
        for i, (mix, mlp) in enumerate(zip(self.mix, self.mlp)):
            x = x + mix(self.norms[2 * i](x))
            x = x + mlp(self.norms[2 * i + 1](x))
        x = self.norms[-1](x)
        if self.kind == "pLSTM":
            x = torch.cat([x[:, 0, 0], x[:, -1, 0], x[:, 0, -1], x[:, -1, -1]], dim=-1)
        else:
            x = x.mean(dim=(1, 2))
        return self.head(x)


def split(name, count, args):
    params = arrows.make_params(name, train_seed=args.data_seed)
    images, labels = arrows.generate(params, 0, count)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def pixel_statistics(images):
    """The mean and standard deviation of the pixels (uint8) of a split, in units of 255."""
    counts = np.bincount(images.numpy().reshape(-1), minlength=256).astype(np.float64)
    values = np.arange(256) / 255.0
    mean = (counts * values).sum() / counts.sum()
    return mean, math.sqrt((counts * (values - mean) ** 2).sum() / counts.sum())


def batches(images, labels, size, device, order=None, pixels=(0.0, 1.0)):
    order = torch.arange(len(labels)) if order is None else order
    mean, std = pixels
    for i in range(0, len(order), size):
        idx = order[i:i + size]
        x = (images[idx].to(device).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        yield x, labels[idx].to(device)


def accuracy(model, images, labels, pixels, args, device):
    model.eval()
    right = 0
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for x, y in batches(images, labels, args.batch, device, pixels=pixels):
            right += (model(x).argmax(-1) == y).sum().item()
    return right / len(labels)


def train(kind, data, args, seed, device):
    torch.manual_seed(seed)
    train_images, train_labels = data["train"]
    model = Model(kind, train_images.shape[-1], args.dim, args.heads, args.depth).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = warmup_cosine(opt, args.epochs * -(-len(train_labels) // args.batch))
    g = torch.Generator().manual_seed(seed)
    curve = []
    for epoch in range(args.epochs):
        model.train()
        start, losses = time.perf_counter(), []
        for x, y in batches(train_images, train_labels, args.batch, device, torch.randperm(len(train_labels), generator=g),
                            data["pixels"]):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = nn.functional.cross_entropy(model(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        curve.append(dict(epoch=epoch + 1, loss=statistics.fmean(losses), seconds=seconds,
                          test_accuracy=accuracy(model, *data["test"], data["pixels"], args, device),
                          extrapolation_accuracy=accuracy(model, *data["test_ext"], data["pixels"], args, device)))
    return model, curve


def table(results):
    lines = ["| model | parameters | test @ 192 | extrapolation @ 384 | s / epoch |", "|---|---|---|---|---|"]
    for name in dict.fromkeys(r["model"] for r in results):
        rows = [r for r in results if r["model"] == name]
        cell = lambda key: (f"{statistics.fmean(r[key] for r in rows):.3f} ± "  # noqa: E731
                            f"{statistics.stdev(r[key] for r in rows) if len(rows) > 1 else 0.0:.3f}")
        sec = statistics.fmean(c["seconds"] for r in rows for c in r["curve"])
        lines.append(f"| {name} | {rows[0]['parameters']} | {cell('test_accuracy')} | "
                     f"{cell('extrapolation_accuracy')} | {sec:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=100000, help="the first N of the train split")
    parser.add_argument("--test-images", type=int, default=2048, help="the first N of test and of test_ext")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["pLSTM", "ViT"], choices=["pLSTM", "ViT"])
    parser.add_argument("--dim", type=int, default=192, help="ViT-T: 192")
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--data-seed", type=int, default=42)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="", help="a folder for results.json, curves.png and table.md")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    start = time.perf_counter()
    data = {"train": split("train", args.train_images, args), "test": split("test", args.test_images, args),
            "test_ext": split("test_ext", args.test_images, args)}
    data["pixels"] = pixel_statistics(data["train"][0])
    results = []
    for seed in range(args.seeds):
        for kind in args.models:
            model, curve = train(kind, data, args, seed, device)
            last = curve[-1]
            results.append(dict(task="arrow pointing", model=kind, seed=seed,
                                parameters=sum(p.numel() for p in model.parameters()), curve=curve,
                                test_accuracy=last["test_accuracy"], extrapolation_accuracy=last["extrapolation_accuracy"]))
            print(f"{kind:>5} seed {seed}: test {last['test_accuracy']:.3f}, extrapolation "
                  f"{last['extrapolation_accuracy']:.3f}, loss {curve[0]['loss']:.3f} -> {last['loss']:.3f}, "
                  f"{statistics.fmean(c['seconds'] for c in curve):.1f} s/epoch", flush=True)
    text = table(results)
    if args.out:
        save(args.out, args, results, text, ["test_accuracy", "extrapolation_accuracy", "loss"], start)
    print(text)
    return results


if __name__ == "__main__":
    main()
