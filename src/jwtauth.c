/* SPDX-License-Identifier: MIT */
/*
 * JWT verification. The token header is decoded here first (json-c) so the
 * key and algorithm are chosen by pgveil, never by the token: the algorithm
 * must be allowed, must match the key's type (an RSA or EC public key never
 * verifies an HMAC token), and `none` is refused before libjwt sees it. libjwt
 * then checks the signature with that one key, and the claims are checked
 * here against the [oidc] settings. Key sets are immutable and reference
 * counted so a JWKS refresh can swap them while other threads verify.
 */
#include "pgveil/jwtauth.h"
#include "pgveil/jwks.h"

#include <ctype.h>
#include <errno.h>
#include <jwt.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { KTY_RSA, KTY_EC, KTY_OCT } KeyType;

/* One usable verification key. */
typedef struct JwtKey {
	char *kid;        /* may be NULL */
	KeyType kty;      /* family */
	char crv_alg[8];  /* EC: the ES* algorithm its curve implies */
	char *alg;        /* JWK "alg" restriction, or NULL */
	uint8_t *material;/* PEM public key (RSA/EC) or raw secret (oct) */
	size_t len;       /* bytes in material */
} JwtKey;

typedef struct KeySet {
	int refcount;     /* atomic */
	JwtKey *keys;     /* array */
	int n;            /* entries */
} KeySet;

struct JwtVerifier {
	char *issuer, *audience, *subject_claim, *groups_claim;
	NameList algorithms;        /* copies */
	uint64_t clock_skew;        /* seconds */
	bool match_user;
	pthread_mutex_t lock;       /* guards keys */
	KeySet *keys;               /* current set */
	JwksFetcher *fetcher;       /* jwks_uri fetcher, or NULL */
};

/* ---- helpers --------------------------------------------------------------- */

