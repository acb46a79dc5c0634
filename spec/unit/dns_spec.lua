-- The DNS codec and the authoritative zone (wgoverlay.dns, pure):
-- known-answer bytes, compression, every response code, hand-built
-- malformed queries, removal, truncation, and a 20k-message fuzz loop.
-- Bounded cost: header-only rejection, pointer hops, 255-octet names, the
-- parse budget; the server's limiter (injected clock) and, on loopback,
-- the TCP message deadline, per-source eviction, rate limits and logging.

local dns = require "wgoverlay.dns"

local T, R = dns.TYPE, dns.RCODE

local function hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local function unhex(h)
  return (h:gsub("%s+", ""):gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end

-- Wire name from dotted text (no compression).
local function wname(text)
  local out = {}
  for l in text:gmatch("[^.]+") do out[#out + 1] = string.char(#l) .. l end
  return table.concat(out) .. "\0"
end

-- A raw header: id, flags word, counts.
local function header(id, flags, qd, an, ns, ar)
  return string.pack(">I2I2I2I2I2I2", id, flags, qd or 1, an or 0, ns or 0, ar or 0)
end

local function raw_query(id, name, qtype, extra_flags)
  return header(id, 0x0100 | (extra_flags or 0), 1) .. wname(name) .. string.pack(">I2I2", qtype or 1, 1)
end

local function sorted_data(records, rtype)
  local out = {}
  for _, rr in ipairs(records) do
    if rtype == nil or rr.type == rtype then out[#out + 1] = rr.data end
  end
  table.sort(out)
  return out
end

local function new_zone()
  local z = assert(dns.zone.new("overlay.internal"))
  assert(z:set("node1", { "10.200.0.1" }, { "fd00:200::1" }))
  assert(z:set("web", { "10.200.0.2", "10.200.0.18", "10.200.0.34" }, { "fd00:200::2" }))
  assert(z:add("db.svc", "A", "10.200.0.3"))
  assert(z:add("v6only", "AAAA", "fd00:200::9"))
  return z
end

-- Answer `query` with zone `z` and decode the response.
local function ask(z, query, opts)
  local resp, reason = z:answer(query, opts)
  if not resp then return nil, reason end
  return assert(dns.parse(resp)), resp
end

describe("dns codec", function()
  describe("names", function()
    it("splits and joins presentation names with escapes", function()
      assert.same({ "www", "example", "com" }, dns.name_labels("www.example.com."))
      assert.same({ "www", "example", "com" }, dns.name_labels("www.example.com"))
      assert.same({}, dns.name_labels("."))
      assert.same({ "a.b", "c" }, dns.name_labels("a\\.b.c"))
      assert.same({ "a\0b" }, dns.name_labels("a\\000b"))
      assert.equal("a\\.b.c", dns.labels_text({ "a.b", "c" }))
      assert.equal("a\\000b.x\\\\y.\\255", dns.labels_text({ "a\0b", "x\\y", "\255" }))
    end)

    it("refuses empty labels, long labels and long names", function()
      assert.is_nil(dns.name_labels("a..b"))
      assert.is_nil(dns.name_labels(("x"):rep(64) .. ".com"))
      assert.truthy(dns.name_labels(("x"):rep(63) .. ".com"))
      assert.is_nil(dns.name_labels((("x"):rep(63) .. "."):rep(4) .. "com"))
      assert.is_nil(dns.name_labels("a\\999"))
      assert.is_nil(dns.name_labels("a\\"))
      assert.is_nil(dns.name_labels(42))
    end)
  end)

  describe("parse", function()
    it("decodes a known query byte for byte", function()
      local q = unhex("1234 0100 0001 0000 0000 0000 07 6578616d706c65 03 636f6d 00 0001 0001")
      local m = assert(dns.parse(q))
      assert.equal(0x1234, m.id)
      assert.is_false(m.qr)
      assert.is_true(m.rd)
      assert.equal(0, m.opcode)
      assert.equal(1, m.qdcount)
      assert.same({ name = "example.com", labels = { "example", "com" }, qtype = 1, qclass = 1 }, m.question)
      assert.is_nil(m.edns)
      -- and dns.query builds exactly these bytes
      assert.equal(hex(q), hex(dns.query("example.com", "A", { id = 0x1234 })))
    end)

    it("decodes a response with compressed names, A, AAAA, SOA and EDNS", function()
      local r = unhex([[
        abcd 8580 0001 0002 0001 0001
        03 777777 07 6578616d706c65 03 636f6d 00 0001 0001
        c00c 0001 0001 0000012c 0004 c0000201
        c00c 001c 0001 0000012c 0010 20010db8000000000000000000000001
        c010 0006 0001 00000e10 001d c010 04 686f7374 c010 00000007 00000001 00000002 00000003 00000004
        00 0029 04d0 00008000 0000]])
      local m = assert(dns.parse(r))
      assert.is_true(m.qr and m.aa and m.rd and m.ra)
      assert.equal(R.NOERROR, m.rcode)
      assert.equal("www.example.com", m.answers[1].name)
      assert.equal("192.0.2.1", m.answers[1].data)
      assert.equal(300, m.answers[1].ttl)
      assert.equal("2001:db8::1", m.answers[2].data)
      assert.same({ mname = "example.com", rname = "host.example.com", serial = 7, refresh = 1,
        retry = 2, expire = 3, minimum = 4 }, m.authority[1].data)
      assert.same({ udp_size = 1232, ext_rcode = 0, version = 0, do_bit = true, options = "" }, m.edns)
    end)

    it("round-trips what build makes, compressing repeated names", function()
      local msg = {
        id = 7, qr = true, aa = true, rd = true, rcode = R.NXDOMAIN,
        question = { name = "Web.Overlay.Internal", qtype = T.A },
        answers = { { name = "web.overlay.internal", type = T.A, ttl = 5, data = "10.0.0.1" },
          { name = "web.overlay.internal", type = T.AAAA, ttl = 5, data = "fd00::1" } },
        authority = { { name = "overlay.internal", type = T.SOA, ttl = 9, data = { mname = "overlay.internal",
          rname = "hostmaster.overlay.internal", serial = 1, refresh = 2, retry = 3, expire = 4, minimum = 5 } } },
        edns = { udp_size = 1232 },
      }
      local bytes = dns.build(msg)
      local m = assert(dns.parse(bytes))
      assert.equal("Web.Overlay.Internal", m.question.name)
      assert.equal("Web.Overlay.Internal", m.answers[1].name) -- a pointer to the question
      assert.equal("fd00::1", m.answers[2].data)
      -- compression is case-insensitive: the suffix may take the question's case
      assert.equal("hostmaster.overlay.internal", m.authority[1].data.rname:lower())
      assert.equal(R.NXDOMAIN, m.rcode)
      assert.equal(1232, m.edns.udp_size)
      -- answer owners are 2-byte pointers to offset 12
      assert.truthy(bytes:find("\192\12\0\1\0\1", 1, true))
      assert.equal(140, #bytes) -- 12 + 26 + 16 + 28 + 47 (SOA, three pointers) + 11 (OPT)
    end)

    it("encodes extended rcodes through the OPT record", function()
      local m = assert(dns.parse(dns.build({ id = 1, qr = true, rcode = R.BADVERS, edns = {}, questions = {} })))
      assert.equal(R.BADVERS, m.rcode)
    end)

    it("follows a backward compression pointer", function()
      local q = header(1, 0x0100, 2) .. wname("a.example") .. "\0\1\0\1" .. "\1b\192\12" .. "\0\1\0\1"
      local m = assert(dns.parse(q))
      assert.equal("b.a.example", m.questions[2].name)
    end)

    -- Malformed messages: dns.parse returns nil and a message, and the
    -- header when it could be read.
    local malformed = {
      { "empty", "", "shorter than a DNS header", false },
      { "11-byte header", ("\0"):rep(11), "shorter than a DNS header", false },
      { "question cut in the name", header(1, 0x100) .. "\7exam", "past the end", true },
      { "question without type", header(1, 0x100) .. wname("a.b"), "past the end", true },
      { "label length beyond the packet", header(1, 0x100) .. "\63abc", "past the end", true },
      { "label type 01", header(1, 0x100) .. "\64abc\0\0\1\0\1", "unsupported label type", true },
      { "label type 10", header(1, 0x100) .. "\128\0\0\1\0\1", "unsupported label type", true },
      { "pointer to itself", header(1, 0x100) .. "\192\12\0\1\0\1", "backwards", true },
      { "forward pointer", header(1, 0x100) .. "\192\14\0\1\0\1\0", "backwards", true },
      { "two-pointer loop", header(1, 0x100, 2) .. "\1a\192\19\0\1\0\1" .. "\192\12\0\1\0\1", "backwards", true },
      { "pointer into a loop", header(1, 0x100, 2) .. "\1a\0\0\1\0\1" .. "\1b\192\21\0\1\0\1",
        "backwards", true },
      { "pointer cut in half", header(1, 0x100) .. "\192", "past the end", true },
      { "name over 255 bytes", header(1, 0x100) .. ("\63" .. ("x"):rep(63)):rep(4) .. "\0\0\1\0\1",
        "longer than 255", true },
      { "record data beyond the packet", header(1, 0x100, 1, 1) .. wname("a.b") .. "\0\1\0\1"
        .. "\192\12\0\1\0\1\0\0\0\1\0\4\1\2",
        "past the end", true },
      { "A record of 3 bytes", header(1, 0x8100, 1, 1) .. wname("a.b") .. "\0\1\0\1\192\12\0\1\0\1\0\0\0\1\0\3\1\2\3",
        "wrong length", true },
      { "two OPT records", header(1, 0x100, 1, 0, 0, 2) .. wname("a.b") .. "\0\1\0\1"
        .. ("\0\0\41\4\208\0\0\0\0\0\0"):rep(2), "more than one OPT", true },
      { "OPT with a name", header(1, 0x100, 1, 0, 0, 1) .. wname("a.b") .. "\0\1\0\1"
        .. "\192\12\0\41\4\208\0\0\0\0\0\0", "non%-root owner", true },
      { "OPT in the answers", header(1, 0x100, 1, 1, 0, 0) .. wname("a.b") .. "\0\1\0\1"
        .. "\0\0\41\4\208\0\0\0\0\0\0", "outside the additional", true },
      { "qdcount larger than the content", header(1, 0x100, 65535) .. wname("a.b") .. "\0\1\0\1",
        "past the end", true },
    }
    for _, c in ipairs(malformed) do
      it("rejects a message with " .. c[1], function()
        local m, err, h = dns.parse(c[2])
        assert.is_nil(m)
        assert.matches(c[3], err)
        assert.equal(c[4], h ~= nil)
      end)
    end

    it("rejects non-strings without raising", function()
      assert.is_nil(dns.parse(nil))
      assert.is_nil(dns.parse({}))
    end)
  end)

  describe("helpers", function()
    it("error_response echoes id, question and rd", function()
      local q = dns.query("x.example", "AAAA", { id = 99 })
      local m = assert(dns.parse(dns.error_response(q, R.SERVFAIL)))
      assert.equal(99, m.id)
      assert.is_true(m.qr and m.rd)
      assert.equal(R.SERVFAIL, m.rcode)
      assert.equal("x.example", m.question.name)
      assert.is_nil(dns.error_response("short", R.SERVFAIL))
    end)

    it("matches accepts only the answer to the same question", function()
      local q = dns.query("x.example", "A", { id = 5 })
      local function resp(id, name, qtype)
        return dns.build({ id = id, qr = true, question = { name = name, qtype = qtype } })
      end
      assert.is_true(dns.matches(q, resp(5, "X.EXAMPLE", T.A)))
      assert.is_false(dns.matches(q, resp(6, "x.example", T.A)))
      assert.is_false(dns.matches(q, resp(5, "y.example", T.A)))
      assert.is_false(dns.matches(q, resp(5, "x.example", T.AAAA)))
      assert.is_false(dns.matches(q, q)) -- not a response
      assert.is_false(dns.matches(q, "garbage"))
    end)
  end)
end)

describe("dns zone", function()
  describe("answers", function()
    it("A and AAAA records of a node, authoritative, id and rd echoed, ra clear", function()
      local z = new_zone()
      local m = ask(z, dns.query("node1.overlay.internal", "A", { id = 4242 }))
      assert.equal(4242, m.id)
      assert.is_true(m.qr and m.aa and m.rd)
      assert.is_false(m.ra)
      assert.equal(R.NOERROR, m.rcode)
      assert.same({ "10.200.0.1" }, sorted_data(m.answers))
      assert.equal(30, m.answers[1].ttl)
      m = ask(z, dns.query("node1.overlay.internal.", "AAAA", { rd = false }))
      assert.is_false(m.rd)
      assert.same({ "fd00:200::1" }, sorted_data(m.answers))
    end)

    it("every address of a service name", function()
      local m = ask(new_zone(), dns.query("web.overlay.internal", "A"))
      assert.same({ "10.200.0.18", "10.200.0.2", "10.200.0.34" }, sorted_data(m.answers))
    end)

    it("matches names case-insensitively and echoes the query's case", function()
      local m = ask(new_zone(), dns.query("WeB.OVERLAY.internal", "A"))
      assert.equal(3, #m.answers)
      assert.equal("WeB.OVERLAY.internal", m.question.name)
      assert.equal("WeB.OVERLAY.internal", m.answers[1].name)
    end)

    it("ANY gives both families", function()
      local m = ask(new_zone(), dns.query("node1.overlay.internal", "ANY"))
      assert.same({ "10.200.0.1", "fd00:200::1" }, sorted_data(m.answers))
    end)

    it("NXDOMAIN for an unknown name, with the SOA in authority (negative TTL)", function()
      local z = new_zone()
      local m = ask(z, dns.query("nope.overlay.internal", "A"))
      assert.equal(R.NXDOMAIN, m.rcode)
      assert.is_true(m.aa)
      assert.equal(0, #m.answers)
      assert.equal(1, #m.authority)
      assert.equal(T.SOA, m.authority[1].type)
      assert.equal("overlay.internal", m.authority[1].name)
      assert.equal(10, m.authority[1].ttl)
      assert.equal(z.serial, m.authority[1].data.serial)
      assert.equal("hostmaster.overlay.internal", m.authority[1].data.rname)
    end)

    it("NODATA (NOERROR, SOA) for a missing type and for an empty non-terminal", function()
      local z = new_zone()
      for _, q in ipairs({ { "v6only.overlay.internal", "A" }, { "node1.overlay.internal", "MX" },
        { "svc.overlay.internal", "A" }, { "overlay.internal", "A" } }) do
        local m = ask(z, dns.query(q[1], q[2]))
        assert.equal(R.NOERROR, m.rcode, q[1])
        assert.equal(0, #m.answers)
        assert.equal(T.SOA, m.authority[1].type)
      end
      assert.equal(R.NXDOMAIN, ask(z, dns.query("x.db.svc.overlay.internal", "A")).rcode)
    end)

    it("SOA at the apex, NS when configured", function()
      local z = assert(dns.zone.new("Overlay.Internal", { ns = { "ns1.overlay.internal" }, serial = 41 }))
      local m = ask(z, dns.query("overlay.internal", "SOA"))
      assert.equal(T.SOA, m.answers[1].type)
      assert.equal(41, m.answers[1].data.serial)
      m = ask(z, dns.query("overlay.internal", "NS"))
      assert.equal("ns1.overlay.internal", m.answers[1].data)
      m = ask(new_zone(), dns.query("overlay.internal", "NS"))
      assert.equal(0, #m.answers)
      assert.equal(R.NOERROR, m.rcode)
    end)

    it("REFUSED outside the zone, not authoritative", function()
      local z = new_zone()
      for _, name in ipairs({ "example.com", "internal", "overlay.internal.evil", "xoverlay.internal",
        "a\\.overlay.internal", "." }) do
        local m = ask(z, dns.query(name, "A"))
        assert.equal(R.REFUSED, m.rcode, name)
        assert.is_false(m.aa)
        assert.equal(0, #m.answers)
      end
    end)

    it("leaves names outside the zone to the caller in forward mode", function()
      local z = new_zone()
      assert.same({ nil, "forward" }, { z:answer(dns.query("example.com", "A"), { forward = true }) })
      assert.equal(3, #ask(z, dns.query("web.overlay.internal", "A"), { forward = true }).answers)
    end)

    it("EDNS: echoes an OPT record, BADVERS for version 1", function()
      local z = new_zone()
      local m = ask(z, dns.query("web.overlay.internal", "A", { edns = { udp_size = 4096, do_bit = true } }))
      assert.equal(dns.UDP_MAX, m.edns.udp_size)
      assert.is_true(m.edns.do_bit)
      m = ask(z, dns.query("web.overlay.internal", "A", { edns = { version = 1 } }))
      assert.equal(R.BADVERS, m.rcode)
      assert.equal(0, #m.answers)
    end)

    local codes = {
      { "qdcount 0", header(9, 0x100, 0), R.FORMERR },
      { "qdcount 2", header(9, 0x100, 2) .. wname("a.overlay.internal") .. "\0\1\0\1"
        .. wname("b.overlay.internal") .. "\0\1\0\1", R.FORMERR },
      { "a truncated question", header(9, 0x100) .. "\3web", R.FORMERR },
      { "a label beyond the packet", header(9, 0x100) .. "\60web", R.FORMERR },
      { "a compression loop", header(9, 0x100) .. "\192\12\0\1\0\1", R.FORMERR },
      { "a 64-byte label", header(9, 0x100) .. "\64" .. ("x"):rep(64) .. "\0\0\1\0\1", R.FORMERR },
      { "a name over 255 bytes", header(9, 0x100) .. ("\63" .. ("x"):rep(63)):rep(5) .. "\0\0\1\0\1", R.FORMERR },
      { "opcode STATUS", raw_query(9, "web.overlay.internal", 1, 2 << 11), R.NOTIMP },
      { "opcode UPDATE", raw_query(9, "overlay.internal", 6, 5 << 11), R.NOTIMP },
      { "class CHAOS", header(9, 0x100) .. wname("version.bind") .. "\0\16\0\3", R.REFUSED },
      { "AXFR", raw_query(9, "overlay.internal", T.AXFR), R.REFUSED },
      { "IXFR", raw_query(9, "overlay.internal", T.IXFR), R.REFUSED },
      { "qtype OPT", raw_query(9, "overlay.internal", T.OPT), R.FORMERR },
      { "MAILA", raw_query(9, "overlay.internal", T.MAILA), R.NOTIMP },
      { "class ANY", header(9, 0x100) .. wname("web.overlay.internal") .. "\0\1\0\255", R.NOERROR },
    }
    for _, c in ipairs(codes) do
      it(("answers %s with %s"):format(c[1], dns.RCODE_NAME[c[3]]), function()
        local m = ask(new_zone(), c[2])
        assert.equal(9, m.id)
        assert.is_true(m.qr)
        assert.equal(c[3], m.rcode)
        if c[3] ~= R.NOERROR then assert.equal(0, #m.answers) end
      end)
    end

    it("drops what has no readable header, and responses", function()
      local z = new_zone()
      for _, q in ipairs({ "", "\1", ("\0"):rep(11) }) do
        assert.same({ nil, "drop" }, { z:answer(q) })
      end
      local resp = z:answer(dns.query("web.overlay.internal", "A"))
      assert.same({ nil, "drop" }, { z:answer(resp) })
      -- a response with a broken body is dropped too, not answered
      assert.same({ nil, "drop" }, { z:answer(header(1, 0x8000) .. "\63") })
    end)
  end)

  describe("truncation", function()
    local function big_zone(n)
      local z = new_zone()
      for i = 1, n do assert(z:add("big", "A", "10.200.1." .. i)) end
      return z
    end

    it("sets TC on a UDP answer over 512 bytes without EDNS", function()
      local z = big_zone(40) -- 40 * 16 bytes > 512
      local m, bytes = ask(z, dns.query("big.overlay.internal", "A"), { transport = "udp" })
      assert.is_true(m.tc)
      assert.equal(0, #m.answers)
      assert.is_true(#bytes <= 512)
      assert.equal("big.overlay.internal", m.question.name)
      m = ask(z, dns.query("big.overlay.internal", "A"), { transport = "tcp" })
      assert.is_false(m.tc)
      assert.equal(40, #m.answers)
    end)

    it("uses the EDNS size, capped at udp_max", function()
      local z = big_zone(40)
      local m = ask(z, dns.query("big.overlay.internal", "A", { edns = { udp_size = 4096 } }), { transport = "udp" })
      assert.is_false(m.tc)
      assert.equal(40, #m.answers)
      z = big_zone(100) -- about 1.7 kB
      m = ask(z, dns.query("big.overlay.internal", "A", { edns = { udp_size = 4096 } }), { transport = "udp" })
      assert.is_true(m.tc)
      assert.truthy(m.edns)
      m = ask(z, dns.query("big.overlay.internal", "A", { edns = { udp_size = 4096 } }),
        { transport = "udp", udp_max = 4096 })
      assert.is_false(m.tc)
      assert.equal(100, #m.answers)
      -- an EDNS size below 512 counts as 512
      m = ask(big_zone(20), dns.query("big.overlay.internal", "A", { edns = { udp_size = 100 } }), { transport = "udp" })
      assert.is_false(m.tc)
    end)

    it("answers everything over TCP", function()
      local m = ask(big_zone(250), dns.query("big.overlay.internal", "A"))
      assert.equal(250, #m.answers)
    end)
  end)

  describe("editing", function()
    it("removing really removes (no record left behind)", function()
      local z = new_zone()
      assert.is_true(z:remove("web", "A", "10.200.0.18"))
      assert.is_false(z:remove("web", "A", "10.200.0.18"))
      local m = ask(z, dns.query("web.overlay.internal", "A"))
      assert.same({ "10.200.0.2", "10.200.0.34" }, sorted_data(m.answers))
      assert.is_true(z:remove("web", "A", "10.200.0.2"))
      assert.is_true(z:remove("web", "A", "10.200.0.34"))
      m = ask(z, dns.query("web.overlay.internal", "A"))
      assert.equal(0, #m.answers)
      assert.equal(R.NOERROR, m.rcode) -- AAAA remains
      assert.is_true(z:remove("web", "AAAA", "fd00:200::2"))
      m = ask(z, dns.query("web.overlay.internal", "ANY"))
      assert.equal(R.NXDOMAIN, m.rcode)
      assert.same({}, z:lookup("web", "A"))
    end)

    it("adding twice keeps one record; removing once removes it", function()
      local z = new_zone()
      assert(z:add("x", "A", "10.200.0.5"))
      assert(z:add("x.overlay.internal.", "a", "10.200.0.5"))
      assert.same({ "10.200.0.5" }, z:lookup("x", "A"))
      assert.is_true(z:remove("X", 4, "10.200.0.5"))
      assert.equal(R.NXDOMAIN, ask(z, dns.query("x.overlay.internal", "A")).rcode)
    end)

    it("canonicalises addresses", function()
      local z = new_zone()
      assert(z:add("x", "AAAA", "FD00:0200:0:0::0001"))
      assert.same({ "fd00:200::1" }, z:lookup("x", "AAAA"))
      assert.is_true(z:remove("x", "AAAA", "fd00:200::1"))
    end)

    it("remove(name, kind) and remove(name)", function()
      local z = new_zone()
      assert.is_true(z:remove("web", "A"))
      assert.same({}, z:lookup("web", "A"))
      assert.same({ "fd00:200::2" }, z:lookup("web", "AAAA"))
      assert.is_true(z:remove("node1"))
      assert.is_false(z:remove("node1"))
      assert.equal(R.NXDOMAIN, ask(z, dns.query("node1.overlay.internal", "AAAA")).rcode)
    end)

    it("set replaces; empty lists delete the name", function()
      local z = new_zone()
      assert(z:set("web", { "10.200.0.99" }))
      assert.same({ "10.200.0.99" }, z:lookup("web", "A"))
      assert.same({}, z:lookup("web", "AAAA"))
      assert(z:set("web", {}, {}))
      assert.equal(R.NXDOMAIN, ask(z, dns.query("web.overlay.internal", "A")).rcode)
      assert.is_nil(z:set("web", { "10.200.0.1", "nonsense" }))
      assert.equal(R.NXDOMAIN, ask(z, dns.query("web.overlay.internal", "A")).rcode)
    end)

    it("empty non-terminals disappear with their last child", function()
      local z = new_zone()
      assert.equal(R.NOERROR, ask(z, dns.query("svc.overlay.internal", "A")).rcode)
      z:remove("db.svc")
      assert.equal(R.NXDOMAIN, ask(z, dns.query("svc.overlay.internal", "A")).rcode)
    end)

    it("bumps the SOA serial on every change", function()
      local z = new_zone()
      local s = z.serial
      z:add("n", "A", "10.200.0.7")
      assert.equal(s + 1, z.serial)
      z:add("n", "A", "10.200.0.7") -- no change
      assert.equal(s + 1, z.serial)
      z:remove("n")
      assert.equal(s + 2, z.serial)
    end)

    it("lists names", function()
      assert.same({ "db.svc.overlay.internal", "node1.overlay.internal", "v6only.overlay.internal",
        "web.overlay.internal" }, new_zone():names())
    end)

    local bad = {
      { "add", { "x", "A", "fd00::1" }, "is not an IPv4 address" },
      { "add", { "x", "AAAA", "10.0.0.1" }, "is not an IPv6 address" },
      { "add", { "x", "A", "10.0.0.0/24" }, "is not an IPv4 address" },
      { "add", { "x", "MX", "10.0.0.1" }, "unknown record kind" },
      { "add", { "x.example.com.", "A", "10.0.0.1" }, "outside zone" },
      { "add", { "bad name", "A", "10.0.0.1" }, "only letters" },
      { "add", { "a..b", "A", "10.0.0.1" }, "empty label" },
      { "add", { ("x"):rep(64), "A", "10.0.0.1" }, "longer than 63" },
      { "add", { (("x"):rep(60) .. "."):rep(3) .. ("x"):rep(60), "A", "10.0.0.1" }, "too long" },
      { "set", { "x", { "10.0.0.1" }, { "10.0.0.2" } }, "is not an IPv6 address" },
      { "remove", { "x", "TXT" }, "unknown record kind" },
    }
    for _, c in ipairs(bad) do
      it(("%s refuses %s"):format(c[1], c[3]), function()
        local z = new_zone()
        local serial = z.serial
        local ok, err = z[c[1]](z, table.unpack(c[2]))
        assert.is_nil(ok)
        assert.matches(c[3], err)
        assert.equal(serial, z.serial)
      end)
    end

    it("raises on a name that is not a string, refuses a bad origin", function()
      assert.has_error(function() new_zone():add(nil, "A", "10.0.0.1") end)
      assert.is_nil(dns.zone.new(""))
      assert.is_nil(dns.zone.new("a..b"))
    end)
  end)

  describe("fuzzing", function()
    -- Valid seeds the mutator starts from.
    local seeds = {
      dns.query("web.overlay.internal", "A"),
      dns.query("node1.overlay.internal", "AAAA", { edns = true }),
      dns.query("x.example.com", "ANY"),
      dns.query("overlay.internal", "SOA", { edns = { udp_size = 4096, do_bit = true } }),
      header(1, 0x100, 2) .. wname("a.overlay.internal") .. "\0\1\0\1" .. "\1b\192\12\0\1\0\1",
    }
    local interesting = { 0, 1, 0x3F, 0x40, 0x7F, 0x80, 0xBF, 0xC0, 0xC0, 0xFF, 12, 41 }

    local function mutate(s)
      local b = { s:byte(1, -1) }
      for _ = 1, math.random(1, 6) do
        local op = math.random(1, 6)
        local i = math.random(1, math.max(#b, 1))
        if op == 1 and #b > 0 then
          b[i] = math.random(0, 255)
        elseif op == 2 and #b > 0 then
          b[i] = interesting[math.random(#interesting)]
        elseif op == 3 then
          table.insert(b, i, math.random(0, 255))
        elseif op == 4 and #b > 0 then
          table.remove(b, i)
        elseif op == 5 then
          for j = math.random(0, #b), #b do b[j] = nil end -- truncate
        elseif #b > 1 then
          b[i] = b[i] ~ (1 << math.random(0, 7))
        end
      end
      local parts = {}
      for k = 1, #b, 4096 do parts[#parts + 1] = string.char(table.unpack(b, k, math.min(#b, k + 4095))) end
      return table.concat(parts)
    end

    local function random_bytes()
      local n = math.random(0, 80)
      local t = {}
      for i = 1, n do t[i] = math.random(0, 255) end
      return string.char(table.unpack(t))
    end

    it("20000 random and mutated queries: no error, nil or a valid response", function()
      local seed = tonumber(os.getenv("WGO_FUZZ_SEED") or "") or 20240607
      math.randomseed(seed)
      local z = new_zone()
      for i = 1, 30 do z:add("big", "A", "10.200.2." .. i) end
      local counts = { answered = 0, dropped = 0 }
      for i = 1, 20000 do
        local q
        if i % 5 == 0 then q = random_bytes() else q = mutate(seeds[math.random(#seeds)]) end
        local transport = (i % 2 == 0) and "udp" or "tcp"
        local ok, resp, reason = pcall(z.answer, z, q, { transport = transport, forward = i % 3 == 0 })
        assert(ok, ("seed %d, query %s raised: %s"):format(seed, hex(q), tostring(resp)))
        local pok, m = pcall(dns.parse, q)
        assert(pok, "parse raised on " .. hex(q))
        if resp then
          counts.answered = counts.answered + 1
          local r, err = dns.parse(resp)
          assert(r, ("invalid response to %s: %s"):format(hex(q), tostring(err)))
          assert(r.qr, "response without QR")
          assert.equal((q:byte(1) << 8) | q:byte(2), r.id)
          assert(r.qdcount <= 1)
          if transport == "udp" then assert(#resp <= dns.UDP_MAX) end
          if m == nil then assert.equal(R.FORMERR, r.rcode) end
        else
          counts.dropped = counts.dropped + 1
          assert(reason == "drop" or reason == "forward")
        end
      end
      assert.is_true(counts.answered > 5000)
      assert.is_true(counts.dropped > 100)
    end)
  end)
end)

-- Bounded cost (issue 13): header-only rejection, pointer hops, name
-- lengths, the parse budget.  `dns.work` counts name-decoding steps.

-- A query with `qd` in its question count whose body is a chain of
-- `chain` questions, each one label plus a pointer to the one before,
-- then questions that are a single pointer to the deepest, up to `size`
-- bytes: the message of the issue (about 0.1 s per message before).
local function pointer_chain_query(qd, chain, size)
  local parts = { "", "\1x\0\0\1\0\1" }
  local pos, prev = 12 + 7, 12
  for _ = 1, chain do
    parts[#parts + 1] = "\1x" .. string.pack(">I2I2I2", 0xC000 | prev, 1, 1)
    prev, pos = pos, pos + 8
  end
  while pos + 6 <= size do
    parts[#parts + 1] = string.pack(">I2I2I2", 0xC000 | prev, 1, 1)
    pos = pos + 6
  end
  parts[1] = header(7, 0x100, qd)
  return table.concat(parts)
end

-- Steps taken by fn().
local function steps(fn)
  local before = dns.work.steps
  local r = table.pack(fn())
  return dns.work.steps - before, table.unpack(r, 1, r.n)
end

describe("dns bounded cost", function()
  it("a 65535-question pointer-chain query: FORMERR from the header, no name read", function()
    local q = pointer_chain_query(65535, 120, 65535)
    assert.is_true(#q > 65000)
    local z = new_zone()
    local parses = dns.work.parses
    local n, resp = steps(function() return z:answer(q) end)
    assert.equal(0, n)
    assert.equal(parses, dns.work.parses)
    local m = assert(dns.parse(resp))
    assert.equal(7, m.id)
    assert.is_true(m.qr)
    assert.equal(R.FORMERR, m.rcode)
    assert.equal(0, m.qdcount)
    -- dns.parse itself refuses counts that cannot fit, before any name
    local err, h
    n, m, err, h = steps(function() return dns.parse(q) end)
    assert.equal(0, n)
    assert.is_nil(m)
    assert.matches("section counts run past the end", err)
    assert.equal(65535, h.qdcount)
    -- and so does a SERVFAIL made for it
    n, resp = steps(function() return dns.error_response(q, R.SERVFAIL) end)
    assert.equal(0, n)
    assert.equal(0, dns.parse(resp).qdcount)
  end)

  it("counts that fit: parse stops at 2 steps per byte (+512)", function()
    local q = pointer_chain_query(0, 120, 65535)
    local qd = (#q - 12 - 7 - 120 * 8) // 6 + 121
    q = header(7, 0x100, qd) .. q:sub(13)
    local n, m, err = steps(function() return dns.parse(q) end)
    assert.is_nil(m)
    assert.matches("too much work", err)
    assert.is_true(n <= 2 * #q + 512, n)
    -- the zone never parses it (more than one question)
    n = steps(function() return new_zone():answer(q) end)
    assert.equal(0, n)
    -- a shorter chain in a small message parses: each name costs its
    -- labels and pointers
    local small = pointer_chain_query(0, 20, 12 + 7 + 20 * 8 + 6 * 3)
    small = header(7, 0x100, 24) .. small:sub(13)
    n, m = steps(function() return dns.parse(small) end)
    assert(m, "a valid message was refused")
    assert.equal(21, #m.questions[24].labels)
    assert.equal(21 * 22 // 2 + 20 * 21 // 2 + 3 * 42, n) -- labels + pointers of every name
  end)

  it("answers a query over QUERY_MAX bytes with FORMERR, unparsed", function()
    local q = dns.query("web.overlay.internal", "A", { edns = { options = ("\0"):rep(dns.QUERY_MAX) } })
    local n, resp = steps(function() return new_zone():answer(q) end)
    assert.equal(0, n)
    assert.equal(R.FORMERR, dns.parse(resp).rcode)
    assert.equal(3, #(ask(new_zone(), dns.query("web.overlay.internal", "A", { edns = true })).answers))
  end)

  it("check_query decides from the header alone", function()
    assert.same({ nil, "drop" }, { dns.check_query("short") })
    assert.same({ nil, "drop" }, { dns.check_query(header(1, 0x8100)) })
    local h, rcode = dns.check_query(raw_query(3, "a.b", 1))
    assert.equal(3, h.id)
    assert.is_nil(rcode)
    assert.equal(R.NOTIMP, select(2, dns.check_query(raw_query(3, "a.b", 1, 2 << 11))))
    assert.equal(R.FORMERR, select(2, dns.check_query(header(3, 0x100, 0))))
    assert.equal(R.FORMERR, select(2, dns.check_query(header(3, 0x100 | 2 << 11, 2))))
    -- an unknown opcode with garbage after the header is FORMERR, not NOTIMP
    assert.equal(R.FORMERR, ask(new_zone(), header(3, 0x100 | 2 << 11) .. "\63x").rcode)
    assert.equal(R.NOTIMP, ask(new_zone(), raw_query(3, "a.b", 1, 2 << 11)).rcode)
  end)

  -- A message whose answer record holds, as opaque rdata, a chain of
  -- `hops` pointers (each to the one before, the first to the root name
  -- at offset 12); a second record's owner points to the last.
  local function hop_chain(hops)
    local rdata_at = 12 + 5 + 1 + 10 -- question "\0" + type/class, owner "\0", record header
    local ptrs, prev = {}, 12
    for i = 1, hops do
      ptrs[i] = string.pack(">I2", 0xC000 | prev)
      prev = rdata_at + (i - 1) * 2
    end
    local rdata = table.concat(ptrs)
    return header(1, 0x8100, 1, 2) .. "\0\0\1\0\1" .. "\0" .. string.pack(">I2I2I4s2", 99, 1, 0, rdata)
      .. string.pack(">I2I2I2I4I2", 0xC000 | prev, 1, 1, 0, 4) .. "\1\2\3\4"
  end

  it("bounds compression pointers per name", function()
    local m = assert(dns.parse(hop_chain(126))) -- 127 pointers from the owner
    assert.equal("", m.answers[2].name)
    assert.is_nil(dns.parse(hop_chain(127)))
    local n, err
    n, m, err = steps(function() return dns.parse(hop_chain(300)) end)
    assert.is_nil(m)
    assert.matches("too many compression pointers", err)
    assert.is_true(n <= 130, n)
  end)

  it("names of 255 octets parse, 256 do not, with or without compression", function()
    -- 3 * 64 + 62 + 1 = 255 octets on the wire
    local name255 = ("\63" .. ("x"):rep(63)):rep(3) .. "\61" .. ("y"):rep(61) .. "\0"
    local m = assert(dns.parse(header(1, 0x100) .. name255 .. "\0\1\0\1"))
    assert.equal(4, #m.question.labels)
    local name256 = ("\63" .. ("x"):rep(63)):rep(3) .. "\62" .. ("y"):rep(62) .. "\0"
    local _, err = dns.parse(header(1, 0x100) .. name256 .. "\0\1\0\1")
    assert.matches("longer than 255", err)
    -- a label in front of a pointer to a 254-octet name makes 256
    local name254 = ("\63" .. ("x"):rep(63)):rep(3) .. "\60" .. ("y"):rep(60) .. "\0"
    local q = header(1, 0x100, 2) .. name254 .. "\0\1\0\1" .. "\1a\192\12" .. "\0\1\0\1"
    _, err = dns.parse(q)
    assert.matches("question: name longer than 255", err)
    q = header(1, 0x100, 2) .. name254 .. "\0\1\0\1" .. "\192\12" .. "\0\1\0\1"
    assert.truthy(dns.parse(q))
  end)
end)

describe("dns server limits", function()
  local server = require "wgoverlay.dns_server"

  describe("limiter (injected clock)", function()
    it("a per-source bucket: burst, then the rate", function()
      local l = server.limiter({ rate = 2, burst = 4 })
      for _ = 1, 4 do assert.is_true(l:allow("10.0.0.1", "query", 0)) end
      assert.same({ false, "source" }, { l:allow("10.0.0.1", "query", 0) })
      assert.equal(0.5, l:wait("10.0.0.1", "query", 0))
      assert.is_false(l:allow("10.0.0.1", "query", 0.4))
      assert.is_true(l:allow("10.0.0.1", "query", 0.5))
      assert.is_false(l:allow("10.0.0.1", "query", 0.5))
      -- refills up to the burst only
      for _ = 1, 4 do assert.is_true(l:allow("10.0.0.1", "query", 100)) end
      assert.is_false(l:allow("10.0.0.1", "query", 100))
    end)

    it("sources are independent; the global bucket caps them all", function()
      local l = server.limiter({ rate = 1, burst = 2, global_rate = 1, global_burst = 5 })
      assert.is_true(l:allow("a", "query", 0))
      assert.is_true(l:allow("a", "query", 0))
      assert.is_false(l:allow("a", "query", 0))
      assert.is_true(l:allow("b", "query", 0))
      assert.is_true(l:allow("b", "query", 0))
      assert.is_true(l:allow("c", "query", 0))
      assert.same({ false, "global" }, { l:allow("c", "query", 0) })
      assert.same({ false, "global" }, { l:allow("d", "query", 0) })
    end)

    it("errors have their own buckets", function()
      local l = server.limiter({ rate = 1, burst = 1, error_rate = 1, error_burst = 3 })
      assert.is_true(l:allow("a", "query", 0))
      assert.is_false(l:allow("a", "query", 0))
      for _ = 1, 3 do assert.is_true(l:allow("a", "error", 0)) end
      assert.is_false(l:allow("a", "error", 0))
      assert.is_true(l:allow("a", "query", 1))
    end)

    it("charges expensive messages, with a bounded debt", function()
      local l = server.limiter({ rate = 10, burst = 10 })
      assert.is_true(l:allow("a", "query", 0))
      l:charge("a", "query", 1000, 0)
      assert.is_false(l:allow("a", "query", 0))
      assert.equal(1.1, l:wait("a", "query", 0)) -- debt of one burst: (1 + 10) / 10
      assert.is_true(l:allow("a", "query", 1.1))
    end)

    it("classifies from the header", function()
      assert.equal("query", server.classify(dns.query("a.b", "A")))
      assert.equal("error", server.classify(pointer_chain_query(65535, 10, 600)))
      assert.equal("error", server.classify("\1\2\3"))
      assert.equal("error", server.classify(header(1, 0x8100)))
    end)

    it("forgets idle sources", function()
      local l = server.limiter({ rate = 1, burst = 1 })
      for i = 1, 5000 do l:allow("s" .. i, "query", i * 2) end
      assert.is_true(l.nsources <= 4096)
    end)
  end)

  describe("on loopback", function()
    local uv = require "luv"
    local srv, now, logged

    -- Run the loop until pred() or `timeout` seconds (real time).
    local function run_until(pred, timeout)
      local tick = uv.new_timer()
      tick:start(5, 5, function() end)
      local deadline = uv.hrtime() + (timeout or 3) * 1e9
      while not pred() and uv.hrtime() < deadline do uv.run("once") end
      tick:close()
      uv.run("nowait")
      return pred()
    end

    local function start(opts)
      opts.zone, opts.port = new_zone(), 0
      opts.clock = function() return now end
      opts.log = function(m) logged[#logged + 1] = m end
      srv = assert(server.new(opts))
      assert(srv:start())
      return srv:port()
    end

    -- A luv TCP client collecting answer frames (none with `noread`).
    local function client(port, noread)
      local c = { sock = uv.new_tcp(), buf = "", frames = {}, sent = 0 }
      c.sock:connect("127.0.0.1", port, function(err)
        if err then c.closed = err return end
        c.connected = true
        if noread then return end
        c.sock:read_start(function(rerr, chunk)
          if rerr or not chunk then c.closed = rerr or "eof" return end
          c.buf = c.buf .. chunk
          while #c.buf >= 2 do
            local n = string.unpack(">I2", c.buf)
            if #c.buf < 2 + n then break end
            c.frames[#c.frames + 1] = assert(dns.parse(c.buf:sub(3, 2 + n)))
            c.buf = c.buf:sub(3 + n)
          end
        end)
      end)
      function c:send(data)
        self.sent = self.sent + #data
        self.sock:write(data)
      end
      function c:ask(id) self:send(string.pack(">s2", dns.query("web.overlay.internal", "A", { id = id }))) end
      function c:close() if not self.sock:is_closing() then self.sock:close() end end
      assert(run_until(function() return c.connected or c.closed end))
      return c
    end

    before_each(function() now, logged = 0, {} end)
    after_each(function()
      if srv then srv:stop() end
      srv = nil
      uv.run("nowait")
    end)

    it("closes a TCP connection that sends single bytes but no message by its deadline", function()
      local port = start({ tcp_idle = 0.3 })
      local c = client(port)
      c:send("\0\100") -- a 100-byte frame, then one byte every 50 ms
      local drip = uv.new_timer()
      drip:start(50, 50, function() if not c.closed then c:send("x") end end)
      assert(run_until(function() return c.closed end, 5), "not closed")
      drip:close()
      assert.is_true(c.sent < 2 + 100, "the frame completed: " .. c.sent)
      local st = srv:stats()
      assert.equal(1, st.tcp_timeouts)
      assert.equal(1, st.tcp_slow)
      assert.equal(0, st.tcp_open)
      assert.matches("sent no complete message", logged[1])
      c:close()
    end)

    it("complete messages keep a TCP connection open past the deadline", function()
      local port = start({ tcp_idle = 1 })
      local c = client(port)
      local sent = 0
      local every = uv.new_timer()
      every:start(0, 250, function()
        if sent < 6 then sent = sent + 1 c:ask(sent) end
      end)
      assert(run_until(function() return #c.frames == 6 or c.closed end, 5))
      every:close()
      assert.is_nil(c.closed)
      assert.equal(6, #c.frames)
      assert.equal(0, srv:stats().tcp_timeouts)
      c:close()
    end)

    it("a source over tcp_per_source loses its connection idle longest", function()
      local port = start({ tcp_per_source = 2 })
      now = 1
      local a = client(port)
      assert(run_until(function() return srv:stats().tcp_open == 1 end))
      now = 2
      local b = client(port)
      assert(run_until(function() return srv:stats().tcp_open == 2 end))
      now = 3
      a:ask(1) -- a's deadline restarts at 3: b has waited longest
      assert(run_until(function() return #a.frames == 1 end))
      now = 4
      local c = client(port)
      assert(run_until(function() return b.closed end), "b was not closed")
      c:ask(2)
      a:ask(3)
      assert(run_until(function() return #c.frames == 1 and #a.frames == 2 end))
      assert.is_nil(a.closed)
      local st = srv:stats()
      assert.equal(1, st.tcp_evicted)
      assert.equal(2, st.tcp_open)
      assert.equal(3, st.tcp_accepted)
      for _, x in ipairs({ a, b, c }) do x:close() end
    end)

    it("TCP over the rate: reading pauses, answers resume in order when tokens return", function()
      local port = start({ rate = 1, burst = 3 })
      local c = client(port)
      local batch = {}
      for i = 1, 6 do batch[i] = string.pack(">s2", dns.query("web.overlay.internal", "A", { id = i })) end
      c:send(table.concat(batch))
      assert(run_until(function() return #c.frames == 3 and srv:stats().tcp_rate_limited > 0 end))
      run_until(function() return false end, 0.2)
      assert.equal(3, #c.frames) -- the clock stands still: no tokens
      now = 100
      assert(run_until(function() return #c.frames == 6 end, 3))
      for i = 1, 6 do assert.equal(i, c.frames[i].id) end
      assert.is_nil(c.closed)
      assert.matches("TCP reading paused", logged[1])
      c:close()
    end)

    it("UDP over the rate is dropped; errors have their own budget; logs are rate-limited", function()
      local port = start({ rate = 1, burst = 5, error_rate = 1, error_burst = 2, log_interval = 10 })
      local u = uv.new_udp()
      local got = {}
      u:recv_start(function(err, data) if not err and data then got[#got + 1] = assert(dns.parse(data)) end end)
      for i = 1, 8 do u:send(dns.query("web.overlay.internal", "A", { id = i }), "127.0.0.1", port) end
      assert(run_until(function() return srv:stats().udp_messages == 8 and #got == 5 end))
      for i = 1, 3 do u:send(header(100 + i, 0x100, 2), "127.0.0.1", port) end
      assert(run_until(function() return srv:stats().udp_messages == 11 and #got == 7 end))
      assert.equal(R.FORMERR, got[7].rcode)
      local st = srv:stats()
      assert.equal(4, st.udp_rate_limited)
      assert.equal(2, st.header_errors)
      -- one log line so far; the next, after log_interval, tells how many were held
      assert.equal(1, #logged)
      now = 20
      u:send(dns.query("web.overlay.internal", "A", { id = 50 }), "127.0.0.1", port)
      assert(run_until(function() return #got == 8 end))
      assert.equal(50, got[8].id)
      for i = 1, 7 do u:send(dns.query("web.overlay.internal", "A", { id = i }), "127.0.0.1", port) end
      assert(run_until(function() return srv:stats().udp_messages == 19 end))
      assert.equal(2, #logged)
      assert.matches("and 3 more in the last 20 s", logged[2])
      u:close()
    end)

    it("a failed TCP write closes that connection only", function()
      -- SIGPIPE caught here (the daemon ignores it): the write fails instead
      local sigpipe = uv.new_signal()
      sigpipe:start("sigpipe", function() end)
      local port = start({ rate = 1, burst = 3 })
      local c = client(port, true)
      local batch = {}
      for i = 1, 50 do batch[i] = string.pack(">s2", dns.query("web.overlay.internal", "A", { id = i })) end
      c:send(table.concat(batch))
      assert(run_until(function() return srv:stats().answered == 3 and srv:stats().tcp_rate_limited > 0 end))
      -- the client goes with answers unread (a reset); the rest is answered into it
      c:close()
      run_until(function() return false end, 0.1)
      now = 100
      assert(run_until(function() return srv:stats().tcp_write_errors == 1 end, 3))
      assert.equal(0, srv:stats().tcp_open)
      assert.matches("TCP write to 127.0.0.1 failed", logged[#logged])
      now = 200 -- (the same source: tokens again)
      local d = client(port)
      d:ask(7)
      assert(run_until(function() return #d.frames == 1 end))
      assert.equal(7, d.frames[1].id)
      d:close()
      sigpipe:close()
    end)

    it("a pointer-chain flood over TCP costs header checks only", function()
      local port = start({})
      local c = client(port)
      local q = pointer_chain_query(65535, 120, 65535)
      local before = dns.work.steps
      for _ = 1, 10 do c:send(string.pack(">s2", q)) end
      c:ask(1)
      assert(run_until(function() return #c.frames == 11 end, 5))
      assert.equal(R.FORMERR, c.frames[10].rcode)
      assert.equal(3, #c.frames[11].answers)
      assert.is_true(dns.work.steps - before < 100, dns.work.steps - before)
      assert.equal(10, srv:stats().header_errors)
      c:close()
    end)
  end)
end)
