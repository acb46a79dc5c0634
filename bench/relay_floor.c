/* The latency floor of a userspace tunnel on this machine, for `make bench`:
 * a TUN <-> UDP relay with no crypto and no protocol, one thread sleeping
 * in poll() on both descriptors (no busy polling), each packet copied
 * straight across.  Ping through a pair of these shows what wake-ups and
 * the extra kernel crossings cost before any WireGuard work is done.
 *
 *   relay_floor IFNAME LOCAL-PORT PEER-IPV4 PEER-PORT
 *
 * Creates TUN IFNAME (the caller sets its address and brings it up), runs
 * until killed.  Needs CAP_NET_ADMIN; meant for a throwaway namespace. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static int die(const char *what)
{
	fprintf(stderr, "relay_floor: %s: %s\n", what, strerror(errno));
	return 1;
}

int main(int argc, char **argv)
{
	struct sockaddr_in me = { .sin_family = AF_INET }, peer = { .sin_family = AF_INET };
	struct ifreq ifr;
	uint8_t buf[65536];
	int tun, udp;

	if (argc != 5 || strlen(argv[1]) >= IFNAMSIZ || inet_pton(AF_INET, argv[3], &peer.sin_addr) != 1) {
		fprintf(stderr, "usage: relay_floor IFNAME LOCAL-PORT PEER-IPV4 PEER-PORT\n");
		return 2;
	}
	me.sin_port = htons((uint16_t)atoi(argv[2]));
	peer.sin_port = htons((uint16_t)atoi(argv[4]));
	tun = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (tun < 0)
		return die("/dev/net/tun");
	memset(&ifr, 0, sizeof(ifr));
	ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
	memcpy(ifr.ifr_name, argv[1], strlen(argv[1]));
	if (ioctl(tun, TUNSETIFF, &ifr) < 0)
		return die("TUNSETIFF");
	udp = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (udp < 0 || bind(udp, (struct sockaddr *)&me, sizeof(me)) < 0)
		return die("UDP socket");
	for (;;) {
		struct pollfd pfd[2] = { { .fd = tun, .events = POLLIN }, { .fd = udp, .events = POLLIN } };
		int more = 1;

		if (poll(pfd, 2, -1) < 0 && errno != EINTR)
			return die("poll");
		/* Drain both: the answer to what we just wrote is often queued
		 * already (as our engine's UDP thread exploits). */
		while (more) {
			ssize_t n = read(tun, buf, sizeof(buf));

			more = 0;
			if (n > 0) {
				sendto(udp, buf, (size_t)n, 0, (struct sockaddr *)&peer, sizeof(peer));
				more = 1;
			}
			n = recv(udp, buf, sizeof(buf), 0);
			if (n > 0) {
				if (write(tun, buf, (size_t)n) < 0) {
					/* dropped, as a router would */
				}
				more = 1;
			}
		}
	}
}
