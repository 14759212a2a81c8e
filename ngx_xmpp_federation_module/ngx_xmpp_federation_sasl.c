
/*
 * Copyright (C) ngx_xmpp_federation_module authors
 */


/*
 * SASL EXTERNAL for servers (XEP-0178): the peer's certificate must chain
 * to a trusted certificate of this server and name the stream's "from"
 * domain as a DNS-ID (a wildcard only as the whole left-most label), an
 * SRV-ID "_xmpp-server.D" or an XmppAddr; never the CN (RFC 6125, 9525).
 */


#include "ngx_xmpp_federation.h"
#include <openssl/x509v3.h>


#define NGX_XMPP_FEDERATION_OID_SRV   "1.3.6.1.5.5.7.8.7"
#define NGX_XMPP_FEDERATION_OID_XMPP  "1.3.6.1.5.5.7.8.5"


static ngx_int_t ngx_xmpp_federation_chain(ngx_connection_t *c,
    ngx_xmpp_federation_srv_conf_t *fscf, ngx_xmpp_federation_ctx_t *ctx,
    X509 *cert, const char **reason);
static ngx_int_t ngx_xmpp_federation_cert_names(X509 *cert,
    ngx_str_t *domain);
static ngx_int_t ngx_xmpp_federation_other_name(GENERAL_NAME *gn,
    ngx_str_t *domain);
static ngx_int_t ngx_xmpp_federation_sasl_failure(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, const char *condition,
    const char *reason);


/* NGX_OK: the certificate authenticates the stream's "from" */

ngx_int_t
ngx_xmpp_federation_sasl_usable(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, const char **reason)
{
    X509                            *cert;
    ngx_int_t                        rc;
    ngx_str_t                        domain;
    ngx_connection_t                *c;
    ngx_xmpp_federation_srv_conf_t  *fscf;

    c = s->connection;

    fscf = ngx_stream_get_module_srv_conf(s,
                                          ngx_stream_xmpp_federation_module);

    if (c->ssl == NULL || ctx->from.len == 0) {
        *reason = "no TLS or no \"from\"";
        return NGX_DECLINED;
    }

    if (fscf->ssl.ctx == NULL || fscf->trusted_certificate.len == 0) {
        *reason = "no xmpp_federation_trusted_certificate";
        return NGX_DECLINED;
    }

    cert = SSL_get_peer_certificate(c->ssl->connection);

    if (cert == NULL) {
        *reason = "no client certificate";
        return NGX_DECLINED;
    }

    rc = ngx_xmpp_federation_chain(c, fscf, ctx, cert, reason);

    if (rc != NGX_OK) {
        X509_free(cert);
        return rc;
    }

    domain = ctx->from;

    if (domain.data[domain.len - 1] == '.') {
        domain.len--;
    }

    rc = ngx_xmpp_federation_cert_names(cert, &domain);

    X509_free(cert);

    if (rc != NGX_OK) {
        *reason = "the certificate does not name the domain";
        return NGX_DECLINED;
    }

    *reason = NULL;
    return NGX_OK;
}


/*
 * The chain is verified against this server's store (trusted
 * certificates, CRLs, depth).  After our STARTTLS the handshake did just
 * that: its callback lets every certificate through, but keeps the first
 * error found.  After a direct TLS handshake (the stock ssl_* context)
 * the chain is verified again, here.
 */

