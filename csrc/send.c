/* The send path: handshake initiations, keeping keys fresh, staging
 * packets until a session exists, encryption with padding, and the
 * cryptokey-routed batch send of IP packets. */
#include <endian.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "aead.h"
#include "cookie.h"
#include "noise.h"
#include "timers.h"
#include "proto_internal.h"

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

void wg_send_to_peer_locked(struct wg_peer *peer, const uint8_t *buf, size_t len)
{
	struct wg_proto *p = peer->proto;

	if (!peer->has_endpoint)
		return;
	p->ops->send_udp(p->ctx, &peer->endpoint, buf, len);
	atomic_fetch_add_explicit(&peer->tx_bytes, len, memory_order_relaxed);
}

void wg_send_initiation_locked(struct wg_peer *peer, bool is_retry)
{
	struct wg_proto *p = peer->proto;
	uint8_t msg[MESSAGE_INITIATION_SIZE];
	uint64_t now = wg_mono_now(p);

	if (!is_retry)
		peer->handshake_attempts = 0;
	/* Rate limited to one initiation per REKEY_TIMEOUT. */
	if (peer->dead || (peer->last_sent_handshake && now - peer->last_sent_handshake < REKEY_TIMEOUT))
		return;
	peer->last_sent_handshake = now;
	if (!peer->has_endpoint) {
		/* Nowhere to send it; retries keep the attempt alive so that an
		 * endpoint learnt later is used, as the kernel does. */
		wg_timers_handshake_initiated(peer);
		return;
	}
	if (!wg_noise_create_initiation(p, peer, msg))
		return;
	wg_cookie_add_macs(peer, msg, sizeof(msg));
	wg_timers_any_authenticated_packet_traversal(peer);
	wg_timers_any_authenticated_packet_sent(peer);
	wg_send_to_peer_locked(peer, msg, sizeof(msg));
	atomic_fetch_add_explicit(&p->stats.tx_initiations, 1, memory_order_relaxed);
	wg_timers_handshake_initiated(peer);
	sodium_memzero(msg, sizeof(msg));
}

void wg_peer_initiate_handshake(struct wg_peer *peer, bool is_retry)
{
	pthread_mutex_lock(&peer->lock);
	if (!is_retry)
		peer->last_sent_handshake = 0; /* explicit request: not rate limited */
	wg_send_initiation_locked(peer, is_retry);
	pthread_mutex_unlock(&peer->lock);
}

static bool keypair_usable_for_sending(struct wg_proto *p, struct wg_keypair *kp)
{
	return kp && atomic_load(&kp->sending_valid) && wg_mono_now(p) - kp->birth < REJECT_AFTER_TIME;
}

/* Builds header and ciphertext in place around an IP packet at buf +
 * WG_HEADROOM.  Returns the datagram length. */
/* Pad to a multiple of 16 for length hiding, but never past the MTU. */
static size_t padded_len(size_t len, unsigned mtu)
{
	size_t padded = (len + MESSAGE_PADDING_MULTIPLE - 1) & ~(size_t)(MESSAGE_PADDING_MULTIPLE - 1);

	if (mtu && padded > mtu)
		padded = len > mtu ? len : mtu;
	return padded;
}

size_t wg_proto_datagram_len(size_t len, unsigned mtu)
{
	return MESSAGE_DATA_HEADER_SIZE + padded_len(len, mtu) + NOISE_AUTHTAG_LEN;
}

static size_t encrypt_packet(struct wg_keypair *kp, uint64_t nonce, uint8_t *ip, size_t len, unsigned mtu)
{
	uint8_t *hdr = ip - MESSAGE_DATA_HEADER_SIZE;
	size_t padded = padded_len(len, mtu);
	uint32_t type = htole32(MESSAGE_DATA);
	uint64_t le = htole64(nonce);

	memset(ip + len, 0, padded - len);
	memcpy(hdr, &type, 4);
	memcpy(hdr + 4, &kp->remote_index, 4);
	memcpy(hdr + 8, &le, 8);
	wg_aead_encrypt(ip, padded, ip + padded, nonce, kp->send_key);
	return MESSAGE_DATA_HEADER_SIZE + padded + NOISE_AUTHTAG_LEN;
}

