/* SPDX-License-Identifier: MIT */
/*
 * The SQLite side of the audit writer: opening the audit database (WAL,
 * synchronous by mode, busy_timeout), creating or migrating its schema
 * (sql/audit.sql, compiled in; PRAGMA user_version), reading where the hash
 * chain and the ids continue, writing one batch of queued events in one
 * transaction (chaining each statement row as it is finished), and
 * retention with its checkpoints. Everything here runs on the writer
 * thread, except auditdb_open, which audit_start calls before the thread
 * exists.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit_int.h"
#include "pgveil/log.h"

#define AUDIT_BUSY_TIMEOUT_MS 2000 /* how long a write waits for a lock held by another connection */

/* sql/audit.sql, turned into a string literal at build time. */
static const char audit_schema_sql[] =
#include "audit_schema.inc"
    ;

static const char *const stmt_sql[ST_COUNT] = {
    [ST_INSERT_QUERY] =
        "INSERT INTO queries (id, session_id, ts, subject, database, sql, fingerprint, classes,"
        " decision, rule, approval_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    [ST_FINISH_QUERY] = "UPDATE queries SET masked_columns = ?1, rows = ?2, duration_ms = ?3, sqlstate = ?4,"
                        " error = ?5, chain_seq = ?6, prev_hash = ?7 WHERE id = ?8 AND chain_seq IS NULL",
    [ST_SELECT_CHAINED] = "SELECT " AUDIT_CHAIN_COLUMNS " FROM queries WHERE id = ?1",
    [ST_SET_HASH] = "UPDATE queries SET hash = ?1 WHERE id = ?2",
    [ST_INSERT_SESSION] = "INSERT INTO sessions (id, started_at, subject, groups, client_addr, database,"
                          " backend_user, tls) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [ST_END_SESSION] = "UPDATE sessions SET ended_at = ?2, end_reason = ?3 WHERE id = ?1",
    [ST_UPSERT_APPROVAL] =
        "INSERT INTO approvals (id, query_id, session_id, subject, sql, rule, requested_at,"
        " decided_at, decided_by, decision, reason, grant_until)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
        " ON CONFLICT (id) DO UPDATE SET query_id = coalesce(excluded.query_id, query_id),"
        " decided_at = excluded.decided_at, decided_by = excluded.decided_by,"
        " decision = excluded.decision, reason = excluded.reason,"
        " grant_until = excluded.grant_until",
};

typedef enum { STEP_OK, STEP_SKIP, STEP_FAIL } StepResult;

/* ---- helpers ----------------------------------------------------------------------------- */

/* "audit_db PATH: SQLite's message"; returns false. */
static bool db_fail(const AuditDb *d, char *err, size_t errlen)
{
	snprintf(err, errlen, "audit_db %s: %s", d->path,
	         d->db != NULL ? sqlite3_errmsg(d->db) : "out of memory");
	return false;
}

