-- Port mapping end to end (#netns, root): two nodes behind symmetric NATs
-- (`masquerade random`: a punch alone cannot cross them) whose routers run
-- the real miniupnpd (Debian's miniupnpd-nftables), started by this spec
-- inside the router namespaces with a configuration of its own.  The
-- daemons map their WireGuard ports, publish them as "mapped" candidates
-- and connect "port-mapped", router to router, not through coturn; when
-- they stop (SIGTERM) the mappings are gone from miniupnpd.
--
--   hub (bridge br0, 203.0.114.0/24)
--     ├─ L  leader        203.0.114.1:51820   (also serves STUN)
--     ├─ S  coturn        203.0.114.10:3478   (STUN + TURN)
--     ├─ RA masq. random + miniupnpd (NAT-PMP and UPnP)  203.0.114.21 ── A 10.1.0.2:51820
--     └─ RB masq. random + miniupnpd (UPnP only)         203.0.114.22 ── B 10.2.0.2:51820
--
-- Why 203.0.114.0/24 and not the TEST-NET 203.0.113.0/24 of nat_spec:
-- miniupnpd refuses to map ports when its external address is a reserved
-- one ("Reserved / private IP address ... Port forwarding is impossible";
-- this version has no option to allow it, and `ext_ip` set to a reserved
-- address is an error).  The range is used only inside this spec's
-- namespaces, which have no route to anything else.
--
-- RB answers no NAT-PMP, so that B falls back to UPnP IGD: A's mapping is
-- made with libnatpmp, B's with libminiupnpc.
local helpers = require "spec.helpers"
local cjson = require "cjson"
local nat_fixture = require "spec.nat_fixture"

local peer = nat_fixture.peer
local quote = helpers.quote

local TURN = "203.0.114.10:3478"
local TURN_USER, TURN_PASS = "wgo", "relay-s3cret"

-- miniupnpd's nftables objects (what /etc/miniupnpd/nft_init.sh makes,
-- with a forward chain that accepts: the router forwards its LAN's
-- traffic as before, and miniupnpd adds its accept rules and DNATs)
local UPNP_NFT = [[nft -f - <<'EOF'
table inet wgo_upnp {
  chain forward {
    type filter hook forward priority 0; policy accept;
    jump miniupnpd
  }
  chain miniupnpd {
  }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    jump prerouting_miniupnpd
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    jump postrouting_miniupnpd
  }
  chain prerouting_miniupnpd {
  }
  chain postrouting_miniupnpd {
  }
}
EOF]]

local UPNP_CONF = [[
ext_ifname=%s
listening_ip=%s
enable_natpmp=%s
enable_upnp=yes
secure_mode=yes
system_uptime=no
upnp_table_name=wgo_upnp
upnp_nat_table_name=wgo_upnp
lease_file=%s
uuid=%s
allow 1024-65535 %s 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
]]

