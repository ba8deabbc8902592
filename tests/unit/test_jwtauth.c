/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of JWT verification: tokens minted by jwtauth_mint and tokens
 * built by hand (header and payload JSON, base64url, signatures made with
 * OpenSSL directly) against a verifier whose JWKS holds an RSA 2048, an EC
 * P-256, an EC P-384 and an oct key generated at setup in a temporary
 * directory. Every rejection path has its own test and checks the result
 * code, that the reason is the expected one and that it never repeats the
 * token. Also covers claim extraction (dotted paths, group spellings,
 * match_user), JWKS loading and the failure throttle.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <cmocka.h>

#include <json-c/json.h>
#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "pgveil/config.h"
#include "pgveil/jwtauth.h"

#define ISS "https://idp.example.com/"
#define AUD "pgveil"
#define SKEW 60
#define CLAIMS "\"iss\":\"" ISS "\",\"aud\":\"" AUD "\"" /* the right iss and aud */
#define MAIN_ALGS "RS256, ES256, ES384, HS256"
#define RS_HEADER "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"rsa1\"}"

typedef enum { SIG_NONE, SIG_RS256, SIG_RS384, SIG_ES256, SIG_ES384, SIG_HS256 } SigKind;

/* How a hand-made token is signed. */
typedef struct Signer {
	SigKind kind;          /* algorithm actually used */
	EVP_PKEY *pkey;        /* RS and ES */
	const uint8_t *secret; /* HS */
	size_t secret_len;     /* bytes in secret */
} Signer;

/* Keys and files shared by every test. */
static struct {
	char dir[64];            /* temporary directory */
	char rsa_pem[128];       /* private keys, PEM */
	char rsa2_pem[128];
	char ec_pem[128];
	char ec384_pem[128];
	char rsa_small_pem[128];
	char jwks_path[128];     /* rsa1, ec1, ec384, hmac; no "alg" members */
	char jwks2_path[128];    /* rsa1, rsa2 */
	EVP_PKEY *rsa, *rsa2, *ec, *ec384, *rsa_small;
	uint8_t hmac[32];        /* the oct key */
	char *rsa_pub_pem;       /* public PEM of rsa, as a verifier holds it */
	JwtVerifier *v;          /* MAIN_ALGS, sub, groups, no match_user */
} fx;

/* ---- helpers ---------------------------------------------------------------- */

static char *b64url(const void *data, size_t len)
{
	char *out = malloc((len + 2) / 3 * 4 + 1);
	int n;

	assert_non_null(out);
	n = EVP_EncodeBlock((unsigned char *)out, data, (int)len);
	while (n > 0 && out[n - 1] == '=')
		n--;
	out[n] = '\0';
	for (int i = 0; i < n; i++)
		out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
	return out;
}

static uint8_t *b64url_dec(const char *in, size_t *outlen)
{
	size_t len = strlen(in), padded = (len + 3) / 4 * 4;
	char *tmp = calloc(1, padded + 1);
	uint8_t *out = malloc(padded);
	int n;

	assert_non_null(tmp);
	assert_non_null(out);
	for (size_t i = 0; i < padded; i++)
		tmp[i] = i >= len ? '=' : in[i] == '-' ? '+' : in[i] == '_' ? '/' : in[i];
	n = EVP_DecodeBlock(out, (unsigned char *)tmp, (int)padded);
	assert_true(n >= 0);
	*outlen = (size_t)n - (padded - len);
	free(tmp);
	return out;
}

static char *xasprintf(const char *fmt, ...) PGV_PRINTF(1, 2);
static char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	assert_true(n >= 0);
	return s;
}

static void write_file(const char *path, const char *content)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	assert_int_equal(fputs(content, f) >= 0, 1);
	assert_int_equal(fclose(f), 0);
}

static void write_key(EVP_PKEY *pkey, char *path, size_t pathlen, const char *name)
{
	FILE *f;

	snprintf(path, pathlen, "%s/%s", fx.dir, name);
	f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL), 1);
	assert_int_equal(fclose(f), 0);
}

/* The first JWK of jwtauth_jwks_for_key(pem, kid), without "alg" when strip_alg. */
static json_object *jwk_of(const char *pem, const char *kid, bool strip_alg)
{
	char err[256] = "", *doc = jwtauth_jwks_for_key(pem, kid, err, sizeof(err));
	json_object *root, *keys, *jwk;

	if (doc == NULL)
		fail_msg("jwtauth_jwks_for_key(%s): %s", pem, err);
	root = json_tokener_parse(doc);
	free(doc);
	assert_non_null(root);
	assert_true(json_object_object_get_ex(root, "keys", &keys));
	assert_int_equal(json_object_array_length(keys), 1);
	jwk = json_object_get(json_object_array_get_idx(keys, 0));
	json_object_put(root);
	if (strip_alg)
		json_object_object_del(jwk, "alg");
	return jwk;
}

static json_object *oct_jwk(const char *kid, const uint8_t *k, size_t len)
{
	json_object *jwk = json_object_new_object();
	char *s = b64url(k, len);

	json_object_object_add(jwk, "kty", json_object_new_string("oct"));
	json_object_object_add(jwk, "kid", json_object_new_string(kid));
	json_object_object_add(jwk, "k", json_object_new_string(s));
	free(s);
	return jwk;
}

/* A JWKS document with the given keys (takes their references); malloc'd text. */
static char *jwks_doc(json_object **jwks, int n)
{
	json_object *root = json_object_new_object(), *keys = json_object_new_array();
	char *out;

	for (int i = 0; i < n; i++)
		json_object_array_add(keys, jwks[i]);
	json_object_object_add(root, "keys", keys);
	out = strdup(json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN |
							      JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(root);
	assert_non_null(out);
	return out;
}

static void namelist_set(NameList *l, const char *csv)
{
	char *copy = strdup(csv), *save = NULL;

	l->n = 0;
	l->items = calloc(16, sizeof(char *));
	assert_non_null(l->items);
	for (char *t = strtok_r(copy, ", ", &save); t != NULL && l->n < 16; t = strtok_r(NULL, ", ", &save))
		l->items[l->n++] = strdup(t);
	free(copy);
}

static void namelist_clear(NameList *l)
{
	for (int i = 0; i < l->n; i++)
		free(l->items[i]);
	free(l->items);
	l->items = NULL;
	l->n = 0;
}

/* A verifier like [oidc] would build; fails the test if jwtauth_new refuses. */
static JwtVerifier *verifier_new(const char *algs, const char *subject_claim, const char *groups_claim,
				 bool match_user, const char *jwks_file)
{
	Config *cfg = calloc(1, sizeof(Config));
	char err[256] = "";
	JwtVerifier *v;

	assert_non_null(cfg);
	cfg->oidc_issuer = strdup(ISS);
	cfg->oidc_audience = strdup(AUD);
	cfg->oidc_jwks_file = strdup(jwks_file);
	namelist_set(&cfg->oidc_algorithms, algs);
	cfg->oidc_subject_claim = strdup(subject_claim);
	cfg->oidc_groups_claim = strdup(groups_claim);
	cfg->oidc_clock_skew = SKEW;
	cfg->oidc_match_user = match_user;
	v = jwtauth_new(cfg, err, sizeof(err));
	if (v == NULL)
		fail_msg("jwtauth_new: %s", err);
	free(cfg->oidc_issuer);
	free(cfg->oidc_audience);
	free(cfg->oidc_jwks_file);
	namelist_clear(&cfg->oidc_algorithms);
	free(cfg->oidc_subject_claim);
	free(cfg->oidc_groups_claim);
	free(cfg);
	return v;
}

static uint8_t *sign_pkey(EVP_PKEY *pkey, const EVP_MD *md, const char *input, size_t *len)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	uint8_t *sig;

	assert_non_null(ctx);
	assert_int_equal(EVP_DigestSignInit(ctx, NULL, md, NULL, pkey), 1);
	assert_int_equal(EVP_DigestSign(ctx, NULL, len, (const uint8_t *)input, strlen(input)), 1);
	sig = malloc(*len);
	assert_non_null(sig);
	assert_int_equal(EVP_DigestSign(ctx, sig, len, (const uint8_t *)input, strlen(input)), 1);
	EVP_MD_CTX_free(ctx);
	return sig;
}

/* ECDSA signs DER; JWS wants r and s as two fixed-size big-endian numbers. */
static uint8_t *sign_ec(EVP_PKEY *pkey, const EVP_MD *md, size_t half, const char *input, size_t *len)
{
	size_t derlen;
	uint8_t *der = sign_pkey(pkey, md, input, &derlen), *raw = malloc(2 * half);
	const uint8_t *p = der;
	ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)derlen);

	assert_non_null(es);
	assert_non_null(raw);
	assert_int_equal(BN_bn2binpad(ECDSA_SIG_get0_r(es), raw, (int)half), (int)half);
	assert_int_equal(BN_bn2binpad(ECDSA_SIG_get0_s(es), raw + half, (int)half), (int)half);
	ECDSA_SIG_free(es);
	free(der);
	*len = 2 * half;
	return raw;
}

