--- DNS messages (RFC 1035) and the authoritative overlay zone (pure).
--
-- * `dns.parse(bytes)` decodes any message; malformed input never raises,
--   it returns `nil, message` (and the header when that much was readable).
-- * `dns.build(msg)` encodes a message table (with name compression).
-- * `dns.query(name, qtype, opts)` builds a query (clients, tests).
-- * `dns.zone.new(origin)` is the authoritative zone; `zone:answer(bytes)`
--   turns a query into a response (or nil: drop / forward).
-- * `dns.server` (lazily loaded from `wgoverlay.dns_server`) serves a zone
--   over UDP and TCP with luv.
--
-- Names inside parsed messages are kept both as raw labels (`labels`,
-- case preserved) and as presentation text (`name`, no trailing dot,
-- `\.` / `\DDD` escapes for odd bytes).  Comparisons are ASCII
-- case-insensitive and label-wise.
--
-- Cost is bounded by the message size (the server runs in one event loop):
-- section counts that cannot fit the message are refused before any name
-- is read; names follow RFC 1035 (labels of at most 63 octets, names of at
-- most 255, compression pointers only backwards, at most `MAX_HOPS` per
-- name); and one parse takes at most `2 * #msg + 512` steps (a label read
-- or a pointer followed), so compression cannot make a message expand
-- into more work than a small multiple of its bytes.  `zone:answer`
-- decides from the 12-byte header alone (`check_query`) what needs no
-- name: responses are dropped, opcodes other than QUERY get NOTIMP, a
-- question count other than 1 or a query over `QUERY_MAX` bytes FORMERR.
-- @module wgoverlay.dns
local cidr = require "wgoverlay.cidr"

local byte, char, sub, lower = string.byte, string.char, string.sub, string.lower
local spack, concat = string.pack, table.concat

local M = {}

--- Record types by name (and `M.TYPE_NAME` by number).
M.TYPE = { A = 1, NS = 2, CNAME = 5, SOA = 6, PTR = 12, MX = 15, TXT = 16, AAAA = 28,
  SRV = 33, OPT = 41, IXFR = 251, AXFR = 252, MAILB = 253, MAILA = 254, ANY = 255 }
M.TYPE_NAME = {}
for k, v in pairs(M.TYPE) do M.TYPE_NAME[v] = k end

--- Classes.
M.CLASS = { IN = 1, CH = 3, HS = 4, NONE = 254, ANY = 255 }

--- Response codes (BADVERS needs EDNS: it is an extended rcode).
M.RCODE = { NOERROR = 0, FORMERR = 1, SERVFAIL = 2, NXDOMAIN = 3, NOTIMP = 4,
  REFUSED = 5, BADVERS = 16 }
M.RCODE_NAME = {}
for k, v in pairs(M.RCODE) do M.RCODE_NAME[v] = k end

--- Largest UDP payload we advertise and send (the DNS flag day value).
M.UDP_MAX = 1232
--- Classic UDP limit without EDNS.
M.UDP_MIN = 512

--- Largest query answered beyond a header-only FORMERR: real queries are
-- a few dozen bytes; this leaves room for EDNS options and padding.
M.QUERY_MAX = 1232

-- Compression pointers followed within one name: as many as a name of
-- 127 one-octet labels, each compressed to its own suffix, could need.
local MAX_HOPS = 127

-- Parse budget: name-decoding steps (labels read, pointers followed) per
-- message byte, plus a constant for small messages.
local STEPS_PER_BYTE, STEPS_BASE = 2, 512

-- Steps left for the parse under way (one counter for the module is
-- enough: a parse never yields).
local budget = 0

--- Work counters (a test and accounting hook): `steps` is the number of
-- name-decoding steps of every parse so far, `parses` the number of
-- messages that got past the header.
M.work = { steps = 0, parses = 0 }

---------------------------------------------------------------------------
-- Names
---------------------------------------------------------------------------

local function label_text(l)
  if not l:find("[^%w%-_]") then return l end
  return (l:gsub("[^%w%-_]", function(c)
    local b = byte(c)
    if c == "." or c == "\\" then return "\\" .. c end
    if b < 33 or b > 126 then return ("\\%03d"):format(b) end
    return c
  end))
end

--- Presentation form of a label list (no trailing dot; "" for the root).
function M.labels_text(labels)
  local parts = {}
  for i, l in ipairs(labels) do parts[i] = label_text(l) end
  return concat(parts, ".")
end

