/* SPDX-License-Identifier: MIT */
/*
 * Wire-protocol codec: bounds-checked readers, header validation for both
 * directions, startup-packet parsing, and message builders over PgBuf. This
 * file owns the knowledge of the byte layout of every message pgveil reads
 * or writes; it performs no I/O.
 */
#include "pgveil/pgproto.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- readers ---------------------------------------------------------- */

void pgproto_reader_init(PgReader *r, const void *data, size_t len)
{
	/* An empty body may come as NULL: never do pointer arithmetic or memchr() on NULL. */
	r->data = (data != NULL) ? data : (const void *)"";
	r->len = len;
	r->pos = 0;
}

size_t pgproto_remaining(const PgReader *r)
{
	return r->len - r->pos;
}

bool pgproto_get_byte(PgReader *r, uint8_t *out)
{
	if (pgproto_remaining(r) < 1)
		return false;
	*out = r->data[r->pos++];
	return true;
}

bool pgproto_get_int16(PgReader *r, int16_t *out)
{
	uint16_t v;

	if (pgproto_remaining(r) < 2)
		return false;
	memcpy(&v, r->data + r->pos, 2);
	r->pos += 2;
	*out = (int16_t)ntohs(v);
	return true;
}

bool pgproto_get_uint32(PgReader *r, uint32_t *out)
{
	uint32_t v;

	if (pgproto_remaining(r) < 4)
		return false;
	memcpy(&v, r->data + r->pos, 4);
	r->pos += 4;
	*out = ntohl(v);
	return true;
}

bool pgproto_get_int32(PgReader *r, int32_t *out)
{
	uint32_t v;

	if (!pgproto_get_uint32(r, &v))
		return false;
	*out = (int32_t)v;
	return true;
}

bool pgproto_get_string(PgReader *r, const char **out)
{
	const uint8_t *start = r->data + r->pos;
	const uint8_t *nul = memchr(start, 0, pgproto_remaining(r));

	if (nul == NULL)
		return false;
	*out = (const char *)start;
	r->pos += (size_t)(nul - start) + 1;
	return true;
}

bool pgproto_get_bytes(PgReader *r, size_t n, const uint8_t **out)
{
	if (pgproto_remaining(r) < n)
		return false;
	*out = r->data + r->pos;
	r->pos += n;
	return true;
}

/* ---- framing ------------------------------------------------------------ */

static uint32_t read_be32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return ntohl(v);
}

/* Expected length of fixed-size frontend messages; 0 when variable. */
static uint32_t frontend_fixed_len(uint8_t type)
{
	switch (type) {
	case 'S': /* Sync */
	case 'H': /* Flush */
	case 'X': /* Terminate */
	case 'c': /* CopyDone */
		return 4;
	default:
		return 0;
	}
}

static bool frontend_type_valid(uint8_t type)
{
	switch (type) {
	case 'B': case 'C': case 'd': case 'c': case 'f': case 'D': case 'E':
	case 'H': case 'F': case 'P': case 'p': case 'Q': case 'S': case 'X':
		return true;
	default:
		return false;
	}
}

static bool backend_type_valid(uint8_t type)
{
	switch (type) {
	case 'R': case 'K': case '2': case '3': case 'C': case 'd': case 'c':
	case 'G': case 'H': case 'W': case 'D': case 'I': case 'E': case 'V':
	case 'v': case 'n': case 'N': case 'A': case 't': case 'S': case '1':
	case 's': case 'Z': case 'T':
		return true;
	default:
		return false;
	}
}

static PgFrameStatus check_length(const uint8_t *hdr, uint32_t max_len, uint32_t fixed,
				  PgHeader *out, const char **why)
{
	out->type = hdr[0];
	out->len = read_be32(hdr + 1);
	if (out->len < 4) {
		*why = "invalid message length";
		return PGP_FRAME_BAD_LENGTH;
	}
	if (fixed != 0 && out->len != fixed) {
		*why = "invalid message length for a fixed-size message";
		return PGP_FRAME_BAD_LENGTH;
	}
	if (out->len > max_len) {
		*why = "message too large";
		return PGP_FRAME_BAD_LENGTH;
	}
	return PGP_FRAME_OK;
}

