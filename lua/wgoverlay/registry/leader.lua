--- The embedded registry, leader side: the versioned member registry and
-- the allocator (persisted in leader.json), join tokens and joins arriving
-- on the WireGuard port (with the reclaim of nodes admitted that never
-- came up), the membership server (TCP 7946 on the overlay address) that
-- pushes snapshots and deltas to every member's session, where WireGuard
-- actually reaches each member, and the relay of punch requests.  See
-- wgoverlay.registry for the interface.
-- @module wgoverlay.registry.leader
local uv = require "luv"
local cjson = require "cjson"
local core = require "wgoverlay.core"
local state = require "wgoverlay.state"
local allocator = require "wgoverlay.allocator"
local token = require "wgoverlay.token"
local joinproto = require "wgoverlay.joinproto"
local membership = require "wgoverlay.membership"
local cluster = require "wgoverlay.cluster"
local jsonlines = require "wgoverlay.jsonlines"
local candidates = require "wgoverlay.nat.candidates"
local schema = require "wgoverlay.schema"
local leaderkey = require "wgoverlay.leaderkey"
local policy = require "wgoverlay.policy"

local M = {}

M.HEARTBEAT = 5    -- seconds between heartbeats (and endpoint checks)
M.PUNCH_DEDUP = 2  -- one punch per pair is relayed in this many seconds

local Leader = {}
Leader.__index = Leader

local function close(h)
  if h and not h:is_closing() then h:close() end
end

function M.open(host)
  local node = host.node
  local lead, err = state.load_checked(host.paths.leader, "leader", { node = node })
  if not lead then return nil, err end
  local self = setmetatable({ kind = "embedded", role = "leader", host = host, node = node, lead = lead,
                              sessions = {}, timers = {}, punches = {} }, Leader)
  self.control_private = core.key_from_base64(lead.control_private)
  self.alloc, err = allocator.import(lead.allocator)
  if not self.alloc then return nil, "allocator state: " .. err end
  local reg = lead.registry or {}
  self.registry, err = membership.leader.new({ name = node.name, members = reg.members, version = reg.version,
                                               epoch = reg.epoch })
  if not self.registry then return nil, err end
  self.join_cache = joinproto.replay_cache.new(256)
  return self
end

function Leader:members()
  local list = {}
  for _, r in pairs(self.registry.members) do list[#list + 1] = r end
  return list
end

function Leader:version() return self.registry.version end

-- ---------------------------------------------------------------------
-- network policy: one document with a version, in leader.json, sent to
-- every member session (on hello and on each change)
-- ---------------------------------------------------------------------

function Leader:policy() return self.lead.policy end

--- Stores a new policy document (validated by the caller and here).
-- cb(`{version}`) | cb(nil, err).  The policy in force stays on error.
function Leader:set_policy(doc, cb)
  local clean, err = policy.validate(doc)
  if not clean then return cb(nil, err) end
  local old = self.lead.policy
  self.lead.policy = { version = ((old and old.version) or 0) + 1, doc = clean }
  local ok, serr = state.save(self.host.paths.leader, self:export_state())
  if not ok then
    self.lead.policy = old
    return cb(nil, "cannot save the policy (the previous one stays): " .. tostring(serr))
  end
  local msg = { type = "policy", policy = self.lead.policy }
  for _, s in pairs(self.sessions) do if s.version then s.conn:send(msg) end end
  self.host.log("policy version %d stored (%d rules, default %s)", self.lead.policy.version, #clean.rules,
                clean.default)
  self.host.event("policy_applied", { version = self.lead.policy.version })
  self.host.changed()
  return cb({ version = self.lead.policy.version })
end

function Leader:export_state()
  self.lead.allocator = self.alloc:export()
  self.lead.registry = self.registry:export()
  return self.lead
end
function Leader:connected() return true end

function Leader:save()
  self.lead.allocator = self.alloc:export()
  self.lead.registry = self.registry:export()
  local ok, err = state.save(self.host.paths.leader, self.lead)
  if not ok then self.host.log("cannot save leader state: %s", err) end
end

-- After every change: persist before pushing (versions never go back),
-- tell every member, then the node itself.
function Leader:changed()
  self:save()
  for _, s in pairs(self.sessions) do self:push(s) end
  self.host.changed()
end

function Leader:push(s)
  if not s.version then return end
  local msg = self.registry:delta_since(s.version, s.epoch)
  s.version, s.epoch = msg.version, msg.epoch
  s.conn:send(msg)
end

function Leader:set_containers(list)
  self.registry:update(self.node.name, { containers = list })
  self:changed()
end

function Leader:set_candidates(c)
  local v, changed = self.registry:update(self.node.name, { candidates = c })
  if v and changed then self:changed() end
end

-- The leader's own new key: into its record (members learn it from the
-- delta, over their sessions, which go on under the current WireGuard
-- session).  node.json (`cluster.leader.public_key` included) is saved
-- by the daemon before this.
function Leader:set_public_key(pub)
  local v, err = self.registry:update(self.node.name, { public_key = pub })
  if not v then
    self.host.log("cannot publish the new public key: %s", err)
    return nil, err
  end
  self:changed()
  return true
