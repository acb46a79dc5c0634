-- LuaRocks build of wgoverlay, from a checkout of this repository.
--
--   luarocks --lua-version 5.4 make wgoverlay-scm-1.rockspec   # build, install
--   luarocks --lua-version 5.4 test wgoverlay-scm-1.rockspec   # spec/unit
--   luarocks --lua-version 5.4 lint wgoverlay-scm-1.rockspec
--
-- There is no public repository or release archive: `luarocks make` builds
-- from the current directory and never fetches source.url, which therefore
-- names the checkout itself ("."); `luarocks build`/`install` of this file
-- from elsewhere are not supported.
--
-- The dependencies are rocks; on Debian 12 the same code comes from Debian
-- packages (scripts/deps.sh installs them): luv = lua-luv, lua-cjson =
-- lua-cjson, argparse = lua-argparse, luaossl = lua-luaossl, luasocket =
-- lua-socket, busted = lua-busted.  LuaRocks does not see Debian packages:
-- tell it with `rocks_provided` in its configuration (README has the
-- lines), or pass --deps-mode=none to `make` (`test` always checks).  libsodium and
-- libmnl (libsodium-dev, libmnl-dev) are external C dependencies, and so is
-- libmicrohttpd (libmicrohttpd-dev: the --metrics HTTP server).
rockspec_format = "3.0"
package = "wgoverlay"
version = "scm-1"

source = {
  url = ".",
}

description = {
  summary = "Encrypted overlay networking over a userspace WireGuard engine",
  detailed = [[
A userspace WireGuard engine in C (TUN, UDP, UAPI, netlink) exposed to
Lua 5.4 as wgoverlay.core, with orchestration modules and a command-line
tool.  Wire-compatible with WireGuard; configurable with the stock wg tool.
]],
  license = "MIT",
  labels = { "wireguard", "vpn", "networking", "overlay" },
}

-- Lower bounds: the versions in Debian 12 (bookworm), which the project
-- is tested with; upper bounds: the next major version.
dependencies = {
  "lua >= 5.4",
  "luv >= 1.44.2, < 2",          -- event loop (daemon, cluster, NAT agent)
  "lua-cjson >= 2.1.0, < 3",     -- JSON (state, control, status --json)
  "argparse >= 0.7.1, < 1",      -- command line (bin/wgoverlay)
  "luaossl >= 20220711",         -- openssl.digest/hmac/rand (TURN, tokens)
  "luasocket >= 3.1.0, < 4",     -- socket.gettime (TURN client clock)
}

external_dependencies = {
  SODIUM = { header = "sodium.h", library = "sodium" },
  MNL = { header = "libmnl/libmnl.h", library = "mnl" },
  -- no header check: Debian keeps curl/curl.h in the multiarch directory
  -- (/usr/include/x86_64-linux-gnu), which the compiler searches by itself
  CURL = { library = "curl" },
  MICROHTTPD = { header = "microhttpd.h", library = "microhttpd" },
}

