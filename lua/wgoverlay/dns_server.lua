--- The DNS server: serves a `wgoverlay.dns` zone over UDP and TCP (luv).
--
-- The caller runs the luv loop (`uv.run()`); `start` only binds and
-- registers callbacks.  UDP answers larger than 512 bytes (or the client's
-- EDNS size, at most `udp_max`) are truncated with TC set, so clients retry
-- over TCP.  TCP uses 2-byte length framing (RFC 1035 4.2.2, RFC 7766):
-- several queries per connection, answered as they complete.
--
-- Names outside the zone are REFUSED, or with `forward = "ip:port"`
-- relayed as raw bytes to that upstream (UDP for UDP clients, TCP for TCP
-- clients); an answer must come from the upstream address with the same
-- id and question, else the client gets SERVFAIL after `forward_timeout`.
--
-- Bounded cost.  The server shares the daemon's one event loop, so no
-- client may take more than a fair share of it:
--
-- * Every message is classified from its 12-byte header (`dns.check_query`,
--   O(1)): "error" (no header, a response, or refused from the header)
--   or "query".  Each class has a token bucket per source address and a
--   global one (defaults: queries 200/s, burst 400 per source, 2000/s,
--   burst 4000 in all; errors 20/s, burst 40 per source, 200/s, burst 400
--   in all), so garbage from a client does not use up its budget for real
--   lookups.  A query whose names took many parse steps is charged one
--   extra token per 256 steps.  Over the limit a UDP message is dropped;
--   a TCP connection stops being read until its tokens come back (its
--   client is slowed, not answered out of order).
-- * TCP: at most `max_tcp` (64) connections; at most `tcp_per_source` (8)
--   per source address, where a new connection replaces that source's
--   connection that has waited longest for a complete message (a client
--   cannot lock its own address out of TCP).  A connection must deliver a
--   complete message within `tcp_idle` (10 s) of being accepted or of its
--   previous message, else it is closed: single bytes do not keep it open.
-- * A failed write, or a client that leaves more than 256 KiB of answers
--   unread, closes that connection only.
-- * Refusals are counted (`Server:stats()`) and logged at most once per
--   `log_interval` (10 s) per reason, with the number suppressed.
-- @module wgoverlay.dns_server
local uv = require "luv"
local dns = require "wgoverlay.dns"
local endpoint = require "wgoverlay.endpoint"

local spack, sub, byte, concat = string.pack, string.sub, string.byte, table.concat

local M = {}

--- Defaults for `new`.
M.DEFAULTS = {
  host = "127.0.0.1", port = 53, forward = nil,
  forward_timeout = 2,   -- seconds before a forwarded query gets SERVFAIL
  max_forward = 256,     -- forwarded queries in flight
  tcp_idle = 10,         -- seconds a TCP connection has for each complete message
  max_tcp = 64,          -- TCP connections at once
  tcp_per_source = 8,    -- TCP connections at once per source address
  max_tcp_pending = 16,  -- forwarded queries in flight per TCP connection
  udp_max = dns.UDP_MAX, -- largest UDP answer
  rate = 200, burst = 400,                -- queries/s per source
  global_rate = 2000, global_burst = 4000, -- queries/s in all
  error_rate = 20, error_burst = 40,      -- errors/s per source
  global_error_rate = 200, global_error_burst = 400, -- errors/s in all
  log_interval = 10,     -- seconds between two log lines of one reason
}

local WRITE_QUEUE_MAX = 256 * 1024
-- Parse steps (dns.work) one token pays for.
local STEPS_PER_TOKEN = 256
-- Source buckets kept before idle (full) ones are forgotten.
local MAX_SOURCES = 4096

---------------------------------------------------------------------------
-- Rate limiter (pure: the clock is passed in)
---------------------------------------------------------------------------

local Limiter = {}
Limiter.__index = Limiter

