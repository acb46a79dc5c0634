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
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>

#include <libmnl/libmnl.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>

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

static const struct {
	uint32_t bit;
	const char *name;
} addr_flag_names[] = {
	{ IFA_F_TENTATIVE, "tentative" }, { IFA_F_DEPRECATED, "deprecated" }, { IFA_F_DADFAILED, "dadfailed" },
	{ IFA_F_TEMPORARY, "temporary" }, { IFA_F_OPTIMISTIC, "optimistic" }, { IFA_F_PERMANENT, "permanent" },
};

static void addr_dump_cb(void *arg, const struct wg_nl_addr_info *a)
{
	lua_State *L = arg;
	char ip[INET6_ADDRSTRLEN], ifname[IF_NAMESIZE];

	inet_ntop(a->family, a->addr, ip, sizeof(ip));
	lua_createtable(L, 0, 7);
	lua_pushstring(L, ip);
	lua_setfield(L, -2, "ip");
	lua_pushinteger(L, a->prefixlen);
	lua_setfield(L, -2, "prefixlen");
	lua_pushinteger(L, a->family == AF_INET ? 4 : 6);
	lua_setfield(L, -2, "family");
	lua_pushinteger(L, a->ifindex);
	lua_setfield(L, -2, "ifindex");
	if (if_indextoname((unsigned)a->ifindex, ifname)) {
		lua_pushstring(L, ifname);
		lua_setfield(L, -2, "ifname");
	}
	lua_pushstring(L, a->scope == RT_SCOPE_UNIVERSE ? "global"
			  : a->scope == RT_SCOPE_SITE   ? "site"
			  : a->scope == RT_SCOPE_LINK   ? "link"
			  : a->scope == RT_SCOPE_HOST   ? "host"
							: "other");
	lua_setfield(L, -2, "scope");
	lua_newtable(L);
	for (size_t i = 0; i < sizeof(addr_flag_names) / sizeof(addr_flag_names[0]); i++) {
		if (a->flags & addr_flag_names[i].bit) {
			lua_pushboolean(L, 1);
			lua_setfield(L, -2, addr_flag_names[i].name);
		}
	}
	lua_setfield(L, -2, "flags");
	lua_rawseti(L, -2, (lua_Integer)luaL_len(L, -2) + 1);
}

/* core.addr_dump([family 4|6]) -> list of { ip, prefixlen, family, ifindex,
 * ifname, scope = "global"|"site"|"link"|"host"|"other", flags = { tentative,
 * deprecated, dadfailed, temporary, optimistic, permanent } } for every link
 * of the calling thread's namespace; or nil, message, errno. */