PgFrameStatus pgproto_check_frontend_header(const uint8_t hdr[PG_HEADER_LEN], uint32_t max_len,
					    PgHeader *out, const char **why)
{
	if (!frontend_type_valid(hdr[0])) {
		out->type = hdr[0];
		out->len = 0;
		*why = "invalid frontend message type";
		return PGP_FRAME_BAD_TYPE;
	}
	return check_length(hdr, max_len, frontend_fixed_len(hdr[0]), out, why);
}

PgFrameStatus pgproto_check_backend_header(const uint8_t hdr[PG_HEADER_LEN], uint32_t max_len,
					   PgHeader *out, const char **why)
{
	if (!backend_type_valid(hdr[0])) {
		out->type = hdr[0];
		out->len = 0;
		*why = "invalid backend message type";
		return PGP_FRAME_BAD_TYPE;
	}
	return check_length(hdr, max_len, hdr[0] == 'Z' ? 5 : 0, out, why);
}

/* ---- startup packets ---------------------------------------------------- */

bool pgproto_check_startup_length(const uint8_t lenbuf[4], uint32_t *len_out, const char **why)
{
	uint32_t len = read_be32(lenbuf);

	if (len < 8 || len > PG_STARTUP_MAX_LEN) {
		*why = "invalid length of startup packet";
		return false;
	}
	*len_out = len;
	return true;
}

static bool parse_startup_params(PgReader *r, PgStartup *out, const char **why)
{
	for (;;) {
		const char *name, *value;

		if (!pgproto_get_string(r, &name)) {
			*why = "invalid startup packet layout: expected terminator as last byte";
			return false;
		}
		if (name[0] == '\0')
			break;
		if (!pgproto_get_string(r, &value)) {
			*why = "invalid startup packet layout: missing parameter value";
			return false;
		}
		if (out->n_params >= PG_STARTUP_MAX_PARAMS) {
			*why = "too many startup parameters";
			return false;
		}
		/* The server keeps the last of a repeated name, a lookup finds the first: never both. */
		if (pgproto_startup_get(out, name) != NULL) {
			*why = "duplicate startup parameter";
			return false;
		}
		out->params[out->n_params].name = name;
		out->params[out->n_params].value = value;
		out->n_params++;
	}
	if (pgproto_remaining(r) != 0) {
		*why = "invalid startup packet layout: expected terminator as last byte";
		return false;
	}
	return true;
}

bool pgproto_parse_startup(const uint8_t *pkt, size_t len, PgStartup *out, const char **why)
{
	PgReader r;
	uint32_t declared;

	memset(out, 0, sizeof(*out));
	pgproto_reader_init(&r, pkt, len);
	if (!pgproto_get_uint32(&r, &declared) || declared != len ||
	    !pgproto_get_uint32(&r, &out->code)) {
		*why = "invalid length of startup packet";
		return false;
	}
	switch (out->code) {
	case PG_SSL_REQUEST_CODE:
	case PG_GSSENC_REQUEST_CODE:
		if (len != 8) {
			*why = "invalid length of startup packet";
			return false;
		}
		return true;
	case PG_CANCEL_REQUEST_CODE:
		if (len != 16 || !pgproto_get_uint32(&r, &out->cancel_pid) ||
		    !pgproto_get_uint32(&r, &out->cancel_key)) {
			*why = "invalid length of cancel request packet";
			return false;
		}
		return true;
	default:
		break;
	}
	if ((out->code >> 16) != 3) {
		*why = "unsupported frontend protocol: server supports 3.0";
		return false;
	}
	return parse_startup_params(&r, out, why);
}

const char *pgproto_startup_get(const PgStartup *s, const char *name)
{
	for (int i = 0; i < s->n_params; i++)
		if (strcmp(s->params[i].name, name) == 0)
			return s->params[i].value;
	return NULL;
}

/* ---- builders ------------------------------------------------------------ */

void pgproto_buf_init(PgBuf *b)
{
	b->data = b->inline_;
	b->cap = sizeof(b->inline_);
	b->len = 0;
	b->msg_start = 0;
	b->failed = false;
	b->in_msg = false;
}