--- Split a presentation name into labels (`\.` and `\DDD` escapes;
-- a trailing dot is optional).
-- @treturn table labels, or nil and a message
function M.name_labels(text)
  if type(text) ~= "string" then return nil, "name must be a string" end
  if text == "" or text == "." then return {} end
  local labels, cur, i, n, wire = {}, {}, 1, #text, 1
  local function finish()
    local l = concat(cur)
    if #l == 0 then return nil, "empty label in name" end
    if #l > 63 then return nil, "label longer than 63 bytes" end
    wire = wire + #l + 1
    labels[#labels + 1], cur = l, {}
    return true
  end
  while i <= n do
    local c = sub(text, i, i)
    if c == "\\" then
      local d = text:match("^%d%d%d", i + 1)
      if d then
        if tonumber(d) > 255 then return nil, "bad escape in name" end
        cur[#cur + 1], i = char(tonumber(d)), i + 4
      elseif i < n then
        cur[#cur + 1], i = sub(text, i + 1, i + 1), i + 2
      else
        return nil, "bad escape in name"
      end
    elseif c == "." then
      local ok, err = finish()
      if not ok then return nil, err end
      i = i + 1
    else
      cur[#cur + 1], i = c, i + 1
    end
  end
  if #cur > 0 then
    local ok, err = finish()
    if not ok then return nil, err end
  end
  if wire > 255 then return nil, "name longer than 255 bytes" end
  return labels
end

-- Lowercased labels (ASCII only: DNS case-insensitivity, RFC 4343).
local function lower_labels(labels)
  local out = {}
  for i, l in ipairs(labels) do out[i] = lower(l) end
  return out
end

-- Read a possibly compressed name at 1-based `pos`.
-- Returns labels, position after the name | nil, message.
-- A pointer must point before the start of the label run holding it, so
-- the jumps strictly decrease and cannot loop.
local function read_name(msg, pos)
  local labels, wire, len = {}, 1, #msg
  local seg_start, after, jumps = pos, nil, 0
  while true do
    local b = byte(msg, pos)
    if b == nil then return nil, "name runs past the end of the message" end
    if b == 0 then
      return labels, after or pos + 1
    end
    budget = budget - 1
    if budget < 0 then return nil, "names take too much work to decode" end
    local kind = b & 0xC0
    if kind == 0xC0 then
      local b2 = byte(msg, pos + 1)
      if b2 == nil then return nil, "compression pointer runs past the end of the message" end
      local target = ((b & 0x3F) << 8 | b2) + 1
      if target >= seg_start then return nil, "compression pointer does not point backwards" end
      jumps = jumps + 1
      if jumps > MAX_HOPS then return nil, "too many compression pointers" end
      after = after or pos + 2
      pos, seg_start = target, target
    elseif kind ~= 0 then
      return nil, "unsupported label type"
    else
      if pos + b > len then return nil, "label runs past the end of the message" end
      wire = wire + b + 1
      if wire > 255 then return nil, "name longer than 255 bytes" end
      labels[#labels + 1] = sub(msg, pos + 1, pos + b)
      pos = pos + b + 1
    end
  end
end

---------------------------------------------------------------------------
-- Parsing
---------------------------------------------------------------------------

local function u16(msg, pos)
  local a, b = byte(msg, pos, pos + 1)
  if b == nil then return nil end
  return a << 8 | b
end

local function u32(msg, pos)
  local a, b, c, d = byte(msg, pos, pos + 3)
  if d == nil then return nil end
  return a << 24 | b << 16 | c << 8 | d
end

--- Decode the 12-byte header.
-- @treturn table `{id, qr, opcode, aa, tc, rd, ra, z, ad, cd, rcode,
--   qdcount, ancount, nscount, arcount}` (flags are booleans), or nil, message
function M.parse_header(msg)
  if type(msg) ~= "string" or #msg < 12 then return nil, "message shorter than a DNS header" end
  local id, f1, f2 = u16(msg, 1), byte(msg, 3), byte(msg, 4)
  return {
    id = id, qr = f1 & 0x80 ~= 0, opcode = f1 >> 3 & 0xF, aa = f1 & 0x4 ~= 0,
    tc = f1 & 0x2 ~= 0, rd = f1 & 0x1 ~= 0, ra = f2 & 0x80 ~= 0, z = f2 & 0x40 ~= 0,
    ad = f2 & 0x20 ~= 0, cd = f2 & 0x10 ~= 0, rcode = f2 & 0xF,
    qdcount = u16(msg, 5), ancount = u16(msg, 7), nscount = u16(msg, 9), arcount = u16(msg, 11),
  }
end

local function ip_text(raw)
  local bytes = { byte(raw, 1, -1) }
  return cidr.address({ family = #raw == 4 and 4 or 6, bytes = bytes, prefix = #raw * 8 })
end

-- Decode well-known rdata; returns the decoded value or nil, message.
local function decode_rdata(msg, rtype, pos, rdlen)
  local raw = sub(msg, pos, pos + rdlen - 1)
  if rtype == M.TYPE.A then
    if rdlen ~= 4 then return nil, "A record of the wrong length" end
    return ip_text(raw)
  elseif rtype == M.TYPE.AAAA then
    if rdlen ~= 16 then return nil, "AAAA record of the wrong length" end
    return ip_text(raw)
  elseif rtype == M.TYPE.NS or rtype == M.TYPE.CNAME or rtype == M.TYPE.PTR then
    local labels, after = read_name(msg, pos)
    if not labels then return nil, after end
    if after ~= pos + rdlen then return nil, "name does not fill its record" end
    return M.labels_text(labels)
  elseif rtype == M.TYPE.SOA then
    local mname, p1 = read_name(msg, pos)
    if not mname then return nil, p1 end
    local rname, p2 = read_name(msg, p1)
    if not rname then return nil, p2 end
    if p2 + 20 ~= pos + rdlen then return nil, "SOA record of the wrong length" end
    return { mname = M.labels_text(mname), rname = M.labels_text(rname), serial = u32(msg, p2),
      refresh = u32(msg, p2 + 4), retry = u32(msg, p2 + 8), expire = u32(msg, p2 + 12),
      minimum = u32(msg, p2 + 16) }
  end
  return raw
end

-- One resource record at `pos`: record, next position | nil, message.
local function read_rr(msg, pos)
  local labels, p = read_name(msg, pos)
  if not labels then return nil, p end
  if p + 10 > #msg + 1 then return nil, "record header runs past the end of the message" end
  local rtype, class, ttl, rdlen = u16(msg, p), u16(msg, p + 2), u32(msg, p + 4), u16(msg, p + 8)
  local rpos = p + 10
  if rpos + rdlen > #msg + 1 then return nil, "record data runs past the end of the message" end
  local rr = { name = M.labels_text(labels), labels = labels, type = rtype, class = class,
    ttl = ttl, rdata = sub(msg, rpos, rpos + rdlen - 1) }
  if rtype ~= M.TYPE.OPT then
    local data, err = decode_rdata(msg, rtype, rpos, rdlen)
    if data == nil then return nil, err end
    rr.data = data
  end
  return rr, rpos + rdlen
end

-- The EDNS record of the additional section, validated (RFC 6891 6.1.1).
local function read_edns(m)
  local edns
  for _, rr in ipairs(m.additional) do
    if rr.type == M.TYPE.OPT then
      if edns then return nil, "more than one OPT record" end
      if #rr.labels ~= 0 then return nil, "OPT record with a non-root owner" end
      edns = { udp_size = rr.class, ext_rcode = rr.ttl >> 24, version = rr.ttl >> 16 & 0xFF,
        do_bit = rr.ttl & 0x8000 ~= 0, options = rr.rdata }
    end
  end
  for _, sect in ipairs({ m.answers, m.authority }) do
    for _, rr in ipairs(sect) do
      if rr.type == M.TYPE.OPT then return nil, "OPT record outside the additional section" end
    end
  end
  return true, edns
end

-- The body of parse, after the header (runs under `budget`).
local function parse_body(msg, m)
  local header = m
  local pos = 13
  m.questions = {}
  for i = 1, m.qdcount do
    local labels, p = read_name(msg, pos)
    if not labels then return nil, "question: " .. p, header end
    if p + 3 > #msg then return nil, "question runs past the end of the message", header end
    m.questions[i] = { name = M.labels_text(labels), labels = labels, qtype = u16(msg, p),
      qclass = u16(msg, p + 2) }
    pos = p + 4
  end
  m.question = m.questions[1]
  for _, sect in ipairs({ { "answers", m.ancount }, { "authority", m.nscount }, { "additional", m.arcount } }) do
    local list = {}
    for i = 1, sect[2] do
      local rr, p = read_rr(msg, pos)
      if not rr then return nil, sect[1] .. ": " .. p, header end
      list[i], pos = rr, p
    end
    m[sect[1]] = list
  end
  local ok, edns = read_edns(m)
  if not ok then return nil, edns, header end
  m.edns = edns
  if edns then m.rcode = edns.ext_rcode << 4 | m.rcode end
  return m
end

--- Decode a whole message.  Never raises on malformed input; takes time
-- linear in `#msg` (see the module header).
-- @tparam string msg wire bytes
-- @treturn table the header fields plus `questions` (`{name, labels,
--   qtype, qclass}`), `question` (the first), `answers`, `authority`,
--   `additional` (records `{name, labels, type, class, ttl, rdata, data}`;
--   `data` is the address text for A/AAAA, the name for NS/CNAME/PTR, a
--   table for SOA, the raw rdata otherwise) and `edns` (`{udp_size,
--   ext_rcode, version, do_bit, options}` or nil)
-- @return or nil, message, header (the header when it was readable)
function M.parse(msg)
  local m, err = M.parse_header(msg)
  if not m then return nil, err end
  -- a question takes at least 5 bytes, a record 11: counts that cannot
  -- fit are refused before any name is read
  if 12 + 5 * m.qdcount + 11 * (m.ancount + m.nscount + m.arcount) > #msg then
    return nil, "section counts run past the end of the message", m
  end
  local limit = STEPS_PER_BYTE * #msg + STEPS_BASE
  budget = limit
  local r, perr, h = parse_body(msg, m)
  local work = M.work
  work.steps, work.parses = work.steps + limit - math.max(budget, 0), work.parses + 1
  return r, perr, h
end

---------------------------------------------------------------------------
-- Building
---------------------------------------------------------------------------

-- Output buffer with name compression.
local function new_buf()
  return { parts = {}, len = 0, dict = {} }
end

local function put(buf, s)
  buf.parts[#buf.parts + 1] = s
  buf.len = buf.len + #s
end

local function as_labels(name)
  if type(name) == "table" then return name end
  local labels, err = M.name_labels(name)
  if not labels then error(("dns.build: bad name %q: %s"):format(tostring(name), err), 0) end
  return labels
end

-- Write a name; `compress` false writes it in full (but still records it
-- as a target for later pointers).
local function put_name(buf, name, compress)
  local labels = as_labels(name)
  local suffix, n = {}, #labels
  local acc = ""
  for i = n, 1, -1 do
    acc = char(#labels[i]) .. lower(labels[i]) .. acc
    suffix[i] = acc
  end
  for i = 1, n do
    local target = compress ~= false and buf.dict[suffix[i]]
    if target then
      put(buf, spack(">I2", 0xC000 | target))
      return
    end
    if buf.len < 0x4000 and not buf.dict[suffix[i]] then buf.dict[suffix[i]] = buf.len end
    put(buf, char(#labels[i]) .. labels[i])
  end
  put(buf, "\0")
end

local function ip_bytes(text, family)
  local c = cidr.parse(text)
  if not c or c.family ~= family or c.prefix ~= (family == 4 and 32 or 128) then
    error(("dns.build: bad IPv%d address %q"):format(family, tostring(text)), 0)
  end
  return char(table.unpack(c.bytes))
end

-- Encode rdata of `rr` (names compressed where RFC 3597 allows it).
local function put_rdata(buf, rr)
  local t = rr.type
  local len_at = #buf.parts + 1
  put(buf, "\0\0") -- placeholder for RDLENGTH
  local start = buf.len
  if rr.rdata ~= nil then
    put(buf, rr.rdata)
  elseif t == M.TYPE.A then
    put(buf, ip_bytes(rr.data, 4))
  elseif t == M.TYPE.AAAA then
    put(buf, ip_bytes(rr.data, 6))
  elseif t == M.TYPE.NS or t == M.TYPE.CNAME or t == M.TYPE.PTR then
    put_name(buf, rr.data)
  elseif t == M.TYPE.SOA then
    local d = rr.data
    put_name(buf, d.mname)
    put_name(buf, d.rname)
    put(buf, spack(">I4I4I4I4I4", d.serial, d.refresh, d.retry, d.expire, d.minimum))
  else
    error("dns.build: record of type " .. tostring(t) .. " needs rdata", 0)
  end
  buf.parts[len_at] = spack(">I2", buf.len - start)
end

local function put_rr(buf, rr)
  put_name(buf, rr.labels or rr.name)
  put(buf, spack(">I2I2I4", rr.type, rr.class or M.CLASS.IN, rr.ttl or 0))
  put_rdata(buf, rr)
end

local function opt_rr(edns, rcode)
  local ttl = (rcode >> 4 & 0xFF) << 24 | (edns.version or 0) << 16 | (edns.do_bit and 0x8000 or 0)
  return { labels = {}, type = M.TYPE.OPT, class = edns.udp_size or M.UDP_MAX, ttl = ttl,
    rdata = edns.options or "" }
end

local function flag(v, bit) return v and bit or 0 end

--- Encode a message.  Raises on invalid input (a programming error).
-- @tparam table m header fields (`id`, `qr`, `opcode`, `aa`, `tc`, `rd`,
--   `ra`, `ad`, `cd`, `rcode` (extended values need `edns`)), `questions`
--   (or `question`) `{name|labels, qtype, qclass}`, `answers`,
--   `authority`, `additional` (records `{name|labels, type, class, ttl,
--   data|rdata}`), `edns` (`{udp_size, version, do_bit, options}`: adds
--   an OPT record)
-- @treturn string wire bytes
function M.build(m)
  local buf = new_buf()
  local questions = m.questions or { m.question }
  local rcode = m.rcode or 0
  local additional = {}
  for i, rr in ipairs(m.additional or {}) do additional[i] = rr end
  if m.edns then additional[#additional + 1] = opt_rr(m.edns, rcode) end
  local f1 = flag(m.qr, 0x80) | (m.opcode or 0) << 3 | flag(m.aa, 4) | flag(m.tc, 2) | flag(m.rd, 1)
  local f2 = flag(m.ra, 0x80) | flag(m.ad, 0x20) | flag(m.cd, 0x10) | (rcode & 0xF)
  put(buf, spack(">I2BBI2I2I2I2", m.id or 0, f1, f2, #questions, #(m.answers or {}),
    #(m.authority or {}), #additional))
  for _, q in ipairs(questions) do
    put_name(buf, q.labels or q.name)
    put(buf, spack(">I2I2", q.qtype, q.qclass or M.CLASS.IN))
  end
  for _, sect in ipairs({ m.answers or {}, m.authority or {}, additional }) do
    for _, rr in ipairs(sect) do put_rr(buf, rr) end
  end
  return concat(buf.parts)
end

--- Build a query.
-- @tparam string name
-- @tparam[opt="A"] string|integer qtype type name or number
-- @tparam[opt] table opts `id` (random), `rd` (true), `qclass` (IN),
--   `edns` (false; true or a table `{udp_size, do_bit}` adds OPT)
-- @treturn string
function M.query(name, qtype, opts)
  opts = opts or {}
  if type(qtype) == "string" then qtype = M.TYPE[qtype:upper()] end
  local edns = opts.edns
  if edns == true then edns = { udp_size = M.UDP_MAX } end
  return M.build({
    id = opts.id or math.random(0, 0xFFFF), rd = opts.rd ~= false,
    question = { name = name, qtype = qtype or M.TYPE.A, qclass = opts.qclass or M.CLASS.IN },
    edns = edns or nil,
  })
end

--- What the 12-byte header alone says about a query, in O(1): nothing
-- here reads a name.
-- @treturn table the header, plus an rcode for a query that gets an
--   error whatever its body: FORMERR for a question count other than 1 or
--   more than `QUERY_MAX` bytes (answered from the header alone), else
--   NOTIMP for an opcode other than QUERY (its question is still echoed,
--   or FORMERR if the body does not parse)
-- @return or nil, "drop": shorter than a header, or a response (QR set)
function M.check_query(msg)
  local h = M.parse_header(msg)
  if not h or h.qr then return nil, "drop" end
  if h.qdcount ~= 1 or #msg > M.QUERY_MAX then return h, M.RCODE.FORMERR end
  if h.opcode ~= 0 then return h, M.RCODE.NOTIMP end
  return h
end

--- A bare error response to `query` (header, and the question when it
-- parses), e.g. SERVFAIL after a forwarding timeout.
-- @treturn string or nil when not even the header is readable (or the
--   message is itself a response)
function M.error_response(query, rcode)
  local h, hrcode = M.check_query(query)
  if not h then return nil end
  local m = hrcode ~= M.RCODE.FORMERR and M.parse(query)
  local questions = {}
  if m then questions = m.questions end
  return M.build({ id = h.id, qr = true, opcode = h.opcode, rd = h.rd, rcode = rcode & 0xF,
    questions = questions })
end

local function same_question(a, b)
  if a.qtype ~= b.qtype or a.qclass ~= b.qclass or #a.labels ~= #b.labels then return false end
  for i = 1, #a.labels do
    if lower(a.labels[i]) ~= lower(b.labels[i]) then return false end
  end
  return true
end

--- True if `response` answers `query` (same id, QR set, same question):
-- used to accept a forwarded answer.
function M.matches(query, response)
  local q, r = M.parse(query), M.parse(response)
  if not q or not r or not r.qr or r.id ~= q.id or r.qdcount ~= q.qdcount then return false end
  for i = 1, q.qdcount do
    if not same_question(q.questions[i], r.questions[i]) then return false end
  end
  return true
end

---------------------------------------------------------------------------
-- The zone
---------------------------------------------------------------------------

local Zone = {}
Zone.__index = Zone
M.zone = {}

local KINDS = { A = 4, AAAA = 6 }

-- Lowercase label list of a zone-API name, relative names completed with
-- the origin.  Returns labels, key | nil, message.
function Zone:_name(name)
  if type(name) ~= "string" then error("dns zone: name must be a string", 3) end
  local absolute = name:sub(-1) == "."
  local labels, err = M.name_labels(name)
  if not labels then return nil, ("name %q: %s"):format(name, err) end
  labels = lower_labels(labels)
  for _, l in ipairs(labels) do
    if l:find("[^%w%-_]") then return nil, ("name %q: only letters, digits, - and _ allowed"):format(name) end
  end
  if not self:_in_zone(labels) then
    if absolute then return nil, ("name %q is outside zone %s"):format(name, self.origin) end
    for _, l in ipairs(self.origin_labels) do labels[#labels + 1] = l end
    if #concat(labels, ".") > 253 then return nil, ("name %q is too long"):format(name) end
  end
  return labels, concat(labels, ".")
end

-- True if lowercase `labels` are the origin or below it.
function Zone:_in_zone(labels)
  local o, n = self.origin_labels, #labels
  if n < #o then return false end
  for i = 1, #o do
    if labels[n - #o + i] ~= o[i] then return false end
  end
  return true
end

--- A new, empty zone.
-- @tparam string origin e.g. "overlay.internal"
-- @tparam[opt] table opts `ttl` (30, answers), `serial` (1), `ns` (list of
--   name server names for NS answers at the apex; none by default),
--   `mname`/`rname` (SOA names; default the origin and
--   "hostmaster.<origin>"), `refresh`, `retry`, `expire`, `minimum` (SOA
--   timers; `minimum` (10) is the negative-caching TTL)
-- @return zone, or nil and a message
function M.zone.new(origin, opts)
  opts = opts or {}
  local labels, err = M.name_labels(origin)
  if not labels or #labels == 0 then return nil, ("zone origin %q: %s"):format(tostring(origin), err or "empty") end
  labels = lower_labels(labels)
  local z = setmetatable({
    origin = concat(labels, "."), origin_labels = labels,
    ttl = opts.ttl or 30, serial = opts.serial or 1,
    soa = { mname = opts.mname or concat(labels, "."), rname = opts.rname or ("hostmaster." .. concat(labels, ".")),
      refresh = opts.refresh or 3600, retry = opts.retry or 600, expire = opts.expire or 86400,
      minimum = opts.minimum or 10 },
    ns = opts.ns or {},
    records = {},   -- key -> { A = {list, set}, AAAA = {list, set} }
    below = {},     -- key -> number of names with records strictly below it
  }, Zone)
  return z
end

function Zone:_bump()
  self.serial = (self.serial % 0xFFFFFFFF) + 1
end

-- Count a new (or vanished) name in every ancestor, for empty non-terminals.
function Zone:_count_ancestors(labels, delta)
  for i = 2, #labels - #self.origin_labels do
    local key = concat(labels, ".", i)
    local n = (self.below[key] or 0) + delta
    self.below[key] = n > 0 and n or nil
  end
end

local function canonical_addr(kind, addr)
  local family = KINDS[kind]
  local c = type(addr) == "string" and cidr.parse(addr)
  if not c or c.family ~= family or c.prefix ~= (family == 4 and 32 or 128) then
    return nil, ("%q is not an IPv%d address"):format(tostring(addr), family)
  end
  return cidr.address(c)
end

local function norm_kind(kind)
  if kind == 4 then return "A" end
  if kind == 6 then return "AAAA" end
  kind = type(kind) == "string" and kind:upper() or nil
  if KINDS[kind] then return kind end
  return nil
end

function Zone:_entry(labels, key, create)
  local e = self.records[key]
  if not e and create then
    e = { labels = labels, A = { list = {}, set = {} }, AAAA = { list = {}, set = {} } }
    self.records[key] = e
    self:_count_ancestors(labels, 1)
  end
  return e
end

function Zone:_drop_if_empty(key)
  local e = self.records[key]
  if e and #e.A.list == 0 and #e.AAAA.list == 0 then
    self.records[key] = nil
    self:_count_ancestors(e.labels, -1)
  end
end

--- Add one address to a name (a set: adding twice keeps one).
-- @tparam string name relative ("web") or absolute ("web.overlay.internal")
-- @tparam string kind "A" or "AAAA"
-- @tparam string addr
-- @treturn true or nil, message
function Zone:add(name, kind, addr)
  local k = norm_kind(kind)
  if not k then return nil, ("unknown record kind %q"):format(tostring(kind)) end
  local labels, key = self:_name(name)
  if not labels then return nil, key end
  local a, err = canonical_addr(k, addr)
  if not a then return nil, err end
  local rs = self:_entry(labels, key, true)[k]
  if not rs.set[a] then
    rs.list[#rs.list + 1], rs.set[a] = a, true
    self:_bump()
  end
  return true
end

--- Remove records.  `remove(name, kind, addr)` removes one address,
-- `remove(name, kind)` every address of that kind, `remove(name)` the
-- whole name.
-- @treturn boolean true if something was removed (nil, message for a bad
--   name or kind)
function Zone:remove(name, kind, addr)
  local labels, key = self:_name(name)
  if not labels then return nil, key end
  local e = self.records[key]
  if kind == nil then
    if not e then return false end
    e.A.list, e.A.set, e.AAAA.list, e.AAAA.set = {}, {}, {}, {}
  else
    local k = norm_kind(kind)
    if not k then return nil, ("unknown record kind %q"):format(tostring(kind)) end
    if not e or #e[k].list == 0 then return false end
    if addr == nil then
      e[k].list, e[k].set = {}, {}
    else
      local a = canonical_addr(k, addr)
      if not a or not e[k].set[a] then return false end
      e[k].set[a] = nil
      for i, v in ipairs(e[k].list) do
        if v == a then table.remove(e[k].list, i) break end
      end
    end
  end
  self:_drop_if_empty(key)
  self:_bump()
  return true
end

--- Replace every A and AAAA record of a name; two empty lists remove it.
-- @tparam string name
-- @tparam[opt] {string,...} v4 IPv4 addresses
-- @tparam[opt] {string,...} v6 IPv6 addresses
-- @treturn true or nil, message (nothing changes on error)
function Zone:set(name, v4, v6)
  local labels, key = self:_name(name)
  if not labels then return nil, key end
  local new = {}
  for kind, list in pairs({ A = v4 or {}, AAAA = v6 or {} }) do
    local rs = { list = {}, set = {} }
    for _, addr in ipairs(list) do
      local a, err = canonical_addr(kind, addr)
      if not a then return nil, err end
      if not rs.set[a] then rs.list[#rs.list + 1], rs.set[a] = a, true end
    end
    new[kind] = rs
  end
  local e = self:_entry(labels, key, true)
  e.A, e.AAAA = new.A, new.AAAA
  self:_drop_if_empty(key)
  self:_bump()
  return true
end

--- The addresses of a name.
-- @tparam string name
-- @tparam string kind "A" or "AAAA"
-- @treturn {string,...} (a copy; empty when none)
function Zone:lookup(name, kind)
  local k = norm_kind(kind)
  local labels, key = self:_name(name)
  local e = labels and k and self.records[key]
  local out = {}
  if e then for i, a in ipairs(e[k].list) do out[i] = a end end
  return out
end

--- Every name holding records (absolute, sorted).
function Zone:names()
  local out = {}
  for key in pairs(self.records) do out[#out + 1] = key end
  table.sort(out)
  return out
end

-- The SOA record (TTL `ttl`).
function Zone:_soa_rr(ttl)
  local s = self.soa
  return { labels = self.origin_labels, type = M.TYPE.SOA, ttl = ttl,
    data = { mname = s.mname, rname = s.rname, serial = self.serial, refresh = s.refresh,
      retry = s.retry, expire = s.expire, minimum = s.minimum } }
end

-- Answer records for (lowercase labels, key, qtype) under the question
-- owner name `owner` (the query's labels, so its case is echoed).
function Zone:_records(key, qtype, owner)
  local out = {}
  local e = self.records[key]
  local function add(kind, rtype)
    if not e then return end
    for _, a in ipairs(e[kind].list) do
      out[#out + 1] = { labels = owner, type = rtype, ttl = self.ttl, data = a }
    end
  end
  local any = qtype == M.TYPE.ANY
  if qtype == M.TYPE.A or any then add("A", M.TYPE.A) end
  if qtype == M.TYPE.AAAA or any then add("AAAA", M.TYPE.AAAA) end
  if key == self.origin then
    if qtype == M.TYPE.SOA or any then
      local soa = self:_soa_rr(self.ttl)
      soa.labels = owner
      out[#out + 1] = soa
    end
    if qtype == M.TYPE.NS or any then
      for _, ns in ipairs(self.ns) do out[#out + 1] = { labels = owner, type = M.TYPE.NS, ttl = self.ttl, data = ns } end
    end
  end
  return out
end

function Zone:_exists(key)
  return key == self.origin or self.records[key] ~= nil or self.below[key] ~= nil
end

-- UDP payload limit for a query: 512 without EDNS, else the client's
-- size clamped to [512, udp_max].
local function udp_limit(q, udp_max)
  if not q.edns then return M.UDP_MIN end
  return math.max(M.UDP_MIN, math.min(q.edns.udp_size, udp_max or M.UDP_MAX))
end

-- Response skeleton for parsed query `q`.
local function reply_to(q, rcode)
  return { id = q.id, qr = true, opcode = q.opcode, rd = q.rd, cd = q.cd, rcode = rcode,
    questions = q.questions, answers = {}, authority = {},
    edns = q.edns and { udp_size = M.UDP_MAX, version = 0, do_bit = q.edns.do_bit } or nil }
end

-- The authoritative part: fills `r` for an in-zone question.
function Zone:_resolve(r, question)
  local labels = lower_labels(question.labels)
  local key = concat(labels, ".")
  r.aa = true
  r.answers = self:_records(key, question.qtype, question.labels)
  if #r.answers == 0 then
    if not self:_exists(key) then r.rcode = M.RCODE.NXDOMAIN end
    r.authority = { self:_soa_rr(math.min(self.ttl, self.soa.minimum)) }
  end
end

-- Validate a parsed query (the header passed check_query): rcode for an
-- early error reply, or nil.
local function precheck(q)
  if q.edns and q.edns.version > 0 then return M.RCODE.BADVERS end
  local qt, qc = q.question.qtype, q.question.qclass
  if qt == M.TYPE.OPT then return M.RCODE.FORMERR end
  if qc ~= M.CLASS.IN and qc ~= M.CLASS.ANY then return M.RCODE.REFUSED end
  if qt == M.TYPE.AXFR or qt == M.TYPE.IXFR then return M.RCODE.REFUSED end
  if qt == M.TYPE.MAILA or qt == M.TYPE.MAILB then return M.RCODE.NOTIMP end
  return nil
end

-- A header-only reply (no question): for a query refused from its header,
-- or whose header parsed but the rest did not.
local function header_reply(h, rcode)
  return M.build({ id = h.id, qr = true, opcode = h.opcode, rd = h.rd, rcode = rcode,
    questions = {} })
end

--- Encode response `r`, truncating it (TC, records dropped) above `limit`.
local function encode(r, limit)
  local out = M.build(r)
  if #out <= limit then return out end
  r.tc, r.answers, r.authority = true, {}, {}
  return M.build(r)
end

--- Answer a query (pure: no I/O).
-- @tparam string query wire bytes
-- @tparam[opt] table opts `transport` ("udp" truncates to 512 bytes, or
--   the client's EDNS size up to `udp_max`; default "tcp": 65535),
--   `udp_max` (1232), `forward` (true: names outside the zone are not
--   refused but left to the caller)
-- @treturn string response bytes
-- @return or nil, reason: "drop" (not a query, or no readable header) or
--   "forward" (outside the zone, with `opts.forward`)
function Zone:answer(query, opts)
  opts = opts or {}
  local limit = 65535
  local h, rcode = M.check_query(query)
  if not h then return nil, "drop" end
  -- only a single question that fits QUERY_MAX is ever parsed
  if rcode == M.RCODE.FORMERR then return header_reply(h, rcode) end
  local q = M.parse(query)
  if not q then return header_reply(h, M.RCODE.FORMERR) end
  if opts.transport == "udp" then limit = udp_limit(q, opts.udp_max) end
  rcode = rcode or precheck(q)
  if rcode then return encode(reply_to(q, rcode), limit) end
  local r = reply_to(q, M.RCODE.NOERROR)
  if not self:_in_zone(lower_labels(q.question.labels)) then
    if opts.forward then return nil, "forward" end
    r.rcode = M.RCODE.REFUSED
  else
    self:_resolve(r, q.question)
  end
  return encode(r, limit)
end

---------------------------------------------------------------------------
-- Lazy server module (needs luv)
---------------------------------------------------------------------------

return setmetatable(M, {
  __index = function(t, k)
    if k == "server" then
      local server = require "wgoverlay.dns_server"
      rawset(t, "server", server)
      return server
    end
    return nil
  end,
})