static bool db_exec(AuditDb *d, const char *sql, char *err, size_t errlen)
{
	char *msg = NULL;

	if (sqlite3_exec(d->db, sql, NULL, NULL, &msg) == SQLITE_OK)
		return true;
	snprintf(err, errlen, "audit_db %s: %s", d->path, msg != NULL ? msg : sqlite3_errmsg(d->db));
	sqlite3_free(msg);
	return false;
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

/* An id offset by `base`, or NULL for 0. */
static void bind_id(sqlite3_stmt *st, int i, uint64_t base, uint64_t id)
{
	if (id == 0)
		sqlite3_bind_null(st, i);
	else
		sqlite3_bind_int64(st, i, (sqlite3_int64)(base + id));
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

static bool set_wal(AuditDb *d, char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	bool ok = false;

	if (sqlite3_prepare_v2(d->db, "PRAGMA journal_mode = WAL", -1, &st, NULL) != SQLITE_OK ||
	    sqlite3_step(st) != SQLITE_ROW) {
		db_fail(d, err, errlen);
	} else {
		const unsigned char *mode = sqlite3_column_text(st, 0);

		ok = mode != NULL && strcmp((const char *)mode, "wal") == 0;
		if (!ok)
			snprintf(err, errlen, "audit_db %s: cannot use WAL mode (journal_mode is %s)",
			         d->path, mode != NULL ? (const char *)mode : "unknown");
	}
	sqlite3_finalize(st);
	return ok;
}

bool auditdb_set_sync(AuditDb *d, bool strict, char *err, size_t errlen)
{
	return db_exec(d, strict ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL", err, errlen);
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
	/* Version 1 is the first: later versions add their migrations here, each after the one before. */
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

bool auditdb_open(AuditDb *d, const char *path, bool strict, char *err, size_t errlen)
{
	int64_t version = 0;

	memset(d, 0, sizeof(*d));
	d->path = strdup(path);
	if (d->path == NULL) {
		snprintf(err, errlen, "audit_db %s: out of memory", path);
		return false;
	}
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
	if (!set_wal(d, err, errlen) || !auditdb_set_sync(d, strict, err, errlen) ||
	    !apply_schema(d, version, err, errlen) || !load_chain_head(d, err, errlen) ||
	    !load_ids(d, err, errlen) || !prepare_all(d, err, errlen))
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
	memset(d, 0, sizeof(*d));
}

bool auditdb_exec(AuditDb *d, const char *sql, char *err, size_t errlen)
{
	return db_exec(d, sql, err, errlen);
}

/* ---- writing ----------------------------------------------------------------------------- */

static bool write_query_start(AuditDb *d, const AuditItem *it, char *err, size_t errlen)
{
	const AuditQuery *q = &it->u.query;
	sqlite3_stmt *st = d->st[ST_INSERT_QUERY];

	sqlite3_bind_int64(st, 1, (sqlite3_int64)it->id);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)q->session_id);
	bind_time(st, 3, q->ts_us, false);
	bind_text(st, 4, nz(q->subject));
	bind_text(st, 5, nz(q->database));
	bind_text(st, 6, nz(q->sql));
	bind_text(st, 7, q->fingerprint);
	bind_text(st, 8, nz(q->classes));
	bind_text(st, 9, nz(q->decision));
	bind_text(st, 10, q->rule);
	bind_id(st, 11, 0, q->approval_id);
	return step_write(d, st, "statement row", it->id, err, errlen) != STEP_FAIL;
}

/* Hashes row `id` as stored (its chain_seq and prev_hash already set) and stores the hash. */
static bool chain_row(AuditDb *d, uint64_t id, char hash[AUDIT_HASH_HEX], char *err, size_t errlen)
{
	sqlite3_stmt *sel = d->st[ST_SELECT_CHAINED], *set = d->st[ST_SET_HASH];
	int rc;
	bool hashed;

	sqlite3_bind_int64(sel, 1, (sqlite3_int64)id);
	rc = sqlite3_step(sel);
	if (rc != SQLITE_ROW) {
		if (rc == SQLITE_DONE)
			snprintf(err, errlen, "audit_db %s: row %llu vanished while it was chained", d->path,
			         (unsigned long long)id);
		else
			db_fail(d, err, errlen);
		sqlite3_reset(sel);
		return false;
	}
	hashed = audit_chain_hash(sel, hash);
	sqlite3_reset(sel);
	if (!hashed) {
		snprintf(err, errlen, "audit_db %s: out of memory while hashing", d->path);
		return false;
	}
	sqlite3_bind_text(set, 1, hash, -1, SQLITE_STATIC);
	sqlite3_bind_int64(set, 2, (sqlite3_int64)id);
	return step_write(d, set, "statement row", id, err, errlen) != STEP_FAIL;
}

/* Fills in the outcome of a row and makes it the next link of the chain. */
static bool write_query_finish(AuditDb *d, const AuditItem *it, int64_t *seq, char prev[AUDIT_HASH_HEX],
                               char *err, size_t errlen)
{
	const AuditOutcome *o = &it->u.outcome;
	sqlite3_stmt *st = d->st[ST_FINISH_QUERY];
	char hash[AUDIT_HASH_HEX];
	StepResult r;

	bind_text(st, 1, o->masked_columns);
	if (o->rows >= 0)
		sqlite3_bind_int64(st, 2, o->rows);
	if (o->duration_us >= 0)
		sqlite3_bind_double(st, 3, (double)o->duration_us / 1000.0);
	bind_text(st, 4, o->sqlstate);
	bind_text(st, 5, o->error);
	sqlite3_bind_int64(st, 6, *seq);
	bind_text(st, 7, prev);
	sqlite3_bind_int64(st, 8, (sqlite3_int64)it->id);
	r = step_write(d, st, "outcome of statement row", it->id, err, errlen);
	if (r != STEP_OK)
		return r == STEP_SKIP;
	if (sqlite3_changes(d->db) != 1) {
		log_warn("audit: the outcome of statement row %llu has no unfinished row to go to: ignored",
		         (unsigned long long)it->id);
		return true;
	}
	if (!chain_row(d, it->id, hash, err, errlen))
		return false;
	(*seq)++;
	memcpy(prev, hash, AUDIT_HASH_HEX);
	return true;
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
	bind_id(st, 2, 0, a->query_id);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)a->session_id);
	bind_text(st, 4, nz(a->subject));
	bind_text(st, 5, nz(a->sql));
	bind_text(st, 6, a->rule);
	bind_time(st, 7, a->requested_us, false);
	bind_time(st, 8, a->decided_us, true);
	bind_text(st, 9, a->decided_by);
	bind_text(st, 10, a->decision);
	bind_text(st, 11, a->reason);
	bind_time(st, 12, a->grant_until_us, true);
	return step_write(d, st, "approval", a->approval_id, err, errlen) != STEP_FAIL;
}

