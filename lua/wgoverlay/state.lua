--- State files: JSON documents written atomically with mode 0600.
--
-- Every file is a versioned wrapper
--
--     {"format": "wgoverlay-state", "version": 1, "data": {...}}
--
-- so that a foreign JSON document is refused rather than misread.  A
-- missing, truncated or corrupt file is reported with a clear message and
-- is never modified here; no error message ever quotes file content (state
-- files hold private keys).
--
-- Numbers: JSON has one number type; integral values come back as Lua
-- integers, others as floats.  lua-cjson writes 14 significant digits, so
-- integers beyond 10^14 do not survive a round trip (store them as strings).
-- JSON `null` is read as `cjson.null`.
-- @module wgoverlay.state
local cjson = require "cjson"
local uv = require "luv"

local M = {}

--- The wrapper's `format` field.
M.FORMAT = "wgoverlay-state"
--- The wrapper version this code writes and reads.
M.VERSION = 1
--- Largest state file `load` accepts (bytes).
M.MAX_SIZE = 64 * 1024 * 1024

local json = cjson.new()
json.encode_sparse_array(false)
json.encode_invalid_numbers(false)
json.decode_invalid_numbers(false)
json.encode_number_precision(14)

local function core()
  return require "wgoverlay.core"
end

-- Integral floats (everything cjson decodes is a float) back to integers.
local function normalise(v, depth)
  if type(v) == "number" then
    return math.tointeger(v) or v
  end
  if type(v) == "table" and depth < 200 then
    for k, x in pairs(v) do v[k] = normalise(x, depth + 1) end
  end
  return v
end

-- Read the whole file: content | nil, message, kind.
local function read_all(path)
  local f, err, code = io.open(path, "rb")
  if not f then
    if code == 2 then -- ENOENT
      return nil, ("state file %s: no such file"):format(path), "missing"
    end
    return nil, ("state file %s: %s"):format(path, err:gsub("^.-: ", "")), "io"
  end
  local st = uv.fs_stat(path)
  if st and st.type ~= "file" then
    f:close()
    return nil, ("state file %s cannot be read: not a regular file (%s)"):format(path, st.type), "io"
  end
  local size = f:seek("end")
  if size and size > M.MAX_SIZE then
    f:close()
    return nil, ("state file %s is too large (%d bytes)"):format(path, size), "corrupt"
  end
  f:seek("set")
  local data, rerr = f:read("a")
  f:close()
  if not data then
    return nil, ("state file %s cannot be read: %s"):format(path, tostring(rerr)), "io"
  end
  return data
end

-- The cjson message without any quoted input: "... at character N".
local function decode_error(msg)
  local at = tostring(msg):match("at character (%d+)")
  if tostring(msg):find("end of string", 1, true) then
    return "truncated JSON" .. (at and (" at byte " .. at) or "")
  end
  return "invalid JSON" .. (at and (" at byte " .. at) or "")
end

-- Check the wrapper and return its data.
local function unwrap(path, doc)
  if type(doc) ~= "table" or doc[1] ~= nil then
    local what = doc == cjson.null and "null" or type(doc) == "table" and "array" or type(doc)
    return nil, ("state file %s is corrupt: top level is a JSON %s, not an object"):format(
      path, what), "corrupt"
  end
  if doc.format ~= M.FORMAT then
    return nil, ("state file %s is not a wgoverlay state file (no \"format\": %q)"):format(
      path, M.FORMAT), "foreign"
  end
  local version = math.tointeger(doc.version)
  if version ~= M.VERSION then
    return nil, ("state file %s has version %s; this wgoverlay reads version %d"):format(
      path, version and tostring(version) or "?", M.VERSION), "version"
  end
  if type(doc.data) ~= "table" then
    return nil, ("state file %s is corrupt: \"data\" is not an object"):format(path), "corrupt"
  end
  return doc.data
end

--- Read a state file.
-- @tparam string path
-- @treturn table the data stored by `save`
-- @return or nil, message, kind: kind is "missing" (no such file),
--   "corrupt" (truncated or invalid JSON, wrong shape), "foreign" (not a
--   wgoverlay state file), "version" (unsupported version) or "io".
--   The file is never modified.
function M.load(path)
  if type(path) ~= "string" then error("state.load: path must be a string", 2) end
  local content, err, kind = read_all(path)
  if not content then return nil, err, kind end
  if content:match("^%s*$") then
    return nil, ("state file %s is corrupt: empty file"):format(path), "corrupt"
  end
  local ok, doc = pcall(json.decode, content)
  if not ok then
    return nil, ("state file %s is corrupt: %s"):format(path, decode_error(doc)), "corrupt"
  end
  local data, uerr, ukind = unwrap(path, doc)
  if not data then return nil, uerr, ukind end
  return normalise(data, 0)
