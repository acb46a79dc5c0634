/* The transport-data AEAD (ChaCha20-Poly1305, RFC 8439, 96-bit nonce of 32
 * zero bits and the 64-bit little-endian counter), in place.
 *
 * One seam for the datapath's crypto, so that a faster implementation can
 * be tried behind it.  (OpenSSL's EVP interface was measured here: its
 * per-packet set-up cancels the faster assembly on 1420-byte packets, about
 * 1.5-1.8 us per packet either way, so libsodium stays.)  The build
 * option AEAD=avx512 adds our own AVX-512 implementation (aead_avx512.c),
 * used when the CPU supports it; libsodium otherwise and by default. */
#ifndef WG_AEAD_H
#define WG_AEAD_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Encrypts len bytes at buf in place and writes the 16-byte tag at tag. */
void wg_aead_encrypt(uint8_t *buf, size_t len, uint8_t tag[16], uint64_t counter, const uint8_t key[32]);
/* Decrypts in place; false (and garbage in buf) if the tag is wrong. */
bool wg_aead_decrypt(uint8_t *buf, size_t len, const uint8_t tag[16], uint64_t counter, const uint8_t key[32]);
/* The implementation in use: "libsodium" or "avx512". */
const char *wg_aead_name(void);
#endif
