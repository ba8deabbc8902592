/* SPDX-License-Identifier: MIT */
/*
 * The scopes of the sqlinfo module's column lineage (the walk over
 * statements and the model are in sqlinfo_lineage.c): the interned source
 * columns and each statement's column uses, the collections of sources an
 * expression gathers, the stack of FROM relations and the columns of
 * derived ones, and the rules that resolve a column reference (`c`, `t.c`,
 * `s.t.c`, `t.*`, a relation as a value, attribute notation) to the
 * relations it may come from, innermost scope outwards. Also the reset and
 * free of the lineage's memory.
 */
#include "sqlinfo_lineage_int.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* ---- storage ------------------------------------------------------------------ */

/*
 * No lineage array grows past this many entries. Unqualified columns count
 * against every table in scope, so columns x tables can grow quadratically
 * with the text; past the budget the statement is refused (fail closed)
 * rather than costing a worker seconds and gigabytes.
 */
#define LIN_MAX_ENTRIES (256 * 1024)

bool lin_grow(SqlBuild *b, void **arr, int *cap, int need, size_t elem)
{
	int ncap;
	void *p;

	if (need <= *cap)
		return true;
	if (need > LIN_MAX_ENTRIES) {
		b->error = "statement too complex to analyse";
		b->oom = true; /* stops every walk; sqlinfo refuses the statement with b->error */
		return false;
	}
	ncap = *cap ? *cap * 2 : 32;
	if (ncap < need)
		ncap = need;
	if ((p = realloc(*arr, (size_t)ncap * elem)) == NULL) {
		b->oom = true;
		return false;
	}
	*arr = p;
	*cap = ncap;
	return true;
}


/* Counts n steps of the analysis' budget (sqlinfo_work); false once it is spent. */
bool lin_work(Lin *l, int n)
{
	return sqlinfo_work(l->b, n > 0 ? (size_t)n : 0);
}

static uint32_t lhash(const char *schema, const char *table, const char *column)
{
	const char *parts[3] = { schema, table, column };
	uint32_t h = 2166136261u;
	const char *s;
	int i;

	for (i = 0; i < 3; i++) {
		for (s = parts[i]; s != NULL && *s != '\0'; s++)
			h = (h ^ (unsigned char)*s) * 16777619u;
		h = (h ^ (uint32_t)(parts[i] != NULL ? 0xfe : 0xff)) * 16777619u;
	}
	return h;
}

bool lin_str_eq(const char *a, const char *b)
{
	return (a == NULL || b == NULL) ? a == b : strcmp(a, b) == 0;
}

static bool hash_grow(Lin *l)
{
	LinWork *w = l->w;
	size_t ncap = w->hash_cap ? w->hash_cap * 2 : 64, i, j;
	uint32_t *ns = calloc(ncap, sizeof(*ns));
	const SqlColB *c;

	if (ns == NULL) {
		l->b->oom = true;
		return false;
	}
	for (i = 0; i < w->hash_cap; i++) {
		if (w->hash[i] == 0)
			continue;
		c = &l->b->lcols[w->hash[i] - 1];
		for (j = lhash(c->schema, c->table, c->column) & (ncap - 1); ns[j] != 0; j = (j + 1) & (ncap - 1))
			;
		ns[j] = w->hash[i];
	}
	free(w->hash);
	w->hash = ns;
	w->hash_cap = ncap;
	return true;
}

int lin_col_append(Lin *l, const char *schema, const char *table, const char *column)
{
	SqlBuild *b = l->b;
	SqlColB *c;

	if (!LGROW(l, b->lcols, b->n_lcols, b->cap_lcols) ||
	    !lin_grow(b, (void **)&l->w->mark, &l->w->cap_mark, b->n_lcols + 1, sizeof(uint32_t)))
		return -1;
	c = &b->lcols[b->n_lcols];
	c->schema = schema;
	c->table = table;
	c->column = column;
	c->use_stmt = -1;
	c->use = -1;
	l->w->mark[b->n_lcols] = 0;
	return b->n_lcols++;
}

