#!/usr/bin/env bash
# The foundation issue's GPU run, on the H200 host (no Rust there): CUDA fidelity in f32 and bf16
# against the committed fixtures (GGUF float64 and transformers), and
# the first AR speed baseline at the Qwen2.5-Coder-1.5B shape next to transformers.
#
# The transformers fixtures it checks were made by scripts/hf_reference.py on the same host.
# Expects: .dev/gpu/{bench,fidelity_gguf,fidelity_hf}.xz built with --features cuda, stripped (see README),
# GGUFs under $HIERSPEC_CACHE/models/, and $OUT. Usage: bash scripts/gpu/foundation.sh <revision> [fidelity|speed|all]
set -u
REV=${1:-unknown}
BIN=/root/bin
mkdir -p $BIN && for f in .dev/gpu/*.xz; do xz -dc "$f" > $BIN/$(basename "$f" .xz); done && chmod +x $BIN/*
export HIERSPEC_CACHE=${HIERSPEC_CACHE:-/root/hscache}
export PIP_NO_INDEX=1  # no network there: a missing model must fail fast, not retry
LOG=$OUT/log.txt
exec > >(tee -a "$LOG") 2>&1
echo "revision $REV, date $(date -u +%F)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
ls -la "$HIERSPEC_CACHE/models/" 2>/dev/null
(cd "$HIERSPEC_CACHE/models" && sha256sum *.gguf)

export HIERSPEC_FIXTURES=$PWD/assets/fixtures
PART=${2:-all}

if [ "$PART" != speed ]; then
for dtype in f32 bf16; do
  echo "=== fidelity on CUDA, $dtype"
  HIERSPEC_TEST_DTYPE=$dtype timeout 120 $BIN/fidelity_hf --test-threads 1 --nocapture 2>&1 | grep -E "diff|test |result|panicked|differ"
  HIERSPEC_TEST_DTYPE=$dtype timeout 150 $BIN/fidelity_gguf --test-threads 1 --nocapture 2>&1 | grep -E "diff|test |result|panicked|left|right"
done
fi

if [ "$PART" != fidelity ]; then
echo "=== AR speed, qwen2.5-coder-1.5b shape, bf16, random weights"
timeout 240 $BIN/bench --synthetic qwen2.5-coder-1.5b --device cuda --dtype bf16 --prompt-len 128 --new-tokens 256 --repeats 3 --json $OUT/bench_hierspec_bf16.json 2>&1 | grep -v "^note:\|^stack backtrace"
echo "=== transformers, same shape and GPU"
PYTHONUNBUFFERED=1 timeout 300 python3 scripts/hf_ar_speed.py --shape qwen2.5-coder-1.5b --prompt-len 128 --new-tokens 256 --repeats 2 --json $OUT/hf_speed.json 2>&1 | grep -v Warning
fi
echo done
