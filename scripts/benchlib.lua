-- Helpers shared by the tables of scripts/bench.sh and scripts/bench_scale.sh
-- (loaded with dofile from the repository root).
local M = {}

-- The first number in the file DIR/ROW.WHAT, or nil.
function M.num(dir, row, what)
  local f = io.open(("%s/%s.%s"):format(dir, row, what))
  local v = f and tonumber((f:read("a"):match("[%d.]+")))
  if f then f:close() end
  return v
end

-- Prints rows of cells (the first row is the header) as an aligned
-- Markdown table.
function M.print_table(lines)
  local width = {}
  for _, l in ipairs(lines) do
    for i, c in ipairs(l) do width[i] = math.max(width[i] or 0, #c) end
  end
  for n, l in ipairs(lines) do
    local cells = {}
    for i, c in ipairs(l) do cells[i] = c .. (" "):rep(width[i] - #c) end
    print("| " .. table.concat(cells, " | ") .. " |")
    if n == 1 then
      local sep = {}
      for i = 1, #l do sep[i] = ("-"):rep(width[i]) end
      print("| " .. table.concat(sep, " | ") .. " |")
    end
  end
end

return M
