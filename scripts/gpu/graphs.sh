#!/usr/bin/env bash
# CUDA graphs on the GPU machine. Binaries: .dev/cuda/*.xz (built here, stripped, xz'd; see README's
# CUDA build), unpacked once into $BIN. Results go to $OUT.
# Usage: bash scripts/gpu/graphs.sh <revision> <part>...
#   tests:    replayed vs eager forwards (tests/tests/graphs.rs) and the kernel comparisons, in f32
#             and bf16, whichever of those test binaries are in $BIN
#   lossless: fidelity_gguf, lossless_eagle and lossless_hier (SmolLM2 and Qwen 0.5B; FILTER picks
#             tests) in f32 and bf16; models under /root/hscache/models (scripts/gpu/upload_chunk.sh)
#   bench:    synthetic AR and single-forward timing per shape, and an EAGLE round's steps (a random
#             head's draft round, the tree's verification) eager against replayed
#   real:     Spec-Bench, ar and sd (Qwen2.5-Coder 1.5B W4A16 target, 0.5B bf16 draft), one question
#             per category (PER), NEW tokens, greedy; question file .dev/gpu/question.jsonl
#   ncu:      device time per kernel of a few decode steps (ncu at normal clocks, warm caches)
set -u
REV=${1:-unknown}; shift
BIN=${BIN:-/root/bin}
mkdir -p "$BIN" "$OUT"
for f in .dev/cuda/*.xz; do [ -e "$f" ] && [ ! -e "$BIN/$(basename "$f" .xz)" ] && xz -dc "$f" > "$BIN/$(basename "$f" .xz)"; done
chmod +x "$BIN"/* 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# The card's copy bandwidth for the bytes bound (H100 ~3000 GB/s, H200 ~4300, measured here before).
GBPS=$(nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && echo 4300 || echo 3000)
SHAPES=${SHAPES:-"qwen2.5-coder-1.5b:--int4 qwen2.5-coder-0.5b: qwen2.5-coder-0.5b:--int4 llama3-8b:--int4"}
for PART in "$@"; do
exec > >(tee -a "$OUT/log-graphs-$PART.txt") 2>&1
echo "=== revision $REV, date $(date -u +%F), part $PART"
case $PART in
tests)
  for dtype in f32 bf16; do
    for t in graphs kernels_vs_reference mma_rope mma_vs_reference memory; do
      [ -x "$BIN/$t" ] || continue
      echo "--- $t, $dtype"
      HIERSPEC_TEST_DTYPE=$dtype timeout 280 "$BIN/$t" --test-threads 1 2>&1 | grep -E "^test |test result|panicked|assert" | head -40
    done
  done ;;
lossless)
  export HIERSPEC_CACHE=/root/hscache HIERSPEC_FIXTURES=$PWD/assets/fixtures
  for dtype in f32 bf16; do
    for t in fidelity_gguf lossless_eagle lossless_hier; do
      [ -x "$BIN/$t" ] || continue
      echo "--- $t, $dtype"
      HIERSPEC_TEST_DTYPE=$dtype timeout 280 "$BIN/$t" --test-threads 1 ${FILTER:-} 2>&1 | grep -E "^test |test result|panicked|assert|differ|parts|max" | head -40
    done
  done ;;
real)
  M=/root/hscache/models
  [ -f .dev/gpu/question.jsonl ] && mkdir -p /root/work && cp .dev/gpu/question.jsonl /root/work/
  timeout 570 "$BIN/bench" --prompts /root/work/question.jsonl --per-category ${PER:-1} --turns 1 --max-new-tokens ${NEW:-128} \
    --device cuda --dtype bf16 --model $M/qwen2.5-coder-1.5b.gguf --quant rtn --draft $M/qwen2.5-coder-0.5b.gguf \
    --methods ${METHODS:-ar,sd} --revision "$REV" --json "$OUT/real-$REV.json" --markdown "$OUT/real-$REV.md" 2>&1 \
    | tr '\r' '\n' | grep -v '█' | grep -E "^\[|warm-up|^\||error|loaded" ;;
bench)
  for round in $(seq 1 ${ROUNDS:-2}); do
    for s in $SHAPES; do
      shape=${s%%:*}; flag=${s#*:}
      for g in 1; do
        tag=$shape${flag:+-int4}-graphs$g-r$round
        timeout 250 "$BIN/bench" --synthetic "$shape" $flag --device cuda --dtype bf16 --prompt-len 128 \
          --new-tokens 256 --repeats 3 --forward-n 1,8,64 --tree-steps --copy-gbps "$GBPS" --revision "$REV" --json "$OUT/$tag.json" 2>"$OUT/$tag.err" \
          | grep -vE "^\|---" | sed "s/^/$tag /"
      done
    done
  done ;;
ncu)
  NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  for s in $SHAPES; do
    shape=${s%%:*}; flag=${s#*:}
    tag=$shape${flag:+-int4}
    timeout 250 "$NCU" --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv \
      --log-file "$OUT/ncu-$tag.csv" "$BIN/bench" --synthetic "$shape" $flag --device cuda --dtype bf16 --prompt-len 128 \
      --new-tokens 6 --repeats 1 --forward-n 1 --copy-gbps "$GBPS" --revision "$REV" > /dev/null 2>&1
    python3 scripts/ncu_last_step.py "$OUT/ncu-$tag.csv" | head -4 | sed "s/^/$tag /"
    xz -f "$OUT/ncu-$tag.csv"
  done ;;
esac
done
