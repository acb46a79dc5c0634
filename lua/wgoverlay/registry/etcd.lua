--- The etcd registry: the cluster's state lives in etcd (v3, through
-- wgoverlay.etcd), under one key prefix per cluster; there is no leader.
-- Every node reads the whole prefix once, then watches it and applies the
-- changes to its peers and DNS (resuming from the last revision it saw, or
-- reading everything again after a compaction).  Any node admits joiners
-- (on its WireGuard port, with the join protocol of the embedded
-- registry), issues tokens and removes nodes, through etcd transactions.
--
-- Keys (PREFIX is e.g. "/wgoverlay/prod/"; values are JSON):
--
--   PREFIX cluster              the cluster settings (CIDRs, zone, NAT, the
--                               join protocol's control public key); written
--                               once by `init` (create-if-absent)
--   PREFIX nodes/NAME           a member record: name, public key, endpoint,
--                               addresses, slices, containers, candidates
--   PREFIX slices/INDEX         NAME: the slice is taken (allocation is a
--                               create-if-absent of this key)
--   PREFIX alive/NAME           the node's endpoint, on the node's lease: it
--                               disappears when the node stops renewing
--                               (down; its slice stays until remove-node)
--   PREFIX tokens/ID            a join token: expiry, uses left, and its
--                               hash sealed with a key only members have
--   PREFIX admissions/NAME      who was admitted with which token and key
--                               (a joiner retrying after a lost answer is
--                               recognised by any member)
--   PREFIX punch/TARGET/FROM    a hole-punch request, on FROM's lease:
--                               TARGET probes FROM when it sees it
--
-- What is in etcd is what every member may see: no private key, no token
-- secret (a token's hash, the credential, is sealed with XChaCha20-Poly1305
-- under a key derived from the cluster's control private key, which only
-- members hold), no etcd password.  Consistency comes from compare-and-swap
-- transactions on revisions: a token use, a node name and a slice are
-- taken in one transaction, so concurrent joins through different members
-- get distinct slices and names, and a single-use token admits once.
--
-- When etcd cannot be reached the node keeps its last known member list
-- (peers, DNS and health keep working); joins and removals fail with a
-- clear message until etcd is back.  See wgoverlay.registry for the
-- interface.
-- @module wgoverlay.registry.etcd
local uv = require "luv"
local cjson = require("cjson.safe").new()
local core = require "wgoverlay.core"
local etcd = require "wgoverlay.etcd"
local token = require "wgoverlay.token"
local joinproto = require "wgoverlay.joinproto"
local allocator = require "wgoverlay.allocator"
local schema = require "wgoverlay.schema"
local policy = require "wgoverlay.policy"


local M = {}

M.LEASE_TTL = 10     -- seconds: a node whose lease expires is down
M.KEEPALIVE = 3      -- seconds between lease renewals
M.PUNCH_DEDUP = 2    -- one punch request per peer in this many seconds
M.ADMIT_TRIES = 8    -- transaction attempts per admission (conflicts)
M.FAILED_ADMISSION_TTL = 3 -- seconds a failed admission answers retries
M.TOKEN_PEERS = 4    -- extra member endpoints a token carries

local Reg = {}
Reg.__index = Reg

local function close(h)
  if h and not h:is_closing() then h:close() end
end

-- ---------------------------------------------------------------------
-- shared helpers (also used by `init`, `token` without a daemon)
-- ---------------------------------------------------------------------

--- The etcd client for a node's registry settings (node.json's
-- cluster.registry, with the password from node.json).
function M.client(reg, password)
  local eps, err = etcd.parse_endpoints(reg.endpoints, reg.ca_file ~= nil)
  if not eps then return nil, err end
  return etcd.new({ endpoints = eps, user = reg.user, password = password, cacert = reg.ca_file,
                    timeout_ms = 5000 })
end

--- The key that seals token hashes in etcd (from the control private key).
function M.token_key(control_private_raw)
  return core.blake2s(control_private_raw, "wgo-etcd-token-v1")
end

--- A token store entry as stored in etcd (its hash sealed).
function M.seal_token(entry, key)
  local nonce = core.random(24)
  local ct = core.aead_seal(key, nonce, entry.hash, "wgo-token:" .. entry.id)
  return cjson.encode({ id = entry.id, expires = entry.expires, uses_left = entry.uses_left,
                        n = core.base64_encode(nonce), c = core.base64_encode(ct) })
