--- JSON lines over a luv stream (TCP or Unix socket): the one framer of
-- the membership sessions and the control socket.
--
-- * One size cap, `M.MAX_LINE` (16 MiB, the largest registry snapshot we
--   send is far below it): a longer line closes the connection.
-- * Linear buffering: a partial line is kept as a list of chunks and
--   joined once, when its newline arrives.
-- * Writes never end the process: a write error (EPIPE, ECONNRESET; the CLI
--   ignores SIGPIPE) closes this connection only, and so does a peer that
--   stops reading while more than `M.MAX_QUEUED` bytes wait to be written.
-- * An error raised while handling one line is logged and closes this
--   connection; the daemon goes on.
-- @module wgoverlay.jsonlines
local cjson = require "cjson"

local M = {}

M.MAX_LINE = 16 * 1024 * 1024
M.MAX_QUEUED = 16 * 1024 * 1024

local Conn = {}
Conn.__index = Conn

--- Wraps a connected luv stream.
-- @param stream luv tcp or pipe handle
-- @tparam table opts `on_line(conn, line)` (required), `on_close(conn,
--   reason)` (called once; reason nil for our own close()), `log(fmt, ...)`
--   (for errors raised by on_line), `max_line` (default M.MAX_LINE)
function M.wrap(stream, opts)
  local c = setmetatable({ stream = stream, on_line = opts.on_line, on_close = opts.on_close,
                           log = opts.log, max_line = opts.max_line or M.MAX_LINE,
                           parts = {}, size = 0 }, Conn)
  return c
end

--- Starts reading; lines go to on_line until EOF, an error or close().
function Conn:start()
  local ok, err = self.stream:read_start(function(rerr, chunk)
    if rerr or not chunk then return self:close(rerr or "closed by peer") end
    self:feed(chunk)
  end)
  if not ok then self:close(err) end
  return self
end

-- Splits `chunk` into lines; each complete line goes to on_line.
function Conn:feed(chunk)
  local start = 1
  while not self.closed do
    local nl = chunk:find("\n", start, true)
    local piece = chunk:sub(start, nl and nl - 1 or nil)
    if #piece > 0 then
      self.size = self.size + #piece
      if self.size > self.max_line then return self:close("line over " .. self.max_line .. " bytes") end
      self.parts[#self.parts + 1] = piece
    end
    if not nl then return end
    local line = table.concat(self.parts)
    self.parts, self.size = {}, 0
    local ok, err = pcall(self.on_line, self, line)
    if not ok then
      if self.log then self.log("error handling a line: %s", tostring(err)) end
      return self:close("handler error")
    end
    start = nl + 1
  end
end

--- Sends one value as a JSON line (or a ready line with `raw`).  Returns
-- true, or nil and why; a failed write closes the connection.
function Conn:send(value, done)
  if self.closed then return nil, "closed" end
  local data = type(value) == "string" and value or (cjson.encode(value) .. "\n")
  if self.stream:get_write_queue_size() + #data > M.MAX_QUEUED then
    self:close("peer does not read")
    return nil, "peer does not read"
  end
  local ok, err = self.stream:write(data, function(werr)
    if werr then self:close(werr) end
    if done then done(werr) end
  end)
  if not ok then
    self:close(err)
    return nil, err
  end
  return true
end

--- Closes the stream once; on_close gets the reason (nil when we closed).
function Conn:close(reason)
  if self.closed then return end
  self.closed = true
  if not self.stream:is_closing() then self.stream:close() end
  if self.on_close then self.on_close(self, reason) end
end

--- A value as one JSON line (for sending the same line to many).
function M.line(value) return cjson.encode(value) .. "\n" end

return M
