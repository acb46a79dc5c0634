-- Registry at scale: how long a join takes to reach every member, with
-- the real registry code of both backends and N simulated members in one
-- process (scripts/bench_registry.sh runs it inside a network namespace
-- of its own, with etcd on that namespace's loopback).
--
--   lua5.4 scripts/registry_sim.lua etcd|embedded MEMBERS JOINS
--
-- etcd: MEMBERS instances of wgoverlay.registry.etcd (each with its own
-- etcd client: a watch stream, a lease kept alive every 3 s, its record),
-- as daemons run them; each join is an admission transaction run by a
-- member in turn (Reg:admit_async, as for a join datagram).
-- embedded: the real leader (wgoverlay.registry.leader: membership server,
-- deltas) and MEMBERS TCP sessions applying its deltas with the member
-- view of wgoverlay.membership, as registry/member.lua does; each join is
-- Leader:admit.
--
-- Prints one line per figure: "registry_sim <backend> <key> <value>".
-- A join is applied by a member when its member list has the new node.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local uv = require "luv"
local core = require "wgoverlay.core"
local cjson = require "cjson"

local backend, N, J = arg[1], tonumber(arg[2] or 500), tonumber(arg[3] or 20)
assert(backend == "etcd" or backend == "embedded", "usage: registry_sim.lua etcd|embedded MEMBERS JOINS")
N, J = math.tointeger(N), math.tointeger(J)

local function out(key, value) print(("registry_sim %s %s %s"):format(backend, key, value)) end

local function pct(list, p)
  table.sort(list)
  if #list == 0 then return 0 end
  return list[math.max(1, math.ceil(#list * p))]
end

local function run_until(cond, timeout_ms)
  local t0 = uv.now()
  local t = uv.new_timer()
  t:start(10, 10, function() end)
  while not cond() and uv.now() - t0 < timeout_ms do uv.run("once") end
  t:close()
  uv.run("nowait")
  return cond()
end

local function host_for(node, on_changed, paths)
  return {
    node = node, paths = paths or {}, t = { send_datagram = function() end, status = function() return { peers = {} } end },
    log = function() end, event = function() end, guard = function(_, fn) return fn end,
    changed = on_changed, punch = function() end, removed = function() end,
  }
end

local CIDR4, CIDR6 = "10.200.0.0/16", "fd00:200::/48"

-- applied[join_name][member_index] = ms after the join started
local started, applied = {}, {}
local function saw(name, i)
  if started[name] and not applied[name][i] then applied[name][i] = uv.now() - started[name] end
end

local function report(total_requests, seconds)
  local all, each = {}, {}
  for name in pairs(started) do
    local worst, n = 0, 0
    for _, ms in pairs(applied[name]) do
      n = n + 1
      each[#each + 1] = ms
      if ms > worst then worst = ms end
    end
    if n == N then all[#all + 1] = worst end
  end
  out("members", N)
  out("joins", J)
  out("joins_applied_everywhere", #all)
  out("all_applied_p50_ms", pct(all, 0.5))
  out("all_applied_p99_ms", pct(all, 0.99))
  out("member_applied_p50_ms", pct(each, 0.5))
  out("member_applied_p99_ms", pct(each, 0.99))
  if total_requests then out("etcd_requests_per_s", string.format("%.1f", total_requests / seconds)) end
end

if backend == "etcd" then
  local etcd = require "wgoverlay.etcd"
  local regetcd = require "wgoverlay.registry.etcd"
  local allocator = require "wgoverlay.allocator"
  local url = os.getenv("ETCD_URL") or "http://127.0.0.1:23790"
  local prefix = "/wgoverlay/sim/"
  local cpriv, cpub = core.x25519_keypair()
  local reg = { kind = "etcd", endpoints = { (url:gsub("^http", "etcd")) }, prefix = prefix }
  local cluster = { cidr4 = CIDR4, cidr6 = CIDR6, zone = "overlay.internal", control_public = core.key_to_base64(cpub),
                    registry = reg }
  local e = assert(etcd.new({ endpoints = { url } }))
  local alloc = allocator.new({ cidr4 = CIDR4, cidr6 = CIDR6 })
  -- the members, written as if they had joined (a few per transaction)
  local nodes = {}
  for i = 1, N do
    local s = alloc:slice_at(i - 1)
    local priv, pub = core.generate_keys()
    nodes[i] = { name = "m" .. i, private_key = priv, public_key = pub, role = "member", ifname = "wgosim",
                 control_private = core.key_to_base64(cpriv), cluster = cluster,
                 self = { overlay_ip = s.ip, overlay_ip6 = s.ip6, slice = s.slice, slice6 = s.slice6,
                          endpoint = ("10.0.%d.%d:51820"):format(i // 250, i % 250 + 1), listen_port = 51820 } }
  end
  assert(regetcd.sync(function(cb)
    regetcd.create_cluster(e, prefix, cluster, { name = "m1", public_key = nodes[1].public_key,
      endpoint = nodes[1].self.endpoint, overlay_ip = nodes[1].self.overlay_ip, overlay_ip6 = nodes[1].self.overlay_ip6,
      slice = nodes[1].self.slice, slice6 = nodes[1].self.slice6, containers = {} }, cb)
  end))
  for i = 2, N, 50 do
    local ops = {}
    for k = i, math.min(N, i + 49) do
      local n = nodes[k]
      ops[#ops + 1] = etcd.put_op(prefix .. "nodes/" .. n.name, cjson.encode({ name = n.name, public_key = n.public_key,
        endpoint = n.self.endpoint, overlay_ip = n.self.overlay_ip, overlay_ip6 = n.self.overlay_ip6,
        slice = n.self.slice, slice6 = n.self.slice6, containers = {} }))
      ops[#ops + 1] = etcd.put_op(prefix .. "slices/" .. (k - 1), n.name)
    end
    assert(regetcd.sync(function(cb) e:txn({ success = ops }, cb) end))
  end
  local tok = assert(regetcd.sync(function(cb)
    regetcd.put_token(e, prefix, regetcd.token_key(cpriv), { endpoints = { nodes[1].self.endpoint },
      control_public = cluster.control_public, ttl = 3600, uses = J }, cb)
  end))
  local token_id = require("wgoverlay.token").decode(tok).i
  local regs = {}
  for i = 1, N do
    local r
    r = assert(regetcd.open(host_for(nodes[i], function()
      for name in pairs(started) do if r.nodes[name] then saw(name, i) end end
    end)))
    assert(r:start())
    regs[i] = r
  end
  run_until(function()
    for _, r in ipairs(regs) do if not r.watch_up then return false end end
    return true
  end, 60000)
  local function requests()
    local n = 0
    for _, r in ipairs(regs) do n = n + r.e.stats.requests end
    return n
  end
  -- steady state: leases kept alive, nothing else
  local r0, t0 = requests(), uv.now()
  run_until(function() return false end, 9000)
  out("idle_etcd_requests_per_s", string.format("%.1f", (requests() - r0) / ((uv.now() - t0) / 1000)))
  r0, t0 = requests(), uv.now()
  for j = 1, J do
    local name = "new" .. j
    local _, pub = core.generate_keys()
    applied[name] = {}
    started[name] = uv.now()
    local done = false
    regs[(j - 1) % N + 1]:admit_async({ name = name, public_key = pub, endpoint = ("10.1.0.%d:51820"):format(j) },
      token_id, false, function(resp, err)
        assert(resp, err)
        done = true
      end)
    run_until(function()
      if not done then return false end
      for i = 1, N do if not applied[name][i] then return false end end
      return true
    end, 30000)
  end
  report(requests() - r0, (uv.now() - t0) / 1000)
  for _, r in ipairs(regs) do r.lease = nil r:stop() end
  e:close()
else
  local cluster_mod = require "wgoverlay.cluster"
  local jsonlines = require "wgoverlay.jsonlines"
  local membership = require "wgoverlay.membership"
  local dir = assert(os.getenv("SIM_STATE"), "SIM_STATE: a fresh directory")
  local node = assert(cluster_mod.init({ state = dir, endpoint = "10.0.0.1:51820", name = "leader", cidr = CIDR4,
                                         cidr6 = CIDR6 }))
  local paths = cluster_mod.paths(dir)
  local leader_reg = assert(require("wgoverlay.registry.leader").open(host_for(node, function() end, paths)))
  -- the members join (admit, as for a join datagram), then connect from
  -- their overlay address (bench_registry.sh makes 10.200.0.0/16 local to
  -- lo in its namespace)
  local members = {}
  for i = 1, N do
    local _, pub = core.generate_keys()
    local resp = assert(leader_reg:admit({ name = "m" .. i, public_key = pub, endpoint = ("10.0.%d.%d:51820"):format(
      i // 250, i % 250 + 1) }, "sim", false))
    members[i] = { name = "m" .. i, ip = resp.node.overlay_ip }
  end
  assert(leader_reg:start())
  for i, m in ipairs(members) do
    local view = assert(membership.member.new({ self_name = m.name }))
    local tcp = uv.new_tcp()
    assert(tcp:bind(m.ip, 0))
    local conn
    conn = jsonlines.wrap(tcp, {
      on_line = function(_, line)
        local msg = cjson.decode(line)
        local res = view:apply(msg)
        if res and res.need_snapshot then conn:send(view:hello()) end
        if res and res.changed then
          for name in pairs(started) do if view:get(name) then saw(name, i) end end
        end
      end,
      log = function() end,
    })
    m.view, m.conn = view, conn
    tcp:connect(node.self.overlay_ip, cluster_mod.MEMBERSHIP_PORT, function(err)
      assert(not err, err)
      m.up = true
      conn:send(view:hello())
      conn:start()
    end)
  end
  assert(run_until(function()
    for _, m in ipairs(members) do if not (m.up and m.view.version > 0) then return false end end
    return true
  end, 60000), "members did not all connect")
  for j = 1, J do
    local name = "new" .. j
    local _, pub = core.generate_keys()
    applied[name] = {}
    started[name] = uv.now()
    assert(leader_reg:admit({ name = name, public_key = pub, endpoint = ("10.1.0.%d:51820"):format(j) }, "sim", false))
    run_until(function()
      for i = 1, N do if not applied[name][i] then return false end end
      return true
    end, 30000)
  end
  report()
  leader_reg:stop()
  for _, m in ipairs(members) do m.conn:close() end
  uv.run("nowait")
end
-- as bin/wgoverlay does: exit without closing the Lua state (luv's loop
-- finaliser would run close callbacks into a state being torn down)
uv.run("nowait")
os.exit(0)
