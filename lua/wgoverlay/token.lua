--- Join tokens: creation, encoding, verification and consumption.
--
-- A token is given to a joining node out of band:
-- `"wgo1_" .. base64url(JSON {e = leader endpoint, k = leader control
-- public key (base64), i = token id, s = secret (base64, 32 bytes)})`,
-- and with the etcd registry `x`: the endpoints of other live members
-- that can admit the joiner too (tried in turn after `e`).
--
-- The leader's token store is a plain JSON-safe table (kept in
-- `leader.json` by the caller), `id -> {id, hash, expires, uses_left}`
-- with `hash = hex(BLAKE2s(secret))`.  The secret itself is never stored:
-- the join key is derived from the hash (see `wgoverlay.joinproto`), so
-- the hash is the credential the leader verifies by decrypting a request.
-- It is secret material (leader.json is mode 0600, like the control
-- private key kept next to it).
--
-- Pure except for randomness (`core.random`); every function that looks at
-- time takes `now` (epoch seconds, default `os.time()`).
-- Error strings never contain a secret or a hash.
-- @module wgoverlay.token
local core = require "wgoverlay.core"
local endpoint = require "wgoverlay.endpoint"
local cjson = require("cjson").new()

cjson.decode_max_depth(4)
cjson.decode_invalid_numbers(false)

local M = {}

--- Token string prefix.
M.PREFIX = "wgo1_"
--- Default lifetime of a token, seconds.
M.DEFAULT_TTL = 3600
--- Expired tokens stay in the store this long (seconds) so that a late
-- joiner is told "token expired" rather than "bad token"; then they are
-- pruned.
M.PRUNE_AFTER = 86400
--- Longest token string accepted by `decode`.
M.MAX_LENGTH = 2048
--- Most extra member endpoints (`x`) a token may carry.
M.MAX_EXTRA = 8

local ID_BYTES = 8
local SECRET_BYTES = 32

-- ---------------------------------------------------------------------
-- Base64 (RFC 4648 §4 standard with padding, §5 URL-safe without)
-- ---------------------------------------------------------------------

local STD = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

local function reverse_table(alphabet)
  local rev = {}
  for i = 1, #alphabet do rev[alphabet:byte(i)] = i - 1 end
  return rev
end

local STD_REV, URL_REV = reverse_table(STD), reverse_table(URL)

-- 12-bit value -> two characters, per alphabet (encoding a 3-byte group
-- is then two lookups).
local function pair_table(alphabet)
  local pairs_of = {}
  for i = 0, 4095 do
    local a, b = (i >> 6) + 1, (i & 63) + 1
    pairs_of[i] = alphabet:sub(a, a) .. alphabet:sub(b, b)
  end
  return pairs_of
end

local PAIRS = { [STD] = pair_table(STD), [URL] = pair_table(URL) }

