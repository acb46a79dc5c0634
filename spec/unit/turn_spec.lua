-- TURN client (wgoverlay.nat.turn) against a fake server written here:
-- long-term authentication (401, 438), Allocate, CreatePermission,
-- ChannelBind, refresh timing under a fake clock, close, retransmissions,
-- time-outs and ignored (spoofed, mismatched) responses.  No root, no
-- network.

local stun = require "wgoverlay.nat.stun"
local turn = require "wgoverlay.nat.turn"

local SERVER = "192.0.2.10:3478"
local CLIENT = "198.51.100.7:51820" -- what the fake server sees as source
local RELAYED = "192.0.2.10:49152"

-- A fake TURN server: `handle(bytes)` returns the response bytes (or nil).
local function fake_server(opts)
  opts = opts or {}
  local srv = {
    realm = opts.realm or "test.internal",
    nonce = "nonce-1",
    users = opts.users or { alice = "secret" },
    max_lifetime = opts.max_lifetime or 3600,
    requests = {},          -- decoded requests, in order
    stale = opts.stale,     -- answer every authenticated request with 438
    algorithms = opts.algorithms, -- PASSWORD-ALGORITHMS value (obMatJos2 nonces)
    refresh_error = nil,    -- error code for Refresh
    bind_error = nil,       -- error code for ChannelBind
  }
  if srv.algorithms then srv.nonce = "obMatJos2AAAB-rest" end

  local function respond(req, class, attrs, key)
    return assert(stun.encode({ method = req.method, class = class, transaction_id = req.transaction_id,
                                attributes = attrs }, { key = key, fingerprint = true }))
  end
  local function err(req, code, reason, extra)
    local attrs = { { name = "ERROR-CODE", value = { code = code, reason = reason } } }
    for _, a in ipairs(extra or {}) do attrs[#attrs + 1] = a end
    return respond(req, "error", attrs)
  end
  local function challenge(req, code, reason)
    local extra = { { name = "REALM", value = srv.realm }, { name = "NONCE", value = srv.nonce } }
    if srv.algorithms then extra[3] = { name = "PASSWORD-ALGORITHMS", value = srv.algorithms } end
    return err(req, code, reason, extra)
  end

  function srv.key_for(user, hash)
    local pass = srv.users[user]
    if not pass then return nil end
    if hash == "sha256" then
      return require("openssl.digest").new("sha256"):final(user .. ":" .. srv.realm .. ":" .. pass)
    end
    return stun.long_term_key(user, srv.realm, pass)
  end

  function srv.handle(bytes)
    local req = assert(stun.decode(bytes))
    srv.requests[#srv.requests + 1] = req
    if not req.attrs["MESSAGE-INTEGRITY"] and not req.attrs["MESSAGE-INTEGRITY-SHA256"] then
      return challenge(req, 401, "Unauthorized")
    end
    local hash = "md5"
    local pa = req.attrs["PASSWORD-ALGORITHM"]
    if pa and string.unpack(">I2", pa) == 2 then hash = "sha256" end
    local key = srv.key_for(req.attrs.USERNAME, hash)
    if not key or not stun.check_integrity(req, key) then return challenge(req, 401, "Unauthorized") end
    if srv.stale or req.attrs.NONCE ~= srv.nonce then return challenge(req, 438, "Stale Nonce") end
    local m = req.method
    if m == stun.ALLOCATE then
      if req.attrs["REQUESTED-TRANSPORT"] ~= 17 then return err(req, 442, "Unsupported Transport") end
      local lt = math.min(req.attrs.LIFETIME or 600, srv.max_lifetime)
      return respond(req, "success", {
        { name = "XOR-RELAYED-ADDRESS", value = RELAYED },
        { name = "XOR-MAPPED-ADDRESS", value = CLIENT },
        { name = "LIFETIME", value = lt },
      }, key)
    elseif m == stun.REFRESH then
      if srv.refresh_error then return err(req, srv.refresh_error, "Allocation Mismatch") end
      return respond(req, "success", { { name = "LIFETIME", value = math.min(req.attrs.LIFETIME, srv.max_lifetime) } }, key)
    elseif m == stun.CREATE_PERMISSION or m == stun.CHANNEL_BIND then
      if srv.forbid then return err(req, 403, "Forbidden") end
      if m == stun.CHANNEL_BIND and srv.bind_error then return err(req, srv.bind_error, "Bad Request") end
      return respond(req, "success", {}, key)
    end
    return err(req, 400, "Bad Request")
  end
  return srv
end

-- A client wired to a fake server: sent datagrams are collected; `pump`
-- delivers them to the server and its answers back to the client.
local function rig(opts, srv_opts)
  opts = opts or {}
  local r = { now = 1000, sent = {}, events = {} }
  r.srv = fake_server(srv_opts)
  local o = { server = SERVER, username = "alice", password = "secret",
              send = function(bytes, to)
                r.sent[#r.sent + 1] = { bytes = bytes, to = to }
                return true
              end,
              clock = function() return r.now end,
              on_event = function(ev) r.events[#r.events + 1] = ev end }
  for k, v in pairs(opts) do o[k] = v end
  if opts.anonymous then o.username, o.password, o.anonymous = nil, nil, nil end
  r.client = assert(turn.new(o))
  -- deliver everything sent so far (repeatedly: retries produce more)
  function r.pump(drop)
    local n = 0
    while #r.sent > 0 do
      local batch = r.sent
      r.sent = {}
      for _, d in ipairs(batch) do
        assert.equal(SERVER, d.to)
        local resp = r.srv.handle(d.bytes)
        if resp and not drop then r.client:input(SERVER, resp) end
        n = n + 1
      end
    end
    return n
  end
  function r.last_event(kind)
    for i = #r.events, 1, -1 do
      if r.events[i].type == kind then return r.events[i] end
    end
  end
  function r.count(kind)
    local n = 0
    for _, e in ipairs(r.events) do if e.type == kind then n = n + 1 end end
    return n
  end
  function r.last_request() return r.srv.requests[#r.srv.requests] end
  function r.allocate()
    assert(r.client:allocate())
    r.pump()
    assert.equal("allocated", r.client.state, r.client.error)
  end
  return r
end

describe("turn client", function()
  describe("turn.new", function()
    it("checks its options", function()
      local send = function() end
      assert.is_nil((turn.new()))
      assert.is_nil((turn.new({ server = SERVER })))
      assert.is_nil((turn.new({ server = "nope", send = send })))
      assert.is_nil((turn.new({ server = SERVER, send = send, username = "u" })))
      assert.is_nil((turn.new({ server = SERVER, send = send, username = 1, password = 2 })))
      assert.is_nil((turn.new({ server = SERVER, send = send, lifetime = 0 })))
      local c = assert(turn.new({ server = "[fd00:0::1]:3478", send = send }))
      assert.equal("[fd00::1]:3478", c.server)
      assert.equal("new", c.state)
    end)
  end)

  describe("Allocate with long-term credentials", function()
    it("answers 401 with MESSAGE-INTEGRITY and reports the relayed and mapped addresses", function()
      local r = rig({ software = "wgoverlay-test", lifetime = 900 })
      assert(r.client:allocate())
      assert.equal("allocating", r.client.state)
      r.pump()
      assert.equal(2, #r.srv.requests)
      local first, second = r.srv.requests[1], r.srv.requests[2]
      assert.equal(stun.ALLOCATE, first.method)
      assert.equal(17, first.attrs["REQUESTED-TRANSPORT"])
      assert.equal(900, first.attrs.LIFETIME)
      assert.equal("wgoverlay-test", first.attrs.SOFTWARE)
      assert.is_nil(first.attrs["MESSAGE-INTEGRITY"])
      assert.equal("alice", second.attrs.USERNAME)
      assert.equal("test.internal", second.attrs.REALM)
      assert.equal("nonce-1", second.attrs.NONCE)
      assert.not_equal(first.transaction_id, second.transaction_id)
      assert.is_true(stun.check_integrity(second, stun.long_term_key("alice", "test.internal", "secret")))
      assert.equal("allocated", r.client.state)
      assert.equal(RELAYED, r.client.relayed)
      assert.equal(CLIENT, r.client.mapped)
      assert.equal(900, r.client.lifetime)
      local ev = r.last_event("allocated")
      assert.same({ type = "allocated", relayed = RELAYED, mapped = CLIENT, lifetime = 900 }, ev)
      local st = r.client:status()
      assert.equal("allocated", st.state)
      assert.equal(RELAYED, st.relayed)
      assert.is_nil((r.client:allocate()))
    end)

    it("fails clearly on a wrong password, without looping", function()
      local r = rig({ password = "wrong" })
      r.client:allocate()
      r.pump()
      assert.equal(2, #r.srv.requests)
      assert.equal("failed", r.client.state)
      local ev = r.last_event("error")
      assert.equal("Allocate", ev.request)
      assert.equal(401, ev.code)
      assert.matches("Allocate failed: 401 Unauthorized %(wrong username or password%?%)", ev.message)
      assert.equal(ev.message, r.client.error)
      assert.is_nil(r.client:tick(), "nothing left to do")
    end)

    it("says so when the server wants credentials and none are configured", function()
      local r = rig({ anonymous = true })
      r.client:allocate()
      r.pump()
      assert.equal(1, #r.srv.requests)
      assert.matches("none configured", r.client.error)
    end)

    it("retries with the new nonce after 438 Stale Nonce", function()
      local r = rig()
      r.allocate()
      r.srv.nonce = "nonce-2"
      assert(r.client:refresh())
      r.pump()
      local reqs = r.srv.requests
      assert.equal("nonce-1", reqs[#reqs - 1].attrs.NONCE)
      assert.equal("nonce-2", reqs[#reqs].attrs.NONCE)
      assert.equal(1, r.count("refreshed"))
      assert.equal(0, r.count("error"))
    end)

    it("gives up after repeated 438s", function()
      local r = rig()
      r.client:allocate()
      r.srv.stale = true
      r.pump()
      -- 1 unauthenticated + 1 authenticated + 3 stale retries
      assert.equal(5, #r.srv.requests)
      assert.equal("failed", r.client.state)
      assert.equal(438, r.last_event("error").code)
    end)

    it("echoes PASSWORD-ALGORITHMS and uses the chosen algorithm's key (RFC 8489)", function()
      for _, case in ipairs({ { alg = 1, hash = "md5" }, { alg = 2, hash = "sha256" } }) do
        local algs = string.pack(">I2I2", case.alg, 0)
        local r = rig({}, { algorithms = algs })
        r.allocate()
        local req = r.last_request()
        assert.equal(algs, req.attrs["PASSWORD-ALGORITHMS"])
        assert.equal(case.alg, (string.unpack(">I2", req.attrs["PASSWORD-ALGORITHM"])))
        assert.is_true(stun.check_integrity(req, r.srv.key_for("alice", case.hash)))
      end
    end)

    it("asks for an IPv6 relayed address when told to", function()
      local r = rig({ family = 6 })
      r.client:allocate()
      r.pump()
      assert.equal(6, r.srv.requests[1].attrs["REQUESTED-ADDRESS-FAMILY"])
    end)

    it("can use MESSAGE-INTEGRITY-SHA256", function()
      local r = rig({ integrity = "sha256" })
      r.allocate()
      local req = r.last_request()
      assert.truthy(req.attrs["MESSAGE-INTEGRITY-SHA256"])
      assert.is_nil(req.attrs["MESSAGE-INTEGRITY"])
    end)
  end)

  describe("ignores what it did not ask for", function()
    it("responses from elsewhere, unknown ids, bad MACs, garbage", function()
      local r = rig()
      r.client:allocate()
      r.pump() -- now allocated
      assert(r.client:refresh())
      local req = assert(stun.decode(r.sent[1].bytes))
      r.sent = {}
      local key = stun.long_term_key("alice", "test.internal", "secret")
      local function reply(k, tid)
        return assert(stun.encode({ method = stun.REFRESH, class = "success", transaction_id = tid or req.transaction_id,
          attributes = { { name = "LIFETIME", value = 1 } } }, { key = k }))
      end
      local ok, why = r.client:input("192.0.2.66:3478", reply(key))
      assert.is_false(ok)
      assert.matches("not from the server", why)
      -- not consumed: the caller may offer it to another consumer
      ok, why = r.client:input(SERVER, reply(key, stun.transaction_id()))
      assert.is_false(ok)
      assert.matches("unknown transaction", why)
      ok, why = r.client:input(SERVER, reply("wrong key"))
      assert.is_false(ok)
      assert.matches("MESSAGE%-INTEGRITY mismatch", why)
      ok, why = r.client:input(SERVER, reply(nil))
      assert.is_false(ok)
      assert.matches("no MESSAGE%-INTEGRITY", why)
      ok, why = r.client:input(SERVER, assert(stun.encode({ method = stun.ALLOCATE, class = "success",
        transaction_id = req.transaction_id }, { key = key })))
      assert.is_false(ok)
      assert.matches("method does not match", why)
      assert.is_false((r.client:input(SERVER, "\1\0\0\0wireguard")))
      assert.is_false((r.client:input(SERVER, "")))
      assert.equal(0, r.count("refreshed"))
      -- the genuine answer still counts
      assert.is_true((r.client:input(SERVER, reply(key))))
      assert.equal(1, r.count("refreshed"))
      assert.equal(1, r.client.lifetime)
    end)
  end)

  describe("permissions and channels", function()
    it("creates a permission with XOR-PEER-ADDRESS and binds channels from 0x4000", function()
      local r = rig()
      r.allocate()
      assert(r.client:create_permission("192.0.2.20:50000"))
      r.pump()
      local req = r.last_request()
      assert.equal(stun.CREATE_PERMISSION, req.method)
      assert.same({ family = 4, ip = "192.0.2.20", port = 0 }, req.attrs["XOR-PEER-ADDRESS"])
      assert.same({ type = "permission", peer = "192.0.2.20", refreshed = false }, r.last_event("permission"))
      assert.equal("installed", r.client:status().permissions["192.0.2.20"])

      local ch = r.client:bind_channel("192.0.2.20:50000")
      assert.equal(0x4000, ch)
      assert.same({ 0x4000, "pending" }, { r.client:channel("192.0.2.20:50000") })
      r.pump()
      req = r.last_request()
      assert.equal(stun.CHANNEL_BIND, req.method)
      assert.equal(0x4000, req.attrs["CHANNEL-NUMBER"])
      assert.same({ family = 4, ip = "192.0.2.20", port = 50000 }, req.attrs["XOR-PEER-ADDRESS"])
      assert.same({ type = "channel", peer = "192.0.2.20:50000", channel = 0x4000, refreshed = false },
        r.last_event("channel"))
      assert.same({ 0x4000, "bound" }, { r.client:channel("192.0.2.20:50000") })
      -- the same peer keeps its number; another gets the next; explicit numbers are checked
      assert.equal(0x4000, r.client:bind_channel("192.0.2.20:50000"))
      assert.equal(0x4001, r.client:bind_channel("[fd00::20]:50000"))
      assert.equal(0x4abc, r.client:bind_channel("192.0.2.21:1", 0x4abc))
      assert.is_nil((r.client:bind_channel("192.0.2.22:1", 0x4abc)))
      assert.is_nil((r.client:bind_channel("192.0.2.22:1", 0x3fff)))
      assert.is_nil((r.client:bind_channel("192.0.2.22:1", 0x5000)))
      assert.is_nil((r.client:bind_channel("192.0.2.20:50000", 0x4002)))
      assert.is_nil((r.client:bind_channel("not an address")))
      assert.is_nil((r.client:create_permission("nope")))
      assert.truthy(r.client:create_permission("fd00::21"))
    end)

    it("queues requests made before the allocation and sends them once allocated", function()
      local r = rig()
      assert(r.client:create_permission("192.0.2.30"))
      assert.equal(0x4000, r.client:bind_channel("192.0.2.30:7"))
      assert(r.client:allocate())
      r.pump()
      assert.equal(1, r.count("permission"))
      assert.equal(1, r.count("channel"))
    end)

    it("reports a refused permission as an error with the peer", function()
      local r = rig()
      r.allocate()
      r.srv.forbid = true
      r.client:create_permission("192.0.2.40")
      r.pump()
      local ev = r.last_event("error")
      assert.equal("CreatePermission", ev.request)
      assert.equal(403, ev.code)
      assert.equal("192.0.2.40", ev.peer)
    end)
  end)

  describe("refresh timing (fake clock)", function()
    it("refreshes a 600 s allocation 60 s before it expires", function()
      local r = rig({ lifetime = 600 })
      r.allocate()
      local t0 = r.now
      assert.equal(t0 + 540, r.client:tick())
      r.now = t0 + 539
      r.client:tick()
      assert.equal(0, #r.sent)
      r.now = t0 + 540
      r.client:tick()
      assert.equal(1, #r.sent)
      r.pump()
      local req = r.last_request()
      assert.equal(stun.REFRESH, req.method)
      assert.equal(600, req.attrs.LIFETIME)
      assert.equal(1, r.count("refreshed"))
      assert.equal(r.now + 540, r.client:tick())
    end)

    it("refreshes a short allocation at half its lifetime", function()
      local r = rig({ lifetime = 60 })
      r.allocate()
      assert.equal(r.now + 30, r.client:tick())
    end)

    it("uses the lifetime the server granted", function()
      local r = rig({ lifetime = 3600 }, { max_lifetime = 100 })
      r.allocate()
      assert.equal(100, r.client.lifetime)
      assert.equal(r.now + 50, r.client:tick())
    end)

    it("refreshes permissions before 300 s and channels before 600 s", function()
      local r = rig({ lifetime = 3600 })
      r.allocate()
      r.client:create_permission("192.0.2.50")
      r.client:bind_channel("192.0.2.51:9")
      r.pump()
      local t0 = r.now
      local perm_refreshes, chan_refreshes = {}, {}
      -- walk the clock through 1300 s, one tick per deadline
      while r.now < t0 + 1300 do
        local next_at = r.client:tick()
        r.now = math.min(next_at, t0 + 1300)
        r.client:tick()
        local before = #r.srv.requests
        r.pump()
        for i = before + 1, #r.srv.requests do
          local m = r.srv.requests[i].method
          if m == stun.CREATE_PERMISSION then perm_refreshes[#perm_refreshes + 1] = r.now - t0 end
          if m == stun.CHANNEL_BIND then chan_refreshes[#chan_refreshes + 1] = r.now - t0 end
        end
      end
      assert.same({ 240, 480, 720, 960, 1200 }, perm_refreshes)
      assert.same({ 480, 960 }, chan_refreshes)
      assert.is_true(r.count("refreshed") >= 0)
      assert.is_true(r.last_event("permission").refreshed)
      assert.is_true(r.last_event("channel").refreshed)
      assert.equal(1, r.count("allocated"))
    end)

    it("reports an allocation that expired without a refresh", function()
      local r = rig({ lifetime = 600, max_sends = 1, rm = 2 })
      r.allocate()
      r.now = r.now + 540
      r.client:tick()     -- Refresh sent, never answered
      r.sent = {}
      r.now = r.now + 1   -- its time-out: error, retried at the next tick
      r.client:tick()
      assert.equal("Refresh", r.last_event("error").request)
      assert.matches("timed out", r.last_event("error").message)
      r.sent = {}
      r.now = r.now + 100
      r.client:tick()
      assert.equal("failed", r.client.state)
      assert.truthy(r.last_event("expired"))
      assert.is_nil(r.client:tick())
    end)

    it("checks the allocation with a Refresh when a ChannelBind is refused (a restarted server)", function()
      local r = rig()
      r.allocate()
      r.srv.bind_error, r.srv.refresh_error = 400, 437
      r.client:bind_channel("192.0.2.50:4000")
      r.pump()
      assert.equal(stun.REFRESH, r.last_request().method)
      assert.equal("failed", r.client.state)
      -- a refusal while the allocation is fine changes nothing
      local r2 = rig()
      r2.allocate()
      r2.srv.bind_error = 400
      r2.client:bind_channel("192.0.2.50:4000")
      r2.pump()
      assert.equal(stun.REFRESH, r2.last_request().method)
      assert.equal("allocated", r2.client.state)
    end)

    it("marks the allocation failed when Refresh gets 437", function()
      local r = rig()
      r.allocate()
      r.srv.refresh_error = 437
      local seen
      r.client.on_event = function(ev) if ev.type == "error" then seen = r.client.state end end
      r.client:refresh()
      r.pump()
      assert.equal("failed", r.client.state)
      assert.matches("437", r.client.error)
      assert.equal("failed", seen) -- the error event already sees it failed
    end)
  end)

  describe("close", function()
    it("sends Refresh with LIFETIME 0 and reports closed", function()
      local r = rig()
      r.allocate()
      r.client:bind_channel("192.0.2.60:1")
      r.pump()
      assert(r.client:close())
      assert.equal("closing", r.client.state)
      r.pump()
      local req = r.last_request()
      assert.equal(stun.REFRESH, req.method)
      assert.equal(0, req.attrs.LIFETIME)
      assert.equal("closed", r.client.state)
      assert.equal(1, r.count("closed"))
      assert.is_nil(r.client:tick())
      assert.is_nil(r.client.relayed)
    end)

    it("gives up waiting and still reports closed", function()
      local r = rig({ max_sends = 2, rm = 2 })
      r.allocate()
      r.client:close()
      r.sent = {}
      for _ = 1, 5 do
        local d = r.client:tick()
        if not d then break end
        r.now = d
      end
      assert.equal("closed", r.client.state)
    end)

    it("closes a client that never allocated at once", function()
      local r = rig()
      r.client:close()
      assert.equal("closed", r.client.state)
      assert.equal(0, #r.sent)
    end)
  end)

  describe("retransmissions", function()
    it("follows RFC 8489: RTO doubling, 7 sends, then Rm x RTO, then a clear error", function()
      local r = rig()
      local t0 = r.now
      r.client:allocate()
      local sends = { 0 }
      r.sent = {}
      while true do
        local d = r.client:tick()
        if not d then break end
        r.now = d
        r.client:tick()
        if #r.sent > 0 then sends[#sends + 1] = r.now - t0 end
        r.sent = {}
        if r.client.state ~= "allocating" then break end
      end
      assert.same({ 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 }, sends)
      assert.equal(39.5, r.now - t0)
      assert.equal("failed", r.client.state)
      assert.equal("Allocate timed out: no answer from 192.0.2.10:3478", r.client.error)
    end)

    it("retransmits the same bytes", function()
      local r = rig()
      r.client:allocate()
      local first = r.sent[1].bytes
      r.now = r.now + 0.5
      r.client:tick()
      assert.equal(first, r.sent[2].bytes)
    end)
  end)

  describe("data", function()
    it("reports Data indications and ChannelData from the server", function()
      local r = rig()
      r.allocate()
      r.client:bind_channel("192.0.2.70:5")
      r.pump()
      local ind = assert(stun.encode({ method = stun.DATA, class = "indication", attributes = {
        { name = "XOR-PEER-ADDRESS", value = "192.0.2.70:5" }, { name = "DATA", value = "hello" } } }))
      assert.is_true((r.client:input(SERVER, ind)))
      assert.same({ type = "data", peer = "192.0.2.70:5", data = "hello" }, r.last_event("data"))
      assert.is_true((r.client:input(SERVER, turn.channel_data(0x4000, "via channel") .. "\0")))
      assert.same({ type = "data", peer = "192.0.2.70:5", channel = 0x4000, data = "via channel" },
        r.last_event("data"))
      assert.equal("\x40\x01\x00\x02hi", turn.channel_data(0x4001, "hi"))
    end)
  end)

  describe("without on_event", function()
    it("queues events for drain()", function()
      local r = rig()
      r.client.on_event = nil
      r.allocate()
      local evs = r.client:drain()
      assert.equal(1, #evs)
      assert.equal("allocated", evs[1].type)
      assert.same({}, r.client:drain())
    end)
  end)
end)
