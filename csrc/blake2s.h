/* BLAKE2s (RFC 7693), HMAC-BLAKE2s and the Noise KDF built on it.
 * libsodium has no BLAKE2s, so this is our own implementation. */
#ifndef WG_BLAKE2S_H
#define WG_BLAKE2S_H
#include <stddef.h>
#include <stdint.h>

#define WG_BLAKE2S_HASH_SIZE 32
#define WG_BLAKE2S_BLOCK_SIZE 64
#define WG_BLAKE2S_KEY_SIZE 32

struct wg_blake2s_state {
	uint32_t h[8];
	uint32_t t[2];
	uint32_t f[2];
	uint8_t buf[WG_BLAKE2S_BLOCK_SIZE];
	size_t buflen;
	size_t outlen;
};

/* outlen 1..32; keylen 0..32 (key may be NULL when keylen is 0). */
void wg_blake2s_init(struct wg_blake2s_state *s, size_t outlen);
void wg_blake2s_init_key(struct wg_blake2s_state *s, size_t outlen, const uint8_t *key, size_t keylen);
void wg_blake2s_update(struct wg_blake2s_state *s, const uint8_t *in, size_t inlen);
/* Writes s->outlen bytes and wipes the state. */
void wg_blake2s_final(struct wg_blake2s_state *s, uint8_t *out);
/* One-shot keyed or unkeyed hash. */
void wg_blake2s(uint8_t *out, size_t outlen, const uint8_t *in, size_t inlen, const uint8_t *key, size_t keylen);

/* HMAC (RFC 2104) over BLAKE2s-256; keylen up to 64 (longer keys hashed). */
void wg_blake2s_hmac(uint8_t out[WG_BLAKE2S_HASH_SIZE], const uint8_t *in, size_t inlen, const uint8_t *key,
		     size_t keylen);

/* Noise KDF: tau0 = HMAC(ck, input); out1 = HMAC(tau0, 0x1);
 * out2 = HMAC(tau0, out1 || 0x2); out3 = HMAC(tau0, out2 || 0x3).
 * Any of out1..out3 may be NULL (stops there). All intermediates wiped. */
void wg_kdf(uint8_t *out1, uint8_t *out2, uint8_t *out3, const uint8_t *input, size_t inlen,
	    const uint8_t chaining_key[WG_BLAKE2S_HASH_SIZE]);
#endif
