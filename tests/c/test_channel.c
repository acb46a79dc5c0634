/* TURN ChannelData framing (RFC 8656 section 12.4) used for relayed peers:
 * header layout, round trip, and what is not ChannelData (WireGuard
 * messages, STUN, truncated frames). */
#include "testlib.h"
#include "udp.h"

int main(void)
{
	uint8_t buf[64], hdr[4];
	const uint8_t *inner;
	size_t inner_len;

	wg_channel_header(hdr, 0x4001, 148);
	CHECK_EQ(hdr[0], 0x40);
	CHECK_EQ(hdr[1], 0x01);
	CHECK_EQ(hdr[2], 0);
	CHECK_EQ(hdr[3], 148);

	memset(buf, 0xab, sizeof(buf));
	wg_channel_header(buf, 0x4fff, 32);
	buf[4] = 4; /* a WireGuard keepalive inside */
	CHECK_EQ(wg_channel_unwrap(buf, 36, &inner, &inner_len), 0x4fff);
	CHECK(inner == buf + 4);
	CHECK_EQ(inner_len, 32);
	/* UDP may carry padding after the frame: ignored */
	CHECK_EQ(wg_channel_unwrap(buf, 40, &inner, &inner_len), 0x4fff);
	CHECK_EQ(inner_len, 32);
	/* a length beyond the datagram is not ChannelData */
	CHECK_EQ(wg_channel_unwrap(buf, 35, &inner, &inner_len), 0);
	CHECK_EQ(wg_channel_unwrap(buf, 3, &inner, &inner_len), 0);
	/* WireGuard types 1-4 and STUN (first bits 00) are never taken for it */
	for (int t = 1; t <= 4; t++) {
		buf[0] = (uint8_t)t;
		CHECK_EQ(wg_channel_unwrap(buf, 36, &inner, &inner_len), 0);
	}
	buf[0] = 0x01;
	buf[1] = 0x01; /* STUN binding success */
	CHECK_EQ(wg_channel_unwrap(buf, 36, &inner, &inner_len), 0);
	buf[0] = 0x50; /* 0x5000 is outside the channel range */
	CHECK_EQ(wg_channel_unwrap(buf, 36, &inner, &inner_len), 0);
	return tl_finish("channel");
}
