/* SPDX-License-Identifier: MIT */
/*
 * The masking side of statement policy: whether a statement may run for a
 * caller with masked columns, from its analysis (sqlinfo's column lineage,
 * parts, functions and tables) and a catalog snapshot (which masks reach
 * which columns). It owns the security model's statement rules
 * (ARCHITECTURE "Masking: the security model"): a masked column may flow
 * unchanged into a result column, where the result masks it, and nowhere
 * else (a plain comparison in a condition when mask_predicates = allow); no
 * expression may compute on it, even one whose result goes nowhere; a
 * column computed from a masked column may not be read at all; and paths
 * that carry data out of reach of the masks are closed to callers with
 * masks. Pure functions over immutable data: no I/O, no allocation.
 */
#include "pgveil/policy.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "pgveil/catalog.h"

/* One check in progress. */
typedef struct MaskCheck {
	const CatSnap *cat;
	const Identity *id;
	bool predicates_allow;
	MaskVerdict *out;
	const SqlStmt *st;         /* the statement being checked */
	bool no_generated;         /* it is a `COPY t TO`: its star reads no generated column */
	const CatRel *first_rel;   /* the first masked column it reads (for COPY's messages) */
	const CatColumn *first_col;
} MaskCheck;

static void block(MaskCheck *mc, const char *fmt, ...) PGV_PRINTF(2, 3);

/* Blocks the statement; the first reason found is the one reported. */
static void block(MaskCheck *mc, const char *fmt, ...)
{
	va_list ap;

	if (mc->out->blocked)
		return;
	mc->out->blocked = true;
	va_start(ap, fmt);
	vsnprintf(mc->out->why, sizeof(mc->out->why), fmt, ap);
	va_end(ap);
}

/* ---- columns ---------------------------------------------------------------------- */

/* True when source `src` of an output may be column c of rel. */
static bool source_is(const SqlColumn *src, const CatRel *rel, const CatColumn *c)
{
	if (strcmp(src->table, rel->name) != 0 || (src->schema != NULL && strcmp(src->schema, rel->schema) != 0))
		return false;
	return strcmp(src->column, SQL_COLUMN_ALL) == 0 || strcmp(src->column, c->name) == 0;
}

/*
 * A masked column used as OUTPUT: every output that reads it must be a
 * plain copy (the result masks it). Returns the 1-based output that is
 * not, 0 when all are copies, -1 when no output reads it.
 */
static int output_not_copy(const SqlStmt *st, const CatRel *rel, const CatColumn *c)
{
	int found = -1;

	for (int i = 0; i < st->n_outputs; i++) {
		const SqlOutput *o = &st->outputs[i];

		for (int k = 0; k < o->n_sources; k++) {
			if (!source_is(o->sources[k], rel, c))
				continue;
			if (o->kind != SQL_OUT_DIRECT)
				return i + 1;
			found = 0;
			break;
		}
	}
	return found;
}

/* The first derived mask of c that applies to the caller. */
static const Rule *derived_rule(const MaskCheck *mc, const CatColumn *c)
{
	for (int i = 0; i < c->n_masks; i++)
		if (c->masks[i].derived && catalog_mask_applies(c->masks[i].rule, mc->id))
			return c->masks[i].rule;
	return NULL;
}

/* A column masked for the caller (not through a view's computation) read in `ctx`. */
static void check_masked_use(MaskCheck *mc, const CatRel *rel, const CatColumn *c, unsigned ctx)
{
	const char *s = rel->schema, *t = rel->name, *n = c->name;
	int out = 0;

	if (ctx & SQL_USE_WRITE_SOURCE)
		block(mc, "column %s.%s.%s is masked: it cannot be copied into stored data", s, t, n);
	if (ctx & SQL_USE_WHOLE_ROW)
		block(mc, "column %s.%s.%s is masked: it cannot be read as part of a whole row", s, t, n);
	if (ctx & SQL_USE_FUNCTION_ARG)
		block(mc, "column %s.%s.%s is masked: it cannot be passed to a function", s, t, n);
	if ((ctx & SQL_USE_PREDICATE) && !mc->predicates_allow)
		block(mc, "column %s.%s.%s is masked: it cannot be used in a predicate (mask_predicates = block)", s,
		      t, n);
	if ((ctx & SQL_USE_OUTPUT) && (out = output_not_copy(mc->st, rel, c)) > 0)
		block(mc, "column %s.%s.%s is masked: it cannot be used in an expression (output %d)", s, t, n, out);
	else if ((ctx & SQL_USE_OUTPUT) && out < 0)
		block(mc, "column %s.%s.%s is masked: it flows into a result column pgveil cannot place", s, t, n);
	/* Wherever its result goes (nowhere: EXPLAIN ANALYZE, a CTE), the server computes it: a cast's or
	 * a function's error can show the value, a division by zero tells a comparison's outcome. */
	if (ctx & SQL_USE_EXPRESSION)
		block(mc, "column %s.%s.%s is masked: it cannot be used in an expression (a cast, an operator or a "
		      "function), even one whose result is not returned", s, t, n);
}

