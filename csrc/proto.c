/* Device-level protocol, the device's half: set-up and teardown, the
 * static identity, the event hook and the timer tick.  Peers are in
 * peer.c, the send path in send.c, the receive path in receive.c.  No I/O:
 * bytes go out through proto->ops. */
#include <endian.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "cookie.h"
#include "noise.h"
#include "timers.h"
#include "proto_internal.h"

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

void wg_proto_cfg_wrlock(struct wg_proto *p)
{
	pthread_rwlock_wrlock(&p->cfg_lock);
}
void wg_proto_cfg_rdlock(struct wg_proto *p)
{
	pthread_rwlock_rdlock(&p->cfg_lock);
}
void wg_proto_cfg_unlock(struct wg_proto *p)
{
	pthread_rwlock_unlock(&p->cfg_lock);
}

void wg_proto_precompute_static_static(struct wg_proto *p, struct wg_peer *peer)
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
		wg_proto_precompute_static_static(p, peer);
		wg_noise_handshake_clear(p, peer);
		wg_noise_expire_current_for_sending(peer);
		pthread_mutex_unlock(&peer->lock);
	}
}

/* Key rotation (wgoverlay rotate-key): a new static identity that keeps
 * every session.  Unlike setting private_key= (kernel semantics: current
 * keypairs expire for sending), the keypairs stay in use until the normal
 * timers retire them (REJECT_AFTER_TIME at the latest): they were derived
 * from ephemeral keys and do not depend on the static key any more.  What
 * does depend on it is recomputed now: the static-static DH with every
 * peer, our mac1 and cookie keys; a half-done handshake (made under the
 * old identity) is dropped and retried by the timers.  The old private key
 * is overwritten in place, nothing of it is kept.  -EINVAL: no identity
 * yet, an all-zero key, or a key whose public half is a peer's. */
int wg_proto_rotate_private_key_locked(struct wg_proto *p, const uint8_t key[32])
{
	uint8_t pub[32];
	struct wg_peer *peer;

	if (!p->has_identity || !key || sodium_is_zero(key, 32))
		return -EINVAL;
	if (!sodium_memcmp(key, p->static_private, 32))
		return 0;
	if (crypto_scalarmult_base(pub, key) != 0 || wg_peer_lookup_locked(p, pub))
		return -EINVAL;
	pthread_mutex_lock(&p->identity_lock);
	memcpy(p->static_private, key, 32);
	memcpy(p->static_public, pub, 32);
	pthread_mutex_unlock(&p->identity_lock);
	wg_cookie_set_identity(p);
	for (peer = p->peers_head; peer; peer = peer->next) {
		pthread_mutex_lock(&peer->lock);
		wg_proto_precompute_static_static(p, peer);
		wg_noise_handshake_clear(p, peer);
		pthread_mutex_unlock(&peer->lock);
	}
	return 0;
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

void wg_proto_emit(struct wg_proto *p, enum wg_event_type type, struct wg_peer *peer, const struct wg_endpoint *ep)
{
	if (p->ops->event)
		p->ops->event(p->ctx, type, peer->public_key, ep);
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
			wg_proto_emit(p, WG_EVENT_PEER_STALE, peer, &ep);
	}
	pthread_rwlock_unlock(&p->cfg_lock);
	if (next) {
		uint64_t cur = atomic_load(&p->next_deadline);

		while ((!cur || next < cur) && !atomic_compare_exchange_weak(&p->next_deadline, &cur, next))
			;
	}
	return atomic_load(&p->next_deadline);
}
