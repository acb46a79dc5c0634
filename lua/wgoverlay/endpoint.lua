--- Endpoints: the one parser and formatter of "IP:PORT" text.
--
-- Accepted: `192.0.2.1:51820` (a dotted-quad IPv4 address), `[fd00::1]:51820`
-- (an IPv6 address in brackets, any form RFC 4291 allows, IPv4-mapped
-- included), `[fe80::1%eth0]:51820` (with a zone: an interface name or
-- number, 1-15 of `[%w_.-]`).  The port is decimal, 1-65535, at most 5
-- digits.  Refused: host names, an IPv6 address without brackets, brackets
-- around IPv4, a zone on IPv4, port 0 or above 65535, signs, spaces.
-- The parsed address is canonical (RFC 5952 for IPv6), so two spellings
-- of one endpoint format to the same text.
-- @module wgoverlay.endpoint
local cidr = require "wgoverlay.cidr"

local M = {}

local function invalid(s)
  return nil, string.format("endpoint \"%s\" invalid: expected IP:PORT or [IPv6]:PORT", tostring(s))
end

--- Parses an endpoint.
-- @tparam string s
-- @tparam[opt] table opts `default_port`: also accept a bare address
--   ("192.0.2.1", "fd00::1" or "[fd00::1]") and give it this port
-- @return `{ ip = text, port = integer, family = 4|6, zone = text|nil }`,
--   or nil and a message
function M.parse(s, opts)
  if type(s) ~= "string" or #s > 64 then return invalid(s) end
  local host, port = s:match("^%[([^%]]+)%]:(%d+)$")
  local bracketed, bare = host ~= nil, false
  if not host then host, port = s:match("^([%d.]+):(%d+)$") end
  if not host and opts and opts.default_port then
    host = s:match("^%[([^%]]+)%]$")
    bracketed, bare = host ~= nil, host == nil
    host = host or s
    port = tostring(opts.default_port)
  end
  if not host or not port or #port > 5 then return invalid(s) end
  port = math.tointeger(tonumber(port))
  if not port or port < 1 or port > 65535 then return invalid(s) end
  local addr, zone = host:match("^([^%%]+)%%([%w_.-]+)$")
  if addr then
    if #zone > 15 then return invalid(s) end
    host = addr
  end
  if host:find("/", 1, true) then return invalid(s) end
  local c = cidr.parse(host)
  if not c then return invalid(s) end
  -- IPv6 in brackets (bare only without a port), IPv4 never in brackets
  if c.family == 6 and not (bracketed or bare) then return invalid(s) end
  if c.family == 4 and bracketed then return invalid(s) end
  if zone and c.family ~= 6 then return invalid(s) end
  return { ip = cidr.address(c), port = port, family = c.family, zone = zone }
end

--- "IP:PORT" text ("[IPv6%zone]:PORT" for IPv6), from an address and a
-- port, or from a table `{ ip =, port =, zone = }` (luv's addresses too).
function M.format(ip, port, zone)
  if type(ip) == "table" then ip, port, zone = ip.ip, ip.port, ip.zone end
  if ip:find(":", 1, true) then
    return string.format("[%s%s]:%d", ip, zone and ("%" .. zone) or "", port)
  end
  return string.format("%s:%d", ip, port)
end

--- The canonical text of an endpoint, or nil and a message.
function M.normalize(s)
  local e, err = M.parse(s)
  if not e then return nil, err end
  return M.format(e)
end

--- True when `s` is a valid endpoint.
function M.valid(s) return M.parse(s) ~= nil end

return M
