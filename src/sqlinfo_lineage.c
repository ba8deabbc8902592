/* SPDX-License-Identifier: MIT */
/*
 * Column lineage for the sqlinfo module: walks each top-level statement's
 * parse tree (as sqlinfo_json.c reads it) to find, without the catalog,
 * which source columns flow into each output column and which columns the
 * statement reads anywhere, and how. It owns the walk over statements,
 * clauses and expressions: the FROM clauses that make the scopes (tables,
 * aliases, joins, subqueries, CTEs, LATERAL, outer references), the output
 * names, and the per-statement outputs and column uses that sqlinfo.c copies
 * into StmtInfo. The scopes themselves, and the rules that resolve a column
 * reference to the relations it may come from, are sqlinfo_scope.c's.
 *
 * The model (fail closed: when in doubt, more sources and more contexts):
 *
 * - A column reference resolves through the scopes from the innermost
 *   query outwards. `t.c` / `s.t.c` names its relation (an alias hides the
 *   table's own name); a name that is no relation in scope is taken as a
 *   composite column `t` (DERIVED). An unqualified `c` is recorded against
 *   every relation of the innermost scope that may hold it; a base table
 *   may always hold it (the analysis does not know its columns), so the
 *   search goes on outwards and every table of every enclosing scope is a
 *   candidate too. It stops at a scope where a subquery, CTE or function in
 *   FROM has a column of that name for sure. A name nothing may hold falls
 *   back to whole rows of every relation in scope. A bare name that is also
 *   a relation in scope counts as that relation's whole row as well.
 * - A subquery, CTE or function in FROM is a derived relation whose columns
 *   carry their own lineage: a reference to one of them is a reference to
 *   its sources. Its column names are the server's (FigureColname rules,
 *   aliases, column alias lists); a column without a known name matches
 *   every name; an alias list the analysis cannot line up (after a `*`)
 *   makes every reference to the relation read all its sources, DERIVED.
 *   A base table with a column alias list: a renamed column is "*".
 * - Recursive CTEs: references inside a WITH RECURSIVE go to one
 *   placeholder column; once the clause is done, the placeholder stands for
 *   every source of every CTE of the clause, and its uses' contexts go to
 *   all of them.
 * - An output is DIRECT only when it is a plain column reference (through
 *   subqueries, CTEs, joins and aliases) to columns that are themselves
 *   DIRECT: what the server's RowDescription names. Casts, COLLATE,
 *   functions, operators, whole rows, VALUES, functions in FROM, merged
 *   columns of FULL JOIN USING / NATURAL FULL JOIN and every set operation
 *   (UNION, INTERSECT, EXCEPT, whatever their branches) are DERIVED: the
 *   server gives such results no origin. Output i of a set operation merges
 *   output i of every branch; when a branch has a star or the branches'
 *   counts differ, the result is one DERIVED star reading all their sources.
 * - `*` and `t.*` in a select list expand to the columns of each relation:
 *   a derived relation's known columns, a base table's one DIRECT star
 *   output (t, "*").
 * - Contexts: see SQL_USE_* in sqlinfo.h. A derived relation's select list
 *   is recorded when it is walked (with the contexts of its expression, 0
 *   for a plain reference) and again, with the outer contexts, wherever the
 *   outer query reads its columns. ORDER BY, GROUP BY and DISTINCT ON
 *   items that name an output column or give a position are PREDICATE for
 *   that output's sources and are also resolved as input expressions.
 * - A use is bound (SqlColumnUse.bound) when a reference names its base
 *   table for sure: `t.c` with t a table (or its alias), `s.c` with s a
 *   subquery or CTE whose only column that may be c is a DIRECT `*` of one
 *   table, an unqualified `c` that no other relation in scope may hold
 *   (and that is no output name ORDER BY / GROUP BY may mean, nor a
 *   relation's name), COPY's column list, JOIN USING.
 * - Bodies that only run later or not at all (EXPLAIN without ANALYZE,
 *   CREATE VIEW) are walked without OUTPUT. A statement the walker does not
 *   model has its column references resolved against its `relation` and
 *   recorded as PREDICATE | WRITE_SOURCE.
 */
#include "sqlinfo_lineage_int.h"

#include <stdlib.h>
#include <string.h>

#define MAX_SPLIT_VALUES 64      /* VALUES wider than this: every column reads every source */

/* ---- expressions ------------------------------------------------------------------ */

static LRange q_select(Lin *l, const JNode *sel, unsigned out_ctx);
static LRange q_stmt(Lin *l, const char *type, const JNode *body, unsigned out_ctx);
static void expr(Lin *l, const JNode *n, unsigned ctx);
static const char *last_field(const JNode *list);

static bool is_leaf(const char *t)
{
	switch (t[0]) {
	case 'S': return strcmp(t, "String") == 0 || strcmp(t, "SQLValueFunction") == 0;
	case 'I': return strcmp(t, "Integer") == 0;
	case 'A': return strcmp(t, "A_Const") == 0 || strcmp(t, "A_Star") == 0;
	case 'P': return strcmp(t, "ParamRef") == 0;
	case 'F': return strcmp(t, "Float") == 0;
	case 'B': return strcmp(t, "Boolean") == 0 || strcmp(t, "BitString") == 0;
	case 'T': return strcmp(t, "TypeName") == 0;
	default: return false;
	}
}

/* The context of a value that is no longer a condition. */
static unsigned value_ctx(unsigned ctx)
{
	return ctx & ~LIN_COND;
}

/* The context of the operands of an expression (a cast, an operator, a function...). */
static unsigned operand_ctx(unsigned ctx)
{
	return value_ctx(ctx) | SQL_USE_EXPRESSION;
}

/* A WindowDef: PARTITION BY / ORDER BY decide the result; `OVER w` brings in w. */
static void expr_window(Lin *l, const JNode *def, unsigned ctx)
{
	const char *ref = j_str(def, "refname") != NULL ? j_str(def, "refname") : j_str(def, "name");
	const JNode *w, *body;

	expr(l, j_get(def, "partitionClause"), ctx | SQL_USE_PREDICATE);
	expr(l, j_get(def, "orderClause"), ctx | SQL_USE_PREDICATE);
	expr(l, j_get(def, "startOffset"), ctx | SQL_USE_PREDICATE);
	expr(l, j_get(def, "endOffset"), ctx | SQL_USE_PREDICATE);
	if (ref == NULL)
		return;
	for (w = j_first(l->windows); w != NULL && lin_work(l, 1); w = j_next(w))
		if (j_type(w, &body) != NULL && lin_str_eq(j_str(body, "name"), ref) && body != def) {
			expr(l, j_get(body, "partitionClause"), ctx | SQL_USE_PREDICATE);
			expr(l, j_get(body, "orderClause"), ctx | SQL_USE_PREDICATE);
		}
}

/* A function call (ctx: a value's): its arguments are computed on; FILTER is a condition. */
static void expr_funccall(Lin *l, const JNode *call, unsigned ctx)
{
	unsigned arg = ctx | SQL_USE_FUNCTION_ARG | SQL_USE_EXPRESSION;

	expr(l, j_get(call, "args"), arg);
	expr(l, j_get(call, "agg_order"), arg | SQL_USE_PREDICATE);
	expr(l, j_get(call, "agg_filter"), ctx | SQL_USE_PREDICATE | LIN_COND);
	if (j_get(call, "over") != NULL)
		expr_window(l, j_get(call, "over"), ctx);
}

