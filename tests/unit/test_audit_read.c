/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the auditors' read-only SQL (audit_read) on a database made
 * from sql/audit.sql with sample sessions and statements: SELECT, joins,
 * WITH RECURSIVE, EXPLAIN and EXPLAIN QUERY PLAN, VALUES, the column types
 * and value formats; every kind of write, schema change, ATTACH, PRAGMA,
 * extension loading, VACUUM INTO, several statements in one and EXPLAIN of
 * a write refused with 42501/42601, the database file unchanged after all
 * of them (bytes and mtime); the time limit (57014), the row and byte
 * limits (54000), syntax and name errors with their SQLSTATEs, a missing
 * file; then the reader threads: concurrent requests woken through events,
 * a request canceled while it runs never waking its event, an interrupted
 * one answering 57014, and stopping the pool. Last, the admin console over
 * it: a string of commands waiting for the audit log and going on when the
 * session's event fires, result sets with their type OIDs, SHOW SESSION n,
 * errors with positions in the whole string, a closed console never woken.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <sqlite3.h>

#include "pgveil/admin.h"
#include "pgveil/audit_read.h"
#include "pgveil/config.h"
#include "pgveil/log.h"
#include "pgveil/pgproto.h"

#include "testfile.h"

static char db_path[320];
static char dir_path[256];

/* ---- the sample database -------------------------------------------------------------------- */

static const char sample_rows[] =
	"INSERT INTO sessions VALUES (1, '2026-01-02T10:00:00.000000Z', '2026-01-02T10:05:00.500000Z', 'ci-bot',"
	" 'agents', '10.0.0.5:5000', 'app', 'app_agent', 1, 'client closed');"
	"INSERT INTO sessions VALUES (2, '2026-01-02T11:00:00.000000Z', NULL, 'etl', 'agents,etl',"
	" '10.0.0.6:5001', 'app', 'app_agent', 0, NULL);"
	"INSERT INTO queries (id, session_id, ts, subject, database, sql, classes, decision, rule, masked_columns,"
	" rows, duration_ms, sqlstate, error, approval_id) VALUES"
	" (1, 1, '2026-01-02T10:00:01.000000Z', 'ci-bot', 'app', 'SELECT * FROM users', 'SELECT,READ', 'allow',"
	"  NULL, 'public.users.email', 100, 1.5, NULL, NULL, NULL),"
	" (2, 1, '2026-01-02T10:00:02.000000Z', 'ci-bot', 'app', 'DELETE FROM orders', 'DELETE,WRITE', 'block',"
	"  'rules/10.rules:4', NULL, NULL, 0.25, '42501', 'blocked', NULL),"
	" (3, 2, '2026-01-02T11:00:01.000000Z', 'etl', 'app', 'UPDATE orders SET x = 1', 'UPDATE,WRITE',"
	"  'approve', 'rules/10.rules:7', NULL, 3, 2000, NULL, NULL, 1),"
	" (4, 1, '2026-01-02T10:00:03.000000Z', 'ci-bot', 'app', 'SELECT 1', 'SELECT,READ', 'allow', NULL, NULL,"
	"  1, 0.1, NULL, NULL, NULL);"
	"INSERT INTO approvals (id, query_id, session_id, subject, sql, rule, requested_at, decided_at, decided_by,"
	" decision) VALUES (1, 3, 2, 'etl', 'UPDATE orders SET x = 1', 'rules/10.rules:7',"
	" '2026-01-02T11:00:01.000000Z', '2026-01-02T11:00:03.000000Z', 'alice', 'approve');";

static int setup(void **state)
{
	char *schema = test_read_file(TEST_AUDIT_SCHEMA, NULL);
	sqlite3 *db;
	char *err = NULL;

	(void)state;
	snprintf(dir_path, sizeof(dir_path), "/tmp/pgveil-audit-read-XXXXXX");
	assert_non_null(mkdtemp(dir_path));
	snprintf(db_path, sizeof(db_path), "%s/audit.db", dir_path);
	assert_int_equal(sqlite3_open(db_path, &db), SQLITE_OK);
	if (sqlite3_exec(db, schema, NULL, NULL, &err) != SQLITE_OK ||
	    sqlite3_exec(db, sample_rows, NULL, NULL, &err) != SQLITE_OK ||
	    sqlite3_exec(db, "PRAGMA user_version = 2", NULL, NULL, &err) != SQLITE_OK)
		fail_msg("sample database: %s", err);
	sqlite3_close(db);
	free(schema);
	chmod(db_path, 0644);
	return 0;
}

static int teardown(void **state)
{
	char cmd[512];

	(void)state;
	audit_read_stop();
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir_path);
	assert_int_equal(system(cmd), 0);
	return 0;
}

/* ---- helpers ---------------------------------------------------------------------------- */

static AuditReadResult *run(const char *sql)
{
	AuditReadResult *res = audit_read_run(db_path, sql, NULL, NULL);

	assert_non_null(res);
	return res;
}

/* Runs sql and expects success; returns the result. */
static AuditReadResult *ok(const char *sql)
{
	AuditReadResult *res = run(sql);

	if (res->sqlstate[0] != '\0')
		fail_msg("%s: %s %s", sql, res->sqlstate, res->message);
	return res;
}

