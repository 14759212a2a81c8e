
/*
 * Copyright (C) ngx_xmpp_federation_module authors
 */


/*
 * Server dialback, XEP-0220, in its three roles:
 *
 * - receiving: a peer's <db:result/> is checked against the partner policy
 *   and verified with the domain's authoritative server (DNS SRV through
 *   nginx's resolver, the partner's "server", or, for the gateway on the
 *   internal listener, xmpp_federation_pass);
 * - authoritative: <db:verify/> for a key the edge minted is answered from
 *   the key itself, HMAC-SHA256(SHA256(secret), receiving ' ' originating
 *   ' ' id) (XEP-0185): no state, any edge with the secret answers;
 * - originating: the hand-off vouches with such keys (proxy.c).
 */


#include "ngx_xmpp_federation.h"
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>


#define NGX_XMPP_FEDERATION_NS_STANZAS  "urn:ietf:params:xml:ns:xmpp-stanzas"


struct ngx_xmpp_federation_verify_s {
    ngx_stream_session_t            *session;
    ngx_xmpp_federation_peer_t      *peer;
    ngx_resolver_ctx_t              *resolve;
    ngx_event_t                      timer;
    ngx_queue_t                      queue;

    ngx_uint_t                       pair;     /* index in ctx->pairs */
    ngx_str_t                        key;
    ngx_str_t                        id;       /* the stream of the key */
    ngx_str_t                        host;     /* resolved by name */
    ngx_str_t                        addr;     /* what was resolved */
    in_port_t                        port;

    unsigned                         srv:1;
    unsigned                         linked:1;
};


static ngx_int_t ngx_xmpp_federation_verify_start(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, ngx_uint_t pair);
static ngx_int_t ngx_xmpp_federation_verify_resolve(
    ngx_xmpp_federation_verify_t *v, ngx_str_t *name, ngx_uint_t srv);
static void ngx_xmpp_federation_verify_resolved(ngx_resolver_ctx_t *rctx);
static void ngx_xmpp_federation_verify_connect(
    ngx_xmpp_federation_verify_t *v, struct sockaddr *sockaddr,
    socklen_t socklen, ngx_str_t *name);
static void ngx_xmpp_federation_verify_handler(
    ngx_xmpp_federation_peer_t *peer, ngx_int_t rc);
static void ngx_xmpp_federation_verify_timeout(ngx_event_t *ev);
static void ngx_xmpp_federation_verify_done(ngx_xmpp_federation_verify_t *v,
    const char *type, const char *condition);
static void ngx_xmpp_federation_verify_close(ngx_xmpp_federation_verify_t *v);
static void ngx_xmpp_federation_verify_cleanup(void *data);
static ngx_int_t ngx_xmpp_federation_result_error(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, const char *condition,
    const char *reason);


/* the stateless key, as 64 lowercase hex digits */

ngx_int_t
ngx_xmpp_federation_dialback_key(ngx_xmpp_federation_main_conf_t *fmcf,
    ngx_str_t *receiving, ngx_str_t *originating, ngx_str_t *id, u_char *key)
{
    u_char        *p;
    unsigned int   len;
    u_char         buf[3 * 1024 + 256];
    u_char         md[EVP_MAX_MD_SIZE];

    if (receiving->len + originating->len + id->len + 2 > sizeof(buf)) {
        return NGX_ERROR;
    }

    ngx_strlow(buf, receiving->data, receiving->len);
    p = buf + receiving->len;
    *p++ = ' ';
    ngx_strlow(p, originating->data, originating->len);
    p += originating->len;
    *p++ = ' ';
    p = ngx_cpymem(p, id->data, id->len);

    len = 0;

    if (HMAC(EVP_sha256(), fmcf->dialback_key, 32, buf, p - buf, md, &len)
        == NULL
        || len != 32)
    {
        return NGX_ERROR;
    }

    ngx_hex_dump(key, md, 32);

    return NGX_OK;
}


/*
 * The receiving role: <db:result from='D' to='L'>key</db:result>.  Each
 * one, the first and those multiplexed later, is checked on its own.
 */

