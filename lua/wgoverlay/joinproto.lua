--- Join protocol: control datagrams on the WireGuard UDP port.
--
-- Framing: `"WGO1" .. type byte .. JSON body` (body at most 8 KiB).
--
-- * `JOIN_REQ` (1): `{i = token id, e = joiner ephemeral X25519 public
--   (base64), n = nonce (base64, 24 bytes), c = ciphertext (base64)}`.
-- * `JOIN_RESP` (2): `{n, c}`.
-- * `JOIN_ERR` (3): `{error}` (not authenticated).
--
-- Crypto (docs/ORCHESTRATION.md, "Join"):
--
--     H   = BLAKE2s(secret)                    -- the hash the leader stores
--     key = BLAKE2s(X25519(eph, leader_control) || H, key = "wgo-join-v1")
--     JOIN_REQ  AD = "WGO1" .. i .. e          plaintext {name, public_key, endpoint, ts}
--     JOIN_RESP AD = "WGO1" .. "\2" .. i .. e  plaintext {ok = true, node, cluster, leader}
--                                              or {ok = false, error}
--
-- with XChaCha20-Poly1305 and a random 24-byte nonce per message.  The
-- response AD differs from the request AD so a request can never be
-- reflected as a response.  A wrong secret (or unknown id) fails
-- decryption: "bad token".
--
-- No function here raises on bytes from the network; misuse by the caller
-- (wrong argument types) raises.
-- @module wgoverlay.joinproto
local core = require "wgoverlay.core"
local token = require "wgoverlay.token"
local cjson = require("cjson").new()

cjson.decode_max_depth(16)
cjson.decode_invalid_numbers(false)

local M = {}

M.MAGIC = "WGO1"
M.JOIN_REQ = 1
M.JOIN_RESP = 2
M.JOIN_ERR = 3
--- Largest JSON body accepted or produced.
M.MAX_BODY = 8192
--- Largest accepted clock difference between joiner and leader, seconds.
M.MAX_SKEW = 300
--- BLAKE2s key of the join key derivation.
M.KDF_LABEL = "wgo-join-v1"

local TYPE_NAMES = { "JOIN_REQ", "JOIN_RESP", "JOIN_ERR" }
local MAX_ERROR = 200
local NONCE_BYTES = 24
local TAG_BYTES = 16

-- ---------------------------------------------------------------------
-- Framing
-- ---------------------------------------------------------------------