/* Runs sql with limits and expects error `code` with `words` in the message. */
static void expect_error_lim(const char *sql, const AuditReadLimits *lim, const char *code, const char *words)
{
	AuditReadResult *res = audit_read_run(db_path, sql, lim, NULL);

	assert_non_null(res);
	if (strcmp(res->sqlstate, code) != 0 || res->message == NULL || strstr(res->message, words) == NULL)
		fail_msg("%s: got %s \"%s\", expected %s \"%s\"", sql, res->sqlstate,
			 res->message ? res->message : "", code, words);
	assert_int_equal(res->n_rows, 0);
	assert_int_equal(res->n_cols, 0);
	audit_read_result_free(res);
}

static void expect_error(const char *sql, const char *code, const char *words)
{
	expect_error_lim(sql, NULL, code, words);
}

static void expect_cell(const AuditReadResult *res, int64_t row, int col, const char *want)
{
	const char *got = audit_read_value(res, row, col);

	if (want == NULL && got == NULL)
		return;
	if (want == NULL || got == NULL || strcmp(want, got) != 0)
		fail_msg("row %lld col %d: got %s, expected %s", (long long)row, col, got ? got : "NULL",
			 want ? want : "NULL");
}

/* ---- reading ---------------------------------------------------------------------------- */

static void select_rows_and_types(void **state)
{
	AuditReadResult *res = ok("SELECT id, subject, rows, duration_ms, sqlstate FROM queries ORDER BY id");

	(void)state;
	assert_int_equal(res->n_cols, 5);
	assert_string_equal(res->col_names[0], "id");
	assert_string_equal(res->col_names[3], "duration_ms");
	assert_int_equal(res->col_types[0], AUDIT_READ_OID_INT8);
	assert_int_equal(res->col_types[1], AUDIT_READ_OID_TEXT);
	assert_int_equal(res->col_types[2], AUDIT_READ_OID_INT8);   /* integers and NULLs */
	assert_int_equal(res->col_types[3], AUDIT_READ_OID_FLOAT8);
	assert_int_equal(res->col_types[4], AUDIT_READ_OID_TEXT);
	assert_int_equal(res->n_rows, 4);
	expect_cell(res, 0, 0, "1");
	expect_cell(res, 0, 1, "ci-bot");
	expect_cell(res, 0, 2, "100");
	expect_cell(res, 0, 3, "1.5");
	expect_cell(res, 0, 4, NULL);
	expect_cell(res, 1, 2, NULL);
	expect_cell(res, 1, 3, "0.25");
	expect_cell(res, 1, 4, "42501");
	expect_cell(res, 2, 3, "2000");  /* REAL affinity: 2000.0, shown as float8 shows it */
	expect_cell(res, 3, 3, "0.1");
	assert_null(audit_read_value(res, 4, 0));
	assert_null(audit_read_value(res, 0, 5));
	audit_read_result_free(res);

	/* no rows: the declared types decide */
	res = ok("SELECT id, rows, duration_ms, sql FROM queries WHERE id > 100");
	assert_int_equal(res->n_rows, 0);
	assert_int_equal(res->col_types[0], AUDIT_READ_OID_INT8);
	assert_int_equal(res->col_types[1], AUDIT_READ_OID_INT8);
	assert_int_equal(res->col_types[2], AUDIT_READ_OID_FLOAT8);
	assert_int_equal(res->col_types[3], AUDIT_READ_OID_TEXT);
	audit_read_result_free(res);
}

static void joins_across_tables(void **state)
{
	AuditReadResult *res = ok("SELECT s.id, s.subject, count(q.id) AS statements, sum(q.duration_ms) AS ms,"
				  " group_concat(q.decision, ',') AS decisions"
				  " FROM sessions s LEFT JOIN queries q ON q.session_id = s.id"
				  " GROUP BY s.id ORDER BY s.id");

	(void)state;
	assert_int_equal(res->n_rows, 2);
	assert_string_equal(res->col_names[2], "statements");
	assert_int_equal(res->col_types[2], AUDIT_READ_OID_INT8);
	assert_int_equal(res->col_types[3], AUDIT_READ_OID_FLOAT8);
	expect_cell(res, 0, 1, "ci-bot");
	expect_cell(res, 0, 2, "3");
	expect_cell(res, 0, 3, "1.85");
	expect_cell(res, 0, 4, "allow,block,allow");
	expect_cell(res, 1, 2, "1");
	audit_read_result_free(res);

	/* an approval with its statement and session */
	res = ok("SELECT a.decided_by, q.sql, s.subject FROM approvals a JOIN queries q ON q.id = a.query_id"
		 " JOIN sessions s ON s.id = a.session_id");
	assert_int_equal(res->n_rows, 1);
	expect_cell(res, 0, 0, "alice");
	expect_cell(res, 0, 1, "UPDATE orders SET x = 1");
	expect_cell(res, 0, 2, "etl");
	audit_read_result_free(res);
}

