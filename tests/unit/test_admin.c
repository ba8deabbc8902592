/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the admin console: admin_query()'s output is parsed back
 * message by message (RowDescription, DataRow, CommandComplete,
 * ErrorResponse with SQLSTATE and position, NoticeResponse,
 * EmptyQueryResponse) and checked: the SHOW result sets, APPROVE/DENY on
 * held statements of a real approval registry (with the waiting session's
 * event firing), grants, blocks, each role's permissions, syntax errors with
 * the position psql points at, several commands in one string, SHOW RULES
 * over a RuleSet, SHOW STATS counters and RELOAD's SIGHUP.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <event2/thread.h>

#include "pgveil/admin.h"
#include "pgveil/approval.h"
#include "pgveil/config.h"
#include "pgveil/log.h"
#include "pgveil/rules.h"

#define MAX_COLS 16
#define MAX_ROWS 64
#define MAX_NOTES 8

static struct event_base *base;
static Config *cfg;

/* ---- the console's answer, parsed back ----------------------------------------------------- */

typedef struct Reply {
	char order[64];                 /* message types in order, e.g. "TDDC" */
	int n_cols;                     /* of the last RowDescription */
	char *cols[MAX_COLS];
	int32_t oids[MAX_COLS];
	int n_rows;                     /* DataRows of the whole answer */
	char *rows[MAX_ROWS][MAX_COLS]; /* NULL = SQL NULL */
	int n_tags;
	char *tags[MAX_NOTES];
	bool error;
	char *code, *message, *hint;
	int position;                   /* 0 = none */
	int n_notices;
	char *notices[MAX_NOTES];
} Reply;

static char *dup_n(const uint8_t *p, size_t n)
{
	char *s = malloc(n + 1);

	assert_non_null(s);
	memcpy(s, p, n);
	s[n] = '\0';
	return s;
}

static void parse_fields(PgReader *r, Reply *rep, bool notice)
{
	uint8_t f;
	const char *v;

	while (pgproto_get_byte(r, &f) && f != 0) {
		assert_true(pgproto_get_string(r, &v));
		if (notice) {
			if (f == 'M' && rep->n_notices < MAX_NOTES)
				rep->notices[rep->n_notices++] = strdup(v);
			continue;
		}
		if (f == 'C')
			rep->code = strdup(v);
		else if (f == 'M')
			rep->message = strdup(v);
		else if (f == 'H')
			rep->hint = strdup(v);
		else if (f == 'P')
			rep->position = atoi(v);
	}
	assert_int_equal(pgproto_remaining(r), 0);
}

static void parse_row_description(PgReader *r, Reply *rep)
{
	int16_t n;

	assert_true(pgproto_get_int16(r, &n));
	assert_true(n <= MAX_COLS);
	for (int i = 0; i < rep->n_cols; i++)
		free(rep->cols[i]);
	rep->n_cols = n;
	for (int i = 0; i < n; i++) {
		const char *name;
		int32_t table, typmod;
		int16_t attnum, len, format;

		assert_true(pgproto_get_string(r, &name));
		assert_true(pgproto_get_int32(r, &table) && pgproto_get_int16(r, &attnum));
		assert_true(pgproto_get_int32(r, &rep->oids[i]) && pgproto_get_int16(r, &len));
		assert_true(pgproto_get_int32(r, &typmod) && pgproto_get_int16(r, &format));
		assert_int_equal(format, 0);
		assert_int_equal(len, rep->oids[i] == 20 ? 8 : -1);
		rep->cols[i] = strdup(name);
	}
	assert_int_equal(pgproto_remaining(r), 0);
}

static void parse_data_row(PgReader *r, Reply *rep)
{
	int16_t n;

	assert_true(pgproto_get_int16(r, &n));
	assert_int_equal(n, rep->n_cols); /* a row always follows its own description */
	assert_true(rep->n_rows < MAX_ROWS);
	for (int i = 0; i < n; i++) {
		int32_t len;
		const uint8_t *p;

		assert_true(pgproto_get_int32(r, &len));
		if (len < 0) {
			rep->rows[rep->n_rows][i] = NULL;
			continue;
		}
		assert_true(pgproto_get_bytes(r, (size_t)len, &p));
		rep->rows[rep->n_rows][i] = dup_n(p, (size_t)len);
		if (rep->oids[i] == 20) /* int8 columns hold integers */
			assert_true(strspn(rep->rows[rep->n_rows][i], "0123456789") == (size_t)len && len > 0);
	}
	assert_int_equal(pgproto_remaining(r), 0);
	rep->n_rows++;
}

