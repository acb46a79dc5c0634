#!/usr/bin/env bash
# `make demo-nat`: NAT traversal in network namespaces, with the real CLI.
#
#           internet: hub (bridge br0, 203.0.113.0/24)
#   ┌──────────────┬─────────────────┬─────────────────┬─────────────────┐
# leader .1     coturn .10      nat1 .21 (masq.)  nat2 .22 (masq.)  nat3 .23 (masq. random)
# (public)     (STUN, TURN)        │                 │                 │
#                              node1 10.1.0.2    node2 10.2.0.2    node3 10.3.0.2
#
# nat1 and nat2 keep source ports (endpoint-independent mapping): node1 and
# node2 reach each other by coordinated hole punching.  nat3 maps every
# destination to a new port (a symmetric NAT): node3 reaches node1 and
# node2 through the TURN relay.  Everyone reaches the public leader
# directly.  The demo prints what STUN told each node and the status
# tables with the connection kind of every peer, and pings across.
# Everything it made is removed on exit, also on Ctrl-C.
#
# Needs root, iproute2, nftables, coturn (turnserver) and lua5.4.  Nothing
# is configured in the root namespace.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD=${WGO_BUILD_DIR:-build}
export WGO_BUILD_DIR=$ROOT/$BUILD
export LUA_PATH_5_4="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;;" LUA_CPATH_5_4="$ROOT/$BUILD/?.so;;"
WGO=(lua5.4 "$ROOT/bin/wgoverlay")
PORT=51820
TURN=203.0.113.10:3478

