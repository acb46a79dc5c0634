// SPDX-License-Identifier: MIT
/*
 * Replay window tests.  The first part follows the scenario of the Linux
 * WireGuard nonce-counter selftest (window edges, bulk in-order, reverse
 * order, the REJECT_AFTER_MESSAGES boundary); the second part checks the
 * implementation against a trivially correct model on random traffic.
 */
#include <stdint.h>
#include "replay.h"
#include "testlib.h"

/*
 * REJECT_AFTER_MESSAGES.  The brief for this engine fixes
 * UINT64_MAX - 8192 - 1; Linux uses U64_MAX - COUNTER_WINDOW_SIZE - 1 and
 * the whitepaper / wireguard-go 2^64 - 2^13 - 1.  The scenario only uses it
 * relatively, so it is run against all three.
 */
#define REJECT_AFTER_MESSAGES (UINT64_MAX - 8192 - 1)

static struct wg_replay r;
static uint64_t reject_after;
static int step;

/* T(counter, expected): one step of a scenario; reports the step number. */
#define T(n, v)                                                                                                        \
	do {                                                                                                           \
		bool got = wg_replay_check(&r, (n), reject_after);                                                     \
		step++;                                                                                                \
		if (got != (v))                                                                                        \
			fprintf(stderr, "  step %d: counter %llu -> %d, expected %d\n", step, (unsigned long long)(n), \
				got, (v));                                                                             \
		CHECK(got == (v));                                                                                     \
	} while (0)

#define T_INIT                      \
	do {                        \
		wg_replay_init(&r); \
		step = 0;           \
	} while (0)
#define T_LIM (WG_REPLAY_WINDOW + 1)

static void scenario(uint64_t reject)
{
	const uint64_t RAM = reject; /* "REJECT_AFTER_MESSAGES" in the scenario */
	uint64_t i;

	reject_after = reject;

	T_INIT;
	/*  1 */ T(0, true);
	/*  2 */ T(1, true);
	/*  3 */ T(1, false);
	/*  4 */ T(9, true);
	/*  5 */ T(8, true);
	/*  6 */ T(7, true);
	/*  7 */ T(7, false);
	/*  8 */ T(T_LIM, true);
	/*  9 */ T(T_LIM - 1, true);
	/* 10 */ T(T_LIM - 1, false);
	/* 11 */ T(T_LIM - 2, true);
	/* 12 */ T(2, true);
	/* 13 */ T(2, false);
	/* 14 */ T(T_LIM + 16, true);
	/* 15 */ T(3, false);
	/* 16 */ T(T_LIM + 16, false);
	/* 17 */ T(T_LIM * 4, true);
	/* 18 */ T(T_LIM * 4 - (T_LIM - 1), true);
	/* 19 */ T(10, false);
	/* 20 */ T(T_LIM * 4 - T_LIM, false);
	/* 21 */ T(T_LIM * 4 - (T_LIM + 1), false);
	/* 22 */ T(T_LIM * 4 - (T_LIM - 2), true);
	/* 23 */ T(T_LIM * 4 + 1 - T_LIM, false);
	/* 24 */ T(0, false);
	/* 25 */ T(RAM, false);
	/* 26 */ T(RAM - 1, true);
	/* 27 */ T(RAM, false);
	/* 28 */ T(RAM - 1, false);
	/* 29 */ T(RAM - 2, true);
	/* 30 */ T(RAM + 1, false);
	/* 31 */ T(RAM + 2, false);
	/* 32 */ T(RAM - 2, false);
	/* 33 */ T(RAM - 3, true);
	/* 34 */ T(0, false);

	/* In order up to the window, then the oldest still-valid counter. */
	T_INIT;
	for (i = 1; i <= WG_REPLAY_WINDOW; ++i)
		T(i, true);
	T(0, true);
	T(0, false);

	/* Same, shifted by one: 0 has fallen out, 1 is exactly at the edge. */
	T_INIT;
	for (i = 2; i <= WG_REPLAY_WINDOW + 1; ++i)
		T(i, true);
	T(1, true);
	T(0, false);

	/* Reverse order across the whole window. */
	T_INIT;
	for (i = WG_REPLAY_WINDOW + 1; i-- > 0;)
		T(i, true);

	T_INIT;
	for (i = WG_REPLAY_WINDOW + 2; i-- > 1;)
		T(i, true);
	T(0, false);

	T_INIT;
	for (i = WG_REPLAY_WINDOW + 1; i-- > 1;)
		T(i, true);
	T(WG_REPLAY_WINDOW + 1, true);
	T(0, false);

	T_INIT;
	for (i = WG_REPLAY_WINDOW + 1; i-- > 1;)
		T(i, true);
	T(0, true);
	T(WG_REPLAY_WINDOW + 1, true);
}

