--- The embedded registry, member side: a JSON-lines session to the
-- leader over the overlay (TCP 7946, inside WireGuard) that applies the
-- leader's snapshots and deltas to a local view (persisted in
-- members.json), and sends this node's containers, NAT candidates and
-- punch requests.  See wgoverlay.registry for the interface.
-- @module wgoverlay.registry.member
local uv = require "luv"
local cjson = require "cjson"
local state = require "wgoverlay.state"
local membership = require "wgoverlay.membership"
local cluster = require "wgoverlay.cluster"
local jsonlines = require "wgoverlay.jsonlines"
local leaderkey = require "wgoverlay.leaderkey"

local M = {}

M.RECONNECT = 2 -- seconds between connection attempts to the leader
-- Without a session for this long, the member asks the leader for its
-- current WireGuard key on the WireGuard port (it may have rotated it
-- while this node was down; wgoverlay.leaderkey), then again every
-- KEY_QUERY_EVERY seconds while still without a session.
M.KEY_QUERY_AFTER = 6
M.KEY_QUERY_EVERY = 5

local Member = {}
Member.__index = Member

function M.open(host)
  local node = host.node
  local saved, err, kind = state.load_checked(host.paths.members, "members", { node = node })
  if not saved and kind ~= "missing" then return nil, err end
  saved = saved or {}
  local view
  view, err = membership.member.new({ self_name = node.name, members = saved.members, version = saved.version,
                                      epoch = saved.epoch })
  if not view then return nil, err end
  -- a member always knows the leader, even before the first snapshot
  local l = node.cluster.leader
  if not view:get(l.name) and l.public_key then
    view:apply({ type = "snapshot", version = 0, members = { l } })
  end
  return setmetatable({ kind = "embedded", role = "member", host = host, node = node, view = view,
                        was_member = view:get(node.name) ~= nil, containers = {}, pol = saved.policy }, Member)
end

function Member:members() return self.view:members() end
function Member:version() return self.view.version end
function Member:connected() return (self.session and self.session.ready) or false end

function Member:start()
  self.down_since = os.time()
  self.timer = uv.new_timer()
  self.timer:start(0, M.RECONNECT * 1000, self.host.guard("leader reconnect", function()
    self:connect()
    self:maybe_query_key()
  end))
  return true
end

-- No session to the leader for a while: ask for its current key.
function Member:maybe_query_key(now)
  now = now or os.time()
  if self.stopping or self:connected() or now - self.down_since < M.KEY_QUERY_AFTER then return end
  if self.key_query_at and now - self.key_query_at < M.KEY_QUERY_EVERY then return end
  local l = self.node.cluster.leader
  local r = self.view:get(l.name)
  local ep = (r and r.endpoint) or l.endpoint
  if not (ep and l.control_public and self.host.t) then return end
  local bytes, pending = leaderkey.query(self.node.private_key, self.node.public_key, l.control_public, now)
  if not bytes then return end
  self.key_query_at, self.key_pending = now, pending
  local ok, err = self.host.t:send_datagram(ep, bytes)
  if not ok then self.host.log("key query to the leader at %s: %s", ep, err) end
end

-- The leader's answer: a new key goes into the view (members.json,
-- node.json) and to the engine (in place, through changed()), and the
-- stuck connection attempt starts over.
function Member:on_key_answer(data)
  local a = leaderkey.open_answer(self.key_pending, data)
  if not a then return end
  self.key_pending = nil
  local l = self.node.cluster.leader
  if not self.view:set_public_key(l.name, a.public_key) then return end
  self.host.log("the leader's key changed while this node was away: now %s", a.public_key)
  self:save()
  self:follow_leader_key()
  self.host.changed()
  if self.session and not self.session.ready then self.session.conn:close() end
end

function Member:stop()
  self.stopping = true
  for _, done in pairs(self.policy_wait or {}) do done(nil, "the daemon is stopping") end
  if self.timer and not self.timer:is_closing() then self.timer:close() end
  if self.session then self.session.conn:close() end
end

function Member:send(msg)
  if self.session and self.session.ready then self.session.conn:send(msg) end
end

function Member:set_containers(list)
  self.containers = list
  self:send({ type = "containers", containers = list })
end

function Member:set_candidates(c)
  self.candidates = c
  if c then self:send({ type = "candidates", candidates = c }) end
end

-- This node's new key (rotate-key): sent now, and again on every
-- reconnection while the leader's record still has another key (the
-- leader ignores a key it already has).
function Member:set_public_key(pub)
  self:send({ type = "public_key", public_key = pub })
  return true
end

function Member:request_punch(peer) self:send({ type = "punch_request", peer = peer }) end

-- Joins go to the leader; a member takes only the answer to its key query.
function Member:on_datagram(_, data)
  if leaderkey.kind(data) == leaderkey.KEY_RESP then self:on_key_answer(data) end
  return true
end

function Member:issue_token(_, cb) return cb(nil, "tokens are issued by the leader; this node is a member") end

