/*
 * Copyright (C) ngx_xmpp_federation_module authors
 */


/* Helpers shared by the benchmark programs: see bench_common.h. */


#define _GNU_SOURCE

#include <errno.h>
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

#include "bench_common.h"


void
die(const char *fmt, ...)
{
    va_list  ap;

    va_start(ap, fmt);
    fprintf(stderr, "%s[%d]: ", bench_name, (int) getpid());
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);

    exit(2);
}


uint64_t
now_ns(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}


int
listen_on(int port, int backlog)
{
    int                 fd, one;
    struct sockaddr_in  sin;

    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd == -1) {
        die("socket(): %s", strerror(errno));
    }

    one = 1;
    (void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));

    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    if (bind(fd, (struct sockaddr *) &sin, sizeof(sin)) == -1) {
        die("bind(%d): %s", port, strerror(errno));
    }

    if (listen(fd, backlog) == -1) {
        die("listen(): %s", strerror(errno));
    }

    return fd;
}


int
connect_to(int port, int nodelay)
{
    int                 fd, one;
    struct sockaddr_in  sin;

    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd == -1) {
        die("socket(): %s", strerror(errno));
    }

    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    if (connect(fd, (struct sockaddr *) &sin, sizeof(sin)) == -1) {
        die("connect(%d): %s", port, strerror(errno));
    }

    if (nodelay) {
        one = 1;
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }

    return fd;
}


int
accept_one(int lfd)
{
    int  fd;

    do {
        fd = accept(lfd, NULL, NULL);
    } while (fd == -1 && errno == EINTR);

    if (fd == -1) {
        die("accept(): %s", strerror(errno));
    }

    return fd;
}


void
write_all(int fd, const char *data, size_t len)
{
    ssize_t  n;

    while (len) {
        n = write(fd, data, len);

        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }

            die("write(): %s", strerror(errno));
        }

        data += n;
        len -= n;
    }
}


int
attr(const char *start, const char *end, const char *name, char *out,
    size_t size)
{
    char        quote;
    size_t      n;
    const char *p, *q;

    n = strlen(name);
    out[0] = '\0';

    for (p = start; p + n + 3 <= end; p++) {
        if (p[0] != ' ' || memcmp(p + 1, name, n) != 0 || p[n + 1] != '=') {
            continue;
        }

        quote = p[n + 2];
        if (quote != '\'' && quote != '"') {
            continue;
        }

        p += n + 3;
        q = memchr(p, quote, end - p);
        if (q == NULL || (size_t) (q - p) >= size) {
            return -1;
        }

        memcpy(out, p, q - p);
        out[q - p] = '\0';
        return 0;
    }

    return -1;
}


double
cpu_seconds(struct rusage *ru)
{
    return ru->ru_utime.tv_sec + ru->ru_stime.tv_sec
           + (ru->ru_utime.tv_usec + ru->ru_stime.tv_usec) / 1e6;
}
