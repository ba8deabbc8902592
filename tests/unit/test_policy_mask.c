/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the masking check (src/policy_mask.c). Most cases are the
 * lineage corpus tests/unit/data/mask_check.txt: statements analysed by
 * sqlinfo and checked against one fixed catalog snapshot (built below, and
 * described at the top of the corpus) for the caller and mask_predicates
 * setting the corpus names. Then cases whose StmtInfo is built by hand:
 * COPY TO STDOUT in binary or with unusual options (whose format the
 * statement analysis may not fill in), a snapshot that records a failure
 * (built-in names may then be user functions),
 * no snapshot, a statement that did not parse. No check may allocate
 * (allocations are counted). MASK_CHECK_CORPUS=file runs another corpus in
 * the same format (for trying statements out).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "allocfail.h"
#include "pgveil/catalog.h"
#include "pgveil/mask.h"
#include "pgveil/policy.h"

#define CORPUS TEST_SRCDIR "/data/mask_check.txt"

static const char fixture_rules[] = "MASK public.users.email USING email() FOR GROUP agents;\n"
				    "MASK public.users.ssn USING partial(0, '***-**-', 4) FOR GROUP agents;\n"
				    "MASK public.users.salary USING null() FOR GROUP agents;\n"
				    "MASK public.events.card USING redact() FOR GROUP agents;\n"
				    "MASK hr.salaries.amount USING null() UNLESS GROUP hr;\n"
				    "MASK public.legacy.email USING redact() FOR GROUP auditors;\n"
				    "MASK public.gen.email USING email() FOR GROUP agents;\n";

static void add_rel(CatSnap *s, uint32_t oid, const char *schema, const char *name, char kind, const char *viewdef,
		    const char *cols)
{
	char buf[256], *p, *save = NULL, *colon;
	int attnum = 0;
	uint32_t type;

	assert_true(catalog_snap_add_rel(s, oid, schema, name, kind, viewdef));
	snprintf(buf, sizeof(buf), "%s", cols);
	for (p = strtok_r(buf, " ", &save); p != NULL; p = strtok_r(NULL, " ", &save)) {
		attnum++;
		if (strcmp(p, "-") == 0) {
			assert_true(catalog_snap_add_column(s, oid, attnum, NULL, 0, -1));
			continue;
		}
		colon = strchr(p, ':');
		assert_non_null(colon);
		*colon++ = '\0';
		type = strcmp(colon, "int4") == 0      ? MASK_OID_INT4
		       : strcmp(colon, "numeric") == 0 ? MASK_OID_NUMERIC
		       : strcmp(colon, "date") == 0    ? MASK_OID_DATE
						       : MASK_OID_TEXT;
		assert_true(catalog_snap_add_column(s, oid, attnum, p, type, -1));
	}
}

