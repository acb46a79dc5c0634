--- STUN messages (RFC 8489): a pure codec and small helpers, no I/O.
--
--    local stun = require "wgoverlay.nat.stun"
--    local bytes, tid = stun.binding_request()
--    local msg, err = stun.decode(reply)           -- nil, message on garbage
--    print(msg.class, msg.attrs["XOR-MAPPED-ADDRESS"].ip)
--
-- A decoded message is a table:
--
-- * `method` (integer, e.g. `stun.BINDING`), `class` ("request",
--   "indication", "success" or "error"), `type` (the 14-bit message type),
--   `transaction_id` (12 bytes), `raw` (the bytes decoded);
-- * `attributes`: the attributes in wire order, each `{ type = n, name =
--   "XOR-MAPPED-ADDRESS" or nil, value = ..., pos = offset of its header in
--   `raw` (1-based) }`;
-- * `attrs`: the value of the first attribute of each known name;
-- * `unknown_required`: types of comprehension-required attributes this
--   codec does not know (a server answers 420 with them).
--
-- Values: addresses are `{ family = 4|6, ip = "text", port = n }`;
-- USERNAME, REALM, NONCE, SOFTWARE, DATA and unknown attributes are raw
-- strings; ERROR-CODE is `{ code = n, reason = "text" }`; LIFETIME,
-- PRIORITY, FINGERPRINT, CHANNEL-NUMBER, REQUESTED-TRANSPORT and
-- REQUESTED-ADDRESS-FAMILY are integers; MESSAGE-INTEGRITY(-SHA256) are the
-- raw MACs (check them with `stun.check_integrity`).  Attributes after
-- MESSAGE-INTEGRITY other than MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are
-- ignored, as RFC 8489 §14.5 asks; anything after FINGERPRINT is an error,
-- and a FINGERPRINT that does not match is an error.
--
-- Crypto (HMAC-SHA1, HMAC-SHA256, MD5, random transaction ids) comes from
-- lua-luaossl; CRC-32 is computed here.
-- @module wgoverlay.nat.stun
local cidr = require "wgoverlay.cidr"
local endpoint = require "wgoverlay.endpoint"
local hmac = require "openssl.hmac"
local digest = require "openssl.digest"
local rand = require "openssl.rand"

local M = {}

--- The magic cookie (RFC 8489 §5).
M.MAGIC_COOKIE = 0x2112A442
local COOKIE_BYTES = "\x21\x12\xA4\x42"
local FINGERPRINT_XOR = 0x5354554e

--- Methods.
M.BINDING = 0x001
M.ALLOCATE = 0x003
M.REFRESH = 0x004
M.SEND = 0x006
M.DATA = 0x007
M.CREATE_PERMISSION = 0x008
M.CHANNEL_BIND = 0x009

local METHOD_NAMES = {
  [0x001] = "Binding", [0x003] = "Allocate", [0x004] = "Refresh", [0x006] = "Send",
  [0x007] = "Data", [0x008] = "CreatePermission", [0x009] = "ChannelBind",
}

--- Name of a method ("Allocate"), or "method 0x..." for unknown ones.
function M.method_name(m)
  return METHOD_NAMES[m] or string.format("method 0x%03x", m)
end

local CLASSES = { [0] = "request", [1] = "indication", [2] = "success", [3] = "error" }
local CLASS_BITS = { request = 0, indication = 1, success = 2, error = 3 }

