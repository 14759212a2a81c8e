/*
 * Copyright (C) ngx_xmpp_federation_module authors
 */


/*
 * One measured run of the relay benchmark (make bench; bench/run.pl drives
 * it and nginx).  It plays every peer of the edge on loopback:
 *
 *   client  a partner server: opens a stream from fabrikam.example to
 *           contoso.example, authenticates by dialback, then sends COUNT
 *           message stanzas of SIZE bytes each in large writes and ends
 *           the stream;
 *   auth    (edge mode) the authoritative server of fabrikam.example:
 *           answers the edge's db:verify with "valid";
 *   sink    the gateway: (edge mode) accepts the edge's stream, verifies
 *           the edge's key by db:verify at the edge's outbound listener,
 *           answers db:result "valid", then reads everything, compares it
 *           with what must arrive, and discards it; (stock mode) only
 *           reads, compares and discards.
 *
 *   xmpp_bench edge  EDGE_PORT VERIFY_PORT SINK_PORT AUTH_PORT COUNT SIZE
 *   xmpp_bench stock PROXY_PORT SINK_PORT COUNT SIZE
 *
 * The clock starts when the client writes the first stanza and stops when
 * the sink has read the last byte (CLOCK_MONOTONIC is one clock for all
 * processes).  The sink checks every byte: the relay must deliver the
 * stanzas exactly as sent, and then </stream:stream>.  Output, one line:
 *
 *   mode=edge stanzas=N bytes=B seconds=T client_cpu=C sink_cpu=S
 *
 * Client, auth and sink are separate processes with blocking sockets; the
 * CPU times let the reader see that they are not what limits the relay.
 */


#define _GNU_SOURCE

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>

#include "bench_common.h"
#include "bench_stanza.h"


#define CHUNK_STANZAS  64             /* stanzas per write() */
#define READ_SIZE      (256 * 1024)
#define CTL_MAX        65536          /* negotiation text */
#define STREAM_END     "</stream:stream>"
#define TIMEOUT        60             /* seconds, every process */

#define HEADER_FMT \
    "<?xml version='1.0'?><stream:stream xmlns='jabber:server'" \
    " xmlns:db='jabber:server:dialback'" \
    " xmlns:stream='http://etherx.jabber.org/streams'" \
    " from='%s' to='%s'%s version='1.0'>"


typedef struct {
    int     fd;
    char    buf[CTL_MAX + 1];
    size_t  len;
} conn_t;


const char  *bench_name = "xmpp_bench";


static void
send_str(conn_t *c, const char *fmt, ...)
{
    int      n;
    char     buf[4096];
    va_list  ap;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);

    if (n < 0 || (size_t) n >= sizeof(buf)) {
        die("line too long");
    }

    write_all(c->fd, buf, n);
}


/* reads until "what" is in the buffer; returns its end in c->buf */

static char *
read_until(conn_t *c, const char *what)
{
    char     *p;
    ssize_t   n;

    for ( ;; ) {
        c->buf[c->len] = '\0';

        p = strstr(c->buf, what);
        if (p) {
            return p + strlen(what);
        }

        if (c->len == CTL_MAX) {
            die("no \"%s\" in %zu bytes", what, c->len);
        }

        n = read(c->fd, c->buf + c->len, CTL_MAX - c->len);

        if (n == -1 && errno == EINTR) {
            continue;
        }

        if (n <= 0) {
            die("connection closed waiting for \"%s\", got: %.*s", what,
                (int) c->len, c->buf);
        }

        c->len += n;
    }
}


/* the end of the start tag that begins at "tag" (values hold no '>') */

static char *
read_start_tag(conn_t *c, const char *tag)
{
    char     *p, *q;
    ssize_t   n;

    /* c->buf does not move: p stays valid while more is read */

    p = read_until(c, tag);

    for ( ;; ) {
        q = strchr(p, '>');
        if (q) {
            return q + 1;
        }

        if (c->len == CTL_MAX) {
            die("start tag too long");
        }

        n = read(c->fd, c->buf + c->len, CTL_MAX - c->len);

        if (n == -1 && errno == EINTR) {
            continue;
        }

        if (n <= 0) {
            die("connection closed in a start tag");
        }

        c->len += n;
        c->buf[c->len] = '\0';
    }
}


