/* ChaCha20-Poly1305 (RFC 8439) with AVX-512.  See aead_avx512.h.  Built
 * into every x86-64 build: every function that may use AVX-512 carries the
 * target attribute, so the rest of the program stays baseline x86-64, and
 * aead.c calls nothing here before wg_aead_avx512_usable() said yes.
 *
 * ChaCha20 is word-sliced: one vector holds one of the 16 state words of
 * 16 blocks (zmm) or 8 blocks (ymm), so a quarter round is lane-wise
 * add/xor/vprold, and a transpose turns the lanes into keystream blocks.
 * Passes take 24 (zmm and ymm interleaved), 16 or 8 blocks; block 0 (the
 * Poly1305 key) is lane 0 of the first one.  A 1424-byte packet is one
 * 24-block pass.
 *
 * Poly1305 runs in 8 lanes of radix 2^44 with the IFMA multiply-adds
 * (vpmadd52luq/huq), the message blocks dealt out to the lanes and the
 * lanes' sums weighted by r^8 .. r^1 at the end.  (A scalar radix-2^64
 * version stitched into the ChaCha20 passes was tried first: GCC 12
 * compiles its 128-bit arithmetic through the stack, at 24 cycles a block
 * against about 3 here, and on Zen 4 the ChaCha20 rounds keep the vector
 * pipes busy anyway.)  The datapath has no associated data and loads the
 * ciphertext straight into the lanes; with associated data (tests, the
 * general entry point) each group of 8 blocks is assembled on the stack
 * first.
 *
 * Decryption authenticates the ciphertext before it writes any plaintext:
 * the keystream of packets up to KS_MAX bytes is generated into a stack
 * buffer first and XORed in once the tag matched; longer packets get the
 * rest of their keystream after the check.
 *
 * Measured on the 2-vCPU Zen 4 (EPYC) here, per 1424-byte packet: about
 * 0.43 us to encrypt and 0.48 to decrypt, against 1.45 for libsodium
 * (bench/bench_aead.c).  Both halves are bound by vector throughput: the
 * ChaCha20 rounds at ~0.5 cycles a byte, Poly1305 at ~0.2 plus ~200 cycles
 * for the powers of r, which change with every packet. */
#include "aead_avx512.h"
#ifdef WG_HAVE_AEAD_AVX512
#include <immintrin.h>
#include <stddef.h>
#include <string.h>

#include <sodium.h>

#define TARGET_ISA "avx512f,avx512vl,avx512bw,avx512ifma,bmi2"
#define AVX512 __attribute__((target(TARGET_ISA)))
#define AVX512_INLINE static inline __attribute__((always_inline, target(TARGET_ISA)))

/* Payload bytes whose keystream decryption generates into the stack before
 * it authenticates (covers every MTU-sized packet). */
#define KS_MAX 4096

bool wg_aead_avx512_usable(void)
{
	__builtin_cpu_init();
	return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
	       __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512ifma") &&
	       __builtin_cpu_supports("bmi2");
}

static inline uint64_t ld64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return v;
}

static inline uint32_t ld32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return v;
}

static inline void st64(uint8_t *p, uint64_t v)
{
	memcpy(p, &v, 8);
}

/* ---- Poly1305, 8 lanes of radix 2^44 with IFMA ---- */

/* A number mod p = 2^130 - 5 in each 64-bit lane: l0 + l1 2^44 + l2 2^88,
 * the limbs not fully carried (see vmul): vpmadd52 multiplies only the low
 * 52 bits of its factors and keeps 52 bits of the product. */
struct v3 {
	__m512i l0, l1, l2;
};

#define M44 0xfffffffffffULL
#define M42 0x3ffffffffffULL

AVX512_INLINE __m512i madd_lo(__m512i acc, __m512i a, __m512i b)
{
	return _mm512_madd52lo_epu64(acc, a, b);
}

AVX512_INLINE __m512i madd_hi(__m512i acc, __m512i a, __m512i b)
{
	return _mm512_madd52hi_epu64(acc, a, b);
}

/* 20 * b1, 20 * b2: 2^132 = 4 * 2^130 = 20 (mod p) */
AVX512_INLINE __m512i x20(__m512i v)
{
	return _mm512_add_epi64(_mm512_slli_epi64(v, 4), _mm512_slli_epi64(v, 2));
}

AVX512_INLINE struct v3 times20(struct v3 b)
{
	return (struct v3){ _mm512_setzero_si512(), x20(b.l1), x20(b.l2) };
}

