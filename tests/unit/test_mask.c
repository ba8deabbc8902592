/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the mask module. Most are one table of {function, type,
 * format, input, expected}: every mask function on each of its types in
 * text and binary format, NULL, empty and extreme values, UTF-8 edges,
 * numeric and float specials, calendar edges. Binary values are written in
 * hex; the expected binary encodings and the HMAC vectors were produced
 * independently (PostgreSQL 15's *_send() functions, `openssl dgst -sha256
 * -hmac`). Then which function applies to which type, the hash() key file,
 * large values and properties over many inputs (valid UTF-8 out, nothing
 * kept that the function does not keep), and hash() keyed once per thread
 * and key (OpenSSL's allocations are counted).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/crypto.h>
#include <pthread.h>

#include "pgveil/mask.h"

#define T 0 /* text format */
#define B 1 /* binary format */
#define TEST_KEY "0123456789abcdef0123456789abcdef"
#define USER_TYPE 16384u

/* ---- helpers -------------------------------------------------------------------- */

/* A mask rule parsed from "fn(args)"; release with rules_unref(*rs). */
static const Rule *rule_of(const char *fn, RuleSet **rs)
{
	char text[512], *errs = NULL;
	int nerr = 0;

	snprintf(text, sizeof(text), "MASK public.t.c USING %s;", fn);
	*rs = rules_parse_string("test", text, &errs, &nerr);
	if (*rs == NULL)
		fail_msg("cannot parse %s: %s", text, errs ? errs : "?");
	assert_int_equal((*rs)->n_rules, 1);
	return &(*rs)->rules[0];
}

static const MaskKey *test_key(void)
{
	static MaskKey k;

	memcpy(k.bytes, TEST_KEY, strlen(TEST_KEY));
	k.len = strlen(TEST_KEY);
	return &k;
}

static int hexval(char c)
{
	return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

/* Decodes hex into buf; returns the length. */
static size_t unhex(const char *hex, uint8_t *buf, size_t cap)
{
	size_t n = strlen(hex) / 2;

	assert_true(n <= cap);
	for (size_t i = 0; i < n; i++)
		buf[i] = (uint8_t)(hexval(hex[2 * i]) * 16 + hexval(hex[2 * i + 1]));
	return n;
}

static void tohex(const uint8_t *p, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++)
		sprintf(out + 2 * i, "%02x", p[i]);
	out[2 * n] = '\0';
}

/* ---- the table ------------------------------------------------------------------ */

typedef struct Case {
	const char *fn;         /* as written in a rule */
	uint32_t oid;
	int16_t format;
	const char *in;         /* text, or hex in binary format; NULL = SQL NULL */
	const char *out;        /* the same; NULL = SQL NULL */
	int rc;                 /* MASK_OK unless given */
} Case;

static Case cases[] = {
	/* redact() */
	{ "redact()", MASK_OID_TEXT, T, "secret", "****", 0 },
	{ "redact()", MASK_OID_TEXT, T, "", "****", 0 },
	{ "redact()", MASK_OID_VARCHAR, B, "736563726574", "2a2a2a2a", 0 },
	{ "redact()", MASK_OID_BPCHAR, T, "ab  ", "****", 0 },
	{ "redact()", MASK_OID_INT4, T, "42", NULL, 0 },
	{ "redact()", MASK_OID_INT4, B, "0000002a", NULL, 0 },
	{ "redact()", MASK_OID_DATE, T, "2024-02-29", NULL, 0 },
	{ "redact()", MASK_OID_JSONB, B, "017b7d", NULL, 0 },
	{ "redact()", MASK_OID_UUID, T, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", NULL, 0 },
	{ "redact()", MASK_OID_TEXT, T, NULL, NULL, 0 },
	{ "redact()", USER_TYPE, T, "x", NULL, MASK_ETYPE },
	/* null() */
	{ "null()", MASK_OID_TEXT, T, "x", NULL, 0 },
	{ "null()", MASK_OID_INT8, B, "0000000000000001", NULL, 0 },
	{ "null()", USER_TYPE, T, "(1,2)", NULL, 0 },
	{ "null()", USER_TYPE, B, "0102", NULL, 0 },
	{ "null()", MASK_OID_TEXT, T, NULL, NULL, 0 },
	/* constant() */
	{ "constant('n/a')", MASK_OID_TEXT, T, "abc", "n/a", 0 },
	{ "constant('n/a')", MASK_OID_VARCHAR, B, "616263", "6e2f61", 0 },
	{ "constant('Zoë')", MASK_OID_NAME, T, "x", "Zoë", 0 },
	{ "constant('n/a')", MASK_OID_TEXT, T, NULL, NULL, 0 },
	{ "constant('007')", MASK_OID_INT4, T, "123", "7", 0 },
	{ "constant('-7')", MASK_OID_INT4, B, "0000007b", "fffffff9", 0 },
	{ "constant('32767')", MASK_OID_INT2, B, "0001", "7fff", 0 },
	{ "constant('-9223372036854775808')", MASK_OID_INT8, B, "0000000000000001", "8000000000000000", 0 },
	{ "constant('0')", MASK_OID_INT8, T, "5", "0", 0 },
	{ "constant('1.50')", MASK_OID_NUMERIC, T, "3.14159", "1.50", 0 },
	{ "constant('1.50')", MASK_OID_NUMERIC, B, "00010000000000000003", "000200000000000200011388", 0 },
	{ "constant('NaN')", MASK_OID_NUMERIC, B, "00010000000000000003", "00000000c0000000", 0 },
	{ "constant('0.1')", MASK_OID_FLOAT8, T, "2.5", "0.1", 0 },
	{ "constant('0.1')", MASK_OID_FLOAT4, B, "40200000", "3dcccccd", 0 },
	{ "constant('1e20')", MASK_OID_FLOAT8, T, "1", "1e+20", 0 },
	{ "constant('t')", MASK_OID_BOOL, B, "00", "01", 0 },
	{ "constant('no')", MASK_OID_BOOL, T, "t", "f", 0 },
	{ "constant('2000-01-01')", MASK_OID_DATE, B, "00002279", "00000000", 0 },
	{ "constant('1999-12-31')", MASK_OID_DATE, T, "2024-02-29", "1999-12-31", 0 },
	{ "constant('2000-01-01 00:00:00')", MASK_OID_TIMESTAMP, B, "0002b5843cb92b20", "0000000000000000", 0 },
	{ "constant('2000-01-01 01:00:00+01')", MASK_OID_TIMESTAMPTZ, B, "0002b5843cb92b20", "0000000000000000",
	  0 },
	{ "constant('x')", MASK_OID_JSONB, B, "017b7d", NULL, MASK_ETYPE },
	{ "constant('x')", USER_TYPE, T, "x", NULL, MASK_ETYPE },
	/* partial() */
	{ "partial(2, '***', 2)", MASK_OID_TEXT, T, "Zoë Müller", "Zo***er", 0 },
	{ "partial(3, '*', 0)", MASK_OID_TEXT, T, "Zoë Müller", "Zoë*", 0 },
	{ "partial(0, '***-**-', 4)", MASK_OID_VARCHAR, T, "123-45-6789", "***-**-6789", 0 },
	{ "partial(0, '***-**-', 4)", MASK_OID_TEXT, T, "6789", "***-**-", 0 },
	{ "partial(2, '***', 2)", MASK_OID_TEXT, T, "abcd", "***", 0 },
	{ "partial(2, '***', 2)", MASK_OID_TEXT, T, "abcde", "ab***de", 0 },
	{ "partial(2, '***', 2)", MASK_OID_TEXT, T, "", "***", 0 },
	{ "partial(0, '*', 0)", MASK_OID_TEXT, T, "abc", "*", 0 },
	{ "partial(1, '…', 1)", MASK_OID_TEXT, T, "日本語テキスト", "日…ト", 0 },
	{ "partial(5, '*', 0)", MASK_OID_TEXT, T, "a😀bcdef", "a😀bcd*", 0 },
	{ "partial(1, '*', 1)", MASK_OID_TEXT, T, "a\xff\xfe" "b", "a*b", 0 },
	{ "partial(2, '*', 0)", MASK_OID_TEXT, T, "\xff" "abc", "?a*", 0 },
	{ "partial(1, '*', 1)", MASK_OID_TEXT, T, "\xc3xyz", "?*z", 0 },
	{ "partial(1, '*', 1)", MASK_OID_TEXT, T, "x\xe2\x82", "x*?", 0 },
	{ "partial(1, '*', 1)", MASK_OID_TEXT, T, "ab\xed\xa0\x80", "a*?", 0 }, /* a surrogate: 3 bad bytes */
	{ "partial(1, '#', 1)", MASK_OID_TEXT, T, "ab", "#", 0 },
	{ "partial(1, '#', 1)", MASK_OID_TEXT, T, NULL, NULL, 0 },
	{ "partial(0, 'XXXX-XXXX-XXXX-', 4)", MASK_OID_BPCHAR, B, "34313131313131313131313131313131",
	  "585858582d585858582d585858582d31313131", 0 },
	{ "partial(0, '*', 2)", MASK_OID_NAME, B, "616263e282ac", "2a63e282ac", 0 },
	{ "partial(0, '*', 2)", MASK_OID_INT4, T, "1234", NULL, MASK_ETYPE },
	{ "partial(0, '*', 2)", MASK_OID_JSON, T, "\"abc\"", NULL, MASK_ETYPE },
	/* email() */
	{ "email()", MASK_OID_TEXT, T, "john.doe@example.com", "j***@example.com", 0 },
	{ "email()", MASK_OID_VARCHAR, B, "6a6f686e2e646f65406578616d706c652e636f6d", "6a2a2a2a406578616d706c652e636f6d",
	  0 },
	{ "email()", MASK_OID_TEXT, T, "no-at-sign", "***", 0 },
	{ "email()", MASK_OID_TEXT, T, "", "***", 0 },
	{ "email()", MASK_OID_TEXT, T, "@example.com", "***@example.com", 0 },
	{ "email()", MASK_OID_TEXT, T, "j@example.com", "***@example.com", 0 },
	{ "email()", MASK_OID_TEXT, T, "\"a@b\"@example.com", "\"***@example.com", 0 },
	{ "email()", MASK_OID_TEXT, T, "ömer@exämple.de", "ö***@exämple.de", 0 },
	{ "email()", MASK_OID_TEXT, T, "\xffx@d.com", "?***@d.com", 0 },
	{ "email()", MASK_OID_TEXT, T, "ab@d\x80.com", "a***@d?.com", 0 },
	{ "email()", MASK_OID_TEXT, T, NULL, NULL, 0 },
	{ "email()", MASK_OID_UUID, T, "x", NULL, MASK_ETYPE },
	/* hash(): HMAC-SHA-256 with key TEST_KEY, from openssl dgst */
	{ "hash()", MASK_OID_TEXT, T, "john.doe@example.com",
	  "a7e47445166f3ab2d7905709533c7d25ca7b28d56db7465ab589fd57e8b292cc", 0 },
	{ "hash(16)", MASK_OID_TEXT, T, "john.doe@example.com", "a7e47445166f3ab2", 0 },
	{ "hash(1)", MASK_OID_VARCHAR, T, "john.doe@example.com", "a", 0 },
	{ "hash(64)", MASK_OID_TEXT, T, "", "796cd3078af14636753d26b3b5555422ff55a3e261cf847b48e95371b9bd0aa2", 0 },
	{ "hash()", MASK_OID_NAME, T, "Zoë Müller", "571058e6187fa8f274707e163d075857bc6ae596007b42e5a528fd49fc3258d5",
	  0 },
	{ "hash()", MASK_OID_BPCHAR, T, "abc  ", "b2a15e9cbcb0d21d3066dfd11f78392d29ee4232a8a0725779312671a24c5737", 0 },
	{ "hash(8)", MASK_OID_TEXT, B, "6a6f686e2e646f65406578616d706c652e636f6d", "6137653437343435", 0 },
	{ "hash()", MASK_OID_TEXT, T, NULL, NULL, 0 },
	{ "hash()", MASK_OID_INT4, T, "1", NULL, MASK_ETYPE },
	{ "hash()", USER_TYPE, T, "1", NULL, MASK_ETYPE },
	/* truncate() on dates */
	{ "truncate('month')", MASK_OID_DATE, T, "2024-02-29", "2024-02-01", 0 },
	{ "truncate('month')", MASK_OID_DATE, B, "00002279", "0000225d", 0 },
	{ "truncate('year')", MASK_OID_DATE, T, "2024-02-29", "2024-01-01", 0 },
	{ "truncate('year')", MASK_OID_DATE, B, "00002279", "0000223e", 0 },
	{ "truncate('day')", MASK_OID_DATE, T, "2024-02-29", "2024-02-29", 0 },
	{ "truncate('hour')", MASK_OID_DATE, B, "00002279", "00002279", 0 },
	{ "truncate('year')", MASK_OID_DATE, B, "ffffffff", "fffffe93", 0 },
	{ "truncate('month')", MASK_OID_DATE, B, "ffffffff", "ffffffe1", 0 },
	{ "truncate('year')", MASK_OID_DATE, T, "0044-03-15 BC", "0044-01-01 BC", 0 },
	{ "truncate('year')", MASK_OID_DATE, B, "fff49d7b", "fff49d32", 0 },
	{ "truncate('month')", MASK_OID_DATE, T, "infinity", "infinity", 0 },
	{ "truncate('year')", MASK_OID_DATE, T, "-infinity", "-infinity", 0 },
	{ "truncate('year')", MASK_OID_DATE, B, "7fffffff", "7fffffff", 0 },
	{ "truncate('month')", MASK_OID_DATE, B, "80000000", "80000000", 0 },
	{ "truncate('day')", MASK_OID_DATE, B, "ffda97a7", "ffda97a7", 0 },
	{ "truncate('year')", MASK_OID_DATE, B, "ffda97a7", NULL, MASK_EVALUE },  /* 4714-11-24 BC */
	{ "truncate('month')", MASK_OID_DATE, T, "4714-11-24 BC", NULL, MASK_EVALUE },
	{ "truncate('month')", MASK_OID_DATE, T, "5874897-12-31", "5874897-12-01", 0 },
	{ "truncate('month')", MASK_OID_DATE, B, "7fda970c", "7fda96ee", 0 },
	{ "truncate('day')", MASK_OID_DATE, T, "29.02.2024", NULL, MASK_EVALUE },
	{ "truncate('day')", MASK_OID_DATE, T, "2023-02-29", NULL, MASK_EVALUE },
	{ "truncate('day')", MASK_OID_DATE, T, "2024-02-29x", NULL, MASK_EVALUE },
	{ "truncate('year')", MASK_OID_DATE, B, "002279", NULL, MASK_EVALUE },
	{ "truncate('year')", MASK_OID_DATE, T, NULL, NULL, 0 },
	/* truncate() on timestamps */
	{ "truncate('hour')", MASK_OID_TIMESTAMP, T, "2024-02-29 13:45:12.5", "2024-02-29 13:00:00", 0 },
	{ "truncate('hour')", MASK_OID_TIMESTAMP, B, "0002b5843cb92b20", "0002b5839b0bb400", 0 },
	{ "truncate('day')", MASK_OID_TIMESTAMP, B, "0002b5843cb92b20", "0002b578b58c6000", 0 },
	{ "truncate('month')", MASK_OID_TIMESTAMP, B, "0002b5843cb92b20", "0002b34571fde000", 0 },
	{ "truncate('year')", MASK_OID_TIMESTAMP, B, "0002b5843cb92b20", "0002b0d5d4e94000", 0 },
	{ "truncate('month')", MASK_OID_TIMESTAMP, T, "2024-02-29 13:45:12.5", "2024-02-01 00:00:00", 0 },
	{ "truncate('hour')", MASK_OID_TIMESTAMP, B, "fffc96188bae6100", "fffc96184c801000", 0 },
	{ "truncate('year')", MASK_OID_TIMESTAMP, B, "fffc96188bae6100", "fffc865038b44000", 0 },
	{ "truncate('year')", MASK_OID_TIMESTAMP, T, "1969-07-20 20:17:40", "1969-01-01 00:00:00", 0 },
	{ "truncate('year')", MASK_OID_TIMESTAMP, B, "ff1af9e8fb46d000", "ff1af42269f0c000", 0 },
	{ "truncate('year')", MASK_OID_TIMESTAMP, T, "0044-03-15 12:00:00 BC", "0044-01-01 00:00:00 BC", 0 },
	{ "truncate('year')", MASK_OID_TIMESTAMP, T, "infinity", "infinity", 0 },
	{ "truncate('day')", MASK_OID_TIMESTAMP, B, "7fffffffffffffff", "7fffffffffffffff", 0 },
	{ "truncate('day')", MASK_OID_TIMESTAMP, B, "8000000000000000", "8000000000000000", 0 },
	{ "truncate('day')", MASK_OID_TIMESTAMP, T, "2024-02-30 00:00:00", NULL, MASK_EVALUE },
	{ "truncate('day')", MASK_OID_TIMESTAMP, T, "2024-02-29T13:00:00", NULL, MASK_EVALUE },
	{ "truncate('day')", MASK_OID_TIMESTAMP, T, "2024-02-29 13:00:00+01", NULL, MASK_EVALUE },
	{ "truncate('day')", MASK_OID_TIMESTAMP, T, "2024-02-29 13:00", NULL, MASK_EVALUE },
	{ "truncate('day')", MASK_OID_TIMESTAMPTZ, T, "2024-02-29 23:45:00+05:30", "2024-02-29 00:00:00+05:30", 0 },
	{ "truncate('hour')", MASK_OID_TIMESTAMPTZ, T, "0044-03-15 12:34:56.000001+00:53:28 BC",
	  "0044-03-15 12:00:00+00:53:28 BC", 0 },
	{ "truncate('month')", MASK_OID_TIMESTAMPTZ, B, "0002b58c6819ee00", "0002b34571fde000", 0 },
	{ "truncate('day')", MASK_OID_TIMESTAMPTZ, T, "2024-02-29 13:00:00", NULL, MASK_EVALUE },
	{ "truncate('day')", MASK_OID_TIMESTAMPTZ, B, "0002b58c6819ee", NULL, MASK_EVALUE },
	{ "truncate('day')", MASK_OID_TEXT, T, "2024-02-29", NULL, MASK_ETYPE },
	{ "truncate('day')", MASK_OID_TIME, T, "13:00:00", NULL, MASK_ETYPE },
	/* round() on integers */
	{ "round(2)", MASK_OID_INT4, T, "12345", "12000", 0 },
	{ "round(2)", MASK_OID_INT4, B, "00003039", "00002ee0", 0 },
	{ "round(2)", MASK_OID_INT4, T, "-12345", "-12000", 0 },
	{ "round(2)", MASK_OID_INT4, B, "ffffcfc7", "ffffd120", 0 },
	{ "round(1)", MASK_OID_INT4, T, "15", "20", 0 },
	{ "round(1)", MASK_OID_INT4, T, "-15", "-20", 0 },
	{ "round(1)", MASK_OID_INT4, T, "-14", "-10", 0 },
	{ "round(1)", MASK_OID_INT4, T, "96", "100", 0 },
	{ "round(5)", MASK_OID_INT4, T, "0", "0", 0 },
	{ "round(1)", MASK_OID_INT2, T, "32767", "30000", 0 },
	{ "round(2)", MASK_OID_INT2, T, "32767", "32000", 0 },  /* 33000 does not fit */
	{ "round(4)", MASK_OID_INT2, B, "7fff", "7ff8", 0 },    /* 32770 does not fit: 32760 */
	{ "round(1)", MASK_OID_INT2, B, "8000", "8ad0", 0 },
	{ "round(1)", MASK_OID_INT4, T, "2147483647", "2000000000", 0 },
	{ "round(2)", MASK_OID_INT8, T, "9223372036854775807", "9200000000000000000", 0 },
	{ "round(1)", MASK_OID_INT8, B, "7fffffffffffffff", "7ce66c50e2840000", 0 },
	{ "round(16)", MASK_OID_INT8, B, "7fffffffffffffff", "7ffffffffffffcd8", 0 }, /* ...5808 > max */
	{ "round(3)", MASK_OID_INT8, T, "-9223372036854775808", "-9220000000000000000", 0 },
	{ "round(38)", MASK_OID_INT8, T, "9223372036854775807", "9223372036854775807", 0 },
	{ "round(2)", MASK_OID_INT4, T, "12a", NULL, MASK_EVALUE },
	{ "round(2)", MASK_OID_INT4, T, "1.5", NULL, MASK_EVALUE },
	{ "round(2)", MASK_OID_INT4, T, " 12", NULL, MASK_EVALUE },
	{ "round(2)", MASK_OID_INT2, T, "40000", NULL, MASK_EVALUE },
	{ "round(2)", MASK_OID_INT4, T, "", NULL, MASK_EVALUE },
	{ "round(2)", MASK_OID_INT4, B, "003039", NULL, MASK_EVALUE },
	{ "round(2)", MASK_OID_INT4, T, NULL, NULL, 0 },
	/* round() on numeric */
	{ "round(2)", MASK_OID_NUMERIC, T, "12345", "12000", 0 },
	{ "round(2)", MASK_OID_NUMERIC, T, "0.012345", "0.012", 0 },
	{ "round(2)", MASK_OID_NUMERIC, T, "-0.012345", "-0.012", 0 },
	{ "round(2)", MASK_OID_NUMERIC, B, "0002ffff40000006007b1194", "0001ffff400000030078", 0 },
	{ "round(2)", MASK_OID_NUMERIC, T, "123.456", "120", 0 },
	{ "round(2)", MASK_OID_NUMERIC, B, "0002000000000003007b11d0", "00010000000000000078", 0 },
	{ "round(5)", MASK_OID_NUMERIC, T, "1.5", "1.5", 0 },
	{ "round(1)", MASK_OID_NUMERIC, T, "99999.5", "100000", 0 },
	{ "round(6)", MASK_OID_NUMERIC, B, "00030001000000010009270f1388", "00030001000000010009270f1388", 0 },
	{ "round(5)", MASK_OID_NUMERIC, B, "00030001000000010009270f1388", "0001000100000000000a", 0 },
	{ "round(3)", MASK_OID_NUMERIC, B, "000300010000000104d2162e2328", "000100010000000004ce", 0 },
	{ "round(2)", MASK_OID_NUMERIC, T, "0.000", "0.000", 0 },
	{ "round(2)", MASK_OID_NUMERIC, T, "-2.5", "-2.5", 0 },
	{ "round(1)", MASK_OID_NUMERIC, T, "-2.5", "-3", 0 },
	{ "round(2)", MASK_OID_NUMERIC, T, "NaN", "NaN", 0 },
	{ "round(2)", MASK_OID_NUMERIC, T, "Infinity", "Infinity", 0 },
	{ "round(2)", MASK_OID_NUMERIC, T, "-Infinity", "-Infinity", 0 },
	{ "round(2)", MASK_OID_NUMERIC, B, "00000000c0000000", "00000000c0000000", 0 },
	{ "round(2)", MASK_OID_NUMERIC, B, "00000000d0000020", "00000000d0000000", 0 },
	{ "round(2)", MASK_OID_NUMERIC, B, "00000000f0000020", "00000000f0000000", 0 },
	{ "round(1)", MASK_OID_NUMERIC, B, "00010005000000000001", "00010005000000000001", 0 },
	{ "round(2)", MASK_OID_NUMERIC, T, "1.2.3", NULL, MASK_EVALUE },
	{ "round(2)", MASK_OID_NUMERIC, T, "nan", NULL, MASK_EVALUE },
	{ "round(2)", MASK_OID_NUMERIC, B, "0002000000000003007b", NULL, MASK_EVALUE },
	{ "round(2)", MASK_OID_NUMERIC, B, "0001000000000000ffff", NULL, MASK_EVALUE },
	{ "round(2)", MASK_OID_NUMERIC, B, "00000000e0000000", NULL, MASK_EVALUE },
	/* round() on floats */
	{ "round(2)", MASK_OID_FLOAT8, T, "12345", "12000", 0 },
	{ "round(2)", MASK_OID_FLOAT8, B, "40c81c8000000000", "40c7700000000000", 0 },
	{ "round(2)", MASK_OID_FLOAT8, T, "0.012345", "0.012", 0 },
	{ "round(2)", MASK_OID_FLOAT8, B, "3f894855da272863", "3f889374bc6a7efa", 0 },
	{ "round(1)", MASK_OID_FLOAT8, T, "-2.5", "-3", 0 },
	{ "round(1)", MASK_OID_FLOAT8, B, "c004000000000000", "c008000000000000", 0 },
	{ "round(2)", MASK_OID_FLOAT8, T, "1.2345e-05", "1.2e-05", 0 },
	{ "round(2)", MASK_OID_FLOAT8, T, "1.2345e+20", "1.2e+20", 0 },
	{ "round(1)", MASK_OID_FLOAT8, T, "1.7976931348623157e+308", "1e+308", 0 },
	{ "round(1)", MASK_OID_FLOAT8, B, "7fefffffffffffff", "7fe1ccf385ebc8a0", 0 },
	{ "round(15)", MASK_OID_FLOAT8, T, "123456789012345", "123456789012345", 0 },
	{ "round(2)", MASK_OID_FLOAT8, T, "NaN", "NaN", 0 },
	{ "round(2)", MASK_OID_FLOAT8, T, "-Infinity", "-Infinity", 0 },
	{ "round(2)", MASK_OID_FLOAT8, T, "-0", "-0", 0 },
	{ "round(2)", MASK_OID_FLOAT8, B, "8000000000000000", "8000000000000000", 0 },
	{ "round(2)", MASK_OID_FLOAT8, B, "7ff0000000000000", "7ff0000000000000", 0 },
	{ "round(2)", MASK_OID_FLOAT8, B, "7ff8000000000001", "7ff8000000000000", 0 }, /* NaN payload dropped */
	{ "round(2)", MASK_OID_FLOAT4, B, "4640e400", "463b8000", 0 },
	{ "round(2)", MASK_OID_FLOAT4, T, "3.4028235e+38", "3.4e+38", 0 },
	{ "round(2)", MASK_OID_FLOAT4, B, "7f7fffff", "7f7fc99e", 0 },
	{ "round(3)", MASK_OID_FLOAT4, T, "123456", "123000", 0 },
	{ "round(3)", MASK_OID_FLOAT4, T, "1234567", "1.23e+06", 0 },
	{ "round(2)", MASK_OID_FLOAT8, T, "abc", NULL, MASK_EVALUE },
	{ "round(2)", MASK_OID_FLOAT8, T, "1e999", NULL, MASK_EVALUE },
	{ "round(2)", MASK_OID_FLOAT4, B, "4640e4", NULL, MASK_EVALUE },
	{ "round(2)", MASK_OID_FLOAT4, T, NULL, NULL, 0 },
	{ "round(2)", MASK_OID_TEXT, T, "12", NULL, MASK_ETYPE },
	{ "round(2)", 790, T, "$1.00", NULL, MASK_ETYPE },
};

static void test_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < PGV_ARRAY_LEN(cases); i++) {
		const Case *c = &cases[i];
		RuleSet *rs;
		const Rule *r = rule_of(c->fn, &rs);
		uint8_t in[512];
		int32_t len = -1;
		char got[2 * 512 + 1];
		MaskOut out;
		int rc;

		if (c->in != NULL)
			len = c->format == B ? (int32_t)unhex(c->in, in, sizeof(in)) : (int32_t)strlen(c->in);
		if (c->in != NULL && c->format == T)
			memcpy(in, c->in, (size_t)len);
		rc = mask_apply(r, test_key(), c->oid, c->format, c->in ? in : NULL, len, &out);
		if (out.len >= 0) {
			assert_true(out.len < 512);
			if (c->format == B)
				tohex(out.data, (size_t)out.len, got);
			else
				snprintf(got, sizeof(got), "%.*s", (int)out.len, (const char *)out.data);
		}
		if (rc != c->rc || (c->out == NULL) != (out.len < 0) || (c->out != NULL && strcmp(got, c->out) != 0))
			fail_msg("case %zu: %s on OID %u %s '%s': got rc %d '%s', want rc %d '%s'", i, c->fn, c->oid,
				 c->format == B ? "binary" : "text", c->in ? c->in : "NULL", rc,
				 out.len < 0 ? "NULL" : got, c->rc, c->out ? c->out : "NULL");
		if (rc != MASK_OK)
			assert_true(out.len == -1 && out.data == NULL);
		mask_out_release(&out);
		rules_unref(rs);
	}
	print_message("%zu table cases\n", PGV_ARRAY_LEN(cases));
}

/* ---- more values ---------------------------------------------------------------------- */

/* Masks a text value; the result (NULL: "NULL") in buf. */
static int apply_text(const char *fn, uint32_t oid, int16_t format, const uint8_t *in, int32_t len, char *buf,
		      size_t cap, int32_t *outlen)
{
	RuleSet *rs;
	const Rule *r = rule_of(fn, &rs);
	MaskOut out;
	int rc = mask_apply(r, test_key(), oid, format, in, len, &out);

	*outlen = out.len;
	if (out.len < 0)
		snprintf(buf, cap, "NULL");
	else if ((size_t)out.len < cap)
		memcpy(buf, out.data, (size_t)out.len), buf[out.len] = '\0';
	mask_out_release(&out);
	rules_unref(rs);
	return rc;
}

static void test_hash_same_across_formats(void **state)
{
	static const char *values[] = { "john.doe@example.com", "", "Zoë", "x\xff" };
	char t[80], b[80];
	int32_t lt, lb;

	(void)state;
	for (size_t i = 0; i < PGV_ARRAY_LEN(values); i++) {
		int32_t n = (int32_t)strlen(values[i]);

		assert_int_equal(apply_text("hash()", MASK_OID_TEXT, T, (const uint8_t *)values[i], n, t, sizeof(t),
					    &lt), MASK_OK);
		assert_int_equal(apply_text("hash()", MASK_OID_VARCHAR, B, (const uint8_t *)values[i], n, b,
					    sizeof(b), &lb), MASK_OK);
		assert_int_equal(lt, 64);
		assert_string_equal(t, b);
	}
	/* another key, another hash */
	{
		RuleSet *rs;
		const Rule *r = rule_of("hash()", &rs);
		MaskKey k = *test_key();
		MaskOut out;

		k.bytes[0] ^= 1;
		assert_int_equal(mask_apply(r, &k, MASK_OID_TEXT, T, (const uint8_t *)"", 0, &out), MASK_OK);
		assert_memory_not_equal(out.data, "796cd3078af14636", 16);
		mask_out_release(&out);
		assert_int_equal(mask_apply(r, NULL, MASK_OID_TEXT, T, (const uint8_t *)"a", 1, &out), MASK_ENOKEY);
		assert_int_equal(out.len, -1);
		k.len = 0;
		assert_int_equal(mask_apply(r, &k, MASK_OID_TEXT, T, (const uint8_t *)"a", 1, &out), MASK_ENOKEY);
		mask_out_release(&out);
		rules_unref(rs);
	}
}

/* OpenSSL's allocations, counted (installed first thing in main). */
static long ossl_allocs;

static void *count_malloc(size_t n, const char *file, int line)
{
	(void)file;
	(void)line;
	__atomic_add_fetch(&ossl_allocs, 1, __ATOMIC_RELAXED);
	return malloc(n);
}

static void *count_realloc(void *p, size_t n, const char *file, int line)
{
	(void)file;
	(void)line;
	__atomic_add_fetch(&ossl_allocs, 1, __ATOMIC_RELAXED);
	return realloc(p, n);
}

static void count_free(void *p, const char *file, int line)
{
	(void)file;
	(void)line;
	free(p);
}

/* hash(16) of "john.doe@example.com" under key k into out (17 bytes). */
static void hash16(const MaskKey *k, char *out)
{
	RuleSet *rs;
	const Rule *r = rule_of("hash(16)", &rs);
	MaskOut mo;

	assert_int_equal(mask_apply(r, k, MASK_OID_TEXT, T, (const uint8_t *)"john.doe@example.com", 20, &mo),
			 MASK_OK);
	assert_int_equal(mo.len, 16);
	memcpy(out, mo.data, 16);
	out[16] = '\0';
	mask_out_release(&mo);
	rules_unref(rs);
}

static void *hash16_thread(void *arg)
{
	hash16(test_key(), arg);
	return NULL;
}

/* hash() sets HMAC up once per thread and key, not per value; a new key is used at once. */
static void test_hash_keyed_once(void **state)
{
	RuleSet *rs;
	const Rule *r = rule_of("hash()", &rs);
	MaskKey other = *test_key();
	char a[17], b[17], c[17];
	pthread_t th;
	MaskOut mo;
	long before;

	(void)state;
	other.bytes[5] ^= 0x20;
	hash16(test_key(), a);
	before = __atomic_load_n(&ossl_allocs, __ATOMIC_RELAXED);
	for (int i = 0; i < 1000; i++) {
		assert_int_equal(mask_apply(r, test_key(), MASK_OID_TEXT, T, (const uint8_t *)"x", 1, &mo), MASK_OK);
		mask_out_release(&mo);
	}
	/* HMAC() set up afresh for each value made 13 allocations; reinitialising a keyed one makes 2 */
	assert_true(__atomic_load_n(&ossl_allocs, __ATOMIC_RELAXED) - before < 4 * 1000);
	assert_string_equal(a, "a7e47445166f3ab2");
	for (int i = 0; i < 3; i++) { /* keys taking turns */
		hash16(&other, b);
		assert_string_not_equal(b, "a7e47445166f3ab2");
		hash16(test_key(), a);
		assert_string_equal(a, "a7e47445166f3ab2");
		hash16(&other, c);
		assert_string_equal(b, c);
	}
	other = *test_key();
	other.len = MASK_KEY_MIN + 1; /* the same bytes, one more of them */
	other.bytes[MASK_KEY_MIN] = '0';
	hash16(&other, b);
	assert_string_not_equal(b, "a7e47445166f3ab2");
	assert_int_equal(pthread_create(&th, NULL, hash16_thread, c), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_string_equal(c, "a7e47445166f3ab2");
	rules_unref(rs);
}

/* Values larger than the inline buffer go to the heap. */
static void test_large_values(void **state)
{
	size_t n = 140000;
	uint8_t *big = malloc(n);
	char *res = malloc(n + 64);
	int32_t len;

	(void)state;
	assert_non_null(big);
	assert_non_null(res);
	for (size_t i = 0; i < n; i += 2) {
		big[i] = 0xC3; /* é */
		big[i + 1] = 0xA9;
	}
	assert_int_equal(apply_text("partial(0, '*', 1000)", MASK_OID_TEXT, T, big, (int32_t)n, res, n + 64, &len),
			 MASK_OK);
	assert_int_equal(len, 1 + 2000);
	assert_memory_equal(res + 1, big, 2000);
	assert_int_equal(apply_text("partial(40000, '*', 30000)", MASK_OID_TEXT, T, big, (int32_t)n, res, n + 64,
				    &len), MASK_OK);
	assert_int_equal(len, 1); /* 70000 characters: nothing would be hidden */
	/* 200 nines round up to 1 and 200 zeros */
	memset(big, '9', 200);
	assert_int_equal(apply_text("round(1)", MASK_OID_NUMERIC, T, big, 200, res, n + 64, &len), MASK_OK);
	assert_int_equal(len, 201);
	assert_true(res[0] == '1' && strspn(res + 1, "0") == 200);
	/* numeric's largest value stays in range: cut instead of rounded up */
	memset(big, '9', 131072);
	assert_int_equal(apply_text("round(2)", MASK_OID_NUMERIC, T, big, 131072, res, n + 64, &len),
			 MASK_OK);
	assert_int_equal(len, 131072);
	assert_true(res[0] == '9' && res[1] == '9' && strspn(res + 2, "0") == 131070);
	free(big);
	free(res);
}

/* Whatever the bytes, text functions give valid UTF-8 and keep no byte they do not keep. */
static void test_text_properties(void **state)
{
	static const char *fns[] = { "partial(1, '*', 1)", "partial(0, '#', 3)", "partial(4, '', 0)", "email()" };
	unsigned seed = 12345;

	(void)state;
	for (int iter = 0; iter < 3000; iter++) {
		uint8_t in[24];
		char res[128];
		int32_t len, n = (int32_t)(seed % 24);

		for (int i = 0; i < n; i++) {
			seed = seed * 1103515245u + 12345u;
			in[i] = (uint8_t)((seed >> 16) % 3 == 0 ? 0x80 + (seed >> 8) % 0x80 : 'a' + (seed >> 4) % 26);
			if ((seed >> 20) % 7 == 0)
				in[i] = '@';
		}
		seed = seed * 1103515245u + 12345u;
		for (size_t f = 0; f < PGV_ARRAY_LEN(fns); f++) {
			uint8_t *p;

			assert_int_equal(apply_text(fns[f], MASK_OID_TEXT, T, in, n, res, sizeof(res), &len), MASK_OK);
			p = (uint8_t *)res;
			for (int32_t i = 0; i < len;) {
				/* every byte >= 0x80 begins or continues a valid sequence */
				if (p[i] < 0x80) {
					i++;
					continue;
				}
				assert_true(p[i] >= 0xC2 && p[i] <= 0xF4);
				i++;
				while (i < len && (p[i] & 0xC0) == 0x80)
					i++;
			}
		}
		/* partial(0, '*', 0) never keeps anything */
		assert_int_equal(apply_text("partial(0, '*', 0)", MASK_OID_TEXT, T, in, n, res, sizeof(res), &len),
				 MASK_OK);
		assert_string_equal(res, "*");
	}
}

static void test_bad_format_and_args(void **state)
{
	RuleSet *rs;
	const Rule *r = rule_of("partial(1, '*', 1)", &rs);
	MaskOut out;

	(void)state;
	assert_int_equal(mask_apply(r, NULL, MASK_OID_TEXT, 2, (const uint8_t *)"abc", 3, &out), MASK_EVALUE);
	assert_int_equal(out.len, -1);
	assert_int_equal(mask_apply(r, NULL, MASK_OID_TEXT, T, NULL, 3, &out), MASK_EVALUE);
	assert_int_equal(mask_apply(r, NULL, MASK_OID_TEXT, T, NULL, 0, &out), MASK_OK);
	assert_int_equal(out.len, 1);
	mask_out_release(&out);
	assert_int_equal(mask_apply(r, NULL, MASK_OID_TEXT, T, NULL, -1, &out), MASK_OK);
	assert_int_equal(out.len, -1);
	assert_null(out.data);
	rules_unref(rs);
}

/* Rules not from rules_load(): wrong argument counts, types and values are refused, never used. */
static void test_bad_rules(void **state)
{
	MaskArg a3[3] = { { MASK_ARG_INT, 1, NULL }, { MASK_ARG_INT, 2, NULL }, { MASK_ARG_INT, 1, NULL } };
	MaskArg s1 = { MASK_ARG_STRING, 0, (char *)"week" }, i1 = { MASK_ARG_INT, 0, NULL };
	Rule r = { .kind = RULE_MASK, .mask_fn = MASK_PARTIAL, .n_args = 3, .args = a3 };
	char why[128];
	MaskOut out;

	(void)state;
	assert_int_equal(mask_apply(&r, NULL, MASK_OID_TEXT, T, (const uint8_t *)"abcdef", 6, &out), MASK_EARGS);
	assert_int_equal(out.len, -1);
	assert_false(mask_check_type(&r, MASK_OID_TEXT, why, sizeof(why)));
	assert_string_equal(why, "partial(): the arguments are not valid");
	r.n_args = 2;
	assert_int_equal(mask_apply(&r, NULL, MASK_OID_TEXT, T, (const uint8_t *)"abcdef", 6, &out), MASK_EARGS);
	r.mask_fn = MASK_TRUNCATE;
	r.n_args = 1;
	r.args = &s1;
	assert_int_equal(mask_apply(&r, NULL, MASK_OID_DATE, T, (const uint8_t *)"2024-02-29", 10, &out),
			 MASK_EARGS);
	r.mask_fn = MASK_ROUND;
	r.args = &i1;
	assert_int_equal(mask_apply(&r, NULL, MASK_OID_INT4, T, (const uint8_t *)"12", 2, &out), MASK_EARGS);
	r.mask_fn = MASK_HASH;
	assert_int_equal(mask_apply(&r, test_key(), MASK_OID_TEXT, T, (const uint8_t *)"12", 2, &out),
			 MASK_EARGS);
	r.n_args = 0;
	assert_int_equal(mask_apply(&r, test_key(), MASK_OID_TEXT, T, (const uint8_t *)"12", 2, &out), MASK_OK);
	mask_out_release(&out);
	r.kind = RULE_POLICY;
	assert_int_equal(mask_apply(&r, test_key(), MASK_OID_TEXT, T, (const uint8_t *)"12", 2, &out),
			 MASK_EARGS);
	r.kind = RULE_MASK;
	r.mask_fn = (MaskFn)99;
	assert_int_equal(mask_apply(&r, test_key(), MASK_OID_TEXT, T, (const uint8_t *)"12", 2, &out),
			 MASK_EARGS);
}

/* ---- mask_check_type ------------------------------------------------------------------ */

typedef struct TypeCase {
	const char *fn;
	uint32_t oid;
	const char *why;        /* NULL = applies; else a part of the message */
} TypeCase;

static const TypeCase type_cases[] = {
	{ "null()", USER_TYPE, NULL },
	{ "null()", MASK_OID_JSONB, NULL },
	{ "redact()", MASK_OID_JSONB, NULL },
	{ "redact()", MASK_OID_TEXT, NULL },
	{ "redact()", USER_TYPE, "redact() cannot mask a column of type OID 16384: pgveil does not know" },
	{ "partial(1, '*', 1)", MASK_OID_BPCHAR, NULL },
	{ "partial(1, '*', 1)", MASK_OID_INT4, "partial() cannot mask a column of type int4: it applies to text" },
	{ "partial(1, '\xff', 1)", MASK_OID_TEXT, "partial(): the padding is not valid UTF-8" },
	{ "email()", MASK_OID_NAME, NULL },
	{ "email()", MASK_OID_JSON, "email() cannot mask a column of type json" },
	{ "hash()", MASK_OID_VARCHAR, NULL },
	{ "hash(8)", MASK_OID_INT4, "hash() cannot mask a column of type int4: it applies to text, varchar" },
	{ "hash()", USER_TYPE, "only null() applies" },
	{ "truncate('year')", MASK_OID_TIMESTAMPTZ, NULL },
	{ "truncate('year')", MASK_OID_TIME, "truncate() cannot mask a column of type time: it applies to date" },
	{ "round(2)", MASK_OID_FLOAT4, NULL },
	{ "round(2)", MASK_OID_NUMERIC, NULL },
	{ "round(2)", MASK_OID_TEXT, "round() cannot mask a column of type text: it applies to int2" },
	{ "round(2)", 790, "round() cannot mask a column of type money" },
	{ "constant('x')", MASK_OID_TEXT, NULL },
	{ "constant('\xc3')", MASK_OID_TEXT, "constant(): '\xc3' is not a valid text value" },
	{ "constant('42')", MASK_OID_INT2, NULL },
	{ "constant('40000')", MASK_OID_INT2, "constant(): '40000' is not a valid int2 value" },
	{ "constant('abc')", MASK_OID_INT4, "constant(): 'abc' is not a valid int4 value" },
	{ "constant('1.5')", MASK_OID_INT8, "not a valid int8 value" },
	{ "constant('1.5e3')", MASK_OID_NUMERIC, NULL },
	{ "constant('1e400')", MASK_OID_FLOAT8, "not a valid float8 value" },
	{ "constant('Infinity')", MASK_OID_FLOAT4, NULL },
	{ "constant('maybe')", MASK_OID_BOOL, "not a valid bool value" },
	{ "constant('2024-02-29')", MASK_OID_DATE, NULL },
	{ "constant('2023-02-29')", MASK_OID_DATE, "not a valid date value" },
	{ "constant('2024-02-29 25:00:00')", MASK_OID_TIMESTAMP, "not a valid timestamp value" },
	{ "constant('2024-02-29 12:00:00')", MASK_OID_TIMESTAMPTZ, "not a valid timestamptz value" },
	{ "constant('2024-02-29 12:00:00+02')", MASK_OID_TIMESTAMPTZ, NULL },
	{ "constant('{}')", MASK_OID_JSONB, "constant() cannot mask a column of type jsonb: pgveil checks" },
	{ "constant('x')", USER_TYPE, "only null() applies" },
};

static void test_check_type(void **state)
{
	(void)state;
	for (size_t i = 0; i < PGV_ARRAY_LEN(type_cases); i++) {
		const TypeCase *c = &type_cases[i];
		RuleSet *rs;
		const Rule *r = rule_of(c->fn, &rs);
		char why[256] = "";
		bool ok = mask_check_type(r, c->oid, why, sizeof(why));

		if (ok != (c->why == NULL) || (c->why != NULL && strstr(why, c->why) == NULL))
			fail_msg("%s on OID %u: got %s '%s', want '%s'", c->fn, c->oid, ok ? "ok" : "refused", why,
				 c->why ? c->why : "ok");
		rules_unref(rs);
	}
}

/* mask_apply refuses (MASK_ETYPE) exactly what mask_check_type refuses for the function. */
static void test_check_type_agrees(void **state)
{
	static const char *fns[] = { "redact()", "null()", "partial(1,'*',1)", "email()", "hash()",
				     "truncate('day')", "round(2)" };
	static const uint32_t oids[] = { 16, 17, 19, 20, 21, 23, 25, 26, 114, 700, 701, 869, 1042, 1043, 1082,
					 1083, 1114, 1184, 1700, 2950, 3802, USER_TYPE, 0 };

	(void)state;
	for (size_t f = 0; f < PGV_ARRAY_LEN(fns); f++) {
		RuleSet *rs;
		const Rule *r = rule_of(fns[f], &rs);

		for (size_t t = 0; t < PGV_ARRAY_LEN(oids); t++) {
			char why[256];
			MaskOut out;
			bool ok = mask_check_type(r, oids[t], why, sizeof(why));
			int rc = mask_apply(r, test_key(), oids[t], T, NULL, -1, &out);

			if (ok != (rc != MASK_ETYPE))
				fail_msg("%s on OID %u: check %d, apply %d", fns[f], oids[t], ok, rc);
			mask_out_release(&out);
		}
		rules_unref(rs);
	}
}

static void test_type_name(void **state)
{
	char buf[32];

	(void)state;
	assert_string_equal(mask_type_name(MASK_OID_INT4, buf, sizeof(buf)), "int4");
	assert_string_equal(mask_type_name(USER_TYPE, buf, sizeof(buf)), "OID 16384");
}

/* ---- the key ---------------------------------------------------------------------------- */

static char key_dir[] = "/tmp/pgveil-mask-test-XXXXXX";

static const char *key_path(const char *name, const void *content, size_t len, mode_t mode)
{
	static char path[256];
	FILE *fp;

	snprintf(path, sizeof(path), "%s/%s", key_dir, name);
	fp = fopen(path, "wb");
	assert_non_null(fp);
	if (len > 0)
		assert_int_equal(fwrite(content, 1, len, fp), len);
	fclose(fp);
	assert_int_equal(chmod(path, mode), 0);
	return path;
}

static void expect_key_error(const char *path, const char *part)
{
	MaskKey k;
	char err[256] = "";

	memset(&k, 0x55, sizeof(k));
	assert_false(mask_key_load(path, &k, err, sizeof(err)));
	if (strstr(err, part) == NULL || strstr(err, "mask_key_file") == NULL)
		fail_msg("%s: '%s' lacks '%s'", path, err, part);
	assert_int_equal(k.len, 0);
}

static void test_key_file(void **state)
{
	char hex[80], raw[MASK_KEY_MAX + 1], err[256];
	MaskKey k;
	const char *p;

	(void)state;
	assert_non_null(mkdtemp(key_dir));
	/* openssl rand -hex 32 > mask.key */
	snprintf(hex, sizeof(hex), "%s%s\n", TEST_KEY, TEST_KEY);
	p = key_path("hex.key", hex, strlen(hex), 0600);
	assert_true(mask_key_load(p, &k, err, sizeof(err)));
	assert_int_equal(k.len, 64);
	assert_memory_equal(k.bytes, hex, 64);
	p = key_path("crlf.key", TEST_KEY "\r\n", 34, 0640);
	assert_true(mask_key_load(p, &k, err, sizeof(err)));
	assert_int_equal(k.len, 32);
	assert_memory_equal(k.bytes, TEST_KEY, 32);
	for (size_t i = 0; i < sizeof(raw); i++)
		raw[i] = (char)(i * 7);
	p = key_path("raw.key", raw, 32, 0400);
	assert_true(mask_key_load(p, &k, err, sizeof(err)));
	assert_int_equal(k.len, 32);
	assert_memory_equal(k.bytes, raw, 32);
	p = key_path("max.key", raw, MASK_KEY_MAX, 0600);
	assert_true(mask_key_load(p, &k, err, sizeof(err)));
	assert_int_equal(k.len, MASK_KEY_MAX);
	mask_key_clear(&k);
	assert_int_equal(k.len, 0);

	expect_key_error(key_path("empty.key", "", 0, 0600), "(the file is empty)");
	expect_key_error(key_path("short.key", TEST_KEY, 31, 0600), "must have 32 to 1024 bytes");
	expect_key_error(key_path("shortnl.key", "0123456789abcdef0123456789abcde\n", 32, 0600), "32 to 1024");
	expect_key_error(key_path("long.key", raw, MASK_KEY_MAX + 1, 0600), "32 to 1024");
	expect_key_error(key_path("world.key", TEST_KEY, 32, 0644), "others may read or write it (mode 0644)");
	expect_key_error(key_path("worldw.key", TEST_KEY, 32, 0602), "mode 0602");
	expect_key_error(key_dir, "not a regular file");
	expect_key_error("/nonexistent/pgveil/mask.key", "No such file or directory");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_table),
		cmocka_unit_test(test_hash_same_across_formats),
		cmocka_unit_test(test_hash_keyed_once),
		cmocka_unit_test(test_large_values),
		cmocka_unit_test(test_text_properties),
		cmocka_unit_test(test_bad_format_and_args),
		cmocka_unit_test(test_bad_rules),
		cmocka_unit_test(test_check_type),
		cmocka_unit_test(test_check_type_agrees),
		cmocka_unit_test(test_type_name),
		cmocka_unit_test(test_key_file),
	};
	char cmd[128];
	int rc;

	if (CRYPTO_set_mem_functions(count_malloc, count_realloc, count_free) != 1)
		return 1; /* before OpenSSL allocates anything */
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	if (key_dir[strlen(key_dir) - 1] != 'X') {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", key_dir);
		if (system(cmd) != 0)
			rc = 1;
	}
	return rc;
}
