/* SPDX-License-Identifier: MIT */
/*
 * Connections to the real PostgreSQL server: connect to a [databases]
 * entry, negotiate TLS per its sslmode, send the StartupMessage with the
 * entry's credentials plus the client's pass-through settings, answer the
 * server's authentication (trust, cleartext, MD5, SCRAM-SHA-256), and wait
 * for the first ReadyForQuery. Also sends CancelRequests to a server.
 */
#ifndef PGVEIL_BACKEND_H
#define PGVEIL_BACKEND_H

#include <sys/socket.h>

#include "pgveil/common.h"
#include "pgveil/config.h"
#include "pgveil/pgproto.h"

struct event_base;
struct evdns_base;

/* Called once the server sent its first ReadyForQuery. */
typedef void (*BackendReadyCb)(Backend *be, void *arg);
/*
 * Called once when connecting or logging in failed. `sqlstate` and `message`
 * are fit for the client: server login details are in the log, not here.
 */
typedef void (*BackendFailCb)(Backend *be, const char *sqlstate, const char *message, void *arg);

/*
 * Starts connecting to `db`; host names are resolved through `dns` first. `params` are the client's settings to
 * pass through (never user/database: the entry's credentials are used).
 * `ctx` names the session in log lines. Returns NULL with *why when it
 * failed at once; otherwise exactly one of ready/fail is called later.
 */
Backend *backend_connect(struct event_base *base, struct evdns_base *dns, const DbEntry *db, uint64_t timeout_ms, const PgStartupParam *params, int n_params, const char *ctx,
			 BackendReadyCb ready, BackendFailCb fail, void *arg, const char **why) PGV_WARN_UNUSED;

/* The socket stream, for the session's relay once ready. */
Stream *backend_stream(Backend *be);
/* ParameterStatus and NoticeResponse messages the server sent during startup, raw. */
const uint8_t *backend_startup_messages(Backend *be, size_t *len);
/* The address actually connected to (for cancel requests). */
const BackendAddr *backend_get_addr(const Backend *be);
/* The server's BackendKeyData. */
void backend_get_key(const Backend *be, uint32_t *pid, uint32_t *key);
/* Frees the connection (closes the socket). Not from inside its own callbacks. */
void backend_free(Backend *be);

/*
 * Fire-and-forget CancelRequest for (pid, key) to the server at `addr`. The
 * connection frees itself when the server closes it or after a few seconds.
 */
void backend_send_cancel(struct event_base *base, const BackendAddr *addr, uint32_t pid, uint32_t key);
/* Frees the cancel requests still in flight on this thread (a worker that stops). */
void backend_free_cancel_jobs(void);

#endif
