--- Leader key query: how a member that was down while the leader rotated
-- its WireGuard key (`rotate-key`) learns the new key.  Such a member
-- knows only the old key, which nothing answers any more, so it cannot
-- reach the leader over the overlay; it asks on the leader's WireGuard UDP
-- port instead, as joins do (same framing, `"WGO1" .. type .. JSON`).
--
-- * `KEY_REQ` (4): `{p = the member's WireGuard public key, n = nonce,
--   c = ciphertext}`, plaintext `{ts, ch = 16-byte challenge, pad}`,
--   padded so that the answer is never larger than the request.
-- * `KEY_RESP` (5): `{n, c}`, plaintext `{ch, public_key, endpoint}`
--   (the leader's current record).
--
--     key = BLAKE2s(X25519(member WireGuard private, leader control public),
--                   key = "wgo-leaderkey-v1")
--     KEY_REQ AD = "WGO1\4" .. p,  KEY_RESP AD = "WGO1\5" .. p
--
-- with XChaCha20-Poly1305 (random 24-byte nonces).  Only the leader (its
-- control private key, pinned in every member's node.json and never
-- rotated) and that member (its WireGuard private key, which the leader
-- knows by its public half in the member list) can make or open either
-- message: a forged answer cannot move a member to a key of the forger's
-- choosing, and an answer counts only with the challenge of the query it
-- answers.  The WireGuard key's other use is WireGuard itself; the label
-- and the control key (not a WireGuard key) keep the two apart.  A
-- replayed query gets the current key, sealed to that member: nothing new.
--
-- Pure (crypto through wgoverlay.core); never raises on network bytes.
-- @module wgoverlay.leaderkey
local core = require "wgoverlay.core"
local token = require "wgoverlay.token"
local cjson = require("cjson").new()

cjson.decode_max_depth(8)
cjson.decode_invalid_numbers(false)

local M = {}

M.MAGIC = "WGO1"
M.KEY_REQ = 4
M.KEY_RESP = 5
M.LABEL = "wgo-leaderkey-v1"
M.MAX_SKEW = 300      -- seconds between the member's and the leader's clocks
M.MAX_BODY = 1024
M.REQUEST_SIZE = 400  -- a query's size; answers are smaller
local NONCE, TAG, CHALLENGE = 24, 16, 16

local function frame(t, body)
  local json = cjson.encode(body):gsub("\\/", "/")
  return M.MAGIC .. string.char(t) .. json
end

--- The message type of a datagram (KEY_REQ, KEY_RESP), or nil.
function M.kind(bytes)
  if type(bytes) ~= "string" or #bytes < 6 or #bytes > #M.MAGIC + 1 + M.MAX_BODY
     or bytes:sub(1, #M.MAGIC) ~= M.MAGIC then
    return nil
  end
  local t = bytes:byte(#M.MAGIC + 1)
  if t == M.KEY_REQ or t == M.KEY_RESP then return t end
  return nil
end

local function body_of(bytes)
  local ok, body = pcall(cjson.decode, bytes:sub(#M.MAGIC + 2))
  if not ok or type(body) ~= "table" then return nil end
  return body
end

local function b64(body, field, len)
  local raw = type(body[field]) == "string" and token.base64_decode(body[field]) or nil
  if not raw or (len and #raw ~= len) then return nil end
  return raw
end

local function derive(shared) return core.blake2s(shared, M.LABEL) end

local function ad(t, pub_b64) return M.MAGIC .. string.char(t) .. pub_b64 end

local function seal(key, t, pub_b64, plain)
  local nonce = core.random(NONCE)
  return frame(t, { p = t == M.KEY_REQ and pub_b64 or nil, n = token.base64_encode(nonce),
                    c = token.base64_encode(core.aead_seal(key, nonce, cjson.encode(plain), ad(t, pub_b64))) })
end

local function open(key, t, pub_b64, body)
  local nonce, ct = b64(body, "n", NONCE), b64(body, "c")
  if not nonce or not ct or #ct < TAG then return nil end
  local pt = core.aead_open(key, nonce, ct, ad(t, pub_b64))
  if not pt then return nil end
  local ok, v = pcall(cjson.decode, pt)
  if not ok or type(v) ~= "table" then return nil end
  return v
end

--- Member side: a query.
-- @tparam string private_key the member's WireGuard private key (base64)
-- @tparam string public_key its public key (base64)
-- @tparam string control_public the leader's control key (base64)
-- @tparam[opt] integer now epoch seconds
-- @return datagram and the pending query `{key, challenge, public_key}`
--   (give it to `open_answer`), or nil and a message
function M.query(private_key, public_key, control_public, now)
  local priv, cpub = core.key_from_base64(private_key), core.key_from_base64(control_public)
  if not priv or not cpub then return nil, "bad key" end
  local shared = core.x25519(priv, cpub)
  if not shared then return nil, "bad leader control key" end
  local pending = { key = derive(shared), challenge = core.random(CHALLENGE), public_key = public_key }
  local plain = { ts = now or os.time(), ch = token.base64_encode(pending.challenge), pad = "" }
  local bytes = seal(pending.key, M.KEY_REQ, public_key, plain)
  plain.pad = string.rep("x", math.max(0, M.REQUEST_SIZE - #bytes))
  return seal(pending.key, M.KEY_REQ, public_key, plain), pending
end

--- Leader side: answers a query from a member.
-- @tparam string bytes datagram
-- @tparam table ctx `control_private` (raw 32 bytes), `is_member(pub)`
--   (true when the public key is a member's), `leader` (`{public_key,
--   endpoint}`: the answer), `now` (optional)
-- @return answer datagram (never larger than the query), or nil and why
--   it was dropped
function M.answer(bytes, ctx)
  if M.kind(bytes) ~= M.KEY_REQ then return nil, "not a key query" end
  local body = body_of(bytes)
  if not body or type(body.p) ~= "string" or not core.valid_key(body.p) then return nil, "malformed key query" end
  if not ctx.is_member(body.p) then return nil, "key query from a key that is not a member's" end
  local shared = core.x25519(ctx.control_private, assert(core.key_from_base64(body.p)))
  if not shared then return nil, "key query: bad key" end
  local key = derive(shared)
  local q = open(key, M.KEY_REQ, body.p, body)
  if not q then return nil, "key query does not authenticate" end
  local ts = math.tointeger(q.ts)
  if not ts or math.abs(ts - (ctx.now or os.time())) > M.MAX_SKEW then
    return nil, "key query timestamp out of range (check the clock)"
  end
  local ch = b64(q, "ch", CHALLENGE)
  if not ch then return nil, "malformed key query" end
  local out = seal(key, M.KEY_RESP, body.p, { ch = q.ch, public_key = ctx.leader.public_key,
                                               endpoint = ctx.leader.endpoint })
  if #out > #bytes then return nil, "key query too short for its answer" end
  return out
end

--- Member side: opens the answer to a pending query.
-- @return `{public_key, endpoint}` (checked), or nil and a message
function M.open_answer(pending, bytes)
  if not pending or M.kind(bytes) ~= M.KEY_RESP then return nil, "not an answer" end
  local body = body_of(bytes)
  if not body then return nil, "malformed answer" end
  local a = open(pending.key, M.KEY_RESP, pending.public_key, body)
  if not a then return nil, "answer does not authenticate" end
  local ch = b64(a, "ch", CHALLENGE)
  if not ch or not core.equal(ch, pending.challenge) then return nil, "answer to another query" end
  if type(a.public_key) ~= "string" or not core.valid_key(a.public_key) then return nil, "answer without a key" end
  return { public_key = a.public_key, endpoint = type(a.endpoint) == "string" and a.endpoint or nil }
end

return M
