-- wgoverlay.policy: labels, the document validator (messages name the
-- place) and the nftables ruleset it compiles to.
local policy = require "wgoverlay.policy"

describe("policy", function()
  it("parses and checks labels", function()
    assert.same({ app = "web", ["example.com/tier"] = "front" },
      policy.parse_labels({ "app=web", "example.com/tier=front" }))
    assert.same({ empty = "" }, policy.parse_labels({ "empty=" }))
    local _, err = policy.parse_labels({ "noequals" })
    assert.truthy(err:match("KEY=VALUE"))
    _, err = policy.parse_labels({ "bad key=x" })
    assert.truthy(err:match("bad key"))
    _, err = policy.parse_labels({ "app=-x" })
    assert.truthy(err:match("label%.app"))
    _, err = policy.parse_labels({ "a=1", "a=2" })
    assert.truthy(err:match("twice"))
  end)

  it("validates a document and names the place of an error", function()
    local doc = assert(policy.parse([[{"default":"deny","rules":[
      {"from":{"app":"web"},"to":{"app":"db"},"ports":["tcp/5432"]},
      {"from":{"role":"monitoring"},"to":{},"ports":["tcp/9100","udp/1000-2000","icmp"]}]}]]))
    assert.equal("deny", doc.default)
    assert.equal(2, #doc.rules)
    local cases = {
      { '{"default":"deny","rules":[{"from":{},"to":{},"ports":["tcp/0"]}]}', "^rules%[1%]%.ports%[1%]" },
      { '{"default":"deny","rules":[{"from":{},"to":{},"ports":["sctp/1"]}]}', "^rules%[1%]%.ports%[1%]" },
      { '{"default":"deny","rules":[{"from":{},"to":{},"ports":["tcp/9-3"]}]}', "backwards" },
      { '{"default":"deny","rules":[{},{"from":{},"to":{},"ports":[]}]}', "^rules%[1%]%.from" },
      { '{"default":"deny","rules":[{"from":{},"to":{"a b":"x"},"ports":["icmp"]}]}', "^rules%[1%]%.to" },
      { '{"default":"deny","rules":[{"from":{},"to":{},"ports":["icmp"],"x":1}]}', "^rules%[1%]: unknown key \"x\"" },
      { '{"default":"deny","version":3}', "^policy: unknown key \"version\"" },
      { '{"rules":[]}', "^default" },
      { '[1,2]', "JSON object" },
      { '{"default":', "not JSON" },
    }
    for _, c in ipairs(cases) do
      local ok, err = policy.parse(c[1])
      assert.is_nil(ok, c[1])
      assert.truthy(err:match(c[2]), c[1] .. " -> " .. tostring(err))
    end
  end)

  it("compiles to sets keyed by address, one rule per port item and family", function()
    local doc = assert(policy.validate({ default = "deny", rules = {
      { from = { app = "web" }, to = { app = "db" }, ports = { "tcp/5432", "icmp" } },
      { from = {}, to = {}, ports = { "udp/53" } } } }))
    local all = { { ip = "10.0.0.2", ip6 = "fd00::2", labels = { app = "web" } },
                  { ip = "10.0.1.2", ip6 = "fd00:1::2", labels = { app = "db" } } }
    local here = { all[2] }
    local plan = policy.plan(doc, all, here)
    local text = policy.ruleset(plan, 7, { gen = 6, sets = { "local4" } })
    assert.truthy(text:find("add element inet wgoverlay_policy g7_local4 { 10.0.1.2 }", 1, true))
    assert.truthy(text:find("ip saddr @g7_s1_4 ip daddr @g7_s2_4 meta l4proto tcp th dport 5432 ct mark set 7 accept", 1, true))
    assert.truthy(text:find("ip saddr @g7_all4 meta l4proto udp th dport 53", 1, true))
    assert.truthy(text:find("counter name dropped drop", 1, true))
    assert.truthy(text:find("delete chain inet wgoverlay_policy g6_check", 1, true))
    assert.truthy(text:find("delete set inet wgoverlay_policy g6_local4", 1, true))
    -- default allow: nothing is dropped
    local allow = policy.ruleset(policy.plan({ default = "allow", rules = {} }, all, here), 8)
    assert.is_nil(allow:find("dropped drop", 1, true))
    assert.truthy(allow:find("ct mark set 8 accept", 1, true))
    assert.is_nil(policy.plan(nil, all, here))
  end)

  it("reads nft's counter", function()
    assert.same({ 12, 3400 }, { policy.parse_counter("counter dropped {\n packets 12 bytes 3400\n}") })
  end)
end)