/* The base64url signature of `input` (empty for SIG_NONE). */
static char *sign_input(const Signer *s, const char *input)
{
	uint8_t *sig = NULL, mac[EVP_MAX_MD_SIZE];
	unsigned int maclen = 0;
	size_t len = 0;
	char *out;

	switch (s->kind) {
	case SIG_NONE: return strdup("");
	case SIG_RS256: sig = sign_pkey(s->pkey, EVP_sha256(), input, &len); break;
	case SIG_RS384: sig = sign_pkey(s->pkey, EVP_sha384(), input, &len); break;
	case SIG_ES256: sig = sign_ec(s->pkey, EVP_sha256(), 32, input, &len); break;
	case SIG_ES384: sig = sign_ec(s->pkey, EVP_sha384(), 48, input, &len); break;
	case SIG_HS256:
		assert_non_null(HMAC(EVP_sha256(), s->secret, (int)s->secret_len, (const uint8_t *)input,
				     strlen(input), mac, &maclen));
		return b64url(mac, maclen);
	}
	out = b64url(sig, len);
	free(sig);
	return out;
}

/* header_b64 "." payload_b64, signed as given. Both parts are taken verbatim. */
static char *craft_raw(const char *h64, const char *p64, const Signer *s)
{
	char *input = xasprintf("%s.%s", h64, p64), *sig = sign_input(s, input), *tok;

	tok = xasprintf("%s.%s", input, sig);
	free(input);
	free(sig);
	return tok;
}

/* A token from header and payload JSON text. */
static char *craft(const char *header, const char *payload, const Signer *s)
{
	char *h64 = b64url(header, strlen(header)), *p64 = b64url(payload, strlen(payload));
	char *tok = craft_raw(h64, p64, s);

	free(h64);
	free(p64);
	return tok;
}

static const Signer *rs256(void)
{
	static Signer s;

	s = (Signer){ .kind = SIG_RS256, .pkey = fx.rsa };
	return &s;
}

static const Signer *es256(void)
{
	static Signer s;

	s = (Signer){ .kind = SIG_ES256, .pkey = fx.ec };
	return &s;
}

/* The usual claims, with exp = now + ttl and iat = now. */
static char *std_payload(time_t now, long ttl)
{
	return xasprintf("{" CLAIMS ",\"sub\":\"agent-7\",\"iat\":%lld,\"exp\":%lld,"
			 "\"groups\":[\"analysts\",\"ops\"]}",
			 (long long)now, (long long)now + ttl);
}

/* An RS256 token for kid rsa1 with `payload`. */
static char *rs_token(const char *payload)
{
	return craft(RS_HEADER, payload, rs256());
}

static char *mint(const char *pem, const char *kid, const char *groups, long ttl)
{
	MintParams p = {
		.key_pem_file = pem, .kid = kid, .sub = "agent-7", .iss = ISS, .aud = AUD,
		.groups = groups, .ttl = ttl,
	};
	char err[256] = "", *tok = jwtauth_mint(&p, err, sizeof(err));

	if (tok == NULL)
		fail_msg("jwtauth_mint: %s", err);
	return tok;
}

/* Fails when `why` repeats the token or any of its parts. */
static void assert_why_clean(const char *why, const char *token)
{
	const char *p = token;

	assert_true(why[0] != '\0');
	if (strlen(token) >= 8 && strstr(why, token) != NULL)
		fail_msg("reason repeats the token: %s", why);
	while (*p) {
		size_t n = strcspn(p, ".");
		char *part = strndup(p, n);

		if (n >= 8 && strstr(why, part) != NULL)
			fail_msg("reason repeats a token part: %s", why);
		free(part);
		p += n;
		if (*p == '.')
			p++;
	}
}

/*
 * Verifies with v and expects rejection `want`; when `why_has` is set the
 * reason must contain it, so each test proves it hit its own check.
 */
static void expect_reject(JwtVerifier *v, const char *token, time_t now, const char *user, JwtResult want,
			  const char *why_has)
{
	Identity id;
	char why[512] = "";
	JwtResult rc = jwtauth_verify(v, token, now, user, &id, why, sizeof(why));

	if (rc != want)
		fail_msg("result %d, want %d (reason: %s)", rc, want, why);
	assert_why_clean(why, token);
	if (why_has != NULL && strstr(why, why_has) == NULL)
		fail_msg("reason \"%s\" lacks \"%s\"", why, why_has);
	assert_null(id.subject);
	assert_null(id.groups);
	assert_int_equal(id.n_groups, 0);
}

/* Verifies with v and expects acceptance; the caller clears *id. */
static void expect_ok(JwtVerifier *v, const char *token, time_t now, const char *user, Identity *id)
{
	char why[512] = "";
	JwtResult rc = jwtauth_verify(v, token, now, user, id, why, sizeof(why));

	if (rc != JWT_OK)
		fail_msg("result %d, want JWT_OK (reason: %s)", rc, why);
	assert_non_null(id->subject);
}

static void reject_payload(const char *payload, time_t now, const char *why_has)
{
	char *tok = rs_token(payload);

	expect_reject(fx.v, tok, now, "agent-7", JWT_INVALID, why_has);
	free(tok);
}

/* ---- fixture ---------------------------------------------------------------- */

static int group_setup(void **state)
{
	json_object *keys[4];
	char *doc;
	BIO *bio;
	char *data;
	long n;

	snprintf(fx.dir, sizeof(fx.dir), "/tmp/pgveil-test-jwtauth-XXXXXX");
	if (mkdtemp(fx.dir) == NULL)
		return -1;
	fx.rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	fx.rsa2 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	fx.rsa_small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
	fx.ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	fx.ec384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
	if (fx.rsa == NULL || fx.rsa2 == NULL || fx.rsa_small == NULL || fx.ec == NULL || fx.ec384 == NULL ||
	    RAND_bytes(fx.hmac, sizeof(fx.hmac)) != 1)
		return -1;
	write_key(fx.rsa, fx.rsa_pem, sizeof(fx.rsa_pem), "rsa.pem");
	write_key(fx.rsa2, fx.rsa2_pem, sizeof(fx.rsa2_pem), "rsa2.pem");
	write_key(fx.rsa_small, fx.rsa_small_pem, sizeof(fx.rsa_small_pem), "rsa1024.pem");
	write_key(fx.ec, fx.ec_pem, sizeof(fx.ec_pem), "ec.pem");
	write_key(fx.ec384, fx.ec384_pem, sizeof(fx.ec384_pem), "ec384.pem");

	bio = BIO_new(BIO_s_mem());
	if (bio == NULL || PEM_write_bio_PUBKEY(bio, fx.rsa) != 1 || (n = BIO_get_mem_data(bio, &data)) <= 0)
		return -1;
	fx.rsa_pub_pem = strndup(data, (size_t)n);
	BIO_free(bio);

	keys[0] = jwk_of(fx.rsa_pem, "rsa1", true);
	keys[1] = jwk_of(fx.ec_pem, "ec1", true);
	keys[2] = jwk_of(fx.ec384_pem, "ec384", true);
	keys[3] = oct_jwk("hmac", fx.hmac, sizeof(fx.hmac));
	doc = jwks_doc(keys, 4);
	snprintf(fx.jwks_path, sizeof(fx.jwks_path), "%s/jwks.json", fx.dir);
	write_file(fx.jwks_path, doc);
	free(doc);

	keys[0] = jwk_of(fx.rsa_pem, "rsa1", false);
	keys[1] = jwk_of(fx.rsa2_pem, "rsa2", false);
	doc = jwks_doc(keys, 2);
	snprintf(fx.jwks2_path, sizeof(fx.jwks2_path), "%s/jwks2.json", fx.dir);
	write_file(fx.jwks2_path, doc);
	free(doc);

	fx.v = verifier_new(MAIN_ALGS, "sub", "groups", false, fx.jwks_path);
	return 0;
}

static int group_teardown(void **state)
{
	char cmd[128];

	jwtauth_free(fx.v);
	EVP_PKEY_free(fx.rsa);
	EVP_PKEY_free(fx.rsa2);
	EVP_PKEY_free(fx.rsa_small);
	EVP_PKEY_free(fx.ec);
	EVP_PKEY_free(fx.ec384);
	free(fx.rsa_pub_pem);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fx.dir);
	return system(cmd) == 0 ? 0 : -1;
}

/* ---- accepted tokens -------------------------------------------------------- */

static void test_minted_rs256(void **state)
{
	time_t before = time(NULL);
	char *tok = mint(fx.rsa_pem, "rsa1", "analysts, ops", 300);
	time_t after = time(NULL);
	Identity id;

	expect_ok(fx.v, tok, after, "agent-7", &id);
	assert_string_equal(id.subject, "agent-7");
	assert_int_equal(id.n_groups, 2);
	assert_string_equal(id.groups[0], "analysts");
	assert_string_equal(id.groups[1], "ops");
	assert_true(id.expires_at >= before + 300 && id.expires_at <= after + 300);
	jwtauth_identity_clear(&id);
	assert_null(id.subject);
	free(tok);
}

