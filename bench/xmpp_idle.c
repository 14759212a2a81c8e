/*
 * Copyright (C) ngx_xmpp_federation_module authors
 */


/*
 * The idle streams of the memory benchmark (make bench; bench/run.pl
 * drives it, and reads the nginx workers' memory while the streams are
 * open).
 *
 *   xmpp_idle edge  EDGE_PORT VERIFY_PORT SINK_PORT AUTH_PORT N LANES
 *   xmpp_idle stock PROXY_PORT SINK_PORT N LANES
 *
 * edge: N partner streams from fabrikam.example, each authenticated by
 * dialback (the edge asks the authoritative server, a process here; then
 * it hands the stream to the gateway, a process here too, which checks
 * the edge's key with <db:verify/> at the edge's internal listener on one
 * stream kept open), and one <message/> stanza of about 1 KB relayed on
 * each: the edge then holds two sockets per stream, the partner's and
 * the gateway's, and every buffer has seen data.
 *
 * stock: N connections through "proxy_pass" to the sink: the client
 * sends the same stream header and stanza, the sink answers with a stream
 * header and features, so that data has passed both ways.
 *
 * LANES client processes open the streams, each one after the other; as
 * many sink processes (and authoritative servers) take them, each with
 * blocking sockets.  When the sinks have the N stanzas, one line goes to
 * stdout:
 *
 *   ready streams=N seconds=T
 *
 * and everything stays open, idle, until stdin is closed; then all is
 * closed and the processes exit.
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
#include <poll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>

#include "bench_common.h"


#define TIMEOUT     300               /* seconds, every process */
#define BUF_SIZE    8192

#define PARTNER     "fabrikam.example"
#define LOCAL       "contoso.example"

#define HEADER \
    "<?xml version='1.0'?><stream:stream xmlns='jabber:server'" \
    " xmlns:db='jabber:server:dialback'" \
    " xmlns:stream='http://etherx.jabber.org/streams'" \
    " from='" PARTNER "' to='" LOCAL "' version='1.0'>"

#define STANZA_SIZE  1024
#define MAX_LANES    16


typedef struct {
    int     fd;
    char    buf[BUF_SIZE + 1];
    size_t  len;
} conn_t;


const char  *bench_name = "xmpp_idle";


/* as many descriptors as the hard limit allows */

static void
raise_nofile(size_t need)
{
    struct rlimit  rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == -1) {
        die("getrlimit(): %s", strerror(errno));
    }

    rl.rlim_cur = rl.rlim_max;

    if (setrlimit(RLIMIT_NOFILE, &rl) == -1) {
        die("setrlimit(): %s", strerror(errno));
    }

    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        die("%zu descriptors needed, the limit is %llu", need,
            (unsigned long long) rl.rlim_cur);
    }
}


static void
send_fmt(conn_t *c, const char *fmt, ...)
{
    int      n;
    char     buf[2048];
    va_list  ap;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);

    if (n < 0 || (size_t) n >= sizeof(buf)) {
        die("line too long");
    }

    write_all(c->fd, buf, n);
}


static void
conn_init(conn_t *c, int fd)
{
    c->fd = fd;
    c->len = 0;
    c->buf[0] = '\0';
}


/* reads until "what" is in the buffer; returns where it ends */

static char *
read_until(conn_t *c, const char *what)
{
    char     *p;
    ssize_t   n;

    for ( ;; ) {
        p = strstr(c->buf, what);
        if (p) {
            return p + strlen(what);
        }

        if ((p = strstr(c->buf, "<stream:error")) != NULL) {
            die("stream error waiting for \"%s\": %.300s", what, p);
        }

        if (c->len == BUF_SIZE) {
            die("no \"%s\" in %zu bytes", what, c->len);
        }

        n = read(c->fd, c->buf + c->len, BUF_SIZE - c->len);

        if (n == -1 && errno == EINTR) {
            continue;
        }

        if (n <= 0) {
            die("connection closed waiting for \"%s\", got: %.300s", what,
                c->buf);
        }

        c->len += n;
        c->buf[c->len] = '\0';
    }
}


