
/*
 * Copyright (C) ngx_xmpp_federation_module authors
 */


/*
 * Streaming XMPP parser on top of expat.
 *
 * The parser is fed raw bytes as they arrive and reports one event at a
 * time: the stream header, each complete top-level element (with its byte
 * offsets in the stream, so that the relay can forward the original bytes),
 * the end of the stream, or an error with its RFC 6120 stream error
 * condition.  expat is suspended on each event and resumed by the caller,
 * so nothing is queued and nothing is allocated per element: the values of
 * an element live in a scratch buffer reused by the next one.
 *
 * Restricted XML (RFC 6120 section 11.1): DOCTYPE, processing
 * instructions, comments and entity declarations stop the parser with
 * restricted-xml.
 *
 * The fast path: on a stream whose caller keeps the bytes (the partner's
 * side, ngx_xmpp_federation_parser_scan()), a stanza between top-level
 * elements is scanned here rather than by expat when it is made of what
 * stanzas are made of: unprefixed ASCII names, quoted attribute values,
 * text in UTF-8, the five predefined entities, character references.
 * The scan accepts only well-formed XML and knows nothing else: whatever
 * it is not sure of (a prefix, CDATA, a comment, another entity, a bad
 * byte, a stanza over the size limit) it leaves to expat, which parses
 * that element from its first byte and reports it, or its error, as
 * always.  expat is fed in pieces ending with '>', so that nothing after
 * the element it reports stays inside expat, and its byte offsets are
 * those of the stream less what the scan took.
 */


#include "ngx_xmpp_federation.h"


#define NGX_XMPP_FEDERATION_NS_SEP    ' '
#define NGX_XMPP_FEDERATION_SCRATCH   8192
#define NGX_XMPP_FEDERATION_TEXT_MAX  4096

#define NGX_XMPP_FEDERATION_SCAN_DEPTH  32
#define NGX_XMPP_FEDERATION_SCAN_ATTRS  16
#define NGX_XMPP_FEDERATION_SCAN_TRIES  4

#define NGX_XMPP_FEDERATION_ATTR_FROM   0x01
#define NGX_XMPP_FEDERATION_ATTR_TO     0x02
#define NGX_XMPP_FEDERATION_ATTR_ID     0x04
#define NGX_XMPP_FEDERATION_ATTR_TYPE   0x08
#define NGX_XMPP_FEDERATION_ATTR_XMLNS  0x10

/* AVX2 where the CPU has it, chosen at run time: the build is for any */

#if (NGX_XMPP_FEDERATION_SSE2 && defined __x86_64__                        \
     && (__GNUC__ >= 5 || defined __clang__))
#define NGX_XMPP_FEDERATION_AVX2  1
#include <immintrin.h>
#endif


typedef struct {
    ngx_xmpp_federation_parser_t  *parser;
    u_char                        *scratch;
    u_char                        *pos;
    u_char                        *end;
} ngx_xmpp_federation_parse_ud_t;


typedef struct {
    u_char                        *name;
    size_t                         len;
} ngx_xmpp_federation_scan_name_t;


static void ngx_xmpp_federation_parser_init(ngx_xmpp_federation_parser_t *p);
static ngx_int_t ngx_xmpp_federation_parser_expat(
    ngx_xmpp_federation_parser_t *p);
static ngx_int_t ngx_xmpp_federation_parser_scratch(
    ngx_xmpp_federation_parser_t *p);
static ngx_int_t ngx_xmpp_federation_parser_nomem(
    ngx_xmpp_federation_parser_t *p);
static void ngx_xmpp_federation_parser_cleanup(void *data);
static ngx_int_t ngx_xmpp_federation_keep(ngx_xmpp_federation_parser_t *p,
    u_char *data, size_t len);
static void ngx_xmpp_federation_settle(ngx_xmpp_federation_parser_t *p);
static ngx_int_t ngx_xmpp_federation_parse_status(
    ngx_xmpp_federation_parser_t *p, enum XML_Status status);
static ngx_int_t ngx_xmpp_federation_advance(
    ngx_xmpp_federation_parser_t *p);
static ngx_int_t ngx_xmpp_federation_scan(ngx_xmpp_federation_parser_t *p);
static ngx_int_t ngx_xmpp_federation_scan_stanza(
    ngx_xmpp_federation_parser_t *p, u_char *pos, u_char *last,
    u_char **end);
static ngx_int_t ngx_xmpp_federation_scan_tag(
    ngx_xmpp_federation_parser_t *p, u_char **pos, u_char *last,
    ngx_uint_t top, ngx_xmpp_federation_scan_name_t *name);
static ngx_int_t ngx_xmpp_federation_scan_value(u_char **pos, u_char *last,
    u_char quote, ngx_uint_t *simple);
static ngx_int_t ngx_xmpp_federation_scan_ref(u_char **pos, u_char *last);
static ngx_inline ngx_uint_t ngx_xmpp_federation_scan_stanza_name(
    u_char *name, size_t len);
static ngx_inline ngx_uint_t ngx_xmpp_federation_scan_known(u_char *name,
    size_t len);
static ngx_uint_t ngx_xmpp_federation_scan_known_eq(u_char *name,
    size_t *len);
static ngx_int_t ngx_xmpp_federation_scan_close(
    ngx_xmpp_federation_parser_t *p, u_char *pos, u_char *last, u_char **end);
static ngx_int_t ngx_xmpp_federation_scan_utf8(u_char **pos, u_char *last);
static u_char *ngx_xmpp_federation_scan_plain(u_char *pos, u_char *last,
    u_char quote);
static u_char *ngx_xmpp_federation_scan_text(u_char *pos, u_char *last);
#if (NGX_XMPP_FEDERATION_AVX2)
static u_char *ngx_xmpp_federation_scan_text_avx2(u_char *pos, u_char *last)
    __attribute__((target("avx2")));
#endif
static ngx_int_t ngx_xmpp_federation_scan_store(
    ngx_xmpp_federation_parser_t *p, ngx_str_t *dst, u_char *src,
    size_t len);
static void ngx_xmpp_federation_fail(ngx_xmpp_federation_parser_t *p,
    ngx_xmpp_federation_error_e err, const char *reason);
static ngx_int_t ngx_xmpp_federation_check_size(
    ngx_xmpp_federation_parser_t *p);
static ngx_int_t ngx_xmpp_federation_store(ngx_xmpp_federation_parser_t *p,
    ngx_str_t *dst, const char *src, size_t len);
static void ngx_xmpp_federation_split_name(ngx_xmpp_federation_parser_t *p,
    const XML_Char *qname);
static void ngx_xmpp_federation_attributes(ngx_xmpp_federation_parser_t *p,
    const XML_Char **atts);

static void XMLCALL ngx_xmpp_federation_start_element(void *data,
    const XML_Char *name, const XML_Char **atts);
static void XMLCALL ngx_xmpp_federation_end_element(void *data,
    const XML_Char *name);
static void XMLCALL ngx_xmpp_federation_character_data(void *data,
    const XML_Char *s, int len);
static void XMLCALL ngx_xmpp_federation_start_namespace(void *data,
    const XML_Char *prefix, const XML_Char *uri);
static void ngx_xmpp_federation_ns_decl(ngx_xmpp_federation_parser_t *p,
    const XML_Char *prefix, const XML_Char *uri);
static void XMLCALL ngx_xmpp_federation_xml_decl(void *data,
    const XML_Char *version, const XML_Char *encoding, int standalone);
static void XMLCALL ngx_xmpp_federation_doctype(void *data,
    const XML_Char *name, const XML_Char *sysid, const XML_Char *pubid,
    int has_internal_subset);
static void XMLCALL ngx_xmpp_federation_pi(void *data,
    const XML_Char *target, const XML_Char *pidata);
static void XMLCALL ngx_xmpp_federation_comment(void *data,
    const XML_Char *text);
static void XMLCALL ngx_xmpp_federation_entity_decl(void *data,
    const XML_Char *name, int is_parameter_entity, const XML_Char *value,
    int value_length, const XML_Char *base, const XML_Char *sysid,
    const XML_Char *pubid, const XML_Char *notation);


ngx_xmpp_federation_parser_t *
ngx_xmpp_federation_parser_create(ngx_pool_t *pool, ngx_log_t *log,
    size_t max_header_size, size_t max_stanza_size)
{
    ngx_pool_cleanup_t            *cln;
    ngx_xmpp_federation_parser_t  *p;

    p = ngx_pcalloc(pool, sizeof(ngx_xmpp_federation_parser_t)
                          + sizeof(ngx_xmpp_federation_parse_ud_t));
    if (p == NULL) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_xmpp_federation_parser_cleanup;
    cln->data = p;

    p->pool = pool;
    p->log = log;
    p->max_header_size = max_header_size;
    p->max_stanza_size = max_stanza_size;
    p->text_max = NGX_XMPP_FEDERATION_TEXT_MAX;

    /* expat and the scratch buffer come with the first bytes */

    ngx_xmpp_federation_parser_init(p);

    return p;
}


