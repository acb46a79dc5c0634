/* ChaCha20-Poly1305 (RFC 8439) with AVX-512, compiled into every x86-64
 * build (function-level target attributes; see aead_avx512.c).  aead.c
 * calls these only after wg_aead_avx512_usable() said yes.  Other
 * architectures do not have them (WG_HAVE_AEAD_AVX512 undefined). */
#ifndef WG_AEAD_AVX512_H
#define WG_AEAD_AVX512_H
#if defined(__x86_64__)
#define WG_HAVE_AEAD_AVX512 1
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* True if this CPU has every instruction set the implementation uses. */
bool wg_aead_avx512_usable(void);
/* len bytes at src encrypted into dst (dst == src or no overlap), tag of
 * ad (adlen bytes) and the ciphertext. */
void wg_aead_avx512_seal(uint8_t *dst, uint8_t tag[16], const uint8_t *src, size_t len, const uint8_t *ad, size_t adlen,
			 const uint8_t nonce[12], const uint8_t key[32]);
/* Checks the tag first; only if it matches, decrypts src into dst (dst ==
 * src or no overlap).  On false, dst was not written. */
bool wg_aead_avx512_open(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t tag[16], const uint8_t *ad,
			 size_t adlen, const uint8_t nonce[12], const uint8_t key[32]);
#endif
#endif
