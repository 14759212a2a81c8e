/*
 * Copyright (C) ngx_xmpp_federation_module authors
 */


/*
 * One measured run of the session establishment benchmark (make bench;
 * bench/run.pl drives it and nginx).
 *
 *   xmpp_sessions edge  EDGE_PORT VERIFY_PORT SINK_PORT CERT KEY N PAR
 *   xmpp_sessions stock TLS_PORT CERT KEY N PAR
 *
 * edge: PAR client processes establish N federation sessions in all, one
 * after the other each, through the edge (xmpp_federation inbound, the
 * partner fabrikam.example with "tls required; sasl required; dialback
 * off"):
 *
 *   connect; stream header; <stream:features/> with <starttls/>;
 *   <starttls/>; <proceed/>; full TLS handshake with the client
 *   certificate CERT/KEY (fabrikam.example); stream header; features with
 *   the EXTERNAL mechanism; <auth mechanism='EXTERNAL'>=</auth>;
 *   <success/>; stream header; features; one <message/> stanza; then the
 *   client waits until the gateway has that stanza: the session is
 *   established.  Then </stream:stream>, the edge's </stream:stream>,
 *   close.
 *
 * The gateway is one process here (epoll): it accepts the edge's
 * hand-off streams, checks each edge key with <db:verify/> at the edge's
 * internal listener (VERIFY_PORT, one stream kept open for the run, as a
 * server keeps its stream to a domain), answers <db:result type='valid'/>
 * and tells the client when its stanza arrived (a pipe per client).
 *
 * stock: PAR client processes make N TLS connections in all to a stock
 * "listen ... ssl" server with "return": connect, full handshake with the
 * same client certificate, read the one byte, close.
 *
 * Every handshake is a full one: the client has no session cache and
 * offers no session or ticket.  The client does not verify the server's
 * certificate (that is the client's cost, not the server's).  Output,
 * one line:
 *
 *   mode=edge sessions=N parallel=P seconds=T client_cpu=C sink_cpu=S
 *       tickets=K proto=TLSv1.3 cipher=... lat_p50_ms=.. lat_p99_ms=..
 *
 * (tickets: NewSessionTicket messages received in all; lat: connect to
 * close of one session, in milliseconds)
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
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "bench_common.h"


#define TIMEOUT     120               /* seconds, every process */
#define BUF_SIZE    16384
#define MAX_PAR     64

#define PARTNER     "fabrikam.example"
#define LOCAL       "contoso.example"

#define NS_TLS      "urn:ietf:params:xml:ns:xmpp-tls"
#define NS_SASL     "urn:ietf:params:xml:ns:xmpp-sasl"

#define HEADER \
    "<?xml version='1.0'?><stream:stream xmlns='jabber:server'" \
    " xmlns:stream='http://etherx.jabber.org/streams'" \
    " from='" PARTNER "' to='" LOCAL "' version='1.0'>"


const char  *bench_name = "xmpp_sessions";


/* the value of attribute "name" in [start, end) (quotes: ' or ") */

/*
 * The client: a blocking connection, plain or TLS, with a buffer of what
 * was read and not yet looked at.
 */

typedef struct {
    int       fd;
    SSL      *ssl;
    char      buf[BUF_SIZE + 1];
    size_t    len;
} conn_t;


static void
c_write(conn_t *c, const char *data, size_t len)
{
    int  n;

    if (c->ssl == NULL) {
        write_all(c->fd, data, len);
        return;
    }

    while (len) {
        n = SSL_write(c->ssl, data, len);
        if (n <= 0) {
            die("SSL_write(): %d", SSL_get_error(c->ssl, n));
        }

        data += n;
        len -= n;
    }
}


#define c_write_str(c, s)  c_write(c, s, sizeof(s) - 1)


/* more bytes into the buffer; 0 at the end of the stream */

static ssize_t
c_read(conn_t *c)
{
    int      err;
    ssize_t  n;

    if (c->len == BUF_SIZE) {
        die("%zu bytes and nothing expected in them: %.200s", c->len, c->buf);
    }

    for ( ;; ) {
        if (c->ssl) {
            n = SSL_read(c->ssl, c->buf + c->len, BUF_SIZE - c->len);

            if (n <= 0) {
                err = SSL_get_error(c->ssl, n);

                if (err == SSL_ERROR_ZERO_RETURN) {
                    return 0;
                }

                if (err == SSL_ERROR_SYSCALL && n == 0) {
                    return 0;
                }

                die("SSL_read(): %d", err);
            }

        } else {
            n = read(c->fd, c->buf + c->len, BUF_SIZE - c->len);

            if (n == -1 && errno == EINTR) {
                continue;
            }

            if (n == -1) {
                die("read(): %s", strerror(errno));
            }
        }

        c->len += n;
        c->buf[c->len] = '\0';

        return n;
    }
}


