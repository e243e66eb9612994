#!/usr/bin/env bash
# Builds the GPU test and benchmark binaries and the `flashlstm` tool here (sm_90a, static CUDA runtime, Release) into gpu/,
# the git-ignored folder a device run carries; tools/gpu_check.sh runs them there.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHLSTM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DFLASHLSTM_BENCH=ON > /dev/null
cmake --build build-gpu --target flashlstm_cuda_tests bench_mlstm_cuda flashlstm
mkdir -p gpu/lib
cp build-gpu/tests/flashlstm_cuda_tests build-gpu/bin/bench_mlstm_cuda build-gpu/bin/flashlstm gpu/
# The GPU machine lacks Boost (graph, regex) and its ICU, which `flashlstm` links: they travel along.
for lib in $(ldd build-gpu/bin/flashlstm | awk '/boost|icu|png/ {print $3}'); do cp -L "$lib" gpu/lib/; done
git rev-parse --short HEAD > gpu/REVISION
git diff --quiet HEAD -- . ':!gpu' || sed -i 's/$/+dirty/' gpu/REVISION
