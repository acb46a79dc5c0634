--- NAT traversal candidates: the addresses at which a node's WireGuard
-- socket may be reached, ranked as ICE does (RFC 8445 §5.1.2), and the
-- pairs two nodes check.  Pure: no I/O.
--
-- A candidate is `{ type = "host"|"mapped"|"srflx"|"prflx"|"relay", endpoint =
-- "IP:PORT", priority = n, family = 4|6 }`:
--
-- * host: the node's own address (its configured endpoint, and its global
--   IPv6 addresses with the WireGuard port: see `v6_hosts`);
-- * srflx (server-reflexive): the mapping a STUN server saw for the
--   WireGuard socket (the NAT's public side);
-- * prflx (peer-reflexive): an address a peer's probe arrived from;
-- * mapped: a port mapping the node's router made for the WireGuard port
--   (NAT-PMP or UPnP IGD, wgoverlay.nat.portmap): reachable from anywhere,
--   even through a symmetric NAT (ranked between prflx and srflx, as a
--   server-reflexive address that needs no hole);
-- * relay: the TURN allocation's relayed address.
--
-- What a node publishes (membership record field `candidates`):
-- `{ key = base64 X25519 public key for hole-punch probes (see
-- wgoverlay.nat.punch), nat = "none"|"endpoint-independent"|
-- "endpoint-dependent"|"unknown", list = { candidate... } }`.
-- @module wgoverlay.nat.candidates
local endpoint = require "wgoverlay.endpoint"
local stun = require "wgoverlay.nat.stun"
local cidr = require "wgoverlay.cidr"

local M = {}

--- Type preferences (RFC 8445 §5.1.2.2 recommended values).
M.TYPE_PREF = { host = 126, prflx = 110, mapped = 105, srflx = 100, relay = 0 }

--- NAT mapping kinds a node may publish.
M.NAT_KINDS = { none = true, ["endpoint-independent"] = true, ["endpoint-dependent"] = true, unknown = true }

--- Most candidates accepted from a record (the rest are ignored).
M.MAX_CANDIDATES = 8

--- Most global IPv6 addresses a node advertises as host candidates.
M.MAX_V6_HOSTS = 4

local function prefixes(list)
  local out = {}
  for i, t in ipairs(list) do out[i] = assert(cidr.parse(t)) end
  return out
end

-- Global unicast (RFC 4291 §2.4), and within it the tunnelled kinds whose
-- address is not the host's own on the path (Teredo sits behind an IPv4
-- NAT; 6to4 goes through relays, RFC 7526).
local V6_GLOBAL = prefixes({ "2000::/3" })
local V6_TUNNELLED = prefixes({ "2001::/32", "2002::/16" })
-- Never reachable from another host: unspecified, loopback, link-local,
-- multicast, IPv4-mapped.
local V6_UNUSABLE = prefixes({ "::/128", "::1/128", "fe80::/10", "ff00::/8", "::ffff:0:0/96" })

local function within(list, c)
  for _, p in ipairs(list) do
    if cidr.contains(p, c) then return true end
  end
  return false
end