-- Attribute types and how their values are coded.
local ATTRS = {
  { 0x0001, "MAPPED-ADDRESS", "addr" },
  { 0x0006, "USERNAME", "bytes" },
  { 0x0008, "MESSAGE-INTEGRITY", "mac20" },
  { 0x0009, "ERROR-CODE", "error" },
  { 0x000A, "UNKNOWN-ATTRIBUTES", "u16list" },
  { 0x000C, "CHANNEL-NUMBER", "channel" },
  { 0x000D, "LIFETIME", "u32" },
  { 0x0012, "XOR-PEER-ADDRESS", "xaddr" },
  { 0x0013, "DATA", "bytes" },
  { 0x0014, "REALM", "bytes" },
  { 0x0015, "NONCE", "bytes" },
  { 0x0016, "XOR-RELAYED-ADDRESS", "xaddr" },
  { 0x0017, "REQUESTED-ADDRESS-FAMILY", "family" },
  { 0x0018, "EVEN-PORT", "u8flag" },
  { 0x0019, "REQUESTED-TRANSPORT", "transport" },
  { 0x001A, "DONT-FRAGMENT", "empty" },
  { 0x001C, "MESSAGE-INTEGRITY-SHA256", "mac32" },
  { 0x001D, "PASSWORD-ALGORITHM", "bytes" },
  { 0x001E, "USERHASH", "bytes" },
  { 0x0020, "XOR-MAPPED-ADDRESS", "xaddr" },
  { 0x0022, "RESERVATION-TOKEN", "bytes" },
  { 0x0024, "PRIORITY", "u32" },
  { 0x0025, "USE-CANDIDATE", "empty" },
  { 0x8002, "PASSWORD-ALGORITHMS", "bytes" },
  { 0x8003, "ALTERNATE-DOMAIN", "bytes" },
  { 0x8022, "SOFTWARE", "bytes" },
  { 0x8023, "ALTERNATE-SERVER", "addr" },
  { 0x8028, "FINGERPRINT", "u32" },
  { 0x8029, "ICE-CONTROLLED", "bytes" },
  { 0x802A, "ICE-CONTROLLING", "bytes" },
  { 0x802B, "RESPONSE-ORIGIN", "addr" },
  { 0x802C, "OTHER-ADDRESS", "addr" },
}

--- Attribute type numbers by name (`stun.ATTR["XOR-MAPPED-ADDRESS"]`).
M.ATTR = {}
local ATTR_NAME, ATTR_KIND = {}, {}
for _, a in ipairs(ATTRS) do
  M.ATTR[a[2]] = a[1]
  ATTR_NAME[a[1]] = a[2]
  ATTR_KIND[a[1]] = a[3]
end
local T_MI, T_MI256, T_FP = 0x0008, 0x001C, 0x8028

---------------------------------------------------------------------------
-- CRC-32 (IEEE 802.3, reflected, as zlib) and the crypto helpers
---------------------------------------------------------------------------

local CRC_TABLE = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do
    if c & 1 == 1 then c = 0xEDB88320 ~ (c >> 1) else c = c >> 1 end
  end
  CRC_TABLE[i] = c
end

