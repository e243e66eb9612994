#!/usr/bin/env bash
# Runs on the GPU machine: the time of every kernel of one forward and one forward+backward at the
# benchmark shape (S = 8192, L = $1), from Nsight Compute, then a detailed report (throughput,
# occupancy, warp stalls) of the kernels named in $2 (a regex).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
L=${1:-128}
ncu --metrics gpu__time_duration.sum --csv gpu/bench_mlstm_cuda --once --lengths 8192 --chunk-sizes "$L" \
  > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
python3 - "$OUT/ncu.csv" <<'PY'
import csv, sys, collections, re
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]; k = head.index("Kernel Name"); v = head.index("Metric Value")
total = collections.defaultdict(float); count = collections.Counter()
for r in rows[1:]:
    name = re.sub(r"\(.*", "", r[k]); name = re.sub(r"<[^<>]*>", "", name).split("::")[-1]
    total[name] += float(r[v].replace(",", "")) / 1e6; count[name] += 1
for name, ms in sorted(total.items(), key=lambda x: -x[1]):
    print(f"{name:24} {count[name]:4} launches {ms:10.3f} ms")
PY
if [ -n "${2:-}" ]; then
  ncu --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
    --section ComputeWorkloadAnalysis --section InstructionStats --section SchedulerStats \
    --section MemoryWorkloadAnalysis -k "regex:${2}" -c "${3:-3}" gpu/bench_mlstm_cuda --once --lengths 8192 \
    --chunk-sizes "$L" > "$OUT/ncu_detail.txt" 2>&1
  grep -E "^  [a-z_]+<|Duration|Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Stall|Warp Cycles|Block Limit|Issued Warp|L1/TEX Hit|L2 Hit|Executed Ipc|Issue Slots|Pipe|Instructions|No Eligible|Eligible Warps" "$OUT/ncu_detail.txt" | head -120
fi
