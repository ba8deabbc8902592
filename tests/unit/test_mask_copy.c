/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of mask_copy_data(): rewriting COPY ... TO STDOUT rows. The
 * fixtures (data/mask_copy_fixtures.inc, made by mask_copy_fixtures.py) are
 * PostgreSQL 15's own bytes: rows of a table of awkward values in text and
 * CSV with several option sets, and the same rows with the masked values
 * put in by SQL, so every expected encoding is the server's. Then hand-made
 * payloads for what the server does not send but COPY FROM reads (octal and
 * hex escapes), malformed rows, impossible formats, large values, and a
 * randomized check that a masked field's bytes never reach the output.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>

#include "pgveil/mask.h"
#include "pgveil/rules.h"

#define TEST_KEY "0123456789abcdef0123456789abcdef"
#define MAX_COLS 16
#define TO_NULL "to_null"      /* a field sent as NULL without a rule */
#define LIT(s) s, sizeof(s) - 1  /* a string literal and its length (it may hold zero bytes) */

enum { MASKSET_A, MASKSET_B };

#define N_ROWS 6

typedef struct CopyFixture {
	const char *name;
	int maskset;
	MaskCopyFormat fmt;
	const char *options;        /* the COPY options, for messages */
	const char *header;         /* the header row's CopyData, NULL without HEADER */
	const char *in[N_ROWS];     /* one CopyData per row, as the server sent them */
	const char *out[N_ROWS];    /* the server's bytes for the masked rows */
} CopyFixture;

#include "data/mask_copy_fixtures.inc"

/* The fixtures' table: id int4, name text, email varchar, note text, amount numeric, born date, score float8, code bpchar. */
#define N_COLS 8
static const uint32_t fixture_oids[N_COLS] = { MASK_OID_INT4,	 MASK_OID_TEXT, MASK_OID_VARCHAR, MASK_OID_TEXT,
					       MASK_OID_NUMERIC, MASK_OID_DATE, MASK_OID_FLOAT8,  MASK_OID_BPCHAR };

/* The rules of each mask set (mask_copy_fixtures.py puts the same values in by SQL). */
static const char *const masksets[][N_COLS] = {
	[MASKSET_A] = { NULL, "partial(1, '\\\",|', 1)", "email()", "constant('tab\there\nnew\\line, \"q\" ''s|;$')",
			"round(2)", "truncate('month')", NULL, "redact()" },
	[MASKSET_B] = { NULL, "null()", "hash(16)", "hash()", NULL, NULL, TO_NULL, TO_NULL },
};

/* ---- helpers -------------------------------------------------------------------- */

static const MaskKey *test_key(void)
{
	static MaskKey k;

	memcpy(k.bytes, TEST_KEY, strlen(TEST_KEY));
	k.len = strlen(TEST_KEY);
	return &k;
}

typedef struct TestPlan {
	MaskPlan plan;
	MaskField fields[MAX_COLS];
	RuleSet *rs[MAX_COLS];
} TestPlan;

/* A plan from one mask per column ("fn(args)", TO_NULL, or NULL for none). */
static void plan_build(TestPlan *tp, const char *const *masks, const uint32_t *oids, int n)
{
	char text[512], *errs = NULL;
	int nerr = 0;

	assert_true(n <= MAX_COLS);
	memset(tp, 0, sizeof(*tp));
	tp->plan.n_fields = n;
	tp->plan.fields = tp->fields;
	tp->plan.key = test_key();
	for (int i = 0; i < n; i++) {
		tp->fields[i].type_oid = oids[i];
		if (masks[i] == NULL)
			continue;
		tp->plan.n_masked++;
		if (strcmp(masks[i], TO_NULL) == 0) {
			tp->fields[i].to_null = true;
			continue;
		}
		snprintf(text, sizeof(text), "MASK public.t.c%d USING %s;", i, masks[i]);
		tp->rs[i] = rules_parse_string("test", text, &errs, &nerr);
		if (tp->rs[i] == NULL)
			fail_msg("cannot parse %s: %s", text, errs ? errs : "?");
		assert_int_equal(tp->rs[i]->n_rules, 1);
		tp->fields[i].rule = &tp->rs[i]->rules[0];
	}
}

static void plan_free(TestPlan *tp)
{
	for (int i = 0; i < MAX_COLS; i++)
		if (tp->rs[i] != NULL)
			rules_unref(tp->rs[i]);
}

/* A plan of n text columns, masks as in plan_build. */
static void plan_text(TestPlan *tp, const char *const *masks, int n)
{
	uint32_t oids[MAX_COLS];

	for (int i = 0; i < n; i++)
		oids[i] = MASK_OID_TEXT;
	plan_build(tp, masks, oids, n);
}

/* Output of one call. */
typedef struct Run {
	int rc;
	size_t len;
	char *data;                 /* NUL-terminated copy */
} Run;

