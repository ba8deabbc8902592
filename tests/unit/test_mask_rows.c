/* SPDX-License-Identifier: MIT */
/*
 * Whole-message rewriting (src/mask_rows.c): DataRows under a mask plan,
 * and the scrubbing of ErrorResponse/NoticeResponse bodies. Messages are
 * built byte by byte here and the output is compared exactly.
 */
#include <event2/buffer.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pgveil/mask.h"

typedef struct Msg {
	uint8_t b[8192];
	size_t n;
} Msg;

static void put16(Msg *m, int v)
{
	m->b[m->n++] = (uint8_t)(v >> 8);
	m->b[m->n++] = (uint8_t)v;
}

static void put32(Msg *m, int32_t v)
{
	for (int i = 3; i >= 0; i--)
		m->b[m->n++] = (uint8_t)((uint32_t)v >> (8 * i));
}

/* A field: NULL when s is NULL. */
static void field(Msg *m, const char *s)
{
	if (s == NULL) {
		put32(m, -1);
		return;
	}
	put32(m, (int32_t)strlen(s));
	memcpy(m->b + m->n, s, strlen(s));
	m->n += strlen(s);
}

/* A DataRow body of n fields. */
static Msg row(int n, ...)
{
	Msg m = { .n = 0 };
	va_list ap;

	put16(&m, n);
	va_start(ap, n);
	for (int i = 0; i < n; i++)
		field(&m, va_arg(ap, const char *));
	va_end(ap);
	return m;
}

static RuleSet *rules;

static const Rule *rule(int i)
{
	return &rules->rules[i];
}

static int setup(void **state)
{
	char *errs = NULL;
	int n = 0;

	(void)state;
	rules = rules_parse_string("t", "MASK t.a USING email(); MASK t.b USING partial(0, '***-', 2);"
					"MASK t.c USING round(1);",
				   &errs, &n);
	return rules == NULL;
}

static int teardown(void **state)
{
	(void)state;
	rules_unref(rules);
	return 0;
}

/* Rewrites body under plan; returns the result code and the output as a new Msg. */
static int rewrite(const MaskPlan *plan, const Msg *in, Msg *out)
{
	struct evbuffer *eb = evbuffer_new();
	int rc = mask_datarow(plan, in->b, in->n, eb);

	out->n = evbuffer_get_length(eb);
	assert_true(out->n <= sizeof(out->b));
	evbuffer_remove(eb, out->b, out->n);
	evbuffer_free(eb);
	return rc;
}

/* The expected whole DataRow message of body. */
static Msg message(const Msg *body)
{
	Msg m = { .n = 0 };

	m.b[m.n++] = 'D';
	put32(&m, (int32_t)body->n + 4);
	memcpy(m.b + m.n, body->b, body->n);
	m.n += body->n;
	return m;
}

static void assert_msg_equal(const Msg *a, const Msg *b)
{
	assert_int_equal(a->n, b->n);
	assert_memory_equal(a->b, b->b, a->n);
}

static void test_mixed_row(void **state)
{
	MaskField f[5] = {
		{ .type_oid = MASK_OID_INT4 },
		{ .rule = NULL, .type_oid = MASK_OID_TEXT },
		{ .rule = NULL, .type_oid = MASK_OID_TEXT, .to_null = true },
		{ .rule = NULL, .type_oid = MASK_OID_TEXT },
		{ .rule = NULL, .type_oid = MASK_OID_NUMERIC },
	};
	MaskPlan plan = { .n_fields = 5, .fields = f, .n_masked = 4 };
	Msg in, want, want_body, out;

	(void)state;
	f[1].rule = rule(0);
	f[3].rule = rule(1);
	f[4].rule = rule(2);
	in = row(5, "7", "jane.doe@example.com", "secret note", "123-45-6789", "12345.67");
	want_body = row(5, "7", "j***@example.com", NULL, "***-89", "10000");
	want = message(&want_body);
	assert_int_equal(rewrite(&plan, &in, &out), MASK_OK);
	assert_msg_equal(&out, &want);

	/* NULL stays NULL; an empty value is masked like any other */
	in = row(5, NULL, NULL, "", NULL, NULL);
	want_body = row(5, NULL, NULL, NULL, NULL, NULL);
	want = message(&want_body);
	assert_int_equal(rewrite(&plan, &in, &out), MASK_OK);
	assert_msg_equal(&out, &want);
}

