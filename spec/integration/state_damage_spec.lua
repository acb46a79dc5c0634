-- Damaged state files are refused (issue 13, item 4: validated state).
-- A real cluster state is made with the real CLI (init, token, join, run,
-- attach) in network namespaces; both daemons are then stopped, and for
-- each damage the damaged file is written, `bin/wgoverlay run` (and for
-- leader.json also `token`) must exit non-zero with one message naming the
-- file and the field, never a Lua traceback or location, must leave the
-- file's bytes alone and must leave no interface behind.  The good file is
-- put back after each case; at the end both daemons start again from the
-- restored files.  Needs root.
--
--   hub bridge: leader 192.0.2.1, a 192.0.2.2; one container on each.

local helpers = require "spec.helpers"
local fixture = require "spec.cluster_fixture"
local state = require "wgoverlay.state"

local quote = helpers.quote

describe("damaged state files are refused #netns", function()
  local cl, L, A

  lazy_setup(function()
    cl = fixture.new()
    L = cl:leader("leader", "192.0.2.1")
    A = cl:node("a", "192.0.2.2")
    local tok = cl:token(L, 1)
    cl:start(L)
    cl:join(A, tok)
    cl:start(A)
    -- containers.json on both, members.json rewritten by the member's daemon
    cl:attach("L", L, "admin")
    cl:attach("A", A, "front")
    cl:wait_health(A, { "leader" }, true, 30)
    assert(helpers.wait_until(function()
      local m = state.load(A.dir .. "/members.json")
      return m and m.version > 0 and #m.members == 2
    end, 15, 0.1), "the member's daemon did not write members.json")
    cl:stop(A)
    cl:stop(L)
  end)

  teardown(function() if cl then cl:teardown() end end)

  local function links(ns)
    local names = {}
    for name in ns:must("ip -o link show"):gmatch("%d+: ([^:@]+)") do names[#names + 1] = name end
    table.sort(names)
    return table.concat(names, " ")
  end

  -- Writes `file` of `node` damaged by `mutate`, runs each of `args`
  -- (default: run) and checks the refusal (naming `field`, never quoting
  -- `secret`); the good file is put back whatever happens.
  local function refused(node, file, mutate, field, args, secret)
    local path = node.dir .. "/" .. file
    local good = assert(helpers.read_file(path), path)
    local data = assert(state.load(path))
    mutate(data)
    local bad = assert(state.encode(data))
    helpers.write_file(path, bad, "600")
    local before = links(node.ns)
    local ok, err = pcall(function()
      for _, a in ipairs(args or { "run" }) do
        local code, out, stderr = cl:cli(node.ns, a .. " --state " .. quote(node.dir))
        local what = ("wgoverlay %s, %s damaged (%s): exit %s\nstdout: %s\nstderr: %s"):format(
          a, file, field, tostring(code), out, stderr)
        assert.is_not.equal(0, code, what)
        assert.is_truthy(stderr:find(path .. ": field \"" .. field .. "\": expected ", 1, true)
                         or stderr:find(path .. ": field \"" .. field .. "\": missing", 1, true), what)
        assert.equal(1, select(2, stderr:gsub("\n", "\n")), "one line: " .. what)
        assert.is_nil(stderr:lower():find("traceback", 1, true), what)
        assert.is_nil(stderr:find(".lua:", 1, true), what)
        if secret then assert.is_nil(stderr:find(secret, 1, true), "the message quotes a secret") end
        assert.equal(bad, helpers.read_file(path), file .. " was modified by " .. a)
        assert.equal("600", helpers.file_mode(path))
        assert.equal(before, links(node.ns), "an interface was left behind by " .. a)
        assert.is_nil(helpers.read_file(node.dir .. "/control.sock"))
      end
    end)
    helpers.write_file(path, good, "600")
    assert(ok, err)
  end

  it("node.json without cluster.leader", helpers.guard(function()
    refused(L, "node.json", function(d) d.cluster.leader = nil end, "cluster.leader", { "run", "token" })
    refused(A, "node.json", function(d) d.cluster.leader = nil end, "cluster.leader")
  end))

  it("node.json without self", helpers.guard(function()
    refused(A, "node.json", function(d) d.self = nil end, "self")
  end))

  it("node.json with the port as a string", helpers.guard(function()
    refused(L, "node.json", function(d) d.self.listen_port = tostring(d.self.listen_port) end, "self.listen_port")
    refused(A, "node.json", function(d) d.self.listen_port = 0 end, "self.listen_port")
  end))

  it("node.json with a bad address", helpers.guard(function()
    refused(A, "node.json", function(d) d.self.overlay_ip = "10.200.0.300" end, "self.overlay_ip")
    refused(A, "node.json", function(d) d.cluster.leader.overlay_ip = "leader" end, "cluster.leader.overlay_ip")
    refused(L, "node.json", function(d) d.self.slice = "10.201.0.0/28" end, "self.slice")
  end))

  it("node.json with an unknown role", helpers.guard(function()
    refused(L, "node.json", function(d) d.role = "boss" end, "role", { "run", "token" })
  end))

  it("node.json with a bad key (the message does not quote it)", helpers.guard(function()
    local priv = assert(state.load(L.dir .. "/node.json")).private_key
    refused(L, "node.json", function(d) d.private_key = d.private_key:sub(1, 43) end, "private_key", nil,
            priv:sub(1, 43))
  end))

  it("the registry (leader.json) with members not a map", helpers.guard(function()
    refused(L, "leader.json", function(d) d.registry.members = "everyone" end, "registry.members",
            { "run", "token" })
    refused(L, "leader.json", function(d)
      local list = {}
      for _, r in pairs(d.registry.members) do list[#list + 1] = r end
      d.registry.members = list
    end, "registry.members")
  end))

  it("members.json with members not a list", helpers.guard(function()
    refused(A, "members.json", function(d) d.members = { leader = d.members[1] } end, "members")
    refused(A, "members.json", function(d) d.members = 2 end, "members")
  end))

  it("containers.json with attached not an object", helpers.guard(function()
    refused(L, "containers.json", function(d) d.attached = "admin" end, "attached")
    refused(A, "containers.json", function(d)
      local list = {}
      for _, c in pairs(d.attached) do list[#list + 1] = c end
      d.attached = list
    end, "attached")
  end))

  it("the restored files are accepted: both daemons run again", helpers.guard(function()
    cl:start(L)
    cl:start(A)
    cl:wait_health(A, { "leader" }, true, 30)
    cl:wait_health(L, { "a" }, true, 30)
    cl:stop(A)
    cl:stop(L)
  end))
end)