/*
 * An operand of a comparison in a condition: a plain column (or a row or a
 * list of them) is compared as it is; anything else is an expression.
 */
static void cmp_operand(Lin *l, const JNode *n, unsigned ctx)
{
	const JNode *body, *e;
	const char *type = j_type(n, &body);

	if (n != NULL && n->type == J_ARR) {
		for (e = j_first(n); e != NULL; e = j_next(e))
			cmp_operand(l, e, ctx);
		return;
	}
	if (type != NULL && (strcmp(type, "RowExpr") == 0 || strcmp(type, "List") == 0)) {
		for (e = j_first(j_get(body, type[0] == 'R' ? "args" : "items")); e != NULL; e = j_next(e))
			cmp_operand(l, e, ctx);
		return;
	}
	expr(l, n, ctx);
}

/* The operands of a comparison in a condition (its members). */
static void cmp_operands(Lin *l, const JNode *cmp, unsigned ctx)
{
	const JNode *m;

	for (m = j_first(cmp); m != NULL; m = j_next(m))
		if (m->type == J_OBJ || m->type == J_ARR)
			cmp_operand(l, m, ctx);
}

/* CASE: WHEN conditions (or CASE x WHEN v: x compared with each v) decide; the results are values. */
static void expr_case(Lin *l, const JNode *c, unsigned ctx)
{
	const JNode *arg = j_get(c, "arg"), *w, *body;

	if (arg != NULL)
		cmp_operand(l, arg, ctx | SQL_USE_PREDICATE);
	for (w = j_first(j_get(c, "args")); w != NULL; w = j_next(w)) {
		if (j_type(w, &body) == NULL)
			continue;
		if (arg != NULL)
			cmp_operand(l, j_get(body, "expr"), ctx | SQL_USE_PREDICATE);
		else
			expr(l, j_get(body, "expr"), ctx | SQL_USE_PREDICATE | LIN_COND);
		expr(l, j_get(body, "result"), ctx);
	}
	expr(l, j_get(c, "defresult"), ctx);
}

/*
 * A subquery in an expression: its outputs flow into the expression (not
 * for EXISTS). IN / ANY / ALL / row comparisons compare, in a condition
 * plainly; ARRAY() builds a value from them.
 */
static void expr_sublink(Lin *l, const JNode *s, unsigned ctx)
{
	const char *kind = j_str(s, "subLinkType");
	const JNode *body;
	const char *type = j_type(j_get(s, "subselect"), &body);
	bool exists = lin_str_eq(kind, "EXISTS_SUBLINK"), cond = (ctx & LIN_COND) != 0;
	bool compare = kind == NULL || strcmp(kind, "ANY_SUBLINK") == 0 || strcmp(kind, "ALL_SUBLINK") == 0 ||
		       strcmp(kind, "ROWCOMPARE_SUBLINK") == 0;
	unsigned sub = value_ctx(ctx);
	LRange r;

	if (compare)
		sub |= SQL_USE_PREDICATE | (cond ? 0 : SQL_USE_EXPRESSION);
	else if (!lin_str_eq(kind, "EXPR_SUBLINK"))
		sub |= SQL_USE_EXPRESSION; /* ARRAY(), a multiple assignment */
	if (compare && cond)
		cmp_operand(l, j_get(s, "testexpr"), sub);
	else
		expr(l, j_get(s, "testexpr"), sub);
	if (type == NULL)
		return;
	r = q_stmt(l, type, body, 0);
	if (exists)
		return;
	lin_flow_cols(l, l->w->cols + r.first, r.n, sub);
}

/* A query met as a value: its outputs flow into the expression. */
static void expr_query(Lin *l, const JNode *sel, unsigned ctx)
{
	LRange r = q_select(l, sel, 0);

	lin_flow_cols(l, l->w->cols + r.first, r.n, ctx);
}

static void expr_members(Lin *l, const JNode *obj, unsigned ctx)
{
	const JNode *m;

	for (m = j_first(obj); m != NULL; m = j_next(m))
		if (m->type == J_OBJ || m->type == J_ARR)
			expr(l, m, ctx);
}

/* Comparison operators: a plain column they compare in a condition is not computed on. */
static bool comparison_op(const JNode *name)
{
	static const char *const ops[] = {
		"=", "<>", "!=", "<", ">", "<=", ">=", "~~", "!~~", "~~*", "!~~*", "~", "!~", "~*", "!~*",
	};
	const char *op = last_field(name);

	for (size_t i = 0; op != NULL && i < PGV_ARRAY_LEN(ops); i++)
		if (strcmp(op, ops[i]) == 0)
			return true;
	return false;
}

/* True for a comparison: =, <, LIKE, IN, BETWEEN, IS [NOT] DISTINCT FROM, IS NULL, IS TRUE... */
static bool is_comparison(const char *type, const JNode *body)
{
	static const char *const kinds[] = {
		"AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT", "AEXPR_IN", "AEXPR_LIKE", "AEXPR_ILIKE", "AEXPR_SIMILAR",
		"AEXPR_BETWEEN", "AEXPR_NOT_BETWEEN", "AEXPR_BETWEEN_SYM", "AEXPR_NOT_BETWEEN_SYM",
	};
	const char *kind;

	if (strcmp(type, "NullTest") == 0 || strcmp(type, "BooleanTest") == 0)
		return true;
	if (strcmp(type, "A_Expr") != 0 || (kind = j_str(body, "kind")) == NULL)
		return false;
	if (strcmp(kind, "AEXPR_OP") == 0 || strcmp(kind, "AEXPR_OP_ANY") == 0 || strcmp(kind, "AEXPR_OP_ALL") == 0)
		return comparison_op(j_get(body, "name"));
	for (size_t i = 0; i < PGV_ARRAY_LEN(kinds); i++)
		if (strcmp(kind, kinds[i]) == 0)
			return true;
	return false;
}

/* Nodes that only hold others (lists, sort keys, window definitions): nothing is computed. */
static bool is_holder(const char *type)
{
	static const char *const types[] = { "List", "SortBy", "WindowDef", "GroupingSet", "CaseWhen" };

	for (size_t i = 0; i < PGV_ARRAY_LEN(types); i++)
		if (strcmp(type, types[i]) == 0)
			return true;
	return false;
}

/*
 * Walks an expression: its column references flow into the current
 * collection with `ctx`. Every operand of a node that computes (a cast, an
 * operator, a function, a constructor) gets SQL_USE_EXPRESSION, but a
 * plain column compared in a condition (LIN_COND: AND / OR / NOT of
 * comparisons).
 */
static void expr(Lin *l, const JNode *n, unsigned ctx)
{
	const JNode *body;
	const char *type;

	if (n == NULL || l->b->oom || !lin_work(l, 1))
		return;
	if (n->type == J_ARR) {
		expr_members(l, n, ctx);
		return;
	}
	if (n->type != J_OBJ)
		return;
	if ((type = j_type(n, &body)) == NULL) {
		expr_members(l, n, value_ctx(ctx));
		return;
	}
	if (is_leaf(type))
		return;
	if (strcmp(type, "ColumnRef") == 0)
		(void)lin_expr_colref(l, body, value_ctx(ctx));
	else if (strcmp(type, "FuncCall") == 0)
		expr_funccall(l, body, value_ctx(ctx));
	else if (strcmp(type, "CaseExpr") == 0)
		expr_case(l, body, value_ctx(ctx));
	else if (strcmp(type, "SubLink") == 0)
		expr_sublink(l, body, ctx);
	else if (strcmp(type, "SelectStmt") == 0)
		expr_query(l, body, value_ctx(ctx));
	else if (strcmp(type, "BoolExpr") == 0)
		expr_members(l, body, ctx);
	else if (is_comparison(type, body) && (ctx & LIN_COND))
		cmp_operands(l, body, value_ctx(ctx));
	else if (is_holder(type))
		expr_members(l, body, value_ctx(ctx));
	else
		expr_members(l, body, operand_ctx(ctx));
}