function Member:remove_node(_, cb) return cb(nil, "remove-node runs on the leader") end

-- The policy in force, as the leader last sent it (kept in members.json:
-- a member that restarts without the leader enforces it at once).
function Member:policy() return self.pol end

M.POLICY_ANSWER = 5 -- seconds to wait for the leader to store a policy

--- `policy apply` on a member: sent over the session, the leader stores
-- it (and checks it again) and answers; cb(`{version}`) | cb(nil, err).
function Member:set_policy(doc, cb)
  if not self:connected() then
    return cb(nil, "the leader is not reachable (see `status`): the policy in force stays")
  end
  self.policy_seq = (self.policy_seq or 0) + 1
  local id = self.policy_seq
  local tm = uv.new_timer()
  self.policy_wait = self.policy_wait or {}
  local function done(r, err)
    if not self.policy_wait[id] then return end
    self.policy_wait[id] = nil
    if not tm:is_closing() then tm:close() end
    cb(r, err)
  end
  self.policy_wait[id] = done
  tm:start(M.POLICY_ANSWER * 1000, 0, self.host.guard("policy answer timeout", function()
    done(nil, string.format("no answer from the leader within %d s; see `policy show` for what is in force",
                            M.POLICY_ANSWER))
  end))
  self:send({ type = "policy_apply", id = id, policy = doc })
end

function Member:on_policy_result(msg)
  local id = math.tointeger(msg.id)
  local done = id and self.policy_wait and self.policy_wait[id]
  if not done then return end
  if type(msg.error) == "string" then return done(nil, msg.error) end
  done({ version = math.tointeger(msg.version) })
end

function Member:on_policy(p)
  if type(p) ~= "table" then return self.host.log("policy from the leader refused: not an object") end
  p = { version = math.tointeger(p.version) or p.version, doc = p.doc } -- JSON numbers arrive as floats
  local ok, err = require("wgoverlay.schema").check("members", { version = 0, members = {}, policy = p })
  if not ok then return self.host.log("policy from the leader refused: %s", err) end
  if self.pol and self.pol.version == p.version then return end
  self.pol = { version = p.version, doc = assert(require("wgoverlay.policy").validate(p.doc)) }
  self:save()
  self.host.changed()
end

function Member:save()
  local data = self.view:export()
  data.policy = self.pol
  local ok, err = state.save(self.host.paths.members, data)
  if not ok then self.host.log("cannot save members: %s", err) end
end

function Member:on_line(line)
  local ok, msg = pcall(cjson.decode, line)
  if not ok or type(msg) ~= "table" then return end
  if msg.type == "punch" then
    if type(msg.peer) == "string" then self.host.punch(msg.peer) end
    return
  end
  if msg.type == "policy" then return self:on_policy(msg.policy) end
  if msg.type == "policy_result" then return self:on_policy_result(msg) end
  local res = self.view:apply(msg)
  if not res then return end
  if res.need_snapshot then self:send(self.view:hello()) end
  if res.changed then
    self:save()
    self:follow_leader_key()
    if self.view:get(self.node.name) then
      self.was_member = true
    elseif self.was_member then
      self.host.log("this node was removed from the cluster by the leader: stopping")
      return self.host.removed()
    end
    self.host.changed()
  end
end

-- The leader rotated its key: node.json's `cluster.leader` (used when
-- members.json is lost) follows, replaced atomically.  members.json has
-- the new record already (saved before this).
function Member:follow_leader_key()
  local l = self.node.cluster.leader
  local r = self.view:get(l.name)
  if not r or r.public_key == l.public_key then return end
  l.public_key = r.public_key
  local ok, err = state.save(self.host.paths.node, self.node)
  if not ok then self.host.log("cannot save the leader's new key in node.json: %s", err) end
  self.host.log("the leader %s rotated its key", l.name)
end

function Member:connect()
  if self.stopping or self.session then return end
  local tcp = uv.new_tcp()
  local s = {}
  s.conn = jsonlines.wrap(tcp, {
    on_line = function(_, line) self:on_line(line) end,
    on_close = function()
      if self.session == s then
        self.session = nil
        if s.ready then self.down_since = os.time() end
      end
    end,
    log = function(fmt, ...) self.host.log("membership session: " .. fmt, ...) end,
  })
  self.session = s
  local leader_ip = self.node.cluster.leader.overlay_ip
  local ok, cerr = tcp:connect(leader_ip, cluster.MEMBERSHIP_PORT, self.host.guard("leader connect", function(err)
    if err then return s.conn:close(err) end
    s.ready = true
    s.conn:send(self.view:hello())
    s.conn:send({ type = "containers", containers = self.containers })
    if self.candidates then s.conn:send({ type = "candidates", candidates = self.candidates }) end
    local mine = self.view:get(self.node.name)
    if mine and mine.public_key ~= self.node.public_key then
      s.conn:send({ type = "public_key", public_key = self.node.public_key })
    end
    s.conn:start()
  end))
  if not ok then s.conn:close(cerr) end
end

return M
