#!/usr/bin/env bash
# Where a decode step's host time goes, on the H200 (no perf there): `bench --host-profile` samples
# the process's threads with pprof-rs over the timed synthetic AR runs. Expects an UNSTRIPPED bench
# built with `--features cuda,host-profile` as .dev/hp/bench.xz, and $OUT.
# Usage: bash scripts/gpu/hostprof.sh <revision> [shape...]   (shapes: qwen15b-int4 8b-int4)
# Env: MODES="channel direct" (CUBECL_DEVICE_HANDLE per run), HZ (sampling rate, default 997).
set -u
REV=${1:-unknown}; shift
SHAPES=${*:-qwen15b-int4 8b-int4}
BIN=/root/bin-hp
mkdir -p $BIN && [ ! -x $BIN/bench ] && xz -dc .dev/hp/bench.xz > $BIN/bench && chmod +x $BIN/bench
exec > >(tee -a "$OUT/log-hostprof.txt") 2>&1
echo "=== revision $REV, date $(date -u +%F)"
for shape in $SHAPES; do
  case $shape in
    qwen15b-int4) SYN="qwen2.5-coder-1.5b --int4" ;;
    8b-int4) SYN="llama3-8b --int4" ;;
    *) echo "unknown shape $shape"; continue ;;
  esac
  for mode in ${MODES:-channel direct}; do
    tag=$shape-$mode-$REV
    echo "--- $shape, CUBECL_DEVICE_HANDLE=$mode"
    env $( [ $mode != channel ] && echo CUBECL_DEVICE_HANDLE=$mode ) timeout 200 $BIN/bench --synthetic $SYN --device cuda --dtype bf16 \
      --revision $REV --prompt-len 128 --new-tokens 256 --repeats 2 --curve-cache 512 --curve-n 1 \
      --host-profile $OUT/hp-$tag --host-profile-hz ${HZ:-997} --json $OUT/hp-$tag.json 2>&1 | tail -80
  done
done
# $OUT brings back 8 files: one archive for the profiles.
(cd $OUT && tar czf hostprof-$REV.tgz hp-* && rm -f hp-*)
echo "=== done"
