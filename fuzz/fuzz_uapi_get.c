/* libFuzzer harness for csrc/uapi.c, the other direction: the get=1 reply
 * parser (wg_uapi_parse_get, what `wgoverlay status` reads from an engine
 * in another process), with a round trip through the reply writer: a reply
 * that parses is written again with wg_uapi_writer and must parse back to
 * the same values.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Icsrc \
 *     fuzz/fuzz_uapi_get.c csrc/uapi.c -lsodium -o /tmp/fuzz_uapi_get
 *   /tmp/fuzz_uapi_get -max_total_time=120 fuzz/corpus/uapi_get */
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

static bool all_zero(const void *p, size_t n)
{
	const uint8_t *b = p;

	for (size_t i = 0; i < n; i++)
		if (b[i])
			return false;
	return true;
}

/* Writes g again as our engine would (errno line included) and checks that
 * the text parses back to g. */
static void round_trip(const struct wg_uapi_get *g)
{
	struct wg_uapi_writer w = { 0 };
	struct wg_uapi_get h;
	char err[256], *text, *full;
	size_t len, flen;
	int n;

	for (size_t i = 0; i < g->n_peers; i++)
		if (g->peers[i].last_handshake_sec > UINT64_MAX / 1000000000ull - 1)
			return; /* not representable in the writer's nanoseconds */
	wg_uapi_put_interface(&w, g->has_private_key ? g->private_key : NULL, g->listen_port, g->fwmark);
	for (size_t i = 0; i < g->n_peers; i++) {
		const struct wg_uapi_get_peer *p = &g->peers[i];
		struct wg_uapi_peer_state st;

		memset(&st, 0, sizeof(st));
		memcpy(st.public_key, p->public_key, WG_KEY_LEN);
		memcpy(st.preshared_key, p->preshared_key, WG_KEY_LEN);
		st.endpoint = p->has_endpoint ? (const struct sockaddr *)&p->endpoint_addr : NULL;
		st.last_handshake_ns = p->last_handshake_sec * 1000000000ull + p->last_handshake_nsec;
		st.tx_bytes = p->tx_bytes;
		st.rx_bytes = p->rx_bytes;
		st.persistent_keepalive = p->persistent_keepalive;
		wg_uapi_put_peer(&w, &st);
		for (size_t j = 0; j < p->n_aips; j++)
			wg_uapi_put_allowed_ip(&w, p->aips[j].family, p->aips[j].addr, p->aips[j].cidr);
	}
	if (wg_uapi_writer_finish(&w, &text, &len) < 0)
		return;
	full = malloc(len + 32);
	check(full != NULL, "malloc");
	memcpy(full, text, len);
	flen = len;
	if (g->has_errno) {
		n = snprintf(full + len, 32, "errno=%d\n", g->errno_value);
		flen += (size_t)n;
	}
	free(text);

	check(wg_uapi_parse_get(full, flen, &h, err, sizeof(err)) == 0, "written reply parses");
	check(h.has_private_key == g->has_private_key, "private key present");
	check(!g->has_private_key || !memcmp(h.private_key, g->private_key, WG_KEY_LEN), "private key");
	check(h.has_listen_port && h.listen_port == g->listen_port, "listen_port");
	check(h.has_fwmark == (g->fwmark != 0) && h.fwmark == g->fwmark, "fwmark");
	check(h.has_errno == g->has_errno && h.errno_value == g->errno_value, "errno");
	check(h.n_peers == g->n_peers, "peer count");
	for (size_t i = 0; i < g->n_peers; i++) {
		const struct wg_uapi_get_peer *a = &g->peers[i], *b = &h.peers[i];

		check(!memcmp(a->public_key, b->public_key, WG_KEY_LEN), "public key");
		check(!memcmp(a->preshared_key, b->preshared_key, WG_KEY_LEN), "preshared key");
		check(b->has_preshared_key, "preshared key written");
		check(a->has_endpoint == b->has_endpoint, "endpoint present");
		check(!a->has_endpoint || !memcmp(&a->endpoint_addr, &b->endpoint_addr, sizeof(a->endpoint_addr)),
		      "endpoint");
		check(a->last_handshake_sec == b->last_handshake_sec, "last_handshake_time_sec");
		check(a->last_handshake_nsec == b->last_handshake_nsec, "last_handshake_time_nsec");
		check(a->rx_bytes == b->rx_bytes && a->tx_bytes == b->tx_bytes, "byte counters");
		check(a->persistent_keepalive == b->persistent_keepalive, "keepalive");
		check(a->n_aips == b->n_aips, "allowed ip count");
		for (size_t j = 0; j < a->n_aips; j++)
			check(a->aips[j].family == b->aips[j].family && a->aips[j].cidr == b->aips[j].cidr &&
				      !memcmp(a->aips[j].addr, b->aips[j].addr, 16),
			      "allowed ip");
	}
	wg_uapi_get_free(&h);
	check(all_zero(&h, sizeof(h)), "free wipes");
	free(full);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct wg_uapi_get g;
	char err[128];
	int ret;

	memset(err, 'X', sizeof(err));
	ret = wg_uapi_parse_get((const char *)data, size, &g, err, sizeof(err));
	check(memchr(err, '\0', sizeof(err)) != NULL, "err is NUL-terminated");
	if (ret) {
		check(ret == -EINVAL || ret == -ENOMEM || ret == -EMSGSIZE, "known error code");
		check(err[0] != '\0', "error message written");
		check(all_zero(&g, sizeof(g)), "failed parse leaves out empty");
	} else {
		check(err[0] == '\0', "no error message on success");
		check(g.n_peers <= g.cap_peers, "peer count within capacity");
		for (size_t i = 0; i < g.n_peers; i++) {
			const struct wg_uapi_get_peer *p = &g.peers[i];

			check(p->n_aips <= p->cap_aips, "aip count within capacity");
			check(!p->has_endpoint || memchr(p->endpoint, '\0', sizeof(p->endpoint)), "endpoint text");
			check(p->last_handshake_nsec < 1000000000ull, "nsec range");
			for (size_t j = 0; j < p->n_aips; j++)
				check((p->aips[j].family == AF_INET && p->aips[j].cidr <= 32) ||
					      (p->aips[j].family == AF_INET6 && p->aips[j].cidr <= 128),
				      "aip prefix in range");
		}
		round_trip(&g);
	}
	wg_uapi_get_free(&g);
	check(all_zero(&g, sizeof(g)), "free wipes");
	wg_uapi_get_free(&g);
	return 0;
}
