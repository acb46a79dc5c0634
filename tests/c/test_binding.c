/* The Lua binding (csrc/lua_*.c) on its error paths, driven through a
 * lua_State of our own whose allocator can be told to fail from the Nth
 * allocation on:
 *
 *  - dev:status() raising a memory error at every allocation in turn never
 *    leaves the configuration mutex or the protocol lock held (checked with
 *    trylock), and status() and apply() work again right after, with the
 *    same result as before;
 *  - dev:apply() raising after it decoded a private or preshared key (a bad
 *    later argument, or a memory error at every allocation in turn) leaves
 *    no copy of those keys behind: no block freed by Lua still holds one
 *    (checked by the allocator on every free), and the process's writable
 *    memory (heap, stacks, data; read through /proc/self/mem) holds none;
 *  - key_from_base64, key_to_base64, x25519 and aead_open under memory
 *    errors free no Lua block that still holds their secret result.
 *
 *  - core.uapi_status (against a fake engine, a child process serving a
 *    canned get reply) under memory errors leaves no copy of the reply's
 *    hex keys in our memory.
 *
 * The device needs a TUN: the binary moves into a network namespace of its
 * own (unshare, root only; it goes away with the process).  Without root
 * the device parts are skipped.  A deadlock ends the test through alarm().
 * TEST_BINDING_VERBOSE=1 prints the status text and where a key copy lies. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#endif
#endif
#ifndef VALGRIND_MAKE_MEM_DEFINED
#define VALGRIND_MAKE_MEM_DEFINED(p, n) ((void)(p), (void)(n))
#endif

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <sodium.h>

#include "device.h"
#include "testlib.h"
#include "uapi.h"

int luaopen_wgoverlay_core(lua_State *L);

/* ---- watched secrets: kept only XOR-masked, so that our own copy never
 * matches a scan ---- */

#define MASK 0x5a
#define MAX_WATCH 4

static uint8_t watched[MAX_WATCH][32];
static int n_watched;

static void watch_clear(void)
{
	sodium_memzero(watched, sizeof(watched));
	n_watched = 0;
}

/* Adds a secret to watch; wipes the caller's plain copy. */
static void watch_add(uint8_t secret[32])
{
	if (n_watched == MAX_WATCH)
		abort();
	for (int i = 0; i < 32; i++)
		watched[n_watched][i] = secret[i] ^ MASK;
	n_watched++;
	sodium_memzero(secret, 32);
}

static int count_watched(const uint8_t *p, size_t len, size_t starts)
{
	int found = 0;

	if (len < 32)
		return 0;
	if (starts > len - 31)
		starts = len - 31;
	for (int w = 0; w < n_watched; w++) {
		const uint8_t first = watched[w][0] ^ MASK;
		const uint8_t *q = p;

		while ((q = memchr(q, first, starts - (size_t)(q - p)))) {
			int j = 1;

			while (j < 32 && (q[j] ^ MASK) == watched[w][j])
				j++;
			if (j == 32)
				found++;
			q++;
		}
	}
	return found;
}

/* ---- the allocator ---- */

static long alloc_count, fail_from = -1;
static bool alloc_failed;
static bool watch_frees = true;
static int freed_with_secret;

/* A Lua string is never wiped (by design: a key handed to Lua is a
 * string).  Lua 5.4's TString on LP64: next pointer, type tag (8), marked,
 * extra, short length (11), hash, long length (16), contents (24) and a
 * NUL.  Other blocks holding a secret must have been wiped. */
static bool is_lua_string(const uint8_t *block, size_t size)
{
	size_t lnglen;

	if (sizeof(void *) != 8 || size < 25)
		return false;
	if (block[8] == 4) /* LUA_VSHRSTR */
		return size == 24 + (size_t)block[11] + 1;
	memcpy(&lnglen, block + 16, sizeof(lnglen));
	return block[8] == 0x14 && size == 24 + lnglen + 1; /* LUA_VLNGSTR */
}

/* Blocks are read through a scratch copy marked defined for valgrind
 * (Lua leaves parts of its blocks uninitialised), wiped after use. */
#define CHECK_CHUNK 65536
static uint8_t check_scratch[CHECK_CHUNK + 31];

