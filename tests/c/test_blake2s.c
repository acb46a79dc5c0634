// SPDX-License-Identifier: MIT
/*
 * BLAKE2s / HMAC-BLAKE2s / Noise KDF known-answer tests.
 *
 * Hash vectors come from RFC 7693 (Appendix B and the Appendix E grand-hash
 * self-test) and the reference BLAKE2 keyed KAT.  The HMAC and KDF answers
 * were computed independently with Python's hmac + hashlib.blake2s, e.g.
 *   python3 -c 'import hmac,hashlib; print(hmac.new(key,msg,hashlib.blake2s).hexdigest())'
 */
#include <stdint.h>
#include "blake2s.h"
#include "testlib.h"

static void hash_hex(uint8_t *out, size_t outlen, const void *in, size_t inlen)
{
	wg_blake2s(out, outlen, in, inlen, NULL, 0);
}

static void test_basic_vectors(void)
{
	uint8_t out[32], exp[32];

	/* RFC 7693 Appendix B. */
	hash_hex(out, 32, "abc", 3);
	tl_hex2bin(exp, "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982", 32);
	CHECK_MEM(out, exp, 32);

	hash_hex(out, 32, "", 0);
	tl_hex2bin(exp, "69217a3079908094e11121d042354a7c1f55b6482ca1a51e1b250dfd1ed0eef9", 32);
	CHECK_MEM(out, exp, 32);

	/* NULL input with zero length must be accepted. */
	wg_blake2s(out, 32, NULL, 0, NULL, 0);
	CHECK_MEM(out, exp, 32);

	/* WireGuard's protocol constants: CONSTRUCTION hash and IDENTIFIER mix. */
	{
		static const char construction[] = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
		static const char identifier[] = "WireGuard v1 zx2c4 Jason@zx2c4.com";
		struct wg_blake2s_state s;
		uint8_t ck[32], h[32];

		hash_hex(ck, 32, construction, sizeof(construction) - 1);
		tl_hex2bin(exp, "60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36", 32);
		CHECK_MEM(ck, exp, 32);

		wg_blake2s_init(&s, 32);
		wg_blake2s_update(&s, ck, 32);
		wg_blake2s_update(&s, (const uint8_t *)identifier, sizeof(identifier) - 1);
		wg_blake2s_final(&s, h);
		tl_hex2bin(exp, "2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3", 32);
		CHECK_MEM(h, exp, 32);
	}
}

/* RFC 7693 Appendix E: deterministic byte generator (Fibonacci-like LCG). */
static void selftest_seq(uint8_t *out, size_t len, uint32_t seed)
{
	uint32_t a = 0xDEAD4BADu * seed, b = 1, t;
	size_t i;

	for (i = 0; i < len; i++) {
		t = a + b;
		a = b;
		b = t;
		out[i] = (uint8_t)(t >> 24);
	}
}

static void test_rfc7693_selftest(void)
{
	static const size_t md_len[4] = { 16, 20, 28, 32 };
	static const size_t in_len[6] = { 0, 3, 64, 65, 255, 1024 };
	uint8_t in[1024], md[32], key[32], result[32], exp[32];
	struct wg_blake2s_state ctx;
	size_t i, j;

	wg_blake2s_init(&ctx, 32);
	for (i = 0; i < 4; i++) {
		size_t outlen = md_len[i];

		for (j = 0; j < 6; j++) {
			size_t inlen = in_len[j];

			selftest_seq(in, inlen, (uint32_t)inlen);
			wg_blake2s(md, outlen, in, inlen, NULL, 0);
			wg_blake2s_update(&ctx, md, outlen);

			selftest_seq(key, outlen, (uint32_t)outlen);
			wg_blake2s(md, outlen, in, inlen, key, outlen);
			wg_blake2s_update(&ctx, md, outlen);
		}
	}
	wg_blake2s_final(&ctx, result);
	tl_hex2bin(exp, "6a411f08ce25adcdfb02aba641451cec53c598b24f4fc787fbdc88797f4c1dfe", 32);
	CHECK_MEM(result, exp, 32);
}