static bool starts_with(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* The snapshot the corpus runs against (see the top of mask_check.txt). */
static CatSnap *fixture(void)
{
	char *errs = NULL;
	int nerr = 0;
	RuleSet *rs = rules_parse_string("rules/masks.rules", fixture_rules, &errs, &nerr);
	CatSnap *s;

	assert_non_null(rs);
	s = catalog_snap_new("app", rs, 1);
	rules_unref(rs);
	assert_non_null(s);
	add_rel(s, 100, "public", "users", 'r', NULL,
		"id:int4 name:text email:text ssn:text salary:numeric - born:date");
	add_rel(s, 101, "hr", "users", 'r', NULL, "id:int4 email:text");
	add_rel(s, 102, "public", "orders", 'r', NULL, "id:int4 user_id:int4 total:numeric note:text");
	add_rel(s, 103, "public", "v_users", 'v',
		" SELECT users.id,\n    users.email,\n    upper(users.name) AS upper\n   FROM public.users;",
		"id:int4 email:text upper:text");
	add_rel(s, 104, "public", "v_calc", 'v',
		" SELECT u.id,\n    lower(u.email) AS lemail,\n    (u.salary * (2)::numeric) AS dbl\n   FROM public.users u;",
		"id:int4 lemail:text dbl:numeric");
	add_rel(s, 105, "public", "events", 'p', NULL, "id:int4 payload:text card:text");
	add_rel(s, 106, "public", "events_2024", 'p', NULL, "id:int4 payload:text card:text");
	add_rel(s, 107, "public", "events_2024_01", 'r', NULL, "- id:int4 payload:text card:text");
	assert_true(catalog_snap_add_parent(s, 106, 105));
	assert_true(catalog_snap_add_parent(s, 107, 106));
	add_rel(s, 108, "hr", "salaries", 'r', NULL, "id:int4 amount:numeric");
	add_rel(s, 109, "public", "mv_users", 'm', " SELECT users.id,\n    users.ssn\n   FROM public.users;",
		"id:int4 ssn:text");
	add_rel(s, 110, "public", "v_fn", 'v', " SELECT o.id,\n    my_fmt(o.note) AS f\n   FROM public.orders o;",
		"id:int4 f:text");
	add_rel(s, 111, "public", "v_len", 'v', " SELECT o.id,\n    length(o.note) AS n\n   FROM public.orders o;",
		"id:int4 n:int4");
	/* legacy.email was renamed to mail: the rule naming it is broken */
	add_rel(s, 112, "public", "legacy", 'p', NULL, "id:int4 mail:text");
	add_rel(s, 113, "public", "legacy_2024", 'r', NULL, "id:int4 mail:text");
	assert_true(catalog_snap_add_parent(s, 113, 112));
	add_rel(s, 114, "public", "v_legacy", 'v', " SELECT legacy.id\n   FROM public.legacy;", "id:int4");
	/* generated columns: norm computed from email, copy a copy of it */
	add_rel(s, 115, "public", "gen", 'r', NULL, "id:int4 email:text norm:text copy:text");
	assert_true(catalog_snap_set_generated(s, 115, 3, "lower(email)"));
	assert_true(catalog_snap_set_generated(s, 115, 4, "email"));
	/* user-defined functions, two of them with a built-in's name */
	assert_true(catalog_snap_add_function(s, "public", "my_fmt"));
	assert_true(catalog_snap_add_function(s, "public", "version"));
	assert_true(catalog_snap_add_function(s, "util", "length"));
	assert_true(catalog_snap_finish(s));
	if (s->n_problems != 3 || !starts_with(s->problems[0], "rules/masks.rules:6: MASK public.legacy.email: no such") ||
	    !starts_with(s->problems[1], "view public.v_fn: it calls my_fmt, which is not built in") ||
	    !starts_with(s->problems[2], "view public.v_len: it calls length, which may not be the built-in"))
		fail_msg("fixture: %d problems: %s / %s / %s", s->n_problems, s->n_problems > 0 ? s->problems[0] : "",
			 s->n_problems > 1 ? s->problems[1] : "", s->n_problems > 2 ? s->problems[2] : "");
	return s;
}

/* ---- allocations --------------------------------------------------------------------------- */

/* policy_mask_check, which must not allocate. */
static void check(const StmtInfo *info, const CatSnap *snap, const Identity *id, bool predicates_allow,
		  MaskVerdict *v)
{
	allocfail_calls = 0;
	policy_mask_check(info, snap, id, predicates_allow, v);
	assert_int_equal(allocfail_calls, 0);
}

/* ---- the corpus ------------------------------------------------------------------------ */

typedef struct Corpus {
	int line;
	Identity id;
	char subject[64];
	char groups_buf[256];
	char *groups[8];
	bool predicates_allow;
	int cases, skipped;
	int failures;
} Corpus;

static char *trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
		*--e = '\0';
	return s;
}

static void set_caller(Corpus *c, char *args)
{
	char *subject = strtok(args, " \t"), *groups = strtok(NULL, " \t"), *save = NULL, *g;

	assert_non_null(subject);
	snprintf(c->subject, sizeof(c->subject), "%s", subject);
	snprintf(c->groups_buf, sizeof(c->groups_buf), "%s", groups != NULL ? groups : "-");
	c->id.subject = c->subject;
	c->id.n_groups = 0;
	c->id.groups = c->groups;
	if (strcmp(c->groups_buf, "-") == 0)
		return;
	for (g = strtok_r(c->groups_buf, ",", &save); g != NULL && c->id.n_groups < 8; g = strtok_r(NULL, ",", &save))
		c->groups[c->id.n_groups++] = g;
}

