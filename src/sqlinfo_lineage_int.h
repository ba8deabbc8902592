/* SPDX-License-Identifier: MIT */
/*
 * Internal to the column lineage of the sqlinfo module: the state of the
 * walk of one statement (the scopes of FROM relations and CTEs, the columns
 * of derived relations and query results, the collections of sources) and
 * the functions of sqlinfo_scope.c that keep it and resolve column
 * references against it, for the walk over statements in
 * sqlinfo_lineage.c (which describes the model).
 */
#ifndef PGVEIL_SQLINFO_LINEAGE_INT_H
#define PGVEIL_SQLINFO_LINEAGE_INT_H

#include "sqlinfo_int.h"

static const char col_all[] = SQL_COLUMN_ALL; /* the column name standing for every column of a table */

/* Bits of a context that never reach SqlColumnUse.contexts. */
#define LIN_BOUND (1u << 30)     /* this source is bound (SqlColumnUse.bound) */
#define LIN_COND (1u << 29)      /* walking a condition: its comparisons compare plain columns, no EXPRESSION */
#define LIN_INTERNAL (LIN_BOUND | LIN_COND)

/* A column of a query's result or of a derived relation. */
typedef struct LCol {
	const char *name;        /* NULL: unknown, matches every name */
	int first, n;            /* sources: b->lsrc[first .. first+n) */
	bool derived;
	bool star;               /* zero or more columns */
	bool no_generated;       /* a star of COPY t TO: no generated columns */
} LCol;

/* A relation in a FROM scope. */
typedef struct LRel {
	const char *name;        /* reference name (alias, table, CTE, function); NULL: an unaliased join */
	const char *schema;      /* base table */
	const char *table;       /* base table; NULL for derived relations and joins */
	const JNode *colaliases; /* base table: its column alias list */
	int cfirst, ncols;       /* derived: columns in w->cols */
	int kfirst, klast;       /* join: its members, rels [kfirst, klast) */
	int level;               /* query nesting level of its scope */
	bool hidden;             /* a sibling of a non-LATERAL subquery being walked */
	bool uncertain;          /* derived: column names unknown, every reference reads everything */
	bool is_join;
	bool merged;             /* member of a FULL JOIN USING / NATURAL: unqualified references are derived */
} LRel;

typedef struct LCte {
	const char *name;
	int cfirst, ncols;       /* columns in w->cols */
	bool uncertain;
} LCte;

struct LinWork {
	LCol *cols;              /* columns of derived relations and query results */
	int n_cols, cap_cols;
	LCol *pend;              /* outputs of the queries being walked (a stack) */
	int n_pend, cap_pend;
	LRel *rels;              /* scopes (a stack) */
	int n_rels, cap_rels;
	LCte *ctes;              /* CTEs in scope (a stack) */
	int n_ctes, cap_ctes;
	int *coll;               /* sources being collected (a stack of collections) */
	int n_coll, cap_coll;
	uint32_t *mark;          /* per column: last deduplication epoch */
	int cap_mark;
	uint32_t epoch;
	uint32_t *hash;          /* interned columns: index+1, open addressing */
	size_t hash_cap, hash_used;
	const JNode **rowcur;    /* VALUES: each row's next item */
	size_t cap_rowcur;
};

/* The walk of one statement. */
typedef struct Lin {
	SqlBuild *b;
	LinWork *w;
	int stmt;
	int level;               /* current query nesting level */
	int stmt_uses;           /* real column uses recorded for the statement */
	const JNode *windows;    /* WINDOW clause of the current query */
	bool nobind;             /* an unqualified name being resolved may be no column at all (an output name) */
} Lin;

typedef struct LRange {
	int first, n;
} LRange;

/* ---- storage (sqlinfo_scope.c) ---- */

/*
 * Makes *arr (of *cap elements of `elem` bytes) hold `need`; false when out
 * of memory or past the lineage's size budget (b->oom set, and b->error for
 * the budget: the statement is then refused as too complex).
 */
