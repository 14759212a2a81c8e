
/*
 * Copyright (C) ngx_xmpp_federation_module authors
 */


#ifndef _NGX_XMPP_FEDERATION_H_INCLUDED_
#define _NGX_XMPP_FEDERATION_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>
#include <expat.h>

/* SSE2, on every x86-64, for the scans of bytes */

#if (defined __SSE2__ && defined __GNUC__)
#define NGX_XMPP_FEDERATION_SSE2  1
#include <emmintrin.h>
#endif


typedef struct ngx_xmpp_federation_peer_s    ngx_xmpp_federation_peer_t;
typedef struct ngx_xmpp_federation_verify_s  ngx_xmpp_federation_verify_t;


#define NGX_XMPP_FEDERATION_NS_STREAMS  "http://etherx.jabber.org/streams"
#define NGX_XMPP_FEDERATION_NS_SERVER   "jabber:server"
#define NGX_XMPP_FEDERATION_NS_DIALBACK "jabber:server:dialback"
#define NGX_XMPP_FEDERATION_NS_TLS      "urn:ietf:params:xml:ns:xmpp-tls"
#define NGX_XMPP_FEDERATION_NS_SASL     "urn:ietf:params:xml:ns:xmpp-sasl"
#define NGX_XMPP_FEDERATION_NS_ERRORS   "urn:ietf:params:xml:ns:xmpp-streams"

/* XML white space */
#define ngx_xmpp_federation_ws(ch)                                            \
    ((ch) == ' ' || (ch) == '\t' || (ch) == '\r' || (ch) == '\n')

/* a name or namespace against a literal */
#define ngx_xmpp_federation_is(str, value)                                    \
    ((str)->len == sizeof(value) - 1                                          \
     && ngx_memcmp((str)->data, value, sizeof(value) - 1) == 0)


/* room for one line of our own: a dialback element with two domains */
#define NGX_XMPP_FEDERATION_LINE  (2 * 1024 + 512)


/* the partner block's own directive context, see ngx_conf_handler() */
#define NGX_XMPP_FEDERATION_PARTNER_CONF  0x10000000


/* xmpp_federation inbound | outbound */
#define NGX_XMPP_FEDERATION_OFF           0
#define NGX_XMPP_FEDERATION_INBOUND       1
#define NGX_XMPP_FEDERATION_OUTBOUND      2

/* partner type */
#define NGX_XMPP_FEDERATION_FEDERATED          0
#define NGX_XMPP_FEDERATION_PUBLIC_VERIFIED    1
#define NGX_XMPP_FEDERATION_PUBLIC_UNVERIFIED  2

/* tls and sasl negotiation */
#define NGX_XMPP_FEDERATION_REQUIRED       0
#define NGX_XMPP_FEDERATION_OPTIONAL       1
#define NGX_XMPP_FEDERATION_NOT_SUPPORTED  2

/* $xmpp_tls */
#define NGX_XMPP_FEDERATION_TLS_NONE       0
#define NGX_XMPP_FEDERATION_TLS_STARTTLS   1
#define NGX_XMPP_FEDERATION_TLS_DIRECT     2

/* $xmpp_auth */
#define NGX_XMPP_FEDERATION_AUTH_NONE      0
#define NGX_XMPP_FEDERATION_AUTH_EXTERNAL  1
#define NGX_XMPP_FEDERATION_AUTH_DIALBACK  2


