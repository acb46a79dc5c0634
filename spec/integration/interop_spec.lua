-- Interoperability between our engine and wireguard-go over a veth between
-- two network namespaces, IPv4 and IPv6 (underlay and overlay alike).
-- Needs root.  WGO_TEST_IMPL=wireguard-go replaces "ours" by wireguard-go.

local helpers = require "spec.helpers"

local PAIRS = {
  { "ours", "wireguard-go" },
  { "wireguard-go", "ours" },
  { "ours", "ours" },
}

local function sum(t, field)
  local n = 0
  for _, p in pairs(t.peers) do n = n + (p[field] or 0) end
  return n
end

-- Wait for the clock to reach the next whole second, so that a new
-- handshake shows as a larger `latest-handshakes` value (1 s resolution).
local function next_second()
  local now = helpers.now()
  helpers.sleep(math.floor(now) + 1.05 - now)
end

-- Every build picks its AEAD at load time: our AVX-512 code on a CPU that
-- has AVX-512 (with IFMA), libsodium otherwise or with WGO_AEAD=libsodium
-- (make check runs this file both ways).  The engine must really run the
-- one expected, or a second pass would test the same code again.
describe("the AEAD of the engine under test #netns", function()
  it("is avx512 on an AVX-512 CPU unless WGO_AEAD=libsodium, libsodium otherwise", helpers.guard(function()
    local core = require "wgoverlay.core"
    local f = assert(io.open("/proc/cpuinfo"))
    local flags = f:read("a")
    f:close()
    local cpu_ok = true
    for _, fl in ipairs({ "avx512f", "avx512vl", "avx512bw", "avx512ifma", "bmi2" }) do
      cpu_ok = cpu_ok and flags:find("%f[%w]" .. fl .. "%f[%W]") ~= nil
    end
    local forced = os.getenv("WGO_AEAD") -- anything but auto (or unset) gives libsodium
    forced = forced ~= nil and forced ~= "" and forced ~= "auto"
    local want = (cpu_ok and not forced) and "avx512" or "libsodium"
    assert.are.equal(want, core.aead_name())
    if helpers.ours_is_real() then
      -- and the engine process says so on its start line
      local t = helpers.two_nodes({ impl_a = "ours", impl_b = "ours", family = "v4" })
      local ok = helpers.wait_until(function() return t.a.proc:log():find("AEAD " .. want, 1, true) end, 5, 0.05)
      assert.truthy(ok, "engine start line does not name AEAD " .. want)
    end
  end, true))
end)