end

--- Read a state file and check it against the schema of its kind (see
-- wgoverlay.schema): "node", "leader", "members", "containers" or
-- "join_pending".  A file
-- that does not fit is refused as a whole, named with the first bad field:
-- `/dir/node.json: field "self.listen_port": expected an integer port
-- 1-65535, got string`.  The file is never modified.
-- @tparam string path
-- @tparam string kind
-- @tparam[opt] table ctx `node` = the (checked) node.json data, so that
--   slices and addresses are checked against the cluster and the node
-- @return data, or nil, message, kind as `load` (kind "invalid" for a
--   file that does not fit its schema)
function M.load_checked(path, kind, ctx)
  local data, err, ekind = M.load(path)
  if not data then return nil, err, ekind end
  local ok, serr = require("wgoverlay.schema").check(kind, data, ctx)
  if not ok then return nil, ("%s: %s"):format(path, serr), "invalid" end
  return data
end

--- Encode `data` (a table) as the JSON text `save` would write.
-- @treturn string or nil, message
function M.encode(data)
  if type(data) ~= "table" then return nil, "state data must be a table" end
  local ok, text = pcall(json.encode, { format = M.FORMAT, version = M.VERSION, data = data })
  if not ok then
    return nil, "state data cannot be encoded as JSON: " .. tostring(text):gsub("^.-: ", "")
  end
  return text .. "\n"
end

-- fsync the directory holding `path` so the rename is durable (best effort).
local function sync_dir(path)
  local dir = path:match("^(.*)/[^/]*$") or "."
  if dir == "" then dir = "/" end
  local fd = uv.fs_open(dir, "r", 0)
  if fd then
    uv.fs_fsync(fd)
    uv.fs_close(fd)
  end
end

--- Write `data` atomically: temporary file in the same directory, fsync,
-- rename, mode 0600 (via `wgoverlay.core.write_private`).  Readers see
-- either the old or the new file.
-- @tparam string path
-- @tparam table data JSON-safe: string keys or sequences, no functions,
--   no NaN/inf
-- @treturn true or nil, message
function M.save(path, data)
  if type(path) ~= "string" then error("state.save: path must be a string", 2) end
  local text, err = M.encode(data)
  if not text then return nil, ("state file %s not written: %s"):format(path, err) end
  local ok, werr = core().write_private(path, text)
  if not ok then return nil, "cannot write state file " .. tostring(werr) end
  sync_dir(path)
  return true
end

local function mkdir_parents(dir)
  local parent = dir:match("^(.+)/[^/]+$")
  if parent and not uv.fs_stat(parent) then
    local ok, err = mkdir_parents(parent)
    if not ok then return nil, err end
    local made, merr, code = uv.fs_mkdir(parent, tonumber("755", 8))
    if not made and code ~= "EEXIST" then return nil, merr end
  end
  return true
end

--- Make sure `dir` exists, is a directory, belongs to us and is private.
-- A missing directory is created with mode 0700 (missing parents 0755).
-- An existing one that group or others can access is refused, as is one
-- owned by another user.
-- @tparam string dir
-- @treturn true or nil, message
function M.ensure_dir(dir)
  if type(dir) ~= "string" or dir == "" then error("state.ensure_dir: dir must be a string", 2) end
  dir = dir:gsub("(.)/+$", "%1")
  local st = uv.fs_stat(dir)
  if not st then
    local ok, err = mkdir_parents(dir)
    if ok then ok, err = uv.fs_mkdir(dir, tonumber("700", 8)) end
    if not ok and not uv.fs_stat(dir) then
      return nil, ("cannot create state directory %s: %s"):format(dir, tostring(err))
    end
    -- the umask may have cleared bits only; chmod makes 0700 exact
    local cok, cerr = uv.fs_chmod(dir, tonumber("700", 8))
    if not cok then return nil, ("cannot chmod state directory %s: %s"):format(dir, tostring(cerr)) end
    st = uv.fs_stat(dir)
    if not st then return nil, ("state directory %s vanished"):format(dir) end
  end
  if st.type ~= "directory" then
    return nil, ("state directory %s is not a directory"):format(dir)
  end
  if st.uid ~= uv.getuid() then
    return nil, ("state directory %s belongs to uid %d, not to us (uid %d)"):format(dir, st.uid, uv.getuid())
  end
  if st.mode & tonumber("077", 8) ~= 0 then
    return nil, ("state directory %s is accessible by group or others (mode %03o); run chmod 700 %s"):format(
      dir, st.mode & tonumber("777", 8), dir)
  end
  return true
end

return M
