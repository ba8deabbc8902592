/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the pgauth module: the SCRAM-SHA-256 client against the
 * RFC 7677 test vector and against values computed independently for the
 * empty user name pgveil sends, every rejection of a malformed or lying
 * server message, and the MD5 response.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "pgveil/pgauth.h"

/* RFC 7677 section 3. */
#define RFC_NONCE "rOprNGfwEbeRWgbNEkqO"
#define RFC_SERVER_NONCE RFC_NONCE "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
#define RFC_SERVER_FIRST "r=" RFC_SERVER_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
#define RFC_CLIENT_FINAL "c=biws,r=" RFC_SERVER_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
#define RFC_SERVER_FINAL "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

/*
 * The same exchange with "n=" (empty user), as pgveil and libpq send it.
 * Expected values computed with Python's hashlib/hmac, whose implementation
 * reproduces the RFC values above when given "n=user".
 */
#define EMPTY_USER_CLIENT_FINAL "c=biws,r=" RFC_SERVER_NONCE ",p=qvT2SWdEH5Q06albL+hjSYuUhCG7VndFyzIb7CK4n9k="
#define EMPTY_USER_SERVER_FINAL "v=3HO6Qt1M4MKJrmlKaoOqLAI0/0TV0HZe7J9H3MBtSOg="

static const uint8_t *u8(const char *s)
{
	return (const uint8_t *)s;
}

/* A client that has answered `server_first`; fails the test if it could not. */
static ScramClient *scram_at_final(const char *password, const char *nonce, const char *server_first,
				   const char **client_final)
{
	ScramClient *sc = pgauth_scram_new_with_nonce(password, nonce);
	const char *why = NULL;

	assert_non_null(sc);
	*client_final = pgauth_scram_client_final(sc, u8(server_first), strlen(server_first), &why);
	assert_non_null(*client_final);
	assert_null(why);
	return sc;
}

static void test_scram_rfc7677_vector(void **state)
{
	ScramClient *sc = pgauth_scram_new_full("pencil", RFC_NONCE, "user");
	const char *why = NULL, *final;

	assert_non_null(sc);
	assert_string_equal(pgauth_scram_client_first(sc), "n,,n=user,r=" RFC_NONCE);
	final = pgauth_scram_client_final(sc, u8(RFC_SERVER_FIRST), strlen(RFC_SERVER_FIRST), &why);
	assert_non_null(final);
	assert_string_equal(final, RFC_CLIENT_FINAL);
	assert_true(pgauth_scram_verify_server(sc, u8(RFC_SERVER_FINAL), strlen(RFC_SERVER_FINAL), &why));
	pgauth_scram_free(sc);
}

static void test_scram_empty_user(void **state)
{
	const char *final, *why = NULL;
	ScramClient *sc = scram_at_final("pencil", RFC_NONCE, RFC_SERVER_FIRST, &final);

	assert_string_equal(pgauth_scram_client_first(sc), "n,,n=,r=" RFC_NONCE);
	assert_string_equal(final, EMPTY_USER_CLIENT_FINAL);
	assert_true(pgauth_scram_verify_server(sc, u8(EMPTY_USER_SERVER_FINAL),
					       strlen(EMPTY_USER_SERVER_FINAL), &why));
	pgauth_scram_free(sc);
}

