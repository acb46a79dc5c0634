/* Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s as WireGuard uses it (whitepaper
 * section 5.4), keypair rotation and the receiver-index table.
 *
 * Each handshake transition copies the state it needs under peer->lock,
 * does the expensive Diffie-Hellman work on the copies without the lock
 * where it can, then re-checks the state under the lock and commits.
 * Secrets live in the peer, the keypair or on the stack, and every exit path
 * wipes the stack copies at the single `out:` label. */
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "blake2s.h"
#include "noise.h"

static uint8_t handshake_init_chaining_key[NOISE_HASH_LEN];
static uint8_t handshake_init_hash[NOISE_HASH_LEN];

/* Message layouts (whitepaper 5.4.2, 5.4.3). */
#define INIT_SENDER 4
#define INIT_EPHEMERAL 8
#define INIT_STATIC 40
#define INIT_TIMESTAMP 88
#define INIT_MAC1 116
#define RESP_SENDER 4
#define RESP_RECEIVER 8
#define RESP_EPHEMERAL 12
#define RESP_EMPTY 44

void wg_noise_init(void)
{
	struct wg_blake2s_state s;

	/* Ci := HASH(CONSTRUCTION); Hi := HASH(Ci || IDENTIFIER) */
	wg_blake2s(handshake_init_chaining_key, NOISE_HASH_LEN, (const uint8_t *)NOISE_CONSTRUCTION,
		   strlen(NOISE_CONSTRUCTION), NULL, 0);
	wg_blake2s_init(&s, NOISE_HASH_LEN);
	wg_blake2s_update(&s, handshake_init_chaining_key, NOISE_HASH_LEN);
	wg_blake2s_update(&s, (const uint8_t *)NOISE_IDENTIFIER, strlen(NOISE_IDENTIFIER));
	wg_blake2s_final(&s, handshake_init_hash);
}

uint64_t wg_mono_now(struct wg_proto *p)
{
	uint64_t mono;

	p->ops->clock(p->ctx, &mono, NULL);
	return mono;
}

uint64_t wg_real_now(struct wg_proto *p)
{
	uint64_t real;

	p->ops->clock(p->ctx, NULL, &real);
	return real;
}

void wg_tai64n_now(struct wg_proto *p, uint8_t out[NOISE_TIMESTAMP_LEN])
{
	uint64_t real = wg_real_now(p);
	uint64_t sec = real / WG_NS_PER_SEC;
	uint32_t nsec = (uint32_t)(real % WG_NS_PER_SEC);
	uint64_t be_sec;
	uint32_t be_nsec;

	/* Round down to a power of two below 1 s / INITIATIONS_PER_SECOND so the
	 * timestamp is no timing oracle, while still strictly increasing for
	 * initiations sent at the allowed rate (as the kernel does). */
	nsec &= ~((1u << 24) - 1); /* 16.7 ms < 20 ms */
	be_sec = htobe64(0x400000000000000aULL + sec);
	be_nsec = htobe32(nsec);
	memcpy(out, &be_sec, 8);
	memcpy(out + 8, &be_nsec, 4);
}

static void mix_hash(uint8_t hash[NOISE_HASH_LEN], const uint8_t *src, size_t len)
{
	struct wg_blake2s_state s;

	wg_blake2s_init(&s, NOISE_HASH_LEN);
	wg_blake2s_update(&s, hash, NOISE_HASH_LEN);
	wg_blake2s_update(&s, src, len);
	wg_blake2s_final(&s, hash);
}

static void mix_key(uint8_t ck[NOISE_HASH_LEN], uint8_t key[NOISE_SYMMETRIC_KEY_LEN], const uint8_t *src, size_t len)
{
	wg_kdf(ck, key, NULL, src, len, ck);
}

