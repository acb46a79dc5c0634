/* Timer semantics of the whitepaper (section 6) as the kernel implements
 * them.  Each timer is a monotonic deadline in the peer; the engine's timer
 * loop sleeps until the earliest one (proto->next_deadline) and is kicked
 * when a hook arms an earlier one, so an idle interface does not wake up
 * except for protocol timers. */
#include <string.h>

#include <sodium.h>

#include "noise.h"
#include "timers.h"

/* Jitter only spreads handshakes in time; it need not be secret.  A
 * per-thread generator seeded once from the system keeps a getrandom()
 * system call off the path of every first packet after a quiet spell. */
static uint64_t jitter(void)
{
	static __thread uint64_t state;
	uint64_t z;

	if (!state)
		randombytes_buf(&state, sizeof(state));
	z = (state += 0x9e3779b97f4a7c15ull); /* splitmix64 */
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	z ^= z >> 31;
	return (z % (REKEY_TIMEOUT_JITTER_MAX_MS + 1)) * WG_NS_PER_MS;
}

static void arm(struct wg_peer *peer, enum wg_timer t, uint64_t delay)
{
	struct wg_proto *p = peer->proto;
	uint64_t deadline = wg_mono_now(p) + delay, cur;

	if (peer->dead)
		return;
	peer->timers[t] = deadline ? deadline : 1;
	cur = atomic_load(&p->next_deadline);
	while (!cur || deadline < cur) {
		if (atomic_compare_exchange_weak(&p->next_deadline, &cur, deadline)) {
			if (p->ops->timer_kick)
				p->ops->timer_kick(p->ctx);
			break;
		}
	}
}

static void disarm(struct wg_peer *peer, enum wg_timer t)
{
	peer->timers[t] = 0;
}

static bool pending(const struct wg_peer *peer, enum wg_timer t)
{
	return peer->timers[t] != 0;
}

/* Should be called after an authenticated data packet is sent. */
void wg_timers_data_sent(struct wg_peer *peer)
{
	if (!pending(peer, TIMER_NEW_HANDSHAKE))
		arm(peer, TIMER_NEW_HANDSHAKE, KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter());
}

/* Should be called after an authenticated data packet is received. */
void wg_timers_data_received(struct wg_peer *peer)
{
	if (!pending(peer, TIMER_SEND_KEEPALIVE))
		arm(peer, TIMER_SEND_KEEPALIVE, KEEPALIVE_TIMEOUT);
	else
		peer->need_another_keepalive = true;
}

/* Should be called after any type of authenticated packet is sent, whether
 * keepalive, data, or handshake: it makes a passive keepalive redundant. */
void wg_timers_any_authenticated_packet_sent(struct wg_peer *peer)
{
	disarm(peer, TIMER_SEND_KEEPALIVE);
}

/* Should be called after any type of authenticated packet is received: the
 * peer is alive, so no new handshake is needed for lack of replies. */
void wg_timers_any_authenticated_packet_received(struct wg_peer *peer)
{
	disarm(peer, TIMER_NEW_HANDSHAKE);
}

/* Should be called after a handshake initiation message is sent. */
void wg_timers_handshake_initiated(struct wg_peer *peer)
{
	arm(peer, TIMER_RETRANSMIT_HANDSHAKE, REKEY_TIMEOUT + jitter());
}

/* Should be called after a handshake response message is received and
 * processed, or when getting key confirmation via the first data message. */
void wg_timers_handshake_complete(struct wg_peer *peer)
{
	disarm(peer, TIMER_RETRANSMIT_HANDSHAKE);
	peer->handshake_attempts = 0;
	peer->sent_lastminute_handshake = false;
	peer->last_handshake_real = wg_real_now(peer->proto);
	atomic_fetch_add(&peer->proto->stats.handshakes_completed, 1);
}

/* Should be called after an ephemeral key is created, which is before
 * sending a handshake response or after receiving a handshake response. */
