/* mac1/mac2 and cookie replies (whitepaper 5.4.4, 5.4.7), and the per-source
 * handshake rate limiter used while under load. */
#ifndef WG_COOKIE_H
#define WG_COOKIE_H
#include "proto.h"

enum wg_cookie_mac_state {
	WG_MAC_INVALID,
	WG_MAC_VALID_NO_COOKIE,
	WG_MAC_VALID_WITH_COOKIE,
};

/* Derives the device's mac1 and cookie keys from its static public key. */
void wg_cookie_set_identity(struct wg_proto *p);
/* Derives a peer's mac1 key and cookie decryption key from its public key. */
void wg_cookie_peer_init(struct wg_peer *peer);
/* Checks mac1 always, and mac2 against the cookie for src if check_cookie. */
enum wg_cookie_mac_state wg_cookie_validate(struct wg_proto *p, const uint8_t *msg, size_t len,
					    const struct wg_endpoint *src, bool check_cookie);
/* Fills mac1 (and mac2 when holding a fresh cookie); peer->lock held. */
void wg_cookie_add_macs(struct wg_peer *peer, uint8_t *msg, size_t len);
/* Builds a 64-byte cookie reply to msg (a handshake from src). */
void wg_cookie_create_reply(struct wg_proto *p, uint8_t out[MESSAGE_COOKIE_REPLY_SIZE], const uint8_t *msg, size_t len,
			    const struct wg_endpoint *src);
/* Accepts a cookie reply addressed to one of our pending handshakes. */
void wg_cookie_consume_reply(struct wg_proto *p, const uint8_t msg[MESSAGE_COOKIE_REPLY_SIZE]);

/* Token bucket per source address (/64 for IPv6). */
bool wg_ratelimit_allow(struct wg_proto *p, const struct wg_endpoint *src);
#endif