static void check_block(void *ptr, size_t size)
{
	const uint8_t *b = ptr;
	bool string = false;
	int found = 0;

	if (!watch_frees || !ptr || !n_watched)
		return;
	for (size_t off = 0; off < size; off += CHECK_CHUNK) {
		size_t n = size - off < CHECK_CHUNK + 31 ? size - off : CHECK_CHUNK + 31;

		memcpy(check_scratch, b + off, n);
		VALGRIND_MAKE_MEM_DEFINED(check_scratch, n);
		if (off == 0 && is_lua_string(check_scratch, size))
			string = true;
		else if (!string)
			found += count_watched(check_scratch, n, CHECK_CHUNK);
		sodium_memzero(check_scratch, n);
	}
	if (found)
		freed_with_secret++;
}

static void *test_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	(void)ud;
	if (nsize == 0) {
		check_block(ptr, osize);
		free(ptr);
		return NULL;
	}
	if (fail_from >= 0 && alloc_count++ >= fail_from) {
		alloc_failed = true;
		return NULL;
	}
	if (ptr)
		check_block(ptr, osize); /* realloc may leave the old block behind */
	return realloc(ptr, nsize);
}

/* Every allocation from the nth (0-based) of the next call on fails. */
static void fail_arm(long n)
{
	alloc_count = 0;
	alloc_failed = false;
	fail_from = n;
}

static void fail_disarm(void)
{
	fail_from = -1;
}

/* ---- the process's writable memory ---- */

#define SCAN_CHUNK (1u << 20)
#define SCAN_MAX_REGION (1ul << 30) /* skips ASan's shadow reservations */

static uint8_t *scan_buf;

static unsigned long parse_hex(const char **p)
{
	unsigned long v = 0;

	for (;; (*p)++) {
		char c = **p;

		if (c >= '0' && c <= '9')
			v = v << 4 | (unsigned long)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v = v << 4 | (unsigned long)(c - 'a' + 10);
		else
			return v;
	}
}

/* Raw copies of the watched secrets in every readable and writable mapping
 * (the scan buffer aside, wiped after each chunk).  Deliberately shallow on
 * the stack (no stdio): a stale copy in an abandoned stack frame below us
 * must survive until it is read. */
static int scan_self(size_t *scanned)
{
	static char maps[1 << 20];
	ssize_t len = 0, r;
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	int mem = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
	int found = 0;

	*scanned = 0;
	while (fd >= 0 && (r = read(fd, maps + len, sizeof(maps) - 1 - (size_t)len)) > 0)
		len += r;
	if (fd >= 0)
		close(fd);
	if (fd < 0 || mem < 0 || len == 0 || len == (ssize_t)sizeof(maps) - 1) {
		if (mem >= 0)
			close(mem);
		return -1000;
	}
	maps[len] = '\0';
	for (const char *line = maps; *line;) {
		const char *p = line, *eol = strchr(line, '\n');
		unsigned long lo, hi;
		bool rw;

		lo = parse_hex(&p);
		p++;
		hi = parse_hex(&p);
		p++;
		rw = p[0] == 'r' && p[1] == 'w';
		line = eol ? eol + 1 : p + strlen(p);
		if (!rw || hi <= lo || hi - lo > SCAN_MAX_REGION || lo == (unsigned long)(uintptr_t)scan_buf)
			continue;
		if (memmem(p, eol ? (size_t)(eol - p) : strlen(p), "[vvar", 5))
			continue;
		for (unsigned long off = lo; off < hi; off += SCAN_CHUNK) {
			size_t want = hi - off < SCAN_CHUNK + 31 ? hi - off : SCAN_CHUNK + 31;

			r = pread(mem, scan_buf, want, (off_t)off);
			if (r <= 0)
				continue;
			if (count_watched(scan_buf, (size_t)r, SCAN_CHUNK)) {
				found += count_watched(scan_buf, (size_t)r, SCAN_CHUNK);
				if (getenv("TEST_BINDING_VERBOSE"))
					for (int w = 0; w < n_watched; w++)
						for (size_t i = 0; i + 32 <= (size_t)r && i < SCAN_CHUNK; i++)
							if (count_watched(scan_buf + i, 32, 1) &&
							    (scan_buf[i] ^ MASK) == watched[w][0] &&
							    (scan_buf[i + 31] ^ MASK) == watched[w][31])
								fprintf(stderr, "found key %d at %#lx in %.*s\n", w,
									off + i, (int)(eol ? eol - p : 40), p);
			}
			*scanned += (size_t)r < SCAN_CHUNK ? (size_t)r : SCAN_CHUNK;
			sodium_memzero(scan_buf, (size_t)r);
		}
	}
	close(mem);
	return found;
}

