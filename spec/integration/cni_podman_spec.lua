-- Containers through CNI with the real podman (Debian's podman 4.3, CNI
-- backend, runc, containers from a busybox --rootfs, no image pulls) on
-- two nodes of a cluster in network namespaces: a conflist with our
-- plugin chained with the reference portmap plugin.
--
--   node 1 "cn1" 192.0.2.1 (leader): container web (egress on), port 8080 -> 80
--   node 2 "cn2" 192.0.2.2:          container db
--
-- Checked: web and db ping each other by name (resolv.conf from the CNI
-- result's dns), their interface MTU is the overlay MTU (derived from the
-- underlay: 1500 - 60), a 1,400-byte UDP datagram with DF set crosses,
-- `podman rm` removes the name from DNS on both nodes within 5 s and frees
-- the address, web reaches the node's underlay network (egress) and db
-- does not, a published port on node 1 reaches web.
local helpers = require "spec.helpers"
local fixture = require "spec.cluster_fixture"
local cjson = require "cjson"

local quote = helpers.quote
local wait_until = helpers.wait_until

describe("CNI plugin with podman #netns", function()
  local cl, n1, n2
  local pods = {} -- node -> podman settings

  local function podman(node, args)
    local p = pods[node.name]
    return helpers.sh(("CONTAINERS_CONF=%s nsenter --net=/var/run/netns/%s podman --root %s --runroot %s "
      .. "--runtime runc --cgroup-manager cgroupfs --events-backend file %s"):format(quote(p.conf),
      quote(node.ns.name), quote(p.root), quote(p.runroot), args))
  end

  local function must_podman(node, args)
    local ok, out, err = podman(node, args)
    assert(ok, ("podman %s failed:\n%s%s"):format(args, out, err))
    return out
  end

  -- a container from the busybox root, running until removed
  local function run(node, name, extra)
    return must_podman(node, ("run -d --name %s --network wgo --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 "
      .. "%s --rootfs %s /bin/sleep 300"):format(name, extra or "", quote(pods.rootfs)))
  end

  local function exec(node, name, cmd)
    return podman(node, ("exec %s /bin/sh -c %s"):format(name, quote(cmd)))
  end

  local function names(node)
    local t = {}
    for _, c in ipairs(assert(cl:status(node)).containers) do t[c.name] = c.ip end
    return t
  end

  local function dig(node, name)
    local _, out = node.ns:exec(("dig +short +time=1 +tries=1 @%s %s A"):format(node.ip, fixture.fqdn(name)))
    return (out:gsub("%s+$", ""))
  end

  setup(function()
    assert(helpers.is_root, "needs root")
    cl = fixture.new()
    n1 = cl:leader("cn1", "192.0.2.1")
    n2 = cl:node("cn2", "192.0.2.2")
    cl:start(n1)
    cl:join(n2, cl:token(n1, 1))
    cl:start(n2)
    local dir = helpers.tmpdir()
    -- busybox root
    pods.rootfs = dir .. "/rootfs"
    helpers.must(("mkdir -p %s/bin %s/etc %s/tmp && cp /bin/busybox %s/bin/ && for a in sh ip ping nc nslookup "
      .. "sleep cat ifconfig wget httpd echo; do ln -sf busybox %s/bin/$a; done"):format(pods.rootfs, pods.rootfs,
      pods.rootfs, pods.rootfs, pods.rootfs))
    -- the plugin directory: a thin entry that starts bin/wgoverlay-cni
    -- with this run's Lua paths (and the sanitizer build's runtime)
    local bin = dir .. "/cni-bin"
    helpers.must("mkdir -p " .. quote(bin))
    helpers.write_file(bin .. "/wgoverlay", ("#!/bin/sh\nexec %slua5.4 %s/bin/wgoverlay-cni \"$@\"\n"):format(
      helpers.lua_env_prefix(), helpers.root), "755")
    for _, node in ipairs({ n1, n2 }) do
      local p = { root = dir .. "/pod-root-" .. node.name, runroot = dir .. "/pod-run-" .. node.name,
                  net = dir .. "/net.d-" .. node.name, conf = dir .. "/containers-" .. node.name .. ".conf" }
      helpers.must("mkdir -p " .. quote(p.net))
      helpers.write_file(p.net .. "/wgo.conflist", cjson.encode({
        cniVersion = "1.0.0", name = "wgo",
        plugins = { { type = "wgoverlay", state = node.dir, egress = node == n1 },
                    { type = "portmap", capabilities = { portMappings = true } } } }), "644")
      helpers.write_file(p.conf, ("[network]\nnetwork_backend = \"cni\"\nnetwork_config_dir = %q\n"
        .. "cni_plugin_dirs = [\"/usr/lib/cni\", %q]\n"):format(p.net, bin), "644")
      pods[node.name] = p
    end
    cl:wait_health(n1, { "cn2" }, true, 30)
    cl:wait_health(n2, { "cn1" }, true, 30)
  end)

  teardown(function()
    for _, node in ipairs({ n1, n2 }) do
      if node and pods[node.name] then
        pcall(podman, node, "rm -f -t 0 -a")
        helpers.sh("umount -R " .. quote(pods[node.name].root) .. " 2>/dev/null")
      end
    end
    if cl then cl:teardown() end
  end)

  it("web and db by name across nodes, MTU, DF, egress, portmap, rm", helpers.guard(function()
    run(n1, "web", "-p 8080:80")
    run(n2, "db")
    -- both names on both nodes
    assert(wait_until(function() return names(n1).web and dig(n2, "web") ~= "" and dig(n1, "db") ~= "" end, 10))
    local web_ip, db_ip = names(n1).web, names(n2).db
    assert.equal(web_ip, dig(n2, "web"))
    -- resolv.conf from the CNI result: the node's overlay address, search overlay.internal
    local _, rc = exec(n1, "web", "cat /etc/resolv.conf")
    assert.matches("nameserver " .. n1.ip:gsub("%.", "%%."), rc)
    assert.matches("search.*overlay%.internal", rc)
    -- by name, both ways
    local ok, out, err = exec(n1, "web", "ping -4 -c 2 -W 2 db")
    assert(ok, out .. err)
    assert.matches(db_ip:gsub("%.", "%%."), out)
    ok, out, err = exec(n2, "db", "ping -c 2 -W 2 web") -- (IPv6 first: AAAA)
    assert(ok, out .. err)
    -- the overlay MTU, derived from the underlay (veth 1500, IPv4: less 60)
    local ovl = tonumber(n1.ns:must("ip link show " .. n1.ifname):match("mtu (%d+)"))
    assert.equal(1440, ovl)
    for _, c in ipairs({ { n1, "web" }, { n2, "db" } }) do
      local _, o = exec(c[1], c[2], "ip link show eth0")
      assert.equal(ovl, tonumber(o:match("mtu (%d+)")), o)
    end
    -- a 1,400-byte UDP datagram with DF set (IP_PMTUDISC_DO) crosses
    local _, dbpid = podman(n2, "inspect -f '{{.State.Pid}}' db")
    local _, webpid = podman(n1, "inspect -f '{{.State.Pid}}' web")
    dbpid, webpid = dbpid:match("%d+"), webpid:match("%d+")
    local got = helpers.tmpdir() .. "/udp-got"
    helpers.must(("nsenter --net=/proc/%s/ns/net socat -u UDP-RECV:9999 OPEN:%s,creat,trunc </dev/null >/dev/null "
      .. "2>&1 & echo $! > %s.pid"):format(dbpid, quote(got), quote(got)))
    helpers.sleep(0.3)
    helpers.must(("head -c 1400 /dev/zero | tr '\\0' x | nsenter --net=/proc/%s/ns/net socat -u -b 2000 - "
      .. "UDP-SENDTO:%s:9999,mtudiscover=2"):format(webpid, db_ip))
    local size = wait_until(function()
      local s = helpers.read_file(got)
      return s and #s == 1400 and #s
    end, 5)
    helpers.sh("kill $(cat " .. quote(got) .. ".pid) 2>/dev/null")
    assert.equal(1400, size)
    -- egress: web (egress on) reaches node 2's underlay address, db (off) not
    ok, out, err = exec(n1, "web", "ping -c 1 -W 2 " .. n2.under)
    assert(ok, out .. err)
    assert.is_false((exec(n2, "db", "ping -c 1 -W 1 " .. n1.under)))
    -- portmap: node 1's published port 8080 reaches web's port 80
    exec(n1, "web", "mkdir -p /www && echo hello-from-web > /www/index.html && httpd -p 80 -h /www")
    local page = wait_until(function()
      local _, o = n2.ns:exec(("wget -q -O - -T 2 http://%s:8080/ 2>/dev/null || curl -s -m 2 http://%s:8080/"):format(
        n1.under, n1.under))
      return o:match("hello%-from%-web")
    end, 10, 0.3)
    assert.truthy(page)
    -- podman rm: the name leaves DNS on every node within 5 s, the address is freed
    local t0 = helpers.now()
    must_podman(n2, "rm -f -t 0 db")
    assert(wait_until(function() return dig(n1, "db") == "" and dig(n2, "db") == "" end, 5, 0.1))
    assert.is_true(helpers.now() - t0 <= 5)
    assert.is_nil(names(n2).db)
    -- the freed address goes to the next container
    run(n2, "db2")
    assert(wait_until(function() return names(n2).db2 end, 5))
    assert.equal(db_ip, names(n2).db2)
  end))
end)
