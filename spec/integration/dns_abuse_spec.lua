-- DNS with bounded cost per byte (issue 13, item 1): a container floods its
-- node's DNS server (TCP streams of the issue's qdcount-65535 pointer-chain
-- queries, plus 80 slow connections dripping one byte every few seconds,
-- for 25 s) while ordinary lookups from the same container, over UDP and
-- TCP, keep being answered within 1 s, and no node sees a peer go
-- unhealthy.  Then 50 pipelined TCP queries closed without reading, 20
-- times: the daemon lives on and its tunnel carries traffic.  Needs root.
--
--   hub bridge: leader 192.0.2.1, a 192.0.2.2, b 192.0.2.3;
--   container "front" on a (the attacker, and the client of the lookups),
--   "back" on b.

local helpers = require "spec.helpers"
local fixture = require "spec.cluster_fixture"
local dns = require "wgoverlay.dns"

local quote = helpers.quote
local fqdn = fixture.fqdn

local ATTACK_SECONDS = 25

-- The attack, run in the container with lua5.4 + luasocket; it stops by
-- itself after DURATION s and prints one line of counts.  Fast streams send
-- the issue's message (qdcount 65535, questions that are chains of
-- compression pointers, 64 KiB) as fast as the server takes them, read and
-- discard what comes back, and reconnect at once when closed; slow
-- connections announce a 100-byte message and send one byte of it every
-- SLOW_EVERY s, and reconnect 1 s after being closed.
local ATTACK = [==[
local socket = require "socket"
local HOST, DURATION, FAST, SLOW, SLOW_EVERY = HOST_, DURATION_, 2, 80, 3

local function chain_query()
  local parts = { "", "\1x\0\0\1\0\1" }
  local pos, prev = 12 + 7, 12
  for _ = 1, 120 do
    parts[#parts + 1] = "\1x" .. string.pack(">I2I2I2", 0xC000 | prev, 1, 1)
    prev, pos = pos, pos + 8
  end
  while pos + 6 <= 65533 do
    parts[#parts + 1] = string.pack(">I2I2I2", 0xC000 | prev, 1, 1)
    pos = pos + 6
  end
  parts[1] = string.pack(">I2I2I2I2I2I2", 0x4141, 0x0100, 65535, 0, 0, 0)
  return table.concat(parts)
end
local frame = string.pack(">s2", chain_query())

local now = socket.gettime
local st = { fast_bytes = 0, fast_connects = 0, answer_bytes = 0, slow_connects = 0, slow_closed = 0,
  connect_failures = 0 }
local function connect()
  local c = socket.tcp()
  c:settimeout(1)
  if not c:connect(HOST, 53) then
    c:close()
    st.connect_failures = st.connect_failures + 1
    return nil
  end
  c:settimeout(0)
  return c
end

local conns = {} -- socket -> entry
local fast, slow = {}, {}
local t0 = now()
for i = 1, FAST do fast[i] = { fast = true, retry = t0 } end
for i = 1, SLOW do slow[i] = { retry = t0 + i * 0.01 } end

local function closed(e, t)
  conns[e.sock] = nil
  e.sock:close()
  e.sock = nil
  if e.fast then e.retry = t else e.retry, st.slow_closed = t + 1, st.slow_closed + 1 end
end

local stop = t0 + DURATION
while now() < stop do
  local t = now()
  for _, e in ipairs(fast) do
    if not e.sock and t >= e.retry then
      e.sock, e.pos = connect(), 1
      if e.sock then conns[e.sock], st.fast_connects = e, st.fast_connects + 1 else e.retry = t + 0.1 end
    end
  end
  for _, e in ipairs(slow) do
    if not e.sock and t >= e.retry then
      e.sock, e.sent, e.next = connect(), 0, t
      if e.sock then conns[e.sock], st.slow_connects = e, st.slow_connects + 1 else e.retry = t + 1 end
    end
    if e.sock and t >= e.next then
      local b = e.sent == 0 and "\0" or e.sent == 1 and "\100" or "x"
      if e.sock:send(b) then e.sent, e.next = e.sent + 1, t + SLOW_EVERY end
    end
  end
  local rd, wr = {}, {}
  for s, e in pairs(conns) do
    rd[#rd + 1] = s
    if e.fast then wr[#wr + 1] = s end
  end
  local r, w = socket.select(rd, wr, 0.05)
  t = now()
  for _, s in ipairs(r) do
    local e = conns[s]
    if e then
      local data, err, partial = s:receive(65536)
      st.answer_bytes = st.answer_bytes + #(data or partial or "")
      if err == "closed" then closed(e, t) end
    end
  end
  for _, s in ipairs(w) do
    local e = conns[s]
    if e then
      local last, err, partial = s:send(frame, e.pos)
      local upto = last or partial or e.pos - 1
      st.fast_bytes = st.fast_bytes + upto - e.pos + 1
      e.pos = upto + 1
      if e.pos > #frame then e.pos = 1 end
      if err == "closed" then closed(e, t) end
    end
  end
end
for s in pairs(conns) do s:close() end
st.fast_frames = st.fast_bytes // #frame
local out = {}
for k, v in pairs(st) do out[#out + 1] = k .. "=" .. math.floor(v) end
table.sort(out)
print("attack: " .. table.concat(out, " "))
]==]

describe("DNS under abuse #netns", function()
  local cl, L, A, B, front, back

  lazy_setup(function()
    cl = fixture.new()
    L = cl:leader("leader", "192.0.2.1")
    A = cl:node("a", "192.0.2.2")
    B = cl:node("b", "192.0.2.3")
    local tok = cl:token(L, 2)
    cl:start(L)
    cl:join(A, tok)
    cl:start(A)
    cl:join(B, tok)
    cl:start(B)
    front = cl:attach("A", A, "front")
    back = cl:attach("B", B, "back")
    cl:wait_health(L, { "a", "b" }, true, 30)
    cl:wait_health(A, { "leader", "b" }, true, 30)
    cl:wait_health(B, { "leader", "a" }, true, 30)
  end)

  teardown(function() if cl then cl:teardown() end end)

  -- Unhealthy transitions a node has seen: its log lines and its
  -- `status` events since `since` (epoch s).
  local function unhealthy(node, since)
    local n = 0
    for _ in node.proc:log():gmatch("is now unhealthy") do n = n + 1 end
    local st = cl:status(node)
    for _, ev in ipairs(st and st.events or {}) do
      if ev.type == "peer_unhealthy" and ev.time >= since then n = n + 1 end
    end
    return n
  end

  -- CPU seconds (user + system) a process has used.
  local function cpu_seconds(proc)
    local stat = helpers.read_file("/proc/" .. proc.pid .. "/stat") or ""
    local f = {}
    for x in (stat:match("%) (.*)") or ""):gmatch("%S+") do f[#f + 1] = x end
    return ((tonumber(f[12]) or 0) + (tonumber(f[13]) or 0)) / 100
  end

  -- The DNS server's own log lines of a node (its refusals), for messages.
  local function dns_lines(node)
    local out = {}
    for line in node.proc:log():gmatch("[^\n]*dns: [^\n]*") do out[#out + 1] = line end
    return table.concat(out, "\n")
  end

  local function assert_alive(node)
    assert(node.proc:alive(), ("daemon %s died (exit %s):\n%s"):format(node.name,
      tostring(node.proc:exit_code()), node.proc:log()))
  end

  -- One lookup from the container: true when dig got the right address
  -- within its 1 s timeout.
  local function lookup(name, want, tcp)
    local _, out = front.ns:exec(("dig +time=1 +tries=1 %s@%s %s A"):format(tcp and "+tcp " or "",
      A.ip, quote(fqdn(name))))
    local r = helpers.parse_dig(out)
    return r.status == "NOERROR" and r.answers[1] ~= nil and r.answers[1].data == want
  end

  it("a flood of pointer-chain queries and slow connections from a container: its own lookups "
    .. "over UDP and TCP answered within 1 s (90%), no peer unhealthy", helpers.guard(function()
      local since = os.time()
      local before = {}
      for _, n in ipairs({ L, A, B }) do before[n.name] = unhealthy(n, since) end
      local code = ATTACK:gsub("HOST_", ("%q"):format(A.ip)):gsub("DURATION_", tostring(ATTACK_SECONDS))
      local attack = front.ns:spawn("lua5.4 -e " .. quote(code), { env = helpers.lua_env(), name = "dns-attack" })
      local t0, cpu0 = helpers.now(), cpu_seconds(A.proc)
      local t_end = t0 + ATTACK_SECONDS - 1
      helpers.sleep(1) -- let the attack reach full strength
      local want = { a = A.ip, b = B.ip, leader = L.ip, front = front.ip, back = back.ip }
      local names = { "a", "b", "leader", "front", "back" }
      local tries = { udp = { n = 0, ok = 0 }, tcp = { n = 0, ok = 0 } }
      local i = 0
      while helpers.now() < t_end do
        i = i + 1
        local name = names[i % #names + 1]
        for _, t in ipairs({ "udp", "tcp" }) do
          local c = tries[t]
          c.n = c.n + 1
          if lookup(name, want[name], t == "tcp") then c.ok = c.ok + 1 end
        end
        helpers.sleep(0.05)
      end
      local cpu = cpu_seconds(A.proc) - cpu0
      assert(attack:wait(ATTACK_SECONDS + 10), "the attack did not stop by itself")
      local report = attack:log():match("attack: [^\n]*")
      assert(report, "the attack failed:\n" .. attack:log())
      local summary = ("%s; lookups: UDP %d/%d, TCP %d/%d; daemon a used %.1f s of CPU in %.1f s"):format(
        report, tries.udp.ok, tries.udp.n, tries.tcp.ok, tries.tcp.n, cpu, helpers.now() - t0)
      io.stderr:write("dns_abuse: ", summary, "\n")
      -- the attack ran: every slow connection was made, closed and made again,
      -- and the streams delivered whole messages
      local counts = {}
      for k, v in report:gmatch("([%w_]+)=(%d+)") do counts[k] = tonumber(v) end
      assert.is_true(counts.slow_connects > 80, summary)
      assert.is_true(counts.fast_frames >= 10, summary)
      for t, c in pairs(tries) do
        assert.is_true(c.n >= 20, ("only %d %s lookups: %s"):format(c.n, t, summary))
        assert.is_true(c.ok >= 0.9 * c.n, ("%s lookups: %d of %d answered within 1 s (%s)\n%s"):format(
          t, c.ok, c.n, summary, dns_lines(A)))
      end
      for _, n in ipairs({ L, A, B }) do
        assert_alive(n)
        assert.equal(before[n.name], unhealthy(n, since), n.name .. " saw a peer go unhealthy:\n" .. n.proc:log())
      end
      -- the server said why it refused (rate-limited lines)
      local log = A.proc:log()
      assert.matches("dns: .*rate limit", log)
      assert.matches("dns: .*closed the one idle longest", log)
    end))

  it("50 pipelined TCP queries closed without reading, 20 times: the daemon lives, the tunnel works",
    helpers.guard(function()
      local parts = {}
      for i = 1, 50 do parts[i] = string.pack(">s2", dns.query(fqdn("back"), "A", { id = i })) end
      local ok, out, err = helpers.lua_run(front.ns, ([[
local socket = require "socket"
local payload = %q
for _ = 1, 20 do
  local c = assert(socket.tcp())
  c:settimeout(5)
  assert(c:connect(%q, 53))
  c:send(payload)
  c:close()
end
]]):format(table.concat(parts), A.ip))
      assert(ok, "client failed: " .. tostring(out) .. tostring(err))
      helpers.sleep(0.5)
      for _, n in ipairs({ L, A, B }) do assert_alive(n) end
      -- by name, through node a's DNS, across the tunnel to b's container
      assert.is_true(helpers.wait_until(function() return front.ns:ping(fqdn("back"), 2, 2) end, 10, 0.5),
        "front cannot ping back.overlay.internal")
      assert.is_true(lookup("back", back.ip, true))
    end))
end)
