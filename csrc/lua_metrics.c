/* The HTTP server behind `--metrics IP:PORT` (Prometheus scrapes): GNU
 * libmicrohttpd, with no thread of its own, driven by the caller's event
 * loop (lua/wgoverlay/metrics.lua runs it on luv), so that every answer is
 * rendered on the Lua thread from fresh values:
 *
 *   local s = core.metrics_server(ip, port, handler[, zone])
 *       -- listens on exactly ip:port (IPv4 or IPv6 text; port 0: any);
 *       -- nil, message, errno if the address cannot be bound
 *   s:fd()       -> an epoll fd: readable when s:run() has work to do
 *   s:run()      processes what is ready; handler may be called from here
 *   s:timeout()  -> ms until s:run() must be called again, or -1 (none)
 *   s:address()  -> ip, port actually bound
 *   s:close()    stops the server, closes every connection (idempotent)
 *
 *   handler(method, path) -> status, content_type, body[, allow]
 *
 * The handler runs under lua_pcall, inside libmicrohttpd's frames: no Lua
 * error ever longjmps through them.  A handler that raises or returns
 * something else than the above is answered with 500 (its error is kept:
 * s:last_error()).
 *
 * Against slow and malformed clients: libmicrohttpd parses the request
 * (answering 400/413/431 itself), an idle connection is closed after
 * CONN_TIMEOUT seconds, at most CONN_LIMIT connections are open (PER_IP
 * from one address) and a connection's request may use CONN_MEMORY bytes.
 * A request body is never read: only GET and HEAD have an answer. */
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <lauxlib.h>
#include <lua.h>
#include <microhttpd.h>

#include "lua_core.h"

#define SERVER_MT "wgoverlay.metrics_server"

enum {
	CONN_TIMEOUT = 10,       /* seconds a connection may stay idle */
	CONN_LIMIT = 32,         /* open connections in all */
	PER_IP = 8,              /* open connections from one address */
	CONN_MEMORY = 16 * 1024, /* request line + headers of one connection */
	BACKLOG = 64,
};

struct metrics_server {
	struct MHD_Daemon *daemon;
	lua_State *L;    /* the state of the s:run() in progress, else NULL */
	int handler_ref; /* registry reference of the handler */
	bool close_after_run;
	struct sockaddr_storage bound;
	char last_error[256];
};

/* What the protected call hands back to the access handler. */
struct request {
	struct metrics_server *s;
	const char *method, *url;
	unsigned status;
	struct MHD_Response *response;
};

static void server_stop(lua_State *L, struct metrics_server *s)
{
	if (s->daemon) {
		MHD_stop_daemon(s->daemon); /* closes the listening socket too */
		s->daemon = NULL;
	}
	if (s->handler_ref != LUA_NOREF) {
		luaL_unref(L, LUA_REGISTRYINDEX, s->handler_ref);
		s->handler_ref = LUA_NOREF;
	}
}

/* Runs under lua_pcall: the handler, and a response built from what it
 * returned.  Raises on anything wrong (caught by the pcall). */
static int call_handler(lua_State *L)
{
	struct request *rq = lua_touserdata(L, 1);
	const char *ctype, *body, *allow;
	lua_Integer status;
	size_t len;

	lua_settop(L, 0);
	lua_rawgeti(L, LUA_REGISTRYINDEX, rq->s->handler_ref);
	lua_pushstring(L, rq->method);
	lua_pushstring(L, rq->url);
	lua_call(L, 2, 4);
	status = luaL_checkinteger(L, 1);
	if (status < 100 || status > 599)
		return luaL_error(L, "handler returned HTTP status %d", (int)status);
	ctype = luaL_checkstring(L, 2);
	body = luaL_checklstring(L, 3, &len);
	allow = luaL_optstring(L, 4, NULL);
	rq->response = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
	if (!rq->response)
		return luaL_error(L, "out of memory");
	if (MHD_add_response_header(rq->response, MHD_HTTP_HEADER_CONTENT_TYPE, ctype) != MHD_YES ||
	    (allow && MHD_add_response_header(rq->response, MHD_HTTP_HEADER_ALLOW, allow) != MHD_YES)) {
		MHD_destroy_response(rq->response);
		rq->response = NULL;
		return luaL_error(L, "handler returned a header value that HTTP cannot carry");
	}
	rq->status = (unsigned)status;
	return 0;
}

