/* Minimal RTNETLINK client on top of libmnl; see netlink.h for the contract.
 *
 * Every public function builds one request in a stack buffer, sends it on
 * a private NETLINK_ROUTE socket and reads until the kernel's ACK (or the
 * NLMSG_DONE of a dump).  A socket per call costs three syscalls but buys
 * a lot: no locking, no stale replies from an earlier timed-out request,
 * and the namespace is always the one of the calling thread at call time
 * (the engine setns()es worker threads into container namespaces).
 */
#include "netlink.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <net/if.h>
#include <netinet/in.h>

#include <libmnl/libmnl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/if_link.h>
#include <linux/if_addr.h>
#include <linux/veth.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

/* Requests are tiny and bounded (names are checked against IFNAMSIZ
 * before they are copied in): the largest, a veth create with two names
 * and a netns fd, is about 130 bytes.  MNL_SOCKET_BUFFER_SIZE is a
 * run-time value (sysconf), so use a fixed size well below it. */
#define NL_TX_SIZE 1024
/* Request buffer on the stack, aligned for struct nlmsghdr. */
#define NL_BUF(name) _Alignas(struct nlmsghdr) char name[NL_TX_SIZE]

/* Receive buffer.  The kernel sizes dump chunks to the largest recvmsg()
 * buffer it has seen from the socket, capped at 32 KiB, and a single
 * RTM_NEWLINK reply can exceed one page; a smaller buffer would get
 * MSG_TRUNC (ENOSPC from libmnl) on big links.  32 KiB is what the
 * kernel's netlink documentation recommends.  Heap-allocated so callers
 * on small thread stacks are fine. */
#define NL_RX_SIZE 32768

/* Dumps are restarted from scratch when the kernel flags them as
 * interrupted by a concurrent change (NLM_F_DUMP_INTR) or when messages
 * were dropped (ENOBUFS); give up after this many attempts. */
#define NL_DUMP_TRIES 5

/* Hard cap on addresses collected by one wg_nl_addr_list() call, so a
 * pathological interface cannot make us allocate without bound. */
#define NL_ADDR_LIST_MAX 65536

_Static_assert(WG_NL_RTPROT == RTPROT_STATIC, "netlink.h: WG_NL_RTPROT");

static atomic_uint nl_seq;
static _Thread_local char nl_extack[160];

struct nl_ctx;
typedef int (*nl_data_cb_t)(const struct nlmsghdr *nlh, struct nl_ctx *ctx);

struct nl_ctx {
	nl_data_cb_t cb; /* per-message handler for replies, or NULL */
	void *arg;       /* handler state */
	int err;         /* negative errno from the kernel or a handler */
};

/* ---- argument checks ---------------------------------------------------- */

static int nl_addr_len(int family)
{
	switch (family) {
	case AF_INET:
		return 4;
	case AF_INET6:
		return 16;
	default:
		return -EAFNOSUPPORT;
	}
}

static int nl_check_name(const char *name)
{
	if (!name || !name[0] || strnlen(name, IFNAMSIZ) >= IFNAMSIZ)
		return -EINVAL;
	return 0;
}

/* Validates family and prefix length; returns the address length. */
static int nl_check_prefix(int family, const uint8_t *addr, uint8_t plen)
{
	int alen = nl_addr_len(family);

	if (alen < 0)
		return alen;
	if (plen > alen * 8 || !addr)
		return -EINVAL;
	return alen;
}

/* Clear the host bits: the kernel rejects an IPv4 route whose destination
 * has them set ("Invalid prefix for given prefix length") while IPv6
 * silently masks, so masking here makes both families behave the same. */
static void nl_mask_prefix(uint8_t *out, const uint8_t *in, int alen, uint8_t plen)
{
	for (int i = 0; i < alen; i++) {
		int bits = plen - i * 8;

		if (bits >= 8)
			out[i] = in[i];
		else if (bits <= 0)
			out[i] = 0;
		else
			out[i] = in[i] & (uint8_t)(0xff << (8 - bits));
	}
}

/* ---- message plumbing --------------------------------------------------- */

static struct nlmsghdr *nl_msg_init(void *buf, uint16_t type, uint16_t flags)
{
	struct nlmsghdr *nlh;

	memset(buf, 0, NL_TX_SIZE);
	nlh = mnl_nlmsg_put_header(buf);
	nlh->nlmsg_type = type;
	nlh->nlmsg_flags = NLM_F_REQUEST | flags;
	return nlh;
}