ngx_int_t
ngx_xmpp_federation_db_result(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_uint_t                        i;
    ngx_connection_t                 *c;
    ngx_xmpp_federation_pair_t       *pair;
    ngx_xmpp_federation_parser_t     *p;
    ngx_xmpp_federation_partner_t    *partner;
    ngx_xmpp_federation_srv_conf_t   *fscf;
    ngx_xmpp_federation_main_conf_t  *fmcf;

    c = s->connection;
    p = ctx->parser;

    fmcf = ngx_stream_get_module_main_conf(s,
                                          ngx_stream_xmpp_federation_module);
    fscf = ngx_stream_get_module_srv_conf(s,
                                          ngx_stream_xmpp_federation_module);

    if (p->type.len) {
        ngx_xmpp_federation_stream_error(s, ctx, ngx_xmpp_err_bad_format,
                                         "<db:result/> with a type from "
                                         "the initiating side");
        return NGX_DONE;
    }

    if (p->from.len == 0 || p->to.len == 0 || p->from.len > 1023
        || p->to.len > 1023)
    {
        ngx_xmpp_federation_stream_error(s, ctx,
                                         ngx_xmpp_err_improper_addressing,
                                         "<db:result/> without from or to");
        return NGX_DONE;
    }

    if (fscf->mode == NGX_XMPP_FEDERATION_OUTBOUND) {

        /*
         * The gateway authenticates its stream to "D": from is local,
         * to is the partner domain this listener speaks for.
         */

        if (!ngx_xmpp_federation_is_local(fmcf, &p->from)) {
            return ngx_xmpp_federation_result_error(s, ctx,
                                           "not-authorized",
                                           "\"from\" is not a local domain");
        }

        if (ngx_xmpp_federation_find_partner(fmcf, &p->to) == NULL) {
            return ngx_xmpp_federation_result_error(s, ctx, "item-not-found",
                                           "\"to\" is not a partner domain");
        }

        partner = NULL;

    } else {

        if (!ngx_xmpp_federation_is_local(fmcf, &p->to)) {
            return ngx_xmpp_federation_result_error(s, ctx, "item-not-found",
                                           "\"to\" is not a local domain");
        }

        partner = ngx_xmpp_federation_find_partner(fmcf, &p->from);

        if (partner == NULL) {
            return ngx_xmpp_federation_result_error(s, ctx, "not-authorized",
                                           "\"from\" is not a partner "
                                           "domain");
        }

        if (ctx->partner && partner != ctx->partner) {
            return ngx_xmpp_federation_result_error(s, ctx,
                                           "policy-violation",
                                           "\"from\" belongs to another "
                                           "partner than the stream");
        }

        if (!partner->dialback) {
            return ngx_xmpp_federation_result_error(s, ctx,
                                           "policy-violation",
                                           "dialback is off for the "
                                           "partner");
        }

        if (partner->tls == NGX_XMPP_FEDERATION_REQUIRED && !ctx->tls) {
            ngx_xmpp_federation_stream_error(s, ctx,
                                             ngx_xmpp_err_policy_violation,
                                             "dialback before TLS, and "
                                             "the partner requires TLS");
            return NGX_DONE;
        }

        if (partner->tls == NGX_XMPP_FEDERATION_REQUIRED
            && partner->sasl == NGX_XMPP_FEDERATION_REQUIRED)
        {
            return ngx_xmpp_federation_result_error(s, ctx,
                                           "policy-violation",
                                           "the partner requires SASL");
        }
    }

    pair = ngx_xmpp_federation_find_pair(ctx, &p->from, &p->to);

    if (pair) {
        if (pair->state == ngx_xmpp_pair_valid) {
            ngx_xmpp_federation_pair_done(s, ctx, pair, "valid", NULL);
            ngx_xmpp_federation_send(s);
            return NGX_OK;
        }

        if (pair->state != ngx_xmpp_pair_failed) {
            ngx_log_error(NGX_LOG_INFO, c->log, 0,
                          "dialback for \"%V\" is already under way",
                          &p->from);
            return NGX_OK;
        }

    } else {
        pair = ngx_xmpp_federation_add_pair(s, ctx, &p->from, &p->to);
        if (pair == NULL) {
            ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
            return NGX_ERROR;
        }
    }

    if (ctx->verifying >= fscf->max_dialback) {
        pair->state = ngx_xmpp_pair_failed;
        ngx_xmpp_federation_pair_done(s, ctx, pair, "error",
                                      "resource-constraint");
        ngx_xmpp_federation_send(s);
        return NGX_OK;
    }

    if (partner) {
        ctx->partner = partner;
    }

    pair->state = ngx_xmpp_pair_verifying;

    if (p->text.len == 0 || p->text.len > 1023) {
        pair->state = ngx_xmpp_pair_failed;
        ngx_xmpp_federation_pair_done(s, ctx, pair, "invalid", NULL);
        ngx_xmpp_federation_send(s);
        return NGX_OK;
    }

    i = pair - (ngx_xmpp_federation_pair_t *) ctx->pairs.elts;

    ngx_log_error(NGX_LOG_INFO, c->log, 0,
                  "dialback: verifying \"%V\" for \"%V\"",
                  &pair->remote, &pair->local);

    if (ngx_xmpp_federation_verify_start(s, ctx, i) != NGX_OK) {
        ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return NGX_ERROR;
    }

    return ctx->quit ? NGX_DONE : NGX_OK;
}


