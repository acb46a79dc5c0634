-- The port mapper's state machine (wgoverlay.nat.portmap): when it asks
-- the router, what it keeps of an answer, renewals at half the lease,
-- retries after failures, expiry, deletion at stop, status.  Injected
-- clock and executor: no router, no threads.
local portmap = require "wgoverlay.nat.portmap"

local function new(o)
  local clock = { t = 1000 }
  local jobs, ran = {}, {}
  o = o or {}
  local pm = portmap.new({
    port = o.port or 51820, lease = o.lease, clock = function() return clock.t end,
    exec = function(job, cb) jobs[#jobs + 1] = { job = job, cb = cb } end,
    run = function(job)
      ran[#ran + 1] = job
      if o.run_fails then return nil, o.run_fails end
      return { protocol = job.protocol }
    end,
  })
  return pm, clock, jobs, ran
end

local NATPMP = { protocol = "natpmp", external_ip = "198.51.100.7", external_port = 51820, lease = 120,
                 gateway = "10.1.0.1" }

describe("nat.portmap", function()
  it("asks at once for our port, one request at a time", function()
    local pm, clock, jobs = new()
    assert.is_true(pm:first_pending())
    pm:tick()
    assert.equal(1, #jobs)
    assert.same({ op = "map", port = 51820, external = 51820, lease = portmap.LEASE }, jobs[1].job)
    clock.t = clock.t + 5
    pm:tick()
    assert.equal(1, #jobs)
    assert.equal("requesting", pm:status().state)
  end)

  it("keeps a mapping, publishes it, renews it at half the lease with the same protocol and port", function()
    local pm, clock, jobs = new({ lease = 120 })
    pm:tick()
    jobs[1].cb({ protocol = "upnp", external_ip = "198.51.100.7", external_port = 40000, lease = 120,
                 gateway = "http://10.1.0.1:5000/ctl", control_url = "http://10.1.0.1:5000/ctl",
                 service_type = "urn:schemas-upnp-org:service:WANIPConnection:2" })
    assert.is_false(pm:first_pending())
    assert.equal("198.51.100.7:40000", pm:mapped())
    local s = pm:status()
    assert.equal("mapped", s.state)
    assert.equal("upnp", s.protocol)
    assert.equal("198.51.100.7:40000", s.external)
    assert.equal(60, s.renew_in)
    assert.equal(120, s.expires_in)
    clock.t = clock.t + 59
    pm:tick()
    assert.equal(1, #jobs)
    clock.t = clock.t + 1
    pm:tick()
    assert.equal(2, #jobs)
    -- the router gave port 40000: we ask for it again, UPnP first
    assert.same({ op = "map", port = 51820, external = 40000, lease = 120, protocol = "upnp" }, jobs[2].job)
  end)

  it("keeps a mapping whose renewal failed until its lease ends, then drops it", function()
    local pm, clock, jobs = new()
    pm:tick()
    jobs[1].cb(NATPMP)
    clock.t = clock.t + 60
    pm:tick()
    jobs[2].cb(nil, "NAT-PMP: no answer from the gateway")
    local s = pm:status()
    assert.equal("mapped", s.state)
    assert.equal("NAT-PMP: no answer from the gateway", s.error)
    assert.equal("198.51.100.7:51820", pm:mapped())
    assert.equal(portmap.retry_after(1), s.renew_in)
    clock.t = clock.t + 60
    assert.is_nil(pm:mapped())
    pm:tick()
    assert.equal(3, #jobs)
    -- an expired mapping is not asked for by protocol any more
    assert.same({ op = "map", port = 51820, external = 51820, lease = portmap.LEASE }, jobs[3].job)
  end)

  it("retries a failure later and later, up to RETRY_MAX", function()
    local pm, clock, jobs = new()
    local waits = {}
    for i = 1, 8 do
      pm:tick()
      assert.equal(i, #jobs)
      jobs[i].cb(nil, "UPnP: no Internet Gateway Device answered")
      waits[i] = pm:status().renew_in
      assert.equal("failed", pm:status().state)
      assert.is_nil(pm:mapped())
      clock.t = clock.t + waits[i]
    end
    assert.equal(portmap.RETRY, waits[1])
    assert.equal(2 * portmap.RETRY, waits[2])
    assert.equal(portmap.RETRY_MAX, waits[8])
    assert.is_false(pm:first_pending())
  end)

  it("refuses an answer without a usable address", function()
    local pm, _, jobs = new()
    pm:tick()
    jobs[1].cb({ protocol = "natpmp", external_ip = "198.51.100.7", external_port = 0, lease = 120 })
    assert.equal("failed", pm:status().state)
    assert.is_nil(pm:mapped())
  end)

  it("asks again at once when told a path died", function()
    local pm, clock, jobs = new()
    pm:tick()
    jobs[1].cb(NATPMP)
    clock.t = clock.t + 10
    pm:refresh()
    pm:tick()
    assert.equal(2, #jobs)
  end)

  it("a permanent mapping (lease 0) never expires and is checked every PERMANENT_CHECK", function()
    local pm, clock, jobs = new()
    pm:tick()
    jobs[1].cb({ protocol = "upnp", external_ip = "198.51.100.7", external_port = 51820, lease = 0 })
    assert.equal(portmap.PERMANENT_CHECK, pm:status().renew_in)
    clock.t = clock.t + 10 * portmap.PERMANENT_CHECK
    assert.equal("198.51.100.7:51820", pm:mapped())
  end)

  it("deletes the mapping at stop, and ignores a late answer", function()
    local pm, clock, jobs, ran = new()
    pm:tick()
    jobs[1].cb(NATPMP)
    clock.t = clock.t + 60
    pm:tick()
    assert.is_true(pm:stop())
    assert.same({ { op = "unmap", port = 51820, external = 51820, protocol = "natpmp" } }, ran)
    jobs[2].cb(NATPMP)
    assert.is_nil(pm:mapped())
    assert.equal("stopped", pm:status().state)
    pm:tick()
    assert.equal(2, #jobs)
    -- nothing mapped, nothing to delete
    local pm2, _, _, ran2 = new()
    assert.is_true(pm2:stop())
    assert.same({}, ran2)
  end)

  it("reports a deletion the router refused", function()
    local pm, _, jobs = new({ run_fails = "UPnP: DeletePortMapping 51820: NoSuchEntryInArray (714)" })
    pm:tick()
    jobs[1].cb(NATPMP)
    local ok, err = pm:stop()
    assert.is_nil(ok)
    assert.matches("714", err)
  end)

  it("maps only for a node with a private address, unless turned off", function()
    assert.is_true(portmap.wanted({}, "10.1.0.2:51820"))
    assert.is_true(portmap.wanted({ portmap = 1 }, "192.168.1.20:51820"))
    assert.is_true(portmap.wanted(nil, "172.20.0.2:51820"))
    assert.is_true(portmap.wanted(nil, "100.70.0.2:51820"))
    assert.is_false(portmap.wanted({ portmap = 0 }, "10.1.0.2:51820"))
    assert.is_false(portmap.wanted({}, "203.0.113.1:51820"))
    assert.is_false(portmap.wanted({}, "172.32.0.2:51820"))
    assert.is_false(portmap.wanted({}, "[fd00::2]:51820"))
  end)

  it("checks its arguments, and unknown protocols in a job", function()
    assert.has_error(function() portmap.new({ port = 0, clock = os.time, exec = print }) end)
    assert.has_error(function() portmap.new({ port = 51820, lease = -1, clock = os.time, exec = print }) end)
    local r, err = portmap.run_job({ op = "unmap", port = 51820, external = 51820, protocol = "pcp" })
    assert.is_nil(r)
    assert.matches("unknown protocol", err)
  end)

  it("the library calls refuse bad arguments with an error, not a crash", function()
    local core = require "wgoverlay.core"
    assert.has_error(function() core.natpmp_map(0, 51820, 120) end)
    assert.has_error(function() core.natpmp_map(51820, 70000, 120) end)
    assert.has_error(function() core.natpmp_map(51820, 51820, -1) end)
    assert.has_error(function() core.natpmp_map(51820, 51820, 120, 0) end)
    assert.has_error(function() core.natpmp_map(51820, 51820, 120, 100, "not-an-ip") end)
    assert.has_error(function() core.upnp_map(51820, 51820, 120) end)
    assert.has_error(function() core.upnp_map(51820, 51820, 1e9, "x") end)
    assert.has_error(function() core.upnp_delete("file:///etc/passwd", "t", 51820) end)
  end)
end)
