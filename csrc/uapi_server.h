/* The UAPI socket server of a device: /var/run/wireguard/<ifname>.sock,
 * mode 0600 in a root-owned directory, speaking the cross-platform protocol. */
#ifndef WG_UAPI_SERVER_H
#define WG_UAPI_SERVER_H
#include <stddef.h>

struct wg_device;

/* Creates the listening socket (replacing a stale one, refusing if a live
 * engine already answers on it).  0 or -errno with a message. */
int wg_uapi_server_listen(struct wg_device *dev, char *msg, size_t msglen);
int wg_uapi_server_start(struct wg_device *dev);
/* Closes and unlinks the socket (the thread must be stopped). */
void wg_uapi_server_close(struct wg_device *dev);
/* Handles one complete request (text up to and including its blank line)
 * and appends the reply to a malloc'd buffer.  Exposed for the fuzzer. */
int wg_uapi_handle_request(struct wg_device *dev, const char *req, size_t len, char **reply, size_t *replylen);
#endif
