#!/usr/bin/env bash
# Runs the CUDA tests and benchmarks on a GPU machine from prebuilt binaries (issue #8).
# Usage (from the repository root there): scripts/cuda-device-run.sh BINDIR [STAGES]
#   BINDIR holds doppler and doppler_tests built for /work/wt-cuda (their compiled-in paths); the tests' data and
#   models are taken from this checkout through links. STAGES: any of info,tests,memcheck,bench,benchpaged
#   (default all). Logs go to $OUT (or /tmp/cuda-out).
set -uo pipefail
BIN=$(realpath "$1"); STAGES=${2:-info,tests,memcheck,bench,benchpaged}
OUTD=${OUT:-/tmp/cuda-out}; mkdir -p "$OUTD"
ROOT=$PWD
W=/work/wt-cuda
if [ "$ROOT" != "$W" ]; then
  mkdir -p $W/build
  for d in tests models; do [ -e $W/$d ] || ln -s "$ROOT/$d" $W/$d; done
  cp "$BIN/doppler" "$BIN/doppler_tests" $W/build/
  [ -f "$BIN/cuda_ops_bench" ] && cp "$BIN/cuda_ops_bench" $W/build/
fi
[ -d "$BIN/lib" ] && export LD_LIBRARY_PATH="$BIN/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"  # e.g. libcpp-httplib
cd $W
has() { [[ ",$STAGES," == *",$1,"* ]]; }
CACHE=/tmp/dcache
if has info; then
  nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.mem --format=csv
  nproc; free -g | head -2
  build/doppler info --gpu
fi
if has tests; then
  timeout 240 build/doppler_tests --gtest_filter="${GTEST_FILTER:-*Cuda*}" > "$OUTD/tests.log" 2>&1; echo "tests rc=$?"
  grep -E "^\[  (FAILED|PASSED) |^\[cuda|FAILED \]|Failure|Expected|Which is|error" "$OUTD/tests.log" | head -100
fi
if has opsbench; then
  timeout 120 build/cuda_ops_bench 2>&1 | tee "$OUTD/ops-bench.log"
fi
if has memcheck; then
  if command -v compute-sanitizer >/dev/null; then
    timeout 300 compute-sanitizer --tool memcheck --leak-check no build/doppler_tests \
      --gtest_filter='CudaOps.*:*CudaParity.*/llama_row:*CudaParity.*/gpt_oss_row:*CudaParity.ResidentOnGpu/deepseek_v3_column:*CudaParity.ResidentOnGpu/qwen3_moe_row' \
      > "$OUTD/memcheck.log" 2>&1; echo "memcheck rc=$?"
    grep -E "ERROR SUMMARY|Invalid|PASSED|FAILED" "$OUTD/memcheck.log" | head -20
  else
    echo "compute-sanitizer: not on this machine"
  fi
fi
bench() {  # name args...
  local name=$1; shift
  timeout 150 build/doppler bench --backend cuda --cache-dir $CACHE "$@" > "$OUTD/bench-$name.log" 2>&1
  echo "== bench $name rc=$? ($*)"; grep -vE "^doppler: (writing|measuring)" "$OUTD/bench-$name.log" | tail -30
}
if has bench || has benchpaged; then
  has bench && bench mixtral --synthetic mixtral-8x7b:4 -n 64 --stats
  has benchpaged && bench mixtral-vram25 --synthetic mixtral-8x7b:4 -n 32 --vram 3700M --stats
  rm -rf $CACHE
  has bench && bench qwen3 --synthetic qwen3-30b-a3b:8 -n 64 --stats
  has benchpaged && bench qwen3-vram25 --synthetic qwen3-30b-a3b:8 -n 32 --vram 4000M --stats
  rm -rf $CACHE
fi