static void recursive_cte_explain_values(void **state)
{
	AuditReadResult *res;
	bool uses_index = false;

	(void)state;
	res = ok("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5) SELECT x, x * x AS sq FROM c");
	assert_int_equal(res->n_rows, 5);
	expect_cell(res, 4, 1, "25");
	audit_read_result_free(res);

	res = ok("  /* a comment first */ with q as (select * from queries where decision = 'allow') "
		 "select count(*) from q -- and one after");
	expect_cell(res, 0, 0, "2");
	audit_read_result_free(res);

	res = ok("EXPLAIN QUERY PLAN SELECT * FROM queries WHERE session_id = 1 ORDER BY id");
	assert_true(res->n_rows >= 1);
	assert_string_equal(res->col_names[3], "detail");
	for (int64_t i = 0; i < res->n_rows; i++)
		uses_index |= strstr(audit_read_value(res, i, 3), "queries_session") != NULL;
	assert_true(uses_index);
	audit_read_result_free(res);

	res = ok("EXPLAIN SELECT 1");
	assert_true(res->n_rows > 1);
	assert_string_equal(res->col_names[1], "opcode");
	audit_read_result_free(res);

	res = ok("VALUES (1, 'a'), (2, NULL)");
	assert_int_equal(res->n_rows, 2);
	assert_int_equal(res->col_types[0], AUDIT_READ_OID_INT8);
	assert_int_equal(res->col_types[1], AUDIT_READ_OID_TEXT);
	expect_cell(res, 1, 1, NULL);
	audit_read_result_free(res);

	res = ok("SELECT sql FROM sqlite_schema WHERE name = 'queries'");
	assert_non_null(strstr(audit_read_value(res, 0, 0), "CREATE TABLE queries"));
	audit_read_result_free(res);
}

static void value_formats(void **state)
{
	AuditReadResult *res = ok("SELECT x'00ff10' AS b, 0.1 + 0.2 AS f, 1e999 AS inf, -1e999 AS ninf, 1e20 AS big,"
				  " CAST(x'61ff62' AS TEXT) AS bad_utf8, 'héllo' AS utf8, 9223372036854775807 AS i,"
				  " NULL AS n, json_extract('{\"a\":[1,2]}', '$.a') AS j, '{\"k\":3}' ->> 'k' AS arrow,"
				  " typeof(CURRENT_TIMESTAMP) AS now");

	(void)state;
	assert_int_equal(res->col_types[0], AUDIT_READ_OID_BYTEA);
	expect_cell(res, 0, 0, "\\x00ff10");
	assert_int_equal(res->col_types[1], AUDIT_READ_OID_FLOAT8);
	expect_cell(res, 0, 1, "0.30000000000000004");
	expect_cell(res, 0, 2, "Infinity");
	expect_cell(res, 0, 3, "-Infinity");
	expect_cell(res, 0, 4, "1e+20");
	expect_cell(res, 0, 5, "a\xEF\xBF\xBD" "b");
	expect_cell(res, 0, 6, "héllo");
	expect_cell(res, 0, 7, "9223372036854775807");
	expect_cell(res, 0, 8, NULL);
	assert_int_equal(res->col_types[8], AUDIT_READ_OID_TEXT);
	expect_cell(res, 0, 9, "[1,2]");
	expect_cell(res, 0, 10, "3");
	expect_cell(res, 0, 11, "text");
	audit_read_result_free(res);

	/* a column mixing integers and reals is float8; mixing text is text */
	res = ok("VALUES (1, 1), (2.5, 'x')");
	assert_int_equal(res->col_types[0], AUDIT_READ_OID_FLOAT8);
	assert_int_equal(res->col_types[1], AUDIT_READ_OID_TEXT);
	expect_cell(res, 0, 0, "1");
	expect_cell(res, 1, 0, "2.5");
	audit_read_result_free(res);
}

/* ---- refusals ------------------------------------------------------------------------------- */

typedef struct FileState {
	char *bytes;
	size_t len;
	struct timespec mtime;
} FileState;

static void file_state(FileState *fs)
{
	struct stat st;

	assert_int_equal(stat(db_path, &st), 0);
	fs->mtime = st.st_mtim;
	fs->bytes = test_read_file(db_path, &fs->len);
}

static void only_file_in_dir_is_the_database(void)
{
	char path[400];

	for (const char *const *s = (const char *const[]){ "-journal", "-wal", "-shm", NULL }; *s != NULL; s++) {
		snprintf(path, sizeof(path), "%s%s", db_path, *s);
		assert_int_not_equal(access(path, F_OK), 0);
	}
}

