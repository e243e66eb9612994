#!/usr/bin/env bash
# Runs on the GPU machine (docs/development.md: build with tools/gpu_build.sh, carry gpu.tar.xz, run this):
# the [cuda] tests with every error figure, the memory and race checkers on the odd shapes, `flashlstm
# validate` (with its [cuda] rows), the Python package's GPU paths (DLPack, torch custom ops) with
# pytest, then the benchmark; logs and bench/results-style JSON go to $OUT, a short table is printed
# last. Every stage runs even when an earlier one fails; the exit status is non-zero when any failed.
#   FLASHLSTM_GPU_CHECK=bench   only the benchmark (arguments go to it)
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=gpu
OUT=${OUT:-out}
mkdir -p "$OUT"
[ -d "$BIN" ] || tar -xJf gpu.tar.xz || { echo "gpu_check: no gpu/ and no gpu.tar.xz (run tools/gpu_build.sh, carry gpu.tar.xz)"; exit 2; }
export LD_LIBRARY_PATH="$BIN/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"  # the Boost/ICU/libpng the binaries link
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv,noheader
failed=0
stage() {  # stage NAME STATUS SUMMARY
  echo "$1: exit $2 — $3"
  [ "$2" -eq 0 ] || failed=1
}
if [ "${FLASHLSTM_GPU_CHECK:-all}" != bench ]; then

"$BIN/flashlstm_cuda_tests" -s "[cuda]" > "$OUT/tests.log" 2>&1
stage tests $? "$(grep -E '^(All tests passed|test cases:)' "$OUT/tests.log" | tail -1)"
grep -E "FAIL|No CUDA|error" "$OUT/tests.log" | head -20

compute-sanitizer --tool memcheck --error-exitcode 3 "$BIN/flashlstm_cuda_tests" "[sanitize]" > "$OUT/memcheck.log" 2>&1
stage memcheck $? "$(grep -E 'ERROR SUMMARY' "$OUT/memcheck.log" | tail -1)"

# The sLSTM kernels share data between threads through shared memory at every step: the race checker.
compute-sanitizer --tool racecheck --error-exitcode 3 "$BIN/flashlstm_cuda_tests" "[slstm][sanitize],[plstm][sanitize]" > "$OUT/racecheck.log" 2>&1
stage racecheck $? "$(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$OUT/racecheck.log" | tail -1)"

"$BIN/flashlstm" validate --json "$OUT/validate.json" > "$OUT/validate.txt" 2>&1
stage validate $? "$(tail -1 "$OUT/validate.txt" | cut -c1-60)"
grep "\[cuda\]" "$OUT/validate.txt"

if [ -d "$BIN/python" ]; then
  FLASHLSTM_PYTHONPATH="$BIN/python" PYTHONPATH="$BIN/python" python3 -m pytest -q -p no:cacheprovider \
    -k "not notebook" tests/python/test_torch.py tests/python/test_dlpack.py tests/python/test_mlstm.py tests/python/test_readme.py \
    > "$OUT/pytest.log" 2>&1
  stage "pytest (GPU paths)" $? "$(tail -1 "$OUT/pytest.log")"
  grep -E "FAILED|Error" "$OUT/pytest.log" | head -20
fi
fi

"$BIN/bench_mlstm_cuda" --json "$OUT/h100.json" --revision "$(cat "$BIN/REVISION")" "$@" 2>&1 | tee "$OUT/bench.txt"
stage bench $? ""
"$BIN/bench_slstm_cuda" --json "$OUT/slstm_h100.json" --revision "$(cat "$BIN/REVISION")" 2>&1 | tee "$OUT/bench_slstm.txt"
stage "bench sLSTM" $? ""
exit $failed
