
/*
 * Copyright (C) ngx_xmpp_federation_module authors
 */


/*
 * Directives: local domains, partner blocks with Lync's defaults, the
 * negotiation matrix check, the server roles.
 */


#include "ngx_xmpp_federation.h"
#include <openssl/rand.h>
#include <openssl/sha.h>


#define NGX_XMPP_FEDERATION_DOMAIN_MAX  1023


static void *ngx_xmpp_federation_create_main_conf(ngx_conf_t *cf);
static char *ngx_xmpp_federation_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_xmpp_federation_create_srv_conf(ngx_conf_t *cf);
static char *ngx_xmpp_federation_merge_srv_conf(ngx_conf_t *cf, void *parent,
    void *child);
static ngx_int_t ngx_xmpp_federation_init(ngx_conf_t *cf);
static ngx_int_t ngx_xmpp_federation_build_hash(ngx_conf_t *cf,
    ngx_hash_t *hash, ngx_hash_keys_arrays_t *ha, const char *name);

static char *ngx_xmpp_federation_local_domains(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_xmpp_federation_partner(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_xmpp_federation_check_matrix(ngx_conf_t *cf,
    ngx_xmpp_federation_partner_t *partner);
static char *ngx_xmpp_federation_additional_domains(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_xmpp_federation_server(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_xmpp_federation(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_xmpp_federation_verify_cache(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_xmpp_federation_pass(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

static ngx_int_t ngx_xmpp_federation_domain(ngx_conf_t *cf, ngx_str_t *value,
    const char *directive);
static char *ngx_xmpp_federation_add_domain(ngx_conf_t *cf,
    ngx_xmpp_federation_main_conf_t *fmcf, ngx_str_t *domain,
    ngx_xmpp_federation_partner_t *partner);
static ngx_xmpp_federation_partner_t *ngx_xmpp_federation_domain_owner(
    ngx_xmpp_federation_main_conf_t *fmcf, ngx_str_t *domain);
static ngx_int_t ngx_xmpp_federation_lowcase(ngx_str_t *domain,
    u_char *buf);


static ngx_conf_enum_t  ngx_xmpp_federation_types[] = {
    { ngx_string("federated"), NGX_XMPP_FEDERATION_FEDERATED },
    { ngx_string("public_verified"), NGX_XMPP_FEDERATION_PUBLIC_VERIFIED },
    { ngx_string("public_unverified"),
      NGX_XMPP_FEDERATION_PUBLIC_UNVERIFIED },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_xmpp_federation_negotiation[] = {
    { ngx_string("required"), NGX_XMPP_FEDERATION_REQUIRED },
    { ngx_string("optional"), NGX_XMPP_FEDERATION_OPTIONAL },
    { ngx_string("not_supported"), NGX_XMPP_FEDERATION_NOT_SUPPORTED },
    { ngx_null_string, 0 }
};


static ngx_conf_bitmask_t  ngx_xmpp_federation_protocols[] = {
    { ngx_string("TLSv1"), NGX_SSL_TLSv1 },
    { ngx_string("TLSv1.1"), NGX_SSL_TLSv1_1 },
    { ngx_string("TLSv1.2"), NGX_SSL_TLSv1_2 },
    { ngx_string("TLSv1.3"), NGX_SSL_TLSv1_3 },
    { ngx_null_string, 0 }
};


static ngx_str_t  ngx_xmpp_federation_negotiation_names[] = {
    ngx_string("required"),
    ngx_string("optional"),
    ngx_string("not_supported")
};


static ngx_command_t  ngx_xmpp_federation_commands[] = {

    { ngx_string("xmpp_federation_local_domains"),
      NGX_STREAM_MAIN_CONF|NGX_CONF_1MORE,
      ngx_xmpp_federation_local_domains,
      NGX_STREAM_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("xmpp_federation_partner"),
      NGX_STREAM_MAIN_CONF|NGX_CONF_BLOCK|NGX_CONF_TAKE1,
      ngx_xmpp_federation_partner,
      NGX_STREAM_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("xmpp_federation_dialback_secret"),
      NGX_STREAM_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_STREAM_MAIN_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_main_conf_t, dialback_secret),
      NULL },

    { ngx_string("xmpp_federation"),
      NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_xmpp_federation,
      NGX_STREAM_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("xmpp_federation_pass"),
      NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_xmpp_federation_pass,
      NGX_STREAM_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("xmpp_federation_pass_keepalive"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_srv_conf_t, keepalive),
      NULL },

    { ngx_string("xmpp_federation_pass_keepalive_timeout"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_srv_conf_t, keepalive_timeout),
      NULL },

    { ngx_string("xmpp_federation_preread"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_srv_conf_t, preread),
      NULL },

    { ngx_string("xmpp_federation_timeout"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_srv_conf_t, timeout),
      NULL },

    { ngx_string("xmpp_federation_idle_timeout"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_srv_conf_t, idle_timeout),
      NULL },

    { ngx_string("xmpp_federation_dialback_timeout"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_srv_conf_t, dialback_timeout),
      NULL },

    { ngx_string("xmpp_federation_max_header_size"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_srv_conf_t, max_header_size),
      NULL },

    { ngx_string("xmpp_federation_buffer_size"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_srv_conf_t, buffer_size),
      NULL },

    { ngx_string("xmpp_federation_hold_size"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_srv_conf_t, hold_size),
      NULL },

    { ngx_string("xmpp_federation_max_stanza_size"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_srv_conf_t, max_stanza_size),
      NULL },

    { ngx_string("xmpp_federation_certificate"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_array_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_srv_conf_t, certificates),
      NULL },

    { ngx_string("xmpp_federation_certificate_key"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_array_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_srv_conf_t, certificate_keys),
      NULL },

    { ngx_string("xmpp_federation_trusted_certificate"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_srv_conf_t, trusted_certificate),
      NULL },

    { ngx_string("xmpp_federation_crl"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_srv_conf_t, crl),
      NULL },

    { ngx_string("xmpp_federation_protocols"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_1MORE,
      ngx_conf_set_bitmask_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_srv_conf_t, protocols),
      &ngx_xmpp_federation_protocols },

    { ngx_string("xmpp_federation_ciphers"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_srv_conf_t, ciphers),
      NULL },

    { ngx_string("xmpp_federation_verify_depth"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_srv_conf_t, verify_depth),
      NULL },

    { ngx_string("xmpp_federation_verify_cache"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE12,
      ngx_xmpp_federation_verify_cache,
      NGX_STREAM_SRV_CONF_OFFSET,
      0,
      NULL },

    /* inside xmpp_federation_partner { } */

    { ngx_string("description"),
      NGX_XMPP_FEDERATION_PARTNER_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_partner_t, description),
      NULL },

    { ngx_string("additional_domains"),
      NGX_XMPP_FEDERATION_PARTNER_CONF|NGX_CONF_1MORE,
      ngx_xmpp_federation_additional_domains,
      NGX_STREAM_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("type"),
      NGX_XMPP_FEDERATION_PARTNER_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_partner_t, type),
      &ngx_xmpp_federation_types },

    { ngx_string("tls"),
      NGX_XMPP_FEDERATION_PARTNER_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_partner_t, tls),
      &ngx_xmpp_federation_negotiation },

    { ngx_string("sasl"),
      NGX_XMPP_FEDERATION_PARTNER_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_partner_t, sasl),
      &ngx_xmpp_federation_negotiation },

    { ngx_string("dialback"),
      NGX_XMPP_FEDERATION_PARTNER_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_partner_t, dialback),
      NULL },

    { ngx_string("connection_limit"),
      NGX_XMPP_FEDERATION_PARTNER_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_partner_t, connection_limit),
      NULL },

    { ngx_string("keepalive"),
      NGX_XMPP_FEDERATION_PARTNER_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_xmpp_federation_partner_t, keepalive),
      NULL },

    { ngx_string("server"),
      NGX_XMPP_FEDERATION_PARTNER_CONF|NGX_CONF_TAKE1,
      ngx_xmpp_federation_server,
      NGX_STREAM_SRV_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_stream_module_t  ngx_xmpp_federation_module_ctx = {
    ngx_xmpp_federation_add_variables,     /* preconfiguration */
    ngx_xmpp_federation_init,              /* postconfiguration */

    ngx_xmpp_federation_create_main_conf,  /* create main configuration */
    ngx_xmpp_federation_init_main_conf,    /* init main configuration */

    ngx_xmpp_federation_create_srv_conf,   /* create server configuration */
    ngx_xmpp_federation_merge_srv_conf     /* merge server configuration */
};


ngx_module_t  ngx_stream_xmpp_federation_module = {
    NGX_MODULE_V1,
    &ngx_xmpp_federation_module_ctx,       /* module context */
    ngx_xmpp_federation_commands,          /* module directives */
    NGX_STREAM_MODULE,                     /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_str_t  ngx_xmpp_federation_errors[] = {
    ngx_null_string,
    ngx_string("bad-format"),
    ngx_string("bad-namespace-prefix"),
    ngx_string("conflict"),
    ngx_string("connection-timeout"),
    ngx_string("host-gone"),
    ngx_string("host-unknown"),
    ngx_string("improper-addressing"),
    ngx_string("internal-server-error"),
    ngx_string("invalid-from"),
    ngx_string("invalid-namespace"),
    ngx_string("invalid-xml"),
    ngx_string("not-authorized"),
    ngx_string("not-well-formed"),
    ngx_string("policy-violation"),
    ngx_string("remote-connection-failed"),
    ngx_string("reset"),
    ngx_string("resource-constraint"),
    ngx_string("restricted-xml"),
    ngx_string("see-other-host"),
    ngx_string("system-shutdown"),
    ngx_string("undefined-condition"),
    ngx_string("unsupported-encoding"),
    ngx_string("unsupported-feature"),
    ngx_string("unsupported-stanza-type"),
    ngx_string("unsupported-version")
};


ngx_str_t *
ngx_xmpp_federation_error_name(ngx_xmpp_federation_error_e err)
{
    return &ngx_xmpp_federation_errors[err];
}


/*
 * Random bytes for stream ids and expat's hash salts, from a pool that
 * RAND_bytes() fills a few hundred bytes at a time: one call into the
 * DRBG for dozens of streams.  The pool is the process's own: one filled
 * before a fork (by the master) is not used after it.  Bytes handed out
 * are wiped from it.
 */

static u_char     ngx_xmpp_federation_rand_pool[256];
static size_t     ngx_xmpp_federation_rand_left;
static ngx_pid_t  ngx_xmpp_federation_rand_pid;


ngx_int_t
ngx_xmpp_federation_random(u_char *buf, size_t len)
{
    u_char  *p;

    if (len > sizeof(ngx_xmpp_federation_rand_pool)) {
        return (RAND_bytes(buf, len) == 1) ? NGX_OK : NGX_ERROR;
    }

    if (ngx_xmpp_federation_rand_pid != ngx_pid
        || ngx_xmpp_federation_rand_left < len)
    {
        if (RAND_bytes(ngx_xmpp_federation_rand_pool,
                       sizeof(ngx_xmpp_federation_rand_pool))
            != 1)
        {
            ngx_xmpp_federation_rand_left = 0;
            return NGX_ERROR;
        }

        ngx_xmpp_federation_rand_left = sizeof(ngx_xmpp_federation_rand_pool);
        ngx_xmpp_federation_rand_pid = ngx_pid;
    }

    p = ngx_xmpp_federation_rand_pool + sizeof(ngx_xmpp_federation_rand_pool)
        - ngx_xmpp_federation_rand_left;

    ngx_memcpy(buf, p, len);
    ngx_explicit_memzero(p, len);

    ngx_xmpp_federation_rand_left -= len;

    return NGX_OK;
}


static void *
ngx_xmpp_federation_create_main_conf(ngx_conf_t *cf)
{
    ngx_xmpp_federation_main_conf_t  *fmcf;

    fmcf = ngx_pcalloc(cf->pool, sizeof(ngx_xmpp_federation_main_conf_t));
    if (fmcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     fmcf->local_hash = { NULL, 0 };
     *     fmcf->partner_hash = { NULL, 0 };
     *     fmcf->dialback_secret = { 0, NULL };
     *     fmcf->any_dialback = 0;
     */

    if (ngx_array_init(&fmcf->local_domains, cf->pool, 4, sizeof(ngx_str_t))
        != NGX_OK)
    {
        return NULL;
    }

    if (ngx_array_init(&fmcf->partners, cf->pool, 8,
                       sizeof(ngx_xmpp_federation_partner_t *))
        != NGX_OK)
    {
        return NULL;
    }

    return fmcf;
}


static char *
ngx_xmpp_federation_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_xmpp_federation_main_conf_t *fmcf = conf;

    u_char                          *p;
    ngx_str_t                       *domain;
    ngx_uint_t                       i, j;
    ngx_hash_keys_arrays_t           ha;
    ngx_xmpp_federation_partner_t  **partner;
    u_char                           secret[32];

    /* the domains were checked for duplicates as they were read */

    ngx_memzero(&ha, sizeof(ngx_hash_keys_arrays_t));

    ha.pool = cf->pool;
    ha.temp_pool = cf->temp_pool;

    if (ngx_hash_keys_array_init(&ha, NGX_HASH_SMALL) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    domain = fmcf->local_domains.elts;

    for (i = 0; i < fmcf->local_domains.nelts; i++) {
        if (ngx_hash_add_key(&ha, &domain[i], &domain[i],
                             NGX_HASH_READONLY_KEY)
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }
    }

    if (ngx_xmpp_federation_build_hash(cf, &fmcf->local_hash, &ha,
                                       "xmpp_federation_local_hash")
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (ngx_hash_keys_array_init(&ha, NGX_HASH_SMALL) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    partner = fmcf->partners.elts;

    for (i = 0; i < fmcf->partners.nelts; i++) {

        if (partner[i]->dialback) {
            fmcf->any_dialback = 1;

            if (partner[i]->tls != NGX_XMPP_FEDERATION_NOT_SUPPORTED) {
                fmcf->any_dialback_tls = 1;
            }
        }

        if (ngx_hash_add_key(&ha, &partner[i]->domain, partner[i],
                             NGX_HASH_READONLY_KEY)
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }

        if (partner[i]->additional == NULL) {
            continue;
        }

        domain = partner[i]->additional->elts;

        for (j = 0; j < partner[i]->additional->nelts; j++) {
            if (ngx_hash_add_key(&ha, &domain[j], partner[i],
                                 NGX_HASH_READONLY_KEY)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }
        }
    }

    if (ngx_xmpp_federation_build_hash(cf, &fmcf->partner_hash, &ha,
                                       "xmpp_federation_partner_hash")
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (fmcf->dialback_secret.data == NULL) {

        /* keys then are good for this configuration of this edge only */

        if (RAND_bytes(secret, sizeof(secret)) != 1) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0, "RAND_bytes() failed");
            return NGX_CONF_ERROR;
        }

        p = ngx_pnalloc(cf->pool, 2 * sizeof(secret));
        if (p == NULL) {
            return NGX_CONF_ERROR;
        }

        fmcf->dialback_secret.len = ngx_hex_dump(p, secret, sizeof(secret))
                                    - p;
        fmcf->dialback_secret.data = p;
    }

    /* XEP-0185: the HMAC key is SHA256(secret) */

    if (SHA256(fmcf->dialback_secret.data, fmcf->dialback_secret.len,
               fmcf->dialback_key)
        == NULL)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_xmpp_federation_build_hash(ngx_conf_t *cf, ngx_hash_t *hash,
    ngx_hash_keys_arrays_t *ha, const char *name)
{
    ngx_hash_init_t  hinit;

    if (ha->keys.nelts == 0) {
        return NGX_OK;
    }

    hinit.hash = hash;
    hinit.key = ngx_hash_key;
    hinit.max_size = 4096;
    hinit.bucket_size = ngx_align(64, ngx_cacheline_size);
    hinit.name = (char *) name;
    hinit.pool = cf->pool;
    hinit.temp_pool = NULL;

    return ngx_hash_init(&hinit, ha->keys.elts, ha->keys.nelts);
}


static void *
ngx_xmpp_federation_create_srv_conf(ngx_conf_t *cf)
{
    ngx_xmpp_federation_srv_conf_t  *fscf;

    fscf = ngx_pcalloc(cf->pool, sizeof(ngx_xmpp_federation_srv_conf_t));
    if (fscf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     fscf->mode = NGX_XMPP_FEDERATION_OFF;
     *     fscf->pass = NULL;
     */

    fscf->preread = NGX_CONF_UNSET;
    fscf->timeout = NGX_CONF_UNSET_MSEC;
    fscf->idle_timeout = NGX_CONF_UNSET_MSEC;
    fscf->dialback_timeout = NGX_CONF_UNSET_MSEC;
    fscf->max_dialback = NGX_CONF_UNSET_UINT;
    fscf->max_header_size = NGX_CONF_UNSET_SIZE;
    fscf->max_stanza_size = NGX_CONF_UNSET_SIZE;
    fscf->hold_size = NGX_CONF_UNSET_SIZE;
    fscf->buffer_size = NGX_CONF_UNSET_SIZE;
    fscf->keepalive = NGX_CONF_UNSET_UINT;
    fscf->keepalive_timeout = NGX_CONF_UNSET_MSEC;
    fscf->certificates = NGX_CONF_UNSET_PTR;
    fscf->certificate_keys = NGX_CONF_UNSET_PTR;
    fscf->verify_depth = NGX_CONF_UNSET;
    fscf->verify_cache = NGX_CONF_UNSET_UINT;
    fscf->verify_cache_valid = NGX_CONF_UNSET;

    return fscf;
}


static char *
ngx_xmpp_federation_merge_srv_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_xmpp_federation_srv_conf_t *prev = parent;
    ngx_xmpp_federation_srv_conf_t *conf = child;

    ngx_stream_core_srv_conf_t       *cscf;
    ngx_xmpp_federation_main_conf_t  *fmcf;

    ngx_conf_merge_value(conf->preread, prev->preread, 0);
    ngx_conf_merge_msec_value(conf->timeout, prev->timeout, 60000);
    ngx_conf_merge_msec_value(conf->idle_timeout, prev->idle_timeout,
                              600000);
    ngx_conf_merge_msec_value(conf->dialback_timeout, prev->dialback_timeout,
                              30000);
    ngx_conf_merge_uint_value(conf->max_dialback, prev->max_dialback, 10);
    ngx_conf_merge_size_value(conf->max_header_size, prev->max_header_size,
                              4096);
    ngx_conf_merge_size_value(conf->max_stanza_size, prev->max_stanza_size,
                              262144);
    ngx_conf_merge_size_value(conf->hold_size, prev->hold_size, 65536);
    ngx_conf_merge_size_value(conf->buffer_size, prev->buffer_size, 16384);
    ngx_conf_merge_uint_value(conf->keepalive, prev->keepalive, 0);
    ngx_conf_merge_msec_value(conf->keepalive_timeout,
                              prev->keepalive_timeout, 60000);

    ngx_queue_init(&conf->cache);
    conf->cached = 0;

    if (ngx_xmpp_federation_ssl_merge(cf, prev, conf) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    if (conf->mode == NGX_XMPP_FEDERATION_OFF && !conf->preread) {
        return NGX_CONF_OK;
    }

    fmcf = ngx_stream_conf_get_module_main_conf(cf,
                                          ngx_stream_xmpp_federation_module);

    if (fmcf->local_domains.nelts == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "no \"xmpp_federation_local_domains\" are defined "
                           "for an XMPP federation server");
        return NGX_CONF_ERROR;
    }

    cscf = ngx_stream_conf_get_module_srv_conf(cf, ngx_stream_core_module);

    if (conf->mode != NGX_XMPP_FEDERATION_OFF
        && cscf->handler != ngx_xmpp_federation_handler)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"xmpp_federation\" conflicts with another "
                           "content handler (such as proxy_pass or return)");
        return NGX_CONF_ERROR;
    }

    if (conf->mode != NGX_XMPP_FEDERATION_OFF && conf->pass == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"xmpp_federation\" requires "
                           "\"xmpp_federation_pass\": where the gateway is");
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_xmpp_federation_init(ngx_conf_t *cf)
{
    ngx_stream_handler_pt        *h;
    ngx_stream_core_main_conf_t  *cmcf;

    cmcf = ngx_stream_conf_get_module_main_conf(cf, ngx_stream_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_STREAM_PREREAD_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_xmpp_federation_preread_handler;

    return NGX_OK;
}


static char *
ngx_xmpp_federation_local_domains(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_xmpp_federation_main_conf_t *fmcf = conf;

    char                           *rv;
    ngx_str_t                      *value, *domain;
    ngx_uint_t                      i;

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_xmpp_federation_domain(cf, &value[i], "local_domains")
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }

        rv = ngx_xmpp_federation_add_domain(cf, fmcf, &value[i], NULL);
        if (rv != NGX_CONF_OK) {
            return rv;
        }

        domain = ngx_array_push(&fmcf->local_domains);
        if (domain == NULL) {
            return NGX_CONF_ERROR;
        }

        *domain = value[i];
    }

    return NGX_CONF_OK;
}


static char *
ngx_xmpp_federation_partner(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_xmpp_federation_main_conf_t *fmcf = conf;

    char                            *rv;
    void                           **srv_conf;
    ngx_str_t                       *value;
    ngx_conf_t                       save;
    ngx_stream_conf_ctx_t           *ctx, *stream_ctx;
    ngx_xmpp_federation_partner_t   *partner, **pp;

    value = cf->args->elts;

    if (ngx_xmpp_federation_domain(cf, &value[1], "xmpp_federation_partner")
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    partner = ngx_pcalloc(cf->pool, sizeof(ngx_xmpp_federation_partner_t));
    if (partner == NULL) {
        return NGX_CONF_ERROR;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     partner->description = { 0, NULL };
     *     partner->additional = NULL;
     *     partner->server = NULL;
     */

    partner->domain = value[1];
    partner->line = cf->conf_file->line;
    partner->type = NGX_CONF_UNSET_UINT;
    partner->tls = NGX_CONF_UNSET_UINT;
    partner->sasl = NGX_CONF_UNSET_UINT;
    partner->dialback = NGX_CONF_UNSET;
    partner->connection_limit = NGX_CONF_UNSET;
    partner->keepalive = NGX_CONF_UNSET;

    rv = ngx_xmpp_federation_add_domain(cf, fmcf, &partner->domain, partner);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    pp = ngx_array_push(&fmcf->partners);
    if (pp == NULL) {
        return NGX_CONF_ERROR;
    }

    *pp = partner;

    /*
     * The block's directives are this module's commands of the partner
     * context; their "server configuration" is the partner itself.
     */

    stream_ctx = cf->ctx;

    ctx = ngx_pcalloc(cf->pool, sizeof(ngx_stream_conf_ctx_t));
    if (ctx == NULL) {
        return NGX_CONF_ERROR;
    }

    srv_conf = ngx_pcalloc(cf->pool, sizeof(void *) * ngx_stream_max_module);
    if (srv_conf == NULL) {
        return NGX_CONF_ERROR;
    }

    srv_conf[ngx_stream_xmpp_federation_module.ctx_index] = partner;

    ctx->main_conf = stream_ctx->main_conf;
    ctx->srv_conf = srv_conf;

    save = *cf;
    cf->ctx = ctx;
    cf->cmd_type = NGX_XMPP_FEDERATION_PARTNER_CONF;

    rv = ngx_conf_parse(cf, NULL);

    *cf = save;

    if (rv != NGX_CONF_OK) {
        return rv;
    }

    /* Lync's defaults */

    ngx_conf_init_uint_value(partner->type,
                             NGX_XMPP_FEDERATION_PUBLIC_UNVERIFIED);
    ngx_conf_init_uint_value(partner->tls, NGX_XMPP_FEDERATION_REQUIRED);
    ngx_conf_init_uint_value(partner->sasl, NGX_XMPP_FEDERATION_REQUIRED);
    ngx_conf_init_value(partner->dialback, 1);
    ngx_conf_init_value(partner->connection_limit, 20);
    ngx_conf_init_value(partner->keepalive, 1);

    return ngx_xmpp_federation_check_matrix(cf, partner);
}


/*
 * Lync's "Negotiation settings for XMPP federated partners": 5 of the 18
 * rows leave no way to authenticate, some others cannot work as written.
 * The messages point at the partner's opening line.
 */

static char *
ngx_xmpp_federation_check_matrix(ngx_conf_t *cf,
    ngx_xmpp_federation_partner_t *partner)
{
    char        *rv;
    ngx_str_t   *tls, *sasl;
    ngx_uint_t   line;

    rv = NGX_CONF_OK;
    line = cf->conf_file->line;
    cf->conf_file->line = partner->line;

    tls = &ngx_xmpp_federation_negotiation_names[partner->tls];
    sasl = &ngx_xmpp_federation_negotiation_names[partner->sasl];

    if (!partner->dialback
        && partner->tls == NGX_XMPP_FEDERATION_NOT_SUPPORTED)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "partner \"%V\" cannot authenticate: SASL needs "
                           "TLS, \"tls\" is not_supported and \"dialback\" "
                           "is off", &partner->domain);
        rv = NGX_CONF_ERROR;

    } else if (!partner->dialback
               && partner->sasl == NGX_XMPP_FEDERATION_NOT_SUPPORTED)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "partner \"%V\" cannot authenticate: \"sasl\" is "
                           "not_supported and \"dialback\" is off",
                           &partner->domain);
        rv = NGX_CONF_ERROR;

    } else if (partner->sasl != NGX_XMPP_FEDERATION_NOT_SUPPORTED
               && partner->tls == NGX_XMPP_FEDERATION_NOT_SUPPORTED)
    {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "partner \"%V\": SASL can never happen: SASL "
                           "needs TLS and \"tls\" is not_supported "
                           "(\"sasl %V\" is ignored)",
                           &partner->domain, sasl);

    } else if (partner->sasl != NGX_XMPP_FEDERATION_NOT_SUPPORTED
               && partner->tls == NGX_XMPP_FEDERATION_OPTIONAL)
    {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "partner \"%V\": SASL needs TLS, but \"tls\" is "
                           "only optional (\"sasl %V\")",
                           &partner->domain, sasl);

    } else if (partner->dialback
               && partner->tls == NGX_XMPP_FEDERATION_REQUIRED
               && partner->sasl == NGX_XMPP_FEDERATION_REQUIRED)
    {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "partner \"%V\": dialback is never used with "
                           "\"tls %V\" and \"sasl %V\"",
                           &partner->domain, tls, sasl);
    }

    cf->conf_file->line = line;

    return rv;
}


