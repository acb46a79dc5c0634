--- Schemas of the state files, and the small declarative validator that
-- checks them (wgoverlay.state `load_checked` uses it).
--
-- One schema per file kind: "node" (node.json), "leader" (leader.json:
-- control key, join tokens, allocator state, member registry), "members"
-- (members.json), "containers" (containers.json) and "join_pending"
-- (join-pending.json).  A schema is built
-- from checkers:
--
-- * leaves (`key`, `port`, `ipv4`, `cidr4`, `endpoint`, `label`, ...);
-- * `record { req(name, checker), opt(name, checker)... }` (an object;
--   fields not named are ignored), with an optional `hook(t, ctx)` for
--   checks across fields;
-- * `list(checker)` (a JSON array; an empty `{}` counts as one) and
--   `map(key_leaf, checker)` (an object).
--
-- A checker is `function(v, ctx)` returning nothing when `v` fits, else a
-- message and the path below `v` (a list of keys).  `check` turns the
-- first failure into `field "self.listen_port": expected an integer port
-- 1-65535, got string`.  Messages never quote a string from the file
-- (state files hold private keys): a bad string is "an invalid string".
--
-- `ctx.node` (the already checked node.json data) lets the other kinds
-- check that slices and addresses lie inside the cluster and the node's
-- own slice; without it those checks are skipped.
-- @module wgoverlay.schema
local cidr = require "wgoverlay.cidr"

local M = {}

local NULL -- cjson.null, when cjson is loaded (JSON null is never accepted)
do
  local ok, cjson = pcall(require, "cjson")
  if ok then NULL = cjson.null end
end

