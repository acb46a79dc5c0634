-- A real etcd cluster for the specs: Debian's etcd-server, members started
-- in network namespaces the spec made, clients served over TLS with a CA
-- and certificates made here with openssl, and (optionally) authentication
-- with a user whose role is limited to one key prefix.
--
--   local fx = etcd_fixture.new({ members = 3, ns = ns, ip = "127.0.0.1",
--                                 auth = { user = "wgo", password = "...", prefix = "/wgo/" } })
--   fx.endpoints        -> { "https://127.0.0.1:2379", ... }
--   fx.cacert           -> CA file for clients
--   fx:ctl(args, i)     -> ok, out, err  (etcdctl as root, against member i or all)
--   fx:stop(i) / fx:kill(i) / fx:start(i)
--
-- Processes are registered with spec/helpers.lua's cleanup (killed on
-- failure); data directories live in the spec's temporary directory.
local helpers = require "spec.helpers"

local quote = helpers.quote
local M = {}

local Fx = {}
Fx.__index = Fx

local function openssl(dir, cmd)
  helpers.must("cd " .. quote(dir) .. " && openssl " .. cmd .. " 2>&1")
end

--- CA, a server certificate for `ips` and a client certificate.
function M.make_certs(dir, ips)
  helpers.must("mkdir -p " .. quote(dir))
  openssl(dir, "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
    .. "-keyout ca.key -out ca.pem -subj /CN=wgo-test-ca")
  local san = {}
  for _, ip in ipairs(ips) do san[#san + 1] = "IP:" .. ip end
  helpers.write_file(dir .. "/server.ext", "subjectAltName=" .. table.concat(san, ",")
    .. "\nextendedKeyUsage=serverAuth,clientAuth\n")
  openssl(dir, "req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key "
    .. "-out server.csr -subj /CN=etcd")
  openssl(dir, "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
    .. "-extfile server.ext -out server.pem")
  -- a second, unrelated CA: a client that trusts it must refuse the server
  openssl(dir, "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
    .. "-keyout other-ca.key -out other-ca.pem -subj /CN=other-ca")
  helpers.must("chmod 0600 " .. quote(dir) .. "/*.key")
  return { ca = dir .. "/ca.pem", cert = dir .. "/server.pem", key = dir .. "/server.key",
           other_ca = dir .. "/other-ca.pem" }
end

--- Starts the cluster.  o.members (default 3), o.ns (one namespace for
-- all) or o.namespaces + o.ips (one each), o.ip (default 127.0.0.1),
-- o.auth {user, password, prefix}.
function M.new(o)
  o = o or {}
  local n = o.members or 3
  local fx = setmetatable({ members = {}, dir = helpers.tmpdir() .. "/etcd." .. tostring(os.time()) .. math.random(1e6) }, Fx)
  local ips, nss = {}, {}
  for i = 1, n do
    nss[i] = (o.namespaces and o.namespaces[i]) or o.ns
    ips[i] = (o.ips and o.ips[i]) or o.ip or "127.0.0.1"
  end
  fx.tls = M.make_certs(fx.dir .. "/pki", ips)
  fx.cacert = fx.tls.ca
  local initial, endpoints = {}, {}
  for i = 1, n do
    local cport = 2379 + (i - 1) * 10000
    local m = { name = "m" .. i, ns = nss[i], ip = ips[i], cport = cport, pport = cport + 1,
                data = fx.dir .. "/m" .. i }
    m.client_url = ("https://%s:%d"):format(m.ip, m.cport)
    m.peer_url = ("http://%s:%d"):format(m.ip, m.pport)
    initial[#initial + 1] = m.name .. "=" .. m.peer_url
    endpoints[i] = m.client_url
    fx.members[i] = m
  end
  fx.endpoints = endpoints
  fx.initial = table.concat(initial, ",")
  for i = 1, n do fx:start(i, true) end
  assert(helpers.wait_until(function() return fx:healthy() end, 30, 0.2),
    "etcd cluster not healthy:\n" .. fx:logs())
  if o.auth then fx:enable_auth(o.auth) end
  return fx
end

function Fx:start(i, first)
  local m = self.members[i]
  local cmd = table.concat({
    "etcd", "--name", m.name, "--data-dir", quote(m.data),
    "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
    "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
    "--initial-cluster", self.initial, "--initial-cluster-state", first and "new" or "existing",
    "--initial-cluster-token", "wgo-test",
    "--cert-file", quote(self.tls.cert), "--key-file", quote(self.tls.key),
    "--heartbeat-interval", "100", "--election-timeout", "1000",
    "--logger", "zap", "--log-level", "warn",
  }, " ")
  m.proc = m.ns:spawn(cmd, { name = "etcd-" .. m.name })
end

function Fx:stop(i)
  local m = self.members[i]
  if m.proc then m.proc:stop(5) end
end

function Fx:kill(i)
  local m = self.members[i]
  if m.proc then
    m.proc:signal("KILL")
    m.proc:wait(5)
  end
end

function Fx:logs()
  local parts = {}
  for _, m in ipairs(self.members) do
    if m.proc then parts[#parts + 1] = "--- " .. m.name .. "\n" .. m.proc:log() end
  end
  return table.concat(parts, "\n")
end

--- etcdctl (v3 API) run in member i's namespace (default: the first
-- running one) against member i or all members, as root when auth is on.
function Fx:ctl(args, i)
  local m = self.members[i or 1]
  local eps = i and m.client_url or table.concat(self.endpoints, ",")
  local user = self.root_password and (" --user " .. quote("root:" .. self.root_password)) or ""
  return m.ns:exec(("ETCDCTL_API=3 etcdctl --endpoints %s --cacert %s --dial-timeout 2s --command-timeout 5s%s %s")
    :format(eps, quote(self.cacert), user, args))
end

function Fx:healthy()
  for i, m in ipairs(self.members) do
    if m.proc and m.proc:alive() then
      local ok = self:ctl("endpoint health", i)
      if not ok then return false end
    end
  end
  return true
end

--- Root user, a role limited to `a.prefix`, a user with that role, auth on.
function Fx:enable_auth(a)
  local pw = "root-" .. tostring(math.random(1e9))
  local steps = {
    "user add root --new-user-password " .. quote(pw),
    "user grant-role root root",
    "role add wgo-role",
    ("role grant-permission wgo-role readwrite %s --prefix=true"):format(quote(a.prefix)),
    ("user add %s --new-user-password %s"):format(quote(a.user), quote(a.password)),
    ("user grant-role %s wgo-role"):format(quote(a.user)),
    "auth enable",
  }
  for _, s in ipairs(steps) do
    local ok, out, err = self:ctl(s)
    assert(ok, "etcdctl " .. s .. ": " .. tostring(out) .. tostring(err))
  end
  self.root_password = pw
end

return M
