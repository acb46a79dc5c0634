/* wgoverlay.core: the Lua 5.4 binding of the engine.
 *
 * One userdata type, "wgoverlay.device", shaped like liolib's files: a
 * metatable built once at load time, __index = method table, __gc and
 * __close the same idempotent close, and a closed device raises "attempt to
 * use a closed transport".  Misuse (wrong argument types) raises; failures
 * of the system or the network return nil, message[, errno].
 *
 * Configuration from Lua is converted into the same transaction struct the
 * UAPI parser produces and applied by wg_device_apply(): one code path, two
 * front doors.  Private and preshared keys never come back out. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <dirent.h>

#include <lauxlib.h>
#include <lua.h>
#include <sodium.h>

#include "aead.h"
#include "blake2s.h"
#include "device.h"
#include "netlink.h"
#include "uapi.h"

#define DEVICE_MT "wgoverlay.device"
#define SECRET_MT "wgoverlay.secret"
#define SET_MT "wgoverlay.uapi_set"
#define SNAP_MT "wgoverlay.status_snapshot"
#define REPLY_MT "wgoverlay.uapi_reply"

struct ldev {
	struct wg_device *dev;
};

/* ---- error paths ----
 *
 * Any Lua API call that allocates may raise (a memory error), and so do
 * luaL_error and luaL_check*: the C function is left by longjmp and its
 * locals are never wiped or freed.  So:
 *  - a secret is never decoded or copied into C memory that a raise would
 *    abandon: it lives in a to-be-closed userdata (lua_toclose) whose
 *    __close (run on return and when an error unwinds the function) and
 *    __gc wipe it: secret_new() for plain bytes, set_new() for a
 *    transaction being built (wg_uapi_set_free wipes and frees it);
 *  - no Lua API call that can raise or allocate is made while an engine
 *    lock is held: l_status copies under the lock into malloc'd memory
 *    (owned by a to-be-closed userdata), unlocks, then builds tables.
 * Static error buffers never contain secrets. */

static int secret_close(lua_State *L)
{
	void *p = lua_touserdata(L, 1);

	if (p)
		sodium_memzero(p, lua_rawlen(L, 1));
	return 0;
}

/* size zeroed bytes of Lua memory, wiped when the calling C function
 * returns or raises (and again at collection).  Leaves the userdata on the
 * stack: it must stay there (above it the function may push and pop). */
static void *secret_new(lua_State *L, size_t size)
{
	void *p = lua_newuserdatauv(L, size, 0);

	memset(p, 0, size);
	luaL_setmetatable(L, SECRET_MT);
	lua_toclose(L, -1);
	return p;
}

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

static int push_fail(lua_State *L, int err, const char *msg)
{
	lua_pushnil(L);
	lua_pushstring(L, msg);
	lua_pushinteger(L, err < 0 ? -err : err);
	return 3;
}

static struct wg_device *check_dev(lua_State *L, int idx)
{
	struct ldev *d = luaL_checkudata(L, idx, DEVICE_MT);

	if (!d->dev)
		luaL_error(L, "attempt to use a closed transport");
	return d->dev;
}

/* ---- keys ---- */

static bool key_from_lua(lua_State *L, int idx, uint8_t key[32])
{
	size_t len;
	const char *s = lua_tolstring(L, idx, &len);

	return s && wg_base64_to_key(key, s, len);
}

/* What an error message may show of a string that failed to parse as a
 * key: its first 4 characters and its length.  A private or preshared key
 * pasted where a public key belongs must not end up in a log. */
static void key_excerpt(char *out, size_t outlen, const char *s, size_t len)
{
	snprintf(out, outlen, "\"%.4s%s\" (%zu characters)", s, len > 4 ? "..." : "", len);
}

/* core.aead_name() -> "libsodium" or "avx512": the transport-data AEAD
 * this build selected on this CPU (see Makefile, AEAD=avx512). */
static int l_aead_name(lua_State *L)
{
	lua_pushstring(L, wg_aead_name());
	return 1;
}

static int l_key_excerpt(lua_State *L)
{
	size_t len;
	const char *s = luaL_checklstring(L, 1, &len);
	char buf[64];

	key_excerpt(buf, sizeof(buf), s, len);
	lua_pushstring(L, buf);
	return 1;
}

/* A raw key and its base64 form, in a secret_new() buffer. */
struct secret_key {
	uint8_t raw[32];
	char b64[45];
};

static int l_generate_keys(lua_State *L)
{
	struct secret_key *priv = secret_new(L, sizeof(*priv));
	uint8_t pub[32];
	char b64[45];

	randombytes_buf(priv->raw, sizeof(priv->raw));
	/* Clamp as wg genkey does, so the stored form is canonical. */
	priv->raw[0] &= 248;
	priv->raw[31] = (priv->raw[31] & 127) | 64;
	crypto_scalarmult_base(pub, priv->raw);
	wg_key_to_base64(priv->b64, priv->raw);
	wg_key_to_base64(b64, pub);
	lua_pushstring(L, priv->b64);
	lua_pushstring(L, b64);
	return 2;
}

static int l_generate_psk(lua_State *L)
{
	struct secret_key *k = secret_new(L, sizeof(*k));

	randombytes_buf(k->raw, sizeof(k->raw));
	wg_key_to_base64(k->b64, k->raw);
	lua_pushstring(L, k->b64);
	return 1;
}