/* (ck, k) := KDF2(ck, DH(priv, pub)); rejects an all-zero result. */
static bool mix_dh(uint8_t ck[NOISE_HASH_LEN], uint8_t key[NOISE_SYMMETRIC_KEY_LEN],
		   const uint8_t priv[NOISE_PUBLIC_KEY_LEN], const uint8_t pub[NOISE_PUBLIC_KEY_LEN])
{
	uint8_t dh[NOISE_PUBLIC_KEY_LEN];

	if (crypto_scalarmult(dh, priv, pub) != 0)
		return false; /* libsodium refuses all-zero outputs (small order points) */
	mix_key(ck, key, dh, sizeof(dh));
	sodium_memzero(dh, sizeof(dh));
	return true;
}

static bool mix_precomputed_dh(uint8_t ck[NOISE_HASH_LEN], uint8_t key[NOISE_SYMMETRIC_KEY_LEN],
			       const uint8_t ss[NOISE_PUBLIC_KEY_LEN])
{
	if (sodium_is_zero(ss, NOISE_PUBLIC_KEY_LEN))
		return false;
	mix_key(ck, key, ss, NOISE_PUBLIC_KEY_LEN);
	return true;
}

static void mix_psk(uint8_t ck[NOISE_HASH_LEN], uint8_t hash[NOISE_HASH_LEN], uint8_t key[NOISE_SYMMETRIC_KEY_LEN],
		    const uint8_t psk[NOISE_SYMMETRIC_KEY_LEN])
{
	uint8_t tau[NOISE_HASH_LEN];

	wg_kdf(ck, tau, key, psk, NOISE_SYMMETRIC_KEY_LEN, ck);
	mix_hash(hash, tau, sizeof(tau));
	sodium_memzero(tau, sizeof(tau));
}

static const uint8_t zero_nonce[crypto_aead_chacha20poly1305_IETF_NPUBBYTES];

/* AEAD with counter 0 and the running hash as associated data, then mix
 * the ciphertext into the hash. */
static void message_encrypt(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t key[NOISE_SYMMETRIC_KEY_LEN],
			    uint8_t hash[NOISE_HASH_LEN])
{
	crypto_aead_chacha20poly1305_ietf_encrypt(dst, NULL, src, len, hash, NOISE_HASH_LEN, NULL, zero_nonce, key);
	mix_hash(hash, dst, len + NOISE_AUTHTAG_LEN);
}

static bool message_decrypt(uint8_t *dst, const uint8_t *src, size_t src_len,
			    const uint8_t key[NOISE_SYMMETRIC_KEY_LEN], uint8_t hash[NOISE_HASH_LEN])
{
	if (crypto_aead_chacha20poly1305_ietf_decrypt(dst, NULL, NULL, src, src_len, hash, NOISE_HASH_LEN, zero_nonce,
						      key) != 0)
		return false;
	mix_hash(hash, src, src_len);
	return true;
}

/* ck := HASH(CONSTRUCTION) ...; h := HASH(HASH(ck || IDENTIFIER) || S_pub_responder) */
static void handshake_init(uint8_t ck[NOISE_HASH_LEN], uint8_t hash[NOISE_HASH_LEN],
			   const uint8_t remote_static[NOISE_PUBLIC_KEY_LEN])
{
	memcpy(ck, handshake_init_chaining_key, NOISE_HASH_LEN);
	memcpy(hash, handshake_init_hash, NOISE_HASH_LEN);
	mix_hash(hash, remote_static, NOISE_PUBLIC_KEY_LEN);
}

/* ---- receiver index table ---- */

uint32_t wg_proto_hash_index(const struct wg_proto *p, uint32_t index)
{
	uint64_t h;

	crypto_shorthash((uint8_t *)&h, (const uint8_t *)&index, sizeof(index), p->hash_secret);
	return (uint32_t)(h & ((1u << WG_INDEX_HASH_BITS) - 1));
}

static struct wg_index_entry *index_find_locked(struct wg_proto *p, uint32_t index)
{
	struct wg_index_entry *e;

	for (e = p->index_hash[wg_proto_hash_index(p, index)]; e; e = e->next)
		if (e->index == index)
			return e;
	return NULL;
}

