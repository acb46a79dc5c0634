/* UDP sockets: one IPv4 and one IPv6-only socket bound to the same port.
 * Sends carry the local source address learnt from the peer's last packet
 * (IP_PKTINFO / IPV6_PKTINFO) so that replies leave from the address the
 * peer talks to; if that address has gone, the send is retried without it. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "udp.h"

/* Large buffers stop the receive-buffer drops wireguard-go suffers at its
 * 212992-byte default; FORCE works as root, the plain call is the fallback. */
#define WG_SOCKET_BUFFER (8 << 20)

static void set_buffers(int fd)
{
	int sz = WG_SOCKET_BUFFER;

	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof(sz)) < 0)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof(sz)) < 0)
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
}

static int open_one(int family, uint16_t port, uint32_t fwmark, uint16_t *bound)
{
	int one = 1, fd, err;
	union {
		struct sockaddr sa;
		struct sockaddr_in in4;
		struct sockaddr_in6 in6;
	} a;
	socklen_t alen;

	fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	memset(&a, 0, sizeof(a));
	if (family == AF_INET) {
		a.in4.sin_family = AF_INET;
		a.in4.sin_port = htons(port);
		alen = sizeof(a.in4);
		setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one));
	} else {
		a.in6.sin6_family = AF_INET6;
		a.in6.sin6_port = htons(port);
		alen = sizeof(a.in6);
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
		setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof(one));
	}
	set_buffers(fd);
	/* Let the kernel hand us runs of same-size datagrams in one buffer. */
	setsockopt(fd, IPPROTO_UDP, UDP_GRO, &one, sizeof(one));
	if (fwmark && setsockopt(fd, SOL_SOCKET, SO_MARK, &fwmark, sizeof(fwmark)) < 0)
		goto fail;
	if (bind(fd, &a.sa, alen) < 0)
		goto fail;
	if (getsockname(fd, &a.sa, &alen) < 0)
		goto fail;
	*bound = ntohs(family == AF_INET ? a.in4.sin_port : a.in6.sin6_port);
	return fd;
fail:
	err = -errno;
	close(fd);
	return err;
}

int wg_udp_open(uint16_t *port, uint32_t fwmark, int *fd4, int *fd6)
{
	uint16_t bound = 0;
	int tries = *port ? 1 : 16;

	while (tries--) {
		int a = open_one(AF_INET, *port, fwmark, &bound), b;

		if (a < 0 && a != -EAFNOSUPPORT)
			return a;
		b = open_one(AF_INET6, a >= 0 ? bound : *port, fwmark, &bound);
		if (b == -EADDRINUSE && !*port && a >= 0) {
			close(a); /* the random v4 port is taken in v6: pick again */
			continue;
		}
		if (b < 0 && b != -EAFNOSUPPORT && b != -EADDRNOTAVAIL) {
			if (a >= 0)
				close(a);
			return b;
		}
		if (a < 0 && b < 0)
			return a;
		*fd4 = a;
		*fd6 = b < 0 ? -1 : b;
		*port = bound;
		return 0;
	}
	return -EADDRINUSE;
}

int wg_udp_set_fwmark(int fd4, int fd6, uint32_t fwmark)
{
	if (fd4 >= 0 && setsockopt(fd4, SOL_SOCKET, SO_MARK, &fwmark, sizeof(fwmark)) < 0)
		return -errno;
	if (fd6 >= 0 && setsockopt(fd6, SOL_SOCKET, SO_MARK, &fwmark, sizeof(fwmark)) < 0)
		return -errno;
	return 0;
}

void wg_udp_close(int *fd4, int *fd6)
{
	if (*fd4 >= 0)
		close(*fd4);
	if (*fd6 >= 0)
		close(*fd6);
	*fd4 = *fd6 = -1;
}

static bool has_src(const struct wg_endpoint *ep)
{
	if (ep->addr.sa.sa_family == AF_INET)
		return ep->src4.s_addr != 0;
	return !IN6_IS_ADDR_UNSPECIFIED(&ep->src6);
}

