/* Two protocol engines driven against each other in-process, over a fake
 * network and an injected clock: handshakes, data, every timer path and
 * every rejection (bad mac1, replayed initiation, forged and replayed data,
 * wrong inner source, cookies under load, initiation flood, expired keys). */
#include <arpa/inet.h>
#include <errno.h>
#include <sodium.h>

#include "cookie.h"
#include "noise.h"
#include "proto.h"
#include "testlib.h"
#include "timers.h"

static uint64_t mono_ns = 1000 * WG_NS_PER_SEC, real_ns = 1700000000ULL * WG_NS_PER_SEC;

struct pkt {
	struct wg_endpoint to, from;
	uint8_t data[1600];
	size_t len;
};

#define MAXQ 4096
static struct pkt net[MAXQ];
static int nnet;

struct node {
	struct wg_proto p;
	struct sockaddr_in addr;
	uint8_t priv[32], pub[32];
	uint8_t delivered[1600];
	size_t delivered_len;
	int ndelivered;
	int events[8];
	bool drop_out;   /* drop everything this node sends */
	bool under_load; /* its engine reports a congested handshake queue */
};

static struct node A, B;

static void fake_clock(void *ctx, uint64_t *mono, uint64_t *real)
{
	if (mono)
		*mono = mono_ns;
	if (real)
		*real = real_ns;
}

static void advance(uint64_t ns)
{
	mono_ns += ns;
	real_ns += ns;
}

static void fake_send(void *ctx, const struct wg_endpoint *to, const uint8_t *buf, size_t len)
{
	struct node *n = ctx;

	if (n->drop_out || nnet == MAXQ || len > sizeof(net[0].data))
		return;
	net[nnet].to = *to;
	memset(&net[nnet].from, 0, sizeof(net[nnet].from));
	memcpy(&net[nnet].from.addr.in4, &n->addr, sizeof(n->addr));
	memcpy(net[nnet].data, buf, len);
	net[nnet].len = len;
	nnet++;
}

static void fake_deliver(void *ctx, const uint8_t *ip, size_t len)
{
	struct node *n = ctx;

	memcpy(n->delivered, ip, len);
	n->delivered_len = len;
	n->ndelivered++;
}

static void fake_event(void *ctx, enum wg_event_type type, const uint8_t pub[32], const struct wg_endpoint *ep)
{
	struct node *n = ctx;

	n->events[type]++;
}

static const struct wg_proto_ops ops = {
	.clock = fake_clock,
	.send_udp = fake_send,
	.deliver = fake_deliver,
	.event = fake_event,
};

static struct node *node_at(const struct wg_endpoint *ep)
{
	if (ep->addr.in4.sin_addr.s_addr == A.addr.sin_addr.s_addr && ep->addr.in4.sin_port == A.addr.sin_port)
		return &A;
	if (ep->addr.in4.sin_addr.s_addr == B.addr.sin_addr.s_addr && ep->addr.in4.sin_port == B.addr.sin_port)
		return &B;
	return NULL;
}

static void receive(struct node *n, const struct wg_endpoint *from, uint8_t *buf, size_t len, bool under_load)
{
	int type = wg_proto_message_type(buf, len);

	if (type == MESSAGE_DATA)
		wg_proto_receive_data(&n->p, from, buf, len);
	else if (type)
		wg_proto_receive_handshake(&n->p, from, buf, len, under_load);
	else
		atomic_fetch_add(&n->p.stats.rx_junk, 1);
}

/* Delivers queued datagrams (and whatever they provoke) until quiet. */
static int pump(void)
{
	int delivered = 0;

	while (nnet) {
		struct pkt q = net[0];
		struct node *n;

		memmove(net, net + 1, sizeof(net[0]) * (size_t)--nnet);
		n = node_at(&q.to);
		if (!n)
			continue;
		receive(n, &q.from, q.data, q.len, n->under_load);
		delivered++;
	}
	return delivered;
}

static void sockaddr_set(struct sockaddr_in *sa, const char *ip, uint16_t port)
{
	memset(sa, 0, sizeof(*sa));
	sa->sin_family = AF_INET;
	inet_pton(AF_INET, ip, &sa->sin_addr);
	sa->sin_port = htons(port);
}

static struct wg_peer *peer_of(struct node *n, struct node *other)
{
	return wg_peer_lookup_locked(&n->p, other->pub);
}

static void node_setup(struct node *n, const char *ip, uint16_t port)
{
	memset(n, 0, sizeof(*n));
	CHECK_EQ(wg_proto_init(&n->p, &ops, n), 0);
	sockaddr_set(&n->addr, ip, port);
	crypto_box_keypair(n->pub, n->priv);
	wg_proto_set_private_key(&n->p, n->priv);
}

/* A peers with B: B's overlay 10.9.0.2/32, A's 10.9.0.1/32. */
static void link_nodes(struct node *n, struct node *other, const char *allowed, bool with_endpoint)
{
	uint8_t addr[4];
	struct wg_peer *peer;
	int err;

	inet_pton(AF_INET, allowed, addr);
	wg_proto_cfg_wrlock(&n->p);
	peer = wg_peer_create_locked(&n->p, other->pub, &err);
	CHECK(peer != NULL);
	CHECK_EQ(wg_peer_aip_insert_locked(&n->p, peer, AF_INET, addr, 32), 0);
	wg_proto_cfg_unlock(&n->p);
	if (with_endpoint)
		wg_peer_set_endpoint(peer, (struct sockaddr *)&other->addr);
}

