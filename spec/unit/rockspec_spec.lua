-- `luarocks make` builds and installs the rock from a copy of the checkout
-- into a private tree, and the installed module and CLI work.
describe("rockspec", function()
  local function sh(cmd)
    local p = io.popen(cmd .. " 2>&1")
    local out = p:read("a")
    local ok, _, code = p:close()
    return ok, out, code
  end

  it("lists every C source and Lua module of the tree", function()
    local f = assert(io.open("wgoverlay-scm-1.rockspec"))
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

  it("builds and installs with luarocks make", function()
    if not sh("command -v luarocks >/dev/null") then
      pending("luarocks not installed")
      return
    end
    local _, dir = sh("mktemp -d /tmp/wgo-rock.XXXXXX")
    dir = dir:gsub("%s+$", "")
    finally(function() sh("rm -rf " .. dir) end)
    assert(sh(string.format("git ls-files -z | xargs -0 cp --parents -t %s", dir)))
    local ok, out = sh(string.format("cd %s && luarocks --lua-version 5.4 make --tree %s/tree wgoverlay-scm-1.rockspec",
      dir, dir))
    assert.is_true(ok, out)
    local env = string.format('eval "$(luarocks --lua-version 5.4 path --tree %s/tree)" && cd / && ', dir)
    ok, out = sh(env .. [[lua5.4 -e 'local w = require "wgoverlay"; local a, b = w.generate_keys();
      assert(w.public_key(a) == b); require "wgoverlay.daemon"; print("ok")']])
    assert.is_true(ok, out)
    assert.matches("ok", out)
    ok, out = sh(env .. string.format("%s/tree/bin/wgoverlay genkey | %s/tree/bin/wgoverlay pubkey", dir, dir))
    assert.is_true(ok, out)
    assert.equals(45, #out) -- 44 characters and a newline
  end)
end)
