-- State file schemas (wgoverlay.schema, state.load_checked): every file our
-- own code writes passes (built with the real init, token, join, allocator,
-- registry and member view: the join runs against an in-process leader on
-- 127.0.0.1), and each damaged field is refused with one message naming
-- the file and the field path, never quoting a string from the file.
-- Values the schema accepts never make the in-memory objects raise.
-- (join-pending.json comes from a join that nobody answers.)

local schema = require "wgoverlay.schema"
local state = require "wgoverlay.state"
local cluster = require "wgoverlay.cluster"
local allocator = require "wgoverlay.allocator"
local membership = require "wgoverlay.membership"
local joinproto = require "wgoverlay.joinproto"
local candidates = require "wgoverlay.nat.candidates"
local core = require "wgoverlay.core"
local uv = require "luv"

local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = deep_copy(x) end
  return out
end

local function free_udp_port()
  local u = uv.new_udp()
  assert(u:bind("127.0.0.1", 0))
  local port = u:getsockname().port
  u:close()
  uv.run("nowait")
  return port
end

-- A leader made by `init`, a token from `token_offline`, a member made by
-- `join` against an in-process leader that admits it as the daemon does,
-- then the files the daemon writes: leader.json after the join (with
-- candidates and containers in the registry), members.json from the
-- member's view, containers.json.
local function make_cluster(dir)
  local L, A = dir .. "/leader", dir .. "/a"
  local lport, aport = free_udp_port(), free_udp_port()
  local leader = assert(cluster.init({ state = L, endpoint = "127.0.0.1:" .. lport, name = "leader",
                                       stun = { "127.0.0.1:" .. lport }, nat = { "dead_after=20", "portmap=0" },
                                       dns_forward = "127.0.0.1:53" }))
  local tok = assert(cluster.token_offline({ state = L, ttl = 600, uses = 1 }))
  local lp = cluster.paths(L)
  local lead = assert(state.load(lp.leader))
  local alloc = assert(allocator.import(lead.allocator))
  local reg = assert(membership.leader.new({ name = "leader", members = lead.registry.members,
                                             version = lead.registry.version, epoch = lead.registry.epoch }))
  local function admit(p)
    local slice = assert(alloc:node_slice(p.name))
    assert(reg:join({ name = p.name, public_key = p.public_key, endpoint = p.endpoint, overlay_ip = slice.ip,
                      overlay_ip6 = slice.ip6, slice = slice.slice, slice6 = slice.slice6, containers = {} }))
    local c = leader.cluster
    return { node = { overlay_ip = slice.ip, overlay_ip6 = slice.ip6, slice = slice.slice, slice6 = slice.slice6 },
             cluster = { cidr4 = c.cidr4, cidr6 = c.cidr6, zone = c.zone, dns_forward = c.dns_forward, stun = c.stun,
                         turn = c.turn, nat = c.nat, leader = { control_public = c.leader.control_public } },
             leader = reg:get("leader") }
  end
  local ctx = { tokens = lead.tokens, control_private = core.key_from_base64(lead.control_private),
                cache = joinproto.replay_cache.new(16), admit = admit }
  local udp = uv.new_udp()
  assert(udp:bind("127.0.0.1", lport))
  udp:recv_start(function(_, data, addr)
    if not data or not addr then return end
    local reply = joinproto.handle(ctx, data)
    if reply then udp:send(reply, addr.ip, addr.port, function() end) end
  end)
  local member, err = cluster.join({ state = A, token = tok, endpoint = "127.0.0.1:" .. aport, name = "a",
                                     timeout = 10 })
  udp:close()
  uv.run("nowait")
  assert(member, err)
  -- a join nobody answers leaves the joiner's identity behind
  local B = dir .. "/b"
  assert.is_nil(cluster.join({ state = B, token = tok, endpoint = "127.0.0.1:" .. free_udp_port(), name = "b",
                               timeout = 1 }))
  -- what the leader daemon saves after admitting, publishing candidates
  -- and attaching a container
  local _, punch = core.x25519_keypair()
  local cand = assert(candidates.new("host", "127.0.0.1:" .. lport))
  assert(reg:update("leader", { candidates = candidates.publish(core.key_to_base64(punch), "none", { cand }),
                                containers = { { name = "web", ip = "10.200.0.2", ip6 = "fd00:200::2" } } }))
  lead.allocator, lead.registry = alloc:export(), reg:export()
  assert(state.save(lp.leader, lead))
  assert(state.save(lp.containers, { attached = { ["/run/netns/web"] = { name = "web", ip = "10.200.0.2",
                                                                          ip6 = "fd00:200::2" } } }))
  local ap = cluster.paths(A)
  local view = assert(membership.member.new({ self_name = "a" }))
  assert(view:apply(reg:snapshot()))
  assert(state.save(ap.members .. ".daemon", view:export()))
  assert(state.save(ap.containers, { attached = {} }))
  return lp, ap, B .. "/" .. cluster.JOIN_PENDING