static void writes_refused(void **state)
{
	static const struct {
		const char *sql, *code, *words;
	} cases[] = {
		{ "INSERT INTO queries (session_id, ts, subject, database, sql, classes, decision)"
		  " VALUES (1, 'x', 'x', 'x', 'x', 'x', 'x')", "42501", "read-only: INSERT is not allowed" },
		{ "REPLACE INTO sessions (id) VALUES (1)", "42501", "INSERT is not allowed" },
		{ "UPDATE queries SET decision = 'allow'", "42501", "read-only: UPDATE is not allowed" },
		{ "DELETE FROM queries", "42501", "read-only: DELETE is not allowed" },
		{ "DROP TABLE queries", "42501", "changing the schema is not allowed" },
		{ "DROP INDEX queries_ts", "42501", "changing the schema is not allowed" },
		{ "CREATE TABLE t (a)", "42501", "changing the schema is not allowed" },
		{ "CREATE TEMP TABLE t (a)", "42501", "changing the schema is not allowed" },
		{ "CREATE TEMP VIEW v AS SELECT 1", "42501", "changing the schema is not allowed" },
		{ "CREATE INDEX i ON queries (sql)", "42501", "changing the schema is not allowed" },
		{ "CREATE TRIGGER t AFTER INSERT ON queries BEGIN SELECT 1; END", "42501",
		  "changing the schema is not allowed" },
		{ "CREATE VIRTUAL TABLE v USING fts5(a)", "42501", "changing the schema is not allowed" },
		{ "ALTER TABLE queries ADD COLUMN x", "42501", "changing the schema is not allowed" },
		{ "ATTACH 'x' AS y", "42501", "ATTACH is not allowed" },
		{ "ATTACH ':memory:' AS y", "42501", "ATTACH is not allowed" },
		{ "DETACH main", "42501", "DETACH is not allowed" },
		{ "PRAGMA writable_schema = 1", "42501", "PRAGMA writable_schema is not allowed" },
		{ "PRAGMA query_only = 0", "42501", "PRAGMA query_only is not allowed" },
		{ "PRAGMA query_only", "42501", "PRAGMA query_only is not allowed" },
		{ "PRAGMA journal_mode = DELETE", "42501", "PRAGMA journal_mode is not allowed" },
		{ "SELECT load_extension('x')", "42501", "function load_extension() is not allowed" },
		{ "SELECT load_extension('/tmp/x.so', 'init')", "42501", "function load_extension() is not allowed" },
		{ "SELECT fts3_tokenizer('simple')", "42501", "function fts3_tokenizer() is not allowed" },
		{ "SELECT sqlite_log(1, 'x')", "42501", "function sqlite_log() is not allowed" },
		{ "SELECT * FROM json_each('[1, 2]')", "42501", "read-only: changing the schema is not allowed" },
		{ "SELECT * FROM pragma_table_info('queries')", "42501", "changing the schema is not allowed" },
		{ "UPDATE sqlite_master SET sql = ''", "42501", "may not be modified" },
		{ "SELECT 1; DELETE FROM queries", "42601", "several statements" },
		{ "SELECT 1; SELECT 2", "42601", "several statements" },
		{ "SELECT 1;;; -- fine so far\n VACUUM", "42601", "several statements" },
		{ "VACUUM", "42501", "read-only" },
		{ "VACUUM INTO '/tmp/pgveil-audit-read-vacuum.db'", "42501", "the audit log is read-only" },
		{ "BEGIN", "42501", "transaction statement is not allowed" },
		{ "BEGIN IMMEDIATE", "42501", "transaction statement is not allowed" },
		{ "COMMIT", "42501", "transaction statement is not allowed" },
		{ "SAVEPOINT a", "42501", "SAVEPOINT is not allowed" },
		{ "ANALYZE", "42501", "is not allowed" },
		{ "REINDEX", "42501", "REINDEX is not allowed" },
		{ "WITH x AS (SELECT 1) DELETE FROM queries", "42501", "DELETE is not allowed" },
		{ "WITH x AS (SELECT 1) INSERT INTO sessions (id) SELECT * FROM x", "42501", "INSERT is not allowed" },
		{ "EXPLAIN DELETE FROM queries", "42501", "DELETE is not allowed" },
		{ "EXPLAIN QUERY PLAN UPDATE queries SET rows = 0", "42501", "UPDATE is not allowed" },
		{ "EXPLAIN PRAGMA writable_schema = 1", "42501", "PRAGMA writable_schema is not allowed" },
		{ "SELECT * FROM queries WHERE id = ?", "42P02", "no parameters" },
		{ "SELECT * FROM queries WHERE id = :id", "42P02", "no parameters" },
	};
	FileState before, after;

	(void)state;
	file_state(&before);
	for (size_t i = 0; i < PGV_ARRAY_LEN(cases); i++)
		expect_error(cases[i].sql, cases[i].code, cases[i].words);
	assert_int_not_equal(access("/tmp/pgveil-audit-read-vacuum.db", F_OK), 0);
	file_state(&after);
	assert_int_equal(before.len, after.len);
	assert_memory_equal(before.bytes, after.bytes, before.len);
	assert_int_equal(before.mtime.tv_sec, after.mtime.tv_sec);
	assert_int_equal(before.mtime.tv_nsec, after.mtime.tv_nsec);
	only_file_in_dir_is_the_database();
	free(before.bytes);
	free(after.bytes);

	/* a table-valued function's refusal says what is going on */
	{
		AuditReadResult *res = run("SELECT * FROM json_each('[1]')");

		assert_non_null(res->hint);
		assert_non_null(strstr(res->hint, "table-valued functions"));
		audit_read_result_free(res);
	}
}

