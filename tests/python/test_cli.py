"""The flashlstm tool's failures (FLASHLSTM_BIN, set by ctest): every bad command line, bad value,
size that cannot fit, library error and file that cannot be written ends with one line
`error: <message>` on stderr and exit code 2, never a crash; and `flashlstm data arrows` never
leaves a folder looking complete (meta.json) when it is not."""

import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

BIN = os.path.abspath(os.environ["FLASHLSTM_BIN"]) if os.environ.get("FLASHLSTM_BIN") else None
pytestmark = pytest.mark.skipif(not BIN, reason="FLASHLSTM_BIN (the flashlstm tool) is not set; ctest sets it")

GRAPHS = Path(__file__).resolve().parents[2] / "examples" / "graphs"
DIAMOND = str(GRAPHS / "diamond.edges")
# A full device (writes fail with ENOSPC); only when it is one, so that nothing ever replaces it.
HAS_DEV_FULL = os.path.exists("/dev/full") and stat.S_ISCHR(os.stat("/dev/full").st_mode)
needs_dev_full = pytest.mark.skipif(not HAS_DEV_FULL, reason="no /dev/full device")
SMALL = ["--size", "64", "--padding", "10", "--radius-min", "5", "--radius-max", "8", "--length-min", "8",
         "--length-max", "12"]


def run(args, cwd, stdout=subprocess.PIPE):
    return subprocess.run([BIN, *args], cwd=cwd, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120)


def assert_one_error(result, expected):
    """Exit code 2; stderr ends with the one line `error: ...` (a progress bar may come before it)."""
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-2000:]
    assert expected in errors[0], errors[0]


FAILURES = {
    # the command line: CLI11's own errors
    "no subcommand": ([], "A subcommand is required"),
    "unknown subcommand": (["train"], "subcommand"),
    "unknown option": (["plstm", "--graph", DIAMOND, "--bogus"], "--bogus"),
    "missing option": (["plstm"], "--graph is required"),
    "option without the one it needs": (["plstm", "--graph", DIAMOND, "--order", "bfs"], "--undirected"),
    "not a number": (["plstm", "--graph", DIAMOND, "--heads", "two"], "--heads"),
    "dqk 1e9": (["plstm", "--graph", DIAMOND, "--dqk", "1e9"], "--dqk"),
    "n 1e8": (["data", "molecules", "--n", "1e8", "--out", "m"], "--n"),
    # values the library refuses
    "cycle": (["plstm", "--graph", str(GRAPHS / "cycle.edges")], "edges: the graph has a cycle"),
    "bad split": (["data", "arrows", "--split", "training", "--out", "a"], "split:"),
    "negative n": (["data", "molecules", "--n", "-3", "--out", "m"], "n: must be >= 0"),
    # sizes that cannot fit, refused before allocating
    "heads 2^31": (["plstm", "--graph", DIAMOND, "--heads", "2147483648"], "heads: expected in [1, 65536]"),
    "dqk 1e9 as an integer": (["plstm", "--graph", DIAMOND, "--dqk", "1000000000"], "dqk: expected in [1, 65536]"),
    "dv 1e9": (["plstm", "--graph", DIAMOND, "--dv", "1000000000"], "dv: expected in [1, 65536]"),
    "states beyond memory": (["plstm", "--graph", DIAMOND, "--dqk", "65536", "--dv", "65536"], "GiB"),
    "heads beyond memory": (["plstm", "--graph", DIAMOND, "--heads", "65536", "--dqk", "4096"], "GiB"),
    "molecules 1e8": (["data", "molecules", "--n", "100000000", "--out", "m"], "n: 100000000 molecules"),
    "arrows beyond the disk": (["data", "arrows", "--split", "custom", "--n", "9223372036854775807", "--out", "a"],
                               "GiB free"),
    "molecule threads": (["data", "molecules", "--n", "10", "--threads", "65536", "--out", "m"], "threads: must be"),
    "arrow threads": (["data", "arrows", "--split", "custom", "--n", "10", "--threads", "65536", "--out", "a"],
                      "threads: must be"),
    # files that cannot be written: a parent that is a regular file (ENOTDIR), a full device (ENOSPC)
    "validate json": (["validate", "--json", "file/v.json"], "json: cannot open 'file/v.json': Not a directory"),
    "arrows out": (["data", "arrows", "--split", "custom", "--n", "2", "--out", "file/a"], "out: cannot create"),
    "molecules out": (["data", "molecules", "--n", "2", "--out", "file/m"], "cannot create the folder"),
    "sheet": (["data", "arrows", "--split", "custom", "--n", "2", "--out", "a", "--sheet", "/dev/full"],
              "path: cannot write '/dev/full': No space left on device"),
    "graph file": (["plstm", "--graph", "missing.edges"], "missing.edges"),
}