/* a * b mod p lane-wise, s = times20(b), partly reduced: l0 < 2^44 + 2^15,
 * l1 < 2^44 + 2^10, l2 < 2^42 + 2^10.  b is the clamped r or an output of
 * vmul; a has l0, l1 < 2^46 and l2 < 2^44 (an output plus a message block
 * is below 2^45.1 and 2^42.6).  Each product is taken as its low 52 bits
 * (madd_lo) and the rest (madd_hi, weight 2^52 = 2^44 * 2^8).  Then the hi
 * sums are below 2^41.6 (d0h), 2^39.8 (d1h) and 2^38.6 (d2h), the lo sums
 * below 2^53.6, which keeps every step below exact and in 64 bits. */
AVX512_INLINE struct v3 vmul(struct v3 a, struct v3 b, struct v3 s)
{
	const __m512i z = _mm512_setzero_si512(), m44 = _mm512_set1_epi64(M44), m42 = _mm512_set1_epi64(M42);
	__m512i d0l, d0h, d1l, d1h, d2l, d2h, t0, t1, t2, c0, c1, c2;

	d0l = madd_lo(madd_lo(madd_lo(z, a.l0, b.l0), a.l1, s.l2), a.l2, s.l1);
	d0h = madd_hi(madd_hi(madd_hi(z, a.l0, b.l0), a.l1, s.l2), a.l2, s.l1);
	d1l = madd_lo(madd_lo(madd_lo(z, a.l0, b.l1), a.l1, b.l0), a.l2, s.l2);
	d1h = madd_hi(madd_hi(madd_hi(z, a.l0, b.l1), a.l1, b.l0), a.l2, s.l2);
	d2l = madd_lo(madd_lo(madd_lo(z, a.l0, b.l2), a.l1, b.l1), a.l2, b.l0);
	d2h = madd_hi(madd_hi(madd_hi(z, a.l0, b.l2), a.l1, b.l1), a.l2, b.l0);

	/* d2h has weight 2^140 = 5 * 2^10 (mod p), d0h and d1h 2^8 times that
	 * of the next limb; the multiplies by constants are exact (the
	 * products stay below 2^52) and cost one operation where shift and
	 * add take two */
	t0 = madd_lo(d0l, d2h, _mm512_set1_epi64(5 << 10));
	t1 = madd_lo(d1l, d0h, _mm512_set1_epi64(1 << 8));
	t2 = madd_lo(d2l, d1h, _mm512_set1_epi64(1 << 8));

	/* one carry step, all limbs at once (t0, t1, t2 < 2^54) */
	c0 = _mm512_srli_epi64(t0, 44);
	c1 = _mm512_srli_epi64(t1, 44);
	c2 = _mm512_srli_epi64(t2, 42);
	t0 = madd_lo(_mm512_and_si512(t0, m44), c2, _mm512_set1_epi64(5));
	t1 = _mm512_add_epi64(_mm512_and_si512(t1, m44), c0);
	t2 = _mm512_add_epi64(_mm512_and_si512(t2, m42), c1);
	return (struct v3){ t0, t1, t2 };
}

/* Eight blocks as limbs: lane j of lo/hi holds the low/high 64 bits of
 * block j; plus 2^128 in the lanes of hibit. */
AVX512_INLINE struct v3 limbs(__m512i lo, __m512i hi, __m512i hibit)
{
	const __m512i m44 = _mm512_set1_epi64(M44);

	return (struct v3){
		_mm512_and_si512(lo, m44),
		/* (lo >> 44 | hi << 20) & M44 */
		_mm512_ternarylogic_epi64(_mm512_srli_epi64(lo, 44), _mm512_slli_epi64(hi, 20), m44, 0xa8),
		_mm512_or_si512(_mm512_srli_epi64(hi, 24), hibit),
	};
}

#define EVEN_QWORDS _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14)
#define ODD_QWORDS _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15)
#define HIBIT _mm512_set1_epi64(1LL << 40)

/* 128 bytes at m: 8 full blocks */
AVX512_INLINE struct v3 load8(const uint8_t *m)
{
	const __m512i a = _mm512_loadu_si512(m), b = _mm512_loadu_si512(m + 64);

	return limbs(_mm512_permutex2var_epi64(a, EVEN_QWORDS, b), _mm512_permutex2var_epi64(a, ODD_QWORDS, b), HIBIT);
}

/* nbytes <= 128 bytes at m (the last partial block zero-padded) into the
 * lanes from lane0 on; zero lanes before.  With last, lane 7 is the
 * lengths block (0 and len). */
