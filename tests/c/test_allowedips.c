// SPDX-License-Identifier: MIT
/*
 * Allowed-IPs (cryptokey routing) table tests: hand-written cases for
 * longest-prefix precedence, defaults, ownership moves and removal, the
 * order in which an owner's prefixes are listed (the kernel's: insertion
 * order, a re-inserted prefix moves to the tail), then a randomized
 * comparison against a brute-force linear table for both families (lists
 * included), and a printed (not asserted) timing/memory figure for 10,000
 * peers with one /32 each.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>
#include "allowedips.h"
#include "testlib.h"

static struct wg_allowedips t;

static const uint8_t *a4(const char *s)
{
	static uint8_t buf[8][16];
	static int i;
	uint8_t *b = buf[i++ & 7];

	if (inet_pton(AF_INET, s, b) != 1)
		abort();
	return b;
}

static const uint8_t *a6(const char *s)
{
	static uint8_t buf[8][16];
	static int i;
	uint8_t *b = buf[i++ & 7];

	if (inet_pton(AF_INET6, s, b) != 1)
		abort();
	return b;
}

static int ins4(const char *s, uint8_t cidr, struct wg_aip_owner *o)
{
	return wg_allowedips_insert(&t, AF_INET, a4(s), cidr, o);
}

static int ins6(const char *s, uint8_t cidr, struct wg_aip_owner *o)
{
	return wg_allowedips_insert(&t, AF_INET6, a6(s), cidr, o);
}

static int rm4(const char *s, uint8_t cidr, struct wg_aip_owner *o)
{
	return wg_allowedips_remove(&t, AF_INET, a4(s), cidr, o);
}

static int rm6(const char *s, uint8_t cidr, struct wg_aip_owner *o)
{
	return wg_allowedips_remove(&t, AF_INET6, a6(s), cidr, o);
}

static struct wg_aip_owner *lk4(const char *s)
{
	return wg_allowedips_lookup(&t, AF_INET, a4(s));
}

static struct wg_aip_owner *lk6(const char *s)
{
	return wg_allowedips_lookup(&t, AF_INET6, a6(s));
}

/* foreach collector: "a.b.c.d/n" or "x::y/n" strings. */
struct listing {
	int n;
	char s[64][64];
};

static void collect(void *arg, int family, const uint8_t *addr, uint8_t cidr)
{
	struct listing *l = arg;
	char buf[INET6_ADDRSTRLEN];

	if (l->n >= 64)
		abort();
	inet_ntop(family, addr, buf, sizeof(buf));
	snprintf(l->s[l->n++], sizeof(l->s[0]), "%s/%u", buf, cidr);
}

static bool listed(const struct listing *l, const char *s)
{
	for (int i = 0; i < l->n; i++)
		if (!strcmp(l->s[i], s))
			return true;
	return false;
}

static struct listing list_of(const struct wg_aip_owner *o)
{
	struct listing l;

	memset(&l, 0, sizeof(l));
	wg_allowedips_foreach(o, collect, &l);
	return l;
}

static void test_v4_basic(void)
{
	struct wg_aip_owner o1 = { 0 }, o2 = { 0 }, o3 = { 0 }, o4 = { 0 }, o5 = { 0 };
	struct listing l;
	int order;

	/* Same table built in two insertion orders must behave identically. */
	for (order = 0; order < 2; order++) {
		wg_allowedips_init(&t);
		if (order == 0) {
			CHECK_EQ(ins4("10.0.0.0", 8, &o1), 0);
			CHECK_EQ(ins4("10.1.0.0", 16, &o2), 0);
			CHECK_EQ(ins4("10.1.2.0", 24, &o3), 0);
			CHECK_EQ(ins4("10.1.2.3", 32, &o4), 0);
		} else {
			CHECK_EQ(ins4("10.1.2.3", 32, &o4), 0);
			CHECK_EQ(ins4("10.1.2.0", 24, &o3), 0);
			CHECK_EQ(ins4("10.1.0.0", 16, &o2), 0);
			CHECK_EQ(ins4("10.0.0.0", 8, &o1), 0);
		}
		CHECK_EQ(t.count, 4);
		CHECK(lk4("10.1.2.3") == &o4);
		CHECK(lk4("10.1.2.4") == &o3);
		CHECK(lk4("10.1.2.2") == &o3);
		CHECK(lk4("10.1.3.1") == &o2);
		CHECK(lk4("10.1.255.255") == &o2);
		CHECK(lk4("10.2.0.0") == &o1);
		CHECK(lk4("10.255.255.255") == &o1);
		CHECK(lk4("11.0.0.0") == NULL);
		CHECK(lk4("9.255.255.255") == NULL);
		CHECK(lk4("0.0.0.0") == NULL);
		CHECK(lk4("255.255.255.255") == NULL);
		/* v4 prefixes never answer v6 lookups. */
		CHECK(lk6("::a01:203") == NULL);
		CHECK(lk6("::ffff:10.1.2.3") == NULL);
		wg_allowedips_free(&t);
		CHECK_EQ(o1.count, 0);
		CHECK(o1.head == NULL);
		CHECK(o4.head == NULL);
	}

	/* Defaults. */
	wg_allowedips_init(&t);
	CHECK(lk4("1.2.3.4") == NULL);
	CHECK_EQ(ins4("10.1.2.3", 32, &o4), 0);
	CHECK_EQ(ins4("0.0.0.0", 0, &o5), 0);
	CHECK(lk4("1.2.3.4") == &o5);
	CHECK(lk4("0.0.0.0") == &o5);
	CHECK(lk4("255.255.255.255") == &o5);
	CHECK(lk4("10.1.2.3") == &o4);
	CHECK(lk6("::1") == NULL);
	/* Host bits of a /0 are ignored. */
	CHECK_EQ(ins4("1.2.3.4", 0, &o1), 0); /* moves 0.0.0.0/0 to o1 */
	CHECK_EQ(o5.count, 0);
	CHECK_EQ(o1.count, 1);
	CHECK(lk4("8.8.8.8") == &o1);
	l = list_of(&o1);
	CHECK_EQ(l.n, 1);
	CHECK(listed(&l, "0.0.0.0/0"));
	CHECK_EQ(rm4("0.0.0.0", 0, &o5), -ENOENT);
	CHECK_EQ(rm4("0.0.0.0", 0, &o1), 0);
	CHECK(lk4("8.8.8.8") == NULL);
	CHECK(lk4("10.1.2.3") == &o4);
	CHECK_EQ(t.count, 1);
	wg_allowedips_free(&t);
	CHECK_EQ(t.count, 0);
}