/* Column attnum of rel, read in contexts ctx. */
static void check_column(MaskCheck *mc, const CatRel *rel, int attnum, unsigned ctx)
{
	const CatColumn *c = &rel->columns[attnum - 1];
	const CatMask *m;
	const Rule *r;
	bool derived;

	if (c->name == NULL || c->n_masks == 0)
		return;
	m = catalog_mask_for(c, mc->id, &derived);
	if (m == NULL && !derived)
		return;
	mc->out->reads_masked = true;
	if (mc->first_col == NULL) {
		mc->first_rel = rel;
		mc->first_col = c;
	}
	/* Reading it at all may compute it (a CTE, EXPLAIN ANALYZE), even where the value goes nowhere. */
	if (derived && (r = derived_rule(mc, c)) != NULL)
		block(mc, "column %s.%s.%s is computed from masked column %s.%s.%s: it cannot be read", rel->schema,
		      rel->name, c->name, r->mask_schema, r->mask_table, r->mask_column);
	if (m != NULL && ctx != 0)
		check_masked_use(mc, rel, c, ctx);
}

static bool rel_masked_for(const MaskCheck *mc, const CatRel *rel);

/* System columns: a table's `t.xmin` is one, never a function call (views have none). */
static bool system_column(const CatRel *rel, const char *name)
{
	static const char *const names[] = { "ctid", "xmin", "xmax", "cmin", "cmax", "tableoid" };

	if (rel->kind == 'v')
		return false;
	for (size_t i = 0; i < PGV_ARRAY_LEN(names); i++)
		if (strcmp(name, names[i]) == 0)
			return true;
	return false;
}

/*
 * A bound reference (SqlColumnUse.bound) to `name`, which relation rel (with
 * masks) has no column of in the snapshot, and no other relation the
 * reference may mean has either. `t.f` is then PostgreSQL's notation for
 * the call f(t) on the whole row, or the column is newer than the snapshot
 * (added, or renamed: maybe away from a mask rule). Either way reading it
 * cannot be shown safe.
 */
static void check_unknown_column(MaskCheck *mc, const CatRel *rel, const char *name)
{
	if (!rel_masked_for(mc, rel))
		return;
	mc->out->reads_masked = true;
	if (sqlinfo_is_builtin_function(name) || catalog_user_function(mc->cat, NULL, name))
		block(mc, "%s is not a column of %s.%s: it calls function %s on whole rows of %s.%s, which has masked "
		      "columns", name, rel->schema, rel->name, name, rel->schema, rel->name);
	else
		block(mc, "column %s of %s.%s is not in pgveil's catalog, and %s.%s has masked columns: the column "
		      "was added or renamed since the catalog was read (refused until it is read again), or it "
		      "calls a function on whole rows", name, rel->schema, rel->name, rel->schema, rel->name);
}

/* True when a relation of run[0..n) that `col` may name has its column. */
static bool column_somewhere(const CatRel *const *run, int n, const SqlColumn *col)
{
	for (int i = 0; i < n; i++)
		if ((col->schema == NULL || strcmp(col->schema, run[i]->schema) == 0) &&
		    catalog_attnum(run[i], col->column) > 0)
			return true;
	return false;
}

/* True when the statement is a `COPY t TO`: its star reads no generated column (PostgreSQL leaves them out). */
static bool copy_without_generated(const SqlStmt *st)
{
	for (int i = 0; i < st->n_outputs; i++)
		if (!st->outputs[i].no_generated)
			return false;
	return st->n_outputs > 0;
}

