#!/usr/bin/env bash
# The registry at scale (issue 14): time from a join to every member
# having applied it (p50/p99) and etcd's request rate, for the etcd
# registry (a real etcd) and the embedded leader, with the real registry
# code and MEMBERS simulated members in one process (scripts/registry_sim.lua).
# Everything runs in a network namespace made here, on its loopback; the
# namespace, etcd and its data are removed on exit.
#   scripts/bench_registry.sh [MEMBERS] [JOINS]      (default 500 20; root)
set -euo pipefail
cd "$(dirname "$0")/.."
MEMBERS=${1:-500}
JOINS=${2:-20}
NS=wgo-benchreg-$$
TMP=$(mktemp -d /tmp/wgo-benchreg.XXXXXX)
ETCD_PID=
cleanup() {
  # errexit is off here: etcd's exit status after the kill (143) must not
  # stop the cleanup before the namespace is deleted
  set +e
  if [ -n "$ETCD_PID" ]; then kill "$ETCD_PID" 2>/dev/null; wait "$ETCD_PID" 2>/dev/null; fi
  ip netns pids "$NS" 2>/dev/null | xargs -r kill -KILL
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" route add local 10.200.0.0/16 dev lo
# many sockets in one process
ulimit -n 65536 2>/dev/null || ulimit -n 8192 || true
ENV=(env "LUA_PATH_5_4=$PWD/lua/?.lua;$PWD/lua/?/init.lua;;" "LUA_CPATH_5_4=$PWD/build/?.so;;")
ip netns exec "$NS" etcd --name sim --data-dir "$TMP/etcd" \
  --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
  --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
  --initial-cluster sim=http://127.0.0.1:23800 --logger zap --log-level error >"$TMP/etcd.log" 2>&1 &
ETCD_PID=$!
for _ in $(seq 50); do
  ip netns exec "$NS" etcdctl --endpoints http://127.0.0.1:23790 endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done
ip netns exec "$NS" "${ENV[@]}" lua5.4 scripts/registry_sim.lua etcd "$MEMBERS" "$JOINS"
mkdir -p "$TMP/state"
ip netns exec "$NS" "${ENV[@]}" SIM_STATE="$TMP/state/leader" lua5.4 scripts/registry_sim.lua embedded "$MEMBERS" "$JOINS"