static void setup_pair(void)
{
	nnet = 0;
	node_setup(&A, "192.0.2.1", 1000);
	node_setup(&B, "192.0.2.2", 2000);
	link_nodes(&A, &B, "10.9.0.2", true);
	link_nodes(&B, &A, "10.9.0.1", true);
}

static void teardown_pair(void)
{
	wg_proto_destroy(&A.p);
	wg_proto_destroy(&B.p);
	CHECK_EQ(atomic_load(&A.p.live_keypairs), 0);
	CHECK_EQ(atomic_load(&B.p.live_keypairs), 0);
}

/* An IPv4/UDP-ish packet from src to dst with a payload pattern. */
static size_t make_ip(uint8_t *buf, const char *src, const char *dst, size_t payload, uint8_t fill)
{
	size_t total = 20 + payload;

	memset(buf, 0, total);
	buf[0] = 0x45;
	buf[2] = (uint8_t)(total >> 8);
	buf[3] = (uint8_t)total;
	buf[8] = 64;
	buf[9] = 17;
	inet_pton(AF_INET, src, buf + 12);
	inet_pton(AF_INET, dst, buf + 16);
	memset(buf + 20, fill, payload);
	return total;
}

static void send_ip(struct node *n, const char *src, const char *dst, size_t payload, uint8_t fill)
{
	uint8_t buf[WG_HEADROOM + 1500 + WG_TAILROOM];
	size_t len = make_ip(buf + WG_HEADROOM, src, dst, payload, fill);

	wg_proto_send_ip(&n->p, buf + WG_HEADROOM, len, 1420);
}

static void handshake(void)
{
	send_ip(&A, "10.9.0.1", "10.9.0.2", 100, 0xaa);
	pump();
}

static void test_handshake_and_data(void)
{
	struct wg_peer *pa, *pb;

	setup_pair();
	pa = peer_of(&A, &B);
	pb = peer_of(&B, &A);
	send_ip(&A, "10.9.0.1", "10.9.0.2", 100, 0xaa);
	CHECK_EQ(wg_peer_staged_count(pa), 1); /* staged, initiation sent */
	CHECK_EQ(nnet, 1);
	CHECK_EQ(net[0].len, MESSAGE_INITIATION_SIZE);
	CHECK_EQ(net[0].data[0], MESSAGE_HANDSHAKE_INITIATION);
	pump();
	/* initiation -> response (92) -> keepalive+staged data -> delivered */
	CHECK_EQ(B.ndelivered, 1);
	CHECK_EQ(B.delivered_len, 120);
	CHECK_EQ(B.delivered[20], 0xaa);
	CHECK(pa->kp_current != NULL);
	CHECK(pb->kp_current != NULL); /* confirmed by A's first packet */
	CHECK(pb->kp_next == NULL);
	CHECK(pa->last_handshake_real == real_ns);
	CHECK(pb->last_handshake_real == real_ns);
	CHECK_EQ(A.events[WG_EVENT_HANDSHAKE_COMPLETE], 1);
	CHECK_EQ(B.events[WG_EVENT_HANDSHAKE_COMPLETE], 1);
	CHECK_EQ(wg_peer_staged_count(pa), 0);

	/* and back */
	send_ip(&B, "10.9.0.2", "10.9.0.1", 1300, 0x55);
	CHECK_EQ(nnet, 1);
	/* 1320 bytes padded to 1328 (multiple of 16, within MTU) + 32 */
	CHECK_EQ(net[0].len, 1328 + 32);
	pump();
	CHECK_EQ(A.ndelivered, 1);
	CHECK_EQ(A.delivered_len, 1320);
	CHECK(atomic_load(&pa->tx_bytes) > 0 && atomic_load(&pa->rx_bytes) > 0);
	CHECK_EQ(atomic_load(&pa->tx_bytes), atomic_load(&pb->rx_bytes));
	CHECK_EQ(atomic_load(&pb->tx_bytes), atomic_load(&pa->rx_bytes));

	/* padding never exceeds the MTU */
	{
		uint8_t buf[WG_HEADROOM + 1500 + WG_TAILROOM];
		size_t len = make_ip(buf + WG_HEADROOM, "10.9.0.2", "10.9.0.1", 1399, 1);

		wg_proto_send_ip(&B.p, buf + WG_HEADROOM, len, 1420);
		CHECK_EQ(net[0].len, 1420 + 32);
		pump();
		CHECK_EQ(A.delivered_len, 1419);
	}
	teardown_pair();
}

