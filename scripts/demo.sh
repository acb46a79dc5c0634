#!/usr/bin/env bash
# `make demo`: an encrypted overlay between three network namespaces,
# brought up with the wgoverlay Lua API, then shown at work.
#
#   alpha (hub, bridge 192.0.2.1) ──veth── beta (192.0.2.2)
#                                 └─veth── gamma (192.0.2.3)
#
# Each namespace runs examples/wg_quick_up.lua (the Lua API behind a
# wg-quick style file) with the other two as peers: a full mesh on
# 10.99.0.0/24 and fd99::/64.  The demo waits for the handshakes, pings
# across the overlay (IPv4 and IPv6), runs a 3 s iperf3 transfer, prints
# `bin/wgoverlay status` for each node and shows with nftables counters
# that the underlay carried only UDP.  Everything it made (namespaces,
# processes, UAPI sockets, files) is removed on exit, also on Ctrl-C.
#
# Needs root, iproute2, iperf3 and nftables (optional: the counters).
# Nothing is configured in the root namespace; all traffic stays inside
# the namespaces made here.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD=${WGO_BUILD_DIR:-build}
export LUA_PATH="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;;"
export LUA_CPATH="$ROOT/$BUILD/?.so;;"
export WGO_BUILD_DIR=$BUILD
WGO=(lua5.4 "$ROOT/bin/wgoverlay")

