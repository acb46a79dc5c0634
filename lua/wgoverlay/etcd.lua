--- An etcd v3 client over etcd's JSON gateway (`/v3/...`), on the luv
-- loop through wgoverlay.http (libcurl): every call is asynchronous and
-- takes a callback `cb(result, err)`.
--
--   local e = etcd.new({ endpoints = { "https://10.0.0.1:2379", ... },
--                        user = "wgo", password = "...",       -- optional
--                        cacert = FILE, cert = FILE, key = FILE, -- optional
--                        timeout_ms = 5000 })
--   e:get(key, cb)                 -> cb(kv or false, err)   kv: {key, value, mod_revision, ...}
--   e:range(prefix, cb)            -> cb({kvs = {...}, revision = N}, err)
--   e:put(key, value, opts, cb)    opts.lease
--   e:delete(key, cb) / e:delete_prefix(prefix, cb)
--   e:txn({compare = {...}, success = {...}, failure = {...}}, cb)
--                                  -> cb({succeeded = bool, responses = {...}, revision = N}, err)
--   e:grant(ttl, cb) -> cb(lease_id); e:keepalive(id, cb) -> cb(ttl) (0: expired); e:revoke(id, cb)
--   local w = e:watch(prefix, start_revision, on_events, on_reset)
--   w:cancel()
--
-- Keys and values are Lua strings (bytes); revisions and lease IDs are
-- integers.  The client tries its endpoints in turn: a transport failure
-- or an unavailable member moves to the next one; "invalid auth token"
-- authenticates again once.  A watch that breaks is resumed from the
-- revision after the last one it delivered; if etcd compacted that
-- revision away, `on_reset()` tells the owner to read everything again
-- (and the watch resumes after that read's revision, `w:resume_at(rev)`).
-- @module wgoverlay.etcd
local uv = require "luv"
local cjson = require "cjson.safe"
local core = require "wgoverlay.core"
local http = require "wgoverlay.http"

local b64, unb64 = core.base64_encode, core.base64_decode

local M = {}
M.RETRY_DELAY_MS = 500

local E = {}
E.__index = E

--- The key that ends the range of all keys starting with `prefix`.
function M.prefix_end(prefix)
  local i = #prefix
  while i > 0 do
    local c = prefix:byte(i)
    if c < 0xff then return prefix:sub(1, i - 1) .. string.char(c + 1) end
    i = i - 1
  end
  return "\0" -- every key
end

--- Parses "etcd://HOST:PORT" / "etcds://HOST:PORT" / "http(s)://HOST:PORT"
-- lists (comma-separated, or a table) into gateway base URLs.
-- etcd:// means plain HTTP, etcds:// HTTPS (also chosen when a CA is given).
function M.parse_endpoints(spec, tls)
  local list = type(spec) == "table" and spec or {}
  if type(spec) == "string" then
    for part in spec:gmatch("[^,]+") do list[#list + 1] = part end
  end
  if #list == 0 then return nil, "no etcd endpoint given" end
  local out = {}
  for _, raw in ipairs(list) do
    local s = raw:match("^%s*(.-)%s*$")
    local scheme, hostport = s:match("^(%a+)://(.+)$")
    if not scheme then return nil, string.format("etcd endpoint %q: expected etcd://HOST:PORT", raw) end
    scheme = scheme:lower()
    local secure
    if scheme == "etcd" or scheme == "http" then secure = tls and true or false
    elseif scheme == "etcds" or scheme == "https" then secure = true
    else return nil, string.format("etcd endpoint %q: unknown scheme %s:// (etcd://, etcds://)", raw, scheme) end
    local host, port = hostport:match("^(%[[%x:%.]+%]):(%d+)/?$")
    if not host then host, port = hostport:match("^([%w%.%-]+):(%d+)/?$") end
    port = tonumber(port)
    if not host or not port or port < 1 or port > 65535 then
      return nil, string.format("etcd endpoint %q: expected HOST:PORT with a port 1-65535", raw)
    end
    out[#out + 1] = (secure and "https://" or "http://") .. host .. ":" .. port
  end
  return out
end

--- A client.  `o.http` may share a wgoverlay.http client.
function M.new(o)
  assert(type(o) == "table" and o.endpoints and #o.endpoints > 0, "etcd.new: endpoints required")
  local hc = o.http
  if not hc then
    local err
    hc, err = http.new()
    if not hc then return nil, err end
  end
  return setmetatable({
    endpoints = o.endpoints, cur = 1, user = o.user, password = o.password,
    cacert = o.cacert, cert = o.cert, key = o.key,
    timeout_ms = o.timeout_ms or 5000, http = hc, own_http = not o.http,
    token = nil, authing = nil, watches = {}, closed = false,
    stats = { requests = 0, failovers = 0 },
  }, E)
end

function E:_opts(path, body, stream)
  local headers = { "Content-Type: application/json" }
  if self.token then headers[#headers + 1] = "Authorization: " .. self.token end
  return {
    url = self.endpoints[self.cur] .. path, method = "POST", body = body, headers = headers,
    timeout_ms = (not stream) and self.timeout_ms or 0, connect_timeout_ms = math.min(self.timeout_ms, 3000),
    cainfo = self.cacert, cert = self.cert, key = self.key,
  }
end

local function gateway_error(status, body)
  local j = cjson.decode(body or "")
  local msg = type(j) == "table" and (j.message or j.error) or nil
  if type(msg) ~= "string" then msg = (body and #body > 0) and body:sub(1, 200) or "no body" end
  return string.format("etcd: HTTP %d: %s", status, msg), j
end

-- Transport failures and "no leader"/"unavailable" answers move to the next endpoint.
local function retryable(status, msg)
  if status == 0 then return true end
  if status == 503 or status == 502 or status == 504 then return true end
  msg = (msg or ""):lower()
  return msg:find("no leader", 1, true) or msg:find("unavailable", 1, true) or msg:find("timed out", 1, true)
end

-- authenticate, then cb(ok, err)
function E:_auth(cb)
  if not self.user then return cb(true) end
  if self.authing then
    table.insert(self.authing, cb)
    return
  end
  self.authing = { cb }
  local body = cjson.encode({ name = self.user, password = self.password })
  local tries = 0
  local function attempt()
    self.token = nil
    self.http:request(self:_opts("/v3/auth/authenticate", body), function(ok, status, resp)
      local err
      if ok and status == 200 then
        local j = cjson.decode(resp)
        if type(j) == "table" and type(j.token) == "string" then self.token = j.token
        else err = "etcd: authenticate: no token in the answer" end
      else
        err = ok and gateway_error(status, resp) or ("etcd: " .. tostring(resp))
        tries = tries + 1
        if retryable(ok and status or 0, err) and tries < #self.endpoints then
          self.cur = self.cur % #self.endpoints + 1
          self.stats.failovers = self.stats.failovers + 1
          return attempt()
        end
      end
      local waiting = self.authing
      self.authing = nil
      for _, f in ipairs(waiting) do f(err == nil, err) end
    end)
  end
  attempt()
end

--- A raw gateway call: cb(decoded_json, err).  Fails over across
-- endpoints (one full round), re-authenticates once.
function E:call(path, req, cb)
  if self.closed then return cb(nil, "etcd: client closed") end
  local body = cjson.encode(req)
  local tries, reauthed = 0, false
  local function attempt()
    if self.user and not self.token then
      return self:_auth(function(ok, err)
        if not ok then return cb(nil, err) end
        attempt()
      end)
    end
    self.stats.requests = self.stats.requests + 1
    local h, herr = self.http:request(self:_opts(path, body), function(ok, status, resp)
      if self.closed then return end
      if ok and status == 200 then
        local j = cjson.decode(resp)
        if type(j) ~= "table" then return cb(nil, "etcd: undecodable answer from " .. path) end
        return cb(j)
      end
      local msg = ok and gateway_error(status, resp) or ("etcd: " .. tostring(resp))
      local low = msg:lower()
      if self.user and not reauthed and (low:find("invalid auth token", 1, true) or low:find("token", 1, true)
          and status == 401) then
        reauthed = true
        self.token = nil
        return attempt()
      end
      tries = tries + 1
      if retryable(ok and status or 0, msg) and tries < #self.endpoints then
        self.cur = self.cur % #self.endpoints + 1
        self.stats.failovers = self.stats.failovers + 1
        if self.user then self.token = nil end -- tokens are per member with simple tokens
        return attempt()
      end
      cb(nil, msg)
    end)
    if not h then cb(nil, "etcd: " .. tostring(herr)) end
  end
  attempt()
end

local function int(v) return tonumber(v) or 0 end

local function decode_kv(kv)
  return {
    key = unb64(kv.key or ""), value = kv.value and unb64(kv.value) or "",
    create_revision = int(kv.create_revision), mod_revision = int(kv.mod_revision),
    version = int(kv.version), lease = int(kv.lease),
  }
end
M.decode_kv = decode_kv

local function revision(j) return int(j.header and j.header.revision) end

function E:get(key, cb)
  self:call("/v3/kv/range", { key = b64(key) }, function(j, err)
    if not j then return cb(nil, err) end
    local kv = j.kvs and j.kvs[1]
    cb(kv and decode_kv(kv) or false, nil, revision(j))
  end)
end

function E:range(prefix, cb)
  self:call("/v3/kv/range", { key = b64(prefix), range_end = b64(M.prefix_end(prefix)) }, function(j, err)
    if not j then return cb(nil, err) end
    local kvs = {}
    for i, kv in ipairs(j.kvs or {}) do kvs[i] = decode_kv(kv) end
    cb({ kvs = kvs, revision = revision(j) })
  end)
end

--- Request builders for txn.
function M.put_op(key, value, lease)
  return { request_put = { key = b64(key), value = b64(value), lease = lease and tostring(lease) or nil } }
end
function M.delete_op(key) return { request_delete_range = { key = b64(key) } } end
function M.delete_prefix_op(prefix)
  return { request_delete_range = { key = b64(prefix), range_end = b64(M.prefix_end(prefix)) } }
end
function M.range_op(key) return { request_range = { key = b64(key) } } end
--- Compare: target "CREATE" | "MOD" | "VERSION" | "VALUE"; result "EQUAL" | "NOT_EQUAL" | "LESS" | "GREATER".
function M.cmp(key, target, result, v)
  local c = { key = b64(key), target = target, result = result }
  if target == "VALUE" then c.value = b64(v)
  elseif target == "CREATE" then c.create_revision = tostring(v)
  elseif target == "MOD" then c.mod_revision = tostring(v)
  elseif target == "VERSION" then c.version = tostring(v) end
  return c
end

function E:put(key, value, opts, cb)
  local req = M.put_op(key, value, opts and opts.lease).request_put
  self:call("/v3/kv/put", req, function(j, err)
    if not j then return cb(nil, err) end
    cb(true, nil, revision(j))
  end)
end

function E:delete(key, cb)
  self:call("/v3/kv/deleterange", { key = b64(key) }, function(j, err)
    if not j then return cb(nil, err) end
    cb(int(j.deleted), nil, revision(j))
  end)
end

function E:delete_prefix(prefix, cb)
  self:call("/v3/kv/deleterange", { key = b64(prefix), range_end = b64(M.prefix_end(prefix)) }, function(j, err)
    if not j then return cb(nil, err) end
    cb(int(j.deleted), nil, revision(j))
  end)
end

function E:txn(t, cb)
  local req = { compare = t.compare or {}, success = t.success or {}, failure = t.failure or {} }
  if #req.compare == 0 then req.compare = nil end
  if #req.success == 0 then req.success = nil end
  if #req.failure == 0 then req.failure = nil end
  self:call("/v3/kv/txn", req, function(j, err)
    if not j then return cb(nil, err) end
    local responses = {}
    for i, r in ipairs(j.responses or {}) do
      if r.response_range then
        local kvs = {}
        for k, kv in ipairs(r.response_range.kvs or {}) do kvs[k] = decode_kv(kv) end
        responses[i] = { kvs = kvs }
      else
        responses[i] = r
      end
    end
    cb({ succeeded = j.succeeded == true, responses = responses, revision = revision(j) })
  end)
end

function E:grant(ttl, cb)
  self:call("/v3/lease/grant", { TTL = tostring(ttl) }, function(j, err)
    if not j then return cb(nil, err) end
    if j.error and j.error ~= "" then return cb(nil, "etcd: lease grant: " .. tostring(j.error)) end
    cb(int(j.ID), nil, int(j.TTL))
  end)
end

--- One keep-alive; cb(ttl) with ttl 0 when the lease is gone.
function E:keepalive(id, cb)
  self:call("/v3/lease/keepalive", { ID = tostring(id) }, function(j, err)
    if not j then return cb(nil, err) end
    local r = j.result or j
    cb(int(r.TTL))
  end)
end

function E:revoke(id, cb)
  self:call("/v3/lease/revoke", { ID = tostring(id) }, function(j, err)
    if cb then cb(j ~= nil, err) end
  end)
end

-- Watches ---------------------------------------------------------------

local W = {}
W.__index = W

--- Watches every key under `prefix` from `start_revision` (0: from now).
-- on_events(events, revision): events = { {type = "PUT"|"DELETE", kv = kv}, ... }
-- on_reset(): the revision to resume from was compacted; read everything
-- again and call w:resume_at(read_revision).
-- on_state(connected, err) (optional): the stream came up or broke.
function E:watch(prefix, start_revision, on_events, on_reset, on_state)
  local w = setmetatable({ e = self, prefix = prefix, next_rev = start_revision or 0,
                           on_events = on_events, on_reset = on_reset, on_state = on_state or function() end,
                           buf = "", h = nil, timer = nil, cancelled = false, connected = false }, W)
  self.watches[w] = true
  w:_open()
  return w
end

function W:_retry(err)
  if self.cancelled then return end
  if self.connected then
    self.connected = false
    self.on_state(false, err)
  end
  self.e.cur = self.e.cur % #self.e.endpoints + 1
  self.timer = self.timer or uv.new_timer()
  self.timer:start(M.RETRY_DELAY_MS, 0, function() self:_open() end)
end

function W:_line(line)
  local j = cjson.decode(line)
  if type(j) ~= "table" then return end
  if j.error then
    local msg = type(j.error) == "table" and (j.error.message or j.error.error) or j.error
    return self:_retry("etcd watch: " .. tostring(msg))
  end
  local r = j.result
  if type(r) ~= "table" then return end
  if r.created and not self.connected then
    self.connected = true
    self.on_state(true)
  end
  local compact = int(r.compact_revision)
  if compact > 0 and (r.canceled or compact >= self.next_rev) then
    -- what we missed is gone: the owner reads everything again
    self:_close_stream()
    self.pending_reset = true
    self.on_reset()
    return
  end
  if r.canceled then
    return self:_retry("etcd watch cancelled: " .. tostring(r.cancel_reason or ""))
  end
  if not r.created and (not r.events or #r.events == 0) and revision(r) >= self.next_rev then
    -- a progress notification: everything up to that revision was seen
    self.next_rev = revision(r) + 1
  end
  if r.events and #r.events > 0 then
    local evs, last = {}, 0
    for i, ev in ipairs(r.events) do
      local kv = decode_kv(ev.kv or {})
      evs[i] = { type = ev.type or "PUT", kv = kv }
      if kv.mod_revision > last then last = kv.mod_revision end
    end
    local rev = math.max(last, revision(r))
    self.next_rev = rev + 1
    self.on_events(evs, rev)
  end
end

function W:_close_stream()
  if self.h then
    self.e.http:cancel(self.h)
    self.h = nil
  end
  self.buf = ""
end

function W:_open()
  if self.cancelled or self.e.closed then return end
  self:_close_stream()
  local e = self.e
  if e.user and not e.token then
    return e:_auth(function(ok, err)
      if not ok then return self:_retry(err) end
      self:_open()
    end)
  end
  local req = { create_request = { key = b64(self.prefix), range_end = b64(M.prefix_end(self.prefix)),
                                   start_revision = self.next_rev > 0 and tostring(self.next_rev) or nil,
                                   progress_notify = true } }
  local h, err = e.http:stream(e:_opts("/v3/watch", cjson.encode(req), true), function(bytes)
    if self.cancelled then return end
    self.buf = self.buf .. bytes
    if #self.buf > 16 * 1024 * 1024 then return self:_retry("etcd watch: message over 16 MiB") end
    while true do
      local nl = self.buf:find("\n", 1, true)
      if not nl then break end
      local line = self.buf:sub(1, nl - 1)
      self.buf = self.buf:sub(nl + 1)
      self:_line(line)
      if not self.h or self.cancelled then break end
    end
  end, function(ok, status, msg)
    self.h = nil
    if self.cancelled or self.pending_reset then return end
    if ok and status == 401 then e.token = nil end
    self:_retry(ok and ("etcd watch ended (HTTP " .. tostring(status) .. ")") or ("etcd watch: " .. tostring(msg)))
  end)
  if not h then return self:_retry(err) end
  self.h = h
end

--- After a full read at revision `rev` (following on_reset): watch from rev+1.
function W:resume_at(rev)
  self.pending_reset = false
  self.next_rev = rev + 1
  self:_open()
end

function W:cancel()
  self.cancelled = true
  self:_close_stream()
  if self.timer and not self.timer:is_closing() then self.timer:close() end
  self.e.watches[self] = nil
end

function E:close()
  if self.closed then return end
  self.closed = true
  for w in pairs(self.watches) do w:cancel() end
  if self.own_http then self.http:close() end
end

return M