/* Builds msg_name and the source-address control message for ep. */
static void fill_msghdr(struct msghdr *mh, const struct wg_endpoint *ep, uint8_t *cbuf, size_t cbuflen, bool with_src)
{
	struct cmsghdr *c;

	mh->msg_name = (void *)&ep->addr;
	mh->msg_namelen = ep->addr.sa.sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
	mh->msg_control = NULL;
	mh->msg_controllen = 0;
	mh->msg_flags = 0;
	if (!with_src || !has_src(ep))
		return;
	memset(cbuf, 0, cbuflen);
	mh->msg_control = cbuf;
	if (ep->addr.sa.sa_family == AF_INET) {
		struct in_pktinfo pi = { .ipi_spec_dst = ep->src4, .ipi_ifindex = 0 };

		mh->msg_controllen = CMSG_SPACE(sizeof(pi));
		c = CMSG_FIRSTHDR(mh);
		c->cmsg_level = IPPROTO_IP;
		c->cmsg_type = IP_PKTINFO;
		c->cmsg_len = CMSG_LEN(sizeof(pi));
		memcpy(CMSG_DATA(c), &pi, sizeof(pi));
	} else {
		struct in6_pktinfo pi = { .ipi6_addr = ep->src6, .ipi6_ifindex = ep->src_ifindex };

		mh->msg_controllen = CMSG_SPACE(sizeof(pi));
		c = CMSG_FIRSTHDR(mh);
		c->cmsg_level = IPPROTO_IPV6;
		c->cmsg_type = IPV6_PKTINFO;
		c->cmsg_len = CMSG_LEN(sizeof(pi));
		memcpy(CMSG_DATA(c), &pi, sizeof(pi));
	}
}

void wg_channel_header(uint8_t hdr[4], uint16_t channel, size_t len)
{
	hdr[0] = (uint8_t)(channel >> 8);
	hdr[1] = (uint8_t)channel;
	hdr[2] = (uint8_t)(len >> 8);
	hdr[3] = (uint8_t)len;
}

uint16_t wg_channel_unwrap(const uint8_t *buf, size_t len, const uint8_t **inner, size_t *inner_len)
{
	uint16_t ch, l;

	/* Channel numbers are 0x4000-0x4FFF: the first two bits are 01,
	 * which neither WireGuard (types 1-4) nor STUN (00) ever starts with. */
	if (len < 4 || (buf[0] & 0xf0) != 0x40)
		return 0;
	ch = (uint16_t)(buf[0] << 8 | buf[1]);
	l = (uint16_t)(buf[2] << 8 | buf[3]);
	if ((size_t)l > len - 4)
		return 0;
	*inner = buf + 4;
	*inner_len = l; /* over UDP trailing padding, if any, is ignored */
	return ch;
}

static int fd_for(int fd4, int fd6, const struct wg_endpoint *ep)
{
	return ep->addr.sa.sa_family == AF_INET ? fd4 : ep->addr.sa.sa_family == AF_INET6 ? fd6 : -1;
}

int wg_udp_send(int fd4, int fd6, const struct wg_endpoint *to, const uint8_t *buf, size_t len)
{
	uint8_t hdr[4];
	struct iovec iov[2] = { { .iov_base = hdr, .iov_len = 4 }, { .iov_base = (void *)buf, .iov_len = len } };
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2 };
	uint8_t cbuf[64];
	int fd = fd_for(fd4, fd6, to);

	if (fd < 0)
		return -EAFNOSUPPORT;
	if (to->relay_channel) {
		wg_channel_header(hdr, to->relay_channel, len);
	} else {
		mh.msg_iov = &iov[1];
		mh.msg_iovlen = 1;
	}
	fill_msghdr(&mh, to, cbuf, sizeof(cbuf), true);
	if (sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0)
		return 0;
	if (mh.msg_control && (errno == EINVAL || errno == EADDRNOTAVAIL || errno == ENETUNREACH)) {
		fill_msghdr(&mh, to, cbuf, sizeof(cbuf), false);
		if (sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0)
			return 0;
	}
	return -errno;
}

int wg_udp_send_ttl(int fd4, int fd6, const struct wg_endpoint *to, const uint8_t *buf, size_t len, int ttl)
{
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} cbuf;
	struct cmsghdr *c;
	int fd = fd_for(fd4, fd6, to);

	if (fd < 0)
		return -EAFNOSUPPORT;
	if (ttl < 1 || ttl > 255)
		return -EINVAL;
	fill_msghdr(&mh, to, NULL, 0, false);
	memset(&cbuf, 0, sizeof(cbuf));
	mh.msg_control = cbuf.buf;
	mh.msg_controllen = sizeof(cbuf.buf);
	c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = to->addr.sa.sa_family == AF_INET ? IPPROTO_IP : IPPROTO_IPV6;
	c->cmsg_type = to->addr.sa.sa_family == AF_INET ? IP_TTL : IPV6_HOPLIMIT;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &ttl, sizeof(int));
	if (sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0)
		return 0;
	return -errno;
}

