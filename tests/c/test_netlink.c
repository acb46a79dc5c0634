/* Tests for csrc/netlink.c against the real kernel.
 *
 * They create and delete links, so they must run as root inside a
 * throwaway network namespace (tests/c/run_netlink_test.sh sets that up);
 * in the root namespace the binary refuses and reports a skip.
 *
 * argv[1] (or $WGO_NLTEST_PEER_NS) names a second namespace under
 * /var/run/netns for the "peer in another namespace" cases.  Without it an
 * anonymous namespace is made by a helper thread, so the binary can also
 * be run by hand with a bare `ip netns exec NS ./test_netlink`.
 *
 * `ip -j` is used only to cross-check results, never to configure.
 */
#include "netlink.h"
#include "testlib.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <linux/if_addr.h>
#include <linux/rtnetlink.h>

#define BAD_IFINDEX 999999

/* ---- helpers ------------------------------------------------------------ */

/* Inode of the initial network namespace on kernels that give init
 * namespaces fixed numbers (include/linux/proc_ns.h, PROC_NET_INIT_INO). */
#define NET_INIT_INO 0xEFFFFFF9U

/* Is @st the namespace of one of the `ip netns add` bind mounts? */
static bool is_named_netns(const struct stat *st)
{
	DIR *d = opendir("/var/run/netns");
	struct dirent *de;
	bool found = false;

	if (!d)
		return false;
	while (!found && (de = readdir(d))) {
		struct stat ns;

		if (de->d_name[0] != '.' && fstatat(dirfd(d), de->d_name, &ns, 0) == 0)
			found = ns.st_dev == st->st_dev && ns.st_ino == st->st_ino;
	}
	closedir(d);
	return found;
}

static bool in_test_netns(void)
{
	char self[PATH_MAX], init[PATH_MAX];
	struct stat st;
	ssize_t a, b;

	if (stat("/proc/self/ns/net", &st) < 0)
		return false;
	a = readlink("/proc/self/ns/net", self, sizeof(self) - 1);
	b = readlink("/proc/1/ns/net", init, sizeof(init) - 1);
	if (a >= 0 && b >= 0) {
		self[a] = init[b] = '\0';
		return strcmp(self, init) != 0;
	}
	/* PID 1 is not inspectable (e.g. in a sandbox): refuse the known
	 * init namespace and otherwise insist on positive evidence, a
	 * namespace made by `ip netns add`. */
	if (st.st_ino == NET_INIT_INO)
		return false;
	return is_named_netns(&st);
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	int n = 0;

	if (!d)
		return -1;
	while ((de = readdir(d)))
		n += de->d_name[0] != '.';
	closedir(d);
	return n;
}

/* Output of a shell command (for verification only); caller frees. */
static char *cmd_out(const char *fmt, ...)
{
	char cmd[512], *out = NULL;
	size_t len = 0, cap = 0;
	va_list ap;
	FILE *f;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	f = popen(cmd, "r");
	if (!f)
		return strdup("");
	for (;;) {
		if (cap - len < 4096) {
			char *p = realloc(out, cap + 65536);

			if (!p)
				break;
			out = p;
			cap += 65536;
		}
		size_t n = fread(out + len, 1, cap - len - 1, f);

		if (!n)
			break;
		len += n;
	}
	pclose(f);
	if (!out)
		return strdup("");
	out[len] = '\0';
	return out;
}

