-- Prometheus metrics: the exposition renderer (pure) and the /metrics
-- endpoint (wgoverlay.core's libmicrohttpd server on the luv loop, on
-- 127.0.0.1 only), including slow and malformed clients.
local metrics = require "wgoverlay.metrics"

local function has_promtool()
  local ok = os.execute("command -v promtool >/dev/null 2>&1")
  return ok == true or ok == 0
end

-- promtool check metrics on a text: ok, output
local function promtool(text)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  local p = assert(io.popen("promtool check metrics < " .. path .. " 2>&1"))
  local out = p:read("a")
  local ok = p:close()
  os.remove(path)
  return ok, out
end

local SAMPLE_STATUS = {
  interface = "wgo0",
  peers = {
    { public_key = "ZmFrZSBwdWJsaWMga2V5IGZvciB0ZXN0aW5nIG9ubHk=", name = "node-a", rx_bytes = 1000, tx_bytes = 2000,
      last_handshake = 1700000000, connection = "hole-punched", healthy = true, rtt_ms = 1.5 },
    { public_key = "b3RoZXIgZmFrZSBwdWJsaWMga2V5IGZvciB0ZXN0cyE=", rx_bytes = 0, tx_bytes = 148, last_handshake = 0 },
  },
  stats = { rx_bad_mac1 = 3, rx_replayed = 4, rx_decrypt_failed = 5, tx_no_route = 6, rx_ratelimited = 7,
            handshake_queue_dropped = 8, tx_staged_dropped = 1, rx_cookie_sent = 9, tx_initiations = 10,
            rx_initiations = 11, tx_responses = 12, rx_responses = 13, handshakes_completed = 14,
            relay_rx_bytes = 15, relay_tx_bytes = 16, rx_packets = 17, tx_packets = 18 },
}