static void keyset_unref(KeySet *ks)
{
	if (ks == NULL || __atomic_sub_fetch(&ks->refcount, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	for (int i = 0; i < ks->n; i++) {
		free(ks->keys[i].kid);
		free(ks->keys[i].alg);
		OPENSSL_clear_free(ks->keys[i].material, ks->keys[i].len);
	}
	free(ks->keys);
	free(ks);
}

static KeySet *current_keys(JwtVerifier *v)
{
	KeySet *ks;

	pthread_mutex_lock(&v->lock);
	ks = v->keys;
	if (ks != NULL)
		__atomic_add_fetch(&ks->refcount, 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&v->lock);
	return ks;
}

/* Strict base64url (no padding required, none of + / allowed). Returns malloc'd bytes. */
static uint8_t *b64url_decode(const char *in, size_t len, size_t *outlen)
{
	size_t padded = (len + 3) / 4 * 4;
	char *tmp;
	uint8_t *out;
	int n;

	if (len % 4 == 1)
		return NULL;
	tmp = malloc(padded + 1);
	out = malloc(padded / 4 * 3 + 1);
	if (tmp == NULL || out == NULL)
		goto fail;
	for (size_t i = 0; i < len; i++) {
		char c = in[i];

		if (c == '-')
			c = '+';
		else if (c == '_')
			c = '/';
		else if (!isalnum((unsigned char)c))
			goto fail;
		tmp[i] = c;
	}
	for (size_t i = len; i < padded; i++)
		tmp[i] = '=';
	tmp[padded] = '\0';
	n = EVP_DecodeBlock(out, (unsigned char *)tmp, (int)padded);
	if (n < 0)
		goto fail;
	*outlen = (size_t)n - (padded - len); /* EVP_DecodeBlock counts padding as zero bytes */
	out[*outlen] = '\0';
	free(tmp);
	return out;
fail:
	free(tmp);
	free(out);
	return NULL;
}

static char *b64url_encode(const uint8_t *in, size_t len)
{
	char *out = malloc((len + 2) / 3 * 4 + 1);
	int n;

	if (out == NULL)
		return NULL;
	n = EVP_EncodeBlock((unsigned char *)out, in, (int)len);
	while (n > 0 && out[n - 1] == '=')
		n--;
	out[n] = '\0';
	for (int i = 0; i < n; i++)
		out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
	return out;
}

static const char *json_str(json_object *obj, const char *key)
{
	json_object *v;

	if (!json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

/* ---- JWK → key -------------------------------------------------------------------- */

static BIGNUM *jwk_bn(json_object *jwk, const char *name)
{
	const char *s = json_str(jwk, name);
	size_t len;
	uint8_t *bytes;
	BIGNUM *bn;

	if (s == NULL || (bytes = b64url_decode(s, strlen(s), &len)) == NULL)
		return NULL;
	bn = BN_bin2bn(bytes, (int)len, NULL);
	free(bytes);
	return bn;
}

static bool pkey_to_pem(EVP_PKEY *pkey, JwtKey *k)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *data;
	long n;
	bool ok = false;

	if (bio != NULL && PEM_write_bio_PUBKEY(bio, pkey) == 1 && (n = BIO_get_mem_data(bio, &data)) > 0) {
		k->material = malloc((size_t)n + 1);
		if (k->material != NULL) {
			memcpy(k->material, data, (size_t)n);
			k->material[n] = '\0';
			k->len = (size_t)n;
			ok = true;
		}
	}
	BIO_free(bio);
	return ok;
}

static EVP_PKEY *pkey_fromdata(const char *type, OSSL_PARAM_BLD *bld)
{
	OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
	EVP_PKEY *pkey = NULL;

	if (params == NULL || ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1 ||
	    EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
		pkey = NULL;
	OSSL_PARAM_free(params);
	EVP_PKEY_CTX_free(ctx);
	return pkey;
}

static const char *jwk_rsa(json_object *jwk, JwtKey *k)
{
	BIGNUM *n = jwk_bn(jwk, "n"), *e = jwk_bn(jwk, "e");
	OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
	EVP_PKEY *pkey = NULL;
	const char *why = NULL;

	if (n == NULL || e == NULL || bld == NULL)
		why = "RSA key needs base64url n and e";
	else if (BN_num_bits(n) < 2048)
		why = "RSA key shorter than 2048 bits";
	else if (!OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
		 !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) ||
		 (pkey = pkey_fromdata("RSA", bld)) == NULL || !pkey_to_pem(pkey, k))
		why = "invalid RSA key";
	k->kty = KTY_RSA;
	EVP_PKEY_free(pkey);
	OSSL_PARAM_BLD_free(bld);
	BN_free(n);
	BN_free(e);
	return why;
}

static const char *jwk_ec(json_object *jwk, JwtKey *k)
{
	static const struct { const char *crv, *group, *alg; size_t size; } curves[] = {
		{ "P-256", "prime256v1", "ES256", 32 },
		{ "P-384", "secp384r1", "ES384", 48 },
		{ "P-521", "secp521r1", "ES512", 66 },
	};
	const char *crv = json_str(jwk, "crv"), *xs = json_str(jwk, "x"), *ys = json_str(jwk, "y");
	uint8_t *x = NULL, *y = NULL, point[1 + 2 * 66];
	size_t xl = 0, yl = 0, i;
	OSSL_PARAM_BLD *bld = NULL;
	EVP_PKEY *pkey = NULL;
	const char *why = "invalid EC key";

	k->kty = KTY_EC;
	for (i = 0; i < PGV_ARRAY_LEN(curves); i++)
		if (crv != NULL && strcmp(crv, curves[i].crv) == 0)
			break;
	if (i == PGV_ARRAY_LEN(curves))
		return "EC key curve must be P-256, P-384 or P-521";
	if (xs == NULL || ys == NULL || (x = b64url_decode(xs, strlen(xs), &xl)) == NULL ||
	    (y = b64url_decode(ys, strlen(ys), &yl)) == NULL || xl != curves[i].size || yl != curves[i].size)
		goto out;
	point[0] = 0x04;
	memcpy(point + 1, x, xl);
	memcpy(point + 1 + xl, y, yl);
	bld = OSSL_PARAM_BLD_new();
	if (bld != NULL &&
	    OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, curves[i].group, 0) &&
	    OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, 1 + xl + yl) &&
	    (pkey = pkey_fromdata("EC", bld)) != NULL && pkey_to_pem(pkey, k)) {
		snprintf(k->crv_alg, sizeof(k->crv_alg), "%s", curves[i].alg);
		why = NULL;
	}
out:
	EVP_PKEY_free(pkey);
	OSSL_PARAM_BLD_free(bld);
	free(x);
	free(y);
	return why;
}

static const char *jwk_oct(json_object *jwk, JwtKey *k)
{
	const char *ks = json_str(jwk, "k");

	k->kty = KTY_OCT;
	if (ks == NULL || (k->material = b64url_decode(ks, strlen(ks), &k->len)) == NULL)
		return "oct key needs base64url k";
	if (k->len < 32) {
		OPENSSL_clear_free(k->material, k->len);
		k->material = NULL;
		return "oct key shorter than 256 bits";
	}
	return NULL;
}

/* Turns one JWK into a key. Returns NULL, or why it is unusable. */
static const char *jwk_load(json_object *jwk, JwtKey *k)
{
	const char *kty = json_str(jwk, "kty"), *use = json_str(jwk, "use"), *kid = json_str(jwk, "kid");
	const char *alg = json_str(jwk, "alg"), *why;

	memset(k, 0, sizeof(*k));
	if (use != NULL && strcmp(use, "sig") != 0)
		return "key is not for signatures (use)";
	if (kty == NULL)
		return "key has no kty";
	if (strcmp(kty, "RSA") == 0)
		why = jwk_rsa(jwk, k);
	else if (strcmp(kty, "EC") == 0)
		why = jwk_ec(jwk, k);
	else if (strcmp(kty, "oct") == 0)
		why = jwk_oct(jwk, k);
	else
		why = "unsupported kty";
	if (why == NULL) {
		k->kid = kid ? strdup(kid) : NULL;
		k->alg = alg ? strdup(alg) : NULL;
	}
	return why;
}

bool jwtauth_set_jwks(JwtVerifier *v, const char *json, size_t len, char *err, size_t errlen)
{
	json_tokener *tok = json_tokener_new();
	json_object *doc = tok ? json_tokener_parse_ex(tok, json, (int)len) : NULL, *keys;
	KeySet *ks = NULL, *old;
	size_t n;

	json_tokener_free(tok);
	if (doc == NULL || !json_object_object_get_ex(doc, "keys", &keys) ||
	    !json_object_is_type(keys, json_type_array)) {
		snprintf(err, errlen, "not a JWKS document (an object with a \"keys\" array)");
		goto fail;
	}
	n = json_object_array_length(keys);
	ks = calloc(1, sizeof(KeySet));
	if (ks == NULL || (ks->keys = calloc(n ? n : 1, sizeof(JwtKey))) == NULL)
		goto fail;
	ks->refcount = 1;
	for (size_t i = 0; i < n; i++) {
		const char *why = jwk_load(json_object_array_get_idx(keys, i), &ks->keys[ks->n]);

		if (why == NULL)
			ks->n++;
		else
			snprintf(err, errlen, "key %zu skipped: %s", i, why);
	}
	if (ks->n == 0) {
		if (n == 0 || err[0] == '\0')
			snprintf(err, errlen, "JWKS has no usable key");
		goto fail;
	}
	json_object_put(doc);
	pthread_mutex_lock(&v->lock);
	old = v->keys;
	v->keys = ks;
	pthread_mutex_unlock(&v->lock);
	keyset_unref(old);
	return true;
fail:
	json_object_put(doc);
	keyset_unref(ks);
	return false;
}

void jwtauth_adopt_keys(JwtVerifier *dst, JwtVerifier *src)
{
	KeySet *ks = current_keys(src), *old;

	if (ks == NULL)
		return;
	pthread_mutex_lock(&dst->lock);
	old = dst->keys;
	dst->keys = ks;
	pthread_mutex_unlock(&dst->lock);
	keyset_unref(old);
}

int jwtauth_key_count(JwtVerifier *v)
{
	KeySet *ks = current_keys(v);
	int n = ks ? ks->n : 0;

	keyset_unref(ks);
	return n;
}

/* ---- verifier ---------------------------------------------------------------------- */

static bool load_jwks_file(JwtVerifier *v, const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	char *buf = NULL, inner[256] = "";
	size_t len = 0;
	bool ok = false;

	if (f == NULL) {
		snprintf(err, errlen, "jwks_file %s: %s", path, strerror(errno));
		return false;
	}
	buf = malloc(1 << 20);
	if (buf != NULL) {
		len = fread(buf, 1, (1 << 20) - 1, f);
		ok = jwtauth_set_jwks(v, buf, len, inner, sizeof(inner));
		if (!ok)
			snprintf(err, errlen, "jwks_file %s: %s", path, inner);
	}
	fclose(f);
	free(buf);
	return ok;
}

JwtVerifier *jwtauth_new(const Config *cfg, char *err, size_t errlen)
{
	JwtVerifier *v;

	err[0] = '\0';
	if (cfg->oidc_issuer == NULL && cfg->oidc_audience == NULL && cfg->oidc_jwks_file == NULL &&
	    cfg->oidc_jwks_uri == NULL)
		return NULL;
	if (cfg->oidc_issuer == NULL || cfg->oidc_audience == NULL ||
	    (cfg->oidc_jwks_file == NULL && cfg->oidc_jwks_uri == NULL)) {
		snprintf(err, errlen, "[oidc] needs issuer, audience and jwks_file or jwks_uri");
		return NULL;
	}
	v = calloc(1, sizeof(JwtVerifier));
	if (v == NULL)
		return NULL;
	pthread_mutex_init(&v->lock, NULL);
	v->issuer = strdup(cfg->oidc_issuer);
	v->audience = strdup(cfg->oidc_audience);
	v->subject_claim = strdup(cfg->oidc_subject_claim);
	v->groups_claim = strdup(cfg->oidc_groups_claim);
	v->clock_skew = cfg->oidc_clock_skew;
	v->match_user = cfg->oidc_match_user;
	v->algorithms.items = calloc((size_t)cfg->oidc_algorithms.n + 1, sizeof(char *));
	for (int i = 0; v->algorithms.items != NULL && i < cfg->oidc_algorithms.n; i++)
		v->algorithms.items[v->algorithms.n++] = strdup(cfg->oidc_algorithms.items[i]);
	if (cfg->oidc_jwks_file != NULL && !load_jwks_file(v, cfg->oidc_jwks_file, err, errlen)) {
		jwtauth_free(v);
		return NULL;
	}
	return v;
}

void jwtauth_set_fetcher(JwtVerifier *v, JwksFetcher *f)
{
	v->fetcher = f;
}

JwksFetcher *jwtauth_get_fetcher(JwtVerifier *v)
{
	return v->fetcher;
}

void jwtauth_free(JwtVerifier *v)
{
	if (v == NULL)
		return;
	jwks_free(v->fetcher);
	keyset_unref(v->keys);
	for (int i = 0; i < v->algorithms.n; i++)
		free(v->algorithms.items[i]);
	free(v->algorithms.items);
	free(v->issuer);
	free(v->audience);
	free(v->subject_claim);
	free(v->groups_claim);
	pthread_mutex_destroy(&v->lock);
	free(v);
}

/* Does key k verify algorithm alg? The key type decides, never the token. */
static bool key_fits(const JwtKey *k, const char *alg)
{
	if (k->alg != NULL && strcmp(k->alg, alg) != 0)
		return false;
	switch (k->kty) {
	case KTY_RSA: return strncmp(alg, "RS", 2) == 0;
	case KTY_EC: return strcmp(alg, k->crv_alg) == 0;
	case KTY_OCT: return strncmp(alg, "HS", 2) == 0;
	}
	return false;
}

static bool alg_allowed(const JwtVerifier *v, const char *alg)
{
	static const char *const known[] = { "RS256", "RS384", "RS512", "ES256", "ES384", "ES512",
					     "HS256", "HS384", "HS512" };
	bool is_known = false;

	for (size_t i = 0; i < PGV_ARRAY_LEN(known); i++)
		is_known |= strcmp(alg, known[i]) == 0;
	if (!is_known)
		return false;
	for (int i = 0; i < v->algorithms.n; i++)
		if (strcmp(v->algorithms.items[i], alg) == 0)
			return true;
	return false;
}

/* Picks the key for (kid, alg). */
static JwtResult choose_key(const KeySet *ks, const char *kid, const char *alg, const JwtKey **out, char *why,
			    size_t whylen)
{
	int fits = 0;

	for (int i = 0; ks != NULL && i < ks->n; i++) {
		const JwtKey *k = &ks->keys[i];

		if (kid != NULL) {
			if (k->kid == NULL || strcmp(k->kid, kid) != 0)
				continue;
			if (!key_fits(k, alg)) {
				snprintf(why, whylen, "key \"%s\" cannot verify algorithm %s", kid, alg);
				return JWT_INVALID;
			}
			*out = k;
			return JWT_OK;
		}
		if (key_fits(k, alg)) {
			*out = k;
			fits++;
		}
	}
	if (kid != NULL) {
		snprintf(why, whylen, "unknown key id \"%.64s\"", kid);
		return JWT_UNKNOWN_KID;
	}
	if (fits != 1) {
		snprintf(why, whylen, "token has no kid and %d keys fit algorithm %s", fits, alg);
		return JWT_INVALID;
	}
	return JWT_OK;
}

/*
 * True when every part is strict base64url. libjwt decodes the payload and
 * signature leniently (it stops at the first foreign character), so this is
 * checked here for all three parts before libjwt sees the token.
 */
static bool token_is_b64url(const char *token)
{
	static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

	for (const char *p = token;; p++) {
		size_t n = strspn(p, alphabet);

		if (n % 4 == 1)
			return false;
		p += n;
		if (*p != '.')
			return *p == '\0';
	}
}

/* Decodes and checks the JOSE header; returns it (caller puts) or NULL. */
static json_object *parse_header(const char *token, char *why, size_t whylen)
{
	const char *dot = strchr(token, '.');
	size_t len;
	uint8_t *raw;
	json_object *hdr;

	if (dot == NULL || strchr(dot + 1, '.') == NULL || strchr(strchr(dot + 1, '.') + 1, '.') != NULL) {
		snprintf(why, whylen, "token is not three dot-separated parts");
		return NULL;
	}
	if (!token_is_b64url(token)) {
		snprintf(why, whylen, "token is not base64url");
		return NULL;
	}
	raw = b64url_decode(token, (size_t)(dot - token), &len);
	if (raw == NULL) {
		snprintf(why, whylen, "token header is not base64url");
		return NULL;
	}
	hdr = json_tokener_parse((char *)raw);
	free(raw);
	if (hdr == NULL || !json_object_is_type(hdr, json_type_object)) {
		snprintf(why, whylen, "token header is not a JSON object");
		json_object_put(hdr);
		return NULL;
	}
	if (json_object_object_get_ex(hdr, "crit", NULL)) {
		snprintf(why, whylen, "token header has crit extensions pgveil does not understand");
		json_object_put(hdr);
		return NULL;
	}
	return hdr;
}

/*
 * Finds a claim: first as one top-level name (Auth0-style namespaced claims
 * such as "https://example.com/roles" contain dots), then as a dotted path
 * ("realm_access.roles").
 */
static json_object *claim_path(json_object *payload, const char *path)
{
	char buf[256], *save = NULL, *part;
	json_object *cur = payload;

	if (json_object_object_get_ex(payload, path, &cur))
		return cur;
	cur = payload;

	snprintf(buf, sizeof(buf), "%s", path);
	for (part = strtok_r(buf, ".", &save); part != NULL; part = strtok_r(NULL, ".", &save))
		if (!json_object_is_type(cur, json_type_object) || !json_object_object_get_ex(cur, part, &cur))
			return NULL;
	return cur;
}

static bool claim_time(json_object *payload, const char *name, int64_t *out)
{
	json_object *v;

	if (!json_object_object_get_ex(payload, name, &v) ||
	    !(json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double)))
		return false;
	*out = json_object_get_int64(v);
	return true;
}