static void parse_message(uint8_t type, const uint8_t *body, size_t len, Reply *rep)
{
	PgReader r;
	const char *tag;

	pgproto_reader_init(&r, body, len);
	switch (type) {
	case 'T': parse_row_description(&r, rep); break;
	case 'D': parse_data_row(&r, rep); break;
	case 'C':
		assert_true(pgproto_get_string(&r, &tag));
		assert_true(rep->n_tags < MAX_NOTES);
		rep->tags[rep->n_tags++] = strdup(tag);
		break;
	case 'E':
		assert_false(rep->error); /* one error ends the answer */
		rep->error = true;
		parse_fields(&r, rep, false);
		break;
	case 'N': parse_fields(&r, rep, true); break;
	case 'I': assert_int_equal(len, 0); break;
	default: fail_msg("unexpected message type '%c'", type);
	}
}

/* Runs `sql` on the console and parses every message of its answer. */
static Reply *run(AdminConsole *ac, const char *sql)
{
	Reply *rep = calloc(1, sizeof(Reply));
	size_t at = 0, n = 0;
	PgBuf b;

	assert_non_null(rep);
	pgproto_buf_init(&b);
	admin_query(ac, sql, &b);
	assert_true(pgproto_buf_ok(&b));
	while (at < b.len) {
		uint32_t len;

		assert_true(b.len - at >= 5);
		len = (uint32_t)b.data[at + 1] << 24 | (uint32_t)b.data[at + 2] << 16 | (uint32_t)b.data[at + 3] << 8 |
		      b.data[at + 4];
		assert_true(len >= 4 && at + 1 + len <= b.len);
		assert_true(n + 1 < sizeof(rep->order));
		rep->order[n++] = (char)b.data[at];
		parse_message(b.data[at], b.data + at + 5, len - 4, rep);
		at += 1 + len;
	}
	assert_false(rep->error && rep->order[n - 1] != 'E'); /* nothing after an error */
	pgproto_buf_free(&b);
	return rep;
}

static void reply_free(Reply *rep)
{
	for (int i = 0; i < rep->n_cols; i++)
		free(rep->cols[i]);
	for (int i = 0; i < rep->n_rows; i++)
		for (int j = 0; j < MAX_COLS; j++)
			free(rep->rows[i][j]);
	for (int i = 0; i < rep->n_tags; i++)
		free(rep->tags[i]);
	for (int i = 0; i < rep->n_notices; i++)
		free(rep->notices[i]);
	free(rep->code);
	free(rep->message);
	free(rep->hint);
	free(rep);
}

/* The answer must be one error with this SQLSTATE and message (position 0 = none expected). */
static void expect_error(AdminConsole *ac, const char *sql, const char *code, const char *message, int position)
{
	Reply *rep = run(ac, sql);

	if (!rep->error)
		fail_msg("%s: expected error %s, got messages \"%s\"", sql, code, rep->order);
	assert_string_equal(rep->code, code);
	assert_string_equal(rep->message, message);
	assert_int_equal(rep->position, position);
	reply_free(rep);
}

/* The answer must be exactly CommandComplete `tag` (after notices). */
static void expect_ok(AdminConsole *ac, const char *sql, const char *tag)
{
	Reply *rep = run(ac, sql);

	if (rep->error)
		fail_msg("%s: unexpected error %s: %s", sql, rep->code, rep->message);
	assert_int_equal(rep->n_tags, 1);
	assert_string_equal(rep->tags[0], tag);
	reply_free(rep);
}

static int col_index(const Reply *rep, const char *name)
{
	for (int i = 0; i < rep->n_cols; i++)
		if (strcmp(rep->cols[i], name) == 0)
			return i;
	fail_msg("no column %s", name);
	return -1;
}

/* ---- callers ----------------------------------------------------------------------------- */

static AdminConsole *open_as(const char *subject, const char *group)
{
	char *groups[] = { (char *)group };
	Identity id = { .subject = (char *)subject, .groups = groups, .n_groups = group ? 1 : 0 };
	int roles = admin_roles(cfg, &id);
	AdminConsole *ac;

	assert_true(roles != 0);
	ac = admin_open(&id, roles, 99, NULL);
	assert_non_null(ac);
	return ac;
}

typedef struct Held {
	uint64_t id;
	struct event *ev;
	int fired;
} Held;

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
	((Held *)arg)->fired++;
}

static void hold(Held *h, const char *subject, const char *rule, const char *sql)
{
	static const char *const tables[] = { "public.orders", "public.users" };
	HoldSpec spec = { .session_id = 42, .subject = subject, .database = "app", .sql = sql, .rule = rule,
			  .n_tables = 2, .tables = tables };

	h->fired = 0;
	h->ev = event_new(base, -1, 0, wake_cb, h);
	assert_non_null(h->ev);
	h->id = approval_submit(&spec, h->ev);
	assert_true(h->id > 0);
}

