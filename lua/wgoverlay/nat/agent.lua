--- The NAT traversal agent of a running node: glue between the pure
-- modules (candidates, policy, punch, stun, turn) and one transport.  It
-- owns no sockets and no event loop: the daemon feeds it the datagram
-- events of the WireGuard port (`on_datagram`), the leader's "punch" go
-- (`on_punch`) and a periodic `tick`; it sends with `t:send_datagram` and
-- steers peers with `t:set_peer_relay` / `t:initiate_handshake`.
--
-- What it does:
--
-- * answers STUN Binding requests on the WireGuard port (so any public
--   node serves the others as a STUN server);
-- * gathers candidates: host (the node's endpoint, and its global IPv6
--   addresses with the WireGuard port, read again every `stun_interval`
--   s and when a path dies), server-reflexive (STUN
--   Binding to each configured server from the WireGuard socket, every
--   `stun_interval` s (a policy setting); two servers tell an endpoint-dependent mapping from
--   an endpoint-independent one) and relayed (a TURN allocation on the
--   WireGuard socket, reallocated when lost), and publishes them with its
--   punch key (`opts.publish`);
-- * asks the router for a port mapping of the WireGuard port when given a
--   wgoverlay.nat.portmap (`opts.portmap`), and publishes it as a "mapped"
--   candidate;
-- * binds a TURN channel to every peer's relayed address, so that a peer
--   that relays can always reach it;
-- * runs one wgoverlay.nat.policy per peer and carries out its actions;
--   punch requests go to the registry (`opts.request_punch`), which starts
--   both sides (`on_punch`), and, so that no registry is needed, straight
--   to the peer as a signal (wgoverlay.nat.signal: over the overlay,
--   directly or through up to `SIGNAL_VIA` members that reach both sides)
--   carrying our candidates; the peer answers with its own and both probe.
--   When our candidates change, peers we have no working path to get them
--   the same way (the registry may be down: they would not learn them).
--   When both sides have global IPv6 addresses the probes go to the
--   peer's IPv6 host candidates alone for `V6_HEAD_START` s, then to all
--   its candidates: a direct IPv6 path wins over a punched IPv4 one.
-- @module wgoverlay.nat.agent
local core = require "wgoverlay.core"
local stun = require "wgoverlay.nat.stun"
local endpoint = require "wgoverlay.endpoint"
local turn = require "wgoverlay.nat.turn"
local cand = require "wgoverlay.nat.candidates"
local policy = require "wgoverlay.nat.policy"
local punch = require "wgoverlay.nat.punch"
local signal = require "wgoverlay.nat.signal"
local cjson = require "cjson"

local M = {}

M.STUN_ROUND = 2          -- s a round waits for answers (requests repeated every 0.5 s)
M.REALLOCATE = 10         -- s before a lost or failed TURN allocation is tried again
M.FIRST_PUBLISH = 1.5     -- s the first publication waits for STUN and TURN answers
M.PORTMAP_WAIT = 0.5      -- s it waits for the router (NAT-PMP answers at once; a UPnP
                          -- discovery takes longer, and its mapping is published when it comes)
M.V6_HEAD_START = 1       -- s a punch probes only IPv6 host candidates (when both sides have some)
M.SIGNAL_VIA = 3          -- members a signal is also sent through
M.SIGNAL_GAP = 1          -- s between signals to one peer (answers excepted)
M.FORWARD_RATE = 50       -- signals forwarded for others per second, at most

local Agent = {}
Agent.__index = Agent

local function noop() end

