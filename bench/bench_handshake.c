/* Responder handshake rate on one core: an initiator and a responder
 * (protocol layer only, in-process, injected clock) run full handshakes;
 * only the responder's work (consume the initiation: mac1, DH, decrypt,
 * lookup, replay check; create the response: two DH, keypair) is timed,
 * with the thread's CPU clock.  Prints "handshakes/s N". */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "proto.h"

static uint64_t mono = 1000000000000ULL;
static uint8_t last[256];
static size_t last_len;

static void fclock(void *ctx, uint64_t *m, uint64_t *r)
{
	if (m)
		*m = mono;
	if (r)
		*r = mono + 1700000000000000000ULL;
}

static void fsend(void *ctx, const struct wg_endpoint *to, const uint8_t *buf, size_t len)
{
	if (len <= sizeof(last)) {
		memcpy(last, buf, len);
		last_len = len;
	}
}

static void fdeliver(void *ctx, const uint8_t *ip, size_t len)
{
}

static const struct wg_proto_ops ops = { .clock = fclock, .send_udp = fsend, .deliver = fdeliver };

static double cpu_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	struct wg_proto a, b;
	uint8_t apriv[32], apub[32], bpriv[32], bpub[32];
	struct wg_endpoint from = { 0 };
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(1) };
	struct wg_peer *pa;
	int n = argc > 1 ? atoi(argv[1]) : 3000, done = 0, err;
	double t = 0;

	if (sodium_init() < 0 || wg_proto_init(&a, &ops, NULL) || wg_proto_init(&b, &ops, NULL))
		return 1;
	crypto_box_keypair(apub, apriv);
	crypto_box_keypair(bpub, bpriv);
	wg_proto_set_private_key(&a, apriv);
	wg_proto_set_private_key(&b, bpriv);
	wg_proto_cfg_wrlock(&a);
	pa = wg_peer_create_locked(&a, bpub, &err);
	wg_proto_cfg_unlock(&a);
	wg_proto_cfg_wrlock(&b);
	wg_peer_create_locked(&b, apub, &err);
	wg_proto_cfg_unlock(&b);
	wg_peer_set_endpoint(pa, (struct sockaddr *)&sa);
	from.addr.in4 = sa;
	for (int i = 0; i < n; i++) {
		double t0;

		/* beyond the 1/50 s per-peer initiation limit */
		mono += 25 * WG_NS_PER_MS;
		last_len = 0;
		wg_peer_initiate_handshake(pa, false);
		if (last_len != MESSAGE_INITIATION_SIZE)
			continue;
		t0 = cpu_now();
		last_len = 0;
		wg_proto_receive_handshake(&b, &from, last, MESSAGE_INITIATION_SIZE, false);
		t += cpu_now() - t0;
		if (last_len == MESSAGE_RESPONSE_SIZE) {
			done++;
			wg_proto_receive_handshake(&a, &from, last, MESSAGE_RESPONSE_SIZE, false);
		}
	}
	printf("handshakes %d of %d, responder cpu %.3f s, handshakes/s %.0f\n", done, n, t, done / t);
	wg_proto_destroy(&a);
	wg_proto_destroy(&b);
	return done == n ? 0 : 1;
}
