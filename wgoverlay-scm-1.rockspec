-- Local build with LuaRocks (nothing is downloaded):
--   luarocks --lua-version 5.4 make --tree DIR wgoverlay-scm-1.rockspec
-- Lua dependencies (argparse, cjson, luv, socket) come from Debian packages
-- (scripts/deps.sh), not from a rocks server.
rockspec_format = "3.0"
package = "wgoverlay"
version = "scm-1"

source = {
  url = "git+file:///dev/null",
}

description = {
  summary = "Encrypted overlay networking over a userspace WireGuard engine",
  detailed = [[
A userspace WireGuard engine in C (TUN, UDP, UAPI, netlink) exposed to
Lua 5.4 as wgoverlay.core, with orchestration modules and a command-line
tool.  Wire-compatible with WireGuard; configurable with the stock wg tool.
]],
  license = "MIT",
}

dependencies = {
  "lua >= 5.4",
}

external_dependencies = {
  SODIUM = { header = "sodium.h", library = "sodium" },
  MNL = { header = "libmnl/libmnl.h", library = "mnl" },
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
      },
      defines = { "_GNU_SOURCE" },
      incdirs = { "csrc", "$(SODIUM_INCDIR)", "$(MNL_INCDIR)" },
      libdirs = { "$(SODIUM_LIBDIR)", "$(MNL_LIBDIR)" },
      libraries = { "sodium", "mnl", "pthread" },
    },
    ["wgoverlay"] = "lua/wgoverlay/init.lua",
    ["wgoverlay.allocator"] = "lua/wgoverlay/allocator.lua",
    ["wgoverlay.cidr"] = "lua/wgoverlay/cidr.lua",
    ["wgoverlay.cli"] = "lua/wgoverlay/cli.lua",
    ["wgoverlay.cli_cluster"] = "lua/wgoverlay/cli_cluster.lua",
    ["wgoverlay.cluster"] = "lua/wgoverlay/cluster.lua",
    ["wgoverlay.config"] = "lua/wgoverlay/config.lua",
    ["wgoverlay.containers"] = "lua/wgoverlay/containers.lua",
    ["wgoverlay.control"] = "lua/wgoverlay/control.lua",
    ["wgoverlay.daemon"] = "lua/wgoverlay/daemon.lua",
    ["wgoverlay.dns"] = "lua/wgoverlay/dns.lua",
    ["wgoverlay.dns_server"] = "lua/wgoverlay/dns_server.lua",
    ["wgoverlay.joinproto"] = "lua/wgoverlay/joinproto.lua",
    ["wgoverlay.endpoint"] = "lua/wgoverlay/endpoint.lua",
    ["wgoverlay.health"] = "lua/wgoverlay/health.lua",
    ["wgoverlay.jsonlines"] = "lua/wgoverlay/jsonlines.lua",
    ["wgoverlay.membership"] = "lua/wgoverlay/membership.lua",
    ["wgoverlay.nat.agent"] = "lua/wgoverlay/nat/agent.lua",
    ["wgoverlay.nat.candidates"] = "lua/wgoverlay/nat/candidates.lua",
    ["wgoverlay.nat.policy"] = "lua/wgoverlay/nat/policy.lua",
    ["wgoverlay.nat.punch"] = "lua/wgoverlay/nat/punch.lua",
    ["wgoverlay.nat.stun"] = "lua/wgoverlay/nat/stun.lua",
    ["wgoverlay.nat.turn"] = "lua/wgoverlay/nat/turn.lua",
    ["wgoverlay.registry"] = "lua/wgoverlay/registry/init.lua",
    ["wgoverlay.registry.leader"] = "lua/wgoverlay/registry/leader.lua",
    ["wgoverlay.registry.member"] = "lua/wgoverlay/registry/member.lua",
    ["wgoverlay.schema"] = "lua/wgoverlay/schema.lua",
    ["wgoverlay.state"] = "lua/wgoverlay/state.lua",
    ["wgoverlay.token"] = "lua/wgoverlay/token.lua",
    ["wgoverlay.transport"] = "lua/wgoverlay/transport.lua",
  },
  install = {
    bin = {
      wgoverlay = "bin/wgoverlay",
    },
  },
}
