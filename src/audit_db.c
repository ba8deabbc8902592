/* SPDX-License-Identifier: MIT */
/*
 * The SQLite side of the audit writer: opening the audit database (WAL,
 * synchronous by mode, busy_timeout), creating or migrating its schema
 * (sql/audit.sql, compiled in; PRAGMA user_version), reading where the hash
 * chain and the ids continue, writing one batch of queued events in one
 * transaction (chaining each statement row as it is finished: a row whose
 * start and outcome are in the same batch is inserted once, whole), and
 * retention with its checkpoints. Everything here runs on the writer
 * thread, except auditdb_open, which audit_start calls before the thread
 * exists.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "audit_int.h"
#include "pgveil/log.h"

#define AUDIT_BUSY_TIMEOUT_MS 2000 /* how long a write waits for a lock held by another connection */

/* sql/audit.sql, turned into a string literal at build time. */
static const char audit_schema_sql[] =
#include "audit_schema.inc"
    ;

/* The columns of a start, in chain order from id to rule, then approval_id: queries' and pending's. */
#define START_COLUMNS                                                                                      \
	"id, session_id, ts, subject, database, sql, fingerprint, classes, decision, rule, approval_id"

static const char *const stmt_sql[ST_COUNT] = {
    [ST_INSERT_QUERY] = "INSERT INTO queries (" START_COLUMNS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,"
                        " ?10, ?11)",
    [ST_SELECT_START] = "SELECT " START_COLUMNS " FROM queries WHERE id = ?1 AND chain_seq IS NULL",
    /* the parameters of these two are numbered by chain position (AUDIT_CHAIN_COLUMNS), the hash ?19 */
    [ST_FINISH_QUERY] =
        "UPDATE queries SET prev_hash = ?1, masked_columns = ?12, rows = ?13, duration_ms = ?14,"
        " sqlstate = ?15, error = ?16, chain_seq = ?18, hash = ?19 WHERE id = ?2",
    [ST_INSERT_CHAINED] =
        "INSERT INTO queries (" AUDIT_CHAIN_COLUMNS ", hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6,"
        " ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
    [ST_INSERT_SESSION] = "INSERT INTO sessions (id, started_at, subject, groups, client_addr, database,"
                          " backend_user, tls) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [ST_END_SESSION] = "UPDATE sessions SET ended_at = ?2, end_reason = ?3 WHERE id = ?1",
    [ST_UPSERT_APPROVAL] = "INSERT INTO approvals (id, session_id, subject, sql, rule, requested_at,"
                           " decided_at, decided_by, decision, reason, grant_until)"
                           " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                           " ON CONFLICT (id) DO UPDATE SET"
                           " decided_at = excluded.decided_at, decided_by = excluded.decided_by,"
                           " decision = excluded.decision, reason = excluded.reason,"
                           " grant_until = excluded.grant_until",
    /* a held statement's row names its approval; the approval gets the row's id back */
    [ST_LINK_APPROVAL] = "UPDATE approvals SET query_id = ?1 WHERE id = ?2 AND query_id IS NULL",
    /* strict mode: starts committed durably before their statements run, moved into queries later */
    [ST_INSERT_PENDING] = "INSERT INTO pending (" START_COLUMNS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,"
                          " ?10, ?11)",
    [ST_SELECT_PENDING] = "SELECT " START_COLUMNS " FROM pending WHERE id = ?1",
    [ST_SELECT_PENDING_UPTO] = "SELECT " START_COLUMNS " FROM pending WHERE id <= ?1 ORDER BY id",
    [ST_DELETE_PENDING] = "DELETE FROM pending WHERE id BETWEEN ?1 AND ?2",
};

typedef enum { STEP_OK, STEP_SKIP, STEP_FAIL } StepResult;

/* ---- helpers ----------------------------------------------------------------------------- */

/*
 * SQLite does not always keep the system's reason for a failed write:
 * " (FILE: reason)" for the first of the database, its WAL and its shared
 * memory file that this process may not write (read-only file system,
 * immutable file, permissions), in buf; nothing when all may be written.
 */
static void write_probe(const char *path, char *buf, size_t len)
{
	static const char *const suffixes[] = {"", "-wal", "-shm"};
	const char *base = strrchr(path, '/') != NULL ? strrchr(path, '/') + 1 : path;
	char file[PATH_MAX], reason[96];

	for (size_t i = 0; i < PGV_ARRAY_LEN(suffixes); i++) {
		snprintf(file, sizeof(file), "%s%s", path, suffixes[i]);
		if (access(file, W_OK) != 0 && errno != ENOENT) {
			snprintf(buf, len, " (%s%s: %s)", base, suffixes[i], strerror_r(errno, reason, sizeof(reason)));
			return;
		}
	}
}

/*
 * "audit_db PATH: SQLite's message", with the system's reason when SQLite
 * gives one for a failed read, write or open ("disk I/O error (Operation
 * not permitted)"); returns false.
 */
