--- systemd readiness notification (the sd_notify protocol) in plain Lua.
--
-- Under `Type=notify` systemd sets NOTIFY_SOCKET to the path of a unix
-- datagram socket; the service sends newline-separated `KEY=VALUE`
-- assignments there (`READY=1`, `STATUS=...`, `STOPPING=1`).  Without
-- NOTIFY_SOCKET every call is a no-op.  Nothing here ever raises: a
-- failure is returned (nil, message) and written once to stderr, which
-- under systemd is the journal; the service goes on either way.
--
--   local sdnotify = require "wgoverlay.sdnotify"
--   sdnotify.ready("leader up, interface wgo0")  -- READY=1 once; later calls only update STATUS
--   sdnotify.status("waiting for the leader")
--   sdnotify.stopping("SIGTERM")                 -- STOPPING=1
--
-- Limit: luasocket sends to filesystem paths only, so an abstract-namespace
-- NOTIFY_SOCKET ("@name") is reported as unsupported.  systemd's own
-- manager uses the path /run/systemd/notify.
-- @module wgoverlay.sdnotify
local M = {}

-- What to write a failure to (tests replace it); nil writes to stderr.
M.log = nil

local sent_ready = false
local warned = false

local function warn(msg)
  if warned then return end
  warned = true
  local ok = pcall(function()
    if M.log then
      M.log(msg)
    else
      io.stderr:write("wgoverlay: sd_notify: ", msg, "\n")
    end
  end)
  return ok
end

-- A STATUS value is one line: newlines would start a new assignment.
local function one_line(s)
  return (tostring(s):gsub("[\r\n]+", " "))
end

--- Sends one notification message (already formatted as `KEY=VALUE` lines)
-- to $NOTIFY_SOCKET.
-- @tparam string msg e.g. "READY=1\nSTATUS=up"
-- @tparam[opt] string path socket path instead of $NOTIFY_SOCKET (tests)
-- @return true when sent, false when there is no NOTIFY_SOCKET, or nil and
--   a message
function M.notify(msg, path)
  local ok, res, err = pcall(function()
    path = path or os.getenv("NOTIFY_SOCKET")
    if path == nil or path == "" then return false end
    if path:sub(1, 1) == "@" then
      return nil, "NOTIFY_SOCKET " .. path .. ": abstract sockets are not supported"
    end
    if path:sub(1, 1) ~= "/" then
      return nil, "NOTIFY_SOCKET " .. path .. ": not an absolute path"
    end
    local unix = require "socket.unix"
    local s, serr = unix.dgram()
    if not s then return nil, "socket: " .. tostring(serr) end
    s:settimeout(1) -- a full queue must not hold the caller for long
    local n, sendto_err = s:sendto(msg, path)
    s:close()
    if not n then return nil, "send to " .. path .. ": " .. tostring(sendto_err) end
    return true
  end)
  if not ok then return nil, tostring(res) end
  if res == nil then warn(err) end
  return res, err
end

--- READY=1 (with STATUS= when `status` is given).  READY=1 goes out once
-- per process: later calls send only the STATUS, so a caller may call this
-- each time the condition holds.  A failed send is not retried.
-- @return as `notify`; false once READY=1 went out and there is no status
function M.ready(status)
  if sent_ready then
    if status then return M.status(status) end
    return false
  end
  sent_ready = true
  local msg = "READY=1"
  if status then msg = msg .. "\nSTATUS=" .. one_line(status) end
  return M.notify(msg)
end

--- True once `ready` has been called in this process.
function M.is_ready() return sent_ready end

--- STATUS=text (shown by `systemctl status`).
function M.status(text)
  return M.notify("STATUS=" .. one_line(text))
end

--- STOPPING=1 (with STATUS= when `status` is given): the service is
-- shutting down on its own or on a signal.
function M.stopping(status)
  local msg = "STOPPING=1"
  if status then msg = msg .. "\nSTATUS=" .. one_line(status) end
  return M.notify(msg)
end

--- Forgets that READY=1 and a warning were sent (tests only).
function M._reset()
  sent_ready, warned = false, false
end

return M
