#!/usr/bin/env bash
# Engine metrics for `make bench` (called by scripts/bench.sh), ours and
# wireguard-go in the same run:
#   - responder handshakes per second on one core (ours: protocol layer,
#     build/bench/bench_handshake)
#   - 10,000 peers with allowed-ips through one `wg setconf`: time,
#     `wg show dump` time, resident memory per peer
#   - wake-ups of an idle interface with no peers (context switches of all
#     its threads over 5 s)
# Each engine runs alone in a fresh network namespace; everything is
# removed on exit.  Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${WGO_BUILD_DIR:-build}
N=${BENCH_PEERS:-10000}
TAG=$$
TMP=$(mktemp -d /tmp/wgo-bscale.XXXXXX)
NS=wgo-bs-$TAG
PID=""
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && sleep 0.3
  ip netns del "$NS" 2>/dev/null || true
  rm -f /var/run/wireguard/wbs*"$TAG".sock
  rm -rf "$TMP"
}
trap cleanup EXIT

LUA_CPATH="$BUILD/?.so;;" lua5.4 - "$N" > "$TMP/peers.conf" <<'LUA'
local core = require "wgoverlay.core"
local n = tonumber(arg[1])
local function key() return core.key_to_base64(core.random(32)) end
print(("[Interface]\nPrivateKey = %s\nListenPort = 51820\n"):format(key()))
for i = 0, n - 1 do
  print(("[Peer]\nPublicKey = %s\nAllowedIPs = 10.%d.%d.%d/32, fd00::%x/128\n"):format(
    key(), 10 + ((i >> 16) & 255), (i >> 8) & 255, i & 255, i + 1))
end
LUA

now() { date +%s.%N; }
ctxsw() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/voluntary_ctxt_switches/ { s += $2 } END { print s + 0 }'; }
rss_kb() { awk '/VmRSS/ { print $2 }' /proc/"$1"/status; }

measure() { # LABEL IFNAME COMMAND...
  local label=$1 ifname=$2; shift 2
  ip netns add "$NS"
  ip netns exec "$NS" "$@" >"$TMP/$label.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do [ -S /var/run/wireguard/$ifname.sock ] && break; sleep 0.05; done
  sleep 1
  local c0 c1 r0 r1 t0 t1 t2
  c0=$(ctxsw "$PID"); sleep 5; c1=$(ctxsw "$PID")
  echo "$((c1 - c0))" > "$TMP/$label.idle"
  r0=$(rss_kb "$PID")
  t0=$(now); wg setconf "$ifname" "$TMP/peers.conf"; t1=$(now)
  wg show "$ifname" dump > "$TMP/$label.dump"; t2=$(now)
  r1=$(rss_kb "$PID")
  [ "$(wc -l < "$TMP/$label.dump")" -eq $((N + 1)) ] || echo "bench: $label dump has $(wc -l < "$TMP/$label.dump") lines" >&2
  awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }' > "$TMP/$label.setconf"
  awk -v a="$t1" -v b="$t2" 'BEGIN { print b - a }' > "$TMP/$label.dumpt"
  echo "$(( (r1 - r0) * 1024 / N ))" > "$TMP/$label.mem"
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  ip netns del "$NS"
}

# ours: the engine runs in a process of its own (bin/wgoverlay interface)
measure o "wbso$TAG" env WGO_BUILD_DIR="$BUILD" lua5.4 bin/wgoverlay interface "wbso$TAG"
measure g "wbsg$TAG" env WG_PROCESS_FOREGROUND=1 wireguard-go -f "wbsg$TAG"
"$BUILD/bench/bench_handshake" 3000 | sed -n 's/.*handshakes\/s \([0-9]*\).*/\1/p' > "$TMP/o.hs"

lua5.4 - "$TMP" "$N" <<'LUA'
local dir, n = arg[1], arg[2]
local lib = dofile("scripts/benchlib.lua")
local function num(row, what) return lib.num(dir, row, what) end
local rows = {
  { "responder handshakes/s, one core", "hs", "%.0f", ">= 5000 (ours)", function(v) return v >= 5000 end },
  { n .. " peers: wg setconf, s", "setconf", "%.3f", "< 1 s", function(v) return v < 1 end },
  { n .. " peers: wg show dump, s", "dumpt", "%.3f", "< 0.1 s", function(v) return v < 0.1 end },
  { "memory per idle peer, bytes", "mem", "%d", "< 4096", function(v) return v < 4096 end },
  { "idle wake-ups in 5 s (no peers)", "idle", "%d", "timers only", function(v) return v <= 5 end },
}
local lines = { { "engine metric", "ours", "wireguard-go", "target" } }
for _, r in ipairs(rows) do
  local o, g = num("o", r[2]), num("g", r[2])
  local t = r[4]
  if o and r[5] then t = t .. (r[5](o) and " (met)" or " (not met)") end
  lines[#lines + 1] = { r[1], o and r[3]:format(o) or "n/a", g and r[3]:format(g) or "-", t }
end
lib.print_table(lines)
LUA
