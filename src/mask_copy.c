/* SPDX-License-Identifier: MIT */
/*
 * Rewriting the rows of COPY ... TO STDOUT under a mask plan: the text and
 * CSV forms of COPY as PostgreSQL 15 writes them (CopyAttributeOutText,
 * CopyAttributeOutCSV) and reads them back (CopyReadAttributesText,
 * CopyReadAttributesCSV). This file owns splitting a CopyData payload into
 * rows and fields, decoding a masked field's value from its COPY form and
 * encoding the masked value the way the server would have written it.
 * Unmasked fields are copied byte for byte; the bytes of a masked field are
 * never copied. The payload is checked whole before anything is written, so
 * a row that does not fit the plan leaves the output untouched. Binary COPY
 * is not handled here.
 */
#include "pgveil/mask.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#define DECODE_INLINE 256       /* decoded values up to this size need no allocation */
#define EMIT_INLINE 1024        /* output gathered on the stack before it goes to the evbuffer */

/* The COPY form in use: a MaskCopyFormat with its defaults filled in. */
typedef struct CopyForm {
	bool csv;
	uint8_t delim;
	uint8_t quote;                  /* csv only */
	uint8_t escape;                 /* csv only */
	const uint8_t *null_str;        /* how NULL is written */
	size_t null_len;
	bool single;                    /* one column per row (csv quotes a lone "\." then) */
	bool special[256];              /* bytes that end an unquoted run of a field */
} CopyForm;

/* What ends a field. */
typedef enum { END_DELIM, END_EOL, END_BAD } FieldEnd;

/* A field as it stands in the payload: bytes [start, end). */
typedef struct RawField {
	const uint8_t *start;
	const uint8_t *end;
	bool quoted;                    /* csv: a quote appears in it (it is then never NULL) */
} RawField;

/* The output of one call: gathered on the stack, flushed to the evbuffer. */
typedef struct Emit {
	struct evbuffer *out;
	size_t n;
	bool failed;                    /* an evbuffer or scratch allocation failed */
	uint8_t buf[EMIT_INLINE];
} Emit;

/* Where a masked field's value is decoded. */
typedef struct Scratch {
	uint8_t *heap;                  /* for values larger than buf; freed at the end of the call */
	size_t cap;
	uint8_t buf[DECODE_INLINE];
} Scratch;

/* ---- the form -------------------------------------------------------------------- */

static bool null_string_ok(const CopyForm *f)
{
	for (size_t i = 0; i < f->null_len; i++) {
		uint8_t c = f->null_str[i];

		if (c == '\n' || c == '\r' || c == f->delim || (f->csv && c == f->quote))
			return false;
	}
	return true;
}

/* Fills *f from fmt; false when the server would have refused the options (no rows come then). */
static bool form_init(CopyForm *f, const MaskCopyFormat *fmt, int n_fields)
{
	const char *null_str = fmt->null_string != NULL ? fmt->null_string : fmt->csv ? "" : "\\N";

	memset(f, 0, sizeof(*f));
	f->csv = fmt->csv;
	f->delim = fmt->delimiter != '\0' ? (uint8_t)fmt->delimiter : fmt->csv ? ',' : '\t';
	f->quote = fmt->quote != '\0' ? (uint8_t)fmt->quote : '"';
	f->escape = fmt->escape != '\0' ? (uint8_t)fmt->escape : f->quote;
	f->null_str = (const uint8_t *)null_str;
	f->null_len = strlen(null_str);
	f->single = n_fields == 1;
	if (f->delim == '\n' || f->delim == '\r' || !null_string_ok(f))
		return false;
	if (!f->csv && strchr("\\.abcdefghijklmnopqrstuvwxyz0123456789", f->delim) != NULL)
		return false;
	if (f->csv && (f->quote == '\n' || f->quote == '\r' || f->quote == f->delim || f->escape == '\n' ||
		       f->escape == '\r'))
		return false;
	f->special['\n'] = f->special['\r'] = f->special[f->delim] = true;
	f->special[f->csv ? f->quote : '\\'] = true;
	return true;
}