static void
consume(conn_t *c, char *upto)
{
    size_t  n;

    n = upto - c->buf;
    memmove(c->buf, upto, c->len - n);
    c->len -= n;
    c->buf[c->len] = '\0';
}


/* reads a start tag "<name ...>"; drops what came before it; returns its end */

static char *
start_tag(conn_t *c, const char *name)
{
    char  *p;

    p = read_until(c, name) - strlen(name);
    consume(c, p);

    return read_until(c, ">");
}


/* the stanza of stream i: STANZA_SIZE bytes */

static size_t
stanza(char *buf, unsigned i)
{
    int     n;
    size_t  pad;

    static const char  tail[] = "</body></message>";

    n = snprintf(buf, STANZA_SIZE, "<message from='bob@" PARTNER "/r'"
                 " to='alice@" LOCAL "' id='idle%08u' type='chat'><body>",
                 i);

    pad = STANZA_SIZE - n - (sizeof(tail) - 1);
    memset(buf + n, 'x', pad);
    memcpy(buf + n + pad, tail, sizeof(tail) - 1);

    return STANZA_SIZE;
}


/* the authoritative server of fabrikam.example: every key is valid */

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
        conn_init(c, accept_one(lfd));

        consume(c, start_tag(c, "<stream:stream"));

        send_fmt(c, "<?xml version='1.0'?><stream:stream"
                 " xmlns='jabber:server' xmlns:db='jabber:server:dialback'"
                 " xmlns:stream='http://etherx.jabber.org/streams'"
                 " id='idleauth' from='" PARTNER "' version='1.0'>"
                 "<stream:features/>");

        (void) read_until(c, "</db:verify>");
        p = strstr(c->buf, "<db:verify");
        e = strchr(p, '>');
        attr(p, e, "from", from, sizeof(from));
        attr(p, e, "to", to, sizeof(to));
        attr(p, e, "id", id, sizeof(id));

        send_fmt(c, "<db:verify from='%s' to='%s' id='%s' type='valid'/>",
                 to, from, id);

        /* the edge closes the stream when it is done */
        while (read(c->fd, c->buf, BUF_SIZE) > 0) { /* void */ }

        close(c->fd);
    }
}


/*
 * The sink: the gateway for the edge (the hand-off, then the stanza), or
 * the upstream of the stock proxy; keeps every connection open.
 */

