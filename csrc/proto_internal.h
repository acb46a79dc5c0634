/* What the protocol's own files (proto.c, peer.c, send.c, receive.c)
 * share and nobody else calls. */
#ifndef WG_PROTO_INTERNAL_H
#define WG_PROTO_INTERNAL_H

#include "proto.h"

/* proto.c */
void wg_proto_precompute_static_static(struct wg_proto *p, struct wg_peer *peer);
void wg_proto_emit(struct wg_proto *p, enum wg_event_type type, struct wg_peer *peer, const struct wg_endpoint *ep);

/* send.c */
void wg_send_to_peer_locked(struct wg_peer *peer, const uint8_t *buf, size_t len);
void wg_send_staged_locked(struct wg_peer *peer);

#endif
