/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the audit log against real SQLite files in a temp
 * directory and a real libevent base: the schema is created and a newer
 * schema version or a foreign database refused; async rows appear within a
 * fraction of a second and strict rows are in the database when their
 * `durable` event fires (one group commit for many); outcomes arrive after
 * starts and the chain follows finish order, with the hash recomputed here
 * from the encoding doc/audit.md gives; the verifier finds edited, inserted,
 * deleted (first, middle) and reordered rows, and cannot see a deleted last
 * row except through the head hash; retention leaves a checkpoint that
 * keeps verification intact and still lets a deletion in the middle show;
 * a database that cannot be written (read-only connection, full, locked
 * by another writer) gives AUDIT_FAILED with the reason in strict mode and
 * keeps the rows in async mode until it can be written again; a full queue
 * says AUDIT_FULL and fires `room` later; audit_forget() means an event is
 * never woken; a `durable` event given in async mode (a reload raced the
 * caller) still fires, and one event holds one answer; audit_stop() writes thousands of queued rows; ids
 * continue across restarts.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <openssl/evp.h>
#include <sqlite3.h>

#include "../../src/audit_int.h"
#include "pgveil/audit.h"
#include "pgveil/config.h"
#include "pgveil/log.h"

static struct event_base *base;
static char dir[64];
static char dbpath[128];
static Config cfg;

/* ---- helpers --------------------------------------------------------------------------------- */

static int64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/pgveil-audit-XXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	snprintf(dbpath, sizeof(dbpath), "%s/audit.db", dir);
	memset(&cfg, 0, sizeof(cfg));
	cfg.audit_db = dbpath;
	cfg.audit_mode = AUDIT_ASYNC;
	audit_test_set_queue_max(0);
	return 0;
}

static int teardown(void **state)
{
	char cmd[128];

	(void)state;
	audit_stop();
	audit_test_set_queue_max(0);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		return -1;
	return 0;
}

static void start(AuditMode mode)
{
	char err[256];

	cfg.audit_mode = mode;
	if (!audit_start(&cfg, err, sizeof(err)))
		fail_msg("audit_start: %s", err);
	assert_true(audit_enabled());
	assert_int_equal(audit_strict(), mode == AUDIT_STRICT);
}

/* A separate connection to the file, as an auditor's. */
static sqlite3 *open_db(void)
{
	sqlite3 *db = NULL;

	assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
	sqlite3_busy_timeout(db, 5000);
	return db;
}