static void errors_have_sqlstates(void **state)
{
	AuditReadResult *res;

	(void)state;
	res = run("SELECT FROM WHERE");
	assert_string_equal(res->sqlstate, "42601");
	assert_non_null(strstr(res->message, "syntax error"));
	assert_int_equal(res->err_offset, 7);
	audit_read_result_free(res);

	res = run("SELECT * FROM nowhere");
	assert_string_equal(res->sqlstate, "42P01");
	assert_string_equal(res->message, "no such table: nowhere");
	audit_read_result_free(res);

	expect_error("SELECT nope FROM queries", "42703", "no such column: nope");
	expect_error("SELECT \"nope\" FROM queries", "42703", "no such column: nope");
	expect_error("SELECT nofunc(1)", "42883", "no such function: nofunc");
	expect_error("SELECT abs(1, 2)", "42883", "wrong number of arguments");
	expect_error("", "42601", "empty statement");
	expect_error("  -- nothing\n", "42601", "empty statement");
	expect_error("SELECT json('not json')", "22000", "malformed JSON");
	expect_error("SELECT abs(-9223372036854775807 - 1)", "22003", "integer overflow");
	expect_error("SELECT zeroblob(100000000)", "54000", "too big");

	res = audit_read_run("/nonexistent/audit.db", "SELECT 1", NULL, NULL);
	assert_string_equal(res->sqlstate, "58030");
	assert_non_null(strstr(res->message, "the audit log cannot be read"));
	audit_read_result_free(res);
	assert_int_not_equal(access("/nonexistent/audit.db", F_OK), 0);

	/* a file that is not a database */
	{
		char path[400];
		FILE *f;

		snprintf(path, sizeof(path), "%s/garbage.db", dir_path);
		f = fopen(path, "w");
		assert_non_null(f);
		fputs("this is not an SQLite database, not even close to one ......................................"
		      "................................................................................", f);
		fclose(f);
		res = audit_read_run(path, "SELECT * FROM queries", NULL, NULL);
		assert_string_equal(res->sqlstate, "XX001");
		audit_read_result_free(res);
	}
}

static void limits(void **state)
{
	AuditReadLimits small = { .max_rows = 100 }, tiny_bytes = { .max_bytes = 10000 }, quick = { .timeout_ms = 200 };
	uint64_t t0;
	AuditReadResult *res;
	FileState before, after;

	(void)state;
	file_state(&before);
	/* rows */
	res = audit_read_run(db_path, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 100) SELECT x FROM c",
			     &small, NULL);
	assert_string_equal(res->sqlstate, "");
	assert_int_equal(res->n_rows, 100);
	audit_read_result_free(res);
	expect_error_lim("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 101) SELECT x FROM c",
			 &small, "54000", "more than 100 rows");
	expect_error("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c", "54000",
		     "more than 100000 rows");
	/* bytes */
	expect_error_lim("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 100)"
			 " SELECT printf('%.*c', 200, 'x') FROM c",
			 &tiny_bytes, "54000", "larger than 10000 bytes");
	/* one row of values each within the limit, together far past it: stopped at the value that crosses it */
	expect_error_lim("SELECT zeroblob(6000), zeroblob(6000), zeroblob(6000), zeroblob(6000)", &tiny_bytes, "54000",
			 "larger than 10000 bytes");
	/* time: a recursive CTE that never ends and returns nothing meanwhile */
	t0 = pgv_now_us();
	expect_error_lim("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
			 &quick, "57014", "statement timeout");
	assert_true(pgv_now_us() - t0 < 2000000);
	/* a cross join blowing up is stopped the same way */
	expect_error_lim("SELECT count(*) FROM queries a, queries b, queries c, queries d,"
			 " (WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT x FROM r)",
			 &quick, "57014", "statement timeout");
	/* an interrupt flag already set */
	{
		int stop = 1;

		res = audit_read_run(db_path,
				     "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
				     NULL, &stop);
		assert_string_equal(res->sqlstate, "57014");
		assert_string_equal(res->message, "canceling statement due to user request");
		audit_read_result_free(res);
	}
	file_state(&after);
	assert_int_equal(before.len, after.len);
	assert_memory_equal(before.bytes, after.bytes, before.len);
	assert_int_equal(before.mtime.tv_nsec, after.mtime.tv_nsec);
	free(before.bytes);
	free(after.bytes);
}

/* ---- the reader threads --------------------------------------------------------------------- */

static int fired[8];

static void fired_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	fired[(intptr_t)arg]++;
}

static const char forever[] =
	"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";

/* Loops base until every event in want has fired, at most `seconds`. */
static void loop_until(struct event_base *base, const int *want, int n, int seconds)
{
	uint64_t end = pgv_now_us() + (uint64_t)seconds * 1000000;

	for (;;) {
		bool all = true;

		for (int i = 0; i < n; i++)
			all &= fired[i] >= want[i];
		if (all)
			return;
		if (pgv_now_us() >= end)
			fail_msg("events fired: %d %d %d", fired[0], fired[1], fired[2]);
		event_base_loop(base, EVLOOP_NONBLOCK);
		usleep(2000);
	}
}