local function is_list(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  for i = 1, n do if t[i] == nil then return false end end
  return true
end

local function json_type(v)
  if NULL ~= nil and v == NULL then return "null" end
  local t = type(v)
  if t == "table" then return (next(v) ~= nil and is_list(v)) and "array" or "object" end
  if t == "number" then return math.type(v) == "integer" and "integer" or "number" end
  return t
end

-- What was found instead: the JSON type, or for a value of the expected
-- type a description (numbers are shown, strings never).
local function got(v, want)
  local t = json_type(v)
  if t == "integer" and want == "number" then t = want end
  if t ~= want then return t end
  if t == "string" then return "an invalid string" end
  if t == "integer" or t == "number" then return tostring(v) end
  return "an invalid " .. t
end

--- A leaf checker: `desc` for messages, `want` the JSON type expected,
-- `ok(v, ctx)` the test (only called with a value of that type).
function M.leaf(desc, want, ok)
  return function(v, ctx)
    local t = json_type(v)
    if (t == want or (want == "number" and t == "integer")) and ok(v, ctx) then return end
    return "expected " .. desc .. ", got " .. got(v, want)
  end
end
local leaf = M.leaf

-- ---------------------------------------------------------------------
-- Leaves
-- ---------------------------------------------------------------------

local function int_in(lo, hi, desc)
  return leaf(desc, "integer", function(v) return v >= lo and (not hi or v <= hi) end)
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

--- Base64 of 32 bytes, canonical (as WireGuard writes keys).
M.key = leaf("a key (44 characters of base64, 32 bytes)", "string", function(v)
  if #v ~= 44 or not v:match("^[A-Za-z0-9+/]+=$") then return false end
  return (B64:find(v:sub(43, 43), 1, true) - 1) % 4 == 0 -- the two spare bits are zero
end)

M.port = int_in(1, 65535, "an integer port 1-65535")
M.count = int_in(0, nil, "a non-negative integer")
M.string = leaf("a string", "string", function() return true end)
M.nonempty = leaf("a non-empty string", "string", function(v) return v ~= "" end)
M.positive = leaf("a positive number", "number", function(v) return v > 0 end)

--- A DNS label as node and container names are (joinproto.valid_name).
M.label = leaf("a DNS label (a-z, 0-9, '-', at most 63)", "string", function(v)
  return #v <= 63 and (v:match("^[a-z0-9]$") or v:match("^[a-z0-9][a-z0-9-]*[a-z0-9]$")) ~= nil
end)

M.ifname = leaf("an interface name (at most 15 characters)", "string", function(v)
  return #v <= 15 and v:match("^[%w_.-]+$") ~= nil and v ~= "." and v ~= ".."
end)

M.zone = leaf("a DNS zone name", "string", function(v)
  local labels = require("wgoverlay.dns").name_labels(v)
  return labels ~= nil and #labels > 0
end)

local function address(family)
  return leaf(("an IPv%d address"):format(family), "string", function(v)
    local c = not v:find("/", 1, true) and cidr.parse(v)
    return c and c.family == family
  end)
end
M.ipv4, M.ipv6 = address(4), address(6)

-- A prefix in network form ("10.200.0.0/16", no host bits).
local function prefix(family)
  return leaf(("an IPv%d CIDR (network/prefix)"):format(family), "string", function(v)
    local c = v:find("/", 1, true) and cidr.parse(v)
    if not c or c.family ~= family then return false end
    local n = cidr.network(c)
    for i, b in ipairs(c.bytes) do if n.bytes[i] ~= b then return false end end
    return true
  end)
end
M.cidr4, M.cidr6 = prefix(4), prefix(6)

--- "IPv4:PORT" or "[IPv6]:PORT", as wgoverlay.endpoint parses them.
M.endpoint = leaf("an endpoint IP:PORT or [IPv6]:PORT", "string", function(v)
  return require("wgoverlay.endpoint").valid(v)
end)

function M.enum(values)
  local set, names = {}, {}
  for i, v in ipairs(values) do set[v], names[i] = true, ("%q"):format(v) end
  return leaf("one of " .. table.concat(names, ", "), "string", function(v) return set[v] end)
end

-- ---------------------------------------------------------------------
-- Structure
-- ---------------------------------------------------------------------

local function prepend(k, path)
  local p = { k }
  for _, x in ipairs(path or {}) do p[#p + 1] = x end
  return p
end

local function object(v)
  local t = json_type(v)
  if t ~= "object" then return "expected an object, got " .. t end
end

--- A required field.
function M.req(name, checker) return { name = name, check = checker } end
--- An optional field (absent is fine; JSON null is not).
function M.opt(name, checker) return { name = name, check = checker, optional = true } end

--- An object with the listed fields (checked in order), then `hook`.
function M.record(fields, hook)
  return function(v, ctx)
    local e = object(v)
    if e then return e end
    for _, f in ipairs(fields) do
      local x = v[f.name]
      if x == nil then
        if not f.optional then return "missing (required)", { f.name } end
      else
        local msg, path = f.check(x, ctx)
        if msg then return msg, prepend(f.name, path) end
      end
    end
    if hook then return hook(v, ctx) end
  end
end

--- A JSON array of values that fit `checker`.
function M.list(checker)
  return function(v, ctx)
    local t = json_type(v)
    if t ~= "array" and not (t == "object" and next(v) == nil) then return "expected an array, got " .. t end
    for i, x in ipairs(v) do
      local msg, path = checker(x, ctx)
      if msg then return msg, prepend(i, path) end
    end
  end
end

--- An object whose keys fit `key_leaf` and values fit `checker`.
function M.map(key_leaf, checker)
  return function(v, ctx)
    local e = object(v)
    if e then return e end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    for _, k in ipairs(keys) do
      local msg = key_leaf(k, ctx)
      if msg then return "bad key: " .. msg end -- the key itself is not quoted
      local vmsg, path = checker(v[k], ctx)
      if vmsg then return vmsg, prepend(k, path) end
    end
  end
end

local req, opt, record, list, map = M.req, M.opt, M.record, M.list, M.map

-- ---------------------------------------------------------------------
-- Checks across fields
-- ---------------------------------------------------------------------

-- nil when `inner` (address or prefix text) lies in `outer`, else a message.
local function outside(inner, outer, what)
  local o, i = cidr.parse(outer), cidr.parse(inner)
  if o and i and not cidr.contains(o, i) then
    return ("expected %s inside %s"):format(what, outer)
  end
end

-- The first failing containment of `checks` ({field, outer, what}...).
local function inside(t, checks)
  for _, c in ipairs(checks) do
    local msg = t[c[1]] ~= nil and c[2] and outside(t[c[1]], c[2], c[3])
    if msg then return msg, { c[1] } end
  end
end

local function cluster_of(ctx)
  local n = ctx and ctx.node
  return n and n.cluster or {}
end

-- ---------------------------------------------------------------------
-- The file kinds
-- ---------------------------------------------------------------------

local candidates = record {
  opt("key", M.key),
  opt("nat", M.enum { "none", "endpoint-independent", "endpoint-dependent", "unknown" }),
  opt("list", list(record { req("type", M.enum { "host", "srflx", "prflx", "relay" }),
                            req("endpoint", M.endpoint) })),
}

-- Container labels (wgoverlay.policy: Kubernetes-style keys and values).
M.labels = function(v)
  if json_type(v) ~= "object" then return "expected an object of labels, got " .. json_type(v) end
  local ok, err = require("wgoverlay.policy").check_labels(v, "labels")
  if not ok then return "expected valid labels (" .. err .. ")" end
end

local container = record({ req("name", M.label), req("ip", M.ipv4), opt("ip6", M.ipv6), opt("labels", M.labels) })

-- Addresses of a member record inside its slices, slices inside the
-- cluster (when known).
local function record_inside(r, ctx)
  local c = cluster_of(ctx)
  local msg, path = inside(r, { { "slice", c.cidr4, "a slice" }, { "slice6", c.cidr6, "a slice" },
                                { "overlay_ip", r.slice or c.cidr4, "an address" },
                                { "overlay_ip6", r.slice6 or c.cidr6, "an address" } })
  if msg then return msg, path end
  for i, k in ipairs(r.containers or {}) do
    msg, path = inside(k, { { "ip", r.slice, "an address" }, { "ip6", r.slice6, "an address" } })
    if msg then return msg, prepend("containers", prepend(i, path)) end
  end
end

-- A member record (membership.lua).  As node.json's `cluster.leader` it
-- needs the endpoint and the control key, not the slices.
local function member_record(as_leader)
  local slices, endpoint = as_leader and opt or req, as_leader and req or opt
  return record({
    req("name", M.label), req("public_key", M.key), endpoint("endpoint", M.endpoint),
    req("overlay_ip", M.ipv4), slices("overlay_ip6", M.ipv6), slices("slice", M.cidr4), slices("slice6", M.cidr6),
    opt("containers", list(container)), opt("candidates", candidates),
    as_leader and req("control_public", M.key) or nil,
  }, record_inside)
end
local member = member_record(false)

local nat_setting = leaf("a NAT setting name", "string", function(v)
  return require("wgoverlay.nat.policy").DEFAULTS[v] ~= nil
end)
-- (seconds are positive, a switch such as portmap is 0 or 1: the policy's
-- options check which is which when the daemon starts)
local nat_value = leaf("a positive number (0 or 1 for a switch)", "number", function(v) return v >= 0 end)

-- node.json's cluster.registry: an etcd registry (absent: embedded).
local etcd_registry = record {
  req("kind", M.enum { "etcd" }), req("endpoints", list(M.nonempty)), req("prefix", M.nonempty),
  opt("user", M.nonempty), opt("ca_file", M.nonempty),
}

local node = record({
  req("name", M.label),
  req("private_key", M.key),
  req("public_key", M.key),
  req("role", M.enum { "leader", "member" }),
  req("ifname", M.ifname),
  opt("control_private", M.key),  -- etcd registry: every member admits joiners
  opt("etcd_password", M.nonempty),
  req("cluster", record {
    req("cidr4", M.cidr4), req("cidr6", M.cidr6), opt("zone", M.zone), opt("dns_forward", M.endpoint),
    opt("stun", list(M.endpoint)),
    opt("turn", record { req("server", M.endpoint), req("username", M.string), req("password", M.string) }),
    opt("nat", map(nat_setting, nat_value)),
    opt("leader", member_record(true)), -- embedded registry (checked below)
    opt("registry", etcd_registry), opt("control_public", M.key),
  }),
  req("self", record {
    req("overlay_ip", M.ipv4), req("overlay_ip6", M.ipv6), req("slice", M.cidr4), req("slice6", M.cidr6),
    req("endpoint", M.endpoint), req("listen_port", M.port),
  }),
}, function(n)
  local c, s = n.cluster, n.self
  if c.registry then
    if not n.control_private then return "expected a control key with an etcd registry", { "control_private" } end
    if not c.control_public then return "expected the cluster's control key", { "cluster", "control_public" } end
  elseif not c.leader then
    return "missing (required)", { "cluster", "leader" } -- the embedded registry's leader
  end
  local msg, path = inside(s, { { "slice", c.cidr4, "a slice" }, { "slice6", c.cidr6, "a slice" },
                                { "overlay_ip", s.slice, "an address" }, { "overlay_ip6", s.slice6, "an address" } })
  if msg then return msg, prepend("self", path) end
end)

local uint = M.count
local allocator = record({
  req("version", int_in(1, 1, "1")),
  req("config", record {
    req("cidr4", M.cidr4), req("slice4", int_in(1, 30, "an integer prefix length 1-30")),
    req("cidr6", M.cidr6), req("slice6", int_in(1, 128, "an integer prefix length 1-128")),
  }),
  req("lo", uint), req("hi", uint), opt("free", list(uint)),
  opt("nodes", map(M.label, record {
    req("index", uint), req("next", uint), opt("free", list(uint)), opt("containers", map(M.nonempty, uint)),
  })),
  opt("flat", record { opt("blocks", list(uint)), opt("next", uint), opt("free", list(uint)),
                       opt("ids", map(M.nonempty, uint)) }),
}, function(a, ctx)
  local c = cluster_of(ctx)
  for _, k in ipairs({ "cidr4", "cidr6" }) do
    if c[k] and a.config[k] ~= c[k] then
      return "expected the cluster's " .. c[k] .. " (as in node.json)", { "config", k }
    end
  end
  -- allocator.import checks the rest (counters, each slice claimed once...)
  local ok, imported, err = pcall(require("wgoverlay.allocator").import, a)
  if not ok or not imported then
    local why = ok and tostring(err):gsub("^allocator state: ", "") or "import failed"
    return "expected a consistent allocator state (" .. why .. ")"
  end
end)

local token_id = leaf("a token id (hex)", "string", function(v) return #v <= 64 and v:match("^[0-9a-f]+$") end)
local epoch_seconds = leaf("an integer (epoch seconds)", "integer", function() return true end)

local token = record {
  opt("id", M.string),
  req("hash", leaf("64 hex digits", "string", function(v) return #v == 64 and not v:find("[^0-9a-f]") end)),
  req("expires", epoch_seconds),
  req("uses_left", uint),
}

-- No two records of `t[under]` (a map or a list) share `field`.
local function unique(t, under, field)
  local seen, keys = {}, {}
  for k in pairs(t[under]) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(keys) do
    local v = t[under][k][field]
    if seen[v] then return ("expected a unique %s (another record has it)"):format(field), { under, k, field } end
    seen[v] = true
  end
end

local registry = record({
  opt("epoch", M.string), req("version", uint), req("members", map(M.label, member)),
}, function(reg)
  for name, r in pairs(reg.members) do
    if r.name ~= name then return "expected the record's key (" .. name .. ")", { "members", name, "name" } end
  end
  return unique(reg, "members", "public_key")
end)

-- The policy in force (wgoverlay.policy): a version and the document.
M.policy = record({ req("version", int_in(1, nil, "a positive integer")), req("doc", function(v)
  if json_type(v) ~= "object" then return "expected an object, got " .. json_type(v) end
  local ok, err = require("wgoverlay.policy").validate(v)
  if not ok then return "expected a valid policy (" .. err .. ")" end
end) })

local leader = record {
  opt("policy", M.policy),
  req("control_private", M.key),
  req("tokens", map(token_id, token)),
  req("allocator", allocator),
  req("registry", registry),
}

local members = record({
  opt("epoch", M.string), req("version", uint), req("members", list(member)), opt("policy", M.policy),
}, function(m)
  local msg, path = unique(m, "members", "name")
  if msg then return msg, path end
  return unique(m, "members", "public_key")
end)

local containers = record {
  req("attached", map(leaf("a network namespace (name or path)", "string", function(v)
    return v ~= "" and #v <= 4096 and not v:find("%z")
  end), record({ req("name", M.label), req("ip", M.ipv4), opt("ip6", M.ipv6), opt("labels", M.labels) },
                function(c, ctx)
    local s = ctx.node and ctx.node.self or {}
    return inside(c, { { "ip", s.slice, "an address of this node's slice" },
                       { "ip6", s.slice6, "an address of this node's slice" } })
  end))),
}

-- join-pending.json: a joiner's identity until its join succeeds (cluster.lua)
local join_pending = record {
  req("name", M.label), req("private_key", M.key), req("public_key", M.key),
  opt("token", token_id), opt("created", epoch_seconds),
}

--- The schemas, by file kind.
M.kinds = { node = node, leader = leader, members = members, containers = containers, join_pending = join_pending }

-- "self.listen_port", "registry.members.a.slice", "members[2].name",
-- `attached["/run/netns/x"].ip`.
local function path_text(path)
  local out = {}
  for i, k in ipairs(path) do
    if math.type(k) == "integer" then
      out[#out + 1] = "[" .. k .. "]"
    elseif type(k) == "string" and k:match("^[%w_-]+$") then
      out[#out + 1] = (i > 1 and "." or "") .. k
    else
      out[#out + 1] = ("[%q]"):format(tostring(k))
    end
  end
  return table.concat(out)
end

--- Checks one member record as the registry will store it (the leader
-- checks what members send before it persists it: a record it stored
-- must never make leader.json fail this schema on the next start).
-- @return true, or nil and a message naming the field
function M.check_member(r, ctx)
  local msg, path = member(r, ctx or {})
  if not msg then return true end
  if not path or #path == 0 then return nil, msg end
  return nil, ("field \"%s\": %s"):format(path_text(path), msg)
end

--- Checks `data` (decoded state) against the schema of `kind`.
-- @tparam string kind "node", "leader", "members", "containers" or "join_pending"
-- @param data
-- @tparam[opt] table ctx `node` = the node.json data (already checked)
-- @return true, or nil and `field "a.b": expected ..., got ...`
function M.check(kind, data, ctx)
  local schema = M.kinds[kind]
  if not schema then error("schema.check: unknown kind " .. tostring(kind), 2) end
  ctx = ctx or {}
  if kind == "node" then ctx = { node = data } end -- cluster.leader is checked against cluster
  local msg, path = schema(data, ctx)
  if not msg then return true end
  if not path or #path == 0 then return nil, msg end
  return nil, ("field \"%s\": %s"):format(path_text(path), msg)
end

return M
