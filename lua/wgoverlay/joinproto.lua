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
-- Retries and amplification (issue 13):
--
-- * A join is idempotent per joiner: the leader records each admission
--   (`ctx.joins[name] = {token, public_key, at}`, persisted with its
--   state), and a request with the same token, name and public key is
--   admitted again with the same slice and answered again, also after a
--   leader restart, WITHOUT using the token a second time (and even if the
--   token expired meanwhile).  A different key with that name is refused.
--   The record goes when the node comes up (membership session or
--   handshake) or when it is reclaimed (`review_admissions`).
-- * No reply is larger than the datagram that caused it.  The joiner pads
--   its request inside the ciphertext (`pad`, authenticated, so it cannot
--   be stripped by whoever replays it) to `REQUEST_MIN` bytes; the leader
--   trims the leader record of the answer (`trim_response`) and, when the
--   sealed answer still does not fit, sends a short sealed `{ok = false,
--   pad = N}` asking for an N-byte request instead (the joiner's next
--   request is padded to N).  Refusals and JOIN_ERR are short.
-- * Each request (token id + ephemeral key) is answered at most once
--   (`ctx.seen`): retransmissions are fresh requests (new ephemeral key),
--   so a captured request replayed from a spoofed source within its
--   5-minute timestamp window gets no answer at all.
--
-- No function here raises on bytes from the network; misuse by the caller
-- (wrong argument types) raises.
-- @module wgoverlay.joinproto
local core = require "wgoverlay.core"
local endpoint = require "wgoverlay.endpoint"
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
--- Size a joiner pads its JOIN_REQ datagram to (bytes): the leader never
-- sends more bytes than it received, and 1200 bytes hold the usual answer
-- (fits the IPv6 minimum MTU, as QUIC's padded Initial).
M.REQUEST_MIN = 1200
--- Largest JOIN_REQ datagram (framing and the largest body).
M.REQUEST_MAX = #M.MAGIC + 1 + M.MAX_BODY
--- Default time (seconds) after which a node that was admitted but never
-- came up (no membership session, no handshake with the leader) is
-- reclaimed: registry record and slice released, the token use NOT given
-- back.  Overridden by the environment variable `RECLAIM_ENV` of the
-- leader's `run` (tests use a few seconds).
M.RECLAIM_AFTER = 600
--- Environment variable overriding `RECLAIM_AFTER` (seconds, >= 1).
M.RECLAIM_ENV = "WGO_JOIN_RECLAIM"
--- Requests (token id, ephemeral key) remembered as answered.
M.SEEN_MAX = 4096
--- Refused joins are logged at most once per this many seconds.
M.LOG_INTERVAL = 10

local TYPE_NAMES = { "JOIN_REQ", "JOIN_RESP", "JOIN_ERR" }
local MAX_ERROR = 200
local NONCE_BYTES = 24
local TAG_BYTES = 16

-- ---------------------------------------------------------------------
-- Framing
-- ---------------------------------------------------------------------

local function frame(msg_type, body)
  -- lua-cjson escapes every '/' (frequent in base64); JSON does not need
  -- it, and without it a message's size does not depend on its random
  -- bytes (requests are padded to a size).  Every backslash-slash pair in
  -- cjson's output is such an escape.
  local json = cjson.encode(body):gsub("\\/", "/")
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

-- Validates a joiner's request payload; returns a clean copy or nil, err.
local function check_payload(p)
  if type(p) ~= "table" then return nil, "bad request payload" end
  if not M.valid_name(p.name) then
    return nil, "bad node name (lowercase letters, digits and '-', at most 63)"
  end
  if not core.valid_key(p.public_key) then return nil, "bad public key" end
  if p.endpoint ~= nil and p.endpoint ~= cjson.null and not endpoint.valid(p.endpoint) then
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
-- @tparam[opt] integer pad_to pad the datagram (inside the ciphertext) to
--   at least this many bytes; default `REQUEST_MIN`, 0 for no padding,
--   at most `REQUEST_MAX`
-- @return datagram and session (keeps the derived key and the request;
--   the ephemeral private key is dropped at once), or nil and an error
--   message.  The leader answers each request at most once: send a new
--   request (not the same bytes) to retransmit.
function M.make_request(tok, p, pad_to)
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
  pad_to = math.min(math.tointeger(pad_to) or M.REQUEST_MIN, M.REQUEST_MAX - 8)
  local function build()
    local body = seal(key, payload, ad_request(tok.i, e))
    body.i, body.e = tok.i, e
    return frame(M.JOIN_REQ, body)
  end
  local bytes = build()
  -- Padding goes into the plaintext (field `pad`, ignored by the leader):
  -- authenticated, so a replayed request cannot be shortened.  A pad
  -- byte costs 4/3 datagram bytes (base64), `,"pad":""` about 12.
  if #bytes < pad_to then
    local n = math.max(0, ((pad_to - #bytes) * 3) // 4 - 9)
    repeat
      payload.pad = string.rep("=", n)
      bytes = build()
      n = n + math.max(1, ((pad_to - #bytes) * 3) // 4)
    until #bytes >= pad_to
  end
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
--   one, so a joiner may keep waiting for a real answer) or garbage; and,
--   when the leader asks for a larger request (its answer would not fit
--   in ours), a fourth value: the request size it wants (send a new
--   request padded to it)
function M.open_response(session, bytes)
  local msg, err = M.decode(bytes)
  if not msg then return nil, err, false end
  if msg.type == M.JOIN_ERR then return nil, "join refused: " .. msg.error, false end
  if msg.type ~= M.JOIN_RESP then return nil, "unexpected " .. msg.kind, false end
  local r = open_json(session.key, msg.nonce, msg.ct, ad_response(session.id, session.eph))
  if not r then return nil, "bad response (does not authenticate)", false end
  local pad = r.ok ~= true and type(r.pad) == "number" and math.tointeger(r.pad) or nil
  if pad and pad > 0 then
    pad = math.min(pad, M.REQUEST_MAX)
    return nil, string.format("the leader's answer needs a %d-byte request", pad), false, pad
  end
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
-- joiner WireGuard public key), so that a repeated request from the same
-- joiner gets the same answer without admitting it again.  (That the
-- token is used once per joiner rests on the persisted admission record,
-- `ctx.joins`, which also survives a restart.)  The same structure keyed
-- by (token id, ephemeral key) remembers which requests were answered
-- (`ctx.seen`).
-- @section replay_cache
M.replay_cache = {}

local Cache = {}
Cache.__index = Cache

--- Creates a cache.
-- @tparam[opt=1024] integer max_entries
-- @return cache with `:get(id, public_key)`, `:put(id, public_key, response)`,
--   `:delete(id, public_key)`, `:size()`
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

--- Forgets the entry of (id, public key), if any.
function Cache:delete(id, pub)
  local k = cache_key(id, pub)
  local node = self.map[k]
  if not node then return false end
  unlink(node)
  self.map[k] = nil
  self.n = self.n - 1
  return true
end

--- Number of cached entries.
function Cache:size() return self.n end

-- ---------------------------------------------------------------------
-- Leader request handling
-- ---------------------------------------------------------------------

local function refuse(req, why)
  return M.seal_response(req, { ok = false, error = why })
end

local LEADER_FIELDS = { "name", "public_key", "endpoint", "overlay_ip", "overlay_ip6", "slice", "slice6" }

--- The answer as sent: the leader record cut to what a joiner needs to
-- reach the leader (name, key, endpoint, addresses, slices); containers
-- and NAT candidates come with the first membership snapshot.  Keeps the
-- answer small (see `handle`).
-- @tparam table resp `{node, cluster, leader, ...}`
-- @treturn table a shallow copy with a trimmed `leader`
function M.trim_response(resp)
  local out = {}
  for k, v in pairs(resp) do out[k] = v end
  if type(resp.leader) == "table" then
    local l = {}
    for _, f in ipairs(LEADER_FIELDS) do l[f] = resp.leader[f] end
    out.leader = l
  end
  return out
end

-- The reply to `bytes`, never larger than `bytes` (no amplification).  A
-- sealed answer that does not fit becomes a short sealed request for a
-- larger JOIN_REQ (with some room for the answer to grow a little); when
-- even that does not fit, nothing is sent.
local function fit(req, reply, bytes, info)
  if #reply <= #bytes then return reply, info end
  info.too_large = #reply
  if req then
    local want = math.min(#reply + 64, M.REQUEST_MAX)
    local hint = M.seal_response(req, { ok = false, pad = want,
                                        error = string.format("answer needs a %d-byte request", want) })
    if #hint <= #bytes then return hint, info end
  end
  info.error = info.error or string.format("answer (%d bytes) larger than the request (%d bytes): not sent",
                                           #reply, #bytes)
  return nil, info
end

--- Handles one JOIN_REQ datagram on the leader: decrypt, answered-once
-- check, retry recognition, token checks, admission, token consumption.
--
-- Token uses: the first admission of a joiner uses the token once; a
-- retry by the same joiner (same token id, node name and public key,
-- found in `ctx.joins`) is admitted again without using it again and
-- without checking it again (it may have expired or run out meanwhile: the
-- use was spent on this very joiner).  A reclaimed admission does not
-- give its use back: the joiner needs a new token (or another use).
-- @tparam table ctx `control_private` (raw 32 bytes), `tokens` (token
--   store), `cache` (`replay_cache` of answers), `seen` (`replay_cache`:
--   requests already answered), `joins` (the leader's persisted admission
--   records, name -> `{token, public_key, at}`; updated here), `admit`
--   (`function(payload, id, retry)` -> response fields `{node, cluster,
--   leader}` or nil, error; it allocates and must be idempotent per node;
--   nil, message, true means "not decided yet": nothing is sent and the
--   joiner's next request asks again),
--   `now` (optional)
-- @tparam string bytes datagram
-- @return reply datagram (nil: send nothing) and an info table `{id, name,
--   joined = bool, replayed = bool (answered from the cache), retried =
--   bool (re-admitted from `joins`), duplicate = bool, too_large, error}`
function M.handle(ctx, bytes, now)
  now = now or ctx.now or os.time()
  local msg, err = M.decode(bytes)
  if not msg or msg.type ~= M.JOIN_REQ then return nil, { error = err or "not a join request" } end
  local lookup = function(id) return token.lookup_hash(ctx.tokens, id) end
  local req, rerr, partial = open_decoded(ctx.control_private, lookup, msg, now)
  local opened = req or partial
  if opened and ctx.seen then
    -- A request that decrypts is answered once: a retransmitting joiner
    -- sends new requests, so a second copy is a duplicate or a replay
    -- (possibly from a spoofed source).
    if ctx.seen:get(opened.id, opened.eph) then
      return nil, { id = opened.id, duplicate = true, error = "request already answered (duplicate or replay)" }
    end
    ctx.seen:put(opened.id, opened.eph, true)
  end
  if not req then
    local info = { id = msg.id, error = rerr }
    if partial then return fit(partial, refuse(partial, rerr), bytes, info) end
    return fit(nil, M.error(rerr), bytes, info)
  end
  local p = req.payload
  local info = { id = req.id, name = p.name }
  local prior = ctx.joins and ctx.joins[p.name]
  local retry = type(prior) == "table" and prior.token == req.id and prior.public_key == p.public_key
  local cached = ctx.cache and ctx.cache:get(req.id, p.public_key)
  if cached and (retry or not ctx.joins) then
    info.joined, info.replayed = true, true
    return fit(req, M.seal_response(req, cached), bytes, info)
  end
  if not retry then
    local ok, terr = token.usable(ctx.tokens, req.id, now)
    if not ok then info.error = terr return fit(req, refuse(req, terr), bytes, info) end
  end
  local resp, aerr, later = ctx.admit(p, req.id, retry)
  if not resp and later then
    -- the admission runs asynchronously (etcd registry): no answer now;
    -- the joiner's next request (a second later) gets it
    info.pending = true
    return nil, info
  end
  if not resp then info.error = aerr or "refused" return fit(req, refuse(req, info.error), bytes, info) end
  if retry then
    info.retried = true
  else
    token.consume(ctx.tokens, req.id, now)
    if ctx.joins then ctx.joins[p.name] = { token = req.id, public_key = p.public_key, at = now } end
  end
  resp = M.trim_response(resp)
  resp.ok = true
  if ctx.cache then ctx.cache:put(req.id, p.public_key, resp) end
  info.joined = true
  return fit(req, M.seal_response(req, resp), bytes, info)
end

--- `handle`, with refusals logged through `log(fmt, ...)` at the rate
-- `limiter` (a `rate_limiter`) allows; "not decided yet" is not a refusal.
-- @return as `handle` (the caller sends the reply to `from`)
function M.handle_logged(ctx, bytes, from, limiter, log)
  local reply, info = M.handle(ctx, bytes)
  if info and info.error and not info.pending then
    local ok, suppressed = limiter:hit(os.time())
    if ok then
      log("join refused (%s): %s%s", from, info.error,
          suppressed > 0 and string.format(" (%d more suppressed)", suppressed) or "")
    end
  end
  return reply, info
end

-- ---------------------------------------------------------------------
-- Half-admitted nodes
-- ---------------------------------------------------------------------

--- The reclaim time in effect: `value` (the `RECLAIM_ENV` environment
-- variable, seconds, at least 1) or `RECLAIM_AFTER`.
-- @param value string or number or nil
-- @treturn integer seconds
function M.reclaim_after(value)
  local n = tonumber(value)
  if n and n >= 1 and n < math.huge then return math.floor(n) end
  return M.RECLAIM_AFTER
end

--- Decides what becomes of the leader's admission records.  Pure.
-- @tparam table joins name -> `{token, public_key, at}`
-- @tparam table o `now`, `reclaim_after` (seconds), `members` (name ->
--   public key of the registry's members), `up` (set of names that came
--   up: a membership session or a handshake), `not_before` (optional: no
--   reclaim before this time, e.g. a grace after the leader's start)
-- @return `{done = {name...}, reclaim = {name...}}` (sorted): `done`
--   records are dropped (the node came up, or was removed or replaced,
--   or the record is malformed); `reclaim` nodes were admitted at least
--   `reclaim_after` seconds ago and never came up: release their record
--   and slice (the token use is not given back)
function M.review_admissions(joins, o)
  local done, reclaim = {}, {}
  for name, r in pairs(joins or {}) do
    local at = type(r) == "table" and type(r.at) == "number" and r.at or nil
    if not at or type(r.public_key) ~= "string" or o.members[name] ~= r.public_key or o.up[name] then
      done[#done + 1] = name
    elseif o.now - at >= o.reclaim_after and (o.not_before == nil or o.now >= o.not_before) then
      reclaim[#reclaim + 1] = name
    end
  end
  table.sort(done)
  table.sort(reclaim)
  return { done = done, reclaim = reclaim }
end

-- ---------------------------------------------------------------------
-- Log rate limit
-- ---------------------------------------------------------------------

local Limiter = {}
Limiter.__index = Limiter

--- A rate limit for log lines: at most one per `interval` seconds.
-- @tparam[opt=LOG_INTERVAL] number interval
-- @return limiter with `:hit(now)` and `:flush(now)`
function M.rate_limiter(interval)
  return setmetatable({ interval = interval or M.LOG_INTERVAL, last = nil, suppressed = 0 }, Limiter)
end

--- One more line to log at `now`: true and the number of lines suppressed
-- since the last one written, or false (the line is counted as suppressed).
function Limiter:hit(now)
  if self.last == nil or now - self.last >= self.interval then
    local n = self.suppressed
    self.suppressed, self.last = 0, now
    return true, n
  end
  self.suppressed = self.suppressed + 1
  return false
end

--- Suppressed lines not reported yet, once `interval` has passed since
-- the last line (reporting them counts as a line): their number, or nil.
function Limiter:flush(now)
  if self.suppressed > 0 and now - self.last >= self.interval then
    local n = self.suppressed
    self.suppressed, self.last = 0, now
    return n
  end
  return nil
end

return M