static void test_rejections(void)
{
	struct pkt saved;
	struct wg_peer *pb;

	setup_pair();
	pb = peer_of(&B, &A);

	/* bad mac1: dropped before any DH */
	send_ip(&A, "10.9.0.1", "10.9.0.2", 10, 1);
	CHECK_EQ(nnet, 1);
	saved = net[0];
	net[0].data[MESSAGE_INITIATION_SIZE - 20] ^= 1;
	pump();
	CHECK_EQ(atomic_load(&B.p.stats.rx_bad_mac1), 1);
	CHECK_EQ(nnet, 0);
	CHECK(pb->kp_next == NULL && pb->kp_current == NULL);

	/* the genuine one works, a replay of it is refused */
	net[0] = saved;
	nnet = 1;
	A.drop_out = true; /* hold back A's reply traffic: only check B */
	pump();
	CHECK(pb->kp_next != NULL);
	CHECK_EQ(atomic_load(&B.p.stats.rx_handshake_invalid), 0);
	receive(&B, &saved.from, saved.data, saved.len, false);
	CHECK_EQ(atomic_load(&B.p.stats.rx_handshake_invalid), 1);
	A.drop_out = false;
	nnet = 0;

	/* junk and truncated messages */
	{
		uint8_t junk[200];

		randombytes_buf(junk, sizeof(junk));
		junk[0] = 9;
		receive(&B, &saved.from, junk, sizeof(junk), false);
		junk[0] = 1;
		receive(&B, &saved.from, junk, 100, false); /* initiation of wrong size */
		junk[0] = 4;
		junk[1] = junk[2] = junk[3] = 0;
		receive(&B, &saved.from, junk, 20, false); /* data below 32 bytes */
		CHECK_EQ(atomic_load(&B.p.stats.rx_junk), 3);
		receive(&B, &saved.from, junk, 64, false); /* data, unknown index */
		CHECK_EQ(atomic_load(&B.p.stats.rx_unknown_index), 1);
		junk[0] = 3;
		wg_proto_receive_handshake(&B.p, &saved.from, junk, 64, false); /* forged cookie reply */
	}
	teardown_pair();

	/* forged and replayed data, wrong inner source */
	setup_pair();
	handshake();
	send_ip(&A, "10.9.0.1", "10.9.0.2", 64, 7);
	CHECK_EQ(nnet, 1);
	saved = net[0];
	net[0].data[40] ^= 0x80;
	pump();
	CHECK_EQ(atomic_load(&B.p.stats.rx_decrypt_failed), 1);
	net[0] = saved;
	nnet = 1;
	pump();
	CHECK_EQ(B.ndelivered, 2);
	net[0] = saved;
	nnet = 1;
	pump();
	CHECK_EQ(atomic_load(&B.p.stats.rx_replayed), 1);
	CHECK_EQ(B.ndelivered, 2);
	send_ip(&A, "10.9.0.77", "10.9.0.2", 64, 7); /* source not A's */
	pump();
	CHECK_EQ(atomic_load(&B.p.stats.rx_wrong_source), 1);
	CHECK_EQ(B.ndelivered, 2);
	/* no route */
	send_ip(&A, "10.9.0.1", "10.9.9.9", 64, 7);
	CHECK_EQ(atomic_load(&A.p.stats.tx_no_route), 1);
	CHECK_EQ(nnet, 0);
	teardown_pair();
}

static void test_unknown_peer_and_zero_dh(void)
{
	struct node C;
	uint8_t msg[MESSAGE_INITIATION_SIZE];
	struct wg_peer *peer;
	struct wg_endpoint from = { 0 };

	setup_pair();
	/* C knows B's public key but B does not know C */
	node_setup(&C, "192.0.2.3", 3000);
	link_nodes(&C, &B, "10.9.0.2", true);
	send_ip(&C, "10.9.0.3", "10.9.0.2", 10, 1);
	CHECK_EQ(nnet, 1);
	pump();
	CHECK_EQ(atomic_load(&B.p.stats.rx_handshake_invalid), 1);
	CHECK_EQ(nnet, 0);

	/* an all-zero ephemeral key (small-order point) must be refused */
	peer = peer_of(&A, &B);
	pthread_mutex_lock(&peer->lock);
	CHECK(wg_noise_create_initiation(&A.p, peer, msg));
	memset(msg + 8, 0, 32);
	wg_cookie_add_macs(peer, msg, sizeof(msg));
	pthread_mutex_unlock(&peer->lock);
	from.addr.in4 = A.addr;
	wg_proto_receive_handshake(&B.p, &from, msg, sizeof(msg), false);
	CHECK_EQ(atomic_load(&B.p.stats.rx_handshake_invalid), 2);
	CHECK(peer_of(&B, &A)->kp_next == NULL);
	wg_proto_destroy(&C.p);
	teardown_pair();
}

static void test_initiation_flood_limit(void)
{
	struct wg_peer *pa;
	struct pkt i1, i2;

	setup_pair();
	pa = peer_of(&A, &B);
	wg_peer_initiate_handshake(pa, false);
	i1 = net[0];
	advance(30 * WG_NS_PER_MS);
	wg_peer_initiate_handshake(pa, false);
	CHECK_EQ(nnet, 2);
	i2 = net[1];
	nnet = 0;
	B.drop_out = true;
	receive(&B, &i1.from, i1.data, i1.len, false);
	advance(5 * WG_NS_PER_MS); /* < 1/50 s after the previous one */
	receive(&B, &i2.from, i2.data, i2.len, false);
	CHECK_EQ(atomic_load(&B.p.stats.rx_handshake_invalid), 1);
	advance(20 * WG_NS_PER_MS);
	/* the older timestamp is refused even after the flood window */
	receive(&B, &i1.from, i1.data, i1.len, false);
	CHECK_EQ(atomic_load(&B.p.stats.rx_handshake_invalid), 2);
	receive(&B, &i2.from, i2.data, i2.len, false);
	CHECK_EQ(atomic_load(&B.p.stats.rx_handshake_invalid), 2);
	B.drop_out = false;
	nnet = 0;
	teardown_pair();
}

