/* SPDX-License-Identifier: MIT */
/*
 * Result rows under a mask plan: one DataRow in, one DataRow out, in a
 * single pass. Unmasked fields are copied as they are; masked ones go
 * through mask_apply(), and whatever cannot be masked becomes NULL. The row
 * is built in a per-thread buffer that is reused, so the common row needs
 * no allocation.
 */
#include "pgveil/mask.h"

#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>

#include "pgveil/pgproto.h"

/* A row buffer grown past this is freed after use. */
#define ROW_KEEP (1024 * 1024)

static __thread PgBuf row_buf;
static __thread bool row_buf_ready;

static PgBuf *row_buffer(void)
{
	if (!row_buf_ready) {
		pgproto_buf_init(&row_buf);
		row_buf_ready = true;
	}
	pgproto_buf_reset(&row_buf);
	return &row_buf;
}

static void row_buffer_done(void)
{
	if (row_buf.cap > ROW_KEEP) {
		pgproto_buf_free(&row_buf);
		row_buf_ready = false;
	}
}

void mask_thread_cleanup(void)
{
	if (row_buf_ready)
		pgproto_buf_free(&row_buf);
	row_buf_ready = false;
}

static uint32_t get_u32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Writes the masked form of one value of field f. */
static void put_masked(PgBuf *b, const MaskPlan *plan, const MaskField *f, const uint8_t *v, int32_t vlen)
{
	MaskOut out;

	if (f->to_null || vlen < 0 || f->rule == NULL) {
		pgproto_put_int32(b, -1);
		return;
	}
	out.heap = NULL; /* mask_apply() sets up the rest */
	if (mask_apply(f->rule, plan->key, f->type_oid, f->format, v, vlen, &out) != MASK_OK || out.len < 0) {
		pgproto_put_int32(b, -1);
	} else {
		pgproto_put_int32(b, out.len);
		pgproto_put_bytes(b, out.data, (size_t)out.len);
	}
	mask_out_release(&out);
}

int mask_datarow(const MaskPlan *plan, const uint8_t *body, size_t len, struct evbuffer *out)
{
	PgBuf *b;
	size_t off = 2, copied = 2;
	int ncols;
	int rc = MASK_OK;

	if (len < 2)
		return MASK_EVALUE;
	ncols = (body[0] << 8) | body[1];
	if (ncols != plan->n_fields)
		return MASK_EVALUE;
	b = row_buffer();
	pgproto_begin(b, 'D');
	pgproto_put_int16(b, (int16_t)ncols);
	for (int i = 0; i < ncols; i++) {
		const MaskField *f = &plan->fields[i];
		size_t start = off;
		int32_t vlen;

		if (len - off < 4) {
			rc = MASK_EVALUE;
			goto done;
		}
		vlen = (int32_t)get_u32(body + off);
		off += 4;
		if (vlen < -1 || (vlen >= 0 && (size_t)vlen > len - off)) {
			rc = MASK_EVALUE;
			goto done;
		}
		if (f->rule != NULL || f->to_null) {
			/* the unmasked fields before it go as they are, length words included, in one copy */
			if (start > copied)
				pgproto_put_bytes(b, body + copied, start - copied);
			put_masked(b, plan, f, body + off, vlen);
			copied = off + (vlen > 0 ? (size_t)vlen : 0);
		}
		if (vlen > 0)
			off += (size_t)vlen;
	}
	if (off != len) {
		rc = MASK_EVALUE;
		goto done;
	}
	if (off > copied)
		pgproto_put_bytes(b, body + copied, off - copied);
	pgproto_end(b);
	if (!pgproto_buf_ok(b) || evbuffer_add(out, b->data, b->len) != 0)
		rc = MASK_ENOMEM;
done:
	row_buffer_done();
	return rc;
}

/* ---- server messages that can echo values -------------------------------------------------- */

/* Fields of an ErrorResponse/NoticeResponse that never carry row contents. */
static bool field_kept(uint8_t code)
{
	return strchr("SVCPpFLRstcdn", code) != NULL;
}

static bool is_hex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/*
 * Appends message text cut where a value may start: at the first '"'
 * (conversion errors quote the value; a value may itself hold quotes) or
 * ": " (some messages name it unquoted, "operator does not exist: ..."),
 * with "***" in its place; any 0xNN (the bytes an encoding conversion
 * error names) before that becomes 0x**.
 */
static void put_scrubbed_text(PgBuf *b, const char *m)
{
	for (; *m; m++) {
		if (m[0] == '0' && m[1] == 'x' && is_hex(m[2])) {
			pgproto_put_bytes(b, "0x**", 4);
			for (m += 2; is_hex(m[1]); m++)
				;
		} else if (*m == '"') {
			pgproto_put_bytes(b, "\"***\"", 5);
			return;
		} else if (m[0] == ':' && m[1] == ' ') {
			pgproto_put_bytes(b, ": ***", 5);
			return;
		} else {
			pgproto_put_bytes(b, m, 1);
		}
	}
}

char *mask_scrub_text(const char *text)
{
	PgBuf b;
	char *r = NULL;

	pgproto_buf_init(&b);
	put_scrubbed_text(&b, text != NULL ? text : "");
	pgproto_put_bytes(&b, "", 1);
	if (pgproto_buf_ok(&b) && (r = malloc(b.len)) != NULL)
		memcpy(r, b.data, b.len);
	pgproto_buf_free(&b);
	return r;
}

int mask_scrub_message(uint8_t type, const uint8_t *body, size_t len, struct evbuffer *out)
{
	PgBuf *b = row_buffer();
	size_t off = 0;
	bool had_detail = false;
	int rc = MASK_OK;

	pgproto_begin(b, type);
	while (off < len && body[off] != 0) {
		uint8_t code = body[off++];
		const char *v = (const char *)body + off;
		const uint8_t *nul = memchr(body + off, 0, len - off);

		if (nul == NULL) {
			rc = MASK_EVALUE;
			goto done;
		}
		off = (size_t)(nul - body) + 1;
		if (code == 'M') {
			pgproto_put_byte(b, code);
			put_scrubbed_text(b, v);
			pgproto_put_byte(b, 0);
		} else if (field_kept(code)) {
			pgproto_put_byte(b, code);
			pgproto_put_string(b, v);
		} else if (code == 'D' || code == 'W' || code == 'H' || code == 'q') {
			had_detail = true;
		}
	}
	if (off + 1 != len) {
		rc = MASK_EVALUE;
		goto done;
	}
	if (had_detail) {
		pgproto_put_byte(b, 'D');
		pgproto_put_string(b, "pgveil removed the detail, context and hint of this message: "
				      "the statement read masked columns.");
	}
	pgproto_put_byte(b, 0);
	pgproto_end(b);
	if (!pgproto_buf_ok(b) || evbuffer_add(out, b->data, b->len) != 0)
		rc = MASK_ENOMEM;
done:
	row_buffer_done();
	return rc;
}