/* A column the statement reads, by name: every relation it may be (an unqualified table: any schema). */
static void check_use(MaskCheck *mc, const SqlColumnUse *u)
{
	const SqlColumn *col = u->column;
	const CatRel *const *run;
	int n, a;

	run = catalog_rels_named(mc->cat, col->table, &n);
	for (int i = 0; i < n; i++) {
		const CatRel *rel = run[i];

		if (!rel->has_masks || (col->schema != NULL && strcmp(col->schema, rel->schema) != 0))
			continue;
		if (strcmp(col->column, SQL_COLUMN_ALL) == 0) {
			for (a = 1; a <= rel->n_columns; a++)
				if (!(mc->no_generated && rel->columns[a - 1].generated))
					check_column(mc, rel, a, u->contexts);
		} else if ((a = catalog_attnum(rel, col->column)) > 0) {
			check_column(mc, rel, a, u->contexts);
		} else if (u->bound && !system_column(rel, col->column) && !column_somewhere(run, n, col)) {
			check_unknown_column(mc, rel, col->column);
		}
	}
}

/*
 * Statement texts of other sessions: pgveil logs every session in as the
 * same server role, so pg_stat_activity.query (and pg_stat_statements')
 * shows what the application, or callers without masks, write and look up,
 * masked values as literals.
 */
static void check_query_text(MaskCheck *mc, const SqlColumnUse *u)
{
	const SqlColumn *col = u->column;
	bool activity = strcmp(col->table, "pg_stat_activity") == 0 &&
			(col->schema == NULL || strcmp(col->schema, "pg_catalog") == 0);

	if (!activity && strcmp(col->table, "pg_stat_statements") != 0)
		return;
	if (strcmp(col->column, "query") != 0 && strcmp(col->column, SQL_COLUMN_ALL) != 0)
		return;
	mc->out->reads_masked = true;
	block(mc, "%s.query shows the statements of other sessions, with the values they write or look up: it "
	      "cannot be read by callers with masked columns", col->table);
}

static void check_stmt(MaskCheck *mc, const SqlStmt *st)
{
	const char *s, *t, *n;

	mc->st = st;
	mc->no_generated = copy_without_generated(st);
	mc->first_rel = NULL;
	mc->first_col = NULL;
	for (int i = 0; i < st->n_columns; i++) {
		check_query_text(mc, &st->columns[i]);
		check_use(mc, &st->columns[i]);
	}
	if (mc->first_col == NULL)
		return;
	s = mc->first_rel->schema;
	t = mc->first_rel->name;
	n = mc->first_col->name;
	if (st->copy.format == SQL_COPY_BINARY)
		block(mc, "COPY TO STDOUT in binary format cannot be masked: it reads masked column %s.%s.%s", s, t, n);
	else if (st->copy.format != SQL_COPY_NONE && st->copy.unusual)
		block(mc, "COPY TO STDOUT with these options cannot be masked: it reads masked column %s.%s.%s", s, t,
		      n);
}

/* ---- what callers with masks may not do ------------------------------------------------ */

static const char *const lo_functions[] = {
	"loread", "lowrite", NULL,
};

/* Built-ins that run SQL given as text, or read whole tables, out of the analysis' sight. */
static const char *const sql_running[] = {
	"query_to_xml", "query_to_xml_and_xmlschema", "query_to_xmlschema",
	"table_to_xml", "table_to_xml_and_xmlschema", "table_to_xmlschema",
	"cursor_to_xml", "cursor_to_xmlschema",
	"schema_to_xml", "schema_to_xml_and_xmlschema", "schema_to_xmlschema",
	"database_to_xml", "database_to_xml_and_xmlschema", "database_to_xmlschema",
	"ts_stat", "ts_rewrite", NULL,
};

/*
 * Built-ins that return other sessions' statement texts (check_query_text);
 * pg_stat_statements() is an extension's, not built in: refused anyway.
 */
static const char *const query_text_functions[] = {
	"pg_stat_get_activity", "pg_stat_get_backend_activity", NULL,
};

/* Catalog tables and views that hold values of table columns (most common values, bounds). */
static const char *const stats_relations[] = {
	"pg_stats", "pg_stats_ext", "pg_stats_ext_exprs", "pg_statistic", "pg_statistic_ext_data", NULL,
};