static Run run_copy(const MaskPlan *plan, const MaskCopyFormat *fmt, bool first, const void *in, size_t len)
{
	struct evbuffer *out = evbuffer_new();
	Run r;

	assert_non_null(out);
	r.rc = mask_copy_data(plan, fmt, first, in, len, out);
	r.len = evbuffer_get_length(out);
	r.data = malloc(r.len + 1);
	assert_non_null(r.data);
	assert_int_equal(evbuffer_remove(out, r.data, r.len), (int)r.len);
	r.data[r.len] = '\0';
	evbuffer_free(out);
	return r;
}

static void show(const char *what, const char *s, size_t n)
{
	print_message("%s (%zu bytes): \"", what, n);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c >= 0x20 && c < 0x7f && c != '\\')
			print_message("%c", c);
		else
			print_message("\\x%02x", c);
	}
	print_message("\"\n");
}

/* Asserts that the payload `in` comes out as `want` (first: the header, if any, passes). */
static void expect_copy(const MaskPlan *plan, const MaskCopyFormat *fmt, bool first, const char *in, size_t in_len,
			const char *want, size_t want_len, const char *what)
{
	Run r = run_copy(plan, fmt, first, in, in_len);

	if (r.rc != MASK_OK || r.len != want_len || memcmp(r.data, want, want_len) != 0) {
		show("input", in, in_len);
		show("output", r.data, r.len);
		show("expected", want, want_len);
		free(r.data);
		fail_msg("%s: rc %d", what, r.rc);
	}
	free(r.data);
}

static void expect_str(const MaskPlan *plan, const MaskCopyFormat *fmt, const char *in, const char *want)
{
	expect_copy(plan, fmt, false, in, strlen(in), want, strlen(want), in);
}

/* The same for the first CopyData of a COPY. */
static void expect_first(const MaskPlan *plan, const MaskCopyFormat *fmt, const char *in, const char *want)
{
	expect_copy(plan, fmt, true, in, strlen(in), want, strlen(want), in);
}

/* Asserts that the payload is refused with rc and nothing is appended. */
static void expect_refused(const MaskPlan *plan, const MaskCopyFormat *fmt, const char *in, size_t len, int rc)
{
	Run r = run_copy(plan, fmt, true, in, len);

	if (r.rc != rc || r.len != 0) {
		show("input", in, len);
		show("output", r.data, r.len);
		free(r.data);
		fail_msg("rc %d (expected %d), %zu bytes appended", r.rc, rc, r.len);
	}
	free(r.data);
}

static const MaskCopyFormat text_fmt = { false, '\t', '"', '"', NULL, false };
static const MaskCopyFormat csv_fmt = { true, ',', '"', '"', NULL, false };

/* ---- the server's fixtures ------------------------------------------------------ */

/* Each row alone, as the server sends them: the header (first) unchanged, masked rows as the server writes them. */
static void test_fixtures_per_row(void **state)
{
	char what[128];
	TestPlan tp;

	(void)state;
	for (size_t k = 0; k < PGV_ARRAY_LEN(copy_fixtures); k++) {
		const CopyFixture *fx = &copy_fixtures[k];

		plan_build(&tp, masksets[fx->maskset], fixture_oids, N_COLS);
		if (fx->header != NULL) {
			snprintf(what, sizeof(what), "%s: header", fx->name);
			expect_copy(&tp.plan, &fx->fmt, true, fx->header, strlen(fx->header), fx->header,
				    strlen(fx->header), what);
		}
		for (int i = 0; i < N_ROWS; i++) {
			snprintf(what, sizeof(what), "%s %s: row %d", fx->name, fx->options, i + 1);
			expect_copy(&tp.plan, &fx->fmt, fx->header == NULL && i == 0, fx->in[i], strlen(fx->in[i]),
				    fx->out[i], strlen(fx->out[i]), what);
		}
		plan_free(&tp);
	}
}

/* Appends s to a growing buffer. */
static void cat(char *buf, size_t cap, size_t *len, const char *s)
{
	size_t n = strlen(s);

	assert_true(*len + n < cap);
	memcpy(buf + *len, s, n + 1);
	*len += n;
}

/* All rows (and the header) in one payload. */
static void test_fixtures_whole(void **state)
{
	static char in[8192], want[8192];
	size_t in_len, want_len;
	TestPlan tp;

	(void)state;
	for (size_t k = 0; k < PGV_ARRAY_LEN(copy_fixtures); k++) {
		const CopyFixture *fx = &copy_fixtures[k];

		in_len = want_len = 0;
		in[0] = want[0] = '\0';
		if (fx->header != NULL) {
			cat(in, sizeof(in), &in_len, fx->header);
			cat(want, sizeof(want), &want_len, fx->header);
		}
		for (int i = 0; i < N_ROWS; i++) {
			cat(in, sizeof(in), &in_len, fx->in[i]);
			cat(want, sizeof(want), &want_len, fx->out[i]);
		}
		plan_build(&tp, masksets[fx->maskset], fixture_oids, N_COLS);
		expect_copy(&tp.plan, &fx->fmt, true, in, in_len, want, want_len, fx->name);
		plan_free(&tp);
	}
}

