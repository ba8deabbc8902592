/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the mask functions: the first bytes choose a
 * function with its arguments, a column type and a format, the rest is the
 * field value. Every input must give MASK_OK or an error with a NULL
 * result, never a crash or a read past the value; a text function's result
 * is valid UTF-8 and only as long as what it keeps plus its padding.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgveil/mask.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const fns[] = {
	"redact()", "null()", "constant('42')", "constant('x')", "constant('2024-02-29')",
	"constant('2024-02-29 12:00:00+01')", "constant('1.5')", "constant('t')", "partial(2, '*', 2)",
	"partial(0, '…', 1)", "partial(0, '', 0)", "email()", "hash()", "hash(7)", "truncate('year')",
	"truncate('month')", "truncate('day')", "truncate('hour')", "round(1)", "round(2)", "round(17)",
	"round(38)",
};

static const uint32_t oids[] = {
	MASK_OID_TEXT, MASK_OID_VARCHAR, MASK_OID_BPCHAR, MASK_OID_NAME, MASK_OID_INT2, MASK_OID_INT4,
	MASK_OID_INT8, MASK_OID_NUMERIC, MASK_OID_FLOAT4, MASK_OID_FLOAT8, MASK_OID_DATE, MASK_OID_TIMESTAMP,
	MASK_OID_TIMESTAMPTZ, MASK_OID_BOOL, MASK_OID_JSONB, MASK_OID_UUID, 16384,
};

static RuleSet *sets[PGV_ARRAY_LEN(fns)];

static const Rule *rule(size_t i)
{
	if (sets[i] == NULL) {
		char text[128], *errs = NULL;
		int n = 0;

		snprintf(text, sizeof(text), "MASK t.c USING %s;", fns[i]);
		sets[i] = rules_parse_string("fuzz", text, &errs, &n);
		if (sets[i] == NULL)
			abort();
	}
	return &sets[i]->rules[0];
}

/* Every byte >= 0x80 of a text result is part of a well-formed sequence. */
static void check_utf8(const uint8_t *p, int32_t len)
{
	for (int32_t i = 0; i < len;) {
		int n = p[i] < 0x80 ? 1 : p[i] >= 0xF0 ? 4 : p[i] >= 0xE0 ? 3 : 2;

		if (p[i] >= 0x80 && (p[i] < 0xC2 || p[i] > 0xF4))
			abort();
		if (i + n > len)
			abort();
		for (int k = 1; k < n; k++)
			if ((p[i + k] & 0xC0) != 0x80)
				abort();
		i += n;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	MaskKey key = { .len = 32 };
	const Rule *r;
	uint32_t oid;
	int16_t format;
	uint8_t *val;
	MaskOut out;
	char why[256];
	int rc;

	if (size < 3)
		return 0;
	r = rule(data[0] % PGV_ARRAY_LEN(fns));
	oid = oids[data[1] % PGV_ARRAY_LEN(oids)];
	format = (int16_t)(data[2] & 1);
	val = malloc(size - 3 + 1); /* exact size: ASan sees any read past the end */
	if (val == NULL)
		return 0;
	memcpy(val, data + 3, size - 3);
	memset(key.bytes, 'k', key.len);
	(void)mask_check_type(r, oid, why, sizeof(why));
	rc = mask_apply(r, &key, oid, format, val, (int32_t)(size - 3), &out);
	if (rc != MASK_OK && (out.len != -1 || out.data != NULL))
		abort();
	if (rc == MASK_OK && out.len >= 0) {
		if (out.data == NULL)
			abort();
		if ((r->mask_fn == MASK_PARTIAL || r->mask_fn == MASK_EMAIL) && out.len > (int32_t)(size - 3) + 8)
			abort();
		if (r->mask_fn == MASK_PARTIAL || r->mask_fn == MASK_EMAIL || r->mask_fn == MASK_HASH)
			check_utf8(out.data, out.len);
	}
	mask_out_release(&out);
	free(val);
	return 0;
}