--- Token buckets per class ("query", "error"), per source and global.
-- @tparam table cfg `rate`, `burst`, `global_rate`, `global_burst`,
--   `error_rate`, `error_burst`, `global_error_rate`, `global_error_burst`
--   (missing ones from `DEFAULTS`)
-- @treturn Limiter
function M.limiter(cfg)
  cfg = cfg or {}
  local function get(k) return cfg[k] or M.DEFAULTS[k] end
  local self = setmetatable({ classes = {}, nsources = 0 }, Limiter)
  for class, prefix in pairs({ query = "", error = "error_" }) do
    self.classes[class] = {
      rate = get(prefix .. "rate"), burst = get(prefix .. "burst"),
      grate = get("global_" .. prefix .. "rate"), gburst = get("global_" .. prefix .. "burst"),
      global = { tokens = get("global_" .. prefix .. "burst"), t = nil },
      sources = {},
    }
  end
  return self
end

local function refill(b, rate, burst, now)
  if b.t then b.tokens = math.min(burst, b.tokens + (now - b.t) * rate) end
  b.t = now
end

-- Forget source buckets that are full again (they hold no state); if
-- many sources (spoofed ones) keep over half of them busy, start over,
-- so that a sweep comes at most once per MAX_SOURCES / 2 new sources.
function Limiter:_prune(now)
  local n = 0
  for _, c in pairs(self.classes) do
    for src, b in pairs(c.sources) do
      refill(b, c.rate, c.burst, now)
      if b.tokens >= c.burst then c.sources[src] = nil else n = n + 1 end
    end
  end
  if n >= MAX_SOURCES // 2 then
    for _, c in pairs(self.classes) do c.sources = {} end
    n = 0
  end
  self.nsources = n
end

function Limiter:_buckets(src, class, now)
  local c = self.classes[class]
  local b = c.sources[src]
  if not b then
    if self.nsources >= MAX_SOURCES then self:_prune(now) end
    b = { tokens = c.burst, t = now }
    c.sources[src] = b
    self.nsources = self.nsources + 1
  end
  refill(b, c.rate, c.burst, now)
  refill(c.global, c.grate, c.gburst, now)
  return c, b
end

--- Take one token for a message of `class` from `src` at time `now` (s).
-- @treturn true, or false and "source" / "global" (the bucket that is empty)
function Limiter:allow(src, class, now)
  local c, b = self:_buckets(src, class, now)
  if b.tokens < 1 then return false, "source" end
  if c.global.tokens < 1 then return false, "global" end
  b.tokens, c.global.tokens = b.tokens - 1, c.global.tokens - 1
  return true
end

--- Charge `cost` more tokens after the fact (an expensive message); the
-- debt is bounded by one burst.
function Limiter:charge(src, class, cost, now)
  if cost <= 0 then return end
  local c, b = self:_buckets(src, class, now)
  b.tokens = math.max(-c.burst, b.tokens - cost)
  c.global.tokens = math.max(-c.gburst, c.global.tokens - cost)
end

--- Seconds until `allow(src, class)` can succeed (0: now).
function Limiter:wait(src, class, now)
  local c, b = self:_buckets(src, class, now)
  return math.max(0, (1 - b.tokens) / c.rate, (1 - c.global.tokens) / c.grate)
end

--- The class of a message, from its header alone: "query" or "error".
function M.classify(msg)
  local h, rcode = dns.check_query(msg)
  if h and not rcode then return "query" end
  return "error"
end

local Server = {}
Server.__index = Server

