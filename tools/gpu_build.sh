#!/usr/bin/env bash
# Builds the GPU test and benchmark binaries, the `flashlstm` tool and (when a Python 3.12 — the GPU
# machine's — is found here) the Python package with CUDA, for sm_90a (static CUDA runtime, Release),
# into gpu/, and packs gpu/ into gpu.tar.xz (both git-ignored): a device run carries gpu.tar.xz
# (14 MB instead of ~100), and tools/gpu_check.sh unpacks and runs it there.
#   FLASHLSTM_GPU_PYTHON=/path/to/python3.12   the interpreter to build the module for
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHLSTM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DFLASHLSTM_BENCH=ON -DFLASHLSTM_PYTHON=OFF > /dev/null
cmake --build build-gpu --target flashlstm_cuda_tests bench_mlstm_cuda bench_slstm_cuda flashlstm
rm -rf gpu && mkdir -p gpu/lib
cp build-gpu/tests/flashlstm_cuda_tests build-gpu/bin/bench_mlstm_cuda build-gpu/bin/bench_slstm_cuda build-gpu/bin/flashlstm gpu/
# The GPU machine lacks Boost (graph, regex) and its ICU, which the binaries link: they travel along.
for lib in $(ldd gpu/flashlstm_cuda_tests gpu/bench_mlstm_cuda gpu/bench_slstm_cuda gpu/flashlstm | awk '/boost|icu|png/ {print $3}' | sort -u); do
  cp -L "$lib" gpu/lib/
done

py=${FLASHLSTM_GPU_PYTHON:-$HOME/.pyenv/versions/3.12.1/bin/python3}
if [ -x "$py" ]; then
  cmake -S . -B build-py312 -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHLSTM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
    -DFLASHLSTM_PYTHON=ON -DFLASHLSTM_TESTS=OFF -DFLASHLSTM_BENCH=OFF -DPython_EXECUTABLE="$py" > /dev/null
  cmake --build build-py312 --target _core
  cp -r build-py312/python gpu/python
  find gpu/python -name __pycache__ -prune -exec rm -rf {} +
  for lib in $(ldd gpu/python/flashlstm/_core*.so | awk '/boost|icu|png/ {print $3}'); do cp -L "$lib" gpu/lib/; done
else
  echo "gpu_build: no Python 3.12 at $py (set FLASHLSTM_GPU_PYTHON): the Python package is not built"
fi
git rev-parse --short HEAD > gpu/REVISION
git diff --quiet HEAD -- . ':!gpu' ':!gpu.tar.xz' || sed -i 's/$/+dirty/' gpu/REVISION
tar -cJf gpu.tar.xz gpu
echo "gpu_build: gpu.tar.xz $(du -h gpu.tar.xz | cut -f1), revision $(cat gpu/REVISION)"
