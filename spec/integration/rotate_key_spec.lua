-- `wgoverlay rotate-key` end to end (issue #18, item 2): a leader and two
-- members in namespaces; 10/s pings run across the rotation of a member's
-- key and then of the leader's, and lose at most one packet each; every
-- node then shows the new keys, the state files hold the new key (0600)
-- and the old private key is in no file; an engine that still has a
-- node's OLD public key cannot complete a handshake with it (the same
-- engine with the new key can); rotate-key against a stopped daemon is a
-- clear error that changes nothing; a member that was down while the
-- leader and a peer rotated catches up when it comes back.  Needs root.
--
--   hub: bridge br0
--     ├─ leader  192.0.2.1:51820
--     ├─ a       192.0.2.2:51820
--     ├─ b       192.0.2.3:51820
--     └─ x       192.0.2.9:51999   a Lua driver with its own engine (old-key check)

local helpers = require "spec.helpers"
local fixture = require "spec.cluster_fixture"
local state = require "wgoverlay.state"
local core = require "wgoverlay.core"
local socket = require "socket"

local quote = helpers.quote
local wait_until = helpers.wait_until

describe("rotate-key #netns", function()
  local cl, L, A, B

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
    cl:wait_health(A, { "leader", "b" }, true, 30)
    cl:wait_health(B, { "leader", "a" }, true, 30)
  end)

  teardown(function() if cl then cl:teardown() end end)

  local function node_json(n) return assert(state.load(n.dir .. "/node.json")) end

  local function rotate(n)
    local out = cl:must_cli(n.ns, "rotate-key --state " .. quote(n.dir))
    local new, old = out:match("key rotated: public key (%S+) %(was (%S+)%)")
    assert(new, "unexpected rotate-key output: " .. out)
    assert.is_nil(out:find("not confirmed", 1, true), out)
    return new, old
  end

  -- every file under the state directory, read whole
  local function files_under(dir)
    local _, out = helpers.sh("find " .. quote(dir) .. " -type f")
    local list = {}
    for path in out:gmatch("[^\n]+") do
      local f = assert(io.open(path, "rb"))
      list[path] = f:read("a")
      f:close()
    end
    return list
  end

  local function ping_loss(proc)
    assert(proc:wait(20), "ping did not end: " .. proc:log())
    local sent, got = proc:log():match("(%d+) packets transmitted, (%d+) received")
    assert(sent, "no ping summary: " .. proc:log())
    return tonumber(sent) - tonumber(got), tonumber(sent)
  end

  local old = {} -- name -> { priv, pub } before the rotation

  it("rotates a member's and the leader's key under a 10/s ping, losing at most one packet", function()
    for _, n in ipairs({ L, B }) do
      local nj = node_json(n)
      old[n.name] = { priv = nj.private_key, pub = nj.public_key }
    end
    -- a -> b crosses b's rotation (and the leader's); b -> leader both
    local p_ab = A.ns:spawn("ping -n -i 0.1 -c 70 -W 1 " .. B.ip, { name = "ping-ab" })
    local p_bl = B.ns:spawn("ping -n -i 0.1 -c 70 -W 1 " .. L.ip, { name = "ping-bl" })
    socket.sleep(2)
    local b_new, b_old = rotate(B)
    assert.equal(old.b.pub, b_old)
    assert.not_equal(b_old, b_new)
    socket.sleep(2)
    local l_new, l_old = rotate(L)
    assert.equal(old.leader.pub, l_old)
    old.b.new, old.leader.new = b_new, l_new
    local lost_ab, sent_ab = ping_loss(p_ab)
    local lost_bl, sent_bl = ping_loss(p_bl)
    print(("\nrotate-key: a->b lost %d of %d, b->leader lost %d of %d"):format(lost_ab, sent_ab, lost_bl, sent_bl))
    assert.is_true(lost_ab <= 1, "a->b lost " .. lost_ab .. ":\n" .. p_ab:log())
    assert.is_true(lost_bl <= 1, "b->leader lost " .. lost_bl .. ":\n" .. p_bl:log())
  end)

  it("every node shows the new keys, from the registry", function()
    assert(old.b.new, "the rotation did not run")
    local ok = wait_until(function()
      local sa, sb, sl = cl:status(A), cl:status(B), cl:status(L)
      if not (sa and sb and sl) then return false end
      return sb.self.public_key == old.b.new and sl.self.public_key == old.leader.new
        and fixture.peer(sa, "b").public_key == old.b.new and fixture.peer(sa, "leader").public_key == old.leader.new
        and fixture.peer(sl, "b").public_key == old.b.new and fixture.peer(sb, "leader").public_key == old.leader.new
    end, 10, 0.25)
    assert.is_truthy(ok, "the new keys did not reach every node")
    -- the peers kept talking: healthy everywhere, and handshakes go on with the new keys
    cl:wait_health(A, { "leader", "b" }, true, 10)
    cl:wait_health(L, { "a", "b" }, true, 10)
    -- the members' node.json follows the leader's key (used when members.json is lost)
    assert.equal(old.leader.new, node_json(A).cluster.leader.public_key)
    assert.equal(old.leader.new, node_json(L).cluster.leader.public_key)
  end)

  it("replaces the state file (0600) and leaves the old private key in no file", function()
    assert(old.b.new, "the rotation did not run")
    for _, n in ipairs({ B, L }) do
      local o = old[n.name]
      local nj = node_json(n)
      assert.equal(o.new, nj.public_key)
      assert.equal(o.new, core.public_key(nj.private_key))
      local _, mode = helpers.sh("stat -c %a " .. quote(n.dir .. "/node.json"))
      assert.equal("600", (mode:gsub("%s+$", "")))
      local raw = core.key_from_base64(o.priv)
      for path, content in pairs(files_under(n.dir)) do
        assert.is_nil(content:find(o.priv, 1, true), path .. " still holds the old private key")
        assert.is_nil(content:find(raw, 1, true), path .. " still holds the old private key (raw)")
      end
    end
  end)

  it("an engine with the node's OLD public key cannot handshake; with the new one it can", function()
    assert(old.b.new, "the rotation did not run")
    local X = cl:node("x", "192.0.2.9")
    local drv = helpers.lua_driver(X.ns, { name = "rotx" })
    local xpriv, xpub = core.generate_keys()
    -- b accepts x as a peer (through its UAPI socket, as wg(8) would)
    local bif = node_json(B).ifname
    B.ns:must(("wg set %s peer %s allowed-ips 10.250.0.1/32"):format(bif, xpub))
    local ifn = helpers.ifname("wr")
    drv:call([[
      local priv, ifname = ...
      S.t = assert(wgo.transport.new({ private_key = priv, listen_port = 51999, address = "10.250.0.1/32" }, ifname))
      assert(S.t:create_interface())
      assert(S.t:configure({}))
    ]], xpriv, ifn)
    local function try(peer_key)
      return drv:call([[
        local key, ep = ...
        for _, p in ipairs(S.t:status().peers) do assert(S.t:remove_peer(p.public_key)) end
        assert(S.t:add_peer({ public_key = key, endpoint = ep, allowed_ips = { "10.250.1.0/24" } }))
        local since = os.time() - 1
        for _ = 1, 3 do
          assert(S.t:initiate_handshake(key))
          for _ = 1, 20 do
            if S.t:check_handshake(key, since) then return true end
            socket.sleep(0.1)
          end
        end
        return false
      ]], peer_key, B.endpoint)
    end
    assert.is_false(try(old.b.pub), "a handshake with b's old public key completed")
    assert.is_true(try(old.b.new), "no handshake with b's new public key (the check is void)")
    B.ns:must(("wg set %s peer %s remove"):format(bif, xpub))
    drv:close()
  end)

  it("rotate-key against a stopped daemon is a clear error and changes nothing", function()
    cl:stop(A)
    local before = node_json(A)
    local code, out, err = cl:cli(A.ns, "rotate-key --state " .. quote(A.dir))
    assert.not_equal(0, code)
    assert.equal("", out)
    assert.matches("no daemon runs for", err)
    assert.matches("nothing was changed", err)
    assert.same(before, node_json(A))
  end)

  it("a member that was down while the leader and a peer rotated catches up when it comes back", function()
    assert(A.proc and not A.proc:alive(), "a should be stopped by now")
    local l_new = rotate(L) -- a knows neither this key nor b's next one
    local b_new = rotate(B)
    local t0 = socket.gettime()
    cl:start(A)
    -- a reaches the leader only once it has its new key: learned with a
    -- key query on the leader's WireGuard port, then the member list
    local st = cl:wait_health(A, { "leader", "b" }, true, 30)
    print(("\nrotate-key: a caught up with the leader's and b's new keys %.1f s after its start")
      :format(socket.gettime() - t0))
    assert.equal(l_new, fixture.peer(st, "leader").public_key)
    assert.equal(b_new, fixture.peer(st, "b").public_key)
    assert.equal(l_new, node_json(A).cluster.leader.public_key)
    assert.is_true(st.leader_connected)
  end)
end)
