-- The one endpoint parser/formatter (wgoverlay.endpoint): what is accepted
-- and what is refused, everywhere an endpoint is read.
local endpoint = require "wgoverlay.endpoint"

describe("endpoint", function()
  it("accepts IPv4, bracketed IPv6 (canonical form) and zones", function()
    assert.same({ ip = "192.0.2.1", port = 51820, family = 4 }, endpoint.parse("192.0.2.1:51820"))
    assert.same({ ip = "fd00::1", port = 1, family = 6 }, endpoint.parse("[fd00:0:0::0001]:1"))
    assert.same({ ip = "fe80::1", port = 65535, family = 6, zone = "eth0" }, endpoint.parse("[fe80::1%eth0]:65535"))
    assert.same({ ip = "::ffff:c000:201", port = 53, family = 6 }, endpoint.parse("[::ffff:192.0.2.1]:53"))
    assert.equal("[fd00::1]:7", endpoint.normalize("[FD00:0::1]:7"))
    assert.equal("[fe80::1%wg0]:9", endpoint.normalize("[fe80::1%wg0]:9"))
    assert.equal("10.0.0.1:9", endpoint.format("10.0.0.1", 9))
    assert.equal("[fd00::2]:9", endpoint.format({ ip = "fd00::2", port = 9, family = "inet6" }))
  end)

  it("refuses everything else with one message", function()
    for _, bad in ipairs({
      "", "192.0.2.1", "192.0.2.1:", "192.0.2.1:0", "192.0.2.1:65536", "192.0.2.1:100000", "192.0.2.1:+5",
      "192.0.2.1:-5", " 192.0.2.1:5", "192.0.2.1:5 ", "[192.0.2.1]:5", "fd00::1:5", "[fd00::1]", "[fd00::1]:",
      "[fd00::1]:0", "[fd00::g]:5", "[fd00::1%]:5", "[fd00::1%0123456789abcdef]:5", "[fd00::1%a b]:5",
      "192.0.2.1%eth0:5", "[192.0.2.1%eth0]:5", "example.com:53", "localhost:53", "256.0.0.1:5",
      "192.0.2:5", "10.0.0.0/8:5", "[fd00::/64]:5", "1.2.3.4:000051820", string.rep("1", 70),
    }) do
      local e, err = endpoint.parse(bad)
      assert.is_nil(e, bad)
      assert.equal(string.format("endpoint \"%s\" invalid: expected IP:PORT or [IPv6]:PORT", bad), err)
    end
    assert.is_nil((endpoint.parse(nil)))
    assert.is_nil((endpoint.parse(5353)))
    assert.is_false(endpoint.valid("[fd00::1]"))
    assert.is_true(endpoint.valid("[fd00::1]:5"))
  end)

  it("with a default port, also takes a bare address", function()
    local o = { default_port = 53 }
    assert.same({ ip = "192.0.2.1", port = 53, family = 4 }, endpoint.parse("192.0.2.1", o))
    assert.same({ ip = "fd00::1", port = 53, family = 6 }, endpoint.parse("fd00::1", o))
    assert.same({ ip = "fd00::1", port = 53, family = 6 }, endpoint.parse("[fd00::1]", o))
    assert.same({ ip = "fd00::1", port = 5353, family = 6 }, endpoint.parse("[fd00::1]:5353", o))
    assert.is_nil((endpoint.parse("[192.0.2.1]", o)))
    assert.is_nil((endpoint.parse("name", o)))
  end)
end)