static int l_addr_dump(lua_State *L)
{
	lua_Integer fam = luaL_optinteger(L, 1, 0);
	int family = fam == 4 ? AF_INET : fam == 6 ? AF_INET6 : AF_UNSPEC, r;

	if (fam != 0 && fam != 4 && fam != 6)
		return luaL_argerror(L, 1, "family must be 4 or 6");
	lua_newtable(L);
	r = wg_nl_addr_dump_all(family, addr_dump_cb, L);
	if (r < 0)
		return nl_result(L, r, "listing addresses", "of all links");
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

/* ---- queries: one link, the route to an address (MTU, MAC, CHECK) ----
 * One request, one answer (no dump, no ACK): a private socket per call in
 * the calling thread's namespace, as netlink.c does. */

struct nl_answer {
	uint16_t type; /* RTM_NEWLINK or RTM_NEWROUTE */
	int ifindex;   /* link index / RTA_OIF */
	unsigned mtu;  /* IFLA_MTU / RTAX_MTU of the route (0: none) */
	char ifname[IFNAMSIZ];
	uint8_t mac[32];
	size_t mac_len;
	int family;
	uint8_t gw[16];
	bool has_gw;
	bool up;
};

static int nl_answer_cb(const struct nlmsghdr *nlh, void *data)
{
	struct nl_answer *a = data;
	struct nlattr *attr;

	if (nlh->nlmsg_type == RTM_NEWLINK && nlh->nlmsg_len >= mnl_nlmsg_size(sizeof(struct ifinfomsg))) {
		const struct ifinfomsg *ifm = mnl_nlmsg_get_payload(nlh);

		a->type = RTM_NEWLINK;
		a->ifindex = ifm->ifi_index;
		a->up = (ifm->ifi_flags & IFF_UP) != 0;
		mnl_attr_for_each(attr, nlh, sizeof(*ifm))
		{
			uint16_t t = mnl_attr_get_type(attr);

			if (t == IFLA_MTU && mnl_attr_get_payload_len(attr) >= 4)
				a->mtu = mnl_attr_get_u32(attr);
			else if (t == IFLA_ADDRESS && mnl_attr_get_payload_len(attr) <= sizeof(a->mac)) {
				a->mac_len = mnl_attr_get_payload_len(attr);
				memcpy(a->mac, mnl_attr_get_payload(attr), a->mac_len);
			} else if (t == IFLA_IFNAME) {
				snprintf(a->ifname, sizeof(a->ifname), "%s", mnl_attr_get_str(attr));
			}
		}
		return MNL_CB_STOP;
	}
	if (nlh->nlmsg_type == RTM_NEWROUTE && nlh->nlmsg_len >= mnl_nlmsg_size(sizeof(struct rtmsg))) {
		const struct rtmsg *rtm = mnl_nlmsg_get_payload(nlh);
		size_t alen = rtm->rtm_family == AF_INET6 ? 16 : 4;

		a->type = RTM_NEWROUTE;
		a->family = rtm->rtm_family;
		mnl_attr_for_each(attr, nlh, sizeof(*rtm))
		{
			uint16_t t = mnl_attr_get_type(attr);

			if (t == RTA_OIF && mnl_attr_get_payload_len(attr) >= 4)
				a->ifindex = (int)mnl_attr_get_u32(attr);
			else if (t == RTA_GATEWAY && mnl_attr_get_payload_len(attr) == alen) {
				memcpy(a->gw, mnl_attr_get_payload(attr), alen);
				a->has_gw = true;
			} else if (t == RTA_METRICS) {
				struct nlattr *m;

				mnl_attr_for_each_nested(m, attr)
				{
					if (mnl_attr_get_type(m) == RTAX_MTU && mnl_attr_get_payload_len(m) >= 4)
						a->mtu = mnl_attr_get_u32(m);
				}
			}
		}
		return MNL_CB_STOP;
	}
	return MNL_CB_OK;
}

/* Sends @nlh and reads the one answer into @a; 0 or a negative errno. */
static int nl_query(struct nlmsghdr *nlh, struct nl_answer *a)
{
	const struct timeval tv = { .tv_sec = WG_NL_TIMEOUT_MS / 1000, .tv_usec = 0 };
	_Alignas(struct nlmsghdr) char rx[16384];
	struct mnl_socket *nl = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC);
	unsigned portid, seq = (unsigned)time(NULL) | 1u;
	int ret = 0;

	if (!nl)
		return -errno;
	if (setsockopt(mnl_socket_get_fd(nl), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
	    mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
		ret = -errno;
		goto out;
	}
	portid = mnl_socket_get_portid(nl);
	nlh->nlmsg_seq = seq;
	if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) {
		ret = -errno;
		goto out;
	}
	for (;;) {
		ssize_t n = mnl_socket_recvfrom(nl, rx, sizeof(rx));
		int r;

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			ret = n < 0 ? ((errno == EAGAIN || errno == EWOULDBLOCK) ? -ETIMEDOUT : -errno) : -EIO;
			break;
		}
		errno = 0;
		r = mnl_cb_run(rx, (size_t)n, seq, portid, nl_answer_cb, a);
		if (r == MNL_CB_ERROR) {
			ret = errno ? -errno : -EIO;
			break;
		}
		if (a->type) /* got the answer */
			break;
		if (r == MNL_CB_STOP) { /* ACK or DONE without data */
			ret = -ENOENT;
			break;
		}
	}
out:
	mnl_socket_close(nl);
	return ret;
}

static int link_query(int ifindex, struct nl_answer *a)
{
	_Alignas(struct nlmsghdr) char buf[256];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	struct ifinfomsg *ifm;

	nlh->nlmsg_type = RTM_GETLINK;
	nlh->nlmsg_flags = NLM_F_REQUEST;
	ifm = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifm));
	ifm->ifi_family = AF_UNSPEC;
	ifm->ifi_index = ifindex;
	memset(a, 0, sizeof(*a));
	return nl_query(nlh, a);
}

