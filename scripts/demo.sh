#!/usr/bin/env bash
# `make demo`: a small wgoverlay cluster in network namespaces, built with
# the real CLI and shown at work.
#
#                 hub (bridge br0, nftables counters)
#        ┌─────────────────┼──────────────────┐
#     leader 192.0.2.1   node1 192.0.2.2    node2 192.0.2.3
#                          │ container "web"  │ container "db"
#
# `wgoverlay init` makes the leader, `token` a join token, `join` brings in
# node1 and node2 over the network, `run` starts each node (userspace
# WireGuard engine, membership, DNS, health), `attach` puts a container
# namespace on the overlay with a DNS name.  Then: dig answers, ping by
# name from container to container across nodes, a 3 s iperf3 between the
# containers, `status --state` of every node, and nftables counters on the
# bridge showing that the underlay carried only WireGuard UDP.
# Everything it made (namespaces, processes, UAPI sockets, /etc/netns
# files, state directories) is removed on exit, also on Ctrl-C.
#
# Needs root, iproute2, dig, iperf3 and nftables (optional: the counters).
# Nothing is configured in the root namespace; all traffic stays inside
# the namespaces made here.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD=${WGO_BUILD_DIR:-build}
export WGO_BUILD_DIR=$ROOT/$BUILD
WGO=(lua5.4 "$ROOT/bin/wgoverlay")
PORT=51820
ZONE=overlay.internal