if [ -t 1 ]; then B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' D=$'\e[2m' N=$'\e[0m'; else B= G= R= D= N=; fi
heading() { printf '\n%s== %s ==%s\n' "$B" "$*" "$N"; }
say() { printf '%s\n' "$*"; }
ok() { printf '%s✔ %s%s\n' "$G" "$*" "$N"; }
die() { printf '%s✘ %s%s\n' "$R" "$*" "$N" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "the demo creates network namespaces: run it as root"
[ -f "$ROOT/$BUILD/wgoverlay/core.so" ] || die "$BUILD/wgoverlay/core.so is missing: run make first"
for tool in ip iperf3 lua5.4; do command -v "$tool" >/dev/null || die "$tool is not installed"; done

NODES=(alpha beta gamma)
declare -A NS IF UNDER OVER4 OVER6 PRIV PUB PID
i=0
for n in "${NODES[@]}"; do
  i=$((i + 1))
  NS[$n]="wgo-demo-$$-$n"
  IF[$n]="wd$$${n:0:1}"        # unique machine-wide: the UAPI socket directory is shared
  UNDER[$n]="192.0.2.$i"
  OVER4[$n]="10.99.0.$i"
  OVER6[$n]="fd99::$i"
done
PORT=51820
TMP=$(mktemp -d "/tmp/wgo-demo.$$.XXXXXX")
IPERF_PID=

# The traps may run while a command's output is redirected: they write to
# the script's own stdout, saved here as fd 3.
exec 3>&1

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  exec 1>&3 2>&3
  printf '\n%s== cleaning up ==%s\n' "$B" "$N"
  local pids=()
  for n in "${NODES[@]}"; do [ -n "${PID[$n]:-}" ] && pids+=("${PID[$n]}"); done
  [ -n "$IPERF_PID" ] && pids+=("$IPERF_PID")
  if [ ${#pids[@]} -gt 0 ]; then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 30); do
      kill -0 "${pids[@]}" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
  fi
  for n in "${NODES[@]}"; do
    if ip netns list | grep -qw "${NS[$n]}"; then
      ip netns pids "${NS[$n]}" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
      ip netns del "${NS[$n]}" 2>/dev/null || true
    fi
    rm -f "/var/run/wireguard/${IF[$n]}.sock"
  done
  if [ "$rc" != 0 ] && [ "$rc" != 130 ] && [ "$rc" != 143 ]; then
    for n in "${NODES[@]}"; do
      [ -s "$TMP/$n.log" ] && { say "${D}--- engine log of $n:${N}"; tail -n 20 "$TMP/$n.log"; }
    done
  fi
  rm -rf "$TMP"
  left=$(ip netns list | grep -c "wgo-demo-$$-" || true)
  if [ "$left" = 0 ]; then ok "namespaces, engines and sockets removed"; else say "$R$left namespace(s) left$N"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'printf "\n%sinterrupted%s\n" "$R" "$N" >&3; exit 130' INT
trap 'exit 143' TERM

in_ns() { local n=$1; shift; ip netns exec "${NS[$n]}" "$@"; }

# Commands that take a while run in the background and are waited for:
# Ctrl-C during `wait` runs the INT trap at once, whereas bash skips the
# trap when a foreground child (ping, iperf3, lua) catches SIGINT itself.
fg() { "$@" & wait $!; }

# The engines stop on Ctrl-C too (SIGINT reaches the whole process group),
# and bash may not run its INT trap when a foreground child handled the
# signal itself: every wait loop checks that the engines still run.
engines_alive() {
  local n
  for n in "${NODES[@]}"; do
    [ -z "${PID[$n]:-}" ] && continue
    kill -0 "${PID[$n]}" 2>/dev/null || die "the engine of $n stopped (interrupted?)"
  done
}

heading "1. Underlay: three namespaces on a bridge"
for n in "${NODES[@]}"; do
  ip netns add "${NS[$n]}"
  in_ns "$n" ip link set lo up
done
in_ns alpha ip link add br0 type bridge
in_ns alpha ip addr add "${UNDER[alpha]}/24" dev br0
in_ns alpha ip link set br0 up
for n in beta gamma; do
  in_ns alpha ip link add "to-$n" type veth peer name eth0 netns "${NS[$n]}"
  in_ns alpha ip link set "to-$n" master br0 up
  in_ns "$n" ip addr add "${UNDER[$n]}/24" dev eth0
  in_ns "$n" ip link set eth0 up
done
for n in "${NODES[@]}"; do say "  $n: ${NS[$n]}, underlay ${UNDER[$n]}"; done

heading "2. Keys (bin/wgoverlay genkey | pubkey)"
for n in "${NODES[@]}"; do
  PRIV[$n]=$("${WGO[@]}" genkey)
  PUB[$n]=$(printf '%s\n' "${PRIV[$n]}" | "${WGO[@]}" pubkey)
  say "  $n: ${PUB[$n]}"
done

heading "3. One Lua engine per namespace (examples/wg_quick_up.lua)"
for n in "${NODES[@]}"; do
  conf="$TMP/${IF[$n]}.conf"
  {
    echo "[Interface]"
    echo "PrivateKey = ${PRIV[$n]}"
    echo "ListenPort = $PORT"
    echo "Address = ${OVER4[$n]}/24, ${OVER6[$n]}/64"
    echo "MTU = 1420"
    for m in "${NODES[@]}"; do
      [ "$m" = "$n" ] && continue
      echo
      echo "[Peer]"
      echo "PublicKey = ${PUB[$m]}"
      echo "Endpoint = ${UNDER[$m]}:$PORT"
      echo "AllowedIPs = ${OVER4[$m]}/32, ${OVER6[$m]}/128"
    done
  } >"$conf"
  chmod 600 "$conf"
  # `ip netns exec` execs lua5.4, so $! is the engine's pid.
  ip netns exec "${NS[$n]}" lua5.4 "$ROOT/examples/wg_quick_up.lua" "$conf" "${IF[$n]}" >"$TMP/$n.log" 2>&1 &
  PID[$n]=$!
done
for n in "${NODES[@]}"; do
  for _ in $(seq 100); do
    grep -q "is up" "$TMP/$n.log" 2>/dev/null && break
    kill -0 "${PID[$n]}" 2>/dev/null || { cat "$TMP/$n.log"; die "the engine of $n exited"; }
    fg sleep 0.05
  done
  grep -q "is up" "$TMP/$n.log" || { cat "$TMP/$n.log"; die "the engine of $n did not come up"; }
  ok "$n: interface ${IF[$n]} up, ${OVER4[$n]} and ${OVER6[$n]} (engine pid ${PID[$n]})"
done

heading "4. Handshakes (full mesh: 3 tunnels, started by the first packets)"
handshakes() { # node -> number of its peers with a handshake
  "${WGO[@]}" status --json "${IF[$1]}" |
    lua5.4 -e 'local st = require("cjson").decode(io.read("a")) local n = 0
               for _, p in ipairs(st.peers) do if p.last_handshake > 0 then n = n + 1 end end
               print(n)'
}
start=$(date +%s%N)
# One packet to each peer starts the handshakes (the engines are all up
# now, so none waits for a retry).
pings=()
for pair in "alpha beta" "alpha gamma" "beta gamma"; do
  set -- $pair
  ip netns exec "${NS[$1]}" ping -n -q -c 1 -W 3 "${OVER4[$2]}" >/dev/null 2>&1 &
  pings+=($!)
done
wait "${pings[@]}" || true
for _ in $(seq 100); do
  engines_alive
  done_all=1
  for n in "${NODES[@]}"; do [ "$(handshakes "$n")" = 2 ] || done_all=0; done
  [ $done_all = 1 ] && break
  fg sleep 0.1
done
[ $done_all = 1 ] || die "not every pair completed a handshake"
ok "all three tunnels up after $(( ($(date +%s%N) - start) / 1000000 )) ms"

NFT=0
if command -v nft >/dev/null && in_ns beta nft -f - <<EOF 2>/dev/null
table inet demo {
  chain count {
    type filter hook input priority 0; policy accept;
    iifname "eth0" udp dport $PORT counter comment "underlay: WireGuard UDP"
    iifname "eth0" meta l4proto tcp counter comment "underlay: TCP"
    iifname "eth0" meta l4proto { icmp, ipv6-icmp } counter comment "underlay: ICMP"
    iifname "${IF[beta]}" meta l4proto tcp counter comment "overlay: TCP"
    iifname "${IF[beta]}" meta l4proto { icmp, ipv6-icmp } counter comment "overlay: ICMP"
  }
}
EOF
then NFT=1; fi

heading "5. Ping across the overlay"
for pair in "alpha beta" "beta gamma" "gamma alpha"; do
  set -- $pair
  for addr in "${OVER4[$2]}" "${OVER6[$2]}"; do
    fg in_ns "$1" ping -n -q -c 3 -i 0.2 -W 2 "$addr" >"$TMP/ping.out" 2>&1 ||
      { cat "$TMP/ping.out"; die "$1 cannot ping $2 at $addr"; }
    ok "$1 -> $2 ($addr): $(grep -E '^rtt|round-trip' "$TMP/ping.out" | sed 's/^rtt //')"
  done
done

heading "6. iperf3 over the tunnel beta -> gamma (3 s)"
in_ns gamma iperf3 -s -1 -B "${OVER4[gamma]}" >"$TMP/iperf-server.log" 2>&1 &
IPERF_PID=$!
for _ in $(seq 50); do
  engines_alive
  in_ns gamma ss -Hltn "sport = :5201" | grep -q LISTEN && break
  fg sleep 0.05
done
fg in_ns beta iperf3 -c "${OVER4[gamma]}" -t 3 -f m >"$TMP/iperf.out" 2>&1 ||
  { cat "$TMP/iperf.out"; die "iperf3 failed"; }
grep -E 'sender|receiver' "$TMP/iperf.out" | sed 's/^/  /'
wait "$IPERF_PID" || true
IPERF_PID=

heading "7. bin/wgoverlay status"
engines_alive
for n in "${NODES[@]}"; do
  say "${D}# ip netns exec ${NS[$n]} bin/wgoverlay status ${IF[$n]}${N}"
  fg in_ns "$n" "${WGO[@]}" status "${IF[$n]}"
done

if [ $NFT = 1 ]; then
  heading "8. What beta's underlay carried (nftables counters on eth0 vs ${IF[beta]})"
  in_ns beta nft list chain inet demo count |
    sed -nE 's/.*counter packets ([0-9]+) bytes ([0-9]+) comment "([^"]*)".*/  \3: \1 packets, \2 bytes/p'
  tcp_under=$(in_ns beta nft list chain inet demo count | sed -nE 's/.*counter packets ([0-9]+).*"underlay: TCP".*/\1/p')
  icmp_under=$(in_ns beta nft list chain inet demo count | sed -nE 's/.*counter packets ([0-9]+).*"underlay: ICMP".*/\1/p')
  if [ "$tcp_under" = 0 ] && [ "$icmp_under" = 0 ]; then
    ok "the pings and the TCP transfer crossed the underlay only as encrypted UDP"
  else
    say "  (other traffic on the underlay: TCP $tcp_under, ICMP $icmp_under packets)"
  fi
fi

heading "Done"
say "The overlay worked end to end; removing everything now."