static bool db_fail(const AuditDb *d, char *err, size_t errlen)
{
	int code = d->db != NULL ? sqlite3_errcode(d->db) : SQLITE_NOMEM;
	int sys = d->db != NULL ? sqlite3_system_errno(d->db) : 0;
	char why[PATH_MAX + 128] = "", buf[96];

	if (code == SQLITE_IOERR || code == SQLITE_CANTOPEN || code == SQLITE_READONLY) {
		if (sys != 0)
			snprintf(why, sizeof(why), " (%s)", strerror_r(sys, buf, sizeof(buf))); /* GNU: returns the text */
		else
			write_probe(d->path, why, sizeof(why));
	}
	snprintf(err, errlen, "audit_db %s: %s%s", d->path, d->db != NULL ? sqlite3_errmsg(d->db) : "out of memory",
	         why);
	return false;
}

static bool db_exec(AuditDb *d, const char *sql, char *err, size_t errlen)
{
	char *msg = NULL;

	if (sqlite3_exec(d->db, sql, NULL, NULL, &msg) == SQLITE_OK)
		return true;
	sqlite3_free(msg); /* the connection's message is the same, and db_fail adds the system's reason */
	return db_fail(d, err, errlen);
}

/* The first column of the first row of `sql` (0 when NULL or no row), with ?1 bound to `arg` when given. */
static bool db_int64(AuditDb *d, const char *sql, const char *arg, int64_t *out, char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	int rc;

	*out = 0;
	if (sqlite3_prepare_v2(d->db, sql, -1, &st, NULL) != SQLITE_OK)
		return db_fail(d, err, errlen);
	if (arg != NULL)
		sqlite3_bind_text(st, 1, arg, -1, SQLITE_TRANSIENT);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*out = sqlite3_column_int64(st, 0);
	else if (rc != SQLITE_DONE)
		db_fail(d, err, errlen);
	sqlite3_finalize(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE;
}

static const char *nz(const char *s)
{
	return s != NULL ? s : "";
}

static void bind_text(sqlite3_stmt *st, int i, const char *s)
{
	if (s != NULL)
		sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, i);
}

/* An ISO-8601 time, or NULL for 0 when zero_is_null. */
static void bind_time(sqlite3_stmt *st, int i, int64_t us, bool zero_is_null)
{
	char buf[32];

	if (zero_is_null && us == 0) {
		sqlite3_bind_null(st, i);
		return;
	}
	audit_format_time(us, buf);
	sqlite3_bind_text(st, i, buf, -1, SQLITE_TRANSIENT);
}

/*
 * Runs a write statement. A row SQLite refuses by itself (a constraint, a
 * value too big) would be refused again on every retry: it is logged and
 * skipped. Anything else (I/O, full, read-only, locked) is a failure of the
 * database, with err set.
 */
