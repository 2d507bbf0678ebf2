#!/usr/bin/env bash
# Hierarchy GPU run on the H200 (no Rust there): every method (ar, sd, eagle, hier) on real
# Qwen2.5-Coder-1.5B (W4A16, RTN g128) with the 0.5B as draft / intermediate and random EAGLE heads,
# on Spec-Bench prompts (one per category), greedy; plus the fixture of a PyTorch-pickled EAGLE head.
# Expects .dev/gpu/bench.xz (stripped, xz'd CUDA build), .dev/gpu/question.jsonl (Spec-Bench), the
# GGUFs under /root/hscache/models (scripts/gpu/upload_chunk.sh), and $OUT.
# Usage: bash scripts/gpu/hier.sh <revision> <part>; parts: check | fixture | bench-bf16 | bench-f32 | attention
set -u
REV=${1:-unknown}
PART=${2:-check}
BIN=/root/bin
mkdir -p $BIN && for f in .dev/gpu/*.xz; do [ -e "$f" ] && xz -dc "$f" > $BIN/$(basename "$f" .xz); done; chmod +x $BIN/* 2>/dev/null
M=/root/hscache/models
exec > >(tee -a "$OUT/log-$PART.txt") 2>&1
echo "revision $REV, date $(date -u +%F), part $PART"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
bench() { # dtype, max new tokens, per category, methods
  timeout 560 $BIN/bench --prompts .dev/gpu/question.jsonl --per-category $3 --categories $5 --turns 1 --max-new-tokens $2 \
    --device cuda --dtype $1 --model $M/qwen2.5-coder-1.5b.gguf --quant rtn --draft $M/qwen2.5-coder-0.5b.gguf \
    --eagle random --methods $4 --revision $REV --json $OUT/hier-$1.json --markdown $OUT/hier-$1.md --answers $OUT/answers-$1
}
case $PART in
check)
  sha256sum $M/*.gguf ;;
fixture)
  PYTHONUNBUFFERED=1 python3 scripts/make_eagle_bin_fixture.py $OUT ;;
bench-bf16)
  bench bf16 96 1 ar,sd,eagle,hier writing,qa,math_reasoning ;;
bench-f32)
  bench f32 64 1 ar,sd,eagle,hier qa ;;
attention)
  # The tree-attention kernel is unchanged since 8aa26e3: its bench-kernels build times it.
  timeout 280 $BIN/bench-kernels --device cuda --dtype bf16 --attention --revision 8aa26e3 --json $OUT/attention.json | tail -30 ;;
esac
echo done
