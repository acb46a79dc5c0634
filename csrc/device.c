/* One interface's engine: TUN device, UDP sockets, worker threads, UAPI
 * server, configuration and events.
 *
 * Threads (all created with signals blocked, so the owner's thread gets
 * SIGINT/SIGTERM):
 *   tun    reads IP packets in batches, encrypts, sends with sendmmsg;
 *   udp    receives datagrams with recvmmsg, decrypts transport data inline,
 *          queues handshakes, hands other datagrams to Lua as events;
 *   hs     does the Diffie-Hellman work of handshakes from a bounded queue,
 *          whose fill level is the "under load" signal for cookies;
 *   timer  sleeps on a timerfd set to the earliest protocol timer (hooks
 *          that arm an earlier one move the timerfd, without a wake-up);
 *   uapi   serves /var/run/wireguard/<ifname>.sock. */
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "device.h"
#include "netlink.h"
#include "offload.h"
#include "udp.h"
#include "uapi_server.h"

#define TUN_BATCH 32
/* Packets the UDP thread reads from the TUN device after light traffic. */
#define UDP_TUN_BATCH 4
#define TUN_BUF (WG_HEADROOM + 65535 + WG_TAILROOM)
/* Largest datagram of one TSO segment: MTU 65535 would not fit a GSO send. */
#define TSO_STRIDE_MAX (WG_HEADROOM + 9216 + WG_TAILROOM)

/* The send batch of the current worker thread, if it batches. */
static __thread struct wg_send_batch *tls_batch;

/* ---- proto callbacks ---- */

static void dev_clock(void *ctx, uint64_t *mono, uint64_t *real)
{
	struct timespec ts;

	/* Boot time keeps counting across suspend, like the kernel's timers. */
	if (mono) {
		clock_gettime(CLOCK_BOOTTIME, &ts);
		*mono = (uint64_t)ts.tv_sec * WG_NS_PER_SEC + (uint64_t)ts.tv_nsec;
	}
	if (real) {
		clock_gettime(CLOCK_REALTIME, &ts);
		*real = (uint64_t)ts.tv_sec * WG_NS_PER_SEC + (uint64_t)ts.tv_nsec;
	}
}

static uint64_t mono_now(void)
{
	uint64_t m;

	dev_clock(NULL, &m, NULL);
	return m;
}

static uint64_t real_now(void)
{
	uint64_t r;

	dev_clock(NULL, NULL, &r);
	return r;
}

static void dev_send_udp(void *ctx, const struct wg_endpoint *to, const uint8_t *buf, size_t len)
{
	struct wg_device *dev = ctx;
	unsigned failed;

	pthread_rwlock_rdlock(&dev->sock_lock);
	if (tls_batch)
		failed = wg_send_batch_add(tls_batch, dev->udp4, dev->udp6, to, buf, len);
	else
		failed = wg_udp_send(dev->udp4, dev->udp6, to, buf, len) < 0;
	pthread_rwlock_unlock(&dev->sock_lock);
	if (failed)
		atomic_fetch_add(&dev->stats.udp_send_errors, failed);
	atomic_fetch_add_explicit(&dev->stats.tx_packets, 1, memory_order_relaxed);
	if (to->relay_channel)
		atomic_fetch_add_explicit(&dev->stats.relay_tx_bytes, len + 4, memory_order_relaxed);
}

static void flush_batch(struct wg_device *dev, struct wg_send_batch *b)
{
	unsigned failed;

	if (!b->n)
		return;
	pthread_rwlock_rdlock(&dev->sock_lock);
	failed = wg_send_batch_flush(b, dev->udp4, dev->udp6);
	pthread_rwlock_unlock(&dev->sock_lock);
	if (failed)
		atomic_fetch_add(&dev->stats.udp_send_errors, failed);
}

/* The UDP receiver coalesces in-order TCP segments into one super-packet
 * per TUN write (userspace GRO); other packets are written one by one. */
static __thread struct wg_gro *tls_gro;
/* Packets the current thread wrote to the TUN device. */
static __thread unsigned tls_tun_writes;

static void tun_write(struct wg_device *dev, const struct wg_vnet_hdr *h, const uint8_t *ip, size_t len)
{
	struct iovec iov[2] = { { .iov_base = (void *)h, .iov_len = WG_VNET_HDR_LEN },
				{ .iov_base = (void *)ip, .iov_len = len } };

	tls_tun_writes++;
	if (writev(dev->tun_fd, iov, 2) < 0)
		atomic_fetch_add(&dev->stats.tun_write_errors, 1);
	else
		atomic_fetch_add_explicit(&dev->stats.rx_packets, 1, memory_order_relaxed);
}

static void gro_flush(struct wg_device *dev, struct wg_gro *g)
{
	struct wg_vnet_hdr h;

	if (!g->family)
		return;
	wg_gro_finish(g, &h);
	tun_write(dev, &h, g->buf, g->len);
	g->family = 0;
	g->len = 0;
	g->segs = 0;
}

static void dev_deliver(void *ctx, const uint8_t *ip, size_t len)
{
	struct wg_device *dev = ctx;
	struct wg_gro *g = tls_gro;
	struct wg_vnet_hdr h = { .flags = WG_VNET_F_DATA_VALID };

	if (g) {
		if (wg_gro_add(g, ip, len))
			return;
		gro_flush(dev, g);
		if (wg_gro_add(g, ip, len))
			return;
	}
	/* Authenticated by WireGuard, so the kernel need not verify checksums
	 * again (the kernel's WireGuard does the same). */
	tun_write(dev, &h, ip, len);
}

static void kick(int fd)
{
	uint64_t one = 1;

	if (write(fd, &one, sizeof(one)) < 0) {
		/* the counter is saturated: the reader is woken anyway */
	}
}

/* Programs the timer thread's timerfd for an absolute CLOCK_BOOTTIME
 * deadline (0: disarmed).  Caller holds dev->timer_lock. */
static void timer_program_locked(struct wg_device *dev, uint64_t deadline)
{
	struct itimerspec its = { 0 };

	if (deadline) {
		its.it_value.tv_sec = (time_t)(deadline / WG_NS_PER_SEC);
		its.it_value.tv_nsec = (long)(deadline % WG_NS_PER_SEC);
	}
	if (timerfd_settime(dev->timer_fd, TFD_TIMER_ABSTIME, &its, NULL) == 0)
		dev->timer_armed = deadline;
}

/* A hook armed a timer earlier than the earliest one known (proto
 * next_deadline was lowered).  Rather than waking the timer thread to
 * recompute, which costs a wake-up per packet of sparse traffic, move its
 * timerfd earlier: the thread sleeps on until the new deadline. */