/* Walks `n` for its uses only: nothing flows on. */
static void expr_discard(Lin *l, const JNode *n, unsigned ctx)
{
	int mark = l->w->n_coll;

	expr(l, n, ctx);
	l->w->n_coll = mark;
}

/* Walks condition `n` (WHERE, JOIN ON, HAVING, ...) for its uses: PREDICATE. */
static void cond_discard(Lin *l, const JNode *n)
{
	expr_discard(l, n, SQL_USE_PREDICATE | LIN_COND);
}

/* ---- output names (the server's FigureColname) ------------------------------------ */

/* The last String of a list of String / A_Star / A_Indices nodes, or NULL. */
static const char *last_field(const JNode *list)
{
	const JNode *e;
	const char *name = NULL, *s;

	for (e = j_first(list); e != NULL; e = j_next(e))
		if ((s = j_string_node(e)) != NULL)
			name = s;
	return name;
}

/* The name of enum value `value` in `map` (pairs: value, name, then NULL); NULL when not listed. */
static const char *enum_name(const char *value, const char *const *map)
{
	for (; value != NULL && map[0] != NULL; map += 2)
		if (strcmp(value, map[0]) == 0)
			return map[1];
	return NULL;
}

static const char *const svf_names[] = {
	"SVFOP_CURRENT_DATE", "current_date", "SVFOP_CURRENT_TIME", "current_time",
	"SVFOP_CURRENT_TIME_N", "current_time", "SVFOP_CURRENT_TIMESTAMP", "current_timestamp",
	"SVFOP_CURRENT_TIMESTAMP_N", "current_timestamp", "SVFOP_LOCALTIME", "localtime",
	"SVFOP_LOCALTIME_N", "localtime", "SVFOP_LOCALTIMESTAMP", "localtimestamp",
	"SVFOP_LOCALTIMESTAMP_N", "localtimestamp", "SVFOP_CURRENT_ROLE", "current_role",
	"SVFOP_CURRENT_USER", "current_user", "SVFOP_USER", "user", "SVFOP_SESSION_USER", "session_user",
	"SVFOP_CURRENT_CATALOG", "current_catalog", "SVFOP_CURRENT_SCHEMA", "current_schema", NULL,
};

static const char *const xml_names[] = {
	"IS_XMLCONCAT", "xmlconcat", "IS_XMLELEMENT", "xmlelement", "IS_XMLFOREST", "xmlforest",
	"IS_XMLPARSE", "xmlparse", "IS_XMLPI", "xmlpi", "IS_XMLROOT", "xmlroot",
	"IS_XMLSERIALIZE", "xmlserialize", NULL,
};

static const char *const minmax_names[] = { "IS_GREATEST", "greatest", "IS_LEAST", "least", NULL };

/* Node types named after what they are, like functions (strength 2). */
static const char *const node_names[] = {
	"A_ArrayExpr", "array", "RowExpr", "row", "CoalesceExpr", "coalesce", "GroupingFunc", "grouping",
	"XmlSerialize", "xmlserialize", NULL,
};

static int figure(const JNode *n, const char **name);

/* A named enum value: strength 2 with its name, 0 when it has none. */
static int figure_enum(const char *value, const char *const *map, const char **name)
{
	const char *s = enum_name(value, map);

	if (s == NULL)
		return 0;
	*name = s;
	return 2;
}

/* A sublink: EXISTS, ARRAY, or (EXPR) its query's first output's name. */
static int figure_sublink(const JNode *body, const char **name)
{
	const char *kind = j_str(body, "subLinkType");
	const JNode *q, *rt;

	if (lin_str_eq(kind, "EXISTS_SUBLINK") || lin_str_eq(kind, "ARRAY_SUBLINK")) {
		*name = kind[0] == 'E' ? "exists" : "array";
		return 2;
	}
	if (!lin_str_eq(kind, "EXPR_SUBLINK"))
		return 0;
	/* Named after the query's first output (always named, "?column?" maybe): when the analysis
	 * cannot tell the name, NULL at full strength, which matches every name. */
	*name = NULL;
	if (j_type(j_get(body, "subselect"), &q) == NULL || j_type(j_first(j_get(q, "targetList")), &rt) == NULL)
		return 2;
	if ((*name = j_str(rt, "name")) == NULL)
		(void)figure(j_get(rt, "val"), name);
	return 2;
}

/*
 * PostgreSQL 15's FigureColnameInternal (parse_target.c): the name the
 * server gives an output column computed by `n`, into *name, and how sure
 * it is: 2 a good name, 1 a second choice (a cast's type, "case"), 0 none
 * ("?column?"; *name is left alone). A name the analysis cannot tell is
 * NULL, which matches every name.
 */
static int figure(const JNode *n, const char **name)
{
	const JNode *body;
	const char *type = j_type(n, &body), *s;
	int strength;

	if (type == NULL)
		return 0;
	if (strcmp(type, "ColumnRef") == 0 || strcmp(type, "A_Indirection") == 0) {
		if ((s = last_field(j_get(body, type[0] == 'C' ? "fields" : "indirection"))) != NULL) {
			*name = s;
			return 2;
		}
		return type[0] == 'A' ? figure(j_get(body, "arg"), name) : 0;
	}
	if (strcmp(type, "FuncCall") == 0) {
		*name = last_field(j_get(body, "funcname"));
		return 2;
	}
	if (strcmp(type, "TypeCast") == 0 || strcmp(type, "CaseExpr") == 0) {
		strength = figure(j_get(body, type[0] == 'T' ? "arg" : "defresult"), name);
		if (strength > 1)
			return strength;
		if (type[0] == 'C')
			*name = "case";
		else if (j_get(body, "typeName") != NULL)
			*name = last_field(j_get(j_get(body, "typeName"), "names"));
		else
			return strength;
		return 1;
	}
	if (strcmp(type, "CollateClause") == 0)
		return figure(j_get(body, "arg"), name);
	if (strcmp(type, "A_Expr") == 0) { /* NULLIF is named like a function; operators are not */
		if (!lin_str_eq(j_str(body, "kind"), "AEXPR_NULLIF"))
			return 0;
		*name = "nullif";
		return 2;
	}
	if (strcmp(type, "SubLink") == 0)
		return figure_sublink(body, name);
	if (strcmp(type, "MinMaxExpr") == 0)
		return figure_enum(j_str(body, "op"), minmax_names, name);
	if (strcmp(type, "SQLValueFunction") == 0)
		return figure_enum(j_str(body, "op"), svf_names, name);
	if (strcmp(type, "XmlExpr") == 0)
		return figure_enum(j_str(body, "op"), xml_names, name);
	return figure_enum(type, node_names, name);
}

/* The name of an output computed by `n`; NULL for "?column?" or unknown (it matches every name). */
static const char *figure_name(const JNode *n)
{
	const char *name = NULL;

	(void)figure(n, &name);
	return name;
}

/* ---- select lists, ORDER BY, GROUP BY, DISTINCT ------------------------------------ */

