#!/usr/bin/env bash
# Run every test of the project and print one closing line
#   N passed, N failed[, N skipped]
# Parts: (a) C unit tests build/tests/test_* (and test_aead, test_proto
# again forced to libsodium, WGO_AEAD=libsodium), (b) busted unit specs,
# (c) busted integration specs (#netns, root only), (d) a short run of each
# fuzz target, (e) with CHECK_SANITIZE=1: a SANITIZE=1 build and the C tests
# and specs again under AddressSanitizer/UBSan, (f) the C tests and three
# unit specs that load the native core under valgrind memcheck.
# Environment: CHECK_SANITIZE=1, CHECK_FUZZ_SECONDS (default 20; 0 skips
# fuzzing), CHECK_VALGRIND (default 1; 0 skips valgrind), WGO_TEST_IMPL
# (see spec/helpers.lua).
# Busted runs print each spec file's wall time after their summary
# (spec/timed_output.lua).
# Called by `make check` after `make all`.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
LOGDIR=$(mktemp -d /tmp/wgo-check.XXXXXX)
trap 'rm -rf "$LOGDIR"' EXIT
BUSTED=(lua5.4 /usr/bin/busted)
FUZZ_SECONDS=${CHECK_FUZZ_SECONDS:-20}

PASSED=0
FAILED=0
SKIPPED=0
FAILURES=()

