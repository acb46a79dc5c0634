/* libFuzzer harness for the DNS codec and zone (lua/wgoverlay/dns.lua),
 * run in an embedded Lua 5.4: each input goes through dns.parse,
 * dns.check_query, zone:answer over UDP and TCP (the server's answer
 * path, no sockets), dns.error_response and dns.matches, with invariants
 * checked in Lua.  Any raised Lua error is a bug (malformed input must
 * give a returned error): the harness aborts with the message.  A parse
 * taking more than its budget of steps (2 per byte + 512) fails too, and
 * scripts/fuzz.sh gives each input 2 s.
 *
 * libFuzzer cannot see inside the (uninstrumented) Lua interpreter, so a
 * line hook feeds (previous line, line) pairs of the Lua code into extra
 * coverage counters.
 *
 *   clang -g -O1 -fsanitize=fuzzer,undefined -I/usr/include/lua5.4 \
 *     fuzz/fuzz_dns.c -llua5.4 -o /tmp/fuzz_dns
 *   WGO_ROOT=$PWD /tmp/fuzz_dns -timeout=2 fuzz/corpus/dns
 *
 * The checkout is $WGO_ROOT, else the parent of the binary's directory
 * (build-fuzz/fuzz_dns). */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define COV_SIZE (1 << 16)
__attribute__((section("__libfuzzer_extra_counters"), used)) static uint8_t lua_cov[COV_SIZE];

static lua_State *L;
static int check_ref = LUA_NOREF;
static uintptr_t prev_loc;

static const char bootstrap[] =
	"local root = ...\n"
	"package.path = root .. '/lua/?.lua;' .. root .. '/lua/?/init.lua'\n"
	"package.cpath = ''\n"
	"local dns = require 'wgoverlay.dns'\n"
	"local R = dns.RCODE\n"
	"local zone = assert(dns.zone.new('overlay.internal', { ns = { 'ns1.overlay.internal' } }))\n"
	"assert(zone:set('node1', { '10.200.0.1' }, { 'fd00:200::1' }))\n"
	"assert(zone:set('web', { '10.200.0.2', '10.200.0.18' }, { 'fd00:200::2' }))\n"
	"assert(zone:add('db.svc', 'A', '10.200.0.3'))\n"
	"for i = 1, 40 do assert(zone:add('big', 'A', '10.200.2.' .. i)) end\n"
	"local function check(cond, what) if not cond then error('invariant failed: ' .. what, 2) end end\n"
	"local function budget(n) return 2 * n + 512 end\n"
	"local T = dns.TYPE\n"
	"local named = { [T.NS] = true, [T.CNAME] = true, [T.PTR] = true, [T.SOA] = true }\n"
	"-- What parse returns, build encodes, and it parses back alike (names\n"
	"-- inside rdata from their decoded form: raw rdata may hold pointers).\n"
	"local function roundtrip(m)\n"
	"  local function records(list)\n"
	"    local out = {}\n"
	"    for i, rr in ipairs(list) do\n"
	"      out[i] = { labels = rr.labels, type = rr.type, class = rr.class, ttl = rr.ttl, data = rr.data,\n"
	"        rdata = not named[rr.type] and rr.rdata or nil }\n"
	"    end\n"
	"    return out\n"
	"  end\n"
	"  local bytes = dns.build({ id = m.id, qr = m.qr, opcode = m.opcode, rcode = m.rcode & 15,\n"
	"    questions = m.questions, answers = records(m.answers), authority = records(m.authority),\n"
	"    additional = records(m.additional) })\n"
	"  local again, aerr = dns.parse(bytes)\n"
	"  if not again then\n"
	"    -- only the budget may refuse it: names whose labels and pointers (at\n"
	"    -- most one per label, and one more, as build writes them) need more\n"
	"    -- steps than the rebuilt message, without the input's slack, allows\n"
	"    local labels, names = 0, 0\n"
	"    local function count(l) labels, names = labels + #l, names + 1 end\n"
	"    for _, q in ipairs(m.questions) do count(q.labels) end\n"
	"    for _, sect in ipairs({ m.answers, m.authority, m.additional }) do\n"
	"      for _, rr in ipairs(sect) do\n"
	"        count(rr.labels)\n"
	"        if named[rr.type] then\n"
	"          local d = rr.data\n"
	"          if type(d) == 'table' then count(dns.name_labels(d.mname)) count(dns.name_labels(d.rname))\n"
	"          else count(dns.name_labels(d)) end\n"
	"        end\n"
	"      end\n"
	"    end\n"
	"    check(aerr:find('too much work', 1, true) and 2 * labels + names > budget(#bytes),\n"
	"      'a rebuilt message parses (' .. aerr .. ')')\n"
	"    return\n"
	"  end\n"
	"  check(again.qdcount == m.qdcount and again.arcount == m.arcount, 'rebuilt counts')\n"
	"  for i, q in ipairs(m.questions) do\n"
	"    check(again.questions[i].name:lower() == q.name:lower(), 'rebuilt question names')\n"
	"  end\n"
	"end\n"
	"return function(data)\n"
	"  local w = dns.work.steps\n"
	"  local m, err, h = dns.parse(data)\n"
	"  check(dns.work.steps - w <= budget(#data), 'parse within its budget')\n"
	"  if m then\n"
	"    check(#m.questions == m.qdcount and #m.answers == m.ancount, 'section counts')\n"
	"    roundtrip(m)\n"
	"  else\n"
	"    check(type(err) == 'string', 'parse returns a message')\n"
	"  end\n"
	"  local hq, hrcode = dns.check_query(data)\n"
	"  for _, t in ipairs({ 'udp', 'tcp' }) do\n"
	"    w = dns.work.steps\n"
	"    local resp, reason = zone:answer(data, { transport = t, forward = #data % 2 == 0 })\n"
	"    check(dns.work.steps - w <= budget(dns.QUERY_MAX), 'answer parses at most QUERY_MAX bytes')\n"
	"    if hrcode == R.FORMERR then check(dns.work.steps == w, 'no name read for a header FORMERR') end\n"
	"    if resp then\n"
	"      local r = dns.parse(resp)\n"
	"      check(r, 'a response parses')\n"
	"      check(r.qr and hq and r.id == hq.id, 'a response to the query')\n"
	"      check(r.qdcount <= 1, 'at most one question')\n"
	"      if t == 'udp' then check(#resp <= dns.UDP_MAX, 'fits UDP') end\n"
	"      if not m or hrcode == R.FORMERR then check(r.rcode == R.FORMERR, 'FORMERR for what does not parse') end\n"
	"      check(dns.matches(data, resp) == (m ~= nil and r.qdcount == m.qdcount), 'matches its query')\n"
	"    else\n"
	"      check(reason == 'drop' or reason == 'forward', 'a known reason')\n"
	"      if reason == 'drop' then check(not h or h.qr, 'drops only responses and headerless messages') end\n"
	"    end\n"
	"  end\n"
	"  local sf = dns.error_response(data, R.SERVFAIL)\n"
	"  check(sf == nil or dns.parse(sf), 'SERVFAIL parses')\n"
	"end\n";