static int nl_extack_attr_cb(const struct nlattr *attr, void *data)
{
	(void)data;
	if (mnl_attr_get_type(attr) == NLMSGERR_ATTR_MSG && mnl_attr_validate(attr, MNL_TYPE_NUL_STRING) == 0)
		snprintf(nl_extack, sizeof(nl_extack), "%s", mnl_attr_get_str(attr));
	return MNL_CB_OK;
}

/* Extended-ack TLVs start @off bytes into the payload of an NLMSG_ERROR or
 * NLMSG_DONE message.  mnl_attr_parse() bounds-checks every attribute;
 * only @off itself needs checking against the payload. */
static void nl_parse_extack(const struct nlmsghdr *nlh, size_t off)
{
	if (!(nlh->nlmsg_flags & NLM_F_ACK_TLVS) || off > mnl_nlmsg_get_payload_len(nlh))
		return;
	mnl_attr_parse(nlh, (unsigned)off, nl_extack_attr_cb, NULL);
}

static int nl_error_cb(const struct nlmsghdr *nlh, void *data)
{
	struct nl_ctx *ctx = data;
	const struct nlmsgerr *e = mnl_nlmsg_get_payload(nlh);
	size_t off;

	if (nlh->nlmsg_len < mnl_nlmsg_size(sizeof(*e))) {
		ctx->err = -EBADMSG;
		return MNL_CB_ERROR;
	}
	if (e->error == 0)
		return MNL_CB_STOP; /* the ACK we were waiting for */
	ctx->err = e->error < 0 ? e->error : -e->error;

	/* With NETLINK_CAP_ACK honoured (NLM_F_CAPPED) only the header of
	 * our request is echoed back, otherwise all of it. */
	off = sizeof(*e);
	if (!(nlh->nlmsg_flags & NLM_F_CAPPED)) {
		if (e->msg.nlmsg_len < sizeof(struct nlmsghdr))
			return MNL_CB_ERROR;
		off += e->msg.nlmsg_len - sizeof(struct nlmsghdr);
	}
	nl_parse_extack(nlh, off);
	return MNL_CB_ERROR;
}

/* End of a dump.  Errors of the dump itself (e.g. -ENODEV for a filtered
 * address dump of a missing link) arrive as an int payload here;
 * libmnl's default handler would ignore them. */
static int nl_done_cb(const struct nlmsghdr *nlh, void *data)
{
	struct nl_ctx *ctx = data;
	int err;

	if (mnl_nlmsg_get_payload_len(nlh) < sizeof(err))
		return MNL_CB_STOP;
	memcpy(&err, mnl_nlmsg_get_payload(nlh), sizeof(err));
	if (err >= 0)
		return MNL_CB_STOP;
	ctx->err = err;
	nl_parse_extack(nlh, sizeof(err));
	return MNL_CB_ERROR;
}

static int nl_data_cb(const struct nlmsghdr *nlh, void *data)
{
	struct nl_ctx *ctx = data;

	return ctx->cb ? ctx->cb(nlh, ctx) : MNL_CB_OK;
}

/* With an explicit control array libmnl calls nothing for NULL slots, so
 * NOOP and OVERRUN are ignored and ERROR/DONE go to our handlers.  Not
 * const only because mnl_cb_run2() takes a non-const pointer; never
 * written. */
static mnl_cb_t nl_ctl_cbs[NLMSG_MIN_TYPE] = {
	[NLMSG_ERROR] = nl_error_cb,
	[NLMSG_DONE] = nl_done_cb,
};

static int nl_open(struct mnl_socket **out, bool dump)
{
	const struct timeval tv = {
		.tv_sec = WG_NL_TIMEOUT_MS / 1000,
		.tv_usec = (WG_NL_TIMEOUT_MS % 1000) * 1000,
	};
	const int one = 1;
	struct mnl_socket *nl;
	int fd, err;

	/* CLOEXEC: the engine forks container helpers from other threads. */
	nl = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC);
	if (!nl)
		return -errno;
	fd = mnl_socket_get_fd(nl);
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0)
		goto fail;
	/* Best effort, older kernels lack these: CAP_ACK keeps error
	 * messages small (no copy of the request), EXT_ACK gets the
	 * kernel's explanation of an error. */
	setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one));
	setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof(one));
	/* Strict checking makes the kernel honour the ifindex filter of an
	 * address dump and report -ENODEV for a missing link.  We filter in
	 * userspace as well, so kernels without it (< 4.20) still work. */
	if (dump)
		setsockopt(fd, SOL_NETLINK, NETLINK_GET_STRICT_CHK, &one, sizeof(one));
	if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0)
		goto fail;
	*out = nl;
	return 0;