bool lin_grow(SqlBuild *b, void **arr, int *cap, int need, size_t elem);

#define LGROW(l, arr, n, cap) lin_grow((l)->b, (void **)&(arr), &(cap), (n) + 1, sizeof(*(arr)))

/* Counts n steps of the analysis' budget (sqlinfo_work); false once it is spent. */
bool lin_work(Lin *l, int n);

/* strcmp equality where NULL equals only NULL. */
bool lin_str_eq(const char *a, const char *b);

/* Appends source column (schema, table, column) without interning it; its index, or -1. */
int lin_col_append(Lin *l, const char *schema, const char *table, const char *column);

/* The index of column (schema, table, column), interned; -1 when out of memory. */
int lin_col_intern(Lin *l, const char *schema, const char *table, const char *column);

/* ---- collecting sources (sqlinfo_scope.c) ---- */

/* A source (a column index, -1 ignored) flows into the expression being collected, in contexts `ctx`. */
void lin_src_add(Lin *l, int col, unsigned ctx);

/* Sources b->lsrc[first .. first+n) flow into the collection. */
void lin_flow_range(Lin *l, int first, int n, unsigned ctx);

/* The sources of n columns flow into the collection. */
void lin_flow_cols(Lin *l, const LCol *cols, int n, unsigned ctx);

/* Ends the collection begun at `mark` (w->n_coll then): its sources, deduplicated, become a range of b->lsrc. */
LRange lin_coll_commit(Lin *l, int mark);

/* Adds a pending output of the query being walked, over sources `r`. */
void lin_pend_push(Lin *l, const char *name, LRange r, bool derived, bool star);

/* Moves the pending outputs above `mark` into w->cols; returns their range there. */
LRange lin_pend_flush(Lin *l, int mark);

/* ---- scopes and column references (sqlinfo_scope.c) ---- */

/* Pushes a relation named `name` on the current scope; NULL when out of memory. */
LRel *lin_rel_push(Lin *l, const char *name);

/*
 * Copies columns [first, first+n) of w->cols renamed by the String list
 * `aliases`; returns the copy's first index (`first` when there are no
 * aliases). Sets *uncertain when the names cannot be lined up with the
 * columns.
 */
int lin_cols_rename(Lin *l, int first, int n, const JNode *aliases, bool *uncertain);

/* Pushes a derived relation over columns [first, first+n), renamed by `alias`'s colnames. */
void lin_rel_push_derived(Lin *l, const char *name, int first, int n, const JNode *alias, bool uncertain);

/* The relation named `name` (and, for a base table, in `schema`), innermost first; NULL when none. */
LRel *lin_rel_find(Lin *l, const char *schema, const char *name);

/*
 * Reads column `name` of relation r (a join: of its members). Returns 1 when
 * a column of that name was found for sure, 0 when only stars, unnamed
 * columns or a base table (which may have any column) matched, -1 when
 * nothing did; *derived is set when what was read is not DIRECT. `bound`:
 * the reference names r for sure.
 */
int lin_rel_column(Lin *l, const LRel *r, const char *name, unsigned ctx, bool *derived, bool bound);

/* Reads the whole row of relation r (every column of it), in ctx | SQL_USE_WHOLE_ROW. */
void lin_rel_whole_row(Lin *l, const LRel *r, unsigned ctx);

/* Whole rows of every visible relation (the last resort of a name nothing holds). */
void lin_all_whole_rows(Lin *l, unsigned ctx);

/*
 * Counts the fields of a ColumnRef (up to a `*`, which sets *star) and puts
 * the first four names in f (NULL for a field that is not a name).
 */
int lin_fields_count(const JNode *fields, const char **f, bool *star);

/* A ColumnRef inside an expression, read in ctx; returns true when what it reads is not DIRECT. */
bool lin_expr_colref(Lin *l, const JNode *ref, unsigned ctx);

#endif
