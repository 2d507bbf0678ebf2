#!/usr/bin/env bash
# The RMSNorm fold's cost inside the products, on the H200 (issue: benchmarks, the performance pass).
# Expects the binaries of mma.sh (.dev/gpu*/*.xz) and, for the A/B, a second bench-kernels as
# .dev/ab/bench-kernels-a.xz (the baseline build); $OUT. Usage: bash scripts/gpu/fold.sh <revision> <part>...
#   times: ncu device time of the int4 product per (shape, M): baseline plain, baseline with the norm
#          folded in, this build with the norm folded in (M from $MS, default 1,8,16,64)
#   curve: one synthetic Qwen2.5-Coder-1.5B W4A16 forward of N new tokens after 512 cached rows,
#          HIERSPEC_FOLD_NORM=1,0,1,0 (the verification-cost curve that tree verification pays)
#   tests: mma_vs_reference's normed and batch-invariance tests on CUDA, bf16
set -u
REV=${1:-unknown}; shift
mkdir -p /root/bin /root/bin-a && for f in .dev/gpu*/*.xz; do [ -e "$f" ] && xz -dc "$f" > /root/bin/$(basename "$f" .xz); done
[ -f .dev/ab/bench-kernels-a.xz ] && xz -dc .dev/ab/bench-kernels-a.xz > /root/bin-a/bench-kernels
chmod +x /root/bin/* /root/bin-a/* 2>/dev/null
for PART in "$@"; do
exec > >(tee -a "$OUT/log-fold-$PART.txt") 2>&1
echo "=== revision $REV, date $(date -u +%F), part $PART"
case $PART in
times)
  for run in "a plain /root/bin-a" "a norm /root/bin-a --norm" "b norm /root/bin --norm"; do
    set -- $run
    echo "--- build $1, $2"
    BIN=$3 BK_ARGS="${4:-}" MS=${MS:-1,8,16,64} TAG=-$1-$2 bash scripts/gpu/profile.sh $REV times 2>&1 | grep -E "^\|"
  done ;;
curve)
  for f in 1 0 1 0; do
    echo "--- HIERSPEC_FOLD_NORM=$f"
    HIERSPEC_FOLD_NORM=$f timeout 120 /root/bin/bench --synthetic qwen2.5-coder-1.5b --int4 --device cuda --dtype bf16 --revision $REV \
      --prompt-len 128 --new-tokens 16 --repeats 1 --curve-cache 512 --curve-n 1,8,16,32,64 --json $OUT/curve-fold$f-$RANDOM.json 2>&1 \
      | grep -E "^\| 512"
  done ;;
tests)
  HIERSPEC_TEST_DTYPE=bf16 timeout 200 /root/bin/mma_vs_reference --test-threads 1 normed batch_invariant 2>&1 | grep -E "^test |test result|panicked" ;;
esac
echo "=== done $PART"
done
