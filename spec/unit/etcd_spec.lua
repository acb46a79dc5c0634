-- The pure parts of wgoverlay.etcd and the argument checks of the HTTP
-- client binding (the client itself runs against a real etcd in
-- spec/integration/etcd_client_spec.lua).
local etcd = require "wgoverlay.etcd"
local core = require "wgoverlay.core"

describe("etcd helpers", function()
  it("prefix_end is the first key after every key with the prefix", function()
    assert.are.equal("/wgo0", etcd.prefix_end("/wgo/"))
    assert.are.equal("a\1", etcd.prefix_end("a\0"))
    assert.are.equal("b", etcd.prefix_end("a\255\255"))
    assert.are.equal("\0", etcd.prefix_end("\255"))
  end)

  it("parses etcd://, etcds:// and http(s):// endpoint lists", function()
    assert.are.same({ "http://10.0.0.1:2379", "http://10.0.0.2:2379" },
      etcd.parse_endpoints("etcd://10.0.0.1:2379,etcd://10.0.0.2:2379"))
    assert.are.same({ "https://10.0.0.1:2379" }, etcd.parse_endpoints("etcd://10.0.0.1:2379", true))
    assert.are.same({ "https://[fd00::1]:2379" }, etcd.parse_endpoints("etcds://[fd00::1]:2379"))
    assert.are.same({ "https://h.example:1" }, etcd.parse_endpoints({ "https://h.example:1" }))
  end)

  it("rejects bad endpoints with a message that names them", function()
    for _, bad in ipairs({ "", "10.0.0.1:2379", "ftp://10.0.0.1:21", "etcd://10.0.0.1", "etcd://10.0.0.1:0",
                           "etcd://10.0.0.1:65536", "etcd://[fd00::1:2379" }) do
      local r, err = etcd.parse_endpoints(bad)
      assert.is_nil(r, bad)
      assert.is_string(err)
    end
    local _, err = etcd.parse_endpoints("ftp://x:1")
    assert.truthy(err:find("ftp", 1, true))
  end)

  it("builds compares and operations with base64 keys and string revisions", function()
    local c = etcd.cmp("/k", "CREATE", "EQUAL", 0)
    assert.are.same({ key = core.base64_encode("/k"), target = "CREATE", result = "EQUAL", create_revision = "0" }, c)
    local p = etcd.put_op("/k", "v", 7)
    assert.are.equal("7", p.request_put.lease)
    assert.are.equal("v", core.base64_decode(p.request_put.value))
  end)

  it("decodes key-values from the gateway's JSON", function()
    local kv = etcd.decode_kv({ key = core.base64_encode("/a"), value = core.base64_encode("x\0y"),
                                mod_revision = "12", create_revision = "3", version = "2", lease = "99" })
    assert.are.same({ key = "/a", value = "x\0y", mod_revision = 12, create_revision = 3, version = 2, lease = 99 }, kv)
  end)
end)

describe("http binding", function()
  it("base64 round-trips bytes and rejects what is not base64", function()
    for _, s in ipairs({ "", "a", "ab", "abc", "\0\255\1", string.rep("x", 1000) }) do
      assert.are.equal(s, core.base64_decode(core.base64_encode(s)))
    end
    local r, err = core.base64_decode("!!!")
    assert.is_nil(r)
    assert.truthy(err:find("base64", 1, true))
  end)

  it("checks a request's arguments before starting it", function()
    local m = assert(core.http_multi())
    assert.has_error(function() m:add({}) end, "http: add: url is required")
    assert.has_error(function() m:add({ url = "ftp://x/" }) end, "http: add: url must be http:// or https://")
    assert.has_error(function() m:add({ url = "http://127.0.0.1:1/", body = 5 }) end, "http: add: body must be a string")
    assert.has_error(function() m:add({ url = "http://127.0.0.1:1/", timeout_ms = -1 }) end)
    assert.has_error(function() m:add({ url = "http://127.0.0.1:1/", headers = { 1 } }) end,
      "http: add: headers[1] must be a string")
    assert.has_error(function() m:add({ url = "http://127.0.0.1:1/", body = "a\0b" }) end,
      "http: add: body contains NUL bytes")
    local id = m:add({ url = "http://127.0.0.1:1/" })
    assert.is_true(m:remove(id))
    assert.is_false(m:remove(id))
    m:close()
    assert.has_error(function() m:add({ url = "http://127.0.0.1:1/" }) end, "http: client is closed")
  end)
end)
