/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the wire-protocol codec: the bounds-checked readers, header
 * validation in both directions, startup-packet parsing, the builders
 * (byte-exact layouts, length patching, sticky failure) and ErrorResponse
 * parsing. Table-driven where the cases differ only by data.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "pgveil/pgproto.h"

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Asserts that b holds exactly the n bytes of `want`. */
static void assert_buf_bytes(const PgBuf *b, const void *want, size_t n)
{
	assert_true(pgproto_buf_ok(b));
	assert_int_equal(b->len, n);
	assert_memory_equal(b->data, want, n);
}

/* ---- readers ---------------------------------------------------------- */

static void test_reader_values(void **state)
{
	static const uint8_t body[] = {
		0x7f,                   /* byte */
		0x80, 0x01,             /* int16 -32767 */
		0xff, 0xff, 0xff, 0xfe, /* int32 -2 */
		0x80, 0x00, 0x00, 0x01, /* uint32 2147483649 */
		'a', 'b', 0,            /* string */
		0,                      /* empty string */
		1, 2, 3,                /* bytes */
	};
	PgReader r;
	uint8_t b = 0;
	int16_t i16 = 0;
	int32_t i32 = 0;
	uint32_t u32 = 0;
	const char *s = NULL;
	const uint8_t *raw = NULL;

	pgproto_reader_init(&r, body, sizeof(body));
	assert_int_equal(pgproto_remaining(&r), sizeof(body));
	assert_true(pgproto_get_byte(&r, &b));
	assert_int_equal(b, 0x7f);
	assert_true(pgproto_get_int16(&r, &i16));
	assert_int_equal(i16, -32767);
	assert_true(pgproto_get_int32(&r, &i32));
	assert_int_equal(i32, -2);
	assert_true(pgproto_get_uint32(&r, &u32));
	assert_int_equal(u32, 2147483649u);
	assert_true(pgproto_get_string(&r, &s));
	assert_string_equal(s, "ab");
	assert_ptr_equal(s, body + 11);
	assert_true(pgproto_get_string(&r, &s));
	assert_string_equal(s, "");
	assert_int_equal(pgproto_remaining(&r), 3);
	assert_true(pgproto_get_bytes(&r, 0, &raw));
	assert_ptr_equal(raw, body + 15);
	assert_true(pgproto_get_bytes(&r, 3, &raw));
	assert_ptr_equal(raw, body + 15);
	assert_int_equal(pgproto_remaining(&r), 0);
	assert_int_equal(r.pos, sizeof(body));
}

/* Each getter fails at the end (and with a partial value left) without moving or writing. */
static void test_reader_bounds(void **state)
{
	static const uint8_t body[] = { 1, 2, 3, 'x', 'y' };

	for (size_t avail = 0; avail <= 3; avail++) {
		PgReader r;
		uint8_t b = 0xaa;
		int16_t i16 = 0x5a5a;
		int32_t i32 = 0x5a5a5a5a;
		uint32_t u32 = 0xa5a5a5a5;
		const uint8_t *raw = (const uint8_t *)"sentinel";
		const char *s = "sentinel";

		/* The reader sits avail bytes before the end of `body`. */
		pgproto_reader_init(&r, body, sizeof(body));
		r.pos = sizeof(body) - avail;
		if (avail < 1)
			assert_false(pgproto_get_byte(&r, &b));
		if (avail < 2)
			assert_false(pgproto_get_int16(&r, &i16));
		assert_false(pgproto_get_int32(&r, &i32));
		assert_false(pgproto_get_uint32(&r, &u32));
		assert_false(pgproto_get_bytes(&r, avail + 1, &raw));
		/* The tail "x", "y" or "3xy" has no NUL. */
		assert_false(pgproto_get_string(&r, &s));
		assert_int_equal(r.pos, sizeof(body) - avail);
		assert_int_equal(b, 0xaa);
		assert_int_equal(i16, 0x5a5a);
		assert_int_equal(i32, 0x5a5a5a5a);
		assert_int_equal(u32, 0xa5a5a5a5);
		assert_string_equal((const char *)raw, "sentinel");
		assert_string_equal(s, "sentinel");
	}
}