end

describe("state schemas", function()
  local dir, lp, ap, pending

  setup(function()
    dir = assert(uv.fs_mkdtemp("/tmp/wgo-schema-spec-XXXXXX"))
    lp, ap, pending = make_cluster(dir)
  end)

  teardown(function()
    os.execute("rm -rf '" .. dir .. "'")
  end)

  local function good(path) return assert(state.load(path)) end

  describe("accept what our code writes", function()
    it("node.json of the leader (init) and of a member (join)", function()
      assert.same(good(lp.node), assert(state.load_checked(lp.node, "node")))
      local n = assert(state.load_checked(ap.node, "node"))
      assert.equal("member", n.role)
      assert.is_string(n.cluster.leader.control_public)
    end)

    it("leader.json after init, a token and a join", function()
      local node = good(lp.node)
      local lead = assert(state.load_checked(lp.leader, "leader", { node = node }))
      assert.is_not_nil(lead.registry.members.a)
      assert.is_true(schema.check("leader", lead))
    end)

    it("members.json as join and as the member daemon write it", function()
      local node = good(ap.node)
      assert(state.load_checked(ap.members, "members", { node = node }))
      assert(state.load_checked(ap.members .. ".daemon", "members", { node = node }))
    end)

    it("join-pending.json of an unanswered join", function()
      local p = assert(state.load_checked(pending, "join_pending"))
      assert.equal("b", p.name)
    end)

    it("containers.json with and without containers", function()
      assert(state.load_checked(lp.containers, "containers", { node = good(lp.node) }))
      assert(state.load_checked(ap.containers, "containers", { node = good(ap.node) }))
    end)
  end)

  describe("refuse damage", function()
    -- { file kind, which node, description, mutation, field, message pattern }
    local cases = {
      { "node", "L", "missing leader", function(d) d.cluster.leader = nil end,
        "cluster.leader", "missing %(required%)" },
      { "node", "A", "missing self", function(d) d.self = nil end, "self", "missing" },
      { "node", "L", "port as a string", function(d) d.self.listen_port = "51820" end,
        "self.listen_port", "expected an integer port 1%-65535, got string" },
      { "node", "L", "port out of range", function(d) d.self.listen_port = 70000 end,
        "self.listen_port", "got 70000" },
      { "node", "A", "bad address", function(d) d.self.overlay_ip = "10.200.0.300" end,
        "self.overlay_ip", "expected an IPv4 address, got an invalid string" },
      { "node", "A", "IPv6 address as IPv4", function(d) d.cluster.leader.overlay_ip = "fd00:200::1" end,
        "cluster.leader.overlay_ip", "IPv4 address" },
      { "node", "L", "bad CIDR", function(d) d.cluster.cidr4 = "10.200.0.0/33" end,
        "cluster.cidr4", "expected an IPv4 CIDR" },
      { "node", "L", "CIDR with host bits", function(d) d.self.slice = "10.200.0.1/28" end,
        "self.slice", "CIDR" },
      { "node", "A", "slice outside the cluster", function(d) d.self.slice = "10.99.0.16/28" end,
        "self.slice", "inside 10.200.0.0/16" },
      { "node", "A", "IPv6 slice outside the cluster", function(d) d.self.slice6 = "fd00:999:0:1::/64" end,
        "self.slice6", "inside fd00:200::/48" },
      { "node", "A", "address outside its slice", function(d) d.self.overlay_ip = "10.200.0.99" end,
        "self.overlay_ip", "inside 10.200.0.16/28" },
      { "node", "L", "unknown role", function(d) d.role = "boss" end, "role", "one of \"leader\", \"member\"" },
      { "node", "L", "bad public key", function(d) d.public_key = "abc" end, "public_key", "44 characters" },
      { "node", "L", "key with spare bits set", function(d) d.private_key = d.private_key:sub(1, 42) .. "B=" end,
        "private_key", "got an invalid string" },
      { "node", "A", "bad leader key", function(d) d.cluster.leader.public_key = 42 end,
        "cluster.leader.public_key", "got integer" },
      { "node", "L", "name not a DNS label", function(d) d.name = "Leader_1" end, "name", "DNS label" },
      { "node", "A", "endpoint without a port", function(d) d.self.endpoint = "127.0.0.1" end,
        "self.endpoint", "IP:PORT" },
      { "node", "A", "leader endpoint port 0", function(d) d.cluster.leader.endpoint = "[fd00::1]:0" end,
        "cluster.leader.endpoint", "IP:PORT" },
      { "node", "L", "STUN list not a list", function(d) d.cluster.stun = "127.0.0.1:3478" end,
        "cluster.stun", "expected an array, got string" },
      { "node", "L", "bad STUN server", function(d) d.cluster.stun = { "127.0.0.1:3478", "stun.example:3478" } end,
        "cluster.stun[2]", "IP:PORT" },
      { "node", "L", "unknown NAT setting", function(d) d.cluster.nat = { bogus = 3 } end,
        "cluster.nat", "bad key: expected a NAT setting name" },
      { "node", "L", "negative NAT setting", function(d) d.cluster.nat = { dead_after = -1 } end,
        "cluster.nat.dead_after", "positive" },
      { "node", "L", "null where an object belongs", function(d) d.cluster = require("cjson").null end,
        "cluster", "expected an object, got null" },
      { "node", "L", "bad zone", function(d) d.cluster.zone = "a..b" end, "cluster.zone", "zone" },
      { "node", "L", "interface name too long", function(d) d.ifname = "wgo0123456789abc" end, "ifname", "15" },
      { "leader", "L", "members not a map", function(d) d.registry.members = "everyone" end,
        "registry.members", "expected an object, got string" },
      { "leader", "L", "members as a list", function(d)
          d.registry.members = { d.registry.members.leader, d.registry.members.a } end,
        "registry.members", "expected an object, got array" },
      { "leader", "L", "member slice outside the cluster", function(d) d.registry.members.a.slice = "10.99.0.16/28" end,
        "registry.members.a.slice", "inside 10.200.0.0/16" },
      { "leader", "L", "member filed under another name", function(d)
          d.registry.members.b, d.registry.members.a = d.registry.members.a, nil end,
        "registry.members.b.name", "record's key" },
      { "leader", "L", "two members with one key", function(d)
          d.registry.members.a.public_key = d.registry.members.leader.public_key end,
        "registry.members.leader.public_key", "unique" },
      { "leader", "L", "bad container address", function(d)
          d.registry.members.leader.containers[1].ip = "10.200.0.99" end,
        "registry.members.leader.containers[1].ip", "inside 10.200.0.0/28" },
      { "leader", "L", "bad candidate", function(d) d.registry.members.leader.candidates.list[1].type = "magic" end,
        "registry.members.leader.candidates.list[1].type", "one of" },
      { "leader", "L", "bad control key", function(d) d.control_private = "x" end, "control_private", "key" },
      { "leader", "L", "tokens not a map", function(d) d.tokens = 7 end, "tokens", "expected an object, got integer" },
      { "leader", "L", "bad token hash", function(d)
          local _, t = next(d.tokens)
          t.hash = "00" end, "tokens%.[0-9a-f]+%.hash", "64 hex digits" },
      { "leader", "L", "allocator counters", function(d) d.allocator.lo = 9 end,
        "allocator", "consistent allocator state" },
      { "leader", "L", "allocator of another cluster", function(d) d.allocator.config.cidr4 = "10.201.0.0/16" end,
        "allocator.config.cidr4", "cluster's 10.200.0.0/16" },
      { "leader", "L", "missing registry", function(d) d.registry = nil end, "registry", "missing" },
      { "members", "A", "members not a list", function(d) d.members = "a" end,
        "members", "expected an array, got string" },
      { "members", "A", "members as an object", function(d) d.members = { leader = d.members[1] } end,
        "members", "expected an array, got object" },
      { "members", "A", "member without a key", function(d) d.members[1].public_key = nil end,
        "members[1].public_key", "missing" },
      { "members", "A", "version as a string", function(d) d.version = "0" end, "version", "got string" },
      { "join_pending", "P", "bad private key", function(d) d.private_key = d.private_key:sub(2) end,
        "private_key", "key" },
      { "join_pending", "P", "missing name", function(d) d.name = nil end, "name", "missing" },
      { "containers", "L", "attached not an object", function(d) d.attached = "web" end,
        "attached", "expected an object, got string" },
      { "containers", "L", "attached as a list", function(d) d.attached = { { name = "web", ip = "10.200.0.2" } } end,
        "attached", "expected an object, got array" },
      { "containers", "L", "container outside the slice", function(d)
          d.attached["/run/netns/web"].ip = "10.200.0.40" end,
        'attached["/run/netns/web"].ip', "this node's slice" },
      { "containers", "L", "container name", function(d) d.attached["/run/netns/web"].name = "Web Site" end,
        'attached["/run/netns/web"].name', "DNS label" },
    }

    for _, c in ipairs(cases) do
      local kind, who, what, mutate, field, pattern = table.unpack(c)
      it(kind .. ".json: " .. what, function()
        local p = who == "L" and lp or who == "A" and ap or { node = lp.node, join_pending = pending }
        local node = good(p.node)
        local path = dir .. "/damaged-" .. kind .. ".json"
        local data = deep_copy(kind == "node" and node or good(p[kind]))
        mutate(data)
        assert(state.save(path, data))
        local before = assert(io.open(path)):read("a")
        local ok, err, ekind = state.load_checked(path, kind, { node = node })
        assert.is_nil(ok)
        assert.equal("invalid", ekind)
        -- one line: the file, then the field path, then what is wrong
        local prefix = path .. ": field \""
        assert.equal(prefix, err:sub(1, #prefix), err)
        local quoted = "field \"" .. field .. "\": "
        if field:find("%", 1, true) then
          assert(err:sub(#path + 3):find("^" .. quoted), err)
        else
          assert.equal(quoted, err:sub(#path + 3, #path + 2 + #quoted), err)
        end
        assert(err:find(pattern), err)
        assert.is_nil(err:find("\n", 1, true))
        assert.is_nil(err:find(node.private_key, 1, true), "the message quotes the private key")
        assert.equal(before, assert(io.open(path)):read("a"))
      end)
    end

    it("never quotes a bad string (a damaged key stays out of the message)", function()
      local node = good(lp.node)
      local secret = node.private_key:sub(1, 40) .. "!!!="
      node.private_key = secret
      local ok, err = schema.check("node", node)
      assert.is_nil(ok)
      assert.is_nil(err:find(secret, 1, true))
      assert.is_nil(err:find(node.private_key:sub(1, 20), 1, true))
    end)

    it("checks files alone when the node is not known", function()
      local lead = good(lp.leader)
      -- outside the cluster: cannot be told without node.json
      lead.registry.members.a.slice, lead.registry.members.a.overlay_ip = "10.99.0.16/28", "10.99.0.17"
      assert.is_true(schema.check("leader", lead))
      assert.is_nil(schema.check("leader", lead, { node = good(lp.node) }))
      lead.registry.members.a.overlay_ip = "10.99.0.99" -- outside its own slice
      local ok, err = schema.check("leader", lead)
      assert.is_nil(ok)
      assert.equal('field "registry.members.a.overlay_ip": expected an address inside 10.99.0.16/28', err)
    end)

    it("raises on an unknown kind (a programming error)", function()
      assert.has_error(function() schema.check("nodes", {}) end)
    end)
  end)

  -- Random damage: whatever the schema lets through must not make the
  -- objects built from the files raise.
  describe("objects built from accepted files", function()
    local junk = { "", "x", "10.200.0.1", "10.200.0.0/16", 0, -1, 1.5, 70000, true, {}, { 1, 2 }, { x = 1 },
                   "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" }

    -- Paths to every value of a table (containers included).
    local function paths(t, prefix, out)
      out = out or {}
      for k, v in pairs(t) do
        local p = { table.unpack(prefix) }
        p[#p + 1] = k
        out[#out + 1] = p
        if type(v) == "table" then paths(v, p, out) end
      end
      return out
    end

    local function damage(data)
      local all = paths(data, {})
      for _ = 1, math.random(1, 3) do
        local p = all[math.random(#all)]
        local t = data
        for i = 1, #p - 1 do t = type(t) == "table" and t[p[i]] or nil end
        if type(t) == "table" then
          local r = math.random(#junk + 1)
          t[p[#p]] = r <= #junk and deep_copy(junk[r]) or nil
        end
      end
      return data
    end

    it("allocator.import, membership.leader.new and member.new never raise", function()
      math.randomseed(13)
      local nodes = { L = good(lp.node), A = good(ap.node) }
      local files = { leader = good(lp.leader), members = good(ap.members .. ".daemon"),
                      members_join = good(ap.members) }
      local accepted = 0
      for _ = 1, 3000 do
        local which = ({ "leader", "members", "members_join" })[math.random(3)]
        local node = which == "leader" and nodes.L or nodes.A
        local d = damage(deep_copy(files[which]))
        if schema.check(which == "leader" and "leader" or "members", d, { node = node }) then
          accepted = accepted + 1
          local ok, err = pcall(function()
            if which == "leader" then
              assert(allocator.import(d.allocator))
              assert(membership.leader.new({ name = node.name, members = d.registry.members,
                                             version = d.registry.version, epoch = d.registry.epoch }))
            else
              assert(membership.member.new({ self_name = node.name, members = d.members, version = d.version,
                                             epoch = d.epoch }))
            end
          end)
          assert(ok, err)
        end
      end
      assert.is_true(accepted > 50, "too few mutants accepted to mean anything: " .. accepted)
    end)

    it("node.json: what passes has every field the daemon reads, of the right type", function()
      math.randomseed(14)
      for _ = 1, 2000 do
        local src = math.random(2) == 1 and good(lp.node) or good(ap.node)
        local n = damage(src)
        if schema.check("node", n) then
          assert.is_string(n.private_key)
          assert.equal("integer", math.type(n.self.listen_port))
          assert.is_string(n.self.overlay_ip .. n.self.overlay_ip6 .. n.cluster.cidr4 .. n.cluster.cidr6)
          assert.is_string(n.cluster.leader.endpoint .. n.cluster.leader.public_key .. n.cluster.leader.overlay_ip)
          assert.is_truthy(n.role == "leader" or n.role == "member")
        end
      end
    end)
  end)
  describe("check_member (what the leader stores from a member)", function()
    local node = { cluster = { cidr4 = "10.200.0.0/16", cidr6 = "fd00:200::/48" } }
    local r = { name = "a", public_key = "jHlumK3PAXLFbNxx3EyaHSKs1cHOOArHzBsIjfolpGc=", endpoint = "192.0.2.2:51820",
                overlay_ip = "10.200.0.17", overlay_ip6 = "fd00:200:0:1::1", slice = "10.200.0.16/28",
                slice6 = "fd00:200:0:1::/64", containers = {} }
    local function with(c) return setmetatable({ containers = c }, { __index = r }) end

    it("accepts containers inside the member's slice", function()
      assert.is_true(schema.check_member(with({ { name = "web", ip = "10.200.0.18", ip6 = "fd00:200:0:1::2" } }),
                                         { node = node }))
    end)

    it("refuses a bad name or an address outside the slice, naming the field", function()
      local ok, err = schema.check_member(with({ { name = "Bad Name", ip = "10.200.0.18" } }), { node = node })
      assert.is_nil(ok)
      assert.matches('field "containers%[1%]%.name"', err)
      ok, err = schema.check_member(with({ { name = "web", ip = "10.200.0.99" } }), { node = node })
      assert.is_nil(ok)
      assert.matches('field "containers%[1%]%.ip": expected an address inside 10.200.0.16/28', err)
    end)
  end)
end)