local function frame(msg_type, body)
  local json = cjson.encode(body)
  assert(#json <= M.MAX_BODY, "joinproto: message body larger than 8 KiB")
  return M.MAGIC .. string.char(msg_type) .. json
end

-- Printable ASCII only, bounded: error strings come from the network.
local function clean_error(s)
  s = tostring(s):sub(1, MAX_ERROR)
  return (s:gsub("[^\32-\126]", "?"))
end

local function b64_field(body, field, len)
  local raw = token.base64_decode(body[field])
  if not raw then return nil end
  if len and #raw ~= len then return nil end
  return raw
end

local function parse_req(body)
  if not token.valid_id(body.i) then return nil, "JOIN_REQ: bad token id" end
  local eph = b64_field(body, "e", 32)
  if not eph then return nil, "JOIN_REQ: bad ephemeral key" end
  local nonce = b64_field(body, "n", NONCE_BYTES)
  if not nonce then return nil, "JOIN_REQ: bad nonce" end
  local ct = b64_field(body, "c")
  if not ct or #ct < TAG_BYTES then return nil, "JOIN_REQ: bad ciphertext" end
  return { type = M.JOIN_REQ, kind = "JOIN_REQ", id = body.i, eph = body.e, eph_raw = eph, nonce = nonce, ct = ct }
end

local function parse_resp(body)
  local nonce = b64_field(body, "n", NONCE_BYTES)
  if not nonce then return nil, "JOIN_RESP: bad nonce" end
  local ct = b64_field(body, "c")
  if not ct or #ct < TAG_BYTES then return nil, "JOIN_RESP: bad ciphertext" end
  return { type = M.JOIN_RESP, kind = "JOIN_RESP", nonce = nonce, ct = ct }
end

local function parse_err(body)
  if type(body.error) ~= "string" then return nil, "JOIN_ERR: missing error" end
  return { type = M.JOIN_ERR, kind = "JOIN_ERR", error = clean_error(body.error) }
end

local PARSERS = { parse_req, parse_resp, parse_err }

--- True if a datagram is a control message (starts with the magic).
-- @param bytes
-- @treturn boolean
function M.is_control(bytes)
  return type(bytes) == "string" and bytes:sub(1, #M.MAGIC) == M.MAGIC
end

--- Decodes a control datagram.  Never raises.
-- @param bytes datagram
-- @return message `{type, kind, ...}` (JOIN_REQ: `id, eph, eph_raw, nonce,
--   ct`; JOIN_RESP: `nonce, ct`; JOIN_ERR: `error`), or nil and an error
function M.decode(bytes)
  if not M.is_control(bytes) or #bytes < #M.MAGIC + 1 then return nil, "not a control datagram" end
  local t = bytes:byte(#M.MAGIC + 1)
  local parse = PARSERS[t]
  if not parse then return nil, "unknown control message type " .. t end
  if #bytes - #M.MAGIC - 1 > M.MAX_BODY then return nil, "control message too large" end
  local ok, body = pcall(cjson.decode, bytes:sub(#M.MAGIC + 2))
  if not ok or type(body) ~= "table" then return nil, TYPE_NAMES[t] .. ": malformed JSON body" end
  return parse(body)
end

--- Encodes a JOIN_ERR (unauthenticated refusal).
-- @tparam string msg
-- @treturn string datagram
function M.error(msg)
  return frame(M.JOIN_ERR, { error = clean_error(msg) })
end

-- ---------------------------------------------------------------------
-- Crypto helpers
-- ---------------------------------------------------------------------

local function derive_key(shared, hash_raw)
  return core.blake2s(shared .. hash_raw, M.KDF_LABEL)
end

local function ad_request(id, eph_b64) return M.MAGIC .. id .. eph_b64 end
local function ad_response(id, eph_b64) return M.MAGIC .. "\2" .. id .. eph_b64 end

local function seal(key, plaintext_table, ad)
  local nonce = core.random(NONCE_BYTES)
  local ct = core.aead_seal(key, nonce, cjson.encode(plaintext_table), ad)
  return { n = token.base64_encode(nonce), c = token.base64_encode(ct) }
end

local function open_json(key, nonce, ct, ad)
  local pt = core.aead_open(key, nonce, ct, ad)
  if not pt then return nil end
  local ok, t = pcall(cjson.decode, pt)
  if not ok or type(t) ~= "table" then return nil end
  return t
end

local function hex_to_raw(h)
  return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end

--- True if `name` is a valid node name (a DNS label: lowercase letters,
-- digits and '-', 1..63 characters, no leading or trailing '-').
-- @param name
-- @treturn boolean
function M.valid_name(name)
  if type(name) ~= "string" or #name < 1 or #name > 63 then return false end
  return name:match("^[a-z0-9]$") ~= nil or name:match("^[a-z0-9][a-z0-9-]*[a-z0-9]$") ~= nil
end

local function valid_endpoint(e)
  return type(e) == "string" and #e <= 256 and e:match("^%S+:%d+$") ~= nil
end

-- Validates a joiner's request payload; returns a clean copy or nil, err.
local function check_payload(p)
  if type(p) ~= "table" then return nil, "bad request payload" end
  if not M.valid_name(p.name) then
    return nil, "bad node name (lowercase letters, digits and '-', at most 63)"
  end
  if not core.valid_key(p.public_key) then return nil, "bad public key" end
  if p.endpoint ~= nil and p.endpoint ~= cjson.null and not valid_endpoint(p.endpoint) then
    return nil, "bad endpoint (expected host:port)"
  end
  local ts = type(p.ts) == "number" and math.tointeger(p.ts) or nil
  if not ts then return nil, "bad timestamp" end
  local endpoint = p.endpoint ~= cjson.null and p.endpoint or nil
  return { name = p.name, public_key = p.public_key, endpoint = endpoint, ts = ts }
end

-- ---------------------------------------------------------------------
-- Joiner side
-- ---------------------------------------------------------------------

--- Builds a JOIN_REQ.
-- @param tok decoded token (`token.decode`) or a token string
-- @tparam table p `{name, public_key (WireGuard, base64), endpoint (host:port,
--   optional), ts (epoch seconds, default os.time())}`
-- @return datagram and session (keeps the derived key and the request for
--   retransmission; the ephemeral private key is dropped at once), or nil
--   and an error message
function M.make_request(tok, p)
  if type(tok) == "string" then
    local err
    tok, err = token.decode(tok)
    if not tok then return nil, err end
  end
  assert(type(tok) == "table" and type(p) == "table", "joinproto.make_request: token and table expected")
  local payload, err = check_payload({ name = p.name, public_key = p.public_key, endpoint = p.endpoint,
                                       ts = p.ts or os.time() })
  if not payload then return nil, err end
  local leader_pub = core.key_from_base64(tok.k)
  local secret = tok.s and token.base64_decode(tok.s)
  if not leader_pub or not secret or #secret ~= 32 or not token.valid_id(tok.i) then
    return nil, "bad token"
  end
  -- The ephemeral private key lives only in this call: the session keeps
  -- the derived key, which is all the response needs.
  local eph_priv, eph_pub = core.x25519_keypair()
  local shared = core.x25519(eph_priv, leader_pub)
  if not shared then return nil, "bad leader key in token" end
  local key = derive_key(shared, core.blake2s(secret))
  local e = core.key_to_base64(eph_pub)
  local body = seal(key, payload, ad_request(tok.i, e))
  body.i, body.e = tok.i, e
  local bytes = frame(M.JOIN_REQ, body)
  return bytes, { id = tok.i, eph = e, key = key, leader_endpoint = tok.e, request = bytes }
end

-- Checks the fields a joiner needs from a successful response.
local function check_response(r)
  if type(r.node) ~= "table" or type(r.node.overlay_ip) ~= "string" then
    return nil, "bad response: missing node addresses"
  end
  return r
end

--- Opens the leader's answer to a request.
-- @tparam table session from `make_request`
-- @tparam string bytes datagram
-- @return the response table (`ok = true`), or nil, an error message and
--   `final`: true when the refusal is authenticated (JOIN_RESP with
--   `ok = false`), false for a JOIN_ERR (unauthenticated: anyone can send
--   one, so a joiner may keep waiting for a real answer) or garbage
function M.open_response(session, bytes)
  local msg, err = M.decode(bytes)
  if not msg then return nil, err, false end
  if msg.type == M.JOIN_ERR then return nil, "join refused: " .. msg.error, false end
  if msg.type ~= M.JOIN_RESP then return nil, "unexpected " .. msg.kind, false end
  local r = open_json(session.key, msg.nonce, msg.ct, ad_response(session.id, session.eph))
  if not r then return nil, "bad response (does not authenticate)", false end
  if r.ok ~= true then
    local why = type(r.error) == "string" and clean_error(r.error) or "no reason given"
    return nil, "join refused: " .. why, true
  end
  local ok, cerr = check_response(r)
  if not ok then return nil, cerr, true end
  return r
end

-- ---------------------------------------------------------------------
-- Leader side
-- ---------------------------------------------------------------------

-- Opens a decoded JOIN_REQ.  Returns req | nil, err, partial_req.
local function open_decoded(control_priv, lookup_hash, msg, now)
  local hash = lookup_hash(msg.id)
  if hash == nil then return nil, "bad token" end
  assert(type(hash) == "string" and #hash == 64 and hash:match("^%x+$"),
    "joinproto: lookup must return the token's stored hash (64 hex characters)")
  local shared = core.x25519(control_priv, msg.eph_raw)
  if not shared then return nil, "bad token" end
  local key = derive_key(shared, hex_to_raw(hash))
  local req = { id = msg.id, eph = msg.eph, key = key }
  local p = open_json(key, msg.nonce, msg.ct, ad_request(msg.id, msg.eph))
  if not p then return nil, "bad token" end
  local payload, err = check_payload(p)
  if not payload then return nil, err, req end
  if math.abs(payload.ts - now) > M.MAX_SKEW then
    return nil, "request timestamp out of range (check the clock)", req
  end
  req.payload = payload
  return req
end

--- Opens a JOIN_REQ on the leader.
-- @tparam string control_priv leader control private key (raw 32 bytes)
-- @tparam function lookup_hash `lookup_hash(id)` -> the token's stored
--   hash (hex, as kept by `wgoverlay.token`) or nil; e.g.
--   `function(id) return token.lookup_hash(store, id) end`
-- @tparam string bytes datagram
-- @tparam[opt] integer now epoch seconds (default os.time())
-- @return request `{id, eph, key, payload = {name, public_key, endpoint,
--   ts}}`, or nil, an error message and, when the request did decrypt (the
--   joiner holds the token) but is unacceptable (bad payload, timestamp
--   more than 5 minutes off), a partial request usable with
--   `seal_response` to send an authenticated refusal.  A request that
--   does not decrypt gives "bad token" (answer with `error("bad token")`).
function M.open_request(control_priv, lookup_hash, bytes, now)
  assert(type(control_priv) == "string" and #control_priv == 32, "joinproto.open_request: raw 32-byte key expected")
  assert(type(lookup_hash) == "function", "joinproto.open_request: lookup function expected")
  local msg, err = M.decode(bytes)
  if not msg then return nil, err end
  if msg.type ~= M.JOIN_REQ then return nil, "unexpected " .. msg.kind end
  return open_decoded(control_priv, lookup_hash, msg, now or os.time())
end

--- Seals a JOIN_RESP for a request.
-- @tparam table req from `open_request` (full or partial)
-- @tparam table resp `{ok = true, node, cluster, leader}` or `{ok = false, error}`
-- @treturn string datagram
function M.seal_response(req, resp)
  assert(type(req) == "table" and type(req.key) == "string", "joinproto.seal_response: request expected")
  return frame(M.JOIN_RESP, seal(req.key, resp, ad_response(req.id, req.eph)))
end

-- ---------------------------------------------------------------------
-- Replay cache
-- ---------------------------------------------------------------------

--- Bounded least-recently-used cache of answers, keyed by (token id,
-- joiner WireGuard public key), so a retransmitted or repeated request
-- gets the same answer and a single-use token is consumed once.
-- @section replay_cache
M.replay_cache = {}

local Cache = {}
Cache.__index = Cache

--- Creates a cache.
-- @tparam[opt=1024] integer max_entries
-- @return cache with `:get(id, public_key)`, `:put(id, public_key, response)`,
--   `:size()`
function M.replay_cache.new(max_entries)
  max_entries = max_entries or 1024
  assert(math.type(max_entries) == "integer" and max_entries > 0, "replay_cache.new: positive integer expected")
  local head = {}
  head.prev, head.next = head, head
  return setmetatable({ max = max_entries, map = {}, n = 0, head = head }, Cache)
end

local function cache_key(id, pub) return tostring(id) .. "\0" .. tostring(pub) end

local function unlink(node)
  node.prev.next, node.next.prev = node.next, node.prev
end

local function push_front(head, node)
  node.next, node.prev = head.next, head
  head.next.prev = node
  head.next = node
end

--- The cached response for (id, public key), or nil.  Refreshes the entry.
function Cache:get(id, pub)
  local node = self.map[cache_key(id, pub)]
  if not node then return nil end
  unlink(node)
  push_front(self.head, node)
  return node.value
end

--- Stores a response for (id, public key), evicting the least recently
-- used entry when full.
function Cache:put(id, pub, value)
  local k = cache_key(id, pub)
  local node = self.map[k]
  if node then
    unlink(node)
  else
    node = { key = k }
    self.map[k] = node
    self.n = self.n + 1
  end
  node.value = value
  push_front(self.head, node)
  if self.n > self.max then
    local old = self.head.prev
    unlink(old)
    self.map[old.key] = nil
    self.n = self.n - 1
  end
end

--- Number of cached entries.
function Cache:size() return self.n end

-- ---------------------------------------------------------------------
-- Leader request handling
-- ---------------------------------------------------------------------

local function refuse(req, why)
  return M.seal_response(req, { ok = false, error = why })
end

--- Handles one JOIN_REQ datagram on the leader: decrypt, replay cache,
-- token checks, admission, token consumption.
-- @tparam table ctx `control_private` (raw 32 bytes), `tokens` (token
--   store), `cache` (`replay_cache`), `admit` (`function(payload, id)` ->
--   response fields `{node, cluster, leader}` or nil, error; it allocates
--   and must be idempotent per node), `now` (optional)
-- @tparam string bytes datagram
-- @return reply datagram (nil: not a join request, send nothing) and an
--   info table `{id, name, joined = bool, replayed = bool, error}`
function M.handle(ctx, bytes, now)
  now = now or ctx.now or os.time()
  local msg, err = M.decode(bytes)
  if not msg or msg.type ~= M.JOIN_REQ then return nil, { error = err or "not a join request" } end
  local lookup = function(id) return token.lookup_hash(ctx.tokens, id) end
  local req, rerr, partial = open_decoded(ctx.control_private, lookup, msg, now)
  if not req then
    if partial then return refuse(partial, rerr), { id = msg.id, error = rerr } end
    return M.error(rerr), { id = msg.id, error = rerr }
  end
  local p = req.payload
  local info = { id = req.id, name = p.name }
  local cached = ctx.cache and ctx.cache:get(req.id, p.public_key)
  if cached then
    info.joined, info.replayed = true, true
    return M.seal_response(req, cached), info
  end
  local ok, terr = token.usable(ctx.tokens, req.id, now)
  if not ok then info.error = terr return refuse(req, terr), info end
  local resp, aerr = ctx.admit(p, req.id)
  if not resp then info.error = aerr or "refused" return refuse(req, info.error), info end
  token.consume(ctx.tokens, req.id, now)
  resp.ok = true
  if ctx.cache then ctx.cache:put(req.id, p.public_key, resp) end
  info.joined = true
  return M.seal_response(req, resp), info
end

return M