for _, pair in ipairs(PAIRS) do
  for _, family in ipairs({ "v4", "v6" }) do
    local title = ("%s <-> %s over %s #netns"):format(pair[1], pair[2], family)

    describe(title, function()
      local t -- topology from helpers.two_nodes

      lazy_setup(function()
        t = helpers.two_nodes({ impl_a = pair[1], impl_b = pair[2], family = family })
      end)

      lazy_teardown(helpers.cleanup)

      it("completes a handshake and pings across the overlay", helpers.guard(function()
        local a, b = t.a, t.b
        assert.truthy(helpers.wait_ping(a, b.over_ip, 10), "a cannot ping b over the tunnel")
        assert.truthy(b.ns:ping(a.over_ip, 3, 2), "b cannot ping a over the tunnel")
        local hs_a = helpers.latest_handshake(a.ns, a.ifname, b.pub)
        local hs_b = helpers.latest_handshake(b.ns, b.ifname, a.pub)
        assert.is_true(hs_a > 0, "no handshake recorded on a")
        assert.is_true(hs_b > 0, "no handshake recorded on b")
        -- the handshake happened just now, not at some bogus time
        local now = os.time()
        assert.is_true(math.abs(now - hs_a) < 60, "latest handshake on a is not recent")
        assert.is_true(math.abs(now - hs_b) < 60, "latest handshake on b is not recent")
        -- each side learned the other's endpoint as configured
        local da, db = helpers.wg_dump(a.ns, a.ifname), helpers.wg_dump(b.ns, b.ifname)
        assert.equal(helpers.endpoint(b.under, b.port), da.peers[b.pub].endpoint)
        assert.equal(helpers.endpoint(a.under, a.port), db.peers[a.pub].endpoint)
      end))

      it("carries an iperf3 TCP stream and counts it", helpers.guard(function()
        local a, b = t.a, t.b
        assert.truthy(helpers.wait_ping(a, b.over_ip, 10))
        local da0, db0 = helpers.wg_dump(a.ns, a.ifname), helpers.wg_dump(b.ns, b.ifname)
        local res = helpers.iperf3(a, b, 2)
        local sent = res["end"].sum_sent.bytes
        local received = res["end"].sum_received.bytes
        assert.is_true(sent > 0, "iperf3 sent nothing")
        assert.is_true(received > 0, "iperf3 received nothing")
        local da1, db1 = helpers.wg_dump(a.ns, a.ifname), helpers.wg_dump(b.ns, b.ifname)
        local pa0, pa1 = da0.peers[b.pub], da1.peers[b.pub]
        local pb0, pb1 = db0.peers[a.pub], db1.peers[a.pub]
        -- encrypted bytes are at least the plaintext TCP payload
        assert.is_true(pa1.tx - pa0.tx >= received,
          ("a tx grew by %d, less than %d payload bytes"):format(pa1.tx - pa0.tx, received))
        assert.is_true(pb1.rx - pb0.rx >= received,
          ("b rx grew by %d, less than %d payload bytes"):format(pb1.rx - pb0.rx, received))
        -- and the ACK direction is counted too
        assert.is_true(pa1.rx > pa0.rx, "a rx did not grow")
        assert.is_true(pb1.tx > pb0.tx, "b tx did not grow")
      end))

      it("re-handshakes after the peer is removed and re-added", helpers.guard(function()
        local a, b = t.a, t.b
        assert.truthy(helpers.wait_ping(a, b.over_ip, 10))
        local hs_a0 = helpers.latest_handshake(a.ns, a.ifname, b.pub)
        local hs_b0 = helpers.latest_handshake(b.ns, b.ifname, a.pub)
        assert.is_true(hs_a0 > 0 and hs_b0 > 0)
        local rx_b0 = helpers.wg_dump(b.ns, b.ifname).peers[a.pub].rx
        next_second()
        -- forget the session on a: remove the peer and add it back
        helpers.wg(a.ns, ("set %s peer %s remove"):format(a.ifname, b.pub))
        assert.is_nil(helpers.wg_dump(a.ns, a.ifname).peers[b.pub], "peer still listed after remove")
        assert.falsy(a.ns:ping(b.over_ip, 1, 1), "ping passed with the peer removed")
        helpers.wg_set_peer(a.ns, a.ifname, b.pub, {
          endpoint = helpers.endpoint(b.under, b.port),
          allowed_ips = ("%s/%d"):format(b.over_ip, t.fam.host),
        })
        local readded = helpers.wg_dump(a.ns, a.ifname).peers[b.pub]
        assert.equal(0, readded.latest_handshake, "a re-added peer starts without a handshake")
        assert.truthy(helpers.wait_ping(a, b.over_ip, 10), "no traffic after re-adding the peer")
        assert.truthy(b.ns:ping(a.over_ip, 3, 2), "b cannot ping a after the re-handshake")
        local hs_a1 = helpers.latest_handshake(a.ns, a.ifname, b.pub)
        local hs_b1 = helpers.latest_handshake(b.ns, b.ifname, a.pub)
        assert.is_true(hs_a1 > hs_a0, ("a: handshake %d not newer than %d"):format(hs_a1, hs_a0))
        assert.is_true(hs_b1 > hs_b0, ("b: handshake %d not newer than %d"):format(hs_b1, hs_b0))
        local db = helpers.wg_dump(b.ns, b.ifname)
        assert.is_true(db.peers[a.pub].rx > rx_b0, "b's rx counter did not grow")
      end))

      it("re-handshakes with a new preshared key on both sides", helpers.guard(function()
        local a, b = t.a, t.b
        assert.truthy(helpers.wait_ping(a, b.over_ip, 10))
        local hs_a0 = helpers.latest_handshake(a.ns, a.ifname, b.pub)
        local hs_b0 = helpers.latest_handshake(b.ns, b.ifname, a.pub)
        next_second()
        -- a different psk on each side: a fresh handshake can never complete
        helpers.wg_set_peer(a.ns, a.ifname, b.pub, { preshared_key = helpers.genpsk() })
        helpers.wg_set_peer(b.ns, b.ifname, a.pub, { preshared_key = helpers.genpsk() })
        helpers.wg(a.ns, ("set %s peer %s remove"):format(a.ifname, b.pub))
        helpers.wg_set_peer(a.ns, a.ifname, b.pub, {
          endpoint = helpers.endpoint(b.under, b.port),
          allowed_ips = ("%s/%d"):format(b.over_ip, t.fam.host),
          preshared_key = helpers.genpsk(),
        })
        assert.falsy(a.ns:ping(b.over_ip, 2, 2), "handshake succeeded with mismatched psk")
        assert.equal(0, helpers.latest_handshake(a.ns, a.ifname, b.pub))
        -- now the same psk on both sides
        local psk = helpers.genpsk()
        helpers.wg_set_peer(a.ns, a.ifname, b.pub, { preshared_key = psk })
        helpers.wg_set_peer(b.ns, b.ifname, a.pub, { preshared_key = psk })
        -- a's pending handshake retries every REKEY_TIMEOUT (5 s)
        assert.truthy(helpers.wait_ping(a, b.over_ip, 15), "no traffic with a matching psk")
        assert.is_true(helpers.latest_handshake(a.ns, a.ifname, b.pub) > hs_a0)
        assert.is_true(helpers.latest_handshake(b.ns, b.ifname, a.pub) > hs_b0)
        local da = helpers.wg_dump(a.ns, a.ifname)
        assert.equal(psk, da.peers[b.pub].preshared_key)
      end))

      it("keeps counters that increase with traffic", helpers.guard(function()
        local a, b = t.a, t.b
        assert.truthy(helpers.wait_ping(a, b.over_ip, 10))
        local da0, db0 = helpers.wg_dump(a.ns, a.ifname), helpers.wg_dump(b.ns, b.ifname)
        assert.truthy(a.ns:ping(b.over_ip, 5, 2))
        local da1, db1 = helpers.wg_dump(a.ns, a.ifname), helpers.wg_dump(b.ns, b.ifname)
        -- 5 echo requests of 84 bytes + 32 bytes overhead each at least
        assert.is_true(sum(da1, "tx") - sum(da0, "tx") >= 5 * 84)
        assert.is_true(sum(da1, "rx") - sum(da0, "rx") >= 5 * 84)
        assert.is_true(sum(db1, "tx") - sum(db0, "tx") >= 5 * 84)
        assert.is_true(sum(db1, "rx") - sum(db0, "rx") >= 5 * 84)
        -- one peer each, 8 fields per peer line
        assert.equal(1, da1.npeers)
        assert.equal(8, da1.peers[b.pub].nfields)
      end))

      if pair[1] == "ours" and pair[2] == "ours" then
        it("follows the peer when its underlay address moves (roaming)", helpers.guard(function()
          local a, b = t.a, t.b
          assert.truthy(helpers.wait_ping(b, a.over_ip, 10))
          local before = helpers.wg_show_map(a.ns, a.ifname, "endpoints")[b.pub]
          assert.equal(helpers.endpoint(b.under, b.port), before)
          -- move b to another address in the same subnet
          b.ns:del_addr(b.veth, b.under)
          b.ns:addr(b.veth, t.fam.under_alt)
          local new_ep = helpers.endpoint(t.fam.under_alt, b.port)
          -- traffic from the moved side makes a learn the new endpoint
          assert.truthy(helpers.wait_until(function()
            b.ns:ping(a.over_ip, 1, 1)
            return helpers.wg_show_map(a.ns, a.ifname, "endpoints")[b.pub] == new_ep
          end, 20, 0.2), "a did not learn b's new endpoint " .. new_ep)
          assert.truthy(b.ns:ping(a.over_ip, 3, 2), "b cannot ping a after moving")
          assert.truthy(a.ns:ping(b.over_ip, 3, 2), "a cannot ping b after b moved")
          assert.equal(new_ep, helpers.wg_show_map(a.ns, a.ifname, "endpoints")[b.pub])
        end))
      end
    end)
  end
end