int wg_udp_send_gso(int fd4, int fd6, const struct wg_endpoint *to, const uint8_t *buf, size_t total, size_t segsize)
{
	struct iovec iov[2 * 64];
	uint8_t hdrs[64][4];
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 1 };
	uint8_t cbuf[128];
	struct cmsghdr *c;
	uint16_t gso = (uint16_t)segsize;
	int fd = fd_for(fd4, fd6, to);
	bool with_src = true;

	if (fd < 0)
		return -EAFNOSUPPORT;
	if (total <= segsize)
		return wg_udp_send(fd4, fd6, to, buf, total);
	if (!to->relay_channel) {
		iov[0].iov_base = (void *)buf;
		iov[0].iov_len = total;
	} else {
		/* Relayed: every segment gets its ChannelData header; the kernel
		 * cuts the gathered stream at segsize + 4. */
		size_t k = 0;

		for (size_t off = 0; off < total && k < 64; off += segsize, k++) {
			size_t l = total - off < segsize ? total - off : segsize;

			wg_channel_header(hdrs[k], to->relay_channel, l);
			iov[2 * k] = (struct iovec){ .iov_base = hdrs[k], .iov_len = 4 };
			iov[2 * k + 1] = (struct iovec){ .iov_base = (void *)(buf + off), .iov_len = l };
		}
		if (k * segsize < total)
			return -EMSGSIZE;
		mh.msg_iovlen = 2 * k;
		gso = (uint16_t)(segsize + 4);
	}
retry:
	fill_msghdr(&mh, to, cbuf, 64, with_src);
	/* Append the UDP_SEGMENT control message after any pktinfo. */
	{
		size_t used = mh.msg_controllen;

		if (!used)
			memset(cbuf, 0, sizeof(cbuf));
		mh.msg_control = cbuf;
		mh.msg_controllen = used + CMSG_SPACE(sizeof(gso));
		c = used ? CMSG_NXTHDR(&mh, CMSG_FIRSTHDR(&mh)) : CMSG_FIRSTHDR(&mh);
		c->cmsg_level = IPPROTO_UDP;
		c->cmsg_type = UDP_SEGMENT;
		c->cmsg_len = CMSG_LEN(sizeof(gso));
		memcpy(CMSG_DATA(c), &gso, sizeof(gso));
	}
	if (sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0)
		return 0;
	if (with_src && has_src(to) && (errno == EINVAL || errno == EADDRNOTAVAIL || errno == ENETUNREACH)) {
		with_src = false;
		goto retry;
	}
	return -errno;
}

int wg_send_batch_init(struct wg_send_batch *b)
{
	memset(b, 0, sizeof(*b));
	b->copies = malloc((size_t)WG_UDP_BATCH * WG_UDP_MAX_DATAGRAM);
	return b->copies ? 0 : -ENOMEM;
}

void wg_send_batch_free(struct wg_send_batch *b)
{
	free(b->copies);
	b->copies = NULL;
}

unsigned wg_send_batch_add(struct wg_send_batch *b, int fd4, int fd6, const struct wg_endpoint *to, const uint8_t *buf,
			   size_t len)
{
	unsigned failed = 0, i;

	if (len > WG_UDP_MAX_DATAGRAM)
		return 1;
	if (b->n == WG_UDP_BATCH)
		failed = wg_send_batch_flush(b, fd4, fd6);
	i = b->n++;
	b->eps[i] = *to;
	if (buf >= b->borrow_lo && buf + len <= b->borrow_hi) {
		b->iov[i][1].iov_base = (void *)buf;
	} else {
		memcpy(b->copies + (size_t)i * WG_UDP_MAX_DATAGRAM, buf, len);
		b->iov[i][1].iov_base = b->copies + (size_t)i * WG_UDP_MAX_DATAGRAM;
	}
	b->iov[i][1].iov_len = len;
	wg_channel_header(b->chan_hdr[i], to->relay_channel, len);
	b->iov[i][0] = (struct iovec){ .iov_base = b->chan_hdr[i], .iov_len = 4 };
	return failed;
}