static void test_reader_empty(void **state)
{
	PgReader r;
	uint8_t b;
	const char *s = NULL;
	const uint8_t *raw = NULL;

	/* An empty body, also as a NULL pointer (run under the sanitizers, this checks no UB). */
	for (int i = 0; i < 2; i++) {
		pgproto_reader_init(&r, i == 0 ? "" : NULL, 0);
		assert_int_equal(pgproto_remaining(&r), 0);
		assert_false(pgproto_get_byte(&r, &b));
		assert_false(pgproto_get_string(&r, &s));
		assert_null(s);
		assert_false(pgproto_get_bytes(&r, 1, &raw));
		assert_null(raw);
		assert_true(pgproto_get_bytes(&r, 0, &raw));
		assert_non_null(raw);
		raw = NULL;
		assert_int_equal(r.pos, 0);
	}
}

/* ---- framing ------------------------------------------------------------ */

typedef struct HeaderCase {
	uint8_t type;
	uint32_t len;
	uint32_t max_len;
	PgFrameStatus want;
} HeaderCase;

static void check_header_cases(const HeaderCase *cases, size_t n, bool frontend)
{
	for (size_t i = 0; i < n; i++) {
		uint8_t hdr[PG_HEADER_LEN];
		PgHeader h = { 0, 0 };
		const char *why = NULL;
		PgFrameStatus got;

		hdr[0] = cases[i].type;
		put_be32(hdr + 1, cases[i].len);
		got = frontend ? pgproto_check_frontend_header(hdr, cases[i].max_len, &h, &why)
			       : pgproto_check_backend_header(hdr, cases[i].max_len, &h, &why);
		if (got != cases[i].want)
			fail_msg("%s case %zu ('%c' len %u max %u): status %d, want %d",
				 frontend ? "frontend" : "backend", i, cases[i].type, cases[i].len,
				 cases[i].max_len, got, cases[i].want);
		assert_int_equal(h.type, cases[i].type);
		if (got == PGP_FRAME_OK) {
			assert_int_equal(h.len, cases[i].len);
			assert_null(why);
		} else {
			assert_non_null(why);
		}
	}
}

static void test_frontend_header_types(void **state)
{
	static const char valid[] = "BCdcfDEHFPpQSX";
	static const char invalid[] = "RZKTIGNnx0\x01\xff";

	for (const char *t = valid; *t; t++) {
		/* Fixed-size messages have length 4, the others any length >= 4. */
		HeaderCase c = { (uint8_t)*t, 4, 1 << 20, PGP_FRAME_OK };

		check_header_cases(&c, 1, true);
		if (strchr("SHXc", *t) == NULL) {
			c.len = 1000;
			check_header_cases(&c, 1, true);
		}
	}
	for (const char *t = invalid; *t; t++) {
		HeaderCase c = { (uint8_t)*t, 8, 1 << 20, PGP_FRAME_BAD_TYPE };

		check_header_cases(&c, 1, true);
	}
	{
		HeaderCase nul = { 0, 8, 1 << 20, PGP_FRAME_BAD_TYPE };

		check_header_cases(&nul, 1, true);
	}
}

