#!/usr/bin/env bash
# Benchmark our engine against wireguard-go, each pair in two fresh network
# namespaces joined by a veth (192.0.2.0/24 underlay, 10.66.0.0/24 overlay):
#   - TCP throughput with iperf3, 1 stream and 2 streams (-P 2)
#   - ping RTT over the idle tunnel (average of 50 pings, 0.05 s apart)
#   - CPU seconds used by both engine processes during the 1-stream run
#     (utime+stime from /proc/PID/stat) and CPU seconds per Gbit carried
#   - UDP receive-buffer drops (UdpRcvbufErrors, IPv4+IPv6) in both
#     namespaces during the throughput runs
# and prints one table with these columns:
#   ours             build/, the AEAD chosen at load time (avx512 on an
#                    AVX-512 CPU), named in the header
#   ours libsodium   the same build forced to libsodium (WGO_AEAD=libsodium)
#   wireguard-go     Debian's wireguard-go
#   no-crypto        build-bench-nocrypto/ (`make bench` builds it with
#                    BENCH_NOCRYPTO=1): our datapath with the transport
#                    AEAD taken out, its ceiling; never a run-time option
#   relay floor      ping only: bench/relay_floor, TUN <-> UDP with no
#                    crypto and no protocol, the latency floor here
# and the ratios: ours and libsodium against wireguard-go, ours against
# the no-crypto ceiling, ours' ping against the relay floor.
#
# Environment:
#   WGO_BENCH_IMPL=wireguard-go   run the "ours" rows with wireguard-go (to
#                                 validate this script without our engine)
#   BENCH_SECONDS=10              length of each iperf3 run
# Needs root.  Everything it makes (namespaces, processes, UAPI sockets) is
# removed on exit; nothing is configured in the root namespace.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
OURS_IMPL=${WGO_BENCH_IMPL:-ours}
SECS=${BENCH_SECONDS:-10}
TAG=$$
TMP=$(mktemp -d /tmp/wgo-bench.XXXXXX)
CLK_TCK=$(getconf CLK_TCK)

if [ "$(id -u)" -ne 0 ]; then
  echo "bench: needs root (network namespaces)" >&2
  exit 1
fi
for tool in iperf3 wg ping ip lua5.4; do
  command -v "$tool" >/dev/null || { echo "bench: $tool not found (scripts/deps.sh)" >&2; exit 1; }
done

NAMESPACES=()
PIDS=()
IFNAMES=()

cleanup() {
  local p n
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive -eq 0 ] && break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for n in "${NAMESPACES[@]}"; do
    ip netns pids "$n" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    ip netns del "$n" 2>/dev/null || true
  done
  for n in "${IFNAMES[@]}"; do rm -f "/var/run/wireguard/$n.sock"; done
  PIDS=() NAMESPACES=() IFNAMES=()
}
trap 'cleanup; rm -rf "$TMP"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# utime+stime of a process, in clock ticks
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }

# UDP receive-buffer errors (IPv4 + IPv6) seen inside a namespace
rcvbuf_errors() {
  in_ns "$1" awk '
    $1 == "Udp:" && !h { for (i = 2; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1; next }
    $1 == "Udp:" && h  { n += $c }
    $1 == "Udp6RcvbufErrors" { n += $2 }
    END { print n + 0 }' /proc/net/snmp /proc/net/snmp6
}

json_field() { # FILE LUA-EXPRESSION-ON-j
  lua5.4 - "$1" "$2" <<'LUA'
local cjson = require "cjson"
local f = assert(io.open(arg[1]))
local j = cjson.decode(f:read("a"))
f:close()
local v = load("local j = ...; return " .. arg[2])(j)
print(string.format("%.0f", v))
LUA
}

start_engine() { # NS IMPL IFNAME LOG [BUILD [AEAD]] -> sets ENGINE_PID
  local ns=$1 impl=$2 ifname=$3 log=$4 build=${5:-build} aead=${6:-auto}
  case "$impl" in
    ours)
      ip netns exec "$ns" env WGO_BUILD_DIR="$ROOT/$build" WGO_AEAD="$aead" \
        LUA_PATH_5_4="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;;" \
        LUA_CPATH_5_4="$ROOT/$build/?.so;;" \
        lua5.4 "$ROOT/bin/wgoverlay" interface "$ifname" </dev/null >"$log" 2>&1 &
      ;;
    wireguard-go)
      ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error \
        wireguard-go -f "$ifname" </dev/null >"$log" 2>&1 &
      ;;
    *) echo "bench: unknown implementation $impl" >&2; exit 1 ;;
  esac
  ENGINE_PID=$!
  PIDS+=("$ENGINE_PID")
  IFNAMES+=("$ifname")
  for _ in $(seq 150); do
    if [ -S "/var/run/wireguard/$ifname.sock" ] && in_ns "$ns" wg show "$ifname" >/dev/null 2>&1; then
      return 0
    fi
    kill -0 "$ENGINE_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench: $impl engine for $ifname did not start:" >&2
  cat "$log" >&2
  exit 1
}

