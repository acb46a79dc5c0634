--- Test helpers shared by the busted specs.
--
-- * `wait_until` poller;
-- * a network-namespace fixture (`helpers.netns.new`) that records every
--   namespace, process, interface and temporary file it makes, and a
--   `cleanup()` that removes all of them (call it from `teardown`/`finally`;
--   `helpers.guard` wraps a test body so logs are printed when it fails);
-- * engine helpers: start "ours" (bin/wgoverlay) or wireguard-go in a
--   namespace, configure it with the stock `wg` tool, parse `wg show dump`.
--
-- Network safety: nothing here configures the root namespace.  Every address
-- and route lives in namespaces created by these helpers, which are deleted
-- by `cleanup()`.
--
-- Environment:
--   WGO_TEST_IMPL=wireguard-go  run every "ours" engine with wireguard-go
--                               (to validate the specs without our engine)
--   WGO_BUILD_DIR=build-san     load wgoverlay.core from that build dir
--   WGO_ENGINE_PRELOAD=lib.so   LD_PRELOAD for our engine (ASan runtime)
--   WGO_KEEP_LOGS=1             keep the temporary directory with logs

local socket = require "socket"

local helpers = {}

local function getenv(k, default)
  local v = os.getenv(k)
  if v == nil or v == "" then return default end
  return v
end

--- Quote a string for /bin/sh.
function helpers.quote(s)
  s = tostring(s)
  if s:match("^[%w%-%./_:=,@%%+]+$") then return s end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end
local quote = helpers.quote

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
helpers.read_file = read_file

--- Write `content` to `path` with octal `mode` (default "600").
function helpers.write_file(path, content, mode)
  local f = assert(io.open(path, "wb"))
  assert(f:write(content))
  f:close()
  assert(os.execute("chmod " .. (mode or "600") .. " " .. quote(path)))
  return path
end

--- Run a shell command; returns ok, stdout, stderr, exit code.
-- LD_PRELOAD (set for the sanitizer pass) is dropped for tools.
function helpers.sh(cmd)
  local errf = os.tmpname()
  local p = assert(io.popen("{ unset LD_PRELOAD; " .. cmd .. "\n} 2>" .. errf, "r"))
  local out = p:read("a")
  local ok, _, code = p:close()
  local err = read_file(errf) or ""
  os.remove(errf)
  return ok == true, out, err, code
end

--- Run a shell command and raise (with its output) when it fails.
function helpers.must(cmd)
  local ok, out, err, code = helpers.sh(cmd)
  if not ok then
    error(("command failed (exit %s): %s\nstdout: %s\nstderr: %s"):format(
      tostring(code), cmd, out, err), 2)
  end
  return out
end

helpers.now = socket.gettime
helpers.sleep = socket.sleep

--- Poll `fn` until it returns a truthy value or `timeout_s` (default 10)
-- passes, sleeping `interval_s` (default 0.1) between calls.  Errors raised
-- by `fn` count as "not yet".  Returns fn's values, or nil and a message.
function helpers.wait_until(fn, timeout_s, interval_s)
  timeout_s, interval_s = timeout_s or 10, interval_s or 0.1
  local deadline = socket.gettime() + timeout_s
  local last
  while true do
    local res = table.pack(pcall(fn))
    if res[1] and res[2] then return table.unpack(res, 2, res.n) end
    last = res[1] and res[3] or res[2]
    if socket.gettime() >= deadline then
      return nil, ("timed out after %gs%s"):format(timeout_s,
        last and (": " .. tostring(last)) or "")
    end
    socket.sleep(interval_s)
  end
end

-- Repository root: the parent of the directory holding this file.
helpers.root = (function()
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  local dir = src:match("^(.*)/spec/helpers%.lua$") or "."
  local ok, out = helpers.sh("cd " .. quote(dir) .. " && pwd -P")
  return ok and out:gsub("%s+$", "") or dir
end)()

helpers.build_dir = getenv("WGO_BUILD_DIR", "build")

helpers.PID = tonumber((read_file("/proc/self/stat") or ""):match("^(%d+)")) or 0

helpers.is_root = (helpers.sh("test \"$(id -u)\" = 0"))

---------------------------------------------------------------------------
-- Process and resource registry
---------------------------------------------------------------------------

local state -- reset by cleanup()

local function fresh_state()
  return { namespaces = {}, procs = {}, ifnames = {}, tmpdir = nil, seq = 0 }
end
state = fresh_state()

--- Temporary directory of the current fixture (created on demand).
function helpers.tmpdir()
  if not state.tmpdir then
    state.tmpdir = helpers.must("mktemp -d /tmp/wgo-test." .. helpers.PID .. ".XXXXXX"):gsub("%s+$", "")
  end
  return state.tmpdir
end

