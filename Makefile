# ngx_xmpp_federation_module: build, test, demo, bench.
#
#   make deps        install the Debian packages the project needs (root)
#   make             build build/ngx_stream_xmpp_federation_module.so
#   make SANITIZE=1  the same with AddressSanitizer + UBSan (build/asan/)
#   make NODEBUG=1   the same without --with-debug (build/nodebug/): the
#                    debug-only code paths must compile away cleanly
#   make test        deps + build + every suite, plain and sanitized
#   make check-one T=t/xmpp_config.t   one suite, plain build
#   make demo        a real partner federates through the edge (loopback)
#   make bench       the edge against stock nginx (docs/performance.md)
#
# NGINX_SRC selects the nginx tree: Debian's nginx-dev headers by default
# (the module is then loaded into /usr/sbin/nginx), or a full nginx source
# tree, which is then built whole and used by the tests.

SHELL      := /bin/bash
NGINX_SRC  ?= /usr/share/nginx/src
SANITIZE   ?=
PROVE_ARGS ?=
T          ?= t/

TOP        := $(CURDIR)
MODULE     := ngx_stream_xmpp_federation_module
SOURCES    := config $(wildcard ngx_xmpp_federation_module/*.[ch])

# Debian's tree ships its configure flags; a full tree gets --with-compat.
DEBIAN_TREE := $(shell test -f $(NGINX_SRC)/conf_flags && echo yes)

ifeq ($(DEBIAN_TREE),yes)
BUILD_BASE := $(TOP)/build
else
BUILD_BASE := $(TOP)/build/custom
endif

ifneq ($(NODEBUG),)
BUILD_BASE := $(BUILD_BASE)/nodebug
endif

ifeq ($(SANITIZE),)
BUILD      := $(BUILD_BASE)
SAN_CC_OPT :=
SAN_LD_OPT :=
else
BUILD      := $(BUILD_BASE)/asan
SAN_CC_OPT := -fsanitize=address,undefined -fno-omit-frame-pointer
SAN_LD_OPT := -fsanitize=address,undefined
endif

SRC_COPY   := $(BUILD)/nginx

ifeq ($(DEBIAN_TREE),yes)
NGINX_BIN    ?= /usr/sbin/nginx
STREAM_SO    ?= /usr/lib/nginx/modules/ngx_stream_module.so
MAKE_TARGET  := objs/$(MODULE).so
else
NGINX_BIN    ?= $(BUILD)/nginx/objs/nginx
STREAM_SO    ?= $(BUILD)/nginx/objs/ngx_stream_module.so
MAKE_TARGET  :=
endif

PACKAGES := gcc make perl nginx nginx-dev libnginx-mod-stream \
            libexpat1-dev libssl-dev libpcre2-dev zlib1g-dev openssl \
            libio-socket-ssl-perl libnet-dns-perl libxml-parser-perl \
            prosody lua-unbound ejabberd dnsmasq-base python3-slixmpp go-sendxmpp \
            valgrind clang libclang-rt-14-dev

PRELOAD := $(shell gcc -print-file-name=libasan.so) \
           $(shell gcc -print-file-name=libubsan.so)

.PHONY: all build deps test test-plain test-sanitized check-one demo \
        bench clean

all: build

build: $(BUILD)/$(MODULE).so

# one build at a time in a build directory: tests, demo and bench share it

$(BUILD)/$(MODULE).so: $(SOURCES)
	@mkdir -p $(BUILD)
	@flock $(BUILD)/.lock $(MAKE) --no-print-directory module-locked

.PHONY: module-locked
module-locked:
	@rm -rf $(SRC_COPY)
	cp -a $(NGINX_SRC) $(SRC_COPY)
	cd $(SRC_COPY) && \
	if [ "$(DEBIAN_TREE)" = yes ]; then \
	    . ./conf_flags && \
	    if [ -n "$(NODEBUG)" ]; then \
	        NGX_CONF_FLAGS=( $${NGX_CONF_FLAGS[@]/--with-debug} ); \
	    fi && \
	    ./configure "$${NGX_CONF_FLAGS[@]}" \
	        --with-stream=dynamic --with-stream_ssl_module \
	        --with-cc-opt="-g -O2 -fPIC $(SAN_CC_OPT)" \
	        --with-ld-opt="-fPIC $(SAN_LD_OPT)" \
	        --add-dynamic-module=$(TOP) > configure.log; \
	else \
	    cfg=./configure; [ -x $$cfg ] || cfg=./auto/configure; \
	    $$cfg --with-compat --with-debug \
	        --with-stream=dynamic --with-stream_ssl_module \
	        --with-cc-opt="-g -O2 $(SAN_CC_OPT)" \
	        --with-ld-opt="$(SAN_LD_OPT)" \
	        --add-dynamic-module=$(TOP) > configure.log; \
	fi
	$(MAKE) -C $(SRC_COPY) -f objs/Makefile $(MAKE_TARGET)
	cp $(SRC_COPY)/objs/$(MODULE).so $(BUILD)/$(MODULE).so.tmp
	mv $(BUILD)/$(MODULE).so.tmp $(BUILD)/$(MODULE).so

deps:
	@missing=""; \
	for p in $(PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	        | grep -q '^install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "make deps: installing$$missing"; \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; \
	    chmod 755 /usr/sbin/policy-rc.d; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && \
	    apt-get install -y -qq --no-install-recommends $$missing \
	        < /dev/null; \
	    rc=$$?; rm -f /usr/sbin/policy-rc.d; exit $$rc; \
	fi

define run_prove
	TEST_NGINX_BINARY=$(NGINX_BIN) \
	TEST_NGINX_GLOBALS="load_module $(STREAM_SO); load_module $(1)/$(MODULE).so;" \
	$(2) prove -I t/lib $(PROVE_ARGS) $(3)
endef

test: deps
	$(MAKE) NODEBUG=1 build
	$(MAKE) test-plain
	$(MAKE) test-sanitized

test-plain: build
	$(call run_prove,$(BUILD),,t/)

test-sanitized:
	$(MAKE) SANITIZE=1 build
	$(call run_prove,$(BUILD_BASE)/asan,TEST_NGINX_SANITIZE=1 TEST_NGINX_PRELOAD="$(PRELOAD)",t/)

check-one: build
	$(call run_prove,$(BUILD),$(if $(SANITIZE),TEST_NGINX_SANITIZE=1 TEST_NGINX_PRELOAD="$(PRELOAD)"),-v $(T))

# A real partner (Prosody, fabrikam.example) federates through the edge
# with a real gateway (Prosody, contoso.example) on loopback; exits 0 only
# if the partner's message arrived.  demo/README.md says more.

demo: deps build
	DEMO_NGINX=$(NGINX_BIN) DEMO_STREAM_MODULE=$(STREAM_SO) \
	DEMO_MODULE=$(BUILD)/$(MODULE).so perl demo/run.pl

# The edge against stock nginx in the same run (docs/performance.md):
# relay throughput against proxy_pass, session establishment (STARTTLS,
# SASL EXTERNAL, hand-off) against TLS handshakes on "listen ... ssl",
# memory per idle stream against proxy_pass.  BENCH_PARTS, BENCH_STANZAS,
# BENCH_RUNS, BENCH_SESSIONS, BENCH_KEY, BENCH_IDLE_STREAMS, BENCH_PERF,
# BENCH_COUNT (instructions counted with callgrind): see bench/run.pl.

BENCH_DIR := $(TOP)/build/bench

$(BENCH_DIR)/xmpp_bench: bench/xmpp_bench.c bench/bench_stanza.h \
    bench/bench_common.c bench/bench_common.h
	@mkdir -p $(@D)
	gcc -O2 -Wall -Wextra -o $@ bench/xmpp_bench.c bench/bench_common.c

# XML_SetReparseDeferralEnabled(): expat 2.6, or backported (Debian 12)
$(BENCH_DIR)/expat_only: bench/expat_only.c bench/bench_stanza.h
	@mkdir -p $(@D)
	def=0; printf '#include <expat.h>\nint main(void) {\n%s\n}\n' \
	    'return XML_SetReparseDeferralEnabled(0, XML_FALSE);' \
	    | gcc -x c -o /dev/null - -lexpat 2>/dev/null && def=1; \
	gcc -O2 -Wall -Wextra -DBENCH_REPARSE_DEFERRAL=$$def -o $@ $< -lexpat

# the module's parser alone, compiled as the module is (the configured
# nginx tree of the build, its CFLAGS)
$(BENCH_DIR)/scan_only: bench/scan_only.c bench/bench_stanza.h \
    $(BUILD)/$(MODULE).so
	@mkdir -p $(@D)
	cd $(SRC_COPY) && \
	gcc $$(sed -n 's/^CFLAGS *= *//p' objs/Makefile) \
	    -I src/core -I src/event -I src/event/modules -I src/os/unix \
	    -I objs -I src/stream -I $(TOP)/ngx_xmpp_federation_module \
	    -o $@ $(TOP)/bench/scan_only.c \
	    $(TOP)/ngx_xmpp_federation_module/ngx_xmpp_federation_parse.c \
	    -lexpat

$(BENCH_DIR)/xmpp_sessions: bench/xmpp_sessions.c \
    bench/bench_common.c bench/bench_common.h
	@mkdir -p $(@D)
	gcc -O2 -Wall -Wextra -o $@ bench/xmpp_sessions.c bench/bench_common.c -lssl -lcrypto

$(BENCH_DIR)/xmpp_idle: bench/xmpp_idle.c \
    bench/bench_common.c bench/bench_common.h
	@mkdir -p $(@D)
	gcc -O2 -Wall -Wextra -o $@ bench/xmpp_idle.c bench/bench_common.c

bench: build $(BENCH_DIR)/xmpp_bench $(BENCH_DIR)/expat_only \
       $(BENCH_DIR)/xmpp_sessions $(BENCH_DIR)/xmpp_idle \
       $(BENCH_DIR)/scan_only
	@if [ -n "$(SANITIZE)" ]; then \
	    echo "make bench measures the plain build: run it without SANITIZE"; \
	    exit 1; \
	fi
	perl bench/run.pl $(NGINX_BIN) $(STREAM_SO) $(BUILD)/$(MODULE).so \
	    $(BENCH_DIR)/xmpp_bench $(BENCH_DIR)/results.txt \
	    $(BENCH_DIR)/expat_only $(BENCH_DIR)/xmpp_sessions \
	    $(BENCH_DIR)/xmpp_idle $(BENCH_DIR)/scan_only

clean:
	rm -rf build
