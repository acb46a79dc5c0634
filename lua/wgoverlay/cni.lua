--- The CNI plugin `wgoverlay` (CNI specification 1.0.0; results also in
-- the 0.4.0 form): ADD, DEL, CHECK, VERSION.  bin/wgoverlay-cni runs
-- `main`; a runtime executes it under the name `wgoverlay` from its CNI
-- plugin directory, with the network configuration on stdin and
-- CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS, CNI_PATH
-- in the environment.
--
-- The plugin is a thin client of the node's daemon: it checks its input,
-- then sends attach / detach / check over the daemon's control socket
-- (`<state>/control.sock`, wgoverlay.control) exactly as `wgoverlay
-- attach` does; the daemon (wgoverlay.containers) creates the veth, takes
-- an address from the node's slice, publishes the DNS name and frees it
-- all again.  One implementation for both.
--
-- Network configuration keys (anything else is refused, so that a typo
-- does not go unnoticed):
--
--   cniVersion, name, type      as the spec says ("type": "wgoverlay")
--   state   (required)          the node's state directory, e.g. "/var/lib/wgo"
--   egress  (bool, false)       default route through the node, masqueraded
--   mtu     (int)               the container's MTU (default and maximum:
--                               the node's overlay MTU)
--   dnsName (string)            the container's DNS name when the runtime
--                               passes none in CNI_ARGS
--   labels  (object)            network policy labels {KEY: VALUE}; CNI_ARGS
--                               `WGO_LABELS=K=V,K2=V2` adds to them (and wins)
--   args, runtimeConfig, capabilities, prevResult, dns, cni.dev/...
--                               set by runtimes; accepted (prevResult is
--                               passed on, see below)
--
-- The container's DNS name: CNI_ARGS `WGO_NAME`, else `K8S_POD_NAME`
-- (podman passes the container's name there), else `dnsName`, else the
-- first 12 characters of the container ID (a 64-character ID does not fit
-- a DNS label).  A name is lowered and characters a DNS label cannot hold
-- become '-'.
--
-- Errors are the spec's error object on stdout with exit status 1:
-- 1 incompatible version, 4 bad environment, 6 undecodable JSON, 7 bad
-- network configuration, 3 container namespace does not exist, 5 state
-- directory unreadable, 11 daemon not running (try again later), and
-- ours: 100 the daemon refused or failed, 101 slice exhausted, 102 already
-- attached, 103 CHECK found the container changed.
-- @module wgoverlay.cni
local cjson = require "cjson"

local M = {}

M.VERSIONS = { "0.4.0", "1.0.0" }
M.CODES = { incompatible = 1, unsupported = 2, unknown_container = 3, env = 4, io = 5, decode = 6, config = 7,
            try_again = 11, failed = 100, exhausted = 101, exists = 102, changed = 103 }

local KNOWN_KEYS = { cniVersion = true, name = true, type = true, state = true, egress = true, mtu = true,
                     dnsName = true, args = true, runtimeConfig = true, capabilities = true, prevResult = true,
                     dns = true, labels = true }

local CniError = {}
CniError.__index = CniError

local function fail(code, fmt, ...)
  error(setmetatable({ code = code, msg = string.format(fmt, ...) }, CniError), 0)
end

local function supported(v)
  for _, s in ipairs(M.VERSIONS) do if s == v then return true end end
  return false
end

--- Parses CNI_ARGS ("K=V;K2=V2").
function M.parse_args(s)
  local t = {}
  if type(s) ~= "string" or s == "" then return t end
  for pair in s:gmatch("[^;]+") do
    local k, v = pair:match("^([^=]+)=(.*)$")
    if not k then fail(M.CODES.env, "CNI_ARGS \"%s\" invalid: expected KEY=VALUE pairs separated by ';'", s) end
    t[k] = v
  end
  return t
end

--- A DNS label from a runtime's name (lowered, other characters to '-'),
-- or nil when nothing usable is left.
function M.label(s)
  if type(s) ~= "string" then return nil end
  local l = s:lower():gsub("[^a-z0-9-]", "-"):gsub("^%-+", ""):sub(1, 63):gsub("%-+$", "")
  if l == "" then return nil end
  return l
end

--- The container's policy labels: the configuration's `labels`, then
-- CNI_ARGS `WGO_LABELS` ("K=V,K2=V2"); nil when none.
function M.labels(conf, env_args)
  local policy = require "wgoverlay.policy"
  local out = {}
  if conf.labels ~= nil then
    if type(conf.labels) ~= "table" then fail(M.CODES.config, "labels: expected an object {KEY: VALUE}") end
    for k, v in pairs(conf.labels) do out[k] = v end
  end
  local s = env_args.WGO_LABELS
  if type(s) == "string" and s ~= "" then
    local list = {}
    for item in s:gmatch("[^,]+") do list[#list + 1] = item end
    local parsed, err = policy.parse_labels(list)
    if not parsed then fail(M.CODES.env, "CNI_ARGS WGO_LABELS: %s", err) end
    for k, v in pairs(parsed) do out[k] = v end
  end
  local ok, err = policy.check_labels(out, "labels")
  if not ok then fail(M.CODES.config, "%s", err) end
  if next(out) == nil then return nil end
  return out
end

--- The container's DNS name (see the module's description).
function M.container_name(env_args, conf, container_id)
  return M.label(env_args.WGO_NAME) or M.label(env_args.K8S_POD_NAME) or M.label(conf.dnsName)
      or M.label(container_id:sub(1, 12))
end

--- Checks the network configuration; returns it.
function M.check_config(conf)
  if type(conf) ~= "table" then fail(M.CODES.decode, "network configuration: a JSON object expected") end
  if type(conf.cniVersion) ~= "string" then
    fail(M.CODES.config, "network configuration: \"cniVersion\" missing (one of %s)", table.concat(M.VERSIONS, ", "))
  end
  if not supported(conf.cniVersion) then
    fail(M.CODES.incompatible, "CNI version %s is not supported by wgoverlay: use one of %s", conf.cniVersion,
      table.concat(M.VERSIONS, ", "))
  end
  local keys = {}
  for k in pairs(conf) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  for _, k in ipairs(keys) do
    if not KNOWN_KEYS[k] and not k:match("^cni%.dev/") then
      local list = {}
      for kk in pairs(KNOWN_KEYS) do list[#list + 1] = kk end
      table.sort(list)
      fail(M.CODES.config, "network configuration key \"%s\" unknown: wgoverlay takes %s", k, table.concat(list, ", "))
    end
  end
  if type(conf.name) ~= "string" or conf.name == "" then
    fail(M.CODES.config, "network configuration: \"name\" (the network's name) missing")
  end
  if type(conf.state) ~= "string" or conf.state:sub(1, 1) ~= "/" then
    fail(M.CODES.config, "network configuration: \"state\" must be the node's state directory, an absolute path "
      .. "(e.g. \"/var/lib/wgo\"), got %s", conf.state == nil and "nothing" or cjson.encode(conf.state))
  end
  if conf.egress ~= nil and type(conf.egress) ~= "boolean" then
    fail(M.CODES.config, "network configuration: \"egress\" must be true or false")
  end
  local mtu = type(conf.mtu) == "number" and math.tointeger(conf.mtu)
  if conf.mtu ~= nil and (not mtu or mtu < 576 or mtu > 65535) then
    fail(M.CODES.config, "network configuration: \"mtu\" must be an integer 576..65535 (default: the overlay MTU)")
  end
  if conf.dnsName ~= nil and not M.label(conf.dnsName) then
    fail(M.CODES.config, "network configuration: \"dnsName\" must be a DNS label")
  end
  if conf.prevResult ~= nil and type(conf.prevResult) ~= "table" then
    fail(M.CODES.config, "network configuration: \"prevResult\" must be an object")
  end
  return conf
end

local function need_env(env, k)
  local v = env[k]
  if type(v) ~= "string" or v == "" then fail(M.CODES.env, "environment variable %s missing", k) end
  return v
end

-- The container ID and interface name, checked as the spec says.
local function ids(env)
  local id = need_env(env, "CNI_CONTAINERID")
  if not id:match("^[%w][%w_.%-]*$") or #id > 1024 then
    fail(M.CODES.env, "CNI_CONTAINERID \"%s\" invalid: letters, digits, '_', '.', '-', starting with a letter "
      .. "or digit", id)
  end
  local ifname = need_env(env, "CNI_IFNAME")
  if #ifname > 15 or not ifname:match("^[%w_.%-]+$") or ifname == "." or ifname == ".." then
    fail(M.CODES.env, "CNI_IFNAME \"%s\" invalid: 1-15 letters, digits, '_', '.', '-'", ifname)
  end
  return id, ifname, "cni:" .. id .. "/" .. ifname
end

-- Before asking the daemon: is there a state directory and a socket?
local function check_state(dir)
  local uv = require "luv"
  local st, err = uv.fs_stat(dir)
  if not st then
    if tostring(err):match("^EACCES") then
      fail(M.CODES.io, "state directory %s unreadable (permission denied): the plugin must run as root", dir)
    end
    return "missing"
  end
  if st.type ~= "directory" then fail(M.CODES.config, "\"state\": %s is not a directory", dir) end
  local _, serr = uv.fs_stat(dir .. "/control.sock")
  if serr and tostring(serr):match("^EACCES") then
    fail(M.CODES.io, "state directory %s unreadable (permission denied): the plugin must run as root", dir)
  end
  if serr then return "no-daemon" end
  return "ok"
end

local function no_daemon(dir, why)
  fail(M.CODES.try_again, "no wgoverlay daemon runs for %s%s: start it (`wgoverlay run --state %s`, or the "
    .. "wgoverlay@ systemd unit) and try again", dir, why and (" (" .. why .. ")") or "", dir)
end

local KIND_CODE = { invalid = M.CODES.config, exhausted = M.CODES.exhausted, exists = M.CODES.exists,
                    changed = M.CODES.changed, missing = M.CODES.unknown_container }

-- One request to the daemon; raises a CNI error on failure.
local function ask(dir, req)
  local control = require "wgoverlay.control"
  local r, err, kind = control.request(dir, req)
  if r then return r end
  err = tostring(err)
  if err:match("^no daemon runs") or err:match("did not answer") or err:match("closed the connection") then
    no_daemon(dir, err:match("%((.-)%)$") or err)
  end
  if err:match("^permission denied") then fail(M.CODES.io, "%s", err) end
  fail(KIND_CODE[kind] or M.CODES.failed, "%s", err)
end

--- The CNI result for an attached container `d` (containers.Set:describe),
-- appended to `prev` (prevResult) when the plugin is chained after another.
function M.result(version, d, prev)
  local res = { cniVersion = version, interfaces = {}, ips = {}, routes = {} }
  if type(prev) == "table" then
    for _, k in ipairs({ "interfaces", "ips", "routes" }) do
      if type(prev[k]) == "table" then for _, v in ipairs(prev[k]) do table.insert(res[k], v) end end
    end
    if type(prev.dns) == "table" and next(prev.dns) then res.dns = prev.dns end -- the earlier plugin's wins
  end
  res.interfaces[#res.interfaces + 1] = { name = d.host_if, mac = d.host_mac }
  res.interfaces[#res.interfaces + 1] = { name = d.ifname, mac = d.mac, sandbox = d.netns }
  local idx = #res.interfaces - 1 -- 0-based index of the container's interface
  local function ip(addr, gw, ver)
    local e = { address = addr, gateway = gw, interface = idx }
    if version == "0.4.0" then e.version = ver end
    res.ips[#res.ips + 1] = e
  end
  ip(d.ip .. "/32", d.gateway4, "4")
  if d.ip6 then ip(d.ip6 .. "/128", d.gateway6, "6") end
  res.routes[#res.routes + 1] = { dst = d.cluster4, gw = d.gateway4 }
  if d.ip6 then res.routes[#res.routes + 1] = { dst = d.cluster6, gw = d.gateway6 } end
  if d.egress then
    res.routes[#res.routes + 1] = { dst = "0.0.0.0/0", gw = d.gateway4 }
    if d.ip6 then res.routes[#res.routes + 1] = { dst = "::/0", gw = d.gateway6 } end
  end
  if not res.dns then
    local ns = {}
    for _, a in ipairs(d.dns and d.dns.nameservers or {}) do ns[#ns + 1] = a end
    res.dns = { nameservers = ns, domain = d.dns and d.dns.domain, search = { d.dns and d.dns.domain } }
  end
  return res
end

--- Runs one CNI command.
-- @tparam table env the environment (CNI_COMMAND ...)
-- @tparam string input stdin
-- @return the output (a JSON text or "") or raises a CNI error
function M.run(env, input)
  local cmd = env.CNI_COMMAND
  if cmd == "VERSION" then
    local ok, conf = pcall(cjson.decode, input ~= "" and input or "{}")
    local v = ok and type(conf) == "table" and type(conf.cniVersion) == "string" and conf.cniVersion or "1.0.0"
    return cjson.encode({ cniVersion = v, supportedVersions = M.VERSIONS })
  end
  if cmd ~= "ADD" and cmd ~= "DEL" and cmd ~= "CHECK" then
    fail(M.CODES.env, "CNI_COMMAND \"%s\" invalid: ADD, DEL, CHECK or VERSION", tostring(cmd or ""))
  end
  local ok, conf = pcall(cjson.decode, input or "")
  if not ok then fail(M.CODES.decode, "network configuration on stdin is not valid JSON: %s", tostring(conf)) end
  M.check_config(conf)
  local id, ifname, key = ids(env)
  local args = M.parse_args(env.CNI_ARGS)
  local dir = conf.state

  if cmd == "DEL" then
    -- idempotent: nothing attached (no state directory, already
    -- detached, namespace gone) is success
    local st = check_state(dir)
    if st == "missing" then return "" end
    if st == "no-daemon" then no_daemon(dir) end
    ask(dir, { cmd = "detach", key = key, missing_ok = true })
    return ""
  end

  local netns = need_env(env, "CNI_NETNS")
  local st = check_state(dir)
  if st == "missing" then
    fail(M.CODES.config, "state directory %s does not exist: set \"state\" to the node's state directory, or make "
      .. "this machine a node first (`wgoverlay init` or `wgoverlay join --state %s`)", dir, dir)
  end
  if st == "no-daemon" then no_daemon(dir) end
  local f = io.open(netns)
  if not f then fail(M.CODES.unknown_container, "network namespace %s does not exist", netns) end
  f:close()

  if cmd == "CHECK" then
    local d = ask(dir, { cmd = "check", key = key })
    -- what ADD reported must still be what the daemon holds
    local prev = conf.prevResult
    if type(prev) == "table" and type(prev.ips) == "table" then
      local found = false
      for _, e in ipairs(prev.ips) do
        if type(e) == "table" and e.address == d.ip .. "/32" then found = true end
      end
      if not found then
        fail(M.CODES.changed, "prevResult does not hold %s/32, the address wgoverlay gave this container", d.ip)
      end
    end
    return ""
  end

  local name = M.container_name(args, conf, id)
  local d = ask(dir, { cmd = "attach", key = key, netns = netns, ifname = ifname, name = name, container_id = id,
                       egress = conf.egress == true or nil, mtu = conf.mtu and math.tointeger(conf.mtu) or nil,
                       labels = M.labels(conf, args) })
  return cjson.encode(M.result(conf.cniVersion, d, conf.prevResult))
end

--- Entry point: reads stdin and the environment, writes the result or the
-- error object to stdout.  Returns the exit status.
function M.main(getenv, stdin, stdout)
  getenv = getenv or os.getenv
  local env = {}
  for _, k in ipairs({ "CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH" }) do
    env[k] = getenv(k)
  end
  local input = (stdin or io.stdin):read("a") or ""
  local out = stdout or io.stdout
  local ok, res = pcall(M.run, env, input)
  if ok then
    if res ~= "" then out:write(res, "\n") end
    return 0
  end
  local e = getmetatable(res) == CniError and res or { code = M.CODES.failed, msg = "internal error: "
    .. tostring(res):match("^[^\n]*") }
  local version = "1.0.0"
  local okd, conf = pcall(cjson.decode, input)
  if okd and type(conf) == "table" and type(conf.cniVersion) == "string" and supported(conf.cniVersion) then
    version = conf.cniVersion
  end
  out:write(cjson.encode({ cniVersion = version, code = e.code, msg = e.msg }), "\n")
  io.stderr:write("wgoverlay-cni: ", e.msg, "\n")
  return 1
end

return M