void wg_timers_session_derived(struct wg_peer *peer)
{
	arm(peer, TIMER_ZERO_KEY_MATERIAL, REJECT_AFTER_TIME * 3);
}

/* Should be called before a packet with authentication, whether keepalive,
 * data, or handshake, is sent, or after one is received. */
void wg_timers_any_authenticated_packet_traversal(struct wg_peer *peer)
{
	if (peer->persistent_keepalive)
		arm(peer, TIMER_PERSISTENT_KEEPALIVE, (uint64_t)peer->persistent_keepalive * WG_NS_PER_SEC);
}

void wg_timers_stop(struct wg_peer *peer)
{
	for (int t = 0; t < WG_TIMER_COUNT; t++)
		disarm(peer, (enum wg_timer)t);
}

static void expired_retransmit_handshake(struct wg_peer *peer, bool *gave_up)
{
	if (peer->handshake_attempts > MAX_TIMER_HANDSHAKES) {
		/* Give up: drop what waited for this session, and make sure the
		 * keys are zeroed eventually even with no further traffic. */
		disarm(peer, TIMER_SEND_KEEPALIVE);
		wg_staged_clear_locked(peer);
		if (!pending(peer, TIMER_ZERO_KEY_MATERIAL))
			arm(peer, TIMER_ZERO_KEY_MATERIAL, REJECT_AFTER_TIME * 3);
		*gave_up = true;
	} else {
		++peer->handshake_attempts;
		/* The source address we reply from may be the trouble (the host's
		 * addresses changed): let the kernel choose again. */
		memset(&peer->endpoint.src6, 0, sizeof(peer->endpoint.src6));
		peer->endpoint.src_ifindex = 0;
		wg_send_initiation_locked(peer, true);
	}
}

static void expired_send_keepalive(struct wg_peer *peer)
{
	wg_send_keepalive_locked(peer);
	if (peer->need_another_keepalive) {
		peer->need_another_keepalive = false;
		arm(peer, TIMER_SEND_KEEPALIVE, KEEPALIVE_TIMEOUT);
	}
}

static void expired_new_handshake(struct wg_peer *peer)
{
	/* We sent data but heard nothing back for KEEPALIVE + REKEY_TIMEOUT. */
	memset(&peer->endpoint.src6, 0, sizeof(peer->endpoint.src6));
	peer->endpoint.src_ifindex = 0;
	wg_send_initiation_locked(peer, false);
}

static void expired_zero_key_material(struct wg_peer *peer)
{
	wg_noise_handshake_clear(peer->proto, peer);
	wg_noise_keypairs_clear(peer->proto, peer);
}

static void expired_persistent_keepalive(struct wg_peer *peer)
{
	if (peer->persistent_keepalive)
		wg_send_keepalive_locked(peer);
}

uint64_t wg_timers_expire(struct wg_peer *peer, uint64_t now, bool *gave_up)
{
	uint64_t next = 0;

	*gave_up = false;
	for (int t = 0; t < WG_TIMER_COUNT; t++) {
		if (!peer->timers[t] || peer->timers[t] > now)
			continue;
		peer->timers[t] = 0;
		switch ((enum wg_timer)t) {
		case TIMER_RETRANSMIT_HANDSHAKE:
			expired_retransmit_handshake(peer, gave_up);
			break;
		case TIMER_SEND_KEEPALIVE:
			expired_send_keepalive(peer);
			break;
		case TIMER_NEW_HANDSHAKE:
			expired_new_handshake(peer);
			break;
		case TIMER_ZERO_KEY_MATERIAL:
			expired_zero_key_material(peer);
			break;
		case TIMER_PERSISTENT_KEEPALIVE:
			expired_persistent_keepalive(peer);
			break;
		case WG_TIMER_COUNT:
			break;
		}
	}
	for (int t = 0; t < WG_TIMER_COUNT; t++)
		if (peer->timers[t] && (!next || peer->timers[t] < next))
			next = peer->timers[t];
	return next;
}