AVX512_INLINE struct v3 load_part(const uint8_t *m, size_t nbytes, unsigned lane0, bool last, size_t len)
{
	const __m512i shift = _mm512_set1_epi64(2 * (long long)lane0);
	const __mmask8 k = (__mmask8)(0xff << lane0);
	__m512i a = _mm512_setzero_si512(), b = _mm512_setzero_si512(), lo, hi;

	if (nbytes) {
		a = _mm512_maskz_loadu_epi8(_bzhi_u64(~(uint64_t)0, (unsigned)(nbytes < 64 ? nbytes : 64)), m);
		if (nbytes > 64)
			b = _mm512_maskz_loadu_epi8(_bzhi_u64(~(uint64_t)0, (unsigned)(nbytes - 64)), m + 64);
	}
	lo = _mm512_maskz_permutex2var_epi64(k, a, _mm512_sub_epi64(EVEN_QWORDS, shift), b);
	hi = _mm512_maskz_permutex2var_epi64(k, a, _mm512_sub_epi64(ODD_QWORDS, shift), b);
	if (last)
		hi = _mm512_mask_mov_epi64(hi, 0x80, _mm512_set1_epi64((long long)len));
	return limbs(lo, hi, _mm512_maskz_mov_epi64(k, HIBIT));
}

AVX512_INLINE struct v3 vadd(struct v3 a, struct v3 b)
{
	return (struct v3){ _mm512_add_epi64(a.l0, b.l0), _mm512_add_epi64(a.l1, b.l1), _mm512_add_epi64(a.l2, b.l2) };
}

AVX512_INLINE struct v3 vperm(__m512i idx, struct v3 a)
{
	return (struct v3){ _mm512_permutexvar_epi64(idx, a.l0), _mm512_permutexvar_epi64(idx, a.l1),
			    _mm512_permutexvar_epi64(idx, a.l2) };
}

AVX512_INLINE struct v3 vblend(__mmask8 k, struct v3 a, struct v3 b)
{
	return (struct v3){ _mm512_mask_blend_epi64(k, a.l0, b.l0), _mm512_mask_blend_epi64(k, a.l1, b.l1),
			    _mm512_mask_blend_epi64(k, a.l2, b.l2) };
}

/* A multiplier and its times20() */
struct mulby {
	struct v3 b, s;
};

AVX512_INLINE struct mulby mulby(struct v3 b)
{
	return (struct mulby){ b, times20(b) };
}

/* The message of the AEAD's Poly1305: ad, zero-padded to 16 bytes, the
 * ciphertext c, zero-padded, and the lengths block (adlen, len). */
struct polymsg {
	const uint8_t *ad, *c;
	size_t adlen, len;
};

/* Group g of the block stream of poly1305(), without associated data:
 * straight from the ciphertext. */
AVX512_INLINE struct v3 group_noad(const uint8_t *c, size_t len, size_t g, size_t groups, size_t lead)
{
	if (g == groups - 1)
		return load_part(c + 16 * (8 * g - (g ? lead : 0)), len - 16 * (8 * g - (g ? lead : 0)),
				 g ? 0 : (unsigned)lead, true, len);
	if (g == 0)
		return load_part(c, 16 * (8 - lead), (unsigned)lead, false, len);
	return load8(c + 16 * (8 * g - lead));
}

/* Block i (16 bytes) of the stream of m into out */
static void msg_block(const struct polymsg *m, size_t i, uint8_t out[16])
{
	const size_t na = (m->adlen + 15) / 16, nc = (m->len + 15) / 16;
	const uint8_t *src = NULL;
	size_t have = 0;

	memset(out, 0, 16);
	if (i < na) {
		src = m->ad + 16 * i;
		have = m->adlen - 16 * i;
	} else if (i < na + nc) {
		src = m->c + 16 * (i - na);
		have = m->len - 16 * (i - na);
	} else {
		st64(out, (uint64_t)m->adlen);
		st64(out + 8, (uint64_t)m->len);
		return;
	}
	memcpy(out, src, have < 16 ? have : 16);
}

/* Group g of the block stream of poly1305(), any message: the 8 blocks
 * (zero ones, without 2^128, in the lead lanes of group 0) assembled in a
 * stack buffer.  The blocks are public (associated data, ciphertext). */
static AVX512 struct v3 group_any(const struct polymsg *m, size_t g, size_t lead)
{
	_Alignas(64) uint8_t blk[128];
	__mmask8 have = 0;
	__m512i a, b;

	for (unsigned j = 0; j < 8; j++) {
		if (8 * g + j < lead) {
			memset(blk + 16 * j, 0, 16);
			continue;
		}
		msg_block(m, 8 * g + j - lead, blk + 16 * j);
		have |= (__mmask8)(1u << j);
	}
	a = _mm512_load_si512(blk);
	b = _mm512_load_si512(blk + 64);
	return limbs(_mm512_permutex2var_epi64(a, EVEN_QWORDS, b), _mm512_permutex2var_epi64(a, ODD_QWORDS, b),
		     _mm512_maskz_mov_epi64(have, HIBIT));
}

