/* SPDX-License-Identifier: MIT */
/*
 * The audit log (INTERFACE §6): every session, statement and approval in a
 * SQLite database (sql/audit.sql), written by one writer thread fed by a
 * bounded queue; the event loops never call SQLite. WAL mode, batched
 * transactions. audit_mode = async: rows are queued and written within a
 * fraction of a second; strict: a statement is forwarded only once its row
 * is durable (group commit: one transaction and fsync for every row that
 * arrived meanwhile), and when the database cannot be written statements are
 * refused. Queries rows form a hash chain (hash = SHA-256(prev_hash || row))
 * that `pgveil --verify-audit FILE` walks. Only this module and admin
 * include sqlite3.h.
 *
 * A statement's row is started when pgveil decides it (audit_query_start)
 * and finished when its outcome is known (audit_query_finish: rows,
 * duration, SQLSTATE, masked columns). The chain is made in the order rows
 * are finished, so every hashed row is final; a row started and never
 * finished (pgveil was killed while it ran) stays without a hash and the
 * verifier reports it as unfinished, not as tampering.
 */
#ifndef PGVEIL_AUDIT_H
#define PGVEIL_AUDIT_H

#include "pgveil/common.h"
#include "pgveil/config.h"

struct event;

/* A session's row. Strings are copied; NULL allowed where noted (elsewhere NULL is stored as ''). */
typedef struct AuditSession {
	uint64_t session_id;       /* pgveil's session id */
	int64_t started_us;        /* microseconds since the epoch */
	const char *subject;       /* "" under dev_trust_auth */
	const char *groups;        /* comma-separated, may be "" */
	const char *client_addr;
	const char *database;      /* the client-side database name */
	const char *backend_user;  /* the [databases] entry's user, NULL for the admin console */
	bool tls;
} AuditSession;

/* A statement's row at decision time. */
typedef struct AuditQuery {
	uint64_t session_id;
	int64_t ts_us;             /* when pgveil received the statement */
	const char *subject;
	const char *database;
	const char *sql;           /* as sent, or normalized when audit_redact_literals (the caller decides) */
	const char *fingerprint;   /* hex of the statement's shape hash, NULL when unknown */
	const char *classes;       /* "SELECT,READ" */
	const char *decision;      /* allow | block | approve | deny | timeout */
	const char *rule;          /* "file:line", NULL for default_action or no rule */
	uint64_t approval_id;      /* 0: none */
} AuditQuery;

/* What a statement ended with. */
typedef struct AuditOutcome {
	int64_t rows;              /* rows returned or affected, -1 unknown */
	int64_t duration_us;       /* from receipt to completion, -1 unknown */
	const char *sqlstate;      /* NULL: success */
	const char *error;         /* the error message the client got, NULL on success */
	const char *masked_columns;/* "public.users.email,public.users.ssn", NULL when none */
} AuditOutcome;

typedef enum {
	AUDIT_OK = 0,
	AUDIT_FULL,                /* the queue is full (async): try again when `room` fires */
	AUDIT_FAILED,              /* the database cannot be written (strict: refuse the statement); see audit_error() */
	AUDIT_OFF,                 /* no audit_db configured: nothing recorded */
} AuditStatus;

/*
 * Opens (creates or migrates: PRAGMA user_version) cfg->audit_db and starts
 * the writer. Without audit_db does nothing (AUDIT_OFF everywhere). False
 * with a message ("audit_db path: reason") when the database cannot be
 * opened or its schema is from a newer pgveil.
 */
bool audit_start(const Config *cfg, char *err, size_t errlen) PGV_WARN_UNUSED;
/* A reload: mode and retention follow; a changed audit_db path is refused with a log line (restart needed). */
void audit_reconfigure(const Config *cfg);
/*
 * Writes every queued row, then stops the writer and closes the database
 * (SIGTERM, clean exit). Call it after the event loops whose `durable` and
 * `room` events were handed in are stopped: pending wake-ups are dropped,
 * never activated. When the database still cannot be written after a few
 * tries a second apart, what is left is counted in an error log line.
 */
void audit_stop(void);

/* The current mode; AUDIT_OFF-like when not started: audit_enabled() false. */
bool audit_enabled(void);
bool audit_strict(void);

