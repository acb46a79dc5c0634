/* TSO segmentation and TCP coalescing: segments carry correct IP and TCP
 * checksums (checked by an independent byte-wise implementation), sequence
 * numbers and flags; coalescing the segments rebuilds the original stream;
 * malformed packets are refused. */
#include <arpa/inet.h>
#include <stdint.h>

#include "offload.h"
#include "testlib.h"

/* Reference one's complement sum, byte by byte in network order. */
static uint16_t ref_sum(const uint8_t *d, size_t len, uint32_t sum)
{
	for (size_t i = 0; i + 1 < len; i += 2)
		sum += (uint32_t)(d[i] << 8 | d[i + 1]);
	if (len & 1)
		sum += (uint32_t)(d[len - 1] << 8);
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)sum;
}

/* True if the TCP checksum of an IPv4 or IPv6 packet verifies. */
static bool tcp_csum_ok(const uint8_t *p, size_t len)
{
	uint8_t ph[40];
	size_t iplen = (p[0] >> 4) == 4 ? (size_t)(p[0] & 15) * 4 : 40, l4 = len - iplen, phl;
	uint32_t s;

	if ((p[0] >> 4) == 4) {
		memcpy(ph, p + 12, 8);
		ph[8] = 0;
		ph[9] = 6;
		ph[10] = (uint8_t)(l4 >> 8);
		ph[11] = (uint8_t)l4;
		phl = 12;
	} else {
		memcpy(ph, p + 8, 32);
		ph[32] = (uint8_t)(l4 >> 24);
		ph[33] = (uint8_t)(l4 >> 16);
		ph[34] = (uint8_t)(l4 >> 8);
		ph[35] = (uint8_t)l4;
		ph[36] = ph[37] = ph[38] = 0;
		ph[39] = 6;
		phl = 40;
	}
	s = ref_sum(ph, phl, 0);
	return ref_sum(p + iplen, l4, s) == 0xffff;
}

static bool ip4_csum_ok(const uint8_t *p)
{
	return ref_sum(p, (size_t)(p[0] & 15) * 4, 0) == 0xffff;
}

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* A TCP super-packet: IP header, TCP header with 12 bytes of options
 * (timestamps), payload bytes i & 0xff. */
static size_t make_tso(uint8_t *p, int family, size_t payload, uint8_t flags)
{
	size_t iplen = family == 4 ? 20 : 40, thl = 32, len = iplen + thl + payload;

	memset(p, 0, iplen + thl);
	if (family == 4) {
		p[0] = 0x45;
		p[2] = (uint8_t)(len >> 8);
		p[3] = (uint8_t)len;
		p[4] = 0x12;
		p[5] = 0x34;
		p[6] = 0x40; /* DF */
		p[8] = 64;
		p[9] = 6;
		inet_pton(AF_INET, "10.0.0.1", p + 12);
		inet_pton(AF_INET, "10.0.0.2", p + 16);
	} else {
		p[0] = 0x60;
		p[4] = (uint8_t)((len - 40) >> 8);
		p[5] = (uint8_t)(len - 40);
		p[6] = 6;
		p[7] = 64;
		inet_pton(AF_INET6, "fd00::1", p + 8);
		inet_pton(AF_INET6, "fd00::2", p + 24);
	}
	uint8_t *t = p + iplen;
	t[0] = 0x9c;
	t[1] = 0x40;
	t[2] = 0x14;
	t[3] = 0x51;
	t[4] = 0x10;
	t[5] = 0x20;
	t[6] = 0x30;
	t[7] = 0x40; /* seq */
	t[8] = 0xaa;
	t[11] = 0x01; /* ack */
	t[12] = (uint8_t)((thl / 4) << 4);
	t[13] = flags;
	t[14] = 0x01;
	t[15] = 0xf5;
	t[20] = 1;
	t[21] = 1;
	t[22] = 8;
	t[23] = 10; /* NOP NOP TS */
	for (int i = 24; i < 32; i++)
		t[i] = (uint8_t)i;
	for (size_t i = 0; i < payload; i++)
		p[iplen + thl + i] = (uint8_t)i;
	return len;
}

