--- `wgoverlay run`: one node of the overlay, on a luv event loop.  This
-- file wires the parts together and keeps the node's WireGuard peers and
-- DNS zone in step with the member list; each part lives in its own
-- module:
--
-- * wgoverlay.registry: the member list and this node's record, behind one
--   interface (embedded: the leader holds the registry and admits joins
--   arriving on the WireGuard port, members keep a session to it);
-- * wgoverlay.dns_server: the authoritative DNS server on the overlay address;
-- * wgoverlay.health: handshake age plus authenticated UDP probes with RTT;
-- * wgoverlay.containers: containers attached through the control socket;
-- * wgoverlay.control: the root-only control socket (status, attach, ...);
-- * wgoverlay.nat.agent: STUN, candidates, hole punching, the TURN relay.
-- @module wgoverlay.daemon
local uv = require "luv"
local cjson = require "cjson"
local core = require "wgoverlay.core"
local state = require "wgoverlay.state"
local joinproto = require "wgoverlay.joinproto"
local membership = require "wgoverlay.membership"
local dns = require "wgoverlay.dns"
local containers = require "wgoverlay.containers"
local cluster = require "wgoverlay.cluster"
local control = require "wgoverlay.control"
local health = require "wgoverlay.health"
local registry = require "wgoverlay.registry"
local cidr = require "wgoverlay.cidr"
local transport = require "wgoverlay.transport"
local nat_agent = require "wgoverlay.nat.agent"
local portmap = require "wgoverlay.nat.portmap"
local nat_signal = require "wgoverlay.nat.signal"
local sdnotify = require "wgoverlay.sdnotify"
local metrics = require "wgoverlay.metrics"
local policy = require "wgoverlay.policy"

local M = {}

M.KEEPALIVE = 25   -- default; the cluster's NAT setting `keepalive` overrides it
M.NAT_TICK = 0.25  -- seconds between NAT agent ticks
M.EVENTS_KEPT = 64 -- cluster events kept for status

local Node = {}
Node.__index = Node

function Node:log(fmt, ...)
  io.stderr:write(string.format("wgoverlay[%s]: " .. fmt .. "\n", self.node.name, ...))
end

