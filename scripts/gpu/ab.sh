#!/usr/bin/env bash
# A/B of two bench binaries on the GPU machine, in one process start each, alternating.
# .dev/ab/bench-<a>.xz and bench-<b>.xz (built here, stripped, xz'd) unpack into $BIN.
# Usage: bash scripts/gpu/ab.sh <a> <b> <part>...
#   ncu:   device time per kernel of the last decode step (ncu at normal clocks, warm caches)
#   bench: synthetic AR tok/s and single-forward wall time at N = 1, 8, 64, ROUNDS rounds
set -u
A=$1; B=$2; shift 2
BIN=${BIN:-/root/bin}
mkdir -p "$BIN" "$OUT"
for t in "$A" "$B"; do [ -e "$BIN/bench-$t" ] || xz -dc ".dev/ab/bench-$t.xz" > "$BIN/bench-$t"; chmod +x "$BIN/bench-$t"; done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
GBPS=$(nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && echo 4300 || echo 3000)
SHAPES=${SHAPES:-"qwen2.5-coder-1.5b:--int4 qwen2.5-coder-0.5b:"}
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
for PART in "$@"; do
for round in $(seq 1 ${ROUNDS:-1}); do
for t in "$A" "$B"; do
for s in $SHAPES; do
  shape=${s%%:*}; flag=${s#*:}; tag=$t-$shape${flag:+-int4}
  case $PART in
  ncu)
    timeout 200 "$NCU" --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv \
      --log-file "$OUT/ncu-$tag.csv" "$BIN/bench-$t" --synthetic "$shape" $flag --device cuda --dtype bf16 \
      --prompt-len 128 --new-tokens 6 --repeats 1 --forward-n 1 > /dev/null 2>&1
    python3 scripts/ncu_last_step.py "$OUT/ncu-$tag.csv" | sed "s/^/$tag /"
    xz -f "$OUT/ncu-$tag.csv" ;;
  bench)
    timeout 200 "$BIN/bench-$t" --synthetic "$shape" $flag --device cuda --dtype bf16 --prompt-len 128 \
      --new-tokens 256 --repeats 3 --forward-n 1,8,64 --copy-gbps "$GBPS" --json "$OUT/$tag-r$round.json" 2>/dev/null \
      | grep -vE "^\|---" | sed "s/^/$tag r$round /" ;;
  esac
done; done; done; done
