/* ChaCha20-Poly1305 (RFC 8439) for the transport data, and its backends.
 *
 * The datapath calls wg_aead_encrypt/wg_aead_decrypt: in place, no
 * associated data, the WireGuard nonce (32 zero bits and the 64-bit
 * little-endian message counter).  They run one of two backends, chosen
 * once when the library is loaded (before main() and before any thread):
 *
 *   "avx512"     our implementation (aead_avx512.c), built into every
 *                x86-64 build with function-level target attributes (the
 *                rest of the code stays baseline x86-64) and chosen when
 *                the CPU has AVX-512F/VL/BW, AVX-512 IFMA and BMI2;
 *   "libsodium"  crypto_aead_chacha20poly1305_ietf_*: on every other CPU,
 *                on non-x86 builds, and whenever the environment has
 *                WGO_AEAD=libsodium (tests run both paths with it; also
 *                for anyone who wants only library crypto).
 *
 * WGO_AEAD unset, empty or "auto" picks the fastest usable backend; any
 * other value is refused with a message on stderr and gives libsodium.
 * wg_aead_name() says which runs.  (OpenSSL's EVP interface was measured
 * too: its per-packet set-up cancels the faster assembly on 1420-byte
 * packets, so it is not a backend.)
 *
 * A build with -DWGO_BENCH_NOCRYPTO (only `make bench` makes one, in
 * build-bench-nocrypto/) replaces the transport AEAD by nothing at all, to
 * measure the datapath's ceiling; it is a compile-time build of its own,
 * never a run-time choice, and names itself "NONE (bench-only no-crypto
 * build)". */
#ifndef WG_AEAD_H
#define WG_AEAD_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Encrypts len bytes at buf in place and writes the 16-byte tag at tag. */
void wg_aead_encrypt(uint8_t *buf, size_t len, uint8_t tag[16], uint64_t counter, const uint8_t key[32]);
/* Decrypts in place; false (and garbage in buf, never plaintext of a
 * forgery) if the tag is wrong. */
bool wg_aead_decrypt(uint8_t *buf, size_t len, const uint8_t tag[16], uint64_t counter, const uint8_t key[32]);
/* The backend in use: "avx512" or "libsodium". */
const char *wg_aead_name(void);

/* ---- Backends, for tests and benches (the datapath uses the above) ---- */

enum wg_aead_backend { WG_AEAD_BACKEND_LIBSODIUM, WG_AEAD_BACKEND_AVX512, WG_AEAD_BACKEND_COUNT };

const char *wg_aead_backend_name(enum wg_aead_backend b);
/* True if this build has the backend and this CPU can run it. */
bool wg_aead_backend_usable(enum wg_aead_backend b);

/* The general AEAD of RFC 8439 with backend b: ciphertext of len bytes
 * at src into dst (dst == src, in place, or not overlapping at all) and
 * the tag, under any 12-byte nonce and associated data ad (adlen bytes).
 * False, and nothing written, if the backend is not usable here or the
 * nonce is not 12 bytes (noncelen is checked, not assumed: Wycheproof
 * has vectors for other sizes that must be refused). */
bool wg_aead_seal(enum wg_aead_backend b, uint8_t *dst, uint8_t tag[16], const uint8_t *src, size_t len,
		  const uint8_t *ad, size_t adlen, const uint8_t *nonce, size_t noncelen, const uint8_t key[32]);
/* Authenticates, then decrypts len bytes at src into dst.  On any
 * failure (wrong tag, key, nonce or ad, nonce not 12 bytes, backend not
 * usable) returns false and dst holds len zero bytes: no plaintext. */
bool wg_aead_open(enum wg_aead_backend b, uint8_t *dst, const uint8_t *src, size_t len, const uint8_t tag[16],
		  const uint8_t *ad, size_t adlen, const uint8_t *nonce, size_t noncelen, const uint8_t key[32]);
#endif
