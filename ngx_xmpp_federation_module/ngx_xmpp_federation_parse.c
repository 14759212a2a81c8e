
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
 */


#include "ngx_xmpp_federation.h"


#define NGX_XMPP_FEDERATION_NS_SEP    ' '
#define NGX_XMPP_FEDERATION_SCRATCH   8192
#define NGX_XMPP_FEDERATION_TEXT_MAX  4096


typedef struct {
    ngx_xmpp_federation_parser_t  *parser;
    u_char                        *scratch;
    u_char                        *pos;
    u_char                        *end;
} ngx_xmpp_federation_parse_ud_t;


static ngx_int_t ngx_xmpp_federation_parser_init(
    ngx_xmpp_federation_parser_t *p);
static void ngx_xmpp_federation_parser_cleanup(void *data);
static ngx_int_t ngx_xmpp_federation_parse_status(
    ngx_xmpp_federation_parser_t *p, enum XML_Status status);
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

    /* not zeroed: an idle stream keeps only what it has touched resident */

    p->scratch = ngx_palloc(pool, NGX_XMPP_FEDERATION_SCRATCH);
    if (p->scratch == NULL) {
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

    if (ngx_xmpp_federation_parser_init(p) != NGX_OK) {
        return NULL;
    }

    return p;
}


/*
 * A stream restart (after STARTTLS or SASL) begins a new XML document:
 * a fresh expat instance, offsets from zero.
 */

ngx_int_t
ngx_xmpp_federation_parser_reset(ngx_xmpp_federation_parser_t *p)
{
    if (p->expat) {
        XML_ParserFree(p->expat);
        p->expat = NULL;
    }

    return ngx_xmpp_federation_parser_init(p);
}


static ngx_int_t
ngx_xmpp_federation_parser_init(ngx_xmpp_federation_parser_t *p)
{
    XML_Parser                      x;
    ngx_xmpp_federation_parse_ud_t  *ud;

    x = XML_ParserCreateNS("UTF-8", NGX_XMPP_FEDERATION_NS_SEP);
    if (x == NULL) {
        ngx_log_error(NGX_LOG_ALERT, p->log, 0, "XML_ParserCreateNS() failed");
        return NGX_ERROR;
    }

    ud = (ngx_xmpp_federation_parse_ud_t *) (p + 1);
    ud->parser = p;
    ud->scratch = p->scratch;
    ud->pos = ud->scratch;
    ud->end = ud->scratch + NGX_XMPP_FEDERATION_SCRATCH;

    XML_SetUserData(x, ud);
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
    p->event = ngx_xmpp_ev_none;
    p->error = ngx_xmpp_err_none;
    p->reason = NULL;
    p->depth = 0;
    p->consumed = 0;
    p->start = 0;
    p->end = 0;
    p->default_ns_ok = 0;
    p->header_done = 0;
    p->stopped = 0;
    p->close_pending = 0;
    ngx_str_null(&p->ns_decls);

    return NGX_OK;
}


static void
ngx_xmpp_federation_parser_cleanup(void *data)
{
    ngx_xmpp_federation_parser_t  *p = data;

    if (p->expat) {
        XML_ParserFree(p->expat);
        p->expat = NULL;
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
    enum XML_Status  status;

    if (p->stopped) {
        return NGX_ERROR;
    }

    p->event = ngx_xmpp_ev_none;
    p->consumed += len;

    status = XML_Parse(p->expat, (const char *) data, (int) len, 0);

    return ngx_xmpp_federation_parse_status(p, status);
}


ngx_int_t
ngx_xmpp_federation_parse_next(ngx_xmpp_federation_parser_t *p)
{
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

    status = XML_ResumeParser(p->expat);

    return ngx_xmpp_federation_parse_status(p, status);
}


static ngx_int_t
ngx_xmpp_federation_parse_status(ngx_xmpp_federation_parser_t *p,
    enum XML_Status status)
{
    enum XML_Error  err;

    switch (status) {

    case XML_STATUS_SUSPENDED:
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
        if ((size_t) p->consumed > p->max_header_size) {
            p->event = ngx_xmpp_ev_error;
            p->error = ngx_xmpp_err_policy_violation;
            p->reason = "stream header is larger than "
                        "xmpp_federation_max_header_size";
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    if (p->depth > 1
        && (size_t) (p->consumed - p->start) > p->max_stanza_size)
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
    ngx_xmpp_federation_parser_t  *p;

    p = ud->parser;

    if (p->depth == 0) {

        /* the stream header */

        ud->pos = ud->scratch;
        p->start = 0;
        end = XML_GetCurrentByteIndex(p->expat)
              + XML_GetCurrentByteCount(p->expat);
        p->end = end;

        if ((size_t) end > p->max_header_size) {
            ngx_xmpp_federation_fail(p, ngx_xmpp_err_policy_violation,
                                     "stream header is larger than "
                                     "xmpp_federation_max_header_size");
            return;
        }

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
        p->start = XML_GetCurrentByteIndex(p->expat);
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

    if ((size_t) (XML_GetCurrentByteIndex(p->expat)
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

    index = XML_GetCurrentByteIndex(p->expat);
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

    if (p->depth != 0) {
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