static void index_unlink_locked(struct wg_proto *p, struct wg_index_entry *entry)
{
	struct wg_index_entry **pp;

	if (!entry->index)
		return;
	for (pp = &p->index_hash[wg_proto_hash_index(p, entry->index)]; *pp; pp = &(*pp)->next) {
		if (*pp == entry) {
			*pp = entry->next;
			break;
		}
	}
	entry->next = NULL;
	entry->index = 0;
}

/* Gives entry a fresh random index, unused by any other entry (0 is reserved
 * for "not in the table"). */
static void index_insert(struct wg_proto *p, struct wg_index_entry *entry)
{
	uint32_t idx;

	pthread_rwlock_wrlock(&p->index_lock);
	index_unlink_locked(p, entry);
	do
		idx = randombytes_random();
	while (!idx || index_find_locked(p, idx));
	entry->index = idx;
	entry->next = p->index_hash[wg_proto_hash_index(p, idx)];
	p->index_hash[wg_proto_hash_index(p, idx)] = entry;
	pthread_rwlock_unlock(&p->index_lock);
}

static void index_remove(struct wg_proto *p, struct wg_index_entry *entry)
{
	pthread_rwlock_wrlock(&p->index_lock);
	index_unlink_locked(p, entry);
	pthread_rwlock_unlock(&p->index_lock);
}

/* The session keeps the handshake's index, so the responder's first data
 * packet (addressed to the index we announced) finds the keypair. */
static void index_replace(struct wg_proto *p, struct wg_index_entry *old, struct wg_index_entry *new)
{
	struct wg_index_entry **pp;

	pthread_rwlock_wrlock(&p->index_lock);
	for (pp = &p->index_hash[wg_proto_hash_index(p, old->index)]; *pp; pp = &(*pp)->next) {
		if (*pp == old) {
			new->index = old->index;
			new->next = old->next;
			*pp = new;
			old->next = NULL;
			old->index = 0;
			break;
		}
	}
	pthread_rwlock_unlock(&p->index_lock);
}

struct wg_peer *wg_index_lookup(struct wg_proto *p, uint32_t index, uint8_t type_mask, struct wg_keypair **kp)
{
	struct wg_index_entry *e;
	struct wg_peer *peer = NULL;

	if (kp)
		*kp = NULL;
	pthread_rwlock_rdlock(&p->index_lock);
	e = index_find_locked(p, index);
	if (e && (e->type & type_mask) && !e->peer->dead) {
		peer = e->peer;
		wg_peer_get(peer);
		if (e->type == WG_INDEX_KEYPAIR && kp) {
			*kp = e->keypair;
			wg_keypair_get(*kp);
		}
	}
	pthread_rwlock_unlock(&p->index_lock);
	return peer;
}

/* ---- keypairs ---- */

void wg_keypair_get(struct wg_keypair *kp)
{
	atomic_fetch_add_explicit(&kp->refcount, 1, memory_order_relaxed);
}

void wg_keypair_put(struct wg_keypair *kp)
{
	struct wg_peer *peer;

	if (!kp || atomic_fetch_sub_explicit(&kp->refcount, 1, memory_order_acq_rel) != 1)
		return;
	peer = kp->peer;
	atomic_fetch_sub(&peer->proto->live_keypairs, 1);
	pthread_mutex_destroy(&kp->replay_lock);
	sodium_memzero(kp, sizeof(*kp));
	free(kp);
	wg_peer_put(peer);
}

/* Drops a keypair from the index (so no new packet finds it) and releases
 * the peer's reference; in-flight users keep it alive until they finish. */
static void keypair_retire(struct wg_proto *p, struct wg_keypair *kp)
{
	if (!kp)
		return;
	atomic_store(&kp->sending_valid, false);
	atomic_store(&kp->receiving_valid, false);
	index_remove(p, &kp->entry);
	wg_keypair_put(kp);
}

void wg_noise_keypairs_clear(struct wg_proto *p, struct wg_peer *peer)
{
	struct wg_keypair *cur = peer->kp_current, *prev = peer->kp_previous, *next = peer->kp_next;

	peer->kp_current = peer->kp_previous = peer->kp_next = NULL;
	keypair_retire(p, next);
	keypair_retire(p, prev);
	keypair_retire(p, cur);
}