describe("NAT port mapping #netns", function()
  local fx, nodes, S

  local function write(path, text)
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
  end

  -- miniupnpd on a node's router, in the foreground (-d), its files in
  -- the spec's temporary directory
  local function miniupnpd(node, natpmp, uuid)
    local r = node.router
    r:must(UPNP_NFT)
    local dir = helpers.tmpdir()
    local conf = ("%s/miniupnpd-%s.conf"):format(dir, node.name)
    node.leases = ("%s/miniupnpd-%s.leases"):format(dir, node.name)
    local lan_net = node.under:gsub("%.%d+$", ".0/24")
    write(conf, UPNP_CONF:format(node.router_wan, node.router_lan, natpmp and "yes" or "no", node.leases, uuid,
      lan_net))
    node.upnpd = r:spawn(("miniupnpd -f %s -d -P %s/miniupnpd-%s.pid"):format(quote(conf), dir, node.name),
      { name = "miniupnpd-" .. node.name })
    assert(helpers.wait_until(function()
      return node.upnpd:log():find("HTTP listening on port") ~= nil or not node.upnpd:alive()
    end, 10, 0.05))
    assert(node.upnpd:alive(), "miniupnpd did not start:\n" .. node.upnpd:log())
  end

  -- the DNAT rules miniupnpd keeps for its mappings
  local function redirects(node)
    local out = node.router:must("nft list chain inet wgo_upnp prerouting_miniupnpd")
    local list = {}
    for port, to in out:gmatch("th dport (%d+) dnat ip to ([%d.:]+)") do list[#list + 1] = port .. "->" .. to end
    return list
  end

  lazy_setup(function()
    for _, tool in ipairs({ "turnserver", "miniupnpd", "upnpc" }) do
      assert(helpers.sh("command -v " .. tool .. " >/dev/null"), tool .. " is not installed")
    end
    fx = nat_fixture.new({ prefix = "pm", counters = {
      'ip saddr 203.0.114.21 ip daddr 203.0.114.22 counter comment "ra-to-rb"',
      'ip saddr 203.0.114.22 ip daddr 203.0.114.21 counter comment "rb-to-ra"',
      'ip saddr 203.0.114.21 ip daddr 203.0.114.10 counter comment "ra-to-turn"',
      'ip saddr 203.0.114.22 ip daddr 203.0.114.10 counter comment "rb-to-turn"',
    } })
    nodes = fx.nodes
    S = fx:host("turn", { "203.0.114.10/24" })
    fx:turn(S, "203.0.114.10", TURN_USER, TURN_PASS)
    local L = fx:node("leader", "203.0.114.1")
    local A = fx:node("a", "10.1.0.2", "203.0.114.21", "symmetric")
    local B = fx:node("b", "10.2.0.2", "203.0.114.22", "symmetric")
    miniupnpd(A, true, "0b6a3c2e-6f0e-4d55-9a51-6a1d2c3b4e01")
    miniupnpd(B, false, "0b6a3c2e-6f0e-4d55-9a51-6a1d2c3b4e02")
    fx:init(L, ("--stun %s --stun %s --turn %s --turn-user %s --turn-password %s"):format(TURN, L.endpoint, TURN,
      TURN_USER, TURN_PASS))
    fx:start({ L })
    fx:join(A)
    fx:join(B)
  end)

  teardown(function() if fx then fx:teardown() end end)

  it("two nodes behind symmetric NATs with miniupnpd connect port-mapped within 10 s; mappings go at stop",
    helpers.guard(function()
      local A, B = nodes.a, nodes.b
      assert.same({}, redirects(A))
      assert.same({}, redirects(B))
      local t0 = fx:start({ A, B })
      local took, sa, sb = fx:wait_connection(A, B, "port-mapped", t0, 10)
      fx:note("two symmetric NATs with miniupnpd: port-mapped %.1f s after the daemons started", took)
      assert.truthy(took <= 10, ("port-mapped after %.1f s"):format(took))

      -- each publishes its router's mapping of its WireGuard port: A's made
      -- with NAT-PMP, B's (its router answers no NAT-PMP) with UPnP IGD
      local function mapped(st)
        for _, c in ipairs(st.self.nat.candidates) do if c.type == "mapped" then return c.endpoint end end
      end
      -- (B's UPnP mapping may come after the connection: A's is enough)
      assert(helpers.wait_until(function()
        sa, sb = fx:status(A), fx:status(B)
        return sa and sb and mapped(sa) ~= nil and mapped(sb) ~= nil
      end, math.max(1, 10 - (helpers.now() - t0)), 0.1), "both mapped candidates within 10 s")
      assert.equal("203.0.114.21:51820", mapped(sa))
      assert.equal("203.0.114.22:51820", mapped(sb))
      assert.equal("endpoint-dependent", sa.self.nat.nat)
      assert.equal("endpoint-dependent", sb.self.nat.nat)
      local pa, pb = sa.self.nat.portmap, sb.self.nat.portmap
      assert.equal("mapped", pa.state)
      assert.equal("natpmp", pa.protocol)
      assert.equal("203.0.114.21:51820", pa.external)
      assert.equal("10.1.0.1", pa.gateway)
      assert.equal(120, pa.lease)
      assert.equal("mapped", pb.state)
      assert.equal("upnp", pb.protocol)
      assert.equal("203.0.114.22:51820", pb.external)
      assert.matches("^http://10%.2%.0%.1:%d+/", pb.gateway)
      -- `status` (text) says it too
      local text = fx:must_cli(A.ns, "status --state " .. quote(A.dir))
      assert.truthy(text:find("port mapping mapped 203.0.114.21:51820 (natpmp, lease 120 s)", 1, true), text)
      assert.truthy(text:find("mapped 203.0.114.21:51820", 1, true), text)
      assert.same({ "51820->10.1.0.2:51820" }, redirects(A))
      assert.same({ "51820->10.2.0.2:51820" }, redirects(B))
      -- what the routers themselves say (UPnP's port mapping list)
      local _, list = B.ns:exec("upnpc -l")
      assert.matches("UDP%s+51820%->10%.2%.0%.2:51820", list)

      -- a path between the routers, not the relay
      assert.equal(cjson.null, peer(sa, "b").relay_channel)
      assert.equal(cjson.null, peer(sb, "a").relay_channel)
      fx:wait_ping(A, B, 5)
      local before = fx:counters()
      assert((A.ns:exec("ping -n -q -c 40 -i 0.02 -s 1000 -W 2 " .. B.ip)), "ping A -> B failed")
      local after = fx:counters()
      local function delta(name) return after[name].bytes - before[name].bytes end
      assert.truthy(delta("ra-to-rb") >= 40 * 1000, "only " .. delta("ra-to-rb") .. " bytes went from RA to RB")
      assert.truthy(delta("rb-to-ra") >= 40 * 1000, "only " .. delta("rb-to-ra") .. " bytes went from RB to RA")
      assert.truthy(delta("ra-to-turn") + delta("rb-to-turn") < delta("ra-to-rb") / 10,
        ("%d bytes went to coturn"):format(delta("ra-to-turn") + delta("rb-to-turn")))

      -- SIGTERM: each daemon deletes its mapping before it exits
      for _, n in ipairs({ A, B }) do
        assert.is_true(n.proc:stop(10), n.name .. " did not stop on SIGTERM")
        assert.equal(0, n.proc:exit_code(), n.proc:log())
      end
      assert.same({}, redirects(A))
      assert.same({}, redirects(B))
      _, list = B.ns:exec("upnpc -l")
      assert.is_nil(list:match("%->10%.2%.0%.2:51820"), list)
      _, list = A.ns:exec("upnpc -l")
      assert.is_nil(list:match("%->10%.1%.0%.2:51820"), list)
      assert.matches("port mapping 203%.0%.114%.21:51820 deleted %(natpmp%)", A.proc:log())
      assert.matches("port mapping 203%.0%.114%.22:51820 deleted %(upnp%)", B.proc:log())
    end))
end)
