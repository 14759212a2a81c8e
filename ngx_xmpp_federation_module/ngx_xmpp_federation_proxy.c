
/*
 * Copyright (C) ngx_xmpp_federation_module authors
 */


/*
 * Outgoing XMPP streams (a dialback verification, the gateway), the
 * hand-off to the gateway with an edge-minted dialback key, and the pump
 * that forwards checked stanzas as their original bytes.
 */


#include "ngx_xmpp_federation.h"
#include <ngx_stream_upstream_round_robin.h>


static void ngx_xmpp_federation_peer_cleanup(void *data);
static void ngx_xmpp_federation_peer_idle(ngx_xmpp_federation_peer_t *peer);
static void ngx_xmpp_federation_peer_read_handler(ngx_event_t *rev);
static void ngx_xmpp_federation_peer_write_handler(ngx_event_t *wev);
static void ngx_xmpp_federation_peer_fail(ngx_xmpp_federation_peer_t *peer,
    const char *reason);
static void ngx_xmpp_federation_peer_send(ngx_xmpp_federation_peer_t *peer);
static ngx_int_t ngx_xmpp_federation_peer_test_connect(ngx_connection_t *c);
static ngx_int_t ngx_xmpp_federation_peer_call(
    ngx_xmpp_federation_peer_t *peer, ngx_int_t rc);
static void ngx_xmpp_federation_peer_detach(ngx_xmpp_federation_peer_t *peer);
static void ngx_xmpp_federation_peer_drain_handler(ngx_event_t *ev);

