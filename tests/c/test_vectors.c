/* Standard test vectors against our crypto:
 *   - RFC 8439's AEAD example (section 2.8.2) and every Wycheproof
 *     ChaCha20-Poly1305 vector (tests/vectors/chacha20_poly1305_test.json)
 *     against every AEAD backend this CPU can run (wg_aead_seal/open, in
 *     place and between buffers), both directions: valid vectors encrypt
 *     to their ciphertext and tag and decrypt back; every invalid one is
 *     refused (a modified tag or ciphertext, a nonce that is not 12 bytes)
 *     and leaves no plaintext in the output (none of the vectors has the
 *     datapath's nonce form; test_aead compares wg_aead_encrypt/decrypt of
 *     every backend with libsodium);
 *   - every Wycheproof X25519 vector (x25519_test.json) against
 *     crypto_scalarmult, the DH of the handshake (noise.c, proto.c): the
 *     shared secret matches, and a low-order public key giving the all-zero
 *     result is refused (as WireGuard requires).
 * The XChaCha20-Poly1305 vectors run against the control plane's sealing
 * in spec/unit/vectors_spec.lua.  The JSON files are converted to lines by
 * scripts/wycheproof2vec.lua at build time, into the vectors/ directory
 * next to this binary (or the directory given as the argument). */
#include <inttypes.h>
#include <libgen.h>

#include <sodium.h>

#include "aead.h"
#include "testlib.h"

static char vecdir[4096];

/* Hex field ("-": empty) into a new buffer (at least 1 byte); *n its length */
static uint8_t *unhex(const char *hex, size_t *n)
{
	bool empty = strcmp(hex, "-") == 0;
	size_t len = empty ? 0 : strlen(hex) / 2;
	uint8_t *p = malloc(len ? len : 1);

	if (!p || (!empty && strlen(hex) % 2))
		abort();
	tl_hex2bin(p, hex, len);
	*n = len;
	return p;
}

static bool all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

static FILE *open_vec(const char *name)
{
	char path[4200];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", vecdir, name);
	f = fopen(path, "r");
	if (!f) {
		fprintf(stderr, "FAIL: cannot open %s (make builds it from tests/vectors/)\n", path);
		tl_fail++;
	}
	return f;
}

struct aead_vec {
	unsigned id;
	bool valid;
	const uint8_t *key, *iv, *aad, *msg, *ct, *tag;
	size_t keylen, ivlen, aadlen, msglen, ctlen, taglen;
};

static int failures_reported;

static void report(int before, const char *what, unsigned id, enum wg_aead_backend b)
{
	if (tl_fail != before && failures_reported++ < 20)
		fprintf(stderr, "  ^ %s vector %u, backend %s\n", what, id, wg_aead_backend_name(b));
}

