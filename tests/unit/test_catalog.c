/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of catalog snapshots (src/catalog.c), built by hand as the
 * catalog thread builds them from catalog rows: lookups by OID, name and
 * attnum, dropped columns, and where mask rules reach: partitions at depth,
 * inheritance (cycles included), ancestors, views and materialized views
 * (copies and computed columns), views of views, definitions that cannot be
 * analysed, rules that name nothing or cannot mask a column's type, rules
 * naming a column their relation no longer has (refused there), generated
 * columns (copies and computed columns, like views), FOR and
 * UNLESS callers, user-defined functions and how calls resolve against them
 * (views calling one count as calling user code), every allocation failing
 * in turn, and a snapshot of 20,000 relations.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "allocfail.h"
#include "pgveil/catalog.h"
#include "pgveil/mask.h"
#include "pgveil/sqlinfo.h"

#define TEXT MASK_OID_TEXT
#define INT4 MASK_OID_INT4
#define NUMERIC MASK_OID_NUMERIC

/* ---- helpers -------------------------------------------------------------------- */

static RuleSet *rules_of(const char *text)
{
	char *errs = NULL;
	int nerr = 0;
	RuleSet *rs = rules_parse_string("rules/x.rules", text, &errs, &nerr);

	if (rs == NULL)
		fail_msg("rules do not parse: %s", errs != NULL ? errs : "?");
	return rs;
}

/* A snapshot under `rules` (the snapshot takes its own reference). */
static CatSnap *snap_of(const char *rules)
{
	RuleSet *rs = rules != NULL ? rules_of(rules) : NULL;
	CatSnap *s = catalog_snap_new("app", rs, 1);

	assert_non_null(s);
	rules_unref(rs);
	return s;
}

/* Adds a relation and its columns: "name:type" ..., "-" for a dropped column; NULL ends. */
static void add_rel(CatSnap *s, uint32_t oid, const char *schema, const char *name, char kind, const char *viewdef,
		    ...)
{
	va_list ap;
	const char *col;
	int attnum = 0;

	assert_true(catalog_snap_add_rel(s, oid, schema, name, kind, viewdef));
	va_start(ap, viewdef);
	while ((col = va_arg(ap, const char *)) != NULL) {
		attnum++;
		if (strcmp(col, "-") == 0) {
			assert_true(catalog_snap_add_column(s, oid, attnum, NULL, 0, -1));
			continue;
		}
		assert_true(catalog_snap_add_column(s, oid, attnum, col, strcmp(col, "id") == 0 ? INT4
							: strcmp(col, "salary") == 0 ? NUMERIC : TEXT, -1));
	}
	va_end(ap);
}

static const CatColumn *col_of(const CatSnap *s, uint32_t oid, const char *name)
{
	const CatRel *r = catalog_rel(s, oid);
	int a;

	assert_non_null(r);
	a = catalog_attnum(r, name);
	if (a == 0)
		fail_msg("relation %u has no column %s", oid, name);
	return catalog_column(s, oid, a);
}

/* "email:copy,ssn:derived": the rules reaching the column, by their column name, in order. */
static void expect_masks(const CatSnap *s, uint32_t oid, const char *column, const char *want)
{
	const CatColumn *c = col_of(s, oid, column);
	char got[512] = "";

	for (int i = 0; i < c->n_masks; i++) {
		size_t l = strlen(got);

		snprintf(got + l, sizeof(got) - l, "%s%s:%s", i > 0 ? "," : "", c->masks[i].rule->mask_column,
			 c->masks[i].derived ? "derived" : "copy");
	}
	if (strcmp(got, want) != 0)
		fail_msg("relation %u column %s: masks \"%s\", expected \"%s\"", oid, column, got, want);
}

static bool has_problem(const CatSnap *s, const char *part)
{
	for (int i = 0; i < s->n_problems; i++)
		if (strstr(s->problems[i], part) != NULL)
			return true;
	return false;
}

static void expect_problem(const CatSnap *s, const char *part)
{
	if (has_problem(s, part))
		return;
	for (int i = 0; i < s->n_problems; i++)
		print_message("problem: %s\n", s->problems[i]);
	fail_msg("no problem line contains \"%s\"", part);
}

static Identity ident(const char *subject, const char *groups)
{
	static char buf[4][256];
	static char *gv[4][8];
	static int slot;
	Identity id = { (char *)subject, NULL, 0, 0 };
	char *p, *save = NULL;
	int k = slot++ % 4;

	snprintf(buf[k], sizeof(buf[k]), "%s", groups);
	for (p = strtok_r(buf[k], ",", &save); p != NULL && id.n_groups < 8; p = strtok_r(NULL, ",", &save))
		gv[k][id.n_groups++] = p;
	id.groups = gv[k];
	return id;
}

static const char users_rules[] = "MASK public.users.email USING email();\n"
				  "MASK public.users.ssn USING partial(0, '***-**-', 4) FOR GROUP agents;\n"
				  "MASK public.users.salary USING null() FOR GROUP agents UNLESS GROUP hr;\n";

/* public.users (1000) with a dropped column, hr.users (2000) of the same name, public.orders (1001). */
static void add_users(CatSnap *s)
{
	add_rel(s, 1000, "public", "users", 'r', NULL, "id", "name", "-", "email", "ssn", "salary", NULL);
	add_rel(s, 2000, "hr", "users", 'r', NULL, "id", "email", NULL);
	add_rel(s, 1001, "public", "orders", 'r', NULL, "id", "user_id", "note", NULL);
}

/* ---- lookups ----------------------------------------------------------------------- */