static bool listed(const char *const *list, const char *name)
{
	for (; *list != NULL; list++)
		if (strcmp(*list, name) == 0)
			return true;
	return false;
}

/*
 * Whether a call of `name` (as the part names it) may run user code
 * (catalog_resolve_function); blocks when it may. Without a catalog no user
 * function is known: a built-in's name not qualified with pg_catalog may
 * then be one, and blocks too.
 */
static bool check_user_code(MaskCheck *mc, const char *name)
{
	const char *schema = NULL, *fn = NULL;
	char hint[160] = "";

	if (strchr(name, '.') == NULL)
		snprintf(hint, sizeof(hint), " (pg_catalog.%s is the built-in)", name);
	switch (catalog_resolve_function(mc->cat, name, &schema, &fn)) {
	case CAT_FN_NOT_BUILTIN:
		block(mc, "function %s is not built in and this caller has masked columns", name);
		return true;
	case CAT_FN_SHADOWED:
		block(mc, "function %s may not be the built-in: user-defined function %s.%s has the same name, and "
		      "this caller has masked columns%s", name, schema, fn, hint);
		return true;
	case CAT_FN_BUILTIN:
		break;
	}
	if (mc->cat->error == NULL || strchr(name, '.') != NULL)
		return false;
	block(mc, "function %s may not be the built-in: the catalog of database %s could not be read, so its "
	      "user-defined functions are not known%s", name, mc->cat->database, hint);
	return true;
}

/* Returns true when function `name` (as the part names it) blocks. */
static bool check_function(MaskCheck *mc, const char *name)
{
	const char *bare = strncmp(name, "pg_catalog.", 11) == 0 ? name + 11 : name;

	if (check_user_code(mc, name))
		return true;
	if (strncmp(bare, "lo_", 3) == 0 || listed(lo_functions, bare))
		block(mc, "large-object function %s is blocked for callers with masked columns: large objects are "
		      "not masked", name);
	else if (strcmp(bare, "pg_notify") == 0 || strcmp(bare, "set_config") == 0)
		block(mc, "function %s is blocked for callers with masked columns: it can carry data past the masks",
		      name);
	else if (listed(sql_running, bare))
		block(mc, "function %s runs SQL that pgveil cannot check, and this caller has masked columns", name);
	else if (listed(query_text_functions, bare))
		block(mc, "function %s returns the statements of other sessions, with the values they write or look "
		      "up: it cannot be called by callers with masked columns", name);
	else
		return false;
	return true;
}

/* True when a column of rel is masked for the caller. */
static bool rel_masked_for(const MaskCheck *mc, const CatRel *rel)
{
	bool derived;

	for (int a = 0; a < rel->n_columns; a++)
		if (rel->columns[a].n_masks > 0 &&
		    (catalog_mask_for(&rel->columns[a], mc->id, &derived) != NULL || derived))
			return true;
	return false;
}

/*
 * A MASK rule that applies to the caller names a column its relation no
 * longer has (renamed or dropped): rel (that relation, a partition, child,
 * ancestor or view of it) cannot be shown safe until the rule is fixed.
 */
static void check_broken(MaskCheck *mc, const CatRel *rel)
{
	for (int i = 0; i < rel->n_broken; i++) {
		const Rule *r = rel->broken[i];

		if (!catalog_mask_applies(r, mc->id))
			continue;
		mc->out->reads_masked = true;
		block(mc, "rule %s names %s.%s.%s, which %s.%s no longer has: reading %s.%s is refused until the rule "
		      "is fixed", r->where, r->mask_schema, r->mask_table, r->mask_column, r->mask_schema,
		      r->mask_table, rel->schema, rel->name);
		return;
	}
}

/*
 * A table of a part: catalog statistics, or DDL on a relation with masked
 * columns. Touching a relation with columns masked for the caller, even
 * without reading them, counts as reading masked data: the server's errors
 * can echo whole rows ("Failing row contains ...").
 */
