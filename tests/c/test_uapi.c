/* Unit tests for csrc/uapi.c: the UAPI set=1 parser and the key, endpoint
 * and CIDR helpers.  The messages come byte for byte from the wg(8) trace in
 * shared/reference/uapi-trace.txt (wireguard-tools v1.0.20210914). */
#include <errno.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <sodium.h>

#include "testlib.h"
#include "uapi.h"

#define PRIV_HEX "788e3a7e152fdd83d31664cb38b52a6b33703dee2ac2c81442442614a3feb04b"
#define PRIV_B64 "eI46fhUv3YPTFmTLOLUqazNwPe4qwsgUQkQmFKP+sEs="
#define PUB_B64 "y9GBLvtTKQOmytb6+U+XYEu+RIqBzziGV8niI5F8VjA="
#define PEER_HEX "4409016bb920c521b59af95bbdbbeff5b3a378c4713951641f9b17d798808f23"
#define PEER_B64 "RAkBa7kgxSG1mvlbvbvv9bOjeMRxOVFkH5sX15iAjyM="
#define PSK_HEX "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define ZERO_HEX "0000000000000000000000000000000000000000000000000000000000000000"

/* Bodies (after "set=1\n") of the set messages in the trace. */
static const char trace_set_peer[] = "private_key=" PRIV_HEX "\n"
				     "listen_port=51820\n"
				     "fwmark=0\n"
				     "public_key=" PEER_HEX "\n"
				     "endpoint=192.0.2.2:51821\n"
				     "persistent_keepalive_interval=25\n"
				     "replace_allowed_ips=true\n"
				     "allowed_ip=10.99.0.2/32\n"
				     "allowed_ip=10.99.1.0/24\n"
				     "\n";
static const char trace_remove[] = "public_key=" PEER_HEX "\n"
				   "remove=true\n"
				   "\n";
static const char trace_setconf[] = "private_key=" PRIV_HEX "\n"
				    "listen_port=51820\n"
				    "fwmark=0\n"
				    "replace_peers=true\n"
				    "public_key=" PEER_HEX "\n"
				    "endpoint=192.0.2.2:51821\n"
				    "replace_allowed_ips=true\n"
				    "allowed_ip=10.99.0.2/32\n"
				    "\n";

static char err[256];

static int parse(const char *body, struct wg_uapi_set *s)
{
	memset(err, 'X', sizeof(err));
	return wg_uapi_parse_set(body, strlen(body), s, err, sizeof(err));
}

static bool is_all_zero(const void *p, size_t n)
{
	const unsigned char *b = p;

	for (size_t i = 0; i < n; i++)
		if (b[i])
			return false;
	return true;
}

/* True if any 8-character window of secret (either case) appears in s. */
static bool leaks(const char *s, const char *secret)
{
	size_t n = strlen(secret);

	for (size_t i = 0; i + 8 <= n; i++) {
		char w[9], u[9];

		memcpy(w, secret + i, 8);
		w[8] = '\0';
		for (int j = 0; j < 9; j++)
			u[j] = (char)((w[j] >= 'a' && w[j] <= 'f') ? w[j] - 32 : w[j]);
		if (strstr(s, w) || strstr(s, u))
			return true;
	}
	return false;
}

/* Parses body, expects ret and an error containing want (NULL: any), and
 * checks that out was left empty and err is NUL-terminated. */
static void expect_fail(const char *body, size_t len, int ret, const char *want, int line)
{
	struct wg_uapi_set s;
	int r;

	memset(err, 'X', sizeof(err));
	r = wg_uapi_parse_set(body, len, &s, err, sizeof(err));
	if (r != ret || !memchr(err, '\0', sizeof(err)) || (want && !strstr(err, want)) ||
	    !is_all_zero(&s, sizeof(s))) {
		tl_fail++;
		fprintf(stderr, "FAIL line %d: ret %d (want %d), err \"%.*s\"\n", line, r, ret, (int)sizeof(err), err);
	} else {
		tl_pass++;
	}
	CHECK(err[0] != '\0');
	CHECK(!leaks(err, PRIV_HEX));
	CHECK(!leaks(err, PSK_HEX));
	CHECK(!leaks(err, PRIV_B64));
	wg_uapi_set_free(&s);
}
#define FAILS(body, ret, want) expect_fail(body, strlen(body), ret, want, __LINE__)

static void check_aip(const struct wg_uapi_aip *a, int family, const char *addr, int cidr, bool remove)
{
	uint8_t want[16] = { 0 };

	CHECK_EQ(a->family, family);
	CHECK_EQ(a->cidr, cidr);
	CHECK_EQ(a->remove, remove);
	CHECK(inet_pton(family, addr, want) == 1);
	CHECK_MEM(a->addr, want, 16);
}

static void test_trace_messages(void)
{
	struct wg_uapi_set s;
	uint8_t priv[32], peer[32];
	const struct wg_uapi_peer *p;

	tl_hex2bin(priv, PRIV_HEX, 32);
	tl_hex2bin(peer, PEER_HEX, 32);

	/* wg set wgl0 private-key ... peer ... */
	CHECK_EQ(parse(trace_set_peer, &s), 0);
	CHECK_EQ(err[0], '\0');
	CHECK(s.has_private_key);
	CHECK_MEM(s.private_key, priv, 32);
	CHECK(s.has_listen_port);
	CHECK_EQ(s.listen_port, 51820);
	CHECK(s.has_fwmark);
	CHECK_EQ(s.fwmark, 0);
	CHECK(!s.replace_peers);
	CHECK_EQ(s.n_peers, 1);
	p = &s.peers[0];
	CHECK_MEM(p->public_key, peer, 32);
	CHECK(!p->remove && !p->update_only && !p->has_preshared_key);
	CHECK(p->has_endpoint);
	CHECK_EQ(p->endpoint.sa.sa_family, AF_INET);
	CHECK_EQ(ntohs(p->endpoint.in4.sin_port), 51821);
	CHECK_EQ(ntohl(p->endpoint.in4.sin_addr.s_addr), 0xc0000202);
	CHECK(p->has_keepalive);
	CHECK_EQ(p->keepalive, 25);
	CHECK(p->replace_allowed_ips);
	CHECK_EQ(p->n_aips, 2);
	check_aip(&p->aips[0], AF_INET, "10.99.0.2", 32, false);
	check_aip(&p->aips[1], AF_INET, "10.99.1.0", 24, false);
	wg_uapi_set_free(&s);
	CHECK(is_all_zero(&s, sizeof(s)));

	/* wg set wgl0 peer ... remove */
	CHECK_EQ(parse(trace_remove, &s), 0);
	CHECK(!s.has_private_key && !s.has_listen_port && !s.has_fwmark && !s.replace_peers);
	CHECK_EQ(s.n_peers, 1);
	CHECK_MEM(s.peers[0].public_key, peer, 32);
	CHECK(s.peers[0].remove);
	CHECK(!s.peers[0].has_endpoint);
	CHECK_EQ(s.peers[0].n_aips, 0);
	wg_uapi_set_free(&s);

	/* wg setconf */
	CHECK_EQ(parse(trace_setconf, &s), 0);
	CHECK(s.replace_peers);
	CHECK_EQ(s.n_peers, 1);
	CHECK(!s.peers[0].has_keepalive);
	CHECK(s.peers[0].replace_allowed_ips);
	CHECK_EQ(s.peers[0].n_aips, 1);
	check_aip(&s.peers[0].aips[0], AF_INET, "10.99.0.2", 32, false);
	wg_uapi_set_free(&s);

	/* The body may omit the final newline, and the empty line may be absent. */
	CHECK_EQ(parse("listen_port=1", &s), 0);
	CHECK(s.has_listen_port && s.listen_port == 1);
	wg_uapi_set_free(&s);
	CHECK_EQ(parse("listen_port=1\n", &s), 0);
	CHECK(s.has_listen_port && s.listen_port == 1);
	wg_uapi_set_free(&s);
	/* Empty body / empty first line: nothing to do. */
	CHECK_EQ(parse("", &s), 0);
	CHECK(is_all_zero(&s, sizeof(s)));
	CHECK_EQ(parse("\n", &s), 0);
	CHECK(is_all_zero(&s, sizeof(s)));
	CHECK_EQ(wg_uapi_parse_set(NULL, 0, &s, NULL, 0), 0);
	/* The empty line ends the message: what follows is not parsed. */
	CHECK_EQ(parse("listen_port=7\n\nthis is not parsed\n", &s), 0);
	CHECK_EQ(s.listen_port, 7);
	wg_uapi_set_free(&s);
}

