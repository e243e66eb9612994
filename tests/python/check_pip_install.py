"""`pip install .` into a fresh virtual environment, then `import flashlstm` there and run one form
of each recurrence: the check that the package installs from the repository root (run by ctest as
python.pip_install). The build is the module only, Release, without CUDA, on two jobs; its folder is
kept under --work so that a rerun is incremental. Prints the time each step took."""

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SMOKE = """
import numpy as np, flashlstm
from flashlstm import mlstm, plstm, graph
r = np.random.default_rng(0)
q, k, v = (r.standard_normal((1, 2, 9, 4)) for _ in range(3))
i, f = (r.standard_normal((1, 2, 9)) for _ in range(2))
a = mlstm.forward_recurrent(q, k, v, i, f).h
b = mlstm.forward_chunkwise(q, k, v, i, f, chunk_size=4).h
assert np.abs(a - b).max() < 1e-12
dag = graph.Dag(3, [(0, 1), (1, 2)])
q3, k3, v3 = (a[:, :, :3] for a in (q, k, v))
h = plstm.dag_forward(dag, q3, k3, v3, np.ones((1, 2, 2)), np.ones((1, 2, 1)),
                      np.ones((1, 2, 2)), np.ones((1, 2, 3)))
assert h.shape == (1, 2, 3, 4)
print("import flashlstm", flashlstm.__version__, "from", flashlstm.__file__)
"""


def run(cmd, **kwargs):
    start = time.time()
    subprocess.run(cmd, check=True, **kwargs)
    return time.time() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True, help="the repository root")
    parser.add_argument("--work", required=True, help="a folder for the venv and the build")
    args = parser.parse_args()
    work = Path(args.work)
    venv = work / "venv"
    shutil.rmtree(venv, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL="2", PIP_DISABLE_PIP_VERSION_CHECK="1")
    t_venv = run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    t_pip = run([str(python), "-m", "pip", "install", "-q", args.source, f"--config-settings=build-dir={work / 'build'}",
                 "--config-settings=cmake.define.FLASHLSTM_CUDA=OFF"], env=env)
    # From a folder without the sources, so that the installed package is what gets imported.
    t_import = run([str(python), "-c", SMOKE], cwd=str(work))
    print(f"venv {t_venv:.1f} s, pip install {t_pip:.1f} s, import and smoke test {t_import:.1f} s")


if __name__ == "__main__":
    main()
