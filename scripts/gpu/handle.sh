#!/usr/bin/env bash
# A/B of how cubecl hands launches to the driver (third_party/cubecl-common, switch.rs): upstream's
# batching device thread (`channel`), a device thread given each task at once (`queue`), and each task run on
# the calling thread (`direct`).
# Same binaries, same machine, one process per mode and part. Expects what real.sh expects, plus
# .dev/gpu1/bench-kernels.xz. Usage: bash scripts/gpu/handle.sh <revision>  (MODES="channel queue direct")
set -u
REV=${1:-unknown}; BIN=/root/bin
mkdir -p $BIN && if [ -f .dev/gpu1/bench-kernels.xz ]; then xz -dc .dev/gpu1/bench-kernels.xz > $BIN/bench-kernels && chmod +x $BIN/bench-kernels; fi
for mode in ${MODES:-channel queue direct}; do
  echo "=== CUBECL_DEVICE_HANDLE=$mode"
  CUBECL_DEVICE_HANDLE=$mode timeout 120 $BIN/bench-kernels --device cuda --dtype bf16 --launch-overhead \
    --revision $REV --json $OUT/launch-$mode.json 2>&1 | grep -v '█' | tail -12
  CUBECL_DEVICE_HANDLE=$mode TAG=-$mode bash scripts/gpu/real.sh $REV bench
done
