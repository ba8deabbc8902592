/* SPDX-License-Identifier: MIT */
/*
 * Mask functions at the level of one field value (INTERFACE §4, doc/masking.md):
 * the key of hash() read from mask_key_file, whether a rule's function can
 * mask a column of a given type, and the masked bytes of one value of that
 * type in text or binary format. Every masked value stays valid for the
 * column's own type; what cannot be masked safely fails closed (NULL and an
 * error code), never the original value. Rewriting RowDescription/DataRow
 * and finding which columns are masked are not done here.
 */
#ifndef PGVEIL_MASK_H
#define PGVEIL_MASK_H

#include "pgveil/common.h"
#include "pgveil/rules.h"

struct evbuffer;

#define MASK_KEY_MIN 32         /* bytes of key at least */
#define MASK_KEY_MAX 1024       /* bytes of key at most */
#define MASK_OUT_INLINE 128     /* masked values up to this size need no allocation */

/* PostgreSQL's OIDs of the built-in types masks know. */
#define MASK_OID_BOOL 16
#define MASK_OID_BYTEA 17
#define MASK_OID_NAME 19
#define MASK_OID_INT8 20
#define MASK_OID_INT2 21
#define MASK_OID_INT4 23
#define MASK_OID_TEXT 25
#define MASK_OID_JSON 114
#define MASK_OID_FLOAT4 700
#define MASK_OID_FLOAT8 701
#define MASK_OID_INET 869
#define MASK_OID_BPCHAR 1042
#define MASK_OID_VARCHAR 1043
#define MASK_OID_DATE 1082
#define MASK_OID_TIME 1083
#define MASK_OID_TIMESTAMP 1114
#define MASK_OID_TIMESTAMPTZ 1184
#define MASK_OID_NUMERIC 1700
#define MASK_OID_UUID 2950
#define MASK_OID_JSONB 3802

/* The secret of hash(): the bytes of mask_key_file. */
typedef struct MaskKey {
	size_t len;                     /* MASK_KEY_MIN..MASK_KEY_MAX once loaded */
	uint8_t bytes[MASK_KEY_MAX];
} MaskKey;

/* What mask_apply() returns. */
typedef enum {
	MASK_OK = 0,
	MASK_EVALUE = -1,       /* the input is not a value of the type in the form expected */
	MASK_ETYPE = -2,        /* the function does not apply to the type (see mask_check_type) */
	MASK_ENOKEY = -3,       /* hash() without a loaded key */
	MASK_ENOMEM = -4,       /* the result did not fit the inline buffer and malloc failed */
	MASK_EARGS = -5,        /* not a mask rule, or arguments rules_load() would have refused */
} MaskResult;

/*
 * One masked value: len bytes at data, or NULL (len -1). data may point into
 * the struct itself: do not copy a MaskOut while its value is in use.
 */
typedef struct MaskOut {
	int32_t len;                    /* -1 = NULL */
	const uint8_t *data;            /* into buf or heap; NULL when len is -1 */
	uint8_t *heap;                  /* malloc'd when the value is larger than buf; see mask_out_release */
	size_t cap;                     /* bytes usable at the current buffer */
	bool failed;                    /* an allocation failed while building */
	uint8_t buf[MASK_OUT_INLINE];
} MaskOut;

/*
 * Reads the key of hash() from `path`: its bytes as stored, less one final
 * "\n" or "\r\n" (so `openssl rand -hex 32 > mask.key` gives a 64-byte key).
 * The file must be a regular file that others can neither read nor write
 * (no 0006 permission bits) and give MASK_KEY_MIN..MASK_KEY_MAX bytes.
 * Returns false with a message in err ("mask_key_file path: reason") and
 * *out cleared otherwise.
 */
bool mask_key_load(const char *path, MaskKey *out, char *err, size_t errlen) PGV_WARN_UNUSED;

/* Wipes a key. */
void mask_key_clear(MaskKey *key);

/*
 * True when r's mask function can mask a column of type `type_oid`
 * (null() applies to every type, the others as doc/masking.md says) and its
 * arguments suit the type (constant()'s value is valid for it, strings are
 * valid UTF-8). Otherwise false with the reason in why, naming the function
 * and the type ("hash() cannot mask a column of type int4: ...").
 */
bool mask_check_type(const Rule *r, uint32_t type_oid, char *why, size_t whylen);

/*
 * Masks one field value: `len` bytes at `in` (len -1 = NULL) of type
 * `type_oid` in `format` (0 text, 1 binary, as on the wire) by r's function;
 * `key` is needed by hash() only. The result, in the same format, is put in
 * *out: a NULL input gives NULL. Returns MASK_OK, or an error with *out NULL
 * (the caller must never send the original value instead). Text-format
 * values are read as the server writes them with client_encoding UTF8,
 * DateStyle ISO and extra_float_digits >= 1; others give MASK_EVALUE. *out
 * must be released with mask_out_release() (also after an error).
 */