fail:
	err = -errno;
	mnl_socket_close(nl);
	return err;
}

/* Send @nlh and process answers until the ACK / NLMSG_DONE, an error or
 * the timeout.  Replies (data messages) go to @cb. */
static int nl_talk(struct nlmsghdr *nlh, nl_data_cb_t cb, void *arg)
{
	struct nl_ctx ctx = { .cb = cb, .arg = arg };
	bool dump = nlh->nlmsg_flags & NLM_F_DUMP;
	struct mnl_socket *nl = NULL;
	unsigned int seq, portid;
	void *rx;
	int ret;

	nl_extack[0] = '\0';
	rx = malloc(NL_RX_SIZE);
	if (!rx)
		return -ENOMEM;
	ret = nl_open(&nl, dump);
	if (ret)
		goto out_free;
	portid = mnl_socket_get_portid(nl);
	/* libmnl treats seq 0 as "don't check"; never use it. */
	do
		seq = atomic_fetch_add(&nl_seq, 1) + 1;
	while (!seq);
	nlh->nlmsg_seq = seq;

	/* An interrupted send has not reached the kernel (rtnetlink runs the
	 * request inside sendmsg), so retrying cannot apply it twice. */
	while (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) {
		if (errno != EINTR) {
			ret = -errno;
			goto out;
		}
	}
	for (;;) {
		ssize_t n = mnl_socket_recvfrom(nl, rx, NL_RX_SIZE);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			/* ENOBUFS: the socket overflowed and the answer may
			 * be lost; returned as is (dumps are retried). */
			ret = (errno == EAGAIN || errno == EWOULDBLOCK) ? -ETIMEDOUT : -errno;
			break;
		}
		if (n == 0) { /* never sent by the kernel; don't spin */
			ret = -EIO;
			break;
		}
		errno = 0;
		ret = mnl_cb_run2(rx, (size_t)n, seq, portid, nl_data_cb, &ctx, nl_ctl_cbs, NLMSG_MIN_TYPE);
		if (ret == MNL_CB_ERROR) {
			/* ctx.err: kernel error or handler failure; else a
			 * libmnl check failed: EPROTO (wrong seq), ESRCH
			 * (wrong portid), EINTR (NLM_F_DUMP_INTR). */
			ret = ctx.err ? ctx.err : (errno ? -errno : -EIO);
			break;
		}
		if (ret == MNL_CB_STOP) {
			ret = ctx.err;
			break;
		}
	}
out:
	mnl_socket_close(nl);
out_free:
	free(rx);
	return ret;
}

/* ---- links -------------------------------------------------------------- */

static struct ifinfomsg *nl_put_ifinfo(struct nlmsghdr *nlh, int ifindex)
{
	struct ifinfomsg *ifm = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifm));

	ifm->ifi_family = AF_UNSPEC;
	ifm->ifi_index = ifindex;
	return ifm;
}

static int nl_getlink_cb(const struct nlmsghdr *nlh, struct nl_ctx *ctx)
{
	const struct ifinfomsg *ifm = mnl_nlmsg_get_payload(nlh);
	int *ifindex = ctx->arg;

	if (nlh->nlmsg_type == RTM_NEWLINK && nlh->nlmsg_len >= mnl_nlmsg_size(sizeof(*ifm)))
		*ifindex = ifm->ifi_index;
	return MNL_CB_OK;
}

