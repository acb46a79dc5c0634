-- Network policy end to end (issue 19): a leader and two nodes, four
-- labelled containers (web, rogue on a; db, side on b), listeners on
-- tcp/5432 and tcp/22 in db.  Before any policy everything connects;
-- after `policy apply` (default deny, web -> db tcp/5432) only web reaches
-- db:5432, both ways, across nodes; same-node, other ports, the reverse
-- direction and ping are dropped and counted; a second policy that also
-- allows app=rogue (applied on a member) lets rogue in without breaking a web -> db connection
-- open across the change; a third that no longer allows rogue cuts its
-- open connection; a bad policy is refused and changes nothing.
-- Needs root; every address lives in namespaces made here.

local helpers = require "spec.helpers"
local fixture = require "spec.cluster_fixture"
local cjson = require "cjson"

local quote = helpers.quote
local wait_until = helpers.wait_until

describe("network policy #netns", function()
  local cl, L, A, B, web, rogue, db, side

  setup(function()
    cl = fixture.new()
    L = cl:leader("leader", "192.0.2.1")
    A = cl:node("a", "192.0.2.2")
    B = cl:node("b", "192.0.2.3")
    cl:start(L)
    local tok = cl:token(L, 2)
    cl:join(A, tok)
    cl:join(B, tok)
    cl:start(A)
    cl:start(B)
    web = cl:attach("web", A, "web", "--label app=web")
    rogue = cl:attach("rogue", A, "rogue", "--label app=rogue")
    db = cl:attach("db", B, "db", "--label app=db --label tier=data")
    side = cl:attach("side", B, "side", "--label app=side")
    -- echo servers in db (5432, 22) and web (8080)
    for _, p in ipairs({ 5432, 22 }) do
      db.ns:spawn(("socat TCP6-LISTEN:%d,fork,reuseaddr,ipv6only=0 EXEC:cat"):format(p), { name = "db" .. p })
    end
    web.ns:spawn("socat TCP-LISTEN:8080,fork,reuseaddr EXEC:cat", { name = "web8080" })
    cl:wait_health(A, { "leader", "b" }, true, 30)
    cl:wait_health(B, { "leader", "a" }, true, 30)
  end)

  teardown(function() if cl then cl:teardown() end end)

  -- One line through a TCP connection and its echo back.
  local function talk(from, ip, port)
    local target = ip:find(":", 1, true) and ("TCP6:[" .. ip .. "]") or ("TCP:" .. ip)
    local ok, out = from.ns:exec(("echo hello-%d | socat -t 1 -T 2 - %s:%d,connect-timeout=2"):format(port, target, port))
    return ok and out:find("hello-" .. port, 1, true) ~= nil
  end

  local function apply(node, doc)
    local path = helpers.tmpdir() .. "/policy-" .. math.random(1e9) .. ".json"
    helpers.write_file(path, type(doc) == "string" and doc or cjson.encode(doc))
    return cl:cli(node.ns, ("policy apply --state %s %s"):format(quote(node.dir), quote(path)))
  end

  local function enforced(node, version)
    return wait_until(function()
      local st = cl:status(node)
      return st and st.policy.enforced_version == version and st
    end, 5, 0.1)
  end

  local function dropped(node) return cl:status(node).policy.dropped_packets end

  -- A long connection from `c` to db:5432: a line every 0.2 s; returns a
  -- function counting the echoes received so far.
  local function long_connection(c)
    local file = helpers.tmpdir() .. "/echoes-" .. c.key
    c.ns:spawn(("sh -c %s"):format(quote(("while sleep 0.2; do echo ping; done | socat - TCP:%s:5432 > %s")
      :format(db.ip, file))), { name = "long-" .. c.key })
    return function()
      local f = io.open(file)
      if not f then return 0 end
      local n = select(2, f:read("a"):gsub("\n", ""))
      f:close()
      return n
    end
  end

  it("labels travel with the containers and every container reaches every other without a policy", function()
    local st = wait_until(function()
      local s = cl:status(A)
      if not s then return false end
      for _, m in ipairs(s.containers) do if m.name == "web" then return s end end
    end, 5, 0.1)
    assert.truthy(st)
    local labels = {}
    for _, c in ipairs(st.containers) do labels[c.name] = c.labels end
    assert.same({ app = "web" }, labels.web)
    assert.same({ app = "rogue" }, labels.rogue)
    local _, text = cl:cli(A.ns, "status --state " .. quote(A.dir))
    assert.truthy(text:find("container web  " .. web.ip, 1, true) and text:find("  app=web\n", 1, true), text)
    assert.is_true(wait_until(function() return talk(web, db.ip, 5432) end, 10, 0.2) and true)
    assert.is_true(talk(rogue, db.ip, 5432))
    assert.is_true(talk(side, db.ip, 5432))
    assert.is_true(talk(web, db.ip, 22))
    assert.is_true(talk(db, web.ip, 8080))
    assert.is_true(rogue.ns:ping(db.ip, 1, 2))
    assert.equal(cjson.null, cl:status(B).policy.version)
  end)

  it("enforces default deny with one rule, statefully, on both nodes within 5 s", function()
    local a0, b0 = dropped(A), dropped(B)
    local code, out, err = apply(L, { default = "deny",
                                      rules = { { from = { app = "web" }, to = { app = "db" }, ports = { "tcp/5432" } } } })
    assert.equal(0, code, out .. err)
    assert.truthy(out:match("policy version 1 stored"))
    assert.truthy(enforced(B, 1), "node b did not enforce version 1 within 5 s")
    assert.truthy(enforced(A, 1), "node a did not enforce version 1 within 5 s")
    assert.is_true(talk(web, db.ip, 5432))            -- cross-node, data both ways
    assert.is_true(talk(web, db.ip6, 5432))           -- and over IPv6
    assert.is_false(talk(rogue, db.ip6, 5432))
    assert.is_false(talk(rogue, db.ip, 5432))         -- other node, not allowed
    assert.is_false(talk(side, db.ip, 5432))          -- same node as db
    assert.is_false(talk(web, db.ip, 22))             -- allowed peer, other port
    assert.is_false(talk(db, web.ip, 8080))           -- the reverse direction
    assert.is_false(rogue.ns:ping(db.ip, 1, 1))
    assert.is_true(dropped(B) > b0, "node b's drop counter did not rise")
    assert.is_true(dropped(A) > a0, "node a's drop counter did not rise")
    -- the node's own services are never blocked: db still resolves names through b
    local ok, dig = db.ns:exec("getent hosts web." .. fixture.ZONE)
    assert.is_true(ok, dig)
    local _, text = cl:cli(B.ns, "status --state " .. quote(B.dir))
    assert.truthy(text:find("policy version 1 (enforced here: 1), default deny, 1 rules", 1, true), text)
    -- policy show
    local _, plain = cl:cli(B.ns, "policy show --state " .. quote(B.dir))
    assert.truthy(plain:find("policy version 1 (enforced here: 1), default deny, 1 rules", 1, true), plain)
    assert.truthy(plain:find("1. app=web -> app=db: tcp/5432", 1, true), plain)
    local sc, show = cl:cli(B.ns, "policy show --state " .. quote(B.dir) .. " --json")
    assert.equal(0, sc)
    local s = cjson.decode(show)
    assert.equal(1, s.version)
    assert.equal("deny", s.policy.default)
  end)

  it("a new policy applied on a member lets rogue in and keeps a web -> db connection open across the change", function()
    local echoes = long_connection(web)
    assert.truthy(wait_until(function() return echoes() >= 3 end, 5, 0.1))
    -- applied on a member this time: its session carries it to the leader
    local code, out, err = apply(A, { default = "deny", rules = {
      { from = { app = "web" }, to = { app = "db" }, ports = { "tcp/5432" } },
      { from = { app = "rogue" }, to = { app = "db" }, ports = { "tcp/5432", "icmp" } } } })
    assert.equal(0, code, out .. err)
    assert.truthy(out:match("policy version 2 stored"), out)
    assert.truthy(enforced(B, 2), "node b did not enforce version 2 within 5 s")
    assert.is_true(talk(rogue, db.ip, 5432))
    assert.is_true(rogue.ns:ping(db.ip, 1, 2))
    local before = echoes()
    assert.truthy(wait_until(function() return echoes() >= before + 5 end, 5, 0.1),
      "the connection open across the change stopped")
    assert.is_false(talk(side, db.ip, 5432))
  end)

  it("a policy that no longer allows rogue cuts its open connection", function()
    local echoes = long_connection(rogue)
    assert.truthy(wait_until(function() return echoes() >= 3 end, 5, 0.1))
    local b0 = dropped(B)
    local code, out, err = apply(L, { default = "deny", rules = {
      { from = { app = "web" }, to = { app = "db" }, ports = { "tcp/5432" } } } })
    assert.equal(0, code, out .. err)
    assert.truthy(enforced(B, 3), "node b did not enforce version 3 within 5 s")
    helpers.sleep(0.5)
    local before = echoes()
    helpers.sleep(1.5)
    assert.is_true(echoes() <= before + 1, "rogue's connection still carries data after the change")
    assert.is_true(dropped(B) > b0)
    assert.is_true(talk(web, db.ip, 5432))
    assert.is_false(talk(rogue, db.ip, 5432))
  end)

  it("refuses a bad policy with the place named and keeps the one in force", function()
    local bad = {
      { { default = "deny", rules = { { from = {}, to = {}, ports = { "tcp/70000" } } } }, "rules%[1%]%.ports%[1%]" },
      { { default = "deny", rules = { { from = { ["bad key!"] = "x" }, to = {}, ports = { "icmp" } } } }, "rules%[1%]%.from" },
      { { default = "deny", extra = 1 }, "unknown key \"extra\"" },
      { { default = "maybe" }, "default" },
      { "{not json", "not JSON" },
    }
    for _, b in ipairs(bad) do
      local code, out, err = apply(L, b[1])
      assert.are_not.equal(0, code)
      assert.truthy((out .. err):match(b[2]), "message does not name the place: " .. out .. err)
    end
    local st = cl:status(B)
    assert.equal(3, st.policy.version)
    assert.equal(3, st.policy.enforced_version)
    assert.is_false(talk(side, db.ip, 5432))
    assert.is_true(talk(web, db.ip, 5432))
  end)
end)
