--- A TURN client (RFC 8656) for relaying over UDP, without sockets of its
-- own: it sends with a `send(bytes, "ip:port")` function and is fed the
-- datagrams that arrive (`client:input(from, bytes)`), so it runs over the
-- WireGuard socket of a transport (`t:send_datagram` and "datagram"
-- events).  Time comes from an injectable clock; retransmissions and
-- refreshes happen in `client:tick(now)`, which returns the next deadline.
--
--    local c = turn.new({ server = "192.0.2.10:3478", username = "u", password = "p",
--                         send = function(b, to) return t:send_datagram(to, b) end,
--                         on_event = function(ev) print(ev.type, ev.message) end })
--    c:allocate()
--    -- loop: for ev in t:events() do if ev.type == "datagram" then c:input(ev.from, ev.data) end end
--    --       local deadline = c:tick()
--    local ch = c:bind_channel(peer_relayed_address)   -- also installs a permission
--    t:set_relay(c.server); t:set_peer_relay(peer_pub, c.server, ch)
--
-- What it does: Allocate with long-term credentials (401 → realm and nonce
-- → retry with MESSAGE-INTEGRITY; 438 stale nonce → retry with the new
-- nonce; RFC 8489 PASSWORD-ALGORITHMS echoed when the server offers them),
-- CreatePermission, ChannelBind (0x4000-0x4FFF), refreshes of the
-- allocation (at max(lifetime/2, lifetime-60) s), of permissions (every 240
-- s, they last 300) and of channel bindings (every 480 s, they last 600),
-- and Refresh with LIFETIME 0 on `close`.  Requests are retransmitted as
-- RFC 8489 §6.2.1 says (RTO doubling, 7 sends, then Rm×RTO).  Success
-- responses to authenticated requests must carry a valid MESSAGE-INTEGRITY,
-- and every response must come from the server with an outstanding
-- transaction id; anything else is ignored.
--
-- ChannelData is not handled here: once `t:set_relay(server)` was called
-- the engine unwraps it in its datapath.  Data indications (and ChannelData
-- that does reach Lua) are reported as "data" events.
--
-- Events (to `opts.on_event`, or queued for `client:drain()`) are tables
-- with `type`:
--
-- * "allocated": `relayed`, `mapped` ("IP:PORT"), `lifetime` (s)
-- * "refreshed": `lifetime`
-- * "permission": `peer` (IP)
-- * "channel": `peer` ("IP:PORT"), `channel`
-- * "data": `peer`, `data` (and `channel` for ChannelData)
-- * "error": `request` ("Allocate", "Refresh", ...), `code` and `reason`
--   (error responses; nil for time-outs), `peer` when it concerns one,
--   `message` (readable text)
-- * "expired": the allocation's lifetime ran out without a refresh
-- * "closed": the allocation was released (or `close` gave up waiting)
-- @module wgoverlay.nat.turn
local stun = require "wgoverlay.nat.stun"
local endpoint = require "wgoverlay.endpoint"

local M = {}

--- Permission lifetime (RFC 8656 §9) and our refresh interval.
M.PERMISSION_LIFETIME = 300
M.PERMISSION_REFRESH = 240
--- Channel binding lifetime (RFC 8656 §12) and our refresh interval.
M.CHANNEL_LIFETIME = 600
M.CHANNEL_REFRESH = 480
--- Channel numbers a client may bind.
M.CHANNEL_MIN, M.CHANNEL_MAX = 0x4000, 0x4FFF

local DEFAULT_LIFETIME = 600
local MAX_STALE_RETRIES = 3

local Client = {}
Client.__index = Client

local function default_clock()
  local ok, socket = pcall(require, "socket")
  if ok and socket.gettime then return socket.gettime end
  return os.time
end

