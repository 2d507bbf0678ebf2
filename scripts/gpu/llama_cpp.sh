#!/usr/bin/env bash
# llama.cpp on the GPU machine, the peer users compare with on the same GGUFs (the graphs issue).
# Its sources come from PyPI's llama-cpp-python sdist (which vendors llama.cpp), packed here since
# the GPU machine has no network; CMake and nvcc are there.
# Usage:
#   bash scripts/gpu/llama_cpp.sh pack              here: .dev/gpu/llama.cpp.tar.xz (~9 MB) from the sdist
#   bash scripts/gpu/llama_cpp.sh build             there: configure, then build llama-bench and
#                                                   llama-speculative in the background (setsid, ~5 min
#                                                   on 16 cores; the machine stays warm between calls)
#   bash scripts/gpu/llama_cpp.sh wait              there: until the build is done (or 500 s)
#   bash scripts/gpu/llama_cpp.sh run <revision>    there: AR (llama-bench, both GGUFs) and speculation
#                                                   (1.5B target, 0.5B draft) on the Spec-Bench prompts
set -u
VERSION=0.3.36
SRC=/root/llama.cpp; M=/root/hscache/models
case ${1:-} in
pack)
  d=$(mktemp -d)
  pip download "llama-cpp-python==$VERSION" --no-deps --no-binary :all: --no-build-isolation -d "$d" >/dev/null 2>&1
  # pip fails after the download (it cannot prepare the metadata without scikit-build-core): the
  # sdist is left in its unpack directory.
  sdist=$(ls "$d"/llama_cpp_python-$VERSION.tar.gz /tmp/pip-unpack-*/llama_cpp_python-$VERSION.tar.gz 2>/dev/null | head -1)
  tar xzf "$sdist" -C "$d"
  # Models (vocabularies), docs, tests and the web UI are not needed to build the two tools.
  tar cf - -C "$d/llama_cpp_python-$VERSION/vendor" --exclude=llama.cpp/models --exclude=llama.cpp/docs \
    --exclude=llama.cpp/tests --exclude=llama.cpp/benches --exclude='llama.cpp/tools/server/public*' \
    --exclude=llama.cpp/tools/server/webui llama.cpp | xz -T2 -6 > .dev/gpu/llama.cpp.tar.xz
  ls -l .dev/gpu/llama.cpp.tar.xz ;;
build)
  mkdir -p $SRC && tar xJf .dev/gpu/llama.cpp.tar.xz -C /root
  cd $SRC && setsid bash -c "cmake -B build -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release > /root/llama-build.log 2>&1 && \
    cmake --build build -j 16 --target llama-bench llama-speculative >> /root/llama-build.log 2>&1; echo exit \$? >> /root/llama-build.log" \
    < /dev/null > /dev/null 2>&1 &
  sleep 2; tail -2 /root/llama-build.log ;;
wait)
  for _ in $(seq 1 100); do grep -q "^exit" /root/llama-build.log 2>/dev/null && break; sleep 5; done
  tail -3 /root/llama-build.log ;;
run)
  REV=${2:-unknown}
  exec > >(tee -a "$OUT/log-llama-cpp.txt") 2>&1
  echo "=== revision $REV, date $(date -u +%F), llama.cpp from llama-cpp-python $VERSION"
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  for m in qwen2.5-coder-1.5b qwen2.5-coder-0.5b; do
    $SRC/build/bin/llama-bench -m $M/$m.gguf -ngl 99 -p 0 -n 128 -r 5 -o md 2>&1 | grep -E "^\|"
  done
  # Speculation on the first turn of one question per category (chat template), greedy, 128 new tokens.
  python3 - <<'PY' > /root/prompts.txt
import json
seen = set()
for line in open("/root/work/question.jsonl"):
    q = json.loads(line)
    if q["category"] not in seen:
        seen.add(q["category"])
        # Qwen's chat template, newlines escaped (llama.cpp expands escapes in -p).
        text = "<|im_start|>user\n" + q["turns"][0] + "<|im_end|>\n<|im_start|>assistant\n"
        print(text.replace("\\", "\\\\").replace("\n", "\\n"))
PY
  while IFS= read -r p; do
    $SRC/build/bin/llama-speculative -m $M/qwen2.5-coder-1.5b.gguf -md $M/qwen2.5-coder-0.5b.gguf -ngl 99 -ngld 99 \
      --temp 0 -n 128 --draft-max 8 -p "$p" 2>&1 | grep -E "decoded|accept|n_draft|speed" | tr '\n' ' '
    echo
  done < /root/prompts.txt ;;
*) echo "usage: $0 pack|build|wait|run <revision>"; exit 2 ;;
esac
