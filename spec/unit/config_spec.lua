-- The wg-quick style configuration parser (wgoverlay.config): what it
-- reads, and line-numbered errors for malformed files.  No root needed.

local config = require "wgoverlay.config"
local wgo = require "wgoverlay"

local PRIV, PUB = wgo.generate_keys()
local PRIV2, PEER = wgo.generate_keys()
local _, PEER2 = wgo.generate_keys()
local PSK = wgo.generate_psk()
assert(PRIV2)

-- Lines joined with "\n" (and a final newline).
local function text(lines) return table.concat(lines, "\n") .. "\n" end

local function parse_lines(lines, name)
  return config.parse(text(lines), name or "wg0.conf")
end

-- Asserts that `lines` fail at line `line` with a message containing `needle`.
local function fails_at(lines, line, needle)
  local cfg, err = parse_lines(lines, "test.conf")
  assert.is_nil(cfg, "expected a parse error")
  assert.is_string(err)
  local prefix = ("test.conf:%d: "):format(line)
  assert.equal(prefix, err:sub(1, #prefix), "wrong line in: " .. err)
  assert.truthy(err:find(needle, 1, true), ("%q not in %q"):format(needle, err))
  return err
end

describe("config.parse", function()
  it("reads a complete wg-quick style file", function()
    local cfg = assert(parse_lines({
      "# a comment",
      "[Interface]",
      "PrivateKey = " .. PRIV,
      "ListenPort = 51820",
      "Address = 10.77.0.1/24, fd77::1/64",
      "MTU = 1380",
      "",
      "[Peer]",
      "PublicKey = " .. PEER,
      "PresharedKey = " .. PSK,
      "Endpoint = 198.51.100.2:51820",
      "AllowedIPs = 10.77.0.2/32, fd77::2/128",
      "PersistentKeepalive = 25",
      "",
      "[Peer]",
      "PublicKey = " .. PEER2,
      "Endpoint = [fd00:2::9]:51821",
      "AllowedIPs = 10.77.5.0/28",
    }))
    assert.same({
      private_key = PRIV, listen_port = 51820, mtu = 1380,
      addresses = { "10.77.0.1/24", "fd77::1/64" },
    }, cfg.interface)
    assert.same({
      { public_key = PEER, preshared_key = PSK, endpoint = "198.51.100.2:51820",
        allowed_ips = { "10.77.0.2/32", "fd77::2/128" }, persistent_keepalive = 25 },
      { public_key = PEER2, endpoint = "[fd00:2::9]:51821", allowed_ips = { "10.77.5.0/28" } },
    }, cfg.peers)
    assert.equal("integer", math.type(cfg.interface.listen_port))
    assert.equal("integer", math.type(cfg.interface.mtu))
    assert.equal("integer", math.type(cfg.peers[1].persistent_keepalive))
  end)

  it("accepts a minimal file: [Interface] with a PrivateKey and no peers", function()
    local cfg = assert(parse_lines({ "[Interface]", "PrivateKey = " .. PRIV }))
    assert.same({ private_key = PRIV, addresses = {} }, cfg.interface)
    assert.same({}, cfg.peers)
  end)

  it("ignores case in section and key names, spaces, comments and CRLF line ends", function()
    local cfg = assert(config.parse("  [interface]  \r\n  privatekey=" .. PRIV .. "   # the key\r\n"
      .. "LISTENPORT   =   7 \r\n[PEER]\r\npublickey = " .. PEER .. "\r\n", "x.conf"))
    assert.equal(PRIV, cfg.interface.private_key)
    assert.equal(7, cfg.interface.listen_port)
    assert.equal(PEER, cfg.peers[1].public_key)
  end)

  it("parses a file without a final newline", function()
    local cfg = assert(config.parse("[Interface]\nPrivateKey = " .. PRIV, "x.conf"))
    assert.equal(PRIV, cfg.interface.private_key)
  end)

  it("adds up repeated Address and AllowedIPs lines, in order", function()
    local cfg = assert(parse_lines({
      "[Interface]", "PrivateKey = " .. PRIV, "Address = 10.77.0.1/24", "Address = fd77::1/64,",
      "[Peer]", "PublicKey = " .. PEER, "AllowedIPs = 10.77.0.2/32", "AllowedIPs = ,fd77::2/128 ,",
    }))
    assert.same({ "10.77.0.1/24", "fd77::1/64" }, cfg.interface.addresses)
    assert.same({ "10.77.0.2/32", "fd77::2/128" }, cfg.peers[1].allowed_ips)
  end)

  it("reads PersistentKeepalive = off as 0 and FwMark in decimal, hex or off", function()
    local cfg = assert(parse_lines({
      "[Interface]", "PrivateKey = " .. PRIV, "FwMark = 0x10",
      "[Peer]", "PublicKey = " .. PEER, "PersistentKeepalive = off",
    }))
    assert.equal(0, cfg.peers[1].persistent_keepalive)
    assert.equal(16, cfg.interface.fwmark)
    assert.equal(4294967295, parse_lines({ "[Interface]", "PrivateKey = " .. PRIV,
      "FwMark = 0xffffffff" }).interface.fwmark)
    assert.equal(0, parse_lines({ "[Interface]", "PrivateKey = " .. PRIV, "FwMark = off" }).interface.fwmark)
    assert.equal(51, parse_lines({ "[Interface]", "PrivateKey = " .. PRIV, "FwMark = 51" }).interface.fwmark)
  end)

  it("accepts [Peer] sections before [Interface]", function()
    local cfg = assert(parse_lines({ "[Peer]", "PublicKey = " .. PEER, "[Interface]", "PrivateKey = " .. PRIV }))
    assert.equal(PEER, cfg.peers[1].public_key)
  end)

  it("does not expose the parser's bookkeeping in peers", function()
    local cfg = assert(parse_lines({ "[Interface]", "PrivateKey = " .. PRIV, "[Peer]", "PublicKey = " .. PEER }))
    assert.same({ public_key = PEER }, cfg.peers[1])
  end)

  describe("malformed files give file:line: errors", function()
    local head = { "[Interface]", "PrivateKey = " .. PRIV }

    local function with(lines)
      local out = {}
      for _, l in ipairs(head) do out[#out + 1] = l end
      for _, l in ipairs(lines) do out[#out + 1] = l end
      return out
    end

    it("bad private key, without repeating the secret", function()
      local secret = PRIV:sub(1, 40) .. "!!!="
      local err = fails_at({ "[Interface]", "# key below", "PrivateKey = " .. secret }, 3,
        "PrivateKey: expected 32 bytes base64")
      assert.is_nil(err:find(secret, 1, true))
    end)

    it("bad public key, quoting it", function()
      fails_at(with({ "[Peer]", "PublicKey = notakey" }), 4, 'PublicKey "nota..." (7 characters): expected 32 bytes base64')
    end)

    it("bad preshared key", function()
      fails_at(with({ "[Peer]", "PublicKey = " .. PEER, "PresharedKey = short=" }), 5,
        "PresharedKey: expected 32 bytes base64")
    end)

    it("bad CIDR in Address", function()
      fails_at(with({ "Address = 10.77.0.1/24, 10.77.0.300/24" }), 3, 'Address: CIDR "10.77.0.300/24" invalid')
    end)

    it("bad CIDR in AllowedIPs", function()
      fails_at(with({ "", "[Peer]", "PublicKey = " .. PEER, "AllowedIPs = 10.77.0.2/32, bogus" }), 6,
        'AllowedIPs: CIDR "bogus" invalid')
      fails_at(with({ "[Peer]", "PublicKey = " .. PEER, "AllowedIPs = fd77::/129" }), 5,
        'CIDR "fd77::/129" invalid: prefix longer than 128')
    end)

    it("unknown key", function()
      fails_at(with({ "Foo = bar" }), 3, "unknown key Foo in [Interface]")
      fails_at(with({ "[Peer]", "PublicKey = " .. PEER, "Colour = blue" }), 5, "unknown key Colour in [Peer]")
    end)

    it("peer keys in [Interface] and interface keys in [Peer]", function()
      fails_at(with({ "Endpoint = 192.0.2.1:5" }), 3, "unknown key Endpoint in [Interface]")
      fails_at(with({ "[Peer]", "PublicKey = " .. PEER, "ListenPort = 5" }), 5, "unknown key ListenPort in [Peer]")
    end)

    it("key outside of a section", function()
      fails_at({ "# leading comment", "PrivateKey = " .. PRIV, "[Interface]" }, 2, "PrivateKey outside of a section")
    end)

    it("unknown section", function()
      fails_at(with({ "[Peers]" }), 3, "unknown section [peers]")
    end)

    it("a line that is not Key = Value", function()
      fails_at(with({ "just some words" }), 3, 'expected Key = Value, got "just some words"')
      fails_at(with({ "= value" }), 3, "expected Key = Value")
    end)

    it("a key without a value", function()
      fails_at(with({ "ListenPort =" }), 3, "ListenPort has no value")
    end)

    it("peer without PublicKey (the last one)", function()
      fails_at(with({ "", "[Peer]", "Endpoint = 192.0.2.1:51820" }), 4, "[Peer] has no PublicKey")
    end)

    it("peer without PublicKey followed by another peer", function()
      fails_at(with({ "[Peer]", "AllowedIPs = 10.0.0.0/8", "[Peer]", "PublicKey = " .. PEER }), 5,
        "previous [Peer] has no PublicKey")
    end)

    it("duplicate peer (reported at the second one)", function()
      fails_at(with({ "[Peer]", "PublicKey = " .. PEER, "[Peer]", "PublicKey = " .. PEER2,
        "[Peer]", "PublicKey = " .. PEER }), 7, "duplicate peer " .. PEER)
    end)

    it("missing [Interface] section", function()
      fails_at({ "[Peer]", "PublicKey = " .. PEER }, 1, "no [Interface] section")
      local cfg, err = config.parse("", "empty.conf")
      assert.is_nil(cfg)
      assert.equal("empty.conf:1: no [Interface] section", err)
    end)

    it("missing PrivateKey (reported at the [Interface] line)", function()
      fails_at({ "# no key", "", "[Interface]", "ListenPort = 51820" }, 3, "[Interface] has no PrivateKey")
    end)

    it("second [Interface] section", function()
      fails_at(with({ "[Interface]" }), 3, "second [Interface] section")
    end)

    it("host name endpoint", function()
      fails_at(with({ "[Peer]", "PublicKey = " .. PEER, "Endpoint = vpn.example.com:51820" }), 5,
        'Endpoint "vpn.example.com:51820" invalid: expected IP:PORT or [IPv6]:PORT (no host names)')
    end)

    it("malformed endpoints", function()
      for _, ep in ipairs({ "192.0.2.1", "192.0.2.1:", "192.0.2.1:0", "192.0.2.1:65536", "192.0.2.300:5",
                            "fd00::1:51820", "[fd00::1]", "[fd00::1]:x", "10.0.0.0/24:5", "[192.0.2.1]:5" }) do
        fails_at(with({ "[Peer]", "PublicKey = " .. PEER, "Endpoint = " .. ep }), 5, ('Endpoint "%s" invalid'):format(ep))
      end
    end)

    it("wg-quick's DNS, Table, SaveConfig and hooks are refused, not ignored", function()
      for _, key in ipairs({ "DNS = 192.0.2.53", "Table = off", "SaveConfig = true", "PreUp = true",
                             "PostUp = iptables -A FORWARD", "PreDown = true", "PostDown = true" }) do
        local name = key:match("^(%w+)")
        fails_at(with({ key }), 3, name .. " is not supported by wgoverlay")
      end
    end)

    it("out-of-range numbers", function()
      fails_at(with({ "ListenPort = 65536" }), 3, 'ListenPort "65536" invalid: must be 0..65535')
      fails_at(with({ "ListenPort = -1" }), 3, 'ListenPort "-1" invalid')
      fails_at(with({ "ListenPort = 0x10" }), 3, 'ListenPort "0x10" invalid')
      fails_at(with({ "MTU = 575" }), 3, 'MTU "575" invalid: must be 576..65535')
      fails_at(with({ "MTU = 9000.5" }), 3, 'MTU "9000.5" invalid')
      fails_at(with({ "FwMark = 0x1ffffffff" }), 3, 'FwMark "0x1ffffffff" invalid')
      fails_at(with({ "FwMark = 4294967296" }), 3, 'FwMark "4294967296" invalid')
      fails_at(with({ "FwMark = 0xzz" }), 3, 'FwMark "0xzz" invalid')
      fails_at(with({ "[Peer]", "PublicKey = " .. PEER, "PersistentKeepalive = 65536" }), 5,
        'PersistentKeepalive "65536" invalid')
      fails_at(with({ "[Peer]", "PublicKey = " .. PEER, "PersistentKeepalive = never" }), 5,
        'PersistentKeepalive "never" invalid')
    end)

    it("uses 'config' as the name when none is given", function()
      local cfg, err = config.parse("[Interface]\nBogus = 1\n")
      assert.is_nil(cfg)
      assert.equal("config:2: unknown key Bogus in [Interface]", err)
    end)
  end)
end)

describe("config.load", function()
  local path

  after_each(function()
    if path then os.remove(path) end
  end)

  it("reads a file and names it in errors", function()
    path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write("[Interface]\nPrivateKey = ", PRIV, "\nAddress = 10.77.0.1/24\n[Peer]\nPublicKey = ", PEER, "\n")
    f:close()
    local cfg = assert(config.load(path))
    assert.equal(PRIV, cfg.interface.private_key)
    assert.equal(PEER, cfg.peers[1].public_key)
    f = assert(io.open(path, "w"))
    f:write("[Interface]\nPrivateKey = ", PRIV, "\nMTU = big\n")
    f:close()
    local bad, err = config.load(path)
    assert.is_nil(bad)
    assert.equal(path .. ':3: MTU "big" invalid: must be 576..65535', err)
  end)

  it("returns nil and a message for a missing file", function()
    local cfg, err = config.load("/nonexistent/wgoverlay/wg9.conf")
    assert.is_nil(cfg)
    assert.matches("/nonexistent/wgoverlay/wg9.conf", err, 1, true)
  end)
end)

describe("config.interface_name", function()
  it("derives the interface name from the file name, as wg-quick does", function()
    assert.equal("wg0", config.interface_name("/etc/wireguard/wg0.conf"))
    assert.equal("wg0", config.interface_name("wg0.conf"))
    assert.equal("overlay", config.interface_name("./dir.d/overlay"))
    assert.equal("a.b", config.interface_name("/x/a.b.conf"))
  end)
end)

-- PUB is the public key of PRIV: the parser leaves keys alone.
describe("config keys", function()
  it("are kept exactly as written", function()
    local cfg = assert(parse_lines({ "[Interface]", "PrivateKey = " .. PRIV, "[Peer]", "PublicKey = " .. PUB }))
    assert.equal(PUB, cfg.peers[1].public_key)
    assert.equal(PUB, wgo.public_key(cfg.interface.private_key))
  end)
end)