/* Rekey when the session is old or has sent too much (initiator-side age
 * check only, so both ends don't initiate at once). */
static void keep_key_fresh_send_locked(struct wg_peer *peer)
{
	struct wg_keypair *kp = peer->kp_current;
	struct wg_proto *p = peer->proto;

	if (kp && atomic_load(&kp->sending_valid) &&
	    (atomic_load(&kp->send_nonce) > REKEY_AFTER_MESSAGES ||
	     (kp->i_am_initiator && wg_mono_now(p) - kp->birth > REKEY_AFTER_TIME)))
		wg_send_initiation_locked(peer, false);
}

void wg_staged_clear_locked(struct wg_peer *peer)
{
	struct wg_staged *s = peer->staged;

	if (!s)
		return;
	while (s->count) {
		free(s->bufs[s->head]);
		s->head = (s->head + 1) % MAX_STAGED_PACKETS;
		s->count--;
	}
	free(s);
	peer->staged = NULL;
}

static void stage_packet_locked(struct wg_peer *peer, const uint8_t *ip, size_t len)
{
	struct wg_staged *s = peer->staged;
	unsigned slot;
	uint8_t *b;

	if (!s) {
		s = peer->staged = calloc(1, sizeof(*s));
		if (!s) {
			atomic_fetch_add(&peer->proto->stats.tx_staged_dropped, 1);
			return;
		}
	}
	if (s->count == MAX_STAGED_PACKETS) {
		/* Full: drop the oldest, as the kernel does. */
		free(s->bufs[s->head]);
		s->bufs[s->head] = NULL;
		s->head = (s->head + 1) % MAX_STAGED_PACKETS;
		s->count--;
		atomic_fetch_add(&peer->proto->stats.tx_staged_dropped, 1);
	}
	b = malloc(WG_HEADROOM + len + WG_TAILROOM);
	if (!b)
		return;
	if (len)
		memcpy(b + WG_HEADROOM, ip, len);
	slot = (s->head + s->count) % MAX_STAGED_PACKETS;
	s->bufs[slot] = b;
	s->lens[slot] = len;
	s->count++;
}

/* Sends everything staged if there is a usable session, otherwise asks for
 * one.  The MTU of staged packets is unknown here; they were no larger than
 * the interface MTU when read, so padding up to 16 stays within reason. */
void wg_send_staged_locked(struct wg_peer *peer)
{
	struct wg_proto *p = peer->proto;
	struct wg_staged *s = peer->staged;
	struct wg_keypair *kp = peer->kp_current;
	bool sent_data = false;

	if (!s || !s->count)
		return;
	if (!keypair_usable_for_sending(p, kp) || !peer->has_endpoint) {
		wg_send_initiation_locked(peer, false);
		return;
	}
	while (s->count) {
		uint8_t *b = s->bufs[s->head];
		size_t len = s->lens[s->head], dlen;
		uint64_t nonce = atomic_fetch_add(&kp->send_nonce, 1);

		if (nonce >= REJECT_AFTER_MESSAGES) {
			atomic_store(&kp->sending_valid, false);
			wg_send_initiation_locked(peer, false);
			return;
		}
		wg_timers_any_authenticated_packet_traversal(peer);
		wg_timers_any_authenticated_packet_sent(peer);
		dlen = encrypt_packet(kp, nonce, b + WG_HEADROOM, len, 0);
		wg_send_to_peer_locked(peer, b, dlen);
		sent_data |= len > 0;
		free(b);
		s->bufs[s->head] = NULL;
		s->head = (s->head + 1) % MAX_STAGED_PACKETS;
		s->count--;
	}
	wg_staged_clear_locked(peer); /* empty: give the ring back */
	if (sent_data)
		wg_timers_data_sent(peer);
	keep_key_fresh_send_locked(peer);
}

