--- Prometheus metrics: the text exposition format (version 0.0.4) and the
-- `--metrics IP:PORT` endpoint of `wgoverlay run` and `wgoverlay interface`.
--
-- The renderer is pure (unit-tested): a scrape declares families (one per
-- name, with HELP and TYPE) and adds samples; `render` writes them.  Naming
-- follows Prometheus' conventions and is enforced here: every name is
-- `wgoverlay_...`, a counter ends in `_total`, a gauge does not, a unit is
-- the base unit spelled out (`_bytes`, `_seconds`).  Label values are
-- escaped (backslash, double quote, newline).
--
-- The endpoint is wgoverlay.core's metrics_server (GNU libmicrohttpd run
-- from our luv loop, no thread of its own): each scrape renders fresh
-- values on the Lua thread.  GET or HEAD /metrics: 200; another path: 404;
-- another method on /metrics: 405.  Limits against slow and malformed
-- clients are in csrc/lua_metrics.c (10 s idle timeout, 32 connections,
-- 8 per client address, 16 KiB of request headers).
-- @module wgoverlay.metrics
local endpoint = require "wgoverlay.endpoint"

local M = {}

M.CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
M.PATH = "/metrics"
M.PREFIX = "wgoverlay_"

-- ---------------------------------------------------------------------
-- exposition format
-- ---------------------------------------------------------------------

local Set = {}
Set.__index = Set

--- A new, empty set of families (one scrape).
function M.new()
  return setmetatable({ list = {}, byname = {} }, Set)
end

local TYPES = { counter = true, gauge = true }