static void test_segment(int family, size_t payload, size_t mss, uint8_t flags)
{
	static uint8_t pkt[70000], out[64 * 2048], gbuf[70000];
	size_t lens[64], len = make_tso(pkt, family, payload, flags), iplen = family == 4 ? 20 : 40;
	struct wg_vnet_hdr h = { .gso_type = family == 4 ? WG_VNET_GSO_TCPV4 : WG_VNET_GSO_TCPV6,
				 .gso_size = (uint16_t)mss,
				 .hdr_len = (uint16_t)(iplen + 32) };
	size_t n = wg_tso_segment(pkt, len, &h, out, 2048, lens, 64), total = 0;
	struct wg_gro g = { .buf = gbuf };
	struct wg_vnet_hdr gh;

	CHECK_EQ(n, (payload + mss - 1) / mss);
	CHECK_EQ(wg_tso_segment_len(pkt, len, &h), iplen + 32 + (payload < mss ? payload : mss));
	for (size_t i = 0; i < n; i++) {
		uint8_t *s = out + i * 2048, *t = s + iplen;
		size_t seg = i + 1 < n ? mss : payload - i * mss;

		CHECK_EQ(lens[i], iplen + 32 + seg);
		CHECK(tcp_csum_ok(s, lens[i]));
		if (family == 4) {
			CHECK(ip4_csum_ok(s));
			CHECK_EQ((s[2] << 8 | s[3]), lens[i]);
			CHECK_EQ((s[4] << 8 | s[5]), 0x1234 + i);
		} else {
			CHECK_EQ((s[4] << 8 | s[5]), lens[i] - 40);
		}
		CHECK_EQ(be32(t + 4), 0x10203040u + i * mss);
		/* FIN/PSH only on the last segment, CWR only on the first */
		CHECK_EQ(t[13] & 0x09, i + 1 == n ? (flags & 0x09) : 0);
		CHECK_EQ(t[13] & 0x80, i == 0 ? (flags & 0x80) : 0);
		CHECK_EQ(s[iplen + 32], (uint8_t)(i * mss));
		total += seg;
	}
	CHECK_EQ(total, payload);

	/* Coalescing the plain-ACK segments gives back one packet with the
	 * whole payload and a partial checksum for the kernel. */
	if (flags == 0x10) {
		for (size_t i = 0; i < n; i++)
			CHECK(wg_gro_add(&g, out + i * 2048, lens[i]));
		CHECK_EQ(g.segs, n);
		CHECK_EQ(g.len, len);
		wg_gro_finish(&g, &gh);
		CHECK_MEM(g.buf + iplen + 32, pkt + iplen + 32, payload);
		if (n > 1) {
			CHECK_EQ(gh.gso_type, family == 4 ? WG_VNET_GSO_TCPV4 : WG_VNET_GSO_TCPV6);
			CHECK_EQ(gh.gso_size, mss);
			CHECK_EQ(gh.csum_start, iplen);
			CHECK_EQ(gh.csum_offset, 16);
			/* completing the partial checksum yields a valid packet */
			CHECK(wg_csum_complete(g.buf, g.len, &gh));
			CHECK(tcp_csum_ok(g.buf, g.len));
			if (family == 4)
				CHECK(ip4_csum_ok(g.buf));
		} else {
			CHECK_EQ(gh.flags, WG_VNET_F_DATA_VALID);
		}
	}
}

static void test_gro_refusals(void)
{
	static uint8_t pkt[70000], out[64 * 2048], gbuf[70000];
	size_t lens[64], len = make_tso(pkt, 4, 3000, 0x10);
	struct wg_vnet_hdr h = { .gso_type = WG_VNET_GSO_TCPV4, .gso_size = 1000 };
	struct wg_gro g = { .buf = gbuf };
	size_t n = wg_tso_segment(pkt, len, &h, out, 2048, lens, 64);

	CHECK_EQ(n, 3);
	CHECK(wg_gro_add(&g, out, lens[0]));
	/* out of order: the third before the second */
	CHECK(!wg_gro_add(&g, out + 2 * 2048, lens[2]));
	CHECK(wg_gro_add(&g, out + 2048, lens[1]));
	/* another flow */
	out[2 * 2048 + 20 + 1] ^= 1; /* source port */
	CHECK(!wg_gro_add(&g, out + 2 * 2048, lens[2]));
	out[2 * 2048 + 20 + 1] ^= 1;
	/* SYN, FIN, RST never coalesce */
	len = make_tso(pkt, 4, 100, 0x12);
	CHECK(!wg_gro_candidate(pkt, len));
	len = make_tso(pkt, 4, 100, 0x11);
	CHECK(!wg_gro_candidate(pkt, len));
	/* no payload: a pure ACK is not worth it */
	len = make_tso(pkt, 4, 0, 0x10);
	CHECK(!wg_gro_candidate(pkt, len));
	/* IPv4 fragment */
	len = make_tso(pkt, 4, 100, 0x10);
	pkt[6] |= 0x20;
	CHECK(!wg_gro_candidate(pkt, len));
	/* UDP */
	len = make_tso(pkt, 4, 100, 0x10);
	pkt[9] = 17;
	CHECK(!wg_gro_candidate(pkt, len));
}