/* stream error conditions, RFC 6120 section 4.9.3 */
typedef enum {
    ngx_xmpp_err_none = 0,
    ngx_xmpp_err_bad_format,
    ngx_xmpp_err_bad_namespace_prefix,
    ngx_xmpp_err_conflict,
    ngx_xmpp_err_connection_timeout,
    ngx_xmpp_err_host_gone,
    ngx_xmpp_err_host_unknown,
    ngx_xmpp_err_improper_addressing,
    ngx_xmpp_err_internal_server_error,
    ngx_xmpp_err_invalid_from,
    ngx_xmpp_err_invalid_namespace,
    ngx_xmpp_err_invalid_xml,
    ngx_xmpp_err_not_authorized,
    ngx_xmpp_err_not_well_formed,
    ngx_xmpp_err_policy_violation,
    ngx_xmpp_err_remote_connection_failed,
    ngx_xmpp_err_reset,
    ngx_xmpp_err_resource_constraint,
    ngx_xmpp_err_restricted_xml,
    ngx_xmpp_err_see_other_host,
    ngx_xmpp_err_system_shutdown,
    ngx_xmpp_err_undefined_condition,
    ngx_xmpp_err_unsupported_encoding,
    ngx_xmpp_err_unsupported_feature,
    ngx_xmpp_err_unsupported_stanza_type,
    ngx_xmpp_err_unsupported_version
} ngx_xmpp_federation_error_e;


typedef struct {
    ngx_str_t                       domain;        /* primary, lowercase */
    ngx_str_t                       description;
    ngx_array_t                    *additional;    /* of ngx_str_t */
    ngx_uint_t                      type;
    ngx_uint_t                      tls;
    ngx_uint_t                      sasl;
    ngx_flag_t                      dialback;
    ngx_int_t                       connection_limit;
    ngx_flag_t                      keepalive;
    ngx_url_t                      *server;
    ngx_uint_t                      line;          /* where it was defined */
} ngx_xmpp_federation_partner_t;


typedef struct {
    ngx_array_t                     local_domains; /* of ngx_str_t */
    ngx_array_t                     partners;      /* of partner_t * */
    ngx_hash_t                      local_hash;    /* domain -> str */
    ngx_hash_t                      partner_hash;  /* domain -> partner */
    ngx_str_t                       dialback_secret;
    u_char                          dialback_key[32]; /* SHA256(secret) */
    ngx_flag_t                      any_dialback;  /* a partner allows it */
    ngx_flag_t                      any_dialback_tls;
} ngx_xmpp_federation_main_conf_t;


/*
 * A client certificate chain that verified without an error: the SHA-256
 * of its certificates' SHA-256 digests, in the order the peer sent them,
 * and when the verdict holds (the chain's validity, the CRLs' next
 * update, the cache's "valid")
 */
#define NGX_XMPP_FEDERATION_VERDICT_WAYS  4

typedef struct {
    u_char                          key[32];
    time_t                          from;
    time_t                          until;         /* 0: a free entry */
    ngx_uint_t                      used;          /* least recent first */
} ngx_xmpp_federation_verdict_t;


typedef struct {
    ngx_uint_t                      mode;
    ngx_flag_t                      preread;
    ngx_msec_t                      timeout;
    ngx_msec_t                      idle_timeout;
    ngx_msec_t                      dialback_timeout;
    ngx_uint_t                      max_dialback;
    size_t                          max_header_size;
    size_t                          max_stanza_size;
    size_t                          hold_size;
    size_t                          buffer_size;
    ngx_stream_upstream_srv_conf_t *pass;

    /* xmpp_federation_pass_keepalive: vouched gateway streams kept */
    ngx_uint_t                      keepalive;
    ngx_msec_t                      keepalive_timeout;
    ngx_queue_t                     cache;         /* of peer_t, LRU last */
    ngx_uint_t                      cached;

    ngx_ssl_t                       ssl;
    ngx_array_t                    *certificates;
    ngx_array_t                    *certificate_keys;
    ngx_str_t                       trusted_certificate;
    ngx_str_t                       crl;
    ngx_uint_t                      protocols;
    ngx_str_t                       ciphers;
    ngx_int_t                       verify_depth;

    /* xmpp_federation_verify_cache: chains verified, per worker */
    ngx_uint_t                      verify_cache;
    time_t                          verify_cache_valid;
    ngx_xmpp_federation_verdict_t  *verdicts;
    ngx_uint_t                      verdict_stamp;
} ngx_xmpp_federation_srv_conf_t;


/* what the parser found; one event at a time */
typedef enum {
    ngx_xmpp_ev_none = 0,
    ngx_xmpp_ev_header,        /* the opening <stream:stream> tag */
    ngx_xmpp_ev_element,       /* a complete top-level element */
    ngx_xmpp_ev_close,         /* </stream:stream> */
    ngx_xmpp_ev_error          /* parser->error says which */
} ngx_xmpp_federation_event_e;