/* More exchanges, all computed with Python: salt padding, one round, empty and non-ASCII passwords. */
static void test_scram_more_vectors(void **state)
{
	static const struct {
		const char *password, *nonce, *server_first, *client_final, *server_final;
	} cases[] = {
		{ "pw", "abcDEF", "r=abcDEFserver,s=AQIDBAU=,i=1",
		  "c=biws,r=abcDEFserver,p=gFooXyeXy2Leox1q/MlmbOVZRLc8zF3F9YdNmTZGk9Q=",
		  "v=IO3Ii5SdQ4j1KUUBbcr/irmelcLNvzv+UK9dBlN5JOQ=" },
		{ "", "abcDEF", "r=abcDEFserver,s=AQID,i=2",
		  "c=biws,r=abcDEFserver,p=Syb3ZGQuKVETXIGzEXE2Agi5T27nmkm/IKEJAjVNZvc=",
		  "v=SPTqZRIjfBcydRxt4NX/UWUeUDVwMKin309NX8OxNDo=" },
		{ "p\xc3\xa4ssw\xc3\xb6rd", "nonceXYZ", "r=nonceXYZsrv,s=c2FsdA==,i=10",
		  "c=biws,r=nonceXYZsrv,p=BacWtqZbgzaXcI+pUVQfgkTdCXw864usV3C6XtJMhEw=",
		  "v=VwBfQb/C6Atp2DEjW3v1jhXjt7dJ/FV0Y/FxA1QrCLk=" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *final, *why = NULL;
		ScramClient *sc = scram_at_final(cases[i].password, cases[i].nonce, cases[i].server_first, &final);

		assert_string_equal(final, cases[i].client_final);
		assert_true(pgauth_scram_verify_server(sc, u8(cases[i].server_final),
						       strlen(cases[i].server_final), &why));
		pgauth_scram_free(sc);
	}
}

static void test_scram_random_nonce(void **state)
{
	ScramClient *a = pgauth_scram_new("secret"), *b = pgauth_scram_new("secret");
	const char *fa, *fb;

	assert_non_null(a);
	assert_non_null(b);
	fa = pgauth_scram_client_first(a);
	fb = pgauth_scram_client_first(b);
	assert_int_equal(strncmp(fa, "n,,n=,r=", 8), 0);
	/* 18 random bytes are 24 base64 characters without padding. */
	assert_int_equal(strlen(fa), 8 + 24);
	assert_null(strpbrk(fa + 8, ",="));
	assert_string_not_equal(fa, fb);
	pgauth_scram_free(a);
	pgauth_scram_free(b);
}

static void test_scram_new_rejects_bad_arguments(void **state)
{
	static const struct {
		const char *nonce, *user;
	} cases[] = {
		{ "", "" },        { "has,comma", "" },  { "has space", "" }, { "tab\there", "" },
		{ "ok", "a,b" },   { "ok", "a=b" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		assert_null(pgauth_scram_new_full("pw", cases[i].nonce, cases[i].user));
}

/* Every server-first-message here is refused, and the exchange is over afterwards. */
static void test_scram_bad_server_first(void **state)
{
	static const struct {
		const char *msg;
		const char *why; /* a word the reason must contain */
	} cases[] = {
		/* nonce */
		{ "r=XOprNGfwEbeRWgbNEkqOabc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce" },
		{ "r=rOprNG,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce" },
		{ "r=,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce" },
		{ "r=" RFC_NONCE "ab cd,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce" },
		{ "r=" RFC_NONCE "ab\x7f,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce" },
		/* salt */
		{ "r=" RFC_SERVER_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ=,i=4096", "salt" },
		{ "r=" RFC_SERVER_NONCE ",s=W22Za!0SNY7soEsUEjb6gQ==,i=4096", "salt" },
		{ "r=" RFC_SERVER_NONCE ",s=W22Z=J0S,i=4096", "salt" },
		{ "r=" RFC_SERVER_NONCE ",s=====,i=4096", "salt" },
		{ "r=" RFC_SERVER_NONCE ",s=A===,i=4096", "salt" },
		{ "r=" RFC_SERVER_NONCE ",s=,i=4096", "salt" },
		/* iteration count */
		{ "r=" RFC_SERVER_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0", "iteration" },
		{ "r=" RFC_SERVER_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=10000001", "iteration" },
		{ "r=" RFC_SERVER_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999999999999999", "iteration" },
		{ "r=" RFC_SERVER_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1", "iteration" },
		{ "r=" RFC_SERVER_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=", "iteration" },
		{ "r=" RFC_SERVER_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=40x", "iteration" },
		{ "r=" RFC_SERVER_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i= 4096", "iteration" },
		/* layout: truncated, garbage, reordered, extensions */
		{ "r=" RFC_SERVER_NONCE, "malformed" },
		{ "r=" RFC_SERVER_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==", "malformed" },
		{ "r=" RFC_SERVER_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,", "malformed" },
		{ "r=" RFC_SERVER_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,x=1", "malformed" },
		{ "s=W22ZaJ0SNY7soEsUEjb6gQ==,r=" RFC_SERVER_NONCE ",i=4096", "malformed" },
		{ "m=ext,r=" RFC_SERVER_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "malformed" },
		{ "e=other-error", "malformed" },
		{ "hello", "malformed" },
		{ "r", "malformed" },
		{ "", "malformed" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		ScramClient *sc = pgauth_scram_new_with_nonce("pencil", RFC_NONCE);
		const char *why = NULL;

		assert_non_null(sc);
		assert_null(pgauth_scram_client_final(sc, u8(cases[i].msg), strlen(cases[i].msg), &why));
		assert_non_null(why);
		if (strstr(why, cases[i].why) == NULL)
			fail_msg("case %zu (%s): reason \"%s\" lacks \"%s\"", i, cases[i].msg, why, cases[i].why);
		/* A failed exchange cannot be resumed, even with a valid message. */
		why = NULL;
		assert_null(pgauth_scram_client_final(sc, u8(RFC_SERVER_FIRST), strlen(RFC_SERVER_FIRST), &why));
		assert_non_null(why);
		pgauth_scram_free(sc);
	}
}

/* A NUL byte inside the message is refused even when the part before it is valid. */
static void test_scram_server_first_embedded_nul(void **state)
{
	static const char msg[] = RFC_SERVER_FIRST "\0,x=1";
	ScramClient *sc = pgauth_scram_new_with_nonce("pencil", RFC_NONCE);
	const char *why = NULL;

	assert_non_null(sc);
	assert_null(pgauth_scram_client_final(sc, u8(msg), sizeof(msg) - 1, &why));
	assert_non_null(why);
	pgauth_scram_free(sc);
}

static void test_scram_bad_server_final(void **state)
{
	static const struct {
		const char *msg;
		const char *why;
	} cases[] = {
		/* the RFC signature (n=user) is the wrong one for n= */
		{ RFC_SERVER_FINAL, "does not match" },
		{ "v=4HO6Qt1M4MKJrmlKaoOqLAI0/0TV0HZe7J9H3MBtSOg=", "does not match" },
		{ "v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "does not match" },
		{ "e=other-error", "SCRAM error" },
		{ "e=invalid-proof", "SCRAM error" },
		{ "v=3HO6Qt1M4MKJrmlKaoOqLAI0/0TV0HZe7J9H3MBtSOg", "signature" },
		{ "v=3HO6Qt1M4MKJrmlKaoOqLAI0/0TV0HZe7J9H3MBt", "signature" },
		{ "v=3HO6Qt1M4MKJrmlKaoOqLAI0/0TV0HZe7J9H3MBtSOgAAAA", "signature" },
		{ "v=3HO6Qt1M4MKJrmlKaoOqLAI0/0TV0HZe7J9H3MBtSO!=", "signature" },
		{ "v=", "signature" },
		{ EMPTY_USER_SERVER_FINAL ",x=1", "malformed" },
		{ "x=" EMPTY_USER_SERVER_FINAL, "malformed" },
		{ "garbage", "malformed" },
		{ "", "malformed" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *final, *why = NULL;
		ScramClient *sc = scram_at_final("pencil", RFC_NONCE, RFC_SERVER_FIRST, &final);

		assert_false(pgauth_scram_verify_server(sc, u8(cases[i].msg), strlen(cases[i].msg), &why));
		assert_non_null(why);
		if (strstr(why, cases[i].why) == NULL)
			fail_msg("case %zu (%s): reason \"%s\" lacks \"%s\"", i, cases[i].msg, why, cases[i].why);
		/* No second chance with the right signature. */
		assert_false(pgauth_scram_verify_server(sc, u8(EMPTY_USER_SERVER_FINAL),
							strlen(EMPTY_USER_SERVER_FINAL), &why));
		pgauth_scram_free(sc);
	}
}

static void test_scram_out_of_order(void **state)
{
	ScramClient *sc = pgauth_scram_new_with_nonce("pencil", RFC_NONCE);
	const char *why = NULL, *final;

	assert_non_null(sc);
	/* server-final before server-first */
	assert_false(pgauth_scram_verify_server(sc, u8(EMPTY_USER_SERVER_FINAL), strlen(EMPTY_USER_SERVER_FINAL),
						&why));
	assert_non_null(why);
	pgauth_scram_free(sc);

	sc = scram_at_final("pencil", RFC_NONCE, RFC_SERVER_FIRST, &final);
	/* a second server-first */
	why = NULL;
	assert_null(pgauth_scram_client_final(sc, u8(RFC_SERVER_FIRST), strlen(RFC_SERVER_FIRST), &why));
	assert_non_null(why);
	pgauth_scram_free(sc);

	sc = scram_at_final("pencil", RFC_NONCE, RFC_SERVER_FIRST, &final);
	assert_true(pgauth_scram_verify_server(sc, u8(EMPTY_USER_SERVER_FINAL), strlen(EMPTY_USER_SERVER_FINAL),
					       &why));
	/* a second server-final */
	why = NULL;
	assert_false(pgauth_scram_verify_server(sc, u8(EMPTY_USER_SERVER_FINAL), strlen(EMPTY_USER_SERVER_FINAL),
						&why));
	assert_non_null(why);
	pgauth_scram_free(sc);
}

/* Expected values computed with Python's hashlib. */
static void test_md5_response(void **state)
{
	static const struct {
		const char *user, *password;
		uint8_t salt[4];
		const char *expected;
	} cases[] = {
		{ "postgres", "secret", { 1, 2, 3, 4 }, "md5bb41a296aab6baccb36ff243a562abff" },
		{ "postgres", "secret", { 4, 3, 2, 1 }, "md5ca1a29fd51ea20670e7842e30c9c22d3" },
		{ "app_agent", "p@ss", { 0xde, 0xad, 0xbe, 0xef }, "md59f454494620928e5d9b2bb75c274d6cd" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char out[36];

		memset(out, 'X', sizeof(out));
		pgauth_md5_response(cases[i].user, cases[i].password, cases[i].salt, out);
		assert_string_equal(out, cases[i].expected);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_scram_rfc7677_vector),
		cmocka_unit_test(test_scram_empty_user),
		cmocka_unit_test(test_scram_more_vectors),
		cmocka_unit_test(test_scram_random_nonce),
		cmocka_unit_test(test_scram_new_rejects_bad_arguments),
		cmocka_unit_test(test_scram_bad_server_first),
		cmocka_unit_test(test_scram_server_first_embedded_nul),
		cmocka_unit_test(test_scram_bad_server_final),
		cmocka_unit_test(test_scram_out_of_order),
		cmocka_unit_test(test_md5_response),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