# underlay NSA NSB: two fresh namespaces joined by a veth, 192.0.2.1 in
# NSA and 192.0.2.2 in NSB (one pair exists at a time).
underlay() {
  local nsa=$1 nsb=$2
  ip netns add "$nsa"; NAMESPACES+=("$nsa")
  ip netns add "$nsb"; NAMESPACES+=("$nsb")
  in_ns "$nsa" ip link set lo up
  in_ns "$nsb" ip link set lo up
  in_ns "$nsa" ip link add "vb${TAG}a" type veth peer name "vb${TAG}b" netns "$nsb"
  in_ns "$nsa" ip addr add 192.0.2.1/24 dev "vb${TAG}a"
  in_ns "$nsb" ip addr add 192.0.2.2/24 dev "vb${TAG}b"
  in_ns "$nsa" ip link set "vb${TAG}a" up
  in_ns "$nsb" ip link set "vb${TAG}b" up
}

# ping_rtt NS OUT: average RTT of 50 pings 0.05 s apart to 10.66.0.2 over
# an otherwise idle tunnel, into OUT.rtt (OUT.ping: ping's output)
ping_rtt() {
  in_ns "$1" ping -n -q -c 50 -i 0.05 10.66.0.2 >"$2.ping" 2>&1 || true
  sed -n 's#^rtt [^=]*= [0-9.]*/\([0-9.]*\)/.*#\1#p' "$2.ping" >"$2.rtt"
}

# run_pair LABEL IMPL [BUILD [AEAD]]: measures one implementation, writes
# $TMP/LABEL.* (LABEL.aead: the AEAD named on our engine's start line)
run_pair() {
  local label=$1 impl=$2 build=${3:-build} aead=${4:-auto}
  local nsa="wgo-bench-$TAG-${label}a" nsb="wgo-bench-$TAG-${label}b"
  local ifa="wgb${TAG}${label}a" ifb="wgb${TAG}${label}b"
  local out="$TMP/$label"
  echo "bench: $label row: $impl" >&2
  underlay "$nsa" "$nsb"

  start_engine "$nsa" "$impl" "$ifa" "$out.engine-a.log" "$build" "$aead"; local pida=$ENGINE_PID
  start_engine "$nsb" "$impl" "$ifb" "$out.engine-b.log" "$build" "$aead"; local pidb=$ENGINE_PID
  sed -n 's/^wgoverlay: interface .*, AEAD \(.*\)$/\1/p' "$out.engine-a.log" | head -1 >"$out.aead"

  (umask 077; wg genkey >"$out.ka"; wg genkey >"$out.kb")
  local puba pubb
  puba=$(wg pubkey <"$out.ka"); pubb=$(wg pubkey <"$out.kb")
  in_ns "$nsa" wg set "$ifa" private-key "$out.ka" listen-port 51001 \
    peer "$pubb" endpoint 192.0.2.2:51002 allowed-ips 10.66.0.2/32
  in_ns "$nsb" wg set "$ifb" private-key "$out.kb" listen-port 51002 \
    peer "$puba" endpoint 192.0.2.1:51001 allowed-ips 10.66.0.1/32
  in_ns "$nsa" ip addr add 10.66.0.1/24 dev "$ifa"
  in_ns "$nsb" ip addr add 10.66.0.2/24 dev "$ifb"
  in_ns "$nsa" ip link set "$ifa" mtu 1420 up
  in_ns "$nsb" ip link set "$ifb" mtu 1420 up

  local ok=0
  for _ in $(seq 20); do
    if in_ns "$nsa" ping -c 1 -W 1 10.66.0.2 >/dev/null 2>&1; then ok=1; break; fi
  done
  [ $ok -eq 1 ] || { echo "bench: no tunnel for $impl" >&2; exit 1; }

  # latency over the idle tunnel
  ping_rtt "$nsa" "$out"

  in_ns "$nsb" iperf3 -s -p 5201 >"$out.iperf-server.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 50); do
    in_ns "$nsb" ss -Hltn 'sport = :5201' | grep -q LISTEN && break
    sleep 0.1
  done

  local drops0 drops1 cpu0 cpu1
  drops0=$(( $(rcvbuf_errors "$nsa") + $(rcvbuf_errors "$nsb") ))
  cpu0=$(( $(cpu_ticks "$pida") + $(cpu_ticks "$pidb") ))
  in_ns "$nsa" iperf3 -c 10.66.0.2 -p 5201 -t "$SECS" -J >"$out.tcp1.json"
  cpu1=$(( $(cpu_ticks "$pida") + $(cpu_ticks "$pidb") ))
  in_ns "$nsa" iperf3 -c 10.66.0.2 -p 5201 -t "$SECS" -P 2 -J >"$out.tcp2.json"
  drops1=$(( $(rcvbuf_errors "$nsa") + $(rcvbuf_errors "$nsb") ))

  json_field "$out.tcp1.json" 'j["end"].sum_received.bits_per_second' >"$out.bps1"
  json_field "$out.tcp1.json" 'j["end"].sum_received.bytes' >"$out.bytes1"
  json_field "$out.tcp2.json" 'j["end"].sum_received.bits_per_second' >"$out.bps2"
  echo $((cpu1 - cpu0)) >"$out.cputicks"
  echo $((drops1 - drops0)) >"$out.drops"
  cleanup
}