static bool copy_format_pending(const StmtInfo *info)
{
	for (int i = 0; i < info->n_stmts; i++)
		if (info->stmts[i].copy.format != SQL_COPY_NONE)
			return false;
	return true;
}

/* One case: "VERDICT [text] :: sql". */
static void run_case(Corpus *c, const CatSnap *snap, char *verdict, char *sql)
{
	bool want_block = strncmp(verdict, "BLOCK", 5) == 0, want_reads = false, copy_case = false;
	const char *want_text = "";
	MaskVerdict v;
	StmtInfo *info;

	if (strncmp(verdict, "BLOCK-COPY", 10) == 0) {
		copy_case = true;
		want_text = trim(verdict + 10);
	} else if (want_block) {
		want_text = trim(verdict + 5);
	} else if (strcmp(verdict, "ALLOW READS") == 0) {
		want_reads = true;
	} else if (strcmp(verdict, "ALLOW") != 0) {
		fail_msg("mask_check.txt:%d: unknown verdict \"%s\"", c->line, verdict);
	}
	info = sqlinfo_analyze(sql, strlen(sql));
	assert_non_null(info);
	if (info->error != NULL)
		fail_msg("mask_check.txt:%d: does not parse: %s", c->line, info->error);
	if (copy_case && copy_format_pending(info)) {
		/* SqlStmt.copy is not filled in yet: test_copy_formats covers the check by hand */
		c->skipped++;
		sqlinfo_unref(info);
		return;
	}
	check(info, snap, &c->id, c->predicates_allow, &v);
	c->cases++;
	if (v.blocked != want_block || (want_block && strstr(v.why, want_text) == NULL) ||
	    (!want_block && v.reads_masked != want_reads)) {
		print_error("mask_check.txt:%d: %s\n    expected %s%s%s%s\n    got      %s%s%s%s\n", c->line, sql,
			    want_block ? "BLOCK \"" : "ALLOW", want_text, want_block ? "\"" : "",
			    want_reads ? " READS" : "", v.blocked ? "BLOCK \"" : "ALLOW", v.why, v.blocked ? "\"" : "",
			    !v.blocked && v.reads_masked ? " READS" : "");
		c->failures++;
	}
	sqlinfo_unref(info);
}

static void test_corpus(void **state)
{
	CatSnap *snap = fixture();
	Corpus c = { 0 };
	char line[4096], *sep, *l;
	const char *path = getenv("MASK_CHECK_CORPUS") != NULL ? getenv("MASK_CHECK_CORPUS") : CORPUS;
	FILE *f = fopen(path, "r");

	(void)state;
	assert_non_null(f);
	set_caller(&c, (char[]){ "agent-7 agents" });
	while (fgets(line, sizeof(line), f) != NULL) {
		c.line++;
		l = trim(line);
		if (l[0] == '\0' || l[0] == '#')
			continue;
		if (strncmp(l, "caller ", 7) == 0) {
			set_caller(&c, l + 7);
		} else if (strncmp(l, "predicates ", 11) == 0) {
			c.predicates_allow = strcmp(trim(l + 11), "allow") == 0;
		} else if ((sep = strstr(l, " :: ")) != NULL) {
			*sep = '\0';
			run_case(&c, snap, trim(l), trim(sep + 4));
		} else {
			fail_msg("mask_check.txt:%d: cannot read \"%s\"", c.line, l);
		}
	}
	fclose(f);
	print_message("%d cases checked, %d COPY format cases waiting for SqlStmt.copy\n", c.cases, c.skipped);
	catalog_snap_unref(snap);
	if (strcmp(path, CORPUS) == 0)
		assert_true(c.cases >= 120);
	assert_int_equal(c.failures, 0);
}

/* ---- StmtInfo built by hand ------------------------------------------------------------- */