int mask_apply(const Rule *r, const MaskKey *key, uint32_t type_oid, int16_t format, const uint8_t *in,
	       int32_t len, MaskOut *out) PGV_WARN_UNUSED;

/* Frees what a masked value allocated; *out may be used again. */
void mask_out_release(MaskOut *out);

/* The type's name for messages ("int4", "OID 16384" for others). */
const char *mask_type_name(uint32_t type_oid, char *buf, size_t buflen);

/* ---- result rows (src/mask_rows.c) ------------------------------------------------------- */

/* How one column of a result is sent. */
typedef struct MaskField {
	const Rule *rule;      /* the mask to apply; NULL: unchanged (unless to_null) */
	uint32_t type_oid;     /* the column's type as on the wire (RowDescription, or the catalog for COPY) */
	int16_t format;        /* 0 text, 1 binary */
	bool to_null;          /* always sent as NULL: the rule cannot apply to the type, or pgveil cannot tell what the column holds */
} MaskField;

/* The masks of one result: a field per column. */
typedef struct MaskPlan {
	int n_fields;
	MaskField *fields;
	int n_masked;          /* fields with a rule or to_null; 0: rows pass unchanged */
	const MaskKey *key;    /* for hash(); may be NULL (hash() then gives NULL) */
} MaskPlan;

/*
 * Rewrites one DataRow: `len` bytes of body at `body` (the message without
 * its type byte and length) under plan, appending the whole new message
 * (type and length included) to out. A field that cannot be masked becomes
 * NULL; the original value is never copied for a masked field. Returns
 * MASK_OK, or MASK_EVALUE when the row is malformed or its column count is
 * not the plan's (nothing appended: the row must not be sent), or
 * MASK_ENOMEM.
 */
int mask_datarow(const MaskPlan *plan, const uint8_t *body, size_t len, struct evbuffer *out) PGV_WARN_UNUSED;

/*
 * Rewrites an ErrorResponse or NoticeResponse (`type` 'E' or 'N', body of
 * len bytes) of a statement that read masked columns, appending the whole
 * new message to out: severity, SQLSTATE, position, source location and
 * object names are kept; the message is cut where a value may start (the
 * first '"' or ": ", as in conversion errors) and "***" put in its place;
 * detail, context, hint and
 * internal query (which can hold row contents: "Failing row contains
 * (...)", "Key (email)=(...)") are replaced by one detail saying so.
 * Returns MASK_OK, MASK_EVALUE for a malformed body (nothing appended), or
 * MASK_ENOMEM.
 */
int mask_scrub_message(uint8_t type, const uint8_t *body, size_t len, struct evbuffer *out) PGV_WARN_UNUSED;

/* The same cut applied to one message text (malloc'd; NULL without memory): for the audit log. */
char *mask_scrub_text(const char *text) PGV_WARN_UNUSED;

/* Frees this thread's row buffer (a worker that exits). */
void mask_thread_cleanup(void);

/* The text forms of COPY ... TO STDOUT (the COPY statement's options). */
typedef struct MaskCopyFormat {
	bool csv;              /* FORMAT csv; else FORMAT text */
	char delimiter;        /* text: '\t' by default; csv: ','; '\0': the default */
	char quote;            /* csv: '"' by default; '\0': the default */
	char escape;           /* csv: the quote by default; '\0': the default */
	const char *null_string; /* NULL: the format's default (text "\\N", csv "") */
	bool header;           /* HEADER: the first row of the first CopyData is a header line */
} MaskCopyFormat;

/*
 * Rewrites the rows in one CopyData payload (`len` bytes at data: whole
 * rows, each ending with a newline, as the server sends them; a CSV row may
 * span lines inside quotes) under plan, appending the rewritten payload (no
 * message header) to out. `first` says this is the first CopyData of the
 * COPY: with fmt->header, its first row (the column names) passes
 * unchanged. Fields of masked columns (a rule or to_null) are decoded from
 * the COPY form as PostgreSQL's COPY FROM reads them, masked as text-format
 * values (plan fields' format is ignored) and encoded as COPY TO would write
 * them; a NULL stays NULL, and a value that cannot be decoded or masked
 * becomes NULL. Other fields are copied byte for byte. Returns MASK_OK;
 * MASK_EVALUE when a row does not split into the plan's columns, does not
 * end with a newline or holds what the server does not write (an unclosed
 * quote, a bare carriage return), nothing appended; MASK_EARGS when an
 * argument is NULL or fmt is one the server refuses (a newline or carriage
 * return as delimiter or quote, a text delimiter that is a backslash, a
 * period, a lower-case letter or a digit, a csv quote equal to the
 * delimiter, a NULL string holding a newline, the delimiter or the quote),
 * nothing appended; MASK_ENOMEM, when out may hold part of the rewritten
 * payload (never an unmasked value of a masked column), which must not be
 * sent.
 */
int mask_copy_data(const MaskPlan *plan, const MaskCopyFormat *fmt, bool first, const uint8_t *data, size_t len,
		   struct evbuffer *out) PGV_WARN_UNUSED;

#endif
