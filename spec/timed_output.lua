-- busted output handler: plainTerminal's output, then one line per spec
-- file with its wall time, slowest first, after the summary line:
--   time: 151 s  spec/integration/nat_spec.lua
-- scripts/check.sh uses it (`-o spec/timed_output.lua`) so that a CI log
-- shows where the run's time goes.
return function(options)
  local busted = require("busted")
  local handler = require("busted.outputHandlers.plainTerminal")(options)
  local times, order, started = {}, {}, {}

  busted.subscribe({ "file", "start" }, function(file)
    started[file.name] = os.time()
    return nil, true
  end)
  busted.subscribe({ "file", "end" }, function(file)
    local t0 = started[file.name]
    if t0 then
      if not times[file.name] then order[#order + 1] = file.name end
      times[file.name] = (times[file.name] or 0) + os.difftime(os.time(), t0)
      started[file.name] = nil
    end
    return nil, true
  end)
  -- subscribed after plainTerminal's: prints after the summary line
  busted.subscribe({ "suite", "end" }, function()
    table.sort(order, function(a, b)
      if times[a] ~= times[b] then return times[a] > times[b] end
      return a < b
    end)
    for _, name in ipairs(order) do
      io.write(string.format("time: %4d s  %s\n", math.floor(times[name]), name))
    end
    io.flush()
    return nil, true
  end)
  return handler
end