/* XEP-0220 errors keep the stream open */

static ngx_int_t
ngx_xmpp_federation_result_error(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, const char *condition,
    const char *reason)
{
    u_char                         *last;
    ngx_str_t                       from, to;
    ngx_xmpp_federation_parser_t   *p;
    u_char                          buf[NGX_XMPP_FEDERATION_LINE * 4];

    p = ctx->parser;

    ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                  "dialback refused for \"%V\" to \"%V\": %s",
                  &p->from, &p->to, reason);

    /* the domains may be anything: escaped */

    last = ngx_cpymem(buf, "<db:result from='", 17);
    to = p->to;
    from = p->from;
    last += ngx_xmpp_federation_escape(last, &to);
    last = ngx_cpymem(last, "' to='", 6);
    last += ngx_xmpp_federation_escape(last, &from);
    last = ngx_sprintf(last, "' type='error'><error type='cancel'><%s xmlns='"
                       NGX_XMPP_FEDERATION_NS_STANZAS "'/></error>"
                       "</db:result>", condition);

    if (ngx_xmpp_federation_out(ctx, buf, last - buf) != NGX_OK) {
        ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return NGX_ERROR;
    }

    ngx_xmpp_federation_send(s);

    return ctx->quit ? NGX_DONE : NGX_OK;
}


/*
 * The answer to a pair: valid, invalid or an error, from the local side
 * of the pair to the remote side.
 */