static void dev_timer_kick(void *ctx)
{
	struct wg_device *dev = ctx;
	uint64_t d;

	pthread_mutex_lock(&dev->timer_lock);
	d = atomic_load(&dev->proto.next_deadline);
	if (d && (!dev->timer_armed || d < dev->timer_armed))
		timer_program_locked(dev, d);
	pthread_mutex_unlock(&dev->timer_lock);
}

static void push_event(struct wg_device *dev, struct wg_dev_event *ev)
{
	pthread_mutex_lock(&dev->ev_lock);
	if (dev->ev_count >= WG_EVENT_QUEUE_MAX) {
		pthread_mutex_unlock(&dev->ev_lock);
		atomic_fetch_add(&dev->stats.events_dropped, 1);
		free(ev);
		return;
	}
	ev->next = NULL;
	if (dev->ev_tail)
		dev->ev_tail->next = ev;
	else
		dev->ev_head = ev;
	dev->ev_tail = ev;
	dev->ev_count++;
	pthread_mutex_unlock(&dev->ev_lock);
	kick(dev->ev_fd);
}

static void dev_event(void *ctx, enum wg_event_type type, const uint8_t pub[32], const struct wg_endpoint *ep)
{
	struct wg_device *dev = ctx;
	struct wg_dev_event *ev = calloc(1, sizeof(*ev));

	if (!ev)
		return;
	ev->type = type == WG_EVENT_HANDSHAKE_COMPLETE ? WG_DEV_EVENT_HANDSHAKE
		   : type == WG_EVENT_ENDPOINT_CHANGED ? WG_DEV_EVENT_ENDPOINT
						       : WG_DEV_EVENT_STALE;
	memcpy(ev->public_key, pub, 32);
	if (ep)
		ev->ep = *ep;
	ev->time_real = real_now();
	push_event(dev, ev);
}

static const struct wg_proto_ops dev_ops = {
	.clock = dev_clock,
	.send_udp = dev_send_udp,
	.deliver = dev_deliver,
	.timer_kick = dev_timer_kick,
	.event = dev_event,
};

struct wg_dev_event *wg_device_pop_event(struct wg_device *dev)
{
	struct wg_dev_event *ev;
	uint64_t v;

	atomic_store(&dev->control_enabled, true);
	pthread_mutex_lock(&dev->ev_lock);
	ev = dev->ev_head;
	if (ev) {
		dev->ev_head = ev->next;
		if (!dev->ev_head)
			dev->ev_tail = NULL;
		dev->ev_count--;
	}
	if (!dev->ev_head) {
		/* Drain the eventfd so poll() sleeps until the next event. */
		if (read(dev->ev_fd, &v, sizeof(v)) < 0) {
			/* EAGAIN: already drained */
		}
	}
	pthread_mutex_unlock(&dev->ev_lock);
	return ev;
}

/* ---- threads ---- */

static bool wait_readable(int fd, int stop_fd, int timeout_ms)
{
	struct pollfd pfd[2] = { { .fd = fd, .events = POLLIN }, { .fd = stop_fd, .events = POLLIN } };

	while (poll(pfd, fd >= 0 ? 2 : 1, timeout_ms) < 0 && errno == EINTR)
		;
	if (fd < 0)
		return !(pfd[0].revents & POLLIN);
	return !(pfd[1].revents & POLLIN);
}

static bool stopping(int stop_fd)
{
	struct pollfd pfd = { .fd = stop_fd, .events = POLLIN };

	return poll(&pfd, 1, 0) > 0;
}

/* A TSO super-packet from the kernel: cut it into MTU-sized segments laid
 * out so that, encrypted in place, they form UDP GSO buffers. */
static void send_tso(struct wg_device *dev, uint8_t *gso, const uint8_t *pkt, size_t len, const struct wg_vnet_hdr *h,
		     unsigned mtu)
{
	size_t lens[WG_TSO_MAX_SEGS], seglen = wg_tso_segment_len(pkt, len, h);
	size_t d = wg_proto_datagram_len(seglen, mtu), n, per;
	uint8_t *pkts[WG_TSO_MAX_SEGS];
	struct wg_endpoint ep;

	if (!seglen || d > TSO_STRIDE_MAX) {
		atomic_fetch_add(&dev->proto.stats.tx_bad_offload, 1);
		return;
	}
	n = wg_tso_segment(pkt, len, h, gso + WG_HEADROOM, d, lens, WG_TSO_MAX_SEGS);
	if (!n) {
		atomic_fetch_add(&dev->proto.stats.tx_bad_offload, 1);
		return;
	}
	for (size_t i = 0; i < n; i++)
		pkts[i] = gso + WG_HEADROOM + i * d;
	if (!wg_proto_send_batch(&dev->proto, pkts, lens, n, mtu, &ep))
		return;
	/* One sendmsg per 64 KiB of datagrams (the UDP GSO limit), counting
	 * the ChannelData header a relayed peer's segments carry. */
	per = 65507 / (d + (ep.relay_channel ? 4 : 0));
	if (per > WG_TSO_MAX_SEGS)
		per = WG_TSO_MAX_SEGS;
	pthread_rwlock_rdlock(&dev->sock_lock);
	for (size_t i = 0; i < n; i += per) {
		size_t k = n - i < per ? n - i : per, total = (k - 1) * d + lens[i + k - 1];

		if (wg_udp_send_gso(dev->udp4, dev->udp6, &ep, gso + i * d, total, d) < 0) {
			/* GSO refused (e.g. by the route): send them one by one. */
			for (size_t j = i; j < i + k; j++)
				if (wg_udp_send(dev->udp4, dev->udp6, &ep, gso + j * d, lens[j]) < 0)
					atomic_fetch_add(&dev->stats.udp_send_errors, 1);
		}
	}
	pthread_rwlock_unlock(&dev->sock_lock);
	atomic_fetch_add_explicit(&dev->stats.tx_packets, n, memory_order_relaxed);
	if (ep.relay_channel) {
		size_t bytes = 4 * n;

		for (size_t i = 0; i < n; i++)
			bytes += lens[i];
		atomic_fetch_add_explicit(&dev->stats.relay_tx_bytes, bytes, memory_order_relaxed);
	}
}

/* Buffers of one thread that reads the TUN device. */
struct tun_reader {
	uint8_t *bufs; /* batch x TUN_BUF */
	uint8_t *gso;  /* WG_TSO_MAX_SEGS x TSO_STRIDE_MAX */
	struct wg_vnet_hdr hdrs[TUN_BATCH];
	size_t lens[TUN_BATCH];
	int batch;
};