/*
 * A stream restart (after STARTTLS or SASL) begins a new XML document,
 * offsets from zero.  The expat instance of the old one starts afresh
 * (XML_ParserReset(): nothing of the old document, its buffers kept),
 * and is set up again as a new one is.
 */

ngx_int_t
ngx_xmpp_federation_parser_reset(ngx_xmpp_federation_parser_t *p)
{
    if (p->expat) {
        if (XML_ParserReset(p->expat, "UTF-8")) {
            /* an instance at hand: this cannot fail */
            (void) ngx_xmpp_federation_parser_expat(p);

        } else {
            XML_ParserFree(p->expat);
            p->expat = NULL;
        }
    }

    ngx_xmpp_federation_parser_init(p);

    return NGX_OK;
}


static void
ngx_xmpp_federation_parser_init(ngx_xmpp_federation_parser_t *p)
{
    if (p->header.data) {
        ngx_free(p->header.data);
        ngx_str_null(&p->header);
    }

    p->event = ngx_xmpp_ev_none;
    p->error = ngx_xmpp_err_none;
    p->reason = NULL;
    p->depth = 0;
    p->consumed = 0;
    p->fed = 0;
    p->skipped = 0;
    p->tries = 0;
    p->start = 0;
    p->end = 0;
    p->chunk = NULL;
    p->chunk_len = 0;
    p->default_ns_ok = 0;
    p->header_done = 0;
    p->stopped = 0;
    p->close_pending = 0;
    p->suspended = 0;
    p->punt = 0;
    p->pending = 0;
    p->clean = 0;
    p->waking = 0;
    ngx_str_null(&p->ns_decls);
}


/*
 * A new expat instance, or one just reset, set up for a stream.  Its hash
 * salt comes from our pool of random bytes: expat's own would cost a
 * getrandom() call for every instance.
 */

static ngx_int_t
ngx_xmpp_federation_parser_expat(ngx_xmpp_federation_parser_t *p)
{
    XML_Parser     x;
    unsigned long  salt;

    x = p->expat;

    if (x == NULL) {
        x = XML_ParserCreateNS("UTF-8", NGX_XMPP_FEDERATION_NS_SEP);
        if (x == NULL) {
            ngx_log_error(NGX_LOG_ALERT, p->log, 0,
                          "XML_ParserCreateNS() failed");
            return NGX_ERROR;
        }
    }

    /* when the pool fails, expat draws a salt itself */

    if (ngx_xmpp_federation_random((u_char *) &salt, sizeof(salt)) == NGX_OK
        && salt != 0)
    {
        (void) XML_SetHashSalt(x, salt);
    }

    XML_SetUserData(x, (ngx_xmpp_federation_parse_ud_t *) (p + 1));
    XML_SetReturnNSTriplet(x, 1);
    XML_SetElementHandler(x, ngx_xmpp_federation_start_element,
                          ngx_xmpp_federation_end_element);
    XML_SetCharacterDataHandler(x, ngx_xmpp_federation_character_data);
    XML_SetStartNamespaceDeclHandler(x, ngx_xmpp_federation_start_namespace);
    XML_SetXmlDeclHandler(x, ngx_xmpp_federation_xml_decl);
    XML_SetStartDoctypeDeclHandler(x, ngx_xmpp_federation_doctype);
    XML_SetProcessingInstructionHandler(x, ngx_xmpp_federation_pi);
    XML_SetCommentHandler(x, ngx_xmpp_federation_comment);
    XML_SetEntityDeclHandler(x, ngx_xmpp_federation_entity_decl);

#if (NGX_XMPP_FEDERATION_REPARSE_DEFERRAL)
    /* a network stream must see each tag as soon as its last byte is in */
    (void) XML_SetReparseDeferralEnabled(x, XML_FALSE);
#endif

    p->expat = x;

    return NGX_OK;
}


/* not zeroed: an idle stream keeps only what it has touched resident */

static ngx_int_t
ngx_xmpp_federation_parser_scratch(ngx_xmpp_federation_parser_t *p)
{
    ngx_xmpp_federation_parse_ud_t  *ud;

    if (p->scratch) {
        return NGX_OK;
    }

    p->scratch = ngx_alloc(NGX_XMPP_FEDERATION_SCRATCH, p->log);
    if (p->scratch == NULL) {
        return ngx_xmpp_federation_parser_nomem(p);
    }

    ud = (ngx_xmpp_federation_parse_ud_t *) (p + 1);
    ud->parser = p;
    ud->scratch = p->scratch;
    ud->pos = ud->scratch;
    ud->end = ud->scratch + NGX_XMPP_FEDERATION_SCRATCH;

    return NGX_OK;
}


static ngx_int_t
ngx_xmpp_federation_parser_nomem(ngx_xmpp_federation_parser_t *p)
{
    p->stopped = 1;
    p->event = ngx_xmpp_ev_error;
    p->error = ngx_xmpp_err_internal_server_error;
    p->reason = "no memory for the parser";

    return NGX_ERROR;
}


static void
ngx_xmpp_federation_parser_cleanup(void *data)
{
    ngx_xmpp_federation_parser_t  *p = data;

    if (p->expat) {
        XML_ParserFree(p->expat);
        p->expat = NULL;
    }

    if (p->scratch) {
        ngx_free(p->scratch);
        p->scratch = NULL;
    }

    if (p->header.data) {
        ngx_free(p->header.data);
        ngx_str_null(&p->header);
    }
}


/*
 * An idle stream between top-level elements needs neither expat nor the
 * scratch buffer: both go, and come back with the next bytes.  Only
 * when nothing is under way: expat not suspended, no element begun (by
 * expat, or by a partial scan), all given bytes parsed, and for a parser
 * fed by chunks, nothing after the last element but whitespace.
 */

ngx_int_t
ngx_xmpp_federation_parser_sleep(ngx_xmpp_federation_parser_t *p)
{
    if (!p->header_done || p->depth != 1 || p->stopped || p->suspended
        || p->close_pending || p->punt || p->pending
        || p->fed != p->consumed || (!p->scan && !p->clean)
        || p->header.data == NULL)
    {
        return NGX_DECLINED;
    }

    if (p->expat) {
        XML_ParserFree(p->expat);
        p->expat = NULL;
    }

    if (p->scratch) {
        ngx_free(p->scratch);
        p->scratch = NULL;
    }

    p->tries = 0;

    ngx_log_debug1(NGX_LOG_DEBUG_STREAM, p->log, 0,
                   "xmpp parser: asleep at %O", p->fed);

    return NGX_OK;
}


/*
 * expat when it is needed: a new stream, or after a sleep a fresh
 * instance that reads the stream header again, and so stands at depth 1
 * with the header's namespace declarations.  Its byte offsets then count
 * the header once more: "skipped" makes up for it.
 */

ngx_int_t
ngx_xmpp_federation_parser_wake(ngx_xmpp_federation_parser_t *p)
{
    enum XML_Status  status;

    if (ngx_xmpp_federation_parser_scratch(p) != NGX_OK) {
        return NGX_ERROR;
    }

    if (p->expat) {
        return NGX_OK;
    }

    if (ngx_xmpp_federation_parser_expat(p) != NGX_OK) {
        return ngx_xmpp_federation_parser_nomem(p);
    }

    if (!p->header_done) {
        return NGX_OK;
    }

    p->depth = 0;
    p->waking = 1;

    status = XML_Parse(p->expat, (const char *) p->header.data,
                       (int) p->header.len, 0);

    p->waking = 0;

    if (status != XML_STATUS_OK || p->depth != 1) {
        ngx_log_error(NGX_LOG_ALERT, p->log, 0,
                      "the kept XMPP stream header did not parse again");

        p->stopped = 1;
        p->event = ngx_xmpp_ev_error;
        p->error = ngx_xmpp_err_internal_server_error;
        p->reason = "the stream header did not parse again";
        return NGX_ERROR;
    }

    p->skipped = p->fed - (off_t) p->header.len;

    ngx_log_debug1(NGX_LOG_DEBUG_STREAM, p->log, 0,
                   "xmpp parser: awake at %O", p->fed);

    return NGX_OK;
}


/*
 * The bytes expat is given until the header is complete: the header is
 * kept, to read it again after a sleep.
 */

static ngx_int_t
ngx_xmpp_federation_keep(ngx_xmpp_federation_parser_t *p, u_char *data,
    size_t len)
{
    if (p->header.data == NULL) {
        p->header.data = ngx_alloc(p->max_header_size, p->log);
        if (p->header.data == NULL) {
            return ngx_xmpp_federation_parser_nomem(p);
        }
    }

    len = ngx_min(len, p->max_header_size - p->header.len);

    ngx_memcpy(p->header.data + p->header.len, data, len);
    p->header.len += len;

    return NGX_OK;
}


