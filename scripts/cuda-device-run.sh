#!/usr/bin/env bash
# Runs the CUDA tests and benchmarks on a GPU machine from prebuilt binaries (issue #8).
# Usage (from the repository root there): scripts/cuda-device-run.sh BINDIR [STAGES]
#   BINDIR holds doppler, doppler_tests (and cuda_ops_bench) built in the checkout $DOPPLER_BUILT_IN (default
#   /work/main: their compiled-in paths); the tests' data and models are taken from this checkout through links.
#   STAGES: any of info,tests,memcheck,opsbench,ncu,bench,benchgreedy,benchvariants,benchpaged,benchwarm,benchcpu,
#   benchprefill (default info,tests,memcheck,bench,benchpaged). ncu: per-kernel time and DRAM bytes (Nsight Compute)
#   of the first decode steps. bench: resident decode (CUDA graphs); benchgreedy: the same decoded greedily as
#   `doppler run` does (pipelined: the token stays on the GPU); benchvariants: the same without graphs
#   (DOPPLER_CUDA_GRAPHS=0) and without programmatic edges (DOPPLER_CUDA_PDL=0); benchpaged: 25 % of the experts on
#   the GPU, hybrid execution, --no-hybrid and DOPPLER_HYBRID_PREDICT=1; benchwarm: the same after a 256-token
#   prefill (host tier warm); benchcpu: the CPU backend; benchprefill: a 1024-token prefill with cuBLAS and with the
#   tiled GEMM (DOPPLER_CUBLAS=0). BENCH_MODELS: the bench stages' models (default "mixtral qwen3"); BENCH_TRACE=1:
#   each bench also writes a --trace timeline, summarized by
#   scripts/trace-summary.py. Logs: $OUT/cuda-logs.tgz (or /tmp/cuda-logs.tgz).
set -uo pipefail
BIN=$(realpath "$1"); STAGES=${2:-info,tests,memcheck,bench,benchpaged}
OUTD=$(mktemp -d /tmp/cuda-logs.XXXX)  # every log; packed into $OUT/cuda-logs.tgz at the end
trap 'tar -C "$OUTD" -czf "${OUT:-/tmp}/cuda-logs.tgz" . ; rm -rf "$OUTD"' EXIT
ROOT=$PWD
W=${DOPPLER_BUILT_IN:-/work/main}
if [ "$ROOT" != "$W" ]; then
  mkdir -p $W
  for d in tests models; do [ -e $W/$d ] || ln -s "$ROOT/$d" $W/$d; done
fi
mkdir -p $W/build
cp "$BIN/doppler" "$BIN/doppler_tests" $W/build/
[ -f "$BIN/cuda_ops_bench" ] && cp "$BIN/cuda_ops_bench" $W/build/
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
  timeout 300 build/doppler_tests --gtest_filter="${GTEST_FILTER:-*Cuda*}" > "$OUTD/tests.log" 2>&1; echo "tests rc=$?"
  grep -E "^\[  (FAILED|PASSED) |^\[cuda|FAILED \]|Failure|Expected|Which is|error" "$OUTD/tests.log" | cut -c1-300 | head -80
fi
if has opsbench; then
  timeout 120 build/cuda_ops_bench 2>&1 | tee "$OUTD/ops-bench.log"
fi
if has memcheck; then
  if command -v compute-sanitizer >/dev/null; then
    timeout 300 compute-sanitizer --tool memcheck --leak-check no build/doppler_tests \
      --gtest_filter='CudaOps.*:*CudaParity.*/llama_row:*CudaParity.*/gpt_oss_row:*CudaParity.ResidentOnGpu/deepseek_v3_column:*CudaParity.*/qwen3_moe_row' \
      > "$OUTD/memcheck.log" 2>&1; echo "memcheck rc=$?"
    grep -E "ERROR SUMMARY|Invalid|PASSED|FAILED" "$OUTD/memcheck.log" | head -20
  else
    echo "compute-sanitizer: not on this machine"
  fi