/* The receiving thread's shortcut under load: cookie replies straight
 * away for messages without mac2, the worker only for those with one. */
static void test_answer_with_cookie(void)
{
	struct wg_peer *pa;
	struct pkt q;

	setup_pair();
	pa = peer_of(&A, &B);
	send_ip(&A, "10.9.0.1", "10.9.0.2", 10, 1);
	CHECK_EQ(nnet, 1);
	q = net[0];
	nnet = 0;
	CHECK(wg_proto_answer_with_cookie(&B.p, &q.from, q.data, q.len));
	CHECK_EQ(atomic_load(&B.p.stats.rx_cookie_sent), 1);
	CHECK_EQ(nnet, 1); /* the cookie reply, to A */
	CHECK_EQ(wg_proto_message_type(net[0].data, net[0].len), MESSAGE_HANDSHAKE_COOKIE);
	/* a cookie reply itself is for the worker */
	CHECK(!wg_proto_answer_with_cookie(&B.p, &net[0].from, net[0].data, net[0].len));
	pump();
	CHECK(pa->cookie.birth != 0);
	/* the retry carries mac2: to be queued, not answered */
	advance(REKEY_TIMEOUT + 400 * WG_NS_PER_MS);
	wg_proto_tick(&A.p);
	CHECK_EQ(nnet, 1);
	q = net[0];
	CHECK(!wg_proto_answer_with_cookie(&B.p, &q.from, q.data, q.len));
	CHECK_EQ(atomic_load(&B.p.stats.rx_cookie_sent), 1);
	B.under_load = true;
	pump();
	CHECK(pa->kp_current != NULL);
	/* the same message from another source has the wrong mac2 */
	{
		struct wg_endpoint other = q.from;

		other.addr.in4.sin_port = htons(ntohs(other.addr.in4.sin_port) + 1);
		nnet = 0;
		CHECK(wg_proto_answer_with_cookie(&B.p, &other, q.data, q.len));
		CHECK_EQ(atomic_load(&B.p.stats.rx_cookie_sent), 2);
		nnet = 0;
	}
	/* data is not its business */
	send_ip(&A, "10.9.0.1", "10.9.0.2", 10, 1);
	CHECK_EQ(nnet, 1);
	CHECK(!wg_proto_answer_with_cookie(&B.p, &net[0].from, net[0].data, net[0].len));
	nnet = 0;
	teardown_pair();
}

static void test_cookie_under_load(void)
{
	struct wg_peer *pa, *pb;

	setup_pair();
	pa = peer_of(&A, &B);
	pb = peer_of(&B, &A);
	B.under_load = true;
	send_ip(&A, "10.9.0.1", "10.9.0.2", 10, 1);
	pump();
	/* B answered with a cookie reply instead of doing DH */
	CHECK_EQ(atomic_load(&B.p.stats.rx_cookie_sent), 1);
	CHECK(pb->kp_next == NULL && pb->kp_current == NULL);
	CHECK(pa->cookie.birth != 0);
	/* the retry carries mac2 and gets through while still under load */
	advance(REKEY_TIMEOUT + 400 * WG_NS_PER_MS);
	wg_proto_tick(&A.p);
	CHECK_EQ(nnet, 1);
	CHECK(!sodium_is_zero(net[0].data + MESSAGE_INITIATION_SIZE - COOKIE_LEN, COOKIE_LEN));
	pump();
	CHECK(pa->kp_current != NULL);
	CHECK_EQ(B.ndelivered, 1);
	/* a cookie from a source address is useless for another one */
	CHECK_EQ(atomic_load(&B.p.stats.rx_cookie_sent), 1);
	teardown_pair();

	/* the responder's cookie secret rotates every two minutes: a cookie
	 * from before no longer passes as mac2 (A is made to believe its old
	 * cookie is fresh, to show that B refuses it) */
	setup_pair();
	pa = peer_of(&A, &B);
	B.under_load = true;
	send_ip(&A, "10.9.0.1", "10.9.0.2", 10, 1);
	pump();
	CHECK_EQ(atomic_load(&B.p.stats.rx_cookie_sent), 1);
	advance(COOKIE_SECRET_MAX_AGE + WG_NS_PER_SEC);
	pa->cookie.birth = mono_ns;
	wg_peer_initiate_handshake(pa, false);
	CHECK_EQ(nnet, 1);
	CHECK(!sodium_is_zero(net[0].data + MESSAGE_INITIATION_SIZE - COOKIE_LEN, COOKIE_LEN));
	pump();
	CHECK_EQ(atomic_load(&B.p.stats.rx_cookie_sent), 2); /* refused: a fresh cookie instead */
	CHECK(pa->kp_current == NULL);
	/* with the fresh cookie the next try gets through */
	advance(REKEY_TIMEOUT + 400 * WG_NS_PER_MS);
	wg_proto_tick(&A.p);
	pump();
	CHECK(pa->kp_current != NULL);
	teardown_pair();

	/* rate limit per source while under load: burst of 5, then 20/s */
	setup_pair();
	{
		struct wg_endpoint src = { 0 };
		int allowed = 0;

		src.addr.in4 = A.addr;
		for (int i = 0; i < 50; i++)
			allowed += wg_ratelimit_allow(&B.p, &src);
		CHECK_EQ(allowed, RATELIMIT_PACKETS_BURSTABLE);
		advance(WG_NS_PER_SEC / RATELIMIT_PACKETS_PER_SECOND);
		CHECK(wg_ratelimit_allow(&B.p, &src));
		CHECK(!wg_ratelimit_allow(&B.p, &src));
		src.addr.in4.sin_addr.s_addr ^= htonl(1); /* another source is independent */
		CHECK(wg_ratelimit_allow(&B.p, &src));
	}
	teardown_pair();
}

