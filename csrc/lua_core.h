/* Internal to the Lua binding (csrc/lua_*.c): what its files share.  One
 * file per kind of thing it exposes, in the manner of luv:
 *   lua_keys.c     keys and crypto primitives, write_private
 *   lua_device.c   the device userdata and its methods; the UAPI client
 *   lua_netlink.c  addresses, routes, links, veth, sysctl, namespaces
 *   lua_process.c  signals, daemonize/ready, kill, getpid, list_sockets
 *   lua_http.c     HTTP(S) client on libcurl multi, run by the caller's loop
 *   lua_metrics.c  the HTTP server of --metrics (libmicrohttpd, caller's loop)
 *   lua_portmap.c  NAT-PMP (libnatpmp) and UPnP IGD (libminiupnpc) mappings
 *   lua_core.c     luaopen_wgoverlay_core, which gathers them
 * The binding reaches the engine only through device.h's functions.
 *
 * Conventions: misuse (wrong argument types) raises; failures of the
 * system or the network return nil, message[, errno] (wgo_fail).
 *
 * Error paths: any Lua API call that allocates may raise (a memory error),
 * and so do luaL_error and luaL_check*: the C function is left by longjmp
 * and its locals are never wiped or freed.  So:
 *  - a secret is never decoded or copied into C memory that a raise would
 *    abandon: it lives in a to-be-closed userdata (lua_toclose) whose
 *    __close (run on return and when an error unwinds the function) and
 *    __gc wipe it: wgo_secret_new() for plain bytes, a wgoverlay.uapi_set
 *    for a transaction being built (wg_uapi_set_free wipes and frees it),
 *    a wgoverlay.uapi_reply for a UAPI reply and its parse;
 *  - no Lua API call that can raise or allocate is made while an engine
 *    lock is held: the engine copies under its locks into malloc'd memory
 *    (wg_device_snapshot, owned by a to-be-closed userdata), then tables
 *    are built.
 * Static error buffers never contain secrets. */
#ifndef WG_LUA_CORE_H
#define WG_LUA_CORE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <lauxlib.h>
#include <lua.h>

#define WGO_SECRET_MT "wgoverlay.secret"

/* Pushes nil and the message formatted by lua_pushfstring's rules (%s %d
 * %f %p %c %%); then, unless err is 0, |err| as the errno.  Returns the
 * number of values pushed (3, or 2 without an errno). */
int wgo_fail(lua_State *L, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* size zeroed bytes of Lua memory, wiped when the calling C function
 * returns or raises (and again at collection).  Leaves the userdata on the
 * stack: it must stay there (above it the function may push and pop). */
void *wgo_secret_new(lua_State *L, size_t size);

/* Decodes the base64 key at idx (a string) into key; false if it is not
 * one. */
bool wgo_key_from_lua(lua_State *L, int idx, uint8_t key[32]);

/* What an error message may show of a string that failed to parse as a
 * key: its first 4 characters and its length. */
void wgo_key_excerpt(char *out, size_t outlen, const char *s, size_t len);

/* Each adds its functions to the table on top of the stack (and registers
 * the metatables it uses). */
void wgo_open_keys(lua_State *L);
void wgo_open_device(lua_State *L);
void wgo_open_netlink(lua_State *L);
void wgo_open_process(lua_State *L);
void wgo_open_metrics(lua_State *L);
void wgo_open_http(lua_State *L);
void wgo_open_portmap(lua_State *L);
#endif