/* ---- Lua helpers ---- */

static const char helpers_lua[] =
	"local core = ...\n"
	/* Lua 5.4.4 registers the metatable of luaL_Buffer's boxes before it
	 * sets its __close: a memory error in between leaves every later box
	 * (table.concat, string.rep...) \"non-closable\".  Make it now. */
	"local _ = table.concat({ ('x'):rep(5000), ('y'):rep(5000) })\n"
	"local M = {}\n"
	"local function ser(v)\n"
	"  if type(v) ~= 'table' then return type(v) .. ':' .. tostring(v) end\n"
	"  local keys = {}\n"
	"  for k in pairs(v) do keys[#keys + 1] = k end\n"
	"  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)\n"
	"  local out = {}\n"
	"  for _, k in ipairs(keys) do out[#out + 1] = tostring(k) .. '=' .. ser(v[k]) end\n"
	"  return '{' .. table.concat(out, ',') .. '}'\n"
	"end\n"
	/* status without the counters (they may move between calls) */
	"function M.status_text(dev)\n"
	"  local s = assert(dev:status())\n"
	"  s.stats = nil\n"
	"  return ser(s)\n"
	"end\n"
	"function M.status(dev) return dev:status() end\n"
	"function M.apply(dev, t) return dev:apply(t) end\n"
	"function M.open(name) return core.open(name, { uapi = false }) end\n"
	"function M.peers(n)\n"
	"  local peers = {}\n"
	"  for i = 1, n do\n"
	"    local _, pub = core.generate_keys()\n"
	"    local p = { public_key = pub, allowed_ips = { ('10.9.%d.0/24'):format(i), ('fd09::%x/128'):format(i),\n"
	"      ('10.8.%d.1'):format(i) } }\n"
	"    if i % 2 == 1 then p.endpoint = ('192.0.2.%d:%d'):format(i, 51000 + i) end\n"
	"    if i == 2 then p.endpoint = '[2001:db8::2]:51820' end\n"
	"    if i == 4 then p.persistent_keepalive = 25 end\n"
	"    if i == 3 then p.preshared_key = core.generate_psk() end\n"
	"    peers[i] = p\n"
	"  end\n"
	"  return peers\n"
	"end\n"
	/* apply calls that raise after the keys were decoded */
	"function M.bad_port(dev, k) return dev:apply{ private_key = k, listen_port = 'x' } end\n"
	"function M.bad_endpoint(dev, k, psk, pub)\n"
	"  return dev:apply{ private_key = k, peers = { { public_key = pub, preshared_key = psk,\n"
	"    allowed_ips = { '10.7.0.0/16' }, endpoint = true } } }\n"
	"end\n"
	"function M.bad_cidr(dev, k, psk, pub)\n"
	"  return dev:apply{ private_key = k, peers = { { public_key = pub, preshared_key = psk,\n"
	"    allowed_ips = { '10.7.0.0/16', '10.6.0.0/16', 'fd07::/64', '10.5.0.0/16', '10.4.0.0/16', {} } } } }\n"
	"end\n"
	"function M.bad_peer(dev, k, psk, pub)\n"
	"  return dev:apply{ private_key = k, peers = { { public_key = pub, preshared_key = psk,\n"
	"    allowed_ips = { '10.7.0.0/16' }, endpoint = '192.0.2.77:1' }, 42 } }\n"
	"end\n"
	"function M.call(f, ...) return core[f](...) end\n"
	"function M.uapi_status_text(name)\n"
	"  local s, e = core.uapi_status(name)\n"
	"  if not s then error(e) end\n"
	"  return ser(s)\n"
	"end\n"
	"return M\n";

static lua_State *L;
static int helpers_ref;

/* Pushes helper function name. */
static void push_helper(const char *name)
{
	lua_rawgeti(L, LUA_REGISTRYINDEX, helpers_ref);
	lua_getfield(L, -1, name);
	lua_remove(L, -2);
}