/* whether expat holds nothing after the last top-level element but space */

static void
ngx_xmpp_federation_settle(ngx_xmpp_federation_parser_t *p)
{
    u_char  *pos, *last;
    off_t    start;

    pos = p->chunk;
    last = p->chunk + p->chunk_len;
    start = p->consumed - (off_t) p->chunk_len;

    if (p->end >= start) {
        pos += p->end - start;
        p->clean = 1;
    }

    while (pos < last) {
        if (!ngx_xmpp_federation_ws(*pos)) {
            p->clean = 0;
            return;
        }

        pos++;
    }
}


/*
 * Feeds a chunk.  Returns NGX_OK with p->event set when an event is ready
 * (call ngx_xmpp_federation_parse_next() to go on with the rest of the
 * chunk), NGX_AGAIN when the chunk is consumed, NGX_ERROR with p->error
 * set on a bad stream.
 */

ngx_int_t
ngx_xmpp_federation_parse(ngx_xmpp_federation_parser_t *p, u_char *data,
    size_t len)
{
    ngx_int_t        rc;
    enum XML_Status  status;

    if (p->stopped) {
        return NGX_ERROR;
    }

    if (ngx_xmpp_federation_parser_scratch(p) != NGX_OK) {
        return NGX_ERROR;
    }

    p->event = ngx_xmpp_ev_none;
    p->consumed += len;

    if (p->scan) {
        /* the bytes are those of the caller's buffer, at p->fed on */
        return ngx_xmpp_federation_advance(p);
    }

    if (ngx_xmpp_federation_parser_wake(p) != NGX_OK) {
        return NGX_ERROR;
    }

    if (!p->header_done && ngx_xmpp_federation_keep(p, data, len) != NGX_OK)
    {
        return NGX_ERROR;
    }

    p->fed = p->consumed;
    p->chunk = data;
    p->chunk_len = len;

    status = XML_Parse(p->expat, (const char *) data, (int) len, 0);

    rc = ngx_xmpp_federation_parse_status(p, status);

    if (rc == NGX_AGAIN) {
        ngx_xmpp_federation_settle(p);
    }

    return rc;
}


/*
 * The fast path is for a parser whose bytes stay in the caller's buffer
 * (*buf, its start at stream offset *base) at least from the beginning
 * of the element being parsed.
 */

void
ngx_xmpp_federation_parser_scan(ngx_xmpp_federation_parser_t *p,
    ngx_buf_t **buf, off_t *base)
{
    p->buf = buf;
    p->base = base;
    p->scan = 1;
}


ngx_int_t
ngx_xmpp_federation_parse_next(ngx_xmpp_federation_parser_t *p)
{
    ngx_int_t        rc;
    enum XML_Status  status;

    if (p->stopped) {
        return NGX_ERROR;
    }

    if (p->close_pending) {
        p->close_pending = 0;
        p->event = ngx_xmpp_ev_close;
        return NGX_OK;
    }

    p->event = ngx_xmpp_ev_none;

    if (!p->scan) {
        p->suspended = 0;

        status = XML_ResumeParser(p->expat);

        rc = ngx_xmpp_federation_parse_status(p, status);

        if (rc == NGX_AGAIN) {
            ngx_xmpp_federation_settle(p);
        }

        return rc;
    }

    if (p->suspended) {
        p->suspended = 0;

        status = XML_ResumeParser(p->expat);

        rc = ngx_xmpp_federation_parse_status(p, status);
        if (rc != NGX_AGAIN) {
            return rc;
        }

        if (p->depth == 1) {
            /* expat is done with the element it was given */
            p->punt = 0;
        }
    }

    return ngx_xmpp_federation_advance(p);
}


/* the scan between elements, expat for the rest, until an event */

static ngx_int_t
ngx_xmpp_federation_advance(ngx_xmpp_federation_parser_t *p)
{
    u_char           *pos, *last, *gt;
    ngx_int_t         rc;
    enum XML_Status   status;

    if (p->pending) {
        /* a partial scan starts again from the element's first byte */
        p->pending = 0;
        p->depth = 1;
    }

    while (p->fed < p->consumed) {

        if (p->header_done && p->depth == 1 && !p->punt) {

            rc = ngx_xmpp_federation_scan(p);

            if (rc != NGX_DECLINED) {
                return rc;
            }

            ngx_log_debug1(NGX_LOG_DEBUG_STREAM, p->log, 0,
                           "xmpp parse: expat takes the element at %O",
                           p->fed);

            p->punt = 1;
            continue;
        }

        /* expat only when the scan cannot do without it */

        if (ngx_xmpp_federation_parser_wake(p) != NGX_OK) {
            return NGX_ERROR;
        }

        pos = (*p->buf)->start + (p->fed - *p->base);
        last = (*p->buf)->start + (p->consumed - *p->base);

        gt = ngx_strlchr(pos, last, '>');
        if (gt) {
            last = gt + 1;
        }

        if (!p->header_done
            && ngx_xmpp_federation_keep(p, pos, last - pos) != NGX_OK)
        {
            return NGX_ERROR;
        }

        p->fed += last - pos;

        status = XML_Parse(p->expat, (const char *) pos, (int) (last - pos),
                           0);

        rc = ngx_xmpp_federation_parse_status(p, status);
        if (rc != NGX_AGAIN) {
            return rc;
        }
    }

    return NGX_AGAIN;
}


static ngx_int_t
ngx_xmpp_federation_parse_status(ngx_xmpp_federation_parser_t *p,
    enum XML_Status status)
{
    enum XML_Error  err;

    switch (status) {

    case XML_STATUS_SUSPENDED:
        p->suspended = 1;
        return NGX_OK;

    case XML_STATUS_OK:
        if (ngx_xmpp_federation_check_size(p) != NGX_OK) {
            p->stopped = 1;
            return NGX_ERROR;
        }

        return NGX_AGAIN;

    default:
        break;
    }

    p->stopped = 1;
    p->event = ngx_xmpp_ev_error;

    if (p->error != ngx_xmpp_err_none) {
        /* stopped by one of our handlers */
        return NGX_ERROR;
    }

    err = XML_GetErrorCode(p->expat);

    switch (err) {

    case XML_ERROR_UNKNOWN_ENCODING:
    case XML_ERROR_INCORRECT_ENCODING:
        p->error = ngx_xmpp_err_unsupported_encoding;
        break;

    default:
        p->error = ngx_xmpp_err_not_well_formed;
        break;
    }

    p->reason = XML_ErrorString(err);

    return NGX_ERROR;
}


static void
ngx_xmpp_federation_fail(ngx_xmpp_federation_parser_t *p,
    ngx_xmpp_federation_error_e err, const char *reason)
{
    if (p->error == ngx_xmpp_err_none) {
        p->error = err;
        p->reason = reason;
    }

    (void) XML_StopParser(p->expat, XML_FALSE);
}


/* the header and each element are bounded even before they are complete */

