-- The scripts in examples/ run as their header comments say: each one in
-- network namespaces of its own, talking to a real peer.  Needs root.

local helpers = require "spec.helpers"

local quote = helpers.quote

local function socket_exists(ifname)
  return (helpers.sh("test -S /var/run/wireguard/" .. ifname .. ".sock"))
end

local function link_exists(ns, ifname)
  return (ns:exec("ip link show dev " .. ifname))
end

-- Start `lua5.4 examples/NAME ARGS` in `ns` (output in proc:log()).
local function example(ns, name, args, label)
  local proc = ns:spawn("lua5.4 examples/" .. name .. " " .. args,
    { env = helpers.lua_env(), cwd = helpers.root, name = label or name })
  proc.impl = "ours" -- cleanup() looks for sanitizer reports in its log
  return proc
end

local function wait_log(proc, text, timeout)
  local ok = helpers.wait_until(function()
    if proc:log():find(text, 1, true) then return true end
    if not proc:alive() then error("exited: " .. proc:log()) end
  end, timeout or 10, 0.05)
  assert(ok, ("%q not in the output of %s:\n%s"):format(text, proc.cmd, proc:log()))
end

local function pair()
  local a, b = helpers.netns.new("a"), helpers.netns.new("b")
  helpers.netns.veth(a, b, { a = { "192.0.2.1/24" }, b = { "192.0.2.2/24" } })
  return a, b
end

local function conf_file(ifname, lines)
  return helpers.write_file(("%s/%s.conf"):format(helpers.tmpdir(), ifname), table.concat(lines, "\n") .. "\n")
end

