-- Discrete-event simulation of the control plane: one leader and 520
-- members, in process (no sockets).  Members join over time through the
-- real join protocol (wgoverlay.joinproto, tokens), then keep a
-- TCP-like connection (ordered, random delays) carrying JSON lines to the
-- leader's registry (wgoverlay.membership).  Some members are removed,
-- change endpoints, keys and containers, disconnect and reconnect
-- (resync from their last version); the leader batches pushes, sheds a
-- few of them (a gap the member must notice), sends heartbeats, and keeps
-- a bounded delta log, so long outages force snapshots.
--
-- At the end every live member's desired peer set must be exactly all the
-- other live members with their latest keys, endpoints and slices, and
-- removed members and old keys must appear nowhere.  Message counts,
-- bytes and the convergence time are printed, not asserted.

local core = require "wgoverlay.core"
local token = require "wgoverlay.token"
local joinproto = require "wgoverlay.joinproto"
local membership = require "wgoverlay.membership"
local cjson = require "cjson"

local P = {
  seed = 20240611,
  members = 520,
  join_window = 60,        -- joins spread over [0, join_window) seconds
  churn = { 20, 120 },     -- churn events in this window
  removals = 40,
  endpoint_changes = 300,
  key_changes = 60,
  container_changes = 150,
  disconnects = 100,
  downtime = { 0.5, 45 },
  delay = { 0.005, 0.150 }, -- one-way message delay, seconds
  flush_interval = 0.5,    -- the leader batches changes this long
  heartbeat_interval = 5,
  push_loss = 0.003,       -- pushes the leader sheds (overloaded queue)
  log_size = 256,
  end_time = 200,
}

local EPOCH = 1700000000

-- ---------------------------------------------------------------------
-- Event queue (binary heap on time, then insertion order)
-- ---------------------------------------------------------------------

local Queue = {}
Queue.__index = Queue

local function new_queue() return setmetatable({ heap = {}, n = 0, seq = 0, now = 0 }, Queue) end

-- Events are ordered by time, then by insertion (so messages of one
-- channel that share an arrival time keep their order).  The comparison is
-- inlined: this heap carries ~100 000 events.
function Queue:at(t, fn)
  self.seq = self.seq + 1
  local h, seq = self.heap, self.seq
  local e = { t = t, seq = seq, fn = fn }
  local i = self.n + 1
  self.n = i
  while i > 1 do
    local p = i // 2
    local hp = h[p]
    if hp.t < t or (hp.t == t and hp.seq < seq) then break end
    h[i] = hp
    i = p
  end
  h[i] = e
end

function Queue:pop()
  local h, n = self.heap, self.n
  if n == 0 then return nil end
  local top, last = h[1], h[n]
  h[n] = nil
  n = n - 1
  self.n = n
  if n == 0 then return top end
  local lt, ls = last.t, last.seq
  local i = 1
  while true do
    local l = 2 * i
    if l > n then break end
    local c = h[l]
    if l < n then
      local r = h[l + 1]
      if r.t < c.t or (r.t == c.t and r.seq < c.seq) then l, c = l + 1, r end
    end
    if lt < c.t or (lt == c.t and ls < c.seq) then break end
    h[i] = c
    i = l
  end
  h[i] = last
  return top
end

function Queue:run(until_t)
  while true do
    local e = self:pop()
    if not e or e.t > until_t then return end
    self.now = e.t
    e.fn()
    if self.after_event then self.after_event() end
  end
end

-- ---------------------------------------------------------------------
-- The simulated cluster
-- ---------------------------------------------------------------------

local function uniform(range) return range[1] + (range[2] - range[1]) * math.random() end

