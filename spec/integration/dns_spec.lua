-- The DNS server (wgoverlay.dns.server) in network namespaces, queried
-- with the real `dig` over UDP and TCP: A/AAAA answers, service sets,
-- NXDOMAIN, REFUSED, removal, truncation and TCP retry, forwarding to a
-- second server, TCP framing, idle timeout and the connection bound, and
-- garbage on the wire.  Needs root.
--
-- Topology (all addresses live in namespaces this spec creates):
--   srv namespace: veth 10.200.0.1/24, fd00:200::1/64; lo 127.0.0.1
--     child "main":     zone overlay.internal on 10.200.0.1 and fd00:200::1
--                       port 53; forwarding copies on 10.200.0.1:5353
--                       (-> 127.0.0.1:5300) and :5354 (-> 127.0.0.1:5399,
--                       nobody there); a small one on :5355 (tcp_idle 1 s,
--                       max_tcp 2).  Driven by lines written to a FIFO.
--     child "upstream": zone upstream.test on 127.0.0.1:5300
--   cli namespace: veth 10.200.0.9/24, fd00:200::9/64; runs dig and Lua
--     clients.

local helpers = require "spec.helpers"
local uv = require "luv"

local quote = helpers.quote

local SRV4, SRV6 = "10.200.0.1", "fd00:200::1"

