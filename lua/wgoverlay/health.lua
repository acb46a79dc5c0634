--- Authenticated health probes (UDP 7947 on the overlay addresses).
--
-- A probe is `WGP2` and a fresh 16-byte random nonce, sent through the
-- WireGuard tunnel to the peer's overlay address; the peer echoes the
-- nonce as `WGR2 || nonce` to the probe's source.  A reply counts only
--
-- * when its nonce is one we sent to that peer and have not seen answered
--   (each nonce is accepted once; a peer keeps at most `OUTSTANDING`
--   nonces, older ones expire), and
-- * when it comes from that peer's overlay address.
--
-- The nonce crosses the underlay only encrypted, so nobody but the peer
-- learns it: a forged or replayed reply (from a container, from another
-- host on the overlay, with a spoofed source) changes nothing, and is
-- counted.  Replies are the size of the probe (no amplification).
--
-- `tracker` is pure (the caller supplies clock and randomness); `service`
-- runs the responder and the prober on a node's overlay address (luv).
-- @module wgoverlay.health
local M = {}

M.PORT = 7947
M.INTERVAL = 2        -- seconds between probes
M.TIMEOUT = 6         -- a peer is unhealthy without a probe answer for this long
M.HANDSHAKE_MAX = 180 -- ... or without a handshake for this long (REJECT_AFTER_TIME)

M.PROBE = "WGP2"
M.REPLY = "WGR2"
M.NONCE = 16
M.OUTSTANDING = 4   -- probes in flight per peer (2 s apart: 8 s of answers)

--- The answer to a datagram received on the health port, or nil when it
-- is not a probe (replies are never answered).
function M.answer(data)
  if #data == 4 + M.NONCE and data:sub(1, 4) == M.PROBE then return M.REPLY .. data:sub(5) end
end

function M.is_reply(data) return data:sub(1, 4) == M.REPLY end

local Tracker = {}
Tracker.__index = Tracker

--- @tparam table opts `random(n)` -> n random bytes, `clock()` -> seconds
function M.tracker(opts)
  return setmetatable({ random = assert(opts.random), clock = assert(opts.clock), by_nonce = {}, by_peer = {},
                        stats = { accepted = 0, refused = 0 } }, Tracker)
end

--- A new probe for peer `key` at overlay address `ip`: returns the datagram.
function Tracker:probe(key, ip)
  local nonce = self.random(M.NONCE)
  local list = self.by_peer[key] or {}
  self.by_peer[key] = list
  list[#list + 1] = nonce
  if #list > M.OUTSTANDING then self.by_nonce[table.remove(list, 1)] = nil end
  self.by_nonce[nonce] = { key = key, ip = ip, sent = self.clock() }
  return M.PROBE .. nonce
end

--- A reply from `ip`: returns the peer's key and the round trip in
-- seconds, or nil and why it was refused.
function Tracker:on_reply(data, ip)
  if #data ~= 4 + M.NONCE or data:sub(1, 4) ~= M.REPLY then
    self.stats.refused = self.stats.refused + 1
    return nil, "malformed"
  end
  local nonce = data:sub(5)
  local p = self.by_nonce[nonce]
  if not p then
    self.stats.refused = self.stats.refused + 1
    return nil, "unknown or already answered nonce"
  end
  if p.ip ~= ip then
    self.stats.refused = self.stats.refused + 1
    return nil, "from " .. tostring(ip) .. ", not the peer's address"
  end
  self.by_nonce[nonce] = nil
  local list = self.by_peer[p.key]
  for i, n in ipairs(list) do
    if n == nonce then table.remove(list, i) break end
  end
  self.stats.accepted = self.stats.accepted + 1
  return p.key, self.clock() - p.sent
end

--- Forgets a peer (removed from the cluster).
function Tracker:forget(key)
  for _, n in ipairs(self.by_peer[key] or {}) do self.by_nonce[n] = nil end
  self.by_peer[key] = nil
end

-- ---------------------------------------------------------------------
-- the service: responder and prober on the node's overlay address
-- ---------------------------------------------------------------------

local Service = {}
Service.__index = Service

--- Starts answering probes on `ip`:PORT and probing every peer of `t`
-- that is a member.  `peers` (public key -> `{ healthy, changed_at,
-- rtt_ms, last_reply, last_reply_at }`) is kept up to date; the NAT agent
-- reads it.
-- @tparam table o `ip`, `t` (transport), `members()` -> member records,
--   `peers` (the table above), `clock()` (epoch seconds, fractional),
--   `random(n)`, `log(fmt, ...)`, `event(kind, fields)`, `guard(where, fn)`
-- @return service, or nil and a message
function M.service(o)
  local uv = require "luv"
  local udp = uv.new_udp()
  local ok, err = udp:bind(o.ip, M.PORT)
  if not ok then
    udp:close()
    return nil, "health responder: " .. tostring(err)
  end
  local self = setmetatable({ o = o, udp = udp, peers = o.peers,
                              tracker = M.tracker({ random = o.random, clock = o.clock }) }, Service)
  udp:recv_start(o.guard("health socket", function(rerr, data, addr)
    if rerr or not data or not addr then return end
    local answer = M.answer(data)
    if answer then
      udp:send(answer, addr.ip, addr.port, function() end)
    elseif M.is_reply(data) then
      local pk, rtt = self.tracker:on_reply(data, addr.ip)
      local h = pk and self.peers[pk]
      if h then
        h.rtt_ms = rtt * 1000
        h.last_reply = os.time()
        h.last_reply_at = o.clock()
      end
    end
  end))
  self.timer = uv.new_timer()
  self.timer:start(500, M.INTERVAL * 1000, o.guard("health probes", function() self:probe_all() end))
  return self
end

--- Probes every member peer once and updates its health.
function Service:probe_all()
  local o, now = self.o, os.time()
  local bykey = {}
  for _, r in ipairs(o.members()) do bykey[r.public_key] = r end
  for _, p in ipairs(o.t:status().peers) do
    local r = bykey[p.public_key]
    if r then
      local h = self.peers[p.public_key] or { healthy = false }
      self.peers[p.public_key] = h
      self.udp:send(self.tracker:probe(p.public_key, r.overlay_ip), r.overlay_ip, M.PORT, function() end)
      local healthy = p.last_handshake > 0 and now - p.last_handshake < M.HANDSHAKE_MAX
                      and h.last_reply ~= nil and now - h.last_reply <= M.TIMEOUT
      if healthy ~= h.healthy then
        h.healthy = healthy
        h.changed_at = now
        o.log("peer %s is now %s", r.name, healthy and "healthy" or "unhealthy")
        o.event(healthy and "peer_healthy" or "peer_unhealthy", { peer = r.name })
      end
    end
  end
end

--- A peer left the cluster.
function Service:forget(key)
  self.peers[key] = nil
  self.tracker:forget(key)
end

--- Accepted and refused replies, for status.
function Service:stats() return self.tracker.stats end

function Service:stop()
  for _, h in ipairs({ self.timer, self.udp }) do
    if h and not h:is_closing() then h:close() end
  end
end

return M