static void push_mac(lua_State *L, const struct nl_answer *a)
{
	char mac[3 * sizeof(a->mac) + 1] = "";
	size_t pos = 0;

	for (size_t i = 0; i < a->mac_len; i++)
		pos += (size_t)snprintf(mac + pos, sizeof(mac) - pos, i ? ":%02x" : "%02x", a->mac[i]);
	lua_pushstring(L, mac);
}

/* core.link_info(ifname) -> { index, mtu, mac, up }, or nil, message,
 * errno (ENODEV when there is no such link). */
static int l_link_info(lua_State *L)
{
	const char *ifname;
	int ifindex = check_ifindex(L, 1, &ifname), r;
	struct nl_answer a;

	if (ifindex < 0)
		return nl_result(L, ifindex, "interface", ifname);
	r = link_query(ifindex, &a);
	if (r < 0)
		return nl_result(L, r, "reading link", ifname);
	lua_createtable(L, 0, 4);
	lua_pushinteger(L, a.ifindex);
	lua_setfield(L, -2, "index");
	lua_pushinteger(L, a.mtu);
	lua_setfield(L, -2, "mtu");
	push_mac(L, &a);
	lua_setfield(L, -2, "mac");
	lua_pushboolean(L, a.up);
	lua_setfield(L, -2, "up");
	return 1;
}

/* core.route_get(ip) -> { ifname, index, gateway?, mtu } for the route the
 * kernel would use to reach ip (RTM_GETROUTE, like `ip route get`): mtu is
 * the route's MTU metric when it has one, else the outgoing link's MTU.
 * nil, message, errno when there is no route (ENETUNREACH, ...). */
static int l_route_get(lua_State *L)
{
	size_t len;
	const char *ip = luaL_checklstring(L, 1, &len);
	uint8_t family, addr[16], plen;
	_Alignas(struct nlmsghdr) char buf[256];
	struct nlmsghdr *nlh;
	struct rtmsg *rtm;
	struct nl_answer a, l;
	char gw[INET6_ADDRSTRLEN];
	int r;

	if (!wg_parse_cidr(ip, len, &family, addr, &plen))
		return wgo_fail(L, EINVAL, "address \"%s\" invalid", ip);
	nlh = mnl_nlmsg_put_header(buf);
	nlh->nlmsg_type = RTM_GETROUTE;
	nlh->nlmsg_flags = NLM_F_REQUEST;
	rtm = mnl_nlmsg_put_extra_header(nlh, sizeof(*rtm));
	rtm->rtm_family = family;
	rtm->rtm_dst_len = family == AF_INET6 ? 128 : 32;
	mnl_attr_put(nlh, RTA_DST, family == AF_INET6 ? 16 : 4, addr);
	memset(&a, 0, sizeof(a));
	r = nl_query(nlh, &a);
	if (r < 0)
		return nl_result(L, r, "route to", ip);
	if (a.ifindex <= 0)
		return wgo_fail(L, ENETUNREACH, "route to %s: no outgoing interface", ip);
	r = link_query(a.ifindex, &l);
	if (r < 0)
		return nl_result(L, r, "route to", ip);
	lua_createtable(L, 0, 4);
	lua_pushstring(L, l.ifname);
	lua_setfield(L, -2, "ifname");
	lua_pushinteger(L, a.ifindex);
	lua_setfield(L, -2, "index");
	lua_pushinteger(L, a.mtu ? a.mtu : l.mtu);
	lua_setfield(L, -2, "mtu");
	if (a.has_gw && inet_ntop(a.family, a.gw, gw, sizeof(gw))) {
		lua_pushstring(L, gw);
		lua_setfield(L, -2, "gateway");
	}
	return 1;
}

static const luaL_Reg netlink_funcs[] = {
	{ "link_info", l_link_info }, { "route_get", l_route_get },
	{ "addr", l_addr },           { "addr_list", l_addr_list },
	{ "addr_dump", l_addr_dump }, { "route", l_route },
	{ "link", l_link },           { "link_delete", l_link_delete },
	{ "ifindex", l_ifindex_of },  { "with_netns", l_with_netns },
	{ "veth", l_veth },           { "sysctl", l_sysctl },
	{ "route_via", l_route_via }, { NULL, NULL },
};

void wgo_open_netlink(lua_State *L)
{
	luaL_setfuncs(L, netlink_funcs, 0);
}