static int tun_reader_init(struct tun_reader *r, int batch, struct wg_send_batch *sb)
{
	r->batch = batch;
	r->bufs = malloc((size_t)batch * TUN_BUF);
	r->gso = malloc((size_t)WG_TSO_MAX_SEGS * TSO_STRIDE_MAX);
	if (!r->bufs || !r->gso) {
		free(r->bufs);
		free(r->gso);
		r->bufs = r->gso = NULL;
		return -1;
	}
	/* Encrypted packets are sent from the read buffers without a copy. */
	sb->borrow_lo = r->bufs;
	sb->borrow_hi = r->bufs + (size_t)batch * TUN_BUF;
	return 0;
}

static void tun_reader_free(struct tun_reader *r)
{
	free(r->bufs);
	free(r->gso);
	r->bufs = r->gso = NULL;
}

/* Reads up to r->batch packets from the TUN device, encrypts and sends
 * them (flushing sb).  Returns how many it read.  The caller holds
 * dev->tun_read_lock, so that packets leave in the order they were read. */
static int tun_service(struct wg_device *dev, struct tun_reader *r, struct wg_send_batch *sb)
{
	int n = 0;
	unsigned mtu = atomic_load(&dev->mtu);

	while (n < r->batch) {
		struct iovec iov[2] = { { .iov_base = &r->hdrs[n], .iov_len = WG_VNET_HDR_LEN },
					{ .iov_base = r->bufs + (size_t)n * TUN_BUF + WG_HEADROOM, .iov_len = 65535 } };
		ssize_t len = readv(dev->tun_fd, iov, 2);

		if (len <= WG_VNET_HDR_LEN)
			break;
		r->lens[n++] = (size_t)len - WG_VNET_HDR_LEN;
	}
	for (int i = 0; i < n; i++) {
		uint8_t *pkt = r->bufs + (size_t)i * TUN_BUF + WG_HEADROOM;

		if (r->hdrs[i].gso_type != WG_VNET_GSO_NONE) {
			flush_batch(dev, sb); /* keep order with what is queued */
			send_tso(dev, r->gso, pkt, r->lens[i], &r->hdrs[i], mtu);
			continue;
		}
		if ((r->hdrs[i].flags & WG_VNET_F_NEEDS_CSUM) && !wg_csum_complete(pkt, r->lens[i], &r->hdrs[i])) {
			atomic_fetch_add(&dev->proto.stats.tx_bad_offload, 1);
			continue;
		}
		wg_proto_send_ip(&dev->proto, pkt, r->lens[i], mtu);
	}
	flush_batch(dev, sb);
	return n;
}

static void *tun_thread(void *arg)
{
	struct wg_device *dev = arg;
	struct wg_send_batch batch;
	struct tun_reader r;

	if (wg_send_batch_init(&batch) < 0)
		return NULL;
	if (tun_reader_init(&r, TUN_BATCH, &batch) < 0) {
		wg_send_batch_free(&batch);
		return NULL;
	}
	tls_batch = &batch;
	while (wait_readable(dev->tun_fd, dev->stop_fd, -1)) {
		pthread_mutex_lock(&dev->tun_read_lock);
		tun_service(dev, &r, &batch);
		pthread_mutex_unlock(&dev->tun_read_lock);
	}
	tls_batch = NULL;
	tun_reader_free(&r);
	wg_send_batch_free(&batch);
	return NULL;
}

/* Under load while the handshake queue is an eighth full, and for a
 * second after (as the kernel), so a flood cannot toggle it cheaply.
 * Caller holds hs_lock. */
static bool under_load_locked(struct wg_device *dev, uint64_t now)
{
	if (dev->hs_count >= WG_HANDSHAKE_QUEUE_MAX / 8)
		dev->last_under_load = now;
	return dev->last_under_load && now - dev->last_under_load < UNDER_LOAD_AFTER_TIME;
}

static void queue_handshake(struct wg_device *dev, const struct wg_endpoint *src, const uint8_t *buf, size_t len)
{
	struct wg_hs_item *it;
	uint64_t now = mono_now();
	bool under_load;

	pthread_mutex_lock(&dev->hs_lock);
	under_load = under_load_locked(dev, now);
	pthread_mutex_unlock(&dev->hs_lock);
	/* Under load, answer what lacks a cookie from here (as cheap as
	 * queueing it), so the queue holds only messages worth the DH. */
	if (under_load && wg_proto_answer_with_cookie(&dev->proto, src, buf, len))
		return;
	pthread_mutex_lock(&dev->hs_lock);
	if (dev->hs_count >= WG_HANDSHAKE_QUEUE_MAX) {
		pthread_mutex_unlock(&dev->hs_lock);
		atomic_fetch_add(&dev->stats.handshake_queue_dropped, 1);
		return;
	}
	it = &dev->hs_ring[(dev->hs_head + dev->hs_count) % WG_HANDSHAKE_QUEUE_MAX];
	it->src = *src;
	it->len = len;
	memcpy(it->data, buf, len);
	dev->hs_count++;
	pthread_cond_signal(&dev->hs_cond);
	pthread_mutex_unlock(&dev->hs_lock);
}

static void control_datagram(struct wg_device *dev, const struct wg_endpoint *src, const uint8_t *buf, size_t len)
{
	struct wg_dev_event *ev;

	atomic_fetch_add(&dev->proto.stats.rx_junk, 1);
	if (!atomic_load(&dev->control_enabled) || len > WG_CONTROL_MAX)
		return;
	ev = calloc(1, sizeof(*ev) + len);
	if (!ev)
		return;
	ev->type = WG_DEV_EVENT_DATAGRAM;
	ev->ep = *src;
	ev->len = len;
	ev->time_real = real_now();
	memcpy(ev->data, buf, len);
	push_event(dev, ev);
}

