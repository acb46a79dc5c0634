--- `wgoverlay run`: one node of the overlay, on a luv event loop.
--
-- * the WireGuard transport (peers = the other members' slices);
-- * the leader answers join requests arriving on the WireGuard port and
--   keeps the versioned member registry; members keep a JSON-lines TCP
--   session to the leader over the overlay (port 7946) and apply snapshots
--   and deltas to their peers and DNS zone;
-- * an authoritative DNS server on the overlay address;
-- * health: handshake age (epoch) plus UDP probes (port 7947) with RTT;
-- * containers attached through the root-only control socket;
-- * NAT traversal (wgoverlay.nat.agent): STUN answered and used on the
--   WireGuard port, candidates published through membership, per-peer
--   direct / hole-punched / relayed paths; the leader relays "punch"
--   requests so that both sides probe at once.
-- @module wgoverlay.daemon
local uv = require "luv"
local cjson = require "cjson"
local core = require "wgoverlay.core"
local state = require "wgoverlay.state"
local allocator = require "wgoverlay.allocator"
local token = require "wgoverlay.token"
local joinproto = require "wgoverlay.joinproto"
local membership = require "wgoverlay.membership"
local dns = require "wgoverlay.dns"
local containers = require "wgoverlay.containers"
local cluster = require "wgoverlay.cluster"
local jsonlines = require "wgoverlay.jsonlines"
local health = require "wgoverlay.health"
local cidr = require "wgoverlay.cidr"
local transport = require "wgoverlay.transport"
local nat_agent = require "wgoverlay.nat.agent"
local candidates = require "wgoverlay.nat.candidates"

local M = {}

M.HEARTBEAT = 5          -- seconds between leader heartbeats
M.RECONNECT = 2          -- seconds between membership reconnects
M.PROBE_INTERVAL = 2     -- seconds between health probes
M.PROBE_TIMEOUT = 6      -- a peer is unhealthy without a probe answer for this long
M.HANDSHAKE_MAX = 180    -- ... or without a handshake for this long (REJECT_AFTER_TIME)
M.KEEPALIVE = 25         -- default; the cluster's NAT setting `keepalive` overrides it
M.NAT_TICK = 0.25        -- seconds between NAT agent ticks
M.PUNCH_DEDUP = 2        -- the leader relays one punch per pair in this many seconds

local Node = {}
Node.__index = Node

local function log(self, fmt, ...)
  io.stderr:write(string.format("wgoverlay[%s]: " .. fmt .. "\n", self.node.name, ...))
end

M.EVENTS_KEPT = 64

-- Cluster events (health transitions, joins, removals, containers): logged,
-- and the most recent ones kept for `status` (newest last).
local function event(self, kind, fields)
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
      log(self, "internal error in %s: %s", where, tostring(err))
      self.fatal = self.fatal or string.format("internal error in %s: %s", where, tostring(err):match("^[^\n]*"))
      self:stop()
    end
  end
end

-- Closes a luv handle once: a connection may be closed by its peer and by
-- us, in either order, and closing twice raises inside the event loop.
local function close(h)
  if h and not h:is_closing() then h:close() end
end

local function prefix_of(c) return assert(cidr.parse(c)).prefix end

local function json_line(t) return cjson.encode(t) .. "\n" end

-- Epoch seconds with microseconds.
local function now_precise()
  local sec, usec = uv.gettimeofday()
  return sec + usec / 1e6
end

-- ---------------------------------------------------------------------
-- peers and DNS from the member list
-- ---------------------------------------------------------------------

function Node:member_list()
  if self.registry then
    local list = {}
    for _, r in pairs(self.registry.members) do list[#list + 1] = r end
    return list
  end
  return self.view:members()
end

function Node:desired_peers()
  return membership.desired_peers(self:member_list(), self.node.name)
end

function Node:sync_peers()
  local diff = membership.diff(self.peers, self:desired_peers())
  for _, pk in ipairs(diff.remove) do
    self.t:remove_peer(pk)
    self.peers[pk] = nil
    self.health[pk] = nil
    if self.prober then self.prober:forget(pk) end
    log(self, "peer %s removed", pk)
  end
  for _, list in ipairs({ diff.add, diff.update }) do
    for _, e in ipairs(list) do
      -- A peer we have already is steered by the NAT agent: a new
      -- advertised endpoint goes to its policy, not straight to the engine.
      local endpoint = e.endpoint
      if list == diff.update and self.nat then endpoint = nil end
      local ok, err = self.t:add_peer({ public_key = e.public_key, endpoint = endpoint,
                                         allowed_ips = e.allowed_ips, persistent_keepalive = self.keepalive })
      if ok then
        self.peers[e.public_key] = { name = e.name, endpoint = e.endpoint or (self.peers[e.public_key] or {}).endpoint,
                                     allowed_ips = e.allowed_ips }
      else
        log(self, "cannot configure peer %s: %s", e.name or e.public_key, err)
      end
    end
  end
  if self.nat then
    local others = {}
    for _, r in ipairs(self:member_list()) do
      if r.name ~= self.node.name and self.peers[r.public_key] then others[#others + 1] = r end
    end
    self.nat:set_peers(others)
  end
  self:rebuild_zone()
end

function Node:rebuild_zone()
  local zone = dns.zone.new(self.node.cluster.zone or cluster.DEFAULT_ZONE)
  local sets = {}
  local function add(name, ip, ip6)
    local s = sets[name] or { v4 = {}, v6 = {} }
    sets[name] = s
    if ip then s.v4[#s.v4 + 1] = ip end
    if ip6 then s.v6[#s.v6 + 1] = ip6 end
  end
  for _, r in ipairs(self:member_list()) do
    add(r.name, r.overlay_ip, r.overlay_ip6)
    for _, c in ipairs(r.containers or {}) do add(c.name, c.ip, c.ip6) end
  end
  for name, s in pairs(sets) do zone:set(name, s.v4, s.v6) end
  self.zone = zone
  if self.dns then self.dns.zone = zone end
end

-- ---------------------------------------------------------------------
-- leader: joins, registry, membership sessions
-- ---------------------------------------------------------------------

function Node:save_leader()
  self.lead.allocator = self.alloc:export()
  self.lead.registry = self.registry:export()
  local ok, err = state.save(self.paths.leader, self.lead)
  if not ok then log(self, "cannot save leader state: %s", err) end
end

function Node:registry_changed()
  self:save_leader() -- persist before pushing, so versions never go back
  for _, s in pairs(self.sessions) do self:push(s) end
  self:sync_peers()
end

function Node:push(s)
  if not s.version then return end
  local msg = self.registry:delta_since(s.version, s.epoch)
  s.version, s.epoch = msg.version, msg.epoch
  s.conn:send(msg)
end

-- `retry`: the same joiner (token, name, key) was admitted before and
-- its answer was lost (joinproto.handle); it gets the same slice, and the
-- token is not used again.
function Node:admit(p, _, retry)
  local existing = self.registry:get(p.name)
  if existing and existing.public_key ~= p.public_key then
    return nil, string.format("node name \"%s\" already in use", p.name)
  end
  if retry and not existing then
    -- removed (remove-node) since its admission: not re-admitted on the old token
    return nil, string.format("node \"%s\" was removed since it was admitted; ask for a new token", p.name)
  end
  local slice, err = self.alloc:node_slice(p.name)
  if not slice then return nil, err end
  local record = { name = p.name, public_key = p.public_key, endpoint = p.endpoint, overlay_ip = slice.ip,
                   overlay_ip6 = slice.ip6, slice = slice.slice, slice6 = slice.slice6, containers = {} }
  if not existing then
    local ok, jerr = self.registry:join(record)
    if not ok then
      self.alloc:release_node(p.name)
      return nil, jerr
    end
  end
  self:registry_changed()
  if retry then
    log(self, "node %s admitted again (join retried after a lost answer; same slice %s, token not used again)",
        p.name, slice.slice)
  else
    log(self, "node %s joined (%s)", p.name, slice.ip)
    event(self, "node_joined", { peer = p.name })
  end
  return { node = { overlay_ip = slice.ip, overlay_ip6 = slice.ip6, slice = slice.slice, slice6 = slice.slice6 },
           cluster = { cidr4 = self.node.cluster.cidr4, cidr6 = self.node.cluster.cidr6, zone = self.node.cluster.zone,
                       dns_forward = self.node.cluster.dns_forward,
                       stun = self.node.cluster.stun, turn = self.node.cluster.turn, nat = self.node.cluster.nat,
                       leader = { control_public = self.node.cluster.leader.control_public } },
           leader = self.registry:get(self.node.name) }
end

function Node:on_join_datagram(from, data)
  -- Admission records (persisted in leader.json: a retry after a lost
  -- answer is recognised across restarts), answered requests (a replay
  -- gets nothing) and the log rate limit.
  self.lead.joins = self.lead.joins or {}
  self.join_seen = self.join_seen or joinproto.replay_cache.new(joinproto.SEEN_MAX)
  self.join_log = self.join_log or joinproto.rate_limiter(joinproto.LOG_INTERVAL)
  local ctx = {
    tokens = self.lead.tokens,
    control_private = self.control_private,
    cache = self.join_cache,
    seen = self.join_seen,
    joins = self.lead.joins,
    admit = function(p, id, retry) return self:admit(p, id, retry) end,
  }
  local reply, info = joinproto.handle(ctx, data)
  if info and info.joined and not info.replayed then self:save_leader() end
  if info and info.error then
    local ok, suppressed = self.join_log:hit(os.time())
    if ok then
      log(self, "join refused (%s): %s%s", from, info.error,
          suppressed > 0 and string.format(" (%d more suppressed)", suppressed) or "")
    end
  end
  if reply then self.t:send_datagram(from, reply) end
end

-- ---------------------------------------------------------------------
-- leader: half-admitted nodes
-- ---------------------------------------------------------------------

-- A node admitted whose answer was lost and that never retried, or never
-- ran: after joinproto.reclaim_after(WGO_JOIN_RECLAIM) seconds (600 by
-- default) without a membership session or a handshake, its registry
-- record and slice are released.  The token use is not given back.  Also
-- drops the records of nodes that came up, were removed or replaced, and
-- reports refusals the log rate limit held back.
function Node:reclaim_joins(now)
  now = now or os.time()
  local held = self.join_log and self.join_log:flush(now)
  if held then log(self, "join refused: %d more suppressed", held) end
  local joins = self.lead.joins
  if type(joins) ~= "table" or next(joins) == nil then return end
  local up, members = {}, {}
  for name in pairs(self.sessions) do up[name] = true end
  for _, p in ipairs(self.t:status().peers) do
    local info = self.peers[p.public_key]
    if info and (p.last_handshake or 0) > 0 then up[info.name] = true end
  end
  for name, r in pairs(self.registry.members) do members[name] = r.public_key end
  local plan = joinproto.review_admissions(joins, { now = now, reclaim_after = self.reclaim_after,
                                                     not_before = self.reclaim_not_before, members = members,
                                                     up = up })
  for _, name in ipairs(plan.done) do joins[name] = nil end
  for _, name in ipairs(plan.reclaim) do
    local rec = joins[name]
    joins[name] = nil
    self.registry:remove(name)
    self.alloc:release_node(name)
    if self.join_cache then self.join_cache:delete(rec.token, rec.public_key) end
    log(self, "node %s reclaimed: admitted %d s ago, never came up (record and slice released; "
        .. "the token use is not given back)", name, now - rec.at)
    event(self, "node_reclaimed", { peer = name })
  end
  if #plan.reclaim > 0 then
    self:registry_changed() -- saves, tells the members, drops the peer
  elseif #plan.done > 0 then
    self:save_leader()
  end
end

-- Starts the reclaim timer (leader).  Nothing is reclaimed in the first
-- minutes after a start (min(reclaim time, 60 s)): nodes that were up
-- before a leader restart get time to reconnect.
function Node:start_join_reclaim()
  self.reclaim_after = joinproto.reclaim_after(os.getenv(joinproto.RECLAIM_ENV))
  self.reclaim_not_before = os.time() + math.min(self.reclaim_after, 60)
  local every = math.max(1, math.min(10, self.reclaim_after // 10)) * 1000
  local tm = uv.new_timer()
  tm:start(every, every, self:guard("join reclaim", function()
    if not self.stopping then self:reclaim_joins() end
  end))
  self.timers[#self.timers + 1] = tm
end

function Node:remove_node(name)
  if not self.registry then return nil, "remove-node runs on the leader" end
  if name == self.node.name then return nil, "the leader cannot remove itself" end
  local r = self.registry:get(name)
  if not r then return nil, string.format("no node named \"%s\"", name) end
  self.registry:remove(name)
  self.alloc:release_node(name)
  self:save_leader()
  -- Everyone hears of it, the removed node included: its delta is written
  -- while its peer still exists, and the peer goes a second later.
  for _, s in pairs(self.sessions) do self:push(s) end
  local gone = self.sessions[name]
  self.sessions[name] = nil
  local t = uv.new_timer()
  t:start(1000, 0, self:guard("remove-node timer", function()
    close(t)
    if gone then gone.conn:close() end
    if not self.stopping then self:sync_peers() end
  end))
  log(self, "node %s removed", name)
  event(self, "node_removed", { peer = name })
  return true
end

function Node:member_by_ip(ip)
  for _, r in pairs(self.registry.members) do
    if r.overlay_ip == ip or r.overlay_ip6 == ip then return r end
  end
end

function Node:on_member_line(s, line)
  local ok, msg = pcall(cjson.decode, line)
  if not ok or type(msg) ~= "table" then return end
  if msg.type == "hello" then
    s.version = math.tointeger(msg.version) or 0
    s.epoch = type(msg.epoch) == "string" and msg.epoch or nil
    self:push(s)
  elseif msg.type == "containers" and type(msg.containers) == "table" then
    local up, err = self.registry:update(s.name, { containers = msg.containers })
    if up then self:registry_changed() else log(self, "containers of %s refused: %s", s.name, err) end
  elseif msg.type == "candidates" then
    self:set_candidates(s.name, msg.candidates)
  elseif msg.type == "punch_request" and type(msg.peer) == "string" then
    self:relay_punch(s.name, msg.peer)
  end
end

-- A member's NAT candidates (checked, normalised) into its record.
function Node:set_candidates(name, c)
  local clean, err = candidates.sanitize(c)
  if not clean then
    log(self, "candidates of %s refused: %s", name, err)
    return
  end
  local v, changed = self.registry:update(name, { candidates = candidates.publish(clean.key, clean.nat, clean.list) })
  if not v then log(self, "candidates of %s refused: %s", name, changed) return end
  if changed then self:registry_changed() end
end

-- Coordinated hole punching: tell both sides to probe each other now.
function Node:relay_punch(a, b)
  if a == b or not self.registry:get(a) or not self.registry:get(b) then return end
  local key = a < b and (a .. "\0" .. b) or (b .. "\0" .. a)
  local now = now_precise()
  self.punches = self.punches or {}
  if self.punches[key] and now - self.punches[key] < M.PUNCH_DEDUP then return end
  self.punches[key] = now
  log(self, "punch %s <-> %s", a, b)
  for _, pair in ipairs({ { a, b }, { b, a } }) do
    local side, other = pair[1], pair[2]
    if side == self.node.name then
      self.nat:on_punch(other)
    else
      local s = self.sessions[side]
      if s and s.version then s.conn:send({ type = "punch", peer = other }) end
    end
  end
end

function Node:start_membership_server()
  local server = uv.new_tcp()
  local ok, err = server:bind(self.node.self.overlay_ip, cluster.MEMBERSHIP_PORT)
  if not ok then return nil, "membership server: " .. tostring(err) end
  server:listen(128, self:guard("membership accept", function()
    local conn = uv.new_tcp()
    if not server:accept(conn) then close(conn) return end
    local peer = conn:getpeername()
    -- The connection came through WireGuard: its source address is
    -- authenticated by cryptokey routing, and names the member.
    local r = peer and self:member_by_ip(peer.ip)
    if not r then
      close(conn)
      return
    end
    local old = self.sessions[r.name]
    if old then old.conn:close() end
    local s = { name = r.name }
    s.conn = jsonlines.wrap(conn, {
      on_line = function(_, line) self:on_member_line(s, line) end,
      on_close = function() if self.sessions[r.name] == s then self.sessions[r.name] = nil end end,
      log = function(fmt, ...) log(self, "membership session of %s: " .. fmt, r.name, ...) end,
    })
    self.sessions[r.name] = s
    s.conn:start()
  end))
  self.membership_server = server
  local hb = uv.new_timer()
  hb:start(M.HEARTBEAT * 1000, M.HEARTBEAT * 1000, self:guard("heartbeat", function()
    local beat = jsonlines.line(self.registry:heartbeat())
    for _, s in pairs(self.sessions) do if s.version then s.conn:send(beat) end end
    self:check_endpoints()
  end))
  self.timers[#self.timers + 1] = hb
  return true
end

-- Endpoints: the leader records where WireGuard actually reaches each
-- member (roaming included) and tells everyone.
function Node:check_endpoints()
  local st = self.t:status()
  local changed = false
  local has_stun = type(self.node.cluster.stun) == "table" and #self.node.cluster.stun > 0
  for _, p in ipairs(st.peers) do
    local info = self.peers[p.public_key]
    local r = info and self.registry:get(info.name)
    -- A relayed path is not the member's address; and a member behind a
    -- NAT (STUN says so, or has not said yet) is reached through its
    -- candidates, not by publishing the NAT's mapping as its endpoint.
    local behind_nat = has_stun and not (r and r.candidates and r.candidates.nat == "none")
    if r and p.endpoint and p.endpoint ~= r.endpoint and p.last_handshake > 0 and not p.relay_channel
       and not behind_nat then
      self.registry:update(r.name, { endpoint = p.endpoint })
      self.peers[p.public_key].endpoint = p.endpoint
      changed = true
    end
  end
  if changed then self:registry_changed() end
end

-- ---------------------------------------------------------------------
-- member: session to the leader
-- ---------------------------------------------------------------------

function Node:save_members()
  local ok, err = state.save(self.paths.members, self.view:export())
  if not ok then log(self, "cannot save members: %s", err) end
end

function Node:send_containers()
  if self.session and self.session.ready then
    self.session.conn:send({ type = "containers", containers = self:container_records() })
  end
end

function Node:send_candidates()
  local c = self.candidates_published
  if c and self.session and self.session.ready then
    self.session.conn:send({ type = "candidates", candidates = c })
  end
end

-- The NAT agent's candidate set: into the registry (leader) or to the
-- leader (member).
function Node:publish_candidates(c)
  self.candidates_published = c
  if self.registry then
    local v, changed = self.registry:update(self.node.name, { candidates = c })
    if v and changed then self:registry_changed() end
  else
    self:send_candidates()
  end
end

function Node:request_punch(peer)
  if self.registry then
    self:relay_punch(self.node.name, peer)
  elseif self.session and self.session.ready then
    self.session.conn:send({ type = "punch_request", peer = peer })
  end
end

function Node:on_leader_line(line)
  local ok, msg = pcall(cjson.decode, line)
  if not ok or type(msg) ~= "table" then return end
  if msg.type == "punch" then
    if type(msg.peer) == "string" and self.nat then self.nat:on_punch(msg.peer) end
    return
  end
  local res = self.view:apply(msg)
  if not res then return end
  if res.need_snapshot then
    self.session.conn:send(self.view:hello())
  end
  if res.changed then
    self:save_members()
    if self.view:get(self.node.name) then
      self.was_member = true
    elseif self.was_member then
      log(self, "this node was removed from the cluster by the leader: stopping")
      self.removed = true
      self:stop()
      return
    end
    self:sync_peers()
  end
end

function Node:connect_leader()
  if self.stopping or self.session then return end
  local tcp = uv.new_tcp()
  local s = {}
  s.conn = jsonlines.wrap(tcp, {
    on_line = function(_, line) self:on_leader_line(line) end,
    on_close = function() if self.session == s then self.session = nil end end,
    log = function(fmt, ...) log(self, "membership session: " .. fmt, ...) end,
  })
  self.session = s
  local leader_ip = self.node.cluster.leader.overlay_ip
  local ok, cerr = tcp:connect(leader_ip, cluster.MEMBERSHIP_PORT, self:guard("leader connect", function(err)
    if err then return s.conn:close(err) end
    s.ready = true
    s.conn:send(self.view:hello())
    self:send_containers()
    self:send_candidates()
    s.conn:start()
  end))
  if not ok then s.conn:close(cerr) end
end

-- ---------------------------------------------------------------------
-- health
-- ---------------------------------------------------------------------

function Node:start_health()
  local udp = uv.new_udp()
  local ok, err = udp:bind(self.node.self.overlay_ip, cluster.HEALTH_PORT)
  if not ok then return nil, "health responder: " .. tostring(err) end
  self.prober = health.tracker({ random = core.random, clock = now_precise })
  udp:recv_start(self:guard("health socket", function(rerr, data, addr)
    if rerr or not data or not addr then return end
    local answer = health.answer(data)
    if answer then
      udp:send(answer, addr.ip, addr.port, function() end)
    elseif health.is_reply(data) then
      local pk, rtt = self.prober:on_reply(data, addr.ip)
      local h = pk and self.health[pk]
      if h then
        h.rtt_ms = rtt * 1000
        h.last_reply = os.time()
        h.last_reply_at = now_precise()
      end
    end
  end))
  self.health_udp = udp
  local timer = uv.new_timer()
  timer:start(500, M.PROBE_INTERVAL * 1000, self:guard("health probes", function() self:probe_all() end))
  self.timers[#self.timers + 1] = timer
  return true
end

function Node:probe_all()
  local now = os.time()
  local st = self.t:status()
  local byname = {}
  for _, r in ipairs(self:member_list()) do byname[r.public_key] = r end
  for _, p in ipairs(st.peers) do
    local r = byname[p.public_key]
    if r then
      local h = self.health[p.public_key] or { healthy = false }
      self.health[p.public_key] = h
      self.health_udp:send(self.prober:probe(p.public_key, r.overlay_ip), r.overlay_ip, cluster.HEALTH_PORT,
                           function() end)
      local healthy = p.last_handshake > 0 and now - p.last_handshake < M.HANDSHAKE_MAX
                      and h.last_reply ~= nil and now - h.last_reply <= M.PROBE_TIMEOUT
      if healthy ~= h.healthy then
        h.healthy = healthy
        h.changed_at = now
        log(self, "peer %s is now %s", r.name, healthy and "healthy" or "unhealthy")
        event(self, healthy and "peer_healthy" or "peer_unhealthy", { peer = r.name })
      end
    end
  end
end

-- ---------------------------------------------------------------------
-- containers
-- ---------------------------------------------------------------------

function Node:container_records()
  local list = {}
  for _, c in pairs(self.attached) do list[#list + 1] = { name = c.name, ip = c.ip, ip6 = c.ip6 } end
  table.sort(list, function(a, b) return a.ip < b.ip end)
  return list
end

function Node:save_containers()
  local ok, err = state.save(self.paths.containers, { attached = self.attached })
  if not ok then log(self, "cannot save containers: %s", err) end
end

function Node:containers_changed()
  self:save_containers()
  if self.registry then
    self.registry:update(self.node.name, { containers = self:container_records() })
    self:registry_changed()
  else
    self:send_containers()
    self:rebuild_zone()
  end
end

-- The lowest free host offset of this node's slice, from 2 (1 is the node),
-- the same offset in IPv4 and IPv6.
local function offset_addr(c, off)
  local p = cidr.network(assert(cidr.parse(c)))
  local b = p.bytes
  local i = #b
  while off > 0 and i >= 1 do
    local v = b[i] + (off & 0xff)
    off = (off >> 8) + (v >> 8)
    b[i] = v & 0xff
    i = i - 1
  end
  return cidr.address(p)
end

function Node:container_addr()
  local s = self.node.self
  local size = 1 << (32 - prefix_of(s.slice))
  local used = {}
  for _, c in pairs(self.attached) do used[c.ip] = true end
  for off = 2, size - 2 do
    local ip = offset_addr(s.slice, off)
    if not used[ip] then
      return { ip = ip, ip6 = s.slice6 and offset_addr(s.slice6, off) or nil }
    end
  end
  return nil, string.format("slice %s has no free address for another container", s.slice)
end

function Node:attach(netns, name)
  if type(netns) ~= "string" or netns == "" then return nil, "attach: network namespace expected" end
  if not joinproto.valid_name(name or "") then return nil, string.format("container name \"%s\" invalid (a DNS label)", tostring(name)) end
  if self.attached[netns] then return nil, string.format("namespace %s is already attached", netns) end
  local a, err = self:container_addr()
  if not a then return nil, err end
  local _, aerr = containers.attach({ netns = netns, ip = a.ip, ip6 = a.ip6, cluster4 = self.node.cluster.cidr4,
                                      cluster6 = self.node.cluster.cidr6 })
  if aerr then return nil, aerr end
  self.attached[netns] = { name = name, ip = a.ip, ip6 = a.ip6 }
  self:containers_changed()
  log(self, "attached %s as %s (%s)", netns, name, a.ip)
  return { ip = a.ip, ip6 = a.ip6, name = name }
end

function Node:detach(netns)
  if not self.attached[netns] then return nil, string.format("namespace %s is not attached", tostring(netns)) end
  containers.detach(netns)
  self.attached[netns] = nil
  self:containers_changed()
  log(self, "detached %s", netns)
  return true
end

-- ---------------------------------------------------------------------
-- status and control socket
-- ---------------------------------------------------------------------

function Node:status()
  local st = self.t:status()
  local byname = {}
  for _, r in ipairs(self:member_list()) do byname[r.public_key] = r end
  local peers = {}
  for _, p in ipairs(st.peers) do
    local r = byname[p.public_key] or {}
    local h = self.health[p.public_key] or {}
    local c = self.nat and self.nat:peer_status(p.public_key) or {}
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
             role = self.node.role, interface = self.node.ifname,
             nat = self.nat and self:nat_status() or cjson.null,
             health = self.prober and self.prober.stats or cjson.null },
    peers = setmetatable(peers, cjson.array_mt),
    containers = setmetatable(self:container_records(), cjson.array_mt),
    version = self.registry and self.registry.version or self.view.version,
    events = setmetatable({ table.unpack(self.events) }, cjson.array_mt),
    leader_connected = self.registry and true or (self.session and self.session.ready) or false,
  }
end

function Node:nat_status()
  local n = self.nat:self_status()
  local stun = {}
  for server, mapped in pairs(n.stun or {}) do stun[#stun + 1] = { server = server, mapped = mapped } end
  table.sort(stun, function(a, b) return a.server < b.server end)
  local list = {}
  for i, c in ipairs(n.candidates) do list[i] = { type = c.type, endpoint = c.endpoint } end
  return { nat = n.nat, candidates = setmetatable(list, cjson.array_mt), stun = setmetatable(stun, cjson.array_mt),
           relay = n.relay or cjson.null, stats = n.stats }
end

function Node:control(req)
  if type(req) ~= "table" then return { ok = false, error = "bad request" } end
  local cmd = req.cmd
  local res, err
  if cmd == "status" then
    res = self:status()
  elseif cmd == "attach" then
    res, err = self:attach(req.netns, req.name)
  elseif cmd == "detach" then
    res, err = self:detach(req.netns)
  elseif cmd == "remove-node" then
    res, err = self:remove_node(req.name)
  elseif cmd == "token" then
    if not self.registry then
      err = "tokens are issued by the leader; this node is a member"
    else
      local ok, str = pcall(token.create, self.lead.tokens, {
        endpoint = self.node.cluster.leader.endpoint, control_public = self.node.cluster.leader.control_public,
        ttl = math.tointeger(req.ttl), uses = math.tointeger(req.uses) })
      if ok then
        self:save_leader()
        res = { token = str }
      else
        err = tostring(str)
      end
    end
  else
    err = string.format("unknown command \"%s\"", tostring(cmd))
  end
  if err then return { ok = false, error = err } end
  return { ok = true, result = res }
end

function Node:start_control()
  local path = self.paths.control
  os.remove(path)
  local pipe = uv.new_pipe(false)
  local ok, err = pipe:bind(path)
  if not ok then return nil, "control socket: " .. tostring(err) end
  uv.fs_chmod(path, tonumber("600", 8))
  pipe:listen(16, self:guard("control accept", function()
    local conn = uv.new_pipe(false)
    if not pipe:accept(conn) then close(conn) return end
    -- one request, one answer, then the connection closes (after the
    -- answer is written, or at once when the client has gone)
    jsonlines.wrap(conn, {
      on_line = function(c, line)
        if c.answered then return end
        c.answered = true
        local okd, req = pcall(cjson.decode, line)
        local resp = okd and self:control(req) or { ok = false, error = "bad request" }
        c:send(resp, function() c:close() end)
      end,
      log = function(fmt, ...) log(self, "control socket: " .. fmt, ...) end,
    }):start()
  end))
  self.control_pipe = pipe
  return true
end

-- ---------------------------------------------------------------------
-- lifecycle
-- ---------------------------------------------------------------------

local function load_node(dir)
  local paths = cluster.paths(dir)
  local node, err = state.load_checked(paths.node, "node")
  if not node then return nil, err end
  return node, paths
end

--- Runs a node until SIGTERM/SIGINT.
-- @tparam string dir state directory
-- @return 0 on a clean stop, or nil and a message
function M.run(dir)
  local node, paths = load_node(dir)
  if not node then return nil, paths end
  local self = setmetatable({ node = node, paths = paths, peers = {}, health = {}, sessions = {}, timers = {},
                              attached = {}, events = {} }, Node)
  if node.role == "leader" then
    local lead, err = state.load_checked(paths.leader, "leader", { node = node })
    if not lead then return nil, err end
    self.lead = lead
    self.control_private = core.key_from_base64(lead.control_private)
    self.alloc, err = allocator.import(lead.allocator)
    if not self.alloc then return nil, "allocator state: " .. err end
    local reg = lead.registry or {}
    self.registry, err = membership.leader.new({ name = node.name, members = reg.members, version = reg.version,
                                                 epoch = reg.epoch })
    if not self.registry then return nil, err end
    self.join_cache = joinproto.replay_cache.new(256)
  else
    local saved, err, kind = state.load_checked(paths.members, "members", { node = node })
    if not saved and kind ~= "missing" then return nil, err end
    saved = saved or {}
    self.view, err = membership.member.new({ self_name = node.name, members = saved.members,
                                              version = saved.version, epoch = saved.epoch })
    if not self.view then return nil, err end
    self.was_member = self.view:get(node.name) ~= nil
  end
  -- containers of this node: addresses from its own slice
  local cs, cerr, ckind = state.load_checked(paths.containers, "containers", { node = node })
  if not cs and ckind ~= "missing" then return nil, cerr end
  self.attached = cs and cs.attached or {}

  local t, err = transport.new({ private_key = node.private_key, listen_port = node.self.listen_port,
                                 address = { node.self.overlay_ip .. "/" .. prefix_of(node.cluster.cidr4),
                                             node.self.overlay_ip6 .. "/" .. prefix_of(node.cluster.cidr6) } },
                               node.ifname)
  if not t then return nil, err end
  local ok
  ok, err = t:create_interface()
  if not ok then return nil, err end
  self.t = t
  ok, err = t:configure({})
  if not ok then t:shutdown() return nil, err end
  local nat_settings = type(node.cluster.nat) == "table" and node.cluster.nat or {}
  self.keepalive = math.tointeger(nat_settings.keepalive) or M.KEEPALIVE
  local turn_conf = node.cluster.turn
  if type(turn_conf) ~= "table" or type(turn_conf.server) ~= "string" then turn_conf = nil end
  self.nat, err = nat_agent.new({
    t = t, public_key = node.public_key, endpoint = node.self.endpoint,
    stun = type(node.cluster.stun) == "table" and node.cluster.stun or {}, turn = turn_conf,
    settings = nat_settings, clock = now_precise,
    publish = function(c) self:publish_candidates(c) end,
    request_punch = function(peer) self:request_punch(peer) end,
    log = function(fmt, ...) log(self, fmt, ...) end,
    event = function(kind, fields) event(self, kind, fields) end,
  })
  if not self.nat then t:shutdown() return nil, "NAT settings: " .. tostring(err) end
  if not self.registry then
    -- a member always knows the leader, even before the first snapshot
    local l = node.cluster.leader
    if not self.view:get(l.name) and l.public_key then
      self.view:apply({ type = "snapshot", version = 0, members = { l } })
    end
  end
  self:sync_peers()

  local function fail(e)
    self:stop()
    return nil, e
  end
  -- re-attach containers recorded before a restart (their veths survive
  -- only if the namespaces do)
  for netns, c in pairs(self.attached) do
    if core.ifindex(containers.host_ifname(netns)) <= 0 then
      local _, aerr = containers.attach({ netns = netns, ip = c.ip, ip6 = c.ip6, cluster4 = node.cluster.cidr4,
                                          cluster6 = node.cluster.cidr6 })
      if aerr then
        log(self, "container %s not restored: %s", netns, aerr)
        self.attached[netns] = nil
      end
    end
  end

  self.dns = dns.server.new({ zone = self.zone, host = { node.self.overlay_ip, node.self.overlay_ip6 }, port = 53,
                              forward = node.cluster.dns_forward })
  ok, err = self.dns:start()
  if not ok then return fail("DNS server: " .. tostring(err)) end
  ok, err = self:start_health()
  if not ok then return fail(err) end
  if self.registry then
    ok, err = self:start_membership_server()
    if not ok then return fail(err) end
    self.registry:update(node.name, { containers = self:container_records() })
    self:registry_changed()
    self:start_join_reclaim()
  else
    local rc = uv.new_timer()
    rc:start(0, M.RECONNECT * 1000, self:guard("leader reconnect", function() self:connect_leader() end))
    self.timers[#self.timers + 1] = rc
  end
  ok, err = self:start_control()
  if not ok then return fail(err) end

  -- engine events: join requests (leader), STUN, TURN and punch datagrams
  self.poll = uv.new_poll(t:fd())
  self.poll:start("r", self:guard("engine events", function()
    for ev in t:events() do
      if ev.type == "datagram" then
        if joinproto.is_control(ev.data) then
          if self.registry then self:on_join_datagram(ev.from, ev.data) end
        elseif not self.stopping then
          self.nat:on_datagram(ev)
        end
      end
    end
  end))
  local nt = uv.new_timer()
  nt:start(0, math.floor(M.NAT_TICK * 1000), self:guard("NAT tick", function()
    if not self.stopping then self.nat:tick(self.health) end
  end))
  self.timers[#self.timers + 1] = nt
  local signals = {}
  for _, sig in ipairs({ "sigterm", "sigint", "sighup" }) do
    local h = uv.new_signal()
    h:start(sig, self:guard("signal", function()
      log(self, "%s: stopping", sig:upper())
      self:stop()
    end))
    signals[#signals + 1] = h
  end
  self.signals = signals
  log(self, "up: %s %s on %s, interface %s", node.role, node.self.overlay_ip, node.self.endpoint, node.ifname)
  uv.run()
  if self.fatal then return nil, self.fatal end
  if self.removed then return nil, "this node was removed from the cluster" end
  return 0
end

function Node:stop()
  if self.stopping then return end
  self.stopping = true
  for _, tm in ipairs(self.timers) do close(tm) end
  if self.poll then close(self.poll) end
  if self.dns then self.dns:stop() end
  if self.health_udp then close(self.health_udp) end
  if self.membership_server then close(self.membership_server) end
  for _, s in pairs(self.sessions) do s.conn:close() end
  if self.session then self.session.conn:close() end
  if self.control_pipe then
    close(self.control_pipe)
    os.remove(self.paths.control)
  end
  for _, h in ipairs(self.signals or {}) do close(h) end
  if self.nat then self.nat:stop() end
  if self.t then self.t:shutdown() end
  uv.stop()
end

--- Sends one request to a running daemon's control socket.
-- @return the result table, or nil and a message
function M.request(dir, req)
  local path = cluster.paths(dir).control
  local pipe = uv.new_pipe(false)
  local timer = uv.new_timer()
  local resp, err
  local function done(e)
    err = err or e
    close(pipe)
    close(timer)
  end
  pipe:connect(path, function(cerr)
    if cerr then
      -- EACCES: the state directory (0700) or the socket (0600) is
      -- root-only; whether a daemon runs cannot be told from here.
      if tostring(cerr):match("^EACCES") or tostring(cerr):match("^EPERM") then
        return done(string.format("permission denied: the control socket of %s is root-only (run as root)", dir))
      end
      return done(string.format("no daemon runs for %s (%s)", dir, cerr))
    end
    local buf = ""
    pipe:read_start(function(rerr, chunk)
      if rerr or not chunk then return done("the daemon closed the connection") end
      buf = buf .. chunk
      local line = buf:match("^([^\n]*)\n")
      if line then
        local ok, r = pcall(cjson.decode, line)
        resp = ok and r or nil
        done(resp and nil or "bad answer from the daemon")
      end
    end)
    pipe:write(json_line(req))
  end)
  timer:start(10000, 0, function() done("the daemon did not answer") end)
  uv.run()
  if not resp then return nil, err or "no answer" end
  if not resp.ok then return nil, resp.error end
  return resp.result
end

return M
