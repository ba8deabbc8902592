/* SPDX-License-Identifier: MIT */
/*
 * PostgreSQL wire-protocol codec (protocol 3.0). No I/O happens here: the
 * readers take a byte range and never read past it, the builders append to a
 * growable buffer with a sticky failure flag that is checked once when the
 * message is taken. Framing validates the type byte and length of every
 * message header in both directions. This makes the module unit-testable and
 * fuzzable on its own.
 */
#ifndef PGVEIL_PGPROTO_H
#define PGVEIL_PGPROTO_H

#include "pgveil/common.h"

#define PG_PROTOCOL_3_0 196608u           /* 3 << 16 */
#define PG_CANCEL_REQUEST_CODE 80877102u  /* 1234 << 16 | 5678 */
#define PG_SSL_REQUEST_CODE 80877103u     /* 1234 << 16 | 5679 */
#define PG_GSSENC_REQUEST_CODE 80877104u  /* 1234 << 16 | 5680 */

#define PG_STARTUP_MAX_LEN 10000u         /* as the server: MAX_STARTUP_PACKET_LENGTH */
#define PG_STARTUP_MAX_PARAMS 64
#define PG_HEADER_LEN 5                   /* type byte + int32 length */

/* ---- readers ---------------------------------------------------------- */

/* A bounds-checked cursor over one message body. */
typedef struct PgReader {
	const uint8_t *data; /* first byte of the body */
	size_t len;          /* body length */
	size_t pos;          /* next byte to read */
} PgReader;

void pgproto_reader_init(PgReader *r, const void *data, size_t len);
/* Each getter returns false, leaving *out untouched, when the bytes are not there. */
bool pgproto_get_byte(PgReader *r, uint8_t *out) PGV_WARN_UNUSED;
bool pgproto_get_int16(PgReader *r, int16_t *out) PGV_WARN_UNUSED;
bool pgproto_get_int32(PgReader *r, int32_t *out) PGV_WARN_UNUSED;
bool pgproto_get_uint32(PgReader *r, uint32_t *out) PGV_WARN_UNUSED;
/* A NUL-terminated string inside the body; *out points into the body. */
bool pgproto_get_string(PgReader *r, const char **out) PGV_WARN_UNUSED;
/* n raw bytes; *out points into the body. */
bool pgproto_get_bytes(PgReader *r, size_t n, const uint8_t **out) PGV_WARN_UNUSED;
size_t pgproto_remaining(const PgReader *r);

/* ---- framing ------------------------------------------------------------ */

typedef enum {
	PGP_FRAME_OK,         /* header parsed */
	PGP_FRAME_BAD_TYPE,   /* type byte not valid in this direction */
	PGP_FRAME_BAD_LENGTH, /* length below 4, too large, or wrong for a fixed-size message */
} PgFrameStatus;

/* A message header. `len` is the protocol length: it counts itself, not the type. */
typedef struct PgHeader {
	uint8_t type; /* message type byte */
	uint32_t len; /* length field (>= 4) */
} PgHeader;

/*
 * Checks the 5-byte header of a message sent by a client (frontend) in the
 * query phase. `max_len` bounds the length field. On failure *why is set to
 * a static message fit for an ErrorResponse.
 */
PgFrameStatus pgproto_check_frontend_header(const uint8_t hdr[PG_HEADER_LEN], uint32_t max_len,
					    PgHeader *out, const char **why);
/* The same for a message sent by the server (backend). */
PgFrameStatus pgproto_check_backend_header(const uint8_t hdr[PG_HEADER_LEN], uint32_t max_len,
					   PgHeader *out, const char **why);

/* ---- startup packets ---------------------------------------------------- */

typedef struct PgStartupParam {
	const char *name;  /* points into the packet */
	const char *value; /* points into the packet */
} PgStartupParam;

/* A parsed untyped startup-phase packet: StartupMessage, SSLRequest, GSSENCRequest or CancelRequest. */
typedef struct PgStartup {
	uint32_t code;                                   /* protocol version or request code */
	uint32_t cancel_pid;                             /* CancelRequest only */
	uint32_t cancel_key;                             /* CancelRequest only */
	int n_params;                                    /* StartupMessage only */
	PgStartupParam params[PG_STARTUP_MAX_PARAMS];    /* StartupMessage only */
} PgStartup;

/*
 * Reads the length word of a startup-phase packet. Returns false (with *why)
 * when it is below 8 or above PG_STARTUP_MAX_LEN.
 */
