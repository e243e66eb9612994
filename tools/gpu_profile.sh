#!/usr/bin/env bash
# Runs on the GPU machine: the time of every kernel of one forward and one forward+backward at the
# benchmark shape (S = 8192, L given), from Nsight Compute, summed per kernel name.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
ncu --metrics gpu__time_duration.sum --csv gpu/bench_mlstm_cuda --once --lengths 8192 --chunk-sizes "${1:-128}" \
  > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
python3 - "$OUT/ncu.csv" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]; k = head.index("Kernel Name"); v = head.index("Metric Value")
total = collections.defaultdict(float); count = collections.Counter()
for r in rows[1:]:
    name = r[k].split("(")[0].split("<")[0].split("::")[-1]
    total[name] += float(r[v].replace(",", "")) / 1e6; count[name] += 1
for name, ms in sorted(total.items(), key=lambda x: -x[1]):
    print(f"{name:28} {count[name]:4} launches {ms:10.3f} ms")
PY
