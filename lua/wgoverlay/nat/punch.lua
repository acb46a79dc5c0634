--- Hole punching: authenticated probes on the WireGuard socket, and the
-- prober that finds which of a peer's candidate addresses answers.  Pure:
-- no sockets (it returns the datagrams to send), time from an injected
-- clock, randomness from an injected function.
--
-- ## Keys
--
-- Each node makes a fresh X25519 key pair when its daemon starts (the
-- "punch key"; never the WireGuard static key, which stays in the engine)
-- and publishes the public half in its member record (`candidates.key`).
-- Member records travel only over the membership sessions, which run
-- inside WireGuard to the leader and are authenticated by cryptokey
-- routing, so the public key of a peer is the one that peer published.
-- Both ends of a pair derive the same 32-byte pair key:
--
--    K = BLAKE2s(key = "wgo-punch-v1",
--                X25519(own private, peer public) || id_lo || id_hi || pub_lo || pub_hi)
--
-- where `id` are the two WireGuard public keys (raw 32 bytes) sorted
-- bytewise and `pub` the punch public keys in the same order.
--
-- ## Messages (109 bytes, never a WireGuard type 1-4, STUN, TURN
-- ChannelData or a join datagram)
--
--    "WGN2" | kind (1 = probe, 2 = ack) | sender id (32) | receiver id (32)
--    | nonce (12) | echo (12: the probe's nonce in an ack, zeros in a probe)
--    | MAC (16) = BLAKE2s(key = K, outlen 16, all the bytes before it)
--
-- ## Freshness without clocks (challenge-response)
--
-- Nothing in a message is a time: the two clocks may disagree by any
-- amount.  Freshness comes from the nonces: an ack counts only if it
-- echoes a nonce *we* chose at random for a probe of a running session
-- (and each such nonce counts once), so an ack recorded earlier can never
-- confirm anything now.  A probe, on the other hand, is only ever answered
-- (with an ack of the same size, to its source) and never moves anything
-- by itself, so a replayed probe gains an attacker nothing but that ack;
-- a cache of the (sender, nonce) pairs seen in the last `replay_memory`
-- seconds (at most `replay_max` entries) answers each only once.
--
-- A message is accepted only if it is addressed to us, its sender is a
-- peer we hold a key for, the MAC verifies (constant-time compare) and its
-- (sender, nonce) was not seen recently.  An ack is accepted only if it
-- echoes a nonce we sent in a running session, and only from the address
-- that probe went to: a replayed or reflected ack from anywhere else
-- confirms nothing.  A valid probe is answered with an ack to
-- its source; during a session it also triggers our own probe to that
-- source (a peer-reflexive candidate), which must itself be acked before
-- it counts.  A forged or replayed probe therefore never moves a peer's
-- endpoint: only an ack made with the pair key, to a nonce we just sent to
-- that very address, does.
--
-- ## Low-TTL first probes (plain Linux NATs)
--
-- A Linux box doing `masquerade` without an input filter records an
-- unsolicited probe from the peer as a flow to itself; the mapping it
-- makes next for its own node towards the same address must then take
-- another port, and the punch fails.  So the first probes of a session
-- (for `low_ttl_time` seconds) go out with a TTL / hop limit of
-- `low_ttl`: enough to open our own NAT's mapping towards the peer, too
-- little to reach the peer's NAT.  By the time full probes are sent the
-- peer's side has opened its mapping towards us the same way, and each
-- side's probes arrive as answers to a mapping that exists.
-- A target added to a running session (new candidates, the rest after an
-- IPv6 head start) gets its own `low_ttl_time` from when it was added.
-- Probes to a peer-reflexive address (the peer's probe already came
-- through) and acks always go with the full TTL.
-- @module wgoverlay.nat.punch
local core = require "wgoverlay.core"
local stun = require "wgoverlay.nat.stun"
local endpoint = require "wgoverlay.endpoint"

local M = {}

M.MAGIC = "WGN2"
M.PROBE, M.ACK = 1, 2
M.SIZE = 109
local SIGNED = M.SIZE - 16
local ZERO12 = string.rep("\0", 12)
local KDF_KEY = "wgo-punch-v1"

--- Defaults (seconds, and a TTL).
M.REPLAY_MEMORY = 120
M.REPLAY_MAX = 4096
M.LOW_TTL = 2
M.LOW_TTL_TIME = 1
M.INTERVAL = 0.25
M.TIMEOUT = 6
M.MAX_TARGETS = 8

--- True when `bytes` looks like a punch message (magic and size).
function M.is_punch(bytes)
  return type(bytes) == "string" and #bytes == M.SIZE and bytes:sub(1, 4) == M.MAGIC
end

local function sorted_ids(a, b)
  if a < b then return a, b, true end
  return b, a, false
end

--- The pair key two nodes share.
-- @string own_private our punch private key (raw 32)
-- @string own_public our punch public key (raw 32)
-- @string peer_public the peer's punch public key (raw 32)
-- @string own_id our WireGuard public key (raw 32)
-- @string peer_id the peer's WireGuard public key (raw 32)
-- @return 32-byte key, or nil and a message
function M.pair_key(own_private, own_public, peer_public, own_id, peer_id)
  for _, v in ipairs({ own_private, own_public, peer_public, own_id, peer_id }) do
    if type(v) ~= "string" or #v ~= 32 then return nil, "punch.pair_key: keys and ids must be 32 bytes" end
  end
  if own_id == peer_id then return nil, "punch.pair_key: a node has no pair key with itself" end
  local shared, err = core.x25519(own_private, peer_public)
  if not shared then return nil, err end
  local lo, hi, own_first = sorted_ids(own_id, peer_id)
  local plo, phi = own_public, peer_public
  if not own_first then plo, phi = peer_public, own_public end
  return core.blake2s(shared .. lo .. hi .. plo .. phi, KDF_KEY, 32)
end

--- Encodes a message.
-- @tparam table m `kind` (PROBE or ACK), `sender`, `receiver` (raw 32),
--   `nonce` (12 bytes), `echo` (12 bytes, acks)
-- @string key the pair key
-- @return bytes
function M.encode(m, key)
  assert(m.kind == M.PROBE or m.kind == M.ACK, "punch.encode: bad kind")
  assert(#m.sender == 32 and #m.receiver == 32, "punch.encode: ids must be 32 bytes")
  assert(#m.nonce == 12, "punch.encode: nonce must be 12 bytes")
  local echo = m.echo or ZERO12
  assert(#echo == 12, "punch.encode: echo must be 12 bytes")
  local body = M.MAGIC .. string.char(m.kind) .. m.sender .. m.receiver .. m.nonce .. echo
  return body .. core.blake2s(body, key, 16)
end

--- Decodes a message without checking it.
-- @return `{ kind, sender, receiver, nonce, echo, mac, signed }`, or nil
--   and a message
function M.decode(bytes)
  if not M.is_punch(bytes) then return nil, "not a punch message" end
  local kind = bytes:byte(5)
  if kind ~= M.PROBE and kind ~= M.ACK then return nil, "unknown punch message kind" end
  return { kind = kind, sender = bytes:sub(6, 37), receiver = bytes:sub(38, 69), nonce = bytes:sub(70, 81),
           echo = bytes:sub(82, 93), mac = bytes:sub(94, 109), signed = bytes:sub(1, SIGNED) }
end

--- Checks a decoded message's MAC with `key`.
function M.verify_mac(msg, key)
  return core.equal(core.blake2s(msg.signed, key, 16), msg.mac)
end

-- ---------------------------------------------------------------------
-- The prober
-- ---------------------------------------------------------------------

local Prober = {}
Prober.__index = Prober

--- Creates a prober.
-- @tparam table opts `self_id` (our WireGuard public key, raw 32,
--   required), `clock` (seconds, required), `random` (function(n) -> n
--   bytes; default core.random), `interval` (between probe rounds,
--   default 0.25 s), `timeout` (session length, default 6 s),
--   `max_targets` (default 8), `low_ttl` (TTL of the first probes, default
--   2; false: none), `low_ttl_time` (how long they are sent, default 1 s),
--   `replay_memory` (s, default 120), `replay_max` (default 4096)
function M.new(opts)
  assert(type(opts) == "table" and type(opts.self_id) == "string" and #opts.self_id == 32,
    "punch.new: self_id (32 bytes) required")
  assert(type(opts.clock) == "function", "punch.new: clock required")
  return setmetatable({
    self_id = opts.self_id,
    clock = opts.clock,
    random = opts.random or core.random,
    interval = opts.interval or M.INTERVAL,
    low_ttl = opts.low_ttl == nil and M.LOW_TTL or opts.low_ttl,
    low_ttl_time = opts.low_ttl_time or M.LOW_TTL_TIME,
    replay_memory = opts.replay_memory or M.REPLAY_MEMORY,
    replay_max = opts.replay_max or M.REPLAY_MAX,
    nseen = 0,
    timeout = opts.timeout or M.TIMEOUT,
    max_targets = opts.max_targets or M.MAX_TARGETS,
    keys = {},       -- peer id -> pair key
    sessions = {},   -- peer id -> session
    seen = {},       -- sender .. nonce -> expiry
    stats = { probes = 0, acks = 0, probes_sent = 0, low_ttl_sent = 0, rejected = 0, replayed = 0, confirmed = 0 },
  }, Prober)
end

--- Sets (or, with nil, forgets) the pair key for a peer.
function Prober:set_key(peer_id, key)
  self.keys[peer_id] = key
  if not key then self.sessions[peer_id] = nil end
end

local function add_target(s, ep, max, now)
  local n = endpoint.normalize(ep)
  if not n or s.targets[n] then return false end
  if #s.order >= max then return false end
  s.targets[n] = true
  s.added[n] = now
  s.order[#s.order + 1] = n
  return n
end

-- `full`: never with the low TTL (a peer-reflexive address).
function Prober:_probe(s, to, now, out, full)
  local nonce = self.random(12)
  s.sent[nonce] = to
  self.stats.probes_sent = self.stats.probes_sent + 1
  local ttl
  if not full and self.low_ttl and not s.reflexive[to] and now - s.added[to] < self.low_ttl_time then
    ttl = self.low_ttl
    self.stats.low_ttl_sent = self.stats.low_ttl_sent + 1
  end
  out[#out + 1] = { to = to, ttl = ttl, bytes = M.encode({ kind = M.PROBE, sender = self.self_id, receiver = s.peer,
                                                           nonce = nonce }, self.keys[s.peer]) }
end

--- Starts (or extends) a session with a peer: every `interval` a probe
-- goes to each target until one acks or `timeout` passes.
-- @string peer_id
-- @tparam table targets list of "IP:PORT"
-- @return list of datagrams to send now (`{ to, bytes, ttl }`: ttl nil for
--   the default), or nil and a message (no key for that peer)
function Prober:start(peer_id, targets, now)
  if not self.keys[peer_id] then return nil, "no punch key for that peer" end
  now = now or self.clock()
  local s = self.sessions[peer_id]
  if not s then
    s = { peer = peer_id, targets = {}, added = {}, order = {}, sent = {}, reflexive = {}, started = now }
    self.sessions[peer_id] = s
  end
  s.deadline = now + self.timeout
  for _, ep in ipairs(targets) do add_target(s, ep, self.max_targets, now) end
  local out = {}
  for _, to in ipairs(s.order) do self:_probe(s, to, now, out) end
  s.next_at = now + self.interval
  return out
end

--- Whether a session with the peer is running.
function Prober:active(peer_id) return self.sessions[peer_id] ~= nil end

--- Stops a session (no result is reported).
function Prober:stop(peer_id) self.sessions[peer_id] = nil end

function Prober:_reject(why)
  self.stats.rejected = self.stats.rejected + 1
  return {}, {}, why
end

--- Feeds a datagram that arrived on the WireGuard socket from `from`.
-- @return datagrams to send (`{ to, bytes }`), results (`{ peer, endpoint
--   }` for a confirmed address), and a reason when the message was
--   refused (nil when it was used)
function Prober:input(from, bytes, now)
  now = now or self.clock()
  local msg, err = M.decode(bytes)
  if not msg then return self:_reject(err) end
  local src = endpoint.normalize(from)
  if not src then return self:_reject("bad source address") end
  if msg.receiver ~= self.self_id then return self:_reject("not addressed to us") end
  local key = self.keys[msg.sender]
  if not key then return self:_reject("unknown sender") end
  if not M.verify_mac(msg, key) then return self:_reject("bad MAC") end
  local tag = msg.sender .. msg.nonce
  if self.seen[tag] then
    self.stats.replayed = self.stats.replayed + 1
    return self:_reject("replayed")
  end
  if self.nseen >= self.replay_max then self:_expire_seen(now, true) end
  self.seen[tag] = now + self.replay_memory
  self.nseen = self.nseen + 1
  local out, results = {}, {}
  local s = self.sessions[msg.sender]
  if msg.kind == M.PROBE then
    self.stats.probes = self.stats.probes + 1
    out[1] = { to = src, bytes = M.encode({ kind = M.ACK, sender = self.self_id, receiver = msg.sender,
                                            nonce = self.random(12), echo = msg.nonce }, key) }
    if s and add_target(s, src, self.max_targets + 4, now) then
      s.reflexive[src] = true
      self:_probe(s, src, now, out, true) -- triggered check of a peer-reflexive address
    end
    return out, results
  end
  -- an ack
  local to = s and s.sent[msg.echo]
  if not to then return self:_reject("ack to no probe of a running session") end
  if to ~= src then return self:_reject("ack from another address than the probe went to") end
  s.sent[msg.echo] = nil
  self.stats.acks = self.stats.acks + 1
  self.stats.confirmed = self.stats.confirmed + 1
  self.sessions[msg.sender] = nil
  results[1] = { peer = msg.sender, endpoint = src, rtt = nil }
  return out, results
end

--- Runs what is due: probe rounds and session time-outs.
-- @return datagrams to send, results (`{ peer, endpoint = nil }` for a
--   session that timed out), and the next deadline (or nil)
function Prober:tick(now)
  now = now or self.clock()
  local out, results, next_at = {}, {}, nil
  for peer, s in pairs(self.sessions) do
    if now >= s.deadline then
      self.sessions[peer] = nil
      results[#results + 1] = { peer = peer, endpoint = nil }
    else
      if now >= s.next_at then
        for _, to in ipairs(s.order) do self:_probe(s, to, now, out) end
        s.next_at = now + self.interval
      end
      next_at = math.min(next_at or math.huge, s.next_at, s.deadline)
    end
  end
  self:_expire_seen(now)
  return out, results, next_at
end

-- Forgets the replay cache's expired entries (`full`: the cache is full,
-- so the oldest half goes as well).
function Prober:_expire_seen(now, full)
  local cut = now
  if full then
    local exps = {}
    for _, exp in pairs(self.seen) do exps[#exps + 1] = exp end
    table.sort(exps)
    cut = math.max(now, exps[#exps // 2] or now)
  end
  local n = 0
  for tag, exp in pairs(self.seen) do
    if exp <= cut then self.seen[tag] = nil else n = n + 1 end
  end
  self.nseen = n
end

return M