static void test_timers(void)
{
	struct wg_peer *pa, *pb;
	int i, sent;

	/* retransmit every REKEY_TIMEOUT (+jitter) until REKEY_ATTEMPT_TIME, then give up */
	setup_pair();
	pa = peer_of(&A, &B);
	A.drop_out = false;
	B.drop_out = true;
	send_ip(&A, "10.9.0.1", "10.9.0.2", 10, 1);
	CHECK_EQ(nnet, 1);
	nnet = 0;
	sent = 0;
	for (i = 0; i < 40 && !A.events[WG_EVENT_PEER_STALE]; i++) {
		advance(REKEY_TIMEOUT + 400 * WG_NS_PER_MS);
		wg_proto_tick(&A.p);
		sent += nnet;
		nnet = 0;
	}
	/* the first try plus MAX_TIMER_HANDSHAKES + 1 retries, as the kernel */
	CHECK_EQ(sent, MAX_TIMER_HANDSHAKES + 1);
	CHECK_EQ(A.events[WG_EVENT_PEER_STALE], 1);
	CHECK_EQ(wg_peer_staged_count(pa), 0); /* staged packets dropped on giving up */
	CHECK(pa->timers[TIMER_ZERO_KEY_MATERIAL] != 0);
	teardown_pair();

	/* a retry's jitter: never before REKEY_TIMEOUT, always by +333 ms */
	setup_pair();
	B.drop_out = true;
	send_ip(&A, "10.9.0.1", "10.9.0.2", 10, 1);
	nnet = 0;
	advance(REKEY_TIMEOUT - 1);
	wg_proto_tick(&A.p);
	CHECK_EQ(nnet, 0);
	advance(334 * WG_NS_PER_MS);
	wg_proto_tick(&A.p);
	CHECK_EQ(nnet, 1);
	nnet = 0;
	teardown_pair();

	/* passive keepalive: data received and nothing sent back for 10 s */
	setup_pair();
	handshake();
	send_ip(&A, "10.9.0.1", "10.9.0.2", 10, 1);
	pump();
	advance(KEEPALIVE_TIMEOUT - WG_NS_PER_MS);
	wg_proto_tick(&B.p);
	CHECK_EQ(nnet, 0);
	advance(2 * WG_NS_PER_MS);
	wg_proto_tick(&B.p);
	CHECK_EQ(nnet, 1);
	CHECK_EQ(net[0].len, MESSAGE_DATA_MIN_SIZE); /* 32-byte keepalive */
	pump();
	/* sending data back cancels the passive keepalive */
	send_ip(&A, "10.9.0.1", "10.9.0.2", 10, 1);
	pump();
	send_ip(&B, "10.9.0.2", "10.9.0.1", 10, 1);
	pump();
	advance(KEEPALIVE_TIMEOUT + WG_NS_PER_MS);
	wg_proto_tick(&B.p);
	CHECK_EQ(nnet, 0);
	teardown_pair();

	/* new handshake after KEEPALIVE + REKEY_TIMEOUT of sending without a reply */
	setup_pair();
	handshake();
	advance(WG_NS_PER_SEC);
	B.drop_out = true;
	send_ip(&A, "10.9.0.1", "10.9.0.2", 10, 1);
	pump();
	advance(KEEPALIVE_TIMEOUT + REKEY_TIMEOUT - WG_NS_PER_MS);
	wg_proto_tick(&A.p);
	CHECK_EQ(nnet, 0);
	advance(400 * WG_NS_PER_MS);
	wg_proto_tick(&A.p);
	CHECK_EQ(nnet, 1);
	CHECK_EQ(net[0].data[0], MESSAGE_HANDSHAKE_INITIATION);
	B.drop_out = false;
	pump();
	CHECK_EQ(A.events[WG_EVENT_HANDSHAKE_COMPLETE], 2);
	teardown_pair();

	/* rekey after REKEY_AFTER_TIME: the initiator starts a new handshake on send */
	setup_pair();
	handshake();
	pa = peer_of(&A, &B);
	pb = peer_of(&B, &A);
	advance(REKEY_AFTER_TIME + WG_NS_PER_SEC);
	send_ip(&A, "10.9.0.1", "10.9.0.2", 10, 1);
	CHECK_EQ(nnet, 2); /* an initiation, and the data with the old key */
	CHECK_EQ(net[0].data[0], MESSAGE_HANDSHAKE_INITIATION);
	CHECK_EQ(net[1].data[0], MESSAGE_DATA);
	{
		struct wg_keypair *old = pa->kp_current;

		pump();
		CHECK(pa->kp_current != old);
		CHECK(pa->kp_previous == old); /* kept for in-flight packets */
		CHECK(pb->kp_previous != NULL);
	}
	/* the responder (not initiator) does not rekey on time alone when sending */
	advance(REKEY_AFTER_TIME + WG_NS_PER_SEC);
	send_ip(&B, "10.9.0.2", "10.9.0.1", 10, 1);
	CHECK_EQ(nnet, 1);
	pump();
	teardown_pair();

	/* rekey after REKEY_AFTER_MESSAGES */
	setup_pair();
	handshake();
	pa = peer_of(&A, &B);
	advance(REKEY_TIMEOUT + 1); /* past the initiation rate limit */
	atomic_store(&pa->kp_current->send_nonce, REKEY_AFTER_MESSAGES + 1);
	send_ip(&A, "10.9.0.1", "10.9.0.2", 10, 1);
	CHECK_EQ(nnet, 2);
	CHECK_EQ(net[0].data[0], MESSAGE_HANDSHAKE_INITIATION);
	nnet = 0;
	/* and never past REJECT_AFTER_MESSAGES */
	atomic_store(&pa->kp_current->send_nonce, REJECT_AFTER_MESSAGES);
	send_ip(&A, "10.9.0.1", "10.9.0.2", 10, 1);
	CHECK_EQ(wg_peer_staged_count(pa), 1);
	nnet = 0;
	teardown_pair();

	/* reject after REJECT_AFTER_TIME: old keys neither send nor receive */
	setup_pair();
	handshake();
	pa = peer_of(&A, &B);
	send_ip(&B, "10.9.0.2", "10.9.0.1", 10, 1);
	B.drop_out = true;
	{
		struct pkt old = net[0];

		nnet = 0;
		advance(REJECT_AFTER_TIME + WG_NS_PER_SEC);
		receive(&A, &old.from, old.data, old.len, false);
		CHECK_EQ(atomic_load(&A.p.stats.rx_expired_key), 1);
	}
	send_ip(&A, "10.9.0.1", "10.9.0.2", 10, 1);
	CHECK_EQ(wg_peer_staged_count(pa), 1);
	CHECK_EQ(nnet, 1);
	CHECK_EQ(net[0].data[0], MESSAGE_HANDSHAKE_INITIATION);
	nnet = 0;
	B.drop_out = false;
	teardown_pair();

	/* near REJECT_AFTER_TIME the initiator rekeys on receive (last minute) */
	setup_pair();
	handshake();
	advance(REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT + WG_NS_PER_SEC);
	send_ip(&B, "10.9.0.2", "10.9.0.1", 10, 1);
	pump();
	CHECK_EQ(A.events[WG_EVENT_HANDSHAKE_COMPLETE], 2);
	teardown_pair();

	/* key material zeroed after REJECT_AFTER_TIME * 3 without traffic */
	setup_pair();
	handshake();
	CHECK(atomic_load(&A.p.live_keypairs) > 0);
	advance(REJECT_AFTER_TIME * 3 + WG_NS_PER_SEC);
	wg_proto_tick(&A.p);
	wg_proto_tick(&B.p);
	nnet = 0;
	CHECK_EQ(atomic_load(&A.p.live_keypairs), 0);
	CHECK_EQ(atomic_load(&B.p.live_keypairs), 0);
	CHECK(peer_of(&A, &B)->kp_current == NULL);
	teardown_pair();

	/* persistent keepalive */
	setup_pair();
	pa = peer_of(&A, &B);
	wg_peer_set_keepalive(pa, 25);
	CHECK_EQ(nnet, 1); /* enabling it brings the tunnel up at once */
	pump();
	CHECK(pa->kp_current != NULL);
	for (i = 0; i < 3; i++) {
		advance(25 * WG_NS_PER_SEC - WG_NS_PER_MS);
		wg_proto_tick(&A.p);
		wg_proto_tick(&B.p);
		CHECK_EQ(nnet, 0);
		advance(2 * WG_NS_PER_MS);
		wg_proto_tick(&A.p);
		CHECK_EQ(nnet, 1);
		CHECK_EQ(net[0].len, MESSAGE_DATA_MIN_SIZE);
		pump();
	}
	teardown_pair();
}

