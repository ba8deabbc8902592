/* SPDX-License-Identifier: MIT */
/*
 * Password authentication toward the PostgreSQL server, computed over
 * OpenSSL: the client side of SCRAM-SHA-256 (RFC 5802, RFC 7677, without
 * channel binding) as libpq speaks it, and the legacy MD5 response. This
 * module owns the state of one SCRAM exchange and every secret derived from
 * the password, and wipes them when the exchange is freed. It performs no I/O.
 *
 * SASLprep: libpq normalises the password with SASLprep (RFC 4013) and falls
 * back to the raw bytes when the password is not valid UTF-8 or SASLprep
 * rejects it. pgveil does not implement SASLprep. A pure-ASCII password is
 * unchanged by SASLprep (or rejected by it for control characters, where
 * libpq uses the raw bytes too), so it is used as is with the same result as
 * libpq. A non-ASCII password is always used as raw bytes: this matches libpq
 * only when SASLprep would leave it unchanged (already NFKC-normalised, no
 * non-ASCII spaces or mapped-to-nothing characters). Such passwords should be
 * set on the server in normalised form.
 */
#include "pgveil/pgauth.h"

#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCRAM_KEY_LEN 32            /* SHA-256 output */
#define SCRAM_RAW_NONCE_LEN 18      /* random bytes in our nonce, as libpq */
#define SCRAM_MAX_NONCE_LEN 256     /* longest nonce accepted from a caller */
#define SCRAM_MAX_USER_LEN 256      /* longest user accepted from a caller */
#define SCRAM_MAX_MESSAGE_LEN 4096  /* longest server message accepted */
#define SCRAM_MAX_SALT_LEN 256      /* decoded bytes */
#define SCRAM_MIN_ITERATIONS 1
#define SCRAM_MAX_ITERATIONS 10000000
#define SCRAM_MAX_FIELDS 4          /* more attributes than any message we accept */

typedef enum {
	SCRAM_STATE_FIRST,  /* client-first ready, waiting for server-first */
	SCRAM_STATE_FINAL,  /* client-final sent, waiting for server-final */
	SCRAM_STATE_DONE,   /* server verified */
	SCRAM_STATE_FAILED, /* any error: the exchange is over */
} ScramState;

struct ScramClient {
	ScramState state;                       /* where the exchange stands */
	char *password;                         /* password bytes; wiped once salted */
	size_t password_len;                    /* bytes in password */
	char *client_nonce;                     /* printable, no ',' */
	char *client_first;                     /* "n,,n=<user>,r=<nonce>" */
	const char *client_first_bare;          /* points into client_first, after "n,," */
	char *client_final;                     /* "c=biws,r=<nonce>,p=<proof>" */
	char *auth_message;                     /* bare client-first, server-first, final without proof */
	uint8_t salted_password[SCRAM_KEY_LEN]; /* PBKDF2 result: the key to everything */
};

/* ---- small helpers ------------------------------------------------------- */

/* A new string from a printf format, or NULL. */
static char *PGV_PRINTF(1, 2) str_printf(const char *fmt, ...)
{
	va_list ap;
	char *out;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return NULL;
	out = malloc((size_t)n + 1);
	if (out == NULL)
		return NULL;
	va_start(ap, fmt);
	vsnprintf(out, (size_t)n + 1, fmt, ap);
	va_end(ap);
	return out;
}

/* Wipes and frees a string that may hold a secret (NULL is fine). */
static void str_clear_free(char *s)
{
	if (s != NULL)
		OPENSSL_cleanse(s, strlen(s));
	free(s);
}

/* A SCRAM nonce: printable ASCII except ',' (RFC 5802 "printable"). */
static bool scram_nonce_valid(const char *s, size_t len)
{
	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++)
		if (s[i] < 0x21 || s[i] > 0x7e || s[i] == ',')
			return false;
	return true;
}

static bool b64_char_valid(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
	       c == '/';
}

/* Base64 of n bytes as a new string, or NULL. */
static char *b64_encode(const uint8_t *in, size_t n)
{
	char *out;

	if (n > INT_MAX / 4 * 3 - 3)
		return NULL;
	out = malloc(4 * ((n + 2) / 3) + 1);
	if (out != NULL)
		EVP_EncodeBlock((unsigned char *)out, in, (int)n);
	return out;
}

/*
 * Decodes strict base64 (length a multiple of 4, '=' padding only at the end)
 * of s[0..len) into out, which has room for cap bytes. Returns the number of
 * bytes decoded, or -1.
 */
