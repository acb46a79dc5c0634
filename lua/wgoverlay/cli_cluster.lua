--- Cluster commands of the `wgoverlay` CLI: init, token, join, run,
-- attach, detach, remove-node, rotate-key, and `status --state`.
-- @module wgoverlay.cli_cluster
local M = {}

local function die(fmt, ...)
  io.stderr:write("wgoverlay: ", string.format(fmt, ...), "\n")
  return 1
end

--- Adds the commands to an argparse parser.
function M.register(p)
  local c = p:command("init", "Create a cluster: this node becomes its leader.")
  c:option("--state", "State directory (created, mode 0700)."):count(1)
  c:option("--cidr", "IPv4 cluster CIDR.", "10.200.0.0/16")
  c:option("--cidr6", "IPv6 cluster CIDR.", "fd00:200::/48")
  c:option("--endpoint", "IP:PORT where joiners reach this node."):count(1)
  c:option("--name", "Node name (a DNS label; default: host name).")
  c:option("--zone", "DNS zone.", "overlay.internal")
  c:option("--dns-forward", "Forward queries outside the zone to IP:PORT (default: REFUSED).")
  c:option("--stun", "STUN server IP:PORT for NAT traversal (repeatable; any public node's endpoint works)."):count("*")
  c:option("--turn", "TURN relay IP:PORT (used when no direct or hole-punched path works).")
  c:option("--turn-user", "TURN username.")
  c:option("--turn-password", "TURN password.")
  c:option("--nat", "NAT traversal setting KEY=VALUE (repeatable), e.g. dead_after=15, upgrade_interval=30 "
    .. "(seconds); portmap=0 turns port mapping (NAT-PMP, UPnP IGD) off."):count("*")
  c:option("--registry", "Keep the cluster in etcd: etcd://HOST:PORT[,etcd://HOST:PORT...] (default: this node "
    .. "is the embedded registry's leader).")
  c:option("--etcd-prefix", "Key prefix of this cluster in etcd.", "/wgoverlay/default/")
  c:option("--etcd-ca", "CA certificate (PEM) that signed etcd's certificate: TLS with verification.")
  c:option("--etcd-user", "etcd user (its role should be limited to the prefix).")
  c:option("--etcd-password-file", "File holding the etcd user's password.")

  c = p:command("token", "Issue a join token (leader).")
  c:option("--state", "State directory."):count(1)
  c:option("--ttl", "Validity in seconds.", "3600"):convert(math.tointeger)
  c:option("--uses", "How many joins it allows.", "1"):convert(math.tointeger)

  c = p:command("join", "Join a cluster with a token.")
  c:option("--state", "State directory (created, mode 0700)."):count(1)
  c:option("--token", "Token from `wgoverlay token`."):count(1)
  c:option("--endpoint", "IP:PORT where the others reach this node."):count(1)
  c:option("--name", "Node name (a DNS label; default: host name).")
  c:option("--timeout", "Seconds to wait for the leader.", "15"):convert(tonumber)

  c = p:command("run", "Run this node (engine, membership, DNS, health) in the foreground.")
  c:option("--state", "State directory."):count(1)
  c:option("--metrics", "Serve Prometheus metrics at http://IP:PORT/metrics (IPv6: [IP]:PORT; default: off).")
  c:option("--mtu", "Overlay MTU (576-65535; default: derived from the underlay route to the other nodes, "
    .. "less WireGuard's 60/80 bytes)."):convert(function(v)
      local n = math.tointeger(tonumber(v))
      if n and n >= 576 and n <= 65535 then return n end
      return nil, "must be an integer 576..65535"
    end)

  c = p:command("attach", "Attach a container network namespace to the overlay.")
  c:option("--state", "State directory."):count(1)
  c:argument("netns", "Network namespace (name under /var/run/netns, or a path).")
  c:option("--name", "DNS name of the container (several containers may share one)."):count(1)
  c:flag("--egress", "Give the container a default route through this node, masqueraded (else: the overlay only).")
  c:option("--label", "Label KEY=VALUE for network policy (repeatable)."):count("*")

  c = p:command("detach", "Detach a container network namespace.")
  c:option("--state", "State directory."):count(1)
  c:argument("netns", "Network namespace.")

  c = p:command("remove-node", "Remove a node from the cluster (leader).")
  c:option("--state", "State directory."):count(1)
  c:argument("name", "Node name.")

  c = p:command("policy", "The cluster's network policy (see README, Network policy).")
  c:command_target("policy_command")
  local pc = c:command("apply", "Validate a policy file (JSON) and store it in the registry with a new version.")
  pc:option("--state", "State directory."):count(1)
  pc:argument("file", "Policy document (JSON; - for standard input).")
  pc = c:command("show", "Print the policy in force and its version.")
  pc:option("--state", "State directory."):count(1)
  pc:flag("--json", "Machine-readable output.")

  c = p:command("rotate-key", "Give this node a new WireGuard key (the running daemon does it; traffic goes on).")
  c:option("--state", "State directory."):count(1)