/* Without masks every byte is copied; with every column to_null, each row is NULL strings. */
static void test_fixtures_unmasked_and_all_null(void **state)
{
	static const char *const none[N_COLS] = { NULL };
	static const char *const all[N_COLS] = { TO_NULL, TO_NULL, TO_NULL, TO_NULL, TO_NULL, TO_NULL, TO_NULL, TO_NULL };
	char want[256], what[128];
	const char *null_str;
	TestPlan tp;
	size_t n, w;

	(void)state;
	for (size_t k = 0; k < PGV_ARRAY_LEN(copy_fixtures); k++) {
		const CopyFixture *fx = &copy_fixtures[k];

		null_str = fx->fmt.null_string != NULL ? fx->fmt.null_string : fx->fmt.csv ? "" : "\\N";
		for (n = 0, w = 0; n < N_COLS; n++) {
			if (n > 0)
				want[w++] = fx->fmt.delimiter;
			memcpy(want + w, null_str, strlen(null_str));
			w += strlen(null_str);
		}
		want[w++] = '\n';
		want[w] = '\0';
		for (int i = 0; i < N_ROWS; i++) {
			snprintf(what, sizeof(what), "%s: row %d unmasked", fx->name, i + 1);
			plan_build(&tp, none, fixture_oids, N_COLS);
			expect_copy(&tp.plan, &fx->fmt, false, fx->in[i], strlen(fx->in[i]), fx->in[i], strlen(fx->in[i]),
				    what);
			plan_free(&tp);
			snprintf(what, sizeof(what), "%s: row %d all NULL", fx->name, i + 1);
			plan_build(&tp, all, fixture_oids, N_COLS);
			expect_copy(&tp.plan, &fx->fmt, false, fx->in[i], strlen(fx->in[i]), want, strlen(want), what);
			plan_free(&tp);
		}
	}
}

/* The header passes only as the first row of the first CopyData; later, it is a row like any other. */
static void test_header_only_first(void **state)
{
	static const char *const masks[3] = { NULL, TO_NULL, "redact()" };
	MaskCopyFormat fmt = text_fmt;
	TestPlan tp;

	(void)state;
	fmt.header = true;
	plan_text(&tp, masks, 3);
	expect_first(&tp.plan, &fmt, "a\tb\tc\n1\t2\t3\n", "a\tb\tc\n1\t\\N\t****\n");
	expect_first(&tp.plan, &fmt, "a\tb\tc\n", "a\tb\tc\n");
	expect_str(&tp.plan, &fmt, "a\tb\tc\n", "a\t\\N\t****\n");
	fmt.header = false;
	expect_first(&tp.plan, &fmt, "a\tb\tc\n", "a\t\\N\t****\n");
	/* A CSV header may span lines: its quoted names are skipped whole. */
	fmt = csv_fmt;
	fmt.header = true;
	expect_first(&tp.plan, &fmt, "a,\"b\nb\",\"c,\"\"c\"\n1,2,3\n", "a,\"b\nb\",\"c,\"\"c\"\n1,,****\n");
	/* The header must still have the plan's columns. */
	expect_refused(&tp.plan, &fmt, "a,b\n1,2,3\n", 10, MASK_EVALUE);
	plan_free(&tp);
}

/* ---- decoding ----------------------------------------------------------------------- */

/* The masked text that hash() gives for `value` (len bytes), as COPY text writes it (hex needs no escape). */
static void hash_of(const void *value, size_t len, char *out, size_t cap)
{
	RuleSet *rs;
	char *errs = NULL;
	int nerr = 0;
	MaskOut mo;

	rs = rules_parse_string("test", "MASK public.t.c USING hash();", &errs, &nerr);
	assert_non_null(rs);
	assert_int_equal(mask_apply(&rs->rules[0], test_key(), MASK_OID_TEXT, 0, value, (int32_t)len, &mo), MASK_OK);
	assert_true((size_t)mo.len < cap);
	memcpy(out, mo.data, (size_t)mo.len);
	out[mo.len] = '\0';
	mask_out_release(&mo);
	rules_unref(rs);
}

