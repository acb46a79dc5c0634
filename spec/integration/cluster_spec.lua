-- The cluster end to end, with the real CLI (bin/wgoverlay init, token,
-- join, run, attach, detach, remove-node, status --state) in network
-- namespaces: containers talking by DNS name across nodes, dig answers,
-- only WireGuard UDP on the underlay, restarts of a node and of the
-- leader, remove-node, refused tokens, `status --json`, state file modes
-- and a truncated node.json, health transitions.  Needs root.
--
-- Topology (every address lives in namespaces this spec creates):
--
--   hub: bridge br0 (no address) + nftables counters (bridge forward hook)
--     ├─ leader  192.0.2.1:51820   container cL "admin"
--     ├─ a       192.0.2.2:51820   container cA "front", s1 "svc" (for a while)
--     ├─ b       192.0.2.3:51820   container cB "back",  s2 "svc" (for a while)
--     ├─ c       192.0.2.4:51820   joins after the leader restarted; cC "extra";
--     │                            removed with remove-node at the end
--     └─ x       192.0.2.5         joiner with bad tokens (never admitted)
--
-- The spec runs twice, once per registry backend: the embedded one (the
-- node that ran init is the leader) and etcd (a 3-member etcd with TLS and
-- a user limited to the cluster's prefix, on 192.0.2.101-103; the node that
-- ran init is one member among equals).  WGO_SPEC_REGISTRY=embedded|etcd
-- runs one of them.
--
-- The `it`s share one cluster and run in order.  Teardown (strict: it runs
-- even when set-up failed) stops every process by pid, deletes the
-- namespaces, /etc/netns/<ns> files, UAPI sockets and the state dirs.

local helpers = require "spec.helpers"
local fixture = require "spec.cluster_fixture"
local etcd_fixture = require "spec.etcd_fixture"
local cjson = require "cjson"
local state = require "wgoverlay.state"
local token = require "wgoverlay.token"

local quote = helpers.quote
local wait_until = helpers.wait_until

local PORT = fixture.PORT

local BACKENDS = { "embedded", "etcd" }
if os.getenv("WGO_SPEC_REGISTRY") then BACKENDS = { os.getenv("WGO_SPEC_REGISTRY") } end