static void test_every_key(void)
{
	struct wg_uapi_set s;
	uint8_t psk[32], peer[32];

	tl_hex2bin(psk, PSK_HEX, 32);
	tl_hex2bin(peer, PEER_HEX, 32);

	CHECK_EQ(parse("private_key=" ZERO_HEX "\n"
		       "listen_port=65535\n"
		       "fwmark=4294967295\n"
		       "replace_peers=true\n"
		       "public_key=" PEER_HEX "\n"
		       "update_only=true\n"
		       "preshared_key=" PSK_HEX "\n"
		       "endpoint=[fd00::1]:51820\n"
		       "persistent_keepalive_interval=65535\n"
		       "protocol_version=1\n"
		       "replace_allowed_ips=true\n"
		       "allowed_ip=fd00::/64\n"
		       "allowed_ip=-10.0.0.0/8\n"
		       "allowed_ip=-::/0\n"
		       "allowed_ip=0.0.0.0/0\n"
		       "public_key=" PSK_HEX "\n"
		       "preshared_key=" ZERO_HEX "\n"
		       "persistent_keepalive_interval=0\n"
		       "\n",
		       &s),
		 0);
	CHECK(s.has_private_key);
	CHECK(is_all_zero(s.private_key, 32)); /* all-zero = clear */
	CHECK_EQ(s.listen_port, 65535);
	CHECK_EQ(s.fwmark, 4294967295u);
	CHECK(s.replace_peers);
	CHECK_EQ(s.n_peers, 2);
	CHECK_MEM(s.peers[0].public_key, peer, 32);
	CHECK(s.peers[0].update_only);
	CHECK(!s.peers[0].remove);
	CHECK(s.peers[0].has_preshared_key);
	CHECK_MEM(s.peers[0].preshared_key, psk, 32);
	CHECK(s.peers[0].has_endpoint);
	CHECK_EQ(s.peers[0].endpoint.sa.sa_family, AF_INET6);
	CHECK_EQ(ntohs(s.peers[0].endpoint.in6.sin6_port), 51820);
	CHECK_EQ(s.peers[0].endpoint.in6.sin6_scope_id, 0);
	CHECK_EQ(s.peers[0].keepalive, 65535);
	CHECK(s.peers[0].replace_allowed_ips);
	CHECK_EQ(s.peers[0].n_aips, 4);
	check_aip(&s.peers[0].aips[0], AF_INET6, "fd00::", 64, false);
	check_aip(&s.peers[0].aips[1], AF_INET, "10.0.0.0", 8, true);
	check_aip(&s.peers[0].aips[2], AF_INET6, "::", 0, true);
	check_aip(&s.peers[0].aips[3], AF_INET, "0.0.0.0", 0, false);
	CHECK_MEM(s.peers[1].public_key, psk, 32);
	CHECK(s.peers[1].has_preshared_key);
	CHECK(is_all_zero(s.peers[1].preshared_key, 32));
	CHECK(s.peers[1].has_keepalive);
	CHECK_EQ(s.peers[1].keepalive, 0);
	CHECK(!s.peers[1].replace_allowed_ips);
	CHECK_EQ(s.peers[1].n_aips, 0);
	wg_uapi_set_free(&s);

	/* Uppercase hex is accepted; numbers may have leading zeros. */
	CHECK_EQ(parse("private_key=788E3A7E152FDD83D31664CB38B52A6B33703DEE2AC2C81442442614A3FEB04B\n"
		       "listen_port=00080\n",
		       &s),
		 0);
	{
		uint8_t priv[32];

		tl_hex2bin(priv, PRIV_HEX, 32);
		CHECK_MEM(s.private_key, priv, 32);
	}
	CHECK_EQ(s.listen_port, 80);
	wg_uapi_set_free(&s);

	/* Later device lines override earlier ones. */
	CHECK_EQ(parse("listen_port=1\nlisten_port=2\n", &s), 0);
	CHECK_EQ(s.listen_port, 2);
	wg_uapi_set_free(&s);

	/* Duplicate public_key lines: separate entries, in order. */
	CHECK_EQ(parse("public_key=" PEER_HEX "\nallowed_ip=10.0.0.1/32\n"
		       "public_key=" PEER_HEX "\nremove=true\n"
		       "public_key=" PEER_HEX "\nendpoint=1.2.3.4:5\n",
		       &s),
		 0);
	CHECK_EQ(s.n_peers, 3);
	CHECK_EQ(s.peers[0].n_aips, 1);
	CHECK(!s.peers[0].remove);
	CHECK(s.peers[1].remove);
	CHECK(s.peers[2].has_endpoint && !s.peers[2].remove);
	CHECK_MEM(s.peers[2].public_key, peer, 32);
	wg_uapi_set_free(&s);

	/* replace_allowed_ips discards the allowed_ip lines before it in the entry. */
	CHECK_EQ(parse("public_key=" PEER_HEX "\nallowed_ip=10.0.0.1/32\n"
		       "replace_allowed_ips=true\nallowed_ip=10.0.0.2/32\n",
		       &s),
		 0);
	CHECK(s.peers[0].replace_allowed_ips);
	CHECK_EQ(s.peers[0].n_aips, 1);
	check_aip(&s.peers[0].aips[0], AF_INET, "10.0.0.2", 32, false);
	wg_uapi_set_free(&s);

	/* Host bits are kept as given. */
	CHECK_EQ(parse("public_key=" PEER_HEX "\nallowed_ip=10.1.2.3/8\nallowed_ip=fd00::1/64\n", &s), 0);
	check_aip(&s.peers[0].aips[0], AF_INET, "10.1.2.3", 8, false);
	check_aip(&s.peers[0].aips[1], AF_INET6, "fd00::1", 64, false);
	wg_uapi_set_free(&s);
}

