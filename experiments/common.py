"""What the experiment scripts share: the learning-rate schedule, the results folder (JSON, plot,
table) and the learning-curve plot."""

import json
import math
import os
import subprocess
import time

import torch


def warmup_cosine(opt, steps, warmup_fraction=0.05):
    """Linear warm-up over the first `warmup_fraction` of the steps, then a cosine decay to zero."""
    warmup = max(int(steps * warmup_fraction), 1)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))


def plot_curves(results, metrics, path):
    """One panel per (task, metric): each run's curve of `metric` against the epoch, coloured by
    model. False where matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    tasks = list(dict.fromkeys(r["task"] for r in results))
    models = list(dict.fromkeys(r["model"] for r in results))
    fig, axes = plt.subplots(len(metrics), len(tasks), figsize=(4 * len(tasks), 3 * len(metrics)), squeeze=False)
    for row, metric in zip(axes, metrics):
        for ax, task in zip(row, tasks):
            for r in (r for r in results if r["task"] == task):
                ax.plot([c["epoch"] for c in r["curve"]], [c[metric] for c in r["curve"]],
                        color=f"C{models.index(r['model'])}", alpha=0.7, label=r["model"] if r["seed"] == 0 else None)
            ax.set_title(task)
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric.replace("_", " "))
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def save(out, args, results, table, metrics, started):
    """results.json (arguments, revision, device, torch, wall time, every run), curves.png and table.md
    in `out`."""
    os.makedirs(out, exist_ok=True)
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    with open(os.path.join(out, "results.json"), "w") as f:
        device = torch.cuda.get_device_name() if str(args.device).startswith("cuda") else "cpu"
        json.dump(dict(arguments=vars(args), revision=revision, device=device, torch=torch.__version__,
                       seconds=time.perf_counter() - started, results=results), f, indent=1)
    plot_curves(results, metrics, os.path.join(out, "curves.png"))
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table + "\n")