static void test_segment_refusals(void)
{
	static uint8_t pkt[70000], out[64 * 2048];
	size_t lens[64], len = make_tso(pkt, 4, 3000, 0x10);
	struct wg_vnet_hdr h = { .gso_type = WG_VNET_GSO_TCPV4, .gso_size = 1000 };

	/* family mismatch, zero MSS, too many segments, stride too small, truncation */
	h.gso_type = WG_VNET_GSO_TCPV6;
	CHECK_EQ(wg_tso_segment(pkt, len, &h, out, 2048, lens, 64), 0);
	h.gso_type = WG_VNET_GSO_TCPV4;
	h.gso_size = 0;
	CHECK_EQ(wg_tso_segment(pkt, len, &h, out, 2048, lens, 64), 0);
	h.gso_size = 10;
	CHECK_EQ(wg_tso_segment(pkt, len, &h, out, 2048, lens, 64), 0);
	h.gso_size = 1000;
	CHECK_EQ(wg_tso_segment(pkt, len, &h, out, 1000, lens, 64), 0);
	CHECK_EQ(wg_tso_segment(pkt, 30, &h, out, 2048, lens, 64), 0);
	pkt[32] = 0x10; /* TCP data offset 4 words: below the minimum */
	CHECK_EQ(wg_tso_segment(pkt, len, &h, out, 2048, lens, 64), 0);
}

static void test_csum_complete(void)
{
	uint8_t pkt[200] = { 0 };
	size_t len = make_tso(pkt, 4, 60, 0x18);
	struct wg_vnet_hdr h = { .flags = WG_VNET_F_NEEDS_CSUM, .csum_start = 20, .csum_offset = 16 };
	uint32_t s;
	uint8_t ph[12];
	uint16_t v;

	/* as the kernel leaves it: the pseudo-header sum in the field */
	memcpy(ph, pkt + 12, 8);
	ph[8] = 0;
	ph[9] = 6;
	ph[10] = 0;
	ph[11] = (uint8_t)(len - 20);
	s = ref_sum(ph, 12, 0);
	v = htons((uint16_t)s);
	memcpy(pkt + 36, &v, 2);
	CHECK(wg_csum_complete(pkt, len, &h));
	CHECK(tcp_csum_ok(pkt, len));
	h.csum_start = 199;
	CHECK(!wg_csum_complete(pkt, len, &h));
	/* every length, odd ones included, agrees with the reference once the
	 * memory-order result is read back in network order */
	for (size_t n = 0; n < sizeof(pkt); n++) {
		uint16_t ours = wg_csum_fold(wg_csum_partial(pkt, n, 0));
		uint8_t b[2];

		memcpy(b, &ours, 2);
		CHECK_EQ(b[0] << 8 | b[1], (uint16_t)~ref_sum(pkt, n, 0));
	}
}

int main(void)
{
	size_t payloads[] = { 1, 100, 1368, 1369, 2736, 4000, 30000, 62000 };

	for (size_t i = 0; i < sizeof(payloads) / sizeof(payloads[0]); i++) {
		test_segment(4, payloads[i], 1368, 0x10);
		test_segment(6, payloads[i], 1348, 0x10);
		test_segment(4, payloads[i], 1368, 0x18 | 0x80); /* PSH, CWR */
		test_segment(6, payloads[i], 1000, 0x19);        /* FIN, PSH */
	}
	test_gro_refusals();
	test_segment_refusals();
	test_csum_complete();
	return tl_finish("offload");
}