static ngx_int_t
ngx_xmpp_federation_chain(ngx_connection_t *c,
    ngx_xmpp_federation_srv_conf_t *fscf, ngx_xmpp_federation_ctx_t *ctx,
    X509 *cert, const char **reason)
{
    long             err;
    X509_STORE_CTX  *xs;

    if (SSL_get_SSL_CTX(c->ssl->connection) == fscf->ssl.ctx) {
        err = ctx->cert_error;
        goto done;
    }

    xs = X509_STORE_CTX_new();
    if (xs == NULL) {
        *reason = "X509_STORE_CTX_new() failed";
        return NGX_ERROR;
    }

    if (X509_STORE_CTX_init(xs, SSL_CTX_get_cert_store(fscf->ssl.ctx), cert,
                            SSL_get_peer_cert_chain(c->ssl->connection))
        != 1)
    {
        X509_STORE_CTX_free(xs);
        *reason = "X509_STORE_CTX_init() failed";
        return NGX_ERROR;
    }

    X509_STORE_CTX_set_depth(xs, fscf->verify_depth);

    err = (ngx_xmpp_federation_verify_chain(fscf, ctx, xs, c->log) == 1)
          ? X509_V_OK : X509_STORE_CTX_get_error(xs);

    X509_STORE_CTX_free(xs);

done:

    if (err != X509_V_OK) {
        *reason = X509_verify_cert_error_string(err);
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_xmpp_federation_cert_names(X509 *cert, ngx_str_t *domain)
{
    int                     i, n;
    ngx_int_t               rc;
    GENERAL_NAME           *gn;
    GENERAL_NAMES          *names;

    /* DNS-ID; the subject's CN is never looked at */

    if (X509_check_host(cert, (char *) domain->data, domain->len,
                        X509_CHECK_FLAG_NEVER_CHECK_SUBJECT
                        |X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS,
                        NULL)
        == 1)
    {
        return NGX_OK;
    }

    /* SRV-ID and XmppAddr */

    names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    if (names == NULL) {
        return NGX_DECLINED;
    }

    rc = NGX_DECLINED;
    n = sk_GENERAL_NAME_num(names);

    for (i = 0; i < n; i++) {
        gn = sk_GENERAL_NAME_value(names, i);

        if (gn->type == GEN_OTHERNAME
            && ngx_xmpp_federation_other_name(gn, domain) == NGX_OK)
        {
            rc = NGX_OK;
            break;
        }
    }

    GENERAL_NAMES_free(names);

    return rc;
}


static ngx_int_t
ngx_xmpp_federation_other_name(GENERAL_NAME *gn, ngx_str_t *domain)
{
    int          type;
    char         oid[32];
    size_t       len, skip;
    u_char      *data;
    ASN1_TYPE   *value;

    if (OBJ_obj2txt(oid, sizeof(oid), gn->d.otherName->type_id, 1) <= 0) {
        return NGX_DECLINED;
    }

    value = gn->d.otherName->value;
    type = value->type;

    if (ngx_strcmp(oid, NGX_XMPP_FEDERATION_OID_SRV) == 0
        && type == V_ASN1_IA5STRING)
    {
        skip = sizeof("_xmpp-server.") - 1;

    } else if (ngx_strcmp(oid, NGX_XMPP_FEDERATION_OID_XMPP) == 0
               && type == V_ASN1_UTF8STRING)
    {
        skip = 0;

    } else {
        return NGX_DECLINED;
    }

    data = (u_char *) ASN1_STRING_get0_data(value->value.asn1_string);
    len = ASN1_STRING_length(value->value.asn1_string);

    if (skip) {
        if (len <= skip
            || ngx_strncasecmp(data, (u_char *) "_xmpp-server.", skip) != 0)
        {
            return NGX_DECLINED;
        }

        data += skip;
        len -= skip;
    }

    if (len == domain->len
        && ngx_strncasecmp(data, domain->data, len) == 0)
    {
        return NGX_OK;
    }

    return NGX_DECLINED;
}


/*
 * <auth mechanism='EXTERNAL'>authzid</auth>: an empty authzid ("=") or
 * the "from" domain itself; then <success/> and a new stream, and the
 * domain goes to the gateway as a dialback-authenticated one would.
 */

ngx_int_t
ngx_xmpp_federation_auth(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    u_char                         *mech;
    ngx_str_t                       authzid, text, mechanism, from;
    ngx_uint_t                      i;
    ngx_connection_t               *c;
    ngx_xmpp_federation_pair_t     *pair;
    ngx_xmpp_federation_parser_t   *p;
    u_char                          buf[1024];

    c = s->connection;
    p = ctx->parser;

    /* the mechanism is an attribute the parser does not keep: see text */

    mechanism = p->mechanism;
    mech = mechanism.data;

    if (!ctx->sasl_offered) {
        return ngx_xmpp_federation_sasl_failure(s, ctx, "not-authorized",
                                                "SASL EXTERNAL was not "
                                                "offered");
    }

    if (mechanism.len != 8 || ngx_strncmp(mech, "EXTERNAL", 8) != 0) {
        return ngx_xmpp_federation_sasl_failure(s, ctx, "invalid-mechanism",
                                                "not EXTERNAL");
    }

    text = p->text;

    for (i = 0; i < text.len; i++) {
        if (text.data[i] == ' ' || text.data[i] == '\t'
            || text.data[i] == '\r' || text.data[i] == '\n')
        {
            return ngx_xmpp_federation_sasl_failure(s, ctx,
                                                    "incorrect-encoding",
                                                    "white space in the "
                                                    "authzid");
        }
    }

    ngx_str_null(&authzid);

    if (text.len && !(text.len == 1 && text.data[0] == '=')) {

        if (ngx_base64_decoded_length(text.len) > sizeof(buf)) {
            return ngx_xmpp_federation_sasl_failure(s, ctx, "invalid-authzid",
                                                    "authzid too long");
        }

        authzid.data = buf;

        if (ngx_decode_base64(&authzid, &text) != NGX_OK) {
            return ngx_xmpp_federation_sasl_failure(s, ctx,
                                                    "incorrect-encoding",
                                                    "authzid is not base64");
        }
    }

    from = ctx->from;

    if (from.len && from.data[from.len - 1] == '.') {
        from.len--;
    }

    if (authzid.len && authzid.data[authzid.len - 1] == '.') {
        authzid.len--;
    }

    if (authzid.len
        && (authzid.len != from.len
            || ngx_strncasecmp(authzid.data, from.data, from.len) != 0))
    {
        return ngx_xmpp_federation_sasl_failure(s, ctx, "invalid-authzid",
                                                "authzid is not the "
                                                "stream's \"from\"");
    }

    /* the domain is authenticated; the gateway comes next */

    pair = ngx_xmpp_federation_add_pair(s, ctx, &ctx->from, &ctx->to);
    if (pair == NULL) {
        ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return NGX_ERROR;
    }

    pair->sasl = 1;
    ctx->auth = NGX_XMPP_FEDERATION_AUTH_EXTERNAL;
    ctx->sasl_offered = 0;

    ngx_log_error(NGX_LOG_INFO, c->log, 0,
                  "SASL EXTERNAL: \"%V\" authenticated for \"%V\"%s",
                  &pair->remote, &pair->local,
                  ctx->cert_cached ? " (certificate chain verified earlier)"
                                   : "");

    if (ngx_xmpp_federation_out(ctx, (u_char *)
            "<success xmlns='" NGX_XMPP_FEDERATION_NS_SASL "'/>",
            sizeof("<success xmlns='" NGX_XMPP_FEDERATION_NS_SASL "'/>") - 1)
        != NGX_OK)
    {
        ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return NGX_ERROR;
    }

    /* a new stream: RFC 6120 6.4.6 */

    ngx_xmpp_federation_restart(s, ctx);

    switch (ngx_xmpp_federation_vouch(s, ctx, pair)) {

    case NGX_OK:
        break;

    case NGX_ERROR:
        ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return NGX_ERROR;

    default:
        pair->state = ngx_xmpp_pair_failed;
        ngx_xmpp_federation_stream_error(s, ctx,
                                     ngx_xmpp_err_remote_connection_failed,
                                     "the gateway cannot be reached");
        return NGX_DONE;
    }

    ngx_xmpp_federation_send(s);

    /* the rest of this read belongs to the old stream */
    return NGX_DECLINED;
}


static ngx_int_t
ngx_xmpp_federation_sasl_failure(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, const char *condition,
    const char *reason)
{
    u_char  *p;
    u_char   buf[256];

    ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                  "SASL EXTERNAL refused for \"%V\": %s", &ctx->from,
                  reason);

    p = ngx_snprintf(buf, sizeof(buf),
                     "<failure xmlns='" NGX_XMPP_FEDERATION_NS_SASL "'>"
                     "<%s/></failure>", condition);

    if (ngx_xmpp_federation_out(ctx, buf, p - buf) != NGX_OK) {
        ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return NGX_ERROR;
    }

    ngx_xmpp_federation_send(s);

    /* RFC 6120 6.4.5: the peer may try again, or dialback */
    return ctx->quit ? NGX_DONE : NGX_OK;
}