static void test_minted_es256(void **state)
{
	time_t before = time(NULL);
	char *tok = mint(fx.ec_pem, "ec1", "ops", 120);
	time_t after = time(NULL);
	Identity id;

	expect_ok(fx.v, tok, after, NULL, &id);
	assert_string_equal(id.subject, "agent-7");
	assert_int_equal(id.n_groups, 1);
	assert_string_equal(id.groups[0], "ops");
	assert_true(id.expires_at >= before + 120 && id.expires_at <= after + 120);
	jwtauth_identity_clear(&id);
	free(tok);
}

static void test_minted_es384(void **state)
{
	char *tok = mint(fx.ec384_pem, "ec384", NULL, 60);
	Identity id;

	expect_ok(fx.v, tok, time(NULL), NULL, &id);
	assert_int_equal(id.n_groups, 0);
	jwtauth_identity_clear(&id);
	free(tok);
}

static void test_handmade_rs256_and_es256(void **state)
{
	time_t now = time(NULL);
	char *payload = std_payload(now, 300);
	char *t1 = rs_token(payload);
	char *t2 = craft("{\"alg\":\"ES256\",\"kid\":\"ec1\"}", payload, es256());
	Identity id;

	expect_ok(fx.v, t1, now, NULL, &id);
	assert_int_equal(id.expires_at, (int64_t)now + 300);
	jwtauth_identity_clear(&id);
	expect_ok(fx.v, t2, now, NULL, &id);
	assert_int_equal(id.n_groups, 2);
	jwtauth_identity_clear(&id);
	free(t1);
	free(t2);
	free(payload);
}

static void test_hs256_oct_key(void **state)
{
	time_t now = time(NULL);
	char *payload = std_payload(now, 300);
	Signer s = { .kind = SIG_HS256, .secret = fx.hmac, .secret_len = sizeof(fx.hmac) };
	char *tok = craft("{\"alg\":\"HS256\",\"kid\":\"hmac\"}", payload, &s);
	Identity id;

	expect_ok(fx.v, tok, now, NULL, &id);
	assert_string_equal(id.subject, "agent-7");
	jwtauth_identity_clear(&id);
	free(tok);
	free(payload);
}

/* ---- time claims ------------------------------------------------------------ */

static void test_expired(void **state)
{
	time_t now = time(NULL);
	char *payload = std_payload(now - 600, 600 - SKEW - 1);

	reject_payload(payload, now, "expired");
	free(payload);
}

static void test_expired_minted(void **state)
{
	char *tok = mint(fx.rsa_pem, "rsa1", NULL, -3600);

	expect_reject(fx.v, tok, time(NULL), NULL, JWT_INVALID, "expired");
	free(tok);
}

static void test_exp_at_now(void **state)
{
	time_t now = time(NULL);
	char *payload = xasprintf("{" CLAIMS ",\"sub\":\"a\",\"exp\":%lld}",
				  (long long)now - SKEW);

	reject_payload(payload, now, "expired");
	free(payload);
}

static void test_exp_within_skew(void **state)
{
	time_t now = time(NULL);
	char *payload = std_payload(now - 600, 600 - SKEW + 1);
	char *tok = rs_token(payload);
	Identity id;

	expect_ok(fx.v, tok, now, NULL, &id);
	assert_int_equal(id.expires_at, (int64_t)now - SKEW + 1);
	jwtauth_identity_clear(&id);
	free(tok);
	free(payload);
}

static void test_nbf_future(void **state)
{
	time_t now = time(NULL);
	char *payload = xasprintf("{" CLAIMS ",\"sub\":\"a\",\"exp\":%lld,\"nbf\":%lld}",
				  (long long)now + 3600, (long long)now + SKEW + 1);

	reject_payload(payload, now, "not valid before");
	free(payload);
}

/* A time claim pgveil cannot read is not skipped: the token is refused. */
static void test_time_claims_not_numbers(void **state)
{
	time_t now = time(NULL);
	char *p1 = xasprintf("{" CLAIMS ",\"sub\":\"a\",\"exp\":%lld,\"nbf\":\"%lld\"}", (long long)now + 3600,
			     (long long)now + 86400);
	char *p2 = xasprintf("{" CLAIMS ",\"sub\":\"a\",\"exp\":%lld,\"iat\":null}", (long long)now + 3600);

	reject_payload(p1, now, "nbf or iat claim that is not a number");
	reject_payload(p2, now, "nbf or iat claim that is not a number");
	free(p1);
	free(p2);
}

/* A kid that is present but not a string does not fall back to "the only key that fits". */
static void test_kid_not_a_string(void **state)
{
	time_t now = time(NULL);
	char *payload = std_payload(now, 300);
	char *tok = craft("{\"alg\":\"RS256\",\"kid\":7}", payload, rs256());

	expect_reject(fx.v, tok, now, NULL, JWT_INVALID, "kid is not a string");
	free(tok);
	free(payload);
}

static void test_nbf_within_skew(void **state)
{
	time_t now = time(NULL);
	char *payload = xasprintf("{" CLAIMS ",\"sub\":\"a\",\"exp\":%lld,\"nbf\":%lld}",
				  (long long)now + 3600, (long long)now + SKEW);
	char *tok = rs_token(payload);
	Identity id;

	expect_ok(fx.v, tok, now, NULL, &id);
	jwtauth_identity_clear(&id);
	free(tok);
	free(payload);
}

static void test_iat_future(void **state)
{
	time_t now = time(NULL);
	char *payload = xasprintf("{" CLAIMS ",\"sub\":\"a\",\"exp\":%lld,\"iat\":%lld}",
				  (long long)now + 7200, (long long)now + SKEW + 1);

	reject_payload(payload, now, "issued in the future");
	free(payload);
}

static void test_missing_exp(void **state)
{
	reject_payload("{" CLAIMS ",\"sub\":\"a\"}", time(NULL), "exp");
}

static void test_exp_string(void **state)
{
	time_t now = time(NULL);
	char *payload = xasprintf("{" CLAIMS ",\"sub\":\"a\",\"exp\":\"%lld\"}",
				  (long long)now + 300);

	reject_payload(payload, now, "exp");
	free(payload);
}

/* exp far beyond any real clock is refused rather than overflowing exp + clock_skew. */
static void test_exp_out_of_range(void **state)
{
	static const char *const bad[] = { "9223372036854775807", "9223372036854775747", "253402300800",
					   "1e300", "-9223372036854775808", "-1e300", "-1" };
	time_t now = time(NULL);
	char *tok;
	Identity id;

	for (size_t i = 0; i < PGV_ARRAY_LEN(bad); i++) {
		char *payload = xasprintf("{" CLAIMS ",\"sub\":\"a\",\"exp\":%s}",
					  bad[i]);

		reject_payload(payload, now, "exp");
		free(payload);
	}
	/* the last second of year 9999 is still a date */
	tok = rs_token("{" CLAIMS ",\"sub\":\"a\",\"exp\":253402300799}");
	expect_ok(fx.v, tok, now, NULL, &id);
	assert_int_equal(id.expires_at, INT64_C(253402300799));
	jwtauth_identity_clear(&id);
	free(tok);
}

/* ---- issuer and audience ---------------------------------------------------- */

static void test_wrong_issuer(void **state)
{
	time_t now = time(NULL);
	char *payload = xasprintf("{\"iss\":\"https://evil.example.com/\",\"aud\":\"" AUD "\",\"sub\":\"a\","
				  "\"exp\":%lld}",
				  (long long)now + 300);

	reject_payload(payload, now, "issuer");
	free(payload);
}

static void test_missing_issuer(void **state)
{
	time_t now = time(NULL);
	char *payload = xasprintf("{\"aud\":\"" AUD "\",\"sub\":\"a\",\"exp\":%lld}", (long long)now + 300);

	reject_payload(payload, now, "missing");
	free(payload);
}

static void test_issuer_not_string(void **state)
{
	time_t now = time(NULL);
	char *payload = xasprintf("{\"iss\":[\"" ISS "\"],\"aud\":\"" AUD "\",\"sub\":\"a\",\"exp\":%lld}",
				  (long long)now + 300);

	reject_payload(payload, now, "issuer");
	free(payload);
}

static void test_wrong_audience(void **state)
{
	time_t now = time(NULL);
	char *payload = xasprintf("{\"iss\":\"" ISS "\",\"aud\":\"other\",\"sub\":\"a\",\"exp\":%lld}",
				  (long long)now + 300);

	reject_payload(payload, now, "audience");
	free(payload);
}

static void test_missing_audience(void **state)
{
	time_t now = time(NULL);
	char *payload = xasprintf("{\"iss\":\"" ISS "\",\"sub\":\"a\",\"exp\":%lld}", (long long)now + 300);

	reject_payload(payload, now, "audience");
	free(payload);
}

