--- Network policy: container labels, the cluster-wide policy document
-- (its validator) and its enforcement on a node with nftables.
--
-- The document (JSON):
--
--   {"default": "deny" | "allow",
--    "rules": [{"from": {LABEL: VALUE...}, "to": {LABEL: VALUE...},
--               "ports": ["tcp/5432", "tcp/8000-8080", "udp/53", "icmp"]}...]}
--
-- `from` / `to` select containers whose labels include all those listed
-- (`{}`: every container); `ports` list what the rule allows into the
-- `to` containers (`icmp` is ICMP and ICMPv6).  `default` applies to
-- traffic into containers that no rule allows.  No other keys.
--
-- Enforcement (this node, for traffic INTO its own containers): one
-- nftables table of ours, `inet wgoverlay_policy`, separate from the
-- egress table `inet wgoverlay` (each is replaced on its own schedule;
-- neither can wipe the other).  Hooks forward (from the tunnel, after
-- decryption, so the source address is the sending node's authenticated
-- slice, and from the node's other containers) and output (the node
-- itself), only for packets whose destination is one of this node's
-- containers: traffic to the node's own services (DNS, health,
-- membership, joins) is never looked at.  Stateful through conntrack:
--
--   * replies (ct direction reply) and related packets pass;
--   * a packet of a connection already allowed by the ruleset in force
--     passes on one comparison (`ct mark == generation`);
--   * anything else (a new connection, or one established under an older
--     ruleset) is checked against the rules; allowed packets mark the
--     connection with the generation, the rest are counted and dropped.
--
-- So a new policy keeps established connections that it still allows
-- (re-checked on their next packet) and cuts the others; and with 1,000
-- rules a bulk transfer pays for the rule walk once, not per packet.
-- Each update is one `nft -f` transaction that adds the new generation's
-- sets and chain, re-points the hook chains and deletes the old ones; the
-- drop counter lives across updates.  Conntrack's mark of connections to
-- containers is ours.
-- @module wgoverlay.policy
local cidr = require "wgoverlay.cidr"

local M = {}

M.TABLE = "inet wgoverlay_policy"
M.MAX_RULES = 10000
M.MAX_LABELS = 32

-- ---------------------------------------------------------------------
-- labels
-- ---------------------------------------------------------------------

