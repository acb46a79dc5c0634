-- Address allocation (wgoverlay.allocator, pure): per-node slices,
-- container addresses, flat addresses, release and reuse, exhaustion,
-- export/import through JSON, and scale.

local allocator = require "wgoverlay.allocator"
local cjson = require "cjson"

local function json_round_trip(t)
  return cjson.decode(cjson.encode(t))
end

-- Every value of a node_slice / container / flat answer, for comparisons.
local function addrs(t)
  return { t.ip, t.ip6 }
end

describe("allocator", function()
  describe("configuration", function()
    it("uses the documented defaults", function()
      local a = assert(allocator.new())
      assert.same({ cidr4 = "10.200.0.0/16", slice4 = 28, cidr6 = "fd00:200::/48", slice6 = 64 },
        a:config())
      assert.equal(4096, a:stats().slices)
    end)

    it("normalises host bits in the prefixes", function()
      local a = assert(allocator.new({ cidr4 = "10.200.5.5/16", cidr6 = "fd00:200::7/48" }))
      assert.equal("10.200.0.0/16", a:config().cidr4)
      assert.equal("10.200.0.0/28", a:node_slice("n").slice)
      assert.equal("fd00:200::/64", a:node_slice("n").slice6)
    end)

    local bad = {
      { { slice4 = 31 }, "slice4 must be an integer in 17..30" },
      { { slice4 = 16 }, "slice4 must be an integer" },
      { { slice4 = 28.5 }, "slice4 must be an integer" },
      { { cidr4 = "fd00::/48" }, "is not an IPv4 prefix" },
      { { cidr4 = "10.200.0.0/33" }, "invalid" },
      { { cidr4 = "nonsense" }, "invalid" },
      { { cidr6 = "10.0.0.0/8" }, "is not an IPv6 prefix" },
      { { slice6 = 48 }, "slice6 must be an integer in 49..124" },
      { { slice6 = 125 }, "slice6 must be an integer in 49..124" },
      { { colour = "blue" }, "unknown allocator option" },
    }
    for _, c in ipairs(bad) do
      it("refuses " .. cjson.encode(c[1]), function()
        local a, err = allocator.new(c[1])
        assert.is_nil(a)
        assert.matches(c[2], err)
      end)
    end

    it("raises on ids that are not non-empty strings", function()
      local a = assert(allocator.new())
      assert.has_error(function() a:node_slice(1) end)
      assert.has_error(function() a:node_slice("") end)
      assert.has_error(function() a:container_addr("n", nil) end)
      assert.has_error(function() a:flat({}) end)
    end)
  end)

  describe("node slices", function()
    it("gives the first node the first slice and its first host", function()
      local a = assert(allocator.new())
      assert.same({ index = 0, slice = "10.200.0.0/28", ip = "10.200.0.1",
        slice6 = "fd00:200::/64", ip6 = "fd00:200::1" }, a:node_slice("leader"))
      assert.same({ index = 1, slice = "10.200.0.16/28", ip = "10.200.0.17",
        slice6 = "fd00:200:0:1::/64", ip6 = "fd00:200:0:1::1" }, a:node_slice("n2"))
      assert.same({ index = 16, slice = "10.200.1.0/28", ip = "10.200.1.1",
        slice6 = "fd00:200:0:10::/64", ip6 = "fd00:200:0:10::1" },
        (function() for i = 3, 16 do a:node_slice("n" .. i) end return a:node_slice("n17") end)())
    end)

    it("is idempotent per node id and lookup never allocates", function()
      local a = assert(allocator.new())
      assert.is_nil(a:lookup("x"))
      local first = a:node_slice("x")
      a:node_slice("y")
      assert.same(first, a:node_slice("x"))
      assert.same(first, a:lookup("x"))
      assert.equal(2, a:stats().nodes)
    end)

    it("returns copies the caller may modify", function()
      local a = assert(allocator.new())
      local s = a:node_slice("x")
      s.ip = "mangled"
      assert.equal("10.200.0.1", a:node_slice("x").ip)
    end)

    it("hands out fresh slices before released ones, then the oldest released first", function()
      local a = assert(allocator.new({ cidr4 = "10.9.0.0/26", slice4 = 28 })) -- 4 slices
      for _, n in ipairs({ "a", "b", "c" }) do a:node_slice(n) end
      assert.is_true(a:release_node("b"))
      assert.is_false(a:release_node("b"))
      assert.is_false(a:release_node("never"))
      assert.is_true(a:release_node("a"))
      assert.equal("10.9.0.48/28", a:node_slice("d").slice) -- fresh first
      assert.equal("10.9.0.16/28", a:node_slice("e").slice) -- b's, released first
      assert.equal("10.9.0.0/28", a:node_slice("f").slice)  -- then a's
      local none, err = a:node_slice("g")
      assert.is_nil(none)
      assert.equal("cluster 10.9.0.0/26 has no free /28 slice", err)
    end)

    it("exhausts the default cluster after 4096 nodes with the documented message", function()
      local a = assert(allocator.new())
      local seen = {}
      for i = 1, 4096 do
        local s = assert(a:node_slice("node-" .. i))
        assert.is_nil(seen[s.slice])
        seen[s.slice] = true
      end
      assert.same({ index = 4095, slice = "10.200.255.240/28", ip = "10.200.255.241",
        slice6 = "fd00:200:0:fff::/64", ip6 = "fd00:200:0:fff::1" }, a:lookup("node-4096"))
      local none, err = a:node_slice("one-too-many")
      assert.is_nil(none)
      assert.equal("cluster 10.200.0.0/16 has no free /28 slice", err)
      assert.same(a:lookup("node-7"), a:node_slice("node-7")) -- existing ids still answer
    end)

    it("is limited by the smaller of the two families", function()
      local a = assert(allocator.new({ cidr4 = "10.0.0.0/8", slice4 = 24, cidr6 = "fd00:1:2::/56", slice6 = 64 }))
      assert.equal(256, a:stats().slices)
      for i = 1, 256 do assert(a:node_slice("n" .. i)) end
      assert.equal("fd00:1:2:ff::1", a:lookup("n256").ip6)
      assert.is_nil(a:node_slice("n257"))
    end)

    it("works IPv4-only with cidr6 = false", function()
      local a = assert(allocator.new({ cidr6 = false }))
      local s = a:node_slice("n")
      assert.equal("10.200.0.1", s.ip)
      assert.is_nil(s.ip6)
      assert.is_nil(s.slice6)
      assert.is_nil(a:container_addr("n", "c").ip6)
      assert.is_false(a:config().cidr6)
    end)

    it("computes IPv6 slices across 64-bit boundaries", function()
      local a = assert(allocator.new({ cidr4 = "10.0.0.0/8", slice4 = 30, cidr6 = "fd00:0:0:ffff:ffff:ffff:ffff:0/112",
        slice6 = 126 }))
      assert.equal("fd00::ffff:ffff:ffff:ffff:0/126", a:node_slice("a").slice6)
      assert.equal("fd00::ffff:ffff:ffff:ffff:5", a:node_slice("b").ip6)
    end)
  end)

  describe("container addresses", function()
    it("follow the node address in both families, same offset", function()
      local a = assert(allocator.new())
      a:node_slice("n1")
      assert.same({ ip = "10.200.0.2", ip6 = "fd00:200::2" }, a:container_addr("n1", "web"))
      assert.same({ ip = "10.200.0.3", ip6 = "fd00:200::3" }, a:container_addr("n1", "db"))
      assert.same({ ip = "10.200.0.2", ip6 = "fd00:200::2" }, a:container_addr("n1", "web"))
    end)

    it("never hand out the network, node or broadcast address; 13 fit in a /28", function()
      local a = assert(allocator.new())
      a:node_slice("n0")
      a:node_slice("n1") -- 10.200.0.16/28
      local got = {}
      for i = 1, 13 do
        local c = assert(a:container_addr("n1", "c" .. i))
        local last = tonumber(c.ip:match("%.(%d+)$"))
        assert.is_true(last >= 18 and last <= 30, c.ip)
        assert.is_nil(got[c.ip])
        got[c.ip] = true
      end
      local none, err = a:container_addr("n1", "c14")
      assert.is_nil(none)
      assert.equal("slice 10.200.0.16/28 of node n1 has no free address", err)
    end)

    it("reuse released addresses oldest first, after the fresh ones", function()
      local a = assert(allocator.new({ slice4 = 29 })) -- offsets 2..6
      a:node_slice("n")
      for i = 1, 3 do a:container_addr("n", "c" .. i) end -- .2 .3 .4
      assert.is_true(a:release_container("n", "c2"))
      assert.is_false(a:release_container("n", "c2"))
      assert.is_true(a:release_container("n", "c1"))
      assert.equal("10.200.0.5", a:container_addr("n", "d1").ip)
      assert.equal("10.200.0.6", a:container_addr("n", "d2").ip)
      assert.equal("10.200.0.3", a:container_addr("n", "d3").ip)
      assert.equal("10.200.0.2", a:container_addr("n", "d4").ip)
      assert.is_nil(a:container_addr("n", "d5"))
    end)

    it("need a node slice and vanish with the node", function()
      local a = assert(allocator.new())
      local none, err = a:container_addr("ghost", "c")
      assert.is_nil(none)
      assert.equal("node ghost has no slice", err)
      assert.is_false(a:release_container("ghost", "c"))
      a:node_slice("n")
      a:container_addr("n", "c")
      a:release_node("n")
      assert.is_nil(a:owner_of("10.200.0.2"))
      a:node_slice("m") -- takes a fresh slice; n's comes back later
      assert.equal("10.200.0.18", a:container_addr("m", "c").ip)
    end)

    it("use the whole slice with larger slices", function()
      local a = assert(allocator.new({ slice4 = 24 }))
      a:node_slice("n")
      for i = 2, 254 do assert.equal("10.200.0." .. i, a:container_addr("n", "c" .. i).ip) end
      assert.is_nil(a:container_addr("n", "full"))
    end)
  end)

  describe("flat addresses", function()
    it("come from the top of the cluster, outside node slices", function()
      local a = assert(allocator.new())
      a:node_slice("n")
      assert.same({ ip = "10.200.255.241", ip6 = "fd00:200:0:fff::1" }, a:flat("svc-1"))
      assert.same({ ip = "10.200.255.242", ip6 = "fd00:200:0:fff::2" }, a:flat("svc-2"))
      assert.same({ ip = "10.200.255.241", ip6 = "fd00:200:0:fff::1" }, a:flat("svc-1"))
      assert.equal(1, a:stats().flat_blocks)
      assert.equal(4094, a:stats().free_slices)
    end)

    it("skip the block's first and last address and open a new block when full", function()
      local a = assert(allocator.new())
      for i = 1, 14 do
        local ip = a:flat("f" .. i).ip
        assert.are_not.equal("10.200.255.240", ip)
        assert.are_not.equal("10.200.255.255", ip)
      end
      assert.equal("10.200.255.225", a:flat("f15").ip)
      assert.equal(2, a:stats().flat_blocks)
    end)

    it("reuse released addresses before opening a new block", function()
      local a = assert(allocator.new())
      a:flat("a")
      a:flat("b")
      assert.is_true(a:release_flat("a"))
      assert.is_false(a:release_flat("a"))
      assert.equal("10.200.255.243", a:flat("c").ip)
      -- a free flat address is reused before a new block is opened
      for i = 1, 11 do a:flat("x" .. i) end -- fills .244 .. .254
      assert.equal("10.200.255.241", a:flat("d").ip)
      assert.equal("10.200.255.225", a:flat("e").ip)
    end)

    it("share the slice space with nodes until both meet", function()
      local a = assert(allocator.new({ cidr4 = "10.9.0.0/26", slice4 = 28 })) -- 4 slices
      a:node_slice("n1")
      a:node_slice("n2")
      for i = 1, 28 do assert(a:flat("f" .. i)) end -- two blocks of 14
      local none, err = a:flat("f29")
      assert.is_nil(none)
      assert.equal("cluster 10.9.0.0/26 has no free address", err)
      assert.is_nil(a:node_slice("n3"))
      a:release_node("n1")
      assert.equal("10.9.0.1", a:flat("f29").ip) -- a released node slice becomes a flat block
    end)
  end)

  describe("owner_of", function()
    it("tells nodes, containers and flat addresses apart", function()
      local a = assert(allocator.new())
      a:node_slice("n1")
      a:container_addr("n1", "web")
      a:flat("vip")
      assert.same({ "node", "n1" }, { a:owner_of("10.200.0.1") })
      assert.same({ "container", "n1", "web" }, { a:owner_of("10.200.0.2") })
      assert.same({ "flat", "vip" }, { a:owner_of("10.200.255.241") })
      assert.is_nil(a:owner_of("10.200.0.3"))
      assert.is_nil(a:owner_of("10.200.0.0"))
      assert.is_nil(a:owner_of("10.201.0.1"))
      assert.is_nil(a:owner_of("fd00:200::1"))
      assert.is_nil(a:owner_of("junk"))
    end)
  end)

  describe("export and import", function()
    local function populated()
      local a = assert(allocator.new())
      for i = 1, 20 do a:node_slice("n" .. i) end
      for i = 1, 5 do a:container_addr("n3", "c" .. i) end
      a:release_container("n3", "c2")
      a:release_node("n5")
      a:release_node("n9")
      for i = 1, 17 do a:flat("f" .. i) end
      a:release_flat("f4")
      return a
    end

    it("survive a JSON round trip and continue identically", function()
      local a = populated()
      local exported = a:export()
      local b = assert(allocator.import(json_round_trip(exported)))
      assert.same(exported, b:export())
      for i = 1, 20 do
        if i ~= 5 and i ~= 9 then assert.same(a:lookup("n" .. i), b:lookup("n" .. i)) end
      end
      assert.same(a:container_addr("n3", "c3"), b:container_addr("n3", "c3"))
      -- the same sequence of operations gives the same answers on both
      for _, alloc in ipairs({ a, b }) do
        alloc.trace = {}
        for i = 1, 4100 do
          local s = alloc:node_slice("m" .. i)
          alloc.trace[#alloc.trace + 1] = s and s.slice or "none"
        end
        for _, op in ipairs({ { "n3", "x" }, { "n3", "y" }, { "n3", "z" } }) do
          alloc.trace[#alloc.trace + 1] = addrs(alloc:container_addr(op[1], op[2]))
        end
        alloc.trace[#alloc.trace + 1] = addrs(alloc:flat("g1"))
        alloc.trace[#alloc.trace + 1] = addrs(alloc:flat("g2"))
      end
      assert.same(a.trace, b.trace)
    end)

    it("exports only JSON-safe plain data", function()
      local text = cjson.encode(populated():export())
      assert.is_string(text)
      assert.is_nil(text:find("function", 1, true))
    end)

    local mutations = {
      { "wrong version", function(t) t.version = 2 end, "version" },
      { "missing version", function(t) t.version = nil end, "version" },
      { "bad config", function(t) t.config.slice4 = 40 end, "slice4" },
      { "slice claimed twice", function(t) t.nodes.n2.index = t.nodes.n1.index end, "claimed twice" },
      { "slice outside the used range", function(t) t.nodes.n1.index = 2000 end, "unused range" },
      { "free slice also owned", function(t) t.free = { t.nodes.n1.index } end, "claimed twice" },
      { "counters too large", function(t) t.lo = 5000 end, "bad counters" },
      { "lost slice", function(t) t.nodes.n1 = nil end, "unaccounted" },
      { "container offset out of range", function(t) t.nodes.n3.containers.c1 = 15 end, "container" },
      { "container on the node address", function(t) t.nodes.n3.containers.c1 = 1 end, "container" },
      { "two containers, one address", function(t) t.nodes.n3.containers.c3 = t.nodes.n3.containers.c1 end,
        "container" },
      { "free container offset in use", function(t) t.nodes.n3.free = { t.nodes.n3.containers.c1 } end, "node n3" },
      { "flat id outside its blocks", function(t) t.flat.ids.f1 = 5 end, "flat" },
      { "flat block claimed by a node", function(t) t.flat.blocks[1] = t.nodes.n1.index end, "claimed twice" },
      { "node record not a table", function(t) t.nodes.n1 = "x" end, "bad node record" },
      { "not a table", function() return "x" end, "version" },
    }
    for _, m in ipairs(mutations) do
      it("refuse a state with " .. m[1], function()
        local t = json_round_trip(populated():export())
        t = m[2](t) or t
        local a, err = allocator.import(t)
        assert.is_nil(a)
        assert.matches(m[3], err)
      end)
    end

    it("never raise on randomly damaged state", function()
      math.randomseed(1234)
      local base = cjson.encode(populated():export())
      local values = { 0, -1, 1, 2, 15, 4095, 4096, 1e9, 0.5, "x", true, {}, cjson.null }
      local function mutate(t, depth)
        for k, v in pairs(t) do
          if math.random() < 0.08 then
            t[k] = values[math.random(#values)]
          elseif type(v) == "table" and depth < 6 then
            mutate(v, depth + 1)
          end
        end
      end
      local accepted = 0
      for _ = 1, 300 do
        local t = cjson.decode(base)
        mutate(t, 0)
        local ok, a = pcall(allocator.import, t)
        assert.is_true(ok, tostring(a))
        if a then
          accepted = accepted + 1
          assert(pcall(a.node_slice, a, "after-import"))
        end
      end
      assert.is_true(accepted < 300)
    end)
  end)

  describe("scale", function()
    it("allocates 4000 nodes with 3 containers each quickly and without collisions", function()
      local a = assert(allocator.new())
      local seen = {}
      local t0 = os.clock()
      for i = 1, 4000 do
        local s = assert(a:node_slice("node-" .. i))
        for _, ip in ipairs({ s.ip, s.ip6 }) do
          assert(not seen[ip], ip)
          seen[ip] = true
        end
        for c = 1, 3 do
          local ca = assert(a:container_addr("node-" .. i, "c" .. c))
          assert(not seen[ca.ip] and not seen[ca.ip6], ca.ip)
          seen[ca.ip], seen[ca.ip6] = true, true
        end
      end
      assert.is_true(os.clock() - t0 < 5)
    end)

    it("does not slow down as the cluster fills (no per-allocation scans)", function()
      local a = assert(allocator.new({ cidr4 = "10.0.0.0/14", slice4 = 30, cidr6 = false })) -- 65536 slices
      local next_id = 0
      local function batch()
        local t0 = os.clock()
        for _ = 1, 3000 do
          next_id = next_id + 1
          a:node_slice("n" .. next_id)
        end
        return os.clock() - t0
      end
      -- the fastest of three batches, to damp scheduling noise
      local function best() return math.min(batch(), batch(), batch()) end
      local first = best()
      while a:node_slice("fill" .. next_id) do next_id = next_id + 1 end -- full
      -- churn: half the slices are released; the next ones come from the queue
      for i = 1, 9000, 2 do a:release_node("n" .. i) end
      for i = 1, next_id, 2 do a:release_node("fill" .. i) end
      local last = best()
      assert.truthy(a:lookup("n" .. next_id)) -- the last batches were served from the queue
      -- a scan per allocation would make the late batches hundreds of times slower
      assert.is_true(last < first * 5 + 0.05, ("first %.3fs, last %.3fs"):format(first, last))
    end)
  end)
end)