/* One AEAD vector against backend b, both directions. */
static void aead_one(const struct aead_vec *v, enum wg_aead_backend b, const char *what)
{
	size_t len = v->msglen, clen = v->ctlen;
	uint8_t *out = malloc(len + clen + 1), *buf = malloc(clen + 1), tag[16], notag[16] = { 0 };
	/* invalid vectors of a wrong nonce size have no tag: try a zero one */
	const uint8_t *vtag = v->taglen == 16 ? v->tag : notag;
	int before = tl_fail;

	if (!out || !buf)
		abort();
	CHECK_EQ(v->keylen, 32);
	if (v->valid) {
		CHECK_EQ(v->taglen, 16);
		CHECK_EQ(clen, len);
	}
	if (v->keylen != 32 || (v->valid && (v->taglen != 16 || clen != len)))
		goto out;

	/* encryption */
	memset(out, 0xa5, len);
	if (v->valid) {
		CHECK(wg_aead_seal(b, out, tag, v->msg, len, v->aad, v->aadlen, v->iv, v->ivlen, v->key));
		CHECK_MEM(out, v->ct, len);
		CHECK_MEM(tag, v->tag, 16);
		memcpy(buf, v->msg, len); /* in place */
		CHECK(wg_aead_seal(b, buf, tag, buf, len, v->aad, v->aadlen, v->iv, v->ivlen, v->key));
		CHECK_MEM(buf, v->ct, len);
		CHECK_MEM(tag, v->tag, 16);
	} else if (v->ivlen != 12) {
		/* a nonce of another size is refused, nothing written */
		CHECK(!wg_aead_seal(b, out, tag, v->msg, len, v->aad, v->aadlen, v->iv, v->ivlen, v->key));
		for (size_t i = 0; i < len; i++)
			if (out[i] != 0xa5) {
				CHECK(!"seal with a bad nonce wrote output");
				break;
			}
	} else {
		/* the vector's ciphertext and tag are not what encryption gives */
		CHECK(wg_aead_seal(b, out, tag, v->msg, len, v->aad, v->aadlen, v->iv, v->ivlen, v->key));
		CHECK(clen != len || memcmp(out, v->ct, len) != 0 || memcmp(tag, vtag, 16) != 0);
	}

	/* decryption, between buffers and in place */
	memset(out, 0xa5, clen);
	memcpy(buf, v->ct, clen);
	if (v->valid) {
		CHECK(wg_aead_open(b, out, v->ct, len, v->tag, v->aad, v->aadlen, v->iv, v->ivlen, v->key));
		CHECK_MEM(out, v->msg, len);
		CHECK(wg_aead_open(b, buf, buf, len, v->tag, v->aad, v->aadlen, v->iv, v->ivlen, v->key));
		CHECK_MEM(buf, v->msg, len);
	} else {
		CHECK(!wg_aead_open(b, out, v->ct, clen, vtag, v->aad, v->aadlen, v->iv, v->ivlen, v->key));
		CHECK(all_zero(out, clen));
		CHECK(!wg_aead_open(b, buf, buf, clen, vtag, v->aad, v->aadlen, v->iv, v->ivlen, v->key));
		CHECK(all_zero(buf, clen));
	}
out:
	report(before, what, v->id, b);
	free(out);
	free(buf);
}

/* RFC 8439 section 2.8.2 */
static void rfc8439(enum wg_aead_backend b)
{
	static const char pt[] = "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
				 "the future, sunscreen would be it.";
	uint8_t key[32], nonce[12], aad[12], ct[114], tag[16];
	struct aead_vec v = { .id = 0, .valid = true };

	for (int i = 0; i < 32; i++)
		key[i] = (uint8_t)(0x80 + i);
	tl_hex2bin(nonce, "070000004041424344454647", 12);
	tl_hex2bin(aad, "50515253c0c1c2c3c4c5c6c7", 12);
	tl_hex2bin(ct,
		   "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b"
		   "1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
		   "3ff4def08e4b7a9de576d26586cec64b6116",
		   114);
	tl_hex2bin(tag, "1ae10b594f09e26a7e902ecbd0600691", 16);
	CHECK_EQ(sizeof(pt) - 1, 114);
	v.key = key, v.keylen = 32;
	v.iv = nonce, v.ivlen = 12;
	v.aad = aad, v.aadlen = 12;
	v.msg = (const uint8_t *)pt, v.msglen = 114;
	v.ct = ct, v.ctlen = 114;
	v.tag = tag, v.taglen = 16;
	aead_one(&v, b, "RFC 8439 2.8.2");
	/* and forged: a flipped bit of the tag, of the AAD */
	v.valid = false;
	tag[15] ^= 1;
	aead_one(&v, b, "RFC 8439 2.8.2, tag flipped");
	tag[15] ^= 1;
	aad[0] ^= 0x80;
	aead_one(&v, b, "RFC 8439 2.8.2, AAD flipped");
}

static char *field(char **save)
{
	char *t = strtok_r(NULL, " \n", save);

	if (!t)
		abort();
	return t;
}

/* Reads an "end N" line or a vector line; returns false at the end. */
static bool next_line(FILE *f, char *line, size_t size, unsigned *end)
{
	while (fgets(line, (int)size, f)) {
		if (line[0] == '#')
			continue;
		if (sscanf(line, "end %u", end) == 1)
			return false;
		return true;
	}
	return false;
}