if [ -t 1 ]; then B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' D=$'\e[2m' N=$'\e[0m'; else B='' G='' R='' D='' N=''; fi
heading() { printf '\n%s== %s ==%s\n' "$B" "$*" "$N"; }
say() { printf '%s\n' "$*"; }
ok() { printf '%s✔ %s%s\n' "$G" "$*" "$N"; }
die() { printf '%s✘ %s%s\n' "$R" "$*" "$N" >&2; exit 1; }
cmd() { printf '%s# %s%s\n' "$D" "$*" "$N"; }

[ "$(id -u)" -eq 0 ] || die "the demo creates network namespaces: run it as root"
[ -f "$ROOT/$BUILD/wgoverlay/core.so" ] || die "$BUILD/wgoverlay/core.so is missing: run make first"
for tool in ip dig iperf3 lua5.4; do command -v "$tool" >/dev/null || die "$tool is not installed"; done

NODES=(leader node1 node2)
CONTAINERS=(web db)
declare -A NS UNDER PID HOST_OF OVER IFN
NS[hub]="wgo-demo-$$-hub"
i=0
for n in "${NODES[@]}"; do
  i=$((i + 1))
  NS[$n]="wgo-demo-$$-$n"
  UNDER[$n]="192.0.2.$i"
done
NS[web]="wgo-demo-$$-web"; HOST_OF[web]=node1
NS[db]="wgo-demo-$$-db";   HOST_OF[db]=node2
TMP=$(mktemp -d "/tmp/wgo-demo.$$.XXXXXX")
IPERF_PID=

# The traps may run while a command's output is redirected: they write to
# the script's own stdout, saved here as fd 3.
exec 3>&1

interrupted() { cat "$TMP"/*.log 2>/dev/null | grep -q 'SIGINT: stopping'; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  exec 1>&3 2>&3
  printf '\n%s== cleaning up ==%s\n' "$B" "$N"
  local pids=() n
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
  # Ctrl-C reaches the daemons too (one process group); when a foreground
  # command died of it first, bash may exit through `set -e` instead of
  # the INT trap: the daemons' logs tell.
  if [ "$rc" != 0 ] && [ "$rc" != 130 ] && interrupted; then
    printf '%sinterrupted%s\n' "$R" "$N"
    rc=130
  fi
  if [ "$rc" != 0 ] && [ "$rc" != 130 ] && [ "$rc" != 143 ]; then
    for n in "${NODES[@]}"; do
      [ -s "$TMP/$n.log" ] && { say "${D}--- log of $n:${N}"; tail -n 20 "$TMP/$n.log"; }
    done
  fi
  for n in hub "${NODES[@]}" "${CONTAINERS[@]}"; do
    if ip netns list | grep -qw "${NS[$n]}"; then
      ip netns pids "${NS[$n]}" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
      ip netns del "${NS[$n]}" 2>/dev/null || true
    fi
    rm -rf "/etc/netns/${NS[$n]}"
  done
  for n in "${NODES[@]}"; do [ -n "${IFN[$n]:-}" ] && rm -f "/var/run/wireguard/${IFN[$n]}.sock"; done
  rm -rf "$TMP"
  left=$(ip netns list | grep -c "wgo-demo-$$-" || true)
  if [ "$left" = 0 ]; then ok "namespaces, daemons, sockets and state removed"; else say "$R$left namespace(s) left$N"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'printf "\n%sinterrupted%s\n" "$R" "$N" >&3; exit 130' INT
trap 'exit 143' TERM

in_ns() { local n=$1; shift; ip netns exec "${NS[$n]}" "$@"; }
wgo() { local n=$1; shift; in_ns "$n" "${WGO[@]}" "$@"; }

# Commands that take a while run in the background and are waited for:
# Ctrl-C during `wait` runs the INT trap at once, whereas bash skips the
# trap when a foreground child (ping, iperf3, lua) catches SIGINT itself.
fg() { "$@" & wait $!; }

daemons_alive() {
  local n
  for n in "${NODES[@]}"; do
    [ -z "${PID[$n]:-}" ] && continue
    kill -0 "${PID[$n]}" 2>/dev/null && continue
    interrupted && exit 130
    tail -n 20 "$TMP/$n.log"
    die "the daemon of $n stopped"
  done
}

# `status --state DIR --json` of node $1, one field per line:
#   self <overlay_ip>    peer <name> <healthy> <handshake age>
status_lines() {
  wgo "$1" status --state "$TMP/$1" --json 2>/dev/null | lua5.4 -e '
    local st = require("cjson").decode(io.read("a"))
    print("self " .. st.self.overlay_ip)
    for _, p in ipairs(st.peers) do print("peer " .. tostring(p.name) .. " " .. tostring(p.healthy)) end'
}

heading "1. Underlay: three hosts on a bridge (+ two container namespaces)"
for n in hub "${NODES[@]}" "${CONTAINERS[@]}"; do
  ip netns add "${NS[$n]}"
  in_ns "$n" ip link set lo up
done
in_ns hub ip link add br0 type bridge
in_ns hub ip link set br0 up
for n in "${NODES[@]}"; do
  in_ns hub ip link add "to-$n" type veth peer name eth0 netns "${NS[$n]}"
  in_ns hub ip link set "to-$n" master br0 up
  in_ns "$n" ip addr add "${UNDER[$n]}/24" dev eth0
  in_ns "$n" ip link set eth0 up
  say "  $n: ${NS[$n]}, underlay ${UNDER[$n]}"
done
NFT=0
if command -v nft >/dev/null && in_ns hub nft -f - <<EOF 2>/dev/null
table bridge demo {
  chain count {
    type filter hook forward priority 0; policy accept;
    ip saddr 192.0.2.0/24 ip daddr 192.0.2.0/24 udp sport $PORT udp dport $PORT counter accept comment "WireGuard UDP $PORT"
    meta l4proto tcp counter accept comment "TCP in clear"
    ip protocol icmp counter accept comment "ICMP in clear"
    meta protocol ip counter accept comment "any other IPv4"
    ip6 saddr fd00:200::/48 counter accept comment "overlay IPv6 in clear"
  }
}
EOF
then NFT=1; say "  nftables counters on the bridge (hub namespace)"; fi

heading "2. Leader: wgoverlay init, then a join token"
cmd "wgoverlay init --state \$DIR --endpoint ${UNDER[leader]}:$PORT --name leader"
wgo leader init --state "$TMP/leader" --endpoint "${UNDER[leader]}:$PORT" --name leader | sed 's/^/  /'
cmd "wgoverlay token --state \$DIR --uses 2 --ttl 600"
TOKEN=$(wgo leader token --state "$TMP/leader" --uses 2 --ttl 600)
say "  ${TOKEN:0:40}… (${#TOKEN} characters: leader endpoint, its control key, a token id and a secret)"
ip netns exec "${NS[leader]}" "${WGO[@]}" run --state "$TMP/leader" >"$TMP/leader.log" 2>&1 &
PID[leader]=$!

wait_up() { # node: until its control socket answers
  for _ in $(seq 100); do
    daemons_alive
    status_lines "$1" >/dev/null 2>&1 && return 0
    fg sleep 0.1
  done
  die "the daemon of $1 did not come up"
}
wait_up leader
ok "leader running (pid ${PID[leader]})"

heading "3. Two nodes join over the network with the token, and run"
for n in node1 node2; do
  cmd "wgoverlay join --state \$DIR --token \$TOKEN --endpoint ${UNDER[$n]}:$PORT --name $n"
  fg wgo "$n" join --state "$TMP/$n" --token "$TOKEN" --endpoint "${UNDER[$n]}:$PORT" --name "$n" | sed 's/^/  /'
  ip netns exec "${NS[$n]}" "${WGO[@]}" run --state "$TMP/$n" >"$TMP/$n.log" 2>&1 &
  PID[$n]=$!
done
for n in "${NODES[@]}"; do
  wait_up "$n"
  OVER[$n]=$(status_lines "$n" | sed -n 's/^self //p')
  [ -n "${OVER[$n]}" ] || { daemons_alive; die "no status from $n"; }
  IFN[$n]=$(sed -n 's/.*interface \(wgo[0-9a-f]*\).*/\1/p' "$TMP/$n.log" | head -1)
done
ok "daemons running: leader ${OVER[leader]}, node1 ${OVER[node1]}, node2 ${OVER[node2]}"

heading "4. Containers: wgoverlay attach NETNS --name NAME"
for c in "${CONTAINERS[@]}"; do
  h=${HOST_OF[$c]}
  cmd "(on $h) wgoverlay attach --state \$DIR ${NS[$c]} --name $c"
  wgo "$h" attach --state "$TMP/$h" "${NS[$c]}" --name "$c" | sed 's/^/  /'
  # the container resolves names with its node's DNS server
  mkdir -p "/etc/netns/${NS[$c]}"
  echo "nameserver ${OVER[$h]}" >"/etc/netns/${NS[$c]}/resolv.conf"
done

start=$(date +%s%N)
for _ in $(seq 150); do
  daemons_alive
  all=1
  for n in "${NODES[@]}"; do
    [ "$(status_lines "$n" | grep -c '^peer .* true$')" = 2 ] || all=0
  done
  [ $all = 1 ] && break
  fg sleep 0.2
done
[ $all = 1 ] || die "the nodes did not all see each other healthy"
ok "full mesh up and healthy after $(( ($(date +%s%N) - start) / 1000000 )) ms"

heading "5. DNS: every node serves the zone $ZONE"
digq() { # container server name type [+tcp]
  local c=$1 srv=$2 name=$3 type=$4 extra=${5:-}
  local out status ans
  out=$(in_ns "$c" dig +tries=1 +time=2 $extra "@$srv" "$name" "$type")
  status=$(sed -n 's/.*status: \([A-Z]*\).*/\1/p' <<<"$out")
  ans=$(in_ns "$c" dig +tries=1 +time=2 +short $extra "@$srv" "$name" "$type" | tr '\n' ' ')
  printf '  %-28s %-4s %-5s %-8s %s\n' "$name" "$type" "${extra:-+udp}" "$status" "$ans"
}
say "  ${D}(queries from container web to its node's server ${OVER[node1]})${N}"
for q in "db A" "db AAAA" "web A" "node2 A" "leader AAAA"; do
  set -- $q
  digq web "${OVER[node1]}" "$1.$ZONE" "$2"
done
digq web "${OVER[node1]}" "db.$ZONE" A +tcp
digq web "${OVER[node1]}" "nope.$ZONE" A
digq web "${OVER[node1]}" "example.com" A

heading "6. Ping by name, container to container, across nodes"
for pair in "web db" "db web"; do
  set -- $pair
  for fam in 4 6; do
    cmd "(in $1) ping -$fam $2.$ZONE"
    fg in_ns "$1" ping -$fam -n -q -c 3 -i 0.2 -W 2 "$2.$ZONE" >"$TMP/ping.out" 2>&1 ||
      { cat "$TMP/ping.out"; die "$1 cannot ping $2.$ZONE"; }
    ok "$1 -> $2 ($(sed -n 's/^PING [^(]*(\([^)]*\)).*/\1/p' "$TMP/ping.out" | head -1)): $(grep -E '^rtt|round-trip' "$TMP/ping.out" | sed 's/^rtt //')"
  done
done

heading "7. iperf3 web -> db.$ZONE over the overlay (3 s)"
in_ns db iperf3 -s -1 >"$TMP/iperf-server.log" 2>&1 &
IPERF_PID=$!
for _ in $(seq 50); do
  daemons_alive
  in_ns db ss -Hltn "sport = :5201" | grep -q LISTEN && break
  fg sleep 0.05
done
fg in_ns web iperf3 -4 -c "db.$ZONE" -t 3 -f m >"$TMP/iperf.out" 2>&1 ||
  { cat "$TMP/iperf.out"; die "iperf3 failed"; }
grep -E 'sender|receiver' "$TMP/iperf.out" | sed 's/^/  /'
wait "$IPERF_PID" || true
IPERF_PID=

heading "8. wgoverlay status --state (each node's view of the cluster)"
daemons_alive
for n in "${NODES[@]}"; do
  cmd "(on $n) wgoverlay status --state \$DIR"
  fg wgo "$n" status --state "$TMP/$n"
  echo
done

if [ $NFT = 1 ]; then
  heading "9. What the underlay carried (nftables counters on the bridge)"
  rules=$(in_ns hub nft list chain bridge demo count)
  sed -nE 's/.*counter packets ([0-9]+) bytes ([0-9]+) .*comment "([^"]*)".*/  \3: \1 packets, \2 bytes/p' <<<"$rules"
  clear=$(sed -nE 's/.*counter packets ([0-9]+) .*comment "(TCP in clear|ICMP in clear|any other IPv4|overlay IPv6 in clear)".*/\1/p' <<<"$rules" |
          awk '{ s += $1 } END { print s + 0 }')
  if [ "$clear" = 0 ]; then
    ok "pings, DNS, membership, health probes and the TCP transfer crossed the underlay only as WireGuard UDP"
  else
    say "  $R$clear packet(s) other than WireGuard UDP crossed the underlay$N"
  fi
fi

heading "Done"
say "A leader, two nodes and two containers talked by name over WireGuard; removing everything now."
