/* HTTP(S) client for the Lua side: libcurl's multi interface driven by the
 * caller's event loop (lua/wgoverlay/http.lua runs it on luv), so that
 * requests and long-lived streams (etcd watches) never block the daemon.
 *
 * No Lua code runs inside a libcurl callback: curl's callbacks only record
 * what happened in C memory (sockets to watch, the timer, received bytes),
 * and the Lua side collects it after each call:
 *
 *   local m = core.http_multi()
 *   local id = m:add{ url = ..., method = "POST", body = ..., headers = {...},
 *                     timeout_ms = ..., connect_timeout_ms = ...,
 *                     cainfo = FILE, cert = FILE, key = FILE, max_bytes = N }
 *   m:socket_action(fd, events)  -- fd -1: the timer fired; events: 1 in, 2 out
 *   m:sockets()   -> { {fd, what}, ... } changes since the last call
 *                    (what: 1 in, 2 out, 3 both, 4 remove)
 *   m:timeout()   -> ms until curl wants the timer (-1: none), or nil if unchanged
 *   m:data()      -> { [id] = bytes received since the last call, ... }
 *   m:done()      -> { {id, ok, http_status, message}, ... } finished transfers
 *   m:remove(id)  cancels a transfer (no done entry for it)
 *   m:close()
 *
 * Transfers carry their own size cap (max_bytes, default 64 MiB): a body
 * that grows past it while not drained ends the transfer with an error.
 * Also here: base64 (the etcd gateway's JSON carries keys and values as
 * base64), from libsodium. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <lauxlib.h>
#include <lua.h>
#include <sodium.h>

#include "lua_core.h"

#define HTTP_MT "wgoverlay.http_multi"
#define HTTP_DEFAULT_MAX (64u << 20)

struct http_xfer {
	CURL *easy;
	struct curl_slist *headers;
	char *body; /* request body (curl does not copy CURLOPT_POSTFIELDS) */
	char *buf;  /* received, not yet collected */
	size_t len, cap, max;
	lua_Integer id;
	int overflow;
	struct http_xfer *next;
	char errbuf[CURL_ERROR_SIZE];
};

struct sock_change {
	curl_socket_t fd;
	int what;
};

struct http_multi {
	CURLM *multi;
	struct http_xfer *xfers;
	lua_Integer next_id;
	struct sock_change *changes;
	size_t nchanges, capchanges;
	long timeout_ms;
	int timeout_changed;
	int oom; /* a callback could not record something: fail loudly */
};

static struct http_multi *check_multi(lua_State *L)
{
	struct http_multi *m = luaL_checkudata(L, 1, HTTP_MT);
	if (!m->multi)
		luaL_error(L, "http: client is closed");
	return m;
}

static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	struct http_multi *m = userp;

	(void)easy;
	(void)socketp;
	if (m->nchanges == m->capchanges) {
		size_t cap = m->capchanges ? m->capchanges * 2 : 16;
		struct sock_change *c = realloc(m->changes, cap * sizeof(*c));
		if (!c) {
			m->oom = 1;
			return -1;
		}
		m->changes = c;
		m->capchanges = cap;
	}
	m->changes[m->nchanges].fd = s;
	m->changes[m->nchanges].what = what;
	m->nchanges++;
	return 0;
}

static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
	struct http_multi *m = userp;

	(void)multi;
	m->timeout_ms = timeout_ms;
	m->timeout_changed = 1;
	return 0;
}

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *userp)
{
	struct http_xfer *x = userp;
	size_t n = size * nmemb;

	if (n > x->max - x->len) {
		x->overflow = 1;
		return 0; /* ends the transfer with CURLE_WRITE_ERROR */
	}
	if (x->len + n > x->cap) {
		size_t cap = x->cap ? x->cap : 4096;
		char *b;
		while (cap < x->len + n)
			cap *= 2;
		if (cap > x->max)
			cap = x->max;
		b = realloc(x->buf, cap);
		if (!b) {
			x->overflow = 1;
			return 0;
		}
		x->buf = b;
		x->cap = cap;
	}
	memcpy(x->buf + x->len, ptr, n);
	x->len += n;
	return n;
}

static void xfer_free(struct http_multi *m, struct http_xfer *x)
{
	if (x->easy) {
		curl_multi_remove_handle(m->multi, x->easy);
		curl_easy_cleanup(x->easy);
	}
	curl_slist_free_all(x->headers);
	if (x->body) {
		sodium_memzero(x->body, strlen(x->body)); /* may carry a password */
		free(x->body);
	}
	free(x->buf);
	free(x);
}