static void test_move_and_remove(void)
{
	struct wg_aip_owner a = { 0 }, b = { 0 }, c = { 0 };
	struct listing l;

	wg_allowedips_init(&t);
	CHECK_EQ(ins4("192.168.0.0", 16, &a), 0);
	CHECK_EQ(ins4("192.168.1.0", 24, &a), 0);
	CHECK_EQ(ins4("192.168.2.0", 24, &b), 0);
	CHECK_EQ(ins4("192.168.2.7", 32, &b), 0);
	CHECK_EQ(ins6("fd00::", 8, &b), 0);
	CHECK_EQ(t.count, 5);
	CHECK_EQ(a.count, 2);
	CHECK_EQ(b.count, 3);

	/* Re-inserting with the same owner changes no count (see test_order). */
	CHECK_EQ(ins4("192.168.1.0", 24, &a), 0);
	CHECK_EQ(a.count, 2);
	CHECK_EQ(t.count, 5);

	/* Move 192.168.2.0/24 from b to a: both lists and counts follow. */
	CHECK_EQ(ins4("192.168.2.99", 24, &a), 0); /* host bits masked */
	CHECK_EQ(t.count, 5);
	CHECK_EQ(a.count, 3);
	CHECK_EQ(b.count, 2);
	CHECK(lk4("192.168.2.1") == &a);
	CHECK(lk4("192.168.2.7") == &b);
	l = list_of(&a);
	CHECK_EQ(l.n, 3);
	CHECK(listed(&l, "192.168.0.0/16"));
	CHECK(listed(&l, "192.168.1.0/24"));
	CHECK(listed(&l, "192.168.2.0/24"));
	l = list_of(&b);
	CHECK_EQ(l.n, 2);
	CHECK(listed(&l, "192.168.2.7/32"));
	CHECK(listed(&l, "fd00::/8"));
	CHECK(!listed(&l, "192.168.2.0/24"));

	/* Removal only by the current owner. */
	CHECK_EQ(rm4("192.168.2.0", 24, &b), -ENOENT);
	CHECK(lk4("192.168.2.1") == &a);
	CHECK_EQ(rm4("192.168.2.200", 24, &a), 0); /* host bits masked here too */
	CHECK(lk4("192.168.2.1") == &a);           /* falls back to the /16 */
	CHECK(lk4("192.168.2.7") == &b);
	CHECK_EQ(a.count, 2);
	CHECK_EQ(t.count, 4);
	CHECK_EQ(rm4("192.168.2.0", 24, &a), -ENOENT); /* already gone */
	CHECK_EQ(rm4("192.168.3.0", 24, &a), -ENOENT); /* never there */
	CHECK_EQ(rm4("192.168.0.0", 17, &a), -ENOENT); /* wrong length */
	CHECK_EQ(rm4("192.168.0.0", 15, &a), -ENOENT);
	CHECK_EQ(rm6("fd00::", 8, &a), -ENOENT);
	CHECK_EQ(wg_allowedips_remove(&t, AF_INET, a4("1.0.0.0"), 33, &a), -ENOENT);
	CHECK_EQ(wg_allowedips_remove(&t, 12345, a4("1.0.0.0"), 8, &a), -ENOENT);

	/* remove_owner drops exactly that owner's prefixes. */
	CHECK_EQ(ins4("192.168.1.128", 25, &c), 0);
	wg_allowedips_remove_owner(&t, &a);
	CHECK_EQ(a.count, 0);
	CHECK(a.head == NULL);
	CHECK_EQ(t.count, 3);
	CHECK(lk4("192.168.1.1") == NULL);
	CHECK(lk4("192.168.1.200") == &c);
	CHECK(lk4("192.168.2.7") == &b);
	CHECK(lk6("fd12::1") == &b);
	l = list_of(&a);
	CHECK_EQ(l.n, 0);
	wg_allowedips_remove_owner(&t, &a); /* empty owner: no-op */
	CHECK_EQ(t.count, 3);
	wg_allowedips_remove_owner(&t, &b);
	wg_allowedips_remove_owner(&t, &c);
	CHECK_EQ(t.count, 0);
	CHECK(t.root4 == NULL);
	CHECK(t.root6 == NULL);
	wg_allowedips_free(&t);
}

/*
 * The owner's list in order, compared with the NULL-terminated expected
 * strings; prints both lists when they differ.
 */