static int l_public_key(lua_State *L)
{
	uint8_t priv[32], pub[32];
	char b64[45];

	luaL_checktype(L, 1, LUA_TSTRING);
	if (!key_from_lua(L, 1, priv))
		return push_fail(L, EINVAL, "bad private key: expected 32 bytes base64 (44 characters)");
	crypto_scalarmult_base(pub, priv);
	sodium_memzero(priv, sizeof(priv));
	wg_key_to_base64(b64, pub);
	lua_pushstring(L, b64);
	return 1;
}

static int l_valid_key(lua_State *L)
{
	uint8_t k[32];

	lua_pushboolean(L, lua_type(L, 1) == LUA_TSTRING && key_from_lua(L, 1, k));
	sodium_memzero(k, sizeof(k));
	return 1;
}

/* ---- primitives for the Lua control plane (join protocol, tokens) ---- */

static int l_random(lua_State *L)
{
	lua_Integer n = luaL_checkinteger(L, 1);
	luaL_Buffer b;

	luaL_argcheck(L, n >= 0 && n <= 65536, 1, "0..65536 bytes");
	randombytes_buf(luaL_buffinitsize(L, &b, (size_t)n), (size_t)n);
	luaL_pushresultsize(&b, (size_t)n);
	return 1;
}

/* core.blake2s(data[, key[, outlen]]) -> raw digest */
static int l_blake2s(lua_State *L)
{
	size_t len, klen = 0;
	const char *data = luaL_checklstring(L, 1, &len);
	const char *key = luaL_optlstring(L, 2, NULL, &klen);
	lua_Integer outlen = luaL_optinteger(L, 3, 32);
	uint8_t out[32];

	luaL_argcheck(L, klen <= 32, 2, "key longer than 32 bytes");
	luaL_argcheck(L, outlen >= 1 && outlen <= 32, 3, "1..32");
	wg_blake2s(out, (size_t)outlen, (const uint8_t *)data, len, (const uint8_t *)key, klen);
	lua_pushlstring(L, (const char *)out, (size_t)outlen);
	return 1;
}

/* core.x25519_keypair() -> private (raw 32), public (raw 32) */
static int l_x25519_keypair(lua_State *L)
{
	uint8_t *priv = secret_new(L, 32);
	uint8_t pub[32];

	crypto_box_keypair(pub, priv);
	lua_pushlstring(L, (const char *)priv, 32);
	lua_pushlstring(L, (const char *)pub, 32);
	return 2;
}

/* core.x25519(private_raw, public_raw) -> shared (raw 32) or nil, err */
static int l_x25519(lua_State *L)
{
	size_t a, b;
	const char *priv = luaL_checklstring(L, 1, &a);
	const char *pub = luaL_checklstring(L, 2, &b);
	uint8_t *out;

	if (a != 32 || b != 32)
		return push_fail(L, EINVAL, "x25519: keys must be 32 bytes");
	out = secret_new(L, 32);
	if (crypto_scalarmult(out, (const uint8_t *)priv, (const uint8_t *)pub) != 0)
		return push_fail(L, EINVAL, "x25519: invalid public key (low order point)");
	lua_pushlstring(L, (const char *)out, 32);
	return 1;
}

/* core.aead_seal(key32, nonce24, plaintext[, ad]) -> ciphertext||tag
 * (XChaCha20-Poly1305: random 24-byte nonces are safe). */
static int l_aead_seal(lua_State *L)
{
	size_t kl, nl, ml, al = 0;
	const char *k = luaL_checklstring(L, 1, &kl);
	const char *n = luaL_checklstring(L, 2, &nl);
	const char *m = luaL_checklstring(L, 3, &ml);
	const char *ad = luaL_optlstring(L, 4, NULL, &al);
	luaL_Buffer b;
	unsigned long long cl;
	uint8_t *out;

	luaL_argcheck(L, kl == 32, 1, "key must be 32 bytes");
	luaL_argcheck(L, nl == 24, 2, "nonce must be 24 bytes");
	out = (uint8_t *)luaL_buffinitsize(L, &b, ml + 16);
	crypto_aead_xchacha20poly1305_ietf_encrypt(out, &cl, (const uint8_t *)m, ml, (const uint8_t *)ad, al, NULL,
						   (const uint8_t *)n, (const uint8_t *)k);
	luaL_pushresultsize(&b, (size_t)cl);
	return 1;
}

/* core.aead_open(key32, nonce24, ciphertext[, ad]) -> plaintext or nil */
static int l_aead_open(lua_State *L)
{
	size_t kl, nl, cl, al = 0;
	const char *k = luaL_checklstring(L, 1, &kl);
	const char *n = luaL_checklstring(L, 2, &nl);
	const char *c = luaL_checklstring(L, 3, &cl);
	const char *ad = luaL_optlstring(L, 4, NULL, &al);
	unsigned long long ml;
	uint8_t *out;

	luaL_argcheck(L, kl == 32, 1, "key must be 32 bytes");
	luaL_argcheck(L, nl == 24, 2, "nonce must be 24 bytes");
	if (cl < 16) {
		lua_pushnil(L);
		return 1;
	}
	/* The plaintext may be a secret (the join protocol carries keys):
	 * the only copy besides the result string is wiped. */
	out = secret_new(L, cl);
	if (crypto_aead_xchacha20poly1305_ietf_decrypt(out, &ml, NULL, (const uint8_t *)c, cl, (const uint8_t *)ad,
						       al, (const uint8_t *)n, (const uint8_t *)k) != 0) {
		lua_pushnil(L);
		return 1;
	}
	lua_pushlstring(L, (const char *)out, (size_t)ml);
	return 1;
}