static ngx_int_t ngx_xmpp_federation_gateway_connect(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
static void ngx_xmpp_federation_gateway_handler(
    ngx_xmpp_federation_peer_t *peer, ngx_int_t rc);
static ngx_int_t ngx_xmpp_federation_gateway_result(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, ngx_xmpp_federation_pair_t *pair);
static void ngx_xmpp_federation_gateway_cleanup(void *data);
static ngx_xmpp_federation_peer_t *ngx_xmpp_federation_gateway_cached(
    ngx_stream_session_t *s, ngx_xmpp_federation_ctx_t *ctx,
    ngx_xmpp_federation_pair_t *pair);
static ngx_int_t ngx_xmpp_federation_gateway_vouched(
    ngx_xmpp_federation_peer_t *gw, ngx_xmpp_federation_pair_t *pair,
    ngx_uint_t add);
static void ngx_xmpp_federation_cache_handler(ngx_event_t *ev);
static void ngx_xmpp_federation_cache_remove(ngx_xmpp_federation_peer_t *peer);
static void ngx_xmpp_federation_cache_end(ngx_xmpp_federation_peer_t *peer);
static void ngx_xmpp_federation_bounce_flush(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
static void ngx_xmpp_federation_outbound_handler(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, ngx_xmpp_federation_peer_t *peer,
    ngx_int_t rc);


ngx_xmpp_federation_peer_t *
ngx_xmpp_federation_peer_create(ngx_log_t *log, ngx_msec_t timeout)
{
    ngx_log_t                   *plog;
    ngx_pool_t                  *pool;
    ngx_pool_cleanup_t          *cln;
    ngx_xmpp_federation_peer_t  *peer;

    /* small: the buffers and the parser's memory are the heap's */

    pool = ngx_create_pool(1024, log);
    if (pool == NULL) {
        return NULL;
    }

    peer = ngx_pcalloc(pool, sizeof(ngx_xmpp_federation_peer_t));
    plog = ngx_palloc(pool, sizeof(ngx_log_t));
    cln = ngx_pool_cleanup_add(pool, 0);

    if (peer == NULL || plog == NULL || cln == NULL) {
        ngx_destroy_pool(pool);
        return NULL;
    }

    cln->handler = ngx_xmpp_federation_peer_cleanup;
    cln->data = peer;

    /*
     * The session's log, with an action of our own; the pool logs there
     * too, as the stream may outlive the session (detached, or kept).
     */

    *plog = *log;
    pool->log = plog;

    peer->pool = pool;
    peer->log = plog;
    peer->timeout = timeout;

    peer->in = ngx_calloc_buf(pool);
    peer->out = ngx_calloc_buf(pool);
    peer->parser = ngx_xmpp_federation_parser_create(pool, plog, 4096, 65536);

    if (peer->in == NULL || peer->out == NULL || peer->parser == NULL) {
        ngx_destroy_pool(pool);
        return NULL;
    }

    return peer;
}


static void
ngx_xmpp_federation_peer_cleanup(void *data)
{
    ngx_xmpp_federation_peer_t  *peer = data;

    ngx_xmpp_federation_free_buf(peer->in);
    ngx_xmpp_federation_free_buf(peer->out);
}


/* "tcp_nodelay" of the stream server, as proxy_pass has it */

ngx_uint_t
ngx_xmpp_federation_nodelay(ngx_stream_session_t *s)
{
    ngx_stream_core_srv_conf_t  *cscf;

    cscf = ngx_stream_get_module_srv_conf(s, ngx_stream_core_module);

    return cscf->tcp_nodelay;
}


ngx_int_t
ngx_xmpp_federation_peer_connect(ngx_xmpp_federation_peer_t *peer,
    struct sockaddr *sockaddr, socklen_t socklen, ngx_str_t *name)
{
    u_char            *p;
    size_t             len;
    ngx_int_t          rc;
    ngx_connection_t  *c;

    ngx_memzero(&peer->pc, sizeof(ngx_peer_connection_t));

    peer->pc.sockaddr = sockaddr;
    peer->pc.socklen = socklen;
    peer->pc.name = name;
    peer->pc.get = ngx_event_get_peer;
    peer->pc.log = peer->log;
    peer->pc.log_error = NGX_ERROR_ERR;
    peer->pc.tries = 1;
    peer->connected = 0;
    peer->ready = 0;
    peer->failed = 0;

    rc = ngx_event_connect_peer(&peer->pc);

    if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
        peer->failed = 1;
        return NGX_ERROR;
    }

    c = peer->pc.connection;

    c->data = peer;
    c->pool = peer->pool;
    c->log = peer->log;
    c->read->log = peer->log;
    c->write->log = peer->log;
    c->read->handler = ngx_xmpp_federation_peer_read_handler;
    c->write->handler = ngx_xmpp_federation_peer_write_handler;

    if (peer->nodelay && ngx_tcp_nodelay(c) != NGX_OK) {
        return NGX_ERROR;
    }

    /* our stream header goes first */

    len = sizeof("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
                 "xmlns:stream='http://etherx.jabber.org/streams' "
                 "xmlns:db='jabber:server:dialback' version='1.0' "
                 "from='' to=''>") - 1
          + peer->from.len + peer->to.len + peer->ns_decls.len;

    /* written into the output buffer: not kept in the pool */

    p = ngx_alloc(len, peer->log);
    if (p == NULL) {
        return NGX_ERROR;
    }

    len = ngx_sprintf(p, "<?xml version='1.0'?><stream:stream "
                      "xmlns='jabber:server' "
                      "xmlns:stream='http://etherx.jabber.org/streams' "
                      "xmlns:db='jabber:server:dialback'%V version='1.0' "
                      "from='%V' to='%V'>",
                      &peer->ns_decls, &peer->from, &peer->to)
          - p;

    if (ngx_xmpp_federation_peer_write(peer, p, len) != NGX_OK) {
        ngx_free(p);
        return NGX_ERROR;
    }

    ngx_free(p);

    ngx_add_timer(c->read, peer->timeout);

    if (rc == NGX_AGAIN) {
        ngx_add_timer(c->write, peer->timeout);
        return NGX_OK;
    }

    peer->connected = 1;
    ngx_xmpp_federation_peer_send(peer);

    return NGX_OK;
}


ngx_int_t
ngx_xmpp_federation_peer_write(ngx_xmpp_federation_peer_t *peer,
    u_char *data, size_t len)
{
    /* rare: a burst of dialback requests on one stream */

    if (ngx_xmpp_federation_append(peer->pool, &peer->out, data, len)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (peer->connected) {
        ngx_xmpp_federation_peer_send(peer);
    }

    return NGX_OK;
}


static void
ngx_xmpp_federation_peer_send(ngx_xmpp_federation_peer_t *peer)
{
    ngx_int_t   rc;
    ngx_buf_t  *b;

    b = peer->out;

    rc = ngx_xmpp_federation_flush(peer->pc.connection, b, b->last,
                                   peer->timeout);

    if (rc == NGX_ERROR) {
        ngx_xmpp_federation_peer_fail(peer, "send() failed");
        return;
    }

    if (rc == NGX_OK) {
        b->pos = b->start;
        b->last = b->start;
    }
}


static void
ngx_xmpp_federation_peer_write_handler(ngx_event_t *wev)
{
    ngx_connection_t            *c;
    ngx_xmpp_federation_peer_t  *peer;

    c = wev->data;
    peer = c->data;

    if (wev->timedout) {
        peer->failed = !peer->connected;
        ngx_xmpp_federation_peer_fail(peer, peer->connected
                                            ? "timed out writing"
                                            : "timed out connecting");
        return;
    }

    if (peer->reused) {
        /* a kept stream, taken by a new session: ready as it stands */
        peer->reused = 0;
        (void) ngx_xmpp_federation_peer_call(peer, NGX_OK);
        return;
    }

    if (!peer->connected) {
        if (ngx_xmpp_federation_peer_test_connect(c) != NGX_OK) {
            peer->failed = 1;
            ngx_xmpp_federation_peer_fail(peer, "connect() failed");
            return;
        }

        peer->connected = 1;
    }

    ngx_xmpp_federation_peer_send(peer);

    if (!peer->closed && peer->out->pos == peer->out->last) {
        /* the owner may have more to write: the relay */
        (void) ngx_xmpp_federation_peer_call(peer, NGX_DONE);
    }
}


static ngx_int_t
ngx_xmpp_federation_peer_test_connect(ngx_connection_t *c)
{
    int        err;
    socklen_t  len;

    err = 0;
    len = sizeof(int);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len) == -1) {
        err = ngx_socket_errno;
    }

    if (err) {
        (void) ngx_connection_error(c, err, "connect() failed");
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_xmpp_federation_peer_read_handler(ngx_event_t *rev)
{
    ssize_t                        n;
    ngx_int_t                      rc;
    ngx_connection_t              *c;
    ngx_xmpp_federation_parser_t  *p;
    ngx_xmpp_federation_peer_t    *peer;

    c = rev->data;
    peer = c->data;
    p = peer->parser;

    if (rev->timedout) {
        peer->failed = !peer->connected;
        ngx_xmpp_federation_peer_fail(peer, "timed out");
        return;
    }

    while (rev->ready) {

        if (peer->in->start == NULL) {
            if (ngx_xmpp_federation_reserve(peer->pool, &peer->in, 4096)
                != NGX_OK)
            {
                ngx_xmpp_federation_peer_fail(peer, "no memory");
                return;
            }
        }

        n = c->recv(c, peer->in->start, peer->in->end - peer->in->start);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR || n == 0) {
            peer->failed = !peer->connected;
            ngx_xmpp_federation_peer_fail(peer, "connection closed");
            return;
        }

        peer->connected = 1;

        rc = ngx_xmpp_federation_parse(p, peer->in->start, n);

        for ( ;; ) {

            if (rc == NGX_AGAIN) {
                break;
            }

            if (rc == NGX_ERROR) {
                ngx_xmpp_federation_peer_fail(peer, "bad XML from the peer");
                return;
            }

            if (p->event == ngx_xmpp_ev_header) {
                peer->id.data = ngx_pnalloc(peer->pool, p->id.len);
                if (peer->id.data == NULL) {
                    ngx_xmpp_federation_peer_fail(peer, "no memory");
                    return;
                }

                ngx_memcpy(peer->id.data, p->id.data, p->id.len);
                peer->id.len = p->id.len;

                if (!ngx_xmpp_federation_is(&p->version, "1.0")) {
                    /* a pre-1.0 peer sends no features */
                    peer->ready = 1;

                    if (rev->timer_set) {
                        ngx_del_timer(rev);
                    }

                    if (ngx_xmpp_federation_peer_call(peer, NGX_OK)
                        != NGX_OK)
                    {
                        return;
                    }
                }

            } else if (p->event == ngx_xmpp_ev_close) {
                ngx_xmpp_federation_peer_fail(peer, "stream closed");
                return;

            } else if (ngx_xmpp_federation_is(&p->ns,
                                              NGX_XMPP_FEDERATION_NS_STREAMS)
                       && ngx_xmpp_federation_is(&p->name, "error"))
            {
                ngx_xmpp_federation_peer_fail(peer, "stream error");
                return;

            } else if (!peer->ready
                       && ngx_xmpp_federation_is(&p->ns,
                                              NGX_XMPP_FEDERATION_NS_STREAMS)
                       && ngx_xmpp_federation_is(&p->name, "features"))
            {
                peer->ready = 1;

                /*
                 * The stream is up: from now on the owner's timers say
                 * how long it may last (dialback timeout, idle timeout).
                 */

                if (rev->timer_set) {
                    ngx_del_timer(rev);
                }

                if (ngx_xmpp_federation_peer_call(peer, NGX_OK) != NGX_OK) {
                    return;
                }

            } else {
                if (ngx_xmpp_federation_peer_call(peer, NGX_AGAIN)
                    != NGX_OK)
                {
                    return;
                }
            }

            rc = ngx_xmpp_federation_parse_next(p);
        }
    }

    if (!rev->ready && peer->release) {
        ngx_xmpp_federation_peer_idle(peer);
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_xmpp_federation_peer_fail(peer, "read event failed");
    }
}


/* an idle stream of ours keeps neither buffers nor parser */

static void
ngx_xmpp_federation_peer_idle(ngx_xmpp_federation_peer_t *peer)
{
    ngx_xmpp_federation_free_buf(peer->in);

    if (peer->out->pos == peer->out->last) {
        ngx_xmpp_federation_free_buf(peer->out);
    }

    (void) ngx_xmpp_federation_parser_sleep(peer->parser);

    ngx_log_debug0(NGX_LOG_DEBUG_STREAM, peer->log, 0,
                   "xmpp peer: idle, memory released");
}


static void
ngx_xmpp_federation_peer_fail(ngx_xmpp_federation_peer_t *peer,
    const char *reason)
{
    peer->reason = reason;
    peer->closed = 1;

    ngx_log_debug1(NGX_LOG_DEBUG_STREAM, peer->log, 0,
                   "xmpp peer: %s", reason);

    (void) ngx_xmpp_federation_peer_call(peer, NGX_ERROR);
}


/*
 * The owner's handler may close the peer; the memory goes only when the
 * outermost call returns.  NGX_ABORT: the peer is gone.
 */

static ngx_int_t
ngx_xmpp_federation_peer_call(ngx_xmpp_federation_peer_t *peer,
    ngx_int_t rc)
{
    if (peer->handler == NULL) {
        /* detached from its session: the caller lets go of it */
        return NGX_ABORT;
    }

    peer->busy++;
    peer->handler(peer, rc);
    peer->busy--;

    if (peer->destroy) {
        if (peer->busy == 0) {
            ngx_destroy_pool(peer->pool);
        }

        return NGX_ABORT;
    }

    return peer->handler ? NGX_OK : NGX_ABORT;
}


/*
 * The session is over, but bytes for the gateway are still on their way:
 * the connection finishes alone, then closes as a session does, lingering
 * until the gateway has read everything (an early close would reset it).
 */

static void
ngx_xmpp_federation_peer_detach(ngx_xmpp_federation_peer_t *peer)
{
    ngx_connection_t  *c;

    c = peer->pc.connection;

    peer->handler = NULL;
    peer->data = NULL;

    /* the session's log context goes with the session */
    peer->log->handler = NULL;
    peer->log->data = NULL;
    peer->log->action = "sending the last stanzas to the gateway";

    c->read->handler = ngx_xmpp_federation_peer_drain_handler;
    c->write->handler = ngx_xmpp_federation_peer_drain_handler;

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    ngx_add_timer(c->read, peer->timeout);

    ngx_post_event(c->write, &ngx_posted_events);
}


static void
ngx_xmpp_federation_peer_drain_handler(ngx_event_t *ev)
{
    ngx_int_t                    rc;
    ngx_connection_t            *c;
    ngx_xmpp_federation_peer_t  *peer;

    c = ev->data;
    peer = c->data;

    if (ev->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "gateway timed out");
        ngx_xmpp_federation_peer_close(peer);
        return;
    }

    if (peer->out->pos != peer->out->last) {

        rc = ngx_xmpp_federation_flush(c, peer->out, peer->out->last,
                                       peer->timeout);

        if (rc == NGX_ERROR) {
            ngx_xmpp_federation_peer_close(peer);
            return;
        }

        if (rc == NGX_AGAIN) {
            return;
        }

        ngx_log_debug0(NGX_LOG_DEBUG_STREAM, c->log, 0,
                       "xmpp gateway: last stanzas sent");

        if (ngx_shutdown_socket(c->fd, NGX_WRITE_SHUTDOWN) == -1) {
            ngx_xmpp_federation_peer_close(peer);
            return;
        }

        c->read->ready = 1;
    }

    /* what the gateway still says is nobody's any more */

    if (ngx_xmpp_federation_drain(c) != NGX_AGAIN) {
        ngx_xmpp_federation_peer_close(peer);
    }
}


