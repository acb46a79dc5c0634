// SPDX-License-Identifier: MIT
/*
 * Cryptokey routing table: longest-prefix match over IPv4 and IPv6.
 *
 * One path-compressed binary trie per family.  Every node carries a prefix
 * length (cidr) and branches on address bit number cidr (bit 0 is the most
 * significant bit of the address).  There are two kinds of node:
 *
 *  - entries: a prefix some owner put in the table.  They store the masked
 *    prefix and hang on their owner's list, so that one owner's prefixes
 *    can be listed or removed without touching the rest of the table.  An
 *    entry may have zero, one or two children.
 *
 *  - joins: pure branch points created where two prefixes diverge and no
 *    entry sits at the divergence.  A join always has exactly two children
 *    (removal collapses any join left with one), so there are fewer joins
 *    than entries.
 *
 * Joins deliberately store no address bits (crit-bit style): every entry
 * below a join shares its prefix, so lookups only verify prefixes at
 * entries, and insertion finds the divergence point by comparing against a
 * representative entry below the stopping point.  That keeps a join at
 * 24 bytes and an entry at 56 (IPv4) or 64 (IPv6) bytes: at most 80 / 88
 * bytes per prefix even in the worst case of one join per entry (random
 * host routes), 96 / 112 including glibc's chunk overhead.
 *
 * Every operation walks at most one root-to-leaf path (twice for insert),
 * and a path visits each prefix length at most once, so lookup, insert and
 * remove are O(address bits), independent of table size.
 *
 * Addresses are held as two host-order 64-bit words, most significant bit
 * first, so prefix comparisons are a couple of XORs and shifts rather than
 * byte loops.  IPv4 uses the top 32 bits of word 0.
 *
 * Owner lists keep the order in which prefixes were (last) inserted, as the
 * kernel (list_add_tail / list_move_tail in drivers/net/wireguard/
 * allowedips.c) and wireguard-go (PushBack) do, so that get=1, `wg
 * showconf` and status() list a peer's allowed IPs in the order they were
 * configured and showconf | setconf | showconf is a fixed point.  Inserting
 * a prefix that is already in the table appends it to the tail of the
 * (possibly new) owner's list, even when the owner does not change: that is
 * what both reference implementations do, so UAPI allowed_ip= lines without
 * replace_allowed_ips (and the Lua add_allowed_ip) give the same listing
 * everywhere.  The list is NULL-terminated
 * through `next`, and `prev` points to the previous entry, except that the
 * head's `prev` points to the tail: append and unlink are O(1) without a
 * tail pointer in the owner (which is embedded in every peer) and with two
 * list pointers per entry.  The lists are never read on the datapath:
 * lookups only walk the trie.
 */
#include "allowedips.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

enum {
	AIP_ENTRY = 1 << 0, /* has an owner; node is a struct aip_entry */
	AIP_BIG = 1 << 1,   /* allocated as struct aip_entry (may be a join) */
	AIP_V6 = 1 << 2,    /* lives in the IPv6 trie */
};

/*
 * The header's struct wg_aip_node is the common part of both kinds of node;
 * roots, children and the owner lists all point at it, so every pointer in
 * the table has one type.  An entry embeds it as its first member, so a
 * node pointer with AIP_BIG set converts to the entry (C11 6.7.2.1p15).
 */
struct wg_aip_node {
	struct wg_aip_node *child[2];
	uint8_t cidr;
	uint8_t flags;
};

struct aip_entry {
	struct wg_aip_node node;
	struct wg_aip_owner *owner;
	struct wg_aip_node *next; /* owner's list, insertion order; NULL at the tail */
	struct wg_aip_node *prev; /* previous entry; the tail for the head entry */
	/*
	 * Masked prefix, MSB first: one word for IPv4, two for IPv6.  Sizing
	 * it per family makes an IPv4 entry 56 bytes, which glibc serves from
	 * a 64-byte chunk instead of an 80-byte one.  Only touch it through
	 * entry_key() / entry_set_key().
	 */
	uint64_t key[];
};

static inline struct aip_entry *to_entry(const struct wg_aip_node *n)
{
	return (struct aip_entry *)n;
}

static inline size_t entry_size(uint8_t v6flag)
{
	return sizeof(struct aip_entry) + (v6flag ? 2 : 1) * sizeof(uint64_t);
}

static inline void entry_key(const struct aip_entry *e, uint64_t key[2])
{
	key[0] = e->key[0];
	key[1] = (e->node.flags & AIP_V6) ? e->key[1] : 0;
}

static inline void entry_set_key(struct aip_entry *e, const uint64_t key[2])
{
	e->key[0] = key[0];
	if (e->node.flags & AIP_V6)
		e->key[1] = key[1];
}