void wg_noise_expire_current_for_sending(struct wg_peer *peer)
{
	if (peer->kp_current)
		atomic_store(&peer->kp_current->sending_valid, false);
}

void wg_noise_handshake_clear(struct wg_proto *p, struct wg_peer *peer)
{
	struct wg_handshake *hs = &peer->hs;

	index_remove(p, &hs->entry);
	hs->state = HANDSHAKE_ZEROED;
	sodium_memzero(hs->ephemeral_private, sizeof(hs->ephemeral_private));
	sodium_memzero(hs->remote_ephemeral, sizeof(hs->remote_ephemeral));
	sodium_memzero(hs->hash, sizeof(hs->hash));
	sodium_memzero(hs->chaining_key, sizeof(hs->chaining_key));
	hs->remote_index = 0;
}

/* ---- handshake messages ---- */

bool wg_noise_create_initiation(struct wg_proto *p, struct wg_peer *peer, uint8_t msg[MESSAGE_INITIATION_SIZE])
{
	struct wg_handshake *hs = &peer->hs;
	uint8_t timestamp[NOISE_TIMESTAMP_LEN];
	uint8_t key[NOISE_SYMMETRIC_KEY_LEN];
	uint8_t ephemeral_public[NOISE_PUBLIC_KEY_LEN];
	uint8_t static_public[NOISE_PUBLIC_KEY_LEN];
	bool ret = false, has_identity;

	/* We hold peer->lock, so the identity comes from its own small lock
	 * (cfg_lock ranks above peer->lock). */
	pthread_mutex_lock(&p->identity_lock);
	has_identity = p->has_identity;
	memcpy(static_public, p->static_public, NOISE_PUBLIC_KEY_LEN);
	pthread_mutex_unlock(&p->identity_lock);
	if (!has_identity || sodium_is_zero(peer->static_static, NOISE_PUBLIC_KEY_LEN))
		goto out;

	memset(msg, 0, MESSAGE_INITIATION_SIZE);
	msg[0] = MESSAGE_HANDSHAKE_INITIATION;
	handshake_init(hs->chaining_key, hs->hash, peer->public_key);

	/* e */
	crypto_box_keypair(ephemeral_public, hs->ephemeral_private);
	memcpy(msg + INIT_EPHEMERAL, ephemeral_public, NOISE_PUBLIC_KEY_LEN);
	mix_key(hs->chaining_key, NULL, ephemeral_public, NOISE_PUBLIC_KEY_LEN);
	mix_hash(hs->hash, ephemeral_public, NOISE_PUBLIC_KEY_LEN);

	/* es */
	if (!mix_dh(hs->chaining_key, key, hs->ephemeral_private, peer->public_key))
		goto out;

	/* s */
	message_encrypt(msg + INIT_STATIC, static_public, NOISE_PUBLIC_KEY_LEN, key, hs->hash);

	/* ss */
	if (!mix_precomputed_dh(hs->chaining_key, key, peer->static_static))
		goto out;

	/* {t} */
	wg_tai64n_now(p, timestamp);
	message_encrypt(msg + INIT_TIMESTAMP, timestamp, NOISE_TIMESTAMP_LEN, key, hs->hash);

	index_insert(p, &hs->entry);
	memcpy(msg + INIT_SENDER, &hs->entry.index, 4);
	hs->state = HANDSHAKE_CREATED_INITIATION;
	ret = true;
out:
	if (!ret)
		wg_noise_handshake_clear(p, peer);
	sodium_memzero(key, sizeof(key));
	sodium_memzero(timestamp, sizeof(timestamp));
	return ret;
}

