-- bin/wgoverlay in network namespaces: genkey/pubkey against wg, `up FILE`
-- bringing up a tunnel that handshakes, `status` (table and --json),
-- `down FILE`, and `interface IFNAME` under wg(8).  Needs root.

local helpers = require "spec.helpers"
local cjson = require "cjson"

local quote = helpers.quote

local function bin()
  return helpers.lua_env_prefix() .. "lua5.4 " .. quote(helpers.root .. "/bin/wgoverlay")
end

-- Runs `bin/wgoverlay ARGS` in `ns` (or the root namespace for key
-- commands) with stdout and stderr sent to files, so that a background
-- engine cannot hold a pipe of ours.  Returns exit code, stdout, stderr.
local function wgoverlay(ns, args, stdin)
  local dir = helpers.tmpdir()
  local out, err = dir .. "/cli.out", dir .. "/cli.err"
  local input = "/dev/null"
  if stdin then input = helpers.write_file(dir .. "/cli.in", stdin) end
  local cmd = ("%s %s <%s >%s 2>%s; echo $?"):format(bin(), args, quote(input), quote(out), quote(err))
  local _, code
  if ns then
    _, code = ns:exec(cmd)
  else
    _, code = helpers.sh(cmd)
  end
  return tonumber(code:match("%d+")), helpers.read_file(out) or "", helpers.read_file(err) or ""
end

local function socket_exists(ifname)
  return (helpers.sh("test -S /var/run/wireguard/" .. ifname .. ".sock"))
end

local function link_exists(ns, ifname)
  return (ns:exec("ip link show dev " .. ifname))
end

