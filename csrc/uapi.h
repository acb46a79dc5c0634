/* Cross-platform UAPI protocol (the text protocol `wg` speaks to userspace
 * implementations over /var/run/wireguard/<ifname>.sock).
 *
 * This file is pure: it parses a complete `set=1` message into a transaction
 * (struct wg_uapi_set) without touching any device, so that a bad line
 * rejects the whole message and nothing half-parsed is applied.  The device
 * layer applies a parsed transaction under its configuration lock. */
#ifndef WG_UAPI_H
#define WG_UAPI_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>

#define WG_KEY_LEN 32
/* Upper bound for one message (10,000 peers with several allowed IPs each fit
 * comfortably); longer messages are refused with -EMSGSIZE. */
#define WG_UAPI_MAX_MESSAGE (64u << 20)

struct wg_uapi_aip {
	uint8_t family; /* AF_INET or AF_INET6 */
	uint8_t cidr;
	bool remove; /* the "allowed_ip=-prefix" removal form */
	uint8_t addr[16];
};

/* One "public_key=" entry, in message order.  The same public key may head
 * several entries; apply them in order.  remove: the peer is removed and
 * the entry's other fields are to be ignored (wireguard-go turns the peer
 * into a placeholder).  replace_allowed_ips: drop the peer's allowed IPs
 * before adding aips (allowed_ip lines that preceded the replace line in
 * the same entry are already discarded by the parser). */
struct wg_uapi_peer {
	uint8_t public_key[WG_KEY_LEN];
	bool remove;
	bool update_only;
	bool has_preshared_key;
	uint8_t preshared_key[WG_KEY_LEN]; /* all zero = clear */
	bool has_endpoint;
	union {
		struct sockaddr sa;
		struct sockaddr_in in4;
		struct sockaddr_in6 in6;
	} endpoint;
	bool has_keepalive;
	uint16_t keepalive; /* seconds, 0 = off */
	bool replace_allowed_ips;
	size_t n_aips, cap_aips;
	struct wg_uapi_aip *aips;
};

struct wg_uapi_set {
	bool has_private_key;
	uint8_t private_key[WG_KEY_LEN]; /* all zero = clear */
	bool has_listen_port;
	uint16_t listen_port;
	bool has_fwmark;
	uint32_t fwmark;
	bool replace_peers;
	size_t n_peers, cap_peers;
	struct wg_uapi_peer *peers;
};

/* Parses the body of a set operation: the lines after "set=1\n", up to but
 * not including the terminating empty line (body may or may not end with a
 * '\n').  On failure returns a negative errno (-EINVAL for a malformed or
 * unknown line, -EPROTO for an unsupported protocol_version, -ENOMEM) and
 * writes a message quoting the offending line (never a key value: key
 * values are replaced by "(hidden)") into err.  out is always safe to pass
 * to wg_uapi_set_free afterwards. */
int wg_uapi_parse_set(const char *body, size_t len, struct wg_uapi_set *out, char *err, size_t errlen);
/* Frees the arrays and wipes every key in the transaction. */
void wg_uapi_set_free(struct wg_uapi_set *s);

/* Helpers shared with the Lua binding and the device layer. */
bool wg_hex_to_key(uint8_t key[WG_KEY_LEN], const char *hex, size_t len);
void wg_key_to_hex(char hex[2 * WG_KEY_LEN + 1], const uint8_t key[WG_KEY_LEN]);
/* Base64 form used by wg(8): 44 characters with one '=' pad; like
 * wireguard-tools, non-canonical spellings (nonzero trailing bits) are
 * refused.  The key decoders write key on success only. */
bool wg_base64_to_key(uint8_t key[WG_KEY_LEN], const char *b64, size_t len);
void wg_key_to_base64(char b64[45], const uint8_t key[WG_KEY_LEN]);
/* "1.2.3.4:51820", "[fd00::1]:51820" (an optional %scope in the brackets:
 * an interface name or number).  Numeric only: no DNS resolution in the
 * engine.  The port (0..65535) is required.  out is written on success only. */