static void unhold(Held *h)
{
	(void)approval_withdraw(h->id, HOLD_CANCELED);
	event_free(h->ev);
}

static int teardown(void **state)
{
	approval_shutdown();
	return 0;
}

/* ---- roles ----------------------------------------------------------------------------------- */

static void roles_from_groups(void **state)
{
	char *admin[] = { "pgveil-admins" }, *dba[] = { "dba" }, *both[] = { "audit", "dba", "x" }, *none[] = { "x" };
	Identity a = { .subject = "a", .groups = admin, .n_groups = 1 }, d = { .subject = "d", .groups = dba, .n_groups = 1 },
		 b = { .subject = "b", .groups = both, .n_groups = 3 }, n = { .subject = "n", .groups = none, .n_groups = 1 },
		 e = { .subject = "e" }, nosub = { .subject = NULL, .groups = admin, .n_groups = 1 };

	assert_int_equal(admin_roles(cfg, &a), ADMIN_ROLE_ADMIN);
	assert_int_equal(admin_roles(cfg, &d), ADMIN_ROLE_APPROVER);
	assert_int_equal(admin_roles(cfg, &b), ADMIN_ROLE_APPROVER | ADMIN_ROLE_AUDITOR);
	assert_int_equal(admin_roles(cfg, &n), 0);
	assert_int_equal(admin_roles(cfg, &e), 0);
	assert_int_equal(admin_roles(cfg, &nosub), 0); /* dev_trust_auth: nobody */
}

/* ---- SHOW HELD, APPROVE, DENY ---------------------------------------------------------------- */

static void show_held_lists_waiting_statements(void **state)
{
	AdminConsole *ac = open_as("alice", "dba");
	Held h1, h2;
	Reply *rep;

	rep = run(ac, "SHOW HELD");
	assert_string_equal(rep->order, "TC");
	assert_int_equal(rep->n_cols, 8);
	assert_string_equal(rep->cols[0], "id");
	assert_int_equal(rep->oids[0], 20);
	assert_string_equal(rep->cols[1], "subject");
	assert_int_equal(rep->oids[1], 25);
	assert_string_equal(rep->cols[2], "database");
	assert_string_equal(rep->cols[3], "sql");
	assert_string_equal(rep->cols[4], "rule");
	assert_string_equal(rep->cols[5], "held_at");
	assert_string_equal(rep->cols[6], "waiting_s");
	assert_int_equal(rep->oids[6], 20);
	assert_string_equal(rep->tags[0], "SHOW 0");
	reply_free(rep);

	hold(&h1, "bot-1", "rules/a.rules:4", "DELETE FROM orders WHERE id = 1");
	hold(&h2, "bot-2", NULL, "UPDATE users SET name = 'x'");
	rep = run(ac, "show held;");
	assert_string_equal(rep->order, "TDDC");
	assert_string_equal(rep->tags[0], "SHOW 2");
	assert_int_equal(atoll(rep->rows[0][0]), h1.id); /* oldest first */
	assert_string_equal(rep->rows[0][1], "bot-1");
	assert_string_equal(rep->rows[0][2], "app");
	assert_string_equal(rep->rows[0][3], "DELETE FROM orders WHERE id = 1");
	assert_string_equal(rep->rows[0][4], "rules/a.rules:4");
	assert_int_equal(strlen(rep->rows[0][5]), strlen("2024-01-01 00:00:00+00"));
	assert_true(atoi(rep->rows[0][6]) <= 1);
	assert_int_equal(atoll(rep->rows[0][col_index(rep, "session")]), 42);
	assert_string_equal(rep->rows[1][4], "default_action");
	assert_string_equal(rep->rows[1][3], "UPDATE users SET name = 'x'");
	reply_free(rep);
	unhold(&h1);
	unhold(&h2);
	admin_close(ac);
}