end

M.commands = {}

function M.commands.init(a)
  local cluster = require "wgoverlay.cluster"
  local node, err = cluster.init({ state = a.state, cidr = a.cidr, cidr6 = a.cidr6, endpoint = a.endpoint,
                                   name = a.name, zone = a.zone, dns_forward = a.dns_forward, stun = a.stun,
                                   turn = a.turn, turn_user = a.turn_user, turn_password = a.turn_password,
                                   nat = a.nat, registry = a.registry, etcd_prefix = a.etcd_prefix,
                                   etcd_ca = a.etcd_ca, etcd_user = a.etcd_user,
                                   etcd_password_file = a.etcd_password_file })
  if not node then return die("init: %s", err) end
  if node.cluster.registry then
    io.write(string.format("cluster created in etcd under %s: node %s, overlay %s (%s), public key %s\n",
      node.cluster.registry.prefix, node.name, node.self.overlay_ip, node.self.slice, node.public_key))
    return 0
  end
  io.write(string.format("cluster created: leader %s, overlay %s (%s), public key %s\n", node.name,
    node.self.overlay_ip, node.self.slice, node.public_key))
  return 0
end

function M.commands.token(a)
  local control = require "wgoverlay.control"
  local cluster = require "wgoverlay.cluster"
  if not a.ttl or a.ttl <= 0 then return die("token: --ttl must be a positive integer") end
  if not a.uses or a.uses <= 0 then return die("token: --uses must be a positive integer") end
  local str, err
  -- io.open cannot open a Unix socket (ENXIO): stat it.  A running daemon
  -- must issue the token itself (it owns leader.json and would overwrite
  -- a token written beside it); only when none answers is the file used.
  if require("luv").fs_stat(cluster.paths(a.state).control) then
    local r
    r, err = control.request(a.state, { cmd = "token", ttl = a.ttl, uses = a.uses })
    str = r and r.token
    if not str and not tostring(err):match("^no daemon runs") then return die("token: %s", err) end
  end
  if not str then
    -- no daemon: write the token straight into the leader's state, once
    -- its files are known to fit their schemas (token_offline trusts them)
    local state, p = require "wgoverlay.state", cluster.paths(a.state)
    local node, nerr = state.load_checked(p.node, "node")
    if not node then return die("token: %s", nerr) end
    if node.role == "leader" then
      local lead, lerr = state.load_checked(p.leader, "leader", { node = node })
      if not lead then return die("token: %s", lerr) end
    end
    str, err = cluster.token_offline({ state = a.state, ttl = a.ttl, uses = a.uses })
  end
  if not str then return die("token: %s", err) end
  io.write(str, "\n")
  return 0
end

function M.commands.join(a)
  local cluster = require "wgoverlay.cluster"
  local node, err = cluster.join({ state = a.state, token = a.token, endpoint = a.endpoint, name = a.name,
                             timeout = a.timeout })
  if not node then return die("join: %s", err) end
  io.write(string.format("joined: %s is %s (%s)\n", node.name, node.self.overlay_ip, node.self.slice))
  return 0
