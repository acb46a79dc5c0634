-- Join protocol (wgoverlay.joinproto): framing, request/response crypto,
-- tampering, garbage, timestamps, replay cache and the leader's handler.
-- Needs build/wgoverlay/core.so.

local core = require "wgoverlay.core"
local token = require "wgoverlay.token"
local jp = require "wgoverlay.joinproto"
local cjson = require "cjson"

local NOW = 1700000000

-- A leader: control key pair and a token store with one token.
local function leader(opts)
  opts = opts or {}
  local priv, pub = core.x25519_keypair()
  local store = {}
  local str, id = token.create(store, { endpoint = "192.0.2.1:51820", control_public = core.key_to_base64(pub),
                                        ttl = opts.ttl, uses = opts.uses, now = NOW })
  return { priv = priv, pub = pub, store = store, token = str, tok = token.decode(str), id = id,
           lookup = function(i) return token.lookup_hash(store, i) end }
end

local function node(name)
  local _, pub = core.generate_keys()
  return { name = name or "node-1", public_key = pub, endpoint = "198.51.100.7:51820", ts = NOW }
end

local function reframe(bytes, mutate)
  local body = cjson.decode(bytes:sub(6))
  mutate(body)
  return bytes:sub(1, 5) .. cjson.encode(body)
end

local function flip(b64)
  local raw = token.base64_decode(b64)
  local i = #raw // 2
  return token.base64_encode(raw:sub(1, i - 1) .. string.char(raw:byte(i) ~ 1) .. raw:sub(i + 1))
end

local RESPONSE = {
  node = { overlay_ip = "10.200.0.17", overlay_ip6 = "fd00:200:0:1::1", slice = "10.200.0.16/28",
           slice6 = "fd00:200:0:1::/64" },
  cluster = { cidr4 = "10.200.0.0/16", zone = "overlay.internal" },
  leader = { name = "leader", public_key = "x", endpoint = "192.0.2.1:51820" },
}

local function copy(t)
  return cjson.decode(cjson.encode(t))
end