static int b64_decode(const char *s, size_t len, uint8_t *out, size_t cap)
{
	size_t pad = 0;
	int n;

	if (len == 0 || len % 4 != 0 || len / 4 * 3 > cap || len > INT_MAX)
		return -1;
	if (s[len - 1] == '=')
		pad = (s[len - 2] == '=') ? 2 : 1;
	for (size_t i = 0; i < len - pad; i++)
		if (!b64_char_valid(s[i]))
			return -1;
	/* EVP_DecodeBlock() counts the padding as zero bytes. */
	n = EVP_DecodeBlock(out, (const unsigned char *)s, (int)len);
	if (n < (int)pad)
		return -1;
	return n - (int)pad;
}

/*
 * Splits msg in place at ',' into at most max fields. Returns the number of
 * fields, or -1 when there are more.
 */
static int scram_split(char *msg, char **fields, int max)
{
	int n = 0;

	for (char *p = msg;; p++) {
		if (n == max)
			return -1;
		fields[n++] = p;
		p = strchr(p, ',');
		if (p == NULL)
			return n;
		*p = '\0';
	}
}

/* The value of a field "<attr>=<value>", or NULL when it is another attribute. */
static const char *scram_attr(const char *field, char attr)
{
	return (field[0] == attr && field[1] == '=') ? field + 2 : NULL;
}

/* A copy of a server message with a NUL added; NULL when empty, too long, or holding NUL bytes. */
static char *scram_copy_message(const uint8_t *msg, size_t len)
{
	char *s;

	if (len == 0 || len > SCRAM_MAX_MESSAGE_LEN || memchr(msg, '\0', len) != NULL)
		return NULL;
	s = malloc(len + 1);
	if (s == NULL)
		return NULL;
	memcpy(s, msg, len);
	s[len] = '\0';
	return s;
}

static bool scram_hmac(const uint8_t key[SCRAM_KEY_LEN], const void *data, size_t len,
		       uint8_t out[SCRAM_KEY_LEN])
{
	unsigned int n = 0;

	return HMAC(EVP_sha256(), key, SCRAM_KEY_LEN, data, len, out, &n) != NULL && n == SCRAM_KEY_LEN;
}

static bool scram_sha256(const uint8_t *data, size_t len, uint8_t out[SCRAM_KEY_LEN])
{
	unsigned int n = 0;

	return EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) == 1 && n == SCRAM_KEY_LEN;
}

/* ---- the exchange ---------------------------------------------------------- */

ScramClient *pgauth_scram_new_full(const char *password, const char *nonce, const char *user)
{
	ScramClient *sc;
	size_t nonce_len = strnlen(nonce, SCRAM_MAX_NONCE_LEN + 1);

	if (nonce_len > SCRAM_MAX_NONCE_LEN || !scram_nonce_valid(nonce, nonce_len) ||
	    strnlen(user, SCRAM_MAX_USER_LEN + 1) > SCRAM_MAX_USER_LEN || strpbrk(user, ",=") != NULL)
		return NULL;
	sc = calloc(1, sizeof(*sc));
	if (sc == NULL)
		return NULL;
	sc->state = SCRAM_STATE_FIRST;
	sc->password_len = strlen(password);
	sc->password = strdup(password);
	sc->client_nonce = strdup(nonce);
	sc->client_first = str_printf("n,,n=%s,r=%s", user, nonce);
	if (sc->password == NULL || sc->client_nonce == NULL || sc->client_first == NULL)
		goto fail;
	sc->client_first_bare = sc->client_first + 3;
	return sc;
fail:
	pgauth_scram_free(sc);
	return NULL;
}

ScramClient *pgauth_scram_new_with_nonce(const char *password, const char *nonce)
{
	return pgauth_scram_new_full(password, nonce, "");
}

ScramClient *pgauth_scram_new(const char *password)
{
	uint8_t raw[SCRAM_RAW_NONCE_LEN];
	ScramClient *sc;
	char *nonce;

	if (RAND_bytes(raw, sizeof(raw)) != 1)
		return NULL;
	nonce = b64_encode(raw, sizeof(raw));
	OPENSSL_cleanse(raw, sizeof(raw));
	if (nonce == NULL)
		return NULL;
	sc = pgauth_scram_new_with_nonce(password, nonce);
	free(nonce);
	return sc;
}

void pgauth_scram_free(ScramClient *sc)
{
	if (sc == NULL)
		return;
	str_clear_free(sc->password);
	str_clear_free(sc->client_nonce);
	str_clear_free(sc->client_first);
	str_clear_free(sc->client_final);
	str_clear_free(sc->auth_message);
	OPENSSL_cleanse(sc, sizeof(*sc));
	free(sc);
}

const char *pgauth_scram_client_first(ScramClient *sc)
{
	return sc->client_first;
}