--- The IPv6 addresses a node advertises as host candidates, from the
-- interface addresses (wgoverlay.core.addr_dump): global unicast
-- (2000::/3, neither Teredo nor 6to4) of global scope, usable now (not
-- tentative, deprecated or failed duplicate address detection), on no
-- excluded interface (the overlay's own) and in no excluded prefix (the
-- cluster's overlay networks).  Link-local and ULA (fc00::/7) addresses
-- are left out: a peer elsewhere cannot reach them.  Stable addresses come
-- before temporary (privacy) ones, then by text; at most MAX_V6_HOSTS.
-- @tparam table addrs list of `{ ip, family, scope, ifname, flags = {...} }`
-- @tparam[opt] table opts `ifnames` (list of interface names to skip),
--   `cidrs` (list of prefixes to skip)
-- @return list of address texts (canonical)
function M.v6_hosts(addrs, opts)
  opts = opts or {}
  local skip_if = {}
  for _, n in ipairs(opts.ifnames or {}) do skip_if[n] = true end
  local skip = {}
  for _, t in ipairs(opts.cidrs or {}) do
    local c = cidr.parse(t)
    if c then skip[#skip + 1] = c end
  end
  local found, seen = {}, {}
  for _, a in ipairs(addrs or {}) do
    local c = type(a) == "table" and a.family == 6 and cidr.parse(a.ip or "")
    local f = c and type(a.flags) == "table" and a.flags or {}
    if c and c.family == 6 and a.scope == "global" and not skip_if[a.ifname or ""]
        and within(V6_GLOBAL, c) and not within(V6_TUNNELLED, c) and not within(skip, c)
        and not (f.tentative or f.deprecated or f.dadfailed) then
      local ip = cidr.address(c)
      if not seen[ip] then
        seen[ip] = true
        found[#found + 1] = { ip = ip, temporary = f.temporary and 1 or 0 }
      end
    end
  end
  table.sort(found, function(x, y)
    if x.temporary ~= y.temporary then return x.temporary < y.temporary end
    return x.ip < y.ip
  end)
  local out = {}
  for i = 1, math.min(#found, M.MAX_V6_HOSTS) do out[i] = found[i].ip end
  return out
end

--- Whether a peer's IPv6 candidate can be reached at all: not zoned,
-- unspecified, loopback, link-local, multicast or IPv4-mapped.  (IPv4
-- candidates are taken as they are.)
function M.reachable(c)
  if c.family ~= 6 then return true end
  local e = endpoint.parse(c.endpoint)
  if not e or e.zone then return false end
  return not within(V6_UNUSABLE, assert(cidr.parse(e.ip)))
end

--- Priority of a candidate: 2^24 * type preference + 2^8 * local
-- preference + (256 - component); component is always 1 (one socket).
function M.priority(ctype, local_pref)
  local tp = M.TYPE_PREF[ctype]
  assert(tp, "candidates: unknown type " .. tostring(ctype))
  local_pref = local_pref or 65535
  return (tp << 24) | ((local_pref & 0xFFFF) << 8) | (256 - 1)
end

--- A candidate.
-- @string ctype "host", "mapped", "srflx", "prflx" or "relay"
-- @string endpoint "IP:PORT" or "[IPv6]:PORT"
-- @tparam[opt] integer local_pref 0..65535 (default 65535)
-- @return candidate, or nil and a message
function M.new(ctype, ep, local_pref)
  if not M.TYPE_PREF[ctype] then return nil, string.format("candidate type \"%s\" invalid", tostring(ctype)) end
  local e, err = endpoint.parse(ep)
  if not e then return nil, err end
  return { type = ctype, endpoint = endpoint.format(e), family = e.family,
           priority = M.priority(ctype, local_pref) }
end

local function by_priority(a, b)
  if a.priority ~= b.priority then return a.priority > b.priority end
  return a.endpoint < b.endpoint
end

--- Sorts candidates by priority (highest first; ties by endpoint) and
-- drops duplicate endpoints (the highest-priority one stays).  Returns a
-- new list.
function M.rank(list)
  local sorted = {}
  for i, c in ipairs(list) do sorted[i] = c end
  table.sort(sorted, by_priority)
  local out, seen = {}, {}
  for _, c in ipairs(sorted) do
    if not seen[c.endpoint] then
      seen[c.endpoint] = true
      out[#out + 1] = c
    end
  end
  return out
end

--- Builds a node's candidate list.
-- @tparam table g `host` (list of "IP:PORT"), `srflx` (list of mapped
--   "IP:PORT" from STUN), `mapped` ("IP:PORT" of our router's port
--   mapping or nil), `relay` ("IP:PORT" relayed address or nil)
-- @return ranked list (invalid addresses are skipped)
function M.gather(g)
  local list = {}
  local function add(ctype, ep, pref)
    local c = ep and M.new(ctype, ep, pref)
    if c then list[#list + 1] = c end
  end
  for i, ep in ipairs(g.host or {}) do add("host", ep, 65535 - i + 1) end
  for i, ep in ipairs(g.srflx or {}) do add("srflx", ep, 65535 - i + 1) end
  add("mapped", g.mapped)
  add("relay", g.relay)
  return M.rank(list)
end

--- The NAT mapping kind from the host endpoints and what STUN servers
-- reported for the same socket.  Only answers of the family of the first
-- host endpoint (the advertised one) count: the kind describes the NAT in
-- front of the address peers reach the node at, and an IPv6 server seeing
-- a global IPv6 address says nothing about an IPv4 NAT.
-- @tparam table host list of "IP:PORT" the node itself holds
-- @tparam table mapped list of "IP:PORT" (one per server that answered)
-- @return "unknown" (no answers of that family), "none" (a server saw a
--   host address), "endpoint-independent" or "endpoint-dependent" (two
--   servers saw different mappings)
function M.nat_kind(host, mapped)
  local first = host[1] and endpoint.parse(host[1])
  if first then
    local same = {}
    for _, m in ipairs(mapped) do
      local e = endpoint.parse(m)
      if e and e.family == first.family then same[#same + 1] = m end
    end
    mapped = same
  end
  if #mapped == 0 then return "unknown" end
  local own = {}
  for _, h in ipairs(host) do
    local n = endpoint.normalize(h)
    if n then own[n] = true end
  end
  for _, m in ipairs(mapped) do
    if own[endpoint.normalize(m) or ""] then return "none" end
  end
  for i = 2, #mapped do
    if stun.classify_mapping(mapped[1], mapped[i]) == "endpoint-dependent" then return "endpoint-dependent" end
  end
  return "endpoint-independent"
end

--- Checks and copies a published candidate set (from a member record:
-- leader-relayed, so well-formed but not trusted beyond that).  Unknown
-- fields are dropped, candidates beyond MAX_CANDIDATES ignored, and
-- priorities recomputed from the type (a peer cannot rank its relay above
-- its host candidates for us).  IPv6 candidates no other host can reach
-- (link-local, zoned, loopback, multicast, IPv4-mapped: see `reachable`)
-- are dropped.
-- @return `{ key, nat, list }`, or nil and a message
function M.sanitize(c)
  if type(c) ~= "table" then return nil, "candidates must be a table" end
  local key = c.key
  if key ~= nil and (type(key) ~= "string" or #key ~= 44) then return nil, "candidates: key must be base64 of 32 bytes" end
  local nat = c.nat
  if nat == nil then nat = "unknown" end
  if not M.NAT_KINDS[nat] then return nil, string.format("candidates: nat \"%s\" invalid", tostring(nat)) end
  local list = c.list
  if list == nil then list = {} end
  if type(list) ~= "table" then return nil, "candidates: list must be a list" end
  local out = {}
  for i = 1, math.min(#list, M.MAX_CANDIDATES) do
    local e = list[i]
    if type(e) ~= "table" then return nil, "candidates: entry " .. i .. " must be a table" end
    local cand, err = M.new(e.type, e.endpoint)
    if not cand then return nil, "candidates: entry " .. i .. ": " .. err end
    if M.reachable(cand) then out[#out + 1] = cand end
  end
  return { key = key, nat = nat, list = M.rank(out) }
end

--- The published form of a candidate set (what goes into the member
-- record): `{ key, nat, list = { { type, endpoint } } }`.
function M.publish(key, nat, list)
  local out = {}
  for i, c in ipairs(M.rank(list)) do out[i] = { type = c.type, endpoint = c.endpoint } end
  return { key = key, nat = nat or "unknown", list = out }
end

--- First candidate of a type, or nil.
function M.find(list, ctype)
  for _, c in ipairs(list or {}) do
    if c.type == ctype then return c end
  end
end

--- The endpoints of the candidates of a type, as a set ("IP:PORT" ->
-- true).
function M.endpoints_of(list, ctype)
  local out = {}
  for _, c in ipairs(list or {}) do
    if c.type == ctype then out[c.endpoint] = true end
  end
  return out
end

--- Pair priority (RFC 8445 §6.1.2.3): G = the controlling side's
-- candidate priority, D = the controlled side's.
function M.pair_priority(g, d)
  return (math.min(g, d) << 32) + 2 * math.max(g, d) + (g > d and 1 or 0)
end

--- The candidate pairs two nodes check, highest priority first: every
-- local candidate with every remote one of the same family.  Relayed
-- candidates are left out unless `opts.relay` (a relayed path goes
-- through the TURN client, not through probes).
-- @tparam table local_list our candidates
-- @tparam table remote_list the peer's candidates
-- @tparam[opt] table opts `controlling` (true: our priorities are G;
--   the side with the smaller public key should pass true so both sides
--   order pairs alike), `relay`
-- @return list of `{ ["local"] = cand, remote = cand, priority = n }`
function M.pairs(local_list, remote_list, opts)
  opts = opts or {}
  local out = {}
  for _, l in ipairs(local_list) do
    for _, r in ipairs(remote_list) do
      local skip = not opts.relay and (l.type == "relay" or r.type == "relay")
      if l.family == r.family and not skip then
        local g, d = l.priority, r.priority
        if not opts.controlling then g, d = d, g end
        out[#out + 1] = { ["local"] = l, remote = r, priority = M.pair_priority(g, d) }
      end
    end
  end
  table.sort(out, function(a, b)
    if a.priority ~= b.priority then return a.priority > b.priority end
    if a.remote.endpoint ~= b.remote.endpoint then return a.remote.endpoint < b.remote.endpoint end
    return a["local"].endpoint < b["local"].endpoint
  end)
  return out
end

--- The remote endpoints to probe (one socket here, so the pairs reduce
-- to the remote side): the peer's non-relayed candidates by priority, plus
-- `extra` endpoints (its advertised endpoint, peer-reflexive addresses)
-- not already listed.  At most `max` (default MAX_CANDIDATES).
-- @return list of "IP:PORT"
function M.probe_targets(remote_list, extra, max)
  max = max or M.MAX_CANDIDATES
  local out, seen = {}, {}
  local function add(ep)
    local n = ep and endpoint.normalize(ep)
    if n and not seen[n] and #out < max then
      seen[n] = true
      out[#out + 1] = n
    end
  end
  for _, c in ipairs(M.rank(remote_list or {})) do
    if c.type ~= "relay" then add(c.endpoint) end
  end
  for _, ep in ipairs(extra or {}) do add(ep) end
  return out
end

--- Whether a hole punch between two mapping kinds can work: not when
-- both sides map per destination (symmetric NATs).
function M.punch_possible(nat_a, nat_b)
  return not (nat_a == "endpoint-dependent" and nat_b == "endpoint-dependent")
end

return M
