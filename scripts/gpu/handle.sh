#!/usr/bin/env bash
# A/B of how cubecl hands launches to the driver (third_party/cubecl-common, switch.rs): upstream's
# batching device thread (`channel`), a device thread given each task at once (`queue`), and each task
# run on the calling thread (`direct`). Same binaries, same machine, one process per mode and part.
# Usage: bash scripts/gpu/handle.sh <revision> [real | synthetic]   (MODES="channel queue direct")
#   real:      launch round trips, then the real-model bench (expects what real.sh expects, plus
#              .dev/gpu1/bench-kernels.xz or /root/bin/bench-kernels)
#   synthetic: launch round trips, then AR on random W4A16 weights at the Qwen2.5-Coder-1.5B and
#              Llama-3-8B shapes (no model upload)
set -u
REV=${1:-unknown}; PART=${2:-real}; BIN=/root/bin
mkdir -p $BIN
[ -f .dev/gpu1/bench-kernels.xz ] && xz -dc .dev/gpu1/bench-kernels.xz > $BIN/bench-kernels && chmod +x $BIN/bench-kernels
[ -f .dev/gpu/bench.xz ] && xz -dc .dev/gpu/bench.xz > $BIN/bench && chmod +x $BIN/bench
for mode in ${MODES:-channel queue direct}; do
  echo "=== CUBECL_DEVICE_HANDLE=$mode"
  CUBECL_DEVICE_HANDLE=$mode timeout 60 $BIN/bench-kernels --device cuda --dtype bf16 --launch-overhead \
    --revision $REV --json $OUT/launch-$mode.json 2>&1 | grep -v '█' | tail -12
  case $PART in
  real) CUBECL_DEVICE_HANDLE=$mode TAG=-$mode bash scripts/gpu/real.sh $REV bench ;;
  synthetic)
    for shape in qwen2.5-coder-1.5b llama3-8b; do
      CUBECL_DEVICE_HANDLE=$mode timeout 90 $BIN/bench --synthetic $shape --int4 --device cuda --dtype bf16 \
        --revision $REV --prompt-len 128 --new-tokens 128 --repeats 2 --json $OUT/ar-$shape-int4-$mode.json 2>&1 | tail -1
    done ;;
  esac
done