static void test_frontend_header_lengths(void **state)
{
	static const HeaderCase cases[] = {
		{ 'Q', 0, 1000, PGP_FRAME_BAD_LENGTH },
		{ 'Q', 3, 1000, PGP_FRAME_BAD_LENGTH },
		{ 'Q', 4, 1000, PGP_FRAME_OK },
		{ 'Q', 1000, 1000, PGP_FRAME_OK },
		{ 'Q', 1001, 1000, PGP_FRAME_BAD_LENGTH },
		{ 'Q', 0xffffffffu, 1000, PGP_FRAME_BAD_LENGTH },
		{ 'P', 0x80000000u, 0x7fffffffu, PGP_FRAME_BAD_LENGTH },
		{ 'S', 4, 1000, PGP_FRAME_OK },
		{ 'S', 5, 1000, PGP_FRAME_BAD_LENGTH },
		{ 'S', 3, 1000, PGP_FRAME_BAD_LENGTH },
		{ 'H', 4, 1000, PGP_FRAME_OK },
		{ 'H', 8, 1000, PGP_FRAME_BAD_LENGTH },
		{ 'X', 4, 1000, PGP_FRAME_OK },
		{ 'X', 5, 1000, PGP_FRAME_BAD_LENGTH },
		{ 'c', 4, 1000, PGP_FRAME_OK },
		{ 'c', 100, 1000, PGP_FRAME_BAD_LENGTH },
		{ 'd', 5, 1000, PGP_FRAME_OK },
	};

	check_header_cases(cases, PGV_ARRAY_LEN(cases), true);
}

static void test_backend_header_types(void **state)
{
	static const char valid[] = "RK23CdcGHWDIEVvnNAtS1sT";
	static const char invalid[] = "QPBXFpfUz9\x01\xff";

	for (const char *t = valid; *t; t++) {
		HeaderCase c = { (uint8_t)*t, 4, 1 << 20, PGP_FRAME_OK };

		check_header_cases(&c, 1, false);
		c.len = 1000;
		check_header_cases(&c, 1, false);
	}
	for (const char *t = invalid; *t; t++) {
		HeaderCase c = { (uint8_t)*t, 8, 1 << 20, PGP_FRAME_BAD_TYPE };

		check_header_cases(&c, 1, false);
	}
}

static void test_backend_header_lengths(void **state)
{
	static const HeaderCase cases[] = {
		{ 'Z', 5, 1000, PGP_FRAME_OK },
		{ 'Z', 4, 1000, PGP_FRAME_BAD_LENGTH },
		{ 'Z', 6, 1000, PGP_FRAME_BAD_LENGTH },
		{ 'Z', 3, 1000, PGP_FRAME_BAD_LENGTH },
		{ 'D', 0, 1000, PGP_FRAME_BAD_LENGTH },
		{ 'D', 3, 1000, PGP_FRAME_BAD_LENGTH },
		{ 'D', 1000, 1000, PGP_FRAME_OK },
		{ 'D', 1001, 1000, PGP_FRAME_BAD_LENGTH },
		{ 'E', 0xffffffffu, 1 << 30, PGP_FRAME_BAD_LENGTH },
		/* Only ReadyForQuery is fixed-size in this direction. */
		{ 'S', 5, 1000, PGP_FRAME_OK },
		{ 'c', 5, 1000, PGP_FRAME_OK },
	};

	check_header_cases(cases, PGV_ARRAY_LEN(cases), false);
}

/* ---- startup packets ---------------------------------------------------- */

/* Builds an untyped startup packet: code, then name/value strings, then a terminator if asked. */
static void build_startup(PgBuf *b, uint32_t code, const char *const *strings, int n, bool terminator)
{
	pgproto_buf_init(b);
	pgproto_begin(b, 0);
	pgproto_put_int32(b, (int32_t)code);
	for (int i = 0; i < n; i++)
		pgproto_put_string(b, strings[i]);
	if (terminator)
		pgproto_put_byte(b, 0);
	pgproto_end(b);
	assert_true(pgproto_buf_ok(b));
}