/* Jumps that lap the ring several times must not leave stale bits behind. */
static void test_ring_laps(void)
{
	uint64_t base, i;

	reject_after = REJECT_AFTER_MESSAGES;
	T_INIT;
	for (i = 0; i < 3 * WG_REPLAY_BITS_TOTAL; i += 3)
		T(i, true);
	/* Exactly one ring ahead: same slot as an old accepted counter. */
	base = 3 * WG_REPLAY_BITS_TOTAL;
	T(base, true);
	T(base - WG_REPLAY_WINDOW, true);      /* oldest valid; its ring slot was used before */
	T(base - WG_REPLAY_WINDOW - 1, false); /* one too old */
	T(base - WG_REPLAY_WINDOW + 1, false); /* multiple of 3: seen in the first lap */
	T(base - WG_REPLAY_WINDOW + 2, true);  /* not a multiple of 3: fresh */
	/* Every word jumped over must have been cleared. */
	base += 5 * WG_REPLAY_BITS_TOTAL + 17;
	T(base, true);
	for (i = 1; i <= WG_REPLAY_WINDOW; i++)
		T(base - i, true);
	T(base - WG_REPLAY_WINDOW - 1, false);
	/* Partial-ring jump: counters just below the new head are fresh. */
	base += 3000;
	T(base, true);
	for (i = 1; i < 3000; i++)
		T(base - i, true);
	T(base - 3000, false); /* the previous head */

	/* reject_after at the very top of the range must not overflow. */
	reject_after = UINT64_MAX;
	T_INIT;
	T(UINT64_MAX - 1, true);
	T(UINT64_MAX - 1, false);
	T(UINT64_MAX, false);
	T(UINT64_MAX - 1 - WG_REPLAY_WINDOW, true);
	T(UINT64_MAX - 2 - WG_REPLAY_WINDOW, false);
	T(0, false);

	/* reject_after of 0 rejects everything. */
	reject_after = 0;
	T_INIT;
	T(0, false);
	T(1, false);
}

/* Reference model: a plain bitmap of every counter ever accepted. */
#define MODEL_MAX (16u << 20)
static uint8_t model_seen[MODEL_MAX / 8];

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void)
{
	/* xorshift64*: deterministic, good enough for test traffic. */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dull;
}

static void test_random_model(void)
{
	uint64_t highest = 0, n;
	bool any = false;
	int mismatches = 0, accepted = 0, rejected = 0;

	memset(model_seen, 0, sizeof(model_seen));
	wg_replay_init(&r);
	reject_after = MODEL_MAX - 1000; /* reached near the end: exercises the limit */

	for (n = 0; n < 300000; n++) {
		uint64_t c;
		uint64_t roll = rng() % 1000;
		bool want, got;

		/* Mostly near the head, some far behind, occasional jumps. */
		if (roll < 600)
			c = highest + rng() % 64 - (highest >= 32 ? 32 : 0);
		else if (roll < 900)
			c = highest > 9000 ? highest - rng() % 9000 : rng() % 9000;
		else if (roll < 995)
			c = highest + rng() % 200;
		else
			c = highest + rng() % 20000;
		if (c >= MODEL_MAX)
			c = rng() % MODEL_MAX;

		want = c < reject_after && (!any || c + WG_REPLAY_WINDOW >= highest) &&
		       !(model_seen[c / 8] & (1u << (c % 8)));
		if (want) {
			model_seen[c / 8] |= (uint8_t)(1u << (c % 8));
			if (!any || c > highest)
				highest = c;
			any = true;
		}
		got = wg_replay_check(&r, c, reject_after);
		if (got != want)
			mismatches++;
		if (got)
			accepted++;
		else
			rejected++;
	}
	CHECK_EQ(mismatches, 0);
	CHECK(accepted > 10000);
	CHECK(rejected > 10000);
	printf("replay model: %d accepted, %d rejected, head %llu\n", accepted, rejected, (unsigned long long)highest);
}

int main(void)
{
	scenario(REJECT_AFTER_MESSAGES);
	scenario(UINT64_MAX - WG_REPLAY_WINDOW - 1); /* Linux's value */
	scenario(UINT64_MAX - 8192);                 /* whitepaper/wireguard-go */
	test_ring_laps();
	test_random_model();
	return tl_finish("replay");
}