static void test_responder_confirmation_and_roaming(void)
{
	struct wg_peer *pa, *pb;
	struct pkt resp;

	setup_pair();
	pa = peer_of(&A, &B);
	pb = peer_of(&B, &A);
	wg_peer_initiate_handshake(pa, false);
	pump(); /* initiation -> B; B's response -> A; A's keepalive -> B */
	CHECK(pb->kp_current != NULL);
	teardown_pair();

	/* hold back A's confirmation: B must not send with the unconfirmed keys */
	setup_pair();
	pa = peer_of(&A, &B);
	pb = peer_of(&B, &A);
	wg_peer_initiate_handshake(pa, false);
	receive(&B, &net[0].from, net[0].data, net[0].len, false);
	nnet = 0;
	CHECK(pb->kp_next != NULL && pb->kp_current == NULL);
	send_ip(&B, "10.9.0.2", "10.9.0.1", 10, 1);
	CHECK_EQ(wg_peer_staged_count(pb), 1); /* waits instead of using kp_next */
	resp = net[0];
	nnet = 0;
	teardown_pair();
	(void)resp;

	/* roaming: A's packets come from a new address; B follows */
	setup_pair();
	handshake();
	pb = peer_of(&B, &A);
	sockaddr_set(&A.addr, "198.51.100.7", 1111);
	send_ip(&A, "10.9.0.1", "10.9.0.2", 10, 1);
	pump();
	CHECK_EQ(pb->endpoint.addr.in4.sin_addr.s_addr, A.addr.sin_addr.s_addr);
	CHECK_EQ(pb->endpoint.addr.in4.sin_port, A.addr.sin_port);
	CHECK_EQ(B.events[WG_EVENT_ENDPOINT_CHANGED], 1);
	send_ip(&B, "10.9.0.2", "10.9.0.1", 10, 3);
	pump();
	CHECK_EQ(A.ndelivered, 1); /* replies reach the new address */
	/* a forged packet from elsewhere does not move the endpoint */
	{
		uint8_t junk[64] = { 4 };
		struct wg_endpoint evil = { 0 };

		sockaddr_set(&evil.addr.in4, "203.0.113.66", 6666);
		memcpy(junk + 4, &pb->kp_current->entry.index, 4);
		wg_proto_receive_data(&B.p, &evil, junk, sizeof(junk));
		CHECK_EQ(pb->endpoint.addr.in4.sin_addr.s_addr, A.addr.sin_addr.s_addr);
	}
	teardown_pair();
}

