/* TSO segmentation and TCP coalescing for the TUN device.  See offload.h.
 *
 * Checksums are summed over 16-bit words in memory order and stored back
 * in memory order, so no byte swapping is needed on either endianness
 * (RFC 1071: the one's complement sum is byte-order independent). */
#include <string.h>

#include "offload.h"

#define IPPROTO_TCP_NUM 6
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_URG 0x20
#define TCP_ECE 0x40
#define TCP_CWR 0x80

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}
static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}
static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

uint32_t wg_csum_partial(const uint8_t *d, size_t len, uint32_t sum)
{
	uint64_t acc = sum;

	while (len >= 16) {
		uint32_t w[4];

		memcpy(w, d, 16);
		acc += (uint64_t)w[0] + w[1] + w[2] + w[3];
		d += 16;
		len -= 16;
	}
	while (len >= 4) {
		uint32_t w;

		memcpy(&w, d, 4);
		acc += w;
		d += 4;
		len -= 4;
	}
	if (len >= 2) {
		uint16_t w;

		memcpy(&w, d, 2);
		acc += w;
		d += 2;
		len -= 2;
	}
	if (len) {
		uint8_t last[2] = { d[0], 0 };
		uint16_t w;

		memcpy(&w, last, 2);
		acc += w;
	}
	acc = (acc & 0xffffffffu) + (acc >> 32);
	acc = (acc & 0xffffffffu) + (acc >> 32);
	return (uint32_t)acc;
}

static uint16_t fold(uint32_t sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)sum;
}

uint16_t wg_csum_fold(uint32_t sum)
{
	return (uint16_t)~fold(sum);
}

static void store_csum(uint8_t *at, uint16_t memory_order_value)
{
	memcpy(at, &memory_order_value, 2);
}

/* Pseudo-header sum (memory order) for TCP over the given IP header:
 * addresses, protocol and TCP length (RFC 793, RFC 8200 section 8.1). */
static uint32_t pseudo_sum(const uint8_t *ip, int family, size_t l4len)
{
	if (family == 4) {
		uint8_t t[4] = { 0, IPPROTO_TCP_NUM, (uint8_t)(l4len >> 8), (uint8_t)l4len };

		return wg_csum_partial(t, 4, wg_csum_partial(ip + 12, 8, 0));
	} else {
		uint8_t t[8] = {
			(uint8_t)(l4len >> 24), (uint8_t)(l4len >> 16), (uint8_t)(l4len >> 8), (uint8_t)l4len, 0, 0, 0,
			IPPROTO_TCP_NUM
		};

		return wg_csum_partial(t, 8, wg_csum_partial(ip + 8, 32, 0));
	}
}

bool wg_csum_complete(uint8_t *pkt, size_t len, const struct wg_vnet_hdr *h)
{
	size_t start = h->csum_start, off = h->csum_offset;

	if (start >= len || off + 2 > len - start)
		return false;
	/* The field holds the pseudo-header sum; summing it with the data
	 * gives the final checksum. */
	store_csum(pkt + start + off, wg_csum_fold(wg_csum_partial(pkt + start, len - start, 0)));
	return true;
}

/* IP header facts for TCP packets we can segment or coalesce. */
static bool parse_tcp(const uint8_t *pkt, size_t len, int *family, size_t *iplen, size_t *thl)
{
	if (len >= 20 && (pkt[0] >> 4) == 4) {
		*family = 4;
		*iplen = (size_t)(pkt[0] & 0xf) * 4;
		if (*iplen < 20 || pkt[9] != IPPROTO_TCP_NUM)
			return false;
	} else if (len >= 40 && (pkt[0] >> 4) == 6) {
		*family = 6;
		*iplen = 40;
		if (pkt[6] != IPPROTO_TCP_NUM)
			return false; /* extension headers: not handled */
	} else {
		return false;
	}
	if (len < *iplen + 20)
		return false;
	*thl = (size_t)(pkt[*iplen + 12] >> 4) * 4;
	return *thl >= 20 && *iplen + *thl <= len;
}

size_t wg_tso_segment(const uint8_t *pkt, size_t len, const struct wg_vnet_hdr *h, uint8_t *out, size_t stride,
		      size_t *lens, size_t max_segs)
{
	size_t iplen, thl, hdrs, payload, mss = h->gso_size, nsegs;
	uint8_t gso = h->gso_type & (uint8_t)~WG_VNET_GSO_ECN, flags;
	uint32_t seq0;
	uint16_t id0 = 0;
	int family;

	if (!parse_tcp(pkt, len, &family, &iplen, &thl))
		return 0;
	if ((gso == WG_VNET_GSO_TCPV4) != (family == 4) || (gso != WG_VNET_GSO_TCPV4 && gso != WG_VNET_GSO_TCPV6))
		return 0;
	hdrs = iplen + thl;
	payload = len - hdrs;
	if (!mss || !payload || hdrs + mss > stride || hdrs + mss > 65535)
		return 0;
	nsegs = (payload + mss - 1) / mss;
	if (nsegs > max_segs)
		return 0;
	seq0 = get32(pkt + iplen + 4);
	flags = pkt[iplen + 13];
	if (family == 4)
		id0 = get16(pkt + 4);
	for (size_t i = 0; i < nsegs; i++) {
		size_t seglen = payload - i * mss < mss ? payload - i * mss : mss, total = hdrs + seglen;
		uint8_t *o = out + i * stride, *t = o + iplen;
		uint8_t f = flags;

		memcpy(o, pkt, hdrs);
		memcpy(o + hdrs, pkt + hdrs + i * mss, seglen);
		if (family == 4) {
			put16(o + 2, (uint16_t)total);
			put16(o + 4, (uint16_t)(id0 + i));
			o[10] = o[11] = 0;
			store_csum(o + 10, wg_csum_fold(wg_csum_partial(o, iplen, 0)));
		} else {
			put16(o + 4, (uint16_t)(total - 40));
		}
		put32(t + 4, seq0 + (uint32_t)(i * mss));
		if (i > 0)
			f &= (uint8_t)~TCP_CWR;
		if (i + 1 < nsegs)
			f &= (uint8_t) ~(TCP_FIN | TCP_PSH);
		t[13] = f;
		t[16] = t[17] = 0;
		store_csum(t + 16,
			   wg_csum_fold(wg_csum_partial(t, total - iplen, pseudo_sum(o, family, total - iplen))));
		lens[i] = total;
	}
	return nsegs;
}