@pytest.mark.parametrize("name", FAILURES)
def test_every_failure_is_one_error_line_and_exit_code_2(name, tmp_path):
    args, expected = FAILURES[name]
    if "/dev/full" in args and not HAS_DEV_FULL:
        pytest.skip("no /dev/full device")
    (tmp_path / "file").write_text("a regular file")
    assert_one_error(run(args, tmp_path), expected)


@needs_dev_full
def test_a_full_disk_is_an_error(tmp_path):
    (tmp_path / "m").mkdir()
    os.symlink("/dev/full", tmp_path / "m" / "FLASHLSTM_MOLS.smi")
    assert_one_error(run(["data", "molecules", "--n", "20", "--format", "smiles", "--out", "m"], tmp_path),
                     "file: cannot write 'm/FLASHLSTM_MOLS.smi': No space left on device")
    with open("/dev/full", "w") as full:  # standard output itself
        result = run(["plstm", "--graph", DIAMOND], tmp_path, stdout=full)
    assert result.returncode == 2 and result.stderr.splitlines()[-1] == "error: cannot write to standard output"


def test_help_exits_0(tmp_path):
    for args in (["--help"], ["plstm", "--help"], ["data", "arrows", "--help"]):
        result = run(args, tmp_path)
        assert result.returncode == 0 and "Usage:" in result.stdout and result.stderr == ""


def arrow_files(folder):
    return sorted(os.listdir(folder))


@needs_dev_full
def test_a_failed_rerun_leaves_no_meta_json_and_the_old_arrays(tmp_path):
    out = tmp_path / "ape"
    first = run(["data", "arrows", "--split", "custom", "--n", "8", "--seed", "1", *SMALL, "--out", str(out)],
                tmp_path)
    assert first.returncode == 0 and arrow_files(out) == ["images.npy", "labels.npy", "meta.json"]
    old_images = np.load(out / "images.npy")
    # The last file closed (labels.npy) hits a full disk: the stale meta.json is gone, neither array is
    # replaced, and no temporary file is left.
    os.remove(out / "labels.npy")
    os.symlink("/dev/full", out / "labels.npy")
    rerun = run(["data", "arrows", "--split", "custom", "--n", "16", "--seed", "2", *SMALL, "--out", str(out)],
                tmp_path)
    assert_one_error(rerun, f"out: cannot write '{out}/labels.npy': No space left on device")
    assert arrow_files(out) == ["images.npy", "labels.npy"]
    assert np.array_equal(np.load(out / "images.npy"), old_images)


def test_an_interrupted_rerun_leaves_no_meta_json(tmp_path):
    out = tmp_path / "ape"
    assert run(["data", "arrows", "--split", "custom", "--n", "8", *SMALL, "--out", str(out)], tmp_path).returncode == 0
    old_images = np.load(out / "images.npy")
    # A long re-run killed while its arrays are half written: meta.json went before the first byte,
    # the arrays under their names are the old ones, only the temporary files are new.
    process = subprocess.Popen([BIN, "data", "arrows", "--split", "custom", "--n", "2000000", *SMALL, "--out",
                                str(out)], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(".partial-" in name for name in os.listdir(out)) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    names = arrow_files(out)
    assert "meta.json" not in names and "images.npy" in names and "labels.npy" in names, names
    assert all(name in ("images.npy", "labels.npy") or ".partial-" in name for name in names), names
    assert np.array_equal(np.load(out / "images.npy"), old_images)


def test_validate_json_is_written_whole(tmp_path):
    result = run(["validate", "--json", "v.json"], tmp_path)
    assert result.returncode == 0 and os.listdir(tmp_path) == ["v.json"]
    assert (tmp_path / "v.json").read_text().endswith("]\n")