void pgproto_buf_free(PgBuf *b)
{
	if (b->data != b->inline_)
		free(b->data);
	pgproto_buf_init(b);
}

void pgproto_buf_reset(PgBuf *b)
{
	b->len = 0;
	b->failed = false;
	b->in_msg = false;
}

bool pgproto_buf_ok(const PgBuf *b)
{
	return !b->failed && !b->in_msg;
}

static bool buf_reserve(PgBuf *b, size_t n)
{
	size_t want, cap;
	uint8_t *p;

	if (b->failed)
		return false;
	if (n > SIZE_MAX / 4 - b->len) {
		b->failed = true;
		return false;
	}
	want = b->len + n;
	if (want <= b->cap)
		return true;
	for (cap = b->cap * 2; cap < want; cap *= 2)
		;
	if (b->data == b->inline_) {
		p = malloc(cap);
		if (p != NULL)
			memcpy(p, b->data, b->len);
	} else {
		p = realloc(b->data, cap);
	}
	if (p == NULL) {
		b->failed = true;
		return false;
	}
	b->data = p;
	b->cap = cap;
	return true;
}

void pgproto_put_bytes(PgBuf *b, const void *p, size_t n)
{
	if (n == 0 || !buf_reserve(b, n))
		return;
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

void pgproto_put_byte(PgBuf *b, uint8_t v)
{
	pgproto_put_bytes(b, &v, 1);
}

void pgproto_put_int16(PgBuf *b, int16_t v)
{
	uint16_t n = htons((uint16_t)v);

	pgproto_put_bytes(b, &n, 2);
}

void pgproto_put_int32(PgBuf *b, int32_t v)
{
	uint32_t n = htonl((uint32_t)v);

	pgproto_put_bytes(b, &n, 4);
}

void pgproto_put_string(PgBuf *b, const char *s)
{
	pgproto_put_bytes(b, s, strlen(s) + 1);
}

void pgproto_begin(PgBuf *b, uint8_t type)
{
	if (b->in_msg)
		b->failed = true;
	b->in_msg = true;
	if (type != 0)
		pgproto_put_byte(b, type);
	b->msg_start = b->len;
	pgproto_put_int32(b, 0);
}

void pgproto_end(PgBuf *b)
{
	uint32_t n;

	if (!b->in_msg) {
		b->failed = true;
		return;
	}
	b->in_msg = false;
	if (b->failed || b->len - b->msg_start > INT32_MAX) {
		b->failed = true;
		return;
	}
	n = htonl((uint32_t)(b->len - b->msg_start));
	memcpy(b->data + b->msg_start, &n, 4);
}

void pgproto_build_error_at(PgBuf *b, bool notice, const char *severity, const char *sqlstate,
			    const char *message, const char *detail, const char *hint, int position)
{
	char pos[16];

	pgproto_begin(b, notice ? 'N' : 'E');
	pgproto_put_byte(b, 'S');
	pgproto_put_string(b, severity);
	pgproto_put_byte(b, 'V');
	pgproto_put_string(b, severity);
	pgproto_put_byte(b, 'C');
	pgproto_put_string(b, sqlstate);
	pgproto_put_byte(b, 'M');
	pgproto_put_string(b, message);
	if (detail != NULL) {
		pgproto_put_byte(b, 'D');
		pgproto_put_string(b, detail);
	}
	if (hint != NULL) {
		pgproto_put_byte(b, 'H');
		pgproto_put_string(b, hint);
	}
	if (position > 0) {
		snprintf(pos, sizeof(pos), "%d", position);
		pgproto_put_byte(b, 'P');
		pgproto_put_string(b, pos);
	}
	pgproto_put_byte(b, 0);
	pgproto_end(b);
}

void pgproto_build_error(PgBuf *b, bool notice, const char *severity, const char *sqlstate,
			 const char *message, const char *detail, const char *hint)
{
	pgproto_build_error_at(b, notice, severity, sqlstate, message, detail, hint, 0);
}

void pgproto_build_query(PgBuf *b, const char *sql)
{
	pgproto_begin(b, 'Q');
	pgproto_put_string(b, sql);
	pgproto_end(b);
}

void pgproto_build_parse(PgBuf *b, const char *name, const char *sql)
{
	pgproto_begin(b, 'P');
	pgproto_put_string(b, name);
	pgproto_put_string(b, sql);
	pgproto_put_int16(b, 0);
	pgproto_end(b);
}

void pgproto_build_auth(PgBuf *b, int32_t code, const void *extra, size_t extra_len)
{
	pgproto_begin(b, 'R');
	pgproto_put_int32(b, code);
	pgproto_put_bytes(b, extra, extra_len);
	pgproto_end(b);
}

void pgproto_build_parameter_status(PgBuf *b, const char *name, const char *value)
{
	pgproto_begin(b, 'S');
	pgproto_put_string(b, name);
	pgproto_put_string(b, value);
	pgproto_end(b);
}

void pgproto_build_backend_key(PgBuf *b, uint32_t pid, uint32_t key)
{
	pgproto_begin(b, 'K');
	pgproto_put_int32(b, (int32_t)pid);
	pgproto_put_int32(b, (int32_t)key);
	pgproto_end(b);
}

void pgproto_build_ready(PgBuf *b, char txn_status)
{
	pgproto_begin(b, 'Z');
	pgproto_put_byte(b, (uint8_t)txn_status);
	pgproto_end(b);
}

void pgproto_build_ssl_request(PgBuf *b)
{
	pgproto_begin(b, 0);
	pgproto_put_int32(b, (int32_t)PG_SSL_REQUEST_CODE);
	pgproto_end(b);
}

void pgproto_build_cancel(PgBuf *b, uint32_t pid, uint32_t key)
{
	pgproto_begin(b, 0);
	pgproto_put_int32(b, (int32_t)PG_CANCEL_REQUEST_CODE);
	pgproto_put_int32(b, (int32_t)pid);
	pgproto_put_int32(b, (int32_t)key);
	pgproto_end(b);
}

void pgproto_build_terminate(PgBuf *b)
{
	pgproto_begin(b, 'X');
	pgproto_end(b);
}

void pgproto_build_password(PgBuf *b, const char *password)
{
	pgproto_begin(b, 'p');
	pgproto_put_string(b, password);
	pgproto_end(b);
}

void pgproto_build_sasl_initial(PgBuf *b, const char *mechanism, const void *data, size_t len)
{
	pgproto_begin(b, 'p');
	pgproto_put_string(b, mechanism);
	pgproto_put_int32(b, (int32_t)len);
	pgproto_put_bytes(b, data, len);
	pgproto_end(b);
}

void pgproto_build_sasl_response(PgBuf *b, const void *data, size_t len)
{
	pgproto_begin(b, 'p');
	pgproto_put_bytes(b, data, len);
	pgproto_end(b);
}

void pgproto_build_negotiate(PgBuf *b, int32_t minor, const char *const *unrecognised, int n)
{
	pgproto_begin(b, 'v');
	pgproto_put_int32(b, minor);
	pgproto_put_int32(b, n);
	for (int i = 0; i < n; i++)
		pgproto_put_string(b, unrecognised[i]);
	pgproto_end(b);
}

/* ---- error fields ------------------------------------------------------------ */

bool pgproto_parse_error(const uint8_t *body, size_t len, PgErrorFields *out)
{
	PgReader r;
	const char *untranslated = NULL;

	memset(out, 0, sizeof(*out));
	pgproto_reader_init(&r, body, len);
	for (;;) {
		uint8_t code;
		const char *value;

		if (!pgproto_get_byte(&r, &code))
			return false;
		if (code == 0)
			break;
		if (!pgproto_get_string(&r, &value))
			return false;
		switch (code) {
		case 'S': out->severity = value; break;
		case 'V': untranslated = value; break;
		case 'C': out->sqlstate = value; break;
		case 'M': out->message = value; break;
		case 'D': out->detail = value; break;
		default: break;
		}
	}
	if (untranslated != NULL) /* servers since 9.6: "ERROR" whatever lc_messages says */
		out->severity = untranslated;
	return out->sqlstate != NULL && out->message != NULL;
}