static void test_startup_message(void **state)
{
	static const char *const kv[] = { "user", "agent-7", "database", "app", "application_name", "" };
	PgBuf b;
	PgStartup s;
	const char *why = NULL;

	build_startup(&b, PG_PROTOCOL_3_0, kv, 6, true);
	assert_true(pgproto_parse_startup(b.data, b.len, &s, &why));
	assert_null(why);
	assert_int_equal(s.code, PG_PROTOCOL_3_0);
	assert_int_equal(s.n_params, 3);
	assert_string_equal(s.params[0].name, "user");
	assert_string_equal(s.params[0].value, "agent-7");
	assert_string_equal(pgproto_startup_get(&s, "database"), "app");
	assert_string_equal(pgproto_startup_get(&s, "application_name"), "");
	assert_null(pgproto_startup_get(&s, "options"));
	assert_null(pgproto_startup_get(&s, "USER"));
	/* Strings point into the packet. */
	assert_true(s.params[0].name > (const char *)b.data &&
		    s.params[0].name < (const char *)b.data + b.len);
	pgproto_buf_free(&b);
}

/* A newer 3.x minor version is parsed (the session answers with NegotiateProtocolVersion). */
static void test_startup_minor_version(void **state)
{
	static const char *const kv[] = { "user", "u" };
	PgBuf b;
	PgStartup s;
	const char *why = NULL;

	build_startup(&b, PG_PROTOCOL_3_0 | 2, kv, 2, true);
	assert_true(pgproto_parse_startup(b.data, b.len, &s, &why));
	assert_int_equal(s.code, PG_PROTOCOL_3_0 | 2);
	assert_int_equal(s.n_params, 1);
	pgproto_buf_free(&b);
}

static void test_startup_requests(void **state)
{
	static const uint8_t ssl[] = { 0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f };
	static const uint8_t gss[] = { 0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30 };
	static const uint8_t cancel[] = { 0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e,
					  0, 0, 0x30, 0x39, 0xde, 0xad, 0xbe, 0xef };
	PgStartup s;
	const char *why = NULL;

	assert_true(pgproto_parse_startup(ssl, sizeof(ssl), &s, &why));
	assert_int_equal(s.code, PG_SSL_REQUEST_CODE);
	assert_int_equal(s.n_params, 0);
	assert_true(pgproto_parse_startup(gss, sizeof(gss), &s, &why));
	assert_int_equal(s.code, PG_GSSENC_REQUEST_CODE);
	assert_true(pgproto_parse_startup(cancel, sizeof(cancel), &s, &why));
	assert_int_equal(s.code, PG_CANCEL_REQUEST_CODE);
	assert_int_equal(s.cancel_pid, 12345);
	assert_int_equal(s.cancel_key, 0xdeadbeefu);
	assert_null(why);
}

typedef struct BadStartup {
	const char *name;   /* for failure messages */
	uint8_t pkt[32];    /* the packet; its length word is patched unless `declared` is set */
	size_t len;         /* bytes handed to the parser */
	uint32_t declared;  /* length word to write, 0 = len */
} BadStartup;

#define V30 0x00, 0x03, 0x00, 0x00
#define LEN0 0, 0, 0, 0