fi
if has ncu; then  # per-kernel time and DRAM bytes of the first decode steps (ops launched one by one)
  for m in "qwen3 qwen3-30b-a3b:8" "mixtral mixtral-8x7b:4"; do
    set -- $m
    DOPPLER_CUDA_GRAPHS=0 timeout 300 ncu --clock-control none --csv --print-units base \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__grid_size --launch-count 400 \
      build/doppler bench --backend cuda --cache-dir $CACHE --synthetic $2 --prompt-tokens 1 -n 3 \
      > "$OUTD/ncu-$1.csv" 2> "$OUTD/ncu-$1.err"; echo "ncu $1 rc=$?"
    rm -rf $CACHE
  done
fi
bench() {  # name args... (BACKEND=cpu for the CPU backend; BENCH_TRACE=1: --trace, summarized)
  local name=$1; shift
  local trace=()
  [ -n "${BENCH_TRACE:-}" ] && trace=(--trace "$OUTD/trace-$name.json")
  timeout 150 env ${BENCH_ENV:-} build/doppler bench --backend ${BACKEND:-cuda} --cache-dir $CACHE "$@" "${trace[@]}" \
    > "$OUTD/bench-$name.log" 2>&1
  echo "== bench $name rc=$? ($*)"
  grep -E "^(prefill|decode|weight read|gpu|ratio|graphs|hybrid|transfer)" \
    "$OUTD/bench-$name.log" | cut -c1-400
  if [ -n "${BENCH_TRACE:-}" ] && command -v python3 >/dev/null; then
    python3 "$ROOT/scripts/trace-summary.py" "$OUTD/trace-$name.json" | tee "$OUTD/trace-$name.txt" | head -30
  fi
}
if has bench || has benchgreedy || has benchvariants || has benchpaged || has benchwarm || has benchcpu ||
   has benchprefill; then
  for m in "mixtral mixtral-8x7b:4 3700M" "qwen3 qwen3-30b-a3b:8 4000M"; do
    set -- $m
    [[ " ${BENCH_MODELS:-mixtral qwen3} " == *" $1 "* ]] || continue
    has bench && bench $1 --synthetic $2 -n 64 --stats
    # greedy decoding as `doppler run` does it: the token stays on the GPU, each step issued before the last one ends
    has benchgreedy && bench $1-greedy --synthetic $2 -n 64 --decode-input greedy --stats
    has benchvariants && BENCH_ENV=DOPPLER_CUDA_GRAPHS=0 bench $1-nographs --synthetic $2 -n 64 --stats
    has benchvariants && BENCH_ENV=DOPPLER_CUDA_PDL=0 bench $1-nopdl --synthetic $2 -n 64 --stats
    has benchpaged && bench $1-vram25 --synthetic $2 -n 32 --vram $3 --stats
    has benchpaged && bench $1-vram25-nohybrid --synthetic $2 -n 32 --vram $3 --no-hybrid --stats
    has benchpaged && BENCH_ENV=DOPPLER_HYBRID_PREDICT=1 bench $1-vram25-predict --synthetic $2 -n 32 --vram $3 --stats
    # warm host tier: a 256-token prefill reads (nearly) every expert into host RAM before the timed decode
    has benchwarm && bench $1-vram25-warm --synthetic $2 -n 64 --prompt-tokens 256 --vram $3 --stats
    has benchwarm && bench $1-vram25-warm-nohybrid --synthetic $2 -n 64 --prompt-tokens 256 --vram $3 --no-hybrid --stats
    has benchcpu && BACKEND=cpu bench $1-cpu --synthetic $2 -n 8 --prompt-tokens 4 --stats
    # prefill of 1024 tokens: cuBLAS, then the tiled GEMM
    has benchprefill && bench $1-prefill --synthetic $2 -n 4 --prompt-tokens 1024
    has benchprefill && BENCH_ENV=DOPPLER_CUBLAS=0 bench $1-prefill-tiled --synthetic $2 -n 4 --prompt-tokens 1024
    rm -rf $CACHE
  done
fi