int wg_nl_ifindex(const char *ifname)
{
	NL_BUF(buf);
	struct nlmsghdr *nlh;
	int ret, ifindex = 0;

	ret = nl_check_name(ifname);
	if (ret)
		return ret;
	/* NLM_F_ACK on a GET: the reply comes first, then the ACK, so the
	 * common "read until ACK" loop also works for lookups. */
	nlh = nl_msg_init(buf, RTM_GETLINK, NLM_F_ACK);
	nl_put_ifinfo(nlh, 0);
	mnl_attr_put_strz(nlh, IFLA_IFNAME, ifname);
	/* Only the index is needed: skip the statistics blocks. */
	mnl_attr_put_u32(nlh, IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
	ret = nl_talk(nlh, nl_getlink_cb, &ifindex);
	if (ret)
		return ret;
	return ifindex > 0 ? ifindex : -ENODEV;
}

/* RTM_SETLINK (not NEWLINK) for changes: it can never create a link. */
static struct nlmsghdr *nl_setlink_init(void *buf, int ifindex, struct ifinfomsg **ifmp)
{
	struct nlmsghdr *nlh = nl_msg_init(buf, RTM_SETLINK, NLM_F_ACK);
	struct ifinfomsg *ifm = nl_put_ifinfo(nlh, ifindex);

	if (ifmp)
		*ifmp = ifm;
	return nlh;
}

int wg_nl_link_set_mtu(int ifindex, unsigned mtu)
{
	NL_BUF(buf);
	struct nlmsghdr *nlh;

	if (ifindex <= 0)
		return -ENODEV;
	nlh = nl_setlink_init(buf, ifindex, NULL);
	mnl_attr_put_u32(nlh, IFLA_MTU, mtu);
	return nl_talk(nlh, NULL, NULL);
}

int wg_nl_link_set_up(int ifindex, bool up)
{
	NL_BUF(buf);
	struct ifinfomsg *ifm;
	struct nlmsghdr *nlh;

	if (ifindex <= 0)
		return -ENODEV;
	nlh = nl_setlink_init(buf, ifindex, &ifm);
	/* ifi_change masks which flags are touched: IFF_UP only. */
	ifm->ifi_change = IFF_UP;
	ifm->ifi_flags = up ? IFF_UP : 0;
	return nl_talk(nlh, NULL, NULL);
}

int wg_nl_link_delete(int ifindex)
{
	NL_BUF(buf);
	struct nlmsghdr *nlh;

	if (ifindex <= 0)
		return -ENODEV;
	nlh = nl_msg_init(buf, RTM_DELLINK, NLM_F_ACK);
	nl_put_ifinfo(nlh, ifindex);
	return nl_talk(nlh, NULL, NULL);
}

int wg_nl_veth_create(const char *name, const char *peer_name, int peer_netns_fd)
{
	NL_BUF(buf);
	struct nlattr *linkinfo, *data, *peer;
	struct ifinfomsg *pifm;
	struct nlmsghdr *nlh;
	int ret;

	ret = nl_check_name(name);
	if (!ret && peer_name)
		ret = nl_check_name(peer_name);
	if (ret)
		return ret;

	/* NLM_F_EXCL: an existing link of that name is an error, not
	 * something to modify. */
	nlh = nl_msg_init(buf, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK);
	nl_put_ifinfo(nlh, 0);
	mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
	linkinfo = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
	mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "veth");
	data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
	/* VETH_INFO_PEER holds a complete ifinfomsg followed by IFLA_*
	 * attributes describing the peer, as in a nested RTM_NEWLINK. */
	peer = mnl_attr_nest_start(nlh, VETH_INFO_PEER);
	pifm = mnl_nlmsg_get_payload_tail(nlh);
	memset(pifm, 0, sizeof(*pifm));
	pifm->ifi_family = AF_UNSPEC;
	nlh->nlmsg_len += MNL_ALIGN(sizeof(*pifm));
	if (peer_name)
		mnl_attr_put_strz(nlh, IFLA_IFNAME, peer_name);
	if (peer_netns_fd >= 0)
		mnl_attr_put_u32(nlh, IFLA_NET_NS_FD, (uint32_t)peer_netns_fd);
	mnl_attr_nest_end(nlh, peer);
	mnl_attr_nest_end(nlh, data);
	mnl_attr_nest_end(nlh, linkinfo);
	return nl_talk(nlh, NULL, NULL);
}

/* ---- addresses ---------------------------------------------------------- */

static struct nlmsghdr *nl_addr_msg(void *buf, uint16_t type, uint16_t flags, int ifindex, int family,
				    const uint8_t *addr, int alen, uint8_t prefixlen)
{
	struct nlmsghdr *nlh = nl_msg_init(buf, type, flags);
	struct ifaddrmsg *ifa = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifa));

	ifa->ifa_family = family;
	ifa->ifa_prefixlen = prefixlen;
	ifa->ifa_index = ifindex;
	/* Like ip(8): loopback addresses get host scope; IPv6 derives the
	 * scope from the address itself. */
	ifa->ifa_scope = (family == AF_INET && addr[0] == 127) ? RT_SCOPE_HOST : RT_SCOPE_UNIVERSE;
	/* Local address == prefix address: not a point-to-point peer. */
	mnl_attr_put(nlh, IFA_LOCAL, alen, addr);
	mnl_attr_put(nlh, IFA_ADDRESS, alen, addr);
	return nlh;
}