/* drops everything up to "upto" */

static void
consume(conn_t *c, char *upto)
{
    size_t  n;

    n = upto - c->buf;
    memmove(c->buf, upto, c->len - n);
    c->len -= n;
    c->buf[c->len] = '\0';
}


/* reads until "what" arrived; drops everything up to its end */

static void
expect(conn_t *c, const char *what)
{
    char  *p;

    for ( ;; ) {
        p = strstr(c->buf, what);

        if (p) {
            consume(c, p + strlen(what));
            return;
        }

        if (c->len && (p = strstr(c->buf, "<stream:error")) != NULL) {
            die("stream error waiting for \"%s\": %.300s", what, p);
        }

        if (c_read(c) == 0) {
            die("connection closed waiting for \"%s\", got: %.300s", what,
                c->buf);
        }
    }
}


/*
 * Reads a whole <stream:features/> element (after the stream header);
 * returns 1 if "what" is in it, drops it.
 */

static int
features(conn_t *c, const char *what)
{
    int    found;
    char  *p, *e, *end, save;

    for ( ;; ) {
        p = strstr(c->buf, "<stream:features");

        if (p) {
            e = strchr(p, '>');

            if (e && e[-1] == '/') {
                end = e + 1;
                break;
            }

            if (e && (end = strstr(e, "</stream:features>")) != NULL) {
                end += sizeof("</stream:features>") - 1;
                break;
            }
        }

        if ((p = strstr(c->buf, "<stream:error")) != NULL) {
            die("stream error instead of features: %.300s", p);
        }

        if (c_read(c) == 0) {
            die("connection closed waiting for features, got: %.300s",
                c->buf);
        }
    }

    save = *end;
    *end = '\0';
    found = what == NULL || strstr(p, what) != NULL;

    if (!found) {
        die("no \"%s\" in the features: %s", what, p);
    }

    *end = save;
    consume(c, end);

    return found;
}


/* shared by the client processes: counts, latencies, what TLS gave */

typedef struct {
    volatile uint64_t   tickets;
    char                proto[32];
    char                cipher[64];
    double              lat[];        /* ms, per session */
} shared_t;


static shared_t  *shared;


static int
new_session(SSL *ssl, SSL_SESSION *sess)
{
    (void) ssl;
    (void) sess;

    /* a ticket or session the server gave: counted, never reused */
    __sync_fetch_and_add(&shared->tickets, 1);

    return 0;
}


static SSL_CTX *
client_ctx(const char *cert, const char *key)
{
    SSL_CTX  *ctx;

    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        die("SSL_CTX_new() failed");
    }

    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1
        || SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
    {
        die("cannot load %s / %s", cert, key);
    }

    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);

    /* sessions from the server are counted, not stored or offered */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT
                                        |SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, new_session);

    return ctx;
}


static void
tls_start(conn_t *c, SSL_CTX *ctx)
{
    int  rc;

    c->ssl = SSL_new(ctx);
    if (c->ssl == NULL) {
        die("SSL_new() failed");
    }

    SSL_set_fd(c->ssl, c->fd);
    SSL_set_tlsext_host_name(c->ssl, LOCAL);

    rc = SSL_connect(c->ssl);
    if (rc != 1) {
        die("SSL_connect(): %d, %s", SSL_get_error(c->ssl, rc),
            ERR_error_string(ERR_get_error(), NULL));
    }

    c->len = 0;
    c->buf[0] = '\0';
}


static void
tls_close(conn_t *c)
{
    if (c->ssl) {
        if (shared->proto[0] == '\0') {
            snprintf(shared->proto, sizeof(shared->proto), "%s",
                     SSL_get_version(c->ssl));
            snprintf(shared->cipher, sizeof(shared->cipher), "%s",
                     SSL_get_cipher_name(c->ssl));
        }

        /* close_notify, not waiting for the server's */
        (void) SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
        c->ssl = NULL;
    }

    close(c->fd);
}


/* one federation session through the edge, until the gateway has it */

