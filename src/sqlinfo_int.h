/* SPDX-License-Identifier: MIT */
/*
 * Internal to the sqlinfo module: the builder that the parse-tree walker
 * (sqlinfo_tree.c) fills and that sqlinfo.c turns into one StmtInfo block.
 * The walker reads libpg_query's JSON parse tree as text; it never sees
 * pg_query.h. All strings the builder points to live in the JSON buffer
 * (decoded in place) or in the builder's own pool, until the next reset.
 */
#ifndef PGVEIL_SQLINFO_INT_H
#define PGVEIL_SQLINFO_INT_H

#include <string.h>

#include "pgveil/sqlinfo.h"

/* A part being built. */
typedef struct SqlPartB {
	uint32_t classes;        /* StmtClass bits */
	int stmt;                /* top-level statement index */
	bool side_effect;        /* something in it keeps it from being READ */
	bool want_read;          /* READ unless side_effect (SELECT, EXPLAIN) */
	int n_tables;            /* deduplicated counts */
	int n_functions;
} SqlPartB;

typedef struct SqlTableB {
	int part;
	const char *schema;      /* NULL when unqualified */
	const char *name;
	int access;              /* SQL_ACCESS_* */
} SqlTableB;

typedef struct SqlFuncB {
	int part;
	uint32_t name;           /* offset of the NUL-terminated name in the pool */
} SqlFuncB;

typedef struct SqlStmtB {
	int offset;              /* RawStmt stmt_location */
	int len;                 /* RawStmt stmt_len, 0 = to the end */
	SqlCopyOut copy;         /* COPY ... TO STDOUT; copy.null_string unused (see copy_null) */
	const char *copy_null;   /* the NULL option's string (in the JSON buffer), NULL when not given */
} SqlStmtB;

typedef struct SqlPrepB {
	SqlPrepOp op;
	const char *name;        /* NULL for DEALLOCATE ALL */
	int part_first;
	int n_parts;
} SqlPrepB;

/* A source column (interned per analysis); `table` NULL marks a placeholder never reported. */
typedef struct SqlColB {
	const char *schema;      /* NULL when unqualified */
	const char *table;
	const char *column;      /* name or "*" */
	int use_stmt;            /* statement of `use`, -1 = none yet */
	int use;                 /* its entry in SqlBuild.luses for that statement */
} SqlColB;

typedef struct SqlUseB {
	int stmt;
	int col;                 /* index in lcols */
	unsigned contexts;       /* SQL_USE_* */
	bool bound;              /* SqlColumnUse.bound */
} SqlUseB;

typedef struct SqlOutB {
	int stmt;
	int first, n;            /* sources: column indexes lsrc[first .. first+n) */
	bool derived;
	bool star;
	bool no_generated;       /* SqlOutput.no_generated */
} SqlOutB;

typedef struct LinWork LinWork;

/*
 * Growable arrays, kept across analyses by the thread (reset, not freed).
 * `oom` is sticky: once an append failed, the result is discarded.
 */
typedef struct JChunk JChunk;

typedef struct SqlBuild {
	JChunk *jchunks;         /* arena of JSON nodes (sqlinfo_json.c) */
	JChunk *jcur;            /* chunk being filled */
	size_t n_jnodes;         /* nodes of the tree being walked */
	size_t work, work_max;   /* steps the walks took, and their budget (sqlinfo_work) */
	SqlPartB *parts;
	int n_parts, cap_parts;
	SqlTableB *tables;
	int n_tables, cap_tables;
	SqlFuncB *funcs;
	int n_funcs, cap_funcs;
	SqlStmtB *stmts;
	int n_stmts, cap_stmts;
	SqlPrepB *preps;
	int n_preps, cap_preps;
	char *pool;              /* function names ("schema.name") */
	size_t pool_len, pool_cap;
	uint32_t *set;           /* open-addressing dedup set: index+1 of a table (even) or function (odd) */
	size_t set_cap, set_used;
	const char **ctes;       /* CTE names in scope while walking */
	int n_ctes, cap_ctes;
	SqlColB *lcols;          /* lineage (sqlinfo_lineage.c): interned source columns */
	int n_lcols, cap_lcols;
	SqlUseB *luses;          /* column uses, grouped by statement */
	int n_luses, cap_luses;
	SqlOutB *louts;          /* output columns, grouped by statement */
	int n_louts, cap_louts;
	int *lsrc;               /* source lists (column indexes) */
	int n_lsrc, cap_lsrc;
	LinWork *lin;            /* the lineage walker's scratch */
	bool literal_sensitive;  /* the result depends on a literal's value */
	bool changes_lexical;    /* sets standard_conforming_strings or client_encoding to a value pgveil cannot read under */
	bool shadows_builtins;   /* sets a search_path with a schema before pg_catalog (or one not known) */
	bool changes_search_path; /* may change what an unqualified name resolves to in this session (see StmtInfo) */
	bool oom;
	const char *error;       /* static message when the tree could not be walked (too deep, malformed) */
} SqlBuild;

/* ---- the JSON tree (sqlinfo_json.c) ---- */

/*
 * Deeper JSON than this is refused as "too deeply nested" (the parser and
 * the walker recurse along it). 4000 levels (some 800 nested subqueries, or
 * 1600 chained operators) stay within 2 MB of stack even under ASan.
 */
#define SQLINFO_MAX_DEPTH 4000

enum { J_NULL, J_FALSE, J_TRUE, J_NUM, J_STR, J_OBJ, J_ARR };

typedef struct JNode {
	const char *key;         /* member name in an object, NULL in an array */
	const char *str;         /* J_STR: decoded, NUL-terminated in place */
	long long num;           /* J_NUM */
	struct JNode *child;     /* first member or element */
	struct JNode *next;      /* next sibling */
	uint8_t type;            /* J_* */
} JNode;