static int count_str(const char *hay, const char *needle)
{
	int n = 0;

	for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

/* Number of occurrences of @needle in the output of a command. */
static int cmd_count(const char *needle, const char *fmt, const char *arg)
{
	char *out = cmd_out(fmt, arg);
	int n = count_str(out, needle);

	free(out);
	return n;
}

/* The JSON object (up to the next '}') containing @needle, as a new
 * string, or NULL.  Good enough for ip -j's flat addr_info entries. */
static char *json_obj_with(const char *json, const char *needle)
{
	const char *p = strstr(json, needle), *b, *e;

	if (!p)
		return NULL;
	for (b = p; b > json && *b != '{'; b--)
		;
	e = strchr(p, '}');
	return e ? strndup(b, (size_t)(e - b + 1)) : NULL;
}

/* Does `ip -j link show dev @dev` list @flag in "flags"? */
static bool link_has_flag(const char *dev, const char *flag)
{
	char *out = cmd_out("ip -j link show dev %s", dev);
	const char *f = strstr(out, "\"flags\":["), *end;
	char want[64];
	bool found = false;

	snprintf(want, sizeof(want), "\"%s\"", flag);
	if (f && (end = strchr(f, ']'))) {
		const char *hit = strstr(f, want);

		found = hit && hit < end;
	}
	free(out);
	return found;
}

struct addr_seen {
	int family;
	uint8_t addr[16];
	uint8_t prefixlen;
	int hits;   /* entries equal to addr/prefixlen */
	int v4, v6; /* entries per family */
	int total;
};

static void addr_seen_cb(void *arg, int family, const uint8_t *addr, uint8_t prefixlen)
{
	struct addr_seen *s = arg;
	int alen = family == AF_INET ? 4 : 16;

	s->total++;
	s->v4 += family == AF_INET;
	s->v6 += family == AF_INET6;
	if (family == s->family && prefixlen == s->prefixlen && !memcmp(addr, s->addr, alen))
		s->hits++;
}

/* How often @txt/@plen shows up in wg_nl_addr_list(@ifindex, @family). */
static int addr_count(int ifindex, int family, const char *txt, uint8_t plen, struct addr_seen *out)
{
	struct addr_seen s = { .prefixlen = plen };
	int ret;

	s.family = strchr(txt, ':') ? AF_INET6 : AF_INET;
	inet_pton(s.family, txt, s.addr);
	ret = wg_nl_addr_list(ifindex, family, addr_seen_cb, &s);
	if (out)
		*out = s;
	return ret < 0 ? ret : s.hits;
}

static void ip4(uint8_t out[4], const char *txt)
{
	if (inet_pton(AF_INET, txt, out) != 1)
		abort();
}

static void ip6(uint8_t out[16], const char *txt)
{
	if (inet_pton(AF_INET6, txt, out) != 1)
		abort();
}

/* Run @fn in a fresh thread that first enters namespace @nsfd, so the
 * wg_nl_* calls it makes act there ("calling thread's namespace"). */
struct ns_job {
	int nsfd;
	void (*fn)(void *arg);
	void *arg;
	int err;
};

static void *ns_thread(void *p)
{
	struct ns_job *job = p;

	if (setns(job->nsfd, CLONE_NEWNET) < 0) {
		job->err = -errno;
		return NULL;
	}
	job->fn(job->arg);
	return NULL;
}

/* Results are returned through @arg and checked by the main thread after
 * the join, so the harness counters are only touched by one thread. */
static int run_in_ns(int nsfd, void (*fn)(void *), void *arg)
{
	struct ns_job job = { .nsfd = nsfd, .fn = fn, .arg = arg };
	pthread_t t;

	if (pthread_create(&t, NULL, ns_thread, &job))
		return -EAGAIN;
	pthread_join(t, NULL);
	return job.err;
}

static void *unshare_thread(void *p)
{
	int *fd = p;

	if (unshare(CLONE_NEWNET) == 0)
		*fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	return NULL;
}

/* An anonymous namespace: it lives as long as the returned fd. */
static int make_anon_netns(void)
{
	pthread_t t;
	int fd = -1;

	if (pthread_create(&t, NULL, unshare_thread, &fd))
		return -1;
	pthread_join(t, NULL);
	return fd;
}

static void del_if_exists(const char *name)
{
	int i = wg_nl_ifindex(name);

	if (i > 0)
		wg_nl_link_delete(i);
}

/* ---- argument and lookup errors ------------------------------------------ */

static int never_called;

static void count_cb(void *arg, int family, const uint8_t *addr, uint8_t prefixlen)
{
	(void)arg, (void)family, (void)addr, (void)prefixlen;
	never_called++;
}

/* What wg_nl_addr_dump_all() said about one address. */
struct info_seen {
	int family;
	uint8_t addr[16];
	int hits, ifindex, scope, total;
	uint32_t flags;
};

static void info_cb(void *arg, const struct wg_nl_addr_info *a)
{
	struct info_seen *s = arg;

	if (!s)
		return;
	s->total++;
	if (a->family == s->family && !memcmp(a->addr, s->addr, a->family == AF_INET ? 4 : 16)) {
		s->hits++;
		s->ifindex = a->ifindex;
		s->scope = a->scope;
		s->flags = a->flags;
	}
}

static int info_count(int family, const char *txt, struct info_seen *out)
{
	int ret;

	memset(out, 0, sizeof(*out));
	out->family = strchr(txt, ':') ? AF_INET6 : AF_INET;
	inet_pton(out->family, txt, out->addr);
	ret = wg_nl_addr_dump_all(family, info_cb, out);
	return ret < 0 ? ret : out->hits;
}

static void test_errors(void)
{
	uint8_t a4[4], a6[16];

	ip4(a4, "10.66.0.1");
	ip6(a6, "fd66::1");

	/* lookups */
	CHECK_EQ(wg_nl_ifindex("lo"), 1); /* always 1 in a netns */
	CHECK_EQ(wg_nl_ifindex("wgo-nosuch"), -ENODEV);
	CHECK_EQ(wg_nl_ifindex(""), -EINVAL);
	CHECK_EQ(wg_nl_ifindex(NULL), -EINVAL);
	CHECK_EQ(wg_nl_ifindex("0123456789abcdef"), -EINVAL); /* 16 > 15 */
	CHECK(wg_nl_ifindex("0123456789abcde") == -ENODEV);   /* 15 is ok */

	/* unknown ifindex: the kernel's -ENODEV passes through */
	CHECK_EQ(wg_nl_link_set_mtu(BAD_IFINDEX, 1400), -ENODEV);
	CHECK_EQ(wg_nl_link_set_up(BAD_IFINDEX, true), -ENODEV);
	CHECK_EQ(wg_nl_link_delete(BAD_IFINDEX), -ENODEV);
	CHECK_EQ(wg_nl_addr_add(BAD_IFINDEX, AF_INET, a4, 24), -ENODEV);
	CHECK_EQ(wg_nl_addr_add(BAD_IFINDEX, AF_INET6, a6, 64), -ENODEV);
	CHECK_EQ(wg_nl_addr_del(BAD_IFINDEX, AF_INET, a4, 24), -ENODEV);
	CHECK_EQ(wg_nl_addr_del(BAD_IFINDEX, AF_INET6, a6, 64), -ENODEV);
	CHECK_EQ(wg_nl_route_add(BAD_IFINDEX, AF_INET, a4, 24, 0), -ENODEV);
	CHECK_EQ(wg_nl_route_add(BAD_IFINDEX, AF_INET6, a6, 64, 0), -ENODEV);
	/* a route through a missing link is simply not there */
	CHECK_EQ(wg_nl_route_del(BAD_IFINDEX, AF_INET, a4, 24, 0), -ESRCH);
	never_called = 0;
	CHECK_EQ(wg_nl_addr_list(BAD_IFINDEX, AF_UNSPEC, count_cb, NULL), -ENODEV);
	CHECK_EQ(wg_nl_addr_list(BAD_IFINDEX, AF_INET6, count_cb, NULL), -ENODEV);
	CHECK_EQ(never_called, 0);
	CHECK_EQ(wg_nl_link_set_mtu(0, 1400), -ENODEV);
	CHECK_EQ(wg_nl_link_set_up(-1, true), -ENODEV);
	CHECK_EQ(wg_nl_addr_add(0, AF_INET, a4, 24), -ENODEV);
	CHECK_EQ(wg_nl_addr_list(0, AF_INET, count_cb, NULL), -ENODEV);

	/* bad prefix lengths, families, pointers (lo exists: ifindex 1) */
	CHECK_EQ(wg_nl_addr_add(1, AF_INET, a4, 33), -EINVAL);
	CHECK_EQ(wg_nl_addr_add(1, AF_INET6, a6, 129), -EINVAL);
	CHECK_EQ(wg_nl_addr_del(1, AF_INET, a4, 33), -EINVAL);
	CHECK_EQ(wg_nl_route_add(1, AF_INET, a4, 33, 0), -EINVAL);
	CHECK_EQ(wg_nl_route_add(1, AF_INET6, a6, 200, 0), -EINVAL);
	CHECK_EQ(wg_nl_route_del(1, AF_INET6, a6, 129, 0), -EINVAL);
	CHECK_EQ(wg_nl_addr_add(1, AF_INET, NULL, 24), -EINVAL);
	CHECK_EQ(wg_nl_route_add(1, AF_INET, NULL, 8, 0), -EINVAL);
	CHECK_EQ(wg_nl_addr_add(1, AF_PACKET, a4, 24), -EAFNOSUPPORT);
	CHECK_EQ(wg_nl_route_add(1, AF_UNSPEC, a4, 24, 0), -EAFNOSUPPORT);
	CHECK_EQ(wg_nl_addr_list(1, AF_PACKET, count_cb, NULL), -EAFNOSUPPORT);
	CHECK_EQ(wg_nl_addr_list(1, AF_INET, NULL, NULL), -EINVAL);
	CHECK_EQ(wg_nl_addr_dump_all(AF_PACKET, info_cb, NULL), -EAFNOSUPPORT);
	CHECK_EQ(wg_nl_addr_dump_all(AF_INET, NULL, NULL), -EINVAL);
	CHECK_EQ(wg_nl_veth_create("", "wgo-e1", -1), -EINVAL);
	CHECK_EQ(wg_nl_veth_create("wgo-e0", "0123456789abcdef", -1), -EINVAL);
	CHECK_EQ(wg_nl_ifindex("wgo-e0"), -ENODEV);

	CHECK(strcmp(wg_nl_strerror(-ENODEV), strerror(ENODEV)) == 0);
	CHECK(wg_nl_strerror(-123456) != NULL);
}

/* ---- one veth pair, both ends here --------------------------------------- */

static void test_local_veth(void)
{
	uint8_t a4[4], a4b[4], a6[16], r4[4], r4t[4], r6[16], r6t[16];
	struct addr_seen s;
	int i0, i1, fd;
	char *out;

	ip4(a4, "10.77.0.1");
	ip4(a4b, "10.77.0.2");
	ip6(a6, "fd77::1");
	ip4(r4, "10.78.1.2"); /* host bits set: stored as 10.78.0.0/16 */
	ip4(r4t, "10.79.0.0");
	ip6(r6, "fd78::1"); /* stored as fd78::/48 */
	ip6(r6t, "fd79::");

	CHECK_EQ(wg_nl_veth_create("wgo-t0", "wgo-t1", -1), 0);
	CHECK_EQ(wg_nl_veth_create("wgo-t0", "wgo-t9", -1), -EEXIST);
	CHECK_EQ(wg_nl_veth_create("wgo-t8", "wgo-t1", -1), -EEXIST);
	CHECK_EQ(wg_nl_ifindex("wgo-t8"), -ENODEV); /* nothing half-made */
	CHECK_EQ(wg_nl_ifindex("wgo-t9"), -ENODEV);
	i0 = wg_nl_ifindex("wgo-t0");
	i1 = wg_nl_ifindex("wgo-t1");
	CHECK(i0 > 1);
	CHECK(i1 > 1);
	CHECK(i0 != i1);

	/* MTU */
	CHECK_EQ(wg_nl_link_set_mtu(i0, 1420), 0);
	CHECK_EQ(wg_nl_link_set_mtu(i0, 1420), 0);
	CHECK_EQ(cmd_count("\"mtu\":1420", "ip -j link show dev %s", "wgo-t0"), 1);
	CHECK_EQ(wg_nl_link_set_mtu(i0, 10), -EINVAL); /* < 68 */
	CHECK(wg_nl_last_extack()[0] != '\0');         /* kernel says why */
	CHECK_EQ(wg_nl_link_set_mtu(i0, 1420), 0);
	CHECK(wg_nl_last_extack()[0] == '\0');

	/* up / down */
	CHECK(!link_has_flag("wgo-t0", "UP"));
	CHECK_EQ(wg_nl_link_set_up(i0, true), 0);
	CHECK_EQ(wg_nl_link_set_up(i0, true), 0);
	CHECK_EQ(wg_nl_link_set_up(i1, true), 0);
	CHECK(link_has_flag("wgo-t0", "UP"));
	CHECK(link_has_flag("wgo-t0", "LOWER_UP")); /* peer is up too */
	CHECK_EQ(wg_nl_link_set_up(i1, false), 0);
	CHECK(!link_has_flag("wgo-t1", "UP"));
	CHECK(link_has_flag("wgo-t1", "MULTICAST")); /* other flags kept */
	CHECK_EQ(wg_nl_link_set_up(i1, true), 0);
	CHECK(link_has_flag("wgo-t1", "UP"));

	/* addresses, each added twice */
	CHECK_EQ(wg_nl_addr_add(i0, AF_INET, a4, 24), 0);
	CHECK_EQ(wg_nl_addr_add(i0, AF_INET, a4, 24), 0);
	CHECK_EQ(wg_nl_addr_add(i0, AF_INET, a4b, 24), 0);
	CHECK_EQ(wg_nl_addr_add(i0, AF_INET6, a6, 64), 0);
	CHECK_EQ(wg_nl_addr_add(i0, AF_INET6, a6, 64), 0);

	CHECK_EQ(addr_count(i0, AF_UNSPEC, "10.77.0.1", 24, &s), 1);
	CHECK_EQ(s.v4, 2);
	CHECK(s.v6 >= 1); /* fd77::1 plus the kernel's fe80:: */
	CHECK_EQ(addr_count(i0, AF_UNSPEC, "10.77.0.2", 24, NULL), 1);
	CHECK_EQ(addr_count(i0, AF_UNSPEC, "fd77::1", 64, NULL), 1);
	CHECK_EQ(addr_count(i0, AF_INET, "10.77.0.1", 24, &s), 1);
	CHECK_EQ(s.v6, 0);

	/* every link's addresses, with link, scope and flags */
	{
		struct info_seen in;
		uint8_t o6[16];

		CHECK_EQ(info_count(AF_UNSPEC, "fd77::1", &in), 1);
		CHECK_EQ(in.ifindex, i0);
		CHECK_EQ(in.scope, RT_SCOPE_UNIVERSE);
		CHECK(in.flags & IFA_F_PERMANENT);
		CHECK_EQ(info_count(AF_INET, "10.77.0.2", &in), 1);
		CHECK_EQ(in.ifindex, i0);
		ip6(o6, "fd77::2"); /* on another link */
		CHECK_EQ(wg_nl_addr_add(i1, AF_INET6, o6, 64), 0);
		CHECK_EQ(info_count(AF_INET6, "fd77::2", &in), 1);
		CHECK_EQ(in.ifindex, i1);
		CHECK_EQ(wg_nl_addr_del(i1, AF_INET6, o6, 64), 0);
		CHECK_EQ(info_count(AF_INET6, "fd77::2", &in), 0);
		CHECK_EQ(info_count(AF_INET6, "10.77.0.2", &in), 0);
		CHECK(in.total >= 2); /* fd77::1, fe80:: */
	}
	CHECK_EQ(addr_count(i0, AF_INET6, "fd77::1", 64, &s), 1);
	CHECK_EQ(s.v4, 0);
	CHECK_EQ(addr_count(i1, AF_UNSPEC, "10.77.0.1", 24, &s), 0);
	CHECK_EQ(s.v4, 0); /* other link's addresses are not listed */

	out = cmd_out("ip -j addr show dev %s", "wgo-t0");
	CHECK_EQ(count_str(out, "\"local\":\"10.77.0.1\",\"prefixlen\":24"), 1);
	CHECK_EQ(count_str(out, "\"local\":\"fd77::1\",\"prefixlen\":64"), 1);
	{
		/* (the kernel's own fe80:: address may well be tentative) */
		char *obj = json_obj_with(out, "\"local\":\"fd77::1\"");

		CHECK(obj != NULL);
		CHECK(obj && strstr(obj, "\"nodad\":true"));
		CHECK(obj && !strstr(obj, "tentative"));
		free(obj);
	}
	free(out);
	/* NODAD: the address can be bound to immediately */
	fd = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd >= 0) {
		struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6 };

		memcpy(&sin6.sin6_addr, a6, 16);
		CHECK_EQ(bind(fd, (struct sockaddr *)&sin6, sizeof(sin6)), 0);
		close(fd);
	} else {
		CHECK(fd >= 0);
	}

	/* routes, each added twice */
	CHECK_EQ(wg_nl_route_add(i0, AF_INET, r4, 16, 0), 0);
	CHECK_EQ(wg_nl_route_add(i0, AF_INET, r4, 16, 0), 0);
	CHECK_EQ(wg_nl_route_add(i0, AF_INET6, r6, 48, 0), 0);
	CHECK_EQ(wg_nl_route_add(i0, AF_INET6, r6, 48, 0), 0);
	CHECK_EQ(wg_nl_route_add(i0, AF_INET, r4t, 24, 100), 0);
	CHECK_EQ(wg_nl_route_add(i0, AF_INET, r4t, 24, 100), 0);
	CHECK_EQ(wg_nl_route_add(i0, AF_INET6, r6t, 64, 1000), 0);
	CHECK_EQ(wg_nl_route_add(i0, AF_INET6, r6t, 64, 1000), 0);
	CHECK_EQ(wg_nl_route_add(i0, AF_INET, NULL, 0, 200), 0);
	CHECK_EQ(wg_nl_route_add(i0, AF_INET, NULL, 0, 200), 0);

	out = cmd_out("ip -j route show dev %s", "wgo-t0");
	CHECK_EQ(count_str(out, "{\"dst\":\"10.78.0.0/16\",\"protocol\":"
				"\"static\",\"scope\":\"link\""),
		 1);
	CHECK_EQ(count_str(out, "10.78."), 1);
	free(out);
	CHECK_EQ(cmd_count("{\"dst\":\"fd78::/48\",\"protocol\":\"static\"", "ip -j -6 route show dev %s", "wgo-t0"),
		 1);
	CHECK_EQ(cmd_count("\"dst\":\"10.79.0.0/24\"", "ip -j route show table 100 dev %s", "wgo-t0"), 1);
	CHECK_EQ(cmd_count("\"dst\":\"fd79::/64\"", "ip -j -6 route show table 1000 dev %s", "wgo-t0"), 1);
	CHECK_EQ(cmd_count("\"dst\":\"default\"", "ip -j route show table 200 dev %s", "wgo-t0"), 1);
	/* not leaked into main */
	CHECK_EQ(cmd_count("10.79.", "ip -j route show dev %s", "wgo-t0"), 0);

	/* REPLACE semantics: the same prefix via another link moves it */
	CHECK_EQ(wg_nl_route_add(i1, AF_INET, r4, 16, 0), 0);
	CHECK_EQ(cmd_count("10.78.0.0/16", "ip -j route show dev %s", "wgo-t0"), 0);
	CHECK_EQ(cmd_count("10.78.0.0/16", "ip -j route show dev %s", "wgo-t1"), 1);
	CHECK_EQ(wg_nl_route_add(i1, AF_INET6, r6, 48, 0), 0);
	CHECK_EQ(cmd_count("fd78::/48", "ip -j -6 route show dev %s", "wgo-t0"), 0);
	CHECK_EQ(cmd_count("fd78::/48", "ip -j -6 route show dev %s", "wgo-t1"), 1);
	CHECK_EQ(wg_nl_route_del(i0, AF_INET, r4, 16, 0), -ESRCH);
	CHECK_EQ(wg_nl_route_add(i0, AF_INET, r4, 16, 0), 0);
	CHECK_EQ(wg_nl_route_add(i0, AF_INET6, r6, 48, 0), 0);
	CHECK_EQ(cmd_count("10.78.0.0/16", "ip -j route show dev %s", "wgo-t0"), 1);
	CHECK_EQ(cmd_count("fd78::/48", "ip -j -6 route show dev %s", "wgo-t0"), 1);

	/* route deletion */
	CHECK_EQ(wg_nl_route_del(i0, AF_INET, r4, 16, 0), 0);
	CHECK_EQ(wg_nl_route_del(i0, AF_INET, r4, 16, 0), -ESRCH);
	CHECK_EQ(wg_nl_route_del(i0, AF_INET6, r6, 48, 0), 0);
	CHECK_EQ(wg_nl_route_del(i0, AF_INET6, r6, 48, 0), -ESRCH);
	CHECK_EQ(wg_nl_route_del(i0, AF_INET, r4t, 24, 0), -ESRCH); /* main */
	CHECK_EQ(wg_nl_route_del(i0, AF_INET, r4t, 24, 100), 0);
	CHECK_EQ(wg_nl_route_del(i0, AF_INET6, r6t, 64, 1000), 0);
	CHECK_EQ(wg_nl_route_del(i0, AF_INET, NULL, 0, 200), 0);
	CHECK_EQ(cmd_count("10.78.", "ip -j route show dev %s", "wgo-t0"), 0);
	CHECK_EQ(cmd_count("fd78:", "ip -j -6 route show dev %s", "wgo-t0"), 0);
	CHECK_EQ(cmd_count("\"dst\"", "ip -j route show table 100 dev %s", "wgo-t0"), 0);

	/* address deletion */
	CHECK_EQ(wg_nl_addr_del(i0, AF_INET, a4b, 25), -EADDRNOTAVAIL);
	CHECK_EQ(wg_nl_addr_del(i0, AF_INET, a4b, 24), 0);
	CHECK_EQ(wg_nl_addr_del(i0, AF_INET, a4, 24), 0);
	CHECK_EQ(wg_nl_addr_del(i0, AF_INET, a4, 24), -EADDRNOTAVAIL);
	CHECK_EQ(wg_nl_addr_del(i0, AF_INET6, a6, 64), 0);
	CHECK_EQ(wg_nl_addr_del(i0, AF_INET6, a6, 64), -EADDRNOTAVAIL);
	CHECK_EQ(addr_count(i0, AF_UNSPEC, "fd77::1", 64, &s), 0);
	CHECK_EQ(s.v4, 0);
	out = cmd_out("ip -j addr show dev %s", "wgo-t0");
	CHECK_EQ(count_str(out, "10.77.0."), 0);
	CHECK_EQ(count_str(out, "fd77::"), 0);
	free(out);

	/* deleting one end removes the pair */
	CHECK_EQ(wg_nl_link_delete(i0), 0);
	CHECK_EQ(wg_nl_ifindex("wgo-t0"), -ENODEV);
	CHECK_EQ(wg_nl_ifindex("wgo-t1"), -ENODEV);
	CHECK_EQ(wg_nl_link_delete(i0), -ENODEV);
	CHECK_EQ(wg_nl_link_delete(i1), -ENODEV);
}