-- Parses exposition text: families { name = { type, help, samples = { line } } }
local function parse(text)
  local fams, order = {}, {}
  for line in text:gmatch("[^\n]+") do
    local kw, name, rest = line:match("^# (%u+) (%S+) (.*)$")
    if kw then
      fams[name] = fams[name] or { samples = {} }
      if kw == "HELP" then
        assert.is_nil(fams[name].help, "two HELP lines for " .. name)
        fams[name].help = rest
        order[#order + 1] = name
      else
        assert.is_nil(fams[name].type, "two TYPE lines for " .. name)
        fams[name].type = rest
      end
    else
      local n = line:match("^([%w_:]+)")
      assert.is_truthy(fams[n], "sample before its family: " .. line)
      table.insert(fams[n].samples, line)
    end
  end
  return fams, order
end

describe("metrics exposition", function()
  it("escapes label values and help text", function()
    assert.equal([[a\"b\\c\nd]], metrics.escape_label('a"b\\c\nd'))
    assert.equal([[x\\y\nz "q"]], metrics.escape_help('x\\y\nz "q"'))
    local set = metrics.new()
    set:family("wgoverlay_test_peers", "gauge", "Line one\nline two \\ end.")
    set:add("wgoverlay_test_peers", { name = 'we"ird\n', interface = "x" }, 2)
    assert.equal('# HELP wgoverlay_test_peers Line one\\nline two \\\\ end.\n# TYPE wgoverlay_test_peers gauge\n'
      .. 'wgoverlay_test_peers{interface="x",name="we\\"ird\\n"} 2\n', metrics.render(set))
  end)

  it("formats values exactly", function()
    assert.equal("0", metrics.format_value(0))
    assert.equal("9007199254740993", metrics.format_value(9007199254740993))
    assert.equal("0.0015", metrics.format_value(0.0015))
    assert.equal("0.1", metrics.format_value(0.1))
    assert.equal("3", metrics.format_value(3.0))
    assert.equal("NaN", metrics.format_value(0 / 0))
    assert.equal("+Inf", metrics.format_value(math.huge))
    assert.equal("-Inf", metrics.format_value(-math.huge))
    assert.equal(1 / 3, tonumber(metrics.format_value(1 / 3)))
  end)

  it("enforces the naming conventions and one family per name", function()
    local set = metrics.new()
    assert.has_error(function() set:family("wgoverlay_drops", "counter", "x") end)
    assert.has_error(function() set:family("wgoverlay_up_total", "gauge", "x") end)
    assert.has_error(function() set:family("other_total", "counter", "x") end)
    assert.has_error(function() set:family("wgoverlay_bad-name", "gauge", "x") end)
    assert.has_error(function() set:family("wgoverlay_x", "histogram", "x") end)
    assert.has_error(function() set:family("wgoverlay_x", "gauge", "") end)
    set:family("wgoverlay_x", "gauge", "x")
    assert.has_error(function() set:family("wgoverlay_x", "gauge", "again") end)
    set:add("wgoverlay_x", { a = "1" }, 1)
    assert.has_error(function() set:add("wgoverlay_x", { a = "1" }, 2) end)
    assert.has_error(function() set:add("wgoverlay_x", { ["bad-label"] = "1" }, 2) end)
    assert.has_error(function() set:add("wgoverlay_x", { __reserved = "1" }, 2) end)
    assert.has_error(function() set:add("wgoverlay_undeclared", {}, 2) end)
    set:family("wgoverlay_c_total", "counter", "c")
    assert.has_error(function() set:add("wgoverlay_c_total", {}, -1) end)
  end)

  it("renders every interface, peer and node series with units in the names", function()
    local set = metrics.new()
    metrics.collect_device(set, SAMPLE_STATUS)
    metrics.collect_node(set, { name = "n1", role = "leader", connected = true, members = 3 })
    metrics.collect_policy(set, "n1", { dropped_packets = 7, dropped_bytes = 420, enforced_version = 2 })
    local text = metrics.render(set)
    local fams, order = parse(text)
    assert.is_true(#order >= 20)
    assert.is_truthy(text:find('\nwgoverlay_policy_dropped_packets_total{name="n1"} 7\n', 1, true))
    assert.is_truthy(text:find('\nwgoverlay_policy_dropped_bytes_total{name="n1"} 420\n', 1, true))
    assert.is_truthy(text:find('\nwgoverlay_policy_enforced_version{name="n1"} 2\n', 1, true))
    for _, name in ipairs(order) do
      local f = fams[name]
      assert.is_truthy(f.type, name)
      assert.matches("^wgoverlay_", name)
      if f.type == "counter" then assert.matches("_total$", name) else assert.not_matches("_total$", name) end
      if name:match("bytes") then assert.matches("_bytes_total$", name) end
      if name:match("seconds") then assert.matches("_seconds$", name) end
    end
    local function has(line) assert.is_truthy(text:find("\n" .. line .. "\n", 1, true), line .. "\n" .. text) end
    local pk = SAMPLE_STATUS.peers[1].public_key
    has(('wgoverlay_peer_received_bytes_total{interface="wgo0",name="node-a",public_key="%s"} 1000'):format(pk))
    has(('wgoverlay_peer_sent_bytes_total{interface="wgo0",name="node-a",public_key="%s"} 2000'):format(pk))
    has(('wgoverlay_peer_last_handshake_seconds{interface="wgo0",name="node-a",public_key="%s"} 1700000000'):format(pk))
    has(('wgoverlay_peer_connection{interface="wgo0",kind="hole-punched",name="node-a",public_key="%s"} 1'):format(pk))
    has(('wgoverlay_peer_connection{interface="wgo0",kind="relayed",name="node-a",public_key="%s"} 0'):format(pk))
    has(('wgoverlay_peer_healthy{interface="wgo0",name="node-a",public_key="%s"} 1'):format(pk))
    has(('wgoverlay_peer_health_rtt_seconds{interface="wgo0",name="node-a",public_key="%s"} 0.0015'):format(pk))
    -- a peer without a name, connection or health: no such labels or series
    local pk2 = SAMPLE_STATUS.peers[2].public_key
    has(('wgoverlay_peer_sent_bytes_total{interface="wgo0",public_key="%s"} 148'):format(pk2))
    assert.is_nil(text:find('wgoverlay_peer_healthy{interface="wgo0",public_key="' .. pk2, 1, true))
    has('wgoverlay_peers{interface="wgo0"} 2')
    has('wgoverlay_handshakes_sent_total{interface="wgo0",message="initiation"} 10')
    has('wgoverlay_handshakes_sent_total{interface="wgo0",message="response"} 12')
    has('wgoverlay_handshakes_received_total{interface="wgo0",message="initiation"} 11')
    has('wgoverlay_handshakes_received_total{interface="wgo0",message="response"} 13')
    has('wgoverlay_handshakes_completed_total{interface="wgo0"} 14')
    has('wgoverlay_cookie_replies_sent_total{interface="wgo0"} 9')
    has('wgoverlay_packets_dropped_total{interface="wgo0",reason="bad_mac"} 3')
    has('wgoverlay_packets_dropped_total{interface="wgo0",reason="replay"} 4')
    has('wgoverlay_packets_dropped_total{interface="wgo0",reason="decryption_failed"} 5')
    has('wgoverlay_packets_dropped_total{interface="wgo0",reason="no_peer"} 6')
    has('wgoverlay_packets_dropped_total{interface="wgo0",reason="rate_limited"} 7')
    has('wgoverlay_packets_dropped_total{interface="wgo0",reason="queue_full"} 9')
    has('wgoverlay_relay_received_bytes_total{interface="wgo0"} 15')
    has('wgoverlay_relay_sent_bytes_total{interface="wgo0"} 16')
    has('wgoverlay_registry_connected{name="n1"} 1')
    has('wgoverlay_cluster_members{name="n1"} 3')
    has('wgoverlay_node_info{name="n1",role="leader"} 1')
    assert.is_true(has_promtool(), "promtool missing (scripts/deps.sh installs prometheus)")
    local ok, out = promtool(text)
    assert.is_true(ok, out)
  end)
end)

describe("metrics endpoint", function()
  local uv = require "luv"
  local core = require "wgoverlay.core"

  local function free_port()
    local t = uv.new_tcp()
    assert(t:bind("127.0.0.1", 0))
    local port = t:getsockname().port
    t:close()
    uv.run("nowait")
    return port
  end

  -- Runs the loop until pred() or timeout.
  local function run_until(pred, timeout)
    local deadline = uv.hrtime() + (timeout or 5) * 1e9
    local tick = uv.new_timer()
    tick:start(10, 10, function() end)
    while not pred() and uv.hrtime() < deadline do uv.run("once") end
    tick:close()
    uv.run("nowait")
    return pred()
  end

  -- Sends raw bytes (then keeps reading until the server closes, unless
  -- opts.hold); returns a record whose .response fills in.
  local function client(port, raw, opts)
    local c = { chunks = {}, tcp = uv.new_tcp() }
    c.tcp:connect("127.0.0.1", port, function(err)
      if err then c.error = err c.done = true return end
      c.connected = true
      if raw then c.tcp:write(raw) end
      c.tcp:read_start(function(rerr, chunk)
        if chunk then
          c.chunks[#c.chunks + 1] = chunk
        else
          c.response = table.concat(c.chunks)
          c.done = true
          if not c.tcp:is_closing() then c.tcp:close() end
        end
        if rerr then c.error = rerr end
      end)
    end)
    function c.close() if not c.tcp:is_closing() then c.tcp:close() end end
    return c
  end

  local function get(port, req)
    local c = client(port, req or "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert.is_true(run_until(function() return c.done end), "no answer")
    return c.response or "", c
  end

  local server, port, fail_collect
  before_each(function()
    port = free_port()
    fail_collect = false
    server = assert(metrics.serve({ listen = "127.0.0.1:" .. port, log = function() end, collect = function(set)
      if fail_collect then error("collector bug") end
      metrics.collect_device(set, SAMPLE_STATUS)
    end }))
  end)
  after_each(function()
    server.close()
    uv.run("nowait")
  end)

  it("serves GET /metrics, and HEAD, 404 and 405 around it", function()
    assert.equal("127.0.0.1:" .. port, server.address())
    local r = get(port)
    assert.matches("^HTTP/1.1 200", r)
    assert.matches("\r\nContent%-Type: text/plain; version=0.0.4; charset=utf%-8\r\n", r)
    local body = r:match("\r\n\r\n(.*)$")
    assert.matches("# TYPE wgoverlay_packets_dropped_total counter\n", body)
    assert.is_true(promtool(body))
    r = get(port, "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert.matches("^HTTP/1.1 200", r)
    assert.equal("", r:match("\r\n\r\n(.*)$"))
    assert.matches("^HTTP/1.1 404", get(port, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    assert.matches("^HTTP/1.1 404", get(port, "GET /metricsx HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    r = get(port, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
    assert.matches("^HTTP/1.1 405", r)
    assert.matches("\r\nAllow: GET, HEAD\r\n", r)
    -- a query string does not change the answer
    assert.matches("^HTTP/1.1 200", get(port, "GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
  end)

  it("answers malformed requests with an error status and goes on serving", function()
    local answered = {
      "GARBAGE\r\n\r\n",
      "GET /metrics HTTP/9.9\r\n\r\n",
      "GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
      "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " .. string.rep("a", 64 * 1024) .. "\r\n\r\n",
    }
    local clients = {}
    for i, bad in ipairs(answered) do clients[i] = client(port, bad) end
    -- binary junk is not answered: the connection waits for its idle
    -- timeout, and meanwhile scrapes go on
    local junk = client(port, "\0\1\2\3\255\254\r\n\r\n")
    assert.matches("^HTTP/1.1 200", get(port))
    assert.is_true(run_until(function()
      for _, c in ipairs(clients) do if not c.done then return false end end
      return true
    end))
    -- an error status, or (a request line that is not one) just closed
    for _, c in ipairs(clients) do
      assert.is_truthy(c.response == "" or c.response:match("^HTTP/1.1 [45]%d%d"), c.response:sub(1, 60))
    end
    assert.matches("^HTTP/1.1 431", clients[4].response)
    assert.matches("^HTTP/1.1 200", get(port))
    junk.close()
  end)

  it("keeps answering while slow clients hold connections open", function()
    local slow = {}
    -- half a request each, never finished; more than one address may hold
    for i = 1, 12 do slow[i] = client(port, i % 2 == 0 and "GET /metr" or nil) end
    run_until(function() return false end, 0.3)
    -- loopback is one address: the per-address limit (8) refuses some of
    -- them, but a scrape still gets through once one is let go
    slow[1].close()
    slow[2].close()
    slow[3].close()
    run_until(function() return false end, 0.1)
    local r = get(port)
    assert.matches("^HTTP/1.1 200", r)
    for _, c in ipairs(slow) do c.close() end
    run_until(function() return false end, 0.1)
    assert.matches("^HTTP/1.1 200", get(port))
  end)

  it("answers 500 when collecting fails, and recovers", function()
    fail_collect = true
    assert.matches("^HTTP/1.1 500", get(port))
    fail_collect = false
    assert.matches("^HTTP/1.1 200", get(port))
  end)

  it("a handler that raises or returns garbage costs that request only", function()
    local p2 = free_port()
    local calls = 0
    local s = assert(core.metrics_server("127.0.0.1", p2, function()
      calls = calls + 1
      if calls == 1 then error("boom") end
      if calls == 2 then return "x" end
      if calls == 3 then return 200, "text/plain", "bad\nheader", "GET\r\nX: y" end
      return 200, "text/plain", "fine"
    end))
    local poll = uv.new_poll(s:fd())
    poll:start("r", function() s:run() end)
    assert.is_nil(s:last_error())
    assert.matches("^HTTP/1.1 500", get(p2))
    assert.matches("boom", s:last_error())
    assert.matches("^HTTP/1.1 500", get(p2))
    assert.matches("number expected", s:last_error())
    assert.matches("^HTTP/1.1 500", get(p2))
    assert.matches("header value", s:last_error())
    local r = get(p2)
    assert.matches("^HTTP/1.1 200", r)
    assert.matches("\r\n\r\nfine$", r)
    poll:close()
    s:close()
    s:close()
    assert.has_error(function() s:run() end)
  end)

  it("refuses bad listen addresses and a port in use, with clear messages", function()
    local s, err = metrics.serve({ listen = "localhost:9100", collect = function() end })
    assert.is_nil(s)
    assert.matches("invalid", err)
    s, err = metrics.serve({ listen = "127.0.0.1", collect = function() end })
    assert.is_nil(s)
    s, err = metrics.serve({ listen = "127.0.0.1:" .. port, collect = function() end })
    assert.is_nil(s)
    assert.matches("cannot listen on 127.0.0.1 port " .. port .. ": Address already in use", err)
    s, err = core.metrics_server("not-an-ip", 1, function() end)
    assert.is_nil(s)
    assert.matches("not an IP address", err)
  end)

  it("listens on IPv6 loopback", function()
    local t = uv.new_tcp()
    if not t:bind("::1", 0) then
      t:close()
      pending("no IPv6 loopback here")
      return
    end
    local p6 = t:getsockname().port
    t:close()
    uv.run("nowait")
    local s = assert(metrics.serve({ listen = "[::1]:" .. p6, collect = function(set)
      metrics.collect_device(set, SAMPLE_STATUS)
    end }))
    assert.equal("[::1]:" .. p6, s.address())
    local c = { chunks = {}, tcp = uv.new_tcp() }
    c.tcp:connect("::1", p6, function(err)
      assert(not err, err)
      c.tcp:write("GET /metrics HTTP/1.0\r\n\r\n")
      c.tcp:read_start(function(_, chunk)
        if chunk then c.chunks[#c.chunks + 1] = chunk else c.done = true c.tcp:close() end
      end)
    end)
    assert.is_true(run_until(function() return c.done end))
    assert.matches("^HTTP/1.%d 200", table.concat(c.chunks))
    s.close()
  end)
end)
