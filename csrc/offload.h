/* Segmentation and coalescing offloads between the TUN device (virtio-net
 * headers, TSO) and WireGuard's per-packet encryption.  Pure: bytes in,
 * bytes out, no I/O, so the unit tests and fuzzer can drive them.
 *
 * TX: the kernel hands us one TCP "super-packet" of up to 64 KiB with a
 * virtio_net_hdr; wg_tso_segment() cuts it into MSS-sized IP packets with
 * correct IP and TCP checksums (the peer may be a WireGuard that verifies
 * them), each placed at a stride so that, once encrypted in place, they form
 * one UDP GSO buffer.
 * RX: wg_gro_* coalesces consecutive in-order segments of one TCP flow back
 * into a super-packet the TUN device accepts in one write. */
#ifndef WG_OFFLOAD_H
#define WG_OFFLOAD_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WG_VNET_HDR_LEN 10
#define WG_VNET_F_NEEDS_CSUM 1
#define WG_VNET_F_DATA_VALID 2
#define WG_VNET_GSO_NONE 0
#define WG_VNET_GSO_TCPV4 1
#define WG_VNET_GSO_TCPV6 4
#define WG_VNET_GSO_ECN 0x80
#define WG_TSO_MAX_SEGS 64

struct wg_vnet_hdr {
	uint8_t flags;
	uint8_t gso_type;
	uint16_t hdr_len;
	uint16_t gso_size;
	uint16_t csum_start;
	uint16_t csum_offset;
} __attribute__((packed));

/* Internet checksum helpers (RFC 1071), folded to 16 bits. */
uint32_t wg_csum_partial(const uint8_t *data, size_t len, uint32_t sum);
uint16_t wg_csum_fold(uint32_t sum);

/* Completes a NEEDS_CSUM packet (checksum field at csum_start+csum_offset
 * holds the pseudo-header sum).  false if the offsets are out of range. */
bool wg_csum_complete(uint8_t *pkt, size_t len, const struct wg_vnet_hdr *h);

/* Splits a TSO packet into segments.  Segment i is written at
 * out + i * stride (each needs len <= stride); lens[i] receives its length.
 * Returns the number of segments, or 0 if the packet is malformed or not
 * TCP over IPv4/IPv6 without extension headers. */
size_t wg_tso_segment(const uint8_t *pkt, size_t len, const struct wg_vnet_hdr *h, uint8_t *out, size_t stride,
		      size_t *lens, size_t max_segs);

/* Length of the first (largest) segment wg_tso_segment would produce:
 * headers + min(MSS, payload); 0 if the packet cannot be segmented. */
size_t wg_tso_segment_len(const uint8_t *pkt, size_t len, const struct wg_vnet_hdr *h);

/* Coalescing: a packet can join the current super-packet `gro` when it is
 * the next in-order segment of the same TCP flow.  The caller keeps the
 * super-packet in a buffer of at least 65535 bytes. */
struct wg_gro {
	uint8_t *buf; /* super-packet under construction (IP packet) */
	size_t len;
	size_t hdr_len; /* IP + TCP header length */
	size_t mss;     /* payload size of the first segment */
	unsigned segs;
	int family;      /* 0 = empty */
	bool last_short; /* a shorter segment arrived: nothing may follow */
};

/* Tries to append pkt; true if it was merged (or started a new super-packet
 * when gro is empty).  false: flush gro first, then retry. */
bool wg_gro_add(struct wg_gro *gro, const uint8_t *pkt, size_t len);
/* Finalises the super-packet: fixes lengths and writes the virtio header
 * (GSO with a partial checksum, or a plain packet with DATA_VALID). */
void wg_gro_finish(struct wg_gro *gro, struct wg_vnet_hdr *h);
/* True if pkt is a TCP segment eligible to start coalescing. */
bool wg_gro_candidate(const uint8_t *pkt, size_t len);
#endif
