-- The etcd registry (issue 14): a 3-member etcd cluster (real etcd, TLS
-- with a CA made here, a user whose role is limited to the cluster's
-- prefix) and wgoverlay nodes whose registry it is, all in network
-- namespaces on one bridge:
--   * init refuses a prefix that already holds a cluster; tokens come
--     from any member and carry several members' endpoints;
--   * with the node that ran init killed (-9), a new node joins through
--     another member within 10 s; remove-node issued on a third member
--     removes a node everywhere (peers and DNS) within 5 s;
--   * with one etcd member killed, joins, removals and DNS updates work;
--   * with every etcd member stopped, pings and DNS lookups between
--     existing nodes keep working for 60 s and a join fails with a clear
--     message; once etcd is back a join succeeds, no daemon restarted;
--   * 10 joins started at once through different members get 10 distinct
--     slices and names; a single-use token is refused the second time;
--   * a hole-punch request written in etcd makes its target probe (no
--     coordinator);
--   * nothing secret is stored in etcd: no private key, no token secret
--     or hash in clear, no etcd password.
-- Needs root.  Every address lives in namespaces made here.
local helpers = require "spec.helpers"
local fixture = require "spec.cluster_fixture"
local etcd_fixture = require "spec.etcd_fixture"
local cjson = require "cjson"

local quote = helpers.quote
local wait_until = helpers.wait_until
local fqdn = fixture.fqdn