static void pool_serves_requests(void **state)
{
	struct event_base *base = event_base_new();
	struct event *ev[6];
	AuditRead *r[6];
	AuditReadLimits quick = { .timeout_ms = 300 };
	int want[6] = { 1, 1, 1, 1, 1, 1 };
	const char *sql[6] = { "SELECT count(*) FROM queries", "SELECT subject FROM sessions ORDER BY id",
			       forever, "SELECT 1; SELECT 2", "INSERT INTO sessions (id) VALUES (9)",
			       "SELECT max(id) FROM queries" };

	(void)state;
	memset(fired, 0, sizeof(fired));
	for (int i = 0; i < 6; i++) {
		ev[i] = event_new(base, -1, 0, fired_cb, (void *)(intptr_t)i);
		r[i] = audit_read_submit(db_path, sql[i], &quick, ev[i]);
		assert_non_null(r[i]);
	}
	loop_until(base, want, 6, 10);
	{
		AuditReadResult *res[6];

		for (int i = 0; i < 6; i++) {
			res[i] = audit_read_take(r[i]);
			assert_non_null(res[i]);
		}
		expect_cell(res[0], 0, 0, "4");
		expect_cell(res[1], 1, 0, "etl");
		assert_string_equal(res[2]->sqlstate, "57014");
		assert_string_equal(res[3]->sqlstate, "42601");
		assert_string_equal(res[4]->sqlstate, "42501");
		expect_cell(res[5], 0, 0, "4");
		for (int i = 0; i < 6; i++)
			audit_read_result_free(res[i]);
	}
	for (int i = 0; i < 6; i++)
		event_free(ev[i]);
	event_base_free(base);
}

static void cancel_and_interrupt(void **state)
{
	struct event_base *base = event_base_new();
	struct event *a = event_new(base, -1, 0, fired_cb, (void *)0), *b = event_new(base, -1, 0, fired_cb, (void *)1),
		     *c = event_new(base, -1, 0, fired_cb, (void *)2);
	AuditRead *ra, *rb, *rc;
	AuditReadResult *res;
	int want[3] = { 0, 1, 1 };
	uint64_t t0 = pgv_now_us();

	(void)state;
	memset(fired, 0, sizeof(fired));
	/* a canceled statement stops, and its event never fires */
	ra = audit_read_submit(db_path, forever, NULL, a);
	rb = audit_read_submit(db_path, forever, NULL, b);
	assert_non_null(ra);
	assert_non_null(rb);
	usleep(100000);
	assert_null(audit_read_take(rb)); /* still running */
	audit_read_cancel(ra);
	/* an interrupted one answers 57014 through its event */
	audit_read_interrupt(rb);
	rc = audit_read_submit(db_path, "SELECT 42", NULL, c);
	assert_non_null(rc);
	loop_until(base, want, 3, 10);
	usleep(50000);
	event_base_loop(base, EVLOOP_NONBLOCK);
	assert_int_equal(fired[0], 0);
	res = audit_read_take(rb);
	assert_string_equal(res->sqlstate, "57014");
	assert_string_equal(res->message, "canceling statement due to user request");
	audit_read_result_free(res);
	res = audit_read_take(rc);
	expect_cell(res, 0, 0, "42");
	audit_read_result_free(res);
	assert_true(pgv_now_us() - t0 < 5000000);

	/* canceling a queued or finished request, and NULL */
	audit_read_cancel(NULL);
	rc = audit_read_submit(db_path, "SELECT 1", NULL, c);
	audit_read_cancel(rc);
	/* stopping with a statement running ends it and answers it */
	memset(fired, 0, sizeof(fired));
	rb = audit_read_submit(db_path, forever, NULL, b);
	usleep(50000);
	t0 = pgv_now_us();
	audit_read_stop();
	assert_true(pgv_now_us() - t0 < 2000000);
	loop_until(base, want, 2, 5);
	res = audit_read_take(rb);
	assert_string_equal(res->sqlstate, "57014");
	audit_read_result_free(res);
	/* and the pool starts again on demand */
	memset(fired, 0, sizeof(fired));
	rc = audit_read_submit(db_path, "SELECT 7", NULL, c);
	want[1] = 0;
	loop_until(base, want, 3, 5);
	res = audit_read_take(rc);
	expect_cell(res, 0, 0, "7");
	audit_read_result_free(res);
	event_free(a);
	event_free(b);
	event_free(c);
	event_base_free(base);
}

/* ---- the admin console over the audit log ---------------------------------------------------- */

/* An answer of the console, message by message. */
typedef struct Answer {
	char order[64];       /* message types */
	int n_cols;
	char cols[20][32];
	int32_t oids[20];
	int n_rows;
	char rows[16][20][96]; /* "NULL" for NULL */
	char tags[4][32];
	int n_tags;
	char code[6], message[256];
	int position;
} Answer;

