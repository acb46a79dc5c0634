--- Punch signalling between two nodes without the registry: candidate
-- sets and "punch now" sent over the overlay (UDP 7948 on the nodes'
-- overlay addresses, so inside WireGuard), directly when the two still
-- have a path, else through other members that have one to each (one
-- forwarding hop).  Pure codec and bookkeeping; the daemon owns the socket.
--
-- Why: the registry (the embedded leader) may be down exactly when two
-- nodes lose their path (both NATs moved to other public ports): each
-- side's new candidates and the go to punch must reach the other by some
-- path that still works, and any member that both can reach is one.
--
-- ## Message
--
--    "WGS1" | hops (1) | sender id (32) | receiver id (32) | seq (uint64,
--    big-endian) | flags (1: 1 = punch now, 2 = answer with yours)
--    | body length (2) | body (JSON: the sender's candidate set, as it
--    publishes it) | MAC (16)
--
-- MAC = BLAKE2s(key = the pair's punch key (wgoverlay.nat.punch), outlen
-- 16, every byte before it except `hops`), so a forwarding member can
-- lower `hops` but can neither forge, alter nor redirect a message.  The
-- receiver takes a message only when the MAC verifies and `seq` is higher
-- than the last one it took from that sender under that pair key (a
-- counter from 1 per daemon start: a restarted daemon has a new punch key,
-- so a new pair key).  No clock is involved.
-- @module wgoverlay.nat.signal
local core = require "wgoverlay.core"
local cjson = require "cjson"

local M = {}

M.PORT = 7948
M.MAGIC = "WGS1"
M.PUNCH, M.ANSWER = 1, 2
M.MAX_BODY = 1200
M.HOPS = 1
local HEADER = 4 + 1 + 32 + 32 + 8 + 1 + 2

--- Encodes a message.
-- @tparam table m `sender`, `receiver` (raw 32-byte WireGuard public
--   keys), `seq` (integer >= 1), `flags`, `body` (a table: JSON-encoded),
--   `hops` (default M.HOPS)
-- @string key the pair key
-- @return bytes, or nil and a message
function M.encode(m, key)
  local body = cjson.encode(m.body or {})
  if #body > M.MAX_BODY then return nil, "signal body too long" end
  local after_hops = m.sender .. m.receiver .. string.pack(">I8B>I2", m.seq, m.flags or 0, #body) .. body
  local mac = core.blake2s(M.MAGIC .. after_hops, key, 16)
  return M.MAGIC .. string.char(m.hops or M.HOPS) .. after_hops .. mac
end

--- Decodes a message without checking its MAC.
-- @return `{ hops, sender, receiver, seq, flags, body (string), mac,
--   signed }`, or nil and a message
function M.decode(bytes)
  if type(bytes) ~= "string" or #bytes < HEADER + 16 or bytes:sub(1, 4) ~= M.MAGIC then
    return nil, "not a signal message"
  end
  local seq, flags, len = string.unpack(">I8B>I2", bytes, 70)
  if #bytes ~= HEADER + len + 16 then return nil, "signal message length mismatch" end
  return { hops = bytes:byte(5), sender = bytes:sub(6, 37), receiver = bytes:sub(38, 69), seq = seq, flags = flags,
           body = bytes:sub(HEADER + 1, HEADER + len), mac = bytes:sub(-16),
           signed = M.MAGIC .. bytes:sub(6, HEADER + len) }
end

--- The same message with one hop less (for forwarding), or nil when it
-- has none left.
function M.forwarded(bytes)
  local hops = bytes:byte(5)
  if not hops or hops < 1 then return nil end
  return bytes:sub(1, 4) .. string.char(hops - 1) .. bytes:sub(6)
end

local Book = {}
Book.__index = Book

--- Per-pair sequence numbers: what we sent, the last we took.
function M.book() return setmetatable({ out = {}, last_in = {} }, Book) end

--- The next sequence number towards `peer` under `key`.
function Book:next(peer, key)
  local o = self.out[peer]
  if not o or o.key ~= key then
    o = { key = key, seq = 0 }
    self.out[peer] = o
  end
  o.seq = o.seq + 1
  return o.seq
end

--- Checks a decoded message from `peer` with `key`; records its seq.
-- @return true, or nil and the reason it is refused
function Book:accept(msg, peer, key)
  if not core.equal(core.blake2s(msg.signed, key, 16), msg.mac) then return nil, "bad MAC" end
  local l = self.last_in[peer]
  if l and l.key == key and msg.seq <= l.seq then return nil, "replayed or out of order" end
  self.last_in[peer] = { key = key, seq = msg.seq }
  return true
end

function Book:forget(peer)
  self.out[peer], self.last_in[peer] = nil, nil
end

return M
