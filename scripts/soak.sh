#!/usr/bin/env bash
# Long soak test (`make soak`; not part of `make check`).
#
# Two pairs of engines, each in its own two network namespaces joined by a
# veth, each pair carrying a steady iperf3 TCP stream for SOAK_SECONDS
# across several real 120-second rekeys:
#   ours:         bin/wgoverlay interface  <->  bin/wgoverlay interface
#   wireguard-go: wireguard-go -f          <->  wireguard-go -f   (reference)
# Both are configured with the stock `wg` tool.  Every SOAK_SAMPLE seconds
# it samples `wg show latest-handshakes` (distinct values = handshakes, so
# rekeys = distinct - 1), VmRSS and the number of open fds of each engine
# process.  It prints RSS/fds at the start (before traffic), the baseline
# (after SOAK_WARMUP seconds of traffic: buffers and allocator arenas
# fill up during the first minute, ~1 MB) and the end, the handshake counts
# and iperf3's figures, and fails if
#   - an iperf3 run failed or had a 1-second interval that moved no data
#     (the connection dropped or stalled),
#   - one of OUR engines grew its RSS by more than SOAK_RSS_GROWTH_PCT
#     (default 20) % over the baseline, or its fd count grew,
#   - our pair did fewer rekeys than the run length allows
#     (floor((SOAK_SECONDS - 15) / 130)).
# wireguard-go's figures are printed as a reference; its growth only warns.
#
# Environment: SOAK_SECONDS (default 660), SOAK_RATE (iperf3 -b, default
# 200M per pair, so both fit on 2 cores), SOAK_SAMPLE (10), SOAK_WARMUP (60),
# SOAK_KEEP=1 keeps the work directory (logs, samples.csv, iperf3 JSON).
#
# Network safety: everything lives in namespaces wgo-soak-<pid>-{a,b,c,d}
# made here and deleted on exit (also on failure or Ctrl-C), with the
# processes started here; nothing is configured in the root namespace.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
SOAK_SECONDS=${SOAK_SECONDS:-660}
SOAK_RATE=${SOAK_RATE:-200M}
SOAK_SAMPLE=${SOAK_SAMPLE:-10}
SOAK_WARMUP=${SOAK_WARMUP:-60}
SOAK_RSS_GROWTH_PCT=${SOAK_RSS_GROWTH_PCT:-20}
BUILD=${WGO_BUILD_DIR:-build}

say() { printf 'soak: %s\n' "$*"; }
die() { printf 'soak: FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, TUN)"
for tool in ip wg wireguard-go iperf3 lua5.4; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (run make deps)"
done
[ -f "$BUILD/wgoverlay/core.so" ] || die "$BUILD/wgoverlay/core.so not built (run make)"
case $SOAK_SECONDS in ''|*[!0-9]*) die "SOAK_SECONDS must be a number of seconds" ;; esac
[ "$SOAK_SECONDS" -ge $((SOAK_WARMUP + 2 * SOAK_SAMPLE)) ] || \
  die "SOAK_SECONDS must be at least SOAK_WARMUP + 2 * SOAK_SAMPLE ($((SOAK_WARMUP + 2 * SOAK_SAMPLE)))"

TAG=$$
WORK=$(mktemp -d /tmp/wgo-soak.XXXXXX)
NAMESPACES=()
PIDS=()
IFNAMES=()