size_t wg_tso_segment_len(const uint8_t *pkt, size_t len, const struct wg_vnet_hdr *h)
{
	size_t iplen, thl, payload;
	int family;

	if (!parse_tcp(pkt, len, &family, &iplen, &thl) || !h->gso_size)
		return 0;
	payload = len - iplen - thl;
	return iplen + thl + (payload < h->gso_size ? payload : h->gso_size);
}

bool wg_gro_candidate(const uint8_t *pkt, size_t len)
{
	size_t iplen, thl;
	int family;
	uint8_t f;

	if (!parse_tcp(pkt, len, &family, &iplen, &thl))
		return false;
	if (family == 4) {
		size_t tot = get16(pkt + 2);

		/* no options, no fragments, the length is the real one */
		if (iplen != 20 || (get16(pkt + 6) & 0x3fff) || tot != len)
			return false;
	} else if (40 + (size_t)get16(pkt + 4) != len) {
		return false;
	}
	f = pkt[iplen + 13];
	if (f & (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG | TCP_ECE | TCP_CWR))
		return false;
	return (f & TCP_ACK) && len > iplen + thl;
}

bool wg_gro_add(struct wg_gro *g, const uint8_t *pkt, size_t len)
{
	size_t iplen, thl, payload;
	const uint8_t *t, *gt;
	int family;

	if (!wg_gro_candidate(pkt, len))
		return false;
	parse_tcp(pkt, len, &family, &iplen, &thl);
	payload = len - iplen - thl;
	if (!g->family) {
		memcpy(g->buf, pkt, len);
		g->len = len;
		g->hdr_len = iplen + thl;
		g->mss = payload;
		g->segs = 1;
		g->family = family;
		g->last_short = (pkt[iplen + 13] & TCP_PSH) != 0;
		return true;
	}
	if (family != g->family || iplen + thl != g->hdr_len || g->last_short || payload > g->mss ||
	    g->len + payload > 65535 || g->segs >= WG_TSO_MAX_SEGS)
		return false;
	t = pkt + iplen;
	gt = g->buf + iplen;
	if (family == 4) {
		/* addresses, TOS, TTL and DF must match */
		if (memcmp(pkt + 12, g->buf + 12, 8) || pkt[1] != g->buf[1] || pkt[8] != g->buf[8] ||
		    (pkt[6] & 0x40) != (g->buf[6] & 0x40))
			return false;
	} else if (memcmp(pkt + 8, g->buf + 8, 32) || memcmp(pkt, g->buf, 4) || pkt[7] != g->buf[7]) {
		return false;
	}
	/* same ports, same ack, same flags but PSH, same options (timestamps) */
	if (memcmp(t, gt, 4) || memcmp(t + 8, gt + 8, 4) || ((t[13] ^ gt[13]) & (uint8_t)~TCP_PSH) ||
	    memcmp(t + 20, gt + 20, thl - 20))
		return false;
	if (get32(t + 4) != get32(gt + 4) + (uint32_t)(g->len - g->hdr_len))
		return false;
	memcpy(g->buf + g->len, pkt + iplen + thl, payload);
	g->len += payload;
	g->segs++;
	if (t[13] & TCP_PSH) {
		g->buf[iplen + 13] |= TCP_PSH;
		g->last_short = true; /* the sender flushed: deliver now */
	}
	if (payload < g->mss)
		g->last_short = true;
	return true;
}

void wg_gro_finish(struct wg_gro *g, struct wg_vnet_hdr *h)
{
	size_t iplen = g->family == 4 ? 20 : 40;
	uint8_t *t = g->buf + iplen;

	memset(h, 0, sizeof(*h));
	if (g->segs <= 1) {
		/* Authenticated by WireGuard: the kernel need not verify it again. */
		h->flags = WG_VNET_F_DATA_VALID;
		return;
	}
	if (g->family == 4) {
		put16(g->buf + 2, (uint16_t)g->len);
		g->buf[10] = g->buf[11] = 0;
		store_csum(g->buf + 10, wg_csum_fold(wg_csum_partial(g->buf, 20, 0)));
	} else {
		put16(g->buf + 4, (uint16_t)(g->len - 40));
	}
	/* Partial checksum: the field carries the pseudo-header sum and the
	 * kernel completes it (or trusts it: the data was authenticated). */
	t[16] = t[17] = 0;
	store_csum(t + 16, fold(pseudo_sum(g->buf, g->family, g->len - iplen)));
	h->flags = WG_VNET_F_NEEDS_CSUM;
	h->gso_type = g->family == 4 ? WG_VNET_GSO_TCPV4 : WG_VNET_GSO_TCPV6;
	h->hdr_len = (uint16_t)g->hdr_len;
	h->gso_size = (uint16_t)g->mss;
	h->csum_start = (uint16_t)iplen;
	h->csum_offset = 16;
}