/* drops the first "upto" bytes of the buffer */

static void
consume(conn_t *c, char *upto)
{
    size_t  n;

    n = upto - c->buf;
    memmove(c->buf, upto, c->len - n);
    c->len -= n;
    c->buf[c->len] = '\0';
}


/* value of attribute "name" in [start, end), into out */

/*
 * The authoritative server of fabrikam.example: every db:verify is valid
 * (the benchmark measures the relay, not the key).
 */

static void
auth_server(int lfd)
{
    char    *p, *e, from[256], to[256], id[256];
    conn_t  *c;

    c = malloc(sizeof(conn_t));
    if (c == NULL) {
        die("no memory");
    }

    for ( ;; ) {
        c->fd = accept_one(lfd);
        c->len = 0;

        e = read_start_tag(c, "<stream:stream");
        attr(c->buf, e, "to", to, sizeof(to));
        consume(c, e);

        send_str(c, "<?xml version='1.0'?><stream:stream"
                 " xmlns='jabber:server' xmlns:db='jabber:server:dialback'"
                 " xmlns:stream='http://etherx.jabber.org/streams'"
                 " id='benchauth' from='%s' version='1.0'>"
                 "<stream:features/>", to);

        (void) read_until(c, "</db:verify>");
        p = strstr(c->buf, "<db:verify");
        e = strchr(p, '>');
        attr(p, e, "from", from, sizeof(from));
        attr(p, e, "to", to, sizeof(to));
        attr(p, e, "id", id, sizeof(id));

        send_str(c, "<db:verify from='%s' to='%s' id='%s' type='valid'/>",
                 to, from, id);

        /* the edge closes the stream when it is done */
        while (read(c->fd, c->buf, CTL_MAX) > 0) { /* void */ }

        close(c->fd);
    }
}


/*
 * The gateway side of the edge: the hand-off dialogue, as the scripted
 * gateway of t/xmpp_dialback.t does it; returns how many bytes of
 * relayed data are already in the buffer.
 */

static size_t
gateway_handshake(conn_t *c, int verify_port)
{
    char    *p, *e, from[256], to[256], key[512], type[32];
    size_t   n;
    conn_t  *v;

    e = read_start_tag(c, "<stream:stream");
    attr(c->buf, e, "from", from, sizeof(from));
    attr(c->buf, e, "to", to, sizeof(to));
    consume(c, e);

    send_str(c, "<?xml version='1.0'?><stream:stream xmlns='jabber:server'"
             " xmlns:db='jabber:server:dialback'"
             " xmlns:stream='http://etherx.jabber.org/streams'"
             " id='benchgw' from='%s' version='1.0'><stream:features>"
             "<dialback xmlns='urn:xmpp:features:dialback'/>"
             "</stream:features>", to);

    e = read_until(c, "</db:result>");
    p = strstr(c->buf, "<db:result");
    if (p == NULL) {
        die("no db:result from the edge");
    }

    p = strchr(p, '>') + 1;
    n = e - sizeof("</db:result>") + 1 - p;
    if (n >= sizeof(key)) {
        die("key too long");
    }

    memcpy(key, p, n);
    key[n] = '\0';

    consume(c, e);

    /* dialback to "the partner domain": the edge's outbound listener */

    v = malloc(sizeof(conn_t));
    if (v == NULL) {
        die("no memory");
    }

    v->fd = connect_to(verify_port, 0);
    v->len = 0;

    send_str(v, HEADER_FMT, to, from, "");
    (void) read_until(v, "features");
    send_str(v, "<db:verify from='%s' to='%s' id='benchgw'>%s</db:verify>",
             to, from, key);

    e = read_start_tag(v, "<db:verify");
    p = strstr(v->buf, "<db:verify");
    attr(p, e, "type", type, sizeof(type));

    if (strcmp(type, "valid") != 0) {
        die("the edge says its own key is \"%s\"", type);
    }

    send_str(v, STREAM_END);
    close(v->fd);
    free(v);

    send_str(c, "<db:result from='%s' to='%s' type='valid'/>", to, from);

    return c->len;
}