static void
sink(int lfd, int edge, int verify_port, unsigned n, volatile unsigned *got,
    int report)
{
    char      *p, *e, from[256], to[256], key[128], type[32];
    conn_t    *c, *v;
    unsigned   i;

    c = malloc(sizeof(conn_t));
    v = malloc(sizeof(conn_t));
    if (c == NULL || v == NULL) {
        die("no memory");
    }

    if (edge) {
        /* one stream to the edge's internal listener for every check */

        conn_init(v, connect_to(verify_port, 1));
        send_fmt(v, "<?xml version='1.0'?><stream:stream"
                 " xmlns='jabber:server' xmlns:db='jabber:server:dialback'"
                 " xmlns:stream='http://etherx.jabber.org/streams'"
                 " from='" LOCAL "' to='" PARTNER "' version='1.0'>");
        consume(v, read_until(v, "</stream:features>"));
    }

    for (i = 0; /* void */; i++) {
        conn_init(c, accept_one(lfd));

        if (edge) {
            e = start_tag(c, "<stream:stream");
            attr(c->buf, e, "from", from, sizeof(from));
            attr(c->buf, e, "to", to, sizeof(to));
            consume(c, e);

            send_fmt(c, "<?xml version='1.0'?><stream:stream"
                     " xmlns='jabber:server'"
                     " xmlns:db='jabber:server:dialback'"
                     " xmlns:stream='http://etherx.jabber.org/streams'"
                     " id='gw%d-%u' from='%s' version='1.0'>"
                     "<stream:features>"
                     "<dialback xmlns='urn:xmpp:features:dialback'/>"
                     "</stream:features>", (int) getpid(), i, to);

            e = read_until(c, "</db:result>");
            p = strstr(c->buf, "<db:result");
            p = p ? strchr(p, '>') : NULL;
            if (p == NULL || e - p - 13 >= (long) sizeof(key)) {
                die("bad db:result: %s", c->buf);
            }

            memcpy(key, p + 1, e - p - 13);
            key[e - p - 13] = '\0';
            consume(c, e);

            send_fmt(v, "<db:verify from='%s' to='%s' id='gw%d-%u'>%s"
                     "</db:verify>", to, from, (int) getpid(), i, key);

            e = start_tag(v, "<db:verify");
            attr(v->buf, e, "type", type, sizeof(type));
            consume(v, e);

            if (strcmp(type, "valid") != 0) {
                die("the edge says its key is \"%s\"", type);
            }

            send_fmt(c, "<db:result from='%s' to='%s' type='valid'/>", to,
                     from);

            (void) read_until(c, "</message>");

        } else {
            (void) read_until(c, "</message>");

            send_fmt(c, "<?xml version='1.0'?><stream:stream"
                     " xmlns='jabber:server'"
                     " xmlns:db='jabber:server:dialback'"
                     " xmlns:stream='http://etherx.jabber.org/streams'"
                     " id='up%u' from='" LOCAL "' version='1.0'>"
                     "<stream:features>"
                     "<dialback xmlns='urn:xmpp:features:dialback'/>"
                     "</stream:features>", i);
        }

        /* kept open, idle; the last stanza of all is reported */

        if (__sync_add_and_fetch(got, 1) == n) {
            write_all(report, "r", 1);
        }
    }
}


static void
usage(void)
{
    fprintf(stderr,
            "usage: xmpp_idle edge EDGE_PORT VERIFY_PORT SINK_PORT"
            " AUTH_PORT N LANES\n"
            "       xmpp_idle stock PROXY_PORT SINK_PORT N LANES\n");
    exit(2);
}


/* one lane of the client: streams [first, first + count), kept open */

static void
client(int edge, int port, unsigned first, unsigned count, int done,
    int release)
{
    char       r, msg[STANZA_SIZE];
    size_t     len;
    conn_t    *c;
    unsigned   i;

    c = malloc(sizeof(conn_t));
    if (c == NULL) {
        die("no memory");
    }

    for (i = first; i < first + count; i++) {
        conn_init(c, connect_to(port, 1));

        write_all(c->fd, HEADER, sizeof(HEADER) - 1);

        if (edge) {
            (void) read_until(c, "</stream:features>");
            send_fmt(c, "<db:result from='" PARTNER "' to='" LOCAL "'>"
                     "idlekey</db:result>");
            (void) read_until(c, "type='valid'");
        }

        len = stanza(msg, i);
        write_all(c->fd, msg, len);

        if (!edge) {
            /* the sink's answer: data went both ways */
            (void) read_until(c, "</stream:features>");
        }

        /* the descriptor stays open, idle */
    }

    write_all(done, "d", 1);

    alarm(0);

    /* until the end of the measurement; exit() closes everything */
    while (read(release, &r, 1) > 0) { /* void */ }
}


