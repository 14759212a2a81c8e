/*
 * Copyright (C) ngx_xmpp_federation_module authors
 */


/*
 * The partner's stream header of expat_only and scan_only, and the
 * benchmark's stanza, one for xmpp_bench, expat_only and scan_only:
 * a <message/> of exactly SIZE bytes from bob@fabrikam.example to
 * alice@contoso.example, its id the 10 digits of ID, its body padded
 * with Latin.  bench_stanza() writes it to BUF and returns the length
 * of its start tags, or 0 when SIZE is too small for them and the end
 * tags.
 */


#ifndef BENCH_STANZA_H
#define BENCH_STANZA_H


#include <stdio.h>
#include <string.h>


#define BENCH_STANZA_ID_LEN  10

#define BENCH_STREAM_HEADER                                                   \
    "<?xml version='1.0'?><stream:stream xmlns='jabber:server'"               \
    " xmlns:db='jabber:server:dialback'"                                      \
    " xmlns:stream='http://etherx.jabber.org/streams'"                        \
    " from='fabrikam.example' to='contoso.example' version='1.0'>"


static size_t
bench_stanza(char *buf, size_t size, unsigned id)
{
    int     len;
    char    head[256];
    size_t  k, pad;

    static const char  lorem[] =
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do "
        "eiusmod tempor incididunt ut labore et dolore magna aliqua. ";

    static const char  tail[] = "</body></message>";

    len = snprintf(head, sizeof(head),
                   "<message from='bob@fabrikam.example/r'"
                   " to='alice@contoso.example' id='m%0*u'"
                   " type='chat'><body>", BENCH_STANZA_ID_LEN, id);

    if (len < 0 || size < (size_t) len + sizeof(tail) - 1) {
        return 0;
    }

    pad = size - len - (sizeof(tail) - 1);

    memcpy(buf, head, len);

    for (k = 0; k < pad; k++) {
        buf[len + k] = lorem[k % (sizeof(lorem) - 1)];
    }

    memcpy(buf + len + pad, tail, sizeof(tail) - 1);

    return len;
}


#endif /* BENCH_STANZA_H */