/*
 * An optional time claim: *out = INT64_MIN when absent. False when it is
 * present but not a number: a claim pgveil cannot read is not skipped.
 */
static bool optional_time(json_object *payload, const char *name, int64_t *out)
{
	*out = INT64_MIN;
	return !json_object_object_get_ex(payload, name, NULL) || claim_time(payload, name, out);
}

static bool aud_matches(json_object *payload, const char *audience)
{
	json_object *aud;

	if (!json_object_object_get_ex(payload, "aud", &aud))
		return false;
	if (json_object_is_type(aud, json_type_string))
		return strcmp(json_object_get_string(aud), audience) == 0;
	if (!json_object_is_type(aud, json_type_array))
		return false;
	for (size_t i = 0; i < json_object_array_length(aud); i++) {
		json_object *a = json_object_array_get_idx(aud, i);

		if (json_object_is_type(a, json_type_string) && strcmp(json_object_get_string(a), audience) == 0)
			return true;
	}
	return false;
}

/* 9999-12-31T23:59:59Z: keeps exp + clock_skew (here and in the session's expiry timer) far from overflow. */
#define JWT_MAX_EXP INT64_C(253402300799)

static JwtResult check_claims(const JwtVerifier *v, json_object *payload, time_t now, char *why, size_t whylen)
{
	int64_t exp, nbf, iat, skew = (int64_t)v->clock_skew;
	const char *iss = json_str(payload, "iss");

	if (iss == NULL || strcmp(iss, v->issuer) != 0) {
		snprintf(why, whylen, "issuer %s%.128s%s is not the configured issuer", iss ? "\"" : "",
			 iss ? iss : "missing", iss ? "\"" : "");
		return JWT_INVALID;
	}
	if (!aud_matches(payload, v->audience)) {
		snprintf(why, whylen, "audience does not include \"%s\"", v->audience);
		return JWT_INVALID;
	}
	if (!claim_time(payload, "exp", &exp)) {
		snprintf(why, whylen, "token has no numeric exp claim");
		return JWT_INVALID;
	}
	if (exp < 0 || exp > JWT_MAX_EXP) {
		snprintf(why, whylen, "token exp %lld is out of range", (long long)exp);
		return JWT_INVALID;
	}
	if ((int64_t)now >= exp + skew) {
		snprintf(why, whylen, "token expired %lld seconds ago", (long long)((int64_t)now - exp));
		return JWT_INVALID;
	}
	if (!optional_time(payload, "nbf", &nbf) || !optional_time(payload, "iat", &iat)) {
		snprintf(why, whylen, "token has a nbf or iat claim that is not a number");
		return JWT_INVALID;
	}
	if (nbf != INT64_MIN && (int64_t)now + skew < nbf) {
		snprintf(why, whylen, "token not valid before %lld (now %lld)", (long long)nbf, (long long)now);
		return JWT_INVALID;
	}
	if (iat != INT64_MIN && iat > (int64_t)now + skew) {
		snprintf(why, whylen, "token issued in the future (iat %lld, now %lld)", (long long)iat, (long long)now);
		return JWT_INVALID;
	}
	return JWT_OK;
}