typedef struct {
    XML_Parser                      expat;
    ngx_pool_t                      *pool;
    ngx_log_t                       *log;

    ngx_xmpp_federation_event_e     event;
    ngx_xmpp_federation_error_e     error;
    const char                      *reason;       /* for the log */

    ngx_uint_t                      depth;
    size_t                          max_header_size;
    size_t                          max_stanza_size;

    /* absolute byte offsets in the stream since the last reset */
    off_t                           consumed;      /* bytes given to us */
    off_t                           fed;           /* bytes parsed */
    off_t                           skipped;       /* scanned, not expat's */
    off_t                           start;         /* element start */
    off_t                           end;           /* element end */

    /* the scanner reads the stream where the caller keeps it */
    ngx_buf_t                     **buf;
    off_t                          *base;          /* offset of start */
    ngx_uint_t                      tries;         /* partial scans */

    /* the header, or the top-level element */
    ngx_str_t                       ns;            /* namespace URI */
    ngx_str_t                       name;          /* local name */
    ngx_str_t                       prefix;
    ngx_str_t                       from;
    ngx_str_t                       to;
    ngx_str_t                       id;
    ngx_str_t                       type;
    ngx_str_t                       version;
    ngx_str_t                       mechanism;
    ngx_str_t                       text;          /* character data */
    ngx_str_t                       ns_decls;      /* prefixes of header */
    u_char                         *scratch;       /* names, values, text */

    /* the header's raw bytes, to read again after a sleep */
    ngx_str_t                       header;

    /* the last chunk expat was given (not the scan's) */
    u_char                         *chunk;
    size_t                          chunk_len;

    size_t                          text_max;
    unsigned                        default_ns_ok:1;
    unsigned                        header_done:1;
    unsigned                        stopped:1;
    unsigned                        close_pending:1;
    unsigned                        suspended:1;
    unsigned                        scan:1;        /* the fast path is on */
    unsigned                        punt:1;        /* this one is expat's */
    unsigned                        pending:1;     /* a partial scan */
    unsigned                        clean:1;       /* expat holds no part */
    unsigned                        waking:1;      /* the header again */
} ngx_xmpp_federation_parser_t;


typedef enum {
    ngx_xmpp_st_header = 0,    /* waiting for the peer's stream header */
    ngx_xmpp_st_features,      /* features sent, waiting for negotiation */
    ngx_xmpp_st_relay,         /* a domain is authenticated, stanzas flow */
    ngx_xmpp_st_closing        /* output of the last words, then close */
} ngx_xmpp_federation_state_e;


/* a remote domain of the stream, as dialback goes */
typedef enum {
    ngx_xmpp_pair_verifying = 0,   /* asking its authoritative server */
    ngx_xmpp_pair_vouching,        /* asking the gateway to accept it */
    ngx_xmpp_pair_valid,
    ngx_xmpp_pair_failed
} ngx_xmpp_federation_pair_state_e;


typedef struct {
    ngx_str_t                         remote;   /* lowercase */
    ngx_str_t                         local;    /* lowercase */
    ngx_xmpp_federation_pair_state_e  state;
    ngx_uint_t                        held;     /* its stanzas waiting */
    ngx_xmpp_federation_error_e       failure;  /* for those, if it fails */
    unsigned                          sasl:1;   /* by SASL, not dialback */
} ngx_xmpp_federation_pair_t;


/* an outgoing XMPP stream: dialback verification or the gateway */

typedef void (*ngx_xmpp_federation_peer_handler_pt)(
    ngx_xmpp_federation_peer_t *peer, ngx_int_t rc);

struct ngx_xmpp_federation_peer_s {
    ngx_peer_connection_t                pc;
    ngx_pool_t                          *pool;
    ngx_log_t                           *log;
    ngx_xmpp_federation_parser_t        *parser;
    ngx_buf_t                           *in;
    ngx_buf_t                           *out;

