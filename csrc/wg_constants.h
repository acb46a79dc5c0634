/* Protocol constants, each once, by the whitepaper's own names (section 6.1
 * "Protocol Constants" and 5.4 message formats). */
#ifndef WG_CONSTANTS_H
#define WG_CONSTANTS_H
#include <stdint.h>

#define WG_NS_PER_SEC 1000000000ULL
#define WG_NS_PER_MS 1000000ULL

#define REKEY_AFTER_MESSAGES (1ULL << 60)
#define REJECT_AFTER_MESSAGES (UINT64_MAX - 8192 - 1) /* 2^64 - 2^13 - 1 */
#define REKEY_TIMEOUT (5 * WG_NS_PER_SEC)
#define REKEY_TIMEOUT_JITTER_MAX_MS 333
#define KEEPALIVE_TIMEOUT (10 * WG_NS_PER_SEC)
#define REKEY_AFTER_TIME (120 * WG_NS_PER_SEC)
#define REJECT_AFTER_TIME (180 * WG_NS_PER_SEC)
#define REKEY_ATTEMPT_TIME (90 * WG_NS_PER_SEC)
#define MAX_TIMER_HANDSHAKES (REKEY_ATTEMPT_TIME / REKEY_TIMEOUT) /* 18 */
#define INITIATIONS_PER_SECOND 50
#define MAX_PEERS_PER_DEVICE (1U << 20)
#define MAX_STAGED_PACKETS 128 /* per peer, while waiting for a handshake */
#define COOKIE_SECRET_MAX_AGE (2 * 60 * WG_NS_PER_SEC)
#define COOKIE_SECRET_LATENCY (5 * WG_NS_PER_SEC)

/* Message types and sizes. */
#define MESSAGE_HANDSHAKE_INITIATION 1
#define MESSAGE_HANDSHAKE_RESPONSE 2
#define MESSAGE_HANDSHAKE_COOKIE 3
#define MESSAGE_DATA 4

#define NOISE_PUBLIC_KEY_LEN 32
#define NOISE_SYMMETRIC_KEY_LEN 32
#define NOISE_TIMESTAMP_LEN 12
#define NOISE_AUTHTAG_LEN 16
#define NOISE_HASH_LEN 32
#define COOKIE_LEN 16
#define COOKIE_NONCE_LEN 24

#define MESSAGE_INITIATION_SIZE 148
#define MESSAGE_RESPONSE_SIZE 92
#define MESSAGE_COOKIE_REPLY_SIZE 64
#define MESSAGE_DATA_HEADER_SIZE 16
#define MESSAGE_DATA_MIN_SIZE (MESSAGE_DATA_HEADER_SIZE + NOISE_AUTHTAG_LEN) /* a keepalive: 32 */
#define MESSAGE_PADDING_MULTIPLE 16

/* Labels of the construction. */
#define NOISE_CONSTRUCTION "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
#define NOISE_IDENTIFIER "WireGuard v1 zx2c4 Jason@zx2c4.com"
#define LABEL_MAC1 "mac1----"
#define LABEL_COOKIE "cookie--"

/* Handshake rate limiting of sources while under load (kernel ratelimiter). */
#define RATELIMIT_PACKETS_PER_SECOND 20
#define RATELIMIT_PACKETS_BURSTABLE 5
/* How long "under load" persists after the handshake queue drains. */
#define UNDER_LOAD_AFTER_TIME (1 * WG_NS_PER_SEC)
#endif
