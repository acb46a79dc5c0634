/* wgoverlay.core: netlink (addresses, MTU, link state, routes, veth
 * pairs), sysctl and network namespaces (with_netns). */
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <lauxlib.h>
#include <lua.h>

#include "lua_core.h"
#include "netlink.h"
#include "uapi.h"

/* ---- netlink (address, MTU, link state, routes) ---- */

static int nl_result(lua_State *L, int r, const char *what, const char *detail)
{
	if (r >= 0) {
		lua_pushboolean(L, 1);
		return 1;
	}
	if (r == -EPERM || r == -EACCES)
		return wgo_fail(L, r, "%s %s: permission denied: needs CAP_NET_ADMIN", what, detail);
	return wgo_fail(L, r, "%s %s: %s", what, detail, wg_nl_strerror(r));
}

static int check_ifindex(lua_State *L, int idx, const char **name)
{
	*name = luaL_checkstring(L, idx);
	return wg_nl_ifindex(*name);
}

/* core.addr(ifname, "add"|"del", cidr) */
static int l_addr(lua_State *L)
{
	const char *ifname, *op = luaL_checkstring(L, 2);
	size_t len;
	const char *cidr = luaL_checklstring(L, 3, &len);
	int ifindex = check_ifindex(L, 1, &ifname);
	uint8_t family, addr[16], plen;

	if (!wg_parse_cidr(cidr, len, &family, addr, &plen)) {
		return wgo_fail(L, EINVAL, "CIDR \"%s\" invalid", cidr);
	}
	if (ifindex < 0)
		return nl_result(L, ifindex, "interface", ifname);
	if (!strcmp(op, "add"))
		return nl_result(L, wg_nl_addr_add(ifindex, family, addr, plen), "adding address", cidr);
	return nl_result(L, wg_nl_addr_del(ifindex, family, addr, plen), "removing address", cidr);
}

/* core.route(ifname, "add"|"del", cidr[, table]) */
static int l_route(lua_State *L)
{
	const char *ifname, *op = luaL_checkstring(L, 2);
	size_t len;
	const char *cidr = luaL_checklstring(L, 3, &len);
	lua_Integer table = luaL_optinteger(L, 4, 0);
	int ifindex = check_ifindex(L, 1, &ifname);
	uint8_t family, addr[16], plen;

	if (!wg_parse_cidr(cidr, len, &family, addr, &plen)) {
		return wgo_fail(L, EINVAL, "CIDR \"%s\" invalid", cidr);
	}
	if (ifindex < 0)
		return nl_result(L, ifindex, "interface", ifname);
	if (!strcmp(op, "add"))
		return nl_result(L, wg_nl_route_add(ifindex, family, addr, plen, (uint32_t)table), "adding route",
				 cidr);
	return nl_result(L, wg_nl_route_del(ifindex, family, addr, plen, (uint32_t)table), "removing route", cidr);
}

static void addr_list_cb(void *arg, int family, const uint8_t *addr, uint8_t plen)
{
	lua_State *L = arg;
	char ip[INET6_ADDRSTRLEN];

	inet_ntop(family, addr, ip, sizeof(ip));
	lua_pushfstring(L, "%s/%d", ip, (int)plen);
	lua_rawseti(L, -2, (lua_Integer)luaL_len(L, -2) + 1);
}

static int l_addr_list(lua_State *L)
{
	const char *ifname;
	int ifindex = check_ifindex(L, 1, &ifname), r;

	if (ifindex < 0)
		return nl_result(L, ifindex, "interface", ifname);
	lua_newtable(L);
	r = wg_nl_addr_list(ifindex, AF_UNSPEC, addr_list_cb, L);
	if (r < 0)
		return nl_result(L, r, "listing addresses of", ifname);
	return 1;
}

/* core.link(ifname, { mtu = n, up = bool }) */
static int l_link(lua_State *L)
{
	const char *ifname;
	int ifindex = check_ifindex(L, 1, &ifname), r = 0;

	luaL_checktype(L, 2, LUA_TTABLE);
	if (ifindex < 0)
		return nl_result(L, ifindex, "interface", ifname);
	if (lua_getfield(L, 2, "mtu") != LUA_TNIL) {
		lua_Integer mtu = luaL_checkinteger(L, -1);

		if (mtu < 576 || mtu > 65535) {
			return wgo_fail(L, EINVAL, "mtu %d invalid: must be 576..65535", (int)mtu);
		}
		r = wg_nl_link_set_mtu(ifindex, (unsigned)mtu);
		if (r < 0)
			return nl_result(L, r, "setting MTU of", ifname);
	}
	lua_pop(L, 1);
	if (lua_getfield(L, 2, "up") != LUA_TNIL) {
		r = wg_nl_link_set_up(ifindex, lua_toboolean(L, -1));
		if (r < 0)
			return nl_result(L, r, "setting link state of", ifname);
	}
	lua_pop(L, 1);
	lua_pushboolean(L, 1);
	return 1;
}

static int l_link_delete(lua_State *L)
{
	const char *ifname;
	int ifindex = check_ifindex(L, 1, &ifname);

	if (ifindex == -ENODEV) {
		lua_pushboolean(L, 0);
		return 1;
	}
	if (ifindex < 0)
		return nl_result(L, ifindex, "interface", ifname);
	return nl_result(L, wg_nl_link_delete(ifindex), "deleting link", ifname);
}

static int l_ifindex_of(lua_State *L)
{
	lua_pushinteger(L, wg_nl_ifindex(luaL_checkstring(L, 1)));
	return 1;
}