static void parse_answer(const PgBuf *b, Answer *a)
{
	size_t at = 0;

	memset(a, 0, sizeof(*a));
	while (at < b->len) {
		uint8_t type = b->data[at];
		uint32_t len = (uint32_t)b->data[at + 1] << 24 | (uint32_t)b->data[at + 2] << 16 |
			       (uint32_t)b->data[at + 3] << 8 | b->data[at + 4];
		PgReader r;
		int16_t n;
		const char *str;

		a->order[strlen(a->order)] = (char)type;
		pgproto_reader_init(&r, b->data + at + 5, len - 4);
		if (type == 'T') {
			assert_true(pgproto_get_int16(&r, &n));
			a->n_cols = n;
			for (int i = 0; i < n; i++) {
				int32_t oid, i32;
				int16_t i16;

				assert_true(pgproto_get_string(&r, &str));
				snprintf(a->cols[i], sizeof(a->cols[i]), "%s", str);
				assert_true(pgproto_get_int32(&r, &i32) && pgproto_get_int16(&r, &i16));
				assert_true(pgproto_get_int32(&r, &oid));
				a->oids[i] = oid;
				assert_true(pgproto_get_int16(&r, &i16) && pgproto_get_int32(&r, &i32));
				assert_true(pgproto_get_int16(&r, &i16));
			}
		} else if (type == 'D') {
			assert_true(pgproto_get_int16(&r, &n));
			for (int i = 0; i < n; i++) {
				int32_t vlen;
				const uint8_t *v;

				assert_true(pgproto_get_int32(&r, &vlen));
				if (vlen < 0) {
					snprintf(a->rows[a->n_rows][i], sizeof(a->rows[0][0]), "NULL");
					continue;
				}
				assert_true(pgproto_get_bytes(&r, (size_t)vlen, &v));
				snprintf(a->rows[a->n_rows][i], sizeof(a->rows[0][0]), "%.*s", (int)vlen, v);
			}
			a->n_rows++;
		} else if (type == 'C') {
			assert_true(pgproto_get_string(&r, &str));
			snprintf(a->tags[a->n_tags++], sizeof(a->tags[0]), "%s", str);
		} else if (type == 'E') {
			uint8_t f;

			while (pgproto_get_byte(&r, &f) && f != 0) {
				assert_true(pgproto_get_string(&r, &str));
				if (f == 'C')
					snprintf(a->code, sizeof(a->code), "%s", str);
				else if (f == 'M')
					snprintf(a->message, sizeof(a->message), "%s", str);
				else if (f == 'P')
					a->position = atoi(str);
			}
		}
		at += 1 + len;
	}
}

static int wake_count;

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	wake_count++;
}

/* Runs sql on the console to the end, waiting for the audit log as a session would. */
static void console_run(AdminConsole *ac, struct event_base *base, const char *sql, Answer *a, int *waits)
{
	PgBuf b;
	AdminStatus st;
	uint64_t end = pgv_now_us() + 10000000;

	pgproto_buf_init(&b);
	*waits = 0;
	st = admin_query(ac, sql, &b);
	while (st == ADMIN_WAIT) {
		wake_count = 0;
		while (wake_count == 0) {
			assert_true(pgv_now_us() < end);
			event_base_loop(base, EVLOOP_NONBLOCK);
			usleep(1000);
		}
		(*waits)++;
		st = admin_resume(ac, &b);
	}
	assert_true(pgproto_buf_ok(&b));
	parse_answer(&b, a);
	pgproto_buf_free(&b);
}

static Config *console_config(const char *audit_db)
{
	char path[] = "/tmp/pgveil-test-audit-read-XXXXXX", text[1024];
	int fd = mkstemp(path);
	char *errs = NULL;
	int nerrors = 0, n;
	Config *c;

	n = snprintf(text, sizeof(text), "[pgveil]\nlisten_port = 6432\n%s%s%s[databases]\napp = host=/tmp user=u\n",
		     audit_db ? "audit_db = " : "", audit_db ? audit_db : "", audit_db ? "\n" : "");
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, (size_t)n), n);
	close(fd);
	c = config_load(path, &errs, &nerrors);
	unlink(path);
	if (c == NULL)
		fail_msg("%s", errs ? errs : "config_load failed");
	return c;
}