static unsigned int family_bits(int family)
{
	if (family == AF_INET)
		return 32;
	if (family == AF_INET6)
		return 128;
	return 0;
}

static inline uint64_t load_be64(const uint8_t *p)
{
	uint64_t v = 0;
	int i;

	for (i = 0; i < 8; i++)
		v = (v << 8) | p[i];
	return v;
}

static inline void store_be64(uint8_t *p, uint64_t v)
{
	int i;

	for (i = 7; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

static void load_key(uint64_t key[2], int family, const uint8_t *addr)
{
	if (family == AF_INET) {
		key[0] = ((uint64_t)addr[0] << 56) | ((uint64_t)addr[1] << 48) | ((uint64_t)addr[2] << 40) |
			 ((uint64_t)addr[3] << 32);
		key[1] = 0;
	} else {
		key[0] = load_be64(addr);
		key[1] = load_be64(addr + 8);
	}
}

/* Zero the host bits: a prefix is stored, and compared, in canonical form. */
static void mask_key(uint64_t key[2], unsigned int cidr)
{
	if (cidr == 0) {
		key[0] = key[1] = 0;
	} else if (cidr < 64) {
		key[0] &= ~UINT64_C(0) << (64 - cidr);
		key[1] = 0;
	} else if (cidr == 64) {
		key[1] = 0;
	} else if (cidr < 128) {
		key[1] &= ~UINT64_C(0) << (128 - cidr);
	}
}

static inline unsigned int key_bit(const uint64_t key[2], unsigned int i)
{
	return (unsigned int)(key[i >> 6] >> (63 - (i & 63))) & 1;
}

/* Do a and b agree on their first len bits? */
static inline bool prefix_eq(const uint64_t a[2], const uint64_t b[2], unsigned int len)
{
	if (len == 0)
		return true;
	if (len <= 64)
		return ((a[0] ^ b[0]) >> (64 - len)) == 0;
	return a[0] == b[0] && ((a[1] ^ b[1]) >> (128 - len)) == 0;
}

static inline unsigned int common_bits(const uint64_t a[2], const uint64_t b[2])
{
	uint64_t x = a[0] ^ b[0];

	if (x)
		return (unsigned int)__builtin_clzll(x);
	x = a[1] ^ b[1];
	if (x)
		return 64 + (unsigned int)__builtin_clzll(x);
	return 128;
}

static inline unsigned int min_u(unsigned int a, unsigned int b)
{
	return a < b ? a : b;
}

static struct wg_aip_node **root_slot(struct wg_allowedips *t, int family)
{
	return family == AF_INET ? &t->root4 : &t->root6;
}

static struct wg_aip_node *root_of(const struct wg_allowedips *t, int family)
{
	return family == AF_INET ? t->root4 : t->root6;
}

/* Append e to the tail of owner's list. */
static void owner_link(struct aip_entry *e, struct wg_aip_owner *owner)
{
	e->owner = owner;
	e->next = NULL;
	if (!owner->head) {
		owner->head = &e->node;
		e->prev = &e->node;
	} else {
		struct aip_entry *head = to_entry(owner->head);

		e->prev = head->prev;
		to_entry(head->prev)->next = &e->node;
		head->prev = &e->node;
	}
	owner->count++;
}

static void owner_unlink(struct aip_entry *e)
{
	struct wg_aip_owner *owner = e->owner;

	if (owner->head == &e->node) {
		/* The next entry becomes the head and inherits the tail link. */
		owner->head = e->next;
		if (e->next)
			to_entry(e->next)->prev = e->prev;
	} else {
		to_entry(e->prev)->next = e->next;
		/* Unlinking the tail: the head's prev moves back one. */
		to_entry(e->next ? e->next : owner->head)->prev = e->prev;
	}
	owner->count--;
	e->owner = NULL;
	e->next = NULL;
	e->prev = NULL;
}

static struct aip_entry *entry_new(const uint64_t key[2], unsigned int cidr, uint8_t v6flag)
{
	struct aip_entry *e = calloc(1, entry_size(v6flag));

	if (!e)
		return NULL;
	e->node.cidr = (uint8_t)cidr;
	e->node.flags = AIP_ENTRY | AIP_BIG | v6flag;
	entry_set_key(e, key);
	return e;
}

int wg_allowedips_insert(struct wg_allowedips *t, int family, const uint8_t *addr, uint8_t cidr,
			 struct wg_aip_owner *owner)
{
	unsigned int bits = family_bits(family), d;
	uint8_t v6flag = family == AF_INET6 ? AIP_V6 : 0;
	struct wg_aip_node **root, **slot, *n;
	struct aip_entry *e;
	uint64_t key[2], ref[2];

	if (!bits || cidr > bits || !addr || !owner)
		return -EINVAL;
	load_key(key, family, addr);
	mask_key(key, cidr);
	root = root_slot(t, family);

	if (!*root) {
		slot = root;
		goto new_leaf;
	}

	/*
	 * Phase 1: follow the key's bits as deep as the new prefix allows and
	 * take any entry below the stopping point as a representative.  All
	 * nodes on this path are prefixes of the representative, so comparing
	 * against it tells us how far the key agrees with the path: d.
	 */
	n = *root;
	while (n->cidr < cidr) {
		struct wg_aip_node *next = n->child[key_bit(key, n->cidr)];

		if (!next)
			break;
		n = next;
	}
	while (!(n->flags & AIP_ENTRY))
		n = n->child[0]; /* joins always have two children */
	entry_key(to_entry(n), ref);
	d = min_u(min_u(common_bits(ref, key), cidr), n->cidr);

	/* Phase 2: the same path again, stopping at the first node at depth >= d. */
	slot = root;
	while ((n = *slot) && n->cidr < d)
		slot = &n->child[key_bit(key, n->cidr)];
	if (!n)
		goto new_leaf; /* cannot happen (phase 1 reached n), but harmless */

	if (n->cidr == d && d == cidr) {
		/*
		 * The exact prefix has a node already: (re)assign it and move
		 * it to the tail of the owner's list, as the kernel's
		 * list_move_tail() does, even for the same owner.
		 */
		if (n->flags & AIP_ENTRY) {
			e = to_entry(n);
			owner_unlink(e);
			owner_link(e, owner);
			return 0;
		}
		/*
		 * A join becomes an entry; it needs the bigger allocation unless
		 * it is a demoted entry (AIP_BIG: same family, same size).
		 */
		if (n->flags & AIP_BIG) {
			e = to_entry(n);
		} else {
			e = entry_new(key, cidr, v6flag);
			if (!e)
				return -ENOMEM;
			e->node.child[0] = n->child[0];
			e->node.child[1] = n->child[1];
			*slot = &e->node;
			free(n);
		}
		entry_set_key(e, key);
		e->node.flags |= AIP_ENTRY;
		owner_link(e, owner);
		t->count++;
		return 0;
	}

	if (n->cidr == d) {
		/*
		 * n is a strict prefix of the key and the representative itself,
		 * and the key's side below it is empty (otherwise the
		 * representative would have been found there and d would be
		 * larger): hang the new entry there.
		 */
		slot = &n->child[key_bit(key, d)];
		if (*slot)
			abort(); /* trie invariant broken */
		goto new_leaf;
	}

	/* n->cidr > d: the new prefix goes above n. */
	e = entry_new(key, cidr, v6flag);
	if (!e)
		return -ENOMEM;
	if (d == cidr) {
		/* The new prefix covers n: it becomes n's parent. */
		e->node.child[key_bit(ref, cidr)] = n;
		*slot = &e->node;
	} else {
		/* They diverge at bit d: a join holds both. */
		struct wg_aip_node *j = calloc(1, sizeof(*j));

		if (!j) {
			free(e);
			return -ENOMEM;
		}
		j->cidr = (uint8_t)d;
		j->flags = v6flag;
		j->child[key_bit(key, d)] = &e->node;
		j->child[key_bit(ref, d)] = n;
		*slot = j;
	}
	owner_link(e, owner);
	t->count++;
	return 0;

new_leaf:
	e = entry_new(key, cidr, v6flag);
	if (!e)
		return -ENOMEM;
	*slot = &e->node;
	owner_link(e, owner);
	t->count++;
	return 0;
}

/*
 * Find the slot holding the entry for exactly key/cidr, and the slot of its
 * parent (NULL at the root).  Only the key's bits steer the walk; the final
 * entry's stored prefix is checked once at the end.
 */
static struct wg_aip_node **find_exact(struct wg_aip_node **slot, const uint64_t key[2], unsigned int cidr,
				       struct wg_aip_node ***parent_slot)
{
	struct wg_aip_node **pslot = NULL, *n;
	uint64_t nkey[2];

	while ((n = *slot) && n->cidr < cidr) {
		pslot = slot;
		slot = &n->child[key_bit(key, n->cidr)];
	}
	if (!n || n->cidr != cidr || !(n->flags & AIP_ENTRY))
		return NULL;
	entry_key(to_entry(n), nkey);
	if (nkey[0] != key[0] || nkey[1] != key[1])
		return NULL;
	*parent_slot = pslot;
	return slot;
}

/* Unlink the entry at *slot from its owner and the trie, pruning what's left. */
static void remove_entry(struct wg_allowedips *t, struct wg_aip_node **slot, struct wg_aip_node **pslot)
{
	struct wg_aip_node *n = *slot, *child, *parent;

	owner_unlink(to_entry(n));
	t->count--;

	if (n->child[0] && n->child[1]) {
		/*
		 * Still needed as a branch point: demote to a join.  Move it to
		 * a small allocation if we can; if not, keeping the big one is
		 * correct, just less compact, so removal never fails.
		 */
		struct wg_aip_node *j = malloc(sizeof(*j));

		n->flags &= (uint8_t)~AIP_ENTRY;
		if (j) {
			j->child[0] = n->child[0];
			j->child[1] = n->child[1];
			j->cidr = n->cidr;
			j->flags = n->flags & (uint8_t)~AIP_BIG;
			*slot = j;
			free(n);
		}
		return;
	}

	/* Zero or one child: splice it out. */
	child = n->child[0] ? n->child[0] : n->child[1];
	*slot = child;
	free(n);
	if (child || !pslot)
		return;

	/* n was a leaf, so its parent lost a child; a join with one is useless. */
	parent = *pslot;
	if (!(parent->flags & AIP_ENTRY)) {
		*pslot = parent->child[0] ? parent->child[0] : parent->child[1];
		free(parent);
	}
}

int wg_allowedips_remove(struct wg_allowedips *t, int family, const uint8_t *addr, uint8_t cidr,
			 struct wg_aip_owner *owner)
{
	unsigned int bits = family_bits(family);
	struct wg_aip_node **slot, **pslot;
	uint64_t key[2];

	if (!bits || cidr > bits || !addr)
		return -ENOENT;
	load_key(key, family, addr);
	mask_key(key, cidr);
	slot = find_exact(root_slot(t, family), key, cidr, &pslot);
	if (!slot || to_entry(*slot)->owner != owner)
		return -ENOENT;
	remove_entry(t, slot, pslot);
	return 0;
}

void wg_allowedips_remove_owner(struct wg_allowedips *t, struct wg_aip_owner *owner)
{
	/* O(owner's prefixes x address bits): each needs its parent, found by a walk. */
	while (owner->head) {
		struct aip_entry *e = to_entry(owner->head);
		int family = (e->node.flags & AIP_V6) ? AF_INET6 : AF_INET;
		struct wg_aip_node **slot, **pslot;
		uint64_t key[2];

		entry_key(e, key);
		slot = find_exact(root_slot(t, family), key, e->node.cidr, &pslot);
		if (!slot || *slot != &e->node)
			abort(); /* owner list and trie disagree */
		remove_entry(t, slot, pslot);
	}
}

struct wg_aip_owner *wg_allowedips_lookup(const struct wg_allowedips *t, int family, const uint8_t *addr)
{
	unsigned int bits = family_bits(family);
	struct wg_aip_owner *best = NULL;
	const struct wg_aip_node *n;
	uint64_t key[2];

	if (!bits || !addr)
		return NULL;
	load_key(key, family, addr);

	/*
	 * Joins are passed without a check: if the key is outside a join's
	 * prefix, it is outside every entry below it too, and the first such
	 * entry stops the walk.  Entries further down are always longer, so
	 * the last matching entry is the longest match.
	 */
	for (n = root_of(t, family); n; n = n->child[key_bit(key, n->cidr)]) {
		if (n->flags & AIP_ENTRY) {
			const struct aip_entry *e = to_entry(n);

			/* Reads e->key[1] only when cidr > 64, i.e. IPv6. */
			if (!prefix_eq(e->key, key, n->cidr))
				break;
			best = e->owner;
		}
		if (n->cidr == bits)
			break;
	}
	return best;
}

void wg_allowedips_foreach(const struct wg_aip_owner *owner,
			   void (*cb)(void *arg, int family, const uint8_t *addr, uint8_t cidr), void *arg)
{
	const struct wg_aip_node *n, *next;
	uint64_t key[2];
	uint8_t addr[16];

	/* Fetch next first so that cb may remove the prefix it is given. */
	for (n = owner->head; n; n = next) {
		const struct aip_entry *e = to_entry(n);

		next = e->next;
		entry_key(e, key);
		store_be64(addr, key[0]);
		store_be64(addr + 8, key[1]);
		cb(arg, (e->node.flags & AIP_V6) ? AF_INET6 : AF_INET, addr, e->node.cidr);
	}
}

/* Recursion depth is bounded by the address length (129 levels at most). */
static void free_subtree(struct wg_aip_node *n)
{
	if (!n)
		return;
	free_subtree(n->child[0]);
	free_subtree(n->child[1]);
	if (n->flags & AIP_ENTRY)
		owner_unlink(to_entry(n)); /* leaves every owner empty, not dangling */
	free(n);
}

void wg_allowedips_init(struct wg_allowedips *t)
{
	memset(t, 0, sizeof(*t));
}

void wg_allowedips_free(struct wg_allowedips *t)
{
	free_subtree(root_of(t, AF_INET));
	free_subtree(root_of(t, AF_INET6));
	t->root4 = NULL;
	t->root6 = NULL;
	t->count = 0;
}