static bool sockaddr_equal(const struct sockaddr *a, const struct sockaddr_storage *b)
{
	if (a->sa_family != b->ss_family)
		return false;
	if (a->sa_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;

		return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;

	return x->sin6_port == y->sin6_port && !memcmp(&x->sin6_addr, &y->sin6_addr, 16);
}

static bool is_relay(struct wg_device *dev, const struct sockaddr *from)
{
	bool found = false;

	pthread_mutex_lock(&dev->relay_lock);
	for (unsigned i = 0; i < dev->nrelays && !found; i++)
		found = sockaddr_equal(from, &dev->relays[i]);
	pthread_mutex_unlock(&dev->relay_lock);
	return found;
}

static void receive_datagram(struct wg_device *dev, const struct wg_endpoint *from, uint8_t *buf, size_t len)
{
	const struct wg_endpoint *ep = from;
	struct wg_endpoint relayed;
	const uint8_t *inner;
	size_t inner_len;
	uint16_t ch;
	int type;

	/* ChannelData from a TURN server we use: the WireGuard datagram inside
	 * comes from the peer on that channel (the relay, not us, knows its
	 * address).  Checked on the first byte before any lookup. */
	if (atomic_load_explicit(&dev->relays_present, memory_order_relaxed) && len >= 4 && (buf[0] & 0xf0) == 0x40 &&
	    (ch = wg_channel_unwrap(buf, len, &inner, &inner_len)) && is_relay(dev, &from->addr.sa)) {
		relayed = *from;
		relayed.relay_channel = ch;
		ep = &relayed;
		atomic_fetch_add_explicit(&dev->stats.relay_rx_bytes, len, memory_order_relaxed);
		buf += inner - buf;
		len = inner_len;
	}
	type = wg_proto_message_type(buf, len);

	if (type == MESSAGE_DATA) {
		wg_proto_receive_data(&dev->proto, ep, buf, len);
	} else if (type) {
		/* mac1 before queueing: spoofed junk never reaches the DH worker
		 * or fills its queue. */
		if (wg_proto_check_mac1(&dev->proto, buf, len))
			queue_handshake(dev, ep, buf, len);
		else
			atomic_fetch_add(&dev->proto.stats.rx_bad_mac1, 1);
	} else {
		control_datagram(dev, ep, buf, len);
	}
}

static void *udp_thread(void *arg)
{
	struct wg_device *dev = arg;
	struct wg_recv_batch rb;
	struct wg_send_batch sb;
	struct wg_gro gro = { 0 };
	struct pollfd pfd[4];
	struct tun_reader tr = { 0 };

	if (wg_recv_batch_init(&rb) < 0)
		return NULL;
	if (wg_send_batch_init(&sb) < 0) {
		wg_recv_batch_free(&rb);
		return NULL;
	}
	if (tun_reader_init(&tr, UDP_TUN_BATCH, &sb) < 0)
		goto out;
	tls_batch = &sb;
	gro.buf = malloc(65536);
	if (!gro.buf)
		goto out;
	tls_gro = &gro;
	pfd[0] = (struct pollfd){ .fd = dev->stop_fd, .events = POLLIN };
	pfd[1] = (struct pollfd){ .fd = dev->udp_stop_fd, .events = POLLIN };
	pfd[2] = (struct pollfd){ .fd = dev->udp4, .events = POLLIN };
	pfd[3] = (struct pollfd){ .fd = dev->udp6, .events = POLLIN };
	for (;;) {
		int got = 0;

		tls_tun_writes = 0;
		if (poll(pfd, 4, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pfd[0].revents || pfd[1].revents)
			break;
		for (int s = 2; s < 4; s++) {
			int n;

			if (!(pfd[s].revents & POLLIN))
				continue;
			n = wg_recv_batch_read(&rb, pfd[s].fd);
			for (int i = 0; i < n; i++) {
				uint8_t *buf = rb.bufs + (size_t)i * WG_UDP_MAX_DATAGRAM;
				size_t len = rb.msgs[i].msg_len, seg;
				struct wg_endpoint ep;

				if (rb.msgs[i].msg_hdr.msg_flags & MSG_TRUNC) {
					atomic_fetch_add(&dev->proto.stats.rx_junk, 1);
					continue;
				}
				/* With UDP_GRO one buffer may hold several datagrams of
				 * the same size (the last may be shorter). */
				seg = wg_recv_batch_endpoint(&rb, i, &ep);
				if (!seg || seg > len)
					seg = len;
				for (size_t off = 0; off < len; off += seg, got++)
					receive_datagram(dev, &ep, buf + off, len - off < seg ? len - off : seg);
			}
		}
		gro_flush(dev, &gro);
		flush_batch(dev, &sb);
		/* Light traffic: what we just wrote to the TUN device often has
		 * its answer (an echo reply, an ACK) queued by the time the write
		 * returns.  Encrypt and send it from here rather than waking the
		 * TUN thread: that saves a thread wake-up per round trip.  Under
		 * load the TUN thread does this work on the other core. */
		if (tls_tun_writes && got <= UDP_TUN_BATCH && pthread_mutex_trylock(&dev->tun_read_lock) == 0) {
			tun_service(dev, &tr, &sb);
			pthread_mutex_unlock(&dev->tun_read_lock);
		}
	}
out:
	tun_reader_free(&tr);
	tls_gro = NULL;
	tls_batch = NULL;
	free(gro.buf);
	wg_send_batch_free(&sb);
	wg_recv_batch_free(&rb);
	return NULL;
}

static void *hs_thread(void *arg)
{
	struct wg_device *dev = arg;
	struct wg_hs_item it;
	bool under_load;

	for (;;) {
		pthread_mutex_lock(&dev->hs_lock);
		/* No timeout: an idle engine must not wake up.  stop_all_threads()
		 * raises the stop flag, then broadcasts under hs_lock. */
		while (!dev->hs_count && !stopping(dev->stop_fd))
			pthread_cond_wait(&dev->hs_cond, &dev->hs_lock);
		if (!dev->hs_count) {
			pthread_mutex_unlock(&dev->hs_lock);
			break;
		}
		it = dev->hs_ring[dev->hs_head];
		dev->hs_head = (dev->hs_head + 1) % WG_HANDSHAKE_QUEUE_MAX;
		under_load = under_load_locked(dev, mono_now());
		dev->hs_count--;
		pthread_mutex_unlock(&dev->hs_lock);
		wg_proto_receive_handshake(&dev->proto, &it.src, it.data, it.len, under_load);
	}
	return NULL;
}

static void *timer_thread(void *arg)
{
	struct wg_device *dev = arg;
	struct pollfd pfd[2] = { { .fd = dev->stop_fd, .events = POLLIN }, { .fd = dev->timer_fd, .events = POLLIN } };

	for (;;) {
		uint64_t v;

		wg_proto_tick(&dev->proto);
		/* Hooks may have lowered next_deadline while we ticked; what we
		 * program here is the minimum of theirs and ours. */
		pthread_mutex_lock(&dev->timer_lock);
		timer_program_locked(dev, atomic_load(&dev->proto.next_deadline));
		pthread_mutex_unlock(&dev->timer_lock);
		if (poll(pfd, 2, -1) < 0 && errno != EINTR)
			break;
		if (pfd[0].revents)
			break;
		if (pfd[1].revents && read(dev->timer_fd, &v, sizeof(v)) < 0) {
			/* EAGAIN: re-armed meanwhile */
		}
	}
	return NULL;
}

static int start_thread(pthread_t *t, void *(*fn)(void *), void *arg)
{
	sigset_t all, old;
	int r;

	/* Workers never take the owner's signals (SIGINT/SIGTERM/SIGPIPE). */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	r = pthread_create(t, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return -r;
}

/* The UDP receiver is restarted when the listen port changes: it polls the
 * sockets it saw at start, so it is stopped, the sockets are swapped, and a
 * new one starts on the new sockets. */
static int udp_thread_start(struct wg_device *dev)
{
	int r = start_thread(&dev->udp_thread, udp_thread, dev);

	dev->udp_running = r == 0;
	return r;
}

static void udp_thread_stop(struct wg_device *dev)
{
	uint64_t v;

	if (!dev->udp_running)
		return;
	kick(dev->udp_stop_fd);
	pthread_join(dev->udp_thread, NULL);
	dev->udp_running = false;
	if (read(dev->udp_stop_fd, &v, sizeof(v)) < 0) {
		/* already drained */
	}
}

/* ---- TUN ---- */

static int tun_open(const char *ifname, char *msg, size_t msglen)
{
	struct ifreq ifr;
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);

	if (fd < 0) {
		int e = errno;

		snprintf(msg, msglen, "cannot open /dev/net/tun: %s%s", strerror(e),
			 e == EPERM || e == EACCES ? " (needs CAP_NET_ADMIN)" : "");
		return -e;
	}
	memset(&ifr, 0, sizeof(ifr));
	/* virtio-net headers carry TSO super-packets from the kernel (read) and
	 * coalesced segments and checksum state to it (write). */
	ifr.ifr_flags = IFF_TUN | IFF_NO_PI | IFF_VNET_HDR;
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
	if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
		int e = errno;

		if (e == EPERM)
			snprintf(msg, msglen, "cannot create interface \"%s\": permission denied: needs CAP_NET_ADMIN",
				 ifname);
		else if (e == EBUSY)
			snprintf(msg, msglen,
				 "cannot create interface \"%s\": it exists and is in use by another process", ifname);
		else if (e == EINVAL)
			snprintf(msg, msglen, "cannot create interface \"%s\": a link of another type has that name",
				 ifname);
		else
			snprintf(msg, msglen, "cannot create interface \"%s\": %s", ifname, strerror(e));
		close(fd);
		return -e;
	}
	/* A persistent TUN of that name (left by some tool) would outlive us:
	 * make ours go away with our descriptor. */
	ioctl(fd, TUNSETPERSIST, 0);
	/* Ask for TCP segmentation offload; without it the kernel segments
	 * itself and everything still works, only slower. */
	if (ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) < 0)
		fprintf(stderr, "%s: TUN offloads unavailable (%s): running without\n", ifname, strerror(errno));
	if (fcntl(fd, F_SETFL, O_NONBLOCK) < 0) {
		int e = errno;

		close(fd);
		return -e;
	}
	return fd;
}