/* The index of column (schema, table, column), interned; -1 when out of memory. */
int lin_col_intern(Lin *l, const char *schema, const char *table, const char *column)
{
	LinWork *w = l->w;
	const SqlColB *c;
	size_t j;
	int id;

	if ((w->hash_used + 1) * 2 > w->hash_cap && !hash_grow(l))
		return -1;
	for (j = lhash(schema, table, column) & (w->hash_cap - 1); w->hash[j] != 0; j = (j + 1) & (w->hash_cap - 1)) {
		c = &l->b->lcols[w->hash[j] - 1];
		if (lin_str_eq(c->schema, schema) && strcmp(c->table, table) == 0 && strcmp(c->column, column) == 0)
			return (int)w->hash[j] - 1;
	}
	if ((id = lin_col_append(l, schema, table, column)) < 0)
		return -1;
	w->hash[j] = (uint32_t)id + 1;
	w->hash_used++;
	return id;
}

/* Records that the statement reads column `col` in contexts `ctx` (LIN_BOUND: a bound reference). */
static void use_add(Lin *l, int col, unsigned ctx)
{
	SqlBuild *b = l->b;
	SqlColB *c = &b->lcols[col];
	bool bound = (ctx & LIN_BOUND) != 0;

	ctx &= ~LIN_INTERNAL;
	if (c->use_stmt == l->stmt) {
		b->luses[c->use].contexts |= ctx;
		b->luses[c->use].bound |= bound;
		return;
	}
	if (!LGROW(l, b->luses, b->n_luses, b->cap_luses))
		return;
	b->luses[b->n_luses].stmt = l->stmt;
	b->luses[b->n_luses].col = col;
	b->luses[b->n_luses].contexts = ctx;
	b->luses[b->n_luses].bound = bound;
	c->use_stmt = l->stmt;
	c->use = b->n_luses++;
	if (c->table != NULL)
		l->stmt_uses++;
}

/* ---- collecting sources ---------------------------------------------------------- */

/* A source flows into the expression being collected, in contexts `ctx`. */
void lin_src_add(Lin *l, int col, unsigned ctx)
{
	LinWork *w = l->w;

	if (col < 0 || !lin_work(l, 1))
		return;
	use_add(l, col, ctx);
	if (LGROW(l, w->coll, w->n_coll, w->cap_coll))
		w->coll[w->n_coll++] = col;
}

void lin_flow_range(Lin *l, int first, int n, unsigned ctx)
{
	int i;

	for (i = 0; i < n; i++)
		lin_src_add(l, l->b->lsrc[first + i], ctx);
}

void lin_flow_cols(Lin *l, const LCol *cols, int n, unsigned ctx)
{
	int i;

	for (i = 0; i < n; i++)
		lin_flow_range(l, cols[i].first, cols[i].n, ctx);
}

/* Ends the collection begun at `mark`: its sources, deduplicated, become a range of b->lsrc. */
LRange lin_coll_commit(Lin *l, int mark)
{
	LinWork *w = l->w;
	SqlBuild *b = l->b;
	LRange r = { b->n_lsrc, 0 };
	int i, c;

	if (++w->epoch == 0) {
		memset(w->mark, 0, (size_t)w->cap_mark * sizeof(*w->mark));
		w->epoch = 1;
	}
	for (i = mark; i < w->n_coll; i++) {
		c = w->coll[i];
		if (w->mark[c] == w->epoch)
			continue;
		w->mark[c] = w->epoch;
		if (!LGROW(l, b->lsrc, b->n_lsrc, b->cap_lsrc))
			break;
		b->lsrc[b->n_lsrc++] = c;
		r.n++;
	}
	w->n_coll = mark;
	return r;
}

void lin_pend_push(Lin *l, const char *name, LRange r, bool derived, bool star)
{
	LinWork *w = l->w;
	LCol *c;

	if (!LGROW(l, w->pend, w->n_pend, w->cap_pend))
		return;
	c = &w->pend[w->n_pend++];
	c->name = name;
	c->first = r.first;
	c->n = r.n;
	c->derived = derived;
	c->star = star;
	c->no_generated = false;
}

