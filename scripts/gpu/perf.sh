#!/usr/bin/env bash
# The H200 performance pass (issue: benchmarks), synthetic shapes with random weights made on the device.
# Usage: bash scripts/gpu/perf.sh <revision> <part>
#   launches: Qwen2.5-Coder-1.5B shape, W4A16, bf16: decode tok/s, kernel launches per decode step
#             (cubecl's profiling logger at "minimal": one line per launch, no syncs) by kernel name,
#             and per-kernel times (cubecl "basic", which syncs around each launch).
#   ar:       AR decode tok/s vs the bandwidth bound: 1.5B shape W4A16; Llama-3-8B W4A16 and bf16.
#   curve:    per-step latency of one target forward of N = 1..64 new tokens after 512 / 2048 cached
#             rows: Llama-3-70B W4A16 (target) and Llama-3-8B W4A16 / bf16 (intermediate).
set -u
REV=${1:-unknown}; PART=${2:-launches}
BIN=/root/bin
mkdir -p $BIN && xz -dc .dev/gpu/bench.xz > $BIN/bench && chmod +x $BIN/bench
exec > >(tee -a "$OUT/log-$PART.txt") 2>&1
echo "revision $REV, date $(date -u +%F), part $PART"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
syn() { timeout 280 $BIN/bench --synthetic "$@" --device cuda --dtype bf16 --revision $REV; }
case $PART in
launches)
  P=/root/prof; mkdir -p $P; cd $P
  run() { syn qwen2.5-coder-1.5b --int4 --prompt-len 32 "$@"; }
  run --new-tokens 64 --repeats 2 2>&1 | tail -1
  for n in 8 16; do
    printf '[profiling.logger]\nlevel = "minimal"\nfile = "%s"\nappend = false\n' $P/min$n.log > cubecl.toml
    run --new-tokens $n --repeats 1 > /dev/null 2>&1
  done
  rm -f cubecl.toml
  a=$(wc -l < $P/min8.log); b=$(wc -l < $P/min16.log); per=$(( (b - a) / 16 ))
  echo "launch lines: 8 tokens x 2 runs $a, 16 tokens x 2 runs $b, per decode step $per"
  tail -n $per $P/min16.log | sed -E 's/[0-9]+//g' | sort | uniq -c | sort -rn | head -30 | tee $OUT/launches-by-name.txt
  printf '[profiling.logger]\nlevel = "basic"\nstdout = true\n' > cubecl.toml
  run --new-tokens 16 --repeats 1 > $OUT/basic.txt 2>&1
  rm -f cubecl.toml
  tail -40 $OUT/basic.txt ;;
ar)
  syn qwen2.5-coder-1.5b --int4 --prompt-len 128 --new-tokens 128 --repeats 2 --json $OUT/ar-qwen15b-int4.json 2>&1 | tail -1
  syn llama3-8b --int4 --prompt-len 128 --new-tokens 128 --repeats 2 --json $OUT/ar-llama3-8b-int4.json 2>&1 | tail -1
  syn llama3-8b --prompt-len 128 --new-tokens 128 --repeats 2 --json $OUT/ar-llama3-8b-dense.json 2>&1 | tail -1 ;;
curve)
  C="--curve-cache 512,2048 --curve-n ${CURVE_N:-1,2,4,8,16,32,64} --prompt-len 128 --new-tokens 32 --repeats 2"
  syn llama3-70b --int4 $C --json $OUT/curve-llama3-70b-int4.json 2>&1 | grep -v "^verify curve"
  syn llama3-8b --int4 $C --json $OUT/curve-llama3-8b-int4.json 2>&1 | grep -v "^verify curve"
  syn llama3-8b $C --json $OUT/curve-llama3-8b-dense.json 2>&1 | grep -v "^verify curve" ;;
esac
echo done
