#!/usr/bin/env bash
# Runs on the GPU machine: the peers' kernels (bench/peers_h100.py; their wheels carried in .whl/,
# fetched here with pip download) and ours at the same shape, in one session.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site
gpu/bench_mlstm_cuda --json "$OUT/h100.json" --revision "$(cat gpu/REVISION)" --lengths 8192 --chunk-sizes 128 \
  > "$OUT/ours.txt" 2>&1
python3 bench/peers_h100.py --json "$OUT/peers.json" --lengths 8192 2>&1 | tee "$OUT/peers.txt"
cat "$OUT/ours.txt"