/* ---- dumps larger than one receive buffer --------------------------------- */

#define MANY4 600
#define MANY6 300

static void test_many_addrs(void)
{
	struct addr_seen s;
	int i, bad = 0;
	int ifx;

	CHECK_EQ(wg_nl_veth_create("wgo-s0", "wgo-s1", -1), 0);
	ifx = wg_nl_ifindex("wgo-s0");
	CHECK(ifx > 0);
	for (i = 0; i < MANY4; i++) {
		uint8_t a[4] = { 10, 90, (uint8_t)(i >> 8), (uint8_t)i };

		bad += wg_nl_addr_add(ifx, AF_INET, a, 32) != 0;
	}
	for (i = 0; i < MANY6; i++) {
		uint8_t a[16] = { 0xfd, 0x90 };

		a[14] = (uint8_t)(i >> 8);
		a[15] = (uint8_t)i;
		bad += wg_nl_addr_add(ifx, AF_INET6, a, 128) != 0;
	}
	CHECK_EQ(bad, 0);
	CHECK_EQ(addr_count(ifx, AF_UNSPEC, "10.90.2.87", 32, &s), 1);
	CHECK_EQ(s.v4, MANY4);
	CHECK_EQ(s.v6, MANY6); /* link is down: no fe80:: */
	CHECK_EQ(addr_count(ifx, AF_INET6, "fd90::12b", 128, &s), 1);
	CHECK_EQ(s.total, MANY6);
	CHECK_EQ(cmd_count("\"local\":\"10.90.", "ip -j -4 addr show dev %s", "wgo-s0"), MANY4);
	CHECK_EQ(wg_nl_link_delete(ifx), 0);
}