--- Creates the agent.
-- @tparam table o `t` (transport), `public_key` (ours, base64),
--   `endpoint` (our advertised "IP:PORT"), `stun` (list of "IP:PORT"),
--   `turn` (`{ server, username, password }` or nil), `settings` (policy
--   settings, see wgoverlay.nat.policy), `clock` (epoch seconds, float),
--   `publish` (function(candidate set)), `request_punch` (function(peer
--   name)), `send_signal` (function(overlay IP, bytes): a datagram to
--   UDP signal.PORT on that address), `log` (function(fmt, ...)), `event`
--   (function(kind, fields)), `portmap` (a wgoverlay.nat.portmap mapper,
--   or nil: no port mapping), `addresses` (function() -> the interface
--   addresses as wgoverlay.core.addr_dump gives them, or nil and a
--   message: the source of IPv6 host candidates; none without it),
--   `address_filter` (`{ ifnames, cidrs }` to leave out, see
--   wgoverlay.nat.candidates.v6_hosts), `listen_port` (the WireGuard port;
--   default the endpoint's)
-- @return agent, or nil and a message
function M.new(o)
  local settings, err = policy.options(o.settings)
  if not settings then return nil, err end
  local self = setmetatable({
    t = o.t, clock = o.clock, settings = settings,
    self_id = assert(core.key_from_base64(o.public_key)),
    endpoint = o.endpoint and endpoint.normalize(o.endpoint),
    stun_servers = {}, turn_conf = o.turn,
    publish_fn = o.publish or noop, request_punch_fn = o.request_punch or noop, portmap = o.portmap,
    send_signal_fn = o.send_signal, book = signal.book(), by_id = {},
    forwards = { at = 0, n = 0 },
    log = o.log or noop, event = o.event or noop,
    peers = {},          -- WireGuard public key (base64) -> peer state
    by_name = {},
    mapped = {},         -- STUN server -> mapped "IP:PORT" (last round that answered)
    nat = "unknown",
    stats = { stun_answered = 0, stun_ignored = 0, signals_sent = 0, signals_taken = 0, signals_refused = 0,
              signals_forwarded = 0 },
    refused_logged = 0,
  }, Agent)
  local listed = {}
  local function add_server(s)
    local n = endpoint.normalize(s)
    if n and n ~= self.endpoint and not listed[n] then
      listed[n] = true
      self.stun_servers[#self.stun_servers + 1] = n
    end
  end
  for _, s in ipairs(o.stun or {}) do add_server(s) end
  -- a TURN server answers Binding too: asking it tells when the NAT's
  -- mapping towards it changed (and the allocation with it)
  if o.turn then add_server(o.turn.server) end
  self.punch_private, self.punch_public = core.x25519_keypair()
  self.punch_key_b64 = core.key_to_base64(self.punch_public)
  self.prober = punch.new({ self_id = self.self_id, clock = self.clock, low_ttl = settings.punch_ttl })
  self.matcher = stun.matcher({ clock = self.clock })
  local now = self.clock()
  self.started = now
  self.next_stun = now
  self:_init_v6(o, now)
  if self.turn_conf then self:_allocate() end
  return self
end

local function send_all(self, out)
  for _, d in ipairs(out) do self.t:send_datagram(d.to, d.bytes, d.ttl) end
end

-- ---------------------------------------------------------------------
-- TURN
-- ---------------------------------------------------------------------

function Agent:_allocate()
  local c = self.turn_conf
  local client, err
  client, err = turn.new({
    server = c.server, username = c.username, password = c.password, clock = self.clock,
    software = "wgoverlay",
    send = function(bytes, to) return self.t:send_datagram(to, bytes) end,
    on_event = function(ev) if self.turn == client then self:_turn_event(ev) end end,
  })
  if not client then
    self.log("TURN client: %s", err)
    self.turn_error = err
    return
  end
  self.turn = client
  self.realloc_at = nil
  client:allocate()
end

function Agent:_turn_lost(why)
  self.log("TURN relay lost: %s", why)
  self.turn_error = why
  self.relayed = nil
  self.channels = nil
  for _, p in pairs(self.peers) do p.policy:set_relay(nil) end
  self.realloc_at = self.clock() + M.REALLOCATE
end

function Agent:_turn_event(ev)
  local c = self.turn
  if ev.type == "allocated" then
    self.t:set_relay(c.server)
    self.relayed = ev.relayed
    self.turn_error = nil
    self.channels = {}
    self.log("TURN allocation on %s: relayed address %s", c.server, ev.relayed)
    for _, p in pairs(self.peers) do self:_bind(p) end
  elseif ev.type == "channel" then
    for _, p in pairs(self.peers) do
      if p.relay_ep == ev.peer then
        p.channel = ev.channel
        p.policy:set_relay(c.server, ev.channel)
      end
    end
  elseif ev.type == "error" then
    if ev.peer then
      self.log("TURN: %s (peer %s, channel 0x%04X)", ev.message or "error", ev.peer, ev.channel or 0)
    else
      self.log("TURN: %s", ev.message or "error")
    end
    if c.state == "failed" then self:_turn_lost(ev.message or "failed") end
  elseif ev.type == "expired" or ev.type == "closed" then
    if not self.stopping then self:_turn_lost(ev.type) end
  end
end

-- Binds a channel on our allocation to the peer's relayed address.
function Agent:_bind(p)
  if not (self.turn and self.turn.state == "allocated" and p.relay_ep) then return end
  local ch, state = self.turn:channel(p.relay_ep)
  if ch and state == "bound" then
    p.channel = ch
    p.policy:set_relay(self.turn.server, ch)
    return
  end
  if not ch then
    local n, err = self.turn:bind_channel(p.relay_ep)
    if not n then self.log("cannot bind a TURN channel to %s: %s", p.relay_ep, err) end
  end
end

-- ---------------------------------------------------------------------
-- candidates
-- ---------------------------------------------------------------------

function Agent:_srflx()
  local list, seen = {}, {}
  for _, s in ipairs(self.stun_servers) do
    local m = self.mapped[s]
    if m and not seen[m] then
      seen[m] = true
      list[#list + 1] = m
    end
  end
  return list
end

-- IPv6 host candidates: the addresses come from `o.addresses`.
function Agent:_init_v6(o, now)
  self.addresses_fn = o.addresses
  self.address_filter = o.address_filter
  local ep = self.endpoint and endpoint.parse(self.endpoint)
  self.port = math.tointeger(o.listen_port) or (ep and ep.port)
  self.v6_hosts = {}
  self.next_hosts = now
  self:_refresh_hosts(now)
end

--- Reads the interface addresses again (every `stun_interval` s, and at
-- once when a path died): the global IPv6 ones are host candidates.
function Agent:_refresh_hosts(now)
  if not (self.addresses_fn and self.port) or now < self.next_hosts then return end
  self.next_hosts = now + self.settings.stun_interval
  local addrs, err = self.addresses_fn()
  if not addrs then
    err = err or "no answer"
    if self.hosts_error ~= err then self.log("cannot list the interface addresses: %s", tostring(err)) end
    self.hosts_error = err
    return
  end
  self.hosts_error = nil
  local list = {}
  for _, ip in ipairs(cand.v6_hosts(addrs, self.address_filter)) do
    local ep = endpoint.format(ip, self.port)
    if ep ~= self.endpoint then list[#list + 1] = ep end
  end
  if table.concat(list, " ") ~= table.concat(self.v6_hosts, " ") then
    self.log("IPv6 host candidates: %s", #list > 0 and table.concat(list, " ") or "none")
    self.v6_hosts = list
    for _, p in pairs(self.peers) do self:_set_remote(p) end
  end
end

--- Our candidate set as published: `{ key, nat, list }`.
function Agent:candidate_set()
  local host = { self.endpoint }
  for _, ep in ipairs(self.v6_hosts) do host[#host + 1] = ep end
  local list = cand.gather({ host = host, srflx = self:_srflx(), relay = self.relayed,
                             mapped = self.mapped_ep })
  return cand.publish(self.punch_key_b64, self.nat, list)
end

local function set_key(c)
  local parts = { c.key or "", c.nat or "" }
  for _, e in ipairs(c.list) do parts[#parts + 1] = e.type .. "=" .. e.endpoint end
  return table.concat(parts, ",")
end

function Agent:_maybe_publish(now)
  if not self.published and now - self.started < M.FIRST_PUBLISH then
    local stun_pending = #self.stun_servers > 0 and not self.stun_done
    local turn_pending = self.turn and self.turn.state == "allocating"
    local map_pending = self.portmap and self.portmap:first_pending() and now - self.started < M.PORTMAP_WAIT
    if stun_pending or turn_pending or map_pending then return end
  end
  local c = self:candidate_set()
  local k = set_key(c)
  if k ~= self.published_key then
    self.published_key = k
    self.published = c
    if os.getenv("WGO_NAT_DEBUG") then
      local l = {}
      for _, e in ipairs(c.list) do l[#l + 1] = e.type .. " " .. e.endpoint end
      self.log("%.3f publish nat=%s %s", now, c.nat, table.concat(l, ", "))
    end
    self.publish_fn(c)
    for _, p in pairs(self.peers) do
      if p.policy.phase ~= "up" then self:_signal(p, 0, now) end
    end
  end
end

function Agent:_stun_round(now)
  local r = self.round
  if not r then
    if now < self.next_stun or #self.stun_servers == 0 then return end
    r = { started = now, answers = {}, next_send = now }
    self.round = r
  end
  local pending = 0
  for _, s in ipairs(self.stun_servers) do
    if not r.answers[s] then pending = pending + 1 end
  end
  if pending == 0 or now - r.started >= M.STUN_ROUND then
    local answered = {}
    for _, s in ipairs(self.stun_servers) do
      if r.answers[s] then answered[#answered + 1] = r.answers[s] end
    end
    if #answered > 0 then
      local before = table.concat(self:_srflx(), " ")
      self.mapped = r.answers
      self.nat = cand.nat_kind({ self.endpoint }, answered)
      if before ~= "" and table.concat(self:_srflx(), " ") ~= before then
        -- our NAT moved us: no flow left on the way matters any more
        for _, p in pairs(self.peers) do p.policy:addresses_changed(now) end
      end
      for _, p in pairs(self.peers) do p.policy:set_local_nat(self.nat) end
    end
    -- The NAT now maps us elsewhere towards the TURN server: the server
    -- knows our allocation by the old address, so it is gone for us.
    local tc = self.turn
    local seen = tc and r.answers[tc.server]
    if tc and tc.state == "allocated" and tc.mapped and seen and seen ~= tc.mapped then
      self.log("the NAT maps us to %s now (was %s): new TURN allocation", seen, tc.mapped)
      self:_turn_lost("mapping changed")
      self:_allocate()
    end
    self.matcher:expire(0, math.huge)
    self.round = nil
    self.stun_done = true
    self.next_stun = now + self.settings.stun_interval
    return
  end
  if now >= r.next_send then
    for _, s in ipairs(self.stun_servers) do
      if not r.answers[s] then
        local bytes = self.matcher:binding_request(s)
        if bytes then self.t:send_datagram(s, bytes) end
      end
    end
    r.next_send = now + 0.5
  end
end

-- The router's port mapping: requests (on a pool thread), and the
-- policies told when our mapped candidate appears or goes.
function Agent:_portmap_tick(now)
  local pm = self.portmap
  if not pm then return end
  pm:tick(now)
  local ep = pm:mapped(now)
  if ep ~= self.mapped_ep then
    self.mapped_ep = ep
    for _, p in pairs(self.peers) do p.policy:set_local_mapped(ep ~= nil) end
    self.busy = true
  end
end

-- ---------------------------------------------------------------------
-- peers
-- ---------------------------------------------------------------------

--- This node rotated its WireGuard key (rotate-key): probes carry the new
-- public key, and every pair key is derived again at the next set_peers.
function Agent:set_public_key(public_key)
  self.self_id = assert(core.key_from_base64(public_key))
  self.prober.self_id = self.self_id
  for _, p in pairs(self.peers) do p.key_b64 = nil end
end

--- Updates the peer set from member records (all but this node).
function Agent:set_peers(records)
  local seen = {}
  local now = self.clock()
  for _, r in ipairs(records) do
    local pk = r.public_key
    if pk and r.public_key ~= nil and core.valid_key(pk) then
      seen[pk] = true
      local p = self.peers[pk]
      if not p then
        -- (initiated: the engine starts a handshake itself with a new peer)
        p = { name = r.name, public_key = pk, id = core.key_from_base64(pk),
              policy = policy.new(self:_policy_opts(now)), initiated = now }
        p.policy:set_local_nat(self.nat)
        p.policy:set_local_mapped(self.mapped_ep ~= nil)
        self.peers[pk] = p
      end
      p.name = r.name
      self.by_name[r.name] = p
      self.by_id[p.id] = p
      self.busy = true
      p.endpoint = r.endpoint
      p.overlay_ip = r.overlay_ip
      -- the record's candidates, when they changed since the record we
      -- saw last (a signal from the peer may have brought newer ones)
      local c = r.candidates and cand.sanitize(r.candidates) or nil
      local sk = c and set_key(c) or ""
      if sk ~= p.record_key or p.key_b64 == nil then
        p.record_key = sk
        self:_apply_candidates(p, c, now)
      end
    end
  end
  for pk, p in pairs(self.peers) do
    if not seen[pk] then
      self.peers[pk] = nil
      if self.by_name[p.name] == p then self.by_name[p.name] = nil end
      if self.by_id[p.id] == p then self.by_id[p.id] = nil end
      self.prober:set_key(p.id, nil)
      self.book:forget(p.id)
    end
  end
  for name, exp in pairs(self.pending_punch or {}) do
    local p = self.by_name[name]
    if now >= exp then
      self.pending_punch[name] = nil
    elseif p and p.has_key then
      self:on_punch(name)
    end
  end
end

local function srflx_of(c)
  local l = {}
  for _, e in ipairs(c and c.list or {}) do
    if e.type == "srflx" then l[#l + 1] = e.endpoint end
  end
  return table.concat(l, " ")
end

-- A peer's candidate set (from its record or from its signal).
function Agent:_apply_candidates(p, c, now)
  local moved = p.cands ~= nil and c ~= nil and srflx_of(p.cands) ~= "" and srflx_of(c) ~= srflx_of(p.cands)
  p.cands = c
  -- the pair key, when the peer's punch key changed
  local key_b64 = c and c.key
  if key_b64 ~= p.key_b64 then
    p.key_b64 = key_b64
    local key
    local peer_pub = key_b64 and core.key_from_base64(key_b64)
    if peer_pub then
      key = punch.pair_key(self.punch_private, self.punch_public, peer_pub, self.self_id, p.id)
    end
    self.prober:set_key(p.id, key)
    p.has_key = key ~= nil
    -- a new punch key: the peer (re)started; try again now
    if key then p.policy:restart(now) end
  end
  self:_set_remote(p)
  if moved then
    p.policy:addresses_changed(now)
    -- a punch running with the old addresses probes the new ones too
    if p.has_key and self.prober:active(p.id) then send_all(self, self.prober:start(p.id, self:_targets(p)) or {}) end
  end
  local relay = c and cand.find(c.list, "relay")
  local relay_ep = relay and relay.endpoint
  if relay_ep ~= p.relay_ep then
    p.relay_ep = relay_ep
    p.channel = nil
    p.policy:set_relay(nil)
    self:_bind(p)
  end
end

-- ---------------------------------------------------------------------
-- signals (wgoverlay.nat.signal)
-- ---------------------------------------------------------------------

-- Whether we have a working path to `q` now (its policy is up and it
-- answered within dead_after).
function Agent:_reachable(q, now)
  local pol = q.policy
  return pol.phase == "up" and pol.alive_at ~= nil and now - pol.alive_at < self.settings.dead_after
end

-- Sends our candidates to `p` with `flags`: to its overlay address, and
-- through up to SIGNAL_VIA members we reach (the most recently alive).
function Agent:_signal(p, flags, now, answer)
  if not self.send_signal_fn or not p.overlay_ip then return end
  local key = self.prober.keys[p.id]
  if not key then return end
  -- (a gap per kind: a go to punch is not held back by a plain update)
  p.signalled_at = p.signalled_at or {}
  if not answer and p.signalled_at[flags] and now - p.signalled_at[flags] < M.SIGNAL_GAP then return end
  p.signalled_at[flags] = now
  local bytes = signal.encode({ sender = self.self_id, receiver = p.id, seq = self.book:next(p.id, key),
                                flags = flags, body = self:candidate_set() }, key)
  if not bytes then return end
  self.send_signal_fn(p.overlay_ip, bytes)
  local via = {}
  for _, q in pairs(self.peers) do
    if q ~= p and q.overlay_ip and self:_reachable(q, now) then via[#via + 1] = q end
  end
  table.sort(via, function(x, y) return x.policy.alive_at > y.policy.alive_at end)
  for i = 1, math.min(#via, M.SIGNAL_VIA) do self.send_signal_fn(via[i].overlay_ip, bytes) end
  self.stats.signals_sent = self.stats.signals_sent + 1
end

function Agent:_signal_refused(why, from)
  self.stats.signals_refused = self.stats.signals_refused + 1
  if self.refused_logged < 20 then
    self.refused_logged = self.refused_logged + 1
    self.log("signal from %s refused: %s", tostring(from), why)
  end
end

--- A datagram that arrived on the signal port (from `from_ip`, an overlay
-- address): ours is taken, one for another member is forwarded once.
function Agent:on_signal(from_ip, bytes)
  local msg, err = signal.decode(bytes)
  if not msg then return self:_signal_refused(err, from_ip) end
  local now = self.clock()
  if msg.receiver ~= self.self_id then
    local to = self.by_id[msg.receiver]
    if msg.hops < 1 or not to or not to.overlay_ip or not self.send_signal_fn then
      return self:_signal_refused("not for us, not forwarded", from_ip)
    end
    local f = self.forwards
    if now - f.at >= 1 then f.at, f.n = now, 0 end
    if f.n >= M.FORWARD_RATE then return self:_signal_refused("forwarding rate exceeded", from_ip) end
    f.n = f.n + 1
    self.stats.signals_forwarded = self.stats.signals_forwarded + 1
    return self.send_signal_fn(to.overlay_ip, signal.forwarded(bytes))
  end
  local p = self.by_id[msg.sender]
  local key = p and self.prober.keys[p.id]
  if not key then return self:_signal_refused("unknown sender", from_ip) end
  local ok, why = self.book:accept(msg, p.id, key)
  if not ok then
    -- the same signal through several members: only the first counts
    if why ~= "replayed or out of order" then self:_signal_refused(why, from_ip) end
    return
  end
  local okj, body = pcall(cjson.decode, msg.body)
  local c = okj and type(body) == "table" and cand.sanitize(body) or nil
  if not c or c.key ~= p.key_b64 then return self:_signal_refused("bad candidate set", from_ip) end
  self.stats.signals_taken = self.stats.signals_taken + 1
  if set_key(c) ~= set_key(p.cands or { list = {} }) then
    self.log("signal from %s: new candidates", p.name)
    self:_apply_candidates(p, c, now)
  end
  self.busy = true
  if msg.flags & signal.ANSWER ~= 0 then self:_signal(p, msg.flags & signal.PUNCH, now, true) end
  if msg.flags & signal.PUNCH ~= 0 then self:on_punch(p.name) end
end

function Agent:_policy_opts(now)
  local o = { clock = self.clock, now = now }
  for k, v in pairs(self.settings) do o[k] = v end
  return o
end

function Agent:_targets(p)
  return cand.probe_targets(p.cands and p.cands.list or {}, { p.endpoint })
end

-- The peer's IPv6 host candidates, when we have global IPv6 addresses too
-- (a direct IPv6 path may exist); else an empty list.
function Agent:_v6_targets(p)
  local out = {}
  if #self.v6_hosts == 0 then return out end
  for _, c in ipairs(p.cands and p.cands.list or {}) do
    if c.type == "host" and c.family == 6 then out[#out + 1] = c.endpoint end
  end
  return out
end

function Agent:_set_remote(p)
  local c = p.cands
  local hosts = {}
  for _, e in ipairs(c and c.list or {}) do
    if e.type == "host" then hosts[#hosts + 1] = e.endpoint end
  end
  p.policy:set_remote({ endpoint = p.endpoint, nat = c and c.nat or "unknown", hosts = hosts,
                        v6 = #self:_v6_targets(p) > 0, punchable = p.has_key and #self:_targets(p) > 0,
                        mapped = c and cand.endpoints_of(c.list, "mapped") or {} })
end

M.PUNCH_PENDING = 5       -- s a go for a peer whose punch key we lack yet is kept

--- The leader's go for a coordinated punch with `name`.  When the peer
-- (or its punch key) is not known here yet, the go is kept for a few
-- seconds and acted upon as soon as it is.
-- @return true when probing started
function Agent:on_punch(name)
  local p = self.by_name[name]
  if not p or not p.has_key then
    self.pending_punch = self.pending_punch or {}
    self.pending_punch[name] = self.clock() + M.PUNCH_PENDING
    return false
  end
  if self.pending_punch then self.pending_punch[name] = nil end
  local targets = self:_targets(p)
  -- IPv6 host candidates alone first; the rest after V6_HEAD_START
  local v6 = self:_v6_targets(p)
  p.v6_rest = nil
  if #v6 > 0 then
    p.v6_rest = { targets = targets, at = self.clock() + M.V6_HEAD_START }
    targets = v6
  end
  local out = self.prober:start(p.id, targets)
  if not out then return false end
  self.log("punch with %s: probing %s", name, table.concat(targets, " "))
  send_all(self, out)
  p.policy:punch_started(self.clock())
  self.busy = true
  return true
end

function Agent:_punch_results(results)
  for _, r in ipairs(results) do
    local pk = core.key_to_base64(r.peer)
    local p = self.peers[pk]
    if p then
      self.log("punch with %s: %s", p.name, r.endpoint and ("answered at " .. r.endpoint) or "no answer")
      p.policy:punch_result(r.endpoint, self.clock())
      self.busy = true
    end
  end
end

--- A datagram event of the WireGuard port (not a WireGuard message).
-- @return true when the agent used it
function Agent:on_datagram(ev)
  local data, from = ev.data, ev.from
  if type(data) ~= "string" or type(from) ~= "string" then return false end
  if ev.relay_channel then return false end -- only WireGuard goes through the relay
  if punch.is_punch(data) then
    local out, results, why = self.prober:input(from, data)
    if why and self.refused_logged < 20 then
      self.refused_logged = self.refused_logged + 1
      self.log("punch message from %s refused: %s", from, why)
    end
    send_all(self, out)
    self:_punch_results(results)
    return true
  end
  local b1 = data:byte(1)
  if self.turn and (stun.is_stun(data) or (b1 and b1 >= 0x40 and b1 <= 0x4F)) then
    if self.turn:input(from, data) then return true end
  end
  if not stun.is_stun(data) then return false end
  local msg = stun.decode(data)
  if not msg then
    self.stats.stun_ignored = self.stats.stun_ignored + 1
    return true
  end
  if msg.class == "request" and msg.method == stun.BINDING then
    local resp = stun.binding_response(msg, from, nil, { software = "wgoverlay" })
    if resp then
      self.stats.stun_answered = self.stats.stun_answered + 1
      self.t:send_datagram(from, resp)
    end
    return true
  end
  local m, req = self.matcher:match(from, data)
  if m and self.round and m.class == "success" then
    local x = m.attrs["XOR-MAPPED-ADDRESS"] or m.attrs["MAPPED-ADDRESS"]
    if x then self.round.answers[req.server] = endpoint.format(x) end
  else
    self.stats.stun_ignored = self.stats.stun_ignored + 1
  end
  return true
end

local function alive_time(p, h)
  local t = nil
  if p.last_handshake and p.last_handshake > 0 then t = p.last_handshake_precise end
  if h and h.last_reply_at and (not t or h.last_reply_at > t) then t = h.last_reply_at end
  return t
end

--- Periodic work: STUN rounds, TURN timers, probes, the policies.
-- @tparam table health public key -> `{ last_reply_at }` (answered health
--   probes through the tunnel, epoch seconds)
function Agent:tick(health)
  local now = self.clock()
  self:_stun_round(now)
  self:_portmap_tick(now)
  if self.turn then self.turn:tick(now) end
  if self.turn_conf and self.realloc_at and now >= self.realloc_at then self:_allocate() end
  self:_refresh_hosts(now)
  self:_maybe_publish(now)
  self:_v6_head_start(now)
  local out, results = self.prober:tick(now)
  send_all(self, out)
  self:_punch_results(results)

  -- every tick while something is being tried, else once a second
  if not self.busy and self.full_at and now - self.full_at < 1 then return end
  self.full_at = now
  local busy = next(self.prober.sessions) ~= nil
  local st = self.t:status()
  for _, sp in ipairs(st.peers) do
    local p = self.peers[sp.public_key]
    if p then
      local pol = p.policy
      if sp.endpoint then pol:observe(sp.endpoint, sp.relay_channel, now) end
      pol:alive(alive_time(sp, health and health[sp.public_key]))
      local before, was_up = pol.connection, pol.phase == "up"
      for _, a in ipairs(pol:tick(now)) do self:_act(p, a, sp, now) end
      if os.getenv("WGO_NAT_DEBUG") and pol.phase ~= p.last_phase then
        self.log("%.3f peer %s phase %s (%s) nat %s/%s", now, p.name, pol.phase, pol.connection, pol.local_nat,
          pol.remote_nat)
        p.last_phase = pol.phase
      end
      if was_up and pol.phase ~= "up" and not pol.upgrading then
        -- a path died: perhaps our NAT mapping or addresses changed (or
        -- the router forgot our port mapping); ask STUN and the router
        -- and read the addresses now, and swap candidates with the peer
        -- over any other path (its NAT may have moved, and the registry
        -- may not be there to tell us)
        self.next_stun = math.min(self.next_stun, now)
        self.next_hosts = math.min(self.next_hosts, now)
        if self.portmap then self.portmap:refresh(now) end
        self:_signal(p, signal.ANSWER, now)
      end
      if pol.connection ~= before then
        self.log("peer %s: connection %s (was %s)", p.name, pol.connection, before)
        self.event("connection", { peer = p.name, connection = pol.connection, previous = before })
      end
      if pol.phase ~= "up" then busy = true end
    end
  end
  self.busy = busy
end

-- A punch's IPv6 head start is over: the session probes every candidate.
function Agent:_v6_head_start(now)
  for _, p in pairs(self.peers) do
    local r = p.v6_rest
    if r and now >= r.at then
      p.v6_rest = nil
      if self.prober:active(p.id) then
        self.log("punch with %s: no IPv6 answer yet, probing %s too", p.name, table.concat(r.targets, " "))
        send_all(self, self.prober:start(p.id, r.targets, now) or {})
      end
    end
  end
end

-- Starts a handshake, at most one a second per peer: WireGuard refuses a
-- second initiation within 20 ms (flood protection), and a new initiation
-- voids the answer to the previous one.
function Agent:_initiate(p, now)
  if p.initiated and now - p.initiated < 1 then return end
  p.initiated = now
  self.t:initiate_handshake(p.public_key)
end

function Agent:_act(p, a, sp, now)
  local t = self.t
  if a.type == "set_endpoint" then
    if sp.endpoint == a.endpoint and not sp.relay_channel then return self:_initiate(p, now) end
    local ok, err = t:set_peer_relay(p.public_key, a.endpoint, 0)
    if not ok then self.log("peer %s: cannot use %s: %s", p.name, a.endpoint, tostring(err)) end
    self:_initiate(p, now)
  elseif a.type == "use_relay" then
    if sp.endpoint == a.server and sp.relay_channel == a.channel then return end
    local ok, err = t:set_peer_relay(p.public_key, a.server, a.channel)
    if not ok then self.log("peer %s: cannot use the relay: %s", p.name, tostring(err)) end
    self:_initiate(p, now)
  elseif a.type == "handshake" then
    self:_initiate(p, now)
  elseif a.type == "request_punch" then
    self.request_punch_fn(p.name)
    self:_signal(p, signal.PUNCH | signal.ANSWER, now)
  end
end

--- Connection of a peer: `{ connection, connection_changed_at, phase }`
-- or nil.
function Agent:peer_status(public_key)
  local p = self.peers[public_key]
  if not p then return nil end
  local pol = p.policy
  return { connection = pol.connection, connection_changed_at = pol.changed_at, phase = pol.phase }
end

--- This node's NAT view for status.
function Agent:self_status()
  local relay
  if self.turn_conf then
    relay = { server = self.turn_conf.server, state = self.turn and self.turn.state or "failed",
              relayed = self.relayed, error = self.turn_error }
  end
  local c = self:candidate_set()
  local stats = {}
  for k, v in pairs(self.stats) do stats[k] = v end
  for k, v in pairs(self.prober.stats) do stats["punch_" .. k] = v end
  return { nat = self.nat, candidates = c.list, stun = self.mapped, relay = relay, stats = stats,
           portmap = self.portmap and self.portmap:status() or nil }
end

--- Releases the TURN allocation and deletes the port mapping.
function Agent:stop()
  self.stopping = true
  if self.turn then self.turn:close() end
  if self.portmap then self.portmap:stop() end
end

return M
