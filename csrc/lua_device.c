/* wgoverlay.core: the device userdata and the UAPI client.
 *
 * One userdata type, "wgoverlay.device", shaped like liolib's files: a
 * metatable built once at load time, __index = method table, __gc and
 * __close the same idempotent close, and a closed device raises "attempt to
 * use a closed transport".
 *
 * Configuration from Lua is converted into the same transaction struct the
 * UAPI parser produces and applied by wg_device_apply(): one code path, two
 * front doors.  Private and preshared keys never come back out.
 *
 * uapi_request and uapi_status speak UAPI to an engine in another process;
 * uapi_status parses the get reply with uapi.c's wg_uapi_parse_get. */
#include <errno.h>
#include <limits.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <lauxlib.h>
#include <lua.h>
#include <sodium.h>

#include "device.h"
#include "lua_core.h"
#include "netlink.h"
#include "uapi.h"

#define DEVICE_MT "wgoverlay.device"
#define SET_MT "wgoverlay.uapi_set"
#define SNAP_MT "wgoverlay.status_snapshot"
#define REPLY_MT "wgoverlay.uapi_reply"

struct ldev {
	struct wg_device *dev;
};

static int set_close(lua_State *L)
{
	struct wg_uapi_set *set = lua_touserdata(L, 1);

	wg_uapi_set_free(set); /* idempotent: it leaves the set zeroed */
	return 0;
}

/* An empty transaction owned by a to-be-closed userdata (see secret_new). */
static struct wg_uapi_set *set_new(lua_State *L)
{
	struct wg_uapi_set *set = lua_newuserdatauv(L, sizeof(*set), 0);

	memset(set, 0, sizeof(*set));
	luaL_setmetatable(L, SET_MT);
	lua_toclose(L, -1);
	return set;
}

static struct wg_device *check_dev(lua_State *L, int idx)
{
	struct ldev *d = luaL_checkudata(L, idx, DEVICE_MT);

	if (!d->dev)
		luaL_error(L, "attempt to use a closed transport");
	return d->dev;
}

/* ---- device ---- */

static int l_open(lua_State *L)
{
	const char *ifname = luaL_checkstring(L, 1);
	struct wg_device_opts opts = { .uapi = true };
	struct ldev *d;
	char msg[256];
	int err = 0;

	if (!lua_isnoneornil(L, 2)) {
		luaL_checktype(L, 2, LUA_TTABLE);
		if (lua_getfield(L, 2, "uapi") != LUA_TNIL)
			opts.uapi = lua_toboolean(L, -1);
		lua_pop(L, 1);
		if (lua_getfield(L, 2, "mtu") != LUA_TNIL) {
			lua_Integer mtu = luaL_checkinteger(L, -1);

			if (mtu < 576 || mtu > 65535)
				return wgo_fail(L, EINVAL, "mtu must be 576..65535");
			opts.mtu = (unsigned)mtu;
		}
		lua_pop(L, 1);
	}
	if (strlen(ifname) >= IFNAMSIZ) {
		return wgo_fail(L, EINVAL, "interface name \"%s\" longer than %d bytes", ifname, IFNAMSIZ - 1);
	}
	d = lua_newuserdatauv(L, sizeof(*d), 0);
	d->dev = NULL;
	luaL_setmetatable(L, DEVICE_MT);
	d->dev = wg_device_create(ifname, &opts, &err, msg, sizeof(msg));
	if (!d->dev)
		return wgo_fail(L, err, "%s", msg[0] ? msg : strerror(-err));
	return 1;
}

static int l_close(lua_State *L)
{
	struct ldev *d = luaL_checkudata(L, 1, DEVICE_MT);

	if (d->dev) {
		wg_device_destroy(d->dev);
		d->dev = NULL;
	}
	return 0;
}

static int l_tostring(lua_State *L)
{
	struct ldev *d = luaL_checkudata(L, 1, DEVICE_MT);

	if (d->dev)
		lua_pushfstring(L, "wgoverlay transport (%s)", wg_device_ifname(d->dev));
	else
		lua_pushliteral(L, "wgoverlay transport (closed)");
	return 1;
}

static int l_ifname(lua_State *L)
{
	lua_pushstring(L, wg_device_ifname(check_dev(L, 1)));
	return 1;
}

static int l_fd(lua_State *L)
{
	struct wg_device *dev = check_dev(L, 1);

	lua_pushinteger(L, wg_device_enable_control(dev));
	return 1;
}