/* Moves the pending outputs above `mark` into w->cols; returns their range there. */
LRange lin_pend_flush(Lin *l, int mark)
{
	LinWork *w = l->w;
	LRange r = { w->n_cols, 0 };
	int n = w->n_pend - mark;

	if (n > 0 && lin_grow(l->b, (void **)&w->cols, &w->cap_cols, w->n_cols + n, sizeof(LCol))) {
		memcpy(w->cols + w->n_cols, w->pend + mark, (size_t)n * sizeof(LCol));
		w->n_cols += n;
		r.n = n;
	}
	w->n_pend = mark;
	return r;
}

/* ---- scopes ---------------------------------------------------------------------- */

LRel *lin_rel_push(Lin *l, const char *name)
{
	LinWork *w = l->w;
	LRel *r;

	if (!LGROW(l, w->rels, w->n_rels, w->cap_rels))
		return NULL;
	r = &w->rels[w->n_rels++];
	memset(r, 0, sizeof(*r));
	r->name = name;
	r->level = l->level;
	return r;
}

static bool name_in_list(Lin *l, const JNode *list, const char *name)
{
	const JNode *e;
	const char *s;

	for (e = j_first(list); e != NULL && lin_work(l, 1); e = j_next(e))
		if ((s = j_string_node(e)) != NULL && strcmp(s, name) == 0)
			return true;
	return false;
}

/*
 * Copies columns [first, first+n) of w->cols renamed by the String list
 * `aliases`; returns the copy's first index. Sets *uncertain when the names
 * cannot be lined up with the columns (a star among the renamed ones).
 */
int lin_cols_rename(Lin *l, int first, int n, const JNode *aliases, bool *uncertain)
{
	LinWork *w = l->w;
	const JNode *a = j_first(aliases);
	int start = w->n_cols, i;
	LCol c;

	if (a == NULL)
		return first;
	for (i = 0; i < n; i++) {
		if (!LGROW(l, w->cols, w->n_cols, w->cap_cols))
			return first;
		c = w->cols[first + i];
		if (c.star && a != NULL)
			*uncertain = true;
		if (a != NULL && !c.star) {
			c.name = j_string_node(a);
			a = j_next(a);
		}
		w->cols[w->n_cols++] = c;
	}
	if (a != NULL)
		*uncertain = true; /* more names than known columns */
	return start;
}

/* A derived relation over columns [first, first+n), renamed by `alias`'s colnames. */
void lin_rel_push_derived(Lin *l, const char *name, int first, int n, const JNode *alias, bool uncertain)
{
	LRel *r;

	first = lin_cols_rename(l, first, n, j_get(alias, "colnames"), &uncertain);
	if ((r = lin_rel_push(l, name)) == NULL)
		return;
	r->cfirst = first;
	r->ncols = n;
	r->uncertain = uncertain;
}

/* The relation named `name` (and, for a base table, in `schema`), innermost first; NULL when none. */
LRel *lin_rel_find(Lin *l, const char *schema, const char *name)
{
	LinWork *w = l->w;
	LRel *r;
	int i;

	if (!lin_work(l, w->n_rels))
		return NULL;
	for (i = w->n_rels - 1; i >= 0; i--) {
		r = &w->rels[i];
		if (r->hidden || r->name == NULL || strcmp(r->name, name) != 0)
			continue;
		if (schema == NULL)
			return r;
		/* s.t: a table named t not renamed by an alias, in schema s or unqualified (search_path) */
		if (r->table != NULL && strcmp(r->table, name) == 0 && (r->schema == NULL || strcmp(r->schema, schema) == 0))
			return r;
	}
	return NULL;
}

/* ---- resolving column references -------------------------------------------------- */