static void approve_and_deny(void **state)
{
	AdminConsole *ac = open_as("alice", "dba");
	Held a, d;
	char sql[128], *reason;
	HeldInfo *info;
	Reply *rep;

	hold(&a, "bot", NULL, "DELETE FROM t");
	hold(&d, "bot", NULL, "DROP TABLE t");
	snprintf(sql, sizeof(sql), "APPROVE %llu", (unsigned long long)a.id);
	expect_ok(ac, sql, "APPROVE");
	event_base_loop(base, EVLOOP_NONBLOCK);
	assert_int_equal(a.fired, 1);
	assert_int_equal(approval_get(a.id, &info), 1);
	assert_int_equal(info->state, HOLD_APPROVED);
	assert_string_equal(info->decided_by, "alice");
	approval_free_held(info, 1);

	snprintf(sql, sizeof(sql), "deny %llu reason 'it''s friday';", (unsigned long long)d.id);
	expect_ok(ac, sql, "DENY");
	event_base_loop(base, EVLOOP_NONBLOCK);
	assert_int_equal(d.fired, 1);
	assert_int_equal(approval_state(d.id, &reason), HOLD_DENIED);
	assert_string_equal(reason, "it's friday");
	free(reason);

	/* decided already, unknown */
	snprintf(sql, sizeof(sql), "APPROVE %llu", (unsigned long long)d.id);
	rep = run(ac, sql);
	assert_string_equal(rep->code, "55000");
	assert_non_null(strstr(rep->message, " was already denied by alice"));
	reply_free(rep);
	expect_error(ac, "DENY 999999", "42704", "no held statement 999999", 0);
	/* nothing is listed any more */
	rep = run(ac, "SHOW HELD");
	assert_int_equal(rep->n_rows, 0);
	reply_free(rep);
	event_free(a.ev);
	event_free(d.ev);
	admin_close(ac);
}

static void approvers_cannot_approve_their_own(void **state)
{
	AdminConsole *ac = open_as("bot", "dba");
	Held h;
	char sql[64];

	hold(&h, "bot", NULL, "DELETE FROM t");
	snprintf(sql, sizeof(sql), "APPROVE %llu", (unsigned long long)h.id);
	expect_error(ac, sql, "42501", "approvers cannot approve their own statements", 0);
	assert_int_equal(approval_state(h.id, NULL), HOLD_WAITING);
	snprintf(sql, sizeof(sql), "DENY %llu", (unsigned long long)h.id);
	expect_ok(ac, sql, "DENY");
	event_free(h.ev);
	admin_close(ac);
}

static void approve_for_makes_a_grant(void **state)
{
	static const char *const both[] = { "public.users", "public.orders" };
	AdminConsole *ac = open_as("alice", "dba");
	Held h;
	char sql[96];
	Reply *rep;
	uint64_t gid;
	time_t now = time(NULL);

	hold(&h, "bot", "r.rules:7", "DELETE FROM orders USING users");
	snprintf(sql, sizeof(sql), "approve %llu for 15 minutes", (unsigned long long)h.id);
	rep = run(ac, sql);
	assert_string_equal(rep->order, "NC");
	assert_string_equal(rep->tags[0], "APPROVE");
	assert_non_null(strstr(rep->notices[0], "agent bot may run statements held by rule r.rules:7 on tables "
						"public.orders,public.users without approval until"));
	reply_free(rep);
	assert_true(approval_grant_covers("bot", "r.rules:7", NULL, 2, both, 0, &gid));

	rep = run(ac, "SHOW GRANTS");
	assert_string_equal(rep->order, "TDC");
	assert_int_equal(rep->n_cols, 7);
	assert_string_equal(rep->cols[0], "id");
	assert_string_equal(rep->cols[5], "until");
	assert_int_equal(atoll(rep->rows[0][0]), gid);
	assert_string_equal(rep->rows[0][col_index(rep, "subject")], "bot");
	assert_string_equal(rep->rows[0][col_index(rep, "rule")], "r.rules:7");
	assert_string_equal(rep->rows[0][col_index(rep, "tables")], "public.orders,public.users");
	assert_string_equal(rep->rows[0][col_index(rep, "granted_by")], "alice");
	assert_int_equal(atoll(rep->rows[0][col_index(rep, "approval")]), h.id);
	{
		struct tm tm;
		char want[32], want2[32];
		time_t u1 = now + 900, u2 = now + 901;

		strftime(want, sizeof(want), "%Y-%m-%d %H:%M:%S+00", gmtime_r(&u1, &tm));
		strftime(want2, sizeof(want2), "%Y-%m-%d %H:%M:%S+00", gmtime_r(&u2, &tm));
		assert_true(strcmp(rep->rows[0][5], want) == 0 || strcmp(rep->rows[0][5], want2) == 0);
	}
	reply_free(rep);

	snprintf(sql, sizeof(sql), "REVOKE GRANT %llu", (unsigned long long)gid);
	expect_ok(ac, sql, "REVOKE GRANT");
	assert_false(approval_grant_covers("bot", "r.rules:7", NULL, 2, both, 0, NULL));
	snprintf(sql, sizeof(sql), "revoke grant %llu", (unsigned long long)gid);
	rep = run(ac, sql);
	assert_string_equal(rep->code, "42704");
	reply_free(rep);
	event_free(h.ev);
	admin_close(ac);
}

