/* Port mappings on the node's router (wgoverlay.nat.portmap): NAT-PMP
 * through Debian's libnatpmp, UPnP IGD through libminiupnpc.  No protocol
 * is spoken here: each function is one exchange of those libraries, with
 * a deadline.  They block (an SSDP discovery waits about `timeout_ms`), so
 * the Lua side calls them on a thread of luv's pool (uv.new_work), never on
 * the daemon's loop:
 *
 *   core.natpmp_map(private_port, public_port, lifetime[, timeout_ms[, gateway]])
 *       -- asks the default gateway (or `gateway`, an IPv4 text) for the
 *       -- public address, then for a UDP mapping public_port -> our
 *       -- private_port for `lifetime` seconds; lifetime 0 (public_port 0)
 *       -- deletes the mapping of private_port (RFC 6886 §3.4).
 *       -> { external_ip, external_port, lifetime, epoch, gateway }
 *   core.upnp_map(internal_port, external_port, lease, description[, timeout_ms])
 *       -- discovers an Internet Gateway Device (SSDP), asks its external
 *       -- address and adds the UDP mapping external_port -> our address on
 *       -- the IGD's side (as libminiupnpc sees it) : internal_port for
 *       -- `lease` seconds; when that external port is taken, any port the
 *       -- IGD offers (AddAnyPortMapping, IGDv2); an IGD that only keeps
 *       -- permanent mappings (error 725) gets lease 0.
 *       -> { external_ip, external_port, internal_ip, lease, control_url, service_type }
 *   core.upnp_delete(control_url, service_type, external_port)
 *       -- deletes that UDP mapping -> true
 *
 * Each returns nil and a message when the router does not answer or
 * refuses; bad arguments raise. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/time.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>
#include <miniupnpc/miniupnpc.h>
#include <miniupnpc/upnpcommands.h>
#include <miniupnpc/upnperrors.h>
#define ENABLE_STRNATPMPERR 1
#include <natpmp.h>

#include "lua_core.h"

enum {
	DEFAULT_TIMEOUT_MS = 2000,
	MAX_TIMEOUT_MS = 30000,
	UPNP_ERR_CONFLICT = 718,       /* ConflictInMappingEntry */
	UPNP_ERR_PERMANENT_ONLY = 725, /* OnlyPermanentLeasesSupported */
	UPNP_ERR_NO_SUCH_ACTION = 401, /* (AddAnyPortMapping on IGDv1) */
};

static int check_port(lua_State *L, int idx, bool zero_ok)
{
	lua_Integer p = luaL_checkinteger(L, idx);

	luaL_argcheck(L, p >= (zero_ok ? 0 : 1) && p <= 65535, idx, "port out of range");
	return (int)p;
}