static StepResult step_write(AuditDb *d, sqlite3_stmt *st, const char *what, uint64_t id, char *err,
                             size_t errlen)
{
	StepResult r = STEP_OK;
	int rc = sqlite3_step(st);

	switch (rc & 0xff) {
	case SQLITE_DONE:
	case SQLITE_ROW: break;
	case SQLITE_CONSTRAINT:
	case SQLITE_MISMATCH:
	case SQLITE_TOOBIG:
	case SQLITE_RANGE:
		log_error("audit: %s %llu not written to audit_db %s: %s", what, (unsigned long long)id,
		          d->path, sqlite3_errmsg(d->db));
		r = STEP_SKIP;
		break;
	default:
		db_fail(d, err, errlen);
		r = STEP_FAIL;
		break;
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return r;
}

/* ---- opening ----------------------------------------------------------------------------- */

/* The text answer of a PRAGMA, in buf ("unknown" when it has none); false with err when it fails. */
static bool pragma_text(AuditDb *d, const char *sql, char *buf, size_t buflen, char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	bool ok =
	    sqlite3_prepare_v2(d->db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW;

	if (ok) {
		const unsigned char *t = sqlite3_column_text(st, 0);

		snprintf(buf, buflen, "%s", t != NULL ? (const char *)t : "unknown");
	} else {
		db_fail(d, err, errlen);
	}
	sqlite3_finalize(st);
	return ok;
}

static bool set_wal(AuditDb *d, char *err, size_t errlen)
{
	char mode[32];

	if (!pragma_text(d, "PRAGMA journal_mode = WAL", mode, sizeof(mode), err, errlen))
		return false;
	if (strcmp(mode, "wal") == 0)
		return true;
	snprintf(err, errlen, "audit_db %s: cannot use WAL mode (journal_mode is %s)", d->path, mode);
	return false;
}

/*
 * Text must be stored as the UTF-8 bytes pgveil binds: the chain hashes
 * them as bound (a database in UTF-16 would convert them).
 */
static bool check_encoding(AuditDb *d, char *err, size_t errlen)
{
	char enc[32];

	if (!db_exec(d, "PRAGMA encoding = 'UTF-8'", err, errlen) || /* takes effect in a new database only */
	    !pragma_text(d, "PRAGMA encoding", enc, sizeof(enc), err, errlen))
		return false;
	if (strcmp(enc, "UTF-8") == 0)
		return true;
	snprintf(err, errlen, "audit_db %s: its text encoding is %s; pgveil writes UTF-8", d->path, enc);
	return false;
}

/* Creates the schema in a fresh database, or brings an older one up to date. */
static bool apply_schema(AuditDb *d, int64_t version, char *err, size_t errlen)
{
	int64_t tables = 0;
	char sql[64];

	if (version == 0) {
		if (!db_int64(d, "SELECT count(*) FROM sqlite_master WHERE type = 'table'", NULL, &tables,
		              err, errlen))
			return false;
		if (tables > 0) {
			snprintf(
			    err, errlen,
			    "audit_db %s: not a pgveil audit database (it has tables but no schema version)",
			    d->path);
			return false;
		}
	}
	snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", AUDIT_SCHEMA_VERSION);
	if (!db_exec(d, "BEGIN IMMEDIATE", err, errlen))
		return false;
	/*
	 * Every statement of the schema creates only what is missing, so the
	 * script brings any older version up to date (version 2 added pending).
	 */
	if (db_exec(d, audit_schema_sql, err, errlen) && db_exec(d, sql, err, errlen) &&
	    db_exec(d, "COMMIT", err, errlen))
		return true;
	sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
	return false;
}

/* The last chained row or the latest checkpoint, whichever is further: where the chain continues. */
static bool load_chain_head(AuditDb *d, char *err, size_t errlen)
{
	static const char *const heads[] = {
	    "SELECT chain_seq, hash FROM queries WHERE chain_seq IS NOT NULL ORDER BY chain_seq DESC LIMIT 1",
	    "SELECT chain_seq, hash FROM checkpoints ORDER BY chain_seq DESC LIMIT 1",
	};
	int64_t best = 0;

	d->last_hash[0] = '\0';
	for (size_t i = 0; i < PGV_ARRAY_LEN(heads); i++) {
		sqlite3_stmt *st = NULL;
		int rc;

		if (sqlite3_prepare_v2(d->db, heads[i], -1, &st, NULL) != SQLITE_OK)
			return db_fail(d, err, errlen);
		rc = sqlite3_step(st);
		if (rc == SQLITE_ROW && sqlite3_column_int64(st, 0) > best) {
			const unsigned char *h = sqlite3_column_text(st, 1);

			best = sqlite3_column_int64(st, 0);
			snprintf(d->last_hash, sizeof(d->last_hash), "%s", h != NULL ? (const char *)h : "");
		}
		if (rc != SQLITE_ROW && rc != SQLITE_DONE)
			db_fail(d, err, errlen);
		sqlite3_finalize(st);
		if (rc != SQLITE_ROW && rc != SQLITE_DONE)
			return false;
	}
	d->next_seq = best + 1;
	return true;
}

/* Where ids continue, so that no id is used twice in the database. */
static bool load_ids(AuditDb *d, char *err, size_t errlen)
{
	int64_t q = 0, cp = 0, s = 0, qs = 0, a = 0;

	if (!db_int64(d, "SELECT max(id) FROM queries", NULL, &q, err, errlen) ||
	    !db_int64(d, "SELECT max(last_query_id) FROM checkpoints", NULL, &cp, err, errlen) ||
	    !db_int64(d, "SELECT max(id) FROM sessions", NULL, &s, err, errlen) ||
	    !db_int64(d, "SELECT max(session_id) FROM queries", NULL, &qs, err, errlen) ||
	    !db_int64(d, "SELECT max(id) FROM approvals", NULL, &a, err, errlen))
		return false;
	d->first_query_id = (uint64_t)(q > cp ? q : cp) + 1;
	d->session_base = (uint64_t)(s > qs ? s : qs);
	d->approval_base = (uint64_t)a;
	return true;
}

static bool prepare_all(AuditDb *d, char *err, size_t errlen)
{
	for (int i = 0; i < ST_COUNT; i++)
		if (sqlite3_prepare_v3(d->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &d->st[i], NULL) !=
		    SQLITE_OK)
			return db_fail(d, err, errlen);
	return true;
}

/* Declared here, defined with the writing code below. */
static bool move_pending(AuditDb *d, uint64_t upto, char *err, size_t errlen);

/* The starts a crash left in pending go into queries as unfinished rows. */
static bool recover_pending(AuditDb *d, char *err, size_t errlen)
{
	bool ok = db_exec(d, "BEGIN IMMEDIATE", err, errlen) && move_pending(d, UINT64_MAX, err, errlen) &&
	          db_exec(d, "COMMIT", err, errlen);

	if (!ok && !sqlite3_get_autocommit(d->db))
		sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
	return ok;
}

bool auditdb_open(AuditDb *d, const char *path, char *err, size_t errlen)
{
	int64_t version = 0;

	memset(d, 0, sizeof(*d));
	d->path = strdup(path);
	d->batch_starts = calloc(AUDIT_BATCH_MAX, sizeof(*d->batch_starts));
	d->batch_outcomes = calloc(AUDIT_BATCH_MAX, sizeof(*d->batch_outcomes));
	if (d->path == NULL || d->batch_starts == NULL || d->batch_outcomes == NULL) {
		auditdb_close(d);
		snprintf(err, errlen, "audit_db %s: out of memory", path);
		return false;
	}
	/*
	 * SQLite's allocation statistics take a process-wide mutex on every
	 * malloc and free, a few per row written; pgveil reads none of them.
	 * This can only be set before SQLite's first use (audit_start comes
	 * before the console's readers); later it fails and changes nothing.
	 */
	(void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
	if (sqlite3_open_v2(path, &d->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
	                    NULL) != SQLITE_OK) {
		db_fail(d, err, errlen);
		goto fail;
	}
	if (sqlite3_db_readonly(d->db, "main") == 1) {
		snprintf(err, errlen, "audit_db %s: the file is read-only", path);
		goto fail;
	}
	sqlite3_busy_timeout(d->db, AUDIT_BUSY_TIMEOUT_MS);
	if (!db_int64(d, "PRAGMA user_version", NULL, &version, err, errlen))
		goto fail;
	if (version > AUDIT_SCHEMA_VERSION) {
		snprintf(err, errlen,
		         "audit_db %s: its schema version %lld is newer than this pgveil knows (%d)", path,
		         (long long)version, AUDIT_SCHEMA_VERSION);
		goto fail;
	}
	if (!check_encoding(d, err, errlen) || !set_wal(d, err, errlen) ||
	    !db_exec(d, "PRAGMA synchronous = NORMAL", err, errlen) || !apply_schema(d, version, err, errlen) ||
	    !load_chain_head(d, err, errlen) || !prepare_all(d, err, errlen) || !recover_pending(d, err, errlen) ||
	    !load_ids(d, err, errlen))
		goto fail;
	return true;
fail:
	auditdb_close(d);
	return false;
}

void auditdb_close(AuditDb *d)
{
	for (int i = 0; i < ST_COUNT; i++)
		sqlite3_finalize(d->st[i]);
	if (d->db != NULL && sqlite3_close(d->db) != SQLITE_OK)
		log_error("audit: closing audit_db %s: %s", d->path, sqlite3_errmsg(d->db));
	free(d->path);
	free(d->batch_starts);
	free(d->batch_outcomes);
	memset(d, 0, sizeof(*d));
}

bool auditdb_exec(AuditDb *d, const char *sql, char *err, size_t errlen)
{
	return db_exec(d, sql, err, errlen);
}

/* ---- writing ----------------------------------------------------------------------------- */

/* Binds a value with its storage class: every column's affinity keeps it, so the row stores exactly v. */
static void bind_value(sqlite3_stmt *st, int i, const AuditValue *v)
{
	switch (v->type) {
	case SQLITE_INTEGER: sqlite3_bind_int64(st, i, v->i); break;
	case SQLITE_FLOAT: sqlite3_bind_double(st, i, v->r); break;
	case SQLITE_TEXT: sqlite3_bind_text(st, i, v->p, (int)v->n, SQLITE_STATIC); break;
	default: sqlite3_bind_null(st, i); break;
	}
}

/* The values of a statement's start (ts formatted into `ts`), as its row stores them. */
static void start_values(const AuditItem *it, char ts[32], AuditValue v[AUDIT_CHAIN_NCOLS])
{
	const AuditQuery *q = &it->u.query;

	audit_format_time(q->ts_us, ts);
	v[CH_ID] = audit_value_int((int64_t)it->id);
	v[CH_SESSION_ID] = audit_value_int((int64_t)q->session_id);
	v[CH_TS] = audit_value_text(ts);
	v[CH_SUBJECT] = audit_value_text(nz(q->subject));
	v[CH_DATABASE] = audit_value_text(nz(q->database));
	v[CH_SQL] = audit_value_text(nz(q->sql));
	v[CH_FINGERPRINT] = audit_value_text(q->fingerprint);
	v[CH_CLASSES] = audit_value_text(nz(q->classes));
	v[CH_DECISION] = audit_value_text(nz(q->decision));
	v[CH_RULE] = audit_value_text(q->rule);
	v[CH_APPROVAL_ID] =
	    q->approval_id != 0 ? audit_value_int((int64_t)q->approval_id) : audit_value_text(NULL);
}

/* The values of an outcome, as its row stores them. */
static void outcome_values(const AuditOutcome *o, AuditValue v[AUDIT_CHAIN_NCOLS])
{
	v[CH_MASKED_COLUMNS] = audit_value_text(o->masked_columns);
	v[CH_ROWS] = o->rows >= 0 ? audit_value_int(o->rows) : audit_value_text(NULL);
	v[CH_DURATION_MS] =
	    o->duration_us >= 0 ? audit_value_real((double)o->duration_us / 1000.0) : audit_value_text(NULL);
	v[CH_SQLSTATE] = audit_value_text(o->sqlstate);
	v[CH_ERROR] = audit_value_text(o->error);
}

/* The position of start `id` in the batch index, or -1. */
static int batch_find(const AuditDb *d, uint64_t id)
{
	size_t lo = 0, hi = d->n_batch;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (d->batch_starts[mid]->id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < d->n_batch && d->batch_starts[lo]->id == id ? (int)lo : -1;
}

/*
 * Indexes the batch's statement starts (their ids grow in queue order) and
 * pairs each with its outcome when that is in the batch too: such a row is
 * written once, whole and chained, where its outcome stands.
 */
static void batch_index(AuditDb *d, const AuditItem *items)
{
	d->n_batch = 0;
	for (const AuditItem *it = items; it != NULL; it = it->next) {
		if (it->kind == AI_QUERY_START && d->n_batch < AUDIT_BATCH_MAX &&
		    (d->n_batch == 0 || it->id > d->batch_starts[d->n_batch - 1]->id)) {
			d->batch_starts[d->n_batch] = it;
			d->batch_outcomes[d->n_batch++] = NULL;
		} else if (it->kind == AI_QUERY_FINISH) {
			int k = batch_find(d, it->id);

			if (k >= 0 && d->batch_outcomes[k] == NULL)
				d->batch_outcomes[k] = it;
		}
	}
}

/* After row v is inserted: the approval it waited for (if any) gets its id. */
static bool link_approval(AuditDb *d, const AuditValue v[AUDIT_CHAIN_NCOLS], char *err, size_t errlen)
{
	sqlite3_stmt *st = d->st[ST_LINK_APPROVAL];

	if (v[CH_APPROVAL_ID].type != SQLITE_INTEGER)
		return true;
	bind_value(st, 1, &v[CH_ID]);
	bind_value(st, 2, &v[CH_APPROVAL_ID]);
	return step_write(d, st, "approval of statement row", (uint64_t)v[CH_ID].i, err, errlen) != STEP_FAIL;
}

/*
 * Inserts a start (values v, from an item or a row of pending) into `st`:
 * queries as an unfinished row (ST_INSERT_QUERY, then its approval is
 * linked) or pending (ST_INSERT_PENDING). Both take the same parameters.
 */
static StepResult insert_start(AuditDb *d, int which, const AuditValue v[AUDIT_CHAIN_NCOLS], char *err,
                               size_t errlen)
{
	sqlite3_stmt *st = d->st[which];
	StepResult r;

	for (int i = CH_ID; i <= CH_RULE; i++)
		bind_value(st, i - CH_ID + 1, &v[i]);
	bind_value(st, CH_RULE - CH_ID + 2, &v[CH_APPROVAL_ID]);
	r = step_write(d, st, which == ST_INSERT_QUERY ? "statement row" : "pending statement row",
	               (uint64_t)v[CH_ID].i, err, errlen);
	if (r == STEP_OK && which == ST_INSERT_QUERY && !link_approval(d, v, err, errlen))
		return STEP_FAIL;
	return r;
}

/*
 * A start in the batch: nothing yet when its outcome is in the batch too
 * (written whole there); else into pending (a durable pass) or queries.
 */
static bool write_query_start(AuditDb *d, AuditItem *it, AuditPass pass, uint64_t *pending_max,
                              char *err, size_t errlen)
{
	int k = batch_find(d, it->id);
	AuditValue v[AUDIT_CHAIN_NCOLS];
	char ts[32];
	StepResult r;

	if (pass != AUDITDB_DURABLE && k >= 0 && d->batch_starts[k] == it && d->batch_outcomes[k] != NULL)
		return true;
	start_values(it, ts, v);
	r = insert_start(d, pass == AUDITDB_DURABLE ? ST_INSERT_PENDING : ST_INSERT_QUERY, v, err, errlen);
	if (r == STEP_OK && pass == AUDITDB_DURABLE && it->id > *pending_max)
		*pending_max = it->id;
	it->refused = r == STEP_SKIP; /* strict mode must not run it: it has no row */
	return r != STEP_FAIL;
}

/*
 * Reads the start of row `id` into v with `which` (ST_SELECT_PENDING or
 * ST_SELECT_START, the unfinished rows of queries): the values are borrowed
 * from the statement, which stays on its row until the caller resets it.
 * STEP_SKIP (statement reset) when there is none.
 */
static StepResult read_start(AuditDb *d, int which, uint64_t id, AuditValue v[AUDIT_CHAIN_NCOLS], char *err,
                             size_t errlen)
{
	sqlite3_stmt *st = d->st[which];
	int rc;

	sqlite3_bind_int64(st, 1, (sqlite3_int64)id);
	rc = sqlite3_step(st);
	if (rc != SQLITE_ROW) {
		if (rc != SQLITE_DONE)
			db_fail(d, err, errlen);
		sqlite3_reset(st);
		return rc == SQLITE_DONE ? STEP_SKIP : STEP_FAIL;
	}
	for (int i = CH_ID; i <= CH_RULE; i++)
		v[i] = audit_value_column(st, i - CH_ID);
	v[CH_APPROVAL_ID] = audit_value_column(st, CH_RULE - CH_ID + 1);
	return STEP_OK;
}

/* Removes the rows of pending with ids from..to (they are in queries now). */
static bool delete_pending(AuditDb *d, uint64_t from, uint64_t to, char *err, size_t errlen)
{
	sqlite3_stmt *st = d->st[ST_DELETE_PENDING];

	sqlite3_bind_int64(st, 1, (sqlite3_int64)from);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)(to > INT64_MAX ? INT64_MAX : to));
	return step_write(d, st, "pending statement row", from, err, errlen) != STEP_FAIL;
}

/* The chain positions an outcome sets in an unfinished row (and its id), besides the hash. */
static bool set_by_outcome(int i)
{
	return i == CH_PREV_HASH || i == CH_ID || (i >= CH_MASKED_COLUMNS && i <= CH_ERROR) ||
	       i == CH_CHAIN_SEQ;
}

/*
 * Fills in the outcome of a row and makes it the next link of the chain.
 * The hash is computed from the values the row stores, never read back
 * after writing. The start comes from the batch or from pending: the row is
 * inserted whole (and leaves pending); or from its unfinished row in
 * queries: the outcome, chain position and hash are set in one UPDATE.
 */
static bool write_query_finish(AuditDb *d, const AuditItem *it, int64_t *seq, char prev[AUDIT_HASH_HEX],
                               char *err, size_t errlen)
{
	int k = batch_find(d, it->id);
	const AuditItem *start = k >= 0 && d->batch_outcomes[k] == it ? d->batch_starts[k] : NULL;
	sqlite3_stmt *read = NULL, *st;
	AuditValue v[AUDIT_CHAIN_NCOLS];
	char ts[32], hash[AUDIT_HASH_HEX];
	StepResult r = STEP_OK;
	bool whole = true, ok = true;

	if (start != NULL) {
		start_values(start, ts, v);
	} else if ((r = read_start(d, ST_SELECT_PENDING, it->id, v, err, errlen)) == STEP_OK) {
		read = d->st[ST_SELECT_PENDING];
	} else if (r == STEP_SKIP && (r = read_start(d, ST_SELECT_START, it->id, v, err, errlen)) == STEP_OK) {
		read = d->st[ST_SELECT_START];
		whole = false;
	}
	if (r != STEP_OK) {
		if (r == STEP_SKIP)
			log_warn("audit: the outcome of statement row %llu has no unfinished row to go to: ignored",
			         (unsigned long long)it->id);
		return r == STEP_SKIP;
	}
	v[CH_PREV_HASH] = audit_value_text(prev);
	outcome_values(&it->u.outcome, v);
	v[CH_CHAIN_SEQ] = audit_value_int(*seq);
	if (!audit_chain_hash(v, hash)) {
		snprintf(err, errlen, "audit_db %s: out of memory while hashing", d->path);
		ok = false;
		goto out;
	}
	st = d->st[whole ? ST_INSERT_CHAINED : ST_FINISH_QUERY];
	for (int i = 0; i < AUDIT_CHAIN_NCOLS; i++)
		if (whole || set_by_outcome(i))
			bind_value(st, i + 1, &v[i]);
	sqlite3_bind_text(st, AUDIT_CHAIN_NCOLS + 1, hash, -1, SQLITE_STATIC);
	r = step_write(d, st, "outcome of statement row", it->id, err, errlen);
	if (r == STEP_SKIP && whole) /* SQLite refused the whole row: keep at least its start */
		r = insert_start(d, ST_INSERT_QUERY, v, err, errlen) == STEP_FAIL ? STEP_FAIL : STEP_SKIP;
	else if (r == STEP_OK && whole && !link_approval(d, v, err, errlen))
		r = STEP_FAIL;
	ok = r != STEP_FAIL;
	if (r == STEP_OK) {
		(*seq)++;
		memcpy(prev, hash, AUDIT_HASH_HEX);
	}
out:
	if (read != NULL)
		sqlite3_reset(read);
	if (ok && read == d->st[ST_SELECT_PENDING])
		ok = delete_pending(d, it->id, it->id, err, errlen);
	return ok;
}

/*
 * Moves the rows of pending with ids up to `upto` into queries as
 * unfinished rows: statements whose outcome has not come after a pass, or
 * a crash's (at open). Their outcomes then finish them there.
 */
static bool move_pending(AuditDb *d, uint64_t upto, char *err, size_t errlen)
{
	sqlite3_stmt *st = d->st[ST_SELECT_PENDING_UPTO];
	AuditValue v[AUDIT_CHAIN_NCOLS];
	int64_t moved = 0;
	bool ok = true;
	int rc;

	sqlite3_bind_int64(st, 1, (sqlite3_int64)(upto > INT64_MAX ? INT64_MAX : upto));
	while (ok && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		for (int i = CH_ID; i <= CH_RULE; i++)
			v[i] = audit_value_column(st, i - CH_ID);
		v[CH_APPROVAL_ID] = audit_value_column(st, CH_RULE - CH_ID + 1);
		ok = insert_start(d, ST_INSERT_QUERY, v, err, errlen) != STEP_FAIL;
		moved++;
	}
	if (ok && rc != SQLITE_DONE)
		ok = db_fail(d, err, errlen);
	sqlite3_reset(st);
	if (moved > 0)
		log_debug("audit: %lld statement rows moved from pending into queries, unfinished", (long long)moved);
	return ok && (moved == 0 || delete_pending(d, 0, upto, err, errlen));
}

static bool write_session_start(AuditDb *d, const AuditItem *it, char *err, size_t errlen)
{
	const AuditSession *s = &it->u.session;
	sqlite3_stmt *st = d->st[ST_INSERT_SESSION];

	sqlite3_bind_int64(st, 1, (sqlite3_int64)s->session_id);
	bind_time(st, 2, s->started_us, false);
	bind_text(st, 3, nz(s->subject));
	bind_text(st, 4, nz(s->groups));
	bind_text(st, 5, nz(s->client_addr));
	bind_text(st, 6, nz(s->database));
	bind_text(st, 7, s->backend_user);
	sqlite3_bind_int(st, 8, s->tls ? 1 : 0);
	return step_write(d, st, "session", s->session_id, err, errlen) != STEP_FAIL;
}

static bool write_session_end(AuditDb *d, const AuditItem *it, char *err, size_t errlen)
{
	sqlite3_stmt *st = d->st[ST_END_SESSION];

	sqlite3_bind_int64(st, 1, (sqlite3_int64)it->u.end.session_id);
	bind_time(st, 2, it->u.end.ended_us, false);
	bind_text(st, 3, it->u.end.reason);
	return step_write(d, st, "end of session", it->u.end.session_id, err, errlen) != STEP_FAIL;
}

static bool write_approval(AuditDb *d, const AuditItem *it, char *err, size_t errlen)
{
	const AuditApproval *a = &it->u.approval;
	sqlite3_stmt *st = d->st[ST_UPSERT_APPROVAL];

	sqlite3_bind_int64(st, 1, (sqlite3_int64)a->approval_id);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)a->session_id);
	bind_text(st, 3, nz(a->subject));
	bind_text(st, 4, nz(a->sql));
	bind_text(st, 5, a->rule);
	bind_time(st, 6, a->requested_us, false);
	bind_time(st, 7, a->decided_us, true);
	bind_text(st, 8, a->decided_by);
	bind_text(st, 9, a->decision);
	bind_text(st, 10, a->reason);
	bind_time(st, 11, a->grant_until_us, true);
	return step_write(d, st, "approval", a->approval_id, err, errlen) != STEP_FAIL;
}