/* Expands `*` / `t.*` of a select list for relation r. */
static void expand_rel(Lin *l, const LRel *r, unsigned ctx)
{
	int i, mark;
	LCol c;

	if (r->table != NULL) {
		mark = l->w->n_coll;
		lin_src_add(l, lin_col_intern(l, r->schema, r->table, col_all), ctx);
		lin_pend_push(l, NULL, lin_coll_commit(l, mark), r->merged, true);
	} else if (r->is_join) {
		for (i = r->kfirst; i < r->klast; i++)
			if (!l->w->rels[i].is_join && !l->w->rels[i].hidden)
				expand_rel(l, &l->w->rels[i], ctx);
	} else {
		for (i = 0; i < r->ncols; i++) {
			c = l->w->cols[r->cfirst + i];
			mark = l->w->n_coll;
			lin_flow_range(l, c.first, c.n, ctx);
			l->w->n_coll = mark;
			lin_pend_push(l, c.name, (LRange){ c.first, c.n }, c.derived || r->uncertain, c.star);
		}
	}
}

static void expand_star(Lin *l, const char *const *f, int n, unsigned ctx)
{
	const LRel *r;
	int i;

	if (n == 0) {
		if (!lin_work(l, l->w->n_rels))
			return;
		for (i = 0; i < l->w->n_rels; i++) {
			r = &l->w->rels[i];
			if (r->level == l->level && !r->hidden && !r->is_join)
				expand_rel(l, r, ctx);
		}
		return;
	}
	if ((r = lin_rel_find(l, n >= 2 ? f[n - 2] : NULL, f[n - 1])) != NULL) {
		expand_rel(l, r, ctx);
		return;
	}
	/* not a relation: the server refuses it; read whole rows to be safe */
	i = l->w->n_coll;
	lin_all_whole_rows(l, ctx);
	lin_pend_push(l, NULL, lin_coll_commit(l, i), true, true);
}

/* True when `ind` (an A_Indirection) ends in `.*`: `(x).*` expands to several columns. */
static bool indirection_star(const JNode *ind)
{
	const JNode *e, *last = NULL, *body;

	for (e = j_first(j_get(ind, "indirection")); e != NULL; e = j_next(e))
		last = e;
	return last != NULL && lin_str_eq(j_type(last, &body), "A_Star");
}

/* One select-list (or RETURNING) item. */
static void target(Lin *l, const JNode *rt, unsigned ctx)
{
	const JNode *val = j_get(rt, "val"), *body;
	const char *type = j_type(val, &body), *f[4] = { NULL, NULL, NULL, NULL };
	bool star = false, derived;
	int mark = l->w->n_coll, n = 0;

	if (type != NULL && strcmp(type, "A_Indirection") == 0 && indirection_star(body)) {
		expr(l, val, ctx); /* (x).*: columns the analysis cannot count */
		lin_pend_push(l, NULL, lin_coll_commit(l, mark), true, true);
		return;
	}

	if (type != NULL && strcmp(type, "ColumnRef") == 0) {
		n = lin_fields_count(j_get(body, "fields"), f, &star);
		if (star && n <= 3) {
			expand_star(l, f, n, ctx);
			return;
		}
		derived = lin_expr_colref(l, body, ctx);
	} else {
		expr(l, val, ctx);
		derived = true;
	}
	lin_pend_push(l, j_str(rt, "name") != NULL ? j_str(rt, "name") : figure_name(val), lin_coll_commit(l, mark),
		  derived, false);
}

static void targets(Lin *l, const JNode *list, unsigned ctx)
{
	const JNode *e, *body;

	for (e = j_first(list); e != NULL && !l->b->oom; e = j_next(e))
		if (j_type(e, &body) != NULL)
			target(l, body, ctx);
}

/* Every source of the pending outputs above `mark` gets `ctx`. */
static void outputs_use(Lin *l, int mark, unsigned ctx)
{
	int i, cm = l->w->n_coll;

	if (!lin_work(l, l->w->n_pend - mark))
		return;
	for (i = mark; i < l->w->n_pend; i++)
		lin_flow_range(l, l->w->pend[i].first, l->w->pend[i].n, ctx);
	l->w->n_coll = cm;
}

/*
 * An ORDER BY / GROUP BY / DISTINCT ON item: a position or an output name
 * makes that output's sources PREDICATE; the item is also resolved as an
 * input expression. A row of items (`GROUP BY (1, 2)`, `ROLLUP((1, 2))`,
 * which PostgreSQL flattens into its items in GROUP BY) counts as its
 * items, wherever it stands (fail closed).
 */
static void sort_item(Lin *l, const JNode *n, int mark)
{
	const JNode *body, *v;
	const char *type = j_type(n, &body), *name;
	LinWork *w = l->w;
	long long k;
	int i, cm = w->n_coll;

	if (!lin_work(l, w->n_pend - mark))
		return;
	if (type != NULL && strcmp(type, "SortBy") == 0) {
		sort_item(l, j_get(body, "node"), mark);
		return;
	}
	if (type != NULL && (strcmp(type, "GroupingSet") == 0 || strcmp(type, "RowExpr") == 0)) {
		for (v = j_first(j_get(body, type[0] == 'G' ? "content" : "args")); v != NULL; v = j_next(v))
			sort_item(l, v, mark);
		return;
	}
	if (type != NULL && strcmp(type, "A_Const") == 0 && (v = j_get(body, "ival")) != NULL) {
		l->b->literal_sensitive = true; /* ORDER BY 1 and ORDER BY 2 read different columns */
		k = j_num(v, "ival");
		for (i = mark; i < w->n_pend && i - mark < k - 1 && !w->pend[i].star; i++)
			;
		if (i < w->n_pend && i - mark == k - 1 && !w->pend[i].star)
			lin_flow_range(l, w->pend[i].first, w->pend[i].n, SQL_USE_PREDICATE);
		else
			outputs_use(l, mark, SQL_USE_PREDICATE);
		w->n_coll = cm;
		return;
	}
	if (type != NULL && strcmp(type, "ColumnRef") == 0 && j_len(j_get(body, "fields")) == 1 &&
	    (name = j_string_node(j_first(j_get(body, "fields")))) != NULL)
		for (i = mark; i < w->n_pend; i++)
			if (w->pend[i].name != NULL && strcmp(w->pend[i].name, name) == 0) {
				lin_flow_range(l, w->pend[i].first, w->pend[i].n, SQL_USE_PREDICATE);
				l->nobind = true; /* an output's name: maybe no input column at all */
			}
	w->n_coll = cm;
	expr_discard(l, n, SQL_USE_PREDICATE);
	l->nobind = false;
}

static void sort_list(Lin *l, const JNode *list, int mark)
{
	const JNode *e;

	for (e = j_first(list); e != NULL; e = j_next(e))
		sort_item(l, e, mark);
}

/* DISTINCT compares every output; DISTINCT ON its items. */
static void distinct(Lin *l, const JNode *list, int mark)
{
	const JNode *first = j_first(list);

	if (first == NULL)
		return;
	if (first->type == J_OBJ && first->child == NULL)
		outputs_use(l, mark, SQL_USE_PREDICATE);
	else
		sort_list(l, list, mark);
}

/* ---- FROM --------------------------------------------------------------------------- */

static void from_item(Lin *l, const JNode *n);

static const LCte *cte_find(Lin *l, const char *name)
{
	int i;

	if (!lin_work(l, l->w->n_ctes))
		return NULL;
	for (i = l->w->n_ctes - 1; i >= 0; i--)
		if (strcmp(l->w->ctes[i].name, name) == 0)
			return &l->w->ctes[i];
	return NULL;
}

