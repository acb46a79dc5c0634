-- The DNS codec and the authoritative zone (wgoverlay.dns, pure):
-- known-answer bytes, compression, every response code, hand-built
-- malformed queries, removal, truncation, and a 20k-message fuzz loop.

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
