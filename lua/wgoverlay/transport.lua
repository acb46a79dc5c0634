--- Transport objects: one WireGuard interface driven from Lua.
--
--    local t = wgo.transport.new({ private_key = priv, listen_port = 51820,
--                                  address = "10.77.0.1/24", mtu = 1420 }, "wgo0")
--    assert(t:create_interface())
--    assert(t:configure({ { public_key = pub, endpoint = "192.0.2.2:51820",
--                           allowed_ips = { "10.77.0.2/32" } } }))
--
-- Wrong argument types raise; every failure returns `nil, message, errno`
-- (the system's error number where the system refused, EINVAL for bad
-- input, ENOENT for a peer we do not have).  Every
-- configuration change goes through the engine's one configuration path
-- (the same as the UAPI socket's), and addresses, MTU, link state and
-- routes are set with RTNETLINK (libmnl) in the calling process's network
-- namespace.  Private keys never come back out of `status`.
-- @classmod wgoverlay.transport
local core = require "wgoverlay.core"
local cidr = require "wgoverlay.cidr"

local Transport = {}
Transport.__index = Transport

local M = {}

local function check_type(v, t, what)
  if type(v) ~= t then
    error(string.format("%s: %s expected, got %s", what, t, type(v)), 3)
  end
end

local function as_list(v)
  if v == nil then return {} end
  if type(v) == "string" then return { v } end
  return v
end

local ENOENT, ESRCH, EINVAL, EADDRNOTAVAIL = 2, 3, 22, 99

-- Every failure leaves as nil, message, errno: errors of the binding that
-- carry no errno (bad input it parsed) get EINVAL.
local function fail(msg, errno)
  return nil, msg, errno or EINVAL
end

local function result(ok, ...)
  if ok == nil then return fail(...) end
  return ok, ...
end

local function bad_key(key)
  return fail(string.format("bad key %s: expected 32 bytes base64", core.key_excerpt(key)))
end

--- Creates a transport (the interface is not created until `create_interface`).
-- @tparam table opts `private_key` (base64), `listen_port` (0 = random),
--   `address` (CIDR string or list), `mtu` (default 1420), `fwmark`
-- @tparam string ifname interface name, at most 15 bytes
-- @return transport, or nil, message, errno
function M.new(opts, ifname)
  check_type(opts, "table", "transport.new: options")
  check_type(ifname, "string", "transport.new: interface name")
  if #ifname > 15 then
    return fail(string.format("interface name \"%s\" longer than 15 bytes", ifname))
  end
  if #ifname == 0 or ifname:find("[/%s]") or ifname == "." or ifname == ".." then
    return fail(string.format("interface name \"%s\" invalid: 1 to 15 bytes, no '/' or spaces", ifname))
  end
  if opts.private_key ~= nil then
    check_type(opts.private_key, "string", "transport.new: private_key")
    if not core.valid_key(opts.private_key) then
      return fail("bad private key: expected 32 bytes base64 (44 characters)")
    end
  end
  if opts.listen_port ~= nil then
    if math.type(opts.listen_port) ~= "integer" then
      error("transport.new: listen_port: integer expected", 2)
    end
    if opts.listen_port < 0 or opts.listen_port > 65535 then
      return fail(string.format("listen_port %d invalid: must be 0..65535", opts.listen_port))
    end
  end
  if opts.mtu ~= nil then
    if math.type(opts.mtu) ~= "integer" then error("transport.new: mtu: integer expected", 2) end
    if opts.mtu < 576 or opts.mtu > 65535 then
      return fail(string.format("mtu %d invalid: must be 576..65535", opts.mtu))
    end
  end
  local addresses = {}
  for _, a in ipairs(as_list(opts.address)) do
    check_type(a, "string", "transport.new: address")
    local p, err = cidr.parse(a)
    if not p then return fail(err) end
    addresses[#addresses + 1] = p
  end
  return setmetatable({
    ifname = ifname,
    opts = opts,
    addresses = addresses,
    mtu = opts.mtu or 1420,
    routes = {},   -- CIDR string -> true for routes this transport added
  }, Transport)
end

--- Generates a key pair (the same as `wgoverlay.generate_keys`).
-- @treturn string private key (base64, 44 characters)
-- @treturn string public key (base64)
function M.generate_keys()
  return core.generate_keys()
end

local function dev(self)
  if not self.dev then
    if self.closed then error("attempt to use a closed transport", 3) end
    error("transport: interface not created (call create_interface first)", 3)
  end
  return self.dev
end

local EPERM, EACCES = 1, 13

local function open_device(self)
  local d, err, errno = core.open(self.ifname, { uapi = true, mtu = self.mtu })
  if not d and (errno == EPERM or errno == EACCES) and not err:find("CAP_NET_ADMIN", 1, true) then
    err = string.format("cannot create interface \"%s\": permission denied: needs CAP_NET_ADMIN (%s)",
      self.ifname, err)
  end
  if not d then return fail(err, errno) end
  return d
end

--- Creates the TUN interface, the UDP socket and the UAPI socket, and
-- applies the private key and listen port.  Leftovers of a killed engine
-- are replaced: a stale UAPI socket (its TUN vanished with the process) and
-- a persistent TUN of the same name that no engine serves.  A live engine
-- on the same name is an error.
-- @return true, or nil, message, errno
function Transport:create_interface()
  if self.closed then error("attempt to use a closed transport", 2) end
  if self.dev then return true end
  local stale = core.ifindex(self.ifname)
  local d, err, errno = open_device(self)
  if not d then return fail(err, errno) end
  if stale > 0 and d:ifindex() == stale then
    -- We attached to a persistent TUN of that name that nobody served (no
    -- engine answered on the UAPI socket, or open would have failed): a
    -- leftover.  Remove it so that the interface lives and dies with us.
    d:close()
    local ok, derr, derrno = core.link_delete(self.ifname)
    if ok == nil then return fail(derr, derrno) end
    d, err, errno = open_device(self)
    if not d then return fail(err, errno) end
  end
  local ok, aerr, aerrno = d:apply({ private_key = self.opts.private_key, listen_port = self.opts.listen_port,
                                     fwmark = self.opts.fwmark })
  if not ok then
    d:close()
    return fail(aerr, aerrno)
  end
  self.dev = d
  -- What configure's rollback falls back to when the link cannot be read.
  self.link = { up = false, mtu = self.mtu }
  return true
end

local function peer_op(p, extra)
  check_type(p, "table", "peer")
  check_type(p.public_key, "string", "peer.public_key")
  local op = {
    public_key = p.public_key,
    endpoint = p.endpoint,
    persistent_keepalive = p.persistent_keepalive,
    allowed_ips = p.allowed_ips and as_list(p.allowed_ips),
    preshared_key = p.preshared_key,
    replace_allowed_ips = p.allowed_ips ~= nil,
  }
  for k, v in pairs(extra or {}) do op[k] = v end
  return op
end

-- The overlay routes wanted: one per address network, and one per allowed
-- IP (of the peers in `peers`, each with `allowed_ips`) that no address
-- network covers.  Returns the CIDR strings in order and the set.
function Transport:_wanted_routes(peers)
  local wanted, order = {}, {}
  local function want(c)
    local key = cidr.format(c)
    if not wanted[key] then
      wanted[key] = c
      order[#order + 1] = key
    end
  end
  for _, a in ipairs(self.addresses) do want(cidr.network(a)) end
  for _, p in ipairs(peers) do
    for _, s in ipairs(as_list(p.allowed_ips)) do
      local c = cidr.parse(s)
      if c then
        local covered = false
        for _, a in ipairs(self.addresses) do
          if cidr.contains(cidr.network(a), c) then covered = true end
        end
        if not covered then want(cidr.network(c)) end
      end
    end
  end
  return order, wanted
end

-- Deletes the routes this transport added that are not in `wanted`.  Gone
-- already (deleted by hand) is fine too.
function Transport:_drop_routes(wanted)
  local stale = {}
  for key in pairs(self.routes) do
    if not wanted[key] then stale[#stale + 1] = key end
  end
  table.sort(stale)
  for _, key in ipairs(stale) do
    core.route(self.ifname, "del", key)
    self.routes[key] = nil
  end
end

-- Overlay routes for the addresses and the allowed IPs of every peer the
-- engine has.  Added with NLM_F_REPLACE, so re-adding is a no-op; routes
-- this transport added that are no longer wanted (peer or allowed IP
-- removed) are deleted.
function Transport:_sync_routes()
  local order, wanted = self:_wanted_routes(self.dev:status().peers)
  for _, key in ipairs(order) do
    local ok, err, errno = core.route(self.ifname, "add", key)
    if not ok then return fail(err, errno) end
    self.routes[key] = true
  end
  self:_drop_routes(wanted)
  return true
end

local function check_allowed_ips(v, what)
  for _, s in ipairs(as_list(v)) do
    check_type(s, "string", what)
    local ok, err = cidr.parse(s)
    if not ok then return fail(err) end
  end
  return true
end

local function read_sys(ifname, what)
  local f = io.open("/sys/class/net/" .. ifname .. "/" .. what)
  if not f then return nil end
  local v = f:read("l")
  f:close()
  return v
end

-- The link's MTU and state as the kernel has them: from sysfs when sysfs
-- shows our interface (it shows the namespace it was mounted in, which is
-- ours under `ip netns exec`; the ifindex tells), else what this transport
-- last set.
function Transport:_link_state()
  local idx = math.tointeger(tonumber(read_sys(self.ifname, "ifindex") or ""))
  if idx and idx == self.dev:ifindex() then
    local mtu = math.tointeger(tonumber(read_sys(self.ifname, "mtu") or ""))
    local flags = math.tointeger(tonumber(read_sys(self.ifname, "flags") or ""))
    if mtu and flags then return { mtu = mtu, up = flags & 1 == 1 } end
  end
  return { mtu = self.link.mtu, up = self.link.up }
end

-- The interface's addresses, as a set of canonical CIDR strings.
function Transport:_addresses()
  local list, err, errno = core.addr_list(self.ifname)
  if not list then return fail(err, errno) end
  local set = {}
  for _, s in ipairs(list) do
    local c = cidr.parse(s)
    if c then set[cidr.format(c)] = true end
  end
  return set
end

--- Applies key, port and the full peer list (peers not listed are removed),
-- the interface address(es), MTU, link up and overlay routes.
-- Idempotent: a second identical call changes nothing and succeeds.
-- All or nothing: the input is checked first, then addresses, MTU and link
-- state, routes, and last the peers (one engine transaction, applied whole
-- or not at all); when a step fails, what the call had changed is undone
-- (addresses it added removed, MTU and link state restored, routes it
-- added deleted, peers untouched) and it returns nil, "<what failed>:
-- <why>", errno.
-- @tparam table peers list of peer tables (`public_key`, `endpoint`,
--   `allowed_ips`, `persistent_keepalive`, `preshared_key`)
-- @return true, or nil, message, errno
function Transport:configure(peers)
  local d = dev(self)
  peers = peers or {}
  check_type(peers, "table", "configure: peers")
  local listed, updates = {}, {}
  for i, p in ipairs(peers) do
    if type(p) ~= "table" then error(string.format("configure: peers[%d]: table expected", i), 2) end
    check_type(p.public_key, "string", "configure: peer.public_key")
    if not core.valid_key(p.public_key) then return bad_key(p.public_key) end
    if p.allowed_ips ~= nil then
      local ok, err = check_allowed_ips(p.allowed_ips, "configure: allowed_ips")
      if not ok then return fail(err) end
    end
    -- The peer list is the whole truth: fields left out are reset, and
    -- allowed IPs replaced.  Peers that stay keep their sessions (no
    -- remove-and-re-add, unlike replace_peers), so a second identical call
    -- changes nothing.
    updates[i] = peer_op(p, { preshared_key = p.preshared_key or false,
                              persistent_keepalive = p.persistent_keepalive or 0,
                              allowed_ips = p.allowed_ips and as_list(p.allowed_ips) or {},
                              replace_allowed_ips = true })
    listed[p.public_key] = true
  end
  -- Removals first, so that one transaction ends with exactly `peers`.
  local ops = {}
  for _, cur in ipairs(d:status().peers) do
    if not listed[cur.public_key] then
      ops[#ops + 1] = { public_key = cur.public_key, remove = true }
    end
  end
  for _, op in ipairs(updates) do ops[#ops + 1] = op end

  -- What this call may change, as it is now.
  local addrs_before, aerr, aerrno = self:_addresses()
  if not addrs_before then return fail(aerr, aerrno) end
  local link_before = self:_link_state()
  local undo = {}   -- closures, run last first

  local function rollback(err, errno)
    local problems = {}
    for i = #undo, 1, -1 do
      local ok, uerr = undo[i]()
      if ok == nil then problems[#problems + 1] = uerr end
    end
    -- Taking an IPv6 link down flushes its addresses: put back any that
    -- were there before.
    local now = self:_addresses()
    if now then
      for key in pairs(addrs_before) do
        if not now[key] then
          local ok, uerr = core.addr(self.ifname, "add", key)
          if ok == nil then problems[#problems + 1] = uerr end
        end
      end
    end
    if #problems > 0 then
      err = err .. " (undoing the rest failed too: " .. table.concat(problems, "; ") .. ")"
    end
    return fail(err, errno)
  end

  for _, a in ipairs(self.addresses) do
    local key = cidr.format(a)
    if not addrs_before[key] then
      local ok, err, errno = core.addr(self.ifname, "add", key)
      if not ok then return rollback(err, errno) end
      undo[#undo + 1] = function()
        -- Gone already is fine: taking the link down flushed it (IPv6).
        local ok, uerr, uerrno = core.addr(self.ifname, "del", key)
        if ok == nil and uerrno == EADDRNOTAVAIL then return true end
        return ok, uerr, uerrno
      end
    end
  end
  if link_before.mtu ~= self.mtu then
    local ok, err, errno = core.link(self.ifname, { mtu = self.mtu })
    if not ok then return rollback(err, errno) end
    undo[#undo + 1] = function() return core.link(self.ifname, { mtu = link_before.mtu }) end
  end
  if not link_before.up then
    local ok, err, errno = core.link(self.ifname, { up = true })
    if not ok then return rollback(err, errno) end
    undo[#undo + 1] = function() return core.link(self.ifname, { up = false }) end
  end
  self.link = { mtu = self.mtu, up = true }
  local order, wanted = self:_wanted_routes(peers)
  for _, key in ipairs(order) do
    local ok, err, errno = core.route(self.ifname, "add", key)
    if not ok then
      self.link = link_before
      return rollback(err, errno)
    end
    if not self.routes[key] then
      self.routes[key] = true
      undo[#undo + 1] = function()
        self.routes[key] = nil
        local ok, uerr, uerrno = core.route(self.ifname, "del", key)
        if ok == nil and uerrno == ESRCH then return true end
        return ok, uerr, uerrno
      end
    end
  end
  -- Port 0 means "any port" and was applied by create_interface: applying
  -- it again would move to another random port on every call.
  local port = self.opts.listen_port
  if port == 0 then port = nil end
  local ok, err, errno = d:apply({ private_key = self.opts.private_key, listen_port = port, peers = ops })
  if not ok then
    self.link = link_before
    return rollback(err, errno)
  end
  self.peers = peers
  d:set_mtu_hint(self.mtu)
  self:_drop_routes(wanted)
  return true
end

local function find_peer(self, pub)
  for _, p in ipairs(self:status().peers) do
    if p.public_key == pub then return p end
  end
end

--- Adds (or updates) one peer and routes its allowed IPs.
-- @return true, or nil, message, errno
function Transport:add_peer(peer)
  local d = dev(self)
  check_type(peer, "table", "add_peer: peer")
  check_type(peer.public_key, "string", "add_peer: peer.public_key")
  if not core.valid_key(peer.public_key) then return bad_key(peer.public_key) end
  local ok, err, errno = check_allowed_ips(peer.allowed_ips, "add_peer: allowed_ips")
  if not ok then return fail(err, errno) end
  ok, err, errno = d:apply({ peers = { peer_op(peer) } })
  if not ok then return fail(err, errno) end
  return self:_sync_routes()
end

--- Removes a peer (its sessions end and its keys are wiped).
-- @return true, or nil, message, errno (ENOENT if there is no such peer)
function Transport:remove_peer(public_key)
  local d = dev(self)
  check_type(public_key, "string", "remove_peer: public_key")
  if not core.valid_key(public_key) then return bad_key(public_key) end
  if not find_peer(self, public_key) then
    return fail(string.format("no peer %s", public_key), ENOENT)
  end
  local ok, err, errno = d:apply({ peers = { { public_key = public_key, remove = true } } })
  if not ok then return fail(err, errno) end
  return self:_sync_routes()
end

--- Points a peer at a new endpoint ("IP:PORT" or "[IPv6]:PORT").
-- @return true, or nil, message, errno
function Transport:update_peer_endpoint(public_key, endpoint)
  local d = dev(self)
  check_type(public_key, "string", "update_peer_endpoint: public_key")
  check_type(endpoint, "string", "update_peer_endpoint: endpoint")
  if not core.valid_key(public_key) then return bad_key(public_key) end
  if not find_peer(self, public_key) then
    return fail(string.format("no peer %s", public_key), ENOENT)
  end
  return result(d:apply({ peers = { { public_key = public_key, update_only = true, endpoint = endpoint } } }))
end

--- Adds an allowed IP to a peer (moving it from another peer if needed).
-- @return true, or nil, message, errno
function Transport:add_allowed_ip(public_key, c)
  local d = dev(self)
  check_type(public_key, "string", "add_allowed_ip: public_key")
  check_type(c, "string", "add_allowed_ip: cidr")
  local p, err = cidr.parse(c)
  if not p then return fail(err) end
  if not core.valid_key(public_key) then return bad_key(public_key) end
  if not find_peer(self, public_key) then
    return fail(string.format("no peer %s", public_key), ENOENT)
  end
  local ok, errno
  ok, err, errno = d:apply({ peers = { { public_key = public_key, update_only = true, allowed_ips = { c } } } })
  if not ok then return fail(err, errno) end
  return self:_sync_routes()
end

--- Removes an allowed IP from a peer.
-- @return true, or nil, message, errno
function Transport:remove_allowed_ip(public_key, c)
  local d = dev(self)
  check_type(public_key, "string", "remove_allowed_ip: public_key")
  check_type(c, "string", "remove_allowed_ip: cidr")
  local p, err = cidr.parse(c)
  if not p then return fail(err) end
  if not core.valid_key(public_key) then return bad_key(public_key) end
  if not find_peer(self, public_key) then
    return fail(string.format("no peer %s", public_key), ENOENT)
  end
  local ok, errno
  ok, err, errno = d:apply({ peers = { { public_key = public_key, update_only = true, remove_allowed_ips = { c } } } })
  if not ok then return fail(err, errno) end
  return self:_sync_routes()
end

--- Status: `interface`, `public_key`, `listen_port`, `peers` (each with
-- `public_key`, `endpoint`, `last_handshake` (epoch seconds, 0 if never),
-- `rx_bytes`, `tx_bytes`, `allowed_ips`, `persistent_keepalive`) and the
-- engine's drop counters in `stats`.
function Transport:status()
  return result(dev(self):status())
end

--- True once a handshake with the peer completed at or after `since`
-- (epoch seconds, default 0); false before that, and for a peer we do not
-- have.  A malformed key is an error: nil, message, EINVAL.
function Transport:check_handshake(public_key, since)
  dev(self)
  check_type(public_key, "string", "check_handshake: public_key")
  since = since or 0
  check_type(since, "number", "check_handshake: since")
  if not core.valid_key(public_key) then return bad_key(public_key) end
  local p = find_peer(self, public_key)
  if not p then return false end
  return p.last_handshake > 0 and p.last_handshake_precise >= since
end

function Transport:interface_name() return self.ifname end

--- A descriptor that becomes readable when events are pending (for
-- luv's `uv.new_poll`, cqueues or poll()).
function Transport:fd() return dev(self):fd() end

--- Iterates over pending events: tables with `type` ("handshake",
-- "endpoint", "stale", "datagram"), `time` (epoch seconds) and either
-- `public_key`/`endpoint` or, for datagrams, `from` and `data`.
function Transport:events()
  local list, i = dev(self):events(), 0
  return function()
    i = i + 1
    return list[i]
  end
end

--- Sends raw bytes from the WireGuard UDP socket.
-- @string endpoint "IP:PORT" or "[IPv6]:PORT"
-- @string bytes
-- @int[opt] ttl IPv4 TTL / IPv6 hop limit of this datagram (1-255; default:
--   the system's)
function Transport:send_datagram(endpoint, bytes, ttl)
  check_type(endpoint, "string", "send_datagram: endpoint")
  check_type(bytes, "string", "send_datagram: bytes")
  if ttl ~= nil and (math.type(ttl) ~= "integer" or ttl < 1 or ttl > 255) then
    error("send_datagram: ttl must be an integer 1-255", 2)
  end
  return result(dev(self):send_datagram(endpoint, bytes, ttl))
end

--- Registers (or, with `false`, forgets) a TURN server: ChannelData
-- datagrams from it are unwrapped by the engine's datapath (the TURN
-- signalling itself still reaches Lua as "datagram" events).
-- @tparam string server "IP:PORT"
function Transport:set_relay(server, enabled)
  check_type(server, "string", "set_relay: server")
  return result(dev(self):set_relay(server, enabled ~= false))
end

--- Reaches a peer through a TURN relay channel: WireGuard packets to it
-- are framed as ChannelData to `server` (end-to-end encryption unchanged).
-- `channel` 0 with the peer's own address as `server` goes back to direct.
function Transport:set_peer_relay(public_key, server, channel)
  check_type(public_key, "string", "set_peer_relay: public_key")
  check_type(server, "string", "set_peer_relay: server")
  if math.type(channel) ~= "integer" then error("set_peer_relay: channel: integer expected", 2) end
  if not core.valid_key(public_key) then return bad_key(public_key) end
  return result(dev(self):set_peer_relay(public_key, server, channel))
end

--- Starts a handshake with a peer now.
function Transport:initiate_handshake(public_key)
  check_type(public_key, "string", "initiate_handshake: public_key")
  if not core.valid_key(public_key) then return bad_key(public_key) end
  return result(dev(self):initiate_handshake(public_key))
end

--- Key rotation, this side: the interface takes a new private key
-- (base64) WITHOUT ending its sessions (unlike setting `private_key`
-- through `configure` or UAPI, which, as in the kernel, expires them):
-- traffic goes on under the current keypairs until the normal timers
-- retire them, new handshakes use the new key, and the engine keeps
-- nothing of the old one.  Peers must learn the new public key
-- (`set_peer_public_key` on their side) before the next handshake.
-- @return true, or nil, message, errno
function Transport:rotate_private_key(private_key)
  check_type(private_key, "string", "rotate_private_key: private_key")
  if not core.valid_key(private_key) then
    return fail("bad private key: expected 32 bytes base64")
  end
  local ok, err, errno = dev(self):rotate_private_key(private_key)
  if not ok then return fail(err, errno) end
  self.opts.private_key = private_key -- what a later `configure` applies
  return true
end

--- Key rotation, a peer's side: the peer `old_key` now has the public key
-- `new_key`; changed in place, so its sessions, endpoint and allowed IPs
-- stay and the next handshake uses the new key.
-- @return true, or nil, message, errno (ENOENT: no peer `old_key`,
--   EEXIST: another peer has `new_key`)
function Transport:set_peer_public_key(old_key, new_key)
  check_type(old_key, "string", "set_peer_public_key: old_key")
  check_type(new_key, "string", "set_peer_public_key: new_key")
  if not core.valid_key(old_key) then return bad_key(old_key) end
  if not core.valid_key(new_key) then return bad_key(new_key) end
  local ok, err, errno = dev(self):set_peer_public_key(old_key, new_key)
  if not ok then return fail(err, errno) end
  for _, p in ipairs(self.peers or {}) do
    if p.public_key == old_key then p.public_key = new_key end
  end
  return true
end

--- Tears the interface down (TUN, sockets, keys).  Idempotent.
function Transport:shutdown()
  if self.dev then
    self.dev:close()
    self.dev = nil
  end
  self.closed = true
  return true
end

Transport.__close = Transport.shutdown
Transport.__gc = Transport.shutdown
Transport.__tostring = function(self)
  return string.format("wgoverlay transport (%s%s)", self.ifname, self.closed and ", closed" or "")
end

M.Transport = Transport
return M