static void test_startup_malformed(void **state)
{
	static const BadStartup cases[] = {
		{ "declared longer", { LEN0, V30, 'u', 0, 'x', 0, 0 }, 13, 14 },
		{ "declared shorter", { LEN0, V30, 'u', 0, 'x', 0, 0 }, 13, 12 },
		{ "only a length word", { LEN0 }, 4, 0 },
		{ "shorter than a length word", { 0, 0, 0 }, 3, 3 },
		{ "protocol 2.0", { LEN0, 0x00, 0x02, 0x00, 0x00, 'u', 0, 'x', 0, 0 }, 13, 0 },
		{ "protocol 4.0", { LEN0, 0x00, 0x04, 0x00, 0x00, 'u', 0, 'x', 0, 0 }, 13, 0 },
		{ "unknown request code", { LEN0, 0x04, 0xd2, 0x16, 0x31 }, 8, 0 },
		{ "no terminator at all", { LEN0, V30 }, 8, 0 },
		{ "missing final terminator", { LEN0, V30, 'u', 0, 'x', 0 }, 12, 0 },
		{ "name without value", { LEN0, V30, 'u', 's', 'e', 'r', 0 }, 13, 0 },
		{ "name without NUL", { LEN0, V30, 'u', 's', 'e', 'r' }, 12, 0 },
		{ "value without NUL", { LEN0, V30, 'u', 0, 'x', 'y' }, 12, 0 },
		{ "bytes after terminator", { LEN0, V30, 'u', 0, 'x', 0, 0, 'z' }, 14, 0 },
		{ "a name given twice", { LEN0, V30, 'o', 0, 'a', 0, 'o', 0, 'b', 0, 0 }, 17, 0 },
		{ "SSLRequest with payload", { LEN0, 0x04, 0xd2, 0x16, 0x2f, 0, 0, 0, 0 }, 12, 0 },
		{ "GSSENCRequest with payload", { LEN0, 0x04, 0xd2, 0x16, 0x30, 0 }, 9, 0 },
		{ "CancelRequest too short", { LEN0, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1 }, 12, 0 },
		{ "CancelRequest too long",
		  { LEN0, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3 }, 20, 0 },
	};

	for (size_t i = 0; i < PGV_ARRAY_LEN(cases); i++) {
		uint8_t pkt[32];
		PgStartup s;
		const char *why = NULL;

		memcpy(pkt, cases[i].pkt, sizeof(pkt));
		if (cases[i].len >= 4)
			put_be32(pkt, cases[i].declared ? cases[i].declared : (uint32_t)cases[i].len);
		if (pgproto_parse_startup(pkt, cases[i].len, &s, &why))
			fail_msg("startup case \"%s\" was accepted", cases[i].name);
		assert_non_null(why);
	}
}

static void test_startup_protocol_2_message(void **state)
{
	static const uint8_t pkt[] = { 0, 0, 0, 13, V30, 'u', 0, 'x', 0, 0 };
	uint8_t v2[sizeof(pkt)];
	PgStartup s;
	const char *why = NULL;

	memcpy(v2, pkt, sizeof(pkt));
	v2[5] = 2;
	assert_false(pgproto_parse_startup(v2, sizeof(v2), &s, &why));
	assert_non_null(strstr(why, "unsupported frontend protocol"));
	/* The same bytes as 3.0 are fine. */
	assert_true(pgproto_parse_startup(pkt, sizeof(pkt), &s, &why));
}

static void test_startup_param_limit(void **state)
{
	const char *kv[2 * (PG_STARTUP_MAX_PARAMS + 1)];
	char names[PG_STARTUP_MAX_PARAMS + 1][8];
	PgBuf b;
	PgStartup s;
	const char *why = NULL;

	for (int i = 0; i <= PG_STARTUP_MAX_PARAMS; i++) {
		snprintf(names[i], sizeof(names[i]), "p%d", i);
		kv[2 * i] = names[i];
		kv[2 * i + 1] = "v";
	}
	build_startup(&b, PG_PROTOCOL_3_0, kv, 2 * PG_STARTUP_MAX_PARAMS, true);
	assert_true(pgproto_parse_startup(b.data, b.len, &s, &why));
	assert_int_equal(s.n_params, PG_STARTUP_MAX_PARAMS);
	assert_string_equal(pgproto_startup_get(&s, "p63"), "v");
	pgproto_buf_free(&b);

	build_startup(&b, PG_PROTOCOL_3_0, kv, 2 * (PG_STARTUP_MAX_PARAMS + 1), true);
	assert_false(pgproto_parse_startup(b.data, b.len, &s, &why));
	assert_non_null(strstr(why, "too many"));
	pgproto_buf_free(&b);
}