/* Reference BLAKE2s keyed KAT: key = 00..1f, message = 00..(n-1). */
static void test_keyed_vectors(void)
{
	static const struct {
		size_t len;
		const char *hex;
	} kat[] = {
		{ 0, "48a8997da407876b3d79c0d92325ad3b89cbb754d86ab71aee047ad345fd2c49" },
		{ 1, "40d15fee7c328830166ac3f918650f807e7e01e177258cdc0a39b11f598066f1" },
		{ 2, "6bb71300644cd3991b26ccd4d274acd1adeab8b1d7914546c1198bbe9fc9d803" },
		{ 63, "c65382513f07460da39833cb666c5ed82e61b9e998f4b0c4287cee56c3cc9bcd" },
		{ 64, "8975b0577fd35566d750b362b0897a26c399136df07bababbde6203ff2954ed4" },
		{ 65, "21fe0ceb0052be7fb0f004187cacd7de67fa6eb0938d927677f2398c132317a8" },
		{ 255, "3fb735061abc519dfe979e54c1ee5bfad0a9d858b3315bad34bde999efd724dd" },
	};
	uint8_t key[32], msg[256], out[32], exp[32];
	struct wg_blake2s_state s;
	size_t i;

	for (i = 0; i < sizeof(key); i++)
		key[i] = (uint8_t)i;
	for (i = 0; i < sizeof(msg); i++)
		msg[i] = (uint8_t)i;

	for (i = 0; i < sizeof(kat) / sizeof(kat[0]); i++) {
		tl_hex2bin(exp, kat[i].hex, 32);
		wg_blake2s(out, 32, msg, kat[i].len, key, 32);
		CHECK_MEM(out, exp, 32);

		/* Same through the incremental API, fed a byte at a time. */
		wg_blake2s_init_key(&s, 32, key, 32);
		for (size_t j = 0; j < kat[i].len; j++)
			wg_blake2s_update(&s, msg + j, 1);
		wg_blake2s_final(&s, out);
		CHECK_MEM(out, exp, 32);
	}

	/* keylen 0 with a non-NULL key pointer is the unkeyed hash. */
	wg_blake2s(out, 32, (const uint8_t *)"abc", 3, key, 0);
	tl_hex2bin(exp, "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982", 32);
	CHECK_MEM(out, exp, 32);
}

/* Incremental hashing must equal one-shot for every split, key and length. */
static void test_incremental(void)
{
	uint8_t msg[600], key[32], one[32], inc[32];
	struct wg_blake2s_state s;
	size_t len, split, split2, keylen, outlen;
	int mismatches = 0, total = 0;

	selftest_seq(msg, sizeof(msg), 7);
	selftest_seq(key, sizeof(key), 9);

	for (keylen = 0; keylen <= 32; keylen += 16) {
		for (outlen = 1; outlen <= 32; outlen += 31) {
			for (len = 0; len <= 300; len += (len < 140 ? 1 : 37)) {
				wg_blake2s(one, outlen, msg, len, key, keylen);
				for (split = 0; split <= len; split++) {
					wg_blake2s_init_key(&s, outlen, key, keylen);
					wg_blake2s_update(&s, msg, split);
					wg_blake2s_update(&s, msg + split, len - split);
					wg_blake2s_final(&s, inc);
					total++;
					if (memcmp(one, inc, outlen))
						mismatches++;
				}
			}
		}
	}
	CHECK_EQ(mismatches, 0);
	CHECK(total > 10000);

	/* Three-way splits around block boundaries of a long message. */
	wg_blake2s(one, 32, msg, sizeof(msg), NULL, 0);
	mismatches = 0;
	for (split = 0; split <= 200; split += 3) {
		for (split2 = split; split2 <= sizeof(msg); split2 += 61) {
			wg_blake2s_init(&s, 32);
			wg_blake2s_update(&s, msg, split);
			wg_blake2s_update(&s, msg + split, split2 - split);
			wg_blake2s_update(&s, msg + split2, sizeof(msg) - split2);
			wg_blake2s_final(&s, inc);
			if (memcmp(one, inc, 32))
				mismatches++;
		}
	}
	CHECK_EQ(mismatches, 0);

	/* final() wipes the state. */
	{
		static const struct wg_blake2s_state zero;

		wg_blake2s_init_key(&s, 32, key, 32);
		wg_blake2s_update(&s, msg, 100);
		wg_blake2s_final(&s, inc);
		CHECK_MEM(&s, &zero, sizeof(s));
	}
}