/* ---- lifecycle ---- */

struct wg_device *wg_device_create(const char *ifname, const struct wg_device_opts *opts, int *err, char *msg,
				   size_t msglen)
{
	struct wg_device *dev;
	unsigned mtu = opts && opts->mtu ? opts->mtu : WG_DEFAULT_MTU;
	int r;

	msg[0] = '\0';
	if (!ifname || !*ifname || strlen(ifname) >= IFNAMSIZ || strchr(ifname, '/') || !strcmp(ifname, ".") ||
	    !strcmp(ifname, "..")) {
		*err = -EINVAL;
		snprintf(msg, msglen, "interface name \"%s\" invalid: 1 to %d bytes, no '/'", ifname ? ifname : "",
			 IFNAMSIZ - 1);
		return NULL;
	}
	dev = calloc(1, sizeof(*dev));
	if (!dev) {
		*err = -ENOMEM;
		snprintf(msg, msglen, "out of memory");
		return NULL;
	}
	snprintf(dev->ifname, sizeof(dev->ifname), "%s", ifname);
	dev->tun_fd = dev->udp4 = dev->udp6 = dev->stop_fd = dev->timer_fd = dev->udp_stop_fd = dev->ev_fd =
		dev->uapi_fd = -1;
	pthread_rwlock_init(&dev->sock_lock, NULL);
	pthread_mutex_init(&dev->cfg_mutex, NULL);
	pthread_mutex_init(&dev->hs_lock, NULL);
	pthread_cond_init(&dev->hs_cond, NULL);
	pthread_mutex_init(&dev->ev_lock, NULL);
	pthread_mutex_init(&dev->tun_read_lock, NULL);
	pthread_mutex_init(&dev->timer_lock, NULL);
	pthread_mutex_init(&dev->relay_lock, NULL);
	atomic_init(&dev->mtu, mtu);

	r = wg_proto_init(&dev->proto, &dev_ops, dev);
	if (r < 0) {
		snprintf(msg, msglen, "cannot initialise the protocol state: %s", strerror(-r));
		goto fail_early;
	}
	dev->hs_ring = calloc(WG_HANDSHAKE_QUEUE_MAX, sizeof(*dev->hs_ring));
	dev->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	dev->timer_fd = timerfd_create(CLOCK_BOOTTIME, TFD_CLOEXEC | TFD_NONBLOCK);
	dev->udp_stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	dev->ev_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (!dev->hs_ring || dev->stop_fd < 0 || dev->timer_fd < 0 || dev->udp_stop_fd < 0 || dev->ev_fd < 0) {
		r = -ENOMEM;
		snprintf(msg, msglen, "cannot allocate engine resources");
		goto fail;
	}
	/* The UAPI socket first: it tells whether another live engine already
	 * serves this name (then we must not touch anything). */
	if (opts && opts->uapi) {
		r = wg_uapi_server_listen(dev, msg, msglen);
		if (r < 0)
			goto fail;
	}
	r = tun_open(ifname, msg, msglen);
	if (r < 0)
		goto fail;
	dev->tun_fd = r;
	dev->ifindex = wg_nl_ifindex(ifname);
	if (dev->ifindex > 0)
		wg_nl_link_set_mtu(dev->ifindex, mtu);
	r = wg_udp_open(&dev->listen_port, 0, &dev->udp4, &dev->udp6);
	if (r < 0) {
		snprintf(msg, msglen, "cannot open UDP sockets: %s", strerror(-r));
		goto fail;
	}
	if ((r = start_thread(&dev->tun_thread, tun_thread, dev)) < 0 ||
	    (r = start_thread(&dev->hs_thread, hs_thread, dev)) < 0 ||
	    (r = start_thread(&dev->timer_thread, timer_thread, dev)) < 0) {
		snprintf(msg, msglen, "cannot start threads: %s", strerror(-r));
		goto fail;
	}
	dev->threads_running = true;
	if ((r = udp_thread_start(dev)) < 0) {
		snprintf(msg, msglen, "cannot start threads: %s", strerror(-r));
		goto fail;
	}
	if (dev->uapi_fd >= 0 && (r = wg_uapi_server_start(dev)) < 0) {
		snprintf(msg, msglen, "cannot start the UAPI server: %s", strerror(-r));
		goto fail;
	}
	return dev;

fail:
	*err = r;
	wg_device_destroy(dev);
	return NULL;
fail_early:
	*err = r;
	free(dev);
	return NULL;
}