/* What server-first-message carries. */
typedef struct ScramServerFirst {
	const char *nonce;                 /* client nonce + server nonce */
	uint8_t salt[SCRAM_MAX_SALT_LEN];  /* decoded salt */
	int salt_len;                      /* bytes in salt */
	int iterations;                    /* PBKDF2 rounds */
} ScramServerFirst;

static bool scram_parse_iterations(const char *s, int *out)
{
	long v = 0;

	if (*s == '\0')
		return false;
	for (; *s != '\0'; s++) {
		if (*s < '0' || *s > '9')
			return false;
		v = v * 10 + (*s - '0');
		if (v > SCRAM_MAX_ITERATIONS)
			return false;
	}
	if (v < SCRAM_MIN_ITERATIONS)
		return false;
	*out = (int)v;
	return true;
}

/* Parses "r=<nonce>,s=<salt>,i=<iterations>" (split in place) into *out. */
static bool scram_parse_server_first(const ScramClient *sc, char *msg, ScramServerFirst *out,
				     const char **why)
{
	char *f[SCRAM_MAX_FIELDS];
	const char *salt, *iter;
	size_t cn_len = strlen(sc->client_nonce);

	if (scram_split(msg, f, SCRAM_MAX_FIELDS) != 3 || (out->nonce = scram_attr(f[0], 'r')) == NULL ||
	    (salt = scram_attr(f[1], 's')) == NULL || (iter = scram_attr(f[2], 'i')) == NULL) {
		*why = "malformed SCRAM server-first-message";
		return false;
	}
	if (strncmp(out->nonce, sc->client_nonce, cn_len) != 0 ||
	    !scram_nonce_valid(out->nonce, strlen(out->nonce))) {
		*why = "SCRAM server nonce does not start with the client nonce";
		return false;
	}
	out->salt_len = b64_decode(salt, strlen(salt), out->salt, sizeof(out->salt));
	if (out->salt_len <= 0) {
		*why = "invalid SCRAM salt";
		return false;
	}
	if (!scram_parse_iterations(iter, &out->iterations)) {
		*why = "SCRAM iteration count out of range";
		return false;
	}
	return true;
}

/* ClientKey XOR HMAC(H(ClientKey), AuthMessage) into proof; salted_password must be set. */
static bool scram_client_proof(const ScramClient *sc, uint8_t proof[SCRAM_KEY_LEN])
{
	uint8_t client_key[SCRAM_KEY_LEN], stored_key[SCRAM_KEY_LEN], signature[SCRAM_KEY_LEN];
	bool ok;

	ok = scram_hmac(sc->salted_password, "Client Key", strlen("Client Key"), client_key) &&
	     scram_sha256(client_key, sizeof(client_key), stored_key) &&
	     scram_hmac(stored_key, sc->auth_message, strlen(sc->auth_message), signature);
	for (size_t i = 0; ok && i < SCRAM_KEY_LEN; i++)
		proof[i] = client_key[i] ^ signature[i];
	OPENSSL_cleanse(client_key, sizeof(client_key));
	OPENSSL_cleanse(stored_key, sizeof(stored_key));
	OPENSSL_cleanse(signature, sizeof(signature));
	return ok;
}

/* Salts the password, then builds AuthMessage and client-final-message. */
static bool scram_build_final(ScramClient *sc, const char *server_first, const ScramServerFirst *sf)
{
	uint8_t proof[SCRAM_KEY_LEN];
	char *without_proof = NULL, *proof_b64 = NULL;
	bool ok = false;

	if (PKCS5_PBKDF2_HMAC(sc->password, (int)sc->password_len, sf->salt, sf->salt_len, sf->iterations,
			      EVP_sha256(), SCRAM_KEY_LEN, sc->salted_password) != 1)
		goto out;
	str_clear_free(sc->password);
	sc->password = NULL;
	/* "biws" is base64("n,,"): no channel binding. */
	without_proof = str_printf("c=biws,r=%s", sf->nonce);
	if (without_proof == NULL)
		goto out;
	sc->auth_message = str_printf("%s,%s,%s", sc->client_first_bare, server_first, without_proof);
	if (sc->auth_message == NULL || !scram_client_proof(sc, proof))
		goto out;
	proof_b64 = b64_encode(proof, sizeof(proof));
	if (proof_b64 != NULL)
		sc->client_final = str_printf("%s,p=%s", without_proof, proof_b64);
	ok = sc->client_final != NULL;
out:
	OPENSSL_cleanse(proof, sizeof(proof));
	free(without_proof);
	free(proof_b64);
	return ok;
}

