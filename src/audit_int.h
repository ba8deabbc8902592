/* SPDX-License-Identifier: MIT */
/*
 * Internals of the audit module shared by its three files: audit.c (the
 * public calls, the queue and the writer thread), audit_db.c (the SQLite
 * side of the writer: opening and migrating the database, writing one batch
 * in one transaction, retention) and audit_chain.c (the canonical encoding
 * of a queries row, its hash, and the verifier). The unit tests include it
 * for two hooks. Nothing outside the audit module includes this file.
 */
#ifndef PGVEIL_AUDIT_INT_H
#define PGVEIL_AUDIT_INT_H

#include <sqlite3.h>

#include "pgveil/audit.h"

#define AUDIT_SCHEMA_VERSION 2 /* PRAGMA user_version of sql/audit.sql */
#define AUDIT_HASH_HEX 65      /* 64 hex digits and the NUL */
#define AUDIT_BATCH_MAX 8192u  /* events per transaction */

typedef enum {
	AI_SESSION_START,
	AI_SESSION_END,
	AI_QUERY_START,
	AI_QUERY_FINISH,
	AI_APPROVAL,
} AuditItemKind;

/*
 * One queued event. Allocated in one block: the strings the union points to
 * follow the struct, so an item is freed with one free().
 */
typedef struct AuditItem {
	struct AuditItem *next;
	AuditItemKind kind;
	uint64_t id; /* queries row id (start, finish); unused otherwise */
	bool refused; /* a start whose row SQLite refused (too big, a constraint): set by auditdb_write */
	union {
		AuditSession session; /* AI_SESSION_START */
		struct {
			uint64_t session_id;
			int64_t ended_us;
			const char *reason;
		} end;                  /* AI_SESSION_END */
		AuditQuery query;       /* AI_QUERY_START */
		AuditOutcome outcome;   /* AI_QUERY_FINISH */
		AuditApproval approval; /* AI_APPROVAL */
	} u;
} AuditItem;

enum {
	ST_INSERT_QUERY,
	ST_SELECT_START,
	ST_FINISH_QUERY,
	ST_INSERT_CHAINED,
	ST_INSERT_SESSION,
	ST_END_SESSION,
	ST_UPSERT_APPROVAL,
	ST_LINK_APPROVAL,
	ST_INSERT_PENDING,
	ST_SELECT_PENDING,
	ST_SELECT_PENDING_UPTO,
	ST_DELETE_PENDING,
	ST_COUNT
};

/* The writer's connection and what it keeps between batches: the writer thread's alone. */
typedef struct AuditDb {
	sqlite3 *db;
	char *path;
	sqlite3_stmt *st[ST_COUNT];
	int64_t next_seq;                 /* chain_seq of the next row finished */
	char last_hash[AUDIT_HASH_HEX];   /* hash of chain_seq next_seq - 1 ('' before the first) */
	uint64_t first_query_id;          /* the first queries id this run may use */
	uint64_t session_base;            /* the largest session id the file held: this run's follow it */
	uint64_t approval_base;           /* the same for approval ids */
	bool sync_full;                   /* PRAGMA synchronous is FULL now (else NORMAL) */
	uint64_t pending_max;             /* the largest id committed into pending */
	uint64_t pending_mark;            /* pending rows up to this id move into queries at the next lazy pass */
	uint64_t pending_moved;           /* pending rows up to this id are in queries */
	const AuditItem **batch_starts;   /* the batch being written: its statement starts, in id order */
	const AuditItem **batch_outcomes; /* for each, its outcome when that is in the batch too, or NULL */
	size_t n_batch;
} AuditDb;

/*
 * Opens (creating, migrating) the database at `path` for writing, moves the
 * rows a crash left in pending into queries (unfinished), and reads where
 * the chain and the ids continue. False with "audit_db path: reason" in err.
 */
bool auditdb_open(AuditDb *d, const char *path, char *err, size_t errlen) PGV_WARN_UNUSED;
void auditdb_close(AuditDb *d);
/*
 * How a batch is written (doc/audit.md "Modes"):
 *   AUDITDB_DURABLE  strict mode's group commit, PRAGMA synchronous = FULL:
 *                    statement starts go into the small table pending;
 *                    outcomes are not written (the caller keeps them for a
 *                    lazy pass); sessions and approvals are written.
 *   AUDITDB_LAZY     synchronous = NORMAL: everything in the list; a row
 *                    whose start is in the list, or in pending, is inserted
 *                    whole with its outcome and chained; pending rows that
 *                    waited a whole pass move into queries unfinished.
 *   AUDITDB_LAST     the same, and every pending row moves (clean stop).
 */
