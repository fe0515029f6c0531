#!/usr/bin/env bash
# Builds every libFuzzer target (fuzz/*.cpp) with clang + ASan/UBSan and runs each for FUZZ_SECONDS (30 by
# default) on a seed corpus made from tests/data. Exits non-zero if any target fails to build or finds a crash,
# leak, sanitizer error or timeout (the reproducer is left in build-fuzz/artifacts/).
# Usage: scripts/fuzz.sh [target...]     (default: all fuzz/*.cpp; JOBS=N for the build)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${FUZZ_SECONDS:-30}
JOBS=${JOBS:-$(nproc)}
B=build-fuzz

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in fuzz/*.cpp; do [ -e "$f" ] && targets+=("$(basename "$f" .cpp)"); done
fi
if [ ${#targets[@]} -eq 0 ]; then
  echo "fuzz.sh: no fuzz/*.cpp targets" >&2
  exit 1
fi

echo "== fuzz build (${targets[*]})"
CC=clang CXX=clang++ cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DDOPPLER_FUZZ=ON -DDOPPLER_TESTS=OFF -DDOPPLER_BENCH=OFF >/dev/null
ninja -C "$B" -j "$JOBS" "${targets[@]}"

# u64 little-endian as raw bytes
le64() {
  local n=$1 i
  for i in 0 1 2 3 4 5 6 7; do printf "\\x$(printf %02x $(((n >> (8 * i)) & 255)))"; done
}
# write a safetensors file from a header string and a number of data bytes (0x11 each)
st_seed() {
  local out=$1 header=$2 nbytes=$3
  { le64 ${#header}; printf '%s' "$header"; head -c "$nbytes" /dev/zero | tr '\0' '\021'; } >"$out"
}

seed_safetensors() {
  local dir=$1 f n i=0
  # the header part of the .safetensors files under tests/data (data bytes are not needed to explore the
  # parser); headers over 4 KiB only slow the fuzzer down
  while IFS= read -r -d '' f; do
    n=$(od -An -tu8 --endian=little -N8 "$f" | tr -d ' ')
    if [ "$n" -le 4088 ]; then
      head -c $((8 + n)) "$f" >"$dir/header_$i"
      i=$((i + 1))
    fi
  done < <(find tests/data -name '*.safetensors' -print0)
  # small complete files that pass validation, so mutations reach the range / overlap checks
  st_seed "$dir/valid_two" '{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]}}' 12
  st_seed "$dir/valid_gap" '{"x":{"dtype":"U8","shape":[3],"data_offsets":[5,8]},"y":{"dtype":"I64","shape":[],"data_offsets":[8,16]}}   ' 16
  st_seed "$dir/valid_empty" '{"e":{"dtype":"F16","shape":[0,7],"data_offsets":[0,0]}}' 0
  st_seed "$dir/overlap" '{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}' 6
}

seed_generic() {  # every small file under tests/data
  local dir=$1 f i=0
  while IFS= read -r -d '' f; do
    cp "$f" "$dir/file_$i"
    i=$((i + 1))
  done < <(find tests/data -type f -size -64k -print0)
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
failed=()
for t in "${targets[@]}"; do
  corpus="$B/corpus/$t"
  rm -rf "$corpus" "$B/artifacts/$t-"*
  mkdir -p "$corpus" "$B/artifacts"
  case "$t" in
    fuzz_safetensors) seed_safetensors "$corpus" ;;
    *) seed_generic "$corpus" ;;
  esac
  [ -d "fuzz/corpus/$t" ] && cp fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
  echo "== fuzz $t for ${SECS} s ($(ls "$corpus" | wc -l) seeds)"
  if ! "$B/$t" -max_total_time="$SECS" -timeout=10 -max_len=16384 -print_final_stats=1 \
      -artifact_prefix="$B/artifacts/$t-" "$corpus" >"$B/$t.log" 2>&1; then
    tail -n 60 "$B/$t.log" >&2
    echo "== fuzz $t: FAILED (log: $B/$t.log, reproducer in $B/artifacts/)" >&2
    failed+=("$t")
  else
    grep -E 'stat::number_of_executed_units|stat::new_units_added' "$B/$t.log" | tr '\n' ' '
    echo
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: failures in: ${failed[*]}" >&2
  exit 1
fi
echo "== fuzz: no findings"
