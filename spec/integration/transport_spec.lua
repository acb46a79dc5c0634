-- The Lua transport API (require "wgoverlay") in network namespaces: two
-- transports joined by a veth (IPv4 and IPv6 underlay), every method, the
-- events, datagrams on the listen port, idempotent configure, crash
-- recovery and the documented errors.  Needs root.
--
-- A transport creates its TUN in the namespace of its *process*, so each
-- namespace runs a Lua driver (spec/integration/drivers/lua_driver.lua) and
-- the spec sends it Lua chunks (helpers.lua_driver).

local helpers = require "spec.helpers"
local wgo = require "wgoverlay"
local cjson = require "cjson"

-- Underlay and overlay addresses of the two nodes.
local NODES = {
  a = { under4 = "192.0.2.1", under6 = "fd00:2::1", over4 = "10.77.0.1", over6 = "fd77::1", port = 51001 },
  b = { under4 = "192.0.2.2", under6 = "fd00:2::2", over4 = "10.77.0.2", over6 = "fd77::2", port = 51002 },
}

local function set_of(list)
  local s = {}
  for _, v in ipairs(list or {}) do s[v] = true end
  return s
end

local function socket_exists(ifname)
  return (helpers.sh("test -S /var/run/wireguard/" .. ifname .. ".sock"))
end

local function link_exists(ns, ifname)
  return (ns:exec("ip link show dev " .. ifname))
end

-- Routes on `dev` in `ns` as a set of "dst" strings (both families).
local function routes(ns, dev)
  local out = {}
  for _, fam in ipairs({ "-4", "-6" }) do
    for _, r in ipairs(helpers.ip_json(ns, fam .. " route show dev " .. dev)) do
      out[r.dst] = true
    end
  end
  return out
end

-- Addresses on `dev` as a set of "addr/prefix" strings.
local function addresses(ns, dev)
  local out = {}
  for _, l in ipairs(helpers.ip_json(ns, "addr show dev " .. dev)) do
    for _, a in ipairs(l.addr_info or {}) do out[("%s/%d"):format(a["local"], a.prefixlen)] = true end
  end
  return out
end

