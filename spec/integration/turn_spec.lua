-- TURN relaying end to end (#netns, root): a real coturn in its own
-- namespace and two of our engines that cannot reach each other.  Each
-- engine allocates on coturn with wgoverlay.nat.turn over its WireGuard
-- socket, binds a channel to the other's relayed address, and points the
-- peer at the relay (t:set_relay + t:set_peer_relay); WireGuard then
-- handshakes and carries ping and an iperf3 stream through coturn with no
-- per-packet Lua.  Also: STUN Binding on the WireGuard socket, refreshes
-- (fake clock in the driver), a wrong password, releasing the allocation.
--
-- Topology (all addresses are the test's own):
--
--   ns A 10.31.1.2 ── 10.31.1.1  ns S (coturn on 10.31.1.1 and 10.31.2.1,  10.31.2.1 ── 10.31.2.2 ns B
--                                       relays from 10.31.1.1; an nftables
--                                       forward chain drops everything)
--
-- A and B route everything via S, which drops what it would forward: the
-- only way between them is coturn.  nftables counters in S count what each engine
-- sends to coturn and every packet S refused to forward.

local helpers = require "spec.helpers"
local wgo = require "wgoverlay"
local cjson = require "cjson"

local SERVER = "10.31.1.1:3478"
local SERVER2 = "10.31.2.1:3478"
local USER, PASS = "alice", "s3cret-pass"

local NODES = {
  a = { under = "10.31.1.2", gw = "10.31.1.1", s_side = "10.31.1.1", port = 51001,
        over = "10.78.0.1", over_ip = "10.78.0.1" },
  b = { under = "10.31.2.2", gw = "10.31.2.1", s_side = "10.31.2.1", port = 51002,
        over = "10.78.0.2", over_ip = "10.78.0.2" },
}

-- Runs in each driver: a transport, a TURN client on its socket, and a
-- loop that feeds the client (events + tick) until a condition holds.
local DRIVER_PRELUDE = [[
  turn = require "wgoverlay.nat.turn"
  stun = require "wgoverlay.nat.stun"
  endpoint = require "wgoverlay.endpoint"
  S.skew = 0
  S.events = {}
  S.other = {}
  S.mapped = {}
  -- the TURN client's clock: real time plus a skew the spec can advance
  function clock() return socket.gettime() + S.skew end
  function up(ifname, opts, peers)
    t = assert(wgo.transport.new(opts, ifname))
    assert(t:create_interface())
    assert(t:configure(peers))
    t:fd() -- datagram events from now on
  end
  function new_client(opts)
    local o = { clock = clock, software = "wgoverlay-spec",
                send = function(bytes, to) return t:send_datagram(to, bytes) end,
                on_event = function(ev) S.events[#S.events + 1] = ev end }
    for k, v in pairs(opts) do o[k] = v end
    return assert(turn.new(o))
  end
  -- Feeds datagram events to the client and ticks it until cond() is true
  -- or `secs` pass.  Other datagrams are kept in S.other.
  function pump(secs, cond)
    local fd = t:fd()
    local deadline = socket.gettime() + secs
    while true do
      for ev in t:events() do
        if ev.type == "datagram" then
          local mine = S.c and S.c:input(ev.from, ev.data)
          local msg, req
          if not mine and S.m then msg, req = S.m:match(ev.from, ev.data) end
          if msg then
            local x = msg.attrs["XOR-MAPPED-ADDRESS"]
            S.mapped[req.server] = x and endpoint.format(x) or "none"
          elseif not mine then
            S.other[#S.other + 1] = ev
          end
        end
      end
      local next_at = S.c and S.c:tick()
      if cond and cond() then return true end
      local now = socket.gettime()
      if now >= deadline then return false end
      local wait = math.min(deadline - now, 0.05)
      if next_at then wait = math.max(0, math.min(wait, next_at - clock())) end
      socket.select({ { getfd = function() return fd end } }, nil, wait)
    end
  end
  function count(kind, since)
    local n = 0
    for i = (since or 0) + 1, #S.events do if S.events[i].type == kind then n = n + 1 end end
    return n
  end
  function errors()
    local out = {}
    for _, ev in ipairs(S.events) do if ev.type == "error" then out[#out + 1] = ev.message end end
    return out
  end
  function peer_of(pub)
    for _, p in ipairs(t:status().peers) do
      if p.public_key == pub then return p end
    end
  end
]]

describe("TURN relay #netns", function()
  local A, B, Srv, turnd

  local function counters()
    return helpers.nft_counters(Srv, "inet", "wgoturn")
  end

  -- coturn's log file (it also writes the same lines to its stdout log)
  local function turnlog()
    return (helpers.read_file(turnd.turnlog) or "") .. "\n" .. turnd:log()
  end

  lazy_setup(function()
    assert(helpers.is_root, "integration specs need root")
    A, B = {}, {}
    for k, v in pairs(NODES.a) do A[k] = v end
    for k, v in pairs(NODES.b) do B[k] = v end
    Srv = helpers.netns.new("turn")
    A.ns, B.ns = helpers.netns.new("ta"), helpers.netns.new("tb")
    for _, n in ipairs({ A, B }) do
      helpers.netns.veth(Srv, n.ns, { a = { n.s_side .. "/24" }, b = { n.under .. "/24" } })
      n.ns:must("ip route add default via " .. n.gw)
    end
    -- S would route between A and B, but nftables drops (and counts)
    -- everything it would forward
    Srv:must("sysctl -q -w net.ipv4.ip_forward=1")
    Srv:must([[nft -f - <<'EOF'
table inet wgoturn {
  chain input {
    type filter hook input priority 0; policy accept;
    ip saddr 10.31.1.2 udp dport 3478 counter comment "a-to-turn"
    ip saddr 10.31.2.2 udp dport 3478 counter comment "b-to-turn"
  }
  chain forward {
    type filter hook forward priority 0; policy drop;
    counter comment "forward-dropped"
  }
}
EOF]])
    turnd = helpers.turnserver(Srv, { listen = { "10.31.1.1", "10.31.2.1" }, relay_ip = "10.31.1.1",
      users = { USER .. ":" .. PASS }, realm = "test.internal", extra = "--min-port 49152 --max-port 49200" })

    A.priv, A.pub = wgo.generate_keys()
    B.priv, B.pub = wgo.generate_keys()
    A.ifname, B.ifname = helpers.ifname("wr"), helpers.ifname("wr")
    for _, pair in ipairs({ { A, B }, { B, A } }) do
      local n, other = pair[1], pair[2]
      n.drv = helpers.lua_driver(n.ns, { name = "turn-" .. n.over })
      n.drv:call(DRIVER_PRELUDE)
      -- the peer has no endpoint: the relay will be its only path
      n.drv:call("up(...)", n.ifname,
        { private_key = n.priv, listen_port = n.port, mtu = 1380, address = { n.over .. "/24" } },
        { { public_key = other.pub, allowed_ips = { other.over .. "/32" }, persistent_keepalive = 5 } })
    end
  end)

  lazy_teardown(function()
    helpers.cleanup()
  end)

  it("the engines cannot reach each other directly", helpers.guard(function()
    assert(helpers.wait_until(function() return A.ns:ping("10.31.2.1", 1, 1) end, 5),
      "A cannot reach the server's other address")
    assert.is_false(A.ns:ping(B.under, 1, 1))
    assert.truthy(counters()["forward-dropped"].packets >= 1, "S did not drop the direct ping")
  end))

  it("STUN Binding on the WireGuard socket reports its mapping; two servers agree", helpers.guard(function()
    local a, b, kind = A.drv:call([[
      S.m = stun.matcher({ clock = clock })
      for _, server in ipairs({ ... }) do
        assert(t:send_datagram(server, (assert(S.m:binding_request(server)))))
      end
      pump(5, function() return S.m:count() == 0 end)
      local a, b = S.mapped[select(1, ...)], S.mapped[select(2, ...)]
      return a, b, stun.classify_mapping(a, b)
    ]], SERVER, SERVER2)
    assert.equal(A.under .. ":" .. A.port, a)
    assert.equal(A.under .. ":" .. A.port, b)
    assert.equal("endpoint-independent", kind)
  end))

  it("a wrong password fails with a clear error", helpers.guard(function()
    -- on a plain UDP socket of the driver: the client needs only send/input
    local state, err, nreq = A.drv:call([[
      local u = assert(socket.udp())
      assert(u:setsockname(..., 0))
      u:settimeout(0.05)
      local sent = 0
      local c = assert(turn.new({ server = select(2, ...), username = select(3, ...), password = "wrong",
        clock = clock, send = function(bytes, to)
          local e = endpoint.parse(to)
          sent = sent + 1
          return u:sendto(bytes, e.ip, e.port)
        end }))
      c:allocate()
      local deadline = socket.gettime() + 10
      while c.state == "allocating" and socket.gettime() < deadline do
        local data, ip, port = u:receivefrom()
        if data then c:input(endpoint.format(ip, port), data) end
        c:tick()
      end
      u:close()
      return c.state, c.error, sent
    ]], A.under, SERVER, USER)
    assert.equal("failed", state)
    assert.equal("Allocate failed: 401 Unauthorized (wrong username or password?)", err)
    assert.equal(2, nreq) -- one challenge, one refusal: no retry loop
  end))

  it("allocates on coturn over the WireGuard socket (401 challenge, then credentials)", helpers.guard(function()
    for _, n in ipairs({ A, B }) do
      local state, relayed, mapped, lifetime, err = n.drv:call([[
        S.c = new_client({ server = select(1, ...), username = select(2, ...), password = select(3, ...),
                           lifetime = 600 })
        assert(S.c:allocate())
        pump(10, function() return S.c.state ~= "allocating" end)
        return S.c.state, S.c.relayed, S.c.mapped, S.c.lifetime, S.c.error
      ]], SERVER, USER, PASS)
      assert.equal("allocated", state, err)
      assert.matches("^10%.31%.1%.1:%d+$", relayed)
      assert.equal(n.under .. ":" .. n.port, mapped) -- the WireGuard socket's address
      assert.equal(600, lifetime)
      n.relayed = relayed
    end
    assert.not_equal(A.relayed, B.relayed)
  end))

  it("relays WireGuard through channels: handshake and ping", helpers.guard(function()
    assert(A.relayed and B.relayed, "no allocations")
    for _, pair in ipairs({ { A, B }, { B, A } }) do
      local n, other = pair[1], pair[2]
      local ch, state, perm = n.drv:call([[
        local peer = ...
        assert(S.c:create_permission(peer))
        local ch = assert(S.c:bind_channel(peer))
        pump(10, function()
          local _, st = S.c:channel(peer)
          return st == "bound" and S.c:status().permissions[endpoint.parse(peer).ip] == "installed"
        end)
        local _, st = S.c:channel(peer)
        return ch, st, S.c:status().permissions[endpoint.parse(peer).ip]
      ]], other.relayed)
      assert.equal("bound", state, cjson.encode(n.drv:call("return errors()")))
      assert.equal("installed", perm)
      assert.equal(0x4000, ch)
      n.ch = ch
      -- the engine unwraps ChannelData from the server and frames the
      -- peer's packets on our own allocation's channel
      assert.is_true(n.drv:call("return t:set_relay(...)", SERVER))
      assert.is_true(n.drv:call("return t:set_peer_relay(...)", other.pub, SERVER, ch))
    end
    assert(helpers.wait_ping(A, B.over, 15), "no ping through the relay")
    assert.matches("incoming packet CHANNEL_BIND processed, success", turnlog(), 1, true)
    assert.is_true(B.ns:ping(A.over, 2, 2))
    for _, pair in ipairs({ { A, B }, { B, A } }) do
      local p = pair[1].drv:call("return peer_of(...)", pair[2].pub)
      assert.equal(SERVER, p.endpoint)
      assert.equal(pair[1].ch, p.relay_channel)
      assert.truthy(p.last_handshake > 0)
    end
  end))

  it("carries an iperf3 stream through coturn (counted by nftables and coturn)", helpers.guard(function()
    assert(helpers.wait_ping(A, B.over, 10), "no ping through the relay")
    local before = counters()
    local res = helpers.iperf3(A, B, 3)
    local received = res["end"].sum_received.bytes
    assert.truthy(received > 1e5, "iperf3 moved only " .. tostring(received) .. " bytes")
    local after = counters()
    local a_sent = after["a-to-turn"].bytes - before["a-to-turn"].bytes
    -- every byte went to coturn (WireGuard and ChannelData add overhead)
    assert.truthy(a_sent > received, ("A sent %d bytes to coturn for %d received"):format(a_sent, received))
    assert.truthy(after["b-to-turn"].packets > before["b-to-turn"].packets)
    assert.equal(before["forward-dropped"].packets, after["forward-dropped"].packets,
      "something tried to go around the relay")
    io.stderr:write(("\n  turn: iperf3 3 s through coturn: %.1f MB (%.0f Mbit/s)\n"):format(
      received / 1e6, res["end"].sum_received.bits_per_second / 1e6))
  end))

  it("refreshes allocation, permission and channel before they expire (fake clock)", helpers.guard(function()
    assert(A.relayed, "no allocation")
    local ok, nref, nperm, nchan, errs = A.drv:call([[
      local since, nerr = #S.events, #errors()
      -- 541 s later: past the allocation's refresh time (600 - 60), the
      -- permission's (240) and the channel's (480)
      S.skew = S.skew + 541
      local ok = pump(10, function()
        return count("refreshed", since) >= 1 and count("permission", since) >= 1 and count("channel", since) >= 1
      end)
      local errs = errors()
      return ok, count("refreshed", since), count("permission", since), count("channel", since),
        { table.unpack(errs, nerr + 1) }
    ]])
    assert.is_true(ok, "refreshes not all answered: " .. cjson.encode(errs))
    assert.equal(1, nref)
    assert.equal(1, nperm)
    assert.equal(1, nchan)
    assert.same({}, errs)
    -- next refresh planned again for lifetime - 60 s after this one
    local due = A.drv:call("return S.c.refresh_at - clock()")
    assert.truthy(due > 530 and due <= 540, "next refresh in " .. due .. " s")
    assert.is_true(A.ns:ping(B.over, 1, 2), "no ping after the refresh")
    assert.matches("refreshed, realm=<test.internal>, username=<alice>, lifetime=600", turnlog(), 1, true)
  end))

  it("Lua can send a control datagram through the relay; the peer's engine hands it to Lua", helpers.guard(function()
    assert(A.ch and B.ch, "no channels")
    B.drv:call("pump(0.2) S.other = {}")
    assert.is_true(A.drv:call("return t:send_datagram(..., turn.channel_data(select(2, ...), 'hello via relay'))",
      SERVER, A.ch))
    local from, data = B.drv:call([[
      pump(5, function() return #S.other > 0 end)
      local ev = S.other[1]
      if ev then return ev.from, ev.data end
    ]])
    -- unwrapped by B's engine (ChannelData from a registered relay), so
    -- it shows as coming from the TURN server
    assert.equal("hello via relay", data)
    assert.equal(SERVER, from)
  end))

  it("close releases the allocation (Refresh with LIFETIME 0): the relay path ends", helpers.guard(function()
    assert(A.relayed, "no allocation")
    local state, closed = A.drv:call([[
      S.c:close()
      pump(10, function() return S.c.state == "closed" end)
      return S.c.state, count("closed")
    ]])
    assert.equal("closed", state)
    assert.equal(1, closed)
    assert.matches("lifetime=0", turnlog(), 1, true)
    -- coturn removes the allocation on its next timer run
    assert(helpers.wait_until(function() return not A.ns:ping(B.over, 1, 1) end, 10),
      "ping still works without A's allocation")
    assert(helpers.wait_until(function()
      return turnlog():find("delete: realm=<test.internal>, username=<alice>", 1, true)
    end, 5), "coturn did not delete the allocation")
  end))
end)