static bool is_null_string(const CopyForm *f, const RawField *rf)
{
	return !rf->quoted && (size_t)(rf->end - rf->start) == f->null_len &&
	       memcmp(rf->start, f->null_str, f->null_len) == 0;
}

/* ---- splitting rows into fields ------------------------------------------------- */

/* Past the closing quote of a quoted part (p just after its opening quote); NULL when it is not closed. */
static const uint8_t *skip_quoted(const CopyForm *f, const uint8_t *p, const uint8_t *end)
{
	uint8_t c;

	while (p < end) {
		c = *p++;
		if (c == f->escape && p < end && (*p == f->escape || *p == f->quote))
			p++;
		else if (c == f->quote)
			return p;
	}
	return NULL;
}

/*
 * Scans the field at *pp into *rf and moves *pp past the delimiter or
 * newline that ends it. END_BAD: the payload ends inside it, or it holds a
 * byte the server never writes there (a carriage return outside quotes).
 * A backslash takes the byte after it (text), a quote opens a quoted part
 * (csv), as COPY FROM reads them.
 */
static FieldEnd field_scan(const CopyForm *f, const uint8_t **pp, const uint8_t *end, RawField *rf)
{
	const uint8_t *p = *pp;
	uint8_t c;

	rf->start = p;
	rf->quoted = false;
	for (;;) {
		while (p < end && !f->special[*p])
			p++;
		if (p >= end || *p == '\r')
			return END_BAD;
		c = *p;
		if (!f->csv && c == '\\') {
			if (end - p < 2)
				return END_BAD;
			p += 2;
		} else if (f->csv && c == f->quote) {
			rf->quoted = true;
			if ((p = skip_quoted(f, p + 1, end)) == NULL)
				return END_BAD;
		} else {
			rf->end = p;
			*pp = p + 1;
			return c == '\n' ? END_EOL : END_DELIM;
		}
	}
}

/*
 * Scans the row at *pp (up to and including its newline); returns its
 * number of fields, or -1 when it is malformed. A row that is only a
 * newline has one (empty) field, or none for a result without columns.
 */
static int row_scan(const CopyForm *f, int n_fields, const uint8_t **pp, const uint8_t *end)
{
	RawField rf;
	FieldEnd fe;
	int n = 0;

	if (n_fields == 0 && *pp < end && **pp == '\n') {
		(*pp)++;
		return 0;
	}
	do {
		if ((fe = field_scan(f, pp, end, &rf)) == END_BAD)
			return -1;
		n++;
	} while (fe == END_DELIM);
	return n;
}

/* MASK_OK when every row of the payload has the plan's columns. */
static int payload_check(const CopyForm *f, int n_fields, const uint8_t *p, const uint8_t *end)
{
	while (p < end)
		if (row_scan(f, n_fields, &p, end) != n_fields)
			return MASK_EVALUE;
	return MASK_OK;
}

/* ---- decoding ------------------------------------------------------------------------ */

