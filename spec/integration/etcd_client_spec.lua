-- wgoverlay.etcd (the etcd v3 JSON gateway client on libcurl's multi
-- interface, wgoverlay.http) against a real 3-member etcd cluster with TLS
-- (a CA made here) and a user limited to one prefix:
--   * reads, writes, prefix ranges; the user is refused outside its prefix;
--     a client trusting another CA and a wrong password fail with clear
--     messages;
--   * compare-and-swap: of 10 creates of one key started at once exactly
--     one succeeds;
--   * leases: a key on a lease that is not kept alive disappears;
--   * failover: with the member in use killed, calls go to the others and a
--     watch resumes from its last revision: every event once, in order;
--   * a watch asked to resume from a compacted revision asks for a full
--     read (on_reset) instead of silently missing events.
-- Needs root; etcd runs on the loopback of a namespace made here.
local helpers = require "spec.helpers"
local etcd_fixture = require "spec.etcd_fixture"

describe("etcd client #netns", function()
  local ns, fx, d
  local AUTH = { user = "wgo", password = "wgo-pw-" .. tostring(os.time()), prefix = "/wgo/" }

  setup(function()
    ns = helpers.netns.new("etcd")
    fx = etcd_fixture.new({ members = 3, ns = ns, auth = AUTH })
    d = helpers.lua_driver(ns, { name = "etcd", timeout = 60 })
    d:call([[
      local endpoints, cacert, user, password = ...
      uv = require "luv"
      etcd = require "wgoverlay.etcd"
      function await(start, timeout_ms)
        local res
        start(function(...) res = table.pack(...) end)
        local deadline = uv.now() + (timeout_ms or 15000)
        local t = uv.new_timer()
        t:start(20, 20, function() end)
        while not res and uv.now() < deadline do uv.run("once") end
        t:close()
        uv.run("nowait")
        if not res then error("timed out") end
        return table.unpack(res, 1, res.n)
      end
      function pump(ms)
        local t = uv.new_timer()
        local done = false
        t:start(ms, 0, function() done = true end)
        while not done do uv.run("once") end
        t:close()
        uv.run("nowait")
      end
      E = assert(etcd.new({ endpoints = endpoints, cacert = cacert, user = user, password = password }))
    ]], fx.endpoints, fx.cacert, AUTH.user, AUTH.password)
  end)

  teardown(function()
    if d then d:close() end
    helpers.cleanup()
  end)

  it("reads and writes its prefix over TLS with auth; refused elsewhere; wrong CA or password fail clearly",
    helpers.guard(function()
      local ok, err = d:call([[
        local ok, err = await(function(cb) E:put("/wgo/a", "hello\0bytes", nil, cb) end)
        return ok, err
      ]])
      assert.is_true(ok, err)
      local v, n = d:call([[
        local kv = assert(await(function(cb) E:get("/wgo/a", cb) end))
        local r = assert(await(function(cb) E:range("/wgo/", cb) end))
        return kv.value, #r.kvs
      ]])
      assert.are.equal("hello\0bytes", v)
      assert.are.equal(1, n)
      assert.truthy(fx:ctl("get /wgo/a"))
      local res, msg = d:call([[ return await(function(cb) E:put("/other/x", "1", nil, cb) end) ]])
      assert.is_nil(res)
      assert.truthy(msg:lower():find("permission denied", 1, true), msg)
      local r1, m1 = d:call([[
        local endpoints, other = ...
        local e = etcd.new({ endpoints = endpoints, cacert = other, user = "wgo", password = "x" })
        local r, m = await(function(cb) e:get("/wgo/a", cb) end)
        e:close()
        return r, m
      ]], fx.endpoints, fx.tls.other_ca)
      assert.is_nil(r1)
      assert.truthy(m1:lower():find("certificate", 1, true), m1)
      local r2, m2 = d:call([[
        local endpoints, ca = ...
        local e = etcd.new({ endpoints = endpoints, cacert = ca, user = "wgo", password = "wrong" })
        local r, m = await(function(cb) e:get("/wgo/a", cb) end)
        e:close()
        return r, m
      ]], fx.endpoints, fx.cacert)
      assert.is_nil(r2)
      assert.truthy(m2:lower():find("authentication failed", 1, true), m2)
    end))

  it("compare-and-swap: one of 10 simultaneous creates of a key wins", helpers.guard(function()
    local wins, losses, seen = d:call([[
      local results, pending = {}, 10
      for i = 1, 10 do
        E:txn({ compare = { etcd.cmp("/wgo/slot", "CREATE", "EQUAL", 0) },
                success = { etcd.put_op("/wgo/slot", "owner" .. i) },
                failure = { etcd.range_op("/wgo/slot") } },
          function(r, err) results[i] = r or err pending = pending - 1 end)
      end
      local t0 = uv.now()
      while pending > 0 and uv.now() - t0 < 15000 do uv.run("once") end
      local wins, losses, seen = 0, 0, {}
      for i = 1, 10 do
        local r = results[i]
        assert(type(r) == "table", tostring(r))
        if r.succeeded then wins = wins + 1 else
          losses = losses + 1
          seen[r.responses[1].kvs[1].value] = true
        end
      end
      local n = 0 for _ in pairs(seen) do n = n + 1 end
      return wins, losses, n
    ]])
    assert.are.equal(1, wins)
    assert.are.equal(9, losses)
    assert.are.equal(1, seen) -- every loser saw the same owner
  end))

  it("a key on a lease that is not kept alive disappears; one kept alive stays", helpers.guard(function()
    local gone, kept = d:call([[
      local l1 = assert(await(function(cb) E:grant(2, cb) end))
      local l2 = assert(await(function(cb) E:grant(2, cb) end))
      assert(await(function(cb) E:put("/wgo/lease/dead", "1", { lease = l1 }, cb) end))
      assert(await(function(cb) E:put("/wgo/lease/live", "1", { lease = l2 }, cb) end))
      for _ = 1, 8 do
        pump(500)
        assert(await(function(cb) E:keepalive(l2, cb) end) > 0)
      end
      local a = await(function(cb) E:get("/wgo/lease/dead", cb) end)
      local b = await(function(cb) E:get("/wgo/lease/live", cb) end)
      return a, b and b.value
    ]])
    assert.is_false(gone)
    assert.are.equal("1", kept)
  end))

  it("fails over when the member in use dies; the watch resumes with every event once, in order",
    helpers.guard(function()
      d:call([[
        got, states = {}, {}
        W = E:watch("/wgo/w/", 0, function(evs)
          for _, ev in ipairs(evs) do got[#got + 1] = ev.type .. " " .. ev.kv.key .. "=" .. ev.kv.value end
        end, function() got[#got + 1] = "RESET" end, function(up) states[#states + 1] = up end)
        pump(500)
        for i = 1, 5 do assert(await(function(cb) E:put("/wgo/w/k" .. i, tostring(i), nil, cb) end)) end
        pump(300)
      ]])
      local cur = d:call("return E.cur")
      fx:kill(math.tointeger(cur))
      for i = 6, 8 do
        local other = cur % 3 + 1
        -- the first may wait for a new etcd leader
        assert(helpers.wait_until(function() return fx:ctl(("put /wgo/w/k%d %d"):format(i, i), other) end, 20, 0.2),
          fx:logs())
      end
      local ok, err = d:call([[
        local r, e = await(function(cb) E:put("/wgo/w/k9", "9", nil, cb) end)
        local r2, e2 = await(function(cb) E:delete("/wgo/w/k1", cb) end)
        local t0 = uv.now()
        while #got < 10 and uv.now() - t0 < 15000 do pump(100) end
        return (r and r2) and true or nil, e or e2
      ]])
      assert.is_true(ok, err)
      local got = d:call("return got")
      local want = {}
      for i = 1, 9 do want[#want + 1] = ("PUT /wgo/w/k%d=%d"):format(i, i) end
      want[#want + 1] = "DELETE /wgo/w/k1="
      assert.are.same(want, got)
      assert.are_not.equal(cur, d:call("return E.cur"))
      fx:start(math.tointeger(cur))
      d:call("W:cancel()")
    end))

  it("a watch from a compacted revision asks for a full read", helpers.guard(function()
    local ok, out = fx:ctl("put /wgo/c/x 1")
    assert.truthy(ok, out)
    local rev = d:call([[
      local r = assert(await(function(cb) E:range("/wgo/c/", cb) end))
      return r.revision
    ]])
    assert(fx:ctl("put /wgo/c/x 2"))
    assert(fx:ctl("compact " .. math.tointeger(rev + 1)))
    local resets, events = d:call([[
      local from = ...
      local resets, events = 0, 0
      local w
      w = E:watch("/wgo/c/", from, function(evs) events = events + #evs end, function()
        resets = resets + 1
      end)
      local t0 = uv.now()
      while resets == 0 and uv.now() - t0 < 10000 do pump(100) end
      w:cancel()
      return resets, events
    ]], math.tointeger(rev))
    assert.are.equal(1, resets)
    assert.are.equal(0, events)
  end))
end)