cleanup() {
  local p n i
  trap - EXIT INT TERM HUP
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for i in $(seq 1 30); do
    n=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && n=$((n + 1)); done
    [ "$n" -eq 0 ] && break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
  for n in "${NAMESPACES[@]}"; do
    # anything still running in a namespace of ours is ours
    ip netns pids "$n" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
    ip netns del "$n" 2>/dev/null
  done
  for n in "${IFNAMES[@]}"; do rm -f "/var/run/wireguard/$n.sock"; done
  if [ "${SOAK_KEEP:-0}" = 1 ]; then
    say "work directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

new_ns() {
  ip netns add "$1" || die "cannot create namespace $1"
  NAMESPACES+=("$1")
  nsx "$1" ip link set lo up
}

# start_engine IMPL NS IFNAME -> sets ENGINE_PID
start_engine() {
  local impl=$1 ns=$2 ifname=$3 log="$WORK/engine-$3.log" i
  IFNAMES+=("$ifname")
  if [ "$impl" = ours ]; then
    ip netns exec "$ns" env -u LD_PRELOAD \
      LUA_PATH_5_4="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;;" \
      LUA_CPATH_5_4="$ROOT/$BUILD/?.so;;" WGO_BUILD_DIR="$BUILD" \
      lua5.4 "$ROOT/bin/wgoverlay" interface "$ifname" </dev/null >"$log" 2>&1 &
  else
    ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error \
      wireguard-go -f "$ifname" </dev/null >"$log" 2>&1 &
  fi
  ENGINE_PID=$!
  PIDS+=("$ENGINE_PID")
  for i in $(seq 1 150); do
    kill -0 "$ENGINE_PID" 2>/dev/null || { cat "$log" >&2; die "$impl engine for $ifname exited"; }
    nsx "$ns" wg show "$ifname" public-key >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  cat "$log" >&2
  die "$impl engine for $ifname did not come up"
}

# make_pair IMPL NAME: namespaces wgo-soak-TAG-NAMEa / NAMEb, engines,
# keys, peers, overlay 10.77.0.1 <-> 10.77.0.2.  Sets PAIR_* variables
# named after NAME.
make_pair() {
  local impl=$1 name=$2 nsa="wgo-soak-$TAG-${2}a" nsb="wgo-soak-$TAG-${2}b"
  local ifa="ws${TAG}${2}a" ifb="ws${TAG}${2}b" va="vs${TAG}${2}a" vb="vs${TAG}${2}b"
  local ka kb pa pb pida pidb
  new_ns "$nsa"
  new_ns "$nsb"
  nsx "$nsa" ip link add "$va" type veth peer name "$vb" netns "$nsb" || die "veth"
  nsx "$nsa" ip addr add 192.0.2.1/24 dev "$va"
  nsx "$nsb" ip addr add 192.0.2.2/24 dev "$vb"
  nsx "$nsa" ip link set "$va" up
  nsx "$nsb" ip link set "$vb" up
  start_engine "$impl" "$nsa" "$ifa"; pida=$ENGINE_PID
  start_engine "$impl" "$nsb" "$ifb"; pidb=$ENGINE_PID
  ka="$WORK/$ifa.key"; kb="$WORK/$ifb.key"
  (umask 077; wg genkey >"$ka"; wg genkey >"$kb")
  pa=$(wg pubkey <"$ka"); pb=$(wg pubkey <"$kb")
  nsx "$nsa" wg set "$ifa" private-key "$ka" listen-port 51001 \
    peer "$pb" endpoint 192.0.2.2:51002 allowed-ips 10.77.0.2/32 || die "wg set $ifa"
  nsx "$nsb" wg set "$ifb" private-key "$kb" listen-port 51002 \
    peer "$pa" endpoint 192.0.2.1:51001 allowed-ips 10.77.0.1/32 || die "wg set $ifb"
  nsx "$nsa" ip addr add 10.77.0.1/24 dev "$ifa"
  nsx "$nsb" ip addr add 10.77.0.2/24 dev "$ifb"
  nsx "$nsa" ip link set "$ifa" mtu 1420 up
  nsx "$nsb" ip link set "$ifb" mtu 1420 up
  eval "PAIR_${name}_IMPL=$impl PAIR_${name}_NSA=$nsa PAIR_${name}_NSB=$nsb"
  eval "PAIR_${name}_IFA=$ifa PAIR_${name}_IFB=$ifb PAIR_${name}_PIDA=$pida PAIR_${name}_PIDB=$pidb"
}

pv() { eval "printf '%s' \"\$PAIR_${1}_${2}\""; }

rss_kb() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$1/status" 2>/dev/null || echo 0; }
fd_count() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }

PAIRS="o g"   # o: ours, g: wireguard-go
say "building pairs: ours (bin/wgoverlay) and wireguard-go; ${SOAK_SECONDS} s at ${SOAK_RATE}bit/s each"
make_pair ours o
make_pair wireguard-go g

# engines: label pid
ENGINES=()
for p in $PAIRS; do
  ENGINES+=("$(pv "$p" IMPL)-a:$(pv "$p" PIDA)" "$(pv "$p" IMPL)-b:$(pv "$p" PIDB)")
done

