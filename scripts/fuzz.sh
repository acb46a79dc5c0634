#!/usr/bin/env bash
# Build every libFuzzer harness fuzz/fuzz_*.c into build-fuzz/ and run each
# for SECONDS (default 600) on a copy of its seed corpus.
#   scripts/fuzz.sh [SECONDS]
#   FUZZ_ONLY=fuzz_dns scripts/fuzz.sh [SECONDS]   (one target)
# Seeds: fuzz/corpus/<name>/ where <name> is the harness name with or
# without its fuzz_ prefix.  Prints one line per target:
#   fuzz: fuzz_X ok, N executions in S s
#   fuzz: fuzz_X FAILED (...)
# and exits non-zero if any target failed to build or crashed.  Crash
# inputs are kept in build-fuzz/artifacts/.  fuzz_dns embeds Lua 5.4 and
# loads lua/wgoverlay/dns.lua from this checkout (WGO_ROOT); it gets 2 s
# per input, the C targets 10 s: a slow input is a failure.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
SECONDS_PER_TARGET=${1:-600}
CC_FUZZ=${CC_FUZZ:-clang}
OUT=build-fuzz
mkdir -p "$OUT/artifacts" "$OUT/corpus" "$OUT/logs"

shopt -s nullglob
harnesses=(fuzz/${FUZZ_ONLY:-fuzz_*}.c)
if [ ${#harnesses[@]} -eq 0 ]; then
  echo "fuzz: no harnesses in fuzz/"
  exit 0
fi

# the engine's sources without the Lua binding
core=()
for f in csrc/*.c; do
  case "$(basename "$f")" in lua_*) ;; *) core+=("$f") ;; esac
done

failed=0
for src in "${harnesses[@]}"; do
  name=$(basename "$src" .c)
  short=${name#fuzz_}
  bin="$OUT/$name"
  log="$OUT/logs/$name.log"
  # The packet harness's transport data goes through our AVX-512
  # ChaCha20-Poly1305 where the CPU has it (chosen at load time, as in
  # every build), libsodium otherwise.
  # fuzz_dns is Lua code under an embedded interpreter, not the C core;
  # no ASan there: it cannot see into the uninstrumented interpreter, and
  # its allocator made the Lua code 15 times slower.
  timeout=10
  san=fuzzer,address,undefined
  link=("${core[@]}" -lsodium -lmnl -lpthread)
  if [ "$name" = fuzz_dns ]; then
    timeout=2
    san=fuzzer,undefined
    link=(-I/usr/include/lua5.4 -llua5.4 -lm)
  fi
  if ! "$CC_FUZZ" -g -O1 -fsanitize="$san" \
      -fno-sanitize-recover=undefined -D_GNU_SOURCE -Icsrc \
      -o "$bin" "$src" "${link[@]}" >"$log" 2>&1; then
    echo "fuzz: $name FAILED (build, see $log)"
    sed -n '1,30p' "$log" >&2
    failed=$((failed + 1))
    continue
  fi
  work="$OUT/corpus/$name"
  rm -rf "$work"
  mkdir -p "$work"
  seeds=""
  for d in "fuzz/corpus/$name" "fuzz/corpus/$short"; do
    if [ -d "$d" ]; then seeds=$d; break; fi
  done
  [ -n "$seeds" ] && cp -r "$seeds"/. "$work"/ 2>/dev/null
  dict=""
  for d in "fuzz/$name.dict" "fuzz/$short.dict"; do
    if [ -f "$d" ]; then dict="-dict=$d"; break; fi
  done
  start=$(date +%s)
  # shellcheck disable=SC2086
  WGO_ROOT=$PWD UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
    "./$bin" -max_total_time="$SECONDS_PER_TARGET" -timeout="$timeout" -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$OUT/artifacts/$name-" $dict \
      "$work" >"$log" 2>&1
  rc=$?
  took=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -1)
  if [ $rc -ne 0 ]; then
    echo "fuzz: $name FAILED (exit $rc after ${execs:-?} executions, see $log)"
    grep -E 'ERROR: |runtime error|SUMMARY|Test unit written|deadly signal' "$log" | head -20 >&2
    failed=$((failed + 1))
  else
    echo "fuzz: $name ok, ${execs:-?} executions in ${took} s (corpus $(ls "$work" | wc -l) inputs${seeds:+, seeds from $seeds})"
  fi
done

[ $failed -eq 0 ]