end

-- A member's new key (rotate-key on that member), from its session: the
-- session's source address, authenticated by WireGuard, names the member,
-- and a member is trusted for its own record.  A key another member
-- holds is refused.
function Leader:member_public_key(name, pub)
  if type(pub) ~= "string" or not core.valid_key(pub) then
    self.host.log("public key of %s refused: not a 32-byte base64 key", name)
    return
  end
  local v, changed = self.registry:update(name, { public_key = pub })
  if not v then
    self.host.log("public key of %s refused: %s", name, changed)
    return
  end
  if changed then
    self.host.log("node %s rotated its key", name)
    self:changed()
  end
end

function Leader:request_punch(peer) self:relay_punch(self.node.name, peer) end

function Leader:issue_token(o, cb) return cb(self:make_token(o)) end

function Leader:make_token(o)
  local ok, str = pcall(token.create, self.lead.tokens, {
    endpoint = self.node.cluster.leader.endpoint, control_public = self.node.cluster.leader.control_public,
    ttl = math.tointeger(o.ttl), uses = math.tointeger(o.uses) })
  if not ok then return nil, tostring(str) end
  self:save()
  return str
end

-- ---------------------------------------------------------------------
-- joins
-- ---------------------------------------------------------------------

-- `retry`: the same joiner (token, name, key) was admitted before and
-- its answer was lost (joinproto.handle); it gets the same slice, and the
-- token is not used again.
function Leader:admit(p, _, retry)
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
  self:changed()
  if retry then
    self.host.log("node %s admitted again (join retried after a lost answer; same slice %s, token not used again)",
                  p.name, slice.slice)
  else
    self.host.log("node %s joined (%s)", p.name, slice.ip)
    self.host.event("node_joined", { peer = p.name })
  end
  local c = self.node.cluster
  return { node = { overlay_ip = slice.ip, overlay_ip6 = slice.ip6, slice = slice.slice, slice6 = slice.slice6 },
           cluster = { cidr4 = c.cidr4, cidr6 = c.cidr6, zone = c.zone, dns_forward = c.dns_forward,
                       stun = c.stun, turn = c.turn, nat = c.nat,
                       leader = { control_public = c.leader.control_public } },
           leader = self.registry:get(self.node.name) }
end

-- A member that was down while this leader rotated its key asks for the
-- current key on the WireGuard port (wgoverlay.leaderkey); one answer per
-- member and second, refusals logged at a bounded rate.
function Leader:on_key_query(from, data)
  local now = os.time()
  self.key_log = self.key_log or joinproto.rate_limiter(joinproto.LOG_INTERVAL)
  self.key_answered = self.key_answered or {}
  local me = self.registry:get(self.node.name)
  local reply, err = leaderkey.answer(data, {
    control_private = self.control_private, now = now,
    is_member = function(pub)
      local name = self.registry.by_key[pub]
      if not name or name == self.node.name or self.key_answered[pub] == now then return false end
      self.key_answered[pub] = now
      return true
    end,
    leader = { public_key = me.public_key, endpoint = me.endpoint },
  })
  if reply then
    self.host.t:send_datagram(from, reply)
    return true
  end
  local ok, suppressed = self.key_log:hit(now)
  if ok then
    self.host.log("key query refused (%s): %s%s", from, err,
                  suppressed > 0 and string.format(" (%d more suppressed)", suppressed) or "")
  end
  return true
end

--- A join request from the WireGuard port; answered there.
function Leader:on_datagram(from, data)
  if leaderkey.kind(data) then return self:on_key_query(from, data) end
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
  local reply, info = joinproto.handle_logged(ctx, data, from, self.join_log, self.host.log)
  if info and info.joined and not info.replayed then self:save() end -- persisted before answering
  if reply then self.host.t:send_datagram(from, reply) end
  return true
