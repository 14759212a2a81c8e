
/*
 * Copyright (C) ngx_xmpp_federation_module authors
 */


/*
 * The content handler of "xmpp_federation": the session's state machine,
 * one function per element the edge acts on, one output buffer and one
 * send function, stream errors and the way out.
 */


#include "ngx_xmpp_federation.h"


#define NGX_XMPP_FEDERATION_ID_LEN     16
#define NGX_XMPP_FEDERATION_LINGER     5000
#define NGX_XMPP_FEDERATION_DRAIN      4096


static void ngx_xmpp_federation_read_handler(ngx_event_t *rev);
static void ngx_xmpp_federation_write_handler(ngx_event_t *wev);
static void ngx_xmpp_federation_linger_handler(ngx_event_t *rev);
static ngx_int_t ngx_xmpp_federation_input(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, u_char *data, size_t len);
static ngx_int_t ngx_xmpp_federation_stream_header(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
static ngx_int_t ngx_xmpp_federation_element(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
static ngx_int_t ngx_xmpp_federation_stanza(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
static void ngx_xmpp_federation_end_stream(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
static ngx_int_t ngx_xmpp_federation_room(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
static void ngx_xmpp_federation_cut(ngx_xmpp_federation_ctx_t *ctx);
#if (NGX_XMPP_FEDERATION_SSE2)
static ngx_int_t ngx_xmpp_federation_jid_domain16(ngx_str_t *jid,
    ngx_str_t *domain);
#endif
static void ngx_xmpp_federation_cleanup(void *data);
static ngx_int_t ngx_xmpp_federation_out_header(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
static ngx_int_t ngx_xmpp_federation_out_features(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
static void ngx_xmpp_federation_linger(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);


#define ngx_xmpp_federation_out_str(ctx, s)                                 \
    ngx_xmpp_federation_out(ctx, (u_char *) s, sizeof(s) - 1)


void
ngx_xmpp_federation_handler(ngx_stream_session_t *s)
{
    size_t                           len, size;
    ngx_connection_t                *c;
    ngx_pool_cleanup_t              *cln;
    ngx_xmpp_federation_ctx_t       *ctx;
    ngx_xmpp_federation_srv_conf_t  *fscf;

    c = s->connection;

    c->log->action = "reading XMPP stream header";

    fscf = ngx_stream_get_module_srv_conf(s,
                                          ngx_stream_xmpp_federation_module);

    ctx = ngx_xmpp_federation_get_ctx(s);
    if (ctx == NULL) {
        ngx_stream_finalize_session(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return;
    }

    if (ctx->parser == NULL) {
        ctx->parser = ngx_xmpp_federation_parser_create(c->pool, c->log,
                                                        fscf->max_header_size,
                                                        fscf->max_stanza_size);
        if (ctx->parser == NULL) {
            ngx_stream_finalize_session(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
            return;
        }
    }

    len = 0;

    if (c->buffer && c->buffer->last > c->buffer->pos) {
        len = c->buffer->last - c->buffer->pos;
    }

    size = ngx_max(fscf->buffer_size, len);

    /* the buffers' memory is the heap's: it goes while the stream idles */

    ctx->in = ngx_calloc_buf(c->pool);
    ctx->out = ngx_calloc_buf(c->pool);
    cln = ngx_pool_cleanup_add(c->pool, 0);

    if (ctx->in == NULL || ctx->out == NULL || cln == NULL
        || ngx_array_init(&ctx->pairs, c->pool, 2,
                          sizeof(ngx_xmpp_federation_pair_t))
           != NGX_OK)
    {
        ngx_stream_finalize_session(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_queue_init(&ctx->verifies);

    /* the stream's bytes stay in ctx->in until they are checked */
    ngx_xmpp_federation_parser_scan(ctx->parser, &ctx->in, &ctx->base);

    cln->handler = ngx_xmpp_federation_cleanup;
    cln->data = ctx;

    if (ngx_xmpp_federation_reserve(c->pool, &ctx->in, size) != NGX_OK) {
        ngx_stream_finalize_session(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return;
    }

    ctx->base = 0;
    ctx->fwd = ctx->in->start;
    ctx->checked = ctx->in->start;

    ctx->state = ngx_xmpp_st_header;
    ctx->error = ngx_xmpp_err_none;
    ctx->status = NGX_STREAM_OK;

    if (c->ssl) {
        /* "listen ... ssl": XEP-0368 direct TLS */
        ctx->tls = NGX_XMPP_FEDERATION_TLS_DIRECT;
    }

    c->read->handler = ngx_xmpp_federation_read_handler;
    c->write->handler = ngx_xmpp_federation_write_handler;

    if (ngx_xmpp_federation_nodelay(s) && ngx_tcp_nodelay(c) != NGX_OK) {
        ngx_stream_finalize_session(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return;
    }

    /* the whole negotiation is bounded, as Lync's establishment timeout */
    ngx_add_timer(c->read, fscf->timeout);

    /* what the preread phase has read is the beginning of the stream */

    if (c->buffer) {
        if (len) {
            ctx->in->last = ngx_cpymem(ctx->in->last, c->buffer->pos, len);
        }

        /*
         * The preread buffer (preread_buffer_size, 16k by default) is of
         * no more use: it would stay with an idle stream for its life.
         */

        (void) ngx_pfree(c->pool, c->buffer->start);
        c->buffer = NULL;

        if (len
            && ngx_xmpp_federation_input(s, ctx, ctx->in->pos, len)
               != NGX_OK)
        {
            return;
        }
    }

    if (!c->read->ready && !c->read->active && c->ssl == NULL) {
        /*
         * A new connection, not yet in the event loop: a server sends its
         * stream header with the connect, so it is mostly here already,
         * and reading now saves a turn of the loop (an empty read costs
         * what the turn would have)
         */

        c->read->ready = 1;
#if (NGX_HAVE_KQUEUE || NGX_HAVE_EPOLLRDHUP)
        c->read->available = -1;
#endif
    }

    ngx_xmpp_federation_read_handler(c->read);
}


static void
ngx_xmpp_federation_cleanup(void *data)
{
    ngx_xmpp_federation_ctx_t  *ctx = data;

    ngx_xmpp_federation_verify_cancel_all(ctx);
    ngx_xmpp_federation_gateway_finish(ctx);

    ngx_xmpp_federation_free_buf(ctx->in);
    ngx_xmpp_federation_free_buf(ctx->out);
    ngx_xmpp_federation_free_buf(ctx->bounces);
}


static void
ngx_xmpp_federation_read_handler(ngx_event_t *rev)
{
    u_char                          *last;
    ssize_t                          n;
    ngx_int_t                        rc;
    ngx_connection_t                *c;
    ngx_stream_session_t            *s;
    ngx_xmpp_federation_ctx_t       *ctx;
    ngx_xmpp_federation_srv_conf_t  *fscf;

    c = rev->data;
    s = c->data;

    ctx = ngx_stream_get_module_ctx(s, ngx_stream_xmpp_federation_module);

    if (rev->timedout) {
        rev->timedout = 0;

        ngx_xmpp_federation_stream_error(s, ctx,
                                         ngx_xmpp_err_connection_timeout,
                                         ctx->state == ngx_xmpp_st_header
                                         ? "no stream header in time"
                                         : ctx->state == ngx_xmpp_st_relay
                                           ? "the stream was idle"
                                           : "stream not negotiated in "
                                             "time");
        return;
    }

    rc = NGX_OK;

    while (rev->ready && !ctx->quit) {

        if (ctx->out->pos != ctx->out->last) {
            /* the peer reads our answer first; the send resumes reading */
            return;
        }

        rc = ngx_xmpp_federation_room(s, ctx);

        if (rc == NGX_ERROR) {
            ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
            return;
        }

        if (rc != NGX_OK) {
            /* the gateway is slow: its write event resumes reading */
            break;
        }

        last = ctx->in->last;

        n = c->recv(c, last, ctx->in->end - last);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR || n == 0) {
            ngx_log_error(NGX_LOG_INFO, c->log, 0,
                          "peer closed XMPP stream without </stream:stream>");
            ngx_xmpp_federation_finalize(s, NGX_STREAM_OK);
            return;
        }

        ctx->in->last += n;

        if (ngx_xmpp_federation_input(s, ctx, last, n) != NGX_OK) {
            return;
        }

        if (ctx->state == ngx_xmpp_st_relay) {
            fscf = ngx_stream_get_module_srv_conf(s,
                                          ngx_stream_xmpp_federation_module);
            ngx_add_timer(rev, fscf->idle_timeout);
        }
    }

    if (rc == NGX_AGAIN) {
        return;
    }

    if (!rev->ready && ctx->state == ngx_xmpp_st_relay && !ctx->quit) {
        /* all is read for now (NGX_AGAIN): what only reading needs goes */
        ngx_xmpp_federation_idle(s, ctx);
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
    }
}


static void
ngx_xmpp_federation_write_handler(ngx_event_t *wev)
{
    ngx_connection_t      *c;
    ngx_stream_session_t  *s;

    c = wev->data;
    s = c->data;

    if (wev->timedout) {
        c->timedout = 1;
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "peer timed out reading the XMPP stream");
        ngx_xmpp_federation_finalize(s, NGX_STREAM_OK);
        return;
    }

    ngx_xmpp_federation_send(s);
}


/*
 * Feeds the parser and acts on each event.  NGX_OK: go on reading;
 * anything else: the session has been handed to the way out.
 */

static ngx_int_t
ngx_xmpp_federation_input(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, u_char *data, size_t len)
{
    ngx_int_t                      rc;
    ngx_xmpp_federation_parser_t  *p;

    u_char                        *ptr;
    ngx_buf_t                     *b;

    p = ctx->parser;
    b = ctx->in;

    rc = ngx_xmpp_federation_parse(p, data, len);

    for ( ;; ) {

        if (rc == NGX_AGAIN) {

            if (p->depth == 1) {

                /*
                 * Between stanzas: whitespace keepalives pass, but not
                 * what the parser holds unfinished (a tag, a reference,
                 * a character split by the read), bad or not.
                 */

                for (ptr = ctx->checked;
                     ptr < b->last && ngx_xmpp_federation_ws(*ptr);
                     ptr++)
                {
                    /* void */
                }

                if (ctx->fwd == ctx->checked) {
                    ctx->fwd = ptr;
                }

                ctx->checked = ptr;
            }

            ngx_xmpp_federation_relay_gateway(s, ctx);

            return ctx->quit ? NGX_DONE : NGX_OK;
        }

        if (rc == NGX_ERROR) {
            ngx_xmpp_federation_stream_error(s, ctx, p->error, p->reason);
            return NGX_DONE;
        }

        switch (p->event) {

        case ngx_xmpp_ev_header:
            rc = ngx_xmpp_federation_stream_header(s, ctx);
            break;

        case ngx_xmpp_ev_element:
            rc = ngx_xmpp_federation_element(s, ctx);
            break;

        default: /* ngx_xmpp_ev_close */
            ngx_xmpp_federation_end_stream(s, ctx);
            return NGX_DONE;
        }

        if (rc == NGX_DECLINED) {
            /* a new stream: the rest of this read is of the old one */
            return ctx->quit ? NGX_DONE : NGX_OK;
        }

        if (rc != NGX_OK) {
            return NGX_DONE;
        }

        rc = ngx_xmpp_federation_parse_next(p);
    }
}


static ngx_int_t
ngx_xmpp_federation_stream_header(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_uint_t                   i;
    const char                  *reason;
    ngx_connection_t            *c;
    ngx_xmpp_federation_error_e  err;

    c = s->connection;

    ctx->header_seen = 1;

    err = ngx_xmpp_federation_check_header(s, ctx, ctx->parser, &reason);

    if (err != ngx_xmpp_err_none) {
        ngx_xmpp_federation_stream_error(s, ctx, err, reason);
        return NGX_DONE;
    }

    /* the parser's memory is reused: keep what the relay needs */
    ctx->ns_decls = ctx->parser->ns_decls;

    /* the header is ours to answer, not to relay */
    ctx->in->pos = ctx->in->start + (ctx->parser->end - ctx->base);
    ctx->fwd = ctx->in->pos;
    ctx->checked = ctx->in->pos;

    if (ngx_xmpp_federation_out_header(s, ctx) != NGX_OK) {
        ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return NGX_ERROR;
    }

    switch (ngx_xmpp_federation_out_features(s, ctx)) {

    case NGX_OK:
        break;

    case NGX_DONE:
        /* the features found no way to authenticate */
        return NGX_DONE;

    default:
        ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return NGX_ERROR;
    }

    ngx_log_error(NGX_LOG_INFO, c->log, 0,
                  "XMPP stream from \"%V\" to \"%V\" accepted, partner "
                  "\"%V\", id %V", &ctx->from, &ctx->to,
                  ctx->partner ? &ctx->partner->domain : &ctx->from,
                  &ctx->stream_id);

    ctx->state = ngx_xmpp_st_features;
    c->log->action = "negotiating XMPP stream";

    for (i = 0; i < ctx->pairs.nelts; i++) {
        if (((ngx_xmpp_federation_pair_t *) ctx->pairs.elts)[i].state
            == ngx_xmpp_pair_valid)
        {
            /* a restarted stream, already handed to the gateway */
            ngx_xmpp_federation_relay_start(s, ctx);
            break;
        }
    }

    ngx_xmpp_federation_send(s);

    return ctx->quit ? NGX_DONE : NGX_OK;
}


/* a top-level element while negotiating: one function per element */

static ngx_int_t
ngx_xmpp_federation_element(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_xmpp_federation_parser_t    *p;
    ngx_xmpp_federation_srv_conf_t  *fscf;

    p = ctx->parser;

    ngx_log_debug3(NGX_LOG_DEBUG_STREAM, s->connection->log, 0,
                   "xmpp element: {%V}%V, %O bytes", &p->ns, &p->name,
                   p->end - p->start);

    /* stanzas first: the relay's case */

    if (ngx_xmpp_federation_is(&p->ns, NGX_XMPP_FEDERATION_NS_SERVER)) {

        if (ngx_xmpp_federation_is(&p->name, "message")
            || ngx_xmpp_federation_is(&p->name, "presence")
            || ngx_xmpp_federation_is(&p->name, "iq"))
        {
            return ngx_xmpp_federation_stanza(s, ctx);
        }
    }

    if (ngx_xmpp_federation_is(&p->ns, NGX_XMPP_FEDERATION_NS_TLS)
        && ngx_xmpp_federation_is(&p->name, "starttls"))
    {
        return ngx_xmpp_federation_starttls(s, ctx);
    }

    fscf = ngx_stream_get_module_srv_conf(s,
                                          ngx_stream_xmpp_federation_module);

    if (fscf->mode == NGX_XMPP_FEDERATION_INBOUND && ctx->partner
        && ctx->partner->tls == NGX_XMPP_FEDERATION_REQUIRED && !ctx->tls
        && (ngx_xmpp_federation_is(&p->ns, NGX_XMPP_FEDERATION_NS_SASL)
            || ngx_xmpp_federation_is(&p->ns,
                                      NGX_XMPP_FEDERATION_NS_DIALBACK)))
    {
        /* with "tls required", no authentication comes before TLS */

        ngx_xmpp_federation_cut(ctx);
        ngx_xmpp_federation_stream_error(s, ctx,
                                         ngx_xmpp_err_policy_violation,
                                         "the partner requires TLS first");
        return NGX_DONE;
    }

    if (ngx_xmpp_federation_is(&p->ns, NGX_XMPP_FEDERATION_NS_SASL)
        && ngx_xmpp_federation_is(&p->name, "auth"))
    {
        return ngx_xmpp_federation_auth(s, ctx);
    }

    if (ngx_xmpp_federation_is(&p->ns, NGX_XMPP_FEDERATION_NS_DIALBACK)) {

        /* not for the gateway: out of the byte stream */
        ngx_xmpp_federation_cut(ctx);

        if (ngx_xmpp_federation_is(&p->name, "result")) {
            return ngx_xmpp_federation_db_result(s, ctx);
        }

        if (ngx_xmpp_federation_is(&p->name, "verify")) {
            return ngx_xmpp_federation_db_verify(s, ctx);
        }
    }

    if (ngx_xmpp_federation_is(&p->ns, NGX_XMPP_FEDERATION_NS_STREAMS)
        && ngx_xmpp_federation_is(&p->name, "error"))
    {
        /* RFC 6120 4.9.1.1: the peer ends the stream with an error */

        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "peer sent a stream error");

        ctx->ended = 0;
        ctx->state = ngx_xmpp_st_closing;
        ngx_xmpp_federation_end_stream(s, ctx);
        return NGX_DONE;
    }

    if (ngx_xmpp_federation_is(&p->ns, "jabber:client")) {
        ngx_xmpp_federation_stream_error(s, ctx,
                                         ngx_xmpp_err_invalid_namespace,
                                         "element in the jabber:client "
                                         "namespace on a server stream");
        return NGX_DONE;
    }

    ngx_xmpp_federation_stream_error(s, ctx,
                                     ngx_xmpp_err_unsupported_stanza_type,
                                     "unknown top-level element");
    return NGX_DONE;
}


/*
 * A stanza of the relay: its "from" is a domain this stream authenticated
 * for its "to", a local domain (RFC 6120 8.1.1.1, XEP-0220 section 4).
 * Only then its bytes go on.
 */

static ngx_int_t
ngx_xmpp_federation_stanza(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    u_char                           *ptr;
    ngx_int_t                         rc;
    ngx_str_t                         from, to;
    ngx_xmpp_federation_pair_t       *pair;
    ngx_xmpp_federation_parser_t     *p;
    ngx_xmpp_federation_srv_conf_t   *fscf;
    ngx_xmpp_federation_main_conf_t  *fmcf;

    p = ctx->parser;

    fscf = ngx_stream_get_module_srv_conf(s,
                                          ngx_stream_xmpp_federation_module);

    if (fscf->mode == NGX_XMPP_FEDERATION_OUTBOUND) {

        /*
         * No outbound relay yet: the stanza goes back to its sender, then
         * out of the buffer, where the scan left its addresses
         */

        rc = ngx_xmpp_federation_bounce(s, ctx);

        if (rc != NGX_ERROR) {
            ngx_xmpp_federation_cut(ctx);
        }

        return rc;
    }

    if (ctx->partner && ctx->partner->tls == NGX_XMPP_FEDERATION_REQUIRED
        && !ctx->tls)
    {
        ngx_xmpp_federation_stream_error(s, ctx,
                                         ngx_xmpp_err_policy_violation,
                                         "stanza before TLS, and the "
                                         "partner requires TLS");
        return NGX_DONE;
    }

    if (ctx->pairs.nelts == 0) {
        ngx_xmpp_federation_stream_error(s, ctx, ngx_xmpp_err_not_authorized,
                                         "stanza before authentication");
        return NGX_DONE;
    }

    if (ngx_xmpp_federation_jid_domain(&p->from, &from) != NGX_OK
        || ngx_xmpp_federation_jid_domain(&p->to, &to) != NGX_OK)
    {
        ngx_xmpp_federation_stream_error(s, ctx,
                                         ngx_xmpp_err_improper_addressing,
                                         "stanza without a valid from or "
                                         "to");
        return NGX_DONE;
    }

    /* a pair is only ever made for a local domain */

    pair = ngx_xmpp_federation_find_pair(ctx, &from, &to);

    fmcf = ngx_stream_get_module_main_conf(s,
                                          ngx_stream_xmpp_federation_module);

    if (pair == NULL && !ngx_xmpp_federation_is_local(fmcf, &to)) {
        ngx_xmpp_federation_stream_error(s, ctx,
                                         ngx_xmpp_err_improper_addressing,
                                         "stanza to a domain that is not "
                                         "local");
        return NGX_DONE;
    }

    if (pair == NULL || pair->state == ngx_xmpp_pair_failed) {
        ngx_xmpp_federation_stream_error(s, ctx, ngx_xmpp_err_invalid_from,
                                         "stanza from a domain the stream "
                                         "did not authenticate");
        return NGX_DONE;
    }

    ptr = ctx->in->start + (p->end - ctx->base);

    if (pair->state != ngx_xmpp_pair_valid || ctx->fwd != ctx->checked) {

        /*
         * Its domain is still being verified or handed to the gateway
         * (a peer that does not wait for "valid"): the stanza waits, and
         * everything after it, in order.
         */

        pair->held++;
        ctx->checked = ptr;

        ngx_log_debug2(NGX_LOG_DEBUG_STREAM, s->connection->log, 0,
                       "xmpp relay: holding stanza from %V, %uz bytes held",
                       &from, (size_t) (ctx->checked - ctx->fwd));

        return NGX_OK;
    }

    ctx->fwd = ptr;
    ctx->checked = ptr;
    ctx->stanzas++;

    return NGX_OK;
}


/*
 * A domain is settled: held stanzas go when none of their domains is
 * pending any more; if one of them failed, the stream ends.
 */

void
ngx_xmpp_federation_release(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_uint_t                   i;
    ngx_xmpp_federation_pair_t  *pair;

    if (ctx->fwd == ctx->checked) {
        return;
    }

    pair = ctx->pairs.elts;

    for (i = 0; i < ctx->pairs.nelts; i++) {

        if (pair[i].held == 0) {
            continue;
        }

        if (pair[i].state == ngx_xmpp_pair_failed) {
            ngx_xmpp_federation_stream_error(s, ctx, pair[i].failure,
                                             "held stanzas of a domain "
                                             "that was not accepted");
            return;
        }

        if (pair[i].state != ngx_xmpp_pair_valid) {
            return;
        }
    }

    for (i = 0; i < ctx->pairs.nelts; i++) {
        ctx->stanzas += pair[i].held;
        pair[i].held = 0;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_STREAM, s->connection->log, 0,
                   "xmpp relay: releasing %uz held bytes",
                   (size_t) (ctx->checked - ctx->fwd));

    ctx->fwd = ctx->checked;

    ngx_xmpp_federation_relay_gateway(s, ctx);
}


/* the domain of a JID: [local@]domain[/resource] */

ngx_int_t
ngx_xmpp_federation_jid_domain(ngx_str_t *jid, ngx_str_t *domain)
{
    u_char  *p, *start, *end;

#if (NGX_XMPP_FEDERATION_SSE2)

    if (jid->len >= 16 && jid->len <= 32) {
        return ngx_xmpp_federation_jid_domain16(jid, domain);
    }

#endif

    if (jid->len == 0) {
        return NGX_ERROR;
    }

    start = jid->data;
    end = jid->data + jid->len;

    /* memchr(): many bytes at a time */

    p = memchr(start, '/', jid->len);
    if (p) {
        end = p;
    }

    p = memchr(start, '@', end - start);
    if (p) {
        start = (u_char *) p + 1;
    }

    if (start == end) {
        return NGX_ERROR;
    }

    domain->data = start;
    domain->len = end - start;

    return NGX_OK;
}


#if (NGX_XMPP_FEDERATION_SSE2)

/*
 * A JID of 16 to 32 bytes, as most are: one load from each end, not past
 * it, finds its '/' and '@', a bit a byte
 */

static ngx_int_t
ngx_xmpp_federation_jid_domain16(ngx_str_t *jid, ngx_str_t *domain)
{
    u_char    *start, *end;
    size_t     n;
    uint64_t   slash, at;
    __m128i    a, b, c;

    start = jid->data;
    end = jid->data + jid->len;
    n = jid->len - 16;

    a = _mm_loadu_si128((const __m128i *) start);
    b = _mm_loadu_si128((const __m128i *) (end - 16));

    c = _mm_set1_epi8('/');
    slash = (uint64_t) _mm_movemask_epi8(_mm_cmpeq_epi8(a, c))
            | (uint64_t) _mm_movemask_epi8(_mm_cmpeq_epi8(b, c)) << n;

    c = _mm_set1_epi8('@');
    at = (uint64_t) _mm_movemask_epi8(_mm_cmpeq_epi8(a, c))
         | (uint64_t) _mm_movemask_epi8(_mm_cmpeq_epi8(b, c)) << n;

    if (slash) {
        n = __builtin_ctzll(slash);
        end = start + n;
        at &= ((uint64_t) 1 << n) - 1;
    }

    if (at) {
        start += __builtin_ctzll(at) + 1;
    }

    if (start == end) {
        return NGX_ERROR;
    }

    domain->data = start;
    domain->len = end - start;

    return NGX_OK;
}

#endif


/*
 * An element of our own in the byte stream (dialback) is cut out of the
 * buffer, so that the bytes around it can go on as they are.
 */

static void
ngx_xmpp_federation_cut(ngx_xmpp_federation_ctx_t *ctx)
{
    u_char     *start, *end;
    ngx_buf_t  *b;

    b = ctx->in;

    start = b->start + (ctx->parser->start - ctx->base);
    end = b->start + (ctx->parser->end - ctx->base);

    if (start < b->pos || end > b->last) {
        return;
    }

    ngx_memmove(start, end, b->last - end);
    b->last -= end - start;

    /* offsets after the element map as if it had never been there */
    ctx->base += end - start;
}


/*
 * Room to read into: unsent bytes move to the start of the buffer, and
 * a stanza larger than the buffer makes it grow, up to the stanza limit.
 */

static ngx_int_t
ngx_xmpp_federation_room(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    u_char                          *start;
    size_t                           size, max;
    ngx_buf_t                       *b;
    ngx_xmpp_federation_srv_conf_t  *fscf;

    b = ctx->in;

    fscf = ngx_stream_get_module_srv_conf(s,
                                          ngx_stream_xmpp_federation_module);

    if (b->start == NULL) {
        /* released while the stream was idle */

        if (ngx_xmpp_federation_reserve(s->connection->pool, &ctx->in,
                                        fscf->buffer_size)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        ctx->fwd = b->start;
        ctx->checked = b->start;
        return NGX_OK;
    }

    if (b->pos == b->last) {
        ctx->base += b->pos - b->start;
        b->pos = b->start;
        b->last = b->start;
        ctx->fwd = b->start;
        ctx->checked = b->start;
        return NGX_OK;
    }

    if ((size_t) (ctx->checked - ctx->fwd) >= fscf->hold_size) {
        /* enough held: the peer waits, TCP holds the rest */
        return NGX_AGAIN;
    }

    /*
     * The unsent rest (a partial stanza, mostly) goes back to the start
     * before the free space gets small, so that reads are as large as
     * proxy_pass's; never more bytes moved than space won.
     */

    if (b->pos > b->start
        && (size_t) (b->end - b->last) < (size_t) (b->end - b->start) / 2
        && b->pos - b->start >= b->last - b->pos)
    {
        size = b->pos - b->start;

        ngx_memmove(b->start, b->pos, b->last - b->pos);

        ctx->base += size;
        ctx->fwd -= size;
        ctx->checked -= size;
        b->last -= size;
        b->pos = b->start;

        return NGX_OK;
    }

    if (b->last < b->end) {
        return NGX_OK;
    }

    if (ctx->fwd > b->pos) {
        /* checked bytes wait for the gateway */
        return NGX_AGAIN;
    }

    max = fscf->max_stanza_size + fscf->hold_size + fscf->buffer_size;
    size = b->end - b->start;

    if (size >= max) {
        /* the parser stops a stanza over the limit before this */
        return NGX_AGAIN;
    }

    size = ngx_min(2 * size, max);

    start = ngx_alloc(size, s->connection->log);
    if (start == NULL) {
        return NGX_ERROR;
    }

    /* the bytes before b->pos are gone: the offsets start later */

    ctx->base += b->pos - b->start;
    ctx->fwd = start + (ctx->fwd - b->pos);
    ctx->checked = start + (ctx->checked - b->pos);

    b->last = ngx_cpymem(start, b->pos, b->last - b->pos);
    ngx_free(b->start);

    b->start = start;
    b->pos = start;
    b->end = start + size;

    return NGX_OK;
}


/*
 * An idle stream (all of its bytes checked and gone to the gateway, none
 * of an element begun, no output waiting) gives its buffers and its parser
 * back, as an idle keepalive connection of nginx does; the next read
 * brings them back.
 */

void
ngx_xmpp_federation_idle(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_buf_t  *b;

    if (ctx->out->pos == ctx->out->last) {
        ngx_xmpp_federation_free_buf(ctx->out);
    }

    b = ctx->in;

    if (b->start == NULL
        || b->pos != b->last || ctx->fwd != b->last || ctx->checked != b->last)
    {
        return;
    }

    if (ngx_xmpp_federation_parser_sleep(ctx->parser) != NGX_OK) {
        return;
    }

    ctx->base += b->last - b->start;
    ctx->fwd = NULL;
    ctx->checked = NULL;

    ngx_xmpp_federation_free_buf(b);

    ngx_log_debug1(NGX_LOG_DEBUG_STREAM, s->connection->log, 0,
                   "xmpp idle: buffers and parser released at %O",
                   ctx->base);
}


/* the first domain is accepted by the gateway: stanzas may flow */

void
ngx_xmpp_federation_relay_start(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_connection_t                *c;
    ngx_xmpp_federation_srv_conf_t  *fscf;

    c = s->connection;

    fscf = ngx_stream_get_module_srv_conf(s,
                                          ngx_stream_xmpp_federation_module);

    ctx->state = ngx_xmpp_st_relay;
    c->log->action = "relaying XMPP stream";

    if (fscf->mode == NGX_XMPP_FEDERATION_OUTBOUND) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "XMPP stream of the gateway to partner \"%V\" "
                      "authenticated", &ctx->partner->domain);

    } else {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "XMPP stream of partner \"%V\" handed to the gateway",
                      &ctx->partner->domain);
    }

    /* from now on the idle timeout, not the establishment one */
    ngx_add_timer(c->read, fscf->idle_timeout);

    if (ctx->gateway) {
        /* the gateway's stream too gives its memory back when idle */
        ctx->gateway->release = 1;
    }
}


static void
ngx_xmpp_federation_end_stream(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                  "peer closed XMPP stream");

    if (ctx->state == ngx_xmpp_st_relay && ctx->gateway) {
        /* what was checked goes first, then the end, both ways */
        ctx->ended = 1;
        ngx_xmpp_federation_relay_gateway(s, ctx);
        return;
    }

    ctx->quit = 1;

    if (ngx_xmpp_federation_out_str(ctx, "</stream:stream>") != NGX_OK) {
        ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_xmpp_federation_send(s);
}


ngx_int_t
ngx_xmpp_federation_out(ngx_xmpp_federation_ctx_t *ctx, u_char *data,
    size_t len)
{
    /* several answers at once: the reads wait until they are out */
    return ngx_xmpp_federation_append(ctx->session->connection->pool,
                                      &ctx->out, data, len);
}


/*
 * Room for len more bytes in a buffer that grows when a burst needs it:
 * answers to a peer, lines to a gateway, bounces, and the input.  The
 * buffer's memory is the heap's, not the pool's, so that an idle stream
 * can give it back (ngx_xmpp_federation_free_buf()); it grows in place.
 */

ngx_int_t
ngx_xmpp_federation_reserve(ngx_pool_t *pool, ngx_buf_t **bp, size_t len)
{
    u_char     *start;
    size_t      size;
    ngx_buf_t  *b;

    b = *bp;

    if (b == NULL) {
        b = ngx_calloc_buf(pool);
        if (b == NULL) {
            return NGX_ERROR;
        }

        *bp = b;
    }

    if (b->start == NULL) {
        size = ngx_max(len, 1024);

    } else {
        if (b->pos == b->last) {
            b->pos = b->start;
            b->last = b->start;
        }

        if ((size_t) (b->end - b->last) >= len) {
            return NGX_OK;
        }

        size = 2 * (b->end - b->start) + len;
    }

    start = ngx_alloc(size, pool->log);
    if (start == NULL) {
        return NGX_ERROR;
    }

    if (b->start) {
        b->last = ngx_cpymem(start, b->pos, b->last - b->pos);
        ngx_free(b->start);

    } else {
        b->last = start;
    }

    b->start = start;
    b->pos = start;
    b->end = start + size;

    return NGX_OK;
}


void
ngx_xmpp_federation_free_buf(ngx_buf_t *b)
{
    if (b == NULL || b->start == NULL) {
        return;
    }

    ngx_free(b->start);

    b->start = NULL;
    b->pos = NULL;
    b->last = NULL;
    b->end = NULL;
}


ngx_int_t
ngx_xmpp_federation_append(ngx_pool_t *pool, ngx_buf_t **bp, u_char *data,
    size_t len)
{
    if (ngx_xmpp_federation_reserve(pool, bp, len) != NGX_OK) {
        return NGX_ERROR;
    }

    (*bp)->last = ngx_cpymem((*bp)->last, data, len);

    return NGX_OK;
}


/* an attribute value or text: escaped; with dst NULL, the length */

size_t
ngx_xmpp_federation_escape(u_char *dst, ngx_str_t *src)
{
    u_char  *p, *d;
    size_t   len;

    len = 0;
    d = dst;

    for (p = src->data; p < src->data + src->len; p++) {

        switch (*p) {

        case '<':
            len += 4;
            if (d) {
                d = ngx_cpymem(d, "&lt;", 4);
            }
            break;

        case '>':
            len += 4;
            if (d) {
                d = ngx_cpymem(d, "&gt;", 4);
            }
            break;

        case '&':
            len += 5;
            if (d) {
                d = ngx_cpymem(d, "&amp;", 5);
            }
            break;

        case '\'':
            len += 6;
            if (d) {
                d = ngx_cpymem(d, "&apos;", 6);
            }
            break;

        case '"':
            len += 6;
            if (d) {
                d = ngx_cpymem(d, "&quot;", 6);
            }
            break;

        default:
            len++;
            if (d) {
                *d++ = *p;
            }
        }
    }

    return len;
}


/*
 * Our header.  The domains in it were matched against the configuration,
 * whose domains hold no character that needs escaping.
 */

static ngx_int_t
ngx_xmpp_federation_out_header(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_buf_t  *b;
    u_char      id[NGX_XMPP_FEDERATION_ID_LEN];

    /* a fresh id for every stream (RFC 6120 4.7.3): keys are bound to it */

    if (ngx_xmpp_federation_random(id, sizeof(id)) != NGX_OK) {
        ngx_log_error(NGX_LOG_ALERT, s->connection->log, 0,
                      "no random bytes for a stream id");
        return NGX_ERROR;
    }

    ctx->stream_id.data = ngx_pnalloc(s->connection->pool, 2 * sizeof(id));
    if (ctx->stream_id.data == NULL) {
        return NGX_ERROR;
    }

    ctx->stream_id.len = ngx_hex_dump(ctx->stream_id.data, id, sizeof(id))
                         - ctx->stream_id.data;

    if (ngx_xmpp_federation_reserve(s->connection->pool, &ctx->out,
                                    256 + ctx->local.len
                                    + ctx->stream_id.len + ctx->from.len)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    b = ctx->out;

    b->last = ngx_cpymem(b->last,
                  "<?xml version='1.0'?>"
                  "<stream:stream xmlns='" NGX_XMPP_FEDERATION_NS_SERVER "'"
                  " xmlns:stream='" NGX_XMPP_FEDERATION_NS_STREAMS "'"
                  " xmlns:db='" NGX_XMPP_FEDERATION_NS_DIALBACK "'"
                  " version='1.0'",
                  sizeof("<?xml version='1.0'?>"
                  "<stream:stream xmlns='" NGX_XMPP_FEDERATION_NS_SERVER "'"
                  " xmlns:stream='" NGX_XMPP_FEDERATION_NS_STREAMS "'"
                  " xmlns:db='" NGX_XMPP_FEDERATION_NS_DIALBACK "'"
                  " version='1.0'") - 1);

    if (ctx->local.len) {
        b->last = ngx_sprintf(b->last, " from='%V'", &ctx->local);
    }

    if (ctx->partner && ctx->from.len) {
        b->last = ngx_sprintf(b->last, " to='%V'", &ctx->from);
    }

    b->last = ngx_sprintf(b->last, " id='%V'", &ctx->stream_id);

    *b->last++ = '>';

    ctx->header_sent = 1;

    return NGX_OK;
}


/*
 * What the partner's policy allows at this point of the negotiation,
 * Lync's matrix: STARTTLS outside TLS; dialback outside TLS unless TLS is
 * required, inside TLS unless both TLS and SASL are required; SASL
 * EXTERNAL inside TLS, with a certificate that names the partner.
 */

ngx_int_t
ngx_xmpp_federation_tls_offered(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_xmpp_federation_main_conf_t  *fmcf;

    if (ctx->partner) {
        return ctx->partner->tls != NGX_XMPP_FEDERATION_NOT_SUPPORTED;
    }

    fmcf = ngx_stream_get_module_main_conf(s,
                                          ngx_stream_xmpp_federation_module);

    return fmcf->any_dialback_tls;
}


static ngx_int_t
ngx_xmpp_federation_out_features(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_uint_t                       tls, dialback, sasl;
    const char                      *reason;
    ngx_xmpp_federation_partner_t   *partner;
    ngx_xmpp_federation_srv_conf_t  *fscf;

    fscf = ngx_stream_get_module_srv_conf(s,
                                          ngx_stream_xmpp_federation_module);

    partner = ctx->partner;
    sasl = 0;

    if (fscf->mode == NGX_XMPP_FEDERATION_OUTBOUND) {
        /* the gateway's stream: dialback only, for now */
        tls = NGX_XMPP_FEDERATION_NOT_SUPPORTED;
        dialback = 1;

    } else if (ctx->tls) {
        tls = NGX_XMPP_FEDERATION_NOT_SUPPORTED;

        if (partner) {
            dialback = partner->dialback
                       && !(partner->tls == NGX_XMPP_FEDERATION_REQUIRED
                            && partner->sasl == NGX_XMPP_FEDERATION_REQUIRED);

            if (partner->sasl != NGX_XMPP_FEDERATION_NOT_SUPPORTED
                && ctx->auth != NGX_XMPP_FEDERATION_AUTH_EXTERNAL)
            {
                if (ngx_xmpp_federation_sasl_usable(s, ctx, &reason)
                    == NGX_OK)
                {
                    sasl = 1;

                } else {
                    ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                                  "SASL EXTERNAL not offered to \"%V\": %s",
                                  &ctx->from, reason);
                }
            }

            if (!sasl && !dialback
                && ctx->auth == NGX_XMPP_FEDERATION_AUTH_NONE)
            {
                /* no way is left to authenticate (rows 2, 4, 8, 10) */
                ngx_xmpp_federation_stream_error(s, ctx,
                                             ngx_xmpp_err_not_authorized,
                                             partner->sasl
                                             == NGX_XMPP_FEDERATION_REQUIRED
                                             ? "SASL is required and the "
                                               "certificate is not usable"
                                             : "the certificate is not "
                                               "usable and dialback is off");
                return NGX_DONE;
            }

        } else {
            dialback = 1;
        }

    } else if (partner) {
        /* per policy; without a certificate STARTTLS then fails */
        tls = partner->tls;

        dialback = partner->dialback
                   && partner->tls != NGX_XMPP_FEDERATION_REQUIRED;

    } else {
        /* no "from": a legacy dialback peer, the partner comes later */
        tls = ngx_xmpp_federation_tls_offered(s, ctx)
              ? NGX_XMPP_FEDERATION_OPTIONAL
              : NGX_XMPP_FEDERATION_NOT_SUPPORTED;
        dialback = 1;
    }

    ctx->sasl_offered = sasl;

    if (ngx_xmpp_federation_out_str(ctx, "<stream:features>") != NGX_OK) {
        return NGX_ERROR;
    }

    if (tls == NGX_XMPP_FEDERATION_REQUIRED) {
        if (ngx_xmpp_federation_out_str(ctx,
                "<starttls xmlns='" NGX_XMPP_FEDERATION_NS_TLS "'>"
                "<required/></starttls>")
            != NGX_OK)
        {
            return NGX_ERROR;
        }

    } else if (tls == NGX_XMPP_FEDERATION_OPTIONAL) {
        if (ngx_xmpp_federation_out_str(ctx,
                "<starttls xmlns='" NGX_XMPP_FEDERATION_NS_TLS "'/>")
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (sasl) {
        if (ngx_xmpp_federation_out_str(ctx,
                "<mechanisms xmlns='" NGX_XMPP_FEDERATION_NS_SASL "'>"
                "<mechanism>EXTERNAL</mechanism></mechanisms>")
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (dialback) {
        if (ngx_xmpp_federation_out_str(ctx,
                "<dialback xmlns='urn:xmpp:features:dialback'>"
                "<errors/></dialback>")
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return ngx_xmpp_federation_out_str(ctx, "</stream:features>");
}


/* a new stream on the same connection: after STARTTLS or SASL */

void
ngx_xmpp_federation_restart(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_buf_t  *b;

    b = ctx->in;

    b->pos = b->start;
    b->last = b->start;
    ctx->base = 0;
    ctx->fwd = b->start;
    ctx->checked = b->start;

    ctx->state = ngx_xmpp_st_header;
    ctx->header_sent = 0;
    ctx->header_seen = 0;

    s->connection->log->action = "reading XMPP stream header";

    if (ngx_xmpp_federation_parser_reset(ctx->parser) != NGX_OK) {
        ctx->quit = 1;
        ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
    }
}


void
ngx_xmpp_federation_resume(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_connection_t  *c;

    c = s->connection;

    c->read->handler = ngx_xmpp_federation_read_handler;
    c->write->handler = ngx_xmpp_federation_write_handler;

    ngx_xmpp_federation_read_handler(c->read);
}


/*
 * RFC 6120 4.9.1: a header first if the peer has none of ours yet, the
 * error, the end of the stream; then the connection closes.
 */

void
ngx_xmpp_federation_stream_error(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, ngx_xmpp_federation_error_e err,
    const char *reason)
{
    u_char            *p;
    ngx_str_t         *name;
    ngx_connection_t  *c;
    u_char             buf[256];

    c = s->connection;

    if (ctx->quit) {
        return;
    }

    name = ngx_xmpp_federation_error_name(err);

    ngx_log_error(NGX_LOG_INFO, c->log, 0,
                  "XMPP stream error <%V/>: %s", name,
                  reason ? reason : "no reason");

    ctx->error = err;
    ctx->quit = 1;

    if (ctx->state == ngx_xmpp_st_relay) {
        /* nothing legitimate is dropped: the checked stanzas go on */
        ngx_xmpp_federation_gateway_end(ctx);
    }

    ctx->state = ngx_xmpp_st_closing;

    switch (err) {

    case ngx_xmpp_err_internal_server_error:
    case ngx_xmpp_err_resource_constraint:
        ctx->status = NGX_STREAM_INTERNAL_SERVER_ERROR;
        break;

    case ngx_xmpp_err_host_unknown:
    case ngx_xmpp_err_not_authorized:
    case ngx_xmpp_err_policy_violation:
        ctx->status = NGX_STREAM_FORBIDDEN;
        break;

    case ngx_xmpp_err_connection_timeout:
        ctx->status = NGX_STREAM_OK;
        break;

    default:
        ctx->status = NGX_STREAM_BAD_REQUEST;
        break;
    }

    if (!ctx->header_sent) {
        if (ngx_xmpp_federation_out_header(s, ctx) != NGX_OK) {
            ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
            return;
        }
    }

    p = ngx_snprintf(buf, sizeof(buf),
                     "<stream:error><%V xmlns='"
                     NGX_XMPP_FEDERATION_NS_ERRORS "'/></stream:error>"
                     "</stream:stream>", name);

    if (ngx_xmpp_federation_out(ctx, buf, p - buf) != NGX_OK) {
        ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_xmpp_federation_send(s);
}


/*
 * The only writer.  Partial writes wait for the write event; when all is
 * out and the session is over, the connection closes, lingering.
 */

void
ngx_xmpp_federation_send(ngx_stream_session_t *s)
{
    ngx_int_t                        rc;
    ngx_connection_t                *c;
    ngx_xmpp_federation_ctx_t       *ctx;
    ngx_xmpp_federation_srv_conf_t  *fscf;

    c = s->connection;

    ctx = ngx_stream_get_module_ctx(s, ngx_stream_xmpp_federation_module);
    fscf = ngx_stream_get_module_srv_conf(s,
                                          ngx_stream_xmpp_federation_module);

    if (ctx->quit && !ctx->corked) {
        /*
         * Our last words, close_notify and FIN leave in one segment (the
         * shutdown of lingering sends what is held): one wake-up of the
         * peer, not three
         */
        ctx->corked = 1;
        (void) ngx_tcp_nopush(c->fd);
    }

    rc = ngx_xmpp_federation_flush(c, ctx->out, ctx->out->last,
                                   fscf->timeout);

    if (rc == NGX_ERROR) {
        /* as with lingering, the session ends from the event loop */
        c->error = 1;
        ctx->quit = 1;
        ctx->status = NGX_STREAM_OK;
        ngx_xmpp_federation_linger(s, ctx);
        return;
    }

    if (rc == NGX_AGAIN) {
        return;
    }

    ctx->out->pos = ctx->out->start;
    ctx->out->last = ctx->out->start;

    if (ctx->quit) {
        ngx_xmpp_federation_linger(s, ctx);
        return;
    }

    if (ctx->starttls) {
        ngx_xmpp_federation_tls_handshake(s, ctx);
        return;
    }

    if (c->read->ready) {
        ngx_post_event(c->read, &ngx_posted_events);
    }
}


/*
 * Writes [b->pos, end) to c.  NGX_OK: all of it is out, the write timer
 * is gone; NGX_AGAIN: the write event (and, with a timeout, its timer)
 * says when to go on; NGX_ERROR: the connection is broken.
 */

ngx_int_t
ngx_xmpp_federation_flush(ngx_connection_t *c, ngx_buf_t *b, u_char *end,
    ngx_msec_t timeout)
{
    ssize_t  n;

    while (b->pos < end) {

        n = c->send(c, b->pos, end - b->pos);

        if (n == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (n == NGX_AGAIN || n == 0) {
            if (timeout) {
                ngx_add_timer(c->write, timeout);
            }

            if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
                return NGX_ERROR;
            }

            return NGX_AGAIN;
        }

        b->pos += n;
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    return NGX_OK;
}


/*
 * Closing with unread input would reset the connection and could destroy
 * our last words before the peer reads them: shut down our side, then
 * read and discard until the peer closes, for a little while.
 */

static void
ngx_xmpp_federation_linger(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_connection_t  *c;

    c = s->connection;

    ctx->lingering = 1;

#if (NGX_STREAM_SSL)
    if (c->ssl) {
        /*
         * TLS ends first (close_notify), then TCP; the drain reads up to
         * the peer's close_notify, and the final shutdown must not read
         * TLS records again: the peer's data after our close_notify is
         * no error of ours
         */
        ERR_clear_error();
        (void) SSL_shutdown(c->ssl->connection);
        ERR_clear_error();
        c->ssl->no_send_shutdown = 1;
        c->ssl->no_wait_shutdown = 1;
    }
#endif

    /* when this fails the peer is gone: the drain below ends at once */
    (void) ngx_shutdown_socket(c->fd, NGX_WRITE_SHUTDOWN);

    c->read->handler = ngx_xmpp_federation_linger_handler;

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    ngx_add_timer(c->read, NGX_XMPP_FEDERATION_LINGER);

    /*
     * Our callers may still look at the session after their stream error
     * or last write: the drain, and the closing, start from the event
     * loop; when nothing is left to read, with the peer's answer
     */

    if (!c->read->ready && !c->error
#if (NGX_STREAM_SSL)
        && !(c->ssl && SSL_has_pending(c->ssl->connection))
#endif
        && ngx_handle_read_event(c->read, 0) == NGX_OK)
    {
        return;
    }

    c->read->ready = 1;
    ngx_post_event(c->read, &ngx_posted_events);
}


static void
ngx_xmpp_federation_linger_handler(ngx_event_t *rev)
{
    ngx_connection_t           *c;
    ngx_stream_session_t       *s;
    ngx_xmpp_federation_ctx_t  *ctx;

    c = rev->data;
    s = c->data;

    ctx = ngx_stream_get_module_ctx(s, ngx_stream_xmpp_federation_module);

    if (rev->timedout || ngx_xmpp_federation_drain(c) != NGX_AGAIN) {
        ngx_xmpp_federation_finalize(s, ctx->status);
    }
}


/*
 * Reads and discards what the peer still sends: NGX_AGAIN to wait for
 * more, NGX_DONE at its end or on an error.  After a TLS handshake, the
 * peer's close_notify is its end too: it has read all of ours.
 */

ngx_int_t
ngx_xmpp_federation_drain(ngx_connection_t *c)
{
    ssize_t  n;
    u_char   buf[NGX_XMPP_FEDERATION_DRAIN];

#if (NGX_STREAM_SSL)
    int      err;

    if (c->ssl && c->ssl->handshaked) {

        for ( ;; ) {
            n = SSL_read(c->ssl->connection, buf, NGX_XMPP_FEDERATION_DRAIN);

            if (n > 0) {
                continue;
            }

            err = SSL_get_error(c->ssl->connection, n);

            /* no TLS error of the peer's is ours to log any more */
            ERR_clear_error();

            if (err != SSL_ERROR_WANT_READ) {
                /* close_notify, the end of TCP, or broken TLS */
                return NGX_DONE;
            }

            c->read->ready = 0;
            break;
        }

        if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
            return NGX_DONE;
        }

        return NGX_AGAIN;
    }
#endif

    while (c->read->ready) {
        n = ngx_recv(c, buf, NGX_XMPP_FEDERATION_DRAIN);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR || n == 0) {
            return NGX_DONE;
        }
    }

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        return NGX_DONE;
    }

    return NGX_AGAIN;
}


void
ngx_xmpp_federation_finalize(ngx_stream_session_t *s, ngx_uint_t status)
{
    ngx_log_debug1(NGX_LOG_DEBUG_STREAM, s->connection->log, 0,
                   "xmpp finalize: %ui", status);

#if (NGX_STREAM_SSL)
    if (s->connection->ssl) {
        /*
         * the stream is over: our close_notify goes out, and whatever the
         * peer still sends is not read as TLS (nginx 1.22 would log the
         * peer's data after our close_notify as a critical error)
         */
        s->connection->ssl->no_wait_shutdown = 1;
    }
#endif

    ngx_stream_finalize_session(s, status);
}
