-- What systemd/wgoverlay@.service grants, exercised without systemd as PID 1:
-- processes run as root with the unit's CapabilityBoundingSet and
-- NoNewPrivileges (setpriv), and with NOTIFY_SOCKET pointing at a unix
-- datagram socket this spec binds, as systemd's would be.
--   * `interface IFNAME` sends READY=1 once the interface is up and
--     STOPPING=1 on SIGTERM; without CAP_NET_ADMIN it fails, not ready;
--   * a leader and a member run with exactly the unit's capabilities: TUN,
--     DNS on port 53, membership, attach (setns) all work; without
--     CAP_SYS_ADMIN attach is refused and the daemon stays up;
--   * the daemon's readiness: a leader at start, a member only once its
--     leader is reached; STOPPING=1 on SIGTERM.
-- Needs root; every address lives in namespaces made here.

local helpers = require "spec.helpers"
local fixture = require "spec.cluster_fixture"
local unix = require "socket.unix"

local quote = helpers.quote
local wait_until = helpers.wait_until

-- CapabilityBoundingSet= of the unit, as setpriv's --bounding-set list.
local function unit_caps()
  local text = assert(helpers.read_file(helpers.root .. "/systemd/wgoverlay@.service"))
  local line = assert(text:match("\nCapabilityBoundingSet=([^\n]*)"), "no CapabilityBoundingSet")
  local caps = {}
  for c in line:gmatch("CAP_([%u_]+)") do caps[#caps + 1] = c:lower() end
  assert(#text:match("\nNoNewPrivileges=yes") > 0)
  return caps
end

local CAP_BITS = { net_bind_service = 10, net_admin = 12, sys_admin = 21 }

local function setpriv(caps)
  local list = { "-all" }
  for _, c in ipairs(caps) do list[#list + 1] = "+" .. c end
  return "setpriv --bounding-set=" .. table.concat(list, ",") .. " --no-new-privs "
end

local function without(caps, drop)
  local out = {}
  for _, c in ipairs(caps) do if c ~= drop then out[#out + 1] = c end end
  return out
end

-- A socket standing in for systemd's notify socket.
local function notify_socket(tag)
  local path = helpers.tmpdir() .. "/notify-" .. tag .. ".sock"
  local s = assert(unix.dgram())
  assert(s:bind(path))
  return { s = s, path = path, got = {} }
end

-- Next datagram within `timeout` seconds, or nil.
local function receive(n, timeout)
  n.s:settimeout(timeout)
  local m = n.s:receive()
  if m then n.got[#n.got + 1] = m end
  return m
end

local function proc_status(pid, field)
  return (helpers.read_file("/proc/" .. pid .. "/status") or ""):match("\n" .. field .. ":%s*(%S+)")
end

local function socket_exists(ifname)
  return (helpers.sh("test -S /var/run/wireguard/" .. ifname .. ".sock"))
end

describe("the service unit's privileges and readiness #netns", function()
  local caps
  setup(function()
    assert(helpers.is_root, "integration specs need root")
    caps = unit_caps()
  end)

  describe("interface IFNAME", function()
    lazy_teardown(helpers.cleanup)

    it("with the unit's capabilities sends READY=1 when up and STOPPING=1 on SIGTERM", helpers.guard(function()
      local ns = helpers.netns.new("sd")
      local name = helpers.ifname("sd")
      local n = notify_socket("iface")
      local env = helpers.lua_env()
      env.NOTIFY_SOCKET = n.path
      local proc = ns:spawn(setpriv(caps) .. "lua5.4 bin/wgoverlay interface " .. name,
        { env = env, cwd = helpers.root, name = "iface" })
      local msg = receive(n, 10)
      assert.equal("READY=1\nSTATUS=interface " .. name .. " up", msg, proc:log())
      -- ready means up: the link and the UAPI socket exist already
      assert.truthy(ns:exec("ip link show dev " .. name))
      assert.truthy(socket_exists(name))
      -- it runs with exactly the unit's capabilities and no_new_privs
      local want = 0
      for _, c in ipairs(caps) do want = want | (1 << assert(CAP_BITS[c], c)) end
      assert.equal(want, tonumber(proc_status(proc.pid, "CapEff"), 16))
      assert.equal(want, tonumber(proc_status(proc.pid, "CapBnd"), 16))
      assert.equal("1", proc_status(proc.pid, "NoNewPrivs"))
      local priv, pub = helpers.genkey()
      helpers.wg_set_interface(ns, name, { private_key = priv, listen_port = 51301 })
      assert.equal(pub, helpers.wg(ns, "show " .. name .. " public-key"):gsub("%s+$", ""))
      proc:signal("TERM")
      assert.equal("STOPPING=1\nSTATUS=SIGTERM: removing interface " .. name, receive(n, 5), proc:log())
      assert.equal(0, proc:wait(5))
      assert.is_nil(receive(n, 0.2)) -- READY=1 went out once, nothing more
      assert.is_false(socket_exists(name))
      n.s:close()
    end))

    it("without CAP_NET_ADMIN fails and never says ready", helpers.guard(function()
      local ns = helpers.netns.new("sd")
      local name = helpers.ifname("sd")
      local n = notify_socket("nocap")
      local env = helpers.lua_env()
      env.NOTIFY_SOCKET = n.path
      local proc = ns:spawn(setpriv(without(caps, "net_admin")) .. "lua5.4 bin/wgoverlay interface " .. name,
        { env = env, cwd = helpers.root, name = "iface-nocap" })
      assert.equal(1, proc:wait(10))
      assert.truthy(proc:log():find("needs CAP_NET_ADMIN", 1, true), proc:log())
      assert.is_nil(receive(n, 0.2))
      n.s:close()
    end))
  end)

  describe("cluster daemons", function()
    local cl
    before_each(function() cl = fixture.new() end)
    after_each(function() if cl then cl:teardown() end cl = nil end)

    -- `run` under the given capabilities, with its own notify socket.
    local function start(node, with_caps, tag)
      node.notify = node.notify or notify_socket(tag or node.name)
      local env = helpers.lua_env()
      env.NOTIFY_SOCKET = node.notify.path
      node.proc = node.ns:spawn(setpriv(with_caps) .. "lua5.4 bin/wgoverlay run --state " .. quote(node.dir),
        { env = env, cwd = helpers.root, name = "run-" .. node.name })
      local ok, err = wait_until(function()
        if not node.proc:alive() then error("exited: " .. node.proc:log()) end
        return cl:status(node) ~= nil
      end, 15, 0.1)
      assert(ok, ("daemon %s did not come up: %s\n%s"):format(node.name, tostring(err), node.proc:log()))
    end

    it("a leader and a member work with exactly the unit's capabilities: peers, DNS on 53, attach", helpers.guard(function()
      local L = cl:leader("leader", "192.0.2.1")
      start(L, caps)
      local A = cl:node("a", "192.0.2.2")
      cl:join(A, cl:token(L, 1))
      start(A, caps)
      cl:wait_health(A, { "leader" }, true, 30)
      cl:wait_health(L, { "a" }, true, 30)
      -- attach enters the container's namespace (setns: CAP_SYS_ADMIN)
      local c = cl:attach("web", A, "web")
      -- DNS on the overlay address, port 53 (CAP_NET_BIND_SERVICE)
      local r = wait_until(function()
        local d = helpers.dig(c.ns, A.ip, fixture.fqdn("leader"), "A")
        return #d.addrs > 0 and d
      end, 10, 0.25)
      assert(r, "no DNS answer from " .. A.ip)
      assert.same({ L.ip }, r.addrs)
      assert.truthy(helpers.wait_ping(c, L.ip, 10))
      cl:stop(A)
      cl:stop(L)
    end))

    it("without CAP_SYS_ADMIN attach is refused and the daemon stays up", helpers.guard(function()
      local L = cl:leader("leader", "192.0.2.1")
      start(L, without(caps, "sys_admin"))
      local ns = helpers.netns.new("cweb")
      local code, out, err = cl:cli(L.ns, ("attach --state %s %s --name web"):format(quote(L.dir), ns.name))
      assert.are_not.equal(0, code, out)
      assert.truthy((out .. err):lower():find("operation not permitted", 1, true)
        or (out .. err):lower():find("permission", 1, true), out .. err)
      assert.is_false((ns:exec("ip link show dev ovl0")))
      assert.is_true(L.proc:alive(), L.proc:log())
      assert.truthy(cl:status(L))
      cl:stop(L)
    end))

    it("READY=1: a leader at start, a member once its leader is reached; STOPPING=1 on SIGTERM", helpers.guard(function()
      local L = cl:leader("leader", "192.0.2.1")
      start(L, caps)
      local m = receive(L.notify, 10)
      assert.truthy(m and m:match("^READY=1\n"), tostring(m) .. "\n" .. L.proc:log())
      local A = cl:node("a", "192.0.2.2")
      cl:join(A, cl:token(L, 1))
      cl:stop(L)
      assert.truthy((receive(L.notify, 2) or ""):match("^STOPPING=1"))
      -- the leader is down: the member runs but is not ready
      start(A, caps)
      local early
      while true do
        local x = receive(A.notify, 3)
        if not x then break end
        assert.is_nil(x:match("READY=1"), "member ready without its leader: " .. x)
        early = x
      end
      L.notify.s:close()
      L.notify = nil
      start(L, caps, "leader2")
      local ready = wait_until(function()
        local x = receive(A.notify, 1)
        return x and x:match("READY=1") and x
      end, 30, 0)
      assert(ready, "member never ready; got: " .. tostring(early) .. "\n" .. A.proc:log())
      cl:stop(A)
      local stopping = wait_until(function()
        local x = receive(A.notify, 1)
        return x and x:match("^STOPPING=1") and x
      end, 5, 0)
      assert(stopping, "no STOPPING=1 from the member")
      cl:stop(L)
    end))
  end)
end)
