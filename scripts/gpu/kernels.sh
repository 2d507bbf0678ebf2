#!/usr/bin/env bash
# W4A16 / speculative-core GPU run on the H200 (no Rust there): kernel-vs-reference tests on CUDA
# (f32 and bf16), bench-kernels at Llama-3 8B/70B layer shapes with the PyTorch peers, tree attention
# timing, AR at the 8B shape dense vs W4A16, and fidelity + lossless EAGLE on CUDA.
# Expects .dev/gpu/*.xz (stripped, xz'd CUDA binaries), models under $HIERSPEC_CACHE for the
# fidelity/lossless parts, and $OUT. Usage: bash scripts/gpu/kernels.sh <revision> <part>
# parts: tests | matmul | attention | ar | e2e
set -u
REV=${1:-unknown}
PART=${2:-tests}
BIN=/root/bin
mkdir -p $BIN && for f in .dev/gpu/*.xz; do [ -e "$f" ] && xz -dc "$f" > $BIN/$(basename "$f" .xz); done; chmod +x $BIN/* 2>/dev/null
export HIERSPEC_CACHE=${HIERSPEC_CACHE:-/root/hscache}
export HIERSPEC_FIXTURES=$PWD/assets/fixtures
export PIP_NO_INDEX=1
exec > >(tee -a "$OUT/log-$PART.txt") 2>&1
echo "revision $REV, date $(date -u +%F), part $PART"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
case $PART in
tests)
  for dtype in f32 bf16; do
    echo "=== kernels vs reference on CUDA, $dtype"
    HIERSPEC_TEST_DTYPE=$dtype timeout 200 $BIN/kernels_vs_reference --test-threads 1 2>&1 | grep -E "test |result|panicked|error"
  done ;;
matmul)
  timeout 420 $BIN/bench-kernels --device cuda --dtype bf16 --revision $REV --json $OUT/ours.json > $OUT/ours.md
  tail -70 $OUT/ours.md
  PYTHONUNBUFFERED=1 timeout 150 python3 scripts/torch_matmul_bench.py --json $OUT/torch.json 2>&1 | tail -3
  python3 scripts/merge_int4_table.py $OUT/ours.json $OUT/torch.json $OUT/int4-matmul.json ;;
attention)
  timeout 300 $BIN/bench-kernels --device cuda --dtype bf16 --attention --revision $REV --json $OUT/attention.json | tail -20 ;;
ar)
  for q in "" "--int4"; do
    timeout 200 $BIN/bench --synthetic llama3-8b --device cuda --dtype bf16 --prompt-len 128 --new-tokens 128 --repeats 2 $q --json $OUT/ar8b$q.json 2>&1 | tail -1
  done ;;
e2e)
  for dtype in f32 bf16; do
    echo "=== fidelity on CUDA, $dtype"
    HIERSPEC_TEST_DTYPE=$dtype timeout 100 $BIN/fidelity_gguf --test-threads 1 --nocapture 2>&1 | grep -E "diff|test |result|panicked"
    echo "=== lossless eagle on CUDA, $dtype (smollm2, 20 prompts)"
    HIERSPEC_TEST_DTYPE=$dtype timeout 200 $BIN/lossless_eagle lossless_eagle_smollm2 --test-threads 1 --nocapture 2>&1 | grep -E "tau|test |result|panicked|differs"
  done ;;
esac
echo done