static void
edge_session(conn_t *c, SSL_CTX *ctx, int port, int notify, int w,
    unsigned seq)
{
    int      len;
    char     msg[512], got;
    ssize_t  n;

    c->fd = connect_to(port, 1);
    c->ssl = NULL;
    c->len = 0;
    c->buf[0] = '\0';

    c_write_str(c, HEADER);
    expect(c, "<stream:stream");
    expect(c, ">");
    (void) features(c, "starttls");

    c_write_str(c, "<starttls xmlns='" NS_TLS "'/>");
    expect(c, "<proceed");
    expect(c, ">");

    tls_start(c, ctx);

    c_write_str(c, HEADER);
    expect(c, "<stream:stream");
    expect(c, ">");
    (void) features(c, ">EXTERNAL<");

    c_write_str(c, "<auth xmlns='" NS_SASL "' mechanism='EXTERNAL'>=</auth>");
    expect(c, "<success");
    expect(c, ">");

    c_write_str(c, HEADER);
    expect(c, "<stream:stream");
    expect(c, ">");
    (void) features(c, NULL);

    len = snprintf(msg, sizeof(msg),
                   "<message from='bob@" PARTNER "/r' to='alice@" LOCAL "'"
                   " id='w%02d-%08u' type='chat'><body>hello</body>"
                   "</message>", w, seq);

    c_write(c, msg, len);

    /* the gateway says when it has the stanza */

    for ( ;; ) {
        n = read(notify, &got, 1);

        if (n == 1) {
            break;
        }

        if (n == 0 || errno != EINTR) {
            die("the gateway is gone");
        }
    }

    c_write_str(c, "</stream:stream>");

    /* the edge answers with its own end, then closes */

    while (strstr(c->buf, "</stream:stream>") == NULL) {
        if (c_read(c) == 0) {
            break;
        }
    }

    tls_close(c);
}


/* one TLS connection to stock nginx: handshake, one byte, close */

static void
stock_session(conn_t *c, SSL_CTX *ctx, int port)
{
    c->fd = connect_to(port, 1);
    c->ssl = NULL;
    c->len = 0;
    c->buf[0] = '\0';

    tls_start(c, ctx);

    if (c_read(c) == 0 || c->len != 1) {
        die("no byte from the stock server");
    }

    tls_close(c);
}


static void
client(int edge, int w, unsigned first, unsigned count, int port,
    const char *cert, const char *key, int notify, int start)
{
    char       go;
    conn_t    *c;
    SSL_CTX   *ctx;
    unsigned   i;
    uint64_t   t;

    ctx = client_ctx(cert, key);

    c = malloc(sizeof(conn_t));
    if (c == NULL) {
        die("no memory");
    }

    /* all clients start together */

    while (read(start, &go, 1) == -1 && errno == EINTR) { /* void */ }

    for (i = 0; i < count; i++) {
        t = now_ns();

        if (edge) {
            edge_session(c, ctx, port, notify, w, first + i);

        } else {
            stock_session(c, ctx, port);
        }

        shared->lat[first + i] = (now_ns() - t) / 1e6;
    }

    SSL_CTX_free(ctx);
}


/*
 * The gateway (edge mode): one process, epoll, every hand-off stream of
 * the edge at once.
 */

enum {
    GW_HEADER = 0,    /* waiting for the edge's stream header */
    GW_RESULT,        /* waiting for <db:result>key</db:result> */
    GW_VERIFY,        /* the key is being checked */
    GW_STANZA         /* stanzas, until the end */
};


typedef struct gw_s  gw_t;

struct gw_s {
    int        fd;
    int        state;
    unsigned   id;
    unsigned   stanzas;      /* the sessions it carried */
    char       from[256];
    char       to[256];
    gw_t      *next_verify;
    size_t     len;
    char       buf[4096 + 1];
};


static gw_t      *verify_head, *verify_tail;
static unsigned   gw_ids;


static void
gw_send(gw_t *g, const char *fmt, ...)
{
    int      n;
    char     buf[1024];
    va_list  ap;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);

    /* small and the edge reads at once: a blocking write is fine */
    write_all(g->fd, buf, n);
}


static void
gw_consume(gw_t *g, char *upto)
{
    size_t  n;

    n = upto - g->buf;
    memmove(g->buf, upto, g->len - n);
    g->len -= n;
    g->buf[g->len] = '\0';
}


/* moves a hand-off stream on as far as its buffer allows; 1: closed */

