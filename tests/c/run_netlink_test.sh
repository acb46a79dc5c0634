#!/bin/sh
# Runs the netlink test (tests/c/test_netlink.c) in throwaway network
# namespaces: the binary runs inside wgo-nltest-$$ and gets the name of a
# second namespace, wgo-nltest-$$-p, that receives the far end of a veth.
# Both are deleted on exit, whatever happens.  Nothing is configured in the
# caller's namespace.
#
# usage: run_netlink_test.sh [path/to/test_netlink]
set -u

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${1:-$ROOT/build/tests/test_netlink}
NS=wgo-nltest-$$
PEER=wgo-nltest-$$-p

skip() {
	echo "netlink: 0 passed, 0 failed (skipped: $1)"
	exit 0
}

[ "$(id -u)" -eq 0 ] || skip "needs root"
command -v ip >/dev/null 2>&1 || skip "ip(8) not found"
if [ ! -x "$BIN" ]; then
	echo "run_netlink_test.sh: $BIN is not built" >&2
	exit 1
fi

cleanup() {
	ip netns del "$NS" 2>/dev/null
	ip netns del "$PEER" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

ip netns add "$NS" || skip "cannot create network namespaces"
ip netns add "$PEER" || skip "cannot create network namespaces"
ip netns exec "$NS" "$BIN" "$PEER"
rc=$?
exit $rc
