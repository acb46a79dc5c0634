/* Transport-data AEAD: libsodium's ChaCha20-Poly1305.  See aead.h. */
#include <endian.h>
#include <string.h>

#include <sodium.h>

#include "aead.h"

static void make_nonce(uint8_t n[12], uint64_t counter)
{
	uint64_t le = htole64(counter);

	memset(n, 0, 4);
	memcpy(n + 4, &le, 8);
}

void wg_aead_encrypt(uint8_t *buf, size_t len, uint8_t tag[16], uint64_t counter, const uint8_t key[32])
{
	uint8_t n[12];

	make_nonce(n, counter);
	crypto_aead_chacha20poly1305_ietf_encrypt_detached(buf, tag, NULL, buf, len, NULL, 0, NULL, n, key);
}

bool wg_aead_decrypt(uint8_t *buf, size_t len, const uint8_t tag[16], uint64_t counter, const uint8_t key[32])
{
	uint8_t n[12];

	make_nonce(n, counter);
	return crypto_aead_chacha20poly1305_ietf_decrypt_detached(buf, NULL, buf, len, tag, NULL, 0, n, key) == 0;
}