declare -A RSS0 FD0 RSSB FDB RSS1 FD1
snapshot() { # ARRAY-PREFIX: fill RSS$1 / FD$1
  local e label pid
  for e in "${ENGINES[@]}"; do
    label=${e%%:*}; pid=${e##*:}
    eval "RSS$1[\$label]=\$(rss_kb \$pid); FD$1[\$label]=\$(fd_count \$pid)"
  done
}
print_snapshot() { # TITLE PREFIX
  local e label
  for e in "${ENGINES[@]}"; do
    label=${e%%:*}
    eval "say \"$1: \$label pid ${e##*:}: RSS \${RSS$2[\$label]} kB, fds \${FD$2[\$label]}\""
  done
}

# first handshake + tunnel check
for p in $PAIRS; do
  ok=0
  for i in $(seq 1 50); do
    if nsx "$(pv "$p" NSA)" ping -n -q -c 1 -W 1 10.77.0.2 >/dev/null 2>&1; then ok=1; break; fi
  done
  [ $ok = 1 ] || die "no tunnel in pair $(pv "$p" IMPL)"
done
snapshot 0
print_snapshot "start (before traffic)" 0

# traffic
for p in $PAIRS; do
  nsx "$(pv "$p" NSB)" iperf3 -s -1 -p 5201 >"$WORK/iperf-server-$p.log" 2>&1 &
  PIDS+=("$!")
done
for p in $PAIRS; do
  for i in $(seq 1 50); do
    nsx "$(pv "$p" NSB)" ss -Hltn 'sport = :5201' | grep -q LISTEN && break
    sleep 0.1
  done
done
declare -A CLIENT
for p in $PAIRS; do
  nsx "$(pv "$p" NSA)" iperf3 -c 10.77.0.2 -p 5201 -t "$SOAK_SECONDS" -b "$SOAK_RATE" -J \
    >"$WORK/iperf-$p.json" 2>"$WORK/iperf-$p.err" &
  CLIENT[$p]=$!
  PIDS+=("$!")
done
START=$(date +%s)
echo "time,engine,pid,rss_kb,fds,latest_handshake" >"$WORK/samples.csv"

sample() {
  local now=$1 p side ns ifn pid hs label
  for p in $PAIRS; do
    for side in A B; do
      ns=$(pv "$p" "NS$side"); ifn=$(pv "$p" "IF$side"); pid=$(pv "$p" "PID$side")
      label="$(pv "$p" IMPL)-$(echo "$side" | tr AB ab)"
      hs=$(nsx "$ns" wg show "$ifn" latest-handshakes 2>/dev/null | awk '{print $2}' | head -1)
      echo "$now,$label,$pid,$(rss_kb "$pid"),$(fd_count "$pid"),${hs:-}" >>"$WORK/samples.csv"
      [ -n "${hs:-}" ] && [ "$hs" != 0 ] && echo "$hs" >>"$WORK/hs-$label"
      kill -0 "$pid" 2>/dev/null || die "engine $label (pid $pid) died"
    done
  done
}

baseline_done=0
last_progress=$START
while :; do
  running=0
  for p in $PAIRS; do kill -0 "${CLIENT[$p]}" 2>/dev/null && running=1; done
  [ $running = 1 ] || break
  now=$(date +%s)
  sample "$((now - START))"
  if [ $baseline_done = 0 ] && [ $((now - START)) -ge "$SOAK_WARMUP" ]; then
    snapshot B
    print_snapshot "baseline (after ${SOAK_WARMUP} s of traffic)" B
    baseline_done=1
  fi
  if [ $((now - last_progress)) -ge 60 ]; then
    last_progress=$now
    msg=""
    for e in "${ENGINES[@]}"; do
      label=${e%%:*}
      msg="$msg $label $(rss_kb "${e##*:}")kB/$(fd_count "${e##*:}")fd/$(sort -u "$WORK/hs-$label" 2>/dev/null | wc -l)hs"
    done
    say "t=$((now - START))s:$msg"
  fi
  # the end snapshot is taken while the engines still carry traffic
  if [ $((now - START)) -ge $((SOAK_SECONDS - SOAK_SAMPLE)) ] && [ -z "${RSS1[ours-a]:-}" ]; then
    snapshot 1
  fi
  # in the background: `wait` returns at once on a signal (Ctrl-C)
  sleep "$SOAK_SAMPLE" &
  wait $!
done
[ $baseline_done = 1 ] || { snapshot B; baseline_done=1; }
[ -n "${RSS1[ours-a]:-}" ] || snapshot 1
ELAPSED=$(( $(date +%s) - START ))
print_snapshot "end (after ${ELAPSED} s)" 1

FAIL=()
for e in "${ENGINES[@]}"; do
  label=${e%%:*}
  s0=${RSS0[$label]}; b=${RSSB[$label]}; f=${RSS1[$label]}
  growth=$(( b > 0 ? (f - b) * 1000 / b : 0 ))
  line=$(printf '%s: RSS %s kB before traffic, %s kB at the baseline, %s kB at the end (%+d.%d%% over the baseline), fds %s -> %s -> %s' \
    "$label" "$s0" "$b" "$f" $((growth / 10)) $(( (growth < 0 ? -growth : growth) % 10 )) \
    "${FD0[$label]}" "${FDB[$label]}" "${FD1[$label]}")
  say "$line"
  bad=""
  [ $((f * 100)) -gt $((b * (100 + SOAK_RSS_GROWTH_PCT))) ] && bad="RSS grew more than ${SOAK_RSS_GROWTH_PCT}%"
  [ "${FD1[$label]}" -gt "${FDB[$label]}" ] && bad="${bad:+$bad, }fds grew"
  if [ -n "$bad" ]; then
    case $label in
      ours-*) FAIL+=("$label: $bad") ;;
      *) say "warning (reference engine): $label: $bad" ;;
    esac
  fi
