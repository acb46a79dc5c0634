-- The JSON-lines framer of the membership sessions and the control socket,
-- over a fake luv stream: lines split across chunks, several per chunk,
-- the size cap, write errors and a peer that does not read close only
-- that connection, a handler error is logged and closes it.
local jsonlines = require "wgoverlay.jsonlines"

local function fake_stream()
  local s = { written = {}, queued = 0, closed = false }
  function s:read_start(cb) self.cb = cb return 0 end
  function s:write(data, cb)
    if self.fail then return nil, "EPIPE: broken pipe" end
    self.written[#self.written + 1] = data
    self.pending = cb
    return {}
  end
  function s:get_write_queue_size() return self.queued end
  function s:is_closing() return self.closed end
  function s:close() self.closed = true end
  return s
end

describe("jsonlines", function()
  local stream, lines, closed, logged, conn

  before_each(function()
    stream, lines, closed, logged = fake_stream(), {}, nil, {}
    conn = jsonlines.wrap(stream, {
      on_line = function(_, line) lines[#lines + 1] = line end,
      on_close = function(_, reason) closed = reason or "self" end,
      log = function(fmt, ...) logged[#logged + 1] = fmt:format(...) end,
    }):start()
  end)

  it("joins lines split across chunks and splits several in one chunk", function()
    stream.cb(nil, '{"a":')
    stream.cb(nil, '1}\n{"b":2}\n{"c"')
    stream.cb(nil, ':3}\n')
    assert.same({ '{"a":1}', '{"b":2}', '{"c":3}' }, lines)
    assert.is_nil(closed)
  end)

  it("closes on a line over the cap, counting the partial line", function()
    conn.max_line = 10
    stream.cb(nil, "12345")
    stream.cb(nil, "678901")
    assert.equal("line over 10 bytes", closed)
    assert.is_true(stream.closed)
    assert.same({}, lines)
  end)

  it("EOF and read errors close the connection once", function()
    stream.cb(nil, nil)
    assert.equal("closed by peer", closed)
    closed = nil
    conn:close()
    assert.is_nil(closed, "on_close ran twice")
  end)

  it("a failed write closes the connection and returns the error", function()
    stream.fail = true
    local ok, err = conn:send({ x = 1 })
    assert.is_nil(ok)
    assert.matches("EPIPE", err)
    assert.matches("EPIPE", closed)
    assert.is_nil((conn:send({ x = 2 })))
  end)

  it("an asynchronous write error closes the connection", function()
    assert.is_true(conn:send({ x = 1 }))
    assert.equal('{"x":1}\n', stream.written[1])
    stream.pending("ECONNRESET")
    assert.equal("ECONNRESET", closed)
  end)

  it("a peer that does not read is dropped before the queue passes the cap", function()
    stream.queued = jsonlines.MAX_QUEUED - 4
    local ok, err = conn:send({ big = "yes" })
    assert.is_nil(ok)
    assert.equal("peer does not read", err)
    assert.equal("peer does not read", closed)
  end)

  it("an error in the line handler is logged and closes only this connection", function()
    conn.on_line = function() error("boom") end
    stream.cb(nil, "x\ny\n")
    assert.equal("handler error", closed)
    assert.equal(1, #logged)
    assert.matches("boom", logged[1])
  end)
end)
