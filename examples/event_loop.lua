#!/usr/bin/env lua5.4
--[[ React to transport events in a libuv event loop (lua-luv).

  sudo lua5.4 examples/event_loop.lua /etc/wireguard/wg0.conf [IFNAME] [--echo]

Brings up the wg-quick style FILE (see examples/wg_quick_up.lua), then
waits on the transport's event descriptor with uv.new_poll(t:fd()) and
prints every event as it happens:

  handshake  a handshake with a peer completed (and from which endpoint)
  endpoint   a peer roamed to a new endpoint
  stale      a peer stopped answering handshakes
  datagram   a datagram that is not WireGuard arrived on the listen port
             (a STUN answer, a probe ...): its source and bytes

With --echo it answers each datagram from the WireGuard socket itself
(t:send_datagram) with "ack " .. payload, which is how a NAT-traversal
probe or a join request would be answered on the one UDP port.  Try it
from another host: `echo hi | socat - UDP:<this host>:<ListenPort>`.

Ctrl-C (SIGINT) or SIGTERM stops the loop and removes the interface.
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

io.stdout:setvbuf("line")

local positional, echo = {}, false
for _, a in ipairs(arg) do
  if a == "--echo" then echo = true else positional[#positional + 1] = a end
end
local path, ifname = positional[1], positional[2]
if not path then
  io.stderr:write("usage: event_loop.lua FILE [IFNAME] [--echo]\n")
  os.exit(2)
end

local function fail(msg)
  io.stderr:write("event_loop: ", msg, "\n")
  os.exit(1)
end

local cfg, err = config.load(path)
if not cfg then fail(err) end
ifname = ifname or config.interface_name(path)

local t
t, err = wgo.transport.new({ private_key = cfg.interface.private_key, listen_port = cfg.interface.listen_port,
                             address = cfg.interface.addresses, mtu = cfg.interface.mtu }, ifname)
if not t then fail(err) end
local ok
ok, err = t:create_interface()
if ok then ok, err = t:configure(cfg.peers) end
if not ok then
  t:shutdown()
  fail(err)
end

-- Peers by public key, for friendlier output.
local names = {}
for i, p in ipairs(cfg.peers) do names[p.public_key] = ("peer%d"):format(i) end
local function who(pub) return ("%s (%s…)"):format(names[pub] or "peer?", pub:sub(1, 8)) end

-- Printable form of datagram bytes.
local function show(bytes)
  if bytes:find("^[%g ]*$") then return ("%q"):format(bytes) end
  return (bytes:gsub(".", function(c) return ("%02x"):format(c:byte()) end)) .. " (hex)"
end

local handlers = {
  handshake = function(ev)
    print(("handshake: %s completed a handshake from %s"):format(who(ev.public_key), ev.endpoint or "?"))
  end,
  endpoint = function(ev)
    print(("endpoint: %s is now at %s"):format(who(ev.public_key), ev.endpoint or "?"))
  end,
  stale = function(ev)
    print(("stale: %s stopped answering"):format(who(ev.public_key)))
  end,
  datagram = function(ev)
    print(("datagram: %d bytes from %s: %s"):format(#ev.data, ev.from, show(ev.data)))
    if echo then
      local sent, serr = t:send_datagram(ev.from, "ack " .. ev.data)
      if not sent then print("datagram: reply failed: " .. serr) end
    end
  end,
}

-- The descriptor is readable while events are queued; events() drains them.
local poll = uv.new_poll(t:fd())
poll:start("r", function(perr)
  if perr then
    print("poll error: " .. perr)
    return
  end
  for ev in t:events() do
    local h = handlers[ev.type]
    if h then h(ev) else print("event: " .. tostring(ev.type)) end
  end
end)

local st = t:status()
print(("%s up: public key %s, UDP port %d, %d peer(s); waiting for events (Ctrl-C quits)"):format(
  ifname, st.public_key or "(none)", st.listen_port, #st.peers))

local sigs = {}
for _, name in ipairs({ "sigint", "sigterm" }) do
  local s = uv.new_signal()
  s:start(name, function()
    print(("%s: stopping"):format(name:upper()))
    -- Stop polling before the descriptor goes away with the transport.
    poll:stop()
    poll:close()
    for _, x in ipairs(sigs) do x:close() end
    t:shutdown()
    print(("%s removed"):format(ifname))
  end)
  sigs[#sigs + 1] = s
end

uv.run()