static bool write_item(AuditDb *d, const AuditItem *it, int64_t *seq, char prev[AUDIT_HASH_HEX], char *err,
                       size_t errlen)
{
	switch (it->kind) {
	case AI_SESSION_START: return write_session_start(d, it, err, errlen);
	case AI_SESSION_END: return write_session_end(d, it, err, errlen);
	case AI_QUERY_START: return write_query_start(d, it, err, errlen);
	case AI_QUERY_FINISH: return write_query_finish(d, it, seq, prev, err, errlen);
	case AI_APPROVAL: return write_approval(d, it, err, errlen);
	}
	return true;
}

bool auditdb_write(AuditDb *d, const AuditItem *items, char *err, size_t errlen)
{
	int64_t seq = d->next_seq;
	char prev[AUDIT_HASH_HEX];
	bool ok;

	memcpy(prev, d->last_hash, sizeof(prev));
	ok = db_exec(d, "BEGIN IMMEDIATE", err, errlen);
	for (const AuditItem *it = items; ok && it != NULL; it = it->next)
		ok = write_item(d, it, &seq, prev, err, errlen);
	ok = ok && db_exec(d, "COMMIT", err, errlen);
	if (!ok) {
		if (!sqlite3_get_autocommit(d->db))
			sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
		return false;
	}
	d->next_seq = seq;
	memcpy(d->last_hash, prev, sizeof(prev));
	return true;
}

/* ---- retention --------------------------------------------------------------------------- */

