/* The WireGuard protocol state of one interface: identity, peers, handshakes,
 * keypairs, cookies, rate limits, cryptokey routing and timers.
 *
 * Pure protocol: no sockets, no TUN, no clock of its own.  The engine (or a
 * unit test) hands in bytes and receives bytes and events through
 * struct wg_proto_ops callbacks; time comes from ops->clock.  Everything here
 * is thread-safe so that several engine threads may call in at once.
 *
 * Locking order: proto->cfg_lock (rw) -> peer->lock -> proto->index_lock. */
#ifndef WG_PROTO_H
#define WG_PROTO_H
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "allowedips.h"
#include "replay.h"
#include "wg_constants.h"

struct wg_proto;
struct wg_peer;

/* Buffers given to wg_proto_send_ip must have this much writable room before
 * and after the IP packet, so that the header and padding+tag fit in place. */
#define WG_HEADROOM MESSAGE_DATA_HEADER_SIZE
#define WG_TAILROOM (MESSAGE_PADDING_MULTIPLE + NOISE_AUTHTAG_LEN)

struct wg_endpoint {
	union {
		struct sockaddr sa;
		struct sockaddr_in in4;
		struct sockaddr_in6 in6;
	} addr;
	/* The local address a packet from this endpoint arrived on, so that
	 * replies leave from it (multi-homed hosts).  Zero = let the kernel pick. */
	union {
		struct in_addr src4;
		struct in6_addr src6;
	};
	uint32_t src_ifindex;
	/* Non-zero: the peer is reached through a TURN relay at addr, on this
	 * channel (0x4000-0x4FFF); datagrams travel framed as ChannelData
	 * (RFC 8656 section 12.4), still end-to-end WireGuard-encrypted. */
	uint16_t relay_channel;
};

enum wg_event_type {
	WG_EVENT_HANDSHAKE_COMPLETE = 1,
	WG_EVENT_ENDPOINT_CHANGED,
	WG_EVENT_PEER_STALE, /* gave up retrying handshakes (REKEY_ATTEMPT_TIME) */
};

struct wg_proto_ops {
	/* Monotonic and real (epoch) time in nanoseconds; fills only the
	 * non-NULL ones (the datapath asks for monotonic time per packet). */
	void (*clock)(void *ctx, uint64_t *mono_ns, uint64_t *real_ns);
	/* Send one UDP datagram; must consume buf before returning. */
	void (*send_udp)(void *ctx, const struct wg_endpoint *to, const uint8_t *buf, size_t len);
	/* Deliver one decrypted, validated IP packet to the TUN device.  ip has
	 * WG_HEADROOM writable bytes before it (room for a virtio header). */
	void (*deliver)(void *ctx, const uint8_t *ip, size_t len);
	/* A timer deadline earlier than any before was armed: wake the timer loop. */
	void (*timer_kick)(void *ctx);
	/* Protocol event for a peer (called without locks held). */
	void (*event)(void *ctx, enum wg_event_type type, const uint8_t public_key[32], const struct wg_endpoint *ep);
};

enum wg_handshake_state {
	HANDSHAKE_ZEROED = 0,
	HANDSHAKE_CREATED_INITIATION,
	HANDSHAKE_CONSUMED_INITIATION,
	HANDSHAKE_CREATED_RESPONSE,
	HANDSHAKE_CONSUMED_RESPONSE,
};

enum wg_index_type { WG_INDEX_HANDSHAKE = 1, WG_INDEX_KEYPAIR = 2 };

struct wg_index_entry {
	uint32_t index; /* 0 = not in the table */
	uint8_t type;
	struct wg_peer *peer;
	struct wg_keypair *keypair;
	struct wg_index_entry *next;
};

struct wg_keypair {
	atomic_int refcount;
	struct wg_peer *peer; /* the keypair holds a peer reference */
	struct wg_index_entry entry;
	uint8_t send_key[NOISE_SYMMETRIC_KEY_LEN];
	uint8_t recv_key[NOISE_SYMMETRIC_KEY_LEN];
	atomic_uint_fast64_t send_nonce;
	atomic_bool sending_valid, receiving_valid;
	uint64_t birth; /* monotonic ns */
	uint32_t remote_index;
	bool i_am_initiator;
	pthread_mutex_t replay_lock;
	struct wg_replay replay;
};

