#!/usr/bin/env bash
# Installs what flashlstm needs to build and test, on a fresh Debian machine. Idempotent: packages
# already present are not reinstalled. Used by both README commands and by .ci/run.
set -euo pipefail

debian_packages=(
  build-essential cmake ninja-build pkg-config
  libeigen3-dev libboost-dev libboost-graph-dev libomp-dev
  catch2 libxtensor-dev xtl-dev libcli11-dev nlohmann-json3-dev libfmt-dev
  libbenchmark-dev libstb-dev libpng-dev
  python3-dev python3-venv python3-pip ccache
  clang libclang-rt-dev
)

missing=()
for p in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Python packages: pybind11 (>= 2.12, from PyPI: Debian's 2.10 breaks with numpy 2) and
# scikit-build-core build the module (FLASHLSTM_PYTHON, `pip install .`); numpy and pytest test it,
# RDKit checks the generated molecules, networkx converts graphs, nbclient/ipykernel/matplotlib run
# the notebooks, torch tests flashlstm.torch's ops on the CPU (PyPI's build, with its CUDA libraries:
# about 3 GB, a minute to install; the library itself does not need torch), torch_geometric reads the
# generated TU dataset files back (pure Python). PIP_BREAK_SYSTEM_PACKAGES
# lets pip install into Debian's own python3 too.
python_packages=("pybind11>=2.12" scikit-build-core numpy pytest rdkit networkx nbclient nbformat ipykernel matplotlib
  torch torch_geometric)
if ! python3 - 2>/dev/null <<'PY'
import importlib.metadata as m, pytest, numpy, rdkit, networkx, nbclient, nbformat, ipykernel, matplotlib, scikit_build_core, torch, torch_geometric
assert tuple(int(x) for x in m.version("pybind11").split(".")[:2]) >= (2, 12)
PY
then
  echo "setup: installing ${python_packages[*]} for $(python3 --version)"
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q "${python_packages[@]}"
fi
