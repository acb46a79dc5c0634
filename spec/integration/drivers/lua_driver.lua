-- A Lua process the integration specs drive from outside, so that
-- transports live in the network namespace the driver was started in (the
-- engine creates its TUN in the namespace of the *process*).
--
--   ip netns exec NS lua5.4 spec/integration/drivers/lua_driver.lua SOCKET
--
-- It listens on the Unix socket SOCKET (the file system is shared across
-- namespaces), accepts one connection and answers one request per line:
-- a JSON object { "code": "<Lua chunk>" }.  The chunk runs in an
-- environment that persists between requests (globals it assigns stay) and
-- that has `wgo` (require "wgoverlay"), `core`, `socket`, `cjson`, `S` (a
-- scratch table) and `hex`/`unhex`.  The reply is one JSON line:
--   { "ok": true, "n": N, "values": [...] }   (nil values are JSON null)
--   { "ok": false, "error": "message" }       (the chunk raised)
-- The driver exits when the connection closes or a chunk calls os.exit.
-- LUA_PATH / LUA_CPATH must point at the checkout's lua/ and build dir.
local socket = require "socket"
local unix = require "socket.unix"
local cjson = require "cjson"

local path = assert(arg[1], "usage: lua_driver.lua SOCKET")

local env = setmetatable({}, { __index = _G })
env.wgo = require "wgoverlay"
env.core = require "wgoverlay.core"
env.socket = socket
env.cjson = cjson
env.S = {}
function env.hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end
function env.unhex(s)
  return (s:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

-- Values that JSON cannot carry become descriptive strings.
local function encodable(v, depth)
  depth = depth or 0
  local t = type(v)
  if v == nil then return cjson.null end
  if t == "string" or t == "boolean" then return v end
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return tostring(v) end
    return v
  end
  if t == "table" and depth < 8 then
    local out = {}
    for k, x in pairs(v) do out[k] = encodable(x, depth + 1) end
    return out
  end
  return "<" .. tostring(v) .. ">"
end

local server = assert(unix.stream())
os.remove(path)
assert(server:bind(path))
assert(server:listen(1))
io.stdout:write("driver listening on ", path, "\n")
io.stdout:flush()
local conn = assert(server:accept())
server:close()
os.remove(path)

while true do
  local line, err = conn:receive("*l")
  if not line then
    io.stdout:write("driver: connection closed (", tostring(err), ")\n")
    break
  end
  local reply
  local okd, req = pcall(cjson.decode, line)
  if not okd or type(req) ~= "table" or type(req.code) ~= "string" then
    reply = { ok = false, error = "bad request: " .. line:sub(1, 200) }
  else
    local fn, lerr = load(req.code, "=request", "t", env)
    if not fn then
      reply = { ok = false, error = lerr }
    else
      local res = table.pack(xpcall(fn, function(e)
        if type(e) ~= "string" then e = tostring(e) end
        return e
      end))
      if res[1] then
        local values = {}
        for i = 2, res.n do values[i - 1] = encodable(res[i]) end
        reply = { ok = true, n = res.n - 1, values = values }
      else
        reply = { ok = false, error = res[2] }
      end
    end
  end
  local okj, out = pcall(cjson.encode, reply)
  if not okj then out = cjson.encode({ ok = false, error = "cannot encode reply: " .. tostring(out) }) end
  assert(conn:send(out .. "\n"))
end
conn:close()
-- Transports still open are closed by __gc at exit.
os.exit(0, true)