static int
gw_process(gw_t *g, int vfd, int *notify, int npar)
{
    int    w;
    char  *p, *e, key[128], id[64];

    for ( ;; ) {

        switch (g->state) {

        case GW_HEADER:
            p = strstr(g->buf, "<stream:stream");
            e = p ? strchr(p, '>') : NULL;
            if (e == NULL) {
                return 0;
            }

            attr(p, e, "from", g->from, sizeof(g->from));
            attr(p, e, "to", g->to, sizeof(g->to));
            gw_consume(g, e + 1);

            g->id = ++gw_ids;

            gw_send(g, "<?xml version='1.0'?><stream:stream"
                    " xmlns='jabber:server' xmlns:db='jabber:server:dialback'"
                    " xmlns:stream='http://etherx.jabber.org/streams'"
                    " id='gw%u' from='%s' version='1.0'><stream:features>"
                    "<dialback xmlns='urn:xmpp:features:dialback'/>"
                    "</stream:features>", g->id, g->to);

            g->state = GW_RESULT;
            break;

        case GW_RESULT:
            e = strstr(g->buf, "</db:result>");
            if (e == NULL) {
                return 0;
            }

            p = strstr(g->buf, "<db:result");
            p = p ? strchr(p, '>') : NULL;
            if (p == NULL || e - p - 1 >= (long) sizeof(key)) {
                die("gateway: bad db:result: %s", g->buf);
            }

            memcpy(key, p + 1, e - p - 1);
            key[e - p - 1] = '\0';
            gw_consume(g, e + sizeof("</db:result>") - 1);

            /* "dialback to the partner domain": the edge's listener */

            {
                char  line[1024];
                int   n;

                n = snprintf(line, sizeof(line),
                             "<db:verify from='%s' to='%s' id='gw%u'>%s"
                             "</db:verify>", g->to, g->from, g->id, key);
                write_all(vfd, line, n);
            }

            g->next_verify = NULL;

            if (verify_tail) {
                verify_tail->next_verify = g;
            } else {
                verify_head = g;
            }

            verify_tail = g;
            g->state = GW_VERIFY;
            return 0;

        case GW_VERIFY:
            /* held until the answer comes, see gw_verified() */
            return 0;

        case GW_STANZA:
            e = strstr(g->buf, "</message>");
            if (e == NULL) {
                if (strstr(g->buf, "</stream:stream>")) {
                    gw_send(g, "</stream:stream>");
                    return 1;
                }

                return 0;
            }

            p = strstr(g->buf, "<message");
            if (p == NULL || attr(p, e, "id", id, sizeof(id)) != 0
                || id[0] != 'w')
            {
                die("gateway: not the expected stanza: %s", g->buf);
            }

            w = atoi(id + 1);
            if (w < 0 || w >= npar) {
                die("gateway: stanza id %s", id);
            }

            gw_consume(g, e + sizeof("</message>") - 1);
            write_all(notify[w], "k", 1);
            g->stanzas++;

            /* a stream the edge keeps carries later sessions' stanzas */
            break;
        }
    }
}


static void
gw_verified(gw_t *g, const char *type)
{
    if (strcmp(type, "valid") != 0) {
        die("gateway: the edge says its key is \"%s\"", type);
    }

    gw_send(g, "<db:result from='%s' to='%s' type='valid'/>", g->to,
            g->from);

    g->state = GW_STANZA;
}