static bool valid_name(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 256)
		return false;
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return false;
	return true;
}

static bool add_group(Identity *id, const char *g, size_t len)
{
	char **arr;

	if (len == 0)
		return true;
	if (id->n_groups >= JWT_MAX_GROUPS)
		return false;
	arr = realloc(id->groups, sizeof(char *) * (size_t)(id->n_groups + 1));
	if (arr == NULL)
		return false;
	id->groups = arr;
	id->groups[id->n_groups] = strndup(g, len);
	if (id->groups[id->n_groups] == NULL || !valid_name(id->groups[id->n_groups])) {
		free(id->groups[id->n_groups]);
		return false;
	}
	id->n_groups++;
	return true;
}

static bool extract_groups(json_object *claim, Identity *id)
{
	if (claim == NULL)
		return true;
	if (json_object_is_type(claim, json_type_string)) {
		const char *s = json_object_get_string(claim);

		while (*s) {
			size_t n = strcspn(s, " ");

			if (!add_group(id, s, n))
				return false;
			s += n;
			s += strspn(s, " ");
		}
		return true;
	}
	if (!json_object_is_type(claim, json_type_array))
		return false;
	for (size_t i = 0; i < json_object_array_length(claim); i++) {
		json_object *g = json_object_array_get_idx(claim, i);

		if (!json_object_is_type(g, json_type_string) ||
		    !add_group(id, json_object_get_string(g), strlen(json_object_get_string(g))))
			return false;
	}
	return true;
}

