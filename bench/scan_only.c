/*
 * Copyright (C) ngx_xmpp_federation_module authors
 */


/*
 * Context for make bench: how fast the module's own parser (the stanza
 * scan, with expat behind it) takes the benchmark's stanza stream, in
 * memory, outside nginx: the stream header, then one block of 16 KB of
 * stanzas (as the relay reads them) given again and again, each stanza
 * an element event as on the relay.  The parser's few calls into nginx
 * (memory from a pool, logging) are answered here with malloc() and
 * nothing; the memory is not given back, the program is short.
 *
 *   scan_only COUNT SIZE
 *
 * Output, one line:  stanzas=N seconds=T
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include <ngx_xmpp_federation.h>

#include <time.h>

#include "bench_stanza.h"


#define BLOCK  16384


/* what the parser needs of nginx */

void *
ngx_alloc(size_t size, ngx_log_t *log)
{
    return malloc(size);
}


void *
ngx_pcalloc(ngx_pool_t *pool, size_t size)
{
    return calloc(1, size);
}


void *
ngx_pnalloc(ngx_pool_t *pool, size_t size)
{
    return malloc(size);
}


ngx_pool_cleanup_t *
ngx_pool_cleanup_add(ngx_pool_t *p, size_t size)
{
    return calloc(1, sizeof(ngx_pool_cleanup_t));
}


/* expat's hash salt: any bytes do for a measurement */

ngx_int_t
ngx_xmpp_federation_random(u_char *buf, size_t len)
{
    while (len--) {
        *buf++ = (u_char) rand();
    }

    return NGX_OK;
}


void
ngx_log_error_core(ngx_uint_t level, ngx_log_t *log, ngx_err_t err,
    const char *fmt, ...)
{
}


u_char *
ngx_sprintf(u_char *buf, const char *fmt, ...)
{
    return buf;
}


ngx_int_t
ngx_strcasecmp(u_char *s1, u_char *s2)
{
    return strcasecmp((char *) s1, (char *) s2);
}


size_t
ngx_xmpp_federation_escape(u_char *dst, ngx_str_t *src)
{
    return 0;
}


int
main(int argc, char **argv)
{
    off_t                          base;
    size_t                         size, per, i;
    u_char                        *block;
    uint64_t                       count, elements;
    ngx_int_t                      rc;
    ngx_buf_t                      b, *bp;
    ngx_log_t                      log;
    struct timespec                t0, t1;
    ngx_xmpp_federation_parser_t  *p;

    static u_char  hdr[] = BENCH_STREAM_HEADER;

    if (argc != 3) {
        fprintf(stderr, "usage: scan_only COUNT SIZE\n");
        return 2;
    }

    count = strtoull(argv[1], NULL, 10);
    size = strtoul(argv[2], NULL, 10);

    if (size == 0 || size > BLOCK) {
        fprintf(stderr, "scan_only: bad size\n");
        return 2;
    }

    /* the same bytes as xmpp_bench sends, as many as a read holds */

    per = BLOCK / size;

    if (count % per) {
        count += per - count % per;
    }

    block = malloc(BLOCK);
    if (block == NULL) {
        fprintf(stderr, "scan_only: no memory\n");
        return 2;
    }

    for (i = 0; i < per; i++) {
        if (bench_stanza((char *) block + i * size, size, 0) == 0) {
            fprintf(stderr, "scan_only: bad size\n");
            return 2;
        }
    }

    ngx_memzero(&log, sizeof(ngx_log_t));

    /* as the relay's: a 256 KB stanza limit, the caller's buffer */

    p = ngx_xmpp_federation_parser_create(NULL, &log, 4096, 262144);
    if (p == NULL) {
        fprintf(stderr, "scan_only: no parser\n");
        return 2;
    }

    ngx_memzero(&b, sizeof(ngx_buf_t));
    bp = &b;
    base = 0;

    ngx_xmpp_federation_parser_scan(p, &bp, &base);

    b.start = hdr;
    b.pos = hdr;
    b.last = hdr + sizeof(hdr) - 1;

    rc = ngx_xmpp_federation_parse(p, hdr, sizeof(hdr) - 1);

    if (rc != NGX_OK || p->event != ngx_xmpp_ev_header) {
        fprintf(stderr, "scan_only: no stream header\n");
        return 1;
    }

    while (ngx_xmpp_federation_parse_next(p) == NGX_OK
           && p->event != ngx_xmpp_ev_none)
    {
        /* void */
    }

    base += sizeof(hdr) - 1;

    b.start = block;
    b.pos = block;
    b.last = block + per * size;

    elements = 0;

    clock_gettime(CLOCK_MONOTONIC, &t0);

    for (i = 0; i < count / per; i++) {

        rc = ngx_xmpp_federation_parse(p, block, per * size);

        for ( ;; ) {
            if (rc != NGX_OK && rc != NGX_AGAIN) {
                fprintf(stderr, "scan_only: %s\n",
                        p->reason ? p->reason : "parser error");
                return 1;
            }

            if (p->event == ngx_xmpp_ev_none) {
                break;
            }

            if (p->event == ngx_xmpp_ev_element) {
                elements++;
            }

            rc = ngx_xmpp_federation_parse_next(p);
        }

        /* the next read: the same bytes, further on in the stream */

        base += per * size;
    }

    clock_gettime(CLOCK_MONOTONIC, &t1);

    if (elements != count) {
        fprintf(stderr, "scan_only: %llu elements, expected %llu\n",
                (unsigned long long) elements, (unsigned long long) count);
        return 1;
    }

    printf("stanzas=%llu seconds=%.6f\n", (unsigned long long) count,
           (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);

    return 0;
}
