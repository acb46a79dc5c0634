/* wgoverlay.core: keys and crypto primitives for the Lua control plane
 * (key generation and encodings, random bytes, BLAKE2s, X25519,
 * XChaCha20-Poly1305, constant-time comparison) and write_private, the
 * atomic 0600 file writer for what holds them.  Private and preshared keys
 * only ever live in wgo_secret_new() memory on the C side. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <lauxlib.h>
#include <lua.h>
#include <sodium.h>

#include "aead.h"
#include "blake2s.h"
#include "lua_core.h"
#include "uapi.h"

static int secret_close(lua_State *L)
{
	void *p = lua_touserdata(L, 1);

	if (p)
		sodium_memzero(p, lua_rawlen(L, 1));
	return 0;
}

void *wgo_secret_new(lua_State *L, size_t size)
{
	void *p = lua_newuserdatauv(L, size, 0);

	memset(p, 0, size);
	luaL_setmetatable(L, WGO_SECRET_MT);
	lua_toclose(L, -1);
	return p;
}

bool wgo_key_from_lua(lua_State *L, int idx, uint8_t key[32])
{
	size_t len;
	const char *s = lua_tolstring(L, idx, &len);

	return s && wg_base64_to_key(key, s, len);
}

/* What an error message may show of a string that failed to parse as a
 * key: its first 4 characters and its length.  A private or preshared key
 * pasted where a public key belongs must not end up in a log. */
void wgo_key_excerpt(char *out, size_t outlen, const char *s, size_t len)
{
	snprintf(out, outlen, "\"%.4s%s\" (%zu characters)", s, len > 4 ? "..." : "", len);
}

/* core.aead_name() -> "avx512" or "libsodium": the transport-data AEAD
 * chosen at load time on this CPU (WGO_AEAD=libsodium forces libsodium;
 * see aead.h). */
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

	wgo_key_excerpt(buf, sizeof(buf), s, len);
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
	struct secret_key *priv = wgo_secret_new(L, sizeof(*priv));
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
	struct secret_key *k = wgo_secret_new(L, sizeof(*k));

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
	if (!wgo_key_from_lua(L, 1, priv))
		return wgo_fail(L, EINVAL, "bad private key: expected 32 bytes base64 (44 characters)");
	crypto_scalarmult_base(pub, priv);
	sodium_memzero(priv, sizeof(priv));
	wg_key_to_base64(b64, pub);
	lua_pushstring(L, b64);
	return 1;
}

static int l_valid_key(lua_State *L)
{
	uint8_t k[32];

	lua_pushboolean(L, lua_type(L, 1) == LUA_TSTRING && wgo_key_from_lua(L, 1, k));
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
	uint8_t *priv = wgo_secret_new(L, 32);
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
		return wgo_fail(L, EINVAL, "x25519: keys must be 32 bytes");
	out = wgo_secret_new(L, 32);
	if (crypto_scalarmult(out, (const uint8_t *)priv, (const uint8_t *)pub) != 0)
		return wgo_fail(L, EINVAL, "x25519: invalid public key (low order point)");
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
	out = wgo_secret_new(L, cl);
	if (crypto_aead_xchacha20poly1305_ietf_decrypt(out, &ml, NULL, (const uint8_t *)c, cl, (const uint8_t *)ad, al,
						       (const uint8_t *)n, (const uint8_t *)k) != 0) {
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
	b64 = wgo_secret_new(L, 45); /* k may be a private key */
	wg_key_to_base64(b64, (const uint8_t *)k);
	lua_pushstring(L, b64);
	return 1;
}

static int l_key_from_base64(lua_State *L)
{
	uint8_t *k;

	luaL_checktype(L, 1, LUA_TSTRING);
	k = wgo_secret_new(L, 32);
	if (!wgo_key_from_lua(L, 1, k))
		return wgo_fail(L, EINVAL, "bad key: expected 32 bytes base64");
	lua_pushlstring(L, (const char *)k, 32);
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
		return wgo_fail(L, ENAMETOOLONG, "path too long");
	fd = mkostemp(tmp, O_CLOEXEC); /* created 0600 */
	if (fd < 0) {
		e = errno;
		return wgo_fail(L, e, "%s: %s", path, strerror(e));
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
	return wgo_fail(L, e, "%s: %s", path, strerror(e));
}

static const luaL_Reg keys_funcs[] = {
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
	{ "write_private", l_write_private },
	{ NULL, NULL },
};

static const luaL_Reg secret_meta[] = {
	{ "__gc", secret_close },
	{ "__close", secret_close },
	{ NULL, NULL },
};

void wgo_open_keys(lua_State *L)
{
	luaL_newmetatable(L, WGO_SECRET_MT);
	luaL_setfuncs(L, secret_meta, 0);
	lua_pop(L, 1);
	luaL_setfuncs(L, keys_funcs, 0);
}