describe("examples #netns", function()
  after_each(function() helpers.cleanup() end)

  it("two_node.lua builds a tunnel between two namespaces and removes it on SIGTERM", helpers.guard(function()
    local nsa, nsb = pair()
    local ka, pa = helpers.genkey()
    local kb, pb = helpers.genkey()
    local ia, ib = helpers.ifname("wt"), helpers.ifname("wt")
    local a = example(nsa, "two_node.lua", ("a --private-key %s --peer-key %s --peer-endpoint 192.0.2.2:51820 --ifname %s")
      :format(quote(ka), quote(pb), ia), "two_node-a")
    -- b from the environment instead of options
    local benv = helpers.lua_env()
    benv.WGO_PRIVATE_KEY, benv.WGO_PEER_KEY, benv.WGO_IFNAME = kb, pa, ib
    local b = nsb:spawn("lua5.4 examples/two_node.lua b", { cwd = helpers.root, name = "two_node-b", env = benv })
    b.impl = "ours"
    wait_log(a, "interface " .. ia .. " up")
    wait_log(b, "interface " .. ib .. " up")
    assert.truthy(a:log():find("public key " .. pa, 1, true), a:log())
    assert(helpers.wait_ping({ ns = nsa }, "10.77.0.2", 10), "no ping across the example tunnel")
    assert.is_true(nsb:ping("fd77::1", 2))
    wait_log(a, "handshake with " .. pb:sub(1, 8) .. " completed (endpoint 192.0.2.2:51820)")
    wait_log(b, "handshake with " .. pa:sub(1, 8) .. " completed (endpoint 192.0.2.1:51820)")
    for _, p in ipairs({ a, b }) do
      p:signal("TERM")
      assert.equal(0, p:wait(5))
      assert.truthy(p:log():find("SIGTERM, removing", 1, true), p:log())
    end
    assert.is_false(link_exists(nsa, ia))
    assert.is_false(link_exists(nsb, ib))
    assert.is_false(socket_exists(ia))
    assert.is_false(socket_exists(ib))
  end))

  it("two_node.lua explains a missing key", helpers.guard(function()
    local ok, _, err = helpers.sh("cd " .. quote(helpers.root) .. " && " .. helpers.lua_env_prefix()
      .. "lua5.4 examples/two_node.lua a --peer-key x")
    assert.is_false(ok)
    assert.truthy(err:find("--private-key", 1, true), err)
  end))

  it("wg_quick_up.lua brings up a wg-quick file until Ctrl-C", helpers.guard(function()
    local nsa, nsb = pair()
    local ka, pa = helpers.genkey()
    local kb, pb = helpers.genkey()
    local ia, ib = helpers.ifname("wt"), helpers.ifname("wt")
    local fa = conf_file(ia, { "[Interface]", "PrivateKey = " .. ka, "ListenPort = 51301",
      "Address = 10.66.0.1/24", "[Peer]", "PublicKey = " .. pb, "Endpoint = 192.0.2.2:51302",
      "AllowedIPs = 10.66.0.2/32" })
    local fb = conf_file(ib, { "[Interface]", "PrivateKey = " .. kb, "ListenPort = 51302",
      "Address = 10.66.0.2/24", "[Peer]", "PublicKey = " .. pa, "AllowedIPs = 10.66.0.1/32" })
    local a = example(nsa, "wg_quick_up.lua", quote(fa), "wg_quick_up-a")
    local b = example(nsb, "wg_quick_up.lua", quote(fb), "wg_quick_up-b")
    wait_log(a, ia .. " is up")
    wait_log(b, ib .. " is up")
    assert.truthy(a:log():find("interface: " .. ia, 1, true))   -- the status table
    assert.truthy(a:log():find("listening port: 51301", 1, true))
    assert(helpers.wait_ping({ ns = nsa }, "10.66.0.2", 10))
    wait_log(a, "handshake with " .. pb)
    assert.equal("51301", helpers.wg(nsa, "show " .. ia .. " listen-port"):gsub("%s+$", ""))
    for _, p in ipairs({ a, b }) do
      p:signal("INT")
      assert.equal(0, p:wait(5))
    end
    assert.truthy(a:log():find("SIGINT: " .. ia .. " removed", 1, true), a:log())
    assert.is_false(link_exists(nsa, ia))
    assert.is_false(socket_exists(ia))
    assert.is_false(socket_exists(ib))
  end))

  it("wg_quick_up.lua reports a malformed file with its line and creates nothing", helpers.guard(function()
    local ns = helpers.netns.new("a")
    local name = helpers.ifname("wt")
    local f = conf_file(name, { "[Interface]", "PrivateKey = " .. (helpers.genkey()), "PostUp = true" })
    local ok, _, err = ns:exec("cd " .. quote(helpers.root) .. " && " .. helpers.lua_env_prefix()
      .. "lua5.4 examples/wg_quick_up.lua " .. quote(f))
    assert.is_false(ok)
    assert.equal(("wg_quick_up: %s:3: PostUp is not supported by wgoverlay (wg-quick only)\n"):format(f), err)
    assert.is_false(link_exists(ns, name))
    assert.is_false(socket_exists(name))
  end))

  it("event_loop.lua prints handshake and datagram events and answers with --echo", helpers.guard(function()
    local nsa, nsb = pair()
    local ka, pa = helpers.genkey()
    local kb, pb = helpers.genkey()
    local ia, ib = helpers.ifname("wt"), helpers.ifname("wt")
    local fa = conf_file(ia, { "[Interface]", "PrivateKey = " .. ka, "ListenPort = 51401",
      "Address = 10.67.0.1/24", "[Peer]", "PublicKey = " .. pb, "AllowedIPs = 10.67.0.2/32" })
    local ev = example(nsa, "event_loop.lua", quote(fa) .. " --echo", "event_loop")
    wait_log(ev, "waiting for events")
    -- the peer: a transport in the other namespace that dials in
    local drv = helpers.lua_driver(nsb, { name = "peer" })
    drv:call([[
      local ifname, key, peer = ...
      t = assert(wgo.transport.new({ private_key = key, listen_port = 51402, address = "10.67.0.2/24" }, ifname))
      assert(t:create_interface())
      assert(t:configure({ { public_key = peer, endpoint = "192.0.2.1:51401", allowed_ips = { "10.67.0.1/32" } } }))
    ]], ib, kb, pa)
    assert(helpers.wait_ping({ ns = nsb }, "10.67.0.1", 10))
    wait_log(ev, ("handshake: peer1 (%s…) completed a handshake from 192.0.2.2:51402"):format(pb:sub(1, 8)))

    -- a plain datagram to the listen port: printed, and answered from it
    local reply, from, port, src = drv:call([[
      local u = assert(socket.udp())
      assert(u:setsockname("192.0.2.2", 0))
      u:settimeout(5)
      assert(u:sendto("hello loop", "192.0.2.1", 51401))
      local data, ip, p = u:receivefrom()
      local _, mine = u:getsockname()
      u:close()
      return data, ip, p, mine
    ]])
    assert.equal("ack hello loop", reply)
    assert.equal("192.0.2.1", from)
    assert.equal(51401, port)
    wait_log(ev, ('datagram: 10 bytes from 192.0.2.2:%d: "hello loop"'):format(src))

    ev:signal("INT")
    assert.equal(0, ev:wait(5))
    assert.truthy(ev:log():find(ia .. " removed", 1, true), ev:log())
    assert.is_false(link_exists(nsa, ia))
    assert.is_false(socket_exists(ia))
  end))
end)