static char *
ngx_xmpp_federation_additional_domains(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_xmpp_federation_partner_t *partner = conf;

    char                             *rv;
    ngx_str_t                        *value, *domain;
    ngx_uint_t                        i;
    ngx_xmpp_federation_main_conf_t  *fmcf;

    fmcf = ngx_stream_conf_get_module_main_conf(cf,
                                          ngx_stream_xmpp_federation_module);

    if (partner->additional == NULL) {
        partner->additional = ngx_array_create(cf->pool, 4,
                                               sizeof(ngx_str_t));
        if (partner->additional == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_xmpp_federation_domain(cf, &value[i], "additional_domains")
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }

        rv = ngx_xmpp_federation_add_domain(cf, fmcf, &value[i], partner);
        if (rv != NGX_CONF_OK) {
            return rv;
        }

        domain = ngx_array_push(partner->additional);
        if (domain == NULL) {
            return NGX_CONF_ERROR;
        }

        *domain = value[i];
    }

    return NGX_CONF_OK;
}


static char *
ngx_xmpp_federation_server(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_xmpp_federation_partner_t *partner = conf;

    ngx_str_t  *value;
    ngx_url_t  *u;

    if (partner->server) {
        return "is duplicate";
    }

    value = cf->args->elts;

    u = ngx_pcalloc(cf->pool, sizeof(ngx_url_t));
    if (u == NULL) {
        return NGX_CONF_ERROR;
    }

    u->url = value[1];
    u->default_port = 5269;
    u->no_resolve = 1;

    if (ngx_parse_url(cf->pool, u) != NGX_OK) {
        if (u->err) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%s in \"server\" of partner \"%V\"",
                               u->err, &partner->domain);
        }

        return NGX_CONF_ERROR;
    }

    partner->server = u;

    return NGX_CONF_OK;
}


