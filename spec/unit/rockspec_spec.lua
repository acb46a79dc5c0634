-- The rockspec: it lists the tree, declares its dependencies, passes
-- `luarocks lint`, and `luarocks make` builds and installs the rock from a
-- copy of the checkout into a private tree, where the installed module and
-- CLI work and `luarocks test` runs the unit specs.  Offline: the
-- dependencies are Debian packages here, declared to LuaRocks through
-- rocks_provided in a private configuration file (as README explains).
--
-- Tagged #rock: `luarocks test` leaves this spec out (it runs `luarocks
-- test` itself).
describe("rockspec #rock", function()
  local ROCKSPEC = "wgoverlay-scm-1.rockspec"

  local function sh(cmd)
    local p = io.popen(cmd .. " 2>&1")
    local out = p:read("a")
    local ok, _, code = p:close()
    return ok, out, code
  end

  local function have_luarocks()
    return (sh("command -v luarocks >/dev/null"))
  end

  -- The rockspec's fields, as LuaRocks reads them (a Lua chunk of globals).
  local function load_rockspec()
    local env = {}
    local fn = assert(loadfile(ROCKSPEC, "t", env))
    fn()
    return env
  end

  -- The rock each Debian package provides, at the version Debian 12 has.
  local PROVIDED = {
    luv = "1.44.2-1", ["lua-cjson"] = "2.1.0-1", argparse = "0.7.1-1",
    luaossl = "20220711-0", luasocket = "3.1.0-1", busted = "2.1.1-1",
  }

  it("lists every C source and Lua module of the tree", function()
    local f = assert(io.open(ROCKSPEC))
    local spec = f:read("a")
    f:close()
    for _, pattern in ipairs({ "csrc/*.c", "lua/wgoverlay/*.lua", "lua/wgoverlay/*/*.lua" }) do
      local p = io.popen("ls " .. pattern .. " 2>/dev/null")
      for path in p:lines() do
        assert.truthy(spec:find('"' .. path .. '"', 1, true), path .. " is missing from the rockspec")
      end
      p:close()
    end
  end)

  it("declares every Lua dependency with a version, a real source and a test section", function()
    local rs = load_rockspec()
    local deps = {}
    for _, d in ipairs(rs.dependencies) do
      local name, constraint = d:match("^%s*([%w%.%-_]+)%s*(.*)$")
      deps[name] = constraint
    end
    for _, name in ipairs({ "lua", "luv", "lua-cjson", "argparse", "luaossl", "luasocket" }) do
      assert.truthy(deps[name], name .. " is not declared")
      assert.matches(">=%s*%d", deps[name], 1, false, name .. " has no lower version bound")
    end
    -- every module the Lua code requires is covered
    local p = io.popen([[grep -rhoE 'require *\(? *"[a-z_.0-9]+"' lua bin]])
    local ROCK_OF = { luv = "luv", cjson = "lua-cjson", argparse = "argparse", openssl = "luaossl",
                      socket = "luasocket" }
    for line in p:lines() do
      local top = line:match('"([%w_]+)')
      if top ~= "wgoverlay" then
        assert.truthy(ROCK_OF[top], "require of an unknown module: " .. line)
        assert.truthy(deps[ROCK_OF[top]], ROCK_OF[top] .. " (for " .. top .. ") is not declared")
      end
    end
    p:close()
    -- each declared version is one the provided (Debian) version satisfies
    for name, constraint in pairs(deps) do
      if PROVIDED[name] then
        local low = constraint:match(">=%s*([%d%.]+)")
        local have = PROVIDED[name]:match("^([%d%.]+)")
        assert.truthy(low, name)
        local function parts(v)
          local t = {}
          for n in v:gmatch("%d+") do t[#t + 1] = tonumber(n) end
          return t
        end
        local a, b = parts(have), parts(low)
        local ok = true
        for i = 1, math.max(#a, #b) do
          if (a[i] or 0) ~= (b[i] or 0) then ok = (a[i] or 0) > (b[i] or 0) break end
        end
        assert.is_true(ok, ("%s %s does not satisfy %s"):format(name, have, constraint))
      end
    end
    assert.is_string(rs.source.url)
    assert.not_matches("/dev/null", rs.source.url, 1, true)
    assert.equals("command", rs.test.type)
    assert.matches("--run=unit", rs.test.command, 1, true)
    assert.truthy(rs.test_dependencies and rs.test_dependencies[1]:match("^busted"), "no busted test dependency")
  end)

  it("passes luarocks lint", function()
    if not have_luarocks() then
      pending("luarocks not installed")
      return
    end
    local ok, out = sh("luarocks --lua-version 5.4 lint " .. ROCKSPEC)
    assert.is_true(ok, out)
  end)

  it("builds and installs with luarocks make, offline; luarocks test runs the unit specs", function()
    if not have_luarocks() then
      pending("luarocks not installed")
      return
    end
    local _, dir = sh("mktemp -d /tmp/wgo-rock.XXXXXX")
    dir = dir:gsub("%s+$", "")
    finally(function() sh("rm -rf " .. dir) end)
    assert(sh(string.format("git ls-files -z | xargs -0 cp --parents -t %s", dir)))
    -- The Debian packages, declared to LuaRocks; without this `make` would
    -- try to download the rocks.
    local cfg = assert(io.open(dir .. "/luarocks-config.lua", "w"))
    cfg:write("rocks_provided = {\n")
    for name, version in pairs(PROVIDED) do cfg:write(("  [%q] = %q,\n"):format(name, version)) end
    cfg:write("}\n")
    cfg:close()
    local lr = string.format("cd %s && LUAROCKS_CONFIG=%s/luarocks-config.lua luarocks --lua-version 5.4 ", dir, dir)
    local ok, out = sh(lr .. string.format("make --tree %s/tree %s", dir, ROCKSPEC))
    assert.is_true(ok, out)
    assert.not_matches("Installing http", out, 1, true)
    local env = string.format('eval "$(luarocks --lua-version 5.4 path --tree %s/tree)" && ', dir)
    ok, out = sh(env .. [[cd / && lua5.4 -e 'local w = require "wgoverlay"; local a, b = w.generate_keys();
      assert(w.public_key(a) == b); require "wgoverlay.daemon";
      assert(package.searchpath("wgoverlay.core", package.cpath):find("/tree/", 1, true)); print("ok")']])
    assert.is_true(ok, out)
    assert.matches("ok", out)
    ok, out = sh(env .. string.format("%s/tree/bin/wgoverlay genkey | %s/tree/bin/wgoverlay pubkey", dir, dir))
    assert.is_true(ok, out)
    assert.equals(45, #out) -- 44 characters and a newline

    -- `luarocks test`: the unit specs, against the installed core module
    -- (the copy has no build/ directory).  Only keys_spec here, to keep it
    -- short: the test section's command is what is under test.
    ok, out = sh(env .. lr .. "test " .. ROCKSPEC .. " -- -o plainTerminal spec/unit/keys_spec.lua")
    assert.is_true(ok, out)
    assert.matches("[1-9]%d* successes / 0 failures / 0 errors", out)
    -- and it fails when a spec fails
    local bad = assert(io.open(dir .. "/spec/unit/zz_fails_spec.lua", "w"))
    bad:write('describe("x", function() it("fails", function() assert.is_true(false) end) end)\n')
    bad:close()
    ok, out = sh(env .. lr .. "test " .. ROCKSPEC .. " -- -o plainTerminal spec/unit/zz_fails_spec.lua")
    assert.is_falsy(ok, out)
    assert.matches("0 successes / 1 failure", out, 1, true)
  end)
end)