static void stop_all_threads(struct wg_device *dev)
{
	kick(dev->stop_fd);
	pthread_mutex_lock(&dev->hs_lock);
	pthread_cond_broadcast(&dev->hs_cond);
	pthread_mutex_unlock(&dev->hs_lock);
	if (dev->uapi_running)
		pthread_join(dev->uapi_thread, NULL);
	if (dev->udp_running)
		pthread_join(dev->udp_thread, NULL);
	if (dev->threads_running) {
		pthread_join(dev->tun_thread, NULL);
		pthread_join(dev->hs_thread, NULL);
		pthread_join(dev->timer_thread, NULL);
	}
	dev->uapi_running = dev->udp_running = dev->threads_running = false;
}

void wg_device_destroy(struct wg_device *dev)
{
	struct wg_dev_event *ev;

	if (!dev)
		return;
	stop_all_threads(dev);
	wg_uapi_server_close(dev);
	if (dev->tun_fd >= 0)
		close(dev->tun_fd); /* a non-persistent TUN goes away with its fd */
	wg_udp_close(&dev->udp4, &dev->udp6);
	wg_proto_destroy(&dev->proto);
	while ((ev = dev->ev_head)) {
		dev->ev_head = ev->next;
		free(ev);
	}
	if (dev->hs_ring) {
		sodium_memzero(dev->hs_ring, WG_HANDSHAKE_QUEUE_MAX * sizeof(*dev->hs_ring));
		free(dev->hs_ring);
	}
	if (dev->stop_fd >= 0)
		close(dev->stop_fd);
	if (dev->timer_fd >= 0)
		close(dev->timer_fd);
	if (dev->udp_stop_fd >= 0)
		close(dev->udp_stop_fd);
	if (dev->ev_fd >= 0)
		close(dev->ev_fd);
	pthread_rwlock_destroy(&dev->sock_lock);
	pthread_mutex_destroy(&dev->cfg_mutex);
	pthread_mutex_destroy(&dev->hs_lock);
	pthread_cond_destroy(&dev->hs_cond);
	pthread_mutex_destroy(&dev->ev_lock);
	pthread_mutex_destroy(&dev->tun_read_lock);
	pthread_mutex_destroy(&dev->timer_lock);
	pthread_mutex_destroy(&dev->relay_lock);
	sodium_memzero(dev, sizeof(*dev));
	free(dev);
}

/* ---- configuration ---- */

static int rebind(struct wg_device *dev, uint16_t port, uint32_t fwmark, char *msg, size_t msglen)
{
	int fd4 = -1, fd6 = -1, old4, old6, r;
	uint16_t p = port;

	/* Open the new sockets before touching the old ones, so a port in use
	 * leaves everything as it was. */
	r = wg_udp_open(&p, fwmark, &fd4, &fd6);
	if (r < 0) {
		snprintf(msg, msglen, "cannot listen on UDP port %u: %s", port, strerror(-r));
		return r;
	}
	udp_thread_stop(dev);
	pthread_rwlock_wrlock(&dev->sock_lock);
	old4 = dev->udp4;
	old6 = dev->udp6;
	dev->udp4 = fd4;
	dev->udp6 = fd6;
	dev->listen_port = p;
	dev->fwmark = fwmark;
	pthread_rwlock_unlock(&dev->sock_lock);
	wg_udp_close(&old4, &old6);
	r = udp_thread_start(dev);
	if (r < 0)
		snprintf(msg, msglen, "cannot restart the UDP receiver: %s", strerror(-r));
	return r;
}

int wg_device_apply(struct wg_device *dev, const struct wg_uapi_set *set, char *msg, size_t msglen)
{
	struct wg_proto *p = &dev->proto;
	int r = 0;

	msg[0] = '\0';
	pthread_mutex_lock(&dev->cfg_mutex);
	/* Things that can fail for reasons outside the message come first, so
	 * that a failure leaves the configuration as it was. */
	if ((set->has_listen_port && set->listen_port != dev->listen_port) ||
	    (set->has_listen_port && set->listen_port == 0)) {
		r = rebind(dev, set->listen_port, set->has_fwmark ? set->fwmark : dev->fwmark, msg, msglen);
		if (r < 0)
			goto out;
	} else if (set->has_fwmark && set->fwmark != dev->fwmark) {
		pthread_rwlock_rdlock(&dev->sock_lock);
		r = wg_udp_set_fwmark(dev->udp4, dev->udp6, set->fwmark);
		pthread_rwlock_unlock(&dev->sock_lock);
		if (r < 0) {
			snprintf(msg, msglen, "cannot set fwmark %u: %s", set->fwmark, strerror(-r));
			goto out;
		}
		dev->fwmark = set->fwmark;
	}

	wg_proto_cfg_wrlock(p);
	if (set->has_private_key)
		wg_proto_set_private_key_locked(p, set->private_key);
	if (set->replace_peers)
		wg_peer_remove_all_locked(p);
	for (size_t i = 0; i < set->n_peers; i++) {
		const struct wg_uapi_peer *op = &set->peers[i];
		struct wg_peer *peer = wg_peer_lookup_locked(p, op->public_key);
		int err;

		if (op->remove) {
			if (peer)
				wg_peer_remove_locked(p, peer);
			continue;
		}
		if (!peer) {
			if (op->update_only)
				continue;
			peer = wg_peer_create_locked(p, op->public_key, &err);
			if (!peer) {
				if (err == -EINVAL)
					continue; /* our own public key: ignored, as wg(8) expects */
				r = err;
				snprintf(msg, msglen, "cannot add peer: %s", strerror(-err));
				break;
			}
		}
		if (op->has_preshared_key)
			wg_peer_set_preshared_key(peer, op->preshared_key);
		if (op->has_endpoint)
			wg_peer_set_endpoint(peer, &op->endpoint.sa);
		if (op->replace_allowed_ips)
			wg_peer_aip_clear_locked(p, peer);
		for (size_t k = 0; k < op->n_aips; k++) {
			const struct wg_uapi_aip *a = &op->aips[k];

			if (a->remove) {
				wg_peer_aip_remove_locked(p, peer, a->family, a->addr, a->cidr);
			} else if ((err = wg_peer_aip_insert_locked(p, peer, a->family, a->addr, a->cidr)) < 0) {
				r = err;
				snprintf(msg, msglen, "cannot add allowed ip: %s", strerror(-err));
				break;
			}
		}
		/* Last, so that a keepalive sent by enabling it finds the
		 * endpoint and keys set above. */
		if (op->has_keepalive)
			wg_peer_set_keepalive(peer, op->keepalive);
		if (r < 0)
			break;
	}
	wg_proto_cfg_unlock(p);
out:
	pthread_mutex_unlock(&dev->cfg_mutex);
	return r;
}