for _, backend in ipairs(BACKENDS) do
describe(("cluster end to end, %s registry #netns"):format(backend), function()
  local cl              -- spec.cluster_fixture: the hub, nodes, containers, teardown
  local hub
  local nodes, ctrs     -- cl.nodes (name -> node), cl.ctrs (key -> container)
  local c_token         -- the single-use token C joined with
  local fx, reg_args    -- etcd: the etcd cluster, and init's --registry arguments
  local PREFIX = "/wgoverlay/cluster-spec/"

  -- -------------------------------------------------------------------
  -- small tools (the fixture's, by their short names)
  -- -------------------------------------------------------------------

  local function cli(ns, args) return cl:cli(ns, args) end
  local function must_cli(ns, args) return cl:must_cli(ns, args) end
  local fqdn, peer = fixture.fqdn, fixture.peer
  local function status(node) return cl:status(node) end

  local function peer_names(st)
    local names = {}
    for _, p in ipairs(st.peers) do names[#names + 1] = p.name end
    table.sort(names)
    return names
  end

  local function wait_health(node, names, healthy, timeout) return cl:wait_health(node, names, healthy, timeout) end
  local function start(node) return cl:start(node) end
  local function stop(node) return cl:stop(node) end
  local function read_node(node) return cl:read_node(node) end
  local function new_node(name, ip) return cl:node(name, ip) end
  local function join(node, tok) return cl:join(node, tok) end
  -- Attaches a fresh container namespace to `node` as DNS `name` (its
  -- resolv.conf points at the node).
  local function attach(key, node, name) return cl:attach(key, node, name) end

  local function ping_name(c, name, family, count)
    return (c.ns:exec(("ping -%d -n -q -c %d -i 0.2 -W 2 %s"):format(family or 4, count or 2, fqdn(name))))
  end

  local function wait_ping_name(c, name, family, timeout)
    local ok = wait_until(function() return ping_name(c, name, family, 1) end, timeout or 15, 0.2)
    assert(ok, ("container %s cannot ping %s (IPv%d)"):format(c.name, fqdn(name), family or 4))
  end

  -- The registry as stored: sorted member names, who holds slices, and
  -- the allocator (embedded: leader.json; etcd: its nodes/ and slices/).
  local function leader_state()
    if backend == "etcd" then
      local ok, out = fx:ctl("get --prefix " .. PREFIX .. " -w json")
      assert(ok, out)
      local core = require "wgoverlay.core"
      local names, slices = {}, {}
      for _, kv in ipairs(cjson.decode(out).kvs or {}) do
        local k = core.base64_decode(kv.key)
        local n = k:match("^" .. PREFIX:gsub("%p", "%%%0") .. "nodes/(.+)$")
        if n then names[#names + 1] = n end
        local idx = k:match("^" .. PREFIX:gsub("%p", "%%%0") .. "slices/(%d+)$")
        if idx then slices[#slices + 1] = idx .. "=" .. core.base64_decode(kv.value) end
      end
      table.sort(names)
      table.sort(slices)
      local owners = {}
      for _, e in ipairs(slices) do owners[#owners + 1] = e:match("=(.*)$") end
      table.sort(owners)
      return { members = names, alloc_nodes = owners, allocator = slices }
    end
    local lead = assert(state.load(nodes.leader.dir .. "/leader.json"))
    local names = {}
    for n in pairs(lead.registry.members) do names[#names + 1] = n end
    table.sort(names)
    local alloc_nodes = {}
    for n in pairs(lead.allocator.nodes) do alloc_nodes[#alloc_nodes + 1] = n end
    table.sort(alloc_nodes)
    return { members = names, alloc_nodes = alloc_nodes, allocator = lead.allocator }
  end

  -- -------------------------------------------------------------------
  -- set-up and teardown
  -- -------------------------------------------------------------------

  lazy_setup(function()
    assert(helpers.is_root, "integration specs need root")
    for _, tool in ipairs({ "dig", "nft", "ping", "iperf3" }) do
      assert(helpers.sh("command -v " .. tool .. " >/dev/null"), tool .. " is not installed")
    end
    cl = fixture.new()
    hub, nodes, ctrs = cl.hub, cl.nodes, cl.ctrs
    local etcd_rules = ""
    if backend == "etcd" then
      local ens, ips, eps = {}, {}, {}
      for i = 1, 3 do
        ips[i] = "192.0.2." .. (100 + i)
        ens[i] = cl:host("etcd" .. i, ips[i])
      end
      local auth = { user = "wgo-cl", password = "pw-" .. tostring(math.random(1e9)), prefix = PREFIX }
      fx = etcd_fixture.new({ members = 3, namespaces = ens, ips = ips, auth = auth })
      for i = 1, 3 do eps[i] = ("etcd://%s:%d"):format(ips[i], fx.members[i].cport) end
      local pw = helpers.tmpdir() .. "/etcd-pw"
      helpers.write_file(pw, auth.password, "600")
      reg_args = (" --registry %s --etcd-prefix %s --etcd-ca %s --etcd-user %s --etcd-password-file %s"):format(
        table.concat(eps, ","), PREFIX, quote(fx.cacert), auth.user, quote(pw))
      -- the nodes' TLS to etcd, and etcd's own traffic, is not between the nodes
      etcd_rules = [[
    ip saddr 192.0.2.100/30 counter accept comment "etcd"
    ip daddr 192.0.2.100/30 counter accept comment "etcd"
]]
    end
    -- What crosses the bridge between the hosts: WireGuard's UDP port is
    -- accepted first; any other IPv4 packet, and any packet that carries
    -- an overlay address in clear, is counted.
    helpers.write_file(helpers.tmpdir() .. "/count.nft", ([[
table bridge wgo_count {
  chain count {
    type filter hook forward priority 0; policy accept;
    ip saddr 192.0.2.0/24 ip daddr 192.0.2.0/24 udp sport %d udp dport %d counter accept comment "wireguard"
%s    meta protocol ip counter comment "other ipv4"
    ip6 saddr fd00:200::/48 counter comment "overlay6 src"
    ip6 daddr fd00:200::/48 counter comment "overlay6 dst"
  }
}
]]):format(PORT, PORT, etcd_rules))
    hub:must("nft -f " .. quote(helpers.tmpdir() .. "/count.nft"))

    local L = new_node("leader", "192.0.2.1")
    local A = new_node("a", "192.0.2.2")
    local B = new_node("b", "192.0.2.3")
    must_cli(L.ns, ("init --state %s --endpoint %s --name leader%s"):format(quote(L.dir), L.endpoint, reg_args or ""))
    read_node(L)
    local tok = must_cli(L.ns, "token --state " .. quote(L.dir) .. " --uses 2"):gsub("%s+$", "")
    start(L)
    join(A, tok)
    join(B, tok)
    start(A)
    start(B)
    attach("L", L, "admin")
    attach("A", A, "front")
    attach("B", B, "back")
    wait_health(L, { "a", "b" }, true, 30)
    wait_health(A, { "leader", "b" }, true, 30)
    wait_health(B, { "leader", "a" }, true, 30)
  end)

  teardown(function() if cl then cl:teardown() end end)

  -- -------------------------------------------------------------------
  -- the demonstrations
  -- -------------------------------------------------------------------

  it("status --state --json: self and peers with handshake, health, RTT", helpers.guard(function()
    for _, n in ipairs({ "leader", "a", "b" }) do
      local node = nodes[n]
      local st = assert(status(node))
      assert.same({ name = n, public_key = node.public_key, overlay_ip = node.ip, slice = st.self.slice,
                    endpoint = node.endpoint },
                  { name = st.self.name, public_key = st.self.public_key, overlay_ip = st.self.overlay_ip,
                    slice = st.self.slice, endpoint = st.self.endpoint })
      assert.matches("^10%.200%.%d+%.%d+/28$", st.self.slice)
      assert.equal(node.ifname, st.self.interface)
      local others = {}
      for _, m in ipairs({ "leader", "a", "b" }) do if m ~= n then others[#others + 1] = m end end
      table.sort(others)
      assert.same(others, peer_names(st))
      -- rtt_ms is a number once a probe came back
      st = assert(wait_until(function()
        local s = status(node)
        for _, p in ipairs(s.peers) do if type(p.rtt_ms) ~= "number" then return false end end
        return s
      end, 10, 0.25))
      for _, p in ipairs(st.peers) do
        local other = nodes[p.name]
        assert.equal(other.public_key, p.public_key)
        assert.equal(other.ip, p.overlay_ip)
        assert.equal(other.endpoint, p.endpoint)
        assert.equal("number", type(p.last_handshake))
        assert.is_true(math.abs(os.time() - p.last_handshake) < 120,
          ("handshake epoch %s is not close to now %d"):format(tostring(p.last_handshake), os.time()))
        assert.is_true(p.healthy)
        assert.equal("number", type(p.rtt_ms))
        assert.is_true(p.rtt_ms > 0 and p.rtt_ms < 1000, "rtt_ms " .. tostring(p.rtt_ms))
        assert.equal("direct", p.connection)
      end
    end
    -- the human table says the same
    local out = must_cli(nodes.a.ns, "status --state " .. quote(nodes.a.dir))
    assert.matches("node a %(member%)", out)
    assert.matches("leader%s+10%.200%.%S+%s+192%.0%.2%.1:51820%s+%d+s ago%s+healthy", out)
  end))

  it("containers on three nodes ping each other by DNS name", helpers.guard(function()
    local cL, cA, cB = ctrs.L, ctrs.A, ctrs.B
    for _, pair in ipairs({ { cA, "back" }, { cB, "front" }, { cL, "back" }, { cA, "admin" }, { cB, "admin" } }) do
      wait_ping_name(pair[1], pair[2], 4)
      assert.is_true(ping_name(pair[1], pair[2], 4, 2), pair[1].name .. " -> " .. pair[2])
      assert.is_true(ping_name(pair[1], pair[2], 6, 2), pair[1].name .. " -> " .. pair[2] .. " (IPv6)")
    end
    -- the name resolved to the right container
    local _, out = cA.ns:exec("getent ahostsv4 " .. fqdn("back"))
    assert.matches(cB.ip:gsub("%.", "%%."), out)
    -- and nodes by name
    assert.is_true(ping_name(cA, "b", 4, 1))
    assert.is_true(ping_name(cB, "leader", 6, 1))
  end))

  it("dig: nodes and containers (A/AAAA, UDP/TCP), sets, NXDOMAIN, REFUSED, detach", helpers.guard(function()
    local cA = ctrs.A
    local servers = { nodes.leader.ip, nodes.a.ip, nodes.b.ip } -- the local one and two remote ones
    for _, srv in ipairs(servers) do
      for _, tcp in ipairs({ false, true }) do
        local o = { tcp = tcp }
        for _, n in ipairs({ "leader", "a", "b" }) do
          assert.same({ nodes[n].ip }, helpers.dig(cA.ns, srv, fqdn(n), "A", o).addrs)
          assert.same({ nodes[n].ip6 }, helpers.dig(cA.ns, srv, fqdn(n), "AAAA", o).addrs)
        end
        for _, k in ipairs({ "L", "A", "B" }) do
          local c = ctrs[k]
          local r = helpers.dig(cA.ns, srv, fqdn(c.name), "A", o)
          assert.equal("NOERROR", r.status, r.raw)
          assert.is_true(r.flags.aa, "not authoritative:\n" .. r.raw)
          assert.same({ c.ip }, r.addrs)
          assert.same({ c.ip6 }, helpers.dig(cA.ns, srv, fqdn(c.name), "AAAA", o).addrs)
        end
        local nx = helpers.dig(cA.ns, srv, fqdn("nope"), "A", o)
        assert.equal("NXDOMAIN", nx.status, nx.raw)
        local ref = helpers.dig(cA.ns, srv, "example.com", "A", o)
        assert.equal("REFUSED", ref.status, ref.raw)
      end
    end

    -- two containers on two nodes with one name: a set, everywhere
    local s1 = attach("s1", nodes.a, "svc")
    local s2 = attach("s2", nodes.b, "svc")
    local want4, want6 = { s1.ip, s2.ip }, { s1.ip6, s2.ip6 }
    table.sort(want4)
    table.sort(want6)
    for _, srv in ipairs(servers) do
      local ok = wait_until(function()
        return #helpers.dig(cA.ns, srv, fqdn("svc"), "A").addrs == 2
      end, 10, 0.2)
      assert(ok, "svc set not complete on " .. srv)
      for _, tcp in ipairs({ false, true }) do
        assert.same(want4, helpers.dig(cA.ns, srv, fqdn("svc"), "A", { tcp = tcp }).addrs)
        assert.same(want6, helpers.dig(cA.ns, srv, fqdn("svc"), "AAAA", { tcp = tcp }).addrs)
      end
    end

    -- detach: the record leaves the set, then the name is gone
    must_cli(nodes.a.ns, ("detach --state %s %s"):format(quote(nodes.a.dir), s1.ns.name))
    for _, srv in ipairs(servers) do
      assert(wait_until(function()
        local r = helpers.dig(cA.ns, srv, fqdn("svc"), "A")
        return #r.addrs == 1 and r.addrs[1] == s2.ip
      end, 10, 0.2), "svc still holds " .. s1.ip .. " on " .. srv)
      assert.same({ s2.ip6 }, helpers.dig(cA.ns, srv, fqdn("svc"), "AAAA", { tcp = true }).addrs)
    end
    -- the container's end of the veth is gone
    assert.is_false((s1.ns:exec("ip link show ovl0")))
    must_cli(nodes.b.ns, ("detach --state %s %s"):format(quote(nodes.b.dir), s2.ns.name))
    for _, srv in ipairs(servers) do
      assert(wait_until(function()
        return helpers.dig(cA.ns, srv, fqdn("svc"), "A").status == "NXDOMAIN"
      end, 10, 0.2), "svc still answered on " .. srv)
      assert.equal("NXDOMAIN", helpers.dig(cA.ns, srv, fqdn("svc"), "AAAA", { tcp = true }).status)
    end
    -- detaching twice is an error
    local code, _, err = cli(nodes.b.ns, ("detach --state %s %s"):format(quote(nodes.b.dir), s2.ns.name))
    assert.is_not.equal(0, code)
    assert.matches("not attached", err)
  end))

  it("the underlay carries only WireGuard UDP between the nodes", helpers.guard(function()
    local cA, cB = ctrs.A, ctrs.B
    local before = helpers.nft_counters(hub, "bridge", "wgo_count")
    -- ICMP (IPv4 and IPv6), DNS to a remote node, and a TCP transfer
    assert.is_true(ping_name(cA, "back", 4, 5))
    assert.is_true(ping_name(cB, "front", 6, 5))
    assert.same({ cB.ip }, helpers.dig(cA.ns, nodes.b.ip, fqdn("back"), "A", { tcp = true }).addrs)
    local srv = cB.ns:spawn("iperf3 -s -1", { name = "iperf3-server" })
    assert(wait_until(function()
      local _, out = cB.ns:exec("ss -Hltn 'sport = :5201'")
      return out:match("LISTEN")
    end, 5, 0.05), "iperf3 server did not listen:\n" .. srv:log())
    local ok, out, err = cA.ns:exec("iperf3 -4 -c " .. fqdn("back") .. " -t 2 -J")
    assert(ok, "iperf3 failed: " .. err .. out)
    srv:wait(5)
    local res = cjson.decode(out)
    local sent = res["end"].sum_sent.bytes
    assert.is_true(sent > 1e6, "iperf3 moved only " .. tostring(sent) .. " bytes")
    local after = helpers.nft_counters(hub, "bridge", "wgo_count")
    local function delta(k, f) return after[k][f or "packets"] - before[k][f or "packets"] end
    assert.equal(0, delta("other ipv4"), "non-WireGuard IPv4 packets crossed the underlay")
    assert.equal(0, delta("overlay6 src"), "overlay IPv6 in clear on the underlay")
    assert.equal(0, delta("overlay6 dst"), "overlay IPv6 in clear on the underlay")
    assert.is_true(delta("wireguard", "bytes") >= sent,
      ("WireGuard carried %d bytes for a %d-byte TCP transfer"):format(delta("wireguard", "bytes"), sent))
    -- control: the counter does see clear traffic between the hosts
    assert.is_true(nodes.a.ns:ping(nodes.b.under, 2, 1))
    local ctl = helpers.nft_counters(hub, "bridge", "wgo_count")
    assert.is_true(ctl["other ipv4"].packets - after["other ipv4"].packets >= 4, "the counter missed a plain ping")
  end))

  it("state files are 0600 in a 0700 directory; a truncated node.json is refused, untouched", helpers.guard(function()
    for _, n in ipairs({ "leader", "a", "b" }) do
      local dir = nodes[n].dir
      assert.equal("700", helpers.file_mode(dir), dir)
      local files = { "node.json", "containers.json", "control.sock" }
      if backend == "etcd" then
        files[#files + 1] = "etcd-ca.pem"
      else
        files[#files + 1] = n == "leader" and "leader.json" or "members.json"
      end
      for _, f in ipairs(files) do
        assert.equal("600", helpers.file_mode(dir .. "/" .. f), dir .. "/" .. f)
      end
    end
    -- a node of its own (its own key and interface name), never run whole
    local scratch = helpers.netns.new("s")
    local dir = helpers.tmpdir() .. "/state-truncated"
    must_cli(scratch, "init --state " .. quote(dir) .. " --endpoint 192.0.2.99:51820 --name scratch")
    local path = dir .. "/node.json"
    local full = assert(helpers.read_file(path))
    local priv = assert(state.load(path)).private_key
    local truncated = full:sub(1, #full // 2)
    helpers.write_file(path, truncated, "600")
    local code, _, err = cli(scratch, "run --state " .. quote(dir))
    assert.is_not.equal(0, code)
    assert.matches("node%.json", err)
    assert.matches("truncated", err)
    assert.is_nil(err:find(priv, 1, true), "the error quotes the private key")
    assert.equal(truncated, helpers.read_file(path), "node.json was modified")
    assert.equal("600", helpers.file_mode(path))
    -- nothing was started
    assert.is_false((scratch:exec("ip link show | grep -q wgo")))
    assert.is_nil(helpers.read_file(dir .. "/control.sock"))
  end))

  it("health: a stopped node turns unhealthy within 15 s, healthy again after restart", helpers.guard(function()
    local B = nodes.b
    local t0 = helpers.now()
    stop(B)
    wait_health(nodes.leader, { "b" }, false, 15)
    wait_health(nodes.a, { "b" }, false, 15)
    local took = helpers.now() - t0
    assert.is_true(took <= 16, ("unhealthy after %.1f s"):format(took))
    -- the others stay healthy
    local st = assert(status(nodes.a))
    assert.is_true(peer(st, "leader").healthy)
    start(B)
    wait_health(nodes.leader, { "b" }, true, 20)
    wait_health(nodes.a, { "b" }, true, 20)
    wait_health(B, { "leader", "a" }, true, 20)
    wait_ping_name(ctrs.A, "back", 4)
    -- both transitions were emitted as events, in order, after t0
    local seen = {}
    for _, ev in ipairs(assert(status(nodes.a)).events) do
      if ev.peer == "b" and ev.time >= math.floor(t0) then seen[#seen + 1] = ev.type end
    end
    assert.same({ "peer_unhealthy", "peer_healthy" }, { seen[#seen - 1], seen[#seen] })
  end))

  it("a node restarted from its state keeps its address and reconnects", helpers.guard(function()
    local A = nodes.a
    local before = assert(status(A))
    stop(A)
    assert.is_false((helpers.sh("test -S /var/run/wireguard/" .. A.ifname .. ".sock")), "UAPI socket left")
    -- B can no longer reach A's container
    assert.is_false((ctrs.B.ns:exec("ping -n -q -c 1 -W 1 " .. ctrs.A.ip)))
    local t_restart = os.time()
    start(A)
    local st = assert(status(A))
    assert.equal(before.self.overlay_ip, st.self.overlay_ip)
    assert.equal(before.self.overlay_ip6, st.self.overlay_ip6)
    assert.equal(before.self.slice, st.self.slice)
    assert.equal(before.self.public_key, st.self.public_key)
    -- its container kept its address and name
    assert.same({ ctrs.A.ip }, helpers.dig(ctrs.B.ns, nodes.b.ip, fqdn("front"), "A").addrs)
    wait_ping_name(ctrs.B, "front", 4)
    wait_ping_name(ctrs.A, "back", 6)
    wait_ping_name(ctrs.A, "admin", 4)
    st = wait_health(A, { "leader", "b" }, true, 20)
    for _, p in ipairs(st.peers) do
      assert.is_true(p.last_handshake >= t_restart, p.name .. ": no handshake since the restart")
    end
    assert(wait_until(function() return status(A).leader_connected end, 10, 0.2),
      "a did not reconnect to the leader")
  end))

  it("a node killed with SIGKILL restarts from its state and reconnects", helpers.guard(function()
    local A = nodes.a
    local before = assert(status(A))
    A.proc:signal("KILL")
    assert(A.proc:wait(5), "a did not die on SIGKILL")
    -- it left its UAPI and control sockets behind; neither stops a restart
    local t_restart = os.time()
    start(A)
    local st = assert(status(A))
    assert.equal(before.self.overlay_ip, st.self.overlay_ip)
    assert.equal(before.self.public_key, st.self.public_key)
    wait_ping_name(ctrs.B, "front", 4)
    wait_ping_name(ctrs.A, "back", 6)
    st = wait_health(A, { "leader", "b" }, true, 20)
    for _, p in ipairs(st.peers) do
      assert.is_true(p.last_handshake >= t_restart, p.name .. ": no handshake since the restart")
    end
  end))

  it("the leader restarted keeps the cluster; a new token still joins a node", helpers.guard(function()
    local L, A, B = nodes.leader, nodes.a, nodes.b
    stop(L)
    -- the nodes keep talking without the leader
    assert.is_true(ping_name(ctrs.A, "back", 4, 2))
    assert.is_true(ping_name(ctrs.B, "front", 4, 2))
    start(L)
    local st = assert(status(L))
    assert.same({ "a", "b" }, peer_names(st))
    wait_health(L, { "a", "b" }, true, 20)
    for _, n in ipairs({ A, B }) do
      assert(wait_until(function() return status(n).leader_connected end, 15, 0.2),
        n.name .. " did not reconnect to the leader")
    end
    -- DNS of the leader still knows every container
    assert.same({ ctrs.A.ip }, helpers.dig(ctrs.L.ns, L.ip, fqdn("front"), "A").addrs)
    assert.same({ ctrs.B.ip }, helpers.dig(ctrs.L.ns, L.ip, fqdn("back"), "A").addrs)
    wait_ping_name(ctrs.L, "front", 4)

    -- a new token, issued by the restarted daemon, joins node c
    c_token = must_cli(L.ns, "token --state " .. quote(L.dir)):gsub("%s+$", "")
    assert.matches("^wgo1_[%w_-]+$", c_token)
    local C = new_node("c", "192.0.2.4")
    join(C, c_token)
    start(C)
    attach("C", C, "extra")
    wait_health(C, { "leader", "a", "b" }, true, 30)
    wait_health(A, { "c" }, true, 30)
    wait_ping_name(ctrs.C, "front", 4, 20)
    wait_ping_name(ctrs.A, "extra", 4, 20)
    wait_ping_name(ctrs.B, "extra", 6, 20)
    assert.same({ "a", "b", "c" }, peer_names(assert(status(L))))
  end))

  it("bad tokens are refused with a clear error and allocate nothing", helpers.guard(function()
    local L = nodes.leader
    local X = new_node("x", "192.0.2.5")
    local before = leader_state()
    assert.same({ "a", "b", "c", "leader" }, before.members)
    local n = 0
    local function try_join(tok, timeout)
      n = n + 1
      local dir = helpers.tmpdir() .. "/state-x" .. n
      local t0 = helpers.now()
      local code, out, err = cli(X.ns, ("join --state %s --token %s --endpoint %s --name intruder%d --timeout %d"):format(
        quote(dir), quote(tok), X.endpoint, n, timeout or 4))
      assert.is_not.equal(0, code, "join succeeded with a bad token:\n" .. out)
      assert.is_nil(helpers.read_file(dir .. "/node.json"), "the refused joiner wrote node.json")
      local after = leader_state()
      assert.same(before.members, after.members)
      assert.same(before.alloc_nodes, after.alloc_nodes)
      assert.same(before.allocator, after.allocator)
      assert.same({ "a", "b", "c" }, peer_names(assert(status(L))))
      return err, helpers.now() - t0
    end

    -- garbage
    assert.matches("join: token invalid", (try_join("not-a-token")))
    assert.matches("join: token invalid", (try_join("wgo1_" .. token.base64url_encode("{\"e\":1}"))))
    assert.matches("join: token invalid", (try_join("wgo1_!!!!")))

    -- a valid-looking token with a wrong secret (the JSON inside tampered)
    local fresh = must_cli(L.ns, "token --state " .. quote(L.dir)):gsub("%s+$", "")
    local t = assert(token.decode(fresh))
    local obj = cjson.decode((assert(token.base64url_decode(fresh:sub(6)))))
    assert.same({ e = t.e, k = t.k, i = t.i, s = t.s, x = t.x }, obj) -- x: other members (etcd)
    local wrong = token.base64_encode(string.rep("\42", 32))
    assert.is_not.equal(t.s, wrong)
    local tampered = token.encode({ e = t.e, k = t.k, i = t.i, s = wrong })
    assert.matches("join refused: bad token", (try_join(tampered, 3)))
    -- ... or an unknown token id
    local other_id = t.i:sub(1, -2) .. (t.i:sub(-1) == "a" and "b" or "a")
    assert.matches("join refused: bad token", (try_join(token.encode({ e = t.e, k = t.k, i = other_id, s = t.s }), 3)))
    assert(wait_until(function() return L.proc:log():match("join refused %(192%.0%.2%.5:51820%): bad token") end, 2),
      "the leader did not log the refusal")

    -- expired
    local short = must_cli(L.ns, "token --state " .. quote(L.dir) .. " --ttl 1"):gsub("%s+$", "")
    helpers.sleep(2.2)
    local err, took = try_join(short)
    assert.matches("join refused: token expired", err)
    assert.is_true(took < 3.5, "the expired answer took " .. took .. " s (not final?)")

    -- single-use, already used by node c
    err, took = try_join(c_token)
    assert.matches("join refused: token already used", err)
    assert.is_true(took < 3.5)

    -- the untampered fresh token still works after all that (not burnt)
    local code, out = cli(X.ns, ("join --state %s --token %s --endpoint %s --name probe --timeout 10"):format(
      quote(helpers.tmpdir() .. "/state-probe"), quote(fresh), X.endpoint))
    assert.equal(0, code, out)
    cl.ifnames[#cl.ifnames + 1] = assert(state.load(helpers.tmpdir() .. "/state-probe/node.json")).ifname
    must_cli(L.ns, "remove-node --state " .. quote(L.dir) .. " probe")
    assert.same(before.members, leader_state().members)
  end))

  it("remove-node cuts the node off everywhere", helpers.guard(function()
    local L, C = nodes.leader, nodes.c
    local cC = ctrs.C
    assert.is_true(ping_name(cC, "front", 4, 1))
    must_cli(L.ns, "remove-node --state " .. quote(L.dir) .. " c")
    for _, n in ipairs({ "leader", "a", "b" }) do
      assert(wait_until(function()
        local st = status(nodes[n])
        for _, p in ipairs(st.peers) do
          if p.name == "c" or p.public_key == C.public_key then return false end
        end
        return true
      end, 10, 0.2), n .. " still lists c")
    end
    assert.same({ "a", "b", "leader" }, leader_state().members)
    -- the removed node is told, and its daemon stops with a clear message
    assert(C.proc:wait(10), "c's daemon still runs after its removal")
    assert.is_not.equal(0, C.proc:exit_code())
    assert.matches("removed from the cluster", C.proc:log())
    -- the name and its container's name are gone from DNS
    for _, srv in ipairs({ L.ip, nodes.a.ip, nodes.b.ip }) do
      assert(wait_until(function()
        return helpers.dig(ctrs.A.ns, srv, fqdn("extra"), "A").status == "NXDOMAIN"
      end, 20, 0.2), "c's container name still answers at " .. srv)
      assert.equal("NXDOMAIN", helpers.dig(ctrs.A.ns, srv, fqdn("c"), "AAAA").status)
    end
    -- c's container reaches nobody, nobody reaches it
    local targets = { ctrs.A.ip, ctrs.B.ip, ctrs.L.ip, L.ip, nodes.a.ip, nodes.b.ip, ctrs.A.ip6 }
    assert(wait_until(function()
      for _, ip in ipairs(targets) do
        if cC.ns:exec("ping -n -q -c 1 -W 1 " .. ip) then return false end
      end
      return true
    end, 15, 0.2), "the removed node still reaches someone")
    for _, ip in ipairs(targets) do
      assert.is_false((cC.ns:exec("ping -n -q -c 2 -i 0.2 -W 1 " .. ip)), "c's container reaches " .. ip)
    end
    assert.is_false((ctrs.A.ns:exec("ping -n -q -c 2 -i 0.2 -W 1 " .. cC.ip)))
    assert.is_false((ctrs.B.ns:exec("ping -n -q -c 2 -i 0.2 -W 1 " .. C.ip)))
    -- the others still talk
    assert.is_true(ping_name(ctrs.A, "back", 4, 1))
    -- unknown names are an error
    local code, _, err = cli(L.ns, "remove-node --state " .. quote(L.dir) .. " nosuchnode")
    assert.is_not.equal(0, code)
    assert.matches("no node named", err)
  end))
end)
end
