-- NAT traversal end to end (#netns, root), with the real CLI and daemons:
-- an "internet" bridge with the leader, a coturn server (STUN and TURN), a
-- public node and NAT routers made with nftables (`masquerade` keeps source
-- ports: endpoint-independent mapping; `masquerade random` maps per
-- destination: a symmetric NAT), nodes on private networks behind them,
-- and an attacker.  Every case prints how long the connection took.
--
--   hub (bridge br0, 203.0.113.0/24; nftables counters and blocks)
--     ├─ L  leader        203.0.113.1:51820   (also serves STUN on its WireGuard port)
--     ├─ S  coturn        203.0.113.10:3478   (STUN + TURN, relays from .10)
--     ├─ R1 masquerade    203.0.113.21 ── A 10.1.0.2:51820
--     ├─ R2 masquerade    203.0.113.22 ── B 10.2.0.2:51820
--     ├─ R3 masq. random  203.0.113.23 ── C 10.3.0.2:51820
--     ├─ R4 masq. random  203.0.113.24 ── D 10.4.0.2:51820
--     ├─ R7 masquerade    203.0.113.27 ── G 10.7.0.2:51820 (its clock an hour ahead)
--     ├─ P  public node   203.0.113.30:51820
--     ├─ X  attacker      203.0.113.66
--     └─ core router      203.0.113.40 (routes 198.18.0.0/16: the Internet between E and F is one routed hop)
--          ├─ RE masquerade, no input filter  198.18.1.2 ── E 10.5.0.2:51820
--          └─ RF masquerade, no input filter  198.18.2.2 ── F 10.6.0.2:51820
--
-- Like a home router, R1-R4 drop unsolicited packets addressed to
-- themselves (`ct state new drop` on the WAN side in the input hook).  RE
-- and RF are plain Linux NATs without that rule: there conntrack records
-- an unsolicited probe from the other side as a flow to the router itself,
-- and the router's next mapping for the same address pair must take
-- another port; the low-TTL first probes of a punch avoid it (case a).
--
-- The cluster: `init --stun 203.0.113.10:3478 --stun 203.0.113.1:51820
-- --turn 203.0.113.10:3478 ...`; nodes join with their private endpoints.
-- The `it`s share the cluster and run in order.

local helpers = require "spec.helpers"
local cjson = require "cjson"
local state = require "wgoverlay.state"
local nat_fixture = require "spec.nat_fixture"

local wait_until = helpers.wait_until
local peer = nat_fixture.peer

local PORT = nat_fixture.PORT
local TURN = "203.0.113.10:3478"
local TURN_USER, TURN_PASS = "wgo", "relay-s3cret"
-- faster than the defaults (15 and 30 s) so that the spec stays short
local NAT_SETTINGS = { "dead_after=8", "upgrade_interval=20", "stun_interval=10" }

describe("NAT traversal #netns", function()
  local fx, hub, S, X, turnd
  local nodes

  local function status(node) return fx:status(node) end
  local function note(...) return fx:note(...) end
  local function wait_connection(...) return fx:wait_connection(...) end
  local function wait_ping(...) return fx:wait_ping(...) end
  local function counters() return fx:counters() end
  local function join(node) return fx:join(node) end
  local function start(list, env) return fx:start(list, env) end

  -- coturn runs (case 5 stops it) and each of `list` holds an allocation
  local function relay_ready(list)
    if not turnd:alive() then turnd = fx:turn(S, "203.0.113.10", TURN_USER, TURN_PASS) end
    for _, n in ipairs(list) do
      assert(wait_until(function()
        local s = status(n)
        return s and type(s.self.nat.relay) == "table" and s.self.nat.relay.state == "allocated"
      end, 30, 0.25), n.name .. " has no TURN allocation")
    end
  end

  -- -------------------------------------------------------------------
  -- set-up and teardown
  -- -------------------------------------------------------------------

  lazy_setup(function()
    for _, tool in ipairs({ "iperf3", "turnserver" }) do
      assert(helpers.sh("command -v " .. tool .. " >/dev/null"), tool .. " is not installed")
    end
    fx = nat_fixture.new({ counters = {
      'ip saddr 203.0.113.21 ip daddr 203.0.113.22 counter comment "r1-to-r2"',
      'ip saddr 203.0.113.22 ip daddr 203.0.113.21 counter comment "r2-to-r1"',
      'ip saddr 203.0.113.21 ip daddr 203.0.113.10 counter comment "r1-to-turn"',
      'ip saddr 203.0.113.22 ip daddr 203.0.113.10 counter comment "r2-to-turn"',
      'ip saddr 203.0.113.23 ip daddr 203.0.113.10 counter comment "r3-to-turn"',
      'ip saddr 203.0.113.23 ip daddr 203.0.113.24 counter comment "r3-to-r4"',
    } })
    hub, nodes = fx.hub, fx.nodes
    -- plain Linux NATs sit behind a core router (a routed hop between them)
    fx:core_router("203.0.113.40", "198.18.0.0/16")
    S = fx:host("turn", { "203.0.113.10/24" })
    X = fx:host("x", { "203.0.113.66/24" })
    turnd = fx:turn(S, "203.0.113.10", TURN_USER, TURN_PASS)

    local L = fx:node("leader", "203.0.113.1")
    fx:node("a", "10.1.0.2", "203.0.113.21", "cone")
    fx:node("b", "10.2.0.2", "203.0.113.22", "cone")
    fx:node("c", "10.3.0.2", "203.0.113.23", "symmetric")
    fx:node("d", "10.4.0.2", "203.0.113.24", "symmetric")
    fx:node("p", "203.0.113.30")
    fx:node("g", "10.7.0.2", "203.0.113.27", "cone")
    fx:node("e", "10.5.0.2", "198.18.1.2", "cone", { input_filter = false, core = true })
    fx:node("f", "10.6.0.2", "198.18.2.2", "cone", { input_filter = false, core = true })
    local nat = {}
    for _, kv in ipairs(NAT_SETTINGS) do nat[#nat + 1] = "--nat " .. kv end
    fx:init(L, ("--stun %s --stun %s --turn %s --turn-user %s --turn-password %s %s"):format(TURN, L.endpoint,
      TURN, TURN_USER, TURN_PASS, table.concat(nat, " ")))
    start({ L })
  end)

  teardown(function() fx:teardown() end)

  -- -------------------------------------------------------------------
  -- the cases
  -- -------------------------------------------------------------------

  it("join hands the NAT settings to members; STUN sees each node's mapping", helpers.guard(function()
    local A, B = nodes.a, nodes.b
    join(A)
    join(B)
    local n = assert(state.load(A.dir .. "/node.json"))
    assert.same({ TURN, nodes.leader.endpoint }, n.cluster.stun)
    assert.same({ server = TURN, username = TURN_USER, password = TURN_PASS }, n.cluster.turn)
    assert.same({ dead_after = 8, upgrade_interval = 20, stun_interval = 10 }, n.cluster.nat)
  end))

  it("case 1: two nodes behind port-preserving NATs connect hole-punched, not via the relay", helpers.guard(function()
    local A, B = nodes.a, nodes.b
    local t0 = start({ A, B })
    local took, sa = wait_connection(A, B, "hole-punched", t0, 40)
    wait_ping(A, B, 10)
    note("case 1 (both behind port-preserving NATs): hole-punched %.1f s after the daemons started", took)
    -- A reaches B at B's NAT mapping (the port is kept), not through a relay
    local pb = peer(sa, "b")
    assert.equal("203.0.113.22:51820", pb.endpoint)
    assert.equal(cjson.null, pb.relay_channel)
    -- what STUN told A: behind an endpoint-independent NAT, mapping kept
    assert.equal("endpoint-independent", sa.self.nat.nat)
    local kinds = {}
    for _, c in ipairs(sa.self.nat.candidates) do kinds[c.type] = c.endpoint end
    assert.equal("10.1.0.2:51820", kinds.host)
    assert.equal("203.0.113.21:51820", kinds.srflx)
    assert.matches("^203%.0%.113%.10:%d+$", kinds.relay)
    -- the traffic goes from NAT to NAT, not to coturn
    local before = counters()
    assert.is_true(A.ns:ping(B.ip, 1, 2))
    assert((A.ns:exec("ping -n -q -c 40 -i 0.02 -s 1000 -W 2 " .. B.ip)), "ping A -> B failed")
    local after = counters()
    local direct = after["r1-to-r2"].bytes - before["r1-to-r2"].bytes
    local relayed = after["r1-to-turn"].bytes - before["r1-to-turn"].bytes
    assert.truthy(direct >= 40 * 1000, "only " .. direct .. " bytes went from R1 to R2")
    assert.truthy(relayed < direct / 10, ("%d bytes went to coturn for %d direct"):format(relayed, direct))
    -- the leader is public: A and B reach it directly
    local sl = assert(status(nodes.leader))
    assert.equal("direct", peer(sl, "a").connection)
    assert.equal("direct", peer(sa, "leader").connection)
  end))

  it("case 2: two nodes behind symmetric NATs go through the relay; ping and iperf3 work", helpers.guard(function()
    local C, D = nodes.c, nodes.d
    join(C)
    join(D)
    local t0 = start({ C, D })
    local took, sc = wait_connection(C, D, "relayed", t0, 60)
    wait_ping(C, D, 10)
    note("case 2 (both behind symmetric NATs): relayed %.1f s after the daemons started", took)
    assert.equal("endpoint-dependent", sc.self.nat.nat)
    local pd = peer(sc, "d")
    assert.equal(TURN, pd.endpoint)
    assert.truthy(pd.relay_channel)
    local before = counters()
    local res = helpers.iperf3(C, D, 2)
    local received = res["end"].sum_received.bytes
    local after = counters()
    local to_turn = after["r3-to-turn"].bytes - before["r3-to-turn"].bytes
    assert.truthy(received > 1e5, "iperf3 moved only " .. received .. " bytes")
    assert.truthy(to_turn > received, ("C sent %d bytes to coturn for %d received"):format(to_turn, received))
    assert.equal(before["r3-to-r4"].packets, after["r3-to-r4"].packets)
    note("case 2: iperf3 through coturn %.0f Mbit/s", res["end"].sum_received.bits_per_second / 1e6)
    assert.is_true(D.ns:ping(C.ip, 3, 2))
  end))

  it("case 3: a public node and one behind a NAT connect directly", helpers.guard(function()
    local P, A = nodes.p, nodes.a
    join(P)
    local t0 = start({ P })
    local took, sp = wait_connection(P, A, "direct", t0, 40)
    wait_ping(P, A, 10)
    wait_ping(A, P, 10)
    note("case 3 (one public, one behind a NAT): direct %.1f s after the public node started", took)
    -- P reaches A at A's NAT mapping, learnt from A's packets
    assert.equal("203.0.113.21:51820", peer(sp, "a").endpoint)
    assert.equal("none", sp.self.nat.nat)
    -- and the symmetric ones too (their packets open their NAT for P)
    wait_connection(P, nodes.c, "direct", t0, 30)
  end))

  it("case 6: forged STUN responses and forged hole-punch probes change nothing", helpers.guard(function()
    local P, A, L = nodes.p, nodes.a, nodes.leader
    -- P's candidates are complete (its TURN allocation is there)
    local before_p = assert(wait_until(function()
      local s = status(P)
      return s and type(s.self.nat.relay) == "table" and s.self.nat.relay.state == "allocated" and s
    end, 10, 0.2), "P has no TURN allocation")
    local before_a = assert(status(A))
    -- from X, and with the source address of coturn and of A's NAT
    -- X sends with the addresses of coturn and of A's NAT as well: they sit
    -- on its loopback, and it neither answers ARP for them nor uses them
    -- in its own ARP requests (the others' neighbour tables stay right)
    X:must("sysctl -q -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2")
    X:must("ip addr add 203.0.113.10/32 dev lo && ip addr add 203.0.113.21/32 dev lo")
    local code = [[
      local socket = require "socket"
      local core = require "wgoverlay.core"
      local stun = require "wgoverlay.nat.stun"
      local punch = require "wgoverlay.nat.punch"
      local targets, a_id, ids = ...
      local n = 0
      for _, src in ipairs({ { "203.0.113.66", 40000 }, { "203.0.113.10", 3478 }, { "203.0.113.21", 51820 } }) do
        local u = assert(socket.udp())
        assert(u:setsockname(src[1], src[2]))
        for _, tgt in ipairs(targets) do
          local ip, port = tgt[1], tgt[2]
          local recv = core.key_from_base64(ids[tgt[3] ] )
          for i = 1, 10 do
            local resp = stun.encode({ method = stun.BINDING, class = "success", attributes = {
              { name = "XOR-MAPPED-ADDRESS", value = "203.0.113.66:6666" } } }, { fingerprint = true })
            assert(u:sendto(resp, ip, port))
            for _, kind in ipairs({ punch.PROBE, punch.ACK }) do
              assert(u:sendto(punch.encode({ kind = kind, sender = core.key_from_base64(a_id), receiver = recv,
                nonce = core.random(12), echo = core.random(12) }, core.random(32)), ip, port))
            end
            n = n + 3
          end
        end
        u:close()
      end
      print(n)
    ]]
    local args = helpers.lua_literal({ { "203.0.113.30", PORT, "p" }, { "203.0.113.1", PORT, "leader" } })
    local ok, out, err = helpers.lua_run(X, "local f = assert(load(" .. helpers.lua_literal(code) .. ")); f("
      .. args .. ", " .. helpers.lua_literal(A.public_key) .. ", "
      .. helpers.lua_literal({ p = P.public_key, leader = L.public_key }) .. ")")
    assert(ok, "forger failed: " .. tostring(err) .. out)
    assert.equal(180, tonumber(out:match("%d+")))
    helpers.sleep(1)
    local last
    local after_p = wait_until(function()
      local s = status(P)
      last = s
      return s and s.self.nat.stats.punch_rejected >= before_p.self.nat.stats.punch_rejected + 60 and s
    end, 5, 0.2)
    assert(after_p, "P did not see all the forged probes: stats before " .. cjson.encode(before_p.self.nat.stats)
      .. ", after " .. cjson.encode(last and last.self.nat.stats))
    local sl = assert(status(L))
    -- nothing moved: candidates, NAT kind, the peer's endpoint and connection
    assert.same(before_p.self.nat.candidates, after_p.self.nat.candidates)
    assert.equal("none", after_p.self.nat.nat)
    assert.is_true(after_p.self.nat.stats.stun_ignored >= before_p.self.nat.stats.stun_ignored + 30)
    local pa_before, pa_after = peer(before_p, "a"), peer(after_p, "a")
    assert.equal(pa_before.endpoint, pa_after.endpoint)
    assert.equal("direct", pa_after.connection)
    assert.equal(pa_before.connection_changed_at, pa_after.connection_changed_at)
    assert.equal("203.0.113.21:51820", peer(sl, "a").endpoint)
    assert.equal("direct", peer(sl, "a").connection)
    for _, c in ipairs(sl.self.nat.candidates) do assert.is_nil(c.endpoint:find("203.0.113.66", 1, true)) end
    -- A (whose identity the forger used) kept its paths too
    local sa = assert(status(A))
    assert.equal(peer(before_a, "b").endpoint, peer(sa, "b").endpoint)
    assert.equal("hole-punched", peer(sa, "b").connection)
    assert.is_true(P.ns:ping(A.ip, 2, 2))
    note("case 6: 180 forged STUN responses / probes / acks from a third namespace: nothing changed "
      .. "(P refused %d punch messages, ignored %d STUN responses)",
      after_p.self.nat.stats.punch_rejected - before_p.self.nat.stats.punch_rejected,
      after_p.self.nat.stats.stun_ignored - before_p.self.nat.stats.stun_ignored)
  end))

  it("case 4: NAT mappings flushed mid-traffic: the hole-punched pair recovers by itself", helpers.guard(function()
    local A, B = nodes.a, nodes.b
    wait_connection(A, B, "hole-punched", helpers.now(), 20)
    wait_ping(A, B, 10)
    local function both_ways() return A.ns:ping(B.ip, 1, 1) and B.ns:ping(A.ip, 1, 1) end
    -- (a) both NATs forget every mapping while a ping runs
    local pinger = A.ns:spawn("ping -n -D -i 0.1 " .. B.ip, { name = "ping-flush" })
    helpers.sleep(1)
    local t0 = helpers.now()
    A.router:must("conntrack -F 2>/dev/null")
    B.router:must("conntrack -F 2>/dev/null")
    local ok = wait_until(both_ways, 30, 0.1)
    local took = helpers.now() - t0
    assert(ok, ("no traffic A <-> B %.1f s after the NAT mappings were flushed"):format(took))
    assert.is_true(took <= 20, ("recovered only after %.1f s"):format(took))
    note("case 4a (conntrack -F on both NATs while pinging): traffic again after %.1f s (%s)", took,
      peer(assert(status(A)), "b").connection)
    -- (b) A's NAT "reboots" with another public port (new rule, mappings
    -- flushed): B's path to A is stale, A's new port unknown to B
    A.router:must(("nft flush chain ip nat post && nft add rule ip nat post oifname %s meta l4proto udp "
      .. "snat to 203.0.113.21:61000 && nft add rule ip nat post oifname %s masquerade && conntrack -F 2>/dev/null")
      :format(A.router_wan, A.router_wan))
    t0 = helpers.now()
    ok = wait_until(both_ways, 30, 0.1)
    took = helpers.now() - t0
    assert(ok, ("no traffic A <-> B %.1f s after A's NAT changed its mapping"):format(took))
    assert.is_true(took <= 20, ("recovered only after %.1f s"):format(took))
    local sa = assert(status(A))
    note("case 4b (A's NAT maps to a new port, mappings flushed): traffic again after %.1f s (%s)", took,
      peer(sa, "b").connection)
    -- and back to a hole-punched path once STUN saw the new mapping
    local again = wait_connection(A, B, "hole-punched", t0, 60)
    sa = assert(status(A))
    local sb = assert(status(B))
    assert.equal("203.0.113.21:61000", peer(sb, "a").endpoint)
    assert.equal("endpoint-independent", sa.self.nat.nat)
    note("case 4b: hole-punched again %.1f s after the change", again)
    pinger:stop(2)
    assert.is_true(A.ns:ping(B.ip, 3, 2))
  end))

  it("case 5: a dead direct path falls back to the relay; when the relay goes and the way is open, back to direct",
    helpers.guard(function()
    local P, A = nodes.p, nodes.a
    wait_connection(P, A, "direct", helpers.now(), 20)
    -- cut P <-> A (R1) on the internet; everything else still flows
    hub:must([[nft -f - <<'EOF'
table bridge natblock {
  chain filt {
    type filter hook forward priority -10; policy accept;
    ip saddr 203.0.113.30 ip daddr 203.0.113.21 drop
    ip saddr 203.0.113.21 ip daddr 203.0.113.30 drop
  }
}
EOF]])
    local t0 = helpers.now()
    local took = wait_connection(P, A, "relayed", t0, 45)
    wait_ping(P, A, 10)
    note("case 5a (direct path cut): relayed %.1f s after the cut", took)
    -- the relay goes away and the direct way opens again
    turnd:stop(5)
    hub:must("nft delete table bridge natblock")
    t0 = helpers.now()
    took = wait_connection(P, A, "direct", t0, 60)
    wait_ping(P, A, 10)
    note("case 5b (relay stopped, direct path open again): direct %.1f s later", took)
  end))
  it("case a: two plain masquerade NATs with no input filter: hole-punched, and again after conntrack -F",
    helpers.guard(function()
    local E, F = nodes.e, nodes.f
    join(E)
    join(F)
    local t0 = start({ E, F })
    local took, se = wait_connection(E, F, "hole-punched", t0, 10)
    wait_ping(E, F, 10)
    note("case a (two plain masquerade NATs, no input filter): hole-punched %.1f s after the daemons started", took)
    assert.equal("198.18.2.2:51820", peer(se, "f").endpoint)
    assert.is_true(se.self.nat.stats.punch_low_ttl_sent > 0)
    relay_ready({ E, F }) -- the relay carries the pair while stale NAT flows expire
    -- both NATs forget every mapping: traffic comes back (relayed first,
    -- the stale flows to the NATs themselves must expire) and the pair is
    -- hole-punched again
    E.router:must("conntrack -F 2>/dev/null")
    F.router:must("conntrack -F 2>/dev/null")
    t0 = helpers.now()
    local ok = wait_until(function() return E.ns:ping(F.ip, 1, 1) and F.ns:ping(E.ip, 1, 1) end, 30, 0.1)
    local back = helpers.now() - t0
    assert(ok, ("no traffic E <-> F %.1f s after conntrack -F"):format(back))
    -- (a punch that fails delays the next by punch_quiet: 35 s)
    local again = wait_connection(E, F, "hole-punched", t0, 120)
    wait_ping(E, F, 10)
    note("case a: conntrack -F on both NATs: traffic again after %.1f s, hole-punched again after %.1f s", back, again)
  end))

  it("case d: one node's clock an hour ahead: still hole-punched (challenge-response, no timestamps)",
    helpers.guard(function()
    local A, G, L = nodes.a, nodes.g, nodes.leader
    local faketime = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
    assert(helpers.sh("test -r " .. faketime), "libfaketime is not installed")
    -- G runs the plain build: libfaketime cannot follow AddressSanitizer's runtime in LD_PRELOAD
    local skew = { LD_PRELOAD = faketime, FAKETIME = "+1h", FAKETIME_DONT_FAKE_MONOTONIC = "1",
                   LUA_CPATH_5_4 = helpers.root .. "/build/?.so;;", WGO_BUILD_DIR = "build", ASAN_OPTIONS = "" }
    local prefix = {}
    for k, v in pairs(skew) do prefix[#prefix + 1] = helpers.quote(k .. "=" .. v) end
    local ok, out = G.ns:exec("env " .. table.concat(prefix, " ") .. " date +%s")
    assert(ok)
    local off = tonumber(out:match("%d+")) - os.time()
    assert.is_true(off > 3500 and off < 3700, "libfaketime did not move the clock: " .. tostring(off))
    join(G)
    G.env = skew
    local t0 = start({ G })
    local took = wait_connection(A, G, "hole-punched", t0, 40)
    wait_ping(A, G, 10)
    wait_ping(G, A, 10)
    note("case d (G's clock %d s ahead): hole-punched with A %.1f s after G started", off, took)
    -- G leaves: its WireGuard handshakes carried times an hour ahead, which
    -- its peers now require to grow (WireGuard's replay protection), so it
    -- could not come back with the right time before they restart
    assert(G.proc:stop(10))
    fx:must_cli(L.ns, "remove-node --state " .. helpers.quote(L.dir) .. " g")
  end))

  it("case c: leader down, both NATs move to other public ports: a path again, then hole-punched again",
    helpers.guard(function()
    local A, B, L = nodes.a, nodes.b, nodes.leader
    -- the STUN/TURN service is up; the leader is what goes
    relay_ready({ A, B })
    wait_connection(A, B, "hole-punched", helpers.now(), 30)
    assert(L.proc:stop(10))
    local moves = { [A] = "203.0.113.21:61500", [B] = "203.0.113.22:62500" }
    for n, to in pairs(moves) do
      n.router:must(("nft flush chain ip nat post && nft add rule ip nat post oifname %s meta l4proto udp "
        .. "snat to %s && nft add rule ip nat post oifname %s masquerade"):format(n.router_wan, to, n.router_wan))
    end
    A.router:must("conntrack -F 2>/dev/null")
    B.router:must("conntrack -F 2>/dev/null")
    local t0 = helpers.now()
    local ok = wait_until(function() return A.ns:ping(B.ip, 1, 1) and B.ns:ping(A.ip, 1, 1) end, 25, 0.2)
    local back = helpers.now() - t0
    local sa = status(A)
    assert(ok, ("no path A <-> B %.1f s after both NATs moved (leader down): A sees B %s"):format(back,
      cjson.encode(peer(sa, "b") or {})))
    note("case c (leader down, both NATs moved): a path again after %.1f s (%s)", back, peer(sa, "b").connection)
    local again, sa2, sb2 = wait_connection(A, B, "hole-punched", t0, 75)
    assert.equal("203.0.113.22:62500", peer(sa2, "b").endpoint)
    assert.equal("203.0.113.21:61500", peer(sb2, "a").endpoint)
    assert.is_true(sa2.self.nat.stats.signals_taken > 0)
    note("case c: hole-punched again %.1f s after the move, the leader still down (A took %d signals)", again,
      sa2.self.nat.stats.signals_taken)
  end))
end)
