-- The leader key query (wgoverlay.leaderkey): a member that was down
-- while the leader rotated its key learns the new one, authenticated both
-- ways; forgeries, replays to another query, strangers and junk get nothing.
local leaderkey = require "wgoverlay.leaderkey"
local core = require "wgoverlay.core"
local membership = require "wgoverlay.membership"

describe("leaderkey", function()
  local mpriv, mpub = core.generate_keys()
  local cpriv_raw, cpub_raw = core.x25519_keypair()
  local cpub = core.key_to_base64(cpub_raw)
  local _, lnew = core.generate_keys()
  local NOW = 1800000000

  local function ctx(o)
    o = o or {}
    return { control_private = o.control_private or cpriv_raw, now = o.now or NOW,
             is_member = o.is_member or function(pub) return pub == mpub end,
             leader = { public_key = lnew, endpoint = "192.0.2.1:51820" } }
  end

  it("a member's query gets the leader's current key, and no answer is larger than its query", function()
    local q, pending = assert(leaderkey.query(mpriv, mpub, cpub, NOW))
    assert.equal(leaderkey.KEY_REQ, leaderkey.kind(q))
    local a = assert(leaderkey.answer(q, ctx()))
    assert.equal(leaderkey.KEY_RESP, leaderkey.kind(a))
    assert.is_true(#a <= #q)
    assert.same({ public_key = lnew, endpoint = "192.0.2.1:51820" }, leaderkey.open_answer(pending, a))
  end)

  it("refuses strangers, other control keys, tampering and stale clocks", function()
    local q = assert(leaderkey.query(mpriv, mpub, cpub, NOW))
    assert.is_nil((leaderkey.answer(q, ctx({ is_member = function() return false end }))))
    local other_priv = core.x25519_keypair()
    assert.matches("does not authenticate", select(2, leaderkey.answer(q, ctx({ control_private = other_priv }))))
    local flipped = q:sub(1, #q - 10) .. (q:sub(#q - 9, #q - 9) == "A" and "B" or "A") .. q:sub(#q - 8)
    assert.is_nil((leaderkey.answer(flipped, ctx())))
    assert.matches("timestamp", select(2, leaderkey.answer(q, ctx({ now = NOW + 301 }))))
    -- a stranger who knows the member's public key but not its private key
    local spriv = core.generate_keys()
    local forged = assert(leaderkey.query(spriv, mpub, cpub, NOW))
    assert.matches("does not authenticate", select(2, leaderkey.answer(forged, ctx())))
  end)

  it("a member takes only the answer to its own outstanding query", function()
    local q1, p1 = assert(leaderkey.query(mpriv, mpub, cpub, NOW))
    local _, p2 = assert(leaderkey.query(mpriv, mpub, cpub, NOW))
    local a1 = assert(leaderkey.answer(q1, ctx()))
    assert.matches("another query", select(2, leaderkey.open_answer(p2, a1)))
    assert.is_nil((leaderkey.open_answer(nil, a1)))
    -- an answer sealed for another member does not open
    local opriv, opub = core.generate_keys()
    local oq = assert(leaderkey.query(opriv, opub, cpub, NOW))
    local oa = assert(leaderkey.answer(oq, ctx({ is_member = function() return true end })))
    assert.is_nil((leaderkey.open_answer(p1, oa)))
    -- a query is not an answer
    assert.is_nil((leaderkey.open_answer(p1, q1)))
  end)

  it("never raises on junk", function()
    math.randomseed(3)
    local _, pending = leaderkey.query(mpriv, mpub, cpub, NOW)
    for i = 1, 300 do
      local n = math.random(0, 500)
      local junk = { "WGO1", string.char(i % 2 == 0 and 4 or 5) }
      for _ = 1, n do junk[#junk + 1] = string.char(math.random(0, 255)) end
      local s = table.concat(junk)
      assert.is_nil((leaderkey.answer(s, ctx())))
      assert.is_nil((leaderkey.open_answer(pending, s)))
    end
    for _, s in ipairs({ "WGO1\4{}", 'WGO1\4{"p":1}', 'WGO1\4{"p":"' .. mpub .. '","n":"x","c":"y"}',
                         'WGO1\5{"n":[],"c":{}}', "WGO1\1{}", "", "WGO1" }) do
      assert.is_nil((leaderkey.answer(s, ctx())))
      assert.is_nil((leaderkey.open_answer(pending, s)))
    end
    assert.is_nil(leaderkey.kind(nil))
    assert.is_nil((leaderkey.query("bad", mpub, cpub)))
  end)

  it("the member view takes a key learned this way without changing its version", function()
    local v = assert(membership.member.new({ self_name = "a", version = 7, members = {
      { name = "leader", public_key = "old" }, { name = "a", public_key = "ka" } } }))
    assert.is_true(v:set_public_key("leader", "new"))
    assert.is_false(v:set_public_key("leader", "new"))
    assert.is_false(v:set_public_key("nobody", "x"))
    assert.equal("new", v:get("leader").public_key)
    assert.equal(7, v.version)
  end)
end)
