/* ChaCha20-Poly1305 for the transport data with AVX-512 (build option
 * AEAD=avx512, which defines WG_AEAD_AVX512).  Same contract as
 * wg_aead_encrypt/wg_aead_decrypt in aead.h; aead.c calls these only after
 * it has checked wg_aead_avx512_usable() once. */
#ifndef WG_AEAD_AVX512_H
#define WG_AEAD_AVX512_H
#ifdef WG_AEAD_AVX512
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* True if this CPU has every instruction set the implementation uses. */
bool wg_aead_avx512_usable(void);
void wg_aead_avx512_encrypt(uint8_t *buf, size_t len, uint8_t tag[16], uint64_t counter, const uint8_t key[32]);
bool wg_aead_avx512_decrypt(uint8_t *buf, size_t len, const uint8_t tag[16], uint64_t counter, const uint8_t key[32]);
#endif
#endif