static void aip_cb(void *arg, int family, const uint8_t *addr, uint8_t cidr)
{
	wg_uapi_put_allowed_ip(arg, family, addr, cidr);
}

/* The reply to get=1, formatted by uapi.c from a walk of the peers. */
int wg_device_get_uapi(struct wg_device *dev, char **out, size_t *outlen)
{
	struct wg_proto *p = &dev->proto;
	struct wg_uapi_writer w = { 0 };
	struct wg_peer *peer;

	pthread_mutex_lock(&dev->cfg_mutex);
	wg_proto_cfg_rdlock(p);
	wg_uapi_put_interface(&w, p->has_identity ? p->static_private : NULL, dev->listen_port, dev->fwmark);
	for (peer = p->peers_head; peer; peer = peer->next) {
		struct wg_peer_info info;
		struct wg_uapi_peer_state st;

		wg_peer_info(peer, &info);
		memset(&st, 0, sizeof(st));
		memcpy(st.public_key, info.public_key, WG_KEY_LEN);
		memcpy(st.preshared_key, info.preshared_key, WG_KEY_LEN);
		st.endpoint = info.has_endpoint ? &info.endpoint.addr.sa : NULL;
		st.last_handshake_ns = info.last_handshake_real;
		st.tx_bytes = info.tx_bytes;
		st.rx_bytes = info.rx_bytes;
		st.persistent_keepalive = info.persistent_keepalive;
		wg_uapi_put_peer(&w, &st);
		wg_allowedips_foreach(&peer->aips, aip_cb, &w);
		sodium_memzero(&info, sizeof(info));
		sodium_memzero(&st, sizeof(st));
	}
	wg_proto_cfg_unlock(p);
	pthread_mutex_unlock(&dev->cfg_mutex);
	return wg_uapi_writer_finish(&w, out, outlen);
}

/* arr (n of *cap elements of size bytes) with room for one more, possibly
 * moved; NULL when out of memory (arr is then unchanged). */
static void *snap_grow(void *arr, size_t *cap, size_t n, size_t size)
{
	size_t ncap;

	if (n < *cap)
		return arr;
	ncap = *cap ? *cap * 2 : 16;
	if (ncap > SIZE_MAX / size || !(arr = realloc(arr, ncap * size)))
		return NULL;
	*cap = ncap;
	return arr;
}

struct snap_walk {
	struct wg_device_snapshot *snap;
	bool oom;
};

static void snap_aip(void *arg, int family, const uint8_t *addr, uint8_t cidr)
{
	struct snap_walk *wk = arg;
	struct wg_device_snapshot *snap = wk->snap;
	struct wg_device_snapshot_aip *a;

	if (wk->oom)
		return;
	a = snap_grow(snap->aips, &snap->cap_aips, snap->n_aips, sizeof(*a));
	if (!a) {
		wk->oom = true;
		return;
	}
	snap->aips = a;
	a = &snap->aips[snap->n_aips++];
	memset(a, 0, sizeof(*a));
	a->family = (uint8_t)family;
	a->cidr = cidr;
	memcpy(a->addr, addr, family == AF_INET ? 4 : 16);
	snap->peers[snap->n_peers - 1].n_aips++;
}

int wg_device_snapshot(struct wg_device *dev, struct wg_device_snapshot *snap)
{
	struct snap_walk wk = { .snap = snap };
	struct wg_peer *peer;

	pthread_mutex_lock(&dev->cfg_mutex);
	wg_proto_cfg_rdlock(&dev->proto);
	for (peer = dev->proto.peers_head; peer && !wk.oom; peer = peer->next) {
		struct wg_device_snapshot_peer *sp;
		struct wg_peer_info info;

		sp = snap_grow(snap->peers, &snap->cap_peers, snap->n_peers, sizeof(*sp));
		if (!sp) {
			wk.oom = true;
			break;
		}
		snap->peers = sp;
		sp = &snap->peers[snap->n_peers++];
		memset(sp, 0, sizeof(*sp));
		wg_peer_info(peer, &info);
		memcpy(sp->public_key, info.public_key, sizeof(sp->public_key));
		sp->has_endpoint = info.has_endpoint;
		sp->endpoint = info.endpoint;
		sp->last_handshake_real = info.last_handshake_real;
		sp->rx_bytes = info.rx_bytes;
		sp->tx_bytes = info.tx_bytes;
		sp->persistent_keepalive = info.persistent_keepalive;
		sodium_memzero(&info, sizeof(info));
		sp->first_aip = snap->n_aips;
		wg_allowedips_foreach(&peer->aips, snap_aip, &wk);
	}
	wg_proto_cfg_unlock(&dev->proto);
	snap->has_public_key = wg_proto_get_public_key(&dev->proto, snap->public_key);
	snap->listen_port = dev->listen_port;
	snap->fwmark = dev->fwmark;
	pthread_mutex_unlock(&dev->cfg_mutex);
	memcpy(snap->ifname, dev->ifname, sizeof(snap->ifname));
	snap->mtu = atomic_load(&dev->mtu);
	return wk.oom ? -ENOMEM : 0;
}

void wg_device_snapshot_free(struct wg_device_snapshot *snap)
{
	free(snap->peers);
	free(snap->aips);
	memset(snap, 0, sizeof(*snap));
}