    ngx_str_t                            from;     /* our header */
    ngx_str_t                            to;
    ngx_str_t                            ns_decls; /* extra declarations */
    ngx_str_t                            id;       /* the peer's stream id */
    ngx_msec_t                           timeout;

    /* NGX_OK: features arrived; NGX_AGAIN: an element; NGX_ERROR: over */
    ngx_xmpp_federation_peer_handler_pt  handler;
    void                                *data;
    const char                          *reason;   /* of NGX_ERROR */

    ngx_uint_t                           busy;

    /* a gateway stream: the pairs it accepted; kept between sessions */
    ngx_array_t                         *vouched;  /* of ngx_str_t pairs */
    ngx_queue_t                          queue;    /* in srv_conf cache */
    ngx_xmpp_federation_srv_conf_t      *cache;    /* whose, when kept */

    unsigned                             connected:1;
    unsigned                             destroy:1;
    unsigned                             ready:1;
    unsigned                             closed:1;
    unsigned                             failed:1; /* could not connect */
    unsigned                             nodelay:1;
    unsigned                             ended:1;  /* we sent the end */
    unsigned                             release:1; /* idle: memory goes */
    unsigned                             reused:1; /* kept, taken again */
};


typedef struct {
    ngx_stream_session_t           *session;
    ngx_xmpp_federation_parser_t   *parser;
    ngx_xmpp_federation_state_e     state;

    ngx_buf_t                      *in;            /* from the peer */
    ngx_buf_t                      *out;           /* to the peer */

    size_t                          prefed;        /* preread bytes parsed */

    /* the relay: ptr(offset) = in->start + (offset - base) */
    off_t                           base;
    u_char                         *fwd;           /* end of what may go */
    u_char                         *checked;       /* end of checked bytes */

    ngx_array_t                     pairs;         /* of pair_t */
    ngx_uint_t                      verifying;     /* dialbacks under way */
    ngx_queue_t                     verifies;
    ngx_xmpp_federation_peer_t     *gateway;
    ngx_uint_t                      gateway_try;
    ngx_str_t                       ns_decls;      /* of the peer header */
    ngx_buf_t                      *bounces;       /* outbound, for now */
    ngx_uint_t                      stanzas;

    ngx_str_t                       from;          /* as the peer sent it */
    ngx_str_t                       to;
    ngx_str_t                       local;         /* our matched domain */
    ngx_str_t                       stream_id;
    ngx_xmpp_federation_partner_t  *partner;
    ngx_xmpp_federation_error_e     error;
    ngx_uint_t                      status;        /* for $status */
    long                            cert_error;    /* of our handshake */

    unsigned                        header_sent:1;
    unsigned                        header_seen:1;
    unsigned                        quit:1;
    unsigned                        lingering:1;
    unsigned                        corked:1;      /* last words held */
    unsigned                        preread_done:1;
    unsigned                        ended:1;       /* peer sent its end */
    unsigned                        bouncing:1;
    unsigned                        tls:2;         /* $xmpp_tls */
    unsigned                        auth:2;        /* $xmpp_auth */
    unsigned                        starttls:1;    /* <proceed/> on its way */
    unsigned                        sasl_offered:1;
    unsigned                        cert_cached:1; /* verified earlier */
} ngx_xmpp_federation_ctx_t;


/* ngx_xmpp_federation_module.c */
ngx_xmpp_federation_partner_t *ngx_xmpp_federation_find_partner(
    ngx_xmpp_federation_main_conf_t *fmcf, ngx_str_t *domain);
ngx_int_t ngx_xmpp_federation_is_local(ngx_xmpp_federation_main_conf_t *fmcf,
    ngx_str_t *domain);
ngx_str_t *ngx_xmpp_federation_error_name(ngx_xmpp_federation_error_e err);
ngx_int_t ngx_xmpp_federation_random(u_char *buf, size_t len);

/* ngx_xmpp_federation_parse.c */
ngx_xmpp_federation_parser_t *ngx_xmpp_federation_parser_create(
    ngx_pool_t *pool, ngx_log_t *log, size_t max_header_size,
    size_t max_stanza_size);
