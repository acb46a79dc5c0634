/* The receive path: message types and MACs, cookies under load,
 * handshakes, transport data (replay window, cryptokey routing of the
 * inner source address) and roaming. */
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

void wg_proto_receive_handshake(struct wg_proto *p, const struct wg_endpoint *src, const uint8_t *buf, size_t len,
				bool under_load)
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
		atomic_fetch_add_explicit(&p->stats.rx_initiations, 1, memory_order_relaxed);
		pthread_mutex_lock(&peer->lock);
		roamed = set_endpoint_from_packet_locked(peer, src);
		peer->last_sent_handshake = wg_mono_now(p);
		if (wg_noise_create_response(p, peer, out)) {
			wg_cookie_add_macs(peer, out, MESSAGE_RESPONSE_SIZE);
			if (wg_noise_begin_session(p, peer)) {
				wg_timers_session_derived(peer);
				wg_timers_any_authenticated_packet_traversal(peer);
				wg_timers_any_authenticated_packet_sent(peer);
				wg_send_to_peer_locked(peer, out, MESSAGE_RESPONSE_SIZE);
				atomic_fetch_add_explicit(&p->stats.tx_responses, 1, memory_order_relaxed);
			}
		}
	} else {
		peer = wg_noise_consume_response(p, buf);
		if (!peer) {
			atomic_fetch_add(&p->stats.rx_handshake_invalid, 1);
			return;
		}
		atomic_fetch_add_explicit(&p->stats.rx_responses, 1, memory_order_relaxed);
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
		wg_proto_emit(p, WG_EVENT_ENDPOINT_CHANGED, peer, &ep);
	if (completed)
		wg_proto_emit(p, WG_EVENT_HANDSHAKE_COMPLETE, peer, &ep);
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
		wg_send_staged_locked(peer);
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
		wg_proto_emit(p, WG_EVENT_ENDPOINT_CHANGED, peer, &ep);
	if (completed)
		wg_proto_emit(p, WG_EVENT_HANDSHAKE_COMPLETE, peer, &ep);

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