static bool list_is(const struct wg_aip_owner *o, ...)
{
	struct listing l = list_of(o);
	const char *want[64];
	int n = 0, i;
	bool ok;
	va_list ap;

	va_start(ap, o);
	while (n < 64 && (want[n] = va_arg(ap, const char *)))
		n++;
	va_end(ap);
	ok = l.n == n && (size_t)n == o->count;
	for (i = 0; ok && i < n; i++)
		ok = !strcmp(l.s[i], want[i]);
	if (!ok) {
		fprintf(stderr, "list (count %zu):", o->count);
		for (i = 0; i < l.n; i++)
			fprintf(stderr, " %s", l.s[i]);
		fprintf(stderr, "\nwanted:");
		for (i = 0; i < n; i++)
			fprintf(stderr, " %s", want[i]);
		fprintf(stderr, "\n");
	}
	return ok;
}

struct drop_ctx {
	struct wg_aip_owner *owner;
	struct listing seen;
};

/* foreach callback that removes every prefix it is handed. */
static void collect_and_remove(void *arg, int family, const uint8_t *addr, uint8_t cidr)
{
	struct drop_ctx *d = arg;

	collect(&d->seen, family, addr, cidr);
	if (wg_allowedips_remove(&t, family, addr, cidr, d->owner))
		abort();
}

/*
 * Listing order, as in the kernel's drivers/net/wireguard/allowedips.c:
 * new prefixes are appended (list_add_tail), a prefix inserted again is
 * moved to the tail of its (new or same) owner's list (list_move_tail),
 * removal leaves the others in place.
 */