static JwtResult extract_identity(const JwtVerifier *v, json_object *payload, const char *user, Identity *id,
				  char *why, size_t whylen)
{
	json_object *sub = claim_path(payload, v->subject_claim);
	int64_t exp = 0;

	if (sub == NULL || !json_object_is_type(sub, json_type_string) || !valid_name(json_object_get_string(sub))) {
		snprintf(why, whylen, "claim %s is missing or not a usable string", v->subject_claim);
		return JWT_INVALID;
	}
	if (!extract_groups(claim_path(payload, v->groups_claim), id)) {
		snprintf(why, whylen, "claim %s is not an array of strings or a space-separated string",
			 v->groups_claim);
		return JWT_INVALID;
	}
	id->subject = strdup(json_object_get_string(sub));
	(void)claim_time(payload, "exp", &exp);
	id->expires_at = exp;
	if (id->subject == NULL) {
		snprintf(why, whylen, "out of memory");
		return JWT_INVALID;
	}
	if (v->match_user && (user == NULL || strcmp(user, id->subject) != 0)) {
		snprintf(why, whylen, "startup user \"%.64s\" is not the token subject \"%.64s\"", user ? user : "",
			 id->subject);
		return JWT_FORBIDDEN;
	}
	return JWT_OK;
}

/* libjwt checks the signature with exactly the chosen key and algorithm. */
static json_object *verify_signature(const char *token, const JwtKey *k, const char *alg, char *why, size_t whylen)
{
	jwt_t *jwt = NULL;
	char *grants;
	json_object *payload;
	int rc = jwt_decode(&jwt, token, k->material, (int)k->len);

	if (rc != 0 || jwt == NULL) {
		snprintf(why, whylen, "signature verification failed");
		jwt_free(jwt);
		return NULL;
	}
	if (strcmp(jwt_alg_str(jwt_get_alg(jwt)), alg) != 0) {
		snprintf(why, whylen, "algorithm changed during verification");
		jwt_free(jwt);
		return NULL;
	}
	grants = jwt_get_grants_json(jwt, NULL);
	jwt_free(jwt);
	payload = grants ? json_tokener_parse(grants) : NULL;
	free(grants);
	if (payload == NULL || !json_object_is_type(payload, json_type_object)) {
		snprintf(why, whylen, "token payload is not a JSON object");
		json_object_put(payload);
		return NULL;
	}
	return payload;
}