static struct http_xfer *unlink_xfer(struct http_multi *m, lua_Integer id, CURL *easy)
{
	struct http_xfer **pp;

	for (pp = &m->xfers; *pp; pp = &(*pp)->next) {
		struct http_xfer *x = *pp;
		if ((easy && x->easy == easy) || (!easy && x->id == id)) {
			*pp = x->next;
			return x;
		}
	}
	return NULL;
}

static int l_http_multi(lua_State *L)
{
	struct http_multi *m = lua_newuserdatauv(L, sizeof(*m), 0);

	memset(m, 0, sizeof(*m));
	m->timeout_ms = -1;
	luaL_setmetatable(L, HTTP_MT);
	m->multi = curl_multi_init();
	if (!m->multi)
		return wgo_fail(L, ENOMEM, "http: curl_multi_init failed");
	curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
	curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
	curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, on_timer);
	curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
	m->next_id = 1;
	return 1;
}

/* Optional string field k of the table at 2, or NULL. */
static const char *opt_str(lua_State *L, const char *k, size_t *len)
{
	const char *s = NULL;

	if (lua_getfield(L, 2, k) != LUA_TNIL) {
		if (lua_type(L, -1) != LUA_TSTRING)
			luaL_error(L, "http: add: %s must be a string", k);
		s = lua_tolstring(L, -1, len); /* the table keeps it alive */
	}
	lua_pop(L, 1);
	return s;
}

static lua_Integer opt_int(lua_State *L, const char *k, lua_Integer def)
{
	lua_Integer v = def;

	if (lua_getfield(L, 2, k) != LUA_TNIL) {
		if (!lua_isinteger(L, -1))
			luaL_error(L, "http: add: %s must be an integer", k);
		v = lua_tointeger(L, -1);
	}
	lua_pop(L, 1);
	return v;
}

/* add(opts) -> id, or nil, message.  Every argument is read and checked
 * before anything is allocated in C, so a raise leaks nothing. */
