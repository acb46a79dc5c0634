-- Punch signalling without the registry (wgoverlay.nat.signal): the codec,
-- end-to-end MAC (a forwarder can lower hops, nothing else), sequence
-- numbers, and three agents where the middle one forwards.  No I/O.

local core = require "wgoverlay.core"
local cjson = require "cjson"
local signal = require "wgoverlay.nat.signal"
local agent = require "wgoverlay.nat.agent"

local function keys()
  local _, a = core.x25519_keypair()
  local _, b = core.x25519_keypair()
  return a, b, core.random(32)
end

describe("nat.signal", function()
  it("encodes and decodes; the MAC covers all but the hop count", function()
    local a, b, key = keys()
    local bytes = assert(signal.encode({ sender = a, receiver = b, seq = 7, flags = signal.PUNCH,
                                         body = { key = "k", list = {} } }, key))
    local m = assert(signal.decode(bytes))
    assert.equal(a, m.sender)
    assert.equal(b, m.receiver)
    assert.equal(7, m.seq)
    assert.equal(signal.PUNCH, m.flags)
    assert.equal(signal.HOPS, m.hops)
    assert.same({ key = "k", list = {} }, cjson.decode(m.body))
    local book = signal.book()
    assert.is_true(book:accept(m, a, key))
    -- forwarded: one hop less, still valid (and seq 8 is new)
    local fwd = signal.decode(signal.forwarded(assert(signal.encode({ sender = a, receiver = b, seq = 8,
                                                                      body = {} }, key))))
    assert.equal(signal.HOPS - 1, fwd.hops)
    assert.is_true(book:accept(fwd, a, key))
    -- any other flipped bit is detected
    for i = 6, #bytes do
      local flipped = bytes:sub(1, i - 1) .. string.char(bytes:byte(i) ~ 1) .. bytes:sub(i + 1)
      local d = signal.decode(flipped)
      assert.is_true(d == nil or not signal.book():accept(d, a, key), "flip at byte " .. i .. " not detected")
    end
    -- garbage
    for _, g in ipairs({ "", "WGS1", ("\0"):rep(200), bytes .. "x", bytes:sub(1, -2) }) do
      assert.is_nil(signal.decode(g))
    end
    -- too long a body
    local big = {}
    for i = 1, 400 do big[i] = i end
    assert.is_nil(signal.encode({ sender = a, receiver = b, seq = 1, body = big }, key))
  end)

  it("takes each sequence number once and in order, per pair key", function()
    local a, b, key = keys()
    local book = signal.book()
    local function msg(seq, k)
      return signal.decode(signal.encode({ sender = a, receiver = b, seq = seq, body = {} }, k or key))
    end
    assert.is_true(book:accept(msg(1), a, key))
    assert.is_nil(book:accept(msg(1), a, key))
    assert.is_true(book:accept(msg(5), a, key))
    assert.equal("replayed or out of order", select(2, book:accept(msg(3), a, key)))
    -- a new pair key (the peer restarted): numbering starts again
    local key2 = core.random(32)
    assert.equal("bad MAC", select(2, book:accept(msg(1, key2), a, key)))
    assert.is_true(book:accept(msg(1, key2), a, key2))
    assert.equal(1, book:next(b, key))
    assert.equal(2, book:next(b, key))
    assert.equal(1, book:next(b, key2))
  end)
end)

