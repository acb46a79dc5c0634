-- The command line: the status table renderer (pure), the JSON writer, and
-- bin/wgoverlay's argument errors and key commands (no root needed).

local cli = require "wgoverlay.cli"
local cjson = require "cjson"
local wgo = require "wgoverlay"

local function shell_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- Runs bin/wgoverlay with `args` (a string for sh) and optional stdin;
-- returns exit code, stdout, stderr.
local function run(args, stdin)
  local build = os.getenv("WGO_BUILD_DIR")
  if build == nil or build == "" then build = "build" end
  local errf, inf = os.tmpname(), os.tmpname()
  local f = assert(io.open(inf, "w"))
  f:write(stdin or "")
  f:close()
  local p = assert(io.popen(("WGO_BUILD_DIR=%s lua5.4 bin/wgoverlay %s <%s 2>%s"):format(
    shell_quote(build), args, shell_quote(inf), shell_quote(errf))))
  local out = p:read("a")
  local _, _, code = p:close()
  f = assert(io.open(errf))
  local err = f:read("a")
  f:close()
  os.remove(errf)
  os.remove(inf)
  return code, out, err
end

local NOW = 1700000000
local KEY1 = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
local KEY2 = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="

local function sample()
  return {
    interface = "wgo0",
    public_key = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=",
    listen_port = 51820,
    peers = {
      { public_key = KEY1, endpoint = "198.51.100.2:51820", last_handshake = NOW - 5,
        rx_bytes = 1536, tx_bytes = 2 * 1024 * 1024, allowed_ips = { "10.77.0.2/32", "fd77::2/128" },
        persistent_keepalive = 25 },
      { public_key = KEY2, last_handshake = 0, rx_bytes = 0, tx_bytes = 100, allowed_ips = {} },
    },
  }
end

