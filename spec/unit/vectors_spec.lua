-- Wycheproof's vectors (tests/vectors/, licence LICENSE-wycheproof) against
-- the control plane's crypto in the binding: XChaCha20-Poly1305 through
-- core.aead_seal/core.aead_open (the join protocol's sealing,
-- joinproto.lua) and X25519 through core.x25519 (its key agreement).  The
-- transport AEAD and the handshake's DH are tested in C
-- (tests/c/test_vectors.c).  Needs build/wgoverlay/core.so (or
-- WGO_BUILD_DIR), no root.

local cjson = require "cjson"
local core = require "wgoverlay.core"

local function load(name)
  local f = assert(io.open("tests/vectors/" .. name, "rb"))
  local j = cjson.decode(f:read("a"))
  f:close()
  local tests = {}
  for _, g in ipairs(j.testGroups) do
    for _, t in ipairs(g.tests) do tests[#tests + 1] = t end
  end
  assert(#tests == j.numberOfTests, name .. ": test count does not match its header")
  return tests
end

local function raw(h)
  return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end

describe("Wycheproof XChaCha20-Poly1305 against core.aead_seal/aead_open", function()
  local tests = load("xchacha20_poly1305_test.json")

  it("has the vectors, valid and invalid", function()
    local valid, invalid = 0, 0
    for _, t in ipairs(tests) do
      if t.result == "valid" then valid = valid + 1 else invalid = invalid + 1 end
    end
    assert.is_true(valid > 200 and invalid > 50)
  end)

  it("seals every valid vector to its ciphertext and tag, and opens it back", function()
    local bad = {}
    for _, t in ipairs(tests) do
      if t.result == "valid" then
        local key, iv, aad, msg = raw(t.key), raw(t.iv), raw(t.aad), raw(t.msg)
        local sealed = core.aead_seal(key, iv, msg, aad)
        local opened = core.aead_open(key, iv, raw(t.ct) .. raw(t.tag), aad)
        if sealed ~= raw(t.ct) .. raw(t.tag) or opened ~= msg then bad[#bad + 1] = t.tcId end
      end
    end
    assert.are.same({}, bad)
  end)

  it("refuses every invalid vector and returns no plaintext", function()
    local bad, nonce_refused = {}, 0
    for _, t in ipairs(tests) do
      if t.result ~= "valid" then
        local key, iv, aad = raw(t.key), raw(t.iv), raw(t.aad)
        local boxed = raw(t.ct) .. raw(t.tag)
        if #iv ~= 24 then
          -- a nonce of another size is an argument error, both ways
          local ok_s = pcall(core.aead_seal, key, iv, raw(t.msg), aad)
          local ok_o, pt = pcall(core.aead_open, key, iv, boxed, aad)
          if ok_s or (ok_o and pt ~= nil) then bad[#bad + 1] = t.tcId end
          nonce_refused = nonce_refused + 1
        else
          if core.aead_open(key, iv, boxed, aad) ~= nil then bad[#bad + 1] = t.tcId end
          -- and sealing the message does not give the forged box
          if core.aead_seal(key, iv, raw(t.msg), aad) == boxed then bad[#bad + 1] = t.tcId end
        end
      end
    end
    assert.are.same({}, bad)
    assert.is_true(nonce_refused > 0)
  end)
end)

describe("Wycheproof X25519 against core.x25519", function()
  local tests = load("x25519_test.json")

  it("gives every shared secret, and refuses the all-zero ones (low-order points)", function()
    local bad, zero = {}, 0
    for _, t in ipairs(tests) do
      local shared, err = core.x25519(raw(t.private), raw(t.public))
      if t.shared == ("0"):rep(64) then
        zero = zero + 1
        if shared ~= nil or not tostring(err):find("low order", 1, true) then bad[#bad + 1] = t.tcId end
      elseif shared ~= raw(t.shared) then
        bad[#bad + 1] = t.tcId
      end
    end
    assert.are.same({}, bad)
    assert.is_true(zero > 0)
  end)
end)