-- Three agents A, M, B on fake transports: A and B have no path to each
-- other, M (public) reaches both; signals go through M.
describe("nat.agent signalling", function()
  local clock = { t = 1700000000.0 }
  local nodes, wire = {}, {}

  local function fake_transport()
    local t = { sent = {}, peers = {}, handshakes = {} }
    function t:send_datagram(to, bytes, ttl)
      self.sent[#self.sent + 1] = { to = to, bytes = bytes, ttl = ttl }
      return true
    end
    function t:status()
      local list = {}
      for pk, p in pairs(self.peers) do list[#list + 1] = { public_key = pk, endpoint = p.endpoint } end
      return { peers = list }
    end
    function t:set_peer_relay(pk, server, ch)
      self.peers[pk] = { endpoint = server, relay_channel = ch }
      return true
    end
    function t:initiate_handshake(pk) self.handshakes[#self.handshakes + 1] = pk end
    function t:set_relay() return true end
    return t
  end

  local function new(name, ip, endpoint)
    local _, pub = core.generate_keys()
    local n = { name = name, ip = ip, public_key = pub, endpoint = endpoint, t = fake_transport() }
    n.a = assert(agent.new({ t = n.t, public_key = pub, endpoint = endpoint, clock = function() return clock.t end,
                            send_signal = function(to_ip, bytes) wire[#wire + 1] = { from = ip, to = to_ip,
                                                                                     bytes = bytes } end }))
    nodes[name] = n
    return n
  end

  local function records(except)
    local list = {}
    for _, n in pairs(nodes) do
      if n ~= except then
        list[#list + 1] = { name = n.name, public_key = n.public_key, endpoint = n.endpoint, overlay_ip = n.ip,
                            candidates = n.a:candidate_set() }
      end
    end
    return list
  end

  -- delivers the wire; A and B cannot reach each other directly
  local function deliver()
    local by_ip = {}
    for _, n in pairs(nodes) do by_ip[n.ip] = n end
    for _ = 1, 10 do
      local batch = wire
      wire = {}
      if #batch == 0 then return end
      for _, d in ipairs(batch) do
        local src, dst = by_ip[d.from], by_ip[d.to]
        local blocked = (src.name == "a" and dst.name == "b") or (src.name == "b" and dst.name == "a")
        if not blocked then dst.a:on_signal(d.from, d.bytes) end
      end
    end
  end

  it("carries new candidates and the go to punch through a member that reaches both", function()
    local A = new("a", "10.99.0.1", "10.1.0.2:51820")
    local M = new("m", "10.99.0.2", "203.0.113.30:51820")
    local B = new("b", "10.99.0.3", "10.2.0.2:51820")
    for _, n in pairs(nodes) do n.a:set_peers(records(n)) end
    -- A and B see M as up (alive now); each other not
    for _, n in ipairs({ A, B }) do
      local pm = n.a.by_name.m
      pm.policy.phase, pm.policy.alive_at = "up", clock.t
    end
    -- A's NAT moved: A now has a server-reflexive candidate B does not know
    A.a.mapped = { ["203.0.113.1:3478"] = "203.0.113.21:61500" }
    A.a.stun_servers = { "203.0.113.1:3478" }
    local pb = A.a.by_name.b
    A.a:_act(pb, { type = "request_punch" }, { endpoint = nil }, clock.t)
    -- direct (lost: no path) and through M
    assert.equal(2, #wire)
    deliver()
    -- B took A's new candidates and probes them; A got B's answer and probes too
    local targets_b = B.a.prober.sessions[A.a.self_id]
    assert.truthy(targets_b, "B does not probe A")
    assert.is_true(targets_b.targets["203.0.113.21:61500"])
    assert.truthy(A.a.prober.sessions[B.a.self_id], "A does not probe B")
    assert.is_true(M.a.stats.signals_forwarded >= 2)
    assert.equal(1, B.a.stats.signals_taken)
    assert.equal(1, A.a.stats.signals_taken)
    -- M cannot forge: a message it makes with a random key is refused by B
    local forged = signal.encode({ sender = A.a.self_id, receiver = B.a.self_id, seq = 99, flags = signal.PUNCH,
                                   body = A.a:candidate_set() }, core.random(32))
    B.a:on_signal(M.ip, forged)
    assert.equal(1, B.a.stats.signals_refused)
    -- a replay of a real one is ignored (no second take)
    local before = B.a.stats.signals_taken
    A.a:_signal(pb, signal.PUNCH, clock.t + 5)
    local copy = wire[2].bytes
    deliver()
    B.a:on_signal(M.ip, signal.forwarded(copy))
    assert.equal(before + 1, B.a.stats.signals_taken)
    -- forwarding is bounded: hops 0 is not forwarded
    local zero = signal.forwarded(copy)
    assert.is_nil(signal.forwarded(zero))
    M.a:on_signal(A.ip, zero)
    assert.equal(0, #wire)
  end)
end)