struct wg_peer *wg_noise_consume_initiation(struct wg_proto *p, const uint8_t msg[MESSAGE_INITIATION_SIZE])
{
	uint8_t s[NOISE_PUBLIC_KEY_LEN], e[NOISE_PUBLIC_KEY_LEN];
	uint8_t t[NOISE_TIMESTAMP_LEN];
	uint8_t hash[NOISE_HASH_LEN], ck[NOISE_HASH_LEN], key[NOISE_SYMMETRIC_KEY_LEN];
	struct wg_peer *peer = NULL, *ret = NULL;
	uint64_t now;
	bool replay, flood;

	pthread_rwlock_rdlock(&p->cfg_lock);
	if (!p->has_identity)
		goto out;
	handshake_init(ck, hash, p->static_public);

	/* e */
	memcpy(e, msg + INIT_EPHEMERAL, NOISE_PUBLIC_KEY_LEN);
	mix_key(ck, NULL, e, NOISE_PUBLIC_KEY_LEN);
	mix_hash(hash, e, NOISE_PUBLIC_KEY_LEN);

	/* es */
	if (!mix_dh(ck, key, p->static_private, e))
		goto out;

	/* s */
	if (!message_decrypt(s, msg + INIT_STATIC, NOISE_PUBLIC_KEY_LEN + NOISE_AUTHTAG_LEN, key, hash))
		goto out;

	/* Lookup which peer we're actually talking to */
	peer = wg_peer_lookup_locked(p, s);
	if (!peer || peer->dead) {
		peer = NULL;
		goto out;
	}

	/* ss */
	if (!mix_precomputed_dh(ck, key, peer->static_static))
		goto out;

	/* {t} */
	if (!message_decrypt(t, msg + INIT_TIMESTAMP, NOISE_TIMESTAMP_LEN + NOISE_AUTHTAG_LEN, key, hash))
		goto out;

	pthread_mutex_lock(&peer->lock);
	now = wg_mono_now(p);
	/* TAI64N is big-endian, so bytewise comparison orders it. */
	replay = memcmp(t, peer->hs.latest_timestamp, NOISE_TIMESTAMP_LEN) <= 0;
	flood = peer->hs.last_initiation_consumption &&
		now - peer->hs.last_initiation_consumption < WG_NS_PER_SEC / INITIATIONS_PER_SECOND;
	if (replay || flood) {
		pthread_mutex_unlock(&peer->lock);
		goto out;
	}
	/* Commit: any earlier half-done handshake of ours is abandoned. */
	index_remove(p, &peer->hs.entry);
	memcpy(peer->hs.remote_ephemeral, e, NOISE_PUBLIC_KEY_LEN);
	memcpy(peer->hs.latest_timestamp, t, NOISE_TIMESTAMP_LEN);
	memcpy(peer->hs.hash, hash, NOISE_HASH_LEN);
	memcpy(peer->hs.chaining_key, ck, NOISE_HASH_LEN);
	sodium_memzero(peer->hs.ephemeral_private, NOISE_PUBLIC_KEY_LEN);
	memcpy(&peer->hs.remote_index, msg + INIT_SENDER, 4);
	peer->hs.last_initiation_consumption = now;
	peer->hs.state = HANDSHAKE_CONSUMED_INITIATION;
	pthread_mutex_unlock(&peer->lock);
	wg_peer_get(peer);
	ret = peer;
out:
	pthread_rwlock_unlock(&p->cfg_lock);
	sodium_memzero(key, sizeof(key));
	sodium_memzero(hash, sizeof(hash));
	sodium_memzero(ck, sizeof(ck));
	sodium_memzero(t, sizeof(t));
	return ret;
}

