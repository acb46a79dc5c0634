/* The transport-data AEAD against libsodium's
 * crypto_aead_chacha20poly1305_ietf_*_detached: the datapath's
 * wg_aead_encrypt/decrypt (the backend chosen at load time, which must be
 * avx512 where the CPU has it and libsodium with WGO_AEAD=libsodium or
 * without AVX-512), and the general wg_aead_seal/open of every backend
 * this CPU can run, with the WireGuard nonce, in place, and with random
 * associated data of 0..80 bytes between buffers.  Every length
 * 0..2100, the lengths around the decryption keystream buffer (4096), a few
 * hundred random lengths up to 65535; random keys, message counters at the
 * 2^32 and 2^64 boundaries; unaligned buffers ending at the end of their
 * allocation (so ASan sees any overrun); round trips; and any flipped bit
 * of the ciphertext or the tag, a wrong counter or a wrong key must fail
 * decryption.  Optional argument: the PRNG seed. */
#include <endian.h>
#include <inttypes.h>

#include <sodium.h>

#include "aead.h"
#include "testlib.h"

static uint64_t rng_state;

static uint64_t rnd(void)
{
	/* splitmix64 */
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void rnd_bytes(uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)rnd();
}

static uint64_t pick_counter(void)
{
	static const uint64_t edges[] = {
		0,
		1,
		2,
		0xfffffffeULL,
		0xffffffffULL,
		0x100000000ULL,
		0x100000001ULL,
		0x7fffffffffffffffULL,
		0x8000000000000000ULL,
		UINT64_MAX - 1,
		UINT64_MAX,
	};
	uint64_t r = rnd();

	if (r % 3 == 0)
		return edges[(r >> 8) % (sizeof(edges) / sizeof(edges[0]))];
	return rnd();
}

/* libsodium's answer: ct and tag for pt under key and the WireGuard nonce */
static void reference(uint8_t *ct, uint8_t tag[16], const uint8_t *pt, size_t len, uint64_t counter,
		      const uint8_t key[32])
{
	uint8_t n[12] = { 0 };
	uint64_t le = htole64(counter);

	memcpy(n + 4, &le, 8);
	crypto_aead_chacha20poly1305_ietf_encrypt_detached(ct, tag, NULL, pt, len, NULL, 0, NULL, n, key);
}

static int failures_reported;

/* One length: encrypt, compare, decrypt, and some forgeries (all single bit
 * flips of the ciphertext and tag when all_flips). */
