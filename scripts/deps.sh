#!/usr/bin/env bash
# Install the Debian packages wgoverlay needs to build and test.
# As root: installs whatever is missing (apt-get update once, then install).
# Otherwise: lists what is missing and exits 1 if anything is.
set -euo pipefail

PACKAGES=(
  build-essential pkg-config lua5.4 liblua5.4-dev libsodium-dev libmnl-dev
  lua-busted lua-luassert lua-argparse lua-cjson lua-luv lua-socket
  wireguard-go wireguard-tools iperf3 iproute2 nftables iputils-ping socat bind9-dnsutils
  clang clang-format libclang-rt-14-dev valgrind luarocks tshark lua-luaossl coturn conntrack
  systemd util-linux podman containernetworking-plugins runc busybox-static
  libcurl4-openssl-dev etcd-server etcd-client openssl
  libmicrohttpd-dev prometheus
  libnatpmp-dev libminiupnpc-dev miniupnpd-nftables miniupnpc
)

missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing Debian packages: ${missing[*]}" >&2
  echo "deps: install them as root: apt-get install ${missing[*]}" >&2
  exit 1
fi

echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# tshark asks whether non-root users may capture: answer no, non-interactively
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
# miniupnpd is for the port-mapping spec, which runs its own daemons inside
# test namespaces: the package's service must never start (it would map
# ports on this machine's real uplink).  start_daemon=false keeps it
# disabled; a policy-rc.d refuses any service start during this install.
echo "miniupnpd miniupnpd/start_daemon boolean false" | debconf-set-selections
policy_rc=/usr/sbin/policy-rc.d
if [ ! -e "$policy_rc" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy_rc"
  chmod 755 "$policy_rc"
  trap 'rm -f "$policy_rc"' EXIT
fi
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