/* Reads a list of CIDR strings at t[field] into the peer op. */
static const char *read_cidrs(lua_State *L, int t, const char *field, struct wg_uapi_peer *op, bool remove)
{
	static char errbuf[160];
	lua_Integer n;

	if (lua_getfield(L, t, field) == LUA_TNIL) {
		lua_pop(L, 1);
		return NULL;
	}
	luaL_checktype(L, -1, LUA_TTABLE);
	n = luaL_len(L, -1);
	for (lua_Integer i = 1; i <= n; i++) {
		struct wg_uapi_aip *a;
		const char *s;
		size_t len;

		lua_geti(L, -1, i);
		s = lua_tolstring(L, -1, &len);
		if (!s)
			luaL_error(L, "%s[%d]: string expected", field, (int)i);
		if (op->n_aips == op->cap_aips) {
			size_t ncap = op->cap_aips ? op->cap_aips * 2 : 4;
			struct wg_uapi_aip *na = realloc(op->aips, ncap * sizeof(*na));

			if (!na) {
				lua_pop(L, 2);
				return "out of memory";
			}
			op->aips = na;
			op->cap_aips = ncap;
		}
		a = &op->aips[op->n_aips];
		memset(a, 0, sizeof(*a));
		if (!wg_parse_cidr(s, len, &a->family, a->addr, &a->cidr)) {
			snprintf(errbuf, sizeof(errbuf), "CIDR \"%.64s\" invalid", s);
			lua_pop(L, 2);
			return errbuf;
		}
		a->remove = remove;
		op->n_aips++;
		lua_pop(L, 1);
	}
	lua_pop(L, 1);
	return NULL;
}

/* Converts a Lua peer table at index t into a UAPI peer operation.
 * Returns an error message (never containing a secret) or NULL.  May raise:
 * op must belong to a set made by set_new(), counted in its n_peers. */