static void test_errors(void)
{
	static const char nul_body[] = "listen_port=1\nfwmark=1\0"
				       "2\n";
	static const char nul_key[] = "private_key=" PRIV_HEX "\0\n";
	struct wg_uapi_set s;
	char small[16];

	/* The exact message format. */
	CHECK_EQ(parse("listen_port=abc\n", &s), -EINVAL);
	CHECK(!strcmp(err, "invalid UAPI line \"listen_port=abc\": listen_port must be 0..65535"));

	/* Unknown keys, device and peer. */
	FAILS("bogus=1\n", -EINVAL, "\"bogus=1\": unknown key");
	FAILS("public_key=" PEER_HEX "\nbogus=1\n", -EINVAL, "unknown key");
	FAILS("=1\n", -EINVAL, "unknown key");
	FAILS("Listen_port=1\n", -EINVAL, "unknown key");
	FAILS("listen_port =1\n", -EINVAL, "unknown key");
	FAILS("set=1\n", -EINVAL, "unknown key");
	/* get-only keys are not settable */
	FAILS("public_key=" PEER_HEX "\ntx_bytes=0\n", -EINVAL, "unknown key");
	/* Missing '='. */
	FAILS("listen_port\n", -EINVAL, "\"listen_port\": missing '='");
	FAILS("listen_port=1\ngarbage\n", -EINVAL, "missing '='");
	/* Bad / short / long hex keys. */
	FAILS("private_key="
	      "788e3a7e152fdd83d31664cb38b52a6b33703dee2ac2c81442442614a3feb04\n",
	      -EINVAL, "\"private_key=(hidden)\": private_key must be 64 hex digits");
	FAILS("private_key=" PRIV_HEX "0\n", -EINVAL, "private_key=(hidden)");
	FAILS("private_key="
	      "788e3a7e152fdd83d31664cb38b52a6b33703dee2ac2c81442442614a3feb04g\n",
	      -EINVAL, "private_key=(hidden)");
	FAILS("private_key=\n", -EINVAL, "private_key=(hidden)");
	FAILS("private_key=" PRIV_B64 "\n", -EINVAL, "private_key=(hidden)");
	FAILS("private_key= " PRIV_HEX "\n", -EINVAL, "private_key=(hidden)");
	FAILS("public_key=" PEER_HEX "\npreshared_key=" PSK_HEX "f\n", -EINVAL,
	      "\"preshared_key=(hidden)\": preshared_key must be 64 hex digits");
	FAILS("public_key=" PEER_HEX "\npreshared_key="
	      "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdex\n",
	      -EINVAL, "preshared_key=(hidden)");
	FAILS("public_key=4409016bb920c521b59af95bbdbbeff5b3a378c4713951641f9b17d798808f2\n", -EINVAL,
	      "public_key must be 64 hex digits");
	FAILS("public_key=" PEER_B64 "\n", -EINVAL, "public_key must be 64 hex digits");
	FAILS("public_key=\n", -EINVAL, "public_key=\": public_key must be 64 hex digits");
	/* Key material never shows, even misspelled or without '='. */
	FAILS("privte_key=" PRIV_HEX "\n", -EINVAL, "privte_key=(hidden)\": unknown key");
	FAILS("private-key=" PRIV_B64 "\n", -EINVAL, "\"private-key=(hidden)\": unknown key");
	FAILS("bogus="
	      "4409016bb920c521b59af95bbdbbeff5b3"
	      "\n",
	      -EINVAL, "\"bogus=(hidden)\"");
	FAILS(PRIV_HEX "\n", -EINVAL, "missing '='");
	FAILS("private_key " PRIV_HEX "\n", -EINVAL, "missing '='");
	FAILS("public_key=" PEER_HEX "\npresharedkey=" PSK_HEX "\n", -EINVAL, "unknown key");
	FAILS("public_key=" PEER_HEX "\nprivate_key=" PRIV_HEX "\n", -EINVAL,
	      "\"private_key=(hidden)\": device key after public_key");
	expect_fail(nul_key, sizeof(nul_key) - 1, -EINVAL, "embedded NUL", __LINE__);
	/* Bad numbers. */
	FAILS("listen_port=65536\n", -EINVAL, "listen_port must be 0..65535");
	FAILS("listen_port=-1\n", -EINVAL, "listen_port must be 0..65535");
	FAILS("listen_port=+1\n", -EINVAL, "listen_port must be 0..65535");
	FAILS("listen_port=\n", -EINVAL, "listen_port must be 0..65535");
	FAILS("listen_port= 1\n", -EINVAL, "listen_port must be 0..65535");
	FAILS("listen_port=1 \n", -EINVAL, "listen_port must be 0..65535");
	FAILS("listen_port=0x10\n", -EINVAL, "listen_port must be 0..65535");
	FAILS("listen_port=18446744073709551617\n", -EINVAL, "listen_port must be 0..65535");
	FAILS("listen_port=1\r\n", -EINVAL, "\"listen_port=1\\x0d\": listen_port");
	FAILS("fwmark=4294967296\n", -EINVAL, "fwmark must be 0..4294967295");
	FAILS("fwmark=off\n", -EINVAL, "\"fwmark=off\": fwmark");
	FAILS("public_key=" PEER_HEX "\npersistent_keepalive_interval=65536\n", -EINVAL,
	      "persistent_keepalive_interval must be 0..65535");
	FAILS("public_key=" PEER_HEX "\npersistent_keepalive_interval=off\n", -EINVAL,
	      "persistent_keepalive_interval must be 0..65535");
	/* Bad booleans: only "true". */
	FAILS("replace_peers=false\n", -EINVAL, "replace_peers must be true");
	FAILS("replace_peers=TRUE\n", -EINVAL, "replace_peers must be true");
	FAILS("replace_peers=1\n", -EINVAL, "replace_peers must be true");
	FAILS("replace_peers=\n", -EINVAL, "replace_peers must be true");
	FAILS("replace_peers=truee\n", -EINVAL, "replace_peers must be true");
	FAILS("public_key=" PEER_HEX "\nremove=false\n", -EINVAL, "remove must be true");
	FAILS("public_key=" PEER_HEX "\nupdate_only=yes\n", -EINVAL, "update_only must be true");
	FAILS("public_key=" PEER_HEX "\nreplace_allowed_ips=tru\n", -EINVAL, "replace_allowed_ips must be true");
	/* Bad CIDRs. */
	FAILS("public_key=" PEER_HEX "\nallowed_ip=10.0.0.1/33\n", -EINVAL, "\"allowed_ip=10.0.0.1/33\"");
	FAILS("public_key=" PEER_HEX "\nallowed_ip=10.0.0.1/\n", -EINVAL, "allowed_ip must be");
	FAILS("public_key=" PEER_HEX "\nallowed_ip=/24\n", -EINVAL, "allowed_ip must be");
	FAILS("public_key=" PEER_HEX "\nallowed_ip=garbage\n", -EINVAL, "allowed_ip must be");
	FAILS("public_key=" PEER_HEX "\nallowed_ip=10.0.0.1\n", -EINVAL, "allowed_ip must be");
	FAILS("public_key=" PEER_HEX "\nallowed_ip=fd00::1\n", -EINVAL, "allowed_ip must be");
	FAILS("public_key=" PEER_HEX "\nallowed_ip=fd00::/129\n", -EINVAL, "allowed_ip must be");
	FAILS("public_key=" PEER_HEX "\nallowed_ip=\n", -EINVAL, "allowed_ip must be");
	FAILS("public_key=" PEER_HEX "\nallowed_ip=-\n", -EINVAL, "allowed_ip must be");
	FAILS("public_key=" PEER_HEX "\nallowed_ip=--10.0.0.0/8\n", -EINVAL, "allowed_ip must be");
	FAILS("public_key=" PEER_HEX "\nallowed_ip=10.0.0.0/8,10.1.0.0/16\n", -EINVAL, "allowed_ip must be");
	/* Bad endpoints / ports. */
	FAILS("public_key=" PEER_HEX "\nendpoint=192.0.2.2:65536\n", -EINVAL,
	      "\"endpoint=192.0.2.2:65536\": endpoint must be");
	FAILS("public_key=" PEER_HEX "\nendpoint=192.0.2.2\n", -EINVAL, "endpoint must be");
	FAILS("public_key=" PEER_HEX "\nendpoint=example.com:51820\n", -EINVAL, "endpoint must be");
	FAILS("public_key=" PEER_HEX "\nendpoint=fd00::1:51820\n", -EINVAL, "endpoint must be");
	/* Peer key before public_key, device key after a peer. */
	FAILS("endpoint=192.0.2.2:51821\n", -EINVAL, "\"endpoint=192.0.2.2:51821\": peer key before public_key");
	FAILS("allowed_ip=10.0.0.0/8\n", -EINVAL, "peer key before public_key");
	FAILS("remove=true\n", -EINVAL, "peer key before public_key");
	FAILS("protocol_version=1\n", -EINVAL, "peer key before public_key");
	FAILS("preshared_key=" PSK_HEX "\n", -EINVAL, "\"preshared_key=(hidden)\": peer key before public_key");
	FAILS("public_key=" PEER_HEX "\nlisten_port=51820\n", -EINVAL,
	      "\"listen_port=51820\": device key after public_key");
	FAILS("public_key=" PEER_HEX "\nfwmark=0\n", -EINVAL, "device key after public_key");
	FAILS("public_key=" PEER_HEX "\nreplace_peers=true\n", -EINVAL, "device key after public_key");
	/* protocol_version. */
	FAILS("public_key=" PEER_HEX "\nprotocol_version=2\n", -EPROTO,
	      "\"protocol_version=2\": unsupported protocol_version");
	FAILS("public_key=" PEER_HEX "\nprotocol_version=0\n", -EPROTO, "unsupported protocol_version");
	FAILS("public_key=" PEER_HEX "\nprotocol_version=one\n", -EINVAL, "protocol_version must be a number");
	FAILS("public_key=" PEER_HEX "\nprotocol_version=\n", -EINVAL, "protocol_version must be a number");
	/* Embedded NUL bytes. */
	expect_fail(nul_body, sizeof(nul_body) - 1, -EINVAL, "\"fwmark=1\\x002\": embedded NUL byte", __LINE__);
	expect_fail("\0\n", 2, -EINVAL, "embedded NUL", __LINE__);
	expect_fail("\0", 1, -EINVAL, "embedded NUL", __LINE__);
	/* A failure after successful lines leaves nothing behind. */
	FAILS("private_key=" PRIV_HEX "\nlisten_port=1\npublic_key=" PEER_HEX "\n"
	      "preshared_key=" PSK_HEX "\nallowed_ip=10.0.0.0/8\nbogus=1\n",
	      -EINVAL, "unknown key");

	/* Error buffer handling: truncated but terminated; NULL/0 are fine. */
	CHECK_EQ(wg_uapi_parse_set("bogus=1", 7, &s, small, sizeof(small)), -EINVAL);
	CHECK_EQ(strlen(small), sizeof(small) - 1);
	CHECK(!strncmp(small, "invalid UAPI li", sizeof(small) - 1));
	CHECK_EQ(wg_uapi_parse_set("bogus=1", 7, &s, NULL, 0), -EINVAL);
	CHECK_EQ(wg_uapi_parse_set("bogus=1", 7, &s, small, 0), -EINVAL);
	small[0] = 'Z';
	CHECK_EQ(wg_uapi_parse_set("bogus=1", 7, &s, small, 1), -EINVAL);
	CHECK_EQ(small[0], '\0');
	CHECK(is_all_zero(&s, sizeof(s)));
	CHECK_EQ(wg_uapi_parse_set(NULL, 5, &s, small, sizeof(small)), -EINVAL);
	CHECK(is_all_zero(&s, sizeof(s)));
	wg_uapi_set_free(NULL);

	/* Long and unprintable lines are quoted escaped and cut short. */
	{
		char line[2000];

		for (size_t j = 0; j < sizeof(line); j++)
			line[j] = "xy."[j % 3];
		memcpy(line, "bogus=", 6);
		line[10] = '"';
		line[11] = '\x01';
		line[sizeof(line) - 1] = '\0';
		FAILS(line, -EINVAL, "\"bogus=xy.x\\x22\\x01xy.");
		CHECK(strstr(err, "...\": unknown key") != NULL);
	}

	/* Oversized message. */
	{
		char *big = calloc(1, (size_t)WG_UAPI_MAX_MESSAGE + 1);

		CHECK(big != NULL);
		if (big) {
			expect_fail(big, (size_t)WG_UAPI_MAX_MESSAGE + 1, -EMSGSIZE, "too long", __LINE__);
			free(big);
		}
	}
}

