--- Membership: the leader's versioned registry, a member's view of it,
-- and peer-set differences.  Pure: no I/O; time only through an injected
-- clock.
--
-- A member record: `{name, public_key, endpoint, overlay_ip, overlay_ip6,
-- slice, slice6, containers = {{name, ip, ip6}...}, candidates}`, where the
-- optional `candidates` is the node's NAT traversal set `{key, nat, list =
-- {{type, endpoint}...}}` (see wgoverlay.nat.candidates; only its string
-- fields are kept here).
--
-- Messages (JSON lines over the overlay, see docs/ORCHESTRATION.md):
--
-- * `{type = "snapshot", epoch, version, members = {record...}}`
-- * `{type = "delta", epoch, from, version, upsert = {record...},
--   remove = {name...}}`: the changes between versions `from` and
--   `version`, each name once with its latest state (upserts carry whole
--   records, so applying a delta over any version in `[from, version)` is
--   correct).  A delta without `from` is taken as `from = version - 1`.
--   The leader's `heartbeat()` is an empty delta with
--   `from = version = current`, so a member that missed the last change
--   notices the gap.
-- * `epoch` identifies one registry's history: a member whose epoch
--   differs (the leader's state was recreated) takes the next snapshot
--   whatever its version.
--
-- Every change bumps the version by one and is logged; the log keeps the
-- last `log_size` changes (default 1024).  A member further behind, or
-- from another epoch, is sent a snapshot.
-- @module wgoverlay.membership
local M = {}

--- Default number of changes kept for deltas.
M.DEFAULT_LOG_SIZE = 1024

local STRING_FIELDS = { "endpoint", "overlay_ip", "overlay_ip6", "slice", "slice6" }
local UPDATABLE = { endpoint = true, public_key = true, containers = true, candidates = true }

local function int(x)
  return type(x) == "number" and math.tointeger(x) or nil
end

-- ---------------------------------------------------------------------
-- Records
-- ---------------------------------------------------------------------

local function copy_containers(list)
  local out = {}
  if list == nil then return out end
  for i = 1, #list do
    local c = list[i]
    local ip, ip6 = c.ip, c.ip6
    local labels
    if type(c.labels) == "table" then
      for k, v in pairs(c.labels) do
        if type(k) == "string" and type(v) == "string" then
          labels = labels or {}
          labels[k] = v
        end
      end
    end
    out[i] = { name = c.name, ip = type(ip) == "string" and ip or nil, ip6 = type(ip6) == "string" and ip6 or nil,
               labels = labels }
  end
  return out
end

local function same_labels(a, b)
  if a == nil or b == nil then return a == b end
  for k, v in pairs(a) do if b[k] ~= v then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local function str(v) return type(v) == "string" and v or nil end

-- NAT candidates: `{key, nat, list = {{type, endpoint}...}}`, strings only.
local function copy_candidates(c)
  if type(c) ~= "table" then return nil end
  local list, src = {}, c.list
  if type(src) == "table" then
    for i = 1, #src do
      local e = src[i]
      if type(e) == "table" then list[#list + 1] = { type = str(e.type), endpoint = str(e.endpoint) } end
    end
  end
  return { key = str(c.key), nat = str(c.nat), list = list }
end

local function same_candidates(a, b)
  if a == nil or b == nil then return a == b end
  if a.key ~= b.key or a.nat ~= b.nat or #a.list ~= #b.list then return false end
  for i = 1, #a.list do
    if a.list[i].type ~= b.list[i].type or a.list[i].endpoint ~= b.list[i].endpoint then return false end
  end
  return true
end

-- A copy with only the known fields (also strips JSON nulls).  Unrolled:
-- this runs for every record of every snapshot and delta.
local function copy_record(r)
  local e, ip, ip6, s4, s6 = r.endpoint, r.overlay_ip, r.overlay_ip6, r.slice, r.slice6
  return { name = r.name, public_key = r.public_key,
           endpoint = type(e) == "string" and e or nil,
           overlay_ip = type(ip) == "string" and ip or nil,
           overlay_ip6 = type(ip6) == "string" and ip6 or nil,
           slice = type(s4) == "string" and s4 or nil,
           slice6 = type(s6) == "string" and s6 or nil,
           containers = copy_containers(r.containers),
           candidates = r.candidates ~= nil and copy_candidates(r.candidates) or nil }
end

local function check_containers(list)
  if list == nil then return true end
  if type(list) ~= "table" then return nil, "containers must be a list" end
  for i = 1, #list do
    local c = list[i]
    if type(c) ~= "table" or type(c.name) ~= "string" then return nil, "container " .. i .. " has no name" end
  end
  return true
end

-- nil, a string or a JSON null (userdata) are acceptable optional fields.
local OPTIONAL_OK = { ["nil"] = true, string = true, userdata = true }
--- Checks the shape of a member record.
-- @param r
-- @return true, or nil and an error message
function M.check_record(r)
  if type(r) ~= "table" then return nil, "member record must be a table" end
  if type(r.name) ~= "string" or r.name == "" then return nil, "member record has no name" end
  if type(r.public_key) ~= "string" or r.public_key == "" then
    return nil, "member " .. r.name .. " has no public key"
  end
  local ok_type = OPTIONAL_OK
  if not (ok_type[type(r.endpoint)] and ok_type[type(r.overlay_ip)] and ok_type[type(r.overlay_ip6)]
          and ok_type[type(r.slice)] and ok_type[type(r.slice6)]) then
    for _, f in ipairs(STRING_FIELDS) do
      if not ok_type[type(r[f])] then return nil, "member " .. r.name .. ": " .. f .. " must be a string" end
    end
  end
  local ok, err = check_containers(r.containers)
  if not ok then return nil, "member " .. r.name .. ": " .. err end
  local c = r.candidates
  if c ~= nil and type(c) ~= "table" and type(c) ~= "userdata" then
    return nil, "member " .. r.name .. ": candidates must be a table"
  end
  return true
end

local function same_containers(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do
    if a[i].name ~= b[i].name or a[i].ip ~= b[i].ip or a[i].ip6 ~= b[i].ip6
       or not same_labels(a[i].labels, b[i].labels) then
      return false
    end
  end
  return true
end

local function same_record(a, b)
  if a.name ~= b.name or a.public_key ~= b.public_key then return false end
  for _, f in ipairs(STRING_FIELDS) do
    if a[f] ~= b[f] then return false end
  end
  return same_containers(a.containers, b.containers) and same_candidates(a.candidates, b.candidates)
end

-- Records of a name -> record map, or of a list, sorted by name.
local function sorted_records(members)
  local out = {}
  for _, r in pairs(members) do out[#out + 1] = r end
  table.sort(out, function(a, b) return a.name < b.name end)
  return out
end

local function sorted_keys(set)
  local out = {}
  for k in pairs(set) do out[#out + 1] = k end
  table.sort(out)
  return out
end

-- ---------------------------------------------------------------------
-- Leader registry
-- ---------------------------------------------------------------------

M.leader = {}

local Leader = {}
Leader.__index = Leader

local function new_epoch()
  return string.format("%08x%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
end

-- Loads persisted records (a name -> record map or a list) into `self`.
local function load_members(self, members)
  for _, r in pairs(members or {}) do
    local ok, err = M.check_record(r)
    if not ok then return nil, "persisted " .. err end
    if self.members[r.name] or self.by_key[r.public_key] then
      return nil, "persisted members: duplicate name or key for " .. r.name
    end
    self.members[r.name] = copy_record(r)
    self.by_key[r.public_key] = r.name
  end
  return true
end

--- Creates the leader registry.
-- @tparam table opts `name` (the leader's node name), `members`
--   (persisted name -> record map, or nil), `version` and `epoch` (as
--   persisted by `export`), `log_size` (default 1024), `clock` (function
--   returning seconds, default os.time)
-- @return registry, or nil and an error message (bad persisted state)
function M.leader.new(opts)
  opts = opts or {}
  local version = opts.version == nil and 0 or int(opts.version)
  if not version or version < 0 then return nil, "persisted version must be a non-negative integer" end
  local log_size = opts.log_size or M.DEFAULT_LOG_SIZE
  assert(math.type(log_size) == "integer" and log_size > 0, "membership.leader.new: bad log_size")
  local self = setmetatable({
    name = opts.name,
    epoch = type(opts.epoch) == "string" and opts.epoch or new_epoch(),
    version = version,
    members = {},
    by_key = {},
    log = {},          -- version -> name changed at that version
    log_base = version, -- deltas can be served from any version >= log_base
    log_size = log_size,
    clock = opts.clock or os.time,
    changed_at = nil,
  }, Leader)
  local ok, err = load_members(self, opts.members)
  if not ok then return nil, err end
  return self
end

-- Records one change of `name`: bump the version, log it, trim the log.
function Leader:_commit(name)
  self.version = self.version + 1
  self.log[self.version] = name
  if self.version - self.log_base > self.log_size then
    self.log_base = self.log_base + 1
    self.log[self.log_base] = nil
  end
  self.changed_at = self.clock()
  return self.version
end

--- Adds a member (or re-adds it unchanged: idempotent).
-- A name held by another public key, or a key held by another name, is
-- refused: a key change goes through `update`.
-- @tparam table record member record
-- @return version and whether anything changed, or nil and an error
function Leader:join(record)
  local ok, err = M.check_record(record)
  if not ok then return nil, err end
  local old = self.members[record.name]
  if old and old.public_key ~= record.public_key then return nil, "name already in use" end
  local holder = self.by_key[record.public_key]
  if holder and holder ~= record.name then return nil, "public key already in use" end
  local r = copy_record(record)
  if old and same_record(old, r) then return self.version, false end
  self.members[r.name] = r
  self.by_key[r.public_key] = r.name
  return self:_commit(r.name), true
end

--- Removes a member.
-- @tparam string name
-- @return version, or nil and "unknown member"
function Leader:remove(name)
  local r = self.members[name]
  if not r then return nil, "unknown member" end
  self.members[name] = nil
  self.by_key[r.public_key] = nil
  return self:_commit(name)
end

-- Validates update fields; returns nil or an error message.
local function check_update(self, name, fields)
  for f, v in pairs(fields) do
    if not UPDATABLE[f] then return "cannot update field '" .. tostring(f) .. "'" end
    if f == "containers" then
      local ok, err = check_containers(v)
      if not ok then return err end
    elseif f == "candidates" then
      if type(v) ~= "table" then return "candidates must be a table" end
    elseif type(v) ~= "string" or v == "" then
      return f .. " must be a non-empty string"
    end
  end
  local holder = fields.public_key and self.by_key[fields.public_key]
  if holder and holder ~= name then return "public key already in use" end
  return nil
end

--- Updates a member's endpoint, public key, containers and/or NAT
-- candidates.
-- @tparam string name
-- @tparam table fields any of `endpoint`, `public_key`, `containers`,
--   `candidates`
-- @return version and whether anything changed, or nil and an error
function Leader:update(name, fields)
  local old = self.members[name]
  if not old then return nil, "unknown member" end
  assert(type(fields) == "table", "membership: update fields must be a table")
  local err = check_update(self, name, fields)
  if err then return nil, err end
  local r = copy_record(old)
  r.endpoint = fields.endpoint or r.endpoint
  r.public_key = fields.public_key or r.public_key
  if fields.containers then r.containers = copy_containers(fields.containers) end
  if fields.candidates then r.candidates = copy_candidates(fields.candidates) end
  if same_record(old, r) then return self.version, false end
  self.by_key[old.public_key] = nil
  self.by_key[r.public_key] = name
  self.members[name] = r
  return self:_commit(name), true
end

--- A copy of one member's record, or nil.
function Leader:get(name)
  local r = self.members[name]
  return r and copy_record(r)
end

--- Number of members.
function Leader:count()
  local n = 0
  for _ in pairs(self.members) do n = n + 1 end
  return n
end

--- The whole registry as a snapshot message.
-- @treturn table `{type = "snapshot", epoch, version, members = {record...}}`
function Leader:snapshot()
  local list = {}
  for i, r in ipairs(sorted_records(self.members)) do list[i] = copy_record(r) end
  return { type = "snapshot", epoch = self.epoch, version = self.version, members = list }
end

--- The changes since version `v`, or a snapshot when `v` is older than the
-- delta log, newer than the registry, or from another epoch.
-- @tparam integer v the member's version
-- @tparam[opt] string epoch the member's epoch (not checked when nil)
-- @treturn table delta or snapshot message
function Leader:delta_since(v, epoch)
  v = int(v)
  if not v or v < self.log_base or v > self.version or (epoch ~= nil and epoch ~= self.epoch) then
    return self:snapshot()
  end
  local changed = {}
  for ver = v + 1, self.version do changed[self.log[ver]] = true end
  local upsert, remove = {}, {}
  for _, name in ipairs(sorted_keys(changed)) do
    local r = self.members[name]
    if r then upsert[#upsert + 1] = copy_record(r) else remove[#remove + 1] = name end
  end
  return { type = "delta", epoch = self.epoch, from = v, version = self.version, upsert = upsert, remove = remove }
end

--- An empty delta at the current version (send periodically: a member
-- behind it detects a gap).
-- @treturn table
function Leader:heartbeat()
  return { type = "delta", epoch = self.epoch, from = self.version, version = self.version, upsert = {}, remove = {} }
end

--- State to persist (in leader.json): `{epoch, version, members = name ->
-- record}`; pass its fields back to `leader.new`.
-- @treturn table
function Leader:export()
  local members = {}
  for name, r in pairs(self.members) do members[name] = copy_record(r) end
  return { epoch = self.epoch, version = self.version, members = members }
end

--- Counters: `{version, members, log_base, log_entries, changed_at}`.
function Leader:stats()
  return { version = self.version, members = self:count(), log_base = self.log_base,
           log_entries = self.version - self.log_base, changed_at = self.changed_at }
end

-- ---------------------------------------------------------------------
-- Member view
-- ---------------------------------------------------------------------

M.member = {}

local Member = {}
Member.__index = Member

--- Creates a member's view of the registry.
-- @tparam table opts `self_name`, `clock` (default os.time), and to restore
--   from members.json: `members` (list or map of records), `version`,
--   `epoch`
-- @return view (fields `version`, `epoch`, `synced_at` are read-only), or
--   nil and an error message
function M.member.new(opts)
  opts = opts or {}
  assert(type(opts.self_name) == "string", "membership.member.new: self_name required")
  local self = setmetatable({
    self_name = opts.self_name,
    clock = opts.clock or os.time,
    version = int(opts.version) or 0,
    epoch = type(opts.epoch) == "string" and opts.epoch or nil,
    records = {},
    synced_at = nil,
  }, Member)
  for _, r in pairs(opts.members or {}) do
    local ok, err = M.check_record(r)
    if not ok then return nil, "persisted " .. err end
    self.records[r.name] = copy_record(r)
  end
  return self
end

-- Validates every record of a list before anything is applied.
local function check_list(list, what)
  if type(list) ~= "table" then return nil, what .. " must be a list" end
  for _, r in ipairs(list) do
    local ok, err = M.check_record(r)
    if not ok then return nil, err end
  end
  return true
end

function Member:_apply_snapshot(msg, version)
  if msg.epoch == self.epoch and version < self.version then
    return { applied = false, stale = true, version = self.version }
  end
  local ok, err = check_list(msg.members, "members")
  if not ok then return nil, err end
  local records = {}
  for _, r in ipairs(msg.members) do records[r.name] = copy_record(r) end
  self.records, self.version = records, version
  self.epoch = type(msg.epoch) == "string" and msg.epoch or self.epoch
  self.synced_at = self.clock()
  return { applied = true, changed = true, version = version }
end

function Member:_apply_delta(msg, version)
  local from = msg.from == nil and version - 1 or int(msg.from)
  if not from or from > version then return nil, "bad delta: from must be an integer <= version" end
  local upsert, remove = msg.upsert or {}, msg.remove or {}
  local ok, err = check_list(upsert, "upsert")
  if not ok then return nil, err end
  if type(remove) ~= "table" then return nil, "remove must be a list" end
  for _, name in ipairs(remove) do
    if type(name) ~= "string" then return nil, "remove must be a list of names" end
  end
  local fresh = self.epoch == nil and self.version == 0
  if msg.epoch ~= nil and msg.epoch ~= self.epoch and not fresh then
    return { applied = false, need_snapshot = true, version = self.version }
  end
  if from > self.version then return { applied = false, need_snapshot = true, version = self.version } end
  self.synced_at = self.clock()
  if version <= self.version then return { applied = false, stale = true, version = self.version } end
  for _, r in ipairs(upsert) do self.records[r.name] = copy_record(r) end
  for _, name in ipairs(remove) do self.records[name] = nil end
  self.version = version
  self.epoch = type(msg.epoch) == "string" and msg.epoch or self.epoch
  return { applied = true, changed = #upsert + #remove > 0, version = version }
end

--- Applies a snapshot or delta from the leader.
-- @tparam table msg decoded message
-- @return result `{applied, changed, stale, need_snapshot, version}`:
--   `stale` = older than the view (ignored); `need_snapshot` = a gap or
--   another epoch (ignored; send `hello()` to resync); or nil and an
--   error for a malformed message (nothing applied)
function Member:apply(msg)
  if type(msg) ~= "table" then return nil, "message must be a table" end
  local version = int(msg.version)
  if not version or version < 0 then return nil, "message has no valid version" end
  if msg.type == "snapshot" then return self:_apply_snapshot(msg, version) end
  if msg.type == "delta" then return self:_apply_delta(msg, version) end
  return nil, "unknown message type " .. tostring(msg.type)
end

--- A record's public key learned out of band (the leader's new key, from
-- a key query: wgoverlay.leaderkey), without changing the version: the
-- leader's next delta or snapshot carries the same key.
-- @return true when the key changed
function Member:set_public_key(name, public_key)
  local r = self.records[name]
  if not r or type(public_key) ~= "string" or public_key == "" or r.public_key == public_key then return false end
  r.public_key = public_key
  return true
end

--- The hello message announcing this view's version (also a resync
-- request).
-- @treturn table `{type = "hello", name, version, epoch}`
function Member:hello()
  return { type = "hello", name = self.self_name, version = self.version, epoch = self.epoch }
end

--- Copies of all known records (including this node's), sorted by name.
-- @treturn table list
function Member:members()
  local out = {}
  for i, r in ipairs(sorted_records(self.records)) do out[i] = copy_record(r) end
  return out
end

--- A copy of one record, or nil.
function Member:get(name)
  local r = self.records[name]
  return r and copy_record(r)
end

--- The peers this node should have (all members but itself).
-- @treturn table public_key -> `{name, endpoint, allowed_ips}`
function Member:desired_peers()
  return M.desired_peers(self.records, self.self_name)
end

--- State to persist (members.json): `{epoch, version, members = list}`.
function Member:export()
  return { epoch = self.epoch, version = self.version, members = self:members() }
end

-- ---------------------------------------------------------------------
-- Peer sets
-- ---------------------------------------------------------------------

--- The desired peer set of node `self_name` from a member list.
-- @tparam table members list or name -> record map
-- @tparam string self_name excluded
-- @treturn table public_key -> `{name, endpoint, allowed_ips = {slice,
--   slice6}}` (absent slices are left out)
function M.desired_peers(members, self_name)
  local out = {}
  for _, r in pairs(members) do
    if r.name ~= self_name and type(r.public_key) == "string" then
      local ips = {}
      if type(r.slice) == "string" then ips[#ips + 1] = r.slice end
      if type(r.slice6) == "string" then ips[#ips + 1] = r.slice6 end
      out[r.public_key] = { name = r.name, endpoint = type(r.endpoint) == "string" and r.endpoint or nil,
                            allowed_ips = ips }
    end
  end
  return out
end

local function same_set(a, b)
  a, b = a or {}, b or {}
  if #a ~= #b then return false end
  local seen = {}
  for _, x in ipairs(a) do seen[x] = (seen[x] or 0) + 1 end
  for _, x in ipairs(b) do
    if not seen[x] or seen[x] == 0 then return false end
    seen[x] = seen[x] - 1
  end
  return true
end

local function by_public_key(a, b) return a.public_key < b.public_key end

--- Difference between the configured and the desired peer sets.
-- Peers are keyed by public key; a member that rotated its key (the same
-- name, a new key, the old key no longer desired) is one `rekey` entry,
-- so that the caller changes the key in place and keeps the peer's
-- sessions, instead of a removal and an addition that would end them
-- (`current` entries need their `name` for this; without one a key
-- change is a removal plus an addition).  A desired peer without an endpoint
-- never clears a configured one (WireGuard learns endpoints by roaming).
-- Callers should pass as `current` what they last configured, not roamed
-- endpoints from `status`.
-- @tparam table current public_key -> `{endpoint, allowed_ips, name}`
-- @tparam table desired public_key -> `{endpoint, allowed_ips, name}`
-- @treturn table `{add = {{public_key, name, endpoint, allowed_ips}...},
--   remove = {public_key...}, update = {{public_key, name, endpoint,
--   allowed_ips, endpoint_changed, allowed_ips_changed}...}, rekey =
--   {{public_key, old_public_key, name, endpoint, allowed_ips,
--   endpoint_changed, allowed_ips_changed}...}}`, each sorted by public key
function M.diff(current, desired)
  local add, remove, update, rekey = {}, {}, {}, {}
  -- configured peers no longer desired, by name: candidates for a rekey
  local gone, rekeyed = {}, {}
  for pk, c in pairs(current) do
    if desired[pk] == nil and type(c.name) == "string" then gone[c.name] = pk end
  end
  for pk, d in pairs(desired) do
    local c = current[pk]
    local entry = { public_key = pk, name = d.name, endpoint = d.endpoint, allowed_ips = d.allowed_ips or {} }
    local old = not c and d.name ~= nil and gone[d.name] or nil
    if old and not rekeyed[old] then
      rekeyed[old] = true
      c = current[old]
      entry.old_public_key = old
      entry.endpoint_changed = d.endpoint ~= nil and d.endpoint ~= c.endpoint
      entry.allowed_ips_changed = not same_set(c.allowed_ips, d.allowed_ips)
      rekey[#rekey + 1] = entry
    elseif not c then
      add[#add + 1] = entry
    else
      entry.endpoint_changed = d.endpoint ~= nil and d.endpoint ~= c.endpoint
      entry.allowed_ips_changed = not same_set(c.allowed_ips, d.allowed_ips)
      if entry.endpoint_changed or entry.allowed_ips_changed then update[#update + 1] = entry end
    end
  end
  for pk in pairs(current) do
    if desired[pk] == nil and not rekeyed[pk] then remove[#remove + 1] = pk end
  end
  table.sort(add, by_public_key)
  table.sort(update, by_public_key)
  table.sort(rekey, by_public_key)
  table.sort(remove)
  return { add = add, remove = remove, update = update, rekey = rekey }
end

return M