AVX512_INLINE struct v3 group(const struct polymsg *m, size_t g, size_t groups, size_t lead)
{
	if (m->adlen)
		return group_any(m, g, lead);
	return group_noad(m->c, m->len, g, groups, lead);
}

/* The Poly1305 tag of the AEAD message m: its 16-byte blocks (each
 * zero-padded part a full block), each with 2^128 added.  The n blocks go eight at a time,
 * one per lane, after 8*G - n zero blocks in front (which leave a Horner
 * sum unchanged); groups alternate between two accumulators (two
 * independent dependency chains), each multiplied by r^16 per group, the
 * last two groups by r^16 .. r^9 and r^8 .. r^1 by lane; then the lanes
 * and the two accumulators are added up. */
static AVX512 void poly1305(const struct polymsg *m, const uint8_t key[32], uint8_t tag[16])
{
	const size_t n = (m->adlen + 15) / 16 + (m->len + 15) / 16 + 1, groups = (n + 7) / 8, lead = 8 * groups - n;
	const struct v3 zero = { _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512() };
	uint64_t t0, t1, h0, h1, h2, g0, g1, g2, mask, k0, k1;
	struct v3 r, r2, r4, r8 = zero, q, x, ha, hb;
	struct mulby last, last2 = { zero, zero }, step = { zero, zero };
	size_t g = 0;

	/* r, clamped, in every lane */
	t0 = ld64(key) & 0x0ffffffc0fffffffULL;
	t1 = ld64(key + 8) & 0x0ffffffc0ffffffcULL;
	r = (struct v3){ _mm512_set1_epi64((long long)(t0 & M44)),
			 _mm512_set1_epi64((long long)(((t0 >> 44) | (t1 << 20)) & M44)),
			 _mm512_set1_epi64((long long)(t1 >> 24)) };

	/* powers: q holds r, r^2, r^3, r^4 in lanes 0-3 and 4-7 (as far as n
	 * needs them), then x = q * r^4 holds r^5 .. r^8 in lanes 0-3 */
	r2 = vmul(r, r, times20(r));
	q = vblend(0xaa, r, r2);
	if (n > 2) {
		x = vmul(q, r2, times20(r2));
		q = vblend(0xcc, q, x);
		if (n > 4) {
			const __m512i three = _mm512_set1_epi64(3);

			r4 = vperm(three, q);
			x = vmul(q, r4, times20(r4));
			r8 = vperm(three, x);
			q = vblend(0xf0, x, q);
		}
	}
	/* lane j of the last group gets r^(8-j), of the one before r^(16-j) */
	last = mulby(vperm(_mm512_setr_epi64(3, 2, 1, 0, 7, 6, 5, 4), q));
	if (groups > 1)
		last2 = mulby(vmul(last.b, r8, times20(r8)));
	if (groups > 2)
		step = mulby(vmul(r8, r8, times20(r8)));

	ha = hb = zero; /* ha takes the last group */
	if (groups % 2) {
		ha = vmul(group(m, 0, groups, lead), groups == 1 ? last.b : step.b, groups == 1 ? last.s : step.s);
		g = 1;
	}
	for (; g < groups; g += 2) {
		const struct mulby *mb = g + 2 == groups ? &last2 : &step, *ma = g + 2 == groups ? &last : &step;

		hb = vmul(vadd(hb, group(m, g, groups, lead)), mb->b, mb->s);
		ha = vmul(vadd(ha, group(m, g + 1, groups, lead)), ma->b, ma->s);
	}
	ha = vadd(ha, hb);

	/* add up the lanes (16 limbs below 2^44.1 each: no overflow), carry fully */
	h0 = (uint64_t)_mm512_reduce_add_epi64(ha.l0);
	h1 = (uint64_t)_mm512_reduce_add_epi64(ha.l1);
	h2 = (uint64_t)_mm512_reduce_add_epi64(ha.l2);
	h1 += h0 >> 44;
	h0 &= M44;
	h2 += h1 >> 44;
	h1 &= M44;
	h0 += (h2 >> 42) * 5;
	h2 &= M42;
	h1 += h0 >> 44;
	h0 &= M44;
	h2 += h1 >> 44;
	h1 &= M44;

	/* h < 2p: h - p = h + 5 - 2^130, taken when that reaches 2^130 */
	g0 = h0 + 5;
	g1 = h1 + (g0 >> 44);
	g0 &= M44;
	g2 = h2 + (g1 >> 44);
	g1 &= M44;
	mask = 0 - (g2 >> 42);
	g2 &= M42;
	h0 = (h0 & ~mask) | (g0 & mask);
	h1 = (h1 & ~mask) | (g1 & mask);
	h2 = (h2 & ~mask) | (g2 & mask);

	/* + s, mod 2^128 */
	t0 = h0 | (h1 << 44);
	t1 = (h1 >> 20) | (h2 << 24);
	k0 = ld64(key + 16);
	k1 = ld64(key + 24);
	t0 += k0;
	t1 += k1 + (t0 < k0);
	st64(tag, t0);
	st64(tag + 8, t1);
	/* r and its powers lived in vector registers only, not wiped (as
	 * in libsodium's SIMD code); the caller wipes the key */
}

