/* UDP sockets of an interface (IPv4 and IPv6 on one port) with batched
 * sending and receiving, and the local-address bookkeeping that makes
 * replies leave from the address a packet arrived on. */
#ifndef WG_UDP_H
#define WG_UDP_H
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "proto.h"

#define WG_UDP_BATCH 32
#define WG_UDP_MAX_DATAGRAM 65535

/* Opens and binds both sockets.  *port 0 picks a free port for both.
 * Returns 0 or a negative errno (-EADDRINUSE); either fd may be -1 when the
 * host lacks that family. */
int wg_udp_open(uint16_t *port, uint32_t fwmark, int *fd4, int *fd6);
int wg_udp_set_fwmark(int fd4, int fd6, uint32_t fwmark);
void wg_udp_close(int *fd4, int *fd6);

/* Several datagrams of `segsize` bytes (the last may be shorter), to one
 * endpoint, in one system call (UDP GSO).  total <= 65507. */
int wg_udp_send_gso(int fd4, int fd6, const struct wg_endpoint *to, const uint8_t *buf, size_t total, size_t segsize);

/* One datagram straight away (handshakes, control datagrams). */
int wg_udp_send(int fd4, int fd6, const struct wg_endpoint *to, const uint8_t *buf, size_t len);
/* Sends one datagram (never relayed, no source pinning) with an IPv4 TTL or
 * IPv6 hop limit of `ttl` (1-255) for this datagram only. */
int wg_udp_send_ttl(int fd4, int fd6, const struct wg_endpoint *to, const uint8_t *buf, size_t len, int ttl);

/* A batch of outgoing datagrams flushed with sendmmsg.  Buffers inside
 * [borrow_lo, borrow_hi) stay valid until the flush and are not copied. */
struct wg_send_batch {
	unsigned n;
	const uint8_t *borrow_lo, *borrow_hi;
	struct mmsghdr msgs[WG_UDP_BATCH];
	struct iovec iov[WG_UDP_BATCH][2]; /* [ChannelData header,] datagram */
	uint8_t chan_hdr[WG_UDP_BATCH][4];
	struct wg_endpoint eps[WG_UDP_BATCH];
	int family[WG_UDP_BATCH];
	uint8_t cmsg[WG_UDP_BATCH][64];
	uint8_t *copies; /* WG_UDP_BATCH * WG_UDP_MAX_DATAGRAM bytes */
};

int wg_send_batch_init(struct wg_send_batch *b);
void wg_send_batch_free(struct wg_send_batch *b);
/* Queues one datagram; flushes first if the batch is full. Returns the
 * number of datagrams that failed to send. */
unsigned wg_send_batch_add(struct wg_send_batch *b, int fd4, int fd6, const struct wg_endpoint *to, const uint8_t *buf,
			   size_t len);
unsigned wg_send_batch_flush(struct wg_send_batch *b, int fd4, int fd6);

/* TURN ChannelData framing: fills the 4-byte header for a datagram of len
 * bytes on channel. */
void wg_channel_header(uint8_t hdr[4], uint16_t channel, size_t len);
/* If buf is a ChannelData message, returns its channel and sets *inner /
 * *inner_len to the datagram inside; 0 otherwise. */
uint16_t wg_channel_unwrap(const uint8_t *buf, size_t len, const uint8_t **inner, size_t *inner_len);

/* Receiving: recvmmsg into preallocated buffers, with the local address of
 * each datagram recovered from IP_PKTINFO / IPV6_PKTINFO. */
struct wg_recv_batch {
	struct mmsghdr msgs[WG_UDP_BATCH];
	struct iovec iov[WG_UDP_BATCH];
	struct sockaddr_storage from[WG_UDP_BATCH];
	uint8_t cmsg[WG_UDP_BATCH][64];
	uint8_t *bufs; /* WG_UDP_BATCH * WG_UDP_MAX_DATAGRAM bytes */
};

int wg_recv_batch_init(struct wg_recv_batch *b);
void wg_recv_batch_free(struct wg_recv_batch *b);
/* Returns the number of datagrams received (0 when none), or -errno. */
int wg_recv_batch_read(struct wg_recv_batch *b, int fd);
/* Fills the endpoint of datagram i (source and local address) and returns
 * the UDP GRO segment size when the kernel coalesced several datagrams into
 * this buffer (0 = one datagram). */
size_t wg_recv_batch_endpoint(const struct wg_recv_batch *b, int i, struct wg_endpoint *ep);
#endif