--- CRC-32 of a string (the checksum of zlib and of STUN's FINGERPRINT).
-- @treturn integer 0 .. 2^32-1
function M.crc32(s)
  local c = 0xFFFFFFFF
  for i = 1, #s do
    c = CRC_TABLE[(c ~ s:byte(i)) & 0xFF] ~ (c >> 8)
  end
  return c ~ 0xFFFFFFFF
end

--- HMAC-SHA1 (20 bytes).
function M.hmac_sha1(key, data) return hmac.new(key, "sha1"):final(data) end

--- HMAC-SHA256 (32 bytes).
function M.hmac_sha256(key, data) return hmac.new(key, "sha256"):final(data) end

--- The long-term credential key (RFC 8489 §9.2.2, MD5 algorithm):
-- MD5(username ":" realm ":" password), 16 raw bytes.  The password is
-- used as given (no OpaqueString processing).
function M.long_term_key(username, realm, password)
  return digest.new("md5"):final(username .. ":" .. realm .. ":" .. password)
end

--- A fresh random 96-bit transaction id.
function M.transaction_id() return rand.bytes(12) end

---------------------------------------------------------------------------
-- Addresses
---------------------------------------------------------------------------

-- Parses a bare IP address into family and a 4- or 16-byte string.
local function ip_bytes(ip)
  if type(ip) ~= "string" or ip:find("/", 1, true) then return nil end
  local c = cidr.parse(ip)
  if not c then return nil end
  return c.family, string.char(table.unpack(c.bytes))
end

local function ip_text(family, b)
  return cidr.address({ family = family, bytes = { b:byte(1, -1) } })
end

-- An address value from "ip:port", { ip =, port = }, or (ip, port).
local function addr_value(v)
  if type(v) == "string" then
    local e, err = endpoint.parse(v)
    if not e then return nil, err end
    return { ip = e.ip, port = e.port }
  end
  if type(v) == "table" and type(v.ip) == "string" and math.type(v.port) == "integer" then
    return v
  end
  return nil, "address must be \"IP:PORT\" or { ip =, port = }"
end

---------------------------------------------------------------------------
-- Encoding
---------------------------------------------------------------------------

local function message_type(method, class)
  return (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2)
    | ((class & 1) << 4) | ((class & 2) << 7)
end

local function encode_addr(v, xor, tid)
  local a, err = addr_value(v)
  if not a then return nil, err end
  local family, b = ip_bytes(a.ip)
  if not family then return nil, string.format("address \"%s\" invalid", tostring(a.ip)) end
  if a.port < 0 or a.port > 65535 then return nil, "port out of range" end
  local port = a.port
  if xor then
    port = port ~ 0x2112
    local mask = COOKIE_BYTES .. (family == 6 and tid or "")
    local out = {}
    for i = 1, #b do out[i] = string.char(b:byte(i) ~ mask:byte(i)) end
    b = table.concat(out)
  end
  return string.pack(">BBI2", 0, family == 4 and 1 or 2, port) .. b
end

local function encode_value(t, v, tid)
  local kind = ATTR_KIND[t]
  if type(v) == "string" and kind ~= "addr" and kind ~= "xaddr" then
    return v -- raw bytes, whatever the type
  end
  if kind == "addr" then return encode_addr(v, false, tid) end
  if kind == "xaddr" then return encode_addr(v, true, tid) end
  if kind == "empty" then return "" end
  if kind == "u32" and math.type(v) == "integer" and v >= 0 and v <= 0xFFFFFFFF then
    return string.pack(">I4", v)
  end
  if kind == "channel" and math.type(v) == "integer" and v >= 0 and v <= 0xFFFF then
    return string.pack(">I2I2", v, 0)
  end
  if kind == "transport" and math.type(v) == "integer" and v >= 0 and v <= 255 then
    return string.pack(">B", v) .. "\0\0\0"
  end
  if kind == "family" and (v == 4 or v == 6) then
    return string.pack(">B", v == 4 and 1 or 2) .. "\0\0\0"
  end
  if kind == "u8flag" then return string.pack(">B", v and 0x80 or 0) end
  if kind == "error" and type(v) == "table" and math.type(v.code) == "integer"
      and v.code >= 300 and v.code <= 699 then
    return string.pack(">I2BB", 0, v.code // 100, v.code % 100) .. (v.reason or "")
  end
  if kind == "u16list" and type(v) == "table" then
    local parts = {}
    for i, x in ipairs(v) do parts[i] = string.pack(">I2", x) end
    return table.concat(parts)
  end
  return nil, string.format("attribute %s: bad value", ATTR_NAME[t] or string.format("0x%04x", t))
end

local function attr_type(a)
  local t = a.type
  if t == nil and a.name then t = M.ATTR[a.name] end
  if math.type(t) ~= "integer" or t < 0 or t > 0xFFFF then
    return nil, "attribute: unknown name or bad type " .. tostring(a.name or a.type)
  end
  return t
end

local function tlv(t, value, pad)
  local n = #value
  return string.pack(">I2I2", t, n) .. value .. string.rep(pad, (4 - n % 4) % 4)
end

--- Encodes a message.
-- @tparam table msg `method`, `class` (name or 0..3), `transaction_id`
--   (12 bytes; random if absent), `attributes` (list of `{ type = n or
--   name = "USERNAME", value = ... }`; a string value is written raw)
-- @tparam[opt] table opts `key` (adds MESSAGE-INTEGRITY with this key),
--   `integrity` ("sha1" (default), "sha256" or "both"), `fingerprint`
--   (adds FINGERPRINT), `pad` (padding byte, default "\0")
-- @return bytes, or nil and a message
function M.encode(msg, opts)
  opts = opts or {}
  if type(msg) ~= "table" then return nil, "message must be a table" end
  local class = msg.class
  if type(class) == "string" then class = CLASS_BITS[class] end
  if math.type(class) ~= "integer" or class < 0 or class > 3 then return nil, "bad message class" end
  if math.type(msg.method) ~= "integer" or msg.method < 0 or msg.method > 0xFFF then
    return nil, "bad message method"
  end
  local tid = msg.transaction_id or M.transaction_id()
  if type(tid) ~= "string" or #tid ~= 12 then return nil, "transaction id must be 12 bytes" end
  local pad = opts.pad or "\0"
  local body = {}
  for _, a in ipairs(msg.attributes or {}) do
    local t, err = attr_type(a)
    if not t then return nil, err end
    local v
    v, err = encode_value(t, a.value, tid)
    if not v then return nil, err end
    if #v > 0xFFFF then return nil, "attribute value too long" end
    body[#body + 1] = tlv(t, v, pad)
  end
  local b = table.concat(body)
  local mtype = message_type(msg.method, class)
  local function header(len) return string.pack(">I2I2", mtype, len) .. COOKIE_BYTES .. tid end
  if opts.key then
    local integ = opts.integrity or "sha1"
    if integ == "sha1" or integ == "both" then
      local mac = M.hmac_sha1(opts.key, header(#b + 24) .. b)
      b = b .. tlv(T_MI, mac, pad)
    end
    if integ == "sha256" or integ == "both" then
      local mac = M.hmac_sha256(opts.key, header(#b + 36) .. b)
      b = b .. tlv(T_MI256, mac, pad)
    end
  end
  if opts.fingerprint then
    local crc = M.crc32(header(#b + 8) .. b) ~ FINGERPRINT_XOR
    b = b .. tlv(T_FP, string.pack(">I4", crc), pad)
  end
  if #b > 0xFFFF - 20 then return nil, "message too long" end
  return header(#b) .. b
end

---------------------------------------------------------------------------
-- Decoding
---------------------------------------------------------------------------

--- True when `bytes` looks like a STUN message: the first two bits are
-- zero, the magic cookie is there and the length field (a multiple of 4)
-- matches the datagram.
function M.is_stun(bytes)
  if type(bytes) ~= "string" or #bytes < 20 then return false end
  if bytes:byte(1) & 0xC0 ~= 0 or bytes:sub(5, 8) ~= COOKIE_BYTES then return false end
  local len = (bytes:byte(3) << 8) | bytes:byte(4)
  return len % 4 == 0 and len + 20 == #bytes
end

local function decode_addr(v, xor, tid)
  if #v < 4 then return nil end -- the first byte is ignored (RFC 8489 §14.1)
  local fam = v:byte(2)
  local port = (v:byte(3) << 8) | v:byte(4)
  local want = fam == 1 and 8 or fam == 2 and 20 or nil
  if #v ~= want then return nil end
  local b = v:sub(5)
  if xor then
    port = port ~ 0x2112
    local mask = COOKIE_BYTES .. tid
    local out = {}
    for i = 1, #b do out[i] = string.char(b:byte(i) ~ mask:byte(i)) end
    b = table.concat(out)
  end
  local family = fam == 1 and 4 or 6
  return { family = family, ip = ip_text(family, b), port = port }
end

local function decode_value(t, v, tid)
  local kind = ATTR_KIND[t]
  if kind == "addr" then return decode_addr(v, false, tid) end
  if kind == "xaddr" then return decode_addr(v, true, tid) end
  if kind == "mac20" then return #v == 20 and v or nil end
  if kind == "mac32" then return #v == 32 and v or nil end
  if kind == "u32" then return #v == 4 and string.unpack(">I4", v) or nil end
  if kind == "empty" then return #v == 0 and true or nil end
  if kind == "channel" then return #v == 4 and string.unpack(">I2", v) or nil end
  if kind == "transport" then return #v == 4 and v:byte(1) or nil end
  if kind == "u8flag" then
    if #v ~= 1 then return nil end
    return v:byte(1) & 0x80 ~= 0
  end
  if kind == "family" then
    if #v ~= 4 then return nil end
    local f = v:byte(1)
    return f == 1 and 4 or f == 2 and 6 or nil
  end
  if kind == "error" then
    if #v < 4 or #v > 4 + 763 then return nil end
    local class, number = v:byte(3) & 0x07, v:byte(4)
    if class < 3 or class > 6 or number > 99 then return nil end
    return { code = class * 100 + number, reason = v:sub(5) }
  end
  if kind == "u16list" then
    if #v % 2 ~= 0 then return nil end
    local list = {}
    for i = 1, #v, 2 do list[#list + 1] = (v:byte(i) << 8) | v:byte(i + 1) end
    return list
  end
  return v -- bytes and unknown attributes: kept raw
end

-- The bytes a MAC or CRC covers: the message up to the attribute at
-- `pos`, with the header's length pointing just past an attribute of
-- `vlen` bytes there.
local function covered(raw, pos, vlen)
  return raw:sub(1, 2) .. string.pack(">I2", pos - 21 + 4 + vlen) .. raw:sub(5, pos - 1)
end

--- Decodes a message strictly.  Never raises.
-- @string bytes a datagram
-- @return message table (see the module comment), or nil and a message
function M.decode(bytes)
  if type(bytes) ~= "string" then return nil, "STUN: not a string" end
  if #bytes < 20 then return nil, "STUN: shorter than a header" end
  if bytes:byte(1) & 0xC0 ~= 0 then return nil, "STUN: first two bits not zero" end
  if bytes:sub(5, 8) ~= COOKIE_BYTES then return nil, "STUN: no magic cookie" end
  local mtype, len = string.unpack(">I2I2", bytes)
  if len % 4 ~= 0 then return nil, "STUN: length not a multiple of 4" end
  if len + 20 ~= #bytes then return nil, "STUN: length does not match the datagram" end
  local tid = bytes:sub(9, 20)
  local method = (mtype & 0x000F) | ((mtype & 0x00E0) >> 1) | ((mtype & 0x3E00) >> 2)
  local class = ((mtype >> 4) & 1) | ((mtype >> 7) & 2)
  local msg = { type = mtype, method = method, class = CLASSES[class], transaction_id = tid,
                raw = bytes, attributes = {}, attrs = {}, unknown_required = {} }
  local pos, seen_mi, seen_mi256 = 21, false, false
  while pos <= #bytes do
    if pos + 3 > #bytes then return nil, "STUN: truncated attribute header" end
    local t, n = string.unpack(">I2I2", bytes, pos)
    local padded = n + (4 - n % 4) % 4
    if pos + 4 + padded - 1 > #bytes then return nil, "STUN: attribute longer than the message" end
    local raw = bytes:sub(pos + 4, pos + 3 + n)
    local name = ATTR_NAME[t] or string.format("0x%04X", t)
    if msg.attrs.FINGERPRINT ~= nil then return nil, "STUN: attribute after FINGERPRINT" end
    local keep = true
    if seen_mi256 and t ~= T_FP then keep = false
    elseif seen_mi and t ~= T_MI256 and t ~= T_FP then keep = false end
    if keep then
      local v = decode_value(t, raw, tid)
      if v == nil then return nil, "STUN: malformed " .. name end
      if t == T_FP then
        local want = M.crc32(covered(bytes, pos, 4)) ~ FINGERPRINT_XOR
        if v ~= want then return nil, "STUN: FINGERPRINT mismatch" end
      end
      msg.attributes[#msg.attributes + 1] = { type = t, name = ATTR_NAME[t], value = v, pos = pos }
      if ATTR_NAME[t] and msg.attrs[ATTR_NAME[t]] == nil then msg.attrs[ATTR_NAME[t]] = v end
      if not ATTR_KIND[t] and t < 0x8000 then
        msg.unknown_required[#msg.unknown_required + 1] = t
      end
      if t == T_MI then seen_mi = true end
      if t == T_MI256 then seen_mi256 = true end
    end
    pos = pos + 4 + padded
  end
  return msg
end

--- First value of an attribute (by name or type number), or nil.
function M.get(msg, which)
  if type(which) == "string" then return msg.attrs[which] end
  for _, a in ipairs(msg.attributes) do
    if a.type == which then return a.value end
  end
end

local function find_attr(msg, t)
  for _, a in ipairs(msg.attributes) do
    if a.type == t then return a end
  end
end

--- Checks a decoded message's MESSAGE-INTEGRITY-SHA256 (if it has one)
-- or else its MESSAGE-INTEGRITY against `key` (the password for
-- short-term credentials, `long_term_key` for long-term ones).
-- @return true, or false and a reason
function M.check_integrity(msg, key)
  local a256, a1 = find_attr(msg, T_MI256), find_attr(msg, T_MI)
  if a256 then
    if M.hmac_sha256(key, covered(msg.raw, a256.pos, 32)) == a256.value then return true end
    return false, "MESSAGE-INTEGRITY-SHA256 mismatch"
  end
  if a1 then
    if M.hmac_sha1(key, covered(msg.raw, a1.pos, 20)) == a1.value then return true end
    return false, "MESSAGE-INTEGRITY mismatch"
  end
  return false, "no MESSAGE-INTEGRITY"
end

--- Whether the message carries a FINGERPRINT (decode already rejected
-- wrong ones).
function M.has_fingerprint(msg)
  return msg.attrs.FINGERPRINT ~= nil
end

---------------------------------------------------------------------------
-- Binding
---------------------------------------------------------------------------

--- A Binding request.
-- @tparam[opt] table opts `transaction_id`, `software`, `fingerprint`
--   (default true: the WireGuard port carries other protocols too)
-- @return bytes, transaction id
function M.binding_request(opts)
  opts = opts or {}
  local tid = opts.transaction_id or M.transaction_id()
  local attrs = {}
  if opts.software then attrs[1] = { type = M.ATTR.SOFTWARE, value = opts.software } end
  local bytes = assert(M.encode({ method = M.BINDING, class = "request", transaction_id = tid,
                                  attributes = attrs }, { fingerprint = opts.fingerprint ~= false }))
  return bytes, tid
end

--- The error response to a request that carries comprehension-required
-- attributes (type < 0x8000) this codec does not know (RFC 8489
-- §6.3.1.1): ERROR-CODE 420 "Unknown Attribute" and UNKNOWN-ATTRIBUTES
-- (§14.9) listing each such type once, in order of appearance.  Same
-- method and transaction id, with a FINGERPRINT.
-- @tparam table msg decoded request with a non-empty `unknown_required`
-- @tparam[opt] table opts `software`
-- @return bytes, or nil and a message
function M.unknown_attributes_response(msg, opts)
  local list, seen = {}, {}
  for _, t in ipairs(msg.unknown_required or {}) do
    if not seen[t] then
      seen[t] = true
      list[#list + 1] = t
    end
  end
  if #list == 0 then return nil, "no unknown comprehension-required attribute" end
  local attrs = { { type = M.ATTR["ERROR-CODE"], value = { code = 420, reason = "Unknown Attribute" } },
                  { type = M.ATTR["UNKNOWN-ATTRIBUTES"], value = list } }
  if opts and opts.software then attrs[3] = { type = M.ATTR.SOFTWARE, value = opts.software } end
  return M.encode({ method = msg.method, class = "error", transaction_id = msg.transaction_id,
                    attributes = attrs }, { fingerprint = true })
end

--- The response a node sends to a Binding request it received on its
-- own listen port, from `from_ip`:`from_port` (or from one "IP:PORT"
-- string, as datagram events give it): success with XOR-MAPPED-ADDRESS,
-- or a 420 error (`unknown_attributes_response`) when the request carries
-- unknown comprehension-required attributes.
-- @param request bytes or a decoded message
-- @tparam[opt] table opts `software`
-- @return bytes, or nil and a message
function M.binding_response(request, from_ip, from_port, opts)
  local msg, err = request, nil
  if type(request) == "string" then
    msg, err = M.decode(request)
    if not msg then return nil, err end
  end
  if type(msg) ~= "table" or msg.method ~= M.BINDING or msg.class ~= "request" then
    return nil, "not a STUN Binding request"
  end
  local a
  if from_port == nil then
    a, err = addr_value(from_ip)
  else
    a, err = addr_value({ ip = from_ip, port = from_port })
  end
  if not a then return nil, err end
  if type(msg.unknown_required) == "table" and #msg.unknown_required > 0 then
    return M.unknown_attributes_response(msg, opts)
  end
  local attrs = { { type = M.ATTR["XOR-MAPPED-ADDRESS"], value = a } }
  if opts and opts.software then attrs[2] = { type = M.ATTR.SOFTWARE, value = opts.software } end
  return M.encode({ method = M.BINDING, class = "success", transaction_id = msg.transaction_id,
                    attributes = attrs }, { fingerprint = true })
end

---------------------------------------------------------------------------
-- Client-side matching of responses to requests
---------------------------------------------------------------------------

local Matcher = {}
Matcher.__index = Matcher

--- A table of outstanding requests: a response is accepted only if its
-- transaction id is outstanding and it comes from the server the request
-- went to.
-- @tparam[opt] table opts `clock` (function returning seconds)
function M.matcher(opts)
  opts = opts or {}
  return setmetatable({ pending = {}, clock = opts.clock or os.time }, Matcher)
end

--- Records a request sent to `server` ("IP:PORT").
-- @return true, or nil and a message
function Matcher:track(tid, server, info)
  local norm, err = endpoint.normalize(server)
  if not norm then return nil, err end
  self.pending[tid] = { server = norm, sent = self.clock(), info = info, transaction_id = tid }
  return true
end

--- Builds a Binding request to `server` and records it.
-- @return bytes, transaction id; or nil and a message
function Matcher:binding_request(server, opts)
  local bytes, tid = M.binding_request(opts)
  local ok, err = self:track(tid, server)
  if not ok then return nil, err end
  return bytes, tid
end

--- Matches a datagram that arrived from `from`.  On success the request
-- is no longer outstanding.
-- @return decoded message and the request record (`server`, `sent`,
--   `info`), or nil and the reason it was ignored
function Matcher:match(from, bytes)
  local msg, err = M.decode(bytes)
  if not msg then return nil, err end
  if msg.class ~= "success" and msg.class ~= "error" then return nil, "not a response" end
  local req = self.pending[msg.transaction_id]
  if not req then return nil, "unknown transaction id" end
  if endpoint.normalize(from) ~= req.server then
    return nil, "response from " .. tostring(from) .. ", request went to " .. req.server
  end
  self.pending[msg.transaction_id] = nil
  return msg, req
end

--- Forgets requests older than `max_age` seconds; returns their records.
function Matcher:expire(max_age, now)
  now = now or self.clock()
  local gone = {}
  for tid, req in pairs(self.pending) do
    if now - req.sent >= max_age then
      gone[#gone + 1] = req
      self.pending[tid] = nil
    end
  end
  return gone
end

--- Number of outstanding requests.
function Matcher:count()
  local n = 0
  for _ in pairs(self.pending) do n = n + 1 end
  return n
end

---------------------------------------------------------------------------
-- NAT mapping behaviour
---------------------------------------------------------------------------

--- Classifies NAT mapping behaviour (RFC 4787 / 5780 terms) from the
-- mapped addresses two different servers reported for one local socket.
-- @param a mapped address ("IP:PORT" or `{ ip =, port = }`)
-- @param b the same from another server
-- @return "endpoint-independent" when equal, else "endpoint-dependent";
--   nil and a message for a missing or invalid address
function M.classify_mapping(a, b)
  local function norm(x)
    local v, err = addr_value(x)
    if not v then return nil, err end
    local family, bytes = ip_bytes(v.ip)
    if not family then return nil, "address invalid" end
    return endpoint.format(ip_text(family, bytes), v.port)
  end
  local na, ea = norm(a)
  if not na then return nil, "first mapped address: " .. ea end
  local nb, eb = norm(b)
  if not nb then return nil, "second mapped address: " .. eb end
  return na == nb and "endpoint-independent" or "endpoint-dependent"
end

return M
