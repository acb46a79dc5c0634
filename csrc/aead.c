/* Transport-data AEAD: libsodium's ChaCha20-Poly1305, or with the build
 * option AEAD=avx512 (WG_AEAD_AVX512) our AVX-512 implementation in
 * aead_avx512.c when the CPU has it.  See aead.h. */
#include <endian.h>
#include <string.h>

#include <sodium.h>

#include "aead.h"

#ifdef WG_AEAD_AVX512
#include "aead_avx512.h"

/* Chosen once, before main() and before any thread exists; the AVX-512
 * code never runs unless the CPU check passed. */
static bool use_avx512;

__attribute__((constructor)) static void aead_select(void)
{
	use_avx512 = wg_aead_avx512_usable();
}
#endif

const char *wg_aead_name(void)
{
#ifdef WG_AEAD_AVX512
	if (use_avx512)
		return "avx512";
#endif
	return "libsodium";
}

static void make_nonce(uint8_t n[12], uint64_t counter)
{
	uint64_t le = htole64(counter);

	memset(n, 0, 4);
	memcpy(n + 4, &le, 8);
}

void wg_aead_encrypt(uint8_t *buf, size_t len, uint8_t tag[16], uint64_t counter, const uint8_t key[32])
{
	uint8_t n[12];

#ifdef WG_AEAD_AVX512
	if (use_avx512) {
		wg_aead_avx512_encrypt(buf, len, tag, counter, key);
		return;
	}
#endif
	make_nonce(n, counter);
	crypto_aead_chacha20poly1305_ietf_encrypt_detached(buf, tag, NULL, buf, len, NULL, 0, NULL, n, key);
}

bool wg_aead_decrypt(uint8_t *buf, size_t len, const uint8_t tag[16], uint64_t counter, const uint8_t key[32])
{
	uint8_t n[12];

#ifdef WG_AEAD_AVX512
	if (use_avx512)
		return wg_aead_avx512_decrypt(buf, len, tag, counter, key);
#endif
	make_nonce(n, counter);
	return crypto_aead_chacha20poly1305_ietf_decrypt_detached(buf, NULL, buf, len, tag, NULL, 0, n, key) == 0;
}
