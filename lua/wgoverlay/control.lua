--- The daemon's control socket (`<state>/control.sock`, 0600, root-only):
-- one JSON request per connection, one JSON answer, then the connection
-- closes.  The server side runs inside the daemon's luv loop; the client
-- side (`request`) is what the CLI's status, attach, detach, token,
-- remove-node and rotate-key use.
-- @module wgoverlay.control
local uv = require "luv"
local cjson = require "cjson"
local cluster = require "wgoverlay.cluster"
local jsonlines = require "wgoverlay.jsonlines"

local M = {}

M.TIMEOUT = 10 -- seconds a client waits for the daemon's answer

local Server = {}
Server.__index = Server

--- Listens on `path` (an old socket file there is replaced).
-- @tparam table o `path`, `handle(request, reply) -> answer table`,
--   `log(fmt, ...)`, `guard(where, fn)` (wraps the accept callback).  A
--   handler that returns nil answers later, once, with `reply(answer)`
--   (rotate-key waits for the registry that way).
-- @return server, or nil and a message
function M.listen(o)
  os.remove(o.path)
  local pipe = uv.new_pipe(false)
  local ok, err = pipe:bind(o.path)
  if not ok then
    pipe:close()
    return nil, "control socket: " .. tostring(err)
  end
  uv.fs_chmod(o.path, tonumber("600", 8))
  local self = setmetatable({ pipe = pipe, path = o.path }, Server)
  pipe:listen(16, o.guard("control accept", function()
    local conn = uv.new_pipe(false)
    if not pipe:accept(conn) then
      conn:close()
      return
    end
    -- one request, one answer, then the connection closes (after the
    -- answer is written, or at once when the client has gone)
    jsonlines.wrap(conn, {
      on_line = function(c, line)
        if c.answered then return end
        c.answered = true
        local okd, req = pcall(cjson.decode, line)
        local function reply(resp) c:send(resp, function() c:close() end) end
        if not okd then return reply({ ok = false, error = "bad request" }) end
        local resp = o.handle(req, reply)
        if resp ~= nil then reply(resp) end
      end,
      log = function(fmt, ...) o.log("control socket: " .. fmt, ...) end,
    }):start()
  end))
  return self
end

--- Stops listening and removes the socket file.
function Server:close()
  if not self.pipe:is_closing() then self.pipe:close() end
  os.remove(self.path)
end

--- Sends one request to the daemon of state directory `dir` and waits
-- for its answer (its own short luv loop).
-- @return the result table, or nil and a message
function M.request(dir, req)
  local path = cluster.paths(dir).control
  local pipe = uv.new_pipe(false)
  local timer = uv.new_timer()
  local resp, err
  local function done(e)
    err = err or e
    if not pipe:is_closing() then pipe:close() end
    if not timer:is_closing() then timer:close() end
  end
  pipe:connect(path, function(cerr)
    if cerr then
      -- EACCES: the state directory (0700) or the socket (0600) is
      -- root-only; whether a daemon runs cannot be told from here.
      if tostring(cerr):match("^EACCES") or tostring(cerr):match("^EPERM") then
        return done(string.format("permission denied: the control socket of %s is root-only (run as root)", dir))
      end
      return done(string.format("no daemon runs for %s (%s)", dir, cerr))
    end
    local conn = jsonlines.wrap(pipe, {
      on_line = function(_, line)
        local ok, r = pcall(cjson.decode, line)
        resp = ok and type(r) == "table" and r or nil
        done(resp and nil or "bad answer from the daemon")
      end,
      on_close = function() done("the daemon closed the connection") end,
    })
    conn:start()
    conn:send(req)
  end)
  timer:start(M.TIMEOUT * 1000, 0, function() done("the daemon did not answer") end)
  uv.run()
  if not resp then return nil, err or "no answer" end
  -- `kind` (when the daemon gives one) classifies the refusal for the CNI
  -- plugin: "invalid", "exists", "exhausted", "missing", "changed", "failed"
  if not resp.ok then return nil, resp.error, type(resp.kind) == "string" and resp.kind or nil end
  return resp.result
end

return M
