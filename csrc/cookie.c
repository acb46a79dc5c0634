/* Cookies: the DoS mitigation of whitepaper section 5.3 / 5.4.7.
 *
 * mac1 = MAC(HASH(LABEL_MAC1 || S_pub_receiver), msg_before_mac1) proves the
 * sender knows our public key and is checked before any DH.  When the engine
 * is under load, mac2 = MAC(cookie, msg_before_mac2) must also be valid,
 * where the cookie is MAC(R, source address and port) under a secret R
 * rotated every two minutes; otherwise the sender gets a cookie reply,
 * encrypted with XChaCha20-Poly1305 under HASH(LABEL_COOKIE || S_pub) and
 * bound to the mac1 it answers. */
#include <string.h>

#include <sodium.h>

#include "blake2s.h"
#include "cookie.h"
#include "noise.h"

#define COOKIE_REPLY_RECEIVER 4
#define COOKIE_REPLY_NONCE 8
#define COOKIE_REPLY_COOKIE 32

static void precompute_key(uint8_t key[NOISE_SYMMETRIC_KEY_LEN], const uint8_t pub[NOISE_PUBLIC_KEY_LEN],
			   const char *label)
{
	struct wg_blake2s_state s;

	wg_blake2s_init(&s, NOISE_SYMMETRIC_KEY_LEN);
	wg_blake2s_update(&s, (const uint8_t *)label, 8);
	wg_blake2s_update(&s, pub, NOISE_PUBLIC_KEY_LEN);
	wg_blake2s_final(&s, key);
}

void wg_cookie_set_identity(struct wg_proto *p)
{
	precompute_key(p->mac1_key, p->static_public, LABEL_MAC1);
	precompute_key(p->cookie_key, p->static_public, LABEL_COOKIE);
}

void wg_cookie_peer_init(struct wg_peer *peer)
{
	precompute_key(peer->cookie.mac1_key, peer->public_key, LABEL_MAC1);
	precompute_key(peer->cookie.decryption_key, peer->public_key, LABEL_COOKIE);
}

static void compute_mac1(uint8_t mac1[COOKIE_LEN], const uint8_t *msg, size_t len,
			 const uint8_t key[NOISE_SYMMETRIC_KEY_LEN])
{
	wg_blake2s(mac1, COOKIE_LEN, msg, len - 2 * COOKIE_LEN, key, NOISE_SYMMETRIC_KEY_LEN);
}

static void compute_mac2(uint8_t mac2[COOKIE_LEN], const uint8_t *msg, size_t len, const uint8_t cookie[COOKIE_LEN])
{
	wg_blake2s(mac2, COOKIE_LEN, msg, len - COOKIE_LEN, cookie, COOKIE_LEN);
}

/* The cookie for a source: MAC(R, ip || port) with a lazily rotated R. */
static void make_cookie(struct wg_proto *p, uint8_t cookie[COOKIE_LEN], const struct wg_endpoint *src)
{
	struct wg_blake2s_state s;
	uint64_t now = wg_mono_now(p);

	pthread_mutex_lock(&p->cookie_lock);
	if (!p->cookie_secret_birth || now - p->cookie_secret_birth >= COOKIE_SECRET_MAX_AGE) {
		randombytes_buf(p->cookie_secret, sizeof(p->cookie_secret));
		p->cookie_secret_birth = now ? now : 1;
	}
	wg_blake2s_init_key(&s, COOKIE_LEN, p->cookie_secret, NOISE_HASH_LEN);
	pthread_mutex_unlock(&p->cookie_lock);
	if (src->addr.sa.sa_family == AF_INET) {
		wg_blake2s_update(&s, (const uint8_t *)&src->addr.in4.sin_addr, 4);
		wg_blake2s_update(&s, (const uint8_t *)&src->addr.in4.sin_port, 2);
	} else {
		wg_blake2s_update(&s, (const uint8_t *)&src->addr.in6.sin6_addr, 16);
		wg_blake2s_update(&s, (const uint8_t *)&src->addr.in6.sin6_port, 2);
	}
	wg_blake2s_final(&s, cookie);
}

enum wg_cookie_mac_state wg_cookie_validate(struct wg_proto *p, const uint8_t *msg, size_t len,
					    const struct wg_endpoint *src, bool check_cookie)
{
	uint8_t mac[COOKIE_LEN], cookie[COOKIE_LEN];
	enum wg_cookie_mac_state ret = WG_MAC_INVALID;

	compute_mac1(mac, msg, len, p->mac1_key);
	if (sodium_memcmp(mac, msg + len - 2 * COOKIE_LEN, COOKIE_LEN) != 0)
		goto out;
	ret = WG_MAC_VALID_NO_COOKIE;
	if (!check_cookie)
		goto out;
	make_cookie(p, cookie, src);
	compute_mac2(mac, msg, len, cookie);
	if (sodium_memcmp(mac, msg + len - COOKIE_LEN, COOKIE_LEN) == 0)
		ret = WG_MAC_VALID_WITH_COOKIE;
out:
	sodium_memzero(cookie, sizeof(cookie));
	return ret;
}

