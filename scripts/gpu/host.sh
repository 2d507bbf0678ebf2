#!/usr/bin/env bash
# Host-side launch costs A/B on the H200 (issue: benchmarks, the performance pass): two unstripped
# `bench` builds with the host-profile feature, .dev/hp/bench-a.xz (baseline) and .dev/hp/bench-b.xz,
# and $OUT. Usage: bash scripts/gpu/host.sh <rev-a> <rev-b> [part...]
#   ab:      synthetic AR, alternating a / b / b with HIERSPEC_PERSISTENT_WEIGHTS=0, under each device
#            handle in $MODES (default "channel direct"); $SHAPES (default qwen15b-int4), $ROUNDS (2)
#   profile: `bench --host-profile` of b at each shape and mode (folded stacks, flame graphs, tables)
set -u
A=${1:?rev a}; B=${2:?rev b}; shift 2
BIN=/root/bin-host
mkdir -p $BIN
for v in a b; do [ -x $BIN/bench-$v ] || { xz -dc .dev/hp/bench-$v.xz > $BIN/bench-$v && chmod +x $BIN/bench-$v; }; done
syn() { case $1 in qwen15b-int4) echo "qwen2.5-coder-1.5b --int4" ;; 8b-int4) echo "llama3-8b --int4" ;; esac; }
run() { # tag binary env... : one synthetic AR run, its JSON under $OUT/host/
  local tag=$1 bin=$2 shape=$3 mode=$4; shift 4
  env $( [ $mode != channel ] && echo CUBECL_DEVICE_HANDLE=$mode ) "$@" timeout 200 $BIN/$bin --synthetic $(syn $shape) \
    --device cuda --dtype bf16 --prompt-len 128 --new-tokens 256 --repeats 3 --curve-cache 512 --curve-n 1,16,64 \
    --revision $tag --json $OUT/host/$tag.json 2>&1 | grep -E "^\| (qwen|llama)|^\| 512" | sed "s/^/$tag /"
}
mkdir -p $OUT/host
for PART in "$@"; do
exec > >(tee -a "$OUT/log-host-$PART.txt") 2>&1
echo "=== a $A, b $B, date $(date -u +%F), part $PART"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
case $PART in
ab)
  for shape in ${SHAPES:-qwen15b-int4}; do
    for mode in ${MODES:-channel direct}; do
      for r in $(seq 1 ${ROUNDS:-2}); do
        run $shape-$mode-a-$A-r$r bench-a $shape $mode
        run $shape-$mode-b-$B-r$r bench-b $shape $mode
        run $shape-$mode-b0-$B-r$r bench-b $shape $mode HIERSPEC_PERSISTENT_WEIGHTS=0
      done
    done
  done ;;
profile)
  for shape in ${SHAPES:-qwen15b-int4}; do
    for mode in ${MODES:-channel direct}; do
      env $( [ $mode != channel ] && echo CUBECL_DEVICE_HANDLE=$mode ) timeout 200 $BIN/bench-b --synthetic $(syn $shape) --device cuda \
        --dtype bf16 --revision $B --prompt-len 128 --new-tokens 256 --repeats 2 --curve-cache 512 --curve-n 1 \
        --host-profile $OUT/host/hp-$shape-$mode-$B --host-profile-hz ${HZ:-1999} 2>&1 | grep -A28 "host profile" | head -30
    done
  done ;;
esac
done
# $OUT brings back 8 files: one archive for the JSON and the profiles.
(cd $OUT && tar czf host-$B.tgz host && rm -rf host)