static void test_lookups(void **state)
{
	CatSnap *s = snap_of(users_rules);
	const CatRel *out[4];
	const CatRel *r;
	int n;

	(void)state;
	add_users(s);
	assert_true(catalog_snap_add_rel(s, 1000, "public", "dup", 'r', NULL)); /* listed twice: first stays */
	assert_true(catalog_snap_add_column(s, 4242, 1, "x", TEXT, -1));       /* unknown relation: ignored */
	assert_true(catalog_snap_finish(s));
	assert_int_equal(s->n_rels, 3);
	assert_int_equal(s->n_problems, 0);

	r = catalog_rel(s, 1000);
	assert_non_null(r);
	assert_string_equal(r->schema, "public");
	assert_string_equal(r->name, "users");
	assert_int_equal(r->kind, 'r');
	assert_int_equal(r->n_columns, 6);
	assert_null(catalog_rel(s, 999));
	assert_null(catalog_rel(NULL, 1000));

	assert_int_equal(catalog_attnum(r, "id"), 1);
	assert_int_equal(catalog_attnum(r, "email"), 4);
	assert_int_equal(catalog_attnum(r, "salary"), 6);
	assert_int_equal(catalog_attnum(r, "Email"), 0);
	assert_int_equal(catalog_attnum(r, "nope"), 0);
	assert_null(catalog_column(s, 1000, 3)); /* dropped */
	assert_null(catalog_column(s, 1000, 7));
	assert_null(catalog_column(s, 1000, 0));
	assert_null(catalog_column(s, 77, 1));
	assert_string_equal(catalog_column(s, 1000, 4)->name, "email");
	assert_int_equal(catalog_column(s, 1000, 6)->type_oid, NUMERIC);

	assert_int_equal(catalog_find_rels(s, "public", "users", out, 4), 1);
	assert_int_equal(out[0]->oid, 1000);
	assert_int_equal(catalog_find_rels(s, "hr", "users", out, 4), 1);
	assert_int_equal(out[0]->oid, 2000);
	assert_int_equal(catalog_find_rels(s, NULL, "users", out, 4), 2);
	assert_true((out[0]->oid == 1000 && out[1]->oid == 2000) || (out[0]->oid == 2000 && out[1]->oid == 1000));
	assert_int_equal(catalog_find_rels(s, NULL, "users", out, 1), 2); /* counts past max */
	assert_int_equal(catalog_find_rels(s, "sales", "users", out, 4), 0);
	assert_int_equal(catalog_find_rels(s, NULL, "user", out, 4), 0);
	assert_int_equal(catalog_find_rels(s, NULL, "usersx", out, 4), 0);
	assert_int_equal(catalog_find_rels(s, NULL, "orders", out, 4), 1);
	assert_non_null(catalog_rels_named(s, "users", &n));
	assert_int_equal(n, 2);
	assert_null(catalog_rels_named(s, "zzz", &n));
	assert_int_equal(n, 0);

	/* a finished snapshot takes nothing more */
	assert_false(catalog_snap_add_rel(s, 5, "public", "late", 'r', NULL));
	catalog_snap_unref(s);
}

static void test_refcount_and_failed(void **state)
{
	CatSnap *s = snap_of(NULL), *f;
	uint64_t v;

	(void)state;
	add_users(s);
	assert_true(catalog_snap_finish(s));
	assert_ptr_equal(catalog_snap_ref(s), s);
	assert_int_equal(s->refcount, 2);
	catalog_snap_unref(s);
	assert_int_equal(s->refcount, 1);
	assert_false(catalog_rel(s, 1000)->has_masks); /* no rules, no masks */
	v = s->version;
	catalog_snap_unref(s);
	catalog_snap_unref(NULL);
	assert_null(catalog_snap_ref(NULL));

	f = catalog_snap_failed("app", 3, "connection refused");
	assert_non_null(f);
	assert_string_equal(f->error, "connection refused");
	assert_string_equal(f->database, "app");
	assert_int_equal(f->cfg_gen, 3);
	assert_true(f->version > v);
	assert_int_equal(f->n_rels, 0);
	assert_null(catalog_rel(f, 1000));
	assert_int_equal(catalog_find_rels(f, NULL, "users", NULL, 0), 0);
	catalog_snap_unref(f);
}

/* ---- where masks reach ------------------------------------------------------------- */

static void test_table_masks(void **state)
{
	CatSnap *s = snap_of(users_rules);

	(void)state;
	add_users(s);
	assert_true(catalog_snap_finish(s));
	assert_int_equal(s->n_problems, 0);
	expect_masks(s, 1000, "email", "email:copy");
	expect_masks(s, 1000, "ssn", "ssn:copy");
	expect_masks(s, 1000, "salary", "salary:copy");
	expect_masks(s, 1000, "id", "");
	expect_masks(s, 2000, "email", ""); /* hr.users is another table */
	assert_true(catalog_rel(s, 1000)->has_masks);
	assert_false(catalog_rel(s, 2000)->has_masks);
	assert_false(catalog_rel(s, 1001)->has_masks);
	assert_true(col_of(s, 1000, "email")->masks[0].type_ok);
	catalog_snap_unref(s);
}

static void test_partitions(void **state)
{
	CatSnap *s = snap_of("MASK public.events.card USING redact();\n"
			     "MASK public.events_2024_02.payload USING null();\n");

	(void)state;
	add_rel(s, 10, "public", "events", 'p', NULL, "id", "payload", "card", NULL);
	add_rel(s, 11, "public", "events_2024", 'p', NULL, "id", "payload", "card", NULL);
	/* a partition attached after a column was dropped: other attnums */
	add_rel(s, 12, "public", "events_2024_01", 'r', NULL, "-", "card", "id", "payload", NULL);
	add_rel(s, 13, "public", "events_2024_02", 'r', NULL, "id", "payload", "card", NULL);
	add_rel(s, 14, "public", "events_2023", 'r', NULL, "id", "payload", "card", NULL);
	add_rel(s, 15, "public", "other", 'r', NULL, "id", "payload", "card", NULL);
	assert_true(catalog_snap_add_parent(s, 11, 10));
	assert_true(catalog_snap_add_parent(s, 12, 11));
	assert_true(catalog_snap_add_parent(s, 13, 11));
	assert_true(catalog_snap_add_parent(s, 13, 11)); /* twice: once */
	assert_true(catalog_snap_add_parent(s, 14, 10));
	assert_true(catalog_snap_add_parent(s, 14, 999)); /* unknown parent: ignored */
	assert_true(catalog_snap_finish(s));
	assert_int_equal(catalog_rel(s, 13)->n_parents, 1);
	assert_int_equal(s->n_problems, 0);
	for (uint32_t oid = 10; oid <= 14; oid++)
		expect_masks(s, oid, "card", "card:copy");
	assert_int_equal(catalog_attnum(catalog_rel(s, 12), "card"), 2);
	expect_masks(s, 15, "card", "");
	/* a mask on a partition also masks its ancestors' column (they return its rows), not its siblings' */
	expect_masks(s, 13, "payload", "payload:copy");
	expect_masks(s, 11, "payload", "payload:copy");
	expect_masks(s, 10, "payload", "payload:copy");
	expect_masks(s, 12, "payload", "");
	expect_masks(s, 14, "payload", "");
	catalog_snap_unref(s);
}

static void test_inheritance(void **state)
{
	CatSnap *s = snap_of("MASK public.people.ssn USING redact();\n");

	(void)state;
	add_rel(s, 20, "public", "people", 'r', NULL, "id", "ssn", NULL);
	add_rel(s, 21, "public", "staff", 'r', NULL, "id", "ssn", "dept", NULL);
	add_rel(s, 22, "hr", "managers", 'r', NULL, "id", "ssn", "dept", "level", NULL);
	add_rel(s, 23, "public", "contractors", 'r', NULL, "id", "other", NULL); /* no ssn column */
	add_rel(s, 24, "public", "interns", 'r', NULL, "id", "ssn", NULL);
	/* multiple inheritance and a cycle the catalog cannot have, but must not loop on */
	assert_true(catalog_snap_add_parent(s, 21, 20));
	assert_true(catalog_snap_add_parent(s, 22, 21));
	assert_true(catalog_snap_add_parent(s, 22, 20));
	assert_true(catalog_snap_add_parent(s, 23, 20));
	assert_true(catalog_snap_add_parent(s, 24, 23));
	assert_true(catalog_snap_add_parent(s, 20, 22));
	assert_true(catalog_snap_finish(s));
	expect_masks(s, 20, "ssn", "ssn:copy");
	expect_masks(s, 21, "ssn", "ssn:copy");
	expect_masks(s, 22, "ssn", "ssn:copy");
	expect_masks(s, 24, "ssn", "ssn:copy"); /* through a child without the column */
	assert_false(catalog_rel(s, 23)->has_masks);
	catalog_snap_unref(s);
}