/* RangeVar rv as a base table in the current scope, whatever CTEs are named like it. */
static void table_push(Lin *l, const JNode *rv)
{
	const char *name = j_str(rv, "relname"), *ref = j_str(j_get(rv, "alias"), "aliasname");
	LRel *r;

	if (name == NULL || (r = lin_rel_push(l, ref != NULL ? ref : name)) == NULL)
		return;
	r->schema = j_str(rv, "schemaname");
	r->table = name;
	r->colaliases = j_get(j_get(rv, "alias"), "colnames");
}

/* A RangeVar in FROM: a CTE in scope when unqualified and one has its name, else a base table. */
static void from_rangevar(Lin *l, const JNode *rv)
{
	const char *schema = j_str(rv, "schemaname"), *name = j_str(rv, "relname");
	const JNode *alias = j_get(rv, "alias");
	const char *ref = j_str(alias, "aliasname");
	const LCte *cte;

	if (name == NULL)
		return;
	if (schema == NULL && (cte = cte_find(l, name)) != NULL) {
		lin_rel_push_derived(l, ref != NULL ? ref : name, cte->cfirst, cte->ncols, alias, cte->uncertain);
		return;
	}
	table_push(l, rv);
}

/* Hides (or shows again) the relations of the current scope: a non-LATERAL subquery does not see them. */
static void scope_hide(Lin *l, int from, bool hide)
{
	int i;

	for (i = from; i < l->w->n_rels; i++)
		if (l->w->rels[i].level == l->level)
			l->w->rels[i].hidden = hide;
}

static void from_subselect(Lin *l, const JNode *s)
{
	const JNode *alias = j_get(s, "alias"), *body = NULL;
	const char *type = j_type(j_get(s, "subquery"), &body);
	bool lateral = j_true(s, "lateral");
	int scope_first = 0, n = l->w->n_rels;
	LRange r = { 0, 0 };

	if (!lin_work(l, 2 * n))
		return;
	while (scope_first < n && l->w->rels[scope_first].level != l->level)
		scope_first++;
	if (!lateral)
		scope_hide(l, scope_first, true);
	if (type != NULL)
		r = q_stmt(l, type, body, 0);
	if (!lateral)
		scope_hide(l, scope_first, false);
	lin_rel_push_derived(l, j_str(alias, "aliasname"), r.first, r.n, alias, false);
}

/*
 * A relation computed from arguments (a function in FROM, ROWS FROM,
 * XMLTABLE): columns named by `names` (String list) or by `defs` (nodes with
 * "colname") and a trailing star, all DERIVED from every argument.
 */
static void from_computed(Lin *l, const char *name, LRange src, const JNode *names, const JNode *defs)
{
	LinWork *w = l->w;
	const JNode *e, *body;
	int mark = w->n_pend;
	LRange cols;
	LRel *r;

	for (e = j_first(names); e != NULL; e = j_next(e))
		lin_pend_push(l, j_string_node(e), src, true, false);
	for (e = j_first(defs); e != NULL; e = j_next(e))
		if (j_type(e, &body) != NULL)
			lin_pend_push(l, j_str(body, "colname"), src, true, false);
	lin_pend_push(l, NULL, src, true, true);
	cols = lin_pend_flush(l, mark);
	if ((r = lin_rel_push(l, name)) != NULL) {
		r->cfirst = cols.first;
		r->ncols = cols.n;
	}
}

static void from_function(Lin *l, const JNode *f)
{
	const JNode *alias = j_get(f, "alias"), *fn, *items, *body;
	const char *name = j_str(alias, "aliasname");
	int mark = l->w->n_coll;

	for (fn = j_first(j_get(f, "functions")); fn != NULL; fn = j_next(fn)) {
		if (j_type(fn, &body) == NULL || (items = j_first(j_get(body, "items"))) == NULL)
			continue;
		if (name == NULL && j_type(items, &body) != NULL && strcmp(j_type(items, &body), "FuncCall") == 0)
			name = last_field(j_get(body, "funcname"));
		expr(l, items, SQL_USE_FUNCTION_ARG);
		expr(l, j_next(items), SQL_USE_FUNCTION_ARG);
	}
	from_computed(l, name, lin_coll_commit(l, mark), j_get(alias, "colnames"), j_get(f, "coldeflist"));
}

static void from_tablefunc(Lin *l, const JNode *f)
{
	static const char *const keys[] = { "docexpr", "rowexpr", "namespaces", "columns", NULL };
	const JNode *alias = j_get(f, "alias");
	int mark = l->w->n_coll, i;

	for (i = 0; keys[i] != NULL; i++)
		expr(l, j_get(f, keys[i]), SQL_USE_FUNCTION_ARG);
	from_computed(l, j_str(alias, "aliasname"), lin_coll_commit(l, mark), j_get(alias, "colnames"),
		      j_get(f, "columns"));
}

static void from_join(Lin *l, const JNode *j)
{
	const JNode *alias = j_get(j, "alias"), *u;
	const char *type = j_str(j, "jointype"), *name;
	bool natural = j_true(j, "isNatural"), full = type != NULL && strcmp(type, "JOIN_FULL") == 0;
	int first = l->w->n_rels, last, i, cm;
	bool derived = false;
	LRel *r;

	from_item(l, j_get(j, "larg"));
	from_item(l, j_get(j, "rarg"));
	last = l->w->n_rels;
	cm = l->w->n_coll;
	for (u = j_first(j_get(j, "usingClause")); u != NULL; u = j_next(u))
		if ((name = j_string_node(u)) != NULL)
			for (i = first; i < last; i++)
				if (!l->w->rels[i].is_join)
					(void)lin_rel_column(l, &l->w->rels[i], name, SQL_USE_PREDICATE, &derived, true);
	for (i = first; natural && i < last; i++)
		if (!l->w->rels[i].is_join)
			lin_rel_whole_row(l, &l->w->rels[i], SQL_USE_PREDICATE);
	l->w->n_coll = cm;
	for (i = first; full && (natural || j_get(j, "usingClause") != NULL) && i < last; i++)
		l->w->rels[i].merged = true;
	cond_discard(l, j_get(j, "quals"));
	if (j_str(alias, "aliasname") != NULL && (r = lin_rel_push(l, j_str(alias, "aliasname"))) != NULL) {
		r->is_join = true;
		r->kfirst = first;
		r->klast = last;
		r->uncertain = j_get(alias, "colnames") != NULL;
	}
}

static void from_item(Lin *l, const JNode *n)
{
	const JNode *body;
	const char *type = j_type(n, &body);

	if (type == NULL || l->b->oom)
		return;
	if (strcmp(type, "RangeVar") == 0)
		from_rangevar(l, body);
	else if (strcmp(type, "JoinExpr") == 0)
		from_join(l, body);
	else if (strcmp(type, "RangeSubselect") == 0)
		from_subselect(l, body);
	else if (strcmp(type, "RangeFunction") == 0)
		from_function(l, body);
	else if (strcmp(type, "RangeTableFunc") == 0)
		from_tablefunc(l, body);
	else if (strcmp(type, "RangeTableSample") == 0) {
		from_item(l, j_get(body, "relation"));
		expr_discard(l, j_get(body, "args"), SQL_USE_PREDICATE);
		expr_discard(l, j_get(body, "repeatable"), SQL_USE_PREDICATE);
	} else {
		expr_discard(l, body, SQL_USE_PREDICATE);
	}
}