/* Lua line coverage: an edge (previous line, line) per counter.  Lines
 * only (the hook's event already carries them; asking for the source
 * would cost more than the code it measures): dns.lua is nearly all the
 * code run, and a collision with cidr.lua or the bootstrap is harmless. */
static void line_hook(lua_State *l, lua_Debug *ar)
{
	uintptr_t loc;

	(void)l;
	loc = (uintptr_t)ar->currentline * 2654435761u;
	lua_cov[(loc ^ prev_loc) % COV_SIZE]++;
	prev_loc = loc >> 1;
}

static void find_root(char *out, size_t len)
{
	const char *env = getenv("WGO_ROOT");
	char exe[PATH_MAX];
	ssize_t n;

	if (env && *env) {
		snprintf(out, len, "%s", env);
		return;
	}
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0) {
		snprintf(out, len, ".");
		return;
	}
	exe[n] = '\0';
	for (int i = 0; i < 2; i++) { /* strip the binary, then its directory */
		char *slash = strrchr(exe, '/');

		if (slash)
			*slash = '\0';
	}
	snprintf(out, len, "%s", exe[0] ? exe : "/");
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char root[PATH_MAX];

	(void)argc;
	(void)argv;
	find_root(root, sizeof(root));
	L = luaL_newstate();
	if (!L)
		abort();
	luaL_openlibs(L);
	if (luaL_loadbuffer(L, bootstrap, sizeof(bootstrap) - 1, "=fuzz_dns") != LUA_OK) {
		fprintf(stderr, "fuzz_dns: bootstrap: %s\n", lua_tostring(L, -1));
		abort();
	}
	lua_pushstring(L, root);
	if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
		fprintf(stderr, "fuzz_dns: loading lua/wgoverlay/dns.lua from %s (set WGO_ROOT): %s\n", root,
			lua_tostring(L, -1));
		abort();
	}
	check_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	lua_sethook(L, line_hook, LUA_MASKLINE, 0);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	prev_loc = 0;
	lua_rawgeti(L, LUA_REGISTRYINDEX, check_ref);
	lua_pushlstring(L, (const char *)data, size);
	if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
		const char *msg = lua_tostring(L, -1);

		fprintf(stderr, "fuzz_dns: Lua raised: %s\n", msg ? msg : "(not a string)");
		abort();
	}
	return 0;
}
