#!/usr/bin/env bash
# RoPE and the KV-cache write in the q|k|v product's epilogue, A/B on the H200 (issue: benchmarks,
# the performance pass). One build, .dev/gpu/bench.xz; the switch is HIERSPEC_FUSE_ROPE=0 (off).
# Usage: bash scripts/gpu/rope.sh <revision> <part>...
#   launches: kernel launches per decode step, off and on (cubecl's logger at "minimal", one line
#             per launch; the difference of a 16- and an 8-token run), Qwen2.5-Coder-1.5B W4A16
#   ab:       synthetic AR tok/s and the verification curve (N = 1, 16, 64 after 512 rows),
#             alternating off / on within each round, under each device handle in $MODES
#             (default "channel direct"); $SHAPES (default "qwen15b-int4 qwen05b-bf16"), $ROUNDS (3)
set -u
REV=${1:?revision}; shift
BIN=/root/bin
mkdir -p $BIN && [ -x $BIN/bench ] || { xz -dc .dev/gpu/bench.xz > $BIN/bench && chmod +x $BIN/bench; }
syn() { case $1 in qwen15b-int4) echo "qwen2.5-coder-1.5b --int4" ;; qwen05b-bf16) echo "qwen2.5-coder-0.5b" ;; 8b-int4) echo "llama3-8b --int4" ;; esac; }
for PART in "$@"; do
exec > >(tee -a "$OUT/log-rope-$PART.txt") 2>&1
echo "=== revision $REV, date $(date -u +%F), part $PART"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
case $PART in
launches)
  P=/root/prof; mkdir -p $P; cd $P
  for fuse in 0 1; do
    for n in 8 16; do
      printf '[profiling.logger]\nlevel = "minimal"\nfile = "%s"\nappend = false\n' $P/min$fuse-$n.log > cubecl.toml
      HIERSPEC_FUSE_ROPE=$fuse timeout 200 $BIN/bench --synthetic $(syn qwen15b-int4) --device cuda --dtype bf16 --revision $REV \
        --prompt-len 32 --new-tokens $n --repeats 1 > /dev/null 2>&1
    done
    rm -f cubecl.toml
    a=$(wc -l < $P/min$fuse-8.log); b=$(wc -l < $P/min$fuse-16.log)
    echo "fuse $fuse: launch lines 8 tokens $a, 16 tokens $b, per decode step $(( (b - a) / 16 ))"
    tail -n $(( (b - a) / 16 )) $P/min$fuse-16.log | sed -E 's/[0-9]+//g' | sort | uniq -c | sort -rn | head -12
  done
  cd - > /dev/null ;;
ab)
  mkdir -p $OUT/rope
  for shape in ${SHAPES:-qwen15b-int4 qwen05b-bf16}; do
    for mode in channel; do
      for r in $(seq 1 ${ROUNDS:-3}); do
        for fuse in 0 1; do
          tag=$shape-$mode-fuse$fuse-r$r
          env HIERSPEC_FUSE_ROPE=$fuse timeout 200 $BIN/bench \
            --synthetic $(syn $shape) --device cuda --dtype bf16 --prompt-len 128 --new-tokens 256 --repeats 3 \
            --curve-cache 512 --curve-n 1,16,64 --revision $REV --json $OUT/rope/$tag.json 2>&1 \
            | grep -E "^\| (qwen|llama)|^\| 512" | sed "s/^/$tag /"
        done
      done
    done
  done
  (cd $OUT && tar czf rope-$REV.tgz rope && rm -rf rope) ;;
esac
done