static void durations(void **state)
{
	AdminConsole *ac = open_as("alice", "dba");
	static const struct {
		const char *unit;
		uint64_t seconds;
	} units[] = { { "1 SECOND", 1 }, { "30 seconds", 30 }, { "1 minute", 60 }, { "2 HOURS", 7200 },
		      { "1 day", 86400 }, { "365 DAYS", 365 * 86400 } };

	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		Held h;
		char sql[96];
		GrantInfo *g;
		int n;
		time_t before = time(NULL), after;

		hold(&h, "bot", NULL, "DELETE FROM t");
		snprintf(sql, sizeof(sql), "APPROVE %llu FOR %s", (unsigned long long)h.id, units[i].unit);
		expect_ok(ac, sql, "APPROVE");
		after = time(NULL);
		n = approval_list_grants(&g);
		assert_true(n >= 1);
		assert_true(g[n - 1].until >= before + (time_t)units[i].seconds &&
			    g[n - 1].until <= after + (time_t)units[i].seconds);
		approval_free_grants(g, n);
		event_free(h.ev);
	}
	expect_error(ac, "APPROVE 1 FOR 0 MINUTES", "22023", "a duration must be between 1 second and 365 days", 15);
	expect_error(ac, "APPROVE 1 FOR 366 DAYS", "22023", "a duration must be between 1 second and 365 days", 15);
	expect_error(ac, "APPROVE 1 FOR 5 fortnights", "42601", "syntax error at or near \"fortnights\"", 17);
	expect_error(ac, "APPROVE 1 FOR minutes", "42601", "syntax error at or near \"minutes\"", 15);
	admin_close(ac);
}

/* ---- permissions ------------------------------------------------------------------------------ */

static void permissions_per_role(void **state)
{
	AdminConsole *admin = open_as("root", "pgveil-admins"), *approver = open_as("appr", "dba"),
		     *auditor = open_as("aud", "audit");
	static const char *const everyone[] = { "SHOW HELD", "SHOW GRANTS", "SHOW RULES", "SHOW STATS", "SHOW BLOCKED",
						"SHOW HELP" };
	Reply *rep;

	for (size_t i = 0; i < sizeof(everyone) / sizeof(everyone[0]); i++) {
		AdminConsole *who[] = { admin, approver, auditor };

		for (int j = 0; j < 3; j++) {
			rep = run(who[j], everyone[i]);
			if (rep->error)
				fail_msg("%s refused: %s", everyone[i], rep->message);
			assert_int_equal(rep->order[0] == 'T' || rep->order[0] == 'N', 1);
			reply_free(rep);
		}
	}
	/* approver: decisions yes, sessions and the audit log no */
	expect_error(approver, "SHOW SESSIONS", "42501", "SHOW SESSIONS needs the auditor or admin group", 0);
	expect_error(approver, "SHOW SESSION 3", "42501", "SHOW SESSION needs the auditor or admin group", 0);
	expect_error(approver, "select * from queries", "42501", "select needs the auditor or admin group", 0);
	expect_error(approver, "KILL SESSION 3", "42501", "KILL SESSION needs the admin group", 0);
	expect_error(approver, "BLOCK AGENT 'x'", "42501", "BLOCK AGENT needs the admin group", 0);
	expect_error(approver, "UNBLOCK AGENT 'x'", "42501", "UNBLOCK AGENT needs the admin group", 0);
	expect_error(approver, "RELOAD", "42501", "RELOAD needs the admin group", 0);
	expect_error(approver, "APPROVE 999999", "42704", "no held statement 999999", 0);
	expect_error(approver, "REVOKE GRANT 999999", "42704", "no active grant 999999", 0);
	/* auditor: reading yes, deciding no */
	expect_error(auditor, "APPROVE 1", "42501", "APPROVE needs the approver or admin group", 0);
	expect_error(auditor, "DENY 1 REASON 'no'", "42501", "DENY needs the approver or admin group", 0);
	expect_error(auditor, "REVOKE GRANT 1", "42501", "REVOKE GRANT needs the approver or admin group", 0);
	expect_error(auditor, "KILL SESSION 1", "42501", "KILL SESSION needs the admin group", 0);
	expect_error(auditor, "RELOAD", "42501", "RELOAD needs the admin group", 0);
	rep = run(auditor, "SHOW SESSIONS");
	assert_false(rep->error);
	assert_int_equal(rep->n_cols, 6);
	assert_string_equal(rep->cols[3], "client_addr");
	assert_string_equal(rep->cols[4], "started_at");
	assert_string_equal(rep->cols[5], "state");
	assert_string_equal(rep->tags[0], "SHOW 0"); /* no server running here */
	reply_free(rep);
	expect_error(auditor, "SHOW SESSION 3", "0A000", "the audit log is not available", 0);
	expect_error(auditor, "SELECT count(*) FROM queries WHERE sql LIKE '%;%'", "0A000",
		     "the audit log is not available", 0);
	expect_error(admin, "WITH x AS (SELECT 1) SELECT * FROM x", "0A000", "the audit log is not available", 0);
	/* admin: everything */
	expect_error(admin, "KILL SESSION 12345", "42704", "no session 12345", 0);
	expect_error(admin, "APPROVE 999999", "42704", "no held statement 999999", 0);
	/* SHOW HELP tells each caller what it may run */
	rep = run(auditor, "help");
	for (int i = 0; i < rep->n_rows; i++)
		if (strcmp(rep->rows[i][0], "APPROVE") == 0)
			assert_string_equal(rep->rows[i][3], "no");
		else if (strcmp(rep->rows[i][0], "SHOW SESSIONS") == 0)
			assert_string_equal(rep->rows[i][3], "yes");
	assert_true(rep->n_rows >= 15);
	reply_free(rep);
	admin_close(admin);
	admin_close(approver);
	admin_close(auditor);
}

