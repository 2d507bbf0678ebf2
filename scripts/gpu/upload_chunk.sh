#!/usr/bin/env bash
# Write one chunk of a model at its offset under /root/hscache/models (idempotent, so a retried call
# cannot duplicate bytes). Usage: bash scripts/gpu/upload_chunk.sh <alias> <index> <chunk-bytes>
set -eu
alias=$1; i=$2; size=$3
mkdir -p /root/hscache/models
dd if=.dev/up/$alias/part$(printf %02d $i) of=/root/hscache/models/$alias.gguf bs=4M \
   seek=$((i * size)) oflag=seek_bytes conv=notrunc status=none
ls -l /root/hscache/models/