static void test_unmasked_fields_pass_byte_for_byte(void **state)
{
	MaskField f[3] = { { .type_oid = MASK_OID_TEXT }, { .type_oid = MASK_OID_TEXT }, { .type_oid = MASK_OID_TEXT } };
	MaskPlan plan = { .n_fields = 3, .fields = f, .n_masked = 1 };
	Msg in, want, want_body, out;

	(void)state;
	f[2].rule = rule(0);
	in = row(3, "a\tb", NULL, "x@y");
	want_body = row(3, "a\tb", NULL, "***@y");
	want = message(&want_body);
	assert_int_equal(rewrite(&plan, &in, &out), MASK_OK);
	assert_msg_equal(&out, &want);
	/* the masked field first */
	f[2].rule = NULL;
	f[0].rule = rule(0);
	in = row(3, "ab@c", "middle", NULL);
	want_body = row(3, "a***@c", "middle", NULL);
	want = message(&want_body);
	assert_int_equal(rewrite(&plan, &in, &out), MASK_OK);
	assert_msg_equal(&out, &want);
}

static void test_mask_error_gives_null(void **state)
{
	MaskField f[1] = { { .type_oid = MASK_OID_NUMERIC } };
	MaskPlan plan = { .n_fields = 1, .fields = f, .n_masked = 1 };
	Msg in, want, want_body, out;

	(void)state;
	f[0].rule = rule(2);
	in = row(1, "not a number");
	want_body = row(1, NULL);
	want = message(&want_body);
	assert_int_equal(rewrite(&plan, &in, &out), MASK_OK);
	assert_msg_equal(&out, &want);
}

static void test_malformed_rows_append_nothing(void **state)
{
	MaskField f[2] = { { .type_oid = MASK_OID_TEXT }, { .type_oid = MASK_OID_TEXT } };
	MaskPlan plan = { .n_fields = 2, .fields = f, .n_masked = 1 };
	Msg in, out;

	(void)state;
	f[1].rule = rule(0);
	in = row(3, "a", "b@c", "d"); /* a column more than the plan */
	assert_int_equal(rewrite(&plan, &in, &out), MASK_EVALUE);
	assert_int_equal(out.n, 0);
	in = row(2, "a", "b@c");
	in.n -= 1; /* the last value cut short */
	assert_int_equal(rewrite(&plan, &in, &out), MASK_EVALUE);
	assert_int_equal(out.n, 0);
	in = row(2, "a", "b@c");
	in.b[in.n++] = 'x'; /* a byte after the last field */
	assert_int_equal(rewrite(&plan, &in, &out), MASK_EVALUE);
	assert_int_equal(out.n, 0);
	in = row(2, "a", "b@c");
	in.b[2] = 0xff; /* a length below -1 */
	assert_int_equal(rewrite(&plan, &in, &out), MASK_EVALUE);
	assert_int_equal(out.n, 0);
	in.n = 1;
	assert_int_equal(rewrite(&plan, &in, &out), MASK_EVALUE);
}

static void test_large_row(void **state)
{
	static char big[3000];
	MaskField f[2] = { { .type_oid = MASK_OID_TEXT }, { .type_oid = MASK_OID_TEXT } };
	MaskPlan plan = { .n_fields = 2, .fields = f, .n_masked = 1 };
	Msg in, want, want_body, out;

	(void)state;
	memset(big, 'z', sizeof(big) - 1);
	f[1].rule = rule(1);
	in = row(2, big, big);
	want_body = row(2, big, "***-zz");
	want = message(&want_body);
	assert_int_equal(rewrite(&plan, &in, &out), MASK_OK);
	assert_msg_equal(&out, &want);
}

/* ---- errors and notices ---------------------------------------------------------------- */

static Msg error_body(const char *const *fields)
{
	Msg m = { .n = 0 };

	for (; *fields != NULL; fields++) {
		memcpy(m.b + m.n, *fields, strlen(*fields) + 1);
		m.n += strlen(*fields) + 1;
	}
	m.b[m.n++] = 0;
	return m;
}

static char *scrub(uint8_t type, const Msg *in, int *rc)
{
	struct evbuffer *eb = evbuffer_new();
	size_t n;
	char *s;

	*rc = mask_scrub_message(type, in->b, in->n, eb);
	n = evbuffer_get_length(eb);
	s = calloc(1, n + 1);
	evbuffer_remove(eb, s, n);
	evbuffer_free(eb);
	for (size_t i = 0; i + 1 < n; i++) /* readable: NULs as '|' */
		if (s[i] == 0)
			s[i] = '|';
	return s;
}