describe("bin/wgoverlay #netns", function()
  describe("genkey and pubkey", function()
    it("agree with wg genkey and wg pubkey", helpers.guard(function()
      for _ = 1, 3 do
        local code, priv = wgoverlay(nil, "genkey")
        assert.equal(0, code)
        priv = priv:gsub("%s+$", "")
        local c2, pub = wgoverlay(nil, "pubkey", priv .. "\n")
        assert.equal(0, c2)
        assert.equal(helpers.must("echo " .. quote(priv) .. " | wg pubkey"), pub)
      end
      local wpriv, wpub = helpers.genkey()
      local code, pub = wgoverlay(nil, "pubkey", wpriv .. "\n")
      assert.equal(0, code)
      assert.equal(wpub .. "\n", pub)
      -- and the pipe of the issue, verbatim
      local out = helpers.must(bin() .. " genkey | " .. bin() .. " pubkey")
      assert.matches("^[A-Za-z0-9+/]+=\n$", out)
    end))
  end)

  describe("up, status, down", function()
    local A, B

    lazy_setup(function()
      assert(helpers.is_root, "integration specs need root")
      A = { ns = helpers.netns.new("a"), ifname = helpers.ifname("wt"), port = 51101,
            under = "192.0.2.1", over = "10.78.0.1", over6 = "fd78::1" }
      B = { ns = helpers.netns.new("b"), ifname = helpers.ifname("wt"), port = 51102,
            under = "192.0.2.2", over = "10.78.0.2", over6 = "fd78::2" }
      helpers.netns.veth(A.ns, B.ns, { a = { A.under .. "/24" }, b = { B.under .. "/24" } })
      A.priv, A.pub = helpers.genkey()
      B.priv, B.pub = helpers.genkey()
      local psk = helpers.genpsk()
      for _, pair in ipairs({ { A, B, true }, { B, A, false } }) do
        local me, other, dial = pair[1], pair[2], pair[3]
        me.conf = helpers.write_file(("%s/%s.conf"):format(helpers.tmpdir(), me.ifname), table.concat({
          "# written by spec/integration/cli_spec.lua",
          "[Interface]",
          "PrivateKey = " .. me.priv,
          "ListenPort = " .. me.port,
          "Address = " .. me.over .. "/24, " .. me.over6 .. "/64",
          "MTU = 1400",
          "",
          "[Peer]",
          "PublicKey = " .. other.pub,
          "PresharedKey = " .. psk,
          dial and ("Endpoint = %s:%d"):format(other.under, other.port) or "# no endpoint: learnt",
          ("AllowedIPs = %s/32, %s/128"):format(other.over, other.over6),
          dial and "PersistentKeepalive = 25" or "",
        }, "\n") .. "\n")
      end
    end)

    lazy_teardown(function()
      -- `down` first (the engines run detached); cleanup() kills whatever
      -- is left in our namespaces anyway.
      for _, n in ipairs({ A, B }) do
        if n and n.conf and socket_exists(n.ifname) then pcall(wgoverlay, n.ns, "down " .. quote(n.conf)) end
      end
      helpers.cleanup()
    end)

    it("up FILE brings up an interface that handshakes with its peer", helpers.guard(function()
      for _, n in ipairs({ A, B }) do
        local code, out, err = wgoverlay(n.ns, "up " .. quote(n.conf))
        assert.equal(0, code, err)
        n.pid = tonumber(out:match("^interface " .. n.ifname .. " up %(engine pid (%d+)%)\n$"))
        assert.truthy(n.pid, "unexpected output: " .. out)
        assert.truthy(socket_exists(n.ifname))
        -- the pid file names the engine
        assert.equal(tostring(n.pid), (helpers.read_file("/var/run/wireguard/" .. n.ifname .. ".pid") or ""):gsub("%s+$", ""))
      end
      local link = helpers.ip_json(A.ns, "link show dev " .. A.ifname)[1]
      assert.equal(1400, link.mtu)
      local addrs = A.ns:must("ip addr show dev " .. A.ifname)
      assert.truthy(addrs:find("inet 10.78.0.1/24", 1, true))
      assert.truthy(addrs:find("inet6 fd78::1/64", 1, true))
      assert(helpers.wait_ping(A, B.over, 10), "no ping across the tunnel brought up by `up`")
      assert.is_true(B.ns:ping(A.over6, 2))
      assert.truthy(helpers.latest_handshake(A.ns, A.ifname, B.pub) > 0)
      -- wg sees the preshared key and keepalive from the file
      local dump = helpers.wg_dump(A.ns, A.ifname)
      assert.equal("25", dump.peers[B.pub].keepalive)
      assert.not_equal("(none)", dump.peers[B.pub].preshared_key)
    end))

    it("status IFNAME prints a readable table", helpers.guard(function()
      assert(helpers.wait_ping(A, B.over, 10))
      local code, out, err = wgoverlay(A.ns, "status " .. A.ifname)
      assert.equal(0, code, err)
      assert.truthy(out:find("interface: " .. A.ifname .. "\n", 1, true), out)
      assert.truthy(out:find("public key: " .. A.pub, 1, true), out)
      assert.truthy(out:find("listening port: 51101", 1, true), out)
      assert.matches("PEER%s+ENDPOINT%s+HANDSHAKE%s+RECEIVED%s+SENT%s+ALLOWED IPS", out)
      local row = out:match("\n  (" .. B.pub:sub(1, 12):gsub("%p", "%%%0") .. "[^\n]*)")
      assert.truthy(row, "no row for the peer in:\n" .. out)
      assert.truthy(row:find("192.0.2.2:51102", 1, true), row)
      assert.matches("%d+s ago", row)
      assert.matches("%d[%d.]* [KMG]?i?B", row)
      assert.truthy(row:find("10.78.0.2/32", 1, true), row)
      assert.is_nil(out:find(A.priv, 1, true))
      -- B learnt A's endpoint
      local _, outb = wgoverlay(B.ns, "status " .. B.ifname)
      assert.truthy(outb:find("192.0.2.1:51101", 1, true), outb)
    end))

    it("status --json parses and has the documented fields", helpers.guard(function()
      assert(helpers.wait_ping(A, B.over, 10))
      local code, out, err = wgoverlay(A.ns, "status --json " .. A.ifname)
      assert.equal(0, code, err)
      local st = cjson.decode(out)
      assert.equal(A.ifname, st.interface)
      assert.equal(A.pub, st.public_key)
      assert.equal(51101, st.listen_port)
      assert.equal(1, #st.peers)
      local p = st.peers[1]
      assert.equal(B.pub, p.public_key)
      assert.equal("192.0.2.2:51102", p.endpoint)
      assert.truthy(math.abs(p.last_handshake - os.time()) < 180, "last_handshake is not a recent epoch time")
      assert.truthy(p.rx_bytes > 0 and p.tx_bytes > 0)
      assert.equal(25, p.persistent_keepalive)
      table.sort(p.allowed_ips)
      assert.same({ "10.78.0.2/32", "fd78::2/128" }, p.allowed_ips)
      assert.is_nil(out:find(A.priv, 1, true))
      assert.is_nil(out:find("private", 1, true))
    end))

    it("status without a name lists every interface (ours among them)", helpers.guard(function()
      local code, out, err = wgoverlay(A.ns, "status --json")
      assert.equal(0, code, err)
      local list = cjson.decode(out)
      local seen = {}
      for _, st in ipairs(list) do seen[st.interface] = st end
      assert.truthy(seen[A.ifname], "missing " .. A.ifname)
      assert.truthy(seen[B.ifname], "missing " .. B.ifname)
      assert.equal(B.pub, seen[A.ifname].peers[1].public_key)
      code, out = wgoverlay(A.ns, "status")
      assert.equal(0, code)
      assert.truthy(out:find("interface: " .. A.ifname, 1, true))
      assert.truthy(out:find("interface: " .. B.ifname, 1, true))
    end))

    it("up refuses an interface that is already up, and leaves it alone", helpers.guard(function()
      local code, out, err = wgoverlay(A.ns, "up " .. quote(A.conf))
      assert.equal(1, code)
      assert.equal("", out)
      assert.truthy(err:find("already run by another process", 1, true), err)
      assert.truthy(A.ns:ping(B.over, 1))
    end))

    it("up does not keep the caller's output open (it can run inside $(...))", helpers.guard(function()
      -- A config for a third interface whose engine must detach fully.
      local name = helpers.ifname("wt")
      local priv = helpers.genkey()
      local conf = helpers.write_file(("%s/%s.conf"):format(helpers.tmpdir(), name),
        "[Interface]\nPrivateKey = " .. priv .. "\nListenPort = 51103\nAddress = 10.78.9.1/24\n")
      local ok, out = A.ns:exec(("timeout 10 sh -c %s; echo rc=$?"):format(
        quote("x=$(" .. bin() .. " up " .. quote(conf) .. "); echo \"$x\"")))
      local rc = tonumber(out:match("rc=(%d+)"))
      wgoverlay(A.ns, "down " .. quote(conf))
      assert.truthy(ok or rc)
      assert.are_not.equal(124, rc,
        "`x=$(wgoverlay up FILE)` hung: the engine process keeps the caller's stdout/stderr " ..
        "(core.daemonize redirects only stdin to /dev/null)")
      assert.equal(0, rc)
      assert.truthy(out:find("interface " .. name .. " up", 1, true), out)
    end))

    it("down FILE removes the interface, its socket, pid file and engine", helpers.guard(function()
      for _, n in ipairs({ A, B }) do
        local code, out, err = wgoverlay(n.ns, "down " .. quote(n.conf))
        assert.equal(0, code, err)
        assert.equal("", out)
        -- gone when down returns, not some time later
        assert.is_false(link_exists(n.ns, n.ifname))
        assert.is_false(socket_exists(n.ifname))
        assert.is_nil(helpers.read_file("/var/run/wireguard/" .. n.ifname .. ".pid"))
        -- exited (a zombie waiting for an init that may not reap counts)
        local stat = helpers.read_file("/proc/" .. n.pid .. "/stat")
        assert.truthy(stat == nil or stat:match("^%d+ %b() ([ZX])"), "engine still running: " .. tostring(stat))
      end
      assert.is_false(A.ns:ping(B.over, 1))
      local code, _, err = wgoverlay(A.ns, "down " .. quote(A.conf))
      assert.equal(1, code)
      assert.truthy(err:find("is not up", 1, true), err)
    end))

    it("up with a malformed file reports file:line and creates nothing", helpers.guard(function()
      local name = helpers.ifname("wt")
      local conf = helpers.write_file(("%s/%s.conf"):format(helpers.tmpdir(), name),
        "[Interface]\nPrivateKey = " .. A.priv .. "\nAddress = 10.78.0.1/24\nDNS = 192.0.2.53\n")
      local code, out, err = wgoverlay(A.ns, "up " .. quote(conf))
      assert.equal(1, code)
      assert.equal("", out)
      assert.equal(("wgoverlay: %s:4: DNS is not supported by wgoverlay (wg-quick only)\n"):format(conf), err)
      assert.is_false(link_exists(A.ns, name))
      assert.is_false(socket_exists(name))
    end))

    it("up with an unusable port fails in the engine and says why", helpers.guard(function()
      local name = helpers.ifname("wt")
      A.ns:spawn("socat -u UDP4-RECV:51199 /dev/null", { name = "socat-port" })
      assert(helpers.wait_until(function()
        local _, o = A.ns:exec("ss -Hlun 'sport = :51199'")
        return o:find("51199", 1, true)
      end, 5))
      local conf = helpers.write_file(("%s/%s.conf"):format(helpers.tmpdir(), name),
        "[Interface]\nPrivateKey = " .. A.priv .. "\nListenPort = 51199\n")
      local code, _, err = wgoverlay(A.ns, "up " .. quote(conf))
      assert.equal(1, code)
      assert.truthy(err:find("cannot listen on UDP port 51199", 1, true), err)
      assert.is_false(link_exists(A.ns, name))
      assert.is_false(socket_exists(name))
    end))
  end)

  describe("interface IFNAME", function()
    lazy_teardown(helpers.cleanup)

    it("runs an engine that wg configures, until SIGTERM removes it", helpers.guard(function()
      local ns = helpers.netns.new("i")
      local name = helpers.ifname("wt")
      local proc = ns:spawn("lua5.4 bin/wgoverlay interface " .. name,
        { env = helpers.lua_env(), cwd = helpers.root, name = "iface" })
      proc.impl = "ours"
      assert(helpers.wait_until(function() return socket_exists(name) end, 10), proc:log())
      local priv, pub = helpers.genkey()
      helpers.wg_set_interface(ns, name, { private_key = priv, listen_port = 51201 })
      assert.equal(pub, helpers.wg(ns, "show " .. name .. " public-key"):gsub("%s+$", ""))
      local code, out = wgoverlay(ns, "status --json " .. name)
      assert.equal(0, code)
      assert.equal(51201, cjson.decode(out).listen_port)
      proc:signal("TERM")
      assert.equal(0, proc:wait(5))
      assert.is_false(socket_exists(name))
      assert.is_false(link_exists(ns, name))
      assert.truthy(proc:log():find("SIGTERM: interface " .. name .. " removed", 1, true), proc:log())
    end))

    it("without CAP_NET_ADMIN says permission denied", helpers.guard(function()
      local ns = helpers.netns.new("i")
      local name = helpers.ifname("wt")
      local ok, out, err = ns:exec(helpers.lua_env_prefix() ..
        "setpriv --reuid=nobody --regid=nogroup --clear-groups lua5.4 " .. quote(helpers.root .. "/bin/wgoverlay")
        .. " interface " .. name .. " </dev/null; echo rc=$?")
      assert.truthy(ok, err)
      assert.equal("1", out:match("rc=(%d+)"))
      assert.truthy(err:find("permission denied: needs CAP_NET_ADMIN", 1, true), err)
      assert.is_false(socket_exists(name))
      assert.is_false(link_exists(ns, name))
    end))
  end)
end)
