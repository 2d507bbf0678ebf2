#!/usr/bin/env bash
# Where the time goes, on the H200 (ncu). Expects the binaries of mma.sh (.dev/gpu*/*.xz) and $OUT.
# Usage: bash scripts/gpu/profile.sh <revision> <part>...
#   stalls: ncu sections (speed of light, memory, occupancy, warp states) of the int4 and dense
#           tensor-core products at Llama-3-8B / 70B shapes, M = 1 and 64 (one launch each, cold caches)
#   times:  device time of the int4 product per (shape, M) under ncu, cold caches (median of 3);
#           BK_ARGS=--norm times it with an RMSNorm folded in
#   attn:   ncu sections of one decode-step tree attention launch (Llama-3-8B W4A16, cache ~130)
#   ar:     every kernel of a short synthetic AR decode under ncu (device time per kernel name), for
#           Llama-3-8B and Qwen2.5-Coder-1.5B W4A16, then the last decode step alone (scripts/ncu_last_step.py)
set -u
REV=${1:-unknown}; shift
BIN=${BIN:-/root/bin}
mkdir -p $BIN && for f in .dev/gpu*/*.xz; do [ -e "$f" ] && [ ! -e $BIN/$(basename "$f" .xz) ] && xz -dc "$f" > $BIN/$(basename "$f" .xz); done; chmod +x $BIN/* 2>/dev/null
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
SECTIONS="--section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats"
for PART in "$@"; do
exec > >(tee -a "$OUT/log-profile-$PART.txt") 2>&1
echo "=== revision $REV, date $(date -u +%F), part $PART"
case $PART in
stalls)
  for models in 8b 70b; do
    timeout 200 $NCU --clock-control none --cache-control all $SECTIONS -k regex:'(int4|dense)_mma_kernel' \
      $BIN/bench-kernels --device cuda --dtype bf16 --models $models --m ${MS:-1,64} --launches 1 --no-burn --revision $REV > $OUT/stalls-$models${TAG:-}.txt 2>&1
    grep -E "int4_mma_kernel|dense_mma_kernel|Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers Per|Block Size|Grid Size|Warp Cycles Per Issued|Theoretical Occupancy|Stall|stall|One or More Eligible|Issued Warp" $OUT/stalls-$models${TAG:-}.txt | head -150
  done ;;
times)
  M=${MS:-1,8,64}
  timeout 200 $NCU --clock-control none --cache-control all --metrics gpu__time_duration.sum --csv --log-file $OUT/times${TAG:-}.csv \
    -k regex:'int4_mma_kernel' $BIN/bench-kernels --device cuda --dtype bf16 --m $M --launches 3 --no-burn --revision $REV ${BK_ARGS:-} > /dev/null 2>&1
  python3 - $OUT/times${TAG:-}.csv "$M" <<'PY'
import csv, sys, statistics
lines = [l for l in open(sys.argv[1]) if l.startswith('"')]
to_us = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}
t = [float(r["Metric Value"].replace(",", "")) * to_us[r["Metric Unit"].strip()] for r in csv.DictReader(lines) if "gpu__time_duration" in r.get("Metric Name", "")]
ms = sys.argv[2].split(",")
shapes = [f"{m}.{s}" for m in ("8b", "70b") for s in ("qkv", "o", "gate_up", "down")]
print("| shape | " + " | ".join(f"M={m} us" for m in ms) + " |\n|---|" + "---|" * len(ms))
for i, sh in enumerate(shapes):
    row = [statistics.median(t[(i * len(ms) + j) * 3:(i * len(ms) + j) * 3 + 3]) for j in range(len(ms))]
    print(f"| {sh} | " + " | ".join(f"{v:.1f}" for v in row) + " |")
PY
  ;;
attn)
  # One decode-step launch (Llama-3-8B W4A16, cache ~130): skip the prefill's 32 layers. (bench-kernels
  # --attention runs its reference afterwards, too long for ncu's report to come back.)
  timeout 200 $NCU --clock-control none --cache-control all $SECTIONS --section InstructionStats --section MemoryWorkloadAnalysis -k regex:tree_attention_kernel -s 40 -c 1 \
    $BIN/bench --synthetic llama3-8b --int4 --device cuda --dtype bf16 --revision $REV --prompt-len 128 --new-tokens 4 --repeats 1 > $OUT/attn${TAG:-}.txt 2>&1
  grep -E "tree_attention|Duration|Issued Warp|Warp Cycles Per Issued|Executed Instructions|Registers Per|Achieved Active|L2 Hit|Memory Throughput|Local|Eligible" $OUT/attn${TAG:-}.txt | head -40 ;;
ar)
  for shape in ${AR:-llama3-8b qwen2.5-coder-1.5b}; do
    timeout 250 $NCU --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv --log-file $OUT/ar-$shape.csv \
      $BIN/bench --synthetic $shape --int4 --device cuda --dtype bf16 --revision $REV --prompt-len 128 --new-tokens ${TOKENS:-8} --repeats 1 > /dev/null 2>&1
    python3 scripts/ncu_last_step.py $OUT/ar-$shape.csv --all $shape
    python3 scripts/ncu_last_step.py $OUT/ar-$shape.csv
  done ;;
esac
echo "=== done $PART"
done