static const char v_users_def[] = " SELECT u.id,\n    u.email,\n    upper(u.name) AS upper,\n"
				  "    lower(u.email) AS lemail,\n    (u.salary * 2::numeric) AS dbl\n"
				  "   FROM public.users u;";

static void test_views(void **state)
{
	CatSnap *s = snap_of(users_rules);

	(void)state;
	add_users(s);
	add_rel(s, 3000, "public", "v_users", 'v', v_users_def, "id", "email", "upper", "lemail", "dbl", NULL);
	/* views of views, one of them unqualified ("any schema": public.users and hr.users) */
	add_rel(s, 3001, "public", "v2", 'v', " SELECT v.email AS e,\n    v.lemail,\n    v.upper\n   FROM public.v_users v;",
		"e", "lemail", "upper", NULL);
	add_rel(s, 3002, "public", "v3", 'v', " SELECT (v2.e || 'x'::text) AS ex,\n    v2.e AS e2\n   FROM public.v2;",
		"ex", "e2", NULL);
	add_rel(s, 3003, "rep", "v4", 'v', " SELECT v3.e2\n   FROM public.v3;", "e2", NULL);
	add_rel(s, 3004, "public", "vq", 'v', " SELECT users.email\n   FROM users;", "email", NULL);
	/* whole rows, joins, aggregates, set operations */
	add_rel(s, 3005, "public", "vrow", 'v', " SELECT u.id,\n    row_to_json(u.*) AS j\n   FROM public.users u;",
		"id", "j", NULL);
	add_rel(s, 3006, "public", "vjoin", 'v',
		" SELECT o.id,\n    u.ssn,\n    o.note\n   FROM (public.orders o\n     JOIN public.users u ON ((u.id = o.user_id)));",
		"id", "ssn", "note", NULL);
	add_rel(s, 3007, "public", "vagg", 'v', " SELECT count(*) AS n,\n    max(users.salary) AS top\n   FROM public.users;",
		"n", "top", NULL);
	add_rel(s, 3008, "public", "vunion", 'v',
		" SELECT users.email\n   FROM public.users\nUNION\n SELECT orders.note AS email\n   FROM public.orders;",
		"email", NULL);
	/* a materialized view copies values like a view */
	add_rel(s, 3009, "public", "mv", 'm', " SELECT users.id,\n    users.ssn,\n    md5(users.email) AS h\n   FROM public.users;",
		"id", "ssn", "h", NULL);
	assert_true(catalog_snap_finish(s));
	for (int i = 0; i < s->n_problems; i++)
		print_message("problem: %s\n", s->problems[i]);
	assert_int_equal(s->n_problems, 0);

	expect_masks(s, 3000, "id", "");
	expect_masks(s, 3000, "email", "email:copy");
	expect_masks(s, 3000, "upper", "");
	expect_masks(s, 3000, "lemail", "email:derived");
	expect_masks(s, 3000, "dbl", "salary:derived");
	expect_masks(s, 3001, "e", "email:copy");
	expect_masks(s, 3001, "lemail", "email:derived");
	expect_masks(s, 3001, "upper", "");
	expect_masks(s, 3002, "ex", "email:derived");
	expect_masks(s, 3002, "e2", "email:copy");
	expect_masks(s, 3003, "e2", "email:copy");
	expect_masks(s, 3004, "email", "email:copy");
	expect_masks(s, 3005, "id", "");
	expect_masks(s, 3005, "j", "email:derived,ssn:derived,salary:derived");
	expect_masks(s, 3006, "ssn", "ssn:copy");
	expect_masks(s, 3006, "note", "");
	expect_masks(s, 3007, "n", "");
	expect_masks(s, 3007, "top", "salary:derived");
	expect_masks(s, 3008, "email", "email:derived");
	expect_masks(s, 3009, "ssn", "ssn:copy");
	expect_masks(s, 3009, "h", "email:derived");
	assert_true(catalog_rel(s, 3003)->has_masks);
	assert_false(catalog_rel(s, 1001)->has_masks);
	assert_true(col_of(s, 3000, "email")->masks[0].type_ok);
	catalog_snap_unref(s);
}

/* Views added before the views they read, over a partitioned table: the fixed point does not depend on order. */
static void test_views_any_order(void **state)
{
	CatSnap *s = snap_of("MASK public.events.card USING redact();\n");

	(void)state;
	add_rel(s, 50, "public", "top", 'v', " SELECT mid.c\n   FROM public.mid;", "c", NULL);
	add_rel(s, 51, "public", "mid", 'v', " SELECT base.c\n   FROM public.base;", "c", NULL);
	add_rel(s, 52, "public", "base", 'v', " SELECT events_2024.card AS c\n   FROM public.events_2024;", "c", NULL);
	add_rel(s, 53, "public", "topx", 'v', " SELECT substr(mid.c, 1, 4) AS c4\n   FROM public.mid;", "c4", NULL);
	add_rel(s, 10, "public", "events", 'p', NULL, "id", "card", NULL);
	add_rel(s, 11, "public", "events_2024", 'r', NULL, "id", "card", NULL);
	assert_true(catalog_snap_add_parent(s, 11, 10));
	assert_true(catalog_snap_finish(s));
	expect_masks(s, 52, "c", "card:copy");
	expect_masks(s, 51, "c", "card:copy");
	expect_masks(s, 50, "c", "card:copy");
	expect_masks(s, 53, "c4", "card:derived");
	catalog_snap_unref(s);
}

/* A column reached both as a copy and as a computation counts as computed. */
static void test_copy_and_derived(void **state)
{
	CatSnap *s = snap_of(users_rules);

	(void)state;
	add_users(s);
	/* an output whose sources are two columns, and one whose one source is a whole row */
	add_rel(s, 3100, "public", "vcase", 'v',
		" SELECT\n        CASE\n            WHEN (u.id > 0) THEN u.email\n            ELSE u.ssn\n        END AS x\n   FROM public.users u;",
		"x", NULL);
	add_rel(s, 3101, "public", "vcoal", 'v', " SELECT COALESCE(u.email, u.email) AS y,\n    u.email\n   FROM public.users u;",
		"y", "email", NULL);
	add_rel(s, 3102, "public", "vboth", 'v', " SELECT a.y\n   FROM public.vcoal a\nUNION ALL\n SELECT b.email AS y\n   FROM public.vcoal b;",
		"y", NULL);
	assert_true(catalog_snap_finish(s));
	expect_masks(s, 3100, "x", "email:derived,ssn:derived");
	expect_masks(s, 3101, "y", "email:derived");
	expect_masks(s, 3101, "email", "email:copy");
	expect_masks(s, 3102, "y", "email:derived");
	catalog_snap_unref(s);
}