end

function M.commands.run(a)
  local daemon = require "wgoverlay.daemon"
  local rc, err = daemon.run(a.state, { metrics = a.metrics, mtu = a.mtu })
  if not rc then return die("run: %s", err) end
  return rc
end

local function ask(a, req, fmt)
  local r, err = require("wgoverlay.control").request(a.state, req)
  if not r then return die("%s: %s", req.cmd, err) end
  if fmt then io.write(fmt(r)) end
  return 0
end

function M.commands.attach(a)
  local labels, lerr = require("wgoverlay.policy").parse_labels(a.label)
  if not labels then return die("attach: %s", lerr) end
  if next(labels) == nil then labels = nil end
  return ask(a, { cmd = "attach", netns = a.netns, name = a.name, egress = a.egress or nil, labels = labels }, function(r)
    return string.format("attached %s as %s: %s %s\n", a.netns, r.name, r.ip, r.ip6 or "")
  end)
end

function M.commands.detach(a)
  return ask(a, { cmd = "detach", netns = a.netns })
end

-- `policy apply FILE`: checked here (the message names the place), and
-- again by the daemon and the registry; `policy show [--json]`.
function M.commands.policy(a)
  local policy = require "wgoverlay.policy"
  local cjson = require "cjson"
  if a.policy_command == "apply" then
    local text
    if a.file == "-" then
      text = io.read("a")
    else
      local f, ferr = io.open(a.file, "r")
      if not f then return die("policy apply: %s", ferr) end
      text = f:read("a")
      f:close()
    end
    local doc, err = policy.parse(text or "")
    if not doc then return die("policy apply: %s: %s (nothing changed)", a.file, err) end
    local raw = require("cjson.safe").decode(text)
    return ask(a, { cmd = "policy-apply", policy = raw }, function(r)
      return string.format("policy version %d stored (%d rules, default %s)\n", r.version, #doc.rules, doc.default)
    end)
  end
  return ask(a, { cmd = "policy-show" }, function(r)
    if a.json then return cjson.encode(r) .. "\n" end
    if r.version == cjson.null or r.version == nil then return "no policy: every container may reach every other\n" end
    local out = { string.format("policy version %d (enforced here: %s), default %s, %d rules", r.version,
                                type(r.enforced_version) == "number" and string.format("%d", r.enforced_version) or "none",
                                r.policy.default, #r.policy.rules) }
    for i, rule in ipairs(r.policy.rules) do
      local function sel(t)
        local parts = {}
        for k, v in pairs(t) do parts[#parts + 1] = k .. "=" .. v end
        table.sort(parts)
        return #parts > 0 and table.concat(parts, ",") or "*"
      end
      out[#out + 1] = string.format("  %d. %s -> %s: %s", i, sel(rule.from), sel(rule.to), table.concat(rule.ports, " "))
    end
    return table.concat(out, "\n") .. "\n"
  end)
end

M.commands["remove-node"] = function(a)
  return ask(a, { cmd = "remove-node", name = a.name })
end

-- The daemon makes the key, switches its interface to it, saves node.json
-- and publishes it through the registry: a key changed in the state file
-- alone would cut the node off from its peers, so a stopped daemon is an
-- error, not a fallback.
M.commands["rotate-key"] = function(a)
  local r, err = require("wgoverlay.control").request(a.state, { cmd = "rotate-key" })
  if not r then
    if tostring(err):match("^no daemon runs") then
      return die("rotate-key: %s; the key is rotated by the running daemon (`wgoverlay run --state %s`), "
                 .. "so that its peers learn the new key, and nothing was changed", err, a.state)
    end
    return die("rotate-key: %s", err)
  end
  io.write(string.format("key rotated: public key %s (was %s)\n", r.public_key, r.old_public_key))
  if not r.published then
    io.write("the registry has not confirmed the new key yet: the node sends it again when it reconnects; "
             .. "check with `wgoverlay status --state DIR --json`\n")
  end
  return 0
end

local function age(epoch, now)
  if not epoch or epoch == 0 then return "never" end
  local s = math.max(0, now - epoch)
  if s < 60 then return string.format("%ds ago", s) end
  if s < 3600 then return string.format("%dm ago", s // 60) end
  return string.format("%dh ago", s // 3600)
end

--- Renders the cluster status table.
function M.format_status(st, now)
  now = now or os.time()
  local out = {}
  local s = st.self
  out[#out + 1] = string.format("node %s (%s)  overlay %s %s  slice %s  endpoint %s  interface %s",
    s.name, s.role, s.overlay_ip, s.overlay_ip6 or "", s.slice, s.endpoint, s.interface)
  if type(s.nat) == "table" then
    local cands = {}
    for _, c in ipairs(s.nat.candidates or {}) do cands[#cands + 1] = c.type .. " " .. c.endpoint end
    out[#out + 1] = string.format("  nat %s  candidates %s", s.nat.nat or "unknown",
      #cands > 0 and table.concat(cands, ", ") or "-")
    local pm = s.nat.portmap
    if type(pm) == "table" then
      local line = "  port mapping " .. tostring(pm.state)
      if type(pm.external) == "string" then
        local lease = type(pm.lease) == "number" and string.format("%g", pm.lease) or "?"
        line = line .. string.format(" %s (%s, lease %s s)", pm.external, tostring(pm.protocol), lease)
      end
      if type(pm.error) == "string" then line = line .. "  last error: " .. pm.error end
      out[#out + 1] = line
    end
  end
  local rows = { { "PEER", "OVERLAY", "ENDPOINT", "HANDSHAKE", "HEALTH", "RTT", "CONNECTION", "SINCE" } }
  for _, p in ipairs(st.peers) do
    local via = type(p.endpoint) == "string" and p.endpoint or "-"
    if type(p.relay_channel) == "number" then via = via .. string.format(" ch 0x%04X", p.relay_channel) end
    rows[#rows + 1] = { p.name or p.public_key:sub(1, 12), p.overlay_ip or "-", via, age(p.last_handshake, now),
      p.healthy and "healthy" or "unhealthy",
      type(p.rtt_ms) == "number" and string.format("%.2f ms", p.rtt_ms) or "-", p.connection,
      type(p.connection_changed_at) == "number" and age(p.connection_changed_at, now) or "-" }
  end
  local w = {}
  for _, r in ipairs(rows) do for i, c in ipairs(r) do w[i] = math.max(w[i] or 0, #c) end end
  for _, r in ipairs(rows) do
    local cells = {}
    for i, c in ipairs(r) do cells[i] = c .. string.rep(" ", w[i] - #c) end
    out[#out + 1] = "  " .. table.concat(cells, "  "):gsub("%s+$", "")
  end
  for _, c in ipairs(st.containers or {}) do
    local labels = {}
    for k, v in pairs(type(c.labels) == "table" and c.labels or {}) do labels[#labels + 1] = k .. "=" .. v end
    table.sort(labels)
    out[#out + 1] = string.format("  container %s  %s %s%s", c.name, c.ip, c.ip6 or "",
      #labels > 0 and ("  " .. table.concat(labels, ",")) or "")
  end
  local p = st.policy
  if type(p) == "table" and type(p.version) == "number" then
    out[#out + 1] = string.format("  policy version %d (enforced here: %s), default %s, %d rules, %d packets dropped",
      p.version, type(p.enforced_version) == "number" and string.format("%d", p.enforced_version) or "none",
      tostring(p.default), p.rules or 0, p.dropped_packets or 0)
  end
  return table.concat(out, "\n") .. "\n"
end

--- `status --state DIR [--json]`
function M.status(a)
  local control = require "wgoverlay.control"
  local r, err = control.request(a.state, { cmd = "status" })
  if not r then return die("status: %s", err) end
  if a.json then
    io.write(require("cjson").encode(r), "\n")
  else
    io.write(M.format_status(r))
  end
  return 0
end

return M
