/* The engine of one interface: TUN device, UDP sockets, worker threads, the
 * UAPI server and the event queue to Lua.  It owns its threads; the
 * datapath never calls into Lua.  Lua (csrc/lua_*.c, only through the
 * functions declared here) and the UAPI server reach
 * the same configuration functions: wg_device_apply() and wg_device_get(). */
#ifndef WG_DEVICE_H
#define WG_DEVICE_H
#include <net/if.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "proto.h"
#include "uapi.h"

#define WG_DEFAULT_MTU 1420
#define WG_EVENT_QUEUE_MAX 1024
#define WG_CONTROL_MAX 2048         /* largest control datagram handed to Lua */
#define WG_HANDSHAKE_QUEUE_MAX 4096 /* as MAX_QUEUED_INCOMING_HANDSHAKES */
#define WG_UAPI_DIR "/var/run/wireguard"
#define WG_MAX_RELAYS 8

enum wg_dev_event_type {
	WG_DEV_EVENT_HANDSHAKE = 1,
	WG_DEV_EVENT_ENDPOINT,
	WG_DEV_EVENT_STALE,
	WG_DEV_EVENT_DATAGRAM,
};

struct wg_dev_event {
	struct wg_dev_event *next;
	enum wg_dev_event_type type;
	uint8_t public_key[32];
	struct wg_endpoint ep;
	uint64_t time_real; /* epoch ns */
	size_t len;
	uint8_t data[]; /* datagram bytes for WG_DEV_EVENT_DATAGRAM */
};

struct wg_hs_item {
	struct wg_endpoint src;
	size_t len;
	uint8_t data[MESSAGE_INITIATION_SIZE];
};

struct wg_device_stats {
	atomic_uint_fast64_t rx_packets, tx_packets;
	atomic_uint_fast64_t handshake_queue_dropped;
	atomic_uint_fast64_t events_dropped;
	atomic_uint_fast64_t tun_write_errors, udp_send_errors;
	/* bytes through TURN relays, ChannelData headers included */
	atomic_uint_fast64_t relay_rx_bytes, relay_tx_bytes;
};

struct wg_device {
	char ifname[IFNAMSIZ];
	char sock_path[108];
	struct wg_proto proto;
	int tun_fd;
	atomic_uint mtu;
	int ifindex;

	pthread_rwlock_t sock_lock; /* the UDP fds below */
	int udp4, udp6;
	uint16_t listen_port;
	uint32_t fwmark;

	int stop_fd;     /* eventfd: all threads stop */
	int timer_fd;    /* timerfd (CLOCK_BOOTTIME) of the timer thread */
	int udp_stop_fd; /* eventfd: the UDP receiver alone stops */
	int uapi_fd;     /* listening unix socket, -1 if none */
	pthread_t tun_thread, udp_thread, hs_thread, timer_thread, uapi_thread;
	bool udp_running, uapi_running, threads_running;
	pthread_mutex_t cfg_mutex; /* serialises apply/get (UAPI vs Lua) */

	pthread_mutex_t hs_lock;
	pthread_cond_t hs_cond;
	struct wg_hs_item *hs_ring;
	unsigned hs_head, hs_count;
	uint64_t last_under_load; /* monotonic ns */

	pthread_mutex_t ev_lock;
	pthread_mutex_t tun_read_lock; /* held while reading + sending a TUN batch */
	pthread_mutex_t timer_lock;    /* serialises timerfd programming */
	uint64_t timer_armed;          /* timerfd deadline (0: disarmed); timer_lock */
	int ev_fd;                     /* eventfd: events pending (Lua polls it) */
	struct wg_dev_event *ev_head, *ev_tail;
	unsigned ev_count;
	atomic_bool control_enabled; /* hand non-WireGuard datagrams to Lua */

	/* TURN servers whose ChannelData the datapath unwraps (set from Lua). */
	pthread_mutex_t relay_lock;
	struct sockaddr_storage relays[WG_MAX_RELAYS];
	unsigned nrelays;
	atomic_uint relays_present;

	struct wg_device_stats stats;
};

struct wg_device_opts {
	bool uapi;    /* serve /var/run/wireguard/<ifname>.sock */
	unsigned mtu; /* 0 = WG_DEFAULT_MTU */
};

/* Creates the TUN interface, UDP sockets (random port) and threads.  On
 * failure returns NULL with a negative errno in *err and a message in msg. */
struct wg_device *wg_device_create(const char *ifname, const struct wg_device_opts *opts, int *err, char *msg,
				   size_t msglen);
/* Stops the threads, removes the socket, closes the TUN (the kernel removes
 * the interface) and wipes all keys.  Safe to call once. */