# run_floor: ping through a pair of build/bench/relay_floor (TUN <-> UDP,
# no crypto, no protocol, one thread in poll()): the latency floor of any
# userspace tunnel that does not busy-poll, on this machine.  Writes
# $TMP/f.rtt.
run_floor() {
  local nsa="wgo-bench-$TAG-fa" nsb="wgo-bench-$TAG-fb" relay="$ROOT/build/bench/relay_floor"
  [ -x "$relay" ] || { echo "bench: $relay not built: no latency floor" >&2; return 0; }
  echo "bench: latency floor: relay_floor" >&2
  underlay "$nsa" "$nsb"
  in_ns "$nsa" "$relay" "rf${TAG}a" 51001 192.0.2.2 51002 >"$TMP/f.a.log" 2>&1 &
  PIDS+=("$!")
  in_ns "$nsb" "$relay" "rf${TAG}b" 51002 192.0.2.1 51001 >"$TMP/f.b.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 50); do
    in_ns "$nsa" ip link show "rf${TAG}a" >/dev/null 2>&1 && in_ns "$nsb" ip link show "rf${TAG}b" >/dev/null 2>&1 && break
    sleep 0.1
  done
  in_ns "$nsa" ip addr add 10.66.0.1/24 dev "rf${TAG}a"
  in_ns "$nsb" ip addr add 10.66.0.2/24 dev "rf${TAG}b"
  in_ns "$nsa" ip link set "rf${TAG}a" up
  in_ns "$nsb" ip link set "rf${TAG}b" up
  in_ns "$nsa" ping -c 1 -W 1 10.66.0.2 >/dev/null 2>&1 || true
  ping_rtt "$nsa" "$TMP/f"
  cleanup
}

# Our rows: label:build:WGO_AEAD
[ -f "$ROOT/build/wgoverlay/core.so" ] || { echo "bench: build/wgoverlay/core.so not built (make all)" >&2; exit 1; }
ROWS=("o:build:auto" "l:build:libsodium")
if [ -f "$ROOT/build-bench-nocrypto/wgoverlay/core.so" ]; then
  ROWS+=("c:build-bench-nocrypto:auto")
else
  echo "bench: build-bench-nocrypto/ not built (make bench builds it): no ceiling" >&2
fi

run_pair g wireguard-go
for r in "${ROWS[@]}"; do
  IFS=: read -r label build aead <<<"$r"
  run_pair "$label" "$OURS_IMPL" "$build" "$aead"
done
run_floor

# Print the table (numbers formatted in Lua for floating point).
lua5.4 - "$TMP" "$CLK_TCK" "$SECS" "$OURS_IMPL" <<'EOF'
local dir, tck, secs, impl = arg[1], tonumber(arg[2]), arg[3], arg[4]
local lib = dofile("scripts/benchlib.lua")
local function num(row, what) return lib.num(dir, row, what) end
local function aead(row)
  local f = io.open(dir .. "/" .. row .. ".aead")
  local s = f and f:read("l")
  if f then f:close() end
  return s ~= "" and s or nil
end
local function metrics(row)
  local m = {}
  m.tcp1 = num(row, "bps1") and num(row, "bps1") / 1e9
  m.tcp2 = num(row, "bps2") and num(row, "bps2") / 1e9
  m.rtt = num(row, "rtt")
  m.cpu = num(row, "cputicks") and num(row, "cputicks") / tck
  local gbit = num(row, "bytes1") and num(row, "bytes1") * 8 / 1e9
  m.cpu_per_gbit = m.cpu and gbit and gbit > 0 and m.cpu / gbit or nil
  m.drops = num(row, "drops")
  return m