void wg_send_keepalive_locked(struct wg_peer *peer)
{
	if (peer->dead)
		return;
	/* An empty packet, staged so that it waits for a session if needed. */
	if (!wg_peer_staged_count(peer))
		stage_packet_locked(peer, NULL, 0);
	wg_send_staged_locked(peer);
}

static const uint8_t *ip_dst(const uint8_t *ip, size_t len, int *family)
{
	if (len >= 20 && (ip[0] >> 4) == 4) {
		*family = AF_INET;
		return ip + 16;
	}
	if (len >= 40 && (ip[0] >> 4) == 6) {
		*family = AF_INET6;
		return ip + 24;
	}
	return NULL;
}

size_t wg_proto_send_batch(struct wg_proto *p, uint8_t **pkts, size_t *lens, size_t n, unsigned mtu,
			   struct wg_endpoint *ep)
{
	struct wg_aip_owner *owner;
	struct wg_peer *peer;
	struct wg_keypair *kp;
	const uint8_t *dst;
	uint64_t nonce = 0;
	size_t bytes = 0;
	bool data = false;
	int family;

	if (!n)
		return 0;
	dst = ip_dst(pkts[0], lens[0], &family);
	if (!dst) {
		atomic_fetch_add(&p->stats.tx_no_route, n);
		return 0;
	}
	pthread_rwlock_rdlock(&p->cfg_lock);
	owner = wg_allowedips_lookup(&p->aips, family, dst);
	peer = owner ? container_of(owner, struct wg_peer, aips) : NULL;
	if (peer)
		wg_peer_get(peer);
	pthread_rwlock_unlock(&p->cfg_lock);
	if (!peer) {
		atomic_fetch_add(&p->stats.tx_no_route, n);
		return 0;
	}

	pthread_mutex_lock(&peer->lock);
	kp = peer->kp_current;
	/* One reservation of n nonces keeps the segments in order on the wire. */
	if (peer->dead || !peer->has_endpoint || wg_peer_staged_count(peer) || !keypair_usable_for_sending(p, kp) ||
	    (nonce = atomic_fetch_add(&kp->send_nonce, n)) + n > REJECT_AFTER_MESSAGES) {
		if (kp && nonce + n > REJECT_AFTER_MESSAGES)
			atomic_store(&kp->sending_valid, false);
		if (!peer->dead) {
			for (size_t i = 0; i < n; i++)
				stage_packet_locked(peer, pkts[i], lens[i]);
			wg_send_staged_locked(peer);
		}
		pthread_mutex_unlock(&peer->lock);
		wg_peer_put(peer);
		return 0;
	}
	wg_keypair_get(kp);
	*ep = peer->endpoint;
	for (size_t i = 0; i < n; i++)
		data |= lens[i] > 0;
	wg_timers_any_authenticated_packet_traversal(peer);
	wg_timers_any_authenticated_packet_sent(peer);
	if (data)
		wg_timers_data_sent(peer);
	keep_key_fresh_send_locked(peer);
	pthread_mutex_unlock(&peer->lock);

	/* The expensive part runs without the peer lock. */
	for (size_t i = 0; i < n; i++) {
		lens[i] = encrypt_packet(kp, nonce + i, pkts[i], lens[i], mtu);
		bytes += lens[i];
	}
	atomic_fetch_add_explicit(&peer->tx_bytes, bytes, memory_order_relaxed);
	wg_keypair_put(kp);
	wg_peer_put(peer);
	return n;
}

void wg_proto_send_ip(struct wg_proto *p, uint8_t *ip, size_t len, unsigned mtu)
{
	struct wg_endpoint ep;

	if (wg_proto_send_batch(p, &ip, &len, 1, mtu, &ep))
		p->ops->send_udp(p->ctx, &ep, ip - MESSAGE_DATA_HEADER_SIZE, len);
}