/* Sends runs of datagrams of the same family with one sendmmsg each. */
unsigned wg_send_batch_flush(struct wg_send_batch *b, int fd4, int fd6)
{
	unsigned i = 0, failed = 0;

	for (unsigned k = 0; k < b->n; k++) {
		struct msghdr *mh = &b->msgs[k].msg_hdr;

		fill_msghdr(mh, &b->eps[k], b->cmsg[k], sizeof(b->cmsg[k]), true);
		/* the ChannelData header goes first only for relayed peers */
		mh->msg_iov = b->eps[k].relay_channel ? b->iov[k] : &b->iov[k][1];
		mh->msg_iovlen = b->eps[k].relay_channel ? 2 : 1;
	}
	while (i < b->n) {
		int family = b->eps[i].addr.sa.sa_family, fd = fd_for(fd4, fd6, &b->eps[i]);
		unsigned j = i;
		int r;

		while (j < b->n && b->eps[j].addr.sa.sa_family == family)
			j++;
		if (fd < 0) {
			failed += j - i;
			i = j;
			continue;
		}
		while (i < j) {
			r = sendmmsg(fd, &b->msgs[i], j - i, MSG_DONTWAIT | MSG_NOSIGNAL);
			if (r > 0) {
				i += (unsigned)r;
				continue;
			}
			/* The first one failed: send it alone (retrying without a stale
			 * source address), then carry on with the rest. */
			if (wg_udp_send(fd4, fd6, &b->eps[i], b->iov[i][1].iov_base, b->iov[i][1].iov_len) < 0)
				failed++;
			i++;
		}
	}
	b->n = 0;
	return failed;
}

int wg_recv_batch_init(struct wg_recv_batch *b)
{
	memset(b, 0, sizeof(*b));
	b->bufs = malloc((size_t)WG_UDP_BATCH * WG_UDP_MAX_DATAGRAM);
	return b->bufs ? 0 : -ENOMEM;
}

void wg_recv_batch_free(struct wg_recv_batch *b)
{
	free(b->bufs);
	b->bufs = NULL;
}

int wg_recv_batch_read(struct wg_recv_batch *b, int fd)
{
	int r;

	for (int i = 0; i < WG_UDP_BATCH; i++) {
		struct msghdr *mh = &b->msgs[i].msg_hdr;

		b->iov[i].iov_base = b->bufs + (size_t)i * WG_UDP_MAX_DATAGRAM;
		b->iov[i].iov_len = WG_UDP_MAX_DATAGRAM;
		mh->msg_iov = &b->iov[i];
		mh->msg_iovlen = 1;
		mh->msg_name = &b->from[i];
		mh->msg_namelen = sizeof(b->from[i]);
		mh->msg_control = b->cmsg[i];
		mh->msg_controllen = sizeof(b->cmsg[i]);
		mh->msg_flags = 0;
	}
	r = recvmmsg(fd, b->msgs, WG_UDP_BATCH, MSG_DONTWAIT, NULL);
	if (r < 0)
		return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
	return r;
}

size_t wg_recv_batch_endpoint(const struct wg_recv_batch *b, int i, struct wg_endpoint *ep)
{
	const struct msghdr *mh = &b->msgs[i].msg_hdr;
	struct cmsghdr *c;
	size_t seg = 0;

	memset(ep, 0, sizeof(*ep));
	if (b->from[i].ss_family == AF_INET)
		memcpy(&ep->addr.in4, &b->from[i], sizeof(struct sockaddr_in));
	else
		memcpy(&ep->addr.in6, &b->from[i], sizeof(struct sockaddr_in6));
	for (c = CMSG_FIRSTHDR((struct msghdr *)mh); c; c = CMSG_NXTHDR((struct msghdr *)mh, c)) {
		if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
			struct in_pktinfo pi;

			memcpy(&pi, CMSG_DATA(c), sizeof(pi));
			ep->src4 = pi.ipi_addr;
		} else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
			struct in6_pktinfo pi;

			memcpy(&pi, CMSG_DATA(c), sizeof(pi));
			ep->src6 = pi.ipi6_addr;
			ep->src_ifindex = pi.ipi6_ifindex;
		} else if (c->cmsg_level == IPPROTO_UDP && c->cmsg_type == UDP_GRO) {
			int gso;

			memcpy(&gso, CMSG_DATA(c), sizeof(gso));
			seg = gso > 0 ? (size_t)gso : 0;
		}
	}
	return seg;
}
