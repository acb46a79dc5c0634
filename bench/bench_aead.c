/* Transport-data AEAD speed on one core: libsodium's
 * crypto_aead_chacha20poly1305_ietf_*_detached called directly, and
 * wg_aead_encrypt/wg_aead_decrypt (the backend chosen at load time, named
 * in the output; WGO_AEAD=libsodium forces libsodium), in place on unaligned buffers, for 64,
 * 512, 1424 and 8192-byte packets.  Decryption is timed on a pool of valid
 * packets (about 256 KiB, refilled untimed between rounds).  Each figure is
 * the best of several rounds.  Optional argument: milliseconds per figure
 * (default 200). */
#include <endian.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "aead.h"

#define POOL_BYTES (256 * 1024)
#define ROUNDS 5

static const uint8_t key[32] = { 1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16,
				 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32 };

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void nonce(uint8_t n[12], uint64_t counter)
{
	uint64_t le = htole64(counter);

	memset(n, 0, 4);
	memcpy(n + 4, &le, 8);
}

static void enc_sodium(uint8_t *buf, size_t len, uint8_t *tag, uint64_t counter)
{
	uint8_t n[12];

	nonce(n, counter);
	crypto_aead_chacha20poly1305_ietf_encrypt_detached(buf, tag, NULL, buf, len, NULL, 0, NULL, n, key);
}

static bool dec_sodium(uint8_t *buf, size_t len, const uint8_t *tag, uint64_t counter)
{
	uint8_t n[12];

	nonce(n, counter);
	return crypto_aead_chacha20poly1305_ietf_decrypt_detached(buf, NULL, buf, len, tag, NULL, 0, n, key) == 0;
}

static void enc_wg(uint8_t *buf, size_t len, uint8_t *tag, uint64_t counter)
{
	wg_aead_encrypt(buf, len, tag, counter, key);
}

static bool dec_wg(uint8_t *buf, size_t len, const uint8_t *tag, uint64_t counter)
{
	return wg_aead_decrypt(buf, len, tag, counter, key);
}

struct impl {
	const char *name;
	void (*enc)(uint8_t *, size_t, uint8_t *, uint64_t);
	bool (*dec)(uint8_t *, size_t, const uint8_t *, uint64_t);
};

/* Packets of len bytes + 16-byte tag, each at an odd offset. */
struct pool {
	uint8_t *mem, *work;
	size_t stride, n;
};

static uint8_t *pkt(const struct pool *p, uint8_t *base, size_t i)
{
	return base + i * p->stride + 1;
}

/* Seconds per packet, best of ROUNDS rounds of about ms milliseconds. */
static double run(const struct impl *im, struct pool *p, size_t len, bool decrypt, int ms)
{
	double best = 1e9;
	size_t total = 0;
	int bad = 0;

	for (size_t i = 0; i < p->n; i++)
		im->enc(pkt(p, p->mem, i), len, pkt(p, p->mem, i) + len, i);
	for (int r = 0; r < ROUNDS; r++) {
		double t = 0, t0;
		size_t done = 0;

		do {
			memcpy(p->work, p->mem, p->n * p->stride);
			t0 = now();
			if (decrypt) {
				for (size_t i = 0; i < p->n; i++)
					bad += !im->dec(pkt(p, p->work, i), len, pkt(p, p->work, i) + len, i);
			} else {
				for (size_t i = 0; i < p->n; i++)
					im->enc(pkt(p, p->work, i), len, pkt(p, p->work, i) + len, i);
			}
			t += now() - t0;
			done += p->n;
		} while (t * 1000 * ROUNDS < ms);
		if (t / (double)done < best)
			best = t / (double)done;
		total += done;
	}
	if (bad)
		fprintf(stderr, "bench_aead: %s: %d of %zu decryptions failed\n", im->name, bad, total);
	return best;
}

int main(int argc, char **argv)
{
	static const size_t sizes[] = { 64, 512, 1424, 8192 };
	const struct impl impls[] = {
		{ "libsodium", enc_sodium, dec_sodium },
		{ wg_aead_name(), enc_wg, dec_wg },
	};
	int ms = argc > 1 ? atoi(argv[1]) : 200;

	if (sodium_init() < 0)
		return 1;
	printf("bench_aead: wg_aead_* uses %s\n", wg_aead_name());
	printf("%6s  %-16s %10s %8s %10s %8s\n", "bytes", "implementation", "enc us", "Gbit/s", "dec us", "Gbit/s");
	for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
		size_t len = sizes[s];
		struct pool p;

		p.stride = len + 16 + 1;
		p.n = POOL_BYTES / p.stride;
		p.mem = malloc(p.n * p.stride);
		p.work = malloc(p.n * p.stride);
		if (!p.mem || !p.work)
			return 1;
		memset(p.mem, 0xa5, p.n * p.stride);
		for (size_t k = 0; k < sizeof(impls) / sizeof(impls[0]); k++) {
			char label[32];
			double e = run(&impls[k], &p, len, false, ms);
			double d = run(&impls[k], &p, len, true, ms);

			snprintf(label, sizeof(label), "%s%s", k ? "wg_aead " : "", impls[k].name);
			printf("%6zu  %-16s %10.3f %8.2f %10.3f %8.2f\n", len, label, e * 1e6,
			       (double)len * 8 / e / 1e9, d * 1e6, (double)len * 8 / d / 1e9);
		}
		free(p.mem);
		free(p.work);
	}
	return 0;
}
