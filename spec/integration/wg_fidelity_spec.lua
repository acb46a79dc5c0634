-- wg(8) fidelity of the order of allowed IPs (issue #18, item 4): our
-- engine lists a peer's allowed IPs in the order they were configured, as
-- the kernel and wireguard-go do, so `wg showconf | wg setconf` followed by
-- `wg showconf` is a fixed point.  Every step is applied to our engine and
-- to wireguard-go (both in one namespace) and the per-peer lists must be
-- identical, in order.  wireguard-go keeps its peers in a Go map, so only
-- our engine's showconf is compared as text (peer order included).  The
-- Lua transport's status() is checked for the same order.  Everything runs
-- in one namespace of its own with only `lo`; the endpoints are loopback
-- addresses.  Needs root.

local helpers = require "spec.helpers"
local unix = require "socket.unix"

-- One UAPI set request on the socket of `ifname`; raises unless errno=0.
local function uapi_set(ifname, request)
  local c = assert(unix.stream())
  assert(c:connect("/var/run/wireguard/" .. ifname .. ".sock"))
  c:settimeout(10)
  assert(c:send(request))
  local reply = {}
  while true do
    local line, err = c:receive("*l")
    if not line or line == "" then break end
    reply[#reply + 1] = line
    assert(not err)
  end
  c:close()
  assert(table.concat(reply, "\n") == "errno=0", ifname .. ": UAPI set failed: " .. table.concat(reply, "|"))
end

-- Peer sections of a showconf text: { [public key] = { allowed IPs, in order } }
-- and the public keys in the order shown.
local function peer_lists(text)
  local lists, order, cur = {}, {}, nil
  for raw in text:gmatch("[^\n]*") do
    local line = raw:gsub("^%s+", ""):gsub("%s+$", "")
    local k, v = line:match("^(%w+)%s*=%s*(.-)$")
    if line:match("^%[[Pp]eer%]$") then
      cur = nil
    elseif k == "PublicKey" then
      cur = {}
      lists[v], order[#order + 1] = cur, v
    elseif k == "AllowedIPs" and cur then
      for ip in v:gmatch("[^,%s]+") do cur[#cur + 1] = ip end
    end
  end
  return lists, order
end

describe("allowed IPs order through wg(8), against wireguard-go #netns", function()
  local ns, ours, theirs, keys, priv

  local function showconf(ifname)
    return helpers.wg(ns, "showconf " .. ifname)
  end

  local function setconf(ifname, text, verb)
    local file = helpers.write_file(("%s/%s.conf"):format(helpers.tmpdir(), ifname), text, "600")
    helpers.wg(ns, ("%s %s %s"):format(verb or "setconf", ifname, file))
  end

  -- A config file: `peers` is a list of { key index, AllowedIPs string|nil, extra lines }.
  local function conf(port, peers)
    local lines = { "[Interface]", "PrivateKey = " .. priv, "ListenPort = " .. port }
    for _, p in ipairs(peers) do
      lines[#lines + 1] = ""
      lines[#lines + 1] = "[Peer]"
      lines[#lines + 1] = "PublicKey = " .. keys[p[1]]
      if p[2] then lines[#lines + 1] = "AllowedIPs = " .. p[2] end
      for _, extra in ipairs(p[3] or {}) do lines[#lines + 1] = extra end
    end
    return table.concat(lines, "\n") .. "\n"
  end

  -- Both engines list the same allowed IPs in the same order for every
  -- peer, and that is `want` ({ [key index] = { ... } }, every peer).
  local function both_list(want, what)
    local ours_lists, ours_order = peer_lists(showconf(ours.ifname))
    local their_lists = peer_lists(showconf(theirs.ifname))
    assert.same(their_lists, ours_lists, what .. ": our engine and wireguard-go differ")
    local want_by_key = {}
    for i, list in pairs(want) do want_by_key[keys[i]] = list end
    assert.same(want_by_key, ours_lists, what .. ": not the expected lists")
    return ours_order
  end

  -- showconf -> setconf -> showconf gives back the same text, three rounds.
  local function fixed_point(what)
    local first = showconf(ours.ifname)
    local shown = first
    for round = 1, 3 do
      setconf(ours.ifname, shown)
      local again = showconf(ours.ifname)
      assert.equal(shown, again, ("%s: showconf | setconf | showconf changed it (round %d)"):format(what, round))
      shown = again
    end
    return first
  end

  lazy_setup(function()
    ns = helpers.netns.new("f")
    ours = { ifname = helpers.ifname("wt"), port = 41300 }
    theirs = { ifname = helpers.ifname("wt"), port = 41301 }
    ours.proc = helpers.start_engine(ns, "ours", ours.ifname)
    theirs.proc = helpers.start_engine(ns, "wireguard-go", theirs.ifname)
    priv = helpers.genkey()
    keys = {}
    for i = 1, 4 do keys[i] = select(2, helpers.genkey()) end
  end)

  lazy_teardown(helpers.cleanup)

  -- The same step on both engines (each with its own listen port).
  local function on_both(fn)
    for _, e in ipairs({ ours, theirs }) do fn(e) end
  end

  it("keeps configuration order through setconf, wg set, addconf and peer removal", helpers.guard(function()
    if not helpers.ours_is_real() then pending("compares our engine with wireguard-go") end
    local peers = {
      -- both families interleaved, nested ranges, a default route, host
      -- bits (shown masked) and a host route: none of it in sorted order
      { 1, "10.10.0.0/16, fd00:10::/64, 10.1.2.3/32, 0.0.0.0/0, 10.10.7.0/24",
        { "PersistentKeepalive = 25" } },
      { 2, "fd00:20::5/128, 10.20.0.0/24, 192.168.20.0/24, 10.21.9.9/16, ::/0",
        { "Endpoint = 127.0.0.1:51820" } },
      { 3, nil, { "Endpoint = [::1]:51830" } },
      { 4, "172.16.0.0/12, fd00:40::/48, 10.40.0.1/32, 10.40.0.0/24, fd00:40:1::/64" },
    }
    on_both(function(e) setconf(e.ifname, conf(e.port, peers)) end)
    local order = both_list({
      { "10.10.0.0/16", "fd00:10::/64", "10.1.2.3/32", "0.0.0.0/0", "10.10.7.0/24" },
      { "fd00:20::5/128", "10.20.0.0/24", "192.168.20.0/24", "10.21.0.0/16", "::/0" },
      {},
      { "172.16.0.0/12", "fd00:40::/48", "10.40.0.1/32", "10.40.0.0/24", "fd00:40:1::/64" },
    }, "setconf")
    assert.same({ keys[1], keys[2], keys[3], keys[4] }, order, "peers not in configuration order")
    fixed_point("after setconf")

    -- wg set ... allowed-ips replaces the list: the new order wins, also
    -- for prefixes the peer had; one prefix moves from peer 2 to peer 4
    -- (into the position it has in peer 4's new list)
    on_both(function(e)
      helpers.wg_set_peer(ns, e.ifname, keys[1], { allowed_ips = "fd00:11::/64,10.10.7.0/24,10.11.0.0/16,10.10.0.0/16" })
      helpers.wg_set_peer(ns, e.ifname, keys[4],
        { allowed_ips = "10.40.0.0/24,fd00:20::5/128,172.16.0.0/12,fd00:40::/48" })
    end)
    both_list({
      { "fd00:11::/64", "10.10.7.0/24", "10.11.0.0/16", "10.10.0.0/16" },
      { "10.20.0.0/24", "192.168.20.0/24", "10.21.0.0/16", "::/0" },
      {},
      { "10.40.0.0/24", "fd00:20::5/128", "172.16.0.0/12", "fd00:40::/48" },
    }, "wg set allowed-ips")
    fixed_point("after wg set allowed-ips")

    -- addconf replaces the allowed IPs of the peers it names too (wg(8)
    -- sends replace_allowed_ips for every [Peer] of a file); a prefix it
    -- gives peer 2 is taken from peer 1
    on_both(function(e)
      setconf(e.ifname, table.concat({
        "[Peer]", "PublicKey = " .. keys[2], "AllowedIPs = 10.20.0.0/24, 10.22.0.0/16, fd00:11::/64",
        "", "[Peer]", "PublicKey = " .. keys[3], "AllowedIPs = fd00:30::/64, 10.30.0.0/16", "" }, "\n"), "addconf")
    end)
    both_list({
      { "10.10.7.0/24", "10.11.0.0/16", "10.10.0.0/16" },
      { "10.20.0.0/24", "10.22.0.0/16", "fd00:11::/64" },
      { "fd00:30::/64", "10.30.0.0/16" },
      { "10.40.0.0/24", "fd00:20::5/128", "172.16.0.0/12", "fd00:40::/48" },
    }, "addconf")
    fixed_point("after addconf")

    -- allowed_ip lines without replace_allowed_ips (UAPI only; wg(8) always
    -- replaces): a prefix the peer has already moves to the end (the
    -- kernel's list_move_tail), new ones are appended, one is taken from
    -- the head of peer 4's list
    on_both(function(e)
      uapi_set(e.ifname, table.concat({
        "set=1", "public_key=" .. helpers.key_hex(keys[2]), "allowed_ip=10.20.0.0/24", "allowed_ip=10.23.0.0/16",
        "allowed_ip=10.40.0.0/24", "allowed_ip=fd00:11::/64", "", "" }, "\n"))
    end)
    both_list({
      { "10.10.7.0/24", "10.11.0.0/16", "10.10.0.0/16" },
      { "10.22.0.0/16", "10.20.0.0/24", "10.23.0.0/16", "10.40.0.0/24", "fd00:11::/64" },
      { "fd00:30::/64", "10.30.0.0/16" },
      { "fd00:20::5/128", "172.16.0.0/12", "fd00:40::/48" },
    }, "UAPI allowed_ip without replace")
    fixed_point("after UAPI allowed_ip")

    -- a removed and re-added peer starts a fresh list (at the end of the
    -- peer list, on our engine)
    on_both(function(e)
      helpers.wg(ns, ("set %s peer %s remove"):format(e.ifname, keys[1]))
      helpers.wg_set_peer(ns, e.ifname, keys[1], { allowed_ips = "10.10.0.0/16,fd00:12::/64,10.10.7.0/24" })
    end)
    order = both_list({
      { "10.10.0.0/16", "fd00:12::/64", "10.10.7.0/24" },
      { "10.22.0.0/16", "10.20.0.0/24", "10.23.0.0/16", "10.40.0.0/24", "fd00:11::/64" },
      { "fd00:30::/64", "10.30.0.0/16" },
      { "fd00:20::5/128", "172.16.0.0/12", "fd00:40::/48" },
    }, "peer removed and re-added")
    assert.same({ keys[2], keys[3], keys[4], keys[1] }, order)
    local text = fixed_point("after peer removal")

    -- and the fixed point's input, fed to wireguard-go, lists the same
    on_both(function(e) setconf(e.ifname, (text:gsub("ListenPort = %d+", "ListenPort = " .. e.port))) end)
    assert.equal(text, showconf(ours.ifname))
    both_list({
      { "10.10.0.0/16", "fd00:12::/64", "10.10.7.0/24" },
      { "10.22.0.0/16", "10.20.0.0/24", "10.23.0.0/16", "10.40.0.0/24", "fd00:11::/64" },
      { "fd00:30::/64", "10.30.0.0/16" },
      { "fd00:20::5/128", "172.16.0.0/12", "fd00:40::/48" },
    }, "showconf output applied to both")
    assert.is_true(ours.proc:alive(), "engine died:\n" .. ours.proc:log())
  end))

  it("status() of the Lua transport lists allowed IPs in configuration order", helpers.guard(function()
    local drv = helpers.lua_driver(ns, { name = "f" })
    local ifname = helpers.ifname("wt")
    local st = drv:call([[
      local ifname, keys = ...
      local t = assert(wgo.transport.new({ listen_port = 41302, private_key = (wgo.generate_keys()) }, ifname))
      S.t = t
      assert(t:create_interface())
      assert(t:configure({
        { public_key = keys[1], allowed_ips = { "10.50.0.0/16", "fd00:50::/64", "10.1.0.0/24", "10.50.3.3/32" } },
        { public_key = keys[2], allowed_ips = { "fd00:60::/64", "10.60.0.0/16" } },
      }))
      -- an existing prefix given again moves to the end; one moves peers
      assert(t:add_allowed_ip(keys[1], "10.50.0.0/16"))
      assert(t:add_allowed_ip(keys[2], "10.1.0.0/24"))
      local out = {}
      for _, p in ipairs(t:status().peers) do out[#out + 1] = { p.public_key, p.allowed_ips } end
      return out
    ]], ifname, keys)
    assert.same({
      { keys[1], { "fd00:50::/64", "10.50.3.3/32", "10.50.0.0/16" } },
      { keys[2], { "fd00:60::/64", "10.60.0.0/16", "10.1.0.0/24" } },
    }, st)
    -- wg(8) over the transport's UAPI socket says the same
    local lists = peer_lists(showconf(ifname))
    assert.same({ [keys[1]] = st[1][2], [keys[2]] = st[2][2] }, lists)
    drv:call("S.t:shutdown()")
  end))
end)