static void test_many_peers(void)
{
	const size_t n = 20000;
	const char *line1 = "public_key=" PEER_HEX "\n";
	const char *line2 = "allowed_ip=10.0.0.0/8\nallowed_ip=fd00::/8\nallowed_ip=-192.168.0.0/16\n";
	size_t l1 = strlen(line1), l2 = strlen(line2), len = n * (l1 + l2), i;
	char *body = malloc(len);
	struct wg_uapi_set s;
	bool ok = true;

	if (!body) {
		CHECK(body != NULL);
		return;
	}
	for (i = 0; i < n; i++) {
		memcpy(body + i * (l1 + l2), line1, l1);
		memcpy(body + i * (l1 + l2) + l1, line2, l2);
	}
	CHECK_EQ(wg_uapi_parse_set(body, len, &s, err, sizeof(err)), 0);
	CHECK_EQ(s.n_peers, n);
	CHECK(s.cap_peers >= n && s.cap_peers < 2 * n + 8);
	for (i = 0; i < s.n_peers; i++)
		ok &= s.peers[i].n_aips == 3 && s.peers[i].aips[2].remove;
	CHECK(ok);
	wg_uapi_set_free(&s);
	free(body);
}

static void test_hex(void)
{
	uint8_t key[32], want[32];
	char hex[65];

	tl_hex2bin(want, PRIV_HEX, 32);
	CHECK(wg_hex_to_key(key, PRIV_HEX, 64));
	CHECK_MEM(key, want, 32);
	wg_key_to_hex(hex, key);
	CHECK(!strcmp(hex, PRIV_HEX));
	CHECK(wg_hex_to_key(key, "788E3A7E152FDD83D31664CB38B52A6B33703DEE2AC2C81442442614A3FEB04B", 64));
	CHECK_MEM(key, want, 32);
	wg_key_to_hex(hex, key);
	CHECK(!strcmp(hex, PRIV_HEX)); /* always lowercase */

	memset(key, 0xaa, 32);
	CHECK(!wg_hex_to_key(key, PRIV_HEX, 63));
	CHECK(!wg_hex_to_key(key, PRIV_HEX "0", 65));
	CHECK(!wg_hex_to_key(key, "g88e3a7e152fdd83d31664cb38b52a6b33703dee2ac2c81442442614a3feb04b", 64));
	CHECK(!wg_hex_to_key(key, "788e3a7e152fdd83d31664cb38b52a6b33703dee2ac2c81442442614a3feb04:", 64));
	CHECK(!wg_hex_to_key(key, "788e3a7e152fdd83d31664cb38b52a6b33703dee2ac2c81442442614a3feb04/", 64));
	CHECK(!wg_hex_to_key(key, "788e3a7e152fdd83d31664cb38b52a6b33703dee2ac2c81442442614a3feb04@", 64));
	CHECK(!wg_hex_to_key(key, "788e3a7e152fdd83d31664cb38b52a6b33703dee2ac2c81442442614a3feb04G", 64));
	CHECK(!wg_hex_to_key(key, "788e3a7e152fdd83d31664cb38b52a6b33703dee2ac2c81442442614a3feb04`", 64));
	CHECK(!wg_hex_to_key(key, "788e3a7e152fdd83d31664cb38b52a6b33703dee2ac2c81442442614a3feb04 ", 64));
	CHECK(!wg_hex_to_key(key, "788e3a7e152fdd83d31664cb38b52a6b33703dee2ac2c81442442614a3feb04\xc1", 64));
	CHECK(!wg_hex_to_key(key, "788e3a7e152fdd83d31664cb38b52a6b33703dee2ac2c81442442614a3feb04\0", 64));
	CHECK(!wg_hex_to_key(key, NULL, 64));
	{
		uint8_t aa[32];

		memset(aa, 0xaa, 32);
		CHECK_MEM(key, aa, 32); /* untouched on failure */
	}

	/* Every byte value decodes only if it is a hex digit. */
	{
		char h[64];
		int accepted = 0;

		memset(h, '0', sizeof(h));
		for (int c = 0; c < 256; c++) {
			h[5] = (char)c;
			accepted += wg_hex_to_key(key, h, 64);
		}
		CHECK_EQ(accepted, 22);
	}
}

