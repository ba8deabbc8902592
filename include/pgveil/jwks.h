/* SPDX-License-Identifier: MIT */
/*
 * Fetching the JWKS from [oidc] jwks_uri over HTTPS (libevent's HTTP client
 * on the main loop). Keys are fetched at start, cached, refreshed when a
 * token names an unknown kid (at most once a minute), and kept when a fetch
 * fails. Sessions waiting for a refresh are woken on their own worker loop.
 */
#ifndef PGVEIL_JWKS_H
#define PGVEIL_JWKS_H

#include "pgveil/common.h"
#include "pgveil/config.h"

struct event_base;
struct event;

typedef struct JwksFetcher JwksFetcher;

/*
 * Starts fetching cfg's jwks_uri on main_base (nothing to do without one).
 * The fetcher is attached to the verifier and lives as long as the Config.
 * Returns false with err filled for an unusable URI.
 */
bool jwks_start(Config *cfg, struct event_base *main_base, char *err, size_t errlen) PGV_WARN_UNUSED;

/*
 * Asks for a refresh because a token named an unknown key. Returns false
 * when no refresh may happen now (no jwks_uri, or the last one was less than
 * jwks_min_refresh ago, one minute by default). Otherwise `wake` (an event of the caller's loop) is
 * activated once the fetch finished, successfully or not; the caller must
 * call jwks_cancel_wait() if it goes away first.
 */
bool jwks_wait_refresh(JwtVerifier *v, struct event *wake);
void jwks_cancel_wait(JwtVerifier *v, struct event *wake);

/* Frees the fetcher of a verifier (called when the Config is freed). */
void jwks_free(JwksFetcher *f);

#endif