/* Asserts that the one masked field of `in` (a hash() column between two unmasked ones) decodes to `value`. */
static void expect_decoded(const MaskCopyFormat *fmt, const char *in, const void *value, size_t len)
{
	static const char *const masks[3] = { NULL, "hash()", NULL };
	char h[80], want[256], d[2] = { fmt->delimiter, '\0' };
	TestPlan tp;

	hash_of(value, len, h, sizeof(h));
	snprintf(want, sizeof(want), "x%s%s%sy\n", d, h, d);
	plan_text(&tp, masks, 3);
	expect_str(&tp.plan, fmt, in, want);
	plan_free(&tp);
}

/* What COPY FROM reads besides what COPY TO writes: octal and hex escapes, any escaped byte. */
static void test_text_decoding(void **state)
{
	MaskCopyFormat pipe = { false, '|', 0, 0, "NIL", false };

	(void)state;
	expect_decoded(&text_fmt, "x\ta\\tb\\nc\\\\d\\re\\bf\\fg\\vh\ty\n", LIT("a\tb\nc\\d\re\bf\fg\vh"));
	expect_decoded(&text_fmt, "x\t\\101\\x41\\x4g\\7\\18\\1234\\x\\q\\\t\ty\n", LIT("AA\x04" "g\x07\x01" "8S4xq\t"));
	expect_decoded(&text_fmt, "x\t\\x7e\\X41\\x\\\\\ty\n", LIT("~X41x\\"));
	expect_decoded(&text_fmt, "x\t\\\\N\ty\n", LIT("\\N"));
	expect_decoded(&text_fmt, "x\t\ty\n", LIT(""));
	expect_decoded(&text_fmt, "x\tZo\xc3\xab \xe6\x97\xa5\\t\ty\n", LIT("Zo\xc3\xab \xe6\x97\xa5\t"));
	expect_decoded(&pipe, "x|a\\|b\\\\|y\n", LIT("a|b\\"));
	expect_decoded(&pipe, "x|\\N|y\n", LIT("N"));
	expect_decoded(&pipe, "x|NIL\\||y\n", LIT("NIL|"));
}

static void test_csv_decoding(void **state)
{
	MaskCopyFormat bs = { true, ';', '\'', '\\', "NULL", false };

	(void)state;
	expect_decoded(&csv_fmt, "x,a\"b,\"\"c\"d,y\n", LIT("ab,\"cd"));
	expect_decoded(&csv_fmt, "x,\"line1\nline2\r\n\",y\n", LIT("line1\nline2\r\n"));
	expect_decoded(&csv_fmt, "x,\"\",y\n", LIT(""));
	expect_decoded(&csv_fmt, "x,\\N,y\n", LIT("\\N"));
	expect_decoded(&csv_fmt, "x,a\\b,y\n", LIT("a\\b"));
	expect_decoded(&csv_fmt, "x,\"\"\"\",y\n", LIT("\""));
	expect_decoded(&bs, "x;'a\\'b\\\\c\\d';y\n", LIT("a'b\\c\\d"));
	expect_decoded(&bs, "x;'a''b';y\n", LIT("ab"));
	expect_decoded(&bs, "x;'NULL';y\n", LIT("NULL"));
	expect_decoded(&bs, "x;;y\n", LIT(""));
	expect_decoded(&bs, "x;\"q\";y\n", LIT("\"q\""));
	expect_decoded(&bs, "x;a\\b;y\n", LIT("a\\b"));
}

/* NULL in, NULL out: the raw NULL string; a quoted one is a value. */
static void test_nulls(void **state)
{
	static const char *const masks[2] = { "redact()", "constant('v')" };
	MaskCopyFormat csv_null = { true, ',', '"', '"', "NULL", false };
	TestPlan tp;

	(void)state;
	plan_text(&tp, masks, 2);
	expect_str(&tp.plan, &text_fmt, "\\N\t\\N\n", "\\N\t\\N\n");
	expect_str(&tp.plan, &text_fmt, "\\\\N\t\n", "****\tv\n");
	expect_str(&tp.plan, &csv_fmt, ",\n", ",\n");
	expect_str(&tp.plan, &csv_fmt, "\"\",\"\"\n", "****,v\n");
	expect_str(&tp.plan, &csv_null, "NULL,\"NULL\"\n", "NULL,v\n");
	expect_str(&tp.plan, &csv_null, ",\n", "****,v\n");
	plan_free(&tp);
}