const char *pgauth_scram_client_final(ScramClient *sc, const uint8_t *server_first, size_t len,
				      const char **why)
{
	ScramServerFirst sf;
	char *raw = NULL, *fields = NULL;

	if (sc->state != SCRAM_STATE_FIRST) {
		*why = "SCRAM messages out of order";
		goto fail;
	}
	raw = scram_copy_message(server_first, len);
	fields = scram_copy_message(server_first, len);
	if (raw == NULL || fields == NULL) {
		*why = "malformed SCRAM server-first-message";
		goto fail;
	}
	if (!scram_parse_server_first(sc, fields, &sf, why))
		goto fail;
	if (!scram_build_final(sc, raw, &sf)) {
		*why = "SCRAM computation failed";
		goto fail;
	}
	free(raw);
	free(fields);
	sc->state = SCRAM_STATE_FINAL;
	return sc->client_final;
fail:
	free(raw);
	free(fields);
	sc->state = SCRAM_STATE_FAILED;
	return NULL;
}

/* Checks "v=<ServerSignature>" against HMAC(HMAC(SaltedPassword, "Server Key"), AuthMessage). */
static bool scram_check_signature(const ScramClient *sc, const char *v_b64, const char **why)
{
	uint8_t server_key[SCRAM_KEY_LEN], expected[SCRAM_KEY_LEN], got[SCRAM_KEY_LEN + 3];
	bool ok;

	if (b64_decode(v_b64, strlen(v_b64), got, sizeof(got)) != SCRAM_KEY_LEN) {
		*why = "malformed SCRAM server signature";
		return false;
	}
	ok = scram_hmac(sc->salted_password, "Server Key", strlen("Server Key"), server_key) &&
	     scram_hmac(server_key, sc->auth_message, strlen(sc->auth_message), expected);
	if (!ok) {
		*why = "SCRAM computation failed";
	} else if (CRYPTO_memcmp(expected, got, SCRAM_KEY_LEN) != 0) {
		*why = "SCRAM server signature does not match: the server does not know the password";
		ok = false;
	}
	OPENSSL_cleanse(server_key, sizeof(server_key));
	OPENSSL_cleanse(expected, sizeof(expected));
	return ok;
}

bool pgauth_scram_verify_server(ScramClient *sc, const uint8_t *server_final, size_t len,
				const char **why)
{
	char *msg = NULL, *f[SCRAM_MAX_FIELDS];
	const char *v;
	int n;

	if (sc->state != SCRAM_STATE_FINAL) {
		*why = "SCRAM messages out of order";
		goto fail;
	}
	msg = scram_copy_message(server_final, len);
	n = (msg != NULL) ? scram_split(msg, f, SCRAM_MAX_FIELDS) : -1;
	if (n >= 1 && scram_attr(f[0], 'e') != NULL) {
		*why = "the server reported a SCRAM error";
		goto fail;
	}
	if (n != 1 || (v = scram_attr(f[0], 'v')) == NULL) {
		*why = "malformed SCRAM server-final-message";
		goto fail;
	}
	if (!scram_check_signature(sc, v, why))
		goto fail;
	free(msg);
	sc->state = SCRAM_STATE_DONE;
	return true;
fail:
	free(msg);
	sc->state = SCRAM_STATE_FAILED;
	return false;
}

/* ---- MD5 ------------------------------------------------------------------ */

/* hex(md5(a || b)) into hex (33 bytes with the NUL). */
static bool md5_hex(const void *a, size_t alen, const void *b, size_t blen, char hex[33])
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	uint8_t d[16];
	unsigned int n = 0;
	bool ok;

	ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_md5(), NULL) == 1 &&
	     EVP_DigestUpdate(ctx, a, alen) == 1 && EVP_DigestUpdate(ctx, b, blen) == 1 &&
	     EVP_DigestFinal_ex(ctx, d, &n) == 1 && n == sizeof(d);
	EVP_MD_CTX_free(ctx);
	if (ok)
		pgv_hex(hex, d, sizeof(d));
	hex[ok ? 32 : 0] = '\0';
	OPENSSL_cleanse(d, sizeof(d));
	return ok;
}

/*
 * When MD5 is unavailable (a FIPS-only OpenSSL), out is left empty: the
 * server then rejects the empty response like a wrong password.
 */
void pgauth_md5_response(const char *user, const char *password, const uint8_t salt[4], char out[36])
{
	char inner[33];

	out[0] = '\0';
	if (!md5_hex(password, strlen(password), user, strlen(user), inner))
		goto out;
	memcpy(out, "md5", 3);
	if (!md5_hex(inner, 32, salt, 4, out + 3))
		out[0] = '\0';
out:
	OPENSSL_cleanse(inner, sizeof(inner));
}
