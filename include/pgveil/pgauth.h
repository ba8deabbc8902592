/* SPDX-License-Identifier: MIT */
/*
 * Client-side password authentication toward the PostgreSQL server:
 * SCRAM-SHA-256 (RFC 5802 / RFC 7677, without channel binding) and the
 * legacy MD5 scheme. Pure computation over OpenSSL; no I/O.
 */
#ifndef PGVEIL_PGAUTH_H
#define PGVEIL_PGAUTH_H

#include "pgveil/common.h"

typedef struct ScramClient ScramClient;

/*
 * Starts a SCRAM-SHA-256 exchange for `password` (SASLprep is applied as
 * PostgreSQL's libpq does: a password that is not valid UTF-8 or fails
 * SASLprep is used as raw bytes). Returns NULL on allocation failure.
 */
ScramClient *pgauth_scram_new(const char *password) PGV_WARN_UNUSED;
/* For tests: the same with a fixed client nonce (printable ASCII, no ','). */
ScramClient *pgauth_scram_new_with_nonce(const char *password, const char *nonce) PGV_WARN_UNUSED;
void pgauth_scram_free(ScramClient *sc);

/*
 * The client-first-message ("n,,n=,r=<nonce>"). The returned string is owned
 * by sc and valid until the next call.
 */
const char *pgauth_scram_client_first(ScramClient *sc);

/*
 * Consumes the server-first-message (len bytes, not NUL-terminated) and
 * returns the client-final-message (owned by sc), or NULL with *why set to
 * a static description (bad nonce, bad salt, iteration count out of range…).
 */
const char *pgauth_scram_client_final(ScramClient *sc, const uint8_t *server_first, size_t len,
				      const char **why);

/*
 * Checks the server-final-message's signature. Returns false with *why when
 * the server did not prove it knows the password (or sent "e=...").
 */
bool pgauth_scram_verify_server(ScramClient *sc, const uint8_t *server_final, size_t len,
				const char **why) PGV_WARN_UNUSED;

/*
 * MD5 authentication response: "md5" + hex(md5(hex(md5(password + user)) + salt)),
 * written with its NUL into out (36 bytes).
 */
void pgauth_md5_response(const char *user, const char *password, const uint8_t salt[4], char out[36]);

/* ---- testing only ------------------------------------------------------------ */

/*
 * pgauth_scram_new_with_nonce() with a SCRAM user name in the
 * client-first-message ("n=<user>"). PostgreSQL ignores that name and pgveil
 * always sends it empty; this exists so the RFC 7677 test vector, which uses
 * "n=user", can be checked. `user` must not contain ',' or '='. Returns NULL
 * on a bad nonce or user, or on allocation failure.
 */
ScramClient *pgauth_scram_new_full(const char *password, const char *nonce, const char *user) PGV_WARN_UNUSED;

#endif
