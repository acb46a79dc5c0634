-- Replies leave from the address a packet arrived on: B has two underlay
-- addresses and A talks to the second one.  If B answered from its first
-- (the kernel's default choice), A would see the handshake response come
-- from another address and roam there; with IP_PKTINFO / IPV6_PKTINFO B
-- answers from the address A used, so A's endpoint for B stays put.  Also
-- checked with wireguard-go as A, which roams the same way.  Needs root.
local helpers = require "spec.helpers"

for _, fam in ipairs({ "v4", "v6" }) do
  for _, impl_a in ipairs({ "ours", "wireguard-go" }) do
    describe(("multi-homed responder (%s, A = %s) #netns"):format(fam, impl_a), function()
      local f = helpers.families[fam]
      local t

      lazy_setup(function()
        assert(helpers.is_root, "integration specs need root")
        -- the primary address comes first, so it is the kernel's choice
        t = helpers.two_nodes({ family = fam, impl_a = impl_a, impl_b = "ours" })
        local alt = f.under_alt
        t.b.ns:exec(("ip addr add %s dev %s %s"):format(alt, t.b.veth, fam == "v6" and "nodad" or ""))
        t.alt_ip = alt:gsub("/%d+$", "")
        -- A reaches B only through B's second address
        helpers.wg_set_peer(t.a.ns, t.a.ifname, t.b.pub, { endpoint = helpers.endpoint(t.alt_ip, t.b.port) })
        -- B must not know A's endpoint in advance: it learns it from A
        helpers.wg(t.b.ns, ("set %s peer %s remove"):format(t.b.ifname, t.a.pub))
        helpers.wg_set_peer(t.b.ns, t.b.ifname, t.a.pub, {
          allowed_ips = ("%s/%d"):format(t.a.over_ip, f.host) })
      end)

      lazy_teardown(function()
        helpers.cleanup()
      end)

      it("answers from the address it was reached on", helpers.guard(function()
        assert(helpers.wait_ping(t.a, t.b.over_ip, 10), "no ping across the tunnel")
        assert.is_true(helpers.latest_handshake(t.a.ns, t.a.ifname, t.b.pub) > 0)
        -- more traffic both ways, then A's view of B's endpoint
        assert.is_true(t.b.ns:ping(t.a.over_ip, 3, 2))
        local endpoints = helpers.wg_show_map(t.a.ns, t.a.ifname, "endpoints")
        assert.equal(helpers.endpoint(t.alt_ip, t.b.port), endpoints[t.b.pub])
      end))
    end)
  end
end
