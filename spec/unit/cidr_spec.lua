-- CIDR parsing and formatting (wgoverlay.cidr, pure Lua).

local cidr = require "wgoverlay.cidr"

local function bytes(c) return table.concat(c.bytes, ".") end

describe("cidr", function()
  describe("parse", function()
    it("reads IPv4 prefixes", function()
      local c = assert(cidr.parse("10.77.0.1/24"))
      assert.equal(4, c.family)
      assert.equal(24, c.prefix)
      assert.same({ 10, 77, 0, 1 }, c.bytes)
      assert.same({ family = 4, bytes = { 0, 0, 0, 0 }, prefix = 0 }, cidr.parse("0.0.0.0/0"))
      assert.same({ 255, 255, 255, 255 }, cidr.parse("255.255.255.255/32").bytes)
    end)

    it("reads IPv6 prefixes, including :: forms and an embedded IPv4 tail", function()
      local c = assert(cidr.parse("fd77::1/64"))
      assert.equal(6, c.family)
      assert.equal(64, c.prefix)
      assert.equal("253.119.0.0.0.0.0.0.0.0.0.0.0.0.0.1", bytes(c))
      assert.equal(("0."):rep(15) .. "0", bytes(cidr.parse("::/0")))
      assert.equal(("0."):rep(15) .. "1", bytes(cidr.parse("::1")))
      assert.equal("0.1." .. ("0."):rep(13) .. "0", bytes(cidr.parse("1::")))
      assert.equal("0.1.0.2.0.3.0.4.0.5.0.6.0.7.0.8", bytes(cidr.parse("1:2:3:4:5:6:7:8")))
      assert.equal("0.0.0.0.0.0.0.0.0.0.255.255.192.0.2.1", bytes(cidr.parse("::ffff:192.0.2.1/128")))
      assert.equal("0.1.0.2.0.3.0.4.0.5.0.6.192.0.2.1", bytes(cidr.parse("1:2:3:4:5:6:192.0.2.1")))
      assert.equal("254.128." .. ("0."):rep(13) .. "1", bytes(cidr.parse("FE80::1")))
    end)

    it("gives a bare address a host prefix", function()
      assert.equal(32, cidr.parse("192.0.2.7").prefix)
      assert.equal(128, cidr.parse("fd00::7").prefix)
    end)

    local invalid = {
      "", "10.0.0.1/", "/24", "10.0.0/24", "10.0.0.0.1/24", "10.0.0.256/24", "10.0.0.01/24",
      "10.0.0.1/024", "10.0.0.1/-1", "10.0.0.1/ 24", " 10.0.0.1/24", "10.0.0.1/24 ", "10.0.0.1/24/1",
      "10.0.0.1/x", "a.b.c.d", "1:2:3:4:5:6:7:8:9", "1::2::3", ":::", "1:2:3:4:5:6:7:", ":1:2:3:4:5:6:7",
      "12345::1", "fe80::1%eth0", "g::1", "1.2.3.4::", "::1.2.3", "::1.2.3.4.5", "fd00::/", "host.example/24",
    }
    for _, s in ipairs(invalid) do
      it(("rejects %q with CIDR \"...\" invalid"):format(s), function()
        local c, err = cidr.parse(s)
        assert.is_nil(c)
        assert.equal(('CIDR "%s" invalid'):format(s), err)
      end)
    end

    it("rejects prefixes longer than the address and says so", function()
      local c, err = cidr.parse("10.0.0.1/33")
      assert.is_nil(c)
      assert.equal('CIDR "10.0.0.1/33" invalid: prefix longer than 32', err)
      c, err = cidr.parse("fd00::1/129")
      assert.is_nil(c)
      assert.equal('CIDR "fd00::1/129" invalid: prefix longer than 128', err)
    end)

    it("returns nil and a message (no error) for a non-string", function()
      local c, err = cidr.parse(42)
      assert.is_nil(c)
      assert.matches("string", err)
    end)
  end)

  describe("format", function()
    local cases = {
      { "10.77.0.1/24", "10.77.0.1/24" },
      { "192.0.2.7", "192.0.2.7/32" },
      { "FD77:0000:0000::0001/64", "fd77::1/64" },
      { "::/0", "::/0" },
      { "::1", "::1/128" },
      { "1::", "1::/128" },
      { "2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1/128" },     -- first of two equal runs
      { "2001:0:0:1:0:0:0:1", "2001:0:0:1::1/128" },           -- the longest run wins
      { "2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1/128" },  -- one zero word is not "::"
      { "1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0/128" },
      { "::2:3:4:5:6:7:8", "0:2:3:4:5:6:7:8/128" },            -- nor at the start
      { "0:0:1:0:0:1:0:0", "::1:0:0:1:0:0/128" },
    }
    for _, case in ipairs(cases) do
      it(("writes %s as %s (RFC 5952)"):format(case[1], case[2]), function()
        assert.equal(case[2], cidr.format(assert(cidr.parse(case[1]))))
      end)
    end

    it("round-trips through parse", function()
      for _, s in ipairs({ "10.1.2.3/8", "fd00:2::1/64", "2001:db8::/32", "::ffff:0:0/96" }) do
        local c = assert(cidr.parse(s))
        assert.same(c, cidr.parse(cidr.format(c)))
      end
    end)

    it("gives the address alone with address()", function()
      assert.equal("10.77.0.1", cidr.address(cidr.parse("10.77.0.1/24")))
      assert.equal("fd77::1", cidr.address(cidr.parse("fd77::1/64")))
    end)
  end)

  describe("network", function()
    it("clears the host bits", function()
      assert.equal("10.77.0.0/24", cidr.format(cidr.network(cidr.parse("10.77.0.1/24"))))
      assert.equal("10.77.5.0/28", cidr.format(cidr.network(cidr.parse("10.77.5.9/28"))))
      assert.equal("10.64.0.0/10", cidr.format(cidr.network(cidr.parse("10.77.0.1/10"))))
      assert.equal("0.0.0.0/0", cidr.format(cidr.network(cidr.parse("10.77.0.1/0"))))
      assert.equal("10.77.0.1/32", cidr.format(cidr.network(cidr.parse("10.77.0.1"))))
      assert.equal("fd77::/64", cidr.format(cidr.network(cidr.parse("fd77::1/64"))))
      assert.equal("fd77:5:8000::/33", cidr.format(cidr.network(cidr.parse("fd77:5:ffff::1/33"))))
      assert.equal("fd77:4::/31", cidr.format(cidr.network(cidr.parse("fd77:5:ffff::1/31"))))
    end)

    it("does not modify its argument", function()
      local c = cidr.parse("10.77.0.1/24")
      cidr.network(c)
      assert.equal("10.77.0.1/24", cidr.format(c))
    end)
  end)

  describe("contains", function()
    it("is true for prefixes and addresses inside", function()
      local net = cidr.parse("10.77.0.0/24")
      assert.is_true(cidr.contains(net, cidr.parse("10.77.0.2/32")))
      assert.is_true(cidr.contains(net, cidr.parse("10.77.0.128/25")))
      assert.is_true(cidr.contains(net, cidr.parse("10.77.0.0/24")))
      assert.is_true(cidr.contains(cidr.parse("10.77.0.1/24"), cidr.parse("10.77.0.200")))
      assert.is_true(cidr.contains(cidr.parse("::/0"), cidr.parse("fd77::1")))
      assert.is_true(cidr.contains(cidr.parse("fd77::/64"), cidr.parse("fd77::2/128")))
    end)

    it("is false outside, for wider prefixes and across families", function()
      local net = cidr.parse("10.77.0.0/24")
      assert.is_false(cidr.contains(net, cidr.parse("10.77.1.2/32")))
      assert.is_false(cidr.contains(net, cidr.parse("10.77.0.0/16")))
      assert.is_false(cidr.contains(net, cidr.parse("10.77.5.0/28")))
      assert.is_false(cidr.contains(net, cidr.parse("::ffff:10.77.0.2")))
      assert.is_false(cidr.contains(cidr.parse("fd77::/64"), cidr.parse("fd77:0:0:1::2")))
      assert.is_false(cidr.contains(cidr.parse("::/0"), cidr.parse("10.0.0.1")))
    end)
  end)
end)
