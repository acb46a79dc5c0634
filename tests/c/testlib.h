/* Minimal test harness for the C unit tests: each test binary prints one
 * line per failed check and a closing "name: N passed, N failed" line, and
 * exits non-zero if anything failed. */
#ifndef WG_TESTLIB_H
#define WG_TESTLIB_H
#include <stdio.h>
#include <string.h>
#include <stdlib.h>

static int tl_pass, tl_fail;

#define CHECK(cond)                                                                     \
	do {                                                                            \
		if (cond)                                                               \
			tl_pass++;                                                      \
		else {                                                                  \
			tl_fail++;                                                      \
			fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); \
		}                                                                       \
	} while (0)

#define CHECK_MEM(a, b, n)                                                                                \
	do {                                                                                              \
		if (memcmp((a), (b), (n)) == 0)                                                           \
			tl_pass++;                                                                        \
		else {                                                                                    \
			tl_fail++;                                                                        \
			fprintf(stderr, "FAIL %s:%d: %s != %s (%zu bytes)\n", __FILE__, __LINE__, #a, #b, \
				(size_t)(n));                                                             \
		}                                                                                         \
	} while (0)

#define CHECK_EQ(a, b)                                                                                                 \
	do {                                                                                                           \
		long long tl_a = (long long)(a), tl_b = (long long)(b);                                                \
		if (tl_a == tl_b)                                                                                      \
			tl_pass++;                                                                                     \
		else {                                                                                                 \
			tl_fail++;                                                                                     \
			fprintf(stderr, "FAIL %s:%d: %s == %lld, expected %s == %lld\n", __FILE__, __LINE__, #a, tl_a, \
				#b, tl_b);                                                                             \
		}                                                                                                      \
	} while (0)

static inline int tl_finish(const char *name)
{
	printf("%s: %d passed, %d failed\n", name, tl_pass, tl_fail);
	return tl_fail ? 1 : 0;
}

static inline void tl_hex2bin(unsigned char *out, const char *hex, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned v;
		if (sscanf(hex + 2 * i, "%2x", &v) != 1)
			abort();
		out[i] = (unsigned char)v;
	}
}
#endif
