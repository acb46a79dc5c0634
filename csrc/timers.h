/* Protocol timers, driven only by the named event hooks below (as in the
 * kernel's timers.c).  All hooks are called with peer->lock held.  Timers are
 * deadlines in the peer; wg_proto_tick() runs the due ones. */
#ifndef WG_TIMERS_H
#define WG_TIMERS_H
#include "proto.h"

void wg_timers_data_sent(struct wg_peer *peer);
void wg_timers_data_received(struct wg_peer *peer);
void wg_timers_any_authenticated_packet_sent(struct wg_peer *peer);
void wg_timers_any_authenticated_packet_received(struct wg_peer *peer);
void wg_timers_any_authenticated_packet_traversal(struct wg_peer *peer);
void wg_timers_handshake_initiated(struct wg_peer *peer);
void wg_timers_handshake_complete(struct wg_peer *peer);
void wg_timers_session_derived(struct wg_peer *peer);
void wg_timers_stop(struct wg_peer *peer);
/* Runs the peer's due timers; returns its next deadline (0 = none) and sets
 * *gave_up when handshake retries were exhausted by this run. */
uint64_t wg_timers_expire(struct wg_peer *peer, uint64_t now, bool *gave_up);

/* Sending primitives the timers use (proto.c), peer->lock held. */
void wg_send_initiation_locked(struct wg_peer *peer, bool is_retry);
void wg_send_keepalive_locked(struct wg_peer *peer);
void wg_staged_clear_locked(struct wg_peer *peer);
#endif