static void test_audience_array_with(void **state)
{
	time_t now = time(NULL);
	char *payload = xasprintf("{\"iss\":\"" ISS "\",\"aud\":[\"account\",42,\"" AUD "\"],\"sub\":\"a\","
				  "\"exp\":%lld}",
				  (long long)now + 300);
	char *tok = rs_token(payload);
	Identity id;

	expect_ok(fx.v, tok, now, NULL, &id);
	jwtauth_identity_clear(&id);
	free(tok);
	free(payload);
}

static void test_audience_array_without(void **state)
{
	time_t now = time(NULL);
	char *payload = xasprintf("{\"iss\":\"" ISS "\",\"aud\":[\"account\",\"pgveil2\",\"pgvei\"],"
				  "\"sub\":\"a\",\"exp\":%lld}",
				  (long long)now + 300);

	reject_payload(payload, now, "audience");
	free(payload);
}

/* ---- signatures and keys ---------------------------------------------------- */

static void test_bad_signature(void **state)
{
	char *tok = mint(fx.rsa_pem, "rsa1", "ops", 300);
	char *dot = strrchr(tok, '.'), *sig64, *bad;
	size_t len;
	uint8_t *sig = b64url_dec(dot + 1, &len);

	assert_int_equal(len, 256);
	sig[100] ^= 0x01;
	sig64 = b64url(sig, len);
	*dot = '\0';
	bad = xasprintf("%s.%s", tok, sig64);
	expect_reject(fx.v, bad, time(NULL), NULL, JWT_INVALID, "signature");
	free(bad);
	free(sig64);
	free(sig);
	free(tok);
}

static void test_bad_signature_es256(void **state)
{
	char *tok = mint(fx.ec_pem, "ec1", "ops", 300);
	char *dot = strrchr(tok, '.'), *sig64, *bad;
	size_t len;
	uint8_t *sig = b64url_dec(dot + 1, &len);

	assert_int_equal(len, 64);
	sig[40] ^= 0x80;
	sig64 = b64url(sig, len);
	*dot = '\0';
	bad = xasprintf("%s.%s", tok, sig64);
	expect_reject(fx.v, bad, time(NULL), NULL, JWT_INVALID, "signature");
	free(bad);
	free(sig64);
	free(sig);
	free(tok);
}

static void test_tampered_payload(void **state)
{
	time_t now = time(NULL);
	char *good = std_payload(now, 300), *tok = rs_token(good);
	char *evil = xasprintf("{" CLAIMS ",\"sub\":\"admin\",\"iat\":%lld,"
			       "\"exp\":%lld,\"groups\":[\"analysts\",\"ops\"]}",
			       (long long)now, (long long)now + 300);
	char *p1 = strchr(tok, '.') + 1, *p2 = strchr(p1, '.'), *evil64 = b64url(evil, strlen(evil)), *bad;

	*(p1 - 1) = '\0';
	bad = xasprintf("%s.%s%s", tok, evil64, p2);
	expect_reject(fx.v, bad, now, NULL, JWT_INVALID, "signature");
	free(bad);
	free(evil64);
	free(evil);
	free(tok);
	free(good);
}

static void test_unknown_kid(void **state)
{
	time_t now = time(NULL);
	char *payload = std_payload(now, 300);
	char *tok = craft("{\"alg\":\"RS256\",\"kid\":\"rotated-away\"}", payload, rs256());

	expect_reject(fx.v, tok, now, NULL, JWT_UNKNOWN_KID, "unknown key id");
	free(tok);
	free(payload);
}

static void test_alg_not_allowed(void **state)
{
	time_t now = time(NULL);
	JwtVerifier *v = verifier_new("RS256, ES256", "sub", "groups", false, fx.jwks_path);
	char *payload = std_payload(now, 300);
	Signer s = { .kind = SIG_RS384, .pkey = fx.rsa };
	char *tok = craft("{\"alg\":\"RS384\",\"kid\":\"rsa1\"}", payload, &s);

	expect_reject(v, tok, now, NULL, JWT_INVALID, "not allowed");
	expect_reject(fx.v, tok, now, NULL, JWT_INVALID, "not allowed");
	free(tok);
	/* ES384 is allowed by the main verifier, not by this one. */
	s = (Signer){ .kind = SIG_ES384, .pkey = fx.ec384 };
	tok = craft("{\"alg\":\"ES384\",\"kid\":\"ec384\"}", payload, &s);
	expect_reject(v, tok, now, NULL, JWT_INVALID, "not allowed");
	free(tok);
	free(payload);
	jwtauth_free(v);
}

static void test_alg_missing_or_unknown(void **state)
{
	time_t now = time(NULL);
	char *payload = std_payload(now, 300);
	char *t1 = craft("{\"kid\":\"rsa1\"}", payload, rs256());
	char *t2 = craft("{\"alg\":\"PS256\",\"kid\":\"rsa1\"}", payload, rs256());
	char *t3 = craft("{\"alg\":256,\"kid\":\"rsa1\"}", payload, rs256());

	expect_reject(fx.v, t1, now, NULL, JWT_INVALID, "not allowed");
	expect_reject(fx.v, t2, now, NULL, JWT_INVALID, "not allowed");
	expect_reject(fx.v, t3, now, NULL, JWT_INVALID, "not allowed");
	free(t1);
	free(t2);
	free(t3);
	free(payload);
}

/* HMAC keyed with the RSA public key's PEM, which anyone can fetch. */
static void test_hs256_with_rsa_public_pem(void **state)
{
	time_t now = time(NULL);
	char *payload = std_payload(now, 300);
	Signer s = { .kind = SIG_HS256, .secret = (const uint8_t *)fx.rsa_pub_pem,
		     .secret_len = strlen(fx.rsa_pub_pem) };
	char *tok = craft("{\"alg\":\"HS256\",\"kid\":\"rsa1\"}", payload, &s);

	expect_reject(fx.v, tok, now, NULL, JWT_INVALID, "cannot verify algorithm HS256");
	free(tok);
	/* Without a kid the RSA key must not be a candidate either. */
	tok = craft("{\"alg\":\"HS256\"}", payload, &s);
	expect_reject(fx.v, tok, now, NULL, JWT_INVALID, NULL);
	free(tok);
	free(payload);
}

static void test_es256_with_rsa_kid(void **state)
{
	time_t now = time(NULL);
	char *payload = std_payload(now, 300);
	char *tok = craft("{\"alg\":\"ES256\",\"kid\":\"rsa1\"}", payload, es256());

	expect_reject(fx.v, tok, now, NULL, JWT_INVALID, "cannot verify algorithm ES256");
	free(tok);
	/* and the other way round */
	tok = craft("{\"alg\":\"RS256\",\"kid\":\"ec1\"}", payload, rs256());
	expect_reject(fx.v, tok, now, NULL, JWT_INVALID, "cannot verify algorithm RS256");
	free(tok);
	free(payload);
}

static void test_es384_with_p256_key(void **state)
{
	time_t now = time(NULL);
	char *payload = std_payload(now, 300);
	Signer s = { .kind = SIG_ES384, .pkey = fx.ec384 };
	char *tok = craft("{\"alg\":\"ES384\",\"kid\":\"ec1\"}", payload, &s);

	expect_reject(fx.v, tok, now, NULL, JWT_INVALID, "cannot verify algorithm ES384");
	free(tok);
	tok = craft("{\"alg\":\"ES256\",\"kid\":\"ec384\"}", payload, es256());
	expect_reject(fx.v, tok, now, NULL, JWT_INVALID, "cannot verify algorithm ES256");
	free(tok);
	free(payload);
}

static void test_jwk_alg_restriction(void **state)
{
	time_t now = time(NULL);
	JwtVerifier *v = verifier_new("RS256, RS384", "sub", "groups", false, fx.jwks2_path);
	char *payload = std_payload(now, 300);
	Signer s = { .kind = SIG_RS384, .pkey = fx.rsa };
	char *tok = craft("{\"alg\":\"RS384\",\"kid\":\"rsa1\"}", payload, &s);

	/* jwks2 keeps "alg":"RS256" on its keys */
	expect_reject(v, tok, now, NULL, JWT_INVALID, "cannot verify algorithm RS384");
	free(tok);
	free(payload);
	jwtauth_free(v);
}

static void test_alg_none(void **state)
{
	static const char *const algs[] = { "none", "None", "NONE", "nOnE" };
	time_t now = time(NULL);
	char *payload = std_payload(now, 300);
	Signer none = { .kind = SIG_NONE };

	for (size_t i = 0; i < PGV_ARRAY_LEN(algs); i++) {
		char *hdr = xasprintf("{\"alg\":\"%s\",\"kid\":\"rsa1\"}", algs[i]);
		char *hdr2 = xasprintf("{\"alg\":\"%s\"}", algs[i]);
		char *t1 = craft(hdr, payload, &none), *t2 = craft(hdr, payload, rs256());
		char *t3 = craft(hdr2, payload, &none);

		expect_reject(fx.v, t1, now, NULL, JWT_INVALID, "not allowed");
		expect_reject(fx.v, t2, now, NULL, JWT_INVALID, "not allowed");
		expect_reject(fx.v, t3, now, NULL, JWT_INVALID, "not allowed");
		free(t1);
		free(t2);
		free(t3);
		free(hdr);
		free(hdr2);
	}
	free(payload);
}

