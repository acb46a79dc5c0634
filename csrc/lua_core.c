/* wgoverlay.core: the Lua 5.4 binding of the engine.  This file opens the
 * module; what it holds is bound by the files named in lua_core.h. */
#include <errno.h>
#include <stdarg.h>

#include <lauxlib.h>
#include <lua.h>
#include <sodium.h>

#include "lua_core.h"

int wgo_fail(lua_State *L, int err, const char *fmt, ...)
{
	va_list ap;

	lua_pushnil(L);
	va_start(ap, fmt);
	lua_pushvfstring(L, fmt, ap);
	va_end(ap);
	if (!err)
		return 2;
	lua_pushinteger(L, err < 0 ? -err : err);
	return 3;
}

int luaopen_wgoverlay_core(lua_State *L);

int luaopen_wgoverlay_core(lua_State *L)
{
	if (sodium_init() < 0)
		return luaL_error(L, "libsodium failed to initialise");
	lua_createtable(L, 0, 48);
	wgo_open_keys(L);
	wgo_open_device(L);
	wgo_open_netlink(L);
	wgo_open_process(L);
	wgo_open_metrics(L);
	wgo_open_http(L);
	wgo_open_portmap(L);
	lua_pushliteral(L, "wgoverlay.core");
	lua_setfield(L, -2, "_NAME");
	return 1;
}