/* core.equal(a, b): constant-time comparison of equal-length strings */
static int l_equal(lua_State *L)
{
	size_t al, bl;
	const char *a = luaL_checklstring(L, 1, &al);
	const char *b = luaL_checklstring(L, 2, &bl);

	lua_pushboolean(L, al == bl && sodium_memcmp(a, b, al) == 0);
	return 1;
}

/* Base64 (standard alphabet) of raw 32-byte keys and back. */
static int l_key_to_base64(lua_State *L)
{
	size_t len;
	const char *k = luaL_checklstring(L, 1, &len);
	char *b64;

	luaL_argcheck(L, len == 32, 1, "32 bytes expected");
	b64 = secret_new(L, 45); /* k may be a private key */
	wg_key_to_base64(b64, (const uint8_t *)k);
	lua_pushstring(L, b64);
	return 1;
}

static int l_key_from_base64(lua_State *L)
{
	uint8_t *k;

	luaL_checktype(L, 1, LUA_TSTRING);
	k = secret_new(L, 32);
	if (!key_from_lua(L, 1, k))
		return push_fail(L, EINVAL, "bad key: expected 32 bytes base64");
	lua_pushlstring(L, (const char *)k, 32);
	return 1;
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
				return push_fail(L, EINVAL, "mtu must be 576..65535");
			opts.mtu = (unsigned)mtu;
		}
		lua_pop(L, 1);
	}
	if (strlen(ifname) >= IFNAMSIZ) {
		lua_pushnil(L);
		lua_pushfstring(L, "interface name \"%s\" longer than %d bytes", ifname, IFNAMSIZ - 1);
		lua_pushinteger(L, EINVAL);
		return 3;
	}
	d = lua_newuserdatauv(L, sizeof(*d), 0);
	d->dev = NULL;
	luaL_setmetatable(L, DEVICE_MT);
	d->dev = wg_device_create(ifname, &opts, &err, msg, sizeof(msg));
	if (!d->dev)
		return push_fail(L, err, msg[0] ? msg : strerror(-err));
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
		lua_pushfstring(L, "wgoverlay transport (%s)", d->dev->ifname);
	else
		lua_pushliteral(L, "wgoverlay transport (closed)");
	return 1;
}

static int l_ifname(lua_State *L)
{
	lua_pushstring(L, check_dev(L, 1)->ifname);
	return 1;
}

static int l_fd(lua_State *L)
{
	struct wg_device *dev = check_dev(L, 1);

	atomic_store(&dev->control_enabled, true);
	lua_pushinteger(L, dev->ev_fd);
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

		key_excerpt(ex, sizeof(ex), s, len);
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
		if (!key_from_lua(L, -1, op->preshared_key)) {
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
			snprintf(errbuf, sizeof(errbuf), "endpoint \"%.64s\" invalid: expected IP:PORT or [IPv6]:PORT", s);
			lua_pop(L, 1);
			return errbuf;
		}
		memcpy(&op->endpoint, &ss, ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
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
		if (!key_from_lua(L, -1, set->private_key))
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
		return push_fail(L, EINVAL, e);
	r = wg_device_apply(dev, set, msg, sizeof(msg));
	wg_uapi_set_free(set);
	if (r < 0)
		return push_fail(L, r, msg[0] ? msg : strerror(-r));
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

/* What status() reports of the peers, copied under the engine's locks into
 * malloc'd memory (no Lua allocation, hence no raise, while they are held)
 * and turned into tables after.  Owned by a to-be-closed userdata. */
struct snap_aip {
	uint8_t family, cidr;
	uint8_t addr[16];
};

struct snap_peer {
	uint8_t public_key[32];
	bool has_endpoint;
	struct wg_endpoint endpoint;
	uint64_t last_handshake_real, rx_bytes, tx_bytes;
	uint16_t persistent_keepalive;
	size_t first_aip, n_aips;     /* a range of snap->aips */
};

struct status_snap {
	struct snap_peer *peers;
	size_t n_peers, cap_peers;
	struct snap_aip *aips;
	size_t n_aips, cap_aips;
	bool oom;
};

static int snap_close(lua_State *L)
{
	struct status_snap *snap = lua_touserdata(L, 1);

	if (snap) {
		free(snap->peers);
		free(snap->aips);
		memset(snap, 0, sizeof(*snap));
	}
	return 0;
}

/* arr (n of *cap elements of size bytes) with room for one more, possibly
 * moved; NULL when out of memory (arr is then unchanged). */
static void *snap_grow(void *arr, size_t *cap, size_t n, size_t size)
{
	size_t ncap;

	if (n < *cap)
		return arr;
	ncap = *cap ? *cap * 2 : 16;
	if (ncap > SIZE_MAX / size || !(arr = realloc(arr, ncap * size)))
		return NULL;
	*cap = ncap;
	return arr;
}

static void snap_aip(void *arg, int family, const uint8_t *addr, uint8_t cidr)
{
	struct status_snap *snap = arg;
	struct snap_aip *a;

	if (snap->oom)
		return;
	a = snap_grow(snap->aips, &snap->cap_aips, snap->n_aips, sizeof(*a));
	if (!a) {
		snap->oom = true;
		return;
	}
	snap->aips = a;
	a = &snap->aips[snap->n_aips++];
	memset(a, 0, sizeof(*a));
	a->family = (uint8_t)family;
	a->cidr = cidr;
	memcpy(a->addr, addr, family == AF_INET ? 4 : 16);
	snap->peers[snap->n_peers - 1].n_aips++;
}

/* Called with cfg_mutex and the protocol's configuration lock held. */
static void snap_peer(void *arg, const struct wg_peer_info *info, struct wg_peer *peer)
{
	struct status_snap *snap = arg;
	struct snap_peer *sp;

	if (snap->oom)
		return;
	sp = snap_grow(snap->peers, &snap->cap_peers, snap->n_peers, sizeof(*sp));
	if (!sp) {
		snap->oom = true;
		return;
	}
	snap->peers = sp;
	sp = &snap->peers[snap->n_peers++];
	memset(sp, 0, sizeof(*sp));
	memcpy(sp->public_key, info->public_key, sizeof(sp->public_key));
	sp->has_endpoint = info->has_endpoint;
	sp->endpoint = info->endpoint;
	sp->last_handshake_real = info->last_handshake_real;
	sp->rx_bytes = info->rx_bytes;
	sp->tx_bytes = info->tx_bytes;
	sp->persistent_keepalive = info->persistent_keepalive;
	sp->first_aip = snap->n_aips;
	wg_allowedips_foreach(&peer->aips, snap_aip, snap);
}

static void push_snap_peer(lua_State *L, const struct status_snap *snap, const struct snap_peer *sp)
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
		const struct snap_aip *a = &snap->aips[sp->first_aip + k];
		char ip[INET6_ADDRSTRLEN];

		inet_ntop(a->family, a->addr, ip, sizeof(ip));
		lua_pushfstring(L, "%s/%d", ip, (int)a->cidr);
		lua_rawseti(L, -2, (lua_Integer)k + 1);
	}
	lua_setfield(L, -2, "allowed_ips");
}