if [ -t 1 ]; then B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' D=$'\e[2m' N=$'\e[0m'; else B='' G='' R='' D='' N=''; fi
heading() { printf '\n%s== %s ==%s\n' "$B" "$*" "$N"; }
say() { printf '%s\n' "$*"; }
ok() { printf '%s✔ %s%s\n' "$G" "$*" "$N"; }
die() { printf '%s✘ %s%s\n' "$R" "$*" "$N" >&2; exit 1; }
cmd() { printf '%s# %s%s\n' "$D" "$*" "$N"; }

[ "$(id -u)" -eq 0 ] || die "the demo creates network namespaces: run it as root"
[ -f "$ROOT/$BUILD/wgoverlay/core.so" ] || die "$BUILD/wgoverlay/core.so is missing: run make first"
for tool in ip nft turnserver lua5.4 ping; do command -v "$tool" >/dev/null || die "$tool is not installed"; done

NODES=(leader node1 node2 node3)
declare -A NS UNDER WAN PID IFN
for n in hub turn "${NODES[@]}" nat1 nat2 nat3; do NS[$n]="wgo-dnat-$$-$n"; done
UNDER[leader]=203.0.113.1
UNDER[node1]=10.1.0.2; WAN[node1]=203.0.113.21
UNDER[node2]=10.2.0.2; WAN[node2]=203.0.113.22
UNDER[node3]=10.3.0.2; WAN[node3]=203.0.113.23
TMP=$(mktemp -d "/tmp/wgo-demo-nat.$$.XXXXXX")
TURN_PID=

exec 3>&1
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  exec 1>&3 2>&3
  printf '\n%s== cleaning up ==%s\n' "$B" "$N"
  local pids=() n
  for n in "${NODES[@]}"; do [ -n "${PID[$n]:-}" ] && pids+=("${PID[$n]}"); done
  [ -n "$TURN_PID" ] && pids+=("$TURN_PID")
  if [ ${#pids[@]} -gt 0 ]; then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "${pids[@]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${pids[@]}" 2>/dev/null || true
  fi
  if [ "$rc" != 0 ] && [ "$rc" != 130 ] && [ "$rc" != 143 ]; then
    for n in "${NODES[@]}"; do
      [ -s "$TMP/$n.log" ] && { say "${D}--- log of $n:${N}"; tail -n 15 "$TMP/$n.log"; }
    done
  fi
  for n in hub turn "${NODES[@]}" nat1 nat2 nat3; do
    if ip netns list | grep -qw "${NS[$n]}"; then
      ip netns pids "${NS[$n]}" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
      ip netns del "${NS[$n]}" 2>/dev/null || true
    fi
  done
  for n in "${NODES[@]}"; do [ -n "${IFN[$n]:-}" ] && rm -f "/var/run/wireguard/${IFN[$n]}.sock"; done
  if [ -n "${WGO_KEEP_LOGS:-}" ]; then say "logs kept in $TMP"; else rm -rf "$TMP"; fi
  left=$(ip netns list | grep -c "wgo-dnat-$$-" || true)
  if [ "$left" = 0 ]; then ok "namespaces, daemons, sockets and state removed"; else say "$R$left namespace(s) left$N"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'printf "\n%sinterrupted%s\n" "$R" "$N" >&3; exit 130' INT
trap 'exit 143' TERM

in_ns() { local n=$1; shift; ip netns exec "${NS[$n]}" "$@"; }
wgo() { local n=$1; shift; in_ns "$n" "${WGO[@]}" "$@"; }
fg() { "$@" & wait $!; }

daemons_alive() {
  local n
  for n in "${NODES[@]}"; do
    [ -z "${PID[$n]:-}" ] && continue
    kill -0 "${PID[$n]}" 2>/dev/null && continue
    tail -n 20 "$TMP/$n.log"
    die "the daemon of $n stopped"
  done
}

# "peer connection phase" lines of node $1's status, and "nat KIND"
conn_lines() {
  wgo "$1" status --state "$TMP/$1" --json 2>/dev/null | lua5.4 -e '
    local st = require("cjson").decode(io.read("a"))
    print("nat " .. tostring(st.self.nat ~= nil and st.self.nat.nat))
    for _, p in ipairs(st.peers) do print(tostring(p.name) .. " " .. p.connection .. " " .. tostring(p.nat_phase)) end'
}

heading "1. The internet, a STUN/TURN server, NAT routers, private networks"
for n in hub turn "${NODES[@]}" nat1 nat2 nat3; do
  ip netns add "${NS[$n]}"
  in_ns "$n" ip link set lo up
done
in_ns hub ip link add br0 type bridge
in_ns hub ip link set br0 up
on_hub() { # ns address
  in_ns hub ip link add "to-$1" type veth peer name wan netns "${NS[$1]}"
  in_ns hub ip link set "to-$1" master br0 up
  in_ns "$1" ip addr add "$2/24" dev wan
  in_ns "$1" ip link set wan up
}
on_hub leader "${UNDER[leader]}"
on_hub turn 203.0.113.10
say "  leader ${UNDER[leader]} (public), coturn 203.0.113.10"
i=0
for n in node1 node2 node3; do
  i=$((i + 1))
  r=nat$i
  on_hub "$r" "${WAN[$n]}"
  in_ns "$r" ip link add lan type veth peer name eth0 netns "${NS[$n]}"
  in_ns "$r" ip addr add "10.$i.0.1/24" dev lan
  in_ns "$r" ip link set lan up
  in_ns "$n" ip addr add "${UNDER[$n]}/24" dev eth0
  in_ns "$n" ip link set eth0 up
  in_ns "$n" ip route add default via "10.$i.0.1"
  in_ns "$r" sysctl -q -w net.ipv4.ip_forward=1
  random=""; kind="keeps source ports"
  [ $n = node3 ] && { random=" random"; kind="new port per destination: symmetric"; }
  # like a home router: NAT on the WAN side, unsolicited packets to the router dropped
  in_ns "$r" nft -f - <<EOF
table ip nat {
  chain post { type nat hook postrouting priority srcnat; policy accept; oifname "wan" masquerade$random; }
  chain input { type filter hook input priority filter; policy accept; iifname "wan" ct state new drop; }
}
EOF
  say "  $n ${UNDER[$n]} behind $r ${WAN[$n]} (masquerade$random: $kind)"
done
in_ns turn turnserver -n --lt-cred-mech --realm demo.internal --listening-port 3478 --listening-ip 203.0.113.10 \
  --relay-ip 203.0.113.10 --min-port 49152 --max-port 49300 --no-tls --no-dtls --no-cli \
  --user demo:demo-pass --userdb "$TMP/turndb" --pidfile "$TMP/turn.pid" --log-file stdout --simple-log \
  >"$TMP/turn.log" 2>&1 &
TURN_PID=$!
for _ in $(seq 50); do in_ns turn ss -Hlun "sport = :3478" | grep -q 3478 && break; fg sleep 0.1; done
ok "coturn listening on $TURN"

heading "2. Leader: init with STUN servers (coturn and the leader itself) and a TURN relay"
cmd "wgoverlay init --state \$DIR --endpoint ${UNDER[leader]}:$PORT --name leader --stun $TURN --stun ${UNDER[leader]}:$PORT --turn $TURN --turn-user demo --turn-password …"
wgo leader init --state "$TMP/leader" --endpoint "${UNDER[leader]}:$PORT" --name leader --stun "$TURN" \
  --stun "${UNDER[leader]}:$PORT" --turn "$TURN" --turn-user demo --turn-password demo-pass | sed 's/^/  /'
TOKEN=$(wgo leader token --state "$TMP/leader" --uses 3 --ttl 600)
ip netns exec "${NS[leader]}" "${WGO[@]}" run --state "$TMP/leader" >"$TMP/leader.log" 2>&1 &
PID[leader]=$!
wait_up() {
  for _ in $(seq 100); do
    daemons_alive
    conn_lines "$1" >/dev/null 2>&1 && return 0
    fg sleep 0.1
  done
  die "the daemon of $1 did not come up"
}
wait_up leader
ok "leader running"

heading "3. Three nodes join from behind their NATs (private endpoints), and run"
for n in node1 node2 node3; do
  cmd "(on $n) wgoverlay join --state \$DIR --token \$TOKEN --endpoint ${UNDER[$n]}:$PORT --name $n"
  fg wgo "$n" join --state "$TMP/$n" --token "$TOKEN" --endpoint "${UNDER[$n]}:$PORT" --name "$n" | sed 's/^/  /'
done
start=$(date +%s%N)
for n in node1 node2 node3; do
  ip netns exec "${NS[$n]}" "${WGO[@]}" run --state "$TMP/$n" >"$TMP/$n.log" 2>&1 &
  PID[$n]=$!
done
for n in "${NODES[@]}"; do
  wait_up "$n"
  IFN[$n]=$(sed -n 's/.*interface \(wgo[0-9a-f]*\).*/\1/p' "$TMP/$n.log" | head -1)
done

want() { # node peer kind
  conn_lines "$1" | grep -q "^$2 $3 up$"
}
connected=0
for _ in $(seq 200); do
  daemons_alive
  if want node1 node2 hole-punched && want node2 node1 hole-punched && want node3 node1 relayed &&
     want node1 node3 relayed && want node3 node2 relayed && want node2 node3 relayed &&
     want node1 leader direct && want node3 leader direct; then
    connected=1
    break
  fi
  fg sleep 0.25
done
ms=$(( ($(date +%s%N) - start) / 1000000 ))
if [ $connected = 1 ]; then
  ok "every pair connected ${ms} ms after the nodes started"
else
  say "  ${R}not every pair reached its expected connection after ${ms} ms${N}"
fi

heading "4. What STUN told each node"
for n in "${NODES[@]}"; do
  say "  $n: $(conn_lines "$n" | sed -n 's/^nat //p')"
done

heading "5. wgoverlay status --state (CONNECTION: direct, hole-punched or relayed)"
for n in "${NODES[@]}"; do
  cmd "(on $n) wgoverlay status --state \$DIR"
  fg wgo "$n" status --state "$TMP/$n"
  echo
done

heading "6. Ping across the overlay"
over() { wgo "$1" status --state "$TMP/$1" --json | lua5.4 -e 'print(require("cjson").decode(io.read("a")).self.overlay_ip)'; }
for pair in "node1 node2 hole-punched" "node1 node3 relayed" "node3 leader direct"; do
  set -- $pair
  ip=$(over "$2")
  if fg in_ns "$1" ping -n -q -c 3 -i 0.2 -W 2 "$ip" >"$TMP/ping.out" 2>&1; then
    ok "$1 -> $2 ($3): $(grep -E '^rtt' "$TMP/ping.out" | sed 's/^rtt //')"
  else
    cat "$TMP/ping.out"; die "$1 cannot ping $2"
  fi
done

heading "Done"
say "Two nodes behind NATs punched a hole to each other; the one behind a symmetric NAT went through the relay."