end

-- A node admitted whose answer was lost and that never retried, or never
-- ran: after joinproto.reclaim_after(WGO_JOIN_RECLAIM) seconds (600 by
-- default) without a membership session or a handshake, its registry
-- record and slice are released.  The token use is not given back.  Also
-- drops the records of nodes that came up, were removed or replaced, and
-- reports refusals the log rate limit held back.
function Leader:reclaim_joins(now)
  now = now or os.time()
  local held = self.join_log and self.join_log:flush(now)
  if held then self.host.log("join refused: %d more suppressed", held) end
  local joins = self.lead.joins
  if type(joins) ~= "table" or next(joins) == nil then return end
  local up, members, byname = {}, {}, {}
  for name in pairs(self.sessions) do up[name] = true end
  for name, r in pairs(self.registry.members) do
    members[name] = r.public_key
    byname[r.public_key] = name
  end
  for _, p in ipairs(self.host.t:status().peers) do
    local name = byname[p.public_key]
    if name and (p.last_handshake or 0) > 0 then up[name] = true end
  end
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
    self.host.log("node %s reclaimed: admitted %d s ago, never came up (record and slice released; "
                  .. "the token use is not given back)", name, now - rec.at)
    self.host.event("node_reclaimed", { peer = name })
  end
  if #plan.reclaim > 0 then
    self:changed() -- saves, tells the members, drops the peer
  elseif #plan.done > 0 then
    self:save()
  end
end