static void test_view_cannot_be_analysed(void **state)
{
	CatSnap *s = snap_of(users_rules);

	(void)state;
	add_users(s);
	add_rel(s, 3200, "public", "vbad", 'v', " SELEKT garbage FROM", "a", "b", NULL);
	add_rel(s, 3201, "public", "vnodef", 'v', NULL, "a", NULL);
	/* columns that do not line up with the definition: every column from everything it reads */
	add_rel(s, 3202, "public", "vshort", 'v', " SELECT users.id,\n    users.ssn\n   FROM public.users;", "id", "ssn",
		"extra", NULL);
	add_rel(s, 3203, "public", "vstar", 'v', " SELECT *\n   FROM public.orders o, public.users u;", "a", "b", NULL);
	add_rel(s, 3204, "public", "vconst", 'v', " SELECT 1 AS one;", "one", NULL);
	add_rel(s, 3205, "public", "vreader", 'v', " SELECT vbad.a\n   FROM public.vbad;", "a", NULL);
	/* code the analysis cannot see into may read any table */
	add_rel(s, 3206, "public", "vfunc", 'v', " SELECT o.id,\n    my_fmt(o.note) AS f\n   FROM public.orders o;",
		"id", "f", NULL);
	add_rel(s, 3207, "public", "vsrf", 'v', " SELECT x.a\n   FROM public.leak() x(a);", "a", NULL);
	add_rel(s, 3208, "public", "vxml", 'v',
		" SELECT query_to_xml('select email from public.users'::text, true, false, ''::text) AS x;", "x", NULL);
	add_rel(s, 3209, "public", "vfine", 'v', " SELECT upper(o.note) AS n\n   FROM public.orders o;", "n", NULL);
	assert_true(catalog_snap_finish(s));
	expect_masks(s, 3200, "a", "email:derived,ssn:derived,salary:derived");
	expect_masks(s, 3200, "b", "email:derived,ssn:derived,salary:derived");
	expect_masks(s, 3201, "a", "email:derived,ssn:derived,salary:derived");
	expect_masks(s, 3202, "id", "ssn:derived");
	expect_masks(s, 3202, "extra", "ssn:derived");
	expect_masks(s, 3203, "a", "email:derived,ssn:derived,salary:derived");
	expect_masks(s, 3204, "one", "");
	expect_masks(s, 3205, "a", "email:derived,ssn:derived,salary:derived");
	expect_masks(s, 3206, "id", "email:derived,ssn:derived,salary:derived");
	expect_masks(s, 3207, "a", "email:derived,ssn:derived,salary:derived");
	expect_masks(s, 3208, "x", "email:derived,ssn:derived,salary:derived");
	expect_masks(s, 3209, "n", "");
	expect_problem(s, "view public.vfunc: it calls my_fmt, which is not built in: every column counts as "
			  "computed from every masked column");
	expect_problem(s, "view public.vsrf: it calls public.leak, which is not built in");
	expect_problem(s, "view public.vxml: it runs code the analysis cannot see into (an operator that is not "
			  "built in, or SQL given as text)");
	assert_false(has_problem(s, "vfine"));
	expect_problem(s, "view public.vbad: its definition cannot be analysed");
	expect_problem(s, "view public.vnodef: no definition");
	expect_problem(s, "view public.vshort: its 3 columns cannot be matched");
	expect_problem(s, "view public.vstar:");
	assert_false(has_problem(s, "vconst"));
	assert_false(has_problem(s, "vreader"));
	catalog_snap_unref(s);
}

/* User-defined functions: kept once per (schema, name), found by name, and how calls resolve. */
static void test_user_functions(void **state)
{
	CatSnap *s = snap_of(NULL), *failed;
	const char *schema = "untouched", *name = "untouched";

	(void)state;
	/* in no order, overloads listed once each */
	assert_true(catalog_snap_add_function(s, "util", "version"));
	assert_true(catalog_snap_add_function(s, "public", "lower"));
	assert_true(catalog_snap_add_function(s, "public", "my_fmt"));
	assert_true(catalog_snap_add_function(s, "public", "lower"));
	assert_true(catalog_snap_add_function(s, "app", "lower"));
	assert_true(catalog_snap_add_function(s, "public", "Upper"));
	assert_true(catalog_snap_add_function(s, "public", "pg_catalog.upper"));
	assert_true(catalog_snap_add_function(s, "information_schema", "_pg_expandarray"));
	assert_false(catalog_user_function(s, NULL, "lower")); /* not finished: no lookups yet */
	assert_true(catalog_snap_finish(s));
	assert_false(catalog_snap_add_function(s, "public", "late"));
	assert_int_equal(s->n_functions, 7);

	assert_true(catalog_user_function(s, NULL, "lower"));
	assert_true(catalog_user_function(s, "public", "lower"));
	assert_true(catalog_user_function(s, "app", "lower"));
	assert_false(catalog_user_function(s, "util", "lower"));
	assert_true(catalog_user_function(s, "util", "version"));
	assert_false(catalog_user_function(s, NULL, "upper"));   /* names compare exactly */
	assert_true(catalog_user_function(s, NULL, "Upper"));
	assert_false(catalog_user_function(s, NULL, "nosuch"));
	assert_false(catalog_user_function(s, NULL, NULL));
	assert_false(catalog_user_function(NULL, NULL, "lower"));

	/* built-ins nobody shadows, and calls qualified with pg_catalog */
	assert_int_equal(catalog_resolve_function(s, "upper", &schema, &name), CAT_FN_BUILTIN);
	assert_int_equal(catalog_resolve_function(s, "pg_catalog.lower", &schema, &name), CAT_FN_BUILTIN);
	assert_int_equal(catalog_resolve_function(s, "pg_catalog.version", &schema, &name), CAT_FN_BUILTIN);
	assert_string_equal(schema, "untouched");
	assert_string_equal(name, "untouched");
	/* a built-in's name that user functions also have */
	assert_int_equal(catalog_resolve_function(s, "lower", &schema, &name), CAT_FN_SHADOWED);
	assert_true(strcmp(schema, "app") == 0 || strcmp(schema, "public") == 0);
	assert_string_equal(name, "lower");
	assert_int_equal(catalog_resolve_function(s, "version", &schema, &name), CAT_FN_SHADOWED);
	assert_string_equal(schema, "util");
	assert_string_equal(name, "version");
	/* "pg_catalog.upper" is also the quoted name of a user function */
	assert_int_equal(catalog_resolve_function(s, "pg_catalog.upper", &schema, &name), CAT_FN_SHADOWED);
	assert_string_equal(schema, "public");
	assert_string_equal(name, "pg_catalog.upper");
	/* not built-ins at all */
	assert_int_equal(catalog_resolve_function(s, "public.lower", NULL, NULL), CAT_FN_NOT_BUILTIN);
	assert_int_equal(catalog_resolve_function(s, "util.version", NULL, NULL), CAT_FN_NOT_BUILTIN);
	assert_int_equal(catalog_resolve_function(s, "my_fmt", NULL, NULL), CAT_FN_NOT_BUILTIN);
	assert_int_equal(catalog_resolve_function(s, "Upper", NULL, NULL), CAT_FN_NOT_BUILTIN);
	assert_int_equal(catalog_resolve_function(s, "nosuch", NULL, NULL), CAT_FN_NOT_BUILTIN);
	catalog_snap_unref(s);

	/* no snapshot, a failed one, one without functions: nothing shadows */
	failed = catalog_snap_failed("app", 1, "down");
	s = snap_of(NULL);
	assert_true(catalog_snap_finish(s));
	assert_int_equal(s->n_functions, 0);
	assert_int_equal(catalog_resolve_function(NULL, "lower", NULL, NULL), CAT_FN_BUILTIN);
	assert_int_equal(catalog_resolve_function(failed, "lower", NULL, NULL), CAT_FN_BUILTIN);
	assert_int_equal(catalog_resolve_function(s, "lower", NULL, NULL), CAT_FN_BUILTIN);
	assert_int_equal(catalog_resolve_function(failed, "my_fmt", NULL, NULL), CAT_FN_NOT_BUILTIN);
	assert_false(catalog_user_function(failed, NULL, "lower"));
	catalog_snap_unref(s);
	catalog_snap_unref(failed);
}