-- Cluster events (health transitions, joins, removals, containers): the
-- most recent ones are kept for `status` (newest last).
function Node:event(kind, fields)
  local ev = { time = os.time(), type = kind }
  for k, v in pairs(fields or {}) do ev[k] = v end
  local list = self.events
  list[#list + 1] = ev
  if #list > M.EVENTS_KEPT then table.remove(list, 1) end
end

-- Every callback the daemon gives luv goes through this.  An error raised
-- in one is a bug: it is logged with its traceback and the daemon stops
-- cleanly (interface, sockets and control socket removed) and `run`
-- returns the reason, instead of luv's bare exit(255).  Errors caused by
-- one client's input are handled lower down and close only that
-- connection (wgoverlay.jsonlines, the DNS server).
function Node:guard(where, fn)
  return function(...)
    local ok, err = xpcall(fn, debug.traceback, ...)
    if not ok then
      self:log("internal error in %s: %s", where, tostring(err))
      self.fatal = self.fatal or string.format("internal error in %s: %s", where, tostring(err):match("^[^\n]*"))
      self:stop()
    end
  end
end

-- Closes a luv handle once.
local function close(h)
  if h and not h:is_closing() then h:close() end
end

local function prefix_of(c) return assert(cidr.parse(c)).prefix end

-- Epoch seconds with microseconds.
local function now_precise()
  local sec, usec = uv.gettimeofday()
  return sec + usec / 1e6
end

-- ---------------------------------------------------------------------
-- peers and DNS from the member list
-- ---------------------------------------------------------------------

function Node:sync_peers()
  local members = self.reg:members()
  local diff = membership.diff(self.peers, membership.desired_peers(members, self.node.name))
  -- A member that rotated its key: the key changes in place, its sessions
  -- go on (see rotate_key); only if the engine refuses, remove and add.
  for _, e in ipairs(diff.rekey) do
    local ok, err = self.t:set_peer_public_key(e.old_public_key, e.public_key)
    if ok then
      self.peers[e.public_key], self.peers[e.old_public_key] = self.peers[e.old_public_key], nil
      self.health[e.public_key] = self.health[e.old_public_key]
      if self.hsvc then self.hsvc:forget(e.old_public_key) end
      self:log("peer %s rotated its key: %s -> %s", e.name, e.old_public_key, e.public_key)
      self:event("peer_key_rotated", { peer = e.name })
      if e.endpoint_changed or e.allowed_ips_changed then diff.update[#diff.update + 1] = e end
    else
      self:log("cannot change the key of peer %s in place (%s): replacing it", e.name, err)
      diff.remove[#diff.remove + 1] = e.old_public_key
      diff.add[#diff.add + 1] = e
    end
  end
  for _, pk in ipairs(diff.remove) do
    self.t:remove_peer(pk)
    self.peers[pk] = nil
    self.health[pk] = nil
    if self.hsvc then self.hsvc:forget(pk) end
    self:log("peer %s removed", pk)
  end
  for _, list in ipairs({ diff.add, diff.update }) do
    for _, e in ipairs(list) do
      -- A peer we have already is steered by the NAT agent: a new
      -- advertised endpoint goes to its policy, not straight to the engine.
      local endpoint = e.endpoint
      if list == diff.update then endpoint = nil end
      local ok, err = self.t:add_peer({ public_key = e.public_key, endpoint = endpoint,
                                         allowed_ips = e.allowed_ips, persistent_keepalive = self.keepalive })
      if ok then
        self.peers[e.public_key] = { name = e.name, endpoint = e.endpoint or (self.peers[e.public_key] or {}).endpoint,
                                     allowed_ips = e.allowed_ips }
      else
        self:log("cannot configure peer %s: %s", e.name or e.public_key, err)
      end
    end
  end
  local others = {}
  for _, r in ipairs(members) do
    if r.name ~= self.node.name and self.peers[r.public_key] then others[#others + 1] = r end
  end
  self.nat:set_peers(others)
  self:rebuild_zone(members)
  self:update_mtu()
  self:sync_policy()
end

-- ---------------------------------------------------------------------
-- network policy (wgoverlay.policy): the registry's document enforced on
-- this node's containers, re-applied when it, the members' containers or
-- their labels change
-- ---------------------------------------------------------------------

function Node:policy_doc()
  return self.reg.policy and self.reg:policy() or nil
end

function Node:sync_policy()
  if not self.enforcer or self.stopping then return end
  local here = self.containers:records()
  local all, seen = {}, {}
  for _, c in ipairs(here) do
    all[#all + 1] = c
    seen[c.ip] = true
  end
  for _, r in ipairs(self.reg:members()) do
    if r.name ~= self.node.name then
      for _, c in ipairs(r.containers or {}) do
        if not seen[c.ip] then all[#all + 1] = c end
      end
    end
  end
  local pol = self:policy_doc()
  local before, before_err = self.enforcer.version, self.enforcer.error
  local ok, err = self.enforcer:sync(pol, all, here)
  if not ok then
    -- retried on every NAT tick: logged when the reason changes, not each time
    if err ~= before_err then
      self:log("policy version %s not enforced (the previous ruleset stays; retrying): %s",
               tostring(pol and pol.version), err)
    end
  elseif before ~= self.enforcer.version then
    self:log("policy version %s enforced", tostring(self.enforcer.version or "none"))
    self:event("policy_enforced", { version = self.enforcer.version })
  end
end

-- status.policy: the version in the registry and the one enforced here,
-- and the packets dropped by it on this node.
function Node:policy_status()
  local pol = self:policy_doc()
  local e = self.enforcer
  local p, b = 0, 0
  if e then p, b = e:read_counter() end
  return { version = pol and pol.version or cjson.null, enforced_version = e and e.version or cjson.null,
           default = pol and pol.doc.default or cjson.null, rules = pol and #pol.doc.rules or 0,
           dropped_packets = p, dropped_bytes = b, error = e and e.error or cjson.null }
end

-- The overlay MTU: `run --mtu` when given, else derived from the underlay
-- (the smallest route MTU to the other nodes' endpoints less WireGuard's
-- overhead, containers.derive_mtu), else what it was (1420 at first).
function Node:overlay_mtu()
  if self.fixed_mtu then return self.fixed_mtu end
  local eps = {}
  for _, r in ipairs(self.reg:members()) do
    if r.name ~= self.node.name and type(r.endpoint) == "string" then eps[#eps + 1] = r.endpoint end
  end
  local l = self.node.cluster.leader
  if #eps == 0 and type(l) == "table" and l.name ~= self.node.name and type(l.endpoint) == "string" then
    eps[1] = l.endpoint
  end
  return containers.derive_mtu(eps) or self.mtu or containers.DEFAULT_MTU
end

-- Follows the underlay: the interface and every container link get the
-- new overlay MTU when the peers (and so the routes to them) change.
function Node:update_mtu()
  if not self.t then return end
  local mtu = self:overlay_mtu()
  if mtu == self.mtu then return end
  local ok, err = core.link(self.node.ifname, { mtu = mtu })
  if not ok then return self:log("cannot set the overlay MTU to %d: %s", mtu, err) end
  self:log("overlay MTU %d -> %d (underlay)", self.mtu, mtu)
  self.mtu, self.t.mtu, self.t.link = mtu, mtu, { mtu = mtu, up = true }
  if self.t.dev then self.t.dev:set_mtu_hint(mtu) end
  self.containers:set_mtu(mtu)
end

function Node:rebuild_zone(members)
  local zone = dns.zone.new(self.node.cluster.zone or cluster.DEFAULT_ZONE)
  local sets = {}
  local function add(name, ip, ip6)
    local s = sets[name] or { v4 = {}, v6 = {} }
    sets[name] = s
    if ip then s.v4[#s.v4 + 1] = ip end
    if ip6 then s.v6[#s.v6 + 1] = ip6 end
  end
  for _, r in ipairs(members) do
    add(r.name, r.overlay_ip, r.overlay_ip6)
    for _, c in ipairs(r.containers or {}) do add(c.name, c.ip, c.ip6) end
  end
  for name, s in pairs(sets) do zone:set(name, s.v4, s.v6) end
  self.zone = zone
  if self.dns then self.dns.zone = zone end
end

-- ---------------------------------------------------------------------
-- status and control requests
-- ---------------------------------------------------------------------

function Node:status()
  local st = self.t:status()
  local bykey = {}
  for _, r in ipairs(self.reg:members()) do bykey[r.public_key] = r end
  local peers = {}
  for _, p in ipairs(st.peers) do
    local r = bykey[p.public_key] or {}
    local h = self.health[p.public_key] or {}
    local c = self.nat:peer_status(p.public_key) or {}
    peers[#peers + 1] = { name = r.name, public_key = p.public_key, overlay_ip = r.overlay_ip,
                          overlay_ip6 = r.overlay_ip6, endpoint = p.endpoint or cjson.null,
                          last_handshake = p.last_handshake, healthy = h.healthy == true,
                          rtt_ms = h.rtt_ms and math.floor(h.rtt_ms * 1000 + 0.5) / 1000 or cjson.null,
                          rx_bytes = p.rx_bytes, tx_bytes = p.tx_bytes, connection = c.connection or "direct",
                          connection_changed_at = c.connection_changed_at and math.floor(c.connection_changed_at)
                                                  or cjson.null,
                          connection_changed_at_precise = c.connection_changed_at or cjson.null,
                          nat_phase = c.phase or cjson.null, relay_channel = p.relay_channel or cjson.null,
                          health_changed_at = h.changed_at or cjson.null }
  end
  table.sort(peers, function(a, b) return (a.name or "") < (b.name or "") end)
  local s = self.node.self
  return {
    self = { name = self.node.name, public_key = self.node.public_key, overlay_ip = s.overlay_ip,
             overlay_ip6 = s.overlay_ip6, slice = s.slice, slice6 = s.slice6, endpoint = s.endpoint,
             role = self.node.role, interface = self.node.ifname, nat = self:nat_status(),
             health = self.hsvc and self.hsvc:stats() or cjson.null,
             dns = self.dns and self.dns:stats() or cjson.null },
    peers = setmetatable(peers, cjson.array_mt),
    containers = setmetatable(self.containers:records(), cjson.array_mt),
    version = self.reg:version(),
    registry = self:registry_status(),
    events = setmetatable({ table.unpack(self.events) }, cjson.array_mt),
    leader_connected = self.reg:connected(),
    policy = self:policy_status(),
  }
end

-- status.registry: kind, role, connected (and, for etcd, its endpoints,
-- prefix, revision and request counters)
function Node:registry_status()
  local r = self.reg.status and self.reg:status() or {}
  r.kind, r.role, r.connected = self.reg.kind, self.reg.role, self.reg:connected()
  if not r.endpoints then -- embedded: where the registry is, the leader
    local l = self.node.cluster.leader
    r.endpoints = { l and l.endpoint or nil }
  end
  r.endpoints = setmetatable(r.endpoints, cjson.array_mt)
  return r
end

function Node:nat_status()
  local n = self.nat:self_status()
  local stun = {}
  for server, mapped in pairs(n.stun or {}) do stun[#stun + 1] = { server = server, mapped = mapped } end
  table.sort(stun, function(a, b) return a.server < b.server end)
  local list = {}
  for i, c in ipairs(n.candidates) do list[i] = { type = c.type, endpoint = c.endpoint } end
  return { nat = n.nat, candidates = setmetatable(list, cjson.array_mt), stun = setmetatable(stun, cjson.array_mt),
           relay = n.relay or cjson.null, portmap = n.portmap or cjson.null, stats = n.stats }
end

function Node:control(req, reply)
  if type(req) ~= "table" then return { ok = false, error = "bad request" } end
  local cmd = req.cmd
  local res, err, kind
  if cmd == "status" then
    res = self:status()
  elseif cmd == "attach" then -- `attach` and the CNI plugin (wgoverlay.cni)
    res, err, kind = self.containers:attach(req)
  elseif cmd == "detach" then
    res, err, kind = self.containers:detach(req.key or req.netns, req.missing_ok == true)
  elseif cmd == "check" then
    res, err, kind = self.containers:check(req.key or req.netns)
  elseif cmd == "remove-node" then
    -- the registry answers through a callback (etcd: after its transaction)
    self.reg:remove_node(req.name, function(ok, rerr)
      reply(ok and { ok = true, result = true } or { ok = false, error = rerr })
    end)
    return nil
  elseif cmd == "policy-apply" then
    if type(self.reg.set_policy) ~= "function" then
      return { ok = false, error = string.format("the %s registry cannot store a policy", tostring(self.reg.kind)) }
    end
    local doc, perr = policy.validate(req.policy)
    if not doc then return { ok = false, error = "policy refused (the policy in force stays): " .. perr } end
    self.reg:set_policy(doc, function(r, serr)
      reply(r and { ok = true, result = r } or { ok = false, error = serr })
    end)
    return nil
  elseif cmd == "policy-show" then
    local pol = self:policy_doc()
    res = { version = pol and pol.version or cjson.null, policy = pol and pol.doc or cjson.null,
            enforced_version = self.enforcer and self.enforcer.version or cjson.null }
  elseif cmd == "rotate-key" then
    return self:rotate_key(reply)
  elseif cmd == "token" then
    self.reg:issue_token({ ttl = req.ttl, uses = req.uses }, function(str, terr)
      reply(str and { ok = true, result = { token = str } } or { ok = false, error = terr })
    end)
    return nil
  else
    err = string.format("unknown command \"%s\"", tostring(cmd))
  end
  if err then return { ok = false, error = err, kind = kind } end
  return { ok = true, result = res }
end

-- ---------------------------------------------------------------------
-- key rotation (`wgoverlay rotate-key`)
-- ---------------------------------------------------------------------

M.ROTATE_CONFIRM = 5 -- seconds to wait for the registry to carry the new key

-- A new WireGuard key for this node, without a break in traffic:
--
-- 1. only while the registry is reachable (else the peers could not learn
--    the key, and after the current sessions end nobody could reach us);
-- 2. the engine switches to the new private key and keeps its sessions
--    (transport:rotate_private_key; the old key is overwritten there);
-- 3. node.json is replaced atomically (state.save: temporary file, fsync,
--    rename, 0600) with the new key; if that fails the engine goes back
--    to the old key and nothing changed;
-- 4. the registry publishes the new public key (reg:set_public_key); each
--    peer changes our key in place (sync_peers, diff.rekey) and keeps its
--    session with us, so data flows throughout and the next handshake,
--    either way, uses the new key.  A handshake with the old key fails at
--    once: nothing holds the old private key any more.  Sessions made
--    under it end by WireGuard's own timers (REJECT_AFTER_TIME, 180 s).
--
-- The answer comes when the registry carries the new key (a leader at
-- once, a member when the leader's delta with its record arrives), or
-- says it is not confirmed yet after ROTATE_CONFIRM seconds (the member
-- sends its key again on every reconnection).
function Node:rotate_key(reply)
  if type(self.reg.set_public_key) ~= "function" then
    return { ok = false, error = string.format("the %s registry cannot publish a new key: not changed",
                                               tostring(self.reg.kind)) }
  end
  if not self.reg:connected() then
    return { ok = false, error = "the registry is not reachable (is the leader up? see `status`): the peers "
                                 .. "could not learn a new key, so the key was not changed" }
  end
  local node = self.node
  local old_priv, old_pub = node.private_key, node.public_key
  local priv, pub = core.generate_keys()
  local ok, err = self.t:rotate_private_key(priv)
  if not ok then return { ok = false, error = "engine: " .. tostring(err) } end
  local leader_rec = node.role == "leader" and node.cluster.leader.name == node.name
  node.private_key, node.public_key = priv, pub
  if leader_rec then node.cluster.leader.public_key = pub end
  ok, err = state.save(self.paths.node, node)
  if not ok then
    node.private_key, node.public_key = old_priv, old_pub
    if leader_rec then node.cluster.leader.public_key = old_pub end
    assert(self.t:rotate_private_key(old_priv))
    return { ok = false, error = "cannot save the new key (the old key stays): " .. tostring(err) }
  end
  -- The old key is gone from the engine (overwritten) and from node.json
  -- (replaced); the Lua strings that held it cannot be overwritten, but
  -- nothing refers to them any more and they are collected now.
  old_priv, priv = nil, nil
  collectgarbage()
  collectgarbage()
  self.nat:set_public_key(pub)
  self:log("key rotated: public key %s -> %s", old_pub, pub)
  self:event("key_rotated", { public_key = pub })
  self.reg:set_public_key(pub)
  local result = { public_key = pub, old_public_key = old_pub }
  local function published()
    for _, r in ipairs(self.reg:members()) do
      if r.name == node.name then return r.public_key == pub end
    end
    return false
  end
  if published() then
    result.published = true
    return { ok = true, result = result }
  end
  -- wait (asynchronously) for the registry to carry it
  local tm, waited = uv.new_timer(), 0
  self.timers[#self.timers + 1] = tm
  tm:start(50, 50, self:guard("rotate-key confirmation", function()
    waited = waited + 0.05
    local done = published()
    if done or waited >= M.ROTATE_CONFIRM or self.stopping then
      close(tm)
      result.published = done
      reply({ ok = true, result = result })
    end
  end))
  return nil
end

-- ---------------------------------------------------------------------
-- lifecycle
-- ---------------------------------------------------------------------

-- What the registry may use of the node (see wgoverlay.registry); `t`
-- is added once the interface exists.
function Node:registry_host()
  self.rhost = {
    node = self.node, paths = self.paths,
    log = function(fmt, ...) self:log(fmt, ...) end,
    event = function(kind, fields) self:event(kind, fields) end,
    guard = function(where, fn) return self:guard(where, fn) end,
    changed = function() if not self.stopping then self:sync_peers() end end,
    punch = function(peer) if not self.stopping then self.nat:on_punch(peer) end end,
    removed = function()
      self.removed = true
      self:stop()
    end,
  }
  return self.rhost
end

-- Creates the interface and the NAT agent.
function Node:start_transport()
  local node = self.node
  local t, err = transport.new({ private_key = node.private_key, listen_port = node.self.listen_port,
                                 address = { node.self.overlay_ip .. "/" .. prefix_of(node.cluster.cidr4),
                                             node.self.overlay_ip6 .. "/" .. prefix_of(node.cluster.cidr6) },
                                 mtu = self.mtu },
                               node.ifname)
  if not t then return nil, err end
  local ok
  ok, err = t:create_interface()
  if not ok then return nil, err end
  self.t = t
  self.rhost.t = t
  ok, err = t:configure({})
  if not ok then return nil, err end
  local nat_settings = type(node.cluster.nat) == "table" and node.cluster.nat or {}
  self.keepalive = math.tointeger(nat_settings.keepalive) or M.KEEPALIVE
  local turn_conf = node.cluster.turn
  if type(turn_conf) ~= "table" or type(turn_conf.server) ~= "string" then turn_conf = nil end
  local pm
  if portmap.wanted(nat_settings, node.self.endpoint) then
    pm = portmap.new({ port = node.self.listen_port, lease = nat_settings.portmap_lease, clock = now_precise,
                       exec = portmap.thread_executor(), log = function(fmt, ...) self:log(fmt, ...) end })
  end
  self.nat, err = nat_agent.new({
    portmap = pm,
    t = t, public_key = node.public_key, endpoint = node.self.endpoint,
    stun = type(node.cluster.stun) == "table" and node.cluster.stun or {}, turn = turn_conf,
    settings = nat_settings, clock = now_precise,
    -- IPv6 host candidates: this namespace's global addresses, never the
    -- overlay's own (its interface, the cluster's networks)
    addresses = function() return core.addr_dump(6) end,
    address_filter = { ifnames = { node.ifname }, cidrs = { node.cluster.cidr4, node.cluster.cidr6 } },
    listen_port = node.self.listen_port,
    publish = function(c) self.reg:set_candidates(c) end,
    request_punch = function(peer) self.reg:request_punch(peer) end,
    send_signal = function(ip, bytes)
      if self.sigsock then self.sigsock:send(bytes, ip, nat_signal.PORT, function() end) end
    end,
    log = function(fmt, ...) self:log(fmt, ...) end,
    event = function(kind, fields) self:event(kind, fields) end,
  })
  if not self.nat then return nil, "NAT settings: " .. tostring(err) end
  return true
end

-- The NAT agent's signal socket (UDP nat_signal.PORT on the overlay
-- address): punch signalling between members without the registry.
function Node:start_signals()
  local u = uv.new_udp()
  local ok, err = u:bind(self.node.self.overlay_ip, nat_signal.PORT)
  if not ok then
    u:close()
    return nil, ("signal socket %s:%d: %s"):format(self.node.self.overlay_ip, nat_signal.PORT, tostring(err))
  end
  self.sigsock = u
  u:recv_start(self:guard("signal socket", function(rerr, data, addr)
    if rerr or not data or not addr or self.stopping then return end
    self.nat:on_signal(addr.ip, data)
  end))
  return true
end

-- Engine events (join requests, STUN, TURN and punch datagrams), the NAT
-- agent's tick and the signals that stop the node.
function Node:start_loop()
  local t = self.t
  self.poll = uv.new_poll(t:fd())
  self.poll:start("r", self:guard("engine events", function()
    for ev in t:events() do
      if ev.type == "datagram" and not self.stopping then
        if joinproto.is_control(ev.data) then
          self.reg:on_datagram(ev.from, ev.data)
        else
          self.nat:on_datagram(ev)
        end
      end
    end
  end))
  local nt = uv.new_timer()
  nt:start(0, math.floor(M.NAT_TICK * 1000), self:guard("NAT tick", function()
    if self.stopping then return end
    self.nat:tick(self.health)
    if self.enforcer.error then self:sync_policy() end -- retried until nft takes it
    -- systemd readiness (Type=notify): the interface is up from the start;
    -- a leader is its own registry, a member is ready once its session to
    -- the registry is up.  Sent once; never for a node that is stopping.
    if not sdnotify.is_ready() and self.reg:connected() then
      sdnotify.ready(string.format("%s %s up, interface %s, registry reached",
        self.node.role, self.node.self.overlay_ip, self.node.ifname))
    end
  end))
  self.timers[#self.timers + 1] = nt
  for _, sig in ipairs({ "sigterm", "sigint", "sighup" }) do
    local h = uv.new_signal()
    h:start(sig, self:guard("signal", function()
      self:log("%s: stopping", sig:upper())
      self:stop()
    end))
    self.signals[#self.signals + 1] = h
  end
end

--- Runs a node until SIGTERM, SIGINT or SIGHUP.
-- @tparam string dir state directory
-- @tparam[opt] table opts `metrics`: serve Prometheus /metrics on this IP:PORT
-- @return 0 on a clean stop, or nil and a message
function M.run(dir, opts)
  local paths = cluster.paths(dir)
  local node, err = state.load_checked(paths.node, "node")
  if not node then return nil, err end
  local self = setmetatable({ node = node, paths = paths, peers = {}, health = {}, timers = {}, signals = {},
                              events = {} }, Node)
  self.reg, err = registry.open(self:registry_host())
  if not self.reg then return nil, err end
  -- containers of this node: addresses from its own slice
  local cs, cerr, ckind = state.load_checked(paths.containers, "containers", { node = node })
  if not cs and ckind ~= "missing" then return nil, cerr end
  self.containers = containers.set({
    node = node, path = paths.containers, attached = cs and cs.attached, valid_name = joinproto.valid_name,
    log = function(fmt, ...) self:log(fmt, ...) end,
    changed = function()
      self.reg:set_containers(self.containers:records())
      self:sync_policy()
    end,
    mtu = function() return self.mtu end,
    dns = { nameservers = { node.self.overlay_ip, node.self.overlay_ip6 },
            domain = node.cluster.zone or cluster.DEFAULT_ZONE },
  })
  self.fixed_mtu = opts and opts.mtu
  self.mtu = self:overlay_mtu()

  local function fail(e)
    self:stop()
    return nil, e
  end
  local ok
  ok, err = self:start_transport()
  if not ok then return fail(err) end
  self.enforcer = policy.enforcer({ apply = containers.nft_apply, list = containers.nft_list,
                                    log = function(fmt, ...) self:log(fmt, ...) end })
  self:sync_peers()
  self.containers:restore()
  self.containers:set_mtu(self.mtu)
  self.dns = dns.server.new({ zone = self.zone, host = { node.self.overlay_ip, node.self.overlay_ip6 }, port = 53,
                              forward = node.cluster.dns_forward, log = function(m) self:log("%s", m) end })
  ok, err = self.dns:start()
  if not ok then return fail("DNS server: " .. tostring(err)) end
  self.hsvc, err = health.service({
    ip = node.self.overlay_ip, t = self.t, peers = self.health, clock = now_precise, random = core.random,
    members = function() return self.reg:members() end,
    log = function(fmt, ...) self:log(fmt, ...) end,
    event = function(kind, fields) self:event(kind, fields) end,
    guard = function(where, fn) return self:guard(where, fn) end,
  })
  if not self.hsvc then return fail(err) end
  ok, err = self:start_signals()
  if not ok then return fail(err) end
  ok, err = self.reg:start()
  if not ok then return fail(err) end
  self.reg:set_containers(self.containers:records())
  self.ctl, err = control.listen({
    path = paths.control, handle = function(req, reply) return self:control(req, reply) end,
    log = function(fmt, ...) self:log(fmt, ...) end,
    guard = function(where, fn) return self:guard(where, fn) end,
  })
  if not self.ctl then return fail(err) end
  if opts and opts.metrics then
    self.metrics, err = metrics.serve({
      listen = opts.metrics, log = function(fmt, ...) self:log(fmt, ...) end,
      guard = function(where, fn) return self:guard(where, fn) end,
      collect = function(set) metrics.collect_daemon(set, self:status(), self.t:status(), #self.reg:members()) end,
    })
    if not self.metrics then return fail(err) end
    self:log("metrics on http://%s%s", self.metrics.address(), metrics.PATH)
  end
  self:start_loop()
  self:log("up: %s %s on %s, interface %s", node.role, node.self.overlay_ip, node.self.endpoint, node.ifname)
  uv.run()
  if self.fatal then return nil, self.fatal end
  if self.removed then return nil, "this node was removed from the cluster" end
  return 0
end

function Node:stop()
  if self.stopping then return end
  self.stopping = true
  sdnotify.stopping()
  for _, tm in ipairs(self.timers) do close(tm) end
  close(self.poll)
  if self.metrics then self.metrics.close() end
  if self.dns then self.dns:stop() end
  if self.hsvc then self.hsvc:stop() end
  close(self.sigsock)
  if self.reg then self.reg:stop() end
  if self.ctl then self.ctl:close() end
  if self.containers then self.containers:stop() end -- our nftables table
  if self.enforcer then self.enforcer:stop() end -- the policy table
  for _, h in ipairs(self.signals) do close(h) end
  if self.nat then self.nat:stop() end
  if self.t then self.t:shutdown() end
  uv.stop()
end

return M
