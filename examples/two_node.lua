#!/usr/bin/env lua5.4
--[[ A two-node WireGuard tunnel with the wgoverlay Lua API.

Run one copy on each node (as root, or with CAP_NET_ADMIN).  Each side
needs its own private key and the other side's public key:

  bin/wgoverlay genkey | tee a.key | bin/wgoverlay pubkey > a.pub
  bin/wgoverlay genkey | tee b.key | bin/wgoverlay pubkey > b.pub

  # node a (underlay address 192.0.2.1), dials b:
  lua5.4 examples/two_node.lua a --private-key "$(cat a.key)" \
      --peer-key "$(cat b.pub)" --peer-endpoint 192.0.2.2:51820
  # node b (underlay address 192.0.2.2), learns a's endpoint from its handshake:
  lua5.4 examples/two_node.lua b --private-key "$(cat b.key)" --peer-key "$(cat a.pub)"

then `ping 10.77.0.2` (or fd77::2) on a.  To try it on one machine, run each
side in its own network namespace (`ip netns exec NS lua5.4 ...`) joined
by a veth pair; scripts/demo.sh does exactly that.

Role "a" or "b" picks defaults: interface wgo-a / wgo-b, overlay
10.77.0.1/24 + fd77::1/64 (a) or .2 (b), the peer's /32 and /128 as its
allowed IPs.  Every option can also come from the environment:
WGO_PRIVATE_KEY, WGO_PEER_KEY, WGO_PEER_ENDPOINT, WGO_LISTEN_PORT,
WGO_IFNAME, WGO_ADDRESS, WGO_PEER_ALLOWED_IPS (comma-separated lists).

It prints when the handshake completes, a status line every
--status-interval seconds (0: never), and removes the interface on Ctrl-C
or SIGTERM.  Needs lua-argparse and lua-luv (Debian packages).
]]

-- From a checkout: find lua/ and build/ next to this file (not needed once
-- wgoverlay is installed with luarocks).
do
  local dir = (debug.getinfo(1, "S").source:match("^@(.*)/examples/[^/]+$"))
    or (debug.getinfo(1, "S").source:match("^@examples/[^/]+$") and ".")
  if dir then
    package.path = dir .. "/lua/?.lua;" .. dir .. "/lua/?/init.lua;" .. package.path
    package.cpath = dir .. "/" .. (os.getenv("WGO_BUILD_DIR") or "build") .. "/?.so;" .. package.cpath
  end
end

local argparse = require "argparse"
local uv = require "luv"
local wgo = require "wgoverlay"

io.stdout:setvbuf("line")

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end

local function split(list)
  local out = {}
  for item in list:gmatch("[^,%s]+") do out[#out + 1] = item end
  return out
end

local DEFAULTS = {
  a = { ifname = "wgo-a", address = "10.77.0.1/24,fd77::1/64", peer_ips = "10.77.0.2/32,fd77::2/128" },
  b = { ifname = "wgo-b", address = "10.77.0.2/24,fd77::2/64", peer_ips = "10.77.0.1/32,fd77::1/128" },
}

local parser = argparse("two_node.lua", "One end of a two-node wgoverlay tunnel.")
parser:argument("role", "a or b (picks default names and addresses)."):choices({ "a", "b" })
parser:option("--private-key", "This node's private key (base64).", env("WGO_PRIVATE_KEY"))
parser:option("--peer-key", "The other node's public key (base64).", env("WGO_PEER_KEY"))
parser:option("--peer-endpoint", "The other node's IP:PORT (optional on one side).", env("WGO_PEER_ENDPOINT"))
parser:option("--listen-port", "UDP port to listen on.", env("WGO_LISTEN_PORT", "51820"))
  :convert(function(v) return math.tointeger(tonumber(v)) end)
parser:option("--ifname", "Interface name (default wgo-ROLE).", env("WGO_IFNAME"))
parser:option("--address", "This node's overlay address(es), comma-separated.", env("WGO_ADDRESS"))
parser:option("--peer-allowed-ips", "The peer's allowed IPs, comma-separated.", env("WGO_PEER_ALLOWED_IPS"))
parser:option("--keepalive", "Persistent keepalive in seconds (0: off).", "25")
  :convert(function(v) return math.tointeger(tonumber(v)) end)
parser:option("--status-interval", "Print a status line every N seconds (0: never).", "0")
  :convert(function(v) return math.tointeger(tonumber(v)) end)
local args = parser:parse()

local defaults = DEFAULTS[args.role]
if not args.private_key then parser:error("--private-key (or WGO_PRIVATE_KEY) is required") end
if not args.peer_key then parser:error("--peer-key (or WGO_PEER_KEY) is required") end

local ifname = args.ifname or defaults.ifname
local t, err = wgo.transport.new({
  private_key = args.private_key,
  listen_port = args.listen_port,
  address = split(args.address or defaults.address),
  mtu = 1420,
}, ifname)
if not t then
  io.stderr:write("two_node: ", err, "\n")
  os.exit(1)
end

local ok
ok, err = t:create_interface()
if ok then
  ok, err = t:configure({ {
    public_key = args.peer_key,
    endpoint = args.peer_endpoint,
    allowed_ips = split(args.peer_allowed_ips or defaults.peer_ips),
    persistent_keepalive = args.keepalive,
  } })
end
if not ok then
  io.stderr:write("two_node: ", err, "\n")
  t:shutdown()
  os.exit(1)
end

local st = t:status()
print(("node %s: interface %s up, public key %s, listening on UDP %d"):format(
  args.role, ifname, st.public_key, st.listen_port))
print(("node %s: waiting for a handshake with %s%s"):format(args.role, args.peer_key,
  args.peer_endpoint and (" at " .. args.peer_endpoint) or " (it will dial us)"))

local started = os.time()
local announced = false
local ticks = 0

local function status_line()
  for _, p in ipairs(t:status().peers) do
    print(("node %s: peer %s endpoint %s handshake %s rx %d B tx %d B"):format(args.role,
      p.public_key:sub(1, 8), p.endpoint or "(none)",
      p.last_handshake > 0 and (os.time() - p.last_handshake .. "s ago") or "never", p.rx_bytes, p.tx_bytes))
  end
end

local timer = uv.new_timer()
timer:start(0, 200, function()
  if not announced and t:check_handshake(args.peer_key, started) then
    announced = true
    local p = t:status().peers[1]
    print(("node %s: handshake with %s completed (endpoint %s)"):format(args.role, args.peer_key:sub(1, 8),
      p.endpoint or "?"))
  end
  ticks = ticks + 1
  if args.status_interval > 0 and ticks % (args.status_interval * 5) == 0 then status_line() end
end)

local signals = {}
local function stop(name)
  print(("node %s: %s, removing %s"):format(args.role, name, ifname))
  timer:close()
  for _, s in ipairs(signals) do s:close() end
  t:shutdown()
end
for _, name in ipairs({ "sigint", "sigterm" }) do
  local s = uv.new_signal()
  s:start(name, function() stop(name:upper()) end)
  signals[#signals + 1] = s
end

uv.run()
