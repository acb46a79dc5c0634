-- The NAT agent (wgoverlay.nat.agent) over fake transports: STUN served
-- and gathered on the WireGuard port, candidate publication, a coordinated
-- punch between two agents through simulated NATs, the resulting engine
-- calls, and forged datagrams.  Injected clock, no sockets, no root.

local core = require "wgoverlay.core"
local stun = require "wgoverlay.nat.stun"
local punch = require "wgoverlay.nat.punch"
local agent = require "wgoverlay.nat.agent"

-- A transport double: records what the agent asks of the engine.
local function fake_transport()
  local t = { sent = {}, peers = {}, relays = {}, handshakes = {} }
  function t:send_datagram(to, bytes)
    self.sent[#self.sent + 1] = { to = to, bytes = bytes }
    return true
  end
  function t:status()
    local list = {}
    for pk, p in pairs(self.peers) do
      list[#list + 1] = { public_key = pk, endpoint = p.endpoint, relay_channel = p.relay_channel,
                          last_handshake = p.lhp and math.floor(p.lhp) or 0, last_handshake_precise = p.lhp or 0 }
    end
    return { peers = list }
  end
  function t:set_peer_relay(pk, server, ch)
    local p = self.peers[pk]
    p.endpoint, p.relay_channel = server, ch ~= 0 and ch or nil
    return true
  end
  function t:initiate_handshake(pk)
    self.handshakes[#self.handshakes + 1] = pk
    return true
  end
  function t:set_relay(server)
    self.relays[server] = true
    return true
  end
  function t:take()
    local s = self.sent
    self.sent = {}
    return s
  end
  return t
end

local function node(name, endpoint, clock, o)
  local _, pub = core.generate_keys()
  local n = { name = name, public_key = pub, endpoint = endpoint, t = fake_transport(), published = {},
              punch_requests = {}, logs = {} }
  local opts = { t = n.t, public_key = pub, endpoint = endpoint, clock = function() return clock.t end,
                 publish = function(c) n.published[#n.published + 1] = c end,
                 request_punch = function(peer) n.punch_requests[#n.punch_requests + 1] = peer end,
                 log = function(fmt, ...) n.logs[#n.logs + 1] = string.format(fmt, ...) end }
  for k, v in pairs(o or {}) do opts[k] = v end
  n.a = assert(agent.new(opts))
  return n
end

local function record(n)
  return { name = n.name, public_key = n.public_key, endpoint = n.endpoint,
           candidates = n.published[#n.published] }
end

describe("nat.agent", function()
  it("publishes the router's port mapping as a mapped candidate, shows it, deletes it at stop", function()
    local portmap = require "wgoverlay.nat.portmap"
    local clock = { t = 1700000000 }
    local jobs, ran = {}, {}
    local pm = portmap.new({ port = 51820, clock = function() return clock.t end,
                             exec = function(job, cb) jobs[#jobs + 1] = cb end,
                             run = function(job) ran[#ran + 1] = job return { protocol = job.protocol } end })
    local A = node("a", "10.1.0.2:51820", clock, { portmap = pm })
    A.a:tick()
    assert.equal(1, #jobs)
    -- the first publication waits (up to FIRST_PUBLISH) for the router
    assert.same({}, A.published)
    jobs[1]({ protocol = "natpmp", external_ip = "198.51.100.21", external_port = 51820, lease = 120,
              gateway = "10.1.0.1" })
    clock.t = clock.t + 0.25
    A.a:tick()
    local c = A.published[#A.published]
    assert.same({ { type = "host", endpoint = "10.1.0.2:51820" }, { type = "mapped", endpoint = "198.51.100.21:51820" } },
      c.list)
    local st = A.a:self_status()
    assert.equal("natpmp", st.portmap.protocol)
    assert.equal("198.51.100.21:51820", st.portmap.external)
    A.a:stop()
    assert.same({ { op = "unmap", port = 51820, external = 51820, protocol = "natpmp" } }, ran)
  end)

  it("answers STUN Binding requests on the WireGuard port with the source address", function()
    local clock = { t = 1700000000 }
    local A = node("a", "10.1.0.2:51820", clock)
    local req = stun.binding_request()
    assert.is_true(A.a:on_datagram({ type = "datagram", from = "198.51.100.9:4242", data = req }))
    local sent = A.t:take()
    assert.equal(1, #sent)
    assert.equal("198.51.100.9:4242", sent[1].to)
    local m = assert(stun.decode(sent[1].bytes))
    assert.equal("success", m.class)
    assert.same({ family = 4, ip = "198.51.100.9", port = 4242 }, m.attrs["XOR-MAPPED-ADDRESS"])
    -- not through a relay, and not for other datagrams
    assert.is_false(A.a:on_datagram({ type = "datagram", from = "198.51.100.9:4242", data = req, relay_channel = 0x4000 }))
    assert.is_false(A.a:on_datagram({ type = "datagram", from = "198.51.100.9:4242", data = "hello" }))
    assert.same({}, A.t:take())
  end)

  it("gathers server-reflexive candidates, classifies the NAT and publishes once", function()
    local clock = { t = 1700000000 }
    local A = node("a", "10.1.0.2:51820", clock, { stun = { "203.0.113.10:3478", "203.0.113.1:51820", "10.1.0.2:51820" } })
    A.a:tick({})
    local sent = A.t:take()
    assert.equal(2, #sent) -- not to itself
    assert.same({}, A.published) -- waits for the answers
    -- a forged answer (unknown transaction) is ignored
    local fake = stun.encode({ method = stun.BINDING, class = "success",
                               attributes = { { name = "XOR-MAPPED-ADDRESS", value = "203.0.113.66:6666" } } })
    A.a:on_datagram({ type = "datagram", from = "203.0.113.10:3478", data = fake })
    for _, d in ipairs(sent) do
      -- the answer from the wrong server is ignored too
      A.a:on_datagram({ type = "datagram", from = "203.0.113.66:3478",
                        data = stun.binding_response(d.bytes, "203.0.113.66:1") })
      A.a:on_datagram({ type = "datagram", from = d.to, data = stun.binding_response(d.bytes, "203.0.113.21:51820") })
    end
    assert.equal(3, A.a.stats.stun_ignored)
    clock.t = clock.t + 0.25
    A.a:tick({})
    assert.equal(1, #A.published)
    local c = A.published[1]
    assert.equal("endpoint-independent", c.nat)
    assert.same({ { type = "host", endpoint = "10.1.0.2:51820" }, { type = "srflx", endpoint = "203.0.113.21:51820" } },
      c.list)
    assert.equal(44, #c.key)
    -- the same set is not published again
    clock.t = clock.t + 40
    A.a:tick({})
    for _, d in ipairs(A.t:take()) do
      A.a:on_datagram({ type = "datagram", from = d.to, data = stun.binding_response(d.bytes, "203.0.113.21:51820") })
    end
    clock.t = clock.t + 0.25
    A.a:tick({})
    assert.equal(1, #A.published)
  end)

  it("reports an endpoint-dependent mapping", function()
    local clock = { t = 1700000000 }
    local C = node("c", "10.3.0.2:51820", clock, { stun = { "203.0.113.10:3478", "203.0.113.1:51820" } })
    C.a:tick({})
    local port = 40000
    for _, d in ipairs(C.t:take()) do
      port = port + 1
      C.a:on_datagram({ type = "datagram", from = d.to, data = stun.binding_response(d.bytes, "203.0.113.23:" .. port) })
    end
    clock.t = clock.t + 0.25
    C.a:tick({})
    assert.equal("endpoint-dependent", C.published[1].nat)
  end)

  it("punches through two NATs when the leader says go, then steers the engine", function()
    local clock = { t = 1700000000 }
    local A = node("a", "10.1.0.2:51820", clock)
    local B = node("b", "10.2.0.2:51820", clock)
    -- what each node's NAT maps it to, and the published candidates
    local mapped = { a = "198.51.100.1:51820", b = "198.51.100.2:51820" }
    for _, n in ipairs({ A, B }) do
      clock.t = clock.t + 2
      n.a:tick({})
      local c = n.published[#n.published]
      c.list[#c.list + 1] = { type = "srflx", endpoint = mapped[n.name] }
    end
    A.t.peers[B.public_key] = { endpoint = B.endpoint }
    B.t.peers[A.public_key] = { endpoint = A.endpoint }
    A.a:set_peers({ record(B) })
    B.a:set_peers({ record(A) })
    -- the direct attempt: both point at the advertised endpoint and wait
    A.a:tick({})
    B.a:tick({})
    assert.same({}, A.t.handshakes) -- the engine handshakes by itself with a peer it just got
    for _ = 1, 21 do
      clock.t = clock.t + 0.25
      A.a:tick({})
      B.a:tick({})
    end
    assert.same({ "b" }, A.punch_requests)
    assert.same({ "a" }, B.punch_requests)
    -- the leader's go reaches both; B hears it before it knows A's punch
    -- key, and acts on it once the key arrives
    assert.is_true(A.a:on_punch("b"))
    local ra = record(A)
    local key = ra.candidates.key
    ra.candidates = { nat = ra.candidates.nat, list = ra.candidates.list }
    B.a:set_peers({ ra })
    assert.is_false(B.a:on_punch("a"))
    assert.same({}, B.t:take())
    B.a:set_peers({ record(A) })
    assert.equal(key, record(A).candidates.key)
    assert.is_false(A.a:on_punch("nobody"))
    -- the network: only datagrams to the mapped addresses arrive, from
    -- the sender's mapped address
    local function flow(from, to)
      local n = 0
      for _, d in ipairs(from.t:take()) do
        if d.to == mapped[to.name] then
          to.a:on_datagram({ type = "datagram", from = mapped[from.name], data = d.bytes })
          n = n + 1
        end
      end
      return n
    end
    for _ = 1, 4 do
      flow(A, B)
      flow(B, A)
    end
    clock.t = clock.t + 0.25
    A.a:tick({})
    B.a:tick({})
    -- both moved the peer to the address that answered and started a handshake
    assert.equal(mapped.b, A.t.peers[B.public_key].endpoint)
    assert.equal(mapped.a, B.t.peers[A.public_key].endpoint)
    assert.equal("confirm", A.a:peer_status(B.public_key).phase)
    assert.equal(B.public_key, A.t.handshakes[#A.t.handshakes])
    -- WireGuard answers: hole-punched
    clock.t = clock.t + 0.1
    A.t.peers[B.public_key].lhp = clock.t
    B.t.peers[A.public_key].lhp = clock.t
    clock.t = clock.t + 0.25
    A.a:tick({})
    B.a:tick({})
    local st = A.a:peer_status(B.public_key)
    assert.equal("hole-punched", st.connection)
    assert.equal(clock.t, st.connection_changed_at)
    assert.equal("hole-punched", B.a:peer_status(A.public_key).connection)
    assert.is_nil(A.a:peer_status("nope"))

    -- forged probes and acks from a third party change nothing
    local before = A.t.peers[B.public_key].endpoint
    local idb, ida = core.key_from_base64(B.public_key), core.key_from_base64(A.public_key)
    for i = 1, 10 do
      for _, kind in ipairs({ punch.PROBE, punch.ACK }) do
        local bytes = punch.encode({ kind = kind, sender = idb, receiver = ida, nonce = core.random(12),
                                     time = clock.t, echo = core.random(12) }, core.random(32))
        A.a:on_datagram({ type = "datagram", from = "203.0.113.66:" .. (1000 + i), data = bytes })
      end
    end
    clock.t = clock.t + 0.25
    A.a:tick({})
    assert.equal(before, A.t.peers[B.public_key].endpoint)
    assert.equal("hole-punched", A.a:peer_status(B.public_key).connection)
    local s = A.a:self_status()
    assert.equal(20, s.stats.punch_rejected)
    assert.same({}, A.t:take()) -- not even an answer to the forger
  end)

  it("advertises global IPv6 addresses, follows their changes, and probes a peer's IPv6 first", function()
    local clock = { t = 1700000000 }
    local addrs = {
      a = { { ip = "2001:db8:1::2", family = 6, scope = "global", ifname = "eth0", flags = {} },
            { ip = "fe80::1", family = 6, scope = "link", ifname = "eth0", flags = {} } },
      b = { { ip = "2001:db8:2::2", family = 6, scope = "global", ifname = "eth0", flags = {} } },
    }
    local function o(name)
      return { addresses = function()
        if addrs[name] == false then return nil, "listing addresses: permission denied" end
        return addrs[name]
      end, listen_port = 51820, settings = { stun_interval = 10 } }
    end
    local A = node("a", "10.1.0.2:51820", clock, o("a"))
    local B = node("b", "10.2.0.2:51820", clock, o("b"))
    for _, n in ipairs({ A, B }) do
      clock.t = clock.t + 2
      n.a:tick({})
    end
    local function endpoints(n)
      local out = {}
      for _, c in ipairs(n.published[#n.published].list) do out[#out + 1] = c.type .. " " .. c.endpoint end
      table.sort(out)
      return out
    end
    assert.same({ "host 10.1.0.2:51820", "host [2001:db8:1::2]:51820" }, endpoints(A))
    A.t.peers[B.public_key] = { endpoint = B.endpoint }
    A.a:set_peers({ record(B) })
    B.a:set_peers({ record(A) })
    A.t:take()
    -- the punch: B's IPv6 host candidate alone, then every candidate
    assert.is_true(A.a:on_punch("b"))
    local to = {}
    for _, d in ipairs(A.t:take()) do to[d.to] = true end
    assert.same({ ["[2001:db8:2::2]:51820"] = true }, to)
    clock.t = clock.t + agent.V6_HEAD_START + 0.01
    A.a:tick({})
    to = {}
    for _, d in ipairs(A.t:take()) do to[d.to] = true end
    assert.is_true(to["10.2.0.2:51820"])
    assert.is_true(to["[2001:db8:2::2]:51820"])
    -- an address comes, another goes: read again within stun_interval
    addrs.a = { { ip = "2001:db8:1::9", family = 6, scope = "global", ifname = "eth0", flags = {} },
                { ip = "2001:db8:1::2", family = 6, scope = "global", ifname = "eth0", flags = { deprecated = true } } }
    clock.t = clock.t + 10
    A.a:tick({})
    assert.same({ "host 10.1.0.2:51820", "host [2001:db8:1::9]:51820" }, endpoints(A))
    -- a node without IPv6 does not wait for IPv6 answers
    addrs.a = {}
    clock.t = clock.t + 10
    A.a:tick({})
    assert.same({ "host 10.1.0.2:51820" }, endpoints(A))
    A.a:tick({})
    clock.t = clock.t + 10
    A.a:tick({})
    A.t:take()
    assert.is_true(A.a:on_punch("b"))
    to = {}
    for _, d in ipairs(A.t:take()) do to[d.to] = true end
    assert.is_true(to["10.2.0.2:51820"])
    -- a failing address listing is logged once, the last candidates kept
    addrs.a = false
    local function count_logs()
      local n = 0
      for _, l in ipairs(A.logs) do if l:find("cannot list the interface addresses", 1, true) then n = n + 1 end end
      return n
    end
    clock.t = clock.t + 10
    A.a:tick({})
    clock.t = clock.t + 10
    A.a:tick({})
    assert.equal(1, count_logs())
    assert.same({ "host 10.1.0.2:51820" }, endpoints(A))
  end)

  it("refuses bad settings", function()
    local _, pub = core.generate_keys()
    local a, err = agent.new({ t = fake_transport(), public_key = pub, clock = os.time, settings = { bogus = 1 } })
    assert.is_nil(a)
    assert.matches("unknown NAT setting", err)
  end)
end)