static void on_alarm(int sig)
{
	static const char msg[] = "test_binding: timed out (an engine lock left held?)\n";

	(void)sig;
	if (write(2, msg, sizeof(msg) - 1) < 0) {
		/* nothing more to do */
	}
	_exit(3);
}

static void b64_of(char out[45], const uint8_t raw[32])
{
	wg_key_to_base64(out, raw);
}

/* A fresh random key: its base64 form is pushed, the raw form watched. */
static void push_watched_key(void)
{
	uint8_t raw[32];
	char b64[45];

	randombytes_buf(raw, sizeof(raw));
	b64_of(b64, raw);
	watch_add(raw);
	lua_pushstring(L, b64);
	sodium_memzero(b64, sizeof(b64));
}

static void full_gc(void)
{
	lua_gc(L, LUA_GCCOLLECT);
	lua_gc(L, LUA_GCCOLLECT);
}

/* ---- status ---- */

static struct wg_device *dev_of(int idx)
{
	return *(struct wg_device **)lua_touserdata(L, idx);
}

/* true when neither lock is held; prints what is held otherwise */
static bool locks_free(struct wg_device *dev)
{
	bool ok = true;

	if (pthread_mutex_trylock(&dev->cfg_mutex) == 0) {
		pthread_mutex_unlock(&dev->cfg_mutex);
	} else {
		fprintf(stderr, "test_binding: cfg_mutex left locked\n");
		ok = false;
	}
	if (pthread_rwlock_trywrlock(&dev->proto.cfg_lock) == 0) {
		pthread_rwlock_unlock(&dev->proto.cfg_lock);
	} else {
		fprintf(stderr, "test_binding: the protocol's cfg_lock left held\n");
		ok = false;
	}
	return ok;
}

