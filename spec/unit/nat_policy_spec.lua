-- The per-peer connection policy (wgoverlay.nat.policy): direct first,
-- hole punching next, the relay last; fallback when a path dies; upgrades
-- of relayed peers; roaming.  Injected clock, no I/O.

local policy = require "wgoverlay.nat.policy"

local function new(opts)
  local clock = { t = 1000 }
  opts = opts or {}
  opts.clock = function() return clock.t end
  local p = policy.new(opts)
  return p, clock
end

local function types(actions)
  local out = {}
  for i, a in ipairs(actions) do out[i] = a.type end
  return out
end

-- advance the clock by `dt` in steps, collecting actions (but the
-- handshake nudges while a path is tried, unless `nudges`)
local function run(p, clock, dt, step, nudges)
  step = step or 0.5
  local all = {}
  local stop = clock.t + dt
  while clock.t < stop - 1e-9 do
    clock.t = clock.t + step
    for _, a in ipairs(p:tick()) do
      if nudges or a.type ~= "handshake" then all[#all + 1] = a end
    end
  end
  return all
end

-- advance the clock by `dt` with a sign of life every step, collecting
-- every action
local function alive_for(p, clock, dt)
  local all = {}
  local stop = clock.t + dt
  while clock.t < stop do
    clock.t = clock.t + 0.5
    p:alive(clock.t)
    for _, a in ipairs(p:tick()) do all[#all + 1] = a end
  end
  return all
end

-- a pair behind two NATs, hole-punched, with a relay channel, alive now
local function punched_pair(p, clock)
  p:set_remote({ endpoint = "10.2.0.2:51820", nat = "endpoint-independent", punchable = true })
  p:set_local_nat("endpoint-independent")
  p:set_relay("203.0.113.10:3478", 0x4001)
  p.phase, p.connection = "up", "hole-punched"
  p:observe("198.51.100.2:51820", nil)
  p:alive(clock.t)
end

describe("nat.policy", function()
  it("has sane defaults and checks settings", function()
    local o = assert(policy.options({ dead_after = 8 }))
    assert.equal(8, o.dead_after)
    assert.equal(policy.DEFAULTS.upgrade_interval, o.upgrade_interval)
    assert.is_nil(policy.options({ bogus = 1 }))
    assert.is_nil(policy.options({ dead_after = 0 }))
    assert.is_nil(policy.options({ dead_after = "x" }))
    local p = new()
    assert.equal("direct", p.connection)
    assert.equal(1000, p.changed_at)
    assert.equal("start", p.phase)
  end)

  it("keeps a direct path that answers", function()
    local p, clock = new()
    p:set_remote({ endpoint = "192.0.2.2:51820", nat = "none", punchable = true })
    local a = p:tick()
    assert.same({ { type = "set_endpoint", endpoint = "192.0.2.2:51820", connection = "direct" } }, a)
    assert.equal("direct", p.phase)
    clock.t = 1000.3
    p:observe("192.0.2.2:51820", nil)
    p:alive(1000.2)
    assert.same({}, p:tick())
    assert.equal("up", p.phase)
    assert.equal("direct", p.connection)
    assert.equal(1000, p.changed_at) -- it was "direct" all along
    -- kept alive: nothing happens for a long time
    for _ = 1, 100 do
      clock.t = clock.t + 1
      p:alive(clock.t)
      assert.same({}, p:tick())
    end
    assert.equal("up", p.phase)
  end)

  it("starts up at once when the peer already answers", function()
    local p = new()
    p:set_remote({ endpoint = "192.0.2.2:51820" })
    p:alive(999)
    assert.same({}, p:tick())
    assert.equal("up", p.phase)
  end)

  it("punches when the direct path does not answer, and keeps the punched path", function()
    local p, clock = new()
    p:set_remote({ endpoint = "10.2.0.2:51820", nat = "endpoint-independent", punchable = true })
    p:set_local_nat("unknown")
    p:tick()
    local a = run(p, clock, 5)
    assert.same({ "request_punch" }, types(a))
    assert.equal("punch-wait", p.phase)
    p:punch_started()
    assert.equal("punching", p.phase)
    clock.t = clock.t + 0.4
    p:punch_result("198.51.100.2:50000")
    a = p:tick()
    assert.same({ { type = "set_endpoint", endpoint = "198.51.100.2:50000", connection = "hole-punched" } }, a)
    assert.equal("confirm", p.phase)
    clock.t = clock.t + 0.1
    p:observe("198.51.100.2:50000", nil)
    p:alive(clock.t)
    p:tick()
    assert.equal("up", p.phase)
    assert.equal("hole-punched", p.connection)
    assert.equal(clock.t, p.changed_at)
    assert.is_nil(p.upgrade_at)
  end)

  it("goes to the relay at once when both sides are behind symmetric NATs", function()
    local p = new()
    p:set_remote({ endpoint = "10.4.0.2:51820", nat = "endpoint-dependent", punchable = true })
    p:set_local_nat("endpoint-dependent")
    p:set_relay("203.0.113.10:3478", 0x4000)
    assert.same({ "set_endpoint" }, types(p:tick()))
    assert.same({ "use_relay" }, types(p:tick()))
  end)

  it("starts over at once when told the peer came back", function()
    local p, clock = new()
    p:set_remote({ endpoint = "192.0.2.2:51820", punchable = true })
    p:tick()
    run(p, clock, 30)
    assert.is_true(p.phase ~= "up" and p.phase ~= "start")
    p:restart()
    assert.same({ "set_endpoint" }, types(p:tick()))
    assert.equal("direct", p.phase)
    -- a working peer is left alone
    p:alive(clock.t + 0.1)
    clock.t = clock.t + 0.2
    p:tick()
    p:restart()
    assert.equal("up", p.phase)
  end)

  it("punches at once when both sides are behind NATs that a punch can cross", function()
    local p = new()
    p:set_remote({ endpoint = "10.2.0.2:51820", nat = "endpoint-independent", punchable = true })
    p:set_local_nat("endpoint-dependent")
    assert.same({ "set_endpoint" }, types(p:tick()))
    assert.same({ "request_punch" }, types(p:tick()))
    -- an advertised endpoint that answers the probes is still "direct"
    p:punch_started()
    p:punch_result("10.2.0.2:51820")
    assert.same({ { type = "set_endpoint", endpoint = "10.2.0.2:51820", connection = "direct" } }, p:tick())
  end)

  it("goes to the relay when punching fails, and straight there for two symmetric NATs", function()
    local p, clock = new()
    p:set_remote({ endpoint = "10.2.0.2:51820", nat = "endpoint-independent", punchable = true })
    p:set_relay("203.0.113.10:3478", 0x4001)
    p:tick()
    run(p, clock, 5)
    p:punch_started()
    local a = run(p, clock, policy.DEFAULTS.punch_timeout)
    assert.same({ { type = "use_relay", server = "203.0.113.10:3478", channel = 0x4001 } }, a)
    assert.equal("relay", p.phase)
    p:observe("203.0.113.10:3478", 0x4001)
    p:alive(clock.t + 0.1)
    clock.t = clock.t + 0.2
    p:tick()
    assert.equal("relayed", p.connection)
    assert.equal("up", p.phase)

    local q, c2 = new()
    q:set_remote({ endpoint = "10.4.0.2:51820", nat = "endpoint-dependent", punchable = true })
    q:set_local_nat("endpoint-dependent")
    q:set_relay("203.0.113.10:3478", 0x4000)
    q:tick()
    a = run(q, c2, 5)
    assert.same({ "use_relay" }, types(a))
  end)

  it("waits for a relay channel, then gives up and starts over", function()
    local p, clock = new()
    p:set_remote({ endpoint = "10.4.0.2:51820", nat = "endpoint-dependent", punchable = true })
    p:set_local_nat("unknown")
    p:tick()
    run(p, clock, 5)
    assert.equal("punch-wait", p.phase)
    run(p, clock, policy.DEFAULTS.punch_wait)
    assert.equal("relay-wait", p.phase)
    run(p, clock, policy.DEFAULTS.relay_timeout)
    assert.equal("failed", p.phase)
    local a = run(p, clock, policy.DEFAULTS.retry_interval)
    assert.same({ "set_endpoint" }, types(a))
    assert.equal("direct", p.phase)
    -- a channel that appears while waiting is used at once
    run(p, clock, 5 + policy.DEFAULTS.punch_wait)
    assert.equal("relay-wait", p.phase)
    p:set_relay("203.0.113.10:3478", 0x4002)
    assert.same({ "use_relay" }, types(p:tick()))
  end)

  it("a peer without a punch key or candidates is not punched", function()
    local p, clock = new()
    p:set_remote({ endpoint = "10.2.0.2:51820", punchable = false })
    p:set_relay("203.0.113.10:3478", 0x4001)
    p:tick()
    assert.same({ "use_relay" }, types(run(p, clock, 5)))
  end)

  it("a peer with no endpoint goes straight to punching", function()
    local p = new()
    p:set_remote({ punchable = true })
    assert.same({ "request_punch" }, types(p:tick()))
  end)

  it("falls back to the relay when a direct path dies, within dead_after", function()
    local p, clock = new({ dead_after = 6 })
    p:set_remote({ endpoint = "192.0.2.2:51820", nat = "none", punchable = true })
    p:set_relay("203.0.113.10:3478", 0x4001)
    p:tick()
    p:observe("192.0.2.2:51820", nil)
    p:alive(clock.t + 0.1)
    clock.t = clock.t + 0.2
    p:tick()
    assert.equal("up", p.phase)
    local last = clock.t
    local a = run(p, clock, 5.5)
    assert.same({}, a)
    a = run(p, clock, 1)
    assert.same({ { type = "use_relay", server = "203.0.113.10:3478", channel = 0x4001 } }, a)
    assert.is_true(clock.t - last >= 6 and clock.t - last <= 7)
    p:observe("203.0.113.10:3478", 0x4001)
    p:alive(clock.t + 0.1)
    clock.t = clock.t + 0.2
    p:tick()
    assert.equal("relayed", p.connection)
    assert.equal(clock.t, p.changed_at)
  end)

  it("after a punched path died, punches again only once punch_quiet passed (the relay carries it)", function()
    local p, clock = new({ dead_after = 6, upgrade_interval = 10, punch_quiet = 35 })
    punched_pair(p, clock)
    clock.t = clock.t + 0.1
    p:tick()
    -- the path dies: to the relay, which answers
    local a = run(p, clock, 7)
    assert.same({ "use_relay" }, types(a))
    local died = p.died_at
    assert.truthy(died)
    p:observe("203.0.113.10:3478", 0x4001)
    local function keep_alive(dt) return alive_for(p, clock, dt) end
    -- upgrade_interval (10 s) is not enough: no punch before died + 35 s
    assert.same({}, keep_alive(died + 35 - clock.t - 0.5))
    assert.equal("relayed", p.connection)
    assert.same({ "request_punch" }, types(keep_alive(1.5)))
  end)

  it("a path that died because a NAT moved is punched again at once, without punch_quiet", function()
    local p, clock = new({ dead_after = 6, punch_quiet = 35 })
    punched_pair(p, clock)
    clock.t = clock.t + 1
    p:tick()
    -- the peer's public address moved (a signal or its record says so)
    p:addresses_changed()
    local a = run(p, clock, 6)
    assert.is_nil(p.died_at)
    assert.same({ "request_punch" }, types(a))
    assert.equal("punch-wait", p.phase)
  end)

  it("tries a relay channel that appears while the relay is failing at once", function()
    local p, clock = new({ relay_timeout = 10 })
    p:set_remote({ endpoint = "10.2.0.2:51820", nat = "endpoint-dependent", punchable = false })
    p:set_local_nat("endpoint-dependent")
    p:set_relay("203.0.113.10:3478", 0x4001)
    p:tick()
    run(p, clock, 12)
    assert.equal("failed", p.phase)
    -- the peer's relayed address changed (its allocation moved): a new channel
    p:set_relay(nil)
    p:set_relay("203.0.113.10:3478", 0x4002)
    assert.same({ { type = "use_relay", server = "203.0.113.10:3478", channel = 0x4002 } }, p:tick())
    assert.equal("relay", p.phase)
  end)

  it("repeats the handshake every second while a new path is tried", function()
    local p, clock = new()
    p:set_remote({ endpoint = "192.0.2.2:51820", punchable = false })
    p:tick()
    local a = run(p, clock, 6, 0.25, true)
    assert.same({ "handshake", "handshake", "handshake", "handshake", "relay-wait" },
      { a[1].type, a[2].type, a[3].type, a[4].type, p.phase })
    assert.equal(4, #a)
  end)

  it("keeps an endpoint learnt by roaming when it starts over", function()
    local p, clock = new({ dead_after = 4 })
    p:set_remote({ endpoint = "10.3.0.2:51820", punchable = false })
    p:tick()
    -- the peer's packets came from its NAT: WireGuard roamed there
    p:observe("203.0.113.23:40000", nil)
    p:alive(clock.t + 0.1)
    clock.t = clock.t + 0.2
    p:tick()
    assert.equal("up", p.phase)
    -- silence: start over, but on the roamed address, not the private one
    local a = run(p, clock, 4.5, 0.5, true)
    assert.same({ { type = "handshake" } }, a)
    assert.equal("direct", p.phase)
  end)

  it("a dead path without a relay starts over with the direct endpoint", function()
    local p, clock = new({ dead_after = 4 })
    p:set_remote({ endpoint = "192.0.2.2:51820", punchable = true })
    p:alive(999.5)
    p:tick()
    assert.equal("up", p.phase)
    local a = run(p, clock, 4)
    assert.same({ "set_endpoint" }, types(a))
    assert.equal("direct", p.phase)
  end)

  it("periodically tries to upgrade a relayed peer, keeping the relay while it tries", function()
    local p, clock = new({ upgrade_interval = 20 })
    p:set_remote({ endpoint = "192.0.2.2:51820", nat = "endpoint-independent", punchable = true })
    p:set_relay("203.0.113.10:3478", 0x4001)
    -- relayed and alive
    p.phase = "relay"
    p:observe("203.0.113.10:3478", 0x4001)
    p:alive(clock.t + 0.1)
    clock.t = clock.t + 0.2
    p:tick()
    assert.equal("relayed", p.connection)
    local function keep_alive(dt) return alive_for(p, clock, dt) end
    -- nothing before the interval
    assert.same({}, keep_alive(19))
    assert.same({ "request_punch" }, types(keep_alive(1.5)))
    -- the attempt fails: still relayed, next attempt scheduled after
    -- punch_quiet (longer than upgrade_interval here: the failed probes'
    -- flows on a plain NAT must expire first)
    p:punch_started()
    keep_alive(policy.DEFAULTS.punch_timeout + 0.5)
    assert.equal("up", p.phase)
    assert.equal("relayed", p.connection)
    assert.same({}, keep_alive(policy.DEFAULTS.punch_quiet - 1))
    assert.same({ "request_punch" }, types(keep_alive(1.5)))
    -- the next one finds the advertised endpoint: direct
    p:punch_started()
    p:punch_result("192.0.2.2:51820")
    local a = p:tick()
    assert.same({ { type = "set_endpoint", endpoint = "192.0.2.2:51820", connection = "direct" } }, a)
    -- the relay still answers (health probes), but the engine uses the
    -- direct address now: that is what counts
    p:observe("192.0.2.2:51820", nil)
    keep_alive(1)
    assert.equal("up", p.phase)
    assert.equal("direct", p.connection)
  end)

  it("goes back to the relay when an upgrade's address does not answer", function()
    local p, clock = new()
    p:set_remote({ endpoint = "10.2.0.2:51820", nat = "endpoint-independent", punchable = true })
    p:set_relay("203.0.113.10:3478", 0x4001)
    p.phase = "relay"
    p:observe("203.0.113.10:3478", 0x4001)
    p:alive(clock.t + 0.1)
    clock.t = clock.t + 0.2
    p:tick()
    assert.equal("relayed", p.connection)
    -- a punch the peer asked for finds an address
    p:punch_result("198.51.100.2:50000")
    assert.same({ "set_endpoint" }, types(p:tick()))
    -- the engine keeps hearing the peer only through the relay
    local acts = {}
    for _ = 1, 12 do
      clock.t = clock.t + 0.5
      p:alive(clock.t)
      p:observe("203.0.113.10:3478", 0x4001)
      for _, a in ipairs(p:tick()) do
        if a.type ~= "handshake" then acts[#acts + 1] = a end
      end
    end
    assert.same({ { type = "use_relay", server = "203.0.113.10:3478", channel = 0x4001 } }, acts)
    assert.equal("up", p.phase)
    assert.equal("relayed", p.connection)
  end)

  it("follows WireGuard roaming between the relay and a direct address", function()
    local p, clock = new()
    p:set_remote({ endpoint = "192.0.2.2:51820", punchable = true })
    p:observe("192.0.2.2:51820", nil)
    p:alive(999.9)
    p:tick()
    assert.equal("direct", p.connection)
    -- the peer moved to the relay: our engine followed it
    p:observe("203.0.113.10:3478", 0x4001)
    p:alive(clock.t)
    assert.same({}, p:tick())
    assert.equal("direct", p.connection) -- not settled yet
    clock.t = clock.t + 1
    p:alive(clock.t)
    p:tick()
    assert.equal("relayed", p.connection)
    assert.equal(clock.t, p.changed_at)
    assert.truthy(p.upgrade_at)
    -- and back, to a punched address
    p:observe("198.51.100.2:50000", nil)
    clock.t = clock.t + 1
    p:alive(clock.t)
    p:tick()
    assert.equal("hole-punched", p.connection)
    -- roaming between two direct addresses keeps the kind
    p:observe("198.51.100.2:50001", nil)
    clock.t = clock.t + 1
    p:alive(clock.t)
    p:tick()
    assert.equal("hole-punched", p.connection)
  end)

  it("ignores a punch result while a direct path works", function()
    local p, clock = new()
    p:set_remote({ endpoint = "192.0.2.2:51820", punchable = true })
    p:alive(999.9)
    p:tick()
    p:alive(clock.t)
    p:punch_result("198.51.100.2:50000")
    assert.same({}, p:tick())
    assert.equal("direct", p.connection)
  end)

  it("a punched path to or from a node without NAT counts as direct", function()
    local p, clock = new()
    p:set_remote({ endpoint = "10.1.0.2:51820", nat = "endpoint-independent", punchable = true })
    p:set_local_nat("none")
    p:set_relay("203.0.113.10:3478", 0x4001)
    p.phase = "relay"
    p:observe("203.0.113.10:3478", 0x4001)
    p:alive(clock.t + 0.1)
    clock.t = clock.t + 0.2
    p:tick()
    assert.equal("relayed", p.connection)
    p:punch_result("203.0.113.21:51820")
    assert.same({ { type = "set_endpoint", endpoint = "203.0.113.21:51820", connection = "direct" } }, p:tick())
  end)

  it("punches between two symmetric NATs when a router mapped a port; the mapped address is port-mapped", function()
    local p, clock = new()
    p:set_remote({ endpoint = "10.4.0.2:51820", nat = "endpoint-dependent", punchable = true,
                   mapped = { ["198.51.100.24:51820"] = true } })
    p:set_local_nat("endpoint-dependent")
    p:set_relay("203.0.113.10:3478", 0x4000)
    assert.same({ "set_endpoint" }, types(p:tick()))
    assert.same({ "request_punch" }, types(p:tick()))
    p:punch_started()
    p:punch_result("198.51.100.24:51820")
    assert.same({ { type = "set_endpoint", endpoint = "198.51.100.24:51820", connection = "port-mapped" } }, p:tick())
    p:observe("198.51.100.24:51820", nil)
    p:alive(clock.t + 0.1)
    clock.t = clock.t + 0.2
    p:tick()
    assert.equal("port-mapped", p.connection)
    assert.equal("up", p.phase)
    -- only our side mapped: the peer's reply from a fresh port of its
    -- symmetric NAT (peer-reflexive) exists thanks to our mapping
    local q = new()
    q:set_remote({ endpoint = "10.4.0.2:51820", nat = "endpoint-dependent", punchable = true })
    q:set_local_nat("endpoint-dependent")
    q:set_local_mapped(true)
    q:tick()
    assert.same({ "request_punch" }, types(q:tick()))
    q:punch_started()
    q:punch_result("198.51.100.24:40123")
    assert.equal("port-mapped", q:tick()[1].connection)
    -- a punch that a cone NAT lets through stays hole-punched, mapping or not
    local r = new()
    r:set_remote({ endpoint = "10.2.0.2:51820", nat = "endpoint-independent", punchable = true })
    r:set_local_nat("endpoint-dependent")
    r:set_local_mapped(true)
    r:tick()
    r:tick()
    r:punch_started()
    r:punch_result("198.51.100.22:51820")
    assert.equal("hole-punched", r:tick()[1].connection)
  end)

  it("a mapping that appears while the peer is relayed brings the upgrade forward", function()
    local p, clock = new()
    p:set_remote({ endpoint = "10.4.0.2:51820", nat = "endpoint-dependent", punchable = true })
    p:set_local_nat("endpoint-dependent")
    p:set_relay("203.0.113.10:3478", 0x4000)
    p:tick()
    p:tick()
    p:observe("203.0.113.10:3478", 0x4000)
    p:alive(clock.t + 0.1)
    clock.t = clock.t + 0.2
    p:tick()
    assert.equal("relayed", p.connection)
    -- no upgrade for a long while ...
    assert.same({}, run(p, clock, 5))
    -- ... until the peer publishes a mapped candidate
    p:set_remote({ endpoint = "10.4.0.2:51820", nat = "endpoint-dependent", punchable = true,
                   mapped = { ["198.51.100.24:51820"] = true } })
    clock.t = clock.t + 0.25
    assert.same({ "request_punch" }, types(p:tick()))
  end)

  it("takes portmap as a 0/1 switch", function()
    assert.equal(1, assert(policy.options({})).portmap)
    assert.equal(0, assert(policy.options({ portmap = 0 })).portmap)
    local ok, err = policy.options({ portmap = 2 })
    assert.is_nil(ok)
    assert.matches("portmap must be 0 or 1", err)
    assert.is_nil(policy.options({ portmap_lease = 0 }))
  end)

  describe("IPv6", function()
    local V6 = "[2001:db8:2::2]:51820"
    local function dual(p)
      p:set_remote({ endpoint = "10.2.0.2:51820", nat = "endpoint-dependent", punchable = true,
                     hosts = { "10.2.0.2:51820", V6 }, v6 = true })
      p:set_local_nat("endpoint-dependent")
      p:set_relay("203.0.113.10:3478", 0x4001)
    end

    it("punches between two symmetric IPv4 NATs when both have IPv6; a peer's own address is direct", function()
      local p, clock = new()
      dual(p)
      assert.same({ "set_endpoint" }, types(p:tick()))
      clock.t = clock.t + 0.25
      assert.same({ "request_punch" }, types(p:tick())) -- not the relay
      p:punch_started()
      p:punch_result(V6)
      assert.same({ { type = "set_endpoint", endpoint = V6, connection = "direct" } }, p:tick())
      -- an answer while the engine still uses the old address confirms nothing
      clock.t = clock.t + 0.3
      p:observe("10.2.0.2:51820", nil)
      p:alive(clock.t)
      p:tick()
      assert.equal("confirm", p.phase)
      clock.t = clock.t + 0.3
      p:observe(V6, nil)
      p:alive(clock.t)
      p:tick()
      assert.equal("up", p.phase)
      assert.equal("direct", p.connection)
      -- and no upgrades of a direct IPv6 path
      for _ = 1, 100 do
        clock.t = clock.t + 1
        p:alive(clock.t)
        assert.same({}, p:tick())
      end
    end)

    it("without IPv6 on both sides, two symmetric NATs still go to the relay", function()
      local p, clock = new()
      dual(p)
      p:set_remote({ endpoint = "10.2.0.2:51820", nat = "endpoint-dependent", punchable = true,
                     hosts = { "10.2.0.2:51820", V6 }, v6 = false })
      p:tick()
      clock.t = clock.t + 0.25
      assert.same({ "use_relay" }, types(p:tick()))
    end)

    it("upgrades a hole-punched IPv4 path to IPv6, and goes back to it when IPv6 does not answer", function()
      local p, clock = new({ upgrade_interval = 20 })
      dual(p)
      p:set_local_nat("endpoint-independent")
      local punched = "203.0.113.22:51820"
      p.phase = "confirm"
      p.pending = "hole-punched"
      p:observe(punched, nil)
      p:alive(clock.t + 0.1)
      clock.t = clock.t + 0.2
      p:tick()
      assert.equal("up", p.phase)
      assert.equal("hole-punched", p.connection)
      local function keep_alive(dt)
        local all = {}
        local stop = clock.t + dt
        while clock.t < stop do
          clock.t = clock.t + 0.5
          p:alive(clock.t)
          for _, a in ipairs(p:tick()) do
            if a.type ~= "handshake" then all[#all + 1] = a end
          end
        end
        return all
      end
      assert.same({}, keep_alive(19))
      assert.same({ "request_punch" }, types(keep_alive(1.5)))
      -- the IPv6 address answers the probe but WireGuard does not follow
      p:punch_started()
      p:punch_result(V6)
      assert.same({ { type = "set_endpoint", endpoint = V6, connection = "direct" } }, p:tick())
      p:observe(V6, nil)
      local back = run(p, clock, policy.DEFAULTS.confirm_timeout) -- no answer over IPv6
      assert.same({ { type = "set_endpoint", endpoint = punched, connection = "hole-punched" } }, back)
      assert.equal("up", p.phase)
      assert.equal("hole-punched", p.connection)
      p:observe(punched, nil)
      -- the next attempt works
      assert.same({ "request_punch" }, types(keep_alive(20.5)))
      p:punch_started()
      p:punch_result(V6)
      p:tick()
      clock.t = clock.t + 0.3
      p:observe(V6, nil)
      p:alive(clock.t)
      p:tick()
      assert.equal("direct", p.connection)
      assert.equal("up", p.phase)
    end)

    it("a hole-punched peer the other side moved to its IPv6 address counts as direct", function()
      local p, clock = new()
      dual(p)
      p.phase, p.connection = "up", "hole-punched"
      p:alive(clock.t)
      p:observe(V6, nil, clock.t)
      clock.t = clock.t + 1.5
      p:alive(clock.t)
      p:tick()
      assert.equal("direct", p.connection)
    end)
  end)

  it("reports a summary", function()
    local p = new()
    local s = p:summary()
    assert.same({ connection = "direct", changed_at = 1000, phase = "start", phase_at = 1000 }, s)
  end)
end)