struct wg_handshake {
	enum wg_handshake_state state;
	struct wg_index_entry entry;
	uint8_t ephemeral_private[NOISE_PUBLIC_KEY_LEN];
	uint8_t remote_ephemeral[NOISE_PUBLIC_KEY_LEN];
	uint8_t hash[NOISE_HASH_LEN];
	uint8_t chaining_key[NOISE_HASH_LEN];
	uint8_t latest_timestamp[NOISE_TIMESTAMP_LEN];
	uint32_t remote_index;
	uint64_t last_initiation_consumption; /* monotonic ns, 0 = never */
};

struct wg_cookie_state { /* initiator side: the cookie a responder gave us */
	uint8_t cookie[COOKIE_LEN];
	uint64_t birth; /* monotonic ns, 0 = none */
	bool have_sent_mac1;
	uint8_t last_mac1_sent[COOKIE_LEN];
	uint8_t decryption_key[NOISE_SYMMETRIC_KEY_LEN]; /* HASH(LABEL_COOKIE || S_pub_peer) */
	uint8_t mac1_key[NOISE_SYMMETRIC_KEY_LEN];       /* HASH(LABEL_MAC1 || S_pub_peer) */
};

struct wg_staged { /* packets waiting for a session */
	uint8_t *bufs[MAX_STAGED_PACKETS];
	size_t lens[MAX_STAGED_PACKETS];
	unsigned head, count;
};

enum wg_timer {
	TIMER_RETRANSMIT_HANDSHAKE,
	TIMER_SEND_KEEPALIVE,
	TIMER_NEW_HANDSHAKE,
	TIMER_ZERO_KEY_MATERIAL,
	TIMER_PERSISTENT_KEEPALIVE,
	WG_TIMER_COUNT
};

struct wg_peer {
	atomic_int refcount;
	struct wg_proto *proto;
	pthread_mutex_t lock; /* handshake, keypairs, endpoint, timers, staged */
	uint8_t public_key[NOISE_PUBLIC_KEY_LEN];
	uint8_t preshared_key[NOISE_SYMMETRIC_KEY_LEN];
	uint8_t static_static[NOISE_PUBLIC_KEY_LEN]; /* DH(S_priv, S_pub_peer), 0 if invalid */
	struct wg_handshake hs;
	struct wg_cookie_state cookie;
	struct wg_keypair *kp_current, *kp_previous, *kp_next;
	struct wg_endpoint endpoint;
	bool has_endpoint;
	struct wg_aip_owner aips;
	struct wg_staged *staged; /* allocated while packets wait (idle peers stay small) */
	atomic_uint_fast64_t rx_bytes, tx_bytes;
	uint64_t last_handshake_real;    /* epoch ns, 0 = never */
	uint64_t last_sent_handshake;    /* monotonic ns, 0 = never */
	uint64_t timers[WG_TIMER_COUNT]; /* monotonic deadlines, 0 = not armed */
	unsigned handshake_attempts;
	uint16_t persistent_keepalive; /* seconds, 0 = off */
	bool need_another_keepalive;
	bool sent_lastminute_handshake;
	bool dead;
	struct wg_peer *hash_next;   /* public key table */
	struct wg_peer *prev, *next; /* device list, in insertion order */
};

struct wg_ratelimit_entry {
	uint8_t key[16];
	uint64_t last;   /* monotonic ns */
	uint64_t tokens; /* in ns of credit */
};

#define WG_RATELIMIT_SLOTS 16384
#define WG_PEER_HASH_BITS 14
#define WG_INDEX_HASH_BITS 16

struct wg_proto_stats {
	atomic_uint_fast64_t rx_junk; /* not a WireGuard message */
	atomic_uint_fast64_t rx_bad_mac1;
	atomic_uint_fast64_t rx_cookie_sent; /* under load without valid mac2 */
	atomic_uint_fast64_t rx_ratelimited;
	atomic_uint_fast64_t rx_handshake_invalid; /* failed decryption, unknown peer, replay, flood */
	atomic_uint_fast64_t rx_unknown_index;
	atomic_uint_fast64_t rx_decrypt_failed;
	atomic_uint_fast64_t rx_replayed;
	atomic_uint_fast64_t rx_expired_key;
	atomic_uint_fast64_t rx_bad_inner;      /* malformed inner IP packet */
	atomic_uint_fast64_t rx_wrong_source;   /* inner source not allowed for the peer */
	atomic_uint_fast64_t tx_no_route;       /* no peer for the destination */
	atomic_uint_fast64_t tx_staged_dropped; /* staged queue full */
	atomic_uint_fast64_t tx_bad_offload;    /* TSO/checksum request we could not honour */
	atomic_uint_fast64_t handshakes_completed;
	/* handshake messages sent, and received authenticated (metrics) */
	atomic_uint_fast64_t tx_initiations, tx_responses, rx_initiations, rx_responses;
};