/* A decoded zero byte, or a value the mask function rejects, gives NULL; unmasked fields pass as they are. */
static void test_undecodable_and_rejected(void **state)
{
	static const char *const masks[4] = { "hash()", NULL, "truncate('month')", "round(2)" };
	static const uint32_t oids[4] = { MASK_OID_TEXT, MASK_OID_TEXT, MASK_OID_DATE, MASK_OID_NUMERIC };
	static const char *const hash_only[1] = { "hash(8)" };
	char h[80], want[256];
	TestPlan tp;

	(void)state;
	plan_build(&tp, masks, oids, 4);
	expect_str(&tp.plan, &text_fmt, "a\\000b\t\\000\tnot a date\tabc\n", "\\N\t\\000\t\\N\t\\N\n");
	expect_str(&tp.plan, &text_fmt, "a\\x00\t\\x00\t2024-02-30x\t1.2.3\n", "\\N\t\\x00\t\\N\t\\N\n");
	expect_str(&tp.plan, &text_fmt, "\\N\tq\t2024-03-31\t-12345\n", "\\N\tq\t2024-03-01\t-12000\n");
	expect_str(&tp.plan, &text_fmt, "\\N\tq\t15.01.2024\t\\N\n", "\\N\tq\t\\N\t\\N\n"); /* another DateStyle */
	hash_of("a\\000", 5, h, sizeof(h)); /* in CSV a backslash is a byte like any other */
	snprintf(want, sizeof(want), "%s,\"a\nb\",,\n", h);
	expect_str(&tp.plan, &csv_fmt, "a\\000,\"a\nb\",\"2024-02-3x\",\"1,5\"\n", want);
	plan_free(&tp);
	/* hash() without a key: NULL */
	plan_text(&tp, hash_only, 1);
	tp.plan.key = NULL;
	expect_str(&tp.plan, &text_fmt, "secret\n", "\\N\n");
	expect_str(&tp.plan, &csv_fmt, "secret\n", "\n");
	plan_free(&tp);
}

/* ---- encoding ------------------------------------------------------------------------ */

/* Masked values are written as COPY TO writes them. */
static void test_encoding(void **state)
{
	static const char *const c1[1] = { "constant('a\tb\nc\rd\\e\x01|f\x7fg\x08\x0b\x0c')" };
	static const char *const c2[1] = { "constant('\\.')" };
	static const char *const c3[1] = { "constant('')" };
	static const char *const c4[2] = { "constant('NULL')", "constant('a\"b\\c;''d')" };
	static const char *const c5[2] = { "constant('\\.')", NULL };
	static const char *const c6[1] = { "constant('a\rb')" };
	MaskCopyFormat soh = { false, '\x01', 0, 0, NULL, false };
	MaskCopyFormat pipe = { false, '|', 0, 0, "NIL", false };
	MaskCopyFormat bs = { true, ';', '"', '\\', "NULL", false };
	TestPlan tp;

	(void)state;
	plan_text(&tp, c1, 1);
	expect_str(&tp.plan, &text_fmt, "x\n", "a\\tb\\nc\\rd\\\\e\x01|f\x7fg\\b\\v\\f\n");
	expect_str(&tp.plan, &soh, "x\n", "a\\tb\\nc\\rd\\\\e\\\x01|f\x7fg\\b\\v\\f\n");
	expect_str(&tp.plan, &pipe, "x\n", "a\\tb\\nc\\rd\\\\e\x01\\|f\x7fg\\b\\v\\f\n");
	expect_str(&tp.plan, &csv_fmt, "x\n", "\"a\tb\nc\rd\\e\x01|f\x7fg\x08\x0b\x0c\"\n");
	plan_free(&tp);
	plan_text(&tp, c6, 1);
	expect_str(&tp.plan, &csv_fmt, "x\n", "\"a\rb\"\n");
	expect_str(&tp.plan, &text_fmt, "x\n", "a\\rb\n");
	plan_free(&tp);
	/* CSV quotes a lone "\." when it is the only column, the NULL string, and the empty string when it is NULL's */
	plan_text(&tp, c2, 1);
	expect_str(&tp.plan, &csv_fmt, "x\n", "\"\\.\"\n");
	expect_str(&tp.plan, &text_fmt, "x\n", "\\\\.\n");
	plan_free(&tp);
	plan_text(&tp, c5, 2);
	expect_str(&tp.plan, &csv_fmt, "x,y\n", "\\.,y\n");
	plan_free(&tp);
	plan_text(&tp, c3, 1);
	expect_str(&tp.plan, &csv_fmt, "x\n", "\"\"\n");
	expect_str(&tp.plan, &bs, "x\n", "\n");
	expect_str(&tp.plan, &text_fmt, "x\n", "\n");
	plan_free(&tp);
	plan_text(&tp, c4, 2);
	expect_str(&tp.plan, &bs, "x;y\n", "\"NULL\";\"a\\\"b\\\\c;'d\"\n");
	expect_str(&tp.plan, &csv_fmt, "x,y\n", "NULL,\"a\"\"b\\c;'d\"\n");
	plan_free(&tp);
}

/* partial() on multi-byte UTF-8 in both formats. */
static void test_utf8(void **state)
{
	static const char *const masks[2] = { "partial(2, '…', 1)", NULL };
	TestPlan tp;

	(void)state;
	plan_text(&tp, masks, 2);
	expect_str(&tp.plan, &text_fmt, "Zoë Müller\tÜ\n", "Zo…r\tÜ\n");
	expect_str(&tp.plan, &text_fmt, "日本語テキスト\t日\n", "日本…ト\t日\n");
	expect_str(&tp.plan, &csv_fmt, "\"日,本\"\"語\nテ\",\"日,\"\n", "\"日,…テ\",\"日,\"\n");
	plan_free(&tp);
}