int
main(int argc, char **argv)
{
    int                 edge, port, verify_port, sink_port, auth_port;
    int                 sink_lfd, auth_lfd, rep[2], rel[2], lanes, k, ok;
    char                r;
    pid_t               pids[3 * MAX_LANES];
    unsigned            n, first, count, done;
    uint64_t            t0, t1;
    volatile unsigned  *got;
    struct pollfd       pfd;

    if (argc < 2) {
        usage();
    }

    edge = strcmp(argv[1], "edge") == 0;

    if (edge && argc == 8) {
        port = atoi(argv[2]);
        verify_port = atoi(argv[3]);
        sink_port = atoi(argv[4]);
        auth_port = atoi(argv[5]);
        n = strtoul(argv[6], NULL, 10);
        lanes = atoi(argv[7]);

    } else if (!edge && strcmp(argv[1], "stock") == 0 && argc == 6) {
        port = atoi(argv[2]);
        verify_port = 0;
        sink_port = atoi(argv[3]);
        auth_port = 0;
        n = strtoul(argv[4], NULL, 10);
        lanes = atoi(argv[5]);

    } else {
        usage();
    }

    if (lanes < 1 || lanes > MAX_LANES || n < (unsigned) lanes) {
        die("LANES must be 1..%d and at most N", MAX_LANES);
    }

    signal(SIGPIPE, SIG_IGN);

    /* every sink may get most of the streams: the kernel picks */
    raise_nofile(n + 64);

    got = mmap(NULL, sizeof(unsigned), PROT_READ|PROT_WRITE,
               MAP_SHARED|MAP_ANONYMOUS, -1, 0);
    if (got == MAP_FAILED) {
        die("mmap(): %s", strerror(errno));
    }

    *got = 0;

    if (pipe(rep) == -1 || pipe(rel) == -1) {
        die("pipe(): %s", strerror(errno));
    }

    sink_lfd = listen_on(sink_port, 512);
    auth_lfd = edge ? listen_on(auth_port, 512) : -1;
    k = 0;

    for (int l = 0; l < lanes; l++) {
        if (edge) {
            pids[k] = fork();
            if (pids[k] == 0) {
                alarm(TIMEOUT);
                close(sink_lfd);
                close(rep[0]);
                close(rep[1]);
                close(rel[0]);
                close(rel[1]);
                auth_server(auth_lfd);
                exit(0);
            }

            k++;
        }

        pids[k] = fork();
        if (pids[k] == 0) {
            alarm(TIMEOUT);
            close(rep[0]);
            close(rel[0]);
            close(rel[1]);

            if (auth_lfd != -1) {
                close(auth_lfd);
            }

            sink(sink_lfd, edge, verify_port, n, got, rep[1]);
            exit(0);
        }

        k++;
    }

    close(sink_lfd);

    if (auth_lfd != -1) {
        close(auth_lfd);
    }

    alarm(TIMEOUT);

    t0 = now_ns();
    first = 0;

    for (int l = 0; l < lanes; l++) {
        count = n / lanes + ((unsigned) l < n % lanes);

        pids[k] = fork();
        if (pids[k] == 0) {
            alarm(TIMEOUT);
            close(rep[0]);
            close(rel[1]);
            client(edge, port, first, count, rep[1], rel[0]);
            exit(0);
        }

        first += count;
        k++;
    }

    close(rel[0]);
    close(rep[1]);

    /* "d" from every lane, "r" from the sink that got the last stanza */

    done = 0;
    ok = 0;

    while (done < (unsigned) lanes || !ok) {
        pfd.fd = rep[0];
        pfd.events = POLLIN;

        if (poll(&pfd, 1, 500) == 0) {
            /* a process that exits now has failed */
            if (waitpid(-1, NULL, WNOHANG) == 0) {
                continue;
            }

            r = 0;

        } else if (read(rep[0], &r, 1) != 1) {
            r = 0;
        }

        if (r == 0) {
            fprintf(stderr, "xmpp_idle: the streams did not all open\n");

            for (int j = 0; j < k; j++) {
                kill(pids[j], SIGTERM);
            }

            return 1;
        }

        if (r == 'd') {
            done++;

        } else {
            ok = 1;
        }
    }

    t1 = now_ns();

    printf("ready streams=%u seconds=%.3f\n", n, (double) (t1 - t0) / 1e9);
    fflush(stdout);

    alarm(0);

    /* idle until told */
    while (read(0, &r, 1) > 0) { /* void */ }

    close(rel[1]);

    for (int j = 0; j < k; j++) {
        kill(pids[j], SIGTERM);
        (void) waitpid(pids[j], NULL, 0);
    }

    return 0;
}