struct wg_proto {
	const struct wg_proto_ops *ops;
	void *ctx;
	pthread_rwlock_t cfg_lock;
	/* Identity: written under cfg_lock (write) + identity_lock; read under
	 * either.  identity_lock ranks below peer->lock. */
	pthread_mutex_t identity_lock;
	bool has_identity;
	uint8_t static_private[NOISE_PUBLIC_KEY_LEN];
	uint8_t static_public[NOISE_PUBLIC_KEY_LEN];
	uint8_t mac1_key[NOISE_SYMMETRIC_KEY_LEN];   /* HASH(LABEL_MAC1 || S_pub) */
	uint8_t cookie_key[NOISE_SYMMETRIC_KEY_LEN]; /* HASH(LABEL_COOKIE || S_pub) */
	struct wg_peer *peer_hash[1u << WG_PEER_HASH_BITS];
	struct wg_peer *peers_head, *peers_tail;
	size_t npeers;
	struct wg_allowedips aips;
	uint8_t hash_secret[16]; /* siphash key for tables */

	pthread_rwlock_t index_lock;
	struct wg_index_entry *index_hash[1u << WG_INDEX_HASH_BITS];

	/* responder cookie secret (rotated every COOKIE_SECRET_MAX_AGE) */
	pthread_mutex_t cookie_lock;
	uint8_t cookie_secret[NOISE_HASH_LEN];
	uint64_t cookie_secret_birth;

	pthread_mutex_t ratelimit_lock;
	struct wg_ratelimit_entry *ratelimit; /* WG_RATELIMIT_SLOTS */

	atomic_uint_fast64_t next_deadline; /* earliest armed timer, hint for the loop */
	struct wg_proto_stats stats;
	/* Test hook: how many secret-bearing objects (keypairs, handshakes with
	 * key material, identity) are alive; checked to prove wiping on teardown. */
	atomic_int live_keypairs;
};

/* --- lifecycle and configuration (called under no lock) --- */
int wg_proto_init(struct wg_proto *p, const struct wg_proto_ops *ops, void *ctx);
void wg_proto_destroy(struct wg_proto *p);                                /* frees peers, wipes keys */
void wg_proto_set_private_key(struct wg_proto *p, const uint8_t key[32]); /* NULL clears */
bool wg_proto_get_public_key(struct wg_proto *p, uint8_t out[32]);
/* Configuration transactions: take the write lock, then use the _locked calls. */
void wg_proto_cfg_wrlock(struct wg_proto *p);
void wg_proto_cfg_rdlock(struct wg_proto *p);
void wg_proto_cfg_unlock(struct wg_proto *p);
void wg_proto_set_private_key_locked(struct wg_proto *p, const uint8_t key[32]);
struct wg_peer *wg_peer_lookup_locked(struct wg_proto *p, const uint8_t pub[32]);
/* Key rotation, sessions kept (see proto.c / peer.c): 0 or -errno. */
int wg_proto_rotate_private_key_locked(struct wg_proto *p, const uint8_t key[32]);
int wg_peer_set_public_key_locked(struct wg_proto *p, struct wg_peer *peer, const uint8_t pub[32]);
/* Returns NULL on ENOMEM or if pub equals our own public key (-EINVAL in *err). */
struct wg_peer *wg_peer_create_locked(struct wg_proto *p, const uint8_t pub[32], int *err);
void wg_peer_remove_locked(struct wg_proto *p, struct wg_peer *peer);
void wg_peer_remove_all_locked(struct wg_proto *p);
void wg_peer_set_preshared_key(struct wg_peer *peer, const uint8_t psk[32]);
void wg_peer_set_endpoint(struct wg_peer *peer, const struct sockaddr *sa);
/* Reaches the peer through a TURN relay (server address, channel). */
void wg_peer_set_relay_endpoint(struct wg_peer *peer, const struct sockaddr *server, uint16_t channel);
/* Sets the persistent keepalive; a newly enabled one sends a keepalive now
 * (as wg(8) users expect: the tunnel comes up without traffic). */