static char *
ngx_xmpp_federation(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_xmpp_federation_srv_conf_t *fscf = conf;

    ngx_str_t                   *value;
    ngx_stream_core_srv_conf_t  *cscf;

    if (fscf->mode != NGX_XMPP_FEDERATION_OFF) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "inbound") == 0) {
        fscf->mode = NGX_XMPP_FEDERATION_INBOUND;

    } else if (ngx_strcmp(value[1].data, "outbound") == 0) {
        fscf->mode = NGX_XMPP_FEDERATION_OUTBOUND;

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\", it must be \"inbound\" "
                           "or \"outbound\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    cscf = ngx_stream_conf_get_module_srv_conf(cf, ngx_stream_core_module);

    if (cscf->handler) {
        return "conflicts with another content handler (such as proxy_pass)";
    }

    cscf->handler = ngx_xmpp_federation_handler;

    return NGX_CONF_OK;
}


/* xmpp_federation_verify_cache off | number [valid=time]; */

static char *
ngx_xmpp_federation_verify_cache(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_xmpp_federation_srv_conf_t *fscf = conf;

    time_t      valid;
    ngx_int_t   n;
    ngx_str_t  *value, s;

    if (fscf->verify_cache != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        if (cf->args->nelts > 2) {
            return "takes no \"valid\" when \"off\"";
        }

        fscf->verify_cache = 0;
        return NGX_CONF_OK;
    }

    n = ngx_atoi(value[1].data, value[1].len);
    if (n == NGX_ERROR || n == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid number of chains \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    fscf->verify_cache = n;

    if (cf->args->nelts == 2) {
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value[2].data, "valid=", 6) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[2]);
        return NGX_CONF_ERROR;
    }

    s.data = value[2].data + 6;
    s.len = value[2].len - 6;

    valid = ngx_parse_time(&s, 1);
    if (valid == (time_t) NGX_ERROR || valid == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid time \"%V\"", &value[2]);
        return NGX_CONF_ERROR;
    }

    fscf->verify_cache_valid = valid;

    return NGX_CONF_OK;
}


