
/*
 * Copyright (C) ngx_xmpp_federation_module authors
 */


/*
 * The stream header sniffer of the preread phase, the checks of the header
 * shared with the content handler, and the variables.
 */


#include "ngx_xmpp_federation.h"


static ngx_int_t ngx_xmpp_federation_version_ok(ngx_str_t *version);
static ngx_int_t ngx_xmpp_federation_copy(ngx_stream_session_t *s,
    ngx_str_t *dst, ngx_str_t *src);

static ngx_int_t ngx_xmpp_federation_variable_str(ngx_stream_session_t *s,
    ngx_stream_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_xmpp_federation_variable_partner(
    ngx_stream_session_t *s, ngx_stream_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_xmpp_federation_variable_partner_type(
    ngx_stream_session_t *s, ngx_stream_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_xmpp_federation_variable_error(ngx_stream_session_t *s,
    ngx_stream_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_xmpp_federation_variable_tls(ngx_stream_session_t *s,
    ngx_stream_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_xmpp_federation_variable_domains(
    ngx_stream_session_t *s, ngx_stream_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_xmpp_federation_variable_stanzas(
    ngx_stream_session_t *s, ngx_stream_variable_value_t *v, uintptr_t data);
static void ngx_xmpp_federation_variable_set(ngx_stream_variable_value_t *v,
    ngx_str_t *value);


static ngx_stream_variable_t  ngx_xmpp_federation_vars[] = {

    { ngx_string("xmpp_from"), NULL, ngx_xmpp_federation_variable_str,
      offsetof(ngx_xmpp_federation_ctx_t, from),
      NGX_STREAM_VAR_NOCACHEABLE, 0 },

    { ngx_string("xmpp_to"), NULL, ngx_xmpp_federation_variable_str,
      offsetof(ngx_xmpp_federation_ctx_t, to),
      NGX_STREAM_VAR_NOCACHEABLE, 0 },

    { ngx_string("xmpp_partner"), NULL,
      ngx_xmpp_federation_variable_partner, 0,
      NGX_STREAM_VAR_NOCACHEABLE, 0 },

    { ngx_string("xmpp_partner_type"), NULL,
      ngx_xmpp_federation_variable_partner_type, 0,
      NGX_STREAM_VAR_NOCACHEABLE, 0 },

    { ngx_string("xmpp_stream_error"), NULL,
      ngx_xmpp_federation_variable_error, 0,
      NGX_STREAM_VAR_NOCACHEABLE, 0 },

    { ngx_string("xmpp_tls"), NULL,
      ngx_xmpp_federation_variable_tls, 0,
      NGX_STREAM_VAR_NOCACHEABLE, 0 },

    { ngx_string("xmpp_auth"), NULL,
      ngx_xmpp_federation_variable_tls, 1,
      NGX_STREAM_VAR_NOCACHEABLE, 0 },

    { ngx_string("xmpp_domains"), NULL,
      ngx_xmpp_federation_variable_domains, 0,
      NGX_STREAM_VAR_NOCACHEABLE, 0 },

    { ngx_string("xmpp_stanzas"), NULL,
      ngx_xmpp_federation_variable_stanzas, 0,
      NGX_STREAM_VAR_NOCACHEABLE, 0 },

      ngx_stream_null_variable
};


static ngx_str_t  ngx_xmpp_federation_tls_names[] = {
    ngx_null_string,
    ngx_string("starttls"),
    ngx_string("direct")
};


static ngx_str_t  ngx_xmpp_federation_auth_names[] = {
    ngx_null_string,
    ngx_string("external"),
    ngx_string("dialback")
};


static ngx_str_t  ngx_xmpp_federation_type_names[] = {
    ngx_string("federated"),
    ngx_string("public_verified"),
    ngx_string("public_unverified")
};


ngx_int_t
ngx_xmpp_federation_add_variables(ngx_conf_t *cf)
{
    ngx_stream_variable_t  *var, *v;

    for (v = ngx_xmpp_federation_vars; v->name.len; v++) {
        var = ngx_stream_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


ngx_xmpp_federation_ctx_t *
ngx_xmpp_federation_get_ctx(ngx_stream_session_t *s)
{
    ngx_xmpp_federation_ctx_t  *ctx;

    ctx = ngx_stream_get_module_ctx(s, ngx_stream_xmpp_federation_module);

    if (ctx) {
        return ctx;
    }

    ctx = ngx_pcalloc(s->connection->pool, sizeof(ngx_xmpp_federation_ctx_t));
    if (ctx == NULL) {
        return NULL;
    }

    ctx->session = s;

    ngx_stream_set_ctx(s, ctx, ngx_stream_xmpp_federation_module);

    return ctx;
}


/*
 * The preread sniffer never writes to the peer: it fills the variables,
 * or $xmpp_stream_error with what the edge would have answered, and lets
 * the session go on to whatever the configuration does with them.
 */

ngx_int_t
ngx_xmpp_federation_preread_handler(ngx_stream_session_t *s)
{
    u_char                          *pos;
    size_t                           len;
    ngx_int_t                        rc;
    const char                      *reason;
    ngx_connection_t                *c;
    ngx_xmpp_federation_ctx_t       *ctx;
    ngx_xmpp_federation_parser_t    *p;
    ngx_xmpp_federation_srv_conf_t  *fscf;

    fscf = ngx_stream_get_module_srv_conf(s,
                                          ngx_stream_xmpp_federation_module);

    if (!fscf->preread) {
        return NGX_DECLINED;
    }

    c = s->connection;

    if (c->type != SOCK_STREAM) {
        return NGX_DECLINED;
    }

    if (c->buffer == NULL) {
        return NGX_AGAIN;
    }

    ctx = ngx_xmpp_federation_get_ctx(s);
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    if (ctx->preread_done) {
        return NGX_DECLINED;
    }

    c->log->action = "prereading XMPP stream header";

    if (ctx->parser == NULL) {
        ctx->parser = ngx_xmpp_federation_parser_create(c->pool, c->log,
                                                        fscf->max_header_size,
                                                        fscf->max_stanza_size);
        if (ctx->parser == NULL) {
            return NGX_ERROR;
        }
    }

    p = ctx->parser;

    /*
     * The buffer holds everything read so far (or, with 1.25.5's peek,
     * everything peeked again from the start): parse only what is new.
     */

    pos = c->buffer->pos + ctx->prefed;
    len = c->buffer->last - pos;

    if (len == 0 || (ssize_t) len < 0) {
        return NGX_AGAIN;
    }

    ctx->prefed += len;

    rc = ngx_xmpp_federation_parse(p, pos, len);

    if (rc == NGX_AGAIN) {
        return NGX_AGAIN;
    }

    if (rc == NGX_OK && p->event == ngx_xmpp_ev_header) {
        ctx->error = ngx_xmpp_federation_check_header(s, ctx, p, &reason);

    } else {
        ctx->error = (rc == NGX_OK) ? ngx_xmpp_err_not_well_formed
                                    : p->error;
        reason = p->reason;
    }

    if (ctx->error != ngx_xmpp_err_none) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "XMPP stream header refused: %V: %s",
                      ngx_xmpp_federation_error_name(ctx->error),
                      reason ? reason : "");

    } else {
        ngx_log_debug3(NGX_LOG_DEBUG_STREAM, c->log, 0,
                       "xmpp preread: from \"%V\" to \"%V\" partner \"%V\"",
                       &ctx->from, &ctx->to,
                       ctx->partner ? &ctx->partner->domain : &ctx->from);
    }

    ctx->preread_done = 1;

    /* the content handler, if it is ours, parses the stream again */

    ctx->prefed = 0;

    if (ngx_xmpp_federation_parser_reset(p) != NGX_OK) {
        return NGX_ERROR;
    }

    return NGX_DECLINED;
}


/*
 * The checks of RFC 6120 section 4.9.3 on the stream header, and the
 * partner policy.  Fills the session's from, to, local domain and partner.
 */

ngx_xmpp_federation_error_e
ngx_xmpp_federation_check_header(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, ngx_xmpp_federation_parser_t *p,
    const char **reason)
{
    ngx_xmpp_federation_srv_conf_t   *fscf;
    ngx_xmpp_federation_main_conf_t  *fmcf;

    fmcf = ngx_stream_get_module_main_conf(s,
                                          ngx_stream_xmpp_federation_module);

    if (ngx_xmpp_federation_copy(s, &ctx->from, &p->from) != NGX_OK
        || ngx_xmpp_federation_copy(s, &ctx->to, &p->to) != NGX_OK)
    {
        *reason = "out of memory";
        return ngx_xmpp_err_internal_server_error;
    }

    if (p->ns.len != sizeof(NGX_XMPP_FEDERATION_NS_STREAMS) - 1
        || ngx_strncmp(p->ns.data, NGX_XMPP_FEDERATION_NS_STREAMS,
                       p->ns.len) != 0
        || p->name.len != 6
        || ngx_strncmp(p->name.data, "stream", 6) != 0)
    {
        *reason = "the root element is not <stream> of "
                  "\"" NGX_XMPP_FEDERATION_NS_STREAMS "\"";
        return ngx_xmpp_err_invalid_namespace;
    }

    if (p->prefix.len != 6 || ngx_strncmp(p->prefix.data, "stream", 6) != 0)
    {
        *reason = "the stream namespace prefix is not \"stream\"";
        return ngx_xmpp_err_bad_namespace_prefix;
    }

    if (!p->default_ns_ok) {
        *reason = "the content namespace is not "
                  "\"" NGX_XMPP_FEDERATION_NS_SERVER "\"";
        return ngx_xmpp_err_invalid_namespace;
    }

    if (ngx_xmpp_federation_version_ok(&p->version) != NGX_OK) {
        *reason = "the stream version is missing or not 1.x";
        return ngx_xmpp_err_unsupported_version;
    }

    if (ctx->to.len == 0) {
        *reason = "the stream header has no \"to\"";
        return ngx_xmpp_err_host_unknown;
    }

    fscf = ngx_stream_get_module_srv_conf(s,
                                          ngx_stream_xmpp_federation_module);

    if (fscf->mode == NGX_XMPP_FEDERATION_OUTBOUND) {

        /* the gateway, from a local domain, to a partner domain */

        ctx->partner = ngx_xmpp_federation_find_partner(fmcf, &ctx->to);

        if (ctx->partner == NULL) {
            *reason = "\"to\" is not a partner domain";
            return ngx_xmpp_err_host_unknown;
        }

        ctx->local = ctx->to;

        if (ctx->from.len == 0 || !ngx_xmpp_federation_is_local(fmcf,
                                                                &ctx->from))
        {
            *reason = "\"from\" is not a local domain";
            return ngx_xmpp_err_policy_violation;
        }

        *reason = NULL;
        return ngx_xmpp_err_none;
    }

    if (!ngx_xmpp_federation_is_local(fmcf, &ctx->to)) {
        *reason = "\"to\" is not a local domain";
        return ngx_xmpp_err_host_unknown;
    }

    ctx->local = ctx->to;

    if (ctx->from.len == 0) {

        /*
         * RFC 6120 4.7.1: "from" SHOULD be sent; legacy dialback peers
         * do not.  Each db:result then names the partner.
         */

        if (!fmcf->any_dialback) {
            *reason = "the stream header has no \"from\" and no partner "
                      "allows dialback";
            return ngx_xmpp_err_policy_violation;
        }

        *reason = NULL;
        return ngx_xmpp_err_none;
    }

    ctx->partner = ngx_xmpp_federation_find_partner(fmcf, &ctx->from);

    if (ctx->partner == NULL) {
        *reason = "\"from\" is not a partner domain";
        return ngx_xmpp_err_policy_violation;
    }

    *reason = NULL;
    return ngx_xmpp_err_none;
}


/* RFC 6120 4.7.5: "1.0", or a higher minor version answered with 1.0 */

static ngx_int_t
ngx_xmpp_federation_version_ok(ngx_str_t *version)
{
    ngx_uint_t  i;

    if (version->len < 3
        || version->data[0] != '1'
        || version->data[1] != '.')
    {
        return NGX_ERROR;
    }

    for (i = 2; i < version->len; i++) {
        if (version->data[i] < '0' || version->data[i] > '9') {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_xmpp_federation_copy(ngx_stream_session_t *s, ngx_str_t *dst,
    ngx_str_t *src)
{
    if (src->len == 0) {
        ngx_str_null(dst);
        return NGX_OK;
    }

    dst->data = ngx_pnalloc(s->connection->pool, src->len);
    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(dst->data, src->data, src->len);
    dst->len = src->len;

    return NGX_OK;
}


static ngx_int_t
ngx_xmpp_federation_variable_str(ngx_stream_session_t *s,
    ngx_stream_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                  *str;
    ngx_xmpp_federation_ctx_t  *ctx;

    ctx = ngx_stream_get_module_ctx(s, ngx_stream_xmpp_federation_module);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    str = (ngx_str_t *) ((char *) ctx + data);

    ngx_xmpp_federation_variable_set(v, str);

    return NGX_OK;
}


static ngx_int_t
ngx_xmpp_federation_variable_partner(ngx_stream_session_t *s,
    ngx_stream_variable_value_t *v, uintptr_t data)
{
    ngx_xmpp_federation_ctx_t  *ctx;

    ctx = ngx_stream_get_module_ctx(s, ngx_stream_xmpp_federation_module);

    if (ctx == NULL || ctx->partner == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    ngx_xmpp_federation_variable_set(v, &ctx->partner->domain);

    return NGX_OK;
}


static ngx_int_t
ngx_xmpp_federation_variable_partner_type(ngx_stream_session_t *s,
    ngx_stream_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                  *name;
    ngx_xmpp_federation_ctx_t  *ctx;

    ctx = ngx_stream_get_module_ctx(s, ngx_stream_xmpp_federation_module);

    if (ctx == NULL || ctx->partner == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    name = &ngx_xmpp_federation_type_names[ctx->partner->type];

    ngx_xmpp_federation_variable_set(v, name);

    return NGX_OK;
}


static ngx_int_t
ngx_xmpp_federation_variable_error(ngx_stream_session_t *s,
    ngx_stream_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                  *name;
    ngx_xmpp_federation_ctx_t  *ctx;

    ctx = ngx_stream_get_module_ctx(s, ngx_stream_xmpp_federation_module);

    if (ctx == NULL || ctx->error == ngx_xmpp_err_none) {
        v->not_found = 1;
        return NGX_OK;
    }

    name = ngx_xmpp_federation_error_name(ctx->error);

    ngx_xmpp_federation_variable_set(v, name);

    return NGX_OK;
}


static void
ngx_xmpp_federation_variable_set(ngx_stream_variable_value_t *v,
    ngx_str_t *value)
{
    v->len = value->len;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = value->data;
}


/* $xmpp_tls (data 0) and $xmpp_auth (data 1) */

static ngx_int_t
ngx_xmpp_federation_variable_tls(ngx_stream_session_t *s,
    ngx_stream_variable_value_t *v, uintptr_t data)
{
    ngx_xmpp_federation_ctx_t  *ctx;

    ctx = ngx_stream_get_module_ctx(s, ngx_stream_xmpp_federation_module);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    if (data) {
        ngx_xmpp_federation_variable_set(v,
                                    &ngx_xmpp_federation_auth_names[ctx->auth]);

    } else {
        ngx_xmpp_federation_variable_set(v,
                                    &ngx_xmpp_federation_tls_names[ctx->tls]);
    }

    return NGX_OK;
}


/* the domains the stream authenticated, "remote>local" separated by " " */

static ngx_int_t
ngx_xmpp_federation_variable_domains(ngx_stream_session_t *s,
    ngx_stream_variable_value_t *v, uintptr_t data)
{
    u_char                      *p;
    size_t                       len;
    ngx_str_t                    value;
    ngx_uint_t                   i;
    ngx_xmpp_federation_ctx_t   *ctx;
    ngx_xmpp_federation_pair_t  *pair;

    ctx = ngx_stream_get_module_ctx(s, ngx_stream_xmpp_federation_module);

    if (ctx == NULL || ctx->pairs.nelts == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    pair = ctx->pairs.elts;
    len = 0;

    for (i = 0; i < ctx->pairs.nelts; i++) {
        if (pair[i].state == ngx_xmpp_pair_valid) {
            len += pair[i].remote.len + 1;
        }
    }

    if (len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(s->connection->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    value.data = p;

    for (i = 0; i < ctx->pairs.nelts; i++) {
        if (pair[i].state == ngx_xmpp_pair_valid) {
            p = ngx_cpymem(p, pair[i].remote.data, pair[i].remote.len);
            *p++ = ' ';
        }
    }

    value.len = p - value.data - 1;

    ngx_xmpp_federation_variable_set(v, &value);

    return NGX_OK;
}


static ngx_int_t
ngx_xmpp_federation_variable_stanzas(ngx_stream_session_t *s,
    ngx_stream_variable_value_t *v, uintptr_t data)
{
    u_char                     *p;
    ngx_str_t                   value;
    ngx_xmpp_federation_ctx_t  *ctx;

    ctx = ngx_stream_get_module_ctx(s, ngx_stream_xmpp_federation_module);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(s->connection->pool, NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    value.data = p;
    value.len = ngx_sprintf(p, "%ui", ctx->stanzas) - p;

    ngx_xmpp_federation_variable_set(v, &value);

    return NGX_OK;
}