local function lines(s)
  local out = {}
  for l in s:gmatch("([^\n]*)\n") do out[#out + 1] = l end
  return out
end

describe("cli.format_status", function()
  it("shows the interface, its public key and port, then one row per peer", function()
    local out = cli.format_status(sample(), NOW)
    local l = lines(out)
    assert.equal("interface: wgo0", l[1])
    assert.equal("  public key: HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=", l[2])
    assert.equal("  listening port: 51820", l[3])
    assert.equal("", l[4])
    assert.matches("^  PEER%s+ENDPOINT%s+HANDSHAKE%s+RECEIVED%s+SENT%s+ALLOWED IPS$", l[5])
    assert.equal(7, #l)
    assert.equal("\n", out:sub(-1))
  end)

  it("shows peer, endpoint, handshake age, transfer and allowed IPs", function()
    local l = lines(cli.format_status(sample(), NOW))
    local row1, row2 = l[6], l[7]
    assert.truthy(row1:find(KEY1:sub(1, 12) .. "…", 1, true))
    assert.is_nil(row1:find(KEY1, 1, true)) -- abbreviated
    assert.truthy(row1:find("198.51.100.2:51820", 1, true))
    assert.truthy(row1:find("5s ago", 1, true))
    assert.truthy(row1:find("1.50 KiB", 1, true))
    assert.truthy(row1:find("2.00 MiB", 1, true))
    assert.truthy(row1:find("10.77.0.2/32, fd77::2/128", 1, true))
    assert.truthy(row2:find(KEY2:sub(1, 12) .. "…", 1, true))
    assert.truthy(row2:find("(none)", 1, true))
    assert.truthy(row2:find("never", 1, true))
    assert.truthy(row2:find("0 B", 1, true))
    assert.truthy(row2:find("100 B", 1, true))
  end)

  it("aligns the columns", function()
    local l = lines(cli.format_status(sample(), NOW))
    -- Column starts measured in characters (the key column has a "…").
    local function col(line, text)
      local i = assert(line:find(text, 1, true), text .. " not in " .. line)
      return utf8.len(line:sub(1, i - 1))
    end
    assert.equal(col(l[5], "ENDPOINT"), col(l[6], "198.51.100.2"))
    assert.equal(col(l[5], "ENDPOINT"), col(l[7], "(none)"))
    assert.equal(col(l[5], "HANDSHAKE"), col(l[6], "5s ago"))
    assert.equal(col(l[5], "HANDSHAKE"), col(l[7], "never"))
    assert.equal(col(l[5], "ALLOWED IPS"), col(l[6], "10.77.0.2/32"))
  end)

  it("writes handshake ages in seconds, minutes and hours", function()
    local st = sample()
    local function age(secs)
      st.peers[1].last_handshake = NOW - secs
      return lines(cli.format_status(st, NOW))[6]
    end
    assert.truthy(age(0):find("0s ago", 1, true))
    assert.truthy(age(59):find("59s ago", 1, true))
    assert.truthy(age(125):find("2m 5s ago", 1, true))
    assert.truthy(age(3 * 3600 + 61):find("3h 1m ago", 1, true))
    -- a clock that went backwards is "0s ago", not negative
    assert.truthy(age(-30):find("0s ago", 1, true))
  end)

  it("accepts a fractional 'now' (socket.gettime)", function()
    local out = cli.format_status(sample(), NOW + 0.75)
    assert.truthy(out:find("5s ago", 1, true))
  end)

  it("says so when there are no peers, and omits a missing public key", function()
    local out = cli.format_status({ interface = "wgo1", listen_port = 0, peers = {} }, NOW)
    assert.truthy(out:find("(no peers)", 1, true))
    assert.is_nil(out:find("public key", 1, true))
    assert.truthy(out:find("listening port: 0", 1, true))
  end)

  it("copes with peers that lack counters or allowed IPs", function()
    local out = cli.format_status({ interface = "wgo1", listen_port = 1, peers = { { public_key = KEY1 } } }, NOW)
    assert.truthy(out:find("never", 1, true))
    assert.truthy(out:find("0 B", 1, true))
  end)
end)

describe("cli.status_json", function()
  it("writes lists as JSON arrays even when empty", function()
    local st = sample()
    st.peers[2].allowed_ips = {}
    local decoded = cjson.decode(cli.status_json(st))
    assert.equal("wgo0", decoded.interface)
    assert.equal(2, #decoded.peers)
    assert.equal(KEY1, decoded.peers[1].public_key)
    assert.same({ "10.77.0.2/32", "fd77::2/128" }, decoded.peers[1].allowed_ips)
    assert.truthy(cli.status_json({ interface = "x", peers = {} }):find('"peers":[]', 1, true))
    assert.truthy(cli.status_json(st):find('"allowed_ips":[]', 1, true))
    assert.equal("[]", cli.status_json({}, true))
  end)
end)

describe("bin/wgoverlay", function()
  describe("argument errors", function()
    local cases = {
      { "", "command" },
      { "frobnicate", "frobnicate" },
      { "up", "file" },
      { "down", "file" },
      { "interface", "ifname" },
      { "interface wgo0 --mtu lots", "lots" },
      { "status --bogus", "bogus" },
      { "status a b", "too many arguments" },
      { "genkey extra", "too many arguments" },
    }
    for _, case in ipairs(cases) do
      it(("exit 2 with usage for %q"):format(case[1]), function()
        local code, out, err = run(case[1])
        assert.equal(2, code)
        assert.equal("", out)
        assert.matches("^Usage: wgoverlay", err)
        assert.truthy(err:find("\nwgoverlay: ", 1, true), err)
        assert.truthy(err:lower():find(case[2]:lower(), 1, true), err)
      end)
    end

    it("prints help with --help and exits 0", function()
      local code, out = run("--help")
      assert.equal(0, code)
      for _, cmd in ipairs({ "genkey", "pubkey", "interface", "up", "down", "status" }) do
        assert.truthy(out:find(cmd, 1, true), cmd .. " missing from help")
      end
    end)
  end)

  describe("genkey and pubkey", function()
    it("genkey prints a private key, pubkey derives its public key from stdin", function()
      local code, priv, err = run("genkey")
      assert.equal(0, code, err)
      assert.matches("^[A-Za-z0-9+/]+=\n$", priv)
      assert.equal(45, #priv)
      local code2, pub, err2 = run("pubkey", priv)
      assert.equal(0, code2, err2)
      assert.equal(wgo.public_key(priv:sub(1, 44)) .. "\n", pub)
    end)

    it("pubkey accepts a key without a newline (like wg pubkey)", function()
      local priv, pub = wgo.generate_keys()
      local code, out = run("pubkey", priv)
      assert.equal(0, code)
      assert.equal(pub .. "\n", out)
    end)

    it("genpsk prints a 32-byte key", function()
      local code, out = run("genpsk")
      assert.equal(0, code)
      assert.matches("^[A-Za-z0-9+/]+=\n$", out)
      assert.equal(45, #out)
    end)

    it("pubkey refuses a bad key with exit 1 and a message", function()
      local code, out, err = run("pubkey", "not a key\n")
      assert.equal(1, code)
      assert.equal("", out)
      assert.matches("^wgoverlay: pubkey: bad private key: expected 32 bytes base64", err)
    end)

    it("pubkey refuses empty input", function()
      local code, out, err = run("pubkey", "")
      assert.equal(1, code)
      assert.equal("", out)
      assert.matches("no private key", err)
    end)
  end)

  describe("status and down without an engine", function()
    it("status of an interface nobody runs fails with a message", function()
      local code, out, err = run("status wgoNoSuch" .. math.random(1000, 9999))
      assert.equal(1, code)
      assert.equal("", out)
      assert.matches("^wgoverlay: ", err)
    end)

    it("down of a file that was never brought up fails with a message", function()
      local code, _, err = run("down /nonexistent/wgoNoSuch9.conf")
      assert.equal(1, code)
      assert.matches("wgoNoSuch9 is not up", err)
    end)

    it("up of a malformed file reports file and line, and exits 1", function()
      local path = os.tmpname() .. ".conf"
      local f = assert(io.open(path, "w"))
      f:write("[Interface]\nPrivateKey = nope\n")
      f:close()
      local code, _, err = run("up --foreground " .. shell_quote(path))
      os.remove(path)
      assert.equal(1, code)
      assert.equal(("wgoverlay: %s:2: PrivateKey: expected 32 bytes base64 (44 characters)\n"):format(path), err)
    end)
  end)
end)
