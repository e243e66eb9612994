"""flashlstm.datasets: arrow-pointing batches and molecules from Python equal what the C++ tool
writes (`flashlstm data`, FLASHLSTM_BIN set by ctest), are deterministic, convert to graphs, and
bad parameters raise ValueError naming the parameter."""

import os
import stat
import subprocess

import numpy as np
import pytest

fl = pytest.importorskip("flashlstm")
from flashlstm import graph  # noqa: E402
from flashlstm.datasets import arrows, molecules  # noqa: E402

BIN = os.environ.get("FLASHLSTM_BIN")
needs_tool = pytest.mark.skipif(not BIN, reason="FLASHLSTM_BIN (the flashlstm tool) is not set; ctest sets it")

SMALL = dict(size=64, padding=10, radius_min=5, radius_max=8, length_min=8, length_max=12)


def test_arrow_batch_is_uint8_numpy():
    params = arrows.make_params(**SMALL, seed=3)
    images, labels = arrows.generate(params, 0, 10)
    assert images.shape == (10, 64, 64, 1) and images.dtype == np.uint8 and labels.dtype == np.uint8
    assert set(np.unique(images)) <= {0, 255} and set(labels) <= {0, 1}
    # Sample i depends only on (seed, i): a later window repeats the same images.
    later, later_labels = arrows.generate(params, 4, 3, threads=1)
    assert np.array_equal(later, images[4:7]) and np.array_equal(later_labels, labels[4:7])
    assert arrows.sample_geometry(params, 5).label == labels[5]


@needs_tool
def test_arrow_batch_equals_the_tool(tmp_path):
    params = arrows.make_params("custom", **SMALL, seed=11, channels=3)
    images, labels = arrows.generate(params, 0, 12)
    subprocess.run([BIN, "data", "arrows", "--split", "custom", "--n", "12", "--seed", "11", "--channels", "3",
                    "--size", "64", "--padding", "10", "--radius-min", "5", "--radius-max", "8", "--length-min", "8",
                    "--length-max", "12", "--out", str(tmp_path)], check=True, capture_output=True)
    assert np.array_equal(np.load(tmp_path / "images.npy"), images)
    assert np.array_equal(np.load(tmp_path / "labels.npy"), labels)


def test_arrow_presets_and_errors(tmp_path):
    params, count = arrows.split_preset("val_ext")
    assert (params.size, count) == (384, 5120)
    assert arrows.make_params("test", size=256).size == 256
    with pytest.raises(ValueError, match="colour: not a parameter"):
        arrows.make_params(colour=3)
    with pytest.raises(ValueError, match="split"):
        arrows.split_preset("training")
    with pytest.raises(ValueError, match="size"):
        arrows.make_params(size=8)
    with pytest.raises(ValueError, match="count: must be >= 0"):
        arrows.generate(arrows.make_params(**SMALL), 0, -1)
    images, _ = arrows.generate(arrows.make_params(**SMALL), 0, 2)
    arrows.write_png(tmp_path / "a.png", images[0])
    arrows.write_contact_sheet(tmp_path / "sheet.png", arrows.make_params(**SMALL), 0, 4)
    assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "sheet.png").stat().st_size > 0


def test_molecules_as_graphs():
    params = molecules.make_params(seed=5, task="ring_parity")
    mols = molecules.generate(params, 0, 20)
    assert len(mols) == 20 and params.task == "ring_parity"
    m = mols[0]
    assert m.node_labels.shape == (m.num_atoms,) and m.edges.shape == (m.num_bonds, 2)
    assert m.rings == m.num_bonds - m.num_atoms + 1 and m.label == m.rings % 2
    assert molecules.generate_molecule(params, 7).smiles == mols[7].smiles
    dag = molecules.to_dag(m)
    assert isinstance(dag, graph.Dag) and dag.num_edges == m.num_bonds
    stats = molecules.summarize(mols)
    assert stats["count"] == 20 and sum(stats["elements"].values()) == sum(x.num_atoms for x in mols)
    nx = pytest.importorskip("networkx")
    g = molecules.to_networkx(m)
    assert isinstance(g, nx.Graph) and g.number_of_nodes() == m.num_atoms and g.graph["smiles"] == m.smiles


@needs_tool
def test_molecules_equal_the_tool(tmp_path):
    mols = molecules.generate(molecules.make_params(seed=9, task="distance"), 0, 40)
    subprocess.run([BIN, "data", "molecules", "--n", "40", "--seed", "9", "--task", "distance", "--format", "smiles",
                    "--out", str(tmp_path)], check=True, capture_output=True)
    lines = (tmp_path / "FLASHLSTM_MOLS.smi").read_text().split("\n")
    assert [line for line in lines if line] == [f"{m.smiles} {m.label}" for m in mols]