/* ---- concurrent callers ---------------------------------------------------- */

#define THREADS 4
#define ROUNDS 40

struct worker {
	pthread_t t;
	int id, ifindex;
	int failures, listed_wrong, dump_intr;
};

static void *worker_main(void *p)
{
	struct worker *w = p;

	for (int r = 0; r < ROUNDS; r++) {
		uint8_t a[4] = { 10, 91, (uint8_t)w->id, (uint8_t)(r + 1) };
		char txt[INET_ADDRSTRLEN];
		struct addr_seen s;
		int n;

		inet_ntop(AF_INET, a, txt, sizeof(txt));
		w->failures += wg_nl_addr_add(w->ifindex, AF_INET, a, 32) != 0;
		/* Our own address must be there exactly once, and the 50
		 * static ones (added before the threads started) all of
		 * them: a snapshot never misses entries. */
		n = addr_count(w->ifindex, AF_INET, txt, 32, &s);
		if (n == -EINTR)
			w->dump_intr++;
		else if (n != 1 || s.v4 < 51)
			w->listed_wrong++;
		w->failures += wg_nl_addr_del(w->ifindex, AF_INET, a, 32) != 0;
	}
	return NULL;
}

static void test_threads(void)
{
	struct worker w[THREADS];
	int ifx, bad = 0, wrong = 0, intr = 0, started = 0;

	CHECK_EQ(wg_nl_veth_create("wgo-c0", "wgo-c1", -1), 0);
	ifx = wg_nl_ifindex("wgo-c0");
	CHECK(ifx > 0);
	for (int i = 0; i < 50; i++) {
		uint8_t a[4] = { 10, 92, 0, (uint8_t)i };

		bad += wg_nl_addr_add(ifx, AF_INET, a, 32) != 0;
	}
	CHECK_EQ(bad, 0);
	for (int i = 0; i < THREADS; i++) {
		w[i] = (struct worker){ .id = i, .ifindex = ifx };
		if (pthread_create(&w[i].t, NULL, worker_main, &w[i]) == 0)
			started++;
		else
			break;
	}
	CHECK_EQ(started, THREADS);
	for (int i = 0; i < started; i++) {
		pthread_join(w[i].t, NULL);
		bad += w[i].failures;
		wrong += w[i].listed_wrong;
		intr += w[i].dump_intr;
	}
	CHECK_EQ(bad, 0);
	CHECK_EQ(wrong, 0);
	if (intr)
		fprintf(stderr, "note: %d dumps gave up after retries\n", intr);
	CHECK_EQ(cmd_count("\"local\":\"10.91.", "ip -j addr show dev %s", "wgo-c0"), 0);
	CHECK_EQ(cmd_count("\"local\":\"10.92.", "ip -j addr show dev %s", "wgo-c0"), 50);
	CHECK_EQ(wg_nl_link_delete(ifx), 0);
}