/* Pushes status_text(dev) or nil, message. */
static bool status_text(int devidx, char **out)
{
	bool ok;

	push_helper("status_text");
	lua_pushvalue(L, devidx);
	ok = lua_pcall(L, 1, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TSTRING;
	if (!ok)
		fprintf(stderr, "test_binding: status_text: %s\n", lua_tostring(L, -1));
	else if (out)
		*out = strdup(lua_tostring(L, -1));
	lua_pop(L, 1);
	return ok;
}

static bool apply_ok(int devidx, const char *what)
{
	bool ok;

	/* a change that takes both locks for writing */
	push_helper("apply");
	lua_pushvalue(L, devidx);
	lua_createtable(L, 0, 1);
	lua_pushinteger(L, 0x1234);
	lua_setfield(L, -2, "fwmark");
	ok = lua_pcall(L, 2, 1, 0) == LUA_OK && lua_toboolean(L, -1);
	if (!ok)
		fprintf(stderr, "test_binding: apply after %s failed: %s\n", what, lua_tostring(L, -1));
	lua_pop(L, 1);
	return ok;
}

static void test_status(int devidx)
{
	struct wg_device *dev = dev_of(devidx);
	char *before = NULL, *after = NULL;
	int raised = 0, rounds = 0;
	bool done = false;

	/* six peers: endpoints v4/v6, a keepalive, a PSK, three allowed IPs */
	push_helper("apply");
	lua_pushvalue(L, devidx);
	lua_createtable(L, 0, 2);
	{
		uint8_t k[32];
		char b64[45];

		randombytes_buf(k, sizeof(k));
		b64_of(b64, k);
		lua_pushstring(L, b64);
		sodium_memzero(k, sizeof(k));
		sodium_memzero(b64, sizeof(b64));
	}
	lua_setfield(L, -2, "private_key");
	push_helper("peers");
	lua_pushinteger(L, 6);
	lua_call(L, 1, 1);
	lua_setfield(L, -2, "peers");
	lua_call(L, 2, 1);
	CHECK(lua_toboolean(L, -1));
	lua_pop(L, 1);

	CHECK(apply_ok(devidx, "adding peers")); /* fwmark as set after each round */
	CHECK(status_text(devidx, &before));
	if (!before)
		return;
	if (getenv("TEST_BINDING_VERBOSE"))
		printf("%s\n", before);
	/* in configuration order, as the kernel and wireguard-go list them */
	CHECK(strstr(before, "allowed_ips={1=string:10.9.1.0/24,2=string:fd09::1/128,3=string:10.8.1.1/32}") != NULL);
	CHECK(strstr(before, "endpoint=string:[2001:db8::2]:51820") != NULL);
	CHECK(strstr(before, "persistent_keepalive=number:25") != NULL);
	CHECK(strstr(before, "preshared") == NULL);
	CHECK(strstr(before, "fwmark=number:4660") != NULL);

	for (long n = 0; !done && n < 5000; n++) {
		int st;

		push_helper("status");
		lua_pushvalue(L, devidx);
		fail_arm(n);
		st = lua_pcall(L, 1, 1, 0);
		fail_disarm();
		rounds++;
		if (st == LUA_OK) {
			/* (Lua ignores some failures, e.g. shrinking its string table) */
			done = !alloc_failed;
		} else {
			raised += st == LUA_ERRMEM;
			if (st != LUA_ERRMEM)
				fprintf(stderr, "test_binding: status() raised %d: %s\n", st, lua_tostring(L, -1));
			CHECK(st == LUA_ERRMEM);
		}
		lua_pop(L, 1);
		if (!locks_free(dev)) {
			CHECK(!"status() under a failing allocator left an engine lock held");
			fprintf(stderr, "test_binding: (after a failure at allocation %ld)\n", n);
			tl_finish("test_binding");
			fflush(stdout);
			_exit(1); /* closing the device would wait on the lock */
		}
		after = NULL;
		if (!status_text(devidx, &after) || strcmp(before, after)) {
			fprintf(stderr, "test_binding: status before: %s\nafter: %s\n", before, after ? after : "-");
			CHECK(!"status() after a memory error differs or fails");
			free(after);
			break;
		}
		free(after);
		if (!apply_ok(devidx, "a memory error in status()")) {
			CHECK(!"apply() after a memory error in status() failed");
			break;
		}
	}
	CHECK(done);
	CHECK(raised > 10);
	printf("test_binding: status() raised a memory error at %d allocation points, locks free after each\n", raised);
	(void)rounds;
	free(before);
}

/* ---- apply ---- */

/* One apply helper that raises after the keys were decoded; checks nothing
 * of them is left, with and without memory errors. */
static void apply_raise(int devidx, const char *helper, const char *expect, bool measure)
{
	int raised_mem = 0, found = 0;
	bool done = false;
	size_t scanned = 0;
	const char *msg;

	watch_clear();
	freed_with_secret = 0;
	/* args: dev, private key, psk, a public key (not watched) */
	lua_pushvalue(L, devidx);
	push_watched_key();
	push_watched_key();
	if (!measure)
		watch_clear();
	{
		uint8_t pub[32];
		char b64[45];

		randombytes_buf(pub, sizeof(pub));
		b64_of(b64, pub);
		lua_pushstring(L, b64);
	}
	/* plain raise */
	push_helper(helper);
	for (int i = 1; i <= 4; i++)
		lua_pushvalue(L, -5);
	CHECK(lua_pcall(L, 4, 1, 0) == LUA_ERRRUN);
	msg = lua_tostring(L, -1);
	if (!msg || !strstr(msg, expect))
		fprintf(stderr, "test_binding: %s raised \"%s\", expected \"%s\"\n", helper, msg ? msg : "?", expect);
	CHECK(msg && strstr(msg, expect));
	lua_pop(L, 1);
	/* right after the raise, before any collection */
	if (measure)
		found = scan_self(&scanned);
	if (found)
		fprintf(stderr, "test_binding: %s: %d raw key copies in memory right after the raise\n", helper, found);
	CHECK_EQ(found, 0);
	CHECK_EQ(freed_with_secret, 0);

	/* a memory error at every allocation in turn */
	for (long n = 0; !done && n < 5000; n++) {
		int st;

		push_helper(helper);
		for (int i = 1; i <= 4; i++)
			lua_pushvalue(L, -5);
		fail_arm(n);
		st = lua_pcall(L, 4, 1, 0);
		fail_disarm();
		CHECK(st != LUA_OK);
		if (st == LUA_ERRMEM) {
			raised_mem++;
		} else {
			msg = lua_tostring(L, -1);
			done = !alloc_failed;
			if (done && !(msg && strstr(msg, expect)))
				fprintf(stderr, "test_binding: %s raised \"%s\"\n", helper, msg ? msg : "?");
		}
		lua_pop(L, 1);
		full_gc();
		if (freed_with_secret) {
			fprintf(stderr,
				"test_binding: %s: a block freed with a key in it (memory error at allocation %ld)\n",
				helper, n);
			break;
		}
	}
	CHECK(done);
	CHECK(raised_mem > 0);
	CHECK_EQ(freed_with_secret, 0);
	lua_settop(L, devidx);
	full_gc();
	if (!measure)
		return;
	found = scan_self(&scanned);
	if (found)
		fprintf(stderr, "test_binding: %s: %d raw key copies in memory after the memory errors\n", helper,
			found);
	CHECK_EQ(found, 0);
	CHECK(scanned > 100000);
	printf("test_binding: apply %s: raises after decoding keys (plain, and memory errors at %d points): "
	       "%d key copies in %.1f MB\n",
	       helper, raised_mem, found, scanned / 1e6);
	watch_clear();
}

/* The first call through a lazily bound PLT slot (liblua's, libsodium's)
 * saves the vector registers on the stack, and they may still hold a key
 * just decoded: a one-time artifact of the dynamic linker, not of the code
 * under test.  So every path runs once with keys nobody watches first. */
static void test_apply_raise(int devidx, const char *helper, const char *expect)
{
	apply_raise(devidx, helper, expect, false);
	apply_raise(devidx, helper, expect, true);
}

/* ---- core.uapi_status: the reply of a UAPI get holds the private key ----
 *
 * The engine answering is a child process of ours serving a canned reply,
 * so that only what uapi_status itself leaves behind is in our memory. */

static pid_t fake_engine(const char *path, char *reply, size_t len)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	pid_t pid;

	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	unlink(path);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || listen(fd, 16) < 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	pid = fork();
	if (pid != 0) {
		close(fd);
		return pid;
	}
	for (;;) {
		int c = accept(fd, NULL, NULL);
		char req[64];
		ssize_t n;

		if (c < 0)
			continue;
		while ((n = read(c, req, sizeof(req))) > 0)
			;
		if (write(c, reply, len) < 0) {
			/* the client is gone */
		}
		close(c);
	}
}

