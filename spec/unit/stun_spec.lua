-- STUN codec (wgoverlay.nat.stun): the RFC 5769 test vectors byte for
-- byte, integrity and fingerprint checks, round trips, the Binding helpers,
-- the response matcher, NAT mapping classification, and malformed input
-- (a fuzz loop) that must never raise.  No root, no network.

local stun = require "wgoverlay.nat.stun"
local endpoint = require "wgoverlay.endpoint"

local function unhex(s)
  s = s:gsub("%s", "")
  return (s:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

-- RFC 5769 §2.1: sample request (short-term credentials).
local REQ_2_1 = unhex [[
  00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
  80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
  00 24 00 04 6e 00 01 ff
  80 29 00 08 93 2f f9 b1 51 26 3b 36
  00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
  00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
  80 28 00 04 e5 7a 3b cf ]]

-- §2.2: sample IPv4 response.
local RESP_2_2 = unhex [[
  01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
  80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
  00 20 00 08 00 01 a1 47 e1 12 a6 43
  00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
  80 28 00 04 c0 7d 4c 96 ]]

-- §2.3: sample IPv6 response.
local RESP_2_3 = unhex [[
  01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
  80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
  00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
  00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
  80 28 00 04 c8 fb 0b 4c ]]

-- §2.4: sample request with long-term authentication.
local REQ_2_4 = unhex [[
  00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
  00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
  00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46
              53 54 76 79 36 34 73 41
  00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
  00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66 ]]

local PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"
local TID = unhex "b7e7a701bc34d686fa87dfae"
local USER_2_4 = unhex "e3839ee38388e383aae38383e382afe382b9" -- マトリックス

describe("stun", function()
  describe("CRC-32", function()
    it("matches the standard check value", function()
      assert.equal(0xCBF43926, stun.crc32("123456789"))
      assert.equal(0, stun.crc32(""))
    end)
  end)

  describe("RFC 5769 test vectors", function()
    it("2.1 sample request: decodes, verifies, re-encodes byte for byte", function()
      local m = assert(stun.decode(REQ_2_1))
      assert.equal(stun.BINDING, m.method)
      assert.equal("request", m.class)
      assert.equal(TID, m.transaction_id)
      assert.equal("STUN test client", m.attrs.SOFTWARE)
      assert.equal(0x6e0001ff, m.attrs.PRIORITY)
      assert.equal(unhex "932ff9b151263b36", m.attrs["ICE-CONTROLLED"])
      assert.equal("evtj:h6vY", m.attrs.USERNAME)
      assert.is_true(stun.has_fingerprint(m))
      assert.is_true(stun.check_integrity(m, PASSWORD))
      assert.is_false(stun.check_integrity(m, PASSWORD .. "x"))
      local enc = assert(stun.encode({ method = stun.BINDING, class = "request", transaction_id = TID,
        attributes = {
          { name = "SOFTWARE", value = "STUN test client" },
          { name = "PRIORITY", value = 0x6e0001ff },
          { name = "ICE-CONTROLLED", value = unhex "932ff9b151263b36" },
          { name = "USERNAME", value = "evtj:h6vY" },
        } }, { key = PASSWORD, fingerprint = true, pad = " " }))
      assert.equal(REQ_2_1, enc)
    end)

    it("2.2 IPv4 response: XOR-MAPPED-ADDRESS 192.0.2.1:32853, MAC and CRC", function()
      local m = assert(stun.decode(RESP_2_2))
      assert.equal("success", m.class)
      assert.equal(stun.BINDING, m.method)
      assert.same({ family = 4, ip = "192.0.2.1", port = 32853 }, m.attrs["XOR-MAPPED-ADDRESS"])
      assert.equal("test vector", m.attrs.SOFTWARE)
      assert.is_true(stun.check_integrity(m, PASSWORD))
      local enc = assert(stun.encode({ method = stun.BINDING, class = "success", transaction_id = TID,
        attributes = {
          { name = "SOFTWARE", value = "test vector" },
          { name = "XOR-MAPPED-ADDRESS", value = "192.0.2.1:32853" },
        } }, { key = PASSWORD, fingerprint = true, pad = " " }))
      assert.equal(RESP_2_2, enc)
    end)

    it("2.3 IPv6 response: XOR-MAPPED-ADDRESS [2001:db8:1234:5678:11:2233:4455:6677]:32853", function()
      local m = assert(stun.decode(RESP_2_3))
      assert.same({ family = 6, ip = "2001:db8:1234:5678:11:2233:4455:6677", port = 32853 },
        m.attrs["XOR-MAPPED-ADDRESS"])
      assert.is_true(stun.check_integrity(m, PASSWORD))
      local enc = assert(stun.encode({ method = stun.BINDING, class = "success", transaction_id = TID,
        attributes = {
          { name = "SOFTWARE", value = "test vector" },
          { name = "XOR-MAPPED-ADDRESS", value = { ip = "2001:db8:1234:5678:11:2233:4455:6677", port = 32853 } },
        } }, { key = PASSWORD, fingerprint = true, pad = " " }))
      assert.equal(RESP_2_3, enc)
    end)

    it("2.4 long-term authentication: key = MD5(user:realm:password), MAC, re-encoding", function()
      local m = assert(stun.decode(REQ_2_4))
      assert.equal(USER_2_4, m.attrs.USERNAME)
      assert.equal("f//499k954d6OL34oL9FSTvy64sA", m.attrs.NONCE)
      assert.equal("example.org", m.attrs.REALM)
      assert.is_false(stun.has_fingerprint(m))
      local key = stun.long_term_key(USER_2_4, "example.org", "TheMatrIX")
      assert.equal(16, #key)
      assert.is_true(stun.check_integrity(m, key))
      assert.is_false(stun.check_integrity(m, stun.long_term_key(USER_2_4, "example.org", "TheMatrix")))
      local enc = assert(stun.encode({ method = stun.BINDING, class = "request",
        transaction_id = unhex "78ad3433c6ad72c029da412e",
        attributes = {
          { name = "USERNAME", value = USER_2_4 },
          { name = "NONCE", value = "f//499k954d6OL34oL9FSTvy64sA" },
          { name = "REALM", value = "example.org" },
        } }, { key = key }))
      assert.equal(REQ_2_4, enc)
    end)

    it("every vector is recognised by is_stun", function()
      for _, v in ipairs({ REQ_2_1, RESP_2_2, RESP_2_3, REQ_2_4 }) do
        assert.is_true(stun.is_stun(v))
      end
    end)

    it("a flipped bit in a vector breaks the fingerprint or the MAC", function()
      -- inside USERNAME: the FINGERPRINT no longer matches
      local bad = REQ_2_1:sub(1, 80) .. string.char(REQ_2_1:byte(81) ~ 1) .. REQ_2_1:sub(82)
      local m, err = stun.decode(bad)
      assert.is_nil(m)
      assert.matches("FINGERPRINT", err)
      -- 2.4 has no FINGERPRINT: decode succeeds, the MAC check fails
      bad = REQ_2_4:sub(1, 30) .. string.char(REQ_2_4:byte(31) ~ 1) .. REQ_2_4:sub(32)
      m = assert(stun.decode(bad))
      local ok, why = stun.check_integrity(m, stun.long_term_key(USER_2_4, "example.org", "TheMatrIX"))
      assert.is_false(ok)
      assert.matches("MESSAGE%-INTEGRITY mismatch", why)
    end)
  end)

  describe("encode/decode round trips", function()
    it("carries every TURN attribute", function()
      local attrs = {
        { name = "XOR-PEER-ADDRESS", value = "[fd00::1]:3478" },
        { name = "XOR-RELAYED-ADDRESS", value = "10.0.0.1:49152" },
        { name = "MAPPED-ADDRESS", value = "198.51.100.7:1" },
        { name = "LIFETIME", value = 600 },
        { name = "CHANNEL-NUMBER", value = 0x4001 },
        { name = "REQUESTED-TRANSPORT", value = 17 },
        { name = "REQUESTED-ADDRESS-FAMILY", value = 6 },
        { name = "DONT-FRAGMENT", value = true },
        { name = "EVEN-PORT", value = true },
        { name = "DATA", value = "\0\1\2payload" },
        { name = "ERROR-CODE", value = { code = 438, reason = "Stale Nonce" } },
        { name = "UNKNOWN-ATTRIBUTES", value = { 0x0031, 0x7777 } },
        { type = 0x7777, value = "kept raw" },
        { type = 0xC001, value = "optional raw" },
      }
      local bytes = assert(stun.encode({ method = stun.CHANNEL_BIND, class = "error", attributes = attrs },
        { key = "k", integrity = "both", fingerprint = true }))
      assert.is_true(stun.is_stun(bytes))
      local m = assert(stun.decode(bytes))
      assert.equal(stun.CHANNEL_BIND, m.method)
      assert.equal("error", m.class)
      assert.same({ family = 6, ip = "fd00::1", port = 3478 }, m.attrs["XOR-PEER-ADDRESS"])
      assert.same({ family = 4, ip = "10.0.0.1", port = 49152 }, m.attrs["XOR-RELAYED-ADDRESS"])
      assert.same({ family = 4, ip = "198.51.100.7", port = 1 }, m.attrs["MAPPED-ADDRESS"])
      assert.equal(600, m.attrs.LIFETIME)
      assert.equal(0x4001, m.attrs["CHANNEL-NUMBER"])
      assert.equal(17, m.attrs["REQUESTED-TRANSPORT"])
      assert.equal(6, m.attrs["REQUESTED-ADDRESS-FAMILY"])
      assert.is_true(m.attrs["DONT-FRAGMENT"])
      assert.is_true(m.attrs["EVEN-PORT"])
      assert.equal("\0\1\2payload", m.attrs.DATA)
      assert.same({ code = 438, reason = "Stale Nonce" }, m.attrs["ERROR-CODE"])
      assert.same({ 0x0031, 0x7777 }, m.attrs["UNKNOWN-ATTRIBUTES"])
      assert.equal("kept raw", stun.get(m, 0x7777))
      assert.equal("optional raw", stun.get(m, 0xC001))
      assert.same({ 0x7777 }, m.unknown_required)
      -- with both MACs the SHA-256 one is checked
      assert.equal(32, #m.attrs["MESSAGE-INTEGRITY-SHA256"])
      assert.equal(20, #m.attrs["MESSAGE-INTEGRITY"])
      assert.is_true(stun.check_integrity(m, "k"))
      local ok, why = stun.check_integrity(m, "K")
      assert.is_false(ok)
      assert.matches("SHA256", why)
    end)

    it("round-trips every method and class", function()
      for _, method in ipairs({ stun.BINDING, stun.ALLOCATE, stun.REFRESH, stun.SEND, stun.DATA,
                                stun.CREATE_PERMISSION, stun.CHANNEL_BIND, 0xFFF }) do
        for _, class in ipairs({ "request", "indication", "success", "error" }) do
          local b = assert(stun.encode({ method = method, class = class }))
          local m = assert(stun.decode(b))
          assert.equal(method, m.method)
          assert.equal(class, m.class)
        end
      end
    end)

    it("XOR-MAPPED-ADDRESS round-trips random IPv4 and IPv6 addresses", function()
      for _ = 1, 200 do
        local v6 = math.random() < 0.5
        local ip
        if v6 then
          local w = {}
          for i = 1, 8 do w[i] = string.format("%x", math.random(0, 0xFFFF)) end
          ip = table.concat(w, ":")
        else
          ip = ("%d.%d.%d.%d"):format(math.random(0, 255), math.random(0, 255), math.random(0, 255),
            math.random(0, 255))
        end
        local port = math.random(0, 65535)
        local b = assert(stun.encode({ method = stun.BINDING, class = "success",
          attributes = { { name = "XOR-MAPPED-ADDRESS", value = { ip = ip, port = port } } } }))
        local a = assert(stun.decode(b)).attrs["XOR-MAPPED-ADDRESS"]
        assert.equal(endpoint.normalize(endpoint.format(ip, port)), endpoint.format(a))
      end
    end)

    it("ignores attributes after MESSAGE-INTEGRITY except MI-SHA256 and FINGERPRINT", function()
      local b = assert(stun.encode({ method = stun.BINDING, class = "request",
        attributes = { { name = "USERNAME", value = "u" } } }, { key = "k" }))
      -- append a SOFTWARE attribute by hand and fix the length
      local extra = "\x80\x22\x00\x04abcd"
      b = b:sub(1, 2) .. string.pack(">I2", #b - 20 + #extra) .. b:sub(5) .. extra
      local m = assert(stun.decode(b))
      assert.is_nil(m.attrs.SOFTWARE)
      assert.is_true(stun.check_integrity(m, "k"))
    end)

    it("refuses bad values when encoding, without raising", function()
      for _, bad in ipairs({
        { method = stun.BINDING, class = "bogus" },
        { method = -1, class = "request" },
        { method = stun.BINDING, class = "request", transaction_id = "short" },
        { method = stun.BINDING, class = "request", attributes = { { name = "NO-SUCH", value = "x" } } },
        { method = stun.BINDING, class = "request", attributes = { { name = "LIFETIME", value = -1 } } },
        { method = stun.BINDING, class = "request", attributes = { { name = "XOR-PEER-ADDRESS", value = "nope" } } },
        { method = stun.BINDING, class = "request", attributes = { { name = "ERROR-CODE", value = { code = 99 } } } },
      }) do
        local b, err = stun.encode(bad)
        assert.is_nil(b)
        assert.is_string(err)
      end
      assert.is_nil((stun.encode("not a table")))
    end)
  end)

  describe("malformed input", function()
    local good = assert(stun.encode({ method = stun.ALLOCATE, class = "success", attributes = {
      { name = "XOR-RELAYED-ADDRESS", value = "10.0.0.1:49152" },
      { name = "XOR-MAPPED-ADDRESS", value = "[fd00::2]:51820" },
      { name = "LIFETIME", value = 600 },
      { name = "ERROR-CODE", value = { code = 401, reason = "Unauthorized" } },
      { name = "SOFTWARE", value = "x" },
    } }, { key = "k", fingerprint = true }))

    it("rejects each kind of damage with a message", function()
      local cases = {
        { nil, "not a string" },
        { good:sub(1, 19), "shorter" },
        { "\x80" .. good:sub(2), "first two bits" },
        { good:sub(1, 4) .. "\0\0\0\0" .. good:sub(9), "magic cookie" },
        { good:sub(1, 2) .. string.pack(">I2", #good - 20 + 4) .. good:sub(5), "length does not match" },
        { good:sub(1, 2) .. string.pack(">I2", #good - 21) .. good:sub(5, -2), "multiple of 4" },
        { good:sub(1, 2) .. "\0\4" .. good:sub(5, 20) .. "\0\1\0\4", "truncated|longer" },
        { good:sub(1, 2) .. "\0\4" .. good:sub(5, 20) .. "\0\1\0\8", "longer than the message" },
        { good:sub(1, 2) .. "\0\12" .. good:sub(5, 20) .. "\0\32\0\8\0\3\0\0\0\0\0\0", "malformed XOR%-MAPPED" },
        { good:sub(1, 2) .. "\0\8" .. good:sub(5, 20) .. "\0\13\0\3\0\0\0\0", "malformed LIFETIME" },
        { good:sub(1, 2) .. "\0\8" .. good:sub(5, 20) .. "\0\9\0\4\0\0\2\0", "malformed ERROR%-CODE" },
        { good .. "\0\6\0\0", "length does not match" },
      }
      -- an attribute after a (valid) FINGERPRINT
      local fp_first = assert(stun.encode({ method = 1, class = "request" }, { fingerprint = true }))
      local after = fp_first .. "\0\6\0\0"
      after = after:sub(1, 2) .. string.pack(">I2", #after - 20) .. after:sub(5)
      cases[#cases + 1] = { after, "after FINGERPRINT|FINGERPRINT mismatch" }
      for i, c in ipairs(cases) do
        local m, err = stun.decode(c[1])
        assert.is_nil(m, "case " .. i)
        assert.is_string(err, "case " .. i)
        local matched = false
        for alt in c[2]:gmatch("[^|]+") do
          if err:find(alt) then matched = true end
        end
        assert.is_true(matched, ("case %d: %q does not match %q"):format(i, err, c[2]))
        if i <= 6 then assert.is_false(stun.is_stun(c[1]), "case " .. i) end
      end
    end)

    it("never raises on 20000 random and mutated inputs", function()
      math.randomseed(5769)
      local seeds = { REQ_2_1, RESP_2_2, RESP_2_3, REQ_2_4, good }
      local function rbytes(n)
        local t = {}
        for i = 1, n do t[i] = string.char(math.random(0, 255)) end
        return table.concat(t)
      end
      local decoded = 0
      for i = 1, 20000 do
        local input
        local r = i % 4
        if r == 0 then
          input = rbytes(math.random(0, 120))
        elseif r == 1 then
          -- a valid header, random attribute bytes (length fixed up)
          local body = rbytes(math.random(0, 25) * 4)
          input = string.pack(">I2I2", math.random(0, 0x3FFF), #body) .. "\x21\x12\xA4\x42"
            .. rbytes(12) .. body
        else
          -- a real message with a few bytes flipped, maybe truncated
          local s = seeds[math.random(#seeds)]
          local t = { s:byte(1, -1) }
          for _ = 1, math.random(1, 4) do
            local p = math.random(1, #t)
            t[p] = math.random(0, 255)
          end
          input = string.char(table.unpack(t))
          if r == 3 then input = input:sub(1, math.random(0, #input)) end
        end
        local ok, m, err = pcall(stun.decode, input)
        assert(ok, "decode raised on " .. input:gsub(".", function(c) return ("%02x"):format(c:byte()) end)
          .. ": " .. tostring(m))
        if m then
          decoded = decoded + 1
          local ok2 = pcall(stun.check_integrity, m, "k")
          assert(ok2, "check_integrity raised")
          assert(pcall(stun.binding_response, m, "192.0.2.1", 1))
        else
          assert.is_string(err)
        end
        assert(pcall(stun.is_stun, input))
      end
      assert.is_true(decoded > 100, "the fuzz loop decoded too few inputs: " .. decoded)
    end)
  end)

  describe("is_stun", function()
    it("tells STUN from WireGuard and ChannelData", function()
      assert.is_true(stun.is_stun((stun.binding_request())))
      -- WireGuard handshake initiation: type 1, 148 bytes
      assert.is_false(stun.is_stun("\1\0\0\0" .. string.rep("\0", 144)))
      -- ChannelData 0x4000
      assert.is_false(stun.is_stun("\x40\x00\x00\x10" .. string.rep("\0", 16)))
      assert.is_false(stun.is_stun(""))
      assert.is_false(stun.is_stun(42))
    end)
  end)

  describe("Binding", function()
    it("builds requests with a fresh transaction id and a FINGERPRINT", function()
      local b1, t1 = stun.binding_request()
      local b2, t2 = stun.binding_request({ software = "wgoverlay" })
      assert.not_equal(t1, t2)
      local m = assert(stun.decode(b2))
      assert.equal(stun.BINDING, m.method)
      assert.equal("request", m.class)
      assert.equal(t2, m.transaction_id)
      assert.equal("wgoverlay", m.attrs.SOFTWARE)
      assert.is_true(stun.has_fingerprint(m))
      assert.is_false(stun.has_fingerprint(assert(stun.decode((stun.binding_request({ fingerprint = false }))))))
      assert.equal(20 + 8, #b1)
    end)

    it("answers a request with the sender's address, same transaction id", function()
      local req, tid = stun.binding_request()
      for _, c in ipairs({ { "192.0.2.9", 40000 }, { "192.0.2.9:40000" }, { "[fd00::9]:40001" } }) do
        local resp = assert(stun.binding_response(req, c[1], c[2]))
        local m = assert(stun.decode(resp))
        assert.equal("success", m.class)
        assert.equal(tid, m.transaction_id)
        local want = c[2] and endpoint.format(c[1], c[2]) or c[1]
        assert.equal(want, endpoint.format(m.attrs["XOR-MAPPED-ADDRESS"]))
      end
      -- a decoded request works too
      assert.truthy(stun.binding_response(assert(stun.decode(req)), "192.0.2.9", 1))
    end)

    it("refuses to answer what is not a Binding request", function()
      local b, err = stun.binding_response(RESP_2_2, "192.0.2.1", 1)
      assert.is_nil(b)
      assert.matches("not a STUN Binding request", err)
      assert.is_nil((stun.binding_response("garbage", "192.0.2.1", 1)))
      local alloc = assert(stun.encode({ method = stun.ALLOCATE, class = "request" }))
      assert.is_nil((stun.binding_response(alloc, "192.0.2.1", 1)))
      assert.is_nil((stun.binding_response(stun.binding_request(), "not-an-ip", 1)))
    end)

    -- RFC 8489 §6.3.1.1 and §14.9
    it("answers unknown comprehension-required attributes with 420 and UNKNOWN-ATTRIBUTES", function()
      local tid = ("\7"):rep(12)
      local req = assert(stun.encode({ method = stun.BINDING, class = "request", transaction_id = tid, attributes = {
        { type = 0x7777, value = "need this" },
        { name = "SOFTWARE", value = "client" },
        { type = 0x0030, value = "" },
        { type = 0xC001, value = "optional: ignored" },
        { type = 0x7777, value = "twice" },
      } }, { fingerprint = true }))
      local resp = assert(stun.binding_response(req, "192.0.2.9", 40000, { software = "wgoverlay" }))
      local m = assert(stun.decode(resp))
      assert.equal("error", m.class)
      assert.equal(stun.BINDING, m.method)
      assert.equal(tid, m.transaction_id)
      assert.same({ code = 420, reason = "Unknown Attribute" }, m.attrs["ERROR-CODE"])
      -- each unknown comprehension-required type once, in order; not the optional one
      assert.same({ 0x7777, 0x0030 }, m.attrs["UNKNOWN-ATTRIBUTES"])
      assert.is_nil(m.attrs["XOR-MAPPED-ADDRESS"])
      assert.is_true(stun.has_fingerprint(m))
      assert.equal("wgoverlay", m.attrs.SOFTWARE)
      assert.same({}, m.unknown_required)
      -- the same from a decoded request; an odd count is padded to 4 bytes
      local one = assert(stun.encode({ method = stun.BINDING, class = "request",
                                       attributes = { { type = 0x0041, value = "x" } } }))
      local m1 = assert(stun.decode((assert(stun.binding_response(assert(stun.decode(one)), "192.0.2.9:1")))))
      assert.same({ 0x0041 }, m1.attrs["UNKNOWN-ATTRIBUTES"])
      assert.equal(0, (#m1.raw - 20) % 4)
    end)

    it("answers success when only comprehension-optional or ignored attributes are unknown", function()
      local req = assert(stun.encode({ method = stun.BINDING, class = "request", attributes = {
        { type = 0x8FFF, value = "optional" }, { type = 0xC001, value = "" },
      } }, { fingerprint = true }))
      local m = assert(stun.decode((assert(stun.binding_response(req, "192.0.2.9", 40000)))))
      assert.equal("success", m.class)
      assert.equal("192.0.2.9:40000", endpoint.format(m.attrs["XOR-MAPPED-ADDRESS"]))
      -- an unknown required attribute after MESSAGE-INTEGRITY is ignored (§14.5)
      local after = assert(stun.encode({ method = stun.BINDING, class = "request", attributes = {
        { name = "MESSAGE-INTEGRITY", value = ("\0"):rep(20) }, { type = 0x7777, value = "late" },
      } }))
      assert.equal("success", assert(stun.decode((assert(stun.binding_response(after, "192.0.2.9", 1))))).class)
      assert.has_no_error(function() stun.unknown_attributes_response(assert(stun.decode(req))) end)
      assert.is_nil((stun.unknown_attributes_response(assert(stun.decode(req)))))
    end)
  end)

  describe("matcher", function()
    local now
    local function clock() return now end
    before_each(function() now = 1000 end)

    it("accepts the response to an outstanding request from its server, once", function()
      local m = stun.matcher({ clock = clock })
      local req = assert(m:binding_request("192.0.2.1:3478"))
      assert.equal(1, m:count())
      local resp = assert(stun.binding_response(req, "198.51.100.2", 51820))
      local msg, rec = m:match("192.0.2.1:3478", resp)
      assert.truthy(msg)
      assert.equal("192.0.2.1:3478", rec.server)
      assert.equal("198.51.100.2:51820", endpoint.format(msg.attrs["XOR-MAPPED-ADDRESS"]))
      assert.equal(0, m:count())
      -- a duplicate is no longer outstanding
      local again, why = m:match("192.0.2.1:3478", resp)
      assert.is_nil(again)
      assert.matches("unknown transaction", why)
    end)

    it("ignores spoofed sources, unknown ids, requests and garbage", function()
      local m = stun.matcher({ clock = clock })
      local req = assert(m:binding_request("[fd00::1]:3478"))
      local resp = assert(stun.binding_response(req, "198.51.100.2", 51820))
      local msg, why = m:match("[fd00::2]:3478", resp)
      assert.is_nil(msg)
      assert.matches("request went to", why)
      assert.is_nil((m:match("[fd00::1]:3479", resp)))
      assert.is_nil((m:match("[fd00::1]:3478", stun.binding_response(stun.binding_request(), "192.0.2.1", 1))))
      assert.is_nil((m:match("[fd00::1]:3478", req)))
      assert.is_nil((m:match("[fd00::1]:3478", "junk")))
      assert.equal(1, m:count())
      -- the real one still matches; the server's address may be spelt differently
      assert.truthy(m:match("[fd00:0:0::0001]:3478", resp))
    end)

    it("expires old requests", function()
      local m = stun.matcher({ clock = clock })
      assert(m:binding_request("192.0.2.1:3478"))
      now = now + 2
      assert(m:binding_request("192.0.2.2:3478"))
      now = now + 2
      local gone = m:expire(3)
      assert.equal(1, #gone)
      assert.equal("192.0.2.1:3478", gone[1].server)
      assert.equal(1, m:count())
      assert.is_nil((m:binding_request("nowhere")))
    end)
  end)

  describe("NAT mapping classification", function()
    it("is endpoint-independent when both servers saw one mapping", function()
      assert.equal("endpoint-independent", stun.classify_mapping("203.0.113.5:40000", "203.0.113.5:40000"))
      assert.equal("endpoint-independent",
        stun.classify_mapping({ ip = "fd00::0:5", port = 1 }, "[fd00::5]:1"))
    end)

    it("is endpoint-dependent when the mappings differ", function()
      assert.equal("endpoint-dependent", stun.classify_mapping("203.0.113.5:40000", "203.0.113.5:40001"))
      assert.equal("endpoint-dependent", stun.classify_mapping("203.0.113.5:40000", "203.0.113.6:40000"))
    end)

    it("reports a missing or invalid address", function()
      local r, err = stun.classify_mapping(nil, "203.0.113.5:1")
      assert.is_nil(r)
      assert.matches("first mapped address", err)
      r, err = stun.classify_mapping("203.0.113.5:1", "x")
      assert.is_nil(r)
      assert.matches("second mapped address", err)
    end)
  end)
end)