static void test_order(void)
{
	struct wg_aip_owner a = { 0 }, b = { 0 }, c = { 0 };
	struct drop_ctx d;

	wg_allowedips_init(&t);
	/* Insertion order, not address or trie order, across families. */
	CHECK_EQ(ins4("192.168.0.0", 24, &a), 0);
	CHECK_EQ(ins6("fd00:1::", 64, &a), 0);
	CHECK_EQ(ins4("10.0.0.0", 8, &a), 0);
	CHECK_EQ(ins4("10.1.0.0", 16, &a), 0);
	CHECK_EQ(ins6("::", 0, &a), 0);
	CHECK_EQ(ins4("172.16.0.1", 32, &a), 0);
	CHECK(list_is(&a, "192.168.0.0/24", "fd00:1::/64", "10.0.0.0/8", "10.1.0.0/16", "::/0", "172.16.0.1/32", NULL));

	/* Another owner's inserts in between do not disturb a's order. */
	CHECK_EQ(ins4("10.2.0.0", 16, &b), 0);
	CHECK_EQ(ins6("fd00:2::", 64, &b), 0);
	CHECK_EQ(ins4("10.0.0.0", 24, &b), 0);
	CHECK(list_is(&b, "10.2.0.0/16", "fd00:2::/64", "10.0.0.0/24", NULL));
	CHECK(list_is(&a, "192.168.0.0/24", "fd00:1::/64", "10.0.0.0/8", "10.1.0.0/16", "::/0", "172.16.0.1/32", NULL));

	/* Re-inserting for the same owner (here with host bits set) moves the
	 * prefix to the tail; the tail itself stays put. */
	CHECK_EQ(ins4("10.9.9.9", 8, &a), 0);
	CHECK(list_is(&a, "192.168.0.0/24", "fd00:1::/64", "10.1.0.0/16", "::/0", "172.16.0.1/32", "10.0.0.0/8", NULL));
	CHECK_EQ(ins4("192.168.0.0", 24, &a), 0); /* the head */
	CHECK(list_is(&a, "fd00:1::/64", "10.1.0.0/16", "::/0", "172.16.0.1/32", "10.0.0.0/8", "192.168.0.0/24", NULL));
	CHECK_EQ(ins4("192.168.0.0", 24, &a), 0); /* the tail */
	CHECK(list_is(&a, "fd00:1::/64", "10.1.0.0/16", "::/0", "172.16.0.1/32", "10.0.0.0/8", "192.168.0.0/24", NULL));
	CHECK_EQ(t.count, 9);

	/* Moving between owners: out of a's list, onto the tail of b's. */
	CHECK_EQ(ins4("10.1.0.0", 16, &b), 0);
	CHECK(list_is(&a, "fd00:1::/64", "::/0", "172.16.0.1/32", "10.0.0.0/8", "192.168.0.0/24", NULL));
	CHECK(list_is(&b, "10.2.0.0/16", "fd00:2::/64", "10.0.0.0/24", "10.1.0.0/16", NULL));
	CHECK(lk4("10.1.2.3") == &b);
	/* ... the head of a's list and the tail of a's list, and an append after each. */
	CHECK_EQ(ins6("fd00:1::", 64, &c), 0);
	CHECK_EQ(ins4("192.168.0.0", 24, &c), 0);
	CHECK(list_is(&a, "::/0", "172.16.0.1/32", "10.0.0.0/8", NULL));
	CHECK(list_is(&c, "fd00:1::/64", "192.168.0.0/24", NULL));
	CHECK_EQ(ins4("192.168.1.0", 24, &a), 0);
	CHECK(list_is(&a, "::/0", "172.16.0.1/32", "10.0.0.0/8", "192.168.1.0/24", NULL));
	/* ... and back: it goes to the tail, not to its old place. */
	CHECK_EQ(ins6("fd00:1::", 64, &a), 0);
	CHECK(list_is(&a, "::/0", "172.16.0.1/32", "10.0.0.0/8", "192.168.1.0/24", "fd00:1::/64", NULL));
	CHECK(list_is(&c, "192.168.0.0/24", NULL));

	/* Removal from the middle, the tail and the head; appends still go last. */
	CHECK_EQ(rm4("10.0.0.0", 8, &a), 0);
	CHECK(list_is(&a, "::/0", "172.16.0.1/32", "192.168.1.0/24", "fd00:1::/64", NULL));
	CHECK_EQ(rm6("fd00:1::", 64, &a), 0);
	CHECK(list_is(&a, "::/0", "172.16.0.1/32", "192.168.1.0/24", NULL));
	CHECK_EQ(ins4("10.3.0.0", 16, &a), 0);
	CHECK(list_is(&a, "::/0", "172.16.0.1/32", "192.168.1.0/24", "10.3.0.0/16", NULL));
	CHECK_EQ(rm6("::", 0, &a), 0);
	CHECK(list_is(&a, "172.16.0.1/32", "192.168.1.0/24", "10.3.0.0/16", NULL));
	CHECK_EQ(ins6("fd00:3::", 48, &a), 0);
	CHECK(list_is(&a, "172.16.0.1/32", "192.168.1.0/24", "10.3.0.0/16", "fd00:3::/48", NULL));
	/* The only prefix of c: its list empties and starts over. */
	CHECK_EQ(rm4("192.168.0.0", 24, &c), 0);
	CHECK(list_is(&c, NULL));
	CHECK(c.head == NULL);
	CHECK_EQ(ins4("192.168.0.0", 24, &c), 0);
	CHECK_EQ(ins4("192.168.2.0", 24, &c), 0);
	CHECK(list_is(&c, "192.168.0.0/24", "192.168.2.0/24", NULL));

	/*
	 * An entry demoted to a join (it has two children) and promoted
	 * again: it comes back at the tail.  10.3.0.0/16 has 10.3.0.0/24 and
	 * 10.3.128.0/24 below it.
	 */
	CHECK_EQ(ins4("10.3.0.0", 24, &b), 0);
	CHECK_EQ(ins4("10.3.128.0", 24, &b), 0);
	CHECK_EQ(rm4("10.3.0.0", 16, &a), 0);
	CHECK(list_is(&a, "172.16.0.1/32", "192.168.1.0/24", "fd00:3::/48", NULL));
	CHECK(lk4("10.3.1.1") == NULL);
	CHECK_EQ(ins4("10.3.0.0", 16, &a), 0);
	CHECK(list_is(&a, "172.16.0.1/32", "192.168.1.0/24", "fd00:3::/48", "10.3.0.0/16", NULL));
	CHECK(lk4("10.3.1.1") == &a);
	CHECK(list_is(&b, "10.2.0.0/16", "fd00:2::/64", "10.0.0.0/24", "10.1.0.0/16", "10.3.0.0/24", "10.3.128.0/24",
		      NULL));

	/*
	 * replace_allowed_ips, as device.c applies it: drop the owner's
	 * prefixes, then insert the new list; the result is in the new
	 * list's order even for prefixes the owner had before.
	 */
	wg_allowedips_remove_owner(&t, &b);
	CHECK(list_is(&b, NULL));
	CHECK_EQ(ins4("10.3.128.0", 24, &b), 0);
	CHECK_EQ(ins6("fd00:2::", 64, &b), 0);
	CHECK_EQ(ins4("10.2.0.0", 16, &b), 0);
	CHECK(list_is(&b, "10.3.128.0/24", "fd00:2::/64", "10.2.0.0/16", NULL));
	/* a replace list naming a prefix twice keeps its last position */
	wg_allowedips_remove_owner(&t, &b);
	CHECK_EQ(ins4("10.2.0.0", 16, &b), 0);
	CHECK_EQ(ins4("10.4.0.0", 16, &b), 0);
	CHECK_EQ(ins4("10.2.0.0", 16, &b), 0);
	CHECK(list_is(&b, "10.4.0.0/16", "10.2.0.0/16", NULL));
	/* the other owners are untouched */
	CHECK(list_is(&a, "172.16.0.1/32", "192.168.1.0/24", "fd00:3::/48", "10.3.0.0/16", NULL));
	CHECK(list_is(&c, "192.168.0.0/24", "192.168.2.0/24", NULL));

	/* foreach visits in order even when the callback removes each one. */
	memset(&d, 0, sizeof(d));
	d.owner = &a;
	wg_allowedips_foreach(&a, collect_and_remove, &d);
	CHECK_EQ(d.seen.n, 4);
	CHECK(d.seen.n == 4 && !strcmp(d.seen.s[0], "172.16.0.1/32") && !strcmp(d.seen.s[3], "10.3.0.0/16"));
	CHECK(list_is(&a, NULL));
	CHECK(a.head == NULL);

	/* Removing a whole owner (peer removal) leaves the others' order alone. */
	wg_allowedips_remove_owner(&t, &c);
	CHECK(list_is(&c, NULL));
	CHECK(list_is(&b, "10.4.0.0/16", "10.2.0.0/16", NULL));
	CHECK_EQ(t.count, 2);
	wg_allowedips_free(&t);
	CHECK(list_is(&b, NULL));
	CHECK(b.head == NULL);
}