/* A header naming alg twice must not let libjwt pick another than pgveil did. */
static void test_duplicate_alg_member(void **state)
{
	time_t now = time(NULL);
	char *payload = std_payload(now, 300);
	Signer s = { .kind = SIG_HS256, .secret = (const uint8_t *)fx.rsa_pub_pem,
		     .secret_len = strlen(fx.rsa_pub_pem) };
	char *t1 = craft("{\"alg\":\"RS256\",\"kid\":\"rsa1\",\"alg\":\"HS256\"}", payload, &s);
	char *t2 = craft("{\"alg\":\"HS256\",\"kid\":\"rsa1\",\"alg\":\"RS256\"}", payload, &s);

	expect_reject(fx.v, t1, now, NULL, JWT_INVALID, NULL);
	expect_reject(fx.v, t2, now, NULL, JWT_INVALID, NULL);
	free(t1);
	free(t2);
	free(payload);
}

static void test_no_kid_one_key_fits(void **state)
{
	time_t now = time(NULL);
	char *payload = std_payload(now, 300);
	char *t1 = craft("{\"alg\":\"RS256\"}", payload, rs256());
	char *t2 = craft("{\"alg\":\"ES256\",\"typ\":\"JWT\"}", payload, es256());
	Identity id;

	expect_ok(fx.v, t1, now, NULL, &id);
	jwtauth_identity_clear(&id);
	expect_ok(fx.v, t2, now, NULL, &id);
	jwtauth_identity_clear(&id);
	free(t1);
	free(t2);
	free(payload);
}

static void test_no_kid_two_keys_fit(void **state)
{
	time_t now = time(NULL);
	JwtVerifier *v = verifier_new("RS256", "sub", "groups", false, fx.jwks2_path);
	char *payload = std_payload(now, 300);
	char *tok = craft("{\"alg\":\"RS256\"}", payload, rs256());
	char *with_kid = rs_token(payload);
	Identity id;

	expect_reject(v, tok, now, NULL, JWT_INVALID, "2 keys fit");
	expect_ok(v, with_kid, now, NULL, &id);
	jwtauth_identity_clear(&id);
	free(with_kid);
	free(tok);
	free(payload);
	jwtauth_free(v);
}

static void test_no_kid_no_key_fits(void **state)
{
	time_t now = time(NULL);
	JwtVerifier *v = verifier_new("RS256, ES256", "sub", "groups", false, fx.jwks2_path);
	char *payload = std_payload(now, 300);
	char *tok = craft("{\"alg\":\"ES256\"}", payload, es256());

	expect_reject(v, tok, now, NULL, JWT_INVALID, "0 keys fit");
	free(tok);
	free(payload);
	jwtauth_free(v);
}

/* ---- malformed tokens ------------------------------------------------------- */

static void test_bad_base64_header(void **state)
{
	time_t now = time(NULL);
	char *payload = std_payload(now, 300), *p64 = b64url(payload, strlen(payload));
	char *h64 = b64url(RS_HEADER, strlen(RS_HEADER));
	char *bad[4];

	bad[0] = xasprintf("%s!", h64);
	bad[1] = xasprintf("+%s", h64 + 1);
	bad[2] = xasprintf("%s=", h64);
	bad[3] = xasprintf("%s%.*s", h64, (int)((5 - strlen(h64) % 4) % 4), "AAA"); /* length % 4 == 1 */
	assert_int_equal(strlen(bad[3]) % 4, 1);
	for (size_t i = 0; i < PGV_ARRAY_LEN(bad); i++) {
		char *tok = craft_raw(bad[i], p64, rs256());

		expect_reject(fx.v, tok, now, NULL, JWT_INVALID, "base64url");
		free(tok);
		free(bad[i]);
	}
	free(h64);
	free(p64);
	free(payload);
}

/* The signature covers the bad text; only the encoding is wrong. */
static void test_bad_base64_payload(void **state)
{
	time_t now = time(NULL);
	char *payload = std_payload(now, 300), *p64 = b64url(payload, strlen(payload));
	char *h64 = b64url(RS_HEADER, strlen(RS_HEADER));
	char *bad[4];

	assert_int_equal(strlen(p64) % 4 != 1, 1);
	bad[0] = xasprintf("%s!", p64);
	bad[1] = xasprintf("%.20s*%s", p64, p64 + 20);
	bad[2] = xasprintf("%s==", p64);
	bad[3] = xasprintf("%.20s/%s", p64, p64 + 21);
	for (size_t i = 0; i < PGV_ARRAY_LEN(bad); i++) {
		char *tok = craft_raw(h64, bad[i], rs256());

		expect_reject(fx.v, tok, now, NULL, JWT_INVALID, NULL);
		free(tok);
		free(bad[i]);
	}
	free(h64);
	free(p64);
	free(payload);
}

static void test_bad_base64_signature(void **state)
{
	char *tok = mint(fx.rsa_pem, "rsa1", "ops", 300);
	char *bad[4];

	bad[0] = xasprintf("%s!", tok);
	bad[1] = xasprintf("%s=", tok);
	bad[2] = strdup(tok);
	bad[2][strlen(bad[2]) - 100] = '*';
	bad[3] = strdup(tok);
	*strrchr(bad[3], '.') = '\0';
	bad[3] = realloc(bad[3], strlen(bad[3]) + 2);
	strcat(bad[3], ".");
	for (size_t i = 0; i < PGV_ARRAY_LEN(bad); i++) {
		expect_reject(fx.v, bad[i], time(NULL), NULL, JWT_INVALID, NULL);
		free(bad[i]);
	}
	/* a '+' in place of the '-' (or '/' for '_') standard base64 would use */
	for (char *p = strrchr(tok, '.'); *p; p++)
		if (*p == '-' || *p == '_') {
			*p = *p == '-' ? '+' : '/';
			expect_reject(fx.v, tok, time(NULL), NULL, JWT_INVALID, NULL);
			break;
		}
	free(tok);
}

static void test_header_not_json(void **state)
{
	time_t now = time(NULL);
	char *payload = std_payload(now, 300);
	char *t1 = craft("alg=RS256", payload, rs256());
	char *t2 = craft("[\"RS256\"]", payload, rs256());
	char *t3 = craft("{\"alg\":\"RS256\",\"kid\":\"rsa1\"", payload, rs256());

	expect_reject(fx.v, t1, now, NULL, JWT_INVALID, "not a JSON object");
	expect_reject(fx.v, t2, now, NULL, JWT_INVALID, "not a JSON object");
	expect_reject(fx.v, t3, now, NULL, JWT_INVALID, "not a JSON object");
	free(t1);
	free(t2);
	free(t3);
	free(payload);
}

static void test_payload_not_json(void **state)
{
	reject_payload("sub=agent-7", time(NULL), NULL);
	reject_payload("{\"sub\":\"agent-7\"", time(NULL), NULL);
	reject_payload("", time(NULL), NULL);
}

static void test_payload_array(void **state)
{
	time_t now = time(NULL);
	char *payload = xasprintf("[{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"sub\":\"a\",\"exp\":%lld}]",
				  (long long)now + 300);

	reject_payload(payload, now, NULL);
	free(payload);
	reject_payload("\"agent-7\"", now, NULL);
}

static void test_wrong_part_count(void **state)
{
	char *tok = mint(fx.rsa_pem, "rsa1", "ops", 300);
	char *four = xasprintf("%s.%s", tok, strrchr(tok, '.') + 1);
	char *two = strdup(tok), *five = xasprintf("%s..", tok);

	*strrchr(two, '.') = '\0';
	expect_reject(fx.v, two, time(NULL), NULL, JWT_INVALID, "three dot-separated parts");
	expect_reject(fx.v, four, time(NULL), NULL, JWT_INVALID, "three dot-separated parts");
	expect_reject(fx.v, five, time(NULL), NULL, JWT_INVALID, "three dot-separated parts");
	expect_reject(fx.v, "secret-password", time(NULL), NULL, JWT_INVALID, "three dot-separated parts");
	expect_reject(fx.v, "..", time(NULL), NULL, JWT_INVALID, NULL);
	expect_reject(fx.v, "", time(NULL), NULL, JWT_INVALID, NULL);
	free(two);
	free(four);
	free(five);
	free(tok);
}

static void test_missing_sub(void **state)
{
	time_t now = time(NULL);
	char *payload = xasprintf("{" CLAIMS ",\"exp\":%lld}", (long long)now + 300);

	reject_payload(payload, now, "claim sub");
	free(payload);
}

