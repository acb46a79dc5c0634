-- Joins that lose their answer (issue 13, items 3 and 5), with the real
-- CLI and daemons in network namespaces (spec/cluster_fixture.lua):
--
-- 1. the leader's answer to `join` is dropped at the joiner (nftables in
--    its namespace): `join` fails with a meaningful message; the same
--    command again, with the same single-use token, succeeds with the
--    slice the leader recorded, and the node comes up healthy;
-- 2. the same, with the leader restarted in between; another key with
--    that name is refused; the token's uses are counted once per joiner;
-- 3. a node admitted whose answer was lost and that never comes up is
--    reclaimed after the (here shortened) reclaim time: gone from the
--    leader's registry and the members' peers, its slice free, and the
--    token use not given back;
-- 4. `status` (and other control verbs) as a non-root user says
--    "permission denied", not "no daemon runs".
--
--   hub bridge: leader 192.0.2.1, a .2, b .3, c .4 (port 51820 each).
-- The leader runs with WGO_JOIN_RECLAIM=RECLAIM.  Needs root.

local helpers = require "spec.helpers"
local fixture = require "spec.cluster_fixture"
local state = require "wgoverlay.state"

local quote = helpers.quote
local wait_until = helpers.wait_until

local RECLAIM = 20 -- seconds (WGO_JOIN_RECLAIM of the leader)
local JOIN_TIMEOUT = 3