void wg_device_get_stats(struct wg_device *dev, struct wg_device_counters *out)
{
	const struct wg_proto_stats *ps = &dev->proto.stats;
	const struct wg_device_stats *ds = &dev->stats;

	out->rx_junk = atomic_load(&ps->rx_junk);
	out->rx_bad_mac1 = atomic_load(&ps->rx_bad_mac1);
	out->rx_cookie_sent = atomic_load(&ps->rx_cookie_sent);
	out->rx_ratelimited = atomic_load(&ps->rx_ratelimited);
	out->rx_handshake_invalid = atomic_load(&ps->rx_handshake_invalid);
	out->rx_unknown_index = atomic_load(&ps->rx_unknown_index);
	out->rx_decrypt_failed = atomic_load(&ps->rx_decrypt_failed);
	out->rx_replayed = atomic_load(&ps->rx_replayed);
	out->rx_expired_key = atomic_load(&ps->rx_expired_key);
	out->rx_bad_inner = atomic_load(&ps->rx_bad_inner);
	out->rx_wrong_source = atomic_load(&ps->rx_wrong_source);
	out->tx_no_route = atomic_load(&ps->tx_no_route);
	out->tx_staged_dropped = atomic_load(&ps->tx_staged_dropped);
	out->tx_bad_offload = atomic_load(&ps->tx_bad_offload);
	out->handshakes_completed = atomic_load(&ps->handshakes_completed);
	out->tx_initiations = atomic_load(&ps->tx_initiations);
	out->tx_responses = atomic_load(&ps->tx_responses);
	out->rx_initiations = atomic_load(&ps->rx_initiations);
	out->rx_responses = atomic_load(&ps->rx_responses);
	out->relay_rx_bytes = atomic_load(&ds->relay_rx_bytes);
	out->relay_tx_bytes = atomic_load(&ds->relay_tx_bytes);
	out->rx_packets = atomic_load(&ds->rx_packets);
	out->tx_packets = atomic_load(&ds->tx_packets);
	out->handshake_queue_dropped = atomic_load(&ds->handshake_queue_dropped);
	out->events_dropped = atomic_load(&ds->events_dropped);
	out->tun_write_errors = atomic_load(&ds->tun_write_errors);
	out->udp_send_errors = atomic_load(&ds->udp_send_errors);
	out->live_keypairs = atomic_load(&dev->proto.live_keypairs);
}

const char *wg_device_ifname(const struct wg_device *dev)
{
	return dev->ifname;
}

int wg_device_enable_control(struct wg_device *dev)
{
	atomic_store(&dev->control_enabled, true);
	return dev->ev_fd;
}

void wg_device_set_mtu_hint(struct wg_device *dev, unsigned mtu)
{
	atomic_store(&dev->mtu, mtu);
}

int wg_device_send_datagram(struct wg_device *dev, const struct sockaddr *to, const uint8_t *buf, size_t len, int ttl)
{
	struct wg_endpoint ep;
	int r;

	memset(&ep, 0, sizeof(ep));
	if (to->sa_family == AF_INET)
		memcpy(&ep.addr.in4, to, sizeof(struct sockaddr_in));
	else if (to->sa_family == AF_INET6)
		memcpy(&ep.addr.in6, to, sizeof(struct sockaddr_in6));
	else
		return -EAFNOSUPPORT;
	pthread_rwlock_rdlock(&dev->sock_lock);
	if (ttl > 0)
		r = wg_udp_send_ttl(dev->udp4, dev->udp6, &ep, buf, len, ttl);
	else
		r = wg_udp_send(dev->udp4, dev->udp6, &ep, buf, len);
	pthread_rwlock_unlock(&dev->sock_lock);
	return r;
}

int wg_device_set_relay(struct wg_device *dev, const struct sockaddr *server, bool add)
{
	int r = 0;
	unsigned i;

	pthread_mutex_lock(&dev->relay_lock);
	for (i = 0; i < dev->nrelays; i++)
		if (sockaddr_equal(server, &dev->relays[i]))
			break;
	if (add && i == dev->nrelays) {
		if (dev->nrelays == WG_MAX_RELAYS) {
			r = -ENOSPC;
		} else {
			memset(&dev->relays[i], 0, sizeof(dev->relays[i]));
			memcpy(&dev->relays[i], server,
			       server->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
			dev->nrelays++;
		}
	} else if (!add && i < dev->nrelays) {
		dev->relays[i] = dev->relays[--dev->nrelays];
	}
	atomic_store(&dev->relays_present, dev->nrelays);
	pthread_mutex_unlock(&dev->relay_lock);
	return r;
}

/* The peer with that public key, referenced (wg_peer_put), or NULL. */
static struct wg_peer *get_peer(struct wg_device *dev, const uint8_t public_key[32])
{
	struct wg_peer *peer;

	wg_proto_cfg_rdlock(&dev->proto);
	peer = wg_peer_lookup_locked(&dev->proto, public_key);
	if (peer)
		wg_peer_get(peer);
	wg_proto_cfg_unlock(&dev->proto);
	return peer;
}

int wg_device_set_peer_relay(struct wg_device *dev, const uint8_t public_key[32], const struct sockaddr *server,
			     uint16_t channel)
{
	struct wg_peer *peer;

	if (channel && (channel < 0x4000 || channel > 0x4fff))
		return -EINVAL;
	peer = get_peer(dev, public_key);
	if (!peer)
		return -ENOENT;
	wg_peer_set_relay_endpoint(peer, server, channel);
	wg_peer_put(peer);
	return 0;
}

int wg_device_initiate(struct wg_device *dev, const uint8_t public_key[32])
{
	struct wg_peer *peer = get_peer(dev, public_key);

	if (!peer)
		return -ENOENT;
	wg_peer_initiate_handshake(peer, false);
	wg_peer_put(peer);
	return 0;
}

/* Key rotation (see wg_proto_rotate_private_key_locked and
 * wg_peer_set_public_key_locked): sessions survive both. */
int wg_device_rotate_private_key(struct wg_device *dev, const uint8_t key[32])
{
	int r;

	pthread_mutex_lock(&dev->cfg_mutex);
	wg_proto_cfg_wrlock(&dev->proto);
	r = wg_proto_rotate_private_key_locked(&dev->proto, key);
	wg_proto_cfg_unlock(&dev->proto);
	pthread_mutex_unlock(&dev->cfg_mutex);
	return r;
}

int wg_device_set_peer_public_key(struct wg_device *dev, const uint8_t old_key[32], const uint8_t new_key[32])
{
	struct wg_peer *peer;
	int r = -ENOENT;

	pthread_mutex_lock(&dev->cfg_mutex);
	wg_proto_cfg_wrlock(&dev->proto);
	peer = wg_peer_lookup_locked(&dev->proto, old_key);
	if (peer)
		r = wg_peer_set_public_key_locked(&dev->proto, peer, new_key);
	wg_proto_cfg_unlock(&dev->proto);
	pthread_mutex_unlock(&dev->cfg_mutex);
	return r;
}