/*
 * The byte stream the sink expects, and the client sends: PREFIX (the
 * stream header for the stock proxy, which relays it; nothing for the
 * edge, which answers it), COUNT numbered stanzas of SIZE bytes, then
 * </stream:stream>.  Any byte of it can be made on demand, so the sink
 * compares everything it reads without keeping anything.
 */

typedef struct {
    char        *stanza;        /* the stanza with id 0 */
    size_t       size;
    size_t       idpos;
    const char  *prefix;
    size_t       prefix_len;
    uint64_t     count;
    uint64_t     total;
} gen_t;


#define ID_LEN  BENCH_STANZA_ID_LEN


static void
gen_init(gen_t *g, size_t size, uint64_t count, const char *prefix)
{
    g->stanza = malloc(size);
    if (g->stanza == NULL) {
        die("no memory");
    }

    if (bench_stanza(g->stanza, size, 0) == 0) {
        die("stanza size %zu is too small", size);
    }

    g->size = size;
    g->idpos = strstr(g->stanza, "id='m") - g->stanza + 5;
    g->prefix = prefix;
    g->prefix_len = strlen(prefix);
    g->count = count;
    g->total = g->prefix_len + count * size + sizeof(STREAM_END) - 1;
}


/* the expected bytes [off, off + len) of the stream; zeros past its end */

static void
gen_fill(gen_t *g, uint64_t off, char *dst, size_t len)
{
    int       i;
    char      id[ID_LEN];
    size_t    k, in, a, b;
    uint64_t  rel, seq, body;

    body = g->count * g->size;

    while (len) {

        if (off < g->prefix_len) {
            k = g->prefix_len - off < len ? g->prefix_len - off : len;
            memcpy(dst, g->prefix + off, k);

        } else if (off - g->prefix_len < body) {
            rel = off - g->prefix_len;
            seq = rel / g->size;
            in = rel % g->size;
            k = g->size - in < len ? g->size - in : len;

            memcpy(dst, g->stanza + in, k);

            /* the part of the id that falls into [in, in + k) */

            a = in > g->idpos ? in : g->idpos;
            b = in + k < g->idpos + ID_LEN ? in + k : g->idpos + ID_LEN;

            if (a < b) {
                for (i = ID_LEN - 1; i >= 0; i--) {
                    id[i] = '0' + seq % 10;
                    seq /= 10;
                }

                memcpy(dst + (a - in), id + (a - g->idpos), b - a);
            }

        } else if (off < g->total) {
            rel = off - g->prefix_len - body;
            k = g->total - off < len ? g->total - off : len;
            memcpy(dst, STREAM_END + rel, k);

        } else {
            k = len;
            memset(dst, 0, k);
        }

        dst += k;
        off += k;
        len -= k;
    }
}


/* the first and the last bytes the sink saw, for its checks and errors */

#define SEEN  64

typedef struct {
    char    head[SEEN];
    size_t  head_len;
    char    tail[SEEN];
    size_t  tail_len;
} seen_t;


static void
seen_add(seen_t *seen, const char *data, size_t n)
{
    size_t  k;

    if (seen->head_len < SEEN) {
        k = SEEN - seen->head_len < n ? SEEN - seen->head_len : n;
        memcpy(seen->head + seen->head_len, data, k);
        seen->head_len += k;
    }

    if (n >= SEEN) {
        memcpy(seen->tail, data + n - SEEN, SEEN);
        seen->tail_len = SEEN;
        return;
    }

    k = seen->tail_len + n > SEEN ? seen->tail_len + n - SEEN : 0;
    memmove(seen->tail, seen->tail + k, seen->tail_len - k);
    seen->tail_len -= k;
    memcpy(seen->tail + seen->tail_len, data, n);
    seen->tail_len += n;
}


static void
sink_fail(seen_t *seen, const char *fmt, uint64_t got, uint64_t expect)
{
    fprintf(stderr, "xmpp_bench[%d]: sink: ", (int) getpid());
    fprintf(stderr, fmt, (unsigned long long) got,
            (unsigned long long) expect);
    fprintf(stderr, "\n  first bytes: \"%.*s\"\n  last bytes:  \"%.*s\"\n",
            (int) seen->head_len, seen->head, (int) seen->tail_len,
            seen->tail);
    exit(2);
}