static void test_sub_not_string(void **state)
{
	static const char *const subs[] = { "42", "null", "[\"agent-7\"]", "{\"id\":\"agent-7\"}", "\"\"",
					    "\"agent\\n7\"" };
	time_t now = time(NULL);

	for (size_t i = 0; i < PGV_ARRAY_LEN(subs); i++) {
		char *payload = xasprintf("{" CLAIMS ",\"sub\":%s,\"exp\":%lld}", subs[i],
					  (long long)now + 300);

		reject_payload(payload, now, "claim sub");
		free(payload);
	}
}

static void test_oversized_token(void **state)
{
	time_t now = time(NULL);
	size_t pad = JWT_MAX_TOKEN_LEN;
	char *filler = malloc(pad + 1), *payload, *tok, *junk;
	struct timespec t0, t1;

	assert_non_null(filler);
	memset(filler, 'x', pad);
	filler[pad] = '\0';
	payload = xasprintf("{" CLAIMS ",\"sub\":\"a\",\"exp\":%lld,\"pad\":\"%s\"}",
			    (long long)now + 300, filler);
	tok = rs_token(payload);
	assert_true(strlen(tok) > JWT_MAX_TOKEN_LEN);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	expect_reject(fx.v, tok, now, NULL, JWT_INVALID, "longer than");
	clock_gettime(CLOCK_MONOTONIC, &t1);
	assert_true((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000 < 200);
	free(tok);
	/* 1 MiB of dots and letters is refused before any parsing */
	junk = malloc((1 << 20) + 1);
	assert_non_null(junk);
	memset(junk, '.', 1 << 20);
	junk[1 << 20] = '\0';
	expect_reject(fx.v, junk, now, NULL, JWT_INVALID, "longer than");
	free(junk);
	free(payload);
	free(filler);
}

static void test_crit_header(void **state)
{
	time_t now = time(NULL);
	char *payload = std_payload(now, 300);
	char *t1 = craft("{\"alg\":\"RS256\",\"kid\":\"rsa1\",\"crit\":[\"b64\"],\"b64\":false}", payload,
			 rs256());
	char *t2 = craft("{\"alg\":\"RS256\",\"kid\":\"rsa1\",\"crit\":[]}", payload, rs256());

	expect_reject(fx.v, t1, now, NULL, JWT_INVALID, "crit");
	expect_reject(fx.v, t2, now, NULL, JWT_INVALID, "crit");
	free(t1);
	free(t2);
	free(payload);
}

/* ---- claims ----------------------------------------------------------------- */

static Identity verify_groups(JwtVerifier *v, const char *groups_json)
{
	time_t now = time(NULL);
	char *payload = xasprintf("{" CLAIMS ",\"sub\":\"agent-7\",\"exp\":%lld%s%s}",
				  (long long)now + 300, groups_json ? ",\"groups\":" : "",
				  groups_json ? groups_json : "");
	char *tok = rs_token(payload);
	Identity id;

	expect_ok(v, tok, now, NULL, &id);
	free(tok);
	free(payload);
	return id;
}

static void test_groups_array(void **state)
{
	Identity id = verify_groups(fx.v, "[\"analysts\",\"ops\",\"db admins\"]");

	assert_int_equal(id.n_groups, 3);
	assert_string_equal(id.groups[0], "analysts");
	assert_string_equal(id.groups[1], "ops");
	assert_string_equal(id.groups[2], "db admins");
	jwtauth_identity_clear(&id);
	id = verify_groups(fx.v, "[]");
	assert_int_equal(id.n_groups, 0);
	jwtauth_identity_clear(&id);
}

static void test_groups_string(void **state)
{
	Identity id = verify_groups(fx.v, "\"  analysts ops   readers \"");

	assert_int_equal(id.n_groups, 3);
	assert_string_equal(id.groups[0], "analysts");
	assert_string_equal(id.groups[1], "ops");
	assert_string_equal(id.groups[2], "readers");
	jwtauth_identity_clear(&id);
	id = verify_groups(fx.v, "\"\"");
	assert_int_equal(id.n_groups, 0);
	jwtauth_identity_clear(&id);
}

static void test_groups_missing(void **state)
{
	Identity id = verify_groups(fx.v, NULL);

	assert_string_equal(id.subject, "agent-7");
	assert_int_equal(id.n_groups, 0);
	jwtauth_identity_clear(&id);
}

static void test_groups_not_strings(void **state)
{
	static const char *const bad[] = { "[\"ops\",7]", "[\"ops\",null]", "[[\"ops\"]]", "{\"ops\":true}",
					   "42", "true", "[\"ops\",\"bad\\u0001group\"]" };
	time_t now = time(NULL);

	for (size_t i = 0; i < PGV_ARRAY_LEN(bad); i++) {
		char *payload = xasprintf("{" CLAIMS ",\"sub\":\"a\",\"exp\":%lld,"
					  "\"groups\":%s}",
					  (long long)now + 300, bad[i]);

		reject_payload(payload, now, "claim groups");
		free(payload);
	}
}

static void test_groups_too_many(void **state)
{
	time_t now = time(NULL);
	size_t cap = 16 * (JWT_MAX_GROUPS + 2);
	char *list = malloc(cap), *payload;
	size_t off = 0;
	Identity id;

	assert_non_null(list);
	list[off++] = '[';
	for (int i = 0; i < JWT_MAX_GROUPS; i++)
		off += (size_t)snprintf(list + off, cap - off, "%s\"g%d\"", i ? "," : "", i);
	snprintf(list + off, cap - off, "]");
	id = verify_groups(fx.v, list);
	assert_int_equal(id.n_groups, JWT_MAX_GROUPS);
	jwtauth_identity_clear(&id);
	snprintf(list + off, cap - off, ",\"one-too-many\"]");
	payload = xasprintf("{" CLAIMS ",\"sub\":\"a\",\"exp\":%lld,\"groups\":%s}",
			    (long long)now + 300, list);
	reject_payload(payload, now, "claim groups");
	free(payload);
	free(list);
}

/* Auth0 puts groups under a namespaced claim whose name contains dots. */
static void test_namespaced_claim(void **state)
{
	time_t now = time(NULL);
	JwtVerifier *v = verifier_new(MAIN_ALGS, "sub", "https://pgveil.example.com/groups", false, fx.jwks_path);
	char *payload = xasprintf("{" CLAIMS ",\"exp\":%lld,\"sub\":\"auth0|agent-7\","
				  "\"https://pgveil.example.com/groups\":[\"agents\",\"dba\"]}",
				  (long long)now + 300);
	char *tok = rs_token(payload);
	Identity id;

	expect_ok(v, tok, now, NULL, &id);
	assert_string_equal(id.subject, "auth0|agent-7");
	assert_int_equal(id.n_groups, 2);
	assert_string_equal(id.groups[1], "dba");
	jwtauth_identity_clear(&id);
	free(tok);
	free(payload);
	jwtauth_free(v);
}

static void test_keycloak_paths(void **state)
{
	time_t now = time(NULL);
	JwtVerifier *v = verifier_new(MAIN_ALGS, "preferred_username", "realm_access.roles", false,
				      fx.jwks_path);
	char *payload = xasprintf("{\"iss\":\"" ISS "\",\"aud\":[\"" AUD "\",\"account\"],\"exp\":%lld,"
				  "\"sub\":\"5f1c2a9e-0000-4000-8000-000000000007\","
				  "\"preferred_username\":\"agent-7\","
				  "\"realm_access\":{\"roles\":[\"analysts\",\"offline_access\"]},"
				  "\"groups\":[\"not-these\"]}",
				  (long long)now + 300);
	char *tok = rs_token(payload);
	Identity id;

	expect_ok(v, tok, now, NULL, &id);
	assert_string_equal(id.subject, "agent-7");
	assert_int_equal(id.n_groups, 2);
	assert_string_equal(id.groups[0], "analysts");
	assert_string_equal(id.groups[1], "offline_access");
	jwtauth_identity_clear(&id);
	free(tok);
	free(payload);

	/* no realm_access at all: no groups; realm_access not an object: no groups */
	payload = xasprintf("{" CLAIMS ",\"exp\":%lld,\"preferred_username\":\"agent-7\","
			    "\"realm_access\":\"roles\"}",
			    (long long)now + 300);
	tok = rs_token(payload);
	expect_ok(v, tok, now, NULL, &id);
	assert_int_equal(id.n_groups, 0);
	jwtauth_identity_clear(&id);
	free(tok);
	free(payload);

	/* only sub, no preferred_username: refused */
	payload = xasprintf("{" CLAIMS ",\"exp\":%lld,\"sub\":\"agent-7\"}",
			    (long long)now + 300);
	tok = rs_token(payload);
	expect_reject(v, tok, now, NULL, JWT_INVALID, "preferred_username");
	free(tok);
	free(payload);
	jwtauth_free(v);
}

static void test_match_user(void **state)
{
	JwtVerifier *v = verifier_new(MAIN_ALGS, "sub", "groups", true, fx.jwks_path);
	char *tok = mint(fx.rsa_pem, "rsa1", "ops", 300);
	time_t now = time(NULL);
	Identity id;

	expect_ok(v, tok, now, "agent-7", &id);
	assert_string_equal(id.subject, "agent-7");
	jwtauth_identity_clear(&id);
	expect_reject(v, tok, now, "agent-8", JWT_FORBIDDEN, "agent-8");
	expect_reject(v, tok, now, "Agent-7", JWT_FORBIDDEN, NULL);
	expect_reject(v, tok, now, "", JWT_FORBIDDEN, NULL);
	expect_reject(v, tok, now, NULL, JWT_FORBIDDEN, NULL);
	/* without match_user the startup user does not matter */
	expect_ok(fx.v, tok, now, "agent-8", &id);
	jwtauth_identity_clear(&id);
	free(tok);
	jwtauth_free(v);
}

static void test_in_groups(void **state)
{
	Identity id = verify_groups(fx.v, "[\"analysts\",\"ops\"]");
	NameList l = { 0, NULL };

	namelist_set(&l, "admins");
	assert_false(jwtauth_in_groups(&id, &l));
	namelist_clear(&l);
	namelist_set(&l, "admins, ops");
	assert_true(jwtauth_in_groups(&id, &l));
	namelist_clear(&l);
	namelist_set(&l, "OPS, analyst");
	assert_false(jwtauth_in_groups(&id, &l));
	namelist_clear(&l);
	namelist_set(&l, "");
	assert_false(jwtauth_in_groups(&id, &l));
	namelist_clear(&l);
	jwtauth_identity_clear(&id);
	id = verify_groups(fx.v, NULL);
	namelist_set(&l, "ops");
	assert_false(jwtauth_in_groups(&id, &l));
	namelist_clear(&l);
	jwtauth_identity_clear(&id);
}

/* ---- JWKS loading ----------------------------------------------------------- */

/* A fresh verifier over the main JWKS, for tests that replace its keys. */
static JwtVerifier *scratch_verifier(void)
{
	JwtVerifier *v = verifier_new(MAIN_ALGS, "sub", "groups", false, fx.jwks_path);

	assert_int_equal(jwtauth_key_count(v), 4);
	return v;
}

/* Expects set_jwks to refuse `doc` (keeping the 4 keys) with `err_has` in err. */
static void expect_jwks_refused(JwtVerifier *v, const char *doc, const char *err_has)
{
	char err[256] = "";

	if (jwtauth_set_jwks(v, doc, strlen(doc), err, sizeof(err)))
		fail_msg("JWKS accepted: %s", doc);
	if (strstr(err, err_has) == NULL)
		fail_msg("error \"%s\" lacks \"%s\"", err, err_has);
	assert_int_equal(jwtauth_key_count(v), 4);
}

static void test_jwks_key_count(void **state)
{
	JwtVerifier *v = scratch_verifier();
	json_object *keys[1] = { jwk_of(fx.ec_pem, "ec1", false) };
	char *doc = jwks_doc(keys, 1), err[256] = "";
	char *tok = mint(fx.rsa_pem, "rsa1", "ops", 300);

	assert_int_equal(jwtauth_key_count(fx.v), 4);
	assert_true(jwtauth_set_jwks(v, doc, strlen(doc), err, sizeof(err)));
	assert_int_equal(jwtauth_key_count(v), 1);
	/* the RSA key is gone with the old set */
	expect_reject(v, tok, time(NULL), NULL, JWT_UNKNOWN_KID, "rsa1");
	free(tok);
	free(doc);
	jwtauth_free(v);
}

static void test_jwks_rsa_too_short(void **state)
{
	JwtVerifier *v = scratch_verifier();
	json_object *keys[2] = { jwk_of(fx.rsa_small_pem, "small", false), NULL };
	char *doc = jwks_doc(keys, 1), err[256] = "";

	expect_jwks_refused(v, doc, "2048");
	free(doc);
	keys[0] = jwk_of(fx.rsa_small_pem, "small", false);
	keys[1] = jwk_of(fx.rsa2_pem, "rsa2", false);
	doc = jwks_doc(keys, 2);
	assert_true(jwtauth_set_jwks(v, doc, strlen(doc), err, sizeof(err)));
	assert_int_equal(jwtauth_key_count(v), 1);
	free(doc);
	jwtauth_free(v);
}

static void test_jwks_ec_wrong_length(void **state)
{
	JwtVerifier *v = scratch_verifier();
	uint8_t short_coord[31] = { 1 }, long_coord[33] = { 1 };
	char *s = b64url(short_coord, sizeof(short_coord)), *l = b64url(long_coord, sizeof(long_coord)), *doc;
	json_object *keys[2];

	keys[0] = jwk_of(fx.ec_pem, "ec1", false);
	json_object_object_add(keys[0], "x", json_object_new_string(s));
	keys[1] = jwk_of(fx.ec_pem, "ec2", false);
	json_object_object_add(keys[1], "y", json_object_new_string(l));
	doc = jwks_doc(keys, 2);
	expect_jwks_refused(v, doc, "invalid EC key");
	free(doc);
	/* right lengths, but not a point on the curve */
	memset(long_coord, 0x01, sizeof(long_coord));
	free(l);
	l = b64url(long_coord, 32);
	keys[0] = jwk_of(fx.ec_pem, "ec1", false);
	json_object_object_add(keys[0], "x", json_object_new_string(l));
	doc = jwks_doc(keys, 1);
	expect_jwks_refused(v, doc, "invalid EC key");
	free(doc);
	/* a P-384 key claiming to be on P-256 */
	keys[0] = jwk_of(fx.ec384_pem, "ec384", false);
	json_object_object_add(keys[0], "crv", json_object_new_string("P-256"));
	doc = jwks_doc(keys, 1);
	expect_jwks_refused(v, doc, "invalid EC key");
	free(doc);
	free(s);
	free(l);
	jwtauth_free(v);
}

static void test_jwks_unknown_kty(void **state)
{
	JwtVerifier *v = scratch_verifier();

	expect_jwks_refused(v, "{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"kid\":\"ed\","
			       "\"x\":\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"}]}",
			    "unsupported kty");
	expect_jwks_refused(v, "{\"keys\":[{\"kid\":\"nokty\",\"k\":\"AAAA\"}]}", "kty");
	expect_jwks_refused(v, "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"secp256k1\",\"x\":\"AA\","
			       "\"y\":\"AA\"}]}",
			    "curve");
	expect_jwks_refused(v, "{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2hvcnQ\"}]}", "256 bits");
	expect_jwks_refused(v, "{\"keys\":[42,null,\"RSA\"]}", "kty");
	jwtauth_free(v);
}