static enum MHD_Result answer_text(struct MHD_Connection *c, unsigned status, const char *text)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
	enum MHD_Result ret;

	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
				  const char *version, const char *upload_data, size_t *upload_data_size,
				  void **req_cls)
{
	struct metrics_server *s = cls;
	struct request rq = { .s = s, .method = method, .url = url };
	lua_State *L = s->L;
	enum MHD_Result ret;
	int r;

	(void)version;
	(void)upload_data;
	(void)upload_data_size;
	(void)req_cls;
	/* First call (headers complete): answer at once; the body of a
	 * request, if any, is not read (the connection is closed after). */
	if (!L || s->handler_ref == LUA_NOREF)
		return answer_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting down\n");
	if (!lua_checkstack(L, 8))
		return answer_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal error\n");
	lua_pushcfunction(L, call_handler);
	lua_pushlightuserdata(L, &rq);
	r = lua_pcall(L, 1, 0, 0);
	if (r != LUA_OK) {
		const char *msg = lua_tostring(L, -1);

		snprintf(s->last_error, sizeof(s->last_error), "%s", msg ? msg : "(error object is not a string)");
		lua_pop(L, 1);
		return answer_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal error\n");
	}
	ret = MHD_queue_response(c, rq.status, rq.response);
	MHD_destroy_response(rq.response);
	return ret;
}

static struct metrics_server *check_server(lua_State *L)
{
	struct metrics_server *s = luaL_checkudata(L, 1, SERVER_MT);

	if (!s->daemon)
		luaL_error(L, "metrics server is closed");
	return s;
}

static int parse_addr(lua_State *L, const char *ip, lua_Integer port, const char *zone, struct sockaddr_storage *ss,
		      socklen_t *sl)
{
	struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	if (!zone && inet_pton(AF_INET, ip, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)port);
		*sl = sizeof(*in4);
		return 0;
	}
	if (inet_pton(AF_INET6, ip, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)port);
		if (zone) {
			char *end;
			unsigned long n = strtoul(zone, &end, 10);

			in6->sin6_scope_id = *zone && !*end ? (uint32_t)n : if_nametoindex(zone);
			if (!in6->sin6_scope_id)
				return -1;
		}
		*sl = sizeof(*in6);
		return 0;
	}
	return -1;
}

/* core.metrics_server(ip, port, handler[, zone]) */
static int l_metrics_server(lua_State *L)
{
	const char *ip = luaL_checkstring(L, 1);
	lua_Integer port = luaL_checkinteger(L, 2);
	const char *zone = luaL_optstring(L, 4, NULL);
	struct sockaddr_storage ss;
	struct metrics_server *s;
	socklen_t sl;
	int fd, one = 1, e;

	luaL_checktype(L, 3, LUA_TFUNCTION);
	luaL_argcheck(L, port >= 0 && port <= 65535, 2, "port out of range");
	if (parse_addr(L, ip, port, zone, &ss, &sl) < 0)
		return wgo_fail(L, EINVAL, "metrics: \"%s\" is not an IP address%s", ip,
				zone ? " with a known interface zone" : "");
	s = lua_newuserdatauv(L, sizeof(*s), 0);
	memset(s, 0, sizeof(*s));
	s->handler_ref = LUA_NOREF;
	luaL_setmetatable(L, SERVER_MT);

	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return wgo_fail(L, errno, "metrics: socket: %s", strerror(errno));
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, BACKLOG) < 0) {
		e = errno;
		close(fd);
		return wgo_fail(L, e, "metrics: cannot listen on %s port %d: %s", ip, (int)port, strerror(e));
	}
	sl = sizeof(s->bound);
	getsockname(fd, (struct sockaddr *)&s->bound, &sl);
	s->daemon = MHD_start_daemon(MHD_USE_EPOLL | (ss.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0), 0, NULL, NULL,
				     on_request, s, MHD_OPTION_LISTEN_SOCKET, fd, MHD_OPTION_CONNECTION_TIMEOUT,
				     (unsigned)CONN_TIMEOUT, MHD_OPTION_CONNECTION_LIMIT, (unsigned)CONN_LIMIT,
				     MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)PER_IP,
				     MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY, MHD_OPTION_END);
	if (!s->daemon) {
		close(fd);
		return wgo_fail(L, 0, "metrics: libmicrohttpd could not start on %s port %d", ip, (int)port);
	}
	lua_pushvalue(L, 3);
	s->handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 1;
}

