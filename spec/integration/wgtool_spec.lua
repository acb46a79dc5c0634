-- Our engine driven by the stock `wg` tool (wireguard-tools) over the UAPI
-- socket, malformed UAPI requests and junk UDP datagrams.  Needs root.
-- WGO_TEST_IMPL=wireguard-go runs these against wireguard-go instead (the
-- few checks only our engine is expected to pass are then pending).

local helpers = require "spec.helpers"
local unix = require "socket.unix"

local quote = helpers.quote

local B64KEY = "^[A-Za-z0-9+/]+=$"

-- Wait for the clock to reach the next whole second (handshake times have
-- 1 s resolution).
local function next_second()
  local now = helpers.now()
  helpers.sleep(math.floor(now) + 1.05 - now)
end

-- WGO_TEST_STRICT=1 runs these checks against wireguard-go too (to see
-- that they can fail).
local function ours_only(what)
  if not helpers.ours_is_real() and os.getenv("WGO_TEST_STRICT") ~= "1" then
    pending(what .. ": checked against our engine only (WGO_TEST_IMPL="
      .. tostring(os.getenv("WGO_TEST_IMPL")) .. ")")
  end
end

-- Parse a wg config (setconf/showconf syntax) into a comparable form:
-- key names lowercased, AllowedIPs sorted, peers sorted by public key.
local function normalise_conf(text)
  local conf = { interface = {}, peers = {} }
  local section
  for raw in text:gmatch("[^\n]*") do
    local line = raw:gsub("#.*$", ""):gsub("^%s+", ""):gsub("%s+$", "")
    if line:match("^%[[Ii]nterface%]$") then
      section = conf.interface
    elseif line:match("^%[[Pp]eer%]$") then
      section = {}
      conf.peers[#conf.peers + 1] = section
    elseif line ~= "" then
      local k, v = line:match("^([%w]+)%s*=%s*(.-)$")
      assert(k and section, "bad config line: " .. raw)
      k = k:lower()
      if k == "allowedips" then
        local list = section[k] or {}
        for ip in v:gmatch("[^,%s]+") do list[#list + 1] = ip end
        table.sort(list)
        section[k] = list
      else
        section[k] = v
      end
    end
  end
  table.sort(conf.peers, function(x, y) return (x.publickey or "") < (y.publickey or "") end)
  return conf
end

local function showconf(node)
  return helpers.wg(node.ns, "showconf " .. node.ifname)
end

-- One UAPI exchange on the socket of `ifname`.  `payload` is a string or a
-- function(conn) that writes and returns nil or an error.  Returns
-- { lines = {...}, errno = n|nil, closed = bool, send_err = string|nil }.
local function uapi(ifname, payload, opts)
  opts = opts or {}
  local c = assert(unix.stream())
  assert(c:connect("/var/run/wireguard/" .. ifname .. ".sock"))
  c:settimeout(opts.timeout or 10)
  local res = { lines = {} }
  if type(payload) == "function" then
    res.send_err = payload(c)
  else
    local _, err = c:send(payload)
    res.send_err = err
  end
  if opts.shutdown then c:shutdown("send") end
  while true do
    local line, err = c:receive("*l")
    if not line then
      res.closed = err == "closed"
      res.recv_err = err
      break
    end
    res.lines[#res.lines + 1] = line
    local e = line:match("^errno=(%-?%d+)$")
    if e then res.errno = tonumber(e) end
    if line == "" then break end
  end
  c:close()
  return res
end

local function describe_reply(r)
  return ("reply=%q errno=%s closed=%s send_err=%s recv_err=%s"):format(
    table.concat(r.lines, "|"), tostring(r.errno), tostring(r.closed),
    tostring(r.send_err), tostring(r.recv_err))
end

-- An error reply "errno=-N" with N > 0.
local function assert_errno(r, what)
  assert.is_not_nil(r.errno, what .. ": no errno in " .. describe_reply(r))
  assert.is_true(r.errno < 0, what .. ": expected errno=-N, got " .. describe_reply(r))
end

-- An error reply, or the server closed the connection (never errno=0,
-- never a stalled connection).
local function assert_errno_or_closed(r, what)
  if r.errno then
    assert.is_true(r.errno < 0, what .. ": expected errno=-N, got " .. describe_reply(r))
  else
    local closed = r.closed or (r.send_err and r.send_err ~= "timeout")
      or (r.recv_err and r.recv_err ~= "timeout")
    assert.truthy(closed, what .. ": neither errno nor close: " .. describe_reply(r))
  end
end

local function nft_counter(ns, chain)
  local out = ns:must("nft list chain inet wgotest " .. chain)
  return tonumber(out:match("counter packets (%d+)")) or error("no counter in:\n" .. out)
end

describe("wg tool against our engine, with a wireguard-go peer #netns", function()
  local t

  lazy_setup(function()
    t = helpers.two_nodes({ impl_a = "ours", impl_b = "wireguard-go", family = "v4" })
    assert.truthy(helpers.wait_ping(t.a, t.b.over_ip, 10), "no tunnel between ours and wireguard-go")
  end)

  lazy_teardown(helpers.cleanup)

  it("wg show reports keys, port, endpoint, allowed ips, handshake and transfer", helpers.guard(function()
    local a, b = t.a, t.b
    assert.truthy(a.ns:ping(b.over_ip, 3, 2))
    local out = helpers.wg(a.ns, "show " .. a.ifname)
    assert.matches("interface: " .. a.ifname, out, 1, true)
    assert.matches("public key: " .. a.pub, out, 1, true)
    assert.matches("private key: (hidden)", out, 1, true)
    assert.matches("listening port: " .. a.port, out, 1, true)
    assert.matches("peer: " .. b.pub, out, 1, true)
    assert.matches("endpoint: " .. helpers.endpoint(b.under, b.port), out, 1, true)
    assert.matches("allowed ips: " .. b.over_ip .. "/32", out, 1, true)
    local hs = out:match("latest handshake: ([^\n]*)")
    assert.truthy(hs and (hs == "Now" or hs:match("ago$")), "bad latest handshake line in:\n" .. out)
    local rx, tx = out:match("transfer: ([^\n]-) received, ([^\n]-) sent")
    assert.is_not_nil(rx, "no transfer line in:\n" .. out)
    assert.is_nil(rx:match("^0 B$"), "nothing received: " .. rx)
    assert.is_nil(tx:match("^0 B$"), "nothing sent: " .. tx)
    -- the single-field forms agree with the dump
    assert.equal(a.pub, helpers.wg(a.ns, "show " .. a.ifname .. " public-key"):gsub("%s+$", ""))
    assert.equal(a.priv, helpers.wg(a.ns, "show " .. a.ifname .. " private-key"):gsub("%s+$", ""))
    assert.equal(tostring(a.port), helpers.wg(a.ns, "show " .. a.ifname .. " listen-port"):gsub("%s+$", ""))
    assert.matches(a.ifname, helpers.wg(a.ns, "show interfaces"), 1, true)
    local transfer = helpers.wg_show_map(a.ns, a.ifname, "transfer")[b.pub]
    local trx, ttx = transfer:match("^(%d+)\t(%d+)$")
    assert.is_true(tonumber(trx) > 0 and tonumber(ttx) > 0)
  end))

  it("wg show all dump has the documented tab-separated fields", helpers.guard(function()
    local a, b = t.a, t.b
    local ifline, peerline
    for line in helpers.wg(a.ns, "show all dump"):gmatch("[^\n]+") do
      local f = {}
      for field in (line .. "\t"):gmatch("([^\t]*)\t") do f[#f + 1] = field end
      if f[1] == a.ifname then
        if #f == 5 then ifline = f elseif #f == 9 then peerline = f
        else error("dump line with " .. #f .. " fields: " .. line) end
      end
    end
    assert.is_not_nil(ifline, "no interface line for " .. a.ifname)
    assert.is_not_nil(peerline, "no peer line for " .. a.ifname)
    assert.equal(a.priv, ifline[2])
    assert.equal(a.pub, ifline[3])
    assert.equal(tostring(a.port), ifline[4])
    assert.equal("off", ifline[5])
    assert.equal(b.pub, peerline[2])
    assert.equal("(none)", peerline[3])
    assert.equal(helpers.endpoint(b.under, b.port), peerline[4])
    assert.equal(b.over_ip .. "/32", peerline[5])
    assert.matches("^%d+$", peerline[6])
    assert.is_true(tonumber(peerline[6]) > 0, "no handshake time in dump")
    assert.is_true(tonumber(peerline[7]) > 0 and tonumber(peerline[8]) > 0, "no transfer in dump")
    assert.equal("off", peerline[9])
    -- the single-interface dump is the same without the name column
    local d = helpers.wg_dump(a.ns, a.ifname)
    assert.equal(4, d.interface.nfields)
    assert.equal(8, d.peers[b.pub].nfields)
    assert.matches(B64KEY, d.interface.public_key)
  end))

  it("wg set adds and removes peers and allowed ips", helpers.guard(function()
    local a, b = t.a, t.b
    local _, pub_c = helpers.genkey()
    local psk = helpers.genpsk()
    helpers.wg_set_peer(a.ns, a.ifname, pub_c, {
      endpoint = "192.0.2.77:4000", allowed_ips = "10.99.0.7/24,fd00:99::5/64",
      preshared_key = psk, keepalive = 0,
    })
    local d = helpers.wg_dump(a.ns, a.ifname)
    assert.equal(2, d.npeers)
    local c = assert(d.peers[pub_c], "new peer missing")
    assert.equal("192.0.2.77:4000", c.endpoint)
    assert.equal(psk, c.preshared_key)
    -- host bits are masked off, as the kernel and wireguard-go do
    assert.same({ "10.99.0.0/24", "fd00:99::/64" }, (function()
      table.sort(c.allowed_ips) return c.allowed_ips end)())
    assert.equal(0, c.latest_handshake)
    -- replace the allowed ips
    helpers.wg_set_peer(a.ns, a.ifname, pub_c, { allowed_ips = "10.99.1.0/24" })
    assert.same({ "10.99.1.0/24" }, helpers.wg_dump(a.ns, a.ifname).peers[pub_c].allowed_ips)
    -- an allowed ip moves from one peer to another
    helpers.wg_set_peer(a.ns, a.ifname, pub_c, { allowed_ips = "10.99.1.0/24," .. b.over_ip .. "/32" })
    d = helpers.wg_dump(a.ns, a.ifname)
    assert.same({}, d.peers[b.pub].allowed_ips, "allowed ip was not taken from the old peer")
    assert.falsy(a.ns:ping(b.over_ip, 1, 1), "traffic still routed to the old peer")
    helpers.wg_set_peer(a.ns, a.ifname, b.pub, { allowed_ips = b.over_ip .. "/32" })
    d = helpers.wg_dump(a.ns, a.ifname)
    assert.same({ "10.99.1.0/24" }, d.peers[pub_c].allowed_ips)
    assert.same({ b.over_ip .. "/32" }, d.peers[b.pub].allowed_ips)
    assert.truthy(helpers.wait_ping(a, b.over_ip, 10), "traffic not restored")
    -- empty allowed ips
    helpers.wg(a.ns, ("set %s peer %s allowed-ips ''"):format(a.ifname, pub_c))
    assert.same({}, helpers.wg_dump(a.ns, a.ifname).peers[pub_c].allowed_ips)
    -- psk removal, keepalive
    helpers.wg(a.ns, ("set %s peer %s preshared-key /dev/null persistent-keepalive 17"):format(a.ifname, pub_c))
    d = helpers.wg_dump(a.ns, a.ifname)
    assert.equal("(none)", d.peers[pub_c].preshared_key)
    assert.equal("17", d.peers[pub_c].keepalive)
    -- remove
    helpers.wg(a.ns, ("set %s peer %s remove"):format(a.ifname, pub_c))
    d = helpers.wg_dump(a.ns, a.ifname)
    assert.equal(1, d.npeers)
    assert.is_nil(d.peers[pub_c])
    assert.is_not_nil(d.peers[b.pub])
    assert.truthy(a.ns:ping(b.over_ip, 2, 2), "existing peer broken by peer changes")
  end))

  it("wg set listen-port rebinds the UDP socket", helpers.guard(function()
    local a, b = t.a, t.b
    local old = tonumber(helpers.wg(a.ns, "show " .. a.ifname .. " listen-port"):match("%d+"))
    local new = old == 40001 and 40002 or 40001
    helpers.wg(a.ns, ("set %s listen-port %d"):format(a.ifname, new))
    assert.equal(tostring(new), helpers.wg(a.ns, "show " .. a.ifname .. " listen-port"):gsub("%s+$", ""))
    assert.truthy(helpers.wait_until(function()
      local _, o1 = a.ns:exec(("ss -Huln 'sport = :%d'"):format(new))
      local _, o2 = a.ns:exec(("ss -Huln 'sport = :%d'"):format(old))
      return o1:match("UNCONN") and not o2:match("UNCONN")
    end, 5), "UDP socket not moved from " .. old .. " to " .. new)
    -- traffic from the new port teaches the peer our new endpoint
    assert.truthy(helpers.wait_until(function()
      a.ns:ping(b.over_ip, 1, 1)
      return helpers.wg_show_map(b.ns, b.ifname, "endpoints")[a.pub]
        == helpers.endpoint(a.under, new)
    end, 15, 0.2), "peer did not see the new port")
    assert.truthy(b.ns:ping(a.over_ip, 2, 2))
    -- and back
    helpers.wg(a.ns, ("set %s listen-port %d"):format(a.ifname, a.port))
    assert.truthy(helpers.wait_until(function()
      a.ns:ping(b.over_ip, 1, 1)
      return helpers.wg_show_map(b.ns, b.ifname, "endpoints")[a.pub]
        == helpers.endpoint(a.under, a.port)
    end, 15, 0.2))
  end))

  it("wg set fwmark marks the engine's UDP packets", helpers.guard(function()
    local a, b = t.a, t.b
    a.ns:must("nft add table inet wgotest")
    a.ns:must("nft add chain inet wgotest out '{ type filter hook output priority 0; policy accept; }'")
    a.ns:must(("nft add rule inet wgotest out meta mark 0x1234 udp dport %d counter"):format(b.port))
    assert.truthy(a.ns:ping(b.over_ip, 2, 2))
    assert.equal(0, nft_counter(a.ns, "out"), "packets marked before fwmark was set")
    helpers.wg(a.ns, "set " .. a.ifname .. " fwmark 0x1234")
    assert.equal("0x1234", helpers.wg(a.ns, "show " .. a.ifname .. " fwmark"):gsub("%s+$", ""))
    assert.equal("0x1234", helpers.wg_dump(a.ns, a.ifname).interface.fwmark)
    assert.truthy(a.ns:ping(b.over_ip, 3, 2), "no traffic with fwmark set")
    local marked = nft_counter(a.ns, "out")
    assert.is_true(marked >= 3, "engine packets not marked (counter " .. marked .. ")")
    helpers.wg(a.ns, "set " .. a.ifname .. " fwmark 0")
    assert.equal("off", helpers.wg(a.ns, "show " .. a.ifname .. " fwmark"):gsub("%s+$", ""))
    assert.truthy(a.ns:ping(b.over_ip, 3, 2))
    assert.equal(marked, nft_counter(a.ns, "out"), "packets still marked after fwmark 0")
    a.ns:must("nft delete table inet wgotest")
  end))

  it("survives junk UDP datagrams and still handshakes", helpers.guard(function()
    local a, b = t.a, t.b
    local script = helpers.write_file(helpers.tmpdir() .. "/junk.lua", [[
local socket = require "socket"
local host, port, count = arg[1], tonumber(arg[2]), tonumber(arg[3])
local u = assert(host:find(":") and socket.udp6() or socket.udp())
assert(u:setpeername(host, port))
local function rnd(n)
  local t = {}
  for i = 1, n do t[i] = string.char(math.random(0, 255)) end
  return table.concat(t)
end
local kinds = {
  function() return rnd(math.random(1, 1500)) end,             -- random bytes
  function() return "\1\0\0\0" .. rnd(144) end,                 -- initiation, bad mac1
  function() return "\2\0\0\0" .. rnd(88) end,                  -- response, unknown index
  function() return "\3\0\0\0" .. rnd(60) end,                  -- cookie reply, unknown index
  function() return "\4\0\0\0" .. rnd(12 + 16 + math.random(0, 1400)) end, -- data, unknown receiver
  function() return "\4\0\0\0" .. rnd(math.random(0, 27)) end,  -- data, truncated
  function() return string.char(math.random(1, 4)) .. rnd(math.random(0, 60)) end, -- truncated
  function() return string.char(math.random(1, 4)) .. "\0\0\0" .. rnd(math.random(0, 300)) end,
  function() return "\1\0\0\0" .. rnd(math.random(145, 1000)) end, -- initiation, wrong length
  function() return "" end,                                     -- empty datagram
  function() return rnd(60000) end,                             -- oversized
}
local sent = 0
for i = 1, count do
  local kind = kinds[(i % #kinds) + 1]
  if u:send(kind()) then sent = sent + 1 end
  if i % 200 == 0 then socket.sleep(0.01) end
end
print(sent)
]], "644")
    local out = b.ns:must(("lua5.4 %s %s %d 3000"):format(script, helpers.ip_of(a.under), a.port))
    assert.is_true(tonumber(out:match("%d+")) > 2500, "junk was not sent: " .. out)
    helpers.sleep(0.5)
    assert.is_true(a.proc:alive(), "engine died after junk datagrams:\n" .. a.proc:log())
    -- the UAPI still answers and a brand-new handshake still completes
    local hs0 = helpers.latest_handshake(a.ns, a.ifname, b.pub)
    next_second()
    helpers.wg(b.ns, ("set %s peer %s remove"):format(b.ifname, a.pub))
    helpers.wg_set_peer(b.ns, b.ifname, a.pub, {
      endpoint = helpers.endpoint(a.under, a.port), allowed_ips = a.over_ip .. "/32",
    })
    assert.truthy(helpers.wait_ping(b, a.over_ip, 20), "no handshake after junk")
    assert.is_true(helpers.latest_handshake(a.ns, a.ifname, b.pub) > hs0, "handshake not renewed")
    assert.is_true(a.proc:alive())
  end))
end)

describe("UAPI configuration of our engine #netns", function()
  local node -- { ns, ifname, proc }

  lazy_setup(function()
    local ns = helpers.netns.new("c")
    local ifname = helpers.ifname("wt")
    node = { ns = ns, ifname = ifname }
    node.proc = helpers.start_engine(ns, "ours", ifname)
  end)

  lazy_teardown(helpers.cleanup)

  it("wg setconf then wg showconf returns the same configuration", helpers.guard(function()
    local priv = helpers.genkey()
    local _, p1 = helpers.genkey()
    local _, p2 = helpers.genkey()
    local _, p0 = helpers.genkey()
    -- a peer that setconf must remove
    helpers.wg_set_peer(node.ns, node.ifname, p0, { allowed_ips = "10.97.0.0/16" })
    local conf = table.concat({
      "[Interface]",
      "ListenPort = 41000",
      "FwMark = 0x2a",
      "PrivateKey = " .. priv,
      "",
      "[Peer]",
      "PublicKey = " .. p1,
      "PresharedKey = " .. helpers.genpsk(),
      "AllowedIPs = 10.99.0.0/24, fd00:99::/64, 10.1.2.3/32",
      "Endpoint = 192.0.2.9:51820",
      "PersistentKeepalive = 25",
      "",
      "[Peer]",
      "PublicKey = " .. p2,
      "AllowedIPs = 10.98.0.1/32",
      "Endpoint = [fd00:2::9]:51821",
      "",
    }, "\n")
    local file = helpers.write_file(helpers.tmpdir() .. "/setconf.conf", conf, "600")
    helpers.wg(node.ns, ("setconf %s %s"):format(node.ifname, file))
    local shown = showconf(node)
    assert.same(normalise_conf(conf), normalise_conf(shown))
    assert.is_nil(shown:find(p0, 1, true), "setconf did not remove the old peer")
    -- addconf adds without removing
    local _, p3 = helpers.genkey()
    local add = helpers.write_file(helpers.tmpdir() .. "/addconf.conf",
      "[Peer]\nPublicKey = " .. p3 .. "\nAllowedIPs = 10.96.0.0/16\n", "600")
    helpers.wg(node.ns, ("addconf %s %s"):format(node.ifname, add))
    local d = helpers.wg_dump(node.ns, node.ifname)
    assert.equal(3, d.npeers)
    assert.same({ "10.96.0.0/16" }, d.peers[p3].allowed_ips)
    -- a second setconf with the shown config is a fixed point
    helpers.wg(node.ns, ("setconf %s %s"):format(node.ifname, file))
    assert.same(normalise_conf(conf), normalise_conf(showconf(node)))
    assert.equal("41000", helpers.wg(node.ns, "show " .. node.ifname .. " listen-port"):gsub("%s+$", ""))
  end))

  describe("rejects malformed UAPI requests", function()
    local baseline, peer_hex

    lazy_setup(function()
      local priv = helpers.genkey()
      local _, peer = helpers.genkey()
      peer_hex = helpers.key_hex(peer)
      helpers.write_file(helpers.tmpdir() .. "/base.conf", table.concat({
        "[Interface]", "ListenPort = 41100", "PrivateKey = " .. priv, "",
        "[Peer]", "PublicKey = " .. peer, "AllowedIPs = 10.95.0.0/24",
        "Endpoint = 192.0.2.10:51820", "" }, "\n"), "600")
      helpers.wg(node.ns, ("setconf %s %s/base.conf"):format(node.ifname, helpers.tmpdir()))
      baseline = showconf(node)
    end)

    local function unchanged()
      assert.is_true(node.proc:alive(), "engine died:\n" .. node.proc:log())
      assert.equal(baseline, showconf(node), "configuration changed")
    end

    it("answers a well-formed get and set with errno=0", helpers.guard(function()
      local r = uapi(node.ifname, "get=1\n\n")
      assert.equal(0, r.errno, describe_reply(r))
      local has_port
      for _, l in ipairs(r.lines) do if l == "listen_port=41100" then has_port = true end end
      assert.truthy(has_port, describe_reply(r))
      r = uapi(node.ifname, "set=1\nlisten_port=41100\n\n")
      assert.equal(0, r.errno, describe_reply(r))
      -- the empty probe connection wg makes first
      local c = assert(unix.stream())
      assert(c:connect("/var/run/wireguard/" .. node.ifname .. ".sock"))
      c:close()
      unchanged()
    end))

    it("unknown key", helpers.guard(function()
      assert_errno(uapi(node.ifname, "set=1\nno_such_key=1\n\n"), "unknown key")
      assert_errno(uapi(node.ifname, ("set=1\npublic_key=%s\nbogus_peer_key=3\n\n"):format(peer_hex)),
        "unknown peer key")
      unchanged()
    end))

    it("bad hex key", helpers.guard(function()
      assert_errno(uapi(node.ifname, "set=1\nprivate_key=" .. ("zz"):rep(32) .. "\n\n"), "bad hex")
      assert_errno(uapi(node.ifname, "set=1\nprivate_key=" .. ("ab"):rep(31) .. "\n\n"), "short hex")
      assert_errno(uapi(node.ifname, "set=1\npublic_key=" .. ("ab"):rep(33) .. "\n\n"), "long hex")
      unchanged()
    end))

    it("bad CIDR and other bad values", helpers.guard(function()
      for _, bad in ipairs({ "10.0.0.0/33", "300.1.1.1/32", "fd00::/129", "10.0.0.0", "garbage/8" }) do
        assert_errno(uapi(node.ifname, ("set=1\npublic_key=%s\nallowed_ip=%s\n\n"):format(peer_hex, bad)),
          "allowed_ip=" .. bad)
      end
      assert_errno(uapi(node.ifname, "set=1\nlisten_port=70000\n\n"), "listen_port=70000")
      assert_errno(uapi(node.ifname, ("set=1\npublic_key=%s\nendpoint=not-an-endpoint\n\n"):format(peer_hex)),
        "bad endpoint")
      assert_errno(uapi(node.ifname, ("set=1\npublic_key=%s\npersistent_keepalive_interval=-1\n\n"):format(peer_hex)),
        "bad keepalive")
      unchanged()
    end))

    it("unknown operation", helpers.guard(function()
      assert_errno_or_closed(uapi(node.ifname, "frobnicate=1\n\n"), "unknown operation")
      unchanged()
    end))

    it("an endless line", helpers.guard(function()
      local r = uapi(node.ifname, function(c)
        local _, err = c:send("set=1\nprivate_key=")
        if err then return err end
        local chunk = ("a"):rep(65536)
        for _ = 1, 70 * 16 do -- 70 MB
          local _, e = c:send(chunk)
          if e then return e end
        end
      end, { shutdown = true, timeout = 20 })
      assert.are_not.equal("timeout", r.send_err, "server stalled: " .. describe_reply(r))
      assert_errno_or_closed(r, "endless line")
      unchanged()
    end))

    it("a truncated request (no blank line, then close)", helpers.guard(function()
      ours_only("truncated requests are not applied")
      assert_errno_or_closed(uapi(node.ifname, "set=1\nlisten_port=41999\n", { shutdown = true }),
        "truncated")
      assert_errno_or_closed(uapi(node.ifname, "set=1\nlisten_port=41998", { shutdown = true }),
        "truncated line")
      unchanged()
    end))

    it("a 70 MB request of allowed_ip lines", helpers.guard(function()
      ours_only("oversized requests are refused as a whole")
      local r = uapi(node.ifname, function(c)
        local _, err = c:send(("set=1\npublic_key=%s\n"):format(peer_hex))
        if err then return err end
        local sent, n = 0, 0
        while sent < 70e6 do
          local lines = {}
          for i = 1, 4096 do
            n = n + 1
            lines[i] = ("allowed_ip=10.%d.%d.%d/32\n"):format(100 + (n >> 16) % 100, (n >> 8) & 255, n & 255)
          end
          local chunk = table.concat(lines)
          local _, e = c:send(chunk)
          if e then return e end
          sent = sent + #chunk
        end
        c:send("\n")
      end, { shutdown = true, timeout = 20 })
      assert.are_not.equal("timeout", r.send_err, "server stalled: " .. describe_reply(r))
      assert_errno_or_closed(r, "70 MB request")
      unchanged()
    end))
  end)
end)

describe("engine lifecycle #netns", function()
  lazy_teardown(helpers.cleanup)

  for _, sig in ipairs({ "TERM", "INT" }) do
    it("exits cleanly on SIG" .. sig .. ", removing interface and socket", helpers.guard(function()
      local ns = helpers.netns.new("l")
      local ifname = helpers.ifname("wt")
      local proc = helpers.start_engine(ns, "ours", ifname)
      ns:must("ip link show dev " .. ifname)
      helpers.link_up(ns, ifname, { "10.94.0.1/24" })
      proc:signal(sig)
      local rc = proc:wait(10)
      assert.is_not_nil(rc, "engine did not exit on SIG" .. sig)
      assert.equal(0, rc, "exit code after SIG" .. sig .. ":\n" .. proc:log())
      assert.falsy(helpers.sh("test -e /var/run/wireguard/" .. quote(ifname) .. ".sock"),
        "UAPI socket left behind")
      assert.falsy(ns:exec("ip link show dev " .. ifname), "interface left behind")
    end))
  end
end)
