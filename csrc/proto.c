/* Device-level protocol: peers and their configuration, the receive and send
 * paths (handshake, transport data, staged packets, roaming, cryptokey
 * routing) and the timer tick.  No I/O: bytes go out through proto->ops. */
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

#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

static pthread_once_t noise_once = PTHREAD_ONCE_INIT;

int wg_proto_init(struct wg_proto *p, const struct wg_proto_ops *ops, void *ctx)
{
	if (sodium_init() < 0)
		return -EIO;
	pthread_once(&noise_once, wg_noise_init);
	memset(p, 0, sizeof(*p));
	p->ops = ops;
	p->ctx = ctx;
	p->ratelimit = calloc(WG_RATELIMIT_SLOTS, sizeof(*p->ratelimit));
	if (!p->ratelimit)
		return -ENOMEM;
	pthread_rwlock_init(&p->cfg_lock, NULL);
	pthread_rwlock_init(&p->index_lock, NULL);
	pthread_mutex_init(&p->identity_lock, NULL);
	pthread_mutex_init(&p->cookie_lock, NULL);
	pthread_mutex_init(&p->ratelimit_lock, NULL);
	randombytes_buf(p->hash_secret, sizeof(p->hash_secret));
	wg_allowedips_init(&p->aips);
	return 0;
}

void wg_proto_destroy(struct wg_proto *p)
{
	wg_proto_cfg_wrlock(p);
	wg_peer_remove_all_locked(p);
	wg_proto_set_private_key_locked(p, NULL);
	wg_proto_cfg_unlock(p);
	wg_allowedips_free(&p->aips);
	free(p->ratelimit);
	p->ratelimit = NULL;
	sodium_memzero(p->cookie_secret, sizeof(p->cookie_secret));
	pthread_rwlock_destroy(&p->cfg_lock);
	pthread_rwlock_destroy(&p->index_lock);
	pthread_mutex_destroy(&p->identity_lock);
	pthread_mutex_destroy(&p->cookie_lock);
	pthread_mutex_destroy(&p->ratelimit_lock);
}

void wg_proto_cfg_wrlock(struct wg_proto *p) { pthread_rwlock_wrlock(&p->cfg_lock); }
void wg_proto_cfg_rdlock(struct wg_proto *p) { pthread_rwlock_rdlock(&p->cfg_lock); }
void wg_proto_cfg_unlock(struct wg_proto *p) { pthread_rwlock_unlock(&p->cfg_lock); }

static void precompute_static_static(struct wg_proto *p, struct wg_peer *peer)
{
	if (!p->has_identity || crypto_scalarmult(peer->static_static, p->static_private, peer->public_key) != 0)
		sodium_memzero(peer->static_static, sizeof(peer->static_static));
}

void wg_proto_set_private_key_locked(struct wg_proto *p, const uint8_t key[32])
{
	struct wg_peer *peer, *next;

	if (key && p->has_identity && !sodium_memcmp(key, p->static_private, 32))
		return; /* unchanged: keep sessions */

	pthread_mutex_lock(&p->identity_lock);
	if (key && !sodium_is_zero(key, 32)) {
		memcpy(p->static_private, key, 32);
		crypto_scalarmult_base(p->static_public, p->static_private);
		p->has_identity = true;
	} else {
		sodium_memzero(p->static_private, 32);
		memset(p->static_public, 0, 32);
		p->has_identity = false;
	}
	pthread_mutex_unlock(&p->identity_lock);
	wg_cookie_set_identity(p);

	for (peer = p->peers_head; peer; peer = next) {
		next = peer->next;
		/* A peer with our own public key would be us: drop it, as the
		 * kernel does. */
		if (p->has_identity && !memcmp(peer->public_key, p->static_public, 32)) {
			wg_peer_remove_locked(p, peer);
			continue;
		}
		pthread_mutex_lock(&peer->lock);
		precompute_static_static(p, peer);
		wg_noise_handshake_clear(p, peer);
		wg_noise_expire_current_for_sending(peer);
		pthread_mutex_unlock(&peer->lock);
	}
}

void wg_proto_set_private_key(struct wg_proto *p, const uint8_t key[32])
{
	wg_proto_cfg_wrlock(p);
	wg_proto_set_private_key_locked(p, key);
	wg_proto_cfg_unlock(p);
}