/*
 * Views calling a built-in's name that a user function has count as
 * calling user code, as statements do; pg_catalog-qualified calls and
 * names nobody shadows do not.
 */
static void test_views_and_user_functions(void **state)
{
	CatSnap *s = snap_of(users_rules);

	(void)state;
	add_users(s);
	assert_true(catalog_snap_add_function(s, "public", "lower"));
	assert_true(catalog_snap_add_function(s, "public", "length"));
	/* what pg_get_viewdef() prints under search_path '': public.lower qualified */
	add_rel(s, 3300, "public", "vpub", 'v', " SELECT o.id,\n    public.lower(o.note) AS l\n   FROM public.orders o;",
		"id", "l", NULL);
	/* the same name unqualified: resolved as in statements, it may be the user's */
	add_rel(s, 3301, "public", "vshadow", 'v', " SELECT o.id,\n    length(o.note) AS n\n   FROM public.orders o;",
		"id", "n", NULL);
	add_rel(s, 3302, "public", "vbuiltin", 'v',
		" SELECT o.id,\n    pg_catalog.lower(o.note) AS l,\n    upper(o.note) AS u\n   FROM public.orders o;",
		"id", "l", "u", NULL);
	add_rel(s, 3303, "public", "vcopy", 'v', " SELECT u.email\n   FROM public.users u\n  WHERE (length(u.name) > 3);",
		"email", NULL);
	assert_true(catalog_snap_finish(s));
	expect_masks(s, 3300, "id", "email:derived,ssn:derived,salary:derived");
	expect_masks(s, 3300, "l", "email:derived,ssn:derived,salary:derived");
	expect_masks(s, 3301, "id", "email:derived,ssn:derived,salary:derived");
	expect_masks(s, 3302, "id", "");
	expect_masks(s, 3302, "l", "");
	expect_masks(s, 3302, "u", "");
	expect_masks(s, 3303, "email", "email:derived,ssn:derived,salary:derived");
	expect_problem(s, "view public.vpub: it calls public.lower, which is not built in: every column counts as "
			  "computed from every masked column");
	expect_problem(s, "view public.vshadow: it calls length, which may not be the built-in: user-defined "
			  "function public.length has the same name: every column counts as computed from every masked column");
	expect_problem(s, "view public.vcopy: it calls length, which may not be the built-in");
	assert_false(has_problem(s, "vbuiltin"));
	catalog_snap_unref(s);
}

static void test_rule_problems(void **state)
{
	CatSnap *s = snap_of("MASK public.users.email USING email();\n"
			     "MASK public.users.emial USING email();\n"
			     "MASK public.userz.email USING email();\n"
			     "MASK public.users.id USING hash();\n"
			     "MASK public.users.salary USING constant('40000');\n"
			     "MASK public.users.name USING null();\n");

	(void)state;
	add_users(s);
	/* the dropped column has no name: a rule cannot name it */
	add_rel(s, 1002, "public", "kids", 'r', NULL, "id", "name", "email", NULL);
	assert_true(catalog_snap_add_parent(s, 1002, 1000));
	assert_true(catalog_snap_finish(s));
	expect_problem(s, "rules/x.rules:2: MASK public.users.emial: no such column");
	expect_problem(s, "rules/x.rules:3: MASK public.userz.email: no such relation");
	expect_problem(s, "rules/x.rules:4: public.users.id: hash() cannot mask a column of type int4");
	assert_int_equal(s->n_problems, 3); /* once per rule and type, not again for public.kids.id */
	expect_masks(s, 1000, "email", "email:copy");
	expect_masks(s, 1000, "id", "id:copy");
	assert_false(col_of(s, 1000, "id")->masks[0].type_ok);
	assert_false(col_of(s, 1002, "id")->masks[0].type_ok);
	assert_true(col_of(s, 1000, "salary")->masks[0].type_ok);
	assert_true(col_of(s, 1000, "name")->masks[0].type_ok);
	expect_masks(s, 1002, "name", "name:copy");
	catalog_snap_unref(s);
}

/* "rules/x.rules:2,...": the broken rules of relation oid, by where, in order. */
static void expect_broken(const CatSnap *s, uint32_t oid, const char *want)
{
	const CatRel *r = catalog_rel(s, oid);
	char got[512] = "";

	assert_non_null(r);
	for (int i = 0; i < r->n_broken; i++) {
		size_t l = strlen(got);

		snprintf(got + l, sizeof(got) - l, "%s%s", i > 0 ? "," : "", r->broken[i]->where);
	}
	if (strcmp(got, want) != 0)
		fail_msg("relation %u: broken rules \"%s\", expected \"%s\"", oid, got, want);
}

/*
 * A rule naming a column its relation no longer has (the DBA renamed it)
 * fails closed: the relation, its partitions at any depth, its ancestors and
 * the views reading any of them (views of views too) list the rule; a
 * sibling partition and an unrelated view do not.
 */
