/* Per-source token bucket for handshake messages while under load: each
 * source address (IPv4 /32, IPv6 /64, as the kernel does, since one host
 * owns a /64) may spend RATELIMIT_PACKETS_PER_SECOND with a burst of
 * RATELIMIT_PACKETS_BURSTABLE.  The table has a fixed number of slots so a
 * flood from many spoofed sources cannot grow memory: a new source takes
 * the least recently used slot of its 4-slot set. */
#include <string.h>

#include <sodium.h>

#include "cookie.h"
#include "noise.h"

#define PACKET_COST (WG_NS_PER_SEC / RATELIMIT_PACKETS_PER_SECOND)
#define TOKEN_MAX (PACKET_COST * RATELIMIT_PACKETS_BURSTABLE)
#define WAYS 4

bool wg_ratelimit_allow(struct wg_proto *p, const struct wg_endpoint *src)
{
	uint8_t key[16] = { 0 };
	uint64_t h, now = wg_mono_now(p);
	struct wg_ratelimit_entry *set, *e = NULL, *lru;
	bool ret;
	int i;

	if (src->addr.sa.sa_family == AF_INET) {
		memcpy(key, &src->addr.in4.sin_addr, 4);
		key[15] = 4;
	} else {
		memcpy(key, &src->addr.in6.sin6_addr, 8);
		key[15] = 6;
	}
	crypto_shorthash((uint8_t *)&h, key, sizeof(key), p->hash_secret);
	set = &p->ratelimit[(h % (WG_RATELIMIT_SLOTS / WAYS)) * WAYS];

	pthread_mutex_lock(&p->ratelimit_lock);
	lru = &set[0];
	for (i = 0; i < WAYS; i++) {
		if (set[i].last && !memcmp(set[i].key, key, sizeof(key))) {
			e = &set[i];
			break;
		}
		if (set[i].last < lru->last)
			lru = &set[i];
	}
	if (!e) {
		e = lru;
		memcpy(e->key, key, sizeof(key));
		e->tokens = TOKEN_MAX;
		e->last = now ? now : 1;
	}
	e->tokens += now - e->last;
	if (e->tokens > TOKEN_MAX)
		e->tokens = TOKEN_MAX;
	e->last = now ? now : 1;
	ret = e->tokens >= PACKET_COST;
	if (ret)
		e->tokens -= PACKET_COST;
	pthread_mutex_unlock(&p->ratelimit_lock);
	return ret;
}