local function b64_encode(bytes, alphabet, pad)
  local pt, out, n = PAIRS[alphabet], {}, #bytes
  local full = n - n % 3
  for i = 1, full, 3 do
    local a, b, c = bytes:byte(i, i + 2)
    local v = (a << 16) | (b << 8) | c
    out[#out + 1] = pt[v >> 12] .. pt[v & 4095]
  end
  local rem = n - full
  if rem > 0 then
    local a, b = bytes:byte(full + 1, full + 2)
    local v = (a << 16) | ((b or 0) << 8)
    local tail = pt[v >> 12] .. pt[v & 4095]
    tail = tail:sub(1, rem + 1)
    if pad then tail = tail .. ("="):rep(3 - rem) end
    out[#out + 1] = tail
  end
  return table.concat(out)
end

-- Strict decoding: only alphabet characters, the right length and zero
-- unused bits in the last character (so each byte string has exactly one
-- encoding).
local function b64_decode(s, rev, pad)
  if type(s) ~= "string" then return nil, "bad base64: not a string" end
  if pad then
    if #s % 4 ~= 0 then return nil, "bad base64: length" end
    s = s:gsub("==?$", "", 1)
  end
  local rem = #s % 4
  if rem == 1 then return nil, "bad base64: length" end
  local out = {}
  for i = 1, #s - rem, 4 do
    local a, b, c, d = rev[s:byte(i)], rev[s:byte(i + 1)], rev[s:byte(i + 2)], rev[s:byte(i + 3)]
    if not (a and b and c and d) then return nil, "bad base64: invalid character" end
    local n = (a << 18) | (b << 12) | (c << 6) | d
    out[#out + 1] = string.char(n >> 16, (n >> 8) & 255, n & 255)
  end
  if rem > 0 then
    local i = #s - rem + 1
    local a, b, c = rev[s:byte(i)], rev[s:byte(i + 1)], 0
    if rem == 3 then c = rev[s:byte(i + 2)] end
    if not (a and b and c) then return nil, "bad base64: invalid character" end
    local n = (a << 18) | (b << 12) | (c << 6)
    if rem == 2 then
      if n & 0xffff ~= 0 then return nil, "bad base64: non-zero padding bits" end
      out[#out + 1] = string.char(n >> 16)
    else
      if n & 0xff ~= 0 then return nil, "bad base64: non-zero padding bits" end
      out[#out + 1] = string.char(n >> 16, (n >> 8) & 255)
    end
  end
  return table.concat(out)
end

--- Base64url without padding (RFC 4648 §5).
-- @tparam string bytes
-- @treturn string
function M.base64url_encode(bytes) return b64_encode(bytes, URL, false) end

--- Strict base64url decoding (no padding, no other characters, canonical).
-- @tparam string s
-- @return bytes, or nil and an error message
function M.base64url_decode(s) return b64_decode(s, URL_REV, false) end

--- Standard base64 with padding (RFC 4648 §4).
-- @tparam string bytes
-- @treturn string
function M.base64_encode(bytes) return b64_encode(bytes, STD, true) end

--- Strict standard base64 decoding (padding required, canonical).
-- @tparam string s
-- @return bytes, or nil and an error message
function M.base64_decode(s) return b64_decode(s, STD_REV, true) end

-- ---------------------------------------------------------------------
-- Helpers
-- ---------------------------------------------------------------------

local function hex(bytes)
  return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

--- The stored hash of a raw secret: hex(BLAKE2s(secret)).
-- @tparam string secret_raw 32 bytes
-- @treturn string 64 hex characters
function M.hash(secret_raw)
  return hex(core.blake2s(secret_raw))
end

--- True if `id` has the form of a token id (hex, 1..64 characters).
-- @param id
-- @treturn boolean
function M.valid_id(id)
  return type(id) == "string" and #id >= 1 and #id <= 64 and id:match("^[0-9a-f]+$") ~= nil
end

-- A secret given as in a token (base64) or raw (32 bytes).
local function secret_raw(secret)
  if type(secret) ~= "string" then return nil end
  if #secret == SECRET_BYTES then return secret end
  local raw = M.base64_decode(secret)
  if raw and #raw == SECRET_BYTES then return raw end
  return nil
end

local function clock(now)
  return now or os.time()
end

-- ---------------------------------------------------------------------
-- Encoding
-- ---------------------------------------------------------------------

-- Checks the four token fields; returns nil or an error message.
local function check_fields(t)
  for _, f in ipairs({ "e", "k", "i", "s" }) do
    if t[f] == nil or t[f] == cjson.null then return "token is missing field '" .. f .. "'" end
    if type(t[f]) ~= "string" then return "token field '" .. f .. "' must be a string" end
  end
  if not endpoint.valid(t.e) then return "bad leader endpoint in token (expected IP:PORT)" end
  if not core.valid_key(t.k) then return "bad leader key in token" end
  if not M.valid_id(t.i) then return "bad token id" end
  if not secret_raw(t.s) or #t.s ~= 44 then return "bad token secret (expected 32 bytes base64)" end
  if t.x ~= nil then
    if type(t.x) ~= "table" or #t.x > M.MAX_EXTRA then return "token field 'x' must be a list of endpoints" end
    for i = 1, #t.x do
      if type(t.x[i]) ~= "string" or not endpoint.valid(t.x[i]) then
        return "bad member endpoint in token (expected IP:PORT)"
      end
    end
  end
  return nil
end

--- Encodes a token.
-- @tparam table t `{e = leader endpoint, k = leader control public key
--   (base64), i = token id, s = secret (base64)}`
-- @treturn string `"wgo1_" .. base64url(JSON)`
-- @raise on invalid fields (a programming error)
function M.encode(t)
  assert(type(t) == "table", "token.encode: table expected")
  local err = check_fields(t)
  if err then error("token.encode: " .. err, 2) end
  -- lua-cjson escapes every '/' (common in base64 keys); JSON does not
  -- need it, and every backslash-slash pair in cjson's output is one.
  local x = t.x and #t.x > 0 and setmetatable({ table.unpack(t.x) }, cjson.array_mt) or nil
  local json = cjson.encode({ e = t.e, k = t.k, i = t.i, s = t.s, x = x }):gsub("\\/", "/")
  return M.PREFIX .. M.base64url_encode(json)
end

--- Decodes and validates a token string (surrounding white space allowed).
-- @tparam string str
-- @return `{e, k, i, s}`, or nil and an error message
function M.decode(str)
  if type(str) ~= "string" then return nil, "token must be a string" end
  str = str:match("^%s*(.-)%s*$")
  if #str > M.MAX_LENGTH then return nil, "token too long" end
  if str:sub(1, #M.PREFIX) ~= M.PREFIX then
    return nil, "not a wgoverlay join token (expected prefix " .. M.PREFIX .. ")"
  end
  local json = M.base64url_decode(str:sub(#M.PREFIX + 1))
  if not json then return nil, "bad token encoding (base64url)" end
  local ok, t = pcall(cjson.decode, json)
  if not ok or type(t) ~= "table" then return nil, "bad token encoding (JSON object expected)" end
  local err = check_fields(t)
  if err then return nil, err end
  return { e = t.e, k = t.k, i = t.i, s = t.s, x = t.x }
end

-- ---------------------------------------------------------------------
-- Leader store
-- ---------------------------------------------------------------------

local function int(x)
  return type(x) == "number" and math.tointeger(x) or nil
end

-- Checks a store entry, normalising numbers read back from JSON (which
-- decodes 3600 as 3600.0) to integers.
local function valid_entry(entry)
  if type(entry) ~= "table" or type(entry.hash) ~= "string" or #entry.hash ~= 64 then return false end
  local expires, uses = int(entry.expires), int(entry.uses_left)
  if not expires or not uses then return false end
  entry.expires, entry.uses_left = expires, uses
  return true
end

--- Removes tokens that expired more than `grace` seconds ago, and
-- malformed entries.
-- @tparam table store
-- @tparam[opt] integer now
-- @tparam[opt=PRUNE_AFTER] integer grace
-- @treturn integer number of tokens removed
function M.prune(store, now, grace)
  now, grace = clock(now), grace or M.PRUNE_AFTER
  local dead = {}
  for id, entry in pairs(store) do
    if not valid_entry(entry) or entry.expires + grace <= now then dead[#dead + 1] = id end
  end
  for _, id in ipairs(dead) do store[id] = nil end
  return #dead
end

--- Creates a token and records it in the store.
-- @tparam table store the leader's token store
-- @tparam table opts `endpoint` (leader host:port), `extra` (more
--   endpoints that admit joiners, etcd registry), `control_public`
--   (leader control public key, base64), `ttl` (seconds, default 3600),
--   `uses` (default 1), `now`
-- @treturn string the token (give it to the joiner; it is not kept)
-- @treturn string the token id
function M.create(store, opts)
  opts = opts or {}
  local ttl, uses, now = opts.ttl or M.DEFAULT_TTL, opts.uses or 1, clock(opts.now)
  assert(math.type(ttl) == "integer" and ttl > 0, "token.create: ttl must be a positive integer")
  assert(math.type(uses) == "integer" and uses > 0, "token.create: uses must be a positive integer")
  M.prune(store, now)
  local id
  repeat id = hex(core.random(ID_BYTES)) until store[id] == nil
  local secret = core.random(SECRET_BYTES)
  local str = M.encode({ e = opts.endpoint, k = opts.control_public, i = id, s = core.key_to_base64(secret),
                         x = opts.extra })
  store[id] = { id = id, hash = M.hash(secret), expires = now + ttl, uses_left = uses }
  return str, id
end

--- Whether a token can still be used (exists, not expired, uses left).
-- Prunes old tokens.
-- @tparam table store
-- @tparam string id
-- @tparam[opt] integer now
-- @return true, or nil and "unknown token" | "token expired" | "token already used"
function M.usable(store, id, now)
  now = clock(now)
  M.prune(store, now)
  local entry = type(id) == "string" and store[id] or nil
  if not valid_entry(entry) then return nil, "unknown token" end
  if now >= entry.expires then return nil, "token expired" end
  if entry.uses_left <= 0 then return nil, "token already used" end
  return true
end

--- Checks a token id and secret (constant-time hash comparison).
-- @tparam table store
-- @tparam string id
-- @tparam string secret base64 as in the token, or the raw 32 bytes
-- @tparam[opt] integer now
-- @return true, or nil and "unknown token" | "bad token" | "token expired"
--   | "token already used"
function M.check(store, id, secret, now)
  now = clock(now)
  M.prune(store, now)
  local entry = type(id) == "string" and store[id] or nil
  if not valid_entry(entry) then return nil, "unknown token" end
  local raw = secret_raw(secret)
  if not raw or not core.equal(M.hash(raw), entry.hash) then return nil, "bad token" end
  return M.usable(store, id, now)
end

--- Uses a token once (after the joiner proved knowledge of it).
--
-- One use is one admitted joiner, not one request: a retry by the same
-- joiner (same token, node name and public key) after a lost answer is
-- recognised by the leader's admission record and does not come here
-- again (wgoverlay.joinproto `handle`); a node reclaimed because it never
-- came up does not get its use back.
-- @tparam table store
-- @tparam string id
-- @tparam[opt] integer now
-- @return true and the uses left, or nil and an error as `usable`
function M.consume(store, id, now)
  local ok, err = M.usable(store, id, now)
  if not ok then return nil, err end
  local entry = store[id]
  entry.uses_left = entry.uses_left - 1
  return true, entry.uses_left
end

--- The stored hash of a token (hex), for `joinproto.open_request`.
-- Expired and used-up tokens still answer until pruned (`PRUNE_AFTER`
-- past their expiry), so that their joiner gets an authenticated,
-- explicit refusal, and a joiner retrying after a lost answer is still
-- recognised (its retry must decrypt).
-- @tparam table store
-- @tparam string id
-- @return hash (64 hex characters) or nil
function M.lookup_hash(store, id)
  local entry = type(id) == "string" and store[id] or nil
  if valid_entry(entry) then return entry.hash end
  return nil
end

--- Revokes a token.
-- @tparam table store
-- @tparam string id
-- @return true, or nil and "unknown token"
function M.revoke(store, id)
  if store[id] == nil then return nil, "unknown token" end
  store[id] = nil
  return true
end

--- Lists tokens without their hashes, soonest expiry first.
-- @tparam table store
-- @tparam[opt] integer now
-- @treturn {{id=,expires=,uses_left=,expired=}...}
function M.list(store, now)
  now = clock(now)
  local out = {}
  for id, entry in pairs(store) do
    if valid_entry(entry) then
      out[#out + 1] = { id = id, expires = entry.expires, uses_left = entry.uses_left, expired = now >= entry.expires }
    end
  end
  table.sort(out, function(a, b)
    if a.expires ~= b.expires then return a.expires < b.expires end
    return a.id < b.id
  end)
  return out
end

return M