/* ---- syntax ----------------------------------------------------------------------------------- */

static void syntax_errors_have_positions(void **state)
{
	AdminConsole *ac = open_as("root", "pgveil-admins");
	Reply *rep;

	expect_error(ac, "SHOW HELDX", "42601", "syntax error at or near \"HELDX\"", 6);
	expect_error(ac, "APPROVE", "42601", "syntax error at end of input", 8);
	expect_error(ac, "  approve x", "42601", "syntax error at or near \"x\"", 11);
	expect_error(ac, "APPROVE 1 2", "42601", "syntax error at or near \"2\"", 11);
	expect_error(ac, "APPROVE 12abc", "42601", "syntax error at or near \"12abc\"", 9);
	expect_error(ac, "SHOW", "42601", "syntax error at end of input", 5);
	expect_error(ac, "FROBNICATE", "42601", "syntax error at or near \"FROBNICATE\"", 1);
	expect_error(ac, "KILL 3", "42601", "syntax error at or near \"3\"", 6);
	expect_error(ac, "REVOKE 3", "42601", "syntax error at or near \"3\"", 8);
	expect_error(ac, "BLOCK AGENT ci-bot", "42601", "syntax error at or near \"ci\"", 13);
	expect_error(ac, "BLOCK AGENT 'ci-bot", "42601", "unterminated quoted string", 13);
	expect_error(ac, "DENY 1 REASON", "42601", "syntax error at end of input", 14);
	expect_error(ac, "SHOW HELD /* open", "42601", "unterminated /* comment", 11);
	expect_error(ac, "APPROVE 99999999999999999999999", "22003",
		     "value \"99999999999999999999999\" is out of range", 9);
	/* positions count characters, not bytes */
	expect_error(ac, "DENY 1 REASON 'größer' x", "42601", "syntax error at or near \"x\"", 24);
	/* a long token is quoted in part, never cutting a character in two */
	{
		char sql[128] = "SHOW x", want[128] = "syntax error at or near \"x";

		for (int i = 0; i < 40; i++)
			strcat(sql, "é");
		for (int i = 0; i < 31; i++)
			strcat(want, "é");
		strcat(want, "\"");
		expect_error(ac, sql, "42601", want, 6);
	}
	/* a syntax error anywhere runs nothing, as in the server */
	expect_error(ac, "BLOCK AGENT 'never'; SHOW BOGUS", "42601", "syntax error at or near \"BOGUS\"", 27);
	assert_false(approval_agent_blocked("never"));
	rep = run(ac, "SHOW HELDX");
	assert_string_equal(rep->hint, "SHOW HELP lists the commands");
	assert_string_equal(rep->order, "E");
	reply_free(rep);
	admin_close(ac);
}

