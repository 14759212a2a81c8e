
/*
 * Copyright (C) ngx_xmpp_federation_module authors
 */


/*
 * The content handler of "xmpp_federation": the session's state machine,
 * one function per element the edge acts on, one output buffer and one
 * send function, stream errors and the way out.
 */


#include "ngx_xmpp_federation.h"
#include <openssl/rand.h>


#define NGX_XMPP_FEDERATION_OUT_SIZE   2048
#define NGX_XMPP_FEDERATION_ID_LEN     16
#define NGX_XMPP_FEDERATION_LINGER     5000


static void ngx_xmpp_federation_read_handler(ngx_event_t *rev);
static void ngx_xmpp_federation_write_handler(ngx_event_t *wev);
static void ngx_xmpp_federation_linger_handler(ngx_event_t *rev);
static ngx_int_t ngx_xmpp_federation_input(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, u_char *data, size_t len);
static ngx_int_t ngx_xmpp_federation_stream_header(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
static ngx_int_t ngx_xmpp_federation_element(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
static ngx_int_t ngx_xmpp_federation_starttls(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
static ngx_int_t ngx_xmpp_federation_auth(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
static ngx_int_t ngx_xmpp_federation_db_result(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
static ngx_int_t ngx_xmpp_federation_stanza(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
static void ngx_xmpp_federation_end_stream(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);

static ngx_int_t ngx_xmpp_federation_out(ngx_xmpp_federation_ctx_t *ctx,
    u_char *data, size_t len);
static ngx_int_t ngx_xmpp_federation_out_header(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
static ngx_int_t ngx_xmpp_federation_out_features(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
static void ngx_xmpp_federation_stream_error(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, ngx_xmpp_federation_error_e err,
    const char *reason);
static void ngx_xmpp_federation_send(ngx_stream_session_t *s);
static void ngx_xmpp_federation_linger(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
static void ngx_xmpp_federation_finalize(ngx_stream_session_t *s,
    ngx_uint_t status);
static ngx_int_t ngx_xmpp_federation_is(ngx_str_t *str, const char *value);


#define ngx_xmpp_federation_out_str(ctx, s)                                 \
    ngx_xmpp_federation_out(ctx, (u_char *) s, sizeof(s) - 1)


void
ngx_xmpp_federation_handler(ngx_stream_session_t *s)
{
    size_t                           len;
    ngx_connection_t                *c;
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

    ctx->in = ngx_create_temp_buf(c->pool, fscf->buffer_size);
    ctx->out = ngx_create_temp_buf(c->pool, NGX_XMPP_FEDERATION_OUT_SIZE);

    if (ctx->in == NULL || ctx->out == NULL) {
        ngx_stream_finalize_session(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return;
    }

    ctx->state = ngx_xmpp_st_header;
    ctx->error = ngx_xmpp_err_none;
    ctx->status = NGX_STREAM_OK;

    c->read->handler = ngx_xmpp_federation_read_handler;
    c->write->handler = ngx_xmpp_federation_write_handler;

    /* the whole negotiation is bounded, as Lync's establishment timeout */
    ngx_add_timer(c->read, fscf->timeout);

    /* what the preread phase has read is the beginning of the stream */

    if (c->buffer && c->buffer->last > c->buffer->pos) {
        len = c->buffer->last - c->buffer->pos;

        if (ngx_xmpp_federation_input(s, ctx, c->buffer->pos, len)
            != NGX_OK)
        {
            return;
        }

        c->buffer->pos = c->buffer->last;
    }

    ngx_xmpp_federation_read_handler(c->read);
}


static void
ngx_xmpp_federation_read_handler(ngx_event_t *rev)
{
    ssize_t                     n;
    ngx_connection_t           *c;
    ngx_stream_session_t       *s;
    ngx_xmpp_federation_ctx_t  *ctx;

    c = rev->data;
    s = c->data;

    ctx = ngx_stream_get_module_ctx(s, ngx_stream_xmpp_federation_module);

    if (rev->timedout) {
        rev->timedout = 0;

        ngx_xmpp_federation_stream_error(s, ctx,
                                         ngx_xmpp_err_connection_timeout,
                                         ctx->state == ngx_xmpp_st_header
                                         ? "no stream header in time"
                                         : "stream not negotiated in time");
        return;
    }

    while (rev->ready) {

        if (ctx->out->pos != ctx->out->last) {
            /* the peer reads our answer first; the send resumes reading */
            return;
        }

        n = c->recv(c, ctx->in->start, ctx->in->end - ctx->in->start);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR || n == 0) {
            ngx_log_error(NGX_LOG_INFO, c->log, 0,
                          "peer closed XMPP stream without </stream:stream>");
            ngx_xmpp_federation_finalize(s, NGX_STREAM_OK);
            return;
        }

        if (ngx_xmpp_federation_input(s, ctx, ctx->in->start, n) != NGX_OK) {
            return;
        }
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

    p = ctx->parser;

    rc = ngx_xmpp_federation_parse(p, data, len);

    for ( ;; ) {

        if (rc == NGX_AGAIN) {
            return NGX_OK;
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
    u_char                       id[NGX_XMPP_FEDERATION_ID_LEN];
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

    /* a fresh id for every stream: dialback keys are bound to it */

    if (RAND_bytes(id, sizeof(id)) != 1) {
        ngx_log_error(NGX_LOG_ALERT, c->log, 0, "RAND_bytes() failed");
        ngx_xmpp_federation_stream_error(s, ctx,
                                         ngx_xmpp_err_internal_server_error,
                                         "no stream id");
        return NGX_DONE;
    }

    ctx->stream_id.data = ngx_pnalloc(c->pool, 2 * sizeof(id));
    if (ctx->stream_id.data == NULL) {
        ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return NGX_ERROR;
    }

    ctx->stream_id.len = ngx_hex_dump(ctx->stream_id.data, id, sizeof(id))
                         - ctx->stream_id.data;

    if (ngx_xmpp_federation_out_header(s, ctx) != NGX_OK
        || ngx_xmpp_federation_out_features(s, ctx) != NGX_OK)
    {
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

    ngx_xmpp_federation_send(s);

    return ctx->quit ? NGX_DONE : NGX_OK;
}


/* a top-level element while negotiating: one function per element */

static ngx_int_t
ngx_xmpp_federation_element(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_xmpp_federation_parser_t  *p;

    p = ctx->parser;

    ngx_log_debug3(NGX_LOG_DEBUG_STREAM, s->connection->log, 0,
                   "xmpp element: {%V}%V, %O bytes", &p->ns, &p->name,
                   p->end - p->start);

    if (ngx_xmpp_federation_is(&p->ns, NGX_XMPP_FEDERATION_NS_TLS)
        && ngx_xmpp_federation_is(&p->name, "starttls"))
    {
        return ngx_xmpp_federation_starttls(s, ctx);
    }

    if (ngx_xmpp_federation_is(&p->ns, NGX_XMPP_FEDERATION_NS_SASL)
        && ngx_xmpp_federation_is(&p->name, "auth"))
    {
        return ngx_xmpp_federation_auth(s, ctx);
    }

    if (ngx_xmpp_federation_is(&p->ns, NGX_XMPP_FEDERATION_NS_DIALBACK)
        && ngx_xmpp_federation_is(&p->name, "result"))
    {
        return ngx_xmpp_federation_db_result(s, ctx);
    }

    if (ngx_xmpp_federation_is(&p->ns, NGX_XMPP_FEDERATION_NS_SERVER)) {

        if (ngx_xmpp_federation_is(&p->name, "message")
            || ngx_xmpp_federation_is(&p->name, "presence")
            || ngx_xmpp_federation_is(&p->name, "iq"))
        {
            return ngx_xmpp_federation_stanza(s, ctx);
        }
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
 * Authentication is not there yet: STARTTLS, SASL EXTERNAL and dialback
 * come with their own files.  Until then nothing authenticates a peer.
 */

static ngx_int_t
ngx_xmpp_federation_starttls(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                  "XMPP STARTTLS refused: no TLS context");

    ctx->error = ngx_xmpp_err_none;
    ctx->quit = 1;
    ctx->status = NGX_STREAM_FORBIDDEN;

    /* RFC 6120 5.4.2.2: <failure/>, then the stream closes */

    if (ngx_xmpp_federation_out_str(ctx,
            "<failure xmlns='" NGX_XMPP_FEDERATION_NS_TLS "'/>"
            "</stream:stream>")
        != NGX_OK)
    {
        ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return NGX_ERROR;
    }

    ngx_xmpp_federation_send(s);

    return NGX_DONE;
}


static ngx_int_t
ngx_xmpp_federation_auth(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_xmpp_federation_stream_error(s, ctx, ngx_xmpp_err_not_authorized,
                                     "SASL was not offered");
    return NGX_DONE;
}


static ngx_int_t
ngx_xmpp_federation_db_result(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_xmpp_federation_stream_error(s, ctx, ngx_xmpp_err_not_authorized,
                                     "dialback verification is not "
                                     "available");
    return NGX_DONE;
}


static ngx_int_t
ngx_xmpp_federation_stanza(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_xmpp_federation_stream_error(s, ctx, ngx_xmpp_err_not_authorized,
                                     "stanza before authentication");
    return NGX_DONE;
}


static void
ngx_xmpp_federation_end_stream(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                  "peer closed XMPP stream");

    ctx->quit = 1;

    if (ngx_xmpp_federation_out_str(ctx, "</stream:stream>") != NGX_OK) {
        ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_xmpp_federation_send(s);
}


static ngx_int_t
ngx_xmpp_federation_out(ngx_xmpp_federation_ctx_t *ctx, u_char *data,
    size_t len)
{
    ngx_buf_t  *b;

    b = ctx->out;

    if (b->pos == b->last) {
        b->pos = b->start;
        b->last = b->start;
    }

    if ((size_t) (b->end - b->last) < len) {
        ngx_log_error(NGX_LOG_ALERT, ctx->session->connection->log, 0,
                      "XMPP output buffer is too small");
        return NGX_ERROR;
    }

    b->last = ngx_cpymem(b->last, data, len);

    return NGX_OK;
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

    b = ctx->out;

    if (b->pos == b->last) {
        b->pos = b->start;
        b->last = b->start;
    }

    if ((size_t) (b->end - b->last)
        < 256 + ctx->local.len + ctx->stream_id.len + ctx->from.len)
    {
        return NGX_ERROR;
    }

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

    if (ctx->stream_id.len) {
        b->last = ngx_sprintf(b->last, " id='%V'", &ctx->stream_id);
    }

    *b->last++ = '>';

    ctx->header_sent = 1;

    return NGX_OK;
}


/* what the partner's policy allows, before any authentication */

static ngx_int_t
ngx_xmpp_federation_out_features(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_uint_t                        tls, dialback;
    ngx_xmpp_federation_main_conf_t  *fmcf;

    fmcf = ngx_stream_get_module_main_conf(s,
                                          ngx_stream_xmpp_federation_module);

    if (ctx->partner) {
        tls = ctx->partner->tls;
        dialback = ctx->partner->dialback;

    } else {
        /* no "from": a legacy dialback peer, the partner comes later */
        tls = fmcf->any_dialback_tls ? NGX_XMPP_FEDERATION_OPTIONAL
                                     : NGX_XMPP_FEDERATION_NOT_SUPPORTED;
        dialback = 1;
    }

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


/*
 * RFC 6120 4.9.1: a header first if the peer has none of ours yet, the
 * error, the end of the stream; then the connection closes.
 */

static void
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

static void
ngx_xmpp_federation_send(ngx_stream_session_t *s)
{
    ssize_t                          n;
    ngx_buf_t                       *b;
    ngx_connection_t                *c;
    ngx_xmpp_federation_ctx_t       *ctx;
    ngx_xmpp_federation_srv_conf_t  *fscf;

    c = s->connection;

    ctx = ngx_stream_get_module_ctx(s, ngx_stream_xmpp_federation_module);

    b = ctx->out;

    while (b->pos < b->last) {

        n = c->send(c, b->pos, b->last - b->pos);

        if (n == NGX_ERROR) {
            ngx_xmpp_federation_finalize(s, NGX_STREAM_OK);
            return;
        }

        if (n == NGX_AGAIN || n == 0) {
            fscf = ngx_stream_get_module_srv_conf(s,
                                          ngx_stream_xmpp_federation_module);

            ngx_add_timer(c->write, fscf->timeout);

            if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
                ngx_xmpp_federation_finalize(s,
                                             NGX_STREAM_INTERNAL_SERVER_ERROR);
            }

            return;
        }

        b->pos += n;
    }

    b->pos = b->start;
    b->last = b->start;

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    if (ctx->quit) {
        ngx_xmpp_federation_linger(s, ctx);
        return;
    }

    if (c->read->ready) {
        ngx_post_event(c->read, &ngx_posted_events);
    }
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

    if (ngx_shutdown_socket(c->fd, NGX_WRITE_SHUTDOWN) == -1) {
        ngx_xmpp_federation_finalize(s, ctx->status);
        return;
    }

    c->read->handler = ngx_xmpp_federation_linger_handler;

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    ngx_add_timer(c->read, NGX_XMPP_FEDERATION_LINGER);

    ngx_xmpp_federation_linger_handler(c->read);
}


static void
ngx_xmpp_federation_linger_handler(ngx_event_t *rev)
{
    ssize_t                     n;
    ngx_connection_t           *c;
    ngx_stream_session_t       *s;
    ngx_xmpp_federation_ctx_t  *ctx;

    c = rev->data;
    s = c->data;

    ctx = ngx_stream_get_module_ctx(s, ngx_stream_xmpp_federation_module);

    if (rev->timedout) {
        ngx_xmpp_federation_finalize(s, ctx->status);
        return;
    }

    while (rev->ready) {
        n = c->recv(c, ctx->in->start, ctx->in->end - ctx->in->start);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR || n == 0) {
            ngx_xmpp_federation_finalize(s, ctx->status);
            return;
        }
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_xmpp_federation_finalize(s, ctx->status);
    }
}


static void
ngx_xmpp_federation_finalize(ngx_stream_session_t *s, ngx_uint_t status)
{
    ngx_xmpp_federation_ctx_t  *ctx;

    ctx = ngx_stream_get_module_ctx(s, ngx_stream_xmpp_federation_module);

    ngx_log_debug2(NGX_LOG_DEBUG_STREAM, s->connection->log, 0,
                   "xmpp finalize: %ui, error %d", status,
                   ctx ? (int) ctx->error : 0);

    ngx_stream_finalize_session(s, status);
}


static ngx_int_t
ngx_xmpp_federation_is(ngx_str_t *str, const char *value)
{
    size_t  len;

    len = ngx_strlen(value);

    return str->len == len && ngx_strncmp(str->data, value, len) == 0;
}