/* `COPY public.users TO STDOUT`: one statement, a DIRECT star of users, users.* read as OUTPUT. */
typedef struct CopyStmt {
	SqlColumn star;
	SqlColumn *sources[1];
	SqlOutput out;
	SqlColumnUse use;
	SqlTable table;
	SqlPart part;
	SqlStmt stmt;
	StmtInfo info;
} CopyStmt;

static void copy_stmt(CopyStmt *c, const char *table, SqlCopyFormat format, bool unusual)
{
	memset(c, 0, sizeof(*c));
	c->star = (SqlColumn){ "public", (char *)table, SQL_COLUMN_ALL };
	c->sources[0] = &c->star;
	c->out = (SqlOutput){ SQL_OUT_DIRECT, true, 1, c->sources, false };
	c->use = (SqlColumnUse){ &c->star, SQL_USE_OUTPUT, false };
	c->table = (SqlTable){ "public", (char *)table, SQL_ACCESS_READ };
	c->part = (SqlPart){ SC_COPY | SC_READ, 0, 1, &c->table, 0, NULL };
	c->stmt.n_outputs = 1;
	c->stmt.outputs = &c->out;
	c->stmt.n_columns = 1;
	c->stmt.columns = &c->use;
	c->stmt.copy.format = format;
	c->stmt.copy.delimiter = format == SQL_COPY_CSV ? ',' : '\t';
	c->stmt.copy.unusual = unusual;
	c->info.refcount = 1;
	c->info.classes = c->part.classes;
	c->info.n_stmts = 1;
	c->info.stmts = &c->stmt;
	c->info.n_parts = 1;
	c->info.parts = &c->part;
}

static void test_copy_formats(void **state)
{
	CatSnap *snap = fixture();
	Identity agent = { "agent-7", (char *[]){ "agents" }, 1, 0 }, boss = { "boss", (char *[]){ "hr" }, 1, 0 };
	CopyStmt c;
	MaskVerdict v;

	(void)state;
	copy_stmt(&c, "users", SQL_COPY_TEXT, false);
	check(&c.info, snap, &agent, false, &v);
	assert_false(v.blocked);
	assert_true(v.reads_masked);
	copy_stmt(&c, "users", SQL_COPY_CSV, false);
	check(&c.info, snap, &agent, false, &v);
	assert_false(v.blocked);
	copy_stmt(&c, "users", SQL_COPY_BINARY, false);
	check(&c.info, snap, &agent, false, &v);
	assert_true(v.blocked);
	assert_string_equal(v.why, "COPY TO STDOUT in binary format cannot be masked: it reads masked column "
				   "public.users.email");
	copy_stmt(&c, "users", SQL_COPY_CSV, true);
	check(&c.info, snap, &agent, false, &v);
	assert_true(v.blocked);
	assert_non_null(strstr(v.why, "COPY TO STDOUT with these options cannot be masked"));
	/* no masked column read: binary is fine */
	copy_stmt(&c, "orders", SQL_COPY_BINARY, true);
	check(&c.info, snap, &agent, false, &v);
	assert_false(v.blocked);
	assert_false(v.reads_masked);
	/* a caller without masks */
	copy_stmt(&c, "users", SQL_COPY_BINARY, false);
	check(&c.info, snap, &boss, false, &v);
	assert_false(v.blocked);
	assert_false(v.reads_masked);
	catalog_snap_unref(snap);
}