bool wg_proto_get_public_key(struct wg_proto *p, uint8_t out[32])
{
	bool ret;

	pthread_mutex_lock(&p->identity_lock);
	ret = p->has_identity;
	memcpy(out, p->static_public, 32);
	pthread_mutex_unlock(&p->identity_lock);
	return ret;
}

/* ---- peers ---- */

static uint32_t peer_bucket(const struct wg_proto *p, const uint8_t pub[32])
{
	uint64_t h;

	crypto_shorthash((uint8_t *)&h, pub, 32, p->hash_secret);
	return (uint32_t)(h & ((1u << WG_PEER_HASH_BITS) - 1));
}

struct wg_peer *wg_peer_lookup_locked(struct wg_proto *p, const uint8_t pub[32])
{
	struct wg_peer *peer;

	for (peer = p->peer_hash[peer_bucket(p, pub)]; peer; peer = peer->hash_next)
		if (!memcmp(peer->public_key, pub, 32))
			return peer;
	return NULL;
}

void wg_peer_get(struct wg_peer *peer)
{
	atomic_fetch_add_explicit(&peer->refcount, 1, memory_order_relaxed);
}

void wg_peer_put(struct wg_peer *peer)
{
	if (!peer || atomic_fetch_sub_explicit(&peer->refcount, 1, memory_order_acq_rel) != 1)
		return;
	/* Last reference: by now the peer is out of every table and its
	 * keypairs are gone (each held a reference). */
	wg_staged_clear_locked(peer);
	pthread_mutex_destroy(&peer->lock);
	sodium_memzero(peer, sizeof(*peer));
	free(peer);
}

struct wg_peer *wg_peer_create_locked(struct wg_proto *p, const uint8_t pub[32], int *err)
{
	struct wg_peer *peer;
	uint32_t b;

	*err = 0;
	if (p->has_identity && !memcmp(pub, p->static_public, 32)) {
		*err = -EINVAL;
		return NULL;
	}
	if (p->npeers >= MAX_PEERS_PER_DEVICE) {
		*err = -ENOSPC;
		return NULL;
	}
	peer = calloc(1, sizeof(*peer));
	if (!peer) {
		*err = -ENOMEM;
		return NULL;
	}
	atomic_init(&peer->refcount, 1); /* the device's reference */
	peer->proto = p;
	pthread_mutex_init(&peer->lock, NULL);
	memcpy(peer->public_key, pub, 32);
	peer->hs.entry.type = WG_INDEX_HANDSHAKE;
	peer->hs.entry.peer = peer;
	wg_cookie_peer_init(peer);
	precompute_static_static(p, peer);

	b = peer_bucket(p, pub);
	peer->hash_next = p->peer_hash[b];
	p->peer_hash[b] = peer;
	peer->prev = p->peers_tail;
	if (p->peers_tail)
		p->peers_tail->next = peer;
	else
		p->peers_head = peer;
	p->peers_tail = peer;
	p->npeers++;
	return peer;
}

/* Two-phase removal: unlink and mark dead so that workers stop using it,
 * tear down its sessions, and free on the last reference. */
void wg_peer_remove_locked(struct wg_proto *p, struct wg_peer *peer)
{
	struct wg_peer **pp;

	for (pp = &p->peer_hash[peer_bucket(p, peer->public_key)]; *pp; pp = &(*pp)->hash_next) {
		if (*pp == peer) {
			*pp = peer->hash_next;
			break;
		}
	}
	if (peer->prev)
		peer->prev->next = peer->next;
	else
		p->peers_head = peer->next;
	if (peer->next)
		peer->next->prev = peer->prev;
	else
		p->peers_tail = peer->prev;
	peer->prev = peer->next = peer->hash_next = NULL;
	p->npeers--;
	wg_allowedips_remove_owner(&p->aips, &peer->aips);

	pthread_mutex_lock(&peer->lock);
	peer->dead = true;
	wg_timers_stop(peer);
	wg_noise_handshake_clear(p, peer);
	wg_noise_keypairs_clear(p, peer);
	wg_staged_clear_locked(peer);
	sodium_memzero(peer->preshared_key, sizeof(peer->preshared_key));
	sodium_memzero(peer->static_static, sizeof(peer->static_static));
	pthread_mutex_unlock(&peer->lock);
	wg_peer_put(peer);
}

void wg_peer_remove_all_locked(struct wg_proto *p)
{
	while (p->peers_head)
		wg_peer_remove_locked(p, p->peers_head);
}

