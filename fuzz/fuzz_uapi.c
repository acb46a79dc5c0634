/* libFuzzer harness for csrc/uapi.c: the set=1 parser and the endpoint,
 * CIDR and key helpers, with round-trip invariants.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Icsrc \
 *     fuzz/fuzz_uapi.c csrc/uapi.c -lsodium -o /tmp/fuzz_uapi
 *   /tmp/fuzz_uapi -max_total_time=120 fuzz/corpus/uapi */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "uapi.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(bool cond, const char *what)
{
	if (!cond) {
		fprintf(stderr, "invariant failed: %s\n", what);
		abort();
	}
}

static void fuzz_set(const char *s, size_t len)
{
	struct wg_uapi_set set;
	char err[128];
	int ret;

	memset(err, 'X', sizeof(err));
	ret = wg_uapi_parse_set(s, len, &set, err, sizeof(err));
	check(memchr(err, '\0', sizeof(err)) != NULL, "err is NUL-terminated");
	if (ret) {
		static const uint8_t zero[sizeof(set)];

		check(ret == -EINVAL || ret == -EPROTO || ret == -ENOMEM || ret == -EMSGSIZE, "known error code");
		check(err[0] != '\0', "error message written");
		check(!memcmp(&set, zero, sizeof(set)), "failed parse leaves out empty");
	} else {
		check(set.n_peers <= set.cap_peers, "peer count within capacity");
		for (size_t i = 0; i < set.n_peers; i++) {
			const struct wg_uapi_peer *p = &set.peers[i];

			check(p->n_aips <= p->cap_aips, "aip count within capacity");
			for (size_t j = 0; j < p->n_aips; j++)
				check((p->aips[j].family == AF_INET && p->aips[j].cidr <= 32) ||
					      (p->aips[j].family == AF_INET6 && p->aips[j].cidr <= 128),
				      "aip prefix in range");
		}
	}
	/* The error path must be callable on any result and leave it reusable. */
	wg_uapi_set_free(&set);
	wg_uapi_set_free(&set);
}

static void fuzz_endpoint(const char *s, size_t len)
{
	struct sockaddr_storage a, b;
	char buf[80];
	size_t n;

	if (!wg_parse_endpoint(s, len, &a))
		return;
	check(a.ss_family == AF_INET || a.ss_family == AF_INET6, "endpoint family");
	n = wg_format_endpoint(buf, sizeof(buf), (struct sockaddr *)&a);
	check(n > 0 && n == strlen(buf), "endpoint formats");
	check(wg_parse_endpoint(buf, n, &b), "formatted endpoint parses");
	check(!memcmp(&a, &b, sizeof(a)), "endpoint round trip");
}

static void fuzz_cidr(const char *s, size_t len)
{
	uint8_t fam, addr[16], cidr;

	if (!wg_parse_cidr(s, len, &fam, addr, &cidr))
		return;
	check((fam == AF_INET && cidr <= 32) || (fam == AF_INET6 && cidr <= 128), "cidr range");
	if (fam == AF_INET)
		for (int i = 4; i < 16; i++)
			check(addr[i] == 0, "IPv4 address zero-padded");
}

static void fuzz_keys(const char *s, size_t len)
{
	uint8_t key[WG_KEY_LEN];
	char b64[45], hex[65];

	if (wg_base64_to_key(key, s, len)) {
		wg_key_to_base64(b64, key);
		check(len == 44 && !memcmp(b64, s, 44), "base64 is canonical");
	}
	if (wg_hex_to_key(key, s, len)) {
		wg_key_to_hex(hex, key);
		check(len == 64 && !strncasecmp(hex, s, 64), "hex round trip");
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *s = (const char *)data;

	fuzz_set(s, size);
	fuzz_endpoint(s, size);
	fuzz_cidr(s, size);
	fuzz_keys(s, size);
	/* Allowed-ip and endpoint values sit after '=' in a message: also try
	 * the input with a leading "key=" stripped. */
	{
		const char *eq = memchr(s, '=', size);

		if (eq) {
			size_t off = (size_t)(eq - s) + 1;

			fuzz_endpoint(s + off, size - off);
			fuzz_cidr(s + off, size - off);
		}
	}
	return 0;
}