static void test_startup_length_word(void **state)
{
	static const struct {
		uint32_t len;
		bool ok;
	} cases[] = {
		{ 0, false },    { 4, false },     { 7, false },          { 8, true },
		{ 9, true },     { 10000, true },  { 10001, false },      { 0x80000000u, false },
		{ 0xffffffffu, false },
	};

	for (size_t i = 0; i < PGV_ARRAY_LEN(cases); i++) {
		uint8_t word[4];
		uint32_t out = 12345;
		const char *why = NULL;

		put_be32(word, cases[i].len);
		if (pgproto_check_startup_length(word, &out, &why) != cases[i].ok)
			fail_msg("length word %u: want %s", cases[i].len, cases[i].ok ? "ok" : "error");
		if (cases[i].ok) {
			assert_int_equal(out, cases[i].len);
		} else {
			assert_int_equal(out, 12345);
			assert_non_null(why);
		}
	}
}

/* ---- builders ------------------------------------------------------------ */

static void test_build_error_layout(void **state)
{
	static const uint8_t full[] = {
		'E', 0, 0, 0, 46,
		'S', 'F', 'A', 'T', 'A', 'L', 0,
		'V', 'F', 'A', 'T', 'A', 'L', 0,
		'C', '2', '8', '0', '0', '0', 0,
		'M', 'n', 'o', 0,
		'D', 'w', 'h', 'y', 0,
		'H', 't', 'r', 'y', ' ', 'a', 'g', 'a', 'i', 'n', 0,
		0,
	};
	static const uint8_t notice[] = {
		'N', 0, 0, 0, 33,
		'S', 'W', 'A', 'R', 'N', 'I', 'N', 'G', 0,
		'V', 'W', 'A', 'R', 'N', 'I', 'N', 'G', 0,
		'C', '0', '1', '0', '0', '0', 0,
		'M', 'm', 0,
		0,
	};
	PgBuf b;

	pgproto_buf_init(&b);
	pgproto_build_error(&b, false, "FATAL", "28000", "no", "why", "try again");
	assert_buf_bytes(&b, full, sizeof(full));
	pgproto_buf_reset(&b);
	pgproto_build_error(&b, true, "WARNING", "01000", "m", NULL, NULL);
	assert_buf_bytes(&b, notice, sizeof(notice));
	pgproto_buf_free(&b);
}

static void test_build_simple_messages(void **state)
{
	static const uint8_t want[] = {
		'Z', 0, 0, 0, 5, 'I',
		'K', 0, 0, 0, 12, 0, 0, 0x30, 0x39, 0xde, 0xad, 0xbe, 0xef,
		'S', 0, 0, 0, 14, 'T', 'i', 'm', 'e', 'Z', 'o', 'n', 'e', 0, 0,
		'R', 0, 0, 0, 8, 0, 0, 0, 0,
		'R', 0, 0, 0, 12, 0, 0, 0, 5, 1, 2, 3, 4,
		'X', 0, 0, 0, 4,
		'p', 0, 0, 0, 7, 'p', 'w', 0,
	};
	static const uint8_t salt[] = { 1, 2, 3, 4 };
	PgBuf b;

	pgproto_buf_init(&b);
	pgproto_build_ready(&b, 'I');
	pgproto_build_backend_key(&b, 12345, 0xdeadbeefu);
	pgproto_build_parameter_status(&b, "TimeZone", "");
	pgproto_build_auth(&b, PG_AUTH_OK, NULL, 0);
	pgproto_build_auth(&b, PG_AUTH_MD5, salt, sizeof(salt));
	pgproto_build_terminate(&b);
	pgproto_build_password(&b, "pw");
	assert_buf_bytes(&b, want, sizeof(want));
	pgproto_buf_free(&b);
}