/* 1 MiB through the bulk path, in odd-sized chunks, equals one-shot. */
static void test_long(void)
{
	static uint8_t big[1 << 20];
	uint8_t a[32], b[32];
	struct wg_blake2s_state s;
	size_t off;

	selftest_seq(big, sizeof(big), 1);
	wg_blake2s(a, 32, big, sizeof(big), NULL, 0);
	wg_blake2s_init(&s, 32);
	for (off = 0; off < sizeof(big); off += 4099) {
		size_t n = sizeof(big) - off < 4099 ? sizeof(big) - off : 4099;

		wg_blake2s_update(&s, big + off, n);
	}
	wg_blake2s_final(&s, b);
	CHECK_MEM(a, b, 32);
}

static void test_hmac(void)
{
	static const struct {
		size_t keylen; /* key bytes: see make_key() */
		int msg;       /* 0: empty, 1: "abc", 2: 1000 patterned bytes */
		const char *hex;
	} v[] = {
		{ 0, 0, "eaf4bb25938f4d20e72656bbbc7a9bf63c0c18537333c35bdb67db1402661acd" },
		{ 0, 1, "4a79a31b10a8c34b7c89735b8088e6b810b4bad4f36d671b65ca2ea0914952bf" },
		{ 0, 2, "50a5c218898660fa49267e5f2b3a975f8056c2b46321c184a6de080647934128" },
		{ 32, 0, "e2641d24dfa8dd89e8cb77f1cdc77d8c006e5bebdfc4d6a3a3a6f8d5b7586fb0" },
		{ 32, 1, "82623be5bc0a391b24dce53e67d028eff92d586de0485ac37822e597d049c74f" },
		{ 32, 2, "877f85f2d0b6237a0c6a8403335912ca9da84f9b7e76c93f09a00c2b9e29ebc5" },
		{ 64, 0, "4a4f8f181c931253202b2d7a77e2a612f65580f4b0d56108f7f275f22b63ae00" },
		{ 64, 1, "3a0ef09eac123871fb79852ec512086d013abff437bd68ca03630932bd6ba81f" },
		{ 64, 2, "f266330241e8a48ef8684a9486e7c8b02cbe8f6624954d0dc2ebc4731e6bfa0e" },
		/* Keys longer than the block size are hashed first. */
		{ 65, 0, "019d0d4ece4de18d4db0fe1b3b13460ff4bca4ff2b08d86e50bb1c8a799643ae" },
		{ 65, 1, "44d87b3939dec16bc76cbd83e3982ac0a4eafab8a5b87c8c2adbd0da7d5c9695" },
		{ 65, 2, "bd809fe25e5bb8868b456b78f240846d9a83573b5afc25ff0921a04dcbeb1d20" },
		{ 100, 0, "1c379ec1828f0e1a5a64baae578cd88febdb9e6c6221d1c3e9811a6a8c2e4802" },
		{ 100, 1, "cdb97d6c964215683de5e6b0721ea556d1b9a0f31f1600c8d872b7ffc4967fcb" },
		{ 100, 2, "096b558082be040195848ea87bfa78c6b447a9c6067dadb148797b5209bd39e8" },
	};
	uint8_t key[100], m1000[1000], out[32], exp[32];
	size_t i;

	for (i = 0; i < sizeof(m1000); i++)
		m1000[i] = (uint8_t)(i * 13 + 1);

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		const uint8_t *msg = NULL;
		size_t msglen = 0, k;

		/* Python: bytes(range(n)) for n <= 65, (i*7+3)&255 for the 100-byte key. */
		for (k = 0; k < v[i].keylen; k++)
			key[k] = v[i].keylen == 100 ? (uint8_t)(k * 7 + 3) : (uint8_t)k;
		if (v[i].msg == 1) {
			msg = (const uint8_t *)"abc";
			msglen = 3;
		} else if (v[i].msg == 2) {
			msg = m1000;
			msglen = sizeof(m1000);
		}
		wg_blake2s_hmac(out, msg, msglen, key, v[i].keylen);
		tl_hex2bin(exp, v[i].hex, 32);
		CHECK_MEM(out, exp, 32);
	}

	/* Output may alias the key or the message (the handshake does this). */
	for (i = 0; i < 32; i++)
		key[i] = (uint8_t)i;
	wg_blake2s_hmac(exp, (const uint8_t *)"abc", 3, key, 32);
	wg_blake2s_hmac(key, (const uint8_t *)"abc", 3, key, 32);
	CHECK_MEM(key, exp, 32);
	for (i = 0; i < 32; i++)
		key[i] = (uint8_t)i;
	memcpy(out, m1000, 32);
	wg_blake2s_hmac(exp, out, 32, key, 32);
	wg_blake2s_hmac(out, out, 32, key, 32);
	CHECK_MEM(out, exp, 32);
}

