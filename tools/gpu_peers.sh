#!/usr/bin/env bash
# Runs on the GPU machine: the peers' kernels (bench/peers_h100.py; their wheels carried in .whl/,
# fetched on the development machine with pip download) and then ours at the same shape, in one
# session; our rows get the fastest peer of their variant beside them (bench_mlstm_cuda --peers).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
[ -d gpu ] || tar -xJf gpu.tar.xz || { echo "gpu_peers: no gpu/ and no gpu.tar.xz (run tools/gpu_build.sh, carry gpu.tar.xz)"; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site
python3 bench/peers_h100.py --json "$OUT/peers.json" --lengths 8192 2>&1 | tee "$OUT/peers.txt"
gpu/bench_mlstm_cuda --json "$OUT/h100.json" --peers "$OUT/peers.json" --revision "$(cat gpu/REVISION)" \
  --lengths 8192 --chunk-sizes 128 2>&1 | tee "$OUT/ours.txt"