void wg_peer_set_preshared_key(struct wg_peer *peer, const uint8_t psk[32])
{
	pthread_mutex_lock(&peer->lock);
	memcpy(peer->preshared_key, psk, 32);
	pthread_mutex_unlock(&peer->lock);
}

void wg_peer_set_endpoint(struct wg_peer *peer, const struct sockaddr *sa)
{
	pthread_mutex_lock(&peer->lock);
	memset(&peer->endpoint, 0, sizeof(peer->endpoint));
	if (sa->sa_family == AF_INET)
		memcpy(&peer->endpoint.addr.in4, sa, sizeof(struct sockaddr_in));
	else
		memcpy(&peer->endpoint.addr.in6, sa, sizeof(struct sockaddr_in6));
	peer->has_endpoint = true;
	pthread_mutex_unlock(&peer->lock);
}

void wg_peer_set_relay_endpoint(struct wg_peer *peer, const struct sockaddr *server, uint16_t channel)
{
	wg_peer_set_endpoint(peer, server);
	pthread_mutex_lock(&peer->lock);
	peer->endpoint.relay_channel = channel;
	pthread_mutex_unlock(&peer->lock);
}

void wg_peer_clear_endpoint(struct wg_peer *peer)
{
	pthread_mutex_lock(&peer->lock);
	memset(&peer->endpoint, 0, sizeof(peer->endpoint));
	peer->has_endpoint = false;
	pthread_mutex_unlock(&peer->lock);
}

void wg_peer_set_keepalive(struct wg_peer *peer, uint16_t seconds)
{
	pthread_mutex_lock(&peer->lock);
	bool newly = !peer->persistent_keepalive && seconds;

	peer->persistent_keepalive = seconds;
	if (!seconds)
		peer->timers[TIMER_PERSISTENT_KEEPALIVE] = 0;
	if (newly && peer->has_endpoint && !peer->dead)
		wg_send_keepalive_locked(peer);
	pthread_mutex_unlock(&peer->lock);
}

int wg_peer_aip_insert_locked(struct wg_proto *p, struct wg_peer *peer, int family, const uint8_t *addr, uint8_t cidr)
{
	return wg_allowedips_insert(&p->aips, family, addr, cidr, &peer->aips);
}

int wg_peer_aip_remove_locked(struct wg_proto *p, struct wg_peer *peer, int family, const uint8_t *addr, uint8_t cidr)
{
	return wg_allowedips_remove(&p->aips, family, addr, cidr, &peer->aips);
}

void wg_peer_aip_clear_locked(struct wg_proto *p, struct wg_peer *peer)
{
	wg_allowedips_remove_owner(&p->aips, &peer->aips);
}

void wg_peer_info(struct wg_peer *peer, struct wg_peer_info *out)
{
	pthread_mutex_lock(&peer->lock);
	memcpy(out->public_key, peer->public_key, 32);
	memcpy(out->preshared_key, peer->preshared_key, 32);
	out->endpoint = peer->endpoint;
	out->has_endpoint = peer->has_endpoint;
	out->last_handshake_real = peer->last_handshake_real;
	out->persistent_keepalive = peer->persistent_keepalive;
	pthread_mutex_unlock(&peer->lock);
	out->rx_bytes = atomic_load(&peer->rx_bytes);
	out->tx_bytes = atomic_load(&peer->tx_bytes);
}

/* ---- sending ---- */

static void send_to_peer_locked(struct wg_peer *peer, const uint8_t *buf, size_t len)
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
	send_to_peer_locked(peer, msg, sizeof(msg));
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