#define STAT(name, field) do { \
	lua_pushinteger(L, (lua_Integer)atomic_load(&(field))); \
	lua_setfield(L, -2, name); \
} while (0)

static int l_status(lua_State *L)
{
	struct wg_device *dev = check_dev(L, 1);
	struct wg_proto_stats *ps = &dev->proto.stats;
	struct status_snap *snap;
	uint8_t pub[32];
	char b64[45];

	lua_settop(L, 1);
	snap = lua_newuserdatauv(L, sizeof(*snap), 0); /* 2 */
	memset(snap, 0, sizeof(*snap));
	luaL_setmetatable(L, SNAP_MT);
	lua_toclose(L, 2);
	/* No Lua call between lock and unlock: a raise would leave them held. */
	pthread_mutex_lock(&dev->cfg_mutex);
	wg_device_foreach_peer(dev, snap_peer, snap);
	pthread_mutex_unlock(&dev->cfg_mutex);
	if (snap->oom)
		return push_fail(L, ENOMEM, "out of memory");

	lua_createtable(L, 0, 8);
	lua_pushstring(L, dev->ifname);
	lua_setfield(L, -2, "interface");
	if (wg_proto_get_public_key(&dev->proto, pub)) {
		wg_key_to_base64(b64, pub);
		lua_pushstring(L, b64);
		lua_setfield(L, -2, "public_key");
	}
	lua_pushinteger(L, dev->listen_port);
	lua_setfield(L, -2, "listen_port");
	lua_pushinteger(L, dev->fwmark);
	lua_setfield(L, -2, "fwmark");
	lua_pushinteger(L, atomic_load(&dev->mtu));
	lua_setfield(L, -2, "mtu");
	lua_createtable(L, snap->n_peers < INT_MAX ? (int)snap->n_peers : 0, 0);
	for (size_t i = 0; i < snap->n_peers; i++) {
		push_snap_peer(L, snap, &snap->peers[i]);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	lua_setfield(L, -2, "peers");

	lua_createtable(L, 0, 20);
	STAT("rx_junk", ps->rx_junk);
	STAT("rx_bad_mac1", ps->rx_bad_mac1);
	STAT("rx_cookie_sent", ps->rx_cookie_sent);
	STAT("rx_ratelimited", ps->rx_ratelimited);
	STAT("rx_handshake_invalid", ps->rx_handshake_invalid);
	STAT("rx_unknown_index", ps->rx_unknown_index);
	STAT("rx_decrypt_failed", ps->rx_decrypt_failed);
	STAT("rx_replayed", ps->rx_replayed);
	STAT("rx_expired_key", ps->rx_expired_key);
	STAT("rx_bad_inner", ps->rx_bad_inner);
	STAT("rx_wrong_source", ps->rx_wrong_source);
	STAT("tx_no_route", ps->tx_no_route);
	STAT("tx_staged_dropped", ps->tx_staged_dropped);
	STAT("tx_bad_offload", ps->tx_bad_offload);
	STAT("handshakes_completed", ps->handshakes_completed);
	STAT("rx_packets", dev->stats.rx_packets);
	STAT("tx_packets", dev->stats.tx_packets);
	STAT("handshake_queue_dropped", dev->stats.handshake_queue_dropped);
	STAT("events_dropped", dev->stats.events_dropped);
	STAT("tun_write_errors", dev->stats.tun_write_errors);
	STAT("udp_send_errors", dev->stats.udp_send_errors);
	lua_pushinteger(L, atomic_load(&dev->proto.live_keypairs));
	lua_setfield(L, -2, "live_keypairs");
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
	struct sockaddr_storage ss;
	int r;

	if (!wg_parse_endpoint(ep, elen, &ss)) {
		lua_pushnil(L);
		lua_pushfstring(L, "endpoint \"%s\" invalid: expected IP:PORT or [IPv6]:PORT", ep);
		lua_pushinteger(L, EINVAL);
		return 3;
	}
	if (len > 65507)
		return push_fail(L, EMSGSIZE, "datagram longer than 65507 bytes");
	r = wg_device_send_datagram(dev, (struct sockaddr *)&ss, (const uint8_t *)data, len);
	if (r < 0) {
		lua_pushnil(L);
		lua_pushfstring(L, "send to %s failed: %s", ep, strerror(-r));
		lua_pushinteger(L, -r);
		return 3;
	}
	lua_pushboolean(L, 1);
	return 1;
}

static int l_initiate(lua_State *L)
{
	struct wg_device *dev = check_dev(L, 1);
	uint8_t pub[32];

	luaL_checktype(L, 2, LUA_TSTRING);
	if (!key_from_lua(L, 2, pub))
		return push_fail(L, EINVAL, "bad key: expected 32 bytes base64");
	if (wg_device_initiate(dev, pub) < 0)
		return push_fail(L, ENOENT, "no such peer");
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
		lua_pushnil(L);
		lua_pushfstring(L, "relay \"%s\" invalid: expected IP:PORT or [IPv6]:PORT", ep);
		return 2;
	}
	r = wg_device_set_relay(dev, (struct sockaddr *)&ss, lua_isnone(L, 3) || lua_toboolean(L, 3));
	if (r < 0)
		return push_fail(L, r, "too many relays (at most 8)");
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
	if (!key_from_lua(L, 2, pub))
		return push_fail(L, EINVAL, "bad key: expected 32 bytes base64");
	if (!wg_parse_endpoint(ep, elen, &ss)) {
		lua_pushnil(L);
		lua_pushfstring(L, "endpoint \"%s\" invalid: expected IP:PORT or [IPv6]:PORT", ep);
		return 2;
	}
	if (ch != 0 && (ch < 0x4000 || ch > 0x4fff))
		return push_fail(L, EINVAL, "channel must be 0x4000..0x4FFF (or 0 for direct)");
	r = wg_device_set_peer_relay(dev, pub, (struct sockaddr *)&ss, (uint16_t)ch);
	if (r < 0)
		return push_fail(L, r, r == -ENOENT ? "no such peer" : strerror(-r));
	lua_pushboolean(L, 1);
	return 1;
}

