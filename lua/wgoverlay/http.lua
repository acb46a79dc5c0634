--- An HTTP(S) client on the luv event loop: libcurl's multi interface
-- (wgoverlay.core.http_multi) with its sockets and timer watched by luv, so
-- a request or a long-lived stream never blocks the loop.
--
--   local c = http.new()
--   c:request({ url = ..., method = "POST", body = ..., headers = {...},
--               timeout_ms = ..., cainfo = ..., cert = ..., key = ... },
--             function(ok, status, body_or_message) ... end)
--   local h = c:stream(opts, on_chunk, on_done)   -- on_chunk(bytes); on_done(ok, status, message)
--   c:cancel(h)
--   c:close()
--
-- Callbacks run on the loop, after libcurl has returned (never inside one
-- of its callbacks); an error raised by one propagates to the loop's
-- caller like any luv callback's.
-- @module wgoverlay.http
local uv = require "luv"
local core = require "wgoverlay.core"

local M = {}

local Client = {}
Client.__index = Client

--- A client on the default luv loop.
function M.new()
  local m, err = core.http_multi()
  if not m then return nil, err end
  return setmetatable({ m = m, polls = {}, xfers = {}, timer = uv.new_timer() }, Client)
end

local function poll_events(what)
  if what == 1 then return "r" elseif what == 2 then return "w" else return "rw" end
end

-- After any call into curl: apply its socket and timer changes, deliver
-- data and completions.
function Client:_pump()
  local m = self.m
  if not m then return end
  for _, ch in ipairs(m:sockets()) do
    local fd, what = ch[1], ch[2]
    local p = self.polls[fd]
    if what == 4 then
      if p then
        p:stop()
        p:close()
        self.polls[fd] = nil
      end
    else
      if not p then
        p = uv.new_socket_poll(fd)
        self.polls[fd] = p
      end
      p:start(poll_events(what), function(err, events)
        local ev = 0
        if err then ev = 4
        else
          if events:find("r", 1, true) then ev = ev | 1 end
          if events:find("w", 1, true) then ev = ev | 2 end
        end
        self:_action(fd, ev)
      end)
    end
  end
  local t = m:timeout()
  if t then
    self.timer:stop()
    if t >= 0 then
      self.timer:start(t, 0, function() self:_action(-1, 0) end)
    end
  end
  for id, bytes in pairs(m:data()) do
    local x = self.xfers[id]
    if x then x:feed(bytes) end
  end
  for _, d in ipairs(m:done()) do
    local id, ok, status, msg, rest = d[1], d[2], d[3], d[4], d[5]
    local x = self.xfers[id]
    self.xfers[id] = nil
    if x then
      if rest then x:feed(rest) end
      x:finish(ok, status, msg)
    end
  end
end

function Client:_action(fd, ev)
  if not self.m then return end
  local ok, err = self.m:socket_action(fd, ev)
  if not ok then
    -- curl's multi handle itself failed (out of memory): fail every
    -- transfer rather than leave callers waiting
    for id, x in pairs(self.xfers) do
      self.xfers[id] = nil
      self.m:remove(id)
      x:finish(false, 0, err)
    end
  end
  self:_pump()
end

local function add(self, opts, x)
  if not self.m then return nil, "http: client is closed" end
  local id, err = self.m:add(opts)
  if not id then return nil, err end
  self.xfers[id] = x
  x.id = id
  -- let curl start the transfer (it asks for its timer on add)
  self:_pump()
  return x
end

--- One request; `cb(ok, status, body)` with ok true when a response came
-- (any status), else `cb(false, 0, message)`.
-- @return a handle for `cancel`, or nil, message
function Client:request(opts, cb)
  local parts = {}
  return add(self, opts, {
    feed = function(_, bytes) parts[#parts + 1] = bytes end,
    finish = function(_, ok, status, msg)
      if ok then cb(true, status, table.concat(parts)) else cb(false, status, msg) end
    end,
  })
end

--- A streamed response: `on_chunk(bytes)` as bytes arrive, then
-- `on_done(ok, status, message)`.
function Client:stream(opts, on_chunk, on_done)
  return add(self, opts, {
    feed = function(_, bytes) on_chunk(bytes) end,
    finish = function(_, ok, status, msg) on_done(ok, status, msg) end,
  })
end

--- Cancels a request or stream; its callback is not called.
function Client:cancel(h)
  if not (h and h.id and self.m) then return end
  if self.xfers[h.id] then
    self.xfers[h.id] = nil
    self.m:remove(h.id)
    self:_pump()
  end
end

--- Cancels everything and frees the client.
function Client:close()
  if not self.m then return end
  self.xfers = {}
  for fd, p in pairs(self.polls) do
    p:stop()
    if not p:is_closing() then p:close() end
    self.polls[fd] = nil
  end
  if not self.timer:is_closing() then self.timer:close() end
  self.m:close()
  self.m = nil
end

return M