static void from_list(Lin *l, const JNode *list)
{
	const JNode *e;

	for (e = j_first(list); e != NULL; e = j_next(e))
		from_item(l, e);
}

/* ---- WITH ------------------------------------------------------------------------------ */

static void cte_push(Lin *l, const char *name, LRange cols, const JNode *aliases, bool uncertain)
{
	LinWork *w = l->w;
	LCte *c;

	if (name == NULL || !LGROW(l, w->ctes, w->n_ctes, w->cap_ctes))
		return;
	c = &w->ctes[w->n_ctes++];
	c->name = name;
	c->cfirst = lin_cols_rename(l, cols.first, cols.n, aliases, &uncertain);
	c->ncols = cols.n;
	c->uncertain = uncertain;
}

/*
 * WITH RECURSIVE, once every CTE of it is walked: the placeholder stands for
 * every source of those CTEs; its uses' contexts go to all of them, and each
 * CTE column that read it reads them all.
 */
static void recursive_close(Lin *l, int cte_first, int self)
{
	LinWork *w = l->w;
	SqlBuild *b = l->b;
	unsigned ctx = b->lcols[self].use_stmt == l->stmt ? b->luses[b->lcols[self].use].contexts : 0;
	int i, k, mark = w->n_coll, umark;
	LRange all, r;
	LCol *c;

	for (i = cte_first; i < w->n_ctes; i++)
		for (k = 0; k < w->ctes[i].ncols; k++) {
			c = &w->cols[w->ctes[i].cfirst + k];
			lin_flow_range(l, c->first, c->n, 0);
		}
	for (i = mark, k = mark; i < w->n_coll; i++) /* placeholders stand for nothing themselves */
		if (b->lcols[w->coll[i]].table != NULL)
			w->coll[k++] = w->coll[i];
	w->n_coll = k;
	all = lin_coll_commit(l, mark);
	lin_flow_range(l, all.first, all.n, ctx); /* the placeholder's contexts go to every source */
	w->n_coll = mark;
	for (i = cte_first; i < w->n_ctes; i++) {
		for (k = 0; k < w->ctes[i].ncols; k++) {
			c = &w->cols[w->ctes[i].cfirst + k];
			umark = w->n_coll;
			lin_flow_range(l, c->first, c->n, 0);
			lin_flow_range(l, all.first, all.n, 0);
			r = lin_coll_commit(l, umark);
			c->first = r.first;
			c->n = r.n;
			c->derived = true;
		}
	}
}

static void lin_with(Lin *l, const JNode *with)
{
	bool recursive = j_true(with, "recursive");
	const JNode *c, *body, *qbody;
	const char *type;
	int first = l->w->n_ctes, self = -1, mark, n_ph = 0;
	LRange r = { 0, 0 };

	if (recursive) {
		/* every CTE of the clause first reads the placeholder, as one DERIVED star */
		if ((self = lin_col_append(l, NULL, NULL, col_all)) < 0 ||
		    !LGROW(l, l->b->lsrc, l->b->n_lsrc, l->b->cap_lsrc))
			return;
		l->b->lsrc[l->b->n_lsrc++] = self;
		mark = l->w->n_pend;
		lin_pend_push(l, NULL, (LRange){ l->b->n_lsrc - 1, 1 }, true, true);
		r = lin_pend_flush(l, mark);
		for (c = j_first(j_get(with, "ctes")); c != NULL; c = j_next(c))
			if (j_type(c, &body) != NULL)
				cte_push(l, j_str(body, "ctename"), r, NULL, false);
		n_ph = l->w->n_ctes - first;
	}
	for (c = j_first(j_get(with, "ctes")); c != NULL && !l->b->oom; c = j_next(c)) {
		if (j_type(c, &body) == NULL || (type = j_type(j_get(body, "ctequery"), &qbody)) == NULL)
			continue;
		r = q_stmt(l, type, qbody, 0);
		cte_push(l, j_str(body, "ctename"), r, j_get(body, "aliascolnames"), false);
	}
	if (recursive && !l->b->oom) {
		/* drop the placeholder entries: the CTEs as walked are above them */
		memmove(l->w->ctes + first, l->w->ctes + first + n_ph,
			(size_t)(l->w->n_ctes - first - n_ph) * sizeof(LCte));
		l->w->n_ctes -= n_ph;
		recursive_close(l, first, self);
	}
}

/* ---- queries ------------------------------------------------------------------------------ */

/* Merges the branches of a set operation column by column. */
static void setop_merge(Lin *l, LRange a, LRange b)
{
	LinWork *w = l->w;
	bool star = a.n != b.n;
	int i, mark;

	for (i = 0; i < a.n && !star; i++)
		star = w->cols[a.first + i].star;
	for (i = 0; i < b.n && !star; i++)
		star = w->cols[b.first + i].star;
	if (star) {
		mark = w->n_coll;
		lin_flow_cols(l, w->cols + a.first, a.n, 0);
		lin_flow_cols(l, w->cols + b.first, b.n, 0);
		lin_pend_push(l, NULL, lin_coll_commit(l, mark), true, true);
		return;
	}
	for (i = 0; i < a.n; i++) {
		mark = w->n_coll;
		lin_flow_range(l, w->cols[a.first + i].first, w->cols[a.first + i].n, 0);
		lin_flow_range(l, w->cols[b.first + i].first, w->cols[b.first + i].n, 0);
		lin_pend_push(l, w->cols[a.first + i].name, lin_coll_commit(l, mark), true, false);
	}
}

static void q_setop(Lin *l, const JNode *sel, unsigned out_ctx)
{
	const char *op = j_str(sel, "op");
	LRange a = q_select(l, j_get(sel, "larg"), out_ctx);
	LRange b = q_select(l, j_get(sel, "rarg"), out_ctx);
	int mark = l->w->n_coll;

	if (!j_true(sel, "all") || (op != NULL && strcmp(op, "SETOP_UNION") != 0)) {
		lin_flow_cols(l, l->w->cols + a.first, a.n, SQL_USE_PREDICATE); /* duplicates compared */
		lin_flow_cols(l, l->w->cols + b.first, b.n, SQL_USE_PREDICATE);
		l->w->n_coll = mark;
	}
	setop_merge(l, a, b);
}

/* Points w->rowcur[r] at the first item of each row of VALUES; returns the number of rows, -1 when out of memory. */
static long values_cursors(Lin *l, const JNode *rows)
{
	LinWork *w = l->w;
	size_t n = (size_t)j_len(rows), r = 0;
	const JNode *row, *body;
	const JNode **p;

	if (n > w->cap_rowcur) {
		if ((p = realloc(w->rowcur, n * sizeof(*p))) == NULL) {
			l->b->oom = true;
			return -1;
		}
		w->rowcur = p;
		w->cap_rowcur = n;
	}
	for (row = j_first(rows); row != NULL; row = j_next(row))
		w->rowcur[r++] = j_type(row, &body) != NULL ? j_first(j_get(body, "items")) : NULL;
	return (long)n;
}