local b36 = "0123456789abcdefghijklmnopqrstuvwxyz"
local function uniq()
  state.seq = state.seq + 1
  local r = math.random(0, 35 * 36 + 35)
  return b36:sub(r // 36 + 1, r // 36 + 1) .. b36:sub(r % 36 + 1, r % 36 + 1) .. state.seq
end

--- A machine-wide unique interface name (<= 15 chars): the UAPI socket
-- directory is shared by all namespaces.  Registered for socket cleanup.
function helpers.ifname(tag)
  for _ = 1, 100 do
    local name = ("%s%dx%s"):format(tag or "wt", helpers.PID, uniq())
    assert(#name <= 15, "interface name too long: " .. name)
    if not read_file("/var/run/wireguard/" .. name .. ".sock")
      and not helpers.sh("test -S /var/run/wireguard/" .. name .. ".sock") then
      state.ifnames[#state.ifnames + 1] = name
      return name
    end
  end
  error("cannot find a free interface name")
end

local Proc = {}
Proc.__index = Proc

local function proc_state(pid)
  local s = read_file("/proc/" .. pid .. "/stat")
  if not s then return nil end
  return s:match("^%d+ %b() (%a)")
end

--- True while the process runs (zombies count as dead).
function Proc:alive()
  local st = proc_state(self.pid)
  return st ~= nil and st ~= "Z" and st ~= "X"
end

--- Exit code once the process ended (128+N when killed by signal N).
function Proc:exit_code()
  local s = read_file(self.rcfile)
  return s and tonumber(s:match("%d+"))
end

function Proc:signal(sig)
  return helpers.sh("kill -" .. (sig or "TERM") .. " " .. self.pid .. " 2>/dev/null")
end

--- Wait for the process to exit; returns the exit code or nil on timeout.
function Proc:wait(timeout_s)
  local ok = helpers.wait_until(function()
    return not self:alive() and self:exit_code() ~= nil
  end, timeout_s or 5, 0.05)
  if ok then return self:exit_code() end
  return nil
end

--- TERM, then KILL after `timeout_s`; returns true if TERM was enough.
function Proc:stop(timeout_s)
  if not self:alive() then self:wait(1) return true end
  self:signal("TERM")
  if self:wait(timeout_s or 5) then return true end
  self:signal("KILL")
  self:wait(2)
  return false
end

--- Contents of the process log (stdout+stderr).
function Proc:log()
  return read_file(self.logfile) or ""
end

---------------------------------------------------------------------------
-- Network namespaces
---------------------------------------------------------------------------

local NS = {}
NS.__index = NS
NS.__tostring = function(self) return "netns " .. self.name end

helpers.netns = {}

--- Create a namespace named wgo-<prefix>-<pid>-<n> with `lo` up.
function helpers.netns.new(prefix)
  local name = ("wgo-%s-%d-%s"):format(prefix or "t", helpers.PID, uniq())
  helpers.must("ip netns add " .. quote(name))
  state.namespaces[#state.namespaces + 1] = name
  local ns = setmetatable({ name = name, links = {} }, NS)
  ns:must("ip link set lo up")
  return ns
end

--- Run `cmd` (sh syntax) inside the namespace: ok, stdout, stderr, code.
function NS:exec(cmd)
  return helpers.sh("ip netns exec " .. quote(self.name) .. " sh -c " .. quote(cmd))
end

function NS:must(cmd)
  local ok, out, err, code = self:exec(cmd)
  if not ok then
    error(("command failed in %s (exit %s): %s\nstdout: %s\nstderr: %s"):format(
      self.name, tostring(code), cmd, out, err), 2)
  end
  return out
end

--- Start `cmd` (one simple command) in the background inside the namespace.
-- opts.env: table of environment variables, opts.cwd: working directory,
-- opts.name: label for the log file.  The returned Proc tracks the pid of
-- the command itself; its stdout+stderr go to proc.logfile.
function NS:spawn(cmd, opts)
  opts = opts or {}
  local dir = helpers.tmpdir()
  local label = (opts.name or cmd:match("^(%S+)"):match("([^/]+)$")):gsub("[^%w%-_.]", "_")
  local base = ("%s/%s.%s"):format(dir, label, uniq())
  local envs = {}
  for k, v in pairs(opts.env or {}) do envs[#envs + 1] = quote(k .. "=" .. v) end
  table.sort(envs)
  local inner = (opts.cwd and ("cd " .. quote(opts.cwd) .. " && ") or "")
    .. "exec env -u LD_PRELOAD " .. table.concat(envs, " ") .. " " .. cmd
  local waiter = 'sh -c "$1" & echo $! > "$2"; wait $!; echo $? > "$3"'
  local proc = setmetatable({
    cmd = cmd, ns = self, logfile = base .. ".log",
    pidfile = base .. ".pid", rcfile = base .. ".rc",
  }, Proc)
  helpers.must(("ip netns exec %s sh -c %s _ %s %s %s </dev/null >%s 2>&1 &"):format(
    quote(self.name), quote(waiter), quote(inner), quote(proc.pidfile),
    quote(proc.rcfile), quote(proc.logfile)))
  local pid = helpers.wait_until(function()
    return tonumber((read_file(proc.pidfile) or ""):match("%d+"))
  end, 5, 0.01)
  if not pid then error("spawn failed: " .. cmd .. "\n" .. proc:log()) end
  proc.pid = pid
  state.procs[#state.procs + 1] = proc
  return proc
end

--- Add an address to `dev` (IPv6 addresses get nodad).
function NS:addr(dev, cidr)
  local v6 = cidr:find(":", 1, true) ~= nil
  self:must(("ip %s addr add %s dev %s%s"):format(v6 and "-6" or "-4", cidr, dev,
    v6 and " nodad" or ""))
end

function NS:del_addr(dev, cidr)
  local v6 = cidr:find(":", 1, true) ~= nil
  self:must(("ip %s addr del %s dev %s"):format(v6 and "-6" or "-4", cidr, dev))
end

--- Ping `addr` from inside the namespace; true when all replies came.
function NS:ping(addr, count, timeout_s)
  return (self:exec(("ping -n -q -c %d -i 0.2 -W %d %s"):format(count or 1,
    timeout_s or 1, addr)))
end

--- Connect `a` and `b` with a veth pair; opts.a / opts.b are lists of
-- CIDR addresses for each end.  Returns the two device names.
function helpers.netns.veth(a, b, opts)
  opts = opts or {}
  local na, nb = helpers.ifname("va"), helpers.ifname("vb")
  a:must(("ip link add %s type veth peer name %s netns %s"):format(na, nb, quote(b.name)))
  for _, cidr in ipairs(opts.a or {}) do a:addr(na, cidr) end
  for _, cidr in ipairs(opts.b or {}) do b:addr(nb, cidr) end
  a:must("ip link set " .. na .. " up")
  b:must("ip link set " .. nb .. " up")
  return na, nb
end

---------------------------------------------------------------------------
-- Cleanup
---------------------------------------------------------------------------

local SANITIZER_PATTERNS = { "ERROR: AddressSanitizer", "runtime error:",
  "ERROR: LeakSanitizer", "SUMMARY: UndefinedBehaviorSanitizer" }

--- Sanitizer reports found in the logs of our engine processes.
function helpers.sanitizer_reports()
  local found = {}
  for _, p in ipairs(state.procs) do
    if p.impl == "ours" then
      local log = p:log()
      for _, pat in ipairs(SANITIZER_PATTERNS) do
        if log:find(pat, 1, true) then
          found[#found + 1] = ("%s (%s):\n%s"):format(p.ifname or p.cmd, p.logfile, log:sub(1, 4000))
          break
        end
      end
    end
  end
  return found
end

--- Print the tail of every process log (used when a test fails).
function helpers.dump_logs()
  for _, p in ipairs(state.procs) do
    local log = p:log()
    if #log > 3000 then log = "..." .. log:sub(-3000) end
    io.stderr:write(("---- %s [%s pid %d, %s] ----\n%s\n"):format(p.cmd,
      p.ns and p.ns.name or "?", p.pid or -1,
      p:alive() and "running" or ("exit " .. tostring(p:exit_code())), log))
  end
end

--- Kill every spawned process (TERM, then KILL), every remaining process
-- in our namespaces, delete the namespaces and the UAPI sockets of our
-- interface names, remove temporary files.  Safe to call repeatedly.
-- Raises if an engine of ours logged a sanitizer report.
function helpers.cleanup()
  local st = state
  state = fresh_state()
  for i = #st.procs, 1, -1 do
    pcall(Proc.stop, st.procs[i], 5)
  end
  for _, ns in ipairs(st.namespaces) do
    local pids = {}
    local ok, out = helpers.sh("ip netns pids " .. quote(ns))
    if ok then for pid in out:gmatch("%d+") do pids[#pids + 1] = pid end end
    if #pids > 0 then
      helpers.sh("kill -TERM " .. table.concat(pids, " ") .. " 2>/dev/null")
      helpers.wait_until(function()
        local _, o = helpers.sh("ip netns pids " .. quote(ns))
        return not o:match("%d")
      end, 3, 0.05)
      helpers.sh("kill -KILL " .. table.concat(pids, " ") .. " 2>/dev/null")
    end
    helpers.sh("ip netns del " .. quote(ns))
  end
  for _, name in ipairs(st.ifnames) do
    os.remove("/var/run/wireguard/" .. name .. ".sock")
  end
  -- look for sanitizer reports before the logs go away
  state = st
  local reports = helpers.sanitizer_reports()
  state = fresh_state()
  if st.tmpdir then
    if getenv("WGO_KEEP_LOGS") or #reports > 0 then
      io.stderr:write("logs kept in " .. st.tmpdir .. "\n")
    else
      helpers.sh("rm -rf " .. quote(st.tmpdir))
    end
  end
  if #reports > 0 then
    error("sanitizer report from the engine:\n" .. table.concat(reports, "\n"), 0)
  end
end

--- Wrap a test body: on failure print the process logs, then re-raise.
-- `helpers.guard(fn, true)` also runs cleanup() afterwards.
function helpers.guard(fn, with_cleanup)
  return function(...)
    local ok, err = pcall(fn, ...)
    local mt = type(err) == "table" and getmetatable(err)
    local pending = mt and mt.__type == "pending"
    if not ok and not pending then helpers.dump_logs() end
    if with_cleanup then
      local cok, cerr = pcall(helpers.cleanup)
      if ok and not cok then error(cerr, 0) end
    end
    if not ok then error(err, 0) end
  end
end

-- Remove namespaces and sockets left behind by earlier runs of this
-- file that were killed (their pid no longer exists).
local function sweep_stale()
  if not helpers.is_root then return end
  local ok, out = helpers.sh("ip netns list")
  if ok then
    for name, pid in out:gmatch("(wgo%-[%w]+%-(%d+)%-[%w]+)") do
      if tonumber(pid) ~= helpers.PID and not read_file("/proc/" .. pid .. "/stat") then
        helpers.sh("ip netns pids " .. name .. " | xargs -r kill -KILL; ip netns del " .. name)
      end
    end
  end
  local okl, socks = helpers.sh("ls /var/run/wireguard 2>/dev/null")
  if okl then
    for sock, pid in socks:gmatch("(wt(%d+)x[%w]*%.sock)") do
      if tonumber(pid) ~= helpers.PID and not read_file("/proc/" .. pid .. "/stat") then
        os.remove("/var/run/wireguard/" .. sock)
      end
    end
  end
end
sweep_stale()

---------------------------------------------------------------------------
-- WireGuard engines and the wg tool
---------------------------------------------------------------------------

--- Which implementation runs for `impl` ("ours" maps to wireguard-go when
-- WGO_TEST_IMPL=wireguard-go).
function helpers.resolve_impl(impl)
  if impl == "ours" then return getenv("WGO_TEST_IMPL", "ours") end
  return impl
end

--- True when "ours" is really our engine (not the wireguard-go stand-in).
function helpers.ours_is_real()
  return helpers.resolve_impl("ours") == "ours"
end

--- Start an engine for `ifname` in `ns` and wait for its UAPI socket.
-- impl: "ours" (bin/wgoverlay) or "wireguard-go".  Returns a Proc with
-- fields impl (actual implementation) and ifname.
function helpers.start_engine(ns, impl, ifname)
  local actual = helpers.resolve_impl(impl)
  local proc
  if actual == "ours" then
    local root = helpers.root
    local env = {
      LUA_PATH_5_4 = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;;",
      LUA_CPATH_5_4 = root .. "/" .. helpers.build_dir .. "/?.so;;",
      WGO_BUILD_DIR = helpers.build_dir,
    }
    local preload = getenv("WGO_ENGINE_PRELOAD")
    if preload then
      env.LD_PRELOAD = preload
      env.ASAN_OPTIONS = getenv("ASAN_OPTIONS", "detect_leaks=0")
    end
    -- `env -u LD_PRELOAD` in spawn runs before these assignments
    proc = ns:spawn("lua5.4 bin/wgoverlay interface " .. ifname,
      { env = env, cwd = root, name = "ours-" .. ifname })
  elseif actual == "wireguard-go" then
    proc = ns:spawn("wireguard-go -f " .. ifname,
      { env = { WG_PROCESS_FOREGROUND = "1", LOG_LEVEL = "error" }, name = "wggo-" .. ifname })
  else
    error("unknown engine implementation: " .. tostring(actual))
  end
  proc.impl, proc.ifname = actual, ifname
  local sock = "/var/run/wireguard/" .. ifname .. ".sock"
  local died = false
  local ok, err = helpers.wait_until(function()
    if not proc:alive() then died = true return true end
    return helpers.sh("test -S " .. sock) and (ns:exec("wg show " .. ifname .. " public-key"))
  end, 15, 0.05)
  if died then err, ok = "engine exited with code " .. tostring(proc:wait(2)), false end
  if not ok then
    error(("%s engine for %s did not come up (%s):\n%s"):format(actual, ifname, err, proc:log()), 2)
  end
  return proc
end

--- Run `wg ARGS` in the namespace, raising on failure; returns stdout.
function helpers.wg(ns, args)
  return ns:must("wg " .. args)
end

--- Generate a key pair with the wg tool: private, public (base64).
function helpers.genkey()
  local priv = helpers.must("wg genkey"):gsub("%s+$", "")
  local pub = helpers.must("echo " .. quote(priv) .. " | wg pubkey"):gsub("%s+$", "")
  return priv, pub
end

function helpers.genpsk()
  return (helpers.must("wg genpsk"):gsub("%s+$", ""))
end

--- base64 key -> lowercase hex (as the UAPI protocol wants it).
function helpers.key_hex(b64)
  local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  local bits = {}
  for c in b64:gsub("=", ""):gmatch(".") do
    local v = alphabet:find(c, 1, true) - 1
    for i = 5, 0, -1 do bits[#bits + 1] = (v >> i) & 1 end
  end
  local out = {}
  for i = 1, 32 do
    local byte = 0
    for j = 0, 7 do byte = byte * 2 + bits[(i - 1) * 8 + j + 1] end
    out[i] = ("%02x"):format(byte)
  end
  return table.concat(out)
end

--- Write a key to a fresh 0600 file in the fixture's tmpdir.
function helpers.key_file(key)
  local path = ("%s/key.%s"):format(helpers.tmpdir(), uniq())
  return helpers.write_file(path, key .. "\n", "600")
end

--- Configure the interface: opts.private_key (base64), opts.listen_port,
-- opts.fwmark.
function helpers.wg_set_interface(ns, ifname, opts)
  local args = { "set", ifname }
  if opts.private_key then
    args[#args + 1] = "private-key " .. helpers.key_file(opts.private_key)
  end
  if opts.listen_port then args[#args + 1] = "listen-port " .. opts.listen_port end
  if opts.fwmark then args[#args + 1] = "fwmark " .. opts.fwmark end
  helpers.wg(ns, table.concat(args, " "))
end

--- Add or update a peer: opts.endpoint, opts.allowed_ips (string or list),
-- opts.preshared_key (base64), opts.keepalive.
function helpers.wg_set_peer(ns, ifname, pub, opts)
  opts = opts or {}
  local args = { "set", ifname, "peer", pub }
  if opts.preshared_key then
    args[#args + 1] = "preshared-key " .. helpers.key_file(opts.preshared_key)
  end
  if opts.endpoint then args[#args + 1] = "endpoint " .. opts.endpoint end
  if opts.allowed_ips then
    local a = opts.allowed_ips
    if type(a) == "table" then a = table.concat(a, ",") end
    args[#args + 1] = "allowed-ips " .. quote(a)
  end
  if opts.keepalive then args[#args + 1] = "persistent-keepalive " .. opts.keepalive end
  helpers.wg(ns, table.concat(args, " "))
end

--- Bring the tunnel interface up with MTU 1420 and `addrs` (list of CIDRs).
function helpers.link_up(ns, ifname, addrs, mtu)
  for _, cidr in ipairs(addrs or {}) do ns:addr(ifname, cidr) end
  ns:must(("ip link set dev %s mtu %d up"):format(ifname, mtu or 1420))
end

--- Parse `wg show IF dump`:
-- { interface = {private_key, public_key, listen_port, fwmark},
--   peers = { [pub] = {public_key, preshared_key, endpoint, allowed_ips={..},
--             latest_handshake, rx, tx, keepalive} }, npeers = n }
function helpers.parse_dump(text)
  local res = { peers = {}, npeers = 0 }
  for line in text:gmatch("[^\n]+") do
    local f = {}
    for field in (line .. "\t"):gmatch("([^\t]*)\t") do f[#f + 1] = field end
    if not res.interface then
      res.interface = { private_key = f[1], public_key = f[2],
        listen_port = tonumber(f[3]), fwmark = f[4], nfields = #f }
    else
      local allowed = {}
      if f[4] ~= "(none)" then
        for a in (f[4] or ""):gmatch("[^,]+") do allowed[#allowed + 1] = a end
      end
      res.peers[f[1]] = { public_key = f[1], preshared_key = f[2], endpoint = f[3],
        allowed_ips = allowed, latest_handshake = tonumber(f[5]),
        rx = tonumber(f[6]), tx = tonumber(f[7]), keepalive = f[8], nfields = #f }
      res.npeers = res.npeers + 1
    end
  end
  return res
end

function helpers.wg_dump(ns, ifname)
  return helpers.parse_dump(helpers.wg(ns, "show " .. ifname .. " dump"))
end

--- `wg show IF <field>` as a map public key -> value string.
function helpers.wg_show_map(ns, ifname, field)
  local map = {}
  for pub, val in helpers.wg(ns, "show " .. ifname .. " " .. field):gmatch("([^\t\n]+)\t([^\n]*)") do
    map[pub] = val
  end
  return map
end

--- Latest handshake (unix seconds) of peer `pub` on `ifname`, 0 if none.
function helpers.latest_handshake(ns, ifname, pub)
  return tonumber(helpers.wg_show_map(ns, ifname, "latest-handshakes")[pub]) or 0
end

---------------------------------------------------------------------------
-- Two-node topology
---------------------------------------------------------------------------

helpers.families = {
  v4 = {
    under = { "192.0.2.1/24", "192.0.2.2/24" }, under_alt = "192.0.2.3/24",
    over = { "10.77.0.1/24", "10.77.0.2/24" }, host = 32,
  },
  v6 = {
    under = { "fd00:2::1/64", "fd00:2::2/64" }, under_alt = "fd00:2::3/64",
    over = { "fd00:77::1/64", "fd00:77::2/64" }, host = 128,
  },
}

local function ip_of(cidr) return (cidr:gsub("/%d+$", "")) end
helpers.ip_of = ip_of

--- Endpoint string "ip:port" / "[ip]:port".
function helpers.endpoint(ip, port)
  ip = ip_of(ip)
  if ip:find(":", 1, true) then return ("[%s]:%d"):format(ip, port) end
  return ("%s:%d"):format(ip, port)
end

--- Build two namespaces joined by a veth, one engine in each, keys,
-- listen ports, peers (each with the other's endpoint) and overlay
-- addresses.  opts: impl_a, impl_b ("ours"/"wireguard-go"), family
-- ("v4"/"v6"), ports {a, b}.  Returns
--   { fam, a = node, b = node }, node = { ns, ifname, proc, priv, pub,
--     port, veth, under, over, over_ip, impl }.
function helpers.two_nodes(opts)
  local fam = helpers.families[opts.family or "v4"]
  local ports = opts.ports or { 51001, 51002 }
  local t = { fam = fam, family = opts.family or "v4" }
  local nsa, nsb = helpers.netns.new("a"), helpers.netns.new("b")
  local va, vb = helpers.netns.veth(nsa, nsb, { a = { fam.under[1] }, b = { fam.under[2] } })
  local nodes = {}
  for i, spec in ipairs({ { nsa, va, opts.impl_a or "ours" }, { nsb, vb, opts.impl_b or "ours" } }) do
    local node = { ns = spec[1], veth = spec[2], impl = spec[3], port = ports[i],
      under = fam.under[i], over = fam.over[i], over_ip = ip_of(fam.over[i]) }
    node.ifname = helpers.ifname("wt")
    node.proc = helpers.start_engine(node.ns, node.impl, node.ifname)
    node.priv, node.pub = helpers.genkey()
    helpers.wg_set_interface(node.ns, node.ifname,
      { private_key = node.priv, listen_port = node.port })
    nodes[i] = node
  end
  t.a, t.b = nodes[1], nodes[2]
  for i, node in ipairs(nodes) do
    local other = nodes[3 - i]
    helpers.wg_set_peer(node.ns, node.ifname, other.pub, {
      endpoint = helpers.endpoint(other.under, other.port),
      allowed_ips = ("%s/%d"):format(other.over_ip, fam.host),
      preshared_key = opts.preshared_key,
    })
    helpers.link_up(node.ns, node.ifname, { node.over })
  end
  return t
end

--- Wait until `from` can ping `to` across the overlay.
function helpers.wait_ping(from, to_ip, timeout_s)
  return helpers.wait_until(function() return from.ns:ping(to_ip, 1, 1) end,
    timeout_s or 10, 0.1)
end

--- Run an iperf3 TCP test from node `client` to node `server`.
-- Returns the decoded JSON result.
function helpers.iperf3(client, server, seconds, port, extra)
  local cjson = require "cjson"
  port = port or 5201
  local srv = server.ns:spawn(("iperf3 -s -1 -p %d"):format(port), { name = "iperf3-server" })
  assert(helpers.wait_until(function()
    local _, out = server.ns:exec(("ss -Hltn 'sport = :%d'"):format(port))
    return out:match("LISTEN")
  end, 5, 0.05), "iperf3 server did not listen:\n" .. srv:log())
  local ok, out, err = client.ns:exec(("iperf3 -c %s -p %d -t %g -J %s"):format(
    server.over_ip, port, seconds or 2, extra or ""))
  srv:wait(5)
  local decoded = (out ~= "" and select(2, pcall(cjson.decode, out))) or nil
  if not ok or type(decoded) ~= "table" then
    error(("iperf3 failed: %s\n%s\nserver: %s"):format(err, out, srv:log()), 2)
  end
  return decoded
end

---------------------------------------------------------------------------
-- Lua drivers: Lua processes inside a namespace, driven over a Unix socket
-- (spec/integration/drivers/lua_driver.lua).  A transport creates its TUN
-- in the namespace of its process, so Lua API tests run their Lua there.
---------------------------------------------------------------------------

--- A Lua literal for `v` (nil, booleans, numbers keeping integer/float,
-- strings, tables of those): used to pass arguments into driver code.
function helpers.lua_literal(v)
  local t = type(v)
  if v == nil then return "nil" end
  if t == "boolean" then return tostring(v) end
  if t == "number" then
    if math.type(v) == "integer" then return string.format("%d", v) end
    if v ~= v then return "(0/0)" end
    if v == math.huge then return "math.huge" end
    if v == -math.huge then return "(-math.huge)" end
    return string.format("%.17g", v)
  end
  if t == "string" then return string.format("%q", v) end
  if t == "table" then
    local parts, n = {}, #v
    for i = 1, n do parts[#parts + 1] = helpers.lua_literal(v[i]) end
    local keys = {}
    for k in pairs(v) do
      if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
    end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    for _, k in ipairs(keys) do
      parts[#parts + 1] = "[" .. helpers.lua_literal(k) .. "]=" .. helpers.lua_literal(v[k])
    end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  error("cannot pass a " .. t .. " to a driver")
end

--- Environment for a Lua process that loads this checkout's modules
-- (honours WGO_BUILD_DIR and, for the sanitizer pass, WGO_ENGINE_PRELOAD).
function helpers.lua_env()
  local root = helpers.root
  local env = {
    LUA_PATH_5_4 = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;;",
    LUA_CPATH_5_4 = root .. "/" .. helpers.build_dir .. "/?.so;;",
    WGO_BUILD_DIR = helpers.build_dir,
  }
  local preload = getenv("WGO_ENGINE_PRELOAD")
  if preload then
    env.LD_PRELOAD = preload
    env.ASAN_OPTIONS = getenv("ASAN_OPTIONS", "detect_leaks=0")
  end
  return env
end

--- The same environment as a shell prefix ("env A=1 B=2 ").
function helpers.lua_env_prefix()
  local parts = {}
  for k, v in pairs(helpers.lua_env()) do parts[#parts + 1] = quote(k .. "=" .. v) end
  table.sort(parts)
  return "env " .. table.concat(parts, " ") .. " "
end

local Driver = {}
Driver.__index = Driver
Driver.__tostring = function(self) return "lua driver " .. self.name end

--- Start a Lua driver in namespace `ns`.  opts.name labels the log;
-- opts.timeout is the default request timeout (s, default 30).
-- The driver process is registered with the fixture (cleanup kills it).
function helpers.lua_driver(ns, opts)
  opts = opts or {}
  local unix = require "socket.unix"
  local name = opts.name or "drv"
  local sock = ("%s/%s.%s.sock"):format(helpers.tmpdir(), name, uniq())
  local proc = ns:spawn("lua5.4 spec/integration/drivers/lua_driver.lua " .. quote(sock),
    { env = helpers.lua_env(), cwd = helpers.root, name = "driver-" .. name })
  proc.impl = "ours" -- its log is searched for sanitizer reports
  local conn
  local ok, err = helpers.wait_until(function()
    if not proc:alive() then error("driver exited: " .. proc:log()) end
    local c = assert(unix.stream())
    if c:connect(sock) then conn = c return true end
    c:close()
    return false
  end, 10, 0.02)
  if not ok then error("driver did not start: " .. tostring(err) .. "\n" .. proc:log(), 2) end
  return setmetatable({ name = name, ns = ns, proc = proc, conn = conn,
    timeout = opts.timeout or 30 }, Driver)
end

--- Run `code` (a Lua chunk; `...` are the extra arguments, passed as Lua
-- literals) in the driver.  Returns ok, then the chunk's values or the
-- error message.  JSON null values come back as nil; numbers as floats.
function Driver:pcall(code, ...)
  local cjson = require "cjson"
  local args = table.pack(...)
  local lits = {}
  for i = 1, args.n do lits[i] = helpers.lua_literal(args[i]) end
  local chunk = "return (function(...)\n" .. code .. "\nend)(" .. table.concat(lits, ",") .. ")"
  assert(self.conn, "driver connection closed")
  self.conn:settimeout(self.timeout)
  local _, serr = self.conn:send(cjson.encode({ code = chunk }) .. "\n")
  if serr then error(("driver %s: send failed (%s)\n%s"):format(self.name, serr, self.proc:log()), 2) end
  local line, rerr = self.conn:receive("*l")
  if not line then
    error(("driver %s: no reply (%s) to:\n%s\nlog:\n%s"):format(self.name, rerr, code, self.proc:log()), 2)
  end
  local reply = cjson.decode(line)
  if not reply.ok then return false, reply.error end
  local function unnull(v)
    if v == cjson.null then return nil end
    if type(v) == "table" then
      for k, x in pairs(v) do v[k] = unnull(x) end
    end
    return v
  end
  local n = math.tointeger(reply.n) or 0
  local out = {}
  for i = 1, n do out[i] = unnull(reply.values[i]) end
  return true, table.unpack(out, 1, n)
end

--- Like pcall, but raises (with the driver's log) when the chunk raised.
function Driver:call(code, ...)
  local res = table.pack(self:pcall(code, ...))
  if not res[1] then
    error(("driver %s raised: %s\nin:\n%s"):format(self.name, tostring(res[2]), code), 2)
  end
  return table.unpack(res, 2, res.n)
end

--- Close the connection: the driver exits, its transports close.
-- Returns the driver's exit code.
function Driver:close(timeout_s)
  if self.conn then
    self.conn:close()
    self.conn = nil
  end
  return self.proc:wait(timeout_s or 10)
end

--- kill -9 the driver process (no cleanup runs in it).
function Driver:kill9()
  -- KILL first: with the connection closed first the driver would exit
  -- cleanly and run its finalizers.
  self.proc:signal("KILL")
  local code = self.proc:wait(5)
  if self.conn then self.conn:close() self.conn = nil end
  return code
end

--- Run a one-shot Lua chunk in namespace `ns` (lua5.4 -e), optionally as
-- another user (opts.user, via setpriv).  Returns ok, stdout, stderr.
function helpers.lua_run(ns, code, opts)
  opts = opts or {}
  local cmd = helpers.lua_env_prefix()
  if opts.user then
    cmd = cmd .. ("setpriv --reuid=%s --regid=%s --clear-groups "):format(quote(opts.user),
      quote(opts.group or opts.user))
  end
  cmd = cmd .. "lua5.4 -e " .. quote(code)
  local full = "cd " .. quote(helpers.root) .. " && " .. cmd
  if ns then
    return helpers.sh("ip netns exec " .. quote(ns.name) .. " sh -c " .. quote(full))
  end
  return helpers.sh(full)
end

--- Decoded `ip -j ARGS` output run inside `ns`.
function helpers.ip_json(ns, args)
  local cjson = require "cjson"
  local out = ns:must("ip -j " .. args)
  if out:match("^%s*$") then return {} end
  return cjson.decode(out)
end


---------------------------------------------------------------------------
-- Cluster helpers (spec/integration/cluster_spec.lua): the CLI in a
-- namespace, dig, per-namespace resolv.conf, nftables counters.
---------------------------------------------------------------------------

--- Runs `bin/wgoverlay ARGS` inside `ns` (nil: the root namespace, for
-- commands that touch no network) with stdout and stderr sent to files,
-- so that nothing the command leaves running holds a pipe of ours.
-- Returns exit code, stdout, stderr.
function helpers.wgoverlay_cli(ns, args)
  local dir = helpers.tmpdir()
  local tag = uniq()
  local out, err = ("%s/cli.%s.out"):format(dir, tag), ("%s/cli.%s.err"):format(dir, tag)
  local cmd = ("cd %s && %slua5.4 bin/wgoverlay %s </dev/null >%s 2>%s; echo $?"):format(
    quote(helpers.root), helpers.lua_env_prefix(), args, quote(out), quote(err))
  local _, code
  if ns then _, code = ns:exec(cmd) else _, code = helpers.sh(cmd) end
  local o, e = read_file(out) or "", read_file(err) or ""
  os.remove(out)
  os.remove(err)
  return tonumber(code:match("%d+")), o, e
end

--- Parses `dig` output: { status, flags = set, answers = { {name, type,
-- data} }, raw }.
function helpers.parse_dig(out)
  local r = { raw = out, flags = {}, answers = {} }
  r.status = out:match("status: (%u+)")
  for f in (out:match(";; flags: ([%l ]+);") or ""):gmatch("%l+") do r.flags[f] = true end
  local section
  for line in (out .. "\n"):gmatch("([^\n]*)\n") do
    local s = line:match("^;; (%u+) SECTION:")
    if s then
      section = s
    elseif line:match("^%s*$") then
      section = nil
    elseif section == "ANSWER" and not line:match("^;") then
      local name, rtype, data = line:match("^(%S+)%s+%d+%s+IN%s+(%S+)%s+(.-)%s*$")
      if name then r.answers[#r.answers + 1] = { name = name, type = rtype, data = data } end
    end
  end
  return r
end

--- `dig @server name qtype` (opts.tcp: over TCP) inside `ns`; returns the
-- parsed answer (see parse_dig) plus `addrs`, the sorted answer data of
-- type `qtype`.
function helpers.dig(ns, server, name, qtype, opts)
  opts = opts or {}
  local ok, out, err = ns:exec(("dig +tries=1 +time=2 %s@%s %s %s"):format(
    opts.tcp and "+tcp " or "", server, quote(name), qtype or "A"))
  local r = helpers.parse_dig(out)
  r.ok, r.err = ok, err
  r.addrs = {}
  for _, a in ipairs(r.answers) do
    if a.type == (qtype or "A") then r.addrs[#r.addrs + 1] = a.data end
  end
  table.sort(r.addrs)
  return r
end

--- Writes /etc/netns/<ns name>/resolv.conf (used by `ip netns exec`) with
-- `nameserver` lines for the given addresses.  Returns the directory,
-- which the caller removes with helpers.remove_netns_etc.
function helpers.netns_resolv_conf(ns, servers)
  local name = type(ns) == "table" and ns.name or ns
  assert(name:match("^[%w%-_.]+$"), "bad namespace name")
  local dir = "/etc/netns/" .. name
  helpers.must("mkdir -p " .. quote(dir))
  local lines = {}
  for _, s in ipairs(type(servers) == "table" and servers or { servers }) do
    lines[#lines + 1] = "nameserver " .. s
  end
  helpers.write_file(dir .. "/resolv.conf", table.concat(lines, "\n") .. "\n", "644")
  return dir
end

--- Removes /etc/netns/<ns name> (made by netns_resolv_conf).
function helpers.remove_netns_etc(ns)
  local name = type(ns) == "table" and ns.name or ns
  if type(name) == "string" and name:match("^[%w%-_.]+$") then
    helpers.sh("rm -rf " .. quote("/etc/netns/" .. name))
  end
end

--- Counters of the rules of an nftables table in `ns`, by rule comment:
-- { [comment] = { packets = n, bytes = n } }.
function helpers.nft_counters(ns, family, tbl)
  local cjson = require "cjson"
  local doc = cjson.decode(ns:must(("nft -j list table %s %s"):format(family, tbl)))
  local res = {}
  for _, item in ipairs(doc.nftables or {}) do
    local rule = item.rule
    if rule and rule.comment then
      for _, e in ipairs(rule.expr or {}) do
        if e.counter then
          res[rule.comment] = { packets = e.counter.packets, bytes = e.counter.bytes }
        end
      end
    end
  end
  return res
end

--- Octal permission bits of `path` as a string ("600"), or nil.
function helpers.file_mode(path)
  local ok, out = helpers.sh("stat -c %a " .. quote(path))
  return ok and out:gsub("%s+$", "") or nil
end

---------------------------------------------------------------------------
-- TURN helpers (spec/integration/turn_spec.lua): a coturn server in a
-- namespace, configured entirely from the command line.
---------------------------------------------------------------------------

--- Starts coturn (`turnserver`) in `ns` with long-term credentials.
-- opts: `listen` (list of IPs, required), `relay_ip` (default listen[1]),
-- `port` (default 3478), `users` ({ "user:pass", ... }), `realm`
-- (default "test.internal"), `extra` (more arguments, a string).  No
-- config file (-n), no TLS/DTLS, no CLI; pid file, user database and log
-- live in the fixture's temporary directory.  Waits until it listens.
-- Returns the Proc, with `.turnlog` set to the log file.
function helpers.turnserver(ns, opts)
  local dir = helpers.tmpdir()
  local tag = uniq()
  local log = ("%s/coturn.%s.log"):format(dir, tag)
  local port = opts.port or 3478
  local args = { "turnserver", "-n", "--lt-cred-mech", "--realm", quote(opts.realm or "test.internal"),
    "--listening-port", tostring(port), "--no-tls", "--no-dtls", "--no-cli",
    "--relay-ip", quote(opts.relay_ip or opts.listen[1]),
    "--pidfile", quote(("%s/turnserver.%s.pid"):format(dir, tag)),
    "--userdb", quote(("%s/turndb.%s"):format(dir, tag)),
    "--log-file", quote(log), "--simple-log", "--verbose" }
  for _, ip in ipairs(opts.listen) do
    args[#args + 1] = "--listening-ip"
    args[#args + 1] = quote(ip)
  end
  for _, u in ipairs(opts.users or {}) do
    args[#args + 1] = "--user"
    args[#args + 1] = quote(u)
  end
  if opts.extra then args[#args + 1] = opts.extra end
  local proc = ns:spawn(table.concat(args, " "), { name = "turnserver" })
  proc.turnlog = log
  local ok = helpers.wait_until(function()
    if not proc:alive() then error("turnserver exited") end
    local _, out = ns:exec(("ss -Hlun 'sport = :%d'"):format(port))
    for _, ip in ipairs(opts.listen) do
      if not out:find(ip .. ":" .. port, 1, true) then return false end
    end
    return true
  end, 10, 0.05)
  if not ok then
    error("turnserver did not start:\n" .. proc:log() .. "\n" .. (read_file(log) or ""), 2)
  end
  return proc
end

return helpers
