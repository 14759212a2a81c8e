
/*
 * Copyright (C) ngx_xmpp_federation_module authors
 */


/*
 * TLS: the context of a server from the xmpp_federation_certificate
 * family of directives, and STARTTLS (RFC 6120 section 5) as nginx's mail
 * module does it: <proceed/>, forget everything read before, handshake on
 * the next read, then a new stream.
 *
 * The context asks for a client certificate but never fails a handshake
 * over it: the certificate is judged later, against the trusted
 * certificates, CRLs and depth of this server, when SASL EXTERNAL is
 * considered (ngx_xmpp_federation_sasl.c).
 */


#include "ngx_xmpp_federation.h"


static int ngx_xmpp_federation_verify_any(int ok, X509_STORE_CTX *store);
static int ngx_xmpp_federation_cert_verify(X509_STORE_CTX *xs, void *arg);
static ngx_int_t ngx_xmpp_federation_chain_key(X509_STORE_CTX *xs,
    u_char *key);
static ngx_xmpp_federation_verdict_t *ngx_xmpp_federation_verdict_set(
    ngx_xmpp_federation_srv_conf_t *conf, u_char *key, ngx_uint_t *ways);
static void ngx_xmpp_federation_verdict_keep(
    ngx_xmpp_federation_srv_conf_t *conf, X509_STORE_CTX *xs, u_char *key,
    ngx_log_t *log);
static ngx_int_t ngx_xmpp_federation_asn1_time(const ASN1_TIME *asn1,
    time_t now, time_t *t);
static void ngx_xmpp_federation_handshake_start(ngx_event_t *ev);
static void ngx_xmpp_federation_handshake_handler(ngx_connection_t *c);


/* SHA-256, fetched once (chain keys) */
static EVP_MD  *ngx_xmpp_federation_sha256;