describe("join retries and reclaim #netns", function()
  local cl, L, A, B, C

  -- The leader's daemon with the shortened reclaim time (cl:start with
  -- one more environment variable).
  local function start_leader()
    local env = helpers.lua_env()
    env.WGO_JOIN_RECLAIM = tostring(RECLAIM)
    L.proc = L.ns:spawn("lua5.4 bin/wgoverlay run --state " .. quote(L.dir),
      { env = env, cwd = helpers.root, name = "run-leader" })
    local ok, err = wait_until(function()
      if not L.proc:alive() then error("exited: " .. L.proc:log()) end
      return cl:status(L) ~= nil
    end, 15, 0.1)
    assert(ok, ("the leader did not come up: %s\n%s"):format(tostring(err), L.proc:log()))
  end

  -- Drops every UDP datagram from the leader's WireGuard port arriving in
  -- `node`'s namespace (the join answer, and the leader's handshakes).
  local function drop_leader(node)
    node.ns:must("nft add table inet wgo_drop && "
      .. "nft add chain inet wgo_drop input '{ type filter hook input priority 0; policy accept; }' && "
      .. "nft add rule inet wgo_drop input ip saddr 192.0.2.1 udp sport 51820 counter drop")
  end

  local function dropped(node)
    local out = node.ns:must("nft list table inet wgo_drop")
    return tonumber(out:match("counter packets (%d+)")) or 0
  end

  local function undrop(node) node.ns:must("nft delete table inet wgo_drop") end

  local function join_args(node, tok, dir, name)
    return ("join --state %s --token %s --endpoint %s --name %s --timeout %d"):format(
      quote(dir or node.dir), quote(tok), node.endpoint, name or node.name, JOIN_TIMEOUT)
  end

  local function try_join(node, tok, dir, name)
    return cl:cli(node.ns, join_args(node, tok, dir, name))
  end

  local function lead() return assert(state.load(L.dir .. "/leader.json")) end

  local function pending_key(node)
    local p = state.load(node.dir .. "/join-pending.json")
    return p and p.public_key
  end

  local function sees_peer(node, name)
    local st = cl:status(node)
    return st and fixture.peer(st, name) ~= nil
  end

  -- A join whose answer is lost: fails with the timeout message, the
  -- leader admitted the node (half-admitted), the joiner kept its key.
  local function lost_answer(node, tok)
    drop_leader(node)
    local code, out, err = try_join(node, tok)
    local n = dropped(node)
    undrop(node)
    assert.is_not.equal(0, code, "join succeeded although the answer was dropped:\n" .. out)
    assert.is_true(n > 0, "nothing from the leader was dropped")
    assert.matches("join: timed out waiting for the leader at 192%.0%.2%.1:51820: no answer within 3 s", err)
    assert.not_matches("not a control datagram", err)
    assert.is_nil(helpers.read_file(node.dir .. "/node.json"), "a failed join wrote node.json")
    local rec = lead().registry.members[node.name]
    assert(rec, node.name .. " was not admitted by the leader")
    assert.equal(pending_key(node), rec.public_key)
    return rec, err
  end

  lazy_setup(function()
    cl = fixture.new()
    for _, tool in ipairs({ "nft", "setpriv" }) do
      assert(helpers.sh("command -v " .. tool .. " >/dev/null"), tool .. " is not installed")
    end
    L = cl:leader("leader", "192.0.2.1")
    start_leader()
    A = cl:node("a", "192.0.2.2")
    B = cl:node("b", "192.0.2.3")
    C = cl:node("c", "192.0.2.4")
  end)

  teardown(function() if cl then cl:teardown() end end)

  it("a lost answer: the same command again joins with the same slice, the single-use token used once",
    helpers.guard(function()
      local tok = cl:token(L, 1)
      local rec = lost_answer(A, tok)
      local tid = next(lead().joins or {}) and lead().joins.a.token
      assert.is_string(tid, "the leader did not record the admission")
      assert.equal(0, lead().tokens[tid].uses_left)
      local key = pending_key(A)

      local out = cl:must_cli(A.ns, join_args(A, tok))
      assert.truthy(out:find("joined: a is " .. rec.overlay_ip .. " (" .. rec.slice .. ")", 1, true), out)
      local n = cl:read_node(A)
      assert.equal(key, n.public_key)
      assert.equal(rec.slice, n.self.slice)
      assert.equal(rec.slice6, n.self.slice6)
      assert.is_nil(helpers.read_file(A.dir .. "/join-pending.json"), "join-pending.json left after the join")
      local l = lead()
      assert.equal(0, l.tokens[tid].uses_left)
      assert.equal(rec.slice, l.registry.members.a.slice)
      -- (the same leader process answers the retry from its answer cache)
      assert.equal(1, select(2, L.proc:log():gsub("node a joined", "")))

      cl:start(A)
      cl:wait_health(A, { "leader" }, true, 30)
      cl:wait_health(L, { "a" }, true, 30)
      -- up: its admission record goes (nothing left to reclaim)
      assert(wait_until(function() return (lead().joins or {}).a == nil end, 15, 0.5),
        "the admission record of a stayed after it came up")
    end))

  it("a lost answer, the leader restarted: the retry still joins; another key with the name is refused",
    helpers.guard(function()
      local tok = cl:token(L, 2)
      local rec = lost_answer(B, tok)
      cl:stop(L)
      start_leader()
      -- another joiner (another key) asking for the name b: refused, nothing used
      local other = helpers.tmpdir() .. "/state-b-other"
      local code, out, err = try_join(B, tok, other)
      assert.is_not.equal(0, code, "a second key took the name b:\n" .. out)
      assert.matches('join: join refused: node name "b" already in use', err)
      assert.is_nil(helpers.read_file(other .. "/node.json"))

      local key = pending_key(B)
      cl:must_cli(B.ns, join_args(B, tok))
      local n = cl:read_node(B)
      assert.equal(key, n.public_key)
      assert.equal(rec.slice, n.self.slice)
      local l = lead()
      assert.equal(rec.slice, l.registry.members.b.slice)
      -- one use for b (its retry and the refused key used nothing): one left
      assert.equal(1, l.tokens[l.joins.b.token].uses_left)
      assert.matches("node b admitted again", L.proc:log())

      cl:start(B)
      cl:wait_health(B, { "leader", "a" }, true, 40)
      cl:wait_health(L, { "a", "b" }, true, 30)
    end))

  it("a node admitted that never comes up is reclaimed after the reclaim time; the use is not given back",
    helpers.guard(function()
      local tok = cl:token(L, 1)
      local t0 = helpers.now()
      local rec = lost_answer(C, tok)
      local index = lead().allocator.nodes.c.index
      -- the members were told of c
      assert(wait_until(function() return sees_peer(A, "c") and sees_peer(B, "c") end, 10, 0.25),
        "the members never listed c")

      assert(wait_until(function() return lead().registry.members.c == nil end, RECLAIM + 40, 0.5),
        "c was not reclaimed:\n" .. L.proc:log())
      local took = helpers.now() - t0
      assert.is_true(took >= RECLAIM - 1, ("c was reclaimed after %.1f s, before %d s"):format(took, RECLAIM))
      local l = lead()
      assert.is_nil(l.allocator.nodes.c, "c still holds a slice")
      local free = {}
      for _, i in ipairs(l.allocator.free) do free[i] = true end
      assert.is_true(free[index], "c's slice " .. rec.slice .. " is not free")
      assert.is_nil((l.joins or {}).c)
      assert.matches("node c reclaimed", L.proc:log())
      -- gone from the members' peers; a and b (which came up) stay
      for _, node in ipairs({ A, B, L }) do
        assert(wait_until(function() return not sees_peer(node, "c") end, 10, 0.25), node.name .. " still lists c")
      end
      assert.is_not_nil(l.registry.members.a)
      assert.is_not_nil(l.registry.members.b)
      cl:wait_health(L, { "a", "b" }, true, 20)

      -- the same command again: the use was spent on the reclaimed admission
      local code, out, err = try_join(C, tok)
      assert.is_not.equal(0, code, "the reclaimed joiner joined again on its used token:\n" .. out)
      assert.matches("join: join refused: token already used", err)
      assert.is_nil(l.registry.members.c)
    end))

  it("status and other control verbs as a non-root user: permission denied, not 'no daemon runs'",
    helpers.guard(function()
      local as_nobody = "setpriv --reuid=nobody --regid=nogroup --clear-groups "
      -- the checkout must be readable by nobody for the CLI to start at all
      local readable = L.ns:exec(as_nobody .. "sh -c " .. quote(("test -r %s/bin/wgoverlay && test -r %s/%s/wgoverlay/core.so && test -r %s/lua/wgoverlay/daemon.lua")
        :format(helpers.root, helpers.root, helpers.build_dir, helpers.root)))
      assert.is_true(readable, "the checkout " .. helpers.root .. " is not readable by nobody")
      local function cli_as_nobody(args)
        local _, out, err, code = L.ns:exec(("cd %s && %s%slua5.4 bin/wgoverlay %s </dev/null"):format(
          quote(helpers.root), as_nobody, helpers.lua_env_prefix(), args))
        return code, out, err
      end
      assert.is_not_nil(cl:status(L), "the leader's daemon does not answer root")
      for _, args in ipairs({ "status --state " .. quote(L.dir),
                              "status --state " .. quote(L.dir) .. " --json",
                              "remove-node --state " .. quote(L.dir) .. " a",
                              "attach --state " .. quote(L.dir) .. " somens --name x" }) do
        local code, out, err = cli_as_nobody(args)
        assert.is_not.equal(0, code, args .. " succeeded as nobody:\n" .. out)
        assert.matches("permission denied: the control socket of " .. L.dir:gsub("%p", "%%%0") .. " is root%-only", err)
        assert.not_matches("no daemon runs", err)
      end
      -- a directory without a daemon is still reported as such
      local _, _, err = cli_as_nobody("status --state /nonexistent-wgo-" .. helpers.PID)
      assert.matches("no daemon runs", err)
      -- nothing was removed
      assert.is_not_nil(lead().registry.members.a)
    end))
end)