static void test_uapi_status(void)
{
	uint8_t priv[32], pub[32], psk[32], peer[32];
	char name[IFNAMSIZ], path[108], hex[65], pub64[45], peer64[45], reply[1024], expect[512];
	size_t scanned;
	int raised = 0, found, len;
	pid_t child;

	snprintf(name, sizeof(name), "wgb%d", (int)getpid());
	snprintf(path, sizeof(path), "%s/%s.sock", WG_UAPI_DIR, name);
	if (mkdir(WG_UAPI_DIR, 0700) < 0 && errno != EEXIST) {
		printf("test_binding: uapi_status test skipped (%s: %s)\n", WG_UAPI_DIR, strerror(errno));
		return;
	}
	watch_clear();
	randombytes_buf(priv, sizeof(priv));
	randombytes_buf(psk, sizeof(psk));
	randombytes_buf(peer, sizeof(peer));
	crypto_scalarmult_base(pub, priv);
	b64_of(pub64, pub);
	b64_of(peer64, peer);
	wg_key_to_hex(hex, priv);
	len = snprintf(reply, sizeof(reply), "private_key=%s\nlisten_port=51820\nfwmark=7\n", hex);
	watch_add((uint8_t *)hex);
	watch_add((uint8_t *)hex + 32);
	wg_key_to_hex(hex, peer);
	len += snprintf(reply + len, sizeof(reply) - (size_t)len, "public_key=%s\n", hex);
	wg_key_to_hex(hex, psk);
	len += snprintf(reply + len, sizeof(reply) - (size_t)len,
			"preshared_key=%s\nprotocol_version=1\nendpoint=192.0.2.1:5\nlast_handshake_time_sec=17\n"
			"last_handshake_time_nsec=0\ntx_bytes=5\nrx_bytes=6\npersistent_keepalive_interval=25\n"
			"allowed_ip=10.1.0.0/16\nallowed_ip=fd00::1/128\nerrno=0\n\n",
			hex);
	watch_add((uint8_t *)hex);
	watch_add((uint8_t *)hex + 32);
	sodium_memzero(priv, sizeof(priv));
	sodium_memzero(psk, sizeof(psk));
	child = fake_engine(path, reply, (size_t)len);
	sodium_memzero(reply, sizeof(reply));
	if (child < 0) {
		printf("test_binding: uapi_status test skipped (cannot serve %s: %s)\n", path, strerror(errno));
		watch_clear();
		return;
	}
	snprintf(expect, sizeof(expect),
		 "{fwmark=number:7,interface=string:%s,listen_port=number:51820,peers={1={allowed_ips={1=string:"
		 "10.1.0.0/16,2=string:fd00::1/128},endpoint=string:192.0.2.1:5,last_handshake=number:17,"
		 "persistent_keepalive=number:25,public_key=string:%s,rx_bytes=number:6,tx_bytes=number:5}},"
		 "public_key=string:%s}",
		 name, peer64, pub64);

	/* warm-up (see test_apply_raise), then memory errors at every point */
	for (int pass = 0; pass < 2; pass++) {
		bool done = false;

		freed_with_secret = 0;
		raised = 0;
		for (long n = 0; !done && n < 5000; n++) {
			int st;

			push_helper("uapi_status_text");
			lua_pushstring(L, name);
			fail_arm(n);
			st = lua_pcall(L, 1, 1, 0);
			fail_disarm();
			if (st == LUA_OK) {
				done = !alloc_failed;
				if (done && pass &&
				    !(lua_type(L, -1) == LUA_TSTRING && !strcmp(lua_tostring(L, -1), expect))) {
					fprintf(stderr, "test_binding: uapi_status: %s\nexpected %s\n",
						lua_tostring(L, -1), expect);
					CHECK(!"uapi_status result");
				}
			} else {
				if (pass && st != LUA_ERRMEM)
					fprintf(stderr, "test_binding: uapi_status raised %d: %s\n", st,
						lua_tostring(L, -1));
				if (pass)
					CHECK(st == LUA_ERRMEM);
				raised++;
			}
			lua_pop(L, 1);
			full_gc();
		}
		CHECK(done);
	}
	CHECK(raised > 10);
	CHECK_EQ(freed_with_secret, 0);
	found = scan_self(&scanned);
	if (found)
		fprintf(stderr, "test_binding: uapi_status: %d copies of the keys' hex form in memory\n", found);
	CHECK_EQ(found, 0);
	printf("test_binding: uapi_status: memory errors at %d points, %d copies of the keys' hex form in %.1f MB\n",
	       raised, found, scanned / 1e6);
	watch_clear();
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	unlink(path);
}

