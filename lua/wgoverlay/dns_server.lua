--- The DNS server: serves a `wgoverlay.dns` zone over UDP and TCP (luv).
--
-- The caller runs the luv loop (`uv.run()`); `start` only binds and
-- registers callbacks.  UDP answers larger than 512 bytes (or the client's
-- EDNS size, at most `udp_max`) are truncated with TC set, so clients retry
-- over TCP.  TCP uses 2-byte length framing (RFC 1035 4.2.2, RFC 7766):
-- several queries per connection, answered as they complete, an idle
-- timeout and a bound on the number of connections.
--
-- Names outside the zone are REFUSED, or with `forward = "ip:port"`
-- relayed as raw bytes to that upstream (UDP for UDP clients, TCP for TCP
-- clients); an answer must come from the upstream address with the same
-- id and question, else the client gets SERVFAIL after `forward_timeout`.
-- @module wgoverlay.dns_server
local uv = require "luv"
local dns = require "wgoverlay.dns"

local spack = string.pack

local M = {}

--- Defaults for `new`.
M.DEFAULTS = {
  host = "127.0.0.1", port = 53, forward = nil,
  forward_timeout = 2,   -- seconds before a forwarded query gets SERVFAIL
  max_forward = 256,     -- forwarded queries in flight
  tcp_idle = 10,         -- seconds a TCP connection may stay silent
  max_tcp = 64,          -- TCP connections at once
  max_tcp_pending = 16,  -- forwarded queries in flight per TCP connection
  udp_max = dns.UDP_MAX, -- largest UDP answer
}

local WRITE_QUEUE_MAX = 256 * 1024

local Server = {}
Server.__index = Server

--- Split "ip:port", "[v6]:port", "ip" or "v6" (port 53).
-- @treturn table `{ip, port, v6}` or nil, message
function M.parse_endpoint(s)
  if type(s) ~= "string" then return nil, "endpoint must be a string" end
  local ip, port = s:match("^%[([%x:.]+)%]:(%d+)$")
  if not ip then ip, port = s:match("^([%d.]+):(%d+)$") end
  if not ip then
    if s:match("^[%d.]+$") or (s:match("^[%x:.]+$") and s:find(":", 1, true)) then ip = s end
  end
  port = tonumber(port or 53)
  if not ip or port < 1 or port > 65535 then return nil, ("bad endpoint %q (want ip:port)"):format(s) end
  return { ip = ip, port = port, v6 = ip:find(":", 1, true) ~= nil }
end

--- A server for `opts.zone`.
-- @tparam table opts `zone` (required), `host` (string or list, default
--   "127.0.0.1"), `port` (53; 0 picks a free port, see `port()`),
--   `forward` ("ip:port" or nil), `forward_timeout` (2 s), `max_forward`
--   (256), `tcp_idle` (10 s), `max_tcp` (64), `max_tcp_pending` (16),
--   `udp_max` (1232), `log` (function(message), optional)
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
    local up, err = M.parse_endpoint(cfg.forward)
    if not up then return nil, err end
    self.upstream = up
  end
  self.log = opts.log or function() end
  self.handles = {}   -- every open handle -> true (closed by stop)
  self.conns = {}     -- TCP connection -> true
  self.nconns, self.inflight = 0, 0
  return self
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

-- Answer `query`; `reply(bytes)` is called at most once (now, or later for
-- a forwarded query).  Returns false when the message is dropped (no
-- reply will ever come).
function Server:_handle(query, transport, reply)
  local ok, resp, reason = pcall(self.zone.answer, self.zone, query,
    { transport = transport, udp_max = self.cfg.udp_max, forward = self.upstream ~= nil })
  if not ok then
    self.log("dns: zone error: " .. tostring(resp))
    resp = self:_servfail(query)
  end
  if resp then
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
  local ok, err = sock:bind(up.v6 and "::" or "0.0.0.0", 0)
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

-- Pops one length-framed message from conn.buf (or nil).
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
    sock:write(spack(">s2", query))
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
  self:_handle(data, "udp", function(resp)
    if not self.stopped and not udp:is_closing() then
      udp:send(resp, addr.ip, addr.port, function() end)
    end
  end)
end

function Server:_close_conn(conn)
  if conn.closed then return end
  conn.closed = true
  self.conns[conn] = nil
  self.nconns = self.nconns - 1
  self:_close(conn.timer)
  self:_close(conn.sock)
end

-- Reply on a connection unless it has gone or its client stopped reading.
function Server:_tcp_reply(conn, resp)
  if conn.closed then return end
  conn.pending = conn.pending - 1
  if conn.sock:get_write_queue_size() > WRITE_QUEUE_MAX then return self:_close_conn(conn) end
  conn.sock:write(spack(">s2", resp))
end

function Server:_on_tcp_data(conn, err, chunk)
  if err or not chunk then return self:_close_conn(conn) end
  conn.timer:again()
  conn.buf = conn.buf .. chunk
  while not conn.closed do
    local msg = pop_frame(conn)
    if not msg then break end
    if #msg == 0 then return self:_close_conn(conn) end
    conn.pending = conn.pending + 1
    local function reply(resp) self:_tcp_reply(conn, resp) end
    if conn.pending > self.cfg.max_tcp_pending then
      local fail = self:_servfail(msg)
      if fail then reply(fail) else conn.pending = conn.pending - 1 end
    elseif not self:_handle(msg, "tcp", reply) then
      conn.pending = conn.pending - 1
    end
  end
end

function Server:_on_accept(listener)
  local sock = self:_track(uv.new_tcp())
  if not listener:accept(sock) then return self:_close(sock) end
  if self.nconns >= self.cfg.max_tcp then
    self.log("dns: too many TCP connections")
    return self:_close(sock)
  end
  local conn = { sock = sock, buf = "", pending = 0 }
  conn.timer = self:_track(uv.new_timer())
  self.conns[conn] = true
  self.nconns = self.nconns + 1
  local idle = math.floor(self.cfg.tcp_idle * 1000)
  conn.timer:start(idle, idle, function() self:_close_conn(conn) end)
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
