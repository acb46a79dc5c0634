--- Cluster set-up commands that run once: `init` (make a leader), `join`
-- (contact the leader over the network with a token) and `token` (issue a
-- join token).  The long-running side is wgoverlay.daemon.
-- @module wgoverlay.cluster
local core = require "wgoverlay.core"
local state = require "wgoverlay.state"
local allocator = require "wgoverlay.allocator"
local token = require "wgoverlay.token"
local joinproto = require "wgoverlay.joinproto"
local membership = require "wgoverlay.membership"
local endpoint = require "wgoverlay.endpoint"

local M = {}

M.DEFAULT_CIDR4 = "10.200.0.0/16"
M.DEFAULT_CIDR6 = "fd00:200::/48"
M.DEFAULT_ZONE = "overlay.internal"
M.MEMBERSHIP_PORT = 7946

--- Paths of a state directory's files.
function M.paths(dir)
  return { dir = dir, node = dir .. "/node.json", leader = dir .. "/leader.json",
           members = dir .. "/members.json", control = dir .. "/control.sock",
           containers = dir .. "/containers.json" }
end

--- Interface name of a node: stable, unique per key, at most 15 bytes
-- (several nodes may share one machine, and UAPI sockets are per machine).
function M.ifname_for(public_key)
  local h = core.blake2s(public_key, nil, 5)
  return "wgo" .. (h:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function hostname()
  local f = io.open("/proc/sys/kernel/hostname")
  local h = f and f:read("l")
  if f then f:close() end
  return (h and h:match("^[%w-]+$")) and h:lower() or "node"
end

local function refuse_existing(p)
  local _, _, kind = state.load(p.node)
  if kind ~= "missing" then
    return nil, string.format("%s already holds a node (node.json exists or is unreadable); use another --state", p.dir)
  end
  return true
end

--- Checks the NAT traversal settings of `init`.
-- @tparam table o `stun` (list of "IP:PORT"), `turn` ("IP:PORT"),
--   `turn_user`, `turn_password`, `nat` (list of "KEY=VALUE" policy
--   settings, seconds or a 0/1 switch, see wgoverlay.nat.policy, or a table)
-- @return `{ stun, turn, nat }` for the cluster table, or nil and a message
function M.nat_settings(o)
  local out = {}
  if o.stun and #o.stun > 0 then
    out.stun = {}
    for _, s in ipairs(o.stun) do
      if not endpoint.valid(s) then return nil, string.format("STUN server \"%s\" invalid: expected IP:PORT", s) end
      out.stun[#out.stun + 1] = s
    end
  end
  if o.turn then
    if not endpoint.valid(o.turn) then
      return nil, string.format("TURN server \"%s\" invalid: expected IP:PORT", tostring(o.turn))
    end
    if type(o.turn_user) ~= "string" or type(o.turn_password) ~= "string" then
      return nil, "a TURN server needs --turn-user and --turn-password"
    end
    out.turn = { server = o.turn, username = o.turn_user, password = o.turn_password }
  elseif o.turn_user or o.turn_password then
    return nil, "--turn-user and --turn-password need --turn"
  end
  local nat = o.nat
  if type(nat) == "table" and #nat > 0 then
    local t = {}
    for _, kv in ipairs(nat) do
      local k, v = tostring(kv):match("^([%w_]+)=([%d.]+)$")
      if not k or not tonumber(v) then
        return nil, string.format("NAT setting \"%s\" invalid: expected KEY=VALUE", tostring(kv))
      end
      t[k] = math.tointeger(tonumber(v)) or tonumber(v)
    end
    nat = t
  end
  if type(nat) == "table" and next(nat) ~= nil then
    local ok, err = require("wgoverlay.nat.policy").options(nat)
    if not ok then return nil, err end
    out.nat = nat
  end
  return out
end

--- Makes this node the leader of a new cluster.
-- @tparam table o `state` (dir), `endpoint` ("IP:PORT", reachable by
--   joiners), `cidr` (IPv4 cluster, default 10.200.0.0/16), `cidr6`,
--   `name`, `zone`, `dns_forward` ("IP:PORT" upstream, default: REFUSED),
--   and NAT traversal settings handed to every joiner: `stun`, `turn`,
--   `turn_user`, `turn_password`, `nat` (see `nat_settings`)
-- @return node table, or nil and a message
function M.init(o)
  if o.registry then return M.init_etcd(o) end
  local p = M.paths(o.state)
  local ep, eerr = endpoint.parse(o.endpoint)
  if not ep then return nil, eerr end
  local host, port = ep.ip, ep.port
  local natset, nerr = M.nat_settings(o)
  if not natset then return nil, nerr end
  if o.dns_forward ~= nil and not endpoint.valid(o.dns_forward) then
    return nil, string.format("DNS forwarder \"%s\" invalid: expected IP:PORT", tostring(o.dns_forward))
  end
  local ok, err = state.ensure_dir(o.state)
  if not ok then return nil, err end
  ok, err = refuse_existing(p)
  if not ok then return nil, err end
  local name = o.name or hostname()
  if not joinproto.valid_name(name) then return nil, string.format("node name \"%s\" invalid (a DNS label)", name) end
  local alloc
  alloc, err = allocator.new({ cidr4 = o.cidr or M.DEFAULT_CIDR4, cidr6 = o.cidr6 or M.DEFAULT_CIDR6 })
  if not alloc then return nil, err end
  local slice
  slice, err = alloc:node_slice(name)
  if not slice then return nil, err end
  local priv, pub = core.generate_keys()
  local cpriv, cpub = core.x25519_keypair()
  local record = { name = name, public_key = pub, endpoint = o.endpoint, overlay_ip = slice.ip,
                   overlay_ip6 = slice.ip6, slice = slice.slice, slice6 = slice.slice6, containers = {} }
  local reg = assert(membership.leader.new({ name = name }))
  ok, err = reg:join(record)
  if not ok then return nil, err end
  local cfg = alloc:config()
  local node = {
    name = name, private_key = priv, public_key = pub, role = "leader", ifname = M.ifname_for(pub),
    cluster = { cidr4 = cfg.cidr4, cidr6 = cfg.cidr6, zone = o.zone or M.DEFAULT_ZONE,
                dns_forward = o.dns_forward, stun = natset.stun, turn = natset.turn, nat = natset.nat,
                leader = { name = name, endpoint = o.endpoint, public_key = pub, overlay_ip = slice.ip,
                           overlay_ip6 = slice.ip6, control_public = core.key_to_base64(cpub) } },
    self = { overlay_ip = slice.ip, overlay_ip6 = slice.ip6, slice = slice.slice, slice6 = slice.slice6,
             endpoint = o.endpoint, listen_port = port },
  }
  ok, err = state.save(p.leader, { control_private = core.key_to_base64(cpriv), tokens = {},
                                   allocator = alloc:export(), registry = reg:export() })
  if not ok then return nil, err end
  ok, err = state.save(p.node, node)
  if not ok then return nil, err end
  return node
end

M.DEFAULT_ETCD_PREFIX = "/wgoverlay/default/"

--- Checks the etcd options of `init`: `registry` ("etcd://HOST:PORT,..."),
-- `etcd_prefix`, `etcd_user`, `etcd_password_file`, `etcd_ca`.
-- @return `{ endpoints, prefix, user, password, ca_pem }`, or nil and a message
function M.etcd_settings(o)
  local etcd = require "wgoverlay.etcd"
  local list = {}
  for part in tostring(o.registry):gmatch("[^,]+") do list[#list + 1] = part end
  local eps, err = etcd.parse_endpoints(list, o.etcd_ca ~= nil)
  if not eps then return nil, err end
  local prefix = o.etcd_prefix or M.DEFAULT_ETCD_PREFIX
  if not prefix:match("^/[%w%-_./]*/$") or prefix:find("//", 1, true) then
    return nil, string.format("etcd prefix \"%s\" invalid: expected /NAME/ (letters, digits, - _ . /)", prefix)
  end
  local out = { endpoints = list, prefix = prefix, user = o.etcd_user }
  if o.etcd_password_file then
    if not o.etcd_user then return nil, "--etcd-password-file needs --etcd-user" end
    local f, ferr = io.open(o.etcd_password_file, "rb")
    if not f then return nil, "etcd password file: " .. tostring(ferr) end
    out.password = (f:read("a") or ""):gsub("[\r\n]+$", "")
    f:close()
    if out.password == "" then return nil, "etcd password file is empty" end
  elseif o.etcd_user then
    return nil, "--etcd-user needs --etcd-password-file (a password is never given on the command line)"
  end
  if o.etcd_ca then
    local f, ferr = io.open(o.etcd_ca, "rb")
    if not f then return nil, "etcd CA file: " .. tostring(ferr) end
    out.ca_pem = f:read("a")
    f:close()
    if not out.ca_pem:find("-----BEGIN CERTIFICATE-----", 1, true) then
      return nil, "etcd CA file: not a PEM certificate"
    end
  end
  return out
end

M.ETCD_CA = "etcd-ca.pem"

-- The registry block of node.json for etcd (the CA written beside it).
local function etcd_registry_block(p, es)
  local reg = { kind = "etcd", endpoints = es.endpoints, prefix = es.prefix, user = es.user }
  if es.ca_pem then
    local path = p.dir .. "/" .. M.ETCD_CA
    local ok, err = core.write_private(path, es.ca_pem)
    if not ok then return nil, "cannot write " .. tostring(err) end
    reg.ca_file = path
  end
  return reg
end

--- Creates a cluster whose registry is etcd (`init --registry etcd://...`):
-- the cluster settings, this node's record and its slice go into etcd in
-- one transaction, refused if the prefix already holds a cluster.
function M.init_etcd(o)
  local uv = require "luv"
  local regetcd = require "wgoverlay.registry.etcd"
  local p = M.paths(o.state)
  local ep, eerr = endpoint.parse(o.endpoint)
  if not ep then return nil, eerr end
  local natset, nerr = M.nat_settings(o)
  if not natset then return nil, nerr end
  if o.dns_forward ~= nil and not endpoint.valid(o.dns_forward) then
    return nil, string.format("DNS forwarder \"%s\" invalid: expected IP:PORT", tostring(o.dns_forward))
  end
  local es, serr = M.etcd_settings(o)
  if not es then return nil, serr end
  local name = o.name or hostname()
  if not joinproto.valid_name(name) then return nil, string.format("node name \"%s\" invalid (a DNS label)", name) end
  local alloc, err = allocator.new({ cidr4 = o.cidr or M.DEFAULT_CIDR4, cidr6 = o.cidr6 or M.DEFAULT_CIDR6 })
  if not alloc then return nil, err end
  local ok
  ok, err = state.ensure_dir(o.state)
  if not ok then return nil, err end
  ok, err = refuse_existing(p)
  if not ok then return nil, err end
  local reg
  reg, err = etcd_registry_block(p, es)
  if not reg then return nil, err end
  local slice = alloc:slice_at(0)
  local priv, pub = core.generate_keys()
  local cpriv, cpub = core.x25519_keypair()
  local cfg = alloc:config()
  local record = { name = name, public_key = pub, endpoint = o.endpoint, overlay_ip = slice.ip,
                   overlay_ip6 = slice.ip6, slice = slice.slice, slice6 = slice.slice6, containers = {} }
  local cluster = { cidr4 = cfg.cidr4, cidr6 = cfg.cidr6, zone = o.zone or M.DEFAULT_ZONE,
                    dns_forward = o.dns_forward, stun = natset.stun, turn = natset.turn, nat = natset.nat,
                    control_public = core.key_to_base64(cpub) }
  local e
  e, err = regetcd.client(reg, es.password)
  if not e then return nil, err end
  -- what etcd keeps of the settings: everything but the TURN password
  -- (members get it sealed in their join answer)
  local stored = {}
  for k, v in pairs(cluster) do stored[k] = v end
  if stored.turn then stored.turn = { server = stored.turn.server, username = stored.turn.username } end
  ok, err = regetcd.sync(function(cb) regetcd.create_cluster(e, es.prefix, stored, record, cb) end)
  e:close()
  uv.run("nowait")
  if not ok then return nil, err end
  cluster.registry = reg
  local node = {
    name = name, private_key = priv, public_key = pub, role = "member", ifname = M.ifname_for(pub),
    control_private = core.key_to_base64(cpriv), etcd_password = es.password,
    cluster = cluster,
    self = { overlay_ip = slice.ip, overlay_ip6 = slice.ip6, slice = slice.slice, slice6 = slice.slice6,
             endpoint = o.endpoint, listen_port = ep.port },
  }
  ok, err = state.save(p.node, node)
  if not ok then return nil, err end
  return node
end

--- Issues a join token from the leader's state files (when the daemon is
-- not running; the daemon's control socket does the same in-process).
function M.token_offline(o)
  local p = M.paths(o.state)
  local node, err = state.load(p.node)
  if not node then return nil, err end
  if node.cluster and node.cluster.registry then
    -- etcd: the token goes into etcd; this node's endpoint admits
    local regetcd = require "wgoverlay.registry.etcd"
    local e, cerr = regetcd.client(node.cluster.registry, node.etcd_password)
    if not e then return nil, cerr end
    local cpriv = core.key_from_base64(node.control_private or "")
    if not cpriv then return nil, "node.json has no control key" end
    local str, terr = regetcd.sync(function(cb)
      regetcd.put_token(e, node.cluster.registry.prefix, regetcd.token_key(cpriv), {
        endpoints = { node.self.endpoint }, control_public = node.cluster.control_public, ttl = o.ttl,
        uses = o.uses }, cb)
    end)
    e:close()
    require("luv").run("nowait")
    return str, terr
  end
  if node.role ~= "leader" then return nil, "tokens are issued by the leader; this node is a member" end
  local lead
  lead, err = state.load(p.leader)
  if not lead then return nil, err end
  local str = token.create(lead.tokens, { endpoint = node.cluster.leader.endpoint,
                                          control_public = node.cluster.leader.control_public,
                                          ttl = o.ttl, uses = o.uses })
  local ok
  ok, err = state.save(p.leader, lead)
  if not ok then return nil, err end
  return str
end

--- File in the state directory that keeps the joiner's identity (name and
-- WireGuard key pair, mode 0600) from its first attempt until a join
-- succeeds, so that a retry after a lost answer is the same joiner.
M.JOIN_PENDING = "join-pending.json"

-- The key pair of an earlier, unfinished join of `name` from this state
-- directory, or a new one (recorded before anything is sent).
local function joiner_identity(path, name, token_id)
  local old, err, kind = state.load_checked(path, "join_pending")
  if not old and kind ~= "missing" then return nil, err .. " (remove it to start a new join)" end
  if old and old.name == name and core.public_key(old.private_key) == old.public_key then
    return old.private_key, old.public_key, true
  end
  local priv, pub = core.generate_keys()
  local ok, serr = state.save(path, { name = name, private_key = priv, public_key = pub, token = token_id,
                                      created = os.time() })
  if not ok then return nil, serr end
  return priv, pub, false
end

--- Joins a cluster: sends authenticated join requests from this node's
-- WireGuard port to the leader and waits for its answer.
--
-- Retrying is safe: the identity (name, key pair) of an unfinished join
-- is kept in `JOIN_PENDING`, so running the same command again after a
-- lost answer is the same joiner, which the leader admits again with the
-- same slice without using the token a second time (joinproto.handle);
-- once `join` succeeds the file is removed.  A fresh request (new
-- ephemeral key) goes out every second, since the leader answers each
-- request once.  On failure the message is the last meaningful one: the
-- leader's authenticated refusal, else an unauthenticated refusal (JOIN_ERR
-- such as "bad token"), else the timeout; other traffic from the leader's
-- port (its WireGuard handshakes to the address it admitted) is ignored.
-- @tparam table o `state`, `token`, `endpoint` (this node's "IP:PORT"),
--   `name`, `timeout` (seconds, default 15)
-- @return node table, or nil and a message
function M.join(o)
  local uv = require "luv"
  local p = M.paths(o.state)
  local ep, eerr = endpoint.parse(o.endpoint)
  if not ep then return nil, eerr end
  local host, port = ep.ip, ep.port
  local tok, err = token.decode(o.token or "")
  if not tok then return nil, "token invalid: " .. err end
  -- the leader, or (etcd registry) every member the token names
  local targets = {}
  for _, e in ipairs({ tok.e, table.unpack(tok.x or {}) }) do
    local t = endpoint.parse(e)
    if not t then return nil, "token invalid: bad endpoint" end
    targets[#targets + 1] = t
  end
  local ok
  ok, err = state.ensure_dir(o.state)
  if not ok then return nil, err end
  ok, err = refuse_existing(p)
  if not ok then return nil, err end
  local name = o.name or hostname()
  if not joinproto.valid_name(name) then return nil, string.format("node name \"%s\" invalid (a DNS label)", name) end
  local pending = p.dir .. "/" .. M.JOIN_PENDING
  local priv, pub = joiner_identity(pending, name, tok.i)
  if not priv then return nil, pub end
  -- checked once before anything is sent (a bad payload is refused here)
  local first, ferr = joinproto.make_request(tok, { name = name, public_key = pub, endpoint = o.endpoint }, 0)
  if not first then return nil, ferr end

  local udp = uv.new_udp()
  local bound, berr = udp:bind(host:find(":") and "::" or "0.0.0.0", port)
  if not bound then
    udp:close()
    return nil, string.format("cannot use UDP port %d: %s", port, berr)
  end
  local timeout = o.timeout or 15
  local deadline = uv.now() + timeout * 1000
  local sessions, pad_to = {}, joinproto.REQUEST_MIN
  local resp, refused, unauth, unverified = nil, nil, nil, 0
  local function send()
    local bytes, session = joinproto.make_request(tok, { name = name, public_key = pub, endpoint = o.endpoint }, pad_to)
    if not bytes then return end
    sessions[#sessions + 1] = session
    if #sessions > 64 then table.remove(sessions, 1) end
    -- the same request to each: any of them may admit (etcd registry);
    -- admission is idempotent per joiner, the token is used once
    for _, t in ipairs(targets) do udp:send(bytes, t.ip, t.port, function() end) end
  end
  udp:recv_start(function(rerr, data, addr)
    if rerr or not data or not addr or resp or refused then return end
    local from_target = false
    for _, t in ipairs(targets) do
      if addr.ip == t.ip and addr.port == t.port then from_target = true end
    end
    if not from_target then return end -- only the leader (or the token's members) answers
    if not joinproto.is_control(data) then return end          -- its WireGuard traffic, STUN: not an answer
    local msg = joinproto.decode(data)
    if not msg then return end
    if msg.type == joinproto.JOIN_ERR then
      unauth = "join refused: " .. msg.error -- anyone can send one: keep waiting for a sealed answer
      return
    end
    if msg.type ~= joinproto.JOIN_RESP then return end
    for i = #sessions, 1, -1 do
      local r, e, final, pad = joinproto.open_response(sessions[i], data)
      if r then
        resp = r
        uv.stop()
        return
      elseif pad then
        pad_to = math.max(pad_to, pad)
        send()
        return
      elseif final then
        refused = e
        uv.stop()
        return
      end
    end
    unverified = unverified + 1
  end)
  local timer = uv.new_timer()
  timer:start(0, 1000, function()
    if resp or refused or uv.now() >= deadline then
      uv.stop()
      return
    end
    send()
  end)
  uv.run()
  timer:close()
  udp:close()
  uv.run("nowait")
  if refused then return nil, refused end
  if not resp then
    local where = #targets == 1 and string.format("the leader at %s", tok.e)
      or string.format("the members at %s", table.concat({ tok.e, table.unpack(tok.x) }, ", "))
    if unauth then
      return nil, string.format("%s (unauthenticated answer from %s; no other answer within %g s)", unauth, where, timeout)
    end
    if unverified > 0 then
      return nil, string.format("no valid answer from %s within %g s (%d answers did not authenticate: "
        .. "another leader, or a token of another cluster?)", where, timeout, unverified)
    end
    return nil, string.format("timed out waiting for %s: no answer within %g s (lost, filtered, or the leader "
      .. "is down); running the same command again is safe: this node is admitted once, with the same "
      .. "address, and the token is not used twice", where, timeout)
  end
  if type(resp.cluster) == "table" and type(resp.cluster.registry) == "table" then
    return M.joined_etcd(o, p, pending, name, priv, pub, port, resp)
  end
  local n, l = resp.node, resp.leader
  local node = {
    name = name, private_key = priv, public_key = pub, role = "member", ifname = M.ifname_for(pub),
    cluster = resp.cluster,
    self = { overlay_ip = n.overlay_ip, overlay_ip6 = n.overlay_ip6, slice = n.slice, slice6 = n.slice6,
             endpoint = o.endpoint, listen_port = port },
  }
  node.cluster.leader = node.cluster.leader or {}
  for k, v in pairs(l or {}) do node.cluster.leader[k] = v end
  ok, err = state.save(p.members, { members = { l }, version = 0 })
  if not ok then return nil, err end
  ok, err = state.save(p.node, node)
  if not ok then return nil, err end
  os.remove(pending)
  return node
end

-- The end of a join through an etcd registry: the answer carries the
-- registry's settings (and its CA), the cluster's control key (every member
-- admits joiners) and the etcd password, all sealed to this joiner.
function M.joined_etcd(o, p, pending, name, priv, pub, port, resp)
  local n, c = resp.node, resp.cluster
  local r = c.registry
  local secrets = type(resp.secrets) == "table" and resp.secrets or {}
  if type(secrets.control_private) ~= "string" or not core.key_from_base64(secrets.control_private) then
    return nil, "bad answer: no control key"
  end
  local reg, err = etcd_registry_block(p, { endpoints = r.endpoints, prefix = r.prefix, user = r.user,
                                            ca_pem = r.ca })
  if not reg then return nil, err end
  c.registry = reg
  local node = {
    name = name, private_key = priv, public_key = pub, role = "member", ifname = M.ifname_for(pub),
    control_private = secrets.control_private, etcd_password = secrets.etcd_password,
    cluster = c,
    self = { overlay_ip = n.overlay_ip, overlay_ip6 = n.overlay_ip6, slice = n.slice, slice6 = n.slice6,
             endpoint = o.endpoint, listen_port = port },
  }
  local ok
  ok, err = state.save(p.node, node)
  if not ok then return nil, err end
  os.remove(pending)
  return node
end

return M
