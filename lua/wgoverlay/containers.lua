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

return M
