--- The embedded registry, member side: a JSON-lines session to the
-- leader over the overlay (TCP 7946, inside WireGuard) that applies the
-- leader's snapshots and deltas to a local view (persisted in
-- members.json), and sends this node's containers, NAT candidates and
-- punch requests.  See wgoverlay.registry for the interface.
-- @module wgoverlay.registry.member
local uv = require "luv"
local cjson = require "cjson"
local state = require "wgoverlay.state"
local membership = require "wgoverlay.membership"
local cluster = require "wgoverlay.cluster"
local jsonlines = require "wgoverlay.jsonlines"

local M = {}

M.RECONNECT = 2 -- seconds between connection attempts to the leader

local Member = {}
Member.__index = Member

function M.open(host)
  local node = host.node
  local saved, err, kind = state.load_checked(host.paths.members, "members", { node = node })
  if not saved and kind ~= "missing" then return nil, err end
  saved = saved or {}
  local view
  view, err = membership.member.new({ self_name = node.name, members = saved.members, version = saved.version,
                                      epoch = saved.epoch })
  if not view then return nil, err end
  -- a member always knows the leader, even before the first snapshot
  local l = node.cluster.leader
  if not view:get(l.name) and l.public_key then
    view:apply({ type = "snapshot", version = 0, members = { l } })
  end
  return setmetatable({ kind = "embedded", role = "member", host = host, node = node, view = view,
                        was_member = view:get(node.name) ~= nil, containers = {} }, Member)
end

function Member:members() return self.view:members() end
function Member:version() return self.view.version end
function Member:connected() return (self.session and self.session.ready) or false end

function Member:start()
  self.timer = uv.new_timer()
  self.timer:start(0, M.RECONNECT * 1000, self.host.guard("leader reconnect", function() self:connect() end))
  return true
end

function Member:stop()
  self.stopping = true
  if self.timer and not self.timer:is_closing() then self.timer:close() end
  if self.session then self.session.conn:close() end
end

function Member:send(msg)
  if self.session and self.session.ready then self.session.conn:send(msg) end
end

function Member:set_containers(list)
  self.containers = list
  self:send({ type = "containers", containers = list })
end

function Member:set_candidates(c)
  self.candidates = c
  if c then self:send({ type = "candidates", candidates = c }) end
end

function Member:request_punch(peer) self:send({ type = "punch_request", peer = peer }) end

function Member:on_datagram() return false end -- joins go to the leader

function Member:issue_token() return nil, "tokens are issued by the leader; this node is a member" end

function Member:remove_node() return nil, "remove-node runs on the leader" end

function Member:save()
  local ok, err = state.save(self.host.paths.members, self.view:export())
  if not ok then self.host.log("cannot save members: %s", err) end
end

function Member:on_line(line)
  local ok, msg = pcall(cjson.decode, line)
  if not ok or type(msg) ~= "table" then return end
  if msg.type == "punch" then
    if type(msg.peer) == "string" then self.host.punch(msg.peer) end
    return
  end
  local res = self.view:apply(msg)
  if not res then return end
  if res.need_snapshot then self:send(self.view:hello()) end
  if res.changed then
    self:save()
    if self.view:get(self.node.name) then
      self.was_member = true
    elseif self.was_member then
      self.host.log("this node was removed from the cluster by the leader: stopping")
      return self.host.removed()
    end
    self.host.changed()
  end
end

function Member:connect()
  if self.stopping or self.session then return end
  local tcp = uv.new_tcp()
  local s = {}
  s.conn = jsonlines.wrap(tcp, {
    on_line = function(_, line) self:on_line(line) end,
    on_close = function() if self.session == s then self.session = nil end end,
    log = function(fmt, ...) self.host.log("membership session: " .. fmt, ...) end,
  })
  self.session = s
  local leader_ip = self.node.cluster.leader.overlay_ip
  local ok, cerr = tcp:connect(leader_ip, cluster.MEMBERSHIP_PORT, self.host.guard("leader connect", function(err)
    if err then return s.conn:close(err) end
    s.ready = true
    s.conn:send(self.view:hello())
    s.conn:send({ type = "containers", containers = self.containers })
    if self.candidates then s.conn:send({ type = "candidates", candidates = self.candidates }) end
    s.conn:start()
  end))
  if not ok then s.conn:close(cerr) end
end

return M