static void test_jwks_use_enc(void **state)
{
	JwtVerifier *v = scratch_verifier();
	json_object *keys[2];
	char *doc, err[256] = "";
	char *tok = mint(fx.rsa_pem, "rsa1", "ops", 300);

	keys[0] = jwk_of(fx.rsa_pem, "rsa1", false);
	json_object_object_add(keys[0], "use", json_object_new_string("enc"));
	doc = jwks_doc(keys, 1);
	expect_jwks_refused(v, doc, "use");
	free(doc);
	keys[0] = jwk_of(fx.rsa_pem, "rsa1", false);
	json_object_object_add(keys[0], "use", json_object_new_string("enc"));
	keys[1] = jwk_of(fx.ec_pem, "ec1", false);
	doc = jwks_doc(keys, 2);
	assert_true(jwtauth_set_jwks(v, doc, strlen(doc), err, sizeof(err)));
	assert_int_equal(jwtauth_key_count(v), 1);
	expect_reject(v, tok, time(NULL), NULL, JWT_UNKNOWN_KID, NULL);
	free(doc);
	free(tok);
	jwtauth_free(v);
}

static void test_jwks_not_json(void **state)
{
	JwtVerifier *v = scratch_verifier();
	char err[256] = "";

	expect_jwks_refused(v, "{\"keys\": [", "JWKS");
	expect_jwks_refused(v, "keys", "JWKS");
	expect_jwks_refused(v, "", "JWKS");
	/* the length counts, not a terminating NUL */
	assert_false(jwtauth_set_jwks(v, "{\"keys\":[]}", 5, err, sizeof(err)));
	assert_int_equal(jwtauth_key_count(v), 4);
	jwtauth_free(v);
}

static void test_jwks_no_keys_array(void **state)
{
	JwtVerifier *v = scratch_verifier();

	expect_jwks_refused(v, "{}", "keys");
	expect_jwks_refused(v, "{\"keys\":{\"kty\":\"RSA\"}}", "keys");
	expect_jwks_refused(v, "[{\"keys\":[]}]", "keys");
	expect_jwks_refused(v, "{\"keys\":[]}", "no usable key");
	jwtauth_free(v);
}

