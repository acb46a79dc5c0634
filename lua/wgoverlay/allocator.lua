--- Overlay address allocation (pure, serialisable).
--
-- The cluster prefixes (default `10.200.0.0/16` and `fd00:200::/48`) are
-- cut into slices (default `/28` and `/64`).  Slice number `i` is the i-th
-- slice of both prefixes, so a node's IPv4 and IPv6 slices always pair up.
-- Inside a slice, offset 0 (the network address, and the IPv6
-- subnet-router anycast address) and the last offset (the IPv4 broadcast)
-- are never handed out; offset 1 is the node; offsets 2 .. last-1 go to
-- the node's containers, and a container gets the same offset in both
-- families (`10.200.0.2` / `fd00:200::2`).
--
-- Two kinds of allocation share the slice space:
--
-- * per-node slices (`node_slice`), taken from the bottom of the cluster;
-- * flat single addresses (`flat`, a /32 and a /128 each), carved from
--   whole slices taken from the top of the cluster, so the two pools do not
--   interleave.  A flat block is never returned to the slice pool.
--
-- Fresh slices and container addresses are handed out before released
-- ones; released ones are reused oldest first, so an address is not reused
-- while an unused one remains.  Flat addresses fill the open block, then
-- reuse released flat addresses, and only then take a new block.  Every operation is O(1) (amortised): a high-water
-- mark per end plus FIFO queues of released numbers, and id -> number maps.
--
-- Ids (node, container, flat) are non-empty strings.  `export()` gives a
-- plain JSON-safe table; `allocator.import` rebuilds an equal allocator.
-- @module wgoverlay.allocator
local cidr = require "wgoverlay.cidr"

local M = {}

--- Defaults for `new`.
M.DEFAULTS = { cidr4 = "10.200.0.0/16", slice4 = 28, cidr6 = "fd00:200::/48", slice6 = 64 }

local EXPORT_VERSION = 1

local Alloc = {}
Alloc.__index = Alloc

---------------------------------------------------------------------------
-- FIFO queue of integers (released numbers, reused oldest first)
---------------------------------------------------------------------------

local function fifo_new(list)
  local q = { h = 1, t = 0 }
  for _, v in ipairs(list or {}) do q.t = q.t + 1 q[q.t] = v end
  return q
end

local function fifo_push(q, v)
  q.t = q.t + 1
  q[q.t] = v
end

local function fifo_pop(q)
  if q.h > q.t then return nil end
  local v = q[q.h]
  q[q.h] = nil
  q.h = q.h + 1
  return v
end