void wg_device_destroy(struct wg_device *dev);

/* Applies a parsed transaction as one step: nothing changes if it fails
 * (a listen port already in use is detected before anything is applied). */
int wg_device_apply(struct wg_device *dev, const struct wg_uapi_set *set, char *msg, size_t msglen);

/* Formats the UAPI `get` reply body (without errno=), malloc'd, into *out. */
int wg_device_get_uapi(struct wg_device *dev, char **out, size_t *outlen);

/* What status() reports of the interface and its peers, copied under the
 * configuration locks into malloc'd arrays (no keys but public ones). */
struct wg_device_snapshot_aip {
	uint8_t family, cidr;
	uint8_t addr[16];
};

struct wg_device_snapshot_peer {
	uint8_t public_key[32];
	bool has_endpoint;
	struct wg_endpoint endpoint;
	uint64_t last_handshake_real, rx_bytes, tx_bytes; /* epoch ns, bytes */
	uint16_t persistent_keepalive;
	size_t first_aip, n_aips; /* a range of snapshot->aips */
};

struct wg_device_snapshot {
	char ifname[IFNAMSIZ];
	bool has_public_key;
	uint8_t public_key[32];
	uint16_t listen_port;
	uint32_t fwmark;
	unsigned mtu;
	struct wg_device_snapshot_peer *peers;
	size_t n_peers, cap_peers;
	struct wg_device_snapshot_aip *aips;
	size_t n_aips, cap_aips;
};

/* Fills snap (zeroed by the caller); 0 or -ENOMEM.  Takes and releases the
 * locks itself and calls nothing else meanwhile.  Free with
 * wg_device_snapshot_free whatever it returned. */
int wg_device_snapshot(struct wg_device *dev, struct wg_device_snapshot *snap);
/* Frees the arrays and zeroes snap; idempotent. */
void wg_device_snapshot_free(struct wg_device_snapshot *snap);

/* The counters of the protocol and of the device, copied. */
struct wg_device_counters {
	uint64_t rx_junk, rx_bad_mac1, rx_cookie_sent, rx_ratelimited, rx_handshake_invalid, rx_unknown_index,
		rx_decrypt_failed, rx_replayed, rx_expired_key, rx_bad_inner, rx_wrong_source, tx_no_route,
		tx_staged_dropped, tx_bad_offload, handshakes_completed;
	uint64_t tx_initiations, tx_responses, rx_initiations, rx_responses, relay_rx_bytes, relay_tx_bytes;
	uint64_t rx_packets, tx_packets, handshake_queue_dropped, events_dropped, tun_write_errors, udp_send_errors;
	int live_keypairs;
};
void wg_device_get_stats(struct wg_device *dev, struct wg_device_counters *out);

const char *wg_device_ifname(const struct wg_device *dev);
/* From now on non-WireGuard datagrams go to the event queue (as
 * WG_DEV_EVENT_DATAGRAM); returns the eventfd that signals pending events. */
int wg_device_enable_control(struct wg_device *dev);
/* The MTU the datapath assumes (576..65535), e.g. after a path MTU change. */
void wg_device_set_mtu_hint(struct wg_device *dev, unsigned mtu);

/* Sends raw bytes from the WireGuard socket. */
/* ttl: 0 for the socket's default, else the IPv4 TTL / IPv6 hop limit of
 * this datagram (1-255). */
int wg_device_send_datagram(struct wg_device *dev, const struct sockaddr *to, const uint8_t *buf, size_t len, int ttl);
/* Pops one event (caller frees), NULL when empty. */
struct wg_dev_event *wg_device_pop_event(struct wg_device *dev);
int wg_device_initiate(struct wg_device *dev, const uint8_t public_key[32]);
/* Key rotation that keeps sessions: a new private key for the interface
 * (-EINVAL: none set yet, zero, or a peer's), and a peer's new public key
 * in place (-ENOENT: no peer old_key; -EEXIST: new_key is another peer's;
 * -EINVAL: it is ours). */
int wg_device_rotate_private_key(struct wg_device *dev, const uint8_t key[32]);
int wg_device_set_peer_public_key(struct wg_device *dev, const uint8_t old_key[32], const uint8_t new_key[32]);
/* Registers (add = true) or forgets a TURN server: ChannelData datagrams
 * from it are unwrapped in the datapath, the rest still go to Lua. */
int wg_device_set_relay(struct wg_device *dev, const struct sockaddr *server, bool add);
/* Reaches a peer through a relay channel (0 = back to a direct endpoint
 * given by server). */
int wg_device_set_peer_relay(struct wg_device *dev, const uint8_t public_key[32], const struct sockaddr *server,
			     uint16_t channel);
#endif