typedef enum { AUDITDB_DURABLE, AUDITDB_LAZY, AUDITDB_LAST } AuditPass;
/*
 * Writes the items of the list in one transaction and commits. A row that
 * SQLite refuses by itself (a constraint) is logged and skipped; any other
 * failure rolls everything back, leaves the chain where it was and returns
 * false with "audit_db path: reason" in err.
 */
bool auditdb_write(AuditDb *d, AuditItem *items, AuditPass pass, char *err, size_t errlen) PGV_WARN_UNUSED;
/* Whether pending holds rows a lazy pass has still to move or finish. */
bool auditdb_pending_left(const AuditDb *d);
/*
 * Retention: removes what is older than now_us - retention_s (see
 * doc/audit.md), at most `limit` rows of each kind in one transaction, and
 * records a checkpoint when chained rows went; *more says older rows are
 * left for another call. max_query_id is the largest id this run handed
 * out, kept in the checkpoint so ids are never reused. False with err on a
 * database failure (nothing removed).
 */
bool auditdb_prune(AuditDb *d, uint64_t retention_s, int64_t now_us, uint64_t max_query_id, size_t limit,
                   bool *more, char *err, size_t errlen) PGV_WARN_UNUSED;
/* Runs SQL on the writer's connection (tests). */
bool auditdb_exec(AuditDb *d, const char *sql, char *err, size_t errlen) PGV_WARN_UNUSED;

/* "2026-11-24T00:41:07.123456Z" for microseconds since the epoch. */
void audit_format_time(int64_t us, char buf[32]);

/*
 * The columns a row's hash covers, in order (prev_hash first); a statement
 * selecting exactly these (and possibly more after them) can be hashed by
 * audit_chain_hash_row.
 */
#define AUDIT_CHAIN_COLUMNS                                                                                  \
	"prev_hash, id, session_id, ts, subject, database, sql, fingerprint, classes, decision, rule, "      \
	"masked_columns, rows, duration_ms, sqlstate, error, approval_id, chain_seq"

/* Their positions. */
enum {
	CH_PREV_HASH,
	CH_ID,
	CH_SESSION_ID,
	CH_TS,
	CH_SUBJECT,
	CH_DATABASE,
	CH_SQL,
	CH_FINGERPRINT,
	CH_CLASSES,
	CH_DECISION,
	CH_RULE,
	CH_MASKED_COLUMNS,
	CH_ROWS,
	CH_DURATION_MS,
	CH_SQLSTATE,
	CH_ERROR,
	CH_APPROVAL_ID,
	CH_CHAIN_SEQ,
	AUDIT_CHAIN_NCOLS
};

/* A value as SQLite stores it: its storage class (SQLITE_INTEGER, _FLOAT, _TEXT, _BLOB, _NULL) and bytes. */
typedef struct AuditValue {
	int type;
	int64_t i;     /* SQLITE_INTEGER */
	double r;      /* SQLITE_FLOAT */
	const void *p; /* SQLITE_TEXT, SQLITE_BLOB: n bytes, borrowed */
	size_t n;
} AuditValue;

/* Text (NULL for a NULL pointer), integer and real values; the text is borrowed. */
AuditValue audit_value_text(const char *s);
AuditValue audit_value_int(int64_t i);
AuditValue audit_value_real(double r);
/* Column `col` of the current row of st (borrowed until st moves on). */
AuditValue audit_value_column(sqlite3_stmt *st, int col);

/* Hex SHA-256 of the canonical encoding (doc/audit.md) of a row's chained values. */
bool audit_chain_hash(const AuditValue v[AUDIT_CHAIN_NCOLS], char out[AUDIT_HASH_HEX]) PGV_WARN_UNUSED;
/* The same for the first AUDIT_CHAIN_NCOLS columns of the current row of st. */
bool audit_chain_hash_row(sqlite3_stmt *st, char out[AUDIT_HASH_HEX]) PGV_WARN_UNUSED;

/* ---- test hooks (audit.c) ---- */

/* The number of unwritten statement rows at which audit_query_start says AUDIT_FULL (default 65536). */
void audit_test_set_queue_max(size_t n);
/* Rows retention removes in one transaction (default AUDIT_PRUNE_CHUNK; 0: the default). */
void audit_test_set_prune_chunk(size_t n);
/* Runs `sql` on the writer's connection from the writer thread, between two batches; waits for it. */
bool audit_test_exec(const char *sql, char *err, size_t errlen) PGV_WARN_UNUSED;

#endif