describe("joinproto", function()
  describe("framing", function()
    it("recognises control datagrams by the magic", function()
      assert.is_true(jp.is_control("WGO1\1{}"))
      assert.is_true(jp.is_control("WGO1"))
      assert.is_false(jp.is_control("\1\0\0\0 handshake"))
      assert.is_false(jp.is_control("WGO"))
      assert.is_false(jp.is_control(nil))
      assert.is_false(jp.is_control(42))
    end)

    it("round-trips JOIN_ERR and sanitises its text", function()
      local m = assert(jp.decode(jp.error("bad token")))
      assert.equal(jp.JOIN_ERR, m.type)
      assert.equal("JOIN_ERR", m.kind)
      assert.equal("bad token", m.error)
      local weird = assert(jp.decode(jp.error("a\27[31mb\0c" .. ("x"):rep(500))))
      assert.equal("a?[31mb?c", weird.error:sub(1, 9))
      assert.equal(200, #weird.error)
    end)

    it("refuses unknown types, oversize and malformed bodies", function()
      assert.same({ nil, "not a control datagram" }, { jp.decode("WGO1") })
      assert.same({ nil, "not a control datagram" }, { jp.decode("XXXX\1{}") })
      assert.same({ nil, "unknown control message type 9" }, { jp.decode("WGO1\9{}") })
      assert.same({ nil, "unknown control message type 0" }, { jp.decode("WGO1\0{}") })
      assert.same({ nil, "JOIN_ERR: malformed JSON body" }, { jp.decode("WGO1\3{") })
      assert.same({ nil, "JOIN_ERR: malformed JSON body" }, { jp.decode("WGO1\3") })
      assert.same({ nil, "JOIN_ERR: malformed JSON body" }, { jp.decode("WGO1\3\"s\"") })
      assert.same({ nil, "JOIN_ERR: missing error" }, { jp.decode("WGO1\3{}") })
      local big = '{"error":"' .. ("x"):rep(jp.MAX_BODY - 12) .. '"}'
      assert.equal(jp.MAX_BODY, #big)
      assert.is_not_nil(jp.decode("WGO1\3" .. big))
      assert.same({ nil, "control message too large" }, { jp.decode("WGO1\3" .. big .. " ") })
    end)

    it("validates JOIN_REQ and JOIN_RESP fields", function()
      local l = leader()
      local bytes = jp.make_request(l.tok, node())
      local m = assert(jp.decode(bytes))
      assert.equal(jp.JOIN_REQ, m.type)
      assert.equal(l.id, m.id)
      assert.equal(32, #m.eph_raw)
      assert.equal(24, #m.nonce)
      local cases = {
        { function(b) b.i = "NOT-HEX" end, "bad token id" },
        { function(b) b.i = nil end, "bad token id" },
        { function(b) b.e = "short" end, "bad ephemeral key" },
        { function(b) b.n = token.base64_encode(core.random(12)) end, "bad nonce" },
        { function(b) b.c = "" end, "bad ciphertext" },
        { function(b) b.c = 7 end, "bad ciphertext" },
      }
      for _, c in ipairs(cases) do
        local v, err = jp.decode(reframe(bytes, c[1]))
        assert.is_nil(v)
        assert.matches(c[2], err)
      end
      assert.matches("JOIN_RESP: bad nonce", select(2, jp.decode('WGO1\2{"c":"AAAA"}')))
    end)

    it("never raises on garbage (random, prefixed and mutated datagrams)", function()
      math.randomseed(1234)
      local l = leader()
      local valid = { jp.make_request(l.tok, node()), jp.error("x"),
                      jp.seal_response({ id = l.id, eph = "e", key = core.random(32) }, RESPONSE) }
      local function rnd(n)
        local t = {}
        for i = 1, n do t[i] = string.char(math.random(0, 255)) end
        return table.concat(t)
      end
      local function mutate(s)
        local op = math.random(4)
        if op == 1 then return s:sub(1, math.random(0, #s)) end
        local i = math.random(1, #s)
        if op == 2 then return s:sub(1, i - 1) .. string.char(math.random(0, 255)) .. s:sub(i + 1) end
        if op == 3 then return s:sub(1, i) .. rnd(math.random(1, 8)) .. s:sub(i + 1) end
        return s:sub(1, i - 1) .. s:sub(i + 1)
      end
      local jsonish = { "{", "}", "[", "]", '"', ":", ",", "null", "1e999", "-", "\\u0000", "true", "{\"i\":" }
      for n = 1, 5000 do
        local input
        local kind = n % 4
        if kind == 0 then input = rnd(math.random(0, 64))
        elseif kind == 1 then input = "WGO1" .. rnd(math.random(0, 64))
        elseif kind == 2 then input = mutate(valid[math.random(#valid)])
        else
          local parts = { "WGO1", string.char(math.random(1, 3)) }
          for i = 1, math.random(1, 12) do parts[#parts + 1] = jsonish[math.random(#jsonish)] end
          input = table.concat(parts)
        end
        local ok, msg, err = pcall(jp.decode, input)
        assert(ok, "decode raised on input " .. string.format("%q", input))
        assert(msg ~= nil or type(err) == "string")
        local ok2 = pcall(jp.open_request, l.priv, l.lookup, input, NOW)
        assert(ok2, "open_request raised")
        local ok3 = pcall(jp.open_response, { id = l.id, eph = "e", key = core.random(32) }, input)
        assert(ok3, "open_response raised")
      end
      assert.is_nil(jp.decode("WGO1\1" .. ("["):rep(10000)))
    end)
  end)

  describe("request and response", function()
    it("round-trip: the leader reads the payload, the joiner reads the answer", function()
      local l = leader()
      local n = node()
      local bytes, session = assert(jp.make_request(l.token, n))
      assert.equal(l.id, session.id)
      assert.equal(bytes, session.request)
      local req = assert(jp.open_request(l.priv, l.lookup, bytes, NOW + 10))
      assert.equal(l.id, req.id)
      assert.same({ name = n.name, public_key = n.public_key, endpoint = n.endpoint, ts = NOW }, req.payload)
      assert.equal(session.key, req.key)
      local answer = copy(RESPONSE)
      answer.ok = true
      local r = assert(jp.open_response(session, jp.seal_response(req, answer)))
      assert.same(answer, r)
    end)

    it("keeps no ephemeral private key and no secret in the session", function()
      local l = leader()
      local _, session = jp.make_request(l.tok, node())
      local fields = {}
      for k in pairs(session) do fields[#fields + 1] = k end
      table.sort(fields)
      assert.same({ "eph", "id", "key", "leader_endpoint", "request" }, fields)
      assert.is_nil(session.request:find(l.tok.s, 1, true))
      assert.is_nil(session.request:find(token.base64_decode(l.tok.s), 1, true))
    end)

    it("allows a request without an endpoint", function()
      local l = leader()
      local n = node()
      n.endpoint = nil
      local req = assert(jp.open_request(l.priv, l.lookup, (jp.make_request(l.tok, n)), NOW))
      assert.is_nil(req.payload.endpoint)
    end)

    it("a wrong secret fails decryption: 'bad token', no partial request", function()
      local l = leader()
      local forged = { e = l.tok.e, k = l.tok.k, i = l.tok.i, s = core.key_to_base64(core.random(32)) }
      local v, err, partial = jp.open_request(l.priv, l.lookup, (jp.make_request(forged, node())), NOW)
      assert.is_nil(v)
      assert.equal("bad token", err)
      assert.is_nil(partial)
    end)

    it("an unknown token id, or the wrong leader key, is 'bad token'", function()
      local l, other = leader(), leader()
      local bytes = jp.make_request(l.tok, node())
      assert.same({ nil, "bad token" }, { jp.open_request(l.priv, function() return nil end, bytes, NOW) })
      assert.same({ nil, "bad token" }, { jp.open_request(other.priv, l.lookup, bytes, NOW) })
    end)

    it("raises when the lookup returns something other than the stored hash (misuse)", function()
      local l = leader()
      local bytes = jp.make_request(l.tok, node())
      assert.has_error(function() jp.open_request(l.priv, function() return l.tok.s end, bytes, NOW) end)
    end)

    it("refuses tampered ciphertext, nonce, ephemeral key and token id (AD)", function()
      local l = leader()
      local same_hash = function() return token.lookup_hash(l.store, l.id) end
      local bytes = jp.make_request(l.tok, node())
      local _, other_eph = core.x25519_keypair()
      local tampered = {
        reframe(bytes, function(b) b.c = flip(b.c) end),
        reframe(bytes, function(b) b.n = flip(b.n) end),
        reframe(bytes, function(b) b.e = core.key_to_base64(other_eph) end),
        reframe(bytes, function(b) b.i = "00" .. b.i end),
        reframe(bytes, function(b) b.c = token.base64_encode(token.base64_decode(b.c):sub(1, -2)) end),
      }
      for _, t in ipairs(tampered) do
        -- Even a lookup that answers every id with the right hash cannot
        -- open a request whose AD (id, ephemeral key) was changed.
        local v, err = jp.open_request(l.priv, same_hash, t, NOW)
        assert.is_nil(v)
        assert.equal("bad token", err)
      end
      assert.is_not_nil(jp.open_request(l.priv, same_hash, bytes, NOW))
    end)

    it("refuses a low-order ephemeral key", function()
      local l = leader()
      local bytes = reframe(jp.make_request(l.tok, node()), function(b) b.e = token.base64_encode(("\0"):rep(32)) end)
      assert.same({ nil, "bad token" }, { jp.open_request(l.priv, l.lookup, bytes, NOW) })
    end)

    it("refuses timestamps more than 5 minutes off, with a sealed refusal possible", function()
      local l = leader()
      for _, skew in ipairs({ -300, 0, 300 }) do
        local n = node()
        n.ts = NOW + skew
        assert.is_not_nil(jp.open_request(l.priv, l.lookup, (jp.make_request(l.tok, n)), NOW))
      end
      for _, skew in ipairs({ -301, 301, -86400 }) do
        local n = node()
        n.ts = NOW + skew
        local bytes, session = jp.make_request(l.tok, n)
        local v, err, partial = jp.open_request(l.priv, l.lookup, bytes, NOW)
        assert.is_nil(v)
        assert.matches("timestamp out of range", err)
        assert.is_not_nil(partial)
        local r, rerr, final = jp.open_response(session, jp.seal_response(partial, { ok = false, error = err }))
        assert.is_nil(r)
        assert.matches("^join refused: request timestamp out of range", rerr)
        assert.is_true(final)
      end
    end)

    it("validates the joiner's payload on both sides", function()
      local l = leader()
      local n = node()
      n.name = "Bad_Name"
      assert.matches("bad node name", select(2, jp.make_request(l.tok, n)))
      n = node()
      n.public_key = "nope"
      assert.equal("bad public key", select(2, jp.make_request(l.tok, n)))
      n = node()
      n.endpoint = "nowhere"
      assert.matches("bad endpoint", select(2, jp.make_request(l.tok, n)))
      assert.matches("expected prefix", select(2, jp.make_request("garbage", node())))
      for _, good in ipairs({ "a", "n1", "node-17", ("x"):rep(63) }) do assert.is_true(jp.valid_name(good), good) end
      for _, bad in ipairs({ "", "-a", "a-", "A", "a.b", ("x"):rep(64), 5 }) do
        assert.is_false(jp.valid_name(bad), tostring(bad))
      end
    end)

    it("the joiner refuses tampered, foreign and reflected responses", function()
      local l = leader()
      local bytes, session = jp.make_request(l.tok, node())
      local req = jp.open_request(l.priv, l.lookup, bytes, NOW)
      local good = jp.seal_response(req, { ok = true, node = RESPONSE.node })
      local _, other_session = jp.make_request(l.tok, node("other"))
      local bad = {
        reframe(good, function(b) b.c = flip(b.c) end),
        reframe(good, function(b) b.n = flip(b.n) end),
        -- The request itself sent back as a response (same key, other AD).
        "WGO1\2" .. bytes:sub(6),
      }
      for _, b in ipairs(bad) do
        local r, err, final = jp.open_response(session, b)
        assert.is_nil(r)
        assert.equal("bad response (does not authenticate)", err)
        assert.is_false(final)
      end
      assert.is_nil(jp.open_response(other_session, good))
      assert.is_not_nil(jp.open_response(session, good))
      assert.same({ nil, "unexpected JOIN_REQ", false }, { jp.open_response(session, bytes) })
      local _, missing = jp.open_response(session, jp.seal_response(req, { ok = true }))
      assert.matches("bad response: missing node", missing)
    end)

    it("JOIN_ERR reads as an unauthenticated refusal", function()
      local l = leader()
      local _, session = jp.make_request(l.tok, node())
      assert.same({ nil, "join refused: bad token", false }, { jp.open_response(session, jp.error("bad token")) })
    end)
  end)

  describe("replay cache", function()
    it("stores answers per (token id, public key)", function()
      local c = jp.replay_cache.new(4)
      assert.is_nil(c:get("a", "k1"))
      c:put("a", "k1", { n = 1 })
      c:put("a", "k2", { n = 2 })
      c:put("b", "k1", { n = 3 })
      assert.same({ n = 1 }, c:get("a", "k1"))
      assert.same({ n = 2 }, c:get("a", "k2"))
      assert.same({ n = 3 }, c:get("b", "k1"))
      assert.equal(3, c:size())
      c:put("a", "k1", { n = 4 })
      assert.same({ n = 4 }, c:get("a", "k1"))
      assert.equal(3, c:size())
    end)

    it("evicts the least recently used entry beyond its bound", function()
      local c = jp.replay_cache.new(3)
      c:put("t", "1", 1)
      c:put("t", "2", 2)
      c:put("t", "3", 3)
      assert.equal(1, c:get("t", "1")) -- refresh 1: 2 is now the oldest
      c:put("t", "4", 4)
      assert.equal(3, c:size())
      assert.is_nil(c:get("t", "2"))
      assert.equal(1, c:get("t", "1"))
      assert.equal(3, c:get("t", "3"))
      assert.equal(4, c:get("t", "4"))
      for i = 5, 100 do c:put("t", tostring(i), i) end
      assert.equal(3, c:size())
      assert.equal(100, c:get("t", "100"))
      assert.is_nil(c:get("t", "97"))
    end)

    it("keys cannot collide across the id/public key boundary", function()
      local c = jp.replay_cache.new(8)
      c:put("ab", "c", 1)
      assert.is_nil(c:get("a", "bc"))
    end)

    it("validates its bound", function()
      assert.has_error(function() jp.replay_cache.new(0) end)
      assert.equal(0, jp.replay_cache.new():size())
    end)
  end)

  describe("leader handler", function()
    -- A leader's admit: one slice per name (allocated once), a name held
    -- by another key refused, as the daemon's Node:admit.
    local function setup(opts)
      local l = leader(opts)
      local admitted, retried, registry, slices = {}, {}, {}, {}
      local ctx = {
        control_private = l.priv, tokens = l.store, cache = jp.replay_cache.new(16),
        seen = jp.replay_cache.new(64), joins = {},
        admit = function(p, id, retry)
          admitted[#admitted + 1] = p.name
          if retry then retried[#retried + 1] = p.name end
          if p.name == "refused" then return nil, "address space exhausted" end
          if registry[p.name] and registry[p.name] ~= p.public_key then
            return nil, string.format("node name \"%s\" already in use", p.name)
          end
          registry[p.name] = p.public_key
          local n = 0
          for _ in pairs(slices) do n = n + 1 end
          slices[p.name] = slices[p.name] or string.format("10.200.0.%d/28", 16 * (n + 1))
          local r = copy(RESPONSE)
          r.node.slice = slices[p.name]
          return r
        end,
      }
      return l, ctx, admitted, retried, registry
    end

    it("admits once, answers repeats identically, consumes once; a copy of a request gets nothing", function()
      local l, ctx, admitted = setup()
      local n = node()
      local bytes, session = jp.make_request(l.tok, n)
      local reply, info = jp.handle(ctx, bytes, NOW)
      assert.is_true(info.joined)
      assert.is_nil(info.replayed)
      local r = assert(jp.open_response(session, reply))
      assert.equal("10.200.0.16/28", r.node.slice)
      assert.equal(0, l.store[l.id].uses_left)
      -- The same datagram again (a duplicate, or a replay from anywhere):
      -- each request is answered once.
      local reply2, info2 = jp.handle(ctx, bytes, NOW + 1)
      assert.is_nil(reply2)
      assert.is_true(info2.duplicate)
      assert.matches("already answered", info2.error)
      -- A new request from the same node (new ephemeral key): same answer.
      local bytes3, session3 = jp.make_request(l.tok, n)
      local reply3, info3 = jp.handle(ctx, bytes3, NOW + 2)
      assert.is_true(info3.replayed)
      assert.same(r, jp.open_response(session3, reply3))
      assert.same({ n.name }, admitted)
      assert.equal(0, l.store[l.id].uses_left)
      assert.same({ [n.name] = { token = l.id, public_key = n.public_key, at = NOW } }, ctx.joins)
    end)

    it("a retry after a lost answer and a leader restart: same slice, the single-use token not used again", function()
      local l, ctx, admitted, retried = setup()
      jp.handle(ctx, (jp.make_request(l.tok, node("other"))), NOW) -- takes the first slice, on its own token
      l.store[l.id].uses_left = 1
      local n = node("a")
      local _, info = jp.handle(ctx, (jp.make_request(l.tok, n)), NOW) -- the answer is lost
      assert.is_true(info.joined)
      assert.equal(0, l.store[l.id].uses_left)
      -- The leader restarts: answers and seen requests are gone, the
      -- tokens and admission records come back from its state file.
      ctx.tokens = cjson.decode(cjson.encode(l.store))
      ctx.joins = cjson.decode(cjson.encode(ctx.joins))
      ctx.cache, ctx.seen = jp.replay_cache.new(16), jp.replay_cache.new(64)
      local bytes, session = jp.make_request(l.tok, { name = "a", public_key = n.public_key, endpoint = n.endpoint,
                                                      ts = NOW + 60 })
      local reply, info2 = jp.handle(ctx, bytes, NOW + 60)
      assert.is_true(info2.joined)
      assert.is_true(info2.retried)
      local r = assert(jp.open_response(session, reply))
      assert.equal("10.200.0.32/28", r.node.slice)
      assert.same({ "other", "a", "a" }, admitted)
      assert.same({ "a" }, retried)
      assert.equal(0, ctx.tokens[l.id].uses_left)
      assert.equal(NOW, ctx.joins.a.at) -- the reclaim clock is not reset by retries
    end)

    it("a different key with that name is refused and uses nothing", function()
      local l, ctx = setup({ uses = 2 })
      local n = node("a")
      jp.handle(ctx, (jp.make_request(l.tok, n)), NOW)
      assert.equal(1, l.store[l.id].uses_left)
      local bytes, session = jp.make_request(l.tok, node("a"))
      local reply, info = jp.handle(ctx, bytes, NOW)
      assert.same({ nil, 'join refused: node name "a" already in use', true }, { jp.open_response(session, reply) })
      assert.is_nil(info.retried)
      assert.equal(1, l.store[l.id].uses_left)
      assert.equal(n.public_key, ctx.joins.a.public_key)
    end)

    it("a retry is admitted after the token expired; once its record is gone it is 'token already used'", function()
      local l, ctx, _, retried = setup({ ttl = 60 })
      local n = node("a")
      jp.handle(ctx, (jp.make_request(l.tok, n)), NOW)
      ctx.cache = jp.replay_cache.new(16) -- (a restart)
      local later = { name = "a", public_key = n.public_key, endpoint = n.endpoint, ts = NOW + 120 }
      local bytes, session = jp.make_request(l.tok, later)
      assert.is_not_nil(jp.open_response(session, (jp.handle(ctx, bytes, NOW + 120))))
      assert.same({ "a" }, retried)
      -- reclaimed (or came up): the record goes, and the use is not given back
      ctx.joins.a = nil
      ctx.cache = jp.replay_cache.new(16)
      local bytes2, session2 = jp.make_request(l.tok, later)
      assert.same({ nil, "join refused: token expired", true },
        { jp.open_response(session2, (jp.handle(ctx, bytes2, NOW + 120))) })
      local l2, ctx2 = setup()
      local n2 = node("b")
      jp.handle(ctx2, (jp.make_request(l2.tok, n2)), NOW)
      ctx2.joins.b = nil
      local bytes3, session3 = jp.make_request(l2.tok, n2)
      assert.same({ nil, "join refused: token already used", true },
        { jp.open_response(session3, (jp.handle(ctx2, bytes3, NOW))) })
    end)

    it("another token with the same joiner is a new admission: it uses that token", function()
      local l, ctx = setup()
      local n = node("a")
      jp.handle(ctx, (jp.make_request(l.tok, n)), NOW)
      local str2, id2 = token.create(l.store, { endpoint = "192.0.2.1:51820", control_public = core.key_to_base64(l.pub),
                                                now = NOW })
      local bytes, session = jp.make_request(str2, n)
      local r = assert(jp.open_response(session, (jp.handle(ctx, bytes, NOW))))
      assert.equal("10.200.0.16/28", r.node.slice)
      assert.equal(0, l.store[id2].uses_left)
      assert.equal(id2, ctx.joins.a.token)
    end)

    it("refuses a second node on a single-use token: 'token already used'", function()
      local l, ctx = setup()
      jp.handle(ctx, (jp.make_request(l.tok, node("first"))), NOW)
      local bytes, session = jp.make_request(l.tok, node("second"))
      local reply, info = jp.handle(ctx, bytes, NOW)
      assert.equal("token already used", info.error)
      assert.same({ nil, "join refused: token already used", true }, { jp.open_response(session, reply) })
    end)

    it("refuses an expired token with a sealed 'token expired'", function()
      local l, ctx, admitted = setup({ ttl = 60 })
      local n = node()
      n.ts = NOW + 120
      local bytes, session = jp.make_request(l.tok, n)
      local reply = jp.handle(ctx, bytes, NOW + 120)
      assert.same({ nil, "join refused: token expired", true }, { jp.open_response(session, reply) })
      assert.same({}, admitted)
    end)

    it("answers a wrong secret with JOIN_ERR 'bad token' and allocates nothing", function()
      local l, ctx, admitted = setup()
      local forged = { e = l.tok.e, k = l.tok.k, i = l.tok.i, s = core.key_to_base64(core.random(32)) }
      local bytes, session = jp.make_request(forged, node())
      local reply, info = jp.handle(ctx, bytes, NOW)
      assert.equal("bad token", info.error)
      assert.same({ nil, "join refused: bad token", false }, { jp.open_response(session, reply) })
      assert.same({}, admitted)
      assert.equal(1, l.store[l.id].uses_left)
    end)

    it("does not consume the token when admission fails", function()
      local l, ctx = setup()
      local bytes, session = jp.make_request(l.tok, node("refused"))
      local reply = jp.handle(ctx, bytes, NOW)
      assert.same({ nil, "join refused: address space exhausted", true }, { jp.open_response(session, reply) })
      assert.equal(1, l.store[l.id].uses_left)
      local bytes2, session2 = jp.make_request(l.tok, node("fine"))
      assert.is_not_nil(jp.open_response(session2, (jp.handle(ctx, bytes2, NOW))))
    end)

    it("counts uses of a multi-use token across nodes", function()
      local l, ctx = setup({ uses = 3 })
      for i = 1, 3 do
        local bytes, session = jp.make_request(l.tok, node("n" .. i))
        assert.is_not_nil(jp.open_response(session, (jp.handle(ctx, bytes, NOW))))
      end
      local bytes, session = jp.make_request(l.tok, node("n4"))
      assert.equal("join refused: token already used", select(2, jp.open_response(session, (jp.handle(ctx, bytes, NOW)))))
    end)

    it("ignores garbage and non-requests (no reply)", function()
      local _, ctx = setup()
      assert.is_nil((jp.handle(ctx, "junk", NOW)))
      assert.is_nil((jp.handle(ctx, jp.error("x"), NOW)))
    end)

    it("requests are padded (authenticated) to REQUEST_MIN; stripping the padding breaks them", function()
      local l = leader()
      local bytes = jp.make_request(l.tok, node())
      assert.is_true(#bytes >= jp.REQUEST_MIN and #bytes <= jp.REQUEST_MIN + 4, tostring(#bytes))
      local bare = jp.make_request(l.tok, node(), 0)
      assert.is_true(#bare < 400, tostring(#bare))
      for _, want in ipairs({ 1500, 3000, jp.REQUEST_MAX, jp.REQUEST_MAX * 2 }) do
        local b = jp.make_request(l.tok, node(), want)
        assert.is_true(#b >= math.min(want, jp.REQUEST_MAX - 8) and #b <= jp.REQUEST_MAX, want .. ": " .. #b)
        assert.is_not_nil(jp.open_request(l.priv, l.lookup, b, NOW))
      end
      -- the padding is inside the ciphertext: a shortened copy does not open
      local cut = reframe(bytes, function(b)
        local raw = token.base64_decode(b.c)
        b.c = token.base64_encode(raw:sub(1, 200) .. raw:sub(-16))
      end)
      assert.same({ nil, "bad token" }, { jp.open_request(l.priv, l.lookup, cut, NOW) })
    end)

    it("never answers with more bytes than the request: a large answer asks for a larger request", function()
      local l, ctx = setup()
      local big = copy(RESPONSE)
      big.cluster.stun = {}
      for i = 1, 40 do big.cluster.stun[i] = "203.0.113." .. i .. ":3478" end
      ctx.admit = function() return copy(big) end
      local n = node()
      local bytes, session = jp.make_request(l.tok, n) -- 1200 bytes: too small for this answer
      local reply, info = jp.handle(ctx, bytes, NOW)
      assert.is_true(#reply <= #bytes)
      assert.is_true(info.joined)
      assert.is_true(info.too_large > #bytes)
      local r, err, final, want = jp.open_response(session, reply)
      assert.is_nil(r)
      assert.is_false(final)
      assert.matches("needs a %d+%-byte request", err)
      assert.is_true(want >= info.too_large)
      assert.equal(0, l.store[l.id].uses_left)
      -- the joiner asks again, padded as asked: the whole answer, still no larger
      local bytes2, session2 = jp.make_request(l.tok, n, want)
      local reply2 = jp.handle(ctx, bytes2, NOW)
      assert.is_true(#reply2 <= #bytes2)
      assert.same(big.cluster.stun, assert(jp.open_response(session2, reply2)).cluster.stun)
      -- refusals and JOIN_ERR are smaller than any request
      for _, case in ipairs({
        { jp.make_request(l.tok, node("x"), 0) },                                  -- token already used
        { jp.make_request({ e = l.tok.e, k = l.tok.k, i = l.tok.i, s = core.key_to_base64(core.random(32)) },
                          node(), 0) },                                            -- bad token
      }) do
        local rb = jp.handle(ctx, case[1], NOW)
        assert.is_true(#rb <= #case[1], #rb .. " > " .. #case[1])
      end
      -- an answer that cannot fit even as a hint is not sent at all
      local tiny_ctx = { control_private = l.priv, tokens = l.store, joins = {}, admit = ctx.admit }
      local unpadded = jp.make_request(l.tok, node("y"), 0)
      l.store[l.id].uses_left = 1
      local rr, i2 = jp.handle(tiny_ctx, unpadded, NOW)
      assert.is_true(rr == nil or #rr <= #unpadded)
      assert.is_true(i2.joined)
    end)

    it("the answer carries a trimmed leader record", function()
      local resp = copy(RESPONSE)
      resp.leader = { name = "leader", public_key = "k", endpoint = "192.0.2.1:51820", overlay_ip = "10.200.0.1",
                      overlay_ip6 = "fd00:200::1", slice = "10.200.0.0/28", slice6 = "fd00:200::/64",
                      containers = { { name = "c", ip = "10.200.0.2" } }, candidates = { key = "x", list = {} } }
      local t = jp.trim_response(resp)
      assert.same({ name = "leader", public_key = "k", endpoint = "192.0.2.1:51820", overlay_ip = "10.200.0.1",
                    overlay_ip6 = "fd00:200::1", slice = "10.200.0.0/28", slice6 = "fd00:200::/64" }, t.leader)
      assert.same(resp.node, t.node)
      assert.is_not_nil(resp.leader.containers) -- the caller's table is left alone
    end)
  end)

  describe("half-admitted nodes", function()
    local K1, K2 = "key-one", "key-two"
    local function joins()
      return {
        fresh = { token = "t1", public_key = K1, at = 1000 },
        old = { token = "t1", public_key = K2, at = 400 },
        up = { token = "t2", public_key = "k-up", at = 100 },
        removed = { token = "t3", public_key = "k-rm", at = 900 },
        replaced = { token = "t4", public_key = "k-old", at = 900 },
        broken = { token = "t5", public_key = "k-b" },
      }
    end
    local members = { fresh = K1, old = K2, up = "k-up", replaced = "k-new", broken = "k-b" }

    it("reclaims what was admitted long enough ago and never came up; drops the rest", function()
      local plan = jp.review_admissions(joins(), { now = 1000, reclaim_after = 600, members = members,
                                                   up = { up = true } })
      assert.same({ "old" }, plan.reclaim)
      assert.same({ "broken", "removed", "replaced", "up" }, plan.done)
      plan = jp.review_admissions(joins(), { now = 1599, reclaim_after = 600, members = members, up = {} })
      assert.same({ "old", "up" }, plan.reclaim)
      plan = jp.review_admissions(joins(), { now = 1600, reclaim_after = 600, members = members, up = {} })
      assert.same({ "fresh", "old", "up" }, plan.reclaim)
      -- nothing before `not_before` (the grace after a leader start)
      plan = jp.review_admissions(joins(), { now = 1600, reclaim_after = 600, members = members, up = {},
                                             not_before = 1601 })
      assert.same({}, plan.reclaim)
      assert.same({ "broken", "removed", "replaced" }, plan.done)
      assert.same({ done = {}, reclaim = {} }, jp.review_admissions({}, { now = 1, reclaim_after = 1, members = {},
                                                                          up = {} }))
    end)

    it("takes the reclaim time from the environment value, else 600 s", function()
      assert.equal(600, jp.RECLAIM_AFTER)
      assert.equal(600, jp.reclaim_after(nil))
      assert.equal(600, jp.reclaim_after(""))
      assert.equal(600, jp.reclaim_after("0"))
      assert.equal(600, jp.reclaim_after("-5"))
      assert.equal(600, jp.reclaim_after("soon"))
      assert.equal(600, jp.reclaim_after("inf"))
      assert.equal(8, jp.reclaim_after("8"))
      assert.equal(8, jp.reclaim_after("8.9"))
      assert.equal("WGO_JOIN_RECLAIM", jp.RECLAIM_ENV)
    end)

    it("the replay cache forgets a reclaimed joiner's answer", function()
      local c = jp.replay_cache.new(4)
      c:put("t", "k", 1)
      c:put("t", "k2", 2)
      assert.is_true(c:delete("t", "k"))
      assert.is_false(c:delete("t", "k"))
      assert.is_nil(c:get("t", "k"))
      assert.equal(2, c:get("t", "k2"))
      assert.equal(1, c:size())
      for i = 1, 10 do c:put("t", tostring(i), i) end
      assert.equal(4, c:size())
    end)
  end)

  describe("log rate limit", function()
    it("one line per interval, then the count of lines held back", function()
      local r = jp.rate_limiter(10)
      assert.same({ true, 0 }, { r:hit(100) })
      assert.is_false(r:hit(101))
      assert.is_false(r:hit(109.9))
      assert.is_nil(r:flush(109.9))
      assert.same({ true, 2 }, { r:hit(110) })
      assert.is_false(r:hit(111))
      assert.is_nil(r:flush(115))
      assert.equal(1, r:flush(120))
      assert.is_nil(r:flush(140))
      assert.is_false(r:hit(125)) -- the flush counted as a line
      assert.same({ true, 1 }, { r:hit(130) })
      assert.equal(10, jp.rate_limiter().interval)
    end)
  end)

  it("no error string ever contains the secret, its hash or the derived key", function()
    local l = leader({ ttl = 60 })
    local secret_b64 = l.tok.s
    local secret_raw = token.base64_decode(secret_b64)
    local hash = l.store[l.id].hash
    local errors = {}
    local function collect(...)
      for i = 1, select("#", ...) do
        local v = select(i, ...)
        if type(v) == "string" then errors[#errors + 1] = v end
      end
    end
    local n = node()
    local bytes, session = jp.make_request(l.tok, n)
    collect(select(2, jp.open_request(l.priv, l.lookup, reframe(bytes, function(b) b.c = flip(b.c) end), NOW)))
    collect(select(2, jp.open_request(l.priv, l.lookup, bytes, NOW + 1000)))
    collect(select(2, jp.open_response(session, "WGO1\2" .. bytes:sub(6))))
    collect(select(2, jp.open_response(session, jp.error("bad token"))))
    collect(select(2, token.check(l.store, l.id, core.key_to_base64(core.random(32)), NOW)))
    collect(select(2, token.check(l.store, l.id, secret_b64, NOW + 100)))
    collect(select(2, token.consume(l.store, l.id, NOW + 100)))
    collect(select(2, token.decode(l.token:sub(1, -3))))
    collect(select(2, token.decode(l.token .. "!")))
    local ok, raised = pcall(jp.open_request, l.priv, function() return secret_b64 end, bytes, NOW)
    assert.is_false(ok)
    collect(tostring(raised))
    assert.equal(10, #errors, table.concat(errors, " | "))
    for _, e in ipairs(errors) do
      for _, s in ipairs({ secret_b64, secret_raw, hash, session.key }) do
        assert.is_nil(e:find(s, 1, true), e)
      end
    end
  end)
end)