char *
ngx_xmpp_federation_ssl_merge(ngx_conf_t *cf,
    ngx_xmpp_federation_srv_conf_t *prev, ngx_xmpp_federation_srv_conf_t *conf)
{
    ngx_str_t            curve, sess;
    ngx_pool_cleanup_t  *cln;

    ngx_conf_merge_ptr_value(conf->certificates, prev->certificates, NULL);
    ngx_conf_merge_ptr_value(conf->certificate_keys, prev->certificate_keys,
                             NULL);
    ngx_conf_merge_str_value(conf->trusted_certificate,
                             prev->trusted_certificate, "");
    ngx_conf_merge_str_value(conf->crl, prev->crl, "");
    ngx_conf_merge_bitmask_value(conf->protocols, prev->protocols,
                                 (NGX_CONF_BITMASK_SET
                                  |NGX_SSL_TLSv1_2|NGX_SSL_TLSv1_3));
    ngx_conf_merge_str_value(conf->ciphers, prev->ciphers,
                             "HIGH:!aNULL:!MD5");
    ngx_conf_merge_value(conf->verify_depth, prev->verify_depth, 3);
    ngx_conf_merge_uint_value(conf->verify_cache, prev->verify_cache, 0);
    ngx_conf_merge_sec_value(conf->verify_cache_valid,
                             prev->verify_cache_valid, 300);

    if (conf->mode == NGX_XMPP_FEDERATION_OFF) {
        return NGX_CONF_OK;
    }

    if (conf->certificates == NULL && conf->trusted_certificate.len == 0) {
        return NGX_CONF_OK;
    }

    if (conf->certificates) {
        if (conf->certificate_keys == NULL
            || conf->certificate_keys->nelts < conf->certificates->nelts)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "no \"xmpp_federation_certificate_key\" is "
                               "defined for a certificate");
            return NGX_CONF_ERROR;
        }
    }

    conf->ssl.log = cf->log;

    if (ngx_ssl_create(&conf->ssl, conf->protocols, NULL) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        ngx_ssl_cleanup_ctx(&conf->ssl);
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_ssl_cleanup_ctx;
    cln->data = &conf->ssl;

    if (conf->certificates
        && ngx_ssl_certificates(cf, &conf->ssl, conf->certificates,
                                conf->certificate_keys, NULL)
           != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (ngx_ssl_ciphers(cf, &conf->ssl, &conf->ciphers, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    ngx_str_set(&curve, "auto");

    if (ngx_ssl_ecdh_curve(cf, &conf->ssl, &curve) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    /*
     * Each stream is a full handshake, as a server-to-server link is long
     * lived: no session tickets to issue (with TLSv1.3 each would re-encode
     * the client certificate).
     */

    SSL_CTX_set_options(conf->ssl.ctx, SSL_OP_NO_TICKET);
#if (OPENSSL_VERSION_NUMBER >= 0x10101000L)
    SSL_CTX_set_num_tickets(conf->ssl.ctx, 0);
#endif

    if (conf->trusted_certificate.len
        && ngx_ssl_trusted_certificate(cf, &conf->ssl,
                                       &conf->trusted_certificate,
                                       conf->verify_depth)
           != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (ngx_ssl_crl(cf, &conf->ssl, &conf->crl) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    /*
     * Ask for a certificate, judge it later; after the trusted
     * certificates, which set nginx's own callback
     */

    SSL_CTX_set_verify(conf->ssl.ctx, SSL_VERIFY_PEER,
                       ngx_xmpp_federation_verify_any);

    if (conf->verify_cache && conf->trusted_certificate.len) {
        conf->verdicts = ngx_pcalloc(cf->pool, conf->verify_cache
                                     * sizeof(ngx_xmpp_federation_verdict_t));
        if (conf->verdicts == NULL) {
            return NGX_CONF_ERROR;
        }

        SSL_CTX_set_cert_verify_callback(conf->ssl.ctx,
                                         ngx_xmpp_federation_cert_verify,
                                         conf);
    }

    ngx_str_set(&sess, "xmpp_federation");

    if (ngx_ssl_session_cache(&conf->ssl, &sess, conf->certificates,
                              NGX_SSL_NO_SCACHE, NULL, 300)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static int
ngx_xmpp_federation_verify_any(int ok, X509_STORE_CTX *store)
{
    SSL                        *ssl;
    ngx_connection_t           *c;
    ngx_stream_session_t       *s;
    ngx_xmpp_federation_ctx_t  *ctx;

    /*
     * The verdict, the first error of the chain if any, is read later in
     * ngx_xmpp_federation_sasl_usable(): a stream without a usable
     * certificate may still authenticate by dialback.
     */

    if (ok) {
        return 1;
    }

    ssl = X509_STORE_CTX_get_ex_data(store,
                                     SSL_get_ex_data_X509_STORE_CTX_idx());
    c = ngx_ssl_get_connection(ssl);
    s = c->data;

    ctx = ngx_stream_get_module_ctx(s, ngx_stream_xmpp_federation_module);

    if (ctx && ctx->cert_error == X509_V_OK) {
        ctx->cert_error = X509_STORE_CTX_get_error(store);
    }

    return 1;
}


/*
 * Our handshake's chain verification, through the cache of verdicts
 * (xmpp_federation_verify_cache)
 */

static int
ngx_xmpp_federation_cert_verify(X509_STORE_CTX *xs, void *arg)
{
    SSL                        *ssl;
    ngx_connection_t           *c;
    ngx_stream_session_t       *s;
    ngx_xmpp_federation_ctx_t  *ctx;

    ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
    c = ngx_ssl_get_connection(ssl);
    s = c->data;

    ctx = ngx_stream_get_module_ctx(s, ngx_stream_xmpp_federation_module);

    return ngx_xmpp_federation_verify_chain(arg, ctx, xs, c->log);
}


/*
 * X509_verify_cert() of a chain, or its verdict kept from an earlier
 * stream.  The verdict of a chain depends on its certificates, this
 * server's store (trusted certificates, CRLs, depth: fixed for a worker's
 * life) and the time: only a chain that verified without any error is
 * kept, keyed by its certificates as the peer sent them, for as long as
 * every certificate of the verified chain and every CRL is still valid,
 * and no longer than "valid".  A handshake still proves the peer holds
 * the certificate's key (CertificateVerify); only the chain's signatures,
 * validity and revocation are not checked again.
 */

int
ngx_xmpp_federation_verify_chain(ngx_xmpp_federation_srv_conf_t *conf,
    ngx_xmpp_federation_ctx_t *ctx, X509_STORE_CTX *xs, ngx_log_t *log)
{
    int                             rc;
    time_t                          now;
    ngx_uint_t                      i, ways;
    ngx_xmpp_federation_verdict_t  *v, *set;
    u_char                          key[32];

    if (conf->verdicts == NULL || ctx == NULL
        || ngx_xmpp_federation_chain_key(xs, key) != NGX_OK)
    {
        return X509_verify_cert(xs);
    }

    now = ngx_time();
    set = ngx_xmpp_federation_verdict_set(conf, key, &ways);

    for (i = 0; i < ways; i++) {
        v = &set[i];

        if (v->until == 0 || ngx_memcmp(v->key, key, sizeof(key)) != 0) {
            continue;
        }

        if (now < v->from || now >= v->until) {
            /* out of date: verified again, and kept again if it passes */
            v->until = 0;
            break;
        }

        v->used = ++conf->verdict_stamp;
        ctx->cert_cached = 1;

        ngx_log_debug0(NGX_LOG_DEBUG_STREAM, log, 0,
                       "xmpp tls: certificate chain verified earlier");

        X509_STORE_CTX_set_error(xs, X509_V_OK);

        return 1;
    }

    rc = X509_verify_cert(xs);

    /* our handshake's callback lets errors through: it keeps the first */

    if (rc == 1 && X509_STORE_CTX_get_error(xs) == X509_V_OK
        && ctx->cert_error == X509_V_OK)
    {
        ngx_xmpp_federation_verdict_keep(conf, xs, key, log);
    }

    return rc;
}


/*
 * The entries a key may take: a few (least recently used out), found by
 * the key's first bytes, which are a digest's; not one long search per
 * handshake in a large cache
 */

static ngx_xmpp_federation_verdict_t *
ngx_xmpp_federation_verdict_set(ngx_xmpp_federation_srv_conf_t *conf,
    u_char *key, ngx_uint_t *ways)
{
    uint64_t  h;

    *ways = ngx_min(conf->verify_cache, NGX_XMPP_FEDERATION_VERDICT_WAYS);

    ngx_memcpy(&h, key, sizeof(h));

    return &conf->verdicts[(h % (conf->verify_cache / *ways)) * *ways];
}


/*
 * The key of a chain: SHA-256 over the DER of the certificate to verify,
 * then of all the peer sent besides (DER delimits itself; the peer's
 * chain, as OpenSSL gives it, repeats the first: once is enough).  The
 * digest is fetched once: an implicit fetch for every use costs more
 * than the hashing.
 */

static ngx_int_t
ngx_xmpp_federation_chain_key(X509_STORE_CTX *xs, u_char *key)
{
    int              i, n, len, ok;
    X509            *x, *cert;
    u_char          *der;
    ngx_int_t        rc;
    EVP_MD_CTX      *md;
    unsigned int     size;
    STACK_OF(X509)  *sent;

    if (ngx_xmpp_federation_sha256 == NULL) {
#if (OPENSSL_VERSION_NUMBER >= 0x30000000L)
        ngx_xmpp_federation_sha256 = EVP_MD_fetch(NULL, "SHA2-256", NULL);
#else
        ngx_xmpp_federation_sha256 = (EVP_MD *) EVP_sha256();
#endif
        if (ngx_xmpp_federation_sha256 == NULL) {
            return NGX_ERROR;
        }
    }

    md = EVP_MD_CTX_new();
    if (md == NULL) {
        return NGX_ERROR;
    }

    rc = NGX_ERROR;

    if (EVP_DigestInit_ex(md, ngx_xmpp_federation_sha256, NULL) != 1) {
        goto done;
    }

    cert = X509_STORE_CTX_get0_cert(xs);
    sent = X509_STORE_CTX_get0_untrusted(xs);
    n = sent ? sk_X509_num(sent) : 0;

    for (i = -1; i < n; i++) {
        x = (i < 0) ? cert : sk_X509_value(sent, i);

        if (x == NULL) {
            goto done;
        }

        if (i == 0 && x == cert) {
            /* the peer's chain begins with the same certificate */
            continue;
        }

        der = NULL;
        len = i2d_X509(x, &der);

        if (len <= 0) {
            goto done;
        }

        ok = EVP_DigestUpdate(md, der, len);
        OPENSSL_free(der);

        if (ok != 1) {
            goto done;
        }
    }

    if (EVP_DigestFinal_ex(md, key, &size) == 1 && size == 32) {
        rc = NGX_OK;
    }

done:

    EVP_MD_CTX_free(md);

    return rc;
}


static void
ngx_xmpp_federation_verdict_keep(ngx_xmpp_federation_srv_conf_t *conf,
    X509_STORE_CTX *xs, u_char *key, ngx_log_t *log)
{
    int                             i, n;
    X509                           *x;
    time_t                          now, from, until, t;
    X509_CRL                       *crl;
    ngx_uint_t                      k, ways;
    X509_OBJECT                    *obj;
    const ASN1_TIME                *next;
    STACK_OF(X509)                 *chain;
    STACK_OF(X509_OBJECT)          *objs;
    ngx_xmpp_federation_verdict_t  *v, *lru, *set;

    now = ngx_time();
    from = 0;
    until = now + conf->verify_cache_valid;

    chain = X509_STORE_CTX_get0_chain(xs);
    n = chain ? sk_X509_num(chain) : 0;

    if (n == 0) {
        return;
    }

    for (i = 0; i < n; i++) {
        x = sk_X509_value(chain, i);

        if (ngx_xmpp_federation_asn1_time(X509_get0_notBefore(x), now, &t)
            != NGX_OK)
        {
            return;
        }

        from = ngx_max(from, t);

        if (ngx_xmpp_federation_asn1_time(X509_get0_notAfter(x), now, &t)
            != NGX_OK)
        {
            return;
        }

        until = ngx_min(until, t);
    }

    /* a CRL out of date fails a chain: the verdict ends before */

    objs = X509_STORE_get0_objects(X509_STORE_CTX_get0_store(xs));
    n = objs ? sk_X509_OBJECT_num(objs) : 0;

    for (i = 0; i < n; i++) {
        obj = sk_X509_OBJECT_value(objs, i);

        if (X509_OBJECT_get_type(obj) != X509_LU_CRL) {
            continue;
        }

        crl = X509_OBJECT_get0_X509_CRL(obj);
        next = crl ? X509_CRL_get0_nextUpdate(crl) : NULL;

        if (next == NULL) {
            continue;
        }

        if (ngx_xmpp_federation_asn1_time(next, now, &t) != NGX_OK) {
            return;
        }

        until = ngx_min(until, t);
    }

    if (now < from || now >= until) {
        return;
    }

    /* a free entry of the key's, or the least recently used */

    set = ngx_xmpp_federation_verdict_set(conf, key, &ways);
    lru = &set[0];

    for (k = 0; k < ways; k++) {
        v = &set[k];

        if (v->until == 0 || now >= v->until) {
            lru = v;
            break;
        }

        if (v->used < lru->used) {
            lru = v;
        }
    }

    ngx_memcpy(lru->key, key, sizeof(lru->key));
    lru->from = from;
    lru->until = until;
    lru->used = ++conf->verdict_stamp;

    ngx_log_debug1(NGX_LOG_DEBUG_STREAM, log, 0,
                   "xmpp tls: certificate chain verdict kept for %T s",
                   until - now);
}


static ngx_int_t
ngx_xmpp_federation_asn1_time(const ASN1_TIME *asn1, time_t now, time_t *t)
{
    int  days, secs;

    if (asn1 == NULL || ASN1_TIME_diff(&days, &secs, NULL, asn1) != 1) {
        return NGX_ERROR;
    }

    *t = now + (time_t) days * 86400 + secs;

    return NGX_OK;
}


/*
 * <starttls/>: offered per the partner's "tls", only outside TLS and only
 * with a certificate of our own.
 */

ngx_int_t
ngx_xmpp_federation_starttls(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_connection_t                *c;
    ngx_xmpp_federation_srv_conf_t  *fscf;

    c = s->connection;

    fscf = ngx_stream_get_module_srv_conf(s,
                                          ngx_stream_xmpp_federation_module);

    if (ctx->tls || fscf->mode != NGX_XMPP_FEDERATION_INBOUND
        || !ngx_xmpp_federation_tls_offered(s, ctx)
        || fscf->certificates == NULL)
    {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "XMPP STARTTLS refused: %s",
                      ctx->tls ? "TLS is already on"
                      : fscf->mode != NGX_XMPP_FEDERATION_INBOUND
                        ? "not offered on the internal listener"
                      : fscf->certificates == NULL
                        ? "no xmpp_federation_certificate"
                        : "not offered to this partner");

        ctx->quit = 1;
        ctx->status = NGX_STREAM_FORBIDDEN;

        /* RFC 6120 5.4.2.2: <failure/>, then the stream closes */

        if (ngx_xmpp_federation_out(ctx, (u_char *)
                "<failure xmlns='" NGX_XMPP_FEDERATION_NS_TLS "'/>"
                "</stream:stream>",
                sizeof("<failure xmlns='" NGX_XMPP_FEDERATION_NS_TLS "'/>"
                       "</stream:stream>") - 1)
            != NGX_OK)
        {
            ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
            return NGX_ERROR;
        }

        ngx_xmpp_federation_send(s);
        return NGX_DONE;
    }

    if (ngx_xmpp_federation_out(ctx, (u_char *)
            "<proceed xmlns='" NGX_XMPP_FEDERATION_NS_TLS "'/>",
            sizeof("<proceed xmlns='" NGX_XMPP_FEDERATION_NS_TLS "'/>") - 1)
        != NGX_OK)
    {
        ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return NGX_ERROR;
    }

    /* the send starts the handshake once <proceed/> is out */

    ctx->starttls = 1;
    ngx_xmpp_federation_send(s);

    return NGX_DONE;
}


void
ngx_xmpp_federation_tls_handshake(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx)
{
    ngx_connection_t                *c;
    ngx_xmpp_federation_srv_conf_t  *fscf;

    c = s->connection;
    ctx->starttls = 0;

    fscf = ngx_stream_get_module_srv_conf(s,
                                          ngx_stream_xmpp_federation_module);

    /* nothing read before TLS counts (RFC 6120 5.4.3.3) */

    ngx_xmpp_federation_restart(s, ctx);

    if (ngx_ssl_create_connection(&fscf->ssl, c, 0) != NGX_OK) {
        ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return;
    }

    c->log->action = "SSL handshaking";

    if (!c->read->ready) {
        /*
         * The ClientHello is a round trip away: the handshake starts
         * with its read event, not with a read that cannot find it
         */

        c->read->handler = ngx_xmpp_federation_handshake_start;
        c->write->handler = ngx_xmpp_federation_handshake_start;

        if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
            ngx_xmpp_federation_finalize(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        }

        return;
    }

    ngx_xmpp_federation_handshake_start(c->read);
}


static void
ngx_xmpp_federation_handshake_start(ngx_event_t *ev)
{
    ngx_int_t          rc;
    ngx_connection_t  *c;

    c = ev->data;

    if (ev->timedout) {
        /* no ClientHello in time */
        ngx_xmpp_federation_handshake_handler(c);
        return;
    }

    if (ev->write) {
        /* nothing to write before the peer's ClientHello */
        return;
    }

    rc = ngx_ssl_handshake(c);

    if (rc == NGX_AGAIN) {
        c->ssl->handler = ngx_xmpp_federation_handshake_handler;
        return;
    }

    ngx_xmpp_federation_handshake_handler(c);
}


static void
ngx_xmpp_federation_handshake_handler(ngx_connection_t *c)
{
    ngx_stream_session_t       *s;
    ngx_xmpp_federation_ctx_t  *ctx;

    s = c->data;

    ctx = ngx_stream_get_module_ctx(s, ngx_stream_xmpp_federation_module);

    if (!c->ssl->handshaked) {
        /* RFC 6120 5.4.3.2: the TCP connection ends */
        ngx_log_error(NGX_LOG_INFO, c->log, 0, "XMPP STARTTLS handshake %s",
                      c->read->timedout ? "timed out" : "failed");
        ngx_xmpp_federation_finalize(s, NGX_STREAM_BAD_REQUEST);
        return;
    }

    ctx->tls = NGX_XMPP_FEDERATION_TLS_STARTTLS;
    c->log->action = "reading XMPP stream header";

    ngx_log_error(NGX_LOG_INFO, c->log, 0, "XMPP STARTTLS done: %s, %s",
                  SSL_get_version(c->ssl->connection),
                  SSL_get_cipher_name(c->ssl->connection));

    ngx_xmpp_federation_resume(s, ctx);
}