void
ngx_xmpp_federation_pair_done(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, ngx_xmpp_federation_pair_t *pair,
    const char *type, const char *condition)
{
    u_char  *p;
    u_char   buf[NGX_XMPP_FEDERATION_LINE];

    pair->failure = ngx_xmpp_err_not_authorized;

    if (condition && pair->state == ngx_xmpp_pair_vouching) {
        pair->failure = ngx_xmpp_err_remote_connection_failed;
    }

    if (condition) {
        p = ngx_snprintf(buf, sizeof(buf),
                         "<db:result from='%V' to='%V' type='error'>"
                         "<error type='cancel'><%s xmlns='"
                         NGX_XMPP_FEDERATION_NS_STANZAS "'/></error>"
                         "</db:result>",
                         &pair->local, &pair->remote, condition);
        pair->state = ngx_xmpp_pair_failed;

    } else {
        p = ngx_snprintf(buf, sizeof(buf),
                         "<db:result from='%V' to='%V' type='%s'/>",
                         &pair->local, &pair->remote, type);

        pair->state = (type[0] == 'v') ? ngx_xmpp_pair_valid
                                       : ngx_xmpp_pair_failed;
    }

    if (pair->sasl) {

        /* SASL said <success/> already: only the gateway's word counts */

        if (pair->state != ngx_xmpp_pair_valid) {
            ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                          "\"%V\" not accepted by the gateway", &pair->remote);
            ngx_xmpp_federation_stream_error(s, ctx, pair->failure,
                                             "the gateway did not accept "
                                             "the domain");
            return;
        }

        if (ctx->state == ngx_xmpp_st_features) {
            ngx_xmpp_federation_relay_start(s, ctx);
        }

        ngx_xmpp_federation_release(s, ctx);
        return;
    }

    if (pair->state == ngx_xmpp_pair_valid) {
        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "dialback: \"%V\" authenticated for \"%V\"",
                      &pair->remote, &pair->local);

        if (ctx->auth == NGX_XMPP_FEDERATION_AUTH_NONE) {
            ctx->auth = NGX_XMPP_FEDERATION_AUTH_DIALBACK;
        }

        if (ctx->state == ngx_xmpp_st_features) {
            ngx_xmpp_federation_relay_start(s, ctx);
        }

    } else {
        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "dialback: \"%V\" refused for \"%V\": %s",
                      &pair->remote, &pair->local,
                      condition ? condition : type);
    }

    if (ngx_xmpp_federation_out(ctx, buf, p - buf) != NGX_OK) {
        ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_xmpp_federation_release(s, ctx);
}


ngx_xmpp_federation_pair_t *
ngx_xmpp_federation_add_pair(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, ngx_str_t *remote, ngx_str_t *local)
{
    ngx_xmpp_federation_pair_t  *pair;

    pair = ngx_xmpp_federation_find_pair(ctx, remote, local);
    if (pair) {
        return pair;
    }

    pair = ngx_array_push(&ctx->pairs);
    if (pair == NULL) {
        return NULL;
    }

    ngx_memzero(pair, sizeof(ngx_xmpp_federation_pair_t));

    pair->remote.data = ngx_pnalloc(s->connection->pool,
                                    remote->len + local->len);
    if (pair->remote.data == NULL) {
        return NULL;
    }

    pair->remote.len = remote->len;
    ngx_strlow(pair->remote.data, remote->data, remote->len);

    pair->local.data = pair->remote.data + remote->len;
    pair->local.len = local->len;
    ngx_strlow(pair->local.data, local->data, local->len);

    return pair;
}


ngx_xmpp_federation_pair_t *
ngx_xmpp_federation_find_pair(ngx_xmpp_federation_ctx_t *ctx,
    ngx_str_t *remote, ngx_str_t *local)
{
    ngx_uint_t                   i;
    ngx_xmpp_federation_pair_t  *pair;

    pair = ctx->pairs.elts;

    for (i = 0; i < ctx->pairs.nelts; i++) {

        if (pair[i].remote.len != remote->len
            || pair[i].local.len != local->len)
        {
            continue;
        }

        /* the pair is in lowercase, and so are the stanzas, mostly */

        if ((ngx_xmpp_federation_same(pair[i].remote.data, remote->data,
                                      remote->len)
             || ngx_strncasecmp(pair[i].remote.data, remote->data,
                                remote->len)
                == 0)
            && (ngx_xmpp_federation_same(pair[i].local.data, local->data,
                                         local->len)
                || ngx_strncasecmp(pair[i].local.data, local->data,
                                   local->len)
                   == 0))
        {
            return &pair[i];
        }
    }

    return NULL;
}


/*
 * The authoritative role: <db:verify from='R' to='O' id='I'>key</...>
 * is answered from the key alone.
 */

