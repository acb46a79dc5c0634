/* Minimal RTNETLINK client (libmnl) used to configure the TUN interface and
 * container veth pairs without shelling out to ip(8).
 *
 * Conventions shared by every function:
 *  - They act on the network namespace of the *calling thread* (a netlink
 *    socket is bound to the netns current at socket() time, and each call
 *    opens its own socket).  To act on another namespace, setns() the
 *    calling thread first.
 *  - Every call uses a private socket and its own buffers; the only shared
 *    state is an atomic sequence counter.  Safe to call from several
 *    threads at once.
 *  - They block until the kernel has acknowledged the request and return
 *    0 (wg_nl_ifindex: the index) on success, a negative errno on failure.
 *    Kernel errors are passed through unchanged (-ENODEV, -EEXIST, ...);
 *    -ETIMEDOUT if no answer came within WG_NL_TIMEOUT_MS.
 *  - Addresses are raw network-order bytes: 4 for AF_INET, 16 for AF_INET6.
 *  - Argument checks done locally: bad family -> -EAFNOSUPPORT, prefixlen
 *    above 32/128, NULL/empty/over-long names -> -EINVAL, ifindex <= 0 ->
 *    -ENODEV.
 */
#ifndef WG_NETLINK_H
#define WG_NETLINK_H
#include <stdbool.h>
#include <stdint.h>

/* Upper bound on how long one call waits for the kernel's answer.  Most
 * rtnetlink requests are executed synchronously inside sendmsg() (under
 * rtnl_lock), so this mostly protects against a lost reply. */
#define WG_NL_TIMEOUT_MS 5000

/* Routes installed by wg_nl_route_add() carry this rtm_protocol so they can
 * be told apart from kernel/boot routes (`ip route show proto static`). */
#define WG_NL_RTPROT 4 /* RTPROT_STATIC */

/* Index of interface @ifname: > 0, or -ENODEV if there is no such link
 * (-EINVAL for a NULL, empty or >= IFNAMSIZ name). */
int wg_nl_ifindex(const char *ifname);

/* Set the MTU; the kernel rejects values outside the device's min/max with
 * -EINVAL.  Idempotent. */
int wg_nl_link_set_mtu(int ifindex, unsigned mtu);

/* Set or clear IFF_UP (only that flag is touched).  Idempotent. */
int wg_nl_link_set_up(int ifindex, bool up);

/* Delete the link.  For a veth this also deletes its peer, wherever it is.
 * -ENODEV if it does not exist. */
int wg_nl_link_delete(int ifindex);

/* Add @addr/@prefixlen to the link (the kernel adds the prefix route as
 * `ip addr add` would).  Idempotent: re-adding an identical address returns
 * 0.  IPv6 addresses are added with IFA_F_NODAD so they are usable at once
 * (no "tentative" phase). */
int wg_nl_addr_add(int ifindex, int family, const uint8_t *addr, uint8_t prefixlen);

/* Remove an address; -EADDRNOTAVAIL if the link does not carry exactly this
 * address/prefixlen. */
int wg_nl_addr_del(int ifindex, int family, const uint8_t *addr, uint8_t prefixlen);

typedef void (*wg_nl_addr_cb)(void *arg, int family, const uint8_t *addr, uint8_t prefixlen);

/* Call @cb once for each address on the link.  @family is AF_INET,
 * AF_INET6 or AF_UNSPEC (both).  The list is a consistent snapshot: it is
 * collected completely (the dump is retried if the kernel reports it was
 * interrupted by a concurrent change) and only then handed to @cb, after
 * the socket is closed, so @cb may itself call wg_nl_* functions.  Returns
 * 0 or a negative errno: -ENODEV for an unknown link, -EINTR if the dump
 * was spoiled by concurrent changes on every retry.  On error @cb is never
 * called.  Link-local IPv6 addresses the kernel added are included. */
int wg_nl_addr_list(int ifindex, int family, wg_nl_addr_cb cb, void *arg);

/* One address of wg_nl_addr_dump_all(). */
struct wg_nl_addr_info {
	int family;       /* AF_INET or AF_INET6 */
	int ifindex;      /* link carrying it */
	uint8_t addr[16]; /* 4 or 16 bytes used */
	uint8_t prefixlen;
	uint8_t scope;  /* RT_SCOPE_* (0: universe/global) */
	uint32_t flags; /* IFA_F_* (tentative, deprecated, dadfailed, ...) */
};

typedef void (*wg_nl_addr_info_cb)(void *arg, const struct wg_nl_addr_info *a);

/* Call @cb once for each address of every link, with its link, scope and
 * flags: a consistent snapshot, as wg_nl_addr_list() makes.  @family is
 * AF_INET, AF_INET6 or AF_UNSPEC (both).  Returns 0 or a negative errno;
 * on error @cb is never called. */
int wg_nl_addr_dump_all(int family, wg_nl_addr_info_cb cb, void *arg);

/* Route @dst/@prefixlen out of the link: scope link, no gateway, protocol
 * WG_NL_RTPROT, in routing table @table (0 = main).  Host bits of @dst are
 * masked off; @dst may be NULL only for prefixlen 0 (default route).
 * Idempotent (NLM_F_REPLACE): an existing route to the same prefix in the
 * same table and with the same metric is replaced, even if it pointed at
 * another device. */
int wg_nl_route_add(int ifindex, int family, const uint8_t *dst, uint8_t prefixlen, uint32_t table);

/* Route @dst/@prefixlen via @gateway (same family) on the link, with
 * RTNH_F_ONLINK so the gateway need not be in one of our subnets (main
 * table, idempotent like wg_nl_route_add). */
int wg_nl_route_add_via(int ifindex, int family, const uint8_t *dst, uint8_t prefixlen, const uint8_t *gateway);

/* Delete that route; -ESRCH if there is no such route (also when the link
 * does not exist). */
int wg_nl_route_del(int ifindex, int family, const uint8_t *dst, uint8_t prefixlen, uint32_t table);

/* Create veth pair @name <-> @peer_name.  @peer_name may be NULL to let the
 * kernel pick one.  If @peer_netns_fd >= 0 (an open /proc/PID/ns/net or
 * /run/netns/NAME), the peer is created directly inside that namespace.
 * -EEXIST if either name is already taken (nothing is created then). */
int wg_nl_veth_create(const char *name, const char *peer_name, int peer_netns_fd);

/* Human-readable text for a negative errno returned above; thread-safe,
 * never NULL. */
const char *wg_nl_strerror(int err);

/* Extended-ack text the kernel attached to the error answer of the last
 * request this thread sent (e.g. "ipv4: Address already assigned"), or ""
 * if there was none.  Meant for logging right after a failed call; valid
 * until the next wg_nl_* call in the same thread. */
const char *wg_nl_last_extack(void);
#endif