static void test_psk_and_config(void)
{
	uint8_t psk[32];
	struct wg_peer *pa, *pb;

	/* matching preshared keys complete; mismatched ones do not */
	setup_pair();
	randombytes_buf(psk, sizeof(psk));
	pa = peer_of(&A, &B);
	pb = peer_of(&B, &A);
	wg_peer_set_preshared_key(pa, psk);
	wg_peer_set_preshared_key(pb, psk);
	handshake();
	CHECK_EQ(B.ndelivered, 1);
	teardown_pair();

	setup_pair();
	randombytes_buf(psk, sizeof(psk));
	wg_peer_set_preshared_key(peer_of(&A, &B), psk);
	handshake();
	CHECK_EQ(B.ndelivered, 0);
	CHECK(peer_of(&A, &B)->kp_current == NULL);
	CHECK_EQ(atomic_load(&A.p.stats.rx_handshake_invalid), 1);
	teardown_pair();

	/* removing a peer tears down its sessions and routes */
	setup_pair();
	handshake();
	CHECK(atomic_load(&A.p.live_keypairs) == 1);
	wg_proto_cfg_wrlock(&A.p);
	wg_peer_remove_locked(&A.p, peer_of(&A, &B));
	wg_proto_cfg_unlock(&A.p);
	CHECK_EQ(atomic_load(&A.p.live_keypairs), 0);
	send_ip(&A, "10.9.0.1", "10.9.0.2", 10, 1);
	CHECK_EQ(atomic_load(&A.p.stats.tx_no_route), 1);
	/* B's packets to A are now unknown-index */
	send_ip(&B, "10.9.0.2", "10.9.0.1", 10, 1);
	pump();
	CHECK_EQ(atomic_load(&A.p.stats.rx_unknown_index), 1);
	teardown_pair();

	/* changing the private key drops sessions; our own key as a peer is refused */
	setup_pair();
	handshake();
	{
		uint8_t priv[32], pub[32];
		int err;

		crypto_box_keypair(pub, priv);
		wg_proto_set_private_key(&A.p, priv);
		CHECK(!atomic_load(&peer_of(&A, &B)->kp_current->sending_valid));
		wg_proto_cfg_wrlock(&A.p);
		CHECK(wg_peer_create_locked(&A.p, pub, &err) == NULL);
		CHECK_EQ(err, -EINVAL);
		wg_proto_cfg_unlock(&A.p);
	}
	teardown_pair();
}

/* Key rotation: A takes a new private key without dropping its sessions,
 * B changes A's public key in place; traffic flows throughout, the next
 * handshake uses the new key, the old one is refused, and A keeps no byte
 * of its old private key. */
