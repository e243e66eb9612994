#!/usr/bin/env bash
# Installs what flashlstm needs to build and test, on a fresh Debian machine. Idempotent: packages
# already present are not reinstalled. Used by both README commands and by .ci/run.
set -euo pipefail

debian_packages=(
  build-essential cmake ninja-build pkg-config
  libeigen3-dev libboost-dev libboost-graph-dev libomp-dev
  catch2 libxtensor-dev xtl-dev libcli11-dev nlohmann-json3-dev libfmt-dev
  libbenchmark-dev libstb-dev libpng-dev
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

# Python packages for the Python-side tests (RDKit checks the generated molecules).
python_packages=(pytest numpy rdkit)
if ! python3 -c "import pytest, numpy, rdkit" 2>/dev/null; then
  echo "setup: installing ${python_packages[*]} for $(python3 --version)"
  python3 -m pip install -q "${python_packages[@]}"
fi