/* Values larger than the inline buffers: decoded on the heap, written straight to the evbuffer. */
static void test_large_values(void **state)
{
	static const char *const masks[3] = { "partial(1500, '-', 1500)", NULL, "hash()" };
	size_t n = 5000, len = 0;
	char *in = malloc(4 * n), *want = malloc(4 * n), *value = malloc(n), h[80];
	TestPlan tp;

	(void)state;
	assert_non_null(in);
	assert_non_null(want);
	assert_non_null(value);
	for (size_t i = 0; i < n; i++)
		value[i] = i % 100 == 99 ? '\t' : (char)('a' + i % 26);
	hash_of(value, n, h, sizeof(h));
	/* row: the value escaped, an unmasked copy of it, the value again (hashed) */
	for (int k = 0; k < 3; k++) {
		for (size_t i = 0; i < n; i++) {
			if (value[i] == '\t') {
				in[len++] = '\\';
				in[len++] = 't';
			} else {
				in[len++] = value[i];
			}
		}
		in[len++] = k < 2 ? '\t' : '\n';
	}
	size_t w = 0;
	for (size_t i = 0; i < 1500; i++)
		w += (size_t)sprintf(want + w, "%s", value[i] == '\t' ? "\\t" : (char[]){ value[i], 0 });
	want[w++] = '-';
	for (size_t i = n - 1500; i < n; i++)
		w += (size_t)sprintf(want + w, "%s", value[i] == '\t' ? "\\t" : (char[]){ value[i], 0 });
	want[w++] = '\t';
	memcpy(want + w, in + (len / 3), len / 3);
	w += len / 3;
	w += (size_t)sprintf(want + w, "%s\n", h);
	plan_text(&tp, masks, 3);
	expect_copy(&tp.plan, &text_fmt, false, in, len, want, w, "large");
	plan_free(&tp);
	free(in);
	free(want);
	free(value);
}

/* ---- refusals ------------------------------------------------------------------------ */

