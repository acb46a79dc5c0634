--- The `wgoverlay` command line.
-- @module wgoverlay.cli
local argparse = require "argparse"

local M = {}

local function die(fmt, ...)
  io.stderr:write("wgoverlay: ", string.format(fmt, ...), "\n")
  return 1
end

local commands = {}

function commands.genkey()
  local core = require "wgoverlay.core"
  local priv = core.generate_keys()
  io.write(priv, "\n")
  return 0
end

function commands.genpsk()
  local core = require "wgoverlay.core"
  io.write(core.generate_psk(), "\n")
  return 0
end

function commands.pubkey()
  local core = require "wgoverlay.core"
  local priv = io.read("l")
  if not priv then return die("pubkey: no private key on standard input") end
  priv = priv:gsub("%s+$", "")
  local pub, err = core.public_key(priv)
  if not pub then return die("pubkey: %s", err) end
  io.write(pub, "\n")
  return 0
end

-- `interface --metrics`: a luv loop serves /metrics until SIGINT, SIGTERM
-- or SIGHUP (without --metrics the process just waits for one).  Returns
-- the signal's name, or nil and the error of a failed callback (a bug:
-- logged, and the interface is removed as on a signal).
local function serve_until_signal(dev, ifname, listen)
  local uv = require "luv"
  local metrics = require "wgoverlay.metrics"
  local sig, failure
  local function log(fmt, ...) io.stderr:write("wgoverlay: ", string.format(fmt, ...), "\n") end
  local function guard(where, fn)
    return function(...)
      local ok, err = xpcall(fn, debug.traceback, ...)
      if not ok then
        log("internal error in %s: %s", where, tostring(err))
        failure = failure or string.format("internal error in %s", where)
        uv.stop()
      end
    end
  end
  local server, err = metrics.serve({ listen = listen, log = log, guard = guard, collect = function(set)
    local st, serr = dev:status()
    if not st then error(serr, 0) end
    metrics.collect_device(set, st)
  end })
  if not server then return nil, err end
  log("metrics on http://%s%s", server.address(), metrics.PATH)
  local handles = {}
  for _, name in ipairs({ "sigint", "sigterm", "sighup" }) do
    local h = uv.new_signal()
    h:start(name, function()
      sig = name:sub(4):upper()
      uv.stop()
    end)
    handles[#handles + 1] = h
  end
  require("wgoverlay.sdnotify").ready(string.format("interface %s up, metrics on %s", ifname,
    server.address()))
  uv.run()
  server.close()
  for _, h in ipairs(handles) do h:close() end
  uv.run("nowait")
  if failure then return nil, failure end
  return sig
end

--- Runs the engine for one interface in the foreground, as
-- `wireguard-go -f IFNAME` does: configured with wg(8) over the UAPI socket,
-- addresses set by the caller; SIGINT/SIGTERM remove interface and socket.
-- With --metrics IP:PORT it also serves Prometheus metrics there.
function commands.interface(args)
  local core = require "wgoverlay.core"
  local dev, err, errno = core.open(args.ifname, { uapi = true, mtu = args.mtu })
  if not dev then
    if (errno == 1 or errno == 13) and not err:find("CAP_NET_ADMIN", 1, true) then
      err = string.format("cannot create interface \"%s\": permission denied: needs CAP_NET_ADMIN (%s)",
        args.ifname, err)
    end
    return die("%s", err)
  end
  io.stderr:write(string.format("wgoverlay: interface %s up, UAPI socket /var/run/wireguard/%s.sock, AEAD %s\n",
    args.ifname, args.ifname, core.aead_name()))
  -- under systemd (Type=notify): ready once the interface and its socket
  -- exist (and the metrics endpoint listens, if asked for)
  local sdnotify = require "wgoverlay.sdnotify"
  local sig
  if args.metrics then
    sig, err = serve_until_signal(dev, args.ifname, args.metrics)
    if not sig then
      sdnotify.stopping(string.format("removing interface %s", args.ifname))
      dev:close()
      return die("%s", err)
    end
  else
    sdnotify.ready(string.format("interface %s up", args.ifname))
    sig = core.wait_signal()
  end
  sdnotify.stopping(string.format("SIG%s: removing interface %s", sig, args.ifname))
  dev:close()
  io.stderr:write(string.format("wgoverlay: SIG%s: interface %s removed\n", sig, args.ifname))
  return 0
end

local RUN_DIR = "/var/run/wireguard"

local function pidfile(ifname) return RUN_DIR .. "/" .. ifname .. ".pid" end

--- `up FILE`: brings up an interface from a wg-quick style file.  The
-- engine runs in a background process (or in the foreground with
-- --foreground) until `down FILE` or SIGTERM.
function commands.up(args)
  local core = require "wgoverlay.core"
  local config = require "wgoverlay.config"
  local cfg, err = config.load(args.file)
  if not cfg then return die("%s", err) end
  local ifname = args.interface or config.interface_name(args.file)
  local ready_fd
  if not args.foreground then
    local role, a, b, pid = core.daemonize()
    if not role then return die("cannot start the engine process: %s", a) end
    if role == "parent" then
      if not a then return die("%s", b) end
      io.write(string.format("interface %s up (engine pid %d)\n", ifname, pid))
      return 0
    end
    ready_fd = a
  end
  local function fail(msg)
    if ready_fd then core.ready(ready_fd, false, msg) return 1 end
    return die("%s", msg)
  end
  local transport = require "wgoverlay.transport"
  local t, terr = transport.new({ private_key = cfg.interface.private_key, listen_port = cfg.interface.listen_port,
                                  address = cfg.interface.addresses, mtu = cfg.interface.mtu,
                                  fwmark = cfg.interface.fwmark }, ifname)
  if not t then return fail(terr) end
  local ok
  ok, terr = t:create_interface()
  if not ok then return fail(terr) end
  ok, terr = t:configure(cfg.peers)
  if not ok then
    t:shutdown()
    return fail(terr)
  end
  core.write_private(pidfile(ifname), tostring(core.getpid()) .. "\n")
  if ready_fd then
    core.ready(ready_fd, true, "")
  else
    io.stderr:write(string.format("wgoverlay: interface %s up\n", ifname))
  end
  core.wait_signal()
  t:shutdown()
  os.remove(pidfile(ifname))
  return 0
end

function commands.down(args)
  local core = require "wgoverlay.core"
  local config = require "wgoverlay.config"
  local ifname = args.interface or config.interface_name(args.file)
  local f = io.open(pidfile(ifname), "r")
  local pid = f and tonumber(f:read("l"))
  if f then f:close() end
  if not pid then return die("interface %s is not up (no %s)", ifname, pidfile(ifname)) end
  local ok, err = core.kill(pid, "TERM")
  if not ok then
    os.remove(pidfile(ifname))
    return die("interface %s: engine pid %d: %s", ifname, pid, err)
  end
  -- Wait until the engine has exited and its socket is gone (at most 5 s).
  -- (io.open cannot tell: opening a Unix socket fails whether it exists
  -- or not.)
  local function has_socket()
    for _, name in ipairs(core.list_sockets()) do
      if name == ifname then return true end
    end
    return false
  end
  local function alive()
    local stat = io.open("/proc/" .. pid .. "/stat", "r")
    if not stat then return false end
    local st = stat:read("a"):match("^%d+ %b() (%a)")
    stat:close()
    return st ~= nil and st ~= "Z" and st ~= "X"
  end
  for _ = 1, 100 do
    if not alive() and not has_socket() then
      os.remove(pidfile(ifname))
      return 0
    end
    os.execute("sleep 0.05")
  end
  return die("interface %s: engine pid %d did not stop", ifname, pid)
end

local function human_bytes(n)
  n = n or 0
  local units = { "B", "KiB", "MiB", "GiB", "TiB" }
  local i = 1
  while n >= 1024 and i < #units do n, i = n / 1024, i + 1 end
  return i == 1 and string.format("%d B", n) or string.format("%.2f %s", n, units[i])
end

local function human_age(epoch, now)
  if not epoch or epoch == 0 then return "never" end
  local s = math.max(0, math.floor(now - epoch))
  if s < 60 then return string.format("%ds ago", s) end
  if s < 3600 then return string.format("%dm %ds ago", s // 60, s % 60) end
  return string.format("%dh %dm ago", s // 3600, (s % 3600) // 60)
end

--- Renders a status table as text (peer, endpoint, handshake age, transfer).
function M.format_status(st, now)
  now = now or os.time()
  local out = {}
  out[#out + 1] = string.format("interface: %s", st.interface)
  if st.public_key then out[#out + 1] = string.format("  public key: %s", st.public_key) end
  out[#out + 1] = string.format("  listening port: %s", tostring(st.listen_port))
  out[#out + 1] = ""
  local rows = { { "PEER", "ENDPOINT", "HANDSHAKE", "RECEIVED", "SENT", "ALLOWED IPS" } }
  for _, p in ipairs(st.peers) do
    local aips = p.allowed_ips or {}
    rows[#rows + 1] = { p.public_key:sub(1, 12) .. "…", p.endpoint or "(none)", human_age(p.last_handshake, now),
                        human_bytes(p.rx_bytes), human_bytes(p.tx_bytes),
                        #aips > 0 and table.concat(aips, ", ") or "(none)" }
  end
  local widths = {}
  for _, r in ipairs(rows) do
    for i, c in ipairs(r) do widths[i] = math.max(widths[i] or 0, utf8.len(c) or #c) end
  end
  for _, r in ipairs(rows) do
    local cells = {}
    for i, c in ipairs(r) do
      cells[i] = i == #r and c or c .. string.rep(" ", widths[i] - (utf8.len(c) or #c))
    end
    out[#out + 1] = "  " .. table.concat(cells, "  ")
  end
  if #st.peers == 0 then out[#out + 1] = "  (no peers)" end
  return table.concat(out, "\n") .. "\n"
end

-- JSON for status tables.  lua-cjson 2.1.0 writes an empty table as {},
-- so lists (the top-level list, peers, allowed_ips) are encoded here and
-- only scalars go through cjson.
local ARRAY_FIELDS = { peers = true, allowed_ips = true }

local function to_json(v, is_array)
  local cjson = require "cjson"
  if type(v) ~= "table" then return cjson.encode(v) end
  local parts = {}
  if is_array then
    for _, x in ipairs(v) do parts[#parts + 1] = to_json(x, false) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  for _, k in ipairs(keys) do
    parts[#parts + 1] = cjson.encode(k) .. ":" .. to_json(v[k], ARRAY_FIELDS[k] or false)
  end
  return "{" .. table.concat(parts, ",") .. "}"
end
M.status_json = to_json

function commands.status(args)
  if args.state then
    -- the cluster view of a running node (members, health, RTT)
    return require("wgoverlay.cli_cluster").status(args)
  end
  local core = require "wgoverlay.core"
  local names = args.ifname and { args.ifname } or core.list_sockets()
  table.sort(names)
  local all = {}
  for _, name in ipairs(names) do
    local st, err = core.uapi_status(name)
    if st then
      all[#all + 1] = st
    elseif args.ifname then
      return die("%s", err)
    else
      -- Listing every interface: a stale socket of a killed engine (or
      -- one we may not read) must not hide the others.
      io.stderr:write("wgoverlay: skipped: ", err, "\n")
    end
  end
  if args.json then
    if args.ifname then
      io.write(to_json(all[1], false), "\n")
    else
      io.write(to_json(all, true), "\n")
    end
  else
    if #all == 0 then io.write("no interfaces\n") end
    for i, st in ipairs(all) do
      if i > 1 then io.write("\n") end
      io.write(M.format_status(st))
    end
  end
  return 0
end

local function parser()
  local p = argparse("wgoverlay", "Encrypted overlay networking over a userspace WireGuard engine.")
  p:command_target("command")
  p:command("genkey", "Print a new private key (base64).")
  p:command("genpsk", "Print a new preshared key (base64).")
  p:command("pubkey", "Read a private key on stdin, print its public key.")
  local i = p:command("interface", "Run the engine for IFNAME in the foreground (configure it with wg).")
  i:argument("ifname", "Interface name (at most 15 bytes).")
  i:option("--mtu", "Interface MTU.", "1420"):convert(function(v) return math.tointeger(tonumber(v)) end)
  i:option("--metrics", "Serve Prometheus metrics at http://IP:PORT/metrics (IPv6: [IP]:PORT; default: off).")
  local up = p:command("up", "Bring up an interface from a wg-quick style FILE.")
  up:argument("file", "Configuration file (interface name from its base name).")
  up:option("--interface", "Interface name instead of the file's base name.")
  up:flag("--foreground", "Stay in the foreground (default: run the engine in the background).")
  local down = p:command("down", "Take down the interface brought up from FILE.")
  down:argument("file", "Configuration file used with up.")
  down:option("--interface", "Interface name instead of the file's base name.")
  local st = p:command("status", "Show interfaces: peers, endpoints, handshake age, transfer.")
  st:argument("ifname", "Interface (default: all).", nil):args("?")
  st:flag("--json", "Machine-readable output.")
  st:option("--state", "Show the cluster node running from this state directory instead.")
  require("wgoverlay.cli_cluster").register(p)
  return p
end

function M.main(argv)
  local p = parser()
  local ok, args = p:pparse(argv)
  if not ok then
    io.stderr:write(p:get_usage(), "\n\nwgoverlay: ", args, "\n")
    return 2
  end
  local fn = commands[args.command] or require("wgoverlay.cli_cluster").commands[args.command]
  return fn(args)
end

return M