bool wg_noise_create_response(struct wg_proto *p, struct wg_peer *peer, uint8_t msg[MESSAGE_RESPONSE_SIZE])
{
	struct wg_handshake *hs = &peer->hs;
	uint8_t key[NOISE_SYMMETRIC_KEY_LEN];
	uint8_t ephemeral_public[NOISE_PUBLIC_KEY_LEN];
	bool ret = false;

	if (hs->state != HANDSHAKE_CONSUMED_INITIATION)
		goto out;

	memset(msg, 0, MESSAGE_RESPONSE_SIZE);
	msg[0] = MESSAGE_HANDSHAKE_RESPONSE;
	memcpy(msg + RESP_RECEIVER, &hs->remote_index, 4);

	/* e */
	crypto_box_keypair(ephemeral_public, hs->ephemeral_private);
	memcpy(msg + RESP_EPHEMERAL, ephemeral_public, NOISE_PUBLIC_KEY_LEN);
	mix_key(hs->chaining_key, NULL, ephemeral_public, NOISE_PUBLIC_KEY_LEN);
	mix_hash(hs->hash, ephemeral_public, NOISE_PUBLIC_KEY_LEN);

	/* ee */
	if (!mix_dh(hs->chaining_key, NULL, hs->ephemeral_private, hs->remote_ephemeral))
		goto out;

	/* se */
	if (!mix_dh(hs->chaining_key, NULL, hs->ephemeral_private, peer->public_key))
		goto out;

	/* psk */
	mix_psk(hs->chaining_key, hs->hash, key, peer->preshared_key);

	/* {} */
	message_encrypt(msg + RESP_EMPTY, NULL, 0, key, hs->hash);

	index_insert(p, &hs->entry);
	memcpy(msg + RESP_SENDER, &hs->entry.index, 4);
	hs->state = HANDSHAKE_CREATED_RESPONSE;
	ret = true;
out:
	if (!ret)
		wg_noise_handshake_clear(p, peer);
	sodium_memzero(key, sizeof(key));
	return ret;
}

struct wg_peer *wg_noise_consume_response(struct wg_proto *p, const uint8_t msg[MESSAGE_RESPONSE_SIZE])
{
	uint8_t e[NOISE_PUBLIC_KEY_LEN];
	uint8_t hash[NOISE_HASH_LEN], ck[NOISE_HASH_LEN], key[NOISE_SYMMETRIC_KEY_LEN];
	uint8_t ephemeral_private[NOISE_PUBLIC_KEY_LEN];
	uint8_t static_private[NOISE_PUBLIC_KEY_LEN];
	uint8_t psk[NOISE_SYMMETRIC_KEY_LEN];
	struct wg_peer *peer, *ret = NULL;
	uint32_t receiver, sender;
	enum wg_handshake_state state;

	memcpy(&receiver, msg + RESP_RECEIVER, 4);
	memcpy(&sender, msg + RESP_SENDER, 4);
	peer = wg_index_lookup(p, receiver, WG_INDEX_HANDSHAKE, NULL);
	if (!peer)
		return NULL;

	/* Copy what we need, then do the DH work without the lock. */
	pthread_mutex_lock(&p->identity_lock);
	memcpy(static_private, p->static_private, sizeof(static_private));
	pthread_mutex_unlock(&p->identity_lock);
	pthread_mutex_lock(&peer->lock);
	state = peer->hs.state;
	memcpy(hash, peer->hs.hash, NOISE_HASH_LEN);
	memcpy(ck, peer->hs.chaining_key, NOISE_HASH_LEN);
	memcpy(ephemeral_private, peer->hs.ephemeral_private, NOISE_PUBLIC_KEY_LEN);
	memcpy(psk, peer->preshared_key, NOISE_SYMMETRIC_KEY_LEN);
	pthread_mutex_unlock(&peer->lock);

	if (state != HANDSHAKE_CREATED_INITIATION)
		goto fail;

	/* e */
	memcpy(e, msg + RESP_EPHEMERAL, NOISE_PUBLIC_KEY_LEN);
	mix_key(ck, NULL, e, NOISE_PUBLIC_KEY_LEN);
	mix_hash(hash, e, NOISE_PUBLIC_KEY_LEN);

	/* ee */
	if (!mix_dh(ck, NULL, ephemeral_private, e))
		goto fail;

	/* se */
	if (!mix_dh(ck, NULL, static_private, e))
		goto fail;

	/* psk */
	mix_psk(ck, hash, key, psk);

	/* {} */
	if (!message_decrypt(NULL, msg + RESP_EMPTY, NOISE_AUTHTAG_LEN, key, hash))
		goto fail;