static void test_malformed(void **state)
{
	static const char *const masks[3] = { NULL, "redact()", NULL };
	MaskCopyFormat bad;
	TestPlan tp;

	(void)state;
	plan_text(&tp, masks, 3);
	expect_refused(&tp.plan, &text_fmt, "a\tb\n", 4, MASK_EVALUE);                  /* too few columns */
	expect_refused(&tp.plan, &text_fmt, "a\tb\tc\td\n", 8, MASK_EVALUE);            /* too many */
	expect_refused(&tp.plan, &text_fmt, "a\tb\tc", 5, MASK_EVALUE);                 /* no newline */
	expect_refused(&tp.plan, &text_fmt, "a\tb\tc\n1\t2\n", 10, MASK_EVALUE);        /* the second row */
	expect_refused(&tp.plan, &text_fmt, "a\tb\tc\n1\t2\t3", 11, MASK_EVALUE);       /* a partial row after one */
	expect_refused(&tp.plan, &text_fmt, "a\tb\tc\\\n", 7, MASK_EVALUE);             /* an escaped newline, then nothing */
	expect_refused(&tp.plan, &text_fmt, "a\tb\rx\tc\n", 8, MASK_EVALUE);           /* a bare carriage return */
	expect_refused(&tp.plan, &text_fmt, "a\tb\rc\n", 6, MASK_EVALUE);              /* ... that COPY FROM would split at */
	expect_refused(&tp.plan, &csv_fmt, "a,b\rc\n", 6, MASK_EVALUE);
	expect_refused(&tp.plan, &text_fmt, "\n", 1, MASK_EVALUE);
	expect_refused(&tp.plan, &csv_fmt, "a,\"b,c\n", 7, MASK_EVALUE);                /* unclosed quote */
	expect_refused(&tp.plan, &csv_fmt, "a,\"b\"\",c\n", 9, MASK_EVALUE);            /* an escaped quote is not a closing one */
	expect_refused(&tp.plan, &csv_fmt, "a,b\r,c\n", 7, MASK_EVALUE);
	expect_refused(&tp.plan, &csv_fmt, "a,b,c\r\n", 7, MASK_EVALUE);
	expect_refused(&tp.plan, &csv_fmt, "a,\"b\",c,\"d\ne\"\n", 14, MASK_EVALUE);
	/* the payload checks out whole before anything is written */
	expect_refused(&tp.plan, &csv_fmt, "1,2,3\n4,5,6\n7,8\n", 16, MASK_EVALUE);
	/* but an embedded newline in quotes or an escaped one in text is data */
	expect_str(&tp.plan, &csv_fmt, "a,\"b\nc\",\"d\r\ne\"\n", "a,****,\"d\r\ne\"\n");
	expect_str(&tp.plan, &text_fmt, "a\\\nb\tc\\\nd\te\\\rf\n", "a\\\nb\t****\te\\\rf\n");

	/* formats the server refuses */
	bad = text_fmt;
	bad.delimiter = '\n';
	expect_refused(&tp.plan, &bad, "a\n", 2, MASK_EARGS);
	bad.delimiter = '\\';
	expect_refused(&tp.plan, &bad, "a\\b\\c\n", 6, MASK_EARGS);
	bad.delimiter = 'a';
	expect_refused(&tp.plan, &bad, "xayaz\n", 6, MASK_EARGS);
	bad.delimiter = '7';
	expect_refused(&tp.plan, &bad, "x7y7z\n", 6, MASK_EARGS);
	bad.delimiter = '\r';
	expect_refused(&tp.plan, &bad, "x\ry\rz\n", 6, MASK_EARGS);
	bad = text_fmt;
	bad.null_string = "a\tb";
	expect_refused(&tp.plan, &bad, "a\tb\tc\n", 6, MASK_EARGS);
	bad.null_string = "a\nb";
	expect_refused(&tp.plan, &bad, "a\tb\tc\n", 6, MASK_EARGS);
	bad = csv_fmt;
	bad.quote = ',';
	expect_refused(&tp.plan, &bad, "a,b,c\n", 6, MASK_EARGS);
	bad = csv_fmt;
	bad.null_string = "\"";
	expect_refused(&tp.plan, &bad, "a,b,c\n", 6, MASK_EARGS);
	bad = csv_fmt;
	bad.escape = '\n';
	expect_refused(&tp.plan, &bad, "a,b,c\n", 6, MASK_EARGS);
	bad = csv_fmt;
	bad.quote = '\r';
	expect_refused(&tp.plan, &bad, "a,b,c\n", 6, MASK_EARGS);
	expect_refused(NULL, &text_fmt, "a\tb\tc\n", 6, MASK_EARGS);
	expect_refused(&tp.plan, NULL, "a\tb\tc\n", 6, MASK_EARGS);
	tp.plan.fields = NULL;
	expect_refused(&tp.plan, &text_fmt, "a\tb\tc\n", 6, MASK_EARGS);
	plan_free(&tp);
	/* an uppercase letter is a valid text delimiter */
	plan_text(&tp, masks, 3);
	bad = text_fmt;
	bad.delimiter = 'Q';
	expect_str(&tp.plan, &bad, "aQbQc\n", "aQ****Qc\n");
	/* zero bytes stand for the defaults */
	memset(&bad, 0, sizeof(bad));
	expect_str(&tp.plan, &bad, "a\tb\tc\n", "a\t****\tc\n");
	bad.csv = true;
	expect_str(&tp.plan, &bad, "a,\"b\"\"\",c\n", "a,****,c\n");
	bad.quote = '\'';
	expect_str(&tp.plan, &bad, "a,'b''',c\n", "a,****,c\n");
	plan_free(&tp);
}

static void test_empty_and_zero_columns(void **state)
{
	static const char *const masks[1] = { "redact()" };
	TestPlan tp;
	Run r;

	(void)state;
	plan_text(&tp, masks, 1);
	r = run_copy(&tp.plan, &text_fmt, true, NULL, 0);
	assert_int_equal(r.rc, MASK_OK);
	assert_int_equal(r.len, 0);
	free(r.data);
	expect_str(&tp.plan, &text_fmt, "\n", "****\n"); /* one empty string */
	expect_str(&tp.plan, &csv_fmt, "\"\"\n\n", "****\n\n");
	tp.plan.n_fields = 0;
	tp.plan.n_masked = 0;
	expect_str(&tp.plan, &text_fmt, "\n\n", "\n\n");
	expect_refused(&tp.plan, &text_fmt, "x\n", 2, MASK_EVALUE);
	expect_refused(&tp.plan, &text_fmt, "\n\t\n", 3, MASK_EVALUE);
	plan_free(&tp);
}

/* ---- allocation failures ------------------------------------------------------------ */

/* realloc() is wrapped (Makefile.am): with fail_realloc set, requests of more than 1 KiB fail. */
static bool fail_realloc;

void *__real_realloc(void *p, size_t n);
void *__wrap_realloc(void *p, size_t n);

void *__wrap_realloc(void *p, size_t n)
{
	if (fail_realloc && n > 1024)
		return NULL;
	return __real_realloc(p, n);
}