static void check_part_table(MaskCheck *mc, const SqlPart *p, const SqlTable *t)
{
	const CatRel *const *run;
	int n;

	if (listed(stats_relations, t->name))
		block(mc, "%s holds values of table columns and cannot be read by callers with masked columns",
		      t->name);
	run = catalog_rels_named(mc->cat, t->name, &n);
	for (int i = 0; i < n; i++) {
		if (t->schema != NULL && strcmp(t->schema, run[i]->schema) != 0)
			continue;
		check_broken(mc, run[i]);
		if (!run[i]->has_masks)
			continue;
		if (!mc->out->reads_masked && rel_masked_for(mc, run[i]))
			mc->out->reads_masked = true;
		if (p->classes & SC_DDL)
			block(mc, "DDL on %s.%s, which has masked columns, is blocked for callers with masked columns",
			      run[i]->schema, run[i]->name);
	}
}

static void check_part(MaskCheck *mc, const SqlPart *p)
{
	bool found = false;

	for (int i = 0; i < p->n_functions; i++)
		found |= check_function(mc, p->functions[i]);
	if ((p->classes & SC_PROCEDURAL) && !found) {
		if (p->classes == SC_PROCEDURAL && p->n_functions == 0 && p->n_tables == 0)
			block(mc, "DO blocks cannot run for callers with masked columns");
		else
			block(mc, "the statement runs code that is not built in (an operator or a procedure), and this "
			      "caller has masked columns");
	}
	/* ALTER SCHEMA ... RENAME, COMMENT, CREATE OPERATOR ...: what it changes is not known (a renamed
	 * schema would take its tables out of reach of the rules naming them). */
	if ((p->classes & SC_DDL) && p->n_tables == 0)
		block(mc, "DDL that names no table is blocked for callers with masked columns: pgveil cannot tell "
		      "what it changes");
	for (int i = 0; i < p->n_tables; i++)
		check_part_table(mc, p, &p->tables[i]);
}

/*
 * CREATE TABLE AS EXECUTE: the rows of a prepared statement go into a
 * table, unmasked. The body was checked as a query whose results are
 * masked; what it stores is out of the analysis' sight here.
 */
static void check_stored_execute(MaskCheck *mc, const StmtInfo *info)
{
	for (int i = 0; i < info->n_prep; i++) {
		const SqlPrepRef *ref = &info->prep[i];
		int stmt;

		if (ref->op != SQL_PREP_EXECUTE || ref->part_first < 0 || ref->part_first >= info->n_parts)
			continue;
		stmt = info->parts[ref->part_first].stmt;
		for (int k = 0; k < info->n_parts; k++)
			if (info->parts[k].stmt == stmt && (info->parts[k].classes & SC_DDL))
				block(mc, "CREATE TABLE AS EXECUTE stores the rows of prepared statement %s, which pgveil "
				      "cannot check, and this caller has masked columns: run EXECUTE %s, or CREATE TABLE "
				      "AS with the query itself", ref->name, ref->name);
	}
}

/* Without a catalog (it could not be read) nothing that reads a table can be shown safe. */
static void check_without_catalog(MaskCheck *mc, const StmtInfo *info)
{
	for (int i = 0; i < info->n_stmts; i++)
		if (info->stmts[i].n_columns > 0)
			goto fail;
	for (int i = 0; i < info->n_parts; i++)
		if (info->parts[i].n_tables > 0)
			goto fail;
	return;
fail:
	mc->out->reads_masked = true;
	block(mc, "masked columns cannot be checked: the catalog of database %s could not be read (%s)",
	      mc->cat->database, mc->cat->error);
}

void policy_mask_check(const StmtInfo *info, const struct CatSnap *cat, const Identity *id, bool predicates_allow,
		       MaskVerdict *out)
{
	MaskCheck mc = { cat, id, predicates_allow, out, NULL, false, NULL, NULL };

	out->blocked = false;
	out->why[0] = '\0';
	out->reads_masked = false;
	if (info == NULL || cat == NULL)
		return;
	if (cat->error == NULL && !catalog_caller_has_masks(cat->rules, id))
		return;
	if (info->error != NULL) {
		block(&mc, "the statement cannot be analysed, and this caller has masked columns");
		return;
	}
	if (cat->error != NULL)
		check_without_catalog(&mc, info);
	else
		for (int i = 0; i < info->n_stmts; i++)
			check_stmt(&mc, &info->stmts[i]);
	for (int i = 0; i < info->n_parts; i++)
		check_part(&mc, &info->parts[i]);
	check_stored_execute(&mc, info);
}