ngx_int_t
ngx_xmpp_federation_db_verify(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    u_char                           *buf, *last;
    size_t                            len;
    ngx_int_t                         valid;
    ngx_xmpp_federation_parser_t     *p;
    ngx_xmpp_federation_main_conf_t  *fmcf;
    u_char                            key[64];

    p = ctx->parser;

    fmcf = ngx_stream_get_module_main_conf(s,
                                          ngx_stream_xmpp_federation_module);

    if (p->from.len == 0 || p->to.len == 0 || p->id.len == 0
        || p->from.len > 1023 || p->to.len > 1023 || p->id.len > 1023)
    {
        ngx_xmpp_federation_stream_error(s, ctx,
                                         ngx_xmpp_err_improper_addressing,
                                         "<db:verify/> without from, to "
                                         "or id");
        return NGX_DONE;
    }

    /* we vouch for partner domains (inbound) and local ones (outbound) */

    valid = (ngx_xmpp_federation_find_partner(fmcf, &p->to) != NULL
             || ngx_xmpp_federation_is_local(fmcf, &p->to))
            && p->text.len == 64
            && ngx_xmpp_federation_dialback_key(fmcf, &p->from, &p->to,
                                                &p->id, key) == NGX_OK
            && CRYPTO_memcmp(key, p->text.data, 64) == 0;

    ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                  "dialback: key for \"%V\" to \"%V\" is %s",
                  &p->to, &p->from, valid ? "valid" : "invalid");

    len = sizeof("<db:verify from='' to='' id='' type='invalid'/>")
          + 6 * (p->from.len + p->to.len + p->id.len);

    buf = ngx_alloc(len, s->connection->log);
    if (buf == NULL) {
        ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return NGX_ERROR;
    }

    last = ngx_cpymem(buf, "<db:verify from='", 17);
    last += ngx_xmpp_federation_escape(last, &p->to);
    last = ngx_cpymem(last, "' to='", 6);
    last += ngx_xmpp_federation_escape(last, &p->from);
    last = ngx_cpymem(last, "' id='", 6);
    last += ngx_xmpp_federation_escape(last, &p->id);
    last = ngx_sprintf(last, "' type='%s'/>", valid ? "valid" : "invalid");

    if (ngx_xmpp_federation_out(ctx, buf, last - buf) != NGX_OK) {
        ngx_free(buf);
        ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return NGX_ERROR;
    }

    ngx_free(buf);

    ngx_xmpp_federation_send(s);

    return ctx->quit ? NGX_DONE : NGX_OK;
}


static ngx_int_t
ngx_xmpp_federation_verify_start(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, ngx_uint_t pair)
{
    u_char                            *d;
    socklen_t                          socklen;
    ngx_str_t                         *name, host;
    ngx_connection_t                  *c;
    struct sockaddr                   *sockaddr;
    ngx_pool_cleanup_t                *cln;
    ngx_xmpp_federation_pair_t        *pr;
    ngx_xmpp_federation_peer_t        *peer;
    ngx_xmpp_federation_verify_t      *v;
    ngx_xmpp_federation_parser_t      *p;
    ngx_xmpp_federation_srv_conf_t    *fscf;

    c = s->connection;
    p = ctx->parser;
    pr = &((ngx_xmpp_federation_pair_t *) ctx->pairs.elts)[pair];

    fscf = ngx_stream_get_module_srv_conf(s,
                                          ngx_stream_xmpp_federation_module);

    peer = ngx_xmpp_federation_peer_create(c->log, fscf->dialback_timeout);
    if (peer == NULL) {
        return NGX_ERROR;
    }

    peer->nodelay = ngx_xmpp_federation_nodelay(s);

    v = ngx_pcalloc(peer->pool, sizeof(ngx_xmpp_federation_verify_t));
    cln = ngx_pool_cleanup_add(peer->pool, 0);
    d = ngx_pnalloc(peer->pool, p->text.len + ctx->stream_id.len);

    if (v == NULL || cln == NULL || d == NULL) {
        ngx_xmpp_federation_peer_close(peer);
        return NGX_ERROR;
    }

    cln->handler = ngx_xmpp_federation_verify_cleanup;
    cln->data = v;

    peer->log->action = "verifying dialback key";
    peer->handler = ngx_xmpp_federation_verify_handler;
    peer->data = v;

    /* our stream to the authoritative server: from L to D */

    peer->from = pr->local;
    peer->to = pr->remote;

    v->session = s;
    v->peer = peer;
    v->pair = pair;
    v->key.data = d;
    v->key.len = p->text.len;
    ngx_memcpy(d, p->text.data, p->text.len);
    v->id.data = d + p->text.len;
    v->id.len = ctx->stream_id.len;
    ngx_memcpy(v->id.data, ctx->stream_id.data, ctx->stream_id.len);

    v->timer.handler = ngx_xmpp_federation_verify_timeout;
    v->timer.data = v;
    v->timer.log = peer->log;
    ngx_add_timer(&v->timer, fscf->dialback_timeout);

    ngx_queue_insert_tail(&ctx->verifies, &v->queue);
    v->linked = 1;
    ctx->verifying++;

    if (fscf->mode == NGX_XMPP_FEDERATION_OUTBOUND) {

        /* the gateway is authoritative for the local domains */

        if (ngx_xmpp_federation_upstream_addr(s, 0, &sockaddr, &socklen,
                                              &name)
            != NGX_OK)
        {
            ngx_xmpp_federation_verify_done(v, "error",
                                            "remote-server-not-found");
            return NGX_OK;
        }

        ngx_xmpp_federation_verify_connect(v, sockaddr, socklen, name);
        return NGX_OK;
    }

    if (ctx->partner->server) {
        if (ctx->partner->server->naddrs) {
            ngx_xmpp_federation_verify_connect(v,
                                   ctx->partner->server->addrs[0].sockaddr,
                                   ctx->partner->server->addrs[0].socklen,
                                   &ctx->partner->server->addrs[0].name);
            return NGX_OK;
        }

        v->port = ctx->partner->server->port;
        host = ctx->partner->server->host;

        return ngx_xmpp_federation_verify_resolve(v, &host, 0);
    }

    /* RFC 6120 3.2: SRV first, then the domain itself on 5269 */

    v->port = 5269;

    return ngx_xmpp_federation_verify_resolve(v, &pr->remote, 1);
}