-- Keys as Kubernetes label names (optional DNS-subdomain prefix and '/'),
-- values 0-63 of [A-Za-z0-9_.-] beginning and ending alphanumeric.
local function valid_name_part(s)
  return #s >= 1 and #s <= 63 and s:match("^[A-Za-z0-9]$") ~= nil
      or (#s <= 63 and s:match("^[A-Za-z0-9][A-Za-z0-9_.-]*[A-Za-z0-9]$") ~= nil)
end

function M.valid_key(k)
  if type(k) ~= "string" then return false end
  local prefix, name = k:match("^([^/]+)/([^/]+)$")
  if prefix then
    return #prefix <= 253 and prefix:match("^[a-z0-9][a-z0-9.-]*[a-z0-9]$") ~= nil and valid_name_part(name)
  end
  return valid_name_part(k)
end

function M.valid_value(v)
  return type(v) == "string" and (v == "" or valid_name_part(v))
end

local KEY_RULE = "a label key (1-63 of A-Z a-z 0-9 '-' '_' '.', beginning and ending with a letter or digit, "
  .. "optionally prefixed by a DNS name and '/')"
local VALUE_RULE = "a label value (0-63 of A-Z a-z 0-9 '-' '_' '.', beginning and ending with a letter or digit)"

--- Checks a label map `{key = value}`.
-- @return true, or nil and a message naming the label
function M.check_labels(t, where)
  where = where or "labels"
  if type(t) ~= "table" then return nil, where .. ": expected an object of labels" end
  local n = 0
  for k, v in pairs(t) do
    n = n + 1
    if not M.valid_key(k) then return nil, string.format("%s: key \"%s\" is not %s", where, tostring(k), KEY_RULE) end
    if not M.valid_value(v) then
      return nil, string.format("%s.%s: value %s is not %s", where, k,
        type(v) == "string" and ("\"" .. v .. "\"") or ("of type " .. type(v)), VALUE_RULE)
    end
  end
  if n > M.MAX_LABELS then return nil, string.format("%s: at most %d labels", where, M.MAX_LABELS) end
  return true
end

--- Parses `KEY=VALUE` strings (attach --label, CNI) into a label map.
-- @return map, or nil and a message
function M.parse_labels(list)
  local out = {}
  for _, s in ipairs(list or {}) do
    local k, v = tostring(s):match("^([^=]*)=(.*)$")
    if not k then return nil, string.format("label \"%s\": expected KEY=VALUE", tostring(s)) end
    if out[k] ~= nil then return nil, string.format("label \"%s\" given twice", k) end
    out[k] = v
  end
  local ok, err = M.check_labels(out, "label")
  if not ok then return nil, err end
  return out
end

-- ---------------------------------------------------------------------
-- the document
-- ---------------------------------------------------------------------

local function port_num(s)
  local n = s:match("^%d+$") and tonumber(s)
  if n and n >= 1 and n <= 65535 then return math.tointeger(n) end
end

--- Parses a port item: "tcp/N", "tcp/N-M", "udp/N", "udp/N-M", "icmp".
-- @return `{proto, lo, hi}`, or nil and why
function M.parse_port(s)
  if type(s) ~= "string" then return nil, "expected a string such as \"tcp/5432\"" end
  if s == "icmp" then return { proto = "icmp" } end
  local proto, a, b = s:match("^(%a+)/(%d+)%-(%d+)$")
  if not proto then proto, a = s:match("^(%a+)/(%d+)$") end
  if proto ~= "tcp" and proto ~= "udp" then
    return nil, string.format("\"%s\" is not tcp/N, tcp/N-M, udp/N, udp/N-M or icmp", s)
  end
  local lo, hi = port_num(a), b and port_num(b) or nil
  if not lo or (b and not hi) then return nil, string.format("\"%s\": ports are 1-65535", s) end
  hi = hi or lo
  if hi < lo then return nil, string.format("\"%s\": the range is backwards", s) end
  return { proto = proto, lo = lo, hi = hi }
end

local function keys_only(t, allowed, where)
  for k in pairs(t) do
    if not allowed[k] then
      local names = {}
      for a in pairs(allowed) do names[#names + 1] = a end
      table.sort(names)
      return nil, string.format("%s: unknown key \"%s\" (expected %s)", where, tostring(k), table.concat(names, ", "))
    end
  end
  return true
end

local function is_array(t)
  if type(t) ~= "table" then return false end
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  for i = 1, n do if t[i] == nil then return false end end
  return true
end

--- Validates a decoded policy document.
-- @return the normalised document `{default, rules = {{from, to, ports}}}`,
--   or nil and a message naming the place (`rules[2].ports[1]: ...`)
function M.validate(doc)
  if type(doc) ~= "table" or (next(doc) ~= nil and is_array(doc) and #doc > 0) then
    return nil, "the policy must be a JSON object with \"default\" and \"rules\""
  end
  local ok, err = keys_only(doc, { default = true, rules = true }, "policy")
  if not ok then return nil, err end
  if doc.default ~= "allow" and doc.default ~= "deny" then
    return nil, "default: expected \"allow\" or \"deny\", got " .. (type(doc.default) == "string"
      and ("\"" .. doc.default .. "\"") or type(doc.default) == "nil" and "nothing (required)" or type(doc.default))
  end
  local rules = doc.rules
  if rules == nil then rules = {} end
  if type(rules) ~= "table" or not is_array(rules) then return nil, "rules: expected an array" end
  if #rules > M.MAX_RULES then return nil, string.format("rules: at most %d rules", M.MAX_RULES) end
  local out = { default = doc.default, rules = {} }
  for i, r in ipairs(rules) do
    local where = string.format("rules[%d]", i)
    if type(r) ~= "table" or (next(r) ~= nil and is_array(r)) then return nil, where .. ": expected an object" end
    ok, err = keys_only(r, { from = true, to = true, ports = true }, where)
    if not ok then return nil, err end
    local nr = { from = {}, to = {}, ports = {} }
    for _, side in ipairs({ "from", "to" }) do
      local sel = r[side]
      if sel == nil then return nil, string.format("%s.%s: missing (required; {} selects every container)", where, side) end
      if type(sel) ~= "table" or (next(sel) ~= nil and is_array(sel)) then
        return nil, string.format("%s.%s: expected an object of labels", where, side)
      end
      ok, err = M.check_labels(sel, where .. "." .. side)
      if not ok then return nil, err end
      for k, v in pairs(sel) do nr[side][k] = v end
    end
    local ports = r.ports
    if type(ports) ~= "table" or not is_array(ports) or #ports == 0 then
      return nil, where .. ".ports: expected a non-empty array such as [\"tcp/5432\"]"
    end
    for j, p in ipairs(ports) do
      local pp, perr = M.parse_port(p)
      if not pp then return nil, string.format("%s.ports[%d]: %s", where, j, perr) end
      nr.ports[j] = p
    end
    out.rules[i] = nr
  end
  return out
end

--- Decodes and validates policy text (JSON).
function M.parse(text)
  local cjson = require "cjson.safe"
  if type(text) ~= "string" then return nil, "no policy text" end
  local doc, err = cjson.decode(text)
  if doc == nil then return nil, "not JSON: " .. tostring(err) end
  return M.validate(doc)
end

-- ---------------------------------------------------------------------
-- enforcement: the nftables ruleset
-- ---------------------------------------------------------------------

local function matches(sel, labels)
  for k, v in pairs(sel) do
    if (labels or {})[k] ~= v then return false end
  end
  return true
end

local function sel_key(sel)
  local ks = {}
  for k in pairs(sel) do ks[#ks + 1] = k end
  table.sort(ks)
  local parts = {}
  for _, k in ipairs(ks) do parts[#parts + 1] = k .. "=" .. sel[k] end
  return table.concat(parts, ",")
end

local function addr_ok(a, family)
  local c = type(a) == "string" and not a:find("/", 1, true) and cidr.parse(a)
  return c and c.family == family
end

local function port_expr(p)
  local pp = assert(M.parse_port(p))
  if pp.proto == "icmp" then return "meta l4proto { icmp, ipv6-icmp }" end
  local range = pp.lo == pp.hi and tostring(pp.lo) or (pp.lo .. "-" .. pp.hi)
  return string.format("meta l4proto %s th dport %s", pp.proto, range)
end

--- The body of the next generation's ruleset, without the table
-- framing: what decides whether a change needs applying.
-- @tparam table doc validated policy (nil: no policy, nothing enforced)
-- @tparam table all `{ {ip, ip6, labels}... }` every container of the cluster
-- @tparam table here the same for this node's containers
-- @return a plan `{ sets = {name -> {family, addrs}}, rules = {text...}, local4, local6 }`
--   with set names relative to the generation (prefix added by `ruleset`)
function M.plan(doc, all, here)
  if not doc then return nil end
  local plan = { sets = {}, rules = {}, order = {} }
  local function add_set(name, family, addrs)
    table.sort(addrs)
    plan.sets[name] = { family = family, addrs = addrs }
    plan.order[#plan.order + 1] = name
  end
  local l4, l6 = {}, {}
  for _, c in ipairs(here) do
    if addr_ok(c.ip, 4) then l4[#l4 + 1] = c.ip end
    if addr_ok(c.ip6, 6) then l6[#l6 + 1] = c.ip6 end
  end
  add_set("local4", 4, l4)
  add_set("local6", 6, l6)
  -- one pair of sets per distinct selector
  local sels, nsel = {}, 0
  local function selector(sel, pool)
    local key = sel_key(sel)
    if key == "" then return nil end -- {} matches every container: no set
    if sels[key] then return sels[key] end
    nsel = nsel + 1
    local name = "s" .. nsel
    local v4, v6 = {}, {}
    for _, c in ipairs(pool) do
      if matches(sel, c.labels) then
        if addr_ok(c.ip, 4) then v4[#v4 + 1] = c.ip end
        if addr_ok(c.ip6, 6) then v6[#v6 + 1] = c.ip6 end
      end
    end
    add_set(name .. "_4", 4, v4)
    add_set(name .. "_6", 6, v6)
    sels[key] = name
    return name
  end
  -- `from: {}` is every container of the cluster (not the nodes)
  local any_from = false
  if doc.default == "deny" then
    for _, r in ipairs(doc.rules) do
      local f = selector(r.from, all)
      local t = selector(r.to, here)
      if not f then any_from = true end
      for _, p in ipairs(r.ports) do
        local pe = port_expr(p)
        for _, fam in ipairs({ 4, 6 }) do
          local ipk = fam == 4 and "ip" or "ip6"
          local src = f and string.format("%s saddr @%%G%s_%d", ipk, f, fam) or string.format("%s saddr @%%Gall%d", ipk, fam)
          local dst = t and string.format(" %s daddr @%%G%s_%d", ipk, t, fam) or ""
          -- an icmp item matches both families' ICMP; the address match binds the family
          plan.rules[#plan.rules + 1] = string.format("%s%s %s ct mark set %%M accept", src, dst, pe)
        end
      end
    end
  end
  if any_from then
    local a4, a6 = {}, {}
    for _, c in ipairs(all) do
      if addr_ok(c.ip, 4) then a4[#a4 + 1] = c.ip end
      if addr_ok(c.ip6, 6) then a6[#a6 + 1] = c.ip6 end
    end
    add_set("all4", 4, a4)
    add_set("all6", 6, a6)
  end
  plan.default = doc.default
  return plan
end

local function plan_text(plan)
  local out = { plan.default }
  for _, name in ipairs(plan.order) do
    out[#out + 1] = name .. ":" .. table.concat(plan.sets[name].addrs, ",")
  end
  for _, r in ipairs(plan.rules) do out[#out + 1] = r end
  return table.concat(out, "\n")
end
M.plan_text = plan_text

--- The `nft -f` transaction that installs generation `gen` of `plan`
-- and removes generation `old` (its set names in `old_sets`).
-- `plan` nil: the whole table goes.
function M.ruleset(plan, gen, old)
  local T = M.TABLE
  if not plan then return string.format("add table %s\ndelete table %s\n", T, T) end
  local G = "g" .. gen .. "_"
  local out = {
    "add table " .. T,
    "add counter " .. T .. " dropped",
    "add chain " .. T .. " forward { type filter hook forward priority filter; policy accept; }",
    "add chain " .. T .. " output { type filter hook output priority filter; policy accept; }",
  }
  for _, name in ipairs(plan.order) do
    local s = plan.sets[name]
    out[#out + 1] = string.format("add set %s %s%s { type %s; }", T, G, name,
      s.family == 4 and "ipv4_addr" or "ipv6_addr")
    if #s.addrs > 0 then
      out[#out + 1] = string.format("add element %s %s%s { %s }", T, G, name, table.concat(s.addrs, ", "))
    end
  end
  local chain = G .. "check"
  out[#out + 1] = string.format("add chain %s %s", T, chain)
  local function rule(text) out[#out + 1] = string.format("add rule %s %s %s", T, chain, text) end
  -- IPv6 neighbour discovery between the node and its containers is not traffic
  rule("icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert } accept")
  rule("ct direction reply accept")
  rule("ct state related accept")
  rule(string.format("ct mark %d accept", gen))
  for _, r in ipairs(plan.rules) do
    rule((r:gsub("%%G", G):gsub("%%M", tostring(gen))))
  end
  if plan.default == "deny" then
    rule("counter name dropped drop")
  else
    rule(string.format("ct mark set %d accept", gen))
  end
  for _, hook in ipairs({ "forward", "output" }) do
    out[#out + 1] = string.format("flush chain %s %s", T, hook)
    out[#out + 1] = string.format("add rule %s %s ip daddr @%slocal4 jump %s", T, hook, G, chain)
    out[#out + 1] = string.format("add rule %s %s ip6 daddr @%slocal6 jump %s", T, hook, G, chain)
  end
  if old then
    out[#out + 1] = string.format("delete chain %s g%d_check", T, old.gen)
    for _, name in ipairs(old.sets) do out[#out + 1] = string.format("delete set %s g%d_%s", T, old.gen, name) end
  end
  return table.concat(out, "\n") .. "\n"
end

--- Parses `nft list counter` output.
-- @return packets, bytes (nil when not found)
function M.parse_counter(text)
  local p, b = tostring(text):match("packets%s+(%d+)%s+bytes%s+(%d+)")
  return math.tointeger(tonumber(p)), math.tointeger(tonumber(b))
end

-- ---------------------------------------------------------------------
-- the enforcer of one node
-- ---------------------------------------------------------------------

local Enforcer = {}
Enforcer.__index = Enforcer

--- @tparam table o `apply(text) -> true | nil, err` (nft -f), `list(cmd) -> text | nil`
--   (nft output), `log(fmt, ...)`
function M.enforcer(o)
  return setmetatable({ apply = o.apply, list = o.list, log = o.log, text = nil, gen = nil, old = nil,
                        version = nil, error = nil, base_packets = 0, base_bytes = 0 }, Enforcer)
end

--- Brings the table in line with `pol` (`{version, doc}` or nil) and the
-- containers.  Only applies when something changed.
-- @return true, or nil and nft's message (the previous ruleset stays)
function Enforcer:sync(pol, all, here)
  local doc = pol and pol.doc or nil
  local plan = M.plan(doc, all, here)
  local text = plan and plan_text(plan) or ""
  if text == self.text and self.applied then
    self.version = pol and pol.version or nil
    return true
  end
  local ok, err
  if not plan then
    if self.gen or not self.applied then
      self:fold_counter()
      ok, err = self.apply(M.ruleset(nil))
      if not ok and not self.applied then ok = true end -- nothing to delete at start
    else
      ok = true
    end
    if ok then self.gen, self.old = nil, nil end
  else
    -- generations: distinct from any mark a previous run left on
    -- surviving connections (seconds since the epoch, then +1)
    local gen = math.max((self.gen or 0) + 1, os.time() & 0x7fffffff)
    if self.gen and gen <= self.gen then gen = self.gen + 1 end
    -- the first ruleset of this run replaces whatever a previous run left
    local prefix = self.applied and "" or M.ruleset(nil)
    ok, err = self.apply(prefix .. M.ruleset(plan, gen, self.gen and self.old or nil))
    if ok then self.gen, self.old = gen, { gen = gen, sets = plan.order } end
  end
  if not ok then
    self.error = err
    return nil, err
  end
  self.applied, self.text, self.error = true, text, nil
  self.version = pol and pol.version or nil
  return true
end

-- Counts of a table about to be deleted are kept.
function Enforcer:fold_counter()
  local p, b = self:read_counter()
  self.base_packets, self.base_bytes = p, b
end

--- Packets and bytes dropped by policy since the daemon started.
function Enforcer:read_counter()
  local p, b = 0, 0
  if self.gen then
    p, b = M.parse_counter(self.list("list counter " .. M.TABLE .. " dropped"))
  end
  return self.base_packets + (p or 0), self.base_bytes + (b or 0)
end

--- Removes the table (daemon exit).
function Enforcer:stop()
  if self.gen then
    local ok, err = self.apply(M.ruleset(nil))
    if not ok then self.log("policy: cannot remove table %s: %s", M.TABLE, err) end
    self.gen = nil
  end
end

return M
