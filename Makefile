# wgoverlay build.  `make` builds the Lua module build/wgoverlay/core.so,
# the pure-protocol library for C tests and the C test binaries.
# Targets: all check demo bench fuzz soak deps format clean (format: the C
# sources through clang-format, .clang-format).  SANITIZE=1 builds
# everything with AddressSanitizer + UBSan into build-san/.  Every x86-64
# build has our AVX-512 ChaCha20-Poly1305 (csrc/aead_avx512.c, chosen at
# load time when the CPU has it, libsodium otherwise or with
# WGO_AEAD=libsodium; see csrc/aead.h).  BENCH_NOCRYPTO=1 is for `make
# bench` only: a build without transport encryption, in
# build-bench-nocrypto/, to measure the datapath's ceiling (never install
# or run it for real traffic).

CC      ?= cc
LUA_INC ?= /usr/include/lua5.4
WARN    := -Wall -Wextra -Wshadow -Wmissing-prototypes -Wstrict-prototypes \
           -Wpointer-arith -Wcast-align -Wwrite-strings -Wundef \
           -Wformat=2 -Wno-unused-parameter -Werror=implicit-function-declaration
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -fPIC -pthread $(WARN) -I$(LUA_INC) -Icsrc
LDLIBS  := -lsodium -lmnl -lpthread -lcurl -lmicrohttpd -lnatpmp -lminiupnpc

ifeq ($(origin AEAD),command line)
$(error AEAD= is gone: every build has both AEADs and picks one at run time (WGO_AEAD=libsodium forces libsodium))
endif

ifeq ($(SANITIZE),1)
BUILD   := build-san
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
else
BUILD   := build
endif
ifeq ($(BENCH_NOCRYPTO),1)
BUILD   := build-bench-nocrypto
CFLAGS  += -DWGO_BENCH_NOCRYPTO
endif

SRC      := $(wildcard csrc/*.c)
LUA_SRC  := $(filter csrc/lua_%.c,$(SRC))
CORE_SRC := $(filter-out $(LUA_SRC),$(SRC))
CORE_OBJ := $(CORE_SRC:csrc/%.c=$(BUILD)/obj/%.o)
LUA_OBJ  := $(LUA_SRC:csrc/%.c=$(BUILD)/obj/%.o)
TESTS    := $(patsubst tests/c/%.c,$(BUILD)/tests/%,$(wildcard tests/c/test_*.c))
BENCHES  := $(patsubst bench/%.c,$(BUILD)/bench/%,$(wildcard bench/*.c))
MODULE   := $(BUILD)/wgoverlay/core.so
# Wycheproof's vectors (tests/vectors/*_test.json) as lines for the C tests
VECTORS  := $(patsubst tests/vectors/%_test.json,$(BUILD)/tests/vectors/%.vec,$(wildcard tests/vectors/*_test.json))

.PHONY: all deps check demo bench fuzz soak format clean
all: $(MODULE) $(TESTS) $(BENCHES) $(VECTORS)

$(BUILD)/obj/%.o: csrc/%.c $(wildcard csrc/*.h) | $(BUILD)/obj
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/libwgproto.a: $(CORE_OBJ)
	$(AR) rcs $@ $^

$(MODULE): $(LUA_OBJ) $(BUILD)/libwgproto.a | $(BUILD)/wgoverlay
	$(CC) -shared $(LDFLAGS) -o $@ $(LUA_OBJ) $(BUILD)/libwgproto.a $(LDLIBS)

$(BUILD)/tests/%: tests/c/%.c tests/c/testlib.h $(BUILD)/libwgproto.a | $(BUILD)/tests
	$(CC) $(CFLAGS) -Itests/c $(LDFLAGS) -o $@ $< $(BUILD)/libwgproto.a $(LDLIBS)

# The binding's test runs csrc/lua_*.c in a lua_State of its own.  Bound
# now, as Lua's dlopen binds core.so (lazy binding saves the vector
# registers on the stack, where the test's memory scan looks for keys).
$(BUILD)/tests/test_binding: tests/c/test_binding.c tests/c/testlib.h $(LUA_OBJ) $(BUILD)/libwgproto.a | $(BUILD)/tests
	$(CC) $(CFLAGS) -Itests/c $(LDFLAGS) -Wl,-z,now -o $@ $< $(LUA_OBJ) $(BUILD)/libwgproto.a -llua5.4 $(LDLIBS)

$(BUILD)/bench/%: bench/%.c $(BUILD)/libwgproto.a | $(BUILD)/bench
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libwgproto.a $(LDLIBS)

$(BUILD)/tests/vectors/%.vec: tests/vectors/%_test.json scripts/wycheproof2vec.lua | $(BUILD)/tests/vectors
	lua5.4 scripts/wycheproof2vec.lua $< $@

$(BUILD)/obj $(BUILD)/wgoverlay $(BUILD)/tests $(BUILD)/bench $(BUILD)/tests/vectors:
	mkdir -p $@

deps:
	@scripts/deps.sh

check: deps
	@$(MAKE) --no-print-directory all
	@scripts/check.sh

demo: deps
	@$(MAKE) --no-print-directory all
	@scripts/demo.sh

bench: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory BENCH_NOCRYPTO=1 build-bench-nocrypto/wgoverlay/core.so
	@scripts/bench.sh

fuzz: deps
	@scripts/fuzz.sh $(FUZZ_SECONDS)

soak: deps
	@$(MAKE) --no-print-directory all
	@scripts/soak.sh

demo-nat: deps
	@$(MAKE) --no-print-directory all
	@scripts/demo_nat.sh

FORMAT_SRC := $(wildcard csrc/*.c csrc/*.h tests/c/*.c tests/c/*.h fuzz/*.c bench/*.c)
format:
	clang-format -i $(FORMAT_SRC)

clean:
	rm -rf build build-san build-fuzz build-bench-nocrypto build-avx512 build-san-avx512
