// SPDX-License-Identifier: MIT
/*
 * BLAKE2s (RFC 7693), HMAC-BLAKE2s and the Noise KDF used by WireGuard.
 *
 * libsodium ships BLAKE2b only, and WireGuard's handshake is defined over
 * BLAKE2s, so we carry our own.  The code follows the RFC directly:
 * a 64-byte block compression function with ten rounds of eight G mixes,
 * a 64-bit byte counter t and a final-block flag f[0].  f[1] (last node)
 * is only used in tree hashing and stays zero here.
 *
 * Every function that handles key material wipes its temporaries with
 * sodium_memzero(), which the compiler may not elide, because the KDF's
 * intermediates are chaining keys and session keys.
 */
#include "blake2s.h"

#include <stdlib.h>
#include <string.h>
#include <sodium.h>

static const uint32_t blake2s_iv[8] = {
	0x6A09E667UL, 0xBB67AE85UL, 0x3C6EF372UL, 0xA54FF53AUL, 0x510E527FUL, 0x9B05688CUL, 0x1F83D9ABUL, 0x5BE0CD19UL,
};

/*
 * Message word schedule for the ten rounds (RFC 7693 section 2.7).  Used
 * only with constant indices from the ROUND() macro below, so the compiler
 * resolves every lookup at build time and no table is touched at run time.
 */
static const uint8_t blake2s_sigma[10][16] = {
	{ 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 },
	{ 14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3 },
	{ 11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4 },
	{ 7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8 },
	{ 9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13 },
	{ 2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9 },
	{ 12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11 },
	{ 13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10 },
	{ 6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5 },
	{ 10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0 },
};

static inline uint32_t ror32(uint32_t w, unsigned int c)
{
	return (w >> c) | (w << (32 - c));
}

/* BLAKE2s is little-endian on the wire; these compile to plain moves on x86. */
static inline uint32_t load_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline void store_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

/* Programming errors (bad lengths) would otherwise overrun caller buffers. */
static void blake2s_bug(void)
{
	abort();
}

static inline void blake2s_increment_counter(struct wg_blake2s_state *s, uint32_t inc)
{
	s->t[0] += inc;
	s->t[1] += (s->t[0] < inc); /* carry into the high word */
}

/*
 * Compress nblocks consecutive 64-byte blocks, bumping the counter by inc
 * before each one.  inc is 64 for every block except the final one, whose
 * counter must reflect only the bytes actually present (RFC 7693 3.3).
 */
static void blake2s_compress(struct wg_blake2s_state *s, const uint8_t *block, size_t nblocks, uint32_t inc)
{
	uint32_t m[16], v[16];
	int i;

	while (nblocks--) {
		blake2s_increment_counter(s, inc);
		for (i = 0; i < 16; i++)
			m[i] = load_le32(block + 4 * i);
		for (i = 0; i < 8; i++)
			v[i] = s->h[i];
		v[8] = blake2s_iv[0];
		v[9] = blake2s_iv[1];
		v[10] = blake2s_iv[2];
		v[11] = blake2s_iv[3];
		v[12] = blake2s_iv[4] ^ s->t[0];
		v[13] = blake2s_iv[5] ^ s->t[1];
		v[14] = blake2s_iv[6] ^ s->f[0];
		v[15] = blake2s_iv[7] ^ s->f[1];

#define G(r, i, a, b, c, d)                                \
	do {                                               \
		a += b + m[blake2s_sigma[r][2 * (i)]];     \
		d = ror32(d ^ a, 16);                      \
		c += d;                                    \
		b = ror32(b ^ c, 12);                      \
		a += b + m[blake2s_sigma[r][2 * (i) + 1]]; \
		d = ror32(d ^ a, 8);                       \
		c += d;                                    \
		b = ror32(b ^ c, 7);                       \
	} while (0)

/* One round: four column mixes, then four diagonal mixes. */
#define ROUND(r)                                   \
	do {                                       \
		G(r, 0, v[0], v[4], v[8], v[12]);  \
		G(r, 1, v[1], v[5], v[9], v[13]);  \
		G(r, 2, v[2], v[6], v[10], v[14]); \
		G(r, 3, v[3], v[7], v[11], v[15]); \
		G(r, 4, v[0], v[5], v[10], v[15]); \
		G(r, 5, v[1], v[6], v[11], v[12]); \
		G(r, 6, v[2], v[7], v[8], v[13]);  \
		G(r, 7, v[3], v[4], v[9], v[14]);  \
	} while (0)

		ROUND(0);
		ROUND(1);
		ROUND(2);
		ROUND(3);
		ROUND(4);
		ROUND(5);
		ROUND(6);
		ROUND(7);
		ROUND(8);
		ROUND(9);

#undef ROUND
#undef G

		for (i = 0; i < 8; i++)
			s->h[i] ^= v[i] ^ v[i + 8];
		block += WG_BLAKE2S_BLOCK_SIZE;
	}

	/* m and v hold message (possibly key) material and chaining state. */
	sodium_memzero(m, sizeof(m));
	sodium_memzero(v, sizeof(v));
}