static bool write_item(AuditDb *d, AuditItem *it, AuditPass pass, int64_t *seq, char prev[AUDIT_HASH_HEX],
                       uint64_t *pending_max, char *err, size_t errlen)
{
	switch (it->kind) {
	case AI_SESSION_START: return write_session_start(d, it, err, errlen);
	case AI_SESSION_END: return write_session_end(d, it, err, errlen);
	case AI_QUERY_START: return write_query_start(d, it, pass, pending_max, err, errlen);
	case AI_QUERY_FINISH:
		return pass == AUDITDB_DURABLE || write_query_finish(d, it, seq, prev, err, errlen);
	case AI_APPROVAL: return write_approval(d, it, err, errlen);
	}
	return true;
}

/* PRAGMA synchronous = FULL for a durable pass, NORMAL for the others, when it is not that already. */
static bool use_sync(AuditDb *d, bool full, char *err, size_t errlen)
{
	if (d->sync_full == full)
		return true;
	if (!db_exec(d, full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL", err, errlen))
		return false;
	d->sync_full = full;
	return true;
}

bool auditdb_write(AuditDb *d, AuditItem *items, AuditPass pass, char *err, size_t errlen)
{
	int64_t seq = d->next_seq;
	uint64_t pending_max = d->pending_max, move = 0;
	char prev[AUDIT_HASH_HEX];
	bool ok;

	memcpy(prev, d->last_hash, sizeof(prev));
	batch_index(d, items);
	if (pass == AUDITDB_LAST)
		move = UINT64_MAX;
	else if (pass == AUDITDB_LAZY)
		move = d->pending_mark;
	ok = use_sync(d, pass == AUDITDB_DURABLE, err, errlen) && db_exec(d, "BEGIN IMMEDIATE", err, errlen);
	for (AuditItem *it = items; ok && it != NULL; it = it->next)
		ok = write_item(d, it, pass, &seq, prev, &pending_max, err, errlen);
	if (ok && move > d->pending_moved)
		ok = move_pending(d, move, err, errlen);
	ok = ok && db_exec(d, "COMMIT", err, errlen);
	if (!ok) {
		if (!sqlite3_get_autocommit(d->db))
			sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
		return false;
	}
	d->next_seq = seq;
	memcpy(d->last_hash, prev, sizeof(prev));
	d->pending_max = pending_max;
	if (move > d->pending_moved) {
		d->pending_moved = move < d->pending_max ? move : d->pending_max;
		d->pending_mark = d->pending_max;
	} else if (pass != AUDITDB_DURABLE) {
		d->pending_mark = d->pending_max;
	}
	return true;
}

bool auditdb_pending_left(const AuditDb *d)
{
	return d->pending_max > d->pending_moved;
}

/* ---- retention --------------------------------------------------------------------------- */

/*
 * Runs a DELETE with ?1 = text `a`, ?2 = `n`, ?3 = `limit` (any may be
 * absent); *changes gets the rows changed.
 */
static bool prune_exec(AuditDb *d, const char *sql, const char *a, int64_t n, int64_t limit, int64_t *changes,
                       char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	int rc;

	if (sqlite3_prepare_v2(d->db, sql, -1, &st, NULL) != SQLITE_OK)
		return db_fail(d, err, errlen);
	sqlite3_bind_text(st, 1, a, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 2, n);
	sqlite3_bind_int64(st, 3, limit);
	rc = sqlite3_step(st);
	if (rc != SQLITE_DONE)
		db_fail(d, err, errlen);
	sqlite3_finalize(st);
	if (changes != NULL)
		*changes = sqlite3_changes(d->db);
	return rc == SQLITE_DONE;
}

/*
 * Removes the chained rows older than `cutoff` that form a prefix of the
 * chain (a row is kept when a row before it in the chain is kept), at most
 * `limit` of them, and records the checkpoint. *pruned gets the rows
 * removed, *upto their last chain_seq, *more whether older rows are left.
 */
static bool prune_chain(AuditDb *d, const char *cutoff, const char *now, uint64_t max_query_id, int64_t limit,
                        int64_t *pruned, int64_t *upto, bool *more, char *err, size_t errlen)
{
	char hash[AUDIT_HASH_HEX] = "";
	sqlite3_stmt *st = NULL;
	int64_t last = 0, n = 0;
	int rc;

	*pruned = 0;
	/* the oldest chained rows in chain order, up to the first that is not old: no more than goes */
	if (sqlite3_prepare_v2(d->db,
	                       "SELECT chain_seq, hash, ts >= ?1 FROM queries WHERE chain_seq IS NOT NULL"
	                       " ORDER BY chain_seq LIMIT ?2",
	                       -1, &st, NULL) != SQLITE_OK)
		return db_fail(d, err, errlen);
	sqlite3_bind_text(st, 1, cutoff, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 2, limit);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW && sqlite3_column_int(st, 2) == 0) {
		const unsigned char *h = sqlite3_column_text(st, 1);

		last = sqlite3_column_int64(st, 0);
		snprintf(hash, sizeof(hash), "%s", h != NULL ? (const char *)h : "");
		n++;
	}
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		db_fail(d, err, errlen);
	sqlite3_finalize(st);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return false;
	if (n == limit)
		*more = true; /* this pass stops there */
	if (last <= 0 || hash[0] == '\0')
		return true; /* nothing old, or a row without its hash: left for the verifier to report */
	if (!prune_exec(d, "DELETE FROM queries WHERE chain_seq <= ?2", cutoff, last, 0, pruned, err, errlen))
		return false;
	if (sqlite3_prepare_v2(
	        d->db,
	        "INSERT INTO checkpoints (created_at, chain_seq, hash, rows_pruned, last_query_id)"
	        " VALUES (?1, ?2, ?3, ?4, ?5)",
	        -1, &st, NULL) != SQLITE_OK)
		return db_fail(d, err, errlen);
	sqlite3_bind_text(st, 1, now, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 2, last);
	sqlite3_bind_text(st, 3, hash, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 4, *pruned);
	sqlite3_bind_int64(st, 5, (sqlite3_int64)max_query_id);
	if (sqlite3_step(st) != SQLITE_DONE) {
		db_fail(d, err, errlen);
		sqlite3_finalize(st);
		return false;
	}
	sqlite3_finalize(st);
	*upto = last;
	return true;
}

/*
 * Unfinished rows of earlier runs, sessions and approvals older than the
 * cutoff with no statement left, at most `limit` of each (*more: perhaps
 * more are left). The newest row of each table stays: the next start
 * numbers after the largest ids the file holds (load_ids), and they must
 * not go back (chained rows have their checkpoint for that).
 */
static bool prune_rest(AuditDb *d, const char *cutoff, int64_t limit, int64_t *n, bool *more, char *err,
                       size_t errlen)
{
	int64_t a = 0, b = 0, c = 0;

	if (!prune_exec(d,
	                "DELETE FROM queries WHERE id IN (SELECT id FROM queries WHERE chain_seq IS NULL"
	                " AND ts < ?1 AND id < ?2 AND id < (SELECT max(id) FROM queries) LIMIT ?3)",
	                cutoff, (int64_t)d->first_query_id, limit, &a, err, errlen) ||
	    !prune_exec(d,
	                "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions WHERE started_at < ?1"
	                " AND (ended_at < ?1 OR (ended_at IS NULL AND id <= ?2))"
	                " AND NOT EXISTS (SELECT 1 FROM queries q WHERE q.session_id = sessions.id)"
	                " AND id < (SELECT max(id) FROM sessions) LIMIT ?3)",
	                cutoff, (int64_t)d->session_base, limit, &b, err, errlen) ||
	    !prune_exec(d,
	                "DELETE FROM approvals WHERE id IN (SELECT id FROM approvals WHERE requested_at < ?1"
	                " AND (decided_at < ?1 OR (decided_at IS NULL AND id <= ?2))"
	                " AND NOT EXISTS (SELECT 1 FROM queries q WHERE q.id = approvals.query_id)"
	                " AND id < (SELECT max(id) FROM approvals) LIMIT ?3)",
	                cutoff, (int64_t)d->approval_base, limit, &c, err, errlen))
		return false;
	*n = a + b + c;
	if (a >= limit || b >= limit || c >= limit)
		*more = true;
	return true;
}

bool auditdb_prune(AuditDb *d, uint64_t retention_s, int64_t now_us, uint64_t max_query_id, size_t limit,
                   bool *more, char *err, size_t errlen)
{
	char cutoff[32], now[32];
	int64_t pruned = 0, upto = 0, rest = 0, lim = limit > 0 && limit < INT32_MAX ? (int64_t)limit : INT32_MAX;

	*more = false;
	if (now_us <= 0 || retention_s >= (uint64_t)now_us / 1000000)
		return true; /* the cutoff is before the epoch (or the product would overflow): nothing is that old */
	audit_format_time(now_us - (int64_t)retention_s * 1000000, cutoff);
	audit_format_time(now_us, now);
	if (!db_exec(d, "BEGIN IMMEDIATE", err, errlen))
		return false;
	/* sessions and approvals go once their statements have: after the chunks of the chain */
	if (!prune_chain(d, cutoff, now, max_query_id, lim, &pruned, &upto, more, err, errlen) ||
	    (!*more && !prune_rest(d, cutoff, lim, &rest, more, err, errlen)) || !db_exec(d, "COMMIT", err, errlen)) {
		if (!sqlite3_get_autocommit(d->db))
			sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
		*more = false;
		return false;
	}
	if (pruned > 0 || rest > 0)
		log_info("audit: retention removed %lld chained statements (checkpoint at chain_seq %lld) "
		         "and %lld other "
		         "rows older than %s",
		         (long long)pruned, (long long)upto, (long long)rest, cutoff);
	return true;
}
