/*
 * Copyright (C) ngx_xmpp_federation_module authors
 */


/*
 * Context for make bench: how fast expat alone parses the benchmark's
 * stanza stream, in memory, with no sockets and no nginx, set up as the
 * module sets it up (namespaces with triplets, reparse deferral off,
 * parser suspended at the stream header and at the end of each top-level
 * element, then resumed), fed in CHUNK-byte pieces as the relay reads them.
 * A block of BLOCK stanzas is fed over and over: the relay too parses
 * bytes that recv() has just brought into its cache.
 *
 *   expat_only COUNT SIZE CHUNK
 *
 * Output, one line:  stanzas=N bytes=B seconds=T
 */


#include <expat.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_stanza.h"


#define BLOCK  4096


static XML_Parser  parser;
static int         depth;
static uint64_t    elements;


static void XMLCALL
start_element(void *data, const XML_Char *name, const XML_Char **atts)
{
    (void) data;
    (void) name;
    (void) atts;

    if (depth++ == 0) {
        /* the stream header */
        (void) XML_StopParser(parser, XML_TRUE);
    }
}


static void XMLCALL
end_element(void *data, const XML_Char *name)
{
    (void) data;
    (void) name;

    if (--depth == 1) {
        elements++;
        (void) XML_StopParser(parser, XML_TRUE);
    }
}


static void XMLCALL
character_data(void *data, const XML_Char *s, int len)
{
    (void) data;
    (void) s;
    (void) len;
}


int
main(int argc, char **argv)
{
    char              *buf;
    size_t             size, chunk, total, off, n, i, block;
    uint64_t           count, fed;
    enum XML_Status    status;
    struct timespec    t0, t1;

    static const char  hdr[] = BENCH_STREAM_HEADER;

    if (argc != 4) {
        fprintf(stderr, "usage: expat_only COUNT SIZE CHUNK\n");
        return 2;
    }

    count = strtoull(argv[1], NULL, 10);
    size = strtoul(argv[2], NULL, 10);
    chunk = strtoul(argv[3], NULL, 10);

    if (chunk == 0) {
        fprintf(stderr, "expat_only: bad chunk\n");
        return 2;
    }

    /* the same bytes as xmpp_bench sends */

    block = count < BLOCK ? count : BLOCK;
    total = sizeof(hdr) - 1 + block * size;

    buf = malloc(total);
    if (buf == NULL) {
        fprintf(stderr, "expat_only: no memory\n");
        return 2;
    }

    memcpy(buf, hdr, sizeof(hdr) - 1);

    for (i = 0; i < block; i++) {
        if (bench_stanza(buf + sizeof(hdr) - 1 + i * size, size, 0) == 0) {
            fprintf(stderr, "expat_only: bad size\n");
            return 2;
        }
    }

    parser = XML_ParserCreateNS("UTF-8", ' ');
    if (parser == NULL) {
        fprintf(stderr, "expat_only: XML_ParserCreateNS() failed\n");
        return 2;
    }

    XML_SetReturnNSTriplet(parser, 1);
    XML_SetElementHandler(parser, start_element, end_element);
    XML_SetCharacterDataHandler(parser, character_data);

#if (BENCH_REPARSE_DEFERRAL)
    /* as the module: each tag is seen as soon as its last byte is in */
    (void) XML_SetReparseDeferralEnabled(parser, XML_FALSE);
#endif

    clock_gettime(CLOCK_MONOTONIC, &t0);

    /* the header once, then the stanzas of the block over and over */

    off = 0;
    fed = 0;
    n = sizeof(hdr) - 1;

    for ( ;; ) {
        status = XML_Parse(parser, buf + off, (int) n, 0);

        while (status == XML_STATUS_SUSPENDED) {
            status = XML_ResumeParser(parser);
        }

        if (status != XML_STATUS_OK) {
            fprintf(stderr, "expat_only: %s\n",
                    XML_ErrorString(XML_GetErrorCode(parser)));
            return 1;
        }

        if (off) {
            fed += n;
        }

        off += n;

        if (off == total) {
            off = sizeof(hdr) - 1;
        }

        if (fed == count * size) {
            break;
        }

        n = total - off < chunk ? total - off : chunk;

        if (n > count * size - fed) {
            n = count * size - fed;
        }
    }

    clock_gettime(CLOCK_MONOTONIC, &t1);

    if (elements != count) {
        fprintf(stderr, "expat_only: %llu elements, expected %llu\n",
                (unsigned long long) elements, (unsigned long long) count);
        return 1;
    }

    XML_ParserFree(parser);
    free(buf);

    printf("stanzas=%llu bytes=%llu seconds=%.6f\n",
           (unsigned long long) count, (unsigned long long) (count * size),
           (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);

    return 0;
}
