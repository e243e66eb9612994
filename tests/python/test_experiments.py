"""The experiments at toy size on the CPU: they run end to end, every number is finite, the same seed
gives the same numbers, and each model fits a batch it trains on (its loss falls well below chance).
Skipped where torch is not installed."""

import importlib.util
import math
import pathlib

import numpy as np
import pytest

pytest.importorskip("flashlstm")
pytest.importorskip("torch")

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load(relative):
    spec = importlib.util.spec_from_file_location(pathlib.Path(relative).stem, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_molecules_experiment_trains_and_repeats(tmp_path):
    run = load("experiments/molecules/run.py")
    args = ["--tasks", "distance", "--molecules", "120", "--epochs", "6", "--seeds", "1", "--dim", "16",
            "--layers", "2", "--heads", "2", "--batch", "16", "--device", "cpu", "--out", str(tmp_path)]
    first = run.main(args)
    assert {r["model"] for r in first} == {"pLSTM", "GIN"}
    for r in first:
        losses = [c["loss"] for c in r["curve"]]
        assert all(math.isfinite(x) for x in losses) and 0.0 <= r["test_accuracy"] <= 1.0
    assert (tmp_path / "results.json").exists() and (tmp_path / "table.md").read_text().startswith("| task |")
    again = run.main(args[:-2])
    for a, b in zip(first, again):
        assert [c["loss"] for c in a["curve"]] == [c["loss"] for c in b["curve"]]
        assert a["test_accuracy"] == b["test_accuracy"]


def test_molecules_read_through_tudataset_are_the_same_graphs(tmp_path):
    """The TU files read back through torch_geometric's TUDataset give every molecule's bonds, label
    and element, and the experiment trains on them."""
    pytest.importorskip("torch_geometric.datasets", reason="torch_geometric is not installed")
    from flashlstm.datasets import molecules
    run = load("experiments/molecules/run.py")
    mols = molecules.generate(molecules.make_params(task="ring_parity", seed=3), 0, 30)
    direct, tu = run.graphs(mols), run.graphs_from_tu(mols, tmp_path, "M")
    assert len(tu) == len(direct)
    for m, (x, edges, label), (_, tu_edges, tu_label) in zip(mols, direct, tu):
        assert sorted(map(tuple, np.sort(edges, axis=1))) == sorted(map(tuple, tu_edges))
        assert tu_label == label
    elements = np.concatenate([m.node_labels for m in mols])
    tu_elements = np.concatenate([x.argmax(1) for x, _, _ in tu])
    assert (tu_elements == elements - elements.min()).all()
    results = run.main(["--tasks", "ring_parity", "--molecules", "40", "--epochs", "1", "--seeds", "1", "--dim", "8",
                        "--layers", "2", "--heads", "2", "--device", "cpu", "--tu-dataset"])
    assert all(math.isfinite(r["curve"][0]["loss"]) for r in results)


def test_molecule_models_fit_a_batch():
    import torch
    from flashlstm.datasets import molecules
    run = load("experiments/molecules/run.py")
    data = run.batches(run.graphs(molecules.generate(molecules.make_params(task="distance", seed=1), 0, 16)), 16,
                       torch.device("cpu"))
    for make in (lambda: run.PlstmModel(10, 16, 2, 2), lambda: run.GinModel(10, 16, 2)):
        torch.manual_seed(0)
        model = make()
        curve = run.train(model, data, data, 40, 1e-2, 0)
        assert curve[-1]["loss"] < 0.6 * curve[0]["loss"], (type(model).__name__, [c["loss"] for c in curve])


def test_arrow_pointing_experiment_runs_and_repeats(tmp_path):
    run = load("experiments/arrow_pointing/run.py")
    args = ["--train-images", "32", "--test-images", "8", "--epochs", "1", "--dim", "8", "--heads", "2", "--depth", "2",
            "--batch", "16", "--device", "cpu"]
    first = run.main(args + ["--out", str(tmp_path)])
    assert [r["model"] for r in first] == ["pLSTM", "ViT"]
    for r in first:
        assert math.isfinite(r["curve"][0]["loss"]) and 0.0 <= r["extrapolation_accuracy"] <= 1.0
    assert (tmp_path / "results.json").exists()
    again = run.main(args)
    assert [r["curve"][0]["loss"] for r in first] == [r["curve"][0]["loss"] for r in again]


def test_vision_models_train():
    """Every parameter of both models gets a finite gradient that is not zero (the pLSTM's gate weights,
    zero at first, included), and each model fits a batch it trains on (images standardised as the
    script does; both sit on a plateau near ln 2 for the first 30 to 50 steps)."""
    import torch
    from flashlstm.datasets import arrows
    run = load("experiments/arrow_pointing/run.py")
    images, labels = arrows.generate(arrows.make_params("train"), 0, 16)
    (x, y), = run.batches(torch.from_numpy(images), torch.from_numpy(labels.astype("int64")), 16, torch.device("cpu"),
                          pixels=run.pixel_statistics(torch.from_numpy(images)))
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3
    for kind in ("pLSTM", "ViT"):
        torch.manual_seed(0)
        model = run.Model(kind, 1, 16, 2, 2)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        for name, p in model.named_parameters():
            assert torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, (kind, name)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        losses = []
        for _ in range(80):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert sum(losses[-10:]) / 10 < 0.6 * losses[0], (kind, losses)