	pthread_mutex_lock(&peer->lock);
	/* Re-check: another thread may have moved the handshake on meanwhile. */
	if (peer->hs.state != state || peer->hs.entry.index != receiver) {
		pthread_mutex_unlock(&peer->lock);
		goto fail;
	}
	memcpy(peer->hs.remote_ephemeral, e, NOISE_PUBLIC_KEY_LEN);
	memcpy(peer->hs.hash, hash, NOISE_HASH_LEN);
	memcpy(peer->hs.chaining_key, ck, NOISE_HASH_LEN);
	peer->hs.remote_index = sender;
	peer->hs.state = HANDSHAKE_CONSUMED_RESPONSE;
	pthread_mutex_unlock(&peer->lock);
	ret = peer;
	goto out;
fail:
	wg_peer_put(peer);
out:
	sodium_memzero(key, sizeof(key));
	sodium_memzero(hash, sizeof(hash));
	sodium_memzero(ck, sizeof(ck));
	sodium_memzero(ephemeral_private, sizeof(ephemeral_private));
	sodium_memzero(static_private, sizeof(static_private));
	sodium_memzero(psk, sizeof(psk));
	return ret;
}

bool wg_noise_begin_session(struct wg_proto *p, struct wg_peer *peer)
{
	struct wg_handshake *hs = &peer->hs;
	struct wg_keypair *kp, *cur, *prev, *next;
	bool initiator;

	if (hs->state != HANDSHAKE_CREATED_RESPONSE && hs->state != HANDSHAKE_CONSUMED_RESPONSE)
		return false;
	initiator = hs->state == HANDSHAKE_CONSUMED_RESPONSE;

	kp = calloc(1, sizeof(*kp));
	if (!kp)
		return false;
	atomic_init(&kp->refcount, 1);
	pthread_mutex_init(&kp->replay_lock, NULL);
	wg_replay_init(&kp->replay);
	kp->peer = peer;
	wg_peer_get(peer);
	atomic_fetch_add(&p->live_keypairs, 1);
	kp->entry.type = WG_INDEX_KEYPAIR;
	kp->entry.peer = peer;
	kp->entry.keypair = kp;
	kp->i_am_initiator = initiator;
	kp->remote_index = hs->remote_index;
	kp->birth = wg_mono_now(p);
	/* (T_send, T_recv) := KDF2(ck, e) for the initiator, swapped for the responder. */
	if (initiator)
		wg_kdf(kp->send_key, kp->recv_key, NULL, NULL, 0, hs->chaining_key);
	else
		wg_kdf(kp->recv_key, kp->send_key, NULL, NULL, 0, hs->chaining_key);
	atomic_init(&kp->send_nonce, 0);
	atomic_init(&kp->sending_valid, true);
	atomic_init(&kp->receiving_valid, true);

	index_replace(p, &hs->entry, &kp->entry);
	wg_noise_handshake_clear(p, peer);

	cur = peer->kp_current;
	prev = peer->kp_previous;
	next = peer->kp_next;
	if (initiator) {
		/* We confirm at once (the responder waits for our first packet). */
		if (next) {
			peer->kp_next = NULL;
			peer->kp_previous = next;
			keypair_retire(p, cur);
		} else {
			peer->kp_previous = cur;
		}
		keypair_retire(p, prev);
		peer->kp_current = kp;
	} else {
		/* The responder may not send with the new keys until the initiator
		 * proves it has them, so the keypair waits in `next`. */
		peer->kp_next = kp;
		keypair_retire(p, next);
		peer->kp_previous = NULL;
		keypair_retire(p, prev);
	}
	return true;
}

bool wg_noise_received_with_keypair(struct wg_peer *peer, struct wg_keypair *kp)
{
	struct wg_keypair *old_prev;

	if (kp != peer->kp_next)
		return false;
	old_prev = peer->kp_previous;
	peer->kp_previous = peer->kp_current;
	peer->kp_current = peer->kp_next;
	peer->kp_next = NULL;
	keypair_retire(peer->proto, old_prev);
	return true;
}