void wg_blake2s_init_key(struct wg_blake2s_state *s, size_t outlen, const uint8_t *key, size_t keylen)
{
	if (!outlen || outlen > WG_BLAKE2S_HASH_SIZE || keylen > WG_BLAKE2S_KEY_SIZE || (keylen && !key))
		blake2s_bug();

	memset(s, 0, sizeof(*s));
	memcpy(s->h, blake2s_iv, sizeof(s->h));
	/* Parameter block word 0: digest length, key length, fanout 1, depth 1. */
	s->h[0] ^= 0x01010000UL ^ ((uint32_t)keylen << 8) ^ (uint32_t)outlen;
	s->outlen = outlen;

	/*
	 * A key is processed as a full zero-padded first block.  Leave it
	 * buffered rather than compressing it now: if no data follows, it is
	 * itself the final block and must be compressed with f[0] set.
	 */
	if (keylen) {
		memcpy(s->buf, key, keylen);
		s->buflen = WG_BLAKE2S_BLOCK_SIZE;
	}
}

void wg_blake2s_init(struct wg_blake2s_state *s, size_t outlen)
{
	wg_blake2s_init_key(s, outlen, NULL, 0);
}

void wg_blake2s_update(struct wg_blake2s_state *s, const uint8_t *in, size_t inlen)
{
	size_t fill = WG_BLAKE2S_BLOCK_SIZE - s->buflen;

	if (!inlen)
		return;

	/*
	 * We may only compress a block once we know more data follows it,
	 * because the last block gets the final flag.  Hence the strict '>'
	 * comparisons: a trailing full block stays in the buffer.  An empty
	 * buffer is skipped so that bulk data is never copied.
	 */
	if (s->buflen && inlen > fill) {
		memcpy(s->buf + s->buflen, in, fill);
		blake2s_compress(s, s->buf, 1, WG_BLAKE2S_BLOCK_SIZE);
		s->buflen = 0;
		in += fill;
		inlen -= fill;
	}
	if (inlen > WG_BLAKE2S_BLOCK_SIZE) {
		/* Bulk path: compress straight from the caller's buffer. */
		size_t nblocks = (inlen - 1) / WG_BLAKE2S_BLOCK_SIZE;

		blake2s_compress(s, in, nblocks, WG_BLAKE2S_BLOCK_SIZE);
		in += nblocks * WG_BLAKE2S_BLOCK_SIZE;
		inlen -= nblocks * WG_BLAKE2S_BLOCK_SIZE;
	}
	memcpy(s->buf + s->buflen, in, inlen);
	s->buflen += inlen;
}

void wg_blake2s_final(struct wg_blake2s_state *s, uint8_t *out)
{
	uint8_t full[WG_BLAKE2S_HASH_SIZE];
	int i;

	memset(s->buf + s->buflen, 0, WG_BLAKE2S_BLOCK_SIZE - s->buflen);
	s->f[0] = 0xFFFFFFFFUL;
	blake2s_compress(s, s->buf, 1, (uint32_t)s->buflen);

	for (i = 0; i < 8; i++)
		store_le32(full + 4 * i, s->h[i]);
	memcpy(out, full, s->outlen);

	sodium_memzero(full, sizeof(full));
	sodium_memzero(s, sizeof(*s));
}

void wg_blake2s(uint8_t *out, size_t outlen, const uint8_t *in, size_t inlen, const uint8_t *key, size_t keylen)
{
	struct wg_blake2s_state s;

	wg_blake2s_init_key(&s, outlen, key, keylen);
	wg_blake2s_update(&s, in, inlen);
	wg_blake2s_final(&s, out); /* also wipes s */
}

/*
 * RFC 2104 HMAC with B = 64, L = 32.  This is what WireGuard's handshake
 * uses (not BLAKE2s's native keyed mode), so it must match Python's
 * hmac.new(key, msg, hashlib.blake2s) bit for bit.
 */