int wg_nl_addr_add(int ifindex, int family, const uint8_t *addr, uint8_t prefixlen)
{
	NL_BUF(buf);
	struct nlmsghdr *nlh;
	int alen;

	if (ifindex <= 0)
		return -ENODEV;
	alen = nl_check_prefix(family, addr, prefixlen);
	if (alen < 0)
		return alen;
	/* NLM_F_REPLACE makes re-adding an existing address a successful
	 * no-op (it refreshes lifetimes) instead of -EEXIST. */
	nlh = nl_addr_msg(buf, RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK, ifindex, family, addr, alen,
			  prefixlen);
	if (family == AF_INET6) {
		/* Skip duplicate address detection: the address must be
		 * bindable right away, and on a TUN/veth we own the link. */
		struct ifaddrmsg *ifa = mnl_nlmsg_get_payload(nlh);

		ifa->ifa_flags = IFA_F_NODAD;
		mnl_attr_put_u32(nlh, IFA_FLAGS, IFA_F_NODAD);
	}
	return nl_talk(nlh, NULL, NULL);
}

int wg_nl_addr_del(int ifindex, int family, const uint8_t *addr, uint8_t prefixlen)
{
	NL_BUF(buf);
	struct nlmsghdr *nlh;
	int alen;

	if (ifindex <= 0)
		return -ENODEV;
	alen = nl_check_prefix(family, addr, prefixlen);
	if (alen < 0)
		return alen;
	nlh = nl_addr_msg(buf, RTM_DELADDR, NLM_F_ACK, ifindex, family, addr, alen, prefixlen);
	return nl_talk(nlh, NULL, NULL);
}

struct nl_addr_set {
	struct wg_nl_addr_info *v;
	size_t n, cap;
	uint32_t ifindex; /* 0: every link */
	int family;       /* family of the dump in progress */
};

static int nl_addr_attr_cb(const struct nlattr *attr, void *data)
{
	const struct nlattr **tb = data;
	uint16_t type = mnl_attr_get_type(attr);

	if (type == IFA_LOCAL || type == IFA_ADDRESS)
		tb[type] = attr;
	else if (type == IFA_FLAGS && mnl_attr_validate(attr, MNL_TYPE_U32) >= 0)
		tb[type] = attr;
	return MNL_CB_OK;
}

static int nl_addr_dump_cb(const struct nlmsghdr *nlh, struct nl_ctx *ctx)
{
	const struct nlattr *tb[IFA_MAX + 1] = { NULL };
	const struct ifaddrmsg *ifa = mnl_nlmsg_get_payload(nlh);
	struct nl_addr_set *set = ctx->arg;
	const struct nlattr *a;
	int alen;

	if (nlh->nlmsg_type != RTM_NEWADDR || nlh->nlmsg_len < mnl_nlmsg_size(sizeof(*ifa)))
		return MNL_CB_OK;
	/* The kernel filters by link when it supports strict dumps; the
	 * family filter is needed anyway, see wg_nl_addr_list(). */
	if (set->ifindex && ifa->ifa_index != set->ifindex)
		return MNL_CB_OK;
	if (ifa->ifa_family != set->family)
		return MNL_CB_OK;
	alen = nl_addr_len(ifa->ifa_family);
	if (mnl_attr_parse(nlh, sizeof(*ifa), nl_addr_attr_cb, tb) < 0)
		return MNL_CB_OK;
	/* IFA_LOCAL is the interface's own address when present (IPv4
	 * always, IPv6 only for point-to-point); IFA_ADDRESS otherwise. */
	a = tb[IFA_LOCAL] ? tb[IFA_LOCAL] : tb[IFA_ADDRESS];
	if (!a || mnl_attr_get_payload_len(a) != (unsigned)alen)
		return MNL_CB_OK;

	if (set->n == set->cap) {
		size_t cap = set->cap ? set->cap * 2 : 16;
		struct wg_nl_addr_info *v;

		if (set->n >= NL_ADDR_LIST_MAX) {
			ctx->err = -E2BIG;
			return MNL_CB_ERROR;
		}
		v = realloc(set->v, cap * sizeof(*v));
		if (!v) {
			ctx->err = -ENOMEM;
			return MNL_CB_ERROR;
		}
		set->v = v;
		set->cap = cap;
	}
	memset(&set->v[set->n], 0, sizeof(set->v[set->n]));
	set->v[set->n].family = ifa->ifa_family;
	set->v[set->n].prefixlen = ifa->ifa_prefixlen;
	set->v[set->n].scope = ifa->ifa_scope;
	set->v[set->n].ifindex = (int)ifa->ifa_index;
	/* IFA_FLAGS carries all 32 bits; ifa_flags only the low 8. */
	set->v[set->n].flags = tb[IFA_FLAGS] ? mnl_attr_get_u32(tb[IFA_FLAGS]) : ifa->ifa_flags;
	memcpy(set->v[set->n].addr, mnl_attr_get_payload(a), alen);
	set->n++;
	return MNL_CB_OK;
}