/*
 * Queues a session's start. Never blocks. AUDIT_FULL: the queue holds four
 * times as many unwritten events as statement rows may wait (the database
 * cannot be written, or not fast enough), AUDIT_FAILED: no memory; either
 * way nothing is queued and the login must be refused: this is what keeps
 * the queue bounded while the database cannot be written.
 */
AuditStatus audit_session_start(const AuditSession *s) PGV_WARN_UNUSED;
/*
 * Queues a session's end (end_reason: "client closed", "token expired",
 * "killed by admin", ...). Never blocks; a full queue makes it wait in the
 * overflow rather than be lost.
 */
void audit_session_end(uint64_t session_id, int64_t ended_us, const char *end_reason);

/*
 * Queues a statement's row; *id gets its row id (> 0), to finish it later.
 * `durable` (an event of the caller's base) is for a statement that waits
 * for its row: pass it in strict mode (audit_strict() before the call) and
 * NULL in async mode. When given, it is activated once the row is committed
 * (or the commit failed: check audit_query_durable) — whatever the mode is
 * by then, so a reload changing audit_mode cannot leave the statement
 * waiting forever; the statement must not be forwarded before. One pending
 * answer per event: a new row given the same event drops the answer of the
 * previous one. AUDIT_FULL (async, queue full): nothing queued; `room` (an
 * event of the caller's base) is activated when there is room again — the
 * session stops reading its client meanwhile. `room` NULL: the row goes in
 * even past the bound (the rest of a message whose first row went in, so
 * that a message is recorded whole). AUDIT_FAILED: strict mode and the database
 * cannot be written (or no memory); the statement must be refused.
 */
AuditStatus audit_query_start(const AuditQuery *q, struct event *durable, struct event *room, uint64_t *id)
	PGV_WARN_UNUSED;
/*
 * After `durable` (the event given with row `id`; the answer is found by
 * it, in constant time however many sessions wait) fired: AUDIT_OK when
 * row `id` is committed, AUDIT_FAILED
 * when it could not be (the row is kept and written once the database can
 * be written again, but the statement must be refused). Asked once per
 * row: the answer is forgotten when given. Asked before `durable` fired:
 * AUDIT_FAILED. For a row without an answer (none was asked for, or it was
 * already given): AUDIT_FAILED in strict mode, AUDIT_OK in async mode.
 */
AuditStatus audit_query_durable(struct event *durable, uint64_t id);
/* Queues the outcome of row `id`. Never blocks and never drops (an overflow list takes what the queue cannot). */
void audit_query_finish(uint64_t id, const AuditOutcome *o);
/* Forgets pending wake-ups for these events (their session ends); after it returns they are never activated. */
void audit_forget(struct event *durable, struct event *room);

/* An approval's row (held, then decided): queued like the others. */
typedef struct AuditApproval {
	uint64_t approval_id;      /* its queries row is linked (approvals.query_id) when the row is written */
	uint64_t session_id;
	const char *subject, *sql, *rule;
	int64_t requested_us;
	int64_t decided_us;        /* 0: not decided yet */
	const char *decided_by;    /* NULL while waiting or for timeouts */
	const char *decision;      /* approve | deny | timeout | cancel, NULL while waiting */
	const char *reason;
	int64_t grant_until_us;    /* 0: no grant */
} AuditApproval;
void audit_approval(const AuditApproval *a);

/* Why the database cannot be written (strict refusals quote it), or NULL. Thread-safe; copy it. */
const char *audit_error(char *buf, size_t buflen);

/* Counters for SHOW STATS: rows written, rows waiting, commits. */
void audit_stats(uint64_t *written, uint64_t *queued, uint64_t *commits);

/*
 * The largest session and approval ids the database already holds (0 when
 * the log is off or empty). pgveil numbers this run's sessions and
 * approvals after them (main sets the counters), so ids never repeat across
 * restarts and the ids the console shows are the database's. Fixed for the
 * life of the process (audit_start logs them too).
 */
void audit_id_bases(uint64_t *session_base, uint64_t *approval_base);

/*
 * Walks the hash chain of the database at `path` (opened read-only) and
 * writes a report to `out` (FILE *): "ok: N rows, chain intact" or the first
 * altered, inserted or deleted row and why. Returns 0 when intact, 1 when
 * broken, 2 when the file cannot be read as an audit database.
 */
int audit_verify(const char *path, void *out);

#endif