/* ---- small functions returning secrets ---- */

/* Calls core[f](args at top-nargs+1..top) with every allocation failing in
 * turn; no block freed by Lua may still hold the watched result. */
static void test_small(const char *f, int nargs)
{
	int base = lua_gettop(L) - nargs, raised = 0;
	bool done = false;

	freed_with_secret = 0;
	for (long n = 0; !done && n < 5000; n++) {
		int st;

		push_helper("call");
		lua_pushstring(L, f);
		for (int i = 1; i <= nargs; i++)
			lua_pushvalue(L, base + i);
		fail_arm(n);
		st = lua_pcall(L, nargs + 1, 1, 0);
		fail_disarm();
		if (st == LUA_OK) {
			done = !alloc_failed;
			CHECK(lua_type(L, -1) == LUA_TSTRING);
			lua_pop(L, 1);
			/* the result itself holds the secret: collect it unwatched */
			watch_frees = false;
			full_gc();
			watch_frees = true;
		} else {
			if (st != LUA_ERRMEM) {
				fprintf(stderr, "test_binding: %s raised %d: %s\n", f, st, lua_tostring(L, -1));
				CHECK(st == LUA_ERRMEM);
				lua_pop(L, 1);
				break;
			}
			raised++;
			lua_pop(L, 1);
			full_gc();
		}
		if (freed_with_secret) {
			fprintf(stderr, "test_binding: %s: a block freed with the secret in it (failure at %ld)\n", f,
				n);
			break;
		}
	}
	CHECK(done);
	CHECK(raised > 0);
	CHECK_EQ(freed_with_secret, 0);
	lua_settop(L, base);
	watch_frees = false;
	full_gc();
	watch_frees = true;
	watch_clear();
}