bool pgproto_check_startup_length(const uint8_t lenbuf[4], uint32_t *len_out, const char **why) PGV_WARN_UNUSED;
/*
 * Parses a whole startup-phase packet of `len` bytes (length word included).
 * Strings in *out point into `pkt`, which must outlive it. Returns false with
 * *why on any malformation.
 */
bool pgproto_parse_startup(const uint8_t *pkt, size_t len, PgStartup *out, const char **why) PGV_WARN_UNUSED;
/* The value of a startup parameter, or NULL. */
const char *pgproto_startup_get(const PgStartup *s, const char *name);

/* ---- builders ------------------------------------------------------------ */

/* A growable output buffer; any failure is sticky and reported by pgproto_buf_ok(). */
typedef struct PgBuf {
	uint8_t *data;      /* bytes written so far */
	size_t len;         /* bytes used */
	size_t cap;         /* bytes allocated */
	size_t msg_start;   /* offset of the message being built (its length word) */
	bool failed;        /* an allocation failed or a message was malformed */
	bool in_msg;        /* between begin and end */
	uint8_t inline_[256]; /* storage for small messages, avoids malloc */
} PgBuf;

void pgproto_buf_init(PgBuf *b);
void pgproto_buf_free(PgBuf *b);
void pgproto_buf_reset(PgBuf *b);
bool pgproto_buf_ok(const PgBuf *b) PGV_WARN_UNUSED;

/* Starts a message; type 0 starts an untyped (startup-phase) packet. */
void pgproto_begin(PgBuf *b, uint8_t type);
void pgproto_put_byte(PgBuf *b, uint8_t v);
void pgproto_put_int16(PgBuf *b, int16_t v);
void pgproto_put_int32(PgBuf *b, int32_t v);
void pgproto_put_string(PgBuf *b, const char *s);   /* with its NUL */
void pgproto_put_bytes(PgBuf *b, const void *p, size_t n);
/* Patches the length word of the message started by pgproto_begin(). */
void pgproto_end(PgBuf *b);

/* Whole messages, appended to b. */
void pgproto_build_error(PgBuf *b, bool notice, const char *severity, const char *sqlstate,
			 const char *message, const char *detail, const char *hint);
/* The same with a Position field (1-based character index into the query; 0 = none). */
void pgproto_build_error_at(PgBuf *b, bool notice, const char *severity, const char *sqlstate,
			    const char *message, const char *detail, const char *hint, int position);
/* Query (simple protocol) and Parse with no parameter types. */
void pgproto_build_query(PgBuf *b, const char *sql);
void pgproto_build_parse(PgBuf *b, const char *name, const char *sql);
void pgproto_build_auth(PgBuf *b, int32_t code, const void *extra, size_t extra_len);
void pgproto_build_parameter_status(PgBuf *b, const char *name, const char *value);
void pgproto_build_backend_key(PgBuf *b, uint32_t pid, uint32_t key);
void pgproto_build_ready(PgBuf *b, char txn_status);
void pgproto_build_ssl_request(PgBuf *b);
void pgproto_build_cancel(PgBuf *b, uint32_t pid, uint32_t key);
void pgproto_build_terminate(PgBuf *b);
void pgproto_build_password(PgBuf *b, const char *password);
void pgproto_build_sasl_initial(PgBuf *b, const char *mechanism, const void *data, size_t len);
void pgproto_build_sasl_response(PgBuf *b, const void *data, size_t len);
/* NegotiateProtocolVersion: the newest minor version we speak and the options we ignored. */
void pgproto_build_negotiate(PgBuf *b, int32_t minor, const char *const *unrecognised, int n);

/* ---- error fields ------------------------------------------------------------ */

/* The fields of an ErrorResponse/NoticeResponse that pgveil looks at. */
typedef struct PgErrorFields {
	const char *severity; /* V (never translated) when present, else S (localized), or NULL */
	const char *sqlstate; /* C */
	const char *message;  /* M */
	const char *detail;   /* D, or NULL */
} PgErrorFields;

/* Parses the body of an ErrorResponse/NoticeResponse; strings point into it. */
bool pgproto_parse_error(const uint8_t *body, size_t len, PgErrorFields *out) PGV_WARN_UNUSED;

/* Authentication request codes (the int32 after 'R'). */
enum {
	PG_AUTH_OK = 0,
	PG_AUTH_CLEARTEXT = 3,
	PG_AUTH_MD5 = 5,
	PG_AUTH_SASL = 10,
	PG_AUTH_SASL_CONTINUE = 11,
	PG_AUTH_SASL_FINAL = 12,
};

#endif