static void test_new_config_errors(void **state)
{
	static char iss[] = ISS, aud[] = AUD, sub[] = "sub", groups[] = "groups";
	Config *cfg = calloc(1, sizeof(Config));
	char err[256] = "x", path[160];

	assert_non_null(cfg);
	assert_null(jwtauth_new(cfg, err, sizeof(err)));
	assert_string_equal(err, "");
	cfg->oidc_issuer = iss;
	assert_null(jwtauth_new(cfg, err, sizeof(err)));
	assert_non_null(strstr(err, "audience"));
	cfg->oidc_audience = aud;
	assert_null(jwtauth_new(cfg, err, sizeof(err)));
	assert_non_null(strstr(err, "jwks_file"));
	cfg->oidc_subject_claim = sub;
	cfg->oidc_groups_claim = groups;
	snprintf(path, sizeof(path), "%s/missing.json", fx.dir);
	cfg->oidc_jwks_file = path;
	assert_null(jwtauth_new(cfg, err, sizeof(err)));
	assert_non_null(strstr(err, "missing.json"));
	snprintf(path, sizeof(path), "%s/empty.json", fx.dir);
	write_file(path, "{\"keys\":[{\"kty\":\"RSA\",\"use\":\"enc\"}]}");
	assert_null(jwtauth_new(cfg, err, sizeof(err)));
	assert_non_null(strstr(err, "empty.json"));
	free(cfg);
}

/* ---- throttling ------------------------------------------------------------- */

static struct sockaddr_in v4(const char *ip)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };

	assert_int_equal(inet_pton(AF_INET, ip, &sin.sin_addr), 1);
	return sin;
}

static void fail_n(const struct sockaddr *sa, int n)
{
	for (int i = 0; i < n; i++)
		jwtauth_throttle_record(sa, false);
}

static void test_throttle_first_failures_free(void **state)
{
	struct sockaddr_in a = v4("192.0.2.10");

	assert_int_equal(jwtauth_throttle_delay((struct sockaddr *)&a), 0);
	fail_n((struct sockaddr *)&a, 3);
	assert_int_equal(jwtauth_throttle_delay((struct sockaddr *)&a), 0);
	jwtauth_throttle_record((struct sockaddr *)&a, true);
}

static void test_throttle_grows(void **state)
{
	struct sockaddr_in a = v4("192.0.2.11");
	uint32_t prev = 0, d = 0;

	fail_n((struct sockaddr *)&a, 3);
	for (int i = 0; i < 4; i++) {
		fail_n((struct sockaddr *)&a, 1);
		d = jwtauth_throttle_delay((struct sockaddr *)&a);
		if (d <= prev)
			fail_msg("delay after %d failures is %u, not above %u", 4 + i, d, prev);
		prev = d;
	}
	fail_n((struct sockaddr *)&a, 50);
	d = jwtauth_throttle_delay((struct sockaddr *)&a);
	assert_true(d >= prev && d <= 10000);
	jwtauth_throttle_record((struct sockaddr *)&a, true);
}

static void test_throttle_reset_on_success(void **state)
{
	struct sockaddr_in a = v4("192.0.2.12");

	fail_n((struct sockaddr *)&a, 10);
	assert_true(jwtauth_throttle_delay((struct sockaddr *)&a) > 0);
	jwtauth_throttle_record((struct sockaddr *)&a, true);
	assert_int_equal(jwtauth_throttle_delay((struct sockaddr *)&a), 0);
	fail_n((struct sockaddr *)&a, 3);
	assert_int_equal(jwtauth_throttle_delay((struct sockaddr *)&a), 0);
	jwtauth_throttle_record((struct sockaddr *)&a, true);
}

static void test_throttle_other_address(void **state)
{
	struct sockaddr_in a = v4("192.0.2.13"), b = v4("198.51.100.7"), a_port = a;
	struct sockaddr_in6 c = { .sin6_family = AF_INET6 }, c2 = { .sin6_family = AF_INET6 };
	struct sockaddr_un u = { .sun_family = AF_UNIX };

	assert_int_equal(inet_pton(AF_INET6, "2001:db8::13", &c.sin6_addr), 1);
	assert_int_equal(inet_pton(AF_INET6, "2001:db8::14", &c2.sin6_addr), 1);
	fail_n((struct sockaddr *)&a, 10);
	fail_n((struct sockaddr *)&c, 10);
	assert_true(jwtauth_throttle_delay((struct sockaddr *)&a) > 0);
	assert_true(jwtauth_throttle_delay((struct sockaddr *)&c) > 0);
	assert_int_equal(jwtauth_throttle_delay((struct sockaddr *)&b), 0);
	assert_int_equal(jwtauth_throttle_delay((struct sockaddr *)&c2), 0);
	/* the port is not part of the address */
	a_port.sin_port = htons(40000);
	assert_true(jwtauth_throttle_delay((struct sockaddr *)&a_port) > 0);
	/* unix sockets are never throttled */
	fail_n((struct sockaddr *)&u, 10);
	assert_int_equal(jwtauth_throttle_delay((struct sockaddr *)&u), 0);
	jwtauth_throttle_record((struct sockaddr *)&b, true);
	assert_true(jwtauth_throttle_delay((struct sockaddr *)&a) > 0);
	jwtauth_throttle_record((struct sockaddr *)&a, true);
	jwtauth_throttle_record((struct sockaddr *)&c, true);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_minted_rs256),
		cmocka_unit_test(test_minted_es256),
		cmocka_unit_test(test_minted_es384),
		cmocka_unit_test(test_handmade_rs256_and_es256),
		cmocka_unit_test(test_hs256_oct_key),
		cmocka_unit_test(test_expired),
		cmocka_unit_test(test_expired_minted),
		cmocka_unit_test(test_exp_at_now),
		cmocka_unit_test(test_exp_within_skew),
		cmocka_unit_test(test_nbf_future),
		cmocka_unit_test(test_nbf_within_skew),
		cmocka_unit_test(test_time_claims_not_numbers),
		cmocka_unit_test(test_kid_not_a_string),
		cmocka_unit_test(test_iat_future),
		cmocka_unit_test(test_missing_exp),
		cmocka_unit_test(test_exp_string),
		cmocka_unit_test(test_exp_out_of_range),
		cmocka_unit_test(test_wrong_issuer),
		cmocka_unit_test(test_missing_issuer),
		cmocka_unit_test(test_issuer_not_string),
		cmocka_unit_test(test_wrong_audience),
		cmocka_unit_test(test_missing_audience),
		cmocka_unit_test(test_audience_array_with),
		cmocka_unit_test(test_audience_array_without),
		cmocka_unit_test(test_bad_signature),
		cmocka_unit_test(test_bad_signature_es256),
		cmocka_unit_test(test_tampered_payload),
		cmocka_unit_test(test_unknown_kid),
		cmocka_unit_test(test_alg_not_allowed),
		cmocka_unit_test(test_alg_missing_or_unknown),
		cmocka_unit_test(test_hs256_with_rsa_public_pem),
		cmocka_unit_test(test_es256_with_rsa_kid),
		cmocka_unit_test(test_es384_with_p256_key),
		cmocka_unit_test(test_jwk_alg_restriction),
		cmocka_unit_test(test_alg_none),
		cmocka_unit_test(test_duplicate_alg_member),
		cmocka_unit_test(test_no_kid_one_key_fits),
		cmocka_unit_test(test_no_kid_two_keys_fit),
		cmocka_unit_test(test_no_kid_no_key_fits),
		cmocka_unit_test(test_bad_base64_header),
		cmocka_unit_test(test_bad_base64_payload),
		cmocka_unit_test(test_bad_base64_signature),
		cmocka_unit_test(test_header_not_json),
		cmocka_unit_test(test_payload_not_json),
		cmocka_unit_test(test_payload_array),
		cmocka_unit_test(test_wrong_part_count),
		cmocka_unit_test(test_missing_sub),
		cmocka_unit_test(test_sub_not_string),
		cmocka_unit_test(test_oversized_token),
		cmocka_unit_test(test_crit_header),
		cmocka_unit_test(test_groups_array),
		cmocka_unit_test(test_groups_string),
		cmocka_unit_test(test_groups_missing),
		cmocka_unit_test(test_groups_not_strings),
		cmocka_unit_test(test_groups_too_many),
		cmocka_unit_test(test_keycloak_paths),
		cmocka_unit_test(test_namespaced_claim),
		cmocka_unit_test(test_match_user),
		cmocka_unit_test(test_in_groups),
		cmocka_unit_test(test_jwks_key_count),
		cmocka_unit_test(test_jwks_rsa_too_short),
		cmocka_unit_test(test_jwks_ec_wrong_length),
		cmocka_unit_test(test_jwks_unknown_kty),
		cmocka_unit_test(test_jwks_use_enc),
		cmocka_unit_test(test_jwks_not_json),
		cmocka_unit_test(test_jwks_no_keys_array),
		cmocka_unit_test(test_new_config_errors),
		cmocka_unit_test(test_throttle_first_failures_free),
		cmocka_unit_test(test_throttle_grows),
		cmocka_unit_test(test_throttle_reset_on_success),
		cmocka_unit_test(test_throttle_other_address),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