local function slice_of(i)
  local base = i * 16
  return {
    slice = string.format("10.200.%d.%d/28", base // 256, base % 256),
    overlay_ip = string.format("10.200.%d.%d", base // 256, base % 256 + 1),
    slice6 = string.format("fd00:200:0:%x::/64", i),
    overlay_ip6 = string.format("fd00:200:0:%x::1", i),
  }
end

local function new_key()
  local _, pub = core.generate_keys()
  return pub
end

local function simulate()
  math.randomseed(P.seed)
  local q = new_queue()
  local stats = { msgs = {}, bytes = {}, total_msgs = 0, total_bytes = 0, snapshots = 0, forced_snapshots = 0,
                  resync_deltas = 0, gaps = 0, shed = 0, joins = 0, removed = 0, rekeys = 0, endpoint_changes = 0,
                  container_changes = 0, disconnects = 0, last_apply = 0, lag_sum = 0, lag_n = 0, lag_max = 0 }
  local function count(kind, bytes)
    stats.msgs[kind] = (stats.msgs[kind] or 0) + 1
    stats.bytes[kind] = (stats.bytes[kind] or 0) + bytes
    stats.total_msgs, stats.total_bytes = stats.total_msgs + 1, stats.total_bytes + bytes
  end

  -- Leader: control keys, one multi-use token, registry with itself in it.
  local control_priv, control_pub = core.x25519_keypair()
  local tokens = {}
  local tok = token.create(tokens, { endpoint = "192.0.2.1:51820", control_public = core.key_to_base64(control_pub),
                                     uses = P.members, ttl = 3600, now = EPOCH })
  local L = assert(membership.leader.new({ name = "leader", log_size = P.log_size, clock = function() return q.now end }))
  local leader_rec = slice_of(0)
  leader_rec.name, leader_rec.public_key, leader_rec.endpoint = "leader", new_key(), "192.0.2.1:51820"
  assert(L:join(leader_rec))
  local alloc, next_index = {}, 0
  local members = {}
  local conns = {} -- member index -> { sent = version, last_send = time } while connected (leader side)

  local function admit(p)
    local idx = alloc[p.name]
    if not idx then
      next_index = next_index + 1
      idx, alloc[p.name] = next_index, next_index
    end
    local r = slice_of(idx)
    r.name, r.public_key, r.endpoint, r.containers = p.name, p.public_key, p.endpoint, {}
    local ok, err = L:join(r)
    if not ok then return nil, err end
    return { node = slice_of(idx), cluster = { cidr4 = "10.200.0.0/16", cidr6 = "fd00:200::/48" },
             leader = { name = "leader", public_key = leader_rec.public_key, endpoint = leader_rec.endpoint } }
  end
  local join_ctx = { control_private = control_priv, tokens = tokens, cache = joinproto.replay_cache.new(64),
                     admit = admit }

  -- Ordered channel with random delays; messages of a closed connection
  -- are dropped on arrival.
  local function send(m, dir, kind, bytes, handler)
    count(kind, #bytes)
    local conn = m.conn
    local t = math.max(q.now + uniform(P.delay), m.last[dir])
    m.last[dir] = t
    q:at(t, function()
      if m.connected and m.conn == conn then handler() end
    end)
  end

  -- Datagrams (join, rekey): independent of the connection.
  local function datagram(kind, bytes, handler)
    count(kind, #bytes)
    q:at(q.now + uniform(P.delay), handler)
  end

  local member_receive

  -- Propagation lag: for every version a member learns, the time since
  -- the leader made it (prefix sums of creation times keep this O(1)).
  local created, prefix, known = { [0] = 0 }, { [0] = 0 }, 0
  q.after_event = function()
    for ver = known + 1, L.version do
      created[ver] = q.now
      prefix[ver] = prefix[ver - 1] + q.now
    end
    known = L.version
  end
  q.after_event()
  local function lag(from, to)
    if from < 1 or to > known then return end
    stats.lag_sum = stats.lag_sum + (to - from) * q.now - (prefix[to] - prefix[from])
    stats.lag_n = stats.lag_n + (to - from)
    stats.lag_max = math.max(stats.lag_max, q.now - created[from + 1])
  end

  -- `wire` = {json = encoded, msg = decoded once}: a push shared by many
  -- members is encoded and decoded once (apply copies what it keeps).
  local function encode(msg)
    local json = cjson.encode(msg)
    return { json = json, msg = cjson.decode(json), type = msg.type }
  end

  local function leader_send(m, wire, kind)
    conns[m.index].last_send = q.now
    kind = kind or wire.type
    send(m, "down", kind, wire.json, function() member_receive(m, wire.msg, kind) end)
  end

  -- Leader side of hello (also a resync request).
  local function leader_hello(m, hello)
    if not L:get(hello.name) then return end
    local c = conns[m.index] or {}
    conns[m.index] = c
    local reply = L:delta_since(hello.version, hello.epoch)
    if reply.type == "snapshot" then
      stats.snapshots = stats.snapshots + 1
      if hello.epoch == L.epoch then stats.forced_snapshots = stats.forced_snapshots + 1 end
    else
      stats.resync_deltas = stats.resync_deltas + 1
    end
    c.sent = L.version
    leader_send(m, encode(reply), reply.type == "delta" and "resync" or "snapshot")
  end

  local function leader_receive(m, msg)
    if msg.type == "hello" then return leader_hello(m, msg) end
    if msg.type == "endpoint" then L:update(m.name, { endpoint = msg.endpoint }) end
    if msg.type == "containers" then L:update(m.name, { containers = msg.containers }) end
  end

  local function member_send(m, msg)
    local json = cjson.encode(msg)
    send(m, "up", msg.type, json, function() leader_receive(m, cjson.decode(json)) end)
  end

  function member_receive(m, msg, kind)
    local before_version = m.view.version
    local r = assert(m.view:apply(msg))
    if r.applied then
      m.pending_resync = false
      stats.last_apply = math.max(stats.last_apply, q.now)
      if kind == "delta" then lag(before_version, m.view.version) end
    elseif r.need_snapshot and not m.pending_resync then
      stats.gaps = stats.gaps + 1
      m.pending_resync = true
      member_send(m, m.view:hello())
    end
  end

  local function connect(m)
    if m.dead then return end
    m.conn, m.connected, m.pending_resync = m.conn + 1, true, false
    m.last.up, m.last.down = q.now, q.now
    member_send(m, m.view:hello())
    member_send(m, { type = "endpoint", endpoint = m.endpoint })
    member_send(m, { type = "containers", containers = m.containers })
  end

  local function disconnect(m)
    m.connected, m.conn = false, m.conn + 1
    conns[m.index] = nil
  end

  local function schedule_reconnect(m, delay)
    if m.reconnect_pending then return end
    m.reconnect_pending = true
    q:at(q.now + delay, function()
      m.reconnect_pending = false
      connect(m)
    end)
  end

  -- Joining: a real JOIN_REQ / JOIN_RESP exchange.
  local function start_join(m)
    local bytes, session = assert(joinproto.make_request(tok, { name = m.name, public_key = m.key,
                                                                endpoint = m.endpoint, ts = EPOCH + math.floor(q.now) }))
    datagram("JOIN_REQ", bytes, function()
      local reply = joinproto.handle(join_ctx, bytes, EPOCH + math.floor(q.now))
      datagram("JOIN_RESP", reply, function()
        local r = assert(joinproto.open_response(session, reply))
        m.joined, m.slices = true, r.node
        stats.joins = stats.joins + 1
        connect(m)
      end)
    end)
  end

  for i = 1, P.members do
    local m = { index = i, name = string.format("node-%03d", i), key = new_key(),
                endpoint = string.format("203.0.113.%d:%d", i % 250 + 1, 40000 + i), containers = {},
                conn = 0, connected = false, last = { up = 0, down = 0 }, old_keys = {} }
    m.view = membership.member.new({ self_name = m.name, clock = function() return q.now end })
    members[i] = m
    q:at(math.random() * P.join_window, function() start_join(m) end)
  end

  -- Churn.
  local function pick(pred)
    for _ = 1, 1000 do
      local m = members[math.random(#members)]
      if m.joined and not m.dead and (not pred or pred(m)) then return m end
    end
  end

  local churn = {
    function() -- remove-node
      local m = pick()
      if not m then return end
      assert(L:remove(m.name))
      m.dead = true
      disconnect(m)
      stats.removed = stats.removed + 1
    end,
    function() -- endpoint change (NAT rebinding, move)
      local m = pick()
      if not m then return end
      m.endpoint = string.format("198.51.100.%d:%d", math.random(1, 254), math.random(1024, 65535))
      stats.endpoint_changes = stats.endpoint_changes + 1
      if m.connected then member_send(m, { type = "endpoint", endpoint = m.endpoint }) end
    end,
    function() -- key rotation: announced by datagram, the tunnel (and connection) restarts
      local m = pick()
      if not m then return end
      m.old_keys[#m.old_keys + 1] = m.key
      m.key = new_key()
      local key, name = m.key, m.name
      stats.rekeys = stats.rekeys + 1
      datagram("rekey", cjson.encode({ type = "rekey", name = name, public_key = key }), function()
        L:update(name, { public_key = key })
      end)
      disconnect(m)
      schedule_reconnect(m, uniform({ 0.5, 2 }))
    end,
    function() -- containers attached / detached
      local m = pick()
      if not m then return end
      local list = {}
      for k = 1, math.random(0, 4) do
        list[k] = { name = "c" .. math.random(1, 9), ip = string.format("%s.%d", m.slices.overlay_ip:match("^(.*)%.%d+$"),
                                                                       k + 1 + m.slices.overlay_ip:match("(%d+)$")) }
      end
      m.containers = list
      stats.container_changes = stats.container_changes + 1
      if m.connected then member_send(m, { type = "containers", containers = list }) end
    end,
    function() -- connection loss
      local m = pick(function(x) return x.connected end)
      if not m then return end
      stats.disconnects = stats.disconnects + 1
      disconnect(m)
      schedule_reconnect(m, uniform(P.downtime))
    end,
  }
  local plan = { P.removals, P.endpoint_changes, P.key_changes, P.container_changes, P.disconnects }
  for kind, n in ipairs(plan) do
    for _ = 1, n do q:at(uniform(P.churn), churn[kind]) end
  end

  -- Leader pushes: batched every flush_interval, heartbeats when idle.
  local function flush()
    local cache = {}
    for i = 1, #members do
      local c, m = conns[i], members[i]
      if c and m.connected then
        if c.sent < L.version then
          local wire = cache[c.sent] or encode(L:delta_since(c.sent, L.epoch))
          cache[c.sent] = wire
          c.sent = L.version
          if math.random() < P.push_loss then
            stats.shed = stats.shed + 1
          else
            leader_send(m, wire)
          end
        elseif q.now - c.last_send >= P.heartbeat_interval then
          cache.heartbeat = cache.heartbeat or encode(L:heartbeat())
          leader_send(m, cache.heartbeat, "heartbeat")
        end
      end
    end
    if q.now + P.flush_interval <= P.end_time then q:at(q.now + P.flush_interval, flush) end
  end
  q:at(P.flush_interval, flush)

  local wall = os.clock()
  q:run(P.end_time)
  stats.wall = os.clock() - wall
  return { L = L, members = members, stats = stats, leader_rec = leader_rec }
end

-- ---------------------------------------------------------------------
-- Checks and report
-- ---------------------------------------------------------------------

-- Every live node (the leader included) as a peer, keyed by public key:
-- the ground truth kept by the simulation itself, not by the registry.
local function all_live_peers(world)
  local lr = world.leader_rec
  local out = { [lr.public_key] = { name = "leader", endpoint = lr.endpoint, allowed_ips = { lr.slice, lr.slice6 } } }
  for _, m in ipairs(world.members) do
    if m.joined and not m.dead then
      out[m.key] = { name = m.name, endpoint = m.endpoint, allowed_ips = { m.slices.slice, m.slices.slice6 } }
    end
  end
  return out
end

-- First difference between the expected peer set (all live nodes but
-- `self_key`) and a computed one, or nil.  Plain Lua: a generic deep
-- comparison is too slow for 500 x 500 entries.
local function peer_set_diff(all, self_key, got)
  for pk, w in pairs(all) do
    local g = got[pk]
    if pk ~= self_key then
      if not g then return "missing " .. w.name end
      if g.name ~= w.name or g.endpoint ~= w.endpoint or #g.allowed_ips ~= #w.allowed_ips then
        return "differs for " .. w.name
      end
      for i, ip in ipairs(w.allowed_ips) do
        if g.allowed_ips[i] ~= ip then return "allowed ips differ for " .. w.name end
      end
    elseif g then
      return "contains itself"
    end
  end
  for pk, g in pairs(got) do
    if not all[pk] then return "unexpected " .. tostring(g.name) end
  end
  return nil
end

local function report(world)
  local s = world.stats
  local kinds = {}
  for k in pairs(s.msgs) do kinds[#kinds + 1] = k end
  table.sort(kinds)
  print(string.format("\nmembership simulation: %d members (%d joined, %d removed), final version %d",
    #world.members, s.joins, s.removed, world.L.version))
  print(string.format("  churn: %d endpoint changes, %d key rotations, %d container changes, %d disconnects",
    s.endpoint_changes, s.rekeys, s.container_changes, s.disconnects))
  print(string.format("  resyncs: %d snapshots (%d forced by the bounded log), %d resync deltas, %d gaps detected, %d pushes shed",
    s.snapshots, s.forced_snapshots, s.resync_deltas, s.gaps, s.shed))
  for _, k in ipairs(kinds) do
    print(string.format("  %-10s %8d messages %11d bytes", k, s.msgs[k], s.bytes[k]))
  end
  print(string.format("  total      %8d messages %11d bytes", s.total_msgs, s.total_bytes))
  print(string.format("  push propagation (change -> connected member): mean %.3f s, max %.3f s over %d deliveries",
    s.lag_sum / math.max(s.lag_n, 1), s.lag_max, s.lag_n))
  local last_change = world.L:stats().changed_at
  print(string.format("  convergence: last registry change at t=%.3f s, all live members in sync at t=%.3f s (%.3f s later;"
    .. " bounded by members still offline then)", last_change, s.last_apply, s.last_apply - last_change))
  print(string.format("  wall clock %.2f s", s.wall))
end

describe("membership simulation #sim", function()
  local world

  setup(function()
    world = simulate()
    report(world)
    world.desired = {}
    for _, m in ipairs(world.members) do
      if not m.dead then world.desired[m.name] = m.view:desired_peers() end
    end
  end)

  it("admits every member through the join protocol and exercises every path", function()
    local s = world.stats
    assert.equal(P.members, s.joins)
    assert.is_true(s.removed > 0 and s.rekeys > 0 and s.endpoint_changes > 0 and s.disconnects > 0)
    assert.is_true(s.forced_snapshots > 0, "no snapshot was forced by the bounded delta log")
    assert.is_true(s.resync_deltas > 0, "no reconnect was served from the delta log")
    assert.is_true(s.gaps > 0, "no gap was detected")
  end)

  it("the leader's registry holds exactly the live members with their latest state", function()
    local L = world.L
    local live = 0
    for _, m in ipairs(world.members) do
      if m.dead then
        assert.is_nil(L:get(m.name), m.name)
      else
        live = live + 1
        local r = assert(L:get(m.name), m.name)
        assert.equal(m.key, r.public_key)
        assert.equal(m.endpoint, r.endpoint)
        assert.equal(m.slices.slice, r.slice)
        assert.equal(m.slices.slice6, r.slice6)
        assert.same(m.containers, r.containers)
      end
    end
    assert.equal(live + 1, L:count())
    local lr = world.leader_rec
    assert.is_nil(peer_set_diff(all_live_peers(world), lr.public_key,
                                membership.desired_peers(L:snapshot().members, "leader")))
  end)

  it("every live member is connected, at the final version, and wants exactly the other live members", function()
    local checked, all = 0, all_live_peers(world)
    for _, m in ipairs(world.members) do
      if not m.dead then
        assert(m.connected, m.name .. " is not connected")
        assert(m.view.version == world.L.version, m.name .. " is not at the final version")
        local diff = peer_set_diff(all, m.key, world.desired[m.name])
        assert(diff == nil, m.name .. ": " .. tostring(diff))
        checked = checked + 1
      end
    end
    assert.equal(P.members - world.stats.removed, checked)
  end)

  it("removed members and rotated keys appear nowhere", function()
    local gone_names, gone_keys = {}, {}
    for _, m in ipairs(world.members) do
      if m.dead then
        gone_names[m.name] = true
        gone_keys[m.key] = true
      end
      for _, k in ipairs(m.old_keys) do gone_keys[k] = true end
    end
    assert.is_true(next(gone_names) ~= nil and next(gone_keys) ~= nil)
    -- Plain checks in the loops (luassert calls are slow at this scale).
    local found = {}
    for _, m in ipairs(world.members) do
      if not m.dead then
        for _, r in pairs(m.view.records) do
          if gone_names[r.name] or gone_keys[r.public_key] then found[#found + 1] = m.name .. " knows " .. r.name end
        end
        for pk, p in pairs(world.desired[m.name]) do
          if gone_keys[pk] then found[#found + 1] = m.name .. " wants an old key of " .. p.name end
        end
      end
    end
    assert.same({}, found)
    for _, r in ipairs(world.L:snapshot().members) do
      assert.is_nil(gone_names[r.name])
      assert.is_nil(gone_keys[r.public_key])
    end
  end)
end)