static void test_key_rotation(void)
{
	uint8_t old_priv[32], old_pub[32], new_priv[32], new_pub[32], other_pub[32], other_priv[32];
	struct wg_peer *pa, *pb, *pc;
	struct wg_keypair *kpa, *kpb;
	uint64_t hs_a, hs_b, bad_mac1, invalid;
	int err;

	setup_pair();
	handshake();
	pa = peer_of(&A, &B);
	pb = peer_of(&B, &A);
	kpa = pa->kp_current;
	kpb = pb->kp_current;
	CHECK(kpa != NULL && kpb != NULL);
	memcpy(old_priv, A.priv, 32);
	memcpy(old_pub, A.pub, 32);
	crypto_box_keypair(new_pub, new_priv);

	/* refused: no change for a zero key or a peer's public key */
	wg_proto_cfg_wrlock(&A.p);
	memset(other_priv, 0, 32);
	CHECK_EQ(wg_proto_rotate_private_key_locked(&A.p, other_priv), -EINVAL);
	CHECK_EQ(wg_proto_rotate_private_key_locked(&A.p, B.priv), -EINVAL);
	CHECK_EQ(wg_proto_rotate_private_key_locked(&A.p, old_priv), 0); /* same key: nothing to do */
	CHECK_EQ(wg_proto_rotate_private_key_locked(&A.p, new_priv), 0);
	wg_proto_cfg_unlock(&A.p);
	{
		uint8_t pub[32];

		CHECK(wg_proto_get_public_key(&A.p, pub) && !memcmp(pub, new_pub, 32));
	}
	/* sessions kept, the old key gone from the engine's memory */
	CHECK(pa->kp_current == kpa && atomic_load(&kpa->sending_valid));
	CHECK(memmem(&A.p, sizeof(A.p), old_priv, 32) == NULL);
	CHECK(memmem(pa, sizeof(*pa), old_priv, 32) == NULL);
	CHECK(memmem(&A.p, sizeof(A.p), old_pub, 32) == NULL);

	/* B does not know yet: data flows both ways on the current session */
	send_ip(&A, "10.9.0.1", "10.9.0.2", 50, 1);
	pump();
	CHECK_EQ(B.ndelivered, 2);
	send_ip(&B, "10.9.0.2", "10.9.0.1", 50, 2);
	pump();
	CHECK_EQ(A.ndelivered, 1);

	/* B learns A's new key: changed in place, keypairs kept */
	wg_proto_cfg_wrlock(&B.p);
	CHECK_EQ(wg_peer_set_public_key_locked(&B.p, pb, B.pub), -EINVAL); /* its own */
	CHECK_EQ(wg_peer_set_public_key_locked(&B.p, pb, new_pub), 0);
	CHECK(wg_peer_lookup_locked(&B.p, old_pub) == NULL);
	CHECK(wg_peer_lookup_locked(&B.p, new_pub) == pb);
	wg_proto_cfg_unlock(&B.p);
	CHECK(pb->kp_current == kpb && atomic_load(&kpb->sending_valid));
	send_ip(&B, "10.9.0.2", "10.9.0.1", 50, 3);
	pump();
	CHECK_EQ(A.ndelivered, 2);
	CHECK_EQ(A.delivered[20], 3);

	/* the next handshake, either way, uses the new key */
	memcpy(A.priv, new_priv, 32);
	memcpy(A.pub, new_pub, 32);
	hs_a = atomic_load(&A.p.stats.handshakes_completed);
	hs_b = atomic_load(&B.p.stats.handshakes_completed);
	advance(REKEY_TIMEOUT + WG_NS_PER_SEC);
	wg_peer_initiate_handshake(pb, false);
	pump();
	CHECK_EQ(atomic_load(&A.p.stats.handshakes_completed), hs_a + 1);
	CHECK_EQ(atomic_load(&B.p.stats.handshakes_completed), hs_b + 1);
	advance(REKEY_TIMEOUT + WG_NS_PER_SEC);
	wg_peer_initiate_handshake(pa, false);
	pump();
	CHECK_EQ(atomic_load(&A.p.stats.handshakes_completed), hs_a + 2);
	send_ip(&A, "10.9.0.1", "10.9.0.2", 50, 4);
	pump();
	CHECK_EQ(B.delivered[20], 4);

	/* a peer still holding the old public key cannot handshake: its
	 * initiation fails mac1 at A (nothing of the old key answers) */
	wg_proto_cfg_wrlock(&B.p);
	CHECK_EQ(wg_peer_set_public_key_locked(&B.p, pb, old_pub), 0);
	wg_proto_cfg_unlock(&B.p);
	bad_mac1 = atomic_load(&A.p.stats.rx_bad_mac1);
	hs_a = atomic_load(&A.p.stats.handshakes_completed);
	advance(REKEY_TIMEOUT + WG_NS_PER_SEC);
	wg_peer_initiate_handshake(pb, false);
	pump();
	CHECK_EQ(atomic_load(&A.p.stats.rx_bad_mac1), bad_mac1 + 1);
	CHECK_EQ(atomic_load(&A.p.stats.handshakes_completed), hs_a);
	/* and A's initiation (new static key) is refused by that peer */
	invalid = atomic_load(&B.p.stats.rx_handshake_invalid);
	hs_b = atomic_load(&B.p.stats.handshakes_completed);
	advance(REKEY_TIMEOUT + WG_NS_PER_SEC);
	wg_peer_initiate_handshake(pa, false);
	pump();
	CHECK_EQ(atomic_load(&B.p.stats.rx_handshake_invalid), invalid + 1);
	CHECK_EQ(atomic_load(&B.p.stats.handshakes_completed), hs_b);

	/* a key another peer holds is refused */
	crypto_box_keypair(other_pub, other_priv);
	wg_proto_cfg_wrlock(&B.p);
	pc = wg_peer_create_locked(&B.p, other_pub, &err);
	CHECK(pc != NULL);
	CHECK_EQ(wg_peer_set_public_key_locked(&B.p, pb, other_pub), -EEXIST);
	CHECK(wg_peer_lookup_locked(&B.p, old_pub) == pb);
	wg_proto_cfg_unlock(&B.p);
	teardown_pair();
}

int main(void)
{
	if (sodium_init() < 0)
		return 1;
	test_handshake_and_data();
	test_rejections();
	test_unknown_peer_and_zero_dh();
	test_initiation_flood_limit();
	test_cookie_under_load();
	test_answer_with_cookie();
	test_timers();
	test_responder_confirmation_and_roaming();
	test_psk_and_config();
	test_key_rotation();
	return tl_finish("proto");
}