/* Reads column `name` of base table r; `bound`: the reference names r for sure. */
static void base_column(Lin *l, const LRel *r, const char *name, unsigned ctx, bool bound)
{
	bool renamed = r->colaliases != NULL && name_in_list(l, r->colaliases, name);

	lin_src_add(l, lin_col_intern(l, r->schema, r->table, renamed ? col_all : name),
		ctx | (bound && !renamed ? LIN_BOUND : 0));
}

/* True when column c of a derived relation may be one named `name`: that name, a star, unnamed. */
static bool col_may_be(const LCol *c, const char *name)
{
	return c->star || c->name == NULL || strcmp(c->name, name) == 0;
}

/* A DIRECT star of one table (its one source is table.*): the id of that source, else -1. */
static int direct_star(Lin *l, const LCol *c)
{
	int id;

	if (!c->star || c->derived || c->n != 1)
		return -1;
	id = l->b->lsrc[c->first];
	return strcmp(l->b->lcols[id].column, col_all) == 0 ? id : -1;
}

/*
 * Reads column `name` of derived relation r. Returns 1 when a column of that
 * name was found for sure, 0 when only stars or unnamed columns matched, -1
 * when nothing did; *derived is set when what was read is not DIRECT.
 * `bound`: the reference names r for sure; a DIRECT star that is the only
 * column that may be `name` then binds the table's column.
 */
static int derived_column(Lin *l, const LRel *r, const char *name, unsigned ctx, bool *derived, bool bound)
{
	const LCol *c;
	int i, found = -1, id, may = 0;

	if (r->uncertain) {
		lin_flow_cols(l, l->w->cols + r->cfirst, r->ncols, ctx);
		*derived = true;
		return 0;
	}
	if (!lin_work(l, 2 * r->ncols))
		return -1;
	for (i = 0; i < r->ncols; i++)
		may += col_may_be(&l->w->cols[r->cfirst + i], name);
	for (i = 0; i < r->ncols; i++) {
		c = &l->w->cols[r->cfirst + i];
		if (!c->star && c->name != NULL && strcmp(c->name, name) == 0) {
			lin_flow_range(l, c->first, c->n, ctx);
			*derived |= c->derived;
			found = 1;
		} else if (c->star || c->name == NULL) {
			/* a DIRECT star of one table: that table's column `name` */
			if ((id = direct_star(l, c)) >= 0)
				lin_src_add(l, lin_col_intern(l, l->b->lcols[id].schema, l->b->lcols[id].table, name),
					ctx | (bound && may == 1 ? LIN_BOUND : 0));
			else {
				lin_flow_range(l, c->first, c->n, ctx);
				*derived = true;
			}
			if (found < 0)
				found = 0;
		}
	}
	return found;
}

/* Column `name` of relation r; returns as derived_column (a base table: 0). */
int lin_rel_column(Lin *l, const LRel *r, const char *name, unsigned ctx, bool *derived, bool bound)
{
	int i, best = -1, f;

	if (r->table != NULL) {
		base_column(l, r, name, ctx, bound);
		if (r->merged)
			*derived = true;
		return 0;
	}
	if (!r->is_join)
		return derived_column(l, r, name, ctx, derived, bound);
	for (i = r->kfirst; i < r->klast; i++) { /* a join's columns: any member's */
		if (l->w->rels[i].is_join)
			continue;
		f = lin_rel_column(l, &l->w->rels[i], name, ctx, derived, false);
		best = f > best ? f : best;
	}
	return best;
}

/* Whether relation r (not a join) may have column `name`, as lin_rel_column would answer, reading nothing. */
static int rel_may_hold(Lin *l, const LRel *r, const char *name)
{
	int i, best = -1;

	if (r->table != NULL || r->uncertain)
		return 0;
	if (!lin_work(l, r->ncols))
		return -1;
	for (i = 0; i < r->ncols; i++) {
		const LCol *c = &l->w->cols[r->cfirst + i];

		if (!c->star && c->name != NULL && strcmp(c->name, name) == 0)
			return 1;
		if (col_may_be(c, name))
			best = 0;
	}
	return best;
}

