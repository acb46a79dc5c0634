// SPDX-License-Identifier: MIT
/* Parser for the cross-platform UAPI "set=1" message and the key, endpoint
 * and CIDR helpers shared with the Lua binding and the device layer.
 *
 * Everything here is pure: a message is parsed into a struct wg_uapi_set
 * and nothing is applied, so a bad line anywhere rejects the whole message.
 * Input is never assumed to be NUL-terminated.
 *
 * Key material: hex/base64 keys are decoded without data-dependent branches
 * or table lookups, decoded into temporaries that are wiped, and never
 * echoed in error messages. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <sys/socket.h>
#include <sodium.h>

#include "uapi.h"

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

/* All-ones if a <= b (a, b < 2^31), else zero; no branches. */
static inline unsigned int ct_le_mask(unsigned int a, unsigned int b)
{
	return 0U - (((b - a) >> 31) ^ 1U);
}

/* All-ones if lo <= c <= hi, else zero. */
static inline unsigned int ct_range_mask(unsigned int c, unsigned int lo, unsigned int hi)
{
	return ct_le_mask(lo, c) & ct_le_mask(c, hi);
}

static bool key_is(const char *key, size_t klen, const char *name)
{
	size_t n = strlen(name);

	return klen == n && !memcmp(key, name, n);
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* Strictly decimal digits: no sign, no spaces, no base prefix, no
 * overflow past max.  Leading zeros are accepted (like strconv.ParseUint). */
static bool parse_uint(const char *s, size_t len, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;
	size_t i;

	if (!len)
		return false;
	for (i = 0; i < len; ++i) {
		unsigned int d;

		if (!is_digit(s[i]))
			return false;
		d = (unsigned int)(s[i] - '0');
		if (v > (max - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*out = v;
	return true;
}

/* Copies s[0..len) into buf as a C string; fails if it does not fit or
 * would be cut short by an embedded NUL. */
static bool copy_cstr(char *buf, size_t buflen, const char *s, size_t len)
{
	if (len >= buflen || memchr(s, '\0', len))
		return false;
	memcpy(buf, s, len);
	buf[len] = '\0';
	return true;
}

/* ------------------------------------------------------------------ */
/* Keys: hex and base64                                                */
/* ------------------------------------------------------------------ */

bool wg_hex_to_key(uint8_t key[WG_KEY_LEN], const char *hex, size_t len)
{
	uint8_t tmp[WG_KEY_LEN];
	unsigned int bad = 0;
	size_t i;

	if (!hex || len != 2 * WG_KEY_LEN)
		return false;

	for (i = 0; i < 2 * WG_KEY_LEN; ++i) {
		unsigned int c = (unsigned char)hex[i];
		unsigned int lower = c | 0x20U; /* folds 'A'..'F' onto 'a'..'f' */
		unsigned int m_num = ct_range_mask(c, '0', '9');
		unsigned int m_alpha = ct_range_mask(lower, 'a', 'f');
		unsigned int nibble = (m_num & (c - '0')) | (m_alpha & (lower - 'a' + 10U));

		bad |= ~(m_num | m_alpha) & 1U;
		if (i & 1)
			tmp[i / 2] = (uint8_t)(tmp[i / 2] | (nibble & 0xfU));
		else
			tmp[i / 2] = (uint8_t)((nibble & 0xfU) << 4);
	}
	if (!bad)
		memcpy(key, tmp, WG_KEY_LEN);
	sodium_memzero(tmp, sizeof(tmp));
	return !bad;
}

void wg_key_to_hex(char hex[2 * WG_KEY_LEN + 1], const uint8_t key[WG_KEY_LEN])
{
	size_t i;

	for (i = 0; i < 2 * WG_KEY_LEN; ++i) {
		unsigned int n = (i & 1) ? key[i / 2] & 0xfU : key[i / 2] >> 4;

		/* '0' + n, or 'a' + n - 10 = '0' + n + 39 when n >= 10 */
		hex[i] = (char)('0' + n + (ct_le_mask(10, n) & 39U));
	}
	hex[2 * WG_KEY_LEN] = '\0';
}

/* Standard alphabet value of c (0..63); sets *bad if c is not in it. */
static unsigned int b64_value(unsigned int c, unsigned int *bad)
{
	unsigned int m_upper = ct_range_mask(c, 'A', 'Z');
	unsigned int m_lower = ct_range_mask(c, 'a', 'z');
	unsigned int m_digit = ct_range_mask(c, '0', '9');
	unsigned int m_plus = ct_range_mask(c, '+', '+');
	unsigned int m_slash = ct_range_mask(c, '/', '/');

	*bad |= ~(m_upper | m_lower | m_digit | m_plus | m_slash) & 1U;
	return ((m_upper & (c - 'A')) | (m_lower & (c - 'a' + 26U)) | (m_digit & (c - '0' + 52U)) | (m_plus & 62U) |
		(m_slash & 63U)) &
	       63U;
}

static char b64_char(unsigned int v)
{
	/* 'A'+v; 'a'+v-26 = 'A'+v+6; '0'+v-52 = 'A'+v-69; '+' = 'A'+62-84;
	 * '/' = 'A'+63-81: the offsets step by +6, -75, -15, +3. */
	return (char)('A' + v + (ct_le_mask(26, v) & 6U) - (ct_le_mask(52, v) & 75U) - (ct_le_mask(62, v) & 15U) +
		      (ct_le_mask(63, v) & 3U));
}

#define WG_KEY_LEN_BASE64 44

/* Like wireguard-tools' key_from_base64: exactly 43 alphabet characters
 * and one '=', and the two bits left over after the 32nd byte must be zero
 * (so every key has exactly one accepted spelling). */
bool wg_base64_to_key(uint8_t key[WG_KEY_LEN], const char *b64, size_t len)
{
	uint8_t tmp[WG_KEY_LEN];
	unsigned int bad = 0, v;
	size_t i;

	if (!b64 || len != WG_KEY_LEN_BASE64 || b64[WG_KEY_LEN_BASE64 - 1] != '=')
		return false;

	for (i = 0; i < WG_KEY_LEN / 3; ++i) {
		const char *q = &b64[i * 4];

		v = b64_value((unsigned char)q[0], &bad) << 18 | b64_value((unsigned char)q[1], &bad) << 12 |
		    b64_value((unsigned char)q[2], &bad) << 6 | b64_value((unsigned char)q[3], &bad);
		tmp[i * 3 + 0] = (uint8_t)(v >> 16);
		tmp[i * 3 + 1] = (uint8_t)(v >> 8);
		tmp[i * 3 + 2] = (uint8_t)v;
	}
	/* i == 10: the last three characters carry 18 bits = 2 bytes + 2 bits. */
	v = b64_value((unsigned char)b64[i * 4 + 0], &bad) << 12 | b64_value((unsigned char)b64[i * 4 + 1], &bad) << 6 |
	    b64_value((unsigned char)b64[i * 4 + 2], &bad);
	bad |= (v & 3U) != 0;
	tmp[i * 3 + 0] = (uint8_t)(v >> 10);
	tmp[i * 3 + 1] = (uint8_t)(v >> 2);

	if (!bad)
		memcpy(key, tmp, WG_KEY_LEN);
	sodium_memzero(tmp, sizeof(tmp));
	return !bad;
}

void wg_key_to_base64(char b64[45], const uint8_t key[WG_KEY_LEN])
{
	unsigned int v;
	size_t i;

	for (i = 0; i < WG_KEY_LEN / 3; ++i) {
		v = (unsigned int)key[i * 3] << 16 | (unsigned int)key[i * 3 + 1] << 8 | key[i * 3 + 2];
		b64[i * 4 + 0] = b64_char((v >> 18) & 63U);
		b64[i * 4 + 1] = b64_char((v >> 12) & 63U);
		b64[i * 4 + 2] = b64_char((v >> 6) & 63U);
		b64[i * 4 + 3] = b64_char(v & 63U);
	}
	v = (unsigned int)key[i * 3] << 16 | (unsigned int)key[i * 3 + 1] << 8;
	b64[i * 4 + 0] = b64_char((v >> 18) & 63U);
	b64[i * 4 + 1] = b64_char((v >> 12) & 63U);
	b64[i * 4 + 2] = b64_char((v >> 6) & 63U);
	b64[i * 4 + 3] = '=';
	b64[WG_KEY_LEN_BASE64] = '\0';
}

/* ------------------------------------------------------------------ */
/* Endpoints and CIDRs                                                 */
/* ------------------------------------------------------------------ */

static bool parse_scope(const char *s, size_t len, uint32_t *scope_id)
{
	char name[IF_NAMESIZE];
	uint64_t v;
	unsigned int idx;

	if (!len)
		return false;
	if (parse_uint(s, len, UINT32_MAX, &v)) {
		*scope_id = (uint32_t)v;
		return true;
	}
	if (!copy_cstr(name, sizeof(name), s, len))
		return false;
	idx = if_nametoindex(name);
	if (!idx)
		return false;
	*scope_id = idx;
	return true;
}

bool wg_parse_endpoint(const char *s, size_t len, struct sockaddr_storage *out)
{
	char host[INET6_ADDRSTRLEN];
	const char *port;
	size_t port_len;
	uint64_t port_num;

	if (!s || !len || memchr(s, '\0', len))
		return false;

	if (s[0] == '[') {
		const char *inner = s + 1, *close, *pct;
		size_t inner_len, addr_len;
		struct sockaddr_in6 in6;

		close = memchr(inner, ']', len - 1);
		if (!close)
			return false;
		inner_len = (size_t)(close - inner);
		port = close + 1;
		port_len = len - (size_t)(port - s);
		if (!port_len || port[0] != ':')
			return false;
		++port;
		--port_len;
		if (!parse_uint(port, port_len, 65535, &port_num))
			return false;

		memset(&in6, 0, sizeof(in6));
		in6.sin6_family = AF_INET6;
		in6.sin6_port = htons((uint16_t)port_num);
		pct = memchr(inner, '%', inner_len);
		addr_len = pct ? (size_t)(pct - inner) : inner_len;
		if (!copy_cstr(host, sizeof(host), inner, addr_len) || inet_pton(AF_INET6, host, &in6.sin6_addr) != 1)
			return false;
		if (pct && !parse_scope(pct + 1, inner_len - addr_len - 1, &in6.sin6_scope_id))
			return false;
		memset(out, 0, sizeof(*out));
		memcpy(out, &in6, sizeof(in6));
		return true;
	} else {
		struct sockaddr_in in4;
		size_t colon = len;

		while (colon > 0 && s[colon - 1] != ':')
			--colon;
		if (!colon)
			return false;
		port = s + colon;
		port_len = len - colon;
		if (!parse_uint(port, port_len, 65535, &port_num))
			return false;

		memset(&in4, 0, sizeof(in4));
		in4.sin_family = AF_INET;
		in4.sin_port = htons((uint16_t)port_num);
		if (!copy_cstr(host, sizeof(host), s, colon - 1) || inet_pton(AF_INET, host, &in4.sin_addr) != 1)
			return false;
		memset(out, 0, sizeof(*out));
		memcpy(out, &in4, sizeof(in4));
		return true;
	}
}

bool wg_parse_cidr(const char *s, size_t len, uint8_t *family, uint8_t addr[16], uint8_t *cidr)
{
	char host[INET6_ADDRSTRLEN];
	uint8_t buf[16] = { 0 };
	const char *slash;
	size_t addr_len;
	uint64_t bits;
	int af;
	unsigned int max_bits;

	if (!s || !len || memchr(s, '\0', len))
		return false;

	slash = memchr(s, '/', len);
	addr_len = slash ? (size_t)(slash - s) : len;
	if (!copy_cstr(host, sizeof(host), s, addr_len))
		return false;
	if (memchr(host, ':', addr_len)) {
		af = AF_INET6;
		max_bits = 128;
	} else {
		af = AF_INET;
		max_bits = 32;
	}
	if (inet_pton(af, host, buf) != 1)
		return false;

	if (slash) {
		const char *p = slash + 1;
		size_t plen = len - addr_len - 1;

		/* No leading zeros ("/08"), like Go's netip.ParsePrefix. */
		if (plen > 1 && p[0] == '0')
			return false;
		if (!parse_uint(p, plen, max_bits, &bits))
			return false;
	} else {
		bits = max_bits;
	}

	*family = (uint8_t)af;
	memcpy(addr, buf, 16);
	*cidr = (uint8_t)bits;
	return true;
}

size_t wg_format_endpoint(char *out, size_t outlen, const struct sockaddr *sa)
{
	char host[INET6_ADDRSTRLEN];
	int n = -1;

	if (!out || !outlen)
		return 0;
	out[0] = '\0';
	if (!sa)
		return 0;

	if (sa->sa_family == AF_INET) {
		struct sockaddr_in in4;

		memcpy(&in4, sa, sizeof(in4));
		if (!inet_ntop(AF_INET, &in4.sin_addr, host, sizeof(host)))
			return 0;
		n = snprintf(out, outlen, "%s:%u", host, (unsigned int)ntohs(in4.sin_port));
	} else if (sa->sa_family == AF_INET6) {
		struct sockaddr_in6 in6;

		memcpy(&in6, sa, sizeof(in6));
		if (!inet_ntop(AF_INET6, &in6.sin6_addr, host, sizeof(host)))
			return 0;
		if (in6.sin6_scope_id)
			n = snprintf(out, outlen, "[%s%%%u]:%u", host, (unsigned int)in6.sin6_scope_id,
				     (unsigned int)ntohs(in6.sin6_port));
		else
			n = snprintf(out, outlen, "[%s]:%u", host, (unsigned int)ntohs(in6.sin6_port));
	}
	if (n < 0 || (size_t)n >= outlen) {
		out[0] = '\0';
		return 0;
	}
	return (size_t)n;
}

/* ------------------------------------------------------------------ */
/* The set=1 message                                                   */
/* ------------------------------------------------------------------ */

struct parse_ctx {
	struct wg_uapi_set *set;
	struct wg_uapi_peer *peer; /* entry being filled, NULL before public_key */
	struct wg_uapi_get *get;   /* the get reply parser's out, peer and */
	struct wg_uapi_get_peer *get_peer;
	char *err;
	size_t errlen;
	/* the line being parsed */
	const char *key, *value;
	size_t key_len, value_len;
	bool has_eq;
};

static void __attribute__((format(printf, 3, 4))) set_error(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* A run of this many base64/hex alphabet characters is treated as possible
 * key material and never quoted, whatever key it came with: this covers a
 * misspelled "privte_key=<hex>" or a pasted key without "key=". */
#define SECRET_RUN 20

static bool looks_like_key_material(const char *s, size_t len)
{
	size_t i, run = 0;

	for (i = 0; i < len; ++i) {
		char c = s[i];

		if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '+' ||
		    c == '/') {
			if (++run >= SECRET_RUN)
				return true;
		} else {
			run = 0;
		}
	}
	return false;
}

#define QUOTE_MAX 96 /* input bytes quoted per part before "..." */

/* Escapes s for quoting inside "...": printable ASCII as is, '"', '\\' and
 * everything else as \xNN; at most QUOTE_MAX input bytes. */
static void quote_part(char out[4 * QUOTE_MAX + 4], const char *s, size_t len)
{
	static const char hexdigits[] = "0123456789abcdef";
	size_t i, o = 0;

	for (i = 0; i < len && i < QUOTE_MAX; ++i) {
		unsigned char c = (unsigned char)s[i];

		if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
			out[o++] = (char)c;
		} else {
			out[o++] = '\\';
			out[o++] = 'x';
			out[o++] = hexdigits[c >> 4];
			out[o++] = hexdigits[c & 0xf];
		}
	}
	if (i < len) {
		memcpy(&out[o], "...", 3);
		o += 3;
	}
	out[o] = '\0';
}

/* Writes `invalid UAPI line "key=value": reason` and returns ret.  The
 * values of private_key and preshared_key, and anything that looks like
 * key material, are replaced by "(hidden)". */
static int line_error(struct parse_ctx *ctx, int ret, const char *reason)
{
	char qkey[4 * QUOTE_MAX + 4], qvalue[4 * QUOTE_MAX + 4];

	if (!ctx->err || !ctx->errlen)
		return ret;

	if (looks_like_key_material(ctx->key, ctx->key_len))
		strcpy(qkey, "(hidden)");
	else
		quote_part(qkey, ctx->key, ctx->key_len);

	if (!ctx->has_eq)
		qvalue[0] = '\0';
	else if (key_is(ctx->key, ctx->key_len, "private_key") || key_is(ctx->key, ctx->key_len, "preshared_key") ||
		 looks_like_key_material(ctx->value, ctx->value_len))
		strcpy(qvalue, "(hidden)");
	else
		quote_part(qvalue, ctx->value, ctx->value_len);

	set_error(ctx->err, ctx->errlen, "invalid UAPI line \"%s%s%s\": %s", qkey, ctx->has_eq ? "=" : "", qvalue,
		  reason);
	return ret;
}

/* Returns arr with room for at least n + 1 elements of size elem, growing
 * the capacity geometrically, or NULL (arr untouched) on overflow/ENOMEM.
 * With wipe, the old block is zeroed before it is freed, so no stale copy
 * of key material is left on the heap. */
static void *grow_array(void *arr, size_t *cap, size_t n, size_t elem, bool wipe)
{
	size_t new_cap;
	void *p;

	if (n < *cap)
		return arr;
	new_cap = *cap ? *cap * 2 : 4;
	if (new_cap < *cap || new_cap > SIZE_MAX / elem)
		return NULL;
	p = calloc(new_cap, elem);
	if (!p)
		return NULL;
	if (arr) {
		memcpy(p, arr, n * elem);
		if (wipe)
			sodium_memzero(arr, *cap * elem);
		free(arr);
	}
	*cap = new_cap;
	return p;
}

static bool parse_true(const char *value, size_t len)
{
	return len == 4 && !memcmp(value, "true", 4);
}

static int add_peer(struct parse_ctx *ctx)
{
	struct wg_uapi_set *set = ctx->set;
	uint8_t key[WG_KEY_LEN];
	struct wg_uapi_peer *peers;

	if (!wg_hex_to_key(key, ctx->value, ctx->value_len))
		return line_error(ctx, -EINVAL, "public_key must be 64 hex digits");

	peers = grow_array(set->peers, &set->cap_peers, set->n_peers, sizeof(*peers), true);
	if (!peers) {
		sodium_memzero(key, sizeof(key));
		return line_error(ctx, -ENOMEM, "out of memory");
	}
	set->peers = peers;
	ctx->peer = &peers[set->n_peers++];
	memset(ctx->peer, 0, sizeof(*ctx->peer));
	memcpy(ctx->peer->public_key, key, WG_KEY_LEN);
	sodium_memzero(key, sizeof(key));
	return 0;
}

static int add_allowed_ip(struct parse_ctx *ctx)
{
	struct wg_uapi_peer *peer = ctx->peer;
	const char *v = ctx->value;
	size_t len = ctx->value_len;
	struct wg_uapi_aip aip = { 0 }, *aips;

	if (len && v[0] == '-') {
		aip.remove = true;
		++v;
		--len;
	}
	/* wg always sends the prefix length; a bare address is refused here. */
	if (!memchr(v, '/', len) || !wg_parse_cidr(v, len, &aip.family, aip.addr, &aip.cidr))
		return line_error(ctx, -EINVAL,
				  "allowed_ip must be [-]address/prefix with prefix 0..32 (IPv4) or 0..128 (IPv6)");

	aips = grow_array(peer->aips, &peer->cap_aips, peer->n_aips, sizeof(*aips), false);
	if (!aips)
		return line_error(ctx, -ENOMEM, "out of memory");
	peer->aips = aips;
	aips[peer->n_aips++] = aip;
	return 0;
}

static bool is_device_key(const char *key, size_t len)
{
	return key_is(key, len, "private_key") || key_is(key, len, "listen_port") || key_is(key, len, "fwmark") ||
	       key_is(key, len, "replace_peers");
}

static bool is_peer_key(const char *key, size_t len)
{
	return key_is(key, len, "remove") || key_is(key, len, "update_only") || key_is(key, len, "preshared_key") ||
	       key_is(key, len, "endpoint") || key_is(key, len, "persistent_keepalive_interval") ||
	       key_is(key, len, "replace_allowed_ips") || key_is(key, len, "allowed_ip") ||
	       key_is(key, len, "protocol_version");
}

static int parse_device_line(struct parse_ctx *ctx)
{
	struct wg_uapi_set *set = ctx->set;
	const char *k = ctx->key, *v = ctx->value;
	size_t klen = ctx->key_len, vlen = ctx->value_len;
	uint64_t n;

	if (key_is(k, klen, "private_key")) {
		if (!wg_hex_to_key(set->private_key, v, vlen))
			return line_error(ctx, -EINVAL, "private_key must be 64 hex digits");
		set->has_private_key = true;
	} else if (key_is(k, klen, "listen_port")) {
		if (!parse_uint(v, vlen, UINT16_MAX, &n))
			return line_error(ctx, -EINVAL, "listen_port must be 0..65535");
		set->listen_port = (uint16_t)n;
		set->has_listen_port = true;
	} else if (key_is(k, klen, "fwmark")) {
		if (!parse_uint(v, vlen, UINT32_MAX, &n))
			return line_error(ctx, -EINVAL, "fwmark must be 0..4294967295");
		set->fwmark = (uint32_t)n;
		set->has_fwmark = true;
	} else if (key_is(k, klen, "replace_peers")) {
		if (!parse_true(v, vlen))
			return line_error(ctx, -EINVAL, "replace_peers must be true");
		set->replace_peers = true;
	} else if (is_peer_key(k, klen)) {
		return line_error(ctx, -EINVAL, "peer key before public_key");
	} else {
		return line_error(ctx, -EINVAL, "unknown key");
	}
	return 0;
}

static int parse_peer_line(struct parse_ctx *ctx)
{
	struct wg_uapi_peer *peer = ctx->peer;
	const char *k = ctx->key, *v = ctx->value;
	size_t klen = ctx->key_len, vlen = ctx->value_len;
	uint64_t n;

	if (key_is(k, klen, "remove")) {
		if (!parse_true(v, vlen))
			return line_error(ctx, -EINVAL, "remove must be true");
		peer->remove = true;
	} else if (key_is(k, klen, "update_only")) {
		if (!parse_true(v, vlen))
			return line_error(ctx, -EINVAL, "update_only must be true");
		peer->update_only = true;
	} else if (key_is(k, klen, "preshared_key")) {
		if (!wg_hex_to_key(peer->preshared_key, v, vlen))
			return line_error(ctx, -EINVAL, "preshared_key must be 64 hex digits");
		peer->has_preshared_key = true;
	} else if (key_is(k, klen, "endpoint")) {
		struct sockaddr_storage ss;

		if (!wg_parse_endpoint(v, vlen, &ss))
			return line_error(ctx, -EINVAL, "endpoint must be IPv4:port or [IPv6]:port");
		memset(&peer->endpoint, 0, sizeof(peer->endpoint));
		if (ss.ss_family == AF_INET)
			memcpy(&peer->endpoint.in4, &ss, sizeof(peer->endpoint.in4));
		else
			memcpy(&peer->endpoint.in6, &ss, sizeof(peer->endpoint.in6));
		peer->has_endpoint = true;
	} else if (key_is(k, klen, "persistent_keepalive_interval")) {
		if (!parse_uint(v, vlen, UINT16_MAX, &n))
			return line_error(ctx, -EINVAL, "persistent_keepalive_interval must be 0..65535");
		peer->keepalive = (uint16_t)n;
		peer->has_keepalive = true;
	} else if (key_is(k, klen, "replace_allowed_ips")) {
		if (!parse_true(v, vlen))
			return line_error(ctx, -EINVAL, "replace_allowed_ips must be true");
		/* wireguard-go applies lines in order: a replace wipes whatever
		 * allowed_ip lines came before it in this entry too. */
		peer->replace_allowed_ips = true;
		peer->n_aips = 0;
	} else if (key_is(k, klen, "allowed_ip")) {
		return add_allowed_ip(ctx);
	} else if (key_is(k, klen, "protocol_version")) {
		if (vlen == 1 && v[0] == '1')
			return 0;
		if (parse_uint(v, vlen, UINT64_MAX, &n))
			return line_error(ctx, -EPROTO, "unsupported protocol_version (only 1 is supported)");
		return line_error(ctx, -EINVAL, "protocol_version must be a number");
	} else if (is_device_key(k, klen)) {
		return line_error(ctx, -EINVAL, "device key after public_key");
	} else {
		return line_error(ctx, -EINVAL, "unknown key");
	}
	return 0;
}

/* Splits line into ctx's key and value; nonzero (an error written) for an
 * embedded NUL or a missing '='. */
static int split_line(struct parse_ctx *ctx, const char *line, size_t len)
{
	const char *eq = memchr(line, '=', len);

	ctx->key = line;
	ctx->has_eq = eq != NULL;
	ctx->key_len = eq ? (size_t)(eq - line) : len;
	ctx->value = eq ? eq + 1 : line + len;
	ctx->value_len = eq ? len - ctx->key_len - 1 : 0;

	if (memchr(line, '\0', len))
		return line_error(ctx, -EINVAL, "embedded NUL byte");
	if (!eq)
		return line_error(ctx, -EINVAL, "missing '='");
	return 0;
}

static int parse_line(struct parse_ctx *ctx, const char *line, size_t len)
{
	int ret = split_line(ctx, line, len);

	if (ret)
		return ret;
	if (key_is(ctx->key, ctx->key_len, "public_key"))
		return add_peer(ctx);
	return ctx->peer ? parse_peer_line(ctx) : parse_device_line(ctx);
}

int wg_uapi_parse_set(const char *body, size_t len, struct wg_uapi_set *out, char *err, size_t errlen)
{
	struct parse_ctx ctx = { .set = out, .err = err, .errlen = errlen };
	size_t pos = 0;

	memset(out, 0, sizeof(*out));
	if (err && errlen)
		err[0] = '\0';
	if (len > WG_UAPI_MAX_MESSAGE) {
		set_error(err, errlen, "UAPI message too long (%zu bytes, at most %u)", len, WG_UAPI_MAX_MESSAGE);
		return -EMSGSIZE;
	}
	if (!body && len) {
		set_error(err, errlen, "no UAPI message");
		return -EINVAL;
	}

	while (pos < len) {
		const char *line = body + pos;
		const char *nl = memchr(line, '\n', len - pos);
		size_t line_len = nl ? (size_t)(nl - line) : len - pos;
		int ret;

		if (!line_len)
			break; /* empty line: end of message */
		pos += line_len + 1;
		ret = parse_line(&ctx, line, line_len);
		if (ret) {
			wg_uapi_set_free(out);
			return ret;
		}
	}
	return 0;
}

void wg_uapi_set_free(struct wg_uapi_set *s)
{
	size_t i;

	if (!s)
		return;
	for (i = 0; i < s->n_peers; ++i)
		free(s->peers[i].aips);
	if (s->peers) {
		sodium_memzero(s->peers, s->cap_peers * sizeof(*s->peers));
		free(s->peers);
	}
	sodium_memzero(s, sizeof(*s));
}

/* ------------------------------------------------------------------ */
/* The get=1 reply, parsed back                                        */
/* ------------------------------------------------------------------ */

static int get_add_peer(struct parse_ctx *ctx)
{
	struct wg_uapi_get *g = ctx->get;
	struct wg_uapi_get_peer *peers;
	uint8_t key[WG_KEY_LEN];

	if (!wg_hex_to_key(key, ctx->value, ctx->value_len))
		return line_error(ctx, -EINVAL, "public_key must be 64 hex digits");
	peers = grow_array(g->peers, &g->cap_peers, g->n_peers, sizeof(*peers), true);
	if (!peers) {
		sodium_memzero(key, sizeof(key));
		return line_error(ctx, -ENOMEM, "out of memory");
	}
	g->peers = peers;
	ctx->get_peer = &peers[g->n_peers++];
	memset(ctx->get_peer, 0, sizeof(*ctx->get_peer));
	memcpy(ctx->get_peer->public_key, key, WG_KEY_LEN);
	sodium_memzero(key, sizeof(key));
	return 0;
}

static int get_device_line(struct parse_ctx *ctx, bool *known)
{
	struct wg_uapi_get *g = ctx->get;
	const char *k = ctx->key, *v = ctx->value;
	size_t klen = ctx->key_len, vlen = ctx->value_len;
	uint64_t n;

	*known = true;
	if (key_is(k, klen, "private_key")) {
		if (!wg_hex_to_key(g->private_key, v, vlen))
			return line_error(ctx, -EINVAL, "private_key must be 64 hex digits");
		g->has_private_key = true;
	} else if (key_is(k, klen, "listen_port")) {
		if (!parse_uint(v, vlen, UINT16_MAX, &n))
			return line_error(ctx, -EINVAL, "listen_port must be 0..65535");
		g->listen_port = (uint16_t)n;
		g->has_listen_port = true;
	} else if (key_is(k, klen, "fwmark")) {
		if (!parse_uint(v, vlen, UINT32_MAX, &n))
			return line_error(ctx, -EINVAL, "fwmark must be 0..4294967295");
		g->fwmark = (uint32_t)n;
		g->has_fwmark = true;
	} else if (key_is(k, klen, "errno")) {
		if (vlen && v[0] == '-' ? !parse_uint(v + 1, vlen - 1, INT32_MAX, &n)
					: !parse_uint(v, vlen, INT32_MAX, &n))
			return line_error(ctx, -EINVAL, "errno must be a number");
		g->errno_value = vlen && v[0] == '-' ? -(int)n : (int)n;
		g->has_errno = true;
	} else {
		*known = false;
	}
	return 0;
}

static int get_peer_line(struct parse_ctx *ctx)
{
	struct wg_uapi_get_peer *peer = ctx->get_peer;
	const char *k = ctx->key, *v = ctx->value;
	size_t klen = ctx->key_len, vlen = ctx->value_len;
	uint64_t n;

	if (!peer) {
		if (is_peer_key(k, klen) || key_is(k, klen, "last_handshake_time_sec") ||
		    key_is(k, klen, "last_handshake_time_nsec") || key_is(k, klen, "rx_bytes") ||
		    key_is(k, klen, "tx_bytes"))
			return line_error(ctx, -EINVAL, "peer field before any public_key");
		return 0; /* an unknown key: ignored, as wg(8) does */
	}
	if (key_is(k, klen, "preshared_key")) {
		if (!wg_hex_to_key(peer->preshared_key, v, vlen))
			return line_error(ctx, -EINVAL, "preshared_key must be 64 hex digits");
		peer->has_preshared_key = true;
	} else if (key_is(k, klen, "endpoint")) {
		if (!wg_parse_endpoint(v, vlen, &peer->endpoint_addr) ||
		    !copy_cstr(peer->endpoint, sizeof(peer->endpoint), v, vlen))
			return line_error(ctx, -EINVAL, "endpoint must be IPv4:port or [IPv6]:port");
		peer->has_endpoint = true;
	} else if (key_is(k, klen, "last_handshake_time_sec")) {
		if (!parse_uint(v, vlen, INT64_MAX, &peer->last_handshake_sec))
			return line_error(ctx, -EINVAL, "last_handshake_time_sec must be a number");
	} else if (key_is(k, klen, "last_handshake_time_nsec")) {
		if (!parse_uint(v, vlen, 999999999, &peer->last_handshake_nsec))
			return line_error(ctx, -EINVAL, "last_handshake_time_nsec must be 0..999999999");
	} else if (key_is(k, klen, "rx_bytes")) {
		if (!parse_uint(v, vlen, UINT64_MAX, &peer->rx_bytes))
			return line_error(ctx, -EINVAL, "rx_bytes must be a number");
	} else if (key_is(k, klen, "tx_bytes")) {
		if (!parse_uint(v, vlen, UINT64_MAX, &peer->tx_bytes))
			return line_error(ctx, -EINVAL, "tx_bytes must be a number");
	} else if (key_is(k, klen, "persistent_keepalive_interval")) {
		if (!parse_uint(v, vlen, UINT16_MAX, &n))
			return line_error(ctx, -EINVAL, "persistent_keepalive_interval must be 0..65535");
		peer->persistent_keepalive = (uint16_t)n;
	} else if (key_is(k, klen, "allowed_ip")) {
		struct wg_uapi_aip aip = { 0 }, *aips;

		if (!memchr(v, '/', vlen) || !wg_parse_cidr(v, vlen, &aip.family, aip.addr, &aip.cidr))
			return line_error(ctx, -EINVAL, "allowed_ip must be address/prefix");
		aips = grow_array(peer->aips, &peer->cap_aips, peer->n_aips, sizeof(*aips), false);
		if (!aips)
			return line_error(ctx, -ENOMEM, "out of memory");
		peer->aips = aips;
		aips[peer->n_aips++] = aip;
	} else if (key_is(k, klen, "protocol_version")) {
		if (!parse_uint(v, vlen, UINT64_MAX, &n))
			return line_error(ctx, -EINVAL, "protocol_version must be a number");
	}
	/* any other key: ignored, as wg(8) does */
	return 0;
}

int wg_uapi_parse_get(const char *text, size_t len, struct wg_uapi_get *out, char *err, size_t errlen)
{
	struct parse_ctx ctx = { .get = out, .err = err, .errlen = errlen };
	size_t pos = 0;

	memset(out, 0, sizeof(*out));
	if (err && errlen)
		err[0] = '\0';
	if (len > WG_UAPI_MAX_MESSAGE) {
		set_error(err, errlen, "UAPI reply too long (%zu bytes, at most %u)", len, WG_UAPI_MAX_MESSAGE);
		return -EMSGSIZE;
	}
	if (!text && len) {
		set_error(err, errlen, "no UAPI reply");
		return -EINVAL;
	}
	while (pos < len) {
		const char *line = text + pos;
		const char *nl = memchr(line, '\n', len - pos);
		size_t line_len = nl ? (size_t)(nl - line) : len - pos;
		bool known;
		int ret;

		if (!line_len)
			break; /* empty line: end of reply */
		pos += line_len + 1;
		ret = split_line(&ctx, line, line_len);
		if (!ret && key_is(ctx.key, ctx.key_len, "public_key"))
			ret = get_add_peer(&ctx);
		else if (!ret && !(ret = get_device_line(&ctx, &known)) && !known)
			ret = get_peer_line(&ctx);
		if (ret) {
			wg_uapi_get_free(out);
			return ret;
		}
	}
	return 0;
}

void wg_uapi_get_free(struct wg_uapi_get *g)
{
	size_t i;

	if (!g)
		return;
	for (i = 0; i < g->n_peers; ++i)
		free(g->peers[i].aips);
	if (g->peers) {
		sodium_memzero(g->peers, g->cap_peers * sizeof(*g->peers));
		free(g->peers);
	}
	sodium_memzero(g, sizeof(*g));
}

/* ---- get: the reply text ---- */

static void __attribute__((format(printf, 2, 3))) put(struct wg_uapi_writer *w, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (w->oom)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(w->s ? w->s + w->len : NULL, w->s ? w->cap - w->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			w->oom = true;
			return;
		}
		if (w->s && w->len + (size_t)n < w->cap) {
			w->len += (size_t)n;
			return;
		}
		size_t ncap = w->cap ? w->cap * 2 : 4096;
		while (ncap < w->len + (size_t)n + 1)
			ncap *= 2;
		char *ns = malloc(ncap);
		if (!ns) {
			w->oom = true;
			return;
		}
		if (w->s) {
			memcpy(ns, w->s, w->len);
			/* The old buffer may hold a private key: wipe before free. */
			sodium_memzero(w->s, w->cap);
			free(w->s);
		}
		w->s = ns;
		w->cap = ncap;
	}
}

void wg_uapi_put_interface(struct wg_uapi_writer *w, const uint8_t *private_key, uint16_t listen_port, uint32_t fwmark)
{
	char hex[2 * WG_KEY_LEN + 1];

	if (private_key) {
		wg_key_to_hex(hex, private_key);
		put(w, "private_key=%s\n", hex);
		sodium_memzero(hex, sizeof(hex));
	}
	put(w, "listen_port=%u\n", listen_port);
	if (fwmark)
		put(w, "fwmark=%u\n", fwmark);
}

void wg_uapi_put_peer(struct wg_uapi_writer *w, const struct wg_uapi_peer_state *p)
{
	char hex[2 * WG_KEY_LEN + 1];
	char ep[128];

	wg_key_to_hex(hex, p->public_key);
	put(w, "public_key=%s\n", hex);
	wg_key_to_hex(hex, p->preshared_key);
	put(w, "preshared_key=%s\n", hex);
	sodium_memzero(hex, sizeof(hex));
	put(w, "protocol_version=1\n");
	if (p->endpoint && wg_format_endpoint(ep, sizeof(ep), p->endpoint))
		put(w, "endpoint=%s\n", ep);
	put(w, "last_handshake_time_sec=%llu\nlast_handshake_time_nsec=%llu\n",
	    (unsigned long long)(p->last_handshake_ns / 1000000000ull),
	    (unsigned long long)(p->last_handshake_ns % 1000000000ull));
	put(w, "tx_bytes=%llu\nrx_bytes=%llu\n", (unsigned long long)p->tx_bytes, (unsigned long long)p->rx_bytes);
	put(w, "persistent_keepalive_interval=%u\n", p->persistent_keepalive);
}

void wg_uapi_put_allowed_ip(struct wg_uapi_writer *w, int family, const uint8_t *addr, uint8_t cidr)
{
	char ip[INET6_ADDRSTRLEN];

	inet_ntop(family, addr, ip, sizeof(ip));
	put(w, "allowed_ip=%s/%u\n", ip, cidr);
}

int wg_uapi_writer_finish(struct wg_uapi_writer *w, char **out, size_t *outlen)
{
	if (w->oom) {
		if (w->s) {
			sodium_memzero(w->s, w->cap);
			free(w->s);
		}
		memset(w, 0, sizeof(*w));
		return -ENOMEM;
	}
	if (!w->s) {
		w->s = calloc(1, 1);
		if (!w->s)
			return -ENOMEM;
	}
	*out = w->s;
	*outlen = w->len;
	memset(w, 0, sizeof(*w));
	return 0;
}
