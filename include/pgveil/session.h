/* SPDX-License-Identifier: MIT */
/*
 * One client connection from accept to close: the startup phase (TLS,
 * StartupMessage, CancelRequest), logging in to the server through a
 * Backend, and the query-phase relay in both directions with backpressure.
 * A session lives on one worker thread; nothing in it is shared.
 */
#ifndef PGVEIL_SESSION_H
#define PGVEIL_SESSION_H

#include <sys/socket.h>
#include <time.h>

#include "pgveil/cancel.h"
#include "pgveil/common.h"
#include "pgveil/config.h"
#include "pgveil/jwtauth.h"
#include "pgveil/pgproto.h"
#include "pgveil/relay.h"

struct event;
typedef struct AdminConsole AdminConsole;

typedef enum {
	SESS_STARTUP,    /* reading SSLRequest / GSSENCRequest / StartupMessage / CancelRequest */
	SESS_TLS,        /* TLS handshake toward the client */
	SESS_AUTH,       /* waiting for the client's token (cleartext password message) */
	SESS_CONNECTING, /* logging in to the server */
	SESS_ACTIVE,     /* query phase: relaying */
	SESS_ADMIN,      /* the admin console: no server, queries answered by admin_query() */
	SESS_CLOSING,    /* torn down; freed on the next loop turn */
} SessionState;

struct Session {
	uint64_t id;                 /* process-unique, for logs */
	Worker *worker;              /* owning worker */
	Config *cfg;                 /* snapshot taken at accept */
	_Atomic SessionState state;  /* see above (atomic: SHOW SESSIONS reads it from other threads) */
	Stream *client;              /* the client socket */
	Backend *backend;            /* the server connection, once started */
	Stream *server;              /* backend's stream once SESS_ACTIVE */
	Relay *relay;                /* query-phase state, once SESS_ACTIVE */
	struct event *timer;         /* startup_timeout until SESS_ACTIVE */
	struct event *free_ev;       /* deferred free */
	CancelEntry cancel;          /* our BackendKeyData, registered */
	uint8_t *startup_pkt;        /* owned copy of the StartupMessage */
	PgStartup startup;           /* parsed; strings point into startup_pkt */
	const char *user;            /* startup user name */
	const char *database;        /* requested database */
	const DbEntry *db;           /* its [databases] entry */
	Identity identity;           /* who the agent is (subject empty under dev_trust_auth) */
	char app_name[64];           /* application_name sent to the server */
	struct event *expiry;        /* fires when the token expires */
	bool token_expired;          /* no new statement may start */
	const char *deferred_state;  /* SQLSTATE of a delayed authentication failure */
	char *pending_token;         /* token kept while the JWKS is refreshed for its kid */
	struct event *jwks_wake;     /* activated when that refresh ends */
	_Atomic uint32_t client_pass;/* bytes of a client message still to be passed through (atomic, as state) */
	uint32_t server_pass;        /* the same toward the client */
	_Atomic int pending_ready;   /* Query/Sync/FunctionCall sent, ReadyForQuery not yet seen (atomic, as state) */
	_Atomic char txn_status;     /* last ReadyForQuery status: 'I', 'T' or 'E' (atomic, as state) */
	bool over_limit;             /* accepted beyond max_client_conn */
	bool tls_done;               /* client side encrypted */
	bool shutdown_pending;       /* close when idle */
	bool server_sent_fatal;      /* the server already told the client why it goes */
	bool client_eof;             /* the client half-closed: answer what it sent, then end */
	bool audited;                /* its start is in the audit log: its end goes there too */
	char addr[64];               /* client address as text */
	struct sockaddr_storage peer;/* client address */
	char ctx[192];               /* log context */
	time_t started_at;           /* wall clock at accept, for SHOW SESSIONS */
	AdminConsole *console;       /* SESS_ADMIN: the console's state */
	bool admin_skip;             /* SESS_ADMIN: skipping extended-protocol messages until Sync */
	bool admin_busy;             /* SESS_ADMIN: a command waits for the audit log; the client is not read */
	struct event *admin_wake;    /* SESS_ADMIN: activated when it can go on (or a CancelRequest came) */
	/* Published to other threads (under the worker's lock): */
	bool listed;                 /* logged in: shown by SHOW SESSIONS, may be killed */
	bool kill_requested;         /* KILL SESSION / BLOCK AGENT asked the worker to end it */
	Session *wnext, *wprev;      /* worker's session list */
};

/*
 * Creates a session for an accepted socket on worker w (its thread). Takes
 * ownership of fd on success; returns NULL (fd untouched) on failure.
 */
Session *session_create(Worker *w, Config *cfg, int fd, const struct sockaddr *addr, socklen_t addrlen,
			bool over_limit);

/*
 * Ends the session with a FATAL ErrorResponse to the client. The session is
 * freed on the next loop turn, never inside the caller's stack.
 */
void session_fail(Session *s, const char *sqlstate, const char *fmt, ...) PGV_PRINTF(3, 4);

/* Closes without a message (client went away, cancel request served). */
void session_close(Session *s, const char *reason);

/*
 * Graceful shutdown: an idle session ends now with 57P01; a busy one when
 * its work finishes. force = true ends it now regardless.
 */
void session_shutdown(Session *s, bool force);

/* Ends the session now with FATAL 57P01 "terminated by administrator command" (its worker's thread). */
void session_kill(Session *s);

/*
 * What the session is doing, as SHOW SESSIONS says it: "idle", "active",
 * "idle in transaction", "idle in transaction (aborted)", "admin", or the
 * login phase. Any thread (under the worker's lock, so that s stays): the
 * fields it reads are atomic, and the answer may be a moment old.
 */
const char *session_state_text(const Session *s);

/* Numbers the sessions from `id` on (the audit log's ids continue across restarts). Before any session starts. */
void session_set_first_id(uint64_t id);

/*
 * Whether pgveil reads statement text as the server does under a setting
 * the server reports (ParameterStatus): standard_conforming_strings on, and
 * a client_encoding whose characters cannot hide a quote or a backslash.
 */
bool session_setting_readable(const char *name, const char *value);

#endif
