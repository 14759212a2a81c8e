/*
 * Copyright (C) ngx_xmpp_federation_module authors
 */


/*
 * Helpers shared by the benchmark programs (xmpp_bench, xmpp_idle,
 * xmpp_sessions): fatal errors, the clock, loopback sockets, blocking
 * writes, attribute lookup in a start tag, CPU times.  Each program
 * defines bench_name, the prefix of die()'s messages.
 */


#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H


#include <stddef.h>
#include <stdint.h>
#include <sys/resource.h>


extern const char  *bench_name;


void die(const char *fmt, ...) __attribute__((noreturn));
uint64_t now_ns(void);
int listen_on(int port, int backlog);
int connect_to(int port, int nodelay);
int accept_one(int lfd);
void write_all(int fd, const char *data, size_t len);
int attr(const char *start, const char *end, const char *name, char *out,
    size_t size);
double cpu_seconds(struct rusage *ru);


#endif /* BENCH_COMMON_H */