static void test_build_untyped_packets(void **state)
{
	static const uint8_t ssl[] = { 0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f };
	static const uint8_t cancel[] = { 0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e,
					  0, 0, 0, 42, 0xfe, 0xdc, 0xba, 0x98 };
	PgBuf b;
	PgStartup s;
	const char *why = NULL;

	pgproto_buf_init(&b);
	pgproto_build_ssl_request(&b);
	assert_buf_bytes(&b, ssl, sizeof(ssl));
	pgproto_buf_reset(&b);
	pgproto_build_cancel(&b, 42, 0xfedcba98u);
	assert_buf_bytes(&b, cancel, sizeof(cancel));
	/* What the builder writes, the parser reads back. */
	assert_true(pgproto_parse_startup(b.data, b.len, &s, &why));
	assert_int_equal(s.cancel_pid, 42);
	assert_int_equal(s.cancel_key, 0xfedcba98u);
	pgproto_buf_free(&b);
}

static void test_build_sasl_and_negotiate(void **state)
{
	static const uint8_t want[] = {
		'p', 0, 0, 0, 24, 'S', 'C', 'R', 'A', 'M', '-', 'S', 'H', 'A', '-', '2', '5', '6', 0,
		0, 0, 0, 2, 'h', 'i',
		'p', 0, 0, 0, 7, 'a', 'b', 'c',
		'v', 0, 0, 0, 21, 0, 0, 0, 0, 0, 0, 0, 2, '_', 'p', 'q', '_', '.', 'x', 0, 'y', 0,
	};
	static const char *const opts[] = { "_pq_.x", "y" };
	PgBuf b;

	pgproto_buf_init(&b);
	pgproto_build_sasl_initial(&b, "SCRAM-SHA-256", "hi", 2);
	pgproto_build_sasl_response(&b, "abc", 3);
	pgproto_build_negotiate(&b, 0, opts, 2);
	assert_buf_bytes(&b, want, sizeof(want));
	pgproto_buf_free(&b);
}