--- Declares a family; raises on a name that breaks the conventions or
-- that was declared before.
function Set:family(name, kind, help)
  assert(type(name) == "string" and name:match("^[a-zA-Z_:][a-zA-Z0-9_:]*$"), "metric name invalid: " .. tostring(name))
  assert(name:sub(1, #M.PREFIX) == M.PREFIX, "metric name without the " .. M.PREFIX .. " prefix: " .. name)
  assert(TYPES[kind], "metric type must be counter or gauge: " .. tostring(kind))
  if kind == "counter" then
    assert(name:match("_total$"), "counter name must end in _total: " .. name)
  else
    assert(not name:match("_total$"), "gauge name must not end in _total: " .. name)
  end
  assert(type(help) == "string" and help ~= "", "metric without help: " .. name)
  assert(not self.byname[name], "metric family declared twice: " .. name)
  local f = { name = name, kind = kind, help = help, samples = {}, seen = {} }
  self.byname[name] = f
  self.list[#self.list + 1] = f
  return f
end

local function label_key(labels)
  local keys = {}
  for k in pairs(labels) do
    assert(type(k) == "string" and k:match("^[a-zA-Z_][a-zA-Z0-9_]*$") and not k:match("^__"),
      "label name invalid: " .. tostring(k))
    keys[#keys + 1] = k
  end
  table.sort(keys)
  return keys
end

--- Escapes a label value: backslash, double quote and newline.
function M.escape_label(v)
  return (tostring(v):gsub('[\\"\n]', { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

--- Escapes HELP text: backslash and newline.
function M.escape_help(v)
  return (v:gsub("[\\\n]", { ["\\"] = "\\\\", ["\n"] = "\\n" }))
end

--- A sample value as text: integers exactly, floats shortest round-trip,
-- NaN and infinities as Prometheus spells them.
function M.format_value(v)
  if math.type(v) == "integer" then return string.format("%d", v) end
  assert(type(v) == "number", "metric value must be a number")
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" end
  if v == -math.huge then return "-Inf" end
  if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return string.format("%d", math.tointeger(v)) end
  local s = string.format("%.15g", v)
  if tonumber(s) ~= v then s = string.format("%.17g", v) end
  return s
end

--- Adds a sample to a declared family; labels: name -> value (values of
-- nil are left out, so "not known" is no label rather than an empty one).
function Set:add(name, labels, value)
  local f = assert(self.byname[name], "metric family not declared: " .. tostring(name))
  labels = labels or {}
  local keys = label_key(labels)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. '="' .. M.escape_label(labels[k]) .. '"' end
  local text = #parts > 0 and ("{" .. table.concat(parts, ",") .. "}") or ""
  assert(not f.seen[text], "duplicate series " .. name .. text)
  if f.kind == "counter" then assert(value >= 0, "counter " .. name .. " below 0") end
  f.seen[text] = true
  f.samples[#f.samples + 1] = name .. text .. " " .. M.format_value(value)
end

--- The exposition text of a set.
function M.render(set)
  local out = {}
  for _, f in ipairs(set.list) do
    out[#out + 1] = "# HELP " .. f.name .. " " .. M.escape_help(f.help)
    out[#out + 1] = "# TYPE " .. f.name .. " " .. f.kind
    for _, s in ipairs(f.samples) do out[#out + 1] = s end
  end
  if #out == 0 then return "" end
  return table.concat(out, "\n") .. "\n"
end

-- ---------------------------------------------------------------------
-- what wgoverlay exposes
-- ---------------------------------------------------------------------

-- Packets dropped, by reason: the engine's counters (status().stats) that
-- make each reason.  "queue_full" is the handshake queue (initiations
-- arriving faster than the DH worker) and the staged-packet queue (packets
-- waiting for a handshake).
M.DROP_REASONS = {
  { "bad_mac", { "rx_bad_mac1" } },
  { "replay", { "rx_replayed" } },
  { "decryption_failed", { "rx_decrypt_failed" } },
  { "no_peer", { "tx_no_route" } },
  { "rate_limited", { "rx_ratelimited" } },
  { "queue_full", { "handshake_queue_dropped", "tx_staged_dropped" } },
  { "invalid_handshake", { "rx_handshake_invalid" } },
  { "unknown_index", { "rx_unknown_index" } },
  { "expired_key", { "rx_expired_key" } },
  { "bad_inner_packet", { "rx_bad_inner" } },
  { "wrong_source", { "rx_wrong_source" } },
  { "not_wireguard", { "rx_junk" } },
  { "bad_offload", { "tx_bad_offload" } },
}

M.CONNECTION_KINDS = { "direct", "hole-punched", "port-mapped", "relayed" }

local function n(v) return math.tointeger(v) or 0 end

--- Interface series from an engine status() table (`st.interface`,
-- `st.peers`, `st.stats`).
function M.collect_interface(set, st)
  local s, ifl = st.stats or {}, { interface = st.interface }
  set:family("wgoverlay_peers", "gauge", "Peers configured on the interface.")
  set:add("wgoverlay_peers", ifl, #(st.peers or {}))
  set:family("wgoverlay_handshakes_sent_total", "counter",
    "Handshake messages sent, by message (initiation, response).")
  set:add("wgoverlay_handshakes_sent_total", { interface = st.interface, message = "initiation" }, n(s.tx_initiations))
  set:add("wgoverlay_handshakes_sent_total", { interface = st.interface, message = "response" }, n(s.tx_responses))
  set:family("wgoverlay_handshakes_received_total", "counter",
    "Authenticated handshake messages received, by message (initiation, response).")
  set:add("wgoverlay_handshakes_received_total", { interface = st.interface, message = "initiation" },
    n(s.rx_initiations))
  set:add("wgoverlay_handshakes_received_total", { interface = st.interface, message = "response" }, n(s.rx_responses))
  set:family("wgoverlay_handshakes_completed_total", "counter", "Handshakes completed (sessions established).")
  set:add("wgoverlay_handshakes_completed_total", ifl, n(s.handshakes_completed))
  set:family("wgoverlay_cookie_replies_sent_total", "counter",
    "Cookie replies sent to handshake initiators while under load.")
  set:add("wgoverlay_cookie_replies_sent_total", ifl, n(s.rx_cookie_sent))
  set:family("wgoverlay_packets_dropped_total", "counter", "Packets dropped by the engine, by reason.")
  for _, r in ipairs(M.DROP_REASONS) do
    local sum = 0
    for _, k in ipairs(r[2]) do sum = sum + n(s[k]) end
    set:add("wgoverlay_packets_dropped_total", { interface = st.interface, reason = r[1] }, sum)
  end
  set:family("wgoverlay_received_packets_total", "counter", "WireGuard datagrams received on the UDP socket.")
  set:add("wgoverlay_received_packets_total", ifl, n(s.rx_packets))
  set:family("wgoverlay_sent_packets_total", "counter", "WireGuard datagrams sent on the UDP socket.")
  set:add("wgoverlay_sent_packets_total", ifl, n(s.tx_packets))
  set:family("wgoverlay_relay_received_bytes_total", "counter",
    "Bytes received through TURN relays (ChannelData headers included).")
  set:add("wgoverlay_relay_received_bytes_total", ifl, n(s.relay_rx_bytes))
  set:family("wgoverlay_relay_sent_bytes_total", "counter",
    "Bytes sent through TURN relays (ChannelData headers included).")
  set:add("wgoverlay_relay_sent_bytes_total", ifl, n(s.relay_tx_bytes))
  set:family("wgoverlay_send_errors_total", "counter", "UDP sends that failed.")
  set:add("wgoverlay_send_errors_total", ifl, n(s.udp_send_errors))
  set:family("wgoverlay_tun_write_errors_total", "counter", "Decrypted packets the TUN device refused.")
  set:add("wgoverlay_tun_write_errors_total", ifl, n(s.tun_write_errors))
end

--- Peer series.  peers: { public_key, name?, rx_bytes, tx_bytes,
-- last_handshake (epoch s, 0 never), connection?, healthy?, rtt_ms? };
-- connection and health series only for peers that have those fields
-- (the daemon's; a bare `interface` knows neither).
function M.collect_peers(set, ifname, peers)
  set:family("wgoverlay_peer_received_bytes_total", "counter", "Bytes received from the peer (WireGuard datagrams).")
  set:family("wgoverlay_peer_sent_bytes_total", "counter", "Bytes sent to the peer (WireGuard datagrams).")
  set:family("wgoverlay_peer_last_handshake_seconds", "gauge",
    "Time of the last completed handshake with the peer, Unix epoch seconds (0: never).")
  set:family("wgoverlay_peer_connection", "gauge",
    "How the peer is reached: 1 for the current kind (direct, hole-punched, port-mapped, relayed), 0 for the others.")
  set:family("wgoverlay_peer_healthy", "gauge", "1 while the peer passes health checks, else 0.")
  set:family("wgoverlay_peer_health_rtt_seconds", "gauge", "Round-trip time of the last health probe answered.")
  for _, p in ipairs(peers) do
    local l = { interface = ifname, public_key = p.public_key, name = type(p.name) == "string" and p.name or nil }
    set:add("wgoverlay_peer_received_bytes_total", l, n(p.rx_bytes))
    set:add("wgoverlay_peer_sent_bytes_total", l, n(p.tx_bytes))
    set:add("wgoverlay_peer_last_handshake_seconds", l, n(p.last_handshake))
    if type(p.connection) == "string" then
      for _, kind in ipairs(M.CONNECTION_KINDS) do
        set:add("wgoverlay_peer_connection", { interface = ifname, public_key = p.public_key, name = l.name,
                                               kind = kind }, p.connection == kind and 1 or 0)
      end
    end
    if type(p.healthy) == "boolean" then set:add("wgoverlay_peer_healthy", l, p.healthy and 1 or 0) end
    if type(p.rtt_ms) == "number" then set:add("wgoverlay_peer_health_rtt_seconds", l, p.rtt_ms / 1000) end
  end
end

--- Node series: { name, role, connected (registry reachable), members }.
function M.collect_node(set, info)
  set:family("wgoverlay_node_info", "gauge", "This node: its name and role (leader or member); always 1.")
  set:add("wgoverlay_node_info", { name = info.name, role = info.role }, 1)
  set:family("wgoverlay_registry_connected", "gauge",
    "1 when the registry can be reached (a leader is its own registry), else 0.")
  set:add("wgoverlay_registry_connected", { name = info.name }, info.connected and 1 or 0)
  set:family("wgoverlay_cluster_members", "gauge", "Members in the node's view of the cluster, itself included.")
  set:add("wgoverlay_cluster_members", { name = info.name }, n(info.members))
end

--- The series of a bare engine (`wgoverlay interface`), from status().
function M.collect_device(set, st)
  M.collect_interface(set, st)
  M.collect_peers(set, st.interface, st.peers or {})
end

--- The series of a cluster node (`wgoverlay run`): st is the daemon's
-- status (its `peers` carry names, connection kind and health), dev the
-- engine's status() (counters), members the size of the member list.
function M.collect_daemon(set, st, dev, members)
  M.collect_interface(set, dev)
  M.collect_peers(set, dev.interface, st.peers)
  M.collect_node(set, { name = st.self.name, role = st.self.role, connected = st.registry.connected,
                        members = members })
  if st.policy then M.collect_policy(set, st.self.name, st.policy) end
end

--- Network policy (status.policy): the version enforced and the packets
-- and bytes dropped by it on this node.
function M.collect_policy(set, name, p)
  set:family("wgoverlay_policy_dropped_packets_total", "counter",
    "Packets into this node's containers dropped by the network policy.")
  set:add("wgoverlay_policy_dropped_packets_total", { name = name }, n(p.dropped_packets))
  set:family("wgoverlay_policy_dropped_bytes_total", "counter",
    "Bytes of the packets into this node's containers dropped by the network policy.")
  set:add("wgoverlay_policy_dropped_bytes_total", { name = name }, n(p.dropped_bytes))
  set:family("wgoverlay_policy_enforced_version", "gauge",
    "Version of the network policy this node enforces (0: none).")
  set:add("wgoverlay_policy_enforced_version", { name = name }, n(p.enforced_version))
end

-- ---------------------------------------------------------------------
-- HTTP
-- ---------------------------------------------------------------------

--- The request handler: collect(set) fills a fresh set per scrape.  An
-- error in collect is logged and answered 500 (the daemon goes on).
function M.handler(collect, log)
  return function(method, path)
    if path ~= M.PATH then return 404, "text/plain; charset=utf-8", "not found: try " .. M.PATH .. "\n" end
    if method ~= "GET" and method ~= "HEAD" then
      return 405, "text/plain; charset=utf-8", "method not allowed\n", "GET, HEAD"
    end
    local set = M.new()
    local ok, err = xpcall(collect, debug.traceback, set)
    if not ok then
      if log then log("metrics: %s", tostring(err)) end
      return 500, "text/plain; charset=utf-8", "internal error\n"
    end
    return 200, M.CONTENT_TYPE, M.render(set)
  end
end

--- Serves /metrics on `opts.listen` ("IP:PORT" or "[IPv6]:PORT") from the
-- luv loop.  opts: listen, collect(set), log(fmt, ...), guard(where, fn)
-- (wraps the luv callbacks; the daemon's logs and stops on a bug).
-- @return server ({ close(), address() -> "IP:PORT" }), or nil and a message
function M.serve(opts)
  local uv = require "luv"
  local core = require "wgoverlay.core"
  local ep, err = endpoint.parse(opts.listen)
  if not ep then return nil, "--metrics: " .. err end
  local srv, serr = core.metrics_server(ep.ip, ep.port, M.handler(opts.collect, opts.log), ep.zone)
  if not srv then return nil, serr end
  local guard = opts.guard or function(_, fn) return fn end
  local self = { closed = false }
  local poll = uv.new_poll(srv:fd())
  local timer = uv.new_timer()
  -- libmicrohttpd's epoll fd is readable when it has work; after each
  -- run it says when it must run again (timeouts of idle connections).
  local function pump()
    if self.closed then return end
    local ok, rerr = srv:run()
    if not ok and opts.log then opts.log("metrics: %s", tostring(rerr)) end
    if self.closed then return end
    local ms = srv:timeout()
    timer:stop()
    if ms >= 0 then timer:start(ms, 0, guard("metrics timer", pump)) end
  end
  poll:start("r", guard("metrics", pump))
  pump()
  function self.address()
    local ip, port = srv:address()
    return endpoint.format(ip, port)
  end
  function self.close()
    if self.closed then return end
    self.closed = true
    if not poll:is_closing() then poll:close() end
    if not timer:is_closing() then timer:close() end
    srv:close()
  end
  return self
end

return M