local function fifo_list(q)
  local out = {}
  for i = q.h, q.t do out[#out + 1] = q[i] end
  return out
end

---------------------------------------------------------------------------
-- Address arithmetic: IPv4 as one integer, IPv6 as two 64-bit halves
---------------------------------------------------------------------------

local function v4_int(bytes)
  return ((bytes[1] * 256 + bytes[2]) * 256 + bytes[3]) * 256 + bytes[4]
end

local function v4_text(n)
  return ("%d.%d.%d.%d"):format(n >> 24 & 255, n >> 16 & 255, n >> 8 & 255, n & 255)
end

local function v6_halves(bytes)
  local hi, lo = 0, 0
  for i = 1, 8 do hi = hi << 8 | bytes[i] end
  for i = 9, 16 do lo = lo << 8 | bytes[i] end
  return hi, lo
end

-- (hi, lo) + (value << shift), value >= 0 small enough not to overflow.
local function v6_add(hi, lo, value, shift)
  local add_hi
  if shift >= 64 then add_hi = value << (shift - 64) else add_hi = value >> (64 - shift) end
  local add_lo = value << shift -- 0 when shift >= 64
  local new_lo = lo + add_lo
  local carry = math.ult(new_lo, lo) and 1 or 0
  return hi + add_hi + carry, new_lo
end

local function v6_text(hi, lo, prefix)
  local bytes = {}
  for i = 1, 8 do bytes[i] = hi >> (64 - 8 * i) & 255 end
  for i = 1, 8 do bytes[8 + i] = lo >> (64 - 8 * i) & 255 end
  local c = { family = 6, bytes = bytes, prefix = prefix or 128 }
  if prefix then return cidr.format(c) end
  return cidr.address(c)
end

---------------------------------------------------------------------------
-- Configuration
---------------------------------------------------------------------------

local function check_prefix(name, value, family, slice, max_slice)
  local c, err = cidr.parse(value)
  if not c then return nil, ("%s: %s"):format(name, err) end
  if c.family ~= family then return nil, ("%s %q is not an IPv%d prefix"):format(name, value, family) end
  c = cidr.network(c)
  if math.type(slice) ~= "integer" or slice <= c.prefix or slice > max_slice then
    return nil, ("slice%d must be an integer in %d..%d for %s"):format(family, c.prefix + 1,
      max_slice, cidr.format(c))
  end
  return c
end

-- Normalised configuration and derived constants, or nil, message.
local function configure(opts)
  local cfg = {}
  for k, v in pairs(M.DEFAULTS) do cfg[k] = v end
  for k, v in pairs(opts or {}) do
    if M.DEFAULTS[k] == nil then return nil, ("unknown allocator option %q"):format(tostring(k)) end
    cfg[k] = v
  end
  cfg.slice4 = math.tointeger(cfg.slice4) or cfg.slice4
  cfg.slice6 = math.tointeger(cfg.slice6) or cfg.slice6
  local c4, err = check_prefix("cidr4", cfg.cidr4, 4, cfg.slice4, 30)
  if not c4 then return nil, err end
  local k = { c4 = c4, base4 = v4_int(c4.bytes), span = 1 << (32 - cfg.slice4) }
  k.nslices = 1 << (cfg.slice4 - c4.prefix)
  cfg.cidr4 = cidr.format(c4)
  if cfg.cidr6 then
    local max6 = 128 - (32 - cfg.slice4) -- room for every IPv4 offset
    local c6, err6 = check_prefix("cidr6", cfg.cidr6, 6, cfg.slice6, max6)
    if not c6 then return nil, err6 end
    k.c6, k.shift6 = c6, 128 - cfg.slice6
    k.hi6, k.lo6 = v6_halves(c6.bytes)
    if cfg.slice6 - c6.prefix < 31 then
      k.nslices = math.min(k.nslices, 1 << (cfg.slice6 - c6.prefix))
    end
    cfg.cidr6 = cidr.format(c6)
  else
    cfg.cidr6, cfg.slice6 = false, false
  end
  return cfg, k
end

---------------------------------------------------------------------------
-- Addresses of a slice
---------------------------------------------------------------------------

function Alloc:_v4(index, offset)
  return v4_text(self.k.base4 + index * self.k.span + offset)
end

function Alloc:_v6(index, offset, prefix)
  if not self.k.c6 then return nil end
  local hi, lo = v6_add(self.k.hi6, self.k.lo6, index, self.k.shift6)
  hi, lo = v6_add(hi, lo, offset, 0)
  return v6_text(hi, lo, prefix)
end

function Alloc:_slice_info(index)
  return {
    index = index,
    slice = self:_v4(index, 0) .. "/" .. self.cfg.slice4,
    ip = self:_v4(index, 1),
    slice6 = self:_v6(index, 0, self.cfg.slice6),
    ip6 = self:_v6(index, 1),
  }
end

function Alloc:_addr_info(index, offset)
  return { ip = self:_v4(index, offset), ip6 = self:_v6(index, offset) }
end

-- Take a slice number: from the bottom (nodes) or the top (flat blocks),
-- fresh ones first, then released ones oldest first.
function Alloc:_take_slice(from_top)
  if self.lo + self.hi < self.k.nslices then
    if from_top then
      self.hi = self.hi + 1
      return self.k.nslices - self.hi
    end
    self.lo = self.lo + 1
    return self.lo - 1
  end
  return fifo_pop(self.free)
end

local function copy(t)
  local c = {}
  for key, v in pairs(t) do c[key] = v end
  return c
end

local function check_id(what, id)
  if type(id) ~= "string" or id == "" then
    error(("allocator: %s id must be a non-empty string"):format(what), 3)
  end
end

---------------------------------------------------------------------------
-- Public API
---------------------------------------------------------------------------

--- Create an allocator.
-- @tparam[opt] table opts `cidr4` ("10.200.0.0/16"), `slice4` (28, at most
--   30), `cidr6` ("fd00:200::/48"; `false` for IPv4 only), `slice6` (64)
-- @return allocator, or nil and a message for an invalid configuration
function M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then error("allocator.new: opts must be a table", 2) end
  local cfg, k = configure(opts)
  if not cfg then return nil, k end
  return setmetatable({
    cfg = cfg, k = k,
    lo = 0, hi = 0,          -- fresh slices used from the bottom / the top
    free = fifo_new(),       -- released slice numbers
    owner = {},              -- slice number -> node id (nodes only)
    nodes = {},              -- node id -> { index, next, free, containers, by_offset }
    flat_ids = {},           -- flat id -> global offset (index * span + offset)
    flat_used = {},          -- global offset -> flat id
    flat_blocks = {},        -- list of slice numbers holding flat addresses
    flat_block = nil,        -- slice number being filled
    flat_next = 0,           -- next fresh offset in flat_block
    flat_free = fifo_new(),  -- released flat global offsets
  }, Alloc)
end

--- The configuration in effect (`cidr4`, `slice4`, `cidr6`, `slice6`),
-- normalised (`cidr6` is false when IPv6 is off).
function Alloc:config()
  return copy(self.cfg)
end

--- The slice of `node_id`, allocating one on first use (idempotent).
-- @tparam string node_id
-- @treturn table `{index, slice = "10.200.0.0/28", ip = "10.200.0.1",
--   slice6 = "fd00:200::/64", ip6 = "fd00:200::1"}` (v6 fields nil when off)
-- @return or nil, "cluster 10.200.0.0/16 has no free /28 slice"
function Alloc:node_slice(node_id)
  check_id("node", node_id)
  local node = self.nodes[node_id]
  if not node then
    local index = self:_take_slice(false)
    if not index then
      return nil, ("cluster %s has no free /%d slice"):format(self.cfg.cidr4, self.cfg.slice4)
    end
    node = { index = index, next = 2, free = fifo_new(), containers = {}, by_offset = {} }
    self.nodes[node_id] = node
    self.owner[index] = node_id
  end
  node.info = node.info or self:_slice_info(node.index)
  return copy(node.info)
end

--- How many node slices the cluster has (indexes 0 .. count-1).
function Alloc:slice_count()
  return self.k.nslices
end

--- The addresses of the slice with number `index` (for registries that
-- allocate slices themselves, e.g. by a compare-and-swap in etcd); does
-- not change this allocator.
-- @return table as for `node_slice`, or nil for an index out of range
function Alloc:slice_at(index)
  if math.type(index) ~= "integer" or index < 0 or index >= self.k.nslices then return nil end
  return self:_slice_info(index)
end

--- The slice of `node_id` if it has one (never allocates).
-- @return table as for `node_slice`, or nil
function Alloc:lookup(node_id)
  check_id("node", node_id)
  local node = self.nodes[node_id]
  if not node then return nil end
  node.info = node.info or self:_slice_info(node.index)
  return copy(node.info)
end

--- Release the slice of `node_id` and every container address in it.
-- @treturn boolean true if the node had a slice
function Alloc:release_node(node_id)
  check_id("node", node_id)
  local node = self.nodes[node_id]
  if not node then return false end
  self.nodes[node_id] = nil
  self.owner[node.index] = nil
  fifo_push(self.free, node.index)
  return true
end

--- The address of container `container_id` in the slice of `node_id`,
-- allocating the next free one on first use (idempotent).
-- @treturn table `{ip, ip6}`
-- @return or nil, message (node without a slice, slice full)
function Alloc:container_addr(node_id, container_id)
  check_id("node", node_id)
  check_id("container", container_id)
  local node = self.nodes[node_id]
  if not node then return nil, ("node %s has no slice"):format(node_id) end
  local offset = node.containers[container_id]
  if not offset then
    if node.next <= self.k.span - 2 then
      offset, node.next = node.next, node.next + 1
    else
      offset = fifo_pop(node.free)
    end
    if not offset then
      return nil, ("slice %s of node %s has no free address"):format(
        self:_v4(node.index, 0) .. "/" .. self.cfg.slice4, node_id)
    end
    node.containers[container_id] = offset
    node.by_offset[offset] = container_id
  end
  return self:_addr_info(node.index, offset)
end

--- Release the address of a container.
-- @treturn boolean true if the container had an address
function Alloc:release_container(node_id, container_id)
  check_id("node", node_id)
  check_id("container", container_id)
  local node = self.nodes[node_id]
  local offset = node and node.containers[container_id]
  if not offset then return false end
  node.containers[container_id] = nil
  node.by_offset[offset] = nil
  fifo_push(node.free, offset)
  return true
end

-- Next flat global offset: fresh in the open block, else a released one,
-- else the first of a new block taken from the top.
function Alloc:_next_flat()
  if self.flat_block == nil or self.flat_next > self.k.span - 2 then
    local g = fifo_pop(self.flat_free)
    if g then return g end
    local index = self:_take_slice(true)
    if not index then return nil end
    self.flat_blocks[#self.flat_blocks + 1] = index
    self.flat_block, self.flat_next = index, 1
  end
  local g = self.flat_block * self.k.span + self.flat_next
  self.flat_next = self.flat_next + 1
  return g
end

--- A single address (a /32 and a /128) for `id`, outside every node
-- slice; idempotent per id.
-- @treturn table `{ip, ip6}`
-- @return or nil, "cluster 10.200.0.0/16 has no free address"
function Alloc:flat(id)
  check_id("flat", id)
  local g = self.flat_ids[id]
  if not g then
    g = self:_next_flat()
    if not g then return nil, ("cluster %s has no free address"):format(self.cfg.cidr4) end
    self.flat_ids[id], self.flat_used[g] = g, id
  end
  return self:_addr_info(g // self.k.span, g % self.k.span)
end

--- Release the flat address of `id`.
-- @treturn boolean true if `id` had one
function Alloc:release_flat(id)
  check_id("flat", id)
  local g = self.flat_ids[id]
  if not g then return false end
  self.flat_ids[id], self.flat_used[g] = nil, nil
  fifo_push(self.flat_free, g)
  return true
end

--- Who holds an IPv4 address of the cluster.
-- @tparam string ip e.g. "10.200.0.2"
-- @return "node", node_id | "container", node_id, container_id |
--   "flat", id | nil
function Alloc:owner_of(ip)
  local c = cidr.parse(ip)
  if not c or c.family ~= 4 or not cidr.contains(self.k.c4, c) then return nil end
  local rel = v4_int(c.bytes) - self.k.base4
  local index, offset = rel // self.k.span, rel % self.k.span
  if self.flat_used[rel] then return "flat", self.flat_used[rel] end
  local node_id = self.owner[index]
  if not node_id then return nil end
  if offset == 1 then return "node", node_id end
  local cid = self.nodes[node_id].by_offset[offset]
  if cid then return "container", node_id, cid end
  return nil
end

--- Counters: `slices` (total), `nodes`, `flat_blocks`, `free_slices`,
-- `flat` (flat addresses in use).
function Alloc:stats()
  local nodes, flat = 0, 0
  for _ in pairs(self.nodes) do nodes = nodes + 1 end
  for _ in pairs(self.flat_ids) do flat = flat + 1 end
  return {
    slices = self.k.nslices, nodes = nodes, flat_blocks = #self.flat_blocks, flat = flat,
    free_slices = self.k.nslices - nodes - #self.flat_blocks,
  }
end

--- A plain, JSON-safe table with the whole state (see `allocator.import`).
function Alloc:export()
  local nodes = {}
  for id, node in pairs(self.nodes) do
    local containers = {}
    for cid, off in pairs(node.containers) do containers[cid] = off end
    nodes[id] = { index = node.index, next = node.next, free = fifo_list(node.free),
      containers = containers }
  end
  local flat_ids = {}
  for id, g in pairs(self.flat_ids) do flat_ids[id] = g end
  return {
    version = EXPORT_VERSION, config = self:config(), lo = self.lo, hi = self.hi,
    free = fifo_list(self.free), nodes = nodes,
    flat = { blocks = copy(self.flat_blocks), next = self.flat_next,
      free = fifo_list(self.flat_free), ids = flat_ids },
  }
end

---------------------------------------------------------------------------
-- Import (validates everything: the table may come from a damaged file)
---------------------------------------------------------------------------

local function int_in(v, lo, hi)
  v = math.tointeger(v)
  if v == nil or v < lo or v > hi then return nil end
  return v
end

local function int_list(list, lo, hi)
  if list == nil then return {} end
  if type(list) ~= "table" then return nil end
  local out = {}
  for i = 1, #list do
    out[i] = int_in(list[i], lo, hi)
    if not out[i] then return nil end
  end
  return out
end

-- Claim slice number `index` for `what`; nil if it is outside the used
-- ranges or already claimed.
local function claim(a, seen, index, what)
  if seen[index] then return nil, ("slice %d is claimed twice (%s)"):format(index, what) end
  if index >= a.lo and index < a.k.nslices - a.hi then
    return nil, ("slice %d (%s) lies in the unused range"):format(index, what)
  end
  seen[index] = what
  return true
end

local function import_node(a, seen, id, rec)
  local span = a.k.span
  if type(id) ~= "string" or id == "" or type(rec) ~= "table" then return nil, "bad node record" end
  local index = int_in(rec.index, 0, a.k.nslices - 1)
  local next_off = int_in(rec.next, 2, span - 1)
  local free = int_list(rec.free, 2, span - 2)
  if not index or not next_off or not free or type(rec.containers or {}) ~= "table" then
    return nil, ("bad record for node %s"):format(id)
  end
  local ok, err = claim(a, seen, index, "node " .. id)
  if not ok then return nil, err end
  local node = { index = index, next = next_off, free = fifo_new(free), containers = {}, by_offset = {} }
  local taken = {}
  for _, off in ipairs(free) do
    if off >= next_off or taken[off] then return nil, ("bad free list for node %s"):format(id) end
    taken[off] = true
  end
  for cid, off in pairs(rec.containers or {}) do
    off = int_in(off, 2, next_off - 1)
    if type(cid) ~= "string" or cid == "" or not off or taken[off] then
      return nil, ("bad container record in node %s"):format(id)
    end
    taken[off] = true
    node.containers[cid], node.by_offset[off] = off, cid
  end
  a.nodes[id], a.owner[index] = node, id
  return true
end

local function import_flat(a, seen, flat)
  local span = a.k.span
  if type(flat) ~= "table" then return nil, "bad flat record" end
  local blocks = int_list(flat.blocks, 0, a.k.nslices - 1)
  local free = int_list(flat.free, 0, a.k.nslices * span - 1)
  local next_off = int_in(flat.next or 0, 0, span - 1)
  if not blocks or not free or not next_off or type(flat.ids or {}) ~= "table" then
    return nil, "bad flat record"
  end
  local in_block, used = {}, {}
  for i, b in ipairs(blocks) do
    local ok, err = claim(a, seen, b, "flat block")
    if not ok then return nil, err end
    in_block[b] = (i == #blocks) and next_off - 1 or span - 2
  end
  local function valid(g)
    local b, off = g // span, g % span
    return in_block[b] and off >= 1 and off <= in_block[b] and not used[g]
  end
  for _, g in ipairs(free) do
    if not valid(g) then return nil, "bad flat free list" end
    used[g] = true
  end
  for id, g in pairs(flat.ids or {}) do
    g = math.tointeger(g)
    if type(id) ~= "string" or id == "" or not g or not valid(g) then return nil, "bad flat address record" end
    used[g] = true
    a.flat_ids[id], a.flat_used[g] = g, id
  end
  a.flat_blocks, a.flat_free = blocks, fifo_new(free)
  a.flat_block, a.flat_next = blocks[#blocks], (#blocks > 0) and next_off or 0
  return true
end

--- Rebuild an allocator from `export()` output (possibly after a JSON
-- round trip: integral floats are accepted).  Everything is validated.
-- @treturn allocator or nil, message
function M.import(t)
  if type(t) ~= "table" or int_in(t.version, EXPORT_VERSION, EXPORT_VERSION) == nil then
    return nil, "allocator state: unsupported or missing version"
  end
  if t.config ~= nil and type(t.config) ~= "table" then return nil, "allocator state: bad config" end
  local a, err = M.new(t.config)
  if not a then return nil, "allocator state: " .. err end
  local n = a.k.nslices
  a.lo, a.hi = int_in(t.lo, 0, n), int_in(t.hi, 0, n)
  local free = int_list(t.free, 0, n - 1)
  if not a.lo or not a.hi or a.lo + a.hi > n or not free or type(t.nodes or {}) ~= "table" then
    return nil, "allocator state: bad counters"
  end
  local seen = {}
  for _, index in ipairs(free) do
    local ok, cerr = claim(a, seen, index, "free")
    if not ok then return nil, "allocator state: " .. cerr end
  end
  a.free = fifo_new(free)
  for id, rec in pairs(t.nodes or {}) do
    local ok, nerr = import_node(a, seen, id, rec)
    if not ok then return nil, "allocator state: " .. nerr end
  end
  local ok, ferr = import_flat(a, seen, t.flat or {})
  if not ok then return nil, "allocator state: " .. ferr end
  -- every used slice number is accounted for exactly once
  local count = 0
  for _ in pairs(seen) do count = count + 1 end
  if count ~= a.lo + a.hi then return nil, "allocator state: slices unaccounted for" end
  return a
end

return M