static void test_scrub(void **state)
{
	static const char *const check[] = {
		"SERROR", "VERROR", "C23514",
		"Mnew row for relation \"users\" violates check constraint \"users_salary_check\"",
		"DFailing row contains (1, Jane, jane@example.com, -1.00).", "spublic", "tusers",
		"nusers_salary_check", "Fexecution.c", "L2049", "RExecConstraints", NULL,
	};
	static const char *const cast[] = {
		"SERROR", "VERROR", "C22P02", "Minvalid input syntax for type integer: \"jane@example.com\"",
		"WSQL function \"f\" statement 1", "Hconsider a cast of jane@example.com", "qSELECT 'jane'", NULL,
	};
	static const char *const plain[] = { "SNOTICE", "VNOTICE", "C00000", "Mnothing to hide", NULL };
	Msg in;
	char *out;
	int rc;

	(void)state;
	in = error_body(check);
	out = scrub('E', &in, &rc);
	assert_int_equal(rc, MASK_OK);
	assert_null(strstr(out, "jane"));
	assert_non_null(strstr(out, "C23514|"));
	assert_non_null(strstr(out, "Mnew row for relation \"***\"|"));
	assert_non_null(strstr(out, "nusers_salary_check|"));
	assert_non_null(strstr(out, "Dpgveil removed the detail"));
	assert_int_equal(out[0], 'E');
	free(out);

	in = error_body(cast);
	out = scrub('E', &in, &rc);
	assert_int_equal(rc, MASK_OK);
	assert_null(strstr(out, "jane"));
	assert_non_null(strstr(out, "Minvalid input syntax for type integer: ***|"));
	free(out);

	in = error_body(plain);
	out = scrub('N', &in, &rc);
	assert_int_equal(rc, MASK_OK);
	assert_int_equal(out[0], 'N');
	assert_non_null(strstr(out, "Mnothing to hide|"));
	assert_null(strstr(out, "pgveil removed")); /* nothing removed, nothing said */
	free(out);

	/* bytes named in an encoding conversion error */
	static const char *const conversion[] = {
		"SERROR", "C22P05",
		"Mcharacter with byte sequence 0xc3 0xab in encoding \"UTF8\" has no equivalent in encoding \"KOI8R\"",
		NULL,
	};
	in = error_body(conversion);
	out = scrub('E', &in, &rc);
	assert_int_equal(rc, MASK_OK);
	assert_non_null(strstr(out, "Mcharacter with byte sequence 0x** 0x** in encoding \"***\"|"));
	free(out);

	/* a value holding quotes, or named without them, is cut with the rest */
	static const char *const inner_quote[] = {
		"SERROR", "C22P02", "Minvalid input syntax for type json: \"a\"jane@example.com\"b\"", NULL,
	};
	static const char *const unquoted[] = { "SERROR", "C42883", "Moperator does not exist: jane@example.com", NULL };
	in = error_body(inner_quote);
	out = scrub('E', &in, &rc);
	assert_int_equal(rc, MASK_OK);
	assert_null(strstr(out, "jane"));
	free(out);
	in = error_body(unquoted);
	out = scrub('E', &in, &rc);
	assert_int_equal(rc, MASK_OK);
	assert_non_null(strstr(out, "Moperator does not exist: ***|"));
	free(out);

	/* an unterminated quote hides the rest */
	static const char *const open_quote[] = { "SERROR", "C22P02", "Mvalue \"jane@example.com", NULL };
	in = error_body(open_quote);
	out = scrub('E', &in, &rc);
	assert_int_equal(rc, MASK_OK);
	assert_null(strstr(out, "jane"));
	free(out);

	/* malformed bodies append nothing */
	in = error_body(plain);
	in.n--; /* no final terminator */
	out = scrub('E', &in, &rc);
	assert_int_equal(rc, MASK_EVALUE);
	assert_string_equal(out, "");
	free(out);
	in.n = 3; /* cut inside a field */
	out = scrub('E', &in, &rc);
	assert_int_equal(rc, MASK_EVALUE);
	free(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mixed_row),
		cmocka_unit_test(test_unmasked_fields_pass_byte_for_byte),
		cmocka_unit_test(test_mask_error_gives_null),
		cmocka_unit_test(test_malformed_rows_append_nothing),
		cmocka_unit_test(test_large_row),
		cmocka_unit_test(test_scrub),
	};
	int rc = cmocka_run_group_tests(tests, setup, teardown);

	mask_thread_cleanup();
	return rc;
}
