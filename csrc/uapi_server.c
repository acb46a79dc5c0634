/* The UAPI socket: how `wg` finds and configures a userspace interface.
 *
 * A connection carries requests, each "get=1" or "set=1" followed by lines
 * and ended by an empty line; every request gets a reply ending in
 * "errno=N\n\n" (0 or a negative errno).  `wg` first connects and closes
 * without a word (a probe): that is accepted and ignored.  A set request is
 * parsed whole before anything is applied, so a bad line changes nothing. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <signal.h>
#include <pthread.h>
#include <unistd.h>

#include <sodium.h>

#include "device.h"
#include "uapi.h"
#include "uapi_server.h"

#define READ_CHUNK 65536
#define CLIENT_TIMEOUT_S 5

static int sock_path(struct wg_device *dev, char *path, size_t len)
{
	int n = snprintf(path, len, "%s/%s.sock", WG_UAPI_DIR, dev->ifname);

	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

int wg_uapi_server_listen(struct wg_device *dev, char *msg, size_t msglen)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	char path[sizeof(sun.sun_path)], tmpdir[sizeof(WG_UAPI_DIR) + 16];
	int fd, r;

	if (sock_path(dev, path, sizeof(path)) < 0) {
		snprintf(msg, msglen, "UAPI socket path for \"%s\" too long", dev->ifname);
		return -ENAMETOOLONG;
	}
	if (mkdir(WG_UAPI_DIR, 0755) < 0 && errno != EEXIST) {
		r = -errno;
		snprintf(msg, msglen, "cannot create %s: %s%s", WG_UAPI_DIR, strerror(-r),
			 r == -EACCES || r == -EPERM ? " (needs root)" : "");
		return r;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		r = -errno;
		snprintf(msg, msglen, "cannot create UAPI socket: %s", strerror(-r));
		return r;
	}
	/* A socket file left by a killed engine is stale (connection refused);
	 * one that still answers belongs to a live engine, which we must not
	 * disturb, and any other failure is reported rather than guessed at. */
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0) {
		close(fd);
		snprintf(msg, msglen, "interface \"%s\" is already run by another process (%s answers)", dev->ifname,
			 path);
		return -EADDRINUSE;
	}
	r = errno;
	close(fd);
	if (r == ECONNREFUSED) {
		unlink(path);
	} else if (r != ENOENT) {
		snprintf(msg, msglen, "cannot check UAPI socket %s: %s", path, strerror(r));
		return -r;
	}

	/* Bind inside a private 0700 directory, tighten the mode, then move
	 * the socket into place: it is never connectable by others. */
	snprintf(tmpdir, sizeof(tmpdir), "%s/.wgo-XXXXXX", WG_UAPI_DIR);
	if (!mkdtemp(tmpdir)) {
		r = -errno;
		snprintf(msg, msglen, "cannot create a directory in %s: %s%s", WG_UAPI_DIR, strerror(-r),
			 r == -EACCES || r == -EPERM ? " (needs root)" : "");
		return r;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		r = -errno;
		goto out_rmdir;
	}
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/s", tmpdir);
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || chmod(sun.sun_path, 0600) < 0 || listen(fd, 16) < 0 ||
	    rename(sun.sun_path, path) < 0) {
		r = -errno;
		snprintf(msg, msglen, "cannot create UAPI socket %s: %s", path, strerror(-r));
		unlink(sun.sun_path);
		close(fd);
		goto out_rmdir;
	}
	rmdir(tmpdir);
	dev->uapi_fd = fd;
	snprintf(dev->sock_path, sizeof(dev->sock_path), "%s", path);
	return 0;
out_rmdir:
	rmdir(tmpdir);
	return r;
}

void wg_uapi_server_close(struct wg_device *dev)
{
	if (dev->uapi_fd < 0)
		return;
	close(dev->uapi_fd);
	dev->uapi_fd = -1;
	unlink(dev->sock_path);
}

static int append(char **buf, size_t *len, const char *s, size_t n)
{
	/* Never realloc: the reply to get=1 holds the private key, and a block
	 * realloc moves is freed unwiped. */
	char *nb = malloc(*len + n + 1);

	if (!nb)
		return -ENOMEM;
	if (*buf) {
		memcpy(nb, *buf, *len);
		sodium_memzero(*buf, *len);
		free(*buf);
	}
	memcpy(nb + *len, s, n);
	*len += n;
	nb[*len] = '\0';
	*buf = nb;
	return 0;
}

static int reply_errno(char **reply, size_t *replylen, int err)
{
	char line[32];
	int n = snprintf(line, sizeof(line), "errno=%d\n\n", err);

	return append(reply, replylen, line, (size_t)n);
}