end

--- The store entry back from etcd's value, or nil.
function M.open_token(value, key)
  local t = cjson.decode(value)
  if type(t) ~= "table" or type(t.id) ~= "string" or type(t.n) ~= "string" or type(t.c) ~= "string" then return nil end
  local nonce, ct = core.base64_decode(t.n), core.base64_decode(t.c)
  if not nonce or not ct or #nonce ~= 24 then return nil end
  local hash = core.aead_open(key, nonce, ct, "wgo-token:" .. t.id)
  if not hash then return nil end
  local expires, uses = math.tointeger(t.expires), math.tointeger(t.uses_left)
  if not expires or not uses then return nil end
  return { id = t.id, hash = hash, expires = expires, uses_left = uses }
end

--- Runs `fn(cb)` on the luv loop until cb is called (for the CLI, which
-- has no loop of its own).  Returns cb's arguments.
function M.sync(fn, timeout_ms)
  local res
  fn(function(...) res = table.pack(...) end)
  local t = uv.new_timer()
  local timed_out = false
  t:start(timeout_ms or 20000, 0, function() timed_out = true end)
  while not res and not timed_out do uv.run("once") end
  close(t)
  uv.run("nowait")
  if not res then return nil, "etcd did not answer in time" end
  return table.unpack(res, 1, res.n)
end