/* A message bigger than the inline storage moves to the heap with the right length word. */
static void test_build_grows(void **state)
{
	char big[3000];
	PgBuf b;

	memset(big, 'q', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	pgproto_buf_init(&b);
	pgproto_build_ready(&b, 'T');
	pgproto_build_parameter_status(&b, "k", big);
	assert_true(pgproto_buf_ok(&b));
	assert_ptr_not_equal(b.data, b.inline_);
	assert_int_equal(b.len, 6 + 1 + 4 + 2 + sizeof(big));
	assert_int_equal(b.data[5], 'T');
	assert_int_equal(b.data[6], 'S');
	assert_int_equal(get_be32(b.data + 7), 4 + 2 + sizeof(big));
	assert_int_equal(b.data[b.len - 1], 0);
	assert_int_equal(b.data[b.len - 2], 'q');
	pgproto_buf_free(&b);
	assert_ptr_equal(b.data, b.inline_);
	assert_int_equal(b.len, 0);
}

static void test_build_failures_sticky(void **state)
{
	PgBuf b;

	/* Nested begin. */
	pgproto_buf_init(&b);
	pgproto_begin(&b, 'Q');
	pgproto_begin(&b, 'Q');
	pgproto_end(&b);
	pgproto_end(&b);
	assert_false(pgproto_buf_ok(&b));
	/* Later good messages do not clear the failure. */
	pgproto_build_terminate(&b);
	assert_false(pgproto_buf_ok(&b));
	pgproto_buf_reset(&b);
	assert_true(pgproto_buf_ok(&b));
	assert_int_equal(b.len, 0);

	/* End without begin. */
	pgproto_end(&b);
	assert_false(pgproto_buf_ok(&b));
	pgproto_build_ready(&b, 'I');
	assert_false(pgproto_buf_ok(&b));
	pgproto_buf_reset(&b);

	/* A message left open is not ok until it is ended. */
	pgproto_begin(&b, 'Q');
	pgproto_put_string(&b, "SELECT 1");
	assert_false(pgproto_buf_ok(&b));
	pgproto_end(&b);
	assert_true(pgproto_buf_ok(&b));
	assert_int_equal(get_be32(b.data + 1), 4 + 9);
	pgproto_buf_free(&b);
}

/* ---- error fields ------------------------------------------------------------ */

static void test_parse_error_roundtrip(void **state)
{
	PgBuf b;
	PgErrorFields f;

	pgproto_buf_init(&b);
	pgproto_build_error(&b, false, "ERROR", "42501", "permission denied", "by rule 7", "ask");
	assert_true(pgproto_buf_ok(&b));
	assert_true(pgproto_parse_error(b.data + PG_HEADER_LEN, b.len - PG_HEADER_LEN, &f));
	assert_string_equal(f.severity, "ERROR");
	assert_string_equal(f.sqlstate, "42501");
	assert_string_equal(f.message, "permission denied");
	assert_string_equal(f.detail, "by rule 7");
	pgproto_buf_reset(&b);
	pgproto_build_error(&b, true, "NOTICE", "00000", "hi", NULL, NULL);
	assert_true(pgproto_buf_ok(&b));
	assert_true(pgproto_parse_error(b.data + PG_HEADER_LEN, b.len - PG_HEADER_LEN, &f));
	assert_null(f.detail);
	pgproto_buf_free(&b);
}

static void test_parse_error_fields(void **state)
{
	static const struct {
		const char *name;
		const char body[48];
		size_t len;
		bool ok;
	} cases[] = {
		{ "unknown fields ignored", "Xfoo\0C12345\0Mmsg\0Wwhere\0", 25, true },
		{ "no severity", "C12345\0Mm\0", 11, true },
		{ "translated severity", "SFEHLER\0VERROR\0C12345\0Mm\0", 27, true },
		{ "no sqlstate", "SERROR\0Mm\0", 11, false },
		{ "no message", "SERROR\0C12345\0", 15, false },
		{ "no terminator", "C12345\0Mm\0", 10, false },
		{ "value without NUL", "C12345\0Mm", 9, false },
		{ "field code only", "C12345\0Mm\0D", 11, false },
		{ "empty", "", 0, false },
		{ "terminator only", "", 1, false },
	};

	for (size_t i = 0; i < PGV_ARRAY_LEN(cases); i++) {
		PgErrorFields f;

		if (pgproto_parse_error((const uint8_t *)cases[i].body, cases[i].len, &f) != cases[i].ok)
			fail_msg("error body \"%s\": want %s", cases[i].name, cases[i].ok ? "ok" : "failure");
		if (cases[i].ok) {
			assert_string_equal(f.sqlstate, "12345");
			assert_string_equal(f.message, i == 0 ? "msg" : "m");
			if (strcmp(cases[i].name, "translated severity") == 0)
				assert_string_equal(f.severity, "ERROR"); /* V, not the localized S */
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reader_values),
		cmocka_unit_test(test_reader_bounds),
		cmocka_unit_test(test_reader_empty),
		cmocka_unit_test(test_frontend_header_types),
		cmocka_unit_test(test_frontend_header_lengths),
		cmocka_unit_test(test_backend_header_types),
		cmocka_unit_test(test_backend_header_lengths),
		cmocka_unit_test(test_startup_message),
		cmocka_unit_test(test_startup_minor_version),
		cmocka_unit_test(test_startup_requests),
		cmocka_unit_test(test_startup_malformed),
		cmocka_unit_test(test_startup_protocol_2_message),
		cmocka_unit_test(test_startup_param_limit),
		cmocka_unit_test(test_startup_length_word),
		cmocka_unit_test(test_build_error_layout),
		cmocka_unit_test(test_build_simple_messages),
		cmocka_unit_test(test_build_untyped_packets),
		cmocka_unit_test(test_build_sasl_and_negotiate),
		cmocka_unit_test(test_build_grows),
		cmocka_unit_test(test_build_failures_sticky),
		cmocka_unit_test(test_parse_error_roundtrip),
		cmocka_unit_test(test_parse_error_fields),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
