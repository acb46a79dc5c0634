-- The CNI plugin (bin/wgoverlay-cni, lua/wgoverlay/cni.lua) driven as the
-- CNI specification describes: the network configuration on stdin,
-- CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS, CNI_PATH
-- in the environment, the result or the error object on stdout.
--
-- The first block needs nothing (VERSION, bad configurations, bad
-- environment, no state directory, no daemon).  The second (root, #netns)
-- runs a real leader daemon in a network namespace and attaches real
-- namespaces through the plugin: ADD, CHECK, DEL twice, CHECK after the
-- interface was deleted by hand, an exhausted slice, egress, prevResult.
local helpers = require "spec.helpers"
local cjson = require "cjson"

local quote = helpers.quote

-- Runs the plugin: exit code, decoded stdout (or the raw text), stderr.
local function plugin(env, input, ns)
  local dir = helpers.tmpdir()
  local inf = dir .. "/cni-in.json"
  helpers.write_file(inf, type(input) == "table" and cjson.encode(input) or (input or ""))
  local parts = {}
  for k, v in pairs(env) do if k ~= "_as" then parts[#parts + 1] = quote(k .. "=" .. v) end end
  table.sort(parts)
  local as = env._as and ("setpriv --reuid=%s --regid=nogroup --clear-groups "):format(env._as) or ""
  local cmd = ("cd %s && %senv -i PATH=/usr/sbin:/usr/bin:/sbin:/bin %s %s lua5.4 bin/wgoverlay-cni <%s; "
    .. "echo \"rc=$?\""):format(
    quote(helpers.root), as, helpers.lua_env_prefix():gsub("^env ", ""), table.concat(parts, " "), quote(inf))
  local _, out, err
  if ns then _, out, err = ns:exec(cmd) else _, out, err = helpers.sh(cmd) end
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  local body = out:gsub("rc=%d+%s*$", "")
  local ok, dec = pcall(cjson.decode, body)
  return rc, ok and dec or body, err
end

local function conf(extra)
  local c = { cniVersion = "1.0.0", name = "ovl", type = "wgoverlay", state = "/nonexistent/wgo-cni-spec" }
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end

local function env(cmd, extra)
  local e = { CNI_COMMAND = cmd, CNI_CONTAINERID = "c0ffee", CNI_IFNAME = "eth0", CNI_NETNS = "/nonexistent",
              CNI_PATH = "/usr/lib/cni" }
  for k, v in pairs(extra or {}) do e[k] = v end
  return e
end

local function assert_error(code, pattern, rc, out)
  assert.equal(1, rc)
  assert.is_table(out)
  assert.equal(code, out.code, cjson.encode(out))
  assert.equal("1.0.0", out.cniVersion)
  assert.is_string(out.msg)
  if pattern then assert.matches(pattern, out.msg) end
end

describe("cni plugin without a daemon", function()
  after_each(function() helpers.cleanup() end)

  it("takes policy labels from the configuration and CNI_ARGS WGO_LABELS (which wins)", function()
    local cni = require "wgoverlay.cni"
    assert.same({ app = "web", tier = "front" },
      cni.labels({ labels = { app = "db", tier = "front" } }, cni.parse_args("WGO_LABELS=app=web;WGO_NAME=x")))
    assert.same({ app = "web", ["example.com/team"] = "a" }, cni.labels({}, cni.parse_args("WGO_LABELS=app=web,example.com/team=a")))
    assert.is_nil(cni.labels({}, {}))
    local ok, e = pcall(cni.labels, { labels = { ["bad key"] = "x" } }, {})
    assert.is_false(ok)
    assert.equal(7, e.code)
    assert.matches("bad key", e.msg)
    ok, e = pcall(cni.labels, {}, cni.parse_args("WGO_LABELS=novalue"))
    assert.is_false(ok)
    assert.equal(4, e.code)
    assert.matches("WGO_LABELS", e.msg)
  end)

  it("VERSION lists the supported versions", function()
    local rc, out = plugin({ CNI_COMMAND = "VERSION" }, { cniVersion = "1.0.0" })
    assert.equal(0, rc)
    assert.same({ cniVersion = "1.0.0", supportedVersions = { "0.4.0", "1.0.0" } }, out)
  end)

  it("refuses what it cannot parse or does not support, with the spec's codes", function()
    assert_error(6, "not valid JSON", plugin(env("ADD"), "{not json"))
    assert_error(1, "0.1.0 is not supported", plugin(env("ADD"), conf({ cniVersion = "0.1.0" })))
    -- the error object keeps the configuration's version when it is ours
    local rc, out = plugin(env("ADD"), conf({ cniVersion = "0.4.0", egress = "yes" }))
    assert.equal(1, rc)
    assert.equal("0.4.0", out.cniVersion)
    assert.equal(7, out.code)
    assert.matches("\"egress\" must be true or false", out.msg)
    assert_error(7, "key \"stat\" unknown: wgoverlay takes", plugin(env("ADD"), conf({ stat = "/var/lib/wgo" })))
    assert_error(7, "absolute path", plugin(env("ADD"), conf({ state = "relative/dir" })))
    assert_error(7, "\"state\"", plugin(env("ADD"), conf({ state = cjson.null })))
    assert_error(7, "\"mtu\" must be an integer 576..65535", plugin(env("ADD"), conf({ mtu = 100 })))
    assert_error(7, "\"mtu\"", plugin(env("ADD"), conf({ mtu = 1400.5 })))
    assert_error(7, "\"name\"", plugin(env("ADD"), conf({ name = "" })))
    assert_error(7, "\"dnsName\"", plugin(env("ADD"), conf({ dnsName = "---" })))
  end)

  it("refuses a bad environment with code 4", function()
    assert_error(4, "CNI_COMMAND \"FROB\" invalid", plugin(env("FROB"), conf()))
    assert_error(4, "CNI_CONTAINERID missing", plugin(env("ADD", { CNI_CONTAINERID = "" }), conf()))
    assert_error(4, "CNI_CONTAINERID", plugin(env("ADD", { CNI_CONTAINERID = "-bad/id" }), conf()))
    assert_error(4, "CNI_IFNAME", plugin(env("ADD", { CNI_IFNAME = "much-too-long-name0" }), conf()))
    assert_error(4, "CNI_ARGS", plugin(env("ADD", { CNI_ARGS = "novalue" }), conf()))
    local e = env("ADD")
    e.CNI_NETNS = nil
    local dir = helpers.tmpdir()
    assert_error(4, "CNI_NETNS missing", plugin(e, conf({ state = dir })))
  end)

  it("says what to fix when the node is not there", function()
    -- no state directory: ADD names the key to fix; DEL has nothing to undo
    assert_error(7, "state directory /nonexistent/wgo%-cni%-spec does not exist", plugin(env("ADD"), conf()))
    local rc, out = plugin(env("DEL"), conf())
    assert.equal(0, rc)
    assert.equal("", out)
    -- a state directory but no daemon: try again later, and how to start it
    local dir = helpers.tmpdir()
    assert_error(11, "no wgoverlay daemon runs for .*wgoverlay run %-%-state",
      plugin(env("ADD"), conf({ state = dir })))
    assert_error(11, "no wgoverlay daemon runs", plugin(env("DEL"), conf({ state = dir })))
    -- a state directory the plugin cannot read (0700, not ours): run as root
    if helpers.is_root then
      helpers.must("chmod 755 " .. quote(helpers.tmpdir()) .. " && mkdir -m 700 " .. quote(dir .. "/locked"))
      assert_error(5, "unreadable %(permission denied%)", plugin(env("ADD", { _as = "nobody" }),
        conf({ state = dir .. "/locked" })))
    end
  end)

  it("builds results the spec's way and chains after prevResult", function()
    local cni = require "wgoverlay.cni"
    local d = { host_if = "wgc01020304", host_mac = "02:00:00:00:00:01", ifname = "eth0", mac = "02:00:00:00:00:02",
                netns = "/run/netns/x", ip = "10.200.0.2", ip6 = "fd00:200::2", gateway4 = "169.254.1.1",
                gateway6 = "fe80::1", cluster4 = "10.200.0.0/16", cluster6 = "fd00:200::/48", egress = true,
                dns = { nameservers = { "10.200.0.1" }, domain = "overlay.internal" } }
    local prev = { cniVersion = "1.0.0", interfaces = { { name = "lo0" } }, ips = { { address = "192.0.2.9/24",
                   interface = 0 } }, routes = {} }
    local r = cni.result("1.0.0", d, prev)
    assert.equal(3, #r.interfaces)
    assert.same({ name = "eth0", mac = "02:00:00:00:00:02", sandbox = "/run/netns/x" }, r.interfaces[3])
    assert.same({ address = "10.200.0.2/32", gateway = "169.254.1.1", interface = 2 }, r.ips[2])
    assert.same({ address = "fd00:200::2/128", gateway = "fe80::1", interface = 2 }, r.ips[3])
    assert.same({ dst = "0.0.0.0/0", gw = "169.254.1.1" }, r.routes[3])
    assert.same({ nameservers = { "10.200.0.1" }, domain = "overlay.internal", search = { "overlay.internal" } },
      r.dns)
    assert.equal("4", cni.result("0.4.0", d).ips[1].version)
    -- names: CNI_ARGS first, then the configuration, then the short ID
    assert.equal("web-1", cni.container_name({ K8S_POD_NAME = "Web_1" }, {}, "abc"))
    assert.equal("db", cni.container_name({ WGO_NAME = "db", K8S_POD_NAME = "x" }, {}, "abc"))
    assert.equal("api", cni.container_name({}, { dnsName = "api" }, "abc"))
    assert.equal(("0123456789ab"), cni.container_name({}, {}, ("0123456789ab"):rep(5)))
  end)
end)

describe("cni plugin against a daemon #netns", function()
  local fixture = require "spec.cluster_fixture"
  local cl, L

  setup(function()
    assert(helpers.is_root, "needs root")
    cl = fixture.new()
    L = cl:leader("cnil", "192.0.2.1")
    cl:start(L)
  end)

  teardown(function() if cl then cl:teardown() end end)

  local function nsenv(cmd, ns, id, extra)
    local e = env(cmd, { CNI_CONTAINERID = id, CNI_NETNS = "/var/run/netns/" .. ns.name })
    for k, v in pairs(extra or {}) do e[k] = v end
    return e
  end

  local function names(st)
    local t = {}
    for _, c in ipairs(st.containers) do t[c.name] = c.ip end
    return t
  end

  it("ADD, CHECK, DEL twice; CHECK after the interface was deleted by hand", helpers.guard(function()
    local c = conf({ state = L.dir })
    local ns = helpers.netns.new("cniu")
    local rc, out, err = plugin(nsenv("ADD", ns, "ctr1", { CNI_ARGS = "IgnoreUnknown=1;K8S_POD_NAME=web" }), c, L.ns)
    assert.equal(0, rc, cjson.encode(out) .. err)
    assert.equal("1.0.0", out.cniVersion)
    local ip = out.ips[1].address:match("^(.*)/32$")
    assert.truthy(ip)
    assert.equal("169.254.1.1", out.ips[1].gateway)
    assert.equal("eth0", out.interfaces[out.ips[1].interface + 1].name)
    assert.equal("/var/run/netns/" .. ns.name, out.interfaces[out.ips[1].interface + 1].sandbox)
    assert.matches("^%x%x:%x%x:%x%x:%x%x:%x%x:%x%x$", out.interfaces[2].mac)
    assert.same({ L.ip, L.ip6 }, out.dns.nameservers)
    assert.equal("overlay.internal", out.dns.domain)
    -- the interface is there, with the address and the overlay MTU
    assert.matches(ip .. "/32", ns:must("ip -4 addr show dev eth0"))
    local mtu = tonumber(ns:must("cat /sys/class/net/eth0/mtu 2>/dev/null || ip link show eth0"):match("(%d+)"))
    local ifmtu = tonumber(L.ns:must("ip link show " .. L.ifname):match("mtu (%d+)"))
    assert.equal(ifmtu, tonumber(ns:must("ip link show eth0"):match("mtu (%d+)")))
    assert.truthy(mtu)
    assert.equal(ip, names(assert(cl:status(L))).web)
    -- DNS on the node answers the name
    local dig = L.ns:must(("dig +short +time=1 +tries=2 @%s web.overlay.internal A"):format(L.ip))
    assert.matches(ip, dig, 1, true)
    -- CHECK with the result as prevResult
    c.prevResult = out
    rc, out = plugin(nsenv("CHECK", ns, "ctr1"), c, L.ns)
    assert.equal(0, rc, cjson.encode(out))
    -- a second ADD of the same container and interface is refused
    local c2 = conf({ state = L.dir })
    assert_error(102, "already attached", plugin(nsenv("ADD", ns, "ctr1"), c2, L.ns))
    -- someone deletes the interface by hand: CHECK says so
    ns:must("ip link del eth0")
    assert_error(103, "gone", plugin(nsenv("CHECK", ns, "ctr1"), c, L.ns))
    -- DEL frees the address and the name; DEL again is still success
    c.prevResult = nil
    rc, out = plugin(nsenv("DEL", ns, "ctr1"), c, L.ns)
    assert.equal(0, rc, cjson.encode(out))
    assert.is_nil(names(assert(cl:status(L))).web)
    rc = plugin(nsenv("DEL", ns, "ctr1"), c, L.ns)
    assert.equal(0, rc)
    -- DEL of a namespace that is gone
    rc = plugin(env("DEL", { CNI_CONTAINERID = "never-added", CNI_NETNS = "/var/run/netns/gone" }), c, L.ns)
    assert.equal(0, rc)
    -- the freed address is handed out again
    rc, out = plugin(nsenv("ADD", ns, "ctr2"), c, L.ns)
    assert.equal(0, rc, cjson.encode(out))
    assert.equal(ip .. "/32", out.ips[1].address)
    assert.equal(ip, names(assert(cl:status(L))).ctr2) -- no name passed: the (short) container ID
    assert.equal(0, (plugin(nsenv("DEL", ns, "ctr2"), c, L.ns)))
    -- ADD into a namespace that does not exist
    assert_error(3,
      "does not exist", plugin(env("ADD", { CNI_NETNS = "/var/run/netns/wgo-none-" .. helpers.PID }), c, L.ns))
  end))

  it("egress: a default route and our nftables table while an egress container is attached",
    helpers.guard(function()
    local c = conf({ state = L.dir, egress = true })
    local ns = helpers.netns.new("cnie")
    local rc, out = plugin(nsenv("ADD", ns, "egr1"), c, L.ns)
    assert.equal(0, rc, cjson.encode(out))
    local found = false
    for _, r in ipairs(out.routes) do if r.dst == "0.0.0.0/0" then found = true end end
    assert.is_true(found)
    assert.matches("default via 169.254.1.1", ns:must("ip -4 route"))
    assert.matches("masquerade", L.ns:must("nft list table inet wgoverlay"))
    c.prevResult = out
    assert.equal(0, (plugin(nsenv("CHECK", ns, "egr1"), c, L.ns)))
    c.prevResult = nil
    assert.equal(0, (plugin(nsenv("DEL", ns, "egr1"), c, L.ns)))
    -- the last egress container gone: the table is gone
    assert.is_false((L.ns:exec("nft list table inet wgoverlay")))
  end))

  it("an exhausted slice is refused with code 101 and a clear message", helpers.guard(function()
    local c = conf({ state = L.dir })
    local spaces, ids = {}, {}
    local code, out
    for i = 1, 14 do
      local ns = helpers.netns.new("cnix")
      local id = "fill" .. i
      code, out = plugin(nsenv("ADD", ns, id), c, L.ns)
      if code ~= 0 then break end
      spaces[#spaces + 1], ids[#ids + 1] = ns, id
    end
    -- a /28 slice: the node has .1, .0 and .15 are not hosts: 13 containers
    assert.equal(13, #ids)
    assert_error(101, "exhausted", code, out)
    for i, id in ipairs(ids) do assert.equal(0, (plugin(nsenv("DEL", spaces[i], id), c, L.ns))) end
    assert.same({}, names(assert(cl:status(L))))
  end))

  it("attach --egress is the same implementation; the daemon's exit removes our table", helpers.guard(function()
    local ns = helpers.netns.new("cnia")
    local code, out, err = cl:cli(L.ns, ("attach --state %s %s --name cli-egress --egress"):format(quote(L.dir),
      ns.name))
    assert.equal(0, code, out .. err)
    assert.matches("default via 169.254.1.1", ns:must("ip -4 route"))
    local ifmtu = tonumber(L.ns:must("ip link show " .. L.ifname):match("mtu (%d+)"))
    assert.equal(ifmtu, tonumber(ns:must("ip link show ovl0"):match("mtu (%d+)")))
    assert.matches("masquerade", L.ns:must("nft list table inet wgoverlay"))
    cl:stop(L)
    assert.is_false((L.ns:exec("nft list table inet wgoverlay")))
  end))
end)