static ngx_int_t
ngx_xmpp_federation_verify_resolve(ngx_xmpp_federation_verify_t *v,
    ngx_str_t *name, ngx_uint_t srv)
{
    ngx_resolver_ctx_t          *rctx;
    ngx_stream_core_srv_conf_t  *cscf;

    cscf = ngx_stream_get_module_srv_conf(v->session, ngx_stream_core_module);

    rctx = ngx_resolve_start(cscf->resolver, NULL);

    if (rctx == NULL) {
        return NGX_ERROR;
    }

    if (rctx == NGX_NO_RESOLVER) {
        ngx_log_error(NGX_LOG_ERR, v->peer->log, 0,
                      "no resolver defined to resolve %V", name);
        ngx_xmpp_federation_verify_done(v, "error",
                                        "remote-server-not-found");
        return NGX_OK;
    }

    if (name != &v->host) {
        v->host.data = ngx_pnalloc(v->peer->pool, name->len);
        if (v->host.data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(v->host.data, name->data, name->len);
        v->host.len = name->len;
    }

    v->srv = srv;

    rctx->name = v->host;

    if (srv) {
        /* the resolver asks for "_xmpp-server._tcp.<name>" */
        ngx_str_set(&rctx->service, "_xmpp-server._tcp");
    }

    rctx->handler = ngx_xmpp_federation_verify_resolved;
    rctx->data = v;
    rctx->timeout = cscf->resolver_timeout;

    v->resolve = rctx;

    if (ngx_resolve_name(rctx) != NGX_OK) {
        v->resolve = NULL;
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_xmpp_federation_verify_resolved(ngx_resolver_ctx_t *rctx)
{
    socklen_t                      socklen;
    ngx_str_t                      name;
    struct sockaddr               *sockaddr;
    ngx_xmpp_federation_verify_t  *v;

    v = rctx->data;

    if (rctx->state || rctx->naddrs == 0) {

        ngx_log_error(NGX_LOG_INFO, v->peer->log, 0,
                      "%s%V could not be resolved (%i: %s)",
                      v->srv ? "_xmpp-server._tcp." : "", &v->host,
                      rctx->state, ngx_resolver_strerror(rctx->state));

        ngx_resolve_name_done(rctx);
        v->resolve = NULL;

        if (v->srv) {
            /* no SRV record: the domain itself */
            if (ngx_xmpp_federation_verify_resolve(v, &v->host, 0)
                != NGX_OK)
            {
                ngx_xmpp_federation_verify_done(v, "error",
                                                "internal-server-error");
            }

            return;
        }

        ngx_xmpp_federation_verify_done(v, "error",
                                        "remote-server-not-found");
        return;
    }

    socklen = rctx->addrs[0].socklen;
    sockaddr = ngx_palloc(v->peer->pool, socklen);
    name.data = ngx_pnalloc(v->peer->pool, NGX_SOCKADDR_STRLEN);

    if (sockaddr == NULL || name.data == NULL) {
        ngx_resolve_name_done(rctx);
        v->resolve = NULL;
        ngx_xmpp_federation_verify_done(v, "error", "internal-server-error");
        return;
    }

    ngx_memcpy(sockaddr, rctx->addrs[0].sockaddr, socklen);

    if (!v->srv) {
        ngx_inet_set_port(sockaddr, v->port);
    }

    name.len = ngx_sock_ntop(sockaddr, socklen, name.data,
                             NGX_SOCKADDR_STRLEN, 1);
    v->addr = name;

    ngx_resolve_name_done(rctx);
    v->resolve = NULL;

    ngx_xmpp_federation_verify_connect(v, sockaddr, socklen, &v->addr);
}


static void
ngx_xmpp_federation_verify_connect(ngx_xmpp_federation_verify_t *v,
    struct sockaddr *sockaddr, socklen_t socklen, ngx_str_t *name)
{
    ngx_log_debug1(NGX_LOG_DEBUG_STREAM, v->peer->log, 0,
                   "xmpp dialback: connecting to %V", name);

    if (ngx_xmpp_federation_peer_connect(v->peer, sockaddr, socklen, name)
        != NGX_OK)
    {
        ngx_xmpp_federation_verify_done(v, "error",
                                        "remote-connection-failed");
    }
}


static void
ngx_xmpp_federation_verify_handler(ngx_xmpp_federation_peer_t *peer,
    ngx_int_t rc)
{
    u_char                        *last;
    ngx_xmpp_federation_pair_t    *pair;
    ngx_xmpp_federation_verify_t  *v;
    ngx_xmpp_federation_ctx_t     *ctx;
    ngx_xmpp_federation_parser_t  *p;
    u_char                         buf[NGX_XMPP_FEDERATION_LINE * 2];

    v = peer->data;

    ctx = ngx_stream_get_module_ctx(v->session,
                                    ngx_stream_xmpp_federation_module);
    pair = &((ngx_xmpp_federation_pair_t *) ctx->pairs.elts)[v->pair];

    switch (rc) {

    case NGX_OK:

        /* the authoritative server's features: ask */

        if (v->key.len > NGX_XMPP_FEDERATION_LINE) {
            ngx_xmpp_federation_verify_done(v, "invalid", NULL);
            return;
        }

        last = ngx_snprintf(buf, sizeof(buf),
                            "<db:verify from='%V' to='%V' id='%V'>",
                            &pair->local, &pair->remote, &v->id);
        last += ngx_xmpp_federation_escape(last, &v->key);
        last = ngx_cpymem(last, "</db:verify>", 12);

        (void) ngx_xmpp_federation_peer_write(peer, buf, last - buf);
        return;

    case NGX_DONE:
        return;

    case NGX_ERROR:
        ngx_log_error(NGX_LOG_INFO, peer->log, 0,
                      "dialback verification of \"%V\" failed: %s",
                      &pair->remote, peer->reason);

        ngx_xmpp_federation_verify_done(v, "error",
                                        peer->connected
                                        ? "remote-server-timeout"
                                        : "remote-connection-failed");
        return;
    }

    /* NGX_AGAIN: an element */

    p = peer->parser;

    if (!ngx_xmpp_federation_is(&p->ns, NGX_XMPP_FEDERATION_NS_DIALBACK)
        || !ngx_xmpp_federation_is(&p->name, "verify")
        || p->id.len != v->id.len
        || ngx_strncmp(p->id.data, v->id.data, v->id.len) != 0)
    {
        return;
    }

    if (ngx_xmpp_federation_is(&p->type, "valid")) {
        ngx_xmpp_federation_verify_done(v, "valid", NULL);

    } else if (ngx_xmpp_federation_is(&p->type, "invalid")) {
        ngx_xmpp_federation_verify_done(v, "invalid", NULL);

    } else {
        ngx_xmpp_federation_verify_done(v, "error", "remote-server-not-found");
    }
}


static void
ngx_xmpp_federation_verify_timeout(ngx_event_t *ev)
{
    ngx_xmpp_federation_verify_t  *v;

    v = ev->data;

    ngx_log_error(NGX_LOG_INFO, v->peer->log, 0,
                  "dialback verification timed out");

    ngx_xmpp_federation_verify_done(v, "error", "remote-server-timeout");
}


/*
 * The verdict of the authoritative server.  Inbound, a valid key leads to
 * the hand-off and the partner hears "valid" only when the gateway has
 * accepted the domain; on the internal listener it is answered at once.
 */

static void
ngx_xmpp_federation_verify_done(ngx_xmpp_federation_verify_t *v,
    const char *type, const char *condition)
{
    ngx_int_t                        rc;
    ngx_stream_session_t            *s;
    ngx_xmpp_federation_ctx_t       *ctx;
    ngx_xmpp_federation_pair_t      *pair;
    ngx_xmpp_federation_srv_conf_t  *fscf;

    s = v->session;

    ctx = ngx_stream_get_module_ctx(s, ngx_stream_xmpp_federation_module);
    fscf = ngx_stream_get_module_srv_conf(s,
                                          ngx_stream_xmpp_federation_module);

    pair = &((ngx_xmpp_federation_pair_t *) ctx->pairs.elts)[v->pair];

    ngx_xmpp_federation_verify_close(v);

    if (ctx->quit) {
        return;
    }

    if (type[0] == 'v' && fscf->mode == NGX_XMPP_FEDERATION_INBOUND) {
        rc = ngx_xmpp_federation_vouch(s, ctx, pair);

        if (rc == NGX_OK) {
            return;
        }

        if (rc == NGX_ERROR) {
            ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
            return;
        }

        type = "error";
        condition = "remote-connection-failed";
    }

    ngx_xmpp_federation_pair_done(s, ctx, pair, type, condition);
    ngx_xmpp_federation_send(s);
}


static void
ngx_xmpp_federation_verify_close(ngx_xmpp_federation_verify_t *v)
{
    ngx_stream_session_t       *s;
    ngx_xmpp_federation_ctx_t  *ctx;

    s = v->session;

    ctx = ngx_stream_get_module_ctx(s, ngx_stream_xmpp_federation_module);

    ctx->verifying--;

    ngx_xmpp_federation_verify_cleanup(v);
    ngx_xmpp_federation_peer_close(v->peer);
}


static void
ngx_xmpp_federation_verify_cleanup(void *data)
{
    ngx_xmpp_federation_verify_t  *v = data;

    if (v->timer.timer_set) {
        ngx_del_timer(&v->timer);
    }

    if (v->resolve) {
        ngx_resolve_name_done(v->resolve);
        v->resolve = NULL;
    }

    if (v->linked) {
        ngx_queue_remove(&v->queue);
        v->linked = 0;
    }
}


/* the session ends: verifications under way end with it */

void
ngx_xmpp_federation_verify_cancel_all(ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_queue_t                   *q;
    ngx_xmpp_federation_verify_t  *v;

    while (!ngx_queue_empty(&ctx->verifies)) {
        q = ngx_queue_head(&ctx->verifies);
        v = ngx_queue_data(q, ngx_xmpp_federation_verify_t, queue);

        ngx_xmpp_federation_verify_cleanup(v);
        ngx_xmpp_federation_peer_close(v->peer);
    }
}