static void hmac_expect(uint8_t out[32], const uint8_t *key, const uint8_t *m1, size_t l1, uint8_t tail)
{
	uint8_t buf[33];

	if (l1)
		memcpy(buf, m1, l1);
	buf[l1] = tail;
	wg_blake2s_hmac(out, buf, l1 + 1, key, 32);
}

static void test_kdf(void)
{
	/* Python-computed: ck = HASH(CONSTRUCTION), input empty and 00..1f. */
	static const char *const want[2][3] = {
		{ "bd968725a9177942a8c2e4253d1dde31cf7b19ec001b4a3a3d141cd9d998d3ba",
		  "aab5462b323780fa615bf80ffe469510239ff361575a663968e686a7ae41d693",
		  "ae1e06e0931da10b9971bab8e282b42307522b38c0f4492cdd1bf44298126887" },
		{ "6ff66e10ab4a55ac8144a867fcd9f8ee64d4bd6239223338cb3437cf085ab031",
		  "203b22d63d63e35cebb9e40210cf8c1d7f90879428a4c766cda9ef34bb299398",
		  "35a7b2fc3e4f59db341dbe588e3b75897980c463d5bbb855f8ed8134ff40133a" },
	};
	static const char construction[] = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
	uint8_t ck[32], input[32], o1[32], o2[32], o3[32], exp[32];
	uint8_t tau0[32], e1[32], e2[32], e3[32], t[32];
	int n;
	size_t i;

	wg_blake2s(ck, 32, (const uint8_t *)construction, sizeof(construction) - 1, NULL, 0);
	for (i = 0; i < 32; i++)
		input[i] = (uint8_t)i;

	for (n = 0; n < 2; n++) {
		size_t inlen = n ? 32 : 0;

		wg_kdf(o1, o2, o3, input, inlen, ck);
		tl_hex2bin(exp, want[n][0], 32);
		CHECK_MEM(o1, exp, 32);
		tl_hex2bin(exp, want[n][1], 32);
		CHECK_MEM(o2, exp, 32);
		tl_hex2bin(exp, want[n][2], 32);
		CHECK_MEM(o3, exp, 32);

		/* The same thing spelled out as HMAC composition. */
		wg_blake2s_hmac(tau0, input, inlen, ck, 32);
		hmac_expect(e1, tau0, NULL, 0, 1);
		hmac_expect(e2, tau0, e1, 32, 2);
		hmac_expect(e3, tau0, e2, 32, 3);
		CHECK_MEM(o1, e1, 32);
		CHECK_MEM(o2, e2, 32);
		CHECK_MEM(o3, e3, 32);

		/* Fewer outputs: NULL stops the chain, earlier outputs unchanged. */
		memset(o2, 0xaa, 32);
		memset(t, 0xaa, 32);
		wg_kdf(o1, NULL, o3, input, inlen, ck);
		CHECK_MEM(o1, e1, 32);
		wg_kdf(o1, o2, NULL, input, inlen, ck);
		CHECK_MEM(o1, e1, 32);
		CHECK_MEM(o2, e2, 32);
		memset(o1, 0xaa, 32);
		wg_kdf(NULL, NULL, NULL, input, inlen, ck);
		CHECK_MEM(o1, t, 32);

		/* out1 aliasing the chaining key, as in mix_dh(). */
		memcpy(t, ck, 32);
		wg_kdf(t, o2, NULL, input, inlen, t);
		CHECK_MEM(t, e1, 32);
		CHECK_MEM(o2, e2, 32);

		/* out2 aliasing the input, as in mix_psk(). */
		if (inlen) {
			memcpy(t, input, 32);
			wg_kdf(o1, t, o3, t, 32, ck);
			CHECK_MEM(o1, e1, 32);
			CHECK_MEM(t, e2, 32);
			CHECK_MEM(o3, e3, 32);
		}
	}
}

int main(void)
{
	test_basic_vectors();
	test_rfc7693_selftest();
	test_keyed_vectors();
	test_incremental();
	test_long();
	test_hmac();
	test_kdf();
	return tl_finish("blake2s");
}
