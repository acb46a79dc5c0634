/* libFuzzer harness for csrc/offload.c: the virtio header and the packet
 * come from the input (as a compromised or buggy kernel peer could hand
 * them to us), through checksum completion, TSO segmentation and TCP
 * coalescing.  Invariants: segments fit their stride, coalesced packets fit
 * 64 KiB.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Icsrc \
 *     fuzz/fuzz_offload.c csrc/offload.c -o /tmp/fuzz_offload */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "offload.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t out[WG_TSO_MAX_SEGS * 1600];
static uint8_t gbuf[65536 + 2048];
static uint8_t pkt[65536];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct wg_vnet_hdr h;
	size_t lens[WG_TSO_MAX_SEGS], n, len;
	struct wg_gro g = { .buf = gbuf };
	struct wg_vnet_hdr gh;

	if (size < sizeof(h) || size - sizeof(h) > sizeof(pkt))
		return 0;
	memcpy(&h, data, sizeof(h));
	len = size - sizeof(h);
	memcpy(pkt, data + sizeof(h), len);
	if (h.flags & WG_VNET_F_NEEDS_CSUM)
		wg_csum_complete(pkt, len, &h);
	n = wg_tso_segment(pkt, len, &h, out, 1600, lens, WG_TSO_MAX_SEGS);
	if (n && wg_tso_segment_len(pkt, len, &h) != lens[0])
		abort();
	for (size_t i = 0; i < n; i++) {
		if (lens[i] > 1600)
			abort();
		if (!wg_gro_add(&g, out + i * 1600, lens[i])) {
			wg_gro_finish(&g, &gh);
			g.family = 0;
			g.len = 0;
			g.segs = 0;
			wg_gro_add(&g, out + i * 1600, lens[i]);
		}
		if (g.len > 65535)
			abort();
	}
	/* the raw packet as a received one */
	if (wg_gro_add(&g, pkt, len) || g.family) {
		wg_gro_finish(&g, &gh);
		if (g.len > 65535)
			abort();
	}
	return 0;
}
