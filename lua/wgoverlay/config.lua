--- wg-quick style configuration files, parsed in pure Lua.
--
--    [Interface]
--    PrivateKey = ...        ListenPort = 51820
--    Address = 10.77.0.1/24, fd77::1/64
--    MTU = 1420
--    [Peer]
--    PublicKey = ...         PresharedKey = ...
--    Endpoint = 192.0.2.2:51820
--    AllowedIPs = 10.77.0.2/32
--    PersistentKeepalive = 25
--
-- Keys are case-insensitive, `#` starts a comment.  Every error names the
-- file and line.  wg-quick's hooks and DNS settings (PostUp, DNS, Table …)
-- are refused rather than silently ignored, and endpoints must be numeric.
-- @module wgoverlay.config
local core = require "wgoverlay.core"
local cidr = require "wgoverlay.cidr"
local endpoint = require "wgoverlay.endpoint"

local M = {}

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

local function list(v)
  local out = {}
  for item in v:gmatch("[^,]+") do
    item = trim(item)
    if item ~= "" then out[#out + 1] = item end
  end
  return out
end

local function integer(v, lo, hi)
  if not v:match("^%d+$") then return nil end
  local n = tonumber(v)
  if n < lo or n > hi then return nil end
  return math.tointeger(n)
end


local unsupported = {
  dns = true, table = true, preup = true, postup = true, predown = true, postdown = true,
  saveconfig = true, fwmark = false,
}

local interface_keys = {
  privatekey = function(cfg, v)
    if not core.valid_key(v) then return "PrivateKey: expected 32 bytes base64 (44 characters)" end
    cfg.interface.private_key = v
  end,
  listenport = function(cfg, v)
    local n = integer(v, 0, 65535)
    if not n then return string.format("ListenPort \"%s\" invalid: must be 0..65535", v) end
    cfg.interface.listen_port = n
  end,
  address = function(cfg, v)
    for _, a in ipairs(list(v)) do
      local p, err = cidr.parse(a)
      if not p then return "Address: " .. err end
      table.insert(cfg.interface.addresses, a)
    end
  end,
  mtu = function(cfg, v)
    local n = integer(v, 576, 65535)
    if not n then return string.format("MTU \"%s\" invalid: must be 576..65535", v) end
    cfg.interface.mtu = n
  end,
  fwmark = function(cfg, v)
    local n = v == "off" and 0 or integer(v, 0, 0xffffffff)
    if not n and v:match("^0[xX]%x+$") and #v <= 10 then n = math.tointeger(tonumber(v:sub(3), 16)) end
    if not n then return string.format("FwMark \"%s\" invalid: must be 0..4294967295 (or 0x..., off)", v) end
    cfg.interface.fwmark = n
  end,
}

local peer_keys = {
  publickey = function(peer, v)
    if not core.valid_key(v) then
      return string.format("PublicKey %s: expected 32 bytes base64", core.key_excerpt(v))
    end
    peer.public_key = v
  end,
  presharedkey = function(peer, v)
    if not core.valid_key(v) then return "PresharedKey: expected 32 bytes base64 (44 characters)" end
    peer.preshared_key = v
  end,
  endpoint = function(peer, v)
    if not endpoint.valid(v) then
      return string.format("Endpoint \"%s\" invalid: expected IP:PORT or [IPv6]:PORT (no host names)", v)
    end
    peer.endpoint = v
  end,
  allowedips = function(peer, v)
    peer.allowed_ips = peer.allowed_ips or {}
    for _, a in ipairs(list(v)) do
      local p, err = cidr.parse(a)
      if not p then return "AllowedIPs: " .. err end
      table.insert(peer.allowed_ips, a)
    end
  end,
  persistentkeepalive = function(peer, v)
    local n = v == "off" and 0 or integer(v, 0, 65535)
    if not n then return string.format("PersistentKeepalive \"%s\" invalid: must be 0..65535 or off", v) end
    peer.persistent_keepalive = n
  end,
}

--- Parses configuration text.
-- @tparam string text file contents
-- @tparam[opt] string name file name for messages
-- @return config `{ interface = { private_key, listen_port, addresses, mtu, fwmark }, peers = {...} }`,
--   or nil and "name:LINE: message"
function M.parse(text, name)
  name = name or "config"
  local cfg = { interface = { addresses = {} }, peers = {} }
  local section, peer, seen_interface
  local lineno = 0
  local function fail(msg) return nil, string.format("%s:%d: %s", name, lineno, msg) end
  for raw in (text .. "\n"):gmatch("([^\n]*)\n") do
    lineno = lineno + 1
    local line = trim((raw:gsub("#.*$", "")))
    if line ~= "" then
      local sec = line:match("^%[(.-)%]$")
      if sec then
        sec = sec:lower()
        if sec == "interface" then
          if seen_interface then return fail("second [Interface] section") end
          seen_interface = lineno
          section = "interface"
        elseif sec == "peer" then
          if peer and not peer.public_key then
            return fail("previous [Peer] has no PublicKey")
          end
          peer = { line = lineno }
          cfg.peers[#cfg.peers + 1] = peer
          section = "peer"
        else
          return fail(string.format("unknown section [%s]", sec))
        end
      else
        local key, value = line:match("^([%w]+)%s*=%s*(.-)$")
        if not key then return fail(string.format("expected Key = Value, got \"%s\"", line)) end
        local k = key:lower()
        if not section then return fail(string.format("%s outside of a section", key)) end
        if value == "" then return fail(string.format("%s has no value", key)) end
        if unsupported[k] then
          return fail(string.format("%s is not supported by wgoverlay (wg-quick only)", key))
        end
        local handler = (section == "interface" and interface_keys or peer_keys)[k]
        if not handler then
          return fail(string.format("unknown key %s in [%s]", key, section == "interface" and "Interface" or "Peer"))
        end
        local err = handler(section == "interface" and cfg or peer, value)
        if err then return fail(err) end
      end
    end
  end
  if not seen_interface then
    lineno = 1
    return fail("no [Interface] section")
  end
  if peer and not peer.public_key then
    lineno = peer.line
    return fail("[Peer] has no PublicKey")
  end
  if not cfg.interface.private_key then
    lineno = seen_interface
    return fail("[Interface] has no PrivateKey")
  end
  local seen = {}
  for _, p in ipairs(cfg.peers) do
    if seen[p.public_key] then
      lineno = p.line
      return fail("duplicate peer " .. p.public_key)
    end
    seen[p.public_key] = true
    p.line = nil
  end
  return cfg
end

--- Reads and parses a file.
function M.load(path)
  local f, err = io.open(path, "r")
  if not f then return nil, err end
  local text = f:read("a")
  f:close()
  return M.parse(text, path)
end

--- The interface name of a config path, as wg-quick derives it
-- ("/etc/wireguard/wg0.conf" -> "wg0").
function M.interface_name(path)
  local base = path:match("([^/]+)$") or path
  return (base:gsub("%.conf$", ""))
end

return M