/* ---- a peer in another namespace ----------------------------------------- */

struct peer_probe {
	const char *name;
	int ifindex;    /* wg_nl_ifindex(name) there */
	bool configure; /* also set MTU/up/address/route */
	int mtu, up, add1, add2, listed, route;
};

static void peer_probe_fn(void *arg)
{
	struct peer_probe *p = arg;
	uint8_t a[4], r[4];

	p->ifindex = wg_nl_ifindex(p->name);
	if (p->ifindex > 0 && p->configure) {
		ip4(a, "10.88.0.2");
		ip4(r, "10.89.0.0");
		p->mtu = wg_nl_link_set_mtu(p->ifindex, 1380);
		p->up = wg_nl_link_set_up(p->ifindex, true);
		p->add1 = wg_nl_addr_add(p->ifindex, AF_INET, a, 24);
		p->add2 = wg_nl_addr_add(p->ifindex, AF_INET, a, 24);
		p->listed = addr_count(p->ifindex, AF_INET, "10.88.0.2", 24, NULL);
		p->route = wg_nl_route_add(p->ifindex, AF_INET, r, 16, 0);
	}
}

static int peer_ifindex(int nsfd, const char *name)
{
	struct peer_probe p = { .name = name };
	int err = run_in_ns(nsfd, peer_probe_fn, &p);

	return err ? err : p.ifindex;
}

