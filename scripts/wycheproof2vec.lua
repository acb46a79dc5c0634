-- Converts one of Wycheproof's JSON test files (tests/vectors/*_test.json,
-- see tests/vectors/LICENSE-wycheproof) into lines the C tests read
-- without a JSON parser (run by the Makefile into build*/tests/vectors/):
--   AEAD files:   tcId result key iv aad msg ct tag
--   X25519 files: tcId result public private shared
-- hex fields, "-" for an empty one; result is valid, invalid or
-- acceptable; a last line "end N" gives the number of tests (a truncated
-- file then fails the test instead of passing with fewer vectors).
-- Usage: lua5.4 scripts/wycheproof2vec.lua IN.json OUT.vec
local cjson = require "cjson"

local src, dst = arg[1], arg[2]
assert(src and dst, "usage: wycheproof2vec.lua IN.json OUT.vec")
local f = assert(io.open(src, "rb"))
local j = cjson.decode(f:read("a"))
f:close()

local function hex(s)
  assert(type(s) == "string" and s:match("^%x*$"), "not a hex string")
  return s == "" and "-" or s:lower()
end

local lines, n = {}, 0
local x25519 = j.algorithm == "XDH"
for _, g in ipairs(j.testGroups) do
  if x25519 then assert(g.curve == "curve25519", "X25519 file with another curve: " .. tostring(g.curve)) end
  for _, t in ipairs(g.tests) do
    local fields
    if x25519 then
      fields = { hex(t.public), hex(t.private), hex(t.shared) }
    else
      fields = { hex(t.key), hex(t.iv), hex(t.aad), hex(t.msg), hex(t.ct), hex(t.tag) }
    end
    lines[#lines + 1] = ("%d %s %s"):format(t.tcId, t.result, table.concat(fields, " "))
    n = n + 1
  end
end
assert(n == j.numberOfTests, ("%s: %d tests, header says %d"):format(src, n, j.numberOfTests))
lines[#lines + 1] = ("end %d"):format(n)

local tmp = dst .. ".tmp"
local o = assert(io.open(tmp, "wb"))
o:write("# from ", src, " (", j.algorithm, ", Wycheproof; tests/vectors/LICENSE-wycheproof)\n")
o:write(table.concat(lines, "\n"), "\n")
assert(o:close())
assert(os.rename(tmp, dst))