--- Creates a client (nothing is sent until `allocate`).
-- @tparam table opts
--   `server` ("IP:PORT", required), `send` (function(bytes, to), required),
--   `username`, `password` (long-term credentials; without them only
--   servers that ask for none work), `clock` (function returning seconds;
--   default socket.gettime), `lifetime` (requested, default 600),
--   `on_event` (function(ev)), `software` (SOFTWARE attribute),
--   `fingerprint` (add FINGERPRINT to requests), `integrity` ("sha1",
--   default, or "sha256"), `family` (4 or 6: relayed address family, default
--   the server's), `rto` (initial retransmission time-out, default 0.5 s),
--   `max_sends` (Rc, default 7), `rm` (default 16)
-- @return client, or nil and a message
function M.new(opts)
  if type(opts) ~= "table" then return nil, "turn.new: options table expected" end
  if type(opts.send) ~= "function" then return nil, "turn.new: send function expected" end
  local server, err = endpoint.normalize(opts.server)
  if not server then return nil, "turn.new: server: " .. err end
  if opts.lifetime ~= nil and (math.type(opts.lifetime) ~= "integer" or opts.lifetime < 1) then
    return nil, "turn.new: lifetime must be a positive integer"
  end
  if (opts.username == nil) ~= (opts.password == nil) then
    return nil, "turn.new: username and password go together"
  end
  if opts.username ~= nil and (type(opts.username) ~= "string" or type(opts.password) ~= "string") then
    return nil, "turn.new: username and password must be strings"
  end
  return setmetatable({
    server = server,
    send_fn = opts.send,
    username = opts.username,
    password = opts.password,
    clock = opts.clock or default_clock(),
    requested_lifetime = opts.lifetime or DEFAULT_LIFETIME,
    on_event = opts.on_event,
    software = opts.software,
    fingerprint = opts.fingerprint or false,
    integrity = opts.integrity or "sha1",
    family = opts.family,
    rto = opts.rto or 0.5,
    max_sends = opts.max_sends or 7,
    rm = opts.rm or 16,
    state = "new",
    tx = {},          -- transaction id -> outstanding request
    perms = {},       -- peer IP -> { state, refresh_at, tx }
    channels = {},    -- "IP:PORT" -> { channel, state, refresh_at, tx }
    by_channel = {},  -- channel -> "IP:PORT"
    next_channel = M.CHANNEL_MIN,
    queue = {},
  }, Client)
end

function Client:_emit(ev)
  if self.on_event then
    self.on_event(ev)
  else
    self.queue[#self.queue + 1] = ev
  end
end

--- Returns (and forgets) the events queued when no `on_event` was given.
function Client:drain()
  local q = self.queue
  self.queue = {}
  return q
end

local function peer_ip(peer)
  if type(peer) ~= "string" then return nil, "peer address must be a string" end
  -- "IP:PORT", "[IPv6]:PORT" or a bare address
  local e = endpoint.parse(peer, { default_port = 1 })
  if not e then return nil, string.format("peer address \"%s\" invalid", peer) end
  return e.ip
end

---------------------------------------------------------------------------
-- Transactions
---------------------------------------------------------------------------

-- Credentials attributes and encoding options for a request.
function Client:_auth(attrs)
  if not self.nonce then return {} end
  attrs[#attrs + 1] = { name = "USERNAME", value = self.username }
  attrs[#attrs + 1] = { name = "REALM", value = self.realm }
  attrs[#attrs + 1] = { name = "NONCE", value = self.nonce }
  if self.password_algorithms then
    attrs[#attrs + 1] = { name = "PASSWORD-ALGORITHMS", value = self.password_algorithms }
    attrs[#attrs + 1] = { name = "PASSWORD-ALGORITHM", value = self.password_algorithm }
  end
  return { key = self.key, integrity = self.integrity }
end

-- Sends request `spec` (`method`, `attributes` (a function building the
-- list, so that a retry after 401/438 rebuilds it), `what`, `on_success`,
-- `on_error`, `on_timeout`) as a new transaction.
function Client:_request(spec, stale_retries)
  local attrs = spec.attributes()
  if self.software then attrs[#attrs + 1] = { name = "SOFTWARE", value = self.software } end
  local eopts = self:_auth(attrs)
  eopts.fingerprint = self.fingerprint
  local tid = stun.transaction_id()
  local bytes, err = stun.encode({ method = spec.method, class = "request", transaction_id = tid,
                                   attributes = attrs }, eopts)
  if not bytes then error("turn: cannot encode " .. stun.method_name(spec.method) .. ": " .. err) end
  local now = self.clock()
  local tx = { spec = spec, bytes = bytes, key = eopts.key, sends = 1, interval = self.rto,
               next_at = now + (self.max_sends > 1 and self.rto or self.rm * self.rto),
               stale_retries = stale_retries or 0, tid = tid }
  self.tx[tid] = tx
  self:_send(bytes)
  return tx
end

function Client:_send(bytes)
  local ok, err = self.send_fn(bytes, self.server)
  if ok == nil and err then
    self:_emit({ type = "error", message = "send to " .. self.server .. " failed: " .. tostring(err) })
  end
end

function Client:_cancel(tx)
  if tx then self.tx[tx.tid] = nil end
end

local function error_text(what, code, reason)
  local msg = string.format("%s failed: %d %s", what, code, reason or "")
  if code == 401 then
    msg = msg .. " (wrong username or password?)"
  elseif code == 437 then
    msg = msg .. " (allocation mismatch: this address already has, or no longer has, an allocation)"
  elseif code == 441 then
    msg = msg .. " (wrong credentials for this allocation)"
  elseif code == 486 then
    msg = msg .. " (allocation quota reached)"
  elseif code == 508 then
    msg = msg .. " (server out of relay capacity)"
  end
  return msg
end

-- The 401/438 dance.  Returns true when the request was re-sent.
function Client:_retry_auth(tx, msg, code)
  local realm, nonce = msg.attrs.REALM, msg.attrs.NONCE
  if not nonce or (not realm and not self.realm) then return false end
  if code == 401 and (tx.key or not self.username) then return false end
  if code == 438 and tx.stale_retries >= MAX_STALE_RETRIES then return false end
  self.realm = realm or self.realm
  self.nonce = nonce
  -- RFC 8489 §9.2.4: a nonce starting with the cookie "obMatJos2" may come
  -- with PASSWORD-ALGORITHMS; we then pick MD5 or SHA-256 and echo the list.
  local algs = msg.attrs["PASSWORD-ALGORITHMS"]
  local key_hash = "md5"
  if algs and nonce:sub(1, 9) == "obMatJos2" then
    local offered = {}
    local pos = 1
    while pos + 3 <= #algs do
      local alg, plen = string.unpack(">I2I2", algs, pos)
      offered[alg] = true
      pos = pos + 4 + plen + (4 - plen % 4) % 4
    end
    if offered[1] then
      self.password_algorithm = string.pack(">I2I2", 1, 0)
    elseif offered[2] then
      self.password_algorithm = string.pack(">I2I2", 2, 0)
      key_hash = "sha256"
    else
      return false
    end
    self.password_algorithms = algs
  else
    self.password_algorithms, self.password_algorithm = nil, nil
  end
  if key_hash == "md5" then
    self.key = stun.long_term_key(self.username, self.realm, self.password)
  else
    self.key = require("openssl.digest").new("sha256"):final(
      self.username .. ":" .. self.realm .. ":" .. self.password)
  end
  local new = self:_request(tx.spec, code == 438 and tx.stale_retries + 1 or tx.stale_retries)
  if tx.spec.on_retry then tx.spec.on_retry(new) end
  return true
end

--- Feeds a datagram that arrived on the socket.  Only STUN messages
-- (and ChannelData) from the server are looked at; responses must match an
-- outstanding request and, for authenticated requests, carry a valid
-- MESSAGE-INTEGRITY.
-- @string from "IP:PORT" it came from
-- @string bytes the datagram
-- @return true when the client consumed it; false and the reason
--   otherwise (so that the caller can offer it to someone else, e.g. a
--   STUN Binding matcher using the same server)
function Client:input(from, bytes)
  if type(from) ~= "string" or type(bytes) ~= "string" then return false, "bad arguments" end
  if from ~= self.server and endpoint.normalize(from) ~= self.server then
    return false, "not from the server"
  end
  local b1 = bytes:byte(1)
  if b1 and b1 >= 0x40 and b1 <= 0x4F then return self:_channel_data(bytes) end
  if not stun.is_stun(bytes) then return false, "not STUN" end
  local msg, err = stun.decode(bytes)
  if not msg then return false, err end
  if msg.class == "indication" then
    if msg.method == stun.DATA and msg.attrs["XOR-PEER-ADDRESS"] and msg.attrs.DATA then
      self:_emit({ type = "data", peer = endpoint.format(msg.attrs["XOR-PEER-ADDRESS"]),
                   data = msg.attrs.DATA })
      return true
    end
    return false, "indication ignored"
  end
  if msg.class == "request" then return false, "request ignored" end
  local tx = self.tx[msg.transaction_id]
  if not tx then return false, "unknown transaction id" end
  if msg.method ~= tx.spec.method then return false, "method does not match the request" end
  local has_mi = msg.attrs["MESSAGE-INTEGRITY"] or msg.attrs["MESSAGE-INTEGRITY-SHA256"]
  if tx.key and (msg.class == "success" or has_mi) then
    local ok, why = stun.check_integrity(msg, tx.key)
    if not ok then return false, why end -- spoofed or corrupted: keep waiting
  end
  self.tx[msg.transaction_id] = nil
  if msg.class == "success" then
    tx.spec.on_success(msg)
    return true
  end
  local e = msg.attrs["ERROR-CODE"] or { code = 0, reason = "error response without ERROR-CODE" }
  if (e.code == 401 or e.code == 438) and self:_retry_auth(tx, msg, e.code) then return true end
  tx.spec.on_error(e.code, e.reason, msg)
  return true
end

function Client:_channel_data(bytes)
  if #bytes < 4 then return false, "short ChannelData" end
  local ch, len = string.unpack(">I2I2", bytes)
  local peer = self.by_channel[ch]
  if not peer or len > #bytes - 4 then return false, "ChannelData ignored" end
  self:_emit({ type = "data", peer = peer, channel = ch, data = bytes:sub(5, 4 + len) })
  return true
end

---------------------------------------------------------------------------
-- Allocation
---------------------------------------------------------------------------

function Client:_fail(what, code, reason, extra)
  local message
  if code == 401 and not self.username then
    message = string.format("%s failed: 401 %s (the server wants credentials; none configured)", what,
      reason or "")
  elseif code then
    message = error_text(what, code, reason)
  else
    message = string.format("%s timed out: no answer from %s", what, self.server)
  end
  local ev = { type = "error", request = what, code = code, reason = reason, message = message }
  for k, v in pairs(extra or {}) do ev[k] = v end
  self.error = ev.message
  self:_emit(ev)
  return ev
end

--- Starts the allocation (Allocate request).  The outcome arrives as an
-- "allocated" or "error" event; `client.state` becomes "allocated" or
-- "failed".
-- @return true, or nil and a message if an allocation is already there
function Client:allocate()
  if self.state == "allocating" or self.state == "allocated" or self.state == "closing" then
    return nil, "allocation already " .. self.state
  end
  self.state = "allocating"
  self.error = nil
  self.alloc_tx = self:_request({
    method = stun.ALLOCATE, what = "Allocate",
    attributes = function()
      local a = { { name = "REQUESTED-TRANSPORT", value = 17 },
                  { name = "LIFETIME", value = self.requested_lifetime } }
      if self.family then a[#a + 1] = { name = "REQUESTED-ADDRESS-FAMILY", value = self.family } end
      return a
    end,
    on_retry = function(new) self.alloc_tx = new end,
    on_success = function(msg) self:_allocated(msg) end,
    on_error = function(code, reason)
      self.alloc_tx = nil
      self.state = "failed"
      self:_fail("Allocate", code, reason)
    end,
    on_timeout = function()
      self.alloc_tx = nil
      self.state = "failed"
      self:_fail("Allocate")
    end,
  })
  return true
end

function Client:_schedule_refresh(lifetime)
  local now = self.clock()
  self.lifetime = lifetime
  self.expires = now + lifetime
  self.refresh_at = now + math.max(lifetime / 2, lifetime - 60)
end

function Client:_allocated(msg)
  self.alloc_tx = nil
  local relayed, mapped = msg.attrs["XOR-RELAYED-ADDRESS"], msg.attrs["XOR-MAPPED-ADDRESS"]
  if not relayed then
    self.state = "failed"
    self:_fail("Allocate", 0, "success response without XOR-RELAYED-ADDRESS")
    return
  end
  self.state = "allocated"
  self.relayed = endpoint.format(relayed)
  self.mapped = mapped and endpoint.format(mapped) or nil
  self:_schedule_refresh(msg.attrs.LIFETIME or self.requested_lifetime)
  self:_emit({ type = "allocated", relayed = self.relayed, mapped = self.mapped, lifetime = self.lifetime })
  -- permissions and channels asked for before the allocation existed
  for ip, p in pairs(self.perms) do
    if p.state == "queued" then self:_send_permission(ip) end
  end
  for peer, c in pairs(self.channels) do
    if c.state == "queued" then self:_send_channel_bind(peer) end
  end
end

function Client:_refresh(lifetime)
  if self.refresh_tx then self:_cancel(self.refresh_tx) end
  self.refresh_tx = self:_request({
    method = stun.REFRESH, what = "Refresh",
    attributes = function() return { { name = "LIFETIME", value = lifetime } } end,
    on_retry = function(new) self.refresh_tx = new end,
    on_success = function(msg)
      self.refresh_tx = nil
      if lifetime == 0 then return self:_closed() end
      self:_schedule_refresh(msg.attrs.LIFETIME or lifetime)
      self:_emit({ type = "refreshed", lifetime = self.lifetime })
    end,
    on_error = function(code, reason)
      self.refresh_tx = nil
      if lifetime == 0 then return self:_closed() end -- 437: it is gone anyway
      if code == 437 then
        -- failed before the event, so that its handler sees the allocation gone
        self.state = "failed"
        self:_drop_allocation()
        self:_fail("Refresh", code, reason)
      else
        self:_fail("Refresh", code, reason)
        self.refresh_at = self.clock() + math.min(30, math.max(1, (self.expires - self.clock()) / 4))
      end
    end,
    on_timeout = function()
      self.refresh_tx = nil
      if lifetime == 0 then return self:_closed() end
      self:_fail("Refresh")
      self.refresh_at = self.clock() -- try again with a new transaction at the next tick
    end,
  })
end

--- Refreshes the allocation now (tick does it on time by itself).
function Client:refresh()
  if self.state ~= "allocated" then return nil, "no allocation" end
  self:_refresh(self.requested_lifetime)
  return true
end

function Client:_drop_allocation()
  for _, tx in pairs(self.tx) do
    if tx ~= self.refresh_tx then self.tx[tx.tid] = nil end
  end
  self.perms, self.channels, self.by_channel = {}, {}, {}
  self.refresh_at, self.expires = nil, nil
end

function Client:_closed()
  self.state = "closed"
  self:_drop_allocation()
  self.tx = {}
  self.relayed = nil
  self:_emit({ type = "closed" })
end

--- Releases the allocation (Refresh with LIFETIME 0); a "closed" event
-- follows when the server answered or the request timed out.
function Client:close()
  if self.state == "allocated" then
    self.state = "closing"
    self:_drop_allocation()
    self:_refresh(0)
  elseif self.state ~= "closing" and self.state ~= "closed" then
    self.tx = {}
    self.state = "closed"
  end
  return true
end

---------------------------------------------------------------------------
-- Permissions and channels
---------------------------------------------------------------------------

function Client:_send_permission(ip)
  local p = self.perms[ip]
  p.state = p.state == "installed" and "installed" or "pending"
  p.tx = self:_request({
    method = stun.CREATE_PERMISSION, what = "CreatePermission",
    attributes = function() return { { name = "XOR-PEER-ADDRESS", value = { ip = ip, port = 0 } } } end,
    on_retry = function(new) p.tx = new end,
    on_success = function()
      p.tx = nil
      local first = p.state ~= "installed"
      p.state = "installed"
      p.refresh_at = self.clock() + M.PERMISSION_REFRESH
      self:_emit({ type = "permission", peer = ip, refreshed = not first })
    end,
    on_error = function(code, reason)
      p.tx = nil
      p.refresh_at = self.clock() + 5
      self:_fail("CreatePermission", code, reason, { peer = ip })
    end,
    on_timeout = function()
      p.tx = nil
      p.refresh_at = self.clock()
      self:_fail("CreatePermission", nil, nil, { peer = ip })
    end,
  })
end

--- Installs (and keeps refreshing) a permission for a peer: "IP",
-- "IP:PORT" or "[IPv6]:PORT" (the port is ignored, RFC 8656 §9).
-- Before the allocation exists the request is queued.
-- @return true, or nil and a message
function Client:create_permission(peer)
  local ip, err = peer_ip(peer)
  if not ip then return nil, err end
  if self.perms[ip] then return true end
  self.perms[ip] = { state = "queued" }
  if self.state == "allocated" then self:_send_permission(ip) end
  return true
end

function Client:_send_channel_bind(peer)
  local c = self.channels[peer]
  c.state = c.state == "bound" and "bound" or "pending"
  c.tx = self:_request({
    method = stun.CHANNEL_BIND, what = "ChannelBind",
    attributes = function()
      return { { name = "CHANNEL-NUMBER", value = c.channel }, { name = "XOR-PEER-ADDRESS", value = peer } }
    end,
    on_retry = function(new) c.tx = new end,
    on_success = function()
      c.tx = nil
      local first = c.state ~= "bound"
      c.state = "bound"
      c.refresh_at = self.clock() + M.CHANNEL_REFRESH
      self:_emit({ type = "channel", peer = peer, channel = c.channel, refreshed = not first })
    end,
    on_error = function(code, reason)
      c.tx = nil
      c.refresh_at = self.clock() + 5
      self:_fail("ChannelBind", code, reason, { peer = peer, channel = c.channel })
      -- A server that restarted has forgotten the allocation and answers
      -- 437 or, coturn, 400: a Refresh tells (437 there drops it, and the
      -- caller allocates anew).
      if (code == 437 or code == 400) and self.state == "allocated" and not self.refresh_tx then
        self:_refresh(self.requested_lifetime)
      end
    end,
    on_timeout = function()
      c.tx = nil
      c.refresh_at = self.clock()
      self:_fail("ChannelBind", nil, nil, { peer = peer, channel = c.channel })
    end,
  })
end

--- Binds a channel to a peer ("IP:PORT") and keeps it refreshed.  The
-- number is chosen (the lowest free one) unless `channel` is given; a peer
-- already bound keeps its number.  A "channel" event reports the binding
-- once the server confirmed it; before the allocation exists the request
-- is queued.
-- @return the channel number, or nil and a message
function Client:bind_channel(peer, channel)
  local e, err = endpoint.parse(peer)
  if not e then return nil, err end
  peer = endpoint.format(e)
  local c = self.channels[peer]
  if c then
    if channel and channel ~= c.channel then
      return nil, string.format("peer %s is bound to channel 0x%04X already", peer, c.channel)
    end
    return c.channel
  end
  if channel == nil then
    channel = self.next_channel
    while self.by_channel[channel] and channel <= M.CHANNEL_MAX do channel = channel + 1 end
    if channel > M.CHANNEL_MAX then return nil, "no free channel number" end
    self.next_channel = channel + 1
  elseif math.type(channel) ~= "integer" or channel < M.CHANNEL_MIN or channel > M.CHANNEL_MAX then
    return nil, string.format("channel %s invalid: must be 0x4000..0x4FFF", tostring(channel))
  elseif self.by_channel[channel] then
    return nil, string.format("channel 0x%04X is bound to %s already", channel, self.by_channel[channel])
  end
  c = { channel = channel, state = "queued" }
  self.channels[peer] = c
  self.by_channel[channel] = peer
  if self.state == "allocated" then self:_send_channel_bind(peer) end
  return channel
end

--- The channel bound (or being bound) to a peer, and its state ("queued",
-- "pending", "bound"), or nil.
function Client:channel(peer)
  local norm = endpoint.normalize(peer)
  local c = norm and self.channels[norm]
  if c then return c.channel, c.state end
end

---------------------------------------------------------------------------
-- Timers
---------------------------------------------------------------------------

local function earliest(a, b)
  if a == nil then return b end
  if b == nil then return a end
  return math.min(a, b)
end

--- Runs what is due at `now` (default: the clock): retransmissions,
-- time-outs, refreshes.
-- @return the next deadline (clock seconds), or nil when nothing is
--   scheduled
function Client:tick(now)
  now = now or self.clock()
  -- retransmissions and time-outs (collect first: handlers change self.tx)
  local due = {}
  for _, tx in pairs(self.tx) do
    if tx.next_at <= now then due[#due + 1] = tx end
  end
  for _, tx in ipairs(due) do
    if self.tx[tx.tid] == tx then
      if tx.sends < self.max_sends then
        tx.sends = tx.sends + 1
        tx.interval = tx.interval * 2
        -- after the last send, wait Rm × RTO (RFC 8489 §6.2.1)
        tx.next_at = now + (tx.sends == self.max_sends and self.rm * self.rto or tx.interval)
        self:_send(tx.bytes)
      else
        self.tx[tx.tid] = nil
        tx.spec.on_timeout()
      end
    end
  end
  if self.state == "allocated" then
    if self.expires and now >= self.expires then
      self.state = "failed"
      self:_drop_allocation()
      self.error = "allocation expired"
      self:_emit({ type = "expired", message = "TURN allocation on " .. self.server .. " expired" })
    elseif self.refresh_at and now >= self.refresh_at and not self.refresh_tx then
      self.refresh_at = nil
      self:_refresh(self.requested_lifetime)
    end
  end
  if self.state == "allocated" then
    for ip, p in pairs(self.perms) do
      if p.refresh_at and now >= p.refresh_at and not p.tx then
        p.refresh_at = nil
        self:_send_permission(ip)
      end
    end
    for peer, c in pairs(self.channels) do
      if c.refresh_at and now >= c.refresh_at and not c.tx then
        c.refresh_at = nil
        self:_send_channel_bind(peer)
      end
    end
  end
  local next_at
  for _, tx in pairs(self.tx) do next_at = earliest(next_at, tx.next_at) end
  if self.state == "allocated" then
    next_at = earliest(next_at, self.refresh_at)
    next_at = earliest(next_at, self.expires)
    for _, p in pairs(self.perms) do next_at = earliest(next_at, p.refresh_at) end
    for _, c in pairs(self.channels) do next_at = earliest(next_at, c.refresh_at) end
  end
  return next_at
end

--- A summary: `state`, `server`, `relayed`, `mapped`, `lifetime`,
-- `expires`, `error`, `permissions` (IP -> state) and `channels` ("IP:PORT"
-- -> { channel, state }).
function Client:status()
  local perms, chans = {}, {}
  for ip, p in pairs(self.perms) do perms[ip] = p.state end
  for peer, c in pairs(self.channels) do chans[peer] = { channel = c.channel, state = c.state } end
  return { state = self.state, server = self.server, relayed = self.relayed, mapped = self.mapped,
           lifetime = self.lifetime, expires = self.expires, error = self.error,
           permissions = perms, channels = chans }
end

--- Frames `data` as ChannelData on `channel` (for Lua that sends through
-- the relay itself; the engine frames WireGuard packets on its own).
function M.channel_data(channel, data)
  return string.pack(">I2I2", channel, #data) .. data
end

return M
