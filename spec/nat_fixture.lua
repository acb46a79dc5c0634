--- The NAT traversal specs' world (#netns, root): an "internet" bridge in
-- a hub namespace, coturn, NAT routers made with nftables, nodes behind
-- them running the real CLI and daemons, and the helpers the specs share
-- (status, connection waits, byte counters on the bridge, a report).
--
--   hub (bridge br0, 203.0.113.0/24 unless told otherwise)
--     ├─ a public node        203.0.113.x:51820
--     ├─ coturn (optional)    STUN + TURN
--     └─ router Rn ─ node     a NAT (nftables masquerade) and a private LAN
--
-- NAT kinds of `fx:node`: "cone" (`masquerade`: source ports kept, an
-- endpoint-independent mapping), "symmetric" (`masquerade random`: a
-- mapping per destination).  Like a home router, a NAT drops unsolicited
-- packets addressed to itself (`ct state new drop` on its WAN side) unless
-- the node is made with `input_filter = false` (a plain Linux box doing
-- masquerade).
-- @module spec.nat_fixture
local helpers = require "spec.helpers"
local cjson = require "cjson"
local state = require "wgoverlay.state"

local quote = helpers.quote
local wait_until = helpers.wait_until

local M = {}
M.PORT = 51820

local F = {}
F.__index = F

