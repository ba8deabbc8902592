/* SPDX-License-Identifier: MIT */
/*
 * Agent identity from OIDC JWTs. Loads JWKS documents (RSA, EC and oct
 * keys) into OpenSSL keys, verifies tokens with libjwt under the [oidc]
 * settings (key by kid, algorithm allow-list, algorithm/key-type match,
 * iss, aud, exp, nbf, iat with clock skew), and extracts the subject and
 * groups along dotted claim paths. Also mints tokens and prints JWKS for
 * pgveil-token, and slows down addresses that keep failing. The only module
 * that includes jwt.h.
 */
#ifndef PGVEIL_JWTAUTH_H
#define PGVEIL_JWTAUTH_H

#include <sys/socket.h>
#include <time.h>

#include "pgveil/common.h"
#include "pgveil/config.h"

#define JWT_MAX_TOKEN_LEN 65536
#define JWT_MAX_GROUPS 256

/* Who an agent is, for every later decision. */
typedef struct Identity {
	char *subject;        /* from subject_claim */
	char **groups;        /* from groups_claim, may be empty */
	int n_groups;         /* entries in groups */
	int64_t expires_at;   /* exp, Unix seconds */
} Identity;

/* Why a token was refused: decides the SQLSTATE the client sees. */
typedef enum {
	JWT_OK,
	JWT_INVALID,          /* 28P01: the token does not prove anything */
	JWT_FORBIDDEN,        /* 28000: valid token, but not allowed here */
	JWT_UNKNOWN_KID,      /* 28P01 unless a JWKS refresh finds the key */
} JwtResult;

/*
 * Builds the verifier for cfg's [oidc] section, loading jwks_file if set.
 * Returns NULL with err filled when the section is incomplete or the JWKS is
 * unusable. Returns NULL with err[0] == '\0' when [oidc] is not configured.
 */
JwtVerifier *jwtauth_new(const Config *cfg, char *err, size_t errlen);
void jwtauth_free(JwtVerifier *v);

/* The jwks_uri fetcher attached to a verifier (owned by it once set). */
typedef struct JwksFetcher JwksFetcher;
void jwtauth_set_fetcher(JwtVerifier *v, JwksFetcher *f);
JwksFetcher *jwtauth_get_fetcher(JwtVerifier *v);

/*
 * Replaces the key set with the keys of a JWKS document (json text).
 * Returns false (keeping the old keys) with err filled when it has no usable key.
 */
bool jwtauth_set_jwks(JwtVerifier *v, const char *json, size_t len, char *err, size_t errlen) PGV_WARN_UNUSED;
/* Starts dst with src's current keys (a reload keeps fetched keys until the next fetch). */
void jwtauth_adopt_keys(JwtVerifier *dst, JwtVerifier *src);
/* Number of keys currently loaded. */
int jwtauth_key_count(JwtVerifier *v);

/*
 * Verifies `token` at time `now` (Unix seconds). On JWT_OK fills *id (free
 * with jwtauth_identity_clear). Otherwise `why` says precisely why, for the
 * log; it never contains the token.
 */
JwtResult jwtauth_verify(JwtVerifier *v, const char *token, time_t now, const char *startup_user, Identity *id,
			 char *why, size_t whylen);
void jwtauth_identity_clear(Identity *id);
/* True when the identity's groups include one of `list`. */
bool jwtauth_in_groups(const Identity *id, const NameList *list);

/* ---- failure throttling (shared by all workers) ------------------------------ */

/* Milliseconds to hold a failure answer to this address (0 = none). */
uint32_t jwtauth_throttle_delay(const struct sockaddr *addr);
/* Records an outcome for this address; success clears its history. */
void jwtauth_throttle_record(const struct sockaddr *addr, bool success);

/* ---- minting (pgveil-token) --------------------------------------------------------- */

typedef struct MintParams {
	const char *key_pem_file; /* private key, RSA or EC (P-256/384/521) */
	const char *kid;          /* header kid, or NULL */
	const char *alg;          /* NULL = from the key type */
	const char *sub, *iss, *aud;
	const char *groups;       /* comma-separated, or NULL */
	const char *groups_claim; /* claim name for groups, default "groups" */
	long ttl;                 /* seconds from now until exp; may be negative */
	long nbf_offset;          /* nbf = now + offset, when has_nbf */
	bool has_nbf;
} MintParams;

/* Returns a signed token (malloc'd) or NULL with err filled. */
char *jwtauth_mint(const MintParams *p, char *err, size_t errlen);
/* Returns a JWKS document (malloc'd) with the public part of a PEM key, or NULL with err. */
char *jwtauth_jwks_for_key(const char *pem_file, const char *kid, char *err, size_t errlen);

#endif