ngx_int_t ngx_xmpp_federation_parser_reset(
    ngx_xmpp_federation_parser_t *p);
ngx_int_t ngx_xmpp_federation_parse(ngx_xmpp_federation_parser_t *p,
    u_char *data, size_t len);
ngx_int_t ngx_xmpp_federation_parse_next(ngx_xmpp_federation_parser_t *p);
void ngx_xmpp_federation_parser_scan(ngx_xmpp_federation_parser_t *p,
    ngx_buf_t **buf, off_t *base);
ngx_int_t ngx_xmpp_federation_parser_sleep(ngx_xmpp_federation_parser_t *p);
ngx_int_t ngx_xmpp_federation_parser_wake(ngx_xmpp_federation_parser_t *p);

/* ngx_xmpp_federation_preread.c */
ngx_int_t ngx_xmpp_federation_add_variables(ngx_conf_t *cf);
ngx_int_t ngx_xmpp_federation_preread_handler(ngx_stream_session_t *s);
ngx_xmpp_federation_ctx_t *ngx_xmpp_federation_get_ctx(
    ngx_stream_session_t *s);
ngx_xmpp_federation_error_e ngx_xmpp_federation_check_header(
    ngx_stream_session_t *s, ngx_xmpp_federation_ctx_t *ctx,
    ngx_xmpp_federation_parser_t *p, const char **reason);

/* ngx_xmpp_federation_handler.c */
void ngx_xmpp_federation_handler(ngx_stream_session_t *s);
ngx_int_t ngx_xmpp_federation_out(ngx_xmpp_federation_ctx_t *ctx,
    u_char *data, size_t len);
ngx_int_t ngx_xmpp_federation_reserve(ngx_pool_t *pool, ngx_buf_t **bp,
    size_t len);
ngx_int_t ngx_xmpp_federation_append(ngx_pool_t *pool, ngx_buf_t **bp,
    u_char *data, size_t len);
void ngx_xmpp_federation_free_buf(ngx_buf_t *b);
void ngx_xmpp_federation_send(ngx_stream_session_t *s);
ngx_int_t ngx_xmpp_federation_drain(ngx_connection_t *c);
ngx_int_t ngx_xmpp_federation_flush(ngx_connection_t *c, ngx_buf_t *b,
    u_char *end, ngx_msec_t timeout);
void ngx_xmpp_federation_stream_error(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, ngx_xmpp_federation_error_e err,
    const char *reason);
void ngx_xmpp_federation_finalize(ngx_stream_session_t *s,
    ngx_uint_t status);
