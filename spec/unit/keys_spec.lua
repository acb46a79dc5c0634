-- Key encoding and derivation through the facade (wgoverlay.generate_keys,
-- public_key, generate_psk) and core.valid_key.  Needs build/wgoverlay/core.so
-- (or WGO_BUILD_DIR), no root.

local wgo = require "wgoverlay"
local core = require "wgoverlay.core"

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

-- Plain base64 in Lua, independent of the C code under test.
local function b64decode(s)
  local bits, out = {}, {}
  for c in s:gsub("=+$", ""):gmatch(".") do
    local v = B64:find(c, 1, true)
    if not v then return nil end
    for i = 5, 0, -1 do bits[#bits + 1] = ((v - 1) >> i) & 1 end
  end
  for i = 1, #bits - 7, 8 do
    local b = 0
    for j = 0, 7 do b = b * 2 + bits[i + j] end
    out[#out + 1] = string.char(b)
  end
  return table.concat(out)
end

local function b64encode(bytes)
  local out = {}
  for i = 1, #bytes, 3 do
    local a, b, c = bytes:byte(i, i + 2)
    local n = (a << 16) | ((b or 0) << 8) | (c or 0)
    out[#out + 1] = B64:sub((n >> 18) + 1, (n >> 18) + 1) .. B64:sub(((n >> 12) & 63) + 1, ((n >> 12) & 63) + 1)
      .. (b and B64:sub(((n >> 6) & 63) + 1, ((n >> 6) & 63) + 1) or "=")
      .. (c and B64:sub((n & 63) + 1, (n & 63) + 1) or "=")
  end
  return table.concat(out)
end

local function fromhex(h)
  return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end

local function have_wg()
  return os.execute("command -v wg >/dev/null 2>&1") == true
end

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function wg_pubkey(priv)
  local p = assert(io.popen("printf '%s\\n' " .. shell_quote(priv) .. " | wg pubkey"))
  local out = p:read("a")
  p:close()
  return (out:gsub("%s+$", ""))
end

describe("keys", function()
  describe("generate_keys", function()
    it("returns a private and a public key, base64 with 44 characters each", function()
      local priv, pub = wgo.generate_keys()
      assert.is_string(priv)
      assert.is_string(pub)
      assert.equal(44, #priv)
      assert.equal(44, #pub)
      assert.matches("^[A-Za-z0-9+/]+=$", priv)
      assert.matches("^[A-Za-z0-9+/]+=$", pub)
      assert.equal(32, #b64decode(priv))
      assert.equal(32, #b64decode(pub))
    end)

    it("round-trips: base64 decodes to 32 bytes that encode back to the same text", function()
      for _ = 1, 20 do
        local priv, pub = wgo.generate_keys()
        assert.equal(priv, b64encode(b64decode(priv)))
        assert.equal(pub, b64encode(b64decode(pub)))
      end
    end)

    it("clamps the private key as Curve25519 (and wg genkey) do", function()
      for _ = 1, 20 do
        local raw = b64decode((wgo.generate_keys()))
        assert.equal(0, raw:byte(1) & 7)
        assert.equal(0, raw:byte(32) & 128)
        assert.equal(64, raw:byte(32) & 64)
      end
    end)

    it("returns a public key that public_key() derives from the private key", function()
      for _ = 1, 10 do
        local priv, pub = wgo.generate_keys()
        assert.equal(pub, wgo.public_key(priv))
      end
    end)

    it("never repeats itself", function()
      local seen = {}
      for _ = 1, 50 do
        local priv, pub = wgo.generate_keys()
        assert.is_nil(seen[priv])
        assert.is_nil(seen[pub])
        seen[priv], seen[pub] = true, true
      end
    end)
  end)

  describe("public_key", function()
    it("matches the X25519 test vector of RFC 7748 (section 6.1)", function()
      local alice_priv = b64encode(fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
      local alice_pub = b64encode(fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"))
      local bob_priv = b64encode(fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
      local bob_pub = b64encode(fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"))
      assert.equal(alice_pub, wgo.public_key(alice_priv))
      assert.equal(bob_pub, wgo.public_key(bob_priv))
    end)

    it("agrees with `wg pubkey`", function()
      if not have_wg() then pending("wg (wireguard-tools) is not installed") return end
      for _ = 1, 5 do
        local priv, pub = wgo.generate_keys()
        assert.equal(pub, wg_pubkey(priv))
      end
      -- and on keys made by wg genkey
      local p = assert(io.popen("wg genkey"))
      local wpriv = p:read("a"):gsub("%s+$", "")
      p:close()
      assert.equal(wg_pubkey(wpriv), wgo.public_key(wpriv))
    end)

    it("is deterministic and differs between keys", function()
      local a = wgo.generate_keys()
      local b = wgo.generate_keys()
      assert.equal(wgo.public_key(a), wgo.public_key(a))
      assert.not_equal(wgo.public_key(a), wgo.public_key(b))
    end)

    local bad = {
      ["a short string"] = "abc",
      ["the empty string"] = "",
      ["43 characters"] = ("A"):rep(43),
      ["45 characters"] = ("A"):rep(44) .. "=",
      ["44 characters without padding"] = ("A"):rep(44),
      ["a character outside base64"] = ("A"):rep(42) .. "*=",
      ["hex instead of base64"] = ("ab"):rep(32),
      ["a key with spaces around"] = " " .. ("A"):rep(43) .. "= ",
      ["24 bytes of base64"] = b64encode(("x"):rep(24)),
      ["33 bytes of base64"] = b64encode(("x"):rep(33)),
    }
    for what, key in pairs(bad) do
      it("rejects " .. what .. " with the documented message", function()
        local pub, err = wgo.public_key(key)
        assert.is_nil(pub)
        assert.matches("bad private key: expected 32 bytes base64", err, 1, true)
        assert.is_false(core.valid_key(key))
      end)
    end

    it("does not repeat the (secret) private key in its error message", function()
      local secret = ("Q"):rep(42) .. "*="
      local _, err = wgo.public_key(secret)
      assert.is_nil(err:find(secret, 1, true))
    end)

    it("raises for a non-string argument", function()
      assert.has_error(function() wgo.public_key(nil) end)
      assert.has_error(function() wgo.public_key(42) end)
      assert.has_error(function() wgo.public_key({}) end)
    end)
  end)

  describe("valid_key", function()
    it("accepts generated keys and refuses anything else without raising", function()
      local priv, pub = wgo.generate_keys()
      assert.is_true(core.valid_key(priv))
      assert.is_true(core.valid_key(pub))
      assert.is_true(core.valid_key(wgo.generate_psk()))
      assert.is_false(core.valid_key("abc"))
      assert.is_false(core.valid_key(priv .. "A"))
      assert.is_false(core.valid_key(priv:sub(1, 43)))
      assert.is_false(core.valid_key(nil))
      assert.is_false(core.valid_key(42))
      assert.is_false(core.valid_key({}))
    end)
  end)

  describe("generate_psk", function()
    it("returns fresh 32-byte base64 keys", function()
      local a, b = wgo.generate_psk(), wgo.generate_psk()
      assert.equal(44, #a)
      assert.matches("^[A-Za-z0-9+/]+=$", a)
      assert.equal(32, #b64decode(a))
      assert.equal(a, b64encode(b64decode(a)))
      assert.not_equal(a, b)
    end)
  end)
end)
