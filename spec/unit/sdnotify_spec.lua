-- wgoverlay.sdnotify against real unix datagram sockets bound here, and
-- systemd/wgoverlay@.service through `systemd-analyze verify` (a clean
-- unit passes without a single diagnostic; broken copies do not).  No root.

local sdnotify = require "wgoverlay.sdnotify"
local unix = require "socket.unix"

local function sh(cmd)
  local errf = os.tmpname()
  local p = assert(io.popen("{ " .. cmd .. "\n} 2>" .. errf, "r"))
  local out = p:read("a")
  local ok, _, code = p:close()
  local f = io.open(errf, "rb")
  local err = f and f:read("a") or ""
  if f then f:close() end
  os.remove(errf)
  return ok == true, out, err, code
end

local function quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function mkdtemp()
  local ok, out = sh("mktemp -d /tmp/wgo-sdnotify.XXXXXX")
  assert(ok)
  return (out:gsub("%s+$", ""))
end

-- A bound datagram socket standing in for systemd's.
local function listener(dir)
  local path = dir .. "/notify.sock"
  local s = assert(unix.dgram())
  assert(s:bind(path))
  s:settimeout(2)
  return s, path
end

describe("wgoverlay.sdnotify", function()
  local dir
  before_each(function()
    dir = mkdtemp()
    sdnotify._reset()
  end)
  after_each(function()
    sdnotify.log = nil
    sdnotify._reset()
    sh("rm -rf " .. quote(dir))
  end)

  it("sends READY=1 and STATUS= to the socket, READY=1 only once", function()
    local s, path = listener(dir)
    assert.is_true(sdnotify.notify("READY=1\nSTATUS=leader up, interface wgo0", path))
    assert.equal("READY=1\nSTATUS=leader up, interface wgo0", s:receive())
    s:close()
  end)

  it("ready() sends READY=1 once; later calls send only the status", function()
    local s, path = listener(dir)
    -- notify() reads NOTIFY_SOCKET; pass the path through a wrapper
    local real = sdnotify.notify
    sdnotify.notify = function(msg) return real(msg, path) end
    finally(function() sdnotify.notify = real end)
    assert.is_false(sdnotify.is_ready())
    assert.is_true(sdnotify.ready("interface wg0 up\nsecond line"))
    assert.equal("READY=1\nSTATUS=interface wg0 up second line", s:receive())
    assert.is_true(sdnotify.is_ready())
    assert.is_true(sdnotify.ready("still up"))
    assert.equal("STATUS=still up", s:receive())
    assert.is_false(sdnotify.ready())
    assert.is_true(sdnotify.stopping("SIGTERM"))
    assert.equal("STOPPING=1\nSTATUS=SIGTERM", s:receive())
    assert.is_true(sdnotify.status("waiting for the leader"))
    assert.equal("STATUS=waiting for the leader", s:receive())
    s:settimeout(0.1)
    assert.is_nil(s:receive()) -- nothing else was sent
    s:close()
  end)

  it("reads NOTIFY_SOCKET from the environment (a child process sends)", function()
    local s, path = listener(dir)
    local ok, _, err = sh(("NOTIFY_SOCKET=%s lua5.4 -e %s"):format(quote(path), quote(
      "package.path = './lua/?.lua;' .. package.path; local n = require 'wgoverlay.sdnotify'; "
      .. "assert(n.ready('from a child')); assert(n.stopping())")))
    assert.is_true(ok, err)
    assert.equal("READY=1\nSTATUS=from a child", s:receive())
    assert.equal("STOPPING=1", s:receive())
    s:close()
  end)

  it("is a no-op without NOTIFY_SOCKET", function()
    local ok, out, err = sh("env -u NOTIFY_SOCKET lua5.4 -e " .. quote(
      "package.path = './lua/?.lua;' .. package.path; local n = require 'wgoverlay.sdnotify'; "
      .. "io.write(tostring(n.ready('x')), ' ', tostring(n.stopping()), ' ', tostring(n.status('y')))"))
    assert.is_true(ok, err)
    assert.equal("false false false", out)
    assert.equal("", err)
  end)

  it("never raises: a missing socket, an abstract or relative name give nil and a message, logged once", function()
    local logged = {}
    sdnotify.log = function(m) logged[#logged + 1] = m end
    local r, err = sdnotify.notify("READY=1", dir .. "/nobody.sock")
    assert.is_nil(r)
    assert.truthy(err:find("nobody.sock", 1, true), err)
    r, err = sdnotify.notify("READY=1", "@systemd-notify")
    assert.is_nil(r)
    assert.truthy(err:find("abstract", 1, true), err)
    r, err = sdnotify.notify("READY=1", "relative.sock")
    assert.is_nil(r)
    assert.truthy(err:find("absolute", 1, true), err)
    assert.equal(1, #logged)
    assert.truthy(logged[1]:find("nobody.sock", 1, true), logged[1])
  end)

  it("a failing logger does not raise either", function()
    sdnotify.log = function() error("broken logger") end
    local r = sdnotify.notify("READY=1", dir .. "/nobody.sock")
    assert.is_nil(r)
  end)
end)

describe("systemd/wgoverlay@.service", function()
  local UNIT = "systemd/wgoverlay@.service"
  local have_analyze = sh("command -v systemd-analyze >/dev/null")
  local dir

  local function unit_text()
    local f = assert(io.open(UNIT, "rb"))
    local s = f:read("a")
    f:close()
    return s
  end

  -- The unit's settings: key -> list of values, in order.
  local function settings(text)
    local t, section = {}, nil
    for line in text:gmatch("[^\n]*") do
      local sec = line:match("^%[(.-)%]%s*$")
      if sec then section = sec end
      local k, v = line:match("^(%w+)=(.*)$")
      if k then
        local key = section .. "." .. k
        t[key] = t[key] or {}
        table.insert(t[key], v)
      end
    end
    return t
  end

  -- A copy of the unit whose ExecStart is this checkout's bin/wgoverlay
  -- (verify checks that the command exists and is executable).
  local function copy(text, sub)
    local d = mkdtemp()
    local ok, cwd = sh("pwd -P")
    assert(ok)
    cwd = cwd:gsub("%s+$", "")
    text = text:gsub("ExecStart=/usr/local/bin/wgoverlay ", function()
      return "ExecStart=" .. cwd .. "/bin/wgoverlay "
    end)
    if sub then text = sub(text) end
    local f = assert(io.open(d .. "/wgoverlay@.service", "wb"))
    f:write(text)
    f:close()
    return d, d .. "/wgoverlay@.service"
  end

  local function verify(path)
    return sh("systemd-analyze verify " .. quote(path))
  end

  after_each(function()
    if dir then sh("rm -rf " .. quote(dir)) end
    dir = nil
  end)

  it("runs the installed CLI on the instance's state directory, as a notify service", function()
    local t = settings(unit_text())
    assert.same({ "/usr/local/bin/wgoverlay run --state /var/lib/wgoverlay/%i" }, t["Service.ExecStart"])
    assert.same({ "notify" }, t["Service.Type"])
    assert.same({ "main" }, t["Service.NotifyAccess"])
    assert.same({ "on-failure" }, t["Service.Restart"])
    assert.same({ "wgoverlay/%i" }, t["Service.StateDirectory"])
    assert.same({ "0700" }, t["Service.StateDirectoryMode"])
    assert.same({ "wireguard" }, t["Service.RuntimeDirectory"])
    assert.same({ "yes" }, t["Service.RuntimeDirectoryPreserve"])
    assert.same({ "strict" }, t["Service.ProtectSystem"])
    assert.same({ "yes" }, t["Service.NoNewPrivileges"])
    assert.same({ "yes" }, t["Service.ProtectHome"])
    assert.same({ "yes" }, t["Service.PrivateTmp"])
    assert.same({ "journal" }, t["Service.StandardError"])
    assert.same({ "/dev/net/tun rw" }, t["Service.DeviceAllow"])
    assert.same({ "AF_UNIX AF_INET AF_INET6 AF_NETLINK" }, t["Service.RestrictAddressFamilies"])
    assert.same({ "CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_SYS_ADMIN" }, t["Service.CapabilityBoundingSet"])
    assert.same({ "" }, t["Service.AmbientCapabilities"])
    assert.same({ "multi-user.target" }, t["Install.WantedBy"])
  end)

  it("passes systemd-analyze verify without a single diagnostic", function()
    if not have_analyze then pending("systemd-analyze is not installed (scripts/deps.sh installs systemd)") return end
    local path
    dir, path = copy(unit_text())
    local ok, out, err = verify(path)
    assert.is_true(ok, out .. err)
    assert.equal("", out .. err)
  end)

  it("the same check fails on broken copies of the unit", function()
    if not have_analyze then pending("systemd-analyze is not installed (scripts/deps.sh installs systemd)") return end
    local text = unit_text()
    local broken = {
      -- command that does not exist: verify exits non-zero
      { function(s) return (s:gsub("bin/wgoverlay run", "bin/no-such-wgoverlay run")) end, false,
        "is not executable" },
      -- no ExecStart at all
      { function(s) return (s:gsub("\nExecStart=", "\n#ExecStart=")) end, false, "no ExecStart" },
      -- a misspelt hardening setting is ignored by systemd, with a warning
      { function(s) return (s:gsub("\nNoNewPrivileges=", "\nNoNewPrivilege=")) end, nil, "Unknown key" },
      -- a bad value too
      { function(s) return (s:gsub("\nType=notify\n", "\nType=notfy\n")) end, nil, "Failed to parse service type" },
      { function(s) return (s:gsub("\nProtectSystem=strict", "\nProtectSystem=strikt")) end, nil, "protect system value" },
    }
    for i, b in ipairs(broken) do
      local sub, want_ok, want_msg = b[1], b[2], b[3]
      local d, path = copy(text, sub)
      local ok, out, err = verify(path)
      sh("rm -rf " .. quote(d))
      local clean = ok and (out .. err) == ""
      assert.is_false(clean, "broken copy " .. i .. " passed verify")
      if want_ok == false then assert.is_false(ok, "broken copy " .. i .. " exited 0") end
      assert.truthy((out .. err):find(want_msg, 1, true), ("copy %d: %s%s"):format(i, out, err))
    end
  end)
end)