static void several_commands_and_empty_strings(void **state)
{
	AdminConsole *ac = open_as("root", "pgveil-admins");
	Reply *rep;

	rep = run(ac, "sHoW hElD; show grants;;SHOW BLOCKED");
	assert_string_equal(rep->order, "TCTCTC");
	assert_int_equal(rep->n_tags, 3);
	reply_free(rep);
	/* an error ends the string: what came before stays done */
	rep = run(ac, "BLOCK AGENT 'multi'; APPROVE 999999; UNBLOCK AGENT 'multi'");
	assert_string_equal(rep->order, "NCE");
	assert_string_equal(rep->code, "42704");
	reply_free(rep);
	assert_true(approval_agent_blocked("multi"));
	/* comments, newlines */
	rep = run(ac, "/* first */ SHOW -- the rest of the line\n HELD ; -- done");
	assert_string_equal(rep->order, "TC");
	reply_free(rep);
	/* empty strings */
	rep = run(ac, "");
	assert_string_equal(rep->order, "I");
	reply_free(rep);
	rep = run(ac, " ; ;\n -- nothing\n");
	assert_string_equal(rep->order, "I");
	reply_free(rep);
	/* the console has no transactions */
	expect_error(ac, "BEGIN", "0A000", "the admin console has no transactions", 0);
	/* a ';' inside quotes or dollar quotes does not split a command */
	expect_error(ac, "SELECT ';' , $$ ; $$, $q$;$q$ FROM t", "0A000", "the audit log is not available", 0);
	admin_close(ac);
}

/* ---- agents, sessions -------------------------------------------------------------------------- */

static void block_and_unblock_agents(void **state)
{
	AdminConsole *ac = open_as("root", "pgveil-admins");
	Reply *rep;

	rep = run(ac, "BLOCK AGENT 'ci-bot' FOR 1 HOUR");
	assert_string_equal(rep->order, "NC");
	assert_string_equal(rep->tags[0], "BLOCK AGENT");
	assert_non_null(strstr(rep->notices[0], "agent ci-bot is blocked until 20"));
	assert_non_null(strstr(rep->notices[0], "0 sessions are being ended"));
	reply_free(rep);
	assert_true(approval_agent_blocked("ci-bot"));
	expect_ok(ac, "block agent 'it''s'", "BLOCK AGENT");
	assert_true(approval_agent_blocked("it's"));

	rep = run(ac, "SHOW BLOCKED");
	assert_string_equal(rep->order, "TDDC");
	assert_string_equal(rep->cols[0], "subject");
	assert_string_equal(rep->cols[1], "until");
	for (int i = 0; i < 2; i++)
		if (strcmp(rep->rows[i][0], "it's") == 0)
			assert_null(rep->rows[i][1]); /* until UNBLOCK AGENT */
		else
			assert_non_null(rep->rows[i][1]);
	reply_free(rep);

	expect_ok(ac, "UNBLOCK AGENT 'ci-bot'", "UNBLOCK AGENT");
	assert_false(approval_agent_blocked("ci-bot"));
	expect_error(ac, "UNBLOCK AGENT 'ci-bot'", "42704", "agent ci-bot is not blocked", 0);
	expect_error(ac, "BLOCK AGENT 'root'", "22023", "you cannot block your own subject", 0);
	expect_error(ac, "BLOCK AGENT ''", "22023", "the agent's subject must not be empty", 0);
	assert_false(approval_agent_blocked("root"));
	admin_close(ac);
}

/* ---- SHOW RULES, SHOW STATS, RELOAD ------------------------------------------------------------- */

static void show_rules(void **state)
{
	AdminConsole *ac = open_as("aud", "audit");
	Rule rules[3] = {
		{ .kind = RULE_MASK, .where = "rules/a.rules:1", .text = "MASK public.users.email USING email();" },
		{ .kind = RULE_POLICY, .action = RULE_HOLD, .where = "rules/a.rules:2", .text = "HOLD WRITE;" },
		{ .kind = RULE_FUNCTION, .action = RULE_BLOCK, .file = "rules/b.rules", .line = 9,
		  .text = "BLOCK FUNCTION pg_read_file;" },
	};
	RuleSet rs = { .refcount = 1, .version = 1, .n_rules = 3, .rules = rules };
	Reply *rep;

	rep = run(ac, "SHOW RULES");
	assert_string_equal(rep->order, "NTDC"); /* no rules: said, and the default shown */
	assert_non_null(strstr(rep->notices[0], "no rules are loaded"));
	assert_string_equal(rep->rows[0][0], "default_action");
	assert_string_equal(rep->rows[0][1], "block");
	assert_string_equal(rep->rows[0][2], "default_action = block");
	reply_free(rep);

	cfg->ruleset = &rs;
	rep = run(ac, "SHOW RULES");
	assert_string_equal(rep->order, "TDDDDC");
	assert_string_equal(rep->cols[0], "rule");
	assert_string_equal(rep->cols[1], "kind");
	assert_string_equal(rep->cols[2], "text");
	assert_string_equal(rep->rows[0][0], "rules/a.rules:1");
	assert_string_equal(rep->rows[0][1], "mask");
	assert_string_equal(rep->rows[0][2], "MASK public.users.email USING email();");
	assert_string_equal(rep->rows[1][1], "hold");
	assert_string_equal(rep->rows[2][0], "rules/b.rules:9");
	assert_string_equal(rep->rows[2][1], "block function");
	assert_string_equal(rep->rows[3][0], "default_action");
	assert_string_equal(rep->tags[0], "SHOW 4");
	reply_free(rep);
	cfg->ruleset = NULL;
	admin_close(ac);
}