/* Exercise join creation, join -> entry promotion, demotion and collapse. */
static void test_structure_changes(void)
{
	struct wg_aip_owner a = { 0 }, b = { 0 }, c = { 0 };

	wg_allowedips_init(&t);
	CHECK_EQ(ins4("10.0.0.0", 24, &a), 0);
	CHECK_EQ(ins4("10.0.1.0", 24, &b), 0); /* join at /23 */
	CHECK(lk4("10.0.0.9") == &a);
	CHECK(lk4("10.0.1.9") == &b);
	CHECK(lk4("10.0.2.9") == NULL);
	CHECK_EQ(ins4("10.0.0.0", 23, &c), 0); /* lands on the join */
	CHECK(lk4("10.0.0.9") == &a);
	CHECK(lk4("10.0.1.9") == &b);
	CHECK_EQ(rm4("10.0.0.0", 24, &a), 0);
	CHECK(lk4("10.0.0.9") == &c);
	CHECK_EQ(ins4("10.0.0.0", 24, &a), 0);
	CHECK_EQ(rm4("10.0.0.0", 23, &c), 0); /* back to a join */
	CHECK(lk4("10.0.0.9") == &a);
	CHECK(lk4("10.0.1.9") == &b);
	CHECK(lk4("10.0.2.9") == NULL);
	CHECK_EQ(ins4("10.0.0.0", 23, &c), 0); /* onto the demoted node */
	CHECK(lk4("10.0.1.9") == &b);
	CHECK_EQ(rm4("10.0.0.0", 23, &c), 0);
	CHECK_EQ(rm4("10.0.0.0", 24, &a), 0); /* join collapses */
	CHECK(lk4("10.0.0.9") == NULL);
	CHECK(lk4("10.0.1.9") == &b);
	CHECK_EQ(ins4("10.0.0.0", 8, &c), 0);  /* above a leaf */
	CHECK_EQ(ins4("10.0.0.0", 16, &a), 0); /* in between, one child */
	CHECK(lk4("10.0.1.9") == &b);
	CHECK(lk4("10.0.2.9") == &a);
	CHECK(lk4("10.1.2.9") == &c);
	CHECK_EQ(rm4("10.0.0.0", 16, &a), 0); /* splice out one-child entry */
	CHECK(lk4("10.0.2.9") == &c);
	CHECK(lk4("10.0.1.9") == &b);
	CHECK_EQ(rm4("10.0.1.0", 24, &b), 0);
	CHECK_EQ(rm4("10.0.0.0", 8, &c), 0);
	CHECK(t.root4 == NULL);
	CHECK_EQ(t.count, 0);

	/* Adjacent host routes and their common parent at every length. */
	CHECK_EQ(ins4("128.0.0.0", 1, &a), 0);
	CHECK_EQ(ins4("0.0.0.0", 1, &b), 0);
	CHECK(lk4("127.255.255.255") == &b);
	CHECK(lk4("128.0.0.0") == &a);
	CHECK_EQ(ins4("255.255.255.255", 32, &c), 0);
	CHECK_EQ(ins4("255.255.255.254", 32, &b), 0);
	CHECK(lk4("255.255.255.255") == &c);
	CHECK(lk4("255.255.255.254") == &b);
	CHECK(lk4("255.255.255.253") == &a);
	wg_allowedips_free(&t);
	CHECK_EQ(a.count + b.count + c.count, 0);
}