static void keep_key_fresh_receive_locked(struct wg_peer *peer)
{
	struct wg_keypair *kp = peer->kp_current;

	if (peer->sent_lastminute_handshake)
		return;
	if (kp && atomic_load(&kp->sending_valid) && kp->i_am_initiator &&
	    wg_mono_now(peer->proto) - kp->birth > REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT) {
		peer->sent_lastminute_handshake = true;
		wg_send_initiation_locked(peer, false);
	}
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
static void send_staged_locked(struct wg_peer *peer)
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
		send_to_peer_locked(peer, b, dlen);
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
	send_staged_locked(peer);
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
			send_staged_locked(peer);
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

/* ---- receiving ---- */

int wg_proto_message_type(const uint8_t *buf, size_t len)
{
	uint32_t type;

	if (len < 4)
		return 0;
	memcpy(&type, buf, 4);
	type = le32toh(type);
	switch (type) {
	case MESSAGE_HANDSHAKE_INITIATION:
		return len == MESSAGE_INITIATION_SIZE ? (int)type : 0;
	case MESSAGE_HANDSHAKE_RESPONSE:
		return len == MESSAGE_RESPONSE_SIZE ? (int)type : 0;
	case MESSAGE_HANDSHAKE_COOKIE:
		return len == MESSAGE_COOKIE_REPLY_SIZE ? (int)type : 0;
	case MESSAGE_DATA:
		return len >= MESSAGE_DATA_MIN_SIZE ? (int)type : 0;
	default:
		return 0;
	}
}

bool wg_proto_check_mac1(struct wg_proto *p, const uint8_t *buf, size_t len)
{
	int type = wg_proto_message_type(buf, len);

	if (type == MESSAGE_HANDSHAKE_COOKIE)
		return true; /* has no mac1; authenticated by decryption */
	if (type != MESSAGE_HANDSHAKE_INITIATION && type != MESSAGE_HANDSHAKE_RESPONSE)
		return false;
	return wg_cookie_validate(p, buf, len, NULL, false) != WG_MAC_INVALID;
}

bool wg_proto_answer_with_cookie(struct wg_proto *p, const struct wg_endpoint *src, const uint8_t *buf, size_t len)
{
	int type = wg_proto_message_type(buf, len);
	uint8_t out[MESSAGE_COOKIE_REPLY_SIZE];

	if (type != MESSAGE_HANDSHAKE_INITIATION && type != MESSAGE_HANDSHAKE_RESPONSE)
		return false;
	if (wg_cookie_validate(p, buf, len, src, true) != WG_MAC_VALID_NO_COOKIE)
		return false; /* a valid cookie; (an invalid mac1 the worker counts) */
	wg_cookie_create_reply(p, out, buf, len, src);
	p->ops->send_udp(p->ctx, src, out, MESSAGE_COOKIE_REPLY_SIZE);
	atomic_fetch_add(&p->stats.rx_cookie_sent, 1);
	return true;
}

static bool endpoint_addr_equal(const struct wg_endpoint *a, const struct wg_endpoint *b)
{
	if (a->addr.sa.sa_family != b->addr.sa.sa_family || a->relay_channel != b->relay_channel)
		return false;
	if (a->addr.sa.sa_family == AF_INET)
		return a->addr.in4.sin_port == b->addr.in4.sin_port &&
		       a->addr.in4.sin_addr.s_addr == b->addr.in4.sin_addr.s_addr;
	return a->addr.in6.sin6_port == b->addr.in6.sin6_port &&
	       !memcmp(&a->addr.in6.sin6_addr, &b->addr.in6.sin6_addr, 16) &&
	       a->addr.in6.sin6_scope_id == b->addr.in6.sin6_scope_id;
}

/* Roaming: the peer's endpoint follows the source of its latest
 * authenticated packet.  Returns true if the remote address changed. */
static bool set_endpoint_from_packet_locked(struct wg_peer *peer, const struct wg_endpoint *src)
{
	bool changed = !peer->has_endpoint || !endpoint_addr_equal(&peer->endpoint, src);

	if (changed || memcmp(&peer->endpoint.src6, &src->src6, sizeof(src->src6)) ||
	    peer->endpoint.src_ifindex != src->src_ifindex) {
		peer->endpoint = *src;
		peer->has_endpoint = true;
	}
	return changed;
}

static void emit(struct wg_proto *p, enum wg_event_type type, struct wg_peer *peer, const struct wg_endpoint *ep)
{
	if (p->ops->event)
		p->ops->event(p->ctx, type, peer->public_key, ep);
}

void wg_proto_receive_handshake(struct wg_proto *p, const struct wg_endpoint *src,
				const uint8_t *buf, size_t len, bool under_load)
{
	int type = wg_proto_message_type(buf, len);
	enum wg_cookie_mac_state mac;
	struct wg_peer *peer = NULL;
	uint8_t out[MESSAGE_INITIATION_SIZE];
	bool roamed = false, completed = false;
	struct wg_endpoint ep;

	if (type == MESSAGE_HANDSHAKE_COOKIE) {
		wg_cookie_consume_reply(p, buf);
		return;
	}
	if (type != MESSAGE_HANDSHAKE_INITIATION && type != MESSAGE_HANDSHAKE_RESPONSE) {
		atomic_fetch_add(&p->stats.rx_junk, 1);
		return;
	}
	mac = wg_cookie_validate(p, buf, len, src, under_load);
	if (mac == WG_MAC_INVALID) {
		atomic_fetch_add(&p->stats.rx_bad_mac1, 1);
		return;
	}
	if (under_load) {
		if (mac != WG_MAC_VALID_WITH_COOKIE) {
			/* Prove you own that source address before we do DH work. */
			wg_cookie_create_reply(p, out, buf, len, src);
			p->ops->send_udp(p->ctx, src, out, MESSAGE_COOKIE_REPLY_SIZE);
			atomic_fetch_add(&p->stats.rx_cookie_sent, 1);
			return;
		}
		if (!wg_ratelimit_allow(p, src)) {
			atomic_fetch_add(&p->stats.rx_ratelimited, 1);
			return;
		}
	}

	if (type == MESSAGE_HANDSHAKE_INITIATION) {
		peer = wg_noise_consume_initiation(p, buf);
		if (!peer) {
			atomic_fetch_add(&p->stats.rx_handshake_invalid, 1);
			return;
		}
		pthread_mutex_lock(&peer->lock);
		roamed = set_endpoint_from_packet_locked(peer, src);
		peer->last_sent_handshake = wg_mono_now(p);
		if (wg_noise_create_response(p, peer, out)) {
			wg_cookie_add_macs(peer, out, MESSAGE_RESPONSE_SIZE);
			if (wg_noise_begin_session(p, peer)) {
				wg_timers_session_derived(peer);
				wg_timers_any_authenticated_packet_traversal(peer);
				wg_timers_any_authenticated_packet_sent(peer);
				send_to_peer_locked(peer, out, MESSAGE_RESPONSE_SIZE);
			}
		}
	} else {
		peer = wg_noise_consume_response(p, buf);
		if (!peer) {
			atomic_fetch_add(&p->stats.rx_handshake_invalid, 1);
			return;
		}
		pthread_mutex_lock(&peer->lock);
		roamed = set_endpoint_from_packet_locked(peer, src);
		if (wg_noise_begin_session(p, peer)) {
			wg_timers_session_derived(peer);
			wg_timers_handshake_complete(peer);
			completed = true;
			/* Confirm the session to the responder at once (and flush
			 * whatever waited for it). */
			wg_send_keepalive_locked(peer);
		}
	}
	atomic_fetch_add_explicit(&peer->rx_bytes, len, memory_order_relaxed);
	wg_timers_any_authenticated_packet_received(peer);
	wg_timers_any_authenticated_packet_traversal(peer);
	ep = peer->endpoint;
	pthread_mutex_unlock(&peer->lock);
	sodium_memzero(out, sizeof(out));
	if (roamed)
		emit(p, WG_EVENT_ENDPOINT_CHANGED, peer, &ep);
	if (completed)
		emit(p, WG_EVENT_HANDSHAKE_COMPLETE, peer, &ep);
	wg_peer_put(peer);
}

/* Returns the IP packet length if the plaintext holds a well-formed IP
 * packet, 0 otherwise. */
static size_t inner_packet_len(const uint8_t *ip, size_t len, int *family, const uint8_t **src)
{
	size_t total;

	if (len >= 20 && (ip[0] >> 4) == 4) {
		total = ((size_t)ip[2] << 8) | ip[3];
		if (total < 20 || total > len || (size_t)(ip[0] & 0xf) * 4 < 20)
			return 0;
		*family = AF_INET;
		*src = ip + 12;
		return total;
	}
	if (len >= 40 && (ip[0] >> 4) == 6) {
		total = 40 + (((size_t)ip[4] << 8) | ip[5]);
		if (total > len)
			return 0;
		*family = AF_INET6;
		*src = ip + 8;
		return total;
	}
	return 0;
}

void wg_proto_receive_data(struct wg_proto *p, const struct wg_endpoint *src, uint8_t *buf, size_t len)
{
	struct wg_keypair *kp;
	struct wg_peer *peer;
	struct wg_aip_owner *owner;
	struct wg_endpoint ep;
	uint32_t receiver;
	uint64_t counter;
	size_t plen, iplen;
	const uint8_t *isrc;
	bool ok, roamed, completed;
	int family;

	if (wg_proto_message_type(buf, len) != MESSAGE_DATA) {
		atomic_fetch_add(&p->stats.rx_junk, 1);
		return;
	}
	memcpy(&receiver, buf + 4, 4);
	memcpy(&counter, buf + 8, 8);
	counter = le64toh(counter);
	peer = wg_index_lookup(p, receiver, WG_INDEX_KEYPAIR, &kp);
	if (!peer) {
		atomic_fetch_add(&p->stats.rx_unknown_index, 1);
		return;
	}
	if (!atomic_load(&kp->receiving_valid) || wg_mono_now(p) - kp->birth >= REJECT_AFTER_TIME ||
	    counter >= REJECT_AFTER_MESSAGES) {
		atomic_store(&kp->receiving_valid, false);
		atomic_fetch_add(&p->stats.rx_expired_key, 1);
		goto out;
	}
	plen = len - MESSAGE_DATA_MIN_SIZE;
	if (!wg_aead_decrypt(buf + MESSAGE_DATA_HEADER_SIZE, plen, buf + len - NOISE_AUTHTAG_LEN, counter,
			     kp->recv_key)) {
		atomic_fetch_add(&p->stats.rx_decrypt_failed, 1);
		goto out;
	}
	/* Replay is checked only now that the counter is authenticated. */
	pthread_mutex_lock(&kp->replay_lock);
	ok = wg_replay_check(&kp->replay, counter, REJECT_AFTER_MESSAGES);
	pthread_mutex_unlock(&kp->replay_lock);
	if (!ok) {
		atomic_fetch_add(&p->stats.rx_replayed, 1);
		goto out;
	}

	pthread_mutex_lock(&peer->lock);
	completed = wg_noise_received_with_keypair(peer, kp);
	if (completed) {
		wg_timers_handshake_complete(peer);
		send_staged_locked(peer);
	}
	roamed = set_endpoint_from_packet_locked(peer, src);
	keep_key_fresh_receive_locked(peer);
	wg_timers_any_authenticated_packet_received(peer);
	wg_timers_any_authenticated_packet_traversal(peer);
	if (plen)
		wg_timers_data_received(peer);
	ep = peer->endpoint;
	pthread_mutex_unlock(&peer->lock);
	atomic_fetch_add_explicit(&peer->rx_bytes, len, memory_order_relaxed);
	if (roamed)
		emit(p, WG_EVENT_ENDPOINT_CHANGED, peer, &ep);
	if (completed)
		emit(p, WG_EVENT_HANDSHAKE_COMPLETE, peer, &ep);

	if (!plen)
		goto out; /* keepalive */
	iplen = inner_packet_len(buf + MESSAGE_DATA_HEADER_SIZE, plen, &family, &isrc);
	if (!iplen) {
		atomic_fetch_add(&p->stats.rx_bad_inner, 1);
		goto out;
	}
	/* Cryptokey routing: the inner source must be one the peer may use. */
	pthread_rwlock_rdlock(&p->cfg_lock);
	owner = wg_allowedips_lookup(&p->aips, family, isrc);
	pthread_rwlock_unlock(&p->cfg_lock);
	if (owner != &peer->aips) {
		atomic_fetch_add(&p->stats.rx_wrong_source, 1);
		goto out;
	}
	p->ops->deliver(p->ctx, buf + MESSAGE_DATA_HEADER_SIZE, iplen);
out:
	wg_keypair_put(kp);
	wg_peer_put(peer);
}

/* ---- timers ---- */

uint64_t wg_proto_tick(struct wg_proto *p)
{
	uint64_t now = wg_mono_now(p), next = 0, n;
	struct wg_peer *peer;
	struct wg_endpoint ep;
	bool gave_up;

	/* Reset the hint first: hooks running concurrently may lower it again. */
	atomic_store(&p->next_deadline, 0);
	pthread_rwlock_rdlock(&p->cfg_lock);
	for (peer = p->peers_head; peer; peer = peer->next) {
		pthread_mutex_lock(&peer->lock);
		n = wg_timers_expire(peer, now, &gave_up);
		ep = peer->endpoint;
		pthread_mutex_unlock(&peer->lock);
		if (n && (!next || n < next))
			next = n;
		if (gave_up)
			emit(p, WG_EVENT_PEER_STALE, peer, &ep);
	}
	pthread_rwlock_unlock(&p->cfg_lock);
	if (next) {
		uint64_t cur = atomic_load(&p->next_deadline);

		while ((!cur || next < cur) && !atomic_compare_exchange_weak(&p->next_deadline, &cur, next))
			;
	}
	return atomic_load(&p->next_deadline);
}
