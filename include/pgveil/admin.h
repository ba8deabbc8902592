/* SPDX-License-Identifier: MIT */
/*
 * The admin console: the virtual database `admin_db`, reached with a JWT
 * whose groups include an admin, approver or auditor group. It speaks the
 * simple query protocol: SHOW HELD / GRANTS / SESSIONS / RULES / STATS,
 * APPROVE, DENY, REVOKE GRANT, KILL SESSION, BLOCK / UNBLOCK AGENT, RELOAD,
 * and for auditors SHOW SESSION n and read-only SQL over the audit
 * database, which run on the audit_read threads: the console waits for them
 * without blocking its worker. Each group may run only its own commands.
 * Results are proper result sets (RowDescription, DataRow, CommandComplete)
 * so psql shows them as tables. Also keeps the process-wide statement
 * counters shown by SHOW STATS.
 */
#ifndef PGVEIL_ADMIN_H
#define PGVEIL_ADMIN_H

#include "pgveil/common.h"
#include "pgveil/config.h"
#include "pgveil/jwtauth.h"
#include "pgveil/pgproto.h"

/* Roles a caller has on the console (bits). */
#define ADMIN_ROLE_ADMIN 1
#define ADMIN_ROLE_APPROVER 2
#define ADMIN_ROLE_AUDITOR 4

/*
 * Counters for SHOW STATS (atomic, any thread). The statement relay counts
 * them where it decides; the approval registry and the console count
 * nothing themselves, so each event is counted once.
 */
typedef enum {
	STAT_STATEMENTS,   /* statements analysed */
	STAT_ALLOWED,
	STAT_BLOCKED,
	STAT_HELD,
	STAT_APPROVED,
	STAT_DENIED,
	STAT_TIMED_OUT,    /* hold_timeout or client cancel */
	STAT_GRANTED,      /* held statements allowed by a grant */
	STAT_CACHE_HITS,   /* statement analyses served from the cache */
	STAT_N
} AdminStat;

void admin_stat_add(AdminStat which, uint64_t n);
uint64_t admin_stat_get(AdminStat which);

/* The caller's roles on the console under cfg (0 = none: refuse the login). */
int admin_roles(const Config *cfg, const Identity *id);

struct event;

typedef struct AdminConsole AdminConsole;

/* Whether a Query message is answered in full, or waits for the audit log. */
typedef enum {
	ADMIN_DONE,        /* the whole answer is in `out`: send it and ReadyForQuery */
	ADMIN_WAIT,        /* `out` holds the answer so far; `wake` fires when admin_resume() can go on */
} AdminStatus;

/*
 * Opens a console for an authenticated caller. The identity is not copied:
 * it must outlive the console (its groups are checked again after a
 * reload). `wake` is an event of the session's base, activated (from
 * another thread) when a command waiting for the audit log can go on; the
 * console never frees it. NULL: commands reading the audit log are refused.
 * NULL on allocation failure.
 */
AdminConsole *admin_open(const Identity *id, int roles, uint64_t session_id, struct event *wake);
/* Closes the console; a read of the audit log still running is stopped and `wake` is never activated after. */
void admin_close(AdminConsole *ac);

/*
 * Runs one Query message's text (one or more commands separated by ';').
 * Appends the response to `out` except ReadyForQuery: per command a result
 * set or CommandComplete, or an ErrorResponse (42501 for a command the
 * caller's groups may not run, 42601 for a syntax error with its position)
 * which ends the string as in PostgreSQL. ADMIN_WAIT when a command reads
 * the audit log: the caller sends what `out` holds, stops reading its
 * client, and calls admin_resume() when `wake` fires. Must not be called
 * while the console waits.
 */
AdminStatus admin_query(AdminConsole *ac, const char *sql, PgBuf *out);
/*
 * After `wake` fired: appends the waiting command's answer and runs the
 * commands after it. ADMIN_WAIT again when the wake-up was early (the read
 * still runs) or a later command reads the audit log too.
 */
AdminStatus admin_resume(AdminConsole *ac, PgBuf *out);
/* A CancelRequest for the console: a read of the audit log still running stops with 57014. */
void admin_cancel(AdminConsole *ac);

#endif
