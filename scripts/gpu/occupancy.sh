#!/usr/bin/env bash
# Occupancy of the int4 product at small M on the H200 (issue: W4A16 kernels): the device time of
# each Llama-3 8B / 70B shape under each launch-shape setting (policy.rs knobs, fixed per process),
# then W4A16 AR at the 8B shape under each. Expects the binaries of mma.sh (.dev/gpu*/*.xz) and $OUT.
# Usage: bash scripts/gpu/occupancy.sh <revision> [times] [ar]
#   CFGS: ';'-separated settings, each a space-separated list of VAR=value ('-' for the defaults)
set -u
REV=${1:-unknown}; shift
PARTS=${*:-times ar}
BIN=/root/bin
mkdir -p $BIN && for f in .dev/gpu*/*.xz; do [ -e "$f" ] && [ ! -e $BIN/$(basename "$f" .xz) ] && xz -dc "$f" > $BIN/$(basename "$f" .xz); done; chmod +x $BIN/* 2>/dev/null
IFS=';' read -ra CFG <<< "${CFGS:--;HIERSPEC_MMA_WARPS_PER_SM=64 HIERSPEC_MMA_WARPS_MAX=32;HIERSPEC_MMA_WARPS_PER_SM=64 HIERSPEC_MMA_WARPS_MAX=24;HIERSPEC_MMA_PAIR=4;HIERSPEC_MMA_PAIR=0;HIERSPEC_MMA_PAIR=0 HIERSPEC_MMA_WARPS_PER_SM=64 HIERSPEC_MMA_WARPS_MAX=32}"
exec > >(tee -a "$OUT/log-occupancy.txt") 2>&1
echo "=== revision $REV, date $(date -u +%F), parts $PARTS, M ${MS:-1}"
for PART in $PARTS; do
for i in "${!CFG[@]}"; do
  c=${CFG[$i]}; [ "$c" = "-" ] && c=""
  echo "--- $PART config $i: ${c:-defaults}"
  case $PART in
  times) env $c MS=${MS:-1} TAG=-occ$i bash scripts/gpu/profile.sh $REV times 2>&1 | grep -E "^\|" ;;
  ar) env $c timeout 120 $BIN/bench --synthetic llama3-8b --int4 --device cuda --dtype bf16 --revision $REV \
        --prompt-len 128 --new-tokens 128 --repeats 2 --json $OUT/ar-8b-occ$i.json 2>&1 | tail -1 ;;
  esac
done
done
echo "=== done"
