-- Hole-punch probes (wgoverlay.nat.punch): pair keys, the message codec,
-- and two probers talking through a simulated pair of NATs, with forged,
-- replayed, reflected and stale messages.  Injected clock, no I/O.

local core = require "wgoverlay.core"
local punch = require "wgoverlay.nat.punch"

local function ids()
  local _, a = core.x25519_keypair()
  local _, b = core.x25519_keypair()
  return a, b
end

-- two nodes with punch keys and a prober each, on one fake clock
local function pair(opts)
  opts = opts or {}
  local clock = { t = 1700000000.0 }
  local function now() return clock.t end
  local A, B = {}, {}
  A.id, B.id = ids()
  A.priv, A.pub = core.x25519_keypair()
  B.priv, B.pub = core.x25519_keypair()
  A.key = assert(punch.pair_key(A.priv, A.pub, B.pub, A.id, B.id))
  B.key = assert(punch.pair_key(B.priv, B.pub, A.pub, B.id, A.id))
  for _, n in ipairs({ A, B }) do
    n.p = punch.new({ self_id = n.id, clock = now, timeout = opts.timeout, interval = opts.interval })
  end
  A.p:set_key(B.id, A.key)
  B.p:set_key(A.id, B.key)
  return A, B, clock
end

describe("nat.punch", function()
  it("derives one pair key on both sides, bound to both identities", function()
    local A, B = pair()
    assert.equal(32, #A.key)
    assert.equal(A.key, B.key)
    local _, other = core.x25519_keypair()
    local k2 = assert(punch.pair_key(A.priv, A.pub, B.pub, A.id, other))
    assert.not_equal(A.key, k2)
    assert.is_nil(punch.pair_key(A.priv, A.pub, B.pub, A.id, A.id))
    assert.is_nil(punch.pair_key(A.priv, A.pub, "short", A.id, B.id))
    -- a low-order point is refused
    assert.is_nil(punch.pair_key(A.priv, A.pub, string.rep("\0", 32), A.id, B.id))
  end)

  it("encodes and decodes probes and acks; the MAC covers every field", function()
    local A, B = pair()
    local m = { kind = punch.ACK, sender = A.id, receiver = B.id, nonce = ("n"):rep(12), echo = ("e"):rep(12) }
    local bytes = punch.encode(m, A.key)
    assert.equal(punch.SIZE, #bytes)
    assert.is_true(punch.is_punch(bytes))
    local d = assert(punch.decode(bytes))
    assert.equal(punch.ACK, d.kind)
    assert.equal(A.id, d.sender)
    assert.equal(B.id, d.receiver)
    assert.equal(m.nonce, d.nonce)
    assert.equal(m.echo, d.echo)
    assert.is_true(punch.verify_mac(d, B.key))
    for i = 5, punch.SIZE do
      local flipped = bytes:sub(1, i - 1) .. string.char(bytes:byte(i) ~ 1) .. bytes:sub(i + 1)
      local fd = punch.decode(flipped)
      assert.is_true(fd == nil or not punch.verify_mac(fd, B.key), "flip at byte " .. i .. " not detected")
    end
    assert.is_false(punch.is_punch("WGN2"))
    -- the version 1 format (a timestamp inside) is not taken
    assert.is_false(punch.is_punch("WGN1" .. ("\0"):rep(punch.SIZE - 4)))
    assert.is_false(punch.is_punch(("x"):rep(punch.SIZE)))
    assert.is_nil(punch.decode("WGN2\3" .. ("\0"):rep(punch.SIZE - 5)))
    -- not a WireGuard message type, not STUN, not ChannelData, not a join datagram
    local b1 = bytes:byte(1)
    assert.is_true(b1 > 4 and (b1 & 0xC0) ~= 0 and (b1 < 0x40 or b1 > 0x4F))
    assert.not_equal("WGO1", bytes:sub(1, 4))
  end)

  it("finds the address that answers (through NATs that map ports)", function()
    local A, B, clock = pair()
    -- A is reached at 198.51.100.1:40000 (its NAT's mapping), B at
    -- 198.51.100.2:50000; the host candidates go nowhere.
    local addr = { A = "198.51.100.1:40000", B = "198.51.100.2:50000" }
    local out_a = assert(A.p:start(B.id, { "10.2.0.2:51820", addr.B }))
    local out_b = assert(B.p:start(A.id, { "10.1.0.2:51820", addr.A }))
    assert.equal(2, #out_a)
    assert.equal(2, #out_b)
    -- deliver what reaches the other side (only the mapped addresses)
    local results = { A = {}, B = {} }
    local function deliver(from_name, out, depth)
      depth = depth or 0
      assert(depth < 10)
      local to_node, to_name = from_name == "A" and B or A, from_name == "A" and "B" or "A"
      for _, d in ipairs(out) do
        if d.to == addr[to_name] then
          local o, r, why = to_node.p:input(addr[from_name], d.bytes)
          assert.is_nil(why)
          for _, x in ipairs(r) do table.insert(results[to_name], x) end
          deliver(to_name, o, depth + 1)
        end
      end
    end
    deliver("A", out_a)
    deliver("B", out_b)
    assert.equal(1, #results.A)
    assert.same({ peer = B.id, endpoint = addr.B }, { peer = results.A[1].peer, endpoint = results.A[1].endpoint })
    assert.equal(addr.A, results.B[1].endpoint)
    assert.is_false(A.p:active(B.id))
    assert.is_false(B.p:active(A.id))
    -- later rounds: nothing more to send, no timeout result
    clock.t = clock.t + 10
    local o, r = A.p:tick()
    assert.same({}, o)
    assert.same({}, r)
  end)

  it("probes peer-reflexive addresses it is probed from (triggered checks)", function()
    local A, B = pair()
    -- B's NAT maps per destination: A probes B's published mapping in vain,
    -- but B's probe arrives at A from a fresh port
    assert(A.p:start(B.id, { "198.51.100.2:50000" }))
    local out_b = assert(B.p:start(A.id, { "198.51.100.1:40000" }))
    local o = A.p:input("198.51.100.2:61111", out_b[1].bytes)
    assert.equal(2, #o) -- the ack, and a triggered probe
    assert.equal("198.51.100.2:61111", o[1].to)
    assert.equal("198.51.100.2:61111", o[2].to)
    -- B acks the triggered probe; A confirms the peer-reflexive address
    local ack = B.p:input("198.51.100.1:40000", o[2].bytes)
    local _, r = A.p:input("198.51.100.2:61111", ack[1].bytes)
    assert.equal("198.51.100.2:61111", r[1].endpoint)
    -- and B confirms A's address from A's ack
    local _, rb = B.p:input("198.51.100.1:40000", o[1].bytes)
    assert.equal("198.51.100.1:40000", rb[1].endpoint)
  end)

  it("refuses forged, misaddressed, replayed, reflected and stale messages", function()
    local A, B, clock = pair()
    local C = {}
    C.id = select(2, core.x25519_keypair())
    local out_b = assert(B.p:start(A.id, { "198.51.100.1:40000" }))
    local probe = out_b[1].bytes
    -- a forged probe: right fields, key unknown to the forger
    local forged = punch.encode({ kind = punch.PROBE, sender = B.id, receiver = A.id, nonce = ("f"):rep(12) },
                                  ("k"):rep(32))
    local o, r, why = A.p:input("203.0.113.66:4444", forged)
    assert.same({}, o)
    assert.same({}, r)
    assert.equal("bad MAC", why)
    -- from a sender we hold no key for
    local _, _, why2 = A.p:input("203.0.113.66:4444",
      punch.encode({ kind = punch.PROBE, sender = C.id, receiver = A.id, nonce = ("c"):rep(12) }, A.key))
    assert.equal("unknown sender", why2)
    -- a real probe answered once ...
    o = A.p:input("198.51.100.2:50000", probe)
    assert.equal(1, #o)
    local ack = o[1].bytes
    -- ... and never again (replayed, from anywhere)
    local o2, _, why3 = A.p:input("203.0.113.66:4444", probe)
    assert.same({}, o2)
    assert.equal("replayed", why3)
    -- the ack reflected from another address confirms nothing
    local _, r4, why4 = B.p:input("203.0.113.66:4444", ack)
    assert.same({}, r4)
    assert.equal("ack from another address than the probe went to", why4)
    assert.is_true(B.p:active(A.id))
    -- and that attempt burnt the nonce: the genuine ack is now a replay
    local _, r5 = B.p:input("198.51.100.1:40000", ack)
    assert.same({}, r5)
    -- a probe meant for someone else
    local other = punch.encode({ kind = punch.PROBE, sender = B.id, receiver = C.id, nonce = ("o"):rep(12) },
                                 A.key)
    assert.equal("not addressed to us", select(3, A.p:input("198.51.100.2:50000", other)))
    -- an ack with no session
    local lone = punch.encode({ kind = punch.ACK, sender = B.id, receiver = A.id, nonce = ("l"):rep(12),
                                echo = ("z"):rep(12) }, A.key)
    assert.equal("ack to no probe of a running session", select(3, A.p:input("198.51.100.2:50000", lone)))
    assert.equal(5, A.p.stats.rejected)
    -- garbage never raises
    for _, g in ipairs({ "", "WGN2", ("\0"):rep(punch.SIZE), "WGN2" .. ("\255"):rep(punch.SIZE - 4) }) do
      assert.same({}, (A.p:input("198.51.100.2:50000", g)))
    end
    assert.same({}, (A.p:input("not an address", probe)))
  end)

  it("repeats probes every interval and reports a time-out", function()
    local A, B, clock = pair({ timeout = 2, interval = 0.5 })
    assert.is_nil(A.p:start(("x"):rep(32), {}))
    local first = assert(A.p:start(B.id, { "198.51.100.2:50000", "198.51.100.2:50000", "bad" }))
    assert.equal(1, #first)
    clock.t = clock.t + 0.2
    local o, r, next_at = A.p:tick()
    assert.same({}, o)
    assert.same({}, r)
    assert.equal(clock.t + 0.3, next_at)
    clock.t = clock.t + 0.3
    o = A.p:tick()
    assert.equal(1, #o)
    clock.t = clock.t + 1.6
    o, r = A.p:tick()
    assert.same({}, o)
    assert.same({ { peer = B.id, endpoint = nil } }, r)
    assert.is_false(A.p:active(B.id))
    -- forgetting the key ends sessions
    assert(A.p:start(B.id, { "198.51.100.2:50000" }))
    A.p:set_key(B.id, nil)
    assert.is_false(A.p:active(B.id))
  end)
  it("needs no clock agreement: two probers an hour apart confirm each other", function()
    local A, B = pair()
    -- B's clock runs an hour ahead of A's
    local b_clock = { t = 1700000000.0 + 3600 }
    B.p.clock = function() return b_clock.t end
    local out_a = assert(A.p:start(B.id, { "198.51.100.2:50000" }))
    local o = B.p:input("198.51.100.1:40000", out_a[1].bytes)
    assert.equal(1, #o)
    local _, r, why = A.p:input("198.51.100.2:50000", o[1].bytes)
    assert.is_nil(why)
    assert.equal("198.51.100.2:50000", r[1].endpoint)
  end)

  it("an ack recorded earlier confirms nothing in a later session (fresh nonces)", function()
    local A, B, clock = pair()
    local out_a = assert(A.p:start(B.id, { "198.51.100.2:50000" }))
    local ack = B.p:input("198.51.100.1:40000", out_a[1].bytes)[1].bytes
    assert.equal("198.51.100.2:50000", select(2, A.p:input("198.51.100.2:50000", ack))[1].endpoint)
    -- a new session; the recorded ack echoes an old nonce (and is a replay)
    clock.t = clock.t + 3 * punch.REPLAY_MEMORY
    A.p:tick()
    assert(A.p:start(B.id, { "198.51.100.2:50000" }))
    local _, r, why = A.p:input("198.51.100.2:50000", ack)
    assert.same({}, r)
    assert.equal("ack to no probe of a running session", why)
  end)

  it("sends the first probes with a low TTL, later ones and triggered checks with the full TTL", function()
    local A, B, clock = pair({ interval = 0.25 })
    local first = assert(A.p:start(B.id, { "198.51.100.2:50000" }))
    assert.equal(punch.LOW_TTL, first[1].ttl)
    clock.t = clock.t + 0.5
    assert.equal(punch.LOW_TTL, A.p:tick()[1].ttl)
    clock.t = clock.t + punch.LOW_TTL_TIME
    local later = A.p:tick()
    assert.equal(1, #later)
    assert.is_nil(later[1].ttl)
    -- a target added to the running session has its own low-TTL time
    local ttls = {}
    for _, d in ipairs(assert(A.p:start(B.id, { "198.51.100.2:50000", "198.51.100.9:50000" }))) do ttls[d.to] = d.ttl end
    assert.same({ ["198.51.100.9:50000"] = punch.LOW_TTL }, ttls)
    clock.t = clock.t + punch.LOW_TTL_TIME
    ttls = {}
    for _, d in ipairs(A.p:tick()) do ttls[d.to] = d.ttl or "full" end
    assert.same({ ["198.51.100.2:50000"] = "full", ["198.51.100.9:50000"] = "full" }, ttls)
    -- a probe from B's per-destination mapping: the check of it goes out at full TTL at once
    local out_b = assert(B.p:start(A.id, { "198.51.100.1:40000" }))
    local o = A.p:input("198.51.100.2:61111", out_b[1].bytes)
    assert.is_nil(o[1].ttl)
    assert.is_nil(o[2].ttl)
    -- low_ttl = false: none
    local C = punch.new({ self_id = A.id, clock = function() return clock.t end, low_ttl = false })
    C:set_key(B.id, A.key)
    assert.is_nil(assert(C:start(B.id, { "198.51.100.2:50000" }))[1].ttl)
  end)

  it("keeps its replay cache bounded", function()
    local A, B, clock = pair()
    A.p.replay_max = 50
    for i = 1, 200 do
      clock.t = clock.t + 0.01
      local probe = punch.encode({ kind = punch.PROBE, sender = B.id, receiver = A.id,
                                   nonce = string.pack(">I12", i) }, A.key)
      assert.equal(1, #A.p:input("198.51.100.2:50000", probe))
      assert.is_true(A.p.nseen <= 50)
    end
    local n = 0
    for _ in pairs(A.p.seen) do n = n + 1 end
    assert.equal(A.p.nseen, n)
  end)
end)
