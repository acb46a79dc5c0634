--- Containers on the overlay: a container's network namespace gets a veth
-- to the node, an address from the node's slice and a route to the
-- cluster; `detach` removes it all.  Everything goes through RTNETLINK
-- (libmnl) via wgoverlay.core; nothing runs `ip`.  `wgoverlay attach` and
-- the CNI plugin (wgoverlay.cni) both end here, in the daemon, which holds
-- the allocator and the registry: one implementation.
--
-- Layout (the routed model, no bridge, no ARP games):
--
--    container netns                 node netns
--    ovl0 10.200.0.2/32   <-veth->   wgc<id> 169.254.1.1/32, fe80::1/64
--    route 10.200.0.0/16 via 169.254.1.1 onlink
--    (egress) default via 169.254.1.1 onlink
--                                    route 10.200.0.2/32 dev wgc<id>
--
-- The node forwards between the veth and its WireGuard interface, whose
-- peers' allowed IPs are their nodes' slices.  Both ends of the veth get
-- the overlay MTU, so a container never sends what the tunnel must refuse.
-- Containers with egress reach beyond the overlay through their node,
-- masqueraded by the node's nftables table `inet wgoverlay` (see egress
-- below).
-- @module wgoverlay.containers
local core = require "wgoverlay.core"
local cidr = require "wgoverlay.cidr"
local state = require "wgoverlay.state"
local endpoint = require "wgoverlay.endpoint"

local M = {}

M.GATEWAY4 = "169.254.1.1"
M.GATEWAY6 = "fe80::1"
M.CONTAINER_IF = "ovl0"
M.DEFAULT_MTU = 1420 -- 1500 less IPv6's WireGuard overhead, until the underlay is known
-- WireGuard's overhead on the underlay: outer IP header + UDP 8 + WireGuard
-- data header 16 + Poly1305 tag 16.
M.OVERHEAD = { [4] = 20 + 8 + 32, [6] = 40 + 8 + 32 }

--- The overlay MTU for a set of underlay endpoints: the smallest MTU of
-- the routes to them (RTM_GETROUTE, the route's MTU metric or its link's
-- MTU) less WireGuard's overhead for each one's address family.
-- @tparam {string,...} endpoints "IP:PORT" of the other nodes
-- @return mtu, or nil when no endpoint could be routed
function M.derive_mtu(endpoints)
  local best
  for _, e in ipairs(endpoints) do
    local ep = endpoint.parse(e)
    local r = ep and core.route_get(ep.ip)
    if r and r.mtu and r.mtu > 0 then
      local m = r.mtu - M.OVERHEAD[ep.family]
      if not best or m < best then best = m end
    end
  end
  if best and best < 576 then best = 576 end
  return best
end

