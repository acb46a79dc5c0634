--- wgoverlay: encrypted overlay networking for containers.
-- The facade: key helpers and the transport class over the native engine.
-- @module wgoverlay
local core = require "wgoverlay.core"

local M = {
  _VERSION = "wgoverlay scm",
  core = core,
}

--- Generates a key pair.
-- @treturn string private key (base64, 44 characters)
-- @treturn string public key (base64)
function M.generate_keys()
  return core.generate_keys()
end

--- Derives the public key of a private key.
-- @tparam string private_key base64
-- @return public key, or nil and an error message
function M.public_key(private_key)
  return core.public_key(private_key)
end

--- Generates a preshared key (base64).
function M.generate_psk()
  return core.generate_psk()
end

setmetatable(M, { __index = function(t, k)
  -- Loaded on first use so that `require "wgoverlay"` stays cheap.
  if k == "transport" then
    local v = require "wgoverlay.transport"
    rawset(t, k, v)
    return v
  end
end })

return M
