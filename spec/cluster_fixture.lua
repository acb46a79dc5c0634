--- A cluster of real daemons (bin/wgoverlay init / token / join / run /
-- attach) in network namespaces on one bridge, for integration specs.
--
--   local fixture = require "spec.cluster_fixture"
--   local cl = fixture.new()                       -- hub namespace with bridge br0
--   local L = cl:leader("leader", "192.0.2.1")     -- init (extra init args: 3rd argument)
--   local A = cl:node("a", "192.0.2.2")            -- namespace + state dir, not joined yet
--   cl:join(A, cl:token(L, 2))
--   cl:start(L); cl:start(A)
--   local c = cl:attach("A", A, "front")           -- container namespace, resolv.conf -> A
--   cl:wait_health(A, { "leader" }, true, 30)
--   cl:teardown()                                  -- in teardown(): always
--
-- Every address lives in namespaces made here (192.0.2.0/24 underlay on
-- the bridge, the cluster's overlay inside WireGuard); teardown stops the
-- processes, deletes the namespaces, /etc/netns files, UAPI sockets and
-- state directories.
local helpers = require "spec.helpers"
local cjson = require "cjson"
local state = require "wgoverlay.state"

local quote = helpers.quote
local wait_until = helpers.wait_until

local M = {}
M.PORT = 51820
M.ZONE = "overlay.internal"

local Cluster = {}
Cluster.__index = Cluster

function M.new(opts)
  opts = opts or {}
  assert(helpers.is_root, "integration specs need root")
  local hub = helpers.netns.new("hub")
  hub:must("ip link add br0 type bridge && ip link set br0 up")
  return setmetatable({ hub = hub, nodes = {}, ctrs = {}, etc_dirs = {}, ifnames = {},
                        port = opts.port or M.PORT }, Cluster)
end

function Cluster:cli(ns, args) return helpers.wgoverlay_cli(ns, args) end

function Cluster:must_cli(ns, args)
  local code, out, err = self:cli(ns, args)
  assert(code == 0, ("wgoverlay %s failed (exit %s):\n%s%s"):format(args, tostring(code), out, err))
  return out
end

function M.fqdn(name) return name .. "." .. M.ZONE end

--- `status --json` of a node's daemon, or nil and the error.
function Cluster:status(node)
  local code, out, err = self:cli(node.ns, "status --state " .. quote(node.dir) .. " --json")
  if code ~= 0 then return nil, err end
  return cjson.decode(out)
end

function M.peer(st, name)
  for _, p in ipairs(st.peers) do if p.name == name then return p end end
end

--- Waits until `node` sees each of `names` healthy (or unhealthy).
function Cluster:wait_health(node, names, healthy, timeout)
  local last
  local st = wait_until(function()
    local s = self:status(node)
    last = s
    if not s then return false end
    for _, n in ipairs(names) do
      local p = M.peer(s, n)
      if not p or p.healthy ~= healthy then return false end
    end
    return s
  end, timeout or 20, 0.25)
  assert(st, ("%s: peers %s not %s; last status:\n%s"):format(node.name, table.concat(names, ","),
    healthy and "healthy" or "unhealthy", last and cjson.encode(last) or "none"))
  return st
end

--- Starts `wgoverlay run` for the node and waits for its control socket
-- (extra: more `run` arguments, e.g. "--metrics IP:PORT").
function Cluster:start(node, extra)
  node.proc = node.ns:spawn("lua5.4 bin/wgoverlay run --state " .. quote(node.dir) .. (extra and (" " .. extra) or ""),
    { env = helpers.lua_env(), cwd = helpers.root, name = "run-" .. node.name })
  local ok, err = wait_until(function()
    if not node.proc:alive() then error("exited: " .. node.proc:log()) end
    return self:status(node) ~= nil
  end, 15, 0.1)
  assert(ok, ("daemon %s did not come up: %s\n%s"):format(node.name, tostring(err), node.proc:log()))
end

--- SIGTERM; the daemon must stop cleanly with status 0.
function Cluster:stop(node)
  assert(node.proc:alive(), node.name .. " is not running:\n" .. node.proc:log())
  assert(node.proc:stop(5), node.name .. " did not stop on SIGTERM")
  local code = node.proc:exit_code()
  assert(code == 0, ("%s exited with %s:\n%s"):format(node.name, tostring(code), node.proc:log()))
end

function Cluster:host(name, ip)
  local ns = helpers.netns.new(name)
  local hub_end = helpers.netns.veth(self.hub, ns, { b = { ip .. "/24" } })
  self.hub:must("ip link set " .. hub_end .. " master br0")
  return ns
end

function Cluster:read_node(node)
  local n = assert(state.load(node.dir .. "/node.json"))
  node.ip, node.ip6, node.ifname, node.public_key = n.self.overlay_ip, n.self.overlay_ip6, n.ifname, n.public_key
  self.ifnames[#self.ifnames + 1] = n.ifname
  return n
end

--- A host namespace on the bridge and a state directory (not joined).
function Cluster:node(name, ip)
  local node = { name = name, under = ip, endpoint = ip .. ":" .. self.port,
                 dir = helpers.tmpdir() .. "/state-" .. name }
  node.ns = self:host(name, ip)
  self.nodes[name] = node
  return node
end

--- A node that runs `init` (the leader).
function Cluster:leader(name, ip, extra)
  local node = self:node(name, ip)
  self:must_cli(node.ns, ("init --state %s --endpoint %s --name %s%s"):format(
    quote(node.dir), node.endpoint, name, extra and (" " .. extra) or ""))
  self:read_node(node)
  self.leader_node = node
  return node
end

function Cluster:token(leader, uses, ttl)
  return (self:must_cli(leader.ns, ("token --state %s --uses %d%s"):format(quote(leader.dir), uses or 1,
    ttl and (" --ttl " .. ttl) or "")):gsub("%s+$", ""))
end

function Cluster:join(node, tok, timeout)
  self:must_cli(node.ns, ("join --state %s --token %s --endpoint %s --name %s --timeout %d"):format(
    quote(node.dir), quote(tok), node.endpoint, node.name, timeout or 10))
  self:read_node(node)
end

--- Attaches a fresh container namespace to `node` as DNS `name`, with
-- its resolv.conf (for `ip netns exec`) pointing at the node (extra:
-- more `attach` arguments, e.g. "--label app=web").
function Cluster:attach(key, node, name, extra)
  local ns = helpers.netns.new("c" .. key)
  local out = self:must_cli(node.ns, ("attach --state %s %s --name %s%s"):format(quote(node.dir), ns.name, name,
    extra and (" " .. extra) or ""))
  local ip, ip6 = out:match("attached %S+ as %S+: (%S+) (%S+)")
  assert(ip, "unexpected attach output: " .. out)
  local c = { key = key, ns = ns, node = node, name = name, ip = ip, ip6 = ip6 }
  self.ctrs[key] = c
  helpers.netns_resolv_conf(ns, node.ip)
  self.etc_dirs[#self.etc_dirs + 1] = ns.name
  return c
end

function Cluster:teardown()
  for _, n in ipairs(self.etc_dirs) do helpers.remove_netns_etc(n) end
  local ok, err = pcall(helpers.cleanup) -- procs by pid, namespaces, tmpdir (state dirs)
  for _, ifn in ipairs(self.ifnames) do os.remove("/var/run/wireguard/" .. ifn .. ".sock") end
  assert(ok, err)
end

return M