/* A large masked value that cannot be decoded for want of memory: MASK_ENOMEM, and none of it in the output. */
static void test_out_of_memory(void **state)
{
	static const char *const masks[2] = { NULL, "redact()" };
	size_t n = 4000, len = 0;
	char *in = malloc(n + 16);
	TestPlan tp;
	Run r;

	(void)state;
	assert_non_null(in);
	len += (size_t)sprintf(in, "plain\t");
	memset(in + len, 'Z', n);
	len += n;
	in[len++] = '\n';
	plan_text(&tp, masks, 2);
	fail_realloc = true;
	r = run_copy(&tp.plan, &text_fmt, false, in, len);
	fail_realloc = false;
	assert_int_equal(r.rc, MASK_ENOMEM);
	assert_null(memchr(r.data, 'Z', r.len));
	free(r.data);
	r = run_copy(&tp.plan, &text_fmt, false, in, len);
	assert_int_equal(r.rc, MASK_OK);
	assert_string_equal(r.data, "plain\t****\n");
	free(r.data);
	plan_free(&tp);
	free(in);
}

/* ---- never the original ------------------------------------------------------------- */

static uint32_t rng_state = 12345;

static uint32_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 17;
	rng_state ^= rng_state << 5;
	return rng_state;
}

/* A random payload of about `rows` rows of 3 fields, mostly plain, with every byte that means something. */
static size_t random_payload(const MaskCopyFormat *f, char *buf, size_t cap, int rows)
{
	static const char plain[] = "abZZZ";
	static const char special[] = ",;|\t\n\r\\\"'$.NUL\x01\xc3\xa9";
	size_t len = 0;

	for (int r = 0; r < rows; r++) {
		for (int k = 0; k < 3 && len + 16 < cap; k++) {
			int n = (int)(rng() % 6);

			if (k > 0)
				buf[len++] = f->delimiter;
			if (f->csv && rng() % 4 == 0)
				buf[len++] = f->quote;
			for (int i = 0; i < n; i++)
				buf[len++] = rng() % 5 == 0 ? special[rng() % (sizeof(special) - 1)]
							    : plain[rng() % (sizeof(plain) - 1)];
			if (f->csv && rng() % 4 == 0)
				buf[len++] = f->quote;
		}
		if (rng() % 20 != 0)
			buf[len++] = '\n';
	}
	return len;
}

/*
 * Random payloads, well-formed or not. With no column masked, the output is
 * the input; with every column masked, no byte of any value reaches the
 * output ('Z' is in values only); either way, the same payloads are refused.
 */
static void test_random_never_leaks(void **state)
{
	static const char *const none[3] = { NULL, NULL, NULL };
	static const char *const all[3] = { "redact()", TO_NULL, "partial(0, '*', 0)" };
	const MaskCopyFormat fmts[4] = { text_fmt, csv_fmt, { true, ';', '\'', '\\', "NULL", false },
					 { false, '|', 0, 0, "NUL", false } };
	char in[512];
	TestPlan tn, ta;
	int ok = 0;
	Run u, m;

	(void)state;
	plan_text(&tn, none, 3);
	plan_text(&ta, all, 3);
	for (int iter = 0; iter < 50000; iter++) {
		const MaskCopyFormat *f = &fmts[rng() % 4];
		size_t len = random_payload(f, in, sizeof(in), 1 + (int)(rng() % 3));

		u = run_copy(&tn.plan, f, false, in, len);
		m = run_copy(&ta.plan, f, false, in, len);
		assert_int_equal(u.rc, m.rc);
		if (u.rc == MASK_OK) {
			ok++;
			assert_int_equal(u.len, len);
			assert_memory_equal(u.data, in, len);
			if (memchr(m.data, 'Z', m.len) != NULL) {
				show("input", in, len);
				show("output", m.data, m.len);
				fail_msg("a masked value reached the output");
			}
		} else {
			assert_int_equal(u.rc, MASK_EVALUE);
			assert_int_equal(u.len + m.len, 0);
		}
		free(u.data);
		free(m.data);
	}
	plan_free(&tn);
	plan_free(&ta);
	print_message("%d of 50000 random payloads well-formed\n", ok);
	assert_true(ok > 5000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fixtures_per_row),
		cmocka_unit_test(test_fixtures_whole),
		cmocka_unit_test(test_fixtures_unmasked_and_all_null),
		cmocka_unit_test(test_header_only_first),
		cmocka_unit_test(test_text_decoding),
		cmocka_unit_test(test_csv_decoding),
		cmocka_unit_test(test_nulls),
		cmocka_unit_test(test_undecodable_and_rejected),
		cmocka_unit_test(test_encoding),
		cmocka_unit_test(test_utf8),
		cmocka_unit_test(test_large_values),
		cmocka_unit_test(test_malformed),
		cmocka_unit_test(test_empty_and_zero_columns),
		cmocka_unit_test(test_out_of_memory),
		cmocka_unit_test(test_random_never_leaks),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