section() { printf '\n=== %s ===\n' "$*"; }
fail() { FAILED=$((FAILED + ${2:-1})); FAILURES+=("$1"); }
skip() { SKIPPED=$((SKIPPED + 1)); echo "check: skipped: $*"; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# (a) C unit tests: each prints "<name>: N passed, N failed".  A test
# binary test_X with a wrapper tests/c/run_X_test.sh (e.g. one that needs
# its own network namespace) is run through the wrapper.
run_c_tests() {
  local dir=$1 label=$2 found=0 t out rc p f name runner
  for t in "$dir"/test_*; do
    [ -f "$t" ] && [ -x "$t" ] || continue
    found=1
    name=$(basename "$t")
    runner="tests/c/run_${name#test_}_test.sh"
    out="$LOGDIR/$name.$label.log"
    if [ -f "$runner" ]; then
      sh "$runner" "$ROOT/$t" >"$out" 2>&1
    else
      "$t" >"$out" 2>&1
    fi
    rc=$?
    cat "$out"
    read -r p f < <(sed -n 's/^.*: *\([0-9][0-9]*\) passed, *\([0-9][0-9]*\) failed.*$/\1 \2/p' "$out" | tail -1)
    # One C test binary counts as one test (its line above gives the
    # number of checks inside it).
    if [ -n "${p:-}" ]; then
      if [ "$f" -gt 0 ]; then
        fail "$label $(basename "$t"): $f of $((p + f)) checks failed"
      elif [ $rc -ne 0 ]; then
        fail "$label $(basename "$t"): exit $rc"
      else
        PASSED=$((PASSED + 1))
      fi
    elif [ $rc -eq 0 ]; then
      PASSED=$((PASSED + 1))
    else
      fail "$label $(basename "$t"): exit $rc without a summary"
    fi
    p='' f=''
  done
  [ $found -eq 1 ] || echo "check: no C tests in $dir/"
}

have_specs() {
  local d
  for d in "$@"; do
    [ -d "$d" ] && find "$d" -name '*_spec.lua' | grep -q . && return 0
  done
  return 1
}

# Busted: parse "N successes / N failures / N errors / N pending".
run_busted() {
  local label=$1; shift
  local out="$LOGDIR/busted.$label.log" rc line s f e p
  env "$@" >"$out" 2>&1
  rc=$?
  cat "$out"
  # (not anchored: a child process may write onto the same line first)
  line=$(grep -oE '[0-9]+ success(es)? / [0-9]+ failures? / [0-9]+ errors? / [0-9]+ pending' "$out" | tail -1)
  if [ -z "$line" ]; then
    if grep -q 'No test files found' "$out"; then
      echo "check: $label: no spec files"
      return
    fi
    fail "busted $label: no summary (exit $rc)"
    return
  fi
  read -r s f e p < <(echo "$line" | sed -E 's#^([0-9]+) [a-z]+ / ([0-9]+) [a-z]+ / ([0-9]+) [a-z]+ / ([0-9]+) pending.*#\1 \2 \3 \4#')
  PASSED=$((PASSED + s))
  SKIPPED=$((SKIPPED + p))
  [ $((f + e)) -gt 0 ] && fail "busted $label: $f failures, $e errors" $((f + e))
  if [ $rc -ne 0 ] && [ $((f + e)) -eq 0 ]; then fail "busted $label: exit $rc"; fi
}

# Namespaces or UAPI sockets left behind by the specs are a failure.  Their
# names carry the pid of the busted process that made them; only those of
# processes that have exited count (other runs may be going on).
check_leftovers() {
  local label=$1 n s pid left=()
  for n in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    pid=$(echo "$n" | sed -n 's/^wgo-[A-Za-z0-9]*-\([0-9][0-9]*\)-[A-Za-z0-9]*$/\1/p')
    [ -n "$pid" ] && [ ! -d "/proc/$pid" ] || continue
    left+=("$n")
    ip netns pids "$n" | xargs -r kill -KILL
    ip netns del "$n"
  done
  for s in /var/run/wireguard/wt*x*.sock; do
    [ -e "$s" ] || continue
    pid=$(basename "$s" | sed -n 's/^wt\([0-9][0-9]*\)x.*/\1/p')
    [ -n "$pid" ] && [ ! -d "/proc/$pid" ] || continue
    left+=("$(basename "$s")")
    rm -f "$s"
  done
  if [ ${#left[@]} -gt 0 ]; then fail "$label: left behind: ${left[*]}"; fi
}

busted_parts() { # label-suffix env...
  local sfx=$1; shift
  section "busted unit specs$sfx"
  if have_specs spec/unit; then
    run_busted "unit$sfx" "$@" "${BUSTED[@]}" -o spec/timed_output.lua --run=unit
  else
    echo "check: no unit specs"
  fi
  section "busted integration specs$sfx (#netns)"
  if ! have_specs spec/integration; then
    echo "check: no integration specs"
  elif ! is_root; then
    skip "integration specs need root"
  else
    run_busted "integration$sfx" "$@" "${BUSTED[@]}" -o spec/timed_output.lua --run=integration
    check_leftovers "integration$sfx"
  fi
}

section "C unit tests (build/tests)"
run_c_tests build/tests c

# Both AEAD paths.  The runs above and below use the AEAD chosen at load
# time: our AVX-512 code where the CPU has it.  test_vectors tests every
# backend in one run; test_aead and test_proto run again forced to
# libsodium (WGO_AEAD=libsodium), and so do the interop and rekey specs
# further down.  Without AVX-512 everything already ran on libsodium: a
# note says so and the second pass is skipped.
AVX512=0
grep -q 'implementation avx512' "$LOGDIR/test_aead.c.log" 2>/dev/null && AVX512=1
section "C AEAD tests forced to libsodium (WGO_AEAD=libsodium)"
if [ $AVX512 = 1 ]; then
  mkdir -p "$LOGDIR/libsodium"
  ln -sf "$ROOT/build/tests/test_aead" "$ROOT/build/tests/test_proto" "$LOGDIR/libsodium/"
  WGO_AEAD=libsodium run_c_tests "$LOGDIR/libsodium" c-libsodium
  grep -q 'implementation libsodium' "$LOGDIR/test_aead.c-libsodium.log" ||
    fail "WGO_AEAD=libsodium did not select libsodium"
else
  echo "check: note: no AVX-512 (with IFMA) here: the AEAD tests ran on libsodium only; the AVX-512 path is untested on this machine"
fi

busted_parts "" WGO_BUILD_DIR=build

# The other AEAD path on the wire: interop with wireguard-go (both
# directions, v4/v6, PSK, roaming) and a rekey during an iperf3 run, with
# our engine forced to libsodium (the runs above used AVX-512).
section "interop and rekey specs forced to libsodium (WGO_AEAD=libsodium, #netns)"
if [ $AVX512 = 0 ]; then
  echo "check: note: no AVX-512 here: the interop specs above already ran on libsodium"
elif ! is_root; then
  skip "WGO_AEAD=libsodium integration specs need root"
else
  run_busted "integration-libsodium" WGO_BUILD_DIR=build WGO_AEAD=libsodium "${BUSTED[@]}" -o spec/timed_output.lua \
    spec/integration/interop_spec.lua spec/integration/rekey_spec.lua
  check_leftovers "integration-libsodium"
fi

section "fuzz targets (${FUZZ_SECONDS} s each)"
if [ "$FUZZ_SECONDS" = 0 ]; then
  skip "fuzzing (CHECK_FUZZ_SECONDS=0)"
else
  fuzzlog="$LOGDIR/fuzz.log"
  scripts/fuzz.sh "$FUZZ_SECONDS" 2>&1 | tee "$fuzzlog"
  frc=${PIPESTATUS[0]}
  ok=$(grep -c '^fuzz: .* ok,' "$fuzzlog")
  bad=$(grep -c '^fuzz: .* FAILED' "$fuzzlog")
  PASSED=$((PASSED + ok))
  [ "$bad" -gt 0 ] && fail "fuzz: $bad target(s) failed" "$bad"
  if [ "$frc" -ne 0 ] && [ "$bad" -eq 0 ]; then fail "fuzz.sh exit $frc"; fi
fi

# (f) valgrind memcheck.  Each C test binary, and one busted run of the
# unit specs that load wgoverlay.core, count as one test each.  Only
# definite leaks and memory errors (invalid reads/writes, uses of
# uninitialised values, bad frees) fail: Debian's lua5.4 and libsodium
# leave "still reachable" blocks, which are not reported.  About 20 s here
# (2 cores), so on by default; CHECK_VALGRIND=0 skips it.
VALGRIND_SPECS=(spec/unit/keys_spec.lua spec/unit/cidr_spec.lua spec/unit/config_spec.lua)
run_valgrind() { # label command... (counts one test)
  local label=$1; shift
  local out="$LOGDIR/valgrind.$label.log" rc p f
  "$@" >"$out" 2>&1
  rc=$?
  read -r p f < <(sed -n 's/^.*: *\([0-9][0-9]*\) passed, *\([0-9][0-9]*\) failed.*$/\1 \2/p' "$out" | tail -1)
  if [ $rc -eq 99 ]; then
    grep '^==[0-9]*== ' "$out" | head -60
    fail "valgrind $label: memcheck errors (see above)"
  elif [ $rc -ne 0 ]; then
    tail -20 "$out"
    fail "valgrind $label: exit $rc"
  elif [ -n "${f:-}" ] && [ "$f" -gt 0 ]; then
    fail "valgrind $label: $f checks failed"
  else
    echo "valgrind: $label ok$( [ -n "${p:-}" ] && echo ", $p checks")"
    PASSED=$((PASSED + 1))
  fi
}

if [ "${CHECK_VALGRIND:-1}" = 0 ]; then
  skip "valgrind (CHECK_VALGRIND=0)"
elif ! command -v valgrind >/dev/null 2>&1; then
  skip "valgrind not installed"
else
  section "valgrind memcheck (C tests, unit specs loading the core)"
  vg_start=$(date +%s)
  VG=(valgrind -q --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite
      --error-exitcode=99)
  for t in build/tests/test_*; do
    [ -f "$t" ] && [ -x "$t" ] || continue
    name=$(basename "$t")
    runner="tests/c/run_${name#test_}_test.sh"
    if [ -f "$runner" ]; then
      # the runner runs the binary it is given (in its namespaces): give
      # it a wrapper that runs the real one under valgrind
      wrapper="$LOGDIR/vg-$name"
      printf '#!/bin/sh\nexec %s "%s" "$@"\n' "${VG[*]}" "$ROOT/$t" >"$wrapper"
      chmod +x "$wrapper"
      run_valgrind "$name" sh "$runner" "$wrapper"
    else
      run_valgrind "$name" "${VG[@]}" "$t"
    fi
  done
  run_valgrind "busted-unit-core" env WGO_BUILD_DIR=build "${VG[@]}" "${BUSTED[@]}" -o plainTerminal \
    "${VALGRIND_SPECS[@]}"
  echo "valgrind: took $(( $(date +%s) - vg_start )) s"
fi

if [ "${CHECK_SANITIZE:-0}" = 1 ]; then
  section "sanitizer build (make SANITIZE=1 all)"
  if make --no-print-directory SANITIZE=1 all; then
    section "C unit tests (build-san/tests, ASan+UBSan)"
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} UBSAN_OPTIONS=print_stacktrace=1 \
      run_c_tests build-san/tests c-san
    if [ $AVX512 = 1 ]; then
      mkdir -p "$LOGDIR/san-libsodium"
      ln -sf "$ROOT/build-san/tests/test_aead" "$LOGDIR/san-libsodium/"
      WGO_AEAD=libsodium ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} UBSAN_OPTIONS=print_stacktrace=1 \
        run_c_tests "$LOGDIR/san-libsodium" c-san-libsodium
    fi
    asan=$(gcc -print-file-name=libasan.so)
    if [ ! -e "$asan" ]; then
      fail "ASan runtime not found (gcc -print-file-name=libasan.so)"
    else
      busted_parts " (sanitized)" WGO_BUILD_DIR=build-san LD_PRELOAD="$asan" \
        WGO_ENGINE_PRELOAD="$asan" ASAN_OPTIONS=detect_leaks=0 \
        UBSAN_OPTIONS=print_stacktrace=1
    fi
  else
    fail "make SANITIZE=1 all"
  fi
fi

section "summary"
for m in "${FAILURES[@]}"; do echo "FAILED: $m"; done
if [ "$SKIPPED" -gt 0 ]; then
  echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
else
  echo "$PASSED passed, $FAILED failed"
fi
[ "$FAILED" -eq 0 ]
