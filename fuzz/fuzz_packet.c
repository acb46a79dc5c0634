/* libFuzzer harness for the packet parsers: every datagram path of the
 * protocol layer (message classification, mac1/mac2/cookie checks,
 * handshake consumption, transport decryption, inner IP validation).
 *
 * Two engines A and B share a session.  The first input byte picks a mode:
 *   0  raw datagram to B (not under load)
 *   1  raw datagram to B (under load: cookie path)
 *   2  handshake message with a valid mac1 for B (reaches DH and AEAD)
 *   3  data message addressed to B's live receive index (reaches AEAD)
 *   4  arbitrary "IP packet" encrypted by A, so B's inner-packet checks run
 *   5  raw datagram to A, which has a pending handshake
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Icsrc \
 *     fuzz/fuzz_packet.c csrc/{proto,noise,cookie,ratelimit,timers,blake2s,replay,allowedips}.c \
 *     -lsodium -lpthread -o /tmp/fuzz_packet */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "blake2s.h"
#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct qpkt {
	int to; /* 0 = A, 1 = B */
	struct wg_endpoint from;
	size_t len;
	uint8_t buf[2048];
};

static struct wg_proto P[2];
static struct sockaddr_in addr[2];
static uint8_t pub[2][32];
static struct qpkt q[64];
static int nq;
static uint64_t mono = 1000000000000ULL;

static void fclock(void *ctx, uint64_t *m, uint64_t *r)
{
	if (m)
		*m = mono;
	if (r)
		*r = mono + 1700000000000000000ULL;
}

static void fsend(void *ctx, const struct wg_endpoint *to, const uint8_t *buf, size_t len)
{
	int self = (int)(intptr_t)ctx;

	if (nq == 64 || len > sizeof(q[0].buf))
		return;
	q[nq].to = !self;
	memset(&q[nq].from, 0, sizeof(q[nq].from));
	q[nq].from.addr.in4 = addr[self];
	q[nq].len = len;
	memcpy(q[nq].buf, buf, len);
	nq++;
}

static void fdeliver(void *ctx, const uint8_t *ip, size_t len)
{
	/* touch every byte so ASan checks the bounds the engine claims */
	volatile uint8_t x = 0;

	for (size_t i = 0; i < len; i++)
		x ^= ip[i];
	(void)x;
}

static const struct wg_proto_ops ops0 = { .clock = fclock, .send_udp = fsend, .deliver = fdeliver };

static void receive(int n, const struct wg_endpoint *from, uint8_t *buf, size_t len, bool under_load)
{
	int type = wg_proto_message_type(buf, len);

	if (type == MESSAGE_DATA)
		wg_proto_receive_data(&P[n], from, buf, len);
	else if (type)
		wg_proto_receive_handshake(&P[n], from, buf, len, under_load);
}

static void pump(void)
{
	for (int rounds = 0; nq && rounds < 32; rounds++) {
		struct qpkt p = q[0];

		memmove(q, q + 1, sizeof(q[0]) * (size_t)--nq);
		receive(p.to, &p.from, p.buf, p.len, false);
	}
	nq = 0;
}

static void setup(void)
{
	uint8_t priv[2][32], a[4];
	int err;

	for (int i = 0; i < 2; i++) {
		wg_proto_init(&P[i], &ops0, (void *)(intptr_t)i);
		crypto_box_keypair(pub[i], priv[i]);
		wg_proto_set_private_key(&P[i], priv[i]);
		addr[i].sin_family = AF_INET;
		addr[i].sin_port = htons((uint16_t)(1000 + i));
		addr[i].sin_addr.s_addr = htonl(0xc0000201u + (uint32_t)i);
	}
	for (int i = 0; i < 2; i++) {
		struct wg_peer *peer;

		wg_proto_cfg_wrlock(&P[i]);
		peer = wg_peer_create_locked(&P[i], pub[!i], &err);
		inet_pton(AF_INET, "0.0.0.0", a);
		wg_peer_aip_insert_locked(&P[i], peer, AF_INET, a, 0);
		wg_peer_aip_insert_locked(&P[i], peer, AF_INET6, (const uint8_t *)"\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
					  0);
		wg_proto_cfg_unlock(&P[i]);
		wg_peer_set_endpoint(peer, (struct sockaddr *)&addr[!i]);
	}
	wg_peer_initiate_handshake(wg_peer_lookup_locked(&P[0], pub[1]), false);
	pump();
}

/* Re-establish the session every so often so the keys never expire. */
static void keep_session(void)
{
	static unsigned n;

	if (++n % 4096 == 0) {
		mono += 6000000000ULL;
		wg_peer_initiate_handshake(wg_peer_lookup_locked(&P[0], pub[1]), false);
		pump();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool ready;
	uint8_t buf[16 + 2048 + 48];
	struct wg_endpoint from = { 0 };
	struct wg_peer *pb, *pa;
	uint8_t mode;

	if (!ready) {
		if (sodium_init() < 0)
			abort();
		setup();
		ready = true;
	}
	if (size < 1 || size > 2000)
		return 0;
	mode = data[0] % 6;
	data++;
	size--;
	from.addr.in4 = addr[0];
	memcpy(buf + 16, data, size);

	switch (mode) {
	case 0:
	case 1:
		receive(1, &from, buf + 16, size, mode == 1);
		break;
	case 2: { /* a handshake message with a correct mac1 */
		static const size_t sizes[] = { MESSAGE_INITIATION_SIZE, MESSAGE_RESPONSE_SIZE };
		size_t len = sizes[size & 1];
		uint8_t key[32];
		struct wg_blake2s_state s;

		memset(buf + 16 + size, 0, sizeof(buf) - 16 - size);
		buf[16] = (size & 1) ? MESSAGE_HANDSHAKE_RESPONSE : MESSAGE_HANDSHAKE_INITIATION;
		buf[17] = buf[18] = buf[19] = 0;
		wg_blake2s_init(&s, 32);
		wg_blake2s_update(&s, (const uint8_t *)"mac1----", 8);
		wg_blake2s_update(&s, pub[1], 32);
		wg_blake2s_final(&s, key);
		wg_blake2s(buf + 16 + len - 32, 16, buf + 16, len - 32, key, 32);
		receive(1, &from, buf + 16, len, false);
		break;
	}
	case 3: /* data to B's live index */
		pb = wg_peer_lookup_locked(&P[1], pub[0]);
		if (size < 32 || !pb->kp_current)
			break;
		buf[16] = 4;
		buf[17] = buf[18] = buf[19] = 0;
		memcpy(buf + 20, &pb->kp_current->entry.index, 4);
		receive(1, &from, buf + 16, size, false);
		break;
	case 4: /* an arbitrary plaintext, properly encrypted by A */
		pa = wg_peer_lookup_locked(&P[0], pub[1]);
		if (!pa->kp_current || size < 20)
			break;
		buf[16] = (uint8_t)((buf[16] & 0x0f) | ((size & 1) ? 0x60 : 0x40)); /* route by version */
		wg_proto_send_ip(&P[0], buf + 16, size, 1420);
		break;
	case 5:
		receive(0, &from, buf + 16, size, false);
		break;
	}
	pump();
	keep_session();
	return 0;
}