static void test_small_functions(void)
{
	uint8_t raw[32], a[32], b[32], bpub[32], shared[32], nonce[24];
	uint8_t *pt, *ct;
	char b64[45];
	const size_t ptlen = 3000; /* larger than a luaL_Buffer's stack part */

	/* key_from_base64: the raw key */
	randombytes_buf(raw, sizeof(raw));
	b64_of(b64, raw);
	watch_add(raw);
	lua_pushstring(L, b64);
	test_small("key_from_base64", 1);

	/* key_to_base64: the base64 text of a raw (private) key */
	randombytes_buf(raw, sizeof(raw));
	b64_of(b64, raw);
	lua_pushlstring(L, (const char *)raw, 32);
	sodium_memzero(raw, sizeof(raw));
	watch_add((uint8_t *)b64);
	test_small("key_to_base64", 1);

	/* x25519: the shared secret */
	randombytes_buf(a, sizeof(a));
	randombytes_buf(b, sizeof(b));
	crypto_scalarmult_base(bpub, b);
	CHECK(crypto_scalarmult(shared, a, bpub) == 0);
	watch_add(shared);
	lua_pushlstring(L, (const char *)a, 32);
	lua_pushlstring(L, (const char *)bpub, 32);
	sodium_memzero(a, sizeof(a));
	sodium_memzero(b, sizeof(b));
	test_small("x25519", 2);

	/* aead_open: a secret inside a plaintext larger than a stack buffer */
	pt = malloc(ptlen);
	ct = malloc(ptlen + 16);
	if (!pt || !ct)
		abort();
	randombytes_buf(pt, ptlen);
	randombytes_buf(raw, sizeof(raw));
	randombytes_buf(nonce, sizeof(nonce));
	crypto_aead_xchacha20poly1305_ietf_encrypt(ct, NULL, pt, ptlen, NULL, 0, NULL, nonce, raw);
	lua_pushlstring(L, (const char *)raw, 32);
	lua_pushlstring(L, (const char *)nonce, 24);
	lua_pushlstring(L, (const char *)ct, ptlen + 16);
	watch_add(pt + 1000);
	sodium_memzero(pt, ptlen);
	sodium_memzero(raw, sizeof(raw));
	free(pt);
	free(ct);
	test_small("aead_open", 3);
	sodium_memzero(b64, sizeof(b64));
}

int main(void)
{
	bool netns;
	int devidx;

	signal(SIGALRM, on_alarm);
	alarm(600);
	if (sodium_init() < 0)
		return 1;
	/* a namespace of our own, before any thread exists */
	netns = unshare(CLONE_NEWNET) == 0;
	scan_buf = mmap(NULL, SCAN_CHUNK + 32, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (scan_buf == MAP_FAILED)
		return 1;

	L = lua_newstate(test_alloc, NULL);
	if (!L)
		return 1;
	luaL_openlibs(L);
	luaL_requiref(L, "wgoverlay.core", luaopen_wgoverlay_core, 0);
	if (luaL_loadstring(L, helpers_lua) != LUA_OK) {
		fprintf(stderr, "%s\n", lua_tostring(L, -1));
		return 1;
	}
	lua_insert(L, -2);
	lua_call(L, 1, 1);
	helpers_ref = luaL_ref(L, LUA_REGISTRYINDEX);

	test_small_functions();
	test_uapi_status();

	if (!netns) {
		printf("test_binding: device tests skipped (unshare(CLONE_NEWNET): %s; needs root)\n", strerror(errno));
	} else {
		push_helper("open");
		lua_pushliteral(L, "wgobind0");
		lua_call(L, 1, 2);
		if (lua_isnil(L, -2)) {
			printf("test_binding: device tests skipped (%s)\n", lua_tostring(L, -1));
			lua_pop(L, 2);
		} else {
			lua_pop(L, 1);
			devidx = lua_gettop(L);
			test_status(devidx);
			test_apply_raise(devidx, "bad_port", "listen_port: integer expected");
			test_apply_raise(devidx, "bad_endpoint", "peer.endpoint: string expected");
			test_apply_raise(devidx, "bad_cidr", "allowed_ips[6]: string expected");
			test_apply_raise(devidx, "bad_peer", "table expected");
			CHECK(locks_free(dev_of(devidx)));
			lua_settop(L, devidx - 1);
		}
	}
	luaL_unref(L, LUA_REGISTRYINDEX, helpers_ref);
	lua_close(L);
	munmap(scan_buf, SCAN_CHUNK + 32);
	return tl_finish("test_binding");
}
