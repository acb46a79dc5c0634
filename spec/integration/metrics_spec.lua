-- `--metrics IP:PORT`, scraped by the real Prometheus (Debian's 2.42):
--   * two nodes of a cluster (`wgoverlay run --metrics`), scraped every
--     second by a Prometheus in a namespace of its own on the same bridge;
--     PromQL queries through its HTTP API return the expected series
--     (peer health and bytes, members, registry, dropped packets);
--   * a scraped body passes `promtool check metrics`;
--   * a slow client (half a request, held open) and malformed requests do
--     not stop the endpoint: scrapes go on and the daemon stays up;
--   * `wgoverlay interface IFNAME --metrics` serves the engine's series
--     and stops cleanly on SIGTERM.
-- Needs root; every address lives in namespaces made here.

local helpers = require "spec.helpers"
local fixture = require "spec.cluster_fixture"
local cjson = require "cjson"

local quote = helpers.quote
local wait_until = helpers.wait_until

local METRICS_PORT = 9586
local PROM = "127.0.0.1:9090"

-- HTTP/1.0 GET from inside `ns` with socat: status, headers+body text.
local function http_get(ns, hostport, path)
  -- shut-none: no half-close after the request (Prometheus' server takes
  -- one for a client gone away and cancels the query)
  local ok, out = ns:exec(("printf 'GET %%s HTTP/1.0\\r\\nHost: %s\\r\\n\\r\\n' %s | socat -t 5 -T 5 - TCP:%s,shut-none")
    :format(hostport, quote(path), hostport))
  if not ok then return nil, out end
  return tonumber(out:match("^HTTP/1%.%d (%d%d%d)")), out
end

local function urlencode(s)
  return (s:gsub("[^%w%-_.~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

-- PromQL instant query through Prometheus' HTTP API: the result vector.
local function query(ns, q)
  local code, out = http_get(ns, PROM, "/api/v1/query?query=" .. urlencode(q))
  if code ~= 200 then return nil, out end
  local body = out:match("\r\n\r\n(.*)$")
  local r = cjson.decode(body)
  if r.status ~= "success" then return nil, body end
  return r.data.result
end

-- { [instance] = value } of a query's result, or nil until every instance
-- in `want` has a series.
local function by_instance(ns, q, want)
  local res = query(ns, q)
  if not res then return nil end
  local map = {}
  for _, s in ipairs(res) do map[s.metric.instance] = tonumber(s.value[2]) end
  for _, inst in ipairs(want) do if map[inst] == nil then return nil end end
  return map
end

describe("Prometheus metrics #netns", function()
  local cl

  after_each(function()
    if cl then cl:teardown() end
    cl = nil
  end)

  it("a real Prometheus scrapes two nodes; slow and malformed clients change nothing", helpers.guard(function()
    cl = fixture.new()
    local L = cl:leader("leader", "192.0.2.1")
    local A = cl:node("a", "192.0.2.2")
    local targets = {}
    for _, n in ipairs({ L, A }) do
      n.metrics = n.under .. ":" .. METRICS_PORT
      targets[#targets + 1] = n.metrics
    end
    cl:start(L, "--metrics " .. L.metrics)
    cl:join(A, cl:token(L, 1))
    cl:start(A, "--metrics " .. A.metrics)
    cl:wait_health(A, { "leader" }, true, 30)
    cl:wait_health(L, { "a" }, true, 30)

    -- Prometheus on its own host on the bridge
    local prom = cl:host("prom", "192.0.2.9")
    local dir = helpers.tmpdir()
    local cfg = dir .. "/prometheus.yml"
    helpers.write_file(cfg, ([[
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: wgoverlay
    static_configs:
      - targets: ["%s", "%s"]
]]):format(targets[1], targets[2]))
    local proc = prom:spawn(("prometheus --config.file=%s --storage.tsdb.path=%s --web.listen-address=%s"
      .. " --log.level=warn"):format(quote(cfg), quote(dir .. "/tsdb"), PROM), { name = "prometheus" })
    assert(wait_until(function()
      assert(proc:alive(), "prometheus exited:\n" .. proc:log())
      return http_get(prom, PROM, "/-/ready") == 200
    end, 30, 0.25), "prometheus did not become ready:\n" .. proc:log())

    -- both targets up, with the series the README lists
    local want = targets
    local up = wait_until(function() return by_instance(prom, 'up{job="wgoverlay"}', want) end, 30, 0.5)
    assert.is_truthy(up, "targets not scraped:\n" .. proc:log() .. "\n"
      .. select(2, http_get(prom, PROM, "/api/v1/targets")))
    assert.same({ [targets[1]] = 1, [targets[2]] = 1 }, up)
    local healthy = assert(wait_until(function()
      return by_instance(prom, "wgoverlay_peer_healthy", want)
    end, 15, 0.5))
    assert.same({ [targets[1]] = 1, [targets[2]] = 1 }, healthy)
    -- each node sees the other by name and key
    local res = assert(query(prom, 'wgoverlay_peer_healthy{name="a"}'))
    assert.equal(1, #res)
    assert.equal(targets[1], res[1].metric.instance)
    assert.equal(A.public_key, res[1].metric.public_key)
    assert.equal(L.ifname, res[1].metric.interface)
    assert.same({ [targets[1]] = 2, [targets[2]] = 2 },
      assert(by_instance(prom, "wgoverlay_cluster_members", want)))
    assert.same({ [targets[1]] = 1, [targets[2]] = 1 },
      assert(by_instance(prom, "wgoverlay_registry_connected", want)))
    assert.same({ [targets[1]] = 1, [targets[2]] = 1 },
      assert(by_instance(prom, 'wgoverlay_peer_connection{kind="direct"}', want)))
    -- traffic and handshakes were counted on both sides
    for _, q in ipairs({ "wgoverlay_peer_received_bytes_total", "wgoverlay_peer_sent_bytes_total",
                         "wgoverlay_handshakes_completed_total",
                         'sum by (instance) (wgoverlay_handshakes_sent_total)',
                         'sum by (instance) (wgoverlay_handshakes_received_total)',
                         "wgoverlay_peer_last_handshake_seconds", "wgoverlay_peer_health_rtt_seconds" }) do
      local m = assert(by_instance(prom, q, want), q)
      for inst, v in pairs(m) do assert.is_true(v > 0, q .. " on " .. inst) end
    end
    assert(by_instance(prom, 'wgoverlay_packets_dropped_total{reason="bad_mac"}', want))
    assert(by_instance(prom, "wgoverlay_relay_sent_bytes_total", want))

    -- promtool on a scraped body
    local code, out = http_get(prom, targets[1], "/metrics")
    assert.equal(200, code)
    assert.matches("\r\nContent%-Type: text/plain; version=0.0.4; charset=utf%-8\r\n", out)
    local body = out:match("\r\n\r\n(.*)$")
    helpers.write_file(dir .. "/scrape.txt", body)
    local ok, pout, perr = helpers.sh("promtool check metrics < " .. quote(dir .. "/scrape.txt"))
    assert(ok, "promtool check metrics:\n" .. pout .. perr)

    -- a slow client holds half a request open; malformed requests come in
    local slow = prom:spawn(("sh -c %s"):format(quote(("(printf 'GET /metr'; sleep 60) | socat - TCP:%s")
      :format(targets[1]))), { name = "slow-client" })
    for _, bad in ipairs({ "GARBAGE\\r\\n\\r\\n", "GET /metrics HTTP/7.0\\r\\n\\r\\n",
                           "POST /metrics HTTP/1.1\\r\\nContent-Length: 100000000\\r\\n\\r\\nxx",
                           "GET /metrics HTTP/1.1\\r\\nHost: x\\r\\nBad header\\r\\n\\r\\n" }) do
      prom:exec(("printf '%s' | socat -t 2 -T 2 - TCP:%s"):format(bad, targets[1]))
    end
    assert.equal(404, (http_get(prom, targets[1], "/")))
    assert.is_true(slow:alive())
    assert.equal(200, (http_get(prom, targets[1], "/metrics")))
    -- Prometheus keeps scraping it: a newer sample of the peer counters
    local t0 = os.time()
    assert(wait_until(function()
      local r = query(prom, ('timestamp(wgoverlay_peer_sent_bytes_total{instance="%s"})'):format(targets[1]))
      return r and r[1] and tonumber(r[1].value[2]) > t0 + 1
    end, 10, 0.5), "no newer scrape of the leader")
    assert.is_true(L.proc:alive())
    assert.is_true(A.proc:alive())
    cl:stop(A)
    cl:stop(L)
  end))

  it("`interface IFNAME --metrics` serves the engine's series and stops on SIGTERM", helpers.guard(function()
    local ns = helpers.netns.new("m")
    local ifname = helpers.ifname("wm")
    local listen = "127.0.0.1:" .. METRICS_PORT
    local proc = ns:spawn("lua5.4 bin/wgoverlay interface " .. ifname .. " --metrics " .. listen,
      { env = helpers.lua_env(), cwd = helpers.root, name = "iface-" .. ifname })
    local code, out
    assert(wait_until(function()
      assert(proc:alive(), "exited:\n" .. proc:log())
      code, out = http_get(ns, listen, "/metrics")
      return code == 200
    end, 15, 0.1), "no metrics:\n" .. proc:log())
    local priv = helpers.genkey()
    local _, pub2 = helpers.genkey()
    helpers.wg_set_interface(ns, ifname, { private_key = priv, listen_port = 51999 })
    helpers.wg_set_peer(ns, ifname, pub2, { allowed_ips = "10.9.0.2/32" })
    code, out = http_get(ns, listen, "/metrics")
    assert.equal(200, code)
    assert.matches(('\nwgoverlay_peers{interface="%s"} 1\n'):format(ifname), out, 1, true)
    assert.matches(('\nwgoverlay_peer_sent_bytes_total{interface="%s",public_key="%s"} 0\n'):format(ifname, pub2),
      out, 1, true)
    -- no daemon here: neither connection kind, health nor cluster series
    assert.not_matches("\nwgoverlay_peer_healthy{", out, 1, true)
    assert.not_matches("\nwgoverlay_cluster_members{", out, 1, true)
    local dir = helpers.tmpdir()
    helpers.write_file(dir .. "/iface.txt", out:match("\r\n\r\n(.*)$"))
    local ok, pout, perr = helpers.sh("promtool check metrics < " .. quote(dir .. "/iface.txt"))
    assert(ok, pout .. perr)
    assert.is_true(proc:stop(5), "did not stop on SIGTERM")
    assert.equal(0, proc:exit_code())
    assert.matches("interface " .. ifname .. " removed", proc:log(), 1, true)
    -- a metrics address that cannot be bound: a clear error, no interface left
    local ifname2 = helpers.ifname("wm")
    local bad, _, err = helpers.sh(("ip netns exec %s sh -c %s"):format(quote(ns.name), quote(
      ("cd %s && %slua5.4 bin/wgoverlay interface %s --metrics 192.0.2.77:9586"):format(
        quote(helpers.root), helpers.lua_env_prefix(), ifname2))))
    assert.is_false(bad)
    assert.matches("cannot listen on 192.0.2.77 port 9586: Cannot assign requested address", err, 1, true)
    assert.is_false(helpers.sh("test -S /var/run/wireguard/" .. ifname2 .. ".sock"))
    assert.is_false(ns:exec("ip link show " .. ifname2))
  end, true))
end)