static int l_ifindex(lua_State *L)
{
	struct wg_device *dev = check_dev(L, 1);

	lua_pushinteger(L, wg_nl_ifindex(dev->ifname));
	return 1;
}

static int l_set_mtu_hint(lua_State *L)
{
	struct wg_device *dev = check_dev(L, 1);
	lua_Integer mtu = luaL_checkinteger(L, 2);

	luaL_argcheck(L, mtu >= 576 && mtu <= 65535, 2, "576..65535");
	atomic_store(&dev->mtu, (unsigned)mtu);
	return 0;
}

/* ---- netlink (address, MTU, link state, routes) ---- */

static int nl_result(lua_State *L, int r, const char *what, const char *detail)
{
	if (r >= 0) {
		lua_pushboolean(L, 1);
		return 1;
	}
	lua_pushnil(L);
	if (r == -EPERM || r == -EACCES)
		lua_pushfstring(L, "%s %s: permission denied: needs CAP_NET_ADMIN", what, detail);
	else
		lua_pushfstring(L, "%s %s: %s", what, detail, wg_nl_strerror(r));
	lua_pushinteger(L, -r);
	return 3;
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
		lua_pushnil(L);
		lua_pushfstring(L, "CIDR \"%s\" invalid", cidr);
		lua_pushinteger(L, EINVAL);
		return 3;
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
		lua_pushnil(L);
		lua_pushfstring(L, "CIDR \"%s\" invalid", cidr);
		lua_pushinteger(L, EINVAL);
		return 3;
	}
	if (ifindex < 0)
		return nl_result(L, ifindex, "interface", ifname);
	if (!strcmp(op, "add"))
		return nl_result(L, wg_nl_route_add(ifindex, family, addr, plen, (uint32_t)table), "adding route", cidr);
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
			lua_pushnil(L);
			lua_pushfstring(L, "mtu %d invalid: must be 576..65535", (int)mtu);
			lua_pushinteger(L, EINVAL);
			return 3;
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

		lua_pushnil(L);
		lua_pushfstring(L, "network namespace \"%s\": %s", ns, strerror(e));
		lua_pushinteger(L, e);
		return 3;
	}
	home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	if (home < 0 || setns(target, CLONE_NEWNET) < 0) {
		int e = errno;

		if (home >= 0)
			close(home);
		close(target);
		lua_pushnil(L);
		lua_pushfstring(L, "entering network namespace \"%s\": %s", ns, strerror(e));
		lua_pushinteger(L, e);
		return 3;
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
		lua_pushnil(L);
		lua_pushfstring(L, "interface name longer than %d bytes", IFNAMSIZ - 1);
		lua_pushinteger(L, EINVAL);
		return 3;
	}
	if (ns) {
		fd = open_netns(L, ns);
		if (fd < 0) {
			int e = errno;

			lua_pushnil(L);
			lua_pushfstring(L, "network namespace \"%s\": %s", ns, strerror(e));
			lua_pushinteger(L, e);
			return 3;
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
		lua_pushnil(L);
		lua_pushfstring(L, "sysctl %s: %s", key, strerror(e));
		lua_pushinteger(L, e);
		return 3;
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
		lua_pushnil(L);
		lua_pushfstring(L, "route %s via %s invalid", cidr, gw);
		lua_pushinteger(L, EINVAL);
		return 3;
	}
	if (ifindex < 0)
		return nl_result(L, ifindex, "interface", ifname);
	if (!strcmp(op, "add"))
		return nl_result(L, wg_nl_route_add_via(ifindex, family, addr, plen, gaddr), "adding route", cidr);
	return nl_result(L, wg_nl_route_del(ifindex, family, addr, plen, 0), "removing route", cidr);
}