describe("etcd registry #netns", function()
  local cl, fx, pwfile
  local PREFIX = "/wgoverlay/spec/"
  local AUTH = { user = "wgo-spec", password = "pw-" .. tostring(os.time()) .. tostring(math.random(1e6)),
                 prefix = PREFIX }
  local nodes = {}
  local reg_args

  -- names a node resolves, as dig +short through its own DNS server
  local function resolve(node, name)
    local _, out = node.ns:exec(("dig +short +time=1 +tries=1 @%s %s A"):format(node.ip, fqdn(name)))
    return (out or ""):match("^%s*(%S+)")
  end

  local function peers_of(node)
    local st = cl:status(node)
    local set = {}
    for _, p in ipairs(st and st.peers or {}) do if p.name then set[p.name] = p end end
    return set, st
  end

  local function new_node(name, ip)
    local n = cl:node(name, ip)
    nodes[name] = n
    return n
  end

  local function join(node, tok, timeout)
    cl:join(node, tok, timeout or 15)
    cl:start(node)
  end

  setup(function()
    cl = fixture.new()
    local ens, ips = {}, {}
    for i = 1, 3 do
      ips[i] = "192.0.2." .. (100 + i)
      ens[i] = cl:host("etcd" .. i, ips[i])
    end
    fx = etcd_fixture.new({ members = 3, namespaces = ens, ips = ips, auth = AUTH })
    pwfile = helpers.tmpdir() .. "/etcd-password"
    helpers.write_file(pwfile, AUTH.password .. "\n", "600")
    local eps = {}
    for i = 1, 3 do eps[i] = ("etcd://%s:%d"):format(ips[i], fx.members[i].cport) end
    reg_args = ("--registry %s --etcd-prefix %s --etcd-ca %s --etcd-user %s --etcd-password-file %s"):format(
      table.concat(eps, ","), PREFIX, quote(fx.cacert), AUTH.user, quote(pwfile))
    local A = cl:leader("a", "192.0.2.1", reg_args)
    nodes.a = A
    cl:start(A)
  end)

  teardown(function()
    if cl then cl:teardown() end
  end)

  it("init refuses a prefix that holds a cluster; the others join through any member", helpers.guard(function()
    local X = cl:node("x", "192.0.2.99")
    local code, out, err = cl:cli(X.ns, ("init --state %s --endpoint %s --name x %s"):format(
      quote(X.dir), X.endpoint, reg_args))
    assert.are_not.equal(0, code, out)
    assert.truthy(err:find("already exists in etcd under " .. PREFIX, 1, true), err)
    local B = new_node("b", "192.0.2.2")
    join(B, cl:token(nodes.a, 1))
    -- a token from b (not the node that ran init) names several members
    local tok = cl:token(B, 2)
    local t = assert(require("wgoverlay.token").decode(tok))
    assert.are.equal(B.endpoint, t.e)
    assert.truthy(t.x and #t.x >= 1, "the token names other members too")
    local C, D = new_node("c", "192.0.2.3"), new_node("d", "192.0.2.4")
    join(C, tok)
    join(D, tok)
    for _, n in ipairs({ "a", "b", "c", "d" }) do
      local node = nodes[n]
      assert(wait_until(function()
        local set = peers_of(node)
        for _, other in ipairs({ "a", "b", "c", "d" }) do
          if other ~= n and not set[other] then return false end
        end
        return true
      end, 15, 0.25), n .. " does not see every other node")
    end
    assert.truthy(helpers.wait_ping(nodes.d, nodes.a.ip, 15))
    assert.are.equal(nodes.c.ip, resolve(nodes.b, "c"))
    local st = cl:status(nodes.c)
    assert.are.equal("etcd", st.registry.kind)
    assert.is_true(st.registry.connected)
    assert.are.equal(3, #st.registry.endpoints)
  end))

  it("network policy through etcd: applied on any member, enforced on the others within 5 s", helpers.guard(function()
    local web = cl:attach("pweb", nodes.b, "pweb", "--label app=web")
    local db = cl:attach("pdb", nodes.c, "pdb", "--label app=db")
    db.ns:spawn("socat TCP-LISTEN:5432,fork,reuseaddr EXEC:cat", { name = "pdb5432" })
    local function talk()
      local ok, out = web.ns:exec(("echo hi | socat -t 1 -T 2 - TCP:%s:5432,connect-timeout=2"):format(db.ip))
      return ok and out:find("hi", 1, true) ~= nil
    end
    local function apply(node, doc)
      local path = helpers.tmpdir() .. "/policy-" .. node.name .. ".json"
      helpers.write_file(path, cjson.encode(doc))
      return cl:cli(node.ns, ("policy apply --state %s %s"):format(quote(node.dir), quote(path)))
    end
    local function enforced(node, v)
      return wait_until(function()
        local st = cl:status(node)
        return st and st.policy.enforced_version == v
      end, 5, 0.1)
    end
    assert.truthy(wait_until(talk, 10, 0.2))
    -- d stores it; c, where db lives, enforces it
    local code, out, err = apply(nodes.d, { default = "deny",
      rules = { { from = { app = "web" }, to = { app = "db" }, ports = { "tcp/5432" } } } })
    assert.are.equal(0, code, out .. err)
    assert.truthy(enforced(nodes.c, 1), "c did not enforce policy version 1 within 5 s")
    assert.truthy(talk())
    assert.is_false(web.ns:ping(db.ip, 1, 1))
    assert.truthy(cl:status(nodes.c).policy.dropped_packets > 0)
    code, out, err = apply(nodes.b, { default = "deny", rules = { { from = {}, to = {}, ports = { "tcp/0" } } } })
    assert.are_not.equal(0, code)
    assert.truthy((out .. err):find("rules[1].ports[1]", 1, true), out .. err)
    -- back to allow for the specs that follow
    code, out, err = apply(nodes.a, { default = "allow", rules = {} })
    assert.are.equal(0, code, out .. err)
    assert.truthy(enforced(nodes.c, 2))
    assert.truthy(web.ns:ping(db.ip, 1, 2))
  end))

  it("hole-punch coordination without a leader: a punch request in etcd makes its target probe",
    helpers.guard(function()
      -- what a node's NAT agent writes through reg:request_punch
      assert(fx:ctl(("put %spunch/b/c %d"):format(PREFIX, os.time())))
      assert(wait_until(function() return nodes.b.proc:log():find("punch with c", 1, true) end, 10, 0.2),
        "b did not probe c:\n" .. nodes.b.proc:log())
      -- a request naming an unknown node is ignored
      assert(fx:ctl(("put %spunch/b/nosuch %d"):format(PREFIX, os.time())))
      helpers.sleep(1)
      assert.is_nil(nodes.b.proc:log():find("punch with nosuch", 1, true))
      assert.truthy(nodes.b.proc:alive())
    end))

  it("stores nothing secret in etcd", helpers.guard(function()
    local ok, out = fx:ctl("get --prefix " .. PREFIX .. " -w json")
    assert.truthy(ok, out)
    local dump = {}
    for _, kv in ipairs(cjson.decode(out).kvs or {}) do
      dump[#dump + 1] = require("wgoverlay.core").base64_decode(kv.key) .. "="
        .. require("wgoverlay.core").base64_decode(kv.value or "")
    end
    local text = table.concat(dump, "\n")
    assert.truthy(text:find(PREFIX .. "nodes/a", 1, true), text)
    for name, n in pairs(nodes) do
      local node = cl:read_node(n)
      assert.is_nil(text:find(node.private_key, 1, true), "private key of " .. name .. " in etcd")
      assert.is_nil(text:find(node.control_private, 1, true), "control key in etcd")
    end
    assert.is_nil(text:find(AUTH.password, 1, true), "etcd password in etcd")
  end))

  it("with the init node killed a node joins through another member; remove-node on a third works everywhere",
    helpers.guard(function()
      local tok = cl:token(nodes.b, 1)
      nodes.a.proc:signal("KILL")
      nodes.a.proc:wait(5)
      local E = new_node("e", "192.0.2.5")
      local t0 = os.time()
      join(E, tok, 10)
      assert.is_true(os.time() - t0 <= 10)
      assert(wait_until(function() return peers_of(nodes.b).e end, 10, 0.25), "b does not see e")
      -- a's lease (10 s) ran out: listed as down, its record and slice kept
      assert(wait_until(function()
        local _, st = peers_of(nodes.b)
        for _, n in ipairs(st and st.registry.down or {}) do if n == "a" then return true end end
        return false
      end, 20, 0.5), "a is not listed as down by b")
      assert.truthy(peers_of(nodes.b).a, "a's record went with its lease")
      -- remove d from c; b and e lose it (peer and name) within 5 s
      cl:must_cli(nodes.c.ns, ("remove-node --state %s d"):format(quote(nodes.c.dir)))
      local gone = wait_until(function()
        return not peers_of(nodes.b).d and not peers_of(nodes.e).d and resolve(nodes.b, "d") == nil
      end, 5, 0.2)
      assert.truthy(gone, "d still known 5 s after remove-node")
      -- the removed daemon stops by itself
      assert(wait_until(function() return not nodes.d.proc:alive() end, 10, 0.2), "d still runs")
      nodes.d = nil
    end))

  it("with one etcd member killed, joins, removals and DNS updates still work", helpers.guard(function()
    fx:kill(1)
    local tok = cl:token(nodes.c, 1)
    local F = new_node("f", "192.0.2.6")
    join(F, tok)
    assert(wait_until(function() return resolve(nodes.b, "f") == F.ip end, 10, 0.2), "f not in b's DNS")
    cl:must_cli(nodes.b.ns, ("remove-node --state %s f"):format(quote(nodes.b.dir)))
    assert(wait_until(function() return resolve(nodes.e, "f") == nil end, 10, 0.2), "f still in e's DNS")
    nodes.f = nil
    fx:start(1)
  end))

  it("with etcd down the data plane and DNS go on; joins fail clearly, then work without restarts",
    helpers.guard(function()
      local tok = cl:token(nodes.b, 1)
      local cweb, capi = cl:attach("web", nodes.b, "web"), cl:attach("api", nodes.e, "api")
      assert(wait_until(function()
        return (capi.ns:exec("ping -n -q -c 1 -W 1 " .. fqdn("web")))
      end, 15, 0.25), "api cannot ping web by name")
      for i = 1, 3 do fx:stop(i) end
      local t_end = os.time() + 60
      local G = new_node("g", "192.0.2.7")
      local code, _, err = cl:cli(G.ns, ("join --state %s --token %s --endpoint %s --name g --timeout 5"):format(
        quote(G.dir), quote(tok), G.endpoint))
      assert.are_not.equal(0, code)
      assert.truthy(err:find("etcd", 1, true) and err:find("unavailable", 1, true), err)
      while os.time() < t_end do
        assert.truthy(nodes.b.ns:ping(nodes.e.ip, 1, 2), "b cannot ping e with etcd down")
        assert.are.equal(nodes.c.ip, resolve(nodes.e, "c"))
        assert.truthy((capi.ns:exec("ping -n -q -c 1 -W 2 " .. fqdn("web"))), "containers cut off with etcd down")
        assert.truthy((cweb.ns:exec("ping -n -q -c 1 -W 2 " .. fqdn("api"))), "containers cut off with etcd down")
        helpers.sh("sleep 2")
      end
      for i = 1, 3 do fx:start(i) end
      assert(wait_until(function() return fx:healthy() end, 30, 0.5), "etcd did not come back")
      -- the same state directory and token: the first attempt changed nothing
      join(G, tok, 20)
      assert(wait_until(function() return peers_of(nodes.b).g end, 15, 0.25), "b does not see g")
      for _, n in ipairs({ "b", "c", "e" }) do assert.truthy(nodes[n].proc:alive(), n .. " restarted?") end
    end))

  it("10 joins at once through different members: distinct slices and names; a used token is refused",
    helpers.guard(function()
      local members = { nodes.b, nodes.c, nodes.e }
      local joiners = {}
      for i = 1, 10 do
        local n = new_node("j" .. i, "192.0.2." .. (20 + i))
        -- each token names a different member first
        n.tok = cl:token(members[(i % 3) + 1], 1)
        joiners[i] = n
      end
      -- start all joins at once, in the background
      local procs = {}
      for i, n in ipairs(joiners) do
        procs[i] = n.ns:spawn(("lua5.4 bin/wgoverlay join --state %s --token %s --endpoint %s --name %s --timeout 30")
          :format(quote(n.dir), quote(n.tok), n.endpoint, n.name), { env = helpers.lua_env(), cwd = helpers.root,
          name = "join-" .. n.name })
      end
      local slices = {}
      for i, p in ipairs(procs) do
        assert(p:wait(40), "join " .. i .. " did not finish")
        assert.are.equal(0, p:exit_code(), p:log())
        local node = cl:read_node(joiners[i])
        assert.is_nil(slices[node.self.slice], "slice given twice: " .. node.self.slice)
        slices[node.self.slice] = true
      end
      -- the first token again, for another name: refused
      local K = new_node("k", "192.0.2.40")
      local code, _, err = cl:cli(K.ns, ("join --state %s --token %s --endpoint %s --name k --timeout 5"):format(
        quote(K.dir), quote(joiners[1].tok), K.endpoint))
      assert.are_not.equal(0, code)
      assert.truthy(err:find("token already used", 1, true), err)
      local ok, out = fx:ctl("get --prefix " .. PREFIX .. "nodes/j --keys-only")
      assert.truthy(ok, out)
      local n = 0
      for _ in out:gmatch("nodes/j%d+") do n = n + 1 end
      assert.are.equal(10, n)
    end))
end)
