-- State files (wgoverlay.state): atomic 0600 writes, the versioned
-- wrapper, and clear errors for missing, truncated, corrupt and foreign
-- files that never quote file content and never touch the file.

local state = require "wgoverlay.state"
local uv = require "luv"
local cjson = require "cjson"

local SECRET = "c2VjcmV0LXByaXZhdGUta2V5LWRvLW5vdC1sZWFrLTAxMjM0NTY3ODk="

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

local function mode(path)
  return assert(uv.fs_stat(path)).mode & tonumber("777", 8)
end

local function listdir(dir)
  local names = {}
  local req = assert(uv.fs_scandir(dir))
  while true do
    local name = uv.fs_scandir_next(req)
    if not name then break end
    names[#names + 1] = name
  end
  table.sort(names)
  return names
end

describe("state", function()
  local dir

  before_each(function()
    dir = assert(uv.fs_mkdtemp("/tmp/wgo-state-spec-XXXXXX"))
  end)

  after_each(function()
    os.execute("rm -rf '" .. dir .. "'")
  end)

  describe("save and load", function()
    it("round-trips nested data with integers, strings and booleans", function()
      local data = {
        name = "node-a", role = "leader", private_key = SECRET, version = 7,
        ratio = 0.25, enabled = true, disabled = false,
        cluster = { cidr4 = "10.200.0.0/16", slice4 = 28, leader = { endpoint = "192.0.2.1:51820" } },
        members = { { name = "a", port = 1 }, { name = "b", port = 2 } },
      }
      local path = dir .. "/node.json"
      assert.is_true(state.save(path, data))
      local back = assert(state.load(path))
      assert.same(data, back)
      assert.equal("integer", math.type(back.version))
      assert.equal("integer", math.type(back.cluster.slice4))
      assert.equal("float", math.type(back.ratio))
    end)

    it("writes the versioned wrapper", function()
      local path = dir .. "/s.json"
      assert(state.save(path, { x = 1 }))
      local doc = cjson.decode(read(path))
      assert.equal("wgoverlay-state", doc.format)
      assert.equal(1, doc.version)
      assert.same({ x = 1 }, doc.data)
    end)

    it("creates the file with mode 0600 and leaves no temporary file", function()
      local path = dir .. "/node.json"
      assert(state.save(path, { private_key = SECRET }))
      assert.equal(tonumber("600", 8), mode(path))
      assert.same({ "node.json" }, listdir(dir))
    end)

    it("replaces an existing file (and tightens its mode to 0600)", function()
      local path = dir .. "/node.json"
      write(path, "old")
      os.execute("chmod 644 '" .. path .. "'")
      assert(state.save(path, { n = 1 }))
      assert(state.save(path, { n = 2 }))
      assert.same({ n = 2 }, state.load(path))
      assert.equal(tonumber("600", 8), mode(path))
      assert.same({ "node.json" }, listdir(dir))
    end)

    it("refuses data that JSON cannot hold and keeps the old file", function()
      local path = dir .. "/node.json"
      assert(state.save(path, { keep = true }))
      local before = read(path)
      for _, bad in ipairs({ { f = function() end }, { [1] = 1, [3] = 3, [100] = 1 },
        { x = 0 / 0 }, { x = math.huge } }) do
        local ok, err = state.save(path, bad)
        assert.is_nil(ok)
        assert.matches("not written", err)
      end
      assert.is_nil(state.save(path, "string"))
      assert.equal(before, read(path))
    end)

    it("reports a missing directory", function()
      local ok, err = state.save(dir .. "/nope/node.json", { a = 1 })
      assert.is_nil(ok)
      assert.matches("nope/node.json", err, 1, true)
    end)

    it("raises on a path that is not a string", function()
      assert.has_error(function() state.load(nil) end)
      assert.has_error(function() state.save(42, {}) end)
    end)
  end)

  describe("load errors", function()
    it("tells a missing file apart", function()
      local data, err, kind = state.load(dir .. "/absent.json")
      assert.is_nil(data)
      assert.matches("no such file", err)
      assert.equal("missing", kind)
    end)

    -- Each case: file content, expected kind, message pattern.
    local cases = {
      { "truncated", nil, "corrupt", "is corrupt: truncated JSON" },
      { "garbage", "{\"format\" = \"" .. SECRET .. "\"}", "corrupt", "is corrupt: invalid JSON" },
      { "empty", "", "corrupt", "empty file" },
      { "blank", "  \n", "corrupt", "empty file" },
      { "array at the top", "[\"" .. SECRET .. "\"]", "corrupt", "top level" },
      { "string at the top", "\"" .. SECRET .. "\"", "corrupt", "top level is a JSON string" },
      { "number at the top", "42", "corrupt", "top level is a JSON number" },
      { "null at the top", "null", "corrupt", "top level is a JSON null" },
      { "foreign object", "{\"private_key\":\"" .. SECRET .. "\"}", "foreign", "not a wgoverlay state file" },
      { "foreign format", "{\"format\":\"" .. SECRET .. "\",\"version\":1,\"data\":{}}", "foreign",
        "not a wgoverlay state file" },
      { "newer version", "{\"format\":\"wgoverlay-state\",\"version\":2,\"data\":{}}", "version",
        "has version 2" },
      { "no version", "{\"format\":\"wgoverlay-state\",\"data\":{}}", "version", "version %?" },
      { "data not an object", "{\"format\":\"wgoverlay-state\",\"version\":1,\"data\":\"" .. SECRET .. "\"}",
        "corrupt", "\"data\" is not an object" },
      { "binary", "\0\1\2\255" .. SECRET, "corrupt", "invalid JSON" },
    }
    for _, c in ipairs(cases) do
      it("reports a " .. c[1] .. " file, never quotes it and leaves it untouched", function()
        local path = dir .. "/node.json"
        local content = c[2]
        if content == nil then
          assert(state.save(path, { private_key = SECRET, name = "a" }))
          local full = read(path)
          content = full:sub(1, full:find(SECRET, 1, true) + 10)
        end
        write(path, content)
        local before_stat = assert(uv.fs_stat(path))
        local data, err, kind = state.load(path)
        assert.is_nil(data)
        assert.equal(c[3], kind)
        assert.matches(c[4], err)
        assert.matches(path, err, 1, true)
        assert.is_nil(err:find(SECRET:sub(1, 12), 1, true), "error message quotes the file")
        assert.equal(content, read(path))
        local after_stat = assert(uv.fs_stat(path))
        assert.same(before_stat.mtime, after_stat.mtime)
        assert.same({ "node.json" }, listdir(dir))
      end)
    end

    it("reports a directory given as the file", function()
      local data, err, kind = state.load(dir)
      assert.is_nil(data)
      assert.equal("io", kind)
      assert.matches("cannot be read", err)
    end)

    it("refuses a file larger than MAX_SIZE without reading it", function()
      local path = dir .. "/big.json"
      local old = state.MAX_SIZE
      state.MAX_SIZE = 100
      write(path, ("x"):rep(101))
      local data, err, kind = state.load(path)
      state.MAX_SIZE = old
      assert.is_nil(data)
      assert.equal("corrupt", kind)
      assert.matches("too large", err)
    end)
  end)

  describe("load_checked", function()
    it("returns the data of a file that fits its schema", function()
      local path = dir .. "/containers.json"
      local data = { attached = { ["/run/netns/web"] = { name = "web", ip = "10.200.0.2" } } }
      assert(state.save(path, data))
      assert.same(data, state.load_checked(path, "containers"))
    end)

    it("refuses a file that does not fit, naming the file and the field, and leaves it untouched", function()
      local path = dir .. "/containers.json"
      assert(state.save(path, { attached = "web" }))
      local before = read(path)
      local data, err, kind = state.load_checked(path, "containers")
      assert.is_nil(data)
      assert.equal("invalid", kind)
      assert.equal(path .. ': field "attached": expected an object, got string', err)
      assert.equal(before, read(path))
      assert.same({ "containers.json" }, listdir(dir))
    end)

    it("never quotes a bad value", function()
      local path = dir .. "/node.json"
      assert(state.save(path, { name = "a", private_key = SECRET .. "x" }))
      local data, err = state.load_checked(path, "node")
      assert.is_nil(data)
      assert.matches('field "private_key": expected a key', err, 1, true)
      assert.is_nil(err:find(SECRET, 1, true))
    end)

    it("passes load's errors through", function()
      local data, err, kind = state.load_checked(dir .. "/absent.json", "node")
      assert.is_nil(data)
      assert.equal("missing", kind)
      assert.matches("no such file", err)
      write(dir .. "/node.json", '{"format":"wgoverlay-state"')
      data, err, kind = state.load_checked(dir .. "/node.json", "node")
      assert.is_nil(data)
      assert.equal("corrupt", kind)
      assert.matches("is corrupt", err)
    end)
  end)

  describe("ensure_dir", function()
    it("creates a missing directory (and parents) with mode 0700", function()
      local d = dir .. "/a/b/state"
      assert.is_true(state.ensure_dir(d))
      assert.equal("directory", uv.fs_stat(d).type)
      assert.equal(tonumber("700", 8), mode(d))
      assert.is_true(state.ensure_dir(d .. "/")) -- idempotent, trailing slash
    end)

    it("creates 0700 whatever the umask", function()
      local d = dir .. "/loose"
      local ok = os.execute(("umask 000; LUA_PATH=%q LUA_CPATH=%q lua5.4 -e %q"):format(
        package.path, package.cpath,
        "assert(require('wgoverlay.state').ensure_dir(" .. ("%q"):format(d) .. "))"))
      assert.is_true(ok)
      assert.equal(tonumber("700", 8), mode(d))
    end)

    it("accepts an existing private directory", function()
      assert.equal(tonumber("700", 8), mode(dir)) -- mkdtemp makes 0700
      assert.is_true(state.ensure_dir(dir))
    end)

    it("refuses an existing directory that group or others can access", function()
      for _, m in ipairs({ "750", "705", "755", "777" }) do
        os.execute("chmod " .. m .. " '" .. dir .. "'")
        local ok, err = state.ensure_dir(dir)
        assert.is_nil(ok)
        assert.matches("accessible by group or others %(mode " .. m .. "%)", err)
      end
      os.execute("chmod 700 '" .. dir .. "'")
    end)

    it("refuses a file in the way", function()
      write(dir .. "/file", "x")
      local ok, err = state.ensure_dir(dir .. "/file")
      assert.is_nil(ok)
      assert.matches("is not a directory", err)
    end)

    it("refuses a directory owned by someone else (root only)", function()
      if uv.getuid() ~= 0 then pending("needs root to chown") return end
      local d = dir .. "/other"
      assert(state.ensure_dir(d))
      os.execute("chown 65534 '" .. d .. "'")
      local ok, err = state.ensure_dir(d)
      assert.is_nil(ok)
      assert.matches("belongs to uid 65534", err)
    end)
  end)
end)
