-- NAT traversal with IPv6 (#netns, root): dual-stack nodes with global
-- IPv6 addresses behind IPv4 NATs reach each other directly over IPv6.
-- Built on spec/nat_fixture.lua; the routers NAT IPv4 (`masquerade
-- random`: symmetric, so IPv4 alone would be relayed) and only route IPv6
-- (each LAN has its own 2001:db8:N::/64).
--
--   hub (bridge br0, 203.0.113.0/24 and 2001:db8:ffff::/64; counters)
--     ├─ L  leader        203.0.113.1:51820    [2001:db8:ffff::1]:51820
--     ├─ S  coturn        203.0.113.10:3478    (STUN + TURN, IPv4)
--     ├─ R1 masq. random  203.0.113.21 / ::21 ── A 10.1.0.2  2001:db8:1::2
--     ├─ R2 masq. random  203.0.113.22 / ::22 ── B 10.2.0.2  2001:db8:2::2
--     ├─ L2 leader 2      203.0.113.2:51820    [2001:db8:ffff::2]:51820
--     ├─ R5 masquerade    203.0.113.25 / ::25 ── E 10.5.0.2  2001:db8:5::2
--     └─ R6 masquerade    203.0.113.26 / ::26 ── F 10.6.0.2  2001:db8:6::2
--
-- Cluster 1: `init --stun 203.0.113.10:3478 --stun 203.0.113.1:51820
-- --turn 203.0.113.10:3478`.  Cluster 2 (a second leader, nodes E and F):
-- one STUN server, the leader's IPv6 WireGuard port, and nothing else.
-- The `it`s run in order.

local helpers = require "spec.helpers"
local nat_fixture = require "spec.nat_fixture"

local peer = nat_fixture.peer
local quote = helpers.quote

local TURN = "203.0.113.10:3478"
local TURN_USER, TURN_PASS = "wgo", "relay-s3cret"
local NAT_SETTINGS = "--nat dead_after=8 --nat upgrade_interval=20 --nat stun_interval=10"
local BOUND = 20 -- s from the daemons' start to the direct IPv6 path

describe("NAT traversal over IPv6 #netns", function()
  local fx, nodes

  local function kinds(st)
    local out = {}
    for _, c in ipairs(st.self.nat.candidates) do
      out[#out + 1] = c.type .. " " .. c.endpoint
    end
    return out
  end

  local function has(list, v)
    for _, x in ipairs(list) do if x == v then return true end end
    return false
  end

  lazy_setup(function()
    assert(helpers.sh("command -v turnserver >/dev/null"), "turnserver is not installed")
    fx = nat_fixture.new({ prefix = "v", counters = {
      'ip6 saddr 2001:db8:1::2 ip6 daddr 2001:db8:2::2 counter comment "a6-to-b6"',
      'ip6 saddr 2001:db8:2::2 ip6 daddr 2001:db8:1::2 counter comment "b6-to-a6"',
      'ip saddr 203.0.113.21 ip daddr 203.0.113.10 counter comment "r1-to-turn"',
      'ip saddr 203.0.113.21 ip daddr 203.0.113.22 counter comment "r1-to-r2"',
      'ip6 saddr 2001:db8:5::2 ip6 daddr 2001:db8:6::2 counter comment "e6-to-f6"',
    } })
    nodes = fx.nodes
    local S = fx:host("turn", { "203.0.113.10/24" })
    fx:turn(S, "203.0.113.10", TURN_USER, TURN_PASS)
    local L = fx:node("leader", "203.0.113.1", nil, nil, { v6 = "2001:db8:ffff::1" })
    fx:node("a", "10.1.0.2", "203.0.113.21", "symmetric", { v6 = "2001:db8:1::2", wan6 = "2001:db8:ffff::21" })
    fx:node("b", "10.2.0.2", "203.0.113.22", "symmetric", { v6 = "2001:db8:2::2", wan6 = "2001:db8:ffff::22" })
    fx:node("leader2", "203.0.113.2", nil, nil, { v6 = "2001:db8:ffff::2" })
    fx:node("e", "10.5.0.2", "203.0.113.25", "cone", { v6 = "2001:db8:5::2", wan6 = "2001:db8:ffff::25" })
    fx:node("f", "10.6.0.2", "203.0.113.26", "cone", { v6 = "2001:db8:6::2", wan6 = "2001:db8:ffff::26" })
    fx:init(L, ("--stun %s --stun %s --turn %s --turn-user %s --turn-password %s %s"):format(TURN, L.endpoint,
      TURN, TURN_USER, TURN_PASS, NAT_SETTINGS))
    fx:start({ L })
  end)

  teardown(function() fx:teardown() end)

  it("the underlay routes IPv6 between the LANs (no NAT for IPv6)", helpers.guard(function()
    assert.is_true(nodes.a.ns:ping("2001:db8:2::2", 1, 2))
    assert.is_true(nodes.a.ns:ping("2001:db8:ffff::1", 1, 2))
  end))

  it("(e) dual-stack nodes behind symmetric IPv4 NATs: direct over IPv6", helpers.guard(function()
    local A, B = nodes.a, nodes.b
    fx:join(A)
    fx:join(B)
    local t0 = fx:start({ A, B })
    local took, sa, sb = fx:wait_connection(A, B, "direct", t0, BOUND)
    fx:wait_ping(A, B, 10)
    fx:note("(e) dual-stack, both behind symmetric IPv4 NATs: direct over IPv6 %.1f s after the daemons started",
      took)
    -- each reaches the other at its global IPv6 address
    assert.equal("[2001:db8:2::2]:51820", peer(sa, "b").endpoint)
    assert.equal("[2001:db8:1::2]:51820", peer(sb, "a").endpoint)
    -- IPv4 alone would not have done: STUN sees a symmetric NAT
    assert.equal("endpoint-dependent", sa.self.nat.nat)
    local ka = kinds(sa)
    assert.is_true(has(ka, "host 10.1.0.2:51820"), table.concat(ka, ", "))
    assert.is_true(has(ka, "host [2001:db8:1::2]:51820"), table.concat(ka, ", "))
    -- no link-local or other non-global address is advertised
    for _, c in ipairs(sa.self.nat.candidates) do assert.is_nil(c.endpoint:find("fe80", 1, true)) end
    -- the overlay traffic goes over IPv6 from LAN to LAN, not to coturn
    -- and not over IPv4
    local before = fx:counters()
    assert((A.ns:exec("ping -n -q -c 40 -i 0.02 -s 1000 -W 2 " .. B.ip)), "ping A -> B failed")
    local after = fx:counters()
    local v6 = after["a6-to-b6"].bytes - before["a6-to-b6"].bytes
    local back = after["b6-to-a6"].bytes - before["b6-to-a6"].bytes
    local turn = after["r1-to-turn"].bytes - before["r1-to-turn"].bytes
    local v4 = after["r1-to-r2"].bytes - before["r1-to-r2"].bytes
    assert.truthy(v6 >= 40 * 1000, "only " .. v6 .. " bytes went from A to B over IPv6")
    assert.truthy(back >= 40 * 1000, "only " .. back .. " bytes went from B to A over IPv6")
    assert.truthy(turn < v6 / 10, ("%d bytes went to coturn for %d over IPv6"):format(turn, v6))
    assert.equal(0, v4)
    -- the public leader is still reached directly at its IPv4 endpoint
    assert.equal("direct", peer(sa, "leader").connection)
    assert.equal("203.0.113.1:51820", peer(sa, "leader").endpoint)
  end))

  it("behind stateful IPv6 firewalls (unsolicited inbound dropped): the punch opens them, direct over IPv6",
    helpers.guard(function()
    local A, B = nodes.a, nodes.b
    -- like a home router (RFC 6092): only answers come in from the WAN
    for _, n in ipairs({ A, B }) do
      n.router:must(([[nft -f - <<'EOF'
table ip6 v6fw {
  chain inbound {
    type filter hook forward priority filter; policy accept;
    iifname "%s" ct state established,related accept
    iifname "%s" drop
  }
}
EOF]]):format(n.router_wan, n.router_wan))
    end
    A.proc:stop(5)
    B.proc:stop(5)
    A.router:must("conntrack -F 2>/dev/null; conntrack -f ipv6 -F 2>/dev/null; true")
    B.router:must("conntrack -F 2>/dev/null; conntrack -f ipv6 -F 2>/dev/null; true")
    -- the firewalls work: B cannot reach A's address unasked
    assert.is_false(B.ns:ping("2001:db8:1::2", 1, 1))
    local t0 = fx:start({ A, B })
    local took, sa = fx:wait_connection(A, B, "direct", t0, BOUND)
    fx:wait_ping(A, B, 10)
    fx:note("(e) behind symmetric IPv4 NATs and stateful IPv6 firewalls: direct over IPv6 %.1f s after the daemons "
      .. "started", took)
    assert.equal("[2001:db8:2::2]:51820", peer(sa, "b").endpoint)
    -- and still no way in unasked from elsewhere
    assert.is_false(nodes.leader.ns:ping("2001:db8:1::2", 1, 1))
  end))

  it("a lost IPv6 address is withdrawn from the candidates", helpers.guard(function()
    local A = nodes.a
    A.ns:must("ip -6 addr add 2001:db8:1::99/64 dev " .. A.lan_if .. " nodad")
    local function candidates_have(ep)
      local st = fx:status(A)
      return st and has(kinds(st), "host " .. ep)
    end
    -- read again within stun_interval (10 s)
    assert(helpers.wait_until(function() return candidates_have("[2001:db8:1::99]:51820") end, 15, 0.25),
      "a new global IPv6 address did not become a candidate")
    A.ns:must("ip -6 addr del 2001:db8:1::99/64 dev " .. A.lan_if)
    assert(helpers.wait_until(function() return not candidates_have("[2001:db8:1::99]:51820") end, 15, 0.25),
      "a removed IPv6 address stayed a candidate")
    -- a deprecated one is not advertised either
    A.ns:must("ip -6 addr add 2001:db8:1::98/64 dev " .. A.lan_if .. " nodad preferred_lft 0")
    helpers.sleep(11)
    assert.is_false(candidates_have("[2001:db8:1::98]:51820"))
    assert.is_true(candidates_have("[2001:db8:1::2]:51820"))
  end))

  it("STUN over IPv6 only: a cluster whose one STUN server is [v6]:port; direct over IPv6", helpers.guard(function()
    local L2, E, F = nodes.leader2, nodes.e, nodes.f
    local stun6 = "[2001:db8:ffff::2]:51820"
    fx:init(L2, "--stun " .. quote(stun6) .. " " .. NAT_SETTINGS)
    fx:start({ L2 })
    fx:join(E)
    fx:join(F)
    local t0 = fx:start({ E, F })
    local took, se = fx:wait_connection(E, F, "direct", t0, BOUND)
    fx:wait_ping(E, F, 10)
    fx:note("IPv6-only STUN, both behind port-preserving IPv4 NATs: direct over IPv6 %.1f s after the daemons "
      .. "started", took)
    assert.equal("[2001:db8:6::2]:51820", peer(se, "f").endpoint)
    -- the STUN answer came over IPv6: the server saw E's own address
    assert.equal(1, #se.self.nat.stun)
    assert.equal(stun6, se.self.nat.stun[1].server)
    assert.equal("[2001:db8:5::2]:51820", se.self.nat.stun[1].mapped)
    -- it says nothing about the IPv4 NAT in front of the advertised endpoint
    assert.equal("unknown", se.self.nat.nat)
    local before = fx:counters()
    assert((E.ns:exec("ping -n -q -c 20 -i 0.02 -s 1000 -W 2 " .. F.ip)), "ping E -> F failed")
    local v6 = fx:counters()["e6-to-f6"].bytes - before["e6-to-f6"].bytes
    assert.truthy(v6 >= 20 * 1000, "only " .. v6 .. " bytes went from E to F over IPv6")
  end))
end)