static void test_broken_rules(void **state)
{
	CatSnap *s = snap_of("MASK public.ren.email USING redact();\n"
			     "MASK public.users.email USING email();\n"
			     "MASK public.ren.ssn USING null() FOR GROUP agents;\n");

	(void)state;
	add_users(s);
	add_rel(s, 3000, "public", "top", 'p', NULL, "id", "mail", "ssn", NULL);
	add_rel(s, 3001, "public", "ren", 'p', NULL, "id", "mail", "ssn", NULL);
	add_rel(s, 3002, "public", "ren_a", 'r', NULL, "id", "mail", "ssn", NULL);
	add_rel(s, 3003, "public", "sibling", 'r', NULL, "id", "mail", "ssn", NULL);
	assert_true(catalog_snap_add_parent(s, 3001, 3000));
	assert_true(catalog_snap_add_parent(s, 3002, 3001));
	assert_true(catalog_snap_add_parent(s, 3003, 3000));
	add_rel(s, 3004, "public", "v_ren", 'v', " SELECT ren.id\n   FROM public.ren;", "id", NULL);
	add_rel(s, 3005, "public", "v_v", 'v', " SELECT v_ren.id\n   FROM public.v_ren;", "id", NULL);
	add_rel(s, 3006, "public", "v_users", 'v', " SELECT users.id\n   FROM public.users;", "id", NULL);
	add_rel(s, 3007, "public", "v_kid", 'm', " SELECT ren_a.mail\n   FROM public.ren_a;", "mail", NULL);
	assert_true(catalog_snap_finish(s));
	expect_problem(s, "rules/x.rules:1: MASK public.ren.email: no such column (reading public.ren is refused");
	expect_broken(s, 3001, "rules/x.rules:1");
	expect_broken(s, 3002, "rules/x.rules:1");
	expect_broken(s, 3000, "rules/x.rules:1");
	expect_broken(s, 3003, "");
	expect_broken(s, 3004, "rules/x.rules:1");
	expect_broken(s, 3005, "rules/x.rules:1");
	expect_broken(s, 3006, "");
	expect_broken(s, 3007, "rules/x.rules:1");
	expect_broken(s, 1000, "");
	/* the rule that still fits keeps masking as before */
	expect_masks(s, 3001, "ssn", "ssn:copy");
	expect_masks(s, 3002, "ssn", "ssn:copy");
	expect_masks(s, 3003, "ssn", "");
	catalog_snap_unref(s);

	/* the only mask rule broken: views are still followed */
	s = snap_of("MASK public.ren.email USING redact();\n");
	add_rel(s, 3001, "public", "ren", 'r', NULL, "id", "mail", NULL);
	add_rel(s, 3004, "public", "v_ren", 'v', " SELECT ren.id\n   FROM public.ren;", "id", NULL);
	assert_true(catalog_snap_finish(s));
	expect_broken(s, 3001, "rules/x.rules:1");
	expect_broken(s, 3004, "rules/x.rules:1");
	catalog_snap_unref(s);
}

/* Marks column `name` of relation oid generated by `expr`. */
static void set_generated(CatSnap *s, uint32_t oid, const char *name, const char *expr)
{
	assert_true(catalog_snap_set_generated(s, oid, catalog_attnum(catalog_rel(s, oid), name), expr));
}

/*
 * Generated columns count like view columns: a plain copy of a masked
 * column is masked by its rule, anything computed from one is derived, an
 * expression that calls user code or is not known fails closed; views
 * reading a generated column follow it, and so do partitions (each with its
 * own expression).
 */
static void test_generated_columns(void **state)
{
	CatSnap *s = snap_of("MASK public.g.email USING email();\n"
			     "MASK public.users.email USING email();\n"
			     "MASK \"we\"\"ird\".\"T\".\"e-mail\" USING redact();\n");

	(void)state;
	add_users(s);
	add_rel(s, 4000, "public", "g", 'p', NULL, "id", "email", "norm", "copy", "both", "plain", "odd", "unknown",
		NULL);
	set_generated(s, 4000, "norm", "lower(email)");
	set_generated(s, 4000, "copy", "email");
	set_generated(s, 4000, "both", "((email || '/'::text) || (id)::text)");
	set_generated(s, 4000, "plain", "(id + 1)");
	set_generated(s, 4000, "odd", "public.my_fmt(email)");
	set_generated(s, 4000, "unknown", NULL);
	add_rel(s, 4001, "public", "g_2024", 'r', NULL, "id", "email", "norm", NULL);
	assert_true(catalog_snap_add_parent(s, 4001, 4000));
	set_generated(s, 4001, "norm", "upper(email)");
	add_rel(s, 4002, "public", "v_g", 'v', " SELECT g.copy,\n    g.norm\n   FROM public.g;", "copy", "norm", NULL);
	add_rel(s, 4003, "we\"ird", "T", 'r', NULL, "id", "e-mail", "c", NULL);
	set_generated(s, 4003, "c", "\"e-mail\"");
	assert_true(catalog_snap_add_function(s, "public", "my_fmt"));
	assert_true(catalog_snap_finish(s));
	assert_true(col_of(s, 4000, "norm")->generated);
	assert_false(col_of(s, 4000, "email")->generated);
	expect_masks(s, 4000, "norm", "email:derived");
	expect_masks(s, 4000, "copy", "email:copy");
	expect_masks(s, 4000, "both", "email:derived");
	expect_masks(s, 4000, "plain", "");
	expect_masks(s, 4000, "odd", "email:derived,email:derived,e-mail:derived"); /* user code: every masked column */
	expect_problem(s, "generated column public.g.odd: it calls public.my_fmt, which is not built in");
	expect_masks(s, 4000, "unknown", "email:derived");
	expect_problem(s, "generated column public.g.unknown: its expression is not known");
	expect_masks(s, 4001, "norm", "email:derived");
	expect_masks(s, 4002, "copy", "email:copy");
	expect_masks(s, 4002, "norm", "email:derived");
	expect_masks(s, 4003, "c", "e-mail:copy");
	catalog_snap_unref(s);

	/* set on an unknown relation or column: ignored; on a finished snapshot: refused */
	s = snap_of(NULL);
	add_rel(s, 4000, "public", "g", 'r', NULL, "id", NULL);
	assert_true(catalog_snap_set_generated(s, 4999, 1, "1"));
	assert_true(catalog_snap_set_generated(s, 4000, 7, "1"));
	assert_true(catalog_snap_finish(s));
	assert_false(catalog_snap_set_generated(s, 4000, 1, "1"));
	catalog_snap_unref(s);
}

/* ---- callers ----------------------------------------------------------------------- */