static void show_stats(void **state)
{
	AdminConsole *ac = open_as("appr", "dba");
	Held h;
	Reply *rep;
	int found = 0;

	admin_stat_add(STAT_BLOCKED, 3);
	admin_stat_add(STAT_STATEMENTS, 10);
	admin_stat_add(STAT_STATEMENTS, 5);
	assert_int_equal(admin_stat_get(STAT_STATEMENTS), 15);
	hold(&h, "bot", NULL, "DELETE FROM t");
	rep = run(ac, "SHOW STATS");
	assert_int_equal(rep->n_cols, 2);
	assert_string_equal(rep->cols[0], "name");
	assert_string_equal(rep->cols[1], "value");
	assert_int_equal(rep->oids[1], 20);
	assert_int_equal(rep->n_rows, STAT_N + 5);
	for (int i = 0; i < rep->n_rows; i++) {
		const char *name = rep->rows[i][0], *v = rep->rows[i][1];

		if (strcmp(name, "blocked") == 0 && ++found)
			assert_string_equal(v, "3");
		else if (strcmp(name, "statements") == 0 && ++found)
			assert_string_equal(v, "15");
		else if (strcmp(name, "held_waiting") == 0 && ++found)
			assert_string_equal(v, "1");
		else if (strcmp(name, "sessions") == 0 && ++found)
			assert_string_equal(v, "0");
	}
	assert_int_equal(found, 4);
	reply_free(rep);
	unhold(&h);
	admin_close(ac);
}

static volatile sig_atomic_t got_sighup;

static void on_sighup(int sig)
{
	got_sighup = 1;
}

static void reload_sends_sighup(void **state)
{
	AdminConsole *ac = open_as("root", "pgveil-admins");
	struct sigaction sa = { .sa_handler = on_sighup }, old;
	Reply *rep;

	sigemptyset(&sa.sa_mask);
	assert_int_equal(sigaction(SIGHUP, &sa, &old), 0);
	rep = run(ac, "RELOAD;");
	assert_string_equal(rep->order, "NC");
	assert_string_equal(rep->tags[0], "RELOAD");
	reply_free(rep);
	assert_int_equal(got_sighup, 1);
	sigaction(SIGHUP, &old, NULL);
	admin_close(ac);
}

/* ---- setup --------------------------------------------------------------------------------------- */

static int group_setup(void **state)
{
	char path[] = "/tmp/pgveil-test-admin-XXXXXX";
	int fd = mkstemp(path);
	char *errs = NULL;
	int nerrors = 0;
	static const char text[] = "[pgveil]\nlisten_port = 6432\n[databases]\napp = host=/tmp user=u\n";

	if (fd < 0 || write(fd, text, sizeof(text) - 1) != (ssize_t)sizeof(text) - 1)
		return -1;
	close(fd);
	cfg = config_load(path, &errs, &nerrors);
	unlink(path);
	if (cfg == NULL) {
		fprintf(stderr, "%s", errs ? errs : "config_load failed\n");
		free(errs);
		return -1;
	}
	config_set_current(config_ref(cfg));
	return 0;
}

static int group_teardown(void **state)
{
	config_set_current(NULL);
	config_unref(cfg);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(roles_from_groups),
		cmocka_unit_test_teardown(show_held_lists_waiting_statements, teardown),
		cmocka_unit_test_teardown(approve_and_deny, teardown),
		cmocka_unit_test_teardown(approvers_cannot_approve_their_own, teardown),
		cmocka_unit_test_teardown(approve_for_makes_a_grant, teardown),
		cmocka_unit_test_teardown(durations, teardown),
		cmocka_unit_test_teardown(permissions_per_role, teardown),
		cmocka_unit_test_teardown(syntax_errors_have_positions, teardown),
		cmocka_unit_test_teardown(several_commands_and_empty_strings, teardown),
		cmocka_unit_test_teardown(block_and_unblock_agents, teardown),
		cmocka_unit_test_teardown(show_rules, teardown),
		cmocka_unit_test_teardown(show_stats, teardown),
		cmocka_unit_test_teardown(reload_sends_sighup, teardown),
	};
	int rc;

	log_setup(LL_ERROR, false);
	if (evthread_use_pthreads() != 0 || (base = event_base_new()) == NULL)
		return 1;
	rc = cmocka_run_group_tests(tests, group_setup, group_teardown);
	event_base_free(base);
	libevent_global_shutdown();
	return rc;
}