void
ngx_xmpp_federation_peer_close(ngx_xmpp_federation_peer_t *peer)
{
    if (peer->pc.connection) {
        ngx_close_connection(peer->pc.connection);
        peer->pc.connection = NULL;
    }

    peer->closed = 1;

    if (peer->busy) {
        peer->destroy = 1;
        return;
    }

    ngx_destroy_pool(peer->pool);
}


/* the n-th address of xmpp_federation_pass */

ngx_int_t
ngx_xmpp_federation_upstream_addr(ngx_stream_session_t *s, ngx_uint_t n,
    struct sockaddr **sockaddr, socklen_t *socklen, ngx_str_t **name)
{
    ngx_uint_t                        i;
    ngx_stream_upstream_rr_peer_t    *rp;
    ngx_stream_upstream_rr_peers_t   *peers;
    ngx_xmpp_federation_srv_conf_t   *fscf;

    fscf = ngx_stream_get_module_srv_conf(s,
                                          ngx_stream_xmpp_federation_module);

    peers = fscf->pass->peer.data;

    if (peers == NULL) {
        return NGX_DECLINED;
    }

    for (rp = peers->peer, i = 0; rp; rp = rp->next, i++) {
        if (i == n) {
            *sockaddr = rp->sockaddr;
            *socklen = rp->socklen;
            *name = &rp->name;
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


/*
 * The hand-off: the edge speaks for an authenticated remote domain to the
 * gateway with a dialback key of its own; the gateway checks it by asking
 * "the remote domain", which its DNS points at the edge.
 */

ngx_int_t
ngx_xmpp_federation_vouch(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, ngx_xmpp_federation_pair_t *pair)
{
    pair->state = ngx_xmpp_pair_vouching;

    if (ctx->gateway == NULL) {
        return ngx_xmpp_federation_gateway_connect(s, ctx);
    }

    if (!ctx->gateway->ready) {
        /* sent when the gateway's features arrive */
        return NGX_OK;
    }

    return ngx_xmpp_federation_gateway_result(s, ctx, pair);
}


static ngx_int_t
ngx_xmpp_federation_gateway_connect(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    socklen_t                        socklen;
    ngx_str_t                       *name;
    ngx_uint_t                       i;
    struct sockaddr                 *sockaddr;
    ngx_connection_t                *c, *gc;
    ngx_pool_cleanup_t              *cln;
    ngx_xmpp_federation_pair_t      *pair;
    ngx_xmpp_federation_peer_t      *gw;
    ngx_xmpp_federation_srv_conf_t  *fscf;

    c = s->connection;

    fscf = ngx_stream_get_module_srv_conf(s,
                                          ngx_stream_xmpp_federation_module);

    cln = ngx_pool_cleanup_add(c->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    pair = NULL;

    for (i = 0; i < ctx->pairs.nelts; i++) {
        pair = &((ngx_xmpp_federation_pair_t *) ctx->pairs.elts)[i];

        if (pair->state == ngx_xmpp_pair_vouching) {
            break;
        }
    }

    gw = ngx_xmpp_federation_gateway_cached(s, ctx, pair);

    if (gw) {
        gc = gw->pc.connection;
        gc->idle = 0;
        gc->read->handler = ngx_xmpp_federation_peer_read_handler;
        gc->write->handler = ngx_xmpp_federation_peer_write_handler;

        if (gc->read->timer_set) {
            ngx_del_timer(gc->read);
        }

        *gw->log = *c->log;
        gw->log->action = "handing the XMPP stream to the gateway";
        gw->handler = ngx_xmpp_federation_gateway_handler;
        gw->data = s;
        gw->reused = 1;

        ctx->gateway = gw;

        /* its features "arrive" from the event loop, as a new one's do */
        ngx_post_event(gc->write, &ngx_posted_events);

        cln->handler = ngx_xmpp_federation_gateway_cleanup;
        cln->data = ctx;

        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "gateway stream from \"%V\" to \"%V\" reused",
                      &gw->from, &gw->to);

        return NGX_OK;
    }

    /* the address list is walked on failures: ctx->gateway_try */

    for ( ;; ) {
        if (ngx_xmpp_federation_upstream_addr(s, ctx->gateway_try, &sockaddr,
                                              &socklen, &name)
            != NGX_OK)
        {
            ngx_log_error(NGX_LOG_ERR, c->log, 0,
                          "no more gateway addresses to try");
            return NGX_DECLINED;
        }

        gw = ngx_xmpp_federation_peer_create(c->log, fscf->timeout);
        if (gw == NULL) {
            return NGX_ERROR;
        }

        gw->log->action = "handing the XMPP stream to the gateway";
        gw->nodelay = ngx_xmpp_federation_nodelay(s);

        /* the stream's own copies: it may outlive the session */

        gw->from.data = ngx_pstrdup(gw->pool, &pair->remote);
        gw->to.data = ngx_pstrdup(gw->pool, &pair->local);
        gw->ns_decls.data = ngx_pstrdup(gw->pool, &ctx->ns_decls);

        if (gw->from.data == NULL || gw->to.data == NULL
            || (ctx->ns_decls.len && gw->ns_decls.data == NULL))
        {
            ngx_xmpp_federation_peer_close(gw);
            return NGX_ERROR;
        }

        gw->from.len = pair->remote.len;
        gw->to.len = pair->local.len;
        gw->ns_decls.len = ctx->ns_decls.len;

        gw->handler = ngx_xmpp_federation_gateway_handler;
        gw->data = s;

        ctx->gateway = gw;

        if (ngx_xmpp_federation_peer_connect(gw, sockaddr, socklen, name)
            == NGX_OK)
        {
            break;
        }

        ctx->gateway = NULL;
        ngx_xmpp_federation_peer_close(gw);
        ctx->gateway_try++;
    }

    cln->handler = ngx_xmpp_federation_gateway_cleanup;
    cln->data = ctx;

    ngx_log_debug1(NGX_LOG_DEBUG_STREAM, c->log, 0,
                   "xmpp gateway: connecting to %V", name);

    return NGX_OK;
}


static ngx_int_t
ngx_xmpp_federation_gateway_result(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, ngx_xmpp_federation_pair_t *pair)
{
    u_char                           *p;
    u_char                            key[64];
    ngx_str_t                         k;
    ngx_xmpp_federation_peer_t       *gw;
    ngx_xmpp_federation_main_conf_t  *fmcf;
    u_char                            buf[NGX_XMPP_FEDERATION_LINE];

    fmcf = ngx_stream_get_module_main_conf(s,
                                          ngx_stream_xmpp_federation_module);

    gw = ctx->gateway;

    if (ngx_xmpp_federation_dialback_key(fmcf, &pair->local, &pair->remote,
                                         &gw->id, key)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    k.data = key;
    k.len = 64;

    p = ngx_snprintf(buf, sizeof(buf),
                     "<db:result from='%V' to='%V'>%V</db:result>",
                     &pair->remote, &pair->local, &k);

    ngx_log_debug2(NGX_LOG_DEBUG_STREAM, s->connection->log, 0,
                   "xmpp gateway: vouching for %V to %V",
                   &pair->remote, &pair->local);

    return ngx_xmpp_federation_peer_write(gw, buf, p - buf);
}


static void
ngx_xmpp_federation_gateway_handler(ngx_xmpp_federation_peer_t *peer,
    ngx_int_t rc)
{
    ngx_str_t                      *from, *to;
    ngx_uint_t                      i, kept;
    ngx_connection_t               *c;
    ngx_stream_session_t           *s;
    ngx_xmpp_federation_ctx_t      *ctx;
    ngx_xmpp_federation_pair_t     *pair;
    ngx_xmpp_federation_parser_t   *p;

    s = peer->data;
    c = s->connection;

    ctx = ngx_stream_get_module_ctx(s, ngx_stream_xmpp_federation_module);

    pair = ctx->pairs.elts;

    if (ctx->bouncing) {
        ngx_xmpp_federation_outbound_handler(s, ctx, peer, rc);
        return;
    }

    if (rc == NGX_DONE) {
        ngx_xmpp_federation_relay_gateway(s, ctx);

        if (ctx->state == ngx_xmpp_st_relay && !ctx->quit
            && !c->read->ready)
        {
            /* the gateway took the rest: the partner's stream is idle */
            ngx_xmpp_federation_idle(s, ctx);
        }

        return;
    }

    if (rc == NGX_OK) {

        /*
         * Features: vouch for every domain waiting, unless the stream,
         * kept from an earlier session, has the gateway's word for it.
         */

        kept = 0;

        for (i = 0; i < ctx->pairs.nelts && ctx->gateway; i++) {
            if (pair[i].state != ngx_xmpp_pair_vouching) {
                continue;
            }

            if (ngx_xmpp_federation_gateway_vouched(peer, &pair[i], 0)
                == NGX_OK)
            {
                kept = 1;

                ngx_log_error(NGX_LOG_INFO, c->log, 0,
                              "gateway accepted \"%V\" for \"%V\" "
                              "on a kept stream",
                              &pair[i].remote, &pair[i].local);

                ngx_xmpp_federation_pair_done(s, ctx, &pair[i], "valid",
                                              NULL);
                continue;
            }

            if (ngx_xmpp_federation_gateway_result(s, ctx, &pair[i])
                != NGX_OK)
            {
                ngx_xmpp_federation_finalize(s,
                                            NGX_STREAM_INTERNAL_SERVER_ERROR);
                return;
            }
        }

        if (kept && !ctx->quit) {
            ngx_xmpp_federation_send(s);

            if (ctx->state == ngx_xmpp_st_relay) {
                ngx_xmpp_federation_relay_gateway(s, ctx);
            }
        }

        return;
    }

    if (rc == NGX_ERROR) {

        if (peer->failed && !ctx->quit) {
            /* could not connect: the next address, if any */

            ngx_log_error(NGX_LOG_ERR, c->log, 0,
                          "gateway %V: %s", peer->pc.name, peer->reason);

            ctx->gateway = NULL;
            ngx_xmpp_federation_peer_close(peer);
            ctx->gateway_try++;

            if (ctx->state != ngx_xmpp_st_relay) {
                rc = ngx_xmpp_federation_gateway_connect(s, ctx);

                if (rc == NGX_OK) {
                    return;
                }
            }

        } else {
            ngx_log_error(NGX_LOG_INFO, c->log, 0,
                          "gateway stream ended: %s", peer->reason);

            ctx->gateway = NULL;
            ngx_xmpp_federation_peer_close(peer);
        }

        /* nothing was accepted for these: the partner hears why */

        for (i = 0; i < ctx->pairs.nelts; i++) {
            if (pair[i].state == ngx_xmpp_pair_vouching) {
                ngx_xmpp_federation_pair_done(s, ctx, &pair[i], "error",
                                              "remote-connection-failed");
            }
        }

        if (ctx->state == ngx_xmpp_st_relay) {
            ngx_xmpp_federation_stream_error(s, ctx,
                                     ngx_xmpp_err_remote_connection_failed,
                                     "the gateway stream ended");

        } else {
            ngx_xmpp_federation_send(s);
        }

        return;
    }

    /* an element from the gateway */

    p = peer->parser;

    if (ngx_xmpp_federation_is(&p->ns, NGX_XMPP_FEDERATION_NS_DIALBACK)
        && ngx_xmpp_federation_is(&p->name, "result"))
    {
        /* the gateway's answer: from = local, to = remote */

        from = &p->from;
        to = &p->to;

        for (i = 0; i < ctx->pairs.nelts; i++) {
            if (pair[i].state != ngx_xmpp_pair_vouching
                || pair[i].remote.len != to->len
                || pair[i].local.len != from->len
                || ngx_strncasecmp(pair[i].remote.data, to->data, to->len)
                   != 0
                || ngx_strncasecmp(pair[i].local.data, from->data,
                                   from->len)
                   != 0)
            {
                continue;
            }

            if (ngx_xmpp_federation_is(&p->type, "valid")) {
                ngx_log_error(NGX_LOG_INFO, c->log, 0,
                              "gateway accepted \"%V\" for \"%V\"",
                              &pair[i].remote, &pair[i].local);

                if (ngx_xmpp_federation_gateway_vouched(peer, &pair[i], 1)
                    != NGX_OK)
                {
                    ngx_xmpp_federation_finalize(s,
                                            NGX_STREAM_INTERNAL_SERVER_ERROR);
                    return;
                }

                ngx_xmpp_federation_pair_done(s, ctx, &pair[i], "valid",
                                              NULL);

            } else {
                ngx_log_error(NGX_LOG_ERR, c->log, 0,
                              "gateway refused \"%V\" for \"%V\": %V",
                              &pair[i].remote, &pair[i].local, &p->type);

                ngx_xmpp_federation_pair_done(s, ctx, &pair[i], "error",
                                              "remote-connection-failed");
            }

            break;
        }

        ngx_xmpp_federation_send(s);

        if (ctx->state == ngx_xmpp_st_relay) {
            ngx_xmpp_federation_relay_gateway(s, ctx);
        }

        return;
    }

    /* whitespace pings, stanzas the gateway should not send: ignored */

    ngx_log_debug2(NGX_LOG_DEBUG_STREAM, c->log, 0,
                   "xmpp gateway: ignored {%V}%V", &p->ns, &p->name);
}


/*
 * The pump, partner to gateway: checked bytes [in->pos, fwd) go out as
 * they came; our own lines to the gateway wait for a stanza boundary.
 */

void
ngx_xmpp_federation_relay_gateway(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_buf_t                   *b;
    ngx_connection_t            *gc, *c;
    ngx_xmpp_federation_peer_t  *gw;

    gw = ctx->gateway;
    c = s->connection;

    if (ctx->in->start == NULL) {
        /* released while idle: nothing to forward */
        return;
    }

    if (gw == NULL || !gw->connected || !gw->ready) {
        /*
         * Before the hand-off only keepalive whitespace can be ready to
         * go: nobody to give it to.
         */
        ctx->in->pos = ctx->fwd;
        return;
    }

    gc = gw->pc.connection;
    b = ctx->in;

    if (gw->out->pos != gw->out->last) {
        /* our own line is on its way: it goes first */
        return;
    }

    switch (ngx_xmpp_federation_flush(gc, b, ctx->fwd, 0)) {

    case NGX_ERROR:
        ngx_xmpp_federation_stream_error(s, ctx,
                                     ngx_xmpp_err_remote_connection_failed,
                                     "sending to the gateway failed");
        return;

    case NGX_AGAIN:
        return;
    }

    if (ctx->ended && gw->out->pos == gw->out->last && !ctx->quit) {
        /*
         * The partner ended its stream: so do we, both ways, unless the
         * gateway's stream is kept for the next one.
         */

        if (ngx_xmpp_federation_gateway_keep(s, ctx) != NGX_OK) {
            ngx_xmpp_federation_gateway_end(ctx);
        }

        ctx->quit = 1;

        if (ngx_xmpp_federation_out(ctx, (u_char *) "</stream:stream>",
                                    sizeof("</stream:stream>") - 1)
            != NGX_OK)
        {
            ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
            return;
        }

        ngx_xmpp_federation_send(s);
        return;
    }

    /* room again in the input buffer: read on */

    if (c->read->ready && !ctx->quit) {
        ngx_post_event(c->read, &ngx_posted_events);
    }
}


/*
 * The partner's stream ends in an error: what was checked before the
 * error still reaches the gateway, after our own line if one is on its
 * way, and the gateway's stream ends cleanly.
 */

void
ngx_xmpp_federation_gateway_end(ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_buf_t                   *b;
    ngx_xmpp_federation_peer_t  *gw;

    gw = ctx->gateway;

    if (gw == NULL || !gw->connected || !gw->ready || gw->ended) {
        return;
    }

    b = ctx->in;

    if (ctx->fwd > b->pos) {
        if (ngx_xmpp_federation_append(gw->pool, &gw->out, b->pos,
                                       ctx->fwd - b->pos)
            != NGX_OK)
        {
            return;
        }

        b->pos = ctx->fwd;
    }

    if (ngx_xmpp_federation_append(gw->pool, &gw->out,
                                   (u_char *) "</stream:stream>",
                                   sizeof("</stream:stream>") - 1)
        != NGX_OK)
    {
        return;
    }

    gw->ended = 1;

    ngx_xmpp_federation_peer_send(gw);
}


void
ngx_xmpp_federation_gateway_close(ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_xmpp_federation_peer_t  *gw;

    gw = ctx->gateway;

    if (gw == NULL) {
        return;
    }

    ctx->gateway = NULL;

    if (gw->connected && gw->pc.connection
        && gw->out->pos != gw->out->last)
    {
        ngx_xmpp_federation_peer_detach(gw);
        return;
    }

    ngx_xmpp_federation_peer_close(gw);
}


static void
ngx_xmpp_federation_gateway_cleanup(void *data)
{
    ngx_xmpp_federation_ctx_t  *ctx = data;

    ngx_xmpp_federation_gateway_finish(ctx);
}


/* the session ends: the stanzas checked before still go, then the end */

void
ngx_xmpp_federation_gateway_finish(ngx_xmpp_federation_ctx_t *ctx)
{
    if (ctx->state == ngx_xmpp_st_relay) {
        ngx_xmpp_federation_gateway_end(ctx);
    }

    ngx_xmpp_federation_gateway_close(ctx);
}


/*
 * xmpp_federation_pass_keepalive: a partner's stream that ends cleanly
 * leaves its gateway stream, with the domains the gateway accepted on it,
 * for the next stream of the same domains; that one needs neither a new
 * connection nor the gateway's dialback check.  Only streams at a stanza
 * boundary with nothing on its way are kept.
 */

ngx_int_t
ngx_xmpp_federation_gateway_keep(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_uint_t                       i;
    ngx_queue_t                     *q;
    ngx_connection_t                *gc;
    ngx_xmpp_federation_pair_t      *pair;
    ngx_xmpp_federation_peer_t      *gw, *old;
    ngx_xmpp_federation_srv_conf_t  *fscf;

    fscf = ngx_stream_get_module_srv_conf(s,
                                          ngx_stream_xmpp_federation_module);

    gw = ctx->gateway;

    if (fscf->keepalive == 0
        || fscf->mode != NGX_XMPP_FEDERATION_INBOUND
        || gw == NULL
        || gw->busy
        || !gw->connected
        || !gw->ready
        || gw->ended
        || gw->closed
        || gw->vouched == NULL
        || gw->pc.connection == NULL
        || gw->out->pos != gw->out->last
        || ctx->bouncing)
    {
        return NGX_DECLINED;
    }

    pair = ctx->pairs.elts;

    for (i = 0; i < ctx->pairs.nelts; i++) {
        if (pair[i].state == ngx_xmpp_pair_vouching) {
            /* the gateway's answer is still to come */
            return NGX_DECLINED;
        }
    }

    /* last: the parser lets go of expat only at a stanza boundary */

    if (gw->parser->expat
        && ngx_xmpp_federation_parser_sleep(gw->parser) != NGX_OK)
    {
        return NGX_DECLINED;
    }

    if (fscf->cached == fscf->keepalive) {
        /* full: the least recently used goes */
        q = ngx_queue_head(&fscf->cache);
        old = ngx_queue_data(q, ngx_xmpp_federation_peer_t, queue);

        ngx_xmpp_federation_cache_remove(old);
        ngx_xmpp_federation_cache_end(old);
    }

    ctx->gateway = NULL;

    gw->handler = NULL;
    gw->data = NULL;
    gw->release = 0;

    /* the session's log context goes with the session */
    gw->log->handler = NULL;
    gw->log->data = NULL;
    gw->log->action = "keeping the gateway stream";

    ngx_xmpp_federation_free_buf(gw->in);
    ngx_xmpp_federation_free_buf(gw->out);

    gc = gw->pc.connection;
    gc->idle = 1;
    gc->read->handler = ngx_xmpp_federation_cache_handler;
    gc->write->handler = ngx_xmpp_federation_cache_handler;

    if (gc->read->timer_set) {
        ngx_del_timer(gc->read);
    }

    if (gc->write->timer_set) {
        ngx_del_timer(gc->write);
    }

    ngx_add_timer(gc->read, fscf->keepalive_timeout);

    gw->cache = fscf;
    ngx_queue_insert_tail(&fscf->cache, &gw->queue);
    fscf->cached++;

    ngx_log_debug3(NGX_LOG_DEBUG_STREAM, s->connection->log, 0,
                   "xmpp gateway: stream from \"%V\" to \"%V\" kept, %ui",
                   &gw->from, &gw->to, fscf->cached);

    if (gc->read->ready) {
        ngx_post_event(gc->read, &ngx_posted_events);
    }

    return NGX_OK;
}


/* the most recently kept stream of the same domains that still stands */

static ngx_xmpp_federation_peer_t *
ngx_xmpp_federation_gateway_cached(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, ngx_xmpp_federation_pair_t *pair)
{
    u_char                           ch;
    ssize_t                          n;
    ngx_err_t                        err;
    ngx_queue_t                     *q, *prev;
    ngx_xmpp_federation_peer_t      *gw;
    ngx_xmpp_federation_srv_conf_t  *fscf;

    fscf = ngx_stream_get_module_srv_conf(s,
                                          ngx_stream_xmpp_federation_module);

    if (fscf->cached == 0 || pair == NULL) {
        return NULL;
    }

    for (q = ngx_queue_last(&fscf->cache);
         q != ngx_queue_sentinel(&fscf->cache);
         q = prev)
    {
        prev = ngx_queue_prev(q);
        gw = ngx_queue_data(q, ngx_xmpp_federation_peer_t, queue);

        if (gw->from.len != pair->remote.len
            || gw->to.len != pair->local.len
            || gw->ns_decls.len != ctx->ns_decls.len
            || ngx_memcmp(gw->from.data, pair->remote.data, gw->from.len)
               != 0
            || ngx_memcmp(gw->to.data, pair->local.data, gw->to.len) != 0
            || (gw->ns_decls.len
                && ngx_memcmp(gw->ns_decls.data, ctx->ns_decls.data,
                              gw->ns_decls.len)
                   != 0))
        {
            continue;
        }

        ngx_xmpp_federation_cache_remove(gw);

        /*
         * The gateway may have ended it a moment ago, its end not read
         * yet: such a stream is not taken.
         */

        n = recv(gw->pc.connection->fd, &ch, 1, MSG_PEEK);
        err = ngx_socket_errno;

        if (n == -1 && (err == NGX_EAGAIN || err == NGX_EINTR)) {
            return gw;
        }

        ngx_log_debug2(NGX_LOG_DEBUG_STREAM, s->connection->log, err,
                       "xmpp gateway: kept stream not taken: %z %d", n, err);

        if (n > 0) {
            ngx_xmpp_federation_cache_end(gw);

        } else {
            ngx_xmpp_federation_peer_close(gw);
        }
    }

    return NULL;
}


/* the pairs the gateway accepted on this stream; NGX_OK: it has this one */

static ngx_int_t
ngx_xmpp_federation_gateway_vouched(ngx_xmpp_federation_peer_t *gw,
    ngx_xmpp_federation_pair_t *pair, ngx_uint_t add)
{
    ngx_str_t                       *v;
    ngx_uint_t                       i;
    ngx_stream_session_t            *s;
    ngx_xmpp_federation_srv_conf_t  *fscf;

    if (gw->vouched) {
        v = gw->vouched->elts;

        for (i = 0; i < gw->vouched->nelts; i += 2) {
            if (v[i].len == pair->remote.len
                && v[i + 1].len == pair->local.len
                && ngx_memcmp(v[i].data, pair->remote.data, v[i].len) == 0
                && ngx_memcmp(v[i + 1].data, pair->local.data,
                              v[i + 1].len)
                   == 0)
            {
                return NGX_OK;
            }
        }
    }

    if (!add) {
        return NGX_DECLINED;
    }

    s = gw->data;

    fscf = ngx_stream_get_module_srv_conf(s,
                                          ngx_stream_xmpp_federation_module);

    if (fscf->keepalive == 0) {
        /* the stream will not be kept: no need to remember */
        return NGX_OK;
    }

    if (gw->vouched == NULL) {
        gw->vouched = ngx_array_create(gw->pool, 2, sizeof(ngx_str_t));
        if (gw->vouched == NULL) {
            return NGX_ERROR;
        }
    }

    v = ngx_array_push_n(gw->vouched, 2);
    if (v == NULL) {
        return NGX_ERROR;
    }

    v[0].data = ngx_pstrdup(gw->pool, &pair->remote);
    v[1].data = ngx_pstrdup(gw->pool, &pair->local);

    if (v[0].data == NULL || v[1].data == NULL) {
        gw->vouched->nelts -= 2;
        return NGX_ERROR;
    }

    v[0].len = pair->remote.len;
    v[1].len = pair->local.len;

    return NGX_OK;
}


/* kept: whitespace from the gateway keeps the stream, anything else ends it */

static void
ngx_xmpp_federation_cache_handler(ngx_event_t *ev)
{
    u_char                       *p;
    ssize_t                       n;
    ngx_connection_t             *c;
    ngx_xmpp_federation_peer_t   *peer;
    u_char                        buf[64];

    c = ev->data;
    peer = c->data;

    if (ev->write) {
        /* nothing to write while kept */
        return;
    }

    if (c->close) {
        /* the worker exits: a last word, without waiting for the answer */

        ngx_xmpp_federation_cache_remove(peer);

        (void) c->send(c, (u_char *) "</stream:stream>",
                       sizeof("</stream:stream>") - 1);

        ngx_xmpp_federation_peer_close(peer);
        return;
    }

    if (ev->timedout) {
        ngx_log_debug0(NGX_LOG_DEBUG_STREAM, c->log, 0,
                       "xmpp gateway: kept stream timed out");

        ngx_xmpp_federation_cache_remove(peer);
        ngx_xmpp_federation_cache_end(peer);
        return;
    }

    while (ev->ready) {
        n = c->recv(c, buf, sizeof(buf));

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR || n == 0) {
            ngx_log_debug0(NGX_LOG_DEBUG_STREAM, c->log, 0,
                           "xmpp gateway: kept stream closed");

            ngx_xmpp_federation_cache_remove(peer);
            ngx_xmpp_federation_peer_close(peer);
            return;
        }

        for (p = buf; p < buf + n; p++) {
            if (!ngx_xmpp_federation_ws(*p)) {
                ngx_log_debug0(NGX_LOG_DEBUG_STREAM, c->log, 0,
                               "xmpp gateway: kept stream ended by the "
                               "gateway");

                ngx_xmpp_federation_cache_remove(peer);
                ngx_xmpp_federation_cache_end(peer);
                return;
            }
        }
    }

    if (ngx_handle_read_event(ev, 0) != NGX_OK) {
        ngx_xmpp_federation_cache_remove(peer);
        ngx_xmpp_federation_peer_close(peer);
    }
}


static void
ngx_xmpp_federation_cache_remove(ngx_xmpp_federation_peer_t *peer)
{
    ngx_connection_t  *c;

    c = peer->pc.connection;

    ngx_queue_remove(&peer->queue);
    peer->cache->cached--;
    peer->cache = NULL;

    c->idle = 0;

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }
}


/* a kept stream ends as any gateway stream: our end, then a linger */

static void
ngx_xmpp_federation_cache_end(ngx_xmpp_federation_peer_t *peer)
{
    if (ngx_xmpp_federation_append(peer->pool, &peer->out,
                                   (u_char *) "</stream:stream>",
                                   sizeof("</stream:stream>") - 1)
        != NGX_OK)
    {
        ngx_xmpp_federation_peer_close(peer);
        return;
    }

    peer->ended = 1;

    ngx_xmpp_federation_peer_detach(peer);
}


/*
 * Until the outbound relay exists, a stanza the gateway sends towards a
 * partner goes back to its sender as an error: the edge, authoritative for
 * the partner's domain at the gateway, vouches for it on a stream of its
 * own and sends the bounce there; then the gateway's stream ends with
 * policy-violation.  Errors are not answered (RFC 6120 8.3.1).
 */

ngx_int_t
ngx_xmpp_federation_bounce(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    u_char                           *b;
    size_t                            len;
    ngx_str_t                         from, to;
    ngx_connection_t                 *c;
    ngx_xmpp_federation_pair_t       *pair;
    ngx_xmpp_federation_parser_t     *p;
    ngx_xmpp_federation_main_conf_t  *fmcf;

    c = s->connection;
    p = ctx->parser;

    fmcf = ngx_stream_get_module_main_conf(s,
                                          ngx_stream_xmpp_federation_module);

    if (ngx_xmpp_federation_jid_domain(&p->from, &from) != NGX_OK
        || ngx_xmpp_federation_jid_domain(&p->to, &to) != NGX_OK
        || !ngx_xmpp_federation_is_local(fmcf, &from)
        || ngx_xmpp_federation_find_partner(fmcf, &to) != ctx->partner)
    {
        ngx_xmpp_federation_stream_error(s, ctx,
                                         ngx_xmpp_err_improper_addressing,
                                         "outbound stanza not from a local "
                                         "domain to the stream's partner");
        return NGX_DONE;
    }

    ctx->bouncing = 1;

    if (ngx_xmpp_federation_is(&p->type, "error")
        || (ngx_xmpp_federation_is(&p->name, "iq")
            && ngx_xmpp_federation_is(&p->type, "result")))
    {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "outbound %V to \"%V\" dropped: not relayed yet, and "
                      "errors and results are not answered",
                      &p->name, &p->to);
        goto flush;
    }

    ngx_log_error(NGX_LOG_INFO, c->log, 0,
                  "outbound %V from \"%V\" to \"%V\" bounced: outbound "
                  "stanzas are not relayed yet", &p->name, &p->from, &p->to);

    len = sizeof("< from='' to='' id='' type='error'><error type='cancel'>"
                 "<remote-server-not-found xmlns='"
                 "urn:ietf:params:xml:ns:xmpp-stanzas'/></error></>") - 1
          + 2 * p->name.len
          + ngx_xmpp_federation_escape(NULL, &p->to)
          + ngx_xmpp_federation_escape(NULL, &p->from)
          + ngx_xmpp_federation_escape(NULL, &p->id);

    /* room first, then the bounce is written in place */

    if (ngx_xmpp_federation_reserve(c->pool, &ctx->bounces, len) != NGX_OK) {
        ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return NGX_ERROR;
    }

    b = ctx->bounces->last;

    b = ngx_sprintf(b, "<%V from='", &p->name);
    b += ngx_xmpp_federation_escape(b, &p->to);
    b = ngx_cpymem(b, "' to='", 6);
    b += ngx_xmpp_federation_escape(b, &p->from);

    if (p->id.len) {
        b = ngx_cpymem(b, "' id='", 6);
        b += ngx_xmpp_federation_escape(b, &p->id);
    }

    b = ngx_sprintf(b, "' type='error'><error type='cancel'>"
                    "<remote-server-not-found xmlns='"
                    "urn:ietf:params:xml:ns:xmpp-stanzas'/></error></%V>",
                    &p->name);

    ctx->bounces->last = b;

    /* the edge speaks for the partner's domain to the sender's domain */

    pair = ngx_xmpp_federation_find_pair(ctx, &to, &from);

    if (pair == NULL) {
        pair = ngx_array_push(&ctx->pairs);
        if (pair == NULL) {
            ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
            return NGX_ERROR;
        }

        ngx_memzero(pair, sizeof(ngx_xmpp_federation_pair_t));

        pair->remote.data = ngx_pnalloc(c->pool, to.len + from.len);
        if (pair->remote.data == NULL) {
            ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
            return NGX_ERROR;
        }

        pair->remote.len = to.len;
        ngx_strlow(pair->remote.data, to.data, to.len);
        pair->local.data = pair->remote.data + to.len;
        pair->local.len = from.len;
        ngx_strlow(pair->local.data, from.data, from.len);

        switch (ngx_xmpp_federation_vouch(s, ctx, pair)) {

        case NGX_OK:
            return NGX_OK;

        case NGX_ERROR:
            ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
            return NGX_ERROR;

        default:
            pair->state = ngx_xmpp_pair_failed;
            break;
        }
    }

flush:

    ngx_xmpp_federation_bounce_flush(s, ctx);

    return ctx->quit ? NGX_DONE : NGX_OK;
}


/* the bounces go when every domain they come from is accepted */

static void
ngx_xmpp_federation_bounce_flush(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_uint_t                   i;
    ngx_xmpp_federation_pair_t  *pair;
    ngx_xmpp_federation_peer_t  *gw;

    pair = ctx->pairs.elts;

    for (i = 0; i < ctx->pairs.nelts; i++) {
        if (pair[i].state == ngx_xmpp_pair_vouching
            || pair[i].state == ngx_xmpp_pair_verifying)
        {
            return;
        }
    }

    gw = ctx->gateway;

    if (gw && ctx->bounces && ctx->bounces->pos < ctx->bounces->last) {
        if (ngx_xmpp_federation_peer_write(gw, ctx->bounces->pos,
                                           ctx->bounces->last
                                           - ctx->bounces->pos)
            != NGX_OK)
        {
            /* our callers look at the session after us: no finalize */
            ngx_xmpp_federation_stream_error(s, ctx,
                                       ngx_xmpp_err_internal_server_error,
                                       "no memory for the bounces");
            return;
        }

        ctx->bounces->pos = ctx->bounces->start;
        ctx->bounces->last = ctx->bounces->start;
    }

    if (ctx->gateway && ctx->gateway->out->pos != ctx->gateway->out->last) {
        /* the write event says when they are out */
        return;
    }

    ngx_xmpp_federation_stream_error(s, ctx, ngx_xmpp_err_policy_violation,
                                     "outbound stanzas are not relayed yet");
}


static void
ngx_xmpp_federation_outbound_handler(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, ngx_xmpp_federation_peer_t *peer,
    ngx_int_t rc)
{
    ngx_uint_t                     i;
    ngx_xmpp_federation_pair_t    *pair;
    ngx_xmpp_federation_parser_t  *p;

    pair = ctx->pairs.elts;

    switch (rc) {

    case NGX_OK:
        for (i = 0; i < ctx->pairs.nelts && ctx->gateway; i++) {
            if (pair[i].state == ngx_xmpp_pair_vouching
                && ngx_xmpp_federation_gateway_result(s, ctx, &pair[i])
                   != NGX_OK)
            {
                ngx_xmpp_federation_finalize(s,
                                            NGX_STREAM_INTERNAL_SERVER_ERROR);
                return;
            }
        }

        return;

    case NGX_DONE:
        ngx_xmpp_federation_bounce_flush(s, ctx);
        return;

    case NGX_ERROR:
        ngx_log_error(NGX_LOG_ERR, s->connection->log, 0,
                      "gateway stream for bounces ended: %s", peer->reason);

        ctx->gateway = NULL;
        ngx_xmpp_federation_peer_close(peer);

        for (i = 0; i < ctx->pairs.nelts; i++) {
            if (pair[i].state == ngx_xmpp_pair_vouching) {
                pair[i].state = ngx_xmpp_pair_failed;
            }
        }

        ngx_xmpp_federation_bounce_flush(s, ctx);
        return;
    }

    p = peer->parser;

    if (!ngx_xmpp_federation_is(&p->ns, NGX_XMPP_FEDERATION_NS_DIALBACK)
        || !ngx_xmpp_federation_is(&p->name, "result"))
    {
        return;
    }

    for (i = 0; i < ctx->pairs.nelts; i++) {
        if (pair[i].state == ngx_xmpp_pair_vouching
            && pair[i].remote.len == p->to.len
            && pair[i].local.len == p->from.len
            && ngx_strncasecmp(pair[i].remote.data, p->to.data, p->to.len)
               == 0
            && ngx_strncasecmp(pair[i].local.data, p->from.data, p->from.len)
               == 0)
        {
            pair[i].state = ngx_xmpp_federation_is(&p->type, "valid")
                            ? ngx_xmpp_pair_valid : ngx_xmpp_pair_failed;

            ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                          "gateway %s \"%V\" for \"%V\" to take bounces",
                          pair[i].state == ngx_xmpp_pair_valid
                          ? "accepted" : "refused",
                          &pair[i].remote, &pair[i].local);
        }
    }

    ngx_xmpp_federation_bounce_flush(s, ctx);
}