void wg_blake2s_hmac(uint8_t out[WG_BLAKE2S_HASH_SIZE], const uint8_t *in, size_t inlen, const uint8_t *key,
		     size_t keylen)
{
	struct wg_blake2s_state s;
	uint8_t x_key[WG_BLAKE2S_BLOCK_SIZE];
	uint8_t i_hash[WG_BLAKE2S_HASH_SIZE];
	int i;

	memset(x_key, 0, sizeof(x_key));
	if (keylen > WG_BLAKE2S_BLOCK_SIZE)
		wg_blake2s(x_key, WG_BLAKE2S_HASH_SIZE, key, keylen, NULL, 0);
	else if (keylen)
		memcpy(x_key, key, keylen);

	for (i = 0; i < WG_BLAKE2S_BLOCK_SIZE; i++)
		x_key[i] ^= 0x36;
	wg_blake2s_init(&s, WG_BLAKE2S_HASH_SIZE);
	wg_blake2s_update(&s, x_key, WG_BLAKE2S_BLOCK_SIZE);
	wg_blake2s_update(&s, in, inlen);
	wg_blake2s_final(&s, i_hash);

	/* Turn the ipad key into the opad key: 0x36 ^ 0x5c == 0x6a. */
	for (i = 0; i < WG_BLAKE2S_BLOCK_SIZE; i++)
		x_key[i] ^= 0x36 ^ 0x5c;
	wg_blake2s_init(&s, WG_BLAKE2S_HASH_SIZE);
	wg_blake2s_update(&s, x_key, WG_BLAKE2S_BLOCK_SIZE);
	wg_blake2s_update(&s, i_hash, WG_BLAKE2S_HASH_SIZE);
	/* Finalise into i_hash first: out may alias in or key. */
	wg_blake2s_final(&s, i_hash);
	memcpy(out, i_hash, WG_BLAKE2S_HASH_SIZE);

	sodium_memzero(x_key, sizeof(x_key));
	sodium_memzero(i_hash, sizeof(i_hash));
}

/*
 * Noise's HKDF over HMAC-BLAKE2s.  Every output is computed into a local
 * before anything is written back, because callers routinely pass the
 * chaining key itself (or the input) as out1, e.g.
 * wg_kdf(ck, key, NULL, dh, 32, ck).
 */
void wg_kdf(uint8_t *out1, uint8_t *out2, uint8_t *out3, const uint8_t *input, size_t inlen,
	    const uint8_t chaining_key[WG_BLAKE2S_HASH_SIZE])
{
	uint8_t secret[WG_BLAKE2S_HASH_SIZE];
	uint8_t o1[WG_BLAKE2S_HASH_SIZE], o2[WG_BLAKE2S_HASH_SIZE], o3[WG_BLAKE2S_HASH_SIZE];
	uint8_t buf[WG_BLAKE2S_HASH_SIZE + 1];

	if (!out1)
		return;

	/* Extract: tau0 = HMAC(ck, input). */
	wg_blake2s_hmac(secret, input, inlen, chaining_key, WG_BLAKE2S_HASH_SIZE);

	/* Expand: out1 = HMAC(tau0, 0x1). */
	buf[0] = 1;
	wg_blake2s_hmac(o1, buf, 1, secret, WG_BLAKE2S_HASH_SIZE);

	if (out2) {
		/* out2 = HMAC(tau0, out1 || 0x2). */
		memcpy(buf, o1, WG_BLAKE2S_HASH_SIZE);
		buf[WG_BLAKE2S_HASH_SIZE] = 2;
		wg_blake2s_hmac(o2, buf, sizeof(buf), secret, WG_BLAKE2S_HASH_SIZE);

		if (out3) {
			/* out3 = HMAC(tau0, out2 || 0x3). */
			memcpy(buf, o2, WG_BLAKE2S_HASH_SIZE);
			buf[WG_BLAKE2S_HASH_SIZE] = 3;
			wg_blake2s_hmac(o3, buf, sizeof(buf), secret, WG_BLAKE2S_HASH_SIZE);
		}
	}

	/* Only now is it safe to overwrite outputs that alias the inputs. */
	memcpy(out1, o1, WG_BLAKE2S_HASH_SIZE);
	if (out2) {
		memcpy(out2, o2, WG_BLAKE2S_HASH_SIZE);
		if (out3)
			memcpy(out3, o3, WG_BLAKE2S_HASH_SIZE);
	}

	sodium_memzero(secret, sizeof(secret));
	sodium_memzero(o1, sizeof(o1));
	sodium_memzero(o2, sizeof(o2));
	sodium_memzero(o3, sizeof(o3));
	sodium_memzero(buf, sizeof(buf));
}
