--- Containers on the overlay: a container's network namespace gets a veth
-- to the node, an address from the node's slice and a route to the
-- cluster; `detach` removes it all.  Everything goes through RTNETLINK
-- (libmnl) via wgoverlay.core; nothing runs `ip`.
--
-- Layout (the routed model, no bridge, no ARP games):
--
--    container netns                 node netns
--    ovl0 10.200.0.2/32   <-veth->   wgc<id> 169.254.1.1/32, fe80::1/64
--    route 10.200.0.0/16 via 169.254.1.1 onlink
--                                    route 10.200.0.2/32 dev wgc<id>
--
-- The node forwards between the veth and its WireGuard interface, whose
-- peers' allowed IPs are their nodes' slices.
-- @module wgoverlay.containers
local core = require "wgoverlay.core"
local cidr = require "wgoverlay.cidr"
local state = require "wgoverlay.state"

local M = {}

M.GATEWAY4 = "169.254.1.1"
M.GATEWAY6 = "fe80::1"
M.CONTAINER_IF = "ovl0"

--- The node-side interface name for a namespace: "wgc" and 8 hex digits
-- of a hash of the namespace name (fits IFNAMSIZ, stable across restarts).
function M.host_ifname(netns)
  local h = core.blake2s(netns, nil, 4)
  return "wgc" .. (h:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function try(ok, err)
  if not ok then error(err, 0) end
  return ok
end

--- Attaches a network namespace.
-- @tparam table o `netns` (name under /var/run/netns or a path), `ip`
--   (IPv4 address), `ip6` (optional IPv6 address), `cluster4`, `cluster6`
--   (CIDRs routed through the node)
-- @return host interface name, or nil and a message (nothing left behind)
function M.attach(o)
  assert(type(o) == "table" and type(o.netns) == "string" and type(o.ip) == "string", "attach: bad options")
  local host_if = M.host_ifname(o.netns)
  if core.ifindex(host_if) > 0 then
    return nil, string.format("namespace %s is already attached (%s exists)", o.netns, host_if)
  end
  local ok, err = pcall(function()
    try(core.veth(host_if, M.CONTAINER_IF, o.netns))
    try(core.link(host_if, { up = true }))
    try(core.addr(host_if, "add", M.GATEWAY4 .. "/32"))
    try(core.route(host_if, "add", o.ip .. "/32"))
    try(core.sysctl("net/ipv4/ip_forward", "1"))
    if o.ip6 then
      try(core.addr(host_if, "add", M.GATEWAY6 .. "/64"))
      try(core.route(host_if, "add", o.ip6 .. "/128"))
      try(core.sysctl("net/ipv6/conf/all/forwarding", "1"))
    end
    local res = table.pack(core.with_netns(o.netns, function()
      try(core.link("lo", { up = true }))
      try(core.link(M.CONTAINER_IF, { up = true }))
      try(core.addr(M.CONTAINER_IF, "add", o.ip .. "/32"))
      try(core.route_via(M.CONTAINER_IF, "add", o.cluster4, M.GATEWAY4))
      if o.ip6 then
        try(core.addr(M.CONTAINER_IF, "add", o.ip6 .. "/128"))
        try(core.route_via(M.CONTAINER_IF, "add", o.cluster6, M.GATEWAY6))
      end
      return true
    end))
    if not res[1] then error(res[2], 0) end
  end)
  if not ok then
    core.link_delete(host_if) -- the container end goes with it
    return nil, string.format("attaching %s: %s", o.netns, err)
  end
  return host_if
end

--- Detaches a namespace (deletes the veth pair; routes go with it).
-- @return true, or nil and a message
function M.detach(netns)
  local host_if = M.host_ifname(netns)
  local ok, err = core.link_delete(host_if)
  if ok == false then return nil, string.format("namespace %s is not attached", netns) end
  if not ok then return nil, err end
  return true
end

-- ---------------------------------------------------------------------
-- a node's containers: addresses from its slice, containers.json
-- ---------------------------------------------------------------------

local Set = {}
Set.__index = Set

--- The containers of a node.
-- @tparam table o `node` (node.json), `path` (containers.json), `attached`
--   (netns -> `{ name, ip, ip6 }`, as loaded), `valid_name(name)`,
--   `log(fmt, ...)`, `changed()` (called after every attach and detach)
function M.set(o)
  return setmetatable({ node = o.node, path = o.path, attached = o.attached or {}, valid_name = o.valid_name,
                        log = o.log, changed = o.changed }, Set)
end

--- `{ name, ip, ip6 }` for each container, by address.
function Set:records()
  local list = {}
  for _, c in pairs(self.attached) do list[#list + 1] = { name = c.name, ip = c.ip, ip6 = c.ip6 } end
  table.sort(list, function(a, b) return a.ip < b.ip end)
  return list
end

function Set:save()
  local ok, err = state.save(self.path, { attached = self.attached })
  if not ok then self.log("cannot save containers: %s", err) end
end

-- The address `off` hosts into the network of CIDR `c`.
local function offset_addr(c, off)
  local p = cidr.network(assert(cidr.parse(c)))
  local b = p.bytes
  local i = #b
  while off > 0 and i >= 1 do
    local v = b[i] + (off & 0xff)
    off = (off >> 8) + (v >> 8)
    b[i] = v & 0xff
    i = i - 1
  end
  return cidr.address(p)
end

-- The lowest free host offset of the node's slice, from 2 (1 is the node),
-- the same offset in IPv4 and IPv6.
function Set:free_addr()
  local s = self.node.self
  local size = 1 << (32 - assert(cidr.parse(s.slice)).prefix)
  local used = {}
  for _, c in pairs(self.attached) do used[c.ip] = true end
  for off = 2, size - 2 do
    local ip = offset_addr(s.slice, off)
    if not used[ip] then
      return { ip = ip, ip6 = s.slice6 and offset_addr(s.slice6, off) or nil }
    end
  end
  return nil, string.format("slice %s has no free address for another container", s.slice)
end

function Set:attach(netns, name)
  if type(netns) ~= "string" or netns == "" then return nil, "attach: network namespace expected" end
  if not self.valid_name(name or "") then
    return nil, string.format("container name \"%s\" invalid (a DNS label)", tostring(name))
  end
  if self.attached[netns] then return nil, string.format("namespace %s is already attached", netns) end
  local a, err = self:free_addr()
  if not a then return nil, err end
  local _, aerr = M.attach({ netns = netns, ip = a.ip, ip6 = a.ip6, cluster4 = self.node.cluster.cidr4,
                             cluster6 = self.node.cluster.cidr6 })
  if aerr then return nil, aerr end
  self.attached[netns] = { name = name, ip = a.ip, ip6 = a.ip6 }
  self:save()
  self.changed()
  self.log("attached %s as %s (%s)", netns, name, a.ip)
  return { ip = a.ip, ip6 = a.ip6, name = name }
end

function Set:detach(netns)
  if not self.attached[netns] then return nil, string.format("namespace %s is not attached", tostring(netns)) end
  M.detach(netns)
  self.attached[netns] = nil
  self:save()
  self.changed()
  self.log("detached %s", netns)
  return true
end

--- Re-attaches the containers recorded before a restart whose veths are
-- gone (they survive only if the namespaces do); forgets those that fail.
function Set:restore()
  for netns, c in pairs(self.attached) do
    if core.ifindex(M.host_ifname(netns)) <= 0 then
      local _, err = M.attach({ netns = netns, ip = c.ip, ip6 = c.ip6, cluster4 = self.node.cluster.cidr4,
                                cluster6 = self.node.cluster.cidr6 })
      if err then
        self.log("container %s not restored: %s", netns, err)
        self.attached[netns] = nil
      end
    end
  end
end

return M