--- The hub: a bridge `br0` in namespace "nhub".
-- @tparam table o `counters` (nft rule bodies, each ending in `counter
--   comment "NAME"`, in a bridge forward chain: `fx:counters()` reads
--   them), `prefix` (namespace name prefix, default "n")
function M.new(o)
  o = o or {}
  assert(helpers.is_root, "integration specs need root")
  for _, tool in ipairs({ "nft", "ping", "conntrack" }) do
    assert(helpers.sh("command -v " .. tool .. " >/dev/null"), tool .. " is not installed")
  end
  local self = setmetatable({ nodes = {}, ifnames = {}, report = {}, prefix = o.prefix or "n" }, F)
  self.hub = helpers.netns.new(self.prefix .. "hub")
  self.hub:must("ip link add br0 type bridge && ip link set br0 up")
  local rules = {}
  for _, r in ipairs(o.counters or {}) do rules[#rules + 1] = "    " .. r end
  self.hub:must(([[nft -f - <<'EOF'
table bridge natcount {
  chain filt {
    type filter hook forward priority 0; policy accept;
%s
  }
}
EOF]]):format(table.concat(rules, "\n")))
  return self
end

--- A namespace on the hub with `addrs` on its end of the veth (and a
-- route to the networks behind the core router, when there is one).
function F:on_hub(ns, addrs)
  local hub_end, ns_end = helpers.netns.veth(self.hub, ns, { b = addrs })
  self.hub:must("ip link set " .. hub_end .. " master br0")
  if self.core then ns:must(("ip route add %s via %s"):format(self.core.behind, self.core.ip)) end
  return ns_end
end

--- A router on the hub at `ip` with links to routers of nodes made with
-- `{ core = true }` (their WAN addresses in `behind`, e.g.
-- "198.18.0.0/16", one /24 each): the Internet between two such NATs is
-- one routed hop, not a bridge, as it always is at least.  Make it before
-- the namespaces on the hub.
function F:core_router(ip, behind)
  local ns = self:host("core", { ip .. "/24" })
  ns:must("sysctl -q -w net.ipv4.ip_forward=1")
  self.core = { ns = ns, ip = ip, behind = behind }
  return ns
end

--- A bare namespace on the hub (coturn, an attacker, ...).
function F:host(name, addrs)
  local ns = helpers.netns.new(self.prefix .. name)
  self:on_hub(ns, addrs)
  return ns
end

--- Starts coturn in `ns` on `ip` (STUN and TURN on 3478).
function F:turn(ns, ip, user, password)
  self.turnd = helpers.turnserver(ns, { listen = { ip }, relay_ip = ip, users = { user .. ":" .. password },
    extra = "--min-port 49152 --max-port 49400" })
  return self.turnd
end

local NAT_RULES = [[nft -f - <<'EOF'
table ip nat {
  chain post {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "%s" masquerade%s
  }
  chain input {
    type filter hook input priority filter; policy accept;
%s
  }
}
EOF]]

--- A node: public when `wan_ip` is nil, else behind router "r"..name.
-- @string name
-- @string under the node's underlay address (its LAN address behind a NAT)
-- @string[opt] wan_ip the router's address on the hub
-- @string[opt] nat "cone" or "symmetric"
-- @tparam[opt] table o `input_filter` (default true), `core` (the router's
--   WAN link goes to the core router, whose address on it is `wan_ip`'s
--   /24 with .1); IPv6 (dual stack, the routers only route it: no NAT):
--   `v6` (the node's global address: on the hub /64 for a public node,
--   else in its LAN /64 whose ::1 is the router) and `wan6` (the router's
--   address on the hub /64)
function F:node(name, under, wan_ip, nat, o)
  o = o or {}
  local node = { name = name, under = under, endpoint = under .. ":" .. M.PORT,
                 dir = helpers.tmpdir() .. "/state-" .. name, v6 = o.v6 }
  node.ns = helpers.netns.new(self.prefix .. name)
  if not wan_ip then
    self:on_hub(node.ns, { under .. "/24", o.v6 and (o.v6 .. "/64") or nil })
    if o.v6 then self:_v6_host(node.ns) end
  else
    local r = helpers.netns.new(self.prefix .. "r" .. name)
    local wan
    if o.core then
      local gw = wan_ip:gsub("%.%d+$", ".1")
      wan = select(2, helpers.netns.veth(self.core.ns, r, { a = { gw .. "/24" }, b = { wan_ip .. "/24" } }))
      r:must("ip route add default via " .. gw)
    else
      wan = self:on_hub(r, { wan_ip .. "/24" })
    end
    local lan = under:gsub("%.%d+$", ".1")
    node.router_lan, node.lan_if = helpers.netns.veth(r, node.ns, { a = { lan .. "/24" }, b = { under .. "/24" } })
    node.ns:must("ip route add default via " .. lan)
    r:must("sysctl -q -w net.ipv4.ip_forward=1")
    local filter = o.input_filter == false and "" or ('    iifname "%s" ct state new drop'):format(wan)
    r:must(NAT_RULES:format(wan, nat == "symmetric" and " random" or "", filter))
    node.router, node.wan, node.router_wan, node.lan_gw = r, wan_ip, wan, lan
    if o.v6 then
      local lan6 = o.v6:gsub("::%x+$", "::1")
      r:addr(wan, o.wan6 .. "/64")
      r:addr(node.router_lan, lan6 .. "/64")
      r:must("sysctl -q -w net.ipv6.conf.all.forwarding=1")
      node.ns:addr(node.lan_if, o.v6 .. "/64")
      node.ns:must("ip -6 route add default via " .. lan6)
      self:_v6_host(r, { prefix = o.v6:gsub("::%x+$", "::/64"), via = o.wan6 })
    end
  end
  self.nodes[name] = node
  return node
end

-- A namespace on the hub's IPv6 network: it learns the routes to every
-- LAN behind a router, and every such namespace the route to `lan`.
function F:_v6_host(ns, lan)
  self.v6_ns = self.v6_ns or {}
  self.v6_lans = self.v6_lans or {}
  for _, l in ipairs(self.v6_lans) do ns:must(("ip -6 route add %s via %s"):format(l.prefix, l.via)) end
  if lan then
    for _, other in ipairs(self.v6_ns) do other:must(("ip -6 route add %s via %s"):format(lan.prefix, lan.via)) end
    self.v6_lans[#self.v6_lans + 1] = lan
  end
  self.v6_ns[#self.v6_ns + 1] = ns
end

function F:cli(ns, args) return helpers.wgoverlay_cli(ns, args) end

function F:must_cli(ns, args)
  local code, out, err = self:cli(ns, args)
  assert(code == 0, ("wgoverlay %s failed (exit %s):\n%s%s"):format(args, tostring(code), out, err))
  return out
end

--- `status --json` of a node (nil when the daemon does not answer).
function F:status(node)
  local code, out = self:cli(node.ns, "status --state " .. quote(node.dir) .. " --json")
  if code ~= 0 then return nil end
  return cjson.decode(out)
end

--- A peer's entry in a status.
function M.peer(st, name)
  for _, p in ipairs(st and st.peers or {}) do if p.name == name then return p end end
end

--- A line for the report printed at teardown (and now, on stderr).
function F:note(fmt, ...)
  local line = string.format(fmt, ...)
  self.report[#self.report + 1] = line
  io.stderr:write("\n  nat: " .. line .. "\n")
end

--- Reads a node's state after init/join (overlay address, interface, key).
function F:read_node(node)
  local n = assert(state.load(node.dir .. "/node.json"))
  node.ip, node.ifname, node.public_key = n.self.overlay_ip, n.ifname, n.public_key
  node.over_ip = node.ip -- for helpers.iperf3
  self.ifnames[#self.ifnames + 1] = n.ifname
  return n
end

--- `init` on a public node (the leader); the join token (10 uses) is kept.
function F:init(node, args)
  self:must_cli(node.ns, ("init --state %s --endpoint %s --name %s %s"):format(quote(node.dir), node.endpoint,
    node.name, args or ""))
  self:read_node(node)
  self.token = self:must_cli(node.ns, "token --state " .. quote(node.dir) .. " --uses 10"):gsub("%s+$", "")
end

function F:join(node)
  self:must_cli(node.ns, ("join --state %s --token %s --endpoint %s --name %s --timeout 10"):format(
    quote(node.dir), quote(self.token), node.endpoint, node.name))
  self:read_node(node)
end

--- Starts the daemons of `list`; returns the time they were started.
-- @tparam[opt] table env extra environment (e.g. LD_PRELOAD for one node)
function F:start(list, env_extra)
  local t0 = helpers.now()
  for _, node in ipairs(list) do
    local env = helpers.lua_env()
    env.WGO_NAT_DEBUG = os.getenv("WGO_NAT_DEBUG") -- timestamps of the NAT agent's steps in the logs
    for k, v in pairs(env_extra or {}) do env[k] = v end
    for k, v in pairs(node.env or {}) do env[k] = v end
    node.proc = node.ns:spawn("lua5.4 bin/wgoverlay run --state " .. quote(node.dir),
      { env = env, cwd = helpers.root, name = "run-" .. node.name })
  end
  for _, node in ipairs(list) do
    local ok, err = wait_until(function()
      if not node.proc:alive() then error("exited: " .. node.proc:log()) end
      return self:status(node) ~= nil
    end, 15, 0.1)
    assert(ok, ("daemon %s did not come up: %s\n%s"):format(node.name, tostring(err), node.proc:log()))
  end
  return t0
end

--- Waits until `a` sees `b` with connection `kind` and vice versa; returns
-- the seconds since `t0` and both statuses.
function F:wait_connection(a, b, kind, t0, timeout)
  local last = {}
  local ok = wait_until(function()
    local sa, sb = self:status(a), self:status(b)
    last = { sa, sb }
    local pa, pb = M.peer(sa, b.name), M.peer(sb, a.name)
    return pa and pb and pa.connection == kind and pb.connection == kind and pa.nat_phase == "up"
      and pb.nat_phase == "up"
  end, timeout or 40, 0.25)
  local took = helpers.now() - t0
  if not ok then
    local function brief(st, name)
      local p = M.peer(st, name)
      return p and ("%s via %s (%s, phase %s)"):format(p.connection, tostring(p.endpoint), p.healthy and "healthy"
        or "unhealthy", tostring(p.nat_phase)) or "no status"
    end
    error(("%s<->%s not %s after %.1f s: %s sees %s; %s sees %s"):format(a.name, b.name, kind, took, a.name,
      brief(last[1], b.name), b.name, brief(last[2], a.name)), 2)
  end
  return took, last[1], last[2]
end

function F:wait_ping(from, to, timeout)
  local ok = wait_until(function() return from.ns:ping(to.ip, 1, 1) end, timeout or 15, 0.1)
  assert(ok, ("%s cannot ping %s (%s)"):format(from.name, to.name, to.ip))
end

--- The hub's byte and packet counters, by comment.
function F:counters() return helpers.nft_counters(self.hub, "bridge", "natcount") end

--- Deletes everything (namespaces, processes, UAPI sockets) and prints the
-- report; call from `teardown`.
function F:teardown()
  local ok, err = pcall(helpers.cleanup)
  for _, ifn in ipairs(self.ifnames) do os.remove("/var/run/wireguard/" .. ifn .. ".sock") end
  if #self.report > 0 then io.stderr:write("\n  nat: summary\n    " .. table.concat(self.report, "\n    ") .. "\n") end
  assert(ok, err)
end

return M