static void test_peer_netns(const char *peer_ns)
{
	struct peer_probe p = { .name = "wgo-x1", .configure = true };
	int nsfd, x0, fds;
	char path[256];

	fds = count_fds();
	if (peer_ns) {
		snprintf(path, sizeof(path), "/var/run/netns/%s", peer_ns);
		nsfd = open(path, O_RDONLY | O_CLOEXEC);
	} else {
		nsfd = make_anon_netns();
	}
	CHECK(nsfd >= 0);
	if (nsfd < 0) {
		fprintf(stderr, "cannot open peer namespace %s: %s\n", peer_ns ? path : "(anonymous)", strerror(errno));
		return;
	}

	CHECK_EQ(wg_nl_veth_create("wgo-x0", "wgo-x1", nsfd), 0);
	x0 = wg_nl_ifindex("wgo-x0");
	CHECK(x0 > 0);
	CHECK_EQ(wg_nl_ifindex("wgo-x1"), -ENODEV); /* it is over there */
	CHECK_EQ(run_in_ns(nsfd, peer_probe_fn, &p), 0);
	CHECK(p.ifindex > 0);
	CHECK_EQ(p.mtu, 0);
	CHECK_EQ(p.up, 0);
	CHECK_EQ(p.add1, 0);
	CHECK_EQ(p.add2, 0);
	CHECK_EQ(p.listed, 1);
	CHECK_EQ(p.route, 0);
	CHECK_EQ(addr_count(x0, AF_INET, "10.88.0.2", 24, NULL), 0);
	CHECK_EQ(cmd_count("10.89.0.0/16", "ip -j route show%s", ""), 0);
	if (peer_ns) {
		CHECK_EQ(cmd_count("\"local\":\"10.88.0.2\"", "ip -n %s -j addr show dev wgo-x1", peer_ns), 1);
		CHECK_EQ(cmd_count("\"mtu\":1380", "ip -n %s -j link show dev wgo-x1", peer_ns), 1);
	}

	/* name clashes on either side: -EEXIST, nothing left behind */
	CHECK_EQ(wg_nl_veth_create("wgo-x2", "wgo-x1", nsfd), -EEXIST);
	CHECK_EQ(wg_nl_ifindex("wgo-x2"), -ENODEV);
	CHECK_EQ(wg_nl_veth_create("wgo-x0", "wgo-x3", nsfd), -EEXIST);
	CHECK_EQ(peer_ifindex(nsfd, "wgo-x3"), -ENODEV);

	/* deleting our end removes the far end too */
	CHECK_EQ(wg_nl_link_delete(x0), 0);
	CHECK_EQ(peer_ifindex(nsfd, "wgo-x1"), -ENODEV);

	close(nsfd);
	CHECK_EQ(count_fds(), fds);
}

int main(int argc, char **argv)
{
	static const char *const stale[] = {
		"wgo-t0", "wgo-t1", "wgo-t1r", "wgo-s0", "wgo-c0", "wgo-x0", "wgo-m0", "wgo-m1", "wgo-e0",
	};
	const char *peer_ns = argc > 1 ? argv[1] : getenv("WGO_NLTEST_PEER_NS");
	int fds;

	/* Safety: this test creates and deletes links and routes. */
	if (geteuid() != 0 || !in_test_netns()) {
		printf("netlink: 0 passed, 0 failed (skipped: %s)\n",
		       geteuid() ? "not root" : "not in a test namespace");
		return 0;
	}
	if (peer_ns && !*peer_ns)
		peer_ns = NULL;
	/* leftovers of an earlier run in the same namespace */
	for (size_t i = 0; i < sizeof(stale) / sizeof(stale[0]); i++)
		del_if_exists(stale[i]);

	fds = count_fds();
	test_errors();
	test_local_veth();
	test_many_addrs();
	test_threads();
	test_peer_netns(peer_ns);
	CHECK_EQ(count_fds(), fds); /* no socket leaked on any path */
	return tl_finish("netlink");
}