/* `t.c`: column `name` of relation r; nothing matched reads all of r, DERIVED. */
static bool qualified_column(Lin *l, const LRel *r, const char *name, unsigned ctx)
{
	bool derived = false;

	if (lin_rel_column(l, r, name, ctx, &derived, true) < 0) {
		lin_rel_whole_row(l, r, ctx);
		derived = true;
	}
	return derived;
}

/* Whole rows of every visible relation (the last resort of a name nothing holds). */
void lin_all_whole_rows(Lin *l, unsigned ctx)
{
	int i;

	if (!lin_work(l, l->w->n_rels))
		return;
	for (i = 0; i < l->w->n_rels; i++)
		if (!l->w->rels[i].hidden && !l->w->rels[i].is_join)
			lin_rel_whole_row(l, &l->w->rels[i], ctx);
}

/*
 * The relations an unqualified `name` may come from, innermost scope
 * outwards, stopping after a scope where a derived relation has it for
 * sure. When `record`, reads the column of each (bound for relation index
 * `bind`); otherwise reads nothing. Returns how many there are; *last is the
 * index of the last one.
 */
static int unqualified_scan(Lin *l, const char *name, unsigned ctx, bool record, int bind, bool *derived,
			    int *last)
{
	LinWork *w = l->w;
	bool sure = false;
	int i, level = INT_MAX, f, n = 0;
	LRel *r;

	if (!lin_work(l, w->n_rels))
		return 0;
	for (i = w->n_rels - 1; i >= 0; i--) {
		r = &w->rels[i];
		if (r->level != level) {
			if (sure)
				break;
			level = r->level;
		}
		if (r->hidden || r->is_join)
			continue;
		f = record ? lin_rel_column(l, r, name, ctx, derived, i == bind) : rel_may_hold(l, r, name);
		if (f >= 0) {
			n++;
			*last = i;
		}
		if (f > 0)
			sure = true;
	}
	return n;
}

/* Unqualified `name`: every relation that may hold it, innermost scope outwards. */
static bool unqualified_column(Lin *l, const char *name, unsigned ctx)
{
	bool derived = false;
	int last = -1, bind = -1;

	/* one base table alone may hold it: the reference is bound to it */
	if (!l->nobind && unqualified_scan(l, name, 0, false, -1, NULL, &last) == 1 &&
	    l->w->rels[last].table != NULL && !l->w->rels[last].merged)
		bind = last;
	if (unqualified_scan(l, name, ctx, true, bind, &derived, &last) == 0) {
		lin_all_whole_rows(l, ctx | SQL_USE_WHOLE_ROW);
		derived = true;
	}
	return derived;
}

void lin_rel_whole_row(Lin *l, const LRel *r, unsigned ctx)
{
	int i;

	ctx |= SQL_USE_WHOLE_ROW;
	if (r->table != NULL) {
		lin_src_add(l, lin_col_intern(l, r->schema, r->table, col_all), ctx);
	} else if (r->is_join) {
		for (i = r->kfirst; i < r->klast; i++)
			if (!l->w->rels[i].is_join)
				lin_rel_whole_row(l, &l->w->rels[i], ctx);
	} else {
		lin_flow_cols(l, l->w->cols + r->cfirst, r->ncols, ctx);
	}
}

int lin_fields_count(const JNode *fields, const char **f, bool *star)
{
	const JNode *e, *body;
	int n = 0;

	*star = false;
	for (e = j_first(fields); e != NULL; e = j_next(e)) {
		const char *t = j_type(e, &body);

		if (t != NULL && strcmp(t, "A_Star") == 0) {
			*star = true;
			break;
		}
		if (n < 4)
			f[n] = j_string_node(e);
		n++;
	}
	return n;
}

/*
 * `t.f` is also PostgreSQL's notation for f(t) when t has no column f, so
 * `u.row_to_json` returns the whole row. Without the catalog pgveil cannot
 * tell a column from such a call: when f is a built-in that takes a whole
 * row, the reference counts as the column and as the whole row (DERIVED).
 * (A user function taking the row type needs the catalog to be seen.)
 */