static char *
ngx_xmpp_federation_pass(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_xmpp_federation_srv_conf_t *fscf = conf;

    ngx_url_t   u;
    ngx_str_t  *value;

    if (fscf->pass) {
        return "is duplicate";
    }

    value = cf->args->elts;

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = value[1];
    u.no_resolve = 1;

    fscf->pass = ngx_stream_upstream_add(cf, &u, 0);
    if (fscf->pass == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * A domain in the configuration: lowercase, no trailing dot, the
 * characters of a DNS name (UTF-8 of internationalized names allowed).
 */

static ngx_int_t
ngx_xmpp_federation_domain(ngx_conf_t *cf, ngx_str_t *value,
    const char *directive)
{
    u_char      c, prev;
    ngx_uint_t  i;

    if (value->len && value->data[value->len - 1] == '.') {
        value->len--;
    }

    if (value->len == 0 || value->len > NGX_XMPP_FEDERATION_DOMAIN_MAX) {
        goto invalid;
    }

    prev = '.';

    for (i = 0; i < value->len; i++) {
        c = ngx_tolower(value->data[i]);
        value->data[i] = c;

        if (c == '.') {
            if (prev == '.') {
                goto invalid;
            }

        } else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
                     || c == '-' || c == '_' || c >= 0x80))
        {
            goto invalid;
        }

        prev = c;
    }

    if (prev == '.') {
        goto invalid;
    }

    return NGX_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid domain \"%V\" in \"%s\"", value, directive);

    return NGX_ERROR;
}