--- The node-side interface name for a container key (a namespace name
-- for `attach`, "cni:<container id>/<ifname>" for the plugin): "wgc" and
-- 8 hex digits of a hash of the key (fits IFNAMSIZ, stable across
-- restarts).
function M.host_ifname(key)
  local h = core.blake2s(key, nil, 4)
  return "wgc" .. (h:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function try(ok, err)
  if not ok then error(err, 0) end
  return ok
end

--- Attaches a network namespace.
-- @tparam table o `netns` (name under /var/run/netns or a path), `key`
--   (default: netns), `ifname` (the container's interface, default
--   ovl0), `ip` (IPv4 address), `ip6` (optional IPv6 address),
--   `cluster4`, `cluster6` (CIDRs routed through the node), `mtu`,
--   `egress` (also a default route through the node)
-- @return host interface name, or nil and a message (nothing left behind)
function M.attach(o)
  assert(type(o) == "table" and type(o.netns) == "string" and type(o.ip) == "string", "attach: bad options")
  local host_if = M.host_ifname(o.key or o.netns)
  local cif = o.ifname or M.CONTAINER_IF
  if core.ifindex(host_if) > 0 then
    return nil, string.format("namespace %s is already attached (%s exists)", o.netns, host_if)
  end
  local ok, err = pcall(function()
    try(core.veth(host_if, cif, o.netns))
    if o.mtu then try(core.link(host_if, { mtu = o.mtu })) end
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
      if o.mtu then try(core.link(cif, { mtu = o.mtu })) end
      try(core.link(cif, { up = true }))
      try(core.addr(cif, "add", o.ip .. "/32"))
      try(core.route_via(cif, "add", o.cluster4, M.GATEWAY4))
      if o.egress then try(core.route_via(cif, "add", "0.0.0.0/0", M.GATEWAY4)) end
      if o.ip6 then
        try(core.addr(cif, "add", o.ip6 .. "/128"))
        try(core.route_via(cif, "add", o.cluster6, M.GATEWAY6))
        if o.egress then try(core.route_via(cif, "add", "::/0", M.GATEWAY6)) end
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

--- Detaches a container (deletes the veth pair; routes go with it).
-- @return true, or nil and a message
function M.detach(key)
  local host_if = M.host_ifname(key)
  local ok, err = core.link_delete(host_if)
  if ok == false then return nil, string.format("namespace %s is not attached", key) end
  if not ok then return nil, err end
  return true
end

-- The first address of a CIDR (a destination to ask the routing table about).
local function first_host(c)
  return cidr.address(cidr.network(assert(cidr.parse(c))))
end

local function has(list, x)
  for _, v in ipairs(list or {}) do if v == x then return true end end
  return false
end

--- Checks that a container is still as `attach` left it: both veth ends
-- up with the MTU, its addresses, and the routes to the cluster (and the
-- default routes with egress) through the node; the node's route back.
-- @tparam table o as for `attach`
-- @return true, or nil and what differs
function M.check(o)
  local host_if = M.host_ifname(o.key or o.netns)
  local cif = o.ifname or M.CONTAINER_IF
  local hi = core.link_info(host_if)
  if not hi then return nil, string.format("the node's end of the container's link (%s) is gone", host_if) end
  if not hi.up then return nil, string.format("%s is down", host_if) end
  local r = core.route_get(o.ip)
  if not r or r.ifname ~= host_if then
    return nil, string.format("the node's route to %s does not go through %s", o.ip, host_if)
  end
  local res = table.pack(core.with_netns(o.netns, function()
    local li = core.link_info(cif)
    if not li then return nil, string.format("interface %s is missing in %s", cif, o.netns) end
    if not li.up then return nil, string.format("interface %s is down", cif) end
    if o.mtu and li.mtu ~= o.mtu then
      return nil, string.format("interface %s has MTU %d, expected %d", cif, li.mtu, o.mtu)
    end
    local addrs = core.addr_list(cif) or {}
    for _, a in ipairs({ o.ip .. "/32", o.ip6 and (o.ip6 .. "/128") or nil }) do
      if not has(addrs, a) then return nil, string.format("interface %s lacks address %s", cif, a) end
    end
    local want = { { first_host(o.cluster4), M.GATEWAY4 } }
    if o.ip6 then want[#want + 1] = { first_host(o.cluster6), M.GATEWAY6 } end
    if o.egress then
      want[#want + 1] = { "192.0.2.1", M.GATEWAY4 } -- any address outside the cluster (only looked up)
      if o.ip6 then want[#want + 1] = { "2001:db8::1", M.GATEWAY6 } end
    end
    for _, w in ipairs(want) do
      local rt = core.route_get(w[1])
      if not rt or rt.ifname ~= cif or rt.gateway ~= w[2] then
        return nil, string.format("route to %s does not go via %s on %s", w[1], w[2], cif)
      end
    end
    return li
  end))
  if not res[1] then return nil, res[2] end
  return true
end

-- ---------------------------------------------------------------------
-- egress: masquerade through the node (nftables)
-- ---------------------------------------------------------------------

-- The nftables table is ours alone: `inet wgoverlay`, replaced whole in one
-- transaction (`nft -f`: add + delete + define is atomic) whenever the set
-- of egress containers changes, deleted when the last one goes and when
-- the daemon stops.  We drive nft(8) with a fixed ruleset rather than bind
-- libnftables: the text is nftables' stable interface either way (the
-- library takes the same text), the only variable parts are addresses
-- and prefixes we produced and checked ourselves, and it keeps a second
-- netlink protocol out of the C binding.  Forwarding is enabled by attach,
-- in the node's own namespace only (the daemon's).
M.NFT_TABLE = "inet wgoverlay"

local function nft_bin()
  for _, p in ipairs({ "/usr/sbin/nft", "/sbin/nft" }) do
    local f = io.open(p)
    if f then f:close() return p end
  end
  return "nft"
end

--- The ruleset for egress addresses `v4`, `v6` (lists), not masquerading
-- traffic that stays inside the cluster CIDRs.
function M.egress_ruleset(v4, v6, cluster4, cluster6)
  local out = { "add table " .. M.NFT_TABLE, "delete table " .. M.NFT_TABLE }
  if #v4 + #v6 == 0 then return table.concat(out, "\n") .. "\n" end
  for _, a in ipairs(v4) do assert(cidr.parse(a), "bad address") end
  for _, a in ipairs(v6) do assert(cidr.parse(a), "bad address") end
  out[#out + 1] = "table " .. M.NFT_TABLE .. " {"
  out[#out + 1] = "  chain postrouting {"
  out[#out + 1] = "    type nat hook postrouting priority srcnat; policy accept;"
  if #v4 > 0 then
    out[#out + 1] = string.format("    ip saddr { %s } ip daddr != %s masquerade", table.concat(v4, ", "),
      assert(cidr.parse(cluster4)) and cluster4)
  end
  if #v6 > 0 and cluster6 then
    out[#out + 1] = string.format("    ip6 saddr { %s } ip6 daddr != %s masquerade", table.concat(v6, ", "),
      assert(cidr.parse(cluster6)) and cluster6)
  end
  out[#out + 1] = "  }"
  out[#out + 1] = "}"
  return table.concat(out, "\n") .. "\n"
end

--- Applies a ruleset with `nft -f`; true, or nil and nft's message.
function M.nft_apply(text)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  local p = io.popen(nft_bin() .. " -f " .. path .. " 2>&1", "r")
  local out = p and p:read("a") or ""
  local ok = p and p:close()
  os.remove(path)
  if not ok then return nil, "nft: " .. (out:gsub("%s+$", "")) end
  return true
end

--- Runs `nft ARGS` (fixed text of ours: list commands); its output, or nil.
function M.nft_list(args)
  local p = io.popen(nft_bin() .. " " .. args .. " 2>/dev/null", "r")
  if not p then return nil end
  local out = p:read("a")
  if not p:close() then return nil end
  return out
end

-- ---------------------------------------------------------------------
-- a node's containers: addresses from its slice, containers.json
-- ---------------------------------------------------------------------

local Set = {}
Set.__index = Set

--- The containers of a node.
-- @tparam table o `node` (node.json), `path` (containers.json), `attached`
--   (key -> `{ name, ip, ip6[, netns, ifname, egress, mtu, container_id] }`,
--   as loaded; the key is the namespace for `attach`, "cni:<id>/<ifname>"
--   for the plugin), `valid_name(name)`, `log(fmt, ...)`, `changed()`
--   (called after every attach and detach), `mtu()` (the overlay MTU now),
--   `dns` (`{ nameservers, domain }` for results)
function M.set(o)
  return setmetatable({ node = o.node, path = o.path, attached = o.attached or {}, valid_name = o.valid_name,
                        log = o.log, changed = o.changed, mtu = o.mtu or function() return nil end,
                        dns = o.dns, egress_applied = "" }, Set)
end

--- `{ name, ip, ip6, labels }` for each container, by address.
function Set:records()
  local list = {}
  for _, c in pairs(self.attached) do
    list[#list + 1] = { name = c.name, ip = c.ip, ip6 = c.ip6, labels = c.labels }
  end
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
  return nil, string.format("slice %s of this node is exhausted: all %d container addresses are in use "
    .. "(detach or delete containers to free some)", s.slice, size - 3), "exhausted"
end

-- The options of M.attach / M.check for a record.
function Set:link_opts(key, c)
  return { key = key, netns = c.netns or key, ifname = c.ifname, ip = c.ip, ip6 = c.ip6, mtu = c.mtu,
           egress = c.egress, cluster4 = self.node.cluster.cidr4, cluster6 = self.node.cluster.cidr6 }
end

--- What the plugin reports for an attached container (CNI result fields).
function Set:describe(key)
  local c = self.attached[key]
  local o = self:link_opts(key, c)
  local host_if = M.host_ifname(key)
  local hi = core.link_info(host_if) or {}
  local ci = core.with_netns(o.netns, function() return core.link_info(o.ifname or M.CONTAINER_IF) end)
  return { name = c.name, ip = c.ip, ip6 = c.ip6, labels = c.labels, netns = o.netns,
           ifname = o.ifname or M.CONTAINER_IF,
           host_if = host_if, host_mac = hi.mac, mac = type(ci) == "table" and ci.mac or nil, mtu = c.mtu,
           egress = c.egress == true, gateway4 = M.GATEWAY4, gateway6 = c.ip6 and M.GATEWAY6 or nil,
           cluster4 = o.cluster4, cluster6 = c.ip6 and o.cluster6 or nil, dns = self.dns }
end

--- Attaches a container.
-- @tparam table r `netns` (name or path), `name` (DNS label), optional
--   `key` (default: netns), `ifname`, `container_id`, `egress`, `mtu`
--   (at most the overlay MTU; default the overlay MTU)
-- @return the description (see `describe`), or nil, message, kind
--   ("invalid", "exists", "exhausted", "failed")
function Set:attach(r)
  local netns = r.netns
  if type(netns) ~= "string" or netns == "" or #netns > 4096 or netns:find("%z") then
    return nil, "attach: network namespace expected", "invalid"
  end
  local key = r.key or netns
  if type(key) ~= "string" or key == "" or #key > 4096 or key:find("%z") then
    return nil, "attach: bad container key", "invalid"
  end
  local name = r.name
  if not self.valid_name(name or "") then
    return nil, string.format("container name \"%s\" invalid (a DNS label: a-z, 0-9, '-', at most 63)",
      tostring(name)), "invalid"
  end
  local ifname = r.ifname
  if ifname ~= nil and (type(ifname) ~= "string" or not ifname:match("^[%w_.-]+$") or #ifname > 15) then
    return nil, string.format("interface name \"%s\" invalid (1-15 of letters, digits, '_', '.', '-')",
      tostring(ifname)), "invalid"
  end
  local labels = r.labels
  if labels ~= nil then
    local lok, lerr = require("wgoverlay.policy").check_labels(labels, "labels")
    if not lok then return nil, lerr, "invalid" end
    if next(labels) == nil then labels = nil end
  end
  local overlay = self.mtu()
  local mtu = r.mtu
  if mtu ~= nil then
    mtu = math.tointeger(mtu)
    if not mtu or mtu < 576 or (overlay and mtu > overlay) then
      return nil, string.format("mtu %s invalid: must be 576..%d (this node's overlay MTU)", tostring(r.mtu),
        overlay or 65535), "invalid"
    end
  end
  mtu = mtu or overlay
  local old = self.attached[key]
  if old then
    -- a record whose link is gone (its namespace was deleted without a
    -- detach) is stale: its address is reused for the new container
    if core.ifindex(M.host_ifname(key)) > 0 then
      return nil, string.format("%s is already attached", key), "exists"
    end
    self.log("forgetting stale container %s (%s): its link is gone", key, old.ip)
    self.attached[key] = nil
  end
  local a, err, kind = self:free_addr()
  if not a then return nil, err, kind end
  local rec = { name = name, ip = a.ip, ip6 = a.ip6, netns = netns ~= key and netns or nil, ifname = ifname,
                egress = r.egress == true or nil, mtu = mtu, labels = labels,
                container_id = type(r.container_id) == "string" and r.container_id or nil }
  local _, aerr = M.attach(self:link_opts(key, rec))
  if aerr then
    if old then self:save() self.changed() end
    return nil, aerr, "failed"
  end
  self.attached[key] = rec
  self:save()
  self.changed()
  local eok, eerr = self:sync_egress()
  if not eok then
    M.detach(key)
    self.attached[key] = nil
    self:save()
    self.changed()
    return nil, "egress: " .. tostring(eerr), "failed"
  end
  self.log("attached %s as %s (%s, mtu %s%s)", key, name, a.ip, tostring(mtu), rec.egress and ", egress" or "")
  return self:describe(key)
end

--- Detaches a container.  With `missing_ok` (the plugin's DEL) a
-- container that is not attached, or whose namespace is gone, is success.
-- @return `{ detached = bool }`, or nil, message, kind
function Set:detach(key, missing_ok)
  if type(key) ~= "string" then return nil, "detach: container expected", "invalid" end
  if not self.attached[key] then
    if missing_ok then return { detached = false } end
    return nil, string.format("namespace %s is not attached", tostring(key)), "missing"
  end
  M.detach(key) -- a link already gone is fine
  self.attached[key] = nil
  self:save()
  self.changed()
  local ok, err = self:sync_egress()
  if not ok then self.log("egress: %s", err) end
  self.log("detached %s", key)
  return { detached = true }
end

--- Checks an attached container (see M.check).
-- @return the description, or nil, message, kind ("missing", "changed")
function Set:check(key)
  local c = type(key) == "string" and self.attached[key]
  if not c then return nil, string.format("%s is not attached", tostring(key)), "missing" end
  local ok, err = M.check(self:link_opts(key, c))
  if not ok then return nil, err, "changed" end
  return self:describe(key)
end

--- Applies the overlay MTU to every attached container (both veth ends).
function Set:set_mtu(mtu)
  for key, c in pairs(self.attached) do
    if c.mtu ~= mtu then
      local o = self:link_opts(key, c)
      core.link(M.host_ifname(key), { mtu = mtu })
      core.with_netns(o.netns, function() return core.link(o.ifname or M.CONTAINER_IF, { mtu = mtu }) end)
      c.mtu = mtu
    end
  end
  self:save()
end

--- Brings the nftables table in line with the egress containers (only
-- when that set changed).  `force` re-applies (daemon start and stop).
function Set:sync_egress(force, none)
  local v4, v6 = {}, {}
  if not none then
    for _, c in pairs(self.attached) do
      if c.egress then
        v4[#v4 + 1] = c.ip
        if c.ip6 then v6[#v6 + 1] = c.ip6 end
      end
    end
  end
  table.sort(v4)
  table.sort(v6)
  local text = M.egress_ruleset(v4, v6, self.node.cluster.cidr4, self.node.cluster.cidr6)
  if text == self.egress_applied and not force then return true end
  if #v4 == 0 and self.egress_applied == "" and not force then return true end
  local ok, err = M.nft_apply(text)
  if not ok then return nil, err end
  self.egress_applied = (#v4 > 0) and text or ""
  return true
end

--- Removes our nftables table (daemon exit).
function Set:stop()
  if self.egress_applied ~= "" then
    local ok, err = self:sync_egress(true, true)
    if not ok then self.log("egress: cannot remove table %s: %s", M.NFT_TABLE, err) end
  end
end

--- Re-attaches the containers recorded before a restart whose veths are
-- gone (they survive only if the namespaces do); forgets those that fail.
function Set:restore()
  for key, c in pairs(self.attached) do
    if core.ifindex(M.host_ifname(key)) <= 0 then
      c.mtu = self.mtu() or c.mtu
      local _, err = M.attach(self:link_opts(key, c))
      if err then
        self.log("container %s not restored: %s", key, err)
        self.attached[key] = nil
      end
    end
  end
  local ok, err = self:sync_egress(true)
  if not ok then self.log("egress: %s", err) end
end

return M
