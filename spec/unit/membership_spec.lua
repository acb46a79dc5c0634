-- Membership (wgoverlay.membership): leader registry, member view, peer
-- diffs.  Pure Lua, no I/O.

local membership = require "wgoverlay.membership"
local cjson = require "cjson"

local function rec(i, over)
  local r = {
    name = "n" .. i, public_key = "pk" .. i, endpoint = "198.51.100." .. i .. ":51820",
    overlay_ip = "10.200.0." .. (16 * i + 1), overlay_ip6 = "fd00:200:0:" .. i .. "::1",
    slice = "10.200.0." .. (16 * i) .. "/28", slice6 = "fd00:200:0:" .. i .. "::/64", containers = {},
  }
  for k, v in pairs(over or {}) do r[k] = v end
  return r
end

local function json_copy(t) return cjson.decode(cjson.encode(t)) end

local function names(list)
  local out = {}
  for i, r in ipairs(list) do out[i] = type(r) == "table" and r.name or r end
  return out
end

describe("membership", function()
  describe("leader registry", function()
    local L
    before_each(function() L = assert(membership.leader.new({ name = "leader" })) end)

    it("starts empty at version 0 with an epoch", function()
      local s = L:snapshot()
      assert.equal("snapshot", s.type)
      assert.equal(0, s.version)
      assert.same({}, s.members)
      assert.is_string(s.epoch)
      assert.equal(0, L:count())
    end)

    it("join bumps the version; snapshots are sorted copies", function()
      assert.same({ 1, true }, { L:join(rec(2)) })
      assert.same({ 2, true }, { L:join(rec(1)) })
      local s = L:snapshot()
      assert.equal(2, s.version)
      assert.same({ "n1", "n2" }, names(s.members))
      assert.same(rec(1), s.members[1])
      s.members[1].endpoint = "mutated"
      assert.equal(rec(1).endpoint, L:get("n1").endpoint)
    end)

    it("join is idempotent for the same record and updates a changed one", function()
      L:join(rec(1))
      assert.same({ 1, false }, { L:join(rec(1)) })
      assert.same({ 2, true }, { L:join(rec(1, { endpoint = "203.0.113.1:1" })) })
      assert.equal("203.0.113.1:1", L:get("n1").endpoint)
    end)

    it("refuses a taken name or key and malformed records", function()
      L:join(rec(1))
      assert.same({ nil, "name already in use" }, { L:join(rec(1, { public_key = "other" })) })
      assert.same({ nil, "public key already in use" }, { L:join(rec(2, { public_key = "pk1" })) })
      assert.matches("no name", select(2, L:join({ public_key = "x" })))
      assert.matches("no public key", select(2, L:join({ name = "x" })))
      assert.matches("slice must be a string", select(2, L:join(rec(3, { slice = 5 }))))
      assert.matches("containers must be a list", select(2, L:join(rec(3, { containers = "x" }))))
      assert.equal(1, L.version)
    end)

    it("update changes endpoint, key and containers, each once", function()
      L:join(rec(1))
      assert.same({ 2, true }, { L:update("n1", { endpoint = "203.0.113.9:4500" }) })
      assert.same({ 2, false }, { L:update("n1", { endpoint = "203.0.113.9:4500" }) })
      assert.same({ 3, true }, { L:update("n1", { public_key = "pk1b" }) })
      assert.same({ 4, true }, { L:update("n1", { containers = { { name = "web", ip = "10.200.0.18" } } }) })
      local r = L:get("n1")
      assert.equal("pk1b", r.public_key)
      assert.same({ { name = "web", ip = "10.200.0.18" } }, r.containers)
      -- The old key is free again.
      assert.same({ 5, true }, { L:join(rec(2, { public_key = "pk1" })) })
    end)

    it("update refuses unknown members, fields and taken keys", function()
      L:join(rec(1))
      L:join(rec(2))
      assert.same({ nil, "unknown member" }, { L:update("n9", { endpoint = "x:1" }) })
      assert.same({ nil, "cannot update field 'slice'" }, { L:update("n1", { slice = "10.0.0.0/8" }) })
      assert.same({ nil, "public key already in use" }, { L:update("n1", { public_key = "pk2" }) })
      assert.same({ nil, "endpoint must be a non-empty string" }, { L:update("n1", { endpoint = 5 }) })
      assert.matches("container 1 has no name", select(2, L:update("n1", { containers = { {} } })))
      assert.equal(2, L.version)
    end)

    it("remove bumps the version and frees name and key", function()
      L:join(rec(1))
      assert.equal(2, L:remove("n1"))
      assert.same({ nil, "unknown member" }, { L:remove("n1") })
      assert.is_nil(L:get("n1"))
      assert.same({ 3, true }, { L:join(rec(1, { public_key = "pk1" })) })
    end)

    it("delta_since coalesces each name to its latest state", function()
      L:join(rec(1))                                   -- v1
      L:join(rec(2))                                   -- v2
      L:update("n1", { endpoint = "203.0.113.1:1" })    -- v3
      L:join(rec(3))                                   -- v4
      L:remove("n3")                                   -- v5
      L:remove("n2")                                   -- v6
      L:join(rec(2, { public_key = "pk2b" }))          -- v7
      local d = L:delta_since(2)
      assert.equal("delta", d.type)
      assert.equal(2, d.from)
      assert.equal(7, d.version)
      assert.same({ "n1", "n2" }, names(d.upsert))
      assert.equal("203.0.113.1:1", d.upsert[1].endpoint)
      assert.equal("pk2b", d.upsert[2].public_key)
      assert.same({ "n3" }, d.remove)
      local e = L:delta_since(7)
      assert.same({ type = "delta", epoch = L.epoch, from = 7, version = 7, upsert = {}, remove = {} }, e)
      assert.same(e, L:heartbeat())
    end)

    it("sends a snapshot to members too far behind, ahead, or from another epoch", function()
      local S = membership.leader.new({ log_size = 3 })
      for i = 1, 5 do S:join(rec(i)) end
      assert.equal(2, S:stats().log_base)
      assert.equal("delta", S:delta_since(2).type)
      assert.equal("delta", S:delta_since(4, S.epoch).type)
      assert.equal("snapshot", S:delta_since(1).type)
      assert.equal("snapshot", S:delta_since(0).type)
      assert.equal("snapshot", S:delta_since(6).type)
      assert.equal("snapshot", S:delta_since(4, "other-epoch").type)
      assert.equal("snapshot", S:delta_since(nil).type)
      assert.equal("snapshot", S:delta_since("3").type)
      assert.same({ "n3", "n4", "n5" }, names(S:delta_since(2).upsert))
    end)

    it("a young registry serves a fresh member (version 0) a delta of everything", function()
      L:join(rec(1))
      L:join(rec(2))
      L:remove("n1")
      local d = L:delta_since(0)
      assert.equal("delta", d.type)
      assert.same({ "n2" }, names(d.upsert))
      assert.same({ "n1" }, d.remove)
    end)

    it("exports and reloads through JSON (version, epoch, members)", function()
      L:join(rec(1))
      L:join(rec(2, { containers = { { name = "db", ip = "10.200.0.34", ip6 = "fd00:200:0:2::2" } } }))
      local saved = json_copy(L:export())
      local R = assert(membership.leader.new({ name = "leader", members = saved.members, version = saved.version,
                                               epoch = saved.epoch }))
      assert.same(L:snapshot(), R:snapshot())
      assert.equal("integer", math.type(R.version))
      -- The change log is not persisted: older members get a snapshot.
      assert.equal("snapshot", R:delta_since(1, R.epoch).type)
      assert.equal("delta", R:delta_since(2, R.epoch).type)
      R:remove("n1")
      assert.same({ "n1" }, R:delta_since(2, R.epoch).remove)
    end)

    it("refuses bad persisted state", function()
      assert.matches("persisted", select(2, membership.leader.new({ members = { x = { name = "x" } } })))
      assert.matches("duplicate", select(2, membership.leader.new({ members = { rec(1), rec(2, { public_key = "pk1" }) } })))
      assert.matches("version", select(2, membership.leader.new({ version = -1 })))
      assert.matches("version", select(2, membership.leader.new({ version = 1.5 })))
    end)

    it("bounds its log", function()
      local S = membership.leader.new({ log_size = 10 })
      for i = 1, 100 do S:join(rec(i)) end
      local st = S:stats()
      assert.equal(100, st.version)
      assert.equal(10, st.log_entries)
      local n = 0
      for _ in pairs(S.log) do n = n + 1 end
      assert.equal(10, n)
    end)

    it("stamps changes with the injected clock", function()
      local t = 100
      local S = membership.leader.new({ clock = function() return t end })
      S:join(rec(1))
      t = 250
      S:update("n1", { endpoint = "x:1" })
      assert.equal(250, S:stats().changed_at)
    end)
  end)

  describe("member view", function()
    local L, V, now
    before_each(function()
      now = 1000
      L = membership.leader.new({ name = "leader" })
      V = membership.member.new({ self_name = "n1", clock = function() return now end })
    end)

    local function wire(msg) return json_copy(msg) end

    it("applies a snapshot; desired peers exclude itself", function()
      for i = 1, 3 do L:join(rec(i)) end
      local r = V:apply(wire(L:snapshot()))
      assert.same({ applied = true, changed = true, version = 3 }, r)
      assert.equal(L.epoch, V.epoch)
      assert.equal(1000, V.synced_at)
      assert.same({ "n1", "n2", "n3" }, names(V:members()))
      assert.same({
        pk2 = { name = "n2", endpoint = rec(2).endpoint, allowed_ips = { rec(2).slice, rec(2).slice6 } },
        pk3 = { name = "n3", endpoint = rec(3).endpoint, allowed_ips = { rec(3).slice, rec(3).slice6 } },
      }, V:desired_peers())
    end)

    it("applies deltas in order and ignores stale ones", function()
      L:join(rec(1))
      V:apply(wire(L:snapshot()))
      L:join(rec(2))
      local d2 = wire(L:delta_since(1))
      L:update("n2", { endpoint = "203.0.113.2:2" })
      local d3 = wire(L:delta_since(2))
      assert.is_true(V:apply(d2).applied)
      assert.is_true(V:apply(d3).applied)
      assert.equal(3, V.version)
      assert.equal("203.0.113.2:2", V:get("n2").endpoint)
      local r = V:apply(d2)
      assert.is_true(r.stale)
      assert.is_false(r.applied)
      assert.equal("203.0.113.2:2", V:get("n2").endpoint)
    end)

    it("applies an overlapping delta (from below its version)", function()
      L:join(rec(1))
      L:join(rec(2))
      V:apply(wire(L:delta_since(0)))
      L:join(rec(3))
      local r = V:apply(wire(L:delta_since(1)))
      assert.is_true(r.applied)
      assert.equal(3, V.version)
      assert.same({ "n1", "n2", "n3" }, names(V:members()))
    end)

    it("detects a gap and asks for a resync", function()
      L:join(rec(1))
      V:apply(wire(L:snapshot()))
      L:join(rec(2))
      L:join(rec(3))
      local r = V:apply(wire(L:delta_since(2)))
      assert.same({ applied = false, need_snapshot = true, version = 1 }, r)
      assert.equal(1, V.version)
      assert.same({ type = "hello", name = "n1", version = 1, epoch = L.epoch }, V:hello())
      assert.is_true(V:apply(wire(L:delta_since(V.version, V.epoch))).applied)
      assert.equal(3, V.version)
    end)

    it("notices a missed last change from a heartbeat", function()
      L:join(rec(1))
      V:apply(wire(L:snapshot()))
      assert.is_true(V:apply(wire(L:heartbeat())).stale)
      L:join(rec(2)) -- its delta is lost
      assert.is_true(V:apply(wire(L:heartbeat())).need_snapshot)
    end)

    it("reads a delta without 'from' as a single change", function()
      L:join(rec(1))
      V:apply(wire(L:snapshot()))
      L:join(rec(2))
      local d = wire(L:delta_since(1))
      d.from = nil
      assert.is_true(V:apply(d).applied)
      L:join(rec(3))
      L:join(rec(4))
      d = wire(L:delta_since(3))
      d.from = nil
      assert.is_true(V:apply(d).need_snapshot)
    end)

    it("takes a snapshot from a new epoch even at a lower version, not an older one", function()
      for i = 1, 5 do L:join(rec(i)) end
      V:apply(wire(L:snapshot()))
      local N = membership.leader.new({})
      N:join(rec(7))
      assert.is_true(V:apply(wire(N:delta_since(0))).need_snapshot) -- a delta of another epoch
      assert.is_true(V:apply(wire(N:snapshot())).applied)
      assert.same({ "n7" }, names(V:members()))
      assert.is_true(V:apply(wire(N:heartbeat())).stale)
      local W = membership.member.new({ self_name = "x" })
      L:join(rec(8))
      W:apply(wire(L:snapshot()))
      L:remove("n8")
      assert.is_true(W:apply(wire(L:snapshot())).applied)
      local old = wire(L:snapshot())
      old.version = 2
      assert.is_true(W:apply(old).stale)
      assert.equal(7, W.version)
    end)

    it("refuses malformed messages without changing anything", function()
      L:join(rec(1))
      V:apply(wire(L:snapshot()))
      local before = V:members()
      local bad = {
        "string", {}, { type = "snapshot" }, { type = "x", version = 2 },
        { type = "snapshot", version = 2, members = { { name = "a" } } },
        { type = "snapshot", version = 2, members = "nope" },
        { type = "delta", epoch = L.epoch, version = 2, from = 1, upsert = { rec(2), { name = 5 } } },
        { type = "delta", epoch = L.epoch, version = 2, from = 1, remove = { 5 } },
        { type = "delta", epoch = L.epoch, version = 2, from = 3 },
        { type = "delta", epoch = L.epoch, version = -1 },
      }
      for _, m in ipairs(bad) do
        local r, err = V:apply(m)
        assert.is_nil(r)
        assert.is_string(err)
      end
      assert.same(before, V:members())
      assert.equal(1, V.version)
    end)

    it("exports and restores (members.json)", function()
      for i = 1, 3 do L:join(rec(i)) end
      V:apply(wire(L:snapshot()))
      local saved = json_copy(V:export())
      local R = assert(membership.member.new({ self_name = "n1", members = saved.members, version = saved.version,
                                               epoch = saved.epoch }))
      assert.same(V:desired_peers(), R:desired_peers())
      assert.same(V:hello(), R:hello())
      L:join(rec(4))
      assert.is_true(R:apply(wire(L:delta_since(R.version, R.epoch))).applied)
      assert.matches("persisted", select(2, membership.member.new({ self_name = "a", members = { { name = "b" } } })))
    end)

    it("drops JSON nulls and unknown fields from records", function()
      local d = { type = "snapshot", epoch = "e", version = 1,
                  members = { { name = "n2", public_key = "k", endpoint = cjson.null, extra = "x",
                                containers = { { name = "c", ip = cjson.null } } } } }
      V:apply(d)
      assert.same({ name = "n2", public_key = "k", containers = { { name = "c" } } }, V:get("n2"))
      assert.same({ k = { name = "n2", allowed_ips = {} } }, V:desired_peers())
    end)
  end)

  describe("diff", function()
    local function peer(name, endpoint, ips) return { name = name, endpoint = endpoint, allowed_ips = ips } end

    it("adds, removes and updates", function()
      local current = {
        a = peer("A", "1.1.1.1:1", { "10.0.0.0/28" }),
        b = peer("B", "2.2.2.2:2", { "10.0.0.16/28" }),
        c = peer("C", "3.3.3.3:3", { "10.0.0.32/28", "fd00::/64" }),
        d = peer("D", "4.4.4.4:4", { "10.0.0.48/28" }),
      }
      local desired = {
        a = peer("A", "1.1.1.1:1", { "10.0.0.0/28" }),                 -- same
        b = peer("B", "2.2.2.9:2", { "10.0.0.16/28" }),                 -- endpoint
        c = peer("C", "3.3.3.3:3", { "fd00::/64", "10.0.0.32/28" }),     -- same set, other order
        d = peer("D", "4.4.4.4:4", { "10.0.0.48/28", "fd00:1::/64" }),   -- allowed ips
        e = peer("E", nil, { "10.0.0.64/28" }),                          -- new
      }
      current.z = peer("Z", "9.9.9.9:9", {})
      local d = membership.diff(current, desired)
      assert.same({ { public_key = "e", name = "E", allowed_ips = { "10.0.0.64/28" } } }, d.add)
      assert.same({ "z" }, d.remove)
      assert.equal(2, #d.update)
      assert.same({ public_key = "b", name = "B", endpoint = "2.2.2.9:2", allowed_ips = { "10.0.0.16/28" },
                    endpoint_changed = true, allowed_ips_changed = false }, d.update[1])
      assert.same({ "d", false, true }, { d.update[2].public_key, d.update[2].endpoint_changed,
                                         d.update[2].allowed_ips_changed })
    end)

    it("a key change (rotate-key) is one in-place rekey, with what else changed", function()
      local d = membership.diff({ old = peer("A", "1.1.1.1:1", { "x" }) }, { new = peer("A", "1.1.1.1:1", { "x" }) })
      assert.same({}, d.remove)
      assert.same({}, d.add)
      assert.same({}, d.update)
      assert.same({ { public_key = "new", old_public_key = "old", name = "A", endpoint = "1.1.1.1:1",
                      allowed_ips = { "x" }, endpoint_changed = false, allowed_ips_changed = false } }, d.rekey)
      d = membership.diff({ old = peer("A", "1.1.1.1:1", { "x" }), b = peer("B", nil, {}) },
                          { new = peer("A", "1.1.1.2:1", { "x", "y" }), b = peer("B", nil, {}) })
      assert.same({ "new", "old", true, true }, { d.rekey[1].public_key, d.rekey[1].old_public_key,
                                                  d.rekey[1].endpoint_changed, d.rekey[1].allowed_ips_changed })
    end)

    it("without a name, or when the old key is still desired, a key change is a removal and an addition", function()
      local d = membership.diff({ old = { endpoint = "1.1.1.1:1", allowed_ips = { "x" } } },
                                { new = peer("A", "1.1.1.1:1", { "x" }) })
      assert.same({ "old" }, d.remove)
      assert.same({ "new" }, { d.add[1].public_key })
      assert.same({}, d.rekey)
      -- the old key now belongs to another name: no rekey of a live peer
      d = membership.diff({ k1 = peer("A", nil, {}) }, { k1 = peer("B", nil, {}), k2 = peer("A", nil, {}) })
      assert.same({}, d.rekey)
      assert.same({ "k2" }, { d.add[1].public_key })
      assert.same({}, d.remove)
    end)

    it("a desired peer without an endpoint does not clear a configured one", function()
      local d = membership.diff({ a = peer("A", "1.1.1.1:1", {}) }, { a = peer("A", nil, {}) })
      assert.same({ add = {}, remove = {}, update = {}, rekey = {} }, d)
    end)

    it("is sorted and empty when nothing differs", function()
      assert.same({ add = {}, remove = {}, update = {}, rekey = {} }, membership.diff({}, {}))
      local desired = {}
      for i = 9, 1, -1 do desired["k" .. i] = peer("n" .. i, nil, {}) end
      local d = membership.diff({}, desired)
      for i = 1, 9 do assert.equal("k" .. i, d.add[i].public_key) end
    end)

    it("applying the diff to the current set gives the desired set (random sets)", function()
      math.randomseed(7)
      local function random_set()
        local s = {}
        for i = 1, 30 do
          if math.random() < 0.6 then
            local ips = { "10.0." .. i .. ".0/28" }
            if math.random() < 0.5 then ips[2] = "fd00:" .. i .. "::/64" end
            -- some nodes hold another key (rotated) in one set than in the other
            local key = (math.random() < 0.2 and "r" or "k") .. i
            s[key] = peer("n" .. i, "192.0.2." .. math.random(3) .. ":1", ips)
          end
        end
        return s
      end
      for _ = 1, 50 do
        local current, desired = random_set(), random_set()
        local d = membership.diff(current, desired)
        for _, pk in ipairs(d.remove) do current[pk] = nil end
        for _, a in ipairs(d.add) do current[a.public_key] = peer(a.name, a.endpoint, a.allowed_ips) end
        for _, u in ipairs(d.update) do current[u.public_key] = peer(u.name, u.endpoint, u.allowed_ips) end
        for _, r in ipairs(d.rekey) do
          local c = current[r.old_public_key]
          assert.equal(r.name, c.name)
          current[r.old_public_key] = nil
          current[r.public_key] = peer(r.name, r.endpoint or c.endpoint, r.allowed_ips)
        end
        for pk, p in pairs(desired) do
          assert.equal(p.endpoint, current[pk].endpoint)
          table.sort(p.allowed_ips)
          table.sort(current[pk].allowed_ips)
          assert.same(p.allowed_ips, current[pk].allowed_ips)
        end
        for pk in pairs(current) do assert.is_not_nil(desired[pk]) end
        assert.same({ add = {}, remove = {}, update = {}, rekey = {} }, membership.diff(current, desired))
      end
    end)

    it("desired_peers works on lists and maps and skips self", function()
      local list = { rec(1), rec(2) }
      list[2].slice6, list[2].endpoint = nil, nil
      local p = membership.desired_peers(list, "n1")
      assert.same({ pk2 = { name = "n2", allowed_ips = { rec(2).slice } } }, p)
      assert.same(p, membership.desired_peers({ n1 = rec(1), n2 = list[2] }, "n1"))
    end)
  end)
end)
