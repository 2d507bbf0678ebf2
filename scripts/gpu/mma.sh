#!/usr/bin/env bash
# Tensor-core products on the H200 (issue: W4A16 kernels). Expects .dev/gpu/*.xz (stripped, xz'd CUDA
# binaries: bench-kernels, bench, kernels_vs_reference, mma_vs_reference) and $OUT.
# Usage: bash scripts/gpu/mma.sh <revision> <part>...
#   tests:     both kernel test binaries on CUDA (or $TESTS), f32 (the mma kernel emulated) and bf16 (tensor cores)
#   matmul:    device times under ncu from cold caches (bench-kernels --launches 3), the wall-clock
#              run, the PyTorch peers, merged into int4-matmul.json / .md by scripts/ncu_times.py
#   attention: tree attention, kernel vs reference, cache 512..8192, N 1..64
#   ar:        AR decode, synthetic Qwen2.5-Coder-1.5B W4A16 and Llama-3-8B W4A16 / bf16
#   e2e:       SmolLM2 on CUDA in f32 and bf16 (uploaded with upload_chunk.sh): fidelity against the
#              float64 reference, greedy lossless EAGLE (oracle, random head, tree shapes), SD and
#              the hierarchy (binaries fidelity_gguf, fidelity_hf, lossless_{eagle,sd,hier})
set -u
REV=${1:-unknown}; shift
BIN=/root/bin
mkdir -p $BIN && for f in .dev/gpu*/*.xz; do [ -e "$f" ] && [ ! -e $BIN/$(basename "$f" .xz) ] && xz -dc "$f" > $BIN/$(basename "$f" .xz); done; chmod +x $BIN/* 2>/dev/null
export PIP_NO_INDEX=1
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
for PART in "$@"; do
exec > >(tee -a "$OUT/log-$PART.txt") 2>&1
echo "=== revision $REV, date $(date -u +%F), part $PART"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
case $PART in
tests)
  for dtype in f32 bf16; do
    for t in ${TESTS:-mma_vs_reference kernels_vs_reference}; do
      echo "--- $t on CUDA, $dtype"
      HIERSPEC_TEST_DTYPE=$dtype timeout 240 $BIN/$t --test-threads 1 2>&1 | grep -E "^test |test result|panicked|error|relative|left|right" | head -40
    done
  done ;;
matmul)
  M=${MS:-1,2,4,8,16,32,64,128}
  echo "ncu: $NCU"
  timeout 300 $NCU --clock-control none --cache-control all --metrics gpu__time_duration.sum --csv --log-file $OUT/ncu.csv \
    -k regex:'(int4|dense)_(mma_)?kernel' $BIN/bench-kernels --device cuda --dtype bf16 --m $M --launches 3 --no-burn --revision $REV > /dev/null
  tail -c 600 $OUT/ncu.csv
  timeout 240 $BIN/bench-kernels --device cuda --dtype bf16 --m $M --samples 7 --revision $REV --json $OUT/wall.json > $OUT/wall.md
  tail -70 $OUT/wall.md
  PYTHONUNBUFFERED=1 timeout 150 python3 scripts/torch_matmul_bench.py --m $M --json $OUT/torch.json 2>&1 | tail -2
  python3 scripts/ncu_times.py $OUT/ncu.csv $OUT/wall.json $OUT/torch.json $OUT/int4-matmul.json | tee $OUT/int4-matmul.md ;;
attention)
  timeout 300 $BIN/bench-kernels --device cuda --dtype bf16 --attention --samples 7 --revision $REV --json $OUT/attention.json | tail -20 ;;
ar)
  syn() { timeout 200 $BIN/bench --synthetic "$@" --device cuda --dtype bf16 --revision $REV --prompt-len 128 --new-tokens 128 --repeats 2; }
  for shape in ${AR:-qwen15b-int4 8b-int4 8b-dense}; do
    case $shape in
      qwen15b-int4) syn qwen2.5-coder-1.5b --int4 --json $OUT/ar-qwen15b-int4.json 2>&1 | tail -1 ;;
      8b-int4) syn llama3-8b --int4 --json $OUT/ar-llama3-8b-int4.json 2>&1 | tail -1 ;;
      8b-dense) syn llama3-8b --json $OUT/ar-llama3-8b-dense.json 2>&1 | tail -1 ;;
    esac
  done ;;
e2e)
  export HIERSPEC_CACHE=/root/hscache HIERSPEC_FIXTURES=$PWD/assets/fixtures
  ls -l /root/hscache/models; sha256sum /root/hscache/models/smollm2-135m.gguf
  for dtype in ${DTYPES:-f32 bf16}; do
    echo "--- $dtype"
    HIERSPEC_TEST_DTYPE=$dtype timeout 120 $BIN/fidelity_gguf smollm2 --test-threads 1 --nocapture 2>&1 | grep -E "diff|^test |test result|panicked|ours|assertion"
    HIERSPEC_TEST_DTYPE=$dtype timeout 60 $BIN/fidelity_hf --test-threads 1 --nocapture 2>&1 | grep -E "diff|^test |test result|panicked|assertion"
    for t in ${LOSSLESS:-lossless_eagle lossless_sd lossless_hier}; do
      HIERSPEC_TEST_DTYPE=$dtype timeout ${LOSSLESS_S:-150} $BIN/$t smollm2 --exact ${t}_smollm2_135m --test-threads 1 --nocapture 2>&1 | grep -E "tau|^test |test result|panicked|differ" | tail -8
    done
  done ;;
esac
echo "=== done $PART"
done