/* each domain is local or belongs to one partner, once */

static char *
ngx_xmpp_federation_add_domain(ngx_conf_t *cf,
    ngx_xmpp_federation_main_conf_t *fmcf, ngx_str_t *domain,
    ngx_xmpp_federation_partner_t *partner)
{
    ngx_str_t                      *local;
    ngx_uint_t                      i;
    ngx_xmpp_federation_partner_t  *owner;

    local = fmcf->local_domains.elts;

    for (i = 0; i < fmcf->local_domains.nelts; i++) {
        if (local[i].len == domain->len
            && ngx_strncmp(local[i].data, domain->data, domain->len) == 0)
        {
            if (partner) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "domain \"%V\" of partner \"%V\" is also "
                                   "a local domain", domain,
                                   &partner->domain);
            } else {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "local domain \"%V\" is listed twice",
                                   domain);
            }

            return NGX_CONF_ERROR;
        }
    }

    owner = ngx_xmpp_federation_domain_owner(fmcf, domain);

    if (owner == NULL) {
        return NGX_CONF_OK;
    }

    if (partner == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "local domain \"%V\" is also a domain of partner "
                           "\"%V\"", domain, &owner->domain);

    } else if (owner == partner) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "domain \"%V\" is listed twice in partner \"%V\"",
                           domain, &partner->domain);

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "domain \"%V\" is already a domain of partner "
                           "\"%V\" (line %ui)", domain, &owner->domain,
                           owner->line);
    }

    return NGX_CONF_ERROR;
}


