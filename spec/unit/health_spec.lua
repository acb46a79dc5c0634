-- Authenticated health probes: a reply counts once, only with a nonce we
-- sent to that peer and only from that peer's overlay address.
local health = require "wgoverlay.health"

describe("health probes", function()
  local t, now, seq
  before_each(function()
    now, seq = 100.0, 0
    t = health.tracker({
      clock = function() return now end,
      random = function(n) seq = seq + 1 return string.pack(">I4", seq):rep(n // 4) end,
    })
  end)

  it("a probe is answered with its nonce; replies and junk are not answered", function()
    local p = t:probe("KA", "10.200.0.17")
    assert.equal(20, #p)
    local r = health.answer(p)
    assert.equal("WGR2" .. p:sub(5), r)
    assert.is_nil(health.answer(r))
    assert.is_nil(health.answer("WGP2short"))
    assert.is_nil(health.answer("WGOPsomekey\n123"))
  end)

  it("accepts the peer's own reply once, with the round trip", function()
    local p = t:probe("KA", "10.200.0.17")
    now = now + 0.25
    local key, rtt = t:on_reply(health.answer(p), "10.200.0.17")
    assert.equal("KA", key)
    assert.near(0.25, rtt, 1e-9)
    local again, why = t:on_reply(health.answer(p), "10.200.0.17")
    assert.is_nil(again)
    assert.matches("already answered", why)
    assert.same({ accepted = 1, refused = 1 }, t.stats)
  end)

  it("refuses a reply from another address, and keeps the nonce for the real one", function()
    local p = t:probe("KA", "10.200.0.17")
    local key, why = t:on_reply(health.answer(p), "10.200.0.18")
    assert.is_nil(key)
    assert.matches("not the peer's address", why)
    assert.equal("KA", (t:on_reply(health.answer(p), "10.200.0.17")))
  end)

  it("refuses forged nonces, another peer's nonce from the wrong address, and the old format", function()
    local pa = t:probe("KA", "10.200.0.17")
    t:probe("KB", "10.200.0.33")
    assert.is_nil((t:on_reply("WGR2" .. string.rep("\0", 16), "10.200.0.17")))
    assert.is_nil((t:on_reply(health.answer(pa), "10.200.0.33")))
    assert.is_nil((t:on_reply("WGORKA\n12345", "10.200.0.17")))
    assert.equal(3, t.stats.refused)
    assert.equal(0, t.stats.accepted)
  end)

  it("keeps at most OUTSTANDING nonces per peer; forget drops a peer's", function()
    local first = t:probe("KA", "10.200.0.17")
    for _ = 1, health.OUTSTANDING do t:probe("KA", "10.200.0.17") end
    assert.is_nil((t:on_reply(health.answer(first), "10.200.0.17")), "expired nonce accepted")
    local last = t:probe("KA", "10.200.0.17")
    t:forget("KA")
    assert.is_nil((t:on_reply(health.answer(last), "10.200.0.17")), "nonce of a forgotten peer accepted")
  end)
end)