-- Starts the reclaim timer.  Nothing is reclaimed in the first minutes
-- after a start (min(reclaim time, 60 s)): nodes that were up before a
-- leader restart get time to reconnect.
function Leader:start_join_reclaim()
  self.reclaim_after = joinproto.reclaim_after(os.getenv(joinproto.RECLAIM_ENV))
  self.reclaim_not_before = os.time() + math.min(self.reclaim_after, 60)
  local every = math.max(1, math.min(10, self.reclaim_after // 10)) * 1000
  local tm = uv.new_timer()
  tm:start(every, every, self.host.guard("join reclaim", function()
    if not self.stopping then self:reclaim_joins() end
  end))
  self.timers[#self.timers + 1] = tm
end

function Leader:remove_node(name, cb) return cb(self:remove_now(name)) end

function Leader:remove_now(name)
  if name == self.node.name then return nil, "the leader cannot remove itself" end
  local r = self.registry:get(name)
  if not r then return nil, string.format("no node named \"%s\"", name) end
  self.registry:remove(name)
  self.alloc:release_node(name)
  self:save()
  -- Everyone hears of it, the removed node included: its delta is written
  -- while its peer still exists, and the peer goes a second later.
  for _, s in pairs(self.sessions) do self:push(s) end
  local gone = self.sessions[name]
  self.sessions[name] = nil
  local t = uv.new_timer()
  t:start(1000, 0, self.host.guard("remove-node timer", function()
    close(t)
    if gone then gone.conn:close() end
    if not self.stopping then self.host.changed() end
  end))
  self.host.log("node %s removed", name)
  self.host.event("node_removed", { peer = name })
  return true
end

-- ---------------------------------------------------------------------
-- membership sessions
-- ---------------------------------------------------------------------

function Leader:member_by_ip(ip)
  for _, r in pairs(self.registry.members) do
    if r.overlay_ip == ip or r.overlay_ip6 == ip then return r end
  end
end

function Leader:on_member_line(s, line)
  local ok, msg = pcall(cjson.decode, line)
  if not ok or type(msg) ~= "table" then return end
  if msg.type == "hello" then
    s.version = math.tointeger(msg.version) or 0
    s.epoch = type(msg.epoch) == "string" and msg.epoch or nil
    self:push(s)
    if self.lead.policy then s.conn:send({ type = "policy", policy = self.lead.policy }) end
  elseif msg.type == "containers" and type(msg.containers) == "table" then
    -- checked as leader.json will be on the next start (names, addresses
    -- inside the member's slice), so a member cannot make it unloadable
    local r = self.registry:get(s.name)
    local probe = setmetatable({ containers = msg.containers }, { __index = r })
    local ok, err = schema.check_member(probe, { node = self.node })
    if ok then ok, err = self.registry:update(s.name, { containers = msg.containers }) end
    if ok then self:changed() else self.host.log("containers of %s refused: %s", s.name, err) end
  elseif msg.type == "candidates" then
    self:member_candidates(s.name, msg.candidates)
  elseif msg.type == "public_key" then
    self:member_public_key(s.name, msg.public_key)
  elseif msg.type == "policy_apply" then
    -- `policy apply` on a member: its root-only control socket, then its
    -- session (authenticated by WireGuard); checked here like any other
    local id = math.tointeger(msg.id)
    self:set_policy(msg.policy, function(r, err)
      if r then self.host.log("policy version %d applied from node %s", r.version, s.name) end
      s.conn:send({ type = "policy_result", id = id, version = r and r.version or nil, error = err })
    end)
  elseif msg.type == "punch_request" and type(msg.peer) == "string" then
    self:relay_punch(s.name, msg.peer)
  end
end

-- A member's NAT candidates (checked, normalised) into its record.
function Leader:member_candidates(name, c)
  local clean, err = candidates.sanitize(c)
  if not clean then
    self.host.log("candidates of %s refused: %s", name, err)
    return
  end
  local v, changed = self.registry:update(name, { candidates = candidates.publish(clean.key, clean.nat, clean.list) })
  if not v then
    self.host.log("candidates of %s refused: %s", name, changed)
    return
  end
  if changed then self:changed() end
end

-- Coordinated hole punching: tell both sides to probe each other now.
function Leader:relay_punch(a, b)
  if a == b or not self.registry:get(a) or not self.registry:get(b) then return end
  local key = a < b and (a .. "\0" .. b) or (b .. "\0" .. a)
  local sec, usec = uv.gettimeofday()
  local now = sec + usec / 1e6
  if self.punches[key] and now - self.punches[key] < M.PUNCH_DEDUP then return end
  self.punches[key] = now
  self.host.log("punch %s <-> %s", a, b)
  for _, pair in ipairs({ { a, b }, { b, a } }) do
    local side, other = pair[1], pair[2]
    if side == self.node.name then
      self.host.punch(other)
    else
      local s = self.sessions[side]
      if s and s.version then s.conn:send({ type = "punch", peer = other }) end
    end
  end
end

-- Endpoints: where WireGuard actually reaches each member (roaming
-- included) goes into its record, and so to everyone.
function Leader:check_endpoints()
  local changed = false
  local has_stun = type(self.node.cluster.stun) == "table" and #self.node.cluster.stun > 0
  local bykey = {}
  for _, r in pairs(self.registry.members) do bykey[r.public_key] = r end
  for _, p in ipairs(self.host.t:status().peers) do
    local r = bykey[p.public_key]
    -- A relayed path is not the member's address; and a member behind a
    -- NAT (STUN says so, or has not said yet) is reached through its
    -- candidates, not by publishing the NAT's mapping as its endpoint.
    local behind_nat = has_stun and not (r and r.candidates and r.candidates.nat == "none")
    if r and p.endpoint and p.endpoint ~= r.endpoint and p.last_handshake > 0 and not p.relay_channel
       and not behind_nat then
      self.registry:update(r.name, { endpoint = p.endpoint })
      changed = true
    end
  end
  if changed then self:changed() end
end

function Leader:start()
  local server = uv.new_tcp()
  local ok, err = server:bind(self.node.self.overlay_ip, cluster.MEMBERSHIP_PORT)
  if not ok then
    server:close()
    return nil, "membership server: " .. tostring(err)
  end
  server:listen(128, self.host.guard("membership accept", function()
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
      log = function(fmt, ...) self.host.log("membership session of %s: " .. fmt, r.name, ...) end,
    })
    self.sessions[r.name] = s
    s.conn:start()
  end))
  self.server = server
  local hb = uv.new_timer()
  hb:start(M.HEARTBEAT * 1000, M.HEARTBEAT * 1000, self.host.guard("heartbeat", function()
    local beat = jsonlines.line(self.registry:heartbeat())
    for _, s in pairs(self.sessions) do if s.version then s.conn:send(beat) end end
    self:check_endpoints()
  end))
  self.timers[#self.timers + 1] = hb
  self:start_join_reclaim()
  return true
end

function Leader:stop()
  self.stopping = true
  for _, tm in ipairs(self.timers) do close(tm) end
  close(self.server)
  for _, s in pairs(self.sessions) do s.conn:close() end
end

return M