-- Deep equality of JSON-like values (cjson's key order is not stable).
local function same(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local function decode_record(value)
  local r = cjson.decode(value)
  if type(r) ~= "table" then return nil end
  return r
end

-- ---------------------------------------------------------------------
-- opening, the mirror of the prefix
-- ---------------------------------------------------------------------

function M.open(host)
  local node = host.node
  local rc = node.cluster.registry
  local e, err = M.client(rc, node.etcd_password)
  if not e then return nil, err end
  local cpriv = core.key_from_base64(node.control_private)
  if not cpriv then return nil, "node.json: control_private missing (this node cannot admit joiners)" end
  local self = setmetatable({
    kind = "etcd", role = "member", host = host, node = node, e = e, prefix = rc.prefix,
    endpoints = rc.endpoints, control_private = cpriv, token_key = M.token_key(cpriv),
    nodes = {}, alive = {}, tokens = {}, token_rev = {}, admissions = {}, slices = {},
    revision = 0, loaded = false, watch_up = false, last_ok = 0, timers = {}, punches = {},
    admit_busy = {}, admit_done = {}, self_busy = false, self_dirty = false, lease = nil,
    desired = { endpoint = node.self.endpoint, public_key = node.public_key },
  }, Reg)
  self.alloc = assert(allocator.new({ cidr4 = node.cluster.cidr4, cidr6 = node.cluster.cidr6,
                                      slice4 = node.cluster.slice4, slice6 = node.cluster.slice6 }))
  self.join_cache = joinproto.replay_cache.new(256)
  self.join_seen = joinproto.replay_cache.new(joinproto.SEEN_MAX)
  self.join_log = joinproto.rate_limiter(joinproto.LOG_INTERVAL)
  return self
end

function Reg:key(...) return self.prefix .. table.concat({ ... }, "/") end

-- What a key under the prefix is: kind, name[, second name]
function Reg:classify(key)
  if key:sub(1, #self.prefix) ~= self.prefix then return nil end
  local rest = key:sub(#self.prefix + 1)
  local kind, a, b = rest:match("^([%w_]+)/([^/]+)/([^/]+)$")
  if kind then return kind, a, b end
  kind, a = rest:match("^([%w_]+)/([^/]+)$")
  if kind then return kind, a end
  return rest
end

-- Applies one key-value (nil value: deleted).  Returns true when the
-- member list changed.
function Reg:apply_kv(key, value, mod_revision)
  local kind, a, b = self:classify(key)
  if kind == "nodes" then
    if value == nil then
      local had = self.nodes[a] ~= nil
      self.nodes[a] = nil
      return had
    end
    local r = decode_record(value)
    local ok, err = r and schema.check_member(r, { node = self.node })
    if not ok or r.name ~= a then
      self.host.log("etcd: record nodes/%s ignored: %s", a, r and tostring(err) or "not JSON")
      return false
    end
    self.nodes[a] = { rec = r, rev = mod_revision }
    return true
  elseif kind == "alive" then
    self.alive[a] = value ~= nil and value or nil
  elseif kind == "slices" then
    local idx = math.tointeger(tonumber(a))
    if idx then self.slices[idx] = value end
  elseif kind == "tokens" then
    if value == nil then
      self.tokens[a], self.token_rev[a] = nil, nil
    else
      local entry = M.open_token(value, self.token_key)
      self.tokens[a], self.token_rev[a] = entry, entry and mod_revision or nil
    end
  elseif kind == "admissions" then
    local r = value and cjson.decode(value)
    self.admissions[a] = type(r) == "table" and r or nil
  elseif kind == "policy" and a == nil then
    return self:apply_policy(value, mod_revision)
  elseif kind == "punch" and value ~= nil and a == self.node.name and b and b ~= self.node.name then
    if self.loaded and self.nodes[b] then self.host.punch(b) end
  end
  return false
end

function Reg:full_read(cb)
  self.e:range(self.prefix, function(res, err)
    if not res then return cb(nil, err) end
    self.nodes, self.alive, self.tokens, self.token_rev, self.admissions, self.slices = {}, {}, {}, {}, {}, {}
    self.pol, self.pol_rev = nil, nil
    for _, kv in ipairs(res.kvs) do self:apply_kv(kv.key, kv.value, kv.mod_revision) end
    self.revision = res.revision
    self.last_ok = uv.now()
    cb(true)
  end)
end

function Reg:after_change()
  if self.nodes[self.node.name] then
    self.was_member = true
  elseif self.was_member and self.loaded then
    self.host.log("this node was removed from the cluster (its record is gone from etcd): stopping")
    return self.host.removed()
  end
  self.host.changed()
end

function Reg:on_events(evs, rev)
  local changed = false
  for _, ev in ipairs(evs) do
    local value = ev.type ~= "DELETE" and ev.kv.value or nil
    if self:apply_kv(ev.kv.key, value, ev.kv.mod_revision) then changed = true end
  end
  self.revision = math.max(self.revision, rev)
  self.last_ok = uv.now()
  if changed then self:after_change() end
end

function Reg:start_watch()
  self.watch = self.e:watch(self.prefix, self.revision + 1,
    self.host.guard("etcd watch", function(evs, rev) self:on_events(evs, rev) end),
    self.host.guard("etcd watch reset", function()
      -- compacted past what we saw: read everything again, resume after it
      self.host.log("etcd: watch revision compacted; reading the cluster again")
      self:full_read(function(ok, err)
        if not ok then
          self.host.log("etcd: full read failed: %s", err)
          return self.watch:resume_at(self.revision)
        end
        self:after_change()
        self.watch:resume_at(self.revision)
      end)
    end),
    function(up, err)
      self.watch_up = up
      if up then self.last_ok = uv.now() end
      if not up then self.host.log("etcd: watch interrupted (%s); resuming from revision %d", tostring(err),
                                   self.revision + 1) end
    end)
end

-- ---------------------------------------------------------------------
-- liveness: a lease with this node's alive/ key
-- ---------------------------------------------------------------------

function Reg:announce()
  if self.stopping then return end
  local function put_alive()
    self.e:put(self:key("alive", self.node.name), self.node.self.endpoint, { lease = self.lease }, function(ok, err)
      if not ok then
        self.host.log("etcd: cannot announce this node: %s", err)
        self.lease = nil
      else
        self.last_ok = uv.now()
      end
    end)
  end
  if self.lease then
    return self.e:keepalive(self.lease, function(ttl, err)
      if ttl and ttl > 0 then
        self.last_ok = uv.now()
        return
      end
      if ttl == 0 then self.host.log("etcd: lease expired; announcing again") end
      if err then return end -- etcd unreachable: try again on the next tick
      self.lease = nil
      self:announce()
    end)
  end
  self.e:grant(M.LEASE_TTL, function(id, err)
    if not id then return self.host.log("etcd: lease grant failed: %s", err) end
    self.lease = id
    put_alive()
  end)
end

-- ---------------------------------------------------------------------
-- the interface
-- ---------------------------------------------------------------------

function Reg:start()
  local ok, err = M.sync(function(cb) self:full_read(cb) end)
  if not ok then return nil, "etcd: " .. tostring(err) end
  if not self.nodes[self.node.name] then
    return nil, string.format("node \"%s\" is not in the cluster in etcd (removed?)", self.node.name)
  end
  self.loaded, self.was_member = true, true
  self:start_watch()
  self:announce()
  local t = uv.new_timer()
  t:start(M.KEEPALIVE * 1000, M.KEEPALIVE * 1000, self.host.guard("etcd keepalive", function() self:announce() end))
  self.timers[#self.timers + 1] = t
  -- our own record as this daemon sees it (endpoint, containers) goes in
  self:update_self({})
  return true
end

function Reg:stop()
  self.stopping = true
  for _, t in ipairs(self.timers) do close(t) end
  if self.watch then self.watch:cancel() end
  if self.lease then
    -- tell the others at once that this node is down (best effort)
    local done = false
    self.e:revoke(self.lease, function() done = true end)
    local t0 = uv.now()
    while not done and uv.now() - t0 < 1000 do uv.run("once") end
  end
  self.e:close()
end

function Reg:members()
  local list = {}
  for _, n in pairs(self.nodes) do list[#list + 1] = n.rec end
  return list
end

function Reg:version() return self.revision end

--- Connected: the watch stream is up and etcd answered recently.
function Reg:connected()
  return self.watch_up and (uv.now() - self.last_ok) < M.LEASE_TTL * 1000
end

--- For status.registry: also `down`, the members whose lease expired
-- (they keep their slice until remove-node).
function Reg:status()
  local down = {}
  if self.loaded then
    for name in pairs(self.nodes) do
      if not self.alive[name] and name ~= self.node.name then down[#down + 1] = name end
    end
    table.sort(down)
  end
  return { kind = "etcd", endpoints = self.endpoints, prefix = self.prefix, connected = self:connected(),
           revision = self.revision, requests = self.e.stats.requests, failovers = self.e.stats.failovers,
           down = setmetatable(down, cjson.array_mt) }
end

-- Changes this node's own record: what this node wants in it (`desired`:
-- endpoint, containers, candidates, public key) over what etcd has, by
-- compare-and-swap on the record's revision, one transaction at a time,
-- again until etcd has it.
function Reg:update_self(fields)
  for k, v in pairs(fields) do self.desired[k] = v end
  self.self_dirty = true
  if self.self_busy or self.stopping then return end
  self.self_dirty = false
  local cur = self.nodes[self.node.name]
  if not cur then return end
  local r = {}
  for k, v in pairs(cur.rec) do r[k] = v end
  for k, v in pairs(self.desired) do r[k] = v end
  if same(r, cur.rec) then return end
  local enc = cjson.encode(r)
  self.self_busy = true
  local key = self:key("nodes", self.node.name)
  self.e:txn({ compare = { etcd.cmp(key, "MOD", "EQUAL", cur.rev) }, success = { etcd.put_op(key, enc) },
               failure = { etcd.range_op(key) } }, self.host.guard("etcd update", function(res, err)
    self.self_busy = false
    if not res then
      self.host.log("etcd: cannot update this node's record: %s (will retry)", err)
      local t = uv.new_timer()
      t:start(2000, 0, self.host.guard("etcd update retry", function() close(t) self:update_self({}) end))
      return
    end
    if not res.succeeded then
      local kv = res.responses[1] and res.responses[1].kvs and res.responses[1].kvs[1]
      if not kv then return end -- removed meanwhile: the watch stops us
      self:apply_kv(kv.key, kv.value, kv.mod_revision)
      return self:update_self({})
    end
    if self:apply_kv(key, enc, res.revision) then self.host.changed() end
    if self.self_dirty then self:update_self({}) end
  end))
end

function Reg:set_containers(list)
  self:update_self({ containers = list })
end

function Reg:set_candidates(c)
  if c then self:update_self({ candidates = c }) end
end

--- This node rotated its key: the record carries the new public key.
function Reg:set_public_key(pub)
  self:update_self({ public_key = pub })
end

--- Asks `peer` to punch: a key it watches (on our lease), and we probe too.
function Reg:request_punch(peer)
  if not self.nodes[peer] or peer == self.node.name then return end
  local now = uv.now() / 1000
  if self.punches[peer] and now - self.punches[peer] < M.PUNCH_DEDUP then return end
  self.punches[peer] = now
  self.e:put(self:key("punch", peer, self.node.name), tostring(os.time()), { lease = self.lease }, function(ok, err)
    if not ok then self.host.log("etcd: punch request to %s not written: %s", peer, err) end
  end)
  self.host.punch(peer)
end

--- Endpoints of live members for a token (this node first).
function Reg:token_endpoints()
  local out = { self.node.self.endpoint }
  local names = {}
  for name in pairs(self.alive) do
    if name ~= self.node.name and self.nodes[name] then names[#names + 1] = name end
  end
  table.sort(names)
  for _, name in ipairs(names) do
    if #out > M.TOKEN_PEERS then break end
    local ep = self.nodes[name].rec.endpoint
    if ep then out[#out + 1] = ep end
  end
  return out
end

--- Issues a token: cb(token_string) or cb(nil, message).
function Reg:issue_token(o, cb)
  M.put_token(self.e, self.prefix, self.token_key, {
    endpoints = self:token_endpoints(), control_public = self.node.cluster.control_public,
    ttl = math.tointeger(o.ttl), uses = math.tointeger(o.uses) }, cb)
end

--- Writes a new token into etcd: cb(token_string) or cb(nil, message).
function M.put_token(e, prefix, key, o, cb)
  local store = {}
  local ok, str, id = pcall(token.create, store, { endpoint = o.endpoints[1], extra = { table.unpack(o.endpoints, 2) },
                                                   control_public = o.control_public, ttl = o.ttl, uses = o.uses })
  if not ok then return cb(nil, tostring(str)) end
  local k = prefix .. "tokens/" .. id
  e:txn({ compare = { etcd.cmp(k, "CREATE", "EQUAL", 0) }, success = { etcd.put_op(k, M.seal_token(store[id], key)) } },
    function(res, err)
      if not res then return cb(nil, "etcd: " .. tostring(err)) end
      if not res.succeeded then return cb(nil, "token id collision; try again") end
      cb(str)
    end)
end

-- ---------------------------------------------------------------------
-- network policy: `<prefix>policy` = {version, doc}, watched like the rest
-- ---------------------------------------------------------------------

-- Returns true when the policy in force changed.
function Reg:apply_policy(value, mod_revision)
  if value == nil then
    local had = self.pol ~= nil
    self.pol, self.pol_rev = nil, nil
    return had
  end
  local p = cjson.decode(value)
  if type(p) == "table" then p = { version = math.tointeger(p.version) or p.version, doc = p.doc } end
  local ok, err = schema.check("members", { version = 0, members = {}, policy = p })
  if not ok then
    self.host.log("etcd: policy ignored (the previous one stays): %s", err)
    return false
  end
  self.pol_rev = mod_revision
  if self.pol and self.pol.version == p.version then return false end
  self.pol = { version = p.version, doc = assert(policy.validate(p.doc)) }
  return true
end

function Reg:policy() return self.pol end

--- Stores a new policy (any node): a transaction on the key's revision,
-- so two concurrent applies cannot both take the same version.
function Reg:set_policy(doc, cb)
  local clean, verr = policy.validate(doc)
  if not clean then return cb(nil, verr) end
  local key = self:key("policy")
  local version = ((self.pol and self.pol.version) or 0) + 1
  local enc = cjson.encode({ version = version, doc = clean })
  self.e:txn({ compare = { etcd.cmp(key, "MOD", "EQUAL", self.pol_rev or 0) }, success = { etcd.put_op(key, enc) } },
    self.host.guard("etcd policy", function(res, err)
      if not res then return cb(nil, "etcd unavailable: " .. tostring(err) .. "; the policy in force stays") end
      if not res.succeeded then return cb(nil, "the policy changed meanwhile (another apply); try again") end
      if self:apply_policy(enc, res.revision) then self.host.changed() end
      self.host.log("policy version %d stored (%d rules, default %s)", version, #clean.rules, clean.default)
      self.host.event("policy_applied", { version = version })
      cb({ version = version })
    end))
end

--- Removes a node everywhere: cb(true) or cb(nil, message).
function Reg:remove_node(name, cb)
  local cur = self.nodes[name]
  if not cur then return cb(nil, string.format("no node named \"%s\"", name)) end
  if name == self.node.name then return cb(nil, "a node cannot remove itself; run remove-node on another member") end
  local ops = { etcd.delete_op(self:key("nodes", name)), etcd.delete_op(self:key("alive", name)),
                etcd.delete_op(self:key("admissions", name)), etcd.delete_prefix_op(self:key("punch", name) .. "/") }
  for idx, owner in pairs(self.slices) do
    if owner == name then ops[#ops + 1] = etcd.delete_op(self:key("slices", tostring(idx))) end
  end
  self.e:txn({ compare = { etcd.cmp(self:key("nodes", name), "MOD", "EQUAL", cur.rev) }, success = ops },
    self.host.guard("etcd remove-node", function(res, err)
      if not res then return cb(nil, "etcd unavailable: " .. tostring(err) .. "; nothing was removed, try again") end
      if not res.succeeded then return cb(nil, "the node's record changed meanwhile; try again") end
      self.host.log("node %s removed", name)
      self.host.event("node_removed", { peer = name })
      cb(true)
    end))
end

-- ---------------------------------------------------------------------
-- joins: the join protocol on the WireGuard port, admission in etcd
-- ---------------------------------------------------------------------

function Reg:on_datagram(from, data)
  if not self.loaded then return false end
  local ctx = {
    tokens = self.tokens, control_private = self.control_private, cache = self.join_cache, seen = self.join_seen,
    joins = self.admissions,
    admit = function(p, id, retry) return self:admit(p, id, retry) end,
  }
  local reply = joinproto.handle_logged(ctx, data, from, self.join_log, self.host.log)
  if reply then self.host.t:send_datagram(from, reply) end
  return true
end

function Reg:join_response(rec)
  local c = self.node.cluster
  return {
    node = { overlay_ip = rec.overlay_ip, overlay_ip6 = rec.overlay_ip6, slice = rec.slice, slice6 = rec.slice6 },
    cluster = { cidr4 = c.cidr4, cidr6 = c.cidr6, zone = c.zone, dns_forward = c.dns_forward, stun = c.stun,
                turn = c.turn, nat = c.nat, control_public = c.control_public,
                registry = { kind = "etcd", endpoints = c.registry.endpoints, prefix = c.registry.prefix,
                             user = c.registry.user, ca = self:ca_pem() } },
    secrets = { control_private = self.node.control_private, etcd_password = self.node.etcd_password },
    leader = self.nodes[self.node.name] and self.nodes[self.node.name].rec,
  }
end

function Reg:ca_pem()
  local f = self.node.cluster.registry.ca_file
  if not f then return nil end
  if self._ca == nil then
    local h = io.open(f, "rb")
    self._ca = h and h:read("a") or false
    if h then h:close() end
  end
  return self._ca or nil
end

-- Called by joinproto.handle, synchronously: the answer once the
-- admission transaction finished, else nil + "later" (the joiner sends a
-- fresh request every second and gets the answer then).
function Reg:admit(p, id, retry)
  local k = id .. "\0" .. p.name .. "\0" .. p.public_key
  local done = self.admit_done[k]
  if done then
    if done.ok then return done.resp end
    if uv.now() - done.at < M.FAILED_ADMISSION_TTL * 1000 then return nil, done.err end
    self.admit_done[k] = nil
  end
  if not self.admit_busy[k] then
    self.admit_busy[k] = true
    self:admit_async(p, id, retry, function(resp, err)
      self.admit_busy[k] = nil
      self.admit_done[k] = { ok = resp ~= nil, resp = resp, err = err, at = uv.now() }
      if resp then
        self.host.log("node %s joined (%s)", p.name, resp.node.overlay_ip)
        self.host.event("node_joined", { peer = p.name })
      end
    end)
  end
  return nil, "admission in progress", true
end

function Reg:free_slice(skip)
  for idx = 0, self.alloc:slice_count() - 1 do
    if self.slices[idx] == nil and not skip[idx] then return idx end
  end
end

function Reg:admit_async(p, id, retry, cb)
  local tries, skip = 0, {}
  local function attempt()
    tries = tries + 1
    if tries > M.ADMIT_TRIES then return cb(nil, "too many conflicting joins; try again") end
    local existing = self.nodes[p.name]
    if existing then
      if existing.rec.public_key ~= p.public_key then
        return cb(nil, string.format("node name \"%s\" already in use", p.name))
      end
      return cb(self:join_response(existing.rec)) -- the same joiner again: same slice, no token use
    end
    if retry then return cb(nil, string.format("node \"%s\" was removed since it was admitted; ask for a new token",
                                               p.name)) end
    local entry, trev = self.tokens[id], self.token_rev[id]
    if not entry then return cb(nil, "unknown token") end
    local ok, terr = token.usable({ [id] = { id = id, hash = entry.hash, expires = entry.expires,
                                             uses_left = entry.uses_left } }, id)
    if not ok then return cb(nil, terr) end
    local idx = self:free_slice(skip)
    if not idx then return cb(nil, string.format("cluster %s has no free slice", self.node.cluster.cidr4)) end
    local s = self.alloc:slice_at(idx)
    local rec = { name = p.name, public_key = p.public_key, endpoint = p.endpoint, overlay_ip = s.ip,
                  overlay_ip6 = s.ip6, slice = s.slice, slice6 = s.slice6, containers = {} }
    local used = { id = id, hash = entry.hash, expires = entry.expires, uses_left = entry.uses_left - 1 }
    local nkey, skey, tkey = self:key("nodes", p.name), self:key("slices", tostring(idx)), self:key("tokens", id)
    self.e:txn({
      compare = { etcd.cmp(tkey, "MOD", "EQUAL", trev), etcd.cmp(nkey, "CREATE", "EQUAL", 0),
                  etcd.cmp(skey, "CREATE", "EQUAL", 0) },
      success = { etcd.put_op(tkey, M.seal_token(used, self.token_key)), etcd.put_op(nkey, cjson.encode(rec)),
                  etcd.put_op(skey, p.name),
                  etcd.put_op(self:key("admissions", p.name),
                              cjson.encode({ token = id, public_key = p.public_key, at = os.time() })) },
      failure = { etcd.range_op(tkey), etcd.range_op(nkey), etcd.range_op(skey) },
    }, self.host.guard("etcd admission", function(res, err)
      if not res then
        return cb(nil, "the registry (etcd) is unavailable: " .. tostring(err) .. "; try again later")
      end
      if res.succeeded then
        self:apply_kv(nkey, cjson.encode(rec), res.revision)
        self:apply_kv(skey, p.name, res.revision)
        return cb(self:join_response(rec))
      end
      -- someone else was faster: learn what changed and try again
      for i, key in ipairs({ tkey, nkey, skey }) do
        local kv = res.responses[i] and res.responses[i].kvs and res.responses[i].kvs[1]
        self:apply_kv(key, kv and kv.value or nil, kv and kv.mod_revision or 0)
      end
      if self.slices[idx] ~= nil then skip[idx] = true end
      attempt()
    end))
  end
  attempt()
end

-- ---------------------------------------------------------------------
-- init: create the cluster in etcd
-- ---------------------------------------------------------------------

--- Creates the cluster under `prefix` (refused if it exists):
-- cb(true) or cb(nil, message).
function M.create_cluster(e, prefix, settings, record, cb)
  local ck = prefix .. "cluster"
  e:txn({ compare = { etcd.cmp(ck, "CREATE", "EQUAL", 0) },
          success = { etcd.put_op(ck, cjson.encode(settings)),
                      etcd.put_op(prefix .. "nodes/" .. record.name, cjson.encode(record)),
                      etcd.put_op(prefix .. "slices/0", record.name) } },
    function(res, err)
      if not res then return cb(nil, "etcd: " .. tostring(err)) end
      if not res.succeeded then
        return cb(nil, string.format("a cluster already exists in etcd under %s (use another --etcd-prefix, "
          .. "or join it with a token)", prefix))
      end
      cb(true)
    end)
end


return M
