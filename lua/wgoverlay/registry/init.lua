--- The registry seam: where a node learns the cluster's members and
-- publishes its own record.  The daemon talks only to this interface and
-- does not know which backend serves it.
--
-- Backends:
--
-- * `embedded` (the zero-setup default): one node, the leader, holds the
--   versioned registry in its state directory (registry/leader.lua: the
--   store, joins, tokens, the membership server, punch coordination);
--   every other node keeps a session to it over the overlay
--   (registry/member.lua).
-- * `etcd`: the cluster lives in etcd under one key prefix; every node is
--   an equal member that watches it, admits joiners, issues tokens and
--   removes nodes through etcd transactions (registry/etcd.lua).
--
-- The interface (`reg`):
--
--   reg.kind, reg.role            "embedded" | "etcd"; "leader" or "member"
--   reg:start()                   -> true | nil, err (servers, sessions, timers)
--   reg:stop()
--   reg:members()                 -> member records, this node's included
--   reg:version()                 -> the registry version this node has
--   reg:connected()               -> true when a change can be made now
--   reg:set_containers(list)      this node's containers
--   reg:set_candidates(c)         this node's NAT candidates
--   reg:set_public_key(pub)       this node rotated its WireGuard key: publish
--                                 the new public key in its record (every
--                                 peer then changes that key in place)
--   reg:request_punch(peer)       ask for a coordinated hole punch with `peer`
--   reg:on_datagram(from, data)   a control datagram that came to the WireGuard port
--                                 (joins; key queries and answers, wgoverlay.leaderkey)
--   reg:issue_token(o, cb)        cb(token) | cb(nil, err) (`ttl`, `uses`)
--   reg:remove_node(name, cb)     cb(true) | cb(nil, err)
--   reg:status()                  (optional) more for status.registry
--                                 (etcd: endpoints, prefix, revision)
--
-- What a backend may use of the node (`host`): `node` (node.json),
-- `paths`, `t` (the transport), `log(fmt, ...)`, `event(kind, fields)`,
-- `guard(where, fn)`, and the callbacks `changed()` (the member list
-- changed), `punch(peer)` (probe `peer` now) and `removed()` (this node
-- was removed from the cluster).
-- @module wgoverlay.registry
local M = {}

--- Opens this node's registry (loads and checks its state files).
-- @return registry, or nil and a message
function M.open(host)
  local c = host.node.cluster
  if type(c.registry) == "table" and c.registry.kind == "etcd" then
    return require("wgoverlay.registry.etcd").open(host)
  end
  if host.node.role == "leader" then return require("wgoverlay.registry.leader").open(host) end
  return require("wgoverlay.registry.member").open(host)
end

return M