static void
gateway(int lfd, int verify_port, int *notify, int npar, int ready)
{
    int                  ep, vfd, i, n, fd, closed;
    char                *p, *e, vbuf[16384 + 1], id[64], type[32];
    gw_t                *g;
    size_t               vlen;
    ssize_t              r;
    struct epoll_event   ev, evs[64];

    ep = epoll_create1(0);
    if (ep == -1) {
        die("epoll_create1(): %s", strerror(errno));
    }

    /* one stream to the edge's internal listener for every check */

    vfd = connect_to(verify_port, 1);

    {
        char  hdr[512];

        n = snprintf(hdr, sizeof(hdr),
                     "<?xml version='1.0'?><stream:stream"
                     " xmlns='jabber:server'"
                     " xmlns:db='jabber:server:dialback'"
                     " xmlns:stream='http://etherx.jabber.org/streams'"
                     " from='" LOCAL "' to='" PARTNER "' version='1.0'>");
        write_all(vfd, hdr, n);
    }

    vlen = 0;

    for ( ;; ) {
        r = read(vfd, vbuf + vlen, sizeof(vbuf) - 1 - vlen);
        if (r <= 0) {
            die("gateway: the internal listener closed the stream");
        }

        vlen += r;
        vbuf[vlen] = '\0';

        e = strstr(vbuf, "</stream:features>");
        if (e) {
            e += sizeof("</stream:features>") - 1;
            vlen -= e - vbuf;
            memmove(vbuf, e, vlen + 1);
            break;
        }
    }

    ev.events = EPOLLIN;
    ev.data.ptr = NULL;               /* the listener */
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);

    ev.data.ptr = &vfd;               /* the verify stream */
    epoll_ctl(ep, EPOLL_CTL_ADD, vfd, &ev);

    write_all(ready, "r", 1);
    close(ready);

    for ( ;; ) {
        n = epoll_wait(ep, evs, 64, -1);

        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }

            die("epoll_wait(): %s", strerror(errno));
        }

        for (i = 0; i < n; i++) {

            if (evs[i].data.ptr == NULL) {
                fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                if (fd == -1) {
                    continue;
                }

                g = calloc(1, sizeof(gw_t));
                if (g == NULL) {
                    die("no memory");
                }

                g->fd = fd;
                ev.events = EPOLLIN;
                ev.data.ptr = g;
                epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                continue;
            }

            if (evs[i].data.ptr == &vfd) {
                r = read(vfd, vbuf + vlen, sizeof(vbuf) - 1 - vlen);
                if (r <= 0) {
                    die("gateway: the verify stream ended: %s", vbuf);
                }

                vlen += r;
                vbuf[vlen] = '\0';

                /* answers come in order: <db:verify .../> each */

                for ( ;; ) {
                    p = strstr(vbuf, "<db:verify");
                    e = p ? strchr(p, '>') : NULL;
                    if (e == NULL) {
                        break;
                    }

                    g = verify_head;

                    if (g == NULL
                        || attr(p, e, "id", id, sizeof(id)) != 0
                        || strtoul(id + 2, NULL, 10) != g->id)
                    {
                        die("gateway: unexpected answer: %.*s",
                            (int) (e - p + 1), p);
                    }

                    attr(p, e, "type", type, sizeof(type));

                    verify_head = g->next_verify;
                    if (verify_head == NULL) {
                        verify_tail = NULL;
                    }

                    e++;
                    vlen -= e - vbuf;
                    memmove(vbuf, e, vlen + 1);

                    gw_verified(g, type);

                    if (gw_process(g, vfd, notify, npar)) {
                        epoll_ctl(ep, EPOLL_CTL_DEL, g->fd, NULL);
                        close(g->fd);
                        free(g);
                    }
                }

                if (strstr(vbuf, "<stream:error")) {
                    die("gateway: verify stream error: %s", vbuf);
                }

                continue;
            }

            g = evs[i].data.ptr;
            closed = 0;

            for ( ;; ) {
                if (g->len == sizeof(g->buf) - 1) {
                    die("gateway: too much from the edge: %s", g->buf);
                }

                r = read(g->fd, g->buf + g->len, sizeof(g->buf) - 1 - g->len);

                if (r == -1 && errno == EAGAIN) {
                    break;
                }

                if (r <= 0) {
                    if (g->state != GW_STANZA || g->stanzas == 0) {
                        die("gateway: the edge closed a hand-off stream in"
                            " state %d: %s", g->state, g->buf);
                    }

                    closed = 1;
                    break;
                }

                g->len += r;
                g->buf[g->len] = '\0';

                if (gw_process(g, vfd, notify, npar)) {
                    closed = 1;
                    break;
                }
            }

            if (closed) {
                epoll_ctl(ep, EPOLL_CTL_DEL, g->fd, NULL);
                close(g->fd);
                free(g);
            }
        }
    }
}


static int
cmp_double(const void *a, const void *b)
{
    double  x = *(const double *) a, y = *(const double *) b;

    return x < y ? -1 : x > y;
}


static void
usage(void)
{
    fprintf(stderr,
            "usage: xmpp_sessions edge EDGE_PORT VERIFY_PORT SINK_PORT"
            " CERT KEY N PAR\n"
            "       xmpp_sessions stock TLS_PORT CERT KEY N PAR\n");
    exit(2);
}


