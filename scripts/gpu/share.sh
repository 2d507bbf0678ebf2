#!/usr/bin/env bash
# The int4 product's shared-x blocks on the H200 (issue: W4A16 kernels): each warp of a block owns
# its channel tiles and walks the K split's virtual warps, so a block reads x once for 8 warps'
# channels (policy.rs `x_share`). Expects the binaries of mma.sh (.dev/gpu*/*.xz) and $OUT.
# Usage: bash scripts/gpu/share.sh <revision> <part>...
#   tests:  the kernel tests on CUDA in bf16 (tensor cores) and f32 (emulated): mma_vs_reference
#           (with shared_x_gives_the_same_bits), mma_rope (with the bitwise two-launch test)
#   times:  device time (ncu, cold caches, median of 3) per Llama-3 8B / 70B shape and M, under each
#           setting of $CFGS (';'-separated, '-' for the defaults; default: off, 8 and 4 warps, and 8
#           warps at every K split)
#   curve:  one forward of N = 1, 16, 32, 64 new tokens after 512 cached rows (synthetic, W4A16), off /
#           on ($SHARE warps, default 8) alternating for $ROUNDS rounds, for $SHAPES (default
#           "qwen15b-int4 8b-int4")
set -u
REV=${1:?revision}; shift
BIN=/root/bin
mkdir -p $BIN && for f in .dev/gpu*/*.xz; do [ -e "$f" ] && [ ! -e $BIN/$(basename "$f" .xz) ] && xz -dc "$f" > $BIN/$(basename "$f" .xz); done; chmod +x $BIN/* 2>/dev/null
syn() { case $1 in qwen15b-int4) echo "qwen2.5-coder-1.5b --int4" ;; 8b-int4) echo "llama3-8b --int4" ;; 70b-int4) echo "llama3-70b --int4" ;; esac; }
for PART in "$@"; do
exec > >(tee -a "$OUT/log-share-$PART.txt") 2>&1
echo "=== revision $REV, date $(date -u +%F), part $PART"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
case $PART in
tests)
  TESTS="${TESTS:-mma_vs_reference mma_rope}" bash scripts/gpu/mma.sh $REV tests ;;
times)
  IFS=';' read -ra CFG <<< "${CFGS:-HIERSPEC_MMA_SHARE=0;HIERSPEC_MMA_SHARE=8;HIERSPEC_MMA_SHARE=4;HIERSPEC_MMA_SHARE=8 HIERSPEC_MMA_SHARE_W=16}"
  for i in "${!CFG[@]}"; do
    c=${CFG[$i]}; [ "$c" = "-" ] && c=""
    echo "--- config $i: ${c:-defaults}"
    env $c MS=${MS:-1,16,32,64,128} TAG=-share$i bash scripts/gpu/profile.sh $REV times 2>&1 | grep -E "^\|"
  done ;;
curve)
  for shape in ${SHAPES:-qwen15b-int4 8b-int4}; do
    for r in $(seq 1 ${ROUNDS:-2}); do
      for share in 0 ${SHARE:-8}; do
        tag=$shape-share$share-r$r
        HIERSPEC_MMA_SHARE=$share timeout 200 $BIN/bench --synthetic $(syn $shape) --device cuda --dtype bf16 \
          --prompt-len 32 --new-tokens 32 --repeats 1 --curve-cache 512 --curve-n 1,16,32,64 --revision $REV \
          --json $OUT/curve-$tag.json 2>&1 | grep -E "verify curve" | sed "s/^/$tag /"
      done
    done
  done ;;
esac
echo "=== done $PART"
done