done

MIN_REKEYS=$(( (SOAK_SECONDS - 15) / 130 ))
for e in "${ENGINES[@]}"; do
  label=${e%%:*}
  n=$(sort -u "$WORK/hs-$label" 2>/dev/null | wc -l)
  say "$label: $n distinct handshakes seen (sampled every ${SOAK_SAMPLE} s) = $((n > 0 ? n - 1 : 0)) rekeys"
  case $label in
    ours-a)
      [ $((n - 1)) -ge $MIN_REKEYS ] || FAIL+=("$label: $((n > 0 ? n - 1 : 0)) rekeys, expected at least $MIN_REKEYS")
      ;;
  esac
done

for p in $PAIRS; do
  wait "${CLIENT[$p]}"
  rc=$?
  impl=$(pv "$p" IMPL)
  summary=$(lua5.4 - "$WORK/iperf-$p.json" <<'EOF'
local cjson = require "cjson"
local f = io.open(arg[1]) local s = f and f:read("a") or "" if f then f:close() end
local ok, r = pcall(cjson.decode, s)
if not ok or type(r) ~= "table" then print("error=unparsable iperf3 output") return end
if r.error then print("error=" .. tostring(r.error)) end
local e = r["end"] or {}
local sent, recv = e.sum_sent or {}, e.sum_received or {}
local zero, minbps, n, mint = 0, math.huge, 0, 0
for _, iv in ipairs(r.intervals or {}) do
  local sm = iv.sum or {}
  if (sm.seconds or 0) >= 0.5 then
    n = n + 1
    if (sm.bytes or 0) == 0 then zero = zero + 1 end
    if (sm.bits_per_second or 0) < minbps then minbps, mint = sm.bits_per_second or 0, sm.start or 0 end
  end
end
print(("sent=%d received=%d retransmits=%d mbps=%.1f intervals=%d zero_intervals=%d min_interval_mbps=%.1f (at %.0f s)"):format(
  sent.bytes or 0, recv.bytes or 0, sent.retransmits or 0, (recv.bits_per_second or 0) / 1e6, n, zero,
  (minbps == math.huge and 0 or minbps) / 1e6, mint))
EOF
)
  say "iperf3 $impl: exit $rc, $summary"
  zero=$(echo "$summary" | sed -n 's/.*zero_intervals=\([0-9]*\).*/\1/p')
  if [ "$rc" -ne 0 ] || echo "$summary" | grep -q 'error='; then
    FAIL+=("iperf3 $impl failed (exit $rc): $(head -c 300 "$WORK/iperf-$p.err")")
  elif [ "${zero:-0}" -gt 0 ]; then
    FAIL+=("iperf3 $impl: $zero one-second intervals without data (connection dropped or stalled)")
  fi
done

# engine logs (anything the engines printed)
for f in "$WORK"/engine-*.log; do
  [ -s "$f" ] && { say "log $(basename "$f"):"; sed -n '1,20p' "$f"; }
done

if [ ${#FAIL[@]} -gt 0 ]; then
  for m in "${FAIL[@]}"; do say "FAILED: $m"; done
  exit 1
fi
say "passed: ${ELAPSED} s, no drop, RSS and fds bounded, rekeys as expected"