static void test_base64(void)
{
	uint8_t key[32], want[32], pub[32];
	char b64[45];
	int i;

	/* wg's pair from the trace. */
	tl_hex2bin(want, PEER_HEX, 32);
	CHECK(wg_base64_to_key(key, PEER_B64, 44));
	CHECK_MEM(key, want, 32);
	wg_key_to_base64(b64, want);
	CHECK(!strcmp(b64, PEER_B64));

	/* The private key from "wg show dump" and its public key. */
	tl_hex2bin(want, PRIV_HEX, 32);
	CHECK(wg_base64_to_key(key, PRIV_B64, 44));
	CHECK_MEM(key, want, 32);
	wg_key_to_base64(b64, key);
	CHECK(!strcmp(b64, PRIV_B64));
	CHECK(crypto_scalarmult_curve25519_base(pub, key) == 0);
	wg_key_to_base64(b64, pub);
	CHECK(!strcmp(b64, PUB_B64));

	/* Round trips of random keys and edge values. */
	for (i = 0; i < 1000; i++) {
		uint8_t k[32], back[32];
		char h[65];

		if (i == 0)
			memset(k, 0, 32);
		else if (i == 1)
			memset(k, 0xff, 32);
		else
			randombytes_buf(k, 32);
		wg_key_to_base64(b64, k);
		CHECK_EQ(strlen(b64), 44);
		CHECK(wg_base64_to_key(back, b64, 44));
		CHECK_MEM(back, k, 32);
		wg_key_to_hex(h, k);
		CHECK(wg_hex_to_key(back, h, 64));
		CHECK_MEM(back, k, 32);
	}
	CHECK(wg_base64_to_key(key, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", 44));
	CHECK(is_all_zero(key, 32));
	CHECK(wg_base64_to_key(key, "//////////////////////////////////////////8=", 44));

	/* Rejections. */
	memset(key, 0xaa, 32);
	CHECK(!wg_base64_to_key(key, PEER_B64, 43));
	CHECK(!wg_base64_to_key(key, PEER_B64 "=", 45));
	CHECK(!wg_base64_to_key(key, "RAkBa7kgxSG1mvlbvbvv9bOjeMRxOVFkH5sX15iAjyMA", 44)); /* no pad */
	CHECK(!wg_base64_to_key(key, "RAkBa7kgxSG1mvlbvbvv9bOjeMRxOVFkH5sX15iAjy==", 44)); /* two pads */
	CHECK(!wg_base64_to_key(key, "RAkBa7kgxSG1mvlbvbvv9bOjeMRxOVFkH5sX15iAjyN=", 44)); /* low bits set */
	CHECK(!wg_base64_to_key(key, "RAkBa7kgxSG1mvlbvbvv9bOjeMRxOVFkH5sX15iAjyP=", 44));
	CHECK(!wg_base64_to_key(key, "//////////////////////////////////////////9=", 44));
	CHECK(!wg_base64_to_key(key, "RAkBa7kgxSG1mvlbvbvv9bOjeMRxOVFkH5sX15iA-yM=", 44)); /* url-safe */
	CHECK(!wg_base64_to_key(key, "RAkBa7kgxSG1mvlbvbvv9bOjeMRxOVFkH5sX15iA_yM=", 44));
	CHECK(!wg_base64_to_key(key, "RAkBa7kgxSG1mvlbvbvv9bOj=MRxOVFkH5sX15iAjyM=", 44));
	CHECK(!wg_base64_to_key(key, "RAkBa7kgxSG1mvlbvbvv9bOj MRxOVFkH5sX15iAjyM=", 44));
	CHECK(!wg_base64_to_key(key, "RAkBa7kgxSG1mvlbvbvv9bOj\0MRxOVFkH5sX15iAjyM=", 44));
	CHECK(!wg_base64_to_key(key, "RAkBa7kgxSG1mvlbvbvv9bOj\x80MRxOVFkH5sX15iAjyM=", 44));
	CHECK(!wg_base64_to_key(key, PEER_HEX, 64));
	CHECK(!wg_base64_to_key(key, NULL, 44));
	{
		uint8_t aa[32];

		memset(aa, 0xaa, 32);
		CHECK_MEM(key, aa, 32);
	}

	/* Exactly the 64 alphabet characters decode, anywhere before the tail;
	 * at the last position only the 16 with the low two bits clear do. */
	{
		char s[45];
		int accepted = 0, accepted_last = 0;

		memcpy(s, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", 45);
		for (int c = 0; c < 256; c++) {
			s[7] = (char)c;
			accepted += wg_base64_to_key(key, s, 44);
		}
		s[7] = 'A';
		for (int c = 0; c < 256; c++) {
			s[42] = (char)c;
			accepted_last += wg_base64_to_key(key, s, 44);
		}
		CHECK_EQ(accepted, 64);
		CHECK_EQ(accepted_last, 16);
	}
}

static bool ep(const char *s, struct sockaddr_storage *ss)
{
	memset(ss, 0x55, sizeof(*ss));
	return wg_parse_endpoint(s, strlen(s), ss);
}

static void roundtrip_endpoint(const char *in, const char *want_out)
{
	struct sockaddr_storage a, b;
	char buf[80];
	size_t n;

	CHECK(ep(in, &a));
	n = wg_format_endpoint(buf, sizeof(buf), (struct sockaddr *)&a);
	if (strcmp(buf, want_out)) {
		tl_fail++;
		fprintf(stderr, "FAIL endpoint %s formatted as %s, want %s\n", in, buf, want_out);
	} else {
		tl_pass++;
	}
	CHECK_EQ(n, strlen(want_out));
	CHECK(ep(buf, &b));
	CHECK_MEM(&a, &b, a.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
}

static void test_endpoint(void)
{
	static const char *const bad[] = {
		"",
		"192.0.2.2",
		"192.0.2.2:",
		":51820",
		"192.0.2.2:65536",
		"192.0.2.2:-1",
		"192.0.2.2:+1",
		"192.0.2.2: 1",
		"192.0.2.2:1 ",
		" 192.0.2.2:1",
		"192.0.2.2:0x10",
		"192.0.2.2:99999999999999999999999",
		"192.0.2:1",
		"192.0.2.256:1",
		"01.2.3.4:1",
		"1.2.3.4.5:1",
		"1.2.3.4:5:6",
		"example.com:51820",
		"localhost:1",
		"fd00::1:51820",
		"[fd00::1]",
		"[fd00::1]:",
		"[fd00::1]51820",
		"[fd00::1",
		"fd00::1]:5",
		"[]:5",
		"[1.2.3.4]:5",
		"[fd00::1]]:5",
		"[[fd00::1]]:5",
		"[fd00::1%]:5",
		"[fe80::1%nonexistent-if0]:5",
		"[fe80::1%aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa]:5",
		"[fe80::1%4294967296x]:5",
		"[fd00:::1]:5",
		"[fd00::1/64]:5",
		"[fd00::1]:65536",
	};
	struct sockaddr_storage ss;
	struct sockaddr_in6 in6;
	char buf[80];
	size_t i;

	CHECK(ep("192.0.2.2:51821", &ss));
	CHECK_EQ(ss.ss_family, AF_INET);
	{
		struct sockaddr_in in4;

		memcpy(&in4, &ss, sizeof(in4));
		CHECK_EQ(ntohs(in4.sin_port), 51821);
		CHECK_EQ(ntohl(in4.sin_addr.s_addr), 0xc0000202);
	}
	CHECK(ep("[fd00::1]:51820", &ss));
	CHECK_EQ(ss.ss_family, AF_INET6);
	memcpy(&in6, &ss, sizeof(in6));
	CHECK_EQ(ntohs(in6.sin6_port), 51820);
	CHECK_EQ(in6.sin6_scope_id, 0);
	CHECK_EQ(in6.sin6_flowinfo, 0);
	CHECK_EQ(in6.sin6_addr.s6_addr[0], 0xfd);
	CHECK_EQ(in6.sin6_addr.s6_addr[15], 1);

	/* Scope as a number or an interface name. */
	CHECK(ep("[fe80::1%7]:5", &ss));
	memcpy(&in6, &ss, sizeof(in6));
	CHECK_EQ(in6.sin6_scope_id, 7);
	CHECK(ep("[fe80::1%4294967295]:5", &ss));
	memcpy(&in6, &ss, sizeof(in6));
	CHECK_EQ(in6.sin6_scope_id, 4294967295u);
	if (if_nametoindex("lo")) {
		CHECK(ep("[fe80::1%lo]:5", &ss));
		memcpy(&in6, &ss, sizeof(in6));
		CHECK_EQ(in6.sin6_scope_id, if_nametoindex("lo"));
	}

	/* Port 0 and 65535 are accepted, leading zeros too. */
	CHECK(ep("1.2.3.4:0", &ss));
	CHECK(ep("1.2.3.4:65535", &ss));
	CHECK(ep("1.2.3.4:00051820", &ss));
	CHECK(ep("[::ffff:1.2.3.4]:1", &ss));
	CHECK_EQ(ss.ss_family, AF_INET6);

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		bool r = ep(bad[i], &ss);

		if (r) {
			tl_fail++;
			fprintf(stderr, "FAIL endpoint \"%s\" accepted\n", bad[i]);
		} else {
			tl_pass++;
		}
	}
	/* Embedded NUL bytes and non-terminated input. */
	CHECK(!wg_parse_endpoint("1.2.3.4\0:5", 10, &ss));
	CHECK(!wg_parse_endpoint("1.2.3.4:5\0", 10, &ss));
	CHECK(!wg_parse_endpoint("[::1\0]:5", 8, &ss));
	CHECK(!wg_parse_endpoint("[fe80::1%lo\0]:5", 15, &ss));
	CHECK(wg_parse_endpoint("1.2.3.4:56789", 9, &ss)); /* only "1.2.3.4:5" */
	CHECK(!wg_parse_endpoint(NULL, 0, &ss));

	roundtrip_endpoint("192.0.2.2:51821", "192.0.2.2:51821");
	roundtrip_endpoint("0.0.0.0:0", "0.0.0.0:0");
	roundtrip_endpoint("255.255.255.255:65535", "255.255.255.255:65535");
	roundtrip_endpoint("[fd00::1]:51820", "[fd00::1]:51820");
	roundtrip_endpoint("[FD00:0:0:0:0:0:0:1]:051820", "[fd00::1]:51820");
	roundtrip_endpoint("[::]:1", "[::]:1");
	roundtrip_endpoint("[fe80::1%3]:5", "[fe80::1%3]:5");
	roundtrip_endpoint("[::ffff:192.0.2.1]:7", "[::ffff:192.0.2.1]:7");
	roundtrip_endpoint("[2001:db8:1:2:3:4:5:6]:65535", "[2001:db8:1:2:3:4:5:6]:65535");

	/* Formatting errors: too small buffers, unknown family. */
	CHECK(ep("[2001:db8:1:2:3:4:5:6]:65535", &ss));
	CHECK_EQ(wg_format_endpoint(buf, 29, (struct sockaddr *)&ss), 28);
	CHECK_EQ(wg_format_endpoint(buf, 28, (struct sockaddr *)&ss), 0);
	CHECK_EQ(buf[0], '\0');
	CHECK_EQ(wg_format_endpoint(buf, 0, (struct sockaddr *)&ss), 0);
	memset(&ss, 0, sizeof(ss));
	ss.ss_family = AF_UNIX;
	buf[0] = 'x';
	CHECK_EQ(wg_format_endpoint(buf, sizeof(buf), (struct sockaddr *)&ss), 0);
	CHECK_EQ(buf[0], '\0');
}

static bool cidr(const char *s, uint8_t *fam, uint8_t addr[16], uint8_t *bits)
{
	return wg_parse_cidr(s, strlen(s), fam, addr, bits);
}

static void check_cidr(const char *s, int family, const char *addr, int bits)
{
	uint8_t fam = 0, a[16], b = 0, want[16] = { 0 };

	memset(a, 0x55, 16);
	CHECK(cidr(s, &fam, a, &b));
	CHECK_EQ(fam, family);
	CHECK_EQ(b, bits);
	CHECK(inet_pton(family, addr, want) == 1);
	CHECK_MEM(a, want, 16);
}

static void test_cidr(void)
{
	static const char *const bad[] = {
		"",
		"10.0.0.1/33",
		"10.0.0.1/",
		"/24",
		"/",
		"garbage",
		"10.0.0.256/8",
		"10.0.0.0/8/8",
		"10.0.0.0/08",
		"10.0.0.0/-1",
		"10.0.0.0/+8",
		"10.0.0.0/ 8",
		"10.0.0.0 /8",
		"10.0.0/8",
		"fd00::/129",
		"fd00::/1000",
		"fd00::/99999999999999999999999",
		"fe80::1%lo/64",
		"fe80::1%1",
		"fd00:::/64",
		"[fd00::]/64",
		"10.0.0.0/8 ",
		"1.2.3.4/32x",
		"::/",
		"-10.0.0.0/8",
		"0x0a000000/8",
	};
	uint8_t fam = 77, a[16], b = 77;
	size_t i;

	check_cidr("10.0.0.0/8", AF_INET, "10.0.0.0", 8);
	check_cidr("10.99.0.2/32", AF_INET, "10.99.0.2", 32);
	check_cidr("0.0.0.0/0", AF_INET, "0.0.0.0", 0);
	check_cidr("10.1.2.3/24", AF_INET, "10.1.2.3", 24); /* host bits kept */
	check_cidr("10.0.0.1", AF_INET, "10.0.0.1", 32);    /* bare address */
	check_cidr("::/0", AF_INET6, "::", 0);
	check_cidr("fd00::/64", AF_INET6, "fd00::", 64);
	check_cidr("fd00::1/128", AF_INET6, "fd00::1", 128);
	check_cidr("fd00::1", AF_INET6, "fd00::1", 128);
	check_cidr("::ffff:10.0.0.1/120", AF_INET6, "::ffff:10.0.0.1", 120);

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (cidr(bad[i], &fam, a, &b)) {
			tl_fail++;
			fprintf(stderr, "FAIL cidr \"%s\" accepted\n", bad[i]);
		} else {
			tl_pass++;
		}
	}
	CHECK_EQ(fam, 77); /* untouched on failure */
	CHECK_EQ(b, 77);
	CHECK(!wg_parse_cidr("10.0.0.0\0/8", 11, &fam, a, &b));
	CHECK(!wg_parse_cidr("10.0.0.0/8\0", 11, &fam, a, &b));
	CHECK(wg_parse_cidr("10.0.0.0/89", 10, &fam, a, &b)); /* not NUL-terminated */
	CHECK_EQ(b, 8);
	CHECK(!wg_parse_cidr(NULL, 0, &fam, a, &b));
}

/* ---- the get=1 reply, parsed back ---- */

static int parse_get(const char *text, struct wg_uapi_get *g)
{
	memset(err, 'X', sizeof(err));
	return wg_uapi_parse_get(text, strlen(text), g, err, sizeof(err));
}

/* A reply written by wg_uapi_writer (what our engine sends) parses back to
 * the values it was written from. */
static void test_get_round_trip(void)
{
	struct wg_uapi_writer w = { 0 };
	struct wg_uapi_peer_state st;
	struct sockaddr_storage ep4, ep6;
	struct wg_uapi_get g;
	uint8_t priv[32], psk[32], peer1[32], peer2[32], a4[16] = { 10, 99, 1, 0 }, a6[16] = { 0xfd };
	char *text, *full;
	size_t len;

	randombytes_buf(priv, sizeof(priv));
	randombytes_buf(psk, sizeof(psk));
	randombytes_buf(peer1, sizeof(peer1));
	randombytes_buf(peer2, sizeof(peer2));
	CHECK(wg_parse_endpoint("192.0.2.2:51821", 15, &ep4));
	CHECK(wg_parse_endpoint("[fd00::1]:7", 11, &ep6));

	wg_uapi_put_interface(&w, priv, 51820, 0x1234);
	memset(&st, 0, sizeof(st));
	memcpy(st.public_key, peer1, 32);
	memcpy(st.preshared_key, psk, 32);
	st.endpoint = (struct sockaddr *)&ep4;
	st.last_handshake_ns = 1700000000ull * 1000000000ull + 123456789ull;
	st.tx_bytes = 5;
	st.rx_bytes = UINT64_MAX;
	st.persistent_keepalive = 25;
	wg_uapi_put_peer(&w, &st);
	wg_uapi_put_allowed_ip(&w, AF_INET, a4, 24);
	wg_uapi_put_allowed_ip(&w, AF_INET6, a6, 128);
	memset(&st, 0, sizeof(st));
	memcpy(st.public_key, peer2, 32);
	st.endpoint = (struct sockaddr *)&ep6;
	wg_uapi_put_peer(&w, &st);
	CHECK_EQ(wg_uapi_writer_finish(&w, &text, &len), 0);
	full = malloc(len + 10);
	CHECK(full != NULL);
	memcpy(full, text, len);
	memcpy(full + len, "errno=0\n\n", 10);

	CHECK_EQ(parse_get(full, &g), 0);
	CHECK_EQ(err[0], '\0');
	CHECK(g.has_private_key);
	CHECK_MEM(g.private_key, priv, 32);
	CHECK(g.has_listen_port);
	CHECK_EQ(g.listen_port, 51820);
	CHECK(g.has_fwmark);
	CHECK_EQ(g.fwmark, 0x1234);
	CHECK(g.has_errno);
	CHECK_EQ(g.errno_value, 0);
	CHECK_EQ(g.n_peers, 2);
	CHECK_MEM(g.peers[0].public_key, peer1, 32);
	CHECK(g.peers[0].has_preshared_key);
	CHECK_MEM(g.peers[0].preshared_key, psk, 32);
	CHECK(g.peers[0].has_endpoint);
	CHECK(!strcmp(g.peers[0].endpoint, "192.0.2.2:51821"));
	CHECK(!memcmp(&g.peers[0].endpoint_addr, &ep4, sizeof(ep4)));
	CHECK_EQ(g.peers[0].last_handshake_sec, 1700000000ull);
	CHECK_EQ(g.peers[0].last_handshake_nsec, 123456789ull);
	CHECK_EQ(g.peers[0].tx_bytes, 5);
	CHECK(g.peers[0].rx_bytes == UINT64_MAX);
	CHECK_EQ(g.peers[0].persistent_keepalive, 25);
	CHECK_EQ(g.peers[0].n_aips, 2);
	CHECK_EQ(g.peers[0].aips[0].family, AF_INET);
	CHECK_EQ(g.peers[0].aips[0].cidr, 24);
	CHECK_MEM(g.peers[0].aips[0].addr, a4, 4);
	CHECK_EQ(g.peers[0].aips[1].family, AF_INET6);
	CHECK_EQ(g.peers[0].aips[1].cidr, 128);
	CHECK_MEM(g.peers[0].aips[1].addr, a6, 16);
	CHECK_MEM(g.peers[1].public_key, peer2, 32);
	CHECK(is_all_zero(g.peers[1].preshared_key, 32));
	CHECK(!strcmp(g.peers[1].endpoint, "[fd00::1]:7"));
	CHECK_EQ(g.peers[1].last_handshake_sec, 0);
	CHECK_EQ(g.peers[1].n_aips, 0);

	/* the free function wipes every key and leaves g reusable */
	wg_uapi_get_free(&g);
	CHECK(is_all_zero(&g, sizeof(g)));
	wg_uapi_get_free(&g);

	/* cut short: no errno line */
	full[len] = '\0';
	CHECK_EQ(parse_get(full, &g), 0);
	CHECK(!g.has_errno);
	CHECK_EQ(g.n_peers, 2);
	wg_uapi_get_free(&g);

	sodium_memzero(full, len + 10);
	sodium_memzero(text, len);
	free(full);
	free(text);
	sodium_memzero(priv, sizeof(priv));
	sodium_memzero(psk, sizeof(psk));
}

/* What wireguard-go and wg(8) may send that our writer does not; errno
 * replies; the end of the reply. */
static void test_get_forms(void)
{
	struct wg_uapi_get g;

	/* a failed get: only errno */
	CHECK_EQ(parse_get("errno=-22\n\n", &g), 0);
	CHECK(g.has_errno);
	CHECK_EQ(g.errno_value, -22);
	CHECK_EQ(g.n_peers, 0);
	CHECK(!g.has_private_key && !g.has_listen_port);
	wg_uapi_get_free(&g);
	CHECK_EQ(parse_get("errno=1\n", &g), 0);
	CHECK_EQ(g.errno_value, 1);
	wg_uapi_get_free(&g);

	/* unknown keys are ignored (as wg(8) does), the empty line ends it */
	CHECK_EQ(parse_get("listen_port=1\nsomething_new=yes\npublic_key=" PEER_HEX "\nfuture_field=1\n"
			   "protocol_version=1\nerrno=0\n\nlisten_port=x\n",
			   &g),
		 0);
	CHECK_EQ(g.listen_port, 1);
	CHECK_EQ(g.n_peers, 1);
	CHECK(g.has_errno);
	wg_uapi_get_free(&g);

	/* a device field after the peers still belongs to the device */
	CHECK_EQ(parse_get("public_key=" PEER_HEX "\nfwmark=9\nerrno=0\n", &g), 0);
	CHECK(g.has_fwmark);
	CHECK_EQ(g.fwmark, 9);
	wg_uapi_get_free(&g);

	/* empty text: nothing, and no errno */
	CHECK_EQ(parse_get("", &g), 0);
	CHECK(!g.has_errno);
	wg_uapi_get_free(&g);
}

static void test_get_errors(void)
{
	static const struct {
		const char *text, *expect;
	} bad[] = {
		{ "listen_port\nerrno=0\n", "missing '='" },
		{ "listen_port=65536\n", "listen_port must be 0..65535" },
		{ "listen_port=-1\n", "listen_port must be 0..65535" },
		{ "fwmark=0x10\n", "fwmark must be" },
		{ "errno=zero\n", "errno must be a number" },
		{ "errno=\n", "errno must be a number" },
		{ "private_key=abcd\n", "private_key must be 64 hex digits" },
		{ "public_key=" PEER_HEX "x\n", "public_key must be 64 hex digits" },
		{ "rx_bytes=1\n", "peer field before any public_key" },
		{ "allowed_ip=10.0.0.0/8\n", "peer field before any public_key" },
		{ "public_key=" PEER_HEX "\nallowed_ip=10.0.0.0/33\n", "allowed_ip must be address/prefix" },
		{ "public_key=" PEER_HEX "\nallowed_ip=10.0.0.1\n", "allowed_ip must be address/prefix" },
		{ "public_key=" PEER_HEX "\nendpoint=192.0.2.1\n", "endpoint must be" },
		{ "public_key=" PEER_HEX "\nrx_bytes=18446744073709551616\n", "rx_bytes must be a number" },
		{ "public_key=" PEER_HEX "\ntx_bytes=1 \n", "tx_bytes must be a number" },
		{ "public_key=" PEER_HEX "\nlast_handshake_time_sec=+1\n", "last_handshake_time_sec must be" },
		{ "public_key=" PEER_HEX "\nlast_handshake_time_nsec=1000000000\n",
		  "last_handshake_time_nsec must be" },
		{ "public_key=" PEER_HEX "\npersistent_keepalive_interval=65536\n", "persistent_keepalive_interval" },
		{ "public_key=" PEER_HEX "\npreshared_key=" PSK_HEX "0\n", "preshared_key must be 64 hex digits" },
		{ "public_key=" PEER_HEX "\nprotocol_version=one\n", "protocol_version must be a number" },
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct wg_uapi_get g;
		int r = parse_get(bad[i].text, &g);

		CHECK_EQ(r, -EINVAL);
		if (!strstr(err, bad[i].expect) || !strstr(err, "invalid UAPI line"))
			fprintf(stderr, "get error for %s: %s (expected %s)\n", bad[i].text, err, bad[i].expect);
		CHECK(strstr(err, bad[i].expect) != NULL);
		CHECK(is_all_zero(&g, sizeof(g)));
		wg_uapi_get_free(&g);
	}

	/* key values never appear in an error */
	{
		struct wg_uapi_get g;

		CHECK_EQ(parse_get("private_key=" PRIV_HEX "\npublic_key=" PEER_HEX "\npreshared_key=" PSK_HEX "z\n",
				   &g),
			 -EINVAL);
		CHECK(strstr(err, "(hidden)") != NULL);
		CHECK(strstr(err, "0123456789abcdef") == NULL);
		CHECK(is_all_zero(&g, sizeof(g)));
		/* an embedded NUL */
		CHECK_EQ(wg_uapi_parse_get("listen_port=1\0\n", 15, &g, err, sizeof(err)), -EINVAL);
		CHECK(strstr(err, "embedded NUL") != NULL);
		CHECK_EQ(wg_uapi_parse_get(NULL, 3, &g, err, sizeof(err)), -EINVAL);
		CHECK_EQ(wg_uapi_parse_get(NULL, 0, &g, err, sizeof(err)), 0);
		wg_uapi_get_free(&g);
	}
}

int main(void)
{
	if (sodium_init() < 0) {
		fprintf(stderr, "sodium_init failed\n");
		return 1;
	}
	test_trace_messages();
	test_every_key();
	test_errors();
	test_many_peers();
	test_hex();
	test_base64();
	test_endpoint();
	test_cidr();
	test_get_round_trip();
	test_get_forms();
	test_get_errors();
	return tl_finish("uapi");
}