/* ---- network namespaces (containers) ---- */

static int open_netns(lua_State *L, const char *ns)
{
	char path[256];

	/* A name refers to /var/run/netns/NAME (ip netns); a path is used as is
	 * (e.g. /proc/PID/ns/net of a container's process). */
	if (strchr(ns, '/'))
		snprintf(path, sizeof(path), "%s", ns);
	else
		snprintf(path, sizeof(path), "/var/run/netns/%s", ns);
	return open(path, O_RDONLY | O_CLOEXEC);
}

/* core.with_netns(ns, fn, ...) runs fn in network namespace ns (only this
 * thread moves: the engine's threads stay where they are) and always comes
 * back.  Returns fn's results, or nil, message. */
static int l_with_netns(lua_State *L)
{
	const char *ns = luaL_checkstring(L, 1);
	int target, home, n, status;

	luaL_checktype(L, 2, LUA_TFUNCTION);
	target = open_netns(L, ns);
	if (target < 0) {
		int e = errno;

		return wgo_fail(L, e, "network namespace \"%s\": %s", ns, strerror(e));
	}
	home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	if (home < 0 || setns(target, CLONE_NEWNET) < 0) {
		int e = errno;

		if (home >= 0)
			close(home);
		close(target);
		return wgo_fail(L, e, "entering network namespace \"%s\": %s", ns, strerror(e));
	}
	close(target);
	n = lua_gettop(L);
	status = lua_pcall(L, n - 2, LUA_MULTRET, 0);
	if (setns(home, CLONE_NEWNET) < 0) {
		close(home);
		return luaL_error(L, "cannot return to the original network namespace: %s", strerror(errno));
	}
	close(home);
	if (status != LUA_OK)
		return lua_error(L);
	return lua_gettop(L) - 1; /* fn's results, above the namespace name */
}

/* core.veth(name, peer_name, peer_ns) creates a veth pair with the peer end
 * in namespace peer_ns (a name or a path). */
static int l_veth(lua_State *L)
{
	const char *name = luaL_checkstring(L, 1);
	const char *peer = luaL_checkstring(L, 2);
	const char *ns = luaL_optstring(L, 3, NULL);
	int fd = -1, r;

	if (strlen(name) >= IFNAMSIZ || strlen(peer) >= IFNAMSIZ) {
		return wgo_fail(L, EINVAL, "interface name longer than %d bytes", IFNAMSIZ - 1);
	}
	if (ns) {
		fd = open_netns(L, ns);
		if (fd < 0) {
			int e = errno;

			return wgo_fail(L, e, "network namespace \"%s\": %s", ns, strerror(e));
		}
	}
	r = wg_nl_veth_create(name, peer, fd);
	if (fd >= 0)
		close(fd);
	return nl_result(L, r, "creating veth", name);
}

/* core.sysctl(path, value): writes /proc/sys/<path> of this thread's
 * namespace, e.g. "net/ipv4/ip_forward", "1". */
static int l_sysctl(lua_State *L)
{
	const char *key = luaL_checkstring(L, 1);
	size_t len;
	const char *val = luaL_checklstring(L, 2, &len);
	char path[256];
	int fd;

	if (strstr(key, ".."))
		return luaL_argerror(L, 1, "invalid sysctl");
	snprintf(path, sizeof(path), "/proc/sys/%s", key);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, val, len) != (ssize_t)len) {
		int e = errno;

		if (fd >= 0)
			close(fd);
		return wgo_fail(L, e, "sysctl %s: %s", key, strerror(e));
	}
	close(fd);
	lua_pushboolean(L, 1);
	return 1;
}

/* core.route_via(ifname, "add"|"del", cidr, gateway) — a route through a
 * gateway reachable on the link (onlink), for container namespaces. */
static int l_route_via(lua_State *L)
{
	const char *ifname, *op = luaL_checkstring(L, 2);
	size_t len, glen;
	const char *cidr = luaL_checklstring(L, 3, &len);
	const char *gw = luaL_checklstring(L, 4, &glen);
	int ifindex = check_ifindex(L, 1, &ifname);
	uint8_t family, addr[16], plen, gfamily, gaddr[16], gplen;

	if (!wg_parse_cidr(cidr, len, &family, addr, &plen) || !wg_parse_cidr(gw, glen, &gfamily, gaddr, &gplen) ||
	    family != gfamily) {
		return wgo_fail(L, EINVAL, "route %s via %s invalid", cidr, gw);
	}
	if (ifindex < 0)
		return nl_result(L, ifindex, "interface", ifname);
	if (!strcmp(op, "add"))
		return nl_result(L, wg_nl_route_add_via(ifindex, family, addr, plen, gaddr), "adding route", cidr);
	return nl_result(L, wg_nl_route_del(ifindex, family, addr, plen, 0), "removing route", cidr);
}

static const luaL_Reg netlink_funcs[] = {
	{ "addr", l_addr },
	{ "addr_list", l_addr_list },
	{ "route", l_route },
	{ "link", l_link },
	{ "link_delete", l_link_delete },
	{ "ifindex", l_ifindex_of },
	{ "with_netns", l_with_netns },
	{ "veth", l_veth },
	{ "sysctl", l_sysctl },
	{ "route_via", l_route_via },
	{ NULL, NULL },
};

void wgo_open_netlink(lua_State *L)
{
	luaL_setfuncs(L, netlink_funcs, 0);
}
