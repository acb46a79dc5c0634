/* Peers: the by-key table, reference counts, configuration (preshared
 * key, endpoint, keepalive, allowed IPs) and the snapshot for status. */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "cookie.h"
#include "noise.h"
#include "timers.h"
#include "proto_internal.h"

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
	wg_proto_precompute_static_static(p, peer);

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

/* A peer's new public key (it rotated its key), in place: the peer keeps
 * its keypairs (traffic goes on under the current session), endpoint,
 * allowed IPs, preshared key, counters and timers; what is derived from
 * its public key is recomputed (table slot, static-static DH, mac1 and
 * cookie keys; a cookie it gave us is dropped) and a half-done handshake
 * under the old key is dropped, so the next handshake uses the new key.
 * -EEXIST: another peer has that key; -EINVAL: it is our own. */
int wg_peer_set_public_key_locked(struct wg_proto *p, struct wg_peer *peer, const uint8_t pub[32])
{
	struct wg_peer **pp, *other;
	uint32_t b;

	if (!memcmp(peer->public_key, pub, 32))
		return 0;
	other = wg_peer_lookup_locked(p, pub);
	if (other)
		return -EEXIST;
	if (p->has_identity && !memcmp(pub, p->static_public, 32))
		return -EINVAL;
	for (pp = &p->peer_hash[peer_bucket(p, peer->public_key)]; *pp; pp = &(*pp)->hash_next) {
		if (*pp == peer) {
			*pp = peer->hash_next;
			break;
		}
	}
	pthread_mutex_lock(&peer->lock);
	memcpy(peer->public_key, pub, 32);
	wg_proto_precompute_static_static(p, peer);
	wg_noise_handshake_clear(p, peer);
	sodium_memzero(&peer->cookie, sizeof(peer->cookie));
	wg_cookie_peer_init(peer);
	pthread_mutex_unlock(&peer->lock);
	b = peer_bucket(p, pub);
	peer->hash_next = p->peer_hash[b];
	p->peer_hash[b] = peer;
	return 0;
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
