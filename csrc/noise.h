/* Noise_IKpsk2 handshake, keypairs and the receiver-index table.
 * Internal to the protocol layer (proto.c, timers.c, cookie.c). */
#ifndef WG_NOISE_H
#define WG_NOISE_H
#include "proto.h"

void wg_noise_init(void);
/* Called with peer->lock held.  Builds a full initiation (mac1/mac2 added
 * by the caller through cookie.c).  false if there is no identity or the
 * static-static DH is invalid. */
bool wg_noise_create_initiation(struct wg_proto *p, struct wg_peer *peer, uint8_t msg[MESSAGE_INITIATION_SIZE]);
/* Returns the initiating peer (referenced) with its handshake moved to
 * CONSUMED_INITIATION, or NULL. Takes cfg rdlock itself. */
struct wg_peer *wg_noise_consume_initiation(struct wg_proto *p, const uint8_t msg[MESSAGE_INITIATION_SIZE]);
/* Called with peer->lock held. */
bool wg_noise_create_response(struct wg_proto *p, struct wg_peer *peer, uint8_t msg[MESSAGE_RESPONSE_SIZE]);
struct wg_peer *wg_noise_consume_response(struct wg_proto *p, const uint8_t msg[MESSAGE_RESPONSE_SIZE]);
/* Called with peer->lock held: derives the transport keypair from a
 * completed handshake and rotates current/previous/next. */
bool wg_noise_begin_session(struct wg_proto *p, struct wg_peer *peer);
/* Responder confirmation: the first packet under kp_next promotes it.
 * Called with peer->lock held; true if a rotation happened. */
bool wg_noise_received_with_keypair(struct wg_peer *peer, struct wg_keypair *kp);
/* Both called with peer->lock held. */
void wg_noise_handshake_clear(struct wg_proto *p, struct wg_peer *peer);
void wg_noise_keypairs_clear(struct wg_proto *p, struct wg_peer *peer);
void wg_noise_expire_current_for_sending(struct wg_peer *peer);

void wg_keypair_get(struct wg_keypair *kp);
void wg_keypair_put(struct wg_keypair *kp);

/* Index table. lookup returns the entry's peer (referenced) and, for a keypair
 * entry, the keypair (referenced) in *kp. */
struct wg_peer *wg_index_lookup(struct wg_proto *p, uint32_t index, uint8_t type_mask, struct wg_keypair **kp);

void wg_tai64n_now(struct wg_proto *p, uint8_t out[NOISE_TIMESTAMP_LEN]);
uint64_t wg_mono_now(struct wg_proto *p);
uint64_t wg_real_now(struct wg_proto *p);
#endif