end
local o, l, g, c = metrics("o"), metrics("l"), metrics("g"), metrics("c")
local floor = { rtt = num("f", "rtt") }
local real = impl == "ours"
local ours_name = real and ("ours (" .. (aead("o") or "?") .. ")") or ("ours=" .. impl)
local lsod_name = real and ("ours (" .. (aead("l") or "?") .. ", forced)") or ("ours=" .. impl)
local function ratio(a, b) return a and b and b ~= 0 and a / b or nil end
local function fmt(f, v) return v and f:format(v) or "n/a" end
local function x(r) return r and ("%.2fx"):format(r) or "-" end
local function pct(r) return r and ("%.0f%%"):format(100 * r) or "-" end
local function verdict(ok) if ok == nil then return "n/a" end return ok and "met" or "not met" end

local lines = { { "metric", ours_name, lsod_name, "wireguard-go", "no-crypto ceiling", "relay floor",
  "ours / wg-go", "libsodium / wg-go", "ours / ceiling", "ours / floor", "target" } }
local function row(name, key, f, target, check)
  local r_g, r_c, r_f = ratio(o[key], g[key]), ratio(o[key], c[key]), ratio(o[key], floor[key])
  lines[#lines + 1] = { name, fmt(f, o[key]), fmt(f, l[key]), fmt(f, g[key]), fmt(f, c[key]),
    floor[key] and fmt(f, floor[key]) or "", x(r_g), x(ratio(l[key], g[key])),
    (key == "tcp1" or key == "tcp2") and pct(r_c) or "", r_f and x(r_f) or "",
    target and (target .. " (" .. verdict(check(r_g, r_c, r_f)) .. ")") or "-" }
end
row("TCP 1 stream, Gbit/s", "tcp1", "%.3f", ">= 8x wg-go and >= 75% of ceiling",
  function(rg, rc) if rg == nil or rc == nil then return nil end return rg >= 8 and rc >= 0.75 end)
row("TCP 2 streams, Gbit/s", "tcp2", "%.3f", ">= 8x wg-go",
  function(rg) if rg == nil then return nil end return rg >= 8 end)
row("ping RTT avg, ms (idle tunnel)", "rtt", "%.3f", "<= 1.3x relay floor",
  function(_, _, rf) if rf == nil then return nil end return rf <= 1.3 end)
row("CPU s per Gbit (1 stream)", "cpu_per_gbit", "%.3f", "< 1x wg-go",
  function(rg) if rg == nil then return nil end return rg < 1 end)
row("engine CPU s (1 stream, " .. secs .. " s)", "cpu", "%.2f")
row("UdpRcvbufErrors (TCP runs)", "drops", "%d")
lib.print_table(lines)
print()
print("no-crypto ceiling: build-bench-nocrypto/ (built by make bench only), our datapath with the transport\n"
  .. "AEAD replaced by nothing (handshakes stay real); relay floor: bench/relay_floor, TUN <-> UDP with no\n"
  .. "crypto and no protocol, one thread in poll(), no busy polling.")
EOF

# Engine metrics: handshake rate, 10,000 peers, idle wake-ups.
echo
scripts/bench_scale.sh

# The registry at scale: a join reaching 500 members, etcd vs the embedded
# leader (real registry code, simulated members, real etcd).
echo
echo "== registry: time from a join to all members applying it (500 simulated members, 20 joins)"
scripts/bench_registry.sh 500 20 | awk '
  { v[$2 " " $3] = $4 }
  END {
    printf "%-28s %12s %12s\n", "metric", "etcd", "embedded"
    n = split("all_applied_p50_ms all_applied_p99_ms member_applied_p50_ms member_applied_p99_ms joins_applied_everywhere", k, " ")
    for (i = 1; i <= n; i++) printf "%-28s %12s %12s\n", k[i], v["etcd " k[i]], v["embedded " k[i]]
    printf "%-28s %12s %12s\n", "etcd_requests_per_s (joins)", v["etcd etcd_requests_per_s"], "-"
    printf "%-28s %12s %12s\n", "etcd_requests_per_s (idle)", v["etcd idle_etcd_requests_per_s"], "-"
  }'

# Network policy: TCP between containers on two nodes of a real cluster,
# a 1,000-rule policy in force against none (scripts/bench_policy.lua).
echo
echo "== network policy: container-to-container TCP across nodes, 1,000 rules vs none"
lua5.4 scripts/bench_policy.lua