static int l_fd(lua_State *L)
{
	struct metrics_server *s = check_server(L);
	const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_EPOLL_FD);

	if (!info)
		return wgo_fail(L, 0, "metrics: no epoll fd");
	lua_pushinteger(L, info->epoll_fd);
	return 1;
}

static int l_run(lua_State *L)
{
	struct metrics_server *s = check_server(L);
	enum MHD_Result r;

	if (s->L)
		return luaL_error(L, "metrics: run() called from its own handler");
	s->L = L;
	r = MHD_run(s->daemon);
	s->L = NULL;
	if (s->close_after_run)
		server_stop(L, s);
	if (r != MHD_YES)
		return wgo_fail(L, 0, "metrics: MHD_run failed");
	lua_pushboolean(L, 1);
	return 1;
}

static int l_timeout(lua_State *L)
{
	struct metrics_server *s = check_server(L);
	MHD_UNSIGNED_LONG_LONG ms;

	if (MHD_get_timeout(s->daemon, &ms) != MHD_YES)
		lua_pushinteger(L, -1);
	else
		lua_pushinteger(L, ms > (MHD_UNSIGNED_LONG_LONG)INT32_MAX ? INT32_MAX : (lua_Integer)ms);
	return 1;
}

static int l_address(lua_State *L)
{
	struct metrics_server *s = check_server(L);
	char ip[INET6_ADDRSTRLEN];

	if (s->bound.ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&s->bound;

		inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
		lua_pushstring(L, ip);
		lua_pushinteger(L, ntohs(a->sin6_port));
	} else {
		const struct sockaddr_in *a = (const struct sockaddr_in *)&s->bound;

		inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
		lua_pushstring(L, ip);
		lua_pushinteger(L, ntohs(a->sin_port));
	}
	return 2;
}

static int l_last_error(lua_State *L)
{
	struct metrics_server *s = luaL_checkudata(L, 1, SERVER_MT);

	if (!s->last_error[0])
		return 0;
	lua_pushstring(L, s->last_error);
	return 1;
}

static int l_close(lua_State *L)
{
	struct metrics_server *s = luaL_checkudata(L, 1, SERVER_MT);

	if (s->L) {
		/* from the handler, inside MHD_run: stop once it returns */
		s->close_after_run = true;
		return 0;
	}
	server_stop(L, s);
	return 0;
}

static const luaL_Reg server_methods[] = {
	{ "fd", l_fd },
	{ "run", l_run },
	{ "timeout", l_timeout },
	{ "address", l_address },
	{ "last_error", l_last_error },
	{ "close", l_close },
	{ NULL, NULL },
};

static const luaL_Reg server_meta[] = {
	{ "__gc", l_close },
	{ NULL, NULL },
};

static const luaL_Reg metrics_funcs[] = {
	{ "metrics_server", l_metrics_server },
	{ NULL, NULL },
};

void wgo_open_metrics(lua_State *L)
{
	luaL_newmetatable(L, SERVER_MT);
	luaL_setfuncs(L, server_meta, 0);
	lua_newtable(L);
	luaL_setfuncs(L, server_methods, 0);
	lua_setfield(L, -2, "__index");
	lua_pop(L, 1);
	luaL_setfuncs(L, metrics_funcs, 0);
}