def test_molecule_writers_and_errors(tmp_path):
    params = molecules.make_params(seed=1, substituents={"nitro": 0.3})
    assert params.substituents.nitro == 0.3
    mols = molecules.generate(params, 0, 5)
    raw = molecules.write_tu(tmp_path, "M", mols)
    assert os.path.exists(os.path.join(raw, "M_A.txt"))
    molecules.write_smiles(tmp_path / "m.smi", mols)
    molecules.write_json(tmp_path / "m.json", "M", params, mols)
    with pytest.raises(ValueError, match="task"):
        molecules.make_params(task="toxicity")
    with pytest.raises(ValueError, match="min_atoms"):
        molecules.make_params(min_atoms=40)
    with pytest.raises(ValueError, match="substituents.nitrile: not a substituent"):
        molecules.make_params(substituents={"nitrile": 1.0})
    with pytest.raises(ValueError, match="n: not a parameter"):
        molecules.make_params(n=3)


def test_counts_indices_and_threads_that_cannot_work_raise(tmp_path):
    params = arrows.make_params(**SMALL)
    with pytest.raises(ValueError, match="threads: must be in"):
        arrows.generate(params, 0, 1, threads=65536)
    with pytest.raises(ValueError, match="threads: must be in"):
        molecules.generate(molecules.make_params(), 0, 1, threads=65536)
    with pytest.raises(ValueError, match="count: first \\+ count must be <="):
        arrows.generate(params, 2**63 - 2, 4)
    with pytest.raises(ValueError, match="count: .* needs .* GiB"):
        arrows.generate(params, 0, 2**50)
    with pytest.raises(ValueError, match="count: .* needs .* GiB"):
        molecules.generate(molecules.make_params(), 0, 2**50)
    with pytest.raises(ValueError, match="count: .* needs .* GiB"):
        arrows.write_contact_sheet(tmp_path / "sheet.png", params, 0, 2**40)


DEV_FULL = "/dev/full"  # a full device: writes fail with ENOSPC (only when it is one, so nothing replaces it)
needs_dev_full = pytest.mark.skipif(not (os.path.exists(DEV_FULL) and stat.S_ISCHR(os.stat(DEV_FULL).st_mode)),
                                    reason="no /dev/full device")


@needs_dev_full
def test_writers_report_a_full_disk_naming_the_file(tmp_path):
    params = molecules.make_params(seed=2)
    mols = molecules.generate(params, 0, 10)
    images, _ = arrows.generate(arrows.make_params(**SMALL), 0, 1)
    for write in (lambda: molecules.write_smiles(DEV_FULL, mols),
                  lambda: molecules.write_json(DEV_FULL, "M", params, mols),
                  lambda: arrows.write_png(DEV_FULL, images[0]),
                  lambda: arrows.write_contact_sheet(DEV_FULL, arrows.make_params(**SMALL), 0, 4)):
        with pytest.raises(ValueError, match="cannot write '/dev/full': No space left on device"):
            write()
    (tmp_path / "file").write_text("a regular file")
    with pytest.raises(ValueError, match="root: cannot create the folder"):
        molecules.write_tu(tmp_path / "file", "M", mols)
    assert os.listdir(tmp_path) == ["file"]


def test_long_dataset_calls_release_the_gil(tmp_path):
    """While a generator or writer runs in C++, another Python thread keeps running: the largest gap
    between its steps stays far below the call's duration."""
    import threading
    import time

    params = molecules.make_params(seed=4)
    mols = molecules.generate(params, 0, 30000)
    arrow_params = arrows.make_params(seed=4)
    calls = {
        "molecules.generate": lambda: molecules.generate(params, 0, 30000, threads=1),
        "molecules.write_json": lambda: molecules.write_json(tmp_path / "m.json", "M", params, mols),
        "molecules.write_tu": lambda: molecules.write_tu(tmp_path, "M", mols),
        "arrows.generate": lambda: arrows.generate(arrow_params, 0, 4000, threads=1),
        "arrows.write_contact_sheet": lambda: arrows.write_contact_sheet(tmp_path / "s.png", arrow_params, 0, 200),
    }
    for name, call in calls.items():
        stop, steps = threading.Event(), []

        def tick():
            while not stop.is_set():
                steps.append(time.perf_counter())

        ticker = threading.Thread(target=tick)
        ticker.start()
        time.sleep(0.02)
        start = time.perf_counter()
        call()
        duration = time.perf_counter() - start
        stop.set()
        ticker.join()
        during = [t for t in steps if start <= t <= start + duration]
        gaps = np.diff([start] + during + [start + duration])
        assert duration > 0.05, f"{name} took {duration:.3f} s, too short to tell"
        assert gaps.max() < duration / 2, f"{name}: another thread stood still {gaps.max():.3f} s of {duration:.3f} s"