static int64_t query_int(const char *sql)
{
	sqlite3 *db = open_db();
	sqlite3_stmt *st = NULL;
	int64_t v = -1;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		fail_msg("%s: %s", sql, sqlite3_errmsg(db));
	if (sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

/* The first column of the first row as text (a static buffer; "(null)" for NULL). */
static const char *query_text(const char *sql)
{
	static char buf[4096];
	sqlite3 *db = open_db();
	sqlite3_stmt *st = NULL;

	snprintf(buf, sizeof(buf), "(no row)");
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		fail_msg("%s: %s", sql, sqlite3_errmsg(db));
	if (sqlite3_step(st) == SQLITE_ROW)
		snprintf(buf, sizeof(buf), "%s",
		         sqlite3_column_type(st, 0) == SQLITE_NULL
		             ? "(null)"
		             : (const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	sqlite3_close(db);
	return buf;
}

static void exec_db(const char *sql)
{
	sqlite3 *db = open_db();
	char *msg = NULL;

	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
		fail_msg("%s: %s", sql, msg);
	sqlite3_close(db);
}

/* Runs audit_verify; returns its code, the report in `out`. */
static int verify(char *out, size_t outlen)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	int rc;

	assert_non_null(f);
	rc = audit_verify(dbpath, f);
	fclose(f);
	snprintf(out, outlen, "%s", buf != NULL ? buf : "");
	free(buf);
	return rc;
}

static void assert_contains(const char *hay, const char *needle)
{
	if (strstr(hay, needle) == NULL)
		fail_msg("\"%s\" does not contain \"%s\"", hay, needle);
}

static uint64_t add_query(uint64_t session, const char *sql, int64_t ts)
{
	AuditQuery q = {.session_id = session,
	                .ts_us = ts,
	                .subject = "agent-7",
	                .database = "app",
	                .sql = sql,
	                .fingerprint = "abc123",
	                .classes = "SELECT,READ",
	                .decision = "allow",
	                .rule = "x.rules:3"};
	uint64_t id = 0;

	assert_int_equal(audit_query_start(&q, NULL, NULL, &id), AUDIT_OK);
	assert_true(id > 0);
	return id;
}

static void finish(uint64_t id, int64_t rows)
{
	AuditOutcome o = {
	    .rows = rows, .duration_us = 1500, .masked_columns = rows > 0 ? "public.users.email" : NULL};

	audit_query_finish(id, &o);
}

/* n finished rows with timestamps `ts`, then everything written. */
static void write_rows(int n, int64_t ts)
{
	for (int i = 0; i < n; i++) {
		char sql[64];

		snprintf(sql, sizeof(sql), "SELECT %d", i);
		finish(add_query(1, sql, ts), i);
	}
}

static bool wait_for(bool (*pred)(void), int ms)
{
	for (int i = 0; i < ms; i += 10) {
		if (pred())
			return true;
		usleep(10000);
	}
	return pred();
}

static bool nothing_queued(void)
{
	uint64_t q;

	audit_stats(NULL, &q, NULL);
	return q == 0;
}

static bool has_error(void)
{
	char buf[256];

	return audit_error(buf, sizeof(buf)) != NULL;
}

static bool no_error(void)
{
	return !has_error();
}

typedef struct Fired {
	struct event *ev;
	int count;
	uint64_t id;
	int64_t rows_seen; /* the row's count in the database when the event fired */
} Fired;

static void fired_cb(evutil_socket_t fd, short what, void *arg)
{
	Fired *f = arg;
	char sql[160];

	(void)fd;
	(void)what;
	f->count++;
	/* strict mode's durable pass puts the start in pending; it moves into queries later */
	snprintf(sql, sizeof(sql), "SELECT (SELECT count(*) FROM queries WHERE id = %1$llu) + "
	                           "(SELECT count(*) FROM pending WHERE id = %1$llu)", (unsigned long long)f->id);
	f->rows_seen = query_int(sql);
}

/* Runs the base until every event of `f` fired or ms passed. */
static bool run_until_fired(Fired *f, int n, int ms)
{
	for (int t = 0; t <= ms; t++) {
		bool all = true;

		event_base_loop(base, EVLOOP_NONBLOCK);
		for (int i = 0; i < n; i++)
			all = all && f[i].count > 0;
		if (all)
			return true;
		usleep(1000);
	}
	return false;
}

/* ---- schema ----------------------------------------------------------------------------------- */

static void schema_created_and_newer_refused(void **state)
{
	char err[256];

	(void)state;
	start(AUDIT_ASYNC);
	audit_stop();
	assert_int_equal(query_int("PRAGMA user_version"), AUDIT_SCHEMA_VERSION);
	assert_string_equal(query_text("PRAGMA journal_mode"), "wal");
	assert_int_equal(query_int("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN "
	                           "('sessions', 'queries', 'approvals', 'checkpoints')"),
	                 4);
	assert_int_equal(
	    query_int("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'queries_ts'"), 1);
	/* again: nothing to create */
	start(AUDIT_STRICT);
	audit_stop();
	exec_db("PRAGMA user_version = 3");
	assert_false(audit_start(&cfg, err, sizeof(err)));
	assert_false(audit_enabled());
	assert_contains(err, dbpath);
	assert_contains(err, "schema version 3 is newer than this pgveil knows (2)");
	assert_int_equal(query_int("PRAGMA user_version"), 3);
}

static void foreign_database_refused(void **state)
{
	char err[256];
	FILE *f;

	(void)state;
	exec_db("CREATE TABLE t (x)");
	assert_false(audit_start(&cfg, err, sizeof(err)));
	assert_contains(err, "not a pgveil audit database");
	assert_int_equal(verify(err, sizeof(err)), 2);
	unlink(dbpath);
	f = fopen(dbpath, "w");
	assert_non_null(f);
	fputs("this is not a database, not even close; it goes on long enough to have a header........", f);
	fclose(f);
	assert_false(audit_start(&cfg, err, sizeof(err)));
	assert_contains(err, "file is not a database");
	assert_int_equal(verify(err, sizeof(err)), 2);
}

/* A file of schema version 1 (no pending table) is brought up to date. */
static void version_1_migrated(void **state)
{
	(void)state;
	start(AUDIT_ASYNC);
	audit_stop();
	exec_db("DROP TABLE pending; PRAGMA user_version = 1");
	start(AUDIT_STRICT);
	finish(add_query(1, "SELECT 1", now_us()), 1);
	audit_stop();
	assert_int_equal(query_int("PRAGMA user_version"), AUDIT_SCHEMA_VERSION);
	assert_int_equal(query_int("SELECT count(*) FROM queries WHERE hash IS NOT NULL"), 1);
}

/*
 * Starts a crash left in pending (committed by a durable pass, never
 * finished) move into queries as unfinished rows when the file is opened
 * again, their approvals linked; ids continue after them.
 */
static void pending_rows_recovered_at_open(void **state)
{
	AuditApproval a = {.approval_id = 7, .session_id = 1, .subject = "a", .sql = "DELETE FROM t"};
	uint64_t id;

	(void)state;
	start(AUDIT_ASYNC);
	audit_approval(&a);
	audit_stop();
	exec_db("INSERT INTO pending (id, session_id, ts, subject, database, sql, classes, decision, rule, "
	        "approval_id) VALUES (41, 1, '2026-11-24T01:00:00.000000Z', 'a', 'app', 'DELETE FROM t', "
	        "'DELETE,WRITE', 'approve', 'r.rules:3', 7), (42, 1, '2026-11-24T01:00:00.100000Z', 'a', "
	        "'app', 'SELECT 2', 'SELECT,READ', 'allow', NULL, NULL)");
	start(AUDIT_STRICT);
	assert_int_equal(query_int("SELECT count(*) FROM pending"), 0);
	assert_string_equal(query_text("SELECT group_concat(r, '|') FROM (SELECT id || ':' || sql || ':' || "
	                               "decision AS r FROM queries WHERE chain_seq IS NULL ORDER BY id)"),
	                    "41:DELETE FROM t:approve|42:SELECT 2:allow");
	assert_int_equal(query_int("SELECT query_id FROM approvals WHERE id = 7"), 41);
	id = add_query(1, "SELECT 3", now_us());
	assert_int_equal(id, 43);
	finish(id, 1);
	/* an outcome for a recovered row finishes it in place */
	finish(42, 1);
	audit_stop();
	assert_string_equal(query_text("SELECT group_concat(id, ',') FROM (SELECT id FROM queries WHERE hash IS "
	                               "NOT NULL ORDER BY chain_seq)"),
	                    "43,42");
	assert_int_equal(verify(NULL, 0), 0);
}

static void off_without_audit_db(void **state)
{
	char err[64];
	uint64_t id = 99;
	AuditQuery q = {.sql = "SELECT 1"};

	(void)state;
	cfg.audit_db = NULL;
	assert_true(audit_start(&cfg, err, sizeof(err)));
	assert_false(audit_enabled());
	assert_int_equal(audit_query_start(&q, NULL, NULL, &id), AUDIT_OFF);
	assert_int_equal(id, 0);
	audit_query_finish(1, NULL);
	audit_session_end(1, 0, "x");
	assert_null(audit_error(err, sizeof(err)));
	audit_stop();
}

/* ---- writing ---------------------------------------------------------------------------------- */

static bool one_query_row(void)
{
	return query_int("SELECT count(*) FROM queries WHERE hash IS NOT NULL") == 1;
}

static void async_rows_written(void **state)
{
	AuditSession s = {.session_id = 1,
	                  .started_us = 1764000000123456,
	                  .subject = "agent-7",
	                  .groups = "a,b",
	                  .client_addr = "127.0.0.1:5000",
	                  .database = "app",
	                  .backend_user = "app_agent",
	                  .tls = true};
	AuditQuery q = {.session_id = 1,
	                .ts_us = 1764000001000001,
	                .subject = "agent-7",
	                .database = "app",
	                .sql = "SELECT email FROM users",
	                .classes = "SELECT,READ",
	                .decision = "approve",
	                .approval_id = 4};
	AuditOutcome o = {.rows = 7, .duration_us = 1234, .masked_columns = "public.users.email"};
	AuditApproval a = {.approval_id = 4,
	                   .session_id = 1,
	                   .subject = "agent-7",
	                   .sql = q.sql,
	                   .rule = "r:1",
	                   .requested_us = 1764000001000000};
	uint64_t id, written, commits;
	char out[512];

	(void)state;
	start(AUDIT_ASYNC);
	assert_int_equal(audit_session_start(&s), AUDIT_OK);
	audit_approval(&a);
	assert_int_equal(audit_query_start(&q, NULL, NULL, &id), AUDIT_OK);
	a.decided_us = 1764000002000000;
	a.decided_by = "dba-1";
	a.decision = "approve";
	audit_approval(&a);
	audit_query_finish(id, &o);
	/* written within a fraction of a second, without a stop */
	assert_true(wait_for(one_query_row, 1000));
	audit_session_end(1, 1764000003000000, "client closed");
	audit_stop();
	audit_stats(&written, NULL, &commits);
	assert_int_equal(written, 6);
	assert_true(commits >= 1 && commits <= 6);
	assert_string_equal(
	    query_text("SELECT started_at || '|' || ended_at || '|' || end_reason || '|' || groups"
	               " || '|' || backend_user || '|' || tls FROM sessions"),
	    "2025-11-24T16:00:00.123456Z|2025-11-24T16:00:03.000000Z|client closed|a,b|app_agent|1");
	assert_string_equal(
	    query_text("SELECT ts || '|' || sql || '|' || classes || '|' || decision || '|' || rows"
	               " || '|' || masked_columns || '|' || approval_id || '|' || chain_seq FROM queries"),
	    "2025-11-24T16:00:01.000001Z|SELECT email FROM users|SELECT,READ|approve|7|"
	    "public.users.email|4|1");
	assert_string_equal(query_text("SELECT typeof(duration_ms) || ' ' || duration_ms FROM queries"),
	                    "real 1.234");
	assert_string_equal(
	    query_text("SELECT quote(rule) || quote(sqlstate) || quote(error) || quote(fingerprint)"
	               " || quote(prev_hash) FROM queries"),
	    "NULLNULLNULLNULL''");
	assert_string_equal(
	    query_text("SELECT query_id || '|' || decided_by || '|' || decision || '|' || decided_at"
	               " || '|' || quote(grant_until) FROM approvals"),
	    "1|dba-1|approve|2025-11-24T16:00:02.000000Z|NULL");
	assert_int_equal(verify(out, sizeof(out)), 0);
	assert_contains(out, "ok: 1 rows, chain intact");
}

static void strict_row_is_durable_when_event_fires(void **state)
{
	enum { N = 40 };
	Fired f[N];
	uint64_t commits, written;

	(void)state;
	start(AUDIT_STRICT);
	assert_int_equal(query_int("PRAGMA user_version"), AUDIT_SCHEMA_VERSION);
	for (int i = 0; i < N; i++) {
		AuditQuery q = {.session_id = (uint64_t)i + 1,
		                .ts_us = now_us(),
		                .subject = "s",
		                .database = "d",
		                .sql = "INSERT INTO t VALUES (1)",
		                .classes = "INSERT,WRITE",
		                .decision = "allow"};

		memset(&f[i], 0, sizeof(f[i]));
		f[i].rows_seen = -1;
		f[i].ev = event_new(base, -1, 0, fired_cb, &f[i]);
		assert_int_equal(audit_query_start(&q, f[i].ev, NULL, &f[i].id), AUDIT_OK);
	}
	assert_true(run_until_fired(f, N, 5000));
	for (int i = 0; i < N; i++) {
		assert_int_equal(f[i].count, 1);
		assert_int_equal(f[i].rows_seen, 1);
		assert_int_equal(audit_query_durable(f[i].ev, f[i].id), AUDIT_OK);
		/* the answer is given once */
		assert_int_equal(audit_query_durable(f[i].ev, f[i].id), AUDIT_FAILED);
		finish(f[i].id, 1);
		event_free(f[i].ev);
	}
	audit_stats(&written, NULL, &commits);
	assert_true(written >= N);
	assert_true(commits < N); /* group commit */
	/* each row is in one place at any moment: pending, or queries (a lazy pass is one transaction) */
	assert_int_equal(query_int("SELECT (SELECT count(*) FROM queries) + (SELECT count(*) FROM pending)"), N);
	audit_stop();
	/* each inserted whole with its outcome, chained; nothing left in pending */
	assert_int_equal(query_int("SELECT count(*) FROM queries WHERE hash IS NOT NULL"), N);
	assert_int_equal(query_int("SELECT count(*) FROM pending"), 0);
}

/* One row finished, one unfinished, both in queries, nothing left in pending. */
static bool one_finished_one_moved(void)
{
	return query_int("SELECT (SELECT count(*) FROM pending) = 0 AND (SELECT count(*) FROM queries WHERE hash IS "
	                 "NOT NULL) = 1 AND (SELECT count(*) FROM queries WHERE chain_seq IS NULL) = 1") == 1;
}

/*
 * Strict mode leaves outcomes for lazy passes and starts in pending; a
 * statement still running after a pass moves into queries unfinished and
 * is finished there; after a switch to async everything left is written
 * at once.
 */
static void strict_lazy_passes_and_switch_to_async(void **state)
{
	uint64_t running, done;

	(void)state;
	start(AUDIT_STRICT);
	running = add_query(1, "SELECT pg_sleep(10)", now_us());
	done = add_query(1, "SELECT 1", now_us());
	finish(done, 1);
	/* within a few ticks: the finished row is whole in queries, the running one moved there unfinished */
	assert_true(wait_for(one_finished_one_moved, 3000));
	cfg.audit_mode = AUDIT_ASYNC;
	audit_reconfigure(&cfg);
	assert_false(audit_strict());
	finish(running, 1);
	finish(add_query(1, "SELECT 2", now_us()), 1);
	audit_stop();
	assert_int_equal(query_int("SELECT count(*) FROM queries WHERE hash IS NOT NULL"), 3);
	assert_int_equal(query_int("SELECT count(*) FROM pending"), 0);
	assert_int_equal(verify(NULL, 0), 0);
}

static bool one_chained_row(void)
{
	return query_int("SELECT count(*) FROM queries WHERE hash IS NOT NULL") == 1;
}

/*
 * An event that reaches an idle writer (asleep for up to a second) wakes
 * it: the row is written a tick later, not when the writer next looks.
 */
static void idle_writer_woken(void **state)
{
	(void)state;
	for (int mode = AUDIT_ASYNC; mode <= AUDIT_STRICT; mode++) {
		int64_t t0;

		start((AuditMode)mode);
		assert_true(wait_for(nothing_queued, 2000));
		usleep(50000); /* the writer is asleep with nothing to do */
		t0 = now_us();
		finish(add_query(1, "SELECT 1", now_us()), 1);
		assert_true(wait_for(one_chained_row, 2000));
		assert_true(now_us() - t0 < 600000);
		audit_stop();
		unlink(dbpath);
	}
}

/*
 * Strict mode: a start SQLite refuses to store (here a row already holding
 * its id in pending; in life a text past SQLite's length limit) is never
 * acknowledged as durable, while the others of its commit are.
 */
static void strict_refused_row_is_not_durable(void **state)
{
	Fired f[2] = {{.rows_seen = -1}, {.rows_seen = -1}};
	AuditQuery q = {.session_id = 1, .ts_us = now_us(), .sql = "DELETE FROM t", .decision = "allow"};
	uint64_t before;
	char sql[200];

	(void)state;
	start(AUDIT_STRICT);
	before = add_query(1, "SELECT 1", now_us());
	finish(before, 1);
	assert_true(wait_for(nothing_queued, 2000));
	snprintf(sql, sizeof(sql), "INSERT INTO pending (id, session_id, ts, subject, database, sql, classes, decision)"
	                           " VALUES (%llu, 1, 'x', 's', 'd', 'in the way', '', 'allow')",
	         (unsigned long long)before + 2);
	exec_db(sql);
	for (int i = 0; i < 2; i++) {
		f[i].ev = event_new(base, -1, 0, fired_cb, &f[i]);
		assert_int_equal(audit_query_start(&q, f[i].ev, NULL, &f[i].id), AUDIT_OK);
	}
	assert_int_equal(f[1].id, before + 2);
	assert_true(run_until_fired(f, 2, 5000));
	assert_int_equal(audit_query_durable(f[0].ev, f[0].id), AUDIT_OK);
	assert_int_equal(audit_query_durable(f[1].ev, f[1].id), AUDIT_FAILED);
	for (int i = 0; i < 2; i++)
		event_free(f[i].ev);
	audit_stop();
}

static void forgotten_event_never_fires(void **state)
{
	Fired f = {.rows_seen = -1};
	AuditQuery q = {.session_id = 1, .ts_us = now_us(), .sql = "SELECT 1", .decision = "allow"};

	(void)state;
	start(AUDIT_STRICT);
	f.ev = event_new(base, -1, 0, fired_cb, &f);
	assert_int_equal(audit_query_start(&q, f.ev, NULL, &f.id), AUDIT_OK);
	audit_forget(f.ev, NULL);
	audit_stop();
	assert_int_equal(query_int("SELECT count(*) FROM queries"), 1);
	for (int i = 0; i < 100; i++)
		event_base_loop(base, EVLOOP_NONBLOCK);
	assert_int_equal(f.count, 0);
	event_free(f.ev);
}

static void durable_given_in_async_mode(void **state)
{
	Fired f = {.rows_seen = -1};
	AuditQuery q = {.session_id = 1, .ts_us = now_us(), .sql = "SELECT 1", .decision = "allow"};
	uint64_t first;

	(void)state;
	/* a statement that waits (the caller saw strict mode) is woken even if the mode is async by then */
	start(AUDIT_ASYNC);
	f.ev = event_new(base, -1, 0, fired_cb, &f);
	assert_int_equal(audit_query_start(&q, f.ev, NULL, &f.id), AUDIT_OK);
	first = f.id;
	assert_true(run_until_fired(&f, 1, 3000));
	assert_int_equal(f.rows_seen, 1);
	assert_int_equal(audit_query_durable(f.ev, first), AUDIT_OK);
	assert_int_equal(audit_query_durable(f.ev, first), AUDIT_OK); /* async: no answer left means OK */
	/* one answer per event: an uncollected one is dropped by the next row with the same event */
	audit_stop();
	start(AUDIT_STRICT);
	f.count = 0;
	assert_int_equal(audit_query_start(&q, f.ev, NULL, &f.id), AUDIT_OK);
	first = f.id;
	assert_true(run_until_fired(&f, 1, 3000));
	f.count = 0;
	assert_int_equal(audit_query_start(&q, f.ev, NULL, &f.id), AUDIT_OK);
	assert_true(run_until_fired(&f, 1, 3000));
	assert_int_equal(audit_query_durable(f.ev, first), AUDIT_FAILED);
	assert_int_equal(audit_query_durable(f.ev, f.id), AUDIT_OK);
	audit_stop();
	event_free(f.ev);
}

/*
 * Many sessions waiting at once: each answer is found by its event, in any
 * order; a new row on an event drops the old answer, a forgotten event is
 * never woken, and the index survives growing and removals in the middle.
 */
static void many_waiters(void **state)
{
	enum { N = 600 };
	static Fired f[N];
	AuditQuery q = {.session_id = 1, .subject = "s", .database = "d", .sql = "INSERT INTO t VALUES (1)",
	                .classes = "INSERT,WRITE", .decision = "allow"};
	uint64_t old[N];

	(void)state;
	start(AUDIT_STRICT);
	for (int i = 0; i < N; i++) {
		memset(&f[i], 0, sizeof(f[i]));
		f[i].rows_seen = -1;
		f[i].ev = event_new(base, -1, 0, fired_cb, &f[i]);
		q.ts_us = now_us();
		assert_int_equal(audit_query_start(&q, f[i].ev, NULL, &f[i].id), AUDIT_OK);
		old[i] = f[i].id;
	}
	for (int i = 0; i < N; i += 3) /* a later row on every third event */
		assert_int_equal(audit_query_start(&q, f[i].ev, NULL, &f[i].id), AUDIT_OK);
	for (int i = 1; i < N; i += 3)
		audit_forget(f[i].ev, NULL);
	for (int i = 0; i < N; i++)
		if (i % 3 != 1)
			assert_true(run_until_fired(&f[i], 1, 5000));
	for (int k = 0; k < N; k++) {
		int i = (k * 7) % N; /* 7 and 600 have no common factor: every index once, scrambled */

		if (i % 3 == 1) {
			assert_int_equal(audit_query_durable(f[i].ev, f[i].id), AUDIT_FAILED); /* forgotten */
			continue;
		}
		if (i % 3 == 0)
			assert_int_equal(audit_query_durable(f[i].ev, old[i]), AUDIT_FAILED); /* replaced */
		assert_int_equal(audit_query_durable(f[i].ev, f[i].id), AUDIT_OK);
		assert_int_equal(audit_query_durable(f[i].ev, f[i].id), AUDIT_FAILED); /* given once */
	}
	for (int i = 0; i < 50; i++)
		event_base_loop(base, EVLOOP_NONBLOCK);
	for (int i = 0; i < N; i++) {
		assert_int_equal(f[i].count, i % 3 == 1 ? 0 : 1);
		finish(f[i].id, 1);
		if (i % 3 == 0)
			finish(old[i], 1);
		event_free(f[i].ev);
	}
	audit_stop();
	assert_int_equal(query_int("SELECT count(*) FROM queries WHERE hash IS NOT NULL"), N + N / 3);
}

/* ---- the chain -------------------------------------------------------------------------------- */

static void put_u64(EVP_MD_CTX *ctx, uint64_t v)
{
	unsigned char b[8];

	for (int i = 0; i < 8; i++)
		b[i] = (unsigned char)(v >> (56 - 8 * i));
	EVP_DigestUpdate(ctx, b, 8);
}

/* The hash of row `id` computed here from doc/audit.md's description, independently of audit_chain.c. */
static void doc_hash(uint64_t id, char out[65])
{
	static const char *const cols[] = {
	    "prev_hash", "id",          "session_id", "ts",       "subject",     "database",
	    "sql",       "fingerprint", "classes",    "decision", "rule",        "masked_columns",
	    "rows",      "duration_ms", "sqlstate",   "error",    "approval_id", "chain_seq"};
	sqlite3 *db = open_db();
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned char md[32];
	unsigned int len = 0;

	EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	for (size_t i = 0; i < sizeof(cols) / sizeof(cols[0]); i++) {
		char sql[128];
		sqlite3_stmt *st = NULL;
		unsigned char tag;
		double d;
		uint64_t bits;

		snprintf(sql, sizeof(sql), "SELECT %s FROM queries WHERE id = %llu", cols[i],
		         (unsigned long long)id);
		assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
		assert_int_equal(sqlite3_step(st), SQLITE_ROW);
		switch (sqlite3_column_type(st, 0)) {
		case SQLITE_NULL:
			tag = 0;
			EVP_DigestUpdate(ctx, &tag, 1);
			break;
		case SQLITE_INTEGER:
			tag = 1;
			EVP_DigestUpdate(ctx, &tag, 1);
			put_u64(ctx, (uint64_t)sqlite3_column_int64(st, 0));
			break;
		case SQLITE_FLOAT:
			tag = 2;
			d = sqlite3_column_double(st, 0);
			memcpy(&bits, &d, 8);
			EVP_DigestUpdate(ctx, &tag, 1);
			put_u64(ctx, bits);
			break;
		default:
			tag = 3;
			EVP_DigestUpdate(ctx, &tag, 1);
			put_u64(ctx, (uint64_t)sqlite3_column_bytes(st, 0));
			EVP_DigestUpdate(ctx, sqlite3_column_text(st, 0),
			                 (size_t)sqlite3_column_bytes(st, 0));
			break;
		}
		sqlite3_finalize(st);
	}
	EVP_DigestFinal_ex(ctx, md, &len);
	EVP_MD_CTX_free(ctx);
	for (unsigned int i = 0; i < len; i++)
		sprintf(out + 2 * i, "%02x", md[i]);
	sqlite3_close(db);
}

static void chain_follows_finish_order(void **state)
{
	uint64_t a, b, c;
	char sql[128], h[65], out[512];

	(void)state;
	start(AUDIT_ASYNC);
	a = add_query(1, "SELECT 'a'", now_us());
	b = add_query(2, "SELECT 'b'", now_us());
	c = add_query(1, "SELECT 'c'", now_us());
	assert_true(a < b && b < c);
	finish(c, 3);
	finish(a, 0);
	audit_query_finish(b, &(AuditOutcome){.rows = -1,
	                                      .duration_us = -1,
	                                      .sqlstate = "42P01",
	                                      .error = "relation \"x\" does not exist"});
	audit_stop();
	snprintf(sql, sizeof(sql),
	         "SELECT group_concat(id, ',') FROM (SELECT id FROM queries ORDER BY chain_seq)");
	snprintf(out, sizeof(out), "%llu,%llu,%llu", (unsigned long long)c, (unsigned long long)a,
	         (unsigned long long)b);
	assert_string_equal(query_text(sql), out);
	assert_string_equal(query_text("SELECT prev_hash FROM queries WHERE chain_seq = 1"), "");
	assert_int_equal(
	    query_int("SELECT count(*) FROM queries q JOIN queries p ON p.chain_seq = q.chain_seq - 1"
	              " WHERE q.prev_hash = p.hash"),
	    2);
	assert_string_equal(query_text("SELECT quote(rows) || quote(duration_ms) || sqlstate FROM queries"
	                               " WHERE chain_seq = 3"),
	                    "NULLNULL42P01");
	for (uint64_t id = a; id <= c; id++) {
		doc_hash(id, h);
		snprintf(sql, sizeof(sql), "SELECT hash FROM queries WHERE id = %llu",
		         (unsigned long long)id);
		assert_string_equal(query_text(sql), h);
	}
	/* a second run continues the chain and the ids */
	start(AUDIT_STRICT);
	finish(add_query(1, "SELECT 'd'", now_us()), 1);
	audit_stop();
	assert_int_equal(query_int("SELECT max(id) FROM queries"), (int64_t)c + 1);
	assert_int_equal(query_int("SELECT chain_seq FROM queries WHERE id = (SELECT max(id) FROM queries)"),
	                 4);
	assert_int_equal(verify(out, sizeof(out)), 0);
	assert_contains(out, "ok: 4 rows, chain intact (chain_seq 1..4)");
}

/*
 * The writer hashes what it binds: a row whose start and outcome are written
 * together, and one whose start was written in an earlier transaction, both
 * hash as doc/audit.md says, also with text that is not UTF-8, NULLs, REALs
 * and an approval id.
 */
static void chain_hashes_what_is_stored(void **state)
{
	AuditQuery q = {.session_id = 9,
	                .ts_us = now_us(),
	                .subject = "agent-\xc3\xa9",
	                .database = "app",
	                .sql = "SELECT '\xff\xfe' -- not UTF-8",
	                .classes = "SELECT,READ",
	                .decision = "approve",
	                .approval_id = 12};
	AuditOutcome canceled = {.rows = -1, .duration_us = 2000, .sqlstate = "57014", .error = "canceling"};
	AuditOutcome done = {.rows = 5, .duration_us = 0, .masked_columns = "public.t.c"};
	uint64_t apart, together, ids[2];
	char h[65], sql[96], out[512];

	(void)state;
	start(AUDIT_ASYNC);
	assert_int_equal(audit_query_start(&q, NULL, NULL, &apart), AUDIT_OK);
	assert_true(wait_for(nothing_queued, 2000)); /* its start is written alone */
	assert_int_equal(query_int("SELECT count(*) FROM queries WHERE chain_seq IS NULL"), 1);
	assert_int_equal(audit_query_start(&q, NULL, NULL, &together), AUDIT_OK);
	audit_query_finish(together, &canceled);
	audit_query_finish(apart, &done);
	audit_stop();
	ids[0] = apart;
	ids[1] = together;
	for (int i = 0; i < 2; i++) {
		doc_hash(ids[i], h);
		snprintf(sql, sizeof(sql), "SELECT hash FROM queries WHERE id = %llu",
		         (unsigned long long)ids[i]);
		assert_string_equal(query_text(sql), h);
	}
	assert_string_equal(query_text("SELECT hex(sql) FROM queries WHERE chain_seq = 1"),
	                    "53454C4543542027FFFE27202D2D206E6F74205554462D38");
	assert_string_equal(query_text("SELECT typeof(duration_ms) || typeof(rows) || typeof(approval_id)"
	                               " FROM queries WHERE chain_seq = 2"),
	                    "realintegerinteger");
	assert_int_equal(verify(out, sizeof(out)), 0);
	assert_contains(out, "ok: 2 rows, chain intact (chain_seq 1..2)");
}

/* The chain hashes the UTF-8 bytes pgveil binds: a database storing text as UTF-16 is refused. */
static void utf16_database_refused(void **state)
{
	char err[256];

	(void)state;
	exec_db("PRAGMA encoding = 'UTF-16le'; CREATE TABLE queries (x); PRAGMA user_version = 1");
	assert_false(audit_start(&cfg, err, sizeof(err)));
	assert_contains(err, "its text encoding is UTF-16le; pgveil writes UTF-8");
}

static void unfinished_rows_are_not_tampering(void **state)
{
	char out[512];

	(void)state;
	start(AUDIT_ASYNC);
	write_rows(3, now_us());
	add_query(1, "SELECT pg_sleep(100)", now_us());
	audit_stop();
	assert_int_equal(verify(out, sizeof(out)), 0);
	assert_contains(out, "ok: 3 rows");
	assert_contains(out, "1 unfinished rows (not chained)");
}

/* Five chained rows, written; returns the verifier's "ok" report. */
static void five_rows(char *out, size_t outlen)
{
	start(AUDIT_ASYNC);
	write_rows(5, now_us());
	audit_stop();
	assert_int_equal(verify(out, outlen), 0);
	assert_contains(out, "ok: 5 rows, chain intact (chain_seq 1..5)");
}

static void verifier_finds_an_edited_row(void **state)
{
	char out[512];

	(void)state;
	five_rows(out, sizeof(out));
	exec_db("UPDATE queries SET sql = 'SELECT 42' WHERE chain_seq = 3");
	assert_int_equal(verify(out, sizeof(out)), 1);
	assert_string_equal(out,
	                    "broken: row id 3 (chain_seq 3): hash does not match its contents (altered)\n");
	/* put back, it verifies again; a REAL changed in its last digits does not */
	exec_db("UPDATE queries SET sql = 'SELECT 2' WHERE chain_seq = 3");
	assert_int_equal(verify(out, sizeof(out)), 0);
	exec_db("UPDATE queries SET duration_ms = 1.5000001 WHERE chain_seq = 4");
	assert_int_equal(verify(out, sizeof(out)), 1);
	assert_contains(out, "row id 4 (chain_seq 4): hash does not match");
}

static void verifier_finds_deleted_rows(void **state)
{
	char out[512], head[65];
	const char *p;

	(void)state;
	five_rows(out, sizeof(out));
	p = strstr(out, "head hash ");
	assert_non_null(p);
	snprintf(head, sizeof(head), "%s", p + 10);
	assert_string_equal(head, query_text("SELECT hash FROM queries WHERE chain_seq = 5"));
	/* the last row: the chain alone cannot tell; the head hash it reports changes */
	exec_db("DELETE FROM queries WHERE chain_seq = 5");
	assert_int_equal(verify(out, sizeof(out)), 0);
	assert_contains(out, "ok: 4 rows");
	assert_null(strstr(out, head));
	/* a row in the middle */
	exec_db("DELETE FROM queries WHERE chain_seq = 3");
	assert_int_equal(verify(out, sizeof(out)), 1);
	assert_string_equal(out,
	                    "broken: rows deleted after chain_seq 2 (the next is chain_seq 4, row id 4)\n");
	/* the first row, without a checkpoint */
	exec_db("DELETE FROM queries WHERE chain_seq IN (1, 4)");
	assert_int_equal(verify(out, sizeof(out)), 1);
	assert_string_equal(
	    out, "broken: rows deleted before chain_seq 2 (no retention checkpoint covers them)\n");
	/* a forged checkpoint must carry the right hash */
	exec_db("INSERT INTO checkpoints (created_at, chain_seq, hash, rows_pruned, last_query_id)"
	        " VALUES ('x', 1, 'deadbeef', 1, 1)");
	assert_int_equal(verify(out, sizeof(out)), 1);
	assert_contains(out, "prev_hash does not match the checkpoint at chain_seq 1");
	/* turning a chained row into an "unfinished" one is a deletion from the chain */
	exec_db("DELETE FROM checkpoints");
	exec_db("DELETE FROM queries");
	five_rows(out, sizeof(out));
	exec_db("UPDATE queries SET chain_seq = NULL, hash = NULL, prev_hash = NULL WHERE chain_seq = 2");
	assert_int_equal(verify(out, sizeof(out)), 1);
	assert_contains(out, "rows deleted after chain_seq 1");
}

/* Inserts a row at chain_seq `seq` whose own hash is right for its (given) prev_hash. */
static void insert_forged(int64_t id, int64_t seq, const char *prev)
{
	char sql[512], h[65];

	snprintf(
	    sql, sizeof(sql),
	    "INSERT INTO queries (id, session_id, ts, subject, database, sql, classes, decision, chain_seq,"
	    " prev_hash) VALUES (%lld, 1, '2026-01-01T00:00:00.000000Z', 'agent-7', 'app', 'DROP TABLE "
	    "users',"
	    " 'DROP,DDL', 'allow', %lld, '%s')",
	    (long long)id, (long long)seq, prev);
	exec_db(sql);
	doc_hash((uint64_t)id, h);
	snprintf(sql, sizeof(sql), "UPDATE queries SET hash = '%s' WHERE id = %lld", h, (long long)id);
	exec_db(sql);
}

static void verifier_finds_inserted_rows(void **state)
{
	char out[512], prev[65];

	(void)state;
	five_rows(out, sizeof(out));
	/* at the end, hashed over a made-up prev_hash */
	insert_forged(100, 6, "0000000000000000000000000000000000000000000000000000000000000000");
	assert_int_equal(verify(out, sizeof(out)), 1);
	assert_string_equal(out, "broken: row id 100 (chain_seq 6): prev_hash is not the hash of chain_seq 5 "
	                         "(row inserted or rows reordered)\n");
	exec_db("DELETE FROM queries WHERE id = 100");
	/* in the middle, rightly linked to its predecessor: the rows after it had to move */
	exec_db("UPDATE queries SET chain_seq = chain_seq + 100 WHERE chain_seq >= 3");
	exec_db("UPDATE queries SET chain_seq = chain_seq - 99 WHERE chain_seq >= 100");
	snprintf(prev, sizeof(prev), "%s", query_text("SELECT hash FROM queries WHERE chain_seq = 2"));
	insert_forged(101, 3, prev);
	assert_int_equal(verify(out, sizeof(out)), 1);
	assert_string_equal(out,
	                    "broken: row id 3 (chain_seq 4): hash does not match its contents (altered)\n");
}

static void verifier_finds_reordered_rows(void **state)
{
	char out[512];

	(void)state;
	five_rows(out, sizeof(out));
	exec_db("UPDATE queries SET chain_seq = -chain_seq WHERE chain_seq IN (2, 3)");
	exec_db("UPDATE queries SET chain_seq = 5 + chain_seq WHERE chain_seq IN (-2, -3)");
	assert_int_equal(verify(out, sizeof(out)), 1);
	assert_string_equal(out,
	                    "broken: row id 3 (chain_seq 2): hash does not match its contents (altered)\n");
	/* two rows exchanging their ids (the order statements arrived in) */
	exec_db("DELETE FROM queries");
	five_rows(out, sizeof(out));
	exec_db("UPDATE queries SET id = -id WHERE id IN (2, 3)");
	exec_db("UPDATE queries SET id = CASE id WHEN -2 THEN 3 ELSE 2 END WHERE id IN (-2, -3)");
	assert_int_equal(verify(out, sizeof(out)), 1);
	assert_string_equal(out,
	                    "broken: row id 3 (chain_seq 2): hash does not match its contents (altered)\n");
}

/* ---- retention -------------------------------------------------------------------------------- */

static bool checkpoint_made(void)
{
	return query_int("SELECT count(*) FROM checkpoints") == 1;
}

static void retention_keeps_the_chain_verifiable(void **state)
{
	int64_t old = now_us() - 10 * 86400 * 1000000LL;
	AuditSession s = {.session_id = 5,
	                  .started_us = old,
	                  .subject = "a",
	                  .groups = "",
	                  .client_addr = "x",
	                  .database = "app"};
	uint64_t long_runner;
	char out[512];

	(void)state;
	start(AUDIT_ASYNC);
	assert_int_equal(audit_session_start(&s), AUDIT_OK); /* ended long ago, no statements: removed */
	audit_session_end(5, old + 1000, "client closed");
	s.session_id = 2;
	assert_int_equal(audit_session_start(&s), AUDIT_OK); /* still has statements: kept */
	long_runner = add_query(2, "SELECT old_but_finished_late", old);
	write_rows(5, old);
	write_rows(3, now_us());
	finish(long_runner, 1); /* chain_seq 9: old, but after newer rows in the chain */
	write_rows(2, old);     /* chain_seq 10, 11 */
	assert_true(wait_for(nothing_queued, 2000));
	cfg.audit_retention = 86400;
	audit_reconfigure(&cfg);
	assert_true(wait_for(checkpoint_made, 3000));
	audit_stop();
	assert_int_equal(query_int("SELECT chain_seq FROM checkpoints"), 5);
	assert_int_equal(query_int("SELECT rows_pruned FROM checkpoints"), 5);
	assert_int_equal(query_int("SELECT last_query_id FROM checkpoints"), 11);
	snprintf(out, sizeof(out), "%s", query_text("SELECT hash FROM checkpoints"));
	assert_int_equal(strlen(out), 64);
	assert_string_equal(out, query_text("SELECT prev_hash FROM queries WHERE chain_seq = 6"));
	assert_int_equal(query_int("SELECT min(chain_seq) FROM queries"), 6);
	assert_int_equal(query_int("SELECT count(*) FROM queries"), 6);
	assert_int_equal(query_int("SELECT group_concat(id) FROM sessions"), 2);
	assert_int_equal(verify(out, sizeof(out)), 0);
	assert_contains(out, "ok: 6 rows, chain intact (chain_seq 6..11, after a retention checkpoint)");
	/* the chain and the ids go on after a restart */
	cfg.audit_retention = 0;
	start(AUDIT_ASYNC);
	write_rows(1, now_us());
	audit_stop();
	assert_int_equal(query_int("SELECT max(chain_seq) FROM queries"), 12);
	assert_int_equal(verify(out, sizeof(out)), 0);
	/* deleting in the middle still shows, and so does the oldest remaining row */
	exec_db("DELETE FROM queries WHERE chain_seq = 8");
	assert_int_equal(verify(out, sizeof(out)), 1);
	assert_contains(out, "rows deleted after chain_seq 7");
	exec_db("DELETE FROM queries WHERE chain_seq <= 7");
	assert_int_equal(verify(out, sizeof(out)), 1);
	assert_contains(out, "rows deleted before chain_seq 9");
}

static bool three_checkpoints(void)
{
	return query_int("SELECT count(*) FROM checkpoints") == 3;
}

/* Retention removes a few rows per transaction, each with its checkpoint; the chain stays verifiable. */
static void retention_in_chunks(void **state)
{
	int64_t old = now_us() - 10 * 86400 * 1000000LL;
	char out[512];

	(void)state;
	audit_test_set_prune_chunk(2);
	start(AUDIT_ASYNC);
	write_rows(5, old); /* chain_seq 1..5 */
	write_rows(1, now_us());
	assert_true(wait_for(nothing_queued, 2000));
	cfg.audit_retention = 86400;
	audit_reconfigure(&cfg);
	assert_true(wait_for(three_checkpoints, 3000));
	audit_stop();
	audit_test_set_prune_chunk(0);
	cfg.audit_retention = 0;
	assert_string_equal(query_text("SELECT group_concat(chain_seq || ':' || rows_pruned, ' ') FROM checkpoints"),
	                    "2:2 4:2 5:1");
	assert_int_equal(query_int("SELECT count(*) FROM queries"), 1);
	assert_int_equal(verify(out, sizeof(out)), 0);
	assert_contains(out, "ok: 1 rows, chain intact (chain_seq 6..6, after a retention checkpoint)");
}

/*
 * A strict statement that comes while retention has much to remove waits
 * for one chunk, not for all of it: its row is durable while old rows are
 * still there.
 */
static void strict_write_between_retention_chunks(void **state)
{
	enum { OLD = 3000 };
	int64_t old = now_us() - 10 * 86400 * 1000000LL;
	Fired f = {.rows_seen = -1};
	AuditQuery q = {.session_id = 1, .subject = "s", .database = "d", .sql = "DELETE FROM t",
	                .classes = "DELETE,WRITE", .decision = "allow"};
	int64_t left;

	(void)state;
	start(AUDIT_ASYNC);
	write_rows(OLD, old);
	assert_true(wait_for(nothing_queued, 5000));
	audit_stop();
	audit_test_set_prune_chunk(1); /* a transaction per row: thousands of them */
	cfg.audit_retention = 86400;
	start(AUDIT_STRICT); /* retention starts at once */
	q.ts_us = now_us();
	f.ev = event_new(base, -1, 0, fired_cb, &f);
	assert_int_equal(audit_query_start(&q, f.ev, NULL, &f.id), AUDIT_OK);
	assert_true(run_until_fired(&f, 1, 5000));
	left = query_int("SELECT count(*) FROM queries WHERE chain_seq IS NOT NULL");
	assert_int_equal(audit_query_durable(f.ev, f.id), AUDIT_OK);
	assert_int_equal(f.rows_seen, 1);
	finish(f.id, 0);
	event_free(f.ev);
	audit_stop();
	audit_test_set_prune_chunk(0);
	cfg.audit_retention = 0;
	assert_true(left > 0); /* retention was not over when the row was durable */
	print_message("old rows left when the strict row was durable: %lld of %d\n", (long long)left, OLD);
}

/* A retention longer than the epoch is old (its microseconds overflow int64) prunes nothing. */
static void huge_retention_prunes_nothing(void **state)
{
	(void)state;
	start(AUDIT_ASYNC);
	write_rows(3, now_us() - 3600ll * 1000000);
	assert_true(wait_for(nothing_queued, 2000));
	cfg.audit_retention = 18446744073710ull; /* times 10^6 wraps to about half a second */
	audit_reconfigure(&cfg);
	usleep(500000); /* retention runs as soon as it is set */
	audit_stop();
	cfg.audit_retention = 0;
	assert_int_equal(query_int("SELECT count(*) FROM queries"), 3);
	assert_int_equal(query_int("SELECT count(*) FROM checkpoints"), 0);
}

static void retention_of_everything(void **state)
{
	int64_t old = now_us() - 3 * 86400 * 1000000LL;
	char out[512];

	(void)state;
	cfg.audit_retention = 86400;
	start(AUDIT_ASYNC);
	audit_stop();
	cfg.audit_retention = 0;
	start(AUDIT_ASYNC);
	write_rows(4, old);
	audit_stop();
	cfg.audit_retention = 86400; /* pruned as it starts */
	start(AUDIT_ASYNC);
	assert_true(wait_for(checkpoint_made, 3000));
	write_rows(2, now_us());
	audit_stop();
	assert_int_equal(query_int("SELECT min(id) FROM queries"), 5);
	assert_int_equal(verify(out, sizeof(out)), 0);
	assert_contains(out, "ok: 2 rows, chain intact (chain_seq 5..6, after a retention checkpoint)");
}

/* ---- failures --------------------------------------------------------------------------------- */

static void test_exec(const char *sql)
{
	char err[256];

	if (!audit_test_exec(sql, err, sizeof(err)))
		fail_msg("%s: %s", sql, err);
}

static bool only_newest_left(void)
{
	return query_int("SELECT (SELECT count(*) FROM sessions) + (SELECT count(*) FROM approvals)"
	                 " + (SELECT count(*) FROM queries)") == 3;
}

/*
 * Retention removes old sessions, approvals and unfinished statements, but
 * ids still continue after a restart: the newest of each stays.
 */
static void ids_continue_after_retention(void **state)
{
	int64_t old = now_us() - 3 * 86400 * 1000000LL;
	AuditSession s = {
	    .started_us = old, .subject = "a", .groups = "", .client_addr = "x", .database = "app"};
	AuditApproval a = {.session_id = 1,
	                   .subject = "a",
	                   .sql = "DROP TABLE t",
	                   .requested_us = old,
	                   .decided_us = old,
	                   .decided_by = "dba",
	                   .decision = "deny"};
	uint64_t last, id, sb, ab;

	(void)state;
	start(AUDIT_ASYNC);
	for (uint64_t i = 1; i <= 3; i++) {
		s.session_id = a.approval_id = i;
		assert_int_equal(audit_session_start(&s), AUDIT_OK);
		audit_session_end(i, old, "client closed");
		audit_approval(&a);
		last = add_query(i, "SELECT pg_sleep(100)", old); /* unfinished: pgveil was killed */
	}
	audit_stop();
	cfg.audit_retention = 86400; /* pruned as it starts */
	start(AUDIT_ASYNC);
	assert_true(wait_for(only_newest_left, 3000));
	audit_stop();
	cfg.audit_retention = 0;
	start(AUDIT_ASYNC);
	audit_id_bases(&sb, &ab);
	assert_int_equal(sb, 3);
	assert_int_equal(ab, 3);
	id = add_query(sb + 1, "SELECT 1", now_us());
	assert_true(id > last);
	audit_stop();
}

static void strict_readonly_refuses(void **state)
{
	Fired f = {.rows_seen = -1};
	AuditQuery q = {.session_id = 1, .ts_us = now_us(), .sql = "DELETE FROM t", .decision = "allow"};
	uint64_t id = 7;
	char buf[256], expect[256], out[512];

	(void)state;
	start(AUDIT_STRICT);
	write_rows(1, now_us());
	assert_true(wait_for(nothing_queued, 2000));
	test_exec("PRAGMA query_only = ON");
	f.ev = event_new(base, -1, 0, fired_cb, &f);
	assert_int_equal(audit_query_start(&q, f.ev, NULL, &f.id), AUDIT_OK);
	assert_true(run_until_fired(&f, 1, 5000));
	assert_int_equal(f.rows_seen, 0);
	assert_int_equal(audit_query_durable(f.ev, f.id), AUDIT_FAILED);
	audit_query_finish(f.id, &(AuditOutcome){.rows = -1,
	                                         .duration_us = -1,
	                                         .sqlstate = "58030",
	                                         .error = "the audit log cannot be written"});
	snprintf(expect, sizeof(expect), "audit_db %s: attempt to write a readonly database", dbpath);
	assert_non_null(audit_error(buf, sizeof(buf)));
	assert_string_equal(buf, expect);
	/* a statement refused now still gets its row, kept in memory until the file can be written */
	assert_int_equal(audit_query_start(&q, NULL, NULL, &id), AUDIT_FAILED);
	assert_true(id > f.id);
	audit_query_finish(id, &(AuditOutcome){.rows = -1, .duration_us = 0, .sqlstate = "58030", .error = "refused"});
	/* it can be written again: statements are accepted, the refused ones' rows are kept */
	test_exec("PRAGMA query_only = OFF");
	assert_true(wait_for(no_error, 3000));
	assert_int_equal(audit_query_start(&q, NULL, NULL, &id), AUDIT_OK);
	finish(id, 0);
	audit_stop();
	event_free(f.ev);
	snprintf(out, sizeof(out), "SELECT sqlstate FROM queries WHERE id = %llu", (unsigned long long)f.id);
	assert_string_equal(query_text(out), "58030");
	assert_int_equal(query_int("SELECT count(*) FROM queries WHERE sqlstate = '58030'"), 2);
	assert_int_equal(query_int("SELECT count(*) FROM queries WHERE hash IS NOT NULL"), 4);
	assert_int_equal(verify(out, sizeof(out)), 0);
}

static void async_failure_keeps_rows(void **state)
{
	uint64_t queued;
	char buf[256], out[512];

	(void)state;
	start(AUDIT_ASYNC);
	test_exec("PRAGMA query_only = ON");
	write_rows(20, now_us());
	assert_true(wait_for(has_error, 3000));
	assert_contains(audit_error(buf, sizeof(buf)), "attempt to write a readonly database");
	audit_stats(NULL, &queued, NULL);
	assert_int_equal(queued, 40);
	assert_int_equal(query_int("SELECT count(*) FROM queries"), 0);
	/* still accepted in async mode */
	write_rows(1, now_us());
	test_exec("PRAGMA query_only = OFF");
	assert_true(wait_for(nothing_queued, 3000));
	assert_false(has_error());
	assert_int_equal(query_int("SELECT count(*) FROM queries WHERE hash IS NOT NULL"), 21);
	audit_stop();
	assert_int_equal(verify(out, sizeof(out)), 0);
}

static void full_disk_is_reported(void **state)
{
	Fired f = {.rows_seen = -1};
	char *big = malloc(200000), buf[256], sql[64];
	AuditQuery q = {.session_id = 1, .ts_us = now_us(), .sql = big, .decision = "allow"};

	(void)state;
	assert_non_null(big);
	memset(big, 'x', 199999);
	big[199999] = '\0';
	start(AUDIT_STRICT);
	snprintf(sql, sizeof(sql), "PRAGMA max_page_count = %lld", (long long)query_int("PRAGMA page_count"));
	test_exec(sql);
	f.ev = event_new(base, -1, 0, fired_cb, &f);
	assert_int_equal(audit_query_start(&q, f.ev, NULL, &f.id), AUDIT_OK);
	assert_true(run_until_fired(&f, 1, 5000));
	assert_int_equal(audit_query_durable(f.ev, f.id), AUDIT_FAILED);
	assert_non_null(audit_error(buf, sizeof(buf)));
	assert_contains(buf, dbpath);
	assert_contains(buf, "database or disk is full");
	test_exec("PRAGMA max_page_count = 1000000");
	assert_true(wait_for(no_error, 3000));
	audit_query_finish(f.id, NULL);
	audit_stop();
	assert_int_equal(query_int("SELECT length(sql) FROM queries"), 199999);
	event_free(f.ev);
	free(big);
}

static void locked_database_is_reported(void **state)
{
	sqlite3 *other = open_db();
	char buf[256];

	(void)state;
	start(AUDIT_ASYNC);
	assert_int_equal(
	    sqlite3_exec(other, "BEGIN IMMEDIATE; INSERT INTO checkpoints VALUES (99, 'x', 0, '', 0, 0)",
	                 NULL, NULL, NULL),
	    SQLITE_OK);
	write_rows(2, now_us());
	assert_true(wait_for(has_error, 6000));
	assert_contains(audit_error(buf, sizeof(buf)), "database is locked");
	assert_int_equal(sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(other);
	assert_true(wait_for(nothing_queued, 4000));
	assert_false(has_error());
	audit_stop();
	assert_int_equal(query_int("SELECT count(*) FROM queries WHERE hash IS NOT NULL"), 2);
}

static void full_queue_then_room(void **state)
{
	Fired room = {.rows_seen = -1}, room2 = {.rows_seen = -1};
	AuditQuery q = {.session_id = 1, .ts_us = now_us(), .sql = "SELECT 1", .decision = "allow"};
	uint64_t ids[8], id = 5, queued;

	(void)state;
	audit_test_set_queue_max(8);
	start(AUDIT_ASYNC);
	test_exec("PRAGMA query_only = ON");
	room.ev = event_new(base, -1, 0, fired_cb, &room);
	room2.ev = event_new(base, -1, 0, fired_cb, &room2);
	for (int i = 0; i < 8; i++)
		ids[i] = add_query(1, "SELECT 1", now_us());
	assert_int_equal(audit_query_start(&q, NULL, room.ev, &id), AUDIT_FULL);
	assert_int_equal(id, 0);
	assert_int_equal(audit_query_start(&q, NULL, room.ev, &id), AUDIT_FULL);
	assert_int_equal(audit_query_start(&q, NULL, room2.ev, &id), AUDIT_FULL);
	audit_forget(NULL, room2.ev);
	/* outcomes still go in, past the bound */
	for (int i = 0; i < 8; i++)
		finish(ids[i], 1);
	audit_stats(NULL, &queued, NULL);
	assert_int_equal(queued, 16);
	for (int i = 0; i < 50; i++)
		event_base_loop(base, EVLOOP_NONBLOCK);
	assert_int_equal(room.count, 0);
	test_exec("PRAGMA query_only = OFF");
	assert_true(run_until_fired(&room, 1, 4000));
	assert_int_equal(room.count, 1);
	for (int i = 0; i < 50; i++)
		event_base_loop(base, EVLOOP_NONBLOCK);
	assert_int_equal(room.count, 1);
	assert_int_equal(room2.count, 0);
	assert_int_equal(audit_query_start(&q, NULL, room.ev, &id), AUDIT_OK);
	assert_int_equal(id, 9);
	/* the rest of a message whose first row went in: past the bound, none waits, none twice */
	test_exec("PRAGMA query_only = ON");
	for (int i = 0; i < 10; i++)
		assert_int_equal(audit_query_start(&q, NULL, NULL, &id), AUDIT_OK);
	assert_int_equal(id, 19);
	assert_int_equal(audit_query_start(&q, NULL, room.ev, &id), AUDIT_FULL);
	assert_int_equal(id, 0);
	test_exec("PRAGMA query_only = OFF");
	for (int t = 0; t < 4000 && room.count < 2; t++) {
		event_base_loop(base, EVLOOP_NONBLOCK);
		usleep(1000);
	}
	assert_int_equal(room.count, 2);
	audit_stop();
	event_free(room.ev);
	event_free(room2.ev);
	assert_int_equal(query_int("SELECT count(*) FROM queries"), 19);
}

/*
 * While the database cannot be written, a new session is refused once the
 * queue holds four times as many events as statement rows may wait: ends
 * (and outcomes) still go in, and logins are accepted again once written.
 */
static void logins_refused_when_far_behind(void **state)
{
	AuditSession s = {.subject = "a", .groups = "", .client_addr = "x", .database = "app"};
	uint64_t queued;

	(void)state;
	audit_test_set_queue_max(2);
	start(AUDIT_ASYNC);
	test_exec("PRAGMA query_only = ON");
	for (uint64_t i = 1; i <= 4; i++) {
		s.session_id = i;
		assert_int_equal(audit_session_start(&s), AUDIT_OK);
		audit_session_end(i, now_us(), "client closed");
	}
	s.session_id = 5;
	assert_int_equal(audit_session_start(&s), AUDIT_FULL);
	audit_session_end(4, now_us(), "client closed"); /* never refused */
	audit_stats(NULL, &queued, NULL);
	assert_int_equal(queued, 9);
	test_exec("PRAGMA query_only = OFF");
	assert_true(wait_for(nothing_queued, 3000));
	assert_int_equal(audit_session_start(&s), AUDIT_OK);
	audit_stop();
	assert_int_equal(query_int("SELECT count(*) FROM sessions"), 5);
}

static void stop_writes_everything_queued(void **state)
{
	enum { N = 5000 };
	AuditSession s = {
	    .session_id = 1, .subject = "a", .groups = "", .client_addr = "x", .database = "app"};
	char out[512];

	(void)state;
	start(AUDIT_ASYNC);
	assert_int_equal(audit_session_start(&s), AUDIT_OK);
	for (int i = 0; i < N; i++)
		finish(add_query(1, "INSERT INTO t VALUES (1)", now_us()), 1);
	audit_session_end(1, now_us(), "client closed");
	audit_stop();
	assert_int_equal(query_int("SELECT count(*) FROM queries WHERE hash IS NOT NULL"), N);
	assert_string_equal(query_text("SELECT end_reason FROM sessions"), "client closed");
	assert_int_equal(verify(out, sizeof(out)), 0);
	assert_contains(out, "ok: 5000 rows");
}

static void ids_stay_unique_across_restarts(void **state)
{
	AuditSession s = {
	    .session_id = 1, .subject = "a", .groups = "", .client_addr = "x", .database = "app"};
	AuditApproval a = {.approval_id = 1, .session_id = 1, .subject = "a", .sql = "DROP TABLE t"};
	uint64_t sb, ab;

	(void)state;
	start(AUDIT_ASYNC);
	audit_id_bases(&sb, &ab);
	assert_int_equal(sb, 0);
	assert_int_equal(ab, 0);
	assert_int_equal(audit_session_start(&s), AUDIT_OK);
	s.session_id = 2;
	assert_int_equal(audit_session_start(&s), AUDIT_OK);
	audit_approval(&a);
	audit_stop();
	audit_id_bases(&sb, &ab);
	assert_int_equal(sb, 0);
	start(AUDIT_ASYNC);
	audit_id_bases(&sb, &ab);
	assert_int_equal(sb, 2);
	assert_int_equal(ab, 1);
	/* pgveil numbers this run's sessions and approvals after the bases (main sets the counters) */
	s.session_id = sb + 1;
	assert_int_equal(audit_session_start(&s), AUDIT_OK);
	a.approval_id = ab + 1;
	a.session_id = sb + 1;
	audit_approval(&a);
	finish(add_query(sb + 1, "SELECT 1", now_us()), 1);
	audit_stop();
	assert_string_equal(query_text("SELECT group_concat(id) FROM sessions"), "1,2,3");
	assert_string_equal(query_text("SELECT group_concat(id) FROM approvals"), "1,2");
	assert_int_equal(query_int("SELECT session_id FROM queries"), 3);
	assert_int_equal(query_int("SELECT session_id FROM approvals WHERE id = 2"), 3);
}

/* audit_format_time agrees with gmtime_r and printf over the years 0-9999 and says so past them. */
static void time_format_matches_gmtime(void **state)
{
	static const int64_t fixed[] = {0, -1, 1, 951782400000000, 951868799999999, 4107542399999999,
	                                -62135596800000000, -62167219200000000, 253402300799999999,
	                                1795488067123456};
	uint64_t x = 88172645463325252ull;
	char got[32], want[96];

	(void)state;
	for (int i = 0; i < 200000; i++) {
		int64_t us;
		time_t t;
		struct tm tm;

		if (i < (int)(sizeof(fixed) / sizeof(fixed[0]))) {
			us = fixed[i];
		} else {
			x ^= x << 13; /* xorshift: spread over -62167219200 .. 253402300799 seconds */
			x ^= x >> 7;
			x ^= x << 17;
			us = -62167219200000000 + (int64_t)(x % 315569520000000000ull);
		}
		t = (time_t)(us >= 0 ? us / 1000000 : -((-us + 999999) / 1000000));
		assert_non_null(gmtime_r(&t, &tm));
		snprintf(want, sizeof(want), "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900,
		         tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		         (int)(us - (int64_t)t * 1000000));
		audit_format_time(us, got);
		assert_string_equal(got, want);
	}
	audit_format_time(253402300800000000, got); /* year 10000 */
	assert_string_equal(got, "0000-00-00T00:00:00.000000Z");
	audit_format_time(-62167219200000001, got); /* year -1 */
	assert_string_equal(got, "0000-00-00T00:00:00.000000Z");
	audit_format_time(INT64_MIN, got);
	assert_string_equal(got, "0000-00-00T00:00:00.000000Z");
	audit_format_time(INT64_MAX, got);
	assert_string_equal(got, "0000-00-00T00:00:00.000000Z");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(time_format_matches_gmtime),
	    cmocka_unit_test_setup_teardown(schema_created_and_newer_refused, setup, teardown),
	    cmocka_unit_test_setup_teardown(foreign_database_refused, setup, teardown),
	    cmocka_unit_test_setup_teardown(version_1_migrated, setup, teardown),
	    cmocka_unit_test_setup_teardown(pending_rows_recovered_at_open, setup, teardown),
	    cmocka_unit_test_setup_teardown(off_without_audit_db, setup, teardown),
	    cmocka_unit_test_setup_teardown(async_rows_written, setup, teardown),
	    cmocka_unit_test_setup_teardown(strict_row_is_durable_when_event_fires, setup, teardown),
	    cmocka_unit_test_setup_teardown(strict_lazy_passes_and_switch_to_async, setup, teardown),
	    cmocka_unit_test_setup_teardown(idle_writer_woken, setup, teardown),
	    cmocka_unit_test_setup_teardown(strict_refused_row_is_not_durable, setup, teardown),
	    cmocka_unit_test_setup_teardown(forgotten_event_never_fires, setup, teardown),
	    cmocka_unit_test_setup_teardown(durable_given_in_async_mode, setup, teardown),
	    cmocka_unit_test_setup_teardown(many_waiters, setup, teardown),
	    cmocka_unit_test_setup_teardown(chain_follows_finish_order, setup, teardown),
	    cmocka_unit_test_setup_teardown(chain_hashes_what_is_stored, setup, teardown),
	    cmocka_unit_test_setup_teardown(utf16_database_refused, setup, teardown),
	    cmocka_unit_test_setup_teardown(unfinished_rows_are_not_tampering, setup, teardown),
	    cmocka_unit_test_setup_teardown(verifier_finds_an_edited_row, setup, teardown),
	    cmocka_unit_test_setup_teardown(verifier_finds_deleted_rows, setup, teardown),
	    cmocka_unit_test_setup_teardown(verifier_finds_inserted_rows, setup, teardown),
	    cmocka_unit_test_setup_teardown(verifier_finds_reordered_rows, setup, teardown),
	    cmocka_unit_test_setup_teardown(retention_keeps_the_chain_verifiable, setup, teardown),
	    cmocka_unit_test_setup_teardown(retention_of_everything, setup, teardown),
	    cmocka_unit_test_setup_teardown(retention_in_chunks, setup, teardown),
	    cmocka_unit_test_setup_teardown(strict_write_between_retention_chunks, setup, teardown),
	    cmocka_unit_test_setup_teardown(huge_retention_prunes_nothing, setup, teardown),
	    cmocka_unit_test_setup_teardown(ids_continue_after_retention, setup, teardown),
	    cmocka_unit_test_setup_teardown(strict_readonly_refuses, setup, teardown),
	    cmocka_unit_test_setup_teardown(async_failure_keeps_rows, setup, teardown),
	    cmocka_unit_test_setup_teardown(full_disk_is_reported, setup, teardown),
	    cmocka_unit_test_setup_teardown(locked_database_is_reported, setup, teardown),
	    cmocka_unit_test_setup_teardown(full_queue_then_room, setup, teardown),
	    cmocka_unit_test_setup_teardown(logins_refused_when_far_behind, setup, teardown),
	    cmocka_unit_test_setup_teardown(stop_writes_everything_queued, setup, teardown),
	    cmocka_unit_test_setup_teardown(ids_stay_unique_across_restarts, setup, teardown),
	};
	int rc;

	log_setup(LL_ERROR, false);
	if (evthread_use_pthreads() != 0)
		return 1;
	base = event_base_new();
	if (base == NULL)
		return 1;
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	event_base_free(base);
	libevent_global_shutdown();
	return rc;
}