/* ---- ChaCha20 ---- */

static void chacha_init(uint32_t st[16], const uint8_t nonce[12], const uint8_t key[32])
{
	st[0] = 0x61707865;
	st[1] = 0x3320646e;
	st[2] = 0x79622d32;
	st[3] = 0x6b206574;
	for (int i = 0; i < 8; i++)
		st[4 + i] = ld32(key + 4 * i);
	st[12] = 0; /* block counter, per pass */
	st[13] = ld32(nonce);
	st[14] = ld32(nonce + 4);
	st[15] = ld32(nonce + 8);
}

/* Where a pass's keystream goes.  Block 0 (counter 0) is the Poly1305 key;
 * block b >= 1 covers bytes 64(b-1) .. 64b-1 of dst. */
struct sink {
	uint8_t *dst;
	const uint8_t *src; /* XORed with the keystream; NULL: store the keystream */
	size_t len;         /* bytes at dst */
	uint8_t *pk;        /* 32 bytes */
};

AVX512_INLINE void emit(const struct sink *o, uint32_t b, __m512i ks)
{
	size_t off, n;

	if (b == 0) {
		_mm256_storeu_epi32(o->pk, _mm512_castsi512_si256(ks));
		return;
	}
	off = (size_t)(b - 1) * 64;
	if (off >= o->len)
		return;
	n = o->len - off;
	if (n >= 64) {
		if (o->src)
			ks = _mm512_xor_si512(ks, _mm512_loadu_si512(o->src + off));
		_mm512_storeu_si512(o->dst + off, ks);
	} else {
		__mmask64 m = _bzhi_u64(~(uint64_t)0, (unsigned)n);

		if (o->src)
			ks = _mm512_xor_si512(ks, _mm512_maskz_loadu_epi8(m, o->src + off));
		_mm512_mask_storeu_epi8(o->dst + off, m, ks);
	}
}

#define Z_ADD _mm512_add_epi32
#define Z_XOR _mm512_xor_si512
#define Z_ROL _mm512_rol_epi32
#define Z_SET1 _mm512_set1_epi32
#define Y_ADD _mm256_add_epi32
#define Y_XOR _mm256_xor_si256
#define Y_ROL _mm256_rol_epi32
#define Y_SET1 _mm256_set1_epi32

/* One step a += b; d = (d ^ a) <<< r of four quarter rounds side by side. */
#define STEP4(V, a0, b0, d0, a1, b1, d1, a2, b2, d2, a3, b3, d3, r) \
	do {                                                        \
		a0 = V##_ADD(a0, b0);                               \
		a1 = V##_ADD(a1, b1);                               \
		a2 = V##_ADD(a2, b2);                               \
		a3 = V##_ADD(a3, b3);                               \
		d0 = V##_ROL(V##_XOR(d0, a0), r);                   \
		d1 = V##_ROL(V##_XOR(d1, a1), r);                   \
		d2 = V##_ROL(V##_XOR(d2, a2), r);                   \
		d3 = V##_ROL(V##_XOR(d3, a3), r);                   \
	} while (0)

#define QR4(V, a0, b0, c0, d0, a1, b1, c1, d1, a2, b2, c2, d2, a3, b3, c3, d3) \
	do {                                                                   \
		STEP4(V, a0, b0, d0, a1, b1, d1, a2, b2, d2, a3, b3, d3, 16);  \
		STEP4(V, c0, d0, b0, c1, d1, b1, c2, d2, b2, c3, d3, b3, 12);  \
		STEP4(V, a0, b0, d0, a1, b1, d1, a2, b2, d2, a3, b3, d3, 8);   \
		STEP4(V, c0, d0, b0, c1, d1, b1, c2, d2, b2, c3, d3, b3, 7);   \
	} while (0)

