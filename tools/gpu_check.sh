#!/usr/bin/env bash
# Runs on the GPU machine (DESIGN.md: build here with tools/gpu_build.sh, carry gpu/, run this):
# the [cuda] tests with every error figure, the memory checker on the odd shapes, `flashlstm
# validate` (with its [cuda] rows), then the benchmark; logs and bench/results-style JSON go to $OUT, a short table is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=gpu
OUT=${OUT:-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv,noheader

"$BIN/flashlstm_cuda_tests" -s "[cuda]" > "$OUT/tests.log" 2>&1
echo "tests: exit $? — $(grep -E '^(All tests passed|test cases:)' "$OUT/tests.log" | tail -1)"
grep -E "FAIL|No CUDA|error" "$OUT/tests.log" | head -20

compute-sanitizer --tool memcheck --error-exitcode 3 "$BIN/flashlstm_cuda_tests" "[sanitize]" > "$OUT/memcheck.log" 2>&1
echo "memcheck: exit $? — $(grep -E 'ERROR SUMMARY' "$OUT/memcheck.log" | tail -1)"

LD_LIBRARY_PATH="$BIN/lib" "$BIN/flashlstm" validate --json "$OUT/validate.json" > "$OUT/validate.txt" 2>&1
echo "validate: exit $? — $(tail -1 "$OUT/validate.txt" | cut -c1-60)"
grep "\[cuda\]" "$OUT/validate.txt"

"$BIN/bench_mlstm_cuda" --json "$OUT/h100.json" --revision "$(cat "$BIN/REVISION")" "$@" 2>&1 | tee "$OUT/bench.txt"
