-- Clients that misbehave cannot end a node's daemon (issue: cluster under
-- abuse, item 0).  For each server the daemon runs — DNS over TCP (53),
-- membership (7946, the leader's), the control socket — clients that
-- pipeline requests and close early, that reset the connection (SO_LINGER
-- 0), or that never read, are run many times; the daemons must still run
-- and their tunnel still carry traffic.  Without SIGPIPE ignored the first
-- early close kills the daemon (exit 141).  Needs root.
--
--   hub bridge: leader 192.0.2.1, a 192.0.2.2; container "front" on a.

local helpers = require "spec.helpers"
local fixture = require "spec.cluster_fixture"
local dns = require "wgoverlay.dns"

local quote = helpers.quote

describe("daemon under abusive clients #netns", function()
  local cl, L, A, ctr

  lazy_setup(function()
    cl = fixture.new()
    L = cl:leader("leader", "192.0.2.1")
    A = cl:node("a", "192.0.2.2")
    local tok = cl:token(L, 1)
    cl:start(L)
    cl:join(A, tok)
    cl:start(A)
    ctr = cl:attach("A", A, "front")
    cl:wait_health(L, { "a" }, true, 30)
    cl:wait_health(A, { "leader" }, true, 30)
  end)

  teardown(function() if cl then cl:teardown() end end)

  -- Both daemons run, and the tunnel carries traffic both ways.
  local function assert_alive()
    for _, n in ipairs({ L, A }) do
      assert(n.proc:alive(), ("daemon %s died (exit %s):\n%s"):format(n.name, tostring(n.proc:exit_code()),
        n.proc:log()))
    end
    assert.is_true(L.ns:ping(A.ip, 2, 2), "leader cannot ping a through the tunnel")
    assert.is_true(ctr.ns:ping(L.ip, 2, 2), "the container cannot ping the leader")
  end

  -- A Lua chunk (luasocket) run in `ns`: connect, send `payload`, then
  -- `mode`: "close" (close at once), "reset" (SO_LINGER 0: RST),
  -- "noread" (keep the connection open for `hold` s without reading).
  -- `connect` is Lua code returning a connected socket.
  local function client_code(connect, payload, mode, rounds, hold)
    return ([[
local socket = require "socket"
local payload = %q
for _ = 1, %d do
  local c = assert((function() %s end)())
  c:settimeout(5)
  c:send(payload) -- the server may close first (the control socket answers one request)
  if %q == "reset" then c:setoption("linger", { on = true, timeout = 0 }) end
  if %q == "noread" then socket.sleep(%f) end
  c:close()
end
]]):format(payload, rounds, connect, mode, mode, hold or 0)
  end

  local function run_client(ns, connect, payload, mode, rounds, hold)
    local ok, out, err = helpers.lua_run(ns, client_code(connect, payload, mode, rounds, hold))
    assert(ok, "client failed: " .. tostring(out) .. tostring(err))
  end

  -- 50 pipelined DNS queries over TCP (each with its 2-byte length).
  local function dns_payload()
    local parts = {}
    for i = 1, 50 do
      local q = dns.query("leader.overlay.internal", "A", { id = i })
      parts[#parts + 1] = string.pack(">s2", q)
    end
    return table.concat(parts)
  end

  it("DNS over TCP: 50 pipelined queries then close / reset / no reading, 20 times each",
    helpers.guard(function()
      local connect = ("local c = socket.tcp(); assert(c:connect(%q, 53)); return c"):format(A.ip)
      local payload = dns_payload()
      for _, mode in ipairs({ "close", "reset", "noread" }) do
        run_client(ctr.ns, connect, payload, mode, 20, 0.05)
        assert_alive()
      end
    end))

  it("control socket: 50 pipelined status requests then close / reset / no reading, 20 times each",
    helpers.guard(function()
      local sock = A.dir .. "/control.sock"
      local connect = ("local c = require('socket.unix').stream(); assert(c:connect(%q)); return c"):format(sock)
      local payload = string.rep('{"cmd":"status"}\n', 50)
      for _, mode in ipairs({ "close", "reset", "noread" }) do
        run_client(A.ns, connect, payload, mode, 20, 0.05)
        assert_alive()
      end
      -- and the control socket still answers
      assert(cl:status(A), "status no longer answers")
    end))

  it("membership: a member's address pipelining 2000 hellos then close / reset / no reading",
    helpers.guard(function()
      -- The leader only talks to member overlay addresses: these clients
      -- use node a's (the real daemon of a reconnects afterwards).  2000
      -- snapshot requests are more than the socket buffers hold, so the
      -- leader still has answers queued when the client goes.
      local connect = ("local c = socket.tcp(); assert(c:bind(%q, 0)); assert(c:connect(%q, 7946)); return c")
        :format(A.ip, L.ip)
      local payload = string.rep('{"type":"hello","version":0}\n', 2000)
      for _, mode in ipairs({ "close", "reset", "noread" }) do
        run_client(A.ns, connect, payload, mode, 5, 0.5)
        assert_alive()
      end
      -- a's own session comes back: a still hears of changes (a new container)
      local c2 = cl:attach("L2", L, "late")
      local dig = ("ip netns exec %s dig +short +time=1 +tries=1 @%s late.%s A"):format(
        quote(A.ns.name), A.ip, fixture.ZONE)
      local ok = helpers.wait_until(function()
        local _, out = helpers.sh(dig)
        return out:match("^%s*(%S+)") == c2.ip
      end, 20, 0.5)
      assert(ok, "a no longer follows the registry (late." .. fixture.ZONE .. " unknown to a)")
    end))

  it("forged health replies do not keep a killed node healthy", helpers.guard(function()
    -- A container on the leader claims to be a (a's overlay address added
    -- in its own namespace) and answers health probes for it every 0.2 s,
    -- in the old format and with made-up nonces, while a is killed.
    local evil = cl:attach("E", L, "evil")
    local dev = evil.ns:must("ip -o route get " .. L.ip):match("dev (%S+)")
    evil.ns:must(("ip addr add %s/32 dev %s"):format(A.ip, dev))
    local before = assert(cl:status(L)).self.health.refused
    local forger = evil.ns:spawn("lua5.4 -e " .. quote(([[
local socket = require "socket"
local u = assert(socket.udp())
assert(u:setsockname(%q, 7947))
local pk = %q
local stop = socket.gettime() + 25
while socket.gettime() < stop do
  u:sendto("WGOR" .. pk .. "\n" .. math.floor(socket.gettime() * 1e9), %q, 7947)
  local f = io.open("/dev/urandom", "rb")
  u:sendto("WGR2" .. f:read(16), %q, 7947)
  f:close()
  socket.sleep(0.2)
end
]]):format(A.ip, A.public_key, L.ip, L.ip)), { env = helpers.lua_env(), name = "forger" })
    A.proc:signal("KILL")
    assert(A.proc:wait(5), "a did not die on SIGKILL")
    local t0 = os.time()
    cl:wait_health(L, { "a" }, false, 15)
    local took = os.time() - t0
    assert.is_true(took <= 15, ("a reported unhealthy only after %d s"):format(took))
    -- the forgeries arrived, and were refused
    local after = assert(cl:status(L)).self.health.refused
    assert.is_true(after - before >= 10, ("only %d forged replies refused"):format(after - before))
    assert(forger:alive(), "the forger stopped early:\n" .. forger:log())
    forger:stop(2)
  end))

  it("the leader stops cleanly afterwards (its control socket goes)", helpers.guard(function()
    assert(L.proc:alive(), L.proc:log())
    cl:stop(L)
    assert.is_nil(io.open(L.dir .. "/control.sock"), "control socket left behind")
  end))
end)