ngx_int_t ngx_xmpp_federation_process(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
size_t ngx_xmpp_federation_escape(u_char *dst, ngx_str_t *src);
ngx_int_t ngx_xmpp_federation_jid_domain(ngx_str_t *jid, ngx_str_t *domain);
void ngx_xmpp_federation_relay_start(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
void ngx_xmpp_federation_idle(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
void ngx_xmpp_federation_release(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
void ngx_xmpp_federation_restart(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
void ngx_xmpp_federation_resume(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
ngx_int_t ngx_xmpp_federation_tls_offered(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);

/* ngx_xmpp_federation_dialback.c */
ngx_int_t ngx_xmpp_federation_db_result(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
ngx_int_t ngx_xmpp_federation_db_verify(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
ngx_int_t ngx_xmpp_federation_dialback_key(ngx_xmpp_federation_main_conf_t
    *fmcf, ngx_str_t *receiving, ngx_str_t *originating, ngx_str_t *id,
    u_char *key);
ngx_xmpp_federation_pair_t *ngx_xmpp_federation_add_pair(
    ngx_stream_session_t *s, ngx_xmpp_federation_ctx_t *ctx,
    ngx_str_t *remote, ngx_str_t *local);
ngx_xmpp_federation_pair_t *ngx_xmpp_federation_find_pair(
    ngx_xmpp_federation_ctx_t *ctx, ngx_str_t *remote, ngx_str_t *local);
void ngx_xmpp_federation_verify_cancel_all(ngx_xmpp_federation_ctx_t *ctx);
void ngx_xmpp_federation_pair_done(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, ngx_xmpp_federation_pair_t *pair,
    const char *type, const char *condition);

/* ngx_xmpp_federation_proxy.c */
ngx_xmpp_federation_peer_t *ngx_xmpp_federation_peer_create(
    ngx_log_t *log, ngx_msec_t timeout);
ngx_uint_t ngx_xmpp_federation_nodelay(ngx_stream_session_t *s);
ngx_int_t ngx_xmpp_federation_peer_connect(ngx_xmpp_federation_peer_t *peer,
    struct sockaddr *sockaddr, socklen_t socklen, ngx_str_t *name);
ngx_int_t ngx_xmpp_federation_peer_write(ngx_xmpp_federation_peer_t *peer,
    u_char *data, size_t len);
void ngx_xmpp_federation_peer_close(ngx_xmpp_federation_peer_t *peer);
ngx_int_t ngx_xmpp_federation_upstream_addr(ngx_stream_session_t *s,
    ngx_uint_t n, struct sockaddr **sockaddr, socklen_t *socklen,
    ngx_str_t **name);
ngx_int_t ngx_xmpp_federation_vouch(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, ngx_xmpp_federation_pair_t *pair);
void ngx_xmpp_federation_relay_gateway(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
void ngx_xmpp_federation_gateway_end(ngx_xmpp_federation_ctx_t *ctx);
ngx_int_t ngx_xmpp_federation_gateway_keep(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
void ngx_xmpp_federation_gateway_finish(ngx_xmpp_federation_ctx_t *ctx);
void ngx_xmpp_federation_gateway_close(ngx_xmpp_federation_ctx_t *ctx);
ngx_int_t ngx_xmpp_federation_bounce(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);

/* ngx_xmpp_federation_ssl.c */
char *ngx_xmpp_federation_ssl_merge(ngx_conf_t *cf,
    ngx_xmpp_federation_srv_conf_t *prev,
    ngx_xmpp_federation_srv_conf_t *conf);
ngx_int_t ngx_xmpp_federation_starttls(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
void ngx_xmpp_federation_tls_handshake(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);
int ngx_xmpp_federation_verify_chain(ngx_xmpp_federation_srv_conf_t *conf,
    ngx_xmpp_federation_ctx_t *ctx, X509_STORE_CTX *xs, ngx_log_t *log);

/* ngx_xmpp_federation_sasl.c */
ngx_int_t ngx_xmpp_federation_sasl_usable(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx, const char **reason);
ngx_int_t ngx_xmpp_federation_auth(ngx_stream_session_t *s,
    ngx_xmpp_federation_ctx_t *ctx);


/*
 * LEN bytes at A and B alike: names and domains are mostly 4 to 16
 * bytes, compared as two words that overlap, without a call
 */

static ngx_inline ngx_uint_t
ngx_xmpp_federation_same(u_char *a, u_char *b, size_t len)
{
    uint32_t  a4[2], b4[2];
    uint64_t  a8[2], b8[2];

    if (len >= 8 && len <= 16) {
        ngx_memcpy(&a8[0], a, 8);
        ngx_memcpy(&a8[1], a + len - 8, 8);
        ngx_memcpy(&b8[0], b, 8);
        ngx_memcpy(&b8[1], b + len - 8, 8);

        return ((a8[0] ^ b8[0]) | (a8[1] ^ b8[1])) == 0;
    }

    if (len >= 4 && len < 8) {
        ngx_memcpy(&a4[0], a, 4);
        ngx_memcpy(&a4[1], a + len - 4, 4);
        ngx_memcpy(&b4[0], b, 4);
        ngx_memcpy(&b4[1], b + len - 4, 4);

        return ((a4[0] ^ b4[0]) | (a4[1] ^ b4[1])) == 0;
    }

    return ngx_memcmp(a, b, len) == 0;
}


extern ngx_module_t  ngx_stream_xmpp_federation_module;


#endif /* _NGX_XMPP_FEDERATION_H_INCLUDED_ */