-- What configure may change on `ifname` (transport `var` of driver `drv`):
-- MTU, link state, addresses, routes and the engine's peers.
local function iface_state(ns, drv, var, ifname)
  local link = helpers.ip_json(ns, "link show dev " .. ifname)[1]
  local peers = drv:call(([[
    local out = {}
    for _, p in ipairs(%s:status().peers) do
      table.sort(p.allowed_ips)
      out[#out + 1] = { p.public_key, p.endpoint or false, p.allowed_ips, p.persistent_keepalive }
    end
    table.sort(out, function(x, y) return x[1] < y[1] end)
    return out
  ]]):format(var))
  return { mtu = link.mtu, up = set_of(link.flags).UP or false, addresses = addresses(ns, ifname),
           routes = routes(ns, ifname), peers = peers }
end

-- Code run once in every driver: helpers for the chunks below.
local DRIVER_PRELUDE = [[
  function drain(tr)
    local list = {}
    for ev in tr:events() do
      if ev.data then ev.data_hex = hex(ev.data) ev.data = nil end
      list[#list + 1] = ev
    end
    return list
  end
  function readable(tr, timeout)
    local fd = tr:fd()
    local r = socket.select({ { getfd = function() return fd end } }, nil, timeout or 0)
    return #r > 0
  end
  function peer_of(tr, pub)
    for _, p in ipairs(tr:status().peers) do
      if p.public_key == pub then return p end
    end
  end
  function up(ifname, opts, peers)
    local tr = assert(wgo.transport.new(opts, ifname))
    assert(tr:create_interface())
    assert(tr:configure(peers))
    return tr
  end
]]

local function node_opts(n, extra)
  local o = { private_key = n.priv, listen_port = n.port, mtu = 1420,
              address = { n.over4 .. "/24", n.over6 .. "/64" } }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

local function peer_entry(n, endpoint, extra)
  local p = { public_key = n.pub, allowed_ips = { n.over4 .. "/32", n.over6 .. "/128" }, endpoint = endpoint }
  for k, v in pairs(extra or {}) do p[k] = v end
  return p
end

describe("transport #netns", function()
  local A, B

  lazy_setup(function()
    assert(helpers.is_root, "integration specs need root")
    A, B = {}, {}
    for k, v in pairs(NODES.a) do A[k] = v end
    for k, v in pairs(NODES.b) do B[k] = v end
    A.ns, B.ns = helpers.netns.new("a"), helpers.netns.new("b")
    A.veth, B.veth = helpers.netns.veth(A.ns, B.ns, {
      a = { A.under4 .. "/24", A.under6 .. "/64" }, b = { B.under4 .. "/24", B.under6 .. "/64" } })
    A.drv = helpers.lua_driver(A.ns, { name = "a" })
    B.drv = helpers.lua_driver(B.ns, { name = "b" })
    A.drv:call(DRIVER_PRELUDE)
    B.drv:call(DRIVER_PRELUDE)
  end)

  lazy_teardown(function()
    helpers.cleanup()
  end)

  ---------------------------------------------------------------------------
  describe("two transports over IPv4 underlay", function()
    local t0

    lazy_setup(function()
      A.priv, A.pub = wgo.generate_keys()
      B.priv, B.pub = wgo.generate_keys()
      A.ifname, B.ifname = helpers.ifname("wt"), helpers.ifname("wt")
      t0 = os.time()
      -- A knows B's endpoint; B learns A's from the handshake.  No
      -- keepalive yet: nothing is sent before the first test looks.
      A.drv:call("t = up(...)", A.ifname, node_opts(A), { peer_entry(B, B.under4 .. ":" .. B.port) })
      B.drv:call("t = up(...)", B.ifname, node_opts(B), { peer_entry(A) })
    end)

    it("creates the interface with its addresses, MTU, link up and overlay routes", helpers.guard(function()
      local link = helpers.ip_json(A.ns, "link show dev " .. A.ifname)[1]
      assert.equal(1420, link.mtu)
      assert.truthy(set_of(link.flags).UP, "link is not up")
      local addrs = addresses(A.ns, A.ifname)
      assert.truthy(addrs["10.77.0.1/24"])
      assert.truthy(addrs["fd77::1/64"])
      local r = routes(A.ns, A.ifname)
      assert.truthy(r["10.77.0.0/24"], "no IPv4 overlay route: " .. cjson.encode(r))
      assert.truthy(r["fd77::/64"], "no IPv6 overlay route: " .. cjson.encode(r))
      -- the stock wg tool reads it over the UAPI socket
      assert.equal(A.pub, helpers.wg(A.ns, "show " .. A.ifname .. " public-key"):gsub("%s+$", ""))
      assert.equal("51001", helpers.wg(A.ns, "show " .. A.ifname .. " listen-port"):gsub("%s+$", ""))
      assert.equal(A.ifname, A.drv:call("return t:interface_name()"))
    end))

    it("check_handshake is false before the first handshake and true after it", helpers.guard(function()
      assert.is_false(A.drv:call("return t:check_handshake(...)", B.pub))
      assert.is_false(A.drv:call("return t:check_handshake(..., 0)", B.pub))
      assert.equal(0, A.drv:call("return peer_of(t, ...).last_handshake", B.pub))
      assert.is_false(B.drv:call("return t:check_handshake(...)", A.pub))

      -- add_peer on a known peer updates it: turning on the keepalive
      -- sends one at once, which starts the handshake
      local ok, err = A.drv:call("return t:add_peer(...)", { public_key = B.pub, persistent_keepalive = 25 })
      assert.is_true(ok, err)
      assert(helpers.wait_until(function()
        return A.drv:call("return t:check_handshake(...)", B.pub, t0)
      end, 10), "no handshake after enabling the keepalive")
      assert(helpers.wait_ping(A, B.over4, 10), "no IPv4 ping across the overlay")

      assert.is_true(A.drv:call("return t:check_handshake(...)", B.pub))
      assert.is_true(A.drv:call("return t:check_handshake(...)", B.pub, t0))
      assert.is_true(B.drv:call("return t:check_handshake(...)", A.pub, t0))
      -- not for a time after the handshake, nor for a peer we do not have
      assert.is_false(A.drv:call("return t:check_handshake(...)", B.pub, os.time() + 3600))
      assert.is_false(A.drv:call("return t:check_handshake(...)", (select(2, wgo.generate_keys()))))
      -- a malformed key is an error, not a quiet false (a typo would never
      -- handshake); the message shows only the start of the key
      local res, msg, errno = A.drv:call("return t:check_handshake(...)", B.pub:sub(1, 40))
      assert.is_nil(res)
      assert.equal(('bad key "%s..." (40 characters): expected 32 bytes base64'):format(B.pub:sub(1, 4)), msg)
      assert.equal(22, errno)
      res, msg, errno = A.drv:call("return t:check_handshake('not a key', 0)")
      assert.is_nil(res)
      assert.equal('bad key "not ..." (9 characters): expected 32 bytes base64', msg)
      assert.equal(22, errno)
      assert.has_error(function() A.drv:call("return t:check_handshake(42)") end)
      assert.has_error(function() A.drv:call("return t:check_handshake(..., 'soon')", B.pub) end)
    end))

    it("carries IPv4 and IPv6 overlay pings both ways", helpers.guard(function()
      assert(helpers.wait_ping(A, B.over4, 10))
      assert.is_true(B.ns:ping(A.over4, 3))
      assert.is_true(A.ns:ping(B.over6, 3))
      assert.is_true(B.ns:ping(A.over6, 3))
    end))

    it("status has the documented fields, types and values", helpers.guard(function()
      assert(helpers.wait_ping(A, B.over4, 10))
      local types = A.drv:call([[
        local st = t:status()
        local p = st.peers[1]
        local function ty(v) return math.type(v) or type(v) end
        return { interface = ty(st.interface), public_key = ty(st.public_key), listen_port = ty(st.listen_port),
                 peers = ty(st.peers), npeers = #st.peers, p_public_key = ty(p.public_key), endpoint = ty(p.endpoint),
                 last_handshake = ty(p.last_handshake), rx_bytes = ty(p.rx_bytes), tx_bytes = ty(p.tx_bytes),
                 allowed_ips = ty(p.allowed_ips), persistent_keepalive = ty(p.persistent_keepalive) }
      ]])
      assert.same({ interface = "string", public_key = "string", listen_port = "integer", peers = "table",
                    npeers = 1, p_public_key = "string", endpoint = "string", last_handshake = "integer",
                    rx_bytes = "integer", tx_bytes = "integer", allowed_ips = "table",
                    persistent_keepalive = "integer" }, types)

      local st = A.drv:call("return t:status()")
      assert.equal(A.ifname, st.interface)
      assert.equal(A.pub, st.public_key)
      assert.equal(51001, st.listen_port)
      local p = st.peers[1]
      assert.equal(B.pub, p.public_key)
      assert.equal("192.0.2.2:51002", p.endpoint)
      assert.same(set_of({ "10.77.0.2/32", "fd77::2/128" }), set_of(p.allowed_ips))
      assert.equal(25, p.persistent_keepalive)
      assert.truthy(p.rx_bytes > 0 and p.tx_bytes > 0, "no transfer counted")
      -- an epoch time, close to now
      local now = os.time()
      assert.truthy(p.last_handshake >= t0 - 1 and p.last_handshake <= now + 1,
        ("last_handshake %s not within [%d, %d]"):format(p.last_handshake, t0 - 1, now + 1))
      -- the same as wg(8) reads over UAPI
      local dump = helpers.wg_dump(A.ns, A.ifname)
      assert.equal(p.last_handshake, dump.peers[B.pub].latest_handshake)
      -- B learnt A's endpoint from the handshake; its peer has no keepalive
      local pb = B.drv:call("return peer_of(t, ...)", A.pub)
      assert.equal("192.0.2.1:51001", pb.endpoint)
      assert.equal(0, pb.persistent_keepalive)
      -- the private key never comes back out
      assert.is_nil(cjson.encode(st):find(A.priv, 1, true))
      assert.is_nil(cjson.encode(st):find(A.priv:sub(1, 20), 1, true))
    end))

    it("queues a handshake event naming the peer (and an endpoint event where it was learnt)", helpers.guard(function()
      assert(helpers.wait_ping(A, B.over4, 10))
      local function find(list, typ, pub)
        for _, ev in ipairs(list) do
          if ev.type == typ and ev.public_key == pub then return ev end
        end
      end
      local ea = A.drv:call("return drain(t)")
      local hs = find(ea, "handshake", B.pub)
      assert.truthy(hs, "no handshake event on A: " .. cjson.encode(ea))
      assert.equal("192.0.2.2:51002", hs.endpoint)
      assert.truthy(hs.time >= t0 - 1 and hs.time <= os.time() + 1, "event time is not an epoch time")
      local eb = B.drv:call("return drain(t)")
      assert.truthy(find(eb, "handshake", A.pub), "no handshake event on B: " .. cjson.encode(eb))
      local ep = find(eb, "endpoint", A.pub)
      assert.truthy(ep, "no endpoint event on B: " .. cjson.encode(eb))
      assert.equal("192.0.2.1:51001", ep.endpoint)
      -- drained: nothing left, and the descriptor is quiet
      assert.same({}, A.drv:call("return drain(t)"))
      assert.is_false(A.drv:call("return readable(t, 0)"))
    end))

    it("turns a non-WireGuard datagram on the listen port into a datagram event", helpers.guard(function()
      local payload = "probe\0\1\2\255 from a plain socket"
      B.drv:call("drain(t)")
      assert.is_false(B.drv:call("return readable(t, 0)"))
      -- a plain UDP socket in the other namespace (not the transport)
      local src_port = A.drv:call([[
        local u = assert(socket.udp())
        assert(u:setsockname("192.0.2.1", 0))
        assert(u:sendto(..., "192.0.2.2", 51002))
        local _, port = u:getsockname()
        u:close()
        return port
      ]], payload)
      assert.is_true(B.drv:call("return readable(t, 3)"), "the event descriptor did not become readable")
      local evs = B.drv:call("return drain(t)")
      local dg
      for _, ev in ipairs(evs) do if ev.type == "datagram" then dg = ev end end
      assert.truthy(dg, "no datagram event: " .. cjson.encode(evs))
      assert.equal(("192.0.2.1:%d"):format(src_port), dg.from)
      assert.equal(B.drv:call("return hex(...)", payload), dg.data_hex)
      assert.is_number(dg.time)
      assert.is_false(B.drv:call("return readable(t, 0)"))

      -- and from an IPv6 source
      local src6 = A.drv:call([[
        local u = assert(socket.udp6())
        assert(u:setsockname("fd00:2::1", 0))
        assert(u:sendto("v6 probe", "fd00:2::2", 51002))
        local _, port = u:getsockname()
        u:close()
        return port
      ]])
      assert.is_true(B.drv:call("return readable(t, 3)"))
      evs = B.drv:call("return drain(t)")
      assert.equal(1, #evs, cjson.encode(evs))
      assert.equal("datagram", evs[1].type)
      assert.equal(("[fd00:2::1]:%d"):format(src6), evs[1].from)
      assert.equal(B.drv:call("return hex('v6 probe')"), evs[1].data_hex)
      -- the tunnel still works: the datagram did not disturb the session
      assert.is_true(A.ns:ping(B.over4, 1))
    end))

    it("send_datagram sends raw bytes from the WireGuard socket", helpers.guard(function()
      local payload = "raw\0bytes\255"
      B.drv:call([[
        S.u4 = assert(socket.udp()); assert(S.u4:setsockname("192.0.2.2", 40000)); S.u4:settimeout(5)
        S.u6 = assert(socket.udp6()); assert(S.u6:setsockname("fd00:2::2", 40001)); S.u6:settimeout(5)
      ]])
      assert.is_true(A.drv:call("return t:send_datagram('192.0.2.2:40000', ...)", payload))
      local data, ip, port = B.drv:call("local d, ip, port = S.u4:receivefrom() return hex(d or ''), ip, port")
      assert.equal(B.drv:call("return hex(...)", payload), data)
      assert.equal("192.0.2.1", ip)
      assert.equal(51001, port) -- the listen port: the WireGuard socket sent it

      assert.is_true(A.drv:call("return t:send_datagram('[fd00:2::2]:40001', 'over v6')"))
      data, ip, port = B.drv:call("local d, ip, port = S.u6:receivefrom() return d, ip, port")
      assert.equal("over v6", data)
      assert.equal("fd00:2::1", ip)
      assert.equal(51001, port)
      B.drv:call("S.u4:close() S.u6:close()")

      local ok, res, err = A.drv:pcall("return t:send_datagram('nowhere', 'x')")
      assert.is_true(ok)
      assert.is_nil(res)
      assert.equal('endpoint "nowhere" invalid: expected IP:PORT or [IPv6]:PORT', err)
      assert.is_false((A.drv:pcall("return t:send_datagram(42, 'x')")))
      assert.is_false((A.drv:pcall("return t:send_datagram('192.0.2.2:40000', 42)")))
    end))

    it("send_datagram with a TTL / hop limit sets it on that datagram only", helpers.guard(function()
      -- B counts what arrives by TTL (nft matches the IP header)
      B.ns:must([[nft -f - <<'EOF'
table inet ttlcount {
  chain in {
    type filter hook input priority 0; policy accept;
    udp dport 40002 ip ttl 3 counter comment "v4-ttl3"
    udp dport 40002 ip ttl 64 counter comment "v4-ttl64"
    udp dport 40002 ip6 hoplimit 5 counter comment "v6-hop5"
  }
}
EOF]])
      local ok, err = pcall(function()
        assert.is_true(A.drv:call("return t:send_datagram('192.0.2.2:40002', 'ttl 3', 3)"))
        assert.is_true(A.drv:call("return t:send_datagram('192.0.2.2:40002', 'default')"))
        assert.is_true(A.drv:call("return t:send_datagram('192.0.2.2:40002', 'ttl 3 again', 3)"))
        assert.is_true(A.drv:call("return t:send_datagram('[fd00:2::2]:40002', 'hop 5', 5)"))
        helpers.sleep(0.3)
        local c = helpers.nft_counters(B.ns, "inet", "ttlcount")
        assert.equal(2, c["v4-ttl3"].packets)
        assert.equal(1, c["v4-ttl64"].packets)
        assert.equal(1, c["v6-hop5"].packets)
        for _, bad in ipairs({ "0", "256", "1.5", "'x'" }) do
          assert.is_false((A.drv:pcall("return t:send_datagram('192.0.2.2:40002', 'x', " .. bad .. ")")), bad)
        end
      end)
      B.ns:exec("nft delete table inet ttlcount")
      assert(ok, err)
    end))

    it("configure is idempotent: a second call succeeds and changes nothing", helpers.guard(function()
      assert(helpers.wait_ping(A, B.over4, 10))
      local function snapshot()
        return {
          link = A.ns:must("ip -j link show dev " .. A.ifname),
          addr = A.ns:must("ip -j addr show dev " .. A.ifname),
          route4 = A.ns:must("ip -j -4 route show table all dev " .. A.ifname),
          route6 = A.ns:must("ip -j -6 route show table all dev " .. A.ifname),
          rules = A.ns:must("ip -j rule show; ip -j -6 rule show"),
        }
      end
      local function peers()
        return A.drv:call([[
          local st = t:status()
          local p = st.peers[1]
          table.sort(p.allowed_ips)
          return { n = #st.peers, endpoint = p.endpoint, last_handshake = p.last_handshake_precise,
                   allowed_ips = p.allowed_ips, keepalive = p.persistent_keepalive,
                   handshakes = st.stats.handshakes_completed, port = st.listen_port }
        ]])
      end
      local before, pbefore = snapshot(), peers()
      local peer = peer_entry(B, B.under4 .. ":" .. B.port, { persistent_keepalive = 25 })
      for _ = 1, 2 do
        local ok, err = A.drv:call("return t:configure({ ... })", peer)
        assert.is_true(ok, err)
      end
      assert.same(before, snapshot())
      -- the session survives: same handshake, no new one
      assert.same(pbefore, peers())
      assert.is_true(A.ns:ping(B.over4, 1))
    end))

    it("add_peer and remove_peer change status and routes", helpers.guard(function()
      local _, pub3 = wgo.generate_keys()
      local ok, err = A.drv:call("return t:add_peer(...)", { public_key = pub3, endpoint = "192.0.2.3:51003",
        allowed_ips = { "10.77.9.0/24", "fd77:9::/64" }, persistent_keepalive = 15 })
      assert.is_true(ok, err)
      local p3 = A.drv:call("return peer_of(t, ...)", pub3)
      assert.truthy(p3, "added peer missing from status")
      assert.equal("192.0.2.3:51003", p3.endpoint)
      assert.same(set_of({ "10.77.9.0/24", "fd77:9::/64" }), set_of(p3.allowed_ips))
      assert.equal(15, p3.persistent_keepalive)
      assert.equal(2, A.drv:call("return #t:status().peers"))
      local r = routes(A.ns, A.ifname)
      assert.truthy(r["10.77.9.0/24"], "no route for the new peer: " .. cjson.encode(r))
      assert.truthy(r["fd77:9::/64"], "no IPv6 route for the new peer: " .. cjson.encode(r))
      assert.truthy(helpers.wg(A.ns, "show " .. A.ifname .. " peers"):find(pub3, 1, true))

      ok, err = A.drv:call("return t:remove_peer(...)", pub3)
      assert.is_true(ok, err)
      assert.is_nil(A.drv:call("return peer_of(t, ...)", pub3))
      assert.equal(1, A.drv:call("return #t:status().peers"))
      r = routes(A.ns, A.ifname)
      assert.is_nil(r["10.77.9.0/24"], "route of the removed peer left behind")
      assert.is_nil(r["fd77:9::/64"], "IPv6 route of the removed peer left behind")
      assert.truthy(r["10.77.0.0/24"])
      assert.is_nil(helpers.wg(A.ns, "show " .. A.ifname .. " peers"):find(pub3, 1, true))

      -- removing it again, or a bad key, is an error without side effects
      local res
      res, err = A.drv:call("return t:remove_peer(...)", pub3)
      assert.is_nil(res)
      assert.equal("no peer " .. pub3, err)
      res, err = A.drv:call("return t:remove_peer('abc')")
      assert.is_nil(res)
      assert.equal('bad key "abc" (3 characters): expected 32 bytes base64', err)
      assert.is_false((A.drv:pcall("return t:remove_peer(42)")))
      assert.is_false((A.drv:pcall("return t:add_peer('peer')")))
      assert.is_false((A.drv:pcall("return t:add_peer({ public_key = 7 })")))
      assert.equal(1, A.drv:call("return #t:status().peers"))
      -- the remaining peer still works
      assert.is_true(A.ns:ping(B.over4, 1))
    end))

    it("add_peer with a bad key or CIDR fails and adds nothing", helpers.guard(function()
      local _, pub3 = wgo.generate_keys()
      local res, err = A.drv:call("return t:add_peer(...)", { public_key = pub3, allowed_ips = { "10.77.19.0/24", "10.77.19.0/40" } })
      assert.is_nil(res)
      assert.equal('CIDR "10.77.19.0/40" invalid: prefix longer than 32', err)
      res, err = A.drv:call("return t:add_peer(...)", { public_key = "bad+key=", allowed_ips = { "10.77.19.0/24" } })
      assert.is_nil(res)
      assert.equal('bad key "bad+..." (8 characters): expected 32 bytes base64', err)
      assert.equal(1, A.drv:call("return #t:status().peers"))
      assert.is_nil(routes(A.ns, A.ifname)["10.77.19.0/24"])
    end))

    it("update_peer_endpoint moves the peer, also onto the IPv6 underlay", helpers.guard(function()
      local ok, err = A.drv:call("return t:update_peer_endpoint(..., '192.0.2.9:51002')", B.pub)
      assert.is_true(ok, err)
      assert.equal("192.0.2.9:51002", A.drv:call("return peer_of(t, ...).endpoint", B.pub))
      assert.truthy(helpers.wg(A.ns, "show " .. A.ifname .. " endpoints"):find("192.0.2.9:51002", 1, true))

      ok, err = A.drv:call("return t:update_peer_endpoint(..., '[fd00:2::2]:51002')", B.pub)
      assert.is_true(ok, err)
      assert.equal("[fd00:2::2]:51002", A.drv:call("return peer_of(t, ...).endpoint", B.pub))
      -- traffic now goes over IPv6 and B follows A there (roaming)
      assert(helpers.wait_ping(A, B.over4, 10))
      assert(helpers.wait_until(function()
        return B.drv:call("return peer_of(t, ...).endpoint", A.pub) == "[fd00:2::1]:51001"
      end, 5), "B did not learn A's IPv6 endpoint")

      local res
      res, err = A.drv:call("return t:update_peer_endpoint(..., 'no-such-host:1')", B.pub)
      assert.is_nil(res)
      assert.equal('endpoint "no-such-host:1" invalid: expected IP:PORT or [IPv6]:PORT', err)
      local _, stranger = wgo.generate_keys()
      res, err = A.drv:call("return t:update_peer_endpoint(..., '192.0.2.2:1')", stranger)
      assert.is_nil(res)
      assert.equal("no peer " .. stranger, err)
      assert.is_false((A.drv:pcall("return t:update_peer_endpoint(..., 5)", B.pub)))
      assert.equal("[fd00:2::2]:51002", A.drv:call("return peer_of(t, ...).endpoint", B.pub))

      ok = A.drv:call("return t:update_peer_endpoint(..., '192.0.2.2:51002')", B.pub)
      assert.is_true(ok)
      assert(helpers.wait_ping(A, B.over4, 10))
    end))

    it("add_allowed_ip and remove_allowed_ip change status, routes and reachability", helpers.guard(function()
      -- addresses behind B that A can reach only through the new allowed IPs
      B.ns:must(("ip addr add 10.77.5.1/32 dev %s && ip -6 addr add fd77:5::1/128 dev %s nodad"):format(
        B.ifname, B.ifname))
      assert.is_false(A.ns:ping("10.77.5.1", 1))

      local ok, err = A.drv:call("return t:add_allowed_ip(..., '10.77.5.0/28')", B.pub)
      assert.is_true(ok, err)
      ok, err = A.drv:call("return t:add_allowed_ip(..., 'fd77:5::/64')", B.pub)
      assert.is_true(ok, err)
      local aips = set_of(A.drv:call("return peer_of(t, ...).allowed_ips", B.pub))
      assert.same(set_of({ "10.77.0.2/32", "fd77::2/128", "10.77.5.0/28", "fd77:5::/64" }), aips)
      local r = routes(A.ns, A.ifname)
      assert.truthy(r["10.77.5.0/28"], "no route for the allowed IP: " .. cjson.encode(r))
      assert.truthy(r["fd77:5::/64"], "no IPv6 route for the allowed IP: " .. cjson.encode(r))
      assert(helpers.wait_ping(A, "10.77.5.1", 10), "10.77.5.1 not reachable through the tunnel")
      assert.is_true(A.ns:ping("fd77:5::1", 2))

      ok, err = A.drv:call("return t:remove_allowed_ip(..., '10.77.5.0/28')", B.pub)
      assert.is_true(ok, err)
      ok, err = A.drv:call("return t:remove_allowed_ip(..., 'fd77:5::/64')", B.pub)
      assert.is_true(ok, err)
      aips = set_of(A.drv:call("return peer_of(t, ...).allowed_ips", B.pub))
      assert.same(set_of({ "10.77.0.2/32", "fd77::2/128" }), aips)
      r = routes(A.ns, A.ifname)
      assert.is_nil(r["10.77.5.0/28"])
      assert.is_nil(r["fd77:5::/64"])
      assert.is_false(A.ns:ping("10.77.5.1", 1))
      assert.is_true(A.ns:ping(B.over4, 1))

      local res
      res, err = A.drv:call("return t:add_allowed_ip(..., '10.77.5.0/33')", B.pub)
      assert.is_nil(res)
      assert.equal('CIDR "10.77.5.0/33" invalid: prefix longer than 32', err)
      res, err = A.drv:call("return t:remove_allowed_ip(..., 'nonsense')", B.pub)
      assert.is_nil(res)
      assert.equal('CIDR "nonsense" invalid', err)
      local _, stranger = wgo.generate_keys()
      res, err = A.drv:call("return t:add_allowed_ip(..., '10.77.6.0/24')", stranger)
      assert.is_nil(res)
      assert.equal("no peer " .. stranger, err)
      assert.is_nil(routes(A.ns, A.ifname)["10.77.6.0/24"])
      assert.is_false((A.drv:pcall("return t:add_allowed_ip(..., 42)", B.pub)))
    end))

    it("configure with a bad key or CIDR returns nil, message and applies nothing", helpers.guard(function()
      local function state()
        return {
          status = A.drv:call([[
            local st = t:status()
            local out = {}
            for _, p in ipairs(st.peers) do
              table.sort(p.allowed_ips)
              out[#out + 1] = { p.public_key, p.endpoint, p.allowed_ips, p.persistent_keepalive }
            end
            return out
          ]]),
          addr = A.ns:must("ip -j addr show dev " .. A.ifname),
          routes = A.ns:must("ip -j route show dev " .. A.ifname .. "; ip -j -6 route show dev " .. A.ifname),
        }
      end
      local before = state()
      local _, pub3 = wgo.generate_keys()
      local good = peer_entry(B, "192.0.2.2:51002")
      local res, err = A.drv:call("return t:configure(...)",
        { good, { public_key = pub3, allowed_ips = { "10.88.0.0/16" } }, { public_key = "abc" } })
      assert.is_nil(res)
      assert.equal('bad key "abc" (3 characters): expected 32 bytes base64', err)
      assert.same(before, state())
      res, err = A.drv:call("return t:configure(...)",
        { { public_key = pub3, allowed_ips = { "10.88.0.0/16", "10.88.0.0/99" } } })
      assert.is_nil(res)
      assert.equal('CIDR "10.88.0.0/99" invalid: prefix longer than 32', err)
      assert.same(before, state())
      res, err = A.drv:call("return t:configure(...)", { { public_key = pub3, endpoint = "10.0.0.1" } })
      assert.is_nil(res)
      assert.equal('endpoint "10.0.0.1" invalid: expected IP:PORT or [IPv6]:PORT', err)
      assert.same(before, state())
      assert.is_false((A.drv:pcall("return t:configure('peers')")))
      assert.is_false((A.drv:pcall("return t:configure({ 'peer' })")))
      assert.is_false((A.drv:pcall("return t:configure({ { public_key = 1 } })")))
      assert.same(before, state())
    end))

    it("configure with a new peer list replaces the old one, routes included", helpers.guard(function()
      local _, pub3 = wgo.generate_keys()
      local ok, err = A.drv:call("return t:configure(...)", {
        peer_entry(B, "192.0.2.2:51002", { persistent_keepalive = 25 }),
        { public_key = pub3, allowed_ips = { "10.88.0.0/16" } } })
      assert.is_true(ok, err)
      assert.equal(2, A.drv:call("return #t:status().peers"))
      assert.truthy(routes(A.ns, A.ifname)["10.88.0.0/16"])
      -- B's session is kept; pub3 and its route go
      local hs = A.drv:call("return peer_of(t, ...).last_handshake_precise", B.pub)
      ok, err = A.drv:call("return t:configure(...)", { peer_entry(B, "192.0.2.2:51002") })
      assert.is_true(ok, err)
      assert.equal(1, A.drv:call("return #t:status().peers"))
      assert.is_nil(routes(A.ns, A.ifname)["10.88.0.0/16"])
      local p = A.drv:call("return peer_of(t, ...)", B.pub)
      assert.equal(hs, p.last_handshake_precise)
      assert.equal(0, p.persistent_keepalive) -- left out: reset
      assert.is_true(A.ns:ping(B.over4, 1))
    end))
  end)

  ---------------------------------------------------------------------------
  describe("two transports over IPv6 underlay", function()
    it("handshake over IPv6 and carry IPv4 and IPv6 overlay traffic", helpers.guard(function()
      local a6 = { priv = nil, port = 51011, over4 = "10.79.0.1", over6 = "fd79::1" }
      local b6 = { priv = nil, port = 51012, over4 = "10.79.0.2", over6 = "fd79::2" }
      a6.priv, a6.pub = wgo.generate_keys()
      b6.priv, b6.pub = wgo.generate_keys()
      a6.ifname, b6.ifname = helpers.ifname("wt"), helpers.ifname("wt")
      local since = os.time()
      A.drv:call("t6 = up(...)", a6.ifname, node_opts(a6), { peer_entry(b6, "[fd00:2::2]:51012") })
      B.drv:call("t6 = up(...)", b6.ifname, node_opts(b6), { peer_entry(a6, "[fd00:2::1]:51011") })
      assert.is_false(A.drv:call("return t6:check_handshake(...)", b6.pub))
      assert(helpers.wait_ping({ ns = A.ns }, b6.over6, 10), "no IPv6 overlay ping over the IPv6 underlay")
      assert.is_true(A.ns:ping(b6.over4, 2))
      assert.is_true(B.ns:ping(a6.over6, 2))
      assert.is_true(A.drv:call("return t6:check_handshake(...)", b6.pub, since))
      assert.equal("[fd00:2::2]:51012", A.drv:call("return peer_of(t6, ...).endpoint", b6.pub))
      assert.equal("[fd00:2::1]:51011", B.drv:call("return peer_of(t6, ...).endpoint", a6.pub))
      A.drv:call("t6:shutdown() t6 = nil")
      B.drv:call("t6:shutdown() t6 = nil")
      assert.is_false(link_exists(A.ns, a6.ifname))
      assert.is_false(socket_exists(b6.ifname))
    end))
  end)

  ---------------------------------------------------------------------------
  describe("configure is all or nothing", function()
    local _, ppub = wgo.generate_keys()
    local good = { public_key = ppub, endpoint = "192.0.2.2:51070", allowed_ips = { "10.86.5.0/24", "fd86:5::/64" } }

    it("an address the kernel refuses: nothing stays (no peers, addresses, routes; link down)", helpers.guard(function()
      local name = helpers.ifname("wt")
      A.drv:call([[S.ra = assert(wgo.transport.new({ listen_port = 51071,
        address = { "10.86.0.1/24", "fd86::1/64", "ff02::1/64" } }, ...)) assert(S.ra:create_interface())]], name)
      local before = iface_state(A.ns, A.drv, "S.ra", name)
      assert.is_false(before.up)
      local res, msg, errno = A.drv:call("return S.ra:configure(...)", { good })
      assert.is_nil(res)
      assert.truthy(msg:find("adding address ff02::1/64: ", 1, true), msg)
      assert.equal(99, errno) -- EADDRNOTAVAIL
      assert.same(before, iface_state(A.ns, A.drv, "S.ra", name))
      A.drv:call("S.ra:shutdown()")
    end))

    it("a peer the engine refuses after addresses, link and routes: all undone", helpers.guard(function()
      local name = helpers.ifname("wt")
      A.drv:call([[S.rb = assert(wgo.transport.new({ listen_port = 51072,
        address = { "10.86.1.1/24", "fd86:1::1/64" } }, ...)) assert(S.rb:create_interface())]], name)
      local before = iface_state(A.ns, A.drv, "S.rb", name)
      local res, msg, errno = A.drv:call("return S.rb:configure(...)",
        { good, { public_key = (select(2, wgo.generate_keys())), endpoint = "10.0.0.1" } })
      assert.is_nil(res)
      assert.equal('endpoint "10.0.0.1" invalid: expected IP:PORT or [IPv6]:PORT', msg)
      assert.equal(22, errno)
      assert.same(before, iface_state(A.ns, A.drv, "S.rb", name))
      -- and the same call without the bad peer then works
      assert.is_true(A.drv:call("return S.rb:configure(...)", { good }))
      local st = iface_state(A.ns, A.drv, "S.rb", name)
      assert.is_true(st.up)
      assert.truthy(st.routes["10.86.5.0/24"])
      assert.equal(1, #st.peers)
      A.drv:call("S.rb:shutdown()")
    end))

    it("a route the kernel refuses on a configured interface: peers, routes, MTU back as they were", helpers.guard(function()
      local name = helpers.ifname("wt")
      local p1 = { public_key = ppub, endpoint = "192.0.2.2:51070", allowed_ips = { "10.86.2.2/32" } }
      A.drv:call([[S.rc = assert(wgo.transport.new({ listen_port = 51073, address = "10.86.2.1/24" }, ...))
        assert(S.rc:create_interface())]], name)
      assert.is_true(A.drv:call("return S.rc:configure(...)", { p1 }))
      -- IPv6 off on the interface: an IPv6 route on it is refused.  And an
      -- MTU set by hand, which configure changes and must put back.
      A.ns:must(("sysctl -qw net.ipv6.conf.%s.disable_ipv6=1 && ip link set dev %s mtu 1300"):format(name, name))
      local before = iface_state(A.ns, A.drv, "S.rc", name)
      assert.equal(1300, before.mtu)
      local _, pub2 = wgo.generate_keys()
      local res, msg, errno = A.drv:call("return S.rc:configure(...)", { p1,
        { public_key = pub2, endpoint = "192.0.2.3:51070", allowed_ips = { "10.86.9.0/24", "fd86:9::/64" } } })
      assert.is_nil(res)
      assert.truthy(msg:find("adding route fd86:9::/64", 1, true), msg)
      assert.equal(13, errno) -- EACCES: IPv6 is disabled on the device
      local after = iface_state(A.ns, A.drv, "S.rc", name)
      assert.is_nil(after.routes["10.86.9.0/24"], "the route added before the failure stayed")
      assert.same(before, after)
      A.drv:call("S.rc:shutdown()")
    end))

    it("every method returns nil, message, errno", helpers.guard(function()
      local name = helpers.ifname("wt")
      A.drv:call([[S.re = assert(wgo.transport.new({ listen_port = 51074, address = "10.86.3.1/24" }, ...))
        assert(S.re:create_interface()) assert(S.re:configure({}))]], name)
      local _, stranger = wgo.generate_keys()
      local calls = {
        { "wgo.transport.new({ mtu = 100 }, 'wgx0')", 22 },
        { "S.re:add_peer({ public_key = 'abc' })", 22 },
        { "S.re:add_peer({ public_key = ..., allowed_ips = { '10.0.0.0/99' } })", 22 },
        { "S.re:add_peer({ public_key = ..., endpoint = 'nowhere' })", 22 },
        { "S.re:remove_peer(...)", 2 },
        { "S.re:remove_peer('abc')", 22 },
        { "S.re:update_peer_endpoint(..., '192.0.2.9:1')", 2 },
        { "S.re:add_allowed_ip(..., '10.9.0.0/24')", 2 },
        { "S.re:remove_allowed_ip(..., '10.9.0.0/24')", 2 },
        { "S.re:configure({ { public_key = 'abc' } })", 22 },
        { "S.re:send_datagram('nowhere', 'x')", 22 },
        { "S.re:initiate_handshake('abc')", 22 },
        { "S.re:check_handshake('abc')", 22 },
        { "S.re:set_relay('nowhere')", 22 },
      }
      for _, c in ipairs(calls) do
        local res, msg, errno = A.drv:call("return " .. c[1], stranger)
        assert.is_nil(res, c[1])
        assert.is_string(msg, c[1])
        assert.equal(c[2], errno, c[1] .. ": " .. tostring(msg))
      end
      -- create_interface: a port in use
      local res, msg, errno = A.drv:call([[S.rf = wgo.transport.new({ listen_port = 51074 }, ...)
        return S.rf:create_interface()]], helpers.ifname("wt"))
      assert.is_nil(res)
      assert.equal("cannot listen on UDP port 51074: Address already in use", msg)
      assert.equal(98, errno) -- EADDRINUSE
      A.drv:call("S.re:shutdown()")
    end))

    it("wgo.transport.generate_keys makes a key pair", helpers.guard(function()
      local priv, pub = wgo.transport.generate_keys()
      assert.equal(44, #priv)
      assert.equal(pub, wgo.public_key(priv))
      assert.not_equal(priv, (wgo.transport.generate_keys()))
    end))
  end)

  ---------------------------------------------------------------------------
  describe("lifecycle", function()
    it("__close (local t <close>) removes the interface, its socket and its port", helpers.guard(function()
      local name = helpers.ifname("wt")
      local inside = A.drv:call([[
        local name = ...
        local seen = {}
        do
          local tc <close> = assert(wgo.transport.new({ listen_port = 51021, address = "10.80.0.1/24" }, name))
          assert(tc:create_interface())
          assert(tc:configure({}))
          seen.ifindex = core.ifindex(name)
          for _, s in ipairs(core.list_sockets()) do if s == name then seen.socket = true end end
          S.closed_t = tc
        end
        return seen
      ]], name)
      assert.truthy(inside.ifindex > 0, "interface did not exist inside the block")
      assert.is_true(inside.socket)
      assert.is_false(link_exists(A.ns, name))
      assert.is_false(socket_exists(name))
      local _, udp = A.ns:exec("ss -Hlun 'sport = :51021'")
      assert.equal("", udp)
      -- a closed transport refuses to be used
      local ok, err = A.drv:pcall("return S.closed_t:status()")
      assert.is_false(ok)
      assert.matches("attempt to use a closed transport", err)
      assert.is_false((A.drv:pcall("return S.closed_t:create_interface()")))
      assert.is_true(A.drv:call("return S.closed_t:shutdown()"))
    end))

    it("queues datagram events only once events() or fd() has been used", helpers.guard(function()
      local name = helpers.ifname("wt")
      B.drv:call("S.tq = up(..., { listen_port = 51024 }, {})", name)
      local function send(text)
        A.drv:call([[
          local u = assert(socket.udp())
          assert(u:sendto(..., "192.0.2.2", 51024))
          u:close()
        ]], text)
      end
      send("before anyone listens")
      helpers.sleep(0.3)
      assert.same({}, B.drv:call("return drain(S.tq)")) -- dropped: nobody was reading
      send("after events()")
      assert.is_true(B.drv:call("return readable(S.tq, 3)"))
      local evs = B.drv:call("return drain(S.tq)")
      assert.equal(1, #evs)
      assert.equal(B.drv:call("return hex('after events()')"), evs[1].data_hex)
      B.drv:call("S.tq:shutdown()")
    end))

    it("listen_port 0 picks a port once; configure keeps it", helpers.guard(function()
      local name = helpers.ifname("wt")
      local p1, p2, p3 = A.drv:call([[
        S.tz = assert(wgo.transport.new({ listen_port = 0, address = "10.84.0.1/24" }, ...))
        assert(S.tz:create_interface())
        local p1 = S.tz:status().listen_port
        assert(S.tz:configure({}))
        local p2 = S.tz:status().listen_port
        assert(S.tz:configure({}))
        return p1, p2, S.tz:status().listen_port
      ]], name)
      assert.truthy(p1 > 0)
      assert.equal(p1, p2)
      assert.equal(p1, p3)
      local _, udp = A.ns:exec(("ss -Hlun 'sport = :%d'"):format(p1))
      assert.truthy(udp:find(tostring(math.tointeger(p1)), 1, true), "the engine does not listen on its reported port")
      A.drv:call("S.tz:shutdown()")
    end))

    it("shutdown tears down and is idempotent; __gc does the same", helpers.guard(function()
      local name = helpers.ifname("wt")
      A.drv:call("S.ts = up(..., { listen_port = 51022 }, {})", name)
      assert.is_true(link_exists(A.ns, name))
      assert.is_true(A.drv:call("return S.ts:shutdown()"))
      assert.is_true(A.drv:call("return S.ts:shutdown()"))
      assert.is_false(link_exists(A.ns, name))
      assert.is_false(socket_exists(name))

      local name2 = helpers.ifname("wt")
      A.drv:call("S.tg = up(..., { listen_port = 51023 }, {})", name2)
      assert.is_true(link_exists(A.ns, name2))
      A.drv:call("S.tg = nil collectgarbage() collectgarbage()")
      assert.is_false(link_exists(A.ns, name2))
      assert.is_false(socket_exists(name2))
    end))

    it("create_interface recovers after the owning process was killed with SIGKILL", helpers.guard(function()
      local name = helpers.ifname("wt")
      local victim = helpers.lua_driver(A.ns, { name = "victim" })
      victim:call([[
        t = assert(wgo.transport.new({ listen_port = 51031, address = "10.81.0.1/24" }, ...))
        assert(t:create_interface())
        assert(t:configure({}))
      ]], name)
      assert.is_true(link_exists(A.ns, name))
      assert.equal(137, victim:kill9()) -- 128 + SIGKILL: no clean exit
      -- the crash leaves the UAPI socket behind (nobody could unlink it)
      assert.is_true(socket_exists(name), "expected a stale socket after kill -9")
      assert(helpers.wait_until(function() return not link_exists(A.ns, name) end, 5))

      local heir = helpers.lua_driver(A.ns, { name = "heir" })
      local ok, err = heir:call([[
        t = assert(wgo.transport.new({ listen_port = 51031, address = "10.81.0.1/24" }, ...))
        local ok, err = t:create_interface()
        if not ok then return ok, err end
        return t:configure({})
      ]], name)
      assert.is_true(ok, err)
      assert.equal(51031, heir:call("return t:status().listen_port"))
      assert.equal("51031", helpers.wg(A.ns, "show " .. name .. " listen-port"):gsub("%s+$", ""))
      assert.truthy(addresses(A.ns, name)["10.81.0.1/24"])
      heir:close()
      assert.is_false(link_exists(A.ns, name))
      assert.is_false(socket_exists(name))
    end))

    it("create_interface removes a leftover persistent TUN of the same name", helpers.guard(function()
      local name = helpers.ifname("wt")
      A.ns:must("ip tuntap add dev " .. name .. " mode tun")
      local old = helpers.ip_json(A.ns, "link show dev " .. name)[1].ifindex
      local ok, err = A.drv:call([[
        S.tp = assert(wgo.transport.new({ listen_port = 51032, address = "10.82.0.1/24" }, ...))
        local ok, err = S.tp:create_interface()
        if not ok then return ok, err end
        return S.tp:configure({})
      ]], name)
      assert.is_true(ok, err)
      assert.not_equal(old, helpers.ip_json(A.ns, "link show dev " .. name)[1].ifindex)
      A.drv:call("S.tp:shutdown()")
      assert.is_false(link_exists(A.ns, name), "the interface outlived its transport")
    end))

    it("refuses the name of a live engine and leaves that engine alone", helpers.guard(function()
      local name = helpers.ifname("wt")
      A.drv:call("S.live = up(..., { listen_port = 51033 }, {})", name)
      local other = helpers.lua_driver(A.ns, { name = "other" })
      local res, err = other:call("local t2 = wgo.transport.new({ listen_port = 51034 }, ...) return t2:create_interface()", name)
      assert.is_nil(res)
      assert.equal(('interface "%s" is already run by another process (/var/run/wireguard/%s.sock answers)'):format(
        name, name), err)
      other:close()
      assert.is_true(link_exists(A.ns, name))
      assert.is_true(socket_exists(name))
      assert.equal(51033, A.drv:call("return S.live:status().listen_port"))
      A.drv:call("S.live:shutdown()")
    end))

    it("a listen port in use fails create_interface and leaves nothing behind", helpers.guard(function()
      local n1, n2 = helpers.ifname("wt"), helpers.ifname("wt")
      A.drv:call("S.p1 = up(..., { listen_port = 51041 }, {})", n1)
      local res, err = A.drv:call("S.p2 = wgo.transport.new({ listen_port = 51041 }, ...) return S.p2:create_interface()", n2)
      assert.is_nil(res)
      assert.equal("cannot listen on UDP port 51041: Address already in use", err)
      assert.is_false(link_exists(A.ns, n2))
      assert.is_false(socket_exists(n2))
      assert.is_true(link_exists(A.ns, n1))
      -- the same object can try again once the port is free
      A.drv:call("S.p1:shutdown()")
      assert.is_true(A.drv:call("return S.p2:create_interface()"))
      assert.is_true(link_exists(A.ns, n2))
      A.drv:call("S.p2:shutdown()")
    end))
  end)

  ---------------------------------------------------------------------------
  describe("errors", function()
    it("bad private key", helpers.guard(function()
      local res, err = A.drv:call("return wgo.transport.new({ private_key = 'c2hvcnQ=' }, 'wgx0')")
      assert.is_nil(res)
      assert.equal("bad private key: expected 32 bytes base64 (44 characters)", err)
    end))

    it("bad CIDR in the address list", helpers.guard(function()
      local res, err = A.drv:call("return wgo.transport.new({ address = { '10.77.0.1/24', '10.77.0.300/24' } }, 'wgx0')")
      assert.is_nil(res)
      assert.equal('CIDR "10.77.0.300/24" invalid', err)
      res, err = A.drv:call("return wgo.transport.new({ address = 'fd77::1/200' }, 'wgx0')")
      assert.is_nil(res)
      assert.equal('CIDR "fd77::1/200" invalid: prefix longer than 128', err)
    end))

    it("interface name longer than 15 bytes, and nothing is created", helpers.guard(function()
      local long = "wgoverlay-too-long"
      local res, err = A.drv:call("return wgo.transport.new({}, ...)", long)
      assert.is_nil(res)
      assert.equal(('interface name "%s" longer than 15 bytes'):format(long), err)
      assert.is_false(link_exists(A.ns, long:sub(1, 15)))
      res, err = A.drv:call("return wgo.transport.new({}, 'a/b')")
      assert.is_nil(res)
      assert.matches("invalid", err)
    end))

    it("out-of-range port and MTU", helpers.guard(function()
      local res, err = A.drv:call("return wgo.transport.new({ listen_port = 70000 }, 'wgx0')")
      assert.is_nil(res)
      assert.equal("listen_port 70000 invalid: must be 0..65535", err)
      res, err = A.drv:call("return wgo.transport.new({ mtu = 100 }, 'wgx0')")
      assert.is_nil(res)
      assert.equal("mtu 100 invalid: must be 576..65535", err)
    end))

    it("wrong argument types raise", helpers.guard(function()
      local calls = {
        "wgo.transport.new('opts', 'wgx0')",
        "wgo.transport.new({}, 42)",
        "wgo.transport.new({}, nil)",
        "wgo.transport.new({ private_key = 42 }, 'wgx0')",
        "wgo.transport.new({ listen_port = '51820' }, 'wgx0')",
        "wgo.transport.new({ listen_port = 1.5 }, 'wgx0')",
        "wgo.transport.new({ mtu = '1420' }, 'wgx0')",
        "wgo.transport.new({ address = 42 }, 'wgx0')",
        "wgo.transport.new({ address = { 42 } }, 'wgx0')",
        "wgo.public_key(42)",
        -- methods before create_interface raise too
        "wgo.transport.new({}, 'wgx0'):status()",
        "wgo.transport.new({}, 'wgx0'):configure({})",
      }
      for _, call in ipairs(calls) do
        local ok = A.drv:pcall("return " .. call)
        assert.is_false(ok, call .. " did not raise")
      end
    end))

    it("without CAP_NET_ADMIN: permission denied, and nothing is left behind", helpers.guard(function()
      local name = helpers.ifname("wt")
      local ok, out, err = helpers.lua_run(A.ns, ([[
        local wgo = require "wgoverlay"
        local t = assert(wgo.transport.new({ listen_port = 51051, address = "10.83.0.1/24" }, %q))
        local res, msg = t:create_interface()
        io.write(tostring(res), "\n", tostring(msg), "\n")
      ]]):format(name), { user = "nobody", group = "nogroup" })
      assert.is_true(ok, err)
      local res, msg = out:match("^(.-)\n(.-)\n$")
      assert.equal("nil", res)
      assert.truthy(msg:find("permission denied: needs CAP_NET_ADMIN", 1, true), msg)
      assert.truthy(msg:find(name, 1, true), "the message does not name the interface: " .. msg)
      assert.is_false(link_exists(A.ns, name))
      assert.is_false(socket_exists(name))
      local _, udp = A.ns:exec("ss -Hlun 'sport = :51051'")
      assert.equal("", udp)
      -- the check above really ran unprivileged
      local _, who = helpers.lua_run(A.ns, "io.write(io.popen('id -un'):read('a'))", { user = "nobody", group = "nogroup" })
      assert.equal("nobody\n", who)
    end))
  end)
end)