--- A server for `opts.zone`.
-- @tparam table opts `zone` (required), `host` (string or list, default
--   "127.0.0.1"), `port` (53; 0 picks a free port, see `port()`),
--   `forward` ("ip:port" or nil), `forward_timeout` (2 s), `max_forward`
--   (256), `tcp_idle` (10 s), `max_tcp` (64), `tcp_per_source` (8),
--   `max_tcp_pending` (16), `udp_max` (1232), the rate limits of
--   `DEFAULTS`, `log_interval` (10 s), `log` (function(message); default
--   stderr), `clock` (function() -> seconds; default the loop's clock)
-- @return server, or nil and a message
function M.new(opts)
  if type(opts) ~= "table" or type(opts.zone) ~= "table" or not opts.zone.answer then
    error("dns.server.new: opts.zone must be a dns zone", 2)
  end
  local cfg = {}
  for k, v in pairs(M.DEFAULTS) do cfg[k] = v end
  for k, v in pairs(opts) do cfg[k] = v end
  local self = setmetatable({ cfg = cfg, zone = opts.zone }, Server)
  self.hosts = type(cfg.host) == "table" and cfg.host or { cfg.host }
  if cfg.forward then
    -- "IP:PORT", "[IPv6]:PORT", or a bare address (port 53)
    local up, err = endpoint.parse(cfg.forward, { default_port = 53 })
    if not up then return nil, err end
    self.upstream = up
  end
  self.log = opts.log or function(m) io.stderr:write("wgoverlay: ", m, "\n") end
  self.now = opts.clock or function() return uv.now() / 1000 end
  self.limiter = M.limiter(cfg)
  self.handles = {}   -- every open handle -> true (closed by stop)
  self.conns = {}     -- TCP connection -> true
  self.by_source = {} -- source address -> { [conn] = true }, n
  self.nconns, self.inflight = 0, 0
  self.counters = {
    udp_messages = 0, tcp_messages = 0, answered = 0, dropped = 0, header_errors = 0,
    udp_rate_limited = 0, tcp_rate_limited = 0, zone_errors = 0,
    tcp_accepted = 0, tcp_refused = 0, tcp_evicted = 0, tcp_timeouts = 0, tcp_slow = 0,
    tcp_write_errors = 0, tcp_unread = 0,
  }
  self.logged = {}    -- reason -> { last, suppressed }
  return self
end

--- Counters since start: messages (`udp_messages`, `tcp_messages`),
-- outcomes (`answered`, `dropped`: no answer, `header_errors`: answered
-- with an error its header decided: FORMERR, NOTIMP), refusals (`udp_rate_limited`: dropped,
-- `tcp_rate_limited`: a connection paused, `tcp_refused`: `max_tcp`
-- reached, `tcp_evicted`: replaced under `tcp_per_source`, `tcp_slow`:
-- closed with a message still incomplete at its deadline), `tcp_timeouts`
-- (every deadline close), `tcp_write_errors`, `tcp_unread` (closed with
-- too many answers unread), `zone_errors`, and the gauges `tcp_open`,
-- `forwarding`.
-- @treturn table a copy
function Server:stats()
  local out = {}
  for k, v in pairs(self.counters) do out[k] = v end
  out.tcp_open, out.forwarding = self.nconns, self.inflight
  return out
end

-- Count `reason` and log `msg` unless a line for this reason went out in
-- the last `log_interval` seconds (the next line says how many were held).
function Server:_refuse(reason, msg)
  self.counters[reason] = self.counters[reason] + 1
  local l = self.logged[reason]
  if not l then
    l = { suppressed = 0 }
    self.logged[reason] = l
  end
  local now = self.now()
  if l.last and now - l.last < self.cfg.log_interval then
    l.suppressed = l.suppressed + 1
    return
  end
  if l.suppressed > 0 then
    msg = ("%s (and %d more in the last %g s)"):format(msg, l.suppressed, now - l.last)
  end
  l.last, l.suppressed = now, 0
  self.log("dns: " .. msg)
end

function Server:_close(h)
  if h and self.handles[h] then
    self.handles[h] = nil
    if not h:is_closing() then h:close() end
  end
end

function Server:_track(h)
  self.handles[h] = true
  return h
end

function Server:_servfail(query)
  return dns.error_response(query, dns.RCODE.SERVFAIL)
end

-- Take a token for `msg` from `src`: its class, or nil, class and the
-- empty bucket ("source" or "global").
function Server:_admit(src, msg)
  local class = M.classify(msg)
  local ok, which = self.limiter:allow(src, class, self.now())
  if ok then return class end
  return nil, class, which
end

-- Answer `query` (already admitted from `src` as `class`); `reply(bytes)`
-- is called at most once (now, or later for a forwarded query).  Returns
-- false when the message is dropped (no reply will ever come).
function Server:_handle(query, transport, reply, src, class)
  local steps = dns.work.steps
  local ok, resp, reason = pcall(self.zone.answer, self.zone, query,
    { transport = transport, udp_max = self.cfg.udp_max, forward = self.upstream ~= nil })
  -- names that took many steps to decode cost their client more
  local extra = (dns.work.steps - steps) // STEPS_PER_TOKEN
  if extra > 0 and src then self.limiter:charge(src, class, extra, self.now()) end
  if not ok then
    self:_refuse("zone_errors", "zone error: " .. tostring(resp))
    resp = self:_servfail(query)
  end
  if resp then
    self.counters.answered = self.counters.answered + 1
    if class == "error" then self.counters.header_errors = self.counters.header_errors + 1 end
    reply(resp)
  elseif reason == "forward" then
    if self.inflight >= self.cfg.max_forward then
      reply(self:_servfail(query))
    elseif transport == "tcp" then
      self:_forward_tcp(query, reply)
    else
      self:_forward_udp(query, reply)
    end
  else
    self.counters.dropped = self.counters.dropped + 1
    return false
  end
  return true
end

-- Bookkeeping shared by both forwarders: returns finish(resp) which
-- replies once (SERVFAIL for nil) and closes `handles`.
function Server:_forwarding(query, reply, handles)
  self.inflight = self.inflight + 1
  local done = false
  local timer = self:_track(uv.new_timer())
  handles[#handles + 1] = timer
  local function finish(resp)
    if done then return end
    done = true
    self.inflight = self.inflight - 1
    for _, h in ipairs(handles) do self:_close(h) end
    if self.stopped then return end
    if resp and not dns.matches(query, resp) then resp = nil end
    reply(resp or self:_servfail(query))
  end
  timer:start(math.floor(self.cfg.forward_timeout * 1000), 0, function() finish(nil) end)
  return finish
end

function Server:_forward_udp(query, reply)
  local up = self.upstream
  local sock = self:_track(uv.new_udp())
  local finish = self:_forwarding(query, reply, { sock })
  local ok, err = sock:bind(up.family == 6 and "::" or "0.0.0.0", 0)
  if not ok then self.log("dns: forward bind: " .. tostring(err)) return finish(nil) end
  sock:recv_start(function(rerr, data, addr)
    if rerr then return finish(nil) end
    if data and addr and addr.ip == up.ip and addr.port == up.port and dns.matches(query, data) then
      finish(data)
    end
  end)
  local sok, serr = sock:send(query, up.ip, up.port, function(e) if e then finish(nil) end end)
  if not sok then self.log("dns: forward send: " .. tostring(serr)) finish(nil) end
end

-- Pops one length-framed message from state.buf (or nil).
local function pop_frame(state)
  if #state.buf < 2 then return nil end
  local len = string.unpack(">I2", state.buf)
  if #state.buf < 2 + len then return nil end
  local msg = state.buf:sub(3, 2 + len)
  state.buf = state.buf:sub(3 + len)
  return msg
end

function Server:_forward_tcp(query, reply)
  local up = self.upstream
  local sock = self:_track(uv.new_tcp())
  local finish = self:_forwarding(query, reply, { sock })
  local state = { buf = "" }
  local ok, err = sock:connect(up.ip, up.port, function(cerr)
    if cerr then return finish(nil) end
    local wok, req = pcall(sock.write, sock, spack(">s2", query), function(werr) if werr then finish(nil) end end)
    if not wok or not req then return finish(nil) end
    sock:read_start(function(rerr, chunk)
      if rerr or not chunk then return finish(nil) end
      state.buf = state.buf .. chunk
      local msg = pop_frame(state)
      if msg then finish(msg) end
    end)
  end)
  if not ok then self.log("dns: forward connect: " .. tostring(err)) finish(nil) end
end

function Server:_on_udp(udp, err, data, addr, flags)
  if err or not data or not addr or (flags and flags.partial) then return end
  self.counters.udp_messages = self.counters.udp_messages + 1
  local class, limited, which = self:_admit(addr.ip, data)
  if not class then
    return self:_refuse("udp_rate_limited", ("%s over the %s %s rate limit: UDP messages dropped"):format(
      addr.ip, which, limited))
  end
  self:_handle(data, "udp", function(resp)
    if not self.stopped and not udp:is_closing() then
      pcall(udp.send, udp, resp, addr.ip, addr.port, function() end)
    end
  end, addr.ip, class)
end

---------------------------------------------------------------------------
-- TCP connections
---------------------------------------------------------------------------

function Server:_close_conn(conn)
  if conn.closed then return end
  conn.closed = true
  self.conns[conn] = nil
  self.nconns = self.nconns - 1
  local group = self.by_source[conn.src]
  if group then
    group[conn] = nil
    group.n = group.n - 1
    if group.n == 0 then self.by_source[conn.src] = nil end
  end
  self:_close(conn.timer)
  self:_close(conn.sock)
end

function Server:_write_failed(conn, err)
  if conn.closed then return end
  self:_refuse("tcp_write_errors", ("TCP write to %s failed (%s): connection closed"):format(conn.src,
    tostring(err)))
  self:_close_conn(conn)
end

-- Reply on a connection unless it has gone or its client stopped reading.
-- A failed write closes this connection only.
function Server:_tcp_reply(conn, resp)
  if conn.closed then return end
  conn.pending = conn.pending - 1
  if conn.sock:get_write_queue_size() > WRITE_QUEUE_MAX then
    self:_refuse("tcp_unread", conn.src .. " leaves its TCP answers unread: connection closed")
    return self:_close_conn(conn)
  end
  local ok, req, err = pcall(conn.sock.write, conn.sock, spack(">s2", resp), function(werr)
    if werr then self:_write_failed(conn, werr) end
  end)
  if not ok or not req then self:_write_failed(conn, ok and err or req) end
end

-- The deadline for the next complete message (from now).
function Server:_arm_deadline(conn)
  conn.since = self.now()
  conn.timer:stop()
  local ms = math.floor(self.cfg.tcp_idle * 1000)
  conn.timer:start(ms, 0, function()
    if conn.closed then return end
    self.counters.tcp_timeouts = self.counters.tcp_timeouts + 1
    if conn.have > 0 then
      self:_refuse("tcp_slow", ("%s sent no complete message in %g s: connection closed"):format(
        conn.src, self.cfg.tcp_idle))
    end
    self:_close_conn(conn)
  end)
end

-- Answer the queued messages of `conn` (queue[head..tail]) while its
-- source has tokens; with none left, stop reading and come back when
-- there are.
function Server:_drain(conn)
  local q = conn.queue
  while not conn.closed and conn.head <= conn.tail do
    local msg = q[conn.head]
    if msg == false then return self:_close_conn(conn) end -- an empty message ends the connection
    local class, limited, which = self:_admit(conn.src, msg)
    if not class then
      self:_refuse("tcp_rate_limited", ("%s over the %s %s rate limit: TCP reading paused"):format(
        conn.src, which, limited))
      local wait = self.limiter:wait(conn.src, limited, self.now())
      conn.paused = true
      conn.sock:read_stop()
      conn.timer:stop()
      conn.timer:start(math.max(1, math.ceil(wait * 1000)), 0, function() self:_resume(conn) end)
      return
    end
    q[conn.head], conn.head = nil, conn.head + 1
    conn.pending = conn.pending + 1
    local function reply(resp) self:_tcp_reply(conn, resp) end
    if conn.pending > self.cfg.max_tcp_pending then
      local fail = self:_servfail(msg)
      if fail then reply(fail) else conn.pending = conn.pending - 1 end
    elseif not self:_handle(msg, "tcp", reply, conn.src, class) then
      conn.pending = conn.pending - 1
    end
  end
  if not conn.closed then conn.queue, conn.head, conn.tail = {}, 1, 0 end
end

function Server:_resume(conn)
  if conn.closed then return end
  conn.paused = false
  self:_drain(conn)
  if conn.closed or conn.paused then return end
  self:_arm_deadline(conn)
  conn.sock:read_start(function(err, chunk) self:_on_tcp_data(conn, err, chunk) end)
end

-- Frames arrive as chunks kept in a list and joined only once a whole
-- frame (or its length) is there: linear in the bytes received.
function Server:_on_tcp_data(conn, err, chunk)
  if conn.closed then return end
  if err or not chunk then return self:_close_conn(conn) end
  local parts = conn.parts
  parts[#parts + 1] = chunk
  conn.have = conn.have + #chunk
  if conn.have < conn.need then return end
  local buf = #parts == 1 and parts[1] or concat(parts)
  local pos, n, framed = 1, #buf, false
  conn.need = 2
  while n - pos >= 1 do
    local len = byte(buf, pos) << 8 | byte(buf, pos + 1)
    if len == 0 then
      conn.tail, framed, pos = conn.tail + 1, true, n + 1
      conn.queue[conn.tail] = false
      break
    end
    if n - pos + 1 < 2 + len then
      conn.need = 2 + len
      break
    end
    conn.tail, framed = conn.tail + 1, true
    conn.queue[conn.tail] = sub(buf, pos + 2, pos + 1 + len)
    self.counters.tcp_messages = self.counters.tcp_messages + 1
    pos = pos + 2 + len
  end
  local rest = pos > n and "" or pos == 1 and buf or sub(buf, pos)
  conn.parts, conn.have = { rest }, #rest
  if framed then self:_arm_deadline(conn) end
  if not conn.paused then self:_drain(conn) end
end

-- The connection of `group` that has waited longest for a message.
local function stalest(group)
  local best
  for c in pairs(group) do
    if c ~= "n" and (not best or c.since < best.since) then best = c end
  end
  return best
end

function Server:_on_accept(listener)
  local sock = self:_track(uv.new_tcp())
  if not listener:accept(sock) then return self:_close(sock) end
  local peer = sock:getpeername()
  if not peer or not peer.ip then return self:_close(sock) end
  local src = peer.ip
  local group = self.by_source[src]
  if group and group.n >= self.cfg.tcp_per_source then
    local victim = stalest(group)
    self:_refuse("tcp_evicted", ("%s has %d TCP connections: closed the one idle longest"):format(
      src, group.n))
    self:_close_conn(victim)
  end
  if self.nconns >= self.cfg.max_tcp then
    self:_refuse("tcp_refused", ("TCP connection from %s refused: %d open"):format(src, self.nconns))
    return self:_close(sock)
  end
  self.counters.tcp_accepted = self.counters.tcp_accepted + 1
  local conn = { sock = sock, src = src, parts = {}, have = 0, need = 2, queue = {}, head = 1, tail = 0,
    pending = 0 }
  conn.timer = self:_track(uv.new_timer())
  self.conns[conn] = true
  self.nconns = self.nconns + 1
  group = self.by_source[src]
  if not group then
    group = { n = 0 }
    self.by_source[src] = group
  end
  group[conn], group.n = true, group.n + 1
  self:_arm_deadline(conn)
  sock:read_start(function(err, chunk) self:_on_tcp_data(conn, err, chunk) end)
end

function Server:_bind_host(host, port)
  local v6 = host:find(":", 1, true) ~= nil
  local flags = v6 and { ipv6only = true } or nil
  local udp = self:_track(uv.new_udp())
  local ok, err = udp:bind(host, port, flags)
  if not ok then return nil, ("cannot bind UDP %s port %d: %s"):format(host, port, tostring(err)) end
  if port == 0 then port = udp:getsockname().port end
  local tcp = self:_track(uv.new_tcp())
  ok, err = tcp:bind(host, port, flags)
  if ok then ok, err = tcp:listen(128, function(lerr) if not lerr then self:_on_accept(tcp) end end) end
  if not ok then return nil, ("cannot bind TCP %s port %d: %s"):format(host, port, tostring(err)) end
  udp:recv_start(function(rerr, data, addr, fl) self:_on_udp(udp, rerr, data, addr, fl) end)
  return port
end

--- Bind UDP and TCP on every host and start serving.
-- @treturn true or nil, message (nothing stays bound on error)
function Server:start()
  if self.started then error("dns server already started", 2) end
  self.started, self.stopped = true, false
  local port = self.cfg.port
  for _, host in ipairs(self.hosts) do
    local bound, err = self:_bind_host(host, port)
    if not bound then
      self:stop()
      return nil, err
    end
    port = bound
  end
  self.bound_port = port
  return true
end

--- The port the server listens on (useful with `port = 0`).
function Server:port()
  return self.bound_port
end

--- Close every socket, connection and timer of the server.
function Server:stop()
  self.stopped = true
  for conn in pairs(self.conns) do self:_close_conn(conn) end
  for h in pairs(self.handles) do self:_close(h) end
end

return M