static ngx_xmpp_federation_partner_t *
ngx_xmpp_federation_domain_owner(ngx_xmpp_federation_main_conf_t *fmcf,
    ngx_str_t *domain)
{
    ngx_str_t                       *d;
    ngx_uint_t                       i, j;
    ngx_xmpp_federation_partner_t  **partner;

    partner = fmcf->partners.elts;

    for (i = 0; i < fmcf->partners.nelts; i++) {

        if (partner[i]->domain.len == domain->len
            && ngx_strncmp(partner[i]->domain.data, domain->data,
                           domain->len)
               == 0)
        {
            return partner[i];
        }

        if (partner[i]->additional == NULL) {
            continue;
        }

        d = partner[i]->additional->elts;

        for (j = 0; j < partner[i]->additional->nelts; j++) {
            if (d[j].len == domain->len
                && ngx_strncmp(d[j].data, domain->data, domain->len) == 0)
            {
                return partner[i];
            }
        }
    }

    return NULL;
}


/* runtime lookups: the peer's domain, compared case-insensitively */

static ngx_int_t
ngx_xmpp_federation_lowcase(ngx_str_t *domain, u_char *buf)
{
    size_t  len;

    len = domain->len;

    if (len && domain->data[len - 1] == '.') {
        len--;
    }

    if (len == 0 || len > NGX_XMPP_FEDERATION_DOMAIN_MAX) {
        return NGX_ERROR;
    }

    ngx_strlow(buf, domain->data, len);

    return (ngx_int_t) len;
}


ngx_xmpp_federation_partner_t *
ngx_xmpp_federation_find_partner(ngx_xmpp_federation_main_conf_t *fmcf,
    ngx_str_t *domain)
{
    ngx_int_t  len;
    u_char     buf[NGX_XMPP_FEDERATION_DOMAIN_MAX];

    if (fmcf->partner_hash.size == 0) {
        return NULL;
    }

    len = ngx_xmpp_federation_lowcase(domain, buf);
    if (len == NGX_ERROR) {
        return NULL;
    }

    return ngx_hash_find(&fmcf->partner_hash, ngx_hash_key(buf, len), buf,
                         len);
}


ngx_int_t
ngx_xmpp_federation_is_local(ngx_xmpp_federation_main_conf_t *fmcf,
    ngx_str_t *domain)
{
    ngx_int_t  len;
    u_char     buf[NGX_XMPP_FEDERATION_DOMAIN_MAX];

    if (fmcf->local_hash.size == 0) {
        return 0;
    }

    len = ngx_xmpp_federation_lowcase(domain, buf);
    if (len == NGX_ERROR) {
        return 0;
    }

    return ngx_hash_find(&fmcf->local_hash, ngx_hash_key(buf, len), buf, len)
           != NULL;
}