static void test_without_catalog(void **state)
{
	CatSnap *failed = catalog_snap_failed("app", 1, "connection refused");
	Identity agent = { "agent-7", (char *[]){ "agents" }, 1, 0 };
	StmtInfo *info;
	MaskVerdict v;

	(void)state;
	assert_non_null(failed);
	info = sqlinfo_analyze("SELECT id FROM orders", 21);
	assert_non_null(info);
	check(info, failed, &agent, true, &v);
	assert_true(v.blocked);
	assert_string_equal(v.why, "masked columns cannot be checked: the catalog of database app could not be read "
				   "(connection refused)");
	/* no snapshot: no masks */
	check(info, NULL, &agent, false, &v);
	assert_false(v.blocked);
	assert_false(v.reads_masked);
	sqlinfo_unref(info);

	info = sqlinfo_analyze("SELECT 1", 8);
	check(info, failed, &agent, false, &v);
	assert_false(v.blocked);
	sqlinfo_unref(info);
	info = sqlinfo_analyze("SELECT my_func()", 16);
	check(info, failed, &agent, false, &v);
	assert_true(v.blocked);
	assert_string_equal(v.why, "function my_func is not built in and this caller has masked columns");
	sqlinfo_unref(info);
	/* which user functions exist is not known: a built-in's name may be one of them */
	info = sqlinfo_analyze("SELECT now()", 12);
	check(info, failed, &agent, false, &v);
	assert_true(v.blocked);
	assert_string_equal(v.why, "function now may not be the built-in: the catalog of database app could not be read, "
				   "so its user-defined functions are not known (pg_catalog.now is the built-in)");
	sqlinfo_unref(info);
	info = sqlinfo_analyze("SELECT pg_catalog.now()", 23);
	check(info, failed, &agent, false, &v);
	assert_false(v.blocked);
	sqlinfo_unref(info);
	catalog_snap_unref(failed);
}

/*
 * A user function whose name has a dot: sqlinfo lists the call
 * "pg_catalog.upper"(x) as pg_catalog.upper, the same as the built-in's
 * qualified call, so both block (the two cannot be told apart).
 */
static void test_dotted_function_name(void **state)
{
	char *errs = NULL;
	int nerr = 0;
	RuleSet *rs = rules_parse_string("x.rules", "MASK public.t.secret USING null();\n", &errs, &nerr);
	CatSnap *s = catalog_snap_new("app", rs, 1);
	Identity agent = { "agent-7", NULL, 0, 0 };
	static const char *const blocked[] = { "SELECT \"pg_catalog.upper\"('x')", "SELECT pg_catalog.upper('x')" };
	StmtInfo *info;
	MaskVerdict v;

	(void)state;
	rules_unref(rs);
	assert_non_null(s);
	assert_true(catalog_snap_add_rel(s, 1, "public", "t", 'r', NULL));
	assert_true(catalog_snap_add_column(s, 1, 1, "secret", MASK_OID_TEXT, -1));
	assert_true(catalog_snap_add_function(s, "public", "pg_catalog.upper"));
	assert_true(catalog_snap_finish(s));
	for (size_t i = 0; i < 2; i++) {
		info = sqlinfo_analyze(blocked[i], strlen(blocked[i]));
		check(info, s, &agent, false, &v);
		assert_true(v.blocked);
		assert_string_equal(v.why, "function pg_catalog.upper may not be the built-in: user-defined function "
					   "public.pg_catalog.upper has the same name, and this caller has masked columns");
		sqlinfo_unref(info);
	}
	info = sqlinfo_analyze("SELECT upper('x')", 17);
	check(info, s, &agent, false, &v);
	assert_false(v.blocked);
	sqlinfo_unref(info);
	catalog_snap_unref(s);
}

static void test_unparsed(void **state)
{
	CatSnap *snap = fixture();
	Identity agent = { "agent-7", (char *[]){ "agents" }, 1, 0 }, boss = { "boss", (char *[]){ "hr" }, 1, 0 };
	StmtInfo *info = sqlinfo_analyze("SELEC email FROM users", 22);
	MaskVerdict v;

	(void)state;
	assert_non_null(info);
	assert_non_null(info->error);
	check(info, snap, &agent, false, &v);
	assert_true(v.blocked);
	check(info, snap, &boss, false, &v);
	assert_false(v.blocked);
	check(NULL, snap, &agent, false, &v);
	assert_false(v.blocked);
	sqlinfo_unref(info);
	catalog_snap_unref(snap);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_corpus),
		cmocka_unit_test(test_copy_formats),
		cmocka_unit_test(test_without_catalog),
		cmocka_unit_test(test_dotted_function_name),
		cmocka_unit_test(test_unparsed),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
