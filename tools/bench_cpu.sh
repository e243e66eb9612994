#!/usr/bin/env bash
# Builds and runs the CPU benchmarks (Release, -march=native) and records them with the git revision
# in bench/results/cpu-<name>.json. (The sLSTM asks for transparent huge pages for its large
# buffers itself, with madvise.)
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
cmake -S . -B build-bench -G Ninja -DFLASHLSTM_NATIVE=ON -DFLASHLSTM_TESTS=OFF -DFLASHLSTM_CUDA=OFF > /dev/null
cmake --build build-bench --target bench_mlstm_cpu bench_slstm_cpu bench_plstm_cpu bench_arrow_pointing_cpu
revision=$(git rev-parse HEAD)$(git diff --quiet || echo "-dirty")
mkdir -p bench/results
run() {  # name, then environment assignments
  local name=$1
  shift
  env "$@" "build-bench/bin/bench_${name}_cpu" --benchmark_context=git_revision="$revision" \
    --benchmark_out="bench/results/cpu-${name}.json" --benchmark_out_format=json
}
run mlstm
run slstm
run plstm
run arrow_pointing