build = {
  type = "builtin",
  modules = {
    ["wgoverlay.core"] = {
      sources = {
        "csrc/aead.c",
        "csrc/aead_avx512.c",
        "csrc/allowedips.c",
        "csrc/blake2s.c",
        "csrc/cookie.c",
        "csrc/device.c",
        "csrc/netlink.c",
        "csrc/noise.c",
        "csrc/offload.c",
        "csrc/peer.c",
        "csrc/proto.c",
        "csrc/ratelimit.c",
        "csrc/receive.c",
        "csrc/replay.c",
        "csrc/send.c",
        "csrc/timers.c",
        "csrc/uapi.c",
        "csrc/uapi_server.c",
        "csrc/udp.c",
        "csrc/lua_core.c",
        "csrc/lua_device.c",
        "csrc/lua_keys.c",
        "csrc/lua_netlink.c",
        "csrc/lua_process.c",
        "csrc/lua_http.c",
        "csrc/lua_metrics.c",
      },
      defines = { "_GNU_SOURCE" },
      incdirs = { "csrc", "$(SODIUM_INCDIR)", "$(MNL_INCDIR)", "$(CURL_INCDIR)", "$(MICROHTTPD_INCDIR)" },
      libdirs = { "$(SODIUM_LIBDIR)", "$(MNL_LIBDIR)", "$(CURL_LIBDIR)", "$(MICROHTTPD_LIBDIR)" },
      libraries = { "sodium", "mnl", "pthread", "curl", "microhttpd" },
    },
    ["wgoverlay"] = "lua/wgoverlay/init.lua",
    ["wgoverlay.allocator"] = "lua/wgoverlay/allocator.lua",
    ["wgoverlay.cidr"] = "lua/wgoverlay/cidr.lua",
    ["wgoverlay.cli"] = "lua/wgoverlay/cli.lua",
    ["wgoverlay.cli_cluster"] = "lua/wgoverlay/cli_cluster.lua",
    ["wgoverlay.cluster"] = "lua/wgoverlay/cluster.lua",
    ["wgoverlay.config"] = "lua/wgoverlay/config.lua",
    ["wgoverlay.containers"] = "lua/wgoverlay/containers.lua",
    ["wgoverlay.cni"] = "lua/wgoverlay/cni.lua",
    ["wgoverlay.control"] = "lua/wgoverlay/control.lua",
    ["wgoverlay.daemon"] = "lua/wgoverlay/daemon.lua",
    ["wgoverlay.dns"] = "lua/wgoverlay/dns.lua",
    ["wgoverlay.dns_server"] = "lua/wgoverlay/dns_server.lua",
    ["wgoverlay.joinproto"] = "lua/wgoverlay/joinproto.lua",
    ["wgoverlay.leaderkey"] = "lua/wgoverlay/leaderkey.lua",
    ["wgoverlay.endpoint"] = "lua/wgoverlay/endpoint.lua",
    ["wgoverlay.etcd"] = "lua/wgoverlay/etcd.lua",
    ["wgoverlay.health"] = "lua/wgoverlay/health.lua",
    ["wgoverlay.http"] = "lua/wgoverlay/http.lua",
    ["wgoverlay.jsonlines"] = "lua/wgoverlay/jsonlines.lua",
    ["wgoverlay.membership"] = "lua/wgoverlay/membership.lua",
    ["wgoverlay.metrics"] = "lua/wgoverlay/metrics.lua",
    ["wgoverlay.policy"] = "lua/wgoverlay/policy.lua",
    ["wgoverlay.nat.agent"] = "lua/wgoverlay/nat/agent.lua",
    ["wgoverlay.nat.candidates"] = "lua/wgoverlay/nat/candidates.lua",
    ["wgoverlay.nat.policy"] = "lua/wgoverlay/nat/policy.lua",
    ["wgoverlay.nat.punch"] = "lua/wgoverlay/nat/punch.lua",
    ["wgoverlay.nat.signal"] = "lua/wgoverlay/nat/signal.lua",
    ["wgoverlay.nat.stun"] = "lua/wgoverlay/nat/stun.lua",
    ["wgoverlay.nat.turn"] = "lua/wgoverlay/nat/turn.lua",
    ["wgoverlay.registry"] = "lua/wgoverlay/registry/init.lua",
    ["wgoverlay.registry.leader"] = "lua/wgoverlay/registry/leader.lua",
    ["wgoverlay.registry.member"] = "lua/wgoverlay/registry/member.lua",
    ["wgoverlay.registry.etcd"] = "lua/wgoverlay/registry/etcd.lua",
    ["wgoverlay.schema"] = "lua/wgoverlay/schema.lua",
    ["wgoverlay.sdnotify"] = "lua/wgoverlay/sdnotify.lua",
    ["wgoverlay.state"] = "lua/wgoverlay/state.lua",
    ["wgoverlay.token"] = "lua/wgoverlay/token.lua",
    ["wgoverlay.transport"] = "lua/wgoverlay/transport.lua",
  },
  install = {
    bin = {
      wgoverlay = "bin/wgoverlay",
      ["wgoverlay-cni"] = "bin/wgoverlay-cni",
    },
  },
}

test_dependencies = {
  "busted >= 2.1.1, < 3",
}

-- The unit specs (no root, a few seconds); spec/integration needs root
-- and network namespaces and is run by `make check`.  The command type,
-- not busted's: LuaRocks 3.8's busted runner insists on a busted rock in
-- a rocks tree (it ignores rocks_provided), and Debian's busted is not one.
-- The busted script on PATH is run by Lua 5.4 (lua5.4 on Debian, else
-- lua): Debian's /usr/bin/busted would start the default `lua`, 5.1 there.
-- The rockspec spec is left out here: it runs `luarocks test` itself.
test = {
  type = "command",
  command = [["$(command -v lua5.4 || command -v lua)" "$(command -v busted)" --run=unit --exclude-tags=rock]],
}