void wg_cookie_add_macs(struct wg_peer *peer, uint8_t *msg, size_t len)
{
	struct wg_cookie_state *c = &peer->cookie;
	uint64_t now = wg_mono_now(peer->proto);

	compute_mac1(msg + len - 2 * COOKIE_LEN, msg, len, c->mac1_key);
	memcpy(c->last_mac1_sent, msg + len - 2 * COOKIE_LEN, COOKIE_LEN);
	c->have_sent_mac1 = true;
	/* A cookie is only good while the responder's secret that made it can
	 * still be current: discard it a little before COOKIE_SECRET_MAX_AGE. */
	if (c->birth && now - c->birth < COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY)
		compute_mac2(msg + len - COOKIE_LEN, msg, len, c->cookie);
	else
		memset(msg + len - COOKIE_LEN, 0, COOKIE_LEN);
}

/* A fresh cookie-reply nonce without a getrandom() system call for each
 * (under a flood these are made at line rate): ChaCha20 under a per-thread
 * key from the system generator, over a per-thread counter.  Unique and
 * unpredictable, which is all XChaCha20's 192-bit nonce asks for. */
static void reply_nonce(uint8_t nonce[COOKIE_NONCE_LEN])
{
	static __thread uint8_t key[crypto_stream_chacha20_KEYBYTES];
	static __thread uint64_t counter;
	uint8_t n[crypto_stream_chacha20_NONCEBYTES];

	if (!counter)
		randombytes_buf(key, sizeof(key));
	counter++;
	memcpy(n, &counter, sizeof(n));
	crypto_stream_chacha20(nonce, COOKIE_NONCE_LEN, n, key);
}

void wg_cookie_create_reply(struct wg_proto *p, uint8_t out[MESSAGE_COOKIE_REPLY_SIZE], const uint8_t *msg, size_t len,
			    const struct wg_endpoint *src)
{
	uint8_t cookie[COOKIE_LEN];

	memset(out, 0, MESSAGE_COOKIE_REPLY_SIZE);
	out[0] = MESSAGE_HANDSHAKE_COOKIE;
	/* Both handshake messages carry the sender index at offset 4. */
	memcpy(out + COOKIE_REPLY_RECEIVER, msg + 4, 4);
	reply_nonce(out + COOKIE_REPLY_NONCE);
	make_cookie(p, cookie, src);
	crypto_aead_xchacha20poly1305_ietf_encrypt(out + COOKIE_REPLY_COOKIE, NULL, cookie, COOKIE_LEN,
						   msg + len - 2 * COOKIE_LEN, COOKIE_LEN, NULL,
						   out + COOKIE_REPLY_NONCE, p->cookie_key);
	sodium_memzero(cookie, sizeof(cookie));
}

void wg_cookie_consume_reply(struct wg_proto *p, const uint8_t msg[MESSAGE_COOKIE_REPLY_SIZE])
{
	uint8_t cookie[COOKIE_LEN];
	struct wg_peer *peer;
	uint32_t receiver;

	memcpy(&receiver, msg + COOKIE_REPLY_RECEIVER, 4);
	peer = wg_index_lookup(p, receiver, WG_INDEX_HANDSHAKE | WG_INDEX_KEYPAIR, NULL);
	if (!peer)
		return;
	pthread_mutex_lock(&peer->lock);
	if (peer->cookie.have_sent_mac1 &&
	    crypto_aead_xchacha20poly1305_ietf_decrypt(cookie, NULL, NULL, msg + COOKIE_REPLY_COOKIE,
						       COOKIE_LEN + NOISE_AUTHTAG_LEN, peer->cookie.last_mac1_sent,
						       COOKIE_LEN, msg + COOKIE_REPLY_NONCE,
						       peer->cookie.decryption_key) == 0) {
		memcpy(peer->cookie.cookie, cookie, COOKIE_LEN);
		peer->cookie.birth = wg_mono_now(p);
		if (!peer->cookie.birth)
			peer->cookie.birth = 1;
		/* One reply per mac1: a replayed reply cannot refresh the cookie. */
		peer->cookie.have_sent_mac1 = false;
	} else {
		atomic_fetch_add(&p->stats.rx_handshake_invalid, 1);
	}
	pthread_mutex_unlock(&peer->lock);
	sodium_memzero(cookie, sizeof(cookie));
	wg_peer_put(peer);
}