static int hex_digit(uint8_t c)
{
	return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

/* The byte a text-format escape stands for; *pp is just after the backslash and moves past the escape. */
static uint8_t text_unescape(const uint8_t **pp, const uint8_t *end)
{
	const uint8_t *p = *pp;
	uint8_t c = *p++;
	unsigned v;
	int k;

	if (c >= '0' && c <= '7') {
		for (v = c - '0', k = 1; k < 3 && p < end && *p >= '0' && *p <= '7'; k++)
			v = (v << 3) + (unsigned)(*p++ - '0');
		c = (uint8_t)v;
	} else if (c == 'x' && p < end && isxdigit(*p)) {
		for (v = (unsigned)hex_digit(*p++), k = 1; k < 2 && p < end && isxdigit(*p); k++)
			v = (v << 4) + (unsigned)hex_digit(*p++);
		c = (uint8_t)v;
	} else {
		switch (c) {
		case 'b': c = '\b'; break;
		case 'f': c = '\f'; break;
		case 'n': c = '\n'; break;
		case 'r': c = '\r'; break;
		case 't': c = '\t'; break;
		case 'v': c = '\v'; break;
		default: break; /* the byte itself: \\, the delimiter, anything else */
		}
	}
	*pp = p;
	return c;
}

/* Decodes a text-format field into dst (room for its raw length); returns the value's length. */
static size_t decode_text(const RawField *rf, uint8_t *dst)
{
	const uint8_t *p = rf->start;
	size_t n = 0;

	while (p < rf->end) {
		if (*p != '\\')
			dst[n++] = *p++;
		else if (++p < rf->end)
			dst[n++] = text_unescape(&p, rf->end);
	}
	return n;
}

/* Decodes a CSV field into dst (room for its raw length); returns the value's length. */
static size_t decode_csv(const CopyForm *f, const RawField *rf, uint8_t *dst)
{
	const uint8_t *p = rf->start;
	size_t n = 0;
	uint8_t c;

	while (p < rf->end) {
		if ((c = *p++) != f->quote) {
			dst[n++] = c;
			continue;
		}
		while (p < rf->end) {
			c = *p++;
			if (c == f->escape && p < rf->end && (*p == f->escape || *p == f->quote))
				dst[n++] = *p++;
			else if (c == f->quote)
				break;
			else
				dst[n++] = c;
		}
	}
	return n;
}

/* Room for a decoded value of up to n bytes; NULL when out of memory. */
static uint8_t *scratch_get(Scratch *s, size_t n)
{
	uint8_t *p;

	if (n <= sizeof(s->buf))
		return s->buf;
	if (n > s->cap) {
		if ((p = realloc(s->heap, n)) == NULL)
			return NULL;
		s->heap = p;
		s->cap = n;
	}
	return s->heap;
}

/* ---- output ------------------------------------------------------------------------- */

static void emit_flush(Emit *e)
{
	if (e->n > 0 && !e->failed && evbuffer_add(e->out, e->buf, e->n) != 0)
		e->failed = true;
	e->n = 0;
}

static void emit(Emit *e, const void *p, size_t n)
{
	if (n == 0 || e->failed)
		return;
	if (e->n + n > sizeof(e->buf)) {
		emit_flush(e);
		if (e->failed)
			return;
		if (n > sizeof(e->buf) / 2) {
			if (evbuffer_add(e->out, p, n) != 0)
				e->failed = true;
			return;
		}
	}
	memcpy(e->buf + e->n, p, n);
	e->n += n;
}

static void emit_byte(Emit *e, uint8_t c)
{
	emit(e, &c, 1);
}

/* A value as CopyAttributeOutText writes it: control characters, backslash and the delimiter escaped. */
static void encode_text(Emit *e, const CopyForm *f, const uint8_t *v, size_t n)
{
	static const char controls[] = { ['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n',
					  ['\r'] = 'r', ['\t'] = 't', ['\v'] = 'v' };
	const uint8_t *run = v;
	uint8_t c, code;

	for (size_t i = 0; i < n; i++) {
		c = v[i];
		code = c < sizeof(controls) ? (uint8_t)controls[c] : 0;
		if (code == 0 && c != '\\' && c != f->delim)
			continue; /* other control characters go as they are */
		emit(e, run, (size_t)(v + i - run));
		emit_byte(e, '\\');
		emit_byte(e, code != 0 ? code : c);
		run = v + i + 1;
	}
	emit(e, run, (size_t)(v + n - run));
}

/* CopyAttributeOutCSV quotes a value equal to the NULL string, a lone "\." and one holding delimiter, quote, CR or LF. */
static bool csv_needs_quotes(const CopyForm *f, const uint8_t *v, size_t n)
{
	if (n == f->null_len && memcmp(v, f->null_str, n) == 0)
		return true;
	if (f->single && n == 2 && v[0] == '\\' && v[1] == '.')
		return true;
	for (size_t i = 0; i < n; i++)
		if (v[i] == f->delim || v[i] == f->quote || v[i] == '\n' || v[i] == '\r')
			return true;
	return false;
}

/* A value as CopyAttributeOutCSV writes it: quoted when needed, quote and escape escaped inside. */
static void encode_csv(Emit *e, const CopyForm *f, const uint8_t *v, size_t n)
{
	const uint8_t *run = v;

	if (!csv_needs_quotes(f, v, n)) {
		emit(e, v, n);
		return;
	}
	emit_byte(e, f->quote);
	for (size_t i = 0; i < n; i++) {
		if (v[i] != f->quote && v[i] != f->escape)
			continue;
		emit(e, run, (size_t)(v + i - run));
		emit_byte(e, f->escape);
		run = v + i; /* the byte itself goes with the next run */
	}
	emit(e, run, (size_t)(v + n - run));
	emit_byte(e, f->quote);
}

/* ---- masking ------------------------------------------------------------------------- */

static bool field_masked(const MaskField *mf)
{
	return mf->rule != NULL || mf->to_null;
}

/*
 * Decodes the masked field rf, masks it by mf and writes the result. A
 * value that cannot be decoded (it would hold a zero byte) or masked
 * becomes NULL; so does a result holding a zero byte, which COPY cannot
 * carry.
 */
static void field_rewrite(const MaskPlan *plan, const MaskField *mf, const CopyForm *f, const RawField *rf,
			  Scratch *s, Emit *e)
{
	size_t raw = (size_t)(rf->end - rf->start), n;
	uint8_t *val;
	MaskOut mo;
	bool ok;

	if (mf->to_null || mf->rule == NULL || is_null_string(f, rf)) {
		emit(e, f->null_str, f->null_len);
		return;
	}
	if ((val = scratch_get(s, raw)) == NULL) {
		e->failed = true;
		return;
	}
	n = f->csv ? decode_csv(f, rf, val) : decode_text(rf, val);
	mo.heap = NULL; /* released below whether or not mask_apply ran */
	ok = n <= INT32_MAX && memchr(val, '\0', n) == NULL &&
	     mask_apply(mf->rule, plan->key, mf->type_oid, 0, val, (int32_t)n, &mo) == MASK_OK &&
	     mo.len >= 0 && memchr(mo.data, '\0', (size_t)mo.len) == NULL;
	if (!ok)
		emit(e, f->null_str, f->null_len);
	else if (f->csv)
		encode_csv(e, f, mo.data, (size_t)mo.len);
	else
		encode_text(e, f, mo.data, (size_t)mo.len);
	mask_out_release(&mo);
}

/* Writes the checked payload with its masked fields rewritten; the header row, when `header`, as it is. */
static int payload_rewrite(const MaskPlan *plan, const CopyForm *f, bool header, const uint8_t *p,
			   const uint8_t *end, struct evbuffer *out)
{
	const uint8_t *copied = p;
	Scratch s = { .heap = NULL, .cap = 0 };
	Emit e = { .out = out, .n = 0, .failed = false };
	RawField rf;
	FieldEnd fe;
	int i;

	if (header)
		(void)row_scan(f, plan->n_fields, &p, end);
	while (p < end && !e.failed) {
		if (plan->n_fields == 0) {
			p++; /* "\n": checked */
			continue;
		}
		i = 0;
		do {
			fe = field_scan(f, &p, end, &rf);
			if (i < plan->n_fields && field_masked(&plan->fields[i])) {
				emit(&e, copied, (size_t)(rf.start - copied));
				field_rewrite(plan, &plan->fields[i], f, &rf, &s, &e);
				copied = rf.end;
			}
			i++;
		} while (fe == END_DELIM);
	}
	emit(&e, copied, (size_t)(end - copied));
	emit_flush(&e);
	free(s.heap);
	return e.failed ? MASK_ENOMEM : MASK_OK;
}

int mask_copy_data(const MaskPlan *plan, const MaskCopyFormat *fmt, bool first, const uint8_t *data, size_t len,
		   struct evbuffer *out)
{
	const uint8_t *end = data + len, *p = data;
	CopyForm f;
	int rc;

	if (plan == NULL || fmt == NULL || out == NULL || (data == NULL && len > 0) || plan->n_fields < 0 ||
	    (plan->n_fields > 0 && plan->fields == NULL) || !form_init(&f, fmt, plan->n_fields))
		return MASK_EARGS;
	if (len == 0)
		return MASK_OK;
	if (first && fmt->header && row_scan(&f, plan->n_fields, &p, end) != plan->n_fields)
		return MASK_EVALUE;
	if ((rc = payload_check(&f, plan->n_fields, p, end)) != MASK_OK)
		return rc;
	return payload_rewrite(plan, &f, first && fmt->header, data, end, out);
}
