#!/usr/bin/env bash
# Real models on the H200 (issue: benchmarks): Qwen2.5-Coder-1.5B W4A16 target (GGUF Q4_K blocks as
# int4, the rest RTN g128), the 0.5B as draft / intermediate, the trained 0.5B head for hier; one
# Spec-Bench question from each of the six categories (MT-bench represented by its coding questions),
# turn 1, greedy; and the transformers peer (AR and assisted generation, bf16) on the same prompts.
# Expects .dev/gpu/{bench.xz,question.jsonl}, .dev/wheels/gguf-*.whl, artifacts/heads/qwen2.5-coder-0.5b,
# the GGUFs under /root/hscache/models (scripts/gpu/upload_chunk.sh), and $OUT.
# Usage: bash scripts/gpu/real.sh <revision> <part>; parts: bench | hf | sweep (TAG=x names the bench files real-<dtype>x.*)
#   EXTRA: more bench flags for the bench part, e.g. EXTRA="--host-profile $OUT/hp-real" (a build with
#          --features cuda,host-profile) to see where the speculative methods' host time goes (docs/perf/host.md).
#   sweep: `hier` alone under each of the ';'-separated argument sets in $SWEEP (tree shape, draft length),
#          one process each; prints each run's overall row (compare with the bench part's `ar`).
set -u
REV=${1:-unknown}; PART=${2:-bench}
BIN=/root/bin; M=/root/hscache/models
CATS=${CATS:-coding,translation,summarization,qa,math_reasoning,rag}
NEW=${NEW:-128}; PER=${PER:-1}; DTYPE=${DTYPE:-bf16}; METHODS=${METHODS:-ar,sd,hier}
HEAD05=${HEAD05:-artifacts/heads/qwen2.5-coder-0.5b}
# The target's own head, for `eagle` (METHODS=ar,sd,eagle,hier).
HEAD15=${HEAD15:-artifacts/heads/qwen2.5-coder-1.5b-w4a16}; EAGLE_ARG=""; [ -d "$HEAD15" ] && EAGLE_ARG="--eagle $HEAD15"
# The binary from this call's carry, else the one an earlier call (heads.sh setup) left in $BIN.
mkdir -p $BIN && if [ -f .dev/gpu/bench.xz ]; then xz -dc .dev/gpu/bench.xz > $BIN/bench && chmod +x $BIN/bench; fi
[ -f .dev/gpu/question.jsonl ] || { mkdir -p .dev/gpu && cp /root/work/question.jsonl .dev/gpu/; }
exec > >(tee -a "$OUT/log-$PART.txt") 2>&1
echo "revision $REV, date $(date -u +%F), part $PART, categories $CATS, $PER each, $NEW new tokens"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
case $PART in
bench)
  timeout 570 $BIN/bench --prompts .dev/gpu/question.jsonl --per-category $PER --categories $CATS --turns 1 \
    --max-new-tokens $NEW --device cuda --dtype $DTYPE --model $M/qwen2.5-coder-1.5b.gguf --quant rtn \
    --draft $M/qwen2.5-coder-0.5b.gguf --hier-eagle $HEAD05 $EAGLE_ARG --methods $METHODS ${EXTRA:-} \
    --revision $REV --json $OUT/real-$DTYPE${TAG:-}.json --markdown $OUT/real-$DTYPE${TAG:-}.md --svg $OUT/real-$DTYPE${TAG:-}.svg 2>&1 \
    | tr '\r' '\n' | grep -v '█' | grep -E "^\[|warm-up|^\||error" ;;
sweep)
  IFS=';' read -ra SETS <<< "${SWEEP:---min-draft-len 4;--min-draft-len 8;--tree-depth 2 --tree-nodes 20}"
  for i in "${!SETS[@]}"; do
    echo "--- hier ${SETS[$i]}"
    timeout 200 $BIN/bench --prompts .dev/gpu/question.jsonl --per-category $PER --categories $CATS --turns 1 \
      --max-new-tokens $NEW --device cuda --dtype $DTYPE --model $M/qwen2.5-coder-1.5b.gguf --quant rtn \
      --draft $M/qwen2.5-coder-0.5b.gguf --hier-eagle $HEAD05 --methods hier ${SETS[$i]} \
      --revision $REV --json $OUT/sweep-$i.json 2>&1 | tr '\r' '\n' | grep -E "^\| overall|error"
  done ;;
hf)
  pip install --no-deps --no-index --target /root/py .dev/wheels/gguf-*.whl > /dev/null 2>&1
  PYTHONPATH=/root/py PYTHONUNBUFFERED=1 timeout 570 python3 scripts/hf_real_speed.py --target $M/qwen2.5-coder-1.5b.gguf \
    --draft $M/qwen2.5-coder-0.5b.gguf --questions .dev/gpu/question.jsonl --categories $CATS --per-category $PER \
    --max-new-tokens $NEW --json $OUT/hf-real.json 2>&1 | tr "\r" "\n" | grep -v -E "Warning|it/s]|s/it]" ;;
esac
echo done
