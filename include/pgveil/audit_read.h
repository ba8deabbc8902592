/* SPDX-License-Identifier: MIT */
/*
 * Auditors' read-only SQL over the audit database, off the event loops. A
 * small pool of reader threads takes requests one at a time, opens the audit
 * database read-only for each (SQLITE_OPEN_READONLY, PRAGMA query_only),
 * runs the one statement, keeps the whole result within the limits and wakes
 * the requesting session through an event of its base. What a statement may
 * do is decided by SQLite itself, never by looking at the text: an
 * authorizer that allows only reads (SELECT, reading tables, recursive CTEs
 * and an allow-list of built-in functions) and refuses everything else,
 * extension loading switched off, no ATTACH, one statement per request, and
 * sqlite3_stmt_readonly() required after preparing. Errors come back with a
 * PostgreSQL SQLSTATE. Only this module and audit include sqlite3.h.
 */
#ifndef PGVEIL_AUDIT_READ_H
#define PGVEIL_AUDIT_READ_H

#include "pgveil/common.h"

struct event;

/* Defaults, used for a limit given as 0. */
#define AUDIT_READ_MAX_ROWS 100000
#define AUDIT_READ_MAX_BYTES (32u << 20)  /* of result values, as sent (4 bytes per field + the text) */
#define AUDIT_READ_TIMEOUT_MS 30000u
#define AUDIT_READ_THREADS 4              /* readers started as requests need them */

/* PostgreSQL type OIDs of result columns. */
#define AUDIT_READ_OID_BYTEA 17
#define AUDIT_READ_OID_INT8 20
#define AUDIT_READ_OID_TEXT 25
#define AUDIT_READ_OID_FLOAT8 701

typedef struct AuditReadLimits {
	int64_t max_rows;     /* more rows: error 54000; 0 = AUDIT_READ_MAX_ROWS */
	size_t max_bytes;     /* more bytes: error 54000; 0 = AUDIT_READ_MAX_BYTES */
	uint32_t timeout_ms;  /* running longer: error 57014; 0 = AUDIT_READ_TIMEOUT_MS */
} AuditReadLimits;

/*
 * A statement's outcome: an error (sqlstate[0] != '\0') or a result set.
 * Column types: a column whose values are all integers is int8, all
 * numbers float8, all blobs bytea, anything else (text, or a mix) text;
 * a column with no value but NULL takes its declared type's affinity
 * (INTEGER int8, REAL float8, BLOB bytea, else text). Values are text in
 * PostgreSQL's output format (bytea as \x hex, float8 shortest round trip,
 * text made valid UTF-8 without NUL bytes).
 */
typedef struct AuditReadResult {
	char sqlstate[6];     /* "" on success */
	char *message;        /* the error, NULL on success */
	char *hint;           /* NULL or a hint for the error */
	int err_offset;       /* byte offset in the statement text the error is about, -1 = none */
	int n_cols;
	char **col_names;     /* n_cols strings */
	uint32_t *col_types;  /* n_cols PostgreSQL type OIDs (AUDIT_READ_OID_*) */
	int64_t n_rows;
	int64_t *cells;       /* n_rows * n_cols offsets into data, -1 for NULL */
	char *data;           /* the values, each NUL-terminated */
	size_t data_len;
} AuditReadResult;

/* The value at (row, col), NUL-terminated, or NULL for SQL NULL. */
const char *audit_read_value(const AuditReadResult *res, int64_t row, int col);
void audit_read_result_free(AuditReadResult *res);

/*
 * Runs one statement now, in the calling thread (a reader thread, or a
 * test; never an event loop). `interrupt`, when not NULL, is polled while
 * the statement runs: non-zero stops it with 57014 "canceling statement due
 * to user request". Returns a result to free with audit_read_result_free(),
 * or NULL without memory.
 */
AuditReadResult *audit_read_run(const char *db_path, const char *sql, const AuditReadLimits *lim,
				const int *interrupt);

typedef struct AuditRead AuditRead;

/*
 * Queues sql against db_path (both copied) for a reader thread; `done`, an
 * event of the caller's base, is activated once the result is there. NULL
 * when the request cannot be queued (no memory, no thread could start).
 * The handle stays the caller's until audit_read_take() returned a result
 * or audit_read_cancel() was called.
 */
AuditRead *audit_read_submit(const char *db_path, const char *sql, const AuditReadLimits *lim,
			     struct event *done) PGV_WARN_UNUSED;
/*
 * The result once `done` has fired: returns it (the caller frees it) and
 * ends the handle. NULL while the statement still runs (the event was
 * activated for another reason); the handle stays valid then.
 */
AuditReadResult *audit_read_take(AuditRead *r);
/*
 * Asks a running statement to stop as a user's cancel does (57014): its
 * result still arrives through `done`. The handle stays valid.
 */
void audit_read_interrupt(AuditRead *r);
/*
 * Forgets the request (its session goes away): a running statement is
 * stopped, the result is thrown away, and after this returns `done` is
 * never activated for it. Ends the handle. NULL is allowed.
 */
void audit_read_cancel(AuditRead *r);

/* Stops the reader threads (waiting for running statements to be stopped) and drops queued requests. */
void audit_read_stop(void);

#endif
