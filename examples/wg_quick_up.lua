#!/usr/bin/env lua5.4
--[[ Bring up a wg-quick style configuration file with the Lua API.

  sudo lua5.4 examples/wg_quick_up.lua /etc/wireguard/wg0.conf [IFNAME]

The interface is named after the file (wg0.conf -> wg0) unless IFNAME is
given.  The file has the usual sections:

  [Interface]
  PrivateKey = <base64>
  ListenPort = 51820
  Address = 10.77.0.1/24, fd77::1/64
  MTU = 1420

  [Peer]
  PublicKey = <base64>
  PresharedKey = <base64>          (optional)
  Endpoint = 198.51.100.2:51820    (numeric; no host names)
  AllowedIPs = 10.77.0.2/32, fd77::2/128
  PersistentKeepalive = 25

wg-quick's DNS, Table, SaveConfig and Pre/PostUp hooks are refused with a
line-numbered error rather than silently ignored.  The script prints the
status table and keeps the interface up until Ctrl-C (or SIGTERM), which
removes it.  `wg show IFNAME` works meanwhile.  Needs lua-luv (Debian).
]]

do -- from a checkout: use lua/ and build/ next to this file
  local dir = (debug.getinfo(1, "S").source:match("^@(.*)/examples/[^/]+$"))
    or (debug.getinfo(1, "S").source:match("^@examples/[^/]+$") and ".")
  if dir then
    package.path = dir .. "/lua/?.lua;" .. dir .. "/lua/?/init.lua;" .. package.path
    package.cpath = dir .. "/" .. (os.getenv("WGO_BUILD_DIR") or "build") .. "/?.so;" .. package.cpath
  end
end

local uv = require "luv"
local wgo = require "wgoverlay"
local config = require "wgoverlay.config"
local cli = require "wgoverlay.cli" -- only for its status table renderer

io.stdout:setvbuf("line")

local path, ifname = arg[1], arg[2]
if not path then
  io.stderr:write("usage: wg_quick_up.lua FILE [IFNAME]\n")
  os.exit(2)
end

local function fail(msg)
  io.stderr:write("wg_quick_up: ", msg, "\n")
  os.exit(1)
end

local cfg, err = config.load(path)
if not cfg then fail(err) end
ifname = ifname or config.interface_name(path)

local t
t, err = wgo.transport.new({
  private_key = cfg.interface.private_key,
  listen_port = cfg.interface.listen_port,
  address = cfg.interface.addresses,
  mtu = cfg.interface.mtu,
}, ifname)
if not t then fail(err) end

local ok
ok, err = t:create_interface()
if not ok then fail(err) end
ok, err = t:configure(cfg.peers)
if not ok then
  t:shutdown() -- nothing half-applied stays behind
  fail(err)
end

io.write(cli.format_status(t:status()))
print(("%s is up; Ctrl-C to take it down"):format(ifname))

-- Wait for Ctrl-C or SIGTERM; show the table again when a handshake lands.
local since = os.time()
local shown = {}
local timer = uv.new_timer()
timer:start(1000, 1000, function()
  for _, p in ipairs(cfg.peers) do
    if not shown[p.public_key] and t:check_handshake(p.public_key, since) then
      shown[p.public_key] = true
      print(("handshake with %s"):format(p.public_key))
      io.write(cli.format_status(t:status()))
    end
  end
end)

local sigs = {}
for _, name in ipairs({ "sigint", "sigterm" }) do
  local s = uv.new_signal()
  s:start(name, function()
    timer:close()
    for _, x in ipairs(sigs) do x:close() end
    t:shutdown()
    print(("%s: %s removed"):format(name:upper(), ifname))
  end)
  sigs[#sigs + 1] = s
end

uv.run()