static void test_callers(void **state)
{
	CatSnap *s = snap_of("MASK public.users.email USING email() FOR GROUP agents;\n"
			     "MASK public.users.email USING redact();\n"
			     "MASK public.users.ssn USING redact() UNLESS GROUP hr, audit;\n"
			     "MASK public.users.salary USING null() FOR AGENT 'bot-1' UNLESS GROUP hr;\n");
	Identity agent = ident("a-1", "agents"), hr = ident("h-1", "hr"), bot = ident("bot-1", "hr,x"),
		 plain = ident("p-1", "x");
	const CatColumn *email, *ssn, *salary, *lemail;
	const CatMask *m;
	bool derived;

	(void)state;
	add_users(s);
	add_rel(s, 3000, "public", "v_users", 'v', v_users_def, "id", "email", "upper", "lemail", "dbl", NULL);
	assert_true(catalog_snap_finish(s));
	email = col_of(s, 1000, "email");
	ssn = col_of(s, 1000, "ssn");
	salary = col_of(s, 1000, "salary");
	lemail = col_of(s, 3000, "lemail");

	/* the first rule that applies is used */
	m = catalog_mask_for(email, &agent, &derived);
	assert_non_null(m);
	assert_int_equal(m->rule->mask_fn, MASK_EMAIL);
	assert_false(derived);
	m = catalog_mask_for(email, &hr, &derived);
	assert_int_equal(m->rule->mask_fn, MASK_REDACT);
	assert_null(catalog_mask_for(ssn, &hr, &derived));
	assert_false(derived);
	assert_non_null(catalog_mask_for(ssn, &plain, &derived));
	assert_null(catalog_mask_for(salary, &bot, &derived)); /* FOR matches, UNLESS exempts */
	assert_null(catalog_mask_for(salary, &agent, &derived));
	assert_non_null(catalog_mask_for(salary, &(Identity){ "bot-1", NULL, 0, 0 }, &derived));
	assert_null(catalog_mask_for(NULL, &agent, &derived));

	/* a computed view column: no mask to apply, but a derived use */
	assert_null(catalog_mask_for(lemail, &agent, &derived));
	assert_true(derived);
	assert_null(catalog_mask_for(col_of(s, 3000, "dbl"), &agent, &derived));
	assert_false(derived); /* the salary rule does not apply to agents */
	assert_null(catalog_mask_for(col_of(s, 3000, "dbl"), &(Identity){ "bot-1", NULL, 0, 0 }, &derived));
	assert_true(derived);

	/* NULL identity: only rules without FOR apply, UNLESS exempts nobody */
	assert_int_equal(catalog_mask_for(email, NULL, &derived)->rule->mask_fn, MASK_REDACT);
	assert_non_null(catalog_mask_for(ssn, NULL, &derived));

	assert_true(catalog_mask_applies(&s->rules->rules[0], &agent));
	assert_false(catalog_mask_applies(&s->rules->rules[0], &hr));
	assert_false(catalog_mask_applies(&s->rules->rules[2], &hr));
	assert_true(catalog_mask_applies(&s->rules->rules[2], &plain));
	assert_false(catalog_mask_applies(NULL, &plain));

	assert_true(catalog_caller_has_masks(s->rules, &hr)); /* the second email rule applies to all */
	assert_false(catalog_caller_has_masks(NULL, &hr));
	catalog_snap_unref(s);
}

static void test_caller_has_masks(void **state)
{
	RuleSet *rs = rules_of("BLOCK DDL;\n"
			       "MASK public.users.email USING email() FOR GROUP agents;\n"
			       "MASK public.users.ssn USING redact() UNLESS GROUP hr;\n");
	Identity agent = ident("a-1", "agents"), hr = ident("h-1", "hr"), both = ident("b-1", "agents,hr"),
		 plain = ident("p-1", "x");

	(void)state;
	assert_true(catalog_caller_has_masks(rs, &agent));
	assert_false(catalog_caller_has_masks(rs, &hr));
	assert_true(catalog_caller_has_masks(rs, &both));
	assert_true(catalog_caller_has_masks(rs, &plain));
	assert_false(catalog_mask_applies(&rs->rules[0], &plain)); /* not a mask rule */
	rules_unref(rs);
	rs = rules_of("ALLOW READ;\n");
	assert_false(catalog_caller_has_masks(rs, &plain));
	rules_unref(rs);
}

/* ---- allocation failures ------------------------------------------------------------ */

/* Builds a snapshot with every kind of reach; false at the first call that fails. */
static bool build_all(CatSnap *s)
{
	return catalog_snap_add_rel(s, 1000, "public", "users", 'r', NULL) &&
	       catalog_snap_add_column(s, 1000, 1, "id", INT4, -1) &&
	       catalog_snap_add_column(s, 1000, 2, "email", TEXT, -1) &&
	       catalog_snap_add_column(s, 1000, 3, "ssn", TEXT, -1) &&
	       catalog_snap_add_column(s, 1000, 4, "mail_lc", TEXT, -1) &&
	       catalog_snap_set_generated(s, 1000, 4, "pg_catalog.lower(email)") &&
	       catalog_snap_add_column(s, 1000, 5, "mail_x", TEXT, -1) &&
	       catalog_snap_set_generated(s, 1000, 5, "util.fmt(email)") &&
	       catalog_snap_add_rel(s, 1001, "public", "kids", 'r', NULL) &&
	       catalog_snap_add_column(s, 1001, 2, "email", TEXT, -1) &&
	       catalog_snap_add_column(s, 1001, 1, "id", INT4, -1) &&
	       catalog_snap_add_parent(s, 1001, 1000) &&
	       catalog_snap_add_rel(s, 1002, "public", "v", 'v', " SELECT u.id,\n    u.email\n   FROM public.users u;") &&
	       catalog_snap_add_column(s, 1002, 1, "id", INT4, -1) &&
	       catalog_snap_add_column(s, 1002, 2, "email", TEXT, -1) &&
	       catalog_snap_add_rel(s, 1003, "public", "vbad", 'v', "SELEKT") &&
	       catalog_snap_add_column(s, 1003, 1, "a", TEXT, -1) &&
	       catalog_snap_add_rel(s, 1004, "public", "vv", 'v', " SELECT v.email\n   FROM public.v;") &&
	       catalog_snap_add_column(s, 1004, 1, "email", TEXT, -1) &&
	       catalog_snap_add_function(s, "public", "lower") && catalog_snap_add_function(s, "util", "lower") &&
	       catalog_snap_add_function(s, "util", "fmt") && catalog_snap_finish(s);
}

/* Every allocation fails in turn: each call reports it, nothing crashes or leaks (ASan). */
static void test_out_of_memory(void **state)
{
	RuleSet *rs = rules_of("MASK public.users.email USING email();\n"
			       "MASK public.users.ssn USING hash();\n"
			       "MASK public.users.nope USING null();\n");
	CatSnap *s;
	int k, ok_runs = 0;
	bool built;

	(void)state;
	sqlinfo_set_cache_capacity(0);
	for (k = 0; k < 10000; k++) {
		allocfail_happened = false;
		allocfail_countdown = k;
		s = catalog_snap_new("app", rs, 1);
		built = s != NULL && build_all(s);
		allocfail_countdown = -1;
		if (built) {
			expect_masks(s, 1004, "email", "email:copy");
			expect_masks(s, 1001, "email", "email:copy");
			assert_int_equal(catalog_resolve_function(s, "lower", NULL, NULL), CAT_FN_SHADOWED);
			ok_runs++;
		}
		catalog_snap_unref(s);
		if (!allocfail_happened)
			break;
	}
	assert_true(k > 20);          /* there were allocations to fail */
	assert_int_equal(ok_runs, 1); /* only the run without a failure builds */
	s = catalog_snap_failed("app", 1, "x");
	assert_non_null(s);
	catalog_snap_unref(s);
	allocfail_countdown = 0;
	assert_null(catalog_snap_failed("app", 1, "x"));
	allocfail_countdown = -1;
	rules_unref(rs);
	sqlinfo_set_cache_capacity(4096);
	sqlinfo_thread_cleanup();
}

/* ---- scale -------------------------------------------------------------------------- */

#define BIG_TABLES 12000
#define BIG_PARTS 4000
#define BIG_VIEWS 4000