static const char *read_peer(lua_State *L, int t, struct wg_uapi_peer *op)
{
	static char errbuf[160];
	const char *e;
	size_t len;
	const char *s;

	memset(op, 0, sizeof(*op));
	luaL_checktype(L, t, LUA_TTABLE);
	if (lua_getfield(L, t, "public_key") != LUA_TSTRING)
		luaL_error(L, "peer.public_key: string expected");
	s = lua_tolstring(L, -1, &len);
	if (!wg_base64_to_key(op->public_key, s, len)) {
		char ex[64];

		wgo_key_excerpt(ex, sizeof(ex), s, len);
		snprintf(errbuf, sizeof(errbuf), "bad key %s: expected 32 bytes base64", ex);
		lua_pop(L, 1);
		return errbuf;
	}
	lua_pop(L, 1);
	lua_getfield(L, t, "remove");
	op->remove = lua_toboolean(L, -1);
	lua_getfield(L, t, "update_only");
	op->update_only = lua_toboolean(L, -1);
	lua_getfield(L, t, "replace_allowed_ips");
	op->replace_allowed_ips = lua_toboolean(L, -1);
	lua_pop(L, 3);

	switch (lua_getfield(L, t, "preshared_key")) {
	case LUA_TNIL:
		break;
	case LUA_TBOOLEAN: /* false clears it */
		op->has_preshared_key = true;
		break;
	case LUA_TSTRING:
		op->has_preshared_key = true;
		if (!wgo_key_from_lua(L, -1, op->preshared_key)) {
			lua_pop(L, 1);
			return "bad preshared_key: expected 32 bytes base64";
		}
		break;
	default:
		luaL_error(L, "peer.preshared_key: string expected");
	}
	lua_pop(L, 1);

	switch (lua_getfield(L, t, "endpoint")) {
	case LUA_TNIL:
		break;
	case LUA_TSTRING: {
		struct sockaddr_storage ss;

		s = lua_tolstring(L, -1, &len);
		if (!wg_parse_endpoint(s, len, &ss)) {
			snprintf(errbuf, sizeof(errbuf), "endpoint \"%.64s\" invalid: expected IP:PORT or [IPv6]:PORT",
				 s);
			lua_pop(L, 1);
			return errbuf;
		}
		memcpy(&op->endpoint, &ss,
		       ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
		op->has_endpoint = true;
		break;
	}
	default:
		luaL_error(L, "peer.endpoint: string expected");
	}
	lua_pop(L, 1);

	if (lua_getfield(L, t, "persistent_keepalive") != LUA_TNIL) {
		lua_Integer k;

		if (!lua_isinteger(L, -1))
			luaL_error(L, "peer.persistent_keepalive: integer expected");
		k = lua_tointeger(L, -1);
		if (k < 0 || k > 65535) {
			lua_pop(L, 1);
			return "persistent_keepalive must be 0..65535 seconds";
		}
		op->has_keepalive = true;
		op->keepalive = (uint16_t)k;
	}
	lua_pop(L, 1);
	if ((e = read_cidrs(L, t, "allowed_ips", op, false)))
		return e;
	if ((e = read_cidrs(L, t, "remove_allowed_ips", op, true)))
		return e;
	return NULL;
}

/* dev:apply{ private_key=, listen_port=, fwmark=, replace_peers=, peers={...} }
 * The transaction being built, keys included, is owned by a to-be-closed
 * userdata: whatever raises below (a bad type, a memory error) wipes and
 * frees it, and so does every return. */
static int l_apply(lua_State *L)
{
	struct wg_device *dev = check_dev(L, 1);
	struct wg_uapi_set *set;
	const char *e = NULL;
	char msg[256];
	lua_Integer n;
	int r;

	luaL_checktype(L, 2, LUA_TTABLE);
	set = set_new(L);
	switch (lua_getfield(L, 2, "private_key")) {
	case LUA_TNIL:
		break;
	case LUA_TSTRING:
		set->has_private_key = true;
		if (!wgo_key_from_lua(L, -1, set->private_key))
			e = "bad private_key: expected 32 bytes base64 (44 characters)";
		break;
	default:
		luaL_error(L, "private_key: string expected");
	}
	lua_pop(L, 1);
	if (!e && lua_getfield(L, 2, "listen_port") != LUA_TNIL) {
		lua_Integer port;

		if (!lua_isinteger(L, -1))
			luaL_error(L, "listen_port: integer expected");
		port = lua_tointeger(L, -1);
		if (port < 0 || port > 65535)
			e = "listen_port must be 0..65535";
		set->has_listen_port = true;
		set->listen_port = (uint16_t)port;
	}
	if (!e)
		lua_pop(L, 1);
	if (!e && lua_getfield(L, 2, "fwmark") != LUA_TNIL) {
		lua_Integer m;

		if (!lua_isinteger(L, -1))
			luaL_error(L, "fwmark: integer expected");
		m = lua_tointeger(L, -1);
		if (m < 0 || m > 0xffffffffLL)
			e = "fwmark must be 0..4294967295";
		set->has_fwmark = true;
		set->fwmark = (uint32_t)m;
	}
	if (!e)
		lua_pop(L, 1);
	if (!e) {
		lua_getfield(L, 2, "replace_peers");
		set->replace_peers = lua_toboolean(L, -1);
		lua_pop(L, 1);
	}
	if (!e && lua_getfield(L, 2, "peers") != LUA_TNIL) {
		luaL_checktype(L, -1, LUA_TTABLE);
		n = luaL_len(L, -1);
		set->peers = calloc(n > 0 ? (size_t)n : 1, sizeof(*set->peers));
		if (!set->peers)
			e = "out of memory";
		else
			set->cap_peers = n > 0 ? (size_t)n : 1;
		for (lua_Integer i = 1; !e && i <= n; i++) {
			/* counted first: what read_peer allocates is freed
			 * with the set even if it raises */
			set->n_peers++;
			lua_geti(L, -1, i);
			e = read_peer(L, lua_gettop(L), &set->peers[set->n_peers - 1]);
			lua_pop(L, 1);
		}
		lua_pop(L, 1);
	} else if (!e) {
		lua_pop(L, 1);
	}
	if (e)
		return wgo_fail(L, EINVAL, "%s", e);
	r = wg_device_apply(dev, set, msg, sizeof(msg));
	wg_uapi_set_free(set);
	if (r < 0)
		return wgo_fail(L, r, "%s", msg[0] ? msg : strerror(-r));
	lua_pushboolean(L, 1);
	return 1;
}

static void push_endpoint(lua_State *L, const struct sockaddr *sa)
{
	char buf[128];

	if (wg_format_endpoint(buf, sizeof(buf), sa))
		lua_pushstring(L, buf);
	else
		lua_pushnil(L);
}

/* What status() reports, copied by the engine under its locks into
 * malloc'd memory (no Lua allocation, hence no raise, while they are held)
 * and turned into tables after.  Owned by a to-be-closed userdata. */
static int snap_close(lua_State *L)
{
	struct wg_device_snapshot *snap = lua_touserdata(L, 1);

	if (snap)
		wg_device_snapshot_free(snap);
	return 0;
}

static void push_snap_peer(lua_State *L, const struct wg_device_snapshot *snap,
			   const struct wg_device_snapshot_peer *sp)
{
	char b64[45];

	lua_createtable(L, 0, 10);
	wg_key_to_base64(b64, sp->public_key);
	lua_pushstring(L, b64);
	lua_setfield(L, -2, "public_key");
	if (sp->has_endpoint) {
		push_endpoint(L, &sp->endpoint.addr.sa);
		lua_setfield(L, -2, "endpoint");
		if (sp->endpoint.relay_channel) {
			lua_pushinteger(L, sp->endpoint.relay_channel);
			lua_setfield(L, -2, "relay_channel");
		}
	}
	lua_pushinteger(L, (lua_Integer)(sp->last_handshake_real / WG_NS_PER_SEC));
	lua_setfield(L, -2, "last_handshake");
	lua_pushnumber(L, (lua_Number)sp->last_handshake_real / 1e9);
	lua_setfield(L, -2, "last_handshake_precise");
	lua_pushinteger(L, (lua_Integer)sp->rx_bytes);
	lua_setfield(L, -2, "rx_bytes");
	lua_pushinteger(L, (lua_Integer)sp->tx_bytes);
	lua_setfield(L, -2, "tx_bytes");
	lua_pushinteger(L, sp->persistent_keepalive);
	lua_setfield(L, -2, "persistent_keepalive");
	lua_createtable(L, sp->n_aips < INT_MAX ? (int)sp->n_aips : 0, 0);
	for (size_t k = 0; k < sp->n_aips; k++) {
		const struct wg_device_snapshot_aip *a = &snap->aips[sp->first_aip + k];
		char ip[INET6_ADDRSTRLEN];

		inet_ntop(a->family, a->addr, ip, sizeof(ip));
		lua_pushfstring(L, "%s/%d", ip, (int)a->cidr);
		lua_rawseti(L, -2, (lua_Integer)k + 1);
	}
	lua_setfield(L, -2, "allowed_ips");
}

#define STAT(name)                                        \
	do {                                              \
		lua_pushinteger(L, (lua_Integer)st.name); \
		lua_setfield(L, -2, #name);               \
	} while (0)

static int l_status(lua_State *L)
{
	struct wg_device *dev = check_dev(L, 1);
	struct wg_device_snapshot *snap;
	struct wg_device_counters st;
	char b64[45];

	lua_settop(L, 1);
	snap = lua_newuserdatauv(L, sizeof(*snap), 0); /* 2 */
	memset(snap, 0, sizeof(*snap));
	luaL_setmetatable(L, SNAP_MT);
	lua_toclose(L, 2);
	if (wg_device_snapshot(dev, snap) < 0)
		return wgo_fail(L, ENOMEM, "out of memory");

	lua_createtable(L, 0, 8);
	lua_pushstring(L, snap->ifname);
	lua_setfield(L, -2, "interface");
	if (snap->has_public_key) {
		wg_key_to_base64(b64, snap->public_key);
		lua_pushstring(L, b64);
		lua_setfield(L, -2, "public_key");
	}
	lua_pushinteger(L, snap->listen_port);
	lua_setfield(L, -2, "listen_port");
	lua_pushinteger(L, snap->fwmark);
	lua_setfield(L, -2, "fwmark");
	lua_pushinteger(L, snap->mtu);
	lua_setfield(L, -2, "mtu");
	lua_createtable(L, snap->n_peers < INT_MAX ? (int)snap->n_peers : 0, 0);
	for (size_t i = 0; i < snap->n_peers; i++) {
		push_snap_peer(L, snap, &snap->peers[i]);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	lua_setfield(L, -2, "peers");

	wg_device_get_stats(dev, &st);
	lua_createtable(L, 0, 28);
	STAT(rx_junk);
	STAT(rx_bad_mac1);
	STAT(rx_cookie_sent);
	STAT(rx_ratelimited);
	STAT(rx_handshake_invalid);
	STAT(rx_unknown_index);
	STAT(rx_decrypt_failed);
	STAT(rx_replayed);
	STAT(rx_expired_key);
	STAT(rx_bad_inner);
	STAT(rx_wrong_source);
	STAT(tx_no_route);
	STAT(tx_staged_dropped);
	STAT(tx_bad_offload);
	STAT(handshakes_completed);
	STAT(tx_initiations);
	STAT(tx_responses);
	STAT(rx_initiations);
	STAT(rx_responses);
	STAT(relay_rx_bytes);
	STAT(relay_tx_bytes);
	STAT(rx_packets);
	STAT(tx_packets);
	STAT(handshake_queue_dropped);
	STAT(events_dropped);
	STAT(tun_write_errors);
	STAT(udp_send_errors);
	STAT(live_keypairs);
	lua_setfield(L, -2, "stats");
	return 1;
}

static const char *event_names[] = {
	[WG_DEV_EVENT_HANDSHAKE] = "handshake",
	[WG_DEV_EVENT_ENDPOINT] = "endpoint",
	[WG_DEV_EVENT_STALE] = "stale",
	[WG_DEV_EVENT_DATAGRAM] = "datagram",
};

/* Returns a list of pending events (possibly empty). */
static int l_events(lua_State *L)
{
	struct wg_device *dev = check_dev(L, 1);
	struct wg_dev_event *ev;
	char b64[45];
	lua_Integer n = 0;

	lua_newtable(L);
	while ((ev = wg_device_pop_event(dev))) {
		lua_createtable(L, 0, 5);
		lua_pushstring(L, event_names[ev->type]);
		lua_setfield(L, -2, "type");
		lua_pushnumber(L, (lua_Number)ev->time_real / 1e9);
		lua_setfield(L, -2, "time");
		if (ev->type == WG_DEV_EVENT_DATAGRAM) {
			push_endpoint(L, &ev->ep.addr.sa);
			lua_setfield(L, -2, "from");
		}
		if (ev->ep.relay_channel) {
			/* came through (or goes to) a TURN relay on this channel */
			lua_pushinteger(L, ev->ep.relay_channel);
			lua_setfield(L, -2, "relay_channel");
		}
		if (ev->type == WG_DEV_EVENT_DATAGRAM) {
			lua_pushlstring(L, (const char *)ev->data, ev->len);
			lua_setfield(L, -2, "data");
		} else {
			wg_key_to_base64(b64, ev->public_key);
			lua_pushstring(L, b64);
			lua_setfield(L, -2, "public_key");
			if (ev->ep.addr.sa.sa_family) {
				push_endpoint(L, &ev->ep.addr.sa);
				lua_setfield(L, -2, "endpoint");
			}
		}
		free(ev);
		lua_rawseti(L, -2, ++n);
	}
	return 1;
}

static int l_send_datagram(lua_State *L)
{
	struct wg_device *dev = check_dev(L, 1);
	size_t elen, len;
	const char *ep = luaL_checklstring(L, 2, &elen);
	const char *data = luaL_checklstring(L, 3, &len);
	lua_Integer ttl = luaL_optinteger(L, 4, 0);
	struct sockaddr_storage ss;
	int r;

	if (!wg_parse_endpoint(ep, elen, &ss)) {
		return wgo_fail(L, EINVAL, "endpoint \"%s\" invalid: expected IP:PORT or [IPv6]:PORT", ep);
	}
	if (len > 65507)
		return wgo_fail(L, EMSGSIZE, "datagram longer than 65507 bytes");
	if (ttl < 0 || ttl > 255)
		return wgo_fail(L, EINVAL, "ttl %lld invalid: expected 1-255 (or 0: the default)", (long long)ttl);
	r = wg_device_send_datagram(dev, (struct sockaddr *)&ss, (const uint8_t *)data, len, (int)ttl);
	if (r < 0) {
		return wgo_fail(L, -r, "send to %s failed: %s", ep, strerror(-r));
	}
	lua_pushboolean(L, 1);
	return 1;
}

static int l_initiate(lua_State *L)
{
	struct wg_device *dev = check_dev(L, 1);
	uint8_t pub[32];

	luaL_checktype(L, 2, LUA_TSTRING);
	if (!wgo_key_from_lua(L, 2, pub))
		return wgo_fail(L, EINVAL, "bad key: expected 32 bytes base64");
	if (wg_device_initiate(dev, pub) < 0)
		return wgo_fail(L, ENOENT, "no such peer");
	lua_pushboolean(L, 1);
	return 1;
}

/* dev:rotate_private_key(base64): a new identity, sessions kept. */
static int l_rotate_private_key(lua_State *L)
{
	struct wg_device *dev = check_dev(L, 1);
	uint8_t key[32];
	int r;

	luaL_checktype(L, 2, LUA_TSTRING);
	if (!wgo_key_from_lua(L, 2, key))
		return wgo_fail(L, EINVAL, "bad private key: expected 32 bytes base64");
	r = wg_device_rotate_private_key(dev, key);
	sodium_memzero(key, sizeof(key));
	if (r < 0)
		return wgo_fail(
			L, -r, "%s",
			"cannot rotate the private key: the interface has none yet, or the new public key is a peer's");
	lua_pushboolean(L, 1);
	return 1;
}

/* dev:set_peer_public_key(old_pub, new_pub): the peer changed its key. */
static int l_set_peer_public_key(lua_State *L)
{
	struct wg_device *dev = check_dev(L, 1);
	uint8_t old_key[32], new_key[32];
	int r;

	luaL_checktype(L, 2, LUA_TSTRING);
	luaL_checktype(L, 3, LUA_TSTRING);
	if (!wgo_key_from_lua(L, 2, old_key) || !wgo_key_from_lua(L, 3, new_key))
		return wgo_fail(L, EINVAL, "bad key: expected 32 bytes base64");
	r = wg_device_set_peer_public_key(dev, old_key, new_key);
	if (r < 0)
		return wgo_fail(L, -r, "%s",
				r == -ENOENT   ? "no such peer"
				: r == -EEXIST ? "another peer has the new public key"
					       : "the new public key is this interface's own");
	lua_pushboolean(L, 1);
	return 1;
}

/* dev:set_relay("ip:port", add) */
static int l_set_relay(lua_State *L)
{
	struct wg_device *dev = check_dev(L, 1);
	size_t elen;
	const char *ep = luaL_checklstring(L, 2, &elen);
	struct sockaddr_storage ss;
	int r;

	if (!wg_parse_endpoint(ep, elen, &ss)) {
		return wgo_fail(L, 0, "relay \"%s\" invalid: expected IP:PORT or [IPv6]:PORT", ep);
	}
	r = wg_device_set_relay(dev, (struct sockaddr *)&ss, lua_isnone(L, 3) || lua_toboolean(L, 3));
	if (r < 0)
		return wgo_fail(L, r, "too many relays (at most 8)");
	lua_pushboolean(L, 1);
	return 1;
}

/* dev:set_peer_relay(pub, "ip:port", channel): channel 0 = direct */
static int l_set_peer_relay(lua_State *L)
{
	struct wg_device *dev = check_dev(L, 1);
	size_t elen;
	const char *ep = luaL_checklstring(L, 3, &elen);
	lua_Integer ch = luaL_checkinteger(L, 4);
	struct sockaddr_storage ss;
	uint8_t pub[32];
	int r;

	luaL_checktype(L, 2, LUA_TSTRING);
	if (!wgo_key_from_lua(L, 2, pub))
		return wgo_fail(L, EINVAL, "bad key: expected 32 bytes base64");
	if (!wg_parse_endpoint(ep, elen, &ss)) {
		return wgo_fail(L, 0, "endpoint \"%s\" invalid: expected IP:PORT or [IPv6]:PORT", ep);
	}
	if (ch != 0 && (ch < 0x4000 || ch > 0x4fff))
		return wgo_fail(L, EINVAL, "channel must be 0x4000..0x4FFF (or 0 for direct)");
	r = wg_device_set_peer_relay(dev, pub, (struct sockaddr *)&ss, (uint16_t)ch);
	if (r < 0)
		return wgo_fail(L, r, "%s", r == -ENOENT ? "no such peer" : strerror(-r));
	lua_pushboolean(L, 1);
	return 1;
}

static int l_ifindex(lua_State *L)
{
	struct wg_device *dev = check_dev(L, 1);

	lua_pushinteger(L, wg_nl_ifindex(wg_device_ifname(dev)));
	return 1;
}

static int l_set_mtu_hint(lua_State *L)
{
	struct wg_device *dev = check_dev(L, 1);
	lua_Integer mtu = luaL_checkinteger(L, 2);

	luaL_argcheck(L, mtu >= 576 && mtu <= 65535, 2, "576..65535");
	wg_device_set_mtu_hint(dev, (unsigned)mtu);
	return 0;
}

/* A UAPI exchange in flight: the socket, the reply read so far and its
 * parse (a get reply holds the private key), owned by a to-be-closed
 * userdata that closes the socket and wipes both whatever happens. */
struct uapi_reply {
	int fd;
	char *buf;
	size_t len, cap;
	struct wg_uapi_get get;
};

static int reply_close(lua_State *L)
{
	struct uapi_reply *r = lua_touserdata(L, 1);

	if (!r)
		return 0;
	if (r->fd >= 0)
		close(r->fd);
	r->fd = -1;
	if (r->buf) {
		sodium_memzero(r->buf, r->cap);
		free(r->buf);
	}
	r->buf = NULL;
	r->len = r->cap = 0;
	wg_uapi_get_free(&r->get); /* idempotent: it leaves get zeroed */
	return 0;
}

/* Room for at least want more bytes and a NUL; the old buffer is wiped
 * (realloc would leave a copy behind). */
static bool reply_reserve(struct uapi_reply *r, size_t want)
{
	size_t ncap = r->cap ? r->cap : 8192;
	char *nb;

	if (r->cap - r->len > want)
		return true;
	while (ncap - r->len <= want)
		ncap *= 2;
	nb = malloc(ncap);
	if (!nb)
		return false;
	if (r->buf) {
		memcpy(nb, r->buf, r->len);
		sodium_memzero(r->buf, r->cap);
		free(r->buf);
	}
	r->buf = nb;
	r->cap = ncap;
	return true;
}

/* Sends req to ifname's UAPI socket and reads the whole reply (NUL
 * terminated) into a struct uapi_reply left on the stack, to-be-closed.
 * On failure pushes nil, message[, errno] instead and returns NULL with
 * their count in *nres. */
static struct uapi_reply *uapi_exchange(lua_State *L, const char *ifname, const char *req, size_t qlen, int *nres)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct uapi_reply *r;

	if (strlen(ifname) >= IFNAMSIZ || strchr(ifname, '/')) {
		*nres = wgo_fail(L, 0, "interface name \"%s\" invalid", ifname);
		return NULL;
	}
	r = lua_newuserdatauv(L, sizeof(*r), 0);
	memset(r, 0, sizeof(*r));
	r->fd = -1;
	luaL_setmetatable(L, REPLY_MT);
	lua_toclose(L, -1);
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/%s.sock", WG_UAPI_DIR, ifname);
	r->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (r->fd < 0) {
		*nres = wgo_fail(L, errno, "%s", strerror(errno));
		return NULL;
	}
	if (connect(r->fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		int e = errno;

		if (e == ENOENT || e == ECONNREFUSED)
			*nres = wgo_fail(L, e, "no engine runs interface \"%s\" (%s)", ifname, sun.sun_path);
		else if (e == EACCES || e == EPERM)
			*nres = wgo_fail(L, e, "%s: permission denied (the UAPI socket is root-only)", sun.sun_path);
		else
			*nres = wgo_fail(L, e, "%s: %s", sun.sun_path, strerror(e));
		return NULL;
	}
	for (size_t off = 0; off < qlen;) {
		ssize_t w = send(r->fd, req + off, qlen - off, MSG_NOSIGNAL);

		if (w < 0) {
			*nres = wgo_fail(L, errno, "%s", strerror(errno));
			return NULL;
		}
		off += (size_t)w;
	}
	shutdown(r->fd, SHUT_WR);
	for (;;) {
		ssize_t n;

		if (!reply_reserve(r, 4096)) {
			*nres = wgo_fail(L, ENOMEM, "out of memory");
			return NULL;
		}
		n = recv(r->fd, r->buf + r->len, r->cap - r->len - 1, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		r->len += (size_t)n;
	}
	r->buf[r->len] = '\0';
	close(r->fd);
	r->fd = -1;
	return r;
}

/* core.uapi_request(ifname, request) -> reply text: a UAPI client, used by
 * `wgoverlay status` to read an engine running in another process. */
static int l_uapi_request(lua_State *L)
{
	const char *ifname = luaL_checkstring(L, 1);
	size_t qlen;
	const char *req = luaL_checklstring(L, 2, &qlen);
	struct uapi_reply *r;
	int nres;

	r = uapi_exchange(L, ifname, req, qlen, &nres);
	if (!r)
		return nres;
	lua_pushlstring(L, r->buf, r->len);
	return 1;
}

/* One peer of a parsed get reply as a status() peer table. */
static void push_get_peer(lua_State *L, const struct wg_uapi_get_peer *p)
{
	char b64[45];

	lua_createtable(L, 0, 8);
	wg_key_to_base64(b64, p->public_key);
	lua_pushstring(L, b64);
	lua_setfield(L, -2, "public_key");
	lua_createtable(L, p->n_aips < INT_MAX ? (int)p->n_aips : 0, 0);
	for (size_t k = 0; k < p->n_aips; k++) {
		const struct wg_uapi_aip *a = &p->aips[k];
		char ip[INET6_ADDRSTRLEN];

		inet_ntop(a->family, a->addr, ip, sizeof(ip));
		lua_pushfstring(L, "%s/%d", ip, (int)a->cidr);
		lua_rawseti(L, -2, (lua_Integer)k + 1);
	}
	lua_setfield(L, -2, "allowed_ips");
	lua_pushinteger(L, (lua_Integer)p->last_handshake_sec);
	lua_setfield(L, -2, "last_handshake");
	if (p->has_endpoint) {
		lua_pushstring(L, p->endpoint);
		lua_setfield(L, -2, "endpoint");
	}
	lua_pushinteger(L, (lua_Integer)p->rx_bytes);
	lua_setfield(L, -2, "rx_bytes");
	lua_pushinteger(L, (lua_Integer)p->tx_bytes);
	lua_setfield(L, -2, "tx_bytes");
	lua_pushinteger(L, p->persistent_keepalive);
	lua_setfield(L, -2, "persistent_keepalive");
}

/* core.uapi_status(ifname) -> status table of an engine in another process,
 * read over its UAPI socket.  Parsed by wg_uapi_parse_get into the reply's
 * to-be-closed userdata, so the private key in the reply never becomes a
 * Lua string: only the derived public key does. */
static int l_uapi_status(lua_State *L)
{
	const char *ifname = luaL_checkstring(L, 1);
	struct uapi_reply *r;
	char err[256];
	int nres;

	lua_settop(L, 1);
	r = uapi_exchange(L, ifname, "get=1\n\n", 7, &nres); /* 2: the reply */
	if (!r)
		return nres;
	if (wg_uapi_parse_get(r->buf, r->len, &r->get, err, sizeof(err)) < 0)
		return wgo_fail(L, 0, "interface %s: bad reply from the engine: %s", ifname, err);
	if (r->get.has_errno && r->get.errno_value != 0)
		return wgo_fail(L, 0, "interface %s: engine answered errno=%d", ifname, r->get.errno_value);
	if (!r->get.has_errno)
		return wgo_fail(L, 0, "interface %s: truncated reply from the engine", ifname);
	lua_createtable(L, 0, 6);
	lua_pushvalue(L, 1);
	lua_setfield(L, -2, "interface");
	if (r->get.has_private_key) {
		uint8_t pub[32];
		char b64[45];

		crypto_scalarmult_base(pub, r->get.private_key);
		sodium_memzero(r->get.private_key, sizeof(r->get.private_key));
		wg_key_to_base64(b64, pub);
		lua_pushstring(L, b64);
		lua_setfield(L, -2, "public_key");
	}
	if (r->get.has_listen_port) {
		lua_pushinteger(L, r->get.listen_port);
		lua_setfield(L, -2, "listen_port");
	}
	if (r->get.has_fwmark) {
		lua_pushinteger(L, r->get.fwmark);
		lua_setfield(L, -2, "fwmark");
	}
	lua_createtable(L, r->get.n_peers < INT_MAX ? (int)r->get.n_peers : 0, 0);
	for (size_t i = 0; i < r->get.n_peers; i++) {
		push_get_peer(L, &r->get.peers[i]);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	lua_setfield(L, -2, "peers");
	return 1;
}

static const luaL_Reg device_methods[] = {
	{ "apply", l_apply },
	{ "status", l_status },
	{ "events", l_events },
	{ "fd", l_fd },
	{ "send_datagram", l_send_datagram },
	{ "initiate_handshake", l_initiate },
	{ "set_relay", l_set_relay },
	{ "set_peer_relay", l_set_peer_relay },
	{ "rotate_private_key", l_rotate_private_key },
	{ "set_peer_public_key", l_set_peer_public_key },
	{ "interface_name", l_ifname },
	{ "ifindex", l_ifindex },
	{ "set_mtu_hint", l_set_mtu_hint },
	{ "close", l_close },
	{ NULL, NULL },
};

static const luaL_Reg device_meta[] = {
	{ "__gc", l_close }, { "__close", l_close }, { "__tostring", l_tostring }, { "__index", NULL }, { NULL, NULL },
};

static const luaL_Reg set_meta[] = {
	{ "__gc", set_close },
	{ "__close", set_close },
	{ NULL, NULL },
};

static const luaL_Reg snap_meta[] = {
	{ "__gc", snap_close },
	{ "__close", snap_close },
	{ NULL, NULL },
};

static const luaL_Reg reply_meta[] = {
	{ "__gc", reply_close },
	{ "__close", reply_close },
	{ NULL, NULL },
};

static const luaL_Reg device_funcs[] = {
	{ "open", l_open },
	{ "uapi_request", l_uapi_request },
	{ "uapi_status", l_uapi_status },
	{ NULL, NULL },
};

void wgo_open_device(lua_State *L)
{
	luaL_newmetatable(L, SET_MT);
	luaL_setfuncs(L, set_meta, 0);
	lua_pop(L, 1);
	luaL_newmetatable(L, SNAP_MT);
	luaL_setfuncs(L, snap_meta, 0);
	lua_pop(L, 1);
	luaL_newmetatable(L, REPLY_MT);
	luaL_setfuncs(L, reply_meta, 0);
	lua_pop(L, 1);
	luaL_newmetatable(L, DEVICE_MT);
	luaL_setfuncs(L, device_meta, 0);
	luaL_newlib(L, device_methods);
	lua_setfield(L, -2, "__index");
	lua_pop(L, 1);
	luaL_setfuncs(L, device_funcs, 0);
}