/* ---- process helpers ---- */

/* Blocks SIGINT, SIGTERM and SIGHUP and waits for one (the engine's threads
 * have every signal blocked).  Returns its name. */
static int l_wait_signal(lua_State *L)
{
	sigset_t set;
	int sig = 0;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	while (sigwait(&set, &sig) != 0)
		;
	lua_pushstring(L, sig == SIGINT ? "INT" : sig == SIGTERM ? "TERM" : "HUP");
	return 1;
}

/* core.ignore_sigpipe(): a peer that closes a socket early must cost us that
 * connection, never the process (and with it the tunnel): writes then fail
 * with EPIPE instead.  Called first thing by bin/wgoverlay. */
static int l_ignore_sigpipe(lua_State *L)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_IGN;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGPIPE, &sa, NULL) < 0)
		return luaL_error(L, "sigaction(SIGPIPE): %s", strerror(errno));
	return 0;
}

/* A UAPI exchange in flight: the socket and the reply read so far (a get
 * reply holds the private key), owned by a to-be-closed userdata that
 * closes the socket and wipes the reply whatever happens. */
struct uapi_reply {
	int fd;
	char *buf;
	size_t len, cap;
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
		lua_pushnil(L);
		lua_pushfstring(L, "interface name \"%s\" invalid", ifname);
		*nres = 2;
		return NULL;
	}
	r = lua_newuserdatauv(L, sizeof(*r), 0);
	memset(r, 0, sizeof(*r));
	r->fd = -1;
	luaL_setmetatable(L, REPLY_MT);
	lua_toclose(L, -1);
	*nres = 3;
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/%s.sock", WG_UAPI_DIR, ifname);
	r->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (r->fd < 0) {
		push_fail(L, errno, strerror(errno));
		return NULL;
	}
	if (connect(r->fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		int e = errno;

		lua_pushnil(L);
		if (e == ENOENT || e == ECONNREFUSED)
			lua_pushfstring(L, "no engine runs interface \"%s\" (%s)", ifname, sun.sun_path);
		else if (e == EACCES || e == EPERM)
			lua_pushfstring(L, "%s: permission denied (the UAPI socket is root-only)", sun.sun_path);
		else
			lua_pushfstring(L, "%s: %s", sun.sun_path, strerror(e));
		lua_pushinteger(L, e);
		return NULL;
	}
	for (size_t off = 0; off < qlen;) {
		ssize_t w = send(r->fd, req + off, qlen - off, MSG_NOSIGNAL);

		if (w < 0) {
			push_fail(L, errno, strerror(errno));
			return NULL;
		}
		off += (size_t)w;
	}
	shutdown(r->fd, SHUT_WR);
	for (;;) {
		ssize_t n;

		if (!reply_reserve(r, 4096)) {
			push_fail(L, ENOMEM, "out of memory");
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

/* core.uapi_status(ifname) -> status table of an engine in another process,
 * read over its UAPI socket.  Parsed here, in the wiped reply buffer, so
 * the private key in the reply never becomes a Lua string: only the
 * derived public key does. */
static int l_uapi_status(lua_State *L)
{
	const char *ifname = luaL_checkstring(L, 1);
	struct uapi_reply *r;
	char *line, *save = NULL;
	int nres, peers_idx = 0, errno_seen = 0;
	lua_Integer npeers = 0;

	lua_settop(L, 1);
	r = uapi_exchange(L, ifname, "get=1\n\n", 7, &nres); /* 2: the reply */
	if (!r)
		return nres;
	lua_createtable(L, 0, 6);             /* 3: status */
	lua_pushvalue(L, 1);
	lua_setfield(L, 3, "interface");
	lua_newtable(L);                      /* 4: peers */
	peers_idx = 4;
	for (line = strtok_r(r->buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *eq = strchr(line, '=');
		const char *k = line, *v;
		uint8_t *key;
		char b64[45];

		if (!eq)
			continue;
		*eq = '\0';
		v = eq + 1;
		if (!strcmp(k, "private_key")) {
			uint8_t pub[32];

			key = secret_new(L, 32);
			if (wg_hex_to_key(key, v, strlen(v))) {
				crypto_scalarmult_base(pub, key);
				sodium_memzero(key, 32);
				wg_key_to_base64(b64, pub);
				lua_pushstring(L, b64);
				lua_setfield(L, 3, "public_key");
			}
			lua_pop(L, 1); /* closes (wipes) key */
		} else if (!strcmp(k, "listen_port") || !strcmp(k, "fwmark")) {
			lua_pushinteger(L, strtoll(v, NULL, 10));
			lua_setfield(L, 3, k);
		} else if (!strcmp(k, "errno")) {
			errno_seen = 1;
			if (strcmp(v, "0")) {
				lua_pushnil(L);
				lua_pushfstring(L, "interface %s: engine answered errno=%s", ifname, v);
				return 2;
			}
		} else if (!strcmp(k, "public_key")) {
			uint8_t pk[32];

			if (!wg_hex_to_key(pk, v, strlen(v)))
				continue;
			wg_key_to_base64(b64, pk);
			lua_createtable(L, 0, 8);
			lua_pushstring(L, b64);
			lua_setfield(L, -2, "public_key");
			lua_newtable(L);
			lua_setfield(L, -2, "allowed_ips");
			lua_pushinteger(L, 0);
			lua_setfield(L, -2, "last_handshake");
			lua_pushvalue(L, -1);
			lua_rawseti(L, peers_idx, ++npeers);
		} else if (npeers && lua_gettop(L) == 5) {
			if (!strcmp(k, "endpoint")) {
				lua_pushstring(L, v);
				lua_setfield(L, 5, "endpoint");
			} else if (!strcmp(k, "last_handshake_time_sec")) {
				lua_pushinteger(L, strtoll(v, NULL, 10));
				lua_setfield(L, 5, "last_handshake");
			} else if (!strcmp(k, "rx_bytes") || !strcmp(k, "tx_bytes")) {
				lua_pushinteger(L, (lua_Integer)strtoull(v, NULL, 10));
				lua_setfield(L, 5, k);
			} else if (!strcmp(k, "persistent_keepalive_interval")) {
				lua_pushinteger(L, strtoll(v, NULL, 10));
				lua_setfield(L, 5, "persistent_keepalive");
			} else if (!strcmp(k, "allowed_ip")) {
				lua_getfield(L, 5, "allowed_ips");
				lua_pushstring(L, v);
				lua_rawseti(L, -2, (lua_Integer)luaL_len(L, -2) + 1);
				lua_pop(L, 1);
			}
		}
		if (!strcmp(k, "public_key") && lua_gettop(L) == 6) {
			lua_replace(L, 5); /* keep the current peer at index 5 */
		}
	}
	if (!errno_seen) {
		lua_pushnil(L);
		lua_pushfstring(L, "interface %s: truncated reply from the engine", ifname);
		return 2;
	}
	lua_settop(L, 4);
	lua_setfield(L, 3, "peers");
	return 1;
}

/* core.daemonize() forks.  The parent blocks until the child reports with
 * core.ready(fd, ok, message) and returns "parent", ok, message; the child
 * (a new session, stdin on /dev/null) returns "child", fd.  Call it before
 * any engine thread exists. */
static int l_daemonize(lua_State *L)
{
	int p[2];
	pid_t pid;

	if (pipe2(p, O_CLOEXEC) < 0)
		return push_fail(L, errno, strerror(errno));
	pid = fork();
	if (pid < 0) {
		int e = errno;

		close(p[0]);
		close(p[1]);
		return push_fail(L, e, strerror(e));
	}
	if (pid > 0) {
		char buf[512];
		size_t len = 0;

		close(p[1]);
		for (;;) {
			ssize_t n = read(p[0], buf + len, sizeof(buf) - 1 - len);

			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0 || (len += (size_t)n) == sizeof(buf) - 1)
				break;
		}
		close(p[0]);
		buf[len] = '\0';
		lua_pushliteral(L, "parent");
		lua_pushboolean(L, len > 0 && buf[0] == '1');
		lua_pushstring(L, len > 1 ? buf + 1 : "the engine process exited during start-up");
		lua_pushinteger(L, pid);
		return 4;
	}
	close(p[0]);
	setsid();
	{
		int nul = open("/dev/null", O_RDWR | O_CLOEXEC);

		/* A daemon keeps none of its caller's descriptors: `x=$(wgoverlay up
		 * f)` must not wait for the engine to exit. */
		if (nul >= 0) {
			dup2(nul, 0);
			dup2(nul, 1);
			dup2(nul, 2);
			close(nul);
		}
	}
	lua_pushliteral(L, "child");
	lua_pushinteger(L, p[1]);
	return 2;
}

static int l_ready(lua_State *L)
{
	int fd = (int)luaL_checkinteger(L, 1);
	int ok = lua_toboolean(L, 2);
	size_t len;
	const char *msg = luaL_optlstring(L, 3, "", &len);
	char c = ok ? '1' : '0';

	if (write(fd, &c, 1) == 1 && len && write(fd, msg, len) < 0) {
		/* the parent is gone: nothing to tell */
	}
	close(fd);
	return 0;
}

static int l_kill(lua_State *L)
{
	lua_Integer pid = luaL_checkinteger(L, 1);
	const char *sig = luaL_optstring(L, 2, "TERM");
	int signo = !strcmp(sig, "TERM") ? SIGTERM : !strcmp(sig, "INT") ? SIGINT : !strcmp(sig, "KILL") ? SIGKILL : 0;

	if (!signo)
		return luaL_argerror(L, 2, "TERM, INT or KILL expected");
	if (pid <= 0)
		return luaL_argerror(L, 1, "pid must be positive");
	if (kill((pid_t)pid, signo) < 0)
		return push_fail(L, errno, strerror(errno));
	lua_pushboolean(L, 1);
	return 1;
}

/* Names of interfaces with a UAPI socket in /var/run/wireguard. */
static int l_list_sockets(lua_State *L)
{
	DIR *d = opendir(WG_UAPI_DIR);
	struct dirent *de;
	lua_Integer n = 0;

	lua_newtable(L);
	if (!d)
		return 1;
	while ((de = readdir(d))) {
		size_t len = strlen(de->d_name);

		if (len > 5 && !strcmp(de->d_name + len - 5, ".sock") && de->d_name[0] != '.') {
			lua_pushlstring(L, de->d_name, len - 5);
			lua_rawseti(L, -2, ++n);
		}
	}
	closedir(d);
	return 1;
}

/* Writes a file atomically with mode 0600: a temporary file in the same
 * directory, fsync, rename.  Readers see the old or the new file, never a
 * torn one. */
static int l_write_private(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	size_t len;
	const char *data = luaL_checklstring(L, 2, &len);
	char tmp[4096];
	int fd, e;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp-XXXXXX", path) >= (int)sizeof(tmp))
		return push_fail(L, ENAMETOOLONG, "path too long");
	fd = mkostemp(tmp, O_CLOEXEC); /* created 0600 */
	if (fd < 0) {
		e = errno;
		lua_pushnil(L);
		lua_pushfstring(L, "%s: %s", path, strerror(e));
		lua_pushinteger(L, e);
		return 3;
	}
	for (size_t off = 0; off < len;) {
		ssize_t w = write(fd, data + off, len - off);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			goto fail;
		}
		off += (size_t)w;
	}
	if (fchmod(fd, 0600) < 0 || fsync(fd) < 0)
		goto fail;
	if (close(fd) < 0) {
		fd = -1;
		goto fail;
	}
	fd = -1;
	if (rename(tmp, path) < 0)
		goto fail;
	lua_pushboolean(L, 1);
	return 1;
fail:
	e = errno;
	if (fd >= 0)
		close(fd);
	unlink(tmp);
	lua_pushnil(L);
	lua_pushfstring(L, "%s: %s", path, strerror(e));
	lua_pushinteger(L, e);
	return 3;
}

static int l_getpid(lua_State *L)
{
	lua_pushinteger(L, getpid());
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
	{ "interface_name", l_ifname },
	{ "ifindex", l_ifindex },
	{ "set_mtu_hint", l_set_mtu_hint },
	{ "close", l_close },
	{ NULL, NULL },
};

static const luaL_Reg device_meta[] = {
	{ "__gc", l_close },
	{ "__close", l_close },
	{ "__tostring", l_tostring },
	{ "__index", NULL },
	{ NULL, NULL },
};

static const luaL_Reg secret_meta[] = {
	{ "__gc", secret_close },
	{ "__close", secret_close },
	{ NULL, NULL },
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

static const luaL_Reg core_funcs[] = {
	{ "generate_keys", l_generate_keys },
	{ "generate_psk", l_generate_psk },
	{ "public_key", l_public_key },
	{ "valid_key", l_valid_key },
	{ "aead_name", l_aead_name },
	{ "key_excerpt", l_key_excerpt },
	{ "random", l_random },
	{ "blake2s", l_blake2s },
	{ "x25519_keypair", l_x25519_keypair },
	{ "x25519", l_x25519 },
	{ "aead_seal", l_aead_seal },
	{ "aead_open", l_aead_open },
	{ "equal", l_equal },
	{ "key_to_base64", l_key_to_base64 },
	{ "key_from_base64", l_key_from_base64 },
	{ "open", l_open },
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
	{ "wait_signal", l_wait_signal },
	{ "ignore_sigpipe", l_ignore_sigpipe },
	{ "uapi_request", l_uapi_request },
	{ "uapi_status", l_uapi_status },
	{ "daemonize", l_daemonize },
	{ "ready", l_ready },
	{ "getpid", l_getpid },
	{ "kill", l_kill },
	{ "list_sockets", l_list_sockets },
	{ "write_private", l_write_private },
	{ NULL, NULL },
};

int luaopen_wgoverlay_core(lua_State *L);

int luaopen_wgoverlay_core(lua_State *L)
{
	if (sodium_init() < 0)
		return luaL_error(L, "libsodium failed to initialise");
	luaL_newmetatable(L, SECRET_MT);
	luaL_setfuncs(L, secret_meta, 0);
	lua_pop(L, 1);
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
	luaL_newlib(L, core_funcs);
	lua_pushliteral(L, "wgoverlay.core");
	lua_setfield(L, -2, "_NAME");
	return 1;
}