bool wg_parse_endpoint(const char *s, size_t len, struct sockaddr_storage *out);
/* "10.0.0.0/8", "fd00::/64"; a bare address means /32 or /128. Host bits are kept as given. */
bool wg_parse_cidr(const char *s, size_t len, uint8_t *family, uint8_t addr[16], uint8_t *cidr);
/* Formats an endpoint as wg(8) expects ("1.2.3.4:5", "[::1]:5", a nonzero
 * scope id as "[fe80::1%2]:5"); returns the length written without the NUL,
 * or 0 (and out = "" if outlen > 0) for an unknown family or a too small
 * buffer. */
size_t wg_format_endpoint(char *out, size_t outlen, const struct sockaddr *sa);
/* ---- get=1: the reply text, in wg(8)'s order.  The writer grows one
 * buffer and wipes every buffer it drops (the text holds the private key). */
struct wg_uapi_writer {
	char *s;
	size_t len, cap;
	bool oom;
};

/* What get=1 says of one peer (its allowed IPs follow with put_allowed_ip). */
struct wg_uapi_peer_state {
	uint8_t public_key[WG_KEY_LEN];
	uint8_t preshared_key[WG_KEY_LEN];
	const struct sockaddr *endpoint; /* NULL: none */
	uint64_t last_handshake_ns;      /* epoch ns, 0 = never */
	uint64_t tx_bytes, rx_bytes;
	uint16_t persistent_keepalive;
};

/* private_key NULL: the device has none. */
void wg_uapi_put_interface(struct wg_uapi_writer *w, const uint8_t *private_key, uint16_t listen_port, uint32_t fwmark);
void wg_uapi_put_peer(struct wg_uapi_writer *w, const struct wg_uapi_peer_state *p);
void wg_uapi_put_allowed_ip(struct wg_uapi_writer *w, int family, const uint8_t *addr, uint8_t cidr);
/* Hands the text over (*out, malloc'd, NUL-terminated) and resets the
 * writer; -ENOMEM (and nothing to free) if any put ran out of memory. */
int wg_uapi_writer_finish(struct wg_uapi_writer *w, char **out, size_t *outlen);

/* ---- get=1: the reply, parsed back (the UAPI client: `wgoverlay status`
 * reading an engine in another process). */

/* One peer of a get reply.  endpoint is the text as sent (checked with
 * wg_parse_endpoint, which gave endpoint_addr). */
struct wg_uapi_get_peer {
	uint8_t public_key[WG_KEY_LEN];
	bool has_preshared_key;
	uint8_t preshared_key[WG_KEY_LEN];
	bool has_endpoint;
	char endpoint[128];
	struct sockaddr_storage endpoint_addr;
	uint64_t last_handshake_sec, last_handshake_nsec;
	uint64_t rx_bytes, tx_bytes;
	uint16_t persistent_keepalive;
	size_t n_aips, cap_aips;
	struct wg_uapi_aip *aips; /* remove is always false */
};

struct wg_uapi_get {
	bool has_private_key;
	uint8_t private_key[WG_KEY_LEN];
	bool has_listen_port;
	uint16_t listen_port;
	bool has_fwmark;
	uint32_t fwmark;
	bool has_errno;  /* false: the reply was cut short */
	int errno_value; /* as sent: 0 = success */
	size_t n_peers, cap_peers;
	struct wg_uapi_get_peer *peers;
};

/* Parses a get reply: the lines up to the empty line that ends it (or the
 * end of text), "errno=N" included.  Like wg(8), unknown keys are ignored;
 * a line without '=', a key, number, endpoint or allowed_ip that does not
 * parse, or a peer field before any public_key is refused: -EINVAL (or
 * -ENOMEM, -EMSGSIZE) with a message quoting the line (key values hidden)
 * in err.  out is always safe to pass to wg_uapi_get_free afterwards (and
 * is empty after a failure). */
int wg_uapi_parse_get(const char *text, size_t len, struct wg_uapi_get *out, char *err, size_t errlen);
/* Frees the arrays and wipes every key (the private key above all). */
void wg_uapi_get_free(struct wg_uapi_get *g);

#endif
