/* Cryptokey routing table: longest-prefix match over IPv4 and IPv6 prefixes,
 * each owned by one peer.  Not thread-safe: the caller holds its own lock
 * (readers may share a read lock for lookup/foreach).
 *
 * Each peer embeds a struct wg_aip_owner; the table links the peer's nodes
 * to it so that listing or removing one peer's prefixes costs O(its prefixes),
 * not O(table) (10,000 peers must dump fast). */
#ifndef WG_ALLOWEDIPS_H
#define WG_ALLOWEDIPS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct wg_aip_node;

struct wg_aip_owner {
	struct wg_aip_node *head; /* this owner's prefixes, in insertion order */
	size_t count;
};

struct wg_allowedips {
	struct wg_aip_node *root4, *root6;
	size_t count;
};

void wg_allowedips_init(struct wg_allowedips *t);
/* family is AF_INET (addr 4 bytes, cidr 0..32) or AF_INET6 (16 bytes, 0..128).
 * Host bits beyond cidr are masked off.  The prefix goes to the tail of
 * owner's list; if it exists already it is moved there (from its old owner's
 * list, or from its place in owner's own), as the kernel does.  Returns 0,
 * -EINVAL (bad family/cidr) or -ENOMEM. */
int wg_allowedips_insert(struct wg_allowedips *t, int family, const uint8_t *addr, uint8_t cidr,
			 struct wg_aip_owner *owner);
/* Removes the exact prefix if it is owned by `owner`.  0 or -ENOENT. */
int wg_allowedips_remove(struct wg_allowedips *t, int family, const uint8_t *addr, uint8_t cidr,
			 struct wg_aip_owner *owner);
void wg_allowedips_remove_owner(struct wg_allowedips *t, struct wg_aip_owner *owner);
/* Longest-prefix match; NULL when nothing covers addr. */
struct wg_aip_owner *wg_allowedips_lookup(const struct wg_allowedips *t, int family, const uint8_t *addr);
/* Calls cb for each prefix of owner (addr is masked, 4 or 16 bytes), in the
 * order they were inserted.  cb may remove the prefix it is given. */
void wg_allowedips_foreach(const struct wg_aip_owner *owner,
			   void (*cb)(void *arg, int family, const uint8_t *addr, uint8_t cidr), void *arg);
void wg_allowedips_free(struct wg_allowedips *t);
#endif
