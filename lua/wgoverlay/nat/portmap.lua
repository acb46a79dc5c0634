--- Port mapping: the node asks its router for a UDP mapping of its
-- WireGuard port, with NAT-PMP (RFC 6886, Debian's libnatpmp) or UPnP IGD
-- (libminiupnpc), both through wgoverlay.core (csrc/lua_portmap.c); keeps
-- it (renewed at half its lease; a router that forgot it gets it again at
-- the next renewal), and deletes it when the daemon stops.  The mapping's
-- public side is published as a candidate of type "mapped"
-- (wgoverlay.nat.candidates): a peer reaches us there even when our NAT is
-- symmetric, so two nodes behind symmetric NATs whose routers map ports
-- connect without the relay ("port-mapped", wgoverlay.nat.policy).
--
-- The order: NAT-PMP first (one UDP exchange with the default gateway),
-- then UPnP (an SSDP discovery, then SOAP over HTTP); a renewal asks the
-- protocol that gave the mapping first.  We ask for the same external port
-- as our WireGuard port, and accept whatever port the router gives.
--
-- The library calls block (a discovery waits `TIMEOUT_MS`), so they run on
-- a thread of luv's pool (`M.thread_executor`) and never on the daemon's
-- loop; only the deletion at stop runs in line (`stop`: the loop is ending,
-- and the deletion must be done before the process exits).  The state
-- machine (`M.new`) is pure: it is handed an executor and a clock, which
-- the unit spec replaces.
-- @module wgoverlay.nat.portmap
local M = {}

M.LEASE = 120          -- s asked for (a setting: portmap_lease)
M.RETRY = 15           -- s after a failed attempt (doubling up to RETRY_MAX)
M.RETRY_MAX = 300
M.PERMANENT_CHECK = 300 -- s between renewals of a permanent (lease 0) mapping
M.TIMEOUT_MS = 1500    -- per protocol: NAT-PMP answer, SSDP discovery
M.DESCRIPTION = "wgoverlay"

-- ---------------------------------------------------------------------
-- the jobs (run on a pool thread, or in line at stop)
-- ---------------------------------------------------------------------

local function do_natpmp(core, job)
  local r, err = core.natpmp_map(job.port, job.external, job.lease, M.TIMEOUT_MS)
  if not r then return nil, err end
  return { protocol = "natpmp", external_ip = r.external_ip, external_port = r.external_port, lease = r.lifetime,
           gateway = r.gateway }
end

local function do_upnp(core, job)
  local r, err = core.upnp_map(job.port, job.external, job.lease, M.DESCRIPTION, M.TIMEOUT_MS)
  if not r then return nil, err end
  return { protocol = "upnp", external_ip = r.external_ip, external_port = r.external_port, lease = r.lease,
           gateway = r.control_url, control_url = r.control_url, service_type = r.service_type }
end

--- Runs a job with the library calls; blocks.
-- @tparam table job `op` ("map" or "unmap"), `port` (ours), `external`
--   (the external port wanted, or the mapping's), `lease`, `protocol` (the
--   one to try first for "map"; the mapping's for "unmap"),
--   `control_url`, `service_type` (a UPnP mapping's)
-- @return result `{ protocol, external_ip, external_port, lease, gateway,
--   control_url, service_type }` (for "unmap": `{ protocol }`), or nil and
--   a message
function M.run_job(job)
  local core = require "wgoverlay.core"
  if job.op == "unmap" then
    local ok, err
    if job.protocol == "natpmp" then
      ok, err = core.natpmp_map(job.port, 0, 0, M.TIMEOUT_MS)
    elseif job.protocol == "upnp" then
      ok, err = core.upnp_delete(job.control_url, job.service_type, job.external)
    else
      return nil, "unknown protocol " .. tostring(job.protocol)
    end
    if not ok then return nil, err end
    return { protocol = job.protocol }
  end
  local order = { { "natpmp", do_natpmp }, { "upnp", do_upnp } }
  if job.protocol == "upnp" then order = { order[2], order[1] } end
  local errs = {}
  for _, p in ipairs(order) do
    local r, err = p[2](core, job)
    if r then return r end
    errs[#errs + 1] = err
  end
  return nil, table.concat(errs, "; ")
end

local FIELDS = { "protocol", "external_ip", "external_port", "lease", "gateway", "control_url", "service_type" }

--- Runs jobs on luv's thread pool.  The job and its result cross threads
-- as flat strings and numbers (what luv passes).
-- @return function(job, callback(result or nil, message))
function M.thread_executor()
  local uv = require "luv"
  local pending -- the callback of the job running
  local work = uv.new_work(function(path, cpath, op, port, external, lease, protocol, control_url, service_type)
    package.path, package.cpath = path, cpath
    local pm = require "wgoverlay.nat.portmap"
    local ok, r, err = pcall(pm.run_job, { op = op, port = port, external = external, lease = lease,
      protocol = protocol ~= "" and protocol or nil, control_url = control_url, service_type = service_type })
    if not ok then return false, tostring(r) end
    if not r then return false, tostring(err) end
    return true, "", r.protocol or "", r.external_ip or "", r.external_port or 0, r.lease or 0, r.gateway or "",
      r.control_url or "", r.service_type or ""
  end, function(ok, err, ...)
    local cb = pending
    pending = nil
    if not cb then return end
    if not ok then return cb(nil, err) end
    local r, vals = {}, { ... }
    for i, k in ipairs(FIELDS) do
      local v = vals[i]
      if type(v) == "number" then v = math.tointeger(v) or v end -- (numbers cross threads as floats)
      if v ~= "" then r[k] = v end
    end
    cb(r)
  end)
  return function(job, cb)
    assert(pending == nil, "portmap: one job at a time")
    pending = cb
    return work:queue(package.path, package.cpath, job.op, job.port, job.external or 0, job.lease or 0,
      job.protocol or "", job.control_url or "", job.service_type or "")
  end
end

--- Whether `ip` (text) is an IPv4 address of the private ranges a NAT
-- hides (RFC 1918, and RFC 6598's shared range of carrier-grade NATs).
function M.private_ipv4(ip)
  local a, b = tostring(ip):match("^(%d+)%.(%d+)%.%d+%.%d+$")
  a, b = tonumber(a), tonumber(b)
  if not a then return false end
  return a == 10 or (a == 172 and b >= 16 and b <= 31) or (a == 192 and b == 168) or (a == 100 and b >= 64 and b <= 127)
end

--- Whether a node maps its port: the `portmap` setting is not 0 and its
-- own address (`endpoint`, "IP:PORT") is a private one, behind a NAT (a
-- node with a public address needs no mapping, and never sends discovery
-- traffic).
function M.wanted(settings, ep)
  if settings and settings.portmap == 0 then return false end
  return M.private_ipv4(tostring(ep):match("^([%d.]+):%d+$"))
end

-- ---------------------------------------------------------------------
-- the state machine
-- ---------------------------------------------------------------------

local Portmap = {}
Portmap.__index = Portmap

--- Creates the mapper of one WireGuard port.
-- @tparam table o `port` (our WireGuard port), `lease` (s, default LEASE),
--   `exec` (function(job, callback): runs a job asynchronously, see
--   `M.thread_executor`), `run` (function(job): runs one in line, for
--   `stop`; default `M.run_job`), `clock` (seconds), `log`
function M.new(o)
  local port = math.tointeger(o.port)
  assert(port and port >= 1 and port <= 65535, "portmap: port must be 1..65535")
  local lease = o.lease or M.LEASE
  assert(type(lease) == "number" and lease > 0, "portmap: lease must be positive")
  return setmetatable({
    port = port, lease = math.max(1, math.floor(lease)), exec = o.exec, run = o.run or M.run_job,
    clock = o.clock, log = o.log or function() end,
    state = "idle",        -- "idle", "requesting", "mapped", "failed", "stopped"
    next_at = o.clock(),   -- when the next request is due
    attempts = 0,          -- failures in a row
    mapping = nil,         -- { protocol, external_ip, external_port, lease, gateway, ..., at, expires }
    error = nil,
  }, Portmap)
end

--- Whether the first attempt is still under way.
function Portmap:first_pending() return self.attempts == 0 and self.mapping == nil and self.error == nil end

--- The mapped "IP:PORT" while the mapping is believed to hold, or nil.
function Portmap:mapped(now)
  local m = self.mapping
  if not m then return nil end
  if m.expires and (now or self.clock()) >= m.expires then return nil end
  return m.external_ip .. ":" .. m.external_port
end

--- When a mapping is renewed: at half its lease (a permanent one is asked
-- again every PERMANENT_CHECK s, which finds a router that forgot it).
function M.renew_after(lease)
  if not lease or lease <= 0 then return M.PERMANENT_CHECK end
  return math.max(1, lease / 2)
end

--- The wait after `n` failures in a row.
function M.retry_after(n)
  return math.min(M.RETRY_MAX, M.RETRY * 2 ^ math.max(0, n - 1))
end

--- Asks again now (a path died: perhaps the router forgot the mapping).
function Portmap:refresh(now)
  if self.state ~= "stopped" then self.next_at = math.min(self.next_at, now or self.clock()) end
end

--- Starts a request when one is due.
function Portmap:tick(now)
  now = now or self.clock()
  if self.state == "requesting" or self.state == "stopped" or now < self.next_at then return end
  local m = self.mapping
  if m and m.expires and now >= m.expires then
    self.log("port mapping %s:%d (%s) expired", m.external_ip, m.external_port, m.protocol)
    self.mapping = nil
  end
  m = self.mapping
  local job = { op = "map", port = self.port, external = m and m.external_port or self.port, lease = self.lease,
                protocol = m and m.protocol or nil }
  self.state = "requesting"
  self.exec(job, function(r, err) self:_done(r, err) end)
end

function Portmap:_done(r, err)
  if self.state == "stopped" then return end
  local now = self.clock()
  if r and type(r.external_ip) == "string" and math.type(r.external_port) == "integer"
      and r.external_port >= 1 and r.external_port <= 65535 then
    local old = self.mapping
    local lease = math.type(r.lease) == "integer" and r.lease or 0
    r.at = now
    r.expires = lease > 0 and now + lease or nil
    self.mapping = r
    self.error = nil
    self.attempts = 0
    self.state = "mapped"
    self.next_at = now + M.renew_after(lease)
    if not old or old.external_ip ~= r.external_ip or old.external_port ~= r.external_port
        or old.protocol ~= r.protocol then
      self.log("port mapping: %s:%d -> our port %d (%s, lease %d s)", r.external_ip, r.external_port, self.port,
        r.protocol, lease)
    end
    return
  end
  err = err or "the router's answer lacks an address"
  self.attempts = self.attempts + 1
  if self.error ~= err then self.log("port mapping failed: %s", err) end
  self.error = err
  self.state = self:mapped(now) and "mapped" or "failed"
  if self.state == "failed" then self.mapping = nil end
  self.next_at = now + M.retry_after(self.attempts)
end

--- For status: `{ state, protocol, external, lease, gateway, expires_in,
-- renew_in, error }`.
function Portmap:status(now)
  now = now or self.clock()
  local m = self.mapping
  local s = { state = self.state, error = self.error }
  if m then
    s.protocol, s.external, s.lease, s.gateway = m.protocol, self:mapped(now), m.lease, m.gateway
    s.expires_in = m.expires and math.max(0, m.expires - now) or nil
  end
  if self.state ~= "requesting" and self.state ~= "stopped" then s.renew_in = math.max(0, self.next_at - now) end
  return s
end

--- Deletes the mapping (in line: blocks for at most about TIMEOUT_MS) and
-- stops.  A request still running on its thread is abandoned: the router
-- drops what it may have mapped when its lease ends.
-- @return true, or nil and a message
function Portmap:stop()
  local m = self.mapping
  self.state = "stopped"
  self.mapping = nil
  if not m then return true end
  local r, err = self.run({ op = "unmap", port = self.port, external = m.external_port, protocol = m.protocol,
                            control_url = m.control_url, service_type = m.service_type })
  if not r then
    self.log("port mapping %s:%d not deleted: %s", m.external_ip, m.external_port, tostring(err))
    return nil, err
  end
  self.log("port mapping %s:%d deleted (%s)", m.external_ip, m.external_port, m.protocol)
  return true
end

return M