JwtResult jwtauth_verify(JwtVerifier *v, const char *token, time_t now, const char *startup_user, Identity *id,
			 char *why, size_t whylen)
{
	json_object *hdr = NULL, *payload = NULL;
	const char *alg, *kid;
	const JwtKey *key = NULL;
	KeySet *ks = NULL;
	JwtResult rc = JWT_INVALID;

	memset(id, 0, sizeof(*id));
	if (strlen(token) > JWT_MAX_TOKEN_LEN) {
		snprintf(why, whylen, "token longer than %d bytes", JWT_MAX_TOKEN_LEN);
		return JWT_INVALID;
	}
	if ((hdr = parse_header(token, why, whylen)) == NULL)
		return JWT_INVALID;
	alg = json_str(hdr, "alg");
	kid = json_str(hdr, "kid");
	if (kid == NULL && json_object_object_get_ex(hdr, "kid", NULL)) {
		snprintf(why, whylen, "token kid is not a string");
		goto out;
	}
	if (alg == NULL || !alg_allowed(v, alg)) {
		snprintf(why, whylen, "algorithm %.16s is not allowed", alg ? alg : "(missing)");
		goto out;
	}
	ks = current_keys(v);
	rc = choose_key(ks, kid, alg, &key, why, whylen);
	if (rc != JWT_OK)
		goto out;
	rc = JWT_INVALID;
	if ((payload = verify_signature(token, key, alg, why, whylen)) == NULL)
		goto out;
	if ((rc = check_claims(v, payload, now, why, whylen)) != JWT_OK)
		goto out;
	rc = extract_identity(v, payload, startup_user, id, why, whylen);
out:
	if (rc != JWT_OK)
		jwtauth_identity_clear(id);
	json_object_put(hdr);
	json_object_put(payload);
	keyset_unref(ks);
	return rc;
}

void jwtauth_identity_clear(Identity *id)
{
	for (int i = 0; i < id->n_groups; i++)
		free(id->groups[i]);
	free(id->groups);
	free(id->subject);
	memset(id, 0, sizeof(*id));
}

bool jwtauth_in_groups(const Identity *id, const NameList *list)
{
	for (int i = 0; i < id->n_groups; i++)
		for (int j = 0; j < list->n; j++)
			if (strcmp(id->groups[i], list->items[j]) == 0)
				return true;
	return false;
}