/*
 * Reads and discards until "expect" bytes have arrived; reports the time
 * of the last byte on "report".
 */

static void
sink_compare(gen_t *g, uint64_t got, const char *data, char *exp, size_t n)
{
    size_t    i, a, k;
    uint64_t  off;

    gen_fill(g, got, exp, n);

    if (memcmp(data, exp, n) == 0) {
        return;
    }

    for (i = 0; data[i] == exp[i]; i++) { /* void */ }

    off = got + i;
    a = i > 24 ? i - 24 : 0;
    k = n - a < 48 ? n - a : 48;

    fprintf(stderr, "xmpp_bench[%d]: sink: byte %llu of the stream differs"
            " (stanza %lld)\n  expected: \"%.*s\"\n  received: \"%.*s\"\n",
            (int) getpid(), (unsigned long long) off,
            off < g->prefix_len ? -1LL
                : (long long) ((off - g->prefix_len) / g->size),
            (int) k, exp + a, (int) k, data + a);

    exit(2);
}


static void
sink(int lfd, int edge, int verify_port, gen_t *g, int report)
{
    char       *buf, *exp;
    size_t      end;
    ssize_t     n;
    uint64_t    got, t, expect;
    seen_t      seen;
    conn_t     *c;

    expect = g->total;

    c = malloc(sizeof(conn_t));
    buf = malloc(READ_SIZE);
    exp = malloc(READ_SIZE > CTL_MAX ? READ_SIZE : CTL_MAX);
    if (c == NULL || buf == NULL || exp == NULL) {
        die("no memory");
    }

    c->fd = accept_one(lfd);
    c->len = 0;

    got = 0;
    memset(&seen, 0, sizeof(seen));

    if (edge) {
        got = gateway_handshake(c, verify_port);
        seen_add(&seen, c->buf, got);
        sink_compare(g, 0, c->buf, exp, got);
    }

    while (got < expect) {
        n = read(c->fd, buf, READ_SIZE);

        if (n == -1 && errno == EINTR) {
            continue;
        }

        if (n <= 0) {
            sink_fail(&seen, "stream closed after %llu of %llu bytes",
                      got, expect);
        }

        seen_add(&seen, buf, n);
        sink_compare(g, got, buf, exp, n);
        got += n;
    }

    t = now_ns();

    if (got != expect) {
        sink_fail(&seen, "%llu bytes, expected %llu", got, expect);
    }

    end = sizeof(STREAM_END) - 1;

    if (seen.tail_len < end
        || memcmp(seen.tail + seen.tail_len - end, STREAM_END, end) != 0)
    {
        sink_fail(&seen, "%llu of %llu bytes, but they do not end with "
                  STREAM_END, got, expect);
    }

    write_all(report, (char *) &t, sizeof(t));

    if (edge) {
        send_str(c, STREAM_END);
    }

    close(c->fd);
}


/* the stanzas of the stream, CHUNK_STANZAS per write() */

static uint64_t
send_stanzas(int fd, gen_t *g)
{
    char      *chunk;
    uint64_t   t0, seq, k;

    chunk = malloc(CHUNK_STANZAS * g->size);
    if (chunk == NULL) {
        die("no memory");
    }

    t0 = now_ns();

    for (seq = 0; seq < g->count; seq += k) {
        k = g->count - seq < CHUNK_STANZAS ? g->count - seq : CHUNK_STANZAS;

        gen_fill(g, g->prefix_len + seq * g->size, chunk, k * g->size);
        write_all(fd, chunk, k * g->size);
    }

    free(chunk);

    return t0;
}


static void
usage(void)
{
    fprintf(stderr,
            "usage: xmpp_bench edge EDGE_PORT VERIFY_PORT SINK_PORT"
            " AUTH_PORT COUNT SIZE\n"
            "       xmpp_bench stock PROXY_PORT SINK_PORT COUNT SIZE\n");
    exit(2);
}