static int opt_timeout(lua_State *L, int idx)
{
	lua_Integer ms = luaL_optinteger(L, idx, DEFAULT_TIMEOUT_MS);

	luaL_argcheck(L, ms >= 1 && ms <= MAX_TIMEOUT_MS, idx, "timeout out of range");
	return (int)ms;
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* Sends nothing itself: waits for libnatpmp's answer to the request it
 * holds, letting it resend on its schedule, until the deadline. */
static int natpmp_wait(natpmp_t *n, natpmpresp_t *resp, double deadline)
{
	for (;;) {
		struct timeval tv;
		fd_set fds;
		double left = deadline - now_ms();
		int r;

		if (left <= 0)
			return NATPMP_TRYAGAIN;
		r = getnatpmprequesttimeout(n, &tv);
		if (r < 0)
			return r;
		if ((double)tv.tv_sec * 1000.0 + (double)tv.tv_usec / 1000.0 > left) {
			tv.tv_sec = (time_t)(left / 1000.0);
			tv.tv_usec = (suseconds_t)((left - (double)tv.tv_sec * 1000.0) * 1000.0);
		}
		FD_ZERO(&fds);
		FD_SET(n->s, &fds);
		if (select(n->s + 1, &fds, NULL, NULL, &tv) < 0 && errno != EINTR)
			return NATPMP_ERR_RECVFROM;
		r = readnatpmpresponseorretry(n, resp);
		if (r != NATPMP_TRYAGAIN)
			return r;
	}
}

static const char *natpmp_error(int r)
{
	if (r == NATPMP_TRYAGAIN)
		return "no answer from the gateway";
	return strnatpmperr(r);
}

static int l_natpmp_map(lua_State *L)
{
	int private_port = check_port(L, 1, false);
	int public_port = check_port(L, 2, true);
	lua_Integer lifetime = luaL_checkinteger(L, 3);
	int timeout = opt_timeout(L, 4);
	const char *gw = luaL_optstring(L, 5, NULL);
	struct in_addr forced = { 0 };
	natpmp_t n;
	natpmpresp_t resp;
	char ext[INET_ADDRSTRLEN] = "", gwtext[INET_ADDRSTRLEN] = "";
	double deadline = now_ms() + timeout;
	int r;

	luaL_argcheck(L, lifetime >= 0 && lifetime <= 0x7fffffff, 3, "lifetime out of range");
	if (gw && inet_pton(AF_INET, gw, &forced) != 1)
		return luaL_argerror(L, 5, "not an IPv4 address");
	r = initnatpmp(&n, gw != NULL, forced.s_addr);
	if (r < 0)
		return wgo_fail(L, 0, "NAT-PMP: %s", strnatpmperr(r));
	inet_ntop(AF_INET, &n.gateway, gwtext, sizeof(gwtext));
	r = sendpublicaddressrequest(&n);
	if (r >= 0)
		r = natpmp_wait(&n, &resp, deadline);
	if (r < 0) {
		closenatpmp(&n);
		return wgo_fail(L, 0, "NAT-PMP (gateway %s): public address: %s", gwtext, natpmp_error(r));
	}
	inet_ntop(AF_INET, &resp.pnu.publicaddress.addr, ext, sizeof(ext));
	r = sendnewportmappingrequest(&n, NATPMP_PROTOCOL_UDP, (uint16_t)private_port,
				      (uint16_t)(lifetime ? public_port : 0), (uint32_t)lifetime);
	if (r >= 0)
		r = natpmp_wait(&n, &resp, deadline);
	closenatpmp(&n);
	if (r < 0)
		return wgo_fail(L, 0, "NAT-PMP (gateway %s): mapping: %s", gwtext, natpmp_error(r));
	if (resp.type != NATPMP_RESPTYPE_UDPPORTMAPPING)
		return wgo_fail(L, 0, "NAT-PMP (gateway %s): answer of another type (%d)", gwtext, (int)resp.type);
	lua_createtable(L, 0, 5);
	lua_pushstring(L, ext);
	lua_setfield(L, -2, "external_ip");
	lua_pushinteger(L, resp.pnu.newportmapping.mappedpublicport);
	lua_setfield(L, -2, "external_port");
	lua_pushinteger(L, resp.pnu.newportmapping.lifetime);
	lua_setfield(L, -2, "lifetime");
	lua_pushinteger(L, resp.epoch);
	lua_setfield(L, -2, "epoch");
	lua_pushstring(L, gwtext);
	lua_setfield(L, -2, "gateway");
	return 1;
}

static const char *upnp_error(int r)
{
	const char *s = strupnperror(r);

	return s ? s : "unknown error";
}

static int l_upnp_map(lua_State *L)
{
	int internal_port = check_port(L, 1, false);
	int external_port = check_port(L, 2, false);
	lua_Integer lease = luaL_checkinteger(L, 3);
	const char *desc = luaL_checkstring(L, 4);
	int timeout = opt_timeout(L, 5);
	struct UPNPDev *devs;
	struct UPNPUrls urls;
	struct IGDdatas data;
	char lan[64] = "", ext[40] = "", in_port[8], ex_port[8], lease_s[16], reserved[8] = "";
	int err = 0, r;

	luaL_argcheck(L, lease >= 0 && lease <= 604800, 3, "lease out of range");
	snprintf(in_port, sizeof(in_port), "%d", internal_port);
	snprintf(ex_port, sizeof(ex_port), "%d", external_port);
	snprintf(lease_s, sizeof(lease_s), "%d", (int)lease);
	devs = upnpDiscover(timeout, NULL, NULL, UPNP_LOCAL_PORT_ANY, 0, 2, &err);
	if (!devs)
		return wgo_fail(L, 0, "UPnP: no Internet Gateway Device answered%s%s%s", err ? " (" : "",
				err ? upnp_error(err) : "", err ? ")" : "");
	memset(&urls, 0, sizeof(urls));
	memset(&data, 0, sizeof(data));
	r = UPNP_GetValidIGD(devs, &urls, &data, lan, (int)sizeof(lan));
	freeUPNPDevlist(devs);
	if (r != 1) {
		if (r != 0)
			FreeUPNPUrls(&urls);
		return wgo_fail(L, 0, "UPnP: %s",
				r == 0 ? "no Internet Gateway Device found"
				       : "the gateway found is not connected or not an IGD");
	}
	r = UPNP_GetExternalIPAddress(urls.controlURL, data.first.servicetype, ext);
	if (r != UPNPCOMMAND_SUCCESS || !ext[0]) {
		FreeUPNPUrls(&urls);
		return wgo_fail(L, 0, "UPnP: external address: %s", upnp_error(r));
	}
	r = UPNP_AddPortMapping(urls.controlURL, data.first.servicetype, ex_port, in_port, lan, desc, "UDP", NULL,
				lease_s);
	if (r == UPNP_ERR_PERMANENT_ONLY) {
		lease = 0;
		r = UPNP_AddPortMapping(urls.controlURL, data.first.servicetype, ex_port, in_port, lan, desc, "UDP",
					NULL, "0");
	}
	if (r == UPNP_ERR_CONFLICT) {
		r = UPNP_AddAnyPortMapping(urls.controlURL, data.first.servicetype, ex_port, in_port, lan, desc, "UDP",
					   NULL, lease_s, reserved);
		if (r == UPNPCOMMAND_SUCCESS) {
			char *end;
			long p = strtol(reserved, &end, 10);

			if (end == reserved || *end || p < 1 || p > 65535) {
				FreeUPNPUrls(&urls);
				return wgo_fail(L, 0, "UPnP: the gateway reserved an invalid port");
			}
			external_port = (int)p;
		}
	}
	if (r != UPNPCOMMAND_SUCCESS) {
		FreeUPNPUrls(&urls);
		return wgo_fail(L, 0, "UPnP: AddPortMapping %s -> %s:%s: %s (%d)", ex_port, lan, in_port, upnp_error(r),
				r);
	}
	lua_createtable(L, 0, 6);
	lua_pushstring(L, ext);
	lua_setfield(L, -2, "external_ip");
	lua_pushinteger(L, external_port);
	lua_setfield(L, -2, "external_port");
	lua_pushstring(L, lan);
	lua_setfield(L, -2, "internal_ip");
	lua_pushinteger(L, lease);
	lua_setfield(L, -2, "lease");
	lua_pushstring(L, urls.controlURL ? urls.controlURL : "");
	lua_setfield(L, -2, "control_url");
	lua_pushstring(L, data.first.servicetype);
	lua_setfield(L, -2, "service_type");
	FreeUPNPUrls(&urls);
	return 1;
}

static int l_upnp_delete(lua_State *L)
{
	const char *url = luaL_checkstring(L, 1);
	const char *type = luaL_checkstring(L, 2);
	int port = check_port(L, 3, false);
	char ex_port[8];
	int r;

	luaL_argcheck(L, strncmp(url, "http://", 7) == 0, 1, "not an http:// URL");
	snprintf(ex_port, sizeof(ex_port), "%d", port);
	r = UPNP_DeletePortMapping(url, type, ex_port, "UDP", NULL);
	if (r != UPNPCOMMAND_SUCCESS)
		return wgo_fail(L, 0, "UPnP: DeletePortMapping %s: %s (%d)", ex_port, upnp_error(r), r);
	lua_pushboolean(L, 1);
	return 1;
}

void wgo_open_portmap(lua_State *L)
{
	static const luaL_Reg fns[] = {
		{ "natpmp_map", l_natpmp_map },
		{ "upnp_map", l_upnp_map },
		{ "upnp_delete", l_upnp_delete },
		{ NULL, NULL },
	};

	luaL_setfuncs(L, fns, 0);
}