void wg_peer_set_keepalive(struct wg_peer *peer, uint16_t seconds);
int wg_peer_aip_insert_locked(struct wg_proto *p, struct wg_peer *peer, int family, const uint8_t *addr, uint8_t cidr);
int wg_peer_aip_remove_locked(struct wg_proto *p, struct wg_peer *peer, int family, const uint8_t *addr, uint8_t cidr);
void wg_peer_aip_clear_locked(struct wg_proto *p, struct wg_peer *peer);

/* Snapshot of one peer for status/UAPI (keys are public only, plus the psk
 * for the root-only UAPI which must return it). */
struct wg_peer_info {
	uint8_t public_key[32];
	uint8_t preshared_key[32];
	struct wg_endpoint endpoint;
	bool has_endpoint;
	uint64_t last_handshake_real; /* epoch ns */
	uint64_t rx_bytes, tx_bytes;
	uint16_t persistent_keepalive;
};
void wg_peer_info(struct wg_peer *peer, struct wg_peer_info *out);

/* Packets waiting for a session (peer->lock held). */
static inline unsigned wg_peer_staged_count(const struct wg_peer *peer)
{
	return peer->staged ? peer->staged->count : 0;
}

void wg_peer_get(struct wg_peer *peer);
void wg_peer_put(struct wg_peer *peer);

/* --- datapath --- */
/* Message type if buf looks like a WireGuard message of the right size, else 0. */
int wg_proto_message_type(const uint8_t *buf, size_t len);
/* Cheap pre-check (no DH) that a handshake message carries a valid mac1. */
bool wg_proto_check_mac1(struct wg_proto *p, const uint8_t *buf, size_t len);
/* While the handshake worker is under load, for the receiving thread: an
 * initiation or response with a valid mac1 but no valid mac2 gets its
 * cookie reply right here and true is returned (done with it); false means
 * the message carries a valid cookie (or is a cookie reply) and should be
 * queued for the worker.  This keeps a flood of spoofed initiations out of
 * the worker's queue, where it would crowd out a legitimate peer's retry. */
bool wg_proto_answer_with_cookie(struct wg_proto *p, const struct wg_endpoint *src, const uint8_t *buf, size_t len);
/* Handshake messages (types 1..3).  under_load: the engine's handshake queue
 * is congested, so demand a valid mac2 (else reply with a cookie) and apply
 * the per-source rate limit. */
void wg_proto_receive_handshake(struct wg_proto *p, const struct wg_endpoint *src, const uint8_t *buf, size_t len,
				bool under_load);
/* Transport data (type 4), decrypted in place. */
void wg_proto_receive_data(struct wg_proto *p, const struct wg_endpoint *src, uint8_t *buf, size_t len);
/* An IP packet from the TUN device.  ip must have WG_HEADROOM bytes before it
 * and WG_TAILROOM after it.  mtu bounds the padding. */
void wg_proto_send_ip(struct wg_proto *p, uint8_t *ip, size_t len, unsigned mtu);
/* Encrypts n packets bound for one destination (the segments of one TSO
 * packet) under consecutive nonces of one session, in place: pkts[i] has
 * WG_HEADROOM before and WG_TAILROOM after it.  On return lens[i] is the
 * datagram length (starting at pkts[i] - WG_HEADROOM) and *ep the endpoint.
 * Returns n, or 0 when there was no usable session (the packets were then
 * staged and a handshake started) or no route. */
size_t wg_proto_send_batch(struct wg_proto *p, uint8_t **pkts, size_t *lens, size_t n, unsigned mtu,
			   struct wg_endpoint *ep);
/* Length of the datagram carrying an IP packet of len bytes (header,
 * padding to 16 within the MTU, tag). */
size_t wg_proto_datagram_len(size_t len, unsigned mtu);
/* Runs every due timer; returns the next deadline (monotonic ns, 0 = none). */
uint64_t wg_proto_tick(struct wg_proto *p);
/* Initiates a handshake now (used by tests and by "force rekey"). */
void wg_peer_initiate_handshake(struct wg_peer *peer, bool is_retry);

/* --- helpers shared by modules --- */
uint32_t wg_proto_hash_index(const struct wg_proto *p, uint32_t index);
#endif
