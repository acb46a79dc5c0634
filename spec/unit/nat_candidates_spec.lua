-- NAT candidates (wgoverlay.nat.candidates): priorities, ranking,
-- gathering, NAT kinds, sanitising published sets, pairs and probe
-- targets.  Pure, no root.

local cand = require "wgoverlay.nat.candidates"

describe("nat.candidates", function()
  it("computes ICE priorities: host > prflx > srflx > relay", function()
    assert.equal((126 << 24) | (65535 << 8) | 255, cand.priority("host"))
    assert.equal((0 << 24) | (65535 << 8) | 255, cand.priority("relay"))
    assert.is_true(cand.priority("host") > cand.priority("prflx"))
    assert.is_true(cand.priority("prflx") > cand.priority("srflx"))
    assert.is_true(cand.priority("srflx") > cand.priority("relay"))
    assert.is_true(cand.priority("host", 2) < cand.priority("host", 3))
    assert.has_error(function() cand.priority("bogus") end)
  end)

  it("makes candidates with canonical endpoints and refuses bad ones", function()
    local c = assert(cand.new("srflx", "[fd00::0001]:51820"))
    assert.same({ type = "srflx", endpoint = "[fd00::1]:51820", family = 6, priority = cand.priority("srflx") }, c)
    assert.equal(4, assert(cand.new("host", "192.0.2.1:1")).family)
    assert.is_nil(cand.new("host", "192.0.2.1"))
    assert.is_nil(cand.new("host", "192.0.2.1:0"))
    assert.is_nil(cand.new("host", "example.com:1"))
    assert.is_nil(cand.new("nope", "192.0.2.1:1"))
  end)

  it("gathers host, server-reflexive and relayed candidates, ranked, without duplicates", function()
    local list = cand.gather({ host = { "10.1.0.2:51820" },
                               srflx = { "203.0.113.21:51820", "203.0.113.21:51820", "bad" },
                               relay = "203.0.113.10:49160" })
    local got = {}
    for i, c in ipairs(list) do got[i] = c.type .. " " .. c.endpoint end
    assert.same({ "host 10.1.0.2:51820", "srflx 203.0.113.21:51820", "relay 203.0.113.10:49160" }, got)
    -- a mapping equal to the host address stays a host candidate only
    list = cand.gather({ host = { "203.0.113.1:51820" }, srflx = { "203.0.113.1:51820" } })
    assert.equal(1, #list)
    assert.equal("host", list[1].type)
    assert.same({}, cand.gather({}))
  end)

  it("rank sorts by priority then endpoint and keeps the best of duplicates", function()
    local a = assert(cand.new("relay", "192.0.2.9:1"))
    local b = assert(cand.new("host", "192.0.2.9:1"))
    local c = assert(cand.new("srflx", "192.0.2.5:1"))
    local d = assert(cand.new("srflx", "192.0.2.4:1"))
    local r = cand.rank({ a, c, b, d })
    assert.same({ b, d, c }, r)
  end)

  it("classifies the NAT from STUN answers", function()
    assert.equal("unknown", cand.nat_kind({ "10.0.0.2:51820" }, {}))
    assert.equal("none", cand.nat_kind({ "203.0.113.1:51820" }, { "203.0.113.1:51820" }))
    assert.equal("endpoint-independent",
      cand.nat_kind({ "10.0.0.2:51820" }, { "203.0.113.21:51820", "203.0.113.21:51820" }))
    assert.equal("endpoint-independent", cand.nat_kind({ "10.0.0.2:51820" }, { "203.0.113.21:51820" }))
    assert.equal("endpoint-dependent",
      cand.nat_kind({ "10.0.0.2:51820" }, { "203.0.113.23:40001", "203.0.113.23:40002" }))
  end)

  it("publishes and sanitises candidate sets", function()
    local key = string.rep("A", 43) .. "="
    local pub = cand.publish(key, "endpoint-independent",
      cand.gather({ host = { "10.1.0.2:51820" }, relay = "203.0.113.10:50000" }))
    assert.same({ key = key, nat = "endpoint-independent",
                  list = { { type = "host", endpoint = "10.1.0.2:51820" },
                           { type = "relay", endpoint = "203.0.113.10:50000" } } }, pub)
    local s = assert(cand.sanitize(pub))
    assert.equal(key, s.key)
    assert.equal("host", s.list[1].type)
    assert.equal(cand.priority("host"), s.list[1].priority)
    -- a peer cannot claim its own priorities
    local forged = { key = key, nat = "none", list = { { type = "relay", endpoint = "192.0.2.1:1", priority = 1 << 40 },
                                                    { type = "host", endpoint = "192.0.2.2:1" } } }
    s = assert(cand.sanitize(forged))
    assert.equal("host", s.list[1].type)
    -- missing fields default; extra candidates are ignored
    s = assert(cand.sanitize({}))
    assert.same({ key = nil, nat = "unknown", list = {} }, s)
    local many = { list = {} }
    for i = 1, 20 do many.list[i] = { type = "host", endpoint = "192.0.2.1:" .. i } end
    assert.equal(cand.MAX_CANDIDATES, #assert(cand.sanitize(many)).list)
    -- refusals
    assert.is_nil(cand.sanitize("x"))
    assert.is_nil(cand.sanitize({ key = "short" }))
    assert.is_nil(cand.sanitize({ nat = "full-cone" }))
    assert.is_nil(cand.sanitize({ list = "x" }))
    assert.is_nil(cand.sanitize({ list = { "x" } }))
    assert.is_nil(cand.sanitize({ list = { { type = "host", endpoint = "nope" } } }))
  end)

  it("pairs local and remote candidates of one family by pair priority", function()
    local l = cand.gather({ host = { "10.1.0.2:51820" }, srflx = { "203.0.113.21:51820" }, relay = "203.0.113.10:1" })
    local r = cand.gather({ host = { "10.2.0.2:51820", "[fd00::2]:51820" }, srflx = { "203.0.113.22:51820" } })
    local ps = cand.pairs(l, r, { controlling = true })
    assert.equal(4, #ps) -- 2 x 2 IPv4, no relay, no IPv6 partner
    assert.equal("10.1.0.2:51820", ps[1]["local"].endpoint)
    assert.equal("10.2.0.2:51820", ps[1].remote.endpoint)
    for i = 2, #ps do assert.is_true(ps[i - 1].priority >= ps[i].priority) end
    -- the controlled side computes the same priorities for the same pairs
    local back = cand.pairs(r, l, { controlling = false })
    local function key(p) return p["local"].endpoint .. ">" .. p.remote.endpoint end
    local prio = {}
    for _, p in ipairs(ps) do prio[key(p)] = p.priority end
    for _, p in ipairs(back) do
      assert.equal(prio[p.remote.endpoint .. ">" .. p["local"].endpoint], p.priority)
    end
    assert.equal(6, #cand.pairs(l, r, { relay = true }))
    assert.equal(cand.pair_priority(5, 3), (3 << 32) + 10 + 1)
  end)

  it("lists probe targets: non-relayed candidates, then extras, deduplicated, capped", function()
    local r = cand.gather({ host = { "10.2.0.2:51820" }, srflx = { "203.0.113.22:51820" }, relay = "203.0.113.10:1" })
    assert.same({ "10.2.0.2:51820", "203.0.113.22:51820", "198.51.100.7:9" },
      cand.probe_targets(r, { "203.0.113.22:51820", "198.51.100.7:9", "junk" }))
    assert.same({ "10.2.0.2:51820" }, cand.probe_targets(r, nil, 1))
    assert.same({}, cand.probe_targets(nil, nil))
  end)

  it("travel in member records (membership keeps, compares and copies them)", function()
    local membership = require "wgoverlay.membership"
    local reg = assert(membership.leader.new({ name = "leader" }))
    assert(reg:join({ name = "a", public_key = "pkA", endpoint = "10.1.0.2:51820" }))
    local c = cand.publish(string.rep("K", 43) .. "=", "endpoint-independent",
      cand.gather({ host = { "10.1.0.2:51820" }, srflx = { "203.0.113.21:51820" } }))
    local v1 = reg.version
    local v, changed = reg:update("a", { candidates = c })
    assert.is_true(changed)
    assert.equal(v1 + 1, v)
    -- the same set again changes nothing
    local _, again = reg:update("a", { candidates = cand.publish(c.key, c.nat, cand.sanitize(c).list) })
    assert.is_false(again)
    assert.same(c, reg:get("a").candidates)
    -- a member applies the delta; junk fields are dropped
    local view = assert(membership.member.new({ self_name = "b" }))
    assert(view:apply(reg:snapshot()))
    assert.same(c, view:get("a").candidates)
    local r = reg:get("a")
    r.candidates.list[1].extra = "x"
    r.candidates.bogus = true
    assert(view:apply({ type = "delta", version = reg.version + 1, from = reg.version, upsert = { r } }))
    assert.same(c, view:get("a").candidates)
    -- bad values are refused
    assert.is_nil(reg:update("a", { candidates = "x" }))
    assert.is_nil(membership.check_record({ name = "a", public_key = "k", candidates = 3 }))
  end)

  it("a router's port mapping is a \"mapped\" candidate, ranked below prflx and above srflx", function()
    assert.is_true(cand.priority("prflx") > cand.priority("mapped"))
    assert.is_true(cand.priority("mapped") > cand.priority("srflx"))
    local list = cand.gather({ host = { "10.1.0.2:51820" }, srflx = { "198.51.100.21:40001" },
                               mapped = "198.51.100.21:51820", relay = "203.0.113.10:49160" })
    local types = {}
    for i, c in ipairs(list) do types[i] = c.type end
    assert.same({ "host", "mapped", "srflx", "relay" }, types)
    local c = assert(cand.sanitize(cand.publish(nil, "endpoint-dependent", list)))
    assert.same({ ["198.51.100.21:51820"] = true }, cand.endpoints_of(c.list, "mapped"))
    assert.same({ "10.1.0.2:51820", "198.51.100.21:51820", "198.51.100.21:40001" }, cand.probe_targets(c.list))
  end)

  it("picks the global IPv6 addresses a node advertises as host candidates", function()
    local function a(ip, o)
      o = o or {}
      return { ip = ip, family = o.family or 6, scope = o.scope or "global", ifname = o.ifname or "eth0",
               flags = o.flags or { permanent = true } }
    end
    local addrs = {
      a("2001:db8:1::2"),
      a("2001:db8:1:0:0:0:0:2"),                             -- the same, spelt otherwise
      a("2001:db8:1::7", { flags = { temporary = true } }),   -- privacy: after the stable ones
      a("2001:db8:1::3", { flags = { tentative = true } }),   -- DAD not done
      a("2001:db8:1::4", { flags = { deprecated = true } }),
      a("2001:db8:1::5", { flags = { dadfailed = true } }),
      a("fe80::1", { scope = "link" }),
      a("fd00::1"),                                           -- ULA
      a("::1", { scope = "host", ifname = "lo" }),
      a("2001:0:53aa:64c:0:0:0:1"),                           -- Teredo
      a("2002:cb00:7101::1"),                                 -- 6to4
      a("2001:db8:9::1", { ifname = "wgo0" }),                -- the overlay interface
      a("2001:db8:aa::5"),                                    -- in an overlay network
      a("203.0.113.5", { family = 4 }),
      a("3fff::1", { scope = "site" }),
      "junk", { ip = 5, family = 6, scope = "global" }, { ip = "2001:db8:1::8", family = 6, scope = "global",
                                                           flags = "x" },
    }
    assert.same({ "2001:db8:1::2", "2001:db8:1::8", "2001:db8:1::7" },
      cand.v6_hosts(addrs, { ifnames = { "wgo0" }, cidrs = { "2001:db8:aa::/48", "10.200.0.0/16" } }))
    assert.same({}, cand.v6_hosts({}))
    assert.same({}, cand.v6_hosts(nil))
    local many = {}
    for i = 1, 10 do many[i] = a("2001:db8:2::" .. i) end
    assert.equal(cand.MAX_V6_HOSTS, #cand.v6_hosts(many))
  end)

  it("sanitize drops IPv6 candidates no other host can reach, keeps global and ULA ones", function()
    local c = assert(cand.sanitize({ nat = "endpoint-dependent", list = {
      { type = "host", endpoint = "10.1.0.2:51820" },
      { type = "host", endpoint = "[2001:db8:1::2]:51820" },
      { type = "host", endpoint = "[fd00:1::2]:51820" },
      { type = "host", endpoint = "[fe80::1]:51820" },
      { type = "host", endpoint = "[fe80::1%eth0]:51820" },
      { type = "host", endpoint = "[::1]:51820" },
      { type = "host", endpoint = "[ff02::1]:51820" },
      { type = "srflx", endpoint = "[::ffff:203.0.113.5]:51820" },
    } }))
    local got = {}
    for _, e in ipairs(c.list) do got[#got + 1] = e.endpoint end
    table.sort(got)
    assert.same({ "10.1.0.2:51820", "[2001:db8:1::2]:51820", "[fd00:1::2]:51820" }, got)
    assert.is_true(cand.reachable(assert(cand.new("host", "[2001:db8::1]:1"))))
    assert.is_false(cand.reachable(assert(cand.new("host", "[::]:1"))))
  end)

  it("takes the NAT kind from STUN answers of the advertised endpoint's family", function()
    -- an IPv6 server sees the global address: nothing about the IPv4 NAT
    assert.equal("unknown", cand.nat_kind({ "10.1.0.2:51820", "[2001:db8:1::2]:51820" },
      { "[2001:db8:1::2]:51820" }))
    assert.equal("endpoint-dependent", cand.nat_kind({ "10.1.0.2:51820", "[2001:db8:1::2]:51820" },
      { "203.0.113.21:40001", "[2001:db8:1::2]:51820", "203.0.113.21:40002" }))
    assert.equal("endpoint-independent", cand.nat_kind({ "10.1.0.2:51820" },
      { "203.0.113.21:51820", "[2001:db8:1::2]:51820" }))
    -- an IPv6 node: its IPv6 answers count
    assert.equal("none", cand.nat_kind({ "[2001:db8:1::2]:51820" }, { "[2001:db8:1::2]:51820", "203.0.113.9:1" }))
  end)

  it("knows when punching is hopeless", function()
    assert.is_false(cand.punch_possible("endpoint-dependent", "endpoint-dependent"))
    assert.is_true(cand.punch_possible("endpoint-dependent", "endpoint-independent"))
    assert.is_true(cand.punch_possible("unknown", "endpoint-dependent"))
    assert.is_true(cand.punch_possible("none", "none"))
  end)
end)