static void q_values(Lin *l, const JNode *rows, unsigned ctx)
{
	static const char *const names[] = { "column1", "column2", "column3", "column4", "column5", "column6",
					     "column7", "column8", "column9", "column10", "column11", "column12" };
	const JNode *body, **cur;
	long n_rows, r;
	int n = 0, i, mark;

	if (j_type(j_first(rows), &body) != NULL)
		n = j_len(j_get(body, "items"));
	if (n > MAX_SPLIT_VALUES) {
		mark = l->w->n_coll;
		expr(l, rows, ctx);
		lin_pend_push(l, NULL, lin_coll_commit(l, mark), true, true);
		return;
	}
	if ((n_rows = values_cursors(l, rows)) < 0)
		return;
	cur = l->w->rowcur;
	for (i = 0; i < n; i++) { /* column i: item i of every row */
		mark = l->w->n_coll;
		for (r = 0; r < n_rows; r++) {
			if (cur[r] == NULL)
				continue;
			expr(l, cur[r], ctx);
			cur[r] = j_next(cur[r]);
		}
		lin_pend_push(l, i < (int)PGV_ARRAY_LEN(names) ? names[i] : NULL, lin_coll_commit(l, mark), true, false);
	}
}

/* A SELECT (VALUES, TABLE, set operation): returns its output columns (in w->cols). */
static LRange q_select(Lin *l, const JNode *sel, unsigned out_ctx)
{
	LinWork *w = l->w;
	int rels = w->n_rels, ctes = w->n_ctes, mark = w->n_pend;
	const JNode *saved_windows = l->windows;
	LRange r;

	l->level++;
	if (j_get(sel, "withClause") != NULL)
		lin_with(l, j_get(sel, "withClause"));
	if (j_get(sel, "larg") != NULL) {
		q_setop(l, sel, out_ctx);
	} else if (j_get(sel, "valuesLists") != NULL) {
		q_values(l, j_get(sel, "valuesLists"), out_ctx);
	} else {
		l->windows = j_get(sel, "windowClause");
		from_list(l, j_get(sel, "fromClause"));
		cond_discard(l, j_get(sel, "whereClause"));
		targets(l, j_get(sel, "targetList"), out_ctx);
		sort_list(l, j_get(sel, "groupClause"), mark);
		cond_discard(l, j_get(sel, "havingClause"));
		expr_discard(l, j_get(sel, "windowClause"), SQL_USE_PREDICATE);
		distinct(l, j_get(sel, "distinctClause"), mark);
	}
	sort_list(l, j_get(sel, "sortClause"), mark);
	expr_discard(l, j_get(sel, "limitCount"), SQL_USE_PREDICATE);
	expr_discard(l, j_get(sel, "limitOffset"), SQL_USE_PREDICATE);
	r = lin_pend_flush(l, mark);
	l->windows = saved_windows;
	w->n_rels = rels;
	w->n_ctes = ctes;
	l->level--;
	return r;
}

/*
 * The target of INSERT/UPDATE/DELETE/MERGE as a relation in the current
 * scope: always a table (PostgreSQL never takes a CTE of that name for it).
 */
static void dml_target(Lin *l, const JNode *s)
{
	table_push(l, j_get(s, "relation"));
}

/*
 * An ON CONFLICT arbiter column of the DML target: which row conflicts is
 * a lookup by value (the row it finds is updated and returned), so it
 * counts as a predicate on the column. name NULL: every column (an
 * expression).
 */
static void arbiter_used(Lin *l, const char *name)
{
	const LRel *r = l->w->n_rels > 0 ? &l->w->rels[l->w->n_rels - 1] : NULL;

	if (r == NULL || r->table == NULL)
		return;
	lin_src_add(l, lin_col_intern(l, r->schema, r->table, name != NULL ? name : col_all), SQL_USE_PREDICATE);
}



static LRange dml_returning(Lin *l, const JNode *s, unsigned out_ctx)
{
	int mark = l->w->n_pend;

	targets(l, j_get(s, "returningList"), out_ctx);
	return lin_pend_flush(l, mark);
}

/* SET / ON CONFLICT DO UPDATE SET items: their values are written. */
static void dml_set(Lin *l, const JNode *list)
{
	const JNode *e, *body, *v, *mb;

	for (e = j_first(list); e != NULL; e = j_next(e)) {
		if (j_type(e, &body) == NULL)
			continue;
		v = j_get(body, "val");
		if (j_type(v, &mb) != NULL && strcmp(j_type(v, &mb), "MultiAssignRef") == 0 && j_num(mb, "colno") > 1)
			continue; /* (a, b) = (SELECT ...): the source is walked once, with the first */
		expr_discard(l, v, SQL_USE_WRITE_SOURCE);
	}
}

static LRange q_insert(Lin *l, const JNode *s, unsigned out_ctx)
{
	const JNode *oc = j_get(s, "onConflictClause"), *body, *cols, *e;
	const char *type = j_type(j_get(s, "selectStmt"), &body);
	LRange src = { 0, 0 };
	bool uncertain;
	LRel *r;
	int i = 0, rels;

	if (type != NULL)
		src = q_stmt(l, type, body, SQL_USE_WRITE_SOURCE);
	dml_target(l, s);
	rels = l->w->n_rels;
	if (oc != NULL) {
		for (e = j_first(j_get(j_get(oc, "infer"), "indexElems")); e != NULL; e = j_next(e))
			if (j_type(e, &body) != NULL)
				arbiter_used(l, j_str(body, "name")); /* NULL for an expression: every column */
		/* excluded: the row proposed for insertion, named by the column list */
		cols = j_get(s, "cols");
		uncertain = cols == NULL;
		for (e = j_first(cols); e != NULL && i < src.n; e = j_next(e), i++)
			if (j_type(e, &body) != NULL && !l->w->cols[src.first + i].star)
				l->w->cols[src.first + i].name = j_str(body, "name");
			else
				uncertain = true;
		if ((r = lin_rel_push(l, "excluded")) != NULL) {
			r->cfirst = src.first;
			r->ncols = src.n;
			r->uncertain = uncertain || i < src.n;
		}
		cond_discard(l, j_get(j_get(oc, "infer"), "whereClause"));
		dml_set(l, j_get(oc, "targetList"));
		cond_discard(l, j_get(oc, "whereClause"));
	}
	l->w->n_rels = rels; /* RETURNING sees the target, never `excluded` */
	return dml_returning(l, s, out_ctx);
}

static LRange q_update(Lin *l, const JNode *s, unsigned out_ctx)
{
	dml_target(l, s);
	from_list(l, j_get(s, "fromClause"));
	dml_set(l, j_get(s, "targetList"));
	cond_discard(l, j_get(s, "whereClause"));
	return dml_returning(l, s, out_ctx);
}

static LRange q_delete(Lin *l, const JNode *s, unsigned out_ctx)
{
	dml_target(l, s);
	from_list(l, j_get(s, "usingClause"));
	cond_discard(l, j_get(s, "whereClause"));
	return dml_returning(l, s, out_ctx);
}

static LRange q_merge(Lin *l, const JNode *s)
{
	const JNode *c, *body;
	LRange none = { 0, 0 };

	dml_target(l, s);
	from_item(l, j_get(s, "sourceRelation"));
	cond_discard(l, j_get(s, "joinCondition"));
	for (c = j_first(j_get(s, "mergeWhenClauses")); c != NULL; c = j_next(c)) {
		if (j_type(c, &body) == NULL)
			continue;
		cond_discard(l, j_get(body, "condition"));
		dml_set(l, j_get(body, "targetList"));
		expr_discard(l, j_get(body, "values"), SQL_USE_WRITE_SOURCE);
	}
	return none;
}

