#!/usr/bin/env bash
# Runs on the GPU machine: the peers' kernels (their wheels carried in .whl/, fetched on the
# development machine with pip download) and then ours at the same shape, in one session; our rows
# get the fastest peer of their variant beside them (--peers).
#   default               the mLSTM: bench/peers_h100.py, then bench_mlstm_cuda at S = 8192, L = 128
#   FLASHLSTM_PEERS=slstm  the sLSTM and LSTM: bench/peers_slstm_h100.py, then bench_slstm_cuda
#                          (FLASHLSTM_PEER_SELECT="triton_fused cuDNN loop": only those peers)
#   FLASHLSTM_PEERS=plstm  the pLSTM on 2-D grids: bench/peers_plstm_h100.py (the authors' code), then
#                          bench/plstm_grid_cuda.py (ours, from gpu/python)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
export PYTHONUNBUFFERED=1  # a run cut short keeps what the peers printed
mkdir -p "$OUT"
[ -d gpu ] || tar -xJf gpu.tar.xz || { echo "gpu_peers: no gpu/ and no gpu.tar.xz (run tools/gpu_build.sh, carry gpu.tar.xz)"; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site
if [ "${FLASHLSTM_PEERS:-mlstm}" = slstm ]; then
  # flashrnn's CUDA backends compile at their first call (about 4 minutes in all on a fresh machine;
  # with the builds kept, peers and ours took 5 minutes): a git-ignored folder keeps the builds for
  # the next call while the machine stays warm.
  export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/build-torch-extensions}
  python3 bench/peers_slstm_h100.py --json "$OUT/peers_slstm.json" ${FLASHLSTM_PEER_SELECT:+--select $FLASHLSTM_PEER_SELECT} \
    2>&1 | tee "$OUT/peers_slstm.txt"
  gpu/bench_slstm_cuda --json "$OUT/slstm_h100.json" --peers "$OUT/peers_slstm.json" --revision "$(cat gpu/REVISION)" \
    2>&1 | tee "$OUT/ours_slstm.txt"
  exit
fi
if [ "${FLASHLSTM_PEERS:-mlstm}" = plstm ]; then
  python3 bench/peers_plstm_h100.py --json "$OUT/peers_plstm.json" 2>&1 | tee "$OUT/peers_plstm.txt"
  LD_LIBRARY_PATH="gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" PYTHONPATH="gpu/python:$PYTHONPATH" \
    python3 bench/plstm_grid_cuda.py --profile --json "$OUT/plstm_grid.json" --revision "$(cat gpu/REVISION)" \
    2>&1 | tee "$OUT/plstm_grid.txt"
  exit
fi
python3 bench/peers_h100.py --json "$OUT/peers.json" --lengths 8192 2>&1 | tee "$OUT/peers.txt"
gpu/bench_mlstm_cuda --json "$OUT/h100.json" --peers "$OUT/peers.json" --revision "$(cat gpu/REVISION)" \
  --lengths 8192 --chunk-sizes 128 2>&1 | tee "$OUT/ours.txt"