static void console_reads_the_audit_log(void **state)
{
	struct event_base *base = event_base_new();
	struct event *wake = event_new(base, -1, 0, wake_cb, NULL);
	char *aud[] = { "audit" }, *dba[] = { "dba" };
	Identity auditor = { .subject = "aud", .groups = aud, .n_groups = 1 };
	Identity approver = { .subject = "appr", .groups = dba, .n_groups = 1 };
	Config *cfg = console_config(db_path);
	AdminConsole *ac;
	Answer *a = calloc(1, sizeof(Answer));
	int waits;

	(void)state;
	assert_non_null(a);
	config_set_current(config_ref(cfg));
	ac = admin_open(&auditor, admin_roles(cfg, &auditor), 7, wake);
	assert_non_null(ac);

	/* commands before, between and after two reads: all in order, each read waited for */
	console_run(ac, base, "SHOW BLOCKED; SELECT id, subject, duration_ms, rows FROM queries ORDER BY id;"
			      " SHOW SESSION 1; SHOW HELD", a, &waits);
	assert_int_equal(waits, 2);
	assert_string_equal(a->order, "TCTDDDDCTDDDDCTC");
	assert_string_equal(a->tags[0], "SHOW 0");
	assert_string_equal(a->tags[1], "SELECT 4");
	assert_string_equal(a->tags[2], "SHOW 4");
	assert_string_equal(a->tags[3], "SHOW 0");
	assert_string_equal(a->rows[0][1], "ci-bot");
	assert_string_equal(a->rows[0][2], "1.5");
	assert_string_equal(a->rows[1][3], "NULL");
	/* SHOW SESSION 1: its row, then its statements by id */
	assert_string_equal(a->rows[4][0], "session");
	assert_string_equal(a->rows[4][1], "1");
	assert_string_equal(a->rows[4][2], "2026-01-02T10:00:00.000000Z");
	assert_string_equal(a->rows[4][3], "ci-bot");
	assert_string_equal(a->rows[4][4], "2026-01-02T10:05:00.500000Z");
	assert_string_equal(a->rows[4][5], "client closed");
	assert_string_equal(a->rows[4][9], "300500");
	assert_string_equal(a->rows[5][0], "statement");
	assert_string_equal(a->rows[5][1], "1");
	assert_string_equal(a->rows[5][6], "allow");
	assert_string_equal(a->rows[5][10], "100");
	assert_string_equal(a->rows[5][13], "public.users.email");
	assert_string_equal(a->rows[5][15], "SELECT * FROM users");
	assert_string_equal(a->rows[6][1], "2");
	assert_string_equal(a->rows[6][6], "block");
	assert_string_equal(a->rows[6][7], "rules/10.rules:4");
	assert_string_equal(a->rows[6][11], "42501");
	assert_string_equal(a->rows[7][1], "4");

	/* the column types of a SELECT */
	console_run(ac, base, "SELECT id, subject, duration_ms, x'01' AS b FROM queries WHERE id = 1", a, &waits);
	assert_int_equal(a->oids[0], 20);
	assert_int_equal(a->oids[1], 25);
	assert_int_equal(a->oids[2], 701);
	assert_int_equal(a->oids[3], 17);
	assert_string_equal(a->rows[0][3], "\\x01");

	/* SHOW SESSION's columns, and a session with no statements but its row */
	console_run(ac, base, "SHOW SESSION 2", a, &waits);
	assert_int_equal(a->n_cols, 16);
	assert_string_equal(a->cols[0], "kind");
	assert_string_equal(a->cols[9], "duration_ms");
	assert_int_equal(a->oids[1], 20);
	assert_int_equal(a->oids[9], 701);
	assert_int_equal(a->oids[10], 20);
	assert_string_equal(a->rows[0][4], "NULL"); /* still open */
	assert_string_equal(a->rows[1][14], "alice");   /* approved by */
	console_run(ac, base, "SHOW SESSION 99", a, &waits);
	assert_string_equal(a->code, "42704");
	assert_string_equal(a->message, "session 99 is not in the audit log");

	/* errors end the string; positions count from the start of the whole string */
	console_run(ac, base, "SHOW HELD; SELECT * FRM queries; SHOW BLOCKED", a, &waits);
	assert_string_equal(a->order, "TCE");
	assert_string_equal(a->code, "42601");
	assert_int_equal(a->position, 21);
	console_run(ac, base, "select load_extension('x')", a, &waits);
	assert_string_equal(a->code, "42501");
	console_run(ac, base, "WITH d AS (SELECT 1) DELETE FROM queries", a, &waits);
	assert_string_equal(a->code, "42501");
	assert_string_equal(a->message, "the audit log is read-only: DELETE is not allowed");
	/* the console stays usable */
	console_run(ac, base, "VALUES (1)", a, &waits);
	assert_string_equal(a->order, "TDC");

	/* a console closed while its read runs is never woken */
	{
		PgBuf b;

		pgproto_buf_init(&b);
		assert_int_equal(admin_query(ac, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)"
						 " SELECT count(*) FROM c", &b), ADMIN_WAIT);
		assert_int_equal(admin_resume(ac, &b), ADMIN_WAIT); /* not done yet */
		admin_cancel(ac);
		wake_count = 0;
		while (wake_count == 0)
			event_base_loop(base, EVLOOP_ONCE);
		assert_int_equal(admin_resume(ac, &b), ADMIN_DONE);
		parse_answer(&b, a);
		assert_string_equal(a->code, "57014");
		pgproto_buf_free(&b);

		pgproto_buf_init(&b);
		assert_int_equal(admin_query(ac, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)"
						 " SELECT count(*) FROM c", &b), ADMIN_WAIT);
		pgproto_buf_free(&b);
		admin_close(ac);
		wake_count = 0;
		usleep(100000);
		event_base_loop(base, EVLOOP_NONBLOCK);
		assert_int_equal(wake_count, 0);
	}

	/* approvers may not; without a wake event or audit_db nothing is read */
	ac = admin_open(&approver, admin_roles(cfg, &approver), 8, wake);
	console_run(ac, base, "SELECT 1", a, &waits);
	assert_string_equal(a->code, "42501");
	assert_string_equal(a->message, "SELECT needs the auditor or admin group");
	admin_close(ac);
	config_unref(cfg);
	cfg = console_config(NULL);
	config_set_current(config_ref(cfg));
	ac = admin_open(&auditor, admin_roles(cfg, &auditor), 9, wake);
	console_run(ac, base, "SHOW SESSION 1", a, &waits);
	assert_string_equal(a->code, "0A000");
	assert_string_equal(a->message, "the audit log is not available");
	admin_close(ac);

	config_set_current(NULL);
	config_unref(cfg);
	free(a);
	event_free(wake);
	event_base_free(base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(select_rows_and_types),
		cmocka_unit_test(joins_across_tables),
		cmocka_unit_test(recursive_cte_explain_values),
		cmocka_unit_test(value_formats),
		cmocka_unit_test(writes_refused),
		cmocka_unit_test(errors_have_sqlstates),
		cmocka_unit_test(limits),
		cmocka_unit_test(pool_serves_requests),
		cmocka_unit_test(cancel_and_interrupt),
		cmocka_unit_test(console_reads_the_audit_log),
	};

	evthread_use_pthreads();
	if (getenv("TEST_FILTER") != NULL)
		cmocka_set_test_filter(getenv("TEST_FILTER"));
	log_setup(LL_ERROR, false);
	return cmocka_run_group_tests(tests, setup, teardown);
}
