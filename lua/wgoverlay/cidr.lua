--- CIDR prefixes for IPv4 and IPv6, in pure Lua (no I/O).
-- A prefix is `{ family = 4|6, bytes = {b1, ...}, prefix = n }`.
-- @module wgoverlay.cidr
local M = {}

local function parse_v4(s)
  local parts = {}
  for part in (s .. "."):gmatch("([^.]*)%.") do parts[#parts + 1] = part end
  if #parts ~= 4 then return nil end
  local bytes = {}
  for i, p in ipairs(parts) do
    if not p:match("^%d+$") or #p > 3 or (#p > 1 and p:sub(1, 1) == "0") then return nil end
    local v = tonumber(p)
    if v > 255 then return nil end
    bytes[i] = v
  end
  return bytes
end

local function parse_v6(s)
  if s:find("[^%x:.]") then return nil end
  local head, tail = s, nil
  local dbl = s:find("::", 1, true)
  if dbl then
    head, tail = s:sub(1, dbl - 1), s:sub(dbl + 2)
    if tail:find("::", 1, true) then return nil end
  end
  local function groups(str, allow_v4)
    local out = {}
    if str == "" then return out end
    local items = {}
    for g in (str .. ":"):gmatch("([^:]*):") do items[#items + 1] = g end
    for i, g in ipairs(items) do
      if allow_v4 and i == #items and g:find(".", 1, true) then
        local b = parse_v4(g)
        if not b then return nil end
        out[#out + 1] = b[1] * 256 + b[2]
        out[#out + 1] = b[3] * 256 + b[4]
      else
        if not g:match("^%x%x?%x?%x?$") then return nil end
        out[#out + 1] = tonumber(g, 16)
      end
    end
    return out
  end
  local h = groups(head, tail == nil)
  local t = {}
  if tail then t = groups(tail, true) end
  if not h or not t then return nil end
  local n = #h + #t
  if (dbl and n > 7) or (not dbl and n ~= 8) then return nil end
  local words = {}
  for _, w in ipairs(h) do words[#words + 1] = w end
  for _ = 1, 8 - n do words[#words + 1] = 0 end
  for _, w in ipairs(t) do words[#words + 1] = w end
  local bytes = {}
  for _, w in ipairs(words) do
    bytes[#bytes + 1] = w >> 8
    bytes[#bytes + 1] = w & 0xff
  end
  return bytes
end

--- Parses an address with an optional prefix length ("10.0.0.1/24",
-- "fd00::1/64"; a bare address is /32 or /128).
-- @return prefix table, or nil and `CIDR "..." invalid`
function M.parse(s)
  if type(s) ~= "string" then return nil, "CIDR must be a string" end
  local addr, plen = s:match("^([^/]+)/(%d+)$")
  if not addr then
    if s:find("/", 1, true) then return nil, string.format("CIDR \"%s\" invalid", s) end
    addr = s
  end
  local bytes, family = parse_v4(addr), 4
  if not bytes then bytes, family = parse_v6(addr), 6 end
  if not bytes then return nil, string.format("CIDR \"%s\" invalid", s) end
  local max = family == 4 and 32 or 128
  local prefix = max
  if plen then
    if #plen > 1 and plen:sub(1, 1) == "0" then return nil, string.format("CIDR \"%s\" invalid", s) end
    prefix = tonumber(plen)
    if prefix > max then return nil, string.format("CIDR \"%s\" invalid: prefix longer than %d", s, max) end
  end
  return { family = family, bytes = bytes, prefix = prefix }
end

--- The address part as text (IPv6 in RFC 5952 form).
function M.address(c)
  if c.family == 4 then
    return table.concat(c.bytes, ".")
  end
  local w = {}
  for i = 1, 16, 2 do w[#w + 1] = c.bytes[i] * 256 + c.bytes[i + 1] end
  -- longest run of zero words (length >= 2) becomes "::"
  local best_s, best_l, s, l = 0, 0, 0, 0
  for i = 1, 8 do
    if w[i] == 0 then
      if l == 0 then s = i end
      l = l + 1
      if l > best_l then best_s, best_l = s, l end
    else
      l = 0
    end
  end
  local parts = {}
  local i = 1
  while i <= 8 do
    if best_l >= 2 and i == best_s then
      parts[#parts + 1] = (i == 1) and ":" or ""
      i = i + best_l
      if i > 8 then parts[#parts + 1] = "" end
    else
      parts[#parts + 1] = string.format("%x", w[i])
      i = i + 1
    end
  end
  return (table.concat(parts, ":"):gsub(":::", "::"))
end

--- "addr/prefix" text.
function M.format(c)
  return M.address(c) .. "/" .. c.prefix
end

--- The prefix with host bits cleared.
function M.network(c)
  local bytes = {}
  for i, b in ipairs(c.bytes) do
    local bits = c.prefix - (i - 1) * 8
    if bits >= 8 then
      bytes[i] = b
    elseif bits <= 0 then
      bytes[i] = 0
    else
      bytes[i] = b & (0xff << (8 - bits)) & 0xff
    end
  end
  return { family = c.family, bytes = bytes, prefix = c.prefix }
end

--- True if prefix `outer` contains prefix (or address) `inner`.
function M.contains(outer, inner)
  if outer.family ~= inner.family or inner.prefix < outer.prefix then return false end
  local a, b = M.network(outer), M.network({ family = inner.family, bytes = inner.bytes, prefix = outer.prefix })
  for i = 1, #a.bytes do
    if a.bytes[i] ~= b.bytes[i] then return false end
  end
  return true
end

return M
