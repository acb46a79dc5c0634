-- `make bench` (called by scripts/bench.sh): TCP throughput between two
-- containers on different nodes of a real cluster (leader + 2 nodes,
-- `wgoverlay run` daemons in namespaces, spec/cluster_fixture.lua) with no
-- policy, then with a 1,000-rule policy in force (999 rules that do not
-- match, each with its own label selector, and the one that allows the
-- client), as a ratio (target >= 0.9).  iperf3, BENCH_SECONDS per run
-- (default 10), the runs alternated: none, policy, none, policy; the
-- means are compared.  Needs root; everything lives in namespaces made
-- here and is removed on exit.
-- Run: lua5.4 scripts/bench_policy.lua   (from the repository root)
package.path = "./lua/?.lua;./lua/?/init.lua;./?.lua;" .. package.path
package.cpath = "./" .. (os.getenv("WGO_BUILD_DIR") or "build") .. "/?.so;" .. package.cpath
local helpers = require "spec.helpers"
local fixture = require "spec.cluster_fixture"
local cjson = require "cjson"

local SECS = tonumber(os.getenv("BENCH_SECONDS") or "10")
local RULES = tonumber(os.getenv("BENCH_POLICY_RULES") or "1000")
local quote = helpers.quote

local cl
local ok, err = xpcall(function()
  cl = fixture.new()
  local L = cl:leader("leader", "192.0.2.1")
  local A, B = cl:node("a", "192.0.2.2"), cl:node("b", "192.0.2.3")
  cl:start(L)
  local tok = cl:token(L, 2)
  cl:join(A, tok)
  cl:join(B, tok)
  cl:start(A)
  cl:start(B)
  local client = cl:attach("cli", A, "client", "--label app=client")
  local server = cl:attach("srv", B, "server", "--label app=server")
  server.ns:spawn("iperf3 -s -p 5201", { name = "iperf3-server" })
  cl:wait_health(A, { "b" }, true, 30)
  assert(helpers.wait_ping(client, server.ip, 15), "client cannot reach the server")


  local function iperf()
    local out = client.ns:must(("iperf3 -c %s -p 5201 -t %d -J"):format(server.ip, SECS))
    return cjson.decode(out)["end"].sum_received.bits_per_second / 1e9
  end

  local rules = {}
  for i = 1, RULES - 1 do
    rules[i] = { from = { team = "t" .. i }, to = { app = "server" }, ports = { "tcp/" .. (10000 + i) } }
  end
  rules[RULES] = { from = { app = "client" }, to = { app = "server" }, ports = { "tcp/5201" } }
  local path = helpers.tmpdir() .. "/policy.json"
  helpers.write_file(path, cjson.encode({ default = "deny", rules = rules }))
  local allow = helpers.tmpdir() .. "/allow.json"
  helpers.write_file(allow, cjson.encode({ default = "allow", rules = {} }))

  local version = 0
  local function apply(file)
    local t0 = require("socket").gettime()
    cl:must_cli(L.ns, ("policy apply --state %s %s"):format(quote(L.dir), quote(file)))
    version = version + 1
    assert(helpers.wait_until(function()
      local st = cl:status(B)
      return st and st.policy.enforced_version == version
    end, 30, 0.05), "policy not enforced on b")
    return require("socket").gettime() - t0
  end

  local none, pol, took = {}, {}, nil
  for round = 1, 2 do
    if round > 1 then apply(allow) end
    none[#none + 1] = iperf()
    local t = apply(path)
    took = took or t
    pol[#pol + 1] = iperf()
  end
  local st = cl:status(B)
  local function mean(t)
    local sum = 0
    for _, v in ipairs(t) do sum = sum + v end
    return sum / #t
  end
  local function list(t)
    local o = {}
    for i, v in ipairs(t) do o[i] = ("%.3f"):format(v) end
    return table.concat(o, ", ")
  end
  local n, p = mean(none), mean(pol)
  print(("policy bench: TCP between containers on two nodes, iperf3 %d s x 2 each"):format(SECS))
  print(("  no policy        %6.3f Gbit/s  (runs: %s)"):format(n, list(none)))
  print(("  %4d-rule policy %6.3f Gbit/s  (runs: %s)"):format(RULES, p, list(pol)))
  print(("  ratio            %6.3f  (target >= 0.9)"):format(p / n))
  print(("  %d-rule policy stored and enforced on the server's node in %.2f s; drops there: %d packets")
    :format(RULES, took, st.policy.dropped_packets))
end, debug.traceback)
if cl then pcall(cl.teardown, cl) end
if not ok then
  io.stderr:write("bench_policy: ", tostring(err), "\n")
  os.exit(1)
end