static int nl_addr_dump(struct nl_addr_set *set, int family)
{
	NL_BUF(buf);
	struct nlmsghdr *nlh;
	struct ifaddrmsg *ifa;
	size_t start = set->n;
	int ret = -EIO;

	for (int i = 0; i < NL_DUMP_TRIES; i++) {
		set->n = start; /* drop what a failed attempt collected */
		set->family = family;
		/* Strict dump checking wants every header field but family
		 * and index zero, and no NLM_F_ACK. */
		nlh = nl_msg_init(buf, RTM_GETADDR, NLM_F_DUMP);
		ifa = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifa));
		ifa->ifa_family = family;
		ifa->ifa_index = set->ifindex;
		ret = nl_talk(nlh, nl_addr_dump_cb, set);
		if (ret != -EINTR && ret != -ENOBUFS)
			break;
	}
	return ret;
}

/* Collects the addresses of one link (@ifindex > 0) or of all (0) into
 * @set; see wg_nl_addr_list() for the per-family dumps. */
static int nl_addr_collect(struct nl_addr_set *set, int family)
{
	int ret = 0;

	/* One dump per family rather than an AF_UNSPEC dump: per-family
	 * dumps honour the ifindex filter and report -ENODEV.  A kernel
	 * without IPv6 may answer an AF_INET6 dump with every family (the
	 * callback drops entries of the wrong family) or -EAFNOSUPPORT,
	 * which means "no IPv6 addresses" when both were asked for. */
	if (family != AF_INET6)
		ret = nl_addr_dump(set, AF_INET);
	if (!ret && family != AF_INET) {
		ret = nl_addr_dump(set, AF_INET6);
		if (ret == -EAFNOSUPPORT && family == AF_UNSPEC)
			ret = 0;
	}
	return ret;
}

int wg_nl_addr_list(int ifindex, int family, wg_nl_addr_cb cb, void *arg)
{
	struct nl_addr_set set = { .ifindex = (uint32_t)ifindex };
	int ret;

	if (ifindex <= 0)
		return -ENODEV;
	if (family != AF_UNSPEC && nl_addr_len(family) < 0)
		return -EAFNOSUPPORT;
	if (!cb)
		return -EINVAL;
	ret = nl_addr_collect(&set, family);
	if (!ret) {
		for (size_t i = 0; i < set.n; i++)
			cb(arg, set.v[i].family, set.v[i].addr, set.v[i].prefixlen);
	}
	free(set.v);
	return ret;
}

int wg_nl_addr_dump_all(int family, wg_nl_addr_info_cb cb, void *arg)
{
	struct nl_addr_set set = { .ifindex = 0 };
	int ret;

	if (family != AF_UNSPEC && nl_addr_len(family) < 0)
		return -EAFNOSUPPORT;
	if (!cb)
		return -EINVAL;
	ret = nl_addr_collect(&set, family);
	if (!ret) {
		for (size_t i = 0; i < set.n; i++)
			cb(arg, &set.v[i]);
	}
	free(set.v);
	return ret;
}

/* ---- routes ------------------------------------------------------------- */