static bool attribute_call(Lin *l, const LRel *r, const char *name, unsigned ctx)
{
	if (!sqlinfo_takes_whole_row(name))
		return false;
	(void)qualified_column(l, r, name, ctx);
	lin_rel_whole_row(l, r, ctx);
	return true;
}

/* A ColumnRef inside an expression; returns true when what it reads is not DIRECT. */
bool lin_expr_colref(Lin *l, const JNode *ref, unsigned ctx)
{
	const char *f[4] = { NULL, NULL, NULL, NULL };
	bool star, derived, nobind;
	int n = lin_fields_count(j_get(ref, "fields"), f, &star);
	const LRel *r;

	if (n > 4 || (n > 0 && (f[0] == NULL || f[n - 1] == NULL))) {
		lin_all_whole_rows(l, ctx);
		return true;
	}
	if (star) { /* t.* (or *) inside an expression: a whole row */
		if (n == 0)
			lin_all_whole_rows(l, ctx);
		/* the inner tests cannot fail here (n > 0), but -O2 cannot see it and warns without them */
		else if ((r = lin_rel_find(l, n >= 2 ? f[n >= 2 ? n - 2 : 0] : NULL, f[n > 0 ? n - 1 : 0])) != NULL)
			lin_rel_whole_row(l, r, ctx);
		else
			(void)unqualified_column(l, f[0], ctx);
		return true;
	}
	if (n == 4) { /* database.schema.table.column */
		f[0] = f[1];
		f[1] = f[2];
		f[2] = f[3];
	}
	if (n == 1) {
		r = lin_rel_find(l, NULL, f[0]);
		nobind = l->nobind;
		l->nobind |= r != NULL; /* a relation's name: maybe no column at all */
		derived = unqualified_column(l, f[0], ctx);
		l->nobind = nobind;
		if (r != NULL) {
			lin_rel_whole_row(l, r, ctx); /* `t` as a value */
			derived = true;
		}
		return derived;
	}
	if (n == 2) {
		if ((r = lin_rel_find(l, NULL, f[0])) != NULL)
			return attribute_call(l, r, f[1], ctx) || qualified_column(l, r, f[1], ctx);
		(void)unqualified_column(l, f[0], ctx); /* a composite column's field */
		return true;
	}
	if ((r = lin_rel_find(l, f[0], f[1])) != NULL)
		return attribute_call(l, r, f[2], ctx) || qualified_column(l, r, f[2], ctx);
	if ((r = lin_rel_find(l, NULL, f[0])) != NULL) /* t.composite.field */
		(void)qualified_column(l, r, f[1], ctx);
	else
		(void)unqualified_column(l, f[0], ctx);
	return true;
}

/* ---- memory ------------------------------------------------------------------------ */

void sqlinfo_lineage_reset(SqlBuild *b)
{
	LinWork *w = b->lin;

	b->n_lcols = b->n_luses = b->n_louts = b->n_lsrc = 0;
	if (w == NULL)
		return;
	if (w->hash_cap > 4096) {
		free(w->hash);
		w->hash = NULL;
		w->hash_cap = 0;
	} else if (w->hash != NULL) {
		memset(w->hash, 0, w->hash_cap * sizeof(*w->hash));
	}
	w->hash_used = 0;
	if (w->cap_rowcur > 4096) {
		free(w->rowcur);
		w->rowcur = NULL;
		w->cap_rowcur = 0;
	}
}

void sqlinfo_lineage_free(SqlBuild *b)
{
	LinWork *w = b->lin;

	free(b->lcols);
	free(b->luses);
	free(b->louts);
	free(b->lsrc);
	if (w != NULL) {
		free(w->cols);
		free(w->pend);
		free(w->rels);
		free(w->ctes);
		free(w->coll);
		free(w->mark);
		free(w->hash);
		free(w->rowcur);
		free(w);
	}
	b->lin = NULL;
}