/* Runs a DELETE with ?1 = text `a`, ?2 = `n` (either may be absent); *changes gets the rows changed. */
static bool prune_exec(AuditDb *d, const char *sql, const char *a, int64_t n, int64_t *changes, char *err,
                       size_t errlen)
{
	sqlite3_stmt *st = NULL;
	int rc;

	if (sqlite3_prepare_v2(d->db, sql, -1, &st, NULL) != SQLITE_OK)
		return db_fail(d, err, errlen);
	sqlite3_bind_text(st, 1, a, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 2, n);
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
 * chain (a row is kept when a row before it in the chain is kept) and
 * records the checkpoint. *pruned gets the rows removed, *upto their last
 * chain_seq.
 */
static bool prune_chain(AuditDb *d, const char *cutoff, const char *now, uint64_t max_query_id,
                        int64_t *pruned, int64_t *upto, char *err, size_t errlen)
{
	char hash[AUDIT_HASH_HEX] = "";
	sqlite3_stmt *st = NULL;
	int64_t last = 0;

	*pruned = 0;
	if (!db_int64(d,
	              "SELECT coalesce((SELECT min(chain_seq) FROM queries WHERE chain_seq IS NOT NULL AND "
	              "ts >= ?1) - 1,"
	              " (SELECT max(chain_seq) FROM queries))",
	              cutoff, &last, err, errlen))
		return false;
	if (last <= 0)
		return true;
	if (sqlite3_prepare_v2(d->db, "SELECT hash FROM queries WHERE chain_seq = ?1", -1, &st, NULL) !=
	    SQLITE_OK)
		return db_fail(d, err, errlen);
	sqlite3_bind_int64(st, 1, last);
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0) != NULL)
		snprintf(hash, sizeof(hash), "%s", (const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	if (hash[0] == '\0')
		return true; /* already pruned up to there */
	if (!prune_exec(d, "DELETE FROM queries WHERE chain_seq <= ?2", cutoff, last, pruned, err, errlen))
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

/* Unfinished rows of earlier runs, sessions and approvals older than the cutoff with no statement left. */
static bool prune_rest(AuditDb *d, const char *cutoff, int64_t *n, char *err, size_t errlen)
{
	int64_t a = 0, b = 0, c = 0;

	if (!prune_exec(d, "DELETE FROM queries WHERE chain_seq IS NULL AND ts < ?1 AND id < ?2", cutoff,
	                (int64_t)d->first_query_id, &a, err, errlen) ||
	    !prune_exec(d,
	                "DELETE FROM sessions WHERE started_at < ?1"
	                " AND (ended_at < ?1 OR (ended_at IS NULL AND id <= ?2))"
	                " AND NOT EXISTS (SELECT 1 FROM queries q WHERE q.session_id = sessions.id)",
	                cutoff, (int64_t)d->session_base, &b, err, errlen) ||
	    !prune_exec(d,
	                "DELETE FROM approvals WHERE requested_at < ?1"
	                " AND (decided_at < ?1 OR (decided_at IS NULL AND id <= ?2))"
	                " AND NOT EXISTS (SELECT 1 FROM queries q WHERE q.id = approvals.query_id)",
	                cutoff, (int64_t)d->approval_base, &c, err, errlen))
		return false;
	*n = a + b + c;
	return true;
}

bool auditdb_prune(AuditDb *d, uint64_t retention_s, int64_t now_us, uint64_t max_query_id, char *err,
                   size_t errlen)
{
	char cutoff[32], now[32];
	int64_t pruned = 0, upto = 0, rest = 0;

	audit_format_time(now_us - (int64_t)retention_s * 1000000, cutoff);
	audit_format_time(now_us, now);
	if (!db_exec(d, "BEGIN IMMEDIATE", err, errlen))
		return false;
	if (!prune_chain(d, cutoff, now, max_query_id, &pruned, &upto, err, errlen) ||
	    !prune_rest(d, cutoff, &rest, err, errlen) || !db_exec(d, "COMMIT", err, errlen)) {
		if (!sqlite3_get_autocommit(d->db))
			sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
		return false;
	}
	if (pruned > 0 || rest > 0)
		log_info("audit: retention removed %lld chained statements (checkpoint at chain_seq %lld) "
		         "and %lld other "
		         "rows older than %s",
		         (long long)pruned, (long long)upto, (long long)rest, cutoff);
	return true;
}
