/* Sliding-window replay protection (RFC 6479 style) for transport counters.
 * The window accepts counters up to WG_REPLAY_WINDOW (8128) behind the
 * highest counter seen.  Checked only after a packet has authenticated.
 * Not thread-safe: the caller serialises calls per keypair. */
#ifndef WG_REPLAY_H
#define WG_REPLAY_H
#include <stdbool.h>
#include <stdint.h>

#define WG_REPLAY_BITS_TOTAL 8192
#define WG_REPLAY_WORD_BITS 64
#define WG_REPLAY_WINDOW (WG_REPLAY_BITS_TOTAL - WG_REPLAY_WORD_BITS) /* 8128 */

struct wg_replay {
	uint64_t counter; /* one past the highest counter accepted so far */
	uint64_t backtrack[WG_REPLAY_BITS_TOTAL / WG_REPLAY_WORD_BITS];
};

void wg_replay_init(struct wg_replay *r);
/* Returns true and records the counter if it is fresh: not seen before, not
 * older than the window, and below reject_after (REJECT_AFTER_MESSAGES). */
bool wg_replay_check(struct wg_replay *r, uint64_t counter, uint64_t reject_after);
#endif