static void test_v6(void)
{
	struct wg_aip_owner a = { 0 }, b = { 0 }, c = { 0 }, d = { 0 }, e = { 0 }, f = { 0 };
	struct listing l;

	wg_allowedips_init(&t);
	CHECK_EQ(ins6("2001:db8::", 32, &a), 0);
	CHECK_EQ(ins6("2001:db8:1::", 48, &b), 0);
	CHECK_EQ(ins6("2001:db8:1::1", 128, &c), 0);
	CHECK_EQ(ins6("2001:db8:1:2::", 64, &d), 0);
	CHECK_EQ(ins6("2001:db8:1:2:8000::", 65, &e), 0);
	CHECK_EQ(ins6("fe80::", 10, &f), 0);
	CHECK(lk6("2001:db8:1::1") == &c);
	CHECK(lk6("2001:db8:1::2") == &b);
	CHECK(lk6("2001:db8:1:2::1") == &d);
	CHECK(lk6("2001:db8:1:2:7fff:ffff:ffff:ffff") == &d);
	CHECK(lk6("2001:db8:1:2:8000::") == &e);
	CHECK(lk6("2001:db8:1:2:ffff:ffff:ffff:ffff") == &e);
	CHECK(lk6("2001:db8:1:3::") == &b);
	CHECK(lk6("2001:db8:2::") == &a);
	CHECK(lk6("2001:db9::") == NULL);
	CHECK(lk6("fe80::1") == &f);
	CHECK(lk6("febf:ffff::1") == &f);
	CHECK(lk6("fec0::1") == NULL);
	CHECK(lk4("32.1.13.184") == NULL); /* 2001:db8 as an IPv4 address */

	CHECK_EQ(ins6("::", 0, &a), 0);
	CHECK(lk6("fec0::1") == &a);
	CHECK(lk6("::") == &a);
	CHECK(lk6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff") == &a);
	CHECK(lk4("1.1.1.1") == NULL);

	/* /127 and /128 siblings; host bits masked beyond /120. */
	CHECK_EQ(ins6("2001:db8:1::ff", 127, &d), 0);
	CHECK(lk6("2001:db8:1::fe") == &d);
	CHECK(lk6("2001:db8:1::ff") == &d);
	CHECK(lk6("2001:db8:1::fd") == &b);
	CHECK_EQ(ins6("2001:db8:5::1234", 120, &e), 0);
	l = list_of(&e);
	CHECK(listed(&l, "2001:db8:5::1200/120"));
	CHECK(listed(&l, "2001:db8:1:2:8000::/65"));
	CHECK_EQ(l.n, 2);
	CHECK(lk6("2001:db8:5::12ff") == &e);
	CHECK(lk6("2001:db8:5::1300") == &a);

	CHECK_EQ(rm6("2001:db8:1::", 48, &a), -ENOENT);
	CHECK_EQ(rm6("2001:db8:1::", 48, &b), 0);
	CHECK(lk6("2001:db8:1::2") == &a);
	CHECK(lk6("2001:db8:1::1") == &c);
	CHECK(lk6("2001:db8:1:2::1") == &d);
	CHECK_EQ(rm6("::", 0, &a), 0);
	CHECK(lk6("fec0::1") == NULL);

	/* Invalid arguments. */
	CHECK_EQ(wg_allowedips_insert(&t, AF_INET6, a6("::"), 129, &a), -EINVAL);
	CHECK_EQ(wg_allowedips_insert(&t, AF_INET, a4("1.2.3.4"), 33, &a), -EINVAL);
	CHECK_EQ(wg_allowedips_insert(&t, AF_UNIX, a4("1.2.3.4"), 8, &a), -EINVAL);
	CHECK(wg_allowedips_lookup(&t, AF_UNIX, a4("1.2.3.4")) == NULL);
	wg_allowedips_free(&t);
	CHECK_EQ(a.count + b.count + c.count + d.count + e.count + f.count, 0);
}

/* ---- randomized comparison against a brute-force table ---- */

#define NOWNERS 40
#define MAXREF 8000

struct ref_prefix {
	uint8_t addr[16];
	uint8_t cidr;
	int owner;    /* -1: not present */
	uint64_t seq; /* when last inserted: owners list in increasing seq */
};

static struct ref_prefix ref[MAXREF];
static int nref;
static struct wg_aip_owner owners[NOWNERS];
static uint64_t ref_seq;

static uint64_t rng_state = 0x243f6a8885a308d3ull;

static uint64_t rng(void)
{
	/* splitmix64: fixed seed, fully reproducible. */
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void mask_bytes(uint8_t *a, unsigned int cidr, unsigned int len)
{
	for (unsigned int i = 0; i < len; i++) {
		unsigned int lo = i * 8;

		if (cidr <= lo)
			a[i] = 0;
		else if (cidr < lo + 8)
			a[i] &= (uint8_t)(0xff << (lo + 8 - cidr));
	}
}

static bool bytes_match(const uint8_t *p, const uint8_t *addr, unsigned int cidr)
{
	unsigned int full = cidr / 8, rem = cidr % 8;

	if (memcmp(p, addr, full))
		return false;
	return !rem || !((p[full] ^ addr[full]) & (0xff << (8 - rem)));
}

static int ref_find(const uint8_t *addr, unsigned int cidr, unsigned int len)
{
	for (int i = 0; i < nref; i++)
		if (ref[i].owner >= 0 && ref[i].cidr == cidr && !memcmp(ref[i].addr, addr, len))
			return i;
	return -1;
}

static int ref_lookup(const uint8_t *addr)
{
	int best = -1, bestcidr = -1;

	for (int i = 0; i < nref; i++)
		if (ref[i].owner >= 0 && ref[i].cidr > bestcidr && bytes_match(ref[i].addr, addr, ref[i].cidr)) {
			best = ref[i].owner;
			bestcidr = ref[i].cidr;
		}
	return best;
}

/* Addresses cluster around a few bases so that prefixes nest and overlap. */
static void random_addr(uint8_t *a, unsigned int len, const uint8_t bases[4][16])
{
	unsigned int flips = (unsigned int)(rng() % 6), i;

	memcpy(a, bases[rng() % 4], len);
	for (i = 0; i < flips; i++) {
		unsigned int bit = (unsigned int)(rng() % (len * 8));

		/* Prefer flipping low-order bits: deep, shared prefixes. */
		if (rng() % 2)
			bit = len * 8 - 1 - (unsigned int)(rng() % (len * 4));
		a[bit / 8] ^= (uint8_t)(0x80 >> (bit % 8));
	}
	if (rng() % 10 == 0) /* and some entirely random ones */
		for (i = 0; i < len; i++)
			a[i] = (uint8_t)rng();
}

static unsigned int random_cidr(unsigned int bits, unsigned int min_cidr)
{
	unsigned int c;

	if (min_cidr)
		return min_cidr + (unsigned int)(rng() % (bits - min_cidr + 1));

	switch (rng() % 4) {
	case 0:
		return bits;
	case 1:
		/* Any length, but /0 rarely so that misses are exercised too. */
		c = (unsigned int)(rng() % (bits + 1));
		if (!c && rng() % 8)
			c = 1 + (unsigned int)(rng() % bits);
		return c;
	default:
		return bits / 2 + (unsigned int)(rng() % (bits / 2 + 1));
	}
}

static int owner_index(const struct wg_aip_owner *o)
{
	return o ? (int)(o - owners) : -1;
}

struct ref_check {
	int family, idx, bad;
	uint64_t last_seq;
};

static void foreach_check(void *arg, int family, const uint8_t *addr, uint8_t cidr)
{
	struct ref_check *rc = arg;
	unsigned int len = family == AF_INET ? 4 : 16;
	int i = family == rc->family ? ref_find(addr, cidr, len) : -1;

	if (i < 0 || ref[i].owner != rc->idx || ref[i].seq <= rc->last_seq)
		rc->bad++;
	if (i >= 0)
		rc->last_seq = ref[i].seq;
}

/*
 * min_cidr 0: all lengths including (rare) /0 defaults, so most lookups hit
 * something and the test is about picking the right longest match.
 * min_cidr > 0: no short prefixes, so plenty of lookups must miss.
 */
static void test_random(int family, unsigned int min_cidr)
{
	unsigned int len = family == AF_INET ? 4 : 16, bits = len * 8;
	uint8_t bases[4][16], addr[16];
	int op, i, mismatches = 0, lookups = 0, hits = 0, inserts = 0, removes = 0, misses = 0;
	size_t live;

	memset(owners, 0, sizeof(owners));
	nref = 0;
	wg_allowedips_init(&t);
	for (i = 0; i < 4; i++)
		for (unsigned int j = 0; j < 16; j++)
			bases[i][j] = (uint8_t)rng();

	for (op = 0; op < 12000; op++) {
		unsigned int kind = (unsigned int)(rng() % 100);

		if (kind < 55 && nref < MAXREF) {
			/* insert (or move) */
			unsigned int cidr = random_cidr(bits, min_cidr);
			int o = (int)(rng() % NOWNERS), at;

			random_addr(addr, len, bases);
			CHECK_EQ(wg_allowedips_insert(&t, family, addr, (uint8_t)cidr, &owners[o]), 0);
			mask_bytes(addr, cidr, len);
			at = ref_find(addr, cidr, len);
			if (at < 0) {
				at = nref++;
				memcpy(ref[at].addr, addr, len);
				ref[at].cidr = (uint8_t)cidr;
			}
			ref[at].owner = o;
			ref[at].seq = ++ref_seq;
			inserts++;
		} else if (kind < 65 && nref) {
			/* remove an existing prefix, sometimes with the wrong owner */
			int at = (int)(rng() % (uint64_t)nref), o, want;

			if (ref[at].owner < 0)
				continue;
			o = rng() % 4 ? ref[at].owner : (int)(rng() % NOWNERS);
			want = o == ref[at].owner ? 0 : -ENOENT;
			memcpy(addr, ref[at].addr, len);
			addr[len - 1] ^= (uint8_t)(rng() & (bits - ref[at].cidr < 8 ? 0 : 0xff)); /* host bits */
			if (wg_allowedips_remove(&t, family, addr, ref[at].cidr, &owners[o]) != want)
				mismatches++;
			if (!want) {
				ref[at].owner = -1;
				removes++;
			}
		} else if (kind < 66 && rng() % 4 == 0) {
			/* drop a whole owner */
			int o = (int)(rng() % NOWNERS);

			wg_allowedips_remove_owner(&t, &owners[o]);
			for (i = 0; i < nref; i++)
				if (ref[i].owner == o)
					ref[i].owner = -1;
		} else {
			/* lookup, near inserted prefixes or anywhere */
			int want, got;

			if (nref && rng() % 2) {
				const struct ref_prefix *p = &ref[rng() % (uint64_t)nref];

				memcpy(addr, p->addr, len);
				for (unsigned int b = p->cidr; b < bits; b++)
					if (rng() % 2)
						addr[b / 8] ^= (uint8_t)(0x80 >> (b % 8));
			} else {
				random_addr(addr, len, bases);
			}
			want = ref_lookup(addr);
			got = owner_index(wg_allowedips_lookup(&t, family, addr));
			lookups++;
			if (got >= 0)
				hits++;
			if (want != got)
				mismatches++;
		}
	}

	/* Counts, lists and a final full sweep. */
	live = 0;
	for (i = 0; i < nref; i++)
		live += ref[i].owner >= 0;
	CHECK_EQ(t.count, live);
	for (i = 0; i < NOWNERS; i++) {
		struct ref_check rc = { family, i, 0, 0 };
		size_t n = 0;

		for (int j = 0; j < nref; j++)
			n += ref[j].owner == i;
		if (owners[i].count != n)
			mismatches++;
		wg_allowedips_foreach(&owners[i], foreach_check, &rc);
		mismatches += rc.bad;
	}
	for (i = 0; i < 5000; i++) {
		int want;

		random_addr(addr, len, bases);
		want = ref_lookup(addr);
		misses += want < 0;
		if (want != owner_index(wg_allowedips_lookup(&t, family, addr)))
			mismatches++;
	}
	CHECK_EQ(mismatches, 0);
	CHECK(lookups > 1000 && hits > 100 && inserts > 1000 && removes > 100 && live > 1000);
	if (min_cidr)
		CHECK(misses > 500);
	printf("random %s min /%u: %d inserts, %d removes, %d lookups (%d hits), %zu live, "
	       "final sweep %d misses/5000\n",
	       family == AF_INET ? "v4" : "v6", min_cidr, inserts, removes, lookups, hits, live, misses);

	/* Tear down by owner: the table must end up completely empty. */
	for (i = 0; i < NOWNERS; i++)
		wg_allowedips_remove_owner(&t, &owners[i]);
	CHECK_EQ(t.count, 0);
	CHECK(t.root4 == NULL && t.root6 == NULL);
	wg_allowedips_free(&t);
}

/*
 * A path-compressed trie is canonical for its set of prefixes, so adding a
 * second set and removing it again must give back exactly the memory use of
 * the first set alone: no leftover joins or oversized demoted entries.
 * Measured with mallinfo2(), so skipped under AddressSanitizer.
 */
static size_t heap_used(void)
{
	/*
	 * glibc counts chunks parked in the per-thread cache as in use.  Fill
	 * the cache for the node sizes (24, 56 and 64-byte requests) so that
	 * it holds the same number of chunks at every measurement.
	 */
	static const size_t sizes[3] = { 24, 56, 64 };
	void *p[3][16];
	int i, j;

	for (i = 0; i < 3; i++)
		for (j = 0; j < 16; j++)
			p[i][j] = malloc(sizes[i]);
	for (i = 0; i < 3; i++)
		for (j = 0; j < 16; j++)
			free(p[i][j]);
	return mallinfo2().uordblks;
}

static void test_pruning(void)
{
	static struct wg_aip_owner o1, o2;
	uint8_t addr[16];
	size_t h0, h1, h2, h3, h4;
	int round, i;

	for (round = 0; round < 2; round++) {
		int family = round ? AF_INET6 : AF_INET;
		unsigned int len = round ? 16 : 4;

		memset(&o1, 0, sizeof(o1));
		memset(&o2, 0, sizeof(o2));
		wg_allowedips_init(&t);
		h0 = heap_used();
		rng_state = 1;
		for (i = 0; i < 2000; i++) {
			for (unsigned int j = 0; j < len; j++)
				addr[j] = (uint8_t)rng();
			addr[0] = 10;
			wg_allowedips_insert(&t, family, addr, (uint8_t)(len * 8 - rng() % 8), &o1);
		}
		h1 = heap_used();
		for (i = 0; i < 2000; i++) {
			for (unsigned int j = 0; j < len; j++)
				addr[j] = (uint8_t)rng();
			addr[0] = 10;
			/*
			 * Strictly shorter than any o1 prefix (so none is moved),
			 * and many o2 entries end up with two children.
			 */
			wg_allowedips_insert(&t, family, addr, (uint8_t)(len * 8 - 8 - rng() % 16), &o2);
		}
		h2 = heap_used();
		wg_allowedips_remove_owner(&t, &o2);
		h3 = heap_used();
		CHECK_EQ(o2.count, 0);
		CHECK_EQ(t.count, o1.count);
		wg_allowedips_free(&t);
		h4 = heap_used();
		if (h1 > h0) {
			long slack = (long)h3 - (long)h1, rest = (long)h4 - (long)h0;

			/*
			 * Allow a little allocator noise (glibc's bookkeeping of
			 * split remainders moves by a few chunks); one leaked or
			 * oversized node per hundred removed prefixes would
			 * already be several times this.
			 */
			CHECK(h2 > h1);
			CHECK(slack <= 512 && slack >= -512);
			CHECK(rest <= 512 && rest >= -512);
			printf("pruning %s: +%zu bytes for the second set, %+ld after removing it, "
			       "%+ld after free\n",
			       round ? "v6" : "v4", h2 - h1, slack, rest);
		}
	}
}

/* ---- timing (printed, not asserted) ---- */

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void print_heap(size_t before, size_t after, int n)
{
	/* mallinfo2() reports nothing useful under AddressSanitizer. */
	if (after > before)
		printf(", heap %.1f bytes/prefix", (double)(after - before) / n);
	printf("\n");
}

static void test_timing(void)
{
	enum { N = 10000 };
	static struct wg_aip_owner peers[N];
	static uint8_t addrs[N][16];
	size_t heap0, heap1;
	double t0, t1, t2, t3;
	int i, found = 0;

	memset(peers, 0, sizeof(peers));
	for (i = 0; i < N; i++) {
		/* Random addresses: the worst case for join nodes. */
		uint64_t r = rng();

		memcpy(addrs[i], &r, 8);
		r = rng();
		memcpy(addrs[i] + 8, &r, 8);
	}
	wg_allowedips_init(&t);
	heap0 = mallinfo2().uordblks;
	t0 = now();
	for (i = 0; i < N; i++)
		if (wg_allowedips_insert(&t, AF_INET, addrs[i], 32, &peers[i]))
			abort();
	t1 = now();
	heap1 = mallinfo2().uordblks;
	for (i = 0; i < N; i++)
		found += wg_allowedips_lookup(&t, AF_INET, addrs[i]) == &peers[i];
	t2 = now();
	for (i = 0; i < N; i++)
		wg_allowedips_remove_owner(&t, &peers[i]);
	t3 = now();
	CHECK_EQ(t.count, 0);
	CHECK(found >= N - 5); /* random addresses may repeat (then the later owner wins) */
	printf("timing v4: %d x /32 for %d owners: insert %.2f ms, lookup %.2f ms, remove_owner %.2f ms", N, N,
	       (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3);
	print_heap(heap0, heap1, N);

	heap0 = mallinfo2().uordblks;
	t0 = now();
	for (i = 0; i < N; i++)
		if (wg_allowedips_insert(&t, AF_INET6, addrs[i], 128, &peers[i]))
			abort();
	t1 = now();
	heap1 = mallinfo2().uordblks;
	found = 0;
	for (i = 0; i < N; i++)
		found += wg_allowedips_lookup(&t, AF_INET6, addrs[i]) == &peers[i];
	t2 = now();
	CHECK_EQ(found, N);
	wg_allowedips_free(&t);
	for (i = 0; i < N; i++)
		CHECK_EQ(peers[i].count, 0);
	printf("timing v6: %d x /128 for %d owners: insert %.2f ms, lookup %.2f ms", N, N, (t1 - t0) * 1e3,
	       (t2 - t1) * 1e3);
	print_heap(heap0, heap1, N);
}

int main(void)
{
	test_v4_basic();
	test_move_and_remove();
	test_order();
	test_structure_changes();
	test_v6();
	test_random(AF_INET, 0);
	test_random(AF_INET6, 0);
	test_random(AF_INET, 12);
	test_random(AF_INET6, 40);
	test_pruning();
	test_timing();
	return tl_finish("allowedips");
}
