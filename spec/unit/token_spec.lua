-- Join tokens (wgoverlay.token): base64 codecs, encode/decode, the leader's
-- store (create, check, consume, prune).  Needs build/wgoverlay/core.so.

local core = require "wgoverlay.core"
local token = require "wgoverlay.token"
local cjson = require "cjson"

local NOW = 1700000000
local ENDPOINT = "192.0.2.1:51820"

local function control_public()
  local _, pub = core.generate_keys()
  return pub
end

local function new_token(store, opts)
  opts = opts or {}
  opts.endpoint = opts.endpoint or ENDPOINT
  opts.control_public = opts.control_public or control_public()
  opts.now = opts.now or NOW
  return token.create(store, opts)
end

-- Encodes an arbitrary table the way a token is framed.
local function wrap(t)
  return "wgo1_" .. token.base64url_encode(cjson.encode(t))
end

describe("token", function()
  describe("base64url (RFC 4648 §5, no padding)", function()
    -- RFC 4648 §10 test vectors, padding removed.
    local vectors = { [""] = "", f = "Zg", fo = "Zm8", foo = "Zm9v", foob = "Zm9vYg",
                      fooba = "Zm9vYmE", foobar = "Zm9vYmFy" }

    it("matches the RFC 4648 vectors", function()
      for plain, enc in pairs(vectors) do
        assert.equal(enc, token.base64url_encode(plain))
        assert.equal(plain, token.base64url_decode(enc))
      end
    end)

    it("uses - and _ instead of + and /", function()
      assert.equal("-_8", token.base64url_encode("\251\255"))
      assert.equal("\251\255", token.base64url_decode("-_8"))
      assert.is_nil(token.base64url_decode("+/8"))
    end)

    it("round-trips random bytes of every length 0..64", function()
      for n = 0, 64 do
        local b = core.random(n)
        assert.equal(b, token.base64url_decode(token.base64url_encode(b)))
      end
    end)

    it("rejects padding, bad characters, impossible lengths and non-canonical tails", function()
      for _, bad in ipairs({ "Zg==", "Zm8=", "Z", "Zm9vY", "Zm 9v", "Zm9v\n", "Zh", "Zm9", "Zm+v", "é",
                               "Zm!", "Zm9vYm!", "!m9", "Z!9v" }) do
        local v, err = token.base64url_decode(bad)
        assert.is_nil(v, bad)
        assert.matches("^bad base64", err)
      end
      assert.is_nil(token.base64url_decode(42))
    end)

    it("accepts exactly the canonical encodings (random strings)", function()
      math.randomseed(99)
      local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=! "
      for _ = 1, 3000 do
        local t = {}
        for i = 1, math.random(0, 12) do
          local j = math.random(1, math.random(2) == 1 and 64 or #chars)
          t[i] = chars:sub(j, j)
        end
        local s = table.concat(t)
        local raw = token.base64url_decode(s)
        if raw then assert.equal(s, token.base64url_encode(raw)) end
        local raw2 = token.base64_decode(s)
        if raw2 then assert.equal(s, token.base64_encode(raw2)) end
      end
    end)
  end)

  describe("base64 (standard, padded)", function()
    it("matches core.key_to_base64 for 32-byte keys and round-trips", function()
      for _ = 1, 20 do
        local k = core.random(32)
        assert.equal(core.key_to_base64(k), token.base64_encode(k))
        assert.equal(k, token.base64_decode(token.base64_encode(k)))
      end
      assert.equal("Zm9vYg==", token.base64_encode("foob"))
    end)

    it("requires padding and rejects non-canonical encodings", function()
      for _, bad in ipairs({ "Zm9vYg", "Zm9vYg=", "Zm9vYh==", "Zm8==", "=Zm8", "Zm=8", "Zm9v====", "-_8=",
                             "Zm!=", "Z!==" }) do
        assert.is_nil(token.base64_decode(bad), bad)
      end
    end)
  end)

  describe("encode / decode", function()
    local fields = { e = ENDPOINT, k = control_public(), i = "0123456789abcdef",
                     s = core.key_to_base64(core.random(32)) }

    it("round-trips and starts with wgo1_", function()
      local s = token.encode(fields)
      assert.matches("^wgo1_[%w_-]+$", s)
      assert.same(fields, token.decode(s))
      assert.same(fields, token.decode("  " .. s .. "\n"))
    end)

    it("does not escape '/' (shorter tokens, still valid JSON)", function()
      local json = token.base64url_decode(token.encode(fields):sub(6))
      assert.is_nil(json:find("\\", 1, true))
      assert.same(fields, cjson.decode(json))
    end)

    it("rejects garbage with clear errors", function()
      local cases = {
        { 42, "token must be a string" },
        { "", "expected prefix wgo1_" },
        { "wgo2_abc", "expected prefix wgo1_" },
        { "wgo1_***", "bad token encoding %(base64url%)" },
        { "wgo1_Zg==", "bad token encoding %(base64url%)" },
        { "wgo1_" .. token.base64url_encode("not json"), "JSON object expected" },
        { "wgo1_" .. token.base64url_encode("[1,2]"), "missing field 'e'" },
        { "wgo1_" .. token.base64url_encode('"str"'), "JSON object expected" },
        { "wgo1_" .. ("A"):rep(4000), "token too long" },
      }
      for _, c in ipairs(cases) do
        local v, err = token.decode(c[1])
        assert.is_nil(v)
        assert.matches(c[2], err)
      end
    end)

    it("names the missing or bad field", function()
      for _, f in ipairs({ "e", "k", "i", "s" }) do
        local t = {}
        for k, v in pairs(fields) do if k ~= f then t[k] = v end end
        local v, err = token.decode(wrap(t))
        assert.is_nil(v)
        assert.equal("token is missing field '" .. f .. "'", err)
      end
      local function with(k, v)
        local t = {}
        for kk, vv in pairs(fields) do t[kk] = vv end
        t[k] = v
        return t
      end
      assert.matches("bad leader key", select(2, token.decode(wrap(with("k", "not a key")))))
      assert.matches("bad leader key", select(2, token.decode(wrap(with("k", token.base64_encode(core.random(31)))))))
      assert.matches("bad token id", select(2, token.decode(wrap(with("i", "XYZ")))))
      assert.matches("bad token secret", select(2, token.decode(wrap(with("s", "c2hvcnQ=")))))
      assert.matches("bad leader endpoint", select(2, token.decode(wrap(with("e", "no-port")))))
      assert.matches("must be a string", select(2, token.decode(wrap(with("e", 5)))))
    end)

    it("never puts the secret in an error message", function()
      local secret = fields.s
      local t = { e = "bad", k = fields.k, i = fields.i, s = secret }
      local _, err = token.decode(wrap(t))
      assert.is_nil(err:find(secret, 1, true))
      local ok, raised = pcall(token.encode, t)
      assert.is_false(ok)
      assert.is_nil(tostring(raised):find(secret, 1, true))
    end)

    it("raises on encoding invalid fields (misuse)", function()
      assert.has_error(function() token.encode({ e = ENDPOINT }) end)
    end)
  end)

  describe("store", function()
    it("creates a token whose store entry holds only id, hash, expiry and uses", function()
      local store = {}
      local pub = control_public()
      local s, id = new_token(store, { ttl = 600, uses = 3, control_public = pub })
      local t = assert(token.decode(s))
      assert.equal(id, t.i)
      assert.equal(pub, t.k)
      assert.equal(ENDPOINT, t.e)
      local entry = store[id]
      assert.same({ "expires", "hash", "id", "uses_left" }, (function()
        local ks = {}
        for k in pairs(entry) do ks[#ks + 1] = k end
        table.sort(ks)
        return ks
      end)())
      assert.equal(NOW + 600, entry.expires)
      assert.equal(3, entry.uses_left)
      assert.equal(token.hash(token.base64_decode(t.s)), entry.hash)
      -- The secret appears nowhere in the persisted store.
      local json = cjson.encode(store)
      assert.is_nil(json:find(t.s, 1, true))
      assert.is_nil(json:find(t.s:gsub("/", "\\/"), 1, true))
    end)

    it("defaults to one use and one hour", function()
      local store = {}
      local _, id = new_token(store)
      assert.equal(1, store[id].uses_left)
      assert.equal(NOW + 3600, store[id].expires)
    end)

    it("checks the secret in constant time and refuses a wrong one", function()
      local store = {}
      local s, id = new_token(store)
      local t = token.decode(s)
      assert.is_true(token.check(store, id, t.s, NOW))
      assert.is_true(token.check(store, id, token.base64_decode(t.s), NOW))
      local ok, err = token.check(store, id, core.key_to_base64(core.random(32)), NOW)
      assert.is_nil(ok)
      assert.equal("bad token", err)
      assert.equal("bad token", select(2, token.check(store, id, "garbage", NOW)))
      assert.equal("unknown token", select(2, token.check(store, "feedface", t.s, NOW)))
    end)

    it("refuses expired tokens and prunes them a day later", function()
      local store = {}
      local s, id = new_token(store, { ttl = 60 })
      local t = token.decode(s)
      assert.is_true(token.check(store, id, t.s, NOW + 59))
      assert.equal("token expired", select(2, token.check(store, id, t.s, NOW + 60)))
      assert.equal("token expired", select(2, token.consume(store, id, NOW + 61)))
      assert.equal("token expired", select(2, token.usable(store, id, NOW + 61)))
      assert.is_not_nil(token.lookup_hash(store, id))
      assert.equal(1, token.prune(store, NOW + 60 + token.PRUNE_AFTER))
      assert.is_nil(store[id])
      assert.equal("unknown token", select(2, token.check(store, id, t.s, NOW + 60 + token.PRUNE_AFTER)))
    end)

    it("prunes on create, and prune takes an explicit grace", function()
      local store = {}
      local _, old = new_token(store, { ttl = 10 })
      local _, young = new_token(store, { ttl = 100000, now = NOW + 10 + token.PRUNE_AFTER })
      assert.is_nil(store[old])
      assert.is_not_nil(store[young])
      assert.equal(0, token.prune(store, NOW + 100, 0))
      assert.equal(1, token.prune(store, NOW + 10 + token.PRUNE_AFTER + 100000, 0))
    end)

    it("counts uses: consume until exhausted, then 'token already used'", function()
      local store = {}
      local s, id = new_token(store, { uses = 2 })
      local t = token.decode(s)
      assert.same({ true, 1 }, { token.consume(store, id, NOW) })
      assert.same({ true, 0 }, { token.consume(store, id, NOW + 1) })
      assert.same({ nil, "token already used" }, { token.consume(store, id, NOW + 2) })
      assert.equal("token already used", select(2, token.check(store, id, t.s, NOW + 2)))
      -- Used-up tokens still answer lookups until they expire and are pruned.
      assert.is_not_nil(token.lookup_hash(store, id))
      assert.same({ nil, "unknown token" }, { token.consume(store, "00", NOW) })
    end)

    it("survives a JSON round trip of the store (numbers come back as floats)", function()
      local store = {}
      local s, id = new_token(store, { uses = 2 })
      local t = token.decode(s)
      local reloaded = cjson.decode(cjson.encode(store))
      assert.is_true(token.check(reloaded, id, t.s, NOW))
      assert.same({ true, 1 }, { token.consume(reloaded, id, NOW) })
      assert.equal("integer", math.type(reloaded[id].uses_left))
    end)

    it("treats malformed entries as unknown and prunes them", function()
      local store = { bad = { id = "bad", hash = "xx", expires = "soon", uses_left = 1 } }
      assert.equal("unknown token", select(2, token.usable(store, "bad", NOW)))
      assert.is_nil(store.bad)
      assert.is_nil(token.lookup_hash({ x = 5 }, "x"))
    end)

    it("lists tokens without hashes and revokes them", function()
      local store = {}
      local _, a = new_token(store, { ttl = 100 })
      local _, b = new_token(store, { ttl = 50 })
      local list = token.list(store, NOW + 60)
      assert.equal(2, #list)
      assert.equal(b, list[1].id)
      assert.is_true(list[1].expired)
      assert.is_false(list[2].expired)
      assert.is_nil(list[1].hash)
      assert.is_true(token.revoke(store, a))
      assert.same({ nil, "unknown token" }, { token.revoke(store, a) })
    end)

    it("makes distinct ids and secrets", function()
      local store, seen = {}, {}
      for _ = 1, 200 do
        local s, id = new_token(store, { ttl = 100 })
        local t = token.decode(s)
        assert.is_nil(seen[id])
        assert.is_nil(seen[t.s])
        seen[id], seen[t.s] = true, true
      end
    end)

    it("validates create options", function()
      assert.has_error(function() token.create({}, { ttl = 0, endpoint = ENDPOINT, control_public = control_public() }) end)
      assert.has_error(function() token.create({}, { uses = 1.5, endpoint = ENDPOINT, control_public = control_public() }) end)
      assert.has_error(function() token.create({}, { ttl = 10 }) end)
    end)
  end)

  -- One use is one admitted joiner, not one request (joinproto.handle).
  describe("uses and retries", function()
    local jp = require "wgoverlay.joinproto"

    local function leader_ctx(uses, ttl)
      local priv, pub = core.x25519_keypair()
      local store = {}
      local str, id = new_token(store, { control_public = core.key_to_base64(pub), uses = uses, ttl = ttl })
      local slices, keys = {}, {}
      local ctx = { control_private = priv, tokens = store, cache = jp.replay_cache.new(8),
                    seen = jp.replay_cache.new(64), joins = {} }
      ctx.admit = function(p)
        if keys[p.name] and keys[p.name] ~= p.public_key then return nil, "node name in use" end
        keys[p.name] = p.public_key
        local n = 0
        for _ in pairs(slices) do n = n + 1 end
        slices[p.name] = slices[p.name] or ("10.200.0." .. (16 * (n + 1)) .. "/28")
        return { node = { overlay_ip = "10.200.0.1", slice = slices[p.name] } }
      end
      return ctx, str, id
    end

    local function try(ctx, str, name, pub, now)
      local bytes, session = jp.make_request(str, { name = name, public_key = pub, ts = now })
      return jp.open_response(session, (jp.handle(ctx, bytes, now)))
    end

    it("a single-use token: the same joiner's retries get the same slice, the use is spent once", function()
      local ctx, str, id = leader_ctx(1)
      local _, pub = core.generate_keys()
      local _, other = core.generate_keys()
      local first = assert(try(ctx, str, "a", pub, NOW))
      assert.equal(0, ctx.tokens[id].uses_left)
      for i = 1, 3 do
        ctx.cache, ctx.seen = jp.replay_cache.new(8), jp.replay_cache.new(64) -- as after a restart
        local again = assert(try(ctx, str, "a", pub, NOW + i))
        assert.equal(first.node.slice, again.node.slice)
        assert.equal(0, ctx.tokens[id].uses_left)
      end
      -- not the same joiner: another key with the name, or the key with another name
      assert.same({ nil, "join refused: token already used", true }, { try(ctx, str, "a", other, NOW) })
      assert.same({ nil, "join refused: token already used", true }, { try(ctx, str, "b", pub, NOW) })
    end)

    it("a multi-use token: a second key with that name is refused without using it", function()
      local ctx, str, id = leader_ctx(2)
      local _, pub = core.generate_keys()
      local _, other = core.generate_keys()
      assert(try(ctx, str, "a", pub, NOW))
      assert.same({ nil, "join refused: node name in use", true }, { try(ctx, str, "a", other, NOW) })
      assert(try(ctx, str, "a", pub, NOW))
      assert.equal(1, ctx.tokens[id].uses_left)
      assert(try(ctx, str, "b", other, NOW))
      assert.equal(0, ctx.tokens[id].uses_left)
    end)

    it("a used-up, expired token still authenticates its joiner's retry until pruned", function()
      local ctx, str, id = leader_ctx(1, 60)
      local _, pub = core.generate_keys()
      assert(try(ctx, str, "a", pub, NOW))
      assert(try(ctx, str, "a", pub, NOW + 120)) -- expired meanwhile: still the same joiner
      assert.is_not_nil(token.lookup_hash(ctx.tokens, id))
      ctx.joins.a = nil -- reclaimed: the use is not given back
      assert.same({ nil, "join refused: token expired", true }, { try(ctx, str, "a", pub, NOW + 120) })
      token.prune(ctx.tokens, NOW + 60 + token.PRUNE_AFTER)
      assert.is_nil(token.lookup_hash(ctx.tokens, id))
    end)
  end)
end)