-- The child: serves cfg.servers from one zone and applies commands read
-- from cfg.fifo ("add NAME KIND ADDR", "remove NAME [KIND [ADDR]]",
-- "set NAME V4,.. V6,.."), printing "done N ok|err" for each.
local CHILD = [==[
local uv = require "luv"
local dns = require "wgoverlay.dns"
local cfg = CFG
local zone = assert(dns.zone.new(cfg.origin))
for _, r in ipairs(cfg.records) do assert(zone:add(r[1], r[2], r[3])) end
local servers = {}
for _, s in ipairs(cfg.servers) do
  s.zone = zone
  s.log = function(m) io.stderr:write(m, "\n") end
  local srv = assert(dns.server.new(s))
  assert(srv:start())
  servers[#servers + 1] = srv
end
local function list(s)
  local out = {}
  for a in (s or ""):gmatch("[^,]+") do if a ~= "-" then out[#out + 1] = a end end
  return out
end
local function apply(line)
  local w = {}
  for x in line:gmatch("%S+") do w[#w + 1] = x end
  if w[1] == "add" then return zone:add(w[2], w[3], w[4]) end
  if w[1] == "remove" then return zone:remove(w[2], w[3], w[4]) end
  if w[1] == "set" then return zone:set(w[2], list(w[3]), list(w[4])) end
  return nil, "unknown command"
end
local n, buf = 0, ""
if cfg.fifo then
  local fd = assert(uv.fs_open(cfg.fifo, "r+", 0)) -- O_RDWR: never sees EOF
  local pipe = uv.new_pipe(false)
  pipe:open(fd)
  pipe:read_start(function(err, chunk)
    if err or not chunk then return end
    buf = buf .. chunk
    for line in buf:gmatch("([^\n]*)\n") do
      local ok, e = apply(line)
      n = n + 1
      io.stdout:write(("done %d %s %s\n"):format(n, ok and "ok" or "err", tostring(e)))
      io.stdout:flush()
    end
    buf = buf:match("[^\n]*$")
  end)
end
io.stdout:write("ready\n")
io.stdout:flush()
uv.run()
]==]

-- A parsed `dig` answer: status, flags (set), answers {name, type, data},
-- authority types, raw text.
local function parse_dig(out)
  local r = { raw = out, flags = {}, answers = {}, authority = {} }
  r.status = out:match("status: (%u+)")
  local flags = out:match(";; flags: ([%l ]+);")
  for f in (flags or ""):gmatch("%l+") do r.flags[f] = true end
  local section
  for line in (out .. "\n"):gmatch("([^\n]*)\n") do
    local s = line:match("^;; (%u+) SECTION:")
    if s then
      section = s
    elseif line:match("^%s*$") then
      section = nil
    elseif (section == "ANSWER" or section == "AUTHORITY") and not line:match("^;") then
      local name, rtype, data = line:match("^(%S+)%s+%d+%s+IN%s+(%S+)%s+(.-)%s*$")
      if name then
        local list = section == "ANSWER" and r.answers or r.authority
        list[#list + 1] = { name = name, type = rtype, data = data }
      end
    end
  end
  return r
end

local function sorted(answers, rtype)
  local out = {}
  for _, a in ipairs(answers) do
    if rtype == nil or a.type == rtype then out[#out + 1] = a.data end
  end
  table.sort(out)
  return out
end

describe("dns server #netns", function()
  local srv, cli, main, upstream, fifo, commands

  -- Run dig in the client namespace.
  local function dig(args)
    local ok, out, err = cli:exec("dig +tries=1 +time=3 " .. args)
    local r = parse_dig(out)
    r.ok, r.err = ok, err
    return r
  end

  -- Send one command line to the main child and wait for its "done".
  local function command(line)
    assert(main:alive(), "the DNS child exited:\n" .. main:log())
    -- O_WRONLY | O_NONBLOCK: fails (ENXIO) instead of blocking without a reader
    local fd = assert(uv.fs_open(fifo, 1 | 2048, 0))
    assert(uv.fs_write(fd, line .. "\n"))
    uv.fs_close(fd)
    commands = commands + 1
    local n = commands
    local res = assert(helpers.wait_until(function()
      return main:log():match("done " .. n .. " (%S+)")
    end, 5, 0.02))
    assert.equal("ok", res, main:log())
  end

  -- Start a child serving `cfg`; waits for "ready".
  local function start_child(name, cfg)
    local code = CHILD:gsub("CFG", function() return helpers.lua_literal(cfg) end)
    local proc = srv:spawn("lua5.4 -e " .. quote(code), { env = helpers.lua_env(), cwd = helpers.root, name = name })
    local ok, err = helpers.wait_until(function()
      if not proc:alive() then error("exited: " .. proc:log()) end
      return proc:log():match("ready")
    end, 10, 0.05)
    assert(ok, ("%s did not start: %s\n%s"):format(name, tostring(err), proc:log()))
    return proc
  end

  -- Run a Lua chunk (luasocket client) in the client namespace; returns stdout.
  local function lua_client(code)
    local ok, out, err = helpers.lua_run(cli, code)
    assert(ok, "client chunk failed:\n" .. out .. err)
    return out
  end

  lazy_setup(function()
    assert(helpers.is_root, "integration specs need root")
    if not helpers.sh("command -v dig >/dev/null") then
      helpers.sh("DEBIAN_FRONTEND=noninteractive apt-get install -y bind9-dnsutils >/dev/null")
    end
    assert(helpers.sh("command -v dig >/dev/null"), "dig is missing (apt-get install bind9-dnsutils)")
    local ok, err = pcall(function()
      srv, cli = helpers.netns.new("dns"), helpers.netns.new("dnsc")
      helpers.netns.veth(srv, cli, { a = { SRV4 .. "/24", SRV6 .. "/64" },
        b = { "10.200.0.9/24", "fd00:200::9/64" } })
      fifo = helpers.tmpdir() .. "/dns-control.fifo"
      helpers.must("mkfifo -m 600 " .. quote(fifo))
      commands = 0
      upstream = start_child("dns-upstream", {
        origin = "upstream.test",
        records = { { "www", "A", "192.0.2.80" }, { "www", "AAAA", "2001:db8::80" } },
        servers = { { host = "127.0.0.1", port = 5300 } },
      })
      local records = {
        { "node1", "A", "10.200.0.1" }, { "node1", "AAAA", "fd00:200::1" },
        { "node2", "A", "10.200.0.17" }, { "node2", "AAAA", "fd00:200:0:1::1" },
        { "web", "A", "10.200.0.2" }, { "web", "A", "10.200.0.18" }, { "web", "A", "10.200.0.34" },
        { "web", "AAAA", "fd00:200::2" }, { "web", "AAAA", "fd00:200:0:1::2" },
      }
      for i = 1, 60 do records[#records + 1] = { "big", "A", "10.200.1." .. i } end
      main = start_child("dns-main", {
        origin = "overlay.internal", records = records, fifo = fifo,
        servers = {
          { host = { SRV4, SRV6 }, port = 53 },
          { host = SRV4, port = 5353, forward = "127.0.0.1:5300" },
          { host = SRV4, port = 5354, forward = "127.0.0.1:5399", forward_timeout = 0.5 },
          { host = SRV4, port = 5355, tcp_idle = 1, max_tcp = 2 },
        },
      })
    end)
    if not ok then
      helpers.dump_logs()
      helpers.cleanup()
      error(err, 0)
    end
  end)

  lazy_teardown(function()
    -- kills the children by pid, then deletes both namespaces
    helpers.cleanup()
  end)

  describe("authoritative answers", function()
    for _, transport in ipairs({ "", "+tcp" }) do
      local label = transport == "" and "UDP" or "TCP"

      it("A and AAAA of a node over " .. label, helpers.guard(function()
        local r = dig(("@%s %s node1.overlay.internal A"):format(SRV4, transport))
        assert.equal("NOERROR", r.status, r.raw)
        assert.is_true(r.flags.aa and r.flags.qr and r.flags.rd)
        assert.is_nil(r.flags.ra)
        assert.same({ "10.200.0.1" }, sorted(r.answers, "A"))
        r = dig(("@%s %s node2.overlay.internal AAAA"):format(SRV4, transport))
        assert.same({ "fd00:200:0:1::1" }, sorted(r.answers, "AAAA"))
      end))

      it("every address of a service name over " .. label, helpers.guard(function()
        local r = dig(("@%s %s web.overlay.internal A"):format(SRV4, transport))
        assert.same({ "10.200.0.18", "10.200.0.2", "10.200.0.34" }, sorted(r.answers, "A"))
        r = dig(("@%s %s web.overlay.internal AAAA"):format(SRV4, transport))
        assert.same({ "fd00:200:0:1::2", "fd00:200::2" }, sorted(r.answers, "AAAA"))
      end))

      it("NXDOMAIN with the SOA for an unknown name over " .. label, helpers.guard(function()
        local r = dig(("@%s %s nosuch.overlay.internal A"):format(SRV4, transport))
        assert.equal("NXDOMAIN", r.status, r.raw)
        assert.is_true(r.flags.aa)
        assert.equal(0, #r.answers)
        assert.equal("SOA", r.authority[1] and r.authority[1].type, r.raw)
      end))

      it("REFUSED outside the zone over " .. label, helpers.guard(function()
        local r = dig(("@%s %s example.com A"):format(SRV4, transport))
        assert.equal("REFUSED", r.status, r.raw)
        assert.is_nil(r.flags.aa)
        assert.equal(0, #r.answers)
      end))
    end

    it("answers on the IPv6 address too, case-insensitively", helpers.guard(function()
      local r = dig(("@%s NoDe1.Overlay.INTERNAL AAAA"):format(SRV6))
      assert.equal("NOERROR", r.status, r.raw)
      assert.same({ "fd00:200::1" }, sorted(r.answers, "AAAA"))
      r = dig(("@%s +tcp node1.overlay.internal A"):format(SRV6))
      assert.same({ "10.200.0.1" }, sorted(r.answers, "A"))
    end))

    it("NODATA for a type the name lacks", helpers.guard(function()
      local r = dig(("@%s node1.overlay.internal MX"):format(SRV4))
      assert.equal("NOERROR", r.status, r.raw)
      assert.equal(0, #r.answers)
      assert.equal("SOA", r.authority[1] and r.authority[1].type, r.raw)
    end))
  end)

  describe("zone changes", function()
    it("a removed record is gone, over UDP and TCP", helpers.guard(function()
      command("remove web A 10.200.0.18")
      for _, t in ipairs({ "", "+tcp" }) do
        local r = dig(("@%s %s web.overlay.internal A"):format(SRV4, t))
        assert.same({ "10.200.0.2", "10.200.0.34" }, sorted(r.answers, "A"))
      end
      command("remove node2")
      for _, qt in ipairs({ "A", "AAAA" }) do
        local r = dig(("@%s node2.overlay.internal %s"):format(SRV4, qt))
        assert.equal("NXDOMAIN", r.status, r.raw)
      end
    end))

    it("an added name appears and set replaces a service set", helpers.guard(function()
      assert.equal("NXDOMAIN", dig(("@%s node3.overlay.internal A"):format(SRV4)).status)
      command("add node3 A 10.200.0.33")
      assert.same({ "10.200.0.33" }, sorted(dig(("@%s node3.overlay.internal A"):format(SRV4)).answers))
      command("set api 10.200.0.50,10.200.0.66 fd00:200::50")
      local r = dig(("@%s +tcp api.overlay.internal A"):format(SRV4))
      assert.same({ "10.200.0.50", "10.200.0.66" }, sorted(r.answers, "A"))
      command("set api - -")
      assert.equal("NXDOMAIN", dig(("@%s api.overlay.internal A"):format(SRV4)).status)
    end))
  end)

  describe("truncation", function()
    it("sets TC on a large UDP answer without EDNS", helpers.guard(function()
      local r = dig(("@%s +noedns +ignore big.overlay.internal A"):format(SRV4))
      assert.is_true(r.flags.tc, r.raw)
      assert.equal(0, #r.answers)
    end))

    it("dig retries over TCP by itself and gets every record", helpers.guard(function()
      local r = dig(("@%s +noedns big.overlay.internal A"):format(SRV4))
      assert.is_nil(r.flags.tc)
      assert.equal(60, #r.answers, r.raw)
      assert.matches("Truncated, retrying in TCP mode", r.raw)
    end))

    it("fits in one datagram with EDNS", helpers.guard(function()
      local r = dig(("@%s +bufsize=1232 +ignore big.overlay.internal A"):format(SRV4))
      assert.is_nil(r.flags.tc)
      assert.equal(60, #r.answers, r.raw)
    end))
  end)

  describe("forwarding", function()
    for _, transport in ipairs({ "", "+tcp" }) do
      local label = transport == "" and "UDP" or "TCP"

      it("relays names outside the zone to the upstream over " .. label, helpers.guard(function()
        local r = dig(("@%s -p 5353 %s www.upstream.test A"):format(SRV4, transport))
        assert.equal("NOERROR", r.status, r.raw)
        assert.same({ "192.0.2.80" }, sorted(r.answers, "A"))
        r = dig(("@%s -p 5353 %s www.upstream.test AAAA"):format(SRV4, transport))
        assert.same({ "2001:db8::80" }, sorted(r.answers, "AAAA"))
        r = dig(("@%s -p 5353 %s nope.upstream.test A"):format(SRV4, transport))
        assert.equal("NXDOMAIN", r.status, r.raw)
        r = dig(("@%s -p 5353 %s elsewhere.example A"):format(SRV4, transport))
        assert.equal("REFUSED", r.status, r.raw) -- the upstream's own answer
      end))

      it("still answers its own zone in forward mode over " .. label, helpers.guard(function()
        local r = dig(("@%s -p 5353 %s node1.overlay.internal A"):format(SRV4, transport))
        assert.is_true(r.flags.aa)
        assert.same({ "10.200.0.1" }, sorted(r.answers, "A"))
      end))

      it("answers SERVFAIL when the upstream is silent over " .. label, helpers.guard(function()
        local t0 = helpers.now()
        local r = dig(("@%s -p 5354 %s www.upstream.test A"):format(SRV4, transport))
        assert.equal("SERVFAIL", r.status, r.raw)
        assert.is_true(helpers.now() - t0 < 2.5)
      end))
    end
  end)

  describe("TCP", function()
    -- Lua prelude for client chunks: framed queries with luasocket.
    local PRELUDE = [[
      package.path = "./lua/?.lua;" .. package.path
      local socket = require "socket"
      local dns = require "wgoverlay.dns"
      local function connect(port)
        local c = assert(socket.tcp())
        c:settimeout(3)
        assert(c:connect("10.200.0.1", port))
        return c
      end
      local function read_frame(c)
        local len, err = c:receive(2)
        if not len then return nil, err end
        local n = string.unpack(">I2", len)
        return c:receive(n)
      end
    ]]

    it("answers several pipelined queries on one connection", helpers.guard(function()
      local out = lua_client(PRELUDE .. [[
        local c = connect(53)
        local names = { "node1", "web", "nosuch" }
        local batch = {}
        for i, n in ipairs(names) do
          batch[i] = string.pack(">s2", dns.query(n .. ".overlay.internal", "A", { id = i }))
        end
        assert(c:send(table.concat(batch)))
        for _ = 1, 3 do
          local m = assert(dns.parse(assert(read_frame(c))))
          io.write(m.id, " ", dns.RCODE_NAME[m.rcode], " ", #m.answers, "\n")
        end
        -- and the connection stays usable
        assert(c:send(string.pack(">s2", dns.query("node1.overlay.internal", "AAAA", { id = 9 }))))
        local m = assert(dns.parse(assert(read_frame(c))))
        io.write(m.id, " ", m.answers[1].data, "\n")
        c:close()
      ]])
      assert.equal("1 NOERROR 1\n2 NOERROR 2\n3 NXDOMAIN 0\n9 fd00:200::1\n", out)
    end))

    it("reassembles a query split across segments", helpers.guard(function()
      local out = lua_client(PRELUDE .. [[
        local c = connect(53)
        c:setoption("tcp-nodelay", true)
        local frame = string.pack(">s2", dns.query("web.overlay.internal", "A", { id = 77 }))
        for i = 1, #frame do assert(c:send(frame:sub(i, i))) socket.sleep(0.002) end
        local m = assert(dns.parse(assert(read_frame(c))))
        io.write(m.id, " ", #m.answers, "\n")
      ]])
      assert.equal("77 2\n", out)
    end))

    it("closes idle connections", helpers.guard(function()
      local out = lua_client(PRELUDE .. [[
        local c = connect(5355)
        local t0 = socket.gettime()
        c:settimeout(5)
        local data, err = c:receive(1)
        io.write(tostring(err), " ", string.format("%.1f", socket.gettime() - t0), "\n")
      ]])
      local err, secs = out:match("^(%S+) ([%d.]+)")
      assert.equal("closed", err)
      assert.is_true(tonumber(secs) >= 0.8 and tonumber(secs) < 3, out)
    end))

    it("bounds the number of connections and recovers", helpers.guard(function()
      local out = lua_client(PRELUDE .. [[
        local function ask(c, id)
          assert(c:send(string.pack(">s2", dns.query("node1.overlay.internal", "A", { id = id }))))
          local f, err = read_frame(c)
          return f and dns.parse(f).id or err
        end
        local a, b = connect(5355), connect(5355)
        io.write(ask(a, 1), " ", ask(b, 2), "\n")
        local c = connect(5355) -- accepted, then closed at once
        io.write(tostring(ask(c, 3)), "\n")
        a:close()
        socket.sleep(0.2)
        local d = connect(5355)
        io.write(ask(d, 4), "\n")
      ]])
      assert.equal("1 2\nclosed\n4\n", out)
    end))
  end)

  describe("robustness", function()
    it("answers garbage with FORMERR, drops what has no header, keeps serving", helpers.guard(function()
      local out = lua_client([[
        package.path = "./lua/?.lua;" .. package.path
        local socket = require "socket"
        local dns = require "wgoverlay.dns"
        local u = assert(socket.udp())
        u:settimeout(1)
        assert(u:setpeername("10.200.0.1", 53))
        -- a header and a label running past the end
        assert(u:send("\0\42\1\0\0\1\0\0\0\0\0\0\63abc"))
        local m = dns.parse(assert(u:receive()))
        io.write(m.id, " ", dns.RCODE_NAME[m.rcode], "\n")
        -- five bytes: no header, no answer
        assert(u:send("\1\2\3\4\5"))
        io.write(tostring(select(2, u:receive())), "\n")
        -- a compression loop
        assert(u:send("\0\43\1\0\0\1\0\0\0\0\0\0\192\12\0\1\0\1"))
        m = dns.parse(assert(u:receive()))
        io.write(m.id, " ", dns.RCODE_NAME[m.rcode], "\n")
        -- a flood of random datagrams
        math.randomseed(7)
        for _ = 1, 3000 do
          local t = {}
          for i = 1, math.random(0, 60) do t[i] = math.random(0, 255) end
          u:send(string.char(table.unpack(t)))
        end
        socket.sleep(0.3)
        u:settimeout(0)
        while u:receive() do end
        u:settimeout(1)
        assert(u:send(dns.query("node1.overlay.internal", "A", { id = 44 })))
        m = dns.parse(assert(u:receive()))
        io.write(m.id, " ", m.answers[1].data, "\n")
      ]])
      assert.equal("42 FORMERR\ntimeout\n43 FORMERR\n44 10.200.0.1\n", out)
      assert.is_true(main:alive())
      local r = dig(("@%s +tcp node1.overlay.internal A"):format(SRV4))
      assert.same({ "10.200.0.1" }, sorted(r.answers, "A"))
    end))

    it("the children are still up (killed by pid in teardown)", function()
      assert.is_true(main:alive())
      assert.is_true(upstream:alive())
    end)
  end)
end)
