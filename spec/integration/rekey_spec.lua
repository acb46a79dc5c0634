-- Rekeying under load, against a real wireguard-go: an iperf3 TCP run keeps
-- flowing, without a stalled second, while our side starts new handshakes
-- in the middle of it (the previous keypair keeps decrypting packets that
-- were in flight).  Needs root.
local helpers = require "spec.helpers"
local cjson = require "cjson"

local A_UNDER, B_UNDER = "192.0.2.1", "192.0.2.2"
local A_OVER, B_OVER = "10.88.0.1", "10.88.0.2"

describe("rekey under load #netns", function()
  local A, B

  lazy_setup(function()
    assert(helpers.is_root, "integration specs need root")
    A, B = { port = 51011, over_ip = A_OVER }, { port = 51012, over_ip = B_OVER }
    A.ns, B.ns = helpers.netns.new("a"), helpers.netns.new("b")
    helpers.netns.veth(A.ns, B.ns, { a = { A_UNDER .. "/24" }, b = { B_UNDER .. "/24" } })
    A.priv, A.pub = helpers.genkey()
    B.priv, B.pub = helpers.genkey()

    -- wireguard-go, configured with wg
    B.ifname = helpers.ifname("wr")
    B.proc = helpers.start_engine(B.ns, "wireguard-go", B.ifname)
    helpers.wg_set_interface(B.ns, B.ifname, { private_key = B.priv, listen_port = B.port })
    helpers.wg_set_peer(B.ns, B.ifname, A.pub, { allowed_ips = A_OVER .. "/32" })
    helpers.link_up(B.ns, B.ifname, { B_OVER .. "/24" })

    -- ours, through the Lua API in a driver process
    A.ifname = helpers.ifname("wr")
    A.drv = helpers.lua_driver(A.ns, { name = "rekey" })
    local ok, err = A.drv:call([[
      local ifname, priv, port, peer = ...
      t = assert(wgo.transport.new({ private_key = priv, listen_port = port, address = "10.88.0.1/24" }, ifname))
      assert(t:create_interface())
      return t:configure({ peer })
    ]], A.ifname, A.priv, A.port, { public_key = B.pub, endpoint = B_UNDER .. ":" .. B.port,
                                  allowed_ips = { B_OVER .. "/32" } })
    assert(ok, err)
    assert(helpers.wait_ping(A, B_OVER, 10), "no ping across the tunnel")
  end)

  lazy_teardown(function()
    helpers.cleanup()
  end)

  it("an iperf3 run survives two handshakes started in its middle", helpers.guard(function()
    local srv = B.ns:spawn("iperf3 -s -1 -p 5301", { name = "iperf3-server" })
    assert(helpers.wait_until(function()
      local _, out = B.ns:exec("ss -Hltn 'sport = :5301'")
      return out:match("LISTEN")
    end, 5, 0.05), srv:log())
    local client = A.ns:spawn("iperf3 -c " .. B_OVER .. " -p 5301 -t 10 -i 1 -J", { name = "iperf3-client" })
    local rekeys = {}
    for _, at in ipairs({ 3, 6 }) do
      helpers.sh("sleep 3") -- at 3 s and 6 s into the run
      local since = os.time()
      local ok, err = A.drv:call("return t:initiate_handshake(...)", B.pub)
      assert(ok, err)
      assert(helpers.wait_until(function()
        return A.drv:call("return t:check_handshake(...)", B.pub, since)
      -- wireguard-go drops datagrams when its receive buffer is full, so
      -- allow for one retry (REKEY_TIMEOUT + jitter)
      end, 12, 0.05), "no new handshake at " .. at .. " s")
      rekeys[#rekeys + 1] = since
    end
    assert(client:wait(20), "iperf3 did not finish")
    assert.equal(0, client:exit_code(), client:log())
    srv:wait(5)
    local result = cjson.decode(client:log():match("(%b{})%s*$"))
    local intervals = result.intervals
    assert.is_true(#intervals >= 9, "only " .. #intervals .. " intervals")
    for i, iv in ipairs(intervals) do
      -- every second carried data: the connection never stalled
      assert.is_true(iv.sum.bytes > 0, ("second %d carried nothing"):format(i))
    end
    assert.is_true(result["end"].sum_received.bytes > 10e6, "too little data: " .. result["end"].sum_received.bytes)
    -- wireguard-go saw the new sessions too
    local last = helpers.latest_handshake(B.ns, B.ifname, A.pub)
    assert.is_true(last >= rekeys[#rekeys], ("wireguard-go's last handshake %d < %d"):format(last, rekeys[#rekeys]))
  end))
end)