int
main(int argc, char **argv)
{
    int             edge, port, verify_port, sink_port, par, w, status;
    int             lfd, ready[2], start[2], notify[MAX_PAR][2], wfd[MAX_PAR];
    int             failed;
    char            r;
    pid_t           sink_pid, pids[MAX_PAR];
    unsigned        n, first, k;
    uint64_t        t0, t1;
    const char     *cert, *key;
    struct rusage   ru, sink_ru;

    if (argc < 2) {
        usage();
    }

    edge = strcmp(argv[1], "edge") == 0;

    if (edge && argc == 9) {
        port = atoi(argv[2]);
        verify_port = atoi(argv[3]);
        sink_port = atoi(argv[4]);
        cert = argv[5];
        key = argv[6];
        n = strtoul(argv[7], NULL, 10);
        par = atoi(argv[8]);

    } else if (!edge && strcmp(argv[1], "stock") == 0 && argc == 7) {
        port = atoi(argv[2]);
        verify_port = 0;
        sink_port = 0;
        cert = argv[3];
        key = argv[4];
        n = strtoul(argv[5], NULL, 10);
        par = atoi(argv[6]);

    } else {
        usage();
    }

    if (par < 1 || par > MAX_PAR || n < (unsigned) par) {
        die("PAR must be 1..%d and at most N", MAX_PAR);
    }

    signal(SIGPIPE, SIG_IGN);

    shared = mmap(NULL, sizeof(shared_t) + n * sizeof(double),
                  PROT_READ|PROT_WRITE, MAP_SHARED|MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED) {
        die("mmap(): %s", strerror(errno));
    }

    sink_pid = 0;
    memset(&sink_ru, 0, sizeof(sink_ru));

    for (w = 0; w < par; w++) {
        notify[w][0] = notify[w][1] = -1;

        if (edge && pipe(notify[w]) == -1) {
            die("pipe(): %s", strerror(errno));
        }
    }

    if (edge) {
        if (pipe(ready) == -1) {
            die("pipe(): %s", strerror(errno));
        }

        lfd = listen_on(sink_port, 512);

        sink_pid = fork();
        if (sink_pid == -1) {
            die("fork(): %s", strerror(errno));
        }

        if (sink_pid == 0) {
            alarm(TIMEOUT);
            close(ready[0]);

            for (w = 0; w < par; w++) {
                close(notify[w][0]);
                wfd[w] = notify[w][1];
            }

            gateway(lfd, verify_port, wfd, par, ready[1]);
            exit(0);
        }

        close(lfd);
        close(ready[1]);

        for (w = 0; w < par; w++) {
            close(notify[w][1]);
        }

        if (read(ready[0], &r, 1) != 1) {
            die("the gateway did not start");
        }

        close(ready[0]);
    }

    if (pipe(start) == -1) {
        die("pipe(): %s", strerror(errno));
    }

    first = 0;

    for (w = 0; w < par; w++) {
        k = n / par + ((unsigned) w < n % par);

        pids[w] = fork();
        if (pids[w] == -1) {
            die("fork(): %s", strerror(errno));
        }

        if (pids[w] == 0) {
            alarm(TIMEOUT);
            close(start[1]);
            client(edge, w, first, k, port, cert, key, notify[w][0],
                   start[0]);
            exit(0);
        }

        first += k;
    }

    close(start[0]);

    t0 = now_ns();
    close(start[1]);                  /* go */

    failed = 0;

    for (w = 0; w < par; w++) {
        if (waitpid(pids[w], &status, 0) != pids[w]
            || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        {
            failed = 1;
        }
    }

    t1 = now_ns();

    (void) getrusage(RUSAGE_CHILDREN, &ru);

    if (sink_pid) {
        kill(sink_pid, SIGTERM);
        (void) wait4(sink_pid, &status, 0, &sink_ru);
    }

    if (failed) {
        fprintf(stderr, "xmpp_sessions: a client failed\n");
        return 1;
    }

    qsort(shared->lat, n, sizeof(double), cmp_double);

    printf("mode=%s sessions=%u parallel=%d seconds=%.6f client_cpu=%.3f"
           " sink_cpu=%.3f tickets=%llu proto=%s cipher=%s"
           " lat_p50_ms=%.3f lat_p99_ms=%.3f\n",
           edge ? "edge" : "stock", n, par, (double) (t1 - t0) / 1e9,
           cpu_seconds(&ru), cpu_seconds(&sink_ru),
           (unsigned long long) shared->tickets, shared->proto,
           shared->cipher, shared->lat[n / 2],
           shared->lat[(size_t) (n * 0.99)]);

    return 0;
}
