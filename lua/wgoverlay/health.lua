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
-- Pure: the daemon supplies sockets, clock and randomness.
-- @module wgoverlay.health
local M = {}

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

return M
