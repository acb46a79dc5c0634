--- How one peer is reached: a per-peer state machine choosing the WireGuard
-- path.  Pure: the caller feeds observations and the clock, and carries out
-- the actions `tick` returns.
--
-- Order of preference: **direct** (the peer's advertised endpoint, or one
-- WireGuard learned by roaming, answers; when STUN says both sides are
-- behind NATs the advertised endpoint is only probed, together with the
-- other candidates, without waiting `direct_timeout`), then **hole-punched**
-- (coordinated probing of the peer's candidates found an address that
-- answers; **port-mapped** when that address is one the peer's router
-- mapped for it, see below), then **relayed** (a TURN channel).  A relayed peer is offered
-- an upgrade every `upgrade_interval` seconds (a punch round; the relayed
-- path stays in use while it runs); a direct or hole-punched path that
-- shows no sign of life for `dead_after` seconds falls back to the relay
-- (or, without one, starts over).
--
-- Port mappings (wgoverlay.nat.portmap): a side whose router mapped its
-- WireGuard port publishes a "mapped" candidate, reachable from anywhere.
-- A punch is then tried even between two endpoint-dependent (symmetric)
-- NATs, where probing alone cannot work, and a path found by it counts as
-- **port-mapped** when its address is the peer's mapped candidate, or when
-- both NATs are symmetric (only a mapping lets a packet through one of
-- them: the peer's reply may come from a fresh port of its NAT, a
-- peer-reflexive address that exists thanks to our mapping).  A mapping
-- that appears while the peer is relayed brings the upgrade forward.
--
-- IPv6: a peer's host candidates are addresses the peer itself holds, so
-- a path confirmed at one of them is "direct" whatever the IPv4 NATs.
-- When both sides have a global IPv6 address (`set_remote{ v6 = true }`)
-- a punch is tried even between two symmetric IPv4 NATs (its probes go to
-- the IPv6 host candidates first, see wgoverlay.nat.agent), and a
-- hole-punched or relayed path over IPv4 is offered an upgrade every
-- `upgrade_interval` seconds, which a confirmed IPv6 host address wins.
--
-- `connection` is always exactly one of "direct", "hole-punched",
-- "port-mapped", "relayed": the kind of the last path confirmed to work (initially
-- "direct", what a freshly configured peer uses); `changed_at` is when it
-- last changed.  `phase` says what the machine is doing ("start",
-- "direct", "punch-wait", "punching", "confirm", "relay-wait", "relay",
-- "up", "failed").
--
-- Inputs:
--
-- * `alive(t)`: proof of a round trip with the peer at time t (a completed
--   WireGuard handshake, an answered health probe through the tunnel);
-- * `observe(endpoint, relay_channel)`: the endpoint the engine uses now
--   (WireGuard roams to the source of the latest authenticated packet);
-- * `set_remote{ endpoint, nat, punchable, mapped, hosts, v6 }`: the peer's
--   record (`mapped`: set of its mapped candidates' "IP:PORT"; `hosts`:
--   its host candidate endpoints; `v6`: both sides have a global IPv6
--   address, so a direct IPv6 path may exist);
-- * `set_local_mapped(bool)`: our router mapped our port;
-- * `set_local_nat(kind)`, `set_relay(server, channel)` (a channel to the
--   peer's relayed address is bound on our allocation; nil: none);
-- * `punch_started()`: the coordinated probing began (the leader's go);
--   `punch_result(endpoint or nil)`: it found an address, or gave up.
--
-- Actions (from `tick`):
--
-- * `{ type = "set_endpoint", endpoint, connection }`: point the peer at a
--   direct address (leaving any relay) and start a handshake;
-- * `{ type = "use_relay", server, channel }`: reach the peer through the
--   relay channel and start a handshake;
-- * `{ type = "handshake" }`: start a handshake on the endpoint the engine
--   has (one WireGuard learnt by roaming is kept, not replaced by the
--   advertised one);
-- * `{ type = "request_punch" }`: ask the leader to start a coordinated
--   punch with this peer.
-- @module wgoverlay.nat.policy
local candidates = require "wgoverlay.nat.candidates"

local M = {}

--- Defaults, in seconds.
M.DEFAULTS = {
  direct_timeout = 5,     -- for the advertised endpoint to answer
  punch_wait = 3,         -- for the leader's go after asking for a punch
  punch_timeout = 7,      -- for the probing to find an address
  confirm_timeout = 5,    -- for WireGuard to answer on the punched address
  relay_timeout = 10,     -- for the relayed path to answer (or a channel to appear)
  dead_after = 15,        -- no handshake and no health answer for this long: the path is dead
  upgrade_interval = 30,  -- between upgrade attempts of a relayed peer
  retry_interval = 10,    -- before starting over when nothing worked
  roam_settle = 1,        -- a roamed endpoint counts once it held this long
  handshake_retry = 1,    -- while a new path is being tried, a handshake this often (WireGuard waits 5 s)
  keepalive = 25,         -- WireGuard persistent keepalive (keeps NAT mappings and channels warm)
  stun_interval = 30,     -- between STUN rounds (used by wgoverlay.nat.agent: refreshes the mapping)
  punch_ttl = 2,          -- TTL of a punch's first probes (wgoverlay.nat.punch): our NAT must be this many hops away at most
  punch_quiet = 35,       -- after a direct path died, no punch for this long (stale NAT flows expire: Linux UDP 30 s)
  portmap = 1,            -- 1: ask the router for a port mapping (NAT-PMP, UPnP IGD); 0: never
  portmap_lease = 120,    -- the mapping's lease asked for (renewed at half of it)
}

--- The connection kinds.
M.KINDS = { direct = true, ["hole-punched"] = true, ["port-mapped"] = true, relayed = true }

--- Settings that are switches (0 or 1) rather than seconds.
M.SWITCHES = { portmap = true }

--- Checks and completes an options table (unknown keys and non-positive
-- values are errors; a switch is 0 or 1).
-- @return options with defaults filled in, or nil and a message
function M.options(o)
  local out = {}
  for k, v in pairs(M.DEFAULTS) do out[k] = v end
  for k, v in pairs(o or {}) do
    if k ~= "clock" and k ~= "now" then
      if M.DEFAULTS[k] == nil then return nil, string.format("unknown NAT setting \"%s\"", tostring(k)) end
      if M.SWITCHES[k] then
        if v ~= 0 and v ~= 1 then return nil, string.format("NAT setting %s must be 0 or 1", k) end
      elseif type(v) ~= "number" or v <= 0 then
        return nil, string.format("NAT setting %s must be a positive number", k)
      end
      if k == "punch_ttl" then
        if v ~= math.floor(v) or v > 255 then return nil, "NAT setting punch_ttl must be an integer 1-255" end
        v = math.tointeger(v)
      end
      out[k] = v
    end
  end
  return out
end

local Peer = {}
Peer.__index = Peer

--- Creates the state of one peer.
-- @tparam[opt] table opts settings (see DEFAULTS) and `clock` (seconds;
--   default os.time), `now` (creation time)
function M.new(opts)
  opts = opts or {}
  local o = assert(M.options(opts))
  local clock = opts.clock or os.time
  local now = opts.now or clock()
  return setmetatable({
    o = o, clock = clock,
    connection = "direct", changed_at = now,
    phase = "start", phase_at = now,
    remote_nat = "unknown", local_nat = "unknown", punchable = false, hosts = {}, v6 = false,
    remote_mapped = {}, local_mapped = false,
    queue = {}, attempts = 0,
  }, Peer)
end

function Peer:_push(a)
  self.queue[#self.queue + 1] = a
  if a.type == "set_endpoint" then
    self.set_path = { endpoint = a.endpoint, relay = false }
  elseif a.type == "use_relay" then
    self.set_path = { endpoint = a.server, relay = true }
  end
end

-- Whether the engine's endpoint is one WireGuard learnt from the peer's
-- own authenticated packets since we last chose one (roaming): fresher
-- than any advertised address.
function Peer:_roamed()
  local o, s = self.observed, self.set_path
  if not o or o.relay then return false end
  if not s then return o.endpoint ~= self.advertised end
  return s.relay or o.endpoint ~= s.endpoint
end

function Peer:_set_connection(kind, now)
  if kind ~= self.connection then
    self.previous = self.connection
    self.connection = kind
    self.changed_at = now
  end
end

function Peer:_phase(p, now)
  self.phase = p
  self.phase_at = now
end

--- Proof of a round trip with the peer at time `t`.
function Peer:alive(t)
  if t and (not self.alive_at or t > self.alive_at) then self.alive_at = t end
end

--- The endpoint the engine uses now (`relay_channel` set: via the relay).
function Peer:observe(endpoint, relay_channel, now)
  now = now or self.clock()
  local relay = relay_channel ~= nil and relay_channel ~= 0
  local o = self.observed
  if not o or o.endpoint ~= endpoint or o.relay ~= relay then
    self.observed = { endpoint = endpoint, relay = relay, since = now }
  end
end

--- The peer's record: `endpoint` (advertised), `nat` (its mapping kind),
-- `punchable` (it published candidates and a punch key), `hosts` (list
-- of its host candidate endpoints: addresses it holds itself), `v6` (both
-- sides have a global IPv6 address).
function Peer:set_remote(r)
  self.advertised = r.endpoint
  self.remote_nat = r.nat or "unknown"
  self.punchable = r.punchable and true or false
  self.hosts = {}
  for _, ep in ipairs(r.hosts or {}) do self.hosts[ep] = true end
  self.v6 = r.v6 and true or false
  local had = next(self.remote_mapped) ~= nil
  self.remote_mapped = r.mapped or {}
  if not had and next(self.remote_mapped) ~= nil then self:_mapping_appeared() end
end

--- Whether our router mapped our WireGuard port.
function Peer:set_local_mapped(on)
  on = on and true or false
  if on and not self.local_mapped then self:_mapping_appeared() end
  self.local_mapped = on
end

function Peer:_mapped_any() return self.local_mapped or next(self.remote_mapped) ~= nil end

-- A mapping on either side can give a path where there was none: a
-- relayed (or failed) peer tries the punch at the next tick.
function Peer:_mapping_appeared()
  if self.phase == "up" and self.connection == "relayed" then
    self.upgrade_at = math.min(self.upgrade_at or math.huge, self.phase_at)
  elseif self.phase == "failed" or self.phase == "relay-wait" then
    self:_phase("start", self.phase_at)
  end
end

local function is_v6(ep) return type(ep) == "string" and ep:sub(1, 1) == "[" end

-- Whether `ep` is an IPv6 address the peer holds, better than the path in
-- use (a relayed one, or one over IPv4 that is not the peer's own).
function Peer:_v6_better(ep)
  if not (self.v6 and is_v6(ep) and self.hosts[ep]) then return false end
  local o = self.observed
  return self.connection == "relayed" or not o or o.relay or not is_v6(o.endpoint)
end

-- Whether the path in use is worth an upgrade attempt: a relayed one, or
-- (both sides having IPv6) a hole-punched or port-mapped one over IPv4.
function Peer:_wants_upgrade()
  if self.connection == "relayed" then return true end
  local o = self.observed
  return self.v6 and (self.connection == "hole-punched" or self.connection == "port-mapped")
    and not (o and is_v6(o.endpoint))
end

function Peer:set_local_nat(kind) self.local_nat = kind or "unknown" end

--- A bound relay channel to the peer (nil: no relay).  A channel that
-- appears while the relayed path is being tried (or has failed) is tried
-- at once: the old one led to an allocation that is gone.
function Peer:set_relay(server, channel)
  local had = self.relay ~= nil
  if server and channel then
    self.relay = { server = server, channel = channel }
    if not had and (self.phase == "relay" or self.phase == "failed") then self.relay_renewed = true end
  else
    self.relay = nil
  end
end

local function after(t, since) return t ~= nil and t > since end

-- The kind a working non-relayed path at `ep` counts as: "direct" when it
-- is the peer's advertised endpoint or when either side has no NAT (STUN
-- saw its own address: the NATed side's packets open the way by
-- themselves); "port-mapped" at the peer's mapped candidate, or for an
-- address found by probing between two symmetric NATs of which one mapped
-- a port; else "hole-punched" for an address found by probing
-- (`punched`), and for a roamed one the kind it had, if not relayed.
function Peer:_kind_of(ep, punched)
  if ep ~= nil and (ep == self.advertised or self.hosts[ep]) then return "direct" end
  if ep ~= nil and self.remote_mapped[ep] then return "port-mapped" end
  if self.local_nat == "none" or self.remote_nat == "none" then return "direct" end
  if punched and self:_mapped_any() and not candidates.punch_possible(self.local_nat, self.remote_nat) then
    return "port-mapped"
  end
  if punched or self.connection == "relayed" then return "hole-punched" end
  return self.connection
end

function Peer:_established(kind, now)
  local o = self.observed
  if o and o.relay then
    kind = "relayed"
  elseif kind == "relayed" then
    kind = self:_kind_of(o and o.endpoint)
  end
  self:_set_connection(kind, now)
  self:_phase("up", now)
  self.upgrading, self.before, self.pending = false, nil, nil
  self.before_endpoint, self.pending_endpoint = nil, nil
  self.attempts = 0
  self.upgrade_at = self:_wants_upgrade() and now + self.o.upgrade_interval or nil
end

-- Whether the observed path agrees with the intended kind (a relayed path
-- is expected to come from the relay, any other from elsewhere) and, for
-- an IPv6 address being confirmed, is that address (an answer that came
-- over the old IPv4 path confirms nothing about it).
function Peer:_consistent(kind, ep)
  local o = self.observed
  if not o then return true end
  if is_v6(ep) and not o.relay and o.endpoint ~= ep then return false end
  return o.relay == (kind == "relayed")
end

local NATTED = { ["endpoint-independent"] = true, ["endpoint-dependent"] = true }

-- Both sides are behind NATs (STUN says so): the advertised (private)
-- endpoint cannot answer across them, and it is one of the probe targets
-- anyway, so the punch (or, when it cannot work, the relay) comes at once
-- instead of after direct_timeout.
function Peer:_punch_first()
  return NATTED[self.local_nat] and NATTED[self.remote_nat] or false
end

--- Our or the peer's public (server-reflexive) address changed: its NAT
-- moved it.  Flows left on the way by packets to the old addresses no
-- longer matter (no `punch_quiet`), and a peer we have no working path to
-- is tried again at once (a relayed one gets its upgrade attempt now).
function Peer:addresses_changed(now)
  now = now or self.clock()
  self.died_at = nil
  self.punch_failed_at = nil
  self.moved_at = now
  local p = self.phase
  if p == "up" then
    if self.connection == "relayed" and self.upgrade_at then self.upgrade_at = now end
  elseif p == "relay" or p == "relay-wait" or p == "failed" or p == "direct" then
    self:_phase("start", now)
  end
end

--- Starts over now (the peer came back: it published a new punch key)
-- unless the path works.
function Peer:restart(now)
  if self.phase ~= "up" then self:_phase("start", now or self.clock()) end
end

function Peer:_begin_direct(now)
  self.attempts = self.attempts + 1
  if self:_roamed() then
    -- keep the address the peer's packets came from; just test it
    self:_push({ type = "handshake" })
    self:_phase("direct", now)
  elseif self.advertised then
    -- (the caller also starts a handshake when the endpoint is already there)
    self:_push({ type = "set_endpoint", endpoint = self.advertised, connection = "direct" })
    self:_phase("direct", now)
  else
    self:_begin_punch(now, false)
  end
end

function Peer:_begin_punch(now, upgrade)
  -- A direct path died a moment ago: full-TTL packets we (and the peer)
  -- kept sending to the old addresses may have left flows to the NAT
  -- itself on a plain Linux NAT, which would spoil a punch now; the relay
  -- carries the traffic until they expired.
  -- The same after a punch that failed: its full-TTL probes may have
  -- left such flows (refreshed by every attempt, they would never expire
  -- if attempts came closer than the NAT's UDP timeout).
  local quiet_since = math.max(self.died_at or -math.huge, self.punch_failed_at or -math.huge)
  if now - quiet_since < self.o.punch_quiet then
    if upgrade then
      self.upgrade_at = quiet_since + self.o.punch_quiet
      return
    end
    return self:_begin_relay(now)
  end
  local possible = candidates.punch_possible(self.local_nat, self.remote_nat) or self:_mapped_any() or self.v6
  if not self.punchable or (not upgrade and not possible) then
    if upgrade then
      self.upgrade_at = now + self.o.upgrade_interval
      return
    end
    return self:_begin_relay(now)
  end
  self.upgrading = upgrade
  self:_push({ type = "request_punch" })
  self:_phase("punch-wait", now)
end

function Peer:_begin_relay(now)
  if self.relay then
    self:_push({ type = "use_relay", server = self.relay.server, channel = self.relay.channel })
    self:_phase("relay", now)
  else
    self:_phase("relay-wait", now)
  end
end

function Peer:_punch_failed(now)
  self.punch_failed_at = now
  if self.upgrading then
    self.upgrading = false
    self:_phase("up", now)
    self.upgrade_at = now + self.o.upgrade_interval
  else
    self:_begin_relay(now)
  end
end

--- The coordinated probing with this peer began.
function Peer:punch_started(now)
  now = now or self.clock()
  if self.phase == "punch-wait" then self:_phase("punching", now) end
end

--- The probing found `endpoint` (it acked our probe), or gave up (nil).
function Peer:punch_result(endpoint, now)
  now = now or self.clock()
  local p = self.phase
  if endpoint == nil then
    if p == "punch-wait" or p == "punching" then self:_punch_failed(now) end
    return
  end
  local alive = after(self.alive_at, now - self.o.dead_after)
  -- a working direct path stays, unless this is a better (IPv6) one
  if p == "up" and self.connection ~= "relayed" and alive and not self:_v6_better(endpoint) then return end
  if p == "confirm" then return end
  self.before = ((p == "up" or self.upgrading) and self.connection == "relayed") and "relayed" or nil
  local ob = self.observed
  if (p == "up" or self.upgrading) and (self.connection == "hole-punched" or self.connection == "port-mapped") and ob and not ob.relay then
    self.before_endpoint = ob.endpoint -- an upgrade that fails goes back to it
  else
    self.before_endpoint = nil
  end
  self.upgrading = false
  self.pending = self:_kind_of(endpoint, true)
  self.pending_endpoint = endpoint
  self:_push({ type = "set_endpoint", endpoint = endpoint, connection = self.pending })
  self:_phase("confirm", now)
end

local PHASE_KIND = { direct = "direct", relay = "relayed" }

--- Advances the machine.
-- @return list of actions (see the module comment)
function Peer:tick(now)
  now = now or self.clock()
  local o = self.o
  local p = self.phase
  local since = now - self.phase_at

  if p == "start" then
    if after(self.alive_at, now - o.dead_after) then
      -- (a fresh peer is "direct"; a restarted one keeps what it had)
      local ob = self.observed
      self:_established(self:_kind_of(ob and ob.endpoint), now)
    else
      self:_begin_direct(now)
    end
  elseif p == "up" then
    local last = math.max(self.alive_at or -math.huge, self.phase_at)
    if now - last >= o.dead_after then
      -- a NAT moved since the last sign of life: that is why the path
      -- died; the new addresses are tried at once (no punch_quiet)
      local moved = self.moved_at ~= nil and self.moved_at > (self.alive_at or -math.huge)
      if self.connection ~= "relayed" and not moved then self.died_at = now end
      if moved then
        self:_begin_direct(now)
      elseif self.connection ~= "relayed" and self.relay then
        self:_begin_relay(now)
      else
        self:_begin_direct(now)
      end
    else
      local ob = self.observed
      if ob and now - ob.since >= o.roam_settle then
        if ob.relay and self.connection ~= "relayed" then
          self:_set_connection("relayed", now)
          self.upgrade_at = now + o.upgrade_interval
        elseif not ob.relay and self.connection == "relayed" then
          self:_set_connection(self:_kind_of(ob.endpoint, true), now)
          self.upgrade_at = nil
        elseif not ob.relay and (self.connection == "hole-punched" or self.connection == "port-mapped") and self.hosts[ob.endpoint] then
          -- the peer moved us to one of its own addresses (its upgrade)
          self:_set_connection("direct", now)
        end
      end
      if not self:_wants_upgrade() then
        self.upgrade_at = nil
      elseif not self.upgrade_at then
        self.upgrade_at = now + o.upgrade_interval
      elseif now >= self.upgrade_at then
        self:_begin_punch(now, true)
      end
    end
  elseif p == "relay" and self.relay_renewed then
    self.relay_renewed = false
    self:_begin_relay(now)
  elseif p == "direct" or p == "relay" or p == "confirm" then
    local kind = p == "confirm" and self.pending or PHASE_KIND[p]
    if after(self.alive_at, self.phase_at) and self:_consistent(kind, p == "confirm" and self.pending_endpoint) then
      self:_established(kind, now)
    elseif since >= o.handshake_retry and now - (self.nudged or 0) >= o.handshake_retry
        and since < (p == "direct" and o.direct_timeout or p == "relay" and o.relay_timeout or o.confirm_timeout) then
      -- the first handshake may have been lost (a relay channel or a NAT
      -- mapping on the other side was not ready yet): try again sooner
      self.nudged = now
      self:_push({ type = "handshake" })
    elseif p == "direct" and (since >= o.direct_timeout or self:_punch_first()) then
      self:_begin_punch(now, false)
    elseif p == "relay" and since >= o.relay_timeout then
      self:_phase("failed", now)
    elseif p == "confirm" and since >= o.confirm_timeout then
      if self.before == "relayed" and self.relay then
        -- the upgrade did not work: back to the relay, which still works
        self:_push({ type = "use_relay", server = self.relay.server, channel = self.relay.channel })
        self:_phase("up", now)
        self.upgrade_at = now + o.upgrade_interval
        self.before, self.pending = nil, nil
      elseif self.before_endpoint then
        -- the IPv6 upgrade did not work: back to the punched IPv4 path
        self:_push({ type = "set_endpoint", endpoint = self.before_endpoint, connection = self.connection })
        self:_phase("up", now)
        self.upgrade_at = now + o.upgrade_interval
        self.before_endpoint, self.pending = nil, nil
      else
        self.pending = nil
        self:_begin_relay(now)
      end
    end
  elseif p == "punch-wait" or p == "punching" then
    if not self.upgrading and after(self.alive_at, self.phase_at) then
      -- the peer's side of the punch worked first: WireGuard followed it
      local ob = self.observed
      self:_established(ob and ob.relay and "relayed" or self:_kind_of(ob and ob.endpoint, true), now)
    elseif (p == "punch-wait" and since >= o.punch_wait) or (p == "punching" and since >= o.punch_timeout) then
      self:_punch_failed(now)
    end
  elseif p == "relay-wait" then
    if after(self.alive_at, self.phase_at) then
      local ob = self.observed
      self:_established(ob and ob.relay and "relayed" or self:_kind_of(ob and ob.endpoint, true), now)
    elseif self.relay then
      self:_begin_relay(now)
    elseif since >= o.relay_timeout then
      self:_phase("failed", now)
    end
  elseif p == "failed" then
    if self.relay_renewed then
      self.relay_renewed = false
      self:_begin_relay(now)
    elseif after(self.alive_at, self.phase_at) then
      local ob = self.observed
      self:_established(ob and ob.relay and "relayed" or self:_kind_of(ob and ob.endpoint, true), now)
    elseif since >= o.retry_interval then
      self:_begin_direct(now)
    end
  end
  local q = self.queue
  self.queue = {}
  return q
end

--- A summary for status: `connection`, `changed_at`, `phase`,
-- `phase_at`, `alive_at`.
function Peer:summary()
  return { connection = self.connection, changed_at = self.changed_at, phase = self.phase,
           phase_at = self.phase_at, alive_at = self.alive_at }
end

return M
