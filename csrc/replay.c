// SPDX-License-Identifier: MIT
/*
 * Replay protection for transport data counters, RFC 6479 style.
 *
 * The backtrack bitmap is a ring of 128 64-bit words (8192 bits).  Bit n of
 * the ring (mod 8192) records whether counter n has been accepted.  The word
 * holding the highest accepted counter is always "current"; when a newer
 * counter arrives we zero only the words between the old and the new
 * current word (at most the whole ring), so sliding the window costs
 * O(words skipped), never O(window bits).
 *
 * Why the usable window is 8128 = 8192 - 64 and not 8192: the current word
 * is only partly in use (bits above the highest counter are future
 * counters), so one word of the ring is reserved for it.  A counter that is
 * WG_REPLAY_WINDOW behind the highest lands in the oldest ring word, which
 * is still intact; one further behind would alias the current word.
 *
 * Acceptance matches Linux's WireGuard counter_validate(): with H the
 * highest accepted counter, a counter c is acceptable iff
 * c < reject_after, c + WG_REPLAY_WINDOW >= H, and c was not seen before.
 */
#include "replay.h"

#include <string.h>

#define REPLAY_WORDS (WG_REPLAY_BITS_TOTAL / WG_REPLAY_WORD_BITS)

/* Both must be powers of two for the masks below to be ring arithmetic. */
_Static_assert((REPLAY_WORDS & (REPLAY_WORDS - 1)) == 0, "ring size must be a power of two");
_Static_assert(WG_REPLAY_WORD_BITS == 64, "backtrack words are uint64_t");

void wg_replay_init(struct wg_replay *r)
{
	memset(r, 0, sizeof(*r));
}

bool wg_replay_check(struct wg_replay *r, uint64_t counter, uint64_t reject_after)
{
	uint64_t index, bit;

	/*
	 * Never accept the nonce at or past the key's message limit.  This
	 * also bounds counter below UINT64_MAX, so counter + 1 cannot wrap.
	 */
	if (counter >= reject_after)
		return false;

	/*
	 * Too old: more than WG_REPLAY_WINDOW behind the highest accepted
	 * counter (r->counter - 1).  Written as a subtraction guarded by the
	 * comparison so that nothing can overflow near UINT64_MAX.
	 */
	if (r->counter > WG_REPLAY_WINDOW + 1 && counter < r->counter - 1 - WG_REPLAY_WINDOW)
		return false;

	index = counter / WG_REPLAY_WORD_BITS;
	if (counter >= r->counter) {
		/*
		 * New highest counter: slide the window.  Words strictly after
		 * the old current word up to and including the new one hold
		 * stale bits from a previous lap of the ring, so clear them.
		 * On the very first packet the ring is all zero already and
		 * there is nothing to clear.
		 */
		if (r->counter) {
			uint64_t current = (r->counter - 1) / WG_REPLAY_WORD_BITS;
			uint64_t skip = index - current, i;

			if (skip > REPLAY_WORDS)
				skip = REPLAY_WORDS;
			for (i = 1; i <= skip; i++)
				r->backtrack[(current + i) & (REPLAY_WORDS - 1)] = 0;
		}
		r->counter = counter + 1;
	}

	index &= REPLAY_WORDS - 1;
	bit = UINT64_C(1) << (counter & (WG_REPLAY_WORD_BITS - 1));
	if (r->backtrack[index] & bit)
		return false; /* replay */
	r->backtrack[index] |= bit;
	return true;
}
