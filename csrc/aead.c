/* Transport-data AEAD: the backend chosen at load time (our AVX-512 code
 * where the CPU has it, libsodium otherwise or with WGO_AEAD=libsodium),
 * and the general entry points for tests.  See aead.h. */
#include <endian.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "aead.h"
#include "aead_avx512.h"

#ifdef WGO_BENCH_NOCRYPTO
/* The bench-only no-crypto build (see aead.h): the datapath's ceiling.
 * The plaintext goes out as it is (in place, so the "copy" costs nothing)
 * with an all-zero tag, and a packet is accepted if its tag is all zero.
 * No run-time switch leads here: only this compile-time define, which only
 * the Makefile's bench build (build-bench-nocrypto/) sets. */
const char *wg_aead_name(void)
{
	return "NONE (bench-only no-crypto build)";
}

void wg_aead_encrypt(uint8_t *buf, size_t len, uint8_t tag[16], uint64_t counter, const uint8_t key[32])
{
	memset(tag, 0, 16);
}

bool wg_aead_decrypt(uint8_t *buf, size_t len, const uint8_t tag[16], uint64_t counter, const uint8_t key[32])
{
	static const uint8_t zero[16];

	return memcmp(tag, zero, 16) == 0;
}
#else
/* The WireGuard nonce: 32 zero bits, the counter in little-endian */
static void wg_nonce(uint8_t n[12], uint64_t counter)
{
	uint64_t le = htole64(counter);

	memset(n, 0, 4);
	memcpy(n + 4, &le, 8);
}

/* Chosen once, before main() and before any thread exists; the AVX-512
 * code never runs unless the CPU check passed. */
static enum wg_aead_backend active = WG_AEAD_BACKEND_LIBSODIUM;

__attribute__((constructor)) static void aead_select(void)
{
	const char *want = getenv("WGO_AEAD");

	if (want && strcmp(want, "libsodium") == 0)
		return;
	if (want && *want && strcmp(want, "auto") != 0) {
		fprintf(stderr, "wgoverlay: WGO_AEAD=\"%.40s\" not understood (use auto or libsodium): using libsodium\n",
			want);
		return;
	}
	if (wg_aead_backend_usable(WG_AEAD_BACKEND_AVX512))
		active = WG_AEAD_BACKEND_AVX512;
}

const char *wg_aead_name(void)
{
	return wg_aead_backend_name(active);
}

void wg_aead_encrypt(uint8_t *buf, size_t len, uint8_t tag[16], uint64_t counter, const uint8_t key[32])
{
	uint8_t n[12];

	wg_nonce(n, counter);
#ifdef WG_HAVE_AEAD_AVX512
	if (active == WG_AEAD_BACKEND_AVX512) {
		wg_aead_avx512_seal(buf, tag, buf, len, NULL, 0, n, key);
		return;
	}
#endif
	crypto_aead_chacha20poly1305_ietf_encrypt_detached(buf, tag, NULL, buf, len, NULL, 0, NULL, n, key);
}

bool wg_aead_decrypt(uint8_t *buf, size_t len, const uint8_t tag[16], uint64_t counter, const uint8_t key[32])
{
	uint8_t n[12];

	wg_nonce(n, counter);
#ifdef WG_HAVE_AEAD_AVX512
	if (active == WG_AEAD_BACKEND_AVX512)
		return wg_aead_avx512_open(buf, buf, len, tag, NULL, 0, n, key);
#endif
	return crypto_aead_chacha20poly1305_ietf_decrypt_detached(buf, NULL, buf, len, tag, NULL, 0, n, key) == 0;
}
#endif

const char *wg_aead_backend_name(enum wg_aead_backend b)
{
	switch (b) {
	case WG_AEAD_BACKEND_LIBSODIUM:
		return "libsodium";
	case WG_AEAD_BACKEND_AVX512:
		return "avx512";
	default:
		return "unknown";
	}
}

bool wg_aead_backend_usable(enum wg_aead_backend b)
{
	switch (b) {
	case WG_AEAD_BACKEND_LIBSODIUM:
		return true;
#ifdef WG_HAVE_AEAD_AVX512
	case WG_AEAD_BACKEND_AVX512:
		return wg_aead_avx512_usable();
#endif
	default:
		return false;
	}
}

bool wg_aead_seal(enum wg_aead_backend b, uint8_t *dst, uint8_t tag[16], const uint8_t *src, size_t len,
		  const uint8_t *ad, size_t adlen, const uint8_t *nonce, size_t noncelen, const uint8_t key[32])
{
	if (noncelen != 12 || !wg_aead_backend_usable(b))
		return false;
#ifdef WG_HAVE_AEAD_AVX512
	if (b == WG_AEAD_BACKEND_AVX512) {
		wg_aead_avx512_seal(dst, tag, src, len, ad, adlen, nonce, key);
		return true;
	}
#endif
	crypto_aead_chacha20poly1305_ietf_encrypt_detached(dst, tag, NULL, src, len, ad, adlen, NULL, nonce, key);
	return true;
}

bool wg_aead_open(enum wg_aead_backend b, uint8_t *dst, const uint8_t *src, size_t len, const uint8_t tag[16],
		  const uint8_t *ad, size_t adlen, const uint8_t *nonce, size_t noncelen, const uint8_t key[32])
{
	bool ok = false;

	if (noncelen == 12 && wg_aead_backend_usable(b)) {
#ifdef WG_HAVE_AEAD_AVX512
		if (b == WG_AEAD_BACKEND_AVX512)
			ok = wg_aead_avx512_open(dst, src, len, tag, ad, adlen, nonce, key);
		else
#endif
			ok = crypto_aead_chacha20poly1305_ietf_decrypt_detached(dst, NULL, src, len, tag, ad, adlen,
										nonce, key) == 0;
	}
	if (!ok && len)
		memset(dst, 0, len);
	return ok;
}