static int l_add(lua_State *L)
{
	struct http_multi *m = check_multi(L);
	const char *url, *method, *body, *cainfo, *cert, *key;
	size_t body_len = 0, n, i;
	lua_Integer timeout, ctimeout, max;
	struct http_xfer *x;
	CURLMcode mc;

	luaL_checktype(L, 2, LUA_TTABLE);
	url = opt_str(L, "url", NULL);
	if (!url)
		return luaL_error(L, "http: add: url is required");
	if (strncmp(url, "http://", 7) && strncmp(url, "https://", 8))
		return luaL_error(L, "http: add: url must be http:// or https://");
	method = opt_str(L, "method", NULL);
	body = opt_str(L, "body", &body_len);
	if (body && strlen(body) != body_len)
		return luaL_error(L, "http: add: body contains NUL bytes");
	cainfo = opt_str(L, "cainfo", NULL);
	cert = opt_str(L, "cert", NULL);
	key = opt_str(L, "key", NULL);
	timeout = opt_int(L, "timeout_ms", 0);
	ctimeout = opt_int(L, "connect_timeout_ms", 5000);
	max = opt_int(L, "max_bytes", HTTP_DEFAULT_MAX);
	if (timeout < 0 || ctimeout < 0 || max <= 0)
		return luaL_error(L, "http: add: timeouts must be >= 0 and max_bytes > 0");
	n = 0;
	if (lua_getfield(L, 2, "headers") != LUA_TNIL) {
		luaL_checktype(L, -1, LUA_TTABLE);
		n = (size_t)luaL_len(L, -1);
		for (i = 1; i <= n; i++) {
			if (lua_geti(L, -1, (lua_Integer)i) != LUA_TSTRING)
				luaL_error(L, "http: add: headers[%d] must be a string", (int)i);
			lua_pop(L, 1);
		}
	}
	/* headers table (or nil) stays at the top */

	x = calloc(1, sizeof(*x));
	if (!x)
		return wgo_fail(L, ENOMEM, "http: out of memory");
	x->max = (size_t)max;
	x->easy = curl_easy_init();
	if (!x->easy)
		goto oom;
	for (i = 1; i <= n; i++) {
		struct curl_slist *h;
		lua_geti(L, -1, (lua_Integer)i);
		h = curl_slist_append(x->headers, lua_tostring(L, -1)); /* copies */
		lua_pop(L, 1);
		if (!h)
			goto oom;
		x->headers = h;
	}
	lua_pop(L, 1);
	if (body) {
		x->body = malloc(body_len + 1);
		if (!x->body)
			goto oom;
		memcpy(x->body, body, body_len + 1);
		curl_easy_setopt(x->easy, CURLOPT_POSTFIELDS, x->body);
		curl_easy_setopt(x->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
	}
	curl_easy_setopt(x->easy, CURLOPT_URL, url);
	if (method)
		curl_easy_setopt(x->easy, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, x->headers);
	curl_easy_setopt(x->easy, CURLOPT_WRITEFUNCTION, on_write);
	curl_easy_setopt(x->easy, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(x->easy, CURLOPT_ERRORBUFFER, x->errbuf);
	curl_easy_setopt(x->easy, CURLOPT_PRIVATE, x);
	curl_easy_setopt(x->easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS, (long)timeout);
	curl_easy_setopt(x->easy, CURLOPT_CONNECTTIMEOUT_MS, (long)ctimeout);
	curl_easy_setopt(x->easy, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(x->easy, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(x->easy, CURLOPT_NOPROXY, "*"); /* never through a proxy from the environment */
	curl_easy_setopt(x->easy, CURLOPT_TCP_KEEPALIVE, 1L);
	if (cainfo)
		curl_easy_setopt(x->easy, CURLOPT_CAINFO, cainfo);
	if (cert)
		curl_easy_setopt(x->easy, CURLOPT_SSLCERT, cert);
	if (key)
		curl_easy_setopt(x->easy, CURLOPT_SSLKEY, key);
	curl_easy_setopt(x->easy, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(x->easy, CURLOPT_SSL_VERIFYHOST, 2L);
	x->id = m->next_id++;
	mc = curl_multi_add_handle(m->multi, x->easy);
	if (mc != CURLM_OK) {
		xfer_free(m, x);
		return wgo_fail(L, EIO, "http: %s", curl_multi_strerror(mc));
	}
	x->next = m->xfers;
	m->xfers = x;
	lua_pushinteger(L, x->id);
	return 1;
oom:
	xfer_free(m, x);
	return wgo_fail(L, ENOMEM, "http: out of memory");
}

static int l_socket_action(lua_State *L)
{
	struct http_multi *m = check_multi(L);
	lua_Integer fd = luaL_checkinteger(L, 2);
	lua_Integer ev = luaL_optinteger(L, 3, 0);
	int running = 0, mask = 0;
	CURLMcode mc;

	if (ev & 1)
		mask |= CURL_CSELECT_IN;
	if (ev & 2)
		mask |= CURL_CSELECT_OUT;
	if (ev & 4)
		mask |= CURL_CSELECT_ERR;
	mc = curl_multi_socket_action(m->multi, fd < 0 ? CURL_SOCKET_TIMEOUT : (curl_socket_t)fd, mask, &running);
	if (mc != CURLM_OK)
		return wgo_fail(L, EIO, "http: %s", curl_multi_strerror(mc));
	if (m->oom) {
		m->oom = 0;
		return wgo_fail(L, ENOMEM, "http: out of memory recording sockets");
	}
	lua_pushinteger(L, running);
	return 1;
}

static int l_sockets(lua_State *L)
{
	struct http_multi *m = check_multi(L);
	size_t i, n = m->nchanges;

	lua_createtable(L, (int)n, 0);
	for (i = 0; i < n; i++) {
		lua_createtable(L, 2, 0);
		lua_pushinteger(L, m->changes[i].fd);
		lua_rawseti(L, -2, 1);
		lua_pushinteger(L, m->changes[i].what);
		lua_rawseti(L, -2, 2);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	m->nchanges = 0; /* after the table is built: a raise above loses nothing */
	return 1;
}

static int l_timeout(lua_State *L)
{
	struct http_multi *m = check_multi(L);

	if (!m->timeout_changed)
		return 0;
	m->timeout_changed = 0;
	lua_pushinteger(L, m->timeout_ms);
	return 1;
}

static int l_data(lua_State *L)
{
	struct http_multi *m = check_multi(L);
	struct http_xfer *x;

	lua_newtable(L);
	for (x = m->xfers; x; x = x->next) {
		if (!x->len)
			continue;
		lua_pushlstring(L, x->buf, x->len);
		lua_rawseti(L, -2, x->id);
		x->len = 0;
	}
	return 1;
}

static int l_done(lua_State *L)
{
	struct http_multi *m = check_multi(L);
	CURLMsg *msg;
	int left, n = 0;

	lua_newtable(L);
	while ((msg = curl_multi_info_read(m->multi, &left))) {
		struct http_xfer *x;
		long status = 0;
		if (msg->msg != CURLMSG_DONE)
			continue;
		x = unlink_xfer(m, 0, msg->easy_handle);
		if (!x)
			continue;
		curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
		lua_createtable(L, 5, 0);
		lua_pushinteger(L, x->id);
		lua_rawseti(L, -2, 1);
		lua_pushboolean(L, msg->data.result == CURLE_OK);
		lua_rawseti(L, -2, 2);
		lua_pushinteger(L, status);
		lua_rawseti(L, -2, 3);
		if (msg->data.result != CURLE_OK) {
			if (x->overflow)
				lua_pushfstring(L, "response larger than %d bytes", (int)x->max);
			else
				lua_pushstring(L, x->errbuf[0] ? x->errbuf : curl_easy_strerror(msg->data.result));
			lua_rawseti(L, -2, 4);
		}
		/* the rest of the body, if it was not collected by data() */
		if (x->len) {
			lua_pushlstring(L, x->buf, x->len);
			lua_rawseti(L, -2, 5);
		}
		lua_rawseti(L, -2, ++n);
		xfer_free(m, x);
	}
	return 1;
}

static int l_remove(lua_State *L)
{
	struct http_multi *m = check_multi(L);
	struct http_xfer *x = unlink_xfer(m, luaL_checkinteger(L, 2), NULL);

	if (x)
		xfer_free(m, x);
	lua_pushboolean(L, x != NULL);
	return 1;
}

static int l_close(lua_State *L)
{
	struct http_multi *m = luaL_checkudata(L, 1, HTTP_MT);

	while (m->xfers) {
		struct http_xfer *x = m->xfers;
		m->xfers = x->next;
		xfer_free(m, x);
	}
	if (m->multi)
		curl_multi_cleanup(m->multi);
	m->multi = NULL;
	free(m->changes);
	m->changes = NULL;
	m->nchanges = m->capchanges = 0;
	return 0;
}

static int l_base64_encode(lua_State *L)
{
	size_t len, outlen;
	const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
	luaL_Buffer b;
	char *out;

	outlen = sodium_base64_encoded_len(len, sodium_base64_VARIANT_ORIGINAL);
	out = luaL_buffinitsize(L, &b, outlen);
	sodium_bin2base64(out, outlen, s, len, sodium_base64_VARIANT_ORIGINAL);
	luaL_pushresultsize(&b, outlen - 1);
	return 1;
}

static int l_base64_decode(lua_State *L)
{
	size_t len, outlen = 0;
	const char *s = luaL_checklstring(L, 1, &len);
	luaL_Buffer b;
	unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, len / 4 * 3 + 3);

	if (sodium_base642bin(out, len / 4 * 3 + 3, s, len, NULL, &outlen, NULL, sodium_base64_VARIANT_ORIGINAL) !=
	    0) {
		luaL_pushresultsize(&b, 0);
		return wgo_fail(L, 0, "not valid base64");
	}
	luaL_pushresultsize(&b, outlen);
	return 1;
}

void wgo_open_http(lua_State *L)
{
	static const luaL_Reg methods[] = {
		{ "add", l_add },       { "socket_action", l_socket_action },
		{ "sockets", l_sockets }, { "timeout", l_timeout },
		{ "data", l_data },     { "done", l_done },
		{ "remove", l_remove }, { "close", l_close },
		{ NULL, NULL },
	};
	static const luaL_Reg funcs[] = {
		{ "http_multi", l_http_multi },
		{ "base64_encode", l_base64_encode },
		{ "base64_decode", l_base64_decode },
		{ NULL, NULL },
	};

	curl_global_init(CURL_GLOBAL_DEFAULT);
	if (luaL_newmetatable(L, HTTP_MT)) {
		luaL_newlib(L, methods);
		lua_setfield(L, -2, "__index");
		lua_pushcfunction(L, l_close);
		lua_setfield(L, -2, "__gc");
		lua_pushcfunction(L, l_close);
		lua_setfield(L, -2, "__close");
	}
	lua_pop(L, 1);
	luaL_setfuncs(L, funcs, 0);
}