int wg_uapi_handle_request(struct wg_device *dev, const char *req, size_t len, char **reply, size_t *replylen)
{
	char err[256] = "";
	int r;

	if (len >= 7 && !memcmp(req, "get=1\n", 6)) {
		char *body;
		size_t blen;

		if (len != 7) {
			fprintf(stderr, "%s: UAPI: get request with extra lines\n", dev->ifname);
			return reply_errno(reply, replylen, -EINVAL);
		}
		r = wg_device_get_uapi(dev, &body, &blen);
		if (r < 0)
			return reply_errno(reply, replylen, r);
		r = append(reply, replylen, body, blen);
		sodium_memzero(body, blen);
		free(body);
		return r < 0 ? r : reply_errno(reply, replylen, 0);
	}
	if (len >= 7 && !memcmp(req, "set=1\n", 6)) {
		struct wg_uapi_set set;

		/* body: after "set=1\n", without the request's final empty line */
		r = wg_uapi_parse_set(req + 6, len - 7, &set, err, sizeof(err));
		if (r == 0)
			r = wg_device_apply(dev, &set, err, sizeof(err));
		wg_uapi_set_free(&set);
		if (r < 0 && err[0])
			fprintf(stderr, "%s: UAPI: %s\n", dev->ifname, err);
		return reply_errno(reply, replylen, r);
	}
	fprintf(stderr, "%s: UAPI: unknown operation\n", dev->ifname);
	return reply_errno(reply, replylen, -EINVAL);
}

static bool write_all(int fd, const char *s, size_t len)
{
	while (len) {
		ssize_t w = send(fd, s, len, MSG_NOSIGNAL);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return false;
		}
		s += w;
		len -= (size_t)w;
	}
	return true;
}

static void send_reply(int fd, char *reply, size_t len)
{
	write_all(fd, reply, len);
	sodium_memzero(reply, len);
	free(reply);
}

static void serve(struct wg_device *dev, int fd)
{
	struct timeval tv = { .tv_sec = CLIENT_TIMEOUT_S };
	char *buf = NULL;
	size_t len = 0, cap = 0, scanned = 0;

	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	for (;;) {
		char *end, *reply = NULL;
		size_t replylen = 0, reqlen;
		ssize_t n;

		/* A request ends at its first empty line. */
		if (len && buf[0] == '\n') {
			end = buf;
		} else {
			size_t from = scanned ? scanned - 1 : 0;

			end = len > from ? memmem(buf + from, len - from, "\n\n", 2) : NULL;
			if (end)
				end++;
		}
		if (end) {
			reqlen = (size_t)(end - buf) + 1;
			if (reqlen > 1 && wg_uapi_handle_request(dev, buf, reqlen, &reply, &replylen) < 0)
				break;
			if (reply)
				send_reply(fd, reply, replylen);
			sodium_memzero(buf, reqlen);
			memmove(buf, buf + reqlen, len - reqlen);
			len -= reqlen;
			scanned = 0;
			continue;
		}
		scanned = len;
		if (len > WG_UAPI_MAX_MESSAGE) {
			fprintf(stderr, "%s: UAPI: request longer than %u bytes refused\n", dev->ifname,
				WG_UAPI_MAX_MESSAGE);
			if (reply_errno(&reply, &replylen, -EMSGSIZE) == 0)
				send_reply(fd, reply, replylen);
			break;
		}
		if (cap - len < READ_CHUNK) {
			size_t ncap = cap ? cap * 2 : READ_CHUNK * 2;
			char *nb = malloc(ncap);

			if (!nb)
				break;
			if (buf) {
				memcpy(nb, buf, len);
				sodium_memzero(buf, cap);
				free(buf);
			}
			buf = nb;
			cap = ncap;
		}
		{
			/* Wait for the client, but never past a stop of the device. */
			struct pollfd pfd[2] = { { .fd = fd, .events = POLLIN },
						 { .fd = dev->stop_fd, .events = POLLIN } };

			if (poll(pfd, 2, CLIENT_TIMEOUT_S * 1000) <= 0 || pfd[1].revents)
				break;
		}
		n = recv(fd, buf + len, cap - len, MSG_DONTWAIT);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0) {
			/* End of stream (or timeout) inside a request: it was
			 * truncated, so nothing of it is applied. */
			if (len && reply_errno(&reply, &replylen, -EPROTO) == 0)
				send_reply(fd, reply, replylen);
			break;
		}
		len += (size_t)n;
	}
	if (buf) {
		sodium_memzero(buf, cap);
		free(buf);
	}
}

static void *uapi_thread(void *arg)
{
	struct wg_device *dev = arg;
	struct pollfd pfd[2] = { { .fd = dev->stop_fd, .events = POLLIN }, { .fd = dev->uapi_fd, .events = POLLIN } };

	for (;;) {
		int fd;

		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pfd[0].revents)
			break;
		fd = accept4(dev->uapi_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		serve(dev, fd);
		close(fd);
	}
	return NULL;
}

int wg_uapi_server_start(struct wg_device *dev)
{
	sigset_t all, old;
	int r;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	r = pthread_create(&dev->uapi_thread, NULL, uapi_thread, dev);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	dev->uapi_running = r == 0;
	return -r;
}