/* ---- throttling -------------------------------------------------------------------------- */

#define THROTTLE_SLOTS 1024
#define THROTTLE_FREE_FAILURES 3
#define THROTTLE_WINDOW_S 60
#define THROTTLE_MAX_MS 5000

typedef struct ThrottleSlot {
	uint8_t addr[16];  /* IPv4-mapped or IPv6 */
	uint32_t failures; /* within the window */
	time_t last;       /* last failure */
} ThrottleSlot;

static pthread_mutex_t throttle_lock = PTHREAD_MUTEX_INITIALIZER;
static ThrottleSlot throttle[THROTTLE_SLOTS];

static bool addr_key(const struct sockaddr *sa, uint8_t out[16])
{
	memset(out, 0, 16);
	if (sa->sa_family == AF_INET) {
		out[10] = out[11] = 0xff;
		memcpy(out + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
		return true;
	}
	if (sa->sa_family == AF_INET6) {
		memcpy(out, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
		return true;
	}
	return false;
}

static ThrottleSlot *throttle_slot(const uint8_t key[16])
{
	uint32_t h = 2166136261u;

	for (int i = 0; i < 16; i++)
		h = (h ^ key[i]) * 16777619u;
	return &throttle[h % THROTTLE_SLOTS];
}

uint32_t jwtauth_throttle_delay(const struct sockaddr *addr)
{
	uint8_t key[16];
	uint32_t delay = 0;
	ThrottleSlot *s;

	if (!addr_key(addr, key))
		return 0;
	pthread_mutex_lock(&throttle_lock);
	s = throttle_slot(key);
	if (memcmp(s->addr, key, 16) == 0 && time(NULL) - s->last < THROTTLE_WINDOW_S &&
	    s->failures > THROTTLE_FREE_FAILURES) {
		uint32_t n = s->failures - THROTTLE_FREE_FAILURES;

		delay = n >= 6 ? THROTTLE_MAX_MS : 100u << n;
		if (delay > THROTTLE_MAX_MS)
			delay = THROTTLE_MAX_MS;
	}
	pthread_mutex_unlock(&throttle_lock);
	return delay;
}

void jwtauth_throttle_record(const struct sockaddr *addr, bool success)
{
	uint8_t key[16];
	ThrottleSlot *s;
	time_t now = time(NULL);

	if (!addr_key(addr, key))
		return;
	pthread_mutex_lock(&throttle_lock);
	s = throttle_slot(key);
	if (memcmp(s->addr, key, 16) != 0 || now - s->last >= THROTTLE_WINDOW_S) {
		memcpy(s->addr, key, 16);
		s->failures = 0;
	}
	if (success) {
		s->failures = 0;
	} else {
		s->failures++;
		s->last = now;
	}
	pthread_mutex_unlock(&throttle_lock);
}

/* ---- minting ------------------------------------------------------------------------------- */

static EVP_PKEY *read_key(const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	EVP_PKEY *pkey;

	if (f == NULL) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return NULL;
	}
	pkey = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	if (pkey == NULL)
		snprintf(err, errlen, "%s: not a PEM private key", path);
	return pkey;
}

static const char *alg_for_key(EVP_PKEY *pkey)
{
	if (EVP_PKEY_is_a(pkey, "RSA"))
		return "RS256";
	switch (EVP_PKEY_get_bits(pkey)) {
	case 256: return "ES256";
	case 384: return "ES384";
	case 521: return "ES512";
	default: return NULL;
	}
}

static bool add_groups_claim(jwt_t *jwt, const char *claim, const char *groups)
{
	json_object *obj = json_object_new_object(), *arr = json_object_new_array();
	char *copy = strdup(groups ? groups : ""), *save = NULL;
	int rc;

	for (char *g = strtok_r(copy, ",", &save); g != NULL; g = strtok_r(NULL, ",", &save)) {
		while (*g == ' ')
			g++;
		if (*g)
			json_object_array_add(arr, json_object_new_string(g));
	}
	json_object_object_add(obj, claim, arr);
	rc = jwt_add_grants_json(jwt, json_object_to_json_string(obj));
	json_object_put(obj);
	free(copy);
	return rc == 0;
}

char *jwtauth_mint(const MintParams *p, char *err, size_t errlen)
{
	EVP_PKEY *pkey = read_key(p->key_pem_file, err, errlen);
	FILE *f = NULL;
	unsigned char *pem = NULL;
	long pemlen = 0;
	const char *alg;
	jwt_t *jwt = NULL;
	char *out = NULL;
	time_t now = time(NULL);

	if (pkey == NULL)
		return NULL;
	alg = p->alg ? p->alg : alg_for_key(pkey);
	if (alg == NULL || jwt_str_alg(alg) == JWT_ALG_INVAL || jwt_str_alg(alg) == JWT_ALG_NONE) {
		snprintf(err, errlen, "no usable signing algorithm for this key");
		goto out;
	}
	f = fopen(p->key_pem_file, "r");
	if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (pemlen = ftell(f)) <= 0 || fseek(f, 0, SEEK_SET) != 0 ||
	    (pem = malloc((size_t)pemlen)) == NULL || fread(pem, 1, (size_t)pemlen, f) != (size_t)pemlen) {
		snprintf(err, errlen, "%s: cannot read", p->key_pem_file);
		goto out;
	}
	if (jwt_new(&jwt) != 0 || (p->kid && jwt_add_header(jwt, "kid", p->kid) != 0) ||
	    (p->sub && jwt_add_grant(jwt, "sub", p->sub) != 0) || (p->iss && jwt_add_grant(jwt, "iss", p->iss) != 0) ||
	    (p->aud && jwt_add_grant(jwt, "aud", p->aud) != 0) ||
	    jwt_add_grant_int(jwt, "iat", (long)now) != 0 || jwt_add_grant_int(jwt, "exp", (long)now + p->ttl) != 0 ||
	    (p->has_nbf && jwt_add_grant_int(jwt, "nbf", (long)now + p->nbf_offset) != 0) ||
	    !add_groups_claim(jwt, p->groups_claim ? p->groups_claim : "groups", p->groups) ||
	    jwt_set_alg(jwt, jwt_str_alg(alg), pem, (int)pemlen) != 0) {
		snprintf(err, errlen, "cannot build the token");
		goto out;
	}
	out = jwt_encode_str(jwt);
	if (out == NULL)
		snprintf(err, errlen, "signing failed (does the key fit %s?)", alg);
out:
	if (f != NULL)
		fclose(f);
	if (pem != NULL)
		OPENSSL_clear_free(pem, (size_t)pemlen);
	jwt_free(jwt);
	EVP_PKEY_free(pkey);
	return out;
}