static ngx_int_t
ngx_xmpp_federation_check_size(ngx_xmpp_federation_parser_t *p)
{
    if (!p->header_done) {
        if ((size_t) p->fed > p->max_header_size) {
            p->event = ngx_xmpp_ev_error;
            p->error = ngx_xmpp_err_policy_violation;
            p->reason = "stream header is larger than "
                        "xmpp_federation_max_header_size";
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    if ((p->depth > 1 || p->punt)
        && (size_t) (p->fed - p->start) > p->max_stanza_size)
    {
        p->event = ngx_xmpp_ev_error;
        p->error = ngx_xmpp_err_policy_violation;
        p->reason = "stanza is larger than xmpp_federation_max_stanza_size";
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_xmpp_federation_store(ngx_xmpp_federation_parser_t *p, ngx_str_t *dst,
    const char *src, size_t len)
{
    ngx_xmpp_federation_parse_ud_t  *ud;

    ud = (ngx_xmpp_federation_parse_ud_t *) (p + 1);

    if ((size_t) (ud->end - ud->pos) < len) {
        ngx_xmpp_federation_fail(p, ngx_xmpp_err_policy_violation,
                                 "names and addresses of an element are "
                                 "too long");
        return NGX_ERROR;
    }

    dst->data = ud->pos;
    dst->len = len;
    ud->pos = ngx_cpymem(ud->pos, src, len);

    return NGX_OK;
}


/* expat with triplets: "uri local prefix", "uri local" or "local" */

static void
ngx_xmpp_federation_split_name(ngx_xmpp_federation_parser_t *p,
    const XML_Char *qname)
{
    const char  *s, *sep1, *sep2;

    s = qname;

    sep1 = strchr(s, NGX_XMPP_FEDERATION_NS_SEP);

    if (sep1 == NULL) {
        ngx_str_null(&p->ns);
        ngx_str_null(&p->prefix);
        (void) ngx_xmpp_federation_store(p, &p->name, s, ngx_strlen(s));
        return;
    }

    (void) ngx_xmpp_federation_store(p, &p->ns, s, sep1 - s);

    sep2 = strchr(sep1 + 1, NGX_XMPP_FEDERATION_NS_SEP);

    if (sep2 == NULL) {
        ngx_str_null(&p->prefix);
        (void) ngx_xmpp_federation_store(p, &p->name, sep1 + 1,
                                         ngx_strlen(sep1 + 1));
        return;
    }

    (void) ngx_xmpp_federation_store(p, &p->name, sep1 + 1, sep2 - sep1 - 1);
    (void) ngx_xmpp_federation_store(p, &p->prefix, sep2 + 1,
                                     ngx_strlen(sep2 + 1));
}


/* the addressing attributes are unqualified */

static void
ngx_xmpp_federation_attributes(ngx_xmpp_federation_parser_t *p,
    const XML_Char **atts)
{
    size_t      len;
    ngx_str_t  *dst;

    ngx_str_null(&p->from);
    ngx_str_null(&p->to);
    ngx_str_null(&p->id);
    ngx_str_null(&p->type);
    ngx_str_null(&p->version);
    ngx_str_null(&p->mechanism);

    for ( /* void */ ; atts[0]; atts += 2) {

        len = ngx_strlen(atts[0]);

        if (len == 4 && ngx_strncmp(atts[0], "from", 4) == 0) {
            dst = &p->from;

        } else if (len == 2 && ngx_strncmp(atts[0], "to", 2) == 0) {
            dst = &p->to;

        } else if (len == 2 && ngx_strncmp(atts[0], "id", 2) == 0) {
            dst = &p->id;

        } else if (len == 4 && ngx_strncmp(atts[0], "type", 4) == 0) {
            dst = &p->type;

        } else if (len == 7 && ngx_strncmp(atts[0], "version", 7) == 0) {
            dst = &p->version;

        } else if (len == 9 && ngx_strncmp(atts[0], "mechanism", 9) == 0) {
            dst = &p->mechanism;

        } else {
            continue;
        }

        if (ngx_xmpp_federation_store(p, dst, atts[1], ngx_strlen(atts[1]))
            != NGX_OK)
        {
            return;
        }
    }
}


static void XMLCALL
ngx_xmpp_federation_start_element(void *data, const XML_Char *name,
    const XML_Char **atts)
{
    ngx_xmpp_federation_parse_ud_t  *ud = data;

    off_t                          end;
    u_char                        *kept;
    ngx_xmpp_federation_parser_t  *p;

    p = ud->parser;

    if (p->depth == 0) {

        if (p->waking) {
            /* the kept header, read again: the stream goes on */
            p->depth = 1;
            return;
        }

        /* the stream header */

        ud->pos = ud->scratch;
        p->start = 0;
        end = XML_GetCurrentByteIndex(p->expat) + p->skipped
              + XML_GetCurrentByteCount(p->expat);
        p->end = end;

        if ((size_t) end > p->max_header_size) {
            ngx_xmpp_federation_fail(p, ngx_xmpp_err_policy_violation,
                                     "stream header is larger than "
                                     "xmpp_federation_max_header_size");
            return;
        }

        /* the header's own bytes are kept, for a sleep, and no more */

        if (end == 0 || (size_t) end > p->header.len) {
            ngx_xmpp_federation_fail(p, ngx_xmpp_err_internal_server_error,
                                     "stream header not kept");
            return;
        }

        kept = ngx_alloc((size_t) end, p->log);
        if (kept == NULL) {
            ngx_xmpp_federation_fail(p, ngx_xmpp_err_internal_server_error,
                                     "no memory for the stream header");
            return;
        }

        ngx_memcpy(kept, p->header.data, (size_t) end);
        ngx_free(p->header.data);

        p->header.data = kept;
        p->header.len = end;

        ngx_xmpp_federation_split_name(p, name);
        ngx_xmpp_federation_attributes(p, atts);

        if (p->error != ngx_xmpp_err_none) {
            return;
        }

        p->depth = 1;
        p->header_done = 1;
        p->event = ngx_xmpp_ev_header;
        (void) XML_StopParser(p->expat, XML_TRUE);
        return;
    }

    if (p->depth == 1) {

        /* a top-level element: a stanza or a negotiation element */

        ud->pos = ud->scratch;
        p->start = XML_GetCurrentByteIndex(p->expat) + p->skipped;
        ngx_str_null(&p->text);

        ngx_xmpp_federation_split_name(p, name);
        ngx_xmpp_federation_attributes(p, atts);

        if (p->error != ngx_xmpp_err_none) {
            return;
        }

        /* the character data of the element goes after the names */
        p->text.data = ud->pos;
    }

    p->depth++;

    if ((size_t) (XML_GetCurrentByteIndex(p->expat) + p->skipped
                  + XML_GetCurrentByteCount(p->expat) - p->start)
        > p->max_stanza_size)
    {
        ngx_xmpp_federation_fail(p, ngx_xmpp_err_policy_violation,
                                 "stanza is larger than "
                                 "xmpp_federation_max_stanza_size");
    }
}


static void XMLCALL
ngx_xmpp_federation_end_element(void *data, const XML_Char *name)
{
    ngx_xmpp_federation_parse_ud_t  *ud = data;

    off_t                          index;
    ngx_xmpp_federation_parser_t  *p;

    p = ud->parser;

    p->depth--;

    if (p->depth == 0) {

        if (p->event == ngx_xmpp_ev_header) {
            /* <stream:stream/>: the header first, the close next */
            p->close_pending = 1;
            return;
        }

        p->event = ngx_xmpp_ev_close;
        (void) XML_StopParser(p->expat, XML_TRUE);
        return;
    }

    if (p->depth > 1) {
        return;
    }

    /*
     * The end of the element: for an empty-element tag expat reports
     * no bytes of its own here, the tag ends where the current event does.
     */

    index = XML_GetCurrentByteIndex(p->expat) + p->skipped;
    p->end = index + XML_GetCurrentByteCount(p->expat);

    if ((size_t) (p->end - p->start) > p->max_stanza_size) {
        ngx_xmpp_federation_fail(p, ngx_xmpp_err_policy_violation,
                                 "stanza is larger than "
                                 "xmpp_federation_max_stanza_size");
        return;
    }

    p->event = ngx_xmpp_ev_element;
    (void) XML_StopParser(p->expat, XML_TRUE);
}


static void XMLCALL
ngx_xmpp_federation_character_data(void *data, const XML_Char *s, int len)
{
    ngx_xmpp_federation_parse_ud_t  *ud = data;

    size_t                         n;
    ngx_xmpp_federation_parser_t  *p;

    p = ud->parser;

    if (p->depth == 1) {
        /* between stanzas only whitespace: keepalives */

        for (n = 0; n < (size_t) len; n++) {
            if (s[n] != ' ' && s[n] != '\t' && s[n] != '\r' && s[n] != '\n')
            {
                ngx_xmpp_federation_fail(p, ngx_xmpp_err_not_well_formed,
                                         "text between stanzas");
                return;
            }
        }

        return;
    }

    if (p->depth != 2) {
        /* text deeper in a stanza */
        return;
    }

    /* the direct text of a top-level element, such as a dialback key */

    n = ngx_min((size_t) len, p->text_max - p->text.len);
    n = ngx_min(n, (size_t) (ud->end - ud->pos));

    if (p->text.data + p->text.len != ud->pos) {
        return;
    }

    ud->pos = ngx_cpymem(ud->pos, s, n);
    p->text.len += n;
}


static void XMLCALL
ngx_xmpp_federation_start_namespace(void *data, const XML_Char *prefix,
    const XML_Char *uri)
{
    ngx_xmpp_federation_parse_ud_t  *ud = data;

    size_t                         len;
    ngx_xmpp_federation_parser_t  *p;

    p = ud->parser;

    if (p->depth != 0 || p->waking) {
        return;
    }

    if (prefix != NULL) {
        ngx_xmpp_federation_ns_decl(p, prefix, uri);
        return;
    }

    /* the default namespace of the stream: the content namespace */

    len = uri ? ngx_strlen(uri) : 0;

    p->default_ns_ok = (len == sizeof(NGX_XMPP_FEDERATION_NS_SERVER) - 1
                        && ngx_strncmp(uri, NGX_XMPP_FEDERATION_NS_SERVER,
                                       len)
                           == 0);
}


/*
 * Prefixes the header declares for the stanzas to use; the relay declares
 * them again on the stream to the gateway.  "stream" and "db" are ours.
 */

static void
ngx_xmpp_federation_ns_decl(ngx_xmpp_federation_parser_t *p,
    const XML_Char *prefix, const XML_Char *uri)
{
    u_char     *d;
    size_t      plen, len;
    ngx_str_t   value;

    plen = ngx_strlen(prefix);

    if ((plen == 6 && ngx_strncmp(prefix, "stream", 6) == 0)
        || (plen == 2 && ngx_strncmp(prefix, "db", 2) == 0)
        || uri == NULL)
    {
        return;
    }

    value.data = (u_char *) uri;
    value.len = ngx_strlen(uri);

    len = p->ns_decls.len + sizeof(" xmlns:=''") - 1 + plen
          + ngx_xmpp_federation_escape(NULL, &value);

    if (len > p->max_header_size) {
        ngx_xmpp_federation_fail(p, ngx_xmpp_err_policy_violation,
                                 "namespace declarations too long");
        return;
    }

    d = ngx_pnalloc(p->pool, len);
    if (d == NULL) {
        ngx_xmpp_federation_fail(p, ngx_xmpp_err_internal_server_error,
                                 "no memory");
        return;
    }

    if (p->ns_decls.len) {
        ngx_memcpy(d, p->ns_decls.data, p->ns_decls.len);
    }

    p->ns_decls.data = d;
    d += p->ns_decls.len;
    d = ngx_sprintf(d, " xmlns:%s='", prefix);
    d += ngx_xmpp_federation_escape(d, &value);
    *d++ = '\'';
    p->ns_decls.len = d - p->ns_decls.data;
}


static void XMLCALL
ngx_xmpp_federation_xml_decl(void *data, const XML_Char *version,
    const XML_Char *encoding, int standalone)
{
    ngx_xmpp_federation_parse_ud_t  *ud = data;

    if (encoding && ngx_strcasecmp((u_char *) encoding, (u_char *) "UTF-8")
                    != 0)
    {
        ngx_xmpp_federation_fail(ud->parser,
                                 ngx_xmpp_err_unsupported_encoding,
                                 "XML declaration names an encoding other "
                                 "than UTF-8");
    }
}


static void XMLCALL
ngx_xmpp_federation_doctype(void *data, const XML_Char *name,
    const XML_Char *sysid, const XML_Char *pubid, int has_internal_subset)
{
    ngx_xmpp_federation_parse_ud_t  *ud = data;

    ngx_xmpp_federation_fail(ud->parser, ngx_xmpp_err_restricted_xml,
                             "document type declaration");
}


static void XMLCALL
ngx_xmpp_federation_pi(void *data, const XML_Char *target,
    const XML_Char *pidata)
{
    ngx_xmpp_federation_parse_ud_t  *ud = data;

    ngx_xmpp_federation_fail(ud->parser, ngx_xmpp_err_restricted_xml,
                             "processing instruction");
}


static void XMLCALL
ngx_xmpp_federation_comment(void *data, const XML_Char *text)
{
    ngx_xmpp_federation_parse_ud_t  *ud = data;

    ngx_xmpp_federation_fail(ud->parser, ngx_xmpp_err_restricted_xml,
                             "comment");
}


static void XMLCALL
ngx_xmpp_federation_entity_decl(void *data, const XML_Char *name,
    int is_parameter_entity, const XML_Char *value, int value_length,
    const XML_Char *base, const XML_Char *sysid, const XML_Char *pubid,
    const XML_Char *notation)
{
    ngx_xmpp_federation_parse_ud_t  *ud = data;

    ngx_xmpp_federation_fail(ud->parser, ngx_xmpp_err_restricted_xml,
                             "entity declaration");
}


/* the fast path */

static uint32_t  ngx_xmpp_federation_text_plain[] = {
    0x00000000, /* 0000 0000 0000 0000  0000 0000 0000 0000 */

                /* ?>=< ;:98 7654 3210  /.-, +*)( '&%$ #"!  */
    0xafffffbf, /* 1010 1111 1111 1111  1111 1111 1011 1111 */

                /* _^]\ [ZYX WVUT SRQP  ONML KJIH GFED CBA@ */
    0xffffffff, /* 1111 1111 1111 1111  1111 1111 1111 1111 */

                /*  ~}| {zyx wvut srqp  onml kjih gfed cba` */
    0x7fffffff, /* 0111 1111 1111 1111  1111 1111 1111 1111 */

    0x00000000, /* 0000 0000 0000 0000  0000 0000 0000 0000 */
    0x00000000, /* 0000 0000 0000 0000  0000 0000 0000 0000 */
    0x00000000, /* 0000 0000 0000 0000  0000 0000 0000 0000 */
    0x00000000  /* 0000 0000 0000 0000  0000 0000 0000 0000 */
};


static uint32_t  ngx_xmpp_federation_value_plain[] = {
    0x00000000, /* 0000 0000 0000 0000  0000 0000 0000 0000 */

                /* ?>=< ;:98 7654 3210  /.-, +*)( '&%$ #"!  */
    0xefffff3b, /* 1110 1111 1111 1111  1111 1111 0011 1011 */

                /* _^]\ [ZYX WVUT SRQP  ONML KJIH GFED CBA@ */
    0xffffffff, /* 1111 1111 1111 1111  1111 1111 1111 1111 */

                /*  ~}| {zyx wvut srqp  onml kjih gfed cba` */
    0x7fffffff, /* 0111 1111 1111 1111  1111 1111 1111 1111 */

    0x00000000, /* 0000 0000 0000 0000  0000 0000 0000 0000 */
    0x00000000, /* 0000 0000 0000 0000  0000 0000 0000 0000 */
    0x00000000, /* 0000 0000 0000 0000  0000 0000 0000 0000 */
    0x00000000  /* 0000 0000 0000 0000  0000 0000 0000 0000 */
};


/* names in ASCII: 1 can start one, 2 can be in one; 4 is whitespace */

static u_char  ngx_xmpp_federation_class[] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 0, 0, 4, 0, 0,  /* 00    \t \n \r */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* 10 */
    4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 0,  /* 20 sp - . */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0,  /* 30 0-9 */
    0, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,  /* 40 A-O */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 3,  /* 50 P-Z _ */
    0, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,  /* 60 a-o */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0,  /* 70 p-z */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* 80 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* 90 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* a0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* b0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* c0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* d0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* e0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0   /* f0 */
};


#define ngx_xmpp_federation_name_start(ch)                                    \
    (ngx_xmpp_federation_class[ch] & 1)
#define ngx_xmpp_federation_name_char(ch)                                     \
    (ngx_xmpp_federation_class[ch] & 2)
#define ngx_xmpp_federation_space(ch)                                         \
    (ngx_xmpp_federation_class[ch] & 4)


#define ngx_xmpp_federation_in(set, ch)                                       \
    ((set)[(ch) >> 5] & (1U << ((ch) & 0x1f)))


/*
 * Between top-level elements: whitespace is skipped, a stanza is scanned
 * whole.  NGX_OK with an element or the stream's end, NGX_AGAIN for more
 * bytes, NGX_DECLINED for expat.
 */

static ngx_int_t
ngx_xmpp_federation_scan(ngx_xmpp_federation_parser_t *p)
{
    u_char                       *pos, *start, *last, *end;
    ngx_int_t                     rc;
    ngx_uint_t                    limited;
    ngx_xmpp_federation_event_e   event;

    start = (*p->buf)->start + (p->fed - *p->base);
    last = (*p->buf)->start + (p->consumed - *p->base);

    for (pos = start; pos < last && ngx_xmpp_federation_ws(*pos); pos++) {
        /* void */
    }

    /* whitespace keepalives: expat need not see them */

    p->fed += pos - start;
    p->skipped += pos - start;

    if (pos == last) {
        return NGX_AGAIN;
    }

    /* the size limit counts from here even while the start tag is open */

    p->start = p->fed;

    if (*pos != '<' || !p->default_ns_ok) {
        return NGX_DECLINED;
    }

    if (last - pos > 1 && pos[1] == '/') {

        if (ngx_xmpp_federation_scan_close(p, pos, last, &end) != NGX_OK) {
            return NGX_DECLINED;
        }

        event = ngx_xmpp_ev_close;

    } else {

        limited = 0;

        if ((size_t) (last - pos) > p->max_stanza_size) {
            last = pos + p->max_stanza_size;
            limited = 1;
        }

        rc = ngx_xmpp_federation_scan_stanza(p, pos, last, &end);

        if (rc == NGX_AGAIN && !limited
            && ++p->tries < NGX_XMPP_FEDERATION_SCAN_TRIES)
        {
            /* the caller sees the parser inside an element */
            p->pending = 1;
            p->depth = 2;
            return NGX_AGAIN;
        }

        if (rc != NGX_OK) {
            /* too large, or too slow in coming: expat goes on from here */
            p->tries = 0;
            return NGX_DECLINED;
        }

        event = ngx_xmpp_ev_element;
    }

    p->end = p->fed + (end - pos);
    p->skipped += end - pos;
    p->fed = p->end;
    p->tries = 0;
    p->event = event;

    if (event == ngx_xmpp_ev_close) {
        /* nothing is parsed after the end: not of the document */
        p->depth = 0;
        p->stopped = 1;
        p->error = ngx_xmpp_err_not_well_formed;
        p->reason = "data after the end of the stream";
    }

    return NGX_OK;
}


/*
 * The end of the stream: the end tag of the root as the kept header wrote
 * its name, "</stream:stream>" mostly.  NGX_OK with the byte after it;
 * anything else (another name, a tag cut by the read) is expat's, which
 * says what is wrong or waits for the rest.
 */

static ngx_int_t
ngx_xmpp_federation_scan_close(ngx_xmpp_federation_parser_t *p, u_char *pos,
    u_char *last, u_char **end)
{
    u_char  *h, *hlast, *name;
    size_t   len;

    h = p->header.data;
    hlast = h + p->header.len;

    /* the root's start tag: the first '<' not of the XML declaration */

    do {
        h = ngx_strlchr(h, hlast, '<');
        if (h == NULL || ++h == hlast) {
            return NGX_DECLINED;
        }

    } while (*h == '?');

    name = h;

    /* expat took the header: the name is well-formed, ends as names do */

    while (h < hlast && !ngx_xmpp_federation_space(*h) && *h != '>'
           && *h != '/')
    {
        h++;
    }

    len = h - name;

    if (len == 0 || (size_t) (last - pos) < 2 + len + 1
        || ngx_memcmp(pos + 2, name, len) != 0)
    {
        return NGX_DECLINED;
    }

    for (h = pos + 2 + len; h < last && ngx_xmpp_federation_space(*h); h++) {
        /* void */
    }

    if (h == last || *h != '>') {
        return NGX_DECLINED;
    }

    *end = h + 1;

    return NGX_OK;
}


static ngx_int_t
ngx_xmpp_federation_scan_stanza(ngx_xmpp_federation_parser_t *p,
    u_char *pos, u_char *last, u_char **end)
{
    size_t                            len;
    ngx_int_t                         rc;
    ngx_uint_t                        depth;
    ngx_xmpp_federation_scan_name_t   stack[NGX_XMPP_FEDERATION_SCAN_DEPTH];

    rc = ngx_xmpp_federation_scan_tag(p, &pos, last, 1, &stack[0]);

    if (rc == NGX_DONE) {
        *end = pos;
        return NGX_OK;
    }

    if (rc != NGX_OK) {
        return rc;
    }

    depth = 1;

    for ( ;; ) {

        if (pos == last) {
            return NGX_AGAIN;
        }

        if (*pos != '<') {
            /* text; between tags there is mostly none */

            pos = ngx_xmpp_federation_scan_text(pos, last);

            if (pos == last) {
                return NGX_AGAIN;
            }
        }

        switch (*pos) {

        case '<':
            break;

        case '&':
            rc = ngx_xmpp_federation_scan_ref(&pos, last);
            if (rc != NGX_OK) {
                return rc;
            }

            continue;

        case '>':
            /* "]]>" is not text; a tag is at least three bytes back */
            if (pos[-1] == ']' && pos[-2] == ']') {
                return NGX_DECLINED;
            }

            pos++;
            continue;

        case '\t':
        case '\n':
        case '\r':
            pos++;
            continue;

        default:
            rc = ngx_xmpp_federation_scan_utf8(&pos, last);
            if (rc != NGX_OK) {
                return rc;
            }

            continue;
        }

        if (last - pos < 2) {
            return NGX_AGAIN;
        }

        if (pos[1] == '/') {

            /* the end tag of the innermost open element, by its name */

            pos += 2;
            len = stack[depth - 1].len;

            if ((size_t) (last - pos) <= len) {
                return NGX_AGAIN;
            }

            if (!ngx_xmpp_federation_same(pos, stack[depth - 1].name, len)) {
                return NGX_DECLINED;
            }

            pos += len;

            if (*pos != '>') {
                while (pos < last && ngx_xmpp_federation_space(*pos)) {
                    pos++;
                }

                if (pos == last) {
                    return NGX_AGAIN;
                }

                if (*pos != '>') {
                    return NGX_DECLINED;
                }
            }

            pos++;

            if (--depth == 0) {
                *end = pos;
                return NGX_OK;
            }

            continue;
        }

        if (depth == NGX_XMPP_FEDERATION_SCAN_DEPTH) {
            return NGX_DECLINED;
        }

        rc = ngx_xmpp_federation_scan_tag(p, &pos, last, 0, &stack[depth]);

        if (rc == NGX_OK) {
            depth++;

        } else if (rc != NGX_DONE) {
            return rc;
        }
    }
}


/* a stanza's name: message, presence or iq */

static ngx_inline ngx_uint_t
ngx_xmpp_federation_scan_stanza_name(u_char *name, size_t len)
{
    return (len == 7 && ngx_memcmp(name, "message", 7) == 0)
           || (len == 8 && ngx_memcmp(name, "presence", 8) == 0)
           || (len == 2 && name[0] == 'i' && name[1] == 'q');
}


/* the attribute names a stanza mostly has, a bit each; 0 for others */

static ngx_inline ngx_uint_t
ngx_xmpp_federation_scan_known(u_char *name, size_t len)
{
    switch (len) {

    case 2:
        if (name[0] == 't' && name[1] == 'o') {
            return NGX_XMPP_FEDERATION_ATTR_TO;
        }

        if (name[0] == 'i' && name[1] == 'd') {
            return NGX_XMPP_FEDERATION_ATTR_ID;
        }

        break;

    case 4:
        if (ngx_memcmp(name, "from", 4) == 0) {
            return NGX_XMPP_FEDERATION_ATTR_FROM;
        }

        if (ngx_memcmp(name, "type", 4) == 0) {
            return NGX_XMPP_FEDERATION_ATTR_TYPE;
        }

        break;

    case 5:
        if (ngx_memcmp(name, "xmlns", 5) == 0) {
            return NGX_XMPP_FEDERATION_ATTR_XMLNS;
        }

        break;
    }

    return 0;
}


/*
 * The same names followed by '=' and a quote, as stanzas mostly write
 * them: the name's bit and its length in *len, or 0.  NAME has at least
 * seven bytes, "xmlns='".
 */

static ngx_uint_t
ngx_xmpp_federation_scan_known_eq(u_char *name, size_t *len)
{
    size_t  n;

    /* the known names have 2 to 5 bytes */

    for (n = 2; name[n] != '='; n++) {
        if (n == 5) {
            return 0;
        }
    }

    if (name[n + 1] != '\'' && name[n + 1] != '"') {
        return 0;
    }

    *len = n;

    return ngx_xmpp_federation_scan_known(name, n);
}


/*
 * A start tag at *pos ('<'): NGX_OK for "<name ...>", NGX_DONE for
 * "<name .../>".  Of the stanza's own tag ("top") the addressing
 * attributes are kept; its namespace can only be jabber:server.
 */

static ngx_int_t
ngx_xmpp_federation_scan_tag(ngx_xmpp_federation_parser_t *p, u_char **pos,
    u_char *last, ngx_uint_t top, ngx_xmpp_federation_scan_name_t *name)
{
    u_char                           *s, *attr, *value, quote;
    size_t                            len;
    ngx_int_t                         rc;
    ngx_str_t                        *dst;
    ngx_uint_t                        i, n, u, ws, simple, known, seen;
    ngx_xmpp_federation_parse_ud_t   *ud;
    ngx_xmpp_federation_scan_name_t   attrs[NGX_XMPP_FEDERATION_SCAN_ATTRS];

    static ngx_str_t  server = ngx_string(NGX_XMPP_FEDERATION_NS_SERVER);

    s = *pos + 1;

    if (s == last) {
        return NGX_AGAIN;
    }

    /* "<!", "<?", a prefix, a name not in ASCII: expat's */

    if (!ngx_xmpp_federation_name_start(*s)) {
        return NGX_DECLINED;
    }

    name->name = s;

    if (top && last - s > 8) {

        /*
         * A stanza's name, told by its first letter, and the byte after
         * it: the name is that whole word or the element is no stanza
         */

        switch (*s) {

        case 'm':
            len = 7;
            break;

        case 'p':
            len = 8;
            break;

        case 'i':
            len = 2;
            break;

        default:
            return NGX_DECLINED;
        }

        if (ngx_xmpp_federation_name_char(s[len])
            || !ngx_xmpp_federation_scan_stanza_name(s, len))
        {
            return NGX_DECLINED;
        }

        s += len;

    } else {

        /* near the end of the bytes read: the name as it is there */

        while (++s < last && ngx_xmpp_federation_name_char(*s)) {
            /* void */
        }

        if (s == last) {
            return NGX_AGAIN;
        }

        len = s - name->name;

        if (top && !ngx_xmpp_federation_scan_stanza_name(name->name, len)) {
            return NGX_DECLINED;
        }
    }

    name->len = s - name->name;

    if (top) {

        ud = (ngx_xmpp_federation_parse_ud_t *) (p + 1);
        ud->pos = ud->scratch;

        p->ns = server;
        ngx_str_null(&p->prefix);
        ngx_str_null(&p->from);
        ngx_str_null(&p->to);
        ngx_str_null(&p->id);
        ngx_str_null(&p->type);
        ngx_str_null(&p->version);
        ngx_str_null(&p->mechanism);
        ngx_str_null(&p->text);

        if (ngx_xmpp_federation_scan_store(p, &p->name, name->name,
                                           name->len)
            != NGX_OK)
        {
            return NGX_DECLINED;
        }
    }

    n = 0;
    u = 0;
    seen = 0;

    for ( ;; ) {

        /*
         * The shape of the attributes a stanza mostly has, a space, a
         * known name, '=' and a quote, is told at once; any other is
         * taken a byte at a time
         */

        known = 0;

        if (last - s >= 8 && *s == ' ') {
            known = ngx_xmpp_federation_scan_known_eq(s + 1, &len);
        }

        if (known) {
            if (n++ == NGX_XMPP_FEDERATION_SCAN_ATTRS || (seen & known)) {
                return NGX_DECLINED;
            }

            seen |= known;
            s += 1 + len + 1;

        } else {

            for (ws = 0; s < last && ngx_xmpp_federation_space(*s); s++) {
                ws = 1;
            }

            if (s == last) {
                return NGX_AGAIN;
            }

            if (*s == '>') {
                *pos = s + 1;
                return NGX_OK;
            }

            if (*s == '/') {
                if (s + 1 == last) {
                    return NGX_AGAIN;
                }

                if (s[1] != '>') {
                    return NGX_DECLINED;
                }

                *pos = s + 2;
                return NGX_DONE;
            }

            if (!ws || !ngx_xmpp_federation_name_start(*s)) {
                return NGX_DECLINED;
            }

            attr = s;

            while (++s < last && ngx_xmpp_federation_name_char(*s)) {
                /* void */
            }

            if (s == last) {
                return NGX_AGAIN;
            }

            if (*s == ':') {

                /* only "xml" is bound without a declaration */

                if (s - attr != 3 || ngx_memcmp(attr, "xml", 3) != 0) {
                    return NGX_DECLINED;
                }

                if (++s == last) {
                    return NGX_AGAIN;
                }

                if (!ngx_xmpp_federation_name_start(*s)) {
                    return NGX_DECLINED;
                }

                while (++s < last && ngx_xmpp_federation_name_char(*s)) {
                    /* void */
                }

                if (s == last) {
                    return NGX_AGAIN;
                }
            }

            len = s - attr;

            /*
             * An attribute once: the names a stanza mostly has are told
             * by a bit each, the others are compared with those seen
             * before
             */

            if (n++ == NGX_XMPP_FEDERATION_SCAN_ATTRS) {
                return NGX_DECLINED;
            }

            known = ngx_xmpp_federation_scan_known(attr, len);

            if (known) {
                if (seen & known) {
                    return NGX_DECLINED;
                }

                seen |= known;

            } else {
                for (i = 0; i < u; i++) {
                    if (attrs[i].len == len
                        && attrs[i].name[len - 1] == attr[len - 1]
                        && ngx_memcmp(attrs[i].name, attr, len) == 0)
                    {
                        return NGX_DECLINED;
                    }
                }

                attrs[u].name = attr;
                attrs[u].len = len;
                u++;
            }

            while (s < last && ngx_xmpp_federation_space(*s)) {
                s++;
            }

            if (s == last) {
                return NGX_AGAIN;
            }

            if (*s++ != '=') {
                return NGX_DECLINED;
            }

            while (s < last && ngx_xmpp_federation_space(*s)) {
                s++;
            }

            if (s == last) {
                return NGX_AGAIN;
            }

            if (*s != '"' && *s != '\'') {
                return NGX_DECLINED;
            }
        }

        quote = *s++;
        value = s;

        rc = ngx_xmpp_federation_scan_value(&s, last, quote, &simple);
        if (rc != NGX_OK) {
            return rc;
        }

        /* s is at the closing quote */

        if (known == NGX_XMPP_FEDERATION_ATTR_XMLNS) {

            /* a space is expat's namespace separator: it refuses it */

            if (!simple || ngx_strlchr(value, s, ' ') != NULL) {
                return NGX_DECLINED;
            }

            if (top) {
                if ((size_t) (s - value) != server.len
                    || ngx_strncmp(value, server.data, server.len) != 0)
                {
                    return NGX_DECLINED;
                }

            } else if (s - value >= 18
                       && ngx_strncmp(value, "http://www.w3.org/", 18) == 0)
            {
                /* the reserved namespaces are expat's to refuse */
                return NGX_DECLINED;
            }

            s++;
            continue;
        }

        dst = NULL;

        if (top) {
            switch (known) {

            case NGX_XMPP_FEDERATION_ATTR_FROM:
                dst = &p->from;
                break;

            case NGX_XMPP_FEDERATION_ATTR_TO:
                dst = &p->to;
                break;

            case NGX_XMPP_FEDERATION_ATTR_ID:
                dst = &p->id;
                break;

            case NGX_XMPP_FEDERATION_ATTR_TYPE:
                dst = &p->type;
                break;
            }
        }

        if (dst) {
            /* values that need decoding or normalizing are expat's */

            if (!simple
                || ngx_xmpp_federation_scan_store(p, dst, value, s - value)
                   != NGX_OK)
            {
                return NGX_DECLINED;
            }
        }

        s++;
    }
}


/* an attribute value up to its closing quote */

static ngx_int_t
ngx_xmpp_federation_scan_value(u_char **pos, u_char *last, u_char quote,
    ngx_uint_t *simple)
{
    u_char     *s;
    ngx_int_t   rc;

    s = *pos;
    *simple = 1;

    for ( ;; ) {

        s = ngx_xmpp_federation_scan_plain(s, last, quote);

        if (s == last) {
            return NGX_AGAIN;
        }

        if (*s == quote) {
            *pos = s;
            return NGX_OK;
        }

        switch (*s) {

        case '"':
        case '\'':
            s++;
            break;

        case '&':
            *simple = 0;

            rc = ngx_xmpp_federation_scan_ref(&s, last);
            if (rc != NGX_OK) {
                return rc;
            }

            break;

        case '\t':
        case '\n':
        case '\r':
            /* normalized to spaces by a parser */
            *simple = 0;
            s++;
            break;

        default:
            rc = ngx_xmpp_federation_scan_utf8(&s, last);
            if (rc != NGX_OK) {
                return rc;
            }

            break;
        }
    }
}


/* the predefined entities and character references of XML chars */

static ngx_int_t
ngx_xmpp_federation_scan_ref(u_char **pos, u_char *last)
{
    u_char      *s, *semi;
    size_t       len;
    uint32_t     ch;
    ngx_uint_t   hex, digit;

    s = *pos;
    len = ngx_min((size_t) (last - s), 12);

    semi = ngx_strlchr(s, s + len, ';');

    if (semi == NULL) {
        return (len < 12) ? NGX_AGAIN : NGX_DECLINED;
    }

    len = semi - s + 1;

    if ((len == 4 && (ngx_strncmp(s, "&lt;", 4) == 0
                      || ngx_strncmp(s, "&gt;", 4) == 0))
        || (len == 5 && ngx_strncmp(s, "&amp;", 5) == 0)
        || (len == 6 && (ngx_strncmp(s, "&quot;", 6) == 0
                         || ngx_strncmp(s, "&apos;", 6) == 0)))
    {
        *pos = semi + 1;
        return NGX_OK;
    }

    if (len < 4 || s[1] != '#') {
        return NGX_DECLINED;
    }

    s += 2;
    hex = 0;

    if (*s == 'x') {
        hex = 1;
        s++;
    }

    if (s == semi) {
        return NGX_DECLINED;
    }

    for (ch = 0; s < semi; s++) {

        if (*s >= '0' && *s <= '9') {
            digit = *s - '0';

        } else if (hex && (*s | 0x20) >= 'a' && (*s | 0x20) <= 'f') {
            digit = (*s | 0x20) - 'a' + 10;

        } else {
            return NGX_DECLINED;
        }

        ch = ch * (hex ? 16 : 10) + digit;

        if (ch > 0x10ffff) {
            return NGX_DECLINED;
        }
    }

    if (!(ch == 0x9 || ch == 0xa || ch == 0xd
          || (ch >= 0x20 && ch <= 0xd7ff)
          || (ch >= 0xe000 && ch <= 0xfffd)
          || ch >= 0x10000))
    {
        return NGX_DECLINED;
    }

    *pos = semi + 1;

    return NGX_OK;
}


/*
 * One UTF-8 character of XML: no overlong forms, no surrogates, nothing
 * over U+10FFFF, not U+FFFE or U+FFFF; and no other control character
 * than the three the callers take.
 */

static ngx_int_t
ngx_xmpp_federation_scan_utf8(u_char **pos, u_char *last)
{
    u_char  *s, c, lo, hi;
    size_t   n, i;

    s = *pos;
    c = *s;

    if (c < 0xc2 || c > 0xf4) {
        return NGX_DECLINED;
    }

    lo = 0x80;
    hi = 0xbf;

    if (c < 0xe0) {
        n = 2;

    } else if (c < 0xf0) {
        n = 3;

        if (c == 0xe0) {
            lo = 0xa0;

        } else if (c == 0xed) {
            hi = 0x9f;
        }

    } else {
        n = 4;

        if (c == 0xf0) {
            lo = 0x90;

        } else if (c == 0xf4) {
            hi = 0x8f;
        }
    }

    if ((size_t) (last - s) < n) {
        return NGX_AGAIN;
    }

    if (s[1] < lo || s[1] > hi) {
        return NGX_DECLINED;
    }

    for (i = 2; i < n; i++) {
        if (s[i] < 0x80 || s[i] > 0xbf) {
            return NGX_DECLINED;
        }
    }

    if (c == 0xef && s[1] == 0xbf && (s[2] == 0xbe || s[2] == 0xbf)) {
        return NGX_DECLINED;
    }

    *pos = s + n;

    return NGX_OK;
}


/*
 * The first byte of an attribute value that is not plain ASCII, or its
 * closing quote; the other quote, plain in it, stops only the byte loop
 */

static u_char *
ngx_xmpp_federation_scan_plain(u_char *pos, u_char *last, u_char quote)
{
#if (NGX_XMPP_FEDERATION_SSE2)
    unsigned int  mask;
    __m128i       v, m, one, low, q, amp, lt;

    one = _mm_set1_epi8(1);
    low = _mm_set1_epi8(0x21);
    q = _mm_set1_epi8((char) quote);
    amp = _mm_set1_epi8('&');
    lt = _mm_set1_epi8('<');

    while (last - pos >= 16) {
        v = _mm_loadu_si128((const __m128i *) pos);

        m = _mm_or_si128(
                _mm_or_si128(_mm_cmplt_epi8(_mm_add_epi8(v, one), low),
                             _mm_cmpeq_epi8(v, q)),
                _mm_or_si128(_mm_cmpeq_epi8(v, amp), _mm_cmpeq_epi8(v, lt)));

        mask = (unsigned int) _mm_movemask_epi8(m);

        if (mask) {
            return pos + __builtin_ctz(mask);
        }

        pos += 16;
    }
#endif

    while (pos < last
           && ngx_xmpp_federation_in(ngx_xmpp_federation_value_plain, *pos))
    {
        pos++;
    }

    return pos;
}


/* the first byte of text that is not plain ASCII */

static u_char *
ngx_xmpp_federation_scan_text(u_char *pos, u_char *last)
{
#if (NGX_XMPP_FEDERATION_SSE2)
    unsigned int  mask;
    __m128i       a, b, m, one, low, gt, two, amp;

#if (NGX_XMPP_FEDERATION_AVX2)
    static ngx_int_t  avx2 = -1;

    if (avx2 == -1) {
        __builtin_cpu_init();
        avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
    }

    if (avx2 && last - pos >= 64) {
        pos = ngx_xmpp_federation_scan_text_avx2(pos, last);

        if (last - pos >= 64) {
            /* found */
            return pos;
        }
    }
#endif

    one = _mm_set1_epi8(1);
    low = _mm_set1_epi8(0x21);
    two = _mm_set1_epi8(2);
    gt = _mm_set1_epi8('>');
    amp = _mm_set1_epi8('&');

    /*
     * Signed, byte + 1 < 0x21 is a control, DEL or any byte from 0x80;
     * byte | 2 == '>' is '<' or '>'.
     */

    while (last - pos >= 32) {
        a = _mm_loadu_si128((const __m128i *) pos);
        b = _mm_loadu_si128((const __m128i *) (pos + 16));

        m = _mm_or_si128(
                _mm_or_si128(_mm_cmplt_epi8(_mm_add_epi8(a, one), low),
                             _mm_cmpeq_epi8(_mm_or_si128(a, two), gt)),
                _mm_cmpeq_epi8(a, amp));

        mask = (unsigned int) _mm_movemask_epi8(m);

        m = _mm_or_si128(
                _mm_or_si128(_mm_cmplt_epi8(_mm_add_epi8(b, one), low),
                             _mm_cmpeq_epi8(_mm_or_si128(b, two), gt)),
                _mm_cmpeq_epi8(b, amp));

        mask |= (unsigned int) _mm_movemask_epi8(m) << 16;

        if (mask) {
            return pos + __builtin_ctz(mask);
        }

        pos += 32;
    }
#endif

    while (pos < last
           && ngx_xmpp_federation_in(ngx_xmpp_federation_text_plain, *pos))
    {
        pos++;
    }

    return pos;
}


#if (NGX_XMPP_FEDERATION_AVX2)

/*
 * The same test as the SSE2 loop above, 64 bytes at a time, by the two
 * halves of each byte: a byte is to be looked at when the class of its
 * high half and that of its low half share a bit.
 *
 *   1  high half 0, 1 (controls), 8 to f (not ASCII); any low half
 *   2  high half 2, low half 6: '&'
 *   4  high half 3, low half c or e: '<', '>'
 *   8  high half 7, low half f: DEL
 *
 * The byte to look at is returned, or where the last 63 bytes or fewer
 * begin, left to the SSE2 loop.
 */

static u_char *
ngx_xmpp_federation_scan_text_avx2(u_char *pos, u_char *last)
{
    u_char    *end;
    uint64_t   mask;
    __m256i    a, b, ha, hb, la, lb, high, low, nibble, zero;

    high = _mm256_setr_epi8(1, 1, 2, 4, 0, 0, 0, 8, 1, 1, 1, 1, 1, 1, 1, 1,
                            1, 1, 2, 4, 0, 0, 0, 8, 1, 1, 1, 1, 1, 1, 1, 1);
    low = _mm256_setr_epi8(1, 1, 1, 1, 1, 1, 3, 1, 1, 1, 1, 1, 5, 1, 5, 9,
                           1, 1, 1, 1, 1, 1, 3, 1, 1, 1, 1, 1, 5, 1, 5, 9);
    nibble = _mm256_set1_epi8(0x0f);

    for (end = last - 64; pos <= end; pos += 64) {
        a = _mm256_loadu_si256((const __m256i *) pos);
        b = _mm256_loadu_si256((const __m256i *) (pos + 32));

        ha = _mm256_shuffle_epi8(high,
                 _mm256_and_si256(_mm256_srli_epi16(a, 4), nibble));
        la = _mm256_shuffle_epi8(low, _mm256_and_si256(a, nibble));
        hb = _mm256_shuffle_epi8(high,
                 _mm256_and_si256(_mm256_srli_epi16(b, 4), nibble));
        lb = _mm256_shuffle_epi8(low, _mm256_and_si256(b, nibble));

        if (_mm256_testz_si256(ha, la) && _mm256_testz_si256(hb, lb)) {
            continue;
        }

        zero = _mm256_setzero_si256();

        mask = ~((uint64_t) (uint32_t) _mm256_movemask_epi8(
                     _mm256_cmpeq_epi8(_mm256_and_si256(ha, la), zero))
                 | (uint64_t) (uint32_t) _mm256_movemask_epi8(
                     _mm256_cmpeq_epi8(_mm256_and_si256(hb, lb), zero))
                   << 32);

        return pos + __builtin_ctzll(mask);
    }

    return pos;
}

#endif


static ngx_int_t
ngx_xmpp_federation_scan_store(ngx_xmpp_federation_parser_t *p,
    ngx_str_t *dst, u_char *src, size_t len)
{
    ngx_xmpp_federation_parse_ud_t  *ud;

    ud = (ngx_xmpp_federation_parse_ud_t *) (p + 1);

    if ((size_t) (ud->end - ud->pos) < len) {
        return NGX_ERROR;
    }

    /*
     * The scanned values are used where they are, in the stream's buffer,
     * before it moves; the room they would take in the scratch buffer is
     * counted, so that expat and the scan agree on the limit
     */

    dst->data = src;
    dst->len = len;
    ud->pos += len;

    return NGX_OK;
}