static void one(size_t len, bool all_flips)
{
	size_t off = rnd() % 64;
	uint8_t *mem = calloc(1, off + len ? off + len : 1), *buf = mem + off;
	uint8_t *pt = calloc(1, len + 1), *ct = calloc(1, len + 1);
	uint8_t key[32], tag[16], rtag[16], badkey[32], t2[16], rtag2[16];
	uint64_t counter = pick_counter();
	int before = tl_fail;
	bool all_ok = true;

	if (!mem || !pt || !ct)
		abort();
	rnd_bytes(key, sizeof(key));
	rnd_bytes(pt, len);
	reference(ct, rtag, pt, len, counter, key);

	memcpy(buf, pt, len);
	wg_aead_encrypt(buf, len, tag, counter, key);
	CHECK_MEM(buf, ct, len);
	CHECK_MEM(tag, rtag, 16);

	CHECK(wg_aead_decrypt(buf, len, tag, counter, key));
	CHECK_MEM(buf, pt, len);

	/* forgeries: restore the ciphertext before each try */
	if (all_flips) {
		for (size_t bit = 0; bit < 8 * (len + 16); bit++) {
			uint8_t t[16];

			memcpy(buf, ct, len);
			memcpy(t, tag, 16);
			if (bit < 8 * len)
				buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
			else
				t[(bit - 8 * len) / 8] ^= (uint8_t)(1u << (bit % 8));
			all_ok &= !wg_aead_decrypt(buf, len, t, counter, key);
		}
		CHECK(all_ok);
	} else {
		uint8_t t[16];

		if (len) {
			size_t bit = rnd() % (8 * len);

			memcpy(buf, ct, len);
			buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
			CHECK(!wg_aead_decrypt(buf, len, tag, counter, key));
		}
		memcpy(buf, ct, len);
		memcpy(t, tag, 16);
		t[rnd() % 16] ^= (uint8_t)(1u << (rnd() % 8));
		CHECK(!wg_aead_decrypt(buf, len, t, counter, key));
		/* no plaintext comes out of a failed decryption */
		if (len >= 16)
			CHECK(memcmp(buf, pt, len) != 0);
	}
	memcpy(buf, ct, len);
	CHECK(!wg_aead_decrypt(buf, len, tag, counter + 1, key));
	memcpy(badkey, key, 32);
	badkey[rnd() % 32] ^= 0x80;
	memcpy(buf, ct, len);
	CHECK(!wg_aead_decrypt(buf, len, tag, counter, badkey));

	/* every backend through the general entry points */
	for (int b = 0; b < WG_AEAD_BACKEND_COUNT; b++) {
		uint8_t n[12] = { 0 }, ad[80], *rct, *out;
		uint64_t le = htole64(counter);
		size_t adlen = rnd() % (sizeof(ad) + 1);

		if (!wg_aead_backend_usable((enum wg_aead_backend)b))
			continue;
		rct = calloc(1, len + 1);
		out = calloc(1, len + 1);
		if (!rct || !out)
			abort();
		memcpy(n + 4, &le, 8);
		memcpy(buf, pt, len);
		CHECK(wg_aead_seal((enum wg_aead_backend)b, buf, t2, buf, len, NULL, 0, n, 12, key));
		CHECK_MEM(buf, ct, len);
		CHECK_MEM(t2, rtag, 16);
		CHECK(wg_aead_open((enum wg_aead_backend)b, buf, buf, len, t2, NULL, 0, n, 12, key));
		CHECK_MEM(buf, pt, len);

		rnd_bytes(ad, adlen);
		rnd_bytes(n, 12);
		crypto_aead_chacha20poly1305_ietf_encrypt_detached(rct, rtag2, NULL, pt, len, ad, adlen, NULL, n, key);
		CHECK(wg_aead_seal((enum wg_aead_backend)b, out, t2, pt, len, ad, adlen, n, 12, key));
		CHECK_MEM(out, rct, len);
		CHECK_MEM(t2, rtag2, 16);
		CHECK(wg_aead_open((enum wg_aead_backend)b, out, rct, len, rtag2, ad, adlen, n, 12, key));
		CHECK_MEM(out, pt, len);
		if (adlen) {
			ad[rnd() % adlen] ^= 1;
			CHECK(!wg_aead_open((enum wg_aead_backend)b, out, rct, len, rtag2, ad, adlen, n, 12, key));
			for (size_t i = 0; i < len; i++)
				if (out[i]) {
					CHECK(!"plaintext after a failed open");
					break;
				}
		}
		free(rct);
		free(out);
	}

	if (tl_fail != before && failures_reported++ < 10)
		fprintf(stderr, "  ^ length %zu, offset %zu, counter %" PRIu64 "\n", len, off, counter);
	free(mem);
	free(pt);
	free(ct);
}

int main(int argc, char **argv)
{
	uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : 0x5eed;

	if (sodium_init() < 0)
		return 1;
	rng_state = seed;
	printf("test_aead: implementation %s, seed %#" PRIx64 "\n", wg_aead_name(), seed);
	{
		/* the backend chosen at load time: libsodium when forced by
		 * WGO_AEAD=libsodium (or any value but auto, which is refused),
		 * else the fastest this CPU can run */
		const char *env = getenv("WGO_AEAD");
		bool forced = env && *env && strcmp(env, "auto") != 0;
		const char *want = !forced && wg_aead_backend_usable(WG_AEAD_BACKEND_AVX512) ? "avx512" : "libsodium";

		CHECK(strcmp(wg_aead_name(), want) == 0);
		if (!wg_aead_backend_usable(WG_AEAD_BACKEND_AVX512))
			printf("test_aead: note: no AVX-512 (with IFMA) here: only libsodium tested\n");
	}

	for (size_t len = 0; len <= 2100; len++)
		one(len, len <= 80 || len == 447 || len == 448 || len == 449 || len == 1023 || len == 1024 ||
				 len == 1025 || len == 1424);
	for (size_t len = 4096 - 130; len <= 4096 + 130; len++)
		one(len, false);
	one(8192, false);
	one(65535, false);
	for (int i = 0; i < 300; i++)
		one(rnd() % 65536, false);
	return tl_finish("test_aead");
}