static void wycheproof_aead(enum wg_aead_backend b)
{
	static char line[1 << 16];
	FILE *f = open_vec("chacha20_poly1305.vec");
	unsigned n = 0, end = 0, invalid = 0;

	if (!f)
		return;
	while (next_line(f, line, sizeof(line), &end)) {
		struct aead_vec v;
		char *save, *id = strtok_r(line, " \n", &save), *res = field(&save);
		uint8_t *p[6];

		v.id = (unsigned)strtoul(id, NULL, 10);
		v.valid = strcmp(res, "valid") == 0;
		CHECK(v.valid || strcmp(res, "invalid") == 0);
		invalid += !v.valid;
		v.key = p[0] = unhex(field(&save), &v.keylen);
		v.iv = p[1] = unhex(field(&save), &v.ivlen);
		v.aad = p[2] = unhex(field(&save), &v.aadlen);
		v.msg = p[3] = unhex(field(&save), &v.msglen);
		v.ct = p[4] = unhex(field(&save), &v.ctlen);
		v.tag = p[5] = unhex(field(&save), &v.taglen);
		aead_one(&v, b, "Wycheproof ChaCha20-Poly1305");
		for (int i = 0; i < 6; i++)
			free(p[i]);
		n++;
	}
	fclose(f);
	CHECK(n > 0 && n == end);
	CHECK(invalid > 0);
	printf("test_vectors: Wycheproof ChaCha20-Poly1305, backend %s: %u vectors (%u invalid)\n",
	       wg_aead_backend_name(b), n, invalid);
}

static void wycheproof_x25519(void)
{
	static char line[4096];
	FILE *f = open_vec("x25519.vec");
	unsigned n = 0, end = 0, zero = 0;

	if (!f)
		return;
	while (next_line(f, line, sizeof(line), &end)) {
		char *save, *id = strtok_r(line, " \n", &save), *res = field(&save);
		size_t publen, privlen, sharedlen;
		uint8_t *pub = unhex(field(&save), &publen), *priv = unhex(field(&save), &privlen);
		uint8_t *shared = unhex(field(&save), &sharedlen), out[32];
		int before = tl_fail, rc;

		CHECK(strcmp(res, "valid") == 0 || strcmp(res, "acceptable") == 0);
		CHECK(publen == 32 && privlen == 32 && sharedlen == 32);
		if (publen == 32 && privlen == 32 && sharedlen == 32) {
			rc = crypto_scalarmult(out, priv, pub);
			if (all_zero(shared, 32)) {
				/* a low-order point: the DH refuses the all-zero result */
				CHECK(rc != 0);
				zero++;
			} else {
				CHECK(rc == 0);
				CHECK_MEM(out, shared, 32);
			}
		}
		if (tl_fail != before && failures_reported++ < 20)
			fprintf(stderr, "  ^ Wycheproof X25519 vector %s\n", id);
		free(pub);
		free(priv);
		free(shared);
		n++;
	}
	fclose(f);
	CHECK(n > 0 && n == end);
	CHECK(zero > 0);
	printf("test_vectors: Wycheproof X25519: %u vectors (%u low-order, refused)\n", n, zero);
}

int main(int argc, char **argv)
{
	if (sodium_init() < 0)
		return 1;
	if (argc > 1) {
		snprintf(vecdir, sizeof(vecdir), "%s", argv[1]);
	} else {
		char self[4096];

		snprintf(self, sizeof(self), "%s", argv[0]);
		snprintf(vecdir, sizeof(vecdir), "%s/vectors", dirname(self));
	}
	for (int b = 0; b < WG_AEAD_BACKEND_COUNT; b++) {
		if (!wg_aead_backend_usable((enum wg_aead_backend)b)) {
			printf("test_vectors: note: backend %s not usable on this machine (no AVX-512/IFMA or not "
			       "x86-64): not tested here\n",
			       wg_aead_backend_name((enum wg_aead_backend)b));
			continue;
		}
		rfc8439((enum wg_aead_backend)b);
		wycheproof_aead((enum wg_aead_backend)b);
	}
	CHECK(wg_aead_backend_usable(WG_AEAD_BACKEND_LIBSODIUM));
	wycheproof_x25519();
	return tl_finish("test_vectors");
}