static bool jwk_add_bn(json_object *jwk, const char *name, EVP_PKEY *pkey, const char *param)
{
	BIGNUM *bn = NULL;
	uint8_t *buf = NULL;
	int n;
	char *s = NULL;

	if (EVP_PKEY_get_bn_param(pkey, param, &bn) != 1 || (buf = malloc((size_t)BN_num_bytes(bn) + 1)) == NULL ||
	    (n = BN_bn2bin(bn, buf)) <= 0 || (s = b64url_encode(buf, (size_t)n)) == NULL) {
		free(buf);
		BN_free(bn);
		return false;
	}
	json_object_object_add(jwk, name, json_object_new_string(s));
	free(s);
	free(buf);
	BN_free(bn);
	return true;
}

static bool jwk_add_ec(json_object *jwk, EVP_PKEY *pkey)
{
	uint8_t pt[1 + 2 * 66];
	size_t len = 0, half;
	char *x, *y;
	const char *crv = EVP_PKEY_get_bits(pkey) == 256 ? "P-256" : EVP_PKEY_get_bits(pkey) == 384 ? "P-384" : "P-521";

	if (EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof(pt), &len) != 1 || len < 3 ||
	    pt[0] != 0x04)
		return false;
	half = (len - 1) / 2;
	x = b64url_encode(pt + 1, half);
	y = b64url_encode(pt + 1 + half, half);
	json_object_object_add(jwk, "crv", json_object_new_string(crv));
	json_object_object_add(jwk, "x", json_object_new_string(x ? x : ""));
	json_object_object_add(jwk, "y", json_object_new_string(y ? y : ""));
	free(x);
	free(y);
	return true;
}

char *jwtauth_jwks_for_key(const char *pem_file, const char *kid, char *err, size_t errlen)
{
	EVP_PKEY *pkey = read_key(pem_file, err, errlen);
	json_object *doc, *keys, *jwk;
	bool ok;
	char *out = NULL;

	if (pkey == NULL)
		return NULL;
	doc = json_object_new_object();
	keys = json_object_new_array();
	jwk = json_object_new_object();
	if (EVP_PKEY_is_a(pkey, "RSA")) {
		json_object_object_add(jwk, "kty", json_object_new_string("RSA"));
		ok = jwk_add_bn(jwk, "n", pkey, OSSL_PKEY_PARAM_RSA_N) && jwk_add_bn(jwk, "e", pkey, OSSL_PKEY_PARAM_RSA_E);
	} else {
		json_object_object_add(jwk, "kty", json_object_new_string("EC"));
		ok = jwk_add_ec(jwk, pkey);
	}
	json_object_object_add(jwk, "use", json_object_new_string("sig"));
	json_object_object_add(jwk, "alg", json_object_new_string(alg_for_key(pkey) ? alg_for_key(pkey) : ""));
	if (kid != NULL)
		json_object_object_add(jwk, "kid", json_object_new_string(kid));
	json_object_array_add(keys, jwk);
	json_object_object_add(doc, "keys", keys);
	if (ok)
		out = strdup(json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
	else
		snprintf(err, errlen, "%s: unsupported key type", pem_file);
	json_object_put(doc);
	EVP_PKEY_free(pkey);
	return out;
}