int
main(int argc, char **argv)
{
    int             edge, port, verify_port, sink_port, auth_port, one;
    int             sink_lfd, auth_lfd, rep[2], status;
    char            hdr[1024];
    pid_t           sink_pid, auth_pid;
    gen_t           gen;
    size_t          size;
    ssize_t         n;
    uint64_t        count, t0, t1;
    conn_t         *c;
    struct rusage   self, children;

    if (argc < 2) {
        usage();
    }

    edge = strcmp(argv[1], "edge") == 0;

    if (edge && argc == 8) {
        port = atoi(argv[2]);
        verify_port = atoi(argv[3]);
        sink_port = atoi(argv[4]);
        auth_port = atoi(argv[5]);
        count = strtoull(argv[6], NULL, 10);
        size = strtoul(argv[7], NULL, 10);

    } else if (!edge && strcmp(argv[1], "stock") == 0 && argc == 6) {
        port = atoi(argv[2]);
        verify_port = 0;
        sink_port = atoi(argv[3]);
        auth_port = 0;
        count = strtoull(argv[4], NULL, 10);
        size = strtoul(argv[5], NULL, 10);

    } else {
        usage();
    }

    signal(SIGPIPE, SIG_IGN);

    snprintf(hdr, sizeof(hdr), HEADER_FMT, "fabrikam.example",
             "contoso.example", "");

    /*
     * The edge relays the stanzas and its own </stream:stream>, the stock
     * proxy everything the client sends.
     */

    gen_init(&gen, size, count, edge ? "" : hdr);

    if (pipe(rep) == -1) {
        die("pipe(): %s", strerror(errno));
    }

    sink_lfd = listen_on(sink_port, 16);
    auth_lfd = edge ? listen_on(auth_port, 16) : -1;

    auth_pid = 0;

    if (edge) {
        auth_pid = fork();
        if (auth_pid == 0) {
            alarm(TIMEOUT);
            close(sink_lfd);
            close(rep[0]);
            close(rep[1]);
            auth_server(auth_lfd);
            exit(0);
        }

        close(auth_lfd);
    }

    sink_pid = fork();
    if (sink_pid == 0) {
        alarm(TIMEOUT);
        close(rep[0]);
        sink(sink_lfd, edge, verify_port, &gen, rep[1]);
        exit(0);
    }

    close(sink_lfd);
    close(rep[1]);

    alarm(TIMEOUT);

    c = malloc(sizeof(conn_t));
    if (c == NULL) {
        die("no memory");
    }

    c->fd = connect_to(port, 0);
    c->len = 0;

    one = 1;
    (void) setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    if (edge) {
        send_str(c, "%s", hdr);
        (void) read_until(c, "features");
        send_str(c, "<db:result from='fabrikam.example'"
                 " to='contoso.example'>benchkey</db:result>");

        (void) read_until(c, "type='valid'");
        t0 = send_stanzas(c->fd, &gen);

    } else {
        t0 = now_ns();
        send_str(c, "%s", hdr);
        (void) send_stanzas(c->fd, &gen);
    }

    send_str(c, STREAM_END);

    n = read(rep[0], &t1, sizeof(t1));
    if (n != sizeof(t1)) {
        fprintf(stderr, "xmpp_bench: no result from the sink\n");
        kill(sink_pid, SIGTERM);
        if (auth_pid) {
            kill(auth_pid, SIGTERM);
        }
        return 1;
    }

    (void) waitpid(sink_pid, &status, 0);

    if (auth_pid) {
        kill(auth_pid, SIGTERM);
        (void) waitpid(auth_pid, NULL, 0);
    }

    close(c->fd);

    /* CPU of the peers: the sink must not be what limits the relay */

    (void) getrusage(RUSAGE_SELF, &self);
    (void) getrusage(RUSAGE_CHILDREN, &children);

    printf("mode=%s stanzas=%llu bytes=%llu seconds=%.6f"
           " client_cpu=%.3f sink_cpu=%.3f\n",
           edge ? "edge" : "stock", (unsigned long long) count,
           (unsigned long long) (count * size),
           (double) (t1 - t0) / 1e9, cpu_seconds(&self),
           cpu_seconds(&children));

    return 0;
}