/*
 * Parses `text` (decoding strings in place) into nodes from b's arena;
 * returns the root, or NULL with b->oom or b->error (malformed, too deep).
 */
JNode *sqlinfo_json_parse(SqlBuild *b, char *text);

/* Makes the arena's nodes free for the next parse (keeps some of its memory). */
void sqlinfo_json_reset(SqlBuild *b);
void sqlinfo_json_free(SqlBuild *b);

static inline const JNode *j_first(const JNode *n)
{
	return n != NULL ? n->child : NULL;
}

static inline const JNode *j_next(const JNode *n)
{
	return n->next;
}

/* The member `key` of an object, or NULL. */
static inline const JNode *j_get(const JNode *obj, const char *key)
{
	const JNode *m;

	if (obj == NULL || obj->type != J_OBJ)
		return NULL;
	for (m = obj->child; m != NULL; m = m->next)
		if (strcmp(m->key, key) == 0)
			return m;
	return NULL;
}

static inline const char *j_str(const JNode *obj, const char *key)
{
	const JNode *m = j_get(obj, key);

	return (m != NULL && m->type == J_STR) ? m->str : NULL;
}

static inline long long j_num(const JNode *obj, const char *key)
{
	const JNode *m = j_get(obj, key);

	return (m != NULL && m->type == J_NUM) ? m->num : 0;
}

static inline bool j_true(const JNode *obj, const char *key)
{
	const JNode *m = j_get(obj, key);

	return m != NULL && m->type == J_TRUE;
}

/* True when `n` is the string `s`. */
static inline bool j_is(const JNode *n, const char *s)
{
	return n != NULL && n->type == J_STR && strcmp(n->str, s) == 0;
}

/* Number of elements of an array node (0 for anything else). */
static inline int j_len(const JNode *arr)
{
	const JNode *e;
	int n = 0;

	if (arr == NULL || arr->type != J_ARR)
		return 0;
	for (e = arr->child; e != NULL; e = e->next)
		n++;
	return n;
}

/*
 * A typed node is an object with one member named after the node type
 * ({"FuncCall": {...}}); returns the type name and sets *body, or NULL for a
 * plain struct (a field whose C type is fixed, like "relation").
 */
static inline const char *j_type(const JNode *n, const JNode **body)
{
	const JNode *m = n != NULL ? n->child : NULL;

	if (n == NULL || n->type != J_OBJ || m == NULL || m->next != NULL || m->type != J_OBJ ||
	    m->key[0] < 'A' || m->key[0] > 'Z')
		return NULL;
	*body = m;
	return m->key;
}

/* The text of a String node ({"String": {"sval": "x"}}), or NULL. */
static inline const char *j_string_node(const JNode *n)
{
	const JNode *body;
	const char *t = j_type(n, &body);

	if (t == NULL || strcmp(t, "String") != 0)
		return NULL;
	t = j_str(body, "sval");
	return t != NULL ? t : "";
}

/* ---- the builder ---- */

/*
 * The walks' budget: SQLINFO_WORK_BASE steps and SQLINFO_WORK_PER_NODE per
 * node of the tree. A walk counts a step for each node it visits and for
 * each entry of a scope, list or table it searches, so that a statement
 * whose analysis would grow faster than its text (every reference looked up
 * among thousands of CTEs, relations or outputs) is refused as too complex
 * instead of holding a worker thread for minutes.
 */
#define SQLINFO_WORK_BASE (1u << 20)
#define SQLINFO_WORK_PER_NODE 32

/*
 * Counts `n` steps of b's budget. False once it is spent: b->error says the
 * statement is too complex and b->oom stops every walk (the result is
 * discarded).
 */
static inline bool sqlinfo_work(SqlBuild *b, size_t n)
{
	b->work += n;
	if (b->work <= b->work_max)
		return true;
	b->error = "statement too complex to analyse";
	b->oom = true;
	return false;
}

/* Empties the builder for a new analysis (keeps its memory, trims what grew very large). */
void sqlinfo_build_reset(SqlBuild *b);

/* Frees the builder's memory. */
void sqlinfo_build_free(SqlBuild *b);

/*
 * Reads libpg_query's JSON parse tree `json` (modified in place: strings are
 * decoded where they stand and must stay alive while `b` is used) and fills
 * `b` with statements, parts, tables, functions and prepared-statement
 * operations. Returns false when out of memory (b->oom) or when the tree
 * could not be walked (b->error, a static string).
 */
bool sqlinfo_tree_analyze(SqlBuild *b, char *json);

/*
 * True when built-in function `name` can be called with one argument of a
 * row type, so that `t.name` may be attribute notation for name(t).
 */
bool sqlinfo_takes_whole_row(const char *name);

/* ---- COPY options (sqlinfo_copy.c) ---- */

/*
 * Fills b->stmts[stmt].copy (and copy_null) from CopyStmt `s` when it is a
 * COPY ... TO STDOUT; leaves them zero (SQL_COPY_NONE) otherwise. Sets
 * b->literal_sensitive when the COPY has options.
 */
void sqlinfo_copy_stmt(SqlBuild *b, int stmt, const JNode *s);

/* ---- column lineage (sqlinfo_lineage.c) ---- */

/*
 * Adds the lineage of top-level statement `stmt` (its parse-tree node
 * `type`/`body`) to b: outputs, column uses. Sets b->oom when out of memory.
 */
void sqlinfo_lineage_stmt(SqlBuild *b, int stmt, const char *type, const JNode *body);

/* Empties the lineage arrays for a new analysis; frees them. */
void sqlinfo_lineage_reset(SqlBuild *b);
void sqlinfo_lineage_free(SqlBuild *b);

#endif