/* The column and the diagonal rounds on the state words p0 .. p15 */
#define COLUMNS(V, p) \
	QR4(V, p##0, p##4, p##8, p##12, p##1, p##5, p##9, p##13, p##2, p##6, p##10, p##14, p##3, p##7, p##11, p##15)
#define DIAGONALS(V, p) \
	QR4(V, p##0, p##5, p##10, p##15, p##1, p##6, p##11, p##12, p##2, p##7, p##8, p##13, p##3, p##4, p##9, p##14)

/* Declares p0 .. p15 (type T), the state with counters c12 in word 12. */
#define STATE(T, V, p, c12)                                                                          \
	T p##0 = V##_SET1((int)st[0]), p##1 = V##_SET1((int)st[1]), p##2 = V##_SET1((int)st[2]);     \
	T p##3 = V##_SET1((int)st[3]), p##4 = V##_SET1((int)st[4]), p##5 = V##_SET1((int)st[5]);     \
	T p##6 = V##_SET1((int)st[6]), p##7 = V##_SET1((int)st[7]), p##8 = V##_SET1((int)st[8]);     \
	T p##9 = V##_SET1((int)st[9]), p##10 = V##_SET1((int)st[10]), p##11 = V##_SET1((int)st[11]); \
	T p##12 = c12, p##13 = V##_SET1((int)st[13]), p##14 = V##_SET1((int)st[14]);                 \
	T p##15 = V##_SET1((int)st[15])

/* Adds the input state back in (the end of the block function).  The
 * empty asm makes the compiler load st again rather than keep 16
 * broadcasts live through the rounds (which spills in chacha24). */
#define FEEDFORWARD(V, p, c12)                                 \
	do {                                                   \
		__asm__("" : "+r"(st));                        \
		p##0 = V##_ADD(p##0, V##_SET1((int)st[0]));    \
		p##1 = V##_ADD(p##1, V##_SET1((int)st[1]));    \
		p##2 = V##_ADD(p##2, V##_SET1((int)st[2]));    \
		p##3 = V##_ADD(p##3, V##_SET1((int)st[3]));    \
		p##4 = V##_ADD(p##4, V##_SET1((int)st[4]));    \
		p##5 = V##_ADD(p##5, V##_SET1((int)st[5]));    \
		p##6 = V##_ADD(p##6, V##_SET1((int)st[6]));    \
		p##7 = V##_ADD(p##7, V##_SET1((int)st[7]));    \
		p##8 = V##_ADD(p##8, V##_SET1((int)st[8]));    \
		p##9 = V##_ADD(p##9, V##_SET1((int)st[9]));    \
		p##10 = V##_ADD(p##10, V##_SET1((int)st[10])); \
		p##11 = V##_ADD(p##11, V##_SET1((int)st[11])); \
		p##12 = V##_ADD(p##12, c12);                   \
		p##13 = V##_ADD(p##13, V##_SET1((int)st[13])); \
		p##14 = V##_ADD(p##14, V##_SET1((int)st[14])); \
		p##15 = V##_ADD(p##15, V##_SET1((int)st[15])); \
	} while (0)

/* 4x4 transpose of 32-bit words inside each 128-bit lane: afterwards lane
 * j of a (b, c, d) holds these four words of block 4j (4j+1, 4j+2, 4j+3). */
#define TRANSPOSE4(P, T, a, b, c, d)                                            \
	do {                                                                    \
		T t0 = P##_unpacklo_epi32(a, b), t1 = P##_unpackhi_epi32(a, b); \
		T t2 = P##_unpacklo_epi32(c, d), t3 = P##_unpackhi_epi32(c, d); \
		a = P##_unpacklo_epi64(t0, t2);                                 \
		b = P##_unpackhi_epi64(t0, t2);                                 \
		c = P##_unpacklo_epi64(t1, t3);                                 \
		d = P##_unpackhi_epi64(t1, t3);                                 \
	} while (0)

/* 16 blocks from counter ctr, in zmm words p0 .. p15, out to o.  After
 * TRANSPOSE4, lane j of p(4g+k) holds words 4g..4g+3 of block 4j+k: each
 * block gathers lane j of p(k), p(4+k), p(8+k), p(12+k). */
#define OUT16_4(k, a, b, c, d)                                                                        \
	do {                                                                                          \
		__m512i t0 = _mm512_shuffle_i32x4(a, b, 0x44), t1 = _mm512_shuffle_i32x4(a, b, 0xee); \
		__m512i t2 = _mm512_shuffle_i32x4(c, d, 0x44), t3 = _mm512_shuffle_i32x4(c, d, 0xee); \
		emit(o, ctr + k, _mm512_shuffle_i32x4(t0, t2, 0x88));                                 \
		emit(o, ctr + 4 + k, _mm512_shuffle_i32x4(t0, t2, 0xdd));                             \
		emit(o, ctr + 8 + k, _mm512_shuffle_i32x4(t1, t3, 0x88));                             \
		emit(o, ctr + 12 + k, _mm512_shuffle_i32x4(t1, t3, 0xdd));                            \
	} while (0)
#define OUT16(p, ctr)                                                    \
	do {                                                             \
		TRANSPOSE4(_mm512, __m512i, p##0, p##1, p##2, p##3);     \
		TRANSPOSE4(_mm512, __m512i, p##4, p##5, p##6, p##7);     \
		TRANSPOSE4(_mm512, __m512i, p##8, p##9, p##10, p##11);   \
		TRANSPOSE4(_mm512, __m512i, p##12, p##13, p##14, p##15); \
		OUT16_4(0, p##0, p##4, p##8, p##12);                     \
		OUT16_4(1, p##1, p##5, p##9, p##13);                     \
		OUT16_4(2, p##2, p##6, p##10, p##14);                    \
		OUT16_4(3, p##3, p##7, p##11, p##15);                    \
	} while (0)

/* The same for 8 blocks in ymm words: lane j (0, 1) of p(4g+k) holds
 * words 4g..4g+3 of block 4j+k. */
#define JOIN(lo, hi) _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
#define OUT8_4(k, a, b, c, d)                                                                                         \
	do {                                                                                                          \
		emit(o, ctr + k, JOIN(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(c, d, 0x20))); \
		emit(o, ctr + 4 + k,                                                                                  \
		     JOIN(_mm256_permute2x128_si256(a, b, 0x31), _mm256_permute2x128_si256(c, d, 0x31)));             \
	} while (0)
#define OUT8(p, ctr)                                                     \
	do {                                                             \
		TRANSPOSE4(_mm256, __m256i, p##0, p##1, p##2, p##3);     \
		TRANSPOSE4(_mm256, __m256i, p##4, p##5, p##6, p##7);     \
		TRANSPOSE4(_mm256, __m256i, p##8, p##9, p##10, p##11);   \
		TRANSPOSE4(_mm256, __m256i, p##12, p##13, p##14, p##15); \
		OUT8_4(0, p##0, p##4, p##8, p##12);                      \
		OUT8_4(1, p##1, p##5, p##9, p##13);                      \
		OUT8_4(2, p##2, p##6, p##10, p##14);                     \
		OUT8_4(3, p##3, p##7, p##11, p##15);                     \
	} while (0)

#define LANES16 _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#define LANES8 _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)

/* Keystream blocks ctr .. ctr+15 into o. */
static AVX512 void chacha16(const uint32_t st[16], uint32_t ctr, const struct sink *o)
{
	const __m512i c12 = _mm512_add_epi32(_mm512_set1_epi32((int)ctr), LANES16);
	STATE(__m512i, Z, x, c12);

	for (int i = 0; i < 10; i++) {
		COLUMNS(Z, x);
		DIAGONALS(Z, x);
	}
	FEEDFORWARD(Z, x, c12);
	OUT16(x, ctr);
}

/* Keystream blocks ctr .. ctr+7 into o.  Alone, this pass is bound by the
 * latency of the rounds (vprold takes 2 cycles on Zen 4), not by
 * throughput. */
static AVX512 void chacha8(const uint32_t st[16], uint32_t ctr, const struct sink *o)
{
	const __m256i c12 = _mm256_add_epi32(_mm256_set1_epi32((int)ctr), LANES8);
	STATE(__m256i, Y, y, c12);

	for (int i = 0; i < 10; i++) {
		COLUMNS(Y, y);
		DIAGONALS(Y, y);
	}
	FEEDFORWARD(Y, y, c12);
	OUT8(y, ctr);
}

/* Keystream blocks ctr .. ctr+23 into o: 16 in zmm and 8 in ymm words,
 * interleaved, so that the latency-bound 8-block half runs in the gaps of
 * the 16-block one.  The state takes all 32 vector registers; with the
 * rounds unrolled GCC spills least (about 19 accesses a double round,
 * against 68 in a loop). */
static AVX512 void chacha24(const uint32_t st[16], uint32_t ctr, const struct sink *o)
{
	const __m512i c12 = _mm512_add_epi32(_mm512_set1_epi32((int)ctr), LANES16);
	const __m256i d12 = _mm256_add_epi32(_mm256_set1_epi32((int)ctr + 16), LANES8);
	STATE(__m512i, Z, x, c12);
	STATE(__m256i, Y, y, d12);

#pragma GCC unroll 10
	for (int i = 0; i < 10; i++) {
		COLUMNS(Z, x);
		COLUMNS(Y, y);
		DIAGONALS(Z, x);
		DIAGONALS(Y, y);
	}
	FEEDFORWARD(Z, x, c12);
	OUT16(x, ctr);
	FEEDFORWARD(Y, y, d12);
	ctr += 16;
	OUT8(y, ctr);
}

/* Keystream blocks ctr .. nb-1 into o: 24 at a time while more than 16
 * are left, then 16 if more than 8, then 8.  (Zen 4 runs a zmm operation
 * as two 256-bit halves; a 16-block pass costs less than two 8-block
 * ones, and 24 blocks at once less than 16 and 8 one after the other.) */
static AVX512 void chacha_blocks(const uint32_t st[16], uint32_t ctr, uint32_t nb, const struct sink *o)
{
	while (ctr < nb) {
		if (nb - ctr > 16) {
			chacha24(st, ctr, o);
			ctr += 24;
		} else if (nb - ctr > 8) {
			chacha16(st, ctr, o);
			ctr += 16;
		} else {
			chacha8(st, ctr, o);
			ctr += 8;
		}
	}
}

/* dst = src ^ ks for len bytes, wiping ks as it goes: the empty asm that
 * may read ks keeps the compiler from dropping the zeroing stores (as
 * barrier_data() does in the kernel's memzero_explicit()). */
AVX512_INLINE void xor_wipe(uint8_t *dst, const uint8_t *src, uint8_t *ks, size_t len)
{
	const __m512i z = _mm512_setzero_si512();
	size_t i;

	for (i = 0; i + 64 <= len; i += 64) {
		_mm512_storeu_si512(dst + i, _mm512_xor_si512(_mm512_loadu_si512(src + i), _mm512_loadu_si512(ks + i)));
		_mm512_storeu_si512(ks + i, z);
	}
	if (i < len) {
		__mmask64 m = _bzhi_u64(~(uint64_t)0, (unsigned)(len - i));

		_mm512_mask_storeu_epi8(
			dst + i, m,
			_mm512_xor_si512(_mm512_maskz_loadu_epi8(m, src + i), _mm512_maskz_loadu_epi8(m, ks + i)));
		_mm512_mask_storeu_epi8(ks + i, m, z);
	}
	__asm__ __volatile__("" : : "r"(ks) : "memory");
}

/* Blocks in all, counting block 0 (the Poly1305 key); len < 2^38 keeps the
 * 32-bit block counter from wrapping, and packets are < 2^16. */
static uint32_t nblocks(size_t len)
{
	return (uint32_t)(1 + (len + 63) / 64);
}

/* Key-derived state on the stack, wiped with one call */
struct secrets {
	uint32_t st[16]; /* the ChaCha20 input block */
	uint8_t pk[32];  /* the Poly1305 key */
	uint8_t mac[16];
};

AVX512 void wg_aead_avx512_seal(uint8_t *dst, uint8_t tag[16], const uint8_t *src, size_t len, const uint8_t *ad,
				size_t adlen, const uint8_t nonce[12], const uint8_t key[32])
{
	struct secrets k;
	const struct sink o = { dst, src, len, k.pk };
	const struct polymsg m = { ad, dst, adlen, len };

	chacha_init(k.st, nonce, key);
	chacha_blocks(k.st, 0, nblocks(len), &o);
	poly1305(&m, k.pk, tag);
	sodium_memzero(&k, offsetof(struct secrets, mac));
}

AVX512 bool wg_aead_avx512_open(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t tag[16], const uint8_t *ad,
				size_t adlen, const uint8_t nonce[12], const uint8_t key[32])
{
	_Alignas(64) uint8_t ks[KS_MAX];
	struct secrets k;
	const uint32_t nb = nblocks(len), first = len <= KS_MAX ? nb : 8;
	const size_t kslen = len <= KS_MAX ? len : (size_t)(first - 1) * 64;
	const struct sink ko = { ks, NULL, kslen, k.pk };
	const struct polymsg m = { ad, src, adlen, len };
	bool ok;

	/* the Poly1305 key and as much keystream as fits in ks */
	chacha_init(k.st, nonce, key);
	chacha_blocks(k.st, 0, first, &ko);
	poly1305(&m, k.pk, k.mac);
	ok = crypto_verify_16(k.mac, tag) == 0;
	if (ok) {
		const struct sink o = { dst, src, len, k.pk };

		xor_wipe(dst, src, ks, kslen);
		chacha_blocks(k.st, first, nb, &o);
	} else {
		sodium_memzero(ks, kslen);
	}
	sodium_memzero(&k, sizeof(k));
	return ok;
}
#endif