static void test_many_relations(void **state)
{
	CatSnap *s = snap_of("MASK public.big.secret USING redact();\n"
			     "MASK s7.t7.c2 USING null();\n");
	char schema[32], name[32], def[256], col[16];
	struct timespec t0, t1;
	const CatRel *out[4];
	uint32_t oid = 100000;
	double secs;

	(void)state;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	/* tables in 100 schemas, with ten columns each */
	for (int i = 0; i < BIG_TABLES; i++, oid++) {
		snprintf(schema, sizeof(schema), "s%d", i % 100);
		snprintf(name, sizeof(name), "t%d", i);
		assert_true(catalog_snap_add_rel(s, oid, schema, name, 'r', NULL));
		for (int c = 1; c <= 10; c++) {
			snprintf(col, sizeof(col), "c%d", c);
			assert_true(catalog_snap_add_column(s, oid, c, col, TEXT, -1));
		}
	}
	/* a partitioned table with 4000 partitions in a chain of two levels */
	assert_true(catalog_snap_add_rel(s, 1, "public", "big", 'p', NULL));
	assert_true(catalog_snap_add_column(s, 1, 1, "id", INT4, -1));
	assert_true(catalog_snap_add_column(s, 1, 2, "secret", TEXT, -1));
	for (int i = 0; i < BIG_PARTS; i++, oid++) {
		snprintf(name, sizeof(name), "big_%d", i);
		assert_true(catalog_snap_add_rel(s, oid, "public", name, i % 100 == 0 ? 'p' : 'r', NULL));
		assert_true(catalog_snap_add_column(s, oid, 1, "id", INT4, -1));
		assert_true(catalog_snap_add_column(s, oid, 2, "secret", TEXT, -1));
		assert_true(catalog_snap_add_parent(s, oid, i % 100 == 0 ? 1 : oid - (uint32_t)(i % 100)));
	}
	/* views in a chain, each reading the previous one (added last to first) */
	for (int i = BIG_VIEWS - 1; i >= 0; i--) {
		snprintf(name, sizeof(name), "v%d", i);
		if (i == 0)
			snprintf(def, sizeof(def), " SELECT big_1.secret AS x,\n    big_1.id\n   FROM public.big_1;");
		else
			snprintf(def, sizeof(def), " SELECT v%d.x,\n    v%d.id\n   FROM public.v%d;", i - 1, i - 1,
				 i - 1);
		assert_true(catalog_snap_add_rel(s, 900000 + (uint32_t)i, "public", name, 'v', def));
		assert_true(catalog_snap_add_column(s, 900000 + (uint32_t)i, 1, "x", TEXT, -1));
		assert_true(catalog_snap_add_column(s, 900000 + (uint32_t)i, 2, "id", INT4, -1));
	}
	assert_true(catalog_snap_finish(s));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	print_message("%d relations built and finished in %.3f s\n", s->n_rels, secs);
	assert_int_equal(s->n_rels, BIG_TABLES + 1 + BIG_PARTS + BIG_VIEWS);
	assert_true(secs < 20.0); /* under ASan on a busy machine; well under a second without */
	assert_int_equal(s->n_problems, 0);

	expect_masks(s, 1, "secret", "secret:copy");
	expect_masks(s, 100000 + BIG_TABLES + BIG_PARTS - 1, "secret", "secret:copy");
	expect_masks(s, 900000 + BIG_VIEWS - 1, "x", "secret:copy");
	expect_masks(s, 900000 + BIG_VIEWS - 1, "id", "");
	expect_masks(s, 100007, "c2", "c2:copy");
	expect_masks(s, 100107, "c2", "");
	assert_int_equal(catalog_find_rels(s, NULL, "t4321", out, 4), 1);
	assert_string_equal(out[0]->schema, "s21");
	assert_int_equal(catalog_find_rels(s, "s21", "t4321", out, 4), 1);
	assert_int_equal(catalog_find_rels(s, "s22", "t4321", out, 4), 0);
	assert_non_null(catalog_rel(s, 100000 + 4321));
	catalog_snap_unref(s);
}

/*
 * One schema per tenant: every schema has a table of the same name and a
 * view reading it. A schema-qualified lookup (view sources, statements)
 * finds its relation without walking every relation of that name.
 */
#define TENANTS 20000

static void test_tenant_schemas(void **state)
{
	CatSnap *s = snap_of("MASK t77.users.email USING email();\n");
	char schema[32], def[256];
	struct timespec t0, t1;
	const CatRel *out[2];
	uint32_t oid = 100000;
	double secs;

	(void)state;
	for (int i = 0; i < TENANTS; i++) {
		snprintf(schema, sizeof(schema), "t%d", i);
		snprintf(def, sizeof(def), " SELECT users.id,\n    users.email\n   FROM %s.users;", schema);
		add_rel(s, oid++, schema, "users", 'r', NULL, "id", "email", NULL);
		add_rel(s, oid++, schema, "v", 'v', def, "id", "email", NULL);
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	assert_true(catalog_snap_finish(s));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	print_message("%d tenant schemas finished in %.3f s\n", TENANTS, secs);
	assert_int_equal(s->n_problems, 0);
	expect_masks(s, 100000 + 2 * 77, "email", "email:copy");
	expect_masks(s, 100000 + 2 * 77 + 1, "email", "email:copy");
	expect_masks(s, 100000 + 2 * 78 + 1, "email", "");
	assert_int_equal(catalog_find_rels(s, "t77", "users", out, 2), 1);
	assert_int_equal(out[0]->oid, 100000 + 2 * 77);
	assert_int_equal(catalog_find_rels(s, "t7", "users", out, 2), 1);
	assert_int_equal(out[0]->oid, 100000 + 2 * 7);
	assert_int_equal(catalog_find_rels(s, "t", "users", out, 2), 0);
	assert_int_equal(catalog_find_rels(s, "t77", "user", out, 2), 0);
	assert_int_equal(catalog_find_rels(s, NULL, "users", out, 2), TENANTS);
	/* qualified lookups, as every statement makes them: a few thousand take no time */
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int i = 0; i < 5000; i++) {
		snprintf(schema, sizeof(schema), "t%d", (i * 7919) % TENANTS);
		assert_int_equal(catalog_find_rels(s, schema, "users", out, 1), 1);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	secs += (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	print_message("and 5000 qualified lookups: %.3f s in all\n", secs);
	assert_true(secs < 10.0); /* under ASan on a busy machine; well under a second without */
	catalog_snap_unref(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lookups),
		cmocka_unit_test(test_refcount_and_failed),
		cmocka_unit_test(test_table_masks),
		cmocka_unit_test(test_partitions),
		cmocka_unit_test(test_inheritance),
		cmocka_unit_test(test_views),
		cmocka_unit_test(test_views_any_order),
		cmocka_unit_test(test_copy_and_derived),
		cmocka_unit_test(test_view_cannot_be_analysed),
		cmocka_unit_test(test_user_functions),
		cmocka_unit_test(test_views_and_user_functions),
		cmocka_unit_test(test_rule_problems),
		cmocka_unit_test(test_broken_rules),
		cmocka_unit_test(test_generated_columns),
		cmocka_unit_test(test_callers),
		cmocka_unit_test(test_caller_has_masks),
		cmocka_unit_test(test_out_of_memory),
		cmocka_unit_test(test_many_relations),
		cmocka_unit_test(test_tenant_schemas),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