static struct nlmsghdr *nl_route_msg(void *buf, uint16_t type, uint16_t flags, int ifindex, int family,
				     const uint8_t *dst, int alen, uint8_t prefixlen, uint32_t table)
{
	struct nlmsghdr *nlh = nl_msg_init(buf, type, flags);
	struct rtmsg *rtm = mnl_nlmsg_put_extra_header(nlh, sizeof(*rtm));
	uint8_t masked[16] = { 0 };

	if (!table)
		table = RT_TABLE_MAIN;
	rtm->rtm_family = family;
	rtm->rtm_dst_len = prefixlen;
	/* rtm_table is 8 bits; larger ids only fit in RTA_TABLE, which the
	 * kernel prefers whenever present, so always send it. */
	rtm->rtm_table = table < 256 ? table : RT_TABLE_UNSPEC;
	if (type == RTM_NEWROUTE) {
		rtm->rtm_protocol = WG_NL_RTPROT;
		rtm->rtm_scope = RT_SCOPE_LINK; /* directly on the link */
		rtm->rtm_type = RTN_UNICAST;
	} else {
		/* Delete: NOWHERE scope and 0 protocol/type are wildcards,
		 * as `ip route del` sends them. */
		rtm->rtm_scope = RT_SCOPE_NOWHERE;
	}
	if (dst)
		nl_mask_prefix(masked, dst, alen, prefixlen);
	mnl_attr_put(nlh, RTA_DST, alen, masked);
	mnl_attr_put_u32(nlh, RTA_OIF, (uint32_t)ifindex);
	mnl_attr_put_u32(nlh, RTA_TABLE, table);
	return nlh;
}

static int nl_route_check(int ifindex, int family, const uint8_t *dst, uint8_t prefixlen)
{
	static const uint8_t any[16];

	if (ifindex <= 0)
		return -ENODEV;
	/* NULL means the default route, nothing else. */
	if (!dst && prefixlen == 0)
		dst = any;
	return nl_check_prefix(family, dst, prefixlen);
}

int wg_nl_route_add(int ifindex, int family, const uint8_t *dst, uint8_t prefixlen, uint32_t table)
{
	NL_BUF(buf);
	struct nlmsghdr *nlh;
	int alen;

	alen = nl_route_check(ifindex, family, dst, prefixlen);
	if (alen < 0)
		return alen;
	/* CREATE|REPLACE: add, or overwrite the existing route to the same
	 * prefix, so repeating the call is harmless. */
	nlh = nl_route_msg(buf, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK, ifindex, family, dst, alen,
			   prefixlen, table);
	return nl_talk(nlh, NULL, NULL);
}

int wg_nl_route_add_via(int ifindex, int family, const uint8_t *dst, uint8_t prefixlen, const uint8_t *gateway)
{
	NL_BUF(buf);
	struct nlmsghdr *nlh;
	struct rtmsg *rtm;
	int alen;

	alen = nl_route_check(ifindex, family, dst, prefixlen);
	if (alen < 0)
		return alen;
	if (!gateway)
		return -EINVAL;
	nlh = nl_route_msg(buf, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK, ifindex, family, dst, alen,
			   prefixlen, 0);
	rtm = mnl_nlmsg_get_payload(nlh);
	/* Through a gateway that is on the link but has no address of ours in
	 * its subnet (a container's link-local next hop): universe scope,
	 * RTNH_F_ONLINK. */
	rtm->rtm_scope = RT_SCOPE_UNIVERSE;
	rtm->rtm_flags |= RTNH_F_ONLINK;
	mnl_attr_put(nlh, RTA_GATEWAY, alen, gateway);
	return nl_talk(nlh, NULL, NULL);
}

int wg_nl_route_del(int ifindex, int family, const uint8_t *dst, uint8_t prefixlen, uint32_t table)
{
	NL_BUF(buf);
	struct nlmsghdr *nlh;
	int alen;

	alen = nl_route_check(ifindex, family, dst, prefixlen);
	if (alen < 0)
		return alen;
	nlh = nl_route_msg(buf, RTM_DELROUTE, NLM_F_ACK, ifindex, family, dst, alen, prefixlen, table);
	return nl_talk(nlh, NULL, NULL);
}

/* ---- diagnostics -------------------------------------------------------- */

const char *wg_nl_strerror(int err)
{
	/* strerrordesc_np() returns static strings: no buffer shared
	 * between threads, unlike strerror() for unknown values. */
	const char *s = strerrordesc_np(err < 0 ? -err : err);

	return s ? s : "Unknown error";
}

const char *wg_nl_last_extack(void)
{
	return nl_extack;
}