/* INSERT / UPDATE / DELETE / MERGE in a scope of their own, WITH first. */
static LRange q_dml(Lin *l, const char *type, const JNode *s, unsigned out_ctx)
{
	LinWork *w = l->w;
	int rels = w->n_rels, ctes = w->n_ctes;
	LRange r;

	l->level++;
	if (j_get(s, "withClause") != NULL)
		lin_with(l, j_get(s, "withClause"));
	if (strcmp(type, "InsertStmt") == 0)
		r = q_insert(l, s, out_ctx);
	else if (strcmp(type, "UpdateStmt") == 0)
		r = q_update(l, s, out_ctx);
	else if (strcmp(type, "DeleteStmt") == 0)
		r = q_delete(l, s, out_ctx);
	else
		r = q_merge(l, s);
	w->n_rels = rels;
	w->n_ctes = ctes;
	l->level--;
	return r;
}

/* COPY t [(cols)] TO ...: the table's columns, DIRECT. */
static LRange q_copy_table(Lin *l, const JNode *s, unsigned ctx)
{
	const JNode *rv = j_get(s, "relation"), *a;
	const char *schema = j_str(rv, "schemaname"), *name = j_str(rv, "relname"), *col;
	int mark = l->w->n_pend, cm;

	if (name == NULL)
		return lin_pend_flush(l, mark);
	if (j_get(s, "attlist") == NULL) {
		cm = l->w->n_coll;
		lin_src_add(l, lin_col_intern(l, schema, name, col_all), ctx);
		lin_pend_push(l, NULL, lin_coll_commit(l, cm), false, true);
		if (l->w->n_pend > mark) /* COPY t TO leaves generated columns out */
			l->w->pend[l->w->n_pend - 1].no_generated = true;
	}
	for (a = j_first(j_get(s, "attlist")); a != NULL; a = j_next(a)) {
		if ((col = j_string_node(a)) == NULL)
			continue;
		cm = l->w->n_coll;
		lin_src_add(l, lin_col_intern(l, schema, name, col), ctx | LIN_BOUND);
		lin_pend_push(l, col, lin_coll_commit(l, cm), false, false);
	}
	return lin_pend_flush(l, mark);
}

/* A statement the walker does not model: references against its `relation`, PREDICATE | WRITE_SOURCE. */
static void q_other(Lin *l, const JNode *s)
{
	LinWork *w = l->w;
	int rels = w->n_rels;

	l->level++;
	if (j_get(j_get(s, "relation"), "relname") != NULL)
		from_rangevar(l, j_get(s, "relation"));
	expr_discard(l, s, SQL_USE_PREDICATE | SQL_USE_WRITE_SOURCE);
	w->n_rels = rels;
	l->level--;
}

/*
 * A statement as a query: its result columns (in w->cols; none for
 * statements without rows), with `out_ctx` for what flows into them.
 */
static LRange q_stmt(Lin *l, const char *type, const JNode *body, unsigned out_ctx)
{
	LRange none = { 0, 0 };

	if (strcmp(type, "SelectStmt") == 0)
		return q_select(l, body, j_get(body, "intoClause") != NULL ? SQL_USE_WRITE_SOURCE : out_ctx);
	if (strcmp(type, "InsertStmt") == 0 || strcmp(type, "UpdateStmt") == 0 || strcmp(type, "DeleteStmt") == 0 ||
	    strcmp(type, "MergeStmt") == 0)
		return q_dml(l, type, body, out_ctx);
	q_other(l, body);
	return none;
}

/* ---- top-level statements ---------------------------------------------------------------- */

/* Copies the statement's outputs (columns [first, first+n) of w->cols) into b->louts. */
static void outputs_record(Lin *l, LRange r)
{
	SqlBuild *b = l->b;
	const LCol *c;
	SqlOutB *o;
	LRange rr;
	int i, k, mark;

	for (i = 0; i < r.n && !b->oom; i++) {
		c = &l->w->cols[r.first + i];
		mark = l->w->n_coll;
		for (k = 0; k < c->n; k++)
			if (b->lcols[b->lsrc[c->first + k]].table != NULL && LGROW(l, l->w->coll, l->w->n_coll, l->w->cap_coll))
				l->w->coll[l->w->n_coll++] = b->lsrc[c->first + k];
		if (!LGROW(l, b->louts, b->n_louts, b->cap_louts))
			return;
		o = &b->louts[b->n_louts++];
		rr = lin_coll_commit(l, mark);
		o->first = rr.first;
		o->n = rr.n;
		o->stmt = l->stmt;
		o->derived = c->derived;
		o->star = c->star;
		o->no_generated = c->no_generated;
	}
}

static const JNode *typed_member(const JNode *s, const char *key, const char **type)
{
	const JNode *body;

	*type = j_type(j_get(s, key), &body);
	return *type != NULL ? body : NULL;
}

/* Walks statement `type`; returns its outputs (none when it returns no rows). */
static LRange lin_top(Lin *l, const char *type, const JNode *s)
{
	LRange none = { 0, 0 }, r;
	const JNode *q;
	const char *qt;
	bool to_file;

	if (strcmp(type, "SelectStmt") == 0) {
		r = q_stmt(l, type, s, SQL_USE_OUTPUT);
		return j_get(s, "intoClause") != NULL ? none : r;
	}
	if (strcmp(type, "InsertStmt") == 0 || strcmp(type, "UpdateStmt") == 0 || strcmp(type, "DeleteStmt") == 0 ||
	    strcmp(type, "MergeStmt") == 0)
		return q_stmt(l, type, s, SQL_USE_OUTPUT);
	if (strcmp(type, "CopyStmt") == 0) {
		to_file = j_get(s, "filename") != NULL;
		if ((q = typed_member(s, "query", &qt)) != NULL)
			r = q_stmt(l, qt, q, to_file ? SQL_USE_WRITE_SOURCE : SQL_USE_OUTPUT);
		else if (!j_true(s, "is_from"))
			r = q_copy_table(l, s, to_file ? SQL_USE_WRITE_SOURCE : SQL_USE_OUTPUT);
		else
			r = none;
		return to_file ? none : r;
	}
	if (strcmp(type, "DeclareCursorStmt") == 0 || strcmp(type, "PrepareStmt") == 0) {
		q = typed_member(s, "query", &qt);
		return q != NULL ? lin_top(l, qt, q) : none;
	}
	if (strcmp(type, "ExplainStmt") == 0 || strcmp(type, "ViewStmt") == 0) {
		if ((q = typed_member(s, "query", &qt)) != NULL)
			(void)q_stmt(l, qt, q, 0);
		return none;
	}
	if (strcmp(type, "CreateTableAsStmt") == 0) {
		if ((q = typed_member(s, "query", &qt)) != NULL)
			(void)q_stmt(l, qt, q, SQL_USE_WRITE_SOURCE);
		return none;
	}
	q_other(l, s);
	return none;
}

void sqlinfo_lineage_stmt(SqlBuild *b, int stmt, const char *type, const JNode *body)
{
	Lin l = { b, b->lin, stmt, 0, 0, NULL, false };
	int outs = b->n_louts;
	LRange r;

	if (l.w == NULL) {
		if ((b->lin = l.w = calloc(1, sizeof(*l.w))) == NULL) {
			b->oom = true;
			return;
		}
	}
	l.w->n_cols = l.w->n_pend = l.w->n_rels = l.w->n_ctes = l.w->n_coll = 0;
	r = lin_top(&l, type, body);
	if (l.stmt_uses > 0)
		outputs_record(&l, r);
	if (l.stmt_uses == 0)
		b->n_louts = outs;
}
