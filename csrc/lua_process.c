/* wgoverlay.core: the process (signals, daemonize and its ready report,
 * kill, getpid) and the list of UAPI sockets. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "device.h"
#include "lua_core.h"

/* Blocks SIGINT, SIGTERM and SIGHUP and waits for one (the engine's threads
 * have every signal blocked).  Returns its name. */
static int l_wait_signal(lua_State *L)
{
	sigset_t set;
	int sig = 0;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	while (sigwait(&set, &sig) != 0)
		;
	lua_pushstring(L, sig == SIGINT ? "INT" : sig == SIGTERM ? "TERM" : "HUP");
	return 1;
}

/* core.ignore_sigpipe(): a peer that closes a socket early must cost us that
 * connection, never the process (and with it the tunnel): writes then fail
 * with EPIPE instead.  Called first thing by bin/wgoverlay. */
static int l_ignore_sigpipe(lua_State *L)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_IGN;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGPIPE, &sa, NULL) < 0)
		return luaL_error(L, "sigaction(SIGPIPE): %s", strerror(errno));
	return 0;
}

/* core.daemonize() forks.  The parent blocks until the child reports with
 * core.ready(fd, ok, message) and returns "parent", ok, message; the child
 * (a new session, stdin on /dev/null) returns "child", fd.  Call it before
 * any engine thread exists. */
static int l_daemonize(lua_State *L)
{
	int p[2];
	pid_t pid;

	if (pipe2(p, O_CLOEXEC) < 0)
		return wgo_fail(L, errno, "%s", strerror(errno));
	pid = fork();
	if (pid < 0) {
		int e = errno;

		close(p[0]);
		close(p[1]);
		return wgo_fail(L, e, "%s", strerror(e));
	}
	if (pid > 0) {
		char buf[512];
		size_t len = 0;

		close(p[1]);
		for (;;) {
			ssize_t n = read(p[0], buf + len, sizeof(buf) - 1 - len);

			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0 || (len += (size_t)n) == sizeof(buf) - 1)
				break;
		}
		close(p[0]);
		buf[len] = '\0';
		lua_pushliteral(L, "parent");
		lua_pushboolean(L, len > 0 && buf[0] == '1');
		lua_pushstring(L, len > 1 ? buf + 1 : "the engine process exited during start-up");
		lua_pushinteger(L, pid);
		return 4;
	}
	close(p[0]);
	setsid();
	{
		int nul = open("/dev/null", O_RDWR | O_CLOEXEC);

		/* A daemon keeps none of its caller's descriptors: `x=$(wgoverlay up
		 * f)` must not wait for the engine to exit. */
		if (nul >= 0) {
			dup2(nul, 0);
			dup2(nul, 1);
			dup2(nul, 2);
			close(nul);
		}
	}
	lua_pushliteral(L, "child");
	lua_pushinteger(L, p[1]);
	return 2;
}

static int l_ready(lua_State *L)
{
	int fd = (int)luaL_checkinteger(L, 1);
	int ok = lua_toboolean(L, 2);
	size_t len;
	const char *msg = luaL_optlstring(L, 3, "", &len);
	char c = ok ? '1' : '0';

	if (write(fd, &c, 1) == 1 && len && write(fd, msg, len) < 0) {
		/* the parent is gone: nothing to tell */
	}
	close(fd);
	return 0;
}

static int l_kill(lua_State *L)
{
	lua_Integer pid = luaL_checkinteger(L, 1);
	const char *sig = luaL_optstring(L, 2, "TERM");
	int signo = !strcmp(sig, "TERM") ? SIGTERM : !strcmp(sig, "INT") ? SIGINT : !strcmp(sig, "KILL") ? SIGKILL : 0;

	if (!signo)
		return luaL_argerror(L, 2, "TERM, INT or KILL expected");
	if (pid <= 0)
		return luaL_argerror(L, 1, "pid must be positive");
	if (kill((pid_t)pid, signo) < 0)
		return wgo_fail(L, errno, "%s", strerror(errno));
	lua_pushboolean(L, 1);
	return 1;
}

/* Names of interfaces with a UAPI socket in /var/run/wireguard. */
static int l_list_sockets(lua_State *L)
{
	DIR *d = opendir(WG_UAPI_DIR);
	struct dirent *de;
	lua_Integer n = 0;

	lua_newtable(L);
	if (!d)
		return 1;
	while ((de = readdir(d))) {
		size_t len = strlen(de->d_name);

		if (len > 5 && !strcmp(de->d_name + len - 5, ".sock") && de->d_name[0] != '.') {
			lua_pushlstring(L, de->d_name, len - 5);
			lua_rawseti(L, -2, ++n);
		}
	}
	closedir(d);
	return 1;
}

static int l_getpid(lua_State *L)
{
	lua_pushinteger(L, getpid());
	return 1;
}

static const luaL_Reg process_funcs[] = {
	{ "wait_signal", l_wait_signal },
	{ "ignore_sigpipe", l_ignore_sigpipe },
	{ "daemonize", l_daemonize },
	{ "ready", l_ready },
	{ "getpid", l_getpid },
	{ "kill", l_kill },
	{ "list_sockets", l_list_sockets },
	{ NULL, NULL },
};

void wgo_open_process(lua_State *L)
{
	luaL_setfuncs(L, process_funcs, 0);
}
